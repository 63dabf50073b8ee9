"""The SQLite registry: atomic writes with their audit line, compare-and-set, 0600 file."""

import os
import stat

import pytest

from tessera.registry import AuditEvent, DeviceRecord, DeviceState, RegistryError
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
    assert reg.record_registration("SN-1", 0, 1, 100, b"drt", 5, AuditEvent(5, "registered", "SN-1"))
    assert not reg.record_registration("SN-1", 0, 1, 100, b"drt2", 6, AuditEvent(6, "registered", "SN-1"))
    r = reg.get_device("SN-1")
    assert (r.generation, r.sealed_drt, r.state) == (1, b"drt", DeviceState.REGISTERED)
    assert [e.event for e in reg.audit()] == ["enrolled", "registered"]
    reg.set_state("SN-1", DeviceState.REVOKED, 7, AuditEvent(7, "revoked", "SN-1"))
    assert reg.get_device("SN-1").sealed_drt is None
    assert not reg.record_registration("SN-1", 1, 2, 100, b"drt3", 8, AuditEvent(8, "registered", "SN-1"))
    with pytest.raises(RegistryError):
        reg.set_state("SN-9", DeviceState.REVOKED, 7, AuditEvent(7, "revoked", "SN-9"))
    assert [e.event for e in reg.audit()] == ["enrolled", "registered", "revoked"]
    # control: the same 1 → 2 step for a device that is not revoked goes through
    reg.add_device(rec("SN-2"), AuditEvent(9, "enrolled", "SN-2"))
    assert reg.record_registration("SN-2", 0, 1, 100, b"d1", 9, AuditEvent(9, "registered", "SN-2"))
    assert reg.record_registration("SN-2", 1, 2, 100, b"d2", 9, AuditEvent(9, "registered", "SN-2"))
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
