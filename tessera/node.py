"""The device agent's brain, sans-I/O: link events, port admission, RADIUS answers, frames and
timer ticks go in; actions come out (start 802.1X, ask the realm, send a frame, deliver data).

    event                         what the node does
    LinkUp                        port ADMITTING: StartAdmission (EAP-TLS with the device
                                  certificate before registration, EAP-PWD with the LLK after)
    PortAuthorized                port UP: register / authenticate / renew as due, then announce
    PortRejected                  EAP-PWD refused → fall back to EAP-TLS; EAP-TLS refused → stay
                                  closed and try again after a back-off
    RadiusAnswer / RadiusFailed   feed the DeviceClient or the peer handshake; a failure backs off
                                  (clock-skew: adopt the server's time and retry at once, once;
                                  superseded / not-registered: the DRT is dead, register afresh;
                                  both only when the realm signed the error over this request:
                                  docs/layouts.md#signederror)
    FrameReceived                 PeerAnnounce → the lower device id starts a handshake;
                                  PeerHello → ask the realm for a session key; PeerTicket /
                                  PeerFinished → establish; PeerData → open and deliver;
                                  ErrorMessage → abort that handshake
    LinkDown                      drop every session and handshake, port DOWN
    tick (every call)             renew / re-register before expiry, announce, rekey sessions
                                  before they end, time out handshakes

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
"""

from __future__ import annotations

import enum
import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

from . import message as m
from .device import DeviceClient, State
from .errors import (ClockSkewError, NotRegisteredError, RevokedError, StateError, SupersededError, TesseraError,
                     UnknownDeviceError)
from .peer import Channel, PeerInitiator, PeerResponder, PeerState
from .record import session_id_of

BROADCAST = "ff:ff:ff:ff:ff:ff"
EARLIEST_TIME = 1_577_836_800  # 2020-01-01T00:00:00Z: a realm clock before this is broken
LATEST_TIME = 4_102_444_800  # 2100-01-01T00:00:00Z: likewise after it


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


Event = LinkUp | LinkDown | PortAuthorized | PortRejected | RadiusAnswer | RadiusFailed | FrameReceived


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
class SaveState:
    pass


@dataclass(frozen=True)
class Log:
    event: str
    text: str


Action = StartAdmission | RadiusRequest | SendFrame | Deliver | SaveState | Log


class Port(enum.Enum):
    DOWN = "down"
    ADMITTING = "admitting"
    UP = "up"
    BLOCKED = "blocked"


@dataclass
class Timers:
    announce_every: float = 2.0
    admission_timeout: float = 3.0  # no EAP-Success by then counts as refused (a supplicant that
    # finished its TLS handshake ignores the EAP-Failure of a certificate check that follows it)
    handshake_timeout: float = 10.0
    retry_min: float = 1.0
    retry_max: float = 30.0
    rekey_before: float = 60.0  # start a new handshake this long (at most a quarter of its life) before a key ends
    old_session_grace: float = 5.0  # keep the previous key for frames in flight after a rekey


@dataclass
class Neighbour:
    device_id: str
    mac: str
    last_seen: float
    epoch: int = 0


@dataclass
class Session:
    channel: Channel
    established_at: float
    frames_out: int = 0
    frames_in: int = 0
    dropped: int = 0


class Node:
    def __init__(self, client: DeviceClient, random: Callable[[int], bytes], timers: Timers = Timers()):
        self.client = client
        self.random = random
        self.timers = timers
        self.port = Port.DOWN
        self.method: str | None = None
        self.offset = 0.0  # server time minus our clock, learned from a clock-skew reply
        self.skew_retried = False  # the last answer was a clock-skew, retried at once
        self.neighbours: dict[str, Neighbour] = {}
        self.sessions: dict[str, Session] = {}  # by peer: the current session
        self.by_id: dict[bytes, tuple[str, Session]] = {}  # every usable session id (old ones for a grace)
        self.retiring: dict[bytes, float] = {}  # session id → drop at
        self.initiating: dict[str, tuple[PeerInitiator, float]] = {}
        self.peer_retry: dict[str, tuple[float, float]] = {}  # peer → (not before, back-off) after a failure
        self.responding: dict[str, tuple[PeerResponder, str, float]] = {}  # peer → (role, mac, started)
        self.ops: dict[int, tuple[str, object]] = {}
        self._op_ids = itertools.count(1)
        self.next_announce = 0.0
        self.epoch = 0
        self.retry_at = 0.0
        self.admission_started = 0.0
        self.backoff = timers.retry_min
        self.stats = {"frames_dropped": 0, "handshakes_failed": 0}

    @property
    def device_id(self) -> str:
        return self.client.device_id

    # -- entry points ----------------------------------------------------------------------
    def handle(self, event: Event | None, now: float) -> list[Action]:
        """Feed one event (or None for a timer tick) and collect the actions."""
        t = now + self.offset
        out: list[Action] = []
        if isinstance(event, LinkUp):
            self._link_up(t, out)
        elif isinstance(event, LinkDown):
            self._link_down(out, "carrier lost")
        elif isinstance(event, (PortAuthorized, PortRejected)) and self.port is not Port.ADMITTING:
            out.append(Log("admission", f"late EAP result ignored: the port is {self.port.value}"))
        elif isinstance(event, PortAuthorized):
            self._authorized(event, t, out)
        elif isinstance(event, PortRejected):
            self._rejected(event, t, out)
        elif isinstance(event, (RadiusAnswer, RadiusFailed)):
            self._radius(event, t, out)
        elif isinstance(event, FrameReceived):
            self._frame(event, t, out)
        self._tick(now + self.offset, out)  # a clock-skew answer may have just moved the offset
        return out

    def send(self, peer: str, data: bytes, now: float) -> list[Action]:
        """Protect application data for a peer (raises StateError if there is no session)."""
        s = self.sessions.get(peer)
        if s is None or s.channel.expired(now + self.offset):
            raise StateError(f"no session with {peer}")
        s.frames_out += 1
        return [SendFrame(self.neighbours[peer].mac, s.channel.seal(data))]

    # -- port ------------------------------------------------------------------------------
    def _admission(self, out: list[Action], t: float = 0.0) -> None:
        self.admission_started = t
        if self.client.registration is not None and self.method != "tls-fallback":
            out.append(StartAdmission("pwd", self.device_id, self.client.eap_pwd_password()))
            self.method = "pwd"
        else:
            out.append(StartAdmission("tls", self.device_id))
            self.method = "tls"

    def _link_up(self, t: float, out: list[Action]) -> None:
        self.port = Port.ADMITTING
        self.method = None
        self.epoch = int.from_bytes(self.random(8), "big")
        out.append(Log("link-up", "carrier up: starting 802.1X"))
        self._admission(out, t)

    def _link_down(self, out: list[Action], why: str) -> None:
        dropped = len(self.sessions) + len(self.initiating) + len(self.responding)
        self.port = Port.DOWN
        self.sessions.clear()
        self.by_id.clear()
        self.retiring.clear()
        self.initiating.clear()
        self.responding.clear()
        self.neighbours.clear()
        self.ops = {k: v for k, v in self.ops.items() if v[0] not in ("session",)}
        out.append(Log("link-down", f"{why}: dropped {dropped} session(s)/handshake(s)"))

    def _authorized(self, ev: PortAuthorized, t: float, out: list[Action]) -> None:
        self.port = Port.UP
        self.backoff = self.timers.retry_min
        self.retry_at = 0.0
        self.next_announce = 0.0
        out.append(Log("admitted", f"port authorized by EAP-{ev.method.upper()}"))

    def _rejected(self, ev: PortRejected, t: float, out: list[Action]) -> None:
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
            self._failed(kind, ctx, exc, t, out)

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
        out.append(Log("clock", f"clock off by {off:+.0f} s: using the server's time"))
        return True

    def _feed_reply(self, kind: str, ctx, reply: bytes, t: float, out: list[Action] | None = None) -> None:
        if kind == "register":
            reg = self.client.register_reply(reply, t)
            if out is not None:
                out.append(Log("registered", f"DRT generation {reg.generation}, valid until {reg.not_after:.0f}"))
                out.append(SaveState())
        elif kind == "ticket":
            cred = self.client.ticket_reply(reply, t)
            if out is not None:
                out.append(Log("ticketed", f"TGT valid until {cred.not_after:.0f}"))
                out.append(SaveState())
                self.next_announce = 0.0
        elif kind == "session":
            entry = self.responding.get(ctx)
            if entry is None:
                return  # the handshake was dropped meanwhile (link down, timeout)
            role, mac, _ = entry
            ticket = role.receive_session_reply(reply, t)
            if out is not None:
                out.append(SendFrame(mac, ticket))

    def _failed(self, kind: str, ctx, exc: TesseraError, t: float, out: list[Action], retry_now: bool = False) -> None:
        if kind in ("register", "ticket"):
            self.client.abandon()
            self.retry_at = t if retry_now else t + self.backoff
            if not retry_now:
                self.backoff = min(self.backoff * 2, self.timers.retry_max)
            if exc.signed and isinstance(exc, (UnknownDeviceError, RevokedError, SupersededError, NotRegisteredError)):
                # the realm (its signature, over this request) will not talk to us, or our DRT is
                # dead: only a new registration helps. Unsigned, the device core made it a
                # transient BadProofError already; `signed` is checked here too, as the rule
                self.client.registration = self.client.credentials = None
                self.client.state = State.ENROLLED
            out.append(Log(f"{kind}-failed", f"{exc}; retry in {self.retry_at - t:.0f} s"))
        elif kind == "session":
            entry = self.responding.pop(ctx, None)
            self.stats["handshakes_failed"] += 1
            if entry is not None:
                out.append(SendFrame(entry[1], m.ErrorMessage(exc.code, 0, str(exc)[:200]).encode()))
            out.append(Log("session-failed", f"with {ctx}: {exc}"))

    # -- frames ----------------------------------------------------------------------------
    def _frame(self, ev: FrameReceived, t: float, out: list[Action]) -> None:
        if self.port is not Port.UP:
            return
        payload = ev.payload
        if len(payload) >= 2 and payload[1] == m.PeerData.TYPE:
            self._data(ev.src, payload, t, out)
            return
        try:
            msg = m.decode(payload, (m.PeerAnnounce, m.PeerHello, m.PeerTicket, m.PeerFinished, m.ErrorMessage))
            if isinstance(msg, m.PeerAnnounce):
                self._announce_from(msg, ev.src, t, out)
            elif isinstance(msg, m.PeerHello):
                self._hello(msg, ev.src, payload, t, out)
            elif isinstance(msg, m.PeerTicket):
                self._peer_ticket(msg, ev.src, payload, t, out)
            elif isinstance(msg, m.PeerFinished):
                self._peer_finished(msg, ev.src, payload, t, out)
            else:
                self._peer_error(msg, ev.src, t, out)
        except TesseraError as exc:
            self.stats["frames_dropped"] += 1
            out.append(Log("frame-rejected", f"from {ev.src}: {exc.reason}"))

    def _announce_from(self, msg: m.PeerAnnounce, src: str, t: float, out: list[Action]) -> None:
        if msg.realm != self.client.realm or msg.device_id == self.device_id:
            return
        known = self.neighbours.get(msg.device_id)
        if known is None or known.mac != src:
            out.append(Log("neighbour", f"{msg.device_id} at {src}"))
        elif known.epoch and known.epoch != msg.epoch and msg.device_id in self.sessions:
            s = self.sessions.pop(msg.device_id)
            self.by_id.pop(s.channel.session_id, None)
            out.append(Log("session-lost", f"{msg.device_id} restarted: its session is gone"))
        self.neighbours[msg.device_id] = Neighbour(msg.device_id, src, t, msg.epoch)
        if self.device_id < msg.device_id and msg.device_id not in self.sessions:
            self._initiate(msg.device_id, t, out)

    def _initiate(self, peer: str, t: float, out: list[Action]) -> None:
        if peer in self.initiating or self.client.credentials is None or t >= self.client.credentials.not_after:
            return
        if t < self.peer_retry.get(peer, (0.0, 0.0))[0]:
            return
        role = PeerInitiator(self.client, peer)
        hello = role.hello(t, self.random(16))
        self.initiating[peer] = (role, t)
        out.append(Log("peer-hello", f"→ {peer}: TGT + authenticator naming {peer}"))
        out.append(SendFrame(self.neighbours[peer].mac, hello))

    def _hello(self, msg: m.PeerHello, src: str, raw: bytes, t: float, out: list[Action]) -> None:
        role = PeerResponder(self.client)
        role.receive_hello(raw, t)
        self.neighbours.setdefault(msg.initiator, Neighbour(msg.initiator, src, t)).mac = src  # announce may lag
        self.responding[msg.initiator] = (role, src, t)
        out.append(Log("peer-hello", f"← {msg.initiator}: asking the realm for a session key"))
        self._request("session", lambda sid: role.session_request(sid, t, self.random(16)), msg.initiator, out)

    def _peer_ticket(self, msg: m.PeerTicket, src: str, raw: bytes, t: float, out: list[Action]) -> None:
        entry = self.initiating.get(msg.responder)
        if entry is None:
            raise TesseraError(f"no handshake with {msg.responder}")
        role = entry[0]
        fin = role.receive_ticket(raw, t)
        del self.initiating[msg.responder]
        out.append(SendFrame(src, fin))
        self._established(msg.responder, role.channel, t, out)

    def _peer_finished(self, msg: m.PeerFinished, src: str, raw: bytes, t: float, out: list[Action]) -> None:
        entry = self.responding.get(msg.initiator)
        if entry is None or entry[0].state is not PeerState.TICKET_SENT:
            raise TesseraError(f"no handshake with {msg.initiator}")
        channel = entry[0].receive_finished(raw, t)
        del self.responding[msg.initiator]
        self._established(msg.initiator, channel, t, out)

    def _peer_error(self, msg: m.ErrorMessage, src: str, t: float, out: list[Action]) -> None:
        for peer, (role, _) in list(self.initiating.items()):
            if self.neighbours.get(peer) and self.neighbours[peer].mac == src:
                del self.initiating[peer]
                self._handshake_failed(peer, t, out, f"{peer} reports: {msg.detail}")

    def _handshake_failed(self, peer: str, t: float, out: list[Action], why: str) -> None:
        """Count the failure and back off before the next try with this peer (1 s doubling to 30 s)."""
        self.stats["handshakes_failed"] += 1
        _, backoff = self.peer_retry.get(peer, (0.0, self.timers.retry_min / 2))
        backoff = min(backoff * 2, self.timers.retry_max)
        self.peer_retry[peer] = (t + backoff, backoff)
        out.append(Log("session-failed", f"{why}; next try in {backoff:.0f} s"))

    def _established(self, peer: str, channel: Channel, t: float, out: list[Action]) -> None:
        old = self.sessions.get(peer)
        if old is not None:
            self.retiring[old.channel.session_id] = t + self.timers.old_session_grace
        s = Session(channel, t)
        self.peer_retry.pop(peer, None)
        self.sessions[peer] = s
        self.by_id[channel.session_id] = (peer, s)
        verb = "rekeyed" if old else "established"
        out.append(Log("session", f"{verb} with {peer}: session {channel.session_id.hex()} until {channel.not_after:.0f}"))

    def _data(self, src: str, frame: bytes, t: float, out: list[Action]) -> None:
        try:
            peer, s = self.by_id[session_id_of(frame)]
        except (KeyError, TesseraError):
            self.stats["frames_dropped"] += 1
            return
        try:
            data = s.channel.open(frame)
        except TesseraError as exc:
            s.dropped += 1
            self.stats["frames_dropped"] += 1
            if s.dropped <= 3 or s.dropped % 1000 == 0:
                out.append(Log("frame-dropped", f"from {peer}: {exc.reason} ({s.dropped} dropped)"))
            return
        s.frames_in += 1
        out.append(Deliver(peer, data))

    # -- timers ----------------------------------------------------------------------------
    def _tick(self, t: float, out: list[Action]) -> None:
        if self.port is Port.BLOCKED and t >= self.retry_at:
            self.port = Port.ADMITTING
            self.method = None
            self._admission(out, t)
        elif self.port is Port.ADMITTING and t - self.admission_started > self.timers.admission_timeout:
            self._rejected(PortRejected((self.method or "tls").split("-")[0],
                                        f"no EAP-Success within {self.timers.admission_timeout:.0f} s"), t, out)
        self._lifecycle(t, out)
        if self.port is not Port.UP:
            return
        creds = self.client.credentials
        if creds is not None and t < creds.not_after and t >= self.next_announce:
            out.append(SendFrame(BROADCAST, m.PeerAnnounce(self.client.realm, self.device_id, self.epoch).encode()))
            self.next_announce = t + self.timers.announce_every
        if creds is not None and t < creds.not_after:
            # neighbours heard before we held a TGT (or after a failed try): ours to start
            for peer in self.neighbours:
                if self.device_id < peer and peer not in self.sessions:
                    self._initiate(peer, t, out)
        for peer, (_, started) in list(self.initiating.items()):
            if t - started > self.timers.handshake_timeout:
                del self.initiating[peer]
                self._handshake_failed(peer, t, out, f"{peer}: no answer to the hello")
        for peer, (_, _, started) in list(self.responding.items()):
            if t - started > self.timers.handshake_timeout and not any(c == peer for k, c in self.ops.values() if k == "session"):
                del self.responding[peer]
        for peer, s in list(self.sessions.items()):
            if s.channel.expired(t):
                del self.sessions[peer]
                self.by_id.pop(s.channel.session_id, None)
                out.append(Log("session-expired", f"with {peer}"))
            elif (s.channel.not_after - t < min(self.timers.rekey_before, (s.channel.not_after - s.established_at) / 4)
                  and self.device_id < peer and peer in self.neighbours):
                self._initiate(peer, t, out)
        for sid, until in list(self.retiring.items()):
            if t >= until:
                del self.retiring[sid]
                self.by_id.pop(sid, None)

    # -- status ----------------------------------------------------------------------------
    def status(self, now: float) -> dict:
        """Ports, tickets (expiry only, never keys), neighbours and sessions."""
        t = now + self.offset
        reg, cred = self.client.registration, self.client.credentials
        return {
            "device_id": self.device_id,
            "port": self.port.value,
            "admission": self.method,
            "state": self.client.state.value,
            "registration": {"generation": reg.generation, "expires_in": round(reg.not_after - t)} if reg else None,
            "tgt": {"expires_in": round(cred.not_after - t)} if cred else None,
            "clock_offset": round(self.offset),
            "neighbours": {n.device_id: n.mac for n in self.neighbours.values()},
            "sessions": {p: {"session_id": s.channel.session_id.hex(), "expires_in": round(s.channel.not_after - t),
                             "frames_out": s.frames_out, "frames_in": s.frames_in, "dropped": s.dropped}
                         for p, s in self.sessions.items()},
            "handshakes": sorted(set(self.initiating) | set(self.responding)),
            **self.stats,
        }
