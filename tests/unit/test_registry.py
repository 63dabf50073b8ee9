"""The SQLite registry: atomic writes with their audit line, compare-and-set, 0600 file."""

import os
import stat

import pytest

from tessera.registry import (MAX_NONCES_PER_SECOND, AuditEvent, DeviceRecord, DeviceState, Registered,
                              RegistryError, ServerIdError, ServerRecord, StaleRequestError, check_freshness,
                              check_server_id, claim_server_id)
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


def test_duplicate_enrolment_is_refused_without_an_audit_line():
    reg = SQLiteRegistry(":memory:")
    reg.add_device(rec(serial="ab"), AuditEvent(1, "enrolled", "SN-1"))
    with pytest.raises(RegistryError):
        reg.add_device(rec(), AuditEvent(2, "enrolled", "SN-1"))
    with pytest.raises(RegistryError):  # same certificate under another id
        reg.add_device(rec("SN-2", serial="AB"), AuditEvent(2, "enrolled", "SN-2"))
    assert len(reg.audit()) == 1
    assert reg.find_by_certificate("/CN=ca", "AB").device_id == "SN-1"


def test_registration_compare_and_set():
    reg = SQLiteRegistry(":memory:")
    reg.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    n = b"\x01" * 16
    assert reg.record_registration("SN-1", 0, 1, 100, b"drt", 5, AuditEvent(5, "registered", "SN-1"),
                                   request_time=5, request_nonce=n) is Registered.RECORDED
    assert reg.record_registration("SN-1", 0, 1, 100, b"drt2", 6, AuditEvent(6, "registered", "SN-1"),
                                   request_time=6, request_nonce=n) is Registered.CHANGED
    r = reg.get_device("SN-1")
    assert (r.generation, r.sealed_drt, r.state) == (1, b"drt", DeviceState.REGISTERED)
    assert [e.event for e in reg.audit()] == ["enrolled", "registered"]
    reg.set_state("SN-1", DeviceState.REVOKED, 7, AuditEvent(7, "revoked", "SN-1"))
    assert reg.get_device("SN-1").sealed_drt is None
    assert reg.record_registration("SN-1", 1, 2, 100, b"drt3", 8, AuditEvent(8, "registered", "SN-1"),
                                   request_time=8, request_nonce=n) is Registered.CHANGED
    with pytest.raises(RegistryError):
        reg.set_state("SN-9", DeviceState.REVOKED, 7, AuditEvent(7, "revoked", "SN-9"))
    assert [e.event for e in reg.audit()] == ["enrolled", "registered", "revoked"]
    # control: the same 1 → 2 step for a device that is not revoked goes through
    reg.add_device(rec("SN-2"), AuditEvent(9, "enrolled", "SN-2"))
    assert reg.record_registration("SN-2", 0, 1, 100, b"d1", 9, AuditEvent(9, "registered", "SN-2"),
                                   request_time=9, request_nonce=n) is Registered.RECORDED
    assert reg.record_registration("SN-2", 1, 2, 100, b"d2", 10, AuditEvent(10, "registered", "SN-2"),
                                   request_time=10, request_nonce=n) is Registered.RECORDED
    assert reg.get_device("SN-2").generation == 2 and reg.get_device("SN-1").generation == 1


def test_a_failed_write_leaves_nothing_half_written():
    reg = SQLiteRegistry(":memory:")
    reg.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    with pytest.raises(Exception):
        reg.store_service_keys([(1, b"a", 1, None), (1, b"b", 1, None)], AuditEvent(2, "key-rotated"))
    assert reg.load_service_keys() == [] and len(reg.audit()) == 1
    # control: the same write without the duplicate version lands whole, with its audit line
    reg.store_service_keys([(1, b"a", 1, None), (2, b"b", 1, None)], AuditEvent(2, "key-rotated"))
    assert reg.load_service_keys() == [(1, b"a", 1, None), (2, b"b", 1, None)] and len(reg.audit()) == 2


# -- registration freshness in the compare-and-set (issue 8, item 1) ------------------------------
def registered(reg, device_id, expect, time, nonce, now=None):
    now = time if now is None else now
    return reg.record_registration(device_id, expect, expect + 1, now + 100, b"drt-%d" % time, now,
                                   AuditEvent(now, "registered", device_id), request_time=time, request_nonce=nonce)


def test_registration_freshness_in_the_compare_and_set_refuses_older_or_seen_and_writes_nothing():
    reg = SQLiteRegistry(":memory:")
    reg.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    a, b, c = b"\x0a" * 16, b"\x0b" * 16, b"\x0c" * 16
    assert registered(reg, "SN-1", 0, 100, a) is Registered.RECORDED
    row = reg.get_device("SN-1")
    assert (row.generation, row.register_request_time, row.register_request_nonces) == (1, 100, a)
    audit = reg.audit()
    for time, nonce in ((100, a), (99, b), (0, c)):  # the same request; older ones, whatever the nonce
        assert registered(reg, "SN-1", 1, time, nonce, now=150) is Registered.REPLAYED, (time, nonce)
        assert reg.get_device("SN-1") == row and reg.audit() == audit  # nothing written, no audit line
    # a stale generation with a seen request is still a replay: retrying that request cannot succeed
    assert registered(reg, "SN-1", 0, 100, a, now=150) is Registered.REPLAYED
    # a fresh request with a stale generation lost to another registration: CHANGED, nothing written
    assert registered(reg, "SN-1", 0, 100, b) is Registered.CHANGED and reg.get_device("SN-1") == row
    # control: the same second with another nonce, the current generation: recorded, both kept
    assert registered(reg, "SN-1", 1, 100, b) is Registered.RECORDED
    row = reg.get_device("SN-1")
    assert (row.generation, row.register_request_time, row.register_request_nonces, row.sealed_drt) == \
        (2, 100, a + b, b"drt-100")
    assert registered(reg, "SN-1", 2, 100, a, now=160) is Registered.REPLAYED  # the first, after the second
    assert registered(reg, "SN-1", 2, 101, a) is Registered.RECORDED  # a later second starts afresh
    assert reg.get_device("SN-1").register_request_nonces == a
    assert registered(reg, "SN-1", 3, 100, c, now=170) is Registered.REPLAYED
    assert [e.event for e in reg.audit()] == ["enrolled", "registered", "registered", "registered"]


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


def test_registration_freshness_is_kept_in_the_file_across_reopen(tmp_path):
    """A restarted server opens the registry afresh: the bar is in the row, not in memory."""
    path = str(tmp_path / "r.db")
    reg = SQLiteRegistry(path)
    reg.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    assert registered(reg, "SN-1", 0, 100, b"\x01" * 16) is Registered.RECORDED
    reg.close()
    again = SQLiteRegistry(path)
    assert registered(again, "SN-1", 1, 100, b"\x01" * 16, now=120) is Registered.REPLAYED
    assert registered(again, "SN-1", 1, 100, b"\x02" * 16) is Registered.RECORDED  # control


def test_registration_of_a_revoked_device_with_a_newer_time_is_changed_not_recorded():
    reg = SQLiteRegistry(":memory:")
    reg.add_device(rec(), AuditEvent(1, "enrolled", "SN-1"))
    reg.set_state("SN-1", DeviceState.REVOKED, 2, AuditEvent(2, "revoked", "SN-1"))
    assert registered(reg, "SN-1", 0, 100, b"\x01" * 16) is Registered.CHANGED
    assert reg.get_device("SN-1").register_request_time is None


def test_audit_count_round_trips():
    reg = SQLiteRegistry(":memory:")
    reg.add_audit(AuditEvent(5, "register-rejected", "SN-1", "bad signature (x41 since the last row)", "radius-a", 41))
    reg.add_audit(AuditEvent(6, "key-rotated"))
    assert [(e.count, e.server_id) for e in reg.audit()] == [(41, "radius-a"), (1, "")]


# -- the realm's servers -----------------------------------------------------------------------
def test_claim_server_records_an_id_once_and_returns_its_holder():
    reg = SQLiteRegistry(":memory:")
    ev = AuditEvent(1, "server-added", None, "radius1")
    assert reg.claim_server("radius1", "host-a", 1, ev) == ServerRecord("radius1", "host-a", 1)
    assert reg.claim_server("radius1", "host-b", 2, ev) == ServerRecord("radius1", "host-a", 1)  # not taken over
    assert reg.claim_server("radius1", "host-a", 3, ev) == ServerRecord("radius1", "host-a", 1)  # re-install
    assert reg.claim_server("radius2", "host-b", 4, ev) == ServerRecord("radius2", "host-b", 4)
    assert reg.list_servers() == [ServerRecord("radius1", "host-a", 1), ServerRecord("radius2", "host-b", 4)]
    assert len(reg.audit()) == 2  # one line per id recorded, none for the refusals or the re-install


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


def test_claim_server_id_refuses_an_id_taken_between_check_and_claim():
    """Two installers at once: the check saw no holder, another host's claim landed before ours."""
    reg = SQLiteRegistry(":memory:")
    real_list = reg.list_servers
    reg.list_servers = _ServersAfterFirst(real_list)  # the check's read ran before the other claim
    reg.claim_server("radius2", "host-c", 1, AuditEvent(1, "server-added"))
    with pytest.raises(ServerIdError, match=r"was just taken by host 'host-c'; ids in use: radius2 \(host host-c\)"):
        claim_server_id(reg, "radius2", "host-b", True, False, 2)
    assert claim_server_id(reg, "radius3", "host-b", True, False, 3)  # control: a free id goes through
    assert real_list() == [ServerRecord("radius2", "host-c", 1), ServerRecord("radius3", "host-b", 3)]


class _ServersAfterFirst:
    """list_servers that answers [] the first time (the check ran before the other claim)."""

    def __init__(self, real):
        self.real, self.calls = real, 0

    def __call__(self):
        self.calls += 1
        return [] if self.calls == 1 else self.real()
