"""Tickets: what the service seals for itself, and the parts it seals for a device.

Service-sealed tickets (only a server of the realm opens them; the server keeps no copy):

    kind u8 | version u8 | kvno u32 | nonce[12] | AES-256-GCM(ticket key[kvno, kind], body) | tag[16]
    associated data = kind | version | kvno | realm

* `RegistrationTicket` (kind 1) — the DRT's service part: device id, registration generation,
  validity, and the LLK. The device presents it when it proves possession of the LLK.
* `GrantingTicket` (kind 2) — the TGT's service part: device id, generation, validity, the end
  of the registration (renewals never outlive it), and the STK.

The ticket key differs per kind (HKDF label) and per realm, so a DRT never opens as a TGT and a
ticket of one realm never opens in another. Sizes for a 16-character device id: DRT 103 bytes,
TGT 111 bytes (see tests/unit/test_size.py).

Byte layout: docs/layouts.md#service-sealed-tickets
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import kdf
from .errors import ExpiredError, InvalidTicket, MalformedError, NotYetValidError, UnsupportedVersionError
from .servicekey import KeyRing
from .wire import Reader, Writer

VERSION = 1
KIND_DRT = 1
KIND_TGT = 2
_HEADER = struct.Struct("!BBI")  # kind, version, kvno
_HEADER_LEN = _HEADER.size
_U32_U64_U64 = struct.Struct("!IQQ")
_U32_U64_U64_U64 = struct.Struct("!IQQQ")
MAX_TICKET = 400


@dataclass(frozen=True)
class RegistrationTicket:
    device_id: str
    generation: int
    not_before: int
    not_after: int
    llk: bytes

    KIND = KIND_DRT
    LABEL = kdf.TICKET_DRT

    def __repr__(self) -> str:
        return f"RegistrationTicket({self.device_id!r}, gen={self.generation}, {self.not_before}..{self.not_after})"

    def body(self) -> bytes:
        return (Writer().push_str(self.device_id, 64)
                .push_bytes(_U32_U64_U64.pack(self.generation, self.not_before, self.not_after))
                .push_bytes(self.llk).getvalue())

    _TAIL = struct.Struct("!IQQ32s")  # generation, not_before, not_after, llk

    @classmethod
    def parse(cls, r: Reader) -> "RegistrationTicket":
        return cls(r.pull_str(64), *cls._TAIL.unpack(r.pull_bytes(cls._TAIL.size)))


@dataclass(frozen=True)
class GrantingTicket:
    device_id: str
    generation: int
    not_before: int
    not_after: int
    registration_not_after: int
    stk: bytes

    KIND = KIND_TGT
    LABEL = kdf.TICKET_TGT

    def __repr__(self) -> str:
        return f"GrantingTicket({self.device_id!r}, gen={self.generation}, {self.not_before}..{self.not_after})"

    def body(self) -> bytes:
        return (Writer().push_str(self.device_id, 64)
                .push_bytes(_U32_U64_U64_U64.pack(self.generation, self.not_before, self.not_after,
                                                  self.registration_not_after))
                .push_bytes(self.stk).getvalue())

    _TAIL = struct.Struct("!IQQQ32s")  # generation, not_before, not_after, registration_not_after, stk

    @classmethod
    def parse(cls, r: Reader) -> "GrantingTicket":
        return cls(r.pull_str(64), *cls._TAIL.unpack(r.pull_bytes(cls._TAIL.size)))


Ticket = RegistrationTicket | GrantingTicket


def _header(kind: int, kvno: int) -> bytes:
    return _HEADER.pack(kind, VERSION, kvno)


def seal_ticket(ring: KeyRing, ticket: Ticket, now: int, nonce: bytes) -> bytes:
    """Seal a ticket under the current service key."""
    kvno = ring.current.kvno
    header = _header(ticket.KIND, kvno)
    return header + ring.sealer(kvno, ticket.LABEL, now).seal(nonce, ticket.body(), header + ring.realm_bytes)


def ticket_kvno(blob: bytes) -> int:
    """The key version a sealed ticket names (for logs and rotation tests)."""
    r = Reader(blob[:_HEADER_LEN])
    r.pull_u8(), r.pull_u8()
    return r.pull_u32()


def open_ticket(ring: KeyRing, blob: bytes, cls: type[Ticket], now: int) -> Ticket:
    """Open a service-sealed ticket of kind `cls`. Does not check validity (see `check_validity`)."""
    if len(blob) > MAX_TICKET:
        raise MalformedError("ticket too long")
    if len(blob) < _HEADER_LEN:
        raise MalformedError(f"truncated: a ticket of {len(blob)} bytes has no header")
    kind, version, kvno = _HEADER.unpack_from(blob)
    if version != VERSION:
        raise UnsupportedVersionError(f"ticket version {version}")
    if kind != cls.KIND:
        raise InvalidTicket(f"ticket kind {kind} where {cls.KIND} is expected")
    header = blob[:_HEADER_LEN]
    body = ring.sealer(kvno, cls.LABEL, now).open(blob[_HEADER_LEN:], header + ring.realm_bytes)
    try:
        br = Reader(body)
        t = cls.parse(br)
        br.finish()
    except MalformedError as exc:  # authentic but unparseable: a bug or a foreign version
        raise InvalidTicket(f"ticket body does not parse: {exc}") from None
    return t


def check_validity(not_before: int, not_after: int, now: int, skew: int, what: str) -> None:
    """Raise NotYetValid / Expired for an interval checked at `now`, allowing `skew` seconds."""
    if now + skew < not_before:
        raise NotYetValidError(f"{what} valid from {not_before}, now {now}")
    if now >= not_after + skew:
        raise ExpiredError(f"{what} expired at {not_after}, now {now}")
