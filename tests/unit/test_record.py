"""The replay window and the record layer, frame by frame."""

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, strategies as st

from tessera import errors as E
from tessera.record import RecordReceiver, RecordSender, ReplayWindow, session_id_of


@given(seqs=st.lists(st.integers(1, 300), max_size=200))
def test_window_accepts_each_sequence_number_at_most_once(seqs):
    """Model check against a set: accepted ⇔ never seen and within 64 of the highest seen."""
    w, seen, top = ReplayWindow(64), set(), 0
    for s in seqs:
        fresh = s not in seen and (s > top or top - s < 64)
        try:
            w.check(s)
            w.accept(s)
            accepted = True
        except E.ReplayError:
            accepted = False
        assert accepted == fresh, (s, top)
        if accepted:
            seen.add(s)
            top = max(top, s)


def test_window_edges():
    w = ReplayWindow(64)
    with pytest.raises(E.ReplayError):
        w.check(0)
    w.check(1)  # control: the first number a sender uses
    w.accept(100)
    w.check(37)  # 100 - 37 = 63: inside
    with pytest.raises(E.ReplayError):
        w.check(36)
    w.accept(1000)  # a jump beyond the window clears it
    assert w.bits == 1 and w.top == 1000
    w.check(999)  # nothing below the new top was seen...
    with pytest.raises(E.ReplayError):
        w.check(1000)  # ...but the top was


def test_records_reordered_within_window_open_and_forged_frames_do_not_move_it():
    tx, rx = RecordSender(b"S" * 8, b"k" * 32, b"i" * 12), RecordReceiver(b"S" * 8, b"k" * 32, b"i" * 12)
    frames = [tx.seal(b"%d" % i) for i in range(10)]
    for f in reversed(frames):
        rx.open(f)
    forged = bytearray(tx.seal(b"x"))
    forged[10:18] = (10**6).to_bytes(8, "big")  # a far-ahead sequence number, tag now wrong
    with pytest.raises(E.BadProofError):
        rx.open(bytes(forged))
    assert rx.window.top == 10
    assert session_id_of(frames[0]) == b"S" * 8


def test_wrong_direction_key_does_not_open():
    tx = RecordSender(b"S" * 8, b"k" * 32, b"i" * 12)
    frame = tx.seal(b"x")
    with pytest.raises(E.BadProofError):
        RecordReceiver(b"S" * 8, b"K" * 32, b"i" * 12).open(frame)
    with pytest.raises(E.BadProofError):
        RecordReceiver(b"S" * 8, b"k" * 32, b"I" * 12).open(frame)  # the other direction's IV
    assert RecordReceiver(b"S" * 8, b"k" * 32, b"i" * 12).open(frame) == b"x"  # control: this direction's keys


# Records built here from docs/layouts.md#peer-records with struct and AESGCM, not by RecordSender.
SID, KEY, IV = bytes(range(8)), bytes(range(32)), bytes(range(100, 112))


def layout_record(seq: int, plaintext: bytes, sid: bytes = SID, version: int = 1, mtype: int = 35) -> bytes:
    header = struct.pack("!BB8sQ", version, mtype, sid, seq)
    nonce = IV[:4] + struct.pack("!Q", int.from_bytes(IV[4:], "big") ^ seq)
    return header + AESGCM(KEY).encrypt(nonce, plaintext, header)


@given(window=st.sampled_from([1, 8, 64]),
       seqs=st.lists(st.one_of(st.integers(0, 150), st.integers(2**48 - 3, 2**48 + 3)), max_size=120),
       in_order=st.integers(0, 40))
def test_open_accepts_each_record_at_most_once_within_the_window(window, seqs, in_order):
    """open() against a model of the window: in-order runs (its shortcut), reordering, repeats,
    jumps; an accepted record gives its plaintext, a refused one changes nothing."""
    rx, seen, top = RecordReceiver(SID, KEY, IV, window), set(), 0
    for seq in list(range(1, in_order + 1)) + seqs:
        fresh = seq > 0 and seq not in seen and (seq > top or top - seq < window)
        frame = layout_record(seq, b"%d" % seq)
        try:
            got = rx.open(memoryview(frame) if seq % 2 else frame)
        except E.ReplayError:
            assert not fresh, (seq, top)
            continue
        assert fresh and got == b"%d" % seq, (seq, top)
        seen.add(seq)
        top = max(top, seq)
        assert rx.window.top == top


def test_open_names_why_a_header_is_refused_and_moves_nothing():
    rx = RecordReceiver(SID, KEY, IV)
    assert rx.open(layout_record(1, b"one")) == b"one"
    for frame, error in ((layout_record(2, b"v", version=2), E.MalformedError),
                         (layout_record(2, b"t", mtype=34), E.MalformedError),
                         (layout_record(2, b"s", sid=bytes(8)), E.StateError),
                         (layout_record(2, b"s")[:33], E.MalformedError)):
        with pytest.raises(error):
            rx.open(frame)
    assert (rx.window.top, rx.window.bits) == (1, 1)
    assert rx.open(layout_record(2, b"two")) == b"two"  # control: the same seq, this session's header


def test_sender_seals_what_the_layout_says_after_the_first_record():
    """The header prefix and nonce are kept between records: each record still matches the layout."""
    tx = RecordSender(SID, KEY, IV)
    assert [tx.seal(b"%d" % i) for i in range(1, 5)] == [layout_record(i, b"%d" % i) for i in range(1, 5)]


def test_session_id_is_eight_bytes():
    with pytest.raises(ValueError):
        RecordReceiver(SID[:7], KEY, IV)
    with pytest.raises(ValueError):
        RecordSender(SID + b"\0", KEY, IV)
    RecordSender(SID, KEY, IV)  # control
