"""`tessera-admin migrate`: an older registry is refused until the operator migrates it, on both backends.

How this works: the ``old`` fixture builds a registry at version 1 from the schema text of that
version -- the backend's ``SCHEMA`` (version 0, frozen) and ``MIGRATIONS[0]``, run as plain SQL
with a device row written the way the code of that version wrote it -- in a scratch SQLite file
or a fresh database of the session's private PostgreSQL cluster (``pg_cluster``, reached over
TCP with the role's password in a 0600 passfile). Then what a server does (`open_realm`, as the
FreeRADIUS module's instantiate does) and what `tessera-admin` does are checked before and
after `tessera-admin migrate`, each refusal beside the acceptance that follows it.
"""

from __future__ import annotations

import itertools
import os
import sqlite3

import pytest

from tessera import pg_registry, sqlite_registry
from tessera.cli import main
from tessera.realm import open_realm
from tessera.registry import DeviceState, RegistryError
from tessera.registry_url import open_registry
from tests.server.pgcluster import PASSWORD

_dbs = itertools.count(1)
ROW = ("INSERT INTO device (device_id, public_key, state, enrolled_by, created, updated) "
       "VALUES ('SN-OLD', {key}, 'enrolled', 'key', 5, 5)")


class Old:
    """A version-1 registry: its URL, its backend module, and raw SQL on it."""

    def __init__(self, url: str, module, sql):
        self.url, self.module, self.sql = url, module, sql

    def version(self) -> int:
        if self.module is sqlite_registry:
            return self.sql("PRAGMA user_version")[0][0]
        return self.sql("SELECT version FROM schema_version")[0][0]

    def set_version(self, n: int) -> None:
        self.sql(f"PRAGMA user_version = {n}" if self.module is sqlite_registry
                 else f"UPDATE schema_version SET version = {n}")


def sqlite_v1(path: str) -> Old:
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(sqlite_registry.SCHEMA)
    for statement in sqlite_registry.MIGRATIONS[0]:
        db.execute(statement)
    db.execute(ROW.format(key="x'02'"))
    db.execute("PRAGMA user_version = 1")
    db.close()

    def sql(statement):
        c = sqlite3.connect(path, isolation_level=None)
        try:
            return c.execute(statement).fetchall()
        finally:
            c.close()
    return Old(f"sqlite://{path}", sqlite_registry, sql)


def postgres_v1(cluster, tmp_path) -> Old:
    import psycopg

    name = f"migrate_{next(_dbs)}"
    conninfo = cluster.create_database(name)
    with psycopg.connect(conninfo, autocommit=True) as db, db.transaction():
        for statement in pg_registry.SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in pg_registry.MIGRATIONS[0]:
            db.execute(statement)
        db.execute(ROW.format(key="'\\x02'::bytea"))
        db.execute("INSERT INTO schema_version VALUES (1)")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{cluster.port}:{name}:{cluster.role}:{PASSWORD.replace(':', chr(92) + ':')}\n")
    os.chmod(passfile, 0o600)

    def sql(statement):
        with psycopg.connect(conninfo, autocommit=True) as c:
            cur = c.execute(statement)
            return cur.fetchall() if cur.description else []
    return Old(f"postgresql://{cluster.role}@127.0.0.1:{cluster.port}/{name}?passfile={passfile}", pg_registry, sql)


@pytest.fixture(params=["sqlite", "postgresql"])
def old(request, tmp_path, monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-such-pgpass"))
    if request.param == "sqlite":
        return sqlite_v1(str(tmp_path / "registry.db"))
    return postgres_v1(request.getfixturevalue("pg_cluster"), tmp_path)


def admin(capsys, *args):
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_an_older_registry_is_refused_until_migrated(old, tmp_path, capsys):
    current = old.module.SCHEMA_VERSION
    kek = str(tmp_path / "kek")
    refusal = (f"registry schema version 1 is older than this Tessera's ({current}); "
               f"migrate it: tessera-admin migrate --registry")

    # a server's open (the module's instantiate) and every other command refuse it, untouched
    with pytest.raises(RegistryError) as exc:
        open_realm(old.url, kek)
    assert refusal in str(exc.value) and old.url.split("?")[0] in str(exc.value)
    assert PASSWORD not in str(exc.value)
    for args in (("list",), ("init", "--realm", "example.net")):
        code, out, err = admin(capsys, "--registry", old.url, "--kek", kek, *args)
        assert (code, out) == (1, "") and refusal in err, (args, err)
    assert not os.path.exists(kek)  # init refused before writing a KEK
    assert old.version() == 1

    # --check says so and changes nothing
    code, out, err = admin(capsys, "--registry", old.url, "migrate", "--check")
    assert (code, err) == (3, "")
    assert f"schema 1 -> {current}" in out and "step 1 -> 2:" in out and f"step {current - 1} -> {current}:" in out
    assert "step 0 -> 1" not in out and "CREATE INDEX" in out and "device_revoked" in out
    assert "a migration is needed" in out and PASSWORD not in out
    assert old.version() == 1

    # migrate: every step, then it opens and keeps its rows
    code, out, err = admin(capsys, "--registry", old.url, "migrate")
    assert (code, err) == (0, "") and f"schema 1 -> {current}" in out and f"migrated: schema {current}" in out
    assert old.version() == current
    reg = open_registry(old.url)
    try:
        assert reg.get_device("SN-OLD").state is DeviceState.ENROLLED
    finally:
        reg.close()
    assert admin(capsys, "--registry", old.url, "--kek", kek, "init", "--realm", "example.net")[0] == 0
    code, out, _ = admin(capsys, "--registry", old.url, "--kek", kek, "list")
    assert code == 0 and "SN-OLD" in out and "1 device(s) in realm example.net" in out
    open_realm(old.url, kek).registry.close()

    # idempotent: already current
    for args in (("migrate",), ("migrate", "--check")):
        code, out, err = admin(capsys, "--registry", old.url, *args)
        assert (code, err) == (0, "") and f"already at {current}: nothing to migrate" in out


def test_a_newer_registry_is_refused_by_migrate_too(old, tmp_path, capsys):
    current = old.module.SCHEMA_VERSION
    assert admin(capsys, "--registry", old.url, "migrate")[0] == 0  # control: it migrates
    old.set_version(current + 1)
    newer = f"registry schema version {current + 1} is newer than this Tessera's ({current}); upgrade Tessera"
    for args in (("migrate",), ("migrate", "--check"), ("--kek", str(tmp_path / "kek"), "list")):
        code, out, err = admin(capsys, "--registry", old.url, *args)
        assert (code, out) == (1, "") and newer in err, (args, err)
    assert old.version() == current + 1
    with pytest.raises(RegistryError, match="upgrade Tessera"):
        open_realm(old.url, str(tmp_path / "kek"))


def test_migrate_needs_a_registry(tmp_path, capsys, pg_cluster):
    missing = tmp_path / "none.db"
    code, out, err = admin(capsys, "--registry", f"sqlite://{missing}", "migrate")
    assert (code, out) == (1, "") and f"no registry at {missing}" in err and not missing.exists()
    # an empty PostgreSQL database is no realm's registry: said, and left empty
    name = f"empty_{next(_dbs)}"
    pg_cluster.create_database(name)
    code, out, err = admin(capsys, "--registry", pg_cluster.url(name), "migrate", "--check")
    assert (code, out) == (1, "") and "no realm's registry in" in err and "tessera-admin init" in err
    assert pg_cluster.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", name).strip() == "0"
    # a password in the URL: refused without echoing it
    code, out, err = admin(capsys, "--registry", f"postgresql://tessera:s3cret-pw@127.0.0.1:{pg_cluster.port}/x",
                           "migrate")
    assert code == 1 and "carries a password" in err and "s3cret-pw" not in err
    code, _, err = admin(capsys, "migrate", "--bogus")
    assert code == 2 and "unrecognized arguments: --bogus" in err



def _old_server_config(tmp_path, tls_dir):
    from tessera.lab import radiusd
    from tests.gate import require

    require("root", "freeradius")
    old = sqlite_v1(str(tmp_path / "registry.db"))
    cfg = radiusd.RadiusConfig(db=old.url, kek=tmp_path / "kek", tls_dir=tls_dir, server_id="radius-old")
    return old, radiusd.build_config(tmp_path / "raddb", cfg)


def _check(raddb) -> tuple[int, str]:
    import subprocess
    r = subprocess.run(["freeradius", "-XC", "-d", str(raddb)], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


def test_a_server_refuses_to_start_on_an_older_registry(tmp_path, tls_dir, capsys):
    """`freeradius -XC` (instantiate opens the realm, as every start does) on a version-1 file is
    refused and leaves it at version 1; after `tessera-admin migrate` and `init` it starts."""
    old, raddb = _old_server_config(tmp_path, tls_dir)
    code, out = _check(raddb)
    assert code != 0 and "tessera: cannot open the realm:" in out and 'Instantiation failed for module "tessera"' in out
    assert old.version() == 1
    assert admin(capsys, "--registry", old.url, "migrate")[0] == 0
    assert admin(capsys, "--registry", old.url, "--kek", str(tmp_path / "kek"), "init", "--realm", "example.net")[0] == 0
    code, out = _check(raddb)  # control: the same config starts now
    assert code == 0 and "Configuration appears to be OK" in out, out[-3000:]


def test_the_server_log_names_both_versions_and_the_command(tmp_path, tls_dir):
    old, raddb = _old_server_config(tmp_path, tls_dir)
    code, out = _check(raddb)
    current = sqlite_registry.SCHEMA_VERSION
    assert code != 0 and (f"registry schema version 1 is older than this Tessera's ({current}); migrate it: "
                          f"tessera-admin migrate --registry {old.url}") in out
