"""The switch before admission: a controlled port passes EAPOL and nothing else."""

from __future__ import annotations

import re
import socket
import time

from tessera.agent.l2 import PacketTransport, mac_bytes
from tessera.agent.link import call_in_netns
from tessera.lab import nft
from tessera.lab.netns import list_netns
from tessera.lab.probe import l2_reach, ping
from tessera.lab.switch import Switch

PAE_GROUP = "01:80:c2:00:00:03"
ETH_P_PAE = 0x888E


def eapol_start(ns: str) -> None:
    """Send one EAPOL-Start (802.1X-2004, type 1) to the PAE group address from ``ns``."""
    def make():
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_PAE))
        s.bind(("eth0", ETH_P_PAE))
        return s
    s = call_in_netns(ns, make)
    try:
        src = s.getsockname()[4][:6]
        s.send(mac_bytes(PAE_GROUP) + src + ETH_P_PAE.to_bytes(2, "big") + bytes([2, 1, 0, 0]))
    finally:
        s.close()


def test_switch_closed_ports_pass_only_eapol(lab):
    sw = Switch(lab)
    devs = [sw.add_device(i) for i in (1, 2, 3)]
    d1, d2, d3 = devs
    # The same wiring without port control is a plain bridge: the probes below get through.
    assert ping(d1.ns, d2.ip, count=2) == 2
    assert l2_reach(d1.ns, d2.ns) and l2_reach(d2.ns, d3.ns, d3.mac)
    ctl = sw.start_controller()
    try:
        # IPv4 and raw 0x88B5 frames between closed ports: nothing gets through.
        assert ping(d1.ns, d2.ip, count=2, timeout=0.5) == 0
        assert not l2_reach(d1.ns, d2.ns)
        assert not l2_reach(d2.ns, d3.ns, d3.mac)
        dropped = re.search(r"counter packets (\d+) bytes \d+ drop comment \"unauthorized",
                            nft.counters(sw.ns))
        assert dropped and int(dropped.group(1)) > 0
        # EAPOL does reach the port's hostapd, which starts EAP for that station.
        eapol_start(d3.ns)
        assert ctl.wait_for(lambda c: c.entries("CTRL-EVENT-EAP-STARTED", "p3"), 10)
        assert ctl.entries("CTRL-EVENT-EAP-STARTED", "p3")[0].mac == d3.mac
        assert ctl.authorized() == {"p1": set(), "p2": set(), "p3": set()}
    finally:
        sw.close()


def test_switch_controller_logs_carrier_of_a_port_without_station(lab):
    """Without RADIUS: carrier loss and return on a port are logged as facts even with no
    station on it. (Adopting stations hostapd already holds: test_admission.)"""
    sw = Switch(lab)
    d1 = sw.add_device(1)
    ctl = sw.start_controller()
    try:
        sw.set_carrier(d1.port, False)
        assert ctl.wait_for(lambda c: c.entries("carrier-down", "p1"), 10)
        sw.set_carrier(d1.port, True)
        assert ctl.wait_for(lambda c: c.entries("carrier-up", "p1"), 10)
        assert [e.what for e in ctl.entries(port="p1")] == ["carrier-down", "carrier-up"]
    finally:
        sw.close()


def _gone_or_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


def test_switch_teardown_removes_everything(lab):
    sw = Switch(lab)
    sw.add_device(1)
    sw.start_controller()
    pids = lab.pids()
    names = list(lab.namespaces)
    assert pids and names
    sw.close()
    lab.close()
    assert not set(names) & set(list_netns())
    deadline = time.monotonic() + 10
    while not all(_gone_or_zombie(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [p for p in pids if not _gone_or_zombie(p)] == []


def test_reap_stale_removes_namespaces_of_dead_owners_only(lab):
    import subprocess
    from tessera.lab.netns import reap_stale, run_tag, sh
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{run_tag(pid=dead.pid)}-sw"   # owner PID no longer exists (kill -9 leftover)
    sh(["ip", "netns", "add", stale])
    mine = lab.add_ns("alive")               # owner is this process: must stay
    try:
        gone = reap_stale()
        assert stale in gone and mine not in gone
        assert stale not in list_netns() and mine in list_netns()
    finally:
        sh(["ip", "netns", "del", stale], check=False)
