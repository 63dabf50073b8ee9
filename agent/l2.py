"""Raw Ethernet transport for Tessera frames (EtherType 0x88B5, IEEE 802 local experimental).

How this works
--------------
:class:`L2Transport` is the one narrow interface the agent's protocol code sees:
``send(dst_mac, payload)``, ``recv() -> (src_mac, payload) | None``, ``fileno()`` for
``select()``, ``mac`` and ``close()``.  Two implementations:

* :class:`PacketTransport` — a plain ``AF_PACKET``/``SOCK_RAW`` socket bound to one
  interface and EtherType 0x88B5, non-blocking, with SO_RCVBUF raised via SO_RCVBUFFORCE
  (a receiver that falls behind drops silently; see :meth:`PacketTransport.stats`).  Framing
  is ``struct``-level (14-byte header), never scapy: scapy costs ~30x per frame.  Per frame
  it makes one syscall and no more: ``send`` prepends a header cached per destination,
  ``recv`` reads into one preallocated buffer with ``recv_into`` (``recvfrom`` would add an
  ``SIOCGIFNAME`` ioctl per frame to name the interface in the address), the kernel drops
  the socket's own frames (PACKET_IGNORE_OUTGOING), and source MACs are named from a cache.
* :class:`tessera.agent.ring.RingTransport` (agent/ring.py) — the same socket with mmap'ed
  PACKET_MMAP (TPACKET_V2) RX and TX rings, plus ``recv_batch`` / ``send_batch`` / ``flush``
  for a forwarding loop: no syscall per received frame, one per sent batch.
* :class:`MemoryHub` / :class:`MemoryTransport` — an in-memory segment for unit tests:
  transports attached to one hub see each other's frames (unicast to the addressed MAC,
  broadcast to all others), with a selectable pipe so the same ``select()`` loop works.

Pure helpers :func:`pack_frame` / :func:`unpack_frame` do the Ethernet header.
"""

from __future__ import annotations

import collections
import errno
import os
import socket
import struct
from typing import Protocol, runtime_checkable

from tessera.agent.link import call_in_netns

ETH_P_TESSERA = 0x88B5
ETH_HLEN = 14
BROADCAST = "ff:ff:ff:ff:ff:ff"
SO_RCVBUFFORCE = 33
PACKET_STATISTICS = 6
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23
MAX_NAMES = 1024
_SRC_TYPE = struct.Struct("!6sH")
MAX_PAYLOAD = 1500


def mac_bytes(mac: str) -> bytes:
    """``"02:00:5e:10:00:01"`` -> 6 bytes."""
    b = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(b) != 6:
        raise ValueError(f"bad MAC {mac!r}")
    return b


def mac_str(b: bytes) -> str:
    """6 bytes -> ``"02:00:5e:10:00:01"``."""
    return ":".join(f"{x:02x}" for x in b)


def pack_frame(dst: bytes, src: bytes, payload: bytes, ethertype: int = ETH_P_TESSERA) -> bytes:
    """Ethernet II frame: dst, src, EtherType, payload."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload {len(payload)} > {MAX_PAYLOAD} bytes")
    return dst + src + struct.pack("!H", ethertype) + payload


def unpack_frame(frame: bytes, ethertype: int = ETH_P_TESSERA) -> tuple[bytes, bytes, bytes] | None:
    """(dst, src, payload) of a frame of ``ethertype``; None for short or other frames."""
    if len(frame) < ETH_HLEN or struct.unpack_from("!H", frame, 12)[0] != ethertype:
        return None
    return frame[0:6], frame[6:12], frame[ETH_HLEN:]


@runtime_checkable
class L2Transport(Protocol):
    """What the agent's protocol code may do with the wire."""
    mac: str

    def send(self, dst_mac: str, payload: bytes) -> None: ...
    def recv(self) -> tuple[str, bytes] | None: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


class PacketTransport:
    """AF_PACKET socket on ``ifname`` for EtherType ``ethertype`` (default 0x88B5)."""

    def __init__(self, ifname: str, ethertype: int = ETH_P_TESSERA,
                 rcvbuf: int = 8 << 20, netns: str | None = None):
        """``netns`` (a namespace name) is for the lab; the agent lives in its namespace."""
        self.ifname, self.ethertype = ifname, ethertype

        def make() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:  # no CAP_NET_ADMIN: best effort
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.bind((ifname, ethertype))
            return s

        self.sock = call_in_netns(netns, make)
        self.sock.setblocking(False)
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            self._sees_own = False
        except OSError:  # kernel before 4.20: recv skips them by the address's packet type
            self._sees_own = True
        self._src = self.sock.getsockname()[4][:6]
        self.mac = mac_str(self._src)
        self._headers: dict[str, bytes] = {}
        self._hdr_tail = self._src + struct.pack("!H", ethertype)
        self._buf = bytearray(65536)
        self._view = memoryview(self._buf)
        self._names: dict[bytes, str] = {}

    def send(self, dst_mac: str, payload: bytes) -> None:
        """Send one frame; raises BlockingIOError if the device queue is full."""
        header = self._headers.get(dst_mac)
        if header is None:
            header = self._headers[dst_mac] = mac_bytes(dst_mac) + self._hdr_tail
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"payload {len(payload)} > {MAX_PAYLOAD} bytes")
        self.sock.send(header + payload)

    def recv(self) -> tuple[str, bytes] | None:
        """Next (src_mac, payload) or None if nothing is waiting. Own frames are skipped."""
        if self._sees_own:
            return self._recvfrom()
        recv_into, buf = self.sock.recv_into, self._buf
        while True:
            try:
                n = recv_into(buf)
            except BlockingIOError:
                return None
            except OSError as exc:  # the port set down under us: nothing waiting (carrier events follow)
                if exc.errno in (errno.ENETDOWN, errno.ENXIO):
                    return None
                raise
            if n < ETH_HLEN:
                continue
            src, ethertype = _SRC_TYPE.unpack_from(buf, 6)
            if ethertype != self.ethertype:
                continue
            name = self._names.get(src)
            if name is None:
                if len(self._names) >= MAX_NAMES:  # bounded: any frame can name a source
                    self._names.clear()
                name = self._names[src] = mac_str(src)
            return name, bytes(self._view[ETH_HLEN:n])

    def _recvfrom(self) -> tuple[str, bytes] | None:
        while True:
            try:
                frame, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno in (errno.ENETDOWN, errno.ENXIO):
                    return None
                raise
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            parts = unpack_frame(frame, self.ethertype)
            if parts is None:
                continue
            return mac_str(parts[1]), parts[2]

    def stats(self) -> tuple[int, int]:
        """(frames received, frames dropped by the kernel) since the last call."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        return struct.unpack("II", raw)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


class MemoryHub:
    """An in-memory Ethernet segment; ``attach(mac)`` gives a transport on it."""

    def __init__(self):
        self.ports: dict[str, MemoryTransport] = {}
        self.log: list[tuple[str, str, bytes]] = []   # (src, dst, payload), for tests

    def attach(self, mac: str) -> "MemoryTransport":
        t = MemoryTransport(self, mac)
        self.ports[mac] = t
        return t

    def deliver(self, src: str, dst: str, payload: bytes) -> None:
        self.log.append((src, dst, payload))
        for mac, t in self.ports.items():
            if mac != src and (dst == BROADCAST or dst == mac):
                t._push(src, payload)


def memory_pair(mac_a: str = "02:00:00:00:00:0a",
                mac_b: str = "02:00:00:00:00:0b") -> tuple["MemoryTransport", "MemoryTransport"]:
    """Two transports on one fresh hub."""
    hub = MemoryHub()
    return hub.attach(mac_a), hub.attach(mac_b)


class MemoryTransport:
    """Transport on a :class:`MemoryHub`; selectable through an internal pipe."""

    def __init__(self, hub: MemoryHub, mac: str):
        self.hub, self.mac = hub, mac
        self._q: collections.deque[tuple[str, bytes]] = collections.deque()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self.closed = False

    def _push(self, src: str, payload: bytes) -> None:
        if self.closed:
            return
        self._q.append((src, bytes(payload)))
        try:
            os.write(self._w, b"\0")
        except BlockingIOError:
            pass  # pipe full: the reader will drain the queue anyway

    def send(self, dst_mac: str, payload: bytes) -> None:
        if self.closed:
            raise OSError("transport closed")
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"payload {len(payload)} > {MAX_PAYLOAD} bytes")
        self.hub.deliver(self.mac, dst_mac, payload)

    def recv(self) -> tuple[str, bytes] | None:
        if not self._q:
            return None
        try:
            os.read(self._r, 1)
        except BlockingIOError:
            pass
        return self._q.popleft()

    def fileno(self) -> int:
        return self._r

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.hub.ports.pop(self.mac, None)
            os.close(self._r)
            os.close(self._w)
