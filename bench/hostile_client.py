"""A hostile client against a live FreeRADIUS with the real realm: floods of malformed, truncated,
oversized, replayed, tampered and forged requests from several source ports (and a second source
address), with valid requests interleaved. Exits 1 on any wrong answer.

How this works: the flood runs in rounds. Each round's packets are encoded before it starts
(every byte by hand here, so that any field can be wrong on purpose; a Message-Authenticator is
recomputed with the right secret wherever the category says so) and sent with up to ``window``
in flight, as ``bench/radius_load.py`` does. Packets that must be answered go out on *tracked*
sockets, one RADIUS Identifier per slot (socket, id), and each answer is checked against its
request: Response Authenticator and Message-Authenticator with the secret, then the category's
rule. Packets the server must drop go out on *silent* sockets (and from a second address, a
client whose entry does not require Message-Authenticator); any datagram that comes back on one
of those is a wrong answer. A tracked packet unanswered after ``timeout`` is a wrong answer too.

    category          what is sent (all with a valid Message-Authenticator unless said)   must
    valid             a fresh AuthRequest (TGT) of a registered device                       Accept; the device core opens the reply
    status            Status-Server                                                          Accept
    junk              random bytes as the Tessera message                                    Reject naming a reason
    truncated         a fresh AuthRequest cut short                                          Reject malformed
    oversized         a fresh AuthRequest padded to ~3.9 kB over 16 attributes               Reject malformed
    tampered          a fresh AuthRequest with 1-3 bytes changed                             Reject
    forged            AuthRequest with another device's DRT, a made-up MAC or device,        Reject
                      RegisterRequest signed by the wrong key
    replayed          the message of a valid request answered in an earlier round,           Reject replay
                      in a new packet from another source port
    resent            an answered datagram sent again as it was (same port, id, authenticator) Reject, or the very answer it had
    no-ma             a fresh AuthRequest without Message-Authenticator (also from the lax   no answer
                      client at the second address)
    bad-ma            Message-Authenticator keyed by another secret, or zeroed               no answer
    bad-code          Accounting-Request, Access-Accept, CoA, codes 0 and 255 to the port    no answer
    bad-length        Length below 20, beyond the datagram, above 4096; attribute lengths    no answer
                      0, 1 or past the end; datagrams under 20 bytes
    huge              datagrams of 4.1-9 kB                                                  no answer

Also checked: radiusd's PID and start time never change, it answers Status-Server before, in the
middle and after, its log holds no "internal error" (an exception that escaped the core) and no
traceback, and its RSS (VmRSS from /proc/PID/status) before, in the middle and after is printed.
Valid requests are spread over enough devices to stay under the replay cache's per-device quota.

Usage (root, Debian's freeradius): a private radiusd with a fresh realm, as the tests start one:
  python bench/hostile_client.py --requests 100000
  python bench/hostile_client.py --requests 300000 --clock-skew 10   # the replay cache turns over:
                                                                     # RSS must level off
From Python (the test): ``Fleet`` + ``run(server, fleet, requests, ...)`` against a running server.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import hmac
import os
import random
import re
import select
import socket
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tessera import message as m
from tessera.device import DeviceClient
from tessera.identity import DeviceKey, ServerEntry
from tessera.radius.client import RadiusClient, Server, load_dictionary

IDS = 256
MAX_PACKET = 4096
LAX_SOURCE = "127.0.0.2"  # a device client whose entry does not require Message-Authenticator

# -- RADIUS on the wire, by hand -----------------------------------------------------------------
DICT = load_dictionary()
ACCESS_REQUEST, ACCESS_ACCEPT, ACCESS_REJECT = 1, 2, 3
ACCOUNTING_REQUEST, COA_REQUEST, STATUS_SERVER = 4, 43, 12


def _code(name: str) -> int:
    return DICT.attributes[name].code


USER_NAME, REPLY_MESSAGE, VENDOR_SPECIFIC, MESSAGE_AUTHENTICATOR = (
    _code("User-Name"), _code("Reply-Message"), _code("Vendor-Specific"), _code("Message-Authenticator"))
VENDOR = DICT.vendors.GetForward(DICT.attributes["Tessera-Message"].vendor)
TESSERA_MESSAGE, TESSERA_REPLY, TESSERA_ERROR = (
    _code("Tessera-Message"), _code("Tessera-Reply"), _code("Tessera-Error"))
INTERNAL_ERROR = int.from_bytes(DICT.attributes["Tessera-Error"].values.forward["Internal-Error"], "big")


def attribute(kind: int, value: bytes) -> bytes:
    return bytes([kind, len(value) + 2]) + value


def tessera_attributes(message: bytes, chunk: int = 247) -> bytes:
    """The message over Tessera-Message VSAs of at most ``chunk`` bytes (no upper bound on count)."""
    pieces = [message[i:i + chunk] for i in range(0, len(message), chunk)] or [b""]
    return b"".join(attribute(VENDOR_SPECIFIC, struct.pack("!IBB", VENDOR, TESSERA_MESSAGE, len(p) + 2) + p)
                    for p in pieces)


def encode(code: int, ident: int, authenticator: bytes, attrs: bytes, secret: bytes, ma: str = "good") -> bytes:
    """A request. ``ma``: "good" (HMAC-MD5 with ``secret`` over the packet, RFC 3579), "none",
    "zero" (the attribute with 16 zero bytes) or "other" (keyed by another secret)."""
    if ma != "none":
        attrs = attribute(MESSAGE_AUTHENTICATOR, bytes(16)) + attrs
    packet = struct.pack("!BBH", code, ident, 20 + len(attrs)) + authenticator + attrs
    if ma in ("good", "other"):
        key = secret if ma == "good" else b"not-the-secret-" + secret
        mac = hmac.new(key, packet, hashlib.md5).digest()
        packet = packet[:22] + mac + packet[38:]  # the Message-Authenticator is the first attribute
    return packet


@dataclass
class Answer:
    code: int
    ident: int
    tessera_reply: bytes
    tessera_error: int | None
    reply_message: str


def verify_answer(data: bytes, request: bytes, secret: bytes) -> Answer | None:
    """The answer if it is authentic and answers ``request`` (Identifier, Response Authenticator,
    Message-Authenticator, RFC 2865 / 3579), else None."""
    if len(data) < 20:
        return None
    code, ident, length = struct.unpack_from("!BBH", data)
    if ident != request[1] or length != len(data) or length > MAX_PACKET:
        return None
    req_auth = request[4:20]
    if not hmac.compare_digest(hashlib.md5(data[:4] + req_auth + data[20:] + secret).digest(), data[4:20]):
        return None
    attrs, i = [], 20
    while i < length:
        if i + 2 > length or data[i + 1] < 2 or i + data[i + 1] > length:
            return None
        attrs.append((data[i], i, data[i + 2:i + data[i + 1]]))
        i += data[i + 1]
    mas = [a for a in attrs if a[0] == MESSAGE_AUTHENTICATOR]
    if len(mas) != 1 or len(mas[0][2]) != 16:
        return None  # every answer must carry one (BlastRADIUS)
    at = mas[0][1]
    zeroed = data[:4] + req_auth + data[20:at + 2] + bytes(16) + data[at + 18:]
    if not hmac.compare_digest(hmac.new(secret, zeroed, hashlib.md5).digest(), mas[0][2]):
        return None
    reply, error, text = b"", None, ""
    for kind, _, value in attrs:
        if kind == REPLY_MESSAGE:
            text += value.decode(errors="replace")
        elif kind == VENDOR_SPECIFIC and len(value) >= 6:
            vendor, vtype, vlen = struct.unpack_from("!IBB", value)
            if vendor == VENDOR and vtype == TESSERA_REPLY:
                reply += value[6:4 + vlen]
            elif vendor == VENDOR and vtype == TESSERA_ERROR and vlen == 6:
                error = struct.unpack_from("!I", value, 6)[0]
    return Answer(code, ident, reply, error, text)


# -- the realm's devices -----------------------------------------------------------------------------
class Fleet:
    """Devices enrolled in the realm and registered over RADIUS; each valid request comes from a
    fresh device core holding one of their registrations (so many can be in flight at once)."""

    def __init__(self, realm, server: Server, devices: int, prefix: str = "hostile"):
        self.realm, self.server = realm, server
        self.members: list[tuple[object, DeviceKey, object]] = []  # (bundle, key, registration)
        client = RadiusClient([server], timeout=2.0, retries=2)
        now = time.time()
        for i in range(devices):
            device_id = f"{prefix}-{i:04d}"
            key = DeviceKey.generate()
            realm.enrol_key(device_id, key.public_bytes(), now)
            bundle = realm.bundle(device_id, [ServerEntry(server.server_id, server.host, server.port)],
                                  server.secret.decode())
            dev = DeviceClient(bundle, key)
            reg = dev.register_reply(client.exchange(device_id, lambda sid: dev.register_request(
                sid, time.time(), os.urandom(16))), time.time())
            self.members.append((bundle, key, reg))
        self._next = 0

    def device(self, index: int | None = None) -> DeviceClient:
        """A device core holding a member's registration, ready to ask for a TGT."""
        if index is None:
            index, self._next = self._next, (self._next + 1) % len(self.members)
        bundle, key, reg = self.members[index]
        dev = DeviceClient(bundle, key)
        dev.registration = reg
        dev.state = type(dev.state).REGISTERED
        return dev

    def fresh_request(self, index: int | None = None) -> tuple[DeviceClient, bytes]:
        dev = self.device(index)
        return dev, dev.auth_request(self.server.server_id, time.time(), os.urandom(16))


# -- the plan ----------------------------------------------------------------------------------------
WEIGHTS = {  # per 100 packets
    "valid": 16, "status": 2, "junk": 8, "truncated": 8, "oversized": 4, "tampered": 10, "forged": 8,
    "replayed": 6, "resent": 4, "no-ma": 8, "bad-ma": 8, "bad-code": 6, "bad-length": 8, "huge": 4,
}
SILENT = {"no-ma", "bad-ma", "bad-code", "bad-length", "huge"}


@dataclass
class Planned:
    category: str
    data: bytes
    silent: bool = False
    lax: bool = False  # silent, from the second address
    slot: tuple[int, int] | None = None  # (tracked socket, Identifier); resent packets name theirs
    device: DeviceClient | None = None  # valid: the core that must accept the answer
    message: bytes = b""  # valid: the Tessera message (replayed later)
    same_answer: bytes | None = None  # resent: the answer the original had


@dataclass
class Outcome:
    planned: Planned
    answer: Answer | None
    raw: bytes | None


def _auth() -> bytes:
    return os.urandom(16)


def plan_round(fleet: Fleet, secret: bytes, count: int, rng: random.Random, earlier: list[Outcome]) -> list[Planned]:
    """``count`` packets in the weighted mix, in random order; replays draw on ``earlier`` rounds."""
    answered_valid = [o for o in earlier if o.planned.category == "valid" and o.answer and o.answer.code == ACCESS_ACCEPT]
    answered = [o for o in earlier if not o.planned.silent and o.raw is not None
                and o.planned.category not in ("resent", "status")]  # a Status-Server is answered afresh
    cats = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()), k=count)
    out: list[Planned] = []
    used_resent: set[tuple[int, int]] = set()
    for cat in cats:
        if cat == "replayed" and not answered_valid:
            cat = "junk"
        if cat == "resent" and not answered:
            cat = "tampered"
        out.append(_make(cat, fleet, secret, rng, answered_valid, answered, used_resent))
    return out


def _request(message: bytes, secret: bytes, user: str = "hostile", ma: str = "good", code: int = ACCESS_REQUEST,
             chunk: int = 247) -> bytes:
    attrs = attribute(USER_NAME, user.encode()) + tessera_attributes(message, chunk)
    return encode(code, 0, _auth(), attrs, secret, ma)


def _make(cat: str, fleet: Fleet, secret: bytes, rng: random.Random, answered_valid, answered, used_resent) -> Planned:
    if cat == "valid":
        dev, msg = fleet.fresh_request()
        return Planned(cat, _request(msg, secret, dev.device_id), device=dev, message=msg)
    if cat == "status":
        return Planned(cat, encode(STATUS_SERVER, 0, _auth(), b"", secret))
    if cat == "junk":
        junk = rng.randbytes(rng.randint(1, 700))
        if rng.random() < 0.5:  # a plausible header: version 1, a known or unknown type
            junk = bytes([1, rng.choice([1, 2, 3, 4, 5, 6, 7, 15, 32, 35, 36, 99])]) + junk
        return Planned(cat, _request(junk, secret))
    if cat == "truncated":
        dev, msg = fleet.fresh_request()
        return Planned(cat, _request(msg[:rng.randint(1, len(msg) - 1)], secret, dev.device_id))
    if cat == "oversized":
        dev, msg = fleet.fresh_request()
        padded = msg + rng.randbytes(3900 - len(msg))  # 16 attributes: the packet stays under 4096
        return Planned(cat, _request(padded, secret, dev.device_id))
    if cat == "tampered":
        dev, msg = fleet.fresh_request()
        b = bytearray(msg)
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] ^= rng.randint(1, 255)
        return Planned(cat, _request(bytes(b), secret, dev.device_id))
    if cat == "forged":
        return Planned(cat, _request(_forged(fleet, rng), secret))
    if cat == "replayed":
        o = rng.choice(answered_valid)
        return Planned(cat, _request(o.planned.message, secret, o.planned.device.device_id))
    if cat == "resent":
        for _ in range(20):
            o = rng.choice(answered)
            if o.planned.slot not in used_resent:
                break
        used_resent.add(o.planned.slot)
        return Planned(cat, o.planned.data, slot=o.planned.slot, same_answer=o.raw)
    if cat == "no-ma":
        dev, msg = fleet.fresh_request()
        return Planned(cat, _request(msg, secret, dev.device_id, ma="none"), silent=True, lax=rng.random() < 0.5)
    if cat == "bad-ma":
        dev, msg = fleet.fresh_request()
        return Planned(cat, _request(msg, secret, dev.device_id, ma=rng.choice(["other", "zero"])), silent=True)
    if cat == "bad-code":
        dev, msg = fleet.fresh_request()
        code = rng.choice([ACCOUNTING_REQUEST, ACCESS_ACCEPT, ACCESS_REJECT, COA_REQUEST, 0, 255])
        return Planned(cat, _request(msg, secret, dev.device_id, code=code), silent=True)
    if cat == "bad-length":
        return Planned(cat, _bad_length(fleet, secret, rng), silent=True)
    if cat == "huge":
        dev, msg = fleet.fresh_request()
        data = _request(msg, secret, dev.device_id)
        data += rng.randbytes(rng.randint(4097, 9000) - len(data))
        return Planned(cat, data[:2] + struct.pack("!H", min(len(data), 65535)) + data[4:], silent=True)
    raise AssertionError(cat)


def _forged(fleet: Fleet, rng: random.Random) -> bytes:
    """Well-formed requests that no proof backs."""
    how = rng.randrange(4)
    dev, msg = fleet.fresh_request()
    req = m.decode(msg)
    if how == 0:  # another device's DRT under this device's id and a MAC from the other's LLK
        other = fleet.device()
        req.drt = other.registration.drt
        req.mac = hmac.new(other.registration.llk, req.body(), hashlib.sha256).digest()
    elif how == 1:  # a made-up MAC
        req.mac = rng.randbytes(32)
    elif how == 2:  # a device the realm never enrolled
        req.device_id = f"ghost-{rng.randrange(10**6)}"
    else:  # a registration signed by a key that is not the device's
        reg = m.RegisterRequest(req.realm, dev.device_id, req.server_id, int(time.time()), rng.randbytes(16))
        reg.signature = DeviceKey.generate().sign(reg.body())
        return reg.encode()
    return req.encode()


def _bad_length(fleet: Fleet, secret: bytes, rng: random.Random) -> bytes:
    dev, msg = fleet.fresh_request()
    good = _request(msg, secret, dev.device_id)
    how = rng.randrange(6)
    if how == 0:  # Length below the header
        return good[:2] + struct.pack("!H", rng.randint(0, 19)) + good[4:]
    if how == 1:  # Length beyond the datagram
        return good[:2] + struct.pack("!H", len(good) + rng.randint(1, 200)) + good[4:]
    if how == 2:  # Length above 4096 (and a datagram that long)
        data = good + rng.randbytes(4200 - len(good))
        return data[:2] + struct.pack("!H", len(data)) + data[4:]
    if how == 3:  # a datagram shorter than a header
        return good[:rng.randint(0, 19)]
    # an attribute whose length is 0 or 1 (how 4), or runs past the end (how 5); the
    # Message-Authenticator recomputed over the packet as sent
    attrs = attribute(USER_NAME, dev.device_id.encode()) + tessera_attributes(msg)
    bad = bytes([USER_NAME, rng.choice([0, 1])]) + b"xx" if how == 4 else bytes([USER_NAME, 200]) + b"xx"
    return encode(ACCESS_REQUEST, 0, _auth(), attrs + bad, secret)


# -- the flood ---------------------------------------------------------------------------------------
@dataclass
class Report:
    sent: collections.Counter = field(default_factory=collections.Counter)
    right: collections.Counter = field(default_factory=collections.Counter)
    wrong: collections.Counter = field(default_factory=collections.Counter)
    unanswered: collections.Counter = field(default_factory=collections.Counter)  # silent ones: as they must be
    codes: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    problems: list = field(default_factory=list)  # the first wrong answers, described
    rss_kib: list = field(default_factory=list)  # (when, VmRSS kB): before, middle, after
    rss_rounds: list = field(default_factory=list)  # VmRSS kB after each round
    seconds: float = 0.0
    status_answers: list = field(default_factory=list)
    log_findings: list = field(default_factory=list)
    pid_changed: bool = False

    def wrong_total(self) -> int:
        return sum(self.wrong.values()) + len(self.log_findings) + int(self.pid_changed) + self.status_answers.count(False)

    def lines(self) -> list[str]:
        out = [f"{'category':<11} {'sent':>8} {'right':>8} {'wrong':>6} {'no answer':>10}  answers"]
        for cat in WEIGHTS:
            if not self.sent[cat]:
                continue
            codes = ", ".join(f"{k}:{v}" for k, v in sorted(self.codes[cat].items(), key=lambda kv: -kv[1])[:6])
            out.append(f"{cat:<11} {self.sent[cat]:>8,} {self.right[cat]:>8,} {self.wrong[cat]:>6,} "
                       f"{self.unanswered[cat]:>10,}  {codes}")
        total = sum(self.sent.values())
        out.append(f"{'total':<11} {total:>8,} {sum(self.right.values()):>8,} {sum(self.wrong.values()):>6,} "
                   f"{sum(self.unanswered.values()):>10,}  in {self.seconds:.1f} s ({total / max(self.seconds, 1e-9):,.0f}/s)")
        out.append("radiusd RSS: " + ", ".join(f"{w} {kib / 1024:.1f} MiB" for w, kib in self.rss_kib))
        out.append("  after each round (MiB): " + " ".join(f"{kib / 1024:.1f}" for kib in self.rss_rounds))
        out.append(f"Status-Server answered: {self.status_answers}; same PID and start time: {not self.pid_changed}")
        out.append(f"log: {len(self.log_findings)} internal errors or tracebacks" +
                   (": " + "; ".join(self.log_findings[:3]) if self.log_findings else ""))
        out += [f"WRONG: {p}" for p in self.problems[:20]]
        return out


def _describe(a: Answer | None) -> str:
    if a is None:
        return "no valid answer"
    name = {ACCESS_ACCEPT: "Accept", ACCESS_REJECT: "Reject"}.get(a.code, f"code {a.code}")
    return f"{name} error={a.tessera_error} {a.reply_message[:80]!r}"


def judge(o: Outcome, report: Report) -> None:
    """Count the outcome right or wrong by its category's rule."""
    p, a, cat = o.planned, o.answer, o.planned.category
    report.sent[cat] += 1
    if p.silent:
        if o.raw is None:
            report.unanswered[cat] += 1
            report.right[cat] += 1
        else:
            report.codes[cat]["answered!"] += 1
            _wrong(report, cat, f"{cat}: the server answered a packet it must drop ({len(o.raw)} bytes back)")
        return
    if o.raw is None:
        report.unanswered[cat] += 1
        report.codes[cat]["none"] += 1
        _wrong(report, cat, f"{cat}: no answer within the timeout")
        return
    if a is None:
        report.codes[cat]["unauthentic"] += 1
        _wrong(report, cat, f"{cat}: an answer that does not verify with the secret")
        return
    key = "accept" if a.code == ACCESS_ACCEPT else f"reject:{a.tessera_error}" if a.code == ACCESS_REJECT else f"code{a.code}"
    report.codes[cat][key] += 1
    ok, why = _rule(o)
    if ok:
        report.right[cat] += 1
    else:
        _wrong(report, cat, f"{cat}: {why} (got {_describe(a)})")


def _rule(o: Outcome) -> tuple[bool, str]:
    p, a, cat = o.planned, o.answer, o.planned.category
    if cat == "valid":
        if a.code != ACCESS_ACCEPT:
            return False, "a valid request was not accepted"
        try:
            p.device.ticket_reply(a.tessera_reply, time.time())
        except Exception as exc:  # noqa: BLE001 -- any refusal by the device core is a wrong answer
            return False, f"the device core refused the reply: {type(exc).__name__}: {exc}"
        return True, ""
    if cat == "status":
        return a.code == ACCESS_ACCEPT, "Status-Server not answered with Access-Accept"
    if cat == "resent":
        if o.raw == p.same_answer:
            return True, ""
        return a.code == ACCESS_REJECT, "a resent datagram got a new Accept"
    if a.code != ACCESS_REJECT:
        return False, "accepted"
    if a.tessera_error == INTERNAL_ERROR or a.reply_message == "internal error":
        return False, "an exception escaped the core (internal error)"
    if cat == "replayed":
        return a.tessera_error == 15, "a replayed message was not refused as a replay"
    if cat in ("truncated", "oversized"):
        return a.tessera_error == 2, "not refused as malformed"
    return (a.tessera_error is not None or a.reply_message != ""), "a reject without a reason"


def _wrong(report: Report, cat: str, text: str) -> None:
    report.wrong[cat] += 1
    if len(report.problems) < 50:
        report.problems.append(text)


def flood(host: str, port: int, secret: bytes, plan: list[Planned], tracked: list[socket.socket],
          silent: list[socket.socket], lax: socket.socket | None, window: int = 256,
          timeout: float = 3.0) -> list[Outcome]:
    """Send the plan: tracked packets with up to ``window`` in flight (one per free slot),
    silent ones interleaved; wait ``timeout`` for the last answers and for silence."""
    slots = [(s, i) for i in range(IDS) for s in range(len(tracked))]
    rr = 0
    outstanding: dict[tuple[int, int], tuple[float, Planned, bytes]] = {}
    outcomes: list[Outcome] = []
    silent_sent: list[tuple[int, Planned]] = []  # (socket index, planned)
    silent_answers: dict[int, list[bytes]] = collections.defaultdict(list)
    poller = select.epoll()
    fds = {}
    for k, s in enumerate(tracked):
        poller.register(s.fileno(), select.EPOLLIN)
        fds[s.fileno()] = ("t", k)
    for k, s in enumerate(silent + ([lax] if lax else [])):
        poller.register(s.fileno(), select.EPOLLIN)
        fds[s.fileno()] = ("s", k)
    all_silent = silent + ([lax] if lax else [])
    i = 0
    try:
        while i < len(plan) or outstanding:
            now = time.monotonic()
            while i < len(plan):
                p = plan[i]
                if p.silent:
                    k = len(silent) if p.lax and lax else i % len(silent)
                    if len(p.data) >= 2:  # any Identifier (none repeats on one socket within a round's burst)
                        p.data = p.data[:1] + bytes([i % IDS]) + p.data[2:]
                        if p.data[20:22] == bytes([MESSAGE_AUTHENTICATOR, 18]) and p.category not in ("bad-ma", "bad-length"):
                            p.data = _resign(p.data, secret)
                    try:
                        all_silent[k].sendto(p.data, (host, port))
                    except BlockingIOError:
                        break
                    except OSError:
                        pass  # e.g. EMSGSIZE: nothing left this host
                    silent_sent.append((k, p))
                    i += 1
                    continue
                if len(outstanding) >= window:
                    break
                if p.slot is None:
                    for _ in range(len(slots)):
                        cand = slots[rr % len(slots)]
                        rr += 1
                        if cand not in outstanding:
                            p.slot = cand
                            break
                    else:
                        break
                elif p.slot in outstanding:
                    break  # a resent datagram waits for its own slot
                data = p.data if p.category == "resent" else p.data[:1] + bytes([p.slot[1]]) + p.data[2:]
                if p.category != "resent" and p.data[20:22] == bytes([MESSAGE_AUTHENTICATOR, 18]):
                    data = _resign(data, secret)  # the Identifier is under the Message-Authenticator
                try:
                    tracked[p.slot[0]].send(data)
                except BlockingIOError:
                    break
                p.data = data
                outstanding[p.slot] = (now, p, data)
                i += 1
            for fd, _ in poller.poll(0.02):
                kind, k = fds[fd]
                sock = tracked[k] if kind == "t" else all_silent[k]
                while True:
                    try:
                        data = sock.recv(65535)
                    except (BlockingIOError, ConnectionRefusedError):
                        break
                    if kind == "s":
                        silent_answers[k].append(data)
                        continue
                    if len(data) < 2:
                        continue
                    entry = outstanding.get((k, data[1]))
                    if entry is None:
                        continue  # late, or for a slot already judged: ignored
                    _, p, sent = entry
                    answer = verify_answer(data, sent, secret)
                    del outstanding[(k, data[1])]
                    outcomes.append(Outcome(p, answer, data))
            now = time.monotonic()
            for slot in [s for s, (t, _, _) in outstanding.items() if now - t > timeout]:
                _, p, _ = outstanding.pop(slot)
                outcomes.append(Outcome(p, None, None))
        # silence: give the silent packets as long as the tracked ones had to be answered
        deadline = time.monotonic() + min(timeout, 1.0)
        while time.monotonic() < deadline:
            for fd, _ in poller.poll(0.05):
                kind, k = fds[fd]
                if kind == "s":
                    try:
                        while True:
                            silent_answers[k].append(all_silent[k].recv(65535))
                    except (BlockingIOError, ConnectionRefusedError):
                        pass
    finally:
        poller.close()
    # a silent socket that got n answers: its first n packets are counted as answered (any is wrong)
    answered_count = {k: len(v) for k, v in silent_answers.items()}
    for k, p in silent_sent:
        if answered_count.get(k, 0) > 0:
            answered_count[k] -= 1
            outcomes.append(Outcome(p, None, silent_answers[k][0]))
        else:
            outcomes.append(Outcome(p, None, None))
    return outcomes


def _resign(packet: bytes, secret: bytes) -> bytes:
    zeroed = packet[:22] + bytes(16) + packet[38:]
    return packet[:22] + hmac.new(secret, zeroed, hashlib.md5).digest() + packet[38:]


# -- the server's health -------------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def start_time(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[19])


def status_server(host: str, port: int, secret: bytes, timeout: float = 2.0) -> bool:
    req = encode(STATUS_SERVER, 7, _auth(), b"", secret)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        s.settimeout(timeout)
        s.send(req)
        try:
            a = verify_answer(s.recv(4096), req, secret)
        except (socket.timeout, ConnectionRefusedError):
            return False
    return a is not None and a.code == ACCESS_ACCEPT


LOG_PROBLEMS = re.compile(r"internal error|Traceback|python3?:.*(?:Error|Exception)", re.I)


def run(host: str, port: int, secret: bytes, pid: int, fleet: Fleet, requests: int, log_path: Path | None = None,
        rounds: int | None = None, window: int = 256, tracked_sockets: int = 8, silent_sockets: int = 4,
        seed: int = 1, lax: bool = True, progress=None) -> Report:
    """Flood the server at host:port (radiusd ``pid``) with ``requests`` packets in ``rounds``."""
    rng = random.Random(seed)
    report = Report()
    rounds = rounds or max(2, requests // 10_000)
    log_start = log_path.stat().st_size if log_path and log_path.exists() else 0
    started = start_time(pid)
    report.status_answers.append(status_server(host, port, secret))
    report.rss_kib.append(("before", rss_kib(pid)))
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    def sock(bind: str | None = None, connect: bool = True) -> socket.socket:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        if bind:
            s.bind((bind, 0))
        if connect:
            s.connect((host, port))
        s.setblocking(False)
        return s

    tracked = [sock() for _ in range(tracked_sockets)]
    silent = [sock(connect=False) for _ in range(silent_sockets)]
    lax_sock = sock(LAX_SOURCE, connect=False) if lax else None
    earlier: list[Outcome] = []
    t0 = time.monotonic()
    try:
        for r in range(rounds):
            count = requests // rounds + (1 if r < requests % rounds else 0)
            plan = plan_round(fleet, secret, count, rng, earlier)
            outcomes = flood(host, port, secret, plan, tracked, silent, lax_sock, window)
            for o in outcomes:
                judge(o, report)
            earlier = outcomes
            report.rss_rounds.append(rss_kib(pid))
            if r == rounds // 2 - 1 or rounds == 1:
                report.rss_kib.append(("middle", report.rss_rounds[-1]))
                report.status_answers.append(status_server(host, port, secret))
            if progress:
                progress(f"round {r + 1}/{rounds}: {len(outcomes)} packets, {sum(report.wrong.values())} wrong so far")
    finally:
        report.seconds = time.monotonic() - t0
        for s in tracked + silent + ([lax_sock] if lax_sock else []):
            s.close()
    report.status_answers.append(status_server(host, port, secret))
    report.rss_kib.append(("after", rss_kib(pid)))
    report.pid_changed = not Path(f"/proc/{pid}").exists() or start_time(pid) != started
    if log_path and log_path.exists():
        with open(log_path, "rb") as f:
            f.seek(log_start)
            text = f.read().decode(errors="replace")
        report.log_findings = [line.strip()[:200] for line in text.splitlines() if LOG_PROBLEMS.search(line)]
    return report


def devices_needed(requests: int, per_device: int = 400) -> int:
    """Enough devices that the valid requests of one replay window stay under each one's quota."""
    valid = requests * WEIGHTS["valid"] * 2 // sum(WEIGHTS.values())  # valid ones and their kin use quota
    return max(4, -(-valid // per_device))


# -- stand-alone: a private radiusd with a fresh realm -------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--rounds", type=int, help="default: one per 10,000 requests")
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--clock-skew", type=int, default=300,
                   help="the realm's skew window (s); accepted proofs stay in the replay cache 2x this long")
    a = p.parse_args(argv)

    from tessera.lab import radiusd
    from tessera.lab.pki import LabPKI
    from tessera.realm import Realm, create_kek
    from tessera.service import Policy
    from tessera.sqlite_registry import SQLiteRegistry

    with tempfile.TemporaryDirectory(prefix="tessera-hostile-") as tmp:
        work = Path(tmp)
        now = time.time()
        realm = Realm.init(SQLiteRegistry(str(work / "registry.db")), create_kek(str(work / "kek")), "lab.example", now,
                           Policy(clock_skew=a.clock_skew))
        tls = LabPKI.generate(now).install_server_files(work / "tls", "radius.lab", now)
        cfg = radiusd.RadiusConfig(db=work / "registry.db", kek=work / "kek", tls_dir=tls, server_id="radius-1",
                                   secret="hostile-device-secret", nas_secret="hostile-nas-secret",
                                   extra_clients=(radiusd.Client("lax-device", LAX_SOURCE, "hostile-device-secret",
                                                                 require_message_authenticator=False),))
        raddb = radiusd.build_config(work / "raddb", cfg)
        radiusd.check_config(raddb)
        server = radiusd.RadiusServer.for_config(raddb, cfg)
        try:
            server.start()
            entry = Server(cfg.server_id, cfg.address, cfg.port, cfg.secret.encode())
            t = time.monotonic()
            fleet = Fleet(realm, entry, devices_needed(a.requests))
            print(f"{len(fleet.members)} devices enrolled and registered over RADIUS in {time.monotonic() - t:.1f} s; "
                  f"radiusd PID {server.pid}", flush=True)
            report = run(cfg.address, cfg.port, cfg.secret.encode(), server.pid, fleet, a.requests, server.log_file,
                         a.rounds, a.window, seed=a.seed, progress=lambda s: print(s, flush=True))
        finally:
            server.stop()
    print("\n".join(report.lines()))
    if report.wrong_total():
        print(f"FAILED: {report.wrong_total()} wrong answers or server problems", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
