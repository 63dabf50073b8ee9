"""One registry contract, two backends: every test runs on SQLite and on PostgreSQL.

How this works: the ``backend`` fixture is parametrised over ``sqlite`` (a fresh file per test)
and ``postgresql`` (a fresh database per test in one private cluster per session, started by
``tessera.lab.postgres`` as the ``postgres`` user on a private unix socket and 127.0.0.1, and
stopped by PID afterwards). A `Backend` opens registries (each its own connection, as two
servers would have), runs raw SQL beside the code under test, and holds a device row locked as
another server's compare-and-set would. PostgreSQL needs root and Debian's postgresql 15
(tests/gate.py: as root a missing part fails the run).

The behaviours of tests/unit/test_registry.py and test_registry_migration.py are ported here
(those stay as they are); the PostgreSQL-only part at the end covers connections: a lost
backend, a refused one, the password from a passfile and never in URLs or messages.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import threading
import time

import pytest

from tessera import errors as E
from tessera import pg_registry, sqlite_registry
from tessera.registry import (AuditEvent, DeviceRecord, DeviceState, Registered, RegistryError, ServerIdError,
                              ServerRecord, claim_server_id)
from tessera.registry_url import display_url, open_registry
from tests.gate import missing
from tests.server.pgcluster import PASSWORD  # the shared cluster's (pg_cluster, conftest.py)



def rec(device_id="SN-1", serial=None):
    return DeviceRecord(device_id, b"\x02" + b"\x01" * 32, DeviceState.ENROLLED, "key", 1, 1,
                        "/CN=ca" if serial else None, serial)


def registered(reg, device_id, expect, time_, nonce, now=None):
    now = time_ if now is None else now
    return reg.record_registration(device_id, expect, expect + 1, now + 100, b"drt-%d" % time_, now,
                                   AuditEvent(now, "registered", device_id), request_time=time_, request_nonce=nonce)


# -- backends ----------------------------------------------------------------------------------
class SQLiteBackend:
    name = "sqlite"
    module = sqlite_registry
    cls = sqlite_registry.SQLiteRegistry

    def __init__(self, path: str):
        self.path = path
        self.url = f"sqlite://{path}"
        self._opened: list = []

    def open(self, **options):
        reg = sqlite_registry.SQLiteRegistry(self.path, **options)
        self._opened.append(reg)
        return reg

    def sql(self, statement: str) -> list:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            return db.execute(statement).fetchall()
        finally:
            db.close()

    def script(self, text: str) -> None:
        db = sqlite3.connect(self.path)
        db.executescript(text)
        db.close()

    def blob(self, b: bytes) -> str:
        return f"x'{b.hex()}'"

    def version(self) -> int:
        return self.sql("PRAGMA user_version")[0][0]

    def set_version(self, n: int) -> None:
        self.sql(f"PRAGMA user_version = {n}")

    def make_v0(self) -> None:
        self.script(sqlite_registry.SCHEMA)

    def columns(self, table: str) -> list:
        return [(r[1], r[2].upper(), r[3]) for r in self.sql(f"PRAGMA table_info({table})")]

    def indexes(self) -> list:
        return sorted(r[0] for r in self.sql("SELECT name FROM sqlite_master WHERE type = 'index' "
                                             "AND name NOT LIKE 'sqlite_%'"))

    @contextlib.contextmanager
    def row_locked_then_bumped(self, device_id: str):
        """Another server's compare-and-set in progress: the write lock held, generation bumped
        to 1 and committed on exit."""
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("UPDATE device SET generation = 1 WHERE device_id = ?", (device_id,))
            db.execute("COMMIT")
        finally:
            db.close()

    def close(self) -> None:
        for reg in self._opened:
            reg.close()


class PostgresBackend:
    name = "postgresql"
    module = pg_registry
    cls = pg_registry.PostgresRegistry

    def __init__(self, cluster, dbname: str):
        self.cluster = cluster
        self.dbname = dbname
        self.conninfo = cluster.create_database(dbname)
        self.url = cluster.url(dbname)
        self._opened: list = []

    def open(self, **options):
        reg = pg_registry.PostgresRegistry(self.conninfo, **options)
        self._opened.append(reg)
        return reg

    def _connect(self):
        import psycopg
        return psycopg.connect(self.conninfo, autocommit=True)

    def sql(self, statement: str) -> list:
        with self._connect() as db:
            cur = db.execute(statement)
            return cur.fetchall() if cur.description else []

    def script(self, text: str) -> None:
        with self._connect() as db:
            for statement in text.split(";"):
                if statement.strip():
                    db.execute(statement)

    def blob(self, b: bytes) -> str:
        return f"'\\x{b.hex()}'::bytea"

    def version(self) -> int:
        return self.sql("SELECT version FROM schema_version")[0][0]

    def set_version(self, n: int) -> None:
        self.sql(f"UPDATE schema_version SET version = {n}")

    def make_v0(self) -> None:
        self.script(pg_registry.SCHEMA + ";CREATE TABLE schema_version (version INTEGER NOT NULL);"
                    "INSERT INTO schema_version VALUES (0)")

    def columns(self, table: str) -> list:
        return self.sql(f"SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                        f"WHERE table_name = '{table}' ORDER BY ordinal_position")

    def indexes(self) -> list:
        return sorted(r[0] for r in self.sql("SELECT indexname FROM pg_indexes WHERE schemaname = 'public' "
                                             "AND indexname NOT LIKE '%_pkey'"))

    @contextlib.contextmanager
    def row_locked_then_bumped(self, device_id: str):
        db = self._connect()
        try:
            with db.transaction():
                db.execute("SELECT 1 FROM device WHERE device_id = %s FOR UPDATE", (device_id,))
                yield
                db.execute("UPDATE device SET generation = 1 WHERE device_id = %s", (device_id,))
        finally:
            db.close()

    def close(self) -> None:
        for reg in self._opened:
            reg.close()


_dbs = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    if request.param == "sqlite":
        b = SQLiteBackend(str(tmp_path / "registry.db"))
    else:
        b = PostgresBackend(request.getfixturevalue("pg_cluster"), f"contract_{next(_dbs)}")
    yield b
    b.close()


@pytest.fixture
def reg(backend):
    return backend.open()


# -- enrolment, registration, writes -------------------------------------------------------------
def test_registry_survives_reopen(backend):
    a = backend.open()
    a.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    a.close()
    again = backend.open()
    assert again.get_device("SN-1").state is DeviceState.ENROLLED
    assert [e.event for e in again.audit()] == ["enrolled"]
    assert again.get_device("SN-2") is None


def test_duplicate_enrolment_is_refused_without_an_audit_line(reg):
    reg.add_device(rec(serial="ab"), AuditEvent(1, "enrolled", "SN-1"))
    with pytest.raises(RegistryError, match="SN-1 .*already enrolled"):
        reg.add_device(rec(), AuditEvent(2, "enrolled", "SN-1"))
    with pytest.raises(RegistryError):  # same certificate under another id
        reg.add_device(rec("SN-2", serial="AB"), AuditEvent(2, "enrolled", "SN-2"))
    assert len(reg.audit()) == 1 and reg.get_device("SN-2") is None
    assert reg.find_by_certificate("/CN=ca", "AB").device_id == "SN-1"
    reg.add_device(rec("SN-2", serial="ac"), AuditEvent(3, "enrolled", "SN-2"))  # control: another serial
    assert [r.device_id for r in reg.list_devices()] == ["SN-1", "SN-2"]


def test_registration_compare_and_set(reg):
    reg.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    n = b"\x01" * 16
    assert reg.record_registration("SN-1", 0, 1, 100, b"drt", 5, AuditEvent(5, "registered", "SN-1"),
                                   request_time=5, request_nonce=n) is Registered.RECORDED
    assert reg.record_registration("SN-1", 0, 1, 100, b"drt2", 6, AuditEvent(6, "registered", "SN-1"),
                                   request_time=6, request_nonce=n) is Registered.CHANGED
    r = reg.get_device("SN-1")
    assert (r.generation, r.sealed_drt, r.state, r.registered_at, r.registration_not_after) == \
        (1, b"drt", DeviceState.REGISTERED, 5, 100)
    assert [e.event for e in reg.audit()] == ["enrolled", "registered"]
    reg.set_state("SN-1", DeviceState.REVOKED, 7, AuditEvent(7, "revoked", "SN-1"))
    assert reg.get_device("SN-1").sealed_drt is None
    assert reg.record_registration("SN-1", 1, 2, 100, b"drt3", 8, AuditEvent(8, "registered", "SN-1"),
                                   request_time=8, request_nonce=n) is Registered.CHANGED
    with pytest.raises(RegistryError, match="SN-9 is not enrolled"):
        reg.set_state("SN-9", DeviceState.REVOKED, 7, AuditEvent(7, "revoked", "SN-9"))
    assert [e.event for e in reg.audit()] == ["enrolled", "registered", "revoked"]
    reg.add_device(rec("SN-2"), AuditEvent(9, "enrolled", "SN-2"))  # control: not revoked, goes through
    assert reg.record_registration("SN-2", 0, 1, 100, b"d1", 9, AuditEvent(9, "registered", "SN-2"),
                                   request_time=9, request_nonce=n) is Registered.RECORDED
    assert reg.record_registration("SN-2", 1, 2, 100, b"d2", 10, AuditEvent(10, "registered", "SN-2"),
                                   request_time=10, request_nonce=n) is Registered.RECORDED
    assert reg.get_device("SN-2").generation == 2 and reg.get_device("SN-1").generation == 1
    assert reg.record_registration("SN-9", 0, 1, 100, b"d", 11, AuditEvent(11, "registered", "SN-9"),
                                   request_time=11, request_nonce=n) is Registered.CHANGED  # not enrolled


def test_a_failed_write_leaves_nothing_half_written(reg):
    reg.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    with pytest.raises(Exception):
        reg.store_service_keys([(1, b"a", 1, None), (1, b"b", 1, None)], AuditEvent(2, "key-rotated"))
    assert reg.load_service_keys() == [] and len(reg.audit()) == 1
    reg.store_service_keys([(1, b"a", 1, None), (2, b"b", 1, None)], AuditEvent(2, "key-rotated"))
    assert reg.load_service_keys() == [(1, b"a", 1, None), (2, b"b", 1, None)] and len(reg.audit()) == 2
    reg.store_service_keys([(2, b"b", 1, 50), (3, b"c", 4, None)], AuditEvent(3, "key-rotated"))  # replaces
    assert reg.load_service_keys() == [(2, b"b", 1, 50), (3, b"c", 4, None)]


def test_a_write_whose_audit_line_fails_is_rolled_back(backend, monkeypatch):
    """The write and its audit row are one transaction: the audit insert failing undoes the write."""
    reg = backend.open()
    reg.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    row, audit = reg.get_device("SN-1"), reg.audit()

    def broken(cur, event):
        raise RuntimeError("audit insert failed")

    monkeypatch.setattr(backend.module, "_insert_audit", broken)
    with pytest.raises(RuntimeError):
        reg.set_state("SN-1", DeviceState.REVOKED, 5, AuditEvent(5, "revoked", "SN-1"))
    with pytest.raises(RuntimeError):
        registered(reg, "SN-1", 0, 6, b"\x01" * 16)
    with pytest.raises(RuntimeError):
        reg.add_device(rec("SN-2"), AuditEvent(7, "enrolled", "SN-2"))
    with pytest.raises(RuntimeError):
        reg.put_nas("sw1", "192.0.2.1", 3799, b"s", AuditEvent(8, "nas-added"))
    other = backend.open()  # what another server sees
    assert other.get_device("SN-1") == row and other.get_device("SN-2") is None and other.list_nas() == []
    assert other.audit() == audit
    monkeypatch.undo()  # control: the same writes land, each with its line
    reg.set_state("SN-1", DeviceState.REVOKED, 5, AuditEvent(5, "revoked", "SN-1"))
    reg.put_nas("sw1", "192.0.2.1", 3799, b"s", AuditEvent(8, "nas-added"))
    assert other.get_device("SN-1").state is DeviceState.REVOKED and other.list_nas() == [("sw1", "192.0.2.1", 3799)]
    assert [e.event for e in other.audit()] == ["enrolled", "revoked", "nas-added"]


def test_registration_freshness_refuses_older_or_seen_and_writes_nothing(reg):
    reg.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    a, b, c = b"\x0a" * 16, b"\x0b" * 16, b"\x0c" * 16
    assert registered(reg, "SN-1", 0, 100, a) is Registered.RECORDED
    row = reg.get_device("SN-1")
    assert (row.generation, row.register_request_time, row.register_request_nonces) == (1, 100, a)
    audit = reg.audit()
    for t, nonce in ((100, a), (99, b), (0, c)):
        assert registered(reg, "SN-1", 1, t, nonce, now=150) is Registered.REPLAYED, (t, nonce)
        assert reg.get_device("SN-1") == row and reg.audit() == audit
    assert registered(reg, "SN-1", 0, 100, a, now=150) is Registered.REPLAYED
    assert registered(reg, "SN-1", 0, 100, b) is Registered.CHANGED and reg.get_device("SN-1") == row
    assert registered(reg, "SN-1", 1, 100, b) is Registered.RECORDED
    row = reg.get_device("SN-1")
    assert (row.generation, row.register_request_time, row.register_request_nonces, row.sealed_drt) == \
        (2, 100, a + b, b"drt-100")
    assert registered(reg, "SN-1", 2, 100, a, now=160) is Registered.REPLAYED
    assert registered(reg, "SN-1", 2, 101, a) is Registered.RECORDED
    assert reg.get_device("SN-1").register_request_nonces == a
    assert registered(reg, "SN-1", 3, 100, c, now=170) is Registered.REPLAYED
    assert [e.event for e in reg.audit()] == ["enrolled", "registered", "registered", "registered"]


def test_registration_freshness_is_kept_across_reopen(backend):
    reg = backend.open()
    reg.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    assert registered(reg, "SN-1", 0, 100, b"\x01" * 16) is Registered.RECORDED
    reg.close()
    again = backend.open()
    assert registered(again, "SN-1", 1, 100, b"\x01" * 16, now=120) is Registered.REPLAYED
    assert registered(again, "SN-1", 1, 100, b"\x02" * 16) is Registered.RECORDED


def test_registration_of_a_revoked_device_with_a_newer_time_is_changed_not_recorded(reg):
    reg.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    reg.set_state("SN-1", DeviceState.REVOKED, 2, AuditEvent(2, "revoked", "SN-1"))
    assert registered(reg, "SN-1", 0, 100, b"\x01" * 16) is Registered.CHANGED
    assert reg.get_device("SN-1").register_request_time is None


def test_a_registration_waits_for_another_servers_compare_and_set_and_then_loses(backend):
    """Server A holds the row mid-compare-and-set; B's registration must wait for it and then
    see A's generation (CHANGED, nothing written), not overwrite it with its stale read."""
    reg = backend.open()
    reg.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    result = []
    with backend.row_locked_then_bumped("SN-1"):
        b = threading.Thread(target=lambda: result.append(registered(reg, "SN-1", 0, 100, b"\x01" * 16)))
        b.start()
        time.sleep(0.3)
        assert b.is_alive() and result == []  # waiting on A's lock
    b.join(10)
    assert result == [Registered.CHANGED]
    row = reg.get_device("SN-1")
    assert (row.generation, row.sealed_drt, row.register_request_time) == (1, None, None)
    assert [e.event for e in reg.audit()] == ["enrolled"]
    assert registered(reg, "SN-1", 1, 100, b"\x01" * 16) is Registered.RECORDED  # control: the current one


def test_concurrent_registrations_from_separate_connections_one_wins(backend):
    """Eight servers register one device at the same generation at once: exactly one RECORDED,
    the others CHANGED, one audit line."""
    first = backend.open()
    first.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    regs = [backend.open() for _ in range(8)]
    barrier = threading.Barrier(len(regs))
    results = [None] * len(regs)

    def run(i):
        barrier.wait()
        results[i] = registered(regs[i], "SN-1", 0, 100, bytes([i + 1]) * 16)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(regs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r.value for r in results) == ["changed"] * 7 + ["recorded"]
    winner = results.index(Registered.RECORDED)
    row = first.get_device("SN-1")
    assert (row.generation, row.register_request_nonces) == (1, bytes([winner + 1]) * 16)
    assert [e.event for e in first.audit()] == ["enrolled", "registered"]


def test_audit_count_and_order_round_trip(reg):
    reg.add_audit(AuditEvent(5, "register-rejected", "SN-1", "bad signature (x41 since the last row)", "radius-a", 41))
    reg.add_audit(AuditEvent(6, "key-rotated"))
    reg.add_audit(AuditEvent(4, "enrolled", "SN-2"))  # an older time, written later: order of writing
    assert [(e.event, e.count, e.server_id) for e in reg.audit()] == \
        [("register-rejected", 41, "radius-a"), ("key-rotated", 1, ""), ("enrolled", 1, "")]
    assert [e.event for e in reg.audit(limit=2)] == ["key-rotated", "enrolled"]  # the newest two
    assert [e.event for e in reg.audit("SN-1")] == ["register-rejected"]


def test_location_meta_and_nas(reg):
    reg.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    assert reg.record_location("SN-1", "sw1", "192.0.2.1", "port7", "02-00-00-00-00-01", 5)
    assert not reg.record_location("SN-9", "sw1", "192.0.2.1", "port7", "02-00-00-00-00-09", 5)
    r = reg.get_device("SN-1")
    assert (r.nas_identifier, r.nas_address, r.nas_port_id, r.calling_station, r.located_at) == \
        ("sw1", "192.0.2.1", "port7", "02-00-00-00-00-01", 5)
    assert reg.get_meta("realm") is None
    reg.set_meta("realm", b"example.net")
    reg.set_meta("realm", b"example.org\x00\xff")
    assert reg.get_meta("realm") == b"example.org\x00\xff"
    reg.put_nas("sw1", "192.0.2.1", 3799, b"sealed1", AuditEvent(2, "nas-added"))
    reg.put_nas("sw1", "192.0.2.2", 1700, b"sealed2", AuditEvent(3, "nas-added"))
    reg.put_nas("sw0", "2001:db8::1", 3799, b"sealed0", AuditEvent(4, "nas-added"))
    assert reg.get_nas("sw1") == ("192.0.2.2", 1700, b"sealed2") and reg.get_nas("sw9") is None
    assert reg.list_nas() == [("sw0", "2001:db8::1", 3799), ("sw1", "192.0.2.2", 1700)]
    assert [e.event for e in reg.audit()] == ["enrolled", "nas-added", "nas-added", "nas-added"]


# -- the revocation list -------------------------------------------------------------------------
def test_revoked_since_lists_newest_first_from_since_with_a_limit(reg):
    for i, name in enumerate(["SN-A", "SN-B", "SN-C", "SN-D", "SN-E", "SN-F"]):
        reg.add_device(rec(name), AuditEvent(1, "enrolled", name))
    for name, at in (("SN-A", 10), ("SN-B", 20), ("SN-C", 20), ("SN-D", 30)):
        reg.set_state(name, DeviceState.REVOKED, at, AuditEvent(at, "revoked", name))
    reg.set_state("SN-E", DeviceState.REGISTERED, 40, AuditEvent(40, "registered", "SN-E"))  # not revoked
    assert reg.revoked_since(0, 10) == [("SN-D", 30), ("SN-C", 20), ("SN-B", 20), ("SN-A", 10)]
    assert reg.revoked_since(20, 10) == [("SN-D", 30), ("SN-C", 20), ("SN-B", 20)]  # `since` included
    assert reg.revoked_since(21, 10) == [("SN-D", 30)]
    assert reg.revoked_since(0, 2) == [("SN-D", 30), ("SN-C", 20)]  # ties: device id descending
    assert reg.revoked_since(31, 10) == []
    reg.set_state("SN-A", DeviceState.REVOKED, 50, AuditEvent(50, "revoked", "SN-A"))  # repeated: later
    assert reg.revoked_since(0, 2) == [("SN-A", 50), ("SN-D", 30)]


def test_revoked_since_is_served_by_the_partial_index(backend):
    backend.open()
    assert "device_revoked" in backend.indexes()
    if backend.name == "postgresql":
        with backend._connect() as db:  # a handful of rows: without this the planner scans
            db.execute("SET enable_seqscan = off")
            plan = db.execute("EXPLAIN SELECT device_id, updated FROM device WHERE state = 'revoked' "
                              "AND updated >= 5 ORDER BY updated DESC, device_id DESC LIMIT 3").fetchall()
    else:
        plan = backend.sql("EXPLAIN QUERY PLAN SELECT device_id, updated FROM device WHERE state = 'revoked' "
                           "AND updated >= 5 ORDER BY updated DESC, device_id DESC LIMIT 3")
    assert "device_revoked" in repr(plan)


# -- the realm's servers -------------------------------------------------------------------------
def test_claim_server_records_an_id_once_and_returns_its_holder(reg):
    ev = AuditEvent(1, "server-added", None, "radius1")
    assert reg.claim_server("radius1", "host-a", 1, ev) == ServerRecord("radius1", "host-a", 1)
    assert reg.claim_server("radius1", "host-b", 2, ev) == ServerRecord("radius1", "host-a", 1)
    assert reg.claim_server("radius1", "host-a", 3, ev) == ServerRecord("radius1", "host-a", 1)
    assert reg.claim_server("radius2", "host-b", 4, ev) == ServerRecord("radius2", "host-b", 4)
    assert reg.list_servers() == [ServerRecord("radius1", "host-a", 1), ServerRecord("radius2", "host-b", 4)]
    assert len(reg.audit()) == 2


def test_claim_server_id_refuses_an_id_another_server_took_between_check_and_claim(backend):
    ours, theirs = backend.open(), backend.open()
    real_list = ours.list_servers
    calls = []

    def list_after_first():
        calls.append(1)
        return [] if len(calls) == 1 else real_list()

    ours.list_servers = list_after_first
    theirs.claim_server("radius2", "host-c", 1, AuditEvent(1, "server-added"))
    with pytest.raises(ServerIdError, match=r"was just taken by host 'host-c'; ids in use: radius2 \(host host-c\)"):
        claim_server_id(ours, "radius2", "host-b", True, False, 2)
    assert claim_server_id(ours, "radius3", "host-b", True, False, 3)
    assert theirs.list_servers() == [ServerRecord("radius2", "host-c", 1), ServerRecord("radius3", "host-b", 3)]


# -- schema versions -----------------------------------------------------------------------------
def test_both_backends_walk_the_same_schema_versions():
    assert pg_registry.SCHEMA_VERSION == sqlite_registry.SCHEMA_VERSION == 3
    assert [len(m) for m in pg_registry.MIGRATIONS] == [len(m) for m in sqlite_registry.MIGRATIONS]


def test_a_new_registry_is_at_the_current_version_and_reopening_changes_nothing(backend):
    backend.open().close()
    assert backend.version() == backend.module.SCHEMA_VERSION
    cols = backend.columns("device")
    backend.open().close()
    assert backend.version() == backend.module.SCHEMA_VERSION and backend.columns("device") == cols


def test_a_version_0_registry_is_migrated_in_place(backend):
    backend.make_v0()
    key, drt, skew = backend.blob(b"\x02"), backend.blob(b"drt"), backend.blob(b"60")
    backend.script(
        "INSERT INTO device (device_id, public_key, state, enrolled_by, created, updated, generation, "
        f"registered_at, sealed_drt) VALUES ('SN-OLD', {key}, 'registered', 'key', 5, 10, 1, 10, {drt});"
        f"INSERT INTO device (device_id, public_key, state, enrolled_by, created, updated) VALUES "
        f"('SN-E', {key}, 'enrolled', 'key', 5, 5);"
        f"INSERT INTO meta (key, value) VALUES ('policy.clock_skew', {skew});"
        "INSERT INTO audit (time, event, device_id) VALUES (5, 'enrolled', 'SN-OLD')")
    with pytest.raises(RegistryError, match=rf"registry schema version 0 is older than this Tessera's "
                                            rf"\({backend.module.SCHEMA_VERSION}\); migrate it: "
                                            rf"tessera-admin migrate --registry"):
        backend.open()  # a server's open: refused, nothing changed
    assert backend.version() == 0
    reg = backend.open(migrate=True)  # tessera-admin migrate's
    assert backend.version() == backend.module.SCHEMA_VERSION and reg.schema_found == 0
    old = reg.get_device("SN-OLD")
    assert (old.state, old.generation, old.sealed_drt) == (DeviceState.REGISTERED, 1, b"drt")
    assert (old.register_request_time, old.register_request_nonces) == (10 + 60, None)  # the realm's skew
    assert reg.get_device("SN-E").register_request_time is None
    assert [(e.event, e.count) for e in reg.audit()] == [("enrolled", 1)]
    assert registered(reg, "SN-OLD", 1, 70, b"\x01" * 16) is Registered.REPLAYED  # the whole second taken
    assert registered(reg, "SN-OLD", 1, 71, b"\x01" * 16) is Registered.RECORDED
    assert reg.claim_server("radius1", "host-a", 6, AuditEvent(6, "server-added")) == \
        ServerRecord("radius1", "host-a", 6)
    assert "device_revoked" in backend.indexes()


def test_servers_opening_an_old_registry_at_once_migrate_it_once(backend):
    backend.make_v0()
    results = []

    def run():
        try:
            backend.open(migrate=True)
            results.append("ok")
        except Exception as exc:  # noqa: BLE001 -- reported below
            results.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == ["ok"] * 6
    assert backend.version() == backend.module.SCHEMA_VERSION
    assert [c[0] for c in backend.columns("device")].count("register_request_time") == 1


def test_an_opener_that_read_the_old_version_before_the_lock_finds_the_migration_done(backend, monkeypatch):
    backend.make_v0()
    backend.open(migrate=True).close()  # A
    real = backend.cls._version
    reads = []

    def stale_first(self):
        reads.append(1)
        return 0 if len(reads) == 1 else real(self)

    monkeypatch.setattr(backend.cls, "_version", stale_first)
    b = backend.open(migrate=True)  # B: no "duplicate column" / "already exists"
    assert len(reads) == 2 and b.list_devices() == []
    assert backend.version() == backend.module.SCHEMA_VERSION


def test_a_registry_newer_than_the_code_is_refused_untouched(backend):
    reg = backend.open()
    reg.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    reg.close()
    current = backend.module.SCHEMA_VERSION
    backend.set_version(current + 1)
    with pytest.raises(RegistryError, match=f"registry schema version {current + 1} is newer than this "
                                            f"Tessera's \\({current}\\); upgrade Tessera"):
        backend.open()
    assert backend.version() == current + 1
    backend.set_version(current)
    assert backend.open().get_device("SN-1").state is DeviceState.ENROLLED  # control


# -- URLs ----------------------------------------------------------------------------------------
def test_open_registry_by_url(backend, tmp_path):
    reg = open_registry(backend.url)
    reg.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    assert isinstance(reg, backend.cls) and backend.open().get_device("SN-1") is not None
    reg.close()


def test_sqlite_urls_and_bare_paths(tmp_path):
    path = tmp_path / "r.db"
    open_registry(f"sqlite://{path}").close()
    assert path.exists()
    open_registry(str(tmp_path / "bare.db")).close()
    assert (tmp_path / "bare.db").exists()
    for bad, why in (("sqlite:r.db", "absolute path"), ("sqlite://r.db", "absolute path"),
                     ("mysql://u@h/db", "unknown registry URL scheme"),
                     (f"{tmp_path}/no/such/dir/r.db", "no directory")):
        with pytest.raises(RegistryError, match=why):
            open_registry(bad)


def test_a_password_in_the_url_is_refused_and_never_shown():
    for url in ("postgresql://tessera:s3cret-pw@db.example/tessera",
                "postgres://tessera@db.example/tessera?password=s3cret-pw&sslmode=require"):
        with pytest.raises(RegistryError) as exc:
            open_registry(url)
        assert "s3cret-pw" not in str(exc.value) and "carries a password" in str(exc.value)
        assert "s3cret-pw" not in display_url(url) and "***" in display_url(url)
    assert display_url("postgresql://tessera@db.example/tessera") == "postgresql://tessera@db.example/tessera"


# -- PostgreSQL connections ------------------------------------------------------------------------
@pytest.fixture
def pg(pg_cluster):
    return PostgresBackend(pg_cluster, f"conn_{next(_dbs)}")


def test_the_password_comes_from_a_passfile_and_never_shows(pg, tmp_path, monkeypatch):
    c = pg.cluster
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{c.port}:{pg.dbname}:{c.role}:{PASSWORD.replace(':', chr(92) + ':')}\n")
    os.chmod(passfile, 0o600)
    url = f"postgresql://{c.role}@127.0.0.1:{c.port}/{pg.dbname}"
    reg = open_registry(f"{url}?passfile={passfile}")  # over TCP, scram-sha-256
    reg.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    assert pg.open().get_device("SN-1") is not None
    reg.close()
    monkeypatch.setenv("PGPASSFILE", str(passfile))  # libpq's environment variable works the same
    open_registry(url).close()
    wrong = tmp_path / "wrong"
    wrong.write_text(f"*:*:*:*:not-{PASSWORD}\n")
    os.chmod(wrong, 0o600)
    with pytest.raises(E.RegistryUnavailableError) as exc:
        open_registry(f"{url}?passfile={wrong}")
    assert "password authentication failed" in str(exc.value) and PASSWORD not in str(exc.value)
    assert exc.value.__cause__ is None and exc.value.__suppress_context__
    assert str(exc.value).startswith(f"postgresql {c.role}@127.0.0.1:{c.port}/{pg.dbname}: ")
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    with pytest.raises(E.RegistryUnavailableError, match="no password supplied"):
        open_registry(url)


def test_a_conninfo_password_never_shows_in_the_error(pg):
    c = pg.cluster
    with pytest.raises(E.RegistryUnavailableError) as exc:
        pg_registry.PostgresRegistry(f"host=127.0.0.1 port={c.port} dbname={pg.dbname} user=nobody-here "
                                     f"password='{PASSWORD}'")
    assert PASSWORD not in str(exc.value) and "nobody-here" in str(exc.value)
    assert "***" in pg_registry.scrub(f"password='{PASSWORD}' x", f"password='{PASSWORD}'")


def test_a_refused_connection_is_registry_unavailable_at_once(pg):
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        start = time.monotonic()
        with pytest.raises(E.RegistryUnavailableError, match=f"127.0.0.1:{port}/x: .*(refused|failed)") as exc:
            pg_registry.PostgresRegistry(f"host=127.0.0.1 port={port} dbname=x user=tessera")
        assert time.monotonic() - start < 1.0
    assert exc.value.code == 23 and exc.value.name == "registry-unavailable"
    assert E.BY_CODE[23] is E.RegistryUnavailableError


def test_a_lost_connection_is_registry_unavailable_then_reconnects(pg):
    reg = pg.open()
    reg.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    pg.cluster.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{pg.dbname}' "
                    f"AND pid <> pg_backend_pid()")
    with pytest.raises(E.RegistryUnavailableError) as exc:
        reg.get_device("SN-1")
    assert str(exc.value).startswith(f"postgresql {pg.cluster.role}@{pg.cluster.socket_dir}:")
    assert reg.get_device("SN-1").state is DeviceState.ENROLLED  # the next call connects afresh
    reg.set_state("SN-1", DeviceState.REVOKED, 2, AuditEvent(2, "revoked", "SN-1"))
    assert [e.event for e in reg.audit()] == ["enrolled", "revoked"]


def test_connections_get_the_partition_bounding_options(pg):
    reg = pg.open()
    with reg._using() as db:
        params = db.info.get_parameters()
        assert db.info.dsn  # the options libpq was given
        dsn = dict(p.split("=", 1) for p in db.info.dsn.split())
        timeout = db.execute("SHOW statement_timeout").fetchone()[0]
    assert (dsn["tcp_user_timeout"], dsn["connect_timeout"], dsn["keepalives"]) == ("3000", "3", "1")
    assert timeout == "5s" and params.get("application_name") == "tessera"
    given = pg_registry.PostgresRegistry(pg.conninfo + " connect_timeout=7")  # the conninfo's own wins
    with given._using() as db:
        assert "connect_timeout=7" in db.info.dsn
    given.close()


def test_the_gate_names_postgresql_when_it_is_missing(monkeypatch, tmp_path):
    import tests.gate as gate
    monkeypatch.setattr(gate, "POSTGRES_BIN", tmp_path)
    assert "Debian package postgresql (15) is not installed" in missing("postgresql")
