"""The README's first command: the namespace lab demo, end to end, with three devices.

The pcap is the evidence the demo hands the user: it must hold every frame that crossed the
switch. The test reads it itself (not the demo's summary lines) and counts the frames by their
documented layout: Linux cooked v2 header (protocol at bytes 0-1), then the Tessera frame
(version, type; type 35 is PeerData, 38 PeerFrame -- docs/layouts.md). The pings between every
pair over tessera0 must have been answered while no frame on the switch shows their inner
traffic: no IP or ARP of the tunnel's addresses, no ICMP at all, not the ping's payload
pattern, not a tessera0 MAC. Next to the pcap the demo leaves its timeline PNG.
"""

import ipaddress
import os
import re

from scapy.layers.l2 import CookedLinuxV2
from scapy.utils import rdpcap

from tessera.lab import demo
from tessera.lab.netns import list_netns, owner_pid
from tessera.lab.timeline import PNG_MAGIC, png_size
from tessera.tunnel import tap_hw

from tests.gate import needs_lab

pytestmark = needs_lab

PEER_DATA, PEER_FRAME = 35, 38
EAPOL, TESSERA, IPV4, ARP = 0x888E, 0x88B5, 0x0800, 0x0806
TUNNEL = ipaddress.ip_network("198.51.100.0/24")
N = 3


def ours() -> set[str]:
    """This process's lab namespaces (``ts<pid>-...``); other runs on the machine come and go."""
    return {ns for ns in list_netns() if owner_pid(ns) == os.getpid()}


def in_tunnel(raw: bytes) -> bool:
    return ipaddress.ip_address(raw) in TUNNEL


def test_lab_demo_admits_peers_pings_over_the_tunnel_and_leaves_nothing(tmp_path, capsys):
    before = ours()
    pcap = tmp_path / "lab.pcap"
    assert demo.main(["-n", str(N), "--pcap", str(pcap)]) == 0
    out = capsys.readouterr().out
    pairs = N * (N - 1) // 2
    assert "admitted: port authorized by EAP-TLS" in out and "session: established" in out
    assert f"{N * (N - 1)} of {N * (N - 1)} messages delivered" in out and "the stranger stayed out" in out
    assert f"{pairs} of {pairs} pairs answered" in out
    assert f"{pairs} of {pairs} pairs pinged over tessera0" in out and "no inner frame visible on the switch" in out
    assert ", 0 dropped by the kernel" in out
    assert ours() == before
    pattern = bytes.fromhex(re.search(r"payload pattern ([0-9a-f]{32})\)", out).group(1))
    realm = re.search(r"realm (\S+): registry", out).group(1)
    tap_macs = [tap_hw(realm, f"dev-{k:02d}") for k in range(1, N + 2)]

    packets = rdpcap(str(pcap))
    assert packets and all(p.haslayer(CookedLinuxV2) for p in packets)
    frames = [bytes(p) for p in packets]
    proto = [int.from_bytes(f[0:2], "big") for f in frames]
    tessera = [f[20:] for f, pr in zip(frames, proto) if pr == TESSERA]
    data = [t for t in tessera if t[1] == PEER_DATA]
    assert len(data) == N * (N - 1), f"PeerData frames in the pcap: {len(data)} (want one per message)"
    # every pair: two echoes and two replies, each one PeerFrame (ARP and IPv6 ND over the tunnel add more)
    assert len([t for t in tessera if t[1] == PEER_FRAME]) >= 4 * pairs
    assert proto.count(EAPOL) >= 2 * (N + 1)  # EAPOL of every admission (and the stranger's)
    # the messages crossed the switch encrypted: their text is in no captured frame
    assert not any(b"this is dev-" in f for f in frames)

    # nothing of the tunnel's inner traffic: only EAPOL, Tessera, and the management network's own
    # IPv4 (RadSec, RADIUS, the switch's IGMP) and ARP -- never an address of the tunnel, never ICMP
    assert set(proto) <= {EAPOL, TESSERA, IPV4, ARP}, {hex(p) for p in proto}
    for f, pr in zip(frames, proto):
        ip = f[20:]
        if pr == IPV4:
            assert not in_tunnel(ip[12:16]) and not in_tunnel(ip[16:20]), ip[:20].hex()
            assert ip[9] != 1, f"ICMP on the switch: {ip[:28].hex()}"
        elif pr == ARP:
            assert not in_tunnel(ip[14:18]) and not in_tunnel(ip[24:28]), ip[:28].hex()
    assert pattern not in pcap.read_bytes()
    assert not [f for f in frames if any(m in f for m in tap_macs)]

    png = pcap.with_name("lab-timeline.png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    width, height = png_size(png)
    assert width >= 600 and height >= 200
    assert f"timeline: {png} ({width}×{height} px): {N + 1} device rows" in out
    assert "skipped" not in out.split("timeline:")[1].splitlines()[0]
