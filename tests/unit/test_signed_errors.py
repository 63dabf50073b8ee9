"""Every error a device acts on is proven (issue 8 §4; docs/layouts.md#signederror).

In memory, through the real service, the real device core and the real node on the simulated
wire of test_node.py. A forger on the RADIUS path (anyone holding the RADIUS secret) answers a
device's request with an unsigned ErrorMessage — clock-skew with server time 2^64-1, revoked,
unknown-device, superseded, not-registered — or replays a SignedError the realm really wrote for
another request: the device changes nothing and its next request succeeds. The same errors
written by the realm for that request are acted on (the positive controls, in the same setup).
The service checks a request's proof before the clock and the registry, and signs only errors
that answer a proven request."""

from __future__ import annotations

import pytest

from tessera import errors as E, kdf, message as m
from tessera.device import DeviceClient, State
from tessera.identity import verify
from tessera.node import RadiusFailed
from tessera.peer import PeerInitiator, PeerResponder
from tessera.plugin.adapter import Plugin
from tessera.radius import attrs
from tessera.seal import point_from_bytes
from tessera.service import ERROR_CONTEXT, Service
from tessera.sqlite_registry import SQLiteRegistry
from tests.unit.conftest import SERVERS, T0, admit, make_device
from tests.unit.test_node import Net

H = 3600
RENEW_DUE = 6 * H + 600  # a TGT of 8 h is renewed in its last quarter: by then a renewal has gone out
STATE_ERRORS = [E.RevokedError, E.UnknownDeviceError, E.SupersededError, E.NotRegisteredError]


@pytest.fixture
def net(realm, service, rand):
    n = Net(realm, service, rand)
    n.add("SN-A", "bundle")
    n.add("SN-B", "certificate")
    return n


def up(net, seconds: float = 3.0) -> None:
    for dev in net.nodes:
        net.carrier(dev, True)
    net.run(seconds=seconds)


def mine(net, dev: str = "SN-A") -> list[tuple[str, str]]:
    return [(op, how) for d, op, how in net.answers if d == dev]


def forge_once(net, dev: str, reply: bytes | None = None, make=None):
    """Answer `dev`'s next request in the realm's place, once: with `reply`, or with
    make(request bytes) (the request is built, as the agent builds it, and never reaches the realm)."""
    seen = []

    def forger(req):
        request = req.build("radius-a")
        seen.append(m.decode(request))
        del net.intercept[dev]
        return RadiusFailed(req.op_id, "forged", reply if make is None else make(request))

    net.intercept[dev] = forger
    return seen


def signed(service, exc: E.TesseraError, request: bytes, now: float) -> bytes:
    """What the realm writes for `exc` refusing the proven `request` (as its handlers mark it)."""
    exc.proven_request = m.decode(request)
    reply = service.error_reply(exc, now)
    assert reply[1] == m.SignedError.TYPE
    return reply


# == the node: forged errors change nothing, the realm's own are acted on ==========================
def test_node_ignores_a_forged_clock_skew_of_2_64_minus_1_and_its_next_request_succeeds(net):
    """Today's attack: a clock-skew naming server time 2^64-1 moved the node's clock there, and
    every request build after it raised struct.error: the agent was offline until restarted."""
    a = net.nodes["SN-A"]
    seen = forge_once(net, "SN-A", m.ErrorMessage(E.ClockSkewError.code, 2**64 - 1, "forged").encode())
    up(net)
    assert [type(r) for r in seen] == [m.RegisterRequest]  # the forged answer was delivered, to the first request
    assert a.offset == 0 and a.status(net.now)["clock_offset"] == 0
    # its next requests build and the realm serves them, on its own (right) clock
    assert mine(net)[:2] == [("register", "ok"), ("ticket", "ok")]
    assert a.client.state is State.AUTHENTICATED and sorted(a.sessions) == ["SN-B"]


def test_node_ignores_a_forged_clock_skew_answering_its_session_request(net):
    """The session path too: the peer role reads an unsigned ErrorMessage (the realm never signs
    a session request's error: the device only abandons that handshake), so its clock-skew is
    not adopted either — not even a time within the years the node accepts from a signed one.
    SN-B answers SN-A's hello with a session request; a forger answers that."""
    b = net.nodes["SN-B"]
    net.carrier("SN-B", True)
    net.run(seconds=2)
    forged = m.ErrorMessage(E.ClockSkewError.code, T0 + 400 * 86400, "forged").encode()
    seen = forge_once(net, "SN-B", forged)
    net.carrier("SN-A", True)
    net.run(seconds=3)
    assert [type(r) for r in seen] == [m.SessionRequest]
    assert b.offset == 0 and b.stats["handshakes_failed"] >= 1
    # had it moved its clock 400 days on, the realm would have refused its next request as clock-skew
    assert all(how != "clock-skew" for _, how in mine(net, "SN-B")), mine(net, "SN-B")
    # and the next handshake, answered by the realm, gets through on its own clock
    net.run(seconds=20)
    assert sorted(b.sessions) == ["SN-A"] and ("session", "ok") in mine(net, "SN-B")


@pytest.mark.parametrize("error", STATE_ERRORS, ids=lambda c: c.name)
def test_node_keeps_its_credentials_on_a_forged_state_error(net, error):
    """An unsigned revoked / unknown-device / superseded / not-registered answering the node's
    renewal: its DRT and TGT stay, it does not register again, and the retry renews."""
    a = net.nodes["SN-A"]
    up(net)
    reg, generation = a.client.registration, a.client.registration.generation
    seen = forge_once(net, "SN-A", m.ErrorMessage(error.code, 0, "forged").encode())
    net.run(seconds=RENEW_DUE, step=300)
    assert [type(r) for r in seen] == [m.RenewRequest]
    assert a.client.registration is reg and a.client.registration.generation == generation
    assert [op for op, _ in mine(net)].count("register") == 1  # only the first registration, ever
    assert ("ticket", "ok") in mine(net)[2:]  # the retry renewed
    assert a.client.state is State.AUTHENTICATED and a.client.credentials.not_after > net.now + H
    assert net.realm.registry.get_device("SN-A").generation == generation


def test_node_acts_on_the_realms_signed_revoked(net):
    """Positive control for the test above, same setup: the realm revokes SN-A; its signed
    answer to the renewal makes the node drop its DRT and TGT."""
    a = net.nodes["SN-A"]
    up(net)
    net.realm.revoke("SN-A", net.now, "test")
    net.run(seconds=RENEW_DUE, step=300)
    assert ("ticket", "revoked") in mine(net)
    assert a.client.registration is None and a.client.credentials is None
    assert ("register", "revoked") in mine(net)  # it registers afresh (and is refused)


def test_node_acts_on_the_realms_signed_superseded_and_registers_again(net, realm):
    """The realm's signed superseded (another registration of SN-A — its twin — replaced the
    DRT): the node registers afresh and is served again."""
    a = net.nodes["SN-A"]
    up(net)
    twin = DeviceClient(realm.bundle("SN-A", SERVERS, "s3cret"), a.client.key)
    twin.register_reply(net.service.handle(twin.register_request("radius-a", net.now + 1, net.rand(16)), net.now + 1),
                        net.now + 1)
    net.run(seconds=RENEW_DUE, step=300)
    assert ("ticket", "superseded") in mine(net)
    after = mine(net)[mine(net).index(("ticket", "superseded")) + 1:]
    assert after[:2] == [("register", "ok"), ("ticket", "ok")]
    assert a.client.registration.generation == 3 and a.client.state is State.AUTHENTICATED


def test_node_acts_on_the_realms_signed_unknown_device(net, realm, rand):
    """A registry that lost SN-A (restored from before its enrolment): the realm's signed
    unknown-device answers the renewal and the node drops its tickets."""
    a = net.nodes["SN-A"]
    up(net)
    net.service = Service(realm.name, "radius-a", net.service.keyring, SQLiteRegistry(":memory:"),
                          net.service.signing_key, rand, net.service.policy)
    net.run(seconds=RENEW_DUE, step=300)
    assert ("ticket", "unknown-device") in mine(net)
    assert a.client.registration is None and a.client.credentials is None


def test_node_ignores_a_signed_error_replayed_from_another_request(net):
    """A SignedError the realm really wrote — revoked, for SN-A, by this server — but for
    another request's nonce (recorded earlier, replayed now): not acted on; the retry renews."""
    a = net.nodes["SN-A"]
    up(net)
    reg = a.client.registration
    old = a.client.renew_request("radius-a", net.now, net.rand(16))  # a request the recorder saw answered
    a.client.abandon()
    recorded = signed(net.service, E.RevokedError("device SN-A is revoked"), old, net.now)
    seen = forge_once(net, "SN-A", recorded)
    net.run(seconds=RENEW_DUE, step=300)
    assert [type(r) for r in seen] == [m.RenewRequest] and seen[0].nonce != m.decode(old).nonce
    assert a.client.registration is reg and ("ticket", "ok") in mine(net)[2:]
    assert [op for op, _ in mine(net)].count("register") == 1
    # control, same setup: the realm's signed revoked for *this* request is acted on — the node
    # drops its DRT and registers afresh (the registry, not revoked in truth, serves it)
    seen = forge_once(net, "SN-A", make=lambda request: signed(net.service, E.RevokedError("revoked"), request, net.now))
    net.run(seconds=RENEW_DUE, step=300)
    assert [type(r) for r in seen] == [m.RenewRequest] and a.client.registration is not reg
    assert [op for op, _ in mine(net)].count("register") == 2 and a.client.registration.generation == 2


@pytest.mark.parametrize("server_time, adopted", [
    (2**64 - 1, False), (4_102_444_800, False), (1_000_000, False), (1_577_836_799, False),
    (T0 + 400 * 86400, True), (1_577_836_800, True),
], ids=["2^64-1", "2100", "1970", "2019-12-31", "T0+400d", "2020-01-01"])
def test_node_adopts_a_signed_server_time_only_within_2020_to_2099(net, server_time, adopted):
    """A broken realm clock, signed (the realm's own error for the node's request): outside the
    years 2020-2099 it is not adopted, the node backs off and its retry is served on its own clock.
    Inside them it is adopted — the retry goes out on that time, which the (right) realm then
    refuses with a real clock-skew, and the node comes back to the realm's time."""
    a = net.nodes["SN-A"]
    seen = forge_once(net, "SN-A", make=lambda request: signed(
        net.service, E.ClockSkewError("skew", server_time=server_time), request, net.now))
    up(net, seconds=10)
    assert [type(r) for r in seen] == [m.RegisterRequest]
    if adopted:
        assert mine(net)[:3] == [("register", "clock-skew"), ("register", "ok"), ("ticket", "ok")]
    else:
        assert mine(net)[:2] == [("register", "ok"), ("ticket", "ok")]
    assert abs(a.offset) < 1 and a.client.state is State.AUTHENTICATED and sorted(a.sessions) == ["SN-B"]


# == the device core ==============================================================================
@pytest.mark.parametrize("error", [*STATE_ERRORS, E.ClockSkewError], ids=lambda c: c.name)
def test_device_unsigned_state_error_is_transient_and_the_signed_one_is_not(realm, service, rand, error):
    dev = make_device(realm, "SN-D")
    admit(service, dev, rand)
    reg, creds = dev.registration, dev.credentials
    request = dev.renew_request("radius-a", T0, rand(16))
    with pytest.raises(E.BadProofError):
        dev.ticket_reply(m.ErrorMessage(error.code, 2**64 - 1, "forged").encode(), T0)
    assert (dev.registration, dev.credentials, dev.state) == (reg, creds, State.AUTHENTICATED)
    # control: the realm's signed error for this request is raised as itself, signed
    dev.renew_request("radius-a", T0, rand(16))
    request = dev._pending[1].encode()
    with pytest.raises(error) as exc:
        dev.ticket_reply(signed(service, error("real"), request, T0), T0)
    assert exc.value.signed and exc.value.server_time == T0


def test_device_non_state_errors_stay_unsigned_and_are_read_as_they_come(realm, service, rand):
    """docs/layouts.md#errormessage: replay, bad-proof, expired... are unsigned; the device reads
    the named error (for the log and the back-off) and changes nothing."""
    dev = make_device(realm, "SN-E")
    admit(service, dev, rand)
    request = dev.renew_request("radius-a", T0, rand(16))
    service.handle(request, T0)
    dev.abandon()
    dev.renew_request("radius-a", T0, rand(16))
    with pytest.raises(E.ReplayError) as exc:
        service.handle(request, T0)
    reply = service.error_reply(exc.value, T0)
    assert reply[1] == m.ErrorMessage.TYPE
    with pytest.raises(E.ReplayError) as got:
        dev.ticket_reply(reply, T0)
    assert not got.value.signed and dev.state is State.AUTHENTICATED


# == the service: the proof before the clock and the registry; signatures only for the proven ====
class CountingKey:
    """The realm's signing key, counting signatures."""

    def __init__(self, key):
        self.key, self.count = key, 0

    def sign(self, data: bytes) -> bytes:
        self.count += 1
        return self.key.sign(data)


def flipped_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def refused(service, request: bytes, now: float = T0) -> E.TesseraError:
    with pytest.raises(E.TesseraError) as exc:
        service.handle(request, now)
    return exc.value


def test_service_answers_an_unproven_request_bad_proof_whatever_the_device_state(realm, service, rand):
    """A request whose proof does not verify learns nothing about the device: bad-proof for a
    revoked device (registration, authentication, renewal, session), a superseded one, and a
    clock an hour off. The same requests with their proofs intact get the state's own error."""
    dev, peer = make_device(realm, "SN-R"), make_device(realm, "SN-P")
    admit(service, dev, rand)
    admit(service, peer, rand)
    # superseded: a second registration replaces the DRT the device holds
    old = DeviceClient(realm.bundle("SN-R", SERVERS, "s3cret"), dev.key)
    old.registration, old.credentials, old.state = dev.registration, dev.credentials, State.AUTHENTICATED
    admit(service, dev, rand, T0 + 1)
    for build, name in ((old.auth_request, "superseded"), (old.renew_request, "superseded")):
        request = build("radius-a", T0 + 2, rand(16))
        assert refused(service, flipped_last(request), T0 + 2).name == "bad-proof"
        assert refused(service, request, T0 + 2).name == name
        old.abandon()
    # a clock an hour fast
    request = dev.renew_request("radius-a", T0 + H, rand(16))
    dev.abandon()
    assert refused(service, flipped_last(request)).name == "bad-proof"
    assert refused(service, request).name == "clock-skew"
    # revoked
    hello = PeerInitiator(peer, "SN-R").hello(T0 + 2, rand(16))
    responder = PeerResponder(dev)
    responder.receive_hello(hello, T0 + 2)
    realm.revoke("SN-R", T0 + 2, "test")
    requests = [dev.register_request("radius-a", T0 + 3, rand(16)), dev.auth_request("radius-a", T0 + 3, rand(16)),
                dev.renew_request("radius-a", T0 + 3, rand(16)), responder.session_request("radius-a", T0 + 3, rand(16))]
    dev.abandon()
    for request in requests:
        assert refused(service, flipped_last(request), T0 + 3).name == "bad-proof", m.decode(request)
        assert refused(service, request, T0 + 3).name == "revoked", m.decode(request)


def test_service_checks_the_proof_before_a_tickets_validity(realm, service, rand):
    """An expired TGT, in a renewal and in a session request that are fresh otherwise: with the
    proof broken, bad-proof (the ticket's end is not told); intact, expired."""
    dev, peer = make_device(realm, "SN-X"), make_device(realm, "SN-Y")
    admit(service, dev, rand)
    admit(service, peer, rand)
    late = int(dev.credentials.not_after) + 3600  # the TGT ended an hour ago; the DRT still holds
    stk, tgt = dev.credentials.stk, dev.credentials.tgt
    renew = m.RenewRequest(realm.name, "SN-X", "radius-a", late, rand(16), tgt)
    renew.mac = kdf.mac(kdf.derive(stk, kdf.RENEW_PROOF), renew.body())
    hello = PeerInitiator(peer, "SN-X").hello(T0, rand(16))
    session = m.SessionRequest(realm.name, "SN-X", "radius-a", late, rand(16), tgt, hello)
    session.mac = kdf.mac(kdf.derive(stk, kdf.SESSION_REQUEST), session.body())
    for request in (renew.encode(), session.encode()):
        assert refused(service, flipped_last(request), late).name == "bad-proof", m.decode(request)
        assert refused(service, request, late).name == "expired", m.decode(request)


def test_service_signs_only_errors_that_answer_a_proven_request(realm, service, rand):
    """The cost bound: an ECDSA signature only for an error a device acts on that answers a
    request whose proof verified. A flood of unproven requests for a revoked device, of
    registrations for unknown ids and of session requests costs no signature; each proven
    request refused as revoked costs one — verified with the bundle's service key."""
    key = service.signing_key = CountingKey(service.signing_key)
    dev, peer = make_device(realm, "SN-S"), make_device(realm, "SN-Q")
    admit(service, dev, rand)
    admit(service, peer, rand)
    hello = PeerInitiator(peer, "SN-S").hello(T0, rand(16))
    responder = PeerResponder(dev)
    responder.receive_hello(hello, T0)
    session = responder.session_request("radius-a", T0, rand(16))
    realm.revoke("SN-S", T0, "test")
    key.count = 0
    stranger = DeviceClient(realm.bundle("SN-S", SERVERS, "s3cret"), dev.key)
    stranger.device_id = "SN-NOBODY"
    for i in range(50):
        request = dev.auth_request("radius-a", T0, rand(16))
        dev.abandon()
        for unproven in (flipped_last(request), stranger.register_request("radius-a", T0, rand(16)), session):
            stranger.abandon()
            exc = refused(service, unproven)
            reply = service.error_reply(exc, T0)
            assert reply[1] == m.ErrorMessage.TYPE, exc.reason
    assert key.count == 0
    bundle_key = point_from_bytes(realm.bundle("SN-S", SERVERS, "s3cret").service_public_key)
    for i in range(3):
        request = dev.auth_request("radius-a", T0, rand(16))
        exc = refused(service, request)
        reply = m.decode(service.error_reply(exc, T0))
        assert isinstance(reply, m.SignedError) and reply.code == E.RevokedError.code
        assert verify(bundle_key, reply.signature, ERROR_CONTEXT + reply.body())
        with pytest.raises(E.RevokedError):
            dev.ticket_reply(reply.encode(), T0)
    assert key.count == 3


# == the FreeRADIUS adapter calls the service's real interface =====================================
def test_plugin_reject_carries_the_services_signed_error(realm, service, rand):
    """plugin/adapter.py `_error_reply` calls `Service.error_reply`: the reject of a revoked
    device's proven request carries the SignedError the device acts on; the reject of the same
    request with a broken proof carries an unsigned ErrorMessage, which it does not act on."""
    import types

    rlm = types.SimpleNamespace(RLM_MODULE_REJECT=0, RLM_MODULE_OK=2, L_DBG=1, L_INFO=3, L_ERR=4,
                                radlog=lambda level, text: None)
    plugin = Plugin(service, rlm, clock=lambda: float(T0))
    dev = make_device(realm, "SN-T")
    admit(service, dev, rand)
    realm.revoke("SN-T", T0, "test")

    def reject(request: bytes) -> bytes:
        pairs = (("User-Name", "SN-T"), *(("Tessera-Message", h) for h in attrs.split_to_hex(request)))
        rc, update = plugin.authorize(pairs)
        assert rc == rlm.RLM_MODULE_REJECT
        return attrs.join_from_hex(v for k, _, v in (t for t in update["reply"] if len(t) == 3) if k == "Tessera-Reply")

    reg = dev.registration
    request = dev.auth_request("radius-a", T0, rand(16))
    with pytest.raises(E.BadProofError):
        dev.ticket_reply(reject(flipped_last(request)), T0)
    assert dev.registration is reg
    request = dev.auth_request("radius-a", T0, rand(16))
    reply = reject(request)
    assert reply[1] == m.SignedError.TYPE
    with pytest.raises(E.RevokedError) as exc:
        dev.ticket_reply(reply, T0)
    assert exc.value.signed
