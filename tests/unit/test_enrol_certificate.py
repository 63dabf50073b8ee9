"""Enrolment by certificate takes only what admission can admit: an end-entity certificate for
client authentication, valid now, from a trusted CA valid now, naming the device in its CN --
the field admission compares. Each refusal names its reason and enrols nothing, beside the good
certificate enrolling (and then being admitted) in the same realm."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tessera import errors as E
from tessera.identity import CertificateAuthority, certificate_serial_hex, check_device_certificate, pem_certificate
from tessera.realm import issuer_string

from .conftest import T0

DAY = dt.timedelta(days=1)
NOW = dt.datetime.fromtimestamp(T0, dt.timezone.utc)


def name(cn: str | None = "SN-GOOD", serial: str | None = None, extra=()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.SERIAL_NUMBER, serial)] if serial is not None else []
    attrs += [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn is not None else []
    return x509.Name(attrs + list(extra))


def make_ca(cn: str, not_before=NOW - DAY, not_after=NOW + 3650 * DAY, ca=True, extra_name=()) -> CertificateAuthority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Maker"), *extra_name,
                         x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
            .sign(key, hashes.SHA256()))
    return CertificateAuthority(cert, key)


def leaf(issuer: CertificateAuthority, subject: x509.Name | None = None, *, key=None, not_before=NOW - DAY,
         not_after=NOW + 365 * DAY, bc="end-entity", ku="default", eku=(ExtendedKeyUsageOID.CLIENT_AUTH,),
         version1=False) -> x509.Certificate:
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = (x509.CertificateBuilder().subject_name(subject or name()).issuer_name(issuer.certificate.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(not_before).not_valid_after(not_after))
    if version1:  # no extensions at all, then rewritten as v1
        return _as_version1(b.sign(issuer.private_key, hashes.SHA256()), issuer)
    if bc == "end-entity":
        b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    elif bc == "ca":
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    if ku == "default":
        ku = x509.KeyUsage(True, False, True, False, True, False, False, False, False)
    if ku is not None:
        b = b.add_extension(ku, critical=True)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return b.sign(issuer.private_key, hashes.SHA256())


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = bytes([n]) if n < 128 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + body


def _der_items(data: bytes) -> list[bytes]:
    """The encoded elements of a DER SEQUENCE's body."""
    out, i = [], 0
    while i < len(data):
        n, j = data[i + 1], i + 2
        if n & 0x80:
            k = n & 0x7F
            n, j = int.from_bytes(data[j:j + k], "big"), j + k
        out.append(data[i:j + n])
        i = j + n
    return out


def _as_version1(cert: x509.Certificate, issuer: CertificateAuthority) -> x509.Certificate:
    """The same certificate as X.509 v1 (cryptography's builder always writes v3): the TBS without
    its version field (RFC 5280 4.1: absent means v1), signed again by the issuer."""
    from cryptography.hazmat.primitives.serialization import Encoding

    tbs_items = _der_items(_body(cert.tbs_certificate_bytes))
    assert tbs_items[0][0] == 0xA0 and len(tbs_items) == 7  # [0] version, then no extensions
    tbs = _der(0x30, b"".join(tbs_items[1:]))
    signature = issuer.private_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    outer = _der_items(_body(cert.public_bytes(Encoding.DER)))
    der = _der(0x30, tbs + outer[1] + _der(0x03, b"\x00" + signature))
    v1 = x509.load_der_x509_certificate(der)
    assert v1.version is x509.Version.v1
    v1.verify_directly_issued_by(issuer.certificate)  # a sound v1 certificate, refused for being v1
    return v1


def _body(der: bytes) -> bytes:
    n, j = der[1], 2
    if n & 0x80:
        k = n & 0x7F
        n, j = int.from_bytes(der[2:2 + k], "big"), 2 + k
    return der[j:j + n]


@pytest.fixture
def maker(realm):
    ca = make_ca("Maker DevID CA")
    realm.trust_ca(pem_certificate(ca.certificate), T0)
    return ca


def refused(realm, cert, reason: str, device_id: str | None = None) -> None:
    with pytest.raises(E.CertificateError, match=reason) as exc:
        realm.enrol_certificate(pem_certificate(cert), T0)
    assert exc.value.name == "bad-certificate"
    if device_id:
        assert realm.registry.get_device(device_id) is None  # nothing enrolled


def test_enrol_certificate_good_one_enrols_and_is_admitted(realm, service, maker):
    cert = leaf(maker)
    rec = realm.enrol_certificate(pem_certificate(cert), T0)
    assert (rec.device_id, rec.enrolled_by, rec.cert_serial) == ("SN-GOOD", "certificate", certificate_serial_hex(cert))
    # admission compares what FreeRADIUS reports: serial, issuer one-line, CN
    assert service.admit_certificate(certificate_serial_hex(cert), issuer_string(cert), "SN-GOOD", T0) == "SN-GOOD"
    # also without any EKU, and with serialNumber equal to the CN (the 802.1AR way, and the realm's own)
    for cert in (leaf(maker, name("SN-NOEKU"), eku=()),
                 leaf(maker, name("SN-BOTH", serial="SN-BOTH")),
                 leaf(maker, name("SN-MORE"), eku=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)),
                 leaf(maker, name("SN-NOBC"), bc=None)):
        dev = realm.enrol_certificate(pem_certificate(cert), T0).device_id
        assert service.admit_certificate(certificate_serial_hex(cert), issuer_string(cert), dev, T0) == dev


@pytest.mark.parametrize("case,reason", [
    ("ca certificate", r"a CA certificate \(BasicConstraints CA=true\) is not a device certificate"),
    ("keyCertSign", r"may sign certificates \(keyUsage keyCertSign/cRLSign\)"),
    ("no digitalSignature", r"keyUsage lacks digitalSignature"),
    ("serverAuth only", r"extended key usage \(serverAuth\) lacks clientAuth"),
    ("codeSigning only", r"extended key usage \(codeSigning\) lacks clientAuth"),
    ("expired", r"certificate is outside its validity period: expired at"),
    ("not yet valid", r"certificate is outside its validity period: not valid before"),
    ("P-384 key", r"must carry an EC P-256 key"),
    ("RSA key", r"must carry an EC P-256 key"),
    ("v1", r"X\.509 v1 certificate"),
])
def test_enrol_certificate_refuses_what_is_not_a_device_certificate(realm, maker, case, reason):
    c = {
        "ca certificate": lambda: leaf(maker, bc="ca"),
        "keyCertSign": lambda: leaf(maker, bc=None, ku=x509.KeyUsage(True, False, False, False, False, True, False, False, False)),
        "no digitalSignature": lambda: leaf(maker, ku=x509.KeyUsage(False, False, True, False, True, False, False, False, False)),
        "serverAuth only": lambda: leaf(maker, eku=(ExtendedKeyUsageOID.SERVER_AUTH,)),
        "codeSigning only": lambda: leaf(maker, eku=(ExtendedKeyUsageOID.CODE_SIGNING,)),
        "expired": lambda: leaf(maker, not_before=NOW - 400 * DAY, not_after=NOW - 30 * DAY),
        "not yet valid": lambda: leaf(maker, not_before=NOW + DAY, not_after=NOW + 400 * DAY),
        "P-384 key": lambda: leaf(maker, key=ec.generate_private_key(ec.SECP384R1())),
        "RSA key": lambda: leaf(maker, key=rsa.generate_private_key(65537, 2048)),
        "v1": lambda: leaf(maker, version1=True),
    }[case]()
    refused(realm, c, reason, "SN-GOOD")
    # the same realm and CA enrol the good certificate
    assert realm.enrol_certificate(pem_certificate(leaf(maker)), T0).device_id == "SN-GOOD"


@pytest.mark.parametrize("case,reason", [
    ("issuer expired long ago", r"the issuing CA CN=Old DevID CA,O=Maker is outside its validity period: expired at 2018"),
    ("issuer not yet valid", r"the issuing CA CN=Future DevID CA,O=Maker is outside its validity period: not valid before"),
    ("untrusted issuer", r"certificate is not issued by a trusted device CA"),
    ("forged issuer", r"certificate is not issued by a trusted device CA"),
])
def test_enrol_certificate_refuses_an_issuer_not_valid_and_trusted_now(realm, maker, case, reason):
    if case == "issuer expired long ago":
        ca = make_ca("Old DevID CA", NOW - 3650 * DAY, NOW - 3300 * DAY)
        realm.trust_ca(pem_certificate(ca.certificate), T0)
    elif case == "issuer not yet valid":
        ca = make_ca("Future DevID CA", NOW + DAY, NOW + 3650 * DAY)
        realm.trust_ca(pem_certificate(ca.certificate), T0)
    elif case == "untrusted issuer":
        ca = make_ca("Stranger CA")
    else:  # the trusted CA's name over another key
        ca = make_ca("Maker DevID CA")
    # the device certificate itself is valid now
    refused(realm, leaf(ca, not_before=NOW - DAY, not_after=NOW + DAY), reason, "SN-GOOD")
    assert realm.enrol_certificate(pem_certificate(leaf(maker)), T0).device_id == "SN-GOOD"


def test_enrol_certificate_issuer_must_be_a_ca_and_a_renewed_ca_still_issues():
    """check_device_certificate on its own trust list: a trusted non-CA is no issuer; of two CAs
    with one name and key, the expired one does not hide the renewed one."""
    old = make_ca("Maker DevID CA", NOW - 3650 * DAY, NOW - DAY)
    renewed_cert = (x509.CertificateBuilder().subject_name(old.certificate.subject).issuer_name(old.certificate.subject)
                    .public_key(old.private_key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(NOW - DAY).not_valid_after(NOW + 3650 * DAY)
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .sign(old.private_key, hashes.SHA256()))
    cert = leaf(old)
    with pytest.raises(E.CertificateError, match="expired"):
        check_device_certificate(cert, [old.certificate], T0)
    assert check_device_certificate(cert, [old.certificate, renewed_cert], T0) == "SN-GOOD"
    not_ca = make_ca("Maker DevID CA", ca=False)
    with pytest.raises(E.CertificateError, match="is not a CA certificate"):
        check_device_certificate(leaf(not_ca), [not_ca.certificate], T0)


@pytest.mark.parametrize("subject,reason", [
    (name(cn="router-17", serial="SN-17"), r"serialNumber 'SN-17' differs from the CN 'router-17'"),
    (name(cn=None, serial="SN-17"), r"exactly one CN, the device id \(it holds 0\)"),
    (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SN-1"), x509.NameAttribute(NameOID.COMMON_NAME, "SN-2")]),
     r"exactly one CN, the device id \(it holds 2\)"),
    (name(cn="Acme Switch 9000"), r"the subject CN 'Acme Switch 9000' is not a device id"),
])
def test_enrol_certificate_names_the_device_in_the_field_admission_reads(realm, service, maker, subject, reason):
    """A certificate whose device id sits in serialNumber (CN something else) used to enrol as
    the serialNumber and then never be admitted (admission compares the CN): now refused."""
    refused(realm, leaf(maker, subject), reason)
    assert realm.registry.list_devices() == []
    good = leaf(maker, name("SN-17", serial="SN-17"))
    assert realm.enrol_certificate(pem_certificate(good), T0).device_id == "SN-17"
    assert service.admit_certificate(certificate_serial_hex(good), issuer_string(good), "SN-17", T0) == "SN-17"
    # admission refuses the certificate under any other CN, as FreeRADIUS would report it
    with pytest.raises(E.CertificateError, match="certificate names 'router-17', enrolled for 'SN-17'"):
        service.admit_certificate(certificate_serial_hex(good), issuer_string(good), "router-17", T0)


def test_enrol_certificate_refuses_an_issuer_name_admission_cannot_match(realm, service):
    """The registry keeps the issuer as FreeRADIUS reports it (OpenSSL's one-line form); a name
    with parts the realm renders differently (stateOrProvinceName: ST) would never match."""
    ca = make_ca("Maker ST CA", extra_name=(x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),))
    realm.trust_ca(pem_certificate(ca.certificate), T0)
    refused(realm, leaf(ca), r"has parts the realm cannot match to what FreeRADIUS reports", "SN-GOOD")
    plain = make_ca("Maker Plain CA")
    realm.trust_ca(pem_certificate(plain.certificate), T0)
    assert realm.enrol_certificate(pem_certificate(leaf(plain)), T0).device_id == "SN-GOOD"


def _with_extension_twice(cert: x509.Certificate, issuer: CertificateAuthority) -> bytes:
    """`cert` with its first extension repeated (RFC 5280 4.2 forbids it; the builder refuses),
    signed again by the issuer: PEM."""
    import base64

    from cryptography.hazmat.primitives.serialization import Encoding

    items = _der_items(_body(cert.tbs_certificate_bytes))
    assert items[-1][0] == 0xA3  # [3] extensions
    exts = _der_items(_body(_body(items[-1])))
    tbs = _der(0x30, b"".join(items[:-1]) + _der(0xA3, _der(0x30, b"".join([exts[0], *exts]))))
    outer = _der_items(_body(cert.public_bytes(Encoding.DER)))
    der = _der(0x30, tbs + outer[1] + _der(0x03, b"\x00" + issuer.private_key.sign(tbs, ec.ECDSA(hashes.SHA256()))))
    return b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"


def test_enrol_certificate_refuses_extensions_that_do_not_parse(realm, maker):
    pem = _with_extension_twice(leaf(maker), maker)
    with pytest.raises(E.CertificateError, match=r"the certificate's extensions do not parse \(Duplicate"):
        realm.enrol_certificate(pem, T0)
    assert realm.registry.get_device("SN-GOOD") is None
    assert realm.enrol_certificate(pem_certificate(leaf(maker)), T0).device_id == "SN-GOOD"


def test_trust_ca_refuses_a_second_ca_with_a_trusted_name_and_another_key(realm):
    """Admission finds a device by (issuer string, serial): a CA named like the realm CA (or a
    trusted maker) but with its own key could issue a working copy of any device's certificate."""
    from tessera.errors import CertificateError
    from tessera.identity import CertificateAuthority, pem_certificate

    realm_name = realm.ca.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    forger = CertificateAuthority.generate(realm_name, T0)
    assert forger.certificate.subject == realm.ca.certificate.subject
    with pytest.raises(CertificateError, match="already exists with another key"):
        realm.trust_ca(pem_certificate(forger.certificate), T0)
    maker = CertificateAuthority.generate("Maker DevID CA", T0)
    realm.trust_ca(pem_certificate(maker.certificate), T0)  # control: a new name is trusted
    realm.trust_ca(pem_certificate(maker.certificate), T0)  # the same CA again: accepted, kept once
    twin = CertificateAuthority.generate("Maker DevID CA", T0)
    with pytest.raises(CertificateError, match="already exists with another key"):
        realm.trust_ca(pem_certificate(twin.certificate), T0)
    assert [c.subject for c in realm.trusted_cas()].count(twin.certificate.subject) == 1
