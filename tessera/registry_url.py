"""Which registry a server or `tessera-admin` uses, named by one URL.

- `sqlite:///var/lib/tessera/registry.db`: the embedded SQLite file (an absolute path after
  `sqlite://`); a bare path (`/var/lib/tessera/registry.db`, `registry.db`) means the same, as
  the `--db` options always did.
- `postgresql://tessera@db.example:5432/tessera` (or `postgres://`): a shared PostgreSQL
  database, with any libpq parameter as a query parameter (`?sslmode=verify-full`,
  `?host=/run/tessera-pg` for a unix socket directory, `?connect_timeout=5`). The password is
  never in the URL, since URLs end up on command lines, in `ps` and in logs: a URL with one is
  refused. libpq reads it from its own places: `passfile=/etc/tessera/pgpass` in the URL, the
  `PGPASSFILE` environment variable, or `~/.pgpass` (mode 0600, lines
  `host:port:database:user:password`).

`display_url` gives the form to print or log.
"""

from __future__ import annotations

import os
import re

from .registry import Registry, RegistryError

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_registry(url: str, **options) -> Registry:
    """The registry `url` names (see the module docstring); RegistryError for a URL it cannot
    take, `RegistryUnavailableError` when the database cannot be reached. `options` go to the
    backend's constructor (`migrate=True` for `tessera-admin migrate` alone)."""
    if url.startswith(POSTGRES_SCHEMES):
        from psycopg import ProgrammingError, conninfo

        from .pg_registry import PostgresRegistry
        try:
            params = conninfo.conninfo_to_dict(url)
        except ProgrammingError:
            raise RegistryError(f"not a valid PostgreSQL URL: {display_url(url)}") from None
        if params.get("password"):
            raise RegistryError(f"the registry URL {display_url(url)} carries a password: take it out and put it "
                                f"in ~/.pgpass, a file named by PGPASSFILE or a passfile= parameter")
        return PostgresRegistry(url, **options)
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:")
        if not path.startswith("///"):
            raise RegistryError(f"a SQLite registry URL is sqlite:// and an absolute path "
                                f"(sqlite:///var/lib/tessera/registry.db), not {url!r}")
        path = path[2:]
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url):
        raise RegistryError(f"unknown registry URL scheme in {display_url(url)}: use sqlite:///path or postgresql://")
    else:
        path = url
    from .sqlite_registry import SQLiteRegistry
    if path != ":memory:" and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise RegistryError(f"no directory for the registry file {path}")
    return SQLiteRegistry(path, **options)


def display_url(url: str) -> str:
    """`url` with any password replaced by ***, for messages and logs."""
    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@?#]*):[^@/?#]*@", r"\1:***@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url, flags=re.I)
