#!/usr/bin/env python3
"""The floors under any Tessera exchange: FreeRADIUS PAP from `files`, and PAP behind a Python
module that returns at once -- measured with Tessera's own load generator.

How this works: one private radiusd (``tessera.lab.radiusd.build_floor_config``: the same
server core and listener settings as Tessera's private server) serves two sites on two UDP
ports: ``floor-pap`` (``authorize { files; pap }``, ``authenticate { pap }``, a users file of
Cleartext-Passwords, no Python) and ``floor-python`` (the same behind an rlm_python3 module
whose ``authorize`` returns RLM_MODULE_OK at once: rlm_python3's own marshalling and lock, the
least any Python module costs). ``radius_load.run_load`` drives pre-built PAP Access-Requests
with Message-Authenticator (``prebuild_pap``), many in flight, exactly as it drives Tessera's
requests; every reply carries Message-Authenticator as Tessera's do. Server CPU per request is
radiusd's utime + stime from /proc over the window divided by the answers; also requests/s,
p50/p99 latency and the load generator's own CPU. The two floors alternate, the order reversed
every round; a run waits until the previous one's requests left the server's table
(cleanup_delay), and a run is at most ``--count`` (< max_requests) requests so none is dropped.
Every request must be accepted, else exit 1.

    .venv/bin/python bench/freeradius_floor.py [--count 15000] [--rounds 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import Row, append_rows, load1  # noqa: E402
from radius_load import Result, freeradius_version, prebuild_pap, run_load  # noqa: E402

from tessera.lab import radiusd  # noqa: E402
from tessera.radius.client import Server  # noqa: E402

PAP, PYTHON = "PAP from files (no Python)", "PAP + Python module returning at once"
CLEANUP = 6.0  # FreeRADIUS keeps an answered request for cleanup_delay (5 s)


def to_row(system: str, exchange: str, res: Result, round_: int) -> Row:
    return Row(suite="freeradius", system=system, exchange=exchange, count=res.answered,
               failed=res.rejected + res.lost, seconds=res.seconds,
               per_second=res.answered / res.seconds if res.seconds else 0.0,
               server_cpu_us=res.per_exchange_us(res.server_cpu), client_cpu_us=res.per_exchange_us(res.client_cpu),
               p50_ms=res.p50_ms, p99_ms=res.p99_ms, load1=load1(), extra={"round": round_})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=15000, help="requests per run (below max_requests, 16,384)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--window", type=int, default=128, help="requests in flight (realm_exchanges' default)")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--json", help="append the rows (bench/measure.py) to this JSON-lines file")
    a = p.parse_args(argv)
    if a.count > 16000:
        p.error("--count above max_requests (16,384) would have the server drop requests")

    users = {f"floor{i:05d}": secrets.token_hex(8) for i in range(a.users)}
    names = list(users)
    system = f"FreeRADIUS {freeradius_version()}, minimal site"
    rows: list[Row] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tessera-floor-") as d:
        raddb, pap_port, python_port = radiusd.build_floor_config(Path(d) / "raddb", users)
        secret = "tessera-floor-secret"
        ports = {PAP: pap_port, PYTHON: python_port}
        with radiusd.RadiusServer(raddb, "127.0.0.1", pap_port, secret) as rs:
            print(f"{system}: radiusd pid {rs.pid}; {a.count} requests per run, {a.window} in flight, "
                  f"{a.rounds} rounds, {os.cpu_count()} cores")
            print(f"{'floor':<40} {'answered':>9} {'failed':>7} {'per second':>11} {'radiusd CPU':>13} "
                  f"{'p50':>8} {'p99':>8} {'generator':>11} {'load1':>6}")
            for r in range(a.rounds):
                for exchange in (PAP, PYTHON) if r % 2 == 0 else (PYTHON, PAP):
                    server = Server("floor", "127.0.0.1", ports[exchange], secret.encode())
                    reqs = [(n, users[n]) for n in (names[i % len(names)] for i in range(a.count))]
                    built = prebuild_pap(server, reqs)
                    time.sleep(CLEANUP if rows else 0.0)
                    res = run_load(server, built, pid=rs.pid, window=a.window)
                    row = to_row(system, exchange, res, r + 1)
                    rows.append(row)
                    if row.failed:
                        failures.append(f"{exchange}: {res.rejected} rejected, {res.lost} lost")
                    print(f"{exchange:<40} {row.count:>9} {row.failed:>7} {row.per_second:>11.0f} "
                          f"{row.server_cpu_us or 0:>10.1f} µs {row.p50_ms or 0:>5.2f} ms {row.p99_ms or 0:>5.2f} ms "
                          f"{row.client_cpu_us or 0:>8.1f} µs {row.load1:>6.2f}", flush=True)
    for exchange in (PAP, PYTHON):
        cpu = [r.server_cpu_us for r in rows if r.exchange == exchange and r.server_cpu_us is not None]
        if cpu:
            print(f"{exchange}: radiusd CPU median {statistics.median(cpu):.1f} µs ({min(cpu):.1f}-{max(cpu):.1f})")
    append_rows(a.json, rows)
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
