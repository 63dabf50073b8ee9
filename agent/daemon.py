"""tessera-agent: the daemon a device runs. A thin loop around the sans-I/O `tessera.node.Node`.

How this works: one thread owns the node and waits in select() on the carrier watcher
(netlink), wpa_supplicant's event socket, the AF_PACKET socket (EtherType 0x88B5), a wake-up
pipe and the status socket; it ticks the node every `tick` seconds. Each action the node returns
is carried out here:

    StartAdmission  → wpa_supplicant SET_NETWORK (EAP-TLS files or EAP-PWD password) + restart
    RadiusRequest   → a worker thread runs the pyrad client (failover across the bundle's
                      servers; `build(server_id)` is called under the node lock) and posts the
                      answer back through the wake-up pipe
    SendFrame       → the packet socket
    Deliver         → the inbox (read over the status socket)
    SaveState       → <state-dir>/state, sealed, 0600, written atomically
    Log             → one log line (no keys or tickets ever reach a Log action)

The status socket (<state-dir>/agent.sock) takes one JSON request per connection:
{"cmd": "status"}, {"cmd": "send", "peer": ID, "data": TEXT}, {"cmd": "inbox"}, {"cmd": "stop"}.
`tessera-agent status --state-dir DIR` prints the status.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import select
import signal
import socket
import sys
import threading
import time
import traceback

from tessera.agent.l2 import PacketTransport
from tessera.agent.link import CarrierWatcher, LinkDown as NetLinkDown, LinkUp as NetLinkUp
from tessera.agent.supplicant import EAP_FAILURE, EAP_SUCCESS, PwdCredentials, Supplicant, TlsCredentials
from tessera.device import DeviceClient
from tessera.errors import TesseraError
from tessera.identity import BootstrapBundle, DeviceKey
from tessera.node import (Deliver, FrameReceived, LinkDown, LinkUp, Log, Node, PortAuthorized, PortRejected,
                          RadiusAnswer, RadiusFailed, RadiusRequest, SaveState, SendFrame, StartAdmission, Timers)
from tessera.radius.client import NoServerAnsweredError, RadiusClient, RejectedError, Server, load_dictionary

log = logging.getLogger("tessera.agent")


def _where(exc: BaseException) -> str:
    """`Type at file:line` of the innermost frame: enough to debug, no values."""
    tb = traceback.extract_tb(exc.__traceback__)
    return f"{type(exc).__name__} at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else type(exc).__name__


def write_private(path: str, data: bytes) -> None:
    """Write a file 0600 atomically (temp file + rename): never half-written."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Agent:
    def __init__(self, ifname: str, bundle: BootstrapBundle, state_dir: str, key_pem: bytes | None = None,
                 cert_pem: bytes | None = None, timers: Timers = Timers(), radius_timeout: float = 0.3,
                 radius_retries: int = 3, tick: float = 0.1):
        self.ifname, self.state_dir, self.tick = ifname, state_dir, tick
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        key_pem = key_pem or bundle.device_key_pem
        cert_pem = cert_pem or bundle.device_certificate_pem
        if key_pem is None or cert_pem is None:
            raise ValueError("the agent needs the device key and certificate (in the bundle or as files)")
        self.client = DeviceClient(bundle, DeviceKey.from_pem(key_pem))
        self.state_path = os.path.join(state_dir, "state")
        if os.path.exists(self.state_path):
            try:
                self.client.import_state(open(self.state_path, "rb").read())
                log.info("%s: state restored (%s)", bundle.device_id, self.client.state.value)
            except TesseraError as exc:
                log.warning("%s: saved state unusable (%s): starting from enrolment", bundle.device_id, exc.reason)
        self.node = Node(self.client, os.urandom, timers)
        self.lock = threading.Lock()
        # files wpa_supplicant reads for EAP-TLS
        self.tls = TlsCredentials(bundle.device_id, self._file("device.crt", cert_pem), self._file("device.key", key_pem),
                                  self._file("ca.crt", bundle.ca_certificate_pem or b""))
        self.servers = [Server(s.server_id, s.host, s.port, bundle.radius_secret.encode()) for s in bundle.servers]
        self.dictionary = load_dictionary()
        self.radius_timeout, self.radius_retries = radius_timeout, radius_retries
        self.results: queue.Queue = queue.Queue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.inbox: list[tuple[float, str, str]] = []
        self.running = True

    def _file(self, name: str, data: bytes) -> str:
        path = os.path.join(self.state_dir, name)
        write_private(path, data)
        return path

    # -- actions ---------------------------------------------------------------------------
    def act(self, actions) -> None:
        for a in actions:
            try:
                self._act(a)
            except Exception as exc:  # one failed action (a dead supplicant socket...) must not stop the agent
                log.error("%s: %s failed: %s", self.client.device_id, type(a).__name__, _where(exc))

    def _act(self, a) -> None:
        if isinstance(a, SendFrame):
            try:
                self.transport.send(a.dst, a.payload)
            except OSError as exc:  # carrier gone, queue full: the protocol retries
                log.debug("send to %s failed: %s", a.dst, exc)
        elif isinstance(a, Log):
            log.info("%s %s: %s", self.client.device_id, a.event, a.text)
        elif isinstance(a, RadiusRequest):
            threading.Thread(target=self._radius, args=(a,), daemon=True, name=f"radius-{a.op_id}").start()
        elif isinstance(a, StartAdmission):
            creds = self.tls if a.method == "tls" else PwdCredentials(a.identity, a.password)
            self.supplicant.set_credentials(creds, restart=True)
        elif isinstance(a, Deliver):
            self.inbox.append((time.time(), a.peer, a.data.decode("utf-8", "replace")))
            del self.inbox[:-1000]
        elif isinstance(a, SaveState):
            write_private(self.state_path, self.client.export_state(os.urandom(12)))

    def _radius(self, req: RadiusRequest) -> None:
        client = RadiusClient(self.servers, self.radius_timeout, self.radius_retries, self.dictionary)

        def build(server_id: str) -> bytes:
            with self.lock:
                return req.build(server_id)

        try:
            result = RadiusAnswer(req.op_id, client.exchange(self.client.device_id, build))
        except RejectedError as exc:
            result = RadiusFailed(req.op_id, str(exc), exc.reply)
        except NoServerAnsweredError as exc:
            result = RadiusFailed(req.op_id, str(exc))
        except Exception as exc:  # a bug in a worker must not kill the agent
            result = RadiusFailed(req.op_id, f"{type(exc).__name__}: {exc}")
        self.results.put(result)
        os.write(self.wake_w, b"r")

    def feed(self, event) -> None:
        try:
            with self.lock:
                actions = self.node.handle(event, time.time())
        except Exception as exc:  # a bug: log where (never values: they may hold keys) and go on
            log.error("%s: internal error on %s: %s", self.client.device_id, type(event).__name__, _where(exc))
            return
        self.act(actions)

    # -- status socket -----------------------------------------------------------------------
    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(2)
            req = json.loads(conn.recv(65536) or b"{}")
            if not isinstance(req, dict):
                raise ValueError("a request is a JSON object")
            cmd = req.get("cmd")
            with self.lock:
                if cmd == "status":
                    out = self.node.status(time.time())
                elif cmd == "send":
                    peer, data = req.get("peer"), req.get("data")
                    if not isinstance(peer, str) or not isinstance(data, str):
                        acts, out = [], {"ok": False, "error": "send needs \"peer\" and \"data\" strings"}
                    elif peer not in self.node.neighbours:
                        acts, out = [], {"ok": False, "error": f"{peer} is not a neighbour"}
                    else:
                        try:
                            acts, out = self.node.send(peer, data.encode(), time.time()), {"ok": True}
                        except TesseraError as exc:
                            acts, out = [], {"ok": False, "error": exc.reason}
                elif cmd == "inbox":
                    out, self.inbox = [{"time": t, "peer": p, "data": d} for t, p, d in self.inbox], []
                elif cmd == "stop":
                    self.running, out = False, {"ok": True}
                else:
                    out = {"ok": False, "error": f"unknown command {cmd!r}"}
            if cmd == "send":
                self.act(acts)
            conn.sendall(json.dumps(out).encode())
        except (OSError, ValueError, KeyError) as exc:
            log.debug("status socket: %s", exc)
        finally:
            conn.close()

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        dev = self.client.device_id
        self.watcher = CarrierWatcher([self.ifname])
        self.transport = PacketTransport(self.ifname)
        self.supplicant = Supplicant(self.ifname, self.tls, self.state_dir)
        sock_path = os.path.join(self.state_dir, "agent.sock")
        if os.path.exists(sock_path):
            os.unlink(sock_path)
        self.status = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.status.bind(sock_path)
        os.chmod(sock_path, 0o600)
        self.status.listen(8)
        log.info("%s: agent on %s (%s), realm %s, servers %s", dev, self.ifname, self.transport.mac,
                 self.client.realm, ", ".join(f"{s.server_id}={s.host}:{s.port}" for s in self.servers))
        try:
            for ev in self.watcher.initial():
                if isinstance(ev, NetLinkUp):
                    self.feed(LinkUp())
            next_tick = time.monotonic()
            while self.running:
                timeout = max(0.0, next_tick - time.monotonic())
                ready, _, _ = select.select([self.watcher, self.supplicant.mon, self.transport, self.wake_r, self.status],
                                            [], [], timeout)
                if self.watcher in ready:
                    for ev in self.watcher.poll(0):
                        if isinstance(ev, NetLinkUp):
                            self.feed(LinkUp())
                        elif isinstance(ev, NetLinkDown):
                            self.feed(LinkDown())
                if self.supplicant.mon in ready:
                    for ev in self.supplicant.events(0):
                        if ev.name == EAP_SUCCESS:
                            self.feed(PortAuthorized(self.node.method.split("-")[0] if self.node.method else "tls"))
                        elif ev.name == EAP_FAILURE:
                            self.feed(PortRejected((self.node.method or "tls").split("-")[0], ev.name))
                if self.transport in ready:
                    for _ in range(256):
                        got = self.transport.recv()
                        if got is None:
                            break
                        self.feed(FrameReceived(*got))
                if self.wake_r in ready:
                    try:
                        os.read(self.wake_r, 4096)
                    except BlockingIOError:
                        pass
                    while not self.results.empty():
                        self.feed(self.results.get())
                if self.status in ready:
                    conn, _ = self.status.accept()
                    self._serve(conn)
                if time.monotonic() >= next_tick:
                    self.feed(None)
                    next_tick = time.monotonic() + self.tick
        finally:
            self.close()
        return 0

    def close(self) -> None:
        for part in ("supplicant", "transport", "watcher", "status"):
            obj = getattr(self, part, None)
            if obj is not None:
                try:
                    obj.close()
                except OSError:
                    pass


def query(state_dir: str, request: dict, timeout: float = 3.0) -> object:
    """Send one request to a running agent's status socket."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(os.path.join(state_dir, "agent.sock"))
        s.sendall(json.dumps(request).encode())
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return json.loads(data)
    finally:
        s.close()


def print_status(st: dict) -> None:
    print(f"device {st['device_id']}: port {st['port']} ({st['admission'] or '-'}), {st['state']}")
    reg, tgt = st["registration"], st["tgt"]
    print(f"  registration: " + (f"generation {reg['generation']}, expires in {reg['expires_in']} s" if reg else "none"))
    print(f"  TGT:          " + (f"expires in {tgt['expires_in']} s" if tgt else "none"))
    for peer, mac in sorted(st["neighbours"].items()):
        s = st["sessions"].get(peer)
        desc = (f"session {s['session_id']} expires in {s['expires_in']} s, {s['frames_out']} out / "
                f"{s['frames_in']} in / {s['dropped']} dropped") if s else "no session"
        print(f"  peer {peer:<16} {mac}  {desc}")
    print(f"  frames dropped {st['frames_dropped']}, failed handshakes {st['handshakes_failed']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tessera-agent", description="Tessera device agent")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the agent on one port")
    r.add_argument("--interface", "-i", default="eth0")
    r.add_argument("--bundle", required=True, help="bootstrap bundle (JSON) from tessera-admin")
    r.add_argument("--key", help="device private key (PEM) if not in the bundle")
    r.add_argument("--certificate", help="device certificate (PEM) if not in the bundle")
    r.add_argument("--state-dir", required=True)
    r.add_argument("--announce-every", type=float, default=Timers.announce_every)
    r.add_argument("--debug", action="store_true")
    s = sub.add_parser("status", help="show a running agent's ports, tickets, peers and sessions")
    s.add_argument("--state-dir", required=True)
    s.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.cmd == "status":
        try:
            st = query(a.state_dir, {"cmd": "status"})
        except OSError as exc:
            print(f"tessera-agent: no agent answers in {a.state_dir}: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(st, indent=2)) if a.json else print_status(st)
        return 0
    logging.basicConfig(level=logging.DEBUG if a.debug else logging.INFO,
                        format="%(asctime)s.%(msecs)03d %(name)s %(message)s", datefmt="%H:%M:%S")
    try:
        bundle = BootstrapBundle.from_json(open(a.bundle).read())
        agent = Agent(a.interface, bundle, a.state_dir,
                      open(a.key, "rb").read() if a.key else None,
                      open(a.certificate, "rb").read() if a.certificate else None,
                      Timers(announce_every=a.announce_every))
    except (OSError, ValueError, TesseraError) as exc:
        print(f"tessera-agent: {exc}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: setattr(agent, "running", False))
    try:
        return agent.run()
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
