"""The scapy layer dissects the frames the core builds, field for field."""

from scapy.layers.l2 import Ether

from tessera import message as m
from tessera.agent.layer import Tessera, TesseraAnnounce, TesseraData, TesseraHello, summarize
from tessera.record import RecordSender


def frame(payload: bytes) -> Ether:
    return Ether(bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01", type=0x88B5)) + payload)


def test_layer_dissects_core_frames():
    a = frame(m.PeerAnnounce("example.net", "SN-1", 7).encode())
    assert a[TesseraAnnounce].device_id == b"SN-1" and a[TesseraAnnounce].epoch == 7
    h = frame(m.PeerHello("example.net", "SN-1", "SN-2", b"\x02" * 6, 5, b"n" * 16, b"t" * 100, b"m" * 32).encode())
    assert (h[TesseraHello].initiator, h[TesseraHello].responder) == (b"SN-1", b"SN-2")
    d = frame(RecordSender(b"S" * 8, b"k" * 32, b"i" * 12).seal(b"data"))
    assert d[Tessera].type == m.PeerData.TYPE and d[TesseraData].seq == 1 and d[TesseraData].session_id == b"S" * 8
    assert summarize([a, h, d, d]) == {"PeerAnnounce": 1, "PeerHello": 1, "PeerData": 2}


def test_layer_builds_what_the_core_decodes():
    built = bytes(Tessera(type=m.PeerAnnounce.TYPE) / TesseraAnnounce(realm=b"example.net", device_id=b"SN-9", epoch=3))
    assert m.decode(built) == m.PeerAnnounce("example.net", "SN-9", 3)
