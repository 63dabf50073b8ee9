"""Service.record_location in memory: where a switch admitted a device, unless it is revoked.

A revocation writes the device's state and then reads its location (tessera-admin revoke sends
the Disconnect-Request there); record_location checks the state, writes the location, and checks
again. Of a revocation and an admission that cross, one therefore sees the other's write; these
tests pin each order, beside the plain case that records.
"""

import pytest

from tessera.errors import MalformedError, RevokedError, UnknownDeviceError

from tests.unit.conftest import T0, make_device

WHERE = ("switch-3", "192.0.2.3", "p7", "02-00-5E-10-00-07")


def location(realm, device_id):
    rec = realm.registry.get_device(device_id)
    return rec.nas_identifier, rec.nas_address, rec.nas_port_id, rec.calling_station


def test_record_location_records_where_the_switch_admitted_the_device(realm, service):
    make_device(realm, "SN-1")
    service.record_location("SN-1", *WHERE, T0)
    assert location(realm, "SN-1") == WHERE


def test_record_location_refuses_a_revoked_device_and_records_nothing(realm, service):
    make_device(realm, "SN-1")
    service.record_location("SN-1", *WHERE, T0)
    realm.revoke("SN-1", T0 + 1, "stolen")
    with pytest.raises(RevokedError):
        service.record_location("SN-1", "switch-9", "192.0.2.9", "p9", "02-00-5E-10-00-09", T0 + 2)
    assert location(realm, "SN-1") == WHERE  # where the revocation found it


def test_record_location_sees_a_revocation_that_lands_during_the_write(realm, service, monkeypatch):
    make_device(realm, "SN-1")
    write = service.registry.record_location

    def write_then_revoked(*args):
        done = write(*args)
        realm.revoke("SN-1", T0 + 1, "revoked while the location was written")
        return done

    monkeypatch.setattr(service.registry, "record_location", write_then_revoked)
    with pytest.raises(RevokedError):
        service.record_location("SN-1", *WHERE, T0)
    monkeypatch.undo()
    make_device(realm, "SN-2")  # the same call for a device nobody revokes records
    service.record_location("SN-2", *WHERE, T0)
    assert location(realm, "SN-2") == WHERE


@pytest.mark.parametrize("device_id,error", [("SN-404", UnknownDeviceError), ("", MalformedError),
                                             ("a b", MalformedError)])
def test_record_location_unknown_or_malformed_device(realm, service, device_id, error):
    with pytest.raises(error):
        service.record_location(device_id, *WHERE, T0)
