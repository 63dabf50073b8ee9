"""Server CPU per Tessera exchange on a real FreeRADIUS with the plugin and a real realm.

Starts a private FreeRADIUS (`-f`) from the repo's config on loopback with a fresh realm,
enrols and registers devices over RADIUS, then drives pre-built requests (each fresh: its own
nonce, so the replay cache passes it) for each exchange and prints the server's CPU time per
exchange (utime + stime of radiusd from /proc, divided by answers) and the answers per second.
The revocation query is measured with an empty list and with a full one (128 devices of
16-character ids revoked within the horizon: the largest reply, ~3.4 kB in 14 attributes).
Registrations are measured with fresh devices each round (a registration is a write).

`--registry` picks the realm's registry:
- `sqlite` (the default): a SQLite file beside the server.
- `postgresql`: a private PostgreSQL 15 cluster (`tessera.lab.postgres.private_cluster`) and
  the realm created in it; the module's registry is a `postgresql://` URL to 127.0.0.1 over TCP
  with scram-sha-256 and a 0600 `passfile=` -- not the unix socket, so the cost includes TCP
  and authentication as against a separate host (loopback has no wire latency, though).
  Whatever the module does with such a URL is what is measured (a query per request, or an
  in-process cache kept by LISTEN/NOTIFY; the module's first log lines are printed, naming
  the registry it opened). Besides radiusd's CPU, the cluster's CPU is
  counted separately: the postmaster and all its processes from /proc (backends, checkpointer,
  walwriter, autovacuum; exited ones through the postmaster's cutime/cstime). The cluster runs
  with fsync=off (lab.postgres), so a registration's commit waits for no disk flush here.
- `both`: a server on each, in ONE sitting, alternated per exchange (and the order reversed
  every round, so drift and the parallel load spread over both), then a table per exchange:
  radiusd CPU on SQLite, on PostgreSQL, their ratio, and PostgreSQL's own CPU, as medians with
  the range over rounds. The issue's target is TGT and session within 10 %.

Every request must be accepted: a rejected or lost request makes the script exit 1 (a
misconfigured run must not print plausible microseconds). The machine's 1-minute load average
is printed with each run (other work shares the cores). ``--json PATH`` appends one row per
run (bench/measure.py: suite "tessera", the exchange names above, radiusd CPU, p50/p99, the
load generator's CPU; PostgreSQL's own CPU in ``extra``). Anchors (a Kerberos KDC, FreeRADIUS
PAP) measured in the same sitting are the benchmark suite's job (bench/run), not this script's.

    .venv/bin/python bench/realm_exchanges.py [--registry sqlite|postgresql|both] [--count 20000] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import Row, append_rows, load1  # noqa: E402
from radius_load import Result, freeradius_version, prebuild, run_load, session_requests, tree_cpu_seconds  # noqa: E402

from tessera.device import DeviceClient  # noqa: E402
from tessera.identity import DeviceKey, ServerEntry  # noqa: E402
from tessera.lab import radiusd  # noqa: E402
from tessera.lab.pki import LabPKI  # noqa: E402
from tessera.radius.client import RadiusClient, Server  # noqa: E402
from tessera.realm import Realm, create_kek  # noqa: E402
from tessera.registry_url import open_registry  # noqa: E402
from tessera.service import Policy  # noqa: E402
from tessera.sqlite_registry import SQLiteRegistry  # noqa: E402

# Every request of a round comes from one device (one pair for sessions): a flood the replay
# cache's per-device and per-pair quotas would refuse after 512 and 32 proofs. The benchmark realm lifts the quota (the cache's global cap stays).
BENCH_POLICY = Policy(replay_quota=10 ** 7, replay_pair_quota=10 ** 7)
LABELS = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
# FreeRADIUS keeps each answered request for cleanup_delay (5 s) and drops new ones beyond
# max_requests (16,384): a server's previous load must clear before its next one
CLEANUP = 6.0
EXCHANGES = ("registration", "revocations (none)", "TGT (auth with LLK)", "TGT renewal",
             "session key (2 TGTs)", "revocations (128)")


@dataclass
class Backend:
    """One realm on one registry, its radiusd, and what was measured on it."""

    kind: str
    realm: Realm
    cfg: radiusd.RadiusConfig
    rs: radiusd.RadiusServer
    x: DeviceClient
    y: DeviceClient
    fresh: list[DeviceClient]  # enrolled, never registered: one batch per registration run
    postmaster: int | None
    ready_at: float = 0.0  # monotonic time its previous load has cleared
    results: dict[str, list[Result]] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)

    @property
    def label(self) -> str:
        return LABELS[self.kind]

    @property
    def server(self) -> Server:
        return Server(self.cfg.server_id, self.cfg.address, self.cfg.port, self.cfg.secret.encode())


def _postgres_registry(stack: contextlib.ExitStack, d: Path):
    """A private cluster on 127.0.0.1 with a scram password in a 0600 passfile: (its URL, the
    postmaster's PID)."""
    from tessera.lab.postgres import private_cluster

    c = stack.enter_context(private_cluster(address="127.0.0.1"))
    password = secrets.token_urlsafe(24)
    c.psql(f"ALTER ROLE \"{c.role}\" PASSWORD '{password}'")
    passfile = d / "pgpass"
    passfile.touch(0o600)
    passfile.write_text(f"127.0.0.1:{c.port}:{c.database}:{c.role}:{password}\n")
    return f"postgresql://{c.role}@127.0.0.1:{c.port}/{c.database}?passfile={passfile}", c.pid


def start_backend(kind: str, stack: contextlib.ExitStack, d: Path, a) -> Backend:
    """A realm on `kind`'s registry with devices enrolled, its radiusd started (and stopped by
    `stack`), the two benchmark devices registered and holding TGTs."""
    d.mkdir()
    now = time.time()
    if kind == "postgresql":
        url, postmaster = _postgres_registry(stack, d)
        registry = open_registry(url)
    else:
        url, postmaster = str(d / "registry.db"), None
        registry = SQLiteRegistry(url)
    realm = Realm.init(registry, create_kek(str(d / "kek")), "bench.example", now, BENCH_POLICY)
    stack.callback(registry.close)
    LabPKI(realm.ca).install_server_files(d / "tls", "radius.bench.example", now)
    cfg = radiusd.RadiusConfig(db=url, kek=d / "kek", tls_dir=d / "tls")
    raddb = radiusd.build_config(d / "raddb", cfg)
    if a.threads:  # rlm_python3 serialises every call: extra workers only contend for its lock
        conf = raddb / "radiusd.conf"
        text = conf.read_text()
        for key in ("start_servers", "max_servers", "min_spare_servers", "max_spare_servers"):
            text = radiusd.set_option(text, key, str(a.threads))
        conf.write_text(text)
    entry = [ServerEntry(cfg.server_id, cfg.address, cfg.port)]

    def enrol(name: str) -> DeviceClient:
        key = DeviceKey.generate()
        realm.enrol_key(name, key.public_bytes(), now)
        return DeviceClient(realm.bundle(name, entry, cfg.secret), key)

    x, y = enrol("bench-a"), enrol("bench-b")
    fresh = [enrol(f"reg-{i}") for i in range(a.registrations * a.rounds)]
    rs = stack.enter_context(radiusd.RadiusServer.for_config(raddb, cfg))
    b = Backend(kind, realm, cfg, rs, x, y, fresh, postmaster)
    client = RadiusClient([b.server])
    for dev in (x, y):
        dev.register_reply(client.exchange(dev.device_id, lambda sid: dev.register_request(sid, time.time(), os.urandom(16))), time.time())
        dev.ticket_reply(client.exchange(dev.device_id, lambda sid: dev.auth_request(sid, time.time(), os.urandom(16))), time.time())
    return b


def requests(b: Backend, exchange: str, n: int, n_regs: int) -> list[tuple[str, bytes]]:
    """Fresh requests for one run of `exchange` on `b` (built now: a proof's time must be
    within the clock skew when the server sees it)."""
    x, y, sid, t = b.x, b.y, b.cfg.server_id, time.time()
    if exchange == "registration":
        batch, b.fresh = b.fresh[:n_regs], b.fresh[n_regs:]
        return [(dev.device_id, dev.register_request(sid, t, os.urandom(16))) for dev in batch]
    if exchange.startswith("revocations"):
        return [(x.device_id, x.revocation_request(sid, t, os.urandom(16))) for _ in range(n)]
    if exchange in ("TGT (auth with LLK)", "TGT renewal"):
        build = x.auth_request if exchange == "TGT (auth with LLK)" else x.renew_request
        out = [(x.device_id, build(sid, t, os.urandom(16))) for _ in range(n)]
        x.abandon()  # the replies are not read: x keeps the TGT it holds
        return out
    return session_requests(x, y, sid, t, n)


def _load1() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def run(b: Backend, exchange: str, a, failures: list[str]) -> Result:
    reqs = requests(b, exchange, a.count, a.registrations)
    built = prebuild(b.server, reqs)
    time.sleep(max(0.0, b.ready_at - time.monotonic()))
    extra = (lambda: tree_cpu_seconds(b.postmaster)) if b.postmaster else None
    res = run_load(b.server, built, pid=b.rs.pid, window=a.window, extra_cpu=extra)
    b.ready_at = time.monotonic() + CLEANUP
    b.results.setdefault(exchange, []).append(res)
    b.rows.append(Row(
        suite="tessera", system=f"Tessera on FreeRADIUS {a.freeradius} (rlm_python3), {b.label}", exchange=exchange,
        count=res.answered, failed=res.rejected + res.lost, seconds=res.seconds,
        per_second=res.answered / res.seconds if res.seconds else 0.0,
        server_cpu_us=res.per_exchange_us(res.server_cpu), client_cpu_us=res.per_exchange_us(res.client_cpu),
        p50_ms=res.p50_ms, p99_ms=res.p99_ms, load1=load1(),
        extra={"round": len(b.results[exchange]), "registry": b.kind,
               **({"postgresql_cpu_us": res.per_exchange_us(res.extra_cpu)} if res.extra_cpu is not None else {})}))
    if res.rejected or res.lost:
        failures.append(f"{b.label} {exchange}: {res.rejected} rejected, {res.lost} lost")
    n = max(res.answered, 1)
    pg = f"{res.extra_cpu / n * 1e6:>10.1f} µs" if res.extra_cpu is not None else f"{'':>13}"
    print(f"{b.label:<10} {exchange:<22} {res.accepted:>9} {res.rejected:>8} {res.lost:>5} "
          f"{res.answered / res.seconds:>11.0f} {res.server_cpu / n * 1e6:>10.1f} µs {pg} {_load1():>6}", flush=True)
    return res


def _per(results: list[Result], what: str) -> list[float]:
    return [getattr(r, what) / max(r.answered, 1) * 1e6 for r in results]


def _span(values: list[float]) -> str:
    def num(v: float) -> str:
        return f"{v:.0f}" if v >= 10 else f"{v:.1f}"
    return f"{num(statistics.median(values))} ({num(min(values))}-{num(max(values))})"


def summary(sq: Backend, pg: Backend) -> None:
    """The per-exchange table of `both`: medians over rounds with their range."""
    print("\nCPU per exchange, µs: median (range over rounds); PostgreSQL: radiusd and, apart, the cluster")
    print(f"{'exchange':<22} {'SQLite radiusd':>18} {'PostgreSQL radiusd':>20} {'ratio':>6} "
          f"{'PostgreSQL server':>18} {'(radiusd+server)/SQLite':>24} {'per second SQLite / PostgreSQL':>31}")
    for exchange in EXCHANGES:
        s, p = sq.results.get(exchange), pg.results.get(exchange)
        if not s or not p:
            continue
        s_cpu, p_cpu, p_srv = _per(s, "server_cpu"), _per(p, "server_cpu"), _per(p, "extra_cpu")
        ratio = statistics.median(p_cpu) / statistics.median(s_cpu)
        total = (statistics.median(p_cpu) + statistics.median(p_srv)) / statistics.median(s_cpu)
        rates = (f"{statistics.median([r.answered / r.seconds for r in s]):,.0f} / "
                 f"{statistics.median([r.answered / r.seconds for r in p]):,.0f}")
        print(f"{exchange:<22} {_span(s_cpu):>18} {_span(p_cpu):>20} {ratio:>6.2f} {_span(p_srv):>18} "
              f"{total:>24.2f} {rates:>31}")
    for exchange in ("TGT (auth with LLK)", "TGT renewal", "session key (2 TGTs)"):
        s, p = sq.results.get(exchange), pg.results.get(exchange)
        if s and p:
            ratio = statistics.median(_per(p, "server_cpu")) / statistics.median(_per(s, "server_cpu"))
            print(f"target radiusd PostgreSQL/SQLite <= 1.10 for {exchange}: {ratio:.2f} "
                  f"{'met' if ratio <= 1.10 else 'NOT met'}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--registry", choices=("sqlite", "postgresql", "both"), default="sqlite")
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--registrations", type=int, default=2000, help="fresh devices registered per round")
    p.add_argument("--threads", type=int, default=0, help="radiusd worker threads (0: Debian's default pool)")
    p.add_argument("--json", help="append one row per run (bench/measure.py) to this JSON-lines file")
    a = p.parse_args(argv)
    a.freeradius = freeradius_version()
    kinds = ("sqlite", "postgresql") if a.registry == "both" else (a.registry,)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as d, contextlib.ExitStack() as stack:
        backends = [start_backend(kind, stack, Path(d) / kind, a) for kind in kinds]
        for b in backends:
            where = f", PostgreSQL postmaster pid {b.postmaster} (TCP 127.0.0.1, scram)" if b.postmaster else ""
            print(f"{b.label}: FreeRADIUS pid {b.rs.pid}{where}")
            for line in [x for x in b.rs.log_text().splitlines() if "tessera: " in x][:4]:
                print("  radiusd: " + line.split("tessera: ", 1)[1])  # how the module opened the realm
        print(f"realm {backends[0].realm.name}; {a.count} requests per run ({a.registrations} registrations), "
              f"{a.window} in flight, {a.rounds} rounds, {os.cpu_count()} cores")
        print(f"{'registry':<10} {'exchange':<22} {'answered':>9} {'rejected':>8} {'lost':>5} {'per second':>11} "
              f"{'radiusd CPU':>13} {'PG CPU':>13} {'load1':>6}")

        def each(exchange: str, order) -> None:
            for b in order:
                run(b, exchange, a, failures)

        each("revocations (none)", backends)
        for b in backends:  # the largest list: its entries sized as test_size's device ids
            for i in range(128):
                name = f"FOC2231X0AB-{1000 + i}"
                b.realm.enrol_key(name, DeviceKey.generate().public_bytes(), time.time())
                b.realm.revoke(name, time.time(), "benchmark")
        for r in range(a.rounds):
            order = backends if r % 2 == 0 else backends[::-1]
            for exchange in ("registration", "TGT (auth with LLK)", "TGT renewal", "session key (2 TGTs)",
                             "revocations (128)"):
                each(exchange, order)
        if len(backends) == 2:
            summary(*backends)
        append_rows(a.json, [row for b in backends for row in b.rows])
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
