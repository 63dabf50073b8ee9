"""What a serving process keeps of a PostgreSQL registry, so the request path never queries it.

How this works: `tessera.pg_cache` reads the registry's change feed (`pg_registry.read_changes`:
the device rows changed since a horizon, every service key, and the new horizon) and hands it
to `RegistryCache.apply`; TGT, renewal, session, revocation-list and admission lookups then
read the cache. No sockets, threads or clock reads here: times are passed in (the adapter's
monotonic clock), so the decisions are unit-tested in memory.

Kept per device: what those lookups read -- key, state, generation, registration, sealed DRT,
certificate -- and not where it was last admitted nor its registration-freshness fields
(registration is decided by the compare-and-set in the database, which reads them there).
Indexes: (issuer, serial) for EAP-TLS, and revoked id -> revocation time for `revoked_since`.
Service keys are kept as read, with a counter that moves when they change (a rotation), which
`Realm.reload_if_changed` watches.

Freshness: `fresh_at` is when the last applied read started; `stale(now, grace)` says the cache
has not been confirmed for longer than `grace`, and the adapter then refuses to serve from it.

Read-your-writes: a write this process made is `put` at once. A feed read whose snapshot began
before that (`read_started_at` earlier than the put) may carry the older row: it is not applied
for that device, and the horizon is then not advanced, so the next read, begun after the put,
reads the row again with any later change another server made.

The other way round: a put carries `at`, a clock reading taken before the database statement
whose row it puts. The cache remembers per device when the feed last set it (that read's
start); a put older than that is skipped, because the feed's row may be newer (a revocation
another server committed meanwhile) and the put's own change is then either in that row or in
the next read (its transaction id is not below the next horizon). The memory is bounded: the
oldest entries are pruned and a put older than the pruned ones is skipped too.

Horizon: an opaque value from the feed (pg_registry.read_changes' snapshot). `apply(...,
replace=True)` is a full read that replaces every device (what pg_cache does every 10 minutes,
and when the database's history changed: a restore or a failover). It applies every row, its
own writes' included: a row it carries that predates such a write is replaced by the next read
(the write's transaction id is not below the new horizon), and the horizon always moves to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .registry import DeviceRecord, DeviceState

KeyRow = tuple[int, bytes, int, "int | None"]  # (kvno, sealed key, created, retire_at)
FED_KEPT = 4096  # per-device feed times kept before the oldest are pruned
FED_WINDOW = 60.0  # seconds of them kept when pruning


@dataclass(frozen=True, slots=True)
class CachedDevice:
    """A device as the request path needs it (see the module docstring for what is left out)."""

    public_key: bytes
    state: DeviceState
    enrolled_by: str
    created: int
    updated: int
    cert_issuer: str | None
    cert_serial: str | None
    generation: int
    registered_at: int | None
    registration_not_after: int | None
    sealed_drt: bytes | None

    @classmethod
    def of(cls, r: DeviceRecord) -> "CachedDevice":
        return cls(r.public_key, r.state, r.enrolled_by, r.created, r.updated, r.cert_issuer,
                   r.cert_serial.lower() if r.cert_serial else None, r.generation, r.registered_at,
                   r.registration_not_after, r.sealed_drt)

    def record(self, device_id: str) -> DeviceRecord:
        return DeviceRecord(device_id, self.public_key, self.state, self.enrolled_by, self.created, self.updated,
                            self.cert_issuer, self.cert_serial, self.generation, self.registered_at,
                            self.registration_not_after, self.sealed_drt)


class RegistryCache:
    def __init__(self) -> None:
        self.devices: dict[str, CachedDevice] = {}
        self.by_certificate: dict[tuple[str, str], str] = {}
        self.revoked: dict[str, int] = {}  # device id -> revocation time (the row's `updated`)
        self.keys: tuple[KeyRow, ...] = ()
        self.keys_version = 0  # moves whenever `keys` changes
        self.horizon: object = None  # read the feed from here next (None: everything)
        self.fresh_at: float | None = None  # when the last applied read started
        self._written: dict[str, float] = {}  # device id -> when this process wrote it (put)
        self._fed: dict[str, float] = {}  # device id -> start of the feed read that last set it
        self._fed_floor = float("-inf")  # puts stamped before this are skipped (pruned, or a full read)

    # -- filling ---------------------------------------------------------------------------
    def apply(self, rows: Iterable[DeviceRecord], horizon: object, read_started_at: float,
              keys: Iterable[KeyRow] | None = None, *, replace: bool = False) -> int:
        """Apply one feed read (rows changed since `self.horizon`, read in one snapshot that is
        the next `horizon`, begun at `read_started_at`); returns how many devices changed.
        `replace`: the rows are every device (a full read): those not among them are dropped."""
        held_back = False
        changed = 0
        seen: set[str] = set()
        for rec in rows:
            seen.add(rec.device_id)
            written = None if replace else self._written.get(rec.device_id)
            if written is not None:
                if read_started_at < written:
                    held_back = True  # the snapshot may predate this process's own write
                    continue
                del self._written[rec.device_id]
            changed += self._set(rec.device_id, CachedDevice.of(rec))
            if not replace:
                self._fed[rec.device_id] = read_started_at
        if replace:
            for device_id in [d for d in self.devices if d not in seen and d not in self._written]:
                self._drop(device_id)
                changed += 1
            self._fed.clear()
            self._written.clear()
            self._fed_floor = max(self._fed_floor, read_started_at)
        elif len(self._fed) > FED_KEPT:
            floor = read_started_at - FED_WINDOW
            self._fed = {d: at for d, at in self._fed.items() if at >= floor}
            self._fed_floor = max(self._fed_floor, floor)
        for device_id in [d for d, at in self._written.items() if at <= read_started_at]:
            del self._written[device_id]  # the read began after the write: it saw it (or later)
        if keys is not None:
            keys = tuple(keys)
            if keys != self.keys:
                self.keys, self.keys_version = keys, self.keys_version + 1
        if not held_back:
            self.horizon = horizon
        self.fresh_at = read_started_at if self.fresh_at is None else max(self.fresh_at, read_started_at)
        return changed

    def put(self, rec: DeviceRecord, at: float, now: float | None = None) -> bool:
        """A row this process has just read or written (committed) by a statement begun after
        `at`: serve it at once, and let no feed read begun before `now` (the put's time, `at`
        when not given) put the older row back. Skipped (False) when the feed set the device
        from a read begun after `at` (see the module docstring)."""
        if at < self._fed_floor or self._fed.get(rec.device_id, at) > at:
            return False
        self._written[rec.device_id] = at if now is None else now
        self._set(rec.device_id, CachedDevice.of(rec))
        return True

    def _set(self, device_id: str, dev: CachedDevice) -> int:
        old = self.devices.get(device_id)
        if old == dev:
            return 0
        if old is not None and old.cert_serial is not None:
            if self.by_certificate.get((old.cert_issuer, old.cert_serial)) == device_id:
                del self.by_certificate[(old.cert_issuer, old.cert_serial)]
        if dev.cert_serial is not None:
            self.by_certificate[(dev.cert_issuer, dev.cert_serial)] = device_id
        if dev.state is DeviceState.REVOKED:
            self.revoked[device_id] = dev.updated
        else:
            self.revoked.pop(device_id, None)
        self.devices[device_id] = dev
        return 1

    def _drop(self, device_id: str) -> None:
        old = self.devices.pop(device_id)
        if old.cert_serial is not None and self.by_certificate.get((old.cert_issuer, old.cert_serial)) == device_id:
            del self.by_certificate[(old.cert_issuer, old.cert_serial)]
        self.revoked.pop(device_id, None)

    # -- reading ---------------------------------------------------------------------------
    def get(self, device_id: str) -> DeviceRecord | None:
        dev = self.devices.get(device_id)
        return dev.record(device_id) if dev is not None else None

    def find_by_certificate(self, issuer: str, serial_hex: str) -> DeviceRecord | None:
        device_id = self.by_certificate.get((issuer, serial_hex.lower()))
        return self.get(device_id) if device_id is not None else None

    def revoked_since(self, since: int, limit: int) -> list[tuple[str, int]]:
        """As `Registry.revoked_since`: newest first, ties by device id descending."""
        hits = [(device_id, at) for device_id, at in self.revoked.items() if at >= since]
        hits.sort(key=lambda e: (e[1], e[0]), reverse=True)
        return hits[:limit]

    # -- freshness -------------------------------------------------------------------------
    def unconfirmed_for(self, now: float) -> float:
        """Seconds since the last applied read started (infinite before the first)."""
        return float("inf") if self.fresh_at is None else max(now - self.fresh_at, 0.0)

    def stale(self, now: float, grace: float) -> bool:
        """Not confirmed by a read within `grace` seconds: do not serve from it."""
        return self.unconfirmed_for(now) > grace
