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

from tessera.lab.pki import LabPKI

from tests.gate import require
from tests.server import pgcluster
from tests.server.realserver import make_server

HERE = Path(__file__).resolve().parent


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


@pytest.fixture(scope="module")
def stub_server(tmp_path_factory, tls_dir, stub_db):
    require("root", "freeradius", "radclient")
    directory = tmp_path_factory.mktemp("radius")
    kek = directory / "kek"
    kek.write_bytes(b"unused by the stub")
    with make_server(directory, db=stub_db, kek=kek, tls_dir=tls_dir,
                     realm_opener="stub_realm:open_realm", python_path=(HERE,)) as server:
        yield server


@pytest.fixture(scope="session")
def pg_cluster():
    """One private PostgreSQL cluster for the session's tests (tests/server/pgcluster.py)."""
    yield from pgcluster.cluster()
