"""The hostile client (bench/hostile_client.py) against a real FreeRADIUS with the real realm.

20,000 packets in four rounds: malformed, truncated, oversized, tampered (Message-Authenticator
recomputed with the right secret), forged, replayed and resent requests from eight source ports,
packets the server must drop (no or a wrong Message-Authenticator -- also from a client entry at
127.0.0.2 that does not require one --, wrong codes, broken lengths, datagrams over 4096 bytes)
from five more, and fresh TGT requests of registered devices interleaved. Every valid request is
accepted with a reply its device core opens; every hostile one that carries a valid
Message-Authenticator is refused with a named reason; nothing that must be dropped is answered;
radiusd keeps its PID, answers Status-Server throughout, logs no internal error, and its memory
stays flat once warm.

Beside it, in the same setup, the judge is shown to catch what it must: a valid request sent a
second time is no longer accepted (counted wrong as "valid"), and a packet the server answers on a
socket where answers must not come is counted wrong.
"""

from __future__ import annotations

import socket
import time

import pytest

from bench import hostile_client as hc
from tessera.lab.radiusd import Client
from tessera.radius.client import Server
from tessera.realm import Realm, create_kek
from tessera.sqlite_registry import SQLiteRegistry

from tests.gate import needs_freeradius, require
from tests.server.realserver import SECRET, make_server

pytestmark = needs_freeradius
REQUESTS = 20_000
# Once warm (after the first round), the resident size may grow only by what the realm keeps on
# purpose: the replay cache holds each accepted proof for the skew window (~3,300 here, < 2 MiB)
# and the registry's page cache. A leak of even 1 KiB per request would add ~15 MiB.
WARM_GROWTH_MIB = 8


@pytest.fixture(scope="module")
def realm_server(tmp_path_factory, tls_dir):
    require("root", "freeradius", "radclient")
    directory = tmp_path_factory.mktemp("hostile")
    realm = Realm.init(SQLiteRegistry(str(directory / "registry.db")), create_kek(str(directory / "kek")),
                       "lab.example", time.time())
    with make_server(directory, db=directory / "registry.db", kek=directory / "kek", tls_dir=tls_dir,
                     server_id="radius-1",
                     extra_clients=(Client("lax-device", hc.LAX_SOURCE, SECRET, require_message_authenticator=False),)
                     ) as server:
        entry = Server(server.cfg.server_id, server.address, server.port, SECRET.encode())
        yield realm, server, hc.Fleet(realm, entry, hc.devices_needed(REQUESTS))


def test_hostile_client_flood_is_answered_correctly_and_radiusd_keeps_serving(realm_server):
    realm, server, fleet = realm_server
    report = hc.run(server.address, server.port, SECRET.encode(), server.proc.pid, fleet, REQUESTS,
                    server.proc.log_file, rounds=4)
    text = "\n".join(report.lines())
    print(text)
    assert sum(report.sent.values()) == REQUESTS, text
    assert report.wrong_total() == 0, text
    for cat in hc.WEIGHTS:  # every category was exercised
        assert report.sent[cat] > 0, (cat, text)
    assert report.right["valid"] == report.sent["valid"] > 0.1 * REQUESTS, text
    assert report.codes["replayed"]["reject:15"] == report.sent["replayed"], text
    assert all(report.status_answers) and not report.pid_changed, text
    warm, after = report.rss_rounds[0], report.rss_kib[-1][1]
    assert after - warm <= WARM_GROWTH_MIB * 1024, f"RSS grew {(after - warm) / 1024:.1f} MiB once warm\n{text}"


def test_hostile_client_judge_catches_wrong_answers(realm_server):
    realm, server, fleet = realm_server
    secret = SECRET.encode()
    dev, msg = fleet.fresh_request()
    valid = hc.Planned("valid", hc._request(msg, secret, dev.device_id), device=dev, message=msg)
    again = hc.Planned("valid", hc._request(msg, secret, dev.device_id), device=dev, message=msg)
    answered_silent = hc.Planned("bad-code", hc.encode(hc.STATUS_SERVER, 0, bytes(16), b"", secret), silent=True)
    report = hc.Report()
    for plan in ([valid], [again, answered_silent]):  # one after the other: the original is served first
        tracked = [_sock(server)]
        silent = [_sock(server, connect=False)]
        try:
            for o in hc.flood(server.address, server.port, secret, plan, tracked, silent, None, timeout=2.0):
                hc.judge(o, report)
        finally:
            for s in tracked + silent:
                s.close()
    assert report.right["valid"] == 1 and report.codes["valid"]["accept"] == 1, report.lines()
    assert report.wrong["valid"] == 1 and report.codes["valid"]["reject:15"] == 1, report.lines()  # the replay
    assert report.wrong["bad-code"] == 1, report.lines()  # a Status-Server is answered: must not be on that socket
    assert report.wrong_total() == 2


def _sock(server, connect: bool = True) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if connect:
        s.connect((server.address, server.port))
    s.setblocking(False)
    return s
