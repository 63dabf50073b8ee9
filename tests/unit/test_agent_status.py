"""The agent's status socket, served by the daemon's own `StatusSocket` and `Agent.request` over a
real UNIX socket (the loop the daemon runs is `select(sockets()) → ready()`, as here):
every malformed request gets one clean error answer and the next good `status` is still answered;
a silent client holds nobody up. And `tessera-agent status` shows no key or ticket bytes."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import select
import socket
import threading
import time

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

import tessera.peer
from tessera.agent.daemon import Agent, StatusSocket, main, query
from tessera.agent.l2 import MemoryHub
from tessera.node import Log
from tests.unit.conftest import SERVERS, T0
from tests.unit.test_node import Net


@pytest.fixture
def agent(realm, tmp_path):
    return Agent("eth0", realm.enrol_generated("SN-A", SERVERS, "s3cret", T0), str(tmp_path))


@contextlib.contextmanager
def serving(agent: Agent, **kw):
    """The daemon's status socket for `agent`, served by a thread doing what the daemon's loop does."""
    server = StatusSocket(os.path.join(agent.state_dir, "agent.sock"), agent.request, **kw)
    stop, died = threading.Event(), []

    def loop():
        try:
            while not stop.is_set():
                ready, _, _ = select.select(server.sockets(), [], [], 0.02)
                server.ready(ready, time.monotonic())
        except BaseException as exc:  # the test sees the server die instead of a hang
            died.append(exc)
            raise

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield server
    finally:
        stop.set()
        t.join(5)
        server.close()
    assert not died, f"the status socket's loop died: {died[0]!r}"


def connect(agent: Agent) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(os.path.join(agent.state_dir, "agent.sock"))
    return s


def ask(agent: Agent, data: bytes, eof: bool = True):
    """Send raw bytes as a request; return the decoded answer (however the send went)."""
    s = connect(agent)
    try:
        try:
            s.sendall(data)
            if eof:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent answered before reading everything: the answer is waiting
        return json.loads(read_all(s))
    finally:
        s.close()


def read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def wait_for(pred, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def unanswered(s: socket.socket) -> bool:
    """Nothing has come back on `s` yet (and it is still open)."""
    s.setblocking(False)
    try:
        s.recv(1, socket.MSG_PEEK)
        return False
    except BlockingIOError:
        return True
    finally:
        s.settimeout(5)


def status_ok(agent: Agent) -> bool:
    st = query(agent.state_dir, {"cmd": "status"}, timeout=5)
    return st["device_id"] == "SN-A" and st["state"] == "enrolled"


MALFORMED = {
    "not JSON": (b"status please", "request is not JSON"),
    "not UTF-8": (b"\xff\xfe{\x00", "request is not JSON"),
    "a JSON list": (b'["status"]', "a request is a JSON object, not list"),
    "a JSON string": (b'"status"', "a request is a JSON object, not str"),
    "a JSON number": (b"7", "a request is a JSON object, not int"),
    "no cmd": (b'{"command": "status"}', "unknown command 'None'"),
    "unknown cmd": (b'{"cmd": "reboot"}', "unknown command 'reboot'"),
    "cmd not a string": (b'{"cmd": ["status"]}', "unknown command \"['status']\""),
    "send without strings": (b'{"cmd": "send", "peer": 7, "data": null}', 'send needs "peer" and "data" strings'),
    "send to a stranger": (b'{"cmd": "send", "peer": "SN-Z", "data": "x"}', "bad-state: no session with SN-Z"),
    "empty": (b"", "empty request"),
    "only blanks": (b" \n\t ", "empty request"),
    "cut short": (b'{"cmd": "sta', "request is not JSON"),
    "nested 50000 deep": (b"[" * 50000, "request is not JSON: nested too deeply"),
    "larger than 64 KiB": (b'{"cmd": "status", "pad": "' + b"x" * 100_000 + b'"}', "request larger than 65536 bytes"),
}


@pytest.mark.parametrize("what", list(MALFORMED))
def test_status_socket_answers_a_malformed_request_with_an_error_and_keeps_serving(agent, what):
    data, error = MALFORMED[what]
    with serving(agent):
        assert status_ok(agent)  # the same socket answers a good request before...
        got = ask(agent, data)
        assert set(got) == {"ok", "error"} and got["ok"] is False
        assert got["error"] == error or got["error"].startswith(error + ": ")  # JSON errors quote the parser
        assert status_ok(agent)  # ...and after


def test_status_socket_a_silent_client_holds_nobody_up_and_gets_an_error_in_time(agent):
    with serving(agent, timeout=0.5) as server:
        silent = connect(agent)  # connects and says nothing
        try:
            started = time.monotonic()
            assert wait_for(lambda: len(server.clients) == 1)
            assert status_ok(agent) and unanswered(silent)  # answered while the silent one still waits
            assert json.loads(read_all(silent)) == {"ok": False, "error": "no complete request within 0.5 s"}
            assert time.monotonic() - started >= 0.45
        finally:
            silent.close()
        assert status_ok(agent)


def test_status_socket_clients_that_leave_early_do_not_stop_it(agent):
    with serving(agent):
        connect(agent).close()  # connects and leaves
        half = connect(agent)
        half.sendall(b'{"cmd": "sta')  # half a request, then gone without reading
        half.close()
        s = connect(agent)
        s.sendall(b'{"cmd": "status"}')
        s.shutdown(socket.SHUT_WR)
        s.close()  # asked, left before the answer
        assert status_ok(agent)


def test_status_socket_a_request_in_pieces_without_eof_is_answered_when_whole(agent):
    with serving(agent) as server:
        s = connect(agent)
        try:
            s.sendall(b'{"cmd": ')
            assert wait_for(lambda: any(buf for buf, _ in list(server.clients.values())))  # the first piece is in
            assert unanswered(s)
            s.sendall(b'"status"}')  # no shutdown: a whole JSON value is a whole request
            assert json.loads(read_all(s))["device_id"] == "SN-A"
        finally:
            s.close()


def test_status_socket_bounds_open_requests_and_tessera_agent_status_says_busy(agent, capsys):
    with serving(agent, timeout=1.0, max_clients=2) as server:
        silent = [connect(agent), connect(agent)]
        assert wait_for(lambda: len(server.clients) == 2)  # both accepted and waiting
        try:
            assert ask(agent, b'{"cmd": "status"}') == {"ok": False, "error": "busy: 2 requests open"}
            assert main(["status", "--state-dir", agent.state_dir]) == 1
            assert capsys.readouterr().err == (f"tessera-agent: the agent in {agent.state_dir} gave no status: "
                                               "busy: 2 requests open\n")
        finally:
            for s in silent:
                s.close()
        deadline = time.monotonic() + 3
        while agent_busy(agent) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert main(["status", "--state-dir", agent.state_dir]) == 0
        assert capsys.readouterr().out.startswith("device SN-A: port down (-), enrolled\n")


def agent_busy(agent) -> bool:
    return query(agent.state_dir, {"cmd": "status"}).get("ok") is False


def test_tessera_agent_status_without_an_agent_exits_1(tmp_path, capsys):
    assert main(["status", "--state-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith(f"tessera-agent: no agent answers in {tmp_path}: ")


# -- no secrets in the status --------------------------------------------------------------------
def needles(secret: bytes) -> tuple[list[bytes], list[str]]:
    """Ways a secret (or any 8 bytes of it) could show in output: raw bytes, Python's bytes repr,
    hex, and base64 (both alphabets, each of the three alignments a secret can have inside a
    longer base64 blob)."""
    windows = [secret[i:i + 8] for i in range(0, max(1, len(secret) - 7))]
    raw = windows
    text = [w.hex() for w in windows] + [repr(w)[2:-1] for w in windows]
    for shift in range(3):
        part = secret[shift:]
        part = part[: len(part) - len(part) % 3]
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            b64 = enc(part).decode()
            text += [b64[i:i + 12] for i in range(0, max(1, len(b64) - 11), 4)]
    return raw, text


def leaks(output: str, secrets: dict[str, bytes]) -> list[str]:
    """Names of the secrets found in `output` (case-insensitive for hex)."""
    found, low = [], output.lower()
    raw_out = (output.encode("utf-8", "surrogateescape"), output.encode("latin-1", "replace"))
    for name, secret in secrets.items():
        raw, text = needles(secret)
        if any(r in out for r in raw for out in raw_out) or any(t.lower() in low if _is_hex(t) else t in output for t in text):
            found.append(name)
    return found


def _is_hex(t: str) -> bool:
    return all(c in "0123456789abcdef" for c in t)


class RecordingNet(Net):
    """The in-memory network, with the agent's Log actions going to the agent's own log."""

    def __init__(self, agent, *a):
        super().__init__(*a)
        self.agent = agent

    def act(self, dev, actions):
        if dev == self.agent.client.device_id:
            self.agent.act([a for a in actions if isinstance(a, Log)])
        super().act(dev, actions)


def test_tessera_agent_status_shows_no_key_or_ticket_bytes(realm, service, rand, tmp_path, capsys, caplog, monkeypatch):
    schedules = []  # every session key and key schedule any handshake makes

    def recording(session_key, hello, ticket_body):
        keys = real_schedule(session_key, hello, ticket_body)
        schedules.append((session_key, keys))
        return keys

    real_schedule = tessera.peer.key_schedule
    monkeypatch.setattr(tessera.peer, "key_schedule", recording)
    caplog.set_level(logging.DEBUG, "tessera.agent")
    bundle = realm.enrol_generated("SN-A", SERVERS, "radius-shared-secret", T0)
    agent = Agent("eth0", bundle, str(tmp_path))
    net = RecordingNet(agent, realm, service, rand)
    net.nodes["SN-A"], net.macs["SN-A"], net.link["SN-A"] = agent.node, "02:00:00:00:00:aa", False
    net.add("SN-B", "certificate")
    net.add("SN-C", "bundle")
    for dev in net.nodes:
        net.carrier(dev, True)
    net.run(seconds=3)
    net.send("SN-A", "SN-B", b"hello B")
    net.send("SN-C", "SN-A", b"hello A")
    assert sorted(agent.node.sessions) == ["SN-B", "SN-C"] and len(schedules) >= 2

    client, key = agent.client, agent.client.key.private_key
    secrets = {
        "LLK": client.registration.llk, "DRT": client.registration.drt,
        "STK": client.credentials.stk, "TGT": client.credentials.tgt,
        "EAP-PWD password": client.eap_pwd_password().encode(),
        "state key": client._state_key(),
        "device private key": key.private_numbers().private_value.to_bytes(32, "big"),
        "device private key DER": key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption()),
        "device private key PEM": bundle.device_key_pem,
        "RADIUS secret": bundle.radius_secret.encode(),
    }
    for i, (session_key, k) in enumerate(schedules):
        secrets[f"session key {i}"] = session_key
        for field in ("finished_responder", "finished_initiator", "key_i2r", "key_r2i", "iv_i2r", "iv_r2i"):
            secrets[f"session {i} {field}"] = getattr(k, field)

    with serving(agent):
        assert main(["status", "--state-dir", agent.state_dir]) == 0
        human = capsys.readouterr().out
        assert main(["status", "--json", "--state-dir", agent.state_dir]) == 0
        as_json = capsys.readouterr().out
    # the status says what it should: tickets by expiry, peers and sessions by id
    st = json.loads(as_json)
    assert st["registration"]["generation"] == 1 and st["tgt"] and set(st["sessions"]) == {"SN-B", "SN-C"}
    assert st["sessions"]["SN-B"]["session_id"] in human and "generation 1" in human
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert "SN-B" in logs and "session" in logs
    for name, output in (("status", human), ("status --json", as_json), ("log", logs)):
        assert leaks(output, secrets) == [], f"{name} shows {leaks(output, secrets)}"
    # the search finds a secret that is there, in each form it looks for
    stk, llk, drt = client.credentials.stk, client.registration.llk, client.registration.drt
    assert leaks(human + stk.hex().upper(), secrets) == ["STK"]
    assert leaks(as_json + base64.b64encode(b"xy" + llk).decode(), secrets) == ["LLK"]
    assert leaks(human + base64.urlsafe_b64encode(b"z" + drt[5:40]).decode(), secrets) == ["DRT"]
    assert leaks(logs + drt[10:30].decode("latin-1"), secrets) == ["DRT"]
    assert leaks(logs + repr(stk[3:20]), secrets) == ["STK"]


def test_status_socket_send_refuses_text_that_is_not_unicode_and_sends_text_that_is(realm, service, rand, tmp_path):
    agent = Agent("eth0", realm.enrol_generated("SN-A", SERVERS, "s3cret", T0), str(tmp_path))
    net = Net(realm, service, rand)
    net.nodes["SN-A"], net.macs["SN-A"], net.link["SN-A"] = agent.node, "02:00:00:00:00:aa", False
    net.add("SN-B", "bundle")
    for dev in net.nodes:
        net.carrier(dev, True)
    net.run(seconds=3)
    hub = MemoryHub()
    agent.transport, wire = hub.attach("02:00:00:00:00:aa"), hub.attach(net.macs["SN-B"])
    with serving(agent):
        assert ask(agent, b'{"cmd": "send", "peer": "SN-B", "data": "\\ud800"}') == \
            {"ok": False, "error": "data is not valid Unicode text"}
        assert wire.recv() is None
        assert ask(agent, b'{"cmd": "send", "peer": "SN-B", "data": "caf\\u00e9"}') == {"ok": True}
    src, frame = wire.recv()
    assert src == "02:00:00:00:00:aa" and net.nodes["SN-B"].sessions["SN-A"].channel.open(frame) == "café".encode()


def test_status_socket_a_handler_that_fails_gets_the_client_an_answer_and_the_log_a_line(tmp_path, caplog):
    calls = []

    def handler(req):  # a bug on one command: the socket must answer and go on
        calls.append(req["cmd"])
        if req["cmd"] == "boom":
            raise KeyError("secret-looking value")
        return {"ok": True}

    agent = type("A", (), {"state_dir": str(tmp_path), "request": staticmethod(handler)})
    with serving(agent):
        assert ask(agent, b'{"cmd": "boom"}') == {"ok": False, "error": "internal error"}
        assert ask(agent, b'{"cmd": "fine"}') == {"ok": True}  # control: and keeps serving
    assert calls == ["boom", "fine"]
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert line.startswith("status socket: internal error: KeyError at ") and "secret-looking" not in line
