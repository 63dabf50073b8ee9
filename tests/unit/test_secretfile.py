"""Secret files: 0600 from the first byte also over an older 0644 file, a symlink refused with its
target untouched, never half-written -- for the helper and for every place that writes a secret
(tessera-admin's bundles, the KEK, the agent's state and key files, the lab's keys)."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from tessera.cli import main
from tessera.identity import DeviceKey
from tessera.realm import create_kek
from tessera.secretfile import SecretFileError, write_atomic, write_secret


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def leftovers(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


@pytest.fixture
def victim(tmp_path):
    """A file someone else owns the meaning of, which a symlink will point at."""
    target = tmp_path / "elsewhere" / "passwd"
    target.parent.mkdir()
    target.write_bytes(b"root:x:0:0\n")
    target.chmod(0o644)
    return target


def test_secretfile_over_an_existing_0644_file_is_0600_in_a_new_inode(tmp_path):
    path = tmp_path / "bundle.json"
    path.write_bytes(b"old, readable by everyone")
    path.chmod(0o644)
    other = tmp_path / "hardlink"
    os.link(path, other)
    with open(path, "rb") as early:  # opened while it was 0644
        write_secret(path, b"new secret")
        assert mode(path) == 0o600 and path.read_bytes() == b"new secret"
        # neither the descriptor opened before nor a hard link reaches the new bytes
        assert early.read() == b"old, readable by everyone"
    assert other.read_bytes() == b"old, readable by everyone" and mode(other) == 0o644
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("dangling", [False, True])
def test_secretfile_refuses_a_symlink_and_leaves_its_target_alone(tmp_path, victim, dangling):
    link = tmp_path / "bundle.json"
    target = victim.with_name("absent") if dangling else victim
    link.symlink_to(target)
    with pytest.raises(SecretFileError) as exc:
        write_secret(link, b"secret")
    assert exc.value.errno == errno.ELOOP and "symbolic link" in str(exc.value)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert victim.read_bytes() == b"root:x:0:0\n" and mode(victim) == 0o644
    assert not victim.with_name("absent").exists()
    assert leftovers(tmp_path) == []
    # the same directory takes the secret at a plain path
    write_secret(tmp_path / "plain.json", b"secret")
    assert mode(tmp_path / "plain.json") == 0o600


def test_secretfile_mode_is_exact_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        write_secret(tmp_path / "a", b"x")
    finally:
        os.umask(old)
    os.umask(0o077)
    try:
        write_atomic(tmp_path / "cert.pem", b"public", 0o644)
    finally:
        os.umask(old)
    assert (mode(tmp_path / "a"), mode(tmp_path / "cert.pem")) == (0o600, 0o644)
    write_secret(tmp_path / "key", b"x", group="root")
    assert mode(tmp_path / "key") == 0o640 and os.stat(tmp_path / "key").st_gid == 0


def test_secretfile_exclusive_never_overwrites(tmp_path, victim):
    path = tmp_path / "kek"
    write_secret(path, b"first", exclusive=True)
    assert path.read_bytes() == b"first" and mode(path) == 0o600
    with pytest.raises(SecretFileError) as exc:
        write_secret(path, b"second", exclusive=True)
    assert exc.value.errno == errno.EEXIST and path.read_bytes() == b"first"
    (tmp_path / "link").symlink_to(victim)
    with pytest.raises(SecretFileError):
        write_secret(tmp_path / "link", b"second", exclusive=True)
    assert victim.read_bytes() == b"root:x:0:0\n" and leftovers(tmp_path) == []


def test_secretfile_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(SecretFileError):
        write_secret(tmp_path / "d", b"x")
    with pytest.raises(TypeError):
        write_secret(tmp_path / "s", "text")  # type: ignore[arg-type]
    assert leftovers(tmp_path) == [] and not (tmp_path / "s").exists()


# -- every writer of a secret --------------------------------------------------------------

@pytest.fixture
def admin(tmp_path, capsys):
    db, kek = str(tmp_path / "registry.db"), str(tmp_path / "kek")

    def run(*args):
        code = main(["--db", db, "--kek", kek, *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    assert run("init", "--realm", "example.net")[0] == 0
    key = DeviceKey.generate()
    assert run("enrol", "key", "SN-1", key.public_bytes().hex())[0] == 0
    return run


def test_secretfile_tessera_admin_bundle(admin, tmp_path, victim):
    out = tmp_path / "bundle.json"
    out.write_bytes(b"{}")
    out.chmod(0o644)
    code, _, err = admin("bundle", "SN-1", "--server", "r1=192.0.2.1", "--out", str(out))
    assert (code, err, mode(out)) == (0, "", 0o600) and b'"device_id": "SN-1"' in out.read_bytes()
    link = tmp_path / "linked.json"
    link.symlink_to(victim)
    code, _, err = admin("bundle", "SN-1", "--server", "r1=192.0.2.1", "--out", str(link))
    assert code == 1 and "symbolic link" in err
    assert victim.read_bytes() == b"root:x:0:0\n" and mode(victim) == 0o644


def test_secretfile_kek(tmp_path, victim, capsys):
    kek = create_kek(str(tmp_path / "kek"))
    assert len(kek) == 32 and (tmp_path / "kek").read_bytes() == kek and mode(tmp_path / "kek") == 0o600
    with pytest.raises(SecretFileError):  # never overwrites a KEK
        create_kek(str(tmp_path / "kek"))
    assert (tmp_path / "kek").read_bytes() == kek
    (tmp_path / "kek-link").symlink_to(victim)
    with pytest.raises(SecretFileError):
        create_kek(str(tmp_path / "kek-link"))
    assert victim.read_bytes() == b"root:x:0:0\n"
    # tessera-admin init names the refusal and exits 1, also for a dangling link
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    code = main(["--db", str(tmp_path / "r.db"), "--kek", str(tmp_path / "dangling"), "init", "--realm", "x.example"])
    assert code == 1 and "symbolic link" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()


def test_secretfile_agent_state_and_keys(tmp_path, victim):
    from tessera.agent.daemon import write_private

    state = tmp_path / "state"
    state.write_bytes(b"old")
    state.chmod(0o644)
    write_private(str(state), b"sealed state")
    assert mode(state) == 0o600 and state.read_bytes() == b"sealed state"
    (tmp_path / "device.key").symlink_to(victim)
    with pytest.raises(SecretFileError):
        write_private(str(tmp_path / "device.key"), b"-----BEGIN PRIVATE KEY-----")
    assert victim.read_bytes() == b"root:x:0:0\n"


def test_secretfile_lab_keys(tmp_path, victim):
    from tessera.lab.pki import LabPKI, write_file

    key = tmp_path / "pki" / "ca.key"
    key.parent.mkdir()
    key.write_bytes(b"old")
    key.chmod(0o644)
    pki = LabPKI.generate(1_800_000_000)
    pki.save(tmp_path / "pki")
    assert mode(key) == 0o600 and b"PRIVATE KEY" in key.read_bytes()
    assert mode(tmp_path / "pki" / "ca.pem") == 0o644  # a certificate stays public
    (tmp_path / "srv.key").symlink_to(victim)
    with pytest.raises(SecretFileError):
        write_file(tmp_path / "srv.key", b"key", 0o600)
    assert victim.read_bytes() == b"root:x:0:0\n"


def test_secretfile_agent_says_its_keys_are_protected_by_file_permissions_only(realm, tmp_path, capsys):
    """README "On a device": no key store apart, so the status output says what protects the keys."""
    from tessera.agent.daemon import Agent, print_status

    from .conftest import SERVERS, T0

    (tmp_path / "device.key").write_bytes(b"left by an older install")
    (tmp_path / "device.key").chmod(0o644)
    agent = Agent("eth0", realm.enrol_generated("SN-A", SERVERS, "s3cret", T0), str(tmp_path))
    st = agent.request({"cmd": "status"})
    assert st["keys_at_rest"].startswith("file permissions only: ") and str(tmp_path) in st["keys_at_rest"]
    print_status(st)
    assert f"  keys at rest: file permissions only: the device key and the state are 0600 files in {tmp_path}" \
        in capsys.readouterr().out
    assert {n: mode(tmp_path / n) for n in ("device.key", "device.crt", "ca.crt")} == dict.fromkeys(
        ("device.key", "device.crt", "ca.crt"), 0o600)
    assert b"PRIVATE KEY" in (tmp_path / "device.key").read_bytes()
