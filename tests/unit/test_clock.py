"""Clock skew, end to end in memory: a device whose clock is off by more than the realm's skew
(300 s) is told `clock-skew` with the server's time, adopts it, and its retry succeeds — through
the real service, the real node and a simulated wire — while a device within the skew never sees
the error. A clock-skew reply nobody proved is not adopted."""

import pytest

from tessera import errors as E, message as m
from tessera.device import State
from tessera.node import RadiusFailed
from tests.unit.conftest import T0, admit, make_device
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


@pytest.mark.xfail(strict=True, reason="issue 8 §4: an ErrorMessage carries no proof (no signature over the "
                                       "request's nonce), so the device cannot tell a forged clock-skew from the "
                                       "service's and adopts it; remove this mark when errors are signed")
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


def test_node_answered_clock_skew_every_time_backs_off_instead_of_spinning(net):
    """Retrying at once is right after the first clock-skew only: if the adopted time is refused
    again (a server whose clock jumps, or someone answering for it), the node backs off."""
    a, forged = net.nodes["SN-A"], []

    def skewed(req):
        req.build("radius-a")
        forged.append(net.now)
        if len(forged) > 50:  # a node that spins would loop here for ever: stop it, fail below
            return RadiusFailed(req.op_id, "no RADIUS server answered")
        when = T0 + (len(forged) % 2) * 86400  # a clock that jumps back and forth by a day
        return RadiusFailed(req.op_id, "clock-skew", m.ErrorMessage(E.ClockSkewError.code, when, "skew").encode())

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
