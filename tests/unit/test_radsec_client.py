"""The RadSec client (RADIUS over TLS, RFC 6614) against fake TLS servers in threads on loopback:
mutual TLS and the server's name, framing by the header's length, replies matched and verified,
one connection kept and shared, failover with hold-down, every wait bounded, named failures.

The real FreeRADIUS side is in tests/server/test_radsec.py."""

from __future__ import annotations

import hashlib
import select
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from pyrad import packet

from tessera.identity import CertificateAuthority, DeviceKey, pem_certificate
from tessera.radius.attrs import split_message
from tessera.radius.client import NoServerAnsweredError, RejectedError, load_dictionary
from tessera.radius.radsec import RADSEC_SECRET, RadSecClient, RadSecServer, tls_context

DICT = load_dictionary()
NAME = "radius.test"


class PKI:
    """A realm CA that issues the fake server's certificate and the device's."""

    def __init__(self, d: Path, name: str = "Test Realm CA"):
        now = time.time()
        self.ca = CertificateAuthority.generate(name, now)
        self.ca_pem = pem_certificate(self.ca.certificate)
        self.dir = d
        d.mkdir(parents=True, exist_ok=True)
        (d / "ca.pem").write_bytes(self.ca_pem)
        skey = DeviceKey.generate()
        (d / "server.pem").write_bytes(pem_certificate(self.ca.issue_server_certificate(NAME, skey.public_key, now)))
        (d / "server.key").write_bytes(skey.pem())
        dkey = DeviceKey.generate()
        (d / "device.pem").write_bytes(pem_certificate(self.ca.issue_device_certificate("edge-1", dkey.public_key, now)))
        (d / "device.key").write_bytes(dkey.pem())

    def client_context(self, ca_pem: bytes | None = None) -> ssl.SSLContext:
        return tls_context(str(self.dir / "device.pem"), str(self.dir / "device.key"), ca_pem or self.ca_pem)


def reply_to(data: bytes, code: int = packet.AccessAccept, corrupt_ma: bool = False, wrong_id: bool = False) -> bytes:
    """The reply a RadSec server sends (Message-Authenticator keyed with "radsec"), echoing the
    Tessera-Message; optionally with a corrupt Message-Authenticator (header re-signed, so only
    that check can catch it) or another request's Identifier."""
    req = packet.AuthPacket(packet=data, secret=RADSEC_SECRET, dict=DICT)
    reply = req.CreateReply()
    reply.code = code
    if wrong_id:
        reply.id = (req.id + 1) % 256
    if code == packet.AccessReject:
        reply.AddAttribute("Reply-Message", "revoked: device edge-1 is revoked")
        reply.AddAttribute("Tessera-Error", 8)
    elif wrong_id or corrupt_ma:  # what a client taking it would return
        reply.AddAttribute("Tessera-Reply", b"forged")
    else:
        for piece in split_message(b"echo:" + b"".join(req.get("Tessera-Message", []))):
            reply.AddAttribute("Tessera-Reply", piece)
    reply.add_message_authenticator()
    raw = bytearray(reply.ReplyPacket())
    if corrupt_ma:
        i = 20
        while raw[i] != 80:
            i += raw[i + 1]
        raw[i + 2] ^= 0xFF
        raw[4:20] = hashlib.md5(bytes(raw[:4]) + req.authenticator + bytes(raw[20:]) + RADSEC_SECRET).digest()
    return bytes(raw)


class FakeRadSec:
    """A TLS server that requires a client certificate from the PKI's CA and answers each
    request according to ``mode``; counts connections and requests."""

    def __init__(self, pki: PKI, mode: str = "echo"):
        self.mode = mode
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pki.dir / "server.pem", pki.dir / "server.key")
        self.ctx.load_verify_locations(pki.dir / "ca.pem")
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self.peer_names: list[str] = []
        self.running = True
        self.open: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def server(self, server_id: str = "radius-1", tls_name: str = NAME) -> RadSecServer:
        return RadSecServer(server_id, "127.0.0.1", self.port, tls_name)

    def _accept(self):
        while self.running:
            try:
                raw, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(raw, self.connections), daemon=True).start()

    def _serve(self, raw: socket.socket, index: int):
        self.open.append(raw)
        if self.mode == "no-handshake":  # accepts TCP, never speaks TLS
            while self.running:
                time.sleep(0.05)
            raw.close()
            return
        raw.settimeout(5)
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        self.peer_names.append(dict(x[0] for x in conn.getpeercert()["subject"])["commonName"])
        n = 0
        try:
            while self.running:
                head = _read(conn, 4)
                if head is None:
                    return
                data = head + (_read(conn, int.from_bytes(head[2:4], "big") - 4) or b"")
                self.requests.append(data)
                n += 1
                if self.mode == "silent":
                    continue
                if self.mode == "close-second" and n == 2:  # as if its idle timer fired just then
                    return
                if self.mode == "junk-length":
                    conn.sendall(b"\x02\x00\x00\x05")
                    continue
                if self.mode == "wrong-id-first":
                    conn.sendall(reply_to(data, wrong_id=True))
                if self.mode == "bad-ma-first":
                    conn.sendall(reply_to(data, corrupt_ma=True))
                code = packet.AccessReject if self.mode == "reject" else packet.AccessAccept
                conn.sendall(reply_to(data, code))
                if self.mode == "close-after-answer":
                    return
        except (ssl.SSLError, OSError):
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def close(self):
        self.running = False
        self.thread.join()
        self.listener.close()
        for s in self.open:
            try:
                s.close()
            except OSError:
                pass


def _read(conn, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


@pytest.fixture
def pki(tmp_path) -> PKI:
    return PKI(tmp_path / "pki")


@pytest.fixture
def fakes():
    made = []

    def make(pki, mode="echo"):
        f = FakeRadSec(pki, mode)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_radsec_exchange_over_mutual_tls_and_one_kept_connection(pki, fakes):
    srv = fakes(pki)
    with RadSecClient([srv.server()], pki.client_context(), timeout=2) as client:
        for i in range(5):
            assert client.exchange("edge-1", lambda sid: f"{sid}:{i}".encode()) == f"echo:radius-1:{i}".encode()
        assert client.status(srv.server())
    assert srv.connections == 1 and srv.peer_names == ["edge-1"]  # the device certificate, one connection
    first = packet.AuthPacket(packet=srv.requests[0], secret=RADSEC_SECRET, dict=DICT)
    assert first["User-Name"] == ["edge-1"] and first.message_authenticator  # Message-Authenticator keyed "radsec"
    assert first.verify_message_authenticator()


def test_radsec_concurrent_exchanges_share_the_connection_and_get_their_own_answers(pki, fakes):
    srv = fakes(pki)
    results: dict[int, bytes] = {}
    with RadSecClient([srv.server()], pki.client_context(), timeout=5) as client:
        def work(i):
            results[i] = client.exchange("edge-1", lambda sid: b"m%d" % i)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == {i: b"echo:m%d" % i for i in range(8)} and srv.connections == 1


def test_radsec_server_certificate_must_chain_to_the_realm_ca_and_carry_the_name(pki, fakes, tmp_path):
    srv = fakes(pki)
    foreign = PKI(tmp_path / "foreign", "Foreign CA")
    with RadSecClient([srv.server()], pki.client_context(ca_pem=foreign.ca_pem), timeout=2) as client:
        with pytest.raises(NoServerAnsweredError) as e:
            client.exchange("edge-1", lambda sid: b"x")
    assert "server certificate refused" in e.value.reasons["radius-1"], e.value.reasons
    with RadSecClient([srv.server(tls_name="other.test")], pki.client_context(), timeout=2) as client:
        with pytest.raises(NoServerAnsweredError) as e:
            client.exchange("edge-1", lambda sid: b"x")
    assert "server certificate refused" in e.value.reasons["radius-1"] and "other.test" in e.value.reasons["radius-1"]
    assert srv.requests == []  # nothing was sent to a server the device could not verify
    with RadSecClient([srv.server()], pki.client_context(), timeout=2) as client:  # the right CA and name
        assert client.exchange("edge-1", lambda sid: b"x") == b"echo:x"


def test_radsec_replies_are_verified_and_matched_by_identifier(pki, fakes):
    for mode in ("wrong-id-first", "bad-ma-first"):
        srv = fakes(pki, mode)
        with RadSecClient([srv.server()], pki.client_context(), timeout=2) as client:
            assert client.exchange("edge-1", lambda sid: b"x") == b"echo:x", mode  # the bad one was dropped
    srv = fakes(pki, "reject")
    with RadSecClient([srv.server()], pki.client_context(), timeout=2) as client:
        with pytest.raises(RejectedError) as e:
            client.exchange("edge-1", lambda sid: b"x")
    assert (e.value.code, e.value.server_id) == (8, "radius-1") and "revoked" in e.value.reason


def test_radsec_a_broken_stream_is_a_named_failure_and_closes_the_connection(pki, fakes):
    srv = fakes(pki, "junk-length")
    with RadSecClient([srv.server()], pki.client_context(), timeout=2) as client:
        with pytest.raises(NoServerAnsweredError) as e:
            client.exchange("edge-1", lambda sid: b"x")
        assert "length 5" in e.value.reasons["radius-1"]
        assert client._conns["radius-1"].sock is None


def test_radsec_every_wait_is_bounded(pki, fakes):
    for mode, what in (("silent", "timed out waiting for the answer"),
                       ("no-handshake", "timed out waiting for TLS handshake")):
        srv = fakes(pki, mode)
        with RadSecClient([srv.server()], pki.client_context(), timeout=0.5) as client:
            t0 = time.monotonic()
            with pytest.raises(NoServerAnsweredError) as e:
                client.exchange("edge-1", lambda sid: b"x")
            assert time.monotonic() - t0 < 2.0, mode
        assert what in e.value.reasons["radius-1"], e.value.reasons
    with RadSecClient([RadSecServer("radius-1", "127.0.0.1", closed_port(), NAME)], pki.client_context()) as client:
        with pytest.raises(NoServerAnsweredError) as e:
            client.exchange("edge-1", lambda sid: b"x")
    assert e.value.reasons == {"radius-1": "connection refused"}
    assert str(e.value) == "no RADIUS server answered: radius-1 (connection refused)"


def test_radsec_connection_closed_by_the_server_is_replaced(pki, fakes):
    """Idle close noticed before sending (the server closed after answering), and the race: the
    server closes a reused connection as the request arrives -- rebuilt and sent once more."""
    srv = fakes(pki, "close-after-answer")
    builds = []
    with RadSecClient([srv.server()], pki.client_context(), timeout=2) as client:
        assert client.exchange("edge-1", lambda sid: b"a") == b"echo:a"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not select.select([client._conns["radius-1"].sock], [], [], 0.05)[0]:
            pass  # until the server's close has arrived
        assert client.exchange("edge-1", lambda sid: builds.append(sid) or b"b") == b"echo:b"
    assert builds == ["radius-1"]  # noticed before sending: built once, for a new connection
    assert srv.connections == 2 and len(srv.requests) == 2
    srv = fakes(pki, "close-second")
    builds = []
    with RadSecClient([srv.server()], pki.client_context(), timeout=2) as client:
        assert client.exchange("edge-1", lambda sid: b"a") == b"echo:a"
        assert client.exchange("edge-1", lambda sid: builds.append(sid) or b"b%d" % len(builds)) == b"echo:b2"
    assert builds == ["radius-1", "radius-1"] and srv.connections == 2  # a fresh request on a new connection


def test_radsec_failover_holddown_and_reconnect_later(pki, fakes):
    dead, live = fakes(pki, "silent"), fakes(pki)
    now = [1000.0]
    with RadSecClient([dead.server("radius-1"), live.server("radius-2")], pki.client_context(), timeout=0.3,
                      holddown=30, clock=lambda: now[0] + time.monotonic()) as client:
        built = []
        assert client.exchange("edge-1", lambda sid: built.append(sid) or sid.encode()) == b"echo:radius-2"
        assert built == ["radius-1", "radius-2"] and len(dead.requests) == 1  # rebuilt for the next server
        assert client.exchange("edge-1", lambda sid: sid.encode()) == b"echo:radius-2"
        assert len(dead.requests) == 1  # held down: radius-2 first, radius-1 not tried
        now[0] += 31  # the hold-down is over: radius-1 first again, on a new connection
        assert client.exchange("edge-1", lambda sid: sid.encode()) == b"echo:radius-2"
        assert len(dead.requests) == 2 and dead.connections == 2
    with RadSecClient([dead.server("radius-1"), RadSecServer("radius-2", "127.0.0.1", closed_port(), NAME)],
                      pki.client_context(), timeout=0.3) as client:
        with pytest.raises(NoServerAnsweredError) as e:
            client.exchange("edge-1", lambda sid: b"x")
    assert e.value.server_ids == ["radius-1", "radius-2"]
    assert e.value.reasons == {"radius-1": "timed out waiting for the answer", "radius-2": "connection refused"}
