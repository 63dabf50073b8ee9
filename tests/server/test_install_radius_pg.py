"""tools/install-radius with the registry on PostgreSQL: the README's commands for several hosts,
as printed (issue 10, "Installing a second and third server").

How this works: the session's private cluster (``pg_cluster``, TCP on 127.0.0.1, scram-sha-256)
plays the README's ``db.example.net``: its ``tessera`` database is made afresh for the test, and
the runs get ``PGHOSTADDR=127.0.0.1`` and ``PGPORT`` in their environment -- the test's stand-in
for DNS; libpq still takes the host name for the passfile lookup, so the README's URL and a
``pgpass`` line for ``db.example.net`` are used unchanged (the test's own connections give
``hostaddr``/``port`` in their URL). Each server is a scratch root (a copy
of Debian's /etc/freeradius under /var/tmp) and a ``tools/install-radius`` wrapper pointed at it,
in the operator's working directory that holds ``pgpass``, the secret files and, for the joining
servers, the first server's ``kek``. Every server's ``freeradius -XC`` opens the realm in
PostgreSQL as freerad, with the password from the installed /etc/tessera/pgpass.
"""

import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from tessera.realm import open_realm

from tests.gate import needs_freeradius
from tests.server.pgcluster import PASSWORD
from tests.server.test_install_radius_idempotent import differences, mismatched_cert, raddb, scratch, tree

pytestmark = needs_freeradius
REPO = Path(__file__).resolve().parents[2]
URL = "postgresql://tessera@db.example.net/tessera"
OTHER_HOST = "radius-b.other.example"
__all__ = ["scratch"]  # the fixture, imported


def readme_blocks() -> list[str]:
    """The shell blocks of README.md's "Several hosts" section, as printed."""
    text = (REPO / "README.md").read_text()
    part = text[text.index("### Several hosts: the registry on PostgreSQL"):]
    part = part[:part.index("\n## ")]
    return re.findall(r"```sh\n(.*?)```", part, re.S)


def changed(before: dict, root: Path, r) -> list[str]:
    """What under root differs from `before`, but for a venv the run said it reinstalled
    (someone edited the checkout's tessera meanwhile; a reinstalled venv stays, by design)."""
    changed = differences(before, tree(root))
    if "differs from this checkout's: reinstalling it" in r.stdout:
        changed = [c for c in changed if not c.startswith("usr/local/lib/tessera/venv/")]
    return changed


def registry_item(root: Path) -> str:
    text = (raddb(root) / "mods-available" / "tessera").read_text()
    return re.search(r'^\s*registry = "([^"]*)"', text, re.M).group(1)


@pytest.fixture
def database(pg_cluster, monkeypatch):
    """The cluster's ``tessera`` database, empty, reached as db.example.net (see the docstring)."""
    c = pg_cluster

    def fresh():
        c.psql('DROP DATABASE IF EXISTS tessera WITH (FORCE)')
        c.psql(f'CREATE DATABASE tessera OWNER "{c.role}"')
    fresh()
    for name in ("PGPASSWORD", "PGPASSFILE", "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER"):
        monkeypatch.delenv(name, raising=False)
    c.env = dict(os.environ, PGHOSTADDR="127.0.0.1", PGPORT=str(c.port))
    c.here = f"hostaddr=127.0.0.1&port={c.port}"  # the same, for the test's own connections
    try:
        yield c
    finally:
        fresh()


def operator_dir(top: Path, root: Path, name: str) -> Path:
    work = top / name
    (work / "tools").mkdir(parents=True)
    wrapper = work / "tools" / "install-radius"
    wrapper.write_text(f'#!/bin/sh\nexec {REPO}/tools/install-radius --root {root} "$@"\n')
    wrapper.chmod(0o755)
    for f in ("nas.secret", "device.secret", "pgpass"):
        if (top / f).exists():
            shutil.copy2(top / f, work / f)
    return work


def sh(block: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run(["sh", "-ec", block], cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    r.out = r.stdout + r.stderr
    return r


def install(root: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([str(REPO / "tools" / "install-radius"), "--root", str(root), *args],
                       capture_output=True, text=True, timeout=900, env=env)
    r.out = r.stdout + r.stderr
    return r


def test_readme_servers_on_postgresql_work_as_printed(scratch, database):
    c = database
    top = scratch.top
    first_block, join_block = readme_blocks()
    assert f"--registry {URL} --pg-passfile pgpass" in first_block and "--init-realm example.net" in first_block
    assert "--server-id radius2 --kek-file kek" in join_block
    for f, text in (("nas.secret", "n" * 40), ("device.secret", "d" * 40),
                    ("pgpass", f"db.example.net:*:tessera:{c.role}:{PASSWORD.replace(':', chr(92) + ':')}")):
        (top / f).write_text(text + "\n")
        os.chmod(top / f, 0o600)

    # the first server creates the realm in PostgreSQL
    first = scratch()
    r = sh(first_block, operator_dir(top, first, "op1"), c.env)
    assert r.returncode == 0, r.out[-4000:]
    assert "creating realm example.net in postgresql://tessera@db.example.net/tessera?passfile=" in r.stdout
    assert "checking the configuration as freerad (freeradius -XC)" in r.stdout and "install-radius: done:" in r.stdout
    installed = first / "etc" / "tessera" / "pgpass"
    st = installed.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, pwd.getpwnam("freerad").pw_uid)
    assert registry_item(first) == f"{URL}?passfile={installed}"
    mod = (raddb(first) / "mods-available" / "tessera").read_text()
    assert PASSWORD not in mod and PASSWORD not in r.out and "pw-Cl1" not in r.out
    assert not (first / "var" / "lib" / "tessera" / "registry.db").exists()  # no SQLite file

    # the second joins with the first's KEK and its own id
    second = scratch()
    work = operator_dir(top, second, "op2")
    shutil.copy2(first / "var" / "lib" / "tessera" / "kek", work / "kek")
    r = sh(join_block, work, c.env)
    assert r.returncode == 0, r.out[-4000:]
    assert "registry postgresql://tessera@db.example.net/tessera?passfile=" in r.stdout and "realm example.net" in r.stdout
    assert registry_item(second) == f"{URL}?passfile={second}/etc/tessera/pgpass"
    assert "freeradius -XC" in r.stdout and "install-radius: done:" in r.stdout
    # the realm, as a server sees it: both ids recorded, in the one database
    realm = open_realm(f"{URL}?passfile={installed}&{c.here}", str(first / "var" / "lib" / "tessera" / "kek"))
    try:
        assert realm.name == "example.net"
        assert {s.server_id for s in realm.registry.list_servers()} == {"radius1", "radius2"}
    finally:
        realm.registry.close()

    # the same command again changes nothing
    before = tree(second)
    r = sh(join_block, work, c.env)
    assert r.returncode == 0, r.out[-3000:]
    assert "nothing changed: installed as asked already" in r.stdout or "reinstalling it" in r.stdout
    assert changed(before, second, r) == []

    # a third server: radius2, held by another host, is refused before writing; radius3 joins
    c.psql(f"UPDATE server SET host = '{OTHER_HOST}' WHERE server_id = 'radius2'", "tessera")
    third = scratch()
    work3 = operator_dir(top, third, "op3")
    shutil.copy2(work / "kek", work3 / "kek")
    pristine = tree(third)
    r = sh(join_block, work3, c.env)
    assert r.returncode != 0 and f"server id 'radius2' is already taken in this realm by host '{OTHER_HOST}'" in r.stdout
    assert changed(pristine, third, r) == []  # no venv, KEK or passfile left behind either
    r = sh(join_block.replace("radius2", "radius3"), work3, c.env)
    assert r.returncode == 0, r.out[-3000:]
    realm = open_realm(f"{URL}?passfile={installed}&{c.here}", str(work / "kek"))
    try:
        assert [(s.server_id, s.host) for s in realm.registry.list_servers()] == \
            [("radius1", socket.gethostname()), ("radius2", OTHER_HOST), ("radius3", socket.gethostname())]
    finally:
        realm.registry.close()


def test_registry_refusals_and_a_changed_url_rolled_back(scratch, database):
    c = database
    top = scratch.top
    pgpass = top / "pgpass"
    pgpass.write_text(f"db.example.net:*:tessera:{c.role}:{PASSWORD.replace(':', chr(92) + ':')}\n")
    os.chmod(pgpass, 0o600)
    nas = top / "nas.secret"
    nas.write_text("n" * 40 + "\n")
    os.chmod(nas, 0o600)
    common = ("--nas-client", "192.0.2.1", "--nas-secret-file", str(nas))
    root = scratch()

    # refused before anything is written: a password in the URL (never echoed), a passfile
    # without a PostgreSQL URL, a KEK file that is no KEK
    pristine = tree(root)
    for args, reason in (
            (["--registry", "postgresql://tessera:s3cret-pw@db.example.net/tessera"], "carries a password"),
            (["--pg-passfile", str(pgpass)], "--pg-passfile goes with a --registry postgresql://"),
            (["--registry", "mysql://db.example.net/x"], "--registry must be sqlite:///"),
            (["--registry", URL, "--kek-file", str(nas)], "is not a KEK (32 bytes")):
        r = install(root, c.env, *common, *args)
        assert r.returncode == 2 and reason in r.stderr and "s3cret-pw" not in r.out, (args, r.out[-2000:])
    assert changed(pristine, root, r) == []

    # a server on SQLite first (the default), then repointed at PostgreSQL with a realm there:
    # the check fails (a mismatched server key) and the module's registry item is put back
    r = install(root, c.env, "--init-realm", "sqlite.example", *common)
    assert r.returncode == 0, r.out[-3000:]
    assert registry_item(root) == f"sqlite://{root}/var/lib/tessera/registry.db"
    kek = root / "var" / "lib" / "tessera" / "kek"
    admin = [str(REPO / ".venv" / "bin" / "tessera-admin"), "--registry", f"{URL}?passfile={pgpass}&{c.here}",
             "--kek"]
    # a realm in PostgreSQL this server's KEK does not open: refused before writing
    other_kek = top / "other.kek"
    subprocess.run([*admin, str(other_kek), "init", "--realm", "pg.example"], check=True, capture_output=True)
    before = tree(root)
    r = install(root, c.env, *common, "--registry", URL, "--pg-passfile", str(pgpass))
    assert r.returncode == 2 and f"the KEK {kek} does not open the realm" in r.stdout, r.out[-3000:]
    assert changed(before, root, r) == []

    # the realm anew with this server's KEK: a URL change with a failing check is rolled back
    c.psql("DROP SCHEMA public CASCADE; CREATE SCHEMA public AUTHORIZATION tessera", "tessera")
    subprocess.run([*admin, str(kek), "init", "--realm", "pg.example"], check=True, capture_output=True)
    cert, wrong_key = mismatched_cert(top)
    r = install(root, c.env, *common, "--registry", URL, "--pg-passfile", str(pgpass), "--server-id", "radius1",
                "--server-cert", cert, "--server-key", wrong_key)
    assert r.returncode == 1 and "key values mismatch" in r.stdout, r.out[-3000:]
    assert changed(before, root, r) == []  # the module config, and no /etc/tessera/pgpass
    # control: without the bad key the change goes through and is reported
    r = install(root, c.env, *common, "--registry", URL, "--pg-passfile", str(pgpass), "--server-id", "radius1")
    assert r.returncode == 0, r.out[-3000:]
    assert "3.0/mods-available/tessera" in r.stdout.split("changed: ")[1] and "etc/tessera/pgpass" in r.stdout, r.stdout
    assert registry_item(root) == f"{URL}?passfile={root}/etc/tessera/pgpass"
    # a later run without --registry (another client) keeps the installed registry
    r = install(root, c.env, "--nas-client", "192.0.2.9", "--nas-secret-file", str(nas))
    assert r.returncode == 0 and "as installed (--registry URL to change it)" in r.stdout, r.out[-3000:]
    assert registry_item(root) == f"{URL}?passfile={root}/etc/tessera/pgpass"
    # and with --pg-passfile alone, it keeps it too, naming the passfile once
    r = install(root, c.env, "--pg-passfile", str(pgpass))
    assert r.returncode == 0 and ("nothing changed" in r.stdout or "reinstalling it" in r.stdout), r.out[-3000:]
    assert registry_item(root) == f"{URL}?passfile={root}/etc/tessera/pgpass"

    # the realm's schema older than this Tessera: refused before writing, naming tessera-admin migrate
    from tessera import pg_registry
    current = pg_registry.SCHEMA_VERSION
    c.psql(f"UPDATE schema_version SET version = {current - 1}", "tessera")
    before = tree(root)
    r = install(root, c.env, *common, "--registry", URL, "--pg-passfile", str(pgpass), "--server-id", "radius1")
    assert r.returncode == 2, r.out[-3000:]
    assert f"registry schema version {current - 1} is older than this Tessera's ({current})" in r.stdout
    assert "tessera-admin migrate --registry" in r.stdout
    assert changed(before, root, r) == []
