"""Real clients over the secured link (issue 12): iperf3 TCP and bird2 OSPF over each agent's
``tessera0``, unmodified, in the lab.

* iperf3 TCP over tessera0 and over the plain underlay in the same run, both printed (Gbit/s,
  retransmits, MSS). The plain path is **the same underlay with plain IP**: the devices' own
  eth0 addresses (192.0.2.10k) through the lab switch (veth → bridge with the 802.1X nftables
  port rules → veth), between the same two admitted devices. tessera0's frames take exactly
  that path too, so the only difference between the two figures is the tunnel itself (the
  agents' forwarding, AES-GCM, MTU 1452). A direct veth made in the test would skip the bridge
  and its nftables rules and flatter the plain figure. Asserted: data moved over tessera0 (the
  receiving agent's counters saw at least what iperf3 delivered), the MSS fits MTU 1452 (≤ 1400
  for IPv4; the plain path's 1448 next to it); a device that is no peer (never admitted) is not
  reachable on tessera0. Retransmits are reported as a figure, not asserted (2 shared cores).
* bird2 OSPFv2 between three devices over tessera0 (broadcast segment, hello 1 / wait 2 /
  dead 4): every neighbour Full, each device has kernel routes to the other two stub networks
  (203.0.113.{16k}/28, a veth pair inside each namespace) via tessera0 with the owner's tunnel
  address as gateway; a ping from device 1 to device 3's stub address crosses the routed path.
  Next to it, refusals: before OSPF the stub is unreachable, and once device 3's bird stops its
  route goes away from the others and the ping fails again.
  The stubs lie inside 203.0.113.0/24, which is also on every device's eth0; with Linux's
  default ``arp_ignore=0`` device 3 would answer ARP on eth0 for its stub address and the ping
  would succeed over the plain underlay, proving nothing. The test sets ``arp_ignore=1`` (answer
  ARP only for addresses of the interface asked) in the device namespaces and checks with
  ``ip route get`` which interface the kernel picks.
* The drivers themselves (`tessera.lab.clients`) are proven first over a plain stand-in segment
  (a bridge with a veth named tessera0 into each namespace, MTU 1452, the same addresses), so a
  failure of the tunnel tests points at the tunnel, not at the drivers; and their pure parts
  (config, parsers, addresses) without root.
"""

from __future__ import annotations

import json
import time

import pytest

from tessera.lab import clients as C
from tessera.lab.netns import sh
from tessera.lab.topology import RealmLab

from tests.gate import LAB_PARTS, needs

CLIENT_PARTS = ("root", "ip", "ss", "bird", "birdc", "iperf3")
needs_clients = needs(*CLIENT_PARTS)
needs_lab_clients = needs(*LAB_PARTS, *CLIENT_PARTS[2:])


# ---------------------------------------------------------------- pure parts

NEIGHBORS = """BIRD 2.0.12 ready.
tessera:
Router ID   \tPri\t     State     \tDTime\tInterface  Router IP
198.51.100.2\t  1\tFull/BDR  \t 3.916\ttessera0   198.51.100.2
198.51.100.3\t  1\tExStart/DR\t 3.916\ttessera0   198.51.100.3
"""


def test_parse_ospf_neighbors_reads_each_row_and_its_state():
    got = C.parse_ospf_neighbors(NEIGHBORS)
    assert [(n.router_id, n.state, n.interface, n.address, n.full) for n in got] == [
        ("198.51.100.2", "Full/BDR", "tessera0", "198.51.100.2", True),
        ("198.51.100.3", "ExStart/DR", "tessera0", "198.51.100.3", False)]
    assert C.parse_ospf_neighbors("BIRD 2.0.12 ready.\ntessera:\nRouter ID\tPri\tState\n") == []


def test_bird_config_ptp_for_two_broadcast_for_more_and_refuses_bad_input():
    conf = C.bird_config("198.51.100.1", log_path="/tmp/x.log")
    assert "router id 198.51.100.1;" in conf
    assert 'interface "tessera0" { type broadcast; hello 1; wait 2; dead 4; };' in conf
    assert 'interface "stub0" { stub yes; };' in conf
    assert "export where source = RTS_OSPF;" in conf
    assert 'type ptp;' in C.bird_config("198.51.100.1", ptp=True) and "stub0" not in C.bird_config(
        "198.51.100.1", stub=None)
    with pytest.raises(ValueError):
        C.bird_config("router-1")
    with pytest.raises(ValueError, match="interface name"):
        C.bird_config("198.51.100.1", interface='tessera0"; }; protocol static {')
    with pytest.raises(ValueError, match="hello"):
        C.bird_config("198.51.100.1", hello=4, dead=4)


def _iperf_report(**over) -> str:
    doc = {"start": {"tcp_mss_default": 1400, "connected": [{}]},
           "end": {"streams": [{"sender": {"mean_rtt": 850, "retransmits": 3}}],
                   "sum_sent": {"bytes": 500_000_000, "seconds": 10.0, "bits_per_second": 4e8, "retransmits": 3},
                   "sum_received": {"bytes": 499_000_000, "seconds": 10.0, "bits_per_second": 3.992e8}}}
    doc.update(over)
    return json.dumps(doc)


def test_parse_iperf3_reads_rate_retransmits_mss_and_refuses_an_error_report():
    r = C.parse_iperf3(_iperf_report())
    assert (r.gbits, r.bytes, r.retransmits, r.mss, r.mean_rtt_ms, r.sent_bytes) == (
        pytest.approx(0.3992), 499_000_000, 3, 1400, 0.85, 500_000_000)
    with pytest.raises(C.ClientError, match="unable to connect to server"):
        C.parse_iperf3(json.dumps({"start": {}, "end": {}, "error": "unable to connect to server: No route to host"}))
    with pytest.raises(C.ClientError, match="no end summary"):
        C.parse_iperf3(_iperf_report(end={}))
    with pytest.raises(C.ClientError, match="did not report JSON"):
        C.parse_iperf3("iperf3: error - the server is busy running a test")


def test_parse_iperf3_udp_counts_datagrams_and_has_no_mss():
    doc = json.loads(_iperf_report())
    doc["start"]["test_start"] = {"protocol": "UDP"}
    doc["end"]["sum_received"].update(packets=1000, lost_packets=40)
    r = C.parse_iperf3(json.dumps(doc))
    assert (r.protocol, r.packets, r.lost, r.retransmits, r.mss) == ("UDP", 1000, 40, None, None)


def test_lab_addresses_and_their_limits():
    assert (C.tunnel_ipv4(3), C.tunnel_ipv6(10), C.stub_network(3), C.stub_address(3)) == (
        "198.51.100.3", "2001:db8:100::a", "203.0.113.48/28", "203.0.113.49")
    assert C.stub_network(14) == "203.0.113.224/28"
    for bad in (0, 15):
        with pytest.raises(ValueError, match="stub networks"):
            C.stub_network(bad)


# ---------------------------------------------------------------- the drivers on a plain segment

@needs_clients
def test_drivers_over_a_plain_stand_in_segment(lab, capsys):
    """Three namespaces on a plain bridge, each with a veth named tessera0 (MTU 1452, the lab's
    tunnel addresses) and a stub network: iperf3's MSS follows the MTU, OSPF reaches Full,
    routes go in and come out with bird, the ping follows them."""
    ns = [lab.add_ns(f"d{k}") for k in (1, 2, 3)]
    C.stand_in_segment(lab, [(n, k) for k, n in enumerate(ns, 1)])
    for k, n in enumerate(ns, 1):
        C.add_stub(lab, n, k)
    assert C.link_mtu(ns[0], C.TUNNEL_IFNAME) == C.TUNNEL_MTU
    r = C.Iperf3(lab, ns[1], C.tunnel_ipv4(2)).run_client(ns[0], 1)
    assert r.bytes > 0 and r.mss == C.TUNNEL_MTU - 52  # 20 IP + 20 TCP + 12 timestamps
    assert C.icmp_rtts(ns[0], C.stub_address(3), 2, timeout=0.3).answered == 0  # no route yet
    birds = [C.Bird(lab, n, C.tunnel_ipv4(k), f"bird-d{k}") for k, n in enumerate(ns, 1)]
    for b in birds:
        b.start()
    _expect_ospf(birds, ns, capsys)
    _expect_bird_stop_withdraws(birds, ns)


def _expect_ospf(birds: list[C.Bird], ns: list[str], capsys) -> None:
    """Called right after the birds started: Full, routes, the routed ping (with the times)."""
    t0 = time.monotonic()
    ids = [C.tunnel_ipv4(k) for k in (1, 2, 3)]
    for i, b in enumerate(birds):
        others = set(ids) - {ids[i]}
        assert b.wait_full(others, 30), f"{b.name}: {b.birdc('show', 'ospf', 'neighbors').stdout.decode()}"
    full = time.monotonic() - t0
    for i, b in enumerate(birds):
        want = {C.stub_network(k) for k in (1, 2, 3) if k != i + 1}
        assert b.wait_routes(want, 30), f"{b.name}: {b.routes()}"
    routed = time.monotonic() - t0
    for i, b in enumerate(birds):
        want = {C.stub_network(k) for k in (1, 2, 3) if k != i + 1}
        got = {r.dst: (r.gateway, r.dev) for r in b.routes() if r.dst in want}
        assert got == {C.stub_network(k): (ids[k - 1], C.TUNNEL_IFNAME) for k in (1, 2, 3) if k != i + 1}
    via = C.route_get(ns[0], C.stub_address(3))
    assert (via.dev, via.gateway) == (C.TUNNEL_IFNAME, ids[2])
    rtt = C.icmp_rtts(ns[0], C.stub_address(3), 5)
    assert rtt.answered == 5, rtt
    with capsys.disabled():
        print(f"\nOSPF: all Full {full:.1f} s after bird started, every stub route in after {routed:.1f} s; "
              f"ping d1 → {C.stub_address(3)} (d3's stub) via {via.gateway} dev {via.dev}: "
              f"{rtt.answered}/5, avg {rtt.avg_ms:.3f} ms")


def _expect_bird_stop_withdraws(birds: list[C.Bird], ns: list[str]) -> None:
    birds[2].stop()
    for b in birds[:2]:
        assert C.wait_for(lambda b=b: C.stub_network(3) not in {r.dst for r in b.routes()}, 20), b.routes()
        assert C.tunnel_ipv4(3) not in b.full()
    assert C.icmp_rtts(ns[0], C.stub_address(3), 2, timeout=0.5).answered == 0
    via = C.route_get(ns[0], C.stub_address(3))
    assert via is None or via.dev != C.TUNNEL_IFNAME


# ---------------------------------------------------------------- over the agents' tessera0

def _tunnel_up(rl: RealmLab, devices, timeout: float = 30) -> None:
    """Agents started with their tunnel, every pair peered, every pair pings on tessera0."""
    for d in devices:
        C.ipv6_for_new_links(d.dev.ns)
        rl.start_agent(d, tunnel=True)
    ids = {d.device_id for d in devices}
    for d in devices:
        assert rl.wait(lambda d=d: rl.peered(d, sorted(ids - {d.device_id})), timeout), \
            f"{d.device_id} not peered: {rl.status(d)}"
    for a in devices:
        for b in devices:
            if a is not b:
                assert C.wait_for(lambda a=a, b=b: C.icmp_rtts(a.dev.ns, C.tunnel_ipv4(b.dev.index), 1,
                                                                timeout=0.5).answered, 15), \
                    f"{a.device_id} cannot ping {b.device_id} on tessera0"


def _tunnel_counters(rl: RealmLab, d, peer) -> dict:
    return rl.status(d)["sessions"][peer.device_id]["tunnel"]


@needs_lab_clients
def test_iperf3_tcp_over_tessera0_and_over_the_plain_underlay(lab, capsys):
    rl = RealmLab(lab, 3, enrol=2, capture=False)  # the switch capture would compete for the cores
    a, b, stranger = rl.devices
    _tunnel_up(rl, [a, b])
    C.ipv6_for_new_links(stranger.dev.ns)
    rl.start_agent(stranger, tunnel=True)
    assert C.link_mtu(a.dev.ns, C.TUNNEL_IFNAME) == C.link_mtu(b.dev.ns, C.TUNNEL_IFNAME) == C.TUNNEL_MTU
    before = _tunnel_counters(rl, b, a)["bytes_in"]
    tunnel = C.Iperf3(lab, b.dev.ns, C.tunnel_ipv4(b.dev.index), name="iperf3-tunnel").run_client(a.dev.ns, 5)
    moved = _tunnel_counters(rl, b, a)["bytes_in"] - before
    plain = C.Iperf3(lab, b.dev.ns, b.dev.ip, name="iperf3-plain").run_client(a.dev.ns, 5)
    with capsys.disabled():
        for name, r in (("tessera0", tunnel), ("plain eth0 (same switch)", plain)):
            print(f"\niperf3 TCP 5 s d1 → d2 over {name:<24}: {r.gbits:6.3f} Gbit/s, {r.bytes:>12,} bytes, "
                  f"{r.retransmits} retransmits, MSS {r.mss}, mean RTT {r.mean_rtt_ms} ms")
        print(f"tessera0 / plain: {tunnel.gbits / plain.gbits:.3f}; agent d2 counted {moved:,} tunnel bytes in")
    assert tunnel.bytes > 0 and moved >= tunnel.bytes
    assert tunnel.mss is not None and tunnel.mss <= C.TUNNEL_MTU - 52 < plain.mss
    # a device that is no peer (never admitted) gets nothing over tessera0
    assert C.icmp_rtts(a.dev.ns, C.tunnel_ipv4(stranger.dev.index), 2, timeout=1).answered == 0
    assert C.icmp_rtts(a.dev.ns, C.tunnel_ipv4(b.dev.index), 2, timeout=1).answered == 2


@needs_lab_clients
def test_ospf_between_three_devices_over_tessera0(lab, capsys):
    rl = RealmLab(lab, 3, capture=False)
    ns = [d.dev.ns for d in rl.devices]
    for d in rl.devices:
        C.add_stub(lab, d.dev.ns, d.dev.index)
        # the stubs share 203.0.113.0/24 with eth0: ARP only for the asked interface's addresses
        for key in ("all", "default"):
            sh(["sysctl", "-qw", f"net.ipv4.conf.{key}.arp_ignore=1"], ns=d.dev.ns)
    _tunnel_up(rl, rl.devices)
    # before OSPF: device 3's stub is not reachable (it would be over eth0, nobody answers there)
    via = C.route_get(ns[0], C.stub_address(3))
    assert via is None or via.dev != C.TUNNEL_IFNAME
    assert C.icmp_rtts(ns[0], C.stub_address(3), 2, timeout=0.5).answered == 0
    birds = [C.Bird(lab, d.dev.ns, C.tunnel_ipv4(d.dev.index), f"bird-d{d.dev.index}") for d in rl.devices]
    for b in birds:
        b.start()
    _expect_ospf(birds, ns, capsys)
    _expect_bird_stop_withdraws(birds, ns)
