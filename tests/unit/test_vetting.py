"""The RadSec certificate check (tessera.vetting) against the real service and registry in
memory: the certificate enrolled for a device passes, others are refused with their reason;
a yes is kept for ``ttl`` seconds, a no never; a revoked device's own certificate passes (the
service refuses its request, signed); the cache is bounded."""

from __future__ import annotations

import pytest

from tessera.errors import CertificateError, RevokedError, UnknownDeviceError
from tessera.identity import DeviceKey, certificate_serial_hex
from tessera.realm import issuer_string
from tessera.vetting import CertificateVetting

from tests.unit.conftest import T0


class Counting:
    """The service, counting how often the registry is asked."""

    def __init__(self, service):
        self.service, self.calls = service, 0

    def admit_certificate(self, serial_hex, issuer, common_name, now):
        self.calls += 1
        return self.service.admit_certificate(serial_hex, issuer, common_name, now)


def enrolled(realm, device_id):
    key = DeviceKey.generate()
    cert = realm.issue_certificate(device_id, key.public_bytes(), T0)
    realm.enrol_key(device_id, key.public_bytes(), T0, cert)
    return certificate_serial_hex(cert), issuer_string(cert)


def test_vetting_passes_the_enrolled_certificate_and_refuses_others(realm, service):
    serial, issuer = enrolled(realm, "SN-V1")
    key = DeviceKey.generate()
    twin = realm.issue_certificate("SN-V1", key.public_bytes(), T0)  # realm CA, same CN, not the enrolled one
    ghost = realm.issue_certificate("SN-GHOST", key.public_bytes(), T0)  # never enrolled
    vet = CertificateVetting(Counting(service))
    assert vet.device(serial, issuer, "SN-V1", T0) == "SN-V1"
    assert vet.device("0x" + serial.upper(), issuer, "SN-V1", T0) == "SN-V1"  # FreeRADIUS' spellings of a serial
    with pytest.raises(CertificateError):
        vet.device(certificate_serial_hex(twin), issuer, "SN-V1", T0)
    with pytest.raises(CertificateError):
        vet.device(serial, issuer, "SN-OTHER", T0)  # the enrolled certificate naming another device
    with pytest.raises(UnknownDeviceError):
        vet.device(certificate_serial_hex(ghost), issuer, "SN-GHOST", T0)


def test_vetting_keeps_a_yes_for_ttl_and_never_a_no(realm, service):
    serial, issuer = enrolled(realm, "SN-V2")
    svc = Counting(service)
    vet = CertificateVetting(svc, ttl=60)
    for t in (T0, T0 + 1, T0 + 59.9):
        assert vet.device(serial, issuer, "SN-V2", t) == "SN-V2"
    assert svc.calls == 1
    assert vet.device(serial, issuer, "SN-V2", T0 + 60) == "SN-V2" and svc.calls == 2  # expired: asked again
    assert vet.device(serial, issuer, "SN-V2", T0 - 5) == "SN-V2" and svc.calls == 3  # clock went back: asked again
    ghost_serial = "0abc"
    for _ in range(3):
        with pytest.raises(UnknownDeviceError):
            vet.device(ghost_serial, issuer, "SN-GHOST", T0)
    assert svc.calls == 6 and len(vet) == 1  # each refusal asked the registry; none kept


def test_vetting_lets_a_revoked_devices_own_certificate_through_uncached(realm, service):
    serial, issuer = enrolled(realm, "SN-V3")
    realm.revoke("SN-V3", T0, "test")
    with pytest.raises(RevokedError):
        service.admit_certificate(serial, issuer, "SN-V3", T0)  # what EAP-TLS admission says
    svc = Counting(service)
    vet = CertificateVetting(svc)
    assert vet.device(serial, issuer, "SN-V3", T0) == "SN-V3"  # the service refuses the request itself
    assert vet.device(serial, issuer, "SN-V3", T0) == "SN-V3" and svc.calls == 2 and len(vet) == 0


def test_vetting_cache_is_bounded_oldest_first(realm, service):
    certs = [(f"SN-B{i}", *enrolled(realm, f"SN-B{i}")) for i in range(5)]
    svc = Counting(service)
    vet = CertificateVetting(svc, max_entries=3)
    for device_id, serial, issuer in certs:
        vet.device(serial, issuer, device_id, T0)
    assert len(vet) == 3 and svc.calls == 5
    device_id, serial, issuer = certs[-1]
    vet.device(serial, issuer, device_id, T0)  # the newest is kept
    assert svc.calls == 5
    device_id, serial, issuer = certs[0]
    vet.device(serial, issuer, device_id, T0)  # the oldest went first
    assert svc.calls == 6 and len(vet) == 3
    with pytest.raises(ValueError):
        CertificateVetting(svc, max_entries=0)
