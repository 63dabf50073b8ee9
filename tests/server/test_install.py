"""tools/install-radius into a scratch copy of Debian's layout, then radiusd from it as freerad.

The scratch root lives under /var/tmp (not /tmp/pytest-of-root, which freerad cannot enter).
The installer makes the venv (pip, network or cache), the realm (as freerad), the configs and a
lab server certificate; the test points logdir/run_dir into the scratch root, starts
``freeradius -f`` as freerad by PID, and registers a device over RADIUS: a real answer.
"""

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tessera.device import DeviceClient
from tessera.identity import DeviceKey, ServerEntry
from tessera.lab import radiusd
from tessera.radius.client import RadiusClient, Server

from tests.gate import needs_freeradius
from tests.server.installed import AS_FREERAD

pytestmark = needs_freeradius
REPO = Path(__file__).resolve().parents[2]
ADDRESS = "127.0.0.1"
SECRET = "install-test-secret"  # the devices'
NAS_SECRET = "install-test-nas-secret"  # the switches'


def drop_block(text: str, opening: str) -> str:
    """Remove the brace-balanced config block that starts with ``opening``."""
    start = text.index(opening)
    depth, i = 0, start
    while True:
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[:start] + text[i + 1:]
        i += 1


@pytest.fixture(scope="module")
def scratch_root():
    root = Path(tempfile.mkdtemp(prefix="tessera-install-", dir="/var/tmp"))
    try:
        os.chmod(root, 0o755)
        (root / "etc" / "freeradius").mkdir(parents=True)
        subprocess.run(["cp", "-a", "/etc/freeradius/3.0", str(root / "etc" / "freeradius")], check=True)
        # as an operator would: drop Debian's sample "localhost" client (secret testing123, no
        # Message-Authenticator requirement), which also holds the address the test client uses
        clients = root / "etc" / "freeradius" / "3.0" / "clients.conf"
        clients.write_text(drop_block(clients.read_text(), "client localhost {"))
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(scratch_root):
    """tools/install-radius run once into the scratch root; yields (root, port)."""
    port = radiusd.free_udp_port(ADDRESS)
    nas_port = next(p for p in iter(lambda: radiusd.free_udp_port(ADDRESS), None) if p != port)
    r = subprocess.run([str(REPO / "tools" / "install-radius"), "--root", str(scratch_root),
                        "--init-realm", "lab.example", "--server-id", "radius-1",
                        "--listen-address", ADDRESS, "--device-port", str(port), "--nas-port", str(nas_port),
                        "--radsec-port", str(radiusd.free_tcp_port(ADDRESS)),  # not 2083: parallel runs
                        "--device-client", ADDRESS, "--device-secret", SECRET,
                        "--nas-client", ADDRESS, "--nas-secret", NAS_SECRET],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return scratch_root, port


PRIVATE_SERVER = """
import sys
from pathlib import Path
from tests.server.realserver import make_server
from tessera.lab.pki import LabPKI
import time
d = Path(sys.argv[1])
(d / "stub.json").write_text('{"devices": {}}')
(d / "kek").write_bytes(b"-")
tls = LabPKI.generate(time.time()).install_server_files(d / "tls", "radius.lab", time.time())
with make_server(d, db=d / "stub.json", kek=d / "kek", tls_dir=tls, realm_opener="stub_realm:open_realm",
                 python_path=(Path("tests/server").resolve(),)) as server:
    print("private server answered Status-Server, pid", server.proc.pid)
"""


def test_private_server_ignores_a_system_tree_with_tessera_installed(installed, tmp_path):
    """The lab and the tests build their FreeRADIUS from the repository alone: with the
    system's /etc/freeradius/3.0 replaced (in a private mount namespace) by a tree that has
    Tessera installed, Debian's sites disabled, clients added and the EAP module removed, a
    private server still builds, passes ``-XC`` and answers."""
    root, _ = installed
    system = root / "etc" / "freeradius" / "3.0"
    assert (system / "mods-enabled" / "tessera").is_symlink()  # what used to break the copy
    (system / "mods-enabled" / "eap").unlink(missing_ok=True)
    (system / "sites-enabled" / "inner-tunnel").unlink(missing_ok=True)
    with open(system / "clients.conf", "a") as f:
        f.write("\nclient switches {\n\tipaddr = 192.0.2.0/24\n\tsecret = operators-own\n}\n")
    work = tmp_path / "private"
    work.mkdir()
    script = (f"mount --bind {system} /etc/freeradius/3.0 && "
              f"ls /etc/freeradius/3.0/mods-enabled/tessera >/dev/null && "
              f'exec "$0" -c "$1" {work}')
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                        str(REPO / ".venv" / "bin" / "python"), PRIVATE_SERVER],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "private server answered Status-Server" in r.stdout


def test_install_radius_into_scratch_layout_serves_as_freerad(installed):
    scratch_root, port = installed
    raddb = scratch_root / "etc" / "freeradius" / "3.0"
    assert not (raddb / "sites-enabled" / "default").exists()
    assert (raddb / "mods-enabled" / "tessera").is_symlink()

    # private log and run directories, writable by freerad, instead of /var/log and /run
    conf = raddb / "radiusd.conf"
    text = radiusd.set_option(conf.read_text(), "logdir", str(scratch_root / "var" / "log" / "freeradius"))
    conf.write_text(radiusd.set_option(text, "run_dir", str(scratch_root / "run" / "freeradius")))
    for d in ("var/log/freeradius", "run/freeradius"):
        (scratch_root / d).mkdir(parents=True, exist_ok=True)
        shutil.chown(scratch_root / d, "freerad", "freerad")

    server = radiusd.RadiusServer(raddb, ADDRESS, port, SECRET, run_prefix=AS_FREERAD)
    server.output = scratch_root / "radiusd.out"
    server.log_dir = scratch_root / "var" / "log" / "freeradius"
    try:
        server.start()
        status = Path(f"/proc/{server.pid}/status").read_text()
        uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        assert int(uid) == int(subprocess.check_output(["id", "-u", "freerad"]))

        from tessera.realm import open_realm
        data = scratch_root / "var" / "lib" / "tessera"
        realm = open_realm(str(data / "registry.db"), str(data / "kek"))
        key = DeviceKey.generate()
        realm.enrol_key("switch-9", key.public_bytes(), time.time())
        dev = DeviceClient(realm.bundle("switch-9", [ServerEntry("radius-1", ADDRESS, port)], SECRET), key)
        client = RadiusClient([Server("radius-1", ADDRESS, port, SECRET.encode())], timeout=2.0)
        reply = client.exchange("switch-9", lambda sid: dev.register_request(sid, time.time(), os.urandom(16)))
        assert dev.register_reply(reply, time.time()).not_after > time.time()

        # the switches' listener: the NAS secret is answered there, the device secret is not
        site = (raddb / "sites-available" / "tessera-nas").read_text()
        nas_port = int(re.search(r"^\s*port = (\d+)$", site, re.M).group(1))
        assert nas_port != port
        right, wrong = (Server("radius-1", ADDRESS, nas_port, s.encode()) for s in (NAS_SECRET, SECRET))
        assert not RadiusClient([wrong], timeout=1.0, retries=0).status(wrong)
        assert RadiusClient([right], timeout=1.0, retries=0).status(right)
    finally:
        server.stop()
    assert not server.running() and not Path(f"/proc/{server.pid}").exists()
