"""Fixtures: a lab CA, device certificates, and a real FreeRADIUS from the repo's config.

How this works: ``stub_server`` builds a private config directory with ``tessera.lab.radiusd``
(realm opener ``stub_realm:open_realm``, see stub_realm.py), starts ``freeradius -f`` on
127.0.0.1 and a free port, and stops it by PID afterwards -- also when a test fails -- then
asserts the process is gone. One server per module keeps the suite quick; tests that need the
core's real realm build their own with ``make_server``.

Set ``TESSERA_RADIUSD_DEBUG=1`` to run radiusd with ``-X`` (its output is in the config
directory's ``log/radiusd.out``, printed on failure).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tessera.lab import radiusd
from tessera.lab.pki import LabPKI
from tessera.radius.client import RadiusClient, Server

HERE = Path(__file__).resolve().parent
SECRET = "tessera-test-secret"
DEBUG = os.environ.get("TESSERA_RADIUSD_DEBUG") == "1"

needs_freeradius = pytest.mark.skipif(shutil.which("freeradius") is None or os.geteuid() != 0,
                                      reason="needs Debian's freeradius and root")


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> LabPKI:
    return LabPKI.generate(time.time())


@pytest.fixture(scope="session")
def tls_dir(pki, tmp_path_factory) -> Path:
    return pki.install_server_files(tmp_path_factory.mktemp("tls"), "radius.lab", time.time())


@pytest.fixture(scope="session")
def devices(pki, tmp_path_factory):
    """Device credentials with files for eapol_test: enrolled, revoked, unknown to the
    registry, and one from a foreign CA (not in the trusted bundle)."""
    d = tmp_path_factory.mktemp("devices")
    now = time.time()
    creds = {name: pki.write_device_files(d, pki.issue_device(name, now))
             for name in ("dev-good", "dev-revoked", "dev-unknown")}
    foreign = LabPKI.generate(now, "Foreign CA")
    creds["dev-foreign"] = foreign.write_device_files(d / "foreign", foreign.issue_device("dev-good", now))
    creds["dev-foreign"].ca_path = d / "ca.pem"  # the supplicant still trusts the lab CA
    return creds


@pytest.fixture(scope="session")
def stub_db(devices, tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("stubdb") / "registry.json"
    db.write_text(json.dumps({"devices": {
        "dev-good": {"serial": devices["dev-good"].serial_hex, "password": "pwd-of-dev-good"},
        "dev-revoked": {"serial": devices["dev-revoked"].serial_hex, "revoked": True,
                        "password": "pwd-of-dev-revoked"},
    }}))
    return db


class RunningServer:
    """What a test needs to talk to a started server."""

    def __init__(self, server: radiusd.RadiusServer, cfg: radiusd.RadiusConfig):
        self.proc, self.cfg = server, cfg
        self.address, self.port, self.secret = cfg.address, cfg.port, cfg.secret

    def client(self, secret: str | None = None, **kw) -> RadiusClient:
        kw.setdefault("timeout", 1.0)
        kw.setdefault("retries", 0)
        srv = Server(self.cfg.server_id, self.address, self.port, (secret or self.secret).encode())
        return RadiusClient([srv], **kw)

    def server_entry(self, secret: str | None = None) -> Server:
        return Server(self.cfg.server_id, self.address, self.port, (secret or self.secret).encode())


def make_server(directory: Path, **cfg_kw):
    """Context manager: build, check and start a server; stop it by PID and assert it is gone."""
    import contextlib

    @contextlib.contextmanager
    def run():
        cfg = radiusd.RadiusConfig(secret=SECRET, **cfg_kw)
        raddb = radiusd.build_config(directory / "raddb", cfg)
        radiusd.check_config(raddb)
        server = radiusd.RadiusServer.for_config(raddb, cfg, debug=DEBUG)
        try:
            server.start()
            yield RunningServer(server, cfg)
        except BaseException:
            print(server._tail(80))
            raise
        finally:
            server.stop()
            pid = server.pid
            assert not server.running(), "radiusd still running after stop()"
            assert pid is None or not Path(f"/proc/{pid}").exists(), f"radiusd {pid} left behind"

    return run()


@pytest.fixture(scope="module")
def stub_server(tmp_path_factory, tls_dir, stub_db):
    if shutil.which("freeradius") is None or os.geteuid() != 0:
        pytest.skip("needs Debian's freeradius and root")
    directory = tmp_path_factory.mktemp("radius")
    kek = directory / "kek"
    kek.write_bytes(b"unused by the stub")
    with make_server(directory, db=stub_db, kek=kek, tls_dir=tls_dir,
                     realm_opener="stub_realm:open_realm", python_path=(HERE,)) as server:
        yield server
