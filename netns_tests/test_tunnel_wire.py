"""The agent's `--wire ring` (PACKET_MMAP rings) and `--batch` (frames per wakeup), issue 12.

Three devices on one lab switch, each with a different data path: d1 with the rings (default
geometry), d2 with the plain packet socket and one frame per wakeup, d3 with a small RX ring.
Every non-tunnel frame (announces, hellos, tickets, finished) goes through the same transport,
so the three peering at all is the handshake check; then IPv4 pings between every pair over
tessera0, a TCP stream from a ring agent to the socket agent and back, and the status of each
agent naming its transport with the kernel's frame counts; the ring agent's cable out (it does
not spin on the socket's error) and in again (it peers and answers again). The refusals: a `--wire` or `--batch`
the agent does not take stops it with a message naming what is wrong, before it touches the port.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tessera.lab import clients as C
from tessera.lab.topology import AGENT, RealmLab

from tests.gate import needs_lab

def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


WIRES = {1: ("ring", None), 2: ("socket", 1), 3: ("ring:64", 4)}  # device index → (--wire, --batch)


@pytest.fixture
def wire_lab(lab):
    rl = RealmLab(lab, 3, capture=False)
    for d in rl.devices:
        wire, batch = WIRES[d.dev.index]
        rl.start_agent(d, tunnel=True, wire=wire, batch=batch)
    ids = [d.device_id for d in rl.devices]
    assert rl.wait(lambda: all(rl.peered(d, [i for i in ids if i != d.device_id]) for d in rl.devices), 30), \
        [rl.status(d) for d in rl.devices]
    return rl


@needs_lab
def test_ring_and_socket_agents_peer_ping_and_carry_tcp(wire_lab, lab):
    rl = wire_lab
    d1, d2, d3 = rl.devices
    for a in rl.devices:
        for b in rl.devices:
            if a is not b:
                got = C.wait_for(lambda a=a, b=b: C.icmp_rtts(a.dev.ns, C.tunnel_ipv4(b.dev.index), 3,
                                                                interval=0.01, timeout=0.5).answered == 3, 10)
                assert got, f"{a.device_id} → {b.device_id} over tessera0"
    # TCP both ways between a ring agent and the socket agent with one frame per wakeup
    for src, dst in ((d1, d2), (d2, d1)):
        r = C.Iperf3(lab, dst.dev.ns, C.tunnel_ipv4(dst.dev.index), name=f"iperf3-{src.dev.index}").run_client(
            src.dev.ns, 1)
        print(f"TCP {src.device_id} ({WIRES[src.dev.index]}) → {dst.device_id}: {r.gbits:.3f} Gbit/s, "
              f"{r.retransmits} retransmits, MSS {r.mss}")
        assert r.bytes > 1_000_000 and r.mss <= 1452 - 40
    st = {d.dev.index: rl.status(d) for d in rl.devices}
    assert st[1]["wire"]["transport"] == "ring" and st[1]["wire"]["batch"] == 256
    assert st[2]["wire"]["transport"] == "socket" and st[2]["wire"]["batch"] == 1
    assert st[3]["wire"]["transport"] == "ring" and st[3]["wire"]["batch"] == 4
    for k in (1, 2, 3):
        assert st[k]["wire"]["frames"] > 0, st[k]["wire"]  # the kernel counted frames into socket or ring
    # the ring's own counters: frames went out in kicks, none refused or left without a slot
    assert st[1]["wire"]["tx_kicks"] > 0 and st[1]["wire"]["tx_wrong_format"] == 0
    assert "tx_kicks" not in st[2]["wire"]
    t12 = st[1]["sessions"][d2.device_id]["tunnel"]
    assert t12["frames_out"] > 1000 and t12["frames_in"] > 1000 and t12["auth_drops"] == 0
    # the ring agent's cable out and in again: its socket's error (ENETDOWN) is cleared, it does
    # not spin on it, and it admits, peers and carries frames again
    cpu0 = _cpu_seconds(d1.agent.pid)
    rl.set_carrier(d1, False)
    assert C.wait_for(lambda: not C.icmp_rtts(d2.dev.ns, C.tunnel_ipv4(1), 1, timeout=0.3).answered, 10)
    time.sleep(2)
    idle = _cpu_seconds(d1.agent.pid) - cpu0
    rl.set_carrier(d1, True)
    assert idle < 1.0, f"the ring agent used {idle:.2f} s of CPU in 2 s without a cable"
    assert C.wait_for(lambda: C.icmp_rtts(d2.dev.ns, C.tunnel_ipv4(1), 1, timeout=0.5).answered, 30), \
        rl.status(d1)


@pytest.mark.parametrize("args, says", [
    (["--wire", "mmap"], "socket, ring or ring:RX_FRAMES"),
    (["--wire", "socket:64"], "socket, ring or ring:RX_FRAMES"),
    (["--wire", "ring:100"], "a multiple of 32"),
    (["--wire", "ring:x"], "RX_FRAMES is a number"),
    (["--batch", "0"], "between 1 and 4096"),
    (["--batch", "many"], "not a number of frames"),
])
def test_a_wire_or_batch_the_agent_does_not_take_is_refused_by_name(args, says, tmp_path):
    """Refused at the command line (exit 2, the reason on stderr); the same line with `--wire
    ring:64 --batch 4` gets past the options and stops at the missing bundle instead."""
    base = [sys.executable, str(AGENT), "run", "--bundle", str(tmp_path / "none.json"), "--state-dir",
            str(tmp_path / "state")]
    bad = subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and says in bad.stderr, bad.stderr
    good = subprocess.run([*base, "--wire", "ring:64", "--batch", "4"], capture_output=True, text=True, timeout=60)
    assert good.returncode == 1 and "none.json" in good.stderr, good.stderr
