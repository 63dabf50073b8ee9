"""Fuzz the RADIUS attribute framing in `tessera.radius.attrs`: `join_from_hex` (what the plugin
does with the `Tessera-Message` values rlm_python3 hands it) and `split_message` / `split_to_hex`.

The first input byte picks the side:
  even: the rest is a list of attribute values (strings: each a length byte and that many bytes,
        decoded as UTF-8 with errors replaced -- what any Python string can hold), joined;
  odd:  the rest is a message, split with a chunk size taken from the second byte (0..255,
        including sizes `split_message` must refuse).

Contract: `join_from_hex` returns bytes or raises `BadHexError`; what it accepts is exactly the
`0x` + hex form FreeRADIUS writes (one `0x`/`0X` prefix, an even number of hex digits, nothing
else), and the result is the concatenation of the values' bytes. `split_message` returns pieces
of 1..chunk bytes (one empty piece for an empty message) that join back to the message, or raises
`MessageTooLongError` above `MAX_MESSAGE` or `ValueError` for a chunk outside 1..247; the hex
form round-trips through `join_from_hex`.

    python fuzz/fuzz_attrs.py -runs=1000000 [CORPUS_DIR]
"""

import re

import common

with common.instrumented():
    from tessera.radius import attrs
    import world

CANONICAL = re.compile(r"0[xX](?:[0-9a-fA-F]{2})*")


def values_of(rest: bytes) -> list[str]:
    out, i = [], 0
    while i < len(rest):
        n = rest[i]
        out.append(rest[i + 1:i + 1 + n].decode("utf-8", "replace"))
        i += 1 + n
    return out


def test_one(data: bytes) -> None:
    if not data:
        return
    if data[0] % 2 == 0:
        values = values_of(data[1:])
        try:
            out = attrs.join_from_hex(values)
        except attrs.BadHexError:
            assert not all(CANONICAL.fullmatch(v) for v in values), f"canonical values refused: {values!r}"
            return
        assert all(CANONICAL.fullmatch(v) for v in values), f"non-canonical value accepted: {values!r}"
        assert out == b"".join(bytes.fromhex(v[2:]) for v in values)
        return
    chunk = data[1] if len(data) > 1 else 0
    message = data[2:]
    try:
        pieces = attrs.split_message(message, chunk)
    except attrs.MessageTooLongError:
        assert len(message) > attrs.MAX_MESSAGE
        return
    except ValueError:
        assert not 1 <= chunk <= attrs.MAX_CHUNK
        return
    assert 1 <= chunk <= attrs.MAX_CHUNK and len(message) <= attrs.MAX_MESSAGE
    assert attrs.join_message(pieces) == message
    assert pieces == [b""] if not message else all(1 <= len(p) <= chunk for p in pieces)
    assert attrs.join_from_hex(attrs.split_to_hex(message)) == message


def make():
    def as_values(*vals: str) -> bytes:
        return bytes([0]) + b"".join(bytes([len(v)]) + v.encode() for v in vals)

    def as_message(chunk: int, message: bytes) -> bytes:
        return bytes([1, chunk]) + message

    w = world.World()
    seeds = [as_values(*(attrs.to_hex(p) for p in attrs.split_message(msg, 60))) for msg in
             (w.messages["auth-a"], w.messages["session"])]
    seeds += [as_values("0x"), as_values("0X00ff", "0xAbCd"), as_values("0x0"), as_values("0xzz"), as_values("ab")]
    seeds += [as_message(247, w.messages["session"]), as_message(1, b"abc"), as_message(0, b""),
              as_message(248, b"x"), as_message(247, bytes(3706))]
    return test_one, seeds


if __name__ == "__main__":
    common.harness_main("attrs", make, max_len=8192)
