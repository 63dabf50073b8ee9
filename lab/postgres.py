"""A private PostgreSQL 15 cluster for the tests and the lab, never the packaged one.

`private_cluster()` runs Debian's `initdb` as the `postgres` user (initdb refuses root) with
`--no-sync -E UTF8 --locale=C.UTF-8` into a fresh temporary directory, starts `postgres -D`
directly (so the PID held is the postmaster's: `pg_ctl` would re-parent it to PID 1) listening
on a private unix socket directory only, or also on `address` (a namespace's address, with
scram-sha-256 from `hba_subnet`), waits until line 8 of `postmaster.pid` says `ready`, creates a
role and a database, and yields a `Cluster`. On the way out, also after a failure, it stops the
postmaster with SIGINT (a fast shutdown: SIGTERM would wait for every client to disconnect),
waits for it by PID and removes the directory. `/etc/postgresql` and the packaged `15/main`
cluster are never read or touched: the configuration is given on the command line.

The cluster runs with `fsync=off` (it is thrown away: nothing must survive a crash). `netns`
starts it inside a network namespace (the multi-host lab, `tessera.lab.topology`).
`Cluster.stop()` / `Cluster.start()` stop the postmaster by its PID (SIGINT) and start it again
on the same data directory, for fault injection; `Cluster.set_password` gives the role a
password through psql's stdin and `write_passfile` writes a libpq passfile (0600) for it.

Measured on this machine kind (../shared/notes/postgresql.md): initdb to ready in 0.9-1.8 s,
a fast stop in 40-80 ms.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator

BIN = "/usr/lib/postgresql/15/bin"
PG_USER = "postgres"


class ClusterError(RuntimeError):
    """The private cluster did not come up (the reason names the step and carries the log tail)."""


@dataclass
class Cluster:
    """A running private cluster: where it is and how to reach it as its superuser or the role."""

    datadir: str
    socket_dir: str
    port: int
    pid: int
    role: str
    database: str
    address: str | None = None
    argv: list[str] | None = None  # how the postmaster was started (start() runs it again)
    log: str | None = None
    proc: subprocess.Popen | None = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown by PID (SIGINT: clients are disconnected), then SIGQUIT; reaps it.
        Safe to call twice."""
        if not self.running():
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGQUIT)  # immediate shutdown
            self.proc.wait(timeout)

    def start(self, timeout: float = 30.0) -> None:
        """Start the postmaster again on the same data directory (after `stop`); waits until
        it is ready. `pid` is the new postmaster's."""
        if self.running():
            return
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        _wait_ready(self.proc, os.path.join(self.datadir, "postmaster.pid"), self.log, timeout)

    def set_password(self, password: str) -> None:
        """Give the role a password (scram-sha-256), set through psql's stdin, never argv."""
        quoted = password.replace("'", "''")
        self.psql(f"SET password_encryption = 'scram-sha-256'; ALTER ROLE \"{self.role}\" PASSWORD '{quoted}'")

    def conninfo(self, dbname: str | None = None, user: str | None = None) -> str:
        """A libpq conninfo over the private unix socket (peer-free: trust on the socket)."""
        return f"host={self.socket_dir} port={self.port} dbname={dbname or self.database} user={user or self.role}"

    def url(self, dbname: str | None = None, user: str | None = None) -> str:
        """The same as a `postgresql://` URL (the socket directory as `host=` parameter)."""
        return (f"postgresql://{user or self.role}@/{dbname or self.database}"
                f"?host={self.socket_dir}&port={self.port}")

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL as the cluster's superuser through psql (for setup, not for the code under
        test). The SQL goes on stdin, so a password it sets never shows in `ps`."""
        out = subprocess.run(_as_postgres([f"{BIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At",
                                           "-h", self.socket_dir, "-p", str(self.port), "-d", dbname, "-f", "-"]),
                             input=sql, capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise ClusterError(f"psql failed: {out.stderr.strip()}")
        return out.stdout

    def create_database(self, name: str) -> str:
        """A fresh database owned by the role; returns its conninfo."""
        self.psql(f'CREATE DATABASE "{name}" OWNER "{self.role}"')
        return self.conninfo(name)


def write_passfile(path: str, host: str, port: int, database: str, role: str, password: str) -> str:
    """A libpq passfile (``host:port:database:user:password``, 0600 from its creation) for one
    server; `:` and `\\` in a field are escaped as libpq reads them. Returns the path."""
    esc = [str(v).replace("\\", "\\\\").replace(":", "\\:") for v in (host, port, database, role, password)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(":".join(esc) + "\n")
    return path


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv  # already an unprivileged user: run as ourselves
    return ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups", "--"] + argv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, pidfile: str, log: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"postgres exited with {proc.returncode} while starting: {_tail(log)}")
        try:
            with open(pidfile) as f:
                lines = f.read().splitlines()
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    raise ClusterError(f"postgres not ready after {timeout:.0f} s: {_tail(log)}")


def _tail(path: str, n: int = 10) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().splitlines()[-n:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def private_cluster(role: str = "tessera", database: str = "tessera", *, address: str | None = None,
                    hba_subnet: str | None = None, port: int | None = None, netns: str | None = None,
                    start_timeout: float = 30.0) -> Iterator[Cluster]:
    """Run a throwaway cluster (see the module docstring). `address`: also listen on TCP there,
    `hba_subnet` (CIDR) allowed with scram-sha-256; `netns`: start the postmaster in that
    network namespace (`ip netns exec`, which execs, so the PID stays the postmaster's)."""
    base = tempfile.mkdtemp(prefix="tessera-pg-")
    datadir, socket_dir, log = os.path.join(base, "data"), os.path.join(base, "run"), os.path.join(base, "log")
    cluster = None
    try:
        os.mkdir(socket_dir, 0o700)
        if os.geteuid() == 0:
            pw = pwd.getpwnam(PG_USER)
            os.chmod(base, 0o755)
            for path in (socket_dir,):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            os.chmod(socket_dir, 0o711)  # root reaches the socket; nobody lists the directory
            os.chown(base, pw.pw_uid, pw.pw_gid)
        out = subprocess.run(_as_postgres([f"{BIN}/initdb", "-D", datadir, "-U", PG_USER, "--no-sync",
                                           "-E", "UTF8", "--locale=C.UTF-8", "--auth-local=trust",
                                           "--auth-host=scram-sha-256"]),
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise ClusterError(f"initdb failed: {out.stderr.strip()[-500:]}")
        if hba_subnet:
            with open(os.path.join(datadir, "pg_hba.conf"), "a") as f:
                f.write(f"host all all {hba_subnet} scram-sha-256\n")
        port = port or _free_port()
        argv = [f"{BIN}/postgres", "-D", datadir, "-p", str(port), "-k", socket_dir,
                "-c", f"listen_addresses={address or ''}", "-c", "fsync=off", "-c", "full_page_writes=off",
                "-c", "logging_collector=off", "-c", "max_connections=100"]
        argv = _as_postgres(argv)
        if netns:
            argv = ["ip", "netns", "exec", netns] + argv
        cluster = Cluster(datadir, socket_dir, port, 0, role, database, address, argv, log)
        cluster.start(start_timeout)
        cluster.psql(f'CREATE ROLE "{role}" LOGIN')
        cluster.psql(f'CREATE DATABASE "{database}" OWNER "{role}"')
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()  # fast shutdown (SIGINT): clients are disconnected
        shutil.rmtree(base, ignore_errors=True)
