#!/usr/bin/env python3
"""Frames/s one way over a veth pair: plain ``PacketTransport`` against the PACKET_MMAP
``RingTransport``, sending and receiving measured separately, alternated over rounds.

How this works: two namespaces joined by a veth pair (no switch, no crypto: only the wire
path's cost), sender processes pinned to core 0, receivers to core 1. Three measurements per
payload size, each for every transport, in an order rotated from round to round so that drift
in the machine's load falls on all alike:

* **send**: ``--frames`` frames as fast as the sender goes, nobody listening on the other end
  (the kernel drops them there after veth delivery, the same for every sender). ``plain`` is
  ``PacketTransport.send`` per frame (one syscall each); ``ring`` is ``RingTransport
  .send_batch`` of ``--batch`` frames (one kick per batch); ``ring+bypass`` the same with
  PACKET_QDISC_BYPASS. Figures: frames/s and the sender thread's CPU per frame.
* **receive**: ``--backlog`` frames are queued for a receiver that waits (ring sender), then it
  drains them as fast as it can: ``plain`` calls ``recv`` until empty (one syscall per frame),
  ``ring`` calls ``recv_batch(512)`` until short (none per frame). Figures: drain frames/s
  and the receiver's CPU per frame, at full batches: the per-frame cost without wakeups.
* **stream**: plain → plain and ring → ring at the sender's pace (receiver waking per batch
  that arrived): received frames/s, kernel drops, frames per wakeup and the pair's CPU per
  frame (sender + receiver; with the ring the copy into the receiver's ring runs on the
  sender's core, so only the sum compares like with like).

CPU per frame is thread CPU (user + system; the user/system split from getrusage is
tick-sampled, rough); it is what other load disturbs least on these 2 shared cores, while
frames/s swing with it. Ratios are per round, printed as median [min – max]. For scale the same
run times one AES-GCM seal of a 1486-byte PeerFrame record (1452-byte plaintext, the real
``RecordSender``).

    sudo .venv/bin/python bench/ring.py [--rounds 5] [--frames 100000] [--backlog 6000] [--json PATH]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import select
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import Row, append_rows, load1  # noqa: E402
from tessera.agent.l2 import PacketTransport  # noqa: E402
from tessera.agent.ring import RingTransport  # noqa: E402
from tessera.lab.netns import Lab  # noqa: E402

SENDERS = ("plain", "ring", "ring+bypass")
RECEIVERS = ("plain", "ring")
SIZES = (1452 + 48, 98)   # a full-MTU PeerFrame record; a 64-byte inner frame's record
SYSTEM = "veth pair between two namespaces, sender and receiver processes on separate cores"
DST = "02:00:5e:99:00:02"   # the receiving end's MAC (set on the veth)


def transport(kind: str, ns: str, rcvbuf: int = 32 << 20, rx_frames: int = 8192):
    if kind == "plain":
        return PacketTransport("eth0", netns=ns, rcvbuf=rcvbuf)
    return RingTransport("eth0", netns=ns, qdisc_bypass=kind.endswith("bypass"), rx_frames=rx_frames)


class Clock:
    """This thread's CPU (precise) and its user/system split (tick-sampled) since start."""

    def __init__(self):
        ru = resource.getrusage(resource.RUSAGE_THREAD)
        self.cpu, self.user, self.sys, self.wall = time.thread_time(), ru.ru_utime, ru.ru_stime, time.monotonic()

    def since(self) -> dict:
        ru = resource.getrusage(resource.RUSAGE_THREAD)
        return {"cpu": time.thread_time() - self.cpu, "user": ru.ru_utime - self.user,
                "sys": ru.ru_stime - self.sys, "wall": time.monotonic() - self.wall}


def drain_all(rx, kind: str) -> int:
    """Everything waiting: ring by full batches (a short one means empty), plain until None."""
    n = 0
    if kind == "ring":
        while True:
            k = len(rx.recv_batch(512))
            n += k
            if k < 512:
                return n
    while rx.recv() is not None:
        n += 1
    return n


def sender(kind: str, ns: str, frames: int, size: int, batch: int, seconds: float, out) -> None:
    os.sched_setaffinity(0, {0})
    tx = transport(kind, ns)
    payload = os.urandom(size)
    sent = blocked = 0
    clock = Clock()
    deadline = clock.wall + seconds
    if kind == "plain":
        send = tx.send
        while sent < frames and time.monotonic() < deadline:
            for _ in range(min(batch, frames - sent)):
                while True:
                    try:
                        send(DST, payload)
                        break
                    except BlockingIOError:
                        blocked += 1
                        select.select([], [tx], [], 0.01)
                sent += 1
    else:
        chunk = [(DST, payload)] * batch
        send_batch = tx.send_batch
        while sent < frames and time.monotonic() < deadline:
            k = min(batch, frames - sent)
            sent += send_batch(chunk if k == batch else chunk[:k])
        while tx.tx_pending() and time.monotonic() < deadline:
            tx.flush()
        blocked = tx.counters.tx_again + tx.counters.tx_nobufs
    t = clock.since()
    lost = tx.counters.tx_full_drops if kind != "plain" else 0
    tx.close()
    out.put({"sent": sent, "blocked": blocked, "lost": lost, "tx": t})


def receiver(kind: str, ns: str, expect: int, seconds: float, ready, go, out) -> None:
    """Stream mode (``go`` None): count per wakeup until ``expect``, the deadline or 0.5 s idle.
    Backlog mode: wait for ``go``, then drain what is queued as fast as possible."""
    os.sched_setaffinity(0, {1 % os.cpu_count()})
    rx = transport(kind, ns)
    rx.stats()
    poll = select.poll()
    poll.register(rx, select.POLLIN)
    n = wakeups = 0
    first = last = None
    ready.set()
    if go is not None:
        go.wait(seconds)
        clock = Clock()
        while n < expect and poll.poll(500):
            n += drain_all(rx, kind)
        t = clock.since()
        first, last = clock.wall, clock.wall + t["wall"]
    else:
        clock = Clock()
        deadline = clock.wall + seconds
        while n < expect:
            if not poll.poll(500):
                if n or time.monotonic() > deadline:
                    break
                continue
            woke = time.monotonic()
            wakeups += 1
            got = drain_all(rx, kind)
            if got:
                n += got
                first, last = first or woke, time.monotonic()
            if time.monotonic() > deadline:
                break
        t = clock.since()
    _, dropped = rx.stats()
    rx.close()
    out.put({"got": n, "seconds": (last - first) if n > 1 else 0.0, "dropped": dropped,
             "wakeups": wakeups, "rx": t})


def spawn(target, args):
    p = mp.get_context("fork").Process(target=target, args=args)
    p.start()
    return p


def reap(*procs) -> None:
    for p in procs:
        if p is None:
            continue
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()


def per_frame(t: dict, n: int) -> dict:
    return {k: t[k] / max(n, 1) * 1e6 for k in ("cpu", "user", "sys")}


def run_send(a: str, kind: str, frames: int, size: int, batch: int, seconds: float) -> dict:
    q = mp.get_context("fork").Queue()
    p = spawn(sender, (kind, a, frames, size, batch, seconds, q))
    try:
        s = q.get(timeout=seconds + 10)
    finally:
        reap(p)
    return {"rate": s["sent"] / s["tx"]["wall"], "n": s["sent"], "seconds": s["tx"]["wall"],
            "cpu_us": per_frame(s["tx"], s["sent"]), "lost": s["lost"], "blocked": s["blocked"], "dropped": 0}


def run_receive(a: str, b: str, kind: str, backlog: int, size: int, batch: int, seconds: float) -> dict:
    ctx = mp.get_context("fork")
    ready, go, rq, sq = ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Queue()
    r = spawn(receiver, (kind, b, backlog, seconds, ready, go, rq))
    s = None
    try:
        if not ready.wait(10):
            raise RuntimeError("receiver did not start")
        s = spawn(sender, ("ring", a, backlog, size, batch, seconds, sq))
        sent = sq.get(timeout=seconds + 10)["sent"]
        time.sleep(0.05)
        go.set()
        got = rq.get(timeout=seconds + 10)
    finally:
        reap(s, r)
    return {"rate": got["got"] / got["seconds"] if got["seconds"] else 0.0, "n": got["got"], "sent": sent,
            "seconds": got["seconds"], "cpu_us": per_frame(got["rx"], got["got"]), "dropped": got["dropped"]}


def run_stream(a: str, b: str, kind: str, frames: int, size: int, batch: int, seconds: float) -> dict:
    ctx = mp.get_context("fork")
    ready, rq, sq = ctx.Event(), ctx.Queue(), ctx.Queue()
    r = spawn(receiver, (kind, b, frames, seconds, ready, None, rq))
    s = None
    try:
        if not ready.wait(10):
            raise RuntimeError("receiver did not start")
        s = spawn(sender, (kind, a, frames, size, batch, seconds, sq))
        tx = sq.get(timeout=seconds + 10)
        got = rq.get(timeout=seconds + 10)
    finally:
        reap(s, r)
    tx_us, rx_us = per_frame(tx["tx"], tx["sent"]), per_frame(got["rx"], got["got"])
    return {"rate": got["got"] / got["seconds"] if got["seconds"] else 0.0, "n": got["got"], "sent": tx["sent"],
            "seconds": got["seconds"], "tx_cpu_us": tx_us, "rx_cpu_us": rx_us,
            "cpu_us": {"cpu": tx_us["cpu"] + rx_us["cpu"]}, "dropped": got["dropped"],
            "per_wakeup": got["got"] / max(got["wakeups"], 1), "lost": tx["lost"]}


def seal_us(n: int = 20000) -> float:
    """µs per RecordSender.seal_frame of a 1452-byte inner frame (a 1486-byte record)."""
    from tessera.record import RecordSender
    s = RecordSender(os.urandom(8), os.urandom(32), os.urandom(12))  # throwaway bench key
    plaintext = os.urandom(1452)
    assert len(s.seal_frame(plaintext)) == 1486
    seal = s.seal_frame
    t0 = time.thread_time()
    for _ in range(n):
        seal(plaintext)
    return (time.thread_time() - t0) / n * 1e6


def spread(xs: list[float], fmt: str = ".2f") -> str:
    return f"{statistics.median(xs):{fmt}} [{min(xs):{fmt}} – {max(xs):{fmt}}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of every measurement (default 5)")
    ap.add_argument("--frames", type=int, default=100_000, help="frames per send / stream run (default 100000)")
    ap.add_argument("--backlog", type=int, default=6000,
                    help="frames queued for a receive run (default 6000: fits both receivers' buffers)")
    ap.add_argument("--batch", type=int, default=64, help="frames per send_batch / sender step (default 64)")
    ap.add_argument("--seconds", type=float, default=10.0, help="bound on one run (default 10)")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="payload bytes (default 1500 98)")
    ap.add_argument("--json", metavar="PATH", help="append result rows (bench/measure.py) to PATH")
    args = ap.parse_args()
    tests = ([("send", k) for k in SENDERS] + [("receive", k) for k in RECEIVERS]
             + [("stream", k) for k in RECEIVERS])
    samples: dict[tuple[str, str, int], list[dict]] = {(m, k, z): [] for m, k in tests for z in args.sizes}
    seals: list[float] = []
    with Lab() as lab:
        a, b = lab.add_ns("a"), lab.add_ns("b")
        lab.add_veth(a, "eth0", b, "eth0")
        lab.run(b, ["ip", "link", "set", "eth0", "address", DST])
        print(f"{args.frames} frames per send/stream run, backlog {args.backlog}, {args.rounds} rounds, "
              f"sender batches of {args.batch}; {SYSTEM}; load {load1():.2f}")
        for rnd in range(args.rounds):
            k = rnd % len(tests)
            for size in args.sizes if rnd % 2 == 0 else list(reversed(args.sizes)):
                for what, kind in tests[k:] + tests[:k]:
                    if what == "send":
                        s = run_send(a, kind, args.frames, size, args.batch, args.seconds)
                    elif what == "receive":
                        s = run_receive(a, b, kind, args.backlog, size, args.batch, args.seconds)
                    else:
                        s = run_stream(a, b, kind, args.frames, size, args.batch, args.seconds)
                    samples[(what, kind, size)].append(s)
                    c = s["cpu_us"]
                    extra = (f"(user {c['user']:.2f} sys {c['sys']:.2f})" if "user" in c else
                             f"(sender {s['tx_cpu_us']['cpu']:.2f} + receiver {s['rx_cpu_us']['cpu']:.2f}), "
                             f"{s['per_wakeup']:.1f}/wakeup")
                    print(f"round {rnd + 1} {size:>4} B {what:<7} {kind:<11} {s['rate']:>9,.0f} frames/s, "
                          f"CPU {c['cpu']:5.2f} µs/frame {extra}; {s['n']} frames, "
                          f"kernel drops {s['dropped']}")
            seals.append(seal_us())
            print(f"round {rnd + 1} one AES-256-GCM seal of a 1486-byte record: {seals[-1]:.2f} µs "
                  f"(load {load1():.2f})")

    rows = []
    print("\nmedian [min – max] over rounds: frames/s, CPU µs per frame")
    for (what, kind, size), ss in samples.items():
        rate, cpu = [s["rate"] for s in ss], [s["cpu_us"]["cpu"] for s in ss]
        print(f"{size:>4} B {what:<7} {kind:<11} {spread(rate, ',.0f')} frames/s, CPU {spread(cpu)} µs/frame")
        rows.append(Row(suite="l2", system=SYSTEM, exchange=f"{what}, {kind}, {size} B",
                        count=sum(s["n"] for s in ss), failed=sum(s.get("sent", s["n"]) - s["n"] for s in ss),
                        seconds=sum(s["seconds"] for s in ss), per_second=statistics.median(rate),
                        server_cpu_us=statistics.median(cpu) if what == "receive" else None,
                        client_cpu_us=statistics.median(cpu) if what == "send" else None, load1=load1(),
                        extra={"measure": what, "transport": kind, "size": size, "batch": args.batch,
                               "rounds": args.rounds, "cpu_us_per_frame": statistics.median(cpu),
                               "cpu_us_range": [min(cpu), max(cpu)], "per_second_range": [min(rate), max(rate)],
                               "kernel_drops": sum(s["dropped"] for s in ss),
                               "cpu": {"send": "sender thread CPU per frame sent (incl. veth delivery)",
                                       "receive": "receiver thread CPU per frame drained from a backlog",
                                       "stream": "sender + receiver thread CPU per frame received"}[what]}))
    print("\nratios per round, median [min – max]")
    for size in args.sizes:
        def ratio(what: str, num: str, den: str, key: str = "cpu") -> list[float]:
            get = (lambda s: s["cpu_us"]["cpu"]) if key == "cpu" else (lambda s: s["rate"])
            return [get(n) / get(d) for n, d in zip(samples[(what, num, size)], samples[(what, den, size)])]
        send_cpu, send_rate = ratio("send", "plain", "ring"), ratio("send", "ring", "plain", "rate")
        bypass = ratio("send", "ring", "ring+bypass")
        recv_cpu, recv_rate = ratio("receive", "plain", "ring"), ratio("receive", "ring", "plain", "rate")
        pair, stream_rate = ratio("stream", "plain", "ring"), ratio("stream", "ring", "plain", "rate")
        print(f"{size:>4} B send:    plain/ring CPU per frame {spread(send_cpu)}; ring/plain frames/s "
              f"{spread(send_rate)}; ring/(ring+bypass) CPU {spread(bypass)}")
        print(f"{size:>4} B receive: plain/ring CPU per frame {spread(recv_cpu)}; ring/plain frames/s {spread(recv_rate)}")
        print(f"{size:>4} B stream:  plain/ring pair CPU per frame {spread(pair)}; ring/plain frames/s "
              f"{spread(stream_rate)}")
        for row in rows:
            if row.extra["size"] == size:
                row.extra.update({"send_cpu_plain_over_ring": statistics.median(send_cpu),
                                  "receive_cpu_plain_over_ring": statistics.median(recv_cpu),
                                  "stream_pair_cpu_plain_over_ring": statistics.median(pair),
                                  "bypass_cpu_ring_over_bypass": statistics.median(bypass)})
    print(f"one AES-256-GCM seal of a 1486-byte record: {spread(seals)} µs")
    rows.append(Row(suite="l2", system="RecordSender.seal_frame, this process",
                    exchange="AES-256-GCM seal, 1486-byte record",
                    count=20000 * len(seals), seconds=sum(seals) * 20000 / 1e6,
                    per_second=1e6 / statistics.median(seals), client_cpu_us=statistics.median(seals), load1=load1(),
                    extra={"range_us": [min(seals), max(seals)]}))
    append_rows(args.json, rows)
    lost = sum(s.get("lost", 0) for ss in samples.values() for s in ss)
    short = [(w, k, z) for (w, k, z), ss in samples.items() if w == "receive" and any(s["n"] < s["sent"] for s in ss)]
    if lost:
        print(f"note: {lost} frames dropped for a full TX ring (counted)", file=sys.stderr)
    if short:
        print(f"note: receive runs that did not get their whole backlog (buffer too small?): {short}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
