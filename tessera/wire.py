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

    def _short(self, n: int, pos: int) -> MalformedError:
        return MalformedError(f"truncated: need {n} bytes, {self._end - pos} left")

    # Each pull reads in place with one bounds check: a request has ~20 fields.
    def pull_u8(self) -> int:
        pos = self._pos
        if pos >= self._end:
            raise self._short(1, pos)
        self._pos = pos + 1
        return self._data[pos]

    def pull_u16(self) -> int:
        pos = self._pos
        if pos + 2 > self._end:
            raise self._short(2, pos)
        self._pos = pos + 2
        return _U16.unpack_from(self._data, pos)[0]

    def pull_u32(self) -> int:
        pos = self._pos
        if pos + 4 > self._end:
            raise self._short(4, pos)
        self._pos = pos + 4
        return _U32.unpack_from(self._data, pos)[0]

    def pull_u64(self) -> int:
        pos = self._pos
        if pos + 8 > self._end:
            raise self._short(8, pos)
        self._pos = pos + 8
        return _U64.unpack_from(self._data, pos)[0]

    def pull_bytes(self, n: int) -> bytes:
        pos = self._pos
        if n < 0 or pos + n > self._end:
            raise self._short(n, pos)
        self._pos = pos + n
        return self._data[pos : pos + n]

    def pull_vbytes(self, max_len: int = 255) -> bytes:
        """A byte string with a one-byte length (≤ 255) or two-byte length (max_len > 255)."""
        data, pos, end = self._data, self._pos, self._end
        if max_len <= 255:
            if pos >= end:
                raise self._short(1, pos)
            n = data[pos]
            pos += 1
        else:
            if pos + 2 > end:
                raise self._short(2, pos)
            n = _U16.unpack_from(data, pos)[0]
            pos += 2
        if n > max_len:
            self._pos = pos
            raise MalformedError(f"field of {n} bytes exceeds {max_len}")
        if pos + n > end:
            self._pos = pos
            raise self._short(n, pos)
        self._pos = pos + n
        return data[pos : pos + n]

    def pull_str(self, max_len: int = 255) -> str:
        raw = self.pull_vbytes(max_len)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedError("text field is not UTF-8") from exc

    def pull_rest(self) -> bytes:
        return self.pull_bytes(self.remaining)

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
        n = len(b)
        if n > max_len:
            raise ValueError(f"field of {n} bytes exceeds {max_len}")
        self._parts += (_U8.pack(n) if max_len <= 255 else _U16.pack(n), bytes(b))
        return self

    def push_str(self, s: str, max_len: int = 255) -> "Writer":
        b = s.encode("utf-8")
        n = len(b)
        if n > max_len:
            raise ValueError(f"field of {n} bytes exceeds {max_len}")
        self._parts += (_U8.pack(n) if max_len <= 255 else _U16.pack(n), b)
        return self

    def getvalue(self) -> bytes:
        return b"".join(self._parts)
