"""The registry on PostgreSQL: one realm shared by the RADIUS servers of several hosts.

The same contract as `tessera.sqlite_registry` (tests/server/test_registry_contract.py runs
one suite on both): every write is one transaction that also appends its audit event; the
registration compare-and-set reads the device row with SELECT … FOR UPDATE, decides, and
writes under that row lock, so of two servers registering one device at once exactly one wins
and the other sees CHANGED (or REPLAYED).

Schema versions live in the one-row table `schema_version`. `SCHEMA` is version 0 and
`MIGRATIONS[n]` takes version n to n + 1, statement for statement the PostgreSQL form of
`sqlite_registry.SCHEMA`/`MIGRATIONS` (BYTEA for BLOB, BIGINT for times, an identity column for
the audit id), so both backends walk the same versions. A new (empty) database is created as
version 0 and migrated at once; one at an older version is refused, naming both versions and
`tessera-admin migrate`, which alone opens it with `migrate=True` (a server never changes the
schema the realm's other servers read). Creation and migration run in one transaction under
`pg_advisory_xact_lock(SCHEMA_LOCK)` that re-reads the version under it, so openers at once
do it once (PostgreSQL's DDL is transactional: a failed migration leaves nothing). A database
newer than this code is refused, untouched.

Connections (measured in ../shared/notes/postgresql.md): without TCP options a partitioned
server blocks a query for as long as the partition lasts, which in a serialised rlm_python3
stalls the whole RADIUS server. Unless the conninfo says otherwise, the connection is opened
with `connect_timeout=3`, `tcp_user_timeout=3000` and 1 s keepalives (a partition errors out
in ~3 s) and a `statement_timeout`. A lost or refused connection raises
`RegistryUnavailableError` (the exception text names host, port and database, never the
password, and psycopg's own exception is not chained); the next call connects afresh.
Passwords come from libpq's own places (`passfile=`, `PGPASSFILE`, ~/.pgpass), never the
command line: see `tessera.registry_url`.

One connection per registry object, guarded by a lock: a transaction is never interleaved with
another thread's statements.
"""

from __future__ import annotations

import contextlib
import re
import threading
from typing import Iterator

import psycopg
from psycopg import conninfo as pg_conninfo

from .errors import RegistryUnavailableError
from .registry import (AuditEvent, DeviceRecord, DeviceState, Registered, RegistryError, ServerRecord,
                       StaleRequestError, check_freshness)

SCHEMA = """
CREATE TABLE device (
    device_id TEXT PRIMARY KEY,
    public_key BYTEA NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('enrolled', 'registered', 'revoked')),
    enrolled_by TEXT NOT NULL,
    cert_issuer TEXT,
    cert_serial TEXT,
    generation BIGINT NOT NULL DEFAULT 0,
    registered_at BIGINT,
    registration_not_after BIGINT,
    sealed_drt BYTEA,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    nas_identifier TEXT,
    nas_address TEXT,
    nas_port_id TEXT,
    calling_station TEXT,
    located_at BIGINT
);
CREATE UNIQUE INDEX device_cert ON device (cert_issuer, cert_serial) WHERE cert_serial IS NOT NULL;
CREATE TABLE audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time BIGINT NOT NULL,
    event TEXT NOT NULL,
    device_id TEXT,
    detail TEXT NOT NULL DEFAULT '',
    server_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_device ON audit (device_id, id);
CREATE TABLE service_key (
    kvno INTEGER PRIMARY KEY,
    sealed BYTEA NOT NULL,
    created BIGINT NOT NULL,
    retire_at BIGINT
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE nas (
    name TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    port INTEGER NOT NULL,
    secret BYTEA NOT NULL
)
"""

# the same steps as sqlite_registry.MIGRATIONS (see there for why each is what it is)
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    ("ALTER TABLE device ADD COLUMN register_request_time BIGINT",
     "ALTER TABLE device ADD COLUMN register_request_nonces BYTEA",
     """UPDATE device SET register_request_time = registered_at + COALESCE(
            (SELECT CAST(convert_from(value, 'UTF8') AS BIGINT) FROM meta WHERE key = 'policy.clock_skew'), 300)
        WHERE registered_at IS NOT NULL""",
     "ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1",
     """CREATE TABLE server (
            server_id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            first_seen BIGINT NOT NULL
        )"""),
    ("CREATE INDEX device_revoked ON device (updated, device_id) WHERE state = 'revoked'",),
    # version 2 -> 3: the change feed the servers' caches follow (`read_changes`, tessera.pg_cache)
    # (stamped and notified only when a column the caches hold changes: a location is not news)
    ("ALTER TABLE device ADD COLUMN change_txid BIGINT",
     """CREATE INDEX device_change ON device (change_txid);
        CREATE FUNCTION tessera_change_txid() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN NEW.change_txid := pg_current_xact_id()::text::bigint;
                  PERFORM pg_notify('tessera_changes', ''); RETURN NEW; END $$;
        CREATE FUNCTION tessera_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_notify('tessera_changes', ''); RETURN NULL; END $$;
        CREATE TRIGGER device_change_insert BEFORE INSERT ON device
            FOR EACH ROW EXECUTE FUNCTION tessera_change_txid();
        CREATE TRIGGER device_change_update BEFORE UPDATE ON device
            FOR EACH ROW WHEN ((OLD.public_key, OLD.state, OLD.enrolled_by, OLD.created, OLD.updated,
                                OLD.cert_issuer, OLD.cert_serial, OLD.generation, OLD.registered_at,
                                OLD.registration_not_after, OLD.sealed_drt)
                               IS DISTINCT FROM
                               (NEW.public_key, NEW.state, NEW.enrolled_by, NEW.created, NEW.updated,
                                NEW.cert_issuer, NEW.cert_serial, NEW.generation, NEW.registered_at,
                                NEW.registration_not_after, NEW.sealed_drt))
            EXECUTE FUNCTION tessera_change_txid();
        CREATE TRIGGER device_notify AFTER DELETE ON device
            FOR EACH STATEMENT EXECUTE FUNCTION tessera_notify_change();
        CREATE TRIGGER service_key_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON service_key
            FOR EACH STATEMENT EXECUTE FUNCTION tessera_notify_change()"""),
)
SCHEMA_VERSION = len(MIGRATIONS)
SCHEMA_LOCK = 0x7465_7373_6572_61  # "tessera": the advisory lock every migrating server takes

# libpq settings a registry connection gets unless its conninfo sets them
CONNECT_DEFAULTS = {
    "connect_timeout": "3",
    "tcp_user_timeout": "3000",  # ms: unacknowledged data on a dead link errors out after this
    "keepalives": "1",
    "keepalives_idle": "1",
    "keepalives_interval": "1",
    "keepalives_count": "3",
    "application_name": "tessera",
}
STATEMENT_TIMEOUT_MS = 5000
_FORKED_AWAY: list = []  # a parent's connections a forked child holds on to, never closes

_COLUMNS = ("device_id, public_key, state, enrolled_by, created, updated, cert_issuer, cert_serial, "
            "generation, registered_at, registration_not_after, sealed_drt, "
            "nas_identifier, nas_address, nas_port_id, calling_station, located_at, "
            "register_request_time, register_request_nonces")


CHANGES_CHANNEL = "tessera_changes"  # what the triggers of migration 3 notify
# what a serving cache keeps of a device (tessera.registry_cache): no location, no freshness nonces
_CACHED_COLUMNS = ("device_id, public_key, state, enrolled_by, created, updated, cert_issuer, cert_serial, "
                   "generation, registered_at, registration_not_after, sealed_drt")


Snapshot = tuple[int, int, tuple[int, ...]]  # (xmin, xmax, xip) of pg_current_snapshot()


def read_changes(db: psycopg.Connection, since: Snapshot | None, *, keys: bool = True
                 ) -> tuple[Snapshot, list[DeviceRecord], list[tuple[int, bytes, int, int | None]] | None]:
    """(snapshot, changed devices, every service key or None without `keys`) for a cache that
    has read up to the snapshot `since` (None: everything), on the caller's autocommit connection.

    Migration 3 stamps each device row with the id of the transaction that last changed a
    column the caches hold (`change_txid`, by a BEFORE trigger). The rows and the snapshot come
    from one statement. A transaction the previous snapshot `since` saw as finished (below its
    xmax and not among its in-progress xip) was visible to that read, so the changes not yet
    read are exactly `change_txid >= xmax OR change_txid = ANY(xip)`, even one that commits after
    a later-numbered one (a sequence number read as "the last seen" would miss that one), and a
    transaction held open elsewhere costs only its own rows. Rows may be read twice; applying
    them is idempotent. Devices are never deleted; service keys are replaced as a set, so they
    are read whole (a few rows). Device rows come without location or freshness nonces (the
    request path never reads them; registration reads the row itself). The snapshot's xmax
    only grows in one database's history: a lower one means another history (a restore, a
    promoted standby), which the caller answers with a full read."""
    where = "true" if since is None else "d.change_txid >= %(xmax)s OR d.change_txid = ANY(%(xip)s)"
    args = None if since is None else {"xmax": since[1], "xip": list(since[2])}
    rows = db.execute(f"WITH s AS (SELECT pg_current_snapshot() AS snap) "
                      f"SELECT pg_snapshot_xmin(s.snap)::text::bigint, pg_snapshot_xmax(s.snap)::text::bigint, "
                      f"ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(s.snap) AS x), "
                      f"{', '.join('d.' + c.strip() for c in _CACHED_COLUMNS.split(','))} "
                      f"FROM s LEFT JOIN device d ON {where}", args).fetchall()
    service_keys = None
    if keys:
        service_keys = [(k[0], bytes(k[1]), k[2], k[3]) for k in
                        db.execute("SELECT kvno, sealed, created, retire_at FROM service_key ORDER BY kvno")]
    devices = [DeviceRecord(r[3], bytes(r[4]), DeviceState(r[5]), *r[6:14],
                            bytes(r[14]) if r[14] is not None else None) for r in rows if r[3] is not None]
    return (rows[0][0], rows[0][1], tuple(rows[0][2])), devices, service_keys


def database_identity(db: psycopg.Connection) -> tuple[int, int] | None:
    """(system identifier, timeline) of the server `db` reached, or None where the role may
    not read them: a different pair after a reconnect is another history (a restored or
    promoted server), which a cache answers with a full read."""
    try:
        with db.transaction():
            row = db.execute("SELECT (SELECT system_identifier FROM pg_control_system()), "
                             "(SELECT timeline_id FROM pg_control_checkpoint())").fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return None
    return (int(row[0]), int(row[1]))


def _record(row) -> DeviceRecord:
    return DeviceRecord(row[0], bytes(row[1]), DeviceState(row[2]), *row[3:11],
                        bytes(row[11]) if row[11] is not None else None, *row[12:17],
                        row[17], bytes(row[18]) if row[18] is not None else None)


def _insert_audit(cur, event: AuditEvent) -> None:
    cur.execute("INSERT INTO audit (time, event, device_id, detail, server_id, count) VALUES (%s,%s,%s,%s,%s,%s)",
                (event.time, event.event, event.device_id, event.detail, event.server_id, event.count))


def describe(conninfo: str) -> str:
    """`user@host:port/dbname` of a conninfo or URL, for messages and logs (never the password)."""
    try:
        params = pg_conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "postgresql (unparsable conninfo)"
    host = params.get("host") or params.get("hostaddr") or "local socket"
    port = params.get("port") or "5432"
    user = f"{params['user']}@" if params.get("user") else ""
    return f"postgresql {user}{host}:{port}/{params.get('dbname', '')}"


def scrub(text: str, conninfo: str) -> str:
    """`text` without the conninfo's password (psycopg's messages may quote the conninfo)."""
    try:
        password = pg_conninfo.conninfo_to_dict(conninfo).get("password")
    except psycopg.ProgrammingError:
        password = None
    if password:
        text = text.replace(str(password), "***")
    text = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", text, flags=re.I)
    return re.sub(r"(postgres(?:ql)?://[^:/@\s]*):[^@\s]*@", r"\1:***@", text)


class PostgresRegistry:
    """`Registry` on a PostgreSQL database (a libpq conninfo string or `postgresql://` URL)."""

    def __init__(self, conninfo: str, *, statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
                 migrate: bool = False, dry_run: bool = False):
        """`migrate`: bring a database at an older schema version to the current one instead of
        refusing it (`tessera-admin migrate`); with `dry_run` too, only find its version
        (`schema_found`) and change nothing."""
        try:
            params = pg_conninfo.conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError:
            raise RegistryError(f"not a valid PostgreSQL conninfo or URL: {describe(conninfo)}") from None
        for key, value in CONNECT_DEFAULTS.items():
            params.setdefault(key, value)
        self._conninfo = pg_conninfo.make_conninfo(**params)
        self._statement_timeout_ms = statement_timeout_ms
        self._lock_timeout_ms: int | None = None
        self.target = describe(conninfo)
        self._url = conninfo if conninfo.startswith(("postgresql://", "postgres://")) else None
        self._lock = threading.RLock()
        self._db: psycopg.Connection | None = None
        self.schema_found: int | None = None  # the version found; None: an empty database, created now
        with self._using():
            self._migrate(migrate, dry_run)

    # -- connection ---------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection:
        if self._db is None or self._db.closed:
            self._db = psycopg.connect(self._conninfo, autocommit=True)
            self._db.execute(f"SET statement_timeout = {int(self._statement_timeout_ms)}")
            if self._lock_timeout_ms is not None:
                self._db.execute(f"SET lock_timeout = {int(self._lock_timeout_ms)}")
        return self._db

    def serving(self, statement_timeout_ms: int, lock_timeout_ms: int) -> None:
        """Bound this registry's own connection for a serving process's request path (a row or
        table lock held elsewhere fails fast instead of stalling it); from its next connection."""
        with self._lock:
            self._statement_timeout_ms, self._lock_timeout_ms = statement_timeout_ms, lock_timeout_ms
            if self._db is not None:
                self._db.close()
                self._db = None

    @contextlib.contextmanager
    def _using(self) -> Iterator[psycopg.Connection]:
        """The connection, under the lock; a lost or refused connection becomes
        RegistryUnavailableError (scrubbed, unchained) and the next call reconnects."""
        with self._lock:
            try:
                yield self._connection()
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                reason = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                               self._conninfo)
                if self._db is not None and (self._db.closed or self._db.broken):
                    self._db.close()
                    self._db = None
                raise RegistryUnavailableError(f"{self.target}: {reason}") from None

    def connect(self) -> psycopg.Connection:
        """A new autocommit connection with this registry's settings (timeouts, keepalives), for
        a caller that needs its own (a LISTEN loop: `notifies()` holds its connection's lock)."""
        return psycopg.connect(self._conninfo, autocommit=True)

    def error_text(self, exc: BaseException) -> str:
        """The first line of a driver error, without the password (for logs and messages)."""
        text = str(exc).strip()
        return scrub(text.splitlines()[0] if text else type(exc).__name__, self._conninfo)

    def forget_connection(self) -> None:
        """In a forked child: drop the parent's connection without closing it (closing would end
        the parent's session on the shared socket); the next call connects afresh. The lock is
        new too: a thread of the parent may have held it, and no thread of the parent runs here."""
        self._lock = threading.RLock()
        if self._db is not None:
            _FORKED_AWAY.append(self._db)
            self._db = None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- half-constructed, or at interpreter exit
            pass

    # -- schema -------------------------------------------------------------------------
    def _version(self) -> int:
        db = self._connection()
        if db.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
            return 0
        row = db.execute("SELECT version FROM schema_version").fetchone()
        return row[0] if row else 0

    def _empty(self, version: int) -> bool:
        return version == 0 and self._connection().execute("SELECT to_regclass('device')").fetchone()[0] is None

    def _refuse(self, version: int, migrate: bool) -> None:
        """RegistryError for a version this code does not serve: newer always, older unless migrating."""
        if version > SCHEMA_VERSION:
            raise RegistryError(f"{self.target}: registry schema version {version} is newer than this "
                                f"Tessera's ({SCHEMA_VERSION}); upgrade Tessera")
        if version < SCHEMA_VERSION and not migrate:
            from .registry_url import display_url
            url = display_url(self._url) if self._url else "URL"
            raise RegistryError(f"{self.target}: registry schema version {version} is older than this Tessera's "
                                f"({SCHEMA_VERSION}); migrate it: tessera-admin migrate --registry '{url}'")

    def _migrate(self, migrate: bool, dry_run: bool) -> None:
        """Create an empty database at SCHEMA_VERSION; migrate an older one only if `migrate`
        (else refuse it); refuse a newer one (see the module docstring)."""
        version = self._version()
        self.schema_found = None if self._empty(version) else version
        if version == SCHEMA_VERSION or dry_run:
            self._refuse(version, migrate or self.schema_found is None)
            return
        db = self._connection()
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            version = self._version()  # again, under the lock: another server may have done it
            empty = self._empty(version)
            self.schema_found = None if empty else version
            self._refuse(version, migrate or empty)
            if version == SCHEMA_VERSION:
                return
            if version == 0:
                db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                if empty:
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
            for n in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[n]:
                    db.execute(statement)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))

    # -- reads ---------------------------------------------------------------------------
    def _one(self, sql: str, args: tuple):
        with self._using() as db:
            return db.execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple = ()) -> list:
        with self._using() as db:
            return db.execute(sql, args).fetchall()

    def get_device(self, device_id: str) -> DeviceRecord | None:
        row = self._one(f"SELECT {_COLUMNS} FROM device WHERE device_id = %s", (device_id,))
        return _record(row) if row else None

    def find_by_certificate(self, issuer: str, serial_hex: str) -> DeviceRecord | None:
        row = self._one(f"SELECT {_COLUMNS} FROM device WHERE cert_issuer = %s AND cert_serial = %s",
                        (issuer, serial_hex.lower()))
        return _record(row) if row else None

    def list_devices(self) -> list[DeviceRecord]:
        return [_record(r) for r in self._all(f"SELECT {_COLUMNS} FROM device ORDER BY device_id")]

    def audit(self, device_id: str | None = None, limit: int = 100) -> list[AuditEvent]:
        q = "SELECT time, event, device_id, detail, server_id, count FROM audit"
        args: tuple = ()
        if device_id is not None:
            q += " WHERE device_id = %s"
            args = (device_id,)
        rows = self._all(q + " ORDER BY id DESC LIMIT %s", args + (limit,))
        return [AuditEvent(*r) for r in reversed(rows)]

    def revoked_since(self, since: int, limit: int) -> list[tuple[str, int]]:
        # `state = 'revoked'` as the partial index device_revoked says it, so the planner uses it
        return [tuple(r) for r in self._all(
            "SELECT device_id, updated FROM device WHERE state = 'revoked' AND updated >= %s "
            "ORDER BY updated DESC, device_id DESC LIMIT %s", (since, limit))]

    def get_meta(self, key: str) -> bytes | None:
        row = self._one("SELECT value FROM meta WHERE key = %s", (key,))
        return bytes(row[0]) if row else None

    def load_service_keys(self) -> list[tuple[int, bytes, int, int | None]]:
        return [(r[0], bytes(r[1]), r[2], r[3]) for r in
                self._all("SELECT kvno, sealed, created, retire_at FROM service_key ORDER BY kvno")]

    def get_nas(self, name: str) -> tuple[str, int, bytes] | None:
        row = self._one("SELECT address, port, secret FROM nas WHERE name = %s", (name,))
        return (row[0], row[1], bytes(row[2])) if row else None

    def list_nas(self) -> list[tuple[str, str, int]]:
        return [tuple(r) for r in self._all("SELECT name, address, port FROM nas ORDER BY name")]

    def list_servers(self) -> list[ServerRecord]:
        return [ServerRecord(*r) for r in self._all("SELECT server_id, host, first_seen FROM server ORDER BY server_id")]

    # -- writes: one transaction each, with the audit line ---------------------------------
    def _tx(self, statements, event: AuditEvent | None, require_one: bool = False) -> list[int]:
        """Run statements and the audit insert atomically; with `require_one`, roll back unless
        the last statement changed exactly one row (returns the counts either way)."""
        counts: list[int] = []
        with self._using() as db:
            try:
                with db.transaction():
                    cur = db.cursor()
                    for sql, args in statements:
                        cur.execute(sql, args)
                        counts.append(cur.rowcount)
                    if require_one and counts[-1] != 1:
                        raise psycopg.Rollback()
                    if event is not None:
                        _insert_audit(cur, event)
            except psycopg.IntegrityError as exc:
                raise RegistryError(f"refused by the registry: {exc.diag.message_primary or exc}") from None
        return counts

    def add_device(self, record: DeviceRecord, event: AuditEvent) -> None:
        r = record
        try:
            self._tx([(f"INSERT INTO device ({_COLUMNS}) VALUES ({', '.join(['%s'] * 19)})",
                       (r.device_id, r.public_key, r.state.value, r.enrolled_by, r.created, r.updated,
                        r.cert_issuer, r.cert_serial.lower() if r.cert_serial else None, r.generation,
                        r.registered_at, r.registration_not_after, r.sealed_drt, r.nas_identifier,
                        r.nas_address, r.nas_port_id, r.calling_station, r.located_at,
                        r.register_request_time, r.register_request_nonces))], event)
        except RegistryError:
            raise RegistryError(f"device {r.device_id} (or its certificate) is already enrolled") from None

    def record_registration(self, device_id, expect_generation, generation, not_after, sealed_drt, now, event, *,
                            request_time: int, request_nonce: bytes) -> Registered:
        return self.record_registration_row(device_id, expect_generation, generation, not_after, sealed_drt, now,
                                            event, request_time=request_time, request_nonce=request_nonce)[0]

    def record_registration_row(self, device_id, expect_generation, generation, not_after, sealed_drt, now, event,
                                *, request_time: int, request_nonce: bytes) -> tuple[Registered, DeviceRecord | None]:
        """`record_registration`, and the device's row as it stands after it, from the same
        transaction (the UPDATE's RETURNING, or the locked row that won): what a cache puts."""
        # read, decide and write under the row lock (SELECT ... FOR UPDATE): the compare-and-set
        with self._using() as db:
            with db.transaction():
                cur = db.cursor()
                row = cur.execute(f"SELECT {_COLUMNS} FROM device WHERE device_id = %s FOR UPDATE",
                                  (device_id,)).fetchone()
                verdict = Registered.CHANGED
                if row is not None:
                    rec = _record(row)
                    try:
                        nonces = check_freshness(rec.register_request_time, rec.register_request_nonces,
                                                 request_time, request_nonce)
                        if rec.generation == expect_generation and rec.state is not DeviceState.REVOKED:
                            verdict = Registered.RECORDED
                    except StaleRequestError:
                        verdict = Registered.REPLAYED
                if verdict is not Registered.RECORDED:
                    raise psycopg.Rollback()  # nothing was written
                row = cur.execute(f"UPDATE device SET state = 'registered', generation = %s, registered_at = %s, "
                                  f"registration_not_after = %s, sealed_drt = %s, updated = %s, "
                                  f"register_request_time = %s, register_request_nonces = %s "
                                  f"WHERE device_id = %s AND generation = %s RETURNING {_COLUMNS}",
                                  (generation, now, not_after, sealed_drt, now, request_time, nonces,
                                   device_id, expect_generation)).fetchone()
                _insert_audit(cur, event)
        return verdict, (_record(row) if row is not None else None)

    def set_state(self, device_id: str, state: DeviceState, now: int, event: AuditEvent) -> None:
        extra = ", sealed_drt = NULL" if state is DeviceState.REVOKED else ""
        (n,) = self._tx([(f"UPDATE device SET state = %s, updated = %s{extra} WHERE device_id = %s",
                          (state.value, now, device_id))], event, require_one=True)
        if n != 1:
            raise RegistryError(f"device {device_id} is not enrolled")

    def record_location(self, device_id, nas_identifier, nas_address, nas_port_id, calling_station, now) -> bool:
        # a location is worth no wait for a synchronous standby (a lost one is written again next admission)
        (_, n) = self._tx([("SET LOCAL synchronous_commit = local", ()),
                           ("UPDATE device SET nas_identifier = %s, nas_address = %s, nas_port_id = %s, "
                            "calling_station = %s, located_at = %s WHERE device_id = %s",
                            (nas_identifier, nas_address, nas_port_id, calling_station, now, device_id))],
                          None, require_one=True)
        return n == 1

    def put_nas(self, name: str, address: str, port: int, sealed_secret: bytes, event: AuditEvent) -> None:
        self._tx([("INSERT INTO nas (name, address, port, secret) VALUES (%s,%s,%s,%s) ON CONFLICT (name) "
                   "DO UPDATE SET address = excluded.address, port = excluded.port, secret = excluded.secret",
                   (name, address, port, sealed_secret))], event)

    def add_audit(self, event: AuditEvent) -> None:
        self._tx([], event)

    def set_meta(self, key: str, value: bytes) -> None:
        self._tx([("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                   (key, value))], None)

    def claim_server(self, server_id: str, host: str, now: int, event: AuditEvent) -> ServerRecord:
        # a concurrent claim of the same id waits on the other's insert, then finds its row
        with self._using() as db:
            with db.transaction():
                cur = db.cursor()
                cur.execute("INSERT INTO server (server_id, host, first_seen) VALUES (%s,%s,%s) "
                            "ON CONFLICT (server_id) DO NOTHING", (server_id, host, now))
                if cur.rowcount == 1:
                    _insert_audit(cur, event)
                    return ServerRecord(server_id, host, now)
                row = cur.execute("SELECT server_id, host, first_seen FROM server WHERE server_id = %s",
                                  (server_id,)).fetchone()
        return ServerRecord(*row)

    def store_service_keys(self, rows, event: AuditEvent) -> None:
        self._tx([("DELETE FROM service_key", ())] +
                 [("INSERT INTO service_key (kvno, sealed, created, retire_at) VALUES (%s,%s,%s,%s)", row)
                  for row in rows], event)
