"""PACKET_MMAP transport for Tessera frames: AF_PACKET with TPACKET_V2 RX and TX rings.

How this works
--------------
:class:`RingTransport` has the interface of :class:`~tessera.agent.l2.PacketTransport`
(``send``, ``recv``, ``fileno``, ``mac``, ``close``, ``stats``) plus batch methods for a
forwarding loop: ``recv_batch(n)`` drains up to ``n`` frames from the RX ring with no system
call per frame (the kernel has already copied them there; one ``poll``/``select`` wakes the
loop), and ``send_batch(frames)`` / ``queue(...)`` + ``flush()`` write frames into the TX ring
and hand them all to the kernel with one ``send()`` (a "kick") per batch.

The socket is ``AF_PACKET``/``SOCK_RAW`` bound to one interface and EtherType 0x88B5 with
``PACKET_VERSION = TPACKET_V2``, ``PACKET_IGNORE_OUTGOING`` (its own frames never enter the RX
ring), ``PACKET_RX_RING`` and ``PACKET_TX_RING`` of the same geometry, and one ``mmap`` of both
(RX ring first, TX ring right after it: the kernel maps them in that order).

Ring layout (kernel ``Documentation/networking/packet_mmap.rst``, ``include/uapi/linux/
if_packet.h``, ``net/packet/af_packet.c``; all fields host byte order). A ring is
``block_nr`` blocks of ``block_size`` bytes (a multiple of the page size); this module requires
``block_size`` to be a multiple of ``frame_size`` so that frame *i* of a ring starts at
``i * frame_size``. Each frame starts with ``struct tpacket2_hdr`` (32 bytes, TPACKET_ALIGN 16)::

    off  size  field
      0   u32  tp_status      who owns the frame (below)
      4   u32  tp_len         RX: length on the wire; TX: length to send (set by us)
      8   u32  tp_snaplen     RX: bytes stored in the frame (< tp_len: truncated)
     12   u16  tp_mac         RX: offset of the Ethernet header from the frame start
     14   u16  tp_net         RX: offset of the network header
     16   u32  tp_sec, 20 u32 tp_nsec, 24 u16 tp_vlan_tci, 26 u16 tp_vlan_tpid, 28 u8[4] pad
     32        struct sockaddr_ll (RX): family u16, protocol u16 (BE), ifindex i32, hatype u16,
               pkttype u8 (at 42; 4 = PACKET_OUTGOING), halen u8, addr[8]

``TPACKET2_HDRLEN`` = 32 + sizeof(sockaddr_ll) 20 = 52 (``getsockopt(PACKET_HDRLEN)``).
RX: the kernel puts the Ethernet header at ``tp_mac`` = TPACKET_ALIGN(52 + 16) - 14 = 66 for
an Ethernet device, so a frame of ``frame_size`` holds ``frame_size - 66`` bytes of frame
(2048 -> 1982 >= 1514); a longer frame arrives with ``tp_snaplen < tp_len`` and is dropped
here and counted (``rx_truncated``). TX (no PACKET_TX_HAS_OFF): the frame to send is at
offset ``TPACKET2_HDRLEN - sizeof(sockaddr_ll)`` = 32, its length in ``tp_len``.

``tp_status`` hands frames over. RX: ``TP_STATUS_KERNEL`` (0) the kernel may fill it;
``TP_STATUS_USER`` (bit 0) it holds a frame for us (other bits: COPY 2, LOSING 4, CSUM...);
we read it, then write 0 to give it back, strictly in ring order (``poll`` looks at the frame
before the kernel's head). TX: ``TP_STATUS_AVAILABLE`` (0) free; we write the frame and
``tp_len``, then ``TP_STATUS_SEND_REQUEST`` (1); a kick (``send`` of zero bytes, non-blocking)
makes the kernel send every SEND_REQUEST frame from its head on, marking each
``TP_STATUS_SENDING`` (2) until the skb is freed, then AVAILABLE again. A frame the kernel
refuses (e.g. longer than the MTU) is marked ``TP_STATUS_WRONG_FORMAT`` (4) and the kick fails
with EMSGSIZE/EINVAL; the kernel's head stops there, so :func:`repair_wrong_format` drops that
frame (counted) and moves the frames queued behind it one slot back. A frame the device
drops on the kick (ENOBUFS) is re-marked SEND_REQUEST by the kernel and sent by the next kick.
A full TX ring (our next slot not AVAILABLE) is back-pressure: kick, wait up to ``tx_wait``
seconds for POLLOUT, retry; frames still without a slot then are dropped and counted
(``tx_full_drops``), never overwritten.

Why TPACKET_V2 and not V3: V3 hands over whole blocks and wakes the reader when a block is
full or its retire timer (whole milliseconds) fires, so at low rates a frame waits up to that
timer -- against the tunnel's added-RTT target of 0.5 ms; V2 wakes per frame while the reader
sleeps and costs nothing extra while it is busy (frames pile up, one drain takes them all).
PACKET_QDISC_BYPASS is an option, off by default: on veth (no qdisc) it measured no gain
(bench/ring.py), and it hides the frames from local taps (tcpdump on the sender's interface).

One thread uses a transport (the agent's select loop): the ring indexes are not locked.

Memory ordering: status words are read and written as plain 32-bit loads/stores through a
``memoryview``; on x86-64 (TSO) our loads of a frame's data after its status, and the
kernel's view of our data stores before the status store, are ordered as the protocol needs.
A weakly ordered CPU would need barriers this module does not have.

The per-ring logic (:func:`drain_rx`, :func:`fill_tx`, :func:`repair_wrong_format`) works on
any writable buffer with the layout above, so unit tests drive it with struct-built frames.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import select
import socket
import struct
import time
from dataclasses import dataclass, fields

from tessera.agent.l2 import (ETH_HLEN, ETH_P_TESSERA, MAX_NAMES, MAX_PAYLOAD, PACKET_IGNORE_OUTGOING,
                              PACKET_STATISTICS, SO_RCVBUFFORCE, SOL_PACKET, call_in_netns, mac_bytes, mac_str)

# include/uapi/linux/if_packet.h
PACKET_RX_RING = 5
PACKET_VERSION = 10
PACKET_HDRLEN = 11
PACKET_TX_RING = 13
PACKET_QDISC_BYPASS = 20
TPACKET_V2 = 1
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1 << 0
TP_STATUS_COPY = 1 << 1
TP_STATUS_LOSING = 1 << 2
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1 << 0
TP_STATUS_SENDING = 1 << 1
TP_STATUS_WRONG_FORMAT = 1 << 2
TX_OWNED = TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING | TP_STATUS_WRONG_FORMAT
PACKET_OUTGOING = 4
SO_SNDBUFFORCE = 32
SIOCGIFMTU = 0x8921

TPACKET_ALIGNMENT = 16
TPACKET2_HDR = struct.Struct("=IIIHHIIHH4x")    # struct tpacket2_hdr, 32 bytes
SOCKADDR_LL = struct.Struct("=HHiHBB8s")         # struct sockaddr_ll, 20 bytes
TPACKET2_HDRLEN = TPACKET2_HDR.size + SOCKADDR_LL.size   # 52
TX_DATA = TPACKET2_HDRLEN - SOCKADDR_LL.size     # 32: where a TX frame's bytes start
SLL_PKTTYPE = TPACKET2_HDR.size + 10             # 42: sockaddr_ll.sll_pkttype in an RX frame
_RX_HDR = struct.Struct("=IIIH")                 # tp_status, tp_len, tp_snaplen, tp_mac
_SRC_TYPE = struct.Struct("!6sH")
_REQ = struct.Struct("=IIII")                    # struct tpacket_req


def tpacket_align(x: int) -> int:
    return (x + TPACKET_ALIGNMENT - 1) & ~(TPACKET_ALIGNMENT - 1)


def rx_mac_offset(mac_len: int = ETH_HLEN) -> int:
    """Where the kernel puts the link header in an RX frame (SOCK_RAW, no reserve, no vnet)."""
    return tpacket_align(TPACKET2_HDRLEN + max(mac_len, 16)) - mac_len


@dataclass
class RingCounters:
    """Frames this transport dropped or had to retry, by reason (never silently)."""
    rx_truncated: int = 0     # longer than a ring frame holds (tp_snaplen < tp_len)
    rx_malformed: int = 0     # header offsets outside the frame, or shorter than Ethernet
    rx_other_type: int = 0    # not our EtherType
    rx_own: int = 0           # our own outgoing frames (kernels without IGNORE_OUTGOING)
    tx_full_drops: int = 0    # no free TX slot within tx_wait: not queued
    tx_oversize: int = 0      # payload above MAX_PAYLOAD or the MTU (send_batch skips them)
    tx_wrong_format: int = 0  # refused by the kernel (TP_STATUS_WRONG_FORMAT), dropped
    tx_again: int = 0         # kick found the socket's send buffer full (frames stay queued)
    tx_nobufs: int = 0        # device dropped on a kick; the kernel re-queued the frame
    tx_errors: int = 0        # kicks that failed otherwise (e.g. ENETDOWN); frames stay queued
    tx_kicks: int = 0         # send() calls made to hand queued frames to the kernel

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def drain_rx(ring, words: memoryview, index: int, nframes: int, frame_size: int, max_frames: int,
             ethertype: int, skip_outgoing: bool, names: dict, counters: RingCounters,
             base: int = 0) -> tuple[list[tuple[str, bytes]], int]:
    """Take up to ``max_frames`` frames from an RX ring at ``ring[base:]``, from slot ``index`` on.

    ``ring`` is the buffer (an mmap: slices are bytes), ``words`` the same bytes as native u32.
    Every slot taken is handed back (TP_STATUS_KERNEL) after it is read, in order; frames that
    are truncated, malformed, of another EtherType or (``skip_outgoing``) our own are dropped
    and counted. Returns ``([(src_mac, payload), ...], next index)``.
    """
    out: list[tuple[str, bytes]] = []
    append = out.append
    unpack_hdr, unpack_src = _RX_HDR.unpack_from, _SRC_TYPE.unpack_from
    got = 0
    while got < max_frames:
        off = base + index * frame_size
        w = off >> 2
        status = words[w]
        if not status & TP_STATUS_USER:
            break
        _, tp_len, snaplen, mac = unpack_hdr(ring, off)
        if snaplen != tp_len or status & TP_STATUS_COPY:
            counters.rx_truncated += 1
        elif snaplen < ETH_HLEN or mac < TPACKET2_HDRLEN or mac + snaplen > frame_size:
            counters.rx_malformed += 1
        else:
            start = off + mac
            src, etype = unpack_src(ring, start + 6)
            if etype != ethertype:
                counters.rx_other_type += 1
            elif skip_outgoing and ring[off + SLL_PKTTYPE] == PACKET_OUTGOING:
                counters.rx_own += 1
            else:
                name = names.get(src)
                if name is None:
                    if len(names) >= MAX_NAMES:  # bounded: any frame can name a source
                        names.clear()
                    name = names[src] = mac_str(src)
                append((name, ring[start + ETH_HLEN:start + snaplen]))
                got += 1
        words[w] = TP_STATUS_KERNEL
        index += 1
        if index == nframes:
            index = 0
    return out, index


def fill_tx(ring, words: memoryview, index: int, nframes: int, frame_size: int, base: int,
            frames, start: int, headers: dict, src_tail: bytes, max_payload: int,
            counters: RingCounters) -> tuple[int, int]:
    """Write ``frames[start:]`` (``(dst_mac, payload)``) into TX slots from ``index`` on.

    Stops at the first slot the kernel still owns (SEND_REQUEST, SENDING, WRONG_FORMAT).
    A payload above ``max_payload`` is skipped and counted (``tx_oversize``). ``headers``
    caches the 14-byte Ethernet header per destination (``src_tail`` = our MAC + EtherType).
    Returns ``(position in frames of the first frame not written, next index)``.
    """
    end = len(frames)
    pos = start
    while pos < end:
        off = base + index * frame_size
        w = off >> 2
        if words[w] & TX_OWNED:
            break
        dst, payload = frames[pos]
        pos += 1
        n = len(payload)
        if n > max_payload:
            counters.tx_oversize += 1
            continue
        header = headers.get(dst)
        if header is None:
            header = headers[dst] = mac_bytes(dst) + src_tail
        data = off + TX_DATA
        ring[data:data + ETH_HLEN] = header
        ring[data + ETH_HLEN:data + ETH_HLEN + n] = payload
        words[w + 1] = ETH_HLEN + n          # tp_len
        words[w] = TP_STATUS_SEND_REQUEST    # last: the frame is the kernel's from here
        index += 1
        if index == nframes:
            index = 0
    return pos, index


def repair_wrong_format(ring, words: memoryview, index: int, nframes: int, frame_size: int,
                        base: int) -> tuple[int, int]:
    """Unjam a TX ring whose kernel head stopped at a TP_STATUS_WRONG_FORMAT frame.

    ``index`` is our next free slot. The frames queued behind the refused one (SEND_REQUEST,
    contiguous up to ``index``) move one slot back, over it, in order; the last of them is freed.
    Returns ``(new index, frames dropped)`` -- (index, 0) when no slot is WRONG_FORMAT.
    Only valid while no kick runs (the kernel touches SEND_REQUEST frames only inside one).
    """
    def word(i: int) -> int:
        return (base + i * frame_size) >> 2

    k, behind = (index - 1) % nframes, 0
    while behind < nframes and words[word(k)] & TX_OWNED == TP_STATUS_SEND_REQUEST:
        k, behind = (k - 1) % nframes, behind + 1
    if behind >= nframes or words[word(k)] & TX_OWNED != TP_STATUS_WRONG_FORMAT:
        return index, 0
    for _ in range(behind):
        src = (k + 1) % nframes
        n = words[word(src) + 1]
        d, s = base + k * frame_size + TX_DATA, base + src * frame_size + TX_DATA
        ring[d:d + n] = ring[s:s + n]
        words[word(k) + 1] = n
        words[word(k)] = TP_STATUS_SEND_REQUEST
        k = src
    words[word(k)] = TP_STATUS_AVAILABLE
    return k, 1


class RingTransport:
    """AF_PACKET socket on ``ifname`` for ``ethertype`` with mmap'ed TPACKET_V2 RX and TX rings.

    ``frame_size`` (multiple of 16, >= 2048 holds a 1514-byte frame), ``rx_frames`` /
    ``tx_frames`` slots per ring (defaults 4096 and 512: 8 MiB + 1 MiB of kernel memory;
    the RX ring about what PacketTransport's 8 MiB socket buffer holds),
    ``block_size`` (a multiple of the page size and of ``frame_size``). ``tx_wait``: how long ``send_batch`` /
    ``send`` wait for a free TX slot before dropping (counted) / raising BlockingIOError.
    ``qdisc_bypass`` sets PACKET_QDISC_BYPASS (frames skip the qdisc and local taps).
    """

    def __init__(self, ifname: str, ethertype: int = ETH_P_TESSERA, netns: str | None = None,
                 frame_size: int = 2048, rx_frames: int = 4096, tx_frames: int = 512,
                 block_size: int = 1 << 16, tx_wait: float = 0.05, qdisc_bypass: bool = False,
                 sndbuf: int = 8 << 20):
        if frame_size % TPACKET_ALIGNMENT or frame_size < TPACKET2_HDRLEN + ETH_HLEN:
            raise ValueError(f"frame_size {frame_size}: a multiple of {TPACKET_ALIGNMENT}, "
                             f"at least {TPACKET2_HDRLEN + ETH_HLEN}")
        if block_size % mmap.PAGESIZE or block_size % frame_size:
            raise ValueError(f"block_size {block_size}: a multiple of the page size and of frame_size")
        per_block = block_size // frame_size
        for name, n in (("rx_frames", rx_frames), ("tx_frames", tx_frames)):
            if n <= 0 or n % per_block:
                raise ValueError(f"{name} {n}: a positive multiple of {per_block} (frames per block)")
        self.ifname, self.ethertype = ifname, ethertype
        self.frame_size, self.rx_frames, self.tx_frames = frame_size, rx_frames, tx_frames
        self.tx_wait = tx_wait
        self.counters = RingCounters()
        self._mm = self._rx_words = None
        self.closed = False

        def make() -> socket.socket:
            # protocol 0: no frame is taken before bind(), which comes after the rings exist
            # (one queued outside the rings would keep poll() readable for ever)
            return socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)

        self.sock = call_in_netns(netns, make)
        try:
            s = self.sock
            s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            try:
                s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
                self._sees_own = False
            except OSError:  # before 4.20: skip by sll_pkttype in drain_rx
                self._sees_own = True
            if qdisc_bypass:
                s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            try:  # in-flight TX frames count against the send buffer: let the ring be the limit
                s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, sndbuf)
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 20)
            except PermissionError:
                pass
            s.setsockopt(SOL_PACKET, PACKET_RX_RING,
                         _REQ.pack(block_size, rx_frames // per_block, frame_size, rx_frames))
            s.setsockopt(SOL_PACKET, PACKET_TX_RING,
                         _REQ.pack(block_size, tx_frames // per_block, frame_size, tx_frames))
            self._rx_bytes = rx_frames * frame_size
            self._mm = mmap.mmap(s.fileno(), self._rx_bytes + tx_frames * frame_size,
                                 mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self._rx_words = memoryview(self._mm).cast("I")
            s.bind((ifname, ethertype))   # after the rings: every frame lands in them
            s.setblocking(False)
            self._src = s.getsockname()[4][:6]
            self.mtu = self._read_mtu()
        except BaseException:
            self.close()
            raise
        self.mac = mac_str(self._src)
        self._src_tail = self._src + struct.pack("!H", ethertype)
        self._headers: dict[str, bytes] = {}
        self._names: dict[bytes, str] = {}
        self._rx_i = self._tx_i = self._empty = 0
        self._dirty = False   # frames written since the last kick that went through
        self._pollout = select.poll()
        self._pollout.register(self.sock.fileno(), select.POLLOUT)

    # ---- receive -------------------------------------------------------------------------

    def recv_batch(self, max_frames: int = 256) -> list[tuple[str, bytes]]:
        """Up to ``max_frames`` waiting ``(src_mac, payload)``, oldest first; no syscall per frame.

        Fewer than ``max_frames`` means the ring is empty: no need to call again until ``select``
        says so. A second empty answer in a row (a wakeup with nothing in the ring) reads and so
        clears a pending socket error (e.g. ENETDOWN after the link bounced), which would
        otherwise keep ``select`` reporting the socket readable for ever.
        """
        out, self._rx_i = drain_rx(self._mm, self._rx_words, self._rx_i, self.rx_frames, self.frame_size,
                                   max_frames, self.ethertype, self._sees_own, self._names, self.counters)
        if out:
            self._empty = 0
        else:
            self._empty += 1
            if self._empty >= 2:
                self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return out

    def recv(self) -> tuple[str, bytes] | None:
        """Next ``(src_mac, payload)`` or None if nothing is waiting."""
        got = self.recv_batch(1)
        return got[0] if got else None

    # ---- send ----------------------------------------------------------------------------

    def queue(self, dst_mac: str, payload: bytes) -> bool:
        """Write one frame into the TX ring without a kick (``flush()`` sends); False if full."""
        self._check(payload)
        pos, self._tx_i = fill_tx(self._mm, self._rx_words, self._tx_i, self.tx_frames, self.frame_size,
                                  self._rx_bytes, ((dst_mac, payload),), 0, self._headers, self._src_tail,
                                  MAX_PAYLOAD, self.counters)
        if pos:
            self._dirty = True
        return bool(pos)

    def send(self, dst_mac: str, payload: bytes) -> None:
        """Send one frame now (write + kick). Raises ValueError / OSError(EMSGSIZE) for a payload
        that cannot go out, BlockingIOError if no TX slot frees up within ``tx_wait``, and the
        kick's OSError for a down or missing interface (the frame then stays queued)."""
        self._check(payload)
        if not self.queue(dst_mac, payload):
            if not self._wait_for_slot(time.monotonic() + self.tx_wait, hard=True) \
                    or not self.queue(dst_mac, payload):
                raise BlockingIOError(errno.EAGAIN, "TX ring full")
        self._kick(hard=True)

    def send_batch(self, frames) -> int:
        """Queue ``[(dst_mac, payload), ...]`` and kick once; returns how many were queued.

        A full ring is flushed and retried for up to ``tx_wait``; frames still without a slot
        are dropped (``tx_full_drops``), oversize ones skipped (``tx_oversize``). Kick errors
        (a down interface) are counted (``tx_errors``); queued frames go out on a later kick.
        """
        pos, total, deadline, skipped0 = 0, len(frames), None, self.counters.tx_oversize
        mm, words, headers, tail, counters = self._mm, self._rx_words, self._headers, self._src_tail, self.counters
        max_payload = min(MAX_PAYLOAD, self.mtu)
        while True:
            new, self._tx_i = fill_tx(mm, words, self._tx_i, self.tx_frames, self.frame_size, self._rx_bytes,
                                      frames, pos, headers, tail, max_payload, counters)
            if new > pos:
                self._dirty = True
            pos = new
            if pos >= total:
                break
            if deadline is None:
                deadline = time.monotonic() + self.tx_wait
            if not self._wait_for_slot(deadline, hard=False):
                counters.tx_full_drops += total - pos
                break
        if self._dirty:
            self._kick(hard=False)
        return pos - (counters.tx_oversize - skipped0)

    def flush(self) -> bool:
        """Kick the kernel to send every queued frame; True when none is left queued.

        Raises OSError for a down or missing interface (frames stay queued)."""
        if self._dirty:
            self._kick(hard=True)
        return not self._dirty

    def tx_pending(self) -> bool:
        """Frames written but not yet taken by the kernel (a kick met a full socket or device)."""
        return self._dirty

    def _check(self, payload: bytes) -> None:
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"payload {len(payload)} > {MAX_PAYLOAD} bytes")
        if len(payload) > self.mtu:
            raise OSError(errno.EMSGSIZE, f"payload {len(payload)} > MTU {self.mtu} of {self.ifname}")

    def _tx_slot_free(self) -> bool:
        return not self._rx_words[(self._rx_bytes + self._tx_i * self.frame_size) >> 2] & TX_OWNED

    def _last_pending(self) -> bool:
        """Is the last frame we wrote still waiting for a kick? (The kernel sends in ring order.)"""
        last = (self._tx_i - 1) % self.tx_frames
        return self._rx_words[(self._rx_bytes + last * self.frame_size) >> 2] & TX_OWNED == TP_STATUS_SEND_REQUEST

    def _wait_for_slot(self, deadline: float, hard: bool) -> bool:
        """Kick and wait (POLLOUT, 1 ms steps) until our next TX slot is free or ``deadline``."""
        while True:
            self._kick(hard=hard)
            if self._tx_slot_free():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._pollout.poll(1)
            if self._tx_slot_free():
                return True

    def _kick(self, hard: bool) -> None:
        """One send() of zero bytes: the kernel sends every SEND_REQUEST frame from its head on."""
        stale_error = True   # a socket error left by a link bounce is reported by one kick, then cleared
        for _ in range(self.tx_frames + 2):
            self.counters.tx_kicks += 1
            try:
                self.sock.send(b"")   # may stop early (send buffer full) and still succeed
                self._dirty = self._last_pending()
                return
            except BlockingIOError:
                self.counters.tx_again += 1
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.counters.tx_nobufs += 1
                    return
                if e.errno in (errno.EMSGSIZE, errno.EINVAL):
                    self._tx_i, dropped = repair_wrong_format(self._mm, self._rx_words, self._tx_i, self.tx_frames,
                                                              self.frame_size, self._rx_bytes)
                    if dropped:
                        self.counters.tx_wrong_format += dropped
                        self.mtu = self._read_mtu()
                        continue   # the frames behind it: kick again
                self.counters.tx_errors += 1
                if stale_error:
                    stale_error = False
                    continue
                if hard:
                    raise
                return

    # ---- the rest ------------------------------------------------------------------------

    def _read_mtu(self) -> int:
        ifr = struct.pack("16si20x", self.ifname.encode(), 0)
        return struct.unpack_from("i", fcntl.ioctl(self.sock.fileno(), SIOCGIFMTU, ifr), 16)[0]

    def stats(self) -> tuple[int, int]:
        """(frames the kernel put in the RX ring, frames it dropped: ring full) since the last call."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        return struct.unpack("II", raw)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        """Kick out what is queued (best effort), unmap the rings, close the socket."""
        if self.closed:
            return
        self.closed = True
        if self._mm is not None and getattr(self, "_dirty", False):
            try:
                self._kick(hard=False)
            except OSError:
                pass
        if self._rx_words is not None:
            self._rx_words.release()
            self._rx_words = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        self.sock.close()
