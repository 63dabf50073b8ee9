"""An 802.1X testbed for namespace tests: RADIUS server, switch, devices, supplicants.

How this works
--------------
:class:`Testbed` assembles tested parts: a :class:`~tessera.lab.netns.Lab`, the lab PKI
(``tessera.lab.pki``), a private FreeRADIUS (``tessera.lab.radiusd``) in namespace
``radius`` behind the switch's uncontrolled ``uplink`` port (the switch is its NAS client, with
the NAS secret, on the ``tessera-nas`` listener), and a
:class:`~tessera.lab.switch.Switch` with one hostapd per device port and the port
controller.  The realm behind FreeRADIUS is the RADIUS engineer's stub
(``tests/server/stub_realm.py``: a JSON file of device id -> certificate serial, EAP-PWD
password, revoked flag), so these tests exercise the network plumbing, not the protocol core.

``supplicant(dev, creds)`` starts wpa_supplicant in the device's namespace via the lab (so its
PID is tracked and ended at teardown).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tessera.agent.supplicant import PwdCredentials, Supplicant, TlsCredentials
from tessera.lab import radiusd
from tessera.lab.capture import SwitchCapture
from tessera.lab.netns import Lab
from tessera.lab.pki import LabPKI
from tessera.lab.switch import RADIUS_IP, SWITCH_MGMT_IP, Device, RadiusServer as RadiusAddr, Switch

REPO = Path(__file__).resolve().parents[1]
STUB_REALM_DIR = REPO / "tests" / "server"


class Testbed:
    """Lab + PKI + FreeRADIUS + switch + N devices. Call :meth:`close` (the fixture does)."""

    def __init__(self, lab: Lab, n_devices: int, now: float | None = None,
                 passwords: dict[str, str] | None = None, radius_debug: bool = False):
        self.lab = lab
        self.now = time.time() if now is None else now
        self.dir = Path(lab.workdir)
        self.pki = LabPKI.generate(self.now)
        self.pki.install_server_files(self.dir / "tls", "radius.lab.example", self.now)
        self.creds: dict[str, object] = {}
        realm = {}
        for i in range(1, n_devices + 1):
            dev_id = f"dev{i}"
            c = self.pki.issue_device(dev_id, self.now)
            self.pki.write_device_files(self.dir / "devices", c)
            self.creds[dev_id] = c
            realm[dev_id] = {"serial": c.serial_hex, "revoked": False,
                             "password": (passwords or {}).get(dev_id, f"pwd-{dev_id}")}
        (self.dir / "realm.json").write_text(json.dumps({"devices": realm}))
        (self.dir / "kek").write_bytes(b"\0" * 32)

        self.radius_ns = lab.add_ns("radius")
        # the switch relays 802.1X to the NAS listener with the NAS secret, from its management
        # address only; devices would use the device listener (11812) with their own secret
        self.cfg = radiusd.RadiusConfig(
            db=self.dir / "realm.json", kek=self.dir / "kek", tls_dir=self.dir / "tls",
            address=RADIUS_IP, port=11812, client_address="203.0.113.0/24",
            nas_port=1812, nas_client_address=SWITCH_MGMT_IP,
            realm_opener="stub_realm:open_realm", python_path=(STUB_REALM_DIR,))
        self.raddb = radiusd.build_config(self.dir / "raddb", self.cfg)
        self.switch = Switch(lab, radius=RadiusAddr(RADIUS_IP, self.cfg.nas_port, self.cfg.nas_secret))
        self.switch.add_uplink(self.radius_ns)
        self.devices = [self.switch.add_device(i) for i in range(1, n_devices + 1)]
        self.pcap = self._start_capture()
        self.controller = self.switch.start_controller()
        self.radius = radiusd.RadiusServer.for_config(
            self.raddb, self.cfg, run_prefix=("ip", "netns", "exec", self.radius_ns),
            debug=radius_debug)
        self.radius.start()
        self.supplicants: list[Supplicant] = []

    def _start_capture(self) -> Path:
        path = self.dir / "switch.pcap"
        self.capture = SwitchCapture(self.lab, self.switch.ns, path).start()
        return path

    # -- devices
    def tls(self, dev: Device | str) -> TlsCredentials:
        """EAP-TLS credentials of a device (its lab certificate)."""
        dev_id = dev if isinstance(dev, str) else f"dev{dev.index}"
        c = self.creds[dev_id]
        return TlsCredentials(dev_id, str(c.cert_path), str(c.key_path),
                              str(self.dir / "devices" / "ca.pem"))

    def pwd(self, dev: Device, password: str | None = None) -> PwdCredentials:
        dev_id = f"dev{dev.index}"
        return PwdCredentials(dev_id, password or f"pwd-{dev_id}")

    def supplicant(self, dev: Device, creds=None, debug: bool = False) -> Supplicant:
        """Start wpa_supplicant on the device's eth0 (tracked by the lab)."""
        creds = creds or self.tls(dev)
        s = Supplicant("eth0", creds, str(self.dir / f"d{dev.index}"),
                       launcher=lambda name, argv: self.lab.spawn(
                           f"{name}-d{dev.index}", dev.ns, argv).popen, debug=debug,
                       netns=dev.ns)
        self.supplicants.append(s)
        return s

    def close(self) -> None:
        for s in self.supplicants:
            s.close()
        self.radius.stop()
        self.switch.close()
