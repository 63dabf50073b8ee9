"""The secured link as a network interface (issue 12): three devices with `tessera0`, ordinary
traffic over the peer sessions. Ping between every pair (IPv4 and IPv6), iperf3 TCP over the
tunnel and over the plain port (figures printed, nothing timed asserted), a TCP stream that
outlives a rekey and a peer agent's restart, revocation ending one peer's traffic while the
others go on, the counters in `tessera-agent status`, and the interface gone with its agent."""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import time

import pytest

from tessera.agent.link import call_in_netns
from tessera.lab.probe import icmp_echo
from tessera.lab.clients import tunnel_ipv4, tunnel_ipv6
from tessera.lab.topology import RealmLab
from tessera.service import Policy
from tessera.tunnel import TUNNEL_MTU, tap_mac

from tests.gate import needs_lab

pytestmark = needs_lab


v4, v6 = tunnel_ipv4, tunnel_ipv6  # device k's tessera0 addresses (lab/clients.py)


def echo_rtts(ns: str, addr: str, count: int = 3, timeout: float = 2.0, gap: float = 0.05) -> list[float]:
    """Round trips (ms) of `count` ICMP / ICMPv6 echoes from `ns` to `addr` that were answered."""
    six = ":" in addr
    family, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if six else (socket.AF_INET, socket.IPPROTO_ICMP)
    sock = call_in_netns(ns, lambda: socket.socket(family, socket.SOCK_RAW, proto))
    ident, rtts = os.getpid() & 0xFFFF, []
    try:
        for seq in range(1, count + 1):
            packet = (struct.pack("!BBHHH", 128, 0, 0, ident, seq) + b"tessera-probe") if six else icmp_echo(ident, seq)
            sent = time.perf_counter()
            sock.sendto(packet, (addr, 0))
            deadline = sent + timeout
            while (left := deadline - time.perf_counter()) > 0:
                if not select.select([sock], [], [], left)[0]:
                    break
                data = sock.recv(2048)
                icmp = data if six else data[(data[0] & 0x0F) * 4:]
                typ, _, _, rid, rseq = struct.unpack_from("!BBHHH", icmp)
                if typ == (129 if six else 0) and (rid, rseq) == (ident, seq):
                    rtts.append((time.perf_counter() - sent) * 1000)
                    break
            time.sleep(gap)
    finally:
        sock.close()
    return rtts


def link(ns: str, name: str = "tessera0") -> dict | None:
    out = subprocess.run(["ip", "-j", "-n", ns, "link", "show", name], capture_output=True, text=True)
    return json.loads(out.stdout)[0] if out.returncode == 0 else None


def tap_drops(ns: str) -> tuple[int, int]:
    """(rx dropped, tx dropped) of tessera0: tx = frames the agent did not read in time."""
    info = json.loads(subprocess.run(["ip", "-j", "-s", "-n", ns, "link", "show", "tessera0"], capture_output=True,
                                     text=True).stdout)[0]["stats64"]
    return info["rx"]["dropped"], info["tx"]["dropped"]


def iperf(lab, server_ns: str, client_ns: str, addr: str, seconds: float, rate: str | None = None,
          name: str = "iperf3") -> dict:
    """iperf3 TCP from client_ns to addr (a server started in server_ns); its JSON report."""
    srv = lab.spawn(f"{name}-server", server_ns, ["iperf3", "-s", "-1", "-B", addr])
    try:
        for _ in range(50):
            cli = subprocess.run(["ip", "netns", "exec", client_ns, "iperf3", "-c", addr, "-t", str(seconds), "-J",
                                  "-i", "1", *(["-b", rate] if rate else [])],
                                 capture_output=True, text=True, timeout=seconds + 60)
            report = json.loads(cli.stdout or "{}")
            if "unable to connect" not in report.get("error", ""):
                return report
            time.sleep(0.1)  # the server is not listening yet
        return report
    finally:
        lab.stop(srv)


def summary(report: dict) -> tuple[float, int]:
    end = report["end"]
    return end["sum_received"]["bits_per_second"] / 1e9, end["sum_sent"].get("retransmits", 0)


def statuses(rl: RealmLab) -> list[dict]:
    return [rl.status(d) for d in rl.devices]


@pytest.fixture
def tunnel_lab(lab):
    # sessions of 20 s: each rekeys 5 s before its end (a quarter of its life), within the test
    rl = RealmLab(lab, 3, policy=Policy(session_lifetime=20), capture=False)
    for d in rl.devices:
        rl.set_carrier(d, False)
        rl.start_agent(d, tunnel=True)
    for d in rl.devices:  # up, but no carrier: no peer session yet
        info = link(d.dev.ns)
        assert info is not None and "UP" in info["flags"] and "NO-CARRIER" in info["flags"], info
    for d in rl.devices:
        rl.set_carrier(d, True)
    ids = [d.device_id for d in rl.devices]
    assert rl.wait(lambda: all(rl.peered(d, [i for i in ids if i != d.device_id]) for d in rl.devices), 30), \
        statuses(rl)
    return rl


def test_ip_over_tessera0_between_every_pair_through_rekey_restart_and_revocation(tunnel_lab, lab):
    rl = tunnel_lab
    d1, d2, d3 = rl.devices
    # the interface: deterministic MAC, the computed MTU, carrier on (sessions exist), addresses
    for d in rl.devices:
        info = link(d.dev.ns)
        assert info is not None, f"no tessera0 in {d.device_id}"
        assert info["address"] == tap_mac("lab.example", d.device_id) == rl.status(d)["tunnel"]["mac"]
        assert info["mtu"] == TUNNEL_MTU == 1452 and "LOWER_UP" in info["flags"] and "UP" in info["flags"]
    # ping every pair, both families (ARP and ND go as one encrypted copy per peer)
    rtt = {}
    for a in rl.devices:
        for b in rl.devices:
            if a is b:
                continue
            k = b.dev.index
            for addr in (v4(k), v6(k)):
                got = echo_rtts(a.dev.ns, addr, count=5)
                assert len(got) >= 4, f"{a.device_id} → {addr}: {len(got)} of 5 answered"
                rtt[(a.device_id, addr)] = got
    plain = echo_rtts(d1.dev.ns, "203.0.113.102", count=20, gap=0.01)
    tun = echo_rtts(d1.dev.ns, v4(2), count=20, gap=0.01)
    tun6 = echo_rtts(d1.dev.ns, v6(2), count=20, gap=0.01)
    if plain and tun:
        print(f"\nping d1→d2 plain eth0: avg {sum(plain) / len(plain):.3f} ms min {min(plain):.3f}; tessera0 IPv4: avg "
              f"{sum(tun) / len(tun):.3f} ms min {min(tun):.3f}; IPv6 avg {sum(tun6) / len(tun6):.3f} ms; added "
              f"{sum(tun) / len(tun) - sum(plain) / len(plain):.3f} ms")
    # the secured link carries nothing for anyone in the clear: the switch sees only 0x88B5 and
    # what it saw before; the counters say what went where
    st1 = rl.status(d1)
    assert st1["tunnel"]["mtu"] == 1452 and st1["tunnel"]["no_session_drops"] == 0
    for peer in (d2.device_id, d3.device_id):
        c = st1["sessions"][peer]["tunnel"]
        assert c["frames_out"] > 0 and c["frames_in"] > 0 and c["bytes_in"] > 0
        assert c["auth_drops"] == 0 and c["spoof_drops"] == 0
    text = subprocess.run(["ip", "netns", "exec", d1.dev.ns, str(agent_status_cli()), "status", "--state-dir",
                           d1.state_dir], capture_output=True, text=True, timeout=10).stdout
    assert f"peer {d2.device_id}" in text and "tunnel:" in text and "bytes out" in text, text

    # iperf3 TCP over tessera0 and over the plain port, in the same run
    tunnel_report = iperf(lab, d2.dev.ns, d1.dev.ns, v4(2), 3, name="iperf3-tunnel")
    assert "error" not in tunnel_report, tunnel_report.get("error")
    plain_report = iperf(lab, d2.dev.ns, d1.dev.ns, "203.0.113.102", 3, name="iperf3-plain")
    gbps, retr = summary(tunnel_report)
    line = f"iperf3 TCP 3 s d1→d2 over tessera0: {gbps:.3f} Gbit/s, {retr} retransmits"
    if "error" not in plain_report:
        pg, pr = summary(plain_report)
        line += f"; over plain eth0: {pg:.3f} Gbit/s, {pr} retransmits"
    rss = [int(next(x for x in open(f"/proc/{d.agent.pid}/status") if x.startswith("VmRSS")).split()[1]) // 1024
           for d in rl.devices]
    print(f"{line}; agents' RSS {rss} MiB")
    assert gbps > 0

    # a TCP stream across a rekey: sessions of 20 s rekey within the 12 s
    before = rl.status(d1)["sessions"][d2.device_id]["session_id"]
    report = iperf(lab, d2.dev.ns, d1.dev.ns, v4(2), 12, rate="100M", name="iperf3-rekey")
    assert "error" not in report, report.get("error")
    after = rl.status(d1)["sessions"][d2.device_id]["session_id"]
    assert after != before, "no rekey happened during the stream"
    moved = [i["sum"]["bytes"] for i in report["intervals"]]
    print(f"across a rekey: {len(moved)} intervals, least {min(moved)} bytes, {summary(report)[1]} retransmits; "
          f"d1 → d2 {rl.status(d1)['sessions'][d2.device_id]['tunnel']}, d2 ← d1 "
          f"{rl.status(d2)['sessions'][d1.device_id]['tunnel']}; tessera0 drops d1 {tap_drops(d1.dev.ns)} "
          f"d2 {tap_drops(d2.dev.ns)}")
    assert all(b > 0 for b in moved), moved

    # a TCP stream across a restart of the peer's agent (its tessera0 goes and comes back)
    srv = lab.spawn("iperf3-restart-server", d2.dev.ns, ["iperf3", "-s", "-1", "-B", v4(2)])
    try:
        time.sleep(0.5)
        cli = subprocess.Popen(["ip", "netns", "exec", d1.dev.ns, "iperf3", "-c", v4(2), "-t", "20", "-J", "-i", "1",
                                "-b", "50M"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(3)
            rl.stop_agent(d2)
            assert link(d2.dev.ns) is None  # tessera0 went with its agent
            stopped = time.monotonic()
            rl.start_agent(d2, tunnel=True)
            assert rl.wait(lambda: rl.peered(d2, [d1.device_id]) and rl.peered(d1, [d2.device_id]), 20)
            print(f"agent restart: peered again {time.monotonic() - stopped:.1f} s after it stopped")
            out, err = cli.communicate(timeout=60)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
    finally:
        lab.stop(srv)
    report = json.loads(out)
    assert "error" not in report, report.get("error")
    moved = [i["sum"]["bytes"] for i in report["intervals"]]
    print(f"across a restart: bytes per second {moved}, {summary(report)[1]} retransmits")
    assert moved[-1] > 0 and sum(1 for b in moved if b == 0) < len(moved) // 2, moved

    # revocation: d3's traffic stops, d1 and d2 go on
    assert echo_rtts(d1.dev.ns, v4(3), count=2)  # control: d3 answers before
    rl.admin("revoke", d3.device_id, "--reason", "test")
    assert rl.wait(lambda: d3.device_id not in rl.status(d1)["sessions"]
                   and d3.device_id not in rl.status(d2)["sessions"], 15), statuses(rl)
    assert echo_rtts(d1.dev.ns, v4(3), count=2, timeout=1) == []
    assert echo_rtts(d2.dev.ns, v6(3), count=2, timeout=1) == []
    assert len(echo_rtts(d1.dev.ns, v4(2), count=3)) >= 2 and len(echo_rtts(d2.dev.ns, v6(1), count=3)) >= 2

    # the interface dies with its agent
    for d in rl.devices:
        rl.stop_agent(d)
        assert link(d.dev.ns) is None, f"tessera0 left behind in {d.device_id}"


def agent_status_cli():
    from tessera.lab.topology import AGENT
    return AGENT
