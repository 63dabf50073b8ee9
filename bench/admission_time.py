#!/usr/bin/env python3
"""Link-up -> authorized time for N devices brought up at once (EAP-TLS, real parts).

How this works: builds a lab (FreeRADIUS, switch, hostapd per port, port controller) with N
devices whose switch ports are down (no carrier at the device), starts wpa_supplicant in each
device plus the agent-side carrier follower (CarrierWatcher -> REASSOCIATE on LinkUp), waits
until the supplicants have sent their useless first EAPOL-Start into the dead link, then
brings all N ports up with one ``ip -batch`` and measures, per device, the time from just
before that command to the controller's ``allow`` (the nftables rule in place).

    sudo .venv/bin/python bench/admission_time.py --devices 1 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tessera.agent.link import CarrierWatcher  # noqa: E402
from tessera.agent.supplicant import follow_carrier  # noqa: E402
from tessera.lab.netns import Lab, sh  # noqa: E402


def run(n: int, settle: float) -> list[float]:
    from netns_tests.testbed import Testbed
    with Lab() as lab:
        tb = Testbed(lab, n)
        stop = threading.Event()
        threads, watchers = [], []
        try:
            for d in tb.devices:
                tb.switch.set_carrier(d.port, False)
            sups = [tb.supplicant(d) for d in tb.devices]
            for d, s in zip(tb.devices, sups):
                w = CarrierWatcher(["eth0"], netns=d.ns)
                watchers.append(w)
                t = threading.Thread(target=follow_carrier, args=(w, {"eth0": s}, stop),
                                     daemon=True)
                t.start()
                threads.append(t)
            time.sleep(settle)  # first EAPOL-Start goes into the dead link
            ctl = tb.controller
            script = "".join(f"link set {d.port} up\n" for d in tb.devices)
            t0 = time.monotonic()
            sh(["ip", "-batch", "-"], ns=tb.switch.ns, input=script.encode())
            ok = ctl.wait_for(lambda c: all(c.is_open(d.port, d.mac) for d in tb.devices),
                              30 + n)
            if not ok:
                raise SystemExit(f"not all admitted: {ctl.authorized()}")
            return sorted(ctl.entries("allow +open", d.port)[-1].mono - t0
                          for d in tb.devices)
        finally:
            stop.set()
            for t in threads:
                t.join(2)
            for w in watchers:
                w.close()
            tb.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--settle", type=float, default=3.0)
    args = ap.parse_args()
    for n in args.devices:
        times = run(n, args.settle)
        print(f"{n:3d} devices: link-up -> authorized median {statistics.median(times)*1e3:6.0f} ms,"
              f" max {max(times)*1e3:6.0f} ms  (all: "
              + " ".join(f"{t*1e3:.0f}" for t in times) + ")", flush=True)


if __name__ == "__main__":
    main()
