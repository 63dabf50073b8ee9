"""A replayed registration changes nothing, on real FreeRADIUS (issue 8, item 1).

What the issue found: a RegisterRequest captured from the wire and sent again within the clock
skew after a radiusd restart was accepted (a new process has an empty replay cache): the
generation went up and the real device's tickets were refused as ``superseded``. Now the
registry row keeps the last accepted request's time and the nonces accepted in that second,
checked in the compare-and-set that bumps the generation, so:

* after a restart (radiusd stopped, a new one started on the same registry) the captured request
  is refused with ``replay``; the generation is unchanged and the device's TGT and DRT still work;
* at the other servers of the realm (several radiusd on one SQLite registry): a copy sent to a
  server with another id is ``wrong-server``; a server that was given the same id (what
  install-radius now refuses) answers ``replay`` from the row, though its own cache never saw
  the request; a request for the second server that the attacker held back is ``replay`` there
  once the device registered later at the first;
* a flood of forged registrations through radiusd leaves one audit row, not one per packet.

Every refusal stands beside the device's own fresh request being accepted by the same server.
"""

import os
import time

import pytest

from tessera.device import DeviceClient
from tessera.identity import BootstrapBundle, DeviceKey, ServerEntry
from tessera.message import RegisterRequest, decode
from tessera.radius.client import RejectedError
from tessera.realm import Realm, create_kek
from tessera.sqlite_registry import SQLiteRegistry

from tests.gate import needs_freeradius
from tests.server.realserver import SECRET, make_server

pytestmark = needs_freeradius
REALM = "replay.example"


@pytest.fixture(scope="module")
def realm_files(tmp_path_factory, pki):
    d = tmp_path_factory.mktemp("replay")
    db, kek = d / "registry.db", d / "kek"
    realm = Realm.init(SQLiteRegistry(str(db)), create_kek(str(kek)), REALM, time.time())
    tls = pki.install_server_files(d / "tls", "radius.lab", time.time())
    return d, realm, db, kek, tls


def enrol(realm: Realm, device_id: str, *servers) -> DeviceClient:
    key = DeviceKey.generate()
    realm.enrol_key(device_id, key.public_bytes(), time.time())
    entries = [ServerEntry(s.cfg.server_id, s.address, s.port) for s in servers]
    return DeviceClient(realm.bundle(device_id, entries, SECRET), key)


def send(server, dev_id: str, request: bytes) -> bytes:
    """Put these exact bytes in a fresh RADIUS packet (a new Message-Authenticator, the same proof)."""
    return server.client(timeout=5.0).exchange(dev_id, lambda sid: request)


def refused(server, dev_id: str, request: bytes) -> RejectedError:
    with pytest.raises(RejectedError) as exc:
        send(server, dev_id, request)
    return exc.value


def generation(db, device_id: str) -> int:
    reg = SQLiteRegistry(str(db))
    try:
        return reg.get_device(device_id).generation
    finally:
        reg.close()


def later_than(timestamp: int) -> float:
    """The current time once it is past `timestamp`'s second (waits for the clock, at most 2 s)."""
    deadline = time.monotonic() + 2
    while int(time.time()) <= timestamp:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return time.time()


def test_registration_replayed_after_a_radiusd_restart_is_refused(realm_files):
    d, realm, db, kek, tls = realm_files
    with make_server(d / "before", db=db, kek=kek, tls_dir=tls, server_id="radius-1") as first:
        dev = enrol(realm, "restart-1", first)
        captured = dev.register_request("radius-1", time.time(), os.urandom(16))
        reg = dev.register_reply(send(first, dev.device_id, captured), time.time())
        dev.ticket_reply(send(first, dev.device_id, dev.auth_request("radius-1", time.time(), os.urandom(16))),
                         time.time())
        assert reg.generation == 1 == generation(db, "restart-1")
    # radiusd is gone (make_server asserted it); a new one on the same registry, empty replay cache
    with make_server(d / "after", db=db, kek=kek, tls_dir=tls, server_id="radius-1") as second:
        assert time.time() - decode(captured, (RegisterRequest,)).timestamp < 300  # within the skew
        exc = refused(second, dev.device_id, captured)
        assert exc.code == 15 and exc.reason == "replay: this registration request was already accepted", exc
        assert generation(db, "restart-1") == 1
        # the real device's tickets still work at the restarted server: renew its TGT, and a new TGT from its DRT
        dev.ticket_reply(send(second, dev.device_id, dev.renew_request("radius-1", time.time(), os.urandom(16))),
                         time.time())
        dev.ticket_reply(send(second, dev.device_id, dev.auth_request("radius-1", time.time(), os.urandom(16))),
                         time.time())
        # control: the device's own fresh registration is accepted by the same server
        reg = dev.register_reply(send(second, dev.device_id,
                                      dev.register_request("radius-1", time.time(), os.urandom(16))), time.time())
        assert reg.generation == 2 == generation(db, "restart-1")


def test_registration_replayed_to_other_servers_of_the_realm_is_refused(realm_files):
    d, realm, db, kek, tls = realm_files
    with make_server(d / "one", db=db, kek=kek, tls_dir=tls, server_id="radius-1") as one, \
            make_server(d / "two", db=db, kek=kek, tls_dir=tls, server_id="radius-2") as two, \
            make_server(d / "twin", db=db, kek=kek, tls_dir=tls, server_id="radius-1") as twin:
        dev = enrol(realm, "cross-1", one, two)
        held_back = dev.register_request("radius-2", time.time(), os.urandom(16))  # never delivered
        dev.abandon()
        now = later_than(decode(held_back, (RegisterRequest,)).timestamp)
        captured = dev.register_request("radius-1", now, os.urandom(16))
        dev.register_reply(send(one, dev.device_id, captured), time.time())
        dev.ticket_reply(send(one, dev.device_id, dev.auth_request("radius-1", time.time(), os.urandom(16))),
                         time.time())
        assert generation(db, "cross-1") == 1

        exc = refused(two, dev.device_id, captured)  # each request names its server
        assert exc.code == 16 and exc.reason == "wrong-server: addressed to 'radius-1', this is 'radius-2'", exc
        exc = refused(twin, dev.device_id, captured)  # same id, its own cache empty: the row refuses it
        assert exc.code == 15 and exc.reason == "replay: this registration request was already accepted", exc
        exc = refused(two, dev.device_id, held_back)  # older than the registration radius-1 accepted
        held_at = decode(held_back, (RegisterRequest,)).timestamp
        assert exc.code == 15 and exc.reason == \
            f"replay: registration request of {held_at} is older than the last accepted one ({int(now)})", exc
        assert generation(db, "cross-1") == 1
        # the device's TGT keeps working at every server
        for server in (two, twin):
            dev.ticket_reply(send(server, dev.device_id,
                                  dev.renew_request(server.cfg.server_id, time.time(), os.urandom(16))), time.time())
        # control: the device's own fresh request for radius-2 is accepted there
        reg = dev.register_reply(send(two, dev.device_id,
                                      dev.register_request("radius-2", time.time(), os.urandom(16))), time.time())
        assert reg.generation == 2 == generation(db, "cross-1")


def test_flood_of_forged_registrations_through_radiusd_leaves_one_audit_row(realm_files):
    d, realm, db, kek, tls = realm_files
    with make_server(d / "flood", db=db, kek=kek, tls_dir=tls, server_id="radius-1") as server:
        dev = enrol(realm, "flood-1", server)
        forger = DeviceClient(BootstrapBundle(REALM, "flood-1", realm.service_public_key, []), DeviceKey.generate())
        client = server.client(timeout=5.0)
        started = time.monotonic()
        n = 0
        while n < 1000 and time.monotonic() - started < 50:  # all inside the first minute
            with pytest.raises(RejectedError) as exc:
                client.exchange("flood-1", lambda sid: forger.register_request(sid, time.time(), os.urandom(16)))
            assert exc.value.code == 14, exc.value  # bad-proof
            n += 1
        assert n >= 200, f"only {n} requests in 50 s"
        reg = SQLiteRegistry(str(db))
        try:
            rows = [e for e in reg.audit("flood-1", 10_000) if e.event == "register-rejected"]
        finally:
            reg.close()
        assert [(e.detail, e.count, e.server_id) for e in rows] == [("bad signature", 1, "radius-1")], (n, len(rows))
        # control: the device itself registers at the same server, with its audit line
        dev.register_reply(send(server, dev.device_id, dev.register_request("radius-1", time.time(), os.urandom(16))),
                           time.time())
        assert generation(db, "flood-1") == 1
