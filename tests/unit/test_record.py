"""The replay window and the record layer, frame by frame."""

import pytest
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
