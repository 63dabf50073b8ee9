"""A realm, two admitted devices and a peer session, made in memory with the real core: the seeds.

Every seed a harness starts from is a real encoding the core wrote in this setup: both devices'
RegisterRequest, AuthRequest and RenewRequest and the service's replies, B's SessionRequest with
A's PeerHello inside, the SessionReply, PeerTicket, PeerFinished, PeerData records both ways, a
PeerAnnounce, ErrorMessages, sealed DRTs and TGTs under two service key versions, the agent's
sealed state and a bootstrap bundle. Import it inside ``common.instrumented()``.

Randomness comes from a counter (SHA-256 of a seed and a number) so a world is the same every
time, except ECDSA's per-signature k and the realm's CA and signing key, which come from the OS:
nothing a harness compares byte for byte depends on them.
"""

from __future__ import annotations

import hashlib

from tessera import message as m
from tessera.agent import l2
from tessera.device import DeviceClient
from tessera.identity import DeviceKey, ServerEntry
from tessera.node import FrameReceived, LinkUp, Node, PortAuthorized, RadiusAnswer, RadiusRequest, SendFrame
from tessera.peer import PeerInitiator, PeerResponder
from tessera.realm import Realm
from tessera.service import Policy
from tessera.sqlite_registry import SQLiteRegistry

T0 = 1_800_000_000  # a fixed "now" (2027-01-15)
REALM = "example.net"
SERVER_ID = "radius-a"
SERVERS = [ServerEntry(SERVER_ID, "192.0.2.1"), ServerEntry("radius-b", "192.0.2.2", 11812)]
A, B = "SN-A-0000000001", "SN-B-0000000002"  # A < B: A initiates
MAC_A, MAC_B, MAC_X = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:99"


class Counter:
    """Deterministic random bytes."""

    def __init__(self, seed: bytes = b"fuzz"):
        self.seed, self.n = seed, 0

    def __call__(self, size: int) -> bytes:
        out = b""
        while len(out) < size:
            self.n += 1
            out += hashlib.sha256(self.seed + self.n.to_bytes(8, "big")).digest()
        return out[:size]


def device_key(device_id: str) -> DeviceKey:
    return DeviceKey.generate(hashlib.sha256(b"device key " + device_id.encode()).digest())


class World:
    """The realm and everything its parties said to each other once."""

    def __init__(self, rotate: bool = True):
        self.rand = Counter()
        self.realm = Realm.init(SQLiteRegistry(":memory:"), self.rand(32), REALM, T0, Policy(), random=self.rand)
        self.service = self.realm.service(SERVER_ID)
        self.messages: dict[str, bytes] = {}
        self.a, self.b = self.enrol(A), self.enrol(B)
        self.admit(self.a, "a")
        if rotate:  # two key versions: kvno 1 still opens A's DRT, kvno 2 seals everything after
            self.realm.rotate(T0)
        self.admit(self.b, "b")
        self.renew(self.a, "a")
        self.peer()
        self.messages["announce"] = m.PeerAnnounce(REALM, B, 0x0102030405060708).encode()
        self.messages["error"] = m.ErrorMessage(13, T0, "clock-skew: timestamp is 900 s from server time").encode()
        self.messages["error-plain"] = m.ErrorMessage(15, 0, "replay: the request was seen before").encode()

    def enrol(self, device_id: str) -> DeviceClient:
        key = device_key(device_id)
        self.realm.enrol_key(device_id, key.public_bytes(), T0)
        return DeviceClient(self.realm.bundle(device_id, SERVERS, "s3cret"), key)

    def _ask(self, name: str, request: bytes) -> bytes:
        self.messages[name] = request
        reply = self.service.handle(request, T0)
        self.messages[name + "-reply"] = reply
        return reply

    def admit(self, dev: DeviceClient, tag: str) -> None:
        req = dev.register_request(SERVER_ID, T0, self.rand(16))
        dev.register_reply(self._ask(f"register-{tag}", req), T0)
        req = dev.auth_request(SERVER_ID, T0, self.rand(16))
        dev.ticket_reply(self._ask(f"auth-{tag}", req), T0)

    def renew(self, dev: DeviceClient, tag: str) -> None:
        req = dev.renew_request(SERVER_ID, T0, self.rand(16))
        dev.ticket_reply(self._ask(f"renew-{tag}", req), T0)

    def peer(self) -> None:
        ia, rb = PeerInitiator(self.a, B), PeerResponder(self.b)
        hello = ia.hello(T0, self.rand(16))
        self.messages["hello"] = hello
        rb.receive_hello(hello, T0)
        ticket = rb.receive_session_reply(self._ask("session", rb.session_request(SERVER_ID, T0, self.rand(16))), T0)
        self.messages["peer-ticket"] = ticket
        fin = ia.receive_ticket(ticket, T0)
        self.messages["peer-finished"] = fin
        self.channel_a, self.channel_b = ia.channel, rb.receive_finished(fin, T0)
        for i in range(3):
            self.messages[f"data-ab-{i}"] = self.channel_a.seal(b"hello B %d" % i)
            self.messages[f"data-ba-{i}"] = self.channel_b.seal(b"hello A %d" % i * 20)
        self.messages["data-empty"] = self.channel_a.seal(b"")

    def tickets(self) -> list[bytes]:
        """Sealed DRTs (A's under kvno 1, B's under 2) and TGTs (kvno 2) as the devices hold them."""
        return [self.a.registration.drt, self.b.registration.drt, self.a.credentials.tgt, self.b.credentials.tgt]


def frames_of(actions, kind: int) -> list[SendFrame]:
    return [a for a in actions if isinstance(a, SendFrame) and len(a.payload) > 1 and a.payload[1] == kind]


class Stages:
    """Nodes A and B (ports up, TGTs held) at stage 0 (announced), 1 (A's hello sent, B's
    PeerTicket sent: B's session request answered by the realm) or 2 (session established and
    confirmed both ways).
    The realm answers once, when this is made; later builds replay its answer, which fits
    because the nodes' randomness is a counter: they say the same bytes every time."""

    T = float(T0)

    def __init__(self, w: World):
        self.w = w
        self.session_reply: bytes | None = None
        self.sent: list[tuple[str, str, bytes]] = []  # (from mac, to mac, payload) of a full handshake
        self.build(2, record=True)

    def node(self, client, seed: bytes, mac: str) -> Node:
        n = Node(client, Counter(seed), mac=mac)
        n.handle(LinkUp(), self.T)
        n.handle(PortAuthorized("tls"), self.T)
        return n

    def build(self, stage: int, record: bool = False) -> tuple[Node, Node]:
        T = self.T
        a, b = self.node(self.w.a, b"node a", MAC_A), self.node(self.w.b, b"node b", MAC_B)
        announce_b = m.PeerAnnounce(REALM, B, 7).encode()
        hello = frames_of(a.handle(FrameReceived(MAC_B, announce_b), T), m.PeerHello.TYPE)
        if record:
            self.sent += [(MAC_B, l2.BROADCAST, announce_b), (MAC_A, MAC_B, hello[0].payload)]
        if stage == 0:
            return a, b
        asks = [x for x in b.handle(FrameReceived(MAC_A, hello[0].payload), T) if isinstance(x, RadiusRequest)]
        request = asks[0].build(SERVER_ID)  # as the agent's worker does: moves B's role on
        if record:
            self.session_reply = self.w.service.handle(request, T0)
        ticket = frames_of(b.handle(RadiusAnswer(asks[0].op_id, self.session_reply), T), m.PeerTicket.TYPE)
        if stage == 1:
            return a, b
        fin = frames_of(a.handle(FrameReceived(MAC_B, ticket[0].payload), T), m.PeerFinished.TYPE)
        confirm = frames_of(b.handle(FrameReceived(MAC_A, fin[0].payload), T), m.PeerConfirm.TYPE)
        a.handle(FrameReceived(MAC_B, confirm[0].payload), T)
        if record:
            self.sent += [(MAC_B, MAC_A, ticket[0].payload), (MAC_A, MAC_B, fin[0].payload),
                          (MAC_B, MAC_A, confirm[0].payload)]
            for text in (b"to B", b"to B again"):
                self.sent += [(MAC_A, MAC_B, x.payload) for x in a.send(B, text, T)]
            self.sent += [(MAC_B, MAC_A, x.payload) for x in b.send(A, b"to A", T)]
        assert B in a.sessions and A in b.sessions, "the recorded handshake did not establish"
        return a, b
