"""tessera-agent: the daemon a device runs. A thin loop around the sans-I/O `tessera.node.Node`.

How this works: one thread owns the node and waits in select() on the carrier watcher
(netlink), wpa_supplicant's event socket, the AF_PACKET socket (EtherType 0x88B5), a wake-up
pipe and the status socket; it ticks the node every `tick` seconds. Each action the node returns
is carried out here:

    StartAdmission  → wpa_supplicant SET_NETWORK (EAP-TLS files or EAP-PWD password) + restart;
                      its events come back as PortAuthorized (EAP-SUCCESS), PortRejected
                      (EAP-FAILURE), IdentityRequested (EAP-STARTED: the switch relays now) and
                      MethodProposed (EAP-PROPOSED-METHOD: the RADIUS server answered), then
                      EapProgressed (EAP-METHOD, -PEER-CERT...: it goes on answering); a silence
                      between EAP-STARTED and the first method request is a dead server, not a
                      refusal (tessera.node)
    RadiusRequest   → a worker thread runs the RADIUS client (failover across the bundle's
                      servers; `build(server_id)` is called under the node lock) and posts the
                      answer back through the wake-up pipe: over RadSec (the bundle's default,
                      TLS with the device certificate, one connection per server kept open by
                      one `RadSecClient`, which carries one request at a time: one worker takes
                      the requests in turn from a queue, registration and tickets before peer
                      session keys, so that no request spends its timeout waiting for the
                      connection -- 49 hellos at once had them fail "connection busy" and their
                      handshakes wait 10 s) or over UDP with the bundle's shared secret (a
                      thread per request)
    SendFrame       → the packet socket
    Deliver         → the inbox (read over the status socket)
    DeliverFrame    → the tap (an inner frame that came through node.handle(), not the fast path)
    SaveState       → <state-dir>/state, sealed, 0600, written atomically (tessera.secretfile)
    Log             → one log line (no keys or tickets ever reach a Log action)
    Milestone       → one line of the event stream, when `--events PATH` names one (`EventStream`)

Keys at rest are protected by file permissions only, and the status output says so. The state's
AEAD seal derives from the device private key, which sits in the same directory (wpa_supplicant
and the RadSec client read it there as a file): it binds the state to this device and detects
a change, but whoever reads the directory has the device key -- enough to register afresh, more
than the state holds. A second "machine key" on the same disk would add nothing; only a TPM or
secure element that keeps the device key unexportable would.

The secured link (issue 12): unless `--no-tunnel`, the agent makes the TAP interface `tessera0`
(agent/tap.py: MTU 1452, MAC `tessera.tunnel.tap_mac`, `--tunnel-address` IPv4/IPv6 addresses;
it dies with the agent) and its select loop carries frames both ways without a node tick per
frame: frames the kernel sends on the tap are drained (up to BATCH per wakeup, non-blocking) and
each goes out as encrypted records (`Tunnel.outbound`); PeerFrame records (type 38) from the
packet socket are opened by `Tunnel.inbound` and written to the tap, every other frame goes
through `node.handle()` as before. Each batch holds the node lock once (the RADIUS workers call
`build()` under it). `--batch N` sets the frames per wakeup (1: the unbatched loop, for
measuring). `--wire ring` replaces the packet socket with PACKET_MMAP rings (agent/ring.py): a
batch is received without a syscall per frame, and the records of one tap batch are queued in the
TX ring and handed to the kernel with one kick at its end (leftovers, when a kick met a full send
buffer, go when the socket is writable or at the next tick); the node's own frames (announces,
handshakes) use the same transport. `status` shows the transport, the batch and the kernel's
frame and drop counts ("wire"). The tap's carrier is on while at least one peer session exists.
Fail closed: before the tap, an nftables guard (agent/guard.py) keeps the tunnel's addresses and
prefixes off every other interface, and outlives a crash; with `--tunnel-address` given, a tap
or guard that cannot be made ends the agent (exit 1), as does a tap that goes away later (the
service manager starts it again). With no tunnel address, a missing /dev/net/tun is logged and
the agent runs without the tunnel.

At start the agent restores <state-dir>/state. A file that does not open (truncated, corrupt,
sealed for another device key) is moved aside to `state.corrupt` with a log line naming why,
and the agent registers afresh: everything in it can be had again with the device key, and a
device that refused to start would keep its port closed until someone came by.

The status socket (<state-dir>/agent.sock, `StatusSocket`) takes one JSON request per
connection: {"cmd": "status"}, {"cmd": "send", "peer": ID, "data": TEXT}, {"cmd": "inbox"},
{"cmd": "stop"}; every connection gets exactly one JSON answer, an error object naming what was
wrong when the request was not one. `tessera-agent status --state-dir DIR` prints the status.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
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
from typing import TYPE_CHECKING

from tessera.agent.l2 import PacketTransport
from tessera.agent.link import CarrierWatcher, LinkDown as NetLinkDown, LinkUp as NetLinkUp
from tessera.agent.tap import Tap, TapError, TapGone, parse_address
from tessera.agent.supplicant import (EAP_FAILURE, EAP_PROGRESS, EAP_PROPOSED_METHOD, EAP_STARTED, EAP_SUCCESS,
                                      PwdCredentials, Supplicant, TlsCredentials)
from tessera.device import DeviceClient
from tessera.errors import MalformedError, TesseraError
from tessera.identity import RADSEC, BootstrapBundle, DeviceKey
from tessera.secretfile import write_secret
from tessera.node import (Deliver, DeliverFrame, EapProgressed, FrameReceived, IdentityRequested, LinkDown, LinkUp, Log,
                          MethodProposed, Milestone, Node, PortAuthorized, PortRejected, RadiusAnswer, RadiusFailed,
                          RadiusRequest, SaveState, SendFrame, StartAdmission, Timers)
from tessera.message import PeerFrame
from tessera.tunnel import Tunnel
from tessera.radius.client import NoServerAnsweredError, RadiusClient, RejectedError, Server, load_dictionary

if TYPE_CHECKING:  # imported in Agent.__init__ for RadSec bundles only: a UDP agent never loads ssl
    from tessera.radius.radsec import RadSecClient

log = logging.getLogger("tessera.agent")

REQUEST_PRIORITY = {"register": 0, "ticket": 0}  # first in the RadSec queue; the rest (1) in turn
MAX_STATE = 4096  # the sealed state is at most ~2.2 KiB (two tickets of ≤ 1 KiB and three keys)
BATCH = 256  # frames drained from the packet socket or the tap per wakeup (`--batch`)
WIRES = ("socket", "ring")  # `--wire`: agent.l2.PacketTransport or agent.ring.RingTransport
# The default is the socket. bench/tunnel.py, TCP over tessera0, 3 rounds alternated in one run
# (2 cores): the rings move 1.14x the socket's Gbit/s (0.995 vs 0.874) at 0.87x its CPU per
# frame (14.3 vs 16.5 us, both agents), but their 2.5 MiB are mapped into the agent from the
# start (RSS 40.0 vs 37.4 MiB) for every agent of a 150-device lab, while the socket's buffer
# costs memory only while frames wait in it; the socket alone already meets the 0.5 Gbit/s target.
# The ring transport's geometry (2048-byte slots, 32 per 64 KiB block): 1024 RX + 256 TX slots =
# 2.5 MiB of kernel memory per agent, allocated up front (150 agents: 375 MiB), where the socket's
# 8 MiB receive buffer is only a limit. bench/tunnel.py: with 512 RX slots a TCP flow over
# tessera0 overflowed the receiver's ring (one drop per retransmit, ~3,500 in 3 s), with 1024
# about 100 in 3 s, with 2048 none (and tap queue drops instead, as with the socket).
RING_RX_FRAMES, RING_TX_FRAMES = 1024, 256
PEER_FRAME = PeerFrame.TYPE  # the fast path's test on the type byte


def _where(exc: BaseException) -> str:
    """`Type at file:line` of the innermost frame: enough to debug, no values."""
    tb = traceback.extract_tb(exc.__traceback__)
    return f"{type(exc).__name__} at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else type(exc).__name__


_malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only


def trim_heap() -> None:
    """Hand the C heap's free pages back to the kernel (glibc's malloc_trim): start-up (imports,
    the RADIUS dictionary, TLS set-up) leaves ~1.6 MiB free but resident in every agent, and
    each registration or ticket round leaves some more. A no-op without glibc."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def write_private(path: str, data: bytes) -> None:
    """Write a file 0600 atomically, never half-written, never through a symlink, 0600 also
    over an older file of a wider mode (`tessera.secretfile.write_secret`)."""
    write_secret(path, data)


# What protects the agent's secrets on disk, said as it is (the status output repeats it).
KEYS_AT_REST = ("file permissions only: the device key and the state are 0600 files in {dir}; the state's seal "
                "derives from the device key beside it, so it binds the state to this device but hides nothing "
                "from whoever can read that directory; no TPM or secure element holds a key")


class Agent:
    def __init__(self, ifname: str, bundle: BootstrapBundle, state_dir: str, key_pem: bytes | None = None,
                 cert_pem: bytes | None = None, timers: Timers = Timers(), radius_timeout: float = 0.3,
                 radius_retries: int = 3, tick: float = 0.1, events: str | None = None,
                 tunnel: str | None = "tessera0", tunnel_addresses=(), wire: str = "socket", batch: int = BATCH,
                 ring_rx: int = RING_RX_FRAMES):
        """`tunnel`: the TAP interface's name (None: no tunnel); `tunnel_addresses` its addresses
        (ipaddress interfaces, see `agent.tap.parse_address`). `wire`: "socket" (a plain packet
        socket, one syscall per frame) or "ring" (PACKET_MMAP rings: a batch received without a
        syscall per frame, a batch sent with one kick); `batch`: frames taken from the tap or the
        wire per wakeup (1 measures the unbatched loop); `ring_rx`: the RX ring's slots (2 KiB each,
        a multiple of 32)."""
        if wire not in WIRES:
            raise ValueError(f"wire {wire!r}: one of {', '.join(WIRES)}")
        if not 1 <= batch <= 4096:
            raise ValueError(f"batch {batch}: between 1 and 4096 frames")
        if ring_rx < 32 or ring_rx % 32:
            raise ValueError(f"ring of {ring_rx} frames: a positive multiple of 32")
        self.wire, self.batch, self.ring_rx = wire, batch, ring_rx
        self._flush_ok = True  # the last kick of the TX ring went through (else: retried on the tick)
        self._wire_seen = self._wire_dropped = 0  # the kernel's PACKET_STATISTICS, summed
        self.ifname, self.state_dir, self.tick = ifname, state_dir, tick
        self.tunnel_name, self.tunnel_addresses = tunnel, tuple(tunnel_addresses)
        self.tap: Tap | None = None
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        key_pem = key_pem or bundle.device_key_pem
        cert_pem = cert_pem or bundle.device_certificate_pem
        if key_pem is None or cert_pem is None:
            raise ValueError("the agent needs the device key and certificate (in the bundle or as files)")
        self.client = DeviceClient(bundle, DeviceKey.from_pem(key_pem))
        self.events = EventStream(events, self.client.device_id) if events else None
        self.state_path = os.path.join(state_dir, "state")
        self._restore_state()
        self.node = Node(self.client, os.urandom, timers)
        self.tunnel = Tunnel(self.node) if tunnel else None
        self.lock = threading.Lock()
        # files wpa_supplicant reads for EAP-TLS
        self.tls = TlsCredentials(bundle.device_id, self._file("device.crt", cert_pem), self._file("device.key", key_pem),
                                  self._file("ca.crt", bundle.ca_certificate_pem or b""))
        self.dictionary = load_dictionary()
        self.radius_timeout, self.radius_retries = radius_timeout, radius_retries
        self.radsec: RadSecClient | None = None
        if bundle.radius_transport == RADSEC:  # TLS with the device certificate: one connection per server, kept
            if not bundle.ca_certificate_pem:
                raise ValueError("a RadSec bundle needs the realm CA certificate (ca_certificate_pem)")
            from tessera.radius.radsec import RadSecClient, RadSecServer, tls_context
            self.servers = [RadSecServer(s.server_id, s.host, s.radsec_port, s.tls_name) for s in bundle.servers]
            self.radsec = RadSecClient(self.servers, tls_context(self.tls.client_cert, self.tls.private_key,
                                                                 bundle.ca_certificate_pem),
                                       radius_timeout * (1 + radius_retries), dictionary=self.dictionary)
        else:  # RADIUS over UDP with the bundle's shared secret: the weaker option
            self.servers = [Server(s.server_id, s.host, s.port, bundle.radius_secret.encode()) for s in bundle.servers]
        self.results: queue.Queue = queue.Queue()
        self.requests: queue.PriorityQueue = queue.PriorityQueue()  # (priority, n, RadiusRequest): RadSec
        self._request_n = 0
        if self.radsec is not None:
            threading.Thread(target=self._radsec_worker, daemon=True, name="radsec").start()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.inbox: list[tuple[float, str, str]] = []
        self.running = True
        self.exit_code = 0  # run() returns it: 1 when the tunnel's tap went away (_tap_gone)
        self.watcher = self.transport = self.supplicant = self.status = None

    def _restore_state(self) -> None:
        """Load the sealed state; move one that does not open aside (see the module docstring).
        A file that cannot be read at all (a directory, an I/O error) raises OSError: main()
        refuses to start with that reason, since moving it could lose what it holds."""
        try:
            with open(self.state_path, "rb") as f:
                sealed = f.read(MAX_STATE + 1)
        except FileNotFoundError:
            return
        dev = self.client.device_id
        try:
            if len(sealed) > MAX_STATE:
                raise MalformedError(f"larger than the {MAX_STATE} bytes of any state the agent writes")
            self.client.import_state(sealed)
        except TesseraError as exc:
            aside = self.state_path + ".corrupt"
            os.replace(self.state_path, aside)
            log.warning("%s: state file %s is unusable (%s): kept as %s; registering afresh",
                        dev, self.state_path, exc.reason, aside)
            return
        log.info("%s: state restored (%s)", dev, self.client.state.value)

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
        elif isinstance(a, Milestone):
            if self.events is not None:
                self.events.emit(a.kind, a.peer)
        elif isinstance(a, RadiusRequest):
            if self.radsec is not None:
                self._request_n += 1
                self.requests.put((REQUEST_PRIORITY.get(a.operation, 1), self._request_n, a))
            else:
                threading.Thread(target=self._radius, args=(a,), daemon=True, name=f"radius-{a.op_id}").start()
        elif isinstance(a, StartAdmission):
            creds = self.tls if a.method == "tls" else PwdCredentials(a.identity, a.password)
            self.supplicant.set_credentials(creds, restart=True)
        elif isinstance(a, DeliverFrame):
            if self.tap is not None and not self.tap.gone:
                try:
                    self.tap.write(a.frame)
                except TapGone as exc:
                    self._tap_gone(exc)
        elif isinstance(a, Deliver):
            self.inbox.append((time.time(), a.peer, a.data.decode("utf-8", "replace")))
            del self.inbox[:-1000]
        elif isinstance(a, SaveState):
            write_private(self.state_path, self.client.export_state(os.urandom(12)))
            trim_heap()

    def _radsec_worker(self) -> None:
        while True:
            self._radius(self.requests.get()[2])

    def _radius(self, req: RadiusRequest) -> None:
        client = self.radsec or RadiusClient(self.servers, self.radius_timeout, self.radius_retries, self.dictionary)

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
    def request(self, req: dict) -> object:
        """Answer one status-socket request (a JSON object; `StatusSocket` checks that much)."""
        cmd, acts = req.get("cmd"), []
        with self.lock:
            if cmd == "status":
                out = self.node.status(time.time())
                out["keys_at_rest"] = KEYS_AT_REST.format(dir=self.state_dir)
                out["wire"] = self._wire_status()
            elif cmd == "send":
                peer, data = req.get("peer"), req.get("data")
                if not isinstance(peer, str) or not isinstance(data, str):
                    out = {"ok": False, "error": "send needs \"peer\" and \"data\" strings"}
                else:
                    try:
                        acts, out = self.node.send(peer, data.encode(), time.time()), {"ok": True}
                    except UnicodeEncodeError:
                        out = {"ok": False, "error": "data is not valid Unicode text"}
                    except TesseraError as exc:
                        out = {"ok": False, "error": exc.reason}
            elif cmd == "inbox":
                out, self.inbox = [{"time": t, "peer": p, "data": d} for t, p, d in self.inbox], []
            elif cmd == "stop":
                self.running, out = False, {"ok": True}
            else:
                out = {"ok": False, "error": f"unknown command {str(cmd)[:64]!r}"}
        self.act(acts)
        return out

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        dev = self.client.device_id
        self.watcher = CarrierWatcher([self.ifname])
        if self.wire == "ring":
            from tessera.agent.ring import RingTransport  # only where asked for: mmap rings
            self.transport = RingTransport(self.ifname, rx_frames=self.ring_rx, tx_frames=RING_TX_FRAMES)
        else:
            self.transport = PacketTransport(self.ifname)
        ring = self.wire == "ring"
        self.node.mac = self.transport.mac  # bound into our hellos and tickets
        self.supplicant = Supplicant(self.ifname, self.tls, self.state_dir, own_starts=False)  # ours: one per try
        self._open_tap()
        self.status = StatusSocket(os.path.join(self.state_dir, "agent.sock"), self.request)
        log.info("%s: agent on %s (%s, %s), realm %s, servers %s over %s", dev, self.ifname, self.transport.mac,
                 f"{self.wire}{f' of {self.ring_rx} + {RING_TX_FRAMES} frames' if self.wire == 'ring' else ''}, "
                 f"batch {self.batch}",
                 self.client.realm, ", ".join(f"{s.server_id}={s.host}:{s.port}" for s in self.servers),
                 "RadSec (TLS, device certificate)" if self.radsec else "UDP (shared secret)")
        trim_heap()
        try:
            for ev in self.watcher.initial():
                if isinstance(ev, NetLinkUp):
                    self.feed(LinkUp())
            next_tick = time.monotonic()
            taps = [self.tap] if self.tap is not None else []
            while self.running:
                if taps and self.tap.gone:
                    taps = []  # _tap_gone ends the loop: nothing more to wait on there
                timeout = max(0.0, next_tick - time.monotonic())
                # frames left in the TX ring (a kick met a full send buffer): flushed when writable
                wl = [self.transport] if ring and self._flush_ok and self.transport.tx_pending() else []
                ready, writable, _ = select.select([self.watcher, self.supplicant.mon, self.transport, self.wake_r,
                                                    *self.status.sockets(), *taps], wl, [], timeout)
                if writable:
                    self._flush()
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
                        elif ev.name == EAP_STARTED:
                            self.feed(IdentityRequested())
                        elif ev.name == EAP_PROPOSED_METHOD:
                            self.feed(MethodProposed(ev.text))  # the RADIUS path answers
                        elif ev.name in EAP_PROGRESS:
                            self.feed(EapProgressed())  # ... and goes on answering
                if self.transport in ready:
                    self._drain_wire()
                if taps and self.tap in ready:
                    self._drain_tap()
                if self.wake_r in ready:
                    try:
                        os.read(self.wake_r, 4096)
                    except BlockingIOError:
                        pass
                    while not self.results.empty():
                        self.feed(self.results.get())
                self.status.ready(ready, time.monotonic())
                if time.monotonic() >= next_tick:
                    self.feed(None)
                    next_tick = time.monotonic() + self.tick
                    if ring:
                        self._flush_ok = True
                        self._flush()
                if taps and self.tap.carrier is not bool(self.node.sessions):
                    self.tap.set_carrier(bool(self.node.sessions))  # on while a peer session exists
        finally:
            self.close()
        return self.exit_code

    # -- the tunnel's data path ----------------------------------------------------------------
    def _open_tap(self) -> None:
        """tessera0 behind its nftables guard (agent/guard.py), or: with `--tunnel-address` given,
        a tunnel that cannot be made (or guarded) ends the agent (SystemExit, non-zero: systemd
        restarts it; the guard, if made, stays and keeps the tunnel's prefixes off eth0); with no
        addresses, no tunnel (logged) where /dev/net/tun is missing or refuses."""
        if self.tunnel is None:
            return
        dev = self.client.device_id
        try:
            if self.tunnel_addresses:
                from tessera.agent.guard import Guard  # before the tap: no moment without it
                self.guard = Guard(self.tunnel_name, self.tunnel_addresses, self.ifname)
                self.guard.install()
            self.tap = Tap(self.tunnel_name, self.tunnel.hw, self.tunnel.mtu, self.tunnel_addresses)
        except (OSError, ValueError) as exc:  # TapError, GuardError
            why = getattr(exc, "strerror", None) or exc
            if self.tunnel_addresses:
                log.error("%s: tunnel %s failed: %s; exiting (its addresses %s are not served in clear)", dev,
                          self.tunnel_name, why, ", ".join(map(str, self.tunnel_addresses)))
                self.close()
                raise SystemExit(f"tessera-agent: tunnel {self.tunnel_name}: {why}") from None
            log.error("%s: no tunnel: %s (running without %s)", dev, why, self.tunnel_name)
            self.node.tunnel = self.tunnel = None
            return
        log.info("%s: tunnel %s up (%s, MTU %d%s)", dev, self.tunnel_name, self.tunnel.mac, self.tunnel.mtu,
                 "".join(f", {a}" for a in self.tunnel_addresses))

    def _send_record(self, dst: str, record: bytes) -> None:
        """One record to the wire: the socket sends it now; the ring queues it (`_flush` sends
        the batch with one kick at the end of the wakeup)."""
        try:
            if self.wire == "ring":
                if not self.transport.queue(dst, record):  # TX ring full: kick, wait for a slot
                    self.transport.send_batch([(dst, record)])  # counts tx_full_drops if none frees up
            else:
                self.transport.send(dst, record)
        except OSError as exc:  # queue full, carrier gone: lost, as on a link
            if self.tunnel is not None:
                self.tunnel.send_failures += 1  # shown in status
            log.debug("send to %s failed: %s", dst, exc)

    def _flush(self) -> None:
        """Hand the TX ring's queued frames to the kernel (one kick). A kick that fails (the link
        went down) leaves them queued; the loop stops waiting for writability until the tick."""
        t = self.transport
        if not t.tx_pending():
            return
        errors = t.counters.tx_errors
        try:
            t.flush()
        except OSError as exc:
            log.debug("flush to %s failed: %s", self.ifname, exc)
            self._flush_ok = False
            return
        self._flush_ok = t.counters.tx_errors == errors

    def _wire_status(self) -> dict:
        """The port's transport for `status`: its kind, the batch, frames the kernel queued for us
        and dropped (socket buffer or RX ring full), and the ring's own counters."""
        out: dict = {"transport": self.wire, "batch": self.batch}
        t = self.transport
        if t is None or not hasattr(t, "stats"):  # not started yet, or an in-memory wire (tests)
            return out
        try:
            seen, dropped = t.stats()  # since the last call: summed here
            self._wire_seen += seen
            self._wire_dropped += dropped
        except OSError:
            pass
        out.update(frames=self._wire_seen, kernel_drops=self._wire_dropped)
        if self.wire == "ring":
            out.update(t.counters.as_dict())
        return out

    def _wire_batch(self) -> list:
        """Up to `batch` frames waiting on the wire."""
        if self.wire == "ring":
            return self.transport.recv_batch(self.batch)
        recv, got = self.transport.recv, []
        for _ in range(self.batch):
            one = recv()
            if one is None:
                break
            got.append(one)
        return got

    def _tap_gone(self, exc: TapGone) -> None:
        """The tap went away under us (deleted, its fd broken): say so once and end the agent
        with exit status 1, so that its service manager starts it again with a fresh tap; the
        nftables guard stays meanwhile (no exit removes it)."""
        if self.exit_code == 0:
            log.error("%s: tunnel %s gone (%s): stopping, to be restarted with a new one", self.client.device_id,
                      self.tunnel_name, exc)
        self.exit_code, self.running = 1, False

    def _drain_wire(self) -> None:
        """Frames waiting on the packet socket: PeerFrame records straight to the tap (no tick per
        frame: the node's timer runs on its own), everything else through node.handle()."""
        slow, out = [], []
        tunnel = self.tunnel
        if tunnel is None:
            for got in self._wire_batch():
                self.feed(FrameReceived(*got))
            return
        inbound, write = tunnel.inbound_at, self.tap.write
        try:
            with self.lock:
                now = time.time() + self.node.offset  # the node's time, once per batch
                for got in self._wire_batch():
                    payload = got[1]
                    if len(payload) > 1 and payload[1] == PEER_FRAME:
                        inner = inbound(got[0], payload, now, out)
                        if inner is not None:
                            write(inner)
                    else:
                        slow.append(got)
        except TapGone as exc:
            self._tap_gone(exc)
        except Exception as exc:  # a bug: log where (never values) and go on
            log.error("%s: internal error in the tunnel (in): %s", self.client.device_id, _where(exc))
        if out:
            self.act(out)
        for got in slow:
            self.feed(FrameReceived(*got))

    def _drain_tap(self) -> None:
        """Frames the kernel sent on the tap: each out as encrypted records to its peer(s); with
        the ring, the whole batch goes to the kernel with one kick at the end."""
        read, outbound, send = self.tap.read, self.tunnel.outbound, self._send_record
        try:
            with self.lock:
                now = time.time()
                for _ in range(self.batch):
                    frame = read()
                    if frame is None:
                        break
                    for dst, record in outbound(frame, now):
                        send(dst, record)
        except TapGone as exc:
            self._tap_gone(exc)
        except Exception as exc:  # a bug: log where (never values) and go on
            log.error("%s: internal error in the tunnel (out): %s", self.client.device_id, _where(exc))
        if self.wire == "ring":
            self._flush()

    def close(self) -> None:
        for obj in (self.supplicant, self.transport, self.watcher, self.status, self.radsec, self.events, self.tap):
            if obj is not None:
                try:
                    obj.close()
                except OSError:
                    pass
        # the tunnel's nftables guard stays, whatever ended the agent (a stop, an exception, a lost
        # tap): until the next start rebuilds it, nothing for the tunnel's prefixes leaves in clear;
        # `tessera-agent unguard` removes it for good (agent/guard.py)


class EventStream:
    """The agent's milestones (`tessera.node.Milestone`) as JSON lines appended to a file or a
    FIFO another process reads as they come: {"t": time.monotonic(), "time": time.time(),
    "device": ID, "event": KIND} and "peer" for the peer ones. CLOCK_MONOTONIC is one clock
    for every network namespace, so a lab compares ``t`` across devices and with its own link-up.
    Each line is one write() of less than PIPE_BUF bytes: whole lines, also when many agents
    write to one pipe. Writes never block: a reader that falls behind loses lines (counted in
    `dropped`, logged once) rather than stalling the agent, and one that went away ends the
    stream. A FIFO must have its reader before the agent starts. Kinds and peer ids only:
    nothing secret."""

    def __init__(self, path: str, device_id: str):
        self.device_id, self.dropped = device_id, 0
        try:
            self.fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK,
                                          0o600)
        except OSError as exc:
            raise OSError(exc.errno, f"event stream {path}: {exc.strerror}"
                          + (" (a FIFO nobody reads)" if exc.errno == errno.ENXIO else "")) from None
        self.emit("started", pid=os.getpid())

    def emit(self, kind: str, peer: str | None = None, pid: int | None = None) -> None:
        if self.fd is None:
            return
        line = {"t": time.monotonic(), "time": time.time(), "device": self.device_id, "event": kind}
        if peer is not None:
            line["peer"] = peer
        if pid is not None:
            line["pid"] = pid
        try:
            os.write(self.fd, (json.dumps(line) + "\n").encode())
        except BlockingIOError:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("%s: event stream full: its reader is behind, lines are lost", self.device_id)
        except OSError as exc:
            log.warning("%s: event stream ended: %s", self.device_id, exc)
            self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class StatusSocket:
    """The agent's status socket: one JSON request per connection, exactly one JSON answer.

    Served from the agent's select() loop without blocking it: `sockets()` are what to wait on,
    `ready(readable, now)` does what is due. Each connection is read as its bytes arrive, so a
    client that sends nothing or dribbles holds up neither the protocol nor other clients; it is
    answered with an error after `timeout`. A request ends at the client's EOF (`query` shuts
    down its sending side) or as soon as the bytes read are a whole JSON value. Bounded: a request
    over `max_request` bytes and a connection beyond `max_clients` open ones are answered with an
    error at once. The answer is the handler's, or {"ok": false, "error": ...} naming what was
    wrong: empty, not JSON, not an object, too large, too slow, too many clients.
    """

    def __init__(self, path: str, handle, timeout: float = 2.0, max_request: int = 65536, max_clients: int = 16):
        self.path, self.handle = path, handle
        self.timeout, self.max_request, self.max_clients = timeout, max_request, max_clients
        if os.path.exists(path):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.sock.listen(max_clients)
        self.sock.setblocking(False)
        self.clients: dict[socket.socket, tuple[bytearray, float]] = {}  # conn → (bytes so far, deadline)

    def sockets(self) -> list[socket.socket]:
        return [self.sock, *self.clients]

    def ready(self, readable, now: float) -> None:
        if self.sock in readable:
            self._accept(now)
        for conn in [c for c in readable if c in self.clients]:
            self._read(conn)
        for conn, (_, deadline) in list(self.clients.items()):
            if now >= deadline:
                self._answer(conn, _error(f"no complete request within {self.timeout:g} s"))

    def _accept(self, now: float) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: the client waits in the backlog
                log.debug("status socket: accept: %s", exc)
                return
            if len(self.clients) >= self.max_clients:
                self._send(conn, _error(f"busy: {self.max_clients} requests open"))
                continue
            conn.setblocking(False)
            self.clients[conn] = (bytearray(), now + self.timeout)

    def _read(self, conn: socket.socket) -> None:
        buf = self.clients[conn][0]
        try:
            chunk = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("status socket: %s", exc)
            del self.clients[conn]
            conn.close()
            return
        buf += chunk
        if len(buf) > self.max_request:
            self._answer(conn, _error(f"request larger than {self.max_request} bytes"))
        elif not chunk:  # EOF: the request is what came
            self._answer(conn, self._decide(buf))
        else:
            try:
                json.loads(buf)
            except (ValueError, RecursionError):
                return  # not whole yet: wait for more, EOF or the deadline
            self._answer(conn, self._decide(buf))

    def _decide(self, buf: bytearray) -> object:
        if not buf.strip():
            return _error("empty request")
        try:
            req = json.loads(buf)
        except RecursionError:
            return _error("request is not JSON: nested too deeply")
        except ValueError as exc:
            return _error(f"request is not JSON: {exc}")
        if not isinstance(req, dict):
            return _error(f"a request is a JSON object, not {type(req).__name__}")
        try:
            return self.handle(req)
        except Exception as exc:  # a bug: answer, log where (never values) and go on
            log.error("status socket: internal error: %s", _where(exc))
            return _error("internal error")

    def _answer(self, conn: socket.socket, out: object) -> None:
        del self.clients[conn]
        self._send(conn, out)

    def _send(self, conn: socket.socket, out: object) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(self.timeout)
            conn.sendall(json.dumps(out).encode())
            # Closing with unread bytes queued makes the kernel reset the connection, and the
            # client would read ECONNRESET instead of the answer: take what is queued first.
            conn.setblocking(False)
            for _ in range(16):
                if not conn.recv(65536):
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:  # the client left early
            log.debug("status socket: %s", exc)
        finally:
            conn.close()

    def close(self) -> None:
        for conn in self.clients:
            conn.close()
        self.clients.clear()
        self.sock.close()


def _error(text: str) -> dict:
    return {"ok": False, "error": text}


def query(state_dir: str, request: dict, timeout: float = 3.0) -> object:
    """Send one request to a running agent's status socket."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(os.path.join(state_dir, "agent.sock"))
        try:
            s.sendall(json.dumps(request).encode())
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent answered without reading (busy): the answer is waiting
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
        tun = (s or {}).get("tunnel")
        if tun:
            print(f"    tunnel: {tun['frames_out']} frames / {tun['bytes_out']} bytes out, {tun['frames_in']} frames / "
                  f"{tun['bytes_in']} bytes in; dropped: {tun['auth_drops']} not authentic, {tun['replay_drops']} "
                  f"replayed, {tun.get('spoof_drops', 0)} from another source")
    print(f"  frames dropped {st['frames_dropped']}, failed handshakes {st['handshakes_failed']}, "
          f"hellos over their rate {st.get('hellos_limited', 0)}, first handshakes deferred {st.get('handshakes_deferred', 0)}")
    if st.get("tunnel"):
        t = st["tunnel"]
        print(f"  tunnel {t['mac']} MTU {t['mtu']}: dropped {t['no_session_drops']} for want of a session, "
              f"{t.get('unknown_drops', 0)} to no peer's MAC, {t.get('size_drops', 0)} of a wrong size, "
              f"{t.get('group_drops', 0)} multicast over its rate; {t.get('send_failures', 0)} records not sent")
    if st.get("revoked_peers"):
        print(f"  revoked by the realm (refused): {', '.join(st['revoked_peers'])}")
    if st.get("keys_at_rest"):
        print(f"  keys at rest: {st['keys_at_rest']}")


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds between 0 and 86400")
    return value


def _wire(text: str) -> tuple[str, int]:
    """socket, ring or ring:RX_FRAMES (argparse type)."""
    kind, _, rx = text.partition(":")
    if kind not in WIRES or (rx and kind != "ring"):
        raise argparse.ArgumentTypeError(f"{text!r}: socket, ring or ring:RX_FRAMES")
    try:
        n = int(rx) if rx else RING_RX_FRAMES
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: RX_FRAMES is a number of frames") from None
    if n < 32 or n % 32 or n > 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: RX_FRAMES a multiple of 32 up to 65536")
    return kind, n


def _batch(text: str) -> int:
    """Frames per wakeup, 1 to 4096 (argparse type)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of frames") from None
    if not 1 <= n <= 4096:
        raise argparse.ArgumentTypeError(f"{text!r}: between 1 and 4096 frames per wakeup")
    return n


def _address(text: str):
    """An interface address with its prefix (argparse type)."""
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tessera-agent", description="Tessera device agent")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the agent on one port")
    r.add_argument("--interface", "-i", default="eth0")
    r.add_argument("--bundle", required=True, help="bootstrap bundle (JSON) from tessera-admin")
    r.add_argument("--key", help="device private key (PEM) if not in the bundle")
    r.add_argument("--certificate", help="device certificate (PEM) if not in the bundle")
    r.add_argument("--state-dir", required=True)
    r.add_argument("--announce-every", type=_seconds, default=Timers.announce_every)
    r.add_argument("--revocation-poll", type=_seconds, default=Timers.revocation_poll,
                   help="seconds between asking the realm which devices it revoked (default %(default)s)")
    r.add_argument("--events", metavar="PATH",
                   help="append milestones (link-up, authorized, registered, ticketed, peered, record) as "
                        "JSON lines to this file or FIFO")
    r.add_argument("--tunnel-address", action="append", default=[], type=_address, metavar="ADDR/PREFIX",
                   help="an address of the tunnel interface, IPv4 or IPv6 (repeatable); with one, the agent "
                        "guards the tunnel's prefixes with nftables (package nftables) and exits if the "
                        "tunnel cannot be made")
    r.add_argument("--tunnel-name", default="tessera0", help="the tunnel's TAP interface (default %(default)s)")
    r.add_argument("--no-tunnel", action="store_true", help="run without the tunnel interface")
    r.add_argument("--wire", type=_wire, default=("socket", RING_RX_FRAMES), metavar="socket|ring[:RX_FRAMES]",
                   help="frames to and from the port: a plain packet socket (one syscall per frame) or "
                        "PACKET_MMAP rings (batches without a syscall per frame; RX_FRAMES (default "
                        f"{RING_RX_FRAMES}) + {RING_TX_FRAMES} slots of 2 KiB of kernel memory) "
                        "(default socket: same target met, no memory held; see WIRES in agent/daemon.py)")
    r.add_argument("--batch", type=_batch, default=BATCH, metavar="N",
                   help="frames taken from the tap or the port per wakeup (default %(default)s; "
                        "1 measures the unbatched loop)")
    r.add_argument("--debug", action="store_true")
    s = sub.add_parser("status", help="show a running agent's ports, tickets, peers and sessions")
    s.add_argument("--state-dir", required=True)
    s.add_argument("--json", action="store_true")
    u = sub.add_parser("unguard", help="remove a tunnel's nftables guard, which outlives the agent on purpose "
                                       "(after the agent is stopped for good)")
    u.add_argument("--tunnel-name", default="tessera0")
    a = p.parse_args(argv)
    if a.cmd == "unguard":
        from tessera.agent.guard import GuardError, remove_guard
        try:
            table = remove_guard(a.tunnel_name)
        except (GuardError, ValueError) as exc:
            print(f"tessera-agent: {exc}", file=sys.stderr)
            return 1
        print(f"tessera-agent: guard of {a.tunnel_name} removed (nftables tables {table})")
        return 0
    if a.cmd == "status":
        try:
            st = query(a.state_dir, {"cmd": "status"})
        except OSError as exc:
            print(f"tessera-agent: no agent answers in {a.state_dir}: {exc}", file=sys.stderr)
            return 1
        except ValueError:
            print(f"tessera-agent: the agent in {a.state_dir} gave no status (not JSON)", file=sys.stderr)
            return 1
        if not isinstance(st, dict) or "device_id" not in st:
            error = st.get("error") if isinstance(st, dict) else None
            print(f"tessera-agent: the agent in {a.state_dir} gave no status: {error if error else repr(st)}", file=sys.stderr)
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
                      Timers(announce_every=a.announce_every, revocation_poll=a.revocation_poll), events=a.events,
                      tunnel=None if a.no_tunnel else a.tunnel_name, tunnel_addresses=a.tunnel_address,
                      wire=a.wire[0], ring_rx=a.wire[1], batch=a.batch)
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
