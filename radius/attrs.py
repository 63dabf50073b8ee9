"""Splitting Tessera messages over several RADIUS attribute instances, and joining them back.

How this works: a Tessera message (request or reply) can be longer than one RADIUS attribute
holds. It travels as several instances of one ordinary vendor-specific attribute, each value
at most ``MAX_CHUNK`` (247) bytes, in order; the receiver concatenates them. This is the one
encoding that FreeRADIUS 3.2.1, radclient and pyrad 2.6 all handle in both directions (see
docs/freeradius.md). A RADIUS packet is at most 4096 bytes, which bounds a message to about
3.8 kB: ``MAX_MESSAGE`` makes that bound explicit so a sender fails early and clearly.

Also here: the conversions rlm_python3 needs, because FreeRADIUS hands octets to Python as
``'0x…'`` hex strings and cuts ``bytes`` return values at the first NUL.

Pure functions only: no sockets, no pyrad, no FreeRADIUS.
"""

from __future__ import annotations

import binascii
from typing import Iterable

#: Largest value of one Tessera VSA instance: 255 - 2 (attribute header) - 6 (vendor header).
MAX_CHUNK = 247
#: Largest message that fits one 4096-byte RADIUS packet next to the other attributes
#: (header 20, Message-Authenticator 18, User-Name and a little headroom).
MAX_MESSAGE = 15 * MAX_CHUNK  # 3705 bytes: 15 instances of 255 bytes = 3825 on the wire


class MessageTooLongError(ValueError):
    """The message does not fit into one RADIUS packet."""


class BadHexError(ValueError):
    """An rlm_python3 octets value is not the ``0x…`` hex string FreeRADIUS produces."""


def split_message(message: bytes, chunk: int = MAX_CHUNK) -> list[bytes]:
    """Cut ``message`` into consecutive pieces of at most ``chunk`` bytes.

    An empty message becomes one empty piece, so that "a message was sent" survives the trip.
    Raises ``MessageTooLongError`` above ``MAX_MESSAGE``.
    """
    if not 1 <= chunk <= MAX_CHUNK:
        raise ValueError(f"chunk must be 1..{MAX_CHUNK}, not {chunk}")
    if len(message) > MAX_MESSAGE:
        raise MessageTooLongError(f"message of {len(message)} bytes exceeds {MAX_MESSAGE}")
    if not message:
        return [b""]
    return [bytes(message[i:i + chunk]) for i in range(0, len(message), chunk)]


def join_message(pieces: Iterable[bytes]) -> bytes:
    """Concatenate attribute values received in order (the inverse of ``split_message``)."""
    return b"".join(pieces)


def to_hex(value: bytes) -> str:
    """Render octets the way rlm_python3 must return them: ``"0x"`` + lowercase hex."""
    return "0x" + bytes(value).hex()


def from_hex(value: str) -> bytes:
    """Parse an rlm_python3 octets value (``'0x…'``) into bytes.

    Raises ``BadHexError`` for anything else (a missing prefix, odd length, non-hex digits).
    """
    if not isinstance(value, str) or value[:2] not in ("0x", "0X"):
        raise BadHexError("octets value without 0x prefix")
    try:  # unhexlify takes only pairs of hex digits (bytes.fromhex would skip whitespace: "0x 01")
        return binascii.unhexlify(value[2:])
    except ValueError:  # binascii.Error (odd length, not a hex digit), or a non-ASCII character
        raise BadHexError("octets value is not valid hex") from None


def split_to_hex(message: bytes) -> list[str]:
    """``split_message`` followed by ``to_hex`` on each piece (the plugin's reply side), done as
    one hex conversion of the message cut into pieces of ``2 * MAX_CHUNK`` digits."""
    if len(message) > MAX_MESSAGE:
        raise MessageTooLongError(f"message of {len(message)} bytes exceeds {MAX_MESSAGE}")
    digits, step = bytes(message).hex(), 2 * MAX_CHUNK
    return ["0x" + digits[i:i + step] for i in range(0, len(digits), step)] or ["0x"]


def reply_items(name: str, message: bytes) -> tuple[tuple[str, str, str], ...]:
    """``split_to_hex`` as rlm_python3 reply items: ``(name, "+=", "0x…")`` each, in order."""
    return tuple([(name, "+=", h) for h in split_to_hex(message)])


def join_from_hex(values: Iterable[str]) -> bytes:
    """``from_hex`` on each value followed by ``join_message`` (the plugin's request side), done
    as one hex conversion: each value is checked for its prefix and an even number of digits
    first, so that no two values' digits can pair up across their boundary."""
    digits = []
    for v in values:
        if not isinstance(v, str) or v[:2] not in ("0x", "0X"):
            raise BadHexError("octets value without 0x prefix")
        if len(v) & 1:
            raise BadHexError("octets value is not valid hex")
        digits.append(v[2:])
    try:
        return binascii.unhexlify("".join(digits))
    except ValueError:  # binascii.Error (not a hex digit), or a non-ASCII character
        raise BadHexError("octets value is not valid hex") from None
