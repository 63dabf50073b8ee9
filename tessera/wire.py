"""Bounded, paired codecs (after aioquic's Buffer and dnspython's restrict_to).

Every field is pulled from a `Reader` that never reads past its end: a short input raises
`MalformedError`, never IndexError or struct.error. Every `pull_*` has a `push_*` twin on
`Writer`, and message codecs are written as pairs with round-trip tests.

Byte layout: docs/layouts.md#encodings
"""

from __future__ import annotations

import struct

from .errors import MalformedError

_U8, _U16, _U32, _U64 = (struct.Struct(f) for f in ("!B", "!H", "!I", "!Q"))


class Reader:
    """Reads fields from a bytes object; every read is bounds-checked."""

    __slots__ = ("_data", "_pos", "_end")

    def __init__(self, data: bytes):
        self._data = bytes(data)
        self._pos = 0
        self._end = len(self._data)

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    @property
    def consumed(self) -> bytes:
        """The bytes read so far (for binding a signature or MAC to a header)."""
        return self._data[: self._pos]

    def _take(self, n: int) -> bytes:
        if n < 0 or self._pos + n > self._end:
            raise MalformedError(f"truncated: need {n} bytes, {self.remaining} left")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def pull_u8(self) -> int:
        return self._take(1)[0]

    def pull_u16(self) -> int:
        return _U16.unpack(self._take(2))[0]

    def pull_u32(self) -> int:
        return _U32.unpack(self._take(4))[0]

    def pull_u64(self) -> int:
        return _U64.unpack(self._take(8))[0]

    def pull_bytes(self, n: int) -> bytes:
        return self._take(n)

    def pull_vbytes(self, max_len: int = 255) -> bytes:
        """A byte string with a one-byte length (≤ 255) or two-byte length (max_len > 255)."""
        n = self.pull_u8() if max_len <= 255 else self.pull_u16()
        if n > max_len:
            raise MalformedError(f"field of {n} bytes exceeds {max_len}")
        return self._take(n)

    def pull_str(self, max_len: int = 255) -> str:
        raw = self.pull_vbytes(max_len)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedError("text field is not UTF-8") from exc

    def pull_rest(self) -> bytes:
        return self._take(self.remaining)

    def finish(self) -> None:
        """Require that everything was read (trailing bytes are a format error)."""
        if self.remaining:
            raise MalformedError(f"{self.remaining} trailing bytes")


class Writer:
    """Builds a byte string field by field; the twin of `Reader`."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def push_u8(self, v: int) -> "Writer":
        self._parts.append(_U8.pack(v))
        return self

    def push_u16(self, v: int) -> "Writer":
        self._parts.append(_U16.pack(v))
        return self

    def push_u32(self, v: int) -> "Writer":
        self._parts.append(_U32.pack(v))
        return self

    def push_u64(self, v: int) -> "Writer":
        self._parts.append(_U64.pack(v))
        return self

    def push_bytes(self, b: bytes) -> "Writer":
        self._parts.append(bytes(b))
        return self

    def push_vbytes(self, b: bytes, max_len: int = 255) -> "Writer":
        if len(b) > max_len:
            raise ValueError(f"field of {len(b)} bytes exceeds {max_len}")
        self._parts.append(_U8.pack(len(b)) if max_len <= 255 else _U16.pack(len(b)))
        self._parts.append(bytes(b))
        return self

    def push_str(self, s: str, max_len: int = 255) -> "Writer":
        return self.push_vbytes(s.encode("utf-8"), max_len)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)
