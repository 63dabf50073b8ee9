"""Fuzz the agent's status socket: the daemon's own `StatusSocket` over a real UNIX socket, with
`Agent.request` behind it, as `tessera-agent` serves it from its select() loop.

The agent is B of an established session with A (`world.Stages`), so `send` reaches the node and
the in-memory wire. The first input byte says whether the client closes its sending side after
the request (as `query` does) or leaves it open; the rest is the request, sent as the socket takes
it while the server is driven exactly as the daemon's loop drives it (`select(sockets())` →
`ready(readable, now)`). The server's clock is a parameter: when nothing moves, it is set past the
deadline, so a request that never completes is answered at once instead of after 2 s.

Contract: every connection gets exactly one answer, which is JSON (an object, or the inbox's
list) and, for an error, the object {"ok": false, "error": ...}; never the "internal error" that
means something escaped `Agent.request`; nothing escapes `ready()`; no connection is left open in
the server. Requests up to 66 kB are tried (the limit is 64 KiB).

    python fuzz/fuzz_status.py -runs=200000 [CORPUS_DIR]
"""

import json
import os
import select
import shutil
import socket
import tempfile

import common

with common.instrumented():
    from tessera.agent.daemon import Agent, StatusSocket
    from tessera.agent.l2 import MemoryHub
    import world


def make():
    w = world.World()
    stages = world.Stages(w)
    workdir = tempfile.mkdtemp(prefix="tessera-fuzz-status-")
    common.on_exit(lambda: shutil.rmtree(workdir, True))
    bundle = w.realm.enrol_generated("SN-STATUS-1", world.SERVERS, "s3cret", world.T0)
    agent = Agent("eth0", bundle, workdir)
    _, agent.node = stages.build(2)  # B, with a session to A
    agent.transport = MemoryHub().attach(world.MAC_B)
    path = os.path.join(workdir, "agent.sock")
    server = StatusSocket(path, agent.request)
    common.on_exit(server.close)

    def test_one(data: bytes) -> None:
        if not data:
            return
        eof, payload = bool(data[0] & 1), data[1:]
        agent.running = True
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            c.connect(path)
            c.setblocking(False)
            sent, shut, answer, closed, now = 0, False, b"", False, 0.0
            for _ in range(2000):
                moved = False
                if sent < len(payload):
                    try:
                        k = c.send(payload[sent:sent + 65536])
                        sent, moved = sent + k, k > 0
                    except BlockingIOError:
                        pass
                    except (BrokenPipeError, ConnectionResetError):
                        sent = len(payload)  # answered before reading it all
                elif eof and not shut:
                    try:
                        c.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    shut = moved = True
                readable, _, _ = select.select(server.sockets(), [], [], 0)
                server.ready(readable, now)
                try:
                    while chunk := c.recv(65536):
                        answer, moved = answer + chunk, True
                    closed = True
                except BlockingIOError:
                    pass
                except ConnectionResetError:
                    closed = True
                if closed:
                    break
                if not moved and not readable:
                    now += 10.0  # idle: past the server's deadline
            assert closed, "the status socket never answered"
        finally:
            c.close()
        assert not server.clients, "a connection was left open in the server"
        out = json.loads(answer)
        assert isinstance(out, (dict, list)), out
        if isinstance(out, dict) and out.get("ok") is False:
            assert set(out) == {"ok", "error"} and isinstance(out["error"], str), out
            assert out["error"] != "internal error", "something escaped Agent.request"

    seeds = [b"\x01" + json.dumps(r).encode() for r in (
        {"cmd": "status"}, {"cmd": "inbox"}, {"cmd": "send", "peer": world.A, "data": "hello A"},
        {"cmd": "send", "peer": "SN-Z", "data": "x"}, {"cmd": "stop"}, {"cmd": ["status"]}, {"command": 1})]
    seeds += [b"\x00" + json.dumps({"cmd": "status"}).encode(), b"\x01", b"\x00", b"\x01[[[[[[", b"\x01\xff\xfe{",
              b"\x01" + b"[" * 3000, b'\x01{"cmd": "status", "pad": "' + b"x" * 65600 + b'"}']
    return test_one, seeds


if __name__ == "__main__":
    common.harness_main("status", make, max_len=70000)
