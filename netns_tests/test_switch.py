"""The switch before admission: a controlled port passes EAPOL and nothing else."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time

from tessera.agent.l2 import PacketTransport, mac_bytes
from tessera.agent.link import CarrierWatcher, call_in_netns
from tessera.agent.supplicant import follow_carrier
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


def test_switch_port_flapped_half_a_second_is_open_7_s_later_and_passes_traffic(make_testbed):
    """Cable out 0.5 s: the device re-admits at once; 5 s after the carrier-loss kick hostapd frees
    that station (AP_MAX_INACTIVITY_AFTER_DEAUTH) and the controller has it start EAP again, so
    the port is open 7 s after link-up and d1 talks to d2. Beside it, the same flap of a port
    whose device no longer speaks EAP leaves that port closed, readmission or not: its MAC
    passes nothing."""
    tb = make_testbed(3)
    d1, d2, d3 = tb.devices
    s1, _s2, s3 = (tb.supplicant(d) for d in tb.devices)
    ctl = tb.controller
    assert ctl.wait_for(lambda c: all(c.is_open(d.port, d.mac) for d in tb.devices), 15)
    watcher = CarrierWatcher(["eth0"], netns=d1.ns)   # d1's agent loop: restart 802.1X on link-up
    stop = threading.Event()
    t = threading.Thread(target=follow_carrier, args=(watcher, {"eth0": s1}, stop), daemon=True)
    t.start()
    try:
        n1, n3 = len(ctl.entries(port=d1.port)), len(ctl.entries(port=d3.port))
        for d in (d1, d3):
            tb.switch.set_carrier(d.port, False)
        assert ctl.wait_for(lambda c: not c.is_open(d1.port) and not c.is_open(d3.port), 5)
        s3.close()                                    # what comes back on p3 does not speak EAP
        time.sleep(0.5)
        t0 = time.monotonic()
        for d in (d1, d3):
            tb.switch.set_carrier(d.port, True)
        assert ctl.wait_for(lambda c: c.is_open(d1.port, d1.mac), 5), ctl.entries(port=d1.port)[n1:]
        time.sleep(max(0.0, t0 + 7 - time.monotonic()))
        p1 = ctl.entries(port=d1.port)[n1:]
        whats = [e.what for e in p1]
        assert ctl.is_open(d1.port, d1.mac), whats
        assert f'"{d1.port}" . {d1.mac}' in nft.list_set(tb.switch.ns, "authorized")
        assert ping(d1.ns, d2.ip, count=2) == 2
        assert l2_reach(d1.ns, d2.ns, d2.mac) and l2_reach(d2.ns, d1.ns, d1.mac)
        # what happened: hostapd freed the re-admitted station (the kick's late timer), the
        # controller closed it and readmitted; each opening followed a fresh EAP success
        assert whats[:3] == ["carrier-down", "block +close", "kick"], whats
        assert whats.count("readmit") == 1 and whats.count("allow +open") == 2, whats
        for i, what in enumerate(whats):
            if what == "allow +open":
                assert whats[i - 1] == "AP-STA-CONNECTED" and "carrier-up" in whats[:i], whats
        moves = [e.mono - t0 for e in p1 if e.what in ("block +close", "allow +open")]
        print(f"\n0.5 s flap: re-admitted {moves[1]:.3f} s after link-up; hostapd freed the station "
              f"{moves[2]:.2f} s after link-up, closed {1000 * (moves[3] - moves[2]):.0f} ms "
              "until readmitted")
        # p3: its station freed, the controller had hostapd ask for EAP again, and without an
        # answer nothing opened; its MAC is dark both ways
        p3 = [e.what for e in ctl.entries(port=d3.port)[n3:]]
        assert p3.count("readmit") == 1 and "allow +open" not in p3 and not ctl.is_open(d3.port), p3
        assert ping(d3.ns, d1.ip, timeout=0.5) == 0 and ping(d1.ns, d3.ip, timeout=0.5) == 0
        assert not l2_reach(d3.ns, d1.ns, d1.mac) and not l2_reach(d1.ns, d3.ns, d3.mac)
    finally:
        stop.set()
        t.join(2)
        watcher.close()


def test_switch_port_flapped_while_radius_is_slow_is_readmitted_when_hostapd_frees_the_station(make_testbed):
    """Cable out 0.5 s while FreeRADIUS is stopped (SIGSTOP, until 5 s after link-up): the
    re-admission waits for RADIUS, and hostapd frees the station 5 s after the kick with the
    request unanswered and no event. The controller readmits it a second later, so the port
    opens within 8 s of link-up (wpa_supplicant alone would start over only after its 30 s)."""
    tb = make_testbed(1)
    (d1,) = tb.devices
    s1 = tb.supplicant(d1)
    ctl = tb.controller
    assert ctl.wait_for(lambda c: c.is_open(d1.port, d1.mac), 15)
    watcher = CarrierWatcher(["eth0"], netns=d1.ns)
    stop = threading.Event()
    t = threading.Thread(target=follow_carrier, args=(watcher, {"eth0": s1}, stop), daemon=True)
    t.start()
    pid = tb.radius.pid
    try:
        n1 = len(ctl.entries(port=d1.port))
        tb.switch.set_carrier(d1.port, False)
        assert ctl.wait_for(lambda c: not c.is_open(d1.port), 5)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.5)
        t0 = time.monotonic()
        tb.switch.set_carrier(d1.port, True)
        assert ctl.wait_for(lambda c: any(e.what == "CTRL-EVENT-EAP-STARTED" and e.mono > t0
                                          for e in c.entries(port=d1.port)), 5)
        time.sleep(max(0.0, t0 + 5 - time.monotonic()))  # hostapd freed the station at kick + 5 s
        os.kill(pid, signal.SIGCONT)
        assert ctl.wait_for(lambda c: c.is_open(d1.port, d1.mac), 8 - (time.monotonic() - t0)), \
            [e.what for e in ctl.entries(port=d1.port)[n1:]]
        whats = [e.what for e in ctl.entries(port=d1.port)[n1:]]
        assert whats.count("allow +open") == 1 and whats.index("freed") < whats.index("readmit") \
            < whats.index("allow +open"), whats
        assert "AP-STA-DISCONNECTED" not in whats[whats.index("carrier-up"):], whats  # hostapd said nothing
        opened = ctl.entries("allow +open", d1.port)[-1].mono - t0
        print(f"\n0.5 s flap, RADIUS stopped until 5 s after link-up: open {opened:.2f} s after link-up")
    finally:
        os.kill(pid, signal.SIGCONT)
        stop.set()
        t.join(2)
        watcher.close()


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
