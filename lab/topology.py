"""The whole Tessera system in namespaces: a real realm, FreeRADIUS with the plugin, a switch
with 802.1X ports, and N devices each running tessera-agent.

How this works: `RealmLab` builds on the tested plumbing — `Lab` (namespaces, processes,
teardown), `Switch` (bridge, one hostapd per port, nftables port controller), `radiusd`
(FreeRADIUS from the repo's config in the `radius` namespace) — and adds the real realm: a
registry and KEK made with `Realm.init`, devices enrolled with generated key pairs and
bootstrap bundles, the RADIUS server's EAP certificate issued by the realm's CA (which devices
trust through their bundle), and one `tessera-agent run` per device namespace. Nothing is
scripted per device after start: the agents see carrier, admit, register, get TGTs and peer.

    netns radius  eth0 203.0.113.2 ── uplink ┐
    netns sw      br0 203.0.113.1 (bridge) ─ p1 … pN (hostapd each, nftables port control)
    netns dN      eth0 192.0.2.(100+N), 203.0.113.(100+N) ── pN

Devices reach the realm at 203.0.113.2 only once their port is authorized, over RadSec (RADIUS
over TLS on port 2083 with their device certificate; `radius_transport=UDP` for the weaker
shared-secret transport); the switch (hostapd) speaks RADIUS over UDP.

Three secrets, one per trust relation, all different (random per lab): the switch's hostapd
relays 802.1X to the NAS listener (``tessera-nas``, port 1812, only 203.0.113.1) with the NAS
secret; devices on UDP send Tessera operations to the device listener (``tessera``, port
11812) with the device secret; ``tessera-admin revoke`` sends its Disconnect-Request to each
port's hostapd DAS with `RealmLab.das_secret`.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from tessera.agent.daemon import query
from tessera.identity import RADSEC, UDP, ServerEntry, pem_certificate
from tessera.lab import radiusd
from tessera.lab.capture import CaptureStats, SwitchCapture
from tessera.lab.netns import Lab, Proc
from tessera.lab.pki import LabPKI, write_file
from tessera.lab.switch import RADIUS_IP, SWITCH_MGMT_IP, Device, RadiusServer as RadiusAddr, Switch
from tessera.realm import Realm, create_kek
from tessera.service import Policy
from tessera.sqlite_registry import SQLiteRegistry

REPO = Path(__file__).resolve().parents[1]
AGENT = REPO / ".venv" / "bin" / "tessera-agent"
RADIUS_NAME = "radius.lab.example"  # in the servers' certificate (from the realm CA); devices check it over RadSec
RADSEC_PORT = 2083
NAS_PORT = 1812  # the tessera-nas site: the switch's hostapd relays 802.1X here, with the NAS secret
DEVICE_UDP_PORT = 11812  # the tessera site: devices over UDP, with the device secret


@dataclass
class LabDevice:
    device_id: str
    dev: Device
    dir: Path
    agent: Proc | None = None

    @property
    def state_dir(self) -> str:
        return str(self.dir / "state")


class RealmLab:
    """A running realm with devices; `close()` (or the Lab) tears everything down."""

    def __init__(self, lab: Lab, n_devices: int = 3, now: float | None = None, realm_name: str = "lab.example",
                 policy: Policy = Policy(), radius_debug: bool = False, capture: bool = True,
                 enrol: int | None = None, servers: int = 1, radius_transport: str = RADSEC):
        """`servers` RADIUS servers of the realm (at 203.0.113.2, .3, …, ids radius1, radius2, …)
        share the registry and the KEK; devices fail over in that order, hostapd uses the first.
        Devices speak to them over `radius_transport`: RADSEC (RADIUS/TLS on port 2083 with their
        device certificate; their bundles hold no RADIUS secret) or UDP (with the lab's secret)."""
        self.lab = lab
        self.now = time.time() if now is None else now
        self.dir = Path(lab.workdir)
        self.realm = Realm.init(SQLiteRegistry(str(self.dir / "registry.db")), create_kek(str(self.dir / "kek")),
                                realm_name, self.now, policy)
        LabPKI(self.realm.ca).install_server_files(self.dir / "tls", RADIUS_NAME, self.now)
        self.radius_ns = lab.add_ns("radius")
        # three secrets, one per trust relation: devices → realm (UDP), switch → realm (802.1X),
        # realm → switch (Disconnect-Request); a device holds at most the first
        device_udp_secret, nas_secret = secrets.token_hex(16), secrets.token_hex(16)
        self.das_secret = secrets.token_hex(16)
        self.cfgs = [radiusd.RadiusConfig(
            db=self.dir / "registry.db", kek=self.dir / "kek", tls_dir=self.dir / "tls", server_id=f"radius{i + 1}",
            address=f"203.0.113.{2 + i}", port=DEVICE_UDP_PORT, client_address="203.0.113.0/24",
            secret=device_udp_secret, nas_port=NAS_PORT, nas_secret=nas_secret, nas_client_address=SWITCH_MGMT_IP,
            radsec_port=RADSEC_PORT if radius_transport == RADSEC else None) for i in range(servers)]
        self.cfg = self.cfgs[0]
        raddbs = [radiusd.build_config(self.dir / f"raddb{i + 1}" if i else self.dir / "raddb", c)
                  for i, c in enumerate(self.cfgs)]
        self.raddb = raddbs[0]
        self.switch = Switch(lab, radius=RadiusAddr(RADIUS_IP, self.cfg.nas_port, self.cfg.nas_secret),
                             das=(RADIUS_IP, self.das_secret))
        self.switch.add_uplink(self.radius_ns)
        for c in self.cfgs[1:]:
            lab.add_addr(self.radius_ns, "eth0", f"{c.address}/24")
        self.servers = [ServerEntry(c.server_id, c.address, c.port, c.radsec_port or RADSEC_PORT, RADIUS_NAME)
                        for c in self.cfgs]
        device_secret = self.cfg.secret if radius_transport == UDP else ""  # RadSec: the certificate, no secret
        self.devices: list[LabDevice] = []
        for i in range(1, n_devices + 1):
            dev = self.switch.add_device(i)
            self.realm.add_nas(self.switch.port_nas_identifier(dev.port), SWITCH_MGMT_IP,
                               self.switch.das_port(dev.port), self.das_secret, self.now)
            lab.add_addr(dev.ns, "eth0", f"203.0.113.{100 + i}/24")
            # The first ARP for the server can leave before the switch opens the port (the
            # controller acts on hostapd's event, the device on its EAP-Success): retry in
            # 100 ms instead of Linux's 1 s.
            lab.run(dev.ns, ["sysctl", "-qw", "net.ipv4.neigh.eth0.retrans_time_ms=100"])
            d = LabDevice(f"dev-{i:02d}", dev, self.dir / f"d{i}")
            if enrol is None or i <= enrol:
                bundle = self.realm.enrol_generated(d.device_id, self.servers, device_secret, self.now, radius_transport)
            else:  # never enrolled: it knows the realm, but its certificate is from an unknown maker
                stranger = LabPKI.generate(self.now, "Unknown Maker CA").issue_device(d.device_id, self.now)
                bundle = self.realm.bundle(d.device_id, self.servers, device_secret, radius_transport)
                bundle.device_key_pem = stranger.key.pem()
                bundle.device_certificate_pem = pem_certificate(stranger.certificate)
            write_file(d.dir / "bundle.json", bundle.to_json().encode(), 0o600)
            self.devices.append(d)
        self.pcap = self.dir / "switch.pcap"
        self.capture = SwitchCapture(lab, self.switch.ns, self.pcap).start() if capture else None
        self.controller = self.switch.start_controller()
        self.radii = [radiusd.RadiusServer.for_config(r, c, run_prefix=("ip", "netns", "exec", self.radius_ns),
                                                      debug=radius_debug) for r, c in zip(raddbs, self.cfgs)]
        self.radius = self.radii[0]
        lab.defer(self.close)  # radiusd is not a lab.spawn process: stop it with the lab, also on failure
        for r in self.radii:
            r.start()

    # -- devices ---------------------------------------------------------------------------
    def set_carrier(self, d: LabDevice, up: bool) -> None:
        self.switch.set_carrier(d.dev.port, up)

    def start_agent(self, d: LabDevice, announce_every: float = 0.5, revocation_poll: float = 5.0) -> Proc:
        d.agent = self.lab.spawn(f"agent-d{d.dev.index}", d.dev.ns,
                                 [str(AGENT), "run", "-i", "eth0", "--bundle", str(d.dir / "bundle.json"),
                                  "--state-dir", d.state_dir, "--announce-every", str(announce_every),
                                  "--revocation-poll", str(revocation_poll)])
        deadline = time.monotonic() + 15
        while not os.path.exists(os.path.join(d.state_dir, "agent.sock")):
            if not d.agent.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"agent of {d.device_id} did not start; see {d.agent.log_path}")
            time.sleep(0.02)
        return d.agent

    def admin(self, *args: str, check: bool = True):
        """Run tessera-admin on this realm from the RADIUS server's namespace (where a revocation's
        Disconnect-Request must come from)."""
        argv = [str(AGENT.with_name("tessera-admin")), "--db", str(self.dir / "registry.db"), "--kek", str(self.dir / "kek"), *args]
        return self.lab.run(self.radius_ns, argv, check=check)

    def stop_agent(self, d: LabDevice) -> None:
        if d.agent is not None:
            self.lab.stop(d.agent)
            d.agent = None

    def status(self, d: LabDevice) -> dict | None:
        try:
            return query(d.state_dir, {"cmd": "status"}, timeout=2)
        except (OSError, ValueError):
            return None

    def send(self, d: LabDevice, peer: str, data: str) -> dict:
        return query(d.state_dir, {"cmd": "send", "peer": peer, "data": data})

    def inbox(self, d: LabDevice) -> list[dict]:
        return query(d.state_dir, {"cmd": "inbox"})

    def wait(self, pred, timeout: float, every: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(every)
        return pred()

    def peered(self, d: LabDevice, peers: list[str]) -> bool:
        st = self.status(d)
        return bool(st) and all(p in st["sessions"] for p in peers)

    def stop_capture(self) -> CaptureStats | None:
        """End the switch capture; the pcap then holds every frame that crossed the switch."""
        return self.capture.stop() if self.capture else None

    def close(self) -> None:
        for d in self.devices:
            self.stop_agent(d)
        self.switch.close()
        for r in self.radii:
            r.stop()
