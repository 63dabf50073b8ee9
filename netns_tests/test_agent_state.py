"""The real `tessera-agent run` process, as the lab starts it, on one veth port in a namespace of
its own with no realm behind it (nothing here needs RADIUS): an unreadable state file at start,
and malformed requests on its status socket. The unit tests (tests/unit/test_agent_*.py) cover
each case on the daemon's code in-process; these prove the process and its loop do the same."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tessera.agent.daemon import query
from tessera.device import DeviceClient
from tessera.identity import DeviceKey, ServerEntry
from tessera.lab.topology import AGENT
from tessera.realm import Realm
from tessera.sqlite_registry import SQLiteRegistry


@pytest.fixture
def device(lab):
    """A namespace with eth0 (carrier up, nobody answering EAPOL), a bundle, and a valid sealed
    state for it (registered and ticketed by an in-memory service of the same realm)."""
    ns, far = lab.add_ns("d1"), lab.add_ns("sw")
    lab.add_veth(ns, "eth0", far, "p1")
    now = time.time()
    realm = Realm.init(SQLiteRegistry(":memory:"), os.urandom(32), "lab.example", now)
    bundle = realm.enrol_generated("dev-01", [ServerEntry("radius1", "203.0.113.2")], "s3cret", now)
    client, svc = DeviceClient(bundle, DeviceKey.from_pem(bundle.device_key_pem)), realm.service("radius1")
    client.register_reply(svc.handle(client.register_request("radius1", now, os.urandom(16)), now), now)
    client.ticket_reply(svc.handle(client.auth_request("radius1", now, os.urandom(16)), now), now)
    home = Path(lab.workdir) / "d1"
    home.mkdir()
    (home / "bundle.json").write_text(bundle.to_json())
    os.chmod(home / "bundle.json", 0o600)
    return ns, home, client.export_state(os.urandom(12))


def start(lab, ns: str, home: Path):
    state_dir = home / "state"
    agent = lab.spawn("agent-d1", ns, [str(AGENT), "run", "-i", "eth0", "--bundle", str(home / "bundle.json"),
                                       "--state-dir", str(state_dir)])
    deadline = time.monotonic() + 15
    while True:
        try:
            if query(str(state_dir), {"cmd": "status"}, timeout=2).get("device_id") == "dev-01":
                return agent
        except (OSError, ValueError):
            pass
        assert agent.alive() and time.monotonic() < deadline, Path(agent.log_path).read_text()
        time.sleep(0.05)


def test_agent_process_keeps_an_unreadable_state_aside_and_runs_then_restores_a_valid_one(lab, device):
    ns, home, sealed = device
    (home / "state").mkdir(mode=0o700)
    (home / "state" / "state").write_bytes(sealed[:-5])  # truncated, as by a power cut mid-write
    agent = start(lab, ns, home)
    st = query(str(home / "state"), {"cmd": "status"})
    assert st["state"] == "enrolled" and st["registration"] is None and st["tgt"] is None
    assert (home / "state" / "state.corrupt").read_bytes() == sealed[:-5]
    assert not (home / "state" / "state").exists()
    log = Path(agent.log_path).read_text()
    assert "is unusable (invalid-ticket: " in log and "kept as " + str(home / "state" / "state.corrupt") in log
    assert "Traceback" not in log and agent.alive()
    lab.stop(agent)
    # the same agent with a valid state file restores it
    (home / "state" / "state").write_bytes(sealed)
    os.unlink(Path(agent.log_path))
    agent = start(lab, ns, home)
    st = query(str(home / "state"), {"cmd": "status"})
    assert st["state"] == "authenticated" and st["registration"]["generation"] == 1 and st["tgt"]["expires_in"] > 0
    assert "state restored (authenticated)" in Path(agent.log_path).read_text()
    lab.stop(agent)


def ask(path: str, data: bytes, eof: bool = True, timeout: float = 5) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        try:
            s.sendall(data)
            if eof:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return json.loads(out)
    finally:
        s.close()


def test_agent_process_answers_malformed_status_requests_and_keeps_serving(lab, device):
    ns, home, _ = device
    agent = start(lab, ns, home)
    sock, state_dir = str(home / "state" / "agent.sock"), str(home / "state")
    for data, error in ((b"status please", "request is not JSON: "), (b'["status"]', "a request is a JSON object"),
                        (b'{"cmd": "reboot"}', "unknown command 'reboot'"), (b"", "empty request"),
                        (b"[" * 60000, "request is not JSON: nested too deeply"),
                        (b'{"cmd": "' + b"x" * 200_000 + b'"}', "request larger than 65536 bytes")):
        got = ask(sock, data)
        assert got["ok"] is False and got["error"].startswith(error), (data[:20], got)
        assert query(state_dir, {"cmd": "status"})["device_id"] == "dev-01"
    # a client that says nothing holds nobody up, and is told so after the agent's 2 s
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.settimeout(10)
    silent.connect(sock)
    try:
        assert query(state_dir, {"cmd": "status"})["device_id"] == "dev-01"
        silent.setblocking(False)
        with pytest.raises(BlockingIOError):  # answered the other while this one still waits
            silent.recv(1, socket.MSG_PEEK)
        silent.settimeout(10)
        assert json.loads(silent.recv(4096)) == {"ok": False, "error": "no complete request within 2 s"}
    finally:
        silent.close()
    cli = subprocess.run([str(AGENT), "status", "--state-dir", state_dir], capture_output=True, text=True, timeout=30)
    assert cli.returncode == 0 and cli.stdout.startswith("device dev-01: port "), cli.stderr
    connect_and_leave = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connect_and_leave.connect(sock)
    connect_and_leave.close()
    assert query(state_dir, {"cmd": "status"})["device_id"] == "dev-01"
    log = Path(agent.log_path).read_text()
    assert agent.alive() and "Traceback" not in log and "internal error" not in log
    lab.stop(agent)
