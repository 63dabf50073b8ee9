"""The device agent's brain, sans-I/O: link events, port admission, RADIUS answers, frames and
timer ticks go in; actions come out (start 802.1X, ask the realm, send a frame, deliver data).

    event                         what the node does
    LinkUp                        port ADMITTING: StartAdmission (EAP-TLS with the device
                                  certificate before registration, EAP-PWD with the LLK after)
    PortAuthorized                port UP: register / authenticate / renew as due, then announce;
                                  if no request since has been answered by the realm (nor refused:
                                  a refusal is an answer) and some went unanswered admission_lost
                                  after the EAP-Success, the switch is taken not to forward for us
                                  (it dropped the station after its EAP-Success) and 802.1X starts
                                  over, the window doubling each time until the realm answers
    IdentityRequested             the switch asked for our identity: it relays to RADIUS now; until
                                  a method is proposed the RADIUS path is silent and the node waits
                                  admission_silent_timeout without restarting EAP, so the switch
                                  can fail over to its next server (below)
    MethodProposed                the server answered (its first EAP method request came through
                                  RADIUS): from then on no EAP-Success within admission_timeout
                                  counts as refused, as does no IdentityRequested within it
    EapProgressed                 a later step of the method came through (the server's certificate,
                                  say): the admission_timeout runs again from here, so a slow but
                                  moving EAP conversation is not aborted (each restart is an
                                  EAPOL-Start that aborts the switch's conversation and counts
                                  towards its reAuthMax)
    PortRejected                  EAP-PWD refused → fall back to EAP-TLS (refused before its first
                                  method request, the first time since link-up: EAP-PWD once more;
                                  _rejected says why); EAP-TLS refused → stay closed and try again
                                  after a back-off
    RadiusAnswer / RadiusFailed   feed the DeviceClient or the peer handshake; a failure backs off
                                  (clock-skew: adopt the server's time and retry at once, once;
                                  superseded / not-registered: the DRT is dead, register afresh;
                                  both only when the realm signed the error over this request:
                                  docs/layouts.md#signederror)
    FrameReceived                 PeerAnnounce → a hint: the lower device id starts a handshake;
                                  PeerHello → ask the realm for a session key (rate-limited; a
                                  repeat gets the PeerTicket again); PeerTicket → PeerFinished;
                                  PeerFinished → established, PeerConfirm; PeerConfirm (or a
                                  record under the new key) → established; PeerData → open and
                                  deliver; PeerFrame → open, check and DeliverFrame to the tap
                                  (tessera.tunnel; the adapter's fast path calls the tunnel
                                  directly, without a tick per frame); ErrorMessage → counted,
                                  nothing else (unauthenticated)
    LinkDown                      drop every session and handshake, port DOWN
    tick (every call)             renew / re-register before expiry, announce, poll the realm's
                                  revocation list, resend unanswered hellos and finished frames,
                                  rekey sessions before they end, time out handshakes

The wire between devices (docs: README "An enrolled device on the same segment"): frames prove
nothing until a handshake's MACs verify, so no unauthenticated frame ends a session or moves it;
each side's Ethernet address is inside the authenticated handshake and a session's records go
only there; every table a frame can grow is bounded and a frame's cost does not depend on what
the tables hold (tessera/limits.py); a hello costs the realm a request only within per-source,
per-initiator and total rates.

Actions that need the RADIUS client carry a `build(server_id)` callable: the request is built
per server, because each proof names the server it is addressed to. The adapter calls it under
the same lock as `handle`. Neither keys nor tickets appear in `Log` actions or `status()`.

The clock offset is bounded by the time it leads to, not by its size: a signed clock-skew's
server time is adopted only within [EARLIEST_TIME, LATEST_TIME) = the years 2020-2099. A
device without a real-time clock boots in 1970 (or at its firmware's build date) and must
adopt an offset of decades: that is what clock-skew recovery is for, so a bound on the offset
itself (say ±10 years) would break the very devices it serves. A server time outside those
years means the realm's clock is broken (a signed time cannot be forged); adopting it would
put every later request — and every lifetime added to it — out of step with the rest of the
realm, or past what a u64 carries (2^64-1 once made every request build fail). Not adopted,
it is a plain failure with a back-off; the device keeps its clock and tries again.
The realm's signed revocation list (it answers our poll's nonce) is the other source of its
time: a clock more than CLOCK_SLACK off its `issued_at` is moved there, within the same years,
so that a clock that fell behind does not wait for its TGT to run out by that clock. When this
node's time jumps (an offset adopted, or the host's clock set back), its own deadlines move with
it (`_rebase`): what was due in 5 s stays due in 5 s.

A silent RADIUS path is not a refusal. The authenticator (hostapd 2.10, src/radius/radius_client.c)
moves to its next RADIUS server only when an Access-Request sent at 0, 3, 9 and 21 s is due again
unanswered: 45 s after it was first sent. It forgets that request when the station is removed,
and removes the station when a third EAP start in a row finds no answer (AUTH_PAE reAuthMax = 2,
src/eapol_auth/eapol_auth_sm.c); it starts over once itself after 30 s (serverTimeout). So a
supplicant that restarts EAP while the server is silent -- even once, as an EAP-PWD → EAP-TLS
fall-back would -- keeps the port on the dead server. Once the switch asked for the identity, the
node therefore restarts an admission that no server answers only after admission_silent_timeout
(55 s: after the 45 s failover and the exchange with the next server, before hostapd's own second
start at 60 s), and with the same method.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

from . import message as m
from .device import DeviceClient, State
from .errors import (ClockSkewError, MalformedError, NotRegisteredError, RevokedError, StateError, SupersededError,
                     TesseraError, UnknownDeviceError, WrongRealmError)
from .limits import Lru, RateLimit
from .identity import check_device_id
from .peer import NO_HW, Channel, PeerInitiator, PeerResponder, PeerState

BROADCAST = "ff:ff:ff:ff:ff:ff"
EARLIEST_TIME = 1_577_836_800  # 2020-01-01T00:00:00Z: a realm clock before this is broken
LATEST_TIME = 4_102_444_800  # 2100-01-01T00:00:00Z: likewise after it
CLOCK_SLACK = 302  # s: the realm's usual skew (300) and 2 s for the list's whole seconds and the round trip:
# a clock the realm accepts is left alone, as by a clock-skew; one it would refuse moves


# -- events ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinkUp:
    pass


@dataclass(frozen=True)
class LinkDown:
    pass


@dataclass(frozen=True)
class PortAuthorized:
    method: str


@dataclass(frozen=True)
class IdentityRequested:
    """The authenticator sent its EAP-Request/Identity (it answers an EAPOL-Start by itself)."""


@dataclass(frozen=True)
class MethodProposed:
    """The authentication server's first EAP method request reached the supplicant (only the
    server proposes a method: the authenticator itself asks only for the identity)."""
    method: str = ""


@dataclass(frozen=True)
class EapProgressed:
    """A later step of the EAP method reached the supplicant (it received and took another of
    the server's requests: wpa_supplicant's CTRL-EVENT-EAP-METHOD, -PEER-CERT, -STATUS...)."""


@dataclass(frozen=True)
class PortRejected:
    method: str
    reason: str = ""


@dataclass(frozen=True)
class RadiusAnswer:
    op_id: int
    reply: bytes


@dataclass(frozen=True)
class RadiusFailed:
    op_id: int
    reason: str
    reply: bytes = b""  # the ErrorMessage of an Access-Reject, if any


@dataclass(frozen=True)
class FrameReceived:
    src: str
    payload: bytes


Event = (LinkUp | LinkDown | PortAuthorized | IdentityRequested | MethodProposed | EapProgressed | PortRejected
         | RadiusAnswer | RadiusFailed | FrameReceived)


# -- actions -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StartAdmission:
    method: str  # "tls" or "pwd"
    identity: str
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RadiusRequest:
    op_id: int
    operation: str
    build: Callable[[str], bytes] = field(repr=False)


@dataclass(frozen=True)
class SendFrame:
    dst: str
    payload: bytes = field(repr=False)


@dataclass(frozen=True)
class Deliver:
    peer: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class DeliverFrame:
    """An inner Ethernet frame from `peer`'s PeerFrame record, for the tap (tessera.tunnel)."""
    peer: str
    frame: bytes = field(repr=False)


@dataclass(frozen=True)
class SaveState:
    pass


@dataclass(frozen=True)
class Log:
    event: str
    text: str


@dataclass(frozen=True)
class Milestone:
    """A step on the way from link-up to peered, for a timeline (the agent's event stream):
    "link-up", "authorized" (EAP success), "registered", "ticketed", "peered" (a session with
    `peer` established, not a rekey) and "record" (the first record opened in a session with
    `peer`). No key, ticket or session id."""
    kind: str
    peer: str | None = None


Action = StartAdmission | RadiusRequest | SendFrame | Deliver | DeliverFrame | SaveState | Log | Milestone


class Port(enum.Enum):
    DOWN = "down"
    ADMITTING = "admitting"
    UP = "up"
    BLOCKED = "blocked"


@dataclass
class Timers:
    announce_every: float = 2.0
    admission_timeout: float = 3.0  # no EAP-Success this long after the server answered counts as refused
    # (a supplicant that finished its TLS handshake ignores the EAP-Failure of a certificate check that follows
    # it), and so does no identity request from the switch this long after the start
    admission_silent_timeout: float = 55.0  # the switch relays, the server never answers: restart EAP only
    # after this long (hostapd 2.10 fails over 45 s after the first Access-Request; the module docstring)
    start_resend: float = 0.5  # no EAP request from the switch this long after our EAPOL-Start: send it
    # again (doubling) until admission_timeout; a Start sent as the switch's port comes up can be lost,
    # and nothing is in progress to abort yet
    admission_lost: float = 10.0  # admitted, but the realm answered nothing this long after the EAP-Success
    # while requests went unanswered: the port is taken as shut, 802.1X starts over (well past `settle`)
    handshake_timeout: float = 10.0
    resend_every: float = 1.0  # a hello or PeerFinished unanswered this long is sent again
    retry_min: float = 1.0
    retry_max: float = 30.0
    settle: float = 5.0  # a switch may forward a moment after its EAP-Success (it opens the port on its own
    settle_retry: float = 0.05  # event): an unanswered request this soon after is retried in ~this, doubling
    rekey_before: float = 60.0  # start a new handshake this long (at most a quarter of its life) before a key ends
    old_session_grace: float = 5.0  # keep the previous key for frames in flight after a rekey (plus a handshake's time)
    revocation_poll: float = 30.0  # ask the realm which devices it revoked this often (docs: README, Security)
    max_neighbours: int = 1024  # announced neighbours remembered (least recently heard forgotten first)
    scan_every: float = 0.5  # how often a timer tick looks through the neighbours for handshakes to start
    sweep_every: float = 0.05  # how often the handshakes, sessions and retiring keys are checked for what is due
    max_handshakes: int = 64  # first handshakes we start at once (rekeys of sessions are not counted)
    max_responding: int = 64  # hellos answered at once: each is a RADIUS request and an agent thread
    hello_rate: float = 0.5  # new hellos per second per source MAC and per initiator ...
    hello_burst: float = 4.0  # ... after a burst of this many
    hello_rate_all: float = 20.0  # new hellos per second in all (after a burst of max_responding)


MACS_PER_NEIGHBOUR = 4  # MACs that recently announced one device id; a hello goes to each


@dataclass
class Neighbour:
    device_id: str
    macs: Lru  # MAC → (the epoch last announced from it, when), most recent last
    last_seen: float


@dataclass
class Session:
    channel: Channel
    established_at: float
    mac: str  # where its authenticated handshake came from: the only MAC its records go to
    initiator: bool = False
    peer_epoch: int = 0  # the peer's announced epoch when it was made (0: not heard yet)
    rekey_wanted: bool = False  # a new handshake is due (the peer announced a new epoch): retried until one succeeds
    deadline: float | None = None  # ended then unless a new handshake replaced it (a cut revocation list)
    retire_on_first: bool = False  # older keys with this peer are kept until its first record under this one
    confirmed: bool = False  # both sides hold the key: we send under it
    frames_out: int = 0
    frames_in: int = 0
    dropped: int = 0


@dataclass
class Handshake:
    """Ours, as the initiator: hello sent (pending None) or PeerTicket taken (pending: the new
    session, opening the peer's records, not yet sent under until confirmed)."""

    role: PeerInitiator
    started: float
    resend_at: float
    first: bool  # no session with that peer: counts against max_handshakes
    pending: Session | None = None
    resends: int = 0  # resent 1, 2, 4 ... s apart


@dataclass
class Responding:
    role: PeerResponder
    mac: str  # A's MAC from its hello (the realm checks the authenticator over it), else the frame's source
    started: float
    resend_at: float = 0.0
    asking: bool = True  # our session request to the realm is out


def hw_of(mac: str | None) -> bytes:
    """'02:00:5e:10:00:01' → 6 bytes (None → six zero bytes: no MAC bound)."""
    if mac is None:
        return NO_HW
    hw = bytes.fromhex(mac.replace(":", ""))
    if len(hw) != 6:
        raise ValueError(f"bad MAC {mac!r}")
    return hw


def mac_of(hw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in hw)


class Node:
    def __init__(self, client: DeviceClient, random: Callable[[int], bytes], timers: Timers = Timers(),
                 mac: str | None = None):
        """`mac`: this port's Ethernet address, bound into our hellos and tickets (the adapter
        sets it once it has opened the port: `node.mac = transport.mac`)."""
        self.client = client
        self.mac = mac
        self.random = random
        self.timers = timers
        self.port = Port.DOWN
        self.method: str | None = None
        self.offset = 0.0  # server time minus our clock, learned from a clock-skew reply
        self.skew_retried = False  # the last answer was a clock-skew, retried at once
        # every table a frame can grow is bounded (tessera/limits.py)
        self.neighbours: Lru[str, Neighbour] = Lru(timers.max_neighbours)
        self.sessions: dict[str, Session] = {}  # by peer: the current (sending) session; only handshakes add
        self.by_id: dict[bytes, tuple[str, Session]] = {}  # every session id that opens records
        self.retiring: dict[bytes, float] = {}  # session id → stop opening its records at
        self.initiating: dict[str, Handshake] = {}  # by peer
        self.responding: Lru[tuple, Responding] = Lru(timers.max_responding)  # (initiator, nonce, digest of the hello)
        self.answered: Lru[tuple[str, bytes], list] = Lru(1024)  # done: [finished, confirm, MAC, resend at]
        self.refused: Lru[tuple, None] = Lru(1024)  # hellos (as `responding` keys) the realm refused or that timed out
        self.peer_retry: Lru[str, tuple[float, float]] = Lru(timers.max_neighbours)  # (not before, back-off)
        self.epoch_rekey: Lru[str, float] = Lru(timers.max_neighbours)  # peer → no epoch-driven rekey before
        self.epoch_rekeys = RateLimit(2.0, 16.0, capacity=1)  # epoch-driven rekeys in all
        self.moved_backoff: Lru[str, tuple[float, float]] = Lru(timers.max_neighbours)  # see _epoch_elsewhere
        self.next_scan = 0.0  # the neighbour scan runs on timer ticks, at most every scan_every
        self.hello_by_source = RateLimit(timers.hello_rate, timers.hello_burst)
        self.hello_by_peer = RateLimit(timers.hello_rate, timers.hello_burst)  # spent only by hellos the realm accepted
        self.hello_all = RateLimit(timers.hello_rate_all, timers.max_responding, capacity=1)
        self.announce_nudge = RateLimit(0.5, 1.0)  # our announce to a sender of records we cannot open (key None: all)
        self.revoked: set[str] = set()  # from the realm's last signed revocation list
        self.next_revocation_poll = 0.0
        self.ops: dict[int, tuple[str, object]] = {}
        self._op_ids = itertools.count(1)
        self.next_announce = 0.0
        self.epoch = 0
        self.retry_at = 0.0
        self.admission_started = 0.0  # when 802.1X started, then when the server first answered
        self.admission_asked = False  # the switch asked for our identity
        self.start_resend_at, self.start_resends = math.inf, 0  # our EAPOL-Start again, while unasked
        self.admission_answered = False  # the server proposed a method
        self.admission_progressed = False  # ... and a later step came (the method's own first request)
        self.pwd_retried = False  # EAP-PWD refused before it began once since link-up: the next refusal falls back
        self.backoff = timers.retry_min
        self.authorized_at = -math.inf  # when the port was last authorized
        self.last_sweep = -math.inf  # when _tick last went through the handshakes and sessions
        self.settle_backoff = timers.settle_retry
        self.realm_heard = False  # the realm answered (or refused) a request since the last EAP-Success
        self.unanswered = 0  # requests since the last EAP-Success that no server answered
        self.lost_after = timers.admission_lost  # doubles on each admission taken as lost
        self.last_t = -math.inf  # this node's time at the last call (see _rebase)
        self.stats = {"frames_dropped": 0, "handshakes_failed": 0, "handshakes_deferred": 0, "hellos_limited": 0}
        self.session_generation = 0  # moves whenever `sessions` changes (tessera.tunnel rebuilds its routes)
        self.tunnel = None  # a tessera.tunnel.Tunnel sets itself here

    @property
    def device_id(self) -> str:
        return self.client.device_id

    # -- entry points ----------------------------------------------------------------------
    def handle(self, event: Event | None, now: float) -> list[Action]:
        """Feed one event (or None for a timer tick) and collect the actions."""
        t = now + self.offset
        if self.last_t - t > 1.0:  # the host's clock was set back: what was due stays due (_rebase)
            self._rebase(t - self.last_t)
        out: list[Action] = []
        if isinstance(event, LinkUp):
            self._link_up(t, out)
        elif isinstance(event, LinkDown):
            self._link_down(out, "carrier lost")
        elif isinstance(event, (PortAuthorized, PortRejected)) and self.port is not Port.ADMITTING:
            out.append(Log("admission", f"late EAP result ignored: the port is {self.port.value}"))
        elif isinstance(event, PortAuthorized):
            self._authorized(event, t, out)
        elif isinstance(event, IdentityRequested):
            self.admission_asked = self.admission_asked or self.port is Port.ADMITTING
        elif isinstance(event, MethodProposed):
            if self.port is Port.ADMITTING and not self.admission_answered:
                self.admission_answered = True  # the refusal clock runs from the server's first answer
                self.admission_started = t
        elif isinstance(event, EapProgressed):
            if self.port is Port.ADMITTING and self.admission_answered:
                self.admission_started = t  # ... and again from each later step: still moving
                self.admission_progressed = True  # the method itself began (EAP-PWD: its first request)
        elif isinstance(event, PortRejected):
            self._rejected(event, t, out)
        elif isinstance(event, (RadiusAnswer, RadiusFailed)):
            self._radius(event, t, out)
        elif isinstance(event, FrameReceived):
            self._frame(event, t, out)
        self.last_t = now + self.offset  # a clock-skew answer may have just moved the offset
        self._tick(self.last_t, out)
        return out

    def send(self, peer: str, data: bytes, now: float) -> list[Action]:
        """Protect application data for a peer (raises StateError if there is no session)."""
        s = self.sessions.get(peer)
        if s is None or s.channel.expired(now + self.offset):
            raise StateError(f"no session with {peer[:64]}")
        s.frames_out += 1
        return [SendFrame(s.mac, s.channel.seal(data))]

    # -- port ------------------------------------------------------------------------------
    def _admission(self, out: list[Action], t: float = 0.0) -> None:
        self.admission_started = t
        self.admission_asked = self.admission_answered = self.admission_progressed = False
        self.start_resend_at, self.start_resends = t + self.timers.start_resend, 0
        if self.client.registration is not None and self.method != "tls-fallback":
            self.method = "pwd"
        else:
            self.method = "tls"
        out.append(self._start_action())

    def _start_action(self) -> StartAdmission:
        if self.method == "pwd":
            return StartAdmission("pwd", self.device_id, self.client.eap_pwd_password())
        return StartAdmission("tls", self.device_id)

    def _link_up(self, t: float, out: list[Action]) -> None:
        self.port = Port.ADMITTING
        self.method = None
        self.pwd_retried = False
        self.epoch = int.from_bytes(self.random(8), "big")
        out.append(Log("link-up", "carrier up: starting 802.1X"))
        out.append(Milestone("link-up"))
        self._admission(out, t)

    def _link_down(self, out: list[Action], why: str) -> None:
        dropped = len(self.sessions) + len(self.initiating) + len(self.responding)
        self.port = Port.DOWN
        self.sessions.clear()
        self.session_generation += 1
        self.by_id.clear()
        self.retiring.clear()
        self.initiating.clear()
        self.responding.clear()
        self.answered.clear()
        self.refused.clear()
        self.neighbours.clear()
        self.peer_retry.clear()
        self.ops = {k: v for k, v in self.ops.items() if v[0] not in ("session",)}
        out.append(Log("link-down", f"{why}: dropped {dropped} session(s)/handshake(s)"))

    def _authorized(self, ev: PortAuthorized, t: float, out: list[Action]) -> None:
        self.port = Port.UP
        self.backoff = self.timers.retry_min
        self.retry_at = 0.0
        self.next_announce = 0.0
        self.authorized_at, self.settle_backoff = t, self.timers.settle_retry
        self.pwd_retried = False
        self.realm_heard, self.unanswered = False, 0
        out.append(Log("admitted", f"port authorized by EAP-{ev.method.upper()}"))
        out.append(Milestone("authorized"))

    def _admission_lost(self, t: float, out: list[Action]) -> None:
        """Admitted, yet nothing reached the realm since: a switch that dropped the station after
        its EAP-Success (hostapd does after reAuthMax restarts, and says nothing to the device)
        forwards nothing for us while we would retry for ever. Not a refusal (a refusal is an
        answer) and not a dead server (the server just let us in; a port that works reaches
        the realm's answers, and one answer ends this for the admission): authenticate again."""
        out.append(Log("admission-lost", f"no answer from the realm {t - self.authorized_at:.0f} s after the "
                       f"EAP-Success ({self.unanswered} request(s) unanswered): the switch seems not to forward "
                       f"for this port; starting 802.1X over"))
        self.lost_after = min(self.lost_after * 2, 8 * self.timers.admission_lost)
        self.port = Port.ADMITTING
        self.method = None
        self._admission(out, t)

    def _rejected(self, ev: PortRejected, t: float, out: list[Action], timed_out: bool = False) -> None:
        if (ev.method == "pwd" and self.method == "pwd" and self.admission_answered and not self.admission_progressed
                and not timed_out and not self.pwd_retried):
            # an EAP-Failure after the server answered, before the method's first request:
            # FreeRADIUS 3.2's rlm_eap_pwd fails about one session in 150 right there ("failed to
            # obtain password element": its hunting and pecking with the session's random token;
            # 2 in 300 measured here), and a realm that refuses the device refuses it there too;
            # one more try tells them apart at the cost of a round trip
            self.pwd_retried = True
            out.append(Log("admission-failed", f"EAP-PWD refused before it began ({ev.reason or 'EAP-Failure'}): "
                                               f"trying EAP-PWD once more, then EAP-TLS"))
            self._admission(out, t)
            return
        if ev.method == "pwd":
            out.append(Log("admission-failed", f"EAP-PWD refused ({ev.reason or 'EAP-Failure'}): trying EAP-TLS"))
            self.method = "tls-fallback"
            self._admission(out, t)
            return
        self.port = Port.BLOCKED
        self.retry_at = t + self.backoff
        self.backoff = min(self.backoff * 2, self.timers.retry_max)
        out.append(Log("admission-failed", f"EAP-TLS refused ({ev.reason or 'EAP-Failure'}): port stays closed, "
                       f"retry in {self.retry_at - t:.0f} s"))

    # -- realm -----------------------------------------------------------------------------
    def _request(self, operation: str, build: Callable[[str], bytes], ctx: object, out: list[Action]) -> None:
        op = next(self._op_ids)
        self.ops[op] = (operation, ctx)
        out.append(RadiusRequest(op, operation, build))

    def _busy(self, operation: str) -> bool:
        return any(kind == operation for kind, _ in self.ops.values())

    def _lifecycle(self, t: float, out: list[Action]) -> None:
        if self.port is not Port.UP or t < self.retry_at or self._busy("register") or self._busy("ticket"):
            return
        due = self.client.next_action(t)
        if due == "register":
            out.append(Log("register", "registering with the realm (signed with the device key)"))
            self._request("register", lambda sid: self.client.register_request(sid, t, self.random(16)), None, out)
        elif due == "authenticate":
            out.append(Log("authenticate", "asking for a TGT (proof of the LLK)"))
            self._request("ticket", lambda sid: self.client.auth_request(sid, t, self.random(16)), None, out)
        elif due == "renew":
            out.append(Log("renew", "renewing the TGT"))
            self._request("ticket", lambda sid: self.client.renew_request(sid, t, self.random(16)), None, out)

    def _radius(self, ev: RadiusAnswer | RadiusFailed, t: float, out: list[Action]) -> None:
        entry = self.ops.pop(ev.op_id, None)
        if entry is None:
            return  # answer to an operation dropped by a link-down
        kind, ctx = entry
        if isinstance(ev, RadiusAnswer) or ev.reply:  # the realm answered: the path through the port works
            self.realm_heard, self.lost_after = True, self.timers.admission_lost
        elif kind in ("register", "ticket"):  # what an admitted device needs first (not a poll that may wait)
            self.unanswered += 1
        try:
            if isinstance(ev, RadiusFailed):
                if ev.reply:  # an Access-Reject with the core's ErrorMessage: raise its error
                    self._feed_reply(kind, ctx, ev.reply, t)
                raise TesseraError(ev.reason)
            self._feed_reply(kind, ctx, ev.reply, t, out)
            self.skew_retried = False
        except ClockSkewError as exc:
            adopted = self._adopt_time(exc, t, out)
            if adopted:
                t = exc.server_time  # from here on, the server's time
            # the first clock-skew is retried at once on the adopted time; another one straight
            # after it (a server whose clock jumps) backs off, and so does one not adopted
            again, self.skew_retried = self.skew_retried, True
            self._failed(kind, ctx, exc, t, out, retry_now=adopted and not again)
        except TesseraError as exc:
            self.skew_retried = False
            self._failed(kind, ctx, exc, t, out, unanswered=isinstance(ev, RadiusFailed) and not ev.reply)

    def _adopt_time(self, exc: ClockSkewError, t: float, out: list[Action]) -> bool:
        """Move the clock to a clock-skew's server time if the realm signed it (the device core
        verified it over this request's nonce) and it lies in [EARLIEST_TIME, LATEST_TIME)."""
        when = exc.server_time
        if not exc.signed or when is None:
            return False  # e.g. a session request's error: unsigned, nobody proved it
        if not EARLIEST_TIME <= when < LATEST_TIME:
            out.append(Log("clock", f"the realm's clock reads {when}, outside the years 2020-2099: not adopted"))
            return False
        if not math.isfinite(when - t):
            out.append(Log("clock", "this device's clock is not a number: the realm's time is not adopted"))
            return False
        off = when - t
        self.offset += off
        self._rebase(off)
        out.append(Log("clock", f"clock off by {off:+.0f} s: using the server's time"))
        return True

    def _feed_reply(self, kind: str, ctx, reply: bytes, t: float, out: list[Action] | None = None) -> None:
        if kind == "register":
            reg = self.client.register_reply(reply, t)
            if out is not None:
                out.append(Log("registered", f"DRT generation {reg.generation}, valid until {reg.not_after:.0f}"))
                out.append(Milestone("registered"))
                out.append(SaveState())
        elif kind == "ticket":
            cred = self.client.ticket_reply(reply, t)
            if out is not None:
                out.append(Log("ticketed", f"TGT valid until {cred.not_after:.0f}"))
                out.append(Milestone("ticketed"))
                out.append(SaveState())
                self.next_announce = self.next_scan = 0.0  # announce, and start with the neighbours heard meanwhile
        elif kind == "session":
            entry = self.responding.get(ctx)
            if entry is None:
                return  # the handshake was dropped meanwhile (link down, timeout)
            entry.asking = False
            ticket = entry.role.receive_session_reply(reply, t, hw_of(self.mac))
            if out is not None:
                self.hello_by_peer.spend(ctx[0], t)  # the realm accepted this initiator's hello
                entry.resend_at = t + self.timers.resend_every / 2
                out.append(SendFrame(entry.mac, ticket))
        elif kind == "revocations":
            listing = self.client.revocation_reply(reply, t)
            if out is not None:
                self._revocations(listing, self._clock_from_list(listing, t, out), out)

    def _clock_from_list(self, listing: m.RevocationList, t: float, out: list[Action]) -> float:
        """The realm's signed revocation list answers our nonce, so its `issued_at` is the
        realm's time now (within a round trip): a clock more than CLOCK_SLACK from it moves there,
        as on a signed clock-skew (within the same years). Without this a clock that fell behind
        would learn of it only when its TGT ran out on that clock, up to a TGT's life later: its
        requests wait for that, and its peers' realm refuses its hellos (to them, unsigned).
        Returns the time from here on."""
        off = listing.issued_at - t
        if not math.isfinite(off) or abs(off) <= CLOCK_SLACK or not EARLIEST_TIME <= listing.issued_at < LATEST_TIME:
            return t
        self.offset += off
        self._rebase(off)
        out.append(Log("clock", f"clock off by {off:+.0f} s from the realm's signed revocation list: "
                                f"using the server's time"))
        return listing.issued_at

    def _rebase(self, step: float) -> None:
        """Move this node's own deadlines by `step`, a jump of its time (an offset adopted, or
        the host's clock set back), so that what was due in 5 s is still due in 5 s: a clock
        moved back by 10 min otherwise froze announces, polls, retries and handshakes for 10
        min. The realm's times (ticket and session lifetimes) do not move, nor do the grace
        periods of retiring keys (they end at most `step` late or early)."""
        if not math.isfinite(step):
            return
        self.next_announce += step
        self.next_scan += step
        self.next_revocation_poll += step
        self.retry_at += step
        self.admission_started += step
        self.start_resend_at += step
        self.authorized_at += step
        self.last_sweep += step
        for hs in self.initiating.values():
            hs.started += step
            hs.resend_at += step
        for entry in self.responding.values():
            entry.started += step
            entry.resend_at += step
        for done in self.answered.values():
            done[3] += step
        moved = {id(s): s for s in [*self.sessions.values(), *(s for _, s in self.by_id.values()),
                                    *(hs.pending for hs in self.initiating.values() if hs.pending is not None)]}
        for s in moved.values():
            s.established_at += step
            if s.deadline is not None:
                s.deadline += step
        for table in (self.peer_retry, self.moved_backoff):
            for key, (not_before, backoff) in table.items():
                table.put(key, (not_before + step, backoff))
        for key, until in self.epoch_rekey.items():
            self.epoch_rekey.put(key, until + step)
        for n in self.neighbours.values():
            n.last_seen += step
            for mac, (epoch, when) in n.macs.items():
                n.macs.put(mac, (epoch, when + step))

    def _failed(self, kind: str, ctx, exc: TesseraError, t: float, out: list[Action], retry_now: bool = False,
                unanswered: bool = False) -> None:
        """`unanswered`: no reply from the realm at all (the path, not a refusal)."""
        if kind in ("register", "ticket"):
            self.client.abandon()
            if unanswered and t - self.authorized_at < self.timers.settle:
                # the switch has not opened the port yet (it acts on its own event after the
                # EAP-Success: an ARP lost, "no route to host"): again soon, jittered so that a
                # switch's worth of devices admitted together do not retry in step
                self.retry_at = t + self.settle_backoff * (0.5 + self.random(1)[0] / 255)
                self.settle_backoff = min(self.settle_backoff * 2, self.timers.retry_min)
            else:
                self.retry_at = t if retry_now else t + self.backoff
                if not retry_now:
                    self.backoff = min(self.backoff * 2, self.timers.retry_max)
            if exc.signed and isinstance(exc, (UnknownDeviceError, RevokedError, SupersededError, NotRegisteredError)):
                # the realm (its signature, over this request) will not talk to us, or our DRT is
                # dead: only a new registration helps. Unsigned, the device core made it a
                # transient BadProofError already; `signed` is checked here too, as the rule
                self.client.registration = self.client.credentials = None
                self.client.state = State.ENROLLED
            out.append(Log(f"{kind}-failed", f"{exc}; retry in {self.retry_at - t:.2g} s"))
        elif kind == "session":
            # no error frame back: its address is the hello's, which the realm just refused, and
            # the initiator changes nothing on an unauthenticated frame anyway (it times out)
            self.responding.pop(ctx, None)
            if not unanswered:  # the realm said no: a repeat of that hello asks it nothing more
                self.refused.put(ctx, None)
            # unanswered (the path to the realm was busy or down; it said nothing): the
            # initiator's resend of the hello asks again, within the same hello rates
            self.stats["handshakes_failed"] += 1
            out.append(Log("session-failed", f"with {ctx[0]}: {exc}"))
        elif kind == "revocations":
            out.append(Log("revocations-failed", f"{exc}; next try in {self.timers.revocation_poll:.0f} s"))

    # -- frames ----------------------------------------------------------------------------
    def _frame(self, ev: FrameReceived, t: float, out: list[Action]) -> None:
        if self.port is not Port.UP:
            return
        payload = ev.payload
        if len(payload) >= 2 and payload[1] == m.PeerData.TYPE:
            self._data(ev.src, payload, t, out)
            return
        if len(payload) >= 2 and payload[1] == m.PeerFrame.TYPE:
            self._peer_frame(ev.src, payload, t, out)
            return
        try:
            msg = m.decode(payload, (m.PeerAnnounce, m.PeerHello, m.PeerTicket, m.PeerFinished, m.PeerConfirm,
                                     m.ErrorMessage))
            if not isinstance(msg, m.ErrorMessage):  # ids go into logs and tables: only well-formed ones
                if msg.realm != self.client.realm:
                    raise WrongRealmError("a frame of another realm")
                for name in ("device_id", "initiator", "responder"):
                    if hasattr(msg, name):
                        check_device_id(getattr(msg, name))
            if isinstance(msg, m.PeerAnnounce):
                self._announce_from(msg, ev.src, t, out)
            elif isinstance(msg, m.PeerHello):
                self._hello(msg, ev.src, payload, t, out)
            elif isinstance(msg, m.PeerTicket):
                self._peer_ticket(msg, ev.src, payload, t, out)
            elif isinstance(msg, m.PeerFinished):
                self._peer_finished(msg, ev.src, payload, t, out)
            elif isinstance(msg, m.PeerConfirm):
                self._peer_confirm(msg, ev.src, payload, t, out)
            else:
                self._peer_error(msg, ev.src, t, out)
        except TesseraError as exc:
            self._drop(out, f"from {ev.src}: {exc.reason}")

    def _drop(self, out: list[Action], why: str) -> None:
        """Count a refused frame; log the first few and then every thousandth (a flood of
        forged frames must not become a flood of log lines)."""
        self.stats["frames_dropped"] += 1
        n = self.stats["frames_dropped"]
        if n <= 20 or n % 1000 == 0:
            out.append(Log("frame-rejected", f"{why} ({n} frames dropped so far)"))

    def _announce_from(self, msg: m.PeerAnnounce, src: str, t: float, out: list[Action]) -> None:
        """A hint, never authenticated: it may add a neighbour (bounded, least recently heard
        forgotten first) and start a handshake, never end or redirect a session."""
        if msg.device_id == self.device_id or msg.device_id in self.revoked:
            return
        peer = msg.device_id
        known = self.neighbours.get(peer)
        if known is None:
            known = Neighbour(peer, Lru(MACS_PER_NEIGHBOUR), t)
            self.neighbours.put(peer, known)
            if self.neighbours.evicted == 0:  # under a flood of strangers, one line per stranger is the flood
                out.append(Log("neighbour", f"{peer} at {src}"))
        known.last_seen = t
        known.macs.put(src, (msg.epoch, t))
        s = self.sessions.get(peer)
        if s is None:
            if not self._initiate(peer, t, out) and peer not in self.initiating:
                self.stats["handshakes_deferred"] += 1
        elif s.peer_epoch == 0 and src == s.mac:
            s.peer_epoch = msg.epoch
        elif s.peer_epoch != msg.epoch:
            if src == s.mac:  # said from where the session is (the switch binds MACs to ports)
                self._peer_restarted(peer, t, out)
            else:
                self._epoch_elsewhere(peer, s, t, out)

    def _peer_restarted(self, peer: str, t: float, out: list[Action]) -> None:
        """A new epoch from the MAC of our session with `peer`: it may have lost its sessions.
        Keep ours (the announce proves nothing) and, if ours to start, run a new handshake,
        at most once per handshake timeout per peer and 2 per second in all (each costs the
        realm a request; one not started now is tried at the peer's next announce, since the
        session's epoch moves only with a new session)."""
        if self.device_id > peer or t < self.epoch_rekey.get(peer, 0.0):
            return
        if peer in self.initiating and not self.initiating[peer].first:
            return  # a rekey is running already
        if not self.epoch_rekeys.allow(None, t):
            return
        self.epoch_rekey.put(peer, t + self.timers.handshake_timeout)
        self._abandon(peer, t)
        self.peer_retry.pop(peer, None)
        self.sessions[peer].rekey_wanted = True  # retried with back-off until a new session stands
        out.append(Log("peer-restarted", f"{peer} announces a new epoch: new handshake"))
        self._initiate(peer, t, out, rekey=True)

    def _epoch_elsewhere(self, peer: str, s: Session, t: float, out: list[Action]) -> None:
        """A new epoch for `peer` from a MAC that is not its session's: the peer may have
        restarted on another port or address -- or someone else says so. Rekey (only the real
        peer can answer, and the new session's MAC is the one its handshake binds), but with a
        back-off per peer that doubles from one handshake timeout to 10 min and starts over
        only when a handshake really moved the session: what a stranger can make a pair cost
        the realm decays to one request per 10 min."""
        not_before, interval = self.moved_backoff.get(peer) or (0.0, self.timers.handshake_timeout / 2)
        n = self.neighbours.get(peer)
        heard = n.macs.get(s.mac) if n is not None else None
        quiet = heard is None or t - heard[1] > 3 * self.timers.announce_every  # its session MAC went silent:
        # a real move (on a switch that binds MACs to ports a stranger cannot keep B's MAC talking)
        if self.device_id > peer or (t < not_before and not quiet):
            return
        interval = min(interval * 2, 600.0)
        self.moved_backoff.put(peer, (t + interval, interval))
        self._peer_restarted(peer, t, out)

    def _targets(self, peer: str) -> list[str]:
        """Where a hello for `peer` goes: the MAC its current session came from and every MAC
        that recently announced its id (at most MACS_PER_NEIGHBOUR): an announce from a wrong
        MAC adds a copy, it cannot divert the one that reaches the peer."""
        macs = []
        s = self.sessions.get(peer)
        if s is not None:
            macs.append(s.mac)
        n = self.neighbours.get(peer)
        if n is not None:
            macs += [mac for mac in reversed(list(n.macs)) if mac not in macs]
        return macs

    def _initiate(self, peer: str, t: float, out: list[Action], rekey: bool = False) -> bool:
        """Start our handshake with `peer` if it is ours to start and allowed now: True if started."""
        if self.device_id > peer or peer in self.initiating or peer in self.revoked:
            return False
        if self.client.credentials is None or t >= self.client.credentials.not_after:
            return False
        if t < self.peer_retry.get(peer, (0.0, 0.0))[0]:
            return False
        first = peer not in self.sessions and not rekey
        if first and self._first_handshakes() >= self.timers.max_handshakes:
            return False  # a flood of announced strangers waits; rekeys of real sessions never do
        targets = self._targets(peer)
        if not targets:
            return False
        role = PeerInitiator(self.client, peer)
        hello = role.hello(t, self.random(16), hw_of(self.mac))
        self.initiating[peer] = Handshake(role, t, t + self.timers.resend_every, first)
        out.append(Log("peer-hello", f"→ {peer}: TGT + authenticator naming {peer}"))
        out.extend(SendFrame(mac, hello) for mac in targets)
        return True

    def _first_handshakes(self) -> int:
        return sum(1 for h in self.initiating.values() if h.first)  # ≤ max_handshakes + rekeys of real sessions

    def _abandon(self, peer: str, t: float) -> None:
        """Drop our handshake with `peer`; keys it already holds still open records for a grace."""
        hs = self.initiating.pop(peer, None)
        if hs is not None and hs.pending is not None:
            self.retiring[hs.pending.channel.session_id] = t + self.timers.handshake_timeout

    def _hello(self, msg: m.PeerHello, src: str, raw: bytes, t: float, out: list[Action]) -> None:
        """A's hello. A repeat gets the PeerTicket again (or nothing yet): never a second
        request to the realm. A new one is rate-limited per source MAC and per claimed
        initiator, and the number open at once is capped: each costs a RADIUS request."""
        # open and refused hellos are known by their bytes as well: an altered copy (which the
        # realm refuses) must neither answer for the real one nor mark it refused
        key = (msg.initiator, msg.nonce, hashlib.sha256(raw).digest()[:16])
        entry = self.responding.get(key)
        if entry is not None:
            if entry.role.state is PeerState.TICKET_SENT and t >= entry.resend_at:
                entry.resend_at = t + self.timers.resend_every / 2
                out.append(SendFrame(entry.mac, entry.role.ticket_bytes))  # to A's MAC, whoever repeated it
            return
        if key[:2] in self.answered or key in self.refused:
            return  # that handshake ended (its PeerFinished came) or failed: nothing more to say
        if msg.initiator in self.revoked:
            raise RevokedError(f"hello from {msg.initiator}, which the realm revoked")
        role = PeerResponder(self.client)
        role.receive_hello(raw, t)  # realm, names us, timestamp within skew: cheap checks first
        if len(self.responding) >= self.timers.max_responding:
            self.stats["hellos_limited"] += 1
            raise StateError(f"{self.timers.max_responding} handshakes open: hello from {msg.initiator} waits for its resend")
        self._check_hw(msg.initiator_hw)
        s = self.sessions.get(msg.initiator)
        rekey = s is not None and s.mac == src  # from our session's (authenticated) MAC: not in the total
        if not rekey and sum(1 for k in self.responding if k[0] == msg.initiator) >= 2:
            self.stats["hellos_limited"] += 1
            raise StateError(f"two handshakes with {msg.initiator} open already")
        # the initiator's allowance is checked here and spent only when the realm accepts its
        # hello (a forgery naming A cannot use up A's); forgeries spend their source's and the total
        if not self.hello_by_peer.available(msg.initiator, t):
            self.stats["hellos_limited"] += 1
            raise StateError(f"hellos from {msg.initiator} over their rate")
        if not self.hello_by_source.allow(src, t) or not (rekey or self.hello_all.allow(None, t)):
            self.stats["hellos_limited"] += 1
            raise StateError(f"hellos from {src} (or in all) over their rate")
        self.responding.put(key, Responding(role, mac_of(msg.initiator_hw) if any(msg.initiator_hw) else src, t))
        out.append(Log("peer-hello", f"← {msg.initiator}: asking the realm for a session key"))
        self._request("session", lambda sid: role.session_request(sid, t, self.random(16)), key, out)

    def _peer_ticket(self, msg: m.PeerTicket, src: str, raw: bytes, t: float, out: list[Action]) -> None:
        hs = self.initiating.get(msg.responder)
        if hs is None:
            raise StateError(f"no handshake with {msg.responder}")
        role = hs.role
        if role.state is PeerState.CONFIRMING:
            if raw == role.ticket_bytes and t >= hs.resend_at:  # B resent it: our finished was lost
                hs.resend_at = t + self.timers.resend_every
                out.append(SendFrame(hs.pending.mac, role.finished_bytes))
            return
        self._check_hw(msg.responder_hw)
        fin = role.receive_ticket(raw, t)
        mac = mac_of(role.responder_hw) if any(role.responder_hw) else src  # B's, under B's finished MAC
        s = Session(role.channel, t, mac, initiator=True)
        hs.pending, hs.resend_at, hs.resends = s, t + self.timers.resend_every, 0
        self.by_id[role.channel.session_id] = (msg.responder, s)  # B's records open from now on
        out.append(SendFrame(mac, fin))

    def _check_hw(self, hw: bytes) -> None:
        """A MAC a handshake binds: one station's (not a group address), not ours."""
        if hw[0] & 1 or (self.mac is not None and hw == hw_of(self.mac)):
            raise MalformedError(f"a handshake binding {mac_of(hw)}: a group address or ours")

    def _peer_finished(self, msg: m.PeerFinished, src: str, raw: bytes, t: float, out: list[Action]) -> None:
        key = (msg.initiator, msg.initiator_nonce)
        done = self.answered.get(key)
        if done is not None:  # A did not get our confirm: the same one again (its finished, byte for byte)
            finished, confirm, mac, resend_at = done
            if raw == finished and t >= resend_at:
                done[3] = t + self.timers.resend_every / 2
                out.append(SendFrame(mac, confirm))
            return
        found = next(((k, e) for k, e in self.responding.items()
                      if k[:2] == key and e.role.state is PeerState.TICKET_SENT), None)  # only a real hello gets here
        if found is None:
            raise StateError(f"no handshake with {msg.initiator}")
        open_key, entry = found
        channel = entry.role.receive_finished(raw, t)
        self.responding.pop(open_key)
        self.answered.put(key, [entry.role.finished_bytes, entry.role.confirm_bytes, entry.mac,
                                t + self.timers.resend_every / 2])
        out.append(SendFrame(entry.mac, entry.role.confirm_bytes))
        self._established(msg.initiator, Session(channel, t, entry.mac, initiator=False), t, out)

    def _peer_confirm(self, msg: m.PeerConfirm, src: str, raw: bytes, t: float, out: list[Action]) -> None:
        hs = self.initiating.get(msg.responder)
        if hs is None or hs.pending is None or hs.role.state is not PeerState.CONFIRMING:
            return  # a repeat (confirmed already) or a stray: nothing to do
        hs.role.receive_confirm(raw)
        del self.initiating[msg.responder]
        self._established(msg.responder, hs.pending, t, out)

    def _peer_error(self, msg: m.ErrorMessage, src: str, t: float, out: list[Action]) -> None:
        """Unauthenticated: logged and counted, nothing else. A handshake the peer could not
        complete times out (anyone could send this frame, so it may not end one)."""
        self._drop(out, f"from {src}: peer reports {msg.detail!r}")

    def _handshake_failed(self, peer: str, t: float, out: list[Action], why: str) -> None:
        """Count the failure and back off before the next try with this peer (1 s doubling to 30 s)."""
        self.stats["handshakes_failed"] += 1
        _, backoff = self.peer_retry.get(peer, (0.0, self.timers.retry_min / 2))
        backoff = min(backoff * 2, self.timers.retry_max)
        self.peer_retry.put(peer, (t + backoff, backoff))
        out.append(Log("session-failed", f"{why}; next try in {backoff:.0f} s"))

    def _established(self, peer: str, s: Session, t: float, out: list[Action]) -> None:
        if peer in self.revoked:  # a handshake that was under way when the list came
            self._end_sessions(peer)
            return
        old = self.sessions.get(peer)
        if old is not None and old is not s:
            if s.initiator:  # B switched before it confirmed: its records in flight, a grace
                self.retiring[old.channel.session_id] = t + self.timers.old_session_grace
            else:  # A sends under the old key until it has our confirm: keep it until A's first new record
                self.retiring[old.channel.session_id] = old.channel.not_after
                s.retire_on_first = True
            if old.mac != s.mac:  # a handshake really moved the peer: its back-off starts over
                self.moved_backoff.pop(peer)
        self.retiring.pop(s.channel.session_id, None)
        self.peer_retry.pop(peer, None)
        s.confirmed = True
        n = self.neighbours.get(peer)
        s.peer_epoch = (n.macs.get(s.mac) or (0, 0.0))[0] if n is not None else 0  # the epoch announced from its MAC
        self.sessions[peer] = s
        self.session_generation += 1
        self.by_id[s.channel.session_id] = (peer, s)
        verb = "rekeyed" if old else "established"
        out.append(Log("session", f"{verb} with {peer}: session {s.channel.session_id.hex()} until "
                       f"{s.channel.not_after:.0f}, key confirmed both ways"))
        if old is None:
            out.append(Milestone("peered", peer))

    def _data(self, src: str, frame: bytes, t: float, out: list[Action]) -> None:
        got = self._open_record(src, frame, t, out)
        if got is not None:
            out.append(Deliver(*got))

    def _peer_frame(self, src: str, frame: bytes, t: float, out: list[Action]) -> None:
        """A PeerFrame through handle(): the adapter's fast path calls the tunnel itself."""
        if self.tunnel is None:  # no tap here: not opened, so no window moves for nothing
            self.stats["frames_dropped"] += 1
            return
        inner = self.tunnel.inbound_at(src, frame, t, out)
        if inner is not None:
            out.append(DeliverFrame(self.tunnel.last_peer, inner))

    def _open_record(self, src: str, frame: bytes, t: float, out: list[Action]) -> tuple[str, bytes] | None:
        """(peer, plaintext) of a record (PeerData or PeerFrame) from `src`, or None: dropped and
        counted. The one path for both types: the session by its id, refused for a revoked peer
        or past its end, the replay window, and a record under the key our handshake is
        confirming establishes it (the peer sends under it only once established). Nothing
        while the port is not UP (handle() drops every frame then; the adapter's fast path comes
        here directly): no record opened, no announce nudged."""
        if self.port is not Port.UP:
            self.stats["frames_dropped"] += 1
            return None
        try:
            peer, s = self.by_id[frame[2:10]]
        except KeyError:
            self.stats["frames_dropped"] += 1
            if self.announce_nudge.allow(src, t) and self.announce_nudge.allow(None, t):
                # perhaps we restarted: tell that sender our epoch (per source and in all: a
                # flood of records from forged MACs must not become a flood of announces)
                out.append(SendFrame(src, self._announce()))
            return None
        if peer in self.revoked or t >= s.channel.not_after:
            self.stats["frames_dropped"] += 1  # expiry per frame: the sweep below runs every sweep_every
            return None
        try:
            data = s.channel.receiver.open(frame)
        except TesseraError as exc:
            s.dropped += 1
            self.stats["frames_dropped"] += 1
            if self.tunnel is not None and frame[1] == m.PeerFrame.TYPE:
                self.tunnel.refused(peer, exc)
            if s.dropped <= 3 or s.dropped % 1000 == 0:
                out.append(Log("frame-dropped", f"from {peer}: {exc.reason} ({s.dropped} dropped)"))
            return None
        if not s.confirmed and ((current := self.sessions.get(peer)) is None
                                or s.established_at > current.established_at):
            # a record under the key our handshake is confirming: the peer holds it and sends
            # under it (it does only once established), as good as its PeerConfirm
            hs = self.initiating.get(peer)
            if hs is not None and hs.pending is s:
                del self.initiating[peer]
            self._established(peer, s, t, out)
        if s.retire_on_first and self.sessions.get(peer) is s:  # A has switched: its older keys go after a grace
            s.retire_on_first = False
            for sid, (p, older) in self.by_id.items():
                if p == peer and older is not s:
                    self.retiring[sid] = min(self.retiring.get(sid, math.inf), t + self.timers.old_session_grace)
        s.frames_in += 1
        if s.frames_in == 1:
            out.append(Milestone("record", peer))
        return peer, data

    def _announce(self) -> bytes:
        return m.PeerAnnounce(self.client.realm, self.device_id, self.epoch).encode()

    # -- revocation --------------------------------------------------------------------------
    def _poll_revocations(self, t: float, out: list[Action]) -> None:
        if self.port is not Port.UP or t < self.next_revocation_poll or self._busy("revocations"):
            return
        if self.client.registration is None:
            return
        self.next_revocation_poll = t + self.timers.revocation_poll
        self._request("revocations", lambda sid: self.client.revocation_request(sid, t, self.random(16)), None, out)

    def _revocations(self, listing: m.RevocationList, t: float, out: list[Action]) -> None:
        """The realm's signed list: end every session and handshake with a device on it, refuse
        its hellos, and (a list cut at its size) renegotiate every session older than what it
        covers: the realm refuses the revoked, the rest rekey."""
        self.revoked = {device_id for device_id, _ in listing.revoked if device_id != self.device_id}
        covered = listing.issued_at - listing.complete_since  # seconds back the list is complete, server-clock free
        for peer in set(self.sessions) | set(self.initiating) | {p for p, _ in self.by_id.values()}:
            if peer in self.revoked:
                self._end_sessions(peer)
                out.append(Log("session-ended", f"with {peer}: revoked by the realm"))
        for peer, s in self.sessions.items():
            # the list was cut: a revocation older than it covers may concern this peer.
            # Renegotiate through the realm (which refuses the revoked); end it if no new
            # handshake replaced it within two handshake timeouts. The side that starts the
            # rekey flags with a margin (the two sides' polls and clocks differ: an extra rekey
            # costs little, a session the other side ended costs the pair until it expires);
            # the side that waits stays exact and allows for the other's poll coming later
            ours = self.device_id < peer
            if t - s.established_at > covered - (self.timers.handshake_timeout if ours else 0) and s.deadline is None:
                s.deadline = t + 2 * self.timers.handshake_timeout + (0 if ours else self.timers.revocation_poll)
                s.rekey_wanted = ours
                out.append(Log("session-recheck", f"with {peer}: older than the revocation list covers, renegotiating"))
        for key in list(self.responding):
            if key[0] in self.revoked:
                self.responding.pop(key)
        for peer in self.revoked:
            self.neighbours.pop(peer)

    def _end_sessions(self, peer: str) -> None:
        """Forget every key shared with `peer`: current, retiring and being confirmed."""
        self.sessions.pop(peer, None)
        self.session_generation += 1
        for sid, (p, _) in list(self.by_id.items()):
            if p == peer:
                del self.by_id[sid]
                self.retiring.pop(sid, None)
        self.initiating.pop(peer, None)

    # -- timers ----------------------------------------------------------------------------
    def _tick(self, t: float, out: list[Action]) -> None:
        if self.port is Port.BLOCKED and t >= self.retry_at:
            self.port = Port.ADMITTING
            self.method = None
            self._admission(out, t)
        elif (self.port is Port.ADMITTING and (self.admission_answered or not self.admission_asked)
              and t - self.admission_started > self.timers.admission_timeout):
            why = "no EAP-Success" if self.admission_answered else "no EAP request from the switch"
            self._rejected(PortRejected((self.method or "tls").split("-")[0],
                                        f"{why} within {self.timers.admission_timeout:.0f} s"), t, out, timed_out=True)
        elif self.port is Port.ADMITTING and not self.admission_asked and t >= self.start_resend_at:
            self.start_resends += 1
            self.start_resend_at = t + self.timers.start_resend * 2 ** self.start_resends
            out.append(Log("admission", "no EAP request from the switch yet: EAPOL-Start again"))
            out.append(self._start_action())
        elif self.port is Port.ADMITTING and t - self.admission_started > self.timers.admission_silent_timeout:
            method = (self.method or "tls").split("-")[0].upper()
            out.append(Log("admission-silent", f"no answer from the RADIUS server within "
                           f"{self.timers.admission_silent_timeout:.0f} s: starting EAP-{method} over"))
            self._admission(out, t)
        elif (self.port is Port.UP and not self.realm_heard and self.unanswered
              and t - self.authorized_at >= self.lost_after):
            self._admission_lost(t, out)
        self._lifecycle(t, out)
        if self.port is not Port.UP:
            return
        self._poll_revocations(t, out)
        creds = self.client.credentials
        if creds is not None and t < creds.not_after and t >= self.next_announce:
            out.append(SendFrame(BROADCAST, self._announce()))
            self.next_announce = t + self.timers.announce_every
        if creds is not None and t < creds.not_after and t >= self.next_scan:
            # neighbours heard before we held a TGT (or after a failed try, or while the first
            # handshakes were all taken): ours to start. A timer's work, not a frame's: a frame
            # costs the same whatever the table holds
            self.next_scan = t + self.timers.scan_every
            self._forget_quiet_neighbours(t)
            room = self.timers.max_handshakes - self._first_handshakes()
            for peer in self.neighbours:
                if room <= 0:
                    break
                if peer not in self.sessions and peer not in self.initiating and self.device_id < peer:
                    room -= self._initiate(peer, t, out)
        if self.last_sweep <= t < self.last_sweep + self.timers.sweep_every:
            return  # swept just now: a frame's cost does not grow with the sessions held (100 peers'
            # announces each walking 99 sessions took most of the agents' CPU at 100 devices)
        self.last_sweep = t
        for peer, hs in list(self.initiating.items()):
            if t - hs.started > self.timers.handshake_timeout:
                self._abandon(peer, t)
                state = "confirm" if hs.pending is not None else "hello"
                self._handshake_failed(peer, t, out, f"{peer}: no answer to the {state}")
            elif t >= hs.resend_at:
                hs.resends += 1
                hs.resend_at = t + self.timers.resend_every * 2 ** hs.resends
                if hs.pending is not None:
                    out.append(SendFrame(hs.pending.mac, hs.role.finished_bytes))
                else:
                    out.extend(SendFrame(mac, hs.role.hello_bytes) for mac in self._targets(peer))
        for key, entry in self.responding.items():
            if t - entry.started > self.timers.handshake_timeout and not entry.asking:
                self.responding.pop(key)
                self.refused.put(key, None)  # its repeats ask for nothing more
        for peer, s in list(self.sessions.items()):
            if s.channel.expired(t):
                self._end_sessions(peer)
                out.append(Log("session-expired", f"with {peer}"))
            elif s.deadline is not None and t >= s.deadline:
                self._end_sessions(peer)
                out.append(Log("session-ended", f"with {peer}: not renegotiated in time"))
            elif self.device_id < peer and (s.rekey_wanted or s.channel.not_after - t < min(
                    self.timers.rekey_before, (s.channel.not_after - s.established_at) / 4)):
                self._initiate(peer, t, out, rekey=True)
        for sid, until in list(self.retiring.items()):
            if t >= until:
                del self.retiring[sid]
                entry = self.by_id.get(sid)
                if entry is not None and self.sessions.get(entry[0]) is not entry[1]:
                    del self.by_id[sid]

    def _forget_quiet_neighbours(self, t: float) -> None:
        """Neighbours unheard for a few announce periods go (oldest first: O(forgotten));
        a session does not need its neighbour entry, it keeps the MAC it was made with."""
        ttl = self.timers.announce_every * 4
        while (oldest := self.neighbours.oldest()) is not None and t - oldest[1].last_seen > ttl:
            self.neighbours.pop(oldest[0])

    # -- status ----------------------------------------------------------------------------
    def status(self, now: float) -> dict:
        """Ports, tickets (expiry only, never keys), neighbours and sessions."""
        t = now + self.offset
        reg, cred = self.client.registration, self.client.credentials
        neighbours = {n.device_id: next(reversed(list(n.macs)), "") for n in self.neighbours.values()}
        neighbours.update({p: s.mac for p, s in self.sessions.items()})
        return {
            "device_id": self.device_id,
            "port": self.port.value,
            "admission": self.method,
            "state": self.client.state.value,
            "registration": {"generation": reg.generation, "expires_in": round(reg.not_after - t)} if reg else None,
            "tgt": {"expires_in": round(cred.not_after - t)} if cred else None,
            "clock_offset": round(self.offset),
            "neighbours": neighbours,
            "sessions": {p: {"session_id": s.channel.session_id.hex(), "expires_in": round(s.channel.not_after - t),
                             "frames_out": s.frames_out, "frames_in": s.frames_in, "dropped": s.dropped,
                             **({"tunnel": self.tunnel.counters_of(p).as_dict()} if self.tunnel is not None else {})}
                         for p, s in self.sessions.items()},
            **({"tunnel": self.tunnel.status()} if self.tunnel is not None else {}),
            "handshakes": sorted(set(self.initiating) | {k[0] for k in self.responding}),
            "revoked_peers": sorted(self.revoked),
            **self.stats,
        }
