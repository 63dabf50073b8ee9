"""A device whose clock is off recovers by itself, from the realm's signed time only.

The device core takes a clock-skew's server time only when the realm signed it over this very
request (docs/layouts.md#signederror); the node adopts it as its offset and uses its corrected
time for every request, ticket check and peer handshake (tessera/node.py). A clock that fell
behind while its TGT still looks valid is corrected from the realm's signed revocation list,
which answers the node's own poll nonce. The frames are built as the realm builds them
(`Service.error_reply`, `m.RevocationList` signed with the service key), or forged without it.
"""

import pytest

from tessera import errors as E, message as m
from tessera.node import CLOCK_SLACK, LinkUp, Log, Node, RadiusAnswer, RadiusFailed
from tessera.service import ERROR_CONTEXT, REVOCATIONS_CONTEXT
from tests.unit.conftest import T0, make_device
from tests.unit.test_clock import net, up  # noqa: F401 (net is a fixture: two nodes, SN-A and SN-B)

MIN10 = 600


def signed_skew(service, request: bytes, server_time: int) -> bytes:
    """The realm's clock-skew for `request`, signed over its nonce (as error_reply signs one)."""
    exc = E.ClockSkewError("skew", server_time=server_time)
    exc.proven_request = m.decode(request)
    return service.error_reply(exc, server_time)


# -- the device core: which clock-skew replies carry a time it may take ----------------------
def test_device_takes_the_server_time_only_from_a_clock_skew_signed_over_this_request(realm, service, rand):
    dev = make_device(realm, "SN-C")
    earlier = dev.register_request("radius-a", T0 + MIN10, rand(16))
    dev.abandon()
    req = dev.register_request("radius-a", T0 + MIN10, rand(16))
    # signed by the realm over this request: taken, with the server's time
    with pytest.raises(E.ClockSkewError) as got:
        dev.register_reply(signed_skew(service, req, T0), T0 + MIN10)
    assert got.value.signed and got.value.server_time == T0
    # the realm's own signed clock-skew, but for the earlier request's nonce: not acted on
    dev.register_request("radius-a", T0 + MIN10, rand(16))
    with pytest.raises(E.BadProofError, match="answers another request"):
        dev.register_reply(signed_skew(service, earlier, T0), T0 + MIN10)
    # the same code unsigned (anyone holding the RADIUS secret can write it): not acted on
    dev.register_request("radius-a", T0 + MIN10, rand(16))
    with pytest.raises(E.BadProofError, match="unsigned clock-skew"):
        dev.register_reply(m.ErrorMessage(E.ClockSkewError.code, T0, "skew").encode(), T0 + MIN10)
    # signed over this request, but by another key: not acted on
    req = dev.register_request("radius-a", T0 + MIN10, rand(16))
    forged = m.decode(signed_skew(service, req, T0))
    forged.signature = make_device(realm, "SN-X").key.sign(ERROR_CONTEXT + forged.body())
    with pytest.raises(E.BadProofError, match="not signed by the realm"):
        dev.register_reply(forged.encode(), T0 + MIN10)


def test_device_server_clock_error_is_transient_and_carries_no_time(realm, service, rand):
    """A server whose own clock is wrong says so unsigned (tessera.pg_cache): the device changes
    nothing and fails over; even a server time in it is never taken."""
    dev = make_device(realm, "SN-D")
    dev.register_request("radius-a", T0, rand(16))
    exc = E.ServerClockError("this server's clock is +600 s off the realm's")
    with pytest.raises(E.ServerClockError) as got:
        dev.register_reply(service.error_reply(exc, T0 + MIN10), T0)
    assert not got.value.changes_state and not got.value.signed and dev.registration is None


# -- the node: the offset, its retry, and the peers ------------------------------------------
@pytest.mark.parametrize("off", [MIN10, -MIN10])
def test_node_clock_10_min_off_adopts_the_signed_time_retries_and_peers_on_it(net, off):
    a, b = net.nodes["SN-A"], net.nodes["SN-B"]
    net.clock["SN-A"] = off
    up(net)
    mine = [(op, how) for dev, op, how in net.answers if dev == "SN-A"]
    assert mine[:3] == [("register", "clock-skew"), ("register", "ok"), ("ticket", "ok")]
    assert a.offset == -off and b.offset == 0
    # the peer tickets: the realm accepted A's hello timestamp, and both hold one session that
    # ends at the same time by each one's corrected clock
    assert sorted(a.sessions) == ["SN-B"] and sorted(b.sessions) == ["SN-A"]
    sa, sb = a.status(net.time_of("SN-A"))["sessions"]["SN-B"], b.status(net.time_of("SN-B"))["sessions"]["SN-A"]
    assert sa["session_id"] == sb["session_id"] and abs(sa["expires_in"] - sb["expires_in"]) <= 1
    net.send("SN-A", "SN-B", b"on time")
    assert ("SN-A", "SN-B", b"on time") in net.delivered


def test_node_ignores_a_signed_clock_skew_answering_another_request(net):
    a = net.nodes["SN-A"]
    old = a.client.register_request("radius-a", T0, net.rand(16))  # a request answered earlier
    a.client.abandon()
    recorded = signed_skew(net.service, old, T0 + MIN10)

    def replay(req):
        req.build("radius-a")
        del net.intercept["SN-A"]
        return RadiusFailed(req.op_id, "clock-skew", recorded)

    net.intercept["SN-A"] = replay
    up(net)
    assert "SN-A" not in net.intercept and a.offset == 0
    assert [(op, how) for dev, op, how in net.answers if dev == "SN-A"][:2] == [("register", "ok"), ("ticket", "ok")]


# -- a clock that falls behind while its TGT still looks valid --------------------------------
def test_node_clock_fallen_behind_is_corrected_by_the_signed_revocation_list(net):
    """The agent restarts (its state restored) on a clock 10 min behind: its TGT looks 10 min
    longer valid, and starts beyond the skew after its clock, so it asks for a new one and the
    realm's signed clock-skew brings its time (with a TGT issued within the skew before, its
    first revocation poll would: the next test)."""
    up(net)
    old, b = net.nodes["SN-A"], net.nodes["SN-B"]
    a = net.nodes["SN-A"] = Node(old.client, net.rand, old.timers, mac=old.mac)
    net.clock["SN-A"] = -MIN10
    asked = len(net.answers)
    logs = clock_logs(net, "SN-A")
    net.run([("SN-A", LinkUp())], seconds=4)  # the carrier is up as the agent starts
    # one request, refused with the realm's time; on it the TGT it holds is valid again
    assert [(op, how) for dev, op, how in net.answers[asked:] if dev == "SN-A"] == [("ticket", "clock-skew")]
    assert a.offset == pytest.approx(MIN10, abs=1) and logs == ["clock off by +600 s: using the server's time"]
    # on the corrected time its hellos are accepted by the realm: peered again
    net.run(seconds=3)
    assert sorted(a.sessions) == ["SN-B"]
    assert a.sessions["SN-B"].channel.session_id == b.sessions["SN-A"].channel.session_id


def test_node_clock_set_back_while_running_keeps_its_schedule_and_is_corrected(net):
    """The host's clock is set back 10 min under a running node whose TGT was issued more than
    the skew before (so it is not replaced at once): its deadlines move with it (else
    announces, polls and handshakes would wait 10 min), its next poll brings the realm's time,
    and it stays peered."""
    a, b = net.nodes["SN-A"], net.nodes["SN-B"]
    up(net)
    net.run(seconds=400, step=5)  # the TGT (8 h) is now 400 s old: 10 min back is still within its life
    logs = clock_logs(net, "SN-A")
    net.clock["SN-A"] = -MIN10
    announced = len([f for f in net.frames if f[0] == "SN-A"])
    net.run(seconds=a.timers.announce_every + 1)
    assert len([f for f in net.frames if f[0] == "SN-A"]) > announced  # it still announces
    net.run(seconds=a.timers.revocation_poll)
    assert a.offset == pytest.approx(MIN10, abs=1) and logs == [
        f"clock off by +{MIN10} s from the realm's signed revocation list: using the server's time"]
    assert a.sessions["SN-B"].channel.session_id == b.sessions["SN-A"].channel.session_id
    net.send("SN-A", "SN-B", b"still here")
    assert ("SN-A", "SN-B", b"still here") in net.delivered


def clock_logs(net, device: str) -> list[str]:
    """The texts of `device`'s "clock" log actions from now on."""
    logs, act = [], net.act

    def logged(dev, actions):
        logs.extend(x.text for x in actions if dev == device and isinstance(x, Log) and x.event == "clock")
        act(dev, actions)
    net.act = logged
    return logs


def _listing(net, node, issued_at: int, key=None, nonce: bytes | None = None) -> bytes:
    """A RevocationList for node's outstanding poll, signed with the service key (or `key`)."""
    q = node.client._revocation_query
    rl = m.RevocationList(node.client.realm, node.device_id, q.server_id, nonce or q.nonce, issued_at, issued_at, ())
    rl.signature = (key or net.service.signing_key).sign(REVOCATIONS_CONTEXT + rl.body())
    return rl.encode()


@pytest.mark.parametrize("how, moved", [
    ("signed, 10 min ahead", True),
    ("signed, within the slack", False),
    ("another key", False),
    ("another nonce", False),
])
def test_node_takes_a_revocation_lists_time_only_signed_over_its_poll_and_beyond_the_slack(net, how, moved):
    a = net.nodes["SN-A"]
    up(net)
    seen = []

    def answer(req):
        req.build("radius-a")
        t = int(net.now)
        if how == "signed, 10 min ahead":
            data = _listing(net, a, t + MIN10)
        elif how == "signed, within the slack":
            data = _listing(net, a, t + CLOCK_SLACK)
        elif how == "another key":
            data = _listing(net, a, t + MIN10, key=make_device(net.realm, "SN-K").key)
        else:
            data = _listing(net, a, t + MIN10, nonce=bytes(16))
        seen.append(how)
        del net.intercept_polls["SN-A"]
        return RadiusAnswer(req.op_id, data)

    net.intercept_polls["SN-A"] = answer
    logs = clock_logs(net, "SN-A")
    net.run(seconds=a.timers.revocation_poll + 1)
    assert seen == [how]
    assert a.offset == pytest.approx(MIN10 if moved else 0, abs=1)
    assert logs == ([f"clock off by +{MIN10} s from the realm's signed revocation list: using the server's time"]
                    if moved else [])
    # the realm's own list, on the next poll, puts a moved clock back
    net.run(seconds=a.timers.revocation_poll + 1)
    assert a.offset == pytest.approx(0, abs=1) and len(logs) == (2 if moved else 0)


# -- a TGT from a server whose clock ran ahead ------------------------------------------------
@pytest.mark.parametrize("ahead, due", [(MIN10, "authenticate"), (200, None)])
def test_device_replaces_a_tgt_that_starts_beyond_the_skew(realm, service, rand, ahead, due):
    """A server whose clock ran ahead issued it (the realm's other servers refuse it as not yet
    valid); one within the skew is kept."""
    dev = make_device(realm, "SN-E")
    dev.register_reply(service.handle(dev.register_request("radius-a", T0, rand(16)), T0), T0)
    at = T0 + ahead  # the server's clock; the device's request is within its skew (a skewed server
    # answers a right device with a clock-skew first, which it adopts; this is what it holds after)
    dev.ticket_reply(service.handle(dev.auth_request("radius-a", at, rand(16)), at), at)
    assert dev.credentials.not_before == at
    assert dev.next_action(T0) == due


def test_node_with_a_tgt_from_a_server_ahead_gets_a_new_one_and_peers(net):
    a, b = net.nodes["SN-A"], net.nodes["SN-B"]
    up(net)
    at = net.now + MIN10
    # held as if a server ten minutes ahead had answered its last request
    creds = a.client.ticket_reply(net.service.handle(a.client.auth_request("radius-a", at, net.rand(16)), at), at)
    assert creds.not_before == int(at)
    net.carrier("SN-A", False)
    net.carrier("SN-A", True)
    net.run(seconds=3)
    assert a.client.credentials.not_before <= net.now and a.offset == 0
    assert a.sessions["SN-B"].channel.session_id == b.sessions["SN-A"].channel.session_id
