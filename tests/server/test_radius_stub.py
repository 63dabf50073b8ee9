"""A real FreeRADIUS with the Tessera module and a stub realm: the RADIUS plumbing.

Covers Tessera-Message/-Reply splitting both ways through radiusd, specific rejects,
"internal error" without crashing, Message-Authenticator enforcement in both directions,
and radclient interoperability.
"""

import os
import socket
import subprocess

import pytest
from pyrad import packet

from tessera.radius.client import NoServerAnsweredError, RejectedError

from tests.gate import needs_freeradius

pytestmark = needs_freeradius


def test_radius_status_server_answers_with_message_authenticator(stub_server):
    assert stub_server.client().status(stub_server.server_entry())


def test_radius_operation_long_message_round_trip(stub_server):
    payload = os.urandom(1500)  # 7 Tessera-Message instances, 7 Tessera-Reply instances
    reply = stub_server.client().exchange("dev-good", lambda sid: b"TSR1" + payload)
    assert reply == b"ACK1" + payload[::-1]


def test_radius_operation_keeps_nul_bytes(stub_server):
    payload = b"\x00" * 300 + b"\x01\x00"
    assert stub_server.client().exchange("dev-good", lambda sid: b"TSR1" + payload) == b"ACK1" + payload[::-1]


@pytest.mark.parametrize("message", [b"garbage", b"TSR", b"TSR1", b"\x00" * 600])
def test_radius_garbage_gets_specific_reject_and_server_keeps_serving(stub_server, message):
    with pytest.raises(RejectedError) as exc:
        stub_server.client().exchange("dev-good", lambda sid: message)
    assert exc.value.code == 2 and exc.value.reason.startswith("malformed: ")
    assert stub_server.client().exchange("dev-good", lambda sid: b"TSR1ok") == b"ACK1ko"


def test_radius_core_error_is_forwarded(stub_server):
    with pytest.raises(RejectedError) as exc:
        stub_server.client().exchange("dev-revoked", lambda sid: b"TSR1revoked")
    assert (exc.value.code, exc.value.reason) == (8, "revoked: device is revoked")
    # the same user and client with a message the core accepts: Access-Accept
    assert stub_server.client().exchange("dev-revoked", lambda sid: b"TSR1ok") == b"ACK1ko"


def test_radius_internal_error_rejects_and_server_survives(stub_server):
    with pytest.raises(RejectedError) as exc:
        stub_server.client().exchange("dev-good", lambda sid: b"TSR1crash")
    assert (exc.value.code, exc.value.reason) == (20, "internal error")
    assert stub_server.proc.running()
    assert "ZeroDivisionError at stub_realm.py" in stub_server.proc.log_text()
    assert stub_server.client().exchange("dev-good", lambda sid: b"TSR1ok") == b"ACK1ko"


def test_radius_build_gets_the_server_id(stub_server):
    seen = []
    stub_server.client().exchange("dev-good", lambda sid: seen.append(sid) or b"TSR1x")
    assert seen == [stub_server.cfg.server_id]


def _send_raw(server, raw: bytes, timeout: float = 1.5) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(raw, (server.address, server.port))
        try:
            return s.recv(4096)
        except socket.timeout:
            return None


def test_radius_request_without_message_authenticator_is_dropped(stub_server):
    client = stub_server.client()
    req = client.request_packet(stub_server.server_entry(), "dev-good", b"TSR1ok")
    req.message_authenticator = None
    del req["Message-Authenticator"]
    assert "Message-Authenticator" not in req
    assert _send_raw(stub_server, req.RequestPacket()) is None
    # the same request with it is answered
    req = client.request_packet(stub_server.server_entry(), "dev-good", b"TSR1ok")
    assert _send_raw(stub_server, req.RequestPacket()) is not None


def test_radius_wrong_shared_secret_is_dropped(stub_server):
    with pytest.raises(NoServerAnsweredError):
        stub_server.client(secret="not-the-secret").exchange("dev-good", lambda sid: b"TSR1ok")
    # the same request with the right secret is answered
    assert stub_server.client(secret=stub_server.secret).exchange("dev-good", lambda sid: b"TSR1ok") == b"ACK1ko"


def test_radius_every_reply_carries_message_authenticator(stub_server):
    client = stub_server.client()
    for message in (b"TSR1ok", b"garbage"):
        req = client.request_packet(stub_server.server_entry(), "dev-good", message)
        raw = _send_raw(stub_server, req.RequestPacket())
        reply = packet.Packet(packet=raw, secret=req.secret, dict=client.dict)
        assert "Message-Authenticator" in reply
        assert req.VerifyReply(reply, raw, enforce_ma=True)


def test_radius_non_tessera_request_is_rejected(stub_server):
    client = stub_server.client()

    def answer(with_message: bool) -> packet.Packet:
        req = client.request_packet(stub_server.server_entry(), "dev-good", b"TSR1ok")
        if not with_message:
            del req["Tessera-Message"]
        reply_raw = _send_raw(stub_server, req.RequestPacket())
        return packet.Packet(packet=reply_raw, secret=req.secret, dict=client.dict)

    reply = answer(with_message=False)
    assert reply.code == packet.AccessReject
    assert reply["Reply-Message"] == ["not a Tessera request"]
    reply = answer(with_message=True)  # the same request with its Tessera-Message
    assert reply.code == packet.AccessAccept and reply["Tessera-Reply"] == [b"ACK1ko"]


def test_radius_radclient_interoperates(stub_server):
    """radclient reads the same dictionary through FreeRADIUS's own files."""
    raddb = stub_server.proc.raddb
    request = ('User-Name = "dev-good"\nMessage-Authenticator = 0x00\n'
               'Tessera-Message = 0x' + b"TSR1".hex() + "\nTessera-Message = 0x" + b"abc".hex() + "\n")
    r = subprocess.run(["radclient", "-d", str(raddb), "-D", "/usr/share/freeradius", "-x",
                        f"{stub_server.address}:{stub_server.port}", "auth", stub_server.secret],
                       input=request, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Access-Accept" in r.stdout
    assert "Tessera-Reply = 0x" + b"ACK1cba".hex() in r.stdout


def test_radius_load_generator_gets_every_answer(stub_server):
    from bench import radius_load

    server = stub_server.server_entry()
    requests = [("bench", b"TSR1" + i.to_bytes(4, "big")) for i in range(600)]
    result = radius_load.run_load(server, radius_load.prebuild(server, requests), stub_server.proc.pid, 64)
    assert (result.accepted, result.lost) == (600, 0)
    assert result.server_cpu is not None and result.server_cpu > 0  # 600 answers cost radiusd CPU
