"""EAP-TLS on the real FreeRADIUS against a forged device CA that copies the realm's CA name.

The forger makes a CA with the same subject name (and subject key identifier) as the realm's
device CA and issues a certificate with the same serial number, subject and issuer as an
enrolled device's, over a key of its own. What the registry looks up -- issuer string, serial,
common name (TLS-Client-Cert-Issuer / -Serial / -Common-Name) -- is then identical to the
enrolled device's, so only the chain check in the ``tessera_eap`` module (OpenSSL against
``device-ca.pem``) can stop it.

Controls in the same test: the genuine certificate is admitted by the same server right after;
the forged certificate is admitted by a second server of the realm that (wrongly) trusts the
forged CA in place of the realm's, so the refusal comes from the chain and nothing else.
"""

import time

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tessera.identity import CertificateAuthority, DeviceKey, certificate_serial_hex, pem_certificate
from tessera.lab.pki import DeviceCredentials, write_file
from tessera.realm import Realm, create_kek, issuer_string
from tessera.sqlite_registry import SQLiteRegistry

from tests.gate import needs_freeradius
from tests.server.eapol import eapol_test, tls_network
from tests.server.realserver import make_server

pytestmark = needs_freeradius
REALM = "forge.example"


def forge_ca(genuine: x509.Certificate) -> CertificateAuthority:
    """A self-signed CA with the genuine CA's subject, serial, validity and extensions
    (subject key identifier included) over a new key."""
    key = ec.generate_private_key(ec.SECP256R1())
    b = (x509.CertificateBuilder().subject_name(genuine.subject).issuer_name(genuine.issuer)
         .public_key(key.public_key()).serial_number(genuine.serial_number)
         .not_valid_before(genuine.not_valid_before_utc).not_valid_after(genuine.not_valid_after_utc))
    for ext in genuine.extensions:
        b = b.add_extension(ext.value, ext.critical)
    return CertificateAuthority(b.sign(key, hashes.SHA256()), key)


def forge_twin(genuine: x509.Certificate, ca: CertificateAuthority, key: DeviceKey) -> x509.Certificate:
    """``genuine`` re-made by ``ca`` over ``key``: same subject, issuer, serial, validity and
    extensions (its authority key identifier still names the genuine CA's key)."""
    b = (x509.CertificateBuilder().subject_name(genuine.subject).issuer_name(genuine.issuer)
         .public_key(key.public_key).serial_number(genuine.serial_number)
         .not_valid_before(genuine.not_valid_before_utc).not_valid_after(genuine.not_valid_after_utc))
    for ext in genuine.extensions:
        b = b.add_extension(ext.value, ext.critical)
    return b.sign(ca.private_key, hashes.SHA256())


@pytest.fixture(scope="module")
def realm_lab(tmp_path_factory, pki):
    d = tmp_path_factory.mktemp("forge")
    db, kek = d / "registry.db", d / "kek"
    realm = Realm.init(SQLiteRegistry(str(db)), create_kek(str(kek)), REALM, time.time())
    return d, db, kek, realm


def test_eap_tls_forged_ca_with_same_issuer_and_serial_is_refused(realm_lab, pki, tmp_path):
    d, db, kek, realm = realm_lab
    now = time.time()
    key = DeviceKey.generate()
    genuine = realm.issue_certificate("edge-1", key.public_bytes(), now)
    realm.enrol_key("edge-1", key.public_bytes(), now, genuine)
    good = pki.write_device_files(tmp_path / "good", DeviceCredentials("edge-1", key, genuine))

    forged_ca = forge_ca(realm.ca.certificate)
    forged_key = DeviceKey.generate()
    forged = forge_twin(genuine, forged_ca, forged_key)
    bad = pki.write_device_files(tmp_path / "forged", DeviceCredentials("edge-1", forged_key, forged))
    # the supplicant also sends the forged CA with its certificate (a chain it would like trusted)
    chained = write_file(tmp_path / "forged" / "edge-1-chain.pem", pem_certificate(forged) + pem_certificate(forged_ca.certificate))

    # the forgery: everything the registry sees is the enrolled device's; only the signature differs
    assert forged_ca.certificate.subject == realm.ca.certificate.subject
    assert (forged.subject, forged.issuer, forged.serial_number) == (genuine.subject, genuine.issuer, genuine.serial_number)
    assert (issuer_string(forged), certificate_serial_hex(forged)) == (issuer_string(genuine), certificate_serial_hex(genuine))
    assert forged.fingerprint(hashes.SHA256()) != genuine.fingerprint(hashes.SHA256())
    forged.verify_directly_issued_by(forged_ca.certificate)  # well-formed, from its own CA
    with pytest.raises(InvalidSignature):
        forged.verify_directly_issued_by(realm.ca.certificate)
    service = realm.service("in-memory")
    assert service.admit_certificate(certificate_serial_hex(forged), issuer_string(forged), "edge-1", now) == "edge-1"

    trusted = b"".join(pem_certificate(c) for c in realm.trusted_cas())
    tls = pki.install_server_files(d / "tls", "radius.lab", now, (trusted,))
    # a misconfigured server that trusts the forged CA in place of the realm's (OpenSSL picks the
    # issuer by name and key identifier, so trusting both would still refuse the forgery)
    lax_tls = pki.install_server_files(d / "tls-lax", "radius.lab", now, (pem_certificate(forged_ca.certificate),))

    def run(server, creds, cert_path, name):
        mark = len(server.proc.log_text())
        rc, out = eapol_test(tmp_path, name, tls_network("edge-1", cert_path, creds.key_path, good.cert_path.parent / "ca.pem"),
                             server.address, server.nas_port, server.nas_secret)
        return rc, out, server.proc.log_text()[mark:]

    with make_server(d / "strict", db=db, kek=kek, tls_dir=tls, server_id="radius-1") as server:
        for name, cert_path in (("forged", bad.cert_path), ("forged-chain", chained)):
            rc, out, log = run(server, bad, cert_path, name)
            assert rc != 0 and "CTRL-EVENT-EAP-FAILURE" in out, out[-3000:]
            assert "OpenSSL says error" in log and "certificate signature failure" in log, log
            assert "admitted on" not in log and "EAP-TLS admission" not in log, log  # the registry was never asked

        rc, out, log = run(server, good, good.cert_path, "genuine")  # the enrolled device: admitted
        assert rc == 0, out[-3000:]
        assert "'edge-1' admitted on" in log, log

    # the same forged certificate passes a server that trusts the forged CA instead: nothing but
    # the chain refused it (the registry admits it, as admit_certificate showed above)
    with make_server(d / "lax", db=db, kek=kek, tls_dir=lax_tls, server_id="radius-lax") as lax:
        rc, out, log = run(lax, bad, bad.cert_path, "forged-lax")
        assert rc == 0, out[-3000:]
        assert "'edge-1' admitted on" in log, log
