"""The private PostgreSQL cluster the server tests share (one per session, `pg_cluster` in
conftest.py): `tessera.lab.postgres.private_cluster` on 127.0.0.1, its role given PASSWORD for
TCP logins. The password holds a colon, a space and a '!': a passfile escapes the first, libpq
quotes the others, so the tests that log in with it show both done right."""

from __future__ import annotations

from typing import Iterator

from tests.gate import require

PASSWORD = "pw-Cl1:x!r9 s"


def cluster() -> Iterator:
    require("root", "postgresql")
    from tessera.lab.postgres import private_cluster
    with private_cluster(address="127.0.0.1") as c:
        c.psql(f"ALTER ROLE \"{c.role}\" PASSWORD '{PASSWORD}'")
        yield c
