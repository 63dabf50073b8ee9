"""Messages: the requests and replies carried in RADIUS attributes, and the peer frames.

Every message starts with `version u8 | type u8`, followed by its fields in the order its
`FIELDS` table gives. Field codecs are bounded (see wire.py); a message that ends early, runs on,
or has a field longer than its bound raises `MalformedError`. The last field of a request is its
proof (signature or MAC) over `body()` — every byte before it.

    type  message            carried in           proof
    1     RegisterRequest    Tessera-Message      ECDSA by the device key
    2     RegisterReply      Tessera-Reply        ECDSA by the service key
    3     AuthRequest        Tessera-Message      HMAC under a key from the LLK
    4     TicketReply        Tessera-Reply        (device part is AEAD)
    5     RenewRequest       Tessera-Message      HMAC under a key from the STK
    6     SessionRequest     Tessera-Message      HMAC under a key from B's STK (+ A's authenticator)
    7     SessionReply       Tessera-Reply        (both parts are AEAD)
    8     SignedError        Tessera-Reply        ECDSA by the service key, over the request's nonce
    9     RevocationQuery    Tessera-Message      none: it asks for public facts and changes nothing
    10    RevocationList     Tessera-Reply        ECDSA by the service key, over the query's nonce
    15    ErrorMessage       Tessera-Reply / frame  none: a device never changes state on it
    32    PeerHello          frame A→B            A's authenticator (HMAC, names B)
    33    PeerTicket         frame B→A            finished MAC of B
    34    PeerFinished       frame A→B            finished MAC of A
    35    PeerData           frame, both ways     AEAD record (record.py)
    36    PeerAnnounce       frame, broadcast     none: a hint that starts a handshake, nothing more
    37    PeerConfirm        frame B→A            confirm MAC of B (B holds the keys: A may send)
    38    PeerFrame          frame, both ways     AEAD record of one inner Ethernet frame (tessera0, tunnel.py)

Sizes (16-character ids, see tests/unit/test_size.py) all fit one Ethernet frame and a few
RADIUS attribute instances of ≤ 247 bytes.

Byte layout: docs/layouts.md#messages
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, fields
from typing import ClassVar

from .errors import MalformedError, UnsupportedVersionError
from .wire import Reader, Writer

VERSION = 1
NONCE_LEN = 16
MAC_LEN = 32
SIG_LEN = 64
MAX_BLOB = 1024
MAX_MESSAGE = 4000
_PROOF_LEN = {"mac": 32, "sig": 64}
MAX_REVOKED = 128  # entries of a RevocationList (docs/layouts.md#revocationlist)


def _pull_revoked(r: Reader) -> tuple:
    count = r.pull_u16()
    if count > MAX_REVOKED:
        raise MalformedError(f"{count} revoked devices listed, at most {MAX_REVOKED}")
    return tuple((r.pull_str(64), r.pull_u64()) for _ in range(count))


# kind → how to read it; each message class keeps its fields' pulls and pushes in order
# (__init_subclass__), so decoding a field is one call, not a walk down an if-chain
_PULL = {
    "id": lambda r: r.pull_str(64),
    "text": lambda r: r.pull_str(255),
    "u16": Reader.pull_u16,
    "u64": Reader.pull_u64,
    "nonce": lambda r: r.pull_bytes(NONCE_LEN),
    "mac": lambda r: r.pull_bytes(MAC_LEN),
    "sig": lambda r: r.pull_bytes(SIG_LEN),
    "sid": lambda r: r.pull_bytes(8),
    "hw": lambda r: r.pull_bytes(6),
    "blob": lambda r: r.pull_vbytes(MAX_BLOB),
    "rest": Reader.pull_rest,
    "revoked": _pull_revoked,
}


def _push_text(w: Writer, v: str) -> None:
    w.push_str(v.encode("utf-8")[:255].decode("utf-8", "ignore"), 255)  # cut at 255 bytes, whole characters


def _push_fixed(want: int, kind: str):
    def push(w: Writer, v: bytes) -> None:
        if len(v) != want:
            raise ValueError(f"{kind} must be {want} bytes")
        w.push_bytes(v)
    return push


def _push_revoked(w: Writer, v) -> None:
    try:
        w.push_bytes(_revoked_bytes(v))
    except TypeError:  # not hashable (a list): encoded afresh
        w.push_bytes(_revoked_bytes.__wrapped__(v))


@functools.lru_cache(maxsize=4)
def _revoked_bytes(v: tuple) -> bytes:
    """A RevocationList's entries, encoded once per value: the service answers every query of
    a second with the same list (128 entries take ~25 µs to encode, the lookup ~1 µs)."""
    if len(v) > MAX_REVOKED:
        raise ValueError(f"at most {MAX_REVOKED} entries")
    w = Writer().push_u16(len(v))
    for device_id, at in v:
        w.push_str(device_id, 64).push_u64(at)
    return w.getvalue()


_PUSH = {
    "id": lambda w, v: w.push_str(v, 64),
    "text": _push_text,
    "u16": Writer.push_u16,
    "u64": Writer.push_u64,
    "nonce": _push_fixed(NONCE_LEN, "nonce"),
    "mac": _push_fixed(MAC_LEN, "mac"),
    "sig": _push_fixed(SIG_LEN, "sig"),
    "sid": _push_fixed(8, "sid"),
    "hw": _push_fixed(6, "hw"),
    "blob": lambda w, v: w.push_vbytes(v, MAX_BLOB),
    "rest": Writer.push_bytes,
    "revoked": _push_revoked,
}


class Message:
    """Base of all messages: a field table drives encode, decode and body."""

    TYPE: ClassVar[int]
    FIELDS: ClassVar[tuple[tuple[str, str], ...]]
    PROOF: ClassVar[str | None] = None  # name of the trailing proof field, if any
    _READS: ClassVar[tuple]  # the pull of each field, in order, from FIELDS
    _WRITES: ClassVar[tuple]  # (name, kind, push) of each field
    _PROOF_SIZE: ClassVar[int] = 0
    _HEAD: ClassVar[bytes]  # version, type

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "FIELDS" in cls.__dict__:
            cls._READS = tuple(_PULL[kind] for _, kind in cls.FIELDS)
            cls._WRITES = tuple((name, kind, _PUSH[kind]) for name, kind in cls.FIELDS)
            cls._PROOF_SIZE = _PROOF_LEN[dict(cls.FIELDS)[cls.PROOF]] if cls.PROOF else 0
            cls._HEAD = bytes((VERSION, cls.TYPE))

    def _write(self, upto: str | None) -> bytes:
        w = Writer().push_bytes(self._HEAD)
        for name, kind, push in self._WRITES:
            if name == upto:
                break
            try:
                push(w, getattr(self, name))
            except (struct.error, ValueError, TypeError, OverflowError, AttributeError) as exc:
                # a time beyond u64, an id over its bound, a nonce of the wrong size: the
                # project's own error, never struct.error (the value itself is not repeated)
                raise MalformedError(f"{type(self).__name__}.{name} cannot be encoded as {kind}: "
                                     f"{type(exc).__name__}") from None
        return w.getvalue()

    def encode(self) -> bytes:
        return self._write(None)

    def body(self) -> bytes:
        """Every byte before the proof: what the signature or MAC covers. For a decoded
        message these are the bytes as received (proofs are fixed-size and last)."""
        raw = self.__dict__.get("_raw")
        if raw is not None and self.PROOF is not None:
            return raw[: len(raw) - self._PROOF_SIZE]
        return self._write(self.PROOF)

    @classmethod
    def _read(cls, r: Reader) -> "Message":
        values = [pull(r) for pull in cls._READS]  # the dataclass fields are FIELDS, in order
        r.finish()
        return cls(*values)

    def __repr__(self) -> str:  # proofs, blobs and sealed parts are not for logs
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n, k in self.FIELDS if k in ("id", "u16", "u64", "text"))
        return f"{type(self).__name__}({shown})"


@dataclass(repr=False)
class RegisterRequest(Message):
    realm: str
    device_id: str
    server_id: str
    timestamp: int
    nonce: bytes
    signature: bytes = b"\x00" * SIG_LEN
    TYPE = 1
    FIELDS = (("realm", "id"), ("device_id", "id"), ("server_id", "id"), ("timestamp", "u64"),
              ("nonce", "nonce"), ("signature", "sig"))
    PROOF = "signature"


@dataclass(repr=False)
class RegisterReply(Message):
    realm: str
    device_id: str
    request_nonce: bytes
    drt: bytes  # the DRT's service part (ticket.RegistrationTicket, sealed)
    device_part: bytes  # LLK + policy sealed to the device public key (ECIES)
    signature: bytes = b"\x00" * SIG_LEN
    TYPE = 2
    FIELDS = (("realm", "id"), ("device_id", "id"), ("request_nonce", "nonce"), ("drt", "blob"),
              ("device_part", "blob"), ("signature", "sig"))
    PROOF = "signature"


@dataclass(repr=False)
class AuthRequest(Message):
    realm: str
    device_id: str
    server_id: str
    timestamp: int
    nonce: bytes
    drt: bytes
    mac: bytes = b"\x00" * MAC_LEN
    TYPE = 3
    FIELDS = (("realm", "id"), ("device_id", "id"), ("server_id", "id"), ("timestamp", "u64"),
              ("nonce", "nonce"), ("drt", "blob"), ("mac", "mac"))
    PROOF = "mac"


@dataclass(repr=False)
class TicketReply(Message):
    realm: str
    device_id: str
    request_nonce: bytes
    tgt: bytes  # the TGT's service part (ticket.GrantingTicket, sealed)
    device_part: bytes  # STK + policy, AEAD under a key from the LLK (or the old STK on renewal)
    TYPE = 4
    FIELDS = (("realm", "id"), ("device_id", "id"), ("request_nonce", "nonce"), ("tgt", "blob"),
              ("device_part", "blob"))


@dataclass(repr=False)
class RenewRequest(Message):
    realm: str
    device_id: str
    server_id: str
    timestamp: int
    nonce: bytes
    tgt: bytes
    mac: bytes = b"\x00" * MAC_LEN
    TYPE = 5
    FIELDS = (("realm", "id"), ("device_id", "id"), ("server_id", "id"), ("timestamp", "u64"),
              ("nonce", "nonce"), ("tgt", "blob"), ("mac", "mac"))
    PROOF = "mac"


@dataclass(repr=False)
class PeerHello(Message):
    """A → B: A's TGT and A's authenticator, which names B (claim 17) and A's Ethernet address:
    B answers there, whichever port the hello came through (docs/layouts.md#peerhello)."""

    realm: str
    initiator: str
    responder: str
    initiator_hw: bytes  # A's MAC (6 bytes; zero: not bound, the frame's source is used)
    timestamp: int
    nonce: bytes
    tgt: bytes
    mac: bytes = b"\x00" * MAC_LEN
    TYPE = 32
    FIELDS = (("realm", "id"), ("initiator", "id"), ("responder", "id"), ("initiator_hw", "hw"),
              ("timestamp", "u64"), ("nonce", "nonce"), ("tgt", "blob"), ("mac", "mac"))
    PROOF = "mac"


@dataclass(repr=False)
class SessionRequest(Message):
    """B → service: B's TGT and request (addressed to one server) plus A's hello, verbatim."""

    realm: str
    device_id: str  # B, the responder
    server_id: str
    timestamp: int
    nonce: bytes
    tgt: bytes
    hello: bytes  # A's PeerHello as received
    mac: bytes = b"\x00" * MAC_LEN
    TYPE = 6
    FIELDS = (("realm", "id"), ("device_id", "id"), ("server_id", "id"), ("timestamp", "u64"),
              ("nonce", "nonce"), ("tgt", "blob"), ("hello", "blob"), ("mac", "mac"))
    PROOF = "mac"


@dataclass(repr=False)
class SessionReply(Message):
    """The shared service ticket: the session key sealed for B and, separately, for A."""

    realm: str
    initiator: str
    responder: str
    initiator_nonce: bytes
    request_nonce: bytes  # B's nonce
    not_after: int
    part_responder: bytes
    part_initiator: bytes
    TYPE = 7
    FIELDS = (("realm", "id"), ("initiator", "id"), ("responder", "id"), ("initiator_nonce", "nonce"),
              ("request_nonce", "nonce"), ("not_after", "u64"), ("part_responder", "blob"),
              ("part_initiator", "blob"))


@dataclass(repr=False)
class SignedError(Message):
    """Service → device: an error the device acts on (clock-skew, revoked, unknown-device,
    superseded, not-registered), signed by the service key over the refused request's realm,
    device id, server id and nonce, so that it answers that request and no other."""

    realm: str
    device_id: str
    server_id: str  # the server the refused request was addressed to
    request_nonce: bytes
    code: int
    server_time: int  # the server's clock when it answered (a device adopts it on clock-skew)
    detail: str
    signature: bytes = b"\x00" * SIG_LEN
    TYPE = 8
    FIELDS = (("realm", "id"), ("device_id", "id"), ("server_id", "id"), ("request_nonce", "nonce"),
              ("code", "u16"), ("server_time", "u64"), ("detail", "text"), ("signature", "sig"))
    PROOF = "signature"


@dataclass(repr=False)
class RevocationQuery(Message):
    """Device → service: 'which devices were revoked lately?' No proof: the answer is public
    within the realm and the query changes nothing; the nonce makes the signed answer fresh."""

    realm: str
    device_id: str
    server_id: str
    timestamp: int
    nonce: bytes
    TYPE = 9
    FIELDS = (("realm", "id"), ("device_id", "id"), ("server_id", "id"), ("timestamp", "u64"),
              ("nonce", "nonce"))


@dataclass(repr=False)
class RevocationList(Message):
    """Service → device: the devices revoked since `complete_since` (server time), each with
    when, signed by the service key over the query's realm, device id, server id and nonce.
    A device drops its sessions with every device listed (docs/layouts.md#revocationlist)."""

    realm: str
    device_id: str
    server_id: str
    request_nonce: bytes
    issued_at: int  # the server's clock
    complete_since: int  # every revocation at or after this time is listed
    revoked: tuple  # ((device_id, revoked_at), ...), newest first, at most MAX_REVOKED
    signature: bytes = b"\x00" * SIG_LEN
    TYPE = 10
    FIELDS = (("realm", "id"), ("device_id", "id"), ("server_id", "id"), ("request_nonce", "nonce"),
              ("issued_at", "u64"), ("complete_since", "u64"), ("revoked", "revoked"), ("signature", "sig"))
    PROOF = "signature"


@dataclass(repr=False)
class ErrorMessage(Message):
    """Unsigned: from the service for errors no device acts on (or when the request was not
    proven), and peer → peer in frames. A device treats a state-changing code in it as a
    transient failure."""

    code: int
    server_time: int  # 0 unless the error is clock skew: lets a device without a set clock recover
    detail: str
    TYPE = 15
    FIELDS = (("code", "u16"), ("server_time", "u64"), ("detail", "text"))


@dataclass(repr=False)
class PeerTicket(Message):
    """B → A: A's part of the shared service ticket, B's Ethernet address (under B's finished
    MAC: A sends there) and B's finished MAC."""

    realm: str
    initiator: str
    responder: str
    initiator_nonce: bytes
    responder_nonce: bytes
    responder_hw: bytes  # B's MAC (6 bytes; zero: not bound)
    not_after: int
    part_initiator: bytes
    finished: bytes = b"\x00" * MAC_LEN
    TYPE = 33
    FIELDS = (("realm", "id"), ("initiator", "id"), ("responder", "id"), ("initiator_nonce", "nonce"),
              ("responder_nonce", "nonce"), ("responder_hw", "hw"), ("not_after", "u64"),
              ("part_initiator", "blob"), ("finished", "mac"))
    PROOF = "finished"


@dataclass(repr=False)
class PeerFinished(Message):
    realm: str
    initiator: str
    responder: str
    initiator_nonce: bytes
    finished: bytes = b"\x00" * MAC_LEN
    TYPE = 34
    FIELDS = (("realm", "id"), ("initiator", "id"), ("responder", "id"), ("initiator_nonce", "nonce"),
              ("finished", "mac"))
    PROOF = "finished"


@dataclass(repr=False)
class PeerData(Message):
    session_id: bytes
    seq: int
    sealed: bytes
    TYPE = 35
    FIELDS = (("session_id", "sid"), ("seq", "u64"), ("sealed", "rest"))


@dataclass(repr=False)
class PeerFrame(Message):
    """A PeerData record whose plaintext is one whole inner Ethernet II frame (dst, src,
    EtherType, payload; no FCS; at least 14 bytes) for the peer's `tessera0` TAP interface.
    Same layout, keys, IVs, sequence space and replay window as PeerData (record.py)."""

    session_id: bytes
    seq: int
    sealed: bytes
    TYPE = 38
    FIELDS = (("session_id", "sid"), ("seq", "u64"), ("sealed", "rest"))


@dataclass(repr=False)
class PeerAnnounce(Message):
    """Neighbour discovery: 'device X of realm R is on this segment'. Unauthenticated on
    purpose — it only prompts the lower device id to start a handshake, which authenticates."""

    realm: str
    device_id: str
    epoch: int  # random per link-up: a change tells neighbours this device lost its sessions
    TYPE = 36
    FIELDS = (("realm", "id"), ("device_id", "id"), ("epoch", "u64"))


@dataclass(repr=False)
class PeerConfirm(Message):
    """B → A after A's PeerFinished: B has the session and sends under it; until A holds this
    (or any record of the new session from B) A keeps sending under the previous key."""

    realm: str
    initiator: str
    responder: str
    initiator_nonce: bytes
    confirm: bytes = b"\x00" * MAC_LEN
    TYPE = 37
    FIELDS = (("realm", "id"), ("initiator", "id"), ("responder", "id"), ("initiator_nonce", "nonce"),
              ("confirm", "mac"))
    PROOF = "confirm"


MESSAGES: dict[int, type[Message]] = {
    m.TYPE: m for m in (RegisterRequest, RegisterReply, AuthRequest, TicketReply, RenewRequest,
                        SessionRequest, SessionReply, SignedError, RevocationQuery, RevocationList, ErrorMessage,
                        PeerHello, PeerTicket, PeerFinished, PeerData, PeerAnnounce, PeerConfirm, PeerFrame)
}


def decode(data: bytes, expect: tuple[type[Message], ...] | None = None) -> Message:
    """Decode any message; `expect` limits the acceptable types (else MalformedError)."""
    if len(data) > MAX_MESSAGE:
        raise MalformedError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    r = Reader(data)
    version, mtype = r.pull_u8(), r.pull_u8()
    if version != VERSION:
        raise UnsupportedVersionError(f"message version {version}")
    cls = MESSAGES.get(mtype)
    if cls is None:
        raise MalformedError(f"unknown message type {mtype}")
    if expect is not None and cls not in expect:
        raise MalformedError(f"unexpected {cls.__name__}")
    msg = cls._read(r)
    msg.__dict__["_raw"] = bytes(data)  # decoded messages are read as received, not re-encoded
    return msg


def field_names(cls: type[Message]) -> list[str]:
    return [f.name for f in fields(cls)]
