#!/usr/bin/env python3
"""The secured link as an interface, measured with real clients: iperf3 TCP Gbit/s and
retransmits, ICMP round trips (and optionally small-UDP frames/s) over plain veth and over the
agents' ``tessera0``, alternated in the same run.

How this works: builds a lab realm with two enrolled devices (FreeRADIUS, the switch with its
802.1X port rules, no switch capture: tcpdump would be a third process on the two cores),
starts both agents with their tunnel (``tessera0``, MTU 1452, 198.51.100.k/24) and waits until
they are peered and ping each other on it. The plain path is the same underlay with plain IP:
the devices' eth0 addresses (192.0.2.10k) through the same veths, bridge and nftables rules
that carry tessera0's encrypted frames, so the difference between the two is the tunnel itself.
Then ``--rounds`` rounds, the order of the two paths reversed every round (veth first, then
tessera0 first, ...), so drift in the machine's load falls on both alike; in a round:

* iperf3 TCP for ``--seconds`` (one-shot server in device 2, client in device 1, through
  `tessera.lab.clients.Iperf3`): Gbit/s received, retransmits, MSS. Over tessera0 also the two
  agents' CPU (utime + stime from /proc over the run) per tunnel frame (the sending agent's
  frames_out to the peer, from ``tessera-agent status``; both agents' CPU, so the ACKs going back
  are in it too): what the per-frame cost is; and where frames were lost (retransmits): the
  kernel's drops on both tessera0 (a TAP's tx queue to its agent full) and both eth0, the
  agents' auth and replay drops;
* ``--pings`` ICMP echoes one at a time (`icmp_rtts`, a raw socket in device 1, timed
  in Python: the same overhead on both paths, so the difference is the tunnel's): RTT avg/median/min, and the
  added RTT = tessera0 avg - veth avg of the same round;
* with ``--udp``: iperf3 UDP, ``--udp-size``-byte datagrams at ``--udp-rate``: datagrams/s
  received and lost.

Steps (``--steps``): the tunnel is measured in several agent configurations in the same run,
each a step of issue 12's batching: ``WIRE:BATCH[:QLEN]`` is the agents' ``--wire`` (socket:
one syscall per frame; ring: PACKET_MMAP rings; ring2048: with 2048 RX slots), ``--batch`` (frames taken from the tap or the
wire per wakeup) and optionally tessera0's txqueuelen (set with ``ip link`` after the agent made
it). The first step is the agent's default configuration and keeps the rows' plain names
("iperf3 TCP over tessera0"); each other step is a path of its own, "tessera0 [ring, batch
256]", with its ratio to the first (Gbit/s, CPU per frame, RTT) printed per round and in its
rows' ``extra["vs_default"]``. Both agents are restarted (state kept: they re-peer in a second
or two) whenever the next run needs another configuration; every round runs veth and every step,
the order reversed every round.

Prints every round, then the median [min - max] of each figure and of the per-round ratios;
``--json PATH`` appends rows (bench/measure.py, suite "tunnel"; exchanges `TCP_EXCHANGE`,
`PING_EXCHANGE`, `UDP_EXCHANGE` with the path's name). ``--stand-in`` measures a
plain veth named tessera0 instead of the agents (two namespaces, no realm): a check of this
script, not a figure of the tunnel (its rows: suite "tunnel-stand-in"). Exits 1 if the tunnel
moved no data or answered no echo.

    sudo .venv/bin/python bench/tunnel.py [--rounds 3] [--seconds 5] [--pings 200] [--udp] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import Row, append_rows, load1  # noqa: E402
from tessera.lab import clients as C  # noqa: E402
from tessera.lab.netns import Lab  # noqa: E402

VETH, TUNNEL = "veth", "tessera0"
DEFAULT_STEPS = "socket:256,socket:1,ring:256"  # the agent's default first (see agent/daemon.py)
# the rows' exchange names (stable: bench/suite.py finds its figures by them)
TCP_EXCHANGE, PING_EXCHANGE = "iperf3 TCP over {}", "ICMP echo over {} (one at a time)"
UDP_EXCHANGE = "iperf3 UDP over {}"
SYSTEM = {VETH: "plain IP on eth0: dev1 → lab switch (bridge + nftables port rules) → dev2",
          TUNNEL: "tessera0 (TAP, MTU 1452, AES-256-GCM PeerFrame records) over the same switch"}
STAND_IN = {VETH: "stand-in: direct veth eth0 (no switch)",
            TUNNEL: "stand-in: plain veth named tessera0 (NOT the tunnel)"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of processes ``pids`` (all their threads), seconds."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` (a packet ring's pages count once the agent touched them), MiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


class Stand:
    """Two device namespaces with both paths; `frames_out` and `agent_pids` only with agents."""

    def __init__(self, lab: Lab, stand_in: bool, first: tuple[str, int, int | None] | None = None):
        self.lab, self.stand_in, self.rl = lab, stand_in, None
        self.step = None  # the agents' (wire, batch, txqueuelen) when they were started by configure()
        if stand_in:
            self.ns = [lab.add_ns("d1"), lab.add_ns("d2")]
            lab.add_veth(self.ns[0], "eth0", self.ns[1], "eth0")
            for k, n in enumerate(self.ns, 1):
                lab.add_addr(n, "eth0", f"192.0.2.{100 + k}/24")
            C.stand_in_segment(lab, [(n, k) for k, n in enumerate(self.ns, 1)])
            self.addr = {VETH: "192.0.2.102", TUNNEL: C.tunnel_ipv4(2)}
            return
        from tessera.lab.topology import RealmLab
        self.rl = rl = RealmLab(lab, 2, capture=False)
        self.a, self.b = rl.devices
        for d in rl.devices:
            C.ipv6_for_new_links(d.dev.ns)
            rl.start_agent(d, tunnel=True, wire=agent_wire(first[0]) if first else None,
                           batch=first[1] if first else None)
        for d, peer in ((self.a, self.b), (self.b, self.a)):
            if not rl.wait(lambda d=d, peer=peer: rl.peered(d, [peer.device_id]), 30):
                sys.exit(f"{d.device_id} did not peer: {rl.status(d)}")
        self.ns = [self.a.dev.ns, self.b.dev.ns]
        self.addr = {VETH: self.b.dev.ip, TUNNEL: C.tunnel_ipv4(self.b.dev.index)}
        if not C.wait_for(lambda: C.icmp_rtts(self.ns[0], self.addr[TUNNEL], 1, timeout=0.5).answered, 15):
            sys.exit("device 1 cannot ping device 2 on tessera0")
        if first is not None and first[2] is not None:
            for n in self.ns:
                lab.run(n, ["ip", "link", "set", "dev", C.TUNNEL_IFNAME, "txqueuelen", str(first[2])])
        self.step = first

    def configure(self, step: tuple[str, int, int | None] | None) -> None:
        """Agents running with ``step`` = (wire, batch, txqueuelen or None); None: veth, as is."""
        if step is None or self.rl is None or step == self.step:
            return
        wire, batch, qlen = step
        rl = self.rl
        for d in rl.devices:
            rl.stop_agent(d)
        for d in rl.devices:
            rl.start_agent(d, tunnel=True, wire=agent_wire(wire), batch=batch)
        for d, peer in ((self.a, self.b), (self.b, self.a)):
            if not rl.wait(lambda d=d, peer=peer: rl.peered(d, [peer.device_id]), 30):
                sys.exit(f"{d.device_id} did not peer again ({step}): {rl.status(d)}")
        if qlen is not None:
            for n in self.ns:
                self.lab.run(n, ["ip", "link", "set", "dev", C.TUNNEL_IFNAME, "txqueuelen", str(qlen)])
        if not C.wait_for(lambda: C.icmp_rtts(self.ns[0], self.addr[TUNNEL], 1, timeout=0.5).answered, 15):
            sys.exit(f"device 1 cannot ping device 2 on tessera0 ({step})")
        self.step = step

    def dst(self, path: str) -> str:
        return self.addr[VETH if path == VETH else TUNNEL]

    def agent_pids(self) -> list[int]:
        return [] if self.rl is None else [d.agent.pid for d in self.rl.devices]

    def frames_out(self) -> int | None:
        if self.rl is None:
            return None
        st = self.rl.status(self.a)
        return st["sessions"][self.b.device_id]["tunnel"]["frames_out"]

    def drops(self) -> dict[str, int]:
        """Where frames can be lost on the tunnel path: the kernel's drops on both tessera0 and
        both eth0, the receivers' auth and replay drops (both directions: data and ACKs), the
        agents' packet socket or RX ring (wire_rx) and TX ring (ring_tx) full."""
        out = {"tap": sum(C.link_drops(n, C.TUNNEL_IFNAME) for n in self.ns),
               "eth0": sum(C.link_drops(n, "eth0") for n in self.ns)}
        if self.rl is not None:
            for d, peer in ((self.a, self.b), (self.b, self.a)):
                st = self.rl.status(d)
                t = st["sessions"][peer.device_id]["tunnel"]
                for k in ("auth_drops", "replay_drops"):
                    out[k] = out.get(k, 0) + t[k]
                w = st.get("wire", {})  # the agents' packet socket / RX ring full, their TX ring full
                for k, key in (("wire_rx", "kernel_drops"), ("ring_tx", "tx_full_drops")):
                    if key in w:
                        out[k] = out.get(k, 0) + w[key]
        return out


def parse_steps(text: str) -> list[tuple[str, int, int | None]]:
    """``WIRE:BATCH[:QLEN],...`` → [(wire, batch, txqueuelen or None), ...]."""
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) not in (2, 3) or not (parts[0] == "socket" or parts[0] == "ring"
                                            or parts[0].startswith("ring") and parts[0][4:].isdigit()):
            raise ValueError(f"step {item!r}: WIRE:BATCH[:QLEN], WIRE socket, ring or ringRX (RX ring slots)")
        step = (parts[0], int(parts[1]), int(parts[2]) if len(parts) == 3 else None)
        if step[1] < 1 or (step[2] is not None and step[2] < 1) or step in out:
            raise ValueError(f"step {item!r}: positive numbers, each step once")
        out.append(step)
    return out


def agent_wire(wire: str) -> str:
    """A step's WIRE as the agent's --wire: ring2048 → ring:2048."""
    return wire if wire in ("socket", "ring") else f"ring:{wire[4:]}"


def step_name(step: tuple[str, int, int | None], first: bool) -> str:
    """The path's name: tessera0 for the first (default) step, else tessera0 [what differs]."""
    if first:
        return TUNNEL
    wire, batch, qlen = step
    return f"{TUNNEL} [{wire.replace('ring', 'ring ').strip()}, batch {batch}" + (f", txqueuelen {qlen}" if qlen else "") + "]"


def tcp_run(stand: Stand, path: str, seconds: float, port: int) -> dict:
    tunnel = path != VETH
    pids = stand.agent_pids() if tunnel else []
    f0, c0 = (stand.frames_out(), cpu_seconds(pids)) if pids else (None, 0.0)
    d0 = stand.drops() if tunnel else {}
    r = C.Iperf3(stand.lab, stand.ns[1], stand.dst(path), port=port, name="iperf3").run_client(
        stand.ns[0], seconds)
    out = {"rss_mib": None, "gbits": r.gbits, "bytes": r.bytes, "seconds": r.seconds, "retransmits": r.retransmits, "mss": r.mss,
           "mean_rtt_ms": r.mean_rtt_ms, "frames": None, "cpu_us_per_frame": None,
           "drops": {k: v - d0[k] for k, v in stand.drops().items()} if d0 else {}}
    if pids:
        frames, cpu = stand.frames_out() - f0, cpu_seconds(pids) - c0
        out.update(frames=frames, cpu_us_per_frame=cpu / frames * 1e6 if frames else None,
                   rss_mib=max(rss_mib(p) for p in pids))
    return out


def udp_run(stand: Stand, path: str, seconds: float, rate: str, size: int, port: int) -> dict:
    r = C.Iperf3(stand.lab, stand.ns[1], stand.dst(path), port=port, name="iperf3-udp").run_client(
        stand.ns[0], seconds, udp_bitrate=rate, length=size)
    got = (r.packets or 0) - (r.lost or 0)
    return {"per_second": got / r.seconds if r.seconds else 0.0, "received": got, "lost": r.lost or 0,
            "sent": r.packets or 0, "seconds": r.seconds}


def spread(xs: list[float]) -> tuple[float, float, float]:
    return statistics.median(xs), min(xs), max(xs)


def fmt(s: tuple[float, float, float], f: str = ".3f") -> str:
    return f"{s[0]:{f}} [{s[1]:{f}} – {s[2]:{f}}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds of one veth and one tessera0 run per step (default 3)")
    ap.add_argument("--seconds", type=float, default=5.0, help="iperf3 run length, s (default 5)")
    ap.add_argument("--pings", type=int, default=200, help="ICMP echoes per path per round (default 200)")
    ap.add_argument("--steps", default=DEFAULT_STEPS,
                    help="agent configurations WIRE:BATCH[:QLEN], comma-separated, the agent's default first "
                         "(default %(default)s)")
    ap.add_argument("--udp", action="store_true", help="also small-UDP datagrams/s (iperf3 -u)")
    ap.add_argument("--udp-rate", default="100M", help="UDP offered rate, iperf3 -b (default 100M)")
    ap.add_argument("--udp-size", type=int, default=64, help="UDP payload bytes, iperf3 -l (default 64)")
    ap.add_argument("--stand-in", action="store_true",
                    help="plain veth named tessera0 instead of the agents (checks this script, no tunnel figures)")
    ap.add_argument("--json", metavar="PATH", help="append result rows (bench/measure.py) to PATH")
    args = ap.parse_args()
    if args.rounds < 1 or args.seconds <= 0 or args.pings < 1:
        ap.error("--rounds, --seconds and --pings must be positive")
    try:
        steps = [None] if args.stand_in else parse_steps(args.steps)
    except ValueError as exc:
        ap.error(str(exc))
    paths = [VETH] + [TUNNEL if st is None else step_name(st, i == 0) for i, st in enumerate(steps)]
    step_of = dict(zip(paths[1:], steps))
    tcp: dict[str, list[dict]] = {p: [] for p in paths}
    rtt: dict[str, list[C.RttStats]] = {p: [] for p in paths}
    udp: dict[str, list[dict]] = {p: [] for p in paths}
    system = dict(STAND_IN if args.stand_in else SYSTEM)
    for p in paths[2:]:
        wire, batch, qlen = step_of[p]
        system[p] = (f"{SYSTEM[TUNNEL]}; agents --wire {wire} --batch {batch}"
                     + (f", tessera0 txqueuelen {qlen}" if qlen else ""))
    if not args.stand_in:
        wire, batch, qlen = steps[0]
        system[TUNNEL] = (f"{SYSTEM[TUNNEL]}; agents --wire {wire} --batch {batch}"
                          + (f", tessera0 txqueuelen {qlen}" if qlen else ""))
    suite = "tunnel-stand-in" if args.stand_in else "tunnel"  # never taken for the tunnel's figures
    width = max(len(p) for p in paths)
    with Lab() as lab:
        stand = Stand(lab, args.stand_in, steps[0])
        print(f"{args.rounds} rounds, iperf3 TCP {args.seconds:g} s, {args.pings} echoes per path"
              f"{f', UDP {args.udp_size} B at {args.udp_rate}' if args.udp else ''}; order reversed every round")
        for name in (VETH, TUNNEL):
            mtu = C.link_mtu(stand.ns[0], "eth0" if name == VETH else C.TUNNEL_IFNAME)
            print(f"  {name:<8} {system[name]} (MTU {mtu})")
        for p in paths[2:]:
            print(f"  {p}: {system[p]}")
        for r in range(args.rounds):
            order = paths if r % 2 == 0 else paths[::-1]
            for i, name in enumerate(order):
                stand.configure(step_of.get(name))
                t = tcp_run(stand, name, args.seconds, 5201 + i)
                tcp[name].append(t)
                cpu = (f"; agents' CPU {t['cpu_us_per_frame']:.1f} µs per tunnel frame ({t['frames']:,} frames), "
                       f"RSS {t['rss_mib']:.1f} MiB" if t["cpu_us_per_frame"] is not None else "")
                drops = (", drops " + ", ".join(f"{k} {v}" for k, v in t["drops"].items())) if t["drops"] else ""
                print(f"round {r + 1} TCP  {name:<{width}} {t['gbits']:7.3f} Gbit/s, {t['retransmits']} retransmits, "
                      f"MSS {t['mss']}, mean RTT {t['mean_rtt_ms']} ms{cpu}{drops}")
                s = C.icmp_rtts(stand.ns[0], stand.dst(name), args.pings, interval=0.002)
                rtt[name].append(s)
                print(f"round {r + 1} ping {name:<{width}} {s.answered}/{s.sent} answered, avg "
                      f"{s.avg_ms if s.avg_ms is None else round(s.avg_ms, 3)} ms, median "
                      f"{s.median_ms if s.median_ms is None else round(s.median_ms, 3)} ms, min "
                      f"{s.min_ms if s.min_ms is None else round(s.min_ms, 3)} ms")
                if args.udp:
                    u = udp_run(stand, name, args.seconds, args.udp_rate, args.udp_size, 5211 + i)
                    udp[name].append(u)
                    print(f"round {r + 1} UDP  {name:<{width}} {u['per_second']:>10,.0f} datagrams/s received, "
                          f"{u['lost']:,} of {u['sent']:,} lost")
            tv, rv = tcp[VETH][-1], rtt[VETH][-1]
            for p in paths[1:]:
                tt, rt = tcp[p][-1], rtt[p][-1]
                added = (rt.avg_ms - rv.avg_ms) if rt.avg_ms is not None and rv.avg_ms is not None else None
                vs = ""
                if p != TUNNEL:
                    d = tcp[TUNNEL][-1]
                    vs = f"; / {TUNNEL}: TCP {tt['gbits'] / max(d['gbits'], 1e-9):.3f}"
                    if tt["cpu_us_per_frame"] and d["cpu_us_per_frame"]:
                        vs += f", CPU per frame {tt['cpu_us_per_frame'] / d['cpu_us_per_frame']:.3f}"
                print(f"round {r + 1} {p} / veth TCP {tt['gbits'] / max(tv['gbits'], 1e-9):.3f}; added RTT "
                      f"{'n/a' if added is None else f'{added:.3f} ms'}{vs}")

    def ratio_to_veth(p):
        return [t["gbits"] / max(v["gbits"], 1e-9) for v, t in zip(tcp[VETH], tcp[p])]

    def added_rtt(p, key):
        return [getattr(t, key) - getattr(v, key) for v, t in zip(rtt[VETH], rtt[p])
                if getattr(t, key) is not None and getattr(v, key) is not None]

    print("\nmedian [min – max] over rounds")
    rows = []
    for name in paths:
        g = spread([t["gbits"] for t in tcp[name]])
        retr = sum(t["retransmits"] or 0 for t in tcp[name])
        cpus = [t["cpu_us_per_frame"] for t in tcp[name] if t["cpu_us_per_frame"] is not None]
        print(f"TCP  {name:<{width}} {fmt(g)} Gbit/s, {retr} retransmits in all, MSS {sorted({t['mss'] for t in tcp[name]})}"
              + (f", agents' CPU {fmt(spread(cpus), '.1f')} µs per tunnel frame" if cpus else ""))
        ratios, vs = ratio_to_veth(name), {}
        if name not in (VETH, TUNNEL):  # a step against the default configuration, round by round
            gr = [t["gbits"] / max(d["gbits"], 1e-9) for d, t in zip(tcp[TUNNEL], tcp[name])]
            cr = [t["cpu_us_per_frame"] / d["cpu_us_per_frame"] for d, t in zip(tcp[TUNNEL], tcp[name])
                  if t["cpu_us_per_frame"] and d["cpu_us_per_frame"]]
            ar = [t.avg_ms - d.avg_ms for d, t in zip(rtt[TUNNEL], rtt[name])
                  if t.avg_ms is not None and d.avg_ms is not None]
            vs = {"gbits": statistics.median(gr), "gbits_range": [min(gr), max(gr)],
                  "cpu_per_frame": statistics.median(cr) if cr else None,
                  "cpu_per_frame_range": [min(cr), max(cr)] if cr else None,
                  "rtt_avg_minus_ms": statistics.median(ar) if ar else None}
            print(f"     {'':<{width}} / {TUNNEL}: TCP {fmt(spread(gr))}"
                  + (f", CPU per frame {fmt(spread(cr))}" if cr else "")
                  + (f", ping avg {statistics.median(ar):+.3f} ms" if ar else ""))
        rows.append(Row(
            suite=suite, system=system[name], exchange=TCP_EXCHANGE.format(name),
            count=len(tcp[name]), failed=sum(1 for t in tcp[name] if not t["bytes"]),
            seconds=sum(t["seconds"] for t in tcp[name]), per_second=g[0] * 1e9,
            server_cpu_us=statistics.median(cpus) if cpus else None, load1=load1(),
            extra={"unit": "per_second is bits/s received", "run_seconds": args.seconds,
                   "gbits": g[0], "gbits_range": [g[1], g[2]],
                   "retransmits": retr, "retransmits_per_round": [t["retransmits"] for t in tcp[name]],
                   "mss": sorted({t["mss"] for t in tcp[name]}), "bytes": sum(t["bytes"] for t in tcp[name]),
                   "mean_rtt_ms": [t["mean_rtt_ms"] for t in tcp[name]],
                   "drops_per_round": [t["drops"] for t in tcp[name]],
                   "agent_rss_mib": [t.get("rss_mib") for t in tcp[name]],
                   "server_cpu_us": "both agents' CPU per tunnel frame sent (tessera0 only)",
                   **({"step": list(step_of[name])} if step_of.get(name) else {}),
                   **({"vs_default": vs} if vs else {}),
                   **({"ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)]}
                      if name != VETH else {})}))
        answered = [s for s in rtt[name] if s.avg_ms is not None]
        avg = spread([s.avg_ms for s in answered]) if answered else None
        med = spread([s.median_ms for s in answered]) if answered else None
        added, added_median = added_rtt(name, "avg_ms"), added_rtt(name, "median_ms")
        print(f"ping {name:<{width}} avg {fmt(avg) if avg else 'n/a'} ms, median {fmt(med) if med else 'n/a'} ms, "
              f"{sum(s.answered for s in rtt[name])}/{sum(s.sent for s in rtt[name])} answered"
              + (f"; added (avg - veth avg) {fmt(spread(added))} ms" if name != VETH and added else ""))
        rows.append(Row(
            suite=suite, system=system[name], exchange=PING_EXCHANGE.format(name),
            count=sum(s.answered for s in rtt[name]), failed=sum(s.sent - s.answered for s in rtt[name]),
            p50_ms=med[0] if med else None, load1=load1(),
            extra={"avg_ms": avg[0] if avg else None, "avg_ms_range": [avg[1], avg[2]] if avg else None,
                   "min_ms": min(s.min_ms for s in answered) if answered else None,
                   **({"added_rtt_ms": statistics.median(added), "added_rtt_ms_range": [min(added), max(added)],
                       "added_rtt_median_ms": statistics.median(added_median)}
                      if name != VETH and added else {})}))
        if args.udp:
            u = spread([x["per_second"] for x in udp[name]])
            print(f"UDP  {name:<{width}} {fmt(u, ',.0f')} datagrams/s of {args.udp_size} B received")
            rows.append(Row(
                suite=suite, system=system[name], exchange=UDP_EXCHANGE.format(name),
                count=sum(x["received"] for x in udp[name]), failed=sum(x["lost"] for x in udp[name]),
                seconds=sum(x["seconds"] for x in udp[name]), per_second=u[0], load1=load1(),
                extra={"per_second_range": [u[1], u[2]], "offered": args.udp_rate, "size": args.udp_size}))
    for p in paths[1:]:
        print(f"{p} / veth TCP per round: {fmt(spread(ratio_to_veth(p)))}")
    if args.stand_in:
        print("(--stand-in: plain veth, not the tunnel: these are no figures of tessera0)")
    append_rows(args.json, rows)
    if any(not t["bytes"] for p in paths[1:] for t in tcp[p]) or not all(any(s.answered for s in rtt[p])
                                                                         for p in paths[1:]):
        print("FAILED: tessera0 moved no data or answered no echo", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
