"""The demo's proof that IP runs over the peer keys and that nothing of it shows on the switch.

How this works
--------------
`ping_pairs` pings every pair of devices once over their ``tessera0`` interfaces: ICMP echo
from a raw socket opened inside each device's namespace (thousands of pairs at once, each reply
checked, from one process; the packets are the ones ``ping -p PATTERN`` sends: an echo request
whose payload is the pattern repeated). For pair (a, b), a < b, device a sends one echo to b's tunnel address
and, when b answers, a second one at once: the first reply's round trip includes resolving b's
MAC (an ARP broadcast over the tunnel, one encrypted copy per peer), the second is the tunnel's
plain RTT. Pairs go in batches (`batch` pairs in flight, each batch waiting at most `timeout` s
for its replies); a pair unanswered after its batch is tried once more at the end, and the
report keeps the two counts apart. A reply counts only if it comes from b's address with a's
identifier, the pair's sequence number and the very payload sent (so the pattern went through
the tunnel in clear between the two kernels).

After each batch, the neighbour entries its pairs made (a's for b, and b's for a, learnt from
a's ARP request) are deleted again (RTM_DELNEIGH on a netlink socket in each namespace): the
kernel keeps one ARP table for all namespaces, full at ``gc_thresh3`` = 1024 entries host-wide,
and pinging every pair of 50 devices would need 2450 ("neighbor table overflow", echoes never
sent) -- and would starve every other namespace on the machine of ARP while it lasted.

`check_switch_pcap` reads the switch's pcap (Linux cooked v2: EtherType at bytes 0-1, the
interface index at 4-7, the frame from byte 20) and says whether any inner traffic is visible:

- on the device ports, every frame is EAPOL (0x888E), a Tessera frame (0x88B5) or the agent's
  own management traffic: IPv4 between the device's address and a RADIUS server (RadSec) and
  ARP for it. Any other EtherType there (IPv6 included: the lab's namespaces run without it),
  any IPv4 not to or from a server, and any ICMP echo is a violation;
- on every interface, no IPv4 packet and no ARP naming an address of the tunnel's networks
  (198.51.100.0/24, 2001:db8:100::/64 for IPv6 frames);
- in the whole file, the ping's 16-byte pattern occurs nowhere, and neither does any device's
  tessera0 MAC (the inner Ethernet header's addresses, also inside ARP).

The pcap check is pure (a file in, a verdict out) for unit tests without root.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import statistics
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

from tessera.lab.clients import tunnel_ipv4
from tessera.lab.probe import inet_checksum

TUNNEL_V4 = ipaddress.ip_network("198.51.100.0/24")
TUNNEL_V6 = ipaddress.ip_network("2001:db8:100::/64")
EAPOL, TESSERA, IPV4, ARP, IPV6 = 0x888E, 0x88B5, 0x0800, 0x0806, 0x86DD
SLL2_LEN = 20
PAYLOAD_LEN = 56  # ping's default: 64-byte ICMP messages


tunnel_address = tunnel_ipv4  # device k's tessera0 IPv4 address in the lab (lab/clients.py has the plan)


def pattern_payload(pattern: bytes, size: int = PAYLOAD_LEN) -> bytes:
    """An echo payload like ``ping -p``'s: the pattern repeated to ``size`` bytes."""
    if not 1 <= len(pattern) <= 16:
        raise ValueError(f"a ping pattern has 1 to 16 bytes, not {len(pattern)}")
    return (pattern * (size // len(pattern) + 1))[:size]


def echo_request(ident: int, seq: int, payload: bytes) -> bytes:
    head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, inet_checksum(head + payload), ident, seq) + payload


def parse_echo_reply(packet: bytes) -> tuple[str, int, int, bytes] | None:
    """(source address, ident, seq, payload) of an IPv4 echo reply, else None."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 8 or packet[9] != socket.IPPROTO_ICMP:
        return None
    typ, _code, _c, ident, seq = struct.unpack_from("!BBHHH", packet, ihl)
    if typ != 0:
        return None
    return socket.inet_ntoa(packet[12:16]), ident, seq, packet[ihl + 8:]


@dataclass
class PingReport:
    pairs: int
    answered_first: int = 0    # pairs whose first echo was answered in the first pass
    answered: int = 0          # after the second pass
    cold_ms: list[float] = field(default_factory=list)   # a pair's first echo (with its ARP over the tunnel)
    warm_ms: list[float] = field(default_factory=list)   # a pair's second echo
    bad_replies: int = 0       # echo replies with our ident and seq whose payload differs from what was sent
    unanswered: list[tuple[str, str]] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)     # the kernel's refusals to send, by message
    seconds: float = 0.0
    batch: int = 0

    @property
    def ok(self) -> bool:
        return self.pairs > 0 and self.answered == self.pairs and not self.bad_replies

    def summary(self) -> str:
        def med(xs):
            return f"{statistics.median(xs):.2f}" if xs else "-"
        retry = "" if self.answered == self.answered_first else f", {self.answered - self.answered_first} more on a retry"
        line = (f"{self.answered} of {self.pairs} pairs answered ({self.answered_first} at the first try{retry}); "
                f"RTT median {med(self.warm_ms)} ms, max {max(self.warm_ms, default=0):.2f} ms "
                f"(a pair's first echo, resolving the peer's MAC over the tunnel first: median {med(self.cold_ms)} ms); "
                f"{self.batch} pairs in flight, {self.seconds:.1f} s")
        if self.bad_replies:
            line += f"; {self.bad_replies} replies with a changed payload"
        if self.errors:
            line += "; not sent: " + ", ".join(f"{k} ×{v}" for k, v in self.errors.items())
        return line


RTM_DELNEIGH, NLM_F_REQUEST, NDA_DST = 29, 1, 1


class Neighbours:
    """One namespace's IPv4 neighbour table on one interface, for deleting entries by address."""

    def __init__(self, ns: str | None, ifname: str):
        from tessera.agent.link import call_in_netns

        def open_():
            return (socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE),
                    socket.if_nametoindex(ifname))

        self.sock, self.ifindex = call_in_netns(ns, open_)
        self.seq = 0

    def delete(self, addresses: list[str]) -> None:
        """Drop the entries for ``addresses`` (no answer awaited; an absent one is no error)."""
        for addr in addresses:
            self.seq += 1
            nd = struct.pack("=BBHiHBB", socket.AF_INET, 0, 0, self.ifindex, 0, 0, 0)
            attr = struct.pack("=HH", 8, NDA_DST) + socket.inet_aton(addr)
            body = nd + attr
            msg = struct.pack("=IHHII", 16 + len(body), RTM_DELNEIGH, NLM_F_REQUEST, self.seq, 0) + body
            try:
                self.sock.send(msg)
            except OSError:
                pass
        while True:  # errors (ENOENT) come back even unasked: do not let them pile up
            try:
                self.sock.recv(65536)
            except OSError:
                break

    def close(self) -> None:
        self.sock.close()


def _raw_socket(ns: str | None) -> socket.socket:
    from tessera.agent.link import call_in_netns

    s = call_in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.setblocking(False)
    return s


def ping_pairs(hosts: list[tuple[str, str | None, str]], pattern: bytes, batch: int = 64,
               timeout: float = 2.0, ifname: str = "tessera0") -> PingReport:
    """Ping every pair of ``hosts`` (name, namespace, IPv4 address on ``ifname``) once; see the
    module docstring."""
    payload = pattern_payload(pattern)
    pairs = [(i, j) for i in range(len(hosts)) for j in range(i + 1, len(hosts))]
    rep = PingReport(len(pairs), batch=batch)
    socks = [_raw_socket(ns) for _name, ns, _addr in hosts]
    neigh = [Neighbours(ns, ifname) for _name, ns, _addr in hosts]
    idents = [int.from_bytes(os.urandom(2), "big") for _ in hosts]
    t_start = time.monotonic()
    try:
        left = pairs
        for attempt in (1, 2):
            missed = []
            for k in range(0, len(left), batch):
                some = left[k:k + batch]
                missed += _batch(some, hosts, socks, idents, payload, timeout, rep)
                forget: dict[int, list[str]] = {}
                for i, j in some:
                    forget.setdefault(i, []).append(hosts[j][2])
                    forget.setdefault(j, []).append(hosts[i][2])
                for i, addrs in forget.items():
                    neigh[i].delete(addrs)
            if attempt == 1:
                rep.answered_first = len(pairs) - len(missed)
            left = missed
            if not left:
                break
        rep.answered = len(pairs) - len(left)
        rep.unanswered = [(hosts[i][0], hosts[j][0]) for i, j in left]
    finally:
        for s in [*socks, *neigh]:
            s.close()
    rep.seconds = time.monotonic() - t_start
    return rep


def _batch(pairs, hosts, socks, idents, payload, timeout, rep: PingReport) -> list[tuple[int, int]]:
    """One batch: the first echo of every pair, the second on the first's reply; returns the
    pairs whose first echo went unanswered."""
    sent: dict[tuple[int, int], float] = {}  # (source index, seq) -> when
    first_ok: set[tuple[int, int]] = set()
    done: set[tuple[int, int]] = set()

    def send(i: int, j: int, second: bool) -> None:
        seq = (j + 1) | (0x8000 if second else 0)
        try:
            socks[i].sendto(echo_request(idents[i], seq, payload), (hosts[j][2], 0))
            sent[(i, seq)] = time.perf_counter()
        except OSError as exc:
            rep.errors[f"{exc.strerror or exc}"] += 1
            if second:
                done.add((i, j))

    for i, j in pairs:
        send(i, j, False)
    by_fd = {socks[i].fileno(): i for i, _j in pairs}
    deadline = time.monotonic() + timeout
    while len(done) < len(pairs) and (wait := deadline - time.monotonic()) > 0:
        for fd in select.select(list(by_fd), [], [], wait)[0]:
            i = by_fd[fd]
            while True:
                try:
                    packet = socks[i].recv(4096)
                except BlockingIOError:
                    break
                now = time.perf_counter()
                got = parse_echo_reply(packet)
                if got is None or got[1] != idents[i] or (i, got[2]) not in sent:
                    continue  # not ours: an echo request to this device, another pinger's reply
                src, _ident, seq, data = got
                j = (seq & 0x7FFF) - 1
                if not 0 <= j < len(hosts) or src != hosts[j][2]:
                    continue
                if data != payload:
                    rep.bad_replies += 1
                    continue
                rtt = (now - sent.pop((i, seq))) * 1000
                if seq & 0x8000:
                    rep.warm_ms.append(rtt)
                    done.add((i, j))
                else:
                    rep.cold_ms.append(rtt)
                    first_ok.add((i, j))
                    send(i, j, True)
    return [p for p in pairs if p not in first_ok]


# ---------------------------------------------------------------- the switch's pcap (pure)

@dataclass
class PcapVerdict:
    frames: int = 0
    device_port_frames: int = 0
    kinds: Counter = field(default_factory=Counter)       # on the device ports
    violations: Counter = field(default_factory=Counter)  # reason -> frames
    examples: list[str] = field(default_factory=list)     # the first few violations, one line each
    pattern_hits: int = 0
    mac_hits: int = 0

    @property
    def ok(self) -> bool:
        return self.frames > 0 and not self.violations and not self.pattern_hits and not self.mac_hits

    def summary(self) -> list[str]:
        kinds = ", ".join(f"{k} {v}" for k, v in self.kinds.most_common())
        lines = [f"{self.frames} frames, {self.device_port_frames} on the device ports: {kinds}"]
        if self.violations:
            lines.append("VISIBLE: " + ", ".join(f"{k} ×{v}" for k, v in self.violations.most_common()))
            lines += [f"  e.g. {e}" for e in self.examples]
        else:
            lines.append(f"no IPv4, IPv6 or ARP of the tunnel's addresses ({TUNNEL_V4}, {TUNNEL_V6}) on any "
                         "interface, no ICMP echo, nothing else on a device port")
        lines.append(f"the ping's pattern: {self.pattern_hits} times in the pcap; the tessera0 MACs: "
                     f"{self.mac_hits} frames")
        return lines


def _in_tunnel(raw: bytes) -> bool:
    try:
        addr = ipaddress.ip_address(raw)
    except ValueError:
        return False
    return addr in (TUNNEL_V4 if addr.version == 4 else TUNNEL_V6)


def classify(eth_type: int, frame: bytes, device_port: bool, servers: set[str]) -> tuple[str | None, str | None]:
    """(kind, violation) of one frame's payload after its EtherType (one of the two is None)."""
    if eth_type == EAPOL:
        return "EAPOL", None
    if eth_type == TESSERA:
        return "Tessera", None
    if eth_type == IPV4:
        if len(frame) < 20 or frame[0] >> 4 != 4:
            return None, "IPv4 too short to read"
        src, dst = frame[12:16], frame[16:20]
        if _in_tunnel(src) or _in_tunnel(dst):
            return None, "IPv4 of the tunnel"
        ihl = (frame[0] & 0x0F) * 4
        if frame[9] == socket.IPPROTO_ICMP and len(frame) > ihl and frame[ihl] in (0, 8):
            return None, "ICMP echo"
        if device_port and socket.inet_ntoa(src) not in servers and socket.inet_ntoa(dst) not in servers:
            return None, "IPv4 not to or from a RADIUS server"
        return "IPv4 agent ↔ RADIUS server", None
    if eth_type == ARP:
        if len(frame) < 28:
            return None, "ARP too short to read"
        if _in_tunnel(frame[14:18]) or _in_tunnel(frame[24:28]):
            return None, "ARP of the tunnel"
        return "ARP", None
    if eth_type == IPV6:
        if len(frame) >= 40 and (_in_tunnel(frame[8:24]) or _in_tunnel(frame[24:40])):
            return None, "IPv6 of the tunnel"
        if device_port:
            return None, "IPv6 on a device port"
        return "IPv6", None
    if device_port:
        return None, f"EtherType 0x{eth_type:04x} on a device port"
    return f"0x{eth_type:04x}", None


def check_switch_pcap(path, device_ifindexes: set[int], servers: set[str], pattern: bytes,
                      tap_macs: list[bytes], examples: int = 5) -> PcapVerdict:
    """See the module docstring: what of the tunnel's traffic a capture of the switch shows."""
    from scapy.utils import RawPcapReader

    v = PcapVerdict()
    with open(path, "rb") as f:
        v.pattern_hits = f.read().count(pattern) if pattern else 0
    macs = [m for m in tap_macs if len(m) == 6]
    for data, _meta in RawPcapReader(str(path)):
        v.frames += 1
        if len(data) < SLL2_LEN:
            v.violations["frame too short for its cooked header"] += 1
            if len(v.examples) < examples:
                v.examples.append(f"frame {v.frames}: {len(data)} bytes: {data.hex()}")
            continue
        eth_type = int.from_bytes(data[0:2], "big")
        ifindex = int.from_bytes(data[4:8], "big")
        on_port = ifindex in device_ifindexes
        v.device_port_frames += on_port
        kind, bad = classify(eth_type, data[SLL2_LEN:], on_port, servers)
        if any(m in data for m in macs):
            v.mac_hits += 1
        if bad is not None:
            v.violations[bad] += 1
            if len(v.examples) < examples:
                v.examples.append(f"frame {v.frames}, ifindex {ifindex}: {bad}: {data[:48].hex()}")
        elif on_port:
            v.kinds[kind] += 1
    return v
