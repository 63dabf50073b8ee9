"""Clock skew, end to end in memory: a device whose clock is off by more than the realm's skew
(300 s) is told `clock-skew` with the server's time, adopts it, and its retry succeeds — through
the real service, the real node and a simulated wire — while a device within the skew never sees
the error. A clock-skew reply nobody proved is not adopted; one the realm signed is adopted only
within the years 2020-2099 (tessera/node.py); and no `now` or offset makes a request builder
raise anything but the project's own errors."""

import calendar
import functools

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from tessera import errors as E, message as m
from tessera.device import State
from tessera.node import EARLIEST_TIME, LATEST_TIME, Node, Port, RadiusFailed, RadiusRequest
from tessera.peer import PeerInitiator, PeerResponder
from tessera.realm import Realm
from tessera.sqlite_registry import SQLiteRegistry
from tests.unit.conftest import T0, Counter, admit, make_device
from tests.unit.test_node import Net

H = 3600


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


@pytest.mark.parametrize("off", [H, -2 * H, 301])
def test_node_off_by_more_than_the_skew_adopts_the_server_time_and_its_retry_succeeds(net, off):
    a = net.nodes["SN-A"]
    net.clock["SN-A"] = off
    up(net)
    # one clock-skew answer, then every request of the device succeeds: the retry is the next request
    mine = [(op, how) for dev, op, how in net.answers if dev == "SN-A"]
    assert mine[:3] == [("register", "clock-skew"), ("register", "ok"), ("ticket", "ok")]
    assert all(how == "ok" for _, how in mine[1:])
    assert a.offset == -off and a.status(net.time_of("SN-A"))["clock_offset"] == -off
    assert a.client.registration.not_before == T0 and a.client.state is State.AUTHENTICATED
    # and the device works on the server's time: it peers and talks
    assert sorted(a.sessions) == ["SN-B"]
    net.send("SN-A", "SN-B", b"on time")
    net.send("SN-B", "SN-A", b"back")
    assert ("SN-A", "SN-B", b"on time") in net.delivered and ("SN-B", "SN-A", b"back") in net.delivered
    # much later it renews on the adopted time without another clock-skew
    net.run(seconds=7 * H, step=300)
    assert [how for dev, _, how in net.answers if dev == "SN-A"].count("clock-skew") == 1
    assert a.client.credentials.not_after > net.now + 2 * H


def test_node_within_the_skew_never_hears_of_it(net):
    net.clock["SN-A"] = 300  # exactly the allowed skew
    up(net)
    assert [(op, how) for dev, op, how in net.answers if dev == "SN-A"][:2] == [("register", "ok"), ("ticket", "ok")]
    assert net.nodes["SN-A"].offset == 0 and sorted(net.nodes["SN-A"].sessions) == ["SN-B"]


def test_clock_skew_error_names_the_server_time_and_the_device_reads_it(realm, service, rand):
    dev = make_device(realm, "SN-C")
    req = dev.register_request("radius-a", T0 + H, rand(16))
    with pytest.raises(E.ClockSkewError) as exc:
        service.handle(req, T0)
    assert exc.value.server_time == T0
    with pytest.raises(E.ClockSkewError) as got:
        dev.register_reply(service.error_reply(exc.value, T0), T0 + H)
    assert got.value.server_time == T0 and dev.state is State.ENROLLED
    # control: the same device, on the server's time, registers
    admit(service, dev, rand, T0)
    assert dev.state is State.AUTHENTICATED


def test_node_ignores_a_forged_clock_skew_reply(net):
    a = net.nodes["SN-A"]
    forged = m.ErrorMessage(E.ClockSkewError.code, T0 + 400 * 86400, "forged by someone on the path").encode()

    def forger(req):  # the first request goes out and a forger on the path answers it first, once
        req.build("radius-a")
        del net.intercept["SN-A"]
        return RadiusFailed(req.op_id, "clock-skew", forged)

    net.intercept["SN-A"] = forger
    up(net)
    assert "SN-A" not in net.intercept  # the forged answer was delivered
    # Its clock was right: had it kept it, its next requests would all succeed. Had it adopted
    # the forged time, the realm answers its retry with a real clock-skew first.
    assert [(op, how) for dev, op, how in net.answers if dev == "SN-A"][:2] == [("register", "ok"), ("ticket", "ok")]
    assert a.offset == 0 and sorted(a.sessions) == ["SN-B"]


def signed_clock_skew(service, request: bytes, server_time: int) -> bytes:
    """The realm's own clock-skew answer to `request` with `server_time` (a server whose clock
    reads that): signed by the service key over the request, as error_reply signs a proven one."""
    exc = E.ClockSkewError("skew", server_time=server_time)
    exc.proven_request = m.decode(request)
    reply = service.error_reply(exc, server_time)
    assert reply[1] == m.SignedError.TYPE
    return reply


def test_node_answered_clock_skew_every_time_backs_off_instead_of_spinning(net):
    """Retrying at once is right after the first clock-skew only: if the adopted time is refused
    again (a server whose clock jumps), the node backs off. The answers are the realm's own,
    signed: an unsigned one is not adopted at all (test_node_ignores_a_forged_clock_skew_reply)."""
    a, forged = net.nodes["SN-A"], []

    def skewed(req):
        request = req.build("radius-a")
        forged.append(net.now)
        if len(forged) > 50:  # a node that spins would loop here for ever: stop it, fail below
            return RadiusFailed(req.op_id, "no RADIUS server answered")
        when = T0 + (len(forged) % 2) * 86400  # a clock that jumps back and forth by a day
        return RadiusFailed(req.op_id, "clock-skew", signed_clock_skew(net.service, request, when))

    net.intercept["SN-A"] = skewed
    net.carrier("SN-A", True)
    net.run(seconds=20, step=0.5)
    # at once twice (the first answer, then its retry), then 1, 2, 4, 8 s apart
    assert len(forged) <= 7, forged
    assert forged[:2] == [T0, T0] and forged[2] > T0
    # control: with the realm itself answering again, the same node gets through
    del net.intercept["SN-A"]
    net.run(seconds=30, step=0.5)
    assert a.client.state.value == "authenticated"


# == a clock gone wild: the offset the node adopts is bounded, and no time breaks a request build ==
WILD_TIMES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([2**64 - 1, 2**64, -1, 0, T0, 4_102_444_800, 1e300, float("inf"), float("-inf"), float("nan")]),
)


def built_or_refused(build, state_of):
    """Call a request builder: bytes, or one of the project's errors with the state unchanged."""
    before = state_of()
    try:
        data = build()
    except E.TesseraError:
        assert state_of() == before, "a refused build changed the state"
        return None
    assert isinstance(data, bytes)
    return data


@functools.cache
def wild_world():
    """One realm for every example (built once: Hypothesis runs hundreds): two admitted devices
    and a node whose port is up."""
    rand = Counter(b"wild clocks")
    realm = Realm.init(SQLiteRegistry(":memory:"), rand(32), "example.net", T0, random=rand)
    service = realm.service("radius-a")
    dev, other = make_device(realm, "SN-W"), make_device(realm, "SN-V")
    node = Node(make_device(realm, "SN-N"), rand)
    for d in (dev, other, node.client):
        admit(service, d, rand)
    node.port = Port.UP
    return rand, dev, other, node


@settings(max_examples=300)
@given(now=WILD_TIMES)
def test_device_request_builders_raise_only_the_projects_errors_for_any_now(now):
    """Every request builder of the device core (register, authenticate, renew) and of the peer
    roles (hello, session request) takes any `now`: it writes a request, or raises a TesseraError
    (MalformedError for a time no u64 carries) before any state changes — never struct.error,
    OverflowError or ValueError."""
    rand, dev, other, _ = wild_world()
    snap = lambda: (dev.state, dev.registration, dev.credentials, dev._pending)  # noqa: E731
    for build in (lambda: dev.register_request("radius-a", now, rand(16)),
                  lambda: dev.auth_request("radius-a", now, rand(16)),
                  lambda: dev.renew_request("radius-a", now, rand(16))):
        built_or_refused(build, snap)
        dev.abandon()
    initiator = PeerInitiator(other, "SN-W")
    built_or_refused(lambda: initiator.hello(now, rand(16)), lambda: initiator.state)
    responder = PeerResponder(other)
    responder.receive_hello(PeerInitiator(dev, "SN-V").hello(T0, rand(16)), T0)
    built_or_refused(lambda: responder.session_request("radius-a", now, rand(16)), lambda: responder.state)
    # control: at a sane time the same builders write their requests
    for build in (dev.register_request, dev.auth_request, dev.renew_request):
        assert build("radius-a", T0, rand(16))
        dev.abandon()
    assert PeerInitiator(other, "SN-W").hello(T0, rand(16))


@settings(max_examples=200)
@given(now=st.one_of(st.just(T0), WILD_TIMES), server_id=st.one_of(st.just("radius-a"), st.text(max_size=80)),
       nonce=st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=40)))
@example(now=T0, server_id="radius-a", nonce=bytes(16))  # the control below always runs
def test_device_request_builders_raise_only_the_projects_errors_for_any_server_id_and_nonce(now, server_id, nonce):
    """The device core's builders with any server id (the agent takes it from the bundle) and any
    nonce as well: a request, or a TesseraError with nothing changed."""
    rand, dev, _, _ = wild_world()
    snap = lambda: (dev.state, dev.registration, dev.credentials, dev._pending)  # noqa: E731
    for build in (dev.register_request, dev.auth_request, dev.renew_request):
        data = built_or_refused(lambda: build(server_id, now, nonce), snap)
        dev.abandon()
        if now == T0 and server_id == "radius-a" and len(nonce) == 16:
            assert data, build  # control: the sane inputs are built


@settings(max_examples=300)
@given(now=WILD_TIMES, offset=WILD_TIMES, due=st.sampled_from(["register", "authenticate", "renew"]))
def test_node_request_builds_raise_only_the_projects_errors_for_any_now_and_offset(now, offset, due):
    """The node's RadiusRequest.build(server_id) — what the agent calls — for any clock and any
    offset (even one no clock-skew lets the node adopt): a request or a TesseraError."""
    rand, _, _, node = wild_world()
    reg, creds = node.client.registration, node.client.credentials
    if due == "register":
        node.client.registration = None
    elif due == "authenticate":
        node.client.credentials = None
    node.offset, node.ops, node.retry_at = offset, {}, float("-inf")
    try:
        actions = node.handle(None, now)
        for a in actions:
            if isinstance(a, RadiusRequest):
                built_or_refused(lambda: a.build("radius-a"), lambda: node.client.state)
                node.client.abandon()
    finally:
        node.client.registration, node.client.credentials, node.offset, node.ops = reg, creds, 0.0, {}
    # control: on a sane clock the node asks for what is due and the build writes it
    node.client.registration = None
    try:
        [req] = [a for a in node.handle(None, T0) if isinstance(a, RadiusRequest)]
        assert req.operation == "register" and req.build("radius-a")
        node.client.abandon()
    finally:
        node.client.registration, node.ops = reg, {}


def test_node_offset_adopted_only_from_a_signed_time_within_2020_to_2099():
    """tessera/node.py: the bounds are the documented years, and they are what the node checks."""
    assert EARLIEST_TIME == calendar.timegm((2020, 1, 1, 0, 0, 0)) and LATEST_TIME == calendar.timegm((2100, 1, 1, 0, 0, 0))
