"""Two radiusd processes of one realm on one SQLite registry (same db, same KEK, two server ids).

* Concurrent registration of one device through both servers at once: the registry's
  compare-and-set on the registration generation must hold under real contention between
  processes -- every accepted registration has its own generation, the generations are exactly
  1..n for n accepted, the row holds the last winner's DRT, every loser gets the named
  ``bad-state`` reject, and both servers keep serving.
* A service-key rotation made on the registry (as ``tessera-admin rotate`` does) reaches both
  running servers: a TGT one of them seals under the new key version is renewed by the other.
"""

import os
import threading
import time

import pytest

from tessera.device import DeviceClient
from tessera.identity import DeviceKey, ServerEntry
from tessera.radius.client import NoServerAnsweredError, RejectedError
from tessera.realm import Realm, create_kek, open_realm
from tessera.sqlite_registry import SQLiteRegistry
from tessera.ticket import RegistrationTicket, open_ticket, ticket_kvno

from tests.gate import needs_freeradius
from tests.server.realserver import SECRET, make_server

pytestmark = needs_freeradius
REALM = "pair.example"


class Pair:
    def __init__(self, realm, db, kek, one, two):
        self.realm, self.db, self.kek = realm, db, kek
        self.servers = (one, two)

    def device(self, device_id: str) -> tuple[DeviceKey, object]:
        key = DeviceKey.generate()
        self.realm.enrol_key(device_id, key.public_bytes(), time.time())
        entries = [ServerEntry(s.cfg.server_id, s.address, s.port) for s in self.servers]
        return key, self.realm.bundle(device_id, entries, SECRET)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, pki):
    d = tmp_path_factory.mktemp("pair")
    db, kek = d / "registry.db", d / "kek"
    realm = Realm.init(SQLiteRegistry(str(db)), create_kek(str(kek)), REALM, time.time())
    tls = pki.install_server_files(d / "tls", "radius.lab", time.time())
    with make_server(d / "one", db=db, kek=kek, tls_dir=tls, server_id="radius-1") as one, \
            make_server(d / "two", db=db, kek=kek, tls_dir=tls, server_id="radius-2") as two:
        yield Pair(realm, db, kek, one, two)


def send(server, dev: DeviceClient, build) -> bytes:
    return server.client(timeout=5.0).exchange(dev.device_id, build)


def test_two_servers_concurrent_registration_of_one_device_is_compare_and_set(pair):
    key, bundle = pair.device("race-1")
    lock = threading.Lock()
    accepted: list[tuple[str, int, bytes]] = []  # (server id, generation, DRT)
    refused: list[tuple[str, int | None, str]] = []
    lost: list[str] = []

    def register(server, count: int) -> None:
        for _ in range(count):
            dev = DeviceClient(bundle, key)  # a device core per attempt: attempts are independent
            try:
                reply = send(server, dev, lambda sid: dev.register_request(sid, time.time(), os.urandom(16)))
                reg = dev.register_reply(reply, time.time())  # checks the service's signature, opens the LLK
                with lock:
                    accepted.append((server.cfg.server_id, reg.generation, reg.drt))
            except RejectedError as exc:
                with lock:
                    refused.append((server.cfg.server_id, exc.code, exc.reason))
            except NoServerAnsweredError:
                with lock:
                    lost.append(server.cfg.server_id)

    def collided() -> bool:
        """Two registrations overlapped: one lost the compare-and-set, or (were it missing) two
        were handed the same generation."""
        generations = [g for _, g, _ in accepted]
        return bool(refused) or len(set(generations)) < len(generations)

    # rounds of 4 senders per server until the two processes have provably overlapped, with a
    # generous deadline (one round suffices on a 2-core machine)
    deadline = time.monotonic() + 60
    rounds = 0
    while True:
        threads = [threading.Thread(target=register, args=(s, 6)) for s in pair.servers for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        rounds += 1
        assert not any(t.is_alive() for t in threads)
        if collided() or time.monotonic() > deadline:
            break
    assert lost == [], lost

    # every winner got its own generation, and the generations are exactly 1..n
    generations = sorted(g for _, g, _ in accepted)
    assert generations == list(range(1, len(accepted) + 1)), generations
    # every loser got the named reason, nothing else (no internal error, no locked database)
    assert refused, f"no collision between the two servers in {rounds} rounds of 48 registrations"
    assert {(code, reason) for _, code, reason in refused} == \
        {(18, "bad-state: the device's registration changed meanwhile; retry")}, refused
    assert len(accepted) + len(refused) == rounds * 48
    assert {s for s, _, _ in accepted} == {"radius-1", "radius-2"}  # both servers registered it

    # the row is whole: state, generation, validity and DRT are the last winner's
    admin = open_realm(str(pair.db), str(pair.kek))
    rec = admin.registry.get_device("race-1")
    last = max(accepted, key=lambda a: a[1])
    assert (rec.state.value, rec.generation, rec.sealed_drt) == ("registered", last[1], last[2])
    drt = open_ticket(admin.keyring, rec.sealed_drt, RegistrationTicket, int(time.time()))
    assert (drt.device_id, drt.generation, drt.not_after) == ("race-1", rec.generation, rec.registration_not_after)
    # one audit line per accepted registration, by the server that accepted it
    events = [e for e in admin.registry.audit("race-1", limit=10_000) if e.event == "registered"]
    assert sorted((e.server_id, int(e.detail.split()[1].rstrip(","))) for e in events) == \
        sorted((s, g) for s, g, _ in accepted)

    # both servers still serve; the last registration authenticates at either, an older one is superseded
    for server in pair.servers:
        assert server.proc.running() and server.client().status(server.server_entry())
        dev = DeviceClient(bundle, key)
        dev.register_reply(send(server, dev, lambda sid: dev.register_request(sid, time.time(), os.urandom(16))),
                           time.time())
        other = pair.servers[1] if server is pair.servers[0] else pair.servers[0]
        cred = dev.ticket_reply(send(other, dev, lambda sid: dev.auth_request(sid, time.time(), os.urandom(16))),
                                time.time())
        assert cred.not_after > time.time()
    newer = DeviceClient(bundle, key)  # registers again at the first server: `dev`'s DRT is superseded
    newer.register_reply(send(pair.servers[0], newer, lambda sid: newer.register_request(sid, time.time(), os.urandom(16))),
                         time.time())
    with pytest.raises(RejectedError) as exc:
        send(pair.servers[1], dev, lambda sid: dev.auth_request(sid, time.time(), os.urandom(16)))
    assert exc.value.code == 10 and exc.value.reason.startswith("superseded: "), exc.value


def test_two_servers_rotation_on_the_registry_reaches_both(pair):
    """Rotate with the operator's own connection; wait (up to 15 s each) until the first server
    seals a TGT under the new version, then until the second renews that TGT -- the only
    refusal allowed meanwhile is unknown-key-version."""
    one, two = pair.servers
    key, bundle = pair.device("rot-2")
    dev = DeviceClient(bundle, key)
    dev.register_reply(send(one, dev, lambda sid: dev.register_request(sid, time.time(), os.urandom(16))), time.time())
    cred = dev.ticket_reply(send(one, dev, lambda sid: dev.auth_request(sid, time.time(), os.urandom(16))), time.time())
    before = ticket_kvno(cred.tgt)

    new = open_realm(str(pair.db), str(pair.kek)).rotate(time.time())
    assert new.kvno == before + 1

    deadline = time.monotonic() + 15
    while ticket_kvno(cred.tgt) != new.kvno:
        assert time.monotonic() < deadline, "radius-1 did not pick up the rotation within 15 s"
        time.sleep(0.1)
        cred = dev.ticket_reply(send(one, dev, lambda sid: dev.auth_request(sid, time.time(), os.urandom(16))),
                                time.time())

    deadline = time.monotonic() + 15
    while True:
        try:
            renewed = dev.ticket_reply(send(two, dev, lambda sid: dev.renew_request(sid, time.time(), os.urandom(16))),
                                       time.time())
            break
        except RejectedError as exc:
            assert exc.code == 5, exc  # unknown-key-version, until it reloads
            assert time.monotonic() < deadline, "radius-2 did not pick up the rotation within 15 s"
            time.sleep(0.1)
    assert ticket_kvno(renewed.tgt) == new.kvno
    assert "service keys reloaded" in two.proc.log_text()
    # the DRT sealed under the old version keeps working at both
    assert ticket_kvno(dev.registration.drt) == before
    for server in (one, two):
        dev.ticket_reply(send(server, dev, lambda sid: dev.auth_request(sid, time.time(), os.urandom(16))), time.time())
