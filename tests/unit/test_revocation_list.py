"""Revocation reaches the peers: the signed revocation list (issue 9 §3, docs/layouts.md#revocationquery,
#revocationlist).

Vectors are built from the documented layout with struct and checked with cryptography's ECDSA
over the documented context; the service answers through its real handler and registry, the
device core through its real reply check. Every refusal stands beside the same setup accepting.
"""

from __future__ import annotations

import sqlite3
import struct
import types

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from tessera import errors as E, message as m
from tessera.device import State
from tessera.identity import DeviceKey
from tessera.plugin.adapter import Plugin
from tessera.radius import attrs
from tessera.registry import AuditEvent, DeviceRecord, DeviceState
from tessera.service import MAX_REVOCATION_LIST, REVOCATIONS_CONTEXT, Policy
from tessera.sqlite_registry import MIGRATIONS, SCHEMA, SQLiteRegistry
from tests.unit.conftest import T0, admit, make_device

CONTEXT = b"tessera v1 revocations\x00"  # docs/layouts.md#revocationlist, literally
HORIZON = 3600 + 300  # default session lifetime + clock skew
N1, N2 = bytes(range(16)), bytes(range(16, 32))


def header(t: int) -> bytes:
    return struct.pack("!BB", 1, t)


def id_(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!B", len(b)) + b


def u64(v: int) -> bytes:
    return struct.pack("!Q", v)


def revoked_field(entries) -> bytes:
    return struct.pack("!H", len(entries)) + b"".join(id_(d) + u64(t) for d, t in entries)


def list_body(realm, device, server, nonce, issued, since, entries) -> bytes:
    return (header(10) + id_(realm) + id_(device) + id_(server) + nonce + u64(issued) + u64(since)
            + revoked_field(entries))


def raw_sign(private_key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(private_key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def raw_verify(public_point: bytes, signature: bytes, data: bytes) -> None:
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_point)
    key.verify(encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")),
               data, ec.ECDSA(hashes.SHA256()))


def revoke(realm, device_id: str, at: int) -> None:
    """Enrol (if needed) and revoke at `at`, as tessera-admin revoke does."""
    if realm.registry.get_device(device_id) is None:
        realm.enrol_key(device_id, DeviceKey.generate(device_id.encode().ljust(32, b".")[:32]).public_bytes(), at)
    realm.revoke(device_id, at, "test")


def ask(service, dev, now, nonce=N1, server=None):
    """The device's query answered by the service; the decoded list the device accepted."""
    reply = service.handle(dev.revocation_request(server or service.server_id, now, nonce), now)
    return dev.revocation_reply(reply, now)


# == docs/layouts.md: bytes built from the tables =================================================
def test_revocation_query_layout():
    built = header(9) + id_("example.net") + id_("SN-A") + id_("radius-a") + u64(T0) + N1
    msg = m.decode(built)
    assert isinstance(msg, m.RevocationQuery)
    assert (msg.realm, msg.device_id, msg.server_id, msg.timestamp, msg.nonce) == ("example.net", "SN-A", "radius-a",
                                                                                  T0, N1)
    assert m.RevocationQuery("example.net", "SN-A", "radius-a", T0, N1).encode() == built
    with pytest.raises(E.MalformedError):
        m.decode(built + b"\x00")  # no proof follows: a trailing byte is not a signature


def test_revocation_query_built_by_the_device_is_the_layout(realm):
    dev = make_device(realm, "SN-A")
    assert dev.revocation_request("radius-a", T0 + 0.9, N1) == \
        header(9) + id_("example.net") + id_("SN-A") + id_("radius-a") + u64(T0) + N1


def test_revocation_list_layout_and_signature_over_the_documented_context():
    key = ec.generate_private_key(ec.SECP256R1())
    point = key.public_key().public_bytes(*_x962())
    entries = (("SN-Z", T0 - 5), ("SN-Y", T0 - 60))
    body = list_body("example.net", "SN-A", "radius-a", N1, T0, T0 - HORIZON, entries)
    sig = raw_sign(key, CONTEXT + body)
    msg = m.decode(body + sig)
    assert isinstance(msg, m.RevocationList)
    assert (msg.realm, msg.device_id, msg.server_id, msg.request_nonce, msg.issued_at, msg.complete_since,
            msg.revoked, msg.signature) == ("example.net", "SN-A", "radius-a", N1, T0, T0 - HORIZON, entries, sig)
    assert msg.body() == body and msg.encode() == body + sig
    assert REVOCATIONS_CONTEXT == CONTEXT
    raw_verify(point, sig, CONTEXT + body)
    with pytest.raises(InvalidSignature):  # the context is part of what is signed
        raw_verify(point, sig, b"tessera v1 error\x00" + body)


def test_revocation_list_count_is_bounded():
    entries = tuple((f"SN-{i}", T0) for i in range(m.MAX_REVOKED))
    ok = list_body("example.net", "SN-A", "radius-a", N1, T0, 0, entries) + bytes(64)
    assert len(m.decode(ok).revoked) == m.MAX_REVOKED  # positive control
    over = list_body("example.net", "SN-A", "radius-a", N1, T0, 0, entries[:1] * (m.MAX_REVOKED + 1)) + bytes(64)
    with pytest.raises(E.MalformedError):
        m.decode(over)
    lying = header(10) + id_("example.net") + id_("SN-A") + id_("radius-a") + N1 + u64(T0) + u64(0) \
        + struct.pack("!H", 2) + id_("SN-Z") + u64(T0) + bytes(64)  # counts two, holds one
    with pytest.raises(E.MalformedError):
        m.decode(lying)


def test_service_reply_is_the_layout_signed_by_the_bundles_key(realm, service, rand):
    dev = make_device(realm, "SN-A")
    revoke(realm, "SN-Z", T0 - 5)
    query = dev.revocation_request("radius-a", T0, N1)
    reply = service.handle(query, T0)
    body = list_body("example.net", "SN-A", "radius-a", N1, T0, T0 - HORIZON, (("SN-Z", T0 - 5),))
    assert reply[:-64] == body
    point = realm.bundle("SN-A", [], "s").service_public_key
    raw_verify(point, reply[-64:], CONTEXT + body)
    with pytest.raises(InvalidSignature):
        raw_verify(point, reply[-64:], CONTEXT + body[:-1] + b"\x00")
    assert dev.revocation_reply(reply, T0).revoked == (("SN-Z", T0 - 5),)


def _x962():
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    return Encoding.X962, PublicFormat.CompressedPoint


# == the service ==================================================================================
def test_service_lists_a_revoked_device_and_not_a_registered_one(realm, service, rand):
    a, b, c = (make_device(realm, d) for d in ("SN-A", "SN-B", "SN-C"))
    admit(service, b, rand)
    admit(service, c, rand)
    realm.revoke("SN-C", T0 + 1, "stolen")
    got = ask(service, a, T0 + 2)
    assert got.revoked == (("SN-C", T0 + 1),)
    assert (got.issued_at, got.complete_since) == (T0 + 2, T0 + 2 - HORIZON)
    assert realm.registry.get_device("SN-B").state is DeviceState.REGISTERED


def test_revocations_older_than_the_horizon_are_not_listed(realm, service):
    dev = make_device(realm, "SN-A")
    revoke(realm, "SN-OLD", T0)
    revoke(realm, "SN-NEW", T0 + 1)
    got = ask(service, dev, T0 + HORIZON)  # the horizon is T0: still listed, at its edge
    assert got.revoked == (("SN-NEW", T0 + 1), ("SN-OLD", T0)) and got.complete_since == T0
    got = ask(service, dev, T0 + HORIZON + 1, N2)
    assert got.revoked == (("SN-NEW", T0 + 1),) and got.complete_since == T0 + 1


def test_horizon_follows_the_policy(rand):
    from tessera.realm import Realm
    realm = Realm.init(SQLiteRegistry(":memory:"), rand(32), "example.net", T0,
                       Policy(session_lifetime=600, clock_skew=60), random=rand)
    svc = realm.service("radius-a")
    dev = make_device(realm, "SN-A")
    revoke(realm, "SN-Z", T0)
    assert ask(svc, dev, T0 + 660).revoked == (("SN-Z", T0),)
    assert ask(svc, dev, T0 + 661, N2).revoked == ()


def _complete(realm, got) -> None:
    """The list's promise, checked against the registry: every revocation at or after
    complete_since is listed, nothing older is, newest first."""
    truth = sorted(((r.updated, r.device_id) for r in realm.registry.list_devices() if r.state is DeviceState.REVOKED),
                   reverse=True)
    assert list(got.revoked) == [(d, t) for t, d in truth if t >= got.complete_since]


def test_more_than_128_revocations_are_cut_with_complete_since_raised(realm, service):
    dev = make_device(realm, "SN-A")
    for i in range(130):
        revoke(realm, f"SN-R{i:03d}", T0 + i)
    got = ask(service, dev, T0 + 200)
    assert len(got.revoked) == 128
    assert got.revoked[0] == ("SN-R129", T0 + 129) and got.revoked[-1] == ("SN-R002", T0 + 2)
    assert got.complete_since == T0 + 2  # one second past SN-R001, the newest left out
    _complete(realm, got)


def test_a_cut_inside_one_second_drops_that_whole_second(realm, service):
    dev = make_device(realm, "SN-A")
    for i in range(126):
        revoke(realm, f"SN-R{i:03d}", T0 + 10 + i)
    for i in range(4):  # the 127th to 130th newest, all in one second: two would fit, two not
        revoke(realm, f"SN-S{i}", T0 + 5)
    got = ask(service, dev, T0 + 200)
    assert got.complete_since == T0 + 6
    assert len(got.revoked) == 126 and all(t >= T0 + 10 for _, t in got.revoked)
    _complete(realm, got)


def test_horizon_is_complete_since_when_nothing_is_cut(realm, service):
    dev = make_device(realm, "SN-A")
    for i in range(128):
        revoke(realm, f"SN-R{i:03d}", T0 + i)
    got = ask(service, dev, T0 + 200)
    assert len(got.revoked) == 128 and got.complete_since == T0 + 200 - HORIZON
    _complete(realm, got)


def test_long_device_ids_are_cut_to_one_radius_reply(realm, service):
    """128 entries of 64-byte ids would be 9 kB: the list holds what fits 3705 bytes (one
    RADIUS reply) with a 64-byte id in its header, and says so with complete_since."""
    dev = make_device(realm, "SN-A")
    for i in range(128):
        revoke(realm, f"{i:03d}".ljust(64, "x"), T0 + i)
    reply = service.handle(dev.revocation_request("radius-a", T0 + 200, N1), T0 + 200)
    got = dev.revocation_reply(reply, T0 + 200)
    assert 40 < len(got.revoked) < 128
    assert len(reply) <= MAX_REVOCATION_LIST == attrs.MAX_MESSAGE
    assert got.complete_since == got.revoked[-1][1]  # distinct seconds: one past the one left out
    _complete(realm, got)
    # the same with the longest device id asking still fits
    long_dev = make_device(realm, "q" * 64)
    reply = service.handle(long_dev.revocation_request("radius-a", T0 + 200, N2), T0 + 200)
    assert len(reply) <= attrs.MAX_MESSAGE
    assert len(long_dev.revocation_reply(reply, T0 + 200).revoked) == len(got.revoked)
    attrs.split_message(reply)  # what the plugin does with it: no MessageTooLongError


class CountingRegistry:
    """The realm's registry, counting `revoked_since` calls."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def revoked_since(self, since, limit):
        self.calls += 1
        return self.inner.revoked_since(since, limit)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_list_is_read_once_a_second_and_a_revocation_appears_the_next_second(realm, service, rand):
    dev = make_device(realm, "SN-A")
    counting = service.registry = CountingRegistry(realm.registry)
    t = T0 + 10
    assert ask(service, dev, t, rand(16)).revoked == ()
    revoke(realm, "SN-Z", t)  # later in the same second
    for frac in (0.2, 0.5, 0.999):
        assert ask(service, dev, t + frac, rand(16)).revoked == ()  # this second's list was read before
    assert counting.calls == 1
    got = ask(service, dev, t + 1, rand(16))
    assert got.revoked == (("SN-Z", t),) and got.issued_at == t + 1
    for _ in range(50):
        ask(service, dev, t + 1.5, rand(16))
    assert counting.calls == 2


def test_query_changes_nothing_and_its_timestamp_is_not_checked(realm, service, rand):
    dev = make_device(realm, "SN-A")
    revoke(realm, "SN-Z", T0)
    admit(service, dev, rand)
    rows, held = len(realm.registry.audit(limit=10_000)), len(service.replay)
    query = dev.revocation_request("radius-a", T0, N1)
    first = service.process(query, T0 + 1)
    second = service.process(query, T0 + 1)  # the same bytes again: answered again (nothing to replay)
    assert (first.operation, first.detail, second.detail) == ("revocations", "1 listed", "1 listed")
    for wrong_clock in (0, T0 + 10 ** 6, 2 ** 64 - 1):  # a clock far off still learns
        reply = service.handle(dev.revocation_request("radius-a", wrong_clock, N2), T0 + 1)
        assert dev.revocation_reply(reply, wrong_clock).revoked == (("SN-Z", T0),)
    # control: the same clock in a renewal is refused, and the refusal is remembered nowhere either
    with pytest.raises(E.ClockSkewError):
        service.handle(dev.renew_request("radius-a", T0 + 10 ** 6, rand(16)), T0 + 1)
    dev.abandon()
    assert (len(realm.registry.audit(limit=10_000)), len(service.replay)) == (rows, held)
    assert realm.registry.get_device("SN-A").generation == 1


def test_service_refuses_a_query_for_another_realm_server_or_sender(realm, service, rand):
    dev = make_device(realm, "SN-A")
    ok = m.RevocationQuery("example.net", "SN-A", "radius-a", T0, N1).encode()
    assert service.process(ok, T0).operation == "revocations"  # positive control
    with pytest.raises(E.WrongRealmError):
        service.handle(m.RevocationQuery("other.net", "SN-A", "radius-a", T0, N1).encode(), T0)
    with pytest.raises(E.WrongServerError):
        service.handle(dev.revocation_request("radius-b", T0, N1), T0)
    assert service.handle_as(ok, "SN-A", T0)
    with pytest.raises(E.WrongIdentityError):
        service.handle_as(ok, "SN-B", T0)


# == the device core ==============================================================================
def test_device_accepts_a_list_built_from_the_layout_and_signed_with_the_realms_key(realm, service):
    dev = make_device(realm, "SN-A")
    dev.revocation_request("radius-a", T0, N1)
    body = list_body("example.net", "SN-A", "radius-a", N1, T0, T0 - 7, (("SN-Q", T0 - 1),))
    got = dev.revocation_reply(body + raw_sign(service.signing_key.private_key, CONTEXT + body), T0)
    assert got.revoked == (("SN-Q", T0 - 1),) and got.complete_since == T0 - 7


def _answer(realm_name, server, nonce, signing_key, device="SN-A"):
    body = list_body(realm_name, device, server, nonce, T0, T0 - HORIZON, (("SN-Q", T0 - 1),))
    return body + raw_sign(signing_key.private_key, CONTEXT + body)


REFUSALS = {
    "tampered signature": (lambda svc, real: real[:-1] + bytes([real[-1] ^ 1]), E.BadProofError),
    "tampered entry": (lambda svc, real: real[:-70] + bytes([real[-70] ^ 1]) + real[-69:], E.BadProofError),
    "another nonce": (lambda svc, real: _answer("example.net", "radius-a", N2, svc.signing_key), E.BadProofError),
    "another device": (lambda svc, real: _answer("example.net", "radius-a", N1, svc.signing_key, "SN-B"),
                       E.BadProofError),
    "another server": (lambda svc, real: _answer("example.net", "radius-b", N1, svc.signing_key), E.WrongServerError),
    "wrong realm": (lambda svc, real: _answer("other.net", "radius-a", N1, svc.signing_key), E.BadProofError),
    "another key": (lambda svc, real: _answer("example.net", "radius-a", N1, DeviceKey.generate()), E.BadProofError),
    "unsigned revoked": (lambda svc, real: m.ErrorMessage(E.RevokedError.code, 0, "forged").encode(), E.BadProofError),
    "unsigned replay": (lambda svc, real: m.ErrorMessage(E.ReplayError.code, 0, "forged").encode(), E.ReplayError),
    "signed error for another query": (lambda svc, real: _signed_error(svc, N2), E.BadProofError),
    "a registration reply": (lambda svc, real: m.RegisterReply("example.net", "SN-A", N1, b"", b"").encode(),
                             E.MalformedError),
}


def _signed_error(svc, nonce):
    exc = E.RevokedError("forged")
    exc.proven_request = m.RevocationQuery("example.net", "SN-A", "radius-a", T0, nonce)
    return svc.error_reply(exc, T0)


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_device_refuses_a_list_that_does_not_answer_its_query(realm, service, rand, case):
    make, error = REFUSALS[case]
    dev = make_device(realm, "SN-A")
    admit(service, dev, rand)
    held = (dev.state, dev.registration, dev.credentials)
    real = service.handle(dev.revocation_request("radius-a", T0, N1), T0)
    dev.revocation_reply(real, T0)  # positive control: the realm's own answer is taken
    dev.revocation_request("radius-a", T0, N1)
    with pytest.raises(error):
        dev.revocation_reply(make(service, real), T0)
    assert (dev.state, dev.registration, dev.credentials) == held
    with pytest.raises(E.StateError):  # the query was answered: the real reply now comes too late
        dev.revocation_reply(real, T0)


def test_signed_error_for_the_query_is_raised_signed(realm, service):
    dev = make_device(realm, "SN-A")
    dev.revocation_request("radius-a", T0, N1)
    with pytest.raises(E.RevokedError) as got:
        dev.revocation_reply(_signed_error(service, N1), T0)
    assert got.value.signed


def test_a_new_query_abandons_the_old_one(realm, service):
    dev = make_device(realm, "SN-A")
    old = service.handle(dev.revocation_request("radius-a", T0, N1), T0)
    new = service.handle(dev.revocation_request("radius-a", T0, N2), T0)
    with pytest.raises(E.BadProofError):
        dev.revocation_reply(old, T0)
    dev.revocation_request("radius-a", T0, N2)
    assert dev.revocation_reply(new, T0).request_nonce == N2
    with pytest.raises(E.StateError):
        dev.revocation_reply(new, T0)


def test_query_leaves_an_outstanding_renewal_and_the_tickets_alone(realm, service, rand):
    dev = make_device(realm, "SN-A")
    admit(service, dev, rand)
    reg, creds = dev.registration, dev.credentials
    renewal = dev.renew_request("radius-a", T0 + 60, rand(16))
    assert dev.state is State.RENEWING
    dev.revocation_reply(service.handle(dev.revocation_request("radius-a", T0 + 60, N1), T0 + 60), T0 + 60)
    assert dev.state is State.RENEWING and (dev.registration, dev.credentials) == (reg, creds)
    new = dev.ticket_reply(service.handle(renewal, T0 + 60), T0 + 60)
    assert dev.state is State.AUTHENTICATED and dev.credentials is new and new is not creds


def test_device_builds_no_query_for_a_time_a_message_cannot_carry(realm):
    dev = make_device(realm, "SN-A")
    with pytest.raises(E.MalformedError):
        dev.revocation_request("radius-a", 2 ** 64, N1)
    with pytest.raises(E.StateError):  # nothing was made outstanding
        dev.revocation_reply(b"", T0)


# == the FreeRADIUS module ========================================================================
RLM = types.SimpleNamespace(RLM_MODULE_REJECT=0, RLM_MODULE_FAIL=1, RLM_MODULE_OK=2, RLM_MODULE_HANDLED=3,
                            RLM_MODULE_NOOP=7, L_DBG=1, L_INFO=3, L_ERR=4)


def test_plugin_answers_a_full_query_and_refuses_another_realms(realm, service):
    logged = []
    rlm = types.SimpleNamespace(**vars(RLM), radlog=lambda level, text: logged.append(text))
    plugin = Plugin(service, rlm, realm, clock=lambda: float(T0 + 200))
    dev = make_device(realm, "SN-A")
    for i in range(130):
        revoke(realm, f"FOC2231X0AB-{i:04d}", T0 + i)
    query = dev.revocation_request("radius-a", T0 + 200, N1)
    pieces = tuple(("Tessera-Message", h) for h in attrs.split_to_hex(query))
    rc, update = plugin.authorize((("User-Name", "SN-A"),) + pieces)
    assert rc == RLM.RLM_MODULE_OK
    reply = attrs.join_from_hex(v for k, _, v in update["reply"] if k == "Tessera-Reply")
    assert len(dev.revocation_reply(reply, T0 + 200).revoked) == 128
    bad = m.RevocationQuery("other.net", "SN-A", "radius-a", T0, N2).encode()
    rc, update = plugin.authorize((("User-Name", "SN-A"), ("Tessera-Message", attrs.to_hex(bad))))
    assert rc == RLM.RLM_MODULE_REJECT and dict((i[0], i[-1]) for i in update["reply"])["Tessera-Error"] == "6"
    assert logged and all(service.signing_key.pem().decode().splitlines()[1] not in line for line in logged)


# == the registry =================================================================================
def _row(device_id: str, state: DeviceState, updated: int) -> DeviceRecord:
    return DeviceRecord(device_id, b"\x02" + bytes(32), state, "key", 1, updated)


def test_sqlite_revoked_since_newest_first_bounded_and_only_revoked(tmp_path):
    reg = SQLiteRegistry(str(tmp_path / "r.db"))
    for device_id, state, at in [("d-a", DeviceState.REVOKED, 100), ("d-b", DeviceState.REVOKED, 300),
                                 ("d-c", DeviceState.REGISTERED, 500), ("d-d", DeviceState.REVOKED, 200),
                                 ("d-e", DeviceState.REVOKED, 300), ("d-f", DeviceState.ENROLLED, 400),
                                 ("d-g", DeviceState.REVOKED, 99)]:
        reg.add_device(_row(device_id, state, at), AuditEvent(at, "enrolled", device_id))
    assert reg.revoked_since(100, 10) == [("d-e", 300), ("d-b", 300), ("d-d", 200), ("d-a", 100)]
    assert reg.revoked_since(101, 10) == [("d-e", 300), ("d-b", 300), ("d-d", 200)]
    assert reg.revoked_since(0, 2) == [("d-e", 300), ("d-b", 300)]
    assert reg.revoked_since(301, 10) == []
    # the time is the revocation's: set_state writes `updated`
    reg.set_state("d-c", DeviceState.REVOKED, 600, AuditEvent(600, "revoked", "d-c"))
    assert reg.revoked_since(0, 1) == [("d-c", 600)]
    reg.set_state("d-e", DeviceState.ENROLLED, 700, AuditEvent(700, "test", "d-e"))  # no longer revoked
    assert ("d-e", 300) not in reg.revoked_since(0, 10) and len(reg.revoked_since(0, 10)) == 5


def _plan(path: str) -> str:
    db = sqlite3.connect(path)
    try:
        return " ".join(r[-1] for r in db.execute(
            "EXPLAIN QUERY PLAN SELECT device_id, updated FROM device WHERE state = 'revoked' AND updated >= ? "
            "ORDER BY updated DESC, device_id DESC LIMIT ?", (0, 129)))
    finally:
        db.close()


def test_sqlite_revoked_since_uses_the_index_on_a_large_registry(tmp_path):
    path = str(tmp_path / "big.db")
    reg = SQLiteRegistry(path)
    reg._db.execute("BEGIN")
    reg._db.executemany("INSERT INTO device (device_id, public_key, state, enrolled_by, created, updated) "
                        "VALUES (?, x'02', ?, 'key', 1, ?)",
                        ((f"d{i:06d}", "revoked" if i % 1000 == 0 else "registered", i) for i in range(100_000)))
    reg._db.execute("COMMIT")
    reg._db.execute("ANALYZE")
    plan = _plan(path)
    assert "USING COVERING INDEX device_revoked" in plan or "USING INDEX device_revoked" in plan, plan
    assert "TEMP B-TREE" not in plan, plan  # the index gives the order too
    assert reg.revoked_since(99_000, 5) == [("d099000", 99_000)]
    # control: without the index, the same query scans the table
    reg._db.execute("DROP INDEX device_revoked")
    assert "SCAN device" in _plan(path)


def test_index_exists_in_new_and_in_migrated_registries(tmp_path):
    fresh = str(tmp_path / "fresh.db")
    SQLiteRegistry(fresh).close()
    # a version-1 file, as the code before this index left it
    v1 = str(tmp_path / "v1.db")
    db = sqlite3.connect(v1)
    db.executescript(SCHEMA)
    for statement in MIGRATIONS[0]:
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    assert "device_revoked" not in _indexes(v1)  # control
    SQLiteRegistry(v1, migrate=True).close()  # tessera-admin migrate
    for path in (fresh, v1):
        assert "device_revoked" in _indexes(path), path
        assert "device_revoked" in _plan(path)


def _indexes(path: str) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    finally:
        db.close()
