"""802.1X admission through the tessera_eap module, with eapol_test as the supplicant.

EAP-TLS: the certificate must chain to the trusted device CA *and* the registry (here the stub
realm) must admit it; EAP-PWD: the registry supplies the password of a registered device.
Each refusal is checked for its reason (the server's log or the supplicant's output) beside
the same server admitting the enrolled device.
"""

import pytest

from tests.gate import needs_freeradius
from tests.server.eapol import eapol_test, pwd_network, tls_network

pytestmark = needs_freeradius


def run_tls(server, tmp_path, creds):
    ca = getattr(creds, "ca_path", None) or creds.cert_path.parent / "ca.pem"
    return eapol_test(tmp_path, creds.device_id, tls_network(creds.device_id, creds.cert_path, creds.key_path, ca),
                      server.address, server.nas_port, server.nas_secret)


def logged(server, run):
    """Run ``run()`` -> (rc, out); returns (rc, out, what the server logged meanwhile)."""
    mark = len(server.proc.log_text())
    rc, out = run()
    return rc, out, server.proc.log_text()[mark:]


def assert_admitted(server, tmp_path, creds):
    rc, out, log = logged(server, lambda: run_tls(server, tmp_path, creds))
    assert rc == 0 and "SUCCESS" in out, out[-3000:]
    assert "EAP-TLS admission rejected" not in log and "OpenSSL says error" not in log, log


def test_eap_tls_enrolled_device_is_admitted(stub_server, devices, tmp_path):
    rc, out = run_tls(stub_server, tmp_path, devices["dev-good"])
    assert rc == 0, out[-3000:]
    assert "SUCCESS" in out


@pytest.mark.parametrize("name,reason", [("dev-revoked", "revoked"), ("dev-unknown", "unknown-device")])
def test_eap_tls_registry_refusal_is_eap_failure(stub_server, devices, tmp_path, name, reason):
    rc, out, log = logged(stub_server, lambda: run_tls(stub_server, tmp_path, devices[name]))
    assert rc != 0
    assert "Received EAP-Failure" in out, out[-3000:]
    assert f"EAP-TLS admission rejected for '{name}': {reason}" in log, log
    assert_admitted(stub_server, tmp_path, devices["dev-good"])


def test_eap_tls_certificate_from_untrusted_ca_fails(stub_server, devices, tmp_path):
    """A foreign CA's certificate naming the enrolled dev-good: the chain check refuses it
    before the registry is asked; the lab CA's dev-good is admitted."""
    rc, out, log = logged(stub_server, lambda: run_tls(stub_server, tmp_path, devices["dev-foreign"]))
    assert rc != 0 and "Received EAP-Failure" in out, out[-3000:]
    assert "OpenSSL says error 20 : unable to get local issuer certificate" in log, log
    assert "EAP-TLS admission rejected" not in log, log
    assert_admitted(stub_server, tmp_path, devices["dev-good"])


def test_eap_pwd_registered_device_is_admitted(stub_server, tmp_path):
    rc, out = eapol_test(tmp_path, "pwd-good", pwd_network("dev-good", "pwd-of-dev-good"),
                         stub_server.address, stub_server.nas_port, stub_server.nas_secret)
    assert rc == 0, out[-3000:]


def run_pwd(server, tmp_path, identity, password):
    return logged(server, lambda: eapol_test(tmp_path, f"pwd-{identity}", pwd_network(identity, password),
                                             server.address, server.nas_port, server.nas_secret))


@pytest.mark.parametrize("identity,password,reason", [
    ("dev-good", "wrong-password", None),  # the registry gives the password; the exchange fails
    ("dev-revoked", "pwd-of-dev-revoked", "revoked"),
    ("dev-unknown", "anything", "unknown-device"),
])
def test_eap_pwd_refused_with_its_reason(stub_server, tmp_path, identity, password, reason):
    rc, out, log = run_pwd(stub_server, tmp_path, identity, password)
    assert rc != 0 and "CTRL-EVENT-EAP-FAILURE" in out, out[-3000:]
    if reason is None:
        assert "EAP-PWD (peer): confirm did not verify" in out, out[-3000:]
        assert "EAP-PWD admission rejected" not in log, log
    else:
        assert f"EAP-PWD admission rejected for '{identity}': {reason}" in log, log
    rc, out, log = run_pwd(stub_server, tmp_path, "dev-good", "pwd-of-dev-good")
    assert rc == 0 and "SUCCESS" in out, out[-3000:]


def test_eap_server_keeps_serving_after_failures(stub_server, devices, tmp_path):
    assert stub_server.client().status(stub_server.server_entry())
    rc, out = run_tls(stub_server, tmp_path, devices["dev-good"])
    assert rc == 0, out[-3000:]
