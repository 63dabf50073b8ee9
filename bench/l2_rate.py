#!/usr/bin/env python3
"""Peer frames/s between two admitted devices through the lab switch: plain AF_PACKET frames
and AEAD-protected Tessera records, alternated and repeated in the same run.

How this works: builds a lab (FreeRADIUS, switch with hostapd per port and the port
controller's nftables table, two devices), admits both devices with EAP-TLS, stops the lab's
switch capture (not part of the path; tcpdump would compete for the cores), and keys a peer
session between them with the real core (an in-memory realm: registration, TGTs, shared
service ticket, mutual proof). Then ``--rounds`` rounds, each one plain run and one AEAD run,
the order reversed every round (plain first, then AEAD first, ...), so that drift in the
machine's load falls on both alike. In a run one device sends ``--frames`` frames of ``--size``
bytes (EtherType 0x88B5) as fast as ``PacketTransport.send`` allows, pinned to one core, while
the other receives in a forked process pinned to the other core. Both paths do the same socket
work (``send`` / ``recv``: one syscall per frame; the receiver drains every frame waiting per
wakeup, the sender prepares ``--batch`` frames, then sends them, as a forwarder draining its
input would); the plain receiver counts what arrives, the AEAD sender seals every frame and the
AEAD receiver opens every frame (tag, session, replay window) and counts only those that open.
Batching the seals keeps AES-GCM's code and key warm between frames instead of evicted by the
kernel's forwarding of the previous one (~0.5 µs per frame here, plain gains ~0.4 µs too).

A run's rate is the receiver's: valid frames over the time from its first wakeup to the end of
its last drain. A receiver slower than the sender shows as kernel drops (its queue full), which
is what a rate is; its socket buffer (``--rcvbuf``, both paths alike) is large enough that a
receiver descheduled for a while by other load catches up instead of dropping. CPU per frame is
each side's own thread CPU (user + system, so the kernel's forwarding on the sender's core is in
the sender's figure) over the frames it sent / counted; 1 / the costlier side's CPU per frame is
the run's capacity on two free cores, a figure other load on the machine disturbs far less than
wall-clock rates. Prints every round, then the median and range of both rates, of CPU per
frame, and of the per-round ratios AEAD / plain (frames/s, and capacity). Each run is bounded
by ``--seconds``; everything is torn down.

    sudo .venv/bin/python bench/l2_rate.py [--rounds 5] [--frames 100000] [--size 200] [--batch 32] [--json PATH]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import select
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import Row, append_rows, load1  # noqa: E402
from tessera.agent.l2 import PacketTransport  # noqa: E402
from tessera.errors import TesseraError  # noqa: E402
from tessera.lab.netns import Lab  # noqa: E402

PLAIN, AEAD = "plain AF_PACKET frames", "AEAD records (AES-256-GCM)"
SYSTEM = "dev1 → lab switch (bridge + nftables port rules) → dev2, AF_PACKET, sender and receiver on separate cores"


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


def receiver(ns: str, expect: int, ready, out, seconds: float, rcvbuf: int, channel) -> None:
    """Count (plain) or open and count (AEAD) frames until ``expect``, the deadline, or 0.5 s idle."""
    os.sched_setaffinity(0, {1 % os.cpu_count()})
    rx = PacketTransport("eth0", netns=ns, rcvbuf=rcvbuf)
    rx.stats()  # the kernel's counters restart at each read
    recv, open_ = rx.recv, (channel.open if channel is not None else None)
    poll = select.poll()
    poll.register(rx, select.POLLIN)
    n, bad, first, last, wakeups = 0, 0, None, None, 0
    cpu0 = time.thread_time()
    ready.set()
    deadline = time.monotonic() + seconds
    while n < expect:
        if not poll.poll(500):
            if n or time.monotonic() > deadline:
                break  # sender done and queue drained, or nothing came
            continue
        woke, before = time.monotonic(), n
        wakeups += 1
        while (got := recv()) is not None:
            if open_ is not None:
                try:
                    open_(got[1])
                except TesseraError:
                    bad += 1
                    continue
            n += 1
        if n > before:
            first, last = first or woke, time.monotonic()
        if last is not None and last > deadline:
            break
    cpu = time.thread_time() - cpu0
    _, dropped = rx.stats()
    out.put((n, (last - first) if n > 1 else 0.0, cpu, dropped, bad, wakeups))
    rx.close()


def run(d1, d2, frames: int, size: int, seconds: float, rcvbuf: int, batch: int,
        sender_channel=None, receiver_channel=None) -> dict:
    """One run: a fresh receiver process, ``frames`` frames sent from here, ``batch`` at a time."""
    ctx = mp.get_context("fork")
    ready, out = ctx.Event(), ctx.Queue()
    p = ctx.Process(target=receiver, args=(d2.ns, frames, ready, out, seconds, rcvbuf, receiver_channel))
    p.start()
    try:
        if not ready.wait(10):
            raise RuntimeError("receiver did not start")
        os.sched_setaffinity(0, {0})
        tx = PacketTransport("eth0", netns=d1.ns)
        try:
            send, dst = tx.send, d2.mac
            payload = os.urandom(size)
            seal = sender_channel.seal if sender_channel is not None else None
            cpu0, t0 = time.thread_time(), time.monotonic()
            deadline, sent, blocked = t0 + seconds, 0, 0
            while sent < frames and time.monotonic() < deadline:
                k = min(batch, frames - sent)
                for frame in [seal(payload) for _ in range(k)] if seal is not None else [payload] * k:
                    while True:
                        try:
                            send(dst, frame)
                            break
                        except BlockingIOError:
                            blocked += 1
                            select.select([], [tx], [], 0.01)
                sent += k
            dt, tx_cpu = time.monotonic() - t0, time.thread_time() - cpu0
        finally:
            tx.close()
        got, rx_dt, rx_cpu, dropped, bad, wakeups = out.get(timeout=seconds + 10)
    finally:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()
        os.sched_setaffinity(0, range(os.cpu_count()))
    rx_cpu_us, tx_cpu_us = rx_cpu / max(got, 1) * 1e6, tx_cpu / max(sent, 1) * 1e6
    return {"rate": got / rx_dt if rx_dt else 0.0, "tx_rate": sent / dt, "got": got, "sent": sent,
            "seconds": rx_dt, "rx_cpu_us": rx_cpu_us, "tx_cpu_us": tx_cpu_us,
            "capacity": 1e6 / max(rx_cpu_us, tx_cpu_us), "dropped": dropped, "bad": bad,
            "per_wakeup": got / max(wakeups, 1), "blocked": blocked}


def spread(xs: list[float]) -> tuple[float, float, float]:
    return statistics.median(xs), min(xs), max(xs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of one plain and one AEAD run (default 5)")
    ap.add_argument("--frames", type=int, default=100_000, help="frames per run (default 100000)")
    ap.add_argument("--size", type=int, default=200, help="payload bytes (default 200)")
    ap.add_argument("--seconds", type=float, default=10.0, help="bound on one run (default 10)")
    ap.add_argument("--batch", type=int, default=32,
                    help="frames the sender prepares (plain: takes, AEAD: seals) before sending them (default 32)")
    ap.add_argument("--rcvbuf", type=int, default=32 << 20,
                    help="receiver's socket buffer, bytes (default 32 MiB: rides out being descheduled)")
    ap.add_argument("--json", metavar="PATH", help="append result rows (bench/measure.py) to PATH")
    args = ap.parse_args()
    from netns_tests.testbed import Testbed
    samples: dict[str, list[dict]] = {PLAIN: [], AEAD: []}
    with Lab() as lab:
        tb = Testbed(lab, 2)
        try:
            d1, d2 = tb.devices
            tb.supplicant(d1), tb.supplicant(d2)
            if not tb.controller.wait_for(lambda c: c.is_open("p1", d1.mac) and c.is_open("p2", d2.mac), 15):
                sys.exit("devices were not admitted")
            # The lab's switch capture (tcpdump, woken for every frame) would be a third
            # process on the two cores, taking its share from sender and receiver alike.
            tb.capture.stop()
            ab, ba = session_channels()
            print(f"payload {args.size} B, {args.frames} frames per run, {args.rounds} rounds, "
                  f"sender batches of {args.batch}; {SYSTEM}")
            channels = {PLAIN: (None, None), AEAD: (ab, ba)}
            for r in range(args.rounds):
                order = (PLAIN, AEAD) if r % 2 == 0 else (AEAD, PLAIN)
                for name in order:
                    s = run(d1, d2, args.frames, args.size, args.seconds, args.rcvbuf, args.batch, *channels[name])
                    samples[name].append(s)
                    print(f"round {r + 1} {name:<27} {s['rate']:>9,.0f} frames/s received ({s['got']}/{s['sent']}), "
                          f"sent {s['tx_rate']:>9,.0f}/s; CPU per frame: receiver {s['rx_cpu_us']:5.2f} µs, "
                          f"sender {s['tx_cpu_us']:5.2f} µs; {s['per_wakeup']:.1f} frames per receiver wakeup; "
                          f"sender blocked {s['blocked']}; kernel drops {s['dropped']}; rejected {s['bad']}")
                p, a = samples[PLAIN][-1], samples[AEAD][-1]
                print(f"round {r + 1} AEAD / plain {a['rate'] / max(p['rate'], 1):.2f} frames/s, "
                      f"{a['capacity'] / p['capacity']:.2f} by CPU per frame")
        finally:
            tb.close()
    ratios = [a["rate"] / max(p["rate"], 1) for p, a in zip(samples[PLAIN], samples[AEAD])]
    cpu_ratios = [a["capacity"] / p["capacity"] for p, a in zip(samples[PLAIN], samples[AEAD])]
    print("\nmedian [min – max] over rounds")
    rows = []
    for name, ss in samples.items():
        rate, rx_cpu, tx_cpu, tx_rate = (spread([s[k] for s in ss])
                                         for k in ("rate", "rx_cpu_us", "tx_cpu_us", "tx_rate"))
        print(f"{name:<27} {rate[0]:>9,.0f} [{rate[1]:,.0f} – {rate[2]:,.0f}] frames/s; "
              f"receiver CPU {rx_cpu[0]:.2f} [{rx_cpu[1]:.2f} – {rx_cpu[2]:.2f}] µs/frame, "
              f"sender CPU {tx_cpu[0]:.2f} [{tx_cpu[1]:.2f} – {tx_cpu[2]:.2f}] µs/frame")
        rows.append(Row(
            suite="l2", system=SYSTEM, exchange=name,
            count=sum(s["got"] for s in ss), failed=sum(s["sent"] - s["got"] for s in ss),
            seconds=sum(s["seconds"] for s in ss), per_second=rate[0],
            server_cpu_us=rx_cpu[0], client_cpu_us=tx_cpu[0], load1=load1(),
            extra={"size": args.size, "rounds": args.rounds, "frames_per_run": args.frames, "batch": args.batch,
                   "ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
                   "cpu_ratio": statistics.median(cpu_ratios), "cpu_ratio_range": [min(cpu_ratios), max(cpu_ratios)],
                   "capacity_per_second": statistics.median(s["capacity"] for s in ss), "rcvbuf": args.rcvbuf,
                   "per_second_range": [rate[1], rate[2]],
                   "receiver_cpu_us_range": [rx_cpu[1], rx_cpu[2]], "sender_cpu_us_range": [tx_cpu[1], tx_cpu[2]],
                   "sender_per_second": tx_rate[0], "sender_per_second_range": [tx_rate[1], tx_rate[2]],
                   "frames_per_wakeup": statistics.median(s["per_wakeup"] for s in ss),
                   "kernel_drops": sum(s["dropped"] for s in ss), "rejected": sum(s["bad"] for s in ss),
                   "server_cpu_us": "receiver thread CPU per valid frame",
                   "client_cpu_us": "sender thread CPU per frame sent"}))
    ratio, cpu_ratio = spread(ratios), spread(cpu_ratios)
    print(f"AEAD / plain, receiver frames/s per round: {ratio[0]:.2f} [{ratio[1]:.2f} – {ratio[2]:.2f}]")
    print(f"AEAD / plain, by CPU per frame of the costlier side per round: "
          f"{cpu_ratio[0]:.2f} [{cpu_ratio[1]:.2f} – {cpu_ratio[2]:.2f}]")
    append_rows(args.json, rows)
    # Frames the receiver could not keep up with are what a rate measures (kernel drops,
    # printed); a frame that arrived and failed to open is a broken run.
    rejected = sum(s["bad"] for s in samples[AEAD])
    if rejected:
        print(f"FAILED: {rejected} frames arrived but did not open", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
