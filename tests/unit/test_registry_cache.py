"""RegistryCache in memory: what a feed read changes, the indexes, read-your-writes against an
older snapshot, freshness, and its revocation list against the SQLite registry's as a model."""

from __future__ import annotations

import dataclasses
import random
import tracemalloc

from tessera.registry import AuditEvent, DeviceRecord, DeviceState
from tessera.registry_cache import RegistryCache
from tessera.sqlite_registry import SQLiteRegistry

KEY = b"\x02" + b"\x11" * 32
ISSUER = "/O=Maker/CN=DevID CA"


def dev(device_id: str, state=DeviceState.ENROLLED, generation=0, updated=1, serial=None, drt=None) -> DeviceRecord:
    return DeviceRecord(device_id, KEY, state, "certificate" if serial else "key", 1, updated,
                        ISSUER if serial else None, serial, generation, registered_at=updated if generation else None,
                        registration_not_after=updated + 100 if generation else None, sealed_drt=drt)


def test_registry_cache_apply_serves_rows_and_drops_location_and_freshness():
    c = RegistryCache()
    full = dataclasses.replace(dev("SN-1", DeviceState.REGISTERED, 2, 50, drt=b"d" * 150), nas_identifier="sw1",
                               nas_port_id="ge-0/0/1", located_at=60, register_request_time=49,
                               register_request_nonces=b"n" * 16)
    assert c.apply([full], horizon=700, read_started_at=10.0) == 1
    got = c.get("SN-1")
    assert (got.state, got.generation, got.sealed_drt, got.registration_not_after) == \
        (DeviceState.REGISTERED, 2, b"d" * 150, 150)
    assert (got.nas_identifier, got.located_at, got.register_request_time, got.register_request_nonces) == \
        (None, None, None, None)
    assert c.get("SN-2") is None
    assert (c.horizon, c.fresh_at) == (700, 10.0)
    assert c.apply([full], horizon=701, read_started_at=11.0) == 0  # read twice: nothing changes


def test_registry_cache_certificate_index_follows_the_row():
    c = RegistryCache()
    c.apply([dev("SN-1", serial="0a1b")], 1, 1.0)
    assert c.find_by_certificate(ISSUER, "0A1B").device_id == "SN-1"
    assert c.find_by_certificate("/CN=other", "0a1b") is None
    c.apply([dev("SN-1", serial="0c0d", updated=2)], 2, 2.0)
    assert c.find_by_certificate(ISSUER, "0a1b") is None
    assert c.find_by_certificate(ISSUER, "0c0d").device_id == "SN-1"


def test_registry_cache_revoked_index_and_list_match_the_registry():
    """The cache's revoked_since against SQLiteRegistry's (the contract's model) on the same rows."""
    rng = random.Random(7)
    model = SQLiteRegistry(":memory:")
    c = RegistryCache()
    for i in range(60):
        model.add_device(dev(f"SN-{i:02d}"), AuditEvent(1, "enrolled", f"SN-{i:02d}"))
    for i in range(60):
        if rng.random() < 0.6:
            at = rng.randrange(100, 110)  # many ties
            model.set_state(f"SN-{i:02d}", DeviceState.REVOKED, at, AuditEvent(at, "revoked", f"SN-{i:02d}"))
    rows = model.list_devices()
    c.apply(rows, 5, 1.0)
    for since in (0, 100, 104, 109, 110):
        for limit in (1, 5, 100):
            assert c.revoked_since(since, limit) == model.revoked_since(since, limit), (since, limit)
    assert c.revoked_since(0, 100)  # the comparison above compared something
    revoked = c.revoked_since(0, 1)[0][0]
    c.apply([dataclasses.replace(model.get_device(revoked), state=DeviceState.REGISTERED)], 6, 2.0)
    assert revoked not in dict(c.revoked_since(0, 100))


def test_registry_cache_an_older_snapshot_does_not_undo_this_process_write():
    c = RegistryCache()
    c.apply([dev("SN-1", DeviceState.REGISTERED, 1, 10)], horizon=100, read_started_at=1.0)
    c.put(dev("SN-1", DeviceState.REGISTERED, 2, 20), 5.0)  # registered here
    assert c.get("SN-1").generation == 2
    # a read whose snapshot began before the write still carries generation 1: held back, and
    # the horizon stays, so the next read takes the row again
    c.apply([dev("SN-1", DeviceState.REGISTERED, 1, 10), dev("SN-2")], horizon=105, read_started_at=4.0)
    assert c.get("SN-1").generation == 2 and c.get("SN-2") is not None
    assert c.horizon == 100
    # a read begun after the write: applied, whatever it says (here another server's revocation)
    c.apply([dev("SN-1", DeviceState.REVOKED, 2, 30)], horizon=110, read_started_at=6.0)
    assert c.get("SN-1").state is DeviceState.REVOKED and c.horizon == 110
    # and the write no longer holds anything back
    c.apply([dev("SN-1", DeviceState.REGISTERED, 3, 40)], horizon=111, read_started_at=5.5)
    assert c.get("SN-1").generation == 3


def test_registry_cache_keys_version_moves_only_when_the_keys_change():
    c = RegistryCache()
    keys = [(1, b"sealed-1", 1, None)]
    c.apply([], 1, 1.0, keys)
    v = c.keys_version
    c.apply([], 2, 2.0, list(keys))
    assert c.keys_version == v
    c.apply([], 3, 3.0, keys + [(2, b"sealed-2", 3, None)])
    assert c.keys_version == v + 1 and [k[0] for k in c.keys] == [1, 2]
    c.apply([], 4, 4.0)  # a read without keys leaves them
    assert c.keys_version == v + 1


def test_registry_cache_is_stale_after_grace_without_a_read():
    c = RegistryCache()
    assert c.stale(0.0, 30)  # never read: nothing to serve
    c.apply([], 1, 100.0)
    assert not c.stale(129.9, 30) and not c.stale(130.0, 30)
    assert c.stale(130.1, 30) and c.unconfirmed_for(131.0) == 31.0
    c.apply([], 2, 90.0)  # a read that began earlier does not move freshness back
    assert c.fresh_at == 100.0


def test_registry_cache_bytes_per_device():
    """Measured with tracemalloc: everything a registered device with a 200-byte DRT and a
    certificate keeps alive once the rows it was read from are gone (its id, key, DRT, issuer
    and serial strings as the driver returns them: distinct objects per row)."""
    n = 5000
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    c = RegistryCache()
    rows = [DeviceRecord(f"SN-{i:06d}", bytes(bytearray(KEY)), DeviceState.REGISTERED, "certificate", 1_800_000_000,
                         1_800_000_000, "".join(ISSUER), f"{i:032x}", 1, 1_800_000_000, 1_800_000_100,
                         bytes(bytearray(200)), "switch-1", "192.0.2.1", f"ge-0/0/{i}", "02:00:00:00:00:01",
                         1_800_000_000, 1_800_000_000, bytes(bytearray(16))) for i in range(n)]
    c.apply(rows, 1, 1.0)
    del rows
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    per_device = sum(s.size_diff for s in after.compare_to(before, "filename")) / n
    print(f"bytes per cached device (200-byte DRT, certificate): {per_device:.0f}")
    assert len(c.devices) == n and per_device < 1500


def test_registry_cache_a_put_older_than_the_feed_row_is_skipped():
    """A request read the row (registered), another server revoked it, the feed applied that,
    and only then the request puts what it read: the put is older than the feed's row and is
    skipped, so the revocation stays (a put stamped after that read still applies)."""
    c = RegistryCache()
    c.apply([dev("SN-1", DeviceState.REGISTERED, 1, 10)], horizon=100, read_started_at=1.0)
    stamp = 2.0  # the request's clock reading before its statement
    c.apply([dev("SN-1", DeviceState.REVOKED, 1, 20)], horizon=101, read_started_at=3.0)  # the feed
    assert c.put(dev("SN-1", DeviceState.REGISTERED, 1, 10), stamp, now=4.0) is False
    assert c.get("SN-1").state is DeviceState.REVOKED and "SN-1" in dict(c.revoked_since(0, 10))
    assert c.put(dev("SN-2", DeviceState.REGISTERED, 1, 10), stamp, now=4.0) is True  # the feed never set it
    assert c.put(dev("SN-1", DeviceState.REGISTERED, 2, 30), 3.5, now=4.0) is True  # read after the feed's
    assert c.get("SN-1").generation == 2


def test_registry_cache_full_read_replaces_everything_and_moves_the_horizon():
    """A full read (another history: a restore, a failover) drops devices it lacks, applies
    every row even over this process's own recent write, and always takes its horizon; a put
    stamped before it is skipped."""
    c = RegistryCache()
    c.apply([dev("SN-1", DeviceState.REGISTERED, 1, 10), dev("SN-2", serial="0a")], horizon=(900, 905, ()),
            read_started_at=1.0)
    c.put(dev("SN-1", DeviceState.REGISTERED, 2, 20), 5.0)
    c.apply([dev("SN-1", DeviceState.REVOKED, 1, 30)], horizon=(40, 42, ()), read_started_at=4.0, replace=True)
    assert c.get("SN-2") is None and c.find_by_certificate(ISSUER, "0a") is None
    assert c.get("SN-1").state is DeviceState.REVOKED and c.horizon == (40, 42, ())
    assert c.put(dev("SN-1", DeviceState.REGISTERED, 1, 10), 3.0) is False


def test_registry_cache_feed_times_stay_bounded():
    from tessera.registry_cache import FED_KEPT, FED_WINDOW
    c = RegistryCache()
    for i in range(FED_KEPT + 10):
        c.apply([dev(f"SN-{i}")], horizon=i, read_started_at=float(i) / 100)
    c.apply([dev("SN-last")], horizon=0, read_started_at=FED_WINDOW + 1000.0)
    assert len(c._fed) <= FED_KEPT
    assert c.put(dev("SN-0", DeviceState.REVOKED), 1.0) is False  # older than anything still remembered
    assert c.put(dev("SN-0", DeviceState.REVOKED), FED_WINDOW + 1000.5) is True
