"""The agent's brain with three devices, a service and a simulated wire, all in memory: link up
to encrypted traffic with no manual step, link flap, server down and back, rekey, revocation."""

from collections import deque

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

    def add(self, device_id: str, how: str = "key") -> Node:
        node = Node(make_device(self.realm, device_id, how), self.rand, Timers(rekey_before=300))
        self.nodes[device_id] = node
        self.macs[device_id] = "02:00:00:00:00:%02x" % len(self.nodes)
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
            while self.queue:
                dev, ev = self.queue.popleft()
                self.act(dev, self.nodes[dev].handle(ev, self.now))
            if self.now >= end:
                return
            self.now += step
            for dev, node in self.nodes.items():
                self.act(dev, node.handle(None, self.now))

    def act(self, dev: str, actions) -> None:
        for a in actions:
            if isinstance(a, StartAdmission) and self.link[dev]:
                ok = self.admit(dev, a)
                self.queue.append((dev, PortAuthorized(a.method) if ok else PortRejected(a.method)))
            elif isinstance(a, RadiusRequest):
                if not self.server_up:
                    self.queue.append((dev, RadiusFailed(a.op_id, "no RADIUS server answered")))
                    continue
                try:
                    self.queue.append((dev, RadiusAnswer(a.op_id, self.service.handle(a.build("radius-a"), self.now))))
                except E.TesseraError as exc:
                    self.queue.append((dev, RadiusFailed(a.op_id, exc.reason, self.service.error_reply(exc, self.now))))
            elif isinstance(a, SendFrame):
                self.frames.append((dev, a.dst, a.payload))
                for other, mac in self.macs.items():
                    if other != dev and self.link[dev] and self.link[other] and a.dst in (mac, BROADCAST):
                        self.queue.append((other, FrameReceived(self.macs[dev], a.payload)))
            elif isinstance(a, Deliver):
                self.delivered.append((a.peer, dev, a.data))

    def carrier(self, dev: str, up: bool) -> None:
        self.link[dev] = up
        self.run([(dev, LinkUp() if up else LinkDown())])

    def send(self, src: str, dst: str, data: bytes) -> None:
        self.act(src, self.nodes[src].send(dst, data, self.now))
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
