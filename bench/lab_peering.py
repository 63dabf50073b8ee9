#!/usr/bin/env python3
"""Link-up to every pair peered, in the namespace lab: the README's lab figures.

How this works: for each ``--devices`` N, builds the lab (FreeRADIUS with the real realm on
SQLite, a switch with one hostapd per 802.1X port and nftables, N enrolled devices running
``tessera-agent``), brings every link up at once (one ``ip -batch`` in the switch), and polls
each agent's status socket until it holds a session with every other device. Prints the time
from link-up to the first and to the last device fully peered, and the session count. Exits 1
if any device has not peered within the timeout. Root.

    sudo .venv/bin/python bench/lab_peering.py [--devices 3 10 20] [--timeout 60]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tessera.lab.netns import Lab, sh  # noqa: E402
from tessera.lab.topology import RealmLab  # noqa: E402


def run(n: int, timeout: float) -> tuple[float, float, int] | None:
    """(first, last) seconds from link-up to a device peered with all others, sessions; None
    if not every device peered in time."""
    with Lab() as lab:
        rl = RealmLab(lab, n, capture=False)
        try:
            for d in rl.devices:
                rl.set_carrier(d, False)
                rl.start_agent(d)
            ids = [d.device_id for d in rl.devices]
            script = "".join(f"link set {d.dev.port} up\n" for d in rl.devices)
            t0 = time.monotonic()
            sh(["ip", "-batch", "-"], ns=rl.switch.ns, input=script.encode())
            peered: dict[str, float] = {}
            while len(peered) < n and time.monotonic() - t0 < timeout:
                for d in rl.devices:
                    if d.device_id not in peered and rl.peered(d, [i for i in ids if i != d.device_id]):
                        peered[d.device_id] = time.monotonic() - t0
                time.sleep(0.01)
            if len(peered) < n:
                return None
            return min(peered.values()), max(peered.values()), n * (n - 1) // 2
        finally:
            rl.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[3, 10, 20])
    ap.add_argument("--timeout", type=float, default=60.0)
    a = ap.parse_args(argv)
    print(f"{'devices':>7} {'sessions':>8} {'first peered':>13} {'all peered':>11}")
    for n in a.devices:
        got = run(n, a.timeout)
        if got is None:
            print(f"{n:>7}: not every device peered within {a.timeout:.0f} s", file=sys.stderr)
            return 1
        first, last, sessions = got
        print(f"{n:>7} {sessions:>8} {first:>11.2f} s {last:>9.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
