"""Two nodes on a wire that loses, duplicates and reorders frames, and agents that restart
(issue 9, item 4), driven by a Hypothesis state machine.

A ("SN-A", the lower id: it initiates) and B each run a real `Node` around a real DeviceClient;
a real in-memory realm answers their RADIUS requests at once (admission, tickets, session keys,
revocation polls). The wire is a queue the rules control: deliver the oldest frame or any one,
duplicate or drop one, let time pass (ticks every 0.25 s) with frames held or lost (an outage),
run a healthy wire for a while or until A starts a rekey, restart an agent (a new Node around
the same DeviceClient, as an agent restarted with its saved tickets; or a link flap of the same
Node), and send data either way whenever `Node.send` allows it. Sessions last 120 s (rekeyed
30 s before their end); a run starts at boot or with A's rekey hello just sent.

Checked at every send and delivery:
* no record is delivered twice, and every delivered record is one the other node sent that way
  (payloads are unique; each send records its session id and sequence number);
* A sends only under a key B holds at that moment (or held before it restarted: A cannot know
  yet): A switches only once B confirmed, and B keeps the old key while A may still use it;
  B sends only under a key A held at some point.
At the end of every run (teardown) the chaos stops: every queued frame is delivered at once
and time goes on in 0.25 s ticks for at most one handshake timeout + one retry back-off (A's
next, from where its back-off stands) + one announce period + the timers' granularity, all
from Timers. By then both must hold the same session, and data must flow both ways exactly
once. A failure prints the run's event log (frames by number, the nodes' log lines, sends and
deliveries).
"""

from __future__ import annotations

import functools
import struct
from collections import deque

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test

from tessera import errors as E, message as m
from tessera.node import (BROADCAST, Deliver, FrameReceived, LinkDown, LinkUp, Log, Node, PortAuthorized, RadiusAnswer,
                          RadiusFailed, RadiusRequest, SendFrame, StartAdmission, Timers)
from tessera.realm import Realm
from tessera.replay import DEFAULT_PER_DEVICE
from tessera.service import Policy
from tessera.sqlite_registry import SQLiteRegistry
from tests.unit.conftest import T0, Counter, admit, make_device

A, B = "SN-A", "SN-B"
MACS = {A: "02:00:00:00:00:0a", B: "02:00:00:00:00:0b"}
OTHER = {A: B, B: A}
TICK = 0.25
RECORD_HEADER = struct.Struct("!BB8sQ")  # docs/layouts.md#peer-records: version, type 35, session id, seq
DATA_TYPE = 35
# restarts every few seconds spend more session requests than the realm lets one pair spend in a
# skew window (a realm policy with its own tests): lifted here, as the benchmarks lift it
POLICY = Policy(session_lifetime=120, replay_pair_quota=DEFAULT_PER_DEVICE)


def kind(payload: bytes) -> str:
    cls = m.MESSAGES.get(payload[1]) if len(payload) > 1 else None
    return cls.__name__ if cls else "?"


def stepped(fn):
    """Marks the machine clean only once the rule ran to its end: teardown checks liveness only
    after a run that broke no other property (its own failure would hide the first)."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        self.clean = False
        fn(self, *args, **kwargs)
        self.clean = True

    return wrapper


class WirePair(RuleBasedStateMachine):
    restarts = True

    def __init__(self):
        super().__init__()
        self.clean = False
        self.log: list[str] = []

    # -- the world -------------------------------------------------------------------------
    @initialize(phase=st.sampled_from(["boot", "rekey"]))
    @stepped
    def start(self, phase="boot"):
        """Both agents just booted; or (rekey) they talked over a healthy wire until A started
        rekeying, its hello still queued."""
        self.rand = Counter(b"wire properties")
        self.realm = Realm.init(SQLiteRegistry(":memory:"), self.rand(32), "example.net", T0, POLICY, random=self.rand)
        self.service = self.realm.service("radius-a")
        self.timers = Timers()
        self.now = float(T0)
        self.clients = {dev: make_device(self.realm, dev) for dev in (A, B)}
        for client in self.clients.values():
            admit(self.service, client, self.rand)
        self.nodes: dict[str, Node] = {}
        self.wire: deque = deque()  # (frame number, from, to, payload)
        self.numbers = iter(range(1, 1 << 30))
        self.sent: dict[tuple[str, str], dict[bytes, tuple[bytes, int]]] = {(A, B): {}, (B, A): {}}
        self.delivered: dict[tuple[str, str], list[bytes]] = {(A, B): [], (B, A): []}
        self.held: dict[str, set[bytes]] = {A: set(), B: set()}  # session ids this incarnation opened records of
        self.held_before: dict[str, set[bytes]] = {A: set(), B: set()}  # ... earlier incarnations
        self.payloads = iter(range(1 << 30))
        for dev in (A, B):
            self.boot(dev)
        if phase == "rekey":
            self.flush()
            self.until_rekey()

    def boot(self, dev: str) -> None:
        self.nodes[dev] = Node(self.clients[dev], self.rand, self.timers, mac=MACS[dev])
        self.feed(dev, LinkUp())

    def note(self, text: str) -> None:
        self.log.append(f"{self.now - T0:7.2f} {text}")

    def fail(self, why: str) -> None:
        raise AssertionError(why + "\n--- event log ---\n" + "\n".join(self.log))

    def feed(self, dev: str, event) -> None:
        """One event into a node, and everything that follows from it at once (admission and the
        realm answer immediately); frames go onto the wire."""
        work = deque([event])
        while work:
            out = self.nodes[dev].handle(work.popleft(), self.now)
            for a in out:
                if isinstance(a, StartAdmission):
                    work.append(PortAuthorized(a.method))
                elif isinstance(a, RadiusRequest):
                    try:
                        work.append(RadiusAnswer(a.op_id, self.service.handle(a.build("radius-a"), self.now)))
                    except E.TesseraError as exc:
                        self.note(f"{dev}: realm refuses {a.operation}: {exc.reason}")
                        work.append(RadiusFailed(a.op_id, exc.reason, self.service.error_reply(exc, self.now)))
                elif isinstance(a, SendFrame):
                    self.queue(dev, a)
                elif isinstance(a, Deliver):
                    self.delivery(dev, a)
                elif isinstance(a, Log):
                    self.note(f"{dev}: [{a.event}] {a.text}")
        self.track()

    def queue(self, dev: str, a: SendFrame) -> None:
        if a.dst not in (BROADCAST, MACS[OTHER[dev]]):
            self.note(f"{dev}: {kind(a.payload)} to {a.dst} goes nowhere")
            return
        n = next(self.numbers)
        self.wire.append((n, dev, OTHER[dev], a.payload))
        self.note(f"{dev}→{OTHER[dev]} #{n} {kind(a.payload)} queued")

    def delivery(self, dev: str, a: Deliver) -> None:
        direction = (a.peer, dev)
        self.note(f"{dev}: delivered {a.data!r} from {a.peer}")
        if a.peer != OTHER[dev] or a.data not in self.sent[direction]:
            self.fail(f"{dev} delivered {a.data!r} as from {a.peer}: never sent that way")
        if a.data in self.delivered[direction]:
            sid, seq = self.sent[direction][a.data]
            self.fail(f"{dev} delivered {a.data!r} (session {sid.hex()}, seq {seq}) twice")
        self.delivered[direction].append(a.data)

    def track(self) -> None:
        for dev, node in self.nodes.items():
            self.held[dev] |= set(node.by_id)

    def tick(self) -> None:
        self.now += TICK
        for dev in (A, B):
            self.feed(dev, None)

    def deliver(self, index: int) -> None:
        n, src, dst, payload = self.wire[index]
        del self.wire[index]
        self.note(f"{src}→{dst} #{n} {kind(payload)} delivered")
        self.feed(dst, FrameReceived(MACS[src], payload))

    def session_of(self, dev: str) -> bytes | None:
        s = self.nodes[dev].sessions.get(OTHER[dev])
        return s.channel.session_id if s is not None else None

    # -- the wire --------------------------------------------------------------------------
    @precondition(lambda self: self.wire)
    @rule()
    @stepped
    def deliver_next(self):
        self.deliver(0)

    @precondition(lambda self: self.wire)
    @rule(i=st.integers(0, 63))
    @stepped
    def deliver_any(self, i):
        self.deliver(i % len(self.wire))

    @precondition(lambda self: self.wire)
    @rule(i=st.integers(0, 63), j=st.integers(0, 63))
    @stepped
    def duplicate(self, i, j):
        n, src, dst, payload = self.wire[i % len(self.wire)]
        copy = next(self.numbers)
        self.wire.insert(j % (len(self.wire) + 1), (copy, src, dst, payload))
        self.note(f"{src}→{dst} #{n} {kind(payload)} duplicated as #{copy}")

    @precondition(lambda self: self.wire)
    @rule(i=st.integers(0, 63))
    @stepped
    def drop(self, i):
        n, src, dst, payload = self.wire[i % len(self.wire)]
        del self.wire[i % len(self.wire)]
        self.note(f"{src}→{dst} #{n} {kind(payload)} lost")

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0]))
    @stepped
    def wait(self, seconds):
        """Time passes with nothing on the wire arriving (ticks every 0.25 s, as an agent ticks)."""
        for _ in range(int(seconds / TICK)):
            self.tick()

    @rule(seconds=st.sampled_from([2.0, 5.0, 12.0, 20.0]))
    @stepped
    def outage(self, seconds):
        """A burst of loss: every frame queued or sent meanwhile is lost (ticks every 0.25 s)."""
        self.note(f"-- {seconds:.0f} s of outage --")
        self.lose_all()
        for _ in range(int(seconds / TICK)):
            self.tick()
            self.lose_all()

    def lose_all(self) -> None:
        if self.wire:
            self.note("lost: " + ", ".join(f"#{n} {kind(payload)}" for n, _, _, payload in self.wire))
            self.wire.clear()

    @rule(seconds=st.sampled_from([2.0, 10.0, 30.0, 60.0]))
    @stepped
    def run_quietly(self, seconds):
        """A stretch of a healthy wire: every frame arrives at once. Brings rekeys within reach."""
        self.note(f"-- {seconds:.0f} s of a healthy wire --")
        self.flush()
        for _ in range(int(seconds / TICK)):
            self.tick()
            self.flush()

    @precondition(lambda self: B in self.nodes[A].sessions and B not in self.nodes[A].initiating)
    @rule()
    @stepped
    def until_rekey(self):
        """A healthy wire until A starts rekeying its session with B; its hello stays queued, so
        the chaos that follows happens around the rekey."""
        self.note("-- a healthy wire until A rekeys --")
        self.flush()
        while B in self.nodes[A].sessions and B not in self.nodes[A].initiating:
            self.tick()
            if B not in self.nodes[A].initiating:
                self.flush()

    def flush(self) -> None:
        handled = 0
        while self.wire:
            handled += 1  # nodes that answer each other for ever fail here instead of hanging
            if handled > 10_000:
                self.fail("no quiet moment: the nodes keep answering each other")
            self.deliver(0)

    # -- the agents ------------------------------------------------------------------------
    @precondition(lambda self: self.restarts)
    @rule(dev=st.sampled_from([A, B]), how=st.sampled_from(["restart", "flap"]))
    @stepped
    def restart(self, dev, how):
        """A restarted agent: a new Node around the saved DeviceClient (tickets kept), or the
        link going down and up under the same Node. Either way every session key is gone."""
        self.held_before[dev] |= self.held[dev]
        self.held[dev] = set()
        self.note(f"== {dev}: {'agent restarts' if how == 'restart' else 'link flaps'} ==")
        if how == "restart":
            self.boot(dev)
        else:
            self.feed(dev, LinkDown())
            self.feed(dev, LinkUp())

    @rule(dev=st.sampled_from([A, B]))
    @stepped
    def send(self, dev):
        self.send_data(dev)

    def send_data(self, dev: str) -> bool:
        peer, node = OTHER[dev], self.nodes[dev]
        data = b"%s to %s #%d" % (dev.encode(), peer.encode(), next(self.payloads))
        try:
            out = node.send(peer, data, self.now)
        except E.StateError:
            return False
        [frame] = out
        _, mtype, sid, seq = RECORD_HEADER.unpack_from(frame.payload)
        assert mtype == DATA_TYPE
        self.sent[(dev, peer)][data] = (sid, seq)
        self.note(f"{dev}: sends {data!r} under session {sid.hex()} seq {seq}")
        if sid not in self.held[peer] | self.held_before[peer]:
            self.fail(f"{dev} sends under session {sid.hex()}, which {peer} never held")
        if dev == A and sid not in self.nodes[B].by_id and sid not in self.held_before[B]:
            self.fail(f"A sends under session {sid.hex()}, which B dropped (B holds "
                      f"{sorted(sid.hex() for sid in self.nodes[B].by_id)})")
        self.queue(dev, frame)
        return True

    # -- liveness --------------------------------------------------------------------------
    def teardown(self):
        if self.clean:
            self.settle()

    def settle(self) -> None:
        """No more loss or restarts: within one handshake timeout, one retry back-off (A's
        next one, from where its back-off for B stands) and one announce period (plus the
        timers' granularity: a neighbour scan and a tick), both hold the same session, and data
        flows both ways exactly once."""
        t = self.timers
        _, backoff = self.nodes[A].peer_retry.get(B, (0.0, t.retry_min / 2))
        bound = t.handshake_timeout + min(backoff * 2, t.retry_max) + t.announce_every + t.scan_every + TICK
        start = self.now
        self.note(f"-- settle: no more loss or restarts, at most {bound:.1f} s --")
        self.flush()
        while not (self.session_of(A) is not None and self.session_of(A) == self.session_of(B)):
            if self.now - start >= bound:
                sa, sb = self.session_of(A), self.session_of(B)
                self.fail(f"no common session {bound:.1f} s after the chaos stopped: A holds "
                          f"{sa.hex() if sa else None}, B holds {sb.hex() if sb else None}; A's handshakes "
                          f"{sorted(self.nodes[A].initiating)}, B's {sorted(k[0] for k in self.nodes[B].responding)}")
            self.tick()
            self.flush()
        self.note(f"-- common session {self.session_of(A).hex()} after {self.now - start:.2f} s --")
        for dev in (A, B):
            before = list(self.delivered[(dev, OTHER[dev])])
            if not self.send_data(dev):
                self.fail(f"{dev} holds a session but cannot send")
            data = list(self.sent[(dev, OTHER[dev])])[-1]
            self.flush()
            got = self.delivered[(dev, OTHER[dev])][len(before):]
            if got != [data]:
                self.fail(f"{dev}'s {data!r} arrived as {got!r} over a healthy wire")


class WirePairWithoutRestarts(WirePair):
    restarts = False


SETTINGS = settings(max_examples=400, stateful_step_count=40)  # about 10 s each on one core


def test_wire_loss_duplication_and_reordering_end_with_the_pair_talking():
    run_state_machine_as_test(WirePairWithoutRestarts, settings=SETTINGS)


def test_wire_restarts_loss_and_reordering_end_with_the_pair_talking():
    run_state_machine_as_test(WirePair, settings=SETTINGS)


def test_wire_rekey_whose_confirms_are_all_lost_keeps_a_to_b_flowing():
    """The example an unseeded search of this machine found while B dropped the old key a fixed
    15 s after its rekey: A, which never got a confirm, still sent under it. Deeper than the
    seeded search in CI reaches, so it is kept here."""
    run = WirePairWithoutRestarts()
    run.start(phase="rekey")
    for _ in range(3):  # hello, PeerTicket, PeerFinished: B holds the new key
        run.deliver_next()
    run.outage(seconds=20.0)  # every confirm and every retried hello lost; the old key has 10 s left
    assert run.session_of(A) != run.session_of(B), "A took a key whose confirm it never saw"
    run.send(dev=A)
    run.teardown()
