"""Splitting and joining Tessera messages over ≤ 247-byte attribute instances."""

import pytest
from hypothesis import given, strategies as st

from tessera.radius import attrs


@given(st.binary(max_size=attrs.MAX_MESSAGE))
def test_attrs_split_join_round_trip(message):
    pieces = attrs.split_message(message)
    assert all(len(p) <= attrs.MAX_CHUNK for p in pieces)
    assert all(len(p) == attrs.MAX_CHUNK for p in pieces[:-1])
    assert attrs.join_message(pieces) == message


@given(st.binary(max_size=attrs.MAX_MESSAGE))
def test_attrs_hex_round_trip(message):
    assert attrs.join_from_hex(attrs.split_to_hex(message)) == message


def test_attrs_empty_message_is_one_empty_piece():
    assert attrs.split_message(b"") == [b""]


def test_attrs_exact_chunk_boundaries():
    assert [len(p) for p in attrs.split_message(b"a" * 494)] == [247, 247]
    assert [len(p) for p in attrs.split_message(b"a" * 495)] == [247, 247, 1]


def test_attrs_too_long_message_is_refused():
    with pytest.raises(attrs.MessageTooLongError):
        attrs.split_message(b"a" * (attrs.MAX_MESSAGE + 1))
    assert attrs.join_message(attrs.split_message(b"a" * attrs.MAX_MESSAGE)) == b"a" * attrs.MAX_MESSAGE


def test_attrs_to_hex_keeps_nul_bytes():
    assert attrs.to_hex(b"\x00\x01\xff") == "0x0001ff"


@pytest.mark.parametrize("bad", ["", "0x0", "0xzz", "abcd", None, b"0x00", "0x 0", "0x00 ", "0x\n00", "0x0g",
                                 "0x\u0660\u0661", "00x0"])
def test_attrs_from_hex_rejects_non_freeradius_values(bad):
    with pytest.raises(attrs.BadHexError):
        attrs.from_hex(bad)
    assert attrs.from_hex("0x00") == b"\x00"  # what FreeRADIUS sends is taken


def test_attrs_from_hex_accepts_upper_case():
    assert attrs.from_hex("0XABcd") == b"\xab\xcd"


def test_attrs_split_to_hex_cuts_at_247_bytes():
    """The documented framing: consecutive 247-byte pieces, each "0x" + lower-case hex."""
    message = bytes(range(256)) * 2  # 512 bytes: 247 + 247 + 18
    assert attrs.split_to_hex(message) == ["0x" + message[:247].hex(), "0x" + message[247:494].hex(),
                                           "0x" + message[494:].hex()]
    assert attrs.split_to_hex(b"") == ["0x"]
    with pytest.raises(attrs.MessageTooLongError):
        attrs.split_to_hex(b"a" * (attrs.MAX_MESSAGE + 1))


@pytest.mark.parametrize("values", [["0x1", "0x23"], ["0x012", "0x3"], ["0x01", "23"], ["0x01", None], ["0x01", "0xzz"],
                                    ["0x01", "0x 0"], ["0x01", b"0x02"]])
def test_attrs_join_from_hex_refuses_any_bad_instance(values):
    """Joined in one conversion, each instance is still checked alone: two odd halves whose
    digits would pair up across the boundary ("0x1" and "0x23") are refused."""
    with pytest.raises(attrs.BadHexError):
        attrs.join_from_hex(values)
    assert attrs.join_from_hex(["0x01", "0X23", "0x"]) == b"\x01\x23"  # the same shapes, well formed
    assert attrs.join_from_hex([]) == b""


def test_attrs_reply_items_are_exact_tuples_of_247_byte_pieces():
    message = bytes(range(256)) * 2
    items = attrs.reply_items("Tessera-Reply", message)
    assert type(items) is tuple and all(type(t) is tuple for t in items)
    assert items == tuple(("Tessera-Reply", "+=", "0x" + piece.hex())
                          for piece in (message[:247], message[247:494], message[494:]))
    assert attrs.reply_items("Tessera-Reply", b"") == (("Tessera-Reply", "+=", "0x"),)
