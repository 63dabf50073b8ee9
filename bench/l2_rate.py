#!/usr/bin/env python3
"""Plain AF_PACKET frames/s between two admitted devices through the lab switch.

How this works: builds a lab (FreeRADIUS, switch with hostapd per port and the port
controller's nftables table, two devices), admits both devices with EAP-TLS, then one device
sends ``--frames`` frames of ``--size`` bytes (EtherType 0x88B5) to the other as fast as
``PacketTransport.send`` allows, while the receiver counts in a second process pinned to the
other core.  Prints sent/received frames per second and kernel drops.  This is the baseline
for the AEAD-protected path.  Bounded in count and time; tears everything down.

    sudo .venv/bin/python bench/l2_rate.py [--frames 200000] [--size 200]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import select
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "netns_tests"))

from tessera.agent.l2 import PacketTransport  # noqa: E402
from tessera.lab.netns import Lab  # noqa: E402


def receiver(ns: str, expect: int, ready, out, seconds: float) -> None:
    os.sched_setaffinity(0, {1 % os.cpu_count()})
    rx = PacketTransport("eth0", netns=ns)
    ready.set()
    n, first, last = 0, None, None
    deadline = time.monotonic() + seconds
    while n < expect and time.monotonic() < deadline:
        r, _, _ = select.select([rx], [], [], 0.5)
        if not r:
            if n:
                break  # sender done and queue drained
            continue
        while rx.recv() is not None:
            n += 1
            last = time.monotonic()
            first = first or last
    _, dropped = rx.stats()
    out.put((n, (last - first) if n > 1 else 0.0, dropped))
    rx.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    from testbed import Testbed
    with Lab() as lab:
        tb = Testbed(lab, 2)
        try:
            d1, d2 = tb.devices
            tb.supplicant(d1), tb.supplicant(d2)
            ctl = tb.controller
            if not ctl.wait_for(lambda c: c.is_open("p1", d1.mac) and c.is_open("p2", d2.mac), 15):
                sys.exit("devices were not admitted")
            ctx = mp.get_context("fork")
            ready, out = ctx.Event(), ctx.Queue()
            p = ctx.Process(target=receiver, args=(d2.ns, args.frames, ready, out, args.seconds))
            p.start()
            ready.wait(10)
            os.sched_setaffinity(0, {0})
            tx = PacketTransport("eth0", netns=d1.ns)
            payload = os.urandom(args.size)
            t0 = time.monotonic()
            sent = 0
            deadline = t0 + args.seconds
            while sent < args.frames and time.monotonic() < deadline:
                try:
                    tx.send(d2.mac, payload)
                    sent += 1
                except BlockingIOError:
                    select.select([], [tx], [], 0.01)
            dt = time.monotonic() - t0
            got, rx_dt, dropped = out.get(timeout=args.seconds + 10)
            p.join(5)
            tx.close()
            print(f"payload {args.size} B, through bridge + nftables port rules")
            print(f"sent     {sent} frames in {dt:.3f}s = {sent / dt:,.0f} frames/s")
            print(f"received {got} frames ({got / max(sent, 1):.1%}), "
                  f"{got / rx_dt if rx_dt else 0:,.0f} frames/s; kernel drops at receiver "
                  f"{dropped}")
        finally:
            tb.close()


if __name__ == "__main__":
    main()
