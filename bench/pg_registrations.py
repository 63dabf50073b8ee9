"""What a registered device costs a PostgreSQL registry, for the capacity estimate (docs/capacity.md).

Creates a realm in a private PostgreSQL 15 cluster (`tessera.lab.postgres.private_cluster`,
unix socket: sizes do not depend on the transport), enrols `--devices` devices and registers
each through the realm's service in this process (the same registry writes the module makes:
the compare-and-set UPDATE and its audit row), then re-registers each once (what a device does
when its registration nears its end, or after a factory reset), then records a location for
each (what the module writes after every 802.1X admission a switch relays). It prints:

- rows and bytes (heap + indexes + TOAST, `pg_total_relation_size`) per table, per device, after
  the first registrations, after the re-registrations, and after a VACUUM: an UPDATE writes a
  new row version (MVCC), so a table that is re-registered fills with dead versions that
  autovacuum reclaims for reuse;
- per enrolment, registration and location: WAL bytes (`pg_current_wal_lsn` before and after:
  what a replica or a WAL archive receives) and the cluster's CPU (the postmaster and its
  processes, from /proc; a serving module's feed reads are not in it: no listener runs here);
- the cache a serving module keeps (`tessera.registry_cache.RegistryCache`, filled from
  `pg_registry.read_changes` as the module fills it): bytes per device by `tracemalloc`,
  counting only what is still held once the feed's rows are dropped. Without that module it
  measures a dict of the registry's `DeviceRecord`s instead, and says so; and the time to read
  and apply the whole feed, which a module waits for when it starts.

`--certificates` enrols each device with a certificate (EAP-TLS admission): the row and the
cache then also hold its issuer and serial, and the cache an index entry for it.

The registration rate and CPU through a real FreeRADIUS are bench/realm_exchanges.py's
(`--registry postgresql`); the rate printed here (a Python client calling the service in a
loop) only shows the order of magnitude.

    .venv/bin/python bench/pg_registrations.py [--devices 20000] [--certificates]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from radius_load import tree_cpu_seconds  # noqa: E402

from tessera.device import DeviceClient  # noqa: E402
from tessera.identity import DeviceKey, ServerEntry  # noqa: E402
from tessera.lab.postgres import private_cluster  # noqa: E402
from tessera.realm import Realm, create_kek  # noqa: E402
from tessera.registry_url import open_registry  # noqa: E402

TABLES = ("device", "audit", "service_key", "meta", "nas", "server")


def sizes(c) -> dict[str, tuple[int, int, int]]:
    """table -> (live rows, dead rows, total bytes with indexes and TOAST)."""
    c.psql("ANALYZE", dbname=c.database)
    out = {}
    for line in c.psql("SELECT relname, n_live_tup, n_dead_tup, pg_total_relation_size(relid) "
                       "FROM pg_stat_user_tables", dbname=c.database).splitlines():
        name, live, dead, size = line.split("|")
        out[name] = (int(live), int(dead), int(size))
    return out


def wal(c) -> int:
    return int(c.psql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint", dbname=c.database))


def show(title: str, before: dict, after: dict, n: int) -> None:
    print(f"\n{title}")
    print(f"{'table':<12} {'live rows':>10} {'dead rows':>10} {'MB':>8} {'bytes per device':>17}")
    for t in TABLES:
        if t not in after:
            continue
        live, dead, size = after[t]
        grown = size - before.get(t, (0, 0, 0))[2]
        print(f"{t:<12} {live:>10} {dead:>10} {size / 1e6:>8.2f} {grown / n:>17.0f}")


def cache_bytes(conninfo: str) -> tuple[str, float, float]:
    """(what was measured, bytes per device a serving module keeps as built from the change
    feed, seconds to read and apply the whole feed: a starting module's wait, timed apart
    because tracemalloc slows allocation)."""
    import psycopg

    from tessera.pg_registry import read_changes
    try:
        from tessera.registry_cache import RegistryCache
    except ImportError:
        RegistryCache = None
    db = psycopg.connect(conninfo, autocommit=True)
    try:
        t0 = time.monotonic()
        horizon, rows, keys = read_changes(db, None)
        if RegistryCache is not None:
            RegistryCache().apply(rows, horizon, time.monotonic(), keys)
        fill = time.monotonic() - t0
        del rows, keys
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        horizon, rows, keys = read_changes(db, None)
        if RegistryCache is not None:
            kept = RegistryCache()
            kept.apply(rows, horizon, time.monotonic(), keys)
            what = "RegistryCache (tessera.registry_cache)"
        else:
            kept = {r.device_id: r for r in rows}
            what = "a dict of DeviceRecord (no tessera.registry_cache)"
        count = len(rows)
        del rows, keys
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        del kept
    finally:
        db.close()
    return what, held / max(count, 1), fill


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=20000)
    p.add_argument("--certificates", action="store_true",
                   help="enrol each device with a certificate from the realm's CA (EAP-TLS admission)")
    a = p.parse_args(argv)
    n = a.devices
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as d, private_cluster() as c:
        registry = open_registry(c.url())
        try:
            now = time.time()
            realm = Realm.init(registry, create_kek(os.path.join(d, "kek")), "bench.example", now)
            service = realm.service("radius1")
            entry = [ServerEntry("radius1", "127.0.0.1", 1812)]
            empty = sizes(c)
            w0, p0 = wal(c), tree_cpu_seconds(c.pid)
            devices = []
            for i in range(n):
                key = DeviceKey.generate()
                name = f"FOC2231X0AB-{i:06d}"  # the length of a switch's serial-number id
                cert = realm.issue_certificate(name, key.public_bytes(), now) if a.certificates else None
                realm.enrol_key(name, key.public_bytes(), now, certificate=cert)
                devices.append(DeviceClient(realm.bundle(name, entry), key))
            w1, p1 = wal(c), tree_cpu_seconds(c.pid)
            enrolled = sizes(c)
            t0 = time.monotonic()
            for dev in devices:
                t = time.time()
                dev.register_reply(service.handle(dev.register_request("radius1", t, os.urandom(16)), t), t)
            reg_s = time.monotonic() - t0
            w2, p2 = wal(c), tree_cpu_seconds(c.pid)
            registered = sizes(c)
            for dev in devices:
                t = time.time() + 1
                dev.register_reply(service.handle(dev.register_request("radius1", t, os.urandom(16)), t), t)
            w3, p3 = wal(c), tree_cpu_seconds(c.pid)
            again = sizes(c)
            for i, dev in enumerate(devices):  # what each 802.1X admission a switch relays writes
                service.record_location(dev.device_id, "switch-0042.bench.example", "192.0.2.42",
                                        f"GigabitEthernet1/0/{i % 48 + 1}", "02-00-5e-00-53-01", time.time() + 2)
            w4, p4 = wal(c), tree_cpu_seconds(c.pid)
            located = sizes(c)
            c.psql("VACUUM", dbname=c.database)
            vacuumed = sizes(c)
            print(f"{n} devices (ids of 18 characters{', with certificates' if a.certificates else ''}), "
                  f"PostgreSQL 15, fsync=off")
            print(f"WAL per enrolment {(w1 - w0) / n:,.0f} B, per registration {(w2 - w1) / n:,.0f} B, "
                  f"per re-registration {(w3 - w2) / n:,.0f} B, per admission's location {(w4 - w3) / n:,.0f} B")
            print(f"the cluster's CPU per enrolment {(p1 - p0) / n * 1e6:,.0f} µs, per registration "
                  f"{(p2 - p1) / n * 1e6:,.0f} µs, per re-registration {(p3 - p2) / n * 1e6:,.0f} µs, per location "
                  f"{(p4 - p3) / n * 1e6:,.0f} µs (the postmaster and its processes; no listener reads the feed here)")
            print(f"in-process registrations: {n / reg_s:,.0f}/s ({reg_s / n * 1e6:,.0f} µs each, client and "
                  f"server on this host, one connection)")
            show("enrolled (bytes per device: growth from the empty realm)", empty, enrolled, n)
            show("registered once (growth from the empty realm)", empty, registered, n)
            show("re-registered once more (growth from the empty realm; dead rows: old versions)", empty, again, n)
            show("a location recorded for each (an admission)", empty, located, n)
            show("after VACUUM (dead versions reclaimed for reuse; the files do not shrink)", empty, vacuumed, n)
            what, per, fill = cache_bytes(c.conninfo())
            print(f"\ncache per device: {per:,.0f} B ({what}, tracemalloc, {n} devices); filling it from the "
                  f"feed at start: {fill / n * 1e6:.1f} µs per device ({fill:.2f} s)")
        finally:
            registry.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
