"""The whole system in namespaces: real realm and FreeRADIUS with the plugin, a switch with
hostapd per port and nftables enforcement, and tessera-agent on every device. No manual step
between link-up and encrypted traffic."""

from __future__ import annotations

import select
import time

import pytest

from tessera.agent.l2 import PacketTransport
from tessera.lab.probe import l2_reach, ping
from tessera.lab.topology import RealmLab
from tessera.service import Policy

from tests.gate import needs_lab  # noqa: E402

pytestmark = needs_lab


def up_and_peered(rl: RealmLab, devices, timeout: float = 20.0) -> None:
    for d in rl.devices:
        rl.set_carrier(d, False)
        rl.start_agent(d)
    for d in rl.devices:
        rl.set_carrier(d, True)
    ids = [d.device_id for d in devices]
    assert rl.wait(lambda: all(rl.peered(d, [i for i in ids if i != d.device_id]) for d in devices), timeout), \
        [rl.status(d) for d in devices]


def collect(rl: RealmLab, devices, want: set, timeout: float = 10.0) -> set:
    """Read the devices' inboxes (each read empties it) until every (from, to, text) in
    ``want`` has arrived; return all that arrived."""
    got: set = set()

    def arrived() -> bool:
        got.update((m["peer"], d.device_id, m["data"]) for d in devices for m in rl.inbox(d))
        return want <= got

    assert rl.wait(arrived, timeout), f"missing {want - got}, got {got}"
    return got


def received(rl: RealmLab, d, until, timeout: float = 10.0) -> list[str]:
    """Texts delivered to ``d`` (in order) until ``until(texts)`` holds."""
    texts: list[str] = []

    def done() -> bool:
        texts.extend(m["data"] for m in rl.inbox(d))
        return until(texts)

    assert rl.wait(done, timeout), texts
    return texts


def capture_data_frame(rl: RealmLab, src, dst) -> bytes:
    """Send one message src → dst through the agents and catch its frame on dst's wire."""
    sniff = PacketTransport("eth0", netns=dst.dev.ns)
    try:
        assert rl.send(src, dst.device_id, "catch me")["ok"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            select.select([sniff], [], [], 0.2)
            while (got := sniff.recv()) is not None:
                if got[1][1] == 35:  # PeerData
                    return got[1]
        raise AssertionError("no data frame seen")
    finally:
        sniff.close()


def test_three_devices_admit_register_peer_and_talk_encrypted(lab):
    rl = RealmLab(lab, 4, enrol=3)
    a, b, c, stranger = rl.devices
    # before anything is admitted a port passes nothing but EAPOL
    assert not l2_reach(a.dev.ns, b.dev.ns, b.dev.mac) and ping(a.dev.ns, "203.0.113.2") == 0
    up_and_peered(rl, [a, b, c])
    for d in (a, b, c):
        st = rl.status(d)
        assert st["port"] == "up" and st["registration"]["generation"] == 1 and st["tgt"]["expires_in"] > 0
        assert rl.controller.is_open(d.dev.port, d.dev.mac)
    assert [r.state.value for r in rl.realm.registry.list_devices()][:3] == ["registered"] * 3
    # the probes that found the ports closed pass now
    assert l2_reach(a.dev.ns, b.dev.ns, b.dev.mac) and ping(a.dev.ns, "203.0.113.2") == 1
    # encrypted frames both ways
    for x, y in ((a, b), (b, a), (b, c), (c, a)):
        assert rl.send(x, y.device_id, f"{x.device_id}->{y.device_id}")["ok"]
    want = {("dev-01", "dev-02", "dev-01->dev-02"), ("dev-02", "dev-01", "dev-02->dev-01"),
            ("dev-02", "dev-03", "dev-02->dev-03"), ("dev-03", "dev-01", "dev-03->dev-01")}
    assert collect(rl, (a, b, c), want) == want
    # a replayed and a tampered frame, injected from A's port, are dropped by B
    frame = capture_data_frame(rl, a, b)
    assert received(rl, b, lambda t: "catch me" in t) == ["catch me"]
    inject = PacketTransport("eth0", netns=a.dev.ns)
    try:
        inject.send(b.dev.mac, frame)
        bad = bytearray(frame)
        bad[-3] ^= 0x40
        inject.send(b.dev.mac, bytes(bad))
    finally:
        inject.close()
    # a genuine frame sent after them on the same path: once B counted both drops and delivered
    # this one, it has processed the injected frames, and delivered neither
    assert rl.send(a, "dev-02", "after the replay")["ok"]
    assert rl.wait(lambda: rl.status(b)["sessions"]["dev-01"]["dropped"] >= 2, 10), rl.status(b)
    assert received(rl, b, lambda t: "after the replay" in t) == ["after the replay"]
    assert rl.status(b)["sessions"]["dev-01"]["dropped"] == 2
    # the stranger never got in: its certificate was refused (EAP-Failure), its port is closed,
    # its frames go nowhere — where B's go through
    assert rl.wait(lambda: "EAP-TLS refused" in open(stranger.agent.log_path).read(), 15)
    assert rl.status(stranger)["state"] == "enrolled" and not rl.controller.is_open(stranger.dev.port)
    assert not l2_reach(stranger.dev.ns, a.dev.ns, a.dev.mac) and ping(stranger.dev.ns, "203.0.113.2") == 0
    assert l2_reach(b.dev.ns, a.dev.ns, a.dev.mac) and ping(b.dev.ns, "203.0.113.2") == 1


def test_revoked_and_unenrolled_devices_stay_locked_out(lab):
    rl = RealmLab(lab, 3, enrol=2)
    a, revoked, stranger = rl.devices
    rl.realm.revoke(revoked.device_id, time.time(), "test")
    for d in rl.devices:
        rl.set_carrier(d, False)
        rl.start_agent(d)
        rl.set_carrier(d, True)
    assert rl.wait(lambda: (rl.status(a) or {}).get("tgt") is not None, 15)
    # the revoked device's certificate chain is fine: the registry check refuses it after the
    # TLS handshake (EAP-Failure, which its supplicant ignores; the agent times out); the
    # stranger's chain fails inside TLS
    for d in (revoked, stranger):
        assert rl.wait(lambda: "EAP-TLS refused" in open(d.agent.log_path).read(), 15)
        assert not rl.controller.is_open(d.dev.port)
        assert rl.status(d)["state"] == "enrolled" and rl.status(d)["tgt"] is None
        assert not l2_reach(d.dev.ns, a.dev.ns, a.dev.mac) and not l2_reach(d.dev.ns, rl.radius_ns)
        assert ping(d.dev.ns, "203.0.113.2") == 0
    # the admitted device, probed the same way, gets through both ways
    assert rl.controller.is_open(a.dev.port, a.dev.mac)
    assert l2_reach(a.dev.ns, rl.radius_ns) and l2_reach(rl.radius_ns, a.dev.ns, a.dev.mac)
    assert ping(a.dev.ns, "203.0.113.2") == 1
    assert "dev-02': revoked" in rl.radius.log_text()


def test_link_flap_drops_sessions_and_they_come_back(lab):
    rl = RealmLab(lab, 3)
    a, b, c = rl.devices
    up_and_peered(rl, rl.devices)
    first = rl.status(a)["sessions"]["dev-02"]["session_id"]
    rl.set_carrier(b, False)
    assert rl.wait(lambda: rl.status(b)["port"] == "down" and rl.status(b)["sessions"] == {}, 5)
    assert rl.wait(lambda: not rl.controller.is_open(b.dev.port), 5)  # the switch kicked the station
    rl.set_carrier(b, True)
    assert rl.wait(lambda: rl.peered(b, ["dev-01", "dev-03"]) and rl.peered(a, ["dev-02"]), 15)
    st = rl.status(b)
    assert st["admission"] == "pwd"  # registered devices come back with their LLK (EAP-PWD)
    assert rl.status(a)["sessions"]["dev-02"]["session_id"] != first
    assert rl.send(a, "dev-02", "after the flap")["ok"]
    assert rl.wait(lambda: any(m["data"] == "after the flap" for m in rl.inbox(b)), 10)
    # the agent restarts: its sealed state (0600) brings back LLK and TGT, no new registration
    rl.stop_agent(c)
    state = c.dir / "state" / "state"
    assert state.stat().st_mode & 0o777 == 0o600
    rl.start_agent(c)
    assert rl.wait(lambda: rl.peered(c, ["dev-01", "dev-02"]), 15)
    st = rl.status(c)
    assert st["registration"]["generation"] == 1 and st["admission"] == "pwd"
    assert rl.realm.registry.get_device("dev-03").generation == 1
    assert "state restored (authenticated)" in open(c.agent.log_path).read()


def test_sessions_survive_the_server_and_renewal_resumes(lab):
    # short tickets so that renewal falls due within the test: TGT 16 s (renewed 4 s before its end)
    rl = RealmLab(lab, 2, policy=Policy(tgt_lifetime=16, session_lifetime=16))
    a, b = rl.devices
    up_and_peered(rl, rl.devices)
    rl.radius.stop()
    assert rl.send(a, "dev-02", "without the service")["ok"]
    assert rl.wait(lambda: any(m["data"] == "without the service" for m in rl.inbox(b)), 10)
    # the renewal comes due and fails while the server is away
    assert rl.wait(lambda: "renew-failed" in open(a.agent.log_path).read() or
                   "ticket-failed" in open(a.agent.log_path).read(), 20)
    rl.radius.start()
    # …and succeeds once it is back: a fresh TGT, and sessions are rekeyed through the service
    assert rl.wait(lambda: (rl.status(a)["tgt"] or {}).get("expires_in", 0) > 12, 20), rl.status(a)
    assert rl.wait(lambda: rl.peered(a, ["dev-02"]) and rl.peered(b, ["dev-01"]), 20)
    assert rl.send(b, "dev-01", "renewed")["ok"]
    assert rl.wait(lambda: any(m["data"] == "renewed" for m in rl.inbox(a)), 10)


def test_revocation_stops_tickets_and_kicks_the_port(lab):
    rl = RealmLab(lab, 3)
    a, b, c = rl.devices
    up_and_peered(rl, rl.devices)
    rec = rl.realm.registry.get_device("dev-02")
    assert (rec.nas_identifier, rec.nas_port_id, rec.calling_station.lower().replace("-", ":")) == \
        (rl.switch.port_nas_identifier("p2"), "p2", b.dev.mac)
    assert l2_reach(b.dev.ns, a.dev.ns, a.dev.mac) and ping(b.dev.ns, "203.0.113.2") == 1
    out = rl.admin("revoke", "dev-02", "--reason", "stolen").stdout.decode()
    assert "Disconnect-ACK" in out, out
    assert rl.wait(lambda: not rl.controller.is_open(b.dev.port), 5)
    assert not l2_reach(b.dev.ns, a.dev.ns, a.dev.mac) and ping(b.dev.ns, "203.0.113.2") == 0
    # the others are untouched and keep talking
    assert rl.send(a, "dev-03", "still here")["ok"]
    assert rl.wait(lambda: any(m["data"] == "still here" for m in rl.inbox(c)), 10)


def test_agents_follow_server_failover(lab):
    """Two servers of one realm share the registry; with the first one down, renewals and new
    session keys come from the second (each proof rebuilt for the server it goes to)."""
    rl = RealmLab(lab, 2, servers=2, policy=Policy(tgt_lifetime=16, session_lifetime=16))
    a, b = rl.devices
    up_and_peered(rl, rl.devices)
    first = rl.status(a)["sessions"]["dev-02"]["session_id"]
    rl.radii[0].stop()
    # renewal falls due 12 s into the TGT's 16 s, the session rekeys 4 s before its end
    assert rl.wait(lambda: (rl.status(a)["tgt"] or {}).get("expires_in", 0) > 12 and
                   rl.status(a)["sessions"].get("dev-02", {}).get("session_id", first) != first, 25), rl.status(a)
    assert rl.send(b, "dev-01", "via radius2")["ok"]
    assert rl.wait(lambda: any(m["data"] == "via radius2" for m in rl.inbox(a)), 10)
