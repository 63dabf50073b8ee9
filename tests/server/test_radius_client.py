"""The RADIUS client against fake servers in threads: verification, retries, failover."""

import hashlib
import socket
import threading

import pytest
from pyrad import packet

from tessera.radius.attrs import split_message
from tessera.radius.client import (NoServerAnsweredError, RadiusClient, RejectedError, Server,
                                   load_dictionary)

SECRET = b"fake-secret"
DICT = load_dictionary()


def sign_reply(request: packet.Packet, reply: packet.Packet, corrupt_ma: bool = False) -> bytes:
    """Encode ``reply``; optionally corrupt its Message-Authenticator and re-sign the header,
    so that only the Message-Authenticator check can catch it."""
    raw = bytearray(reply.ReplyPacket())
    if corrupt_ma:
        i = 20
        while raw[i] != 80:
            i += raw[i + 1]
        raw[i + 2] ^= 0xFF
        raw[4:20] = hashlib.md5(bytes(raw[:4]) + request.authenticator + bytes(raw[20:]) + SECRET).digest()
    return bytes(raw)


class FakeServer:
    """Answers every request according to ``mode``; records what it received."""

    def __init__(self, mode: str, error: int = 8):
        self.mode = mode
        self.error = error
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.running = True
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while self.running:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            self.received.append(data)
            req = packet.AuthPacket(packet=data, secret=SECRET, dict=DICT)
            if self.mode == "silent":
                continue
            code = packet.AccessReject if self.mode == "reject" else packet.AccessAccept
            reply = req.CreateReply()
            reply.code = code
            message = b"".join(req["Tessera-Message"])
            if self.mode == "reject":
                reply.AddAttribute("Reply-Message", "revoked: device is revoked")
                reply.AddAttribute("Tessera-Error", self.error)
                reply.AddAttribute("Tessera-Reply", b"error-message")
            else:
                for piece in split_message(b"echo:" + message):
                    reply.AddAttribute("Tessera-Reply", piece)
            if self.mode != "no-ma":
                reply.add_message_authenticator()
            else:
                reply.message_authenticator = None
            self.sock.sendto(sign_reply(req, reply, corrupt_ma=self.mode == "bad-ma"), peer)

    def entry(self, server_id: str) -> Server:
        return Server(server_id, "127.0.0.1", self.port, SECRET)

    def close(self):
        self.running = False
        self.thread.join()
        self.sock.close()


@pytest.fixture
def fake():
    servers = []

    def make(mode, error=8):
        servers.append(FakeServer(mode, error))
        return servers[-1]
    yield make
    for s in servers:
        s.close()


def test_client_accept_returns_joined_reply_and_sends_message_authenticator(fake):
    srv = fake("good")
    reply = RadiusClient([srv.entry("r1")], timeout=1).exchange("dev", lambda sid: b"x" * 600)
    assert reply == b"echo:" + b"x" * 600
    req = packet.AuthPacket(packet=srv.received[0], secret=SECRET, dict=DICT)
    assert req.verify_message_authenticator()


@pytest.mark.parametrize("mode", ["no-ma", "bad-ma"])
def test_client_drops_reply_without_valid_message_authenticator(fake, mode):
    srv = fake(mode)
    client = RadiusClient([srv.entry("r1")], timeout=0.3, retries=1)
    with pytest.raises(NoServerAnsweredError):
        client.exchange("dev", lambda sid: b"m")
    assert len(srv.received) == 2
    srv.mode = "good"  # the same server and client, the reply signed properly: taken
    assert client.exchange("dev", lambda sid: b"m") == b"echo:m"


def test_client_retransmits_the_identical_packet(fake):
    srv = fake("silent")
    with pytest.raises(NoServerAnsweredError):
        RadiusClient([srv.entry("r1")], timeout=0.2, retries=2).exchange("dev", lambda sid: b"m")
    assert len(srv.received) == 3 and len(set(srv.received)) == 1


def test_client_fails_over_and_rebuilds_for_each_server(fake):
    dead, alive = fake("silent"), fake("good")
    built = []
    client = RadiusClient([dead.entry("r1"), alive.entry("r2")], timeout=0.2, retries=1)
    reply = client.exchange("dev", lambda sid: built.append(sid) or f"for {sid}".encode())
    assert built == ["r1", "r2"] and reply == b"echo:for r2"


def test_client_reject_carries_code_reason_and_error_reply_without_failover(fake):
    first, second = fake("reject"), fake("good")
    with pytest.raises(RejectedError) as exc:
        RadiusClient([first.entry("r1"), second.entry("r2")], timeout=1).exchange("dev", lambda sid: b"m")
    assert (exc.value.code, exc.value.reason, exc.value.reply) == (8, "revoked: device is revoked", b"error-message")
    assert second.received == []


def test_client_no_server_answered_names_every_server(fake):
    a, b = fake("silent"), fake("silent")
    with pytest.raises(NoServerAnsweredError) as exc:
        RadiusClient([a.entry("r1"), b.entry("r2")], timeout=0.1, retries=0).exchange("dev", lambda sid: b"m")
    assert exc.value.server_ids == ["r1", "r2"]


@pytest.mark.parametrize("error", [23, 24])  # registry-unavailable, server-clock: this server cannot serve now
def test_client_a_server_that_cannot_serve_passes_the_request_on(fake, error):
    unable, alive = fake("reject", error), fake("good")
    built = []
    reply = RadiusClient([unable.entry("r1"), alive.entry("r2")], timeout=1).exchange(
        "dev", lambda sid: built.append(sid) or f"for {sid}".encode())
    assert built == ["r1", "r2"] and reply == b"echo:for r2"
    other = fake("reject", error)  # every server unable: the refusal itself, not "no server answered"
    with pytest.raises(RejectedError) as exc:
        RadiusClient([unable.entry("r1"), other.entry("r3")], timeout=1).exchange("dev", lambda sid: b"m")
    assert exc.value.code == error and exc.value.server_id == "r3"
