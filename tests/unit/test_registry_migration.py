"""Registries made before registration freshness are upgraded in place by `tessera-admin migrate`
(`SQLiteRegistry(path, migrate=True)`); opening one without it is refused, untouched.

The old registry comes from two independent places: ``tests/vectors/registry_v0.sql``, a dump
of a realm that ``tessera-admin init`` and the service of git 4efee6a made (a device registered,
a NAS, audit lines), and ``V0_SCHEMA`` below, the schema text of that commit copied verbatim.
"""

import hashlib
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from tessera import errors as E
from tessera.device import DeviceClient, Registration, State
from tessera.identity import DeviceKey
from tessera.realm import Realm
from tessera.registry import AuditEvent, DeviceState, RegistryError, ServerRecord
from tessera.sqlite_registry import SCHEMA, SCHEMA_VERSION, SQLiteRegistry
from tessera.ticket import RegistrationTicket, open_ticket

VECTOR = Path(__file__).resolve().parents[1] / "vectors" / "registry_v0.sql"
KEK = bytes.fromhex("ba70b91f1588cbadb53e28047cdfd1b241b55c26d95f2d1fe453a8538520d96f")
T = 1_800_000_000  # SN-OLD enrolled; registered at T + 10 with a request of time T + 10

# tessera/sqlite_registry.py SCHEMA at git 4efee6a, verbatim
V0_SCHEMA = """
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


def legacy_db(path: Path) -> str:
    """The 4efee6a realm, restored from its dump into a file (WAL, as the code left it)."""
    db = sqlite3.connect(path)
    db.executescript(VECTOR.read_text())
    db.execute("PRAGMA journal_mode=WAL")
    db.close()
    return str(path)


def raw(path: str, sql: str) -> list:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def columns(path: str, table: str) -> list:
    return [(r[1], r[2], r[3], r[4]) for r in raw(path, f"PRAGMA table_info({table})")]


def test_version_0_schema_is_frozen():
    """New columns go into MIGRATIONS; editing SCHEMA would change what an old file is taken to be."""
    assert SCHEMA == V0_SCHEMA


def test_legacy_registry_is_migrated_in_place_and_keeps_everything(tmp_path):
    path = legacy_db(tmp_path / "registry.db")
    before = {t: raw(path, f"SELECT * FROM {t} ORDER BY 1") for t in ("device", "audit", "meta", "service_key", "nas")}
    assert raw(path, "PRAGMA user_version") == [(0,)]

    with pytest.raises(RegistryError, match=rf"registry schema version 0 is older than this Tessera's "
                                            rf"\({SCHEMA_VERSION}\); migrate it: tessera-admin migrate "
                                            rf"--registry sqlite://{tmp_path}/registry.db$"):
        SQLiteRegistry(path)  # a server's open: refused, the file untouched
    assert raw(path, "PRAGMA user_version") == [(0,)]
    reg = SQLiteRegistry(path, migrate=True)
    assert reg.schema_found == 0
    assert raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(3,)]
    for table in ("meta", "service_key", "nas"):
        assert raw(path, f"SELECT * FROM {table} ORDER BY 1") == before[table], table
    # the old columns of every row are as they were; the new ones follow
    assert [r[:17] for r in raw(path, "SELECT * FROM device ORDER BY 1")] == before["device"]
    assert [r[:6] for r in raw(path, "SELECT * FROM audit ORDER BY 1")] == before["audit"]
    assert [e.count for e in reg.audit()] == [1] * 5
    old = reg.get_device("SN-OLD")
    assert (old.state, old.generation, old.registered_at) == (DeviceState.REGISTERED, 1, T + 10)
    # its freshness bar: the last acceptance plus the realm's skew (the request time was not
    # kept), that second's nonces unknown (all of it taken)
    assert (old.register_request_time, old.register_request_nonces) == (T + 10 + 300, None)
    assert reg.list_servers() == []
    # the migrated file has exactly the columns a new one gets
    fresh = str(tmp_path / "fresh.db")
    SQLiteRegistry(fresh).close()
    for table in ("device", "audit", "server", "meta", "service_key", "nas"):
        assert columns(path, table) == columns(fresh, table), table
    # and the same indexes (the revocation list's device_revoked among them)
    indexes = "SELECT name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name"
    assert raw(path, indexes) == raw(fresh, indexes) and ("device_revoked",) in [r[:1] for r in raw(path, indexes)]
    reg.close()
    SQLiteRegistry(path).close()  # opening again changes nothing
    assert raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_legacy_realm_serves_after_the_upgrade(tmp_path):
    """The device registered under the old code keeps its DRT; its next registration is checked
    for freshness; a registration request it made before the upgrade cannot be replayed."""
    realm = Realm(SQLiteRegistry(legacy_db(tmp_path / "registry.db"), migrate=True), KEK)
    assert realm.name == "legacy.example"
    svc = realm.service("radius1")
    key = DeviceKey.generate(hashlib.sha256(b"legacy device SN-OLD").digest())
    dev = DeviceClient(realm.bundle("SN-OLD", [], ""), key)
    rec = realm.registry.get_device("SN-OLD")
    drt = open_ticket(realm.keyring, rec.sealed_drt, RegistrationTicket, T + 20)  # the device holds the same
    dev.registration = Registration(drt.llk, rec.sealed_drt, drt.generation, drt.not_before, drt.not_after)
    dev.state = State.REGISTERED
    dev.ticket_reply(svc.handle(dev.auth_request("radius1", T + 20, b"\x03" * 16), T + 20), T + 20)

    # the request the old server accepted at T + 10 (ECDSA signatures differ, the time is what counts)
    with pytest.raises(E.ReplayError):
        svc.handle(dev.register_request("radius1", T + 10, b"\x02" * 16), T + 20)
    dev.abandon()
    with pytest.raises(E.ReplayError) as exc:  # anything up to T + 10 + skew might have been accepted
        svc.handle(dev.register_request("radius1", T + 310, b"\x04" * 16), T + 300)
    assert str(exc.value) == f"registration requests of {T + 310} may have been accepted already"
    dev.abandon()
    reg = dev.register_reply(svc.handle(dev.register_request("radius1", T + 311, b"\x05" * 16), T + 300), T + 300)
    assert reg.generation == 2
    row = realm.registry.get_device("SN-OLD")
    assert (row.register_request_time, row.register_request_nonces) == (T + 311, b"\x05" * 16)


def test_v0_schema_text_makes_a_file_the_code_upgrades(tmp_path):
    """The same from the schema text alone, with rows as the old code wrote them."""
    path = str(tmp_path / "v0.db")
    db = sqlite3.connect(path)
    db.executescript(V0_SCHEMA)
    db.execute("INSERT INTO device (device_id, public_key, state, enrolled_by, created, updated) "
               "VALUES ('SN-E', x'02', 'enrolled', 'key', 5, 5)")
    db.execute("INSERT INTO audit (time, event, device_id) VALUES (5, 'enrolled', 'SN-E')")
    db.commit()
    db.close()
    reg = SQLiteRegistry(path, migrate=True)
    rec = reg.get_device("SN-E")
    assert (rec.state, rec.generation, rec.register_request_time, rec.register_request_nonces) == \
        (DeviceState.ENROLLED, 0, None, None)  # never registered: no bar
    assert [(e.event, e.count) for e in reg.audit()] == [("enrolled", 1)]
    assert reg.claim_server("radius1", "host-a", 6, AuditEvent(6, "server-added")) == \
        ServerRecord("radius1", "host-a", 6)


def _open(path: str, q) -> None:
    try:
        SQLiteRegistry(path, migrate=True).close()
        q.put("ok")
    except Exception as exc:  # noqa: BLE001 -- reported to the parent
        q.put(f"{type(exc).__name__}: {exc}")


def test_servers_opening_one_legacy_file_at_once_migrate_it_once(tmp_path):
    """Two `tessera-admin migrate` run on the old file together: the second waits for the
    first's migration and finds it done (no 'duplicate column name')."""
    path = legacy_db(tmp_path / "registry.db")
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_open, args=(path, q)) for _ in range(6)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    assert results == ["ok"] * 6
    assert raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert [c[0] for c in columns(path, "device")].count("register_request_time") == 1


def test_an_opener_that_read_the_old_version_before_the_lock_finds_the_migration_done(tmp_path, monkeypatch):
    """The interleaving the processes above may or may not hit, made certain: B read version 0,
    A migrated, then B takes the write lock. B must re-read the version under it."""
    path = legacy_db(tmp_path / "registry.db")
    SQLiteRegistry(path, migrate=True).close()  # A
    real = SQLiteRegistry._version
    reads = []

    def stale_first(self):
        reads.append(1)
        return 0 if len(reads) == 1 else real(self)

    monkeypatch.setattr(SQLiteRegistry, "_version", stale_first)
    b = SQLiteRegistry(path, migrate=True)  # B: no "duplicate column name"
    assert len(reads) == 2 and b.get_device("SN-OLD").generation == 1
    assert [c[0] for c in columns(path, "device")].count("register_request_time") == 1


def test_a_registry_newer_than_the_code_is_refused_untouched(tmp_path):
    path = str(tmp_path / "future.db")
    SQLiteRegistry(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RegistryError, match=f"schema version {SCHEMA_VERSION + 1} is newer than this Tessera's"):
        SQLiteRegistry(path)
    assert raw(path, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]
