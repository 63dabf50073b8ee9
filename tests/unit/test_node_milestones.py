"""The node's milestones (the agent's event stream) and its retries right after admission: an
unanswered request soon after EAP success is retried in tens of milliseconds (the switch may
open the port a moment later), a refusal or a late failure keeps the usual back-off; a peer
session request the realm never answered lets the initiator's resend ask again, one the realm
refused does not."""

import pytest

from tessera.errors import ReplayError, TesseraError
from tessera.node import LinkUp, Milestone, Node, PortAuthorized, RadiusAnswer, RadiusFailed, RadiusRequest, Timers
from tests.unit.conftest import T0, make_device
from tests.unit.test_node import Net


def milestones(actions) -> list[tuple[str, str | None]]:
    return [(a.kind, a.peer) for a in actions if isinstance(a, Milestone)]


def collect(net: Net) -> dict[str, list]:
    """Wrap net.act to record each device's milestones in order."""
    seen: dict[str, list] = {d: [] for d in net.nodes}
    act = net.act

    def recording(dev, actions):
        actions = list(actions)
        seen[dev] += milestones(actions)
        act(dev, actions)
    net.act = recording
    return seen


def test_milestones_from_link_up_to_first_record(realm, service, rand):
    net = Net(realm, service, rand)
    for dev in ("SN-A", "SN-B", "SN-C"):
        net.add(dev, "bundle")
    seen = collect(net)
    for dev in net.nodes:
        net.carrier(dev, True)
    net.run(seconds=3)
    for dev, kinds in seen.items():
        others = sorted(set(net.nodes) - {dev})
        assert [k for k, _ in kinds[:4]] == ["link-up", "authorized", "registered", "ticketed"]
        assert sorted(p for k, p in kinds if k == "peered") == others  # once per peer, with its id
        assert not any(k == "record" for k, _ in kinds)
    net.send("SN-A", "SN-B", b"one")
    net.send("SN-A", "SN-B", b"two")
    assert [m for m in seen["SN-B"] if m[0] == "record"] == [("record", "SN-A")]  # the first record only


def test_a_rekey_is_no_new_peered_milestone(realm, service, rand):
    net = Net(realm, service, rand)
    for dev in ("SN-A", "SN-B"):
        net.add(dev, "bundle")
    seen = collect(net)
    for dev in net.nodes:
        net.carrier(dev, True)
    net.run(seconds=3)
    first = net.nodes["SN-A"].sessions["SN-B"].channel.session_id
    net.run(seconds=3600 - 300 + 60, step=5.0)  # past rekey_before (300 s) of a one-hour key
    assert net.nodes["SN-A"].sessions["SN-B"].channel.session_id != first  # rekeyed
    assert [m for m in seen["SN-A"] if m[0] == "peered"] == [("peered", "SN-B")]


def _registering(realm, rand) -> tuple[Node, RadiusRequest]:
    node = Node(make_device(realm, "SN-S", "bundle"), rand, Timers())
    node.handle(LinkUp(), T0)
    reqs = [a for a in node.handle(PortAuthorized("tls"), T0) if isinstance(a, RadiusRequest)]
    assert [r.operation for r in reqs] == ["register"]
    return node, reqs[0]


def _requests_until(node: Node, start: float, end: float, step: float = 0.01) -> list[float]:
    """Times (from `start`) at which ticking the node every `step` s sends a request."""
    out, t = [], start
    while t < end:
        if any(isinstance(a, RadiusRequest) and a.operation == "register" for a in node.handle(None, t)):
            out.append(round(t - start, 3))
        t += step
    return out


def test_unanswered_right_after_admission_is_retried_at_once(realm, rand):
    node, req = _registering(realm, rand)
    node.handle(RadiusFailed(req.op_id, "no RADIUS server answered: radius1 (cannot connect: No route to host)"),
                T0 + 0.4)
    again = _requests_until(node, T0 + 0.4, T0 + 0.6)
    assert again and again[0] <= Timers.settle_retry * 1.5  # not after retry_min (1 s)


def test_unanswered_later_keeps_the_back_off(realm, rand):
    node, req = _registering(realm, rand)
    late = T0 + Timers.settle + 1
    node.handle(RadiusFailed(req.op_id, "no RADIUS server answered"), late)
    assert _requests_until(node, late, late + 0.9) == []
    assert _requests_until(node, late + 0.9, late + 1.2) != []


def test_a_refusal_right_after_admission_keeps_the_back_off(realm, service, rand):
    node, req = _registering(realm, rand)
    realm.revoke("SN-S", T0)
    with pytest.raises(TesseraError) as refused:
        service.handle(req.build("radius-a"), T0)
    reply = service.error_reply(refused.value, T0)  # the realm's signed refusal, as an Access-Reject carries it
    node.handle(RadiusFailed(req.op_id, "rejected", reply), T0 + 0.1)
    assert _requests_until(node, T0 + 0.1, T0 + 0.9) == []


def _session_fails_once(net: Net, dev: str, reply_from_realm: bool) -> list[int]:
    """B's first session request fails -- unanswered, or refused with the realm's error reply;
    returns how many session requests B made."""
    made = []

    def intercept(a: RadiusRequest):
        if a.operation != "session":
            return RadiusAnswer(a.op_id, net.service.handle(a.build("radius-a"), net.now))
        made.append(a.op_id)
        if len(made) == 1:
            if not reply_from_realm:
                return RadiusFailed(a.op_id, "no RADIUS server answered: radius1 (connection busy for 1.2 s)")
            err = ReplayError("authenticator seen before")
            return RadiusFailed(a.op_id, err.reason, net.service.error_reply(err, net.now))
        return RadiusAnswer(a.op_id, net.service.handle(a.build("radius-a"), net.now))
    net.intercept[dev] = intercept
    return made


def test_an_unanswered_session_request_is_asked_again_on_the_hello_resend(realm, service, rand):
    net = Net(realm, service, rand)
    for dev in ("SN-A", "SN-B"):
        net.add(dev, "bundle")
    made = _session_fails_once(net, "SN-B", reply_from_realm=False)
    for dev in net.nodes:
        net.carrier(dev, True)
    net.run(seconds=2.5)  # A resends its hello after resend_every (1 s)
    assert len(made) == 2 and "SN-A" in net.nodes["SN-B"].sessions  # peered within the resend, not 10 s


def test_a_refused_session_request_is_not_asked_again(realm, service, rand):
    net = Net(realm, service, rand)
    for dev in ("SN-A", "SN-B"):
        net.add(dev, "bundle")
    made = _session_fails_once(net, "SN-B", reply_from_realm=True)
    for dev in net.nodes:
        net.carrier(dev, True)
    net.run(seconds=2.5)
    assert len(made) == 1 and "SN-A" not in net.nodes["SN-B"].sessions

