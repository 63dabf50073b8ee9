"""Traffic probes between lab namespaces, without external tools (no ``ping`` binary needed).

How this works
--------------
Sockets are created inside a namespace with :func:`tessera.agent.link.call_in_netns` (setns in
a short-lived thread) and then used from the calling thread.  :func:`ping` sends ICMP echo
requests on a raw socket and waits for the matching reply (the kernel of the target answers
by itself).  :func:`l2_reach` sends one raw 0x88B5 frame with a random token and reports
whether the receiver saw it.  :func:`icmp_echo` / :func:`parse_icmp_reply` are the pure parts.
"""

from __future__ import annotations

import os
import secrets
import select
import socket
import struct
import time

from tessera.agent.l2 import BROADCAST, PacketTransport
from tessera.agent.link import call_in_netns


def inet_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def icmp_echo(ident: int, seq: int, payload: bytes = b"tessera-probe") -> bytes:
    """ICMP echo request (type 8) with a correct checksum."""
    head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    csum = inet_checksum(head + payload)
    return struct.pack("!BBHHH", 8, 0, csum, ident, seq) + payload


def parse_icmp_reply(packet: bytes) -> tuple[int, int] | None:
    """(ident, seq) of an echo reply inside an IPv4 packet, else None."""
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 8:
        return None
    typ, _code, _c, ident, seq = struct.unpack_from("!BBHHH", packet, ihl)
    return (ident, seq) if typ == 0 else None


def ping(ns: str, dst_ip: str, count: int = 1, timeout: float = 1.0) -> int:
    """Send ``count`` echo requests from namespace ``ns``; return how many were answered."""
    sock = call_in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                                   socket.IPPROTO_ICMP))
    ident = os.getpid() & 0xFFFF ^ secrets.randbits(16)
    answered = 0
    try:
        for seq in range(1, count + 1):
            sock.sendto(icmp_echo(ident, seq), (dst_ip, 0))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                r, _, _ = select.select([sock], [], [], left)
                if not r:
                    break
                if parse_icmp_reply(sock.recv(2048)) == (ident, seq):
                    answered += 1
                    break
    finally:
        sock.close()
    return answered


def l2_reach(src_ns: str, dst_ns: str, dst_mac: str = BROADCAST, ifname: str = "eth0",
             timeout: float = 0.5) -> bool:
    """True if one 0x88B5 frame sent from ``src_ns`` arrives in ``dst_ns``."""
    rx = PacketTransport(ifname, netns=dst_ns)
    tx = PacketTransport(ifname, netns=src_ns)
    token = b"probe-" + secrets.token_bytes(8)
    try:
        tx.send(dst_mac, token)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            select.select([rx], [], [], left)
            while (got := rx.recv()) is not None:
                if got[1][:len(token)] == token:
                    return True
        return False
    finally:
        rx.close()
        tx.close()
