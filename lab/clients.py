"""Real clients over the secured link: bird2 (OSPF), iperf3, ICMP round trips, stub networks.

How this works
--------------
Each device namespace of the lab has its ``tessera0`` (the agent's TAP, MTU 1452) with the lab's
tunnel addresses: device k (1-based) has ``198.51.100.{k}/24`` (`tunnel_ipv4`). The drivers here
run unmodified programs on it, the way a network engineer would:

* `add_stub` puts a *stub network* behind device k: a veth pair inside its namespace (this
  kernel has no ``dummy`` module), ``stub0`` with ``203.0.113.{16k+1}/28`` (network
  ``203.0.113.{16k}/28``, `stub_network`) and its peer ``stub0p`` without an address, both up.
* `Bird` writes a bird2 config (`bird_config`: router id = the device's tunnel IPv4, OSPFv2
  area 0 on the tunnel interface with ``hello 1; wait 2; dead 4`` -- ``type ptp`` where only two
  routers share it, broadcast otherwise -- the stub interface as a stub (passive) interface, a
  kernel protocol exporting OSPF routes only), checks it with ``bird -p``, starts
  ``bird -f -c CONF -s SOCKET -P PIDFILE`` in the namespace through `Lab.spawn` (``-f``: the
  PID the lab holds is bird's own, the one in PIDFILE) and stops it by that PID. `Bird.neighbors`
  parses ``birdc -s SOCKET show ospf neighbors``; `Bird.routes` reads the kernel's routes that
  bird installed (``ip -j route show proto bird`` in the namespace).
* `Iperf3`: a one-shot server (``iperf3 -s -1 -B ADDR -p PORT -J``, a lab process whose log is
  its JSON report) and a client (``iperf3 -c ADDR -p PORT -t N -J``); `parse_iperf3` turns the
  client's report into `IperfResult` (Gbit/s received, bytes, retransmits, the data stream's
  MSS, mean RTT) or raises `ClientError` with iperf3's own error line.
* `icmp_rtts`: echo round trips measured from a raw ICMP socket opened inside the namespace
  (each round trip timed in one process, no ``ping`` to parse); `RttStats` summarizes them.
* `stand_in_segment`: while a test or a developer has no agent, one plain bridge with a veth
  named like the tunnel (same MTU, same addresses) into each namespace -- the same segment the
  agents' tessera0 interfaces make, without the encryption.

Everything started is a `Lab` process (stopped by PID, also when the lab closes on failure);
links live inside the lab's namespaces, which the lab deletes. No key material goes anywhere.
The parsers and the config writer are pure, for unit tests without root.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import select
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tessera.lab.netns import Lab, LabError, Proc, sh

TUNNEL_IFNAME = "tessera0"
TUNNEL_MTU = 1452  # 1500 - 18 (record header) - 16 (GCM tag) - 14 (inner Ethernet header)
STUB_IFNAME, STUB_PEER = "stub0", "stub0p"
MAX_STUB_INDEX = 14  # 203.0.113.{16k}/28 stays inside 203.0.113.0/24 (and off the .0/28 of the switch)


class ClientError(LabError):
    """A client program failed or reported something this module cannot use."""


# ---------------------------------------------------------------- addresses (pure)

def tunnel_ipv4(k: int) -> str:
    """Device k's tessera0 IPv4 address (no prefix); also its OSPF router id."""
    if not 1 <= k <= 254:
        raise ValueError(f"device index must be 1..254, not {k}")
    return f"198.51.100.{k}"


def tunnel_ipv6(k: int) -> str:
    if not 1 <= k <= 0xFFFF:
        raise ValueError(f"device index must be 1..65535, not {k}")
    return f"2001:db8:100::{k:x}"


def stub_network(k: int) -> str:
    """The stub network behind device k: ``203.0.113.{16k}/28`` (k 1..14)."""
    if not 1 <= k <= MAX_STUB_INDEX:
        raise ValueError(f"stub networks exist for devices 1..{MAX_STUB_INDEX}, not {k}")
    return f"203.0.113.{16 * k}/28"


def stub_address(k: int) -> str:
    """Device k's own address on its stub network (the network's first host)."""
    return str(ipaddress.ip_network(stub_network(k)).network_address + 1)


# ---------------------------------------------------------------- bird2 (pure parts)

def bird_config(router_id: str, interface: str = TUNNEL_IFNAME, stub: str | None = STUB_IFNAME,
                ptp: bool = False, log_path: str | None = None, hello: int = 1, wait: int = 2,
                dead: int = 4) -> str:
    """A bird2 config: OSPFv2 area 0 on ``interface`` (``type ptp`` with two routers, broadcast
    with more), ``stub`` (if any) a stub interface (its network advertised, no hellos on it),
    and a kernel protocol that installs OSPF's routes and nothing else."""
    ipaddress.IPv4Address(router_id)  # ValueError for anything else
    for name in (interface, stub):
        if name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", name):
            raise ValueError(f"not an interface name: {name!r}")
    if not (0 < hello < dead and wait > 0):
        raise ValueError(f"need 0 < hello < dead and wait > 0, got hello {hello}, wait {wait}, dead {dead}")
    kind = "ptp" if ptp else "broadcast"
    lines = [
        f"router id {router_id};",
        f'log "{log_path}" all;' if log_path else "log stderr all;",
        "protocol device { scan time 1; }",
        "protocol kernel {",
        "  scan time 1;",
        "  ipv4 { import none; export where source = RTS_OSPF; };",
        "}",
        "protocol ospf v2 tessera {",
        "  tick 1;",
        "  ipv4 { import all; export none; };",
        "  area 0 {",
        f'    interface "{interface}" {{ type {kind}; hello {hello}; wait {wait}; dead {dead}; }};',
    ]
    if stub is not None:
        lines.append(f'    interface "{stub}" {{ stub yes; }};')
    lines += ["  };", "}", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class OspfNeighbor:
    router_id: str
    priority: int
    state: str        # e.g. "Full/DR", "Full/PtP", "Init/Other"
    dead_time: str
    interface: str
    address: str

    @property
    def full(self) -> bool:
        return self.state.startswith("Full/")


_NEIGHBOR = re.compile(r"^\s*(\d+\.\d+\.\d+\.\d+)\s+(\d+)\s+(\S+/\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$")


def parse_ospf_neighbors(text: str) -> list[OspfNeighbor]:
    """The rows of ``birdc show ospf neighbors`` (router id, pri, state, dead time, interface,
    router IP); header and protocol lines are skipped."""
    out = []
    for line in text.splitlines():
        m = _NEIGHBOR.match(line)
        if m:
            rid, pri, state, dtime, ifname, addr = m.groups()
            out.append(OspfNeighbor(rid, int(pri), state, dtime, ifname, addr))
    return out


@dataclass(frozen=True)
class Route:
    dst: str
    gateway: str | None
    dev: str
    protocol: str


def parse_ip_routes(text: str) -> list[Route]:
    """``ip -j route`` output as `Route` rows (dst "default" kept as is)."""
    try:
        rows = json.loads(text or "[]")
    except json.JSONDecodeError as exc:
        raise ClientError(f"ip -j route: not JSON ({exc})") from None
    return [Route(r["dst"], r.get("gateway"), r.get("dev", ""), str(r.get("protocol", ""))) for r in rows]


# ---------------------------------------------------------------- iperf3 (pure parts)

@dataclass(frozen=True)
class IperfResult:
    gbits: float            # received by the server, Gbit/s
    bytes: int              # received by the server
    seconds: float
    retransmits: int | None  # sender's TCP retransmits (None for UDP)
    mss: int | None          # the data stream's MSS (TCP_MAXSEG), bytes
    mean_rtt_ms: float | None
    sent_bytes: int
    protocol: str = "TCP"
    packets: int | None = None  # UDP: datagrams the client sent
    lost: int | None = None     # UDP: of those, not received by the server
    raw: dict = field(repr=False, compare=False, default_factory=dict)


def parse_iperf3(text: str) -> IperfResult:
    """A client's ``-J`` report as `IperfResult`; `ClientError` with iperf3's message on error."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        raise ClientError(f"iperf3 did not report JSON: {text.strip()[:300]!r}") from None
    if not isinstance(doc, dict):
        raise ClientError("iperf3 report is not a JSON object")
    if doc.get("error"):
        raise ClientError(f"iperf3: {doc['error']}")
    end, start = doc.get("end") or {}, doc.get("start") or {}
    protocol = str((start.get("test_start") or {}).get("protocol", "TCP")).upper()
    tcp = protocol == "TCP"
    recv = end.get("sum_received") or end.get("sum")
    sent = end.get("sum_sent") or end.get("sum")
    if not recv or not sent:
        raise ClientError("iperf3 report has no end summary")
    streams = end.get("streams") or [{}]
    sender = streams[0].get("sender") or {}
    mss = (start.get("tcp_mss") or start.get("tcp_mss_default")) if tcp else None
    rtt = sender.get("mean_rtt")
    return IperfResult(
        gbits=recv["bits_per_second"] / 1e9, bytes=int(recv["bytes"]), seconds=float(recv["seconds"]),
        retransmits=sent.get("retransmits") if tcp else None, mss=int(mss) if mss else None,
        mean_rtt_ms=rtt / 1000 if rtt is not None else None, sent_bytes=int(sent["bytes"]), protocol=protocol,
        packets=None if tcp else int(recv.get("packets", 0)), lost=None if tcp else int(recv.get("lost_packets", 0)),
        raw=doc)


# ---------------------------------------------------------------- RTT (pure parts)

@dataclass(frozen=True)
class RttStats:
    sent: int
    answered: int
    min_ms: float | None
    avg_ms: float | None
    median_ms: float | None
    max_ms: float | None
    error: str | None = None  # the kernel's refusal to send (e.g. no route), if any

    @classmethod
    def of(cls, sent: int, rtts_ms: list[float], error: str | None = None) -> "RttStats":
        if not rtts_ms:
            return cls(sent, 0, None, None, None, None, error)
        return cls(sent, len(rtts_ms), min(rtts_ms), statistics.fmean(rtts_ms), statistics.median(rtts_ms),
                   max(rtts_ms), error)


# ---------------------------------------------------------------- I/O

def add_stub(lab: Lab, ns: str, k: int, name: str = STUB_IFNAME, peer: str = STUB_PEER) -> str:
    """Stub network ``203.0.113.{16k}/28`` behind device k: a veth pair inside ``ns`` with
    ``stub_address(k)/28`` on ``name``; returns that address. Removed with the namespace."""
    net = ipaddress.ip_network(stub_network(k))
    addr = stub_address(k)
    lab.run(ns, ["ip", "link", "add", name, "type", "veth", "peer", "name", peer])
    lab.run(ns, ["ip", "addr", "add", f"{addr}/{net.prefixlen}", "dev", name])
    lab.set_link(ns, peer, True)
    lab.set_link(ns, name, True)
    return addr


def stand_in_segment(lab: Lab, namespaces: list[tuple[str, int]], ifname: str = TUNNEL_IFNAME,
                     mtu: int = TUNNEL_MTU, short: str = "seg") -> str:
    """A plain stand-in for the agents' tunnel: a bridge in a namespace of its own and one veth
    per (namespace, k) named ``ifname`` there, with MTU ``mtu`` and ``tunnel_ipv4(k)/24``.
    Returns the bridge's namespace. For developing and checking the drivers without agents."""
    seg = lab.add_ns(short)
    lab.add_bridge(seg, "br0")
    for ns, k in namespaces:
        port = f"s{k}"
        lab.add_veth(seg, port, ns, ifname, up=False)
        for where, link in ((seg, port), (ns, ifname)):
            lab.run(where, ["ip", "link", "set", link, "mtu", str(mtu)])
        lab.enslave(seg, port)
        lab.add_addr(ns, ifname, f"{tunnel_ipv4(k)}/24")
        lab.set_link(seg, port, True)
        lab.set_link(ns, ifname, True)
    return seg


def ipv6_for_new_links(ns: str) -> None:
    """Let links made from now on in ``ns`` carry IPv6 (``default.disable_ipv6=0``) while the
    existing ones keep it off: `Lab.add_ns` disables IPv6 for quiet captures, and the agent's
    tessera0 gets an IPv6 address (2001:db8:100::k/64) -- refused on a link without IPv6."""
    sh(["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=0"], ns=ns)


def link_mtu(ns: str, ifname: str) -> int:
    out = sh(["ip", "-j", "link", "show", ifname], ns=ns).stdout
    return int(json.loads(out)[0]["mtu"])


def link_drops(ns: str, ifname: str) -> int:
    """rx + tx packets the kernel dropped on ``ifname`` in ``ns`` (a TAP's tx drops: its queue
    to the agent was full)."""
    stats = json.loads(sh(["ip", "-j", "-s", "link", "show", ifname], ns=ns).stdout)[0]["stats64"]
    return int(stats["rx"]["dropped"]) + int(stats["tx"]["dropped"])


def kernel_routes(ns: str, proto: str | None = None) -> list[Route]:
    """IPv4 routes of the main table in ``ns`` (only those of protocol ``proto`` if given)."""
    argv = ["ip", "-j", "-4", "route", "show"] + (["proto", proto] if proto else [])
    return parse_ip_routes(sh(argv, ns=ns).stdout.decode())


def route_get(ns: str, dst: str) -> Route | None:
    """The route the kernel in ``ns`` picks for ``dst`` (``ip route get``); None if unreachable."""
    cp = sh(["ip", "-j", "route", "get", dst], ns=ns, check=False)
    if cp.returncode:
        return None
    rows = parse_ip_routes(cp.stdout.decode())
    return rows[0] if rows else None


def wait_for(pred, timeout: float, every: float = 0.1):
    """``pred()`` once it is truthy, else its last value after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got or time.monotonic() >= deadline:
            return got
        time.sleep(every)


class Bird:
    """One bird2 routing daemon in one namespace (see the module docstring)."""

    def __init__(self, lab: Lab, ns: str, router_id: str, name: str, interface: str = TUNNEL_IFNAME,
                 stub: str | None = STUB_IFNAME, ptp: bool = False):
        self.lab, self.ns, self.router_id, self.name = lab, ns, router_id, name
        self.dir = Path(lab.workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf, self.socket, self.pidfile = self.dir / "bird.conf", self.dir / "bird.ctl", self.dir / "bird.pid"
        self.log = self.dir / "bird.log"
        self.config = bird_config(router_id, interface, stub, ptp, str(self.log))
        self.proc: Proc | None = None

    def start(self, timeout: float = 10) -> Proc:
        """Write and check the config, start bird, wait until birdc answers on its socket."""
        if self.proc is not None and self.proc.alive():
            raise ClientError(f"{self.name}: bird already runs (pid {self.proc.pid})")
        self.conf.write_text(self.config)
        cp = sh(["bird", "-p", "-c", str(self.conf)], check=False)
        if cp.returncode:
            raise ClientError(f"{self.name}: bird refused its config {self.conf}: "
                              f"{(cp.stderr or cp.stdout).decode(errors='replace').strip()}")
        for stale in (self.socket, self.pidfile):
            if stale.exists():
                stale.unlink()
        self.proc = self.lab.spawn(self.name, self.ns, ["bird", "-f", "-c", str(self.conf), "-s", str(self.socket),
                                                        "-P", str(self.pidfile)])
        deadline = time.monotonic() + timeout
        while True:
            if not self.proc.alive():
                raise ClientError(f"{self.name}: bird exited with {self.proc.popen.returncode}; "
                                  f"see {self.proc.log_path} and {self.log}")
            if self.socket.exists() and self.birdc("show", "status", check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise ClientError(f"{self.name}: bird's socket {self.socket} did not answer in {timeout} s")
            time.sleep(0.05)
        pid = int(self.pidfile.read_text().split()[0]) if self.pidfile.exists() else None
        if pid != self.proc.pid:  # -f: the lab's process is bird itself
            raise ClientError(f"{self.name}: bird's pidfile says {pid}, the lab started {self.proc.pid}")
        return self.proc

    def stop(self) -> None:
        """End bird by its PID (SIGTERM: it removes the routes it installed)."""
        if self.proc is not None:
            self.lab.stop(self.proc)
            self.proc = None

    def birdc(self, *args: str, check: bool = True):
        cp = sh(["birdc", "-s", str(self.socket), *args], check=False, timeout=10)
        if check and cp.returncode:
            raise ClientError(f"{self.name}: birdc {' '.join(args)}: exit {cp.returncode}: "
                              f"{(cp.stderr or cp.stdout).decode(errors='replace').strip()}")
        return cp

    def neighbors(self) -> list[OspfNeighbor]:
        return parse_ospf_neighbors(self.birdc("show", "ospf", "neighbors").stdout.decode())

    def full(self) -> set[str]:
        """Router ids of the neighbours in state Full."""
        return {n.router_id for n in self.neighbors() if n.full}

    def routes(self) -> list[Route]:
        """Kernel routes this bird installed in its namespace."""
        return kernel_routes(self.ns, "bird")

    def wait_full(self, router_ids: set[str], timeout: float) -> bool:
        return bool(wait_for(lambda: set(router_ids) <= self.full(), timeout))

    def wait_routes(self, networks: set[str], timeout: float) -> bool:
        return bool(wait_for(lambda: set(networks) <= {r.dst for r in self.routes()}, timeout))


class Iperf3:
    """iperf3 between two namespaces: a one-shot server and a client (see the module docstring)."""

    def __init__(self, lab: Lab, server_ns: str, address: str, port: int = 5201, name: str = "iperf3"):
        self.lab, self.server_ns, self.address, self.port, self.name = lab, server_ns, address, port, name
        self.server: Proc | None = None

    def start_server(self, timeout: float = 10) -> Proc:
        """``iperf3 -s -1 -B ADDR -p PORT -J`` in the server namespace; waits until it listens."""
        self.server = self.lab.spawn(self.name, self.server_ns,
                                     ["iperf3", "-s", "-1", "-B", self.address, "-p", str(self.port), "-J"])
        deadline = time.monotonic() + timeout
        while not self._listening():
            if not self.server.alive():
                raise ClientError(f"{self.name}: iperf3 server exited: {Path(self.server.log_path).read_text()[-300:]}")
            if time.monotonic() > deadline:
                raise ClientError(f"{self.name}: iperf3 server not listening on {self.address}:{self.port}")
            time.sleep(0.05)
        return self.server

    def _listening(self) -> bool:
        out = sh(["ss", "-Hltn", f"( sport = :{self.port} )"], ns=self.server_ns, check=False).stdout.decode()
        return bool(out.strip())

    def run_client(self, client_ns: str, seconds: float = 5, udp_bitrate: str | None = None,
                   length: int | None = None, extra: tuple[str, ...] = ()) -> IperfResult:
        """Run the client from ``client_ns`` against the server (started first if not running);
        returns the client's report. The one-shot server then exits; it is stopped by PID if not."""
        if self.server is None or not self.server.alive():
            self.start_server()
        argv = ["iperf3", "-c", self.address, "-p", str(self.port), "-t", str(seconds), "-J"]
        if udp_bitrate is not None:
            argv += ["-u", "-b", udp_bitrate]
        if length is not None:
            argv += ["-l", str(length)]
        argv += list(extra)
        try:
            cp = sh(argv, ns=client_ns, check=False, timeout=seconds + 30)
            return parse_iperf3(cp.stdout.decode(errors="replace"))
        finally:
            self.stop_server()

    def stop_server(self, grace: float = 3) -> None:
        if self.server is not None:
            try:
                self.server.popen.wait(grace)  # a one-shot server ends after its test
            except subprocess.TimeoutExpired:
                pass  # still running (its client never came): stopped by PID below
            self.lab.stop(self.server)
            self.server = None


def icmp_rtts(ns: str, dst: str, count: int = 100, interval: float = 0.01, timeout: float = 1.0,
              size: int = 56) -> RttStats:
    """Echo round trips from ``ns`` to ``dst`` on a raw ICMP socket opened in ``ns``: ``count``
    requests, one at a time, ``interval`` s apart; each answered one's RTT in ms. A request the
    kernel refuses to send (no route: ENETUNREACH) counts as unanswered, its error kept."""
    from tessera.agent.link import call_in_netns
    from tessera.lab.probe import icmp_echo, parse_icmp_reply

    sock = call_in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
    ident = (os.getpid() ^ int.from_bytes(os.urandom(2), "big")) & 0xFFFF
    payload = os.urandom(size)
    rtts: list[float] = []
    error = None
    try:
        for seq in range(1, count + 1):
            t0 = time.perf_counter()
            try:
                sock.sendto(icmp_echo(ident, seq, payload), (dst, 0))
            except OSError as exc:
                error = f"{dst}: {exc.strerror or exc}"
                time.sleep(interval)
                continue
            deadline = t0 + timeout
            while (left := deadline - time.perf_counter()) > 0:
                if not select.select([sock], [], [], left)[0]:
                    break
                data = sock.recv(4096)
                if parse_icmp_reply(data) == (ident, seq):
                    rtts.append((time.perf_counter() - t0) * 1000)
                    break
            if interval:
                time.sleep(interval)
    finally:
        sock.close()
    return RttStats.of(count, rtts, error)
