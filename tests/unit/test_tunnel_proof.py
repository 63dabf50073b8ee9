"""lab/tunnel_proof.py without root: the demo's echo packets, and its verdict on a switch pcap --
the agents' own traffic passes, any trace of the tunnel's inner traffic is found."""

import os
import socket
import struct

import pytest
from scapy.utils import RawPcapWriter

from tessera.lab import tunnel_proof as tp

PORT, UPLINK = 4, 2  # ifindexes: a device port of the switch, its uplink to the RADIUS server
SERVER, DEV1, DEV2 = "203.0.113.2", "203.0.113.101", "203.0.113.102"
PATTERN = bytes.fromhex("d496b90a7c055a94fd3ee83296e2c35f")
TAP_MAC = bytes.fromhex("1e2b3c4d5e6f")


def sll2(eth_type: int, ifindex: int, payload: bytes) -> bytes:
    """A Linux cooked v2 record: protocol, reserved, ifindex, ARPHRD_ETHER, pkttype, addr len, addr[8]."""
    return struct.pack("!HHIHBB8s", eth_type, 0, ifindex, 1, 0, 6, bytes(8)) + payload


def ipv4(src: str, dst: str, proto: int, body: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + body


def arp(sender_mac: bytes, sender: str, target: str) -> bytes:
    return struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, sender_mac, socket.inet_aton(sender), bytes(6),
                       socket.inet_aton(target))


def tessera_frame(kind: int = 38) -> bytes:
    return bytes([1, kind]) + os.urandom(8 + 8 + 80 + 16)


MANAGEMENT = [  # what the device ports really carry besides the tunnel's ciphertext
    sll2(tp.EAPOL, PORT, bytes([2, 0, 0, 5]) + bytes(5)),
    sll2(tp.TESSERA, PORT, tessera_frame()),
    sll2(tp.IPV4, PORT, ipv4(DEV1, SERVER, 6, os.urandom(40))),        # RadSec
    sll2(tp.ARP, PORT, arp(bytes.fromhex("02005e100001"), DEV1, SERVER)),
    sll2(tp.IPV4, UPLINK, ipv4("203.0.113.1", "224.0.0.22", 2, bytes(16))),  # the switch's IGMP, not a port
]


def write(path, records) -> str:
    w = RawPcapWriter(str(path), linktype=276)
    for r in records:
        w.write(r)
    w.close()
    return str(path)


def verdict(tmp_path, extra=()):
    return tp.check_switch_pcap(write(tmp_path / "s.pcap", MANAGEMENT + list(extra)), {PORT}, {SERVER},
                                PATTERN, [TAP_MAC])


def test_the_agents_own_traffic_passes(tmp_path):
    v = verdict(tmp_path)
    assert v.ok, v.summary()
    assert v.frames == 5 and v.device_port_frames == 4
    assert v.kinds == {"EAPOL": 1, "Tessera": 1, "IPv4 agent ↔ RADIUS server": 1, "ARP": 1}
    assert "the ping's pattern: 0 times" in v.summary()[-1]


@pytest.mark.parametrize("frame, why", [
    (sll2(tp.IPV4, PORT, ipv4("198.51.100.1", "198.51.100.2", 1, bytes([8, 0]) + bytes(62))), "IPv4 of the tunnel"),
    (sll2(tp.IPV4, UPLINK, ipv4("198.51.100.1", SERVER, 6, bytes(20))), "IPv4 of the tunnel"),  # on any interface
    (sll2(tp.IPV4, PORT, ipv4(DEV1, SERVER, 1, bytes([8, 0]) + bytes(62))), "ICMP echo"),
    (sll2(tp.IPV4, PORT, ipv4(DEV1, DEV2, 17, bytes(20))), "IPv4 not to or from a RADIUS server"),
    (sll2(tp.ARP, PORT, arp(bytes.fromhex("02005e100001"), "198.51.100.1", "198.51.100.2")), "ARP of the tunnel"),
    (sll2(tp.IPV6, PORT, bytes([0x60]) + bytes(39)), "IPv6 on a device port"),
    (sll2(tp.IPV6, UPLINK, bytes([0x60]) + bytes(7) + socket.inet_pton(socket.AF_INET6, "2001:db8:100::1")
          + bytes(16)), "IPv6 of the tunnel"),
    (sll2(0x8100, PORT, bytes(30)), "EtherType 0x8100 on a device port"),
    (bytes(10), "frame too short for its cooked header"),
])
def test_inner_traffic_is_found(tmp_path, frame, why):
    v = verdict(tmp_path, [frame])
    assert not v.ok and v.violations == {why: 1}, v.summary()
    assert "VISIBLE: " + why in v.summary()[1] and v.examples


def test_the_pattern_and_a_tap_mac_are_found_anywhere(tmp_path):
    inner = sll2(tp.TESSERA, UPLINK, bytes([1, 38]) + tp.pattern_payload(PATTERN))  # no violation by type or port
    v = verdict(tmp_path, [inner])
    assert not v.violations and v.pattern_hits == 3 and not v.ok  # 56 bytes: the 16-byte pattern three times whole
    v = verdict(tmp_path, [sll2(tp.TESSERA, PORT, bytes([1, 38]) + bytes(20) + TAP_MAC + bytes(20))])
    assert not v.violations and v.mac_hits == 1 and not v.ok


def test_an_empty_capture_proves_nothing(tmp_path):
    v = tp.check_switch_pcap(write(tmp_path / "e.pcap", []), {PORT}, {SERVER}, PATTERN, [TAP_MAC])
    assert v.frames == 0 and not v.ok


def test_echo_request_and_reply_layout():
    payload = tp.pattern_payload(PATTERN)
    assert len(payload) == 56 and payload[:16] == payload[16:32] == PATTERN and payload[48:] == PATTERN[:8]
    req = tp.echo_request(0x1234, 0x8002, payload)
    assert req[:2] == b"\x08\x00" and tp.inet_checksum(req) == 0  # a valid ICMP checksum sums to zero
    reply = ipv4("198.51.100.3", "198.51.100.1", 1, b"\x00" + req[1:])
    assert tp.parse_echo_reply(reply) == ("198.51.100.3", 0x1234, 0x8002, payload)
    assert tp.parse_echo_reply(ipv4("198.51.100.3", "198.51.100.1", 1, req)) is None  # a request, not a reply
    assert tp.parse_echo_reply(ipv4("198.51.100.3", "198.51.100.1", 17, b"\x00" + req[1:])) is None
    assert tp.parse_echo_reply(b"\x45" + bytes(10)) is None
    with pytest.raises(ValueError, match="1 to 16 bytes"):
        tp.pattern_payload(bytes(17))
    assert tp.tunnel_address(1) == "198.51.100.1" and tp.tunnel_address(50) == "198.51.100.50"
