"""PacketTransport on a real veth pair: one syscall per frame, and still exactly the frames it should get.

``recv`` reads with ``recv_into`` and no address, so what ``recvfrom``'s address used to tell it
(the frame was our own, its EtherType) now comes from the kernel (PACKET_IGNORE_OUTGOING, the
bound protocol) and from the frame's own header; these tests send real frames, some crafted on
a raw socket, to show the same frames still come through and the others still do not.
"""

from __future__ import annotations

import os
import select
import socket
import struct

import pytest

from tessera.agent import l2
from tessera.agent.l2 import ETH_P_TESSERA, MAX_PAYLOAD, PacketTransport, call_in_netns, mac_bytes


@pytest.fixture
def pair(lab):
    """Transports on both ends of a veth pair between namespaces a and b, and an injector in a."""
    a, b = lab.add_ns("a"), lab.add_ns("b")
    lab.add_veth(a, "eth0", b, "eth0")
    ta, tb = PacketTransport("eth0", netns=a), PacketTransport("eth0", netns=b)

    def make_raw() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        s.bind(("eth0", 0))
        return s

    raw = call_in_netns(a, make_raw)
    yield a, ta, tb, raw
    for t in (ta, tb, raw):
        t.close()


def inject(raw: socket.socket, dst: str, src: str, ethertype: int, payload: bytes) -> None:
    raw.send(mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", ethertype) + payload)


def next_frame(t: PacketTransport) -> tuple[str, bytes] | None:
    select.select([t], [], [], 5)
    return t.recv()


def test_recv_returns_source_and_payload_and_never_the_senders_own_frames(pair):
    ns_a, a, b, _ = pair
    sniffer = PacketTransport("eth0", netns=ns_a)  # another socket where a sends
    try:
        for size in (200, MAX_PAYLOAD):
            payload = os.urandom(size)
            a.send(b.mac, payload)
            got = next_frame(b)
            assert got == (a.mac, payload) and type(got[1]) is bytes
        assert a.recv() is None and sniffer.recv() is None  # a's own frames, on either socket
        b.send(a.mac, b"x" * 64)
        assert next_frame(sniffer) == (b.mac, b"x" * 64)  # control: the sniffer receives
        assert next_frame(a) == (b.mac, b"x" * 64)
        assert b.recv() is None
    finally:
        sniffer.close()


def test_recv_returns_only_frames_of_its_ethertype(pair):
    _, a, b, raw = pair
    inject(raw, b.mac, a.mac, ETH_P_TESSERA + 1, b"o" * 64)
    inject(raw, b.mac, a.mac, ETH_P_TESSERA, b"t" * 64)
    assert next_frame(b) == (a.mac, b"t" * 64)
    assert b.recv() is None


def test_source_names_are_cached_and_the_cache_is_bounded(pair, monkeypatch):
    _, a, b, raw = pair
    monkeypatch.setattr(l2, "MAX_NAMES", 4)
    sources = [f"02:00:5e:00:01:{i:02x}" for i in range(10)]
    for src in sources:
        inject(raw, b.mac, src, ETH_P_TESSERA, src.encode() * 4)
    for src in sources:
        assert next_frame(b) == (src, src.encode() * 4)
        assert len(b._names) <= 4
    inject(raw, b.mac, sources[-1], ETH_P_TESSERA, b"again" * 10)
    assert next_frame(b) == (sources[-1], b"again" * 10)  # a cached name is the same name


def test_recv_by_recvfrom_where_the_kernel_cannot_ignore_outgoing_frames(pair):
    """A kernel before 4.20 refuses PACKET_IGNORE_OUTGOING: recv then reads the address."""
    _, a, b, raw = pair
    a._sees_own = b._sees_own = True
    a.send(b.mac, b"p" * 64)
    inject(raw, b.mac, a.mac, ETH_P_TESSERA + 1, b"o" * 64)
    inject(raw, b.mac, a.mac, ETH_P_TESSERA, b"q" * 64)
    assert next_frame(b) == (a.mac, b"p" * 64)
    assert next_frame(b) == (a.mac, b"q" * 64)
    assert b.recv() is None and a.recv() is None
