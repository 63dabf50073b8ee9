#!/usr/bin/env python3
"""The protocol core alone, no RADIUS: CPU per registration, TGT, renewal and session-key
exchange inside ``RealmService.handle``.

How this works: a realm on an in-memory SQLite registry and two devices enrolled by key; each
exchange's requests are built first (each with its own nonce, so the replay cache passes
them), then ``service.handle`` runs over all of them while ``time.process_time`` measures this
process's CPU. The service raises on any refusal, so a broken run stops with the reason and a
non-zero exit instead of printing plausible microseconds. Subtract these figures from
``bench/realm_exchanges.py``'s to see what FreeRADIUS and the adapter add.

    .venv/bin/python bench/core_alone.py [--count 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tessera.device import DeviceClient  # noqa: E402
from tessera.identity import DeviceKey, ServerEntry  # noqa: E402
from tessera.peer import PeerInitiator, PeerResponder  # noqa: E402
from tessera.realm import Realm  # noqa: E402
from tessera.service import Policy  # noqa: E402
from tessera.sqlite_registry import SQLiteRegistry  # noqa: E402

# Every request of a round comes from one device (one pair for sessions): a flood the replay
# cache's per-device and per-pair quotas would refuse after 512 and 32 proofs. The benchmark realm lifts the quota (the cache's global cap stays).
BENCH_POLICY = Policy(replay_quota=10 ** 7, replay_pair_quota=10 ** 7)

SERVER = "radius1"


def timed(service, requests: list[bytes], now: float) -> float:
    """CPU seconds per request for ``service.handle`` over ``requests`` (raises on a refusal)."""
    t0 = time.process_time()
    for req in requests:
        service.handle(req, now)
    return (time.process_time() - t0) / len(requests)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--registrations", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    now = time.time()
    realm = Realm.init(SQLiteRegistry(":memory:"), os.urandom(32), "bench.example", now,
                       BENCH_POLICY)
    service = realm.service(SERVER)
    entry = [ServerEntry(SERVER, "192.0.2.1")]

    def device(name: str) -> DeviceClient:
        key = DeviceKey.generate()
        realm.enrol_key(name, key.public_bytes(), now)
        return DeviceClient(realm.bundle(name, entry, "unused"), key)

    x, y = device("bench-x"), device("bench-y")
    for d in (x, y):
        d.register_reply(service.handle(d.register_request(SERVER, now, os.urandom(16)), now), now)
        d.ticket_reply(service.handle(d.auth_request(SERVER, now, os.urandom(16)), now), now)
    regs = [device(f"reg-{i}") for i in range(a.registrations)]
    print(f"the core alone, {a.count} requests per exchange per round (CPU of this process per request)")
    print(f"{'round':<6} {'registration':>13} {'TGT':>9} {'renewal':>9} {'session key':>12}")
    for r in range(a.rounds):
        t = now + r  # a fresh second per round; every request has its own nonce anyway
        reg = timed(service, [d.register_request(SERVER, t, os.urandom(16)) for d in regs], t)
        regs = [device(f"reg-{r}-{i}") for i in range(a.registrations)]
        tgt = timed(service, [x.auth_request(SERVER, t, os.urandom(16)) for _ in range(a.count)], t)
        x.abandon()
        renew = timed(service, [x.renew_request(SERVER, t, os.urandom(16)) for _ in range(a.count)], t)
        x.abandon()
        sreqs = []
        for _ in range(a.count):
            ia, rb = PeerInitiator(x, y.device_id), PeerResponder(y)
            rb.receive_hello(ia.hello(t, os.urandom(16)), t)
            sreqs.append(rb.session_request(SERVER, t, os.urandom(16)))
        sess = timed(service, sreqs, t)
        print(f"{r + 1:<6} {reg * 1e3:>10.3f} ms {tgt * 1e3:>6.3f} ms {renew * 1e3:>6.3f} ms {sess * 1e3:>9.3f} ms",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
