"""The PACKET_MMAP ring logic of agent/ring.py on rings built in memory with struct.

Frames are laid out by hand from the kernel's documented layout (struct tpacket2_hdr at the
frame start: tp_status u32 @0, tp_len u32 @4, tp_snaplen u32 @8, tp_mac u16 @12, tp_net u16
@14; struct sockaddr_ll at @32 with sll_pkttype u8 @42; an Ethernet RX frame at tp_mac 66;
a TX frame's bytes at @32), with explicit offsets rather than the module's own structs.
"""

from __future__ import annotations

import mmap
import struct

import pytest

from tessera.agent import ring
from tessera.agent.ring import (RingCounters, RingTransport, drain_rx, fill_tx, repair_wrong_format,
                                rx_mac_offset)

FS = 256          # a small frame size for in-memory rings
ET = 0x88B5
A, B = bytes.fromhex("020000000001"), bytes.fromhex("02000000000b")


def make_ring(slots: int):
    mm = mmap.mmap(-1, slots * FS)
    return mm, memoryview(mm).cast("I")


def put_rx(mm, slot: int, frame: bytes, *, status: int = 1, tp_len: int | None = None,
           snaplen: int | None = None, mac: int = 66, pkttype: int = 0) -> None:
    off = slot * FS
    stored = frame[:snaplen] if snaplen is not None else frame
    struct.pack_into("<I", mm, off + 4, len(frame) if tp_len is None else tp_len)
    struct.pack_into("<I", mm, off + 8, len(stored))
    struct.pack_into("<H", mm, off + 12, mac)
    struct.pack_into("<H", mm, off + 14, mac + 14)
    mm[off + 42] = pkttype
    if mac + len(stored) <= FS:
        mm[off + mac:off + mac + len(stored)] = stored
    struct.pack_into("<I", mm, off, status)   # last, as the kernel does


def eth(dst: bytes, src: bytes, payload: bytes, ethertype: int = ET) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def status(mm, slot: int) -> int:
    return struct.unpack_from("<I", mm, slot * FS)[0]


def drain(mm, words, index=0, slots=4, max_frames=64, skip_outgoing=False, names=None, counters=None):
    counters = counters if counters is not None else RingCounters()
    got, nxt = drain_rx(mm, words, index, slots, FS, max_frames, ET, skip_outgoing,
                        names if names is not None else {}, counters)
    return got, nxt, counters


def test_layout_constants_are_the_kernels():
    assert ring.TPACKET2_HDR.size == 32 and ring.TPACKET2_HDRLEN == 52
    assert ring.TX_DATA == 32 and ring.SLL_PKTTYPE == 42
    assert rx_mac_offset() == 66           # TPACKET_ALIGN(52 + 16) - 14
    assert 2048 - rx_mac_offset() >= 1514  # a 2 KiB frame holds a full Ethernet frame


def test_drain_takes_user_frames_in_order_and_hands_the_slots_back():
    mm, words = make_ring(4)
    put_rx(mm, 0, eth(B, A, b"first"))
    put_rx(mm, 1, eth(B, A, b"second"))
    put_rx(mm, 2, eth(B, A, b"not yet"), status=0)   # still the kernel's
    got, nxt, c = drain(mm, words)
    assert got == [("02:00:00:00:00:01", b"first"), ("02:00:00:00:00:01", b"second")]
    assert type(got[0][1]) is bytes
    assert nxt == 2 and status(mm, 0) == status(mm, 1) == 0
    assert c == RingCounters()
    assert drain(mm, words, index=2)[0] == []        # a kernel slot stops the drain


def test_drain_wraps_around_and_stops_at_max_frames():
    mm, words = make_ring(4)
    put_rx(mm, 3, eth(B, A, b"three"))
    put_rx(mm, 0, eth(B, A, b"zero"))
    put_rx(mm, 1, eth(B, A, b"one"))
    got, nxt, _ = drain(mm, words, index=3, max_frames=2)
    assert [p for _, p in got] == [b"three", b"zero"] and nxt == 1
    assert status(mm, 1) & 1                         # left for the next drain
    assert [p for _, p in drain(mm, words, index=1)[0]] == [b"one"]


def test_truncated_malformed_and_foreign_frames_are_dropped_and_counted():
    mm, words = make_ring(8)
    good = eth(B, A, b"g" * 40)
    put_rx(mm, 0, eth(B, A, b"t" * 40), snaplen=30)           # truncated: snaplen < tp_len
    put_rx(mm, 1, good, status=1 | 2)                          # TP_STATUS_COPY: the ring has a cut copy
    put_rx(mm, 2, good, mac=FS - 10)                           # the frame would end past the slot
    put_rx(mm, 3, eth(B, A, b"x"), mac=66, tp_len=10, snaplen=10)  # shorter than an Ethernet header
    put_rx(mm, 4, eth(B, A, b"o" * 40, ethertype=0x0800))     # another EtherType
    put_rx(mm, 5, good)                                        # the same frame, intact: accepted
    got, nxt, c = drain(mm, words, slots=8)
    assert got == [("02:00:00:00:00:01", b"g" * 40)] and nxt == 6
    assert (c.rx_truncated, c.rx_malformed, c.rx_other_type) == (2, 2, 1)
    assert all(status(mm, i) == 0 for i in range(6))           # every slot handed back


def test_own_outgoing_frames_are_skipped_only_where_the_kernel_cannot():
    mm, words = make_ring(4)
    put_rx(mm, 0, eth(B, A, b"mine"), pkttype=4)   # PACKET_OUTGOING
    put_rx(mm, 1, eth(A, B, b"theirs"))
    got, _, c = drain(mm, words, skip_outgoing=True)
    assert [p for _, p in got] == [b"theirs"] and c.rx_own == 1
    put_rx(mm, 2, eth(B, A, b"mine"), pkttype=4)
    got, _, c = drain(mm, words, index=2, skip_outgoing=False)  # IGNORE_OUTGOING set: trust the kernel
    assert [p for _, p in got] == [b"mine"] and c.rx_own == 0


def test_source_names_are_cached_and_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(ring, "MAX_NAMES", 3)
    mm, words = make_ring(8)
    for i in range(8):
        put_rx(mm, i, eth(B, bytes([2, 0, 0, 0, 1, i]), b"p"))
    names: dict = {}
    got, _, _ = drain(mm, words, slots=8, names=names)
    assert [s for s, _ in got] == [f"02:00:00:00:01:{i:02x}" for i in range(8)]
    assert len(names) <= 3


def tx_frame(mm, slot: int) -> tuple[int, int, bytes]:
    off = slot * FS
    st, n = struct.unpack_from("<II", mm, off)
    return st, n, bytes(mm[off + 32:off + 32 + n])


def fill(mm, words, frames, index=0, slots=4, start=0, max_payload=1500, counters=None):
    counters = counters if counters is not None else RingCounters()
    pos, nxt = fill_tx(mm, words, index, slots, FS, 0, frames, start, {}, A + struct.pack("!H", ET),
                       max_payload, counters)
    return pos, nxt, counters


def test_fill_writes_frame_length_and_send_request():
    mm, words = make_ring(4)
    pos, nxt, c = fill(mm, words, [("02:00:00:00:00:0b", b"hello"), ("ff:ff:ff:ff:ff:ff", b"all")])
    assert (pos, nxt) == (2, 2) and c == RingCounters()
    assert tx_frame(mm, 0) == (1, 19, eth(B, A, b"hello"))
    assert tx_frame(mm, 1) == (1, 17, eth(b"\xff" * 6, A, b"all"))
    assert status(mm, 2) == 0


@pytest.mark.parametrize("owned", [1, 2, 4])   # SEND_REQUEST, SENDING, WRONG_FORMAT
def test_fill_never_overwrites_a_slot_the_kernel_owns(owned):
    mm, words = make_ring(4)
    struct.pack_into("<I", mm, 2 * FS, owned)
    mm[2 * FS + 32:2 * FS + 36] = b"keep"
    frames = [("02:00:00:00:00:0b", bytes([i]) * 8) for i in range(4)]
    pos, nxt, _ = fill(mm, words, frames)
    assert (pos, nxt) == (2, 2)
    assert status(mm, 2) == owned and mm[2 * FS + 32:2 * FS + 36] == b"keep"
    struct.pack_into("<I", mm, 2 * FS, 0)                     # the kernel frees it
    pos, nxt, _ = fill(mm, words, frames, index=2, start=2)
    assert (pos, nxt) == (4, 0)                               # and the rest go in, wrapping
    assert [tx_frame(mm, i)[2][14:] for i in range(4)] == [bytes([i]) * 8 for i in range(4)]


def test_fill_skips_and_counts_oversize_payloads():
    mm, words = make_ring(4)
    pos, nxt, c = fill(mm, words, [("02:00:00:00:00:0b", b"x" * 101), ("02:00:00:00:00:0b", b"ok")],
                       max_payload=100)
    assert (pos, nxt, c.tx_oversize) == (2, 1, 1)
    assert tx_frame(mm, 0)[2][14:] == b"ok"


def set_tx(mm, slot: int, st: int, data: bytes) -> None:
    off = slot * FS
    mm[off + 32:off + 32 + len(data)] = data
    struct.pack_into("<II", mm, off, st, len(data))


def test_repair_drops_the_refused_frame_and_moves_the_queue_back():
    mm, words = make_ring(4)
    set_tx(mm, 0, 4, b"refused" * 20)   # TP_STATUS_WRONG_FORMAT at the kernel's head
    set_tx(mm, 1, 1, b"second")
    set_tx(mm, 2, 1, b"third!")
    nxt, dropped = repair_wrong_format(mm, words, 3, 4, FS, 0)
    assert (nxt, dropped) == (2, 1)
    assert tx_frame(mm, 0) == (1, 6, b"second") and tx_frame(mm, 1) == (1, 6, b"third!")
    assert status(mm, 2) == 0


def test_repair_wraps_and_leaves_a_healthy_ring_alone():
    mm, words = make_ring(4)
    set_tx(mm, 3, 4, b"refused")
    set_tx(mm, 0, 1, b"after")
    assert repair_wrong_format(mm, words, 1, 4, FS, 0) == (0, 1)
    assert tx_frame(mm, 3) == (1, 5, b"after") and status(mm, 0) == 0
    healthy, hw = make_ring(4)
    set_tx(healthy, 0, 1, b"queued")
    assert repair_wrong_format(healthy, hw, 1, 4, FS, 0) == (1, 0)
    assert tx_frame(healthy, 0) == (1, 6, b"queued")


@pytest.mark.parametrize("kw, what", [
    ({"frame_size": 2047}, "frame_size"),
    ({"frame_size": 32}, "frame_size"),
    ({"block_size": 5000}, "block_size"),
    ({"block_size": 4096, "frame_size": 3072}, "block_size"),
    ({"rx_frames": 3, "block_size": 8192}, "rx_frames"),
    ({"tx_frames": 0}, "tx_frames"),
])
def test_ring_geometry_is_checked_before_any_socket(kw, what):
    with pytest.raises(ValueError, match=what):
        RingTransport("nonexistent0", **kw)
