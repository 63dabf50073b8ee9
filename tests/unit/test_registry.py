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
