"""802.1X admission through the tessera_eap module, with eapol_test as the supplicant.

EAP-TLS: the certificate must chain to the trusted device CA *and* the registry (here the stub
realm) must admit it; EAP-PWD: the registry supplies the password of a registered device.
"""

import pytest

from tests.gate import needs_freeradius
from tests.server.eapol import eapol_test, pwd_network, tls_network

pytestmark = needs_freeradius


def run_tls(server, tmp_path, creds):
    ca = getattr(creds, "ca_path", None) or creds.cert_path.parent / "ca.pem"
    return eapol_test(tmp_path, creds.device_id, tls_network(creds.device_id, creds.cert_path, creds.key_path, ca),
                      server.address, server.port, server.secret)


def test_eap_tls_enrolled_device_is_admitted(stub_server, devices, tmp_path):
    rc, out = run_tls(stub_server, tmp_path, devices["dev-good"])
    assert rc == 0, out[-3000:]
    assert "SUCCESS" in out


@pytest.mark.parametrize("name,reason", [("dev-revoked", "revoked"), ("dev-unknown", "unknown-device")])
def test_eap_tls_registry_refusal_is_eap_failure(stub_server, devices, tmp_path, name, reason):
    rc, out = run_tls(stub_server, tmp_path, devices[name])
    assert rc != 0
    assert "EAP-Failure" in out or "CTRL-EVENT-EAP-FAILURE" in out, out[-3000:]
    assert f"EAP-TLS admission rejected for '{name}': {reason}" in stub_server.proc.log_text()


def test_eap_tls_certificate_from_untrusted_ca_fails(stub_server, devices, tmp_path):
    rc, out = run_tls(stub_server, tmp_path, devices["dev-foreign"])
    assert rc != 0, out[-3000:]


def test_eap_pwd_registered_device_is_admitted(stub_server, tmp_path):
    rc, out = eapol_test(tmp_path, "pwd-good", pwd_network("dev-good", "pwd-of-dev-good"),
                         stub_server.address, stub_server.port, stub_server.secret)
    assert rc == 0, out[-3000:]


@pytest.mark.parametrize("identity,password", [("dev-good", "wrong-password"),
                                               ("dev-revoked", "pwd-of-dev-revoked"),
                                               ("dev-unknown", "anything")])
def test_eap_pwd_refused(stub_server, tmp_path, identity, password):
    rc, out = eapol_test(tmp_path, f"pwd-{identity}", pwd_network(identity, password),
                         stub_server.address, stub_server.port, stub_server.secret)
    assert rc != 0, out[-3000:]


def test_eap_server_keeps_serving_after_failures(stub_server, devices, tmp_path):
    assert stub_server.client().status(stub_server.server_entry())
    rc, out = run_tls(stub_server, tmp_path, devices["dev-good"])
    assert rc == 0, out[-3000:]
