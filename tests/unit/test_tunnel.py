"""The tessera0 data path in memory (tessera/tunnel.py): three nodes with sessions, inner Ethernet
frames in PeerFrame records (type 38). Vectors are built here from docs/layouts.md with struct,
hashlib and AESGCM; each refusal sits next to the acceptance it differs from by one thing."""

from __future__ import annotations

import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tessera import errors as E
from tessera import message as m
from tessera.node import DeliverFrame, FrameReceived
from tessera.record import DATA_WINDOW, RecordReceiver, RecordSender
from tessera.tunnel import TUNNEL_MTU, Tunnel, tap_hw, tap_mac, tunnel_mtu
from tests.unit.test_node import Net

SID, KEY, IV = bytes(range(8)), bytes(range(32)), bytes(range(100, 112))
BROADCAST = b"\xff" * 6
IPV4 = 0x0800


def layout_frame_record(seq: int, inner: bytes, mtype: int = 38) -> bytes:
    """docs/layouts.md#peer-records with type 38: header, AES-256-GCM under IV XOR seq, AAD the header."""
    header = struct.pack("!BB8sQ", 1, mtype, SID, seq)
    nonce = IV[:4] + struct.pack("!Q", int.from_bytes(IV[4:], "big") ^ seq)
    return header + AESGCM(KEY).encrypt(nonce, inner, header)


def eth(dst: bytes, src: bytes, payload: bytes = b"\x45" + bytes(59), ethertype: int = IPV4) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


# -- layout ----------------------------------------------------------------------------------
def test_tap_mac_and_mtu_are_the_documented_derivations():
    h = hashlib.sha256(b"tessera tap mac\x00example.net\x00SN-A").digest()
    want = bytes([(h[0] & 0xFC) | 0x02]) + h[1:6]
    assert tap_hw("example.net", "SN-A") == want
    assert tap_mac("example.net", "SN-A") == ":".join(f"{b:02x}" for b in want)
    assert want[0] & 0x03 == 0x02  # locally administered, unicast
    assert tap_hw("example.net", "SN-B") != want and tap_hw("example.org", "SN-A") != want  # control
    assert TUNNEL_MTU == tunnel_mtu(1500) == 1500 - 18 - 16 - 14 == 1452
    assert tunnel_mtu(9000) == 8952
    with pytest.raises(ValueError):
        tunnel_mtu(100)
    # the largest inner frame fills exactly one 1500-byte underlay payload; one byte more would not
    tx = RecordSender(SID, KEY, IV)
    assert len(tx.seal_frame(bytes(TUNNEL_MTU + 14))) == 1500


def test_peer_frame_record_is_the_peer_data_layout_with_type_38_in_one_seq_space():
    tx = RecordSender(SID, KEY, IV)
    inner = eth(BROADCAST, b"\x02" + bytes(5))
    assert tx.seal_frame(inner) == layout_frame_record(1, inner)
    assert tx.seal(b"text") == layout_frame_record(2, b"text", mtype=35)  # one counter for both types
    assert tx.seal_frame(inner) == layout_frame_record(3, inner)
    rx = RecordReceiver(SID, KEY, IV)
    assert rx.open(layout_frame_record(1, inner)) == inner
    assert rx.open(layout_frame_record(2, b"text", mtype=35)) == b"text"
    with pytest.raises(E.ReplayError):  # the seq of a type-35 record is spent for type 38 too
        rx.open(layout_frame_record(2, inner))
    # the type is in the AAD: a PeerData record relabelled 38 does not authenticate
    relabelled = bytearray(layout_frame_record(4, b"text", mtype=35))
    relabelled[1] = 38
    with pytest.raises(E.BadProofError):
        rx.open(bytes(relabelled))
    with pytest.raises(E.MalformedError):
        rx.open(layout_frame_record(5, inner, mtype=39))
    assert rx.open(layout_frame_record(4, b"text", mtype=35)) == b"text"  # control: as sealed
    msg = m.decode(layout_frame_record(6, inner))
    assert isinstance(msg, m.PeerFrame) and (msg.session_id, msg.seq) == (SID, 6)
    assert m.PeerFrame(SID, 6, msg.sealed).encode() == layout_frame_record(6, inner)


# -- three nodes ------------------------------------------------------------------------------
@pytest.fixture
def net(realm, service, rand):
    n = Net(realm, service, rand)
    for dev, how in (("SN-A", "bundle"), ("SN-B", "certificate"), ("SN-C", "bundle")):
        n.add(dev, how)
    for dev in n.nodes:
        Tunnel(n.nodes[dev])
        n.carrier(dev, True)
    n.run(seconds=3)
    assert {d: sorted(x.sessions) for d, x in n.nodes.items()} == {
        "SN-A": ["SN-B", "SN-C"], "SN-B": ["SN-A", "SN-C"], "SN-C": ["SN-A", "SN-B"]}
    return n


def tun(net, dev):
    return net.nodes[dev].tunnel


def deliver(net, src: str, dst: str, record: bytes) -> bytes | None:
    """Hand one record from src's underlay MAC to dst's tunnel (the adapter's fast path)."""
    out: list = []
    got = tun(net, dst).inbound(net.macs[src], record, net.time_of(dst), out)
    net.act(dst, out)
    return got


def test_unicast_goes_to_that_peer_only_encrypted_and_comes_out_of_its_tap(net):
    a, b, c = (tun(net, d) for d in ("SN-A", "SN-B", "SN-C"))
    frame = eth(b.hw, a.hw, b"\x45" + b"secret-inner-payload" + bytes(40))
    copies = a.outbound(frame, net.now)
    assert [mac for mac, _ in copies] == [net.macs["SN-B"]]
    record = copies[0][1]
    assert record[:2] == b"\x01\x26" and b"secret-inner-payload" not in record  # type 38, ciphertext
    assert record[2:10] == net.nodes["SN-A"].sessions["SN-B"].channel.session_id
    assert len(record) == len(frame) + 34
    assert deliver(net, "SN-A", "SN-C", record) is None  # C holds no key of that session
    assert deliver(net, "SN-A", "SN-B", record) == frame
    assert b.counters["SN-A"].as_dict() == {"frames_in": 1, "frames_out": 0, "bytes_in": len(frame), "bytes_out": 0,
                                                "auth_drops": 0, "replay_drops": 0, "spoof_drops": 0,
                                                "size_drops": 0}
    assert a.counters["SN-B"].frames_out == 1 and a.counters["SN-B"].bytes_out == len(frame)
    assert a.counters["SN-C"].frames_out == 0


def test_group_frames_fan_out_one_copy_per_peer_and_unknown_unicast_goes_nowhere(net):
    """Group frames: one copy per peer, each under that peer's key. Unicast to a MAC that is no
    peer's tap MAC has no receiver (tap MACs derive from device ids; nothing sits behind a peer's
    tap): dropped and counted, not flooded to every peer as a learning bridge would."""
    a = tun(net, "SN-A")
    stranger = eth(b"\x02\x99\x99\x99\x99\x99", a.hw)
    assert a.outbound(stranger, net.now) == () and a.unknown_drops == 1
    assert net.nodes["SN-A"].status(net.now)["tunnel"]["unknown_drops"] == 1
    for dst in (BROADCAST, b"\x33\x33\x00\x00\x00\x01", b"\x01\x00\x5e\x00\x00\x05"):
        frame = eth(dst, a.hw)
        copies = a.outbound(frame, net.now)
        assert sorted(mac for mac, _ in copies) == sorted([net.macs["SN-B"], net.macs["SN-C"]]), dst.hex()
        by_mac = dict(copies)
        assert by_mac[net.macs["SN-B"]][2:10] != by_mac[net.macs["SN-C"]][2:10]  # each under its own key
        assert deliver(net, "SN-A", "SN-B", by_mac[net.macs["SN-B"]]) == frame
        assert deliver(net, "SN-A", "SN-C", by_mac[net.macs["SN-C"]]) == frame
        assert deliver(net, "SN-A", "SN-C", by_mac[net.macs["SN-B"]]) is None  # B's copy does not open at C
    assert a.no_session_drops == 0


def test_inner_source_must_be_the_senders_tap_mac(net):
    a, b, c = (tun(net, d) for d in ("SN-A", "SN-B", "SN-C"))
    sender = net.nodes["SN-A"].sessions["SN-B"].channel.sender
    spoofed = sender.seal_frame(eth(b.hw, c.hw))  # A's key, C's tap MAC as source
    assert deliver(net, "SN-A", "SN-B", spoofed) is None
    short = sender.seal_frame(b.hw + a.hw)  # 12 bytes: no EtherType
    assert deliver(net, "SN-A", "SN-B", short) is None
    assert b.counters["SN-A"].spoof_drops == 2 and b.counters["SN-A"].frames_in == 0
    honest = eth(b.hw, a.hw)
    assert deliver(net, "SN-A", "SN-B", sender.seal_frame(honest)) == honest  # control: A's own MAC


def test_replayed_and_tampered_records_are_dropped_and_counted(net):
    a, b = tun(net, "SN-A"), tun(net, "SN-B")
    frame = eth(b.hw, a.hw)
    ((_, record),) = a.outbound(frame, net.now)
    tampered = bytearray(record)
    tampered[-1] ^= 1
    assert deliver(net, "SN-A", "SN-B", bytes(tampered)) is None
    assert deliver(net, "SN-A", "SN-B", record) == frame  # the forgery moved no window
    assert deliver(net, "SN-A", "SN-B", record) is None  # the same record again
    counters = b.counters["SN-A"]
    assert (counters.auth_drops, counters.replay_drops, counters.frames_in) == (1, 1, 1)


def test_reordering_within_the_data_window_is_accepted_beyond_it_refused(net):
    a, b = tun(net, "SN-A"), tun(net, "SN-B")
    frame = eth(b.hw, a.hw)
    records = [a.outbound(frame, net.now)[0][1] for _ in range(DATA_WINDOW + 2)]
    assert deliver(net, "SN-A", "SN-B", records[-2]) == frame  # seq DATA_WINDOW + 1 arrives first
    assert deliver(net, "SN-A", "SN-B", records[100]) == frame  # 100 later ones overtook it: still inside
    assert deliver(net, "SN-A", "SN-B", records[0]) is None  # seq 1: DATA_WINDOW behind the top, outside
    assert b.counters["SN-A"].replay_drops == 1


def test_frame_for_a_known_peer_without_session_is_dropped_and_counted(net):
    a, c = tun(net, "SN-A"), tun(net, "SN-C")
    net.nodes["SN-A"]._end_sessions("SN-C")
    assert a.outbound(eth(c.hw, a.hw), net.now) == ()
    assert a.no_session_drops == 1
    assert len(a.outbound(eth(tun(net, "SN-B").hw, a.hw), net.now)) == 1  # control: B still has its session
    st = net.nodes["SN-A"].status(net.now)
    assert st["tunnel"]["no_session_drops"] == 1 and st["tunnel"]["mac"] == a.mac and st["tunnel"]["mtu"] == 1452
    assert st["sessions"]["SN-B"]["tunnel"]["frames_out"] == 1 and "SN-C" not in st["sessions"]
    # no session at all: a broadcast has nowhere to go either, and is counted
    net.nodes["SN-A"]._end_sessions("SN-B")
    assert a.outbound(eth(BROADCAST, a.hw), net.now) == () and a.no_session_drops == 2
    assert not a.carrier


def test_oversized_and_runt_frames_from_the_tap_are_not_sent(net):
    a, b = tun(net, "SN-A"), tun(net, "SN-B")
    assert a.outbound(eth(b.hw, a.hw, bytes(TUNNEL_MTU + 1)), net.now) == ()
    assert a.outbound(b.hw + a.hw, net.now) == ()
    assert a.size_drops == 2
    assert len(a.outbound(eth(b.hw, a.hw, bytes(TUNNEL_MTU)), net.now)) == 1  # control: the MTU fits


def test_through_handle_a_peer_frame_becomes_deliver_frame_and_without_tunnel_is_not_opened(net):
    a, b = tun(net, "SN-A"), tun(net, "SN-B")
    frame = eth(b.hw, a.hw)
    ((_, record),) = a.outbound(frame, net.now)
    node_b = net.nodes["SN-B"]
    acts = node_b.handle(FrameReceived(net.macs["SN-A"], record), net.now)
    assert [(x.peer, x.frame) for x in acts if isinstance(x, DeliverFrame)] == [("SN-A", frame)]
    ((_, record2),) = a.outbound(frame, net.now)
    node_b.tunnel = None
    top = node_b.sessions["SN-A"].channel.receiver.window.top
    acts = node_b.handle(FrameReceived(net.macs["SN-A"], record2), net.now)
    assert not any(isinstance(x, DeliverFrame) for x in acts)
    assert node_b.sessions["SN-A"].channel.receiver.window.top == top  # not opened: nothing spent


def test_rekey_keeps_the_old_key_for_frames_in_flight_and_routes_to_the_new(net):
    a, b = tun(net, "SN-A"), tun(net, "SN-B")
    frame = eth(b.hw, a.hw)
    old_sid = net.nodes["SN-A"].sessions["SN-B"].channel.session_id
    in_flight = [a.outbound(frame, net.now)[0][1] for _ in range(3)]
    net.nodes["SN-A"].sessions["SN-B"].rekey_wanted = True  # SN-A < SN-B: A starts the rekey
    net.run(seconds=1, step=0.05)
    new_sid = net.nodes["SN-A"].sessions["SN-B"].channel.session_id
    assert new_sid != old_sid and net.nodes["SN-B"].sessions["SN-A"].channel.session_id == new_sid
    ((_, fresh),) = a.outbound(frame, net.now)
    assert fresh[2:10] == new_sid  # new frames go under the new key
    assert [deliver(net, "SN-A", "SN-B", r) for r in in_flight] == [frame] * 3  # the old ones still open
    assert deliver(net, "SN-A", "SN-B", fresh) == frame
    assert b.counters["SN-A"].frames_in == 4  # one counter per peer, across the rekey


def test_revocation_ends_the_tunnel_with_that_peer_only(net, realm):
    a, b, c = (tun(net, d) for d in ("SN-A", "SN-B", "SN-C"))
    ((_, from_c),) = c.outbound(eth(a.hw, c.hw), net.now)
    realm.revoke("SN-C", net.now)
    net.run(seconds=35, step=0.5)  # the revocation poll (30 s) comes round
    assert "SN-C" in net.nodes["SN-A"].revoked and "SN-C" not in net.nodes["SN-A"].sessions
    assert a.outbound(eth(c.hw, a.hw), net.now) == ()  # to C: nothing leaves
    assert [mac for mac, _ in a.outbound(eth(BROADCAST, a.hw), net.now)] == [net.macs["SN-B"]]
    assert deliver(net, "SN-C", "SN-A", from_c) is None  # from C: nothing comes in
    assert len(a.outbound(eth(b.hw, a.hw), net.now)) == 1  # control: B goes on


# -- the agent's adapter (agent/tap.py, agent/daemon.py), no root needed --------------------------
def test_address_parsing_names_what_is_wrong():
    from tessera.agent.tap import parse_address
    assert str(parse_address("198.51.100.1/24")) == "198.51.100.1/24"
    assert str(parse_address("2001:db8:100::a/64")) == "2001:db8:100::a/64"
    for bad, why in (("198.51.100.1", "prefix length"), ("198.51.100.300/24", "not an IPv4 or IPv6"),
                     ("2001:db8::1/129", "not an IPv4 or IPv6")):
        with pytest.raises(ValueError, match=why):
            parse_address(bad)


@pytest.mark.parametrize("text", ["198.51.100.7/24", "2001:db8:100::7/64"])
def test_newaddr_request_is_what_pyroute2_encodes(text):
    """rtnetlink(7) RTM_NEWADDR: nlmsghdr, ifaddrmsg, IFA_LOCAL, IFA_ADDRESS, IFA_FLAGS; checked
    against pyroute2's own ifaddrmsg encoder (the agent does not load it)."""
    import socket as s
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from tessera.agent.tap import newaddr_request, parse_address
    addr = parse_address(text)
    msg = ifaddrmsg()
    msg["header"]["type"] = 20
    msg["header"]["flags"] = 0x1 | 0x4 | 0x400 | 0x200
    msg["header"]["sequence_number"] = 3
    msg["family"] = s.AF_INET if addr.version == 4 else s.AF_INET6
    msg["prefixlen"] = addr.network.prefixlen
    msg["flags"] = 0x02 if addr.version == 6 else 0
    msg["index"] = 9
    msg["attrs"] = [("IFA_LOCAL", str(addr.ip)), ("IFA_ADDRESS", str(addr.ip)), ("IFA_FLAGS", msg["flags"])]
    msg.encode()
    assert newaddr_request(9, addr, 3) == bytes(msg.data)


def test_without_dev_net_tun_the_agent_logs_it_and_runs_without_the_tunnel(net, monkeypatch, caplog):
    from types import SimpleNamespace

    from tessera.agent import tap as tap_mod
    from tessera.agent.daemon import Agent
    monkeypatch.setattr(tap_mod, "TUN_PATH", "/nonexistent/net/tun")
    with pytest.raises(tap_mod.TapError, match="/nonexistent/net/tun"):
        tap_mod.Tap("tessera0", bytes(6), 1452)
    node = net.nodes["SN-A"]
    agent = SimpleNamespace(tunnel=node.tunnel, node=node, client=node.client, tunnel_name="tessera0",
                            tunnel_addresses=(), tap=None)
    caplog.set_level("INFO", "tessera.agent")
    Agent._open_tap(agent)
    assert agent.tap is None and agent.tunnel is None and node.tunnel is None
    assert "no tunnel" in caplog.text and "/nonexistent/net/tun" in caplog.text and "running without tessera0" in caplog.text
    # a PeerFrame then is dropped without being opened (no window moves for a frame nobody takes)
    assert "tunnel" not in node.status(net.now)


def test_capture_summary_counts_peer_frames_apart_from_peer_data():
    from scapy.layers.l2 import Ether

    from tessera.agent.layer import Tessera, TesseraData, summarize
    inner = eth(BROADCAST, b"\x02" + bytes(5))
    frames = [Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:5e:10:00:01", type=0x88B5) / raw
              for raw in (layout_frame_record(7, inner), layout_frame_record(8, inner),
                          layout_frame_record(9, b"hello", mtype=35))]
    parsed = [Ether(bytes(f)) for f in frames]
    assert summarize(parsed) == {"PeerFrame": 2, "PeerData": 1}
    assert (parsed[0][Tessera].type, parsed[0][TesseraData].session_id, parsed[0][TesseraData].seq) == (38, SID, 7)


def test_first_peer_frame_under_the_key_being_confirmed_establishes_it(net):
    """The PeerConfirm is lost: B's first PeerFrame under the new key is as good as it (the path
    PeerData takes too, Node._open_record), and A then sends under the new key."""
    a, b = tun(net, "SN-A"), tun(net, "SN-B")
    node_a, node_b = net.nodes["SN-A"], net.nodes["SN-B"]
    old_sid = node_a.sessions["SN-B"].channel.session_id
    net.wire = lambda dev, dst, payload: 0 if payload[1] == m.PeerConfirm.TYPE else 1
    node_a.sessions["SN-B"].rekey_wanted = True
    net.run(seconds=0.2, step=0.05)
    new_sid = node_b.sessions["SN-A"].channel.session_id
    assert new_sid != old_sid and node_a.sessions["SN-B"].channel.session_id == old_sid  # A still waits
    ((_, sent_old),) = a.outbound(eth(b.hw, a.hw), net.now)
    assert sent_old[2:10] == old_sid
    frame = eth(a.hw, b.hw)
    ((_, record),) = b.outbound(frame, net.now)
    assert record[2:10] == new_sid
    assert deliver(net, "SN-B", "SN-A", record) == frame
    assert node_a.sessions["SN-B"].channel.session_id == new_sid  # established by that record
    ((_, sent_new),) = a.outbound(eth(b.hw, a.hw), net.now)
    assert sent_new[2:10] == new_sid


# -- the review of the secured link (issue 12): each refusal beside its acceptance --------------
ARP = 0x0806


def arp(op: int, sha: bytes, spa: str, tha: bytes, tpa: str) -> bytes:
    """An Ethernet/IPv4 ARP body (RFC 826): htype 1, ptype 0x0800, hlen 6, plen 4."""
    ip = lambda text: bytes(int(x) for x in text.split("."))
    return struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sha, ip(spa), tha, ip(tpa))


def test_a_departed_peers_mac_is_a_no_session_drop_not_flooded_to_the_others(net):
    a = tun(net, "SN-A")
    node = net.nodes["SN-A"]
    c_hw = tap_hw(node.client.realm, "SN-C")
    assert len(a.outbound(eth(c_hw, a.hw), net.now)) == 1  # control: C's session routes it to C only
    node._end_sessions("SN-C")   # the session expired and was not renegotiated...
    node.neighbours.pop("SN-C")  # ...and C went quiet: forgotten
    drops = a.no_session_drops
    assert a.outbound(eth(c_hw, a.hw, b"\x45" + b"tcp-retransmit-for-C" + bytes(40)), net.now) == ()
    assert a.no_session_drops == drops + 1  # not B's to read
    stranger = b"\x02\xaa\xbb\xcc\xdd\xee"  # a MAC no peer ever had: no receiver, not flooded either
    assert a.outbound(eth(stranger, a.hw), net.now) == () and a.unknown_drops == 1
    assert [mac for mac, _ in a.outbound(eth(BROADCAST, a.hw), net.now)] == [net.macs["SN-B"]]  # control


def test_a_peer_mac_learned_only_from_its_frames_is_remembered_too(net):
    """C's MAC reached A's kernel only in a frame C sent (its ARP); A never routed a frame to C
    before C's session ended: a frame to C is still not flooded to B."""
    node = net.nodes["SN-A"]
    fresh = Tunnel(node)  # nothing routed yet, nothing remembered
    c_hw = tun(net, "SN-C").hw
    frame = eth(BROADCAST, c_hw)
    rec = dict(tun(net, "SN-C").outbound(frame, net.now))[net.macs["SN-A"]]
    assert deliver(net, "SN-C", "SN-A", rec) == frame
    node._end_sessions("SN-C")
    node.neighbours.pop("SN-C")
    assert fresh.outbound(eth(c_hw, fresh.hw), net.now) == () and fresh.no_session_drops == 1
    assert fresh.outbound(eth(b"\x02\xaa\xbb\xcc\xdd\xee", fresh.hw), net.now) == ()  # a stranger: counted apart
    assert fresh.unknown_drops == 1 and fresh.no_session_drops == 1


def test_the_memory_of_peer_macs_is_bounded_lru(net, monkeypatch):
    from tessera import tunnel as tunnel_mod
    monkeypatch.setattr(tunnel_mod, "SEEN_MACS", 3)
    a = tun(net, "SN-A")
    assert len(a.outbound(eth(tun(net, "SN-B").hw, a.hw), net.now)) == 1  # routes built (B and C remembered)
    olds = [bytes([2, 0, 0, 0, 0, i]) for i in range(3)]
    a.remember(olds)
    a.remember([olds[0]])  # used again: kept
    a.remember([b"\x02\x00\x00\x00\x00\x09"])  # the least recently used (olds[1]) goes
    assert list(a._seen) == [olds[2], olds[0], b"\x02\x00\x00\x00\x00\x09"]
    assert a.outbound(eth(olds[1], a.hw), net.now) == () and a.unknown_drops == 1  # forgotten: unknown again
    assert a.outbound(eth(olds[0], a.hw), net.now) == () and a.no_session_drops == 1  # remembered: no session


def test_an_inner_arp_whose_sender_is_not_the_frames_source_is_a_spoof_drop(net):
    a, b, c = (tun(net, d) for d in ("SN-A", "SN-B", "SN-C"))
    sender = net.nodes["SN-B"].sessions["SN-A"].channel.sender
    # B's frame (its own source MAC) with an ARP reply 'C's tunnel IP is at C's MAC' / at a stranger's
    for sha in (c.hw, b"\x02\xaa\xbb\xcc\xdd\xee"):
        spoof = eth(a.hw, b.hw, arp(2, sha, "198.51.100.3", a.hw, "198.51.100.1"), ethertype=ARP)
        assert deliver(net, "SN-B", "SN-A", sender.seal_frame(spoof)) is None
    # an ARP that is not Ethernet/IPv4, or cut short: refused too
    odd = eth(a.hw, b.hw, arp(2, b.hw, "198.51.100.2", a.hw, "198.51.100.1")[:20], ethertype=ARP)
    assert deliver(net, "SN-B", "SN-A", sender.seal_frame(odd)) is None
    assert a.counters["SN-B"].spoof_drops == 3 and a.counters["SN-B"].frames_in == 0
    # control: B's ARP for itself (sender = its tap MAC), and a broadcast request
    own = eth(a.hw, b.hw, arp(2, b.hw, "198.51.100.2", a.hw, "198.51.100.1"), ethertype=ARP)
    assert deliver(net, "SN-B", "SN-A", sender.seal_frame(own)) == own
    req = eth(BROADCAST, b.hw, arp(1, b.hw, "198.51.100.2", bytes(6), "198.51.100.1") + bytes(18), ethertype=ARP)
    assert deliver(net, "SN-B", "SN-A", sender.seal_frame(req)) == req
    # what is NOT checked (documented): B claiming C's IP address with its own MAC
    claim = eth(a.hw, b.hw, arp(2, b.hw, "198.51.100.3", a.hw, "198.51.100.1"), ethertype=ARP)
    assert deliver(net, "SN-B", "SN-A", sender.seal_frame(claim)) == claim


def test_an_inner_frame_over_the_tap_mtu_is_a_size_drop(net):
    a, b = tun(net, "SN-A"), tun(net, "SN-B")
    sender = net.nodes["SN-A"].sessions["SN-B"].channel.sender
    big = eth(b.hw, a.hw, bytes(TUNNEL_MTU + 1))  # 1467 bytes: a peer with a bigger MTU, or a forged one
    assert deliver(net, "SN-A", "SN-B", sender.seal_frame(big)) is None
    assert b.counters["SN-A"].size_drops == 1 and b.counters["SN-A"].frames_in == 0
    fits = eth(b.hw, a.hw, bytes(TUNNEL_MTU))  # control: exactly mtu + 14
    assert deliver(net, "SN-A", "SN-B", sender.seal_frame(fits)) == fits
    assert net.nodes["SN-B"].status(net.now)["sessions"]["SN-A"]["tunnel"]["size_drops"] == 1


def test_group_frames_pass_a_token_bucket_and_drops_are_counted(net):
    from tessera.tunnel import GROUP_BURST, GROUP_RATE
    a = tun(net, "SN-A")
    ns = eth(b"\x33\x33\xff\x00\x00\x01", a.hw, ethertype=0x86DD)  # an ND solicitation's group address
    t = net.now
    sent = sum(bool(a.outbound(ns, t)) for _ in range(GROUP_BURST + 50))
    assert sent == GROUP_BURST and a.group_drops == 50
    assert len(a.outbound(eth(tun(net, "SN-B").hw, a.hw), t)) == 1  # unicast to a peer: not limited
    assert len(a.outbound(ns, t + 10 / GROUP_RATE)) == 2  # refilled at GROUP_RATE per second
    assert a.outbound(ns, t - 100) == () and a.group_drops == 51  # a clock that steps back refills nothing
    assert net.nodes["SN-A"].status(net.now)["tunnel"]["group_drops"] == 51
    hello = eth(b"\x01\x00\x5e\x00\x00\x05", a.hw)  # OSPF AllSPFRouters: outside the bucket, even when empty
    assert len(a.outbound(hello, t - 100)) == 2 and a.group_drops == 51


def test_send_failures_the_adapter_counts_show_in_status(net):
    a = tun(net, "SN-A")
    assert net.nodes["SN-A"].status(net.now)["tunnel"]["send_failures"] == 0
    a.send_failures += 2  # what the daemon's _send_record does when the wire refuses a record
    assert net.nodes["SN-A"].status(net.now)["tunnel"]["send_failures"] == 2


def test_the_fast_path_opens_nothing_and_nudges_nobody_while_the_port_is_not_up(net):
    from tessera.node import Port, SendFrame
    a, b = tun(net, "SN-A"), tun(net, "SN-B")
    node_b = net.nodes["SN-B"]
    frame = eth(b.hw, a.hw)
    forged = bytes([1, 38]) + b"\xee" * 8 + (1).to_bytes(8, "big") + bytes(40)  # under no key B holds
    for port in (Port.BLOCKED, Port.ADMITTING, Port.DOWN):
        node_b.port = port
        ((_, rec),) = a.outbound(frame, net.now)
        assert deliver(net, "SN-A", "SN-B", rec) is None
        out: list = []
        assert b.inbound("02:66:66:66:66:66", forged, net.time_of("SN-B"), out) is None
        assert not any(isinstance(x, SendFrame) for x in out), port
    assert b.counters_of("SN-A").frames_in == 0
    node_b.port = Port.UP  # control: the same records open, and the nudge goes out
    ((_, rec),) = a.outbound(frame, net.now)
    assert deliver(net, "SN-A", "SN-B", rec) == frame
    out = []
    b.inbound("02:66:66:66:66:67", forged, net.time_of("SN-B") + 60, out)
    assert any(isinstance(x, SendFrame) for x in out)


def _agent(net, monkeypatch, addresses, tap_error=None, guard_error=None):
    """The daemon's _open_tap with the tap and the guard stood in for."""
    from types import SimpleNamespace

    from tessera.agent import guard as guard_mod
    from tessera.agent import daemon

    made = []

    class FakeGuard:
        def __init__(self, name, addrs, port=None):
            self.installed, self.removed, self.port = False, False, port
            made.append(self)

        def install(self):
            if guard_error:
                raise guard_error
            self.installed = True

        def remove(self):
            self.removed = True

    def fake_tap(*args):
        if tap_error:
            raise tap_error
        return SimpleNamespace(gone=False, close=lambda: None)

    monkeypatch.setattr(guard_mod, "Guard", FakeGuard)
    monkeypatch.setattr(daemon, "Tap", fake_tap)
    node = net.nodes["SN-A"]
    agent = SimpleNamespace(tunnel=node.tunnel or Tunnel(node), node=node, client=node.client, tunnel_name="tessera0",
                            tunnel_addresses=tuple(addresses), tap=None, closed=0, ifname="eth0")
    agent.close = lambda: daemon.Agent.close(SimpleNamespace(**{**vars(agent), "supplicant": None, "transport": None,
                                                               "watcher": None, "status": None, "radsec": None,
                                                               "events": None, "tap": agent.tap,
                                                               "guard": getattr(agent, "guard", None)}))
    return agent, made


def test_with_tunnel_addresses_a_tap_that_fails_ends_the_agent_and_keeps_the_guard(net, monkeypatch, caplog):
    from tessera.agent.daemon import Agent
    from tessera.agent.tap import TapError, parse_address
    addrs = [parse_address("198.51.100.1/24")]
    agent, made = _agent(net, monkeypatch, addrs, tap_error=TapError(17, "tap tessera0: add address: File exists"))
    with pytest.raises(SystemExit, match="File exists") as exc:
        Agent._open_tap(agent)
    assert exc.value.code != 0 and "exiting" in caplog.text
    assert made[0].installed and not made[0].removed  # fail closed: the guard stays
    # nft missing: refused the same way, with the package named
    from tessera.agent.guard import GuardError
    agent, made = _agent(net, monkeypatch, addrs, guard_error=GuardError(0, "nft not found: install the Debian package nftables"))
    with pytest.raises(SystemExit, match="nftables"):
        Agent._open_tap(agent)
    # control: without addresses the same failure leaves an agent running without the tunnel
    agent, made = _agent(net, monkeypatch, [], tap_error=TapError(17, "tap tessera0: TUNSETIFF: busy"))
    Agent._open_tap(agent)
    assert agent.tunnel is None and made == []
    # and with addresses and a working tap: guarded (with the port: nothing forwarded from it into the
    # tunnel), up; even a clean close keeps the guard (`tessera-agent unguard` removes it)
    agent, made = _agent(net, monkeypatch, addrs)
    Agent._open_tap(agent)
    assert agent.tap is not None and made[0].installed and made[0].port == "eth0"
    agent.close()
    assert not made[0].removed


def test_guard_ruleset_names_the_interface_and_every_prefix():
    from tessera.agent.guard import ruleset, table_name
    from tessera.agent.tap import parse_address
    t = table_name("tessera0")
    assert t == "tessera_guard_" + b"tessera0".hex()
    rs = ruleset("tessera0", [parse_address("198.51.100.1/24"), parse_address("2001:db8:100::1/64")], "eth0")
    assert rs.startswith(f"table inet {t}\ndelete table inet {t}\n")
    for want in ('iifname { "tessera0", "lo" } accept', "ip daddr { 198.51.100.0/24 } drop",
                 "ip saddr { 198.51.100.0/24 } drop", "ip6 daddr { 2001:db8:100::/64 } drop",
                 "ip6 saddr { 2001:db8:100::/64 } drop", 'oifname { "tessera0", "lo" } accept',
                 'iifname "eth0" oifname "tessera0" drop', 'iifname != "tessera0" ip saddr { 198.51.100.0/24 } drop',
                 'iifname != "tessera0" ip6 saddr { 2001:db8:100::/64 } drop',
                 "arp daddr ip { 198.51.100.1 } drop", f"table arp {t} {{"):
        assert want in rs, want
    forward = rs[rs.index("chain forward"):rs.index("chain output")]
    assert forward.index('iifname "eth0"') < forward.index('oifname "tessera0" accept')  # checked before the accept
    assert f"table arp {table_name('x')} {{" not in ruleset("x", [parse_address("2001:db8::1/64")])  # no IPv4: no ARP
    assert len({table_name(n) for n in ("a-b", "a.b", "a_b")}) == 3  # one table per interface name
    for bad in ('tess"era', "a b", "", "x" * 16):  # nothing reaches nft's script unchecked
        with pytest.raises(ValueError):
            table_name(bad)


def test_guard_without_nft_refuses_and_names_the_package(monkeypatch, tmp_path):
    from tessera.agent import guard as guard_mod
    from tessera.agent.tap import parse_address
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(guard_mod, "NFT_PATHS", ())
    g = guard_mod.Guard("tessera0", [parse_address("198.51.100.1/24")])
    with pytest.raises(guard_mod.GuardError, match="nft not found.*Debian package nftables"):
        g.install()
    assert not g.installed
    # control: an nft that takes the script (a stand-in on PATH, recording its input)
    fake = tmp_path / "nft"
    fake.write_text(f"#!/bin/sh\n/bin/cat > {tmp_path}/script\n")
    fake.chmod(0o755)
    g.install()
    assert g.installed and "ip daddr { 198.51.100.0/24 } drop" in (tmp_path / "script").read_text()
    fake.write_text("#!/bin/sh\necho 'Error: Could not process rule: No such file or directory' >&2\nexit 1\n")
    with pytest.raises(guard_mod.GuardError, match="nft refused the guard: Error: Could not process rule"):
        guard_mod.Guard("tessera0", [parse_address("198.51.100.1/24")]).install()
