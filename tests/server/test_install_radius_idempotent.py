"""tools/install-radius is safe and idempotent, as an operator setting up the servers of one realm
expects (issue 10, "Installing a second and third server"; the PostgreSQL part is not here).

* A failed run (here ``freeradius -XC`` refusing a server key that does not match its
  certificate) leaves the tree as it was: every file, link, mode and owner under the scratch
  root byte-identical, nothing new, and the message names the cause.
* Clients: Debian's stock ``localhost`` (127.0.0.1) stays and is no clash for Tessera's clients
  (their own listener sections); a later run adds clients and keeps the others; a network given
  twice, or an existing address with another secret, is refused before anything is written.
* A second run with the same arguments changes nothing and says so; the README's commands run
  exactly as printed (extracted from README.md, ``tools/install-radius`` pointed at the root).
* Secrets come from files (``--nas-secret-file``/``--device-secret-file``), a wider mode warned.
* A second server on a tree sharing the realm's registry and KEK joins with its own id; a failed
  join records nothing in the realm.

Every run goes into a scratch copy of Debian's /etc/freeradius under /var/tmp (freerad must enter
it), never the machine's own; the registry is freerad's, so the test reads it as freerad.
"""

import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tessera.lab import radiusd
from tessera.radius.client import RadiusClient, Server

from tests.gate import needs_freeradius
from tests.server.installed import AS_FREERAD, registry

pytestmark = needs_freeradius
REPO = Path(__file__).resolve().parents[2]
OTHER_HOST = "radius-a.other.example"


@pytest.fixture
def scratch():
    """A directory under /var/tmp; ``make_root()`` makes a root in it with a stock copy of
    Debian's /etc/freeradius/3.0 (``localhost`` client included)."""
    top = Path(tempfile.mkdtemp(prefix="tessera-idem-", dir="/var/tmp"))
    os.chmod(top, 0o755)
    count = iter(range(100))

    def make_root() -> Path:
        root = top / f"root{next(count)}"
        (root / "etc" / "freeradius").mkdir(parents=True)
        os.chmod(root, 0o755)
        subprocess.run(["cp", "-a", "/etc/freeradius/3.0", str(root / "etc" / "freeradius")], check=True)
        return root

    make_root.top = top
    try:
        yield make_root
    finally:
        shutil.rmtree(top, ignore_errors=True)


def secret_file(path: Path, secret: str, mode: int = 0o600) -> str:
    path.write_text(secret + "\n")
    os.chmod(path, mode)
    return str(path)


def install(root: Path, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([str(REPO / "tools" / "install-radius"), "--root", str(root), *args],
                       capture_output=True, text=True, timeout=600)
    r.out = r.stdout + r.stderr
    return r


def tree(root: Path) -> dict:
    """Every entry under root: kind, mode, owner, and bytes or link target."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                what = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                what = ("dir",)
            else:
                what = ("file", p.read_bytes())
            entries[str(p.relative_to(root))] = (*what, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return entries


def differences(before: dict, after: dict) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def raddb(root: Path) -> Path:
    return root / "etc" / "freeradius" / "3.0"


def section(root: Path, cls: str) -> str:
    text = (raddb(root) / "clients.conf").read_text()
    return re.search(rf"# >>> tessera {cls} clients >>>\n(.*?)# <<< tessera {cls} clients <<<", text, re.S).group(1)


def entries(root: Path, cls: str) -> list[tuple[str, str]]:
    """(address, secret) of each client in Tessera's section of that class."""
    return re.findall(r"ipv?6?addr = (\S+)\n\t\tsecret = (\S+)", section(root, cls))




def configured_id(root: Path) -> str:
    text = (raddb(root) / "mods-available" / "tessera").read_text()
    return re.search(r'^\s*server_id = "([^"]*)"', text, re.M).group(1)


def readme_block() -> str:
    """The shell block of README.md's "On a RADIUS server" section, as printed."""
    text = (REPO / "README.md").read_text()
    part = text[text.index("## On a RADIUS server"):]
    part = part[:part.index("\n## ", 1)]
    return re.search(r"```sh\n(.*?)```", part, re.S).group(1)


def mismatched_cert(d: Path) -> tuple[str, str]:
    """A certificate and a private key that is not its key (an operator's mix-up)."""
    for args in (["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                  "-keyout", str(d / "right.key"), "-out", str(d / "server.pem"), "-subj", "/CN=radius.example",
                  "-days", "2"],
                 ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(d / "wrong.key")]):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    return str(d / "server.pem"), str(d / "wrong.key")


def test_readme_commands_work_as_printed_and_a_second_run_changes_nothing(scratch):
    root = scratch()
    work = scratch.top / "operator"
    (work / "tools").mkdir(parents=True)
    wrapper = work / "tools" / "install-radius"  # the README's tools/install-radius, into the scratch root
    wrapper.write_text(f'#!/bin/sh\nexec {REPO}/tools/install-radius --root {root} "$@"\n')
    wrapper.chmod(0o755)
    block = readme_block()
    assert "tools/install-radius --init-realm example.net" in block
    r = subprocess.run(["sh", "-ec", block], cwd=work, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    nas, device = ((work / n).read_text().strip() for n in ("nas.secret", "device.secret"))
    assert all(stat.S_IMODE((work / n).stat().st_mode) == 0o600 for n in ("nas.secret", "device.secret"))
    assert "WARNING" not in r.stdout
    assert entries(root, "nas") == [("192.0.2.0/28", nas)] and entries(root, "device") == [("198.51.100.0/24", device)]
    assert nas not in r.stdout + r.stderr and device not in r.stdout + r.stderr
    assert configured_id(root) == "radius1"

    # the install command again, as printed: the same bytes everywhere, and it says so
    command = next(c for c in block.replace("\\\n", " ").splitlines() if c.startswith("tools/install-radius"))
    before = tree(root)
    r = subprocess.run(["sh", "-ec", command], cwd=work, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    changed = differences(before, tree(root))
    if "differs from this checkout's: reinstalling it" in r.stdout:  # someone edited the checkout's tessera in between: said, not hidden
        assert "nothing changed" not in r.stdout and "usr/local/lib/tessera/venv" in r.stdout
        changed = [c for c in changed if not c.startswith("usr/local/lib/tessera/venv/")]
    else:
        assert "nothing changed: installed as asked already" in r.stdout
    assert changed == []

    # control: a run that does change something says what
    r = install(root, "--nas-client", "192.0.2.16/28", "--nas-secret-file", str(work / "nas.secret"))
    assert r.returncode == 0 and "changed: 3.0/clients.conf" in r.stdout, r.out[-3000:]
    assert differences(before, tree(root)) == ["etc/freeradius/3.0/clients.conf"]


def test_a_failed_check_puts_the_tree_back_and_names_the_cause(scratch):
    root = scratch()
    cert, wrong_key = mismatched_cert(scratch.top)
    nas = secret_file(scratch.top / "nas.secret", "n" * 32)

    # a first install that fails: nothing at all is left under the root (no venv, no realm)
    pristine = tree(root)
    r = install(root, "--init-realm", "fail.example", "--server-cert", cert, "--server-key", wrong_key,
                "--nas-client", "192.0.2.1", "--nas-secret-file", nas)
    assert r.returncode == 1, r.out[-3000:]
    assert "FAILED: the configuration check (freeradius -XC) refused the tree" in r.stdout
    assert "key values mismatch" in r.stdout  # the cause, in the closing message itself
    assert "put back as it was" in r.stdout
    assert differences(pristine, tree(root)) == []

    # an installed server, then a failing re-run that would change clients, certificates, ports
    r = install(root, "--init-realm", "fail.example", "--nas-client", "192.0.2.1", "--nas-secret-file", nas)
    assert r.returncode == 0, r.out[-3000:]
    before = tree(root)
    r = install(root, "--server-cert", cert, "--server-key", wrong_key, "--nas-client", "192.0.2.2",
                "--nas-secret-file", nas, "--nas-port", "1645", "--radsec-port", "0", "--keep-default-site")
    assert r.returncode == 1 and "key values mismatch" in r.stdout, r.out[-3000:]
    assert differences(before, tree(root)) == []
    assert not list((root / "etc" / "freeradius").glob(".tessera-install-backup-*"))
    # control: the same change with a matching key goes through
    r = install(root, "--nas-client", "192.0.2.2", "--nas-secret-file", nas, "--nas-port", "1645")
    assert r.returncode == 0, r.out[-3000:]
    assert entries(root, "nas") == [("192.0.2.1", "n" * 32), ("192.0.2.2", "n" * 32)]


def test_clients_that_exist_already(scratch):
    root = scratch()
    d = scratch.top
    nas, device, other = (secret_file(d / f"{n}.secret", n[0] * 24 + "-0123456789") for n in ("nas", "device", "other"))
    stock = (raddb(root) / "clients.conf").read_text()
    localhost = re.search(r"^client localhost \{.*?^\}", stock, re.S | re.M).group(0)
    assert "ipaddr = 127.0.0.1" in localhost

    r = install(root, "--init-realm", "clients.example", "--nas-client", "127.0.0.1", "--nas-secret-file", nas,
                "--device-client", "127.0.0.1", "--device-secret-file", device)
    assert r.returncode == 0, r.out[-3000:]
    text = (raddb(root) / "clients.conf").read_text()
    assert localhost in text  # Debian's entry kept, untouched
    check = subprocess.run([*AS_FREERAD, "freeradius", "-XC", "-d", str(raddb(root))], capture_output=True, text=True)
    assert check.returncode == 0, (check.stdout + check.stderr)[-3000:]
    assert "Configuration appears to be OK" in check.stdout + check.stderr

    # a later run adds a client and keeps the others (and the other class)
    r = install(root, "--nas-client", "192.0.2.8/29", "--nas-secret-file", nas)
    assert r.returncode == 0, r.out[-3000:]
    assert entries(root, "nas") == [("127.0.0.1", open(nas).read().strip()), ("192.0.2.8/29", open(nas).read().strip())]
    assert entries(root, "device") == [("127.0.0.1", open(device).read().strip())]
    assert "switch-1" in section(root, "nas") and "switch-2" in section(root, "nas")

    before = tree(root)
    # refused before writing: an existing address (as 127.0.0.1/32) with another secret ...
    r = install(root, "--nas-client", "127.0.0.1/32", "--nas-secret-file", other)
    assert r.returncode == 2, r.out[-3000:]
    assert "REFUSED, nothing written: --nas-client 127.0.0.1/32 is already a nas client (switch-1, 127.0.0.1) " \
           "with another secret" in r.stdout
    # ... and one network given twice in one run
    r = install(root, "--device-client", "198.51.100.7", "--device-client", "198.51.100.7/32",
                "--device-secret-file", device)
    assert r.returncode == 2 and "--device-client 198.51.100.7/32 is given twice" in r.stdout, r.out[-3000:]
    assert differences(before, tree(root)) == []
    assert open(other).read().strip() not in r.out

    # control: --replace-clients makes the class hold exactly the given addresses
    r = install(root, "--replace-clients", "--nas-client", "127.0.0.1/32", "--nas-secret-file", other)
    assert r.returncode == 0, r.out[-3000:]
    assert entries(root, "nas") == [("127.0.0.1/32", open(other).read().strip())]
    assert entries(root, "device") == [("127.0.0.1", open(device).read().strip())]

    # and the server starts from that tree with Debian's localhost beside Tessera's 127.0.0.1
    # clients: the NAS listener answers its own secret, not localhost's testing123
    port, nas_port = radiusd.free_udp_port(), radiusd.free_udp_port()
    r = install(root, "--listen-address", "127.0.0.1", "--device-port", str(port), "--nas-port", str(nas_port),
                "--radsec-port", str(radiusd.free_tcp_port()))
    assert r.returncode == 0 and nas_port != port, r.out[-3000:]
    conf = raddb(root) / "radiusd.conf"
    text = radiusd.set_option(conf.read_text(), "logdir", str(root / "var" / "log" / "freeradius"))
    conf.write_text(radiusd.set_option(text, "run_dir", str(root / "run" / "freeradius")))
    for sub in ("var/log/freeradius", "run/freeradius"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        shutil.chown(root / sub, "freerad", "freerad")
    server = radiusd.RadiusServer(raddb(root), "127.0.0.1", port, open(device).read().strip(), run_prefix=AS_FREERAD)
    server.output = root / "radiusd.out"
    server.log_dir = root / "var" / "log" / "freeradius"
    try:
        server.start()  # answers a Status-Server on the device listener, with the device secret
        right, stock = (Server("radius1", "127.0.0.1", nas_port, s.encode())
                        for s in (open(other).read().strip(), "testing123"))
        assert RadiusClient([right], timeout=1.0, retries=0).status(right)
        assert not RadiusClient([stock], timeout=1.0, retries=0).status(stock)
    finally:
        server.stop()


def test_secrets_from_files(scratch):
    root = scratch()
    d = scratch.top
    nas = secret_file(d / "nas.secret", "s" * 30, mode=0o644)
    device = secret_file(d / "device.secret", "t" * 30)
    r = install(root, "--init-realm", "files.example", "--nas-client", "192.0.2.1", "--nas-secret-file", nas,
                "--device-client", "198.51.100.1", "--device-secret-file", device)
    assert r.returncode == 0, r.out[-3000:]
    assert f"WARNING: --nas-secret-file {nas} has mode 0644: others may read the secret; chmod 600 it" in r.stdout
    assert "device-secret-file" not in "".join(l for l in r.stdout.splitlines() if "WARNING" in l)  # 0600: quiet
    assert entries(root, "nas") == [("192.0.2.1", "s" * 30)] and entries(root, "device") == [("198.51.100.1", "t" * 30)]
    assert "s" * 30 not in r.out and "t" * 30 not in r.out

    before = tree(root)
    for args, reason in (
            (["--nas-client", "192.0.2.2", "--nas-secret-file", nas, "--nas-secret", "x" * 20],
             "--nas-secret and --nas-secret-file: give one of them"),
            (["--nas-client", "192.0.2.2", "--nas-secret-file", secret_file(d / "empty", "")], "is empty"),
            (["--nas-client", "192.0.2.2", "--nas-secret-file", str(d / "missing")], "cannot read it"),
            (["--nas-client", "192.0.2.2", "--nas-secret-file", secret_file(d / "short", "abc")], "too short"),
            (["--nas-client", "192.0.2.2", "--nas-secret-file", nas,
              "--device-client", "198.51.100.2", "--device-secret-file", nas], "must differ")):
        r = install(root, *args)
        assert r.returncode == 2 and reason in r.stderr, (args, r.out[-2000:])
    assert differences(before, tree(root)) == []


def test_a_second_server_joins_the_realm_with_its_own_id(scratch):
    first, second = scratch(), scratch()
    d = scratch.top
    nas = secret_file(d / "nas.secret", "n" * 32)
    r = install(first, "--init-realm", "two.example", "--nas-client", "192.0.2.1", "--nas-secret-file", nas)
    assert r.returncode == 0, r.out[-3000:]
    # the first server runs on its own host; the second server's tree shares the realm's
    # registry and KEK (the same directory)
    registry(first, "UPDATE server SET host = ? WHERE server_id = 'radius1'", OTHER_HOST)
    (second / "var" / "lib").mkdir(parents=True)
    (second / "var" / "lib" / "tessera").symlink_to(first / "var" / "lib" / "tessera")
    join = ["--init-realm", "two.example", "--nas-client", "192.0.2.1", "--nas-secret-file", nas]

    # a join that fails its check records nothing in the realm and leaves its tree as it was
    cert, wrong_key = mismatched_cert(d)
    before = tree(second)
    r = install(second, *join, "--server-id", "radius2", "--server-cert", cert, "--server-key", wrong_key)
    assert r.returncode == 1 and "key values mismatch" in r.stdout, r.out[-3000:]
    assert registry(first, "SELECT server_id, host FROM server") == [("radius1", OTHER_HOST)]
    assert differences(before, tree(second)) == []

    # the default id is the first server's: refused before writing, naming the ids in use
    r = install(second, *join)
    assert r.returncode == 2, r.out[-3000:]
    assert f"REFUSED: server id 'radius1' is already taken in this realm by host '{OTHER_HOST}'" in r.stdout
    assert differences(before, tree(second)) == []

    # with its own id it joins, and is recorded
    r = install(second, *join, "--server-id", "radius2")
    assert r.returncode == 0, r.out[-3000:]
    assert "registry" in r.stdout and "exists: keeping it" in r.stdout
    assert configured_id(second) == "radius2" and configured_id(first) == "radius1"
    hosts = dict(registry(first, "SELECT server_id, host FROM server"))
    assert set(hosts) == {"radius1", "radius2"} and hosts["radius1"] == OTHER_HOST
    mod = (raddb(second) / "mods-available" / "tessera").read_text()
    assert f'"{second}/var/lib/tessera/kek"' in mod
    # and again: nothing changes
    before = tree(second)
    r = install(second, *join, "--server-id", "radius2")
    assert r.returncode == 0 and "nothing changed" in r.stdout, r.out[-3000:]
    assert differences(before, tree(second)) == []
