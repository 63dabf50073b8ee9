"""The SQLite registry's file and the registry's pure decisions (check_freshness, check_server_id).

The registry contract itself (atomic writes with their audit line, compare-and-set, freshness,
servers) is one suite run on SQLite and PostgreSQL: tests/server/test_registry_contract.py."""

import os
import stat

import pytest

from tessera.registry import (MAX_NONCES_PER_SECOND, AuditEvent, DeviceRecord, DeviceState, ServerIdError,
                              ServerRecord, StaleRequestError, check_freshness, check_server_id)
from tessera.sqlite_registry import SQLiteRegistry


def rec(device_id="SN-1", serial=None):
    return DeviceRecord(device_id, b"\x02" + b"\x01" * 32, DeviceState.ENROLLED, "key", 1, 1,
                        "/CN=ca" if serial else None, serial)


def test_file_is_private_and_survives_reopen(tmp_path):
    path = str(tmp_path / "r.db")
    reg = SQLiteRegistry(path)
    reg.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    reg.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = SQLiteRegistry(path)
    assert again.get_device("SN-1").state is DeviceState.ENROLLED
    assert [e.event for e in again.audit()] == ["enrolled"]


def test_sqlite_kept_rows_follow_other_connections_and_own_writes(tmp_path):
    """get_device serves a row from memory only until a commit elsewhere (tessera-admin's
    revocation: seen by the very next read) or a write on this connection."""
    path = str(tmp_path / "r.db")
    serving, admin = SQLiteRegistry(path), SQLiteRegistry(path)
    admin.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    admin.add_device(rec("SN-2"), AuditEvent(1, "enrolled", "SN-2"))
    assert serving.get_device("SN-1").state is DeviceState.ENROLLED  # read, and kept
    assert serving.get_device("SN-1").state is DeviceState.ENROLLED
    admin.set_state("SN-1", DeviceState.REVOKED, 2, AuditEvent(2, "revoked", "SN-1"))
    assert serving.get_device("SN-1").state is DeviceState.REVOKED
    assert serving.get_device("SN-2").state is DeviceState.ENROLLED  # the same reads, another device
    serving.record_registration("SN-2", 0, 1, 100, b"drt", 3, AuditEvent(3, "registered", "SN-2"),
                                request_time=3, request_nonce=b"\x01" * 16)
    got = serving.get_device("SN-2")
    assert (got.state, got.generation, got.sealed_drt) == (DeviceState.REGISTERED, 1, b"drt")
    serving.set_state("SN-2", DeviceState.REVOKED, 4, AuditEvent(4, "revoked", "SN-2"))
    assert serving.get_device("SN-2").state is DeviceState.REVOKED
    assert admin.get_device("SN-2").state is DeviceState.REVOKED


def test_sqlite_kept_rows_never_keep_a_row_read_before_a_revocation(tmp_path):
    """A read on one thread racing a revocation on another through the same registry: once
    set_state has returned, every later read says revoked (the row read before the commit must
    not be kept after the writer dropped it). GIL switches forced as often as possible; without
    the lock around check-read-store this kept the stale row in about a quarter of the trials."""
    import sys
    import threading

    reg = SQLiteRegistry(str(tmp_path / "r.db"))
    reg.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    stale = 0
    try:
        for t in range(150):
            reg.set_state("SN-1", DeviceState.ENROLLED, 2 + t, AuditEvent(2 + t, "restored", "SN-1"))
            done = threading.Event()

            def reader():
                while not done.is_set():
                    reg._forget("SN-1")  # a fresh SELECT every time, as after an eviction
                    reg.get_device("SN-1")

            th = threading.Thread(target=reader)
            th.start()
            reg.set_state("SN-1", DeviceState.REVOKED, 2 + t, AuditEvent(2 + t, "revoked", "SN-1"))
            done.set()
            th.join()
            stale += reg.get_device("SN-1").state is not DeviceState.REVOKED
    finally:
        sys.setswitchinterval(interval)
    assert stale == 0


def test_sqlite_revocation_commits_with_a_wal_sync(tmp_path):
    """Registrations commit with synchronous=NORMAL (no fsync until checkpoint); a revocation
    alone syncs the WAL (FULL), and the connection is back at NORMAL after it."""
    reg = SQLiteRegistry(str(tmp_path / "r.db"))
    reg.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    statements = []
    reg._db.set_trace_callback(statements.append)
    reg.record_registration("SN-1", 0, 1, 100, b"drt", 3, AuditEvent(3, "registered", "SN-1"),
                            request_time=3, request_nonce=b"\x01" * 16)
    assert not any("synchronous" in s for s in statements)
    statements.clear()
    reg.set_state("SN-1", DeviceState.REVOKED, 4, AuditEvent(4, "revoked", "SN-1"))
    assert statements[0] == "PRAGMA synchronous=FULL" and statements[-1] == "PRAGMA synchronous=NORMAL"
    assert statements.index("COMMIT") < len(statements) - 1
    reg._db.set_trace_callback(None)
    assert reg._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


@pytest.mark.parametrize("last_time, last_nonces, time, nonce, fresh", [
    (None, None, 5, b"\x01" * 16, b"\x01" * 16),  # never registered
    (5, b"\x01" * 16, 6, b"\x01" * 16, b"\x01" * 16),  # a later second: only its own nonce is kept
    (5, b"\x01" * 16, 5, b"\x02" * 16, b"\x01" * 16 + b"\x02" * 16),  # same second, new nonce
    (5, b"\x01" * 16, 5, b"\x01" * 16, "this registration request was already accepted"),
    (5, b"\x01" * 16 + b"\x02" * 16, 5, b"\x02" * 16, "this registration request was already accepted"),
    (5, b"\x01" * 16, 4, b"\x03" * 16, "registration request of 4 is older than the last accepted one (5)"),
    (5, None, 5, b"\x03" * 16, "registration requests of 5 may have been accepted already"),  # migrated row
    (5, None, 6, b"\x03" * 16, b"\x03" * 16),
    (5, b"".join(bytes([i]) * 16 for i in range(MAX_NONCES_PER_SECOND)), 5, b"\xff" * 16,
     f"more than {MAX_NONCES_PER_SECOND} registrations in second 5"),
    (5, b"".join(bytes([i]) * 16 for i in range(MAX_NONCES_PER_SECOND - 1)), 5, b"\xff" * 16,
     b"".join(bytes([i]) * 16 for i in range(MAX_NONCES_PER_SECOND - 1)) + b"\xff" * 16),
])
def test_check_freshness(last_time, last_nonces, time, nonce, fresh):
    if isinstance(fresh, bytes):
        assert check_freshness(last_time, last_nonces, time, nonce) == fresh
    else:
        with pytest.raises(StaleRequestError) as exc:
            check_freshness(last_time, last_nonces, time, nonce)
        assert str(exc.value) == fresh


def test_check_freshness_aligns_nonces():
    """A nonce that appears across two kept nonces' boundary was not accepted: fresh."""
    kept = b"\x01" * 8 + b"\x02" * 8 + b"\x02" * 8 + b"\x03" * 8
    assert check_freshness(5, kept, 5, b"\x02" * 16) == kept + b"\x02" * 16
    with pytest.raises(ValueError):
        check_freshness(5, kept, 6, b"\x02" * 15)


A1 = ServerRecord("radius1", "host-a", 1)


@pytest.mark.parametrize("servers, server_id, host, explicit, created, refused", [
    ([], "radius1", "host-a", False, True, None),  # the realm's first server: the default is fine
    ([], "radius1", "host-b", False, False, "this realm exists already (ids in use: none recorded)"),
    ([A1], "radius1", "host-b", False, False, "already taken in this realm by host 'host-a'"),
    ([A1], "radius1", "host-b", True, False, "already taken in this realm by host 'host-a'"),  # explicit or not
    ([A1], "radius1", "host-a", False, False, None),  # re-install of the server that holds it
    ([A1], "radius2", "host-b", True, False, None),  # a second server, named
    ([A1], "radius2", "host-b", False, False, "ids in use: radius1 (host host-a)"),
    ([], "", "host-a", True, True, "bad server id ''"),
    ([], "a b", "host-a", True, True, "bad server id 'a b'"),
    ([], "x" * 65, "host-a", True, True, "bad server id"),
])
def test_check_server_id_decides(servers, server_id, host, explicit, created, refused):
    if refused is None:
        assert check_server_id(servers, server_id, host, explicit, created)
    else:
        with pytest.raises(ServerIdError) as exc:
            check_server_id(servers, server_id, host, explicit, created)
        assert refused in str(exc.value)


def test_sqlite_servers_opening_one_old_file_together_all_open(tmp_path):
    """Six servers open one rollback-journal (v0) file at once, many times: turning it into WAL
    needs the file to itself and SQLite says "database is locked" at once instead of waiting
    (about 1 open in 60 failed so before); each open retries and every one succeeds."""
    import sqlite3
    import threading

    from tessera import sqlite_registry

    for n in range(150):
        path = str(tmp_path / f"r{n}.db")
        db = sqlite3.connect(path)
        db.executescript(sqlite_registry.SCHEMA)
        db.close()
        results = []

        def open_it():
            try:
                SQLiteRegistry(path, migrate=True).close()
                results.append("ok")
            except sqlite3.OperationalError as exc:
                results.append(str(exc))

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == ["ok"] * 6, n
