"""Fuzz `tessera.record.RecordReceiver.open` with a stream of frames, against a model of the window.

One input is a sequence of operations read with atheris' FuzzedDataProvider, each one frame given
to one receiver (window 1, 8 or 64, chosen by the input):
  0 raw bytes from the input;
  1 an authentic record (right session, key and IV) with a sequence number from the input;
  2 the same, then one byte of it changed;
  3 an authentic record of another session (the other direction's key).

Contract: `open` returns the plaintext or raises `MalformedError`, `StateError`, `ReplayError` or
`BadProofError`. And the RFC 4303 window, checked against a model kept here: a record is accepted
only if it is authentic, never twice, never older than the window; an authentic record that is
new and inside the window is always accepted, with its plaintext. `session_id_of` returns the
8-byte id or raises `MalformedError`.

    python fuzz/fuzz_record.py -runs=1000000 [CORPUS_DIR]
"""

import struct

import atheris

import common

with common.instrumented():
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from tessera import record as rec
    from tessera.errors import BadProofError, MalformedError, ReplayError, StateError

DOCUMENTED = (MalformedError, StateError, ReplayError, BadProofError)
SID, OTHER_SID = bytes.fromhex("0102030405060708"), bytes.fromhex("1112131415161718")
KEY, IV = bytes(range(32)), bytes(range(100, 112))
OTHER_KEY = bytes(range(1, 33))
WINDOWS = (64, 8, 1)


def seal(sid: bytes, key: bytes, seq: int, plaintext: bytes) -> bytes:
    header = struct.pack("!BB8sQ", 1, 35, sid, seq)
    nonce = (int.from_bytes(IV, "big") ^ seq).to_bytes(12, "big")
    return header + AESGCM(key).encrypt(nonce, plaintext, header)


def test_one(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    window = WINDOWS[fdp.ConsumeIntInRange(0, 2)]
    rx = rec.RecordReceiver(SID, KEY, IV, window)
    seen: set[int] = set()
    top = 0
    for _ in range(64):
        if fdp.remaining_bytes() == 0:
            break
        op = fdp.ConsumeIntInRange(0, 3)
        seq = plaintext = None
        if op == 0:
            frame = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 80))
        else:
            seq = fdp.ConsumeIntInRange(0, 200) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 2**64 - 1)
            plaintext = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
            if op == 3:
                frame = seal(OTHER_SID, OTHER_KEY, seq, plaintext)
            else:
                frame = seal(SID, KEY, seq, plaintext)
                if op == 2:
                    i = fdp.ConsumeIntInRange(0, len(frame) - 1)
                    frame = frame[:i] + bytes([frame[i] ^ (fdp.ConsumeIntInRange(1, 255))]) + frame[i + 1:]
        try:
            rec.session_id_of(frame)
        except MalformedError:
            pass
        fresh = op == 1 and seq > 0 and seq not in seen and (seq > top or top - seq < window)
        try:
            out = rx.open(frame)
        except DOCUMENTED:
            assert not fresh, f"an authentic new record {seq} (top {top}, window {window}) was refused"
            continue
        assert op == 1, f"a record from operation {op} was accepted"
        assert fresh, f"record {seq} accepted though seen before or outside the window (top {top})"
        assert out == plaintext
        seen.add(seq)
        top = max(top, seq)


def make():
    # each seed: window byte, then (op, seq choice, seq, length, plaintext...) triples
    seeds = [bytes([0, 1, 1, 5, 3]) + b"hello" + bytes([1, 1, 2, 2]) + b"hi",
             bytes([1, 1, 1, 70, 0, 1, 1, 3, 0, 2, 1, 5, 1, 7, 3, 1, 9, 0]),
             bytes([2, 0, 8]) + bytes(range(8)) + bytes([1, 1, 1, 0])]
    return test_one, seeds


if __name__ == "__main__":
    common.harness_main("record", make, max_len=2048)
