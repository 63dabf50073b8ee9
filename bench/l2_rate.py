#!/usr/bin/env python3
"""Peer frames/s between two admitted devices through the lab switch: plain AF_PACKET frames
and AEAD-protected Tessera records, in the same run.

How this works: builds a lab (FreeRADIUS, switch with hostapd per port and the port
controller's nftables table, two devices), admits both devices with EAP-TLS, and keys a peer
session between them with the real core (an in-memory realm: registration, TGTs, shared
service ticket, mutual proof). Then, twice — plain, then AEAD — one device sends ``--frames``
frames of ``--size`` bytes (EtherType 0x88B5) as fast as ``PacketTransport.send`` allows while
the other receives in a second process pinned to the other core: plain frames are only
counted, AEAD frames are opened (tag check, replay window) and counted. Prints frames/s for
both and the ratio. Bounded in count and time; tears everything down.

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tessera.agent.l2 import PacketTransport  # noqa: E402
from tessera.lab.netns import Lab  # noqa: E402


def session_channels():
    """A real peer session between two devices, keyed through an in-memory realm."""
    from tessera.realm import Realm
    from tessera.sqlite_registry import SQLiteRegistry
    from tests.unit.conftest import admit, make_device, peer

    now = time.time()
    realm = Realm.init(SQLiteRegistry(":memory:"), os.urandom(32), "bench.example", now)
    svc = realm.service("radius1")
    a, b = make_device(realm, "bench-a", now=now), make_device(realm, "bench-b", now=now)
    admit(svc, a, os.urandom, now)
    admit(svc, b, os.urandom, now)
    return peer(svc, a, b, os.urandom, now)


def receiver(ns: str, expect: int, ready, out, seconds: float, channel) -> None:
    os.sched_setaffinity(0, {1 % os.cpu_count()})
    rx = PacketTransport("eth0", netns=ns)
    ready.set()
    n, bad, first, last = 0, 0, None, None
    deadline = time.monotonic() + seconds
    while n < expect and time.monotonic() < deadline:
        r, _, _ = select.select([rx], [], [], 0.5)
        if not r:
            if n:
                break  # sender done and queue drained
            continue
        while (got := rx.recv()) is not None:
            if channel is not None:
                try:
                    channel.open(got[1])
                except Exception:  # noqa: BLE001 -- counted, the figure is the point
                    bad += 1
                    continue
            n += 1
            last = time.monotonic()
            first = first or last
    _, dropped = rx.stats()
    out.put((n, (last - first) if n > 1 else 0.0, dropped, bad))
    rx.close()


def run(d1, d2, frames: int, size: int, seconds: float, sender_channel=None, receiver_channel=None):
    ctx = mp.get_context("fork")
    ready, out = ctx.Event(), ctx.Queue()
    p = ctx.Process(target=receiver, args=(d2.ns, frames, ready, out, seconds, receiver_channel))
    p.start()
    ready.wait(10)
    os.sched_setaffinity(0, {0})
    tx = PacketTransport("eth0", netns=d1.ns)
    payload = os.urandom(size)
    seal = sender_channel.seal if sender_channel is not None else None
    t0 = time.monotonic()
    sent = 0
    deadline = t0 + seconds
    while sent < frames and time.monotonic() < deadline:
        frame = seal(payload) if seal else payload
        while True:
            try:
                tx.send(d2.mac, frame)
                break
            except BlockingIOError:
                select.select([], [tx], [], 0.01)
        sent += 1
    dt = time.monotonic() - t0
    got, rx_dt, dropped, bad = out.get(timeout=seconds + 10)
    p.join(5)
    tx.close()
    return sent / dt, (got / rx_dt if rx_dt else 0.0), got, sent, dropped, bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    from netns_tests.testbed import Testbed
    with Lab() as lab:
        tb = Testbed(lab, 2)
        try:
            d1, d2 = tb.devices
            tb.supplicant(d1), tb.supplicant(d2)
            if not tb.controller.wait_for(lambda c: c.is_open("p1", d1.mac) and c.is_open("p2", d2.mac), 15):
                sys.exit("devices were not admitted")
            ab, ba = session_channels()
            print(f"payload {args.size} B, dev1 → bridge + nftables port rules → dev2, sender and receiver on separate cores")
            rows, rejected = {}, 0
            for name, sc, rc in (("plain AF_PACKET", None, None), ("AEAD records", ab, ba)):
                tx_rate, rx_rate, got, sent, dropped, bad = run(d1, d2, args.frames, args.size, args.seconds, sc, rc)
                rows[name] = rx_rate
                rejected += bad
                print(f"{name:<16} sent {tx_rate:>9,.0f} frames/s; received {got}/{sent} ({got / max(sent, 1):.1%}) "
                      f"at {rx_rate:>9,.0f} frames/s; kernel drops {dropped}; rejected {bad}")
            print(f"AEAD / plain (receiver frames/s): {rows['AEAD records'] / max(rows['plain AF_PACKET'], 1):.2f}")
        finally:
            tb.close()
    # Frames the receiver could not keep up with are what a rate measures (kernel drops,
    # printed); a frame that arrived and failed to open is a broken run.
    if rejected:
        print(f"FAILED: {rejected} frames arrived but did not open", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
