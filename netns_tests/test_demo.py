"""The README's first command: the namespace lab demo, end to end, with two devices."""

import os

import pytest

from tessera.lab import demo
from tessera.lab.netns import list_netns

from tests.gate import needs_lab  # noqa: E402

pytestmark = needs_lab


def test_lab_demo_admits_peers_and_leaves_nothing(tmp_path, capsys):
    before = set(list_netns())
    assert demo.main(["-n", "2", "--pcap", str(tmp_path / "lab.pcap")]) == 0
    out = capsys.readouterr().out
    assert "admitted: port authorized by EAP-TLS" in out and "session: established" in out
    assert "2 of 2 messages delivered" in out and "the stranger stayed out" in out
    assert (tmp_path / "lab.pcap").stat().st_size > 0 and "PeerData 2" in out
    assert set(list_netns()) == before
