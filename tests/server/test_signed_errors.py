"""Every error a device acts on is proven, over a real FreeRADIUS (issue 8 §4).

The realm's own FreeRADIUS (production opener, SQLite registry) answers a device core and a
node driven through the real RADIUS client: its clock-skew and revoked rejects carry a
SignedError that verifies with the bundle's service key over the request's nonce, and the node
acts on them. A fake RADIUS server in this test holds the RADIUS secret — as every device
bundle does today — and answers Access-Reject with Message-Authenticator correct and an unsigned
ErrorMessage (clock-skew with server time 2^64-1, revoked, unknown-device, superseded,
not-registered), or with a SignedError the real server wrote for an earlier request: the device
core and the node do not act on it, and their next request to the real server succeeds.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time

import pytest
from pyrad import packet

from tessera import errors as E, message as m
from tessera.device import DeviceClient, State
from tessera.identity import DeviceKey, ServerEntry, pem_certificate, verify
from tessera.node import LinkUp, Node, Port, PortAuthorized, RadiusAnswer, RadiusFailed, RadiusRequest
from tessera.radius.attrs import split_message
from tessera.radius.client import RadiusClient, RejectedError, Server, load_dictionary
from tessera.realm import Realm, create_kek
from tessera.seal import point_from_bytes
from tessera.service import ERROR_CONTEXT, Policy
from tessera.sqlite_registry import SQLiteRegistry

from tests.gate import needs_freeradius
from tests.server.realserver import SECRET, make_server

pytestmark = needs_freeradius
REALM = "signed.example"
TGT_LIFE = 200  # short, so that a renewal falls due within the realm's 300 s clock skew
RENEW_AHEAD = 160  # a node clock this far ahead finds its renewal due (last quarter: 150 s)


class Lab:
    def __init__(self, directory, server):
        self.dir, self.server = directory, server

    def device(self, device_id: str) -> DeviceClient:
        key = DeviceKey.generate()
        self.realm.enrol_key(device_id, key.public_bytes(), time.time())
        entry = ServerEntry(self.server.cfg.server_id, self.server.address, self.server.port)
        return DeviceClient(self.realm.bundle(device_id, [entry], SECRET), key)

    def client(self) -> RadiusClient:
        return self.server.client(timeout=2.0)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, pki):
    directory = tmp_path_factory.mktemp("signed")
    db, kek = directory / "registry.db", directory / "kek"
    realm = Realm.init(SQLiteRegistry(str(db)), create_kek(str(kek)), REALM, time.time(),
                       Policy(tgt_lifetime=TGT_LIFE))
    device_cas = b"".join(pem_certificate(c) for c in realm.trusted_cas())
    tls = pki.install_server_files(directory / "tls", "radius.lab", time.time(), (device_cas,))
    with make_server(directory, db=db, kek=kek, tls_dir=tls, server_id="radius-1") as server:
        lab = Lab(directory, server)
        lab.realm = realm
        yield lab


class FakeServer:
    """A RADIUS server holding the realm's RADIUS secret: answers every Access-Request with an
    Access-Reject carrying ``reply(request message)`` in Tessera-Reply, a Tessera-Error and a
    Reply-Message, with a correct Response Authenticator and Message-Authenticator."""

    def __init__(self, code: int, reply):
        self.code, self.reply, self.seen = code, reply, []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.dict = load_dictionary()
        self.running = True
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while self.running:
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if not ready:
                continue
            data, peer = self.sock.recvfrom(4096)
            req = packet.AuthPacket(packet=data, secret=SECRET.encode(), dict=self.dict)
            message = b"".join(req["Tessera-Message"])
            self.seen.append(message)
            rep = req.CreateReply()
            rep.code = packet.AccessReject
            rep.AddAttribute("Reply-Message", "forged")
            rep.AddAttribute("Tessera-Error", self.code)
            for piece in split_message(self.reply(message)):
                rep.AddAttribute("Tessera-Reply", piece)
            rep.add_message_authenticator()
            self.sock.sendto(rep.ReplyPacket(), peer)

    def client(self, server_id: str) -> RadiusClient:
        port = self.sock.getsockname()[1]
        return RadiusClient([Server(server_id, "127.0.0.1", port, SECRET.encode())], timeout=2.0, retries=0)

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()


@pytest.fixture
def fake():
    made = []

    def make(code: int, reply) -> FakeServer:
        made.append(FakeServer(code, reply))
        return made[-1]

    yield make
    for f in made:
        f.close()


def exchange(client: RadiusClient, device_id: str, build) -> tuple[bytes | None, RejectedError | None]:
    try:
        return client.exchange(device_id, build), None
    except RejectedError as exc:
        return None, exc


def keeping(sent: list, build):
    """A RADIUS client's build callable that also keeps what it built."""
    def built(server_id: str) -> bytes:
        sent.append(build(server_id))
        return sent[-1]
    return built


def drive(node: Node, client: RadiusClient, ahead: float = 0.0, event=None, most: int = 2) -> list[tuple[str, str]]:
    """Feed `event` (or a tick) to the node on a clock `ahead` s of the real one, and carry out
    the RADIUS requests it asks for over `client` (at most `most`: a clock ahead of the realm's
    finds a fresh short TGT due again at once); the outcomes, in order."""
    outcomes, queue = [], [event]
    while queue:
        actions = node.handle(queue.pop(0), time.time() + ahead)
        for a in actions:
            if isinstance(a, RadiusRequest) and len(outcomes) < most:
                reply, exc = exchange(client, node.device_id, a.build)
                outcomes.append((a.operation, "ok" if exc is None else f"rejected {exc.code}"))
                queue.append(RadiusAnswer(a.op_id, reply) if exc is None else RadiusFailed(a.op_id, str(exc), exc.reply))
    return outcomes


def admitted_node(lab, device_id: str) -> Node:
    node = Node(lab.device(device_id), os.urandom)
    node.handle(LinkUp(), time.time())
    assert drive(node, lab.client(), event=PortAuthorized("tls")) == [("register", "ok"), ("ticket", "ok")]
    assert node.port is Port.UP and node.client.state is State.AUTHENTICATED
    return node


def service_key(lab, device_id: str):
    return point_from_bytes(lab.realm.bundle(device_id, [], SECRET).service_public_key)


# == the realm's own errors: signed, verifiable, acted on =========================================
def test_real_clock_skew_and_revoked_rejects_verify_with_the_bundles_service_key(lab):
    dev = lab.device("se-real-1")
    send = lab.client()
    dev.register_reply(send.exchange(dev.device_id, lambda sid: dev.register_request(sid, time.time(), os.urandom(16))),
                       time.time())
    dev.ticket_reply(send.exchange(dev.device_id, lambda sid: dev.auth_request(sid, time.time(), os.urandom(16))),
                     time.time())
    key = service_key(lab, "se-real-1")
    # a clock an hour fast: the reject's SignedError names this request and the server's clock
    sent = []
    _, exc = exchange(send, dev.device_id, keeping(sent, lambda sid: dev.renew_request(sid, time.time() + 3600,
                                                                                        os.urandom(16))))
    assert exc is not None and exc.code == E.ClockSkewError.code
    reply = m.decode(exc.reply)
    assert isinstance(reply, m.SignedError)
    assert (reply.realm, reply.device_id, reply.server_id, reply.request_nonce) == \
        (REALM, "se-real-1", "radius-1", m.decode(sent[-1]).nonce)
    assert abs(reply.server_time - time.time()) < 5
    assert verify(key, reply.signature, ERROR_CONTEXT + reply.body())
    assert not verify(key, reply.signature, ERROR_CONTEXT + reply.body()[:-1] + b"!")  # control: it is this body
    with pytest.raises(E.ClockSkewError) as got:
        dev.ticket_reply(exc.reply, time.time())
    assert got.value.signed and got.value.server_time == reply.server_time
    # the same request with its proof broken: an unsigned ErrorMessage saying bad-proof
    request = dev.renew_request("radius-1", time.time(), os.urandom(16))
    _, exc = exchange(send, dev.device_id, lambda sid: request[:-1] + bytes([request[-1] ^ 1]))
    err = m.decode(exc.reply)
    assert exc.code == E.BadProofError.code and isinstance(err, m.ErrorMessage) and (err.code, err.server_time) == (14, 0)
    dev.abandon()
    # revoked: the SignedError of the reject verifies, and the device core reads it as signed
    lab.realm.revoke("se-real-1", time.time(), "test")
    sent.clear()
    _, exc = exchange(send, dev.device_id, keeping(sent, lambda sid: dev.renew_request(sid, time.time(), os.urandom(16))))
    assert exc.code == E.RevokedError.code
    reply = m.decode(exc.reply)
    assert isinstance(reply, m.SignedError) and reply.request_nonce == m.decode(sent[-1]).nonce
    assert verify(key, reply.signature, ERROR_CONTEXT + reply.body())
    with pytest.raises(E.RevokedError) as got:
        dev.ticket_reply(exc.reply, time.time())
    assert got.value.signed


def test_node_drops_its_tickets_on_the_real_servers_signed_revoked(lab):
    """Positive control for the forged rejects below, same setup: the real server's revoked."""
    node = admitted_node(lab, "se-real-2")
    lab.realm.revoke("se-real-2", time.time(), "test")
    outcomes = drive(node, lab.client(), ahead=RENEW_AHEAD)
    assert outcomes[0] == ("ticket", f"rejected {E.RevokedError.code}")
    assert node.client.registration is None and node.client.credentials is None


# == forged with the RADIUS secret: not acted on ==================================================
FORGED = [
    (E.ClockSkewError.code, 2**64 - 1),
    (E.RevokedError.code, 0),
    (E.UnknownDeviceError.code, 0),
    (E.SupersededError.code, 0),
    (E.NotRegisteredError.code, 0),
]


@pytest.mark.parametrize("code, server_time", FORGED, ids=["clock-skew-2^64-1", "revoked", "unknown-device",
                                                           "superseded", "not-registered"])
def test_reject_forged_with_the_radius_secret_is_not_acted_on(lab, fake, code, server_time):
    device_id = f"se-forged-{code}"
    node = admitted_node(lab, device_id)
    reg, creds = node.client.registration, node.client.credentials
    forger = fake(code, lambda message: m.ErrorMessage(code, server_time, "forged").encode())
    # the device core alone: the reject arrives (the client verified its authenticators) and is refused
    client = forger.client("radius-1")
    _, exc = exchange(client, device_id, lambda sid: node.client.renew_request(sid, time.time(), os.urandom(16)))
    assert exc is not None and exc.code == code and forger.seen  # the forged reject was delivered
    with pytest.raises(E.BadProofError):
        node.client.ticket_reply(exc.reply, time.time())
    assert (node.client.registration, node.client.credentials) == (reg, creds)
    # the node: its renewal answered by the forger changes nothing ...
    outcomes = drive(node, client, ahead=RENEW_AHEAD)
    assert outcomes == [("ticket", f"rejected {code}")]
    assert (node.client.registration, node.client.credentials, node.offset) == (reg, creds, 0)
    # ... and its retry, to the real server, builds and is served
    outcomes = drive(node, lab.client(), ahead=RENEW_AHEAD + 2, most=1)  # past the back-off (1 s)
    assert outcomes == [("ticket", "ok")]
    assert node.client.registration is reg and node.client.credentials is not creds
    assert node.client.state is State.AUTHENTICATED


def test_real_signed_error_replayed_by_a_forger_for_another_request_is_not_acted_on(lab, fake):
    """A SignedError the real server wrote (revoked, for this device, recorded off the wire) sent
    by the forger in answer to a later request: its nonce is another's, so nothing happens."""
    node = admitted_node(lab, "se-replay")
    reg, creds = node.client.registration, node.client.credentials
    # record a real signed error for this device: its clock an hour fast, a real clock-skew reject
    _, exc = exchange(lab.client(), "se-replay", lambda sid: node.client.renew_request(sid, time.time() + 3600,
                                                                                        os.urandom(16)))
    node.client.abandon()
    recorded = exc.reply
    assert m.decode(recorded).code == E.ClockSkewError.code
    assert verify(service_key(lab, "se-replay"), m.decode(recorded).signature, ERROR_CONTEXT + m.decode(recorded).body())
    forger = fake(E.ClockSkewError.code, lambda message: recorded)
    outcomes = drive(node, forger.client("radius-1"), ahead=RENEW_AHEAD)
    assert outcomes == [("ticket", f"rejected {E.ClockSkewError.code}")]
    assert (node.client.registration, node.client.credentials, node.offset) == (reg, creds, 0)
    assert drive(node, lab.client(), ahead=RENEW_AHEAD + 2, most=1) == [("ticket", "ok")]
