"""The agent's brain with three devices, a service and a simulated wire, all in memory: link up
to encrypted traffic with no manual step, link flap, server down and back, rekey, revocation."""

from collections import deque
from typing import Callable

import pytest

from tessera import errors as E
from tessera.node import (BROADCAST, Deliver, FrameReceived, LinkDown, LinkUp, Node, Port, PortAuthorized,
                          PortRejected, RadiusAnswer, RadiusFailed, RadiusRequest, SendFrame, StartAdmission, Timers)
from tests.unit.conftest import T0, make_device


class Net:
    """Moves actions between nodes and the service: the lab without namespaces."""

    def __init__(self, realm, service, rand):
        self.realm, self.service, self.rand = realm, service, rand
        self.nodes: dict[str, Node] = {}
        self.macs: dict[str, str] = {}
        self.link: dict[str, bool] = {}
        self.server_up = True
        self.delivered: list[tuple[str, str, bytes]] = []
        self.frames: list[tuple[str, str, bytes]] = []
        self.now = float(T0)
        self.queue: deque = deque()
        self.clock: dict[str, float] = {}  # device → how far its clock is off the service's
        self.answers: list[tuple[str, str, str]] = []  # (device, operation, "ok" or the error's name)
        self.intercept: dict[str, Callable] = {}  # device → f(RadiusRequest) -> event in place of the service's
        self.polls: list[tuple[str, str]] = []  # (device, RadiusAnswer or RadiusFailed) of revocation polls
        self.intercept_polls: dict[str, Callable] = {}  # device → f(RadiusRequest) -> event answering its poll
        self.wire: Callable | None = None  # f(device, dst MAC, payload) -> copies delivered (0 loses it, 2 doubles it)

    def time_of(self, dev: str) -> float:
        return self.now + self.clock.get(dev, 0.0)

    def add(self, device_id: str, how: str = "key") -> Node:
        mac = "02:00:00:00:00:%02x" % (len(self.nodes) + 1)
        node = Node(make_device(self.realm, device_id, how), self.rand, Timers(rekey_before=300), mac=mac)
        self.nodes[device_id] = node
        self.macs[device_id] = mac
        self.link[device_id] = False
        return node

    def admit(self, device_id: str, a: StartAdmission) -> bool:
        """What FreeRADIUS decides for EAP-TLS / EAP-PWD, through the service's hooks."""
        try:
            if a.method == "tls":
                rec = self.realm.registry.get_device(device_id)
                if rec is None:
                    return False
                self.service.admit_certificate(rec.cert_serial or "00", rec.cert_issuer or "", device_id, self.now)
                return rec.cert_serial is not None
            return a.password == self.service.eap_pwd_password(device_id, self.now)
        except E.TesseraError:
            return False

    def run(self, events=(), seconds: float = 0.0, step: float = 0.5) -> None:
        self.queue.extend(events)
        end = self.now + seconds
        while True:
            handled = 0
            while self.queue:
                handled += 1  # nodes that answer each other for ever fail here instead of hanging
                assert handled < 10_000, f"no quiet moment at {self.now - T0:.1f} s: {self.queue[0]}"
                dev, ev = self.queue.popleft()
                self.act(dev, self.nodes[dev].handle(ev, self.time_of(dev)))
            if self.now >= end:
                return
            self.now += step
            for dev, node in self.nodes.items():
                self.act(dev, node.handle(None, self.time_of(dev)))

    def act(self, dev: str, actions) -> None:
        for a in actions:
            if isinstance(a, StartAdmission) and self.link[dev]:
                ok = self.admit(dev, a)
                self.queue.append((dev, PortAuthorized(a.method) if ok else PortRejected(a.method)))
            elif isinstance(a, RadiusRequest) and a.operation == "revocations" and dev in self.intercept_polls:
                self.queue.append((dev, self.intercept_polls[dev](a)))
            elif isinstance(a, RadiusRequest) and a.operation == "revocations":  # the periodic poll: its own log
                try:
                    reply = RadiusAnswer(a.op_id, self.service.handle(a.build("radius-a"), self.now))
                except E.TesseraError as exc:
                    reply = RadiusFailed(a.op_id, exc.reason, self.service.error_reply(exc, self.now))
                if not self.server_up:
                    reply = RadiusFailed(a.op_id, "no RADIUS server answered")
                self.polls.append((dev, type(reply).__name__))
                self.queue.append((dev, reply))
            elif isinstance(a, RadiusRequest):
                if dev in self.intercept:
                    self.queue.append((dev, self.intercept[dev](a)))
                    continue
                if not self.server_up:
                    self.queue.append((dev, RadiusFailed(a.op_id, "no RADIUS server answered")))
                    continue
                try:
                    self.queue.append((dev, RadiusAnswer(a.op_id, self.service.handle(a.build("radius-a"), self.now))))
                    self.answers.append((dev, a.operation, "ok"))
                except E.TesseraError as exc:
                    self.queue.append((dev, RadiusFailed(a.op_id, exc.reason, self.service.error_reply(exc, self.now))))
                    self.answers.append((dev, a.operation, exc.name))
            elif isinstance(a, SendFrame):
                self.frames.append((dev, a.dst, a.payload))
                copies = 1 if self.wire is None else self.wire(dev, a.dst, a.payload)
                for other, mac in self.macs.items():
                    if other != dev and self.link[dev] and self.link[other] and a.dst in (mac, BROADCAST):
                        self.queue.extend([(other, FrameReceived(self.macs[dev], a.payload))] * copies)
            elif isinstance(a, Deliver):
                self.delivered.append((a.peer, dev, a.data))

    def carrier(self, dev: str, up: bool) -> None:
        self.link[dev] = up
        self.run([(dev, LinkUp() if up else LinkDown())])

    def send(self, src: str, dst: str, data: bytes) -> None:
        self.act(src, self.nodes[src].send(dst, data, self.time_of(src)))
        self.run()


@pytest.fixture
def net(realm, service, rand):
    n = Net(realm, service, rand)
    for dev, how in (("SN-A", "bundle"), ("SN-B", "certificate"), ("SN-C", "bundle")):
        n.add(dev, how)
    return n


def sessions(net) -> dict:
    return {d: sorted(n.sessions) for d, n in net.nodes.items()}


def test_link_up_to_encrypted_traffic_with_no_manual_step(net):
    for dev in net.nodes:
        net.carrier(dev, True)
    net.run(seconds=3)
    assert all(n.port is Port.UP and n.client.credentials for n in net.nodes.values())
    assert sessions(net) == {"SN-A": ["SN-B", "SN-C"], "SN-B": ["SN-A", "SN-C"], "SN-C": ["SN-A", "SN-B"]}
    net.send("SN-A", "SN-B", b"ping")
    net.send("SN-B", "SN-A", b"pong")
    assert ("SN-A", "SN-B", b"ping") in net.delivered and ("SN-B", "SN-A", b"pong") in net.delivered
    # nothing on the wire in the clear: payloads never appear in frames
    assert not any(b"ping" in f[2] for f in net.frames)
    # a replayed or tampered frame is dropped, not delivered
    data_frames = [f for f in net.frames if f[2][1] == 35]
    before = len(net.delivered)
    net.queue.append(("SN-B", FrameReceived(net.macs["SN-A"], data_frames[0][2])))
    bad = bytearray(data_frames[0][2]); bad[-1] ^= 1
    net.queue.append(("SN-B", FrameReceived(net.macs["SN-A"], bytes(bad))))
    net.run()
    assert len(net.delivered) == before and net.nodes["SN-B"].stats["frames_dropped"] == 2


def test_link_flap_drops_sessions_and_readmits_with_eap_pwd(net):
    for dev in net.nodes:
        net.carrier(dev, True)
    net.run(seconds=3)
    net.carrier("SN-B", False)
    assert net.nodes["SN-B"].sessions == {} and net.nodes["SN-B"].port is Port.DOWN
    net.run(seconds=1)
    net.carrier("SN-B", True)
    assert net.nodes["SN-B"].method == "pwd"  # registered devices admit with their LLK
    net.run(seconds=5)
    assert net.nodes["SN-B"].port is Port.UP and sorted(net.nodes["SN-B"].sessions) == ["SN-A", "SN-C"]
    net.send("SN-B", "SN-C", b"back")
    assert ("SN-B", "SN-C", b"back") in net.delivered


def test_server_down_sessions_keep_working_and_renewal_resumes(net):
    for dev in net.nodes:
        net.carrier(dev, True)
    net.run(seconds=3)
    net.server_up = False
    net.run(seconds=6.5 * 3600, step=600)  # past the renewal point (75 % of 8 h)
    a = net.nodes["SN-A"]
    assert a.client.next_action(net.now) == "renew" and a.retry_at > net.now - 60
    # sessions end with their key (1 h): the service's absence ends nothing earlier
    net.server_up = True
    net.run(seconds=120, step=1)
    assert a.client.next_action(net.now) is None and a.client.credentials.not_after > net.now + 7 * 3600
    assert sorted(a.sessions) == ["SN-B", "SN-C"]


def test_sessions_survive_the_server_going_away(net):
    for dev in net.nodes:
        net.carrier(dev, True)
    net.run(seconds=3)
    net.server_up = False
    net.run(seconds=600, step=10)
    net.send("SN-C", "SN-A", b"without the service")
    assert ("SN-C", "SN-A", b"without the service") in net.delivered


def test_rekey_before_the_session_key_ends(net):
    for dev in net.nodes:
        net.carrier(dev, True)
    net.run(seconds=3)
    first = net.nodes["SN-A"].sessions["SN-B"].channel.session_id
    net.run(seconds=3600 - 200, step=10)
    second = net.nodes["SN-A"].sessions["SN-B"].channel.session_id
    assert second != first and net.nodes["SN-B"].sessions["SN-A"].channel.session_id == second
    net.send("SN-B", "SN-A", b"new key")
    assert ("SN-B", "SN-A", b"new key") in net.delivered


def test_revoked_and_unenrolled_devices_stay_locked_out(net, realm):
    from tessera.device import DeviceClient
    from tessera.identity import BootstrapBundle, DeviceKey

    ghost = Node(DeviceClient(BootstrapBundle("example.net", "SN-GHOST", realm.service_public_key, []),
                              DeviceKey.generate()), net.rand)
    net.nodes["SN-GHOST"], net.macs["SN-GHOST"], net.link["SN-GHOST"] = ghost, "02:00:00:00:00:99", False
    realm.revoke("SN-C", net.now)
    for dev in net.nodes:
        net.carrier(dev, True)
    net.run(seconds=5)
    assert ghost.port is Port.BLOCKED and net.nodes["SN-C"].port is Port.BLOCKED
    assert sessions(net)["SN-A"] == ["SN-B"]


def test_a_late_eap_result_does_not_open_a_port_that_is_down(net):
    from tessera.node import Log

    node = net.nodes["SN-A"]
    acts = node.handle(PortAuthorized("tls"), net.now)
    assert node.port is Port.DOWN and any(isinstance(a, Log) and "ignored" in a.text for a in acts)
    assert not any(isinstance(a, RadiusRequest) for a in acts)
    # control: the same result while the port is admitting opens it and starts registration
    node.handle(LinkUp(), net.now)
    acts = node.handle(PortAuthorized("tls"), net.now)
    assert node.port is Port.UP and [a.operation for a in acts if isinstance(a, RadiusRequest)] == ["register"]


# -- registration lifecycle: expiry, re-registration, and being told the DRT is dead --------------
SHORT = dict(registration_lifetime=4 * 3600, tgt_lifetime=3600, session_lifetime=1800, clock_skew=300)


@pytest.fixture
def short(tmp_path, rand):
    """Two devices up and peered in a realm with short lifetimes (DRT 4 h, TGT 1 h, session
    30 min), on a registry file (so it can be backed up and restored)."""
    import os
    import sqlite3

    from tessera.realm import Realm
    from tessera.service import Policy
    from tessera.sqlite_registry import SQLiteRegistry

    realm = Realm.init(SQLiteRegistry(str(tmp_path / "registry.db")), os.urandom(32), "example.net", T0,
                       Policy(**SHORT), rand)
    n = Net(realm, realm.service("radius-a"), rand)
    n.add("SN-A", "bundle")
    n.add("SN-B", "certificate")
    with sqlite3.connect(tmp_path / "registry.db") as db, sqlite3.connect(tmp_path / "enrolled.db") as backup:
        db.backup(backup)  # as an operator's backup would: enrolled, nobody registered yet
    for dev in n.nodes:
        n.carrier(dev, True)
    n.run(seconds=3)
    assert sorted(n.nodes["SN-A"].sessions) == ["SN-B"] and n.nodes["SN-A"].client.registration.generation == 1
    return n


def ops(net, dev: str, since: int = 0) -> list[tuple[str, str]]:
    return [(op, how) for d, op, how in net.answers[since:] if d == dev]


def talks(net) -> bool:
    n = len(net.delivered)
    net.send("SN-A", "SN-B", b"still here")
    return net.delivered[n:] == [("SN-A", "SN-B", b"still here")]


def test_node_reregisters_before_its_registration_ends_and_gets_a_new_tgt(short):
    a = short.nodes["SN-A"]
    first = a.client.registration
    short.run(seconds=3 * 3600 - 600, step=60)  # before the last quarter of the DRT's 4 h
    assert a.client.registration is first
    short.run(seconds=1200, step=60)  # into it
    reg = a.client.registration
    assert reg.generation == 2 and reg.not_before >= T0 + 3 * 3600 and reg.llk != first.llk
    assert short.realm.registry.get_device("SN-A").generation == 2
    # the TGT in hand comes from the new registration: it was issued after it and renews with it
    assert a.client.credentials.not_before >= reg.not_before and a.client.next_action(short.now) is None
    assert talks(short)


def test_node_past_its_registration_expiry_registers_again_when_the_realm_is_back(short):
    a = short.nodes["SN-A"]
    short.server_up = False
    short.run(seconds=5 * 3600, step=300)  # the DRT (4 h) is gone, and with it TGT and sessions
    assert short.now > a.client.registration.not_after and a.sessions == {}
    assert a.client.next_action(short.now) == "register"
    mark = len(short.answers)
    short.server_up = True
    short.run(seconds=120, step=1)
    assert ops(short, "SN-A", mark)[:2] == [("register", "ok"), ("ticket", "ok")]  # not a TGT from a dead DRT
    assert a.client.registration.generation == 2 and a.client.credentials.not_after > short.now
    short.run(seconds=10, step=1)
    assert sorted(a.sessions) == ["SN-B"] and talks(short)


def test_node_told_superseded_registers_again(short):
    """Someone registered SN-A again behind its back (a restored copy of the device, a replayed
    registration): the realm says its DRT is superseded; the node registers afresh at once
    instead of asking for TGTs with a dead DRT until the DRT's last quarter."""
    from tessera.device import DeviceClient

    a = short.nodes["SN-A"]
    twin = DeviceClient(short.realm.bundle("SN-A", [], ""), a.client.key)
    twin.register_reply(short.service.handle(twin.register_request("radius-a", short.now, short.rand(16)), short.now), short.now)
    assert short.realm.registry.get_device("SN-A").generation == 2
    mark = len(short.answers)
    short.run(seconds=3600, step=10)  # past the renewal point of the 1 h TGT
    assert ops(short, "SN-A", mark)[:3] == [("ticket", "superseded"), ("register", "ok"), ("ticket", "ok")]
    assert a.client.registration.generation == 3 and a.client.credentials.not_after > short.now
    assert talks(short)


def test_node_told_not_registered_registers_again(short, tmp_path):
    """The registry was restored from a backup taken before the devices registered: their
    (authentic) DRTs name registrations the realm no longer knows; the node registers again."""
    import sqlite3

    with sqlite3.connect(tmp_path / "enrolled.db") as backup, sqlite3.connect(tmp_path / "registry.db") as db:
        backup.backup(db)  # restored under the running service
    assert short.realm.registry.get_device("SN-A").state.value == "enrolled"
    mark = len(short.answers)
    short.run(seconds=3600, step=10)  # past the renewal point of the 1 h TGT
    assert ops(short, "SN-A", mark)[:3] == [("ticket", "not-registered"), ("register", "ok"), ("ticket", "ok")]
    assert short.realm.registry.get_device("SN-A").state.value == "registered"
    assert short.nodes["SN-A"].client.registration.generation == 1  # the restored registry counts from 0 again
    short.run(seconds=30, step=1)
    assert talks(short)
