"""The wire between devices, in memory (issue 9 §1-3): discovery that cannot steer, key
confirmation both ways with retransmission, revocation that reaches the peers.

Runs the real nodes, service and device cores on the simulated wire of tests/unit/test_node.py
(`Net`): `Net.wire` loses or doubles single frames, `Net.intercept_polls` answers a node's
revocation poll in place of the service. Hostile frames are built with tessera.message, as an
enrolled neighbour would build them; the frame types are those of docs/layouts.md#messages.
"""

from __future__ import annotations

import pytest

from tessera import errors as E, message as m
from tessera.identity import DeviceKey
from tessera.node import FrameReceived, Node, RadiusAnswer, RadiusFailed, RadiusRequest, SendFrame
from tessera.peer import PeerInitiator, PeerState
from tessera.record import session_id_of
from tessera.service import REVOCATIONS_CONTEXT
from tests.unit.test_node import net  # noqa: F401 (the fixture)

HELLO, TICKET, FINISHED, DATA, CONFIRM = 32, 33, 34, 35, 37  # frame types: docs/layouts.md#messages
ATTACKER = "02:00:00:00:00:66"  # an enrolled neighbour's port
REALM = "example.net"


# -- helpers -------------------------------------------------------------------------------------
def up(net, *devices: str, seconds: float = 3) -> None:
    for dev in devices:
        net.carrier(dev, True)
    net.run(seconds=seconds)


@pytest.fixture
def pair(net):  # noqa: F811
    """SN-A and SN-B up with a session (SN-C's link stays down)."""
    up(net, "SN-A", "SN-B")
    assert sorted(net.nodes["SN-A"].sessions) == ["SN-B"] and sorted(net.nodes["SN-B"].sessions) == ["SN-A"]
    return net


def both_ways(net, x: str = "SN-A", y: str = "SN-B") -> bool:
    """x and y each deliver what the other sends (under whatever session each holds)."""
    n = len(net.delivered)
    net.send(x, y, b"from " + x.encode())
    net.send(y, x, b"from " + y.encode())
    return net.delivered[n:] == [(x, y, b"from " + x.encode()), (y, x, b"from " + y.encode())]


def session_requests(net, dev: str, since: int = 0) -> int:
    return sum(1 for d, op, _ in net.answers[since:] if d == dev and op == "session")


def announce(device_id: str, epoch: int) -> bytes:
    return m.PeerAnnounce(REALM, device_id, epoch).encode()


def forged_hello(net, initiator: str, responder: str = "SN-B") -> bytes:
    """A hello whose TGT and authenticator are random: the responder cannot tell it from a real
    one (only the realm can open a TGT), so each one it takes costs a RADIUS request."""
    return m.PeerHello(realm=REALM, initiator=initiator, responder=responder, initiator_hw=net.rand(6),
                       timestamp=int(net.now), nonce=net.rand(16), tgt=net.rand(180), mac=net.rand(32)).encode()


def mac_of(i: int) -> str:
    return "06:00:%02x:%02x:%02x:%02x" % (i >> 24 & 255, i >> 16 & 255, i >> 8 & 255, i & 255)


def lose(net, kind: int, times: int | None = None) -> list[bytes]:
    """Lose frames of one type on the wire (the first `times` of them, or all); returns the list
    of frames lost, which fills as they are."""
    lost: list[bytes] = []

    def wire(dev, dst, payload):
        if payload[1] == kind and (times is None or len(lost) < times):
            lost.append(payload)
            return 0
        return 1
    net.wire = wire
    return lost


def until(net, done, seconds: float, step: float = 0.5) -> float:
    """Run the net until done() (checked every step) or `seconds` pass; returns the time taken."""
    start = net.now
    while not done() and net.now - start < seconds:
        net.run(seconds=step, step=step)
    return net.now - start


def established_both_ways(net, x: str = "SN-A", y: str = "SN-B") -> bool:
    a, b = net.nodes[x], net.nodes[y]
    return (y in a.sessions and x in b.sessions
            and a.sessions[y].channel.session_id == b.sessions[x].channel.session_id)


# -- 1. the wire cannot steer ----------------------------------------------------------------------
def test_announces_from_another_mac_neither_end_nor_redirect_a_session(pair):
    """Two announces naming SN-B with new epochs, from a MAC that is not B's: A keeps its session
    (the announce proves nothing) and its records still go to B's MAC, where B opens them. The
    new epoch is a hint at most: a handshake it starts is one only the real B can answer, so the
    session's MAC stays where its authenticated handshake came from."""
    a, b = pair.nodes["SN-A"], pair.nodes["SN-B"]
    before = a.sessions["SN-B"]
    acts = a.handle(FrameReceived(ATTACKER, announce("SN-B", b.epoch + 1)), pair.now)
    acts += a.handle(FrameReceived(ATTACKER, announce("SN-B", b.epoch + 2)), pair.now)
    assert a.sessions["SN-B"] is before
    sent = a.send("SN-B", b"still yours", pair.now)
    assert [s.dst for s in sent] == [pair.macs["SN-B"]]
    # the hint may start a handshake: its hello reaches B's MAC (a copy to the other does no harm)
    hellos = [s.dst for s in acts if isinstance(s, SendFrame) and s.payload[1] == HELLO]
    assert not hellos or pair.macs["SN-B"] in hellos
    pair.act("SN-A", acts + sent)
    pair.run()
    assert ("SN-A", "SN-B", b"still yours") in pair.delivered
    pair.run(seconds=2)
    now = a.sessions["SN-B"]
    assert now.mac == pair.macs["SN-B"] and now.channel.session_id == b.sessions["SN-A"].channel.session_id
    assert both_ways(pair)
    assert not [f for f in pair.frames if f[1] == ATTACKER and f[2][1] == DATA]


def test_an_announce_from_an_attacker_adds_a_copy_of_the_first_hello_not_a_detour(net):
    """SN-A hears SN-B announce from B's MAC and from an attacker's before it holds a TGT: its
    first hello goes to both MACs (it cannot tell which is B), and the handshake completes with
    the real B, whose MAC the session keeps."""
    def no_tgt(a: RadiusRequest):
        if a.operation == "ticket":
            return RadiusFailed(a.op_id, "no RADIUS server answered")
        return RadiusAnswer(a.op_id, net.service.handle(a.build("radius-a"), net.now))
    net.intercept["SN-A"] = no_tgt
    up(net, "SN-A", "SN-B")
    a = net.nodes["SN-A"]
    assert a.client.credentials is None and "SN-B" in a.neighbours and not a.sessions
    net.run([("SN-A", FrameReceived(ATTACKER, announce("SN-B", net.nodes["SN-B"].epoch)))])
    del net.intercept["SN-A"]
    mark = len(net.frames)
    until(net, lambda: "SN-B" in a.sessions, 40)
    first = next(p for d, _, p in net.frames[mark:] if d == "SN-A" and p[1] == HELLO)
    assert {dst for d, dst, p in net.frames[mark:] if p == first} == {net.macs["SN-B"], ATTACKER}
    assert established_both_ways(net) and a.sessions["SN-B"].mac == net.macs["SN-B"]
    assert both_ways(net)


def test_ten_thousand_forged_announces_stay_in_bounded_tables(pair):
    """10,000 announces of distinct ids above SN-A's from distinct MACs: A remembers at most
    max_neighbours of them, runs at most max_handshakes first handshakes at once, asks the realm
    nothing, returns no more actions per frame at the end of the flood than at its start, and
    its session with SN-B is untouched and carries data both ways."""
    a = pair.nodes["SN-A"]
    before, t = a.sessions["SN-B"], pair.now
    assert a.next_revocation_poll > t + 10  # no poll falls due during the flood
    counts, requests = [], []
    for i in range(10_000):
        acts = a.handle(FrameReceived(mac_of(i), announce("SN-Z%05d" % i, i)), t + i / 1000)
        counts.append(len(acts))
        requests += [x for x in acts if isinstance(x, RadiusRequest)]
        if i % 500 == 0:  # every handshake open is a first one (B's session is far from its rekey)
            assert len(a.neighbours) <= a.timers.max_neighbours and len(a.initiating) <= a.timers.max_handshakes
    assert len(a.neighbours) == a.timers.max_neighbours and len(a.initiating) == a.timers.max_handshakes
    assert requests == []
    assert max(counts[-1000:]) <= max(counts[:1000]) <= 3
    assert a.stats["handshakes_deferred"] > 0
    assert a.sessions["SN-B"] is before
    pair.now = t + 10
    assert both_ways(pair)


def test_the_work_per_announce_does_not_grow_with_the_strangers(pair, monkeypatch):
    """The work an announce costs SN-A, counted as the handshakes it considers starting (calls
    of Node._initiate), is the same with 2,000 strangers remembered as with 200: a flood costs
    per frame what one sender does. (Before the neighbour scan became a timer's work, every
    event looked through every neighbour: ~1,000 calls and ~1.5 ms a frame at max_neighbours.)"""
    a = pair.nodes["SN-A"]
    calls = [0]
    initiate = Node._initiate

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return initiate(self, *args, **kwargs)
    monkeypatch.setattr(Node, "_initiate", counted)
    t, considered = pair.now, []
    for i in range(2_000):
        before = calls[0]
        a.handle(FrameReceived(mac_of(i), announce("SN-Z%05d" % i, i)), t + i / 1000)
        considered.append(calls[0] - before)
    early, late = considered[150:250], considered[-100:]
    assert len(a.neighbours) == a.timers.max_neighbours
    assert max(late) <= max(early) <= 2


def test_forged_hellos_from_one_source_cost_at_most_its_rate(pair):
    """Distinct forged hellos (each a new initiator id and nonce) from one MAC, 10 a second for
    20 s: SN-B asks the realm for at most hello_burst + hello_rate × elapsed of them, refuses the
    rest without a request, and keeps talking to SN-A."""
    b = pair.nodes["SN-B"]
    mark, start, i = len(pair.answers), pair.now, 0
    while pair.now - start < 20:
        events = []
        for _ in range(5):
            events.append(("SN-B", FrameReceived(ATTACKER, forged_hello(pair, "SN-F%05d" % i))))
            i += 1
        pair.run(events, seconds=0.5)
    asked = session_requests(pair, "SN-B", mark)
    assert b.timers.hello_burst <= asked <= b.timers.hello_burst + b.timers.hello_rate * (pair.now - start)
    assert b.stats["hellos_limited"] == i - asked
    assert {how for d, op, how in pair.answers[mark:] if op == "session"} != {"ok"}  # the realm refused them
    assert both_ways(pair)


def test_forged_hellos_for_one_initiator_cost_a_bounded_rate_and_the_real_one_gets_through(net):
    """Forged hellos claiming SN-A from ever new MACs, 20 a second for 12 s, while the real SN-A
    comes up and says hello. A forgery cannot spend A's own allowance (that is spent only by
    hellos the realm accepts), so what bounds the flood is the cap on open hellos per initiator
    (2) and the total rate: SN-B asks the realm for at most max_responding + hello_rate_all ×
    elapsed, refuses the rest without a request, and the real A gets through: the pair talks
    within a handshake timeout of the flood's end."""
    up(net, "SN-B")
    b = net.nodes["SN-B"]
    mark, start, i = len(net.answers), net.now, 0
    while net.now - start < 12:
        if net.now - start == 2:
            net.carrier("SN-A", True)
        for _ in range(10):
            net.queue.append(("SN-B", FrameReceived(mac_of(i), forged_hello(net, "SN-A"))))
            i += 1
        net.run(seconds=0.5)
    asked = session_requests(net, "SN-B", mark)
    assert b.stats["hellos_limited"] > 0 and asked < i
    assert asked <= b.timers.max_responding + b.timers.hello_rate_all * (net.now - start)
    took = until(net, lambda: established_both_ways(net), b.timers.handshake_timeout + 1)
    assert established_both_ways(net) and took <= b.timers.handshake_timeout
    assert both_ways(net)


def test_at_most_two_hellos_are_open_per_initiator(pair):
    """Ten forged hellos claiming SN-A, each from its own MAC, while the realm answers none:
    SN-B asks about two and refuses the rest without a request; once the realm has answered
    one, the next hello claiming SN-A is asked about."""
    b = pair.nodes["SN-B"]
    requests = []
    for i in range(10):
        acts = b.handle(FrameReceived(mac_of(i), forged_hello(pair, "SN-A")), pair.now)
        requests += [x for x in acts if isinstance(x, RadiusRequest) and x.operation == "session"]
    assert len(requests) == 2 and b.stats["hellos_limited"] == 8
    b.handle(RadiusFailed(requests[0].op_id, "no RADIUS server answered"), pair.now)
    acts = b.handle(FrameReceived(mac_of(10), forged_hello(pair, "SN-A")), pair.now)
    assert [x.operation for x in acts if isinstance(x, RadiusRequest)] == ["session"]


def test_open_hellos_never_exceed_max_responding(pair):
    """1,000 forged hellos over 50 s, each from its own MAC and initiator (no rate limit
    applies), while the realm answers none: SN-B holds at most max_responding of them open
    (each is a RADIUS request and an agent thread) and drops the rest; an answer frees a slot
    for the next hello."""
    b = pair.nodes["SN-B"]
    requests = []
    for i in range(1000):
        pair.now += 0.05
        acts = b.handle(FrameReceived(mac_of(i), forged_hello(pair, "SN-F%05d" % i)), pair.now)
        requests += [x for x in acts if isinstance(x, RadiusRequest) and x.operation == "session"]
        assert len(b.responding) <= b.timers.max_responding
    assert len(requests) == b.timers.max_responding
    assert b.stats["hellos_limited"] == 1000 - b.timers.max_responding
    b.handle(RadiusFailed(requests[0].op_id, "no RADIUS server answered"), pair.now)
    acts = b.handle(FrameReceived(mac_of(5000), forged_hello(pair, "SN-F05000")), pair.now)
    assert [x.operation for x in acts if isinstance(x, RadiusRequest)] == ["session"]


def test_a_duplicated_hello_costs_one_request_and_a_replayed_one_none(net):
    """Every hello SN-A sends arrives twice: SN-B asks the realm once and the pair comes up. Once
    the handshake is done, the same hello replayed (from A's MAC or another) asks nothing."""
    hellos: list[bytes] = []

    def double_hellos(dev, dst, payload):
        if payload[1] == HELLO:
            hellos.append(payload)
            return 2
        return 1
    net.wire = double_hellos
    up(net, "SN-A", "SN-B")
    assert hellos and established_both_ways(net)
    assert session_requests(net, "SN-B") == 1
    mark = len(net.answers)
    net.run([("SN-B", FrameReceived(net.macs["SN-A"], hellos[0])), ("SN-B", FrameReceived(ATTACKER, hellos[0]))],
            seconds=2)
    assert session_requests(net, "SN-B", mark) == 0
    assert both_ways(net)


def test_a_forged_error_frame_does_not_abort_a_handshake(net):
    """An ErrorMessage 'from SN-B' reaches SN-A just after A's hello: unauthenticated, it is
    counted and changes nothing; the handshake that hello started completes, with no failure
    and no second hello."""
    error = m.ErrorMessage(E.RevokedError.code, 0, "revoked").encode()

    def error_after_hello(dev, dst, payload):
        if dev == "SN-A" and payload[1] == HELLO and not sent:
            sent.append(payload)
            net.queue.append(("SN-A", FrameReceived(net.macs["SN-B"], error)))
        return 1
    sent: list[bytes] = []
    net.wire = error_after_hello
    up(net, "SN-A")
    dropped = net.nodes["SN-A"].stats["frames_dropped"]
    up(net, "SN-B", seconds=0)
    a = net.nodes["SN-A"]
    assert sent and a.stats["frames_dropped"] == dropped + 1
    assert established_both_ways(net) and a.stats["handshakes_failed"] == 0
    assert {p for d, _, p in net.frames if d == "SN-A" and p[1] == HELLO} == set(sent)
    assert both_ways(net)


# -- 2. both sides confirm the key -----------------------------------------------------------------
@pytest.mark.parametrize("kind", [HELLO, TICKET, FINISHED, CONFIRM], ids=["hello", "ticket", "finished", "confirm"])
def test_one_lost_handshake_frame_costs_a_resend(net, kind):
    """The first frame of one handshake step is lost: the pair still ends with one session both
    ways, within handshake_timeout + one retry, by resending (the hello or the PeerFinished, the
    same bytes), not by a failed handshake; the realm is asked once (the resent hello is answered
    with the cached PeerTicket, the resent PeerFinished with the cached PeerConfirm)."""
    lost = lose(net, kind, times=1)
    up(net, "SN-A", seconds=0)
    up(net, "SN-B", seconds=0)
    hellos = [p for d, _, p in net.frames if d == "SN-A" and p[1] == HELLO]
    a, b = net.nodes["SN-A"], net.nodes["SN-B"]
    assert hellos
    took = until(net, lambda: established_both_ways(net), 30)
    assert [p[1] for p in lost] == [kind]
    assert established_both_ways(net) and took <= a.timers.handshake_timeout + a.timers.resend_every
    assert len({p for d, _, p in net.frames if d == "SN-A" and p[1] == HELLO}) == 1  # resent, never renewed
    assert a.stats["handshakes_failed"] == b.stats["handshakes_failed"] == 0
    assert session_requests(net, "SN-B") == 1
    assert both_ways(net)


def test_the_initiator_does_not_send_under_a_key_until_it_is_confirmed(net):
    """Every PeerConfirm is lost: SN-B holds the session (it took A's PeerFinished) and SN-A
    holds the keys but, unconfirmed, will not send under them: send() is a StateError. Let the
    confirms through and A's resent PeerFinished fetches one: A sends, B opens."""
    lost = lose(net, CONFIRM)
    up(net, "SN-A", "SN-B", seconds=2)
    a, b = net.nodes["SN-A"], net.nodes["SN-B"]
    assert lost and "SN-A" in b.sessions
    hs = a.initiating["SN-B"]
    assert hs.role.state is PeerState.CONFIRMING and hs.pending is not None and "SN-B" not in a.sessions
    with pytest.raises(E.StateError):
        a.send("SN-B", b"too early", net.now)
    net.wire = None
    until(net, lambda: "SN-B" in a.sessions, 2)
    assert established_both_ways(net) and "SN-B" not in a.initiating
    assert both_ways(net)


def test_a_rekey_keeps_sending_under_the_old_key_until_confirmed(pair):
    """At the rekey every PeerConfirm is lost: while SN-A confirms the new key its records stay
    under the old session (which B still opens); once a confirm gets through A switches."""
    a, b = pair.nodes["SN-A"], pair.nodes["SN-B"]
    old = a.sessions["SN-B"].channel.session_id
    lost = lose(pair, CONFIRM)
    pair.run(seconds=3600 - 300 - 20, step=10)
    until(pair, lambda: "SN-B" in a.initiating and a.initiating["SN-B"].pending is not None, 60)
    new = a.initiating["SN-B"].pending.channel.session_id
    assert lost and new != old and b.sessions["SN-A"].channel.session_id == new
    sent = a.send("SN-B", b"under the old key", pair.now)
    assert session_id_of(sent[0].payload) == old and sent[0].dst == pair.macs["SN-B"]
    pair.act("SN-A", sent)
    pair.run()
    assert ("SN-A", "SN-B", b"under the old key") in pair.delivered
    pair.wire = None
    until(pair, lambda: "SN-B" not in a.initiating, 2)
    assert a.sessions["SN-B"].channel.session_id == new
    assert session_id_of(a.send("SN-B", b"under the new one", pair.now)[0].payload) == new
    assert both_ways(pair)


def test_a_record_under_the_new_key_confirms_it_when_every_confirm_is_lost(net):
    """No PeerConfirm ever arrives, but SN-B, established, sends under the new key: A opens the
    record with the key it is confirming, delivers it and takes it as the confirm."""
    lost = lose(net, CONFIRM)
    up(net, "SN-A", "SN-B", seconds=2)
    a = net.nodes["SN-A"]
    assert lost and "SN-B" not in a.sessions
    net.send("SN-B", "SN-A", b"B holds it")
    assert ("SN-B", "SN-A", b"B holds it") in net.delivered
    assert established_both_ways(net) and "SN-B" not in a.initiating
    assert both_ways(net)


def test_a_tampered_confirm_is_refused_and_the_real_one_taken(net):
    """SN-A, confirming, gets a PeerConfirm with one bit of its MAC flipped: refused, A stays
    confirming and does not send; the real PeerConfirm, a moment later, establishes it."""
    lost = lose(net, CONFIRM)
    up(net, "SN-A", "SN-B", seconds=0)
    a = net.nodes["SN-A"]
    real = lost[0]
    tampered = bytearray(real)
    tampered[-1] ^= 1
    dropped = a.stats["frames_dropped"]
    net.run([("SN-A", FrameReceived(net.macs["SN-B"], bytes(tampered)))])
    assert a.stats["frames_dropped"] == dropped + 1
    assert a.initiating["SN-B"].role.state is PeerState.CONFIRMING and "SN-B" not in a.sessions
    with pytest.raises(E.StateError):
        a.send("SN-B", b"too early", net.now)
    net.run([("SN-A", FrameReceived(net.macs["SN-B"], real))])
    assert established_both_ways(net) and "SN-B" not in a.initiating
    assert both_ways(net)


# -- 3. revocation reaches the peers ---------------------------------------------------------------
def test_revocation_reaches_the_peers_within_one_poll(net, realm):
    """SN-C is revoked in the realm. Until their next poll SN-A and SN-B still hold their sessions
    with it; within one revocation_poll (and a tick) they hold none, refuse to send to C, drop
    C's records, answer C's new hellos without asking the realm, and keep talking to each other."""
    up(net, "SN-A", "SN-B", "SN-C")
    a, b, c = (net.nodes[d] for d in ("SN-A", "SN-B", "SN-C"))
    assert "SN-C" in a.sessions and "SN-C" in b.sessions
    revoked_at = net.now
    realm.revoke("SN-C", revoked_at, "test")
    poll = min(a.next_revocation_poll, b.next_revocation_poll)
    until(net, lambda: net.now + 0.5 >= poll, a.timers.revocation_poll)
    assert "SN-C" in a.sessions and "SN-C" in b.sessions and not a.revoked and not b.revoked
    assert both_ways(net, "SN-A", "SN-C")  # not yet: the poll is what ends it
    mark_polls, mark = len(net.polls), len(net.answers)
    net.run(seconds=revoked_at + a.timers.revocation_poll + 0.5 - net.now)
    assert {d for d, how in net.polls[mark_polls:] if how == "RadiusAnswer"} >= {"SN-A", "SN-B"}
    for node in (a, b):
        assert node.revoked == {"SN-C"} and "SN-C" not in node.sessions
        assert not [p for p, _ in node.by_id.values() if p == "SN-C"]
        with pytest.raises(E.StateError):
            node.send("SN-C", b"no", net.now)
    assert sorted(c.sessions) == ["SN-A", "SN-B"]  # C's side is C's: what it sends is dropped
    n, dropped = len(net.delivered), (a.stats["frames_dropped"], b.stats["frames_dropped"])
    net.send("SN-C", "SN-A", b"from the revoked")
    net.send("SN-C", "SN-B", b"from the revoked")
    assert net.delivered[n:] == []
    assert (a.stats["frames_dropped"], b.stats["frames_dropped"]) == (dropped[0] + 1, dropped[1] + 1)
    for peer in ("SN-A", "SN-B"):
        hello = PeerInitiator(c.client, peer).hello(net.now, net.rand(16))
        net.run([(peer, FrameReceived(net.macs["SN-C"], hello))], seconds=2)
    assert session_requests(net, "SN-A", mark) == session_requests(net, "SN-B", mark) == 0
    assert both_ways(net)


def forged_list(query: bytes, listed: tuple, key: DeviceKey, now: float) -> bytes:
    """A RevocationList answering `query` (its realm, device, server and nonce), signed by `key`."""
    q = m.decode(query, (m.RevocationQuery,))
    answer = m.RevocationList(q.realm, q.device_id, q.server_id, q.nonce, int(now), int(now) - 3900, listed)
    answer.signature = key.sign(REVOCATIONS_CONTEXT + answer.body())
    return answer.encode()


def test_forged_revocation_answers_change_nothing(net, service):
    """SN-A's polls are answered by a list naming SN-C signed by another key, by an unsigned
    'revoked' ErrorMessage, and by an Access-Reject carrying one: after each, A revokes nobody
    and keeps talking to C. The same list signed by the realm's service key ends the session."""
    up(net, "SN-A", "SN-C")
    a = net.nodes["SN-A"]
    stranger, listed = DeviceKey.generate(), (("SN-C", int(net.now)),)
    unsigned = m.ErrorMessage(E.RevokedError.code, 0, "SN-C revoked").encode()
    polls: list[bytes] = []

    def answer(r: RadiusRequest):
        query = r.build("radius-a")  # as a server would receive it: the node now awaits the answer
        polls.append(query)
        if len(polls) == 1:
            return RadiusAnswer(r.op_id, forged_list(query, listed, stranger, net.now))
        if len(polls) == 2:
            return RadiusAnswer(r.op_id, unsigned)
        if len(polls) == 3:
            return RadiusFailed(r.op_id, "Access-Reject", unsigned)
        return RadiusAnswer(r.op_id, forged_list(query, listed, service.signing_key, net.now))
    net.intercept_polls["SN-A"] = answer
    for n in (1, 2, 3):
        until(net, lambda: len(polls) == n, a.timers.revocation_poll + 1)
        assert len(polls) == n and a.revoked == set() and "SN-C" in a.sessions
        assert both_ways(net, "SN-A", "SN-C")
    until(net, lambda: len(polls) == 4, a.timers.revocation_poll + 1)
    assert a.revoked == {"SN-C"} and "SN-C" not in a.sessions
