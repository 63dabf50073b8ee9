"""The wire between devices, in memory (issue 9 §1-3): discovery that cannot steer, key
confirmation both ways with retransmission, revocation that reaches the peers.

Runs the real nodes, service and device cores on the simulated wire of tests/unit/test_node.py
(`Net`): `Net.wire` loses or doubles single frames, `Net.intercept_polls` answers a node's
revocation poll in place of the service. Hostile frames are built with tessera.message, as an
enrolled neighbour would build them; the frame types are those of docs/layouts.md#messages.
"""

from __future__ import annotations

import copy
import struct

import pytest

from tessera import errors as E, message as m
from tessera.identity import DeviceKey
from tessera.node import FrameReceived, Log, Node, RadiusAnswer, RadiusFailed, RadiusRequest, SendFrame, Timers
from tessera.peer import PeerInitiator, PeerResponder, PeerState
from tessera.record import session_id_of
from tessera.service import REVOCATIONS_CONTEXT
from tests.unit.conftest import admit, make_device
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
    return m.PeerHello(realm=REALM, initiator=initiator, responder=responder, initiator_hw=unicast(net.rand(6)),
                       timestamp=int(net.now), nonce=net.rand(16), tgt=net.rand(180), mac=net.rand(32)).encode()


def unicast(hw: bytes) -> bytes:
    """An individual (not group) MAC: the low bit of the first byte clear."""
    return bytes([hw[0] & 0xFE]) + hw[1:]


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


# -- break-this regressions (each names the finding it answers) ------------------------------------
def hw(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def rebind_hello(hello: bytes, address: bytes) -> bytes:
    """The hello with its initiator_hw replaced: docs/layouts.md#peerhello puts it after the
    2-byte header and three `id` fields (each a u8 length and its bytes)."""
    at = 2
    for _ in range(3):
        at += 1 + hello[at]
    return hello[:at] + address + hello[at + 6:]


def relay(net, via: str, tamper=None) -> list[tuple[str, int]]:
    """An insider at MAC `via` passes on to SN-B what SN-A sends it and to SN-A what SN-B sends
    it, from its own MAC (a hello through `tamper` first); returns (sender, type) of each."""
    relayed: list[tuple[str, int]] = []

    def wire(dev, dst, payload):
        if dst == via and dev in ("SN-A", "SN-B"):
            if tamper is not None and payload[1] == HELLO:
                payload = tamper(payload)
            relayed.append((dev, payload[1]))
            net.queue.append(("SN-B" if dev == "SN-A" else "SN-A", FrameReceived(via, payload)))
        return 1
    net.wire = wire
    return relayed


def session_answers(net, dev: str, since: int = 0) -> list[str]:
    """How the realm answered `dev`'s session requests: "ok" or the error's name."""
    return [how for d, op, how in net.answers[since:] if d == dev and op == "session"]


@pytest.mark.parametrize("tampered", [False, True], ids=["relayed-as-is", "address-rewritten"])
def test_a_relayed_first_handshake_leaves_the_relay_off_the_session(net, tampered):
    """F5: an insider announces SN-B's id from its own MAC before A hears B, so A's first hello
    goes to it alone, and relays it to B from its MAC (and would relay B's frames back). B
    answers the MAC bound in the hello (PeerHello.initiator_hw), A sends to the one bound in the
    ticket (PeerTicket.responder_hw): both sessions hold the real MACs, the insider sees the
    hello and nothing else, and records go straight between A and B. A relay that rewrites
    initiator_hw to its own MAC breaks A's authenticator: the realm refuses B's request (the
    unmodified hello is accepted), no session goes through it, and A gets there directly once
    it hears B."""
    relayed = relay(net, ATTACKER, (lambda p: rebind_hello(p, hw(ATTACKER))) if tampered else None)
    up(net, "SN-B")
    net.carrier("SN-A", True)  # A registers and gets its TGT; B's next announce is still to come
    a, b = net.nodes["SN-A"], net.nodes["SN-B"]
    assert a.client.credentials is not None and "SN-B" not in a.neighbours
    mark, asked = len(net.frames), len(net.answers)
    net.run([("SN-A", FrameReceived(ATTACKER, announce("SN-B", 12345)))])
    assert [dst for d, dst, p in net.frames[mark:] if d == "SN-A" and p[1] == HELLO] == [ATTACKER]
    assert relayed == [("SN-A", HELLO)]
    if tampered:
        assert session_answers(net, "SN-B", asked) == [E.BadProofError.name]
        assert "SN-B" not in a.sessions and "SN-A" not in b.sessions
        until(net, lambda: established_both_ways(net), 2 * a.timers.handshake_timeout)
        assert session_answers(net, "SN-B", asked)[1:] == ["ok"]
    else:
        assert session_answers(net, "SN-B", asked) == ["ok"]
        assert [dst for d, dst, p in net.frames[mark:] if d == "SN-B" and p[1] in (TICKET, CONFIRM)] == \
            [net.macs["SN-A"], net.macs["SN-A"]]
    assert established_both_ways(net)
    assert a.sessions["SN-B"].mac == net.macs["SN-B"] and b.sessions["SN-A"].mac == net.macs["SN-A"]
    assert both_ways(net)
    assert {k for _, k in relayed} == {HELLO}  # hellos only: never a ticket, finished, confirm or record
    assert not [f for f in net.frames if f[1] == ATTACKER and f[2][1] != HELLO]


def test_forged_hellos_naming_an_initiator_do_not_spend_its_allowance(net):
    """F4: hellos claiming SN-A from ever new MACs, 5 a second for 8 s (far past A's allowance
    of hello_burst + hello_rate × elapsed): only the realm can tell them from A's, and A's
    allowance is spent only by hellos it accepts, so every forgery is asked about and refused,
    and A's own first hello, when it comes, is asked at once and accepted. Hellos the realm
    accepts do spend it: a device whose genuine hellos come hello_burst + 1 at once, each from
    another port, gets the last refused without a request."""
    up(net, "SN-B")
    b = net.nodes["SN-B"]
    mark, n = len(net.answers), 0
    while n < 40:
        for _ in range(5):
            net.run([("SN-B", FrameReceived(mac_of(n), forged_hello(net, "SN-A")))])
            n += 1
        net.run(seconds=1, step=0.5)
    assert b.timers.hello_burst + b.timers.hello_rate * 8 < n
    refused = session_answers(net, "SN-B", mark)
    assert len(refused) == n and "ok" not in refused and b.stats["hellos_limited"] == 0
    mark = len(net.answers)
    up(net, "SN-A", seconds=0)
    until(net, lambda: established_both_ways(net), b.timers.announce_every + 1)
    assert session_answers(net, "SN-B", mark) == ["ok"]
    assert both_ways(net)

    zero = make_device(net.realm, "SN-0")  # a device of its own: its handshakes do not touch A's
    admit(net.service, zero, net.rand, net.now)
    port, asked = "02:00:00:00:00:70", len(net.answers)
    tickets = []
    for i in range(int(b.timers.hello_burst) + 1):
        role = PeerInitiator(zero, "SN-B")
        mark = len(net.frames)
        net.run([("SN-B", FrameReceived(mac_of(100 + i), role.hello(net.now, net.rand(16), hw(port))))])
        sent = [p for d, dst, p in net.frames[mark:] if d == "SN-B" and dst == port and p[1] == TICKET]
        tickets.append(len(sent))
        if sent:  # completed, so that no handshake stays open
            net.run([("SN-B", FrameReceived(port, role.receive_ticket(sent[0], net.now)))])
            assert b.sessions["SN-0"].mac == port
    assert tickets == [1] * int(b.timers.hello_burst) + [0]
    assert session_answers(net, "SN-B", asked) == ["ok"] * int(b.timers.hello_burst) and b.stats["hellos_limited"] == 1


def test_a_flood_that_spends_the_total_does_not_stop_a_rekey(pair):
    """F4/F5: forged hellos naming SN-A, each from a new MAC, spend SN-B's total allowance for new
    hellos (max_responding at once, then hello_rate_all): the next stranger's hello is refused
    without a request. A rekey hello from the MAC of B's session with A is not counted against
    the total (nor did the forgeries spend A's own allowance): B asks the realm, and the new
    session stands both ways."""
    a, b = pair.nodes["SN-A"], pair.nodes["SN-B"]
    old = a.sessions["SN-B"].channel.session_id
    mark, flood = len(pair.answers), b.timers.max_responding + 16
    for i in range(flood):
        pair.run([("SN-B", FrameReceived(mac_of(i), forged_hello(pair, "SN-A")))])
    assert len(session_answers(pair, "SN-B", mark)) == b.timers.max_responding
    assert b.stats["hellos_limited"] == flood - b.timers.max_responding
    mark = len(pair.answers)
    acts = b.handle(FrameReceived(mac_of(flood), forged_hello(pair, "SN-F00001")), pair.now)
    assert not [x for x in acts if isinstance(x, RadiusRequest)]
    assert b.stats["hellos_limited"] == flood - b.timers.max_responding + 1
    pair.run([("SN-A", FrameReceived(pair.macs["SN-B"], announce("SN-B", b.epoch + 1)))])  # a new epoch: rekey
    assert session_answers(pair, "SN-B", mark) == ["ok"]
    assert established_both_ways(pair) and a.sessions["SN-B"].channel.session_id != old
    assert both_ways(pair)


def rekey_losing_b_from_its_confirm(pair) -> list[float]:
    """Start an epoch-driven rekey of SN-A with SN-B in which every frame of B is lost for 11 s
    from its first PeerConfirm on; returns [when the loss ends] once it has begun."""
    blackout: list[float] = []

    def wire(dev, dst, payload):
        if dev == "SN-B" and payload[1] == CONFIRM and not blackout:
            blackout.append(pair.now + 11)
        return 0 if dev == "SN-B" and blackout and pair.now < blackout[0] else 1
    pair.wire = wire
    b = pair.nodes["SN-B"]
    pair.run([("SN-A", FrameReceived(pair.macs["SN-B"], announce("SN-B", b.epoch + 1)))])
    return blackout


def test_a_lost_confirm_at_an_epoch_rekey_keeps_a_to_b_flowing(pair):
    """F8: an epoch-driven rekey whose PeerConfirm never reaches SN-A (every frame of B lost for
    11 s from it on). B took A's PeerFinished and sends under the new key, but keeps the old one
    until A's first record under a new key, so A's records under the old session keep arriving
    long after a handshake timeout and its grace (when B used to drop it). A gives up that
    handshake and retries the rekey it still wants until one stands."""
    a, b = pair.nodes["SN-A"], pair.nodes["SN-B"]
    first = a.sessions["SN-B"]
    blackout = rekey_losing_b_from_its_confirm(pair)
    assert blackout and b.sessions["SN-A"].channel.session_id != first.channel.session_id
    start = pair.now
    for at in (5, 12, 20):
        pair.run(seconds=start + at - pair.now)
        assert a.sessions["SN-B"] is first or at > 11
        n = len(pair.delivered)
        pair.send("SN-A", "SN-B", b"at %d s" % at)
        assert pair.delivered[n:] == [("SN-A", "SN-B", b"at %d s" % at)]
    assert a.stats["handshakes_failed"] >= 1
    until(pair, lambda: established_both_ways(pair) and a.sessions["SN-B"] is not first, 60)
    assert established_both_ways(pair) and a.sessions["SN-B"] is not first and not a.sessions["SN-B"].rekey_wanted
    assert session_answers(pair, "SN-B") == ["ok"] * 3  # the first session, the lost one, the retry
    assert both_ways(pair)


def test_every_key_a_left_goes_a_grace_after_its_first_new_record(pair):
    """As above (F8), then A sends under the session that stood: every earlier key B holds for A
    goes a grace later, also the one from before the lost confirm, so a record A sealed under
    it is dropped (B keeps it for the session's life instead)."""
    a, b = pair.nodes["SN-A"], pair.nodes["SN-B"]
    first = a.sessions["SN-B"]
    assert rekey_losing_b_from_its_confirm(pair)  # the loss began
    until(pair, lambda: established_both_ways(pair) and a.sessions["SN-B"] is not first, 60)
    late = first.channel.seal(b"under the old key")
    assert both_ways(pair)
    pair.run(seconds=a.timers.old_session_grace + 1)
    pair.run([("SN-B", FrameReceived(pair.macs["SN-A"], late))])
    assert ("SN-A", "SN-B", b"under the old key") not in pair.delivered


def test_one_lost_confirm_is_resent_whatever_hellos_come_meanwhile(pair):
    """F8b: at an epoch-driven rekey one PeerConfirm is lost, and 1,100 forged hellos (each a new
    initiator, from a new MAC) reach SN-B before A resends its PeerFinished. Refused hellos are
    kept apart from answered handshakes, so B still holds the confirm and sends it again without
    asking the realm; A switches, B drops the old key a grace after A's first new record."""
    a, b = pair.nodes["SN-A"], pair.nodes["SN-B"]
    first = a.sessions["SN-B"]
    lost = lose(pair, CONFIRM, times=1)
    pair.run([("SN-A", FrameReceived(pair.macs["SN-B"], announce("SN-B", b.epoch + 1)))])
    assert len(lost) == 1 and "SN-B" in a.initiating and a.sessions["SN-B"] is first
    mark = len(pair.answers)
    for i in range(1100):
        pair.queue.append(("SN-B", FrameReceived(mac_of(i), forged_hello(pair, "ZA-%05d" % i))))
        if i % 32 == 0:
            pair.run()
    pair.run()
    assert "ok" not in session_answers(pair, "SN-B", mark)
    mark = len(pair.answers)
    until(pair, lambda: "SN-B" not in a.initiating, a.timers.handshake_timeout)
    assert established_both_ways(pair) and a.sessions["SN-B"] is not first
    assert session_answers(pair, "SN-B", mark) == [] and a.stats["handshakes_failed"] == 0
    late = first.channel.seal(b"under the old key")
    assert both_ways(pair)
    pair.run(seconds=a.timers.old_session_grace + 1)
    pair.run([("SN-B", FrameReceived(pair.macs["SN-A"], late))])
    assert ("SN-A", "SN-B", b"under the old key") not in pair.delivered


@pytest.mark.parametrize("listed", ["SN-C", "SN-B"], ids=["peer-revoked", "another-revoked"])
def test_a_handshake_under_way_with_a_revoked_peer_never_becomes_a_session(net, realm, listed):
    """F6: SN-A is confirming a first handshake with SN-C (C's PeerConfirms are lost; C holds the
    session) when A's revocation list arrives naming C: the handshake ends with it, keys and
    all, and C's next record, which would have confirmed it, is dropped: no session, nothing
    delivered, nothing A may send. A list naming another device leaves the handshake be: C's
    record confirms it and is delivered."""
    lose(net, CONFIRM)
    up(net, "SN-A")
    a, c = net.nodes["SN-A"], net.nodes["SN-C"]
    until(net, lambda: a.next_revocation_poll - net.now <= 1.5, a.timers.revocation_poll + 1)
    up(net, "SN-C", seconds=0)
    assert a.initiating["SN-C"].pending is not None and "SN-C" not in a.sessions and "SN-A" in c.sessions
    realm.revoke(listed, net.now, "test")
    polls = len(net.polls)
    net.run(seconds=2)
    assert len(net.polls) > polls and a.revoked == {listed}
    n = len(net.delivered)
    net.send("SN-C", "SN-A", b"from C")
    if listed == "SN-C":
        assert "SN-C" not in a.initiating and not [p for p, _ in a.by_id.values() if p == "SN-C"]
        assert net.delivered[n:] == [] and "SN-C" not in a.sessions
        with pytest.raises(E.StateError):
            a.send("SN-C", b"to the revoked", net.now)
    else:
        assert net.delivered[n:] == [("SN-C", "SN-A", b"from C")]
        assert established_both_ways(net, "SN-A", "SN-C")


def session_logs(net) -> list[tuple[str, str, str]]:
    """(device, event, text) of every session-* Log the nodes write from now on."""
    logs: list[tuple[str, str, str]] = []
    for dev, node in net.nodes.items():
        handle = node.handle

        def logged(event, now, dev=dev, handle=handle):
            out = handle(event, now)
            logs.extend((dev, x.event, x.text) for x in out if isinstance(x, Log) and x.event.startswith("session"))
            return out
        node.handle = logged
    return logs


@pytest.mark.parametrize("clock", [0.0, -200.0], ids=["in-step", "a-200s-behind"])
def test_a_cut_revocation_list_renegotiates_honest_pairs_without_ending_them(net, realm, clock):
    """F10: 200 devices revoked in one second, more than a list holds: the list is cut to what it
    covers completely (here nothing: it starts after that second), so a revocation older than
    that might concern any session. None of SN-A, SN-B, SN-C is revoked: each pair renegotiates
    through the realm once (which refuses a revoked device), no session is ended, and all keep
    talking. The same with A's clock 200 s behind the realm's (the list's age is measured in the
    list's own time, not compared with A's clock)."""
    net.clock["SN-A"] = clock
    up(net, "SN-A", "SN-B", "SN-C", seconds=5)
    for i in range(200):
        make_device(realm, "ZQ-%04d" % i)
    net.run(seconds=60, step=1)
    before = {(d, p): s.channel.session_id for d, node in net.nodes.items() for p, s in node.sessions.items()}
    assert len(before) == 6
    logs = session_logs(net)
    mark = len(net.answers)
    for i in range(200):
        realm.revoke("ZQ-%04d" % i, net.now, "batch")
    net.run(seconds=2 * net.nodes["SN-A"].timers.revocation_poll, step=1)
    assert sorted((d, e) for d, e, _ in logs if e == "session-recheck") == \
        [(d, "session-recheck") for d in ("SN-A", "SN-A", "SN-B", "SN-B", "SN-C", "SN-C")]
    assert [x for x in logs if x[1] in ("session-ended", "session-expired")] == []
    assert all(not node.revoked for node in net.nodes.values())
    after = {(d, p): s.channel.session_id for d, node in net.nodes.items() for p, s in node.sessions.items()}
    assert after.keys() == before.keys() and not set(after.values()) & set(before.values())
    assert sorted(session_answers(net, "SN-B", mark) + session_answers(net, "SN-C", mark)) == ["ok"] * 3
    for x, y in (("SN-A", "SN-B"), ("SN-A", "SN-C"), ("SN-B", "SN-C")):
        assert established_both_ways(net, x, y) and both_ways(net, x, y)


def test_a_cut_revocation_list_ends_no_honest_session_when_polls_are_out_of_step(net, realm):
    """F10 with the agents' polls 25 s apart (SN-B came up 5 s after SN-A; the batch falls
    between their polls, B's first): B, the responder, learns of the cut list first and may
    only wait for A to renegotiate; no session may end before A's own poll has had its time."""
    up(net, "SN-A", "SN-C", seconds=5)
    up(net, "SN-B", seconds=5)
    a, b = net.nodes["SN-A"], net.nodes["SN-B"]
    for i in range(200):
        make_device(realm, "ZQ-%04d" % i)
    until(net, lambda: a.next_revocation_poll - net.now > 25 and b.next_revocation_poll - net.now < 10, 60, step=1)
    logs = session_logs(net)
    for i in range(200):
        realm.revoke("ZQ-%04d" % i, net.now, "batch")
    net.run(seconds=2 * a.timers.revocation_poll, step=1)
    assert [x for x in logs if x[1] == "session-recheck"] and [x for x in logs if x[1] == "session-ended"] == []


def id_(text: str) -> bytes:
    """An `id` field (docs/layouts.md#encodings: u8 length, UTF-8), any length up to 255 bytes."""
    raw = text.encode()
    return struct.pack("!B", len(raw)) + raw


def frames_naming(device_id: str, responder: str, when: int) -> dict[str, bytes]:
    """One frame of each peer type carrying `device_id` as its (initiator) id, built from
    docs/layouts.md#messages (header: version 1, type)."""
    realm, n16, m32 = id_(REALM), b"\x01" * 16, b"\x02" * 32
    names = id_(device_id) + id_(responder)
    return {
        "announce": struct.pack("!BB", 1, 36) + realm + id_(device_id) + struct.pack("!Q", 7),
        "hello": struct.pack("!BB", 1, HELLO) + realm + names + b"\x06" * 6 + struct.pack("!Q", when) + n16
        + struct.pack("!H", 40) + b"\x03" * 40 + m32,
        "ticket": struct.pack("!BB", 1, TICKET) + realm + id_(responder) + id_(device_id) + n16 + n16 + b"\x06" * 6
        + struct.pack("!Q", when + 3600) + struct.pack("!H", 40) + b"\x03" * 40 + m32,
        "finished": struct.pack("!BB", 1, FINISHED) + realm + names + n16 + m32,
        "confirm": struct.pack("!BB", 1, CONFIRM) + realm + id_(responder) + id_(device_id) + n16 + m32,
    }


@pytest.mark.parametrize("bad", ["SN-Z\n2027 tessera-agent: SN-B session: established with SN-Q", "SN-" + "Z" * 62,
                                 "SN Z", "SN-Z\u2028x"], ids=["newline", "65-bytes", "space", "line-separator"])
def test_ids_in_frames_that_are_not_device_ids_are_refused_before_any_log(pair, bad):
    """F14: device ids come off the wire into Log lines (one line each in the agent's log) and
    tables. Every peer frame naming a string that is not a device id (a newline that would
    forge a log line, more than 64 bytes, a space, a Unicode line separator) is dropped as
    malformed: counted, no table grows, nothing sent or asked, and no Log text carries a line
    break (a string shown is escaped). The same frames naming a well-formed id are taken: the announce
    adds a neighbour and starts a hello, the hello is asked about."""
    b = pair.nodes["SN-B"]
    t = int(pair.now)
    for kind, frame in frames_naming(bad, "SN-B", t).items():
        dropped, neighbours = b.stats["frames_dropped"], len(b.neighbours)
        acts = b.handle(FrameReceived(mac_of(1), frame), pair.now)
        assert b.stats["frames_dropped"] == dropped + 1, kind
        assert all(isinstance(x, Log) for x in acts) and len(b.neighbours) == neighbours and not b.responding
        for x in acts:
            assert bad.isprintable() or bad not in x.text, (kind, x.text)  # escaped, if shown at all
            assert not any(c in x.text for c in "\n\r\u2028\u2029"), (kind, x.text)
    good = frames_naming("SN-Z", "SN-B", t)
    for frame in good.values():  # well-formed but for the id: it is the id they are refused for
        m.decode(frame, (m.PeerAnnounce, m.PeerHello, m.PeerTicket, m.PeerFinished, m.PeerConfirm))
    acts = b.handle(FrameReceived(mac_of(2), good["announce"]), pair.now)
    assert "SN-Z" in b.neighbours and [x.dst for x in acts if isinstance(x, SendFrame)] == [mac_of(2)]
    good = frames_naming("SN-0", "SN-B", t)
    acts = b.handle(FrameReceived(mac_of(3), good["hello"]), pair.now)
    assert [x.operation for x in acts if isinstance(x, RadiusRequest)] == ["session"]


def test_a_peer_back_on_a_new_mac_is_rekeyed_to_it(pair):
    """W1: SN-B's link goes down and comes back on another MAC with a new epoch (a NIC swap, MAC
    randomisation); SN-A keeps its old session. B's announce from the new MAC is not the
    session's, but A, whose turn it is, rekeys (only the real B can answer): within an
    announce period the session, both sides, runs over B's new MAC and nothing goes to the old."""
    a, b = pair.nodes["SN-A"], pair.nodes["SN-B"]
    old_mac, old = pair.macs["SN-B"], a.sessions["SN-B"]
    pair.carrier("SN-B", False)
    pair.macs["SN-B"] = b.mac = "02:00:00:00:00:b2"
    pair.carrier("SN-B", True)
    until(pair, lambda: established_both_ways(pair), b.timers.announce_every + 1)
    assert established_both_ways(pair) and a.sessions["SN-B"] is not old
    assert a.sessions["SN-B"].mac == "02:00:00:00:00:b2" and b.sessions["SN-A"].mac == pair.macs["SN-A"]
    mark = len(pair.frames)
    assert both_ways(pair)
    assert not [f for f in pair.frames[mark:] if f[1] == old_mac]


def backoff_rekeys(seconds: float, first: float, cap: float = 600.0) -> int:
    """Rekeys a stream of new epochs from a MAC not the session's can start in `seconds`: one at
    once, then after first, 2 × first, ... doubling up to `cap` (node.py _epoch_elsewhere)."""
    at, interval, n = 0.0, first, 1
    while at + interval <= seconds:
        at, interval, n = at + interval, min(interval * 2, cap), n + 1
    return n


def test_an_insiders_new_epochs_cost_a_decaying_number_of_rekeys(pair):
    """F7: an insider announces SN-B's id with a new epoch every second from its own MAC for
    30 min. Each may be B back on a new port, so SN-A rekeys (only B can answer: the session
    stays on B's MAC), but with a back-off that doubles from one handshake timeout to 10 min:
    B's session requests stay within that schedule (8 in 30 min instead of one per handshake
    timeout), the last 10 min cost at most 1, and A and B keep talking."""
    a, b = pair.nodes["SN-A"], pair.nodes["SN-B"]
    mark, start, k, late = len(pair.answers), pair.now, 0, None
    while pair.now - start < 1800:
        k += 1
        if late is None and pair.now - start >= 1200:
            late = len(pair.answers)
        pair.run([("SN-A", FrameReceived(ATTACKER, announce("SN-B", 1000 + k)))], seconds=1, step=1)
    asked = session_answers(pair, "SN-B", mark)
    allowed = backoff_rekeys(1800, a.timers.handshake_timeout)
    assert allowed == 8 and 2 <= len(asked) <= allowed and set(asked) == {"ok"}
    assert len(session_answers(pair, "SN-B", late)) <= 1
    assert a.sessions["SN-B"].mac == pair.macs["SN-B"] and b.sessions["SN-A"].mac == pair.macs["SN-A"]
    assert not [f for f in pair.frames if f[1] == ATTACKER and f[2][1] != HELLO]
    assert both_ways(pair)


def test_the_realm_load_of_forged_hellos_is_bounded_by_the_total_rate(pair):
    """F3: 10,000 forged hellos in 2 s, each a new initiator from a new MAC (so no per-source or
    per-initiator allowance applies), with a realm that answers in 5 ms: SN-B asks the realm
    about at most max_responding + hello_rate_all × elapsed of them (not 64 every 5 ms), sends
    nothing back to the forged MACs, and its session with SN-A carries data both ways."""
    b = pair.nodes["SN-B"]
    start, rtt, flood = pair.now, 0.005, 10_000
    pending: list[tuple[float, object]] = []
    requests = sent = 0
    for i in range(flood):
        t = start + (i + 1) * 2 / flood
        while pending and pending[0][0] <= t:
            sent += sum(isinstance(x, SendFrame) and x.dst.startswith("06:") for x in b.handle(pending.pop(0)[1], t))
        pair.now = t
        acts = b.handle(FrameReceived(mac_of(i), forged_hello(pair, "ZA-%07d" % i)), t)
        sent += sum(isinstance(x, SendFrame) and x.dst.startswith("06:") for x in acts)  # mac_of's
        for r in (x for x in acts if isinstance(x, RadiusRequest) and x.operation == "session"):
            requests += 1
            try:
                answer = RadiusAnswer(r.op_id, pair.service.handle(r.build("radius-a"), t))
            except E.TesseraError as exc:
                answer = RadiusFailed(r.op_id, exc.reason, pair.service.error_reply(exc, t))
            pending.append((t + rtt, answer))
    assert b.timers.max_responding <= requests <= b.timers.max_responding + b.timers.hello_rate_all * 2
    assert b.stats["hellos_limited"] == flood - requests and sent == 0
    pair.run(seconds=1)
    assert both_ways(pair)


# -- second break-this round (each names the finding it answers) -----------------------------------
@pytest.mark.parametrize("lost", [False, True], ids=["real-hello-next", "its-resend-next"])
def test_an_altered_copy_of_a_hello_reaching_b_first_does_not_refuse_the_real_one(pair, lost):
    """F-B: an insider announces SN-B's id (with B's epoch) from its own MAC, so A's rekey hello
    goes to it as well; it sends B a copy with one TGT byte flipped (same initiator and nonce)
    that reaches B before A's own (which comes next, or, the first copy lost, as A's resend).
    The realm refuses the altered copy; that refusal is the copy's alone: B asks about A's real
    hello, the realm accepts it, and the rekey stands within a resend, no handshake failed."""
    a, b = pair.nodes["SN-A"], pair.nodes["SN-B"]
    pair.run([("SN-A", FrameReceived(ATTACKER, announce("SN-B", b.epoch)))])
    old = a.sessions["SN-B"].channel.session_id
    altered: list[bytes] = []

    def wire(dev, dst, payload):
        if dev == "SN-A" and payload[1] == HELLO:
            if dst == ATTACKER and not altered:
                bad = bytearray(payload)
                bad[-32 - 8] ^= 1  # the TGT ends where the 32-byte authenticator starts (layouts.md#peerhello)
                altered.append(bytes(bad))
                pair.queue.appendleft(("SN-B", FrameReceived(ATTACKER, altered[0])))
            if dst == pair.macs["SN-B"] and lost and not dropped:
                dropped.append(payload)
                return 0
        return 1
    dropped: list[bytes] = []
    pair.wire = wire
    mark, start = len(pair.answers), pair.now
    pair.run([("SN-A", FrameReceived(pair.macs["SN-B"], announce("SN-B", b.epoch + 1)))])  # a new epoch: rekey
    assert altered and bool(dropped) == lost
    took = until(pair, lambda: established_both_ways(pair) and a.sessions["SN-B"].channel.session_id != old,
                 a.timers.handshake_timeout)
    assert session_answers(pair, "SN-B", mark) == [E.InvalidTicket.name, "ok"]
    assert established_both_ways(pair) and a.sessions["SN-B"].channel.session_id != old
    assert pair.now - start <= a.timers.resend_every + 0.5 and took <= a.timers.resend_every + 0.5
    assert a.stats["handshakes_failed"] == 0
    assert both_ways(pair)


def test_two_forged_open_hellos_naming_a_do_not_block_its_rekey(pair):
    """F-B: an insider opens two forged hellos naming SN-A at SN-B (the realm has not answered
    them yet), the most B keeps open per initiator: a third from another MAC is refused without
    a request. A's rekey hello, from the MAC of B's session with A, is not held to that cap:
    B asks the realm, which accepts it, and the new session stands both ways."""
    a, b = pair.nodes["SN-A"], pair.nodes["SN-B"]
    old = a.sessions["SN-B"].channel.session_id
    opened = []
    for _ in range(2):  # their requests are never answered: both stay open
        acts = b.handle(FrameReceived(ATTACKER, forged_hello(pair, "SN-A")), pair.now)
        opened += [x for x in acts if isinstance(x, RadiusRequest) and x.operation == "session"]
    assert len(opened) == 2
    limited = b.stats["hellos_limited"]
    acts = b.handle(FrameReceived(mac_of(1), forged_hello(pair, "SN-A")), pair.now)
    assert not [x for x in acts if isinstance(x, RadiusRequest)] and b.stats["hellos_limited"] == limited + 1
    mark = len(pair.answers)
    pair.run([("SN-A", FrameReceived(pair.macs["SN-B"], announce("SN-B", b.epoch + 1)))])  # a new epoch: rekey
    assert session_answers(pair, "SN-B", mark) == ["ok"]
    assert established_both_ways(pair) and a.sessions["SN-B"].channel.session_id != old
    assert both_ways(pair)


def test_a_cut_list_seen_around_the_cut_second_ends_no_session(net, realm):
    """F-A: 200 revocations at X.5 cut the list to what it covers from X+1 (issued_at is a whole
    second); A and B rekey at X+1.0. A polls at whole seconds, B at half ones, so B (which waits
    for A's rekey) finds the session older than the list covers and A, by the rounding, did
    not: B would end it at its deadline and drop A's records. The side that starts the rekey
    flags with a handshake_timeout margin: both recheck, A renegotiates, no record is dropped
    and the pair talks both ways throughout."""
    for node in net.nodes.values():
        node.timers = Timers()  # the defaults
    up(net, "SN-A", "SN-B", seconds=5)
    a, b = net.nodes["SN-A"], net.nodes["SN-B"]
    for i in range(200):
        make_device(realm, "ZQ-%04d" % i)
    net.run(seconds=20)
    if net.now == int(net.now):
        net.run(seconds=0.5)  # land on a half second
    logs = session_logs(net)
    for i in range(200):
        realm.revoke("ZQ-%04d" % i, net.now, "batch")  # at X.5
    a.sessions["SN-B"].rekey_wanted = True  # a rekey due at X+1.0
    a.next_revocation_poll, b.next_revocation_poll = net.now + 5.5, net.now + 5.0
    old = a.sessions["SN-B"].channel.session_id
    net.run(seconds=0.5)
    assert established_both_ways(net) and a.sessions["SN-B"].channel.session_id != old
    assert a.sessions["SN-B"].established_at == int(a.sessions["SN-B"].established_at)  # at X+1.0
    dropped, start = b.stats["frames_dropped"], net.now
    while net.now - start < 2 * a.timers.revocation_poll + 4 * a.timers.handshake_timeout:
        net.run(seconds=5)
        assert both_ways(net), net.now - start
    assert {d for d, e, _ in logs if e == "session-recheck"} == {"SN-A", "SN-B"}
    assert [x for x in logs if x[1] in ("session-ended", "session-expired")] == []
    assert b.stats["frames_dropped"] == dropped and a.stats["frames_dropped"] == 0


def test_a_pumped_moved_back_off_does_not_keep_a_from_bs_new_mac(pair):
    """F-C: an insider announces SN-B's id with a new epoch every second from its own MAC for
    1300 s: SN-A's back-off for rekeys toward a MAC not the session's climbs to its 10-minute
    cap, and while B's session MAC keeps announcing the session stays there. Then B comes back
    on a new MAC (its old one goes quiet): a quiet session MAC is a real move, the back-off
    does not hold, and A and B talk over the new MAC within a few announce periods."""
    a, b = pair.nodes["SN-A"], pair.nodes["SN-B"]
    start, k = pair.now, 0
    while pair.now - start < 1300:
        k += 1
        pair.run([("SN-A", FrameReceived(ATTACKER, announce("SN-B", 999_000 + k)))], seconds=1, step=1)
    not_before, interval = a.moved_backoff.get("SN-B")
    assert interval == 600.0 and not_before > pair.now + 60
    assert a.sessions["SN-B"].mac == pair.macs["SN-B"] and both_ways(pair)
    old_mac = pair.macs["SN-B"]
    pair.carrier("SN-B", False)
    pair.macs["SN-B"] = b.mac = "02:00:00:00:00:b2"
    pair.carrier("SN-B", True)
    took = until(pair, lambda: established_both_ways(pair) and a.sessions["SN-B"].mac == "02:00:00:00:00:b2",
                 10 * a.timers.announce_every)
    assert established_both_ways(pair) and a.sessions["SN-B"].mac == "02:00:00:00:00:b2"
    assert took <= 5 * a.timers.announce_every
    mark = len(pair.frames)
    assert both_ways(pair)
    assert not [f for f in pair.frames[mark:] if f[1] in (old_mac, ATTACKER)]


GROUP_OR_OWN = ["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:fb", "33:33:00:00:00:01", "own"]


@pytest.mark.parametrize("bound", GROUP_OR_OWN, ids=["broadcast", "ipv4-multicast", "ipv6-multicast", "own"])
def test_a_hello_binding_a_group_mac_or_the_receivers_is_refused(pair, bound):
    """F-D: an insider (SN-0, enrolled) sends SN-B a hello whose initiator_hw (covered by its
    authenticator, so the realm would accept it) is a group address or B's own MAC, which
    would make B send its PeerTicket, PeerConfirm and every record for SN-0 to the whole
    segment or to itself. B refuses it as malformed: no RADIUS request, no frame sent there.
    The same hello binding a unicast MAC is asked about and answered at that MAC."""
    b = pair.nodes["SN-B"]
    zero = make_device(pair.realm, "SN-0")
    admit(pair.service, zero, pair.rand, pair.now)
    address = pair.macs["SN-B"] if bound == "own" else bound
    mark, asked, dropped = len(pair.frames), len(pair.answers), b.stats["frames_dropped"]
    hello = PeerInitiator(zero, "SN-B").hello(pair.now, pair.rand(16), hw(address))
    pair.run([("SN-B", FrameReceived(ATTACKER, hello))])
    assert session_requests(pair, "SN-B", asked) == 0 and b.stats["frames_dropped"] == dropped + 1
    assert not [f for f in pair.frames[mark:] if f[0] == "SN-B" and f[1] == address]
    assert not b.responding and "SN-0" not in b.sessions
    port = "02:00:00:00:00:70"
    hello = PeerInitiator(zero, "SN-B").hello(pair.now, pair.rand(16), hw(port))
    pair.run([("SN-B", FrameReceived(ATTACKER, hello))])
    assert session_answers(pair, "SN-B", asked) == ["ok"]
    assert [p[1] for d, dst, p in pair.frames[mark:] if d == "SN-B" and dst == port] == [TICKET]


@pytest.mark.parametrize("bound", GROUP_OR_OWN, ids=["broadcast", "ipv4-multicast", "ipv6-multicast", "own"])
def test_a_ticket_binding_a_group_mac_or_the_receivers_is_refused(pair, bound):
    """F-D: an insider (SN-Z, enrolled; A initiates to it) answers A's hello with a PeerTicket
    whose responder_hw (covered by its finished MAC) is a group address or A's own MAC, which
    would make A send its PeerFinished and every record for SN-Z there. A refuses it as
    malformed and sends nothing there; its handshake waits on. A ticket for the same hello
    binding the insider's unicast MAC is taken: A's PeerFinished goes to that MAC."""
    a = pair.nodes["SN-A"]
    z = make_device(pair.realm, "SN-Z")
    admit(pair.service, z, pair.rand, pair.now)
    mark = len(pair.frames)
    pair.run([("SN-A", FrameReceived(ATTACKER, announce("SN-Z", 1)))])
    hello = next(p for d, dst, p in pair.frames[mark:] if d == "SN-A" and dst == ATTACKER and p[1] == HELLO)

    role = PeerResponder(z)
    role.receive_hello(hello, pair.now)
    reply = pair.service.handle(role.session_request("radius-a", pair.now, pair.rand(16)), pair.now)

    def ticket(address: str) -> bytes:
        """A PeerTicket for A's hello binding `address` (the realm answers a hello once: each
        ticket comes from a copy of the role awaiting that one reply)."""
        return copy.copy(role).receive_session_reply(reply, pair.now, hw(address))
    address = pair.macs["SN-A"] if bound == "own" else bound
    mark, dropped = len(pair.frames), a.stats["frames_dropped"]
    pair.run([("SN-A", FrameReceived(ATTACKER, ticket(address)))])
    assert a.stats["frames_dropped"] == dropped + 1
    assert not [f for f in pair.frames[mark:] if f[0] == "SN-A" and f[2][1] == FINISHED]
    assert a.initiating["SN-Z"].pending is None and "SN-Z" not in a.sessions
    pair.run([("SN-A", FrameReceived(ATTACKER, ticket(ATTACKER)))])
    assert [dst for d, dst, p in pair.frames[mark:] if d == "SN-A" and p[1] == FINISHED] == [ATTACKER]
