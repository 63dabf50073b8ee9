#!/usr/bin/env python3
"""The MIT Kerberos anchor: KDC CPU per exchange for AS (two messages and one), TGS and
user-to-user TGS, stock and with DB writes off, in one sitting with Tessera's figures.

How this works: a throwaway realm in a temp dir (removed at the end, also on failure): a KDC
profile and a client profile pointed to by ``KRB5_KDC_PROFILE``/``KRB5_CONFIG``, listening only
on 127.0.0.1 and a free port, aes256-cts only, every principal ``+preauth``;
``kdb5_util create -s``, then ONE ``kadmin.local`` call adds the ``host/devNNNN`` principals and
writes their keytabs with ``ktadd -norandkey`` (kvno 1, the keys in the DB). For each config
the KDC runs as ``krb5kdc -n -r REALM -w W`` under setsid and is stopped by its PID. The load
generator is ``bench/krb5_load.c`` (compiled here with gcc into ``build/``, git-ignored): T
threads with their own krb5_context and MEMORY: keytabs, T exchanges in flight; it prints
"ready" after its setup (the TGTs that TGS and user-to-user need), and the KDC's CPU -- the
run time of the supervisor and its workers from /proc/PID/schedstat (``Kdc.cpu_seconds``) --
is read right before it starts and right after it reports. ``kinit`` per process would be
fork/exec-bound at ~180/s (../shared/notes/kerberos-bench.md).

Configs: ``stock`` (the KDC writes last-success, with an fsync, on every pre-authenticated AS;
the realm lives under $TMPDIR, whose filesystem the run prints: on tmpfs the fsync is free) and
``nowrites`` (``disable_last_success``/``disable_lockout``): Tessera's targets compare with
``nowrites``. Rounds alternate the configs' order; the table shows the median and the range.
Any failed exchange (or a service ticket not sealed as the exchange promises, which the
generator checks before its clock starts) makes the run print the errors instead of figures
and exit 1.

Workers: ``-w 2`` (the default), by measurement here: no DB writes, 8 client threads, 4 rounds
of 1.5 s alternating the worker counts in one realm, load average 13-19 from other benchmarks
(KDC CPU µs per exchange, median of the rounds):

    krb5kdc        AS (2 msg)   AS (1 msg)   TGS   user-to-user
    one process       145           94       148       219
    -w 1              143           95       149       221
    -w 2              154           99       168       243
    -w 4              154          103       165       271

A second sitting (6 rounds, load 12-83) gave one process 158/102/174/249 and -w 2
152/100/175/257: the difference between one process and two workers is within the noise
(-4 % to +11 % across the sittings), while -w 4 costs more on 2 cores (more processes than
cores). Two workers are what a KDC on a 2-core machine runs, and the smallest setting that
lets it use both cores; exchanges/s varied 2-3x between sittings under that load, so none of
them decided it.

Transport: requests go by UDP up to libkrb5's ``udp_preference_limit`` (1465 bytes, the
default, kept as ../shared/notes/kerberos-bench.md measured); the user-to-user TGS-REQ carries
B's TGT as well (~2 KB) and so goes by TCP, one connection per exchange. Measured here in one
sitting (6 rounds alternated): 221 µs of KDC CPU per user-to-user exchange by TCP, 198 µs by UDP
(``--udp-preference-limit 4096``); TGS is UDP either way. Tessera's exchanges are RADIUS over
UDP: the UDP figure is the stricter anchor.

    .venv/bin/python bench/kerberos.py [--seconds 3] [--rounds 3] [--threads 8] [--workers 2]
        [--configs stock nowrites] [--exchanges as as1 tgs u2u] [--udp-preference-limit 1465]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from measure import Row, append_rows, load1  # noqa: E402

REALM = "BENCH.TESSERA.TEST"
ENCTYPE = "aes256-cts-hmac-sha1-96"
EXCHANGES = {
    "as": "AS with pre-auth (2 messages)",
    "as1": "AS with pre-auth (1 message)",
    "tgs": "TGS",
    "u2u": "user-to-user TGS",
}
CONFIGS = {"stock": "stock config", "nowrites": "no DB writes"}
SOURCE = HERE / "krb5_load.c"
BUILD = HERE.parent / "build"
SBIN = ("/usr/sbin", "/sbin")


def tool(name: str) -> str:
    """Path of a command, also where root's PATH lacks /usr/sbin (krb5kdc, kdb5_util, kadmin.local)."""
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))
    if found is None:
        raise SystemExit(f"{name} not found: install krb5-kdc krb5-admin-server libkrb5-dev gcc (tools/bootstrap)")
    return found


def kdc_version() -> str:
    """The installed krb5kdc's upstream version, e.g. "1.20.1" (dpkg; krb5-config as a fallback)."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        v = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "krb5-kdc"], check=True,
                           capture_output=True, text=True).stdout.strip()
        if v:
            return v.split(":")[-1].split("-")[0]
    out = subprocess.run([tool("krb5-config"), "--version"], check=True, capture_output=True, text=True).stdout
    return out.split()[-1]


def build_load(build_dir: Path = BUILD) -> Path:
    """Compile krb5_load.c (once per source version: ``krb5_load-<hash>``) and return the
    binary's path."""
    flags = subprocess.run([tool("krb5-config"), "--cflags", "--libs", "krb5"], check=True,
                           capture_output=True, text=True).stdout.split()
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags).encode()).hexdigest()[:12]
    out = build_dir / f"krb5_load-{digest}"
    if not out.exists():
        build_dir.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        try:
            subprocess.run([tool("gcc"), "-O2", "-Wall", "-pthread", str(SOURCE), "-o", str(tmp), *flags], check=True)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    for old in build_dir.glob("krb5_load-*"):
        if old != out and not old.name.endswith(".tmp"):
            old.unlink(missing_ok=True)  # an older source's binary
    return out


def free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port on 127.0.0.1")


def filesystem(path: Path) -> str:
    """The type of the filesystem holding ``path`` ("ext4", "tmpfs": where the stock config's
    fsync goes; on tmpfs it costs nothing)."""
    best, kind = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount, fstype, *_ = line.split()
        if (str(path) + "/").startswith(mount.rstrip("/") + "/") and len(mount) >= len(best):
            best, kind = mount, fstype
    return kind


def device_name(n: int) -> str:
    return f"host/dev{n:04d}"


class Kdc:
    """A running ``krb5kdc -n`` (a session leader) and its workers; ``stop`` ends them by PID."""

    def __init__(self, proc: subprocess.Popen, log: Path):
        self.proc = proc
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def workers(self) -> list[int]:
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    stat = (entry / "stat").read_text()
                    if int(stat[stat.rindex(")") + 2:].split()[1]) == self.pid:
                        out.append(int(entry.name))
        return out

    def cpu_seconds(self) -> float:
        """CPU time of the supervisor and its workers (single-threaded processes) from
        /proc/PID/schedstat, exact to the ns while they wait for requests; the utime + stime of
        /proc/PID/stat (radius_load.tree_cpu_seconds) count 10 ms ticks, too coarse for a short
        window split over workers."""
        total = 0
        for pid in (self.pid, *self.workers()):
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        return total / 1e9

    def stop(self) -> None:
        """SIGTERM to the supervisor (it stops its workers); SIGKILL to the supervisor after
        10 s and to any worker still in its session."""
        workers = self.workers()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in workers:  # still in the KDC's session: a worker the supervisor left behind
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                if int(stat[stat.rindex(")") + 2:].split()[3]) == self.pid:
                    os.kill(pid, signal.SIGKILL)


@dataclass
class Realm:
    """A throwaway realm's files in ``directory``: profiles, database, stash, keytabs, logs."""

    directory: Path
    port: int
    devices: int
    udp_preference_limit: int = 1465  # libkrb5's default: larger requests (user-to-user) go by TCP

    @property
    def keytabs(self) -> Path:
        return self.directory / "keytabs"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KRB5_CONFIG": str(self.directory / "krb5.conf"),
                "KRB5_KDC_PROFILE": str(self.directory / "kdc.conf"), "KRB5RCACHETYPE": "none"}

    def write_profiles(self, config: str) -> None:
        """The client profile and the KDC profile for ``config`` ("stock" or "nowrites")."""
        d, port = self.directory, self.port
        (d / "krb5.conf").write_text(f"""\
[libdefaults]
    default_realm = {REALM}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    udp_preference_limit = {self.udp_preference_limit}
    permitted_enctypes = {ENCTYPE}
    default_tkt_enctypes = {ENCTYPE}
    default_tgs_enctypes = {ENCTYPE}
    forwardable = false
    noaddresses = true

[realms]
    {REALM} = {{
        kdc = 127.0.0.1:{port}
    }}
""")
        no_writes = "        disable_last_success = true\n        disable_lockout = true\n" if config == "nowrites" else ""
        (d / "kdc.conf").write_text(f"""\
[kdcdefaults]
    kdc_listen = 127.0.0.1:{port}
    kdc_tcp_listen = 127.0.0.1:{port}

[realms]
    {REALM} = {{
        database_module = bench
        database_name = {d}/principal
        key_stash_file = {d}/stash
        acl_file = {d}/kadm5.acl
        master_key_type = {ENCTYPE}
        supported_enctypes = {ENCTYPE}:normal
        default_principal_flags = +preauth
    }}

[dbmodules]
    bench = {{
        db_library = db2
        database_name = {d}/principal
{no_writes}    }}

[logging]
    kdc = FILE:{d}/kdc.log
    default = FILE:{d}/krb5.log
""")

    def kadmin(self, commands: list[str]) -> str:
        """Run ``commands`` in one ``kadmin.local`` process; raises with its output on an error."""
        p = subprocess.run([tool("kadmin.local"), "-r", REALM], input="\n".join(commands) + "\n",
                           env=self.env, capture_output=True, text=True, timeout=120)
        errors = [line for line in (p.stdout + p.stderr).splitlines()
                  if "error" in line.lower() or "while" in line.lower()]
        if p.returncode or errors:
            raise RuntimeError(f"kadmin.local failed: {errors or p.stderr.strip()}")
        return p.stdout

    @contextlib.contextmanager
    def kdc(self, config: str, workers: int) -> Iterator[Kdc]:
        """``krb5kdc`` for ``config`` with ``workers`` worker processes (0: one process), ready
        when every process has logged "commencing operation"; stopped by PID on exit."""
        self.write_profiles(config)
        log = self.directory / "kdc.log"
        start = log.stat().st_size if log.exists() else 0
        cmd = [tool("krb5kdc"), "-n", "-r", REALM, "-P", str(self.directory / "kdc.pid")]
        if workers:
            cmd += ["-w", str(workers)]
        out = open(self.directory / "kdc.out", "ab")
        proc = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
        out.close()
        kdc = Kdc(proc, log)
        try:
            deadline = time.monotonic() + 15
            while True:
                text = log.read_bytes()[start:].decode(errors="replace") if log.exists() else ""
                if text.count("commencing operation") >= max(workers, 1):
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"krb5kdc did not start (exit {proc.poll()}): {text[-2000:]}")
                time.sleep(0.02)
            yield kdc
        finally:
            kdc.stop()


@contextlib.contextmanager
def throwaway_realm(devices: int = 64, parent: str | None = None) -> Iterator[Realm]:
    """A new realm with ``devices`` principals host/devNNNN and their keytabs
    (``keytabs/devNNNN.keytab``); its directory is removed on exit, also on failure."""
    d = Path(tempfile.mkdtemp(prefix="tessera-krb5-", dir=parent))
    try:
        realm = Realm(d, free_port(), devices)
        realm.write_profiles("stock")
        (d / "kadm5.acl").write_text("")
        realm.keytabs.mkdir()
        subprocess.run([tool("kdb5_util"), "-r", REALM, "create", "-s", "-P", os.urandom(16).hex()],
                       env=realm.env, check=True, capture_output=True, timeout=60)
        names = [device_name(n) for n in range(devices)]
        realm.kadmin([f"addprinc -randkey {name}" for name in names]
                     + [f"ktadd -norandkey -k {realm.keytabs}/dev{n:04d}.keytab {name}"
                        for n, name in enumerate(names)])
        yield realm
    finally:
        shutil.rmtree(d, ignore_errors=True)


@dataclass
class Measurement:
    exchange: str
    completed: int
    failed: int
    seconds: float
    p50_ms: float | None
    p99_ms: float | None
    client_cpu: float          # the load generator's CPU seconds over the window
    kdc_cpu: float | None      # the KDC's (supervisor + workers) CPU seconds over the window
    first_error: str | None
    returncode: int            # the generator's: 0 all completed, 1 some failed

    @property
    def per_second(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    @property
    def kdc_us(self) -> float | None:
        return self.kdc_cpu / self.completed * 1e6 if self.completed and self.kdc_cpu is not None else None

    @property
    def client_us(self) -> float | None:
        return self.client_cpu / self.completed * 1e6 if self.completed else None


def run_load(binary: Path, realm: Realm, exchange: str, threads: int = 8, seconds: float | None = None,
             count: int | None = None, kdc: Kdc | None = None) -> Measurement:
    """One run of the load generator: ``count`` exchanges or ``seconds`` of them. Raises when
    its setup failed (e.g. no TGT for TGS); failed exchanges are counted, not raised."""
    cmd = [str(binary), "-x", exchange, "-k", str(realm.keytabs), "-d", str(realm.devices), "-t", str(threads), "-S"]
    cmd += ["-n", str(count)] if count else ["-s", str(seconds)]
    p = subprocess.Popen(cmd, env=realm.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        ready = p.stdout.readline()
        if ready.strip() != "ready":
            p.wait(10)
            raise RuntimeError(f"krb5_load {exchange}: {p.stderr.read().strip() or 'no ready line'}")
        cpu0 = kdc.cpu_seconds() if kdc else None
        p.stdin.write("go\n")
        p.stdin.flush()
        line = p.stdout.readline()
        cpu1 = kdc.cpu_seconds() if kdc else None
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if not line.strip():
        raise RuntimeError(f"krb5_load {exchange} exited {p.returncode} without a result: {p.stderr.read().strip()}")
    r = json.loads(line)
    return Measurement(exchange, r["completed"], r["failed"], r["seconds"], r["p50_ms"], r["p99_ms"],
                       r["cpu_seconds"], None if cpu0 is None else cpu1 - cpu0, r["first_error"], p.returncode)


def system_name(version: str, config: str, workers: int) -> str:
    procs = f"{workers} workers" if workers else "1 process"
    return f"MIT krb5 {version} KDC, {CONFIGS[config]}, {procs}"


def spread(values: list[float], fmt: str) -> str:
    """Median and range of ``values``: "312 (305–330)"."""
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def rows(results: dict[tuple[str, str], list[Measurement]], version: str, a, fs: str) -> list[Row]:
    """One Row per (config, exchange): medians over the rounds, the ranges in ``extra``.
    ``per_second`` is the median of the rounds' completed/seconds."""
    out = []
    for (config, exchange), ms in results.items():
        kdc = [m.kdc_us for m in ms if m.kdc_us is not None]
        rate = [m.per_second for m in ms]
        out.append(Row(
            suite="mit-krb5", system=system_name(version, config, a.workers), exchange=EXCHANGES[exchange],
            count=sum(m.completed for m in ms), failed=sum(m.failed for m in ms),
            seconds=round(sum(m.seconds for m in ms), 3), per_second=round(statistics.median(rate), 1),
            server_cpu_us=round(statistics.median(kdc), 1) if kdc else None,
            client_cpu_us=round(statistics.median([m.client_us for m in ms if m.client_us is not None]), 1),
            p50_ms=round(statistics.median([m.p50_ms for m in ms if m.p50_ms is not None]), 3),
            p99_ms=round(statistics.median([m.p99_ms for m in ms if m.p99_ms is not None]), 3),
            load1=round(load1(), 2),
            extra={"rounds": len(ms), "threads": a.threads, "workers": a.workers, "devices": a.devices,
                   "config": config, "udp_preference_limit": a.udp_preference_limit, "filesystem": fs,
                   "server_cpu_us_rounds": [round(x, 1) for x in kdc],
                   "per_second_rounds": [round(x, 1) for x in rate]},
        ))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", metavar="PATH", help="append result rows (bench/measure.py) to PATH")
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per exchange, config and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=8, help="load generator threads = exchanges in flight")
    p.add_argument("--workers", type=int, default=2, help="krb5kdc -w (0: a single process)")
    p.add_argument("--devices", type=int, default=64)
    p.add_argument("--udp-preference-limit", type=int, default=1465,
                   help="client requests larger than this go by TCP (1465: libkrb5's default, user-to-user by TCP)")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--exchanges", nargs="+", choices=list(EXCHANGES), default=list(EXCHANGES))
    a = p.parse_args(argv)

    version = kdc_version()
    binary = build_load()
    print(f"MIT krb5 {version} ({tool('krb5kdc')}), krb5kdc -w {a.workers}, {a.threads} client threads, "
          f"{a.devices} devices, {a.seconds:g} s x {a.rounds} rounds, {os.cpu_count()} CPUs", flush=True)
    results: dict[tuple[str, str], list[Measurement]] = {(c, x): [] for c in a.configs for x in a.exchanges}
    with throwaway_realm(a.devices) as realm:
        realm.udp_preference_limit = a.udp_preference_limit
        fs = filesystem(realm.directory)
        print(f"realm in {realm.directory} ({fs}), KDC on 127.0.0.1:{realm.port}", flush=True)
        for r in range(a.rounds):
            for config in (a.configs if r % 2 == 0 else a.configs[::-1]):
                with realm.kdc(config, a.workers) as kdc:
                    run_load(binary, realm, "as", a.threads, count=500, kdc=kdc)  # warm-up
                    for exchange in a.exchanges:
                        m = run_load(binary, realm, exchange, a.threads, seconds=a.seconds, kdc=kdc)
                        results[config, exchange].append(m)
                        print(f"  round {r + 1} {config:8s} {exchange:4s} {m.completed:7d} done {m.failed:5d} failed"
                              f"  {m.per_second:7.0f}/s", flush=True)

    failures = [(key, m) for key, ms in results.items() for m in ms if m.failed]
    if failures:
        for (config, exchange), m in failures:
            print(f"FAILED {config} {EXCHANGES[exchange]}: {m.failed} of {m.failed + m.completed}: {m.first_error}",
                  file=sys.stderr)
        return 1

    print(f"\n{'config':9s} {'exchange':31s} {'KDC CPU µs/exchange':>24s} {'exchanges/s':>24s} "
          f"{'p50 ms':>7s} {'p99 ms':>7s} {'client µs':>9s}")
    for (config, exchange), ms in results.items():
        print(f"{config:9s} {EXCHANGES[exchange]:31s} {spread([m.kdc_us for m in ms], '.0f'):>24s} "
              f"{spread([m.per_second for m in ms], ',.0f'):>24s} "
              f"{statistics.median([m.p50_ms for m in ms]):7.2f} {statistics.median([m.p99_ms for m in ms]):7.2f} "
              f"{statistics.median([m.client_us for m in ms]):9.0f}")
    print(f"(median and range over {a.rounds} rounds; load average {load1():.2f})")
    append_rows(a.json, rows(results, version, a, fs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
