"""Admission while the switch's first RADIUS server is dead (issue 10): the node tells a silent
RADIUS path (the switch asked for the identity, no EAP method proposed yet) from a refusal
(EAP-Failure, an answered exchange that stalls, or a switch that does not start EAP) and
restarts EAP on silence only after `admission_silent_timeout`, so that hostapd fails over to
its next server.

`Hostapd210` models one wired port of hostapd 2.10 from its source, only what decides failover:
src/radius/radius_client.c (an Access-Request is sent again 3, 6, 12, 24 s apart; the server is
abandoned when a request that went out RADIUS_CLIENT_NUM_FAILOVER = 4 times is due again, i.e.
45 s after it was first sent; then every pending request's count starts over towards the next
server), src/eapol_auth/eapol_auth_sm.c (each EAP start enters AUTH_PAE CONNECTING and counts in
reAuthCount; the third without success goes to DISCONNECTED, whose EAP-failure callback removes
the station; BE_AUTH gives up on the server after serverTimeout = 30 s and starts over itself)
and src/ap/sta_info.c (a removed station's pending Access-Requests are flushed:
radius_client_flush_auth). Measured in the lab with a dead server that answers ICMP: a port
left alone reached the second server 45.1 s after its first request; one restart at 3 s kept
it from reaching it for the whole 75 s observed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tessera.node import (IdentityRequested, LinkUp, Log, MethodProposed, Node, Port, PortAuthorized, PortRejected,
                          StartAdmission, Timers)
from tests.unit.conftest import T0, admit, make_device

FIRST_WAIT, NUM_FAILOVER, MAX_FAILOVER, MAX_WAIT = 3, 4, 3, 120  # radius_client.c
REAUTH_MAX, SERVER_TIMEOUT = 2, 30  # eapol_auth_sm_i.h: AUTH_PAE_DEFAULT_reAuthMax, BE_AUTH_DEFAULT_serverTimeout


@dataclass
class Request:
    """One entry of hostapd's RADIUS retransmission list (struct radius_msg_list)."""
    ident: int
    first_try: float
    attempts: int = 1
    accu_attempts: int = 1
    next_try: float = 0.0
    next_wait: float = FIRST_WAIT * 2

    def __post_init__(self):
        self.next_try = self.first_try + FIRST_WAIT


@dataclass
class Hostapd210:
    """One port's hostapd: `alive[k]` says whether auth_server k answers."""
    alive: list[bool]
    current: int = 0  # conf->auth_server: shared by every station of the port, kept after a failover
    pending: list[Request] = field(default_factory=list)
    station: bool = False
    reauth_count: int = 0
    a_while: float | None = None  # BE_AUTH RESPONSE: serverTimeout for the latest request
    latest: int = 0
    answered_by: int | None = None
    removals: int = 0
    failovers: list[float] = field(default_factory=list)

    def eapol_start(self, now: float) -> None:
        """The supplicant's EAPOL-Start: AUTH_PAE (re)enters CONNECTING."""
        self.station = True
        self._connecting(now)

    def _connecting(self, now: float) -> None:
        self.reauth_count += 1
        if self.reauth_count > REAUTH_MAX:  # DISCONNECTED: EAP failed; the station goes, its requests with it
            self.removals += 1
            self.pending.clear()
            self.reauth_count = 1  # the supplicant is heard again: a new station, authentication from the start
        self.latest += 1  # EAP-Request/Identity, the supplicant's Response, one Access-Request
        self.pending.append(Request(self.latest, now))
        self._send(self.pending[-1])
        self.a_while = now + SERVER_TIMEOUT

    def _send(self, req: Request) -> None:
        if self.alive[self.current]:
            self.pending.remove(req)
            if req.ident == self.latest:
                self.answered_by = self.current

    def tick(self, now: float) -> None:
        """radius_client_timer and the BE_AUTH timeout, once a second."""
        if any(now >= r.next_try and r.attempts >= NUM_FAILOVER for r in self.pending):
            self.current = (self.current + 1) % len(self.alive)
            self.failovers.append(now)
            for r in self.pending:  # radius_change_server: retry counters reset
                r.next_try, r.attempts, r.next_wait = r.first_try + FIRST_WAIT, 0, FIRST_WAIT * 2
        for r in list(self.pending):
            if now < r.next_try:
                continue
            if r.accu_attempts >= MAX_FAILOVER * NUM_FAILOVER * len(self.alive):
                self.pending.remove(r)
                continue
            r.attempts += 1
            r.accu_attempts += 1
            r.next_try, r.next_wait = now + r.next_wait, min(r.next_wait * 2, MAX_WAIT)
            self._send(r)
        if self.answered_by is None and self.a_while is not None and now >= self.a_while:
            self._connecting(now)  # BE_AUTH TIMEOUT -> AUTH_PAE ABORTING -> RESTART -> CONNECTING


def opened_after(node: Node, hostapd: Hostapd210, limit: float) -> float | None:
    """Drive node and hostapd together (0.1 s steps); seconds from link-up to PortAuthorized."""
    now, ticks, next_tick = float(T0), 0, float(T0) + 1

    def act(actions) -> None:
        for a in actions:
            if isinstance(a, StartAdmission):  # hostapd asks for the identity at once
                hostapd.eapol_start(now)
                act(node.handle(IdentityRequested(), now))

    act(node.handle(LinkUp(), now))
    while now - T0 < limit:
        now = T0 + round((now - T0) + 0.1, 1)
        if now >= next_tick:
            hostapd.tick(now)
            next_tick += 1
        if hostapd.answered_by is not None:
            act(node.handle(MethodProposed("13"), now))
            act(node.handle(PortAuthorized(node.method.split("-")[0]), now))
            return now - T0
        act(node.handle(None, now))
    return None


@pytest.fixture
def registered(realm, service, rand):
    dev = make_device(realm, "SN-A")
    admit(service, dev, rand)
    return Node(dev, rand)


@pytest.fixture
def unregistered(realm, rand):
    return Node(make_device(realm, "SN-B"), rand)


def admissions(out) -> list[str]:
    return [a.method for a in out if isinstance(a, StartAdmission)]


def test_model_reproduces_what_was_measured():
    """The model against the lab: left alone, the port reaches server 2 after 45 s (hostapd also
    starts over by itself at 30 s); one supplicant restart at 3 s keeps it on the dead server."""
    alone = Hostapd210([False, True])
    alone.eapol_start(0.0)
    for t in range(1, 76):
        alone.tick(float(t))
        if alone.answered_by is not None:
            break
    assert (alone.answered_by, alone.failovers, alone.removals) == (1, [45.0], 0)
    once = Hostapd210([False, True])
    once.eapol_start(0.0)
    once.eapol_start(3.0)
    for t in range(1, 76):
        once.tick(float(t))
    assert once.answered_by is None and once.removals == 1 and not once.failovers  # flushed at 33 s


def test_silent_path_waits_then_starts_over_with_the_same_method(registered):
    node = registered
    assert admissions(node.handle(LinkUp(), T0)) == ["pwd"]
    node.handle(IdentityRequested(), T0 + 0.01)
    for dt in range(1, 55):
        out = node.handle(None, T0 + dt)
        assert not admissions(out) and node.port is Port.ADMITTING, dt
    out = node.handle(None, T0 + 55.5)
    assert admissions(out) == ["pwd"]  # not the EAP-TLS fall-back: a silence refuses nothing
    assert any(isinstance(a, Log) and a.event == "admission-silent" for a in out)
    node.handle(IdentityRequested(), T0 + 55.6)
    assert not admissions(node.handle(None, T0 + 70))  # and the new attempt waits as long again


def test_no_identity_request_is_a_refusal_after_admission_timeout(registered, unregistered):
    """A switch that does not start EAP at all (it ignores an EAPOL-Start while it still removes
    the station an EAP-Failure ended) is no silent server: 3 s, as before."""
    node = registered
    node.handle(LinkUp(), T0)
    assert admissions(node.handle(None, T0 + 2.9)) == ["pwd"]  # the Start again (start_resend), no fall-back
    assert admissions(node.handle(None, T0 + 3.1)) == ["tls"]
    node.handle(None, T0 + 6.2)
    assert node.port is Port.BLOCKED
    tls = unregistered
    tls.handle(LinkUp(), T0)
    tls.handle(None, T0 + 3.1)
    assert tls.port is Port.BLOCKED


def test_answered_then_stalled_is_a_refusal_after_admission_timeout(registered, unregistered):
    """Beside the silence above: once the server proposed a method, 3 s without EAP-Success
    refuse as before -- EAP-PWD falls back to EAP-TLS, EAP-TLS closes the port."""
    node = registered
    node.handle(LinkUp(), T0)
    node.handle(IdentityRequested(), T0 + 0.01)
    node.handle(MethodProposed("52"), T0 + 1)  # the clock runs from the server's first answer
    assert not admissions(node.handle(None, T0 + 3.9)) and node.port is Port.ADMITTING
    assert admissions(node.handle(None, T0 + 4.1)) == ["tls"]
    node.handle(IdentityRequested(), T0 + 4.15)
    node.handle(MethodProposed("13"), T0 + 4.2)
    node.handle(None, T0 + 7.3)
    assert node.port is Port.BLOCKED
    tls = unregistered
    tls.handle(LinkUp(), T0)
    tls.handle(IdentityRequested(), T0 + 0.01)
    tls.handle(MethodProposed("13"), T0 + 0.1)
    tls.handle(None, T0 + 3.2)
    assert tls.port is Port.BLOCKED


def test_eap_failure_refuses_at_once_without_an_answer(unregistered):
    node = unregistered
    node.handle(LinkUp(), T0)
    node.handle(PortRejected("tls", "CTRL-EVENT-EAP-FAILURE"), T0 + 0.2)
    assert node.port is Port.BLOCKED


def test_eap_events_outside_admission_change_nothing(registered):
    node = registered
    node.handle(LinkUp(), T0)
    node.handle(PortAuthorized("pwd"), T0 + 0.5)
    node.handle(IdentityRequested(), T0 + 1)
    node.handle(MethodProposed("52"), T0 + 1)
    assert node.port is Port.UP and not node.admission_answered and not node.admission_asked
    node.handle(None, T0 + 10)
    assert node.port is Port.UP


def test_port_opens_through_the_next_server_when_the_first_is_dead(registered):
    took = opened_after(registered, Hostapd210([False, True, True]), 180)
    assert took is not None and 45 <= took <= 47, took
    assert registered.port is Port.UP


def test_two_dead_servers_of_three_still_open_the_port(unregistered):
    took = opened_after(unregistered, Hostapd210([False, False, True]), 240)
    assert took is not None and took <= 110, took


def test_restarting_eap_on_silence_keeps_the_port_closed(realm, service, rand):
    """The behaviour this replaces (a restart after 3 s of silence) never gets through in the
    model; with every server alive both open at once."""
    dev = make_device(realm, "SN-A")
    admit(service, dev, rand)
    eager = Node(dev, rand, Timers(admission_silent_timeout=3.0))
    assert opened_after(eager, Hostapd210([False, True, True]), 180) is None
    assert opened_after(Node(dev, rand, Timers(admission_silent_timeout=3.0)), Hostapd210([True, True]), 5) is not None
