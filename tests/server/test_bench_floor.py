"""The benchmark's floors (bench/freeradius_floor.py): a real radiusd from
``lab.radiusd.build_floor_config`` answers PAP from its users file on both sites -- the right
password accepted, a wrong one refused -- through the same load generator the Tessera exchanges
use, so the floor measures a real PAP check and not a server that accepts anything."""

import sys
from pathlib import Path

from tessera.lab import radiusd
from tessera.radius.client import Server

from tests.gate import needs_freeradius

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from radius_load import prebuild_pap, run_load  # noqa: E402

pytestmark = needs_freeradius


def test_floor_sites_check_the_password(tmp_path):
    users = {"floor00001": "right-password-1", "floor00002": "right-password-2"}
    secret = "tessera-floor-secret"
    raddb, pap_port, python_port = radiusd.build_floor_config(tmp_path / "raddb", users, secret=secret)
    radiusd.check_config(raddb)
    with radiusd.RadiusServer(raddb, "127.0.0.1", pap_port, secret) as rs:
        for port in (pap_port, python_port):
            server = Server("floor", "127.0.0.1", port, secret.encode())
            good = run_load(server, prebuild_pap(server, list(users.items()) * 20), pid=rs.pid, window=8)
            assert (good.accepted, good.rejected, good.lost) == (40, 0, 0)
            bad = run_load(server, prebuild_pap(server, [(n, pw + "x") for n, pw in users.items()] * 5),
                           pid=rs.pid, window=8)
            assert (bad.accepted, bad.rejected, bad.lost) == (0, 10, 0)
            unknown = run_load(server, prebuild_pap(server, [("floor09999", "right-password-1")]), pid=rs.pid)
            assert (unknown.accepted, unknown.rejected) == (0, 1)
