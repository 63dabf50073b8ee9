"""RADIUS load generator: many requests in flight from pre-built packets; server CPU per exchange.

How this works: every request is encoded *before* the clock starts (``prebuild``: one
Access-Request with Message-Authenticator per core message, ids assigned as slots), so the
timed loop only does ``send``/``recv`` on a few non-blocking UDP sockets. A slot is
(socket, RADIUS Identifier); at most ``window`` are outstanding; a reply frees its slot by
(socket, id), a slot older than ``timeout`` counts as lost. radclient tops out near 3,000
req/s on these machines (measured with FreeRADIUS 3.2.1 on a 2-core VM); this keeps the server, not the client, busy.

The figure to trust is the server's CPU time per exchange: ``utime + stime`` of radiusd from
``/proc/PID/stat`` before and after, divided by the answered requests -- in nanoseconds from
each thread's ``/proc/PID/task/TID/schedstat`` when no thread exited meanwhile (a fast floor
answers 15,000 requests in a few dozen clock ticks), else in ticks from ``stat``. rlm_python3
runs on one core per radiusd, so µs/exchange -> exchanges/s/core. Replies are not verified in the loop
(``--verify`` checks a sample afterwards). Each answer's latency is its reply's arrival minus
its send, both ``time.monotonic()`` stamps the loop takes anyway (``Result.p50_ms``/``p99_ms``);
the generator's own CPU (``getrusage`` of this process) shows it is not the bottleneck.

Usage:
  # a private radiusd with the stub realm (echo): Tessera's adapter without the core's protocol
  # (rlm_python3's own floor, a module returning at once, is bench/freeradius_floor.py)
  python bench/radius_load.py --stub --count 20000 --size 300
  # an existing server (e.g. one the lead started with a real realm), messages from a file of
  # hex lines (each must be a fresh request: the replay cache rejects repeats)
  python bench/radius_load.py --address 127.0.0.1 --port 1812 --secret S --pid PID --hex-file msgs

From Python (real TGT/session exchanges):
  packets = prebuild(server, [(device_id, request_bytes), ...])
  result = run_load(server, packets, pid=radiusd_pid, window=256)
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tessera.device import DeviceClient
from tessera.peer import PeerInitiator, PeerResponder
from tessera.radius.client import RadiusClient, Server

IDS_PER_SOCKET = 256


def session_requests(x: DeviceClient, y: DeviceClient, server_id: str, t: float, n: int) -> list[tuple[str, bytes]]:
    """``n`` SessionRequests from y (the responder) for sessions with x, each with a fresh hello."""
    out = []
    for _ in range(n):
        ia, rb = PeerInitiator(x, y.device_id), PeerResponder(y)
        rb.receive_hello(ia.hello(t, os.urandom(16)), t)
        out.append((y.device_id, rb.session_request(server_id, t, os.urandom(16))))
    return out


def freeradius_version() -> str:
    """"3.2.1" from ``freeradius -v`` ("?" when it does not say)."""
    import subprocess

    out = subprocess.run(["freeradius", "-v"], capture_output=True, text=True).stdout
    for word in out.split():
        if word[:1].isdigit() and word.count(".") >= 2:
            return word.rstrip(",")
    return "?"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of each live thread of a process, by thread id: its run time in ns
    (``/proc/PID/task/TID/schedstat``, first field)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[task.name] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
    return out


def thread_cpu_delta(before: dict[str, float], after: dict[str, float]) -> float | None:
    """CPU seconds between two ``thread_cpu_seconds`` readings (threads started meanwhile count
    whole); None when a thread exited meanwhile (it took its time with it) or nothing was read."""
    if not before or not before.keys() <= after.keys():
        return None
    return sum(v - before.get(tid, 0.0) for tid, v in after.items())


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children, e.g. a PostgreSQL postmaster and its backends: its
    own utime + stime, what it has reaped (cutime + cstime: backends and autovacuum workers
    that already exited), plus utime + stime of every child still alive (found by PPid in
    /proc). One level deep: a postmaster's children do not fork."""
    tck = os.sysconf("SC_CLK_TCK")
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    total = sum(int(f) for f in fields[11:15]) / tck
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile: its time is now in the parent's cutime/cstime
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tck
    return total


@dataclass
class Result:
    sent: int
    accepted: int
    rejected: int
    lost: int
    seconds: float
    server_cpu: float | None
    extra_cpu: float | None = None  # what ``run_load(extra_cpu=...)`` measured, e.g. PostgreSQL's
    client_cpu: float | None = None  # the load generator's own CPU seconds (this process)
    p50_ms: float | None = None  # send -> reply of the answered requests
    p99_ms: float | None = None

    @property
    def answered(self) -> int:
        return self.accepted + self.rejected

    def per_exchange_us(self, seconds: float | None) -> float | None:
        """CPU seconds spread over the answers, in µs (None when not measured)."""
        return None if seconds is None or not self.answered else seconds / self.answered * 1e6

    def report(self) -> str:
        rate = self.answered / self.seconds if self.seconds else 0.0
        line = (f"{self.sent} sent, {self.accepted} accept, {self.rejected} reject, {self.lost} lost "
                f"in {self.seconds:.2f} s = {rate:,.0f} answers/s")
        if self.server_cpu is not None and self.answered:
            us = self.server_cpu / self.answered * 1e6
            line += f"; radiusd CPU {us:.1f} µs/exchange (~{1e6 / us:,.0f}/s per core)"
        if self.p50_ms is not None:
            line += f"; p50 {self.p50_ms:.2f} ms, p99 {self.p99_ms:.2f} ms"
        if self.client_cpu is not None and self.answered:
            line += f"; load generator {self.client_cpu / self.answered * 1e6:.1f} µs"
        return line


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) of ``values`` by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def prebuild(server: Server, requests: list[tuple[str, bytes]], sockets: int | None = None):
    """Encode every request. Returns (packets, n_sockets): packet i uses socket
    ``(i // 256) % n_sockets`` and Identifier ``i % 256``."""
    client = RadiusClient([server])
    n = sockets or max(1, min(16, (len(requests) + IDS_PER_SOCKET - 1) // IDS_PER_SOCKET))
    packets = []
    for i, (user, message) in enumerate(requests):
        pkt = client.request_packet(server, user, message)
        pkt.id = i % IDS_PER_SOCKET
        packets.append(pkt.RequestPacket())
    return packets, n


# PAP requests for the FreeRADIUS floor (bench/freeradius_floor.py): RFC 2865's attributes
# that Tessera's own dictionary has no use for
PAP_DICTIONARY = ("ATTRIBUTE\tUser-Name\t1\tstring\n"
                  "ATTRIBUTE\tUser-Password\t2\tstring\tencrypt=1\n"
                  "ATTRIBUTE\tMessage-Authenticator\t80\toctets\n")


def prebuild_pap(server: Server, users: list[tuple[str, str]], sockets: int | None = None):
    """Encode one PAP Access-Request (User-Name, User-Password hidden with the secret,
    Message-Authenticator) per (name, password), laid out on sockets and Identifiers as
    ``prebuild`` does, for the same ``run_load``."""
    import io

    from pyrad import packet
    from pyrad.dictionary import Dictionary

    d = Dictionary(io.StringIO(PAP_DICTIONARY))
    n = sockets or max(1, min(16, (len(users) + IDS_PER_SOCKET - 1) // IDS_PER_SOCKET))
    packets = []
    for i, (name, password) in enumerate(users):
        pkt = packet.AuthPacket(code=packet.AccessRequest, secret=server.secret, dict=d, id=i % IDS_PER_SOCKET)
        pkt["User-Name"] = name
        pkt["User-Password"] = pkt.PwCrypt(password)
        pkt.add_message_authenticator()
        packets.append(pkt.RequestPacket())
    return packets, n


def run_load(server: Server, built, pid: int | None = None, window: int = 256,
             timeout: float = 2.0, extra_cpu: Callable[[], float] | None = None) -> Result:
    """Send all pre-built packets keeping up to ``window`` in flight; returns the counts.
    ``extra_cpu``: a CPU-seconds reading taken before and after as well (another process the
    server uses, e.g. ``lambda: tree_cpu_seconds(postmaster_pid)``)."""
    packets, n_sockets = built
    window = min(window, n_sockets * IDS_PER_SOCKET)
    addr = socket.getaddrinfo(server.host, server.port, type=socket.SOCK_DGRAM)[0]
    socks = []
    for _ in range(n_sockets):
        s = socket.socket(addr[0], socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        s.connect(addr[4])
        s.setblocking(False)
        socks.append(s)
    index = {s.fileno(): k for k, s in enumerate(socks)}
    outstanding: dict[tuple[int, int], float] = {}  # slot -> send time
    accepted = rejected = lost = 0
    latencies: list[float] = []
    poller = select.epoll()
    for s in socks:
        poller.register(s.fileno(), select.EPOLLIN)

    cpu0 = cpu_seconds(pid) if pid else None
    fine0 = thread_cpu_seconds(pid) if pid else None
    extra0 = extra_cpu() if extra_cpu else None
    own0 = _own_cpu()
    t0 = time.monotonic()
    i = 0
    try:
        while i < len(packets) or outstanding:
            now = time.monotonic()
            while i < len(packets) and len(outstanding) < window:
                slot = ((i // IDS_PER_SOCKET) % n_sockets, i % IDS_PER_SOCKET)
                if slot in outstanding:
                    break  # the previous user of this Identifier has not finished
                try:
                    socks[slot[0]].send(packets[i])
                except BlockingIOError:
                    break
                outstanding[slot] = now
                i += 1
            for fd, _ in poller.poll(0.05):
                k = index[fd]
                arrived = time.monotonic()
                while True:
                    try:
                        data = socks[k].recv(4096)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    sent = outstanding.pop((k, data[1]), None) if len(data) >= 20 else None
                    if sent is not None:
                        latencies.append(arrived - sent)
                        if data[0] == 2:
                            accepted += 1
                        else:
                            rejected += 1
            if outstanding and now - min(outstanding.values()) > timeout:
                for slot in [s for s, t in outstanding.items() if now - t > timeout]:
                    del outstanding[slot]
                    lost += 1
    finally:
        seconds = time.monotonic() - t0
        cpu1 = cpu_seconds(pid) if pid else None
        fine1 = thread_cpu_seconds(pid) if pid else None
        extra1 = extra_cpu() if extra_cpu else None
        own1 = _own_cpu()
        poller.close()
        for s in socks:
            s.close()
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    server_cpu = None
    if pid:
        server_cpu = thread_cpu_delta(fine0, fine1)
        server_cpu = cpu1 - cpu0 if server_cpu is None else server_cpu
    return Result(len(packets), accepted, rejected, lost, seconds, server_cpu,
                  (extra1 - extra0) if extra_cpu else None, own1 - own0,
                  p50 * 1e3 if p50 is not None else None, p99 * 1e3 if p99 is not None else None)


def _stub_server(workdir: Path):
    """A private radiusd with the echo stub realm from tests/server (the plumbing's cost)."""
    import json
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "server"))
    from tessera.lab import radiusd
    from tessera.lab.pki import LabPKI

    now = time.time()
    tls = LabPKI.generate(now).install_server_files(workdir / "tls", "radius.lab", now)
    db = workdir / "stub.json"
    db.write_text(json.dumps({"devices": {}}))
    (workdir / "kek").write_bytes(b"-")
    cfg = radiusd.RadiusConfig(db=db, kek=workdir / "kek", tls_dir=tls, realm_opener="stub_realm:open_realm",
                               python_path=(Path(__file__).resolve().parents[1] / "tests" / "server",))
    raddb = radiusd.build_config(workdir / "raddb", cfg)
    return radiusd.RadiusServer.for_config(raddb, cfg), cfg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stub", action="store_true", help="start a private radiusd with the echo stub realm")
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1812)
    p.add_argument("--secret", default="tessera-lab-secret")
    p.add_argument("--server-id", default="radius1")
    p.add_argument("--pid", type=int, help="radiusd PID, for its CPU time")
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--size", type=int, default=300, help="stub message size in bytes")
    p.add_argument("--hex-file", help="one request message per line, hex")
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)

    if a.hex_file:
        requests = [("bench", bytes.fromhex(line.strip())) for line in open(a.hex_file) if line.strip()]
    else:
        requests = [("bench", b"TSR1" + i.to_bytes(8, "big") + os.urandom(max(0, a.size - 12)))
                    for i in range(a.count)]
    proc = None
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        try:
            if a.stub:
                proc, cfg = _stub_server(Path(tmp))
                proc.start()
                a.address, a.port, a.secret, a.pid = cfg.address, cfg.port, cfg.secret, proc.pid
                a.server_id = cfg.server_id
            server = Server(a.server_id, a.address, a.port, a.secret.encode())
            built = prebuild(server, requests)
            failed = 0
            for r in range(a.rounds):
                res = run_load(server, built, a.pid, a.window)
                print(f"round {r + 1}: " + res.report())
                failed += res.rejected + res.lost
                if a.hex_file:
                    break  # real requests are single-use (replay cache)
        finally:
            if proc is not None:
                proc.stop()
    if failed:
        print(f"FAILED: {failed} requests rejected or lost; the figures above do not measure the exchange",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
