"""Revocation at the port: after ``tessera-admin revoke`` the device's switch port closes, also
when the device tried to move its recorded location first.

The realm sends its Disconnect-Request (RFC 5176) to the NAS and port the registry holds for
the device, so a device about to be revoked would like that record to name another port. Here
the devices speak RADIUS over UDP (``radius_transport=UDP``): each bundle holds the device
secret, the most a device can hold. With it, the device runs its own 802.1X admission with
``eapol_test`` from its namespace, claiming its neighbour's port, NAS-Identifier and MAC: the
device listener refuses EAP, the NAS listener does not know the device's address (and the secret
is not the NAS secret) -- so the record is unchanged, the revocation reaches the device's real
port, and the port closes. The neighbour whose port it claimed stays open.

Measured: from starting ``tessera-admin revoke`` to the switch's nftables closing the port (the
port controller's "block +close" entry), in ms, printed for the report.
"""

from __future__ import annotations

import json
import time

from tessera.identity import UDP
from tessera.lab import nft
from tessera.lab.pki import write_file
from tessera.lab.probe import l2_reach
from tessera.lab.switch import RADIUS_IP
from tessera.lab.topology import LabDevice, RealmLab
from tessera.registry import DeviceState

from tests.gate import needs_freeradius, needs_lab

pytestmark = [needs_lab, needs_freeradius]  # eapol_test too


def port_open(rl: RealmLab, d: LabDevice) -> bool:
    return rl.controller.is_open(d.dev.port, d.dev.mac) and nft_open(rl, d)


def nft_open(rl: RealmLab, d: LabDevice) -> bool:
    authorized = nft.list_set(rl.switch.ns, "authorized")
    return f'"{d.dev.port}" . {d.dev.mac}' in authorized and f'"{d.dev.port}"' in nft.list_set(rl.switch.ns, "open_ports")


def location(rl: RealmLab, d: LabDevice) -> tuple:
    rec = rl.realm.registry.get_device(d.device_id)
    return rec.nas_identifier, rec.nas_port_id, rec.calling_station


def admit(rl: RealmLab, devices: list[LabDevice], timeout: float = 30.0) -> None:
    """Start the agents, plug the cables in, wait until each port is open and its location
    recorded (what revoke looks up)."""
    for d in devices:
        rl.set_carrier(d, False)
        rl.start_agent(d)
    for d in devices:
        rl.set_carrier(d, True)
    assert rl.wait(lambda: all(port_open(rl, d) and location(rl, d)[0] == rl.switch.port_nas_identifier(d.dev.port)
                               for d in devices), timeout), [(d.device_id, rl.status(d)) for d in devices]


def revoke_and_time(rl: RealmLab, d: LabDevice, timeout: float = 15.0) -> float:
    """``tessera-admin revoke`` (from the RADIUS server's namespace); returns ms from starting
    it to the controller closing d's port in nftables (also printed: how long the command ran,
    most of it Python starting up)."""
    t0 = time.monotonic()
    r = rl.admin("revoke", d.device_id, "--reason", "stolen", check=False)
    print(f"\n  {d.device_id}: tessera-admin revoke ran {(time.monotonic() - t0) * 1000:.0f} ms", end="")
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0 and "Disconnect-ACK" in out, (out, err)
    assert rl.wait(lambda: not port_open(rl, d), timeout), rl.controller.entries(port=d.dev.port)[-5:]
    closed = [e for e in rl.controller.entries("block +close", d.dev.port) if e.mono >= t0 and e.mac == d.dev.mac]
    assert closed, rl.controller.entries(port=d.dev.port)[-5:]
    assert rl.realm.registry.get_device(d.device_id).state is DeviceState.REVOKED
    return (closed[0].mono - t0) * 1000


def device_eapol_test(rl: RealmLab, d: LabDevice, port: int, secret: str, claims: tuple[str, ...]):
    """eapol_test from d's namespace with d's own certificate (from its bundle), to the realm's
    ``port`` with ``secret``, claiming ``claims`` (eapol_test options). Returns (rc, output)."""
    bundle = json.loads((d.dir / "bundle.json").read_text())
    work = d.dir / "attack"
    cert = write_file(work / "device.pem", bundle["device_certificate_pem"].encode())
    key = write_file(work / "device.key", bundle["device_key_pem"].encode(), 0o600)
    conf = write_file(work / "eapol.conf", (
        f'network={{\n\tkey_mgmt=IEEE8021X\n\teap=TLS\n\tidentity="{d.device_id}"\n'
        f'\tclient_cert="{cert}"\n\tprivate_key="{key}"\n\teapol_flags=0\n}}\n').encode())
    r = rl.lab.run(d.dev.ns, ["eapol_test", "-c", str(conf), "-a", RADIUS_IP, "-p", str(port), "-s", secret,
                              "-t", "4", "-r", "0", *claims], check=False)
    return r.returncode, r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")


def test_revoke_port_closes_within_ms_of_the_revocation(lab):
    rl = RealmLab(lab, 4, radius_transport=UDP)
    *revoked, keeper = rl.devices
    admit(rl, rl.devices)
    times = []
    for d in revoked:
        assert l2_reach(d.dev.ns, keeper.dev.ns, keeper.dev.mac)
        times.append(revoke_and_time(rl, d))
        assert not l2_reach(d.dev.ns, keeper.dev.ns, keeper.dev.mac)
        assert port_open(rl, keeper)  # only that port
    print(f"\nrevoke -> port closed (tessera-admin revoke started -> nftables closed the port), "
          f"{len(times)} devices: " + ", ".join(f"{ms:.0f}" for ms in times) + " ms")
    assert max(times) < 5000, times


def test_revoke_port_closes_also_after_the_device_tried_to_move_its_location(lab):
    rl = RealmLab(lab, 2, radius_transport=UDP)
    a, b = rl.devices
    admit(rl, [a, b])
    real = location(rl, a)
    assert real == (rl.switch.port_nas_identifier("p1"), "p1", a.dev.mac.upper().replace(":", "-")), real
    bundle = json.loads((a.dir / "bundle.json").read_text())
    device_secret = bundle["radius_secret"]
    assert device_secret == rl.cfg.secret and device_secret != rl.cfg.nas_secret  # what a device holds

    # a claims b's port, NAS and MAC, with its own certificate and the secret it holds
    claims = ("-N32:s:" + rl.switch.port_nas_identifier("p2"), "-N87:s:p2", "-M" + b.dev.mac)
    rc, out = device_eapol_test(rl, a, rl.cfg.port, device_secret, claims)  # the device listener
    assert rc != 0 and "Access-Reject" in out and "EAP is not answered on the device listener" in out, out[-3000:]
    rc, out = device_eapol_test(rl, a, rl.cfg.nas_port, device_secret, claims)  # the switches' listener
    assert rc != 0 and "Received RADIUS message" not in out, out[-3000:]  # no answer at all
    assert location(rl, a) == real
    assert location(rl, b) == (rl.switch.port_nas_identifier("p2"), "p2", b.dev.mac.upper().replace(":", "-"))

    ms = revoke_and_time(rl, a)
    print(f"\nrevoke -> port closed after a location-overwrite attempt: {ms:.0f} ms")
    assert port_open(rl, b) and not l2_reach(a.dev.ns, b.dev.ns, b.dev.mac)
    assert ms < 5000, ms
