"""The registry on SQLite: the embedded default for one RADIUS server.

WAL mode with synchronous=NORMAL: readers (the plugin's request path) never wait for a writer
(the CLI), and a commit costs no fsync until checkpoint. Every write is one transaction that
also appends its audit event, so a device is never enrolled, registered or revoked without its
audit line, and never half-written. The file is created 0600.

What NORMAL costs in durability: a committed transaction survives the process (radiusd,
tessera-admin) crashing or being killed, but not the machine losing power or the kernel
crashing before the next checkpoint syncs the WAL (SQLite's default: once the WAL passes 1000
pages; a registration writes 5-6, so up to ~180 registrations). A registration lost that way
leaves the device holding a DRT newer than its row: it is refused (not-registered or
superseded, signed) and registers again; its request, if captured, could be replayed within
the clock skew only to make it register again (the reply is sealed to its key). A revocation
must not come back that way, so `set_state` commits with synchronous=FULL (one fsync, in
tessera-admin, off the request path). FULL for every registration would put an fsync into the
serialised module for each one.

Reads: `get_device` keeps the rows it read in memory while `PRAGMA data_version` (one cheap
statement per call) says no other connection committed, and drops a row this connection writes.

Schema versions live in `PRAGMA user_version`. `SCHEMA` is version 0 exactly as the first
releases created it; `MIGRATIONS[n]` takes version n to n + 1 with ALTER TABLE ADD COLUMN /
CREATE TABLE / CREATE INDEX only (no table rebuilds). A new (empty) file is created as version
0 and migrated to the current version at once. An existing registry at an older version is
refused when opened, naming both versions and `tessera-admin migrate`, which alone opens it with
`migrate=True`: a server never changes the schema other servers (or an older tessera-admin) read
behind the operator's back. The migration runs in one BEGIN IMMEDIATE transaction that re-reads
the version under the lock, so two openers at once migrate it once. A registry newer than this
code is refused rather than misread.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

from .registry import (AuditEvent, DeviceRecord, DeviceState, Registered, RegistryError, ServerRecord,
                       StaleRequestError, check_freshness)

SCHEMA = """
CREATE TABLE IF NOT EXISTS device (
    device_id TEXT PRIMARY KEY,
    public_key BLOB NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('enrolled', 'registered', 'revoked')),
    enrolled_by TEXT NOT NULL,
    cert_issuer TEXT,
    cert_serial TEXT,
    generation INTEGER NOT NULL DEFAULT 0,
    registered_at INTEGER,
    registration_not_after INTEGER,
    sealed_drt BLOB,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    nas_identifier TEXT,
    nas_address TEXT,
    nas_port_id TEXT,
    calling_station TEXT,
    located_at INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS device_cert ON device (cert_issuer, cert_serial)
    WHERE cert_serial IS NOT NULL;
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time INTEGER NOT NULL,
    event TEXT NOT NULL,
    device_id TEXT,
    detail TEXT NOT NULL DEFAULT '',
    server_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_device ON audit (device_id, id);
CREATE TABLE IF NOT EXISTS service_key (
    kvno INTEGER PRIMARY KEY,
    sealed BLOB NOT NULL,
    created INTEGER NOT NULL,
    retire_at INTEGER
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS nas (
    name TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    port INTEGER NOT NULL,
    secret BLOB NOT NULL
);
"""

# version 0 → 1: registration freshness in the device row (the last accepted request's time and
# the nonces accepted at that second), a count on aggregated audit rows, and the realm's servers
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    ("ALTER TABLE device ADD COLUMN register_request_time INTEGER",
     "ALTER TABLE device ADD COLUMN register_request_nonces BLOB",
     # rows registered before: the request times were not kept, but every accepted one was
     # within the clock skew of its server's time, so none is later than the last acceptance
     # plus the skew; that second is the bar, its nonces unknown (NULL: the whole second is
     # taken), and no request accepted before passes again
     """UPDATE device SET register_request_time = registered_at + COALESCE(
            (SELECT CAST(CAST(value AS TEXT) AS INTEGER) FROM meta WHERE key = 'policy.clock_skew'), 300)
        WHERE registered_at IS NOT NULL""",
     "ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1",
     """CREATE TABLE IF NOT EXISTS server (
            server_id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            first_seen INTEGER NOT NULL
        )"""),
    # version 1 → 2: the revocation list (`revoked_since`) reads the revoked devices by
    # revocation time from this partial index, never the whole device table
    ("CREATE INDEX IF NOT EXISTS device_revoked ON device (updated, device_id) WHERE state = 'revoked'",),
    # version 2 -> 3: PostgreSQL's change feed (pg_registry.read_changes) stamps each device row
    # with its writer's transaction id; here the column stays NULL (one SQLite server reads the
    # file itself), kept so both backends walk the same versions
    ("ALTER TABLE device ADD COLUMN change_txid INTEGER",
     "CREATE INDEX IF NOT EXISTS device_change ON device (change_txid)"),
)
SCHEMA_VERSION = len(MIGRATIONS)

ROWS_KEPT = 4096  # device rows `get_device` keeps in memory (the request path's reads)

_COLUMNS = ("device_id, public_key, state, enrolled_by, created, updated, cert_issuer, cert_serial, "
            "generation, registered_at, registration_not_after, sealed_drt, "
            "nas_identifier, nas_address, nas_port_id, calling_station, located_at, "
            "register_request_time, register_request_nonces")


def _record(row) -> DeviceRecord:
    return DeviceRecord(row[0], bytes(row[1]), DeviceState(row[2]), row[3], row[4], row[5], row[6], row[7],
                        row[8], row[9], row[10], bytes(row[11]) if row[11] is not None else None, *row[12:17],
                        row[17], bytes(row[18]) if row[18] is not None else None)


def _insert_audit(cur: sqlite3.Cursor, event: AuditEvent) -> None:
    cur.execute("INSERT INTO audit (time, event, device_id, detail, server_id, count) VALUES (?,?,?,?,?,?)",
                (event.time, event.event, event.device_id, event.detail, event.server_id, event.count))


class SQLiteRegistry:
    """`Registry` on one SQLite file (or ':memory:' for tests)."""

    def __init__(self, path: str, *, migrate: bool = False, dry_run: bool = False):
        """`migrate`: bring a registry at an older schema version to the current one instead of
        refusing it (`tessera-admin migrate`); with `dry_run` too, only find its version
        (`schema_found`) and change nothing."""
        self.path = path
        self.schema_found: int | None = None  # the version found; None: an empty file, created now
        if path != ":memory:" and not os.path.exists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
        self._wal()
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._rows: dict[str, tuple] = {}  # device id -> its row, as of data_version `_rows_version`
        self._rows_version: int | None = None
        # get_device's check-read-store and a writer's drop after its commit exclude each other:
        # a row read before a write must not be stored after the write dropped it
        self._rows_lock = threading.Lock()
        self._migrate(migrate, dry_run)

    def _wal(self, wait: float = 5.0) -> None:
        """journal_mode=WAL. Turning a rollback-journal file (an old registry) into WAL needs the
        file to itself, and SQLite then answers "database is locked" at once instead of calling
        the busy handler: servers that open one file together retry here for `wait` seconds
        (seen: 5 in 300 rounds of 6 opening one v0 file)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.005 + os.urandom(1)[0] / 25500)

    def _migrate(self, migrate: bool, dry_run: bool) -> None:
        """Create an empty file at SCHEMA_VERSION; migrate an older one only if `migrate` (else
        refuse it); refuse a newer one (see the module docstring)."""
        version = self._version()
        self.schema_found = None if self._empty(version) else version
        if version == SCHEMA_VERSION or dry_run:
            self._refuse(version, migrate or self.schema_found is None)
            return
        cur = self._db.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            version = self._version()  # again, under the write lock: another process may have done it
            empty = self._empty(version)
            self.schema_found = None if empty else version
            self._refuse(version, migrate or empty)
            if version == 0 and empty:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        cur.execute(statement)
            for n in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[n]:
                    cur.execute(statement)
            cur.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            cur.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                cur.execute("ROLLBACK")
            raise

    def _empty(self, version: int) -> bool:
        return version == 0 and self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'device'").fetchone() is None

    def _refuse(self, version: int, migrate: bool) -> None:
        """RegistryError for a version this code does not serve: newer always, older unless migrating."""
        if version > SCHEMA_VERSION:
            raise RegistryError(f"{self.path}: registry schema version {version} is newer than this "
                                f"Tessera's ({SCHEMA_VERSION}); upgrade Tessera")
        if version < SCHEMA_VERSION and not migrate:
            raise RegistryError(f"{self.path}: registry schema version {version} is older than this Tessera's "
                                f"({SCHEMA_VERSION}); migrate it: tessera-admin migrate --registry "
                                f"sqlite://{os.path.abspath(self.path)}")

    def _version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __del__(self) -> None:
        # close when the registry goes, not when the garbage collector reaches the connection
        # (sqlite3's statement cache holds it in a cycle): its -wal/-shm go at a known time
        try:
            self._db.close()
        except Exception:  # noqa: BLE001 -- half-constructed, or at interpreter exit
            pass

    def data_version(self) -> int:
        """Changes when another connection commits (for caches in front of the registry)."""
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    # -- reads ---------------------------------------------------------------------------
    def get_device(self, device_id: str) -> DeviceRecord | None:
        """The device's row, from memory while no other connection has committed since it was
        read (`PRAGMA data_version`, checked on every call: a revocation tessera-admin commits
        is seen by the next request) and this connection has not written it."""
        with self._rows_lock:
            version = self.data_version()
            if version != self._rows_version:
                self._rows.clear()
                self._rows_version = version
            row = self._rows.get(device_id)
            if row is None:
                row = self._db.execute(f"SELECT {_COLUMNS} FROM device WHERE device_id = ?", (device_id,)).fetchone()
                if row is None:
                    return None
                if len(self._rows) >= ROWS_KEPT:
                    del self._rows[next(iter(self._rows))]  # the oldest read
                self._rows[device_id] = row
        return _record(row)

    def _forget(self, device_id: str) -> None:
        with self._rows_lock:
            self._rows.pop(device_id, None)

    def find_by_certificate(self, issuer: str, serial_hex: str) -> DeviceRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM device WHERE cert_issuer = ? AND cert_serial = ?",
                               (issuer, serial_hex.lower())).fetchone()
        return _record(row) if row else None

    def list_devices(self) -> list[DeviceRecord]:
        return [_record(r) for r in self._db.execute(f"SELECT {_COLUMNS} FROM device ORDER BY device_id")]

    def audit(self, device_id: str | None = None, limit: int = 100) -> list[AuditEvent]:
        q = "SELECT time, event, device_id, detail, server_id, count FROM audit"
        args: tuple = ()
        if device_id is not None:
            q += " WHERE device_id = ?"
            args = (device_id,)
        rows = self._db.execute(q + " ORDER BY id DESC LIMIT ?", args + (limit,)).fetchall()
        return [AuditEvent(*r) for r in reversed(rows)]

    def revoked_since(self, since: int, limit: int) -> list[tuple[str, int]]:
        # `state = 'revoked'` as the partial index device_revoked says it, so the planner uses it
        return [tuple(r) for r in self._db.execute(
            "SELECT device_id, updated FROM device WHERE state = 'revoked' AND updated >= ? "
            "ORDER BY updated DESC, device_id DESC LIMIT ?", (since, limit))]

    def get_meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return bytes(row[0]) if row else None

    def load_service_keys(self) -> list[tuple[int, bytes, int, int | None]]:
        return [(r[0], bytes(r[1]), r[2], r[3]) for r in
                self._db.execute("SELECT kvno, sealed, created, retire_at FROM service_key ORDER BY kvno")]

    # -- writes: one transaction each, with the audit line ---------------------------------
    def _tx(self, statements, event: AuditEvent | None, require_one: bool = False, durable: bool = False):
        """Run statements and the audit insert atomically; with `require_one`, roll back unless
        the first statement changed exactly one row (returns its count either way). `durable`:
        the commit syncs the WAL to disk before it returns (synchronous=FULL for this one)."""
        cur = self._db.cursor()
        if durable:
            cur.execute("PRAGMA synchronous=FULL")
        try:
            cur.execute("BEGIN IMMEDIATE")
            counts = [cur.execute(sql, args).rowcount for sql, args in statements]
            if require_one and counts[0] != 1:
                cur.execute("ROLLBACK")
                return counts
            if event is not None:
                _insert_audit(cur, event)
            cur.execute("COMMIT")
            return counts
        except BaseException:
            if self._db.in_transaction:
                cur.execute("ROLLBACK")
            raise
        finally:
            if durable:
                cur.execute("PRAGMA synchronous=NORMAL")

    def add_device(self, record: DeviceRecord, event: AuditEvent) -> None:
        r = record
        try:
            self._tx([(f"INSERT INTO device ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       (r.device_id, r.public_key, r.state.value, r.enrolled_by, r.created, r.updated,
                        r.cert_issuer, r.cert_serial.lower() if r.cert_serial else None, r.generation,
                        r.registered_at, r.registration_not_after, r.sealed_drt, r.nas_identifier,
                        r.nas_address, r.nas_port_id, r.calling_station, r.located_at,
                        r.register_request_time, r.register_request_nonces))], event)
        except sqlite3.IntegrityError as exc:
            raise RegistryError(f"device {r.device_id} (or its certificate) is already enrolled") from exc
        finally:
            self._forget(r.device_id)

    def record_registration(self, device_id, expect_generation, generation, not_after, sealed_drt, now, event, *,
                            request_time: int, request_nonce: bytes) -> Registered:
        # read, decide and write under one write lock (BEGIN IMMEDIATE): the compare-and-set.
        # (On PostgreSQL: SELECT ... FOR UPDATE, then the same.)
        cur = self._db.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            row = cur.execute("SELECT generation, state, register_request_time, register_request_nonces "
                              "FROM device WHERE device_id = ?", (device_id,)).fetchone()
            verdict = Registered.CHANGED
            if row is not None:
                try:
                    nonces = check_freshness(row[2], bytes(row[3]) if row[3] is not None else None,
                                             request_time, request_nonce)
                    if row[0] == expect_generation and row[1] != DeviceState.REVOKED.value:
                        verdict = Registered.RECORDED
                except StaleRequestError:
                    verdict = Registered.REPLAYED
            if verdict is not Registered.RECORDED:
                cur.execute("ROLLBACK")  # nothing was written
                return verdict
            cur.execute("UPDATE device SET state = 'registered', generation = ?, registered_at = ?, "
                        "registration_not_after = ?, sealed_drt = ?, updated = ?, "
                        "register_request_time = ?, register_request_nonces = ? "
                        "WHERE device_id = ? AND generation = ?",
                        (generation, now, not_after, sealed_drt, now, request_time, nonces,
                         device_id, expect_generation))
            _insert_audit(cur, event)
            cur.execute("COMMIT")
            return Registered.RECORDED
        except BaseException:
            if self._db.in_transaction:
                cur.execute("ROLLBACK")
            raise
        finally:
            self._forget(device_id)  # written here: data_version does not move for our own commits

    def set_state(self, device_id: str, state: DeviceState, now: int, event: AuditEvent) -> None:
        extra = ", sealed_drt = NULL" if state is DeviceState.REVOKED else ""
        try:
            (n,) = self._tx([(f"UPDATE device SET state = ?, updated = ?{extra} WHERE device_id = ?",
                              (state.value, now, device_id))], event, require_one=True, durable=True)
        finally:
            self._forget(device_id)
        if n != 1:
            raise RegistryError(f"device {device_id} is not enrolled")

    def record_location(self, device_id, nas_identifier, nas_address, nas_port_id, calling_station, now) -> bool:
        try:
            (n,) = self._tx([("UPDATE device SET nas_identifier = ?, nas_address = ?, nas_port_id = ?, "
                              "calling_station = ?, located_at = ? WHERE device_id = ?",
                              (nas_identifier, nas_address, nas_port_id, calling_station, now, device_id))],
                            None, require_one=True)
        finally:
            self._forget(device_id)
        return n == 1

    def put_nas(self, name: str, address: str, port: int, sealed_secret: bytes, event: AuditEvent) -> None:
        self._tx([("INSERT INTO nas (name, address, port, secret) VALUES (?,?,?,?) ON CONFLICT(name) DO UPDATE "
                   "SET address = excluded.address, port = excluded.port, secret = excluded.secret",
                   (name, address, port, sealed_secret))], event)

    def get_nas(self, name: str) -> tuple[str, int, bytes] | None:
        row = self._db.execute("SELECT address, port, secret FROM nas WHERE name = ?", (name,)).fetchone()
        return (row[0], row[1], bytes(row[2])) if row else None

    def list_nas(self) -> list[tuple[str, str, int]]:
        return [tuple(r) for r in self._db.execute("SELECT name, address, port FROM nas ORDER BY name")]

    def add_audit(self, event: AuditEvent) -> None:
        self._tx([], event)

    def set_meta(self, key: str, value: bytes) -> None:
        self._tx([("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                   (key, value))], None)

    def list_servers(self) -> list[ServerRecord]:
        return [ServerRecord(*r) for r in
                self._db.execute("SELECT server_id, host, first_seen FROM server ORDER BY server_id")]

    def claim_server(self, server_id: str, host: str, now: int, event: AuditEvent) -> ServerRecord:
        cur = self._db.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            row = cur.execute("SELECT server_id, host, first_seen FROM server WHERE server_id = ?",
                              (server_id,)).fetchone()
            if row is None:
                cur.execute("INSERT INTO server (server_id, host, first_seen) VALUES (?,?,?)", (server_id, host, now))
                _insert_audit(cur, event)
                row = (server_id, host, now)
            cur.execute("COMMIT")
            return ServerRecord(*row)
        except BaseException:
            if self._db.in_transaction:
                cur.execute("ROLLBACK")
            raise

    def store_service_keys(self, rows, event: AuditEvent) -> None:
        self._tx([("DELETE FROM service_key", ())] +
                 [("INSERT INTO service_key (kvno, sealed, created, retire_at) VALUES (?,?,?,?)", row) for row in rows],
                 event)
