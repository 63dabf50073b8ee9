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
* ``--pings`` ICMP echoes one at a time (`icmp_rtts`, a raw socket in device 1: this machine
  has no ping binary; the same Python overhead on both paths): RTT avg/median/min, and the
  added RTT = tessera0 avg - veth avg of the same round;
* with ``--udp``: iperf3 UDP, ``--udp-size``-byte datagrams at ``--udp-rate``: datagrams/s
  received and lost.

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


class Stand:
    """Two device namespaces with both paths; `frames_out` and `agent_pids` only with agents."""

    def __init__(self, lab: Lab, stand_in: bool):
        self.lab, self.stand_in, self.rl = lab, stand_in, None
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
            rl.start_agent(d, tunnel=True)
        for d, peer in ((self.a, self.b), (self.b, self.a)):
            if not rl.wait(lambda d=d, peer=peer: rl.peered(d, [peer.device_id]), 30):
                sys.exit(f"{d.device_id} did not peer: {rl.status(d)}")
        self.ns = [self.a.dev.ns, self.b.dev.ns]
        self.addr = {VETH: self.b.dev.ip, TUNNEL: C.tunnel_ipv4(self.b.dev.index)}
        if not C.wait_for(lambda: C.icmp_rtts(self.ns[0], self.addr[TUNNEL], 1, timeout=0.5).answered, 15):
            sys.exit("device 1 cannot ping device 2 on tessera0")

    def agent_pids(self) -> list[int]:
        return [] if self.rl is None else [d.agent.pid for d in self.rl.devices]

    def frames_out(self) -> int | None:
        if self.rl is None:
            return None
        st = self.rl.status(self.a)
        return st["sessions"][self.b.device_id]["tunnel"]["frames_out"]

    def drops(self) -> dict[str, int]:
        """Where frames can be lost on the tunnel path: the kernel's drops on both tessera0 and
        both eth0, the receivers' auth and replay drops (both directions: data and ACKs)."""
        out = {"tap": sum(C.link_drops(n, C.TUNNEL_IFNAME) for n in self.ns),
               "eth0": sum(C.link_drops(n, "eth0") for n in self.ns)}
        if self.rl is not None:
            for d, peer in ((self.a, self.b), (self.b, self.a)):
                t = self.rl.status(d)["sessions"][peer.device_id]["tunnel"]
                for k in ("auth_drops", "replay_drops"):
                    out[k] = out.get(k, 0) + t[k]
        return out


def tcp_run(stand: Stand, path: str, seconds: float, port: int) -> dict:
    pids = stand.agent_pids() if path == TUNNEL else []
    f0, c0 = (stand.frames_out(), cpu_seconds(pids)) if pids else (None, 0.0)
    d0 = stand.drops() if path == TUNNEL else {}
    r = C.Iperf3(stand.lab, stand.ns[1], stand.addr[path], port=port, name=f"iperf3-{path}").run_client(
        stand.ns[0], seconds)
    out = {"gbits": r.gbits, "bytes": r.bytes, "seconds": r.seconds, "retransmits": r.retransmits, "mss": r.mss,
           "mean_rtt_ms": r.mean_rtt_ms, "frames": None, "cpu_us_per_frame": None,
           "drops": {k: v - d0[k] for k, v in stand.drops().items()} if d0 else {}}
    if pids:
        frames, cpu = stand.frames_out() - f0, cpu_seconds(pids) - c0
        out.update(frames=frames, cpu_us_per_frame=cpu / frames * 1e6 if frames else None)
    return out


def udp_run(stand: Stand, path: str, seconds: float, rate: str, size: int, port: int) -> dict:
    r = C.Iperf3(stand.lab, stand.ns[1], stand.addr[path], port=port, name=f"iperf3-udp-{path}").run_client(
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
    ap.add_argument("--rounds", type=int, default=3, help="rounds of one veth and one tessera0 run (default 3)")
    ap.add_argument("--seconds", type=float, default=5.0, help="iperf3 run length, s (default 5)")
    ap.add_argument("--pings", type=int, default=200, help="ICMP echoes per path per round (default 200)")
    ap.add_argument("--udp", action="store_true", help="also small-UDP datagrams/s (iperf3 -u)")
    ap.add_argument("--udp-rate", default="100M", help="UDP offered rate, iperf3 -b (default 100M)")
    ap.add_argument("--udp-size", type=int, default=64, help="UDP payload bytes, iperf3 -l (default 64)")
    ap.add_argument("--stand-in", action="store_true",
                    help="plain veth named tessera0 instead of the agents (checks this script, no tunnel figures)")
    ap.add_argument("--json", metavar="PATH", help="append result rows (bench/measure.py) to PATH")
    args = ap.parse_args()
    if args.rounds < 1 or args.seconds <= 0 or args.pings < 1:
        ap.error("--rounds, --seconds and --pings must be positive")
    tcp: dict[str, list[dict]] = {VETH: [], TUNNEL: []}
    rtt: dict[str, list[C.RttStats]] = {VETH: [], TUNNEL: []}
    udp: dict[str, list[dict]] = {VETH: [], TUNNEL: []}
    system = STAND_IN if args.stand_in else SYSTEM
    suite = "tunnel-stand-in" if args.stand_in else "tunnel"  # never taken for the tunnel's figures
    with Lab() as lab:
        stand = Stand(lab, args.stand_in)
        print(f"{args.rounds} rounds, iperf3 TCP {args.seconds:g} s, {args.pings} echoes per path"
              f"{f', UDP {args.udp_size} B at {args.udp_rate}' if args.udp else ''}; order reversed every round")
        for name in (VETH, TUNNEL):
            mtu = C.link_mtu(stand.ns[0], "eth0" if name == VETH else C.TUNNEL_IFNAME)
            print(f"  {name:<8} {system[name]} (MTU {mtu})")
        for r in range(args.rounds):
            order = (VETH, TUNNEL) if r % 2 == 0 else (TUNNEL, VETH)
            for i, name in enumerate(order):
                t = tcp_run(stand, name, args.seconds, 5201 + i)
                tcp[name].append(t)
                cpu = (f"; agents' CPU {t['cpu_us_per_frame']:.1f} µs per tunnel frame ({t['frames']:,} frames)"
                       if t["cpu_us_per_frame"] is not None else "")
                drops = (", drops " + ", ".join(f"{k} {v}" for k, v in t["drops"].items())) if t["drops"] else ""
                print(f"round {r + 1} TCP  {name:<8} {t['gbits']:7.3f} Gbit/s, {t['retransmits']} retransmits, "
                      f"MSS {t['mss']}, mean RTT {t['mean_rtt_ms']} ms{cpu}{drops}")
            for name in order:
                s = C.icmp_rtts(stand.ns[0], stand.addr[name], args.pings, interval=0.002)
                rtt[name].append(s)
                print(f"round {r + 1} ping {name:<8} {s.answered}/{s.sent} answered, avg "
                      f"{s.avg_ms if s.avg_ms is None else round(s.avg_ms, 3)} ms, median "
                      f"{s.median_ms if s.median_ms is None else round(s.median_ms, 3)} ms, min "
                      f"{s.min_ms if s.min_ms is None else round(s.min_ms, 3)} ms")
            if args.udp:
                for i, name in enumerate(order):
                    u = udp_run(stand, name, args.seconds, args.udp_rate, args.udp_size, 5211 + i)
                    udp[name].append(u)
                    print(f"round {r + 1} UDP  {name:<8} {u['per_second']:>10,.0f} datagrams/s received, "
                          f"{u['lost']:,} of {u['sent']:,} lost")
            tv, tt = tcp[VETH][-1], tcp[TUNNEL][-1]
            rv, rt = rtt[VETH][-1], rtt[TUNNEL][-1]
            added = (rt.avg_ms - rv.avg_ms) if rt.avg_ms is not None and rv.avg_ms is not None else None
            print(f"round {r + 1} tessera0 / veth TCP {tt['gbits'] / max(tv['gbits'], 1e-9):.3f}; added RTT "
                  f"{'n/a' if added is None else f'{added:.3f} ms'}")
    ratios = [t["gbits"] / max(v["gbits"], 1e-9) for v, t in zip(tcp[VETH], tcp[TUNNEL])]
    both = [(v, t) for v, t in zip(rtt[VETH], rtt[TUNNEL]) if t.avg_ms is not None and v.avg_ms is not None]
    added = [t.avg_ms - v.avg_ms for v, t in both]
    added_median = [t.median_ms - v.median_ms for v, t in both]
    print("\nmedian [min – max] over rounds")
    rows = []
    for name in (VETH, TUNNEL):
        g = spread([t["gbits"] for t in tcp[name]])
        retr = sum(t["retransmits"] or 0 for t in tcp[name])
        cpus = [t["cpu_us_per_frame"] for t in tcp[name] if t["cpu_us_per_frame"] is not None]
        print(f"TCP  {name:<8} {fmt(g)} Gbit/s, {retr} retransmits in all, MSS {sorted({t['mss'] for t in tcp[name]})}"
              + (f", agents' CPU {fmt(spread(cpus), '.1f')} µs per tunnel frame" if cpus else ""))
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
                   "server_cpu_us": "both agents' CPU per tunnel frame sent (tessera0 only)",
                   **({"ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)]}
                      if name == TUNNEL else {})}))
        answered = [s for s in rtt[name] if s.avg_ms is not None]
        avg = spread([s.avg_ms for s in answered]) if answered else None
        med = spread([s.median_ms for s in answered]) if answered else None
        print(f"ping {name:<8} avg {fmt(avg) if avg else 'n/a'} ms, median {fmt(med) if med else 'n/a'} ms, "
              f"{sum(s.answered for s in rtt[name])}/{sum(s.sent for s in rtt[name])} answered")
        rows.append(Row(
            suite=suite, system=system[name], exchange=PING_EXCHANGE.format(name),
            count=sum(s.answered for s in rtt[name]), failed=sum(s.sent - s.answered for s in rtt[name]),
            p50_ms=med[0] if med else None, load1=load1(),
            extra={"avg_ms": avg[0] if avg else None, "avg_ms_range": [avg[1], avg[2]] if avg else None,
                   "min_ms": min(s.min_ms for s in answered) if answered else None,
                   **({"added_rtt_ms": statistics.median(added), "added_rtt_ms_range": [min(added), max(added)],
                       "added_rtt_median_ms": statistics.median(added_median)}
                      if name == TUNNEL and added else {})}))
        if args.udp:
            u = spread([x["per_second"] for x in udp[name]])
            print(f"UDP  {name:<8} {fmt(u, ',.0f')} datagrams/s of {args.udp_size} B received")
            rows.append(Row(
                suite=suite, system=system[name], exchange=UDP_EXCHANGE.format(name),
                count=sum(x["received"] for x in udp[name]), failed=sum(x["lost"] for x in udp[name]),
                seconds=sum(x["seconds"] for x in udp[name]), per_second=u[0], load1=load1(),
                extra={"per_second_range": [u[1], u[2]], "offered": args.udp_rate, "size": args.udp_size}))
    print(f"tessera0 / veth TCP per round: {fmt(spread(ratios))}")
    if added:
        print(f"added RTT (tessera0 avg - veth avg) per round: {fmt(spread(added))} ms; "
              f"by medians {fmt(spread(added_median))} ms")
    if args.stand_in:
        print("(--stand-in: plain veth, not the tunnel: these are no figures of tessera0)")
    append_rows(args.json, rows)
    if any(not t["bytes"] for t in tcp[TUNNEL]) or not any(s.answered for s in rtt[TUNNEL]):
        print("FAILED: tessera0 moved no data or answered no echo", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
