"""tessera-admin end to end on a scratch registry: output, files and exit codes."""

import json
import os
import stat

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tessera.cli import main
from tessera.identity import BootstrapBundle, DeviceKey


@pytest.fixture
def admin(tmp_path, capsys):
    db, kek = str(tmp_path / "registry.db"), str(tmp_path / "kek")

    def run(*args):
        try:
            code = main(["--db", db, "--kek", kek, *args])
        except SystemExit as exc:  # argparse: usage errors exit 2
            code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err

    assert run("init", "--realm", "example.net")[0] == 0
    assert stat.S_IMODE(os.stat(kek).st_mode) == 0o600 and stat.S_IMODE(os.stat(db).st_mode) == 0o600
    return run


def test_cli_enrol_list_show_revoke_rotate_audit(admin, tmp_path):
    key = DeviceKey.generate()
    (tmp_path / "d.pub").write_bytes(key.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    code, out, _ = admin("enrol", "key", "SN-1", str(tmp_path / "d.pub"), "--certificate-out", str(tmp_path / "d.crt"))
    assert code == 0 and "enrolled SN-1" in out and (tmp_path / "d.crt").exists()
    code, out, _ = admin("enrol", "generate", "SN-2", "--server", "r1=192.0.2.1", "--server", "r2=192.0.2.2:3083",
                         "--out", str(tmp_path / "b.json"))
    assert code == 0 and stat.S_IMODE(os.stat(tmp_path / "b.json").st_mode) == 0o600
    bundle = BootstrapBundle.from_json((tmp_path / "b.json").read_text())
    # RadSec by default: the --server ports are RadSec ports, and no shared secret anywhere
    assert [(s.server_id, s.host, s.radsec_port) for s in bundle.servers] == [("r1", "192.0.2.1", 2083), ("r2", "192.0.2.2", 3083)]
    assert bundle.radius_transport == "radsec" and "radius_secret" not in (tmp_path / "b.json").read_text()
    assert bundle.device_key_pem and bundle.device_certificate_pem
    # a RadSec bundle refuses a secret; a UDP one needs it -- each beside the accepted form
    assert admin("enrol", "generate", "SN-3", "--server", "r1=192.0.2.1", "--secret", "s", "--out", str(tmp_path / "c.json"))[0] == 2
    assert admin("enrol", "generate", "SN-3", "--server", "r1=192.0.2.1", "--transport", "udp",
                 "--out", str(tmp_path / "c.json"))[0] == 2
    assert not (tmp_path / "c.json").exists()
    code, out, _ = admin("enrol", "generate", "SN-3", "--server", "r1=192.0.2.1", "--transport", "udp", "--secret", "s",
                         "--out", str(tmp_path / "c.json"))
    udp = BootstrapBundle.from_json((tmp_path / "c.json").read_text())
    assert code == 0 and udp.radius_transport == "udp" and udp.radius_secret == "s"
    assert [(s.server_id, s.port) for s in udp.servers] == [("r1", 11812)]  # the device listener, not the NAS one
    code, out, _ = admin("list", "--json")
    rows = json.loads(out)
    assert [(r["device_id"], r["state"], r["enrolled_by"]) for r in rows] == [("SN-1", "enrolled", "key"), ("SN-2", "enrolled", "bundle"),
                                                                                ("SN-3", "enrolled", "bundle")]
    assert rows[0]["certificate_serial"]
    assert admin("revoke", "SN-2", "--reason", "lost")[0] == 0
    code, out, _ = admin("show", "SN-2")
    assert code == 0 and "revoked" in out and "lost" in out
    code, out, _ = admin("rotate")
    assert code == 0 and "kvno 2" in out and "current" in out
    code, out, _ = admin("audit", "--json")
    assert [e["event"] for e in json.loads(out)] == ["realm-created", "enrolled", "enrolled", "enrolled", "revoked", "key-rotated"]
    # nothing printed anywhere carries the device's private key
    assert "PRIVATE KEY" not in out


def test_cli_refusals_exit_1_with_the_reason(admin, tmp_path):
    code, _, err = admin("revoke", "SN-404")
    assert code == 1 and "not enrolled" in err
    key = DeviceKey.generate()
    assert admin("enrol", "key", "SN-1", key.public_bytes().hex())[0] == 0
    code, _, err = admin("enrol", "key", "SN-1", key.public_bytes().hex())
    assert code == 1 and "already enrolled" in err
    code, _, err = admin("enrol", "key", "bad id!", key.public_bytes().hex())
    assert code == 1 and "bad device id" in err
    code, _, err = admin("init", "--realm", "again.example")
    assert code == 1 and "already holds a realm" in err
    assert admin("list")[0] == 0  # control: the same command with the KEK still private
    os.chmod(tmp_path / "kek", 0o644)
    code, _, err = admin("list")
    assert code == 1 and "must not be readable" in err


def test_cli_usage_error_exits_2(admin):
    code, out, err = admin("enrol")
    assert code == 2 and out == "" and "the following arguments are required: how" in err
    assert admin("enrol", "key", "SN-1", DeviceKey.generate().public_bytes().hex())[0] == 0  # control


# -- nas add, bundle, keys, export-ca, enrol certificate, trust-ca: each beside a refusal ----------
def realm_of(tmp_path):
    from tessera.realm import open_realm

    return open_realm(str(tmp_path / "registry.db"), str(tmp_path / "kek"))


@pytest.mark.parametrize("address, host, port", [
    ("192.0.2.10", "192.0.2.10", 3799), ("192.0.2.10:3800", "192.0.2.10", 3800),
    ("2001:db8::1", "2001:db8::1", 3799), ("[2001:db8::1]:3800", "2001:db8::1", 3800),
    ("[2001:db8::1]", "2001:db8::1", 3799), ("nas1.example.net:1700", "nas1.example.net", 1700),
])
def test_cli_nas_add_takes_an_address_and_seals_the_secret(admin, tmp_path, address, host, port):
    code, out, err = admin("nas", "add", "sw1-p3", address, "--secret", "das-secret")
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    assert (code, out, err) == (0, f"NAS sw1-p3 at {where} takes Disconnect-Requests\n", "")
    assert admin("nas", "list") == (0, f"  sw1-p3                   {where}\n", "")
    assert realm_of(tmp_path).nas("sw1-p3") == (host, port, "das-secret")
    files = list(tmp_path.glob("registry.db*"))  # the database and its write-ahead log
    assert files and not any(b"das-secret" in f.read_bytes() for f in files)  # sealed under the KEK
    assert any(b"sw1-p3" in f.read_bytes() for f in files)  # (the search does look where it is kept)


@pytest.mark.parametrize("address, why", [
    (":3799", "'' is neither an IP address nor a host name"),
    ("bad host!", "'bad host!' is neither an IP address nor a host name"),
    ("192.0.2.300", "'192.0.2.300' is neither an IP address nor a host name"),
    ("192.0.2.10:x", "port 'x' is not a number from 1 to 65535"),
    ("192.0.2.10:0", "port '0' is not a number from 1 to 65535"),
    ("192.0.2.10:65536", "port '65536' is not a number from 1 to 65535"),
    ("192.0.2.10:", "port '' is not a number from 1 to 65535"),
    ("[2001:db8::1", "an IPv6 address in brackets is [address] or [address]:port"),
    ("2001:db8::g", "Only hex digits permitted"),
])
def test_cli_nas_add_refuses_a_malformed_address_as_usage(admin, address, why):
    code, out, err = admin("nas", "add", "sw1-p3", address, "--secret", "das-secret")
    assert code == 2 and out == ""
    assert f"argument address: NAS address must be host[:port], not {address!r} (" in err and why in err
    assert admin("nas", "list") == (0, "", "")  # nothing stored


def test_cli_nas_add_needs_name_address_and_secret(admin):
    code, _, err = admin("nas", "add", "sw1-p3", "192.0.2.10")
    assert code == 2 and "nas add needs NAME ADDRESS --secret S" in err
    assert admin("nas", "list") == (0, "", "")
    assert admin("nas", "add", "sw1-p3", "192.0.2.10", "--secret", "s")[0] == 0  # control


def test_cli_bundle_for_an_enrolled_device_and_not_for_another(admin, tmp_path):
    key = DeviceKey.generate()
    assert admin("enrol", "key", "SN-1", key.public_bytes().hex())[0] == 0
    out_file = tmp_path / "b.json"
    code, out, err = admin("bundle", "SN-1", "--server", "r1=192.0.2.1", "--server", "r2=[2001:db8::2]:11812",
                           "--transport", "udp", "--secret", "radius-secret", "--out", str(out_file))
    assert (code, out, err) == (0, f"bootstrap bundle for SN-1 in {out_file}\n", "")
    assert stat.S_IMODE(os.stat(out_file).st_mode) == 0o600
    bundle, realm = BootstrapBundle.from_json(out_file.read_text()), realm_of(tmp_path)
    assert (bundle.realm, bundle.device_id, bundle.radius_secret) == ("example.net", "SN-1", "radius-secret")
    assert [(s.server_id, s.host, s.port) for s in bundle.servers] == [("r1", "192.0.2.1", 11812), ("r2", "2001:db8::2", 11812)]
    assert bundle.service_public_key == realm.service_public_key and bundle.ca_certificate_pem
    assert bundle.device_key_pem is None and "PRIVATE KEY" not in out_file.read_text()  # the device has its own key
    # refusals: a device the realm does not know; a server that is not id=host[:port]
    code, out, err = admin("bundle", "SN-404", "--server", "r1=192.0.2.1", "--out", str(tmp_path / "x.json"))
    assert (code, out, err) == (1, "", "tessera-admin: device SN-404 is not enrolled\n")
    for bad, why in (("r1", "not enough values"), ("=192.0.2.1", "bad server id ''"), ("r1=", "neither an IP address"),
                     ("r1=192.0.2.1:99999", "port '99999'")):
        code, _, err = admin("bundle", "SN-1", "--server", bad, "--out", str(tmp_path / "x.json"))
        assert code == 2 and f"server must be id=host[:port], not {bad!r}" in err and why in err
    assert not (tmp_path / "x.json").exists()


def test_cli_keys_lists_versions_and_never_a_key(admin, tmp_path):
    import base64

    code, out, err = admin("keys")
    assert code == 0 and err == "" and len(out.splitlines()) == 1
    assert out.startswith("  kvno 1    created ") and out.endswith("  current\n")
    assert admin("rotate")[0] == 0
    code, out, _ = admin("keys")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 and " retires " in lines[0] and lines[1].endswith("current")
    for k in realm_of(tmp_path).keyring.versions():
        for form in (k.key.hex(), k.key.hex().upper(), base64.b64encode(k.key).decode(), k.key[:8].hex()):
            assert form not in out
    # refusals: another realm's KEK, and a registry path with nothing there (left that way)
    other = tmp_path / "other-kek"
    other.write_bytes(os.urandom(32))
    os.chmod(other, 0o600)
    code, out, err = main_with(tmp_path / "registry.db", other, "keys")
    assert (code, out) == (1, "") and "does not open the registry" in err
    code, out, err = main_with(tmp_path / "nothing.db", tmp_path / "kek", "keys")
    assert (code, out) == (1, "") and f"no registry at {tmp_path / 'nothing.db'}" in err
    assert not (tmp_path / "nothing.db").exists()


def main_with(db, kek, *args):
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--db", str(db), "--kek", str(kek), *args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def maker():
    """A manufacturer's device CA (IEEE 802.1AR-style) and a device certificate it issued."""
    import time

    from tessera.identity import CertificateAuthority, pem_certificate

    ca = CertificateAuthority.generate("Maker DevID CA", time.time())
    key = DeviceKey.generate()
    return ca, pem_certificate(ca.certificate), key, pem_certificate(ca.issue_device_certificate("SN-M", key.public_key, time.time()))


def test_cli_enrol_certificate_from_a_trusted_ca_only(admin, tmp_path, maker):
    import time

    from tessera.identity import CertificateAuthority, pem_certificate

    ca, ca_pem, key, cert_pem = maker
    (tmp_path / "ca.pem").write_bytes(ca_pem)
    (tmp_path / "dev.pem").write_bytes(cert_pem)
    # before the maker's CA is trusted, its device certificate is refused...
    code, out, err = admin("enrol", "certificate", str(tmp_path / "dev.pem"))
    assert (code, out, err) == (1, "", "tessera-admin: certificate is not issued by a trusted device CA\n")
    assert admin("trust-ca", str(tmp_path / "ca.pem"))[0] == 0
    # ...after, the same file enrols the device the certificate names
    code, out, err = admin("enrol", "certificate", str(tmp_path / "dev.pem"))
    rows = json.loads(admin("list", "--json")[1])
    assert (code, err) == (0, "") and out == f"enrolled SN-M by certificate serial {rows[0]['certificate_serial']}\n"
    assert [(r["device_id"], r["enrolled_by"], r["public_key"]) for r in rows] == [("SN-M", "certificate", key.public_bytes().hex())]
    # refusals, each with its reason, none of which enrols anything
    now = time.time()
    forged_ca = CertificateAuthority.generate("Maker DevID CA", now)  # same name, another key
    other = DeviceKey.generate().public_key
    cases = {
        "forged.pem": (pem_certificate(forged_ca.issue_device_certificate("SN-F", other, now)),
                       "certificate is not issued by a trusted device CA"),
        "expired.pem": (pem_certificate(ca.issue_device_certificate("SN-X", other, now - 400 * 86400, lifetime_days=30)),
                        "certificate is outside its validity period"),
        "pubkey.pem": (key.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo), "not a PEM certificate"),
        "dev.pem": (cert_pem, "already enrolled"),
    }
    for name, (pem, why) in cases.items():
        (tmp_path / name).write_bytes(pem)
        code, out, err = admin("enrol", "certificate", str(tmp_path / name))
        assert code == 1 and out == "" and err.startswith("tessera-admin: ") and why in err, (name, err)
    code, _, err = admin("enrol", "certificate", str(tmp_path / "missing.pem"))
    assert code == 1 and "No such file or directory" in err
    assert [r["device_id"] for r in json.loads(admin("list", "--json")[1])] == ["SN-M"]


def test_cli_trust_ca_takes_a_ca_certificate_and_nothing_else(admin, tmp_path, maker):
    from cryptography import x509

    ca, ca_pem, key, cert_pem = maker
    (tmp_path / "ca.pem").write_bytes(ca_pem)
    (tmp_path / "leaf.pem").write_bytes(cert_pem)
    (tmp_path / "junk.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    for name, why in (("leaf.pem", "not a CA certificate"), ("junk.pem", "not a PEM certificate"),
                      ("missing.pem", "No such file or directory")):
        code, out, err = admin("trust-ca", str(tmp_path / name))
        assert code == 1 and out == "" and err.startswith("tessera-admin: ") and why in err, (name, err)
    code, out, err = admin("trust-ca", str(tmp_path / "ca.pem"))
    assert (code, out, err) == (0, "trusting device CA CN=Maker DevID CA,O=Tessera\n", "")
    # export-ca writes the realm's own CA and the trusted one, and only those
    code, out, err = admin("export-ca", str(tmp_path / "bundle.pem"))
    assert (code, out, err) == (0, f"device CA bundle (for the EAP module's ca_file) in {tmp_path / 'bundle.pem'}\n", "")
    got = x509.load_pem_x509_certificates((tmp_path / "bundle.pem").read_bytes())
    assert [c.subject.rfc4514_string() for c in got] == ["CN=example.net device CA,O=Tessera", "CN=Maker DevID CA,O=Tessera"]
    assert got[1] == ca.certificate


def test_cli_export_ca_writes_the_realm_ca_or_says_why_not(admin, tmp_path):
    from cryptography import x509

    code, _, err = admin("export-ca", str(tmp_path / "no-such-dir" / "ca.pem"))
    assert code == 1 and "No such file or directory" in err and not (tmp_path / "no-such-dir").exists()
    assert admin("export-ca", str(tmp_path / "ca.pem"))[0] == 0
    (cert,) = x509.load_pem_x509_certificates((tmp_path / "ca.pem").read_bytes())
    assert cert == realm_of(tmp_path).ca.certificate
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert b"PRIVATE KEY" not in (tmp_path / "ca.pem").read_bytes()
