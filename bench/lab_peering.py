#!/usr/bin/env python3
"""Link-up to every pair peered, in the namespace lab: the README's lab figures and curve.

How this works: for each ``--devices`` N, builds the lab (FreeRADIUS with the real realm on
SQLite, a switch with one hostapd per 802.1X port and nftables, N enrolled devices running
``tessera-agent``), starts every agent with its cable out and its event stream on one FIFO
(`tessera.lab.topology.AgentEvents`), then plugs every cable at once: one netlink batch in the
switch (`tessera.lab.netns.set_links`: all RTM_NEWLINKs in one sendmsg). From then on it only
reads the agents' events as they arrive (select on the FIFO; nothing polls a status socket):
a device is fully peered when it has announced a session with every other device. Times are
CLOCK_MONOTONIC stamps taken by the agents, minus the stamp taken just before the batch.

Per N it prints the time from link-up to the first and to the last device fully peered, the
median and latest time of each step (the agent saw carrier, its port authorized by EAP,
the switch's port controller read hostapd's AP-STA-CONNECTED, it opened the port in nftables,
registered, ticketed) and each agent's resident memory (VmRSS) read once it is fully
peered; with ``--json PATH`` it appends one `bench.measure.Row` per N (suite "lab"; seconds =
time to the last device, extra: first, sessions, rss_mean_mib/rss_max_mib, the per-device
completion times for the curve and the steps). Exits 1 if a device has not peered within the
timeout (its row then counts the pairs missing as failed). Root.

    sudo .venv/bin/python bench/lab_peering.py [--devices 10 25 50 100] [--timeout 60] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import Row, append_rows, load1  # noqa: E402
from tessera.lab.netns import Lab  # noqa: E402
from tessera.lab.topology import RealmLab  # noqa: E402
from tessera.node import Timers  # noqa: E402

STEPS = ("link-up", "authorized", "sta-connected", "port-open", "registered", "ticketed")


def rss_mib(pid: int) -> float | None:
    """VmRSS of a process, MiB (None if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_s(pids) -> float:
    """CPU seconds (user + system) the processes have used so far (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def run(n: int, timeout: float, announce_every: float = Timers.announce_every) -> dict:
    """Build the lab for n devices, link them up at once and follow their events until every
    device has peered with every other or `timeout` s passed."""
    with Lab() as lab:
        rl = RealmLab(lab, n, capture=False)
        try:
            events = rl.events()
            rl.set_carriers(rl.devices, False)
            for d in rl.devices:
                rl.start_agent(d, announce_every=announce_every, events=events)
            events.read(0)  # the "started" lines
            pids = {d.device_id: d.agent.pid for d in rl.devices}
            who = {"radiusd": [rl.radius.pid], "agents": list(pids.values()),
                   "hostapd": [p.pid for p in rl.switch.hostapd.values()]}
            cpu0 = {k: cpu_s(v) for k, v in who.items()}
            t0 = rl.set_carriers(rl.devices, True)
            peers: dict[str, set[str]] = {i: set() for i in pids}
            steps: dict[str, dict[str, float]] = {s: {} for s in STEPS}
            done: dict[str, float] = {}
            rss: dict[str, float] = {}
            while len(done) < n and time.monotonic() - t0 < timeout:
                for ev in events.read(max(0.0, t0 + timeout - time.monotonic())):
                    dev, kind, at = ev["device"], ev["event"], ev["t"] - t0
                    if kind in steps:
                        steps[kind].setdefault(dev, at)
                    elif kind == "peered" and ev.get("peer") in pids:
                        peers[dev].add(ev["peer"])
                        if len(peers[dev]) == n - 1 and dev not in done:
                            done[dev] = at
                            rss[dev] = rss_mib(pids[dev])
            cpu = {k: round(cpu_s(v) - cpu0[k], 2) for k, v in who.items()}  # from link-up to the end
            by_port = {d.dev.port: d.device_id for d in rl.devices}
            for step, what in (("sta-connected", "AP-STA-CONNECTED"), ("port-open", "allow +open")):
                for e in rl.controller.entries(what):  # the switch's side: hostapd's event read, nftables done
                    if e.port in by_port and e.mono >= t0:
                        steps[step].setdefault(by_port[e.port], e.mono - t0)
            pairs = {frozenset((a, b)) for a, ps in peers.items() for b in ps}
            return {"n": n, "done": done, "steps": steps, "rss": [v for v in rss.values() if v is not None],
                    "pairs": len(pairs), "load1": load1(), "timeout": timeout, "cpu": cpu,
                    "announce_every": announce_every}
        finally:
            rl.close()


def row(r: dict) -> Row:
    n, done = r["n"], sorted(r["done"].values())
    sessions = n * (n - 1) // 2
    last = done[-1] if len(done) == n else None
    rss = r["rss"]
    return Row(
        suite="lab", system=f"Tessera lab: FreeRADIUS 3.2 + rlm_python3 (SQLite), hostapd per port, {n} tessera-agents",
        exchange=f"{n} devices: link-up → all pairs peered", count=r["pairs"], failed=sessions - r["pairs"],
        seconds=round(last, 4) if last is not None else r["timeout"],  # not all: the window waited
        per_second=round(r["pairs"] / last, 1) if last else 0.0, load1=r["load1"],
        extra={"devices": n, "first": round(done[0], 4) if done else None, "sessions": sessions,
               "rss_mean_mib": round(statistics.fmean(rss), 1) if rss else None,
               "rss_max_mib": round(max(rss), 1) if rss else None,
               "cpu_s": r["cpu"], "announce_every": r["announce_every"], "completion_s": [round(x, 4) for x in done],
               "steps_s": {k: sorted(round(x, 4) for x in v.values()) for k, v in r["steps"].items()}})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[10, 25, 50, 100])
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--announce-every", type=float, default=Timers.announce_every,
                    help="the agents' announce period (default: the agent's own, %(default)s s; the lab's tests use "
                         "0.5 s, which at 100 devices is ~20,000 announces a second for the agents to read)")
    ap.add_argument("--json", metavar="PATH", help="append one bench.measure Row per device count (JSON lines)")
    a = ap.parse_args(argv)
    print(f"{'devices':>7} {'sessions':>8} {'first':>7} {'last':>7}   "
          + "  ".join(f"{s + ' med/max':>17}" for s in STEPS) + f"  {'RSS mean/max':>14}")
    ok = True
    for n in a.devices:
        r = run(n, a.timeout, a.announce_every)
        out = row(r)
        append_rows(a.json, [out])
        cols = []
        for s in STEPS:
            v = sorted(r["steps"][s].values())
            cols.append(f"{statistics.median(v):>7.3f}/{v[-1]:.3f} s" if v else f"{'-':>17}")
        x = out.extra
        rss = f"{x['rss_mean_mib']:.1f}/{x['rss_max_mib']:.1f} MiB" if x["rss_max_mib"] else "-"
        first = f"{x['first']:>5.2f} s" if x["first"] is not None else f"{'-':>7}"
        last = f"{out.seconds:>5.2f} s" if not out.failed else f"{'-':>7}"
        print(f"{n:>7} {out.count:>8} {first} {last}   " + "  ".join(f"{c:>17}" for c in cols) + f"  {rss:>14}"
              + "   CPU s " + ", ".join(f"{k} {v:.2f}" for k, v in x["cpu_s"].items()) + f"   load {out.load1:.1f}",
              flush=True)
        if out.failed:
            print(f"{n:>7}: {out.failed} of {x['sessions']} pairs not peered within {a.timeout:.0f} s", file=sys.stderr)
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
