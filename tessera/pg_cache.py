"""A PostgreSQL registry as a serving FreeRADIUS process uses it: reads from memory, kept current
by LISTEN/NOTIFY; writes through to the database (docs/registry.md has the policy table).

How this works: `CachedRegistry` wraps a `PostgresRegistry` and implements the `Registry`
contract. At construction it reads the whole feed (`pg_registry.read_changes`) into a
`RegistryCache`, so a module that starts serves from a full cache, then starts a listener thread
on its own connection (`notifies()` holds its connection's lock): LISTEN, then loop
`notifies(timeout=1)`; after a notification (then NOTIFY_QUANTUM gathering the rest of a burst,
and at most READS_PER_SECOND reads), or a second without one, read the feed since the last
horizon; the service keys and the clock at most once a second; every FULL_READ_EVERY a full read
replaces the cache (a bound on any change missed however). Any error marks the registry
unreachable (logged once, with the reason), and the thread reconnects with back-off (0.5 s
doubling to 2 s), LISTENs again and reads since the last horizon (notifications sent meanwhile
are lost; the horizon is not). History: a snapshot whose xmax is below the horizon's, or a
reconnection to a server with another (system identifier, timeline), means a restored or
failed-over database, whose transaction ids say nothing about what the cache read: a full read.

Reads (get_device, find_by_certificate, revoked_since) are served from the cache while it was
confirmed within `grace` seconds, else refused with `RegistryUnavailableError` (whose text a
device may read: it names neither the database's host nor the driver's reason, which the
listener logs once). Every database call of the request path (writes, read-throughs, audit)
runs on one worker thread and is waited for at most `deadline` (WRITE_DEADLINE, 1 s); the
wrapped registry's connection also has a 1 s statement_timeout and a 200 ms lock_timeout. A
call that fails or outlives the deadline marks the registry down (as the listener does: logged
once, refused at once until the listener's next successful read clears it) and answers
RegistryUnavailableError with a generic text; while a late call is pending every call is
refused at once, and its late result is dropped (each write is one transaction: it committed
whole or not at all; a registration that committed late leaves the device a DRT it never
received: its retry registers anew over it, at worst refused once as changed, which puts the
row that won). Audit rows are buffered while down (at most
`AUDIT_BUFFER`; the oldest dropped, logged once an outage, and their number written as an
`audit-dropped` row when back). A write's resulting row is put into the cache at once
(read-your-writes), stamped with the clock before its statement (RegistryCache.put: a feed read
begun later wins). `record_registration` puts the row its UPDATE returned; `record_location`
reads the device's state back from the database after its write, as
`Service.record_location` requires.

Read-through: a device the cache lacks (enrolled a moment ago) or may hold an old generation
of (registered a moment ago on another server: `read_through`) is asked of the database, only
while connected and at most READ_THROUGH_PER_SECOND times a second in all, so unknown ids or
old tickets sent in a flood cost a bounded few queries. Two budgets: READ_THROUGH_PER_SECOND
for a proven ticket newer than the cache (`read_through`), UNPROVEN_READ_THROUGH_PER_SECOND for
what anyone may send (unknown ids, EAP-PWD identities, certificates not enrolled).

Clock: each feed read also asks PostgreSQL for its clock (`clock_timestamp()`) and compares it
with this host's wall clock (`wall`) at the middle of the query's round trip. When they differ by
more than `clock_bound` (half the realm's clock skew) even at the round trip's edge,
`check_clock()` and every write raise `ServerClockError` (server-clock, unsigned: the device
tries another server) until a read finds the clocks agree; both changes are logged once. The
database is the realm's one clock: every server compares itself with the same one, so any two
that serve agree within the skew, and one whose clock drifted cannot hand out tickets the others
refuse. Reads stay served: 802.1X admission does not depend on the clock within minutes, and
hostapd does not fail over on a refusal (an Access-Reject closes the port). The service must ask
`check_clock()` before it judges a request's time: else it answers a correct device with a
clock-skew signed over its own wrong time, which the device adopts.

Fork: radiusd without -f forks after instantiate; the child has no listener thread and shares
the parent's sockets, so `os.register_at_fork` gives each live CachedRegistry in the child new
locks, a new worker and a new listener, and makes the parent's sockets /dev/null in the child
(the connection objects stay referenced, so they never send a Terminate on the parent's
sessions): the parent's exit then ends its backends.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from typing import Callable

import psycopg

from .errors import RegistryUnavailableError, ServerClockError
from .pg_registry import CHANGES_CHANNEL, STATEMENT_TIMEOUT_MS, PostgresRegistry, database_identity, read_changes
from .registry import AuditEvent, DeviceRecord, DeviceState, Registered
from .registry_cache import RegistryCache
from .service import Policy

DEFAULT_GRACE = 30.0  # seconds a cache not confirmed by a read may still be served from
POLL = 1.0  # read the feed at least this often
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 2.0  # a refused connect costs < 1 ms; a partitioned one its 3 s timeout
AUDIT_BUFFER = 1000
READ_THROUGH_PER_SECOND = 20  # queries for the devices of proven tickets newer than the cache (a token bucket)
UNPROVEN_READ_THROUGH_PER_SECOND = 10  # ... for ids, identities and certificates anyone may send (another bucket)
WRITE_DEADLINE = 1.0  # seconds a request waits for any database call before it is refused
WRITER_STATEMENT_TIMEOUT_MS, WRITER_LOCK_TIMEOUT_MS = 1000, 200  # on the request path's own connection
NOTIFY_QUANTUM = 0.002  # after a notification, gather the rest of a burst this long before reading
READS_PER_SECOND = 20  # feed reads at most this often
SLOW_EVERY = 1.0  # the service keys and the clock are read at most this often
FULL_READ_EVERY = 600.0  # a full read replaces the cache this often: a bound on any missed change
UNAVAILABLE = "the realm's registry is unavailable"  # what a device reads (the reason is logged)
CLOCK_BOUND = Policy.clock_skew / 2  # this host's clock may differ from the database's by this much

_log = logging.getLogger("tessera.pg_cache")
_LIVE: "weakref.WeakSet[CachedRegistry]" = weakref.WeakSet()


def _default_log(level: str, message: str) -> None:
    _log.log(logging.INFO if level == "info" else logging.ERROR, message)


class CachedRegistry:
    """`Registry` for a serving process on PostgreSQL (see the module docstring)."""

    def __init__(self, inner: PostgresRegistry, *, grace: float = DEFAULT_GRACE,
                 clock: Callable[[], float] = time.monotonic, log: Callable[[str, str], None] = _default_log,
                 wall: Callable[[], float] = time.time, clock_bound: float = CLOCK_BOUND):
        """`clock`: monotonic, for the cache's freshness; `wall`: this host's clock, the one the
        service uses, compared with the database's on every feed read."""
        self.inner = inner
        self.grace = grace
        self.clock = clock
        self.log = log
        self.wall, self.clock_bound = wall, clock_bound
        self.clock_off: float | None = None  # the database's clock minus ours, while beyond the bound
        self.cache = RegistryCache()
        self.dropped_audit = 0  # audit rows lost because the buffer was full
        self.reads = 0  # feed reads applied
        self._audit: collections.deque[AuditEvent] = collections.deque()
        self._dropped_unwritten = 0  # dropped audit rows not yet recorded by an audit-dropped row
        self.deadline = WRITE_DEADLINE
        self._new_locks()
        self._down_since: float | None = None
        self._budgets = {True: [float(READ_THROUGH_PER_SECOND), clock()],  # proven: [tokens, when]
                         False: [float(UNPROVEN_READ_THROUGH_PER_SECOND), clock()]}
        self._listener_db: psycopg.Connection | None = None
        self._identity: tuple[int, int] | None = None  # the database's (system identifier, timeline)
        self._slow_at = self._full_at = self._read_at = float("-inf")
        self._history_changed = False
        self._keys_owed = False  # a read skipped the keys (SLOW_EVERY): the next is due when they are
        inner.serving(WRITER_STATEMENT_TIMEOUT_MS, WRITER_LOCK_TIMEOUT_MS)
        db = self._connect()
        try:
            self._read(db)  # everything, before the module serves
        except BaseException:
            db.close()
            raise
        self._start(db)
        _LIVE.add(self)

    def _new_locks(self) -> None:
        self._lock = threading.Lock()  # the cache and the audit buffer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker = _Worker()

    # -- the listener ------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection:
        try:
            db = self.inner.connect()
            db.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            db.execute(f"LISTEN {CHANGES_CHANNEL}")
            identity = database_identity(db)
        except psycopg.Error as exc:
            raise RegistryUnavailableError(f"{self.inner.target}: {self._reason(exc)}") from None
        if identity is not None:
            if self._identity is not None and identity != self._identity:
                self._history_changed = True  # a restored or promoted server: read everything
                self.log("error", f"registry {self.inner.target}: another database history (system identifier, "
                                  f"timeline {self._identity} -> {identity}): reading every device again")
            self._identity = identity
        return db

    def _reason(self, exc: BaseException) -> str:
        return self.inner.error_text(exc) if isinstance(exc, psycopg.Error) else f"{type(exc).__name__}: {exc}"

    def _read(self, db: psycopg.Connection, full: bool = False) -> None:
        """One feed read: since the horizon, or everything replacing the cache (`full`, after a
        change of history, or FULL_READ_EVERY); the keys and the clock at most every SLOW_EVERY."""
        started = self.clock()
        slow = started - self._slow_at >= SLOW_EVERY
        full = full or self._history_changed or started - self._full_at >= FULL_READ_EVERY
        since = None if full else self.cache.horizon
        snapshot, rows, keys = read_changes(db, since, keys=slow or since is None)
        self._keys_owed = keys is None
        if since is not None and snapshot[1] < since[1]:
            self.log("error", f"registry {self.inner.target}: its transaction counter went back ({since[1]} -> "
                              f"{snapshot[1]}), a restored or failed-over database: reading every device again")
            return self._read(db, full=True)
        with self._lock:
            self.cache.apply(rows, snapshot, started, keys, replace=since is None)
            self.reads += 1
        self._read_at = started
        if since is None:
            self._full_at, self._history_changed = started, False
        if not slow:
            return
        self._slow_at = started
        self._check_clock(db)

    def _check_clock(self, db: psycopg.Connection) -> None:
        """Compare this host's clock with the database's (see the module docstring)."""
        before = self.wall()
        (theirs,) = db.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
        off = clock_off(before, theirs, self.wall(), self.clock_bound)
        if off is not None and self.clock_off is None:
            self.log("error", f"this server's clock is {-off:+.0f} s off the registry database's: refusing requests "
                              f"(server-clock) until they agree within {self.clock_bound:.0f} s")
        elif off is None and self.clock_off is not None:
            self.log("info", f"this server's clock agrees with the registry database's again (within "
                             f"{self.clock_bound:.0f} s)")
        self.clock_off = off

    def check_clock(self) -> None:
        """Raise `ServerClockError` while this host's clock is off the database's (see the module
        docstring); a request whose answer depends on this server's time asks first."""
        off = self.clock_off
        if off is not None:
            raise ServerClockError(f"this server's clock is {-off:+.0f} s off the realm's (more than "
                                   f"{self.clock_bound:.0f} s): ask another server")

    def _start(self, db: psycopg.Connection | None) -> None:
        self._thread = threading.Thread(target=self._run, args=(db,), name="tessera-registry-listener", daemon=True)
        self._thread.start()

    def _run(self, db: psycopg.Connection | None) -> None:
        backoff = BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                if db is None:
                    db = self._connect()
                    self._read(db)  # since the last horizon: what was missed while away
                    self._reachable()
                self._listener_db = db
                backoff = BACKOFF_FIRST
                while not self._stop.is_set():
                    woken = False
                    wait = POLL  # or until the keys a notified read skipped are due
                    if self._keys_owed:
                        wait = min(POLL, max(0.0, self._slow_at + SLOW_EVERY - self.clock()))
                    for _ in db.notifies(timeout=wait, stop_after=1):
                        woken = True
                    if woken:  # one read for a burst, and at most READS_PER_SECOND
                        self._stop.wait(max(NOTIFY_QUANTUM, self._read_at + 1 / READS_PER_SECOND - self.clock()))
                        for _ in db.notifies(timeout=0):
                            pass
                    self._read(db)
                    if self._down_since is not None and not self._worker.stuck:
                        self._reachable()  # a writer's failure: the database answers the listener again
                    if self._audit or self._dropped_unwritten:
                        try:
                            self._flush_audit()
                        except RegistryUnavailableError:
                            pass  # the rest waits for the next loop
            except Exception as exc:  # noqa: BLE001 -- any failure: reconnect, never die
                self._unreachable(self._reason(exc))
                self._listener_db = None
                if db is not None:
                    try:
                        db.close()
                    except Exception:  # noqa: BLE001 -- already broken
                        pass
                    db = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
        if db is not None:
            db.close()

    def _unreachable(self, reason: str) -> None:
        if self._down_since is None:
            self._down_since = self.clock()
            self.log("error", f"registry {self.inner.target} unreachable: {reason}; serving from the cache for "
                              f"at most {self.grace:.0f} s, registrations refused")

    def _reachable(self) -> None:
        if self._down_since is not None:
            away = self.clock() - self._down_since
            self._down_since = None
            self.inner.close()  # its connection most likely died with the outage: writes connect afresh
            self.log("info", f"registry {self.inner.target} reachable again after {away:.1f} s")

    def _flush_audit(self) -> None:
        """Write the buffered audit rows, oldest first (each taken out under the lock, put back
        in front if its write fails), then one `audit-dropped` row counting those the full
        buffer dropped; raises RegistryUnavailableError when a write fails."""
        while True:
            with self._lock:
                if not self._audit:
                    break
                event = self._audit.popleft()
            try:
                self._db_call(self.inner.add_audit, event)
            except RegistryUnavailableError:
                with self._lock:
                    if len(self._audit) < AUDIT_BUFFER:
                        self._audit.appendleft(event)
                    else:
                        self._drop_audit()
                raise
        dropped = self._dropped_unwritten
        if dropped:
            self._db_call(self.inner.add_audit, AuditEvent(int(self.wall()), "audit-dropped", None,
                                                           "audit rows dropped while the registry was unreachable "
                                                           f"(buffer of {AUDIT_BUFFER} full)", "", dropped))
            self._dropped_unwritten -= dropped
            self.log("info", f"{dropped} audit rows were dropped while the registry was unreachable; "
                             "an audit-dropped row records their number")

    def _drop_audit(self) -> None:
        """Count one audit row dropped (under the lock); the first of an outage is logged."""
        self.dropped_audit += 1
        self._dropped_unwritten += 1
        if self._dropped_unwritten == 1:
            self.log("error", f"audit buffer full ({AUDIT_BUFFER} rows): dropping the oldest until the registry "
                              "is back (their number is then written as an audit-dropped row)")

    @property
    def connected(self) -> bool:
        return self._down_since is None

    def close(self) -> None:
        """Stop the listener (it sees the stop within a second), flush what audit rows it can,
        and close the connections."""
        _LIVE.discard(self)
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(POLL + 5)
        if (self._audit or self._dropped_unwritten) and self.connected:
            try:
                self._flush_audit()
            except RegistryUnavailableError:
                pass
        if not self._worker.stuck:  # else the stuck call holds the connection: left to the process's end
            self.inner.close()
        self._worker.stop()

    def _after_fork_in_child(self) -> None:
        """The parent's connections stay referenced (so they never send a Terminate on the
        parent's sessions) but their sockets are made /dev/null here: the parent's exit then
        closes the last reference and ends its backends (a LISTEN session nobody reads would
        pin PostgreSQL's notification queue)."""
        for db in (self._listener_db, getattr(self.inner, "_db", None)):
            if db is not None:
                _detach(db)
        if self._listener_db is not None:
            _FORKED_AWAY.append(self._listener_db)
            self._listener_db = None
        self.inner.forget_connection()
        self._new_locks()
        self._start(None)

    # -- reads: from the cache -------------------------------------------------------------
    def _fresh(self) -> RegistryCache:
        now = self.clock()
        if self.cache.stale(now, self.grace):
            away = self.cache.unconfirmed_for(now)
            raise RegistryUnavailableError(f"the realm's registry not reached for {away:.0f} s; a server serves "
                                           f"from its cache for at most {self.grace:.0f} s")
        return self.cache

    def get_device(self, device_id: str) -> DeviceRecord | None:
        """From the cache; a device it does not hold (enrolled a moment ago) is read through, on
        the budget of what anyone may send."""
        rec = self._fresh().get(device_id)
        return rec if rec is not None else self._read_through(device_id, proven=False)

    def find_by_certificate(self, issuer: str, serial_hex: str) -> DeviceRecord | None:
        rec = self._fresh().find_by_certificate(issuer, serial_hex)
        if rec is None and self._may_read_through(proven=False):
            at = self.clock()
            rec = self._db_call(self.inner.find_by_certificate, issuer, serial_hex)
            if rec is not None:
                self._put(rec, at)
        return rec

    def revoked_since(self, since: int, limit: int) -> list[tuple[str, int]]:
        cache = self._fresh()
        with self._lock:
            return cache.revoked_since(since, limit)

    def load_service_keys(self) -> list[tuple[int, bytes, int, int | None]]:
        return list(self.cache.keys)

    def data_version(self) -> int:
        """Moves when the service keys change (what `Realm.reload_if_changed` watches)."""
        return self.cache.keys_version

    def read_through(self, device_id: str) -> DeviceRecord | None:
        """The device's row from the database, put into the cache, for a proven request (a
        ticket newer than the cache, `Service._check_current`); None when not enrolled or when it
        cannot be asked now (unreachable, or the proven budget is spent)."""
        return self._read_through(device_id, proven=True)

    def _read_through(self, device_id: str, proven: bool) -> DeviceRecord | None:
        if not self._may_read_through(proven):
            return None
        at = self.clock()
        rec = self._db_call(self.inner.get_device, device_id)
        if rec is not None:
            self._put(rec, at)
        return rec

    def _may_read_through(self, proven: bool) -> bool:
        """Only while connected, and at most READ_THROUGH_PER_SECOND queries a second for proven
        requests, UNPROVEN_READ_THROUGH_PER_SECOND for the rest (unknown ids, EAP-PWD
        identities, certificates not enrolled): a flood of either costs the serialised server a
        bounded few queries a second, and the unauthenticated one cannot spend the proven budget."""
        if not self.connected or self._worker.stuck:
            return False
        rate = READ_THROUGH_PER_SECOND if proven else UNPROVEN_READ_THROUGH_PER_SECOND
        now = self.clock()
        with self._lock:
            budget = self._budgets[proven]
            budget[0], budget[1] = min(rate, budget[0] + (now - budget[1]) * rate), now
            if budget[0] < 1:
                return False
            budget[0] -= 1
            return True

    # -- writes: through to the database ---------------------------------------------------
    def _reachable_now(self) -> None:
        self.check_clock()  # a write made on a wrong clock would date the registry wrongly
        if self._down_since is not None:
            raise RegistryUnavailableError(f"the realm's registry unreachable for {self.clock() - self._down_since:.0f} s:"
                                           " refused without waiting")

    def _db_call(self, fn: Callable, *args, **kwargs):
        """fn(*args, **kwargs) on the worker thread, waited for at most `deadline` seconds. A
        failure or the deadline marks the registry down (logged once, with the reason) and is
        answered with a RegistryUnavailableError that names neither the database nor the reason
        (a device reads it); while a call is still pending, the next is refused at once."""
        try:
            return self._worker.run(lambda: fn(*args, **kwargs), self.deadline)
        except _Busy:
            raise RegistryUnavailableError(f"{UNAVAILABLE}: an earlier call has not returned; refused without "
                                           "waiting") from None
        except _Late:
            self._unreachable(f"no answer within {self.deadline:.1f} s")
        except RegistryUnavailableError as exc:  # the wrapped registry's: names the database
            self._unreachable(str(exc))
        raise RegistryUnavailableError(UNAVAILABLE)

    def _put(self, rec: DeviceRecord, at: float) -> None:
        """Put a row read or written by a statement begun after `at` (see RegistryCache.put)."""
        with self._lock:
            self.cache.put(rec, at, self.clock())

    def add_device(self, record: DeviceRecord, event: AuditEvent) -> None:
        self._reachable_now()
        at = self.clock()
        self._db_call(self.inner.add_device, record, event)
        self._put(record, at)

    def record_registration(self, device_id, expect_generation, generation, not_after, sealed_drt, now, event, *,
                            request_time: int, request_nonce: bytes) -> Registered:
        """The compare-and-set in the database; the row it leaves (RETURNING, or the one that
        won) is put, never one made from the cache (which may hold a revocation since)."""
        self._reachable_now()
        at = self.clock()
        done, rec = self._db_call(self.inner.record_registration_row, device_id, expect_generation, generation,
                                  not_after, sealed_drt, now, event, request_time=request_time,
                                  request_nonce=request_nonce)
        if rec is not None:
            self._put(rec, at)
        return done

    def set_state(self, device_id: str, state: DeviceState, now: int, event: AuditEvent) -> None:
        self._reachable_now()
        at = self.clock()
        rec = self._db_call(self._set_state, device_id, state, now, event)
        if rec is not None:
            self._put(rec, at)

    def _set_state(self, device_id, state, now, event) -> DeviceRecord | None:
        self.inner.set_state(device_id, state, now, event)
        return self.inner.get_device(device_id)

    def record_location(self, device_id, nas_identifier, nas_address, nas_port_id, calling_station, now) -> bool:
        """The write, then the device's state read back from the database into the cache: so
        `Service.record_location`'s check after the write sees a revocation that committed
        before it (of a revocation and an admission that cross, one sees the other). The put
        is stamped before that read: a feed read begun later, which the put yields to, began
        after the write too, so it also holds such a revocation."""
        self._reachable_now()
        done, at, rec = self._db_call(self._record_location, device_id, nas_identifier, nas_address, nas_port_id,
                                      calling_station, now)
        if rec is not None:
            self._put(rec, at)
        return done

    def _record_location(self, device_id, *args) -> tuple[bool, float, DeviceRecord | None]:
        done = self.inner.record_location(device_id, *args)
        at = self.clock()
        return done, at, self.inner.get_device(device_id)

    def add_audit(self, event: AuditEvent) -> None:
        """Written at once while reachable; else buffered (bounded, the oldest dropped and
        counted) for the listener to flush."""
        if self._down_since is None and not self._audit and not self._worker.stuck:
            try:
                self._db_call(self.inner.add_audit, event)
                return
            except RegistryUnavailableError:
                pass
        with self._lock:
            if len(self._audit) >= AUDIT_BUFFER:
                self._audit.popleft()
                self._drop_audit()
            self._audit.append(event)

    # -- the rest: operator actions and start-up reads, straight to the database -------------
    def store_service_keys(self, rows, event: AuditEvent) -> None:
        self._reachable_now()
        self._db_call(self.inner.store_service_keys, rows, event)

    def put_nas(self, name, address, port, sealed_secret, event) -> None:
        self.inner.put_nas(name, address, port, sealed_secret, event)

    def get_nas(self, name):
        return self.inner.get_nas(name)

    def list_nas(self):
        return self.inner.list_nas()

    def list_devices(self) -> list[DeviceRecord]:
        return self.inner.list_devices()

    def audit(self, device_id: str | None = None, limit: int = 100) -> list[AuditEvent]:
        return self.inner.audit(device_id, limit)

    def get_meta(self, key: str) -> bytes | None:
        return self.inner.get_meta(key)

    def set_meta(self, key: str, value: bytes) -> None:
        self.inner.set_meta(key, value)

    def list_servers(self):
        return self.inner.list_servers()

    def claim_server(self, server_id, host, now, event):
        return self.inner.claim_server(server_id, host, now, event)


def clock_off(before: float, theirs: float, after: float, bound: float) -> float | None:
    """The database's clock minus ours when they differ by more than `bound`, else None.

    `theirs` was read between our `before` and `after`: it is compared with the middle of that
    round trip, and the offset counts only beyond the half round trip either way (a slow query
    does not make a right clock look wrong)."""
    off = theirs - (before + after) / 2
    return off if abs(off) - (after - before) / 2 > bound else None


_FORKED_AWAY: list = []  # listener connections of a parent, held (never closed) by a forked child


def _detach(db: psycopg.Connection) -> None:
    """Make a parent's connection's socket /dev/null in this (forked) process: nothing this
    process does can reach the parent's session, and this process no longer keeps it open."""
    try:
        fd = db.pgconn.socket
    except Exception:  # noqa: BLE001 -- closed already: nothing to detach
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


class _Busy(Exception):
    """The worker still runs an earlier call."""


class _Late(Exception):
    """The call did not return within the deadline (it goes on)."""


class _Worker:
    """One daemon thread that runs a CachedRegistry's database calls, so that the caller waits
    at most a deadline: a backend that is alive but does not answer, or a commit waiting for a
    synchronous standby, ends neither by the socket's timeouts nor by statement_timeout. A call
    that outlives its deadline leaves the worker `stuck` until it returns (its result is
    dropped), and every call meanwhile is refused at once; a call that finds another running
    (the listener's audit flush) waits for it, within its own deadline."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._job: tuple | None = None
        self._current: dict | None = None
        self._stopped = False
        self.busy = self.stuck = False
        threading.Thread(target=self._loop, name="tessera-registry-worker", daemon=True).start()

    def run(self, fn: Callable, deadline: float):
        done = threading.Event()
        box: dict = {}
        end = time.monotonic() + deadline
        with self._cv:
            while self.busy:
                left = end - time.monotonic()
                if self.stuck or left <= 0:
                    raise _Busy()
                self._cv.wait(left)
            self.busy, self._current = True, box
            self._job = (fn, box, done)
            self._cv.notify_all()
        if not done.wait(max(0.0, end - time.monotonic())):
            with self._cv:
                if self._current is box:
                    self.stuck = True
            raise _Late()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while self._job is None and not self._stopped:
                    self._cv.wait()
                if self._job is None:
                    return
                fn, box, done = self._job
                self._job = None
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 -- handed to the caller
                box["error"] = exc
            with self._cv:
                self.busy = self.stuck = False
                self._current = None
                self._cv.notify_all()
            done.set()


def _restart_in_child() -> None:
    for reg in list(_LIVE):
        reg._after_fork_in_child()


os.register_at_fork(after_in_child=_restart_in_child)
