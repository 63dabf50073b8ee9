"""Server CPU per Tessera exchange on a real FreeRADIUS with the plugin and a real realm.

Starts a private FreeRADIUS (`-f`) from the repo's config on loopback with a fresh realm
(SQLite registry), enrols and registers devices over RADIUS, then drives pre-built requests
(each fresh: its own nonce, so the replay cache passes it) for each exchange and prints the
server's CPU time per exchange (utime + stime of radiusd from /proc, divided by answers) and
the answers per second. The revocation query is measured with an empty list and with a full
one (128 devices of 16-character ids revoked within the horizon: the largest reply, ~3.4 kB in
14 attributes); its list is read from the registry once a second, so what it costs per answer
is the signature and the reply's size. Every request must be accepted: a rejected or lost request makes the
script exit 1 (a misconfigured run must not print plausible microseconds). Anchors (a Kerberos
KDC, FreeRADIUS PAP) measured in the same sitting are the benchmark suite's job, not this
script's.

    .venv/bin/python bench/realm_exchanges.py [--count 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from radius_load import prebuild, run_load  # noqa: E402

from tessera.device import DeviceClient  # noqa: E402
from tessera.identity import DeviceKey, ServerEntry  # noqa: E402
from tessera.lab import radiusd  # noqa: E402
from tessera.lab.pki import LabPKI  # noqa: E402
from tessera.peer import PeerInitiator, PeerResponder  # noqa: E402
from tessera.radius.client import RadiusClient, Server  # noqa: E402
from tessera.realm import Realm, create_kek  # noqa: E402
from tessera.service import Policy  # noqa: E402
from tessera.sqlite_registry import SQLiteRegistry  # noqa: E402

# Every request of a round comes from one device (one pair for sessions): a flood the replay
# cache's per-device and per-pair quotas would refuse after 512 and 32 proofs. The benchmark realm lifts the quota (the cache's global cap stays).
BENCH_POLICY = Policy(replay_quota=10 ** 7, replay_pair_quota=10 ** 7)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--registrations", type=int, default=2000)
    p.add_argument("--threads", type=int, default=0, help="radiusd worker threads (0: Debian's default pool)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as d:
        d = Path(d)
        now = time.time()
        realm = Realm.init(SQLiteRegistry(str(d / "registry.db")), create_kek(str(d / "kek")), "bench.example", now,
                       BENCH_POLICY)
        LabPKI(realm.ca).install_server_files(d / "tls", "radius.bench.example", now)
        cfg = radiusd.RadiusConfig(db=d / "registry.db", kek=d / "kek", tls_dir=d / "tls")
        raddb = radiusd.build_config(d / "raddb", cfg)
        if a.threads:  # rlm_python3 serialises every call: extra workers only contend for its lock
            conf = raddb / "radiusd.conf"
            text = conf.read_text()
            for key in ("start_servers", "max_servers", "min_spare_servers", "max_spare_servers"):
                text = radiusd.set_option(text, key, str(a.threads))
            conf.write_text(text)
        server = Server(cfg.server_id, cfg.address, cfg.port, cfg.secret.encode())
        entry = [ServerEntry(cfg.server_id, cfg.address, cfg.port)]
        devices = []
        for name in ("bench-a", "bench-b"):
            key = DeviceKey.generate()
            realm.enrol_key(name, key.public_bytes(), now)
            devices.append(DeviceClient(realm.bundle(name, entry, cfg.secret), key))
        regs = []
        for i in range(a.registrations):
            key = DeviceKey.generate()
            realm.enrol_key(f"reg-{i}", key.public_bytes(), now)
            dev = DeviceClient(realm.bundle(f"reg-{i}", entry, cfg.secret), key)
            regs.append((dev.device_id, dev.register_request(cfg.server_id, now, os.urandom(16))))
        with radiusd.RadiusServer.for_config(raddb, cfg) as rs:
            client = RadiusClient([server])
            for dev in devices:
                dev.register_reply(client.exchange(dev.device_id, lambda sid: dev.register_request(sid, time.time(), os.urandom(16))), time.time())
                dev.ticket_reply(client.exchange(dev.device_id, lambda sid: dev.auth_request(sid, time.time(), os.urandom(16))), time.time())
            x, y = devices
            print(f"FreeRADIUS pid {rs.pid}, realm {realm.name}; {a.count} requests per round, {a.window} in flight")
            print(f"{'exchange':<22} {'answered':>9} {'rejected':>8} {'lost':>5} {'per second':>11} {'server CPU/exchange':>20}")

            failures = []

            def report(name, requests):
                # FreeRADIUS keeps each answered request for cleanup_delay (5 s) and drops new ones
                # beyond max_requests (16,384): let the previous exchange's requests clear first
                time.sleep(6)
                res = run_load(server, prebuild(server, requests), pid=rs.pid, window=a.window)
                if res.rejected or res.lost:
                    failures.append(f"{name}: {res.rejected} rejected, {res.lost} lost")
                answered = res.accepted + res.rejected
                cpu = res.server_cpu / max(answered, 1) * 1e6
                print(f"{name:<22} {res.accepted:>9} {res.rejected:>8} {res.lost:>5} {answered / res.seconds:>11.0f} {cpu:>17.1f} µs",
                      flush=True)

            report("registration", regs)
            t = time.time()
            report("revocations (none)", [(x.device_id, x.revocation_request(cfg.server_id, t, os.urandom(16)))
                                          for _ in range(a.count)])
            for i in range(128):  # the largest list: its entries sized as test_size's device ids
                name = f"FOC2231X0AB-{1000 + i}"
                realm.enrol_key(name, DeviceKey.generate().public_bytes(), time.time())
                realm.revoke(name, time.time(), "benchmark")
            for r in range(a.rounds):
                t = time.time()
                report("TGT (auth with LLK)", [(x.device_id, x.auth_request(cfg.server_id, t, os.urandom(16))) for _ in range(a.count)])
                x.abandon()
                report("TGT renewal", [(x.device_id, x.renew_request(cfg.server_id, t, os.urandom(16))) for _ in range(a.count)])
                x.abandon()
                sreqs = []
                for _ in range(a.count):
                    ia, rb = PeerInitiator(x, y.device_id), PeerResponder(y)
                    rb.receive_hello(ia.hello(t, os.urandom(16)), t)
                    sreqs.append((y.device_id, rb.session_request(cfg.server_id, t, os.urandom(16))))
                report("session key (2 TGTs)", sreqs)
                report("revocations (128)", [(x.device_id, x.revocation_request(cfg.server_id, t, os.urandom(16)))
                                             for _ in range(a.count)])
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
