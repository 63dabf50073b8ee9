"""RingTransport (PACKET_MMAP rings) on a real veth pair between two namespaces.

Every payload sent through a TX ring arrives intact and in order at a plain PacketTransport and
at another ring, and the other way round; frames too long for a ring slot or of another
EtherType never come out of ``recv``; a full TX ring pushes back instead of overwriting; a
frame the kernel refuses is dropped, counted, and the frames behind it still go out. No IP
addresses are used (layer 2 only); the ``lab`` fixture removes namespaces also on failure.
"""

from __future__ import annotations

import errno
import random
import select
import socket
import struct
import time

import pytest

from tessera.agent.l2 import ETH_P_TESSERA, L2Transport, PacketTransport, call_in_netns, mac_bytes
from tessera.agent.ring import RingTransport, rx_mac_offset


@pytest.fixture
def veth(lab):
    """Namespaces a and b joined by a veth pair (eth0 on both ends); transports made in a test
    through ``open_`` are closed at teardown."""
    a, b = lab.add_ns("a"), lab.add_ns("b")
    lab.add_veth(a, "eth0", b, "eth0")
    opened = []

    def open_(cls, ns, **kw):
        t = cls("eth0", netns=ns, **kw)
        opened.append(t)
        return t

    yield lab, a, b, open_
    for t in opened:
        t.close()


def payloads(n: int, seed: int = 12) -> list[bytes]:
    """Numbered payloads of every length class, 0 and 1500 bytes included."""
    rnd = random.Random(seed)
    sizes = [0, 1, 1500, 1499, 46] + [rnd.randrange(0, 1501) for _ in range(n - 5)]
    return [struct.pack("!I", i)[:size] + rnd.randbytes(max(0, size - 4)) for i, size in enumerate(sizes[:n])]


def drain(t, want: int, timeout: float = 5.0) -> list[tuple[str, bytes]]:
    """Everything ``t`` receives until ``want`` frames or ``timeout`` (then also a short quiet spell)."""
    got: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        select.select([t], [], [], 0.2)
        if isinstance(t, RingTransport):
            got += t.recv_batch(4096)
        else:
            while (x := t.recv()) is not None:
                got.append(x)
    select.select([t], [], [], 0.1)
    got += t.recv_batch(4096) if isinstance(t, RingTransport) else list(iter(t.recv, None))
    return got


def test_ring_sender_to_plain_receiver_and_plain_sender_to_ring_receiver(veth):
    _, a, b, open_ = veth
    ring_a, plain_b = open_(RingTransport, a), open_(PacketTransport, b)
    data = payloads(3000)
    got = []
    for i in range(0, len(data), 200):   # chunks the plain receiver's buffer holds
        chunk = data[i:i + 200]
        assert ring_a.send_batch([(plain_b.mac, p) for p in chunk]) == len(chunk)
        got += drain(plain_b, len(chunk))
    assert got == [(ring_a.mac, p) for p in data]
    assert ring_a.recv_batch() == []     # its own frames never come back

    plain_a, ring_b = open_(PacketTransport, a), open_(RingTransport, b)
    got = []
    for i in range(0, len(data), 500):
        for p in data[i:i + 500]:
            plain_a.send(ring_b.mac, p)
        got += drain(ring_b, len(data[i:i + 500]))
    assert got == [(plain_a.mac, p) for p in data]
    assert struct.unpack_from("=H", ring_b._mm, 12)[0] == rx_mac_offset()  # tp_mac as documented
    assert ring_b.stats()[1] == 0 and ring_b.counters.rx_truncated == 0


def test_ring_to_ring_both_ways_single_sends_and_batches(veth):
    _, a, b, open_ = veth
    ra, rb = open_(RingTransport, a), open_(RingTransport, b)
    there, back = payloads(1500, seed=1), payloads(1500, seed=2)
    for i in range(0, 1500, 100):
        ra.send_batch([(rb.mac, p) for p in there[i:i + 100]])
        for p in back[i:i + 100]:
            rb.send(ra.mac, p)
    assert drain(rb, 1500) == [(ra.mac, p) for p in there]
    assert drain(ra, 1500) == [(rb.mac, p) for p in back]
    sniffer = open_(RingTransport, a)   # another socket where a sends: a's frames are not "received"
    ra.send(rb.mac, b"once more")
    assert drain(rb, 1) == [(ra.mac, b"once more")]
    assert sniffer.recv() is None and ra.recv() is None
    rb.send(ra.mac, b"to a")
    assert drain(sniffer, 1) == [(rb.mac, b"to a")]   # control: the sniffer does receive


def test_frames_too_long_for_a_slot_and_other_ethertypes_never_come_out(veth):
    lab, a, b, open_ = veth
    for ns in (a, b):
        lab.run(ns, ["ip", "link", "set", "eth0", "mtu", "4000"])
    ring_b, plain_b = open_(RingTransport, b), open_(PacketTransport, b)
    other_b = open_(RingTransport, b, ethertype=ETH_P_TESSERA + 1)

    def make_raw() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        s.bind(("eth0", 0))
        return s

    raw = call_in_netns(a, make_raw)
    try:
        src = bytes.fromhex("020000000a01")
        hdr = mac_bytes(ring_b.mac) + src
        raw.send(hdr + struct.pack("!H", ETH_P_TESSERA) + b"L" * 3000)       # > 2048 - 66: truncated
        raw.send(hdr + struct.pack("!H", ETH_P_TESSERA + 1) + b"o" * 100)   # another EtherType
        raw.send(hdr + struct.pack("!H", ETH_P_TESSERA) + b"good" * 10)
    finally:
        raw.close()
    assert drain(ring_b, 1) == [("02:00:00:00:0a:01", b"good" * 10)]
    assert ring_b.counters.rx_truncated == 1
    # controls: the long frame was on the wire (a plain socket gets it whole), and the other
    # EtherType reaches a ring bound to it
    assert drain(plain_b, 2) == [("02:00:00:00:0a:01", b"L" * 3000), ("02:00:00:00:0a:01", b"good" * 10)]
    assert drain(other_b, 1) == [("02:00:00:00:0a:01", b"o" * 100)]


def test_a_full_tx_ring_is_flushed_and_retried_without_losing_a_frame(veth):
    _, a, b, open_ = veth
    small = open_(RingTransport, a, tx_frames=32, block_size=4096)
    rb = open_(RingTransport, b, rx_frames=4096)
    data = payloads(1000, seed=3)
    assert small.send_batch([(rb.mac, p) for p in data]) == 1000   # 31 times the ring
    assert small.counters.tx_kicks > 1000 // 32                     # it filled up and was flushed
    assert small.counters.tx_full_drops == 0
    assert drain(rb, 1000) == [(small.mac, p) for p in data]


def test_a_ring_that_cannot_drain_drops_and_counts_and_keeps_what_it_accepted(veth):
    lab, a, b, open_ = veth
    tx = open_(RingTransport, a, tx_frames=32, block_size=4096, tx_wait=0.05)
    rb = open_(RingTransport, b)
    lab.run(a, ["ip", "link", "set", "eth0", "down"])
    data = payloads(100, seed=4)
    assert tx.send_batch([(rb.mac, p) for p in data]) == 32     # what the ring holds
    assert tx.counters.tx_full_drops == 68 and tx.counters.tx_errors >= 1
    assert tx.tx_pending()
    with pytest.raises(OSError) as e:
        tx.send(rb.mac, b"no room")
    assert e.value.errno in (errno.ENETDOWN, errno.EAGAIN)
    with pytest.raises(OSError) as e:
        tx.flush()
    assert e.value.errno == errno.ENETDOWN
    lab.run(a, ["ip", "link", "set", "eth0", "up"])
    assert tx.flush() and not tx.tx_pending()
    assert drain(rb, 32) == [(tx.mac, p) for p in data[:32]]     # the accepted ones, intact, in order
    # a link bounce leaves ENETDOWN pending on the receiver's socket: select would spin on it
    lab.run(b, ["ip", "link", "set", "eth0", "down"])
    lab.run(b, ["ip", "link", "set", "eth0", "up"])
    assert select.select([rb], [], [], 0)[0] == [rb]
    assert rb.recv_batch() == [] and rb.recv_batch() == []   # a wakeup with an empty ring
    assert select.select([rb], [], [], 0)[0] == []
    tx.send(rb.mac, b"after the bounce")
    assert drain(rb, 1) == [(tx.mac, b"after the bounce")]


def test_a_frame_the_kernel_refuses_is_dropped_and_the_frames_behind_it_go_out(veth):
    lab, a, b, open_ = veth
    tx, rb = open_(RingTransport, a), open_(RingTransport, b)
    assert tx.mtu == 1500
    lab.run(a, ["ip", "link", "set", "eth0", "mtu", "1000"])   # after the transport read it
    frames = [b"one", b"B" * 1200, b"two", b"three"]
    assert tx.send_batch([(rb.mac, p) for p in frames]) == 4
    assert tx.counters.tx_wrong_format == 1 and tx.mtu == 1000
    assert drain(rb, 3) == [(tx.mac, b"one"), (tx.mac, b"two"), (tx.mac, b"three")]
    with pytest.raises(OSError) as e:                          # now refused before the ring
        tx.send(rb.mac, b"B" * 1200)
    assert e.value.errno == errno.EMSGSIZE
    assert tx.send_batch([(rb.mac, b"B" * 1200), (rb.mac, b"four")]) == 1
    assert tx.counters.tx_oversize == 1
    assert drain(rb, 1) == [(tx.mac, b"four")]
    with pytest.raises(ValueError):
        tx.send(rb.mac, b"x" * 1501)


def test_close_unmaps_and_closes_once(veth):
    _, a, _, open_ = veth
    t = open_(RingTransport, a)
    assert isinstance(t, L2Transport)   # the agent's one narrow interface
    mm = t._mm
    t.close()
    t.close()
    assert mm.closed and t.sock.fileno() == -1
