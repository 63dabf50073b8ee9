"""tools/install-radius gives each server of a realm its own id (issue 8, item 1).

A request names the server it is addressed to, and that is what lets each server's in-memory
replay cache suffice; two servers with one id would each accept what the other accepted. The
installer records every server it installs in the registry's ``server`` table (id, host, first
seen) and refuses, before it writes any FreeRADIUS configuration:

* the default id for a server joining a realm that exists already (the realm's first server,
  made with ``--init-realm``, may take it; so may a re-install on the host that holds it);
* an id another host holds, explicit or not; the message names the ids in use.

The scratch root is like test_install.py's (a copy of Debian's /etc/freeradius under /var/tmp);
the registry is freerad's, so the test reads and edits it as freerad.
"""

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.gate import needs_freeradius
from tests.server.installed import registry

pytestmark = needs_freeradius
REPO = Path(__file__).resolve().parents[2]
OTHER_HOST = "radius-a.other.example"


@pytest.fixture(scope="module")
def root():
    root = Path(tempfile.mkdtemp(prefix="tessera-serverid-", dir="/var/tmp"))
    try:
        os.chmod(root, 0o755)
        (root / "etc" / "freeradius").mkdir(parents=True)
        subprocess.run(["cp", "-a", "/etc/freeradius/3.0", str(root / "etc" / "freeradius")], check=True)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def install(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "tools" / "install-radius"), "--root", str(root), *args],
                          capture_output=True, text=True, timeout=600)




def configured_id(root: Path) -> str:
    text = (root / "etc" / "freeradius" / "3.0" / "mods-available" / "tessera").read_text()
    return next(line.split("=", 1)[1].strip().strip('"') for line in text.splitlines()
                if line.strip().startswith("server_id"))


def test_install_radius_refuses_a_second_server_without_its_own_id(root):
    host = socket.gethostname()
    # the realm's first server: created here, the default id is fine and is recorded
    r = install(root, "--init-realm", "ids.example")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "server id 'radius1' recorded for host" in r.stdout
    assert registry(root, "SELECT server_id, host FROM server") == [("radius1", host)]
    assert configured_id(root) == "radius1"
    # re-installing that same server (same host, same id) is fine
    r = install(root, "--pip-arg=--no-deps")
    assert r.returncode == 0 and "is already this host's" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]

    # the registry now serves a second host's server (as when it is shared or copied to another
    # machine): radius1 belongs to the other host, and this installation is the second server
    registry(root, "UPDATE server SET host = ? WHERE server_id = 'radius1'", OTHER_HOST)
    mod = root / "etc" / "freeradius" / "3.0" / "mods-available" / "tessera"
    before = mod.read_bytes()
    r = install(root, "--pip-arg=--no-deps")  # the default id, silently: refused
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert (f"REFUSED: server id 'radius1' is already taken in this realm by host '{OTHER_HOST}'; "
            f"ids in use: radius1 (host {OTHER_HOST}). Give this server its own id with --server-id") in r.stdout
    r = install(root, "--server-id", "radius1", "--pip-arg=--no-deps")  # explicitly: still the other's
    assert r.returncode == 2 and "already taken in this realm by host" in r.stdout, r.stdout[-3000:]
    assert mod.read_bytes() == before  # refused before any configuration was written
    assert registry(root, "SELECT server_id, host FROM server") == [("radius1", OTHER_HOST)]

    # control: the same installation with an id of its own goes through and is recorded
    r = install(root, "--server-id", "radius2", "--pip-arg=--no-deps")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert configured_id(root) == "radius2"
    assert registry(root, "SELECT server_id, host FROM server ORDER BY server_id") == \
        [("radius1", OTHER_HOST), ("radius2", host)]
    assert ("server-added", "radius2 on host " + host) in registry(root, "SELECT event, detail FROM audit")


def test_install_radius_refuses_the_default_id_for_a_realm_whose_servers_were_never_recorded(root):
    """A realm installed before servers were recorded (or made with tessera-admin alone) may
    already have a server called radius1: joining it takes an explicit id."""
    if not (root / "var" / "lib" / "tessera" / "registry.db").exists():
        r = install(root, "--init-realm", "ids.example", "--server-id", "seed")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    registry(root, "DELETE FROM server")
    r = install(root, "--pip-arg=--no-deps")
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert ("REFUSED: this realm exists already (ids in use: none recorded): a second server must not take "
            "the default id 'radius1' silently") in r.stdout
    assert registry(root, "SELECT server_id FROM server") == []
    r = install(root, "--server-id", "radius3", "--pip-arg=--no-deps")  # control
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert registry(root, "SELECT server_id, host FROM server") == [("radius3", socket.gethostname())]
