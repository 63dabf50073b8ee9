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
        code = main(["--db", db, "--kek", kek, *args])
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
    code, out, _ = admin("enrol", "generate", "SN-2", "--server", "r1=192.0.2.1", "--server", "r2=192.0.2.2:11812",
                         "--secret", "s", "--out", str(tmp_path / "b.json"))
    assert code == 0 and stat.S_IMODE(os.stat(tmp_path / "b.json").st_mode) == 0o600
    bundle = BootstrapBundle.from_json((tmp_path / "b.json").read_text())
    assert [(s.server_id, s.host, s.port) for s in bundle.servers] == [("r1", "192.0.2.1", 1812), ("r2", "192.0.2.2", 11812)]
    assert bundle.device_key_pem and bundle.device_certificate_pem
    code, out, _ = admin("list", "--json")
    rows = json.loads(out)
    assert [(r["device_id"], r["state"], r["enrolled_by"]) for r in rows] == [("SN-1", "enrolled", "key"), ("SN-2", "enrolled", "bundle")]
    assert rows[0]["certificate_serial"]
    assert admin("revoke", "SN-2", "--reason", "lost")[0] == 0
    code, out, _ = admin("show", "SN-2")
    assert code == 0 and "revoked" in out and "lost" in out
    code, out, _ = admin("rotate")
    assert code == 0 and "kvno 2" in out and "current" in out
    code, out, _ = admin("audit", "--json")
    assert [e["event"] for e in json.loads(out)] == ["realm-created", "enrolled", "enrolled", "revoked", "key-rotated"]
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
    os.chmod(tmp_path / "kek", 0o644)
    code, _, err = admin("list")
    assert code == 1 and "must not be readable" in err


def test_cli_usage_error_exits_2(admin):
    with pytest.raises(SystemExit) as exc:
        admin("enrol")
    assert exc.value.code == 2
