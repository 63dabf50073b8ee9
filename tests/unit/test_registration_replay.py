"""A replayed registration changes nothing (issue 8, item 1), in memory: the freshness of a
registration is checked against the device's registry row, so neither a restarted server nor
another server of the realm accepts a request twice, and the device's tickets keep working."""

import os

import pytest

from tessera import errors as E
from tessera.realm import Realm
from tessera.sqlite_registry import SQLiteRegistry

from tests.unit.conftest import T0, Counter, make_device

KEK = bytes(range(32))


@pytest.fixture
def db(tmp_path):
    path = str(tmp_path / "registry.db")
    Realm.init(SQLiteRegistry(path), KEK, "example.net", T0, random=Counter(b"replay"))
    return path


def server(db: str, server_id: str = "radius-a"):
    """A server process: its own registry connection, realm and (empty) replay cache."""
    realm = Realm(SQLiteRegistry(db), KEK, random=Counter(server_id.encode()))
    return realm, realm.service(server_id)


def registered(db, device_id="SN-R"):
    realm, svc = server(db)
    dev = make_device(realm, device_id)
    request = dev.register_request("radius-a", T0, os.urandom(16))
    dev.register_reply(svc.handle(request, T0), T0)
    dev.ticket_reply(svc.handle(dev.auth_request("radius-a", T0, os.urandom(16)), T0), T0)
    return realm, svc, dev, request


def test_register_replay_after_restart_is_refused_and_changes_nothing(db):
    realm, svc, dev, captured = registered(db)
    with pytest.raises(E.ReplayError):  # the same process: its cache and the row agree
        svc.handle(captured, T0 + 1)
    restarted_realm, restarted = server(db)  # a new process: empty replay cache
    row = restarted_realm.registry.get_device("SN-R")
    with pytest.raises(E.ReplayError) as exc:
        restarted.handle(captured, T0 + 200)  # still within the 300 s skew
    assert str(exc.value) == "this registration request was already accepted"
    assert restarted_realm.registry.get_device("SN-R") == row  # generation, DRT, freshness: unchanged
    # the real device's tickets still work at the restarted server
    dev.ticket_reply(restarted.handle(dev.auth_request("radius-a", T0 + 200, os.urandom(16)), T0 + 200), T0 + 200)
    dev.ticket_reply(restarted.handle(dev.renew_request("radius-a", T0 + 201, os.urandom(16)), T0 + 201), T0 + 201)
    # control: the device's own new request is accepted (even one stamped in the captured one's second)
    reg = dev.register_reply(restarted.handle(dev.register_request("radius-a", T0, os.urandom(16)), T0 + 202),
                             T0 + 202)
    assert reg.generation == 2 == restarted_realm.registry.get_device("SN-R").generation


def test_register_replay_to_another_server_of_the_realm(db):
    _, _, dev, captured = registered(db)
    _, other = server(db, "radius-b")
    with pytest.raises(E.WrongServerError):  # each request names its server
        other.handle(captured, T0 + 5)
    # a second server that was given the same id (what install-radius now refuses): the row refuses it
    twin_realm, twin = server(db, "radius-a")
    with pytest.raises(E.ReplayError):
        twin.handle(captured, T0 + 5)
    assert twin_realm.registry.get_device("SN-R").generation == 1
    # control: a fresh request from the device, addressed to radius-b, is accepted there
    reg = dev.register_reply(other.handle(dev.register_request("radius-b", T0 + 6, os.urandom(16)), T0 + 6), T0 + 6)
    assert reg.generation == 2


def test_an_older_request_never_delivered_is_refused_after_a_newer_one(db):
    """An attacker who held back a request (dropped it on the wire) cannot use it once the device
    registered with a later one: older is a replay too, whatever its nonce."""
    realm, svc = server(db)
    dev = make_device(realm, "SN-H")
    held_back = dev.register_request("radius-a", T0, os.urandom(16))
    dev.register_reply(svc.handle(dev.register_request("radius-a", T0 + 1, os.urandom(16)), T0 + 1), T0 + 1)
    _, restarted = server(db)
    with pytest.raises(E.ReplayError) as exc:
        restarted.handle(held_back, T0 + 2)
    assert str(exc.value) == f"registration request of {T0} is older than the last accepted one ({T0 + 1})"
    assert realm.registry.get_device("SN-H").generation == 1


def test_two_registrations_in_one_second_then_the_first_replayed(db):
    """A failover after a lost reply: the device's request reached radius-a (accepted, the reply
    lost), its retry in the same second goes to radius-b (accepted too). The first replayed
    afterwards, anywhere, is refused: the row keeps every nonce of its second, not only the last."""
    realm, svc = server(db)
    dev = make_device(realm, "SN-S")
    first = dev.register_request("radius-a", T0, os.urandom(16))
    svc.handle(first, T0)  # the reply is lost
    dev.abandon()
    _, other = server(db, "radius-b")
    reg = dev.register_reply(other.handle(dev.register_request("radius-b", T0, os.urandom(16)), T0), T0)
    assert reg.generation == 2 == realm.registry.get_device("SN-S").generation
    _, restarted = server(db)
    with pytest.raises(E.ReplayError) as exc:
        restarted.handle(first, T0 + 30)
    assert str(exc.value) == "this registration request was already accepted"
    assert realm.registry.get_device("SN-S").generation == 2
    # the device's tickets from the second registration work
    dev.ticket_reply(restarted.handle(dev.auth_request("radius-a", T0 + 30, os.urandom(16)), T0 + 30), T0 + 30)


def test_a_device_registering_without_end_in_one_second_is_stopped(db):
    """The row keeps at most MAX_NONCES_PER_SECOND nonces: more in one second are refused."""
    from tessera.registry import MAX_NONCES_PER_SECOND

    realm, svc = server(db)
    dev = make_device(realm, "SN-M")
    for _ in range(MAX_NONCES_PER_SECOND):
        dev.register_reply(svc.handle(dev.register_request("radius-a", T0, os.urandom(16)), T0), T0)
    with pytest.raises(E.ReplayError, match=f"more than {MAX_NONCES_PER_SECOND} registrations in second {T0}"):
        svc.handle(dev.register_request("radius-a", T0, os.urandom(16)), T0)
    dev.abandon()
    row = realm.registry.get_device("SN-M")
    assert row.generation == MAX_NONCES_PER_SECOND and len(row.register_request_nonces) == 16 * MAX_NONCES_PER_SECOND
    dev.register_reply(svc.handle(dev.register_request("radius-a", T0 + 1, os.urandom(16)), T0 + 1), T0 + 1)  # control
    assert len(realm.registry.get_device("SN-M").register_request_nonces) == 16


def test_registration_proof_is_checked_before_freshness(db):
    """A forged request with an old time learns 'bad-proof', not the device's registration time,
    and nothing about it is written but the (bounded) audit line."""
    from tessera.device import DeviceClient
    from tessera.identity import BootstrapBundle, DeviceKey

    realm, svc, _, captured = registered(db)
    row = realm.registry.get_device("SN-R")
    forger = DeviceClient(BootstrapBundle("example.net", "SN-R", realm.service_public_key, []), DeviceKey.generate())
    with pytest.raises(E.BadProofError):
        svc.handle(forger.register_request("radius-a", T0, os.urandom(16)), T0 + 1)
    with pytest.raises(E.ReplayError):  # control: a signed request with that time is a replay
        svc.handle(captured, T0 + 1)
    assert realm.registry.get_device("SN-R") == row


def test_refused_replays_are_audited_bounded(db):
    realm, svc, _, captured = registered(db)
    _, restarted = server(db)
    for t in range(T0 + 1, T0 + 101):
        with pytest.raises(E.ReplayError):
            restarted.handle(captured, t)
    rows = [e for e in realm.registry.audit("SN-R", 1000) if e.event == "register-rejected"]
    assert [(e.detail, e.count) for e in rows] == [("replay", 1), ("replay (x59 since the last row)", 59)]
