"""A scapy layer for Tessera's peer frames (EtherType 0x88B5), for dissecting captures and tests.

Declares the same layout as tessera.message (version, type, then per-type fields); it is never
on the I/O path (the agent frames with struct on a plain AF_PACKET socket, ~30× faster than
scapy per frame). `bind_layers` makes `rdpcap(...)` show Tessera frames by name:

    >>> from tessera.agent.layer import Tessera
    >>> [p[Tessera].sprintf("%Tessera.type%") for p in rdpcap("lab.pcap") if Tessera in p]
"""

from __future__ import annotations

from scapy.fields import (ByteEnumField, ByteField, FieldLenField, LongField, ShortField, StrFixedLenField,
                          StrLenField)
from scapy.layers.l2 import CookedLinuxV2, Ether
from scapy.packet import Packet, bind_layers

from tessera import message as m

ETHERTYPE = 0x88B5
TYPES = {cls.TYPE: cls.__name__ for cls in m.MESSAGES.values()}


def _id_field(name: str):
    return [FieldLenField(f"{name}_len", None, length_of=name, fmt="B"),
            StrLenField(name, b"", length_from=lambda p, n=name: getattr(p, f"{n}_len"))]


class Tessera(Packet):
    name = "Tessera"
    fields_desc = [ByteField("version", m.VERSION), ByteEnumField("type", m.PeerData.TYPE, TYPES)]


class TesseraAnnounce(Packet):
    name = "Tessera PeerAnnounce"
    fields_desc = [*_id_field("realm"), *_id_field("device_id"), LongField("epoch", 0)]


class TesseraHello(Packet):
    """PeerHello, PeerTicket and PeerFinished start with realm, initiator, responder."""

    name = "Tessera handshake"
    fields_desc = [*_id_field("realm"), *_id_field("initiator"), *_id_field("responder")]


class TesseraData(Packet):
    name = "Tessera PeerData"
    fields_desc = [StrFixedLenField("session_id", b"\x00" * 8, 8), LongField("seq", 0)]


class TesseraError(Packet):
    name = "Tessera ErrorMessage"
    fields_desc = [ShortField("code", 0), LongField("server_time", 0), *_id_field("detail")]


bind_layers(Ether, Tessera, type=ETHERTYPE)
bind_layers(CookedLinuxV2, Tessera, proto=ETHERTYPE)  # the lab switch's capture (tessera.lab.capture)
bind_layers(Tessera, TesseraAnnounce, type=m.PeerAnnounce.TYPE)
bind_layers(Tessera, TesseraData, type=m.PeerData.TYPE)
bind_layers(Tessera, TesseraData, type=m.PeerFrame.TYPE)  # same record header: session id, seq
bind_layers(Tessera, TesseraError, type=m.ErrorMessage.TYPE)
for _cls in (m.PeerHello, m.PeerTicket, m.PeerFinished):
    bind_layers(Tessera, TesseraHello, type=_cls.TYPE)


def summarize(packets) -> dict[str, int]:
    """Count Tessera frames by message type in a list of packets (e.g. from rdpcap): PeerFrame
    (type 38) counts the tunnel's records, PeerData (35) the agents' own messages."""
    counts: dict[str, int] = {}
    for p in packets:
        if Tessera in p:
            name = TYPES.get(p[Tessera].type, f"type {p[Tessera].type}")
            counts[name] = counts.get(name, 0) + 1
    return counts
