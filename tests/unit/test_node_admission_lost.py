"""Admitted in its own mind while the port is shut: a switch that drops the station right after
its EAP-Success (hostapd 2.10 after reAuthMax EAP restarts in a row) tells the device nothing, and
the device's requests to the realm go unanswered ("No route to host": the ARP never gets
through). The node takes `admission_lost` seconds of that -- no answer at all from the realm
since the EAP-Success -- as a port that does not forward and starts 802.1X over; an answer, a
refusal included, proves the path and ends it. And an EAP conversation that keeps moving is
not aborted by the 3 s refusal clock, which each later step of the method starts again."""

from tessera.errors import TesseraError
from tessera.node import (EapProgressed, IdentityRequested, LinkUp, Log, MethodProposed, Node, Port, PortAuthorized,
                          RadiusAnswer, RadiusFailed, RadiusRequest, StartAdmission, Timers)
from tests.unit.conftest import T0, admit, make_device

STEP = 0.05  # the agent ticks every 0.1 s; finer here


class Realm:
    """Answers a node's requests: `up` False → unanswered (the path), else through the service
    (a refusal as the service's signed error reply)."""

    def __init__(self, service):
        self.service, self.up, self.pending = service, True, []
        self.asked: list[str] = []

    def take(self, out) -> None:
        self.pending += [a for a in out if isinstance(a, RadiusRequest)]

    def answers(self, now: float) -> list:
        out = []
        for a in self.pending_and_clear():
            self.asked.append(a.operation)
            if not self.up:
                out.append(RadiusFailed(a.op_id, "no RADIUS server answered: radius-a (cannot connect: "
                                                 "No route to host)"))
                continue
            try:
                out.append(RadiusAnswer(a.op_id, self.service.handle(a.build("radius-a"), now)))
            except TesseraError as exc:
                out.append(RadiusFailed(a.op_id, exc.reason, self.service.error_reply(exc, now)))
        return out

    def pending_and_clear(self) -> list:
        got, self.pending = self.pending, []
        return got


def drive(node: Node, realm: Realm, start: float, until: float, switch_admits: bool = False) -> list:
    """Tick the node from `start` to `until`, answering (or not) each request a step later, and
    with `switch_admits` each StartAdmission with an EAP-Success; returns the (time, action) of
    every StartAdmission and Log."""
    seen, t, eap = [], start, []
    while t < until:
        events = realm.answers(t) + [PortAuthorized(a.method) for a in eap] + [None]
        eap = []
        for ev in events:
            out = node.handle(ev, t)
            realm.take(out)
            seen += [(t, a) for a in out if isinstance(a, (StartAdmission, Log))]
            eap += [a for a in out if isinstance(a, StartAdmission) and switch_admits]
        t += STEP
    return seen


def admissions(seen) -> list[float]:
    return [t for t, a in seen if isinstance(a, StartAdmission)]


def lost(seen) -> list[float]:
    return [t for t, a in seen if isinstance(a, Log) and a.event == "admission-lost"]


def admitted(node: Node, realm: Realm, t: float) -> None:
    out = node.handle(LinkUp(), t)
    assert [a.method for a in out if isinstance(a, StartAdmission)] == ["tls"]
    realm.take(node.handle(PortAuthorized("tls"), t + 0.1))
    assert node.port is Port.UP


def test_admitted_but_unreachable_starts_802_1x_over_after_admission_lost(realm, service, rand):
    node, path = Node(make_device(realm, "SN-A"), rand), Realm(service)
    path.up = False
    admitted(node, path, T0)
    seen = drive(node, path, T0 + 0.1, T0 + 10.05)
    assert not admissions(seen) and node.port is Port.UP  # the settle retries and the back-off, no more
    assert path.asked.count("register") >= 5
    seen = drive(node, path, T0 + 10.05, T0 + 10.5)
    assert admissions(seen) and len(lost(seen)) == 1 and T0 + 10.1 <= lost(seen)[0] <= T0 + 10.2
    text = next(a.text for _, a in seen if isinstance(a, Log) and a.event == "admission-lost")
    assert "starting 802.1X over" in text and "unanswered" in text
    assert node.port is Port.ADMITTING and node.method == "tls"
    # the switch lets it in again and forwards this time: registered, ticketed, and no more restarts
    path.up = True
    realm_t = T0 + 11
    path.take(node.handle(PortAuthorized("tls"), realm_t))
    seen = drive(node, path, realm_t, realm_t + 5)
    assert node.client.credentials is not None and not admissions(seen)
    path.up = False  # the server dies later: a dead server, not a shut port (hostapd fails over)
    seen = drive(node, path, realm_t + 5, realm_t + 120)
    assert not admissions(seen) and node.port is Port.UP


def test_a_refusal_by_the_realm_is_an_answer_not_a_shut_port(realm, service, rand):
    """Beside the test above: the same silence of the path, but the realm answers -- with a
    signed refusal (the device is revoked) -- and the port stays as it is."""
    dev = make_device(realm, "SN-A")
    node, path = Node(dev, rand), Realm(service)
    realm.revoke("SN-A", T0)
    admitted(node, path, T0)
    seen = drive(node, path, T0 + 0.1, T0 + 60)
    assert "register" in path.asked and not admissions(seen) and not lost(seen)
    assert node.port is Port.UP
    assert any(isinstance(a, Log) and a.event == "register-failed" and "revoked" in a.text for _, a in seen)


def test_a_device_answered_once_is_never_taken_as_shut(realm, service, rand):
    """A first answer after the EAP-Success proves the port; the dead server that follows is
    waited out with the usual back-off (the realm's failover, not the switch's)."""
    dev = make_device(realm, "SN-A")
    admit(service, dev, rand)
    node, path = Node(dev, rand), Realm(service)
    dev.credentials = None  # no TGT: one is due once admitted
    out = node.handle(LinkUp(), T0)
    path.take(node.handle(PortAuthorized("pwd"), T0 + 0.1))
    seen = drive(node, path, T0 + 0.1, T0 + 1)
    assert path.asked[0] == "ticket" and node.client.credentials is not None
    dev.credentials = None  # the TGT is gone (say it ran out): a ticket is due again
    path.up, path.asked = False, []
    seen = drive(node, path, T0 + 1, T0 + 90)
    assert path.asked.count("ticket") >= 4 and not admissions(seen) and node.port is Port.UP
    assert [a.method for a in out if isinstance(a, StartAdmission)] == ["pwd"]


def test_each_lost_admission_doubles_the_wait(realm, service, rand):
    node, path = Node(make_device(realm, "SN-A"), rand), Realm(service)
    path.up = False
    admitted(node, path, T0)
    seen = drive(node, path, T0 + 0.1, T0 + 400, switch_admits=True)
    times = [T0 + 0.1, *lost(seen)]
    waits = [b - a for a, b in zip(times, times[1:])]
    # 10, 20, 40, 80, 80 s after each EAP-Success (a step later than the one before)
    assert [round(x / 10) * 10 for x in waits[:5]] == [10, 20, 40, 80, 80], waits
    assert len(admissions(seen)) == len(lost(seen))  # each one EAP run, nothing in between


def test_eap_that_keeps_moving_is_not_aborted(realm, rand):
    node = Node(make_device(realm, "SN-B"), rand, Timers())
    node.handle(LinkUp(), T0)
    node.handle(IdentityRequested(), T0 + 0.01)
    node.handle(MethodProposed("13"), T0 + 0.1)
    node.handle(EapProgressed(), T0 + 2.5)  # the server's certificate
    node.handle(EapProgressed(), T0 + 5.0)  # its next request
    assert not [a for a in node.handle(None, T0 + 7.9) if isinstance(a, StartAdmission)]
    assert node.port is Port.ADMITTING
    node.handle(None, T0 + 8.1)  # 3 s without a step: refused, as before
    assert node.port is Port.BLOCKED


def test_eap_steps_before_the_server_answered_start_no_refusal_clock(realm, rand):
    """The silent case (a dead first server, hostapd fails over after 45 s) is unchanged: a
    step event before the method was proposed does not turn the wait into a 3 s refusal."""
    node = Node(make_device(realm, "SN-B"), rand)
    node.handle(LinkUp(), T0)
    node.handle(IdentityRequested(), T0 + 0.01)
    node.handle(EapProgressed(), T0 + 0.02)
    for dt in range(1, 55):
        assert not [a for a in node.handle(None, T0 + dt) if isinstance(a, StartAdmission)], dt
    assert node.port is Port.ADMITTING


def test_a_start_the_switch_never_answered_is_sent_again_soon(realm, rand):
    """An EAPOL-Start sent as the switch's port comes up can be lost: with no EAP request from
    the switch, the Start goes again after start_resend (0.5 s, then 1 s), not only when the 3 s
    refusal clock runs out; once the switch has asked for the identity, no more Starts (a second
    one would abort the conversation in progress) until the 55 s silent wait."""
    node = Node(make_device(realm, "SN-B"), rand)
    assert [a.method for a in node.handle(LinkUp(), T0) if isinstance(a, StartAdmission)] == ["tls"]
    assert not [a for a in node.handle(None, T0 + 0.4) if isinstance(a, StartAdmission)]
    assert [a.method for a in node.handle(None, T0 + 0.55) if isinstance(a, StartAdmission)] == ["tls"]
    assert not [a for a in node.handle(None, T0 + 1.4) if isinstance(a, StartAdmission)]
    assert [a.method for a in node.handle(None, T0 + 1.6) if isinstance(a, StartAdmission)] == ["tls"]
    assert node.port is Port.ADMITTING
    node.handle(IdentityRequested(), T0 + 1.7)  # the switch answered the last one
    for dt in (2.0, 3.0, 3.5, 10.0, 40.0):
        assert not [a for a in node.handle(None, T0 + dt) if isinstance(a, StartAdmission)], dt
    assert node.port is Port.ADMITTING
