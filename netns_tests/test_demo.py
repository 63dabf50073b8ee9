"""The README's first command: the namespace lab demo, end to end, with two devices.

The pcap is the evidence the demo hands the user: it must hold every frame that crossed the
switch. The test reads it itself (not the demo's summary line) and counts the frames by their
documented layout: Linux cooked v2 header (protocol at bytes 0-1), then the Tessera frame
(version, type; type 35 is PeerData -- docs/layouts.md).
"""

import os

from scapy.layers.l2 import CookedLinuxV2
from scapy.utils import rdpcap

from tessera.lab import demo
from tessera.lab.netns import list_netns, owner_pid

from tests.gate import needs_lab

pytestmark = needs_lab

PEER_DATA = 35


def ours() -> set[str]:
    """This process's lab namespaces (``ts<pid>-...``); other runs on the machine come and go."""
    return {ns for ns in list_netns() if owner_pid(ns) == os.getpid()}


def test_lab_demo_admits_peers_and_leaves_nothing(tmp_path, capsys):
    before = ours()
    pcap = tmp_path / "lab.pcap"
    assert demo.main(["-n", "2", "--pcap", str(pcap)]) == 0
    out = capsys.readouterr().out
    assert "admitted: port authorized by EAP-TLS" in out and "session: established" in out
    assert "2 of 2 messages delivered" in out and "the stranger stayed out" in out
    assert ", 0 dropped by the kernel" in out
    assert ours() == before

    frames = [bytes(p) for p in rdpcap(str(pcap))]
    assert all(p.haslayer(CookedLinuxV2) for p in rdpcap(str(pcap)))
    proto = [int.from_bytes(f[0:2], "big") for f in frames]
    tessera = [f[20:] for f, pr in zip(frames, proto) if pr == 0x88B5]
    data = [t for t in tessera if t[1] == PEER_DATA]
    assert len(data) == 2, f"PeerData frames in the pcap: {len(data)} (want one per message)"
    assert proto.count(0x888E) >= 4  # EAPOL of both admissions (and the stranger's)
    # the messages crossed the switch encrypted: their text is in no captured frame
    assert not any(b"this is dev-" in f for f in frames)
