"""tessera-admin with the registry named by a URL: the same commands on SQLite and on PostgreSQL.

How this works: the ``registry`` fixture is parametrised over ``sqlite`` (``sqlite:///`` and a
scratch file) and ``postgresql`` (a fresh database per test in one private cluster per session,
started by ``tessera.lab.postgres`` with TCP on 127.0.0.1 and scram-sha-256, stopped by PID
afterwards). The PostgreSQL URL reaches the database over TCP with the role's password in a
0600 ``passfile=``, never on the command line. Each test runs ``tessera.cli.main`` in this
process and checks what it did through another connection (`open_realm` on the database's own
URL), and the refusals beside it: a password in the URL, a closed port, a missing SQLite file.
PostgreSQL needs root and Debian's postgresql 15 (tests/gate.py: as root a missing part fails).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tessera.cli import main
from tessera.identity import DeviceKey
from tessera.realm import open_realm
from tessera.registry import DeviceState
from tests.server.pgcluster import PASSWORD  # the shared cluster's (pg_cluster, conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_dbs = itertools.count(1)


@pytest.fixture
def no_ambient_password(monkeypatch, tmp_path):
    """libpq finds no password but the one the URL's passfile= names."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-such-pgpass"))


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request, tmp_path, no_ambient_password):
    """(URL for tessera-admin, URL for the test's own look, passfile or None)"""
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'registry.db'}"
        return url, url, None
    return pg_database(request.getfixturevalue("pg_cluster"), tmp_path)


def pg_database(c, tmp_path):
    """A fresh database: (its TCP URL with passfile=, its unix socket URL, the passfile)."""
    db = f"cli_{next(_dbs)}"
    c.create_database(db)
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{c.port}:{db}:{c.role}:{PASSWORD.replace(':', chr(92) + ':')}\n")
    os.chmod(passfile, 0o600)
    return f"postgresql://{c.role}@127.0.0.1:{c.port}/{db}?passfile={passfile}", c.url(db), passfile


def admin(capsys, *args):
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse: usage errors exit 2
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def closed_port() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    return s, s.getsockname()[1]


def test_admin_commands_work_on_the_registry_url(registry, tmp_path, capsys):
    url, own_url, _ = registry
    kek = str(tmp_path / "kek")
    run = lambda *args: admin(capsys, "--registry", url, "--kek", kek, *args)  # noqa: E731
    code, out, err = run("init", "--realm", "example.net")
    assert (code, err) == (0, "") and "realm example.net created in" in out
    assert PASSWORD not in out
    code, _, err = run("init", "--realm", "example.org")  # a registry holds one realm
    assert code == 1 and "already holds a realm" in err
    key = DeviceKey.generate()
    pub = tmp_path / "d.pub"
    pub.write_bytes(key.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    assert run("enrol", "key", "SN-1", str(pub))[0] == 0
    assert run("enrol", "key", "SN-2", key.public_bytes().hex())[0] == 0
    code, _, err = run("enrol", "key", "SN-1", str(pub))
    assert code == 1 and "SN-1" in err and "already enrolled" in err
    code, out, _ = run("list", "--json")
    assert code == 0 and [(d["device_id"], d["state"]) for d in json.loads(out)] == \
        [("SN-1", "enrolled"), ("SN-2", "enrolled")]
    code, out, _ = run("revoke", "SN-1", "--reason", "stolen", "--no-disconnect")
    assert code == 0 and "revoked SN-1" in out
    code, _, err = run("revoke", "SN-9", "--no-disconnect")
    assert code == 1 and "SN-9 is not enrolled" in err
    code, out, _ = run("audit", "--json")
    events = [(e["event"], e["device_id"]) for e in json.loads(out)]
    assert code == 0 and events == [("realm-created", None), ("enrolled", "SN-1"), ("enrolled", "SN-2"),
                                    ("revoked", "SN-1")]
    code, out, _ = run("list")
    assert code == 0 and "2 device(s) in realm example.net" in out
    # what tessera-admin wrote is in that database, as another connection (another server) sees it
    realm = open_realm(own_url, kek)
    try:
        assert realm.name == "example.net"
        assert realm.registry.get_device("SN-1").state is DeviceState.REVOKED
        assert realm.registry.get_device("SN-2").state is DeviceState.ENROLLED
    finally:
        realm.registry.close()


def test_db_keeps_working_and_registry_wins(registry, tmp_path, capsys):
    url, _, _ = registry
    kek = str(tmp_path / "kek")
    assert admin(capsys, "--db", url, "--kek", kek, "init", "--realm", "example.net")[0] == 0  # --db takes a URL too
    missing = tmp_path / "nothing.db"
    code, out, err = admin(capsys, "--db", str(missing), "--registry", url, "--kek", kek, "list")
    assert code == 0 and "0 device(s) in realm example.net" in out
    code, out, err = admin(capsys, "--db", str(missing), "--kek", kek, "list")  # control: --db alone
    assert (code, out) == (1, "") and f"no registry at {missing}" in err
    code, _, err = admin(capsys, "--registry", f"sqlite://{missing}", "--kek", kek, "list")
    assert code == 1 and f"no registry at {missing}" in err
    assert not missing.exists()


def test_a_password_in_the_url_is_refused_without_echoing_it(pg_cluster, tmp_path, capsys, no_ambient_password):
    c = pg_cluster
    kek = tmp_path / "kek"
    for url in (f"postgresql://{c.role}:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{c.port}/tessera",
                f"postgresql://{c.role}@127.0.0.1:{c.port}/tessera?password=s3cret-pw"):
        for args in (("init", "--realm", "example.net"), ("list",)):
            code, out, err = admin(capsys, "--registry", url, "--kek", str(kek), *args)
            assert (code, out) == (1, "") and "carries a password" in err
            assert "s3cret-pw" not in err and "pw-Cl1" not in err and "***" in err
    assert not kek.exists()  # a refused registry leaves no KEK behind


def test_an_unreachable_postgresql_is_registry_unavailable(pg_cluster, tmp_path, capsys, no_ambient_password):
    url, _, passfile = pg_database(pg_cluster, tmp_path)
    kek = tmp_path / "kek"
    assert admin(capsys, "--registry", url, "--kek", str(kek), "init", "--realm", "example.net")[0] == 0  # control
    s, port = closed_port()
    with s:
        down = f"postgresql://tessera@127.0.0.1:{port}/tessera?passfile={passfile}"
        for args in (("list",), ("revoke", "SN-1"), ("init", "--realm", "example.org")):
            code, out, err = admin(capsys, "--registry", down, "--kek", str(tmp_path / "kek2"), *args)
            assert (code, out) == (1, "") and "registry-unavailable" in err
            assert f"127.0.0.1:{port}" in err and PASSWORD not in err and "pw-Cl1" not in err
        assert not (tmp_path / "kek2").exists()
        # the installed entry point, as an operator runs it: same exit code and message
        proc = subprocess.run([sys.executable, "-m", "tessera.cli", "--registry", down, "--kek", str(kek), "list"],
                              capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("tessera-admin: registry-unavailable: ") and proc.stderr.count("\n") == 1
    assert f"(registry postgresql://tessera@127.0.0.1:{port}/tessera?passfile=" in proc.stderr
    assert PASSWORD not in proc.stderr and "pw-Cl1" not in proc.stderr
