"""Bounded codecs: round trips, and reads past the end or over a bound are format errors."""

import pytest
from hypothesis import given, strategies as st

from tessera import errors as E, message as m
from tessera.identity import BootstrapBundle, DeviceKey, ServerEntry
from tessera.wire import Reader, Writer


@given(a=st.integers(0, 255), b=st.integers(0, 2**16 - 1), c=st.integers(0, 2**32 - 1), d=st.integers(0, 2**64 - 1),
       blob=st.binary(max_size=300), text=st.text(max_size=60))
def test_wire_round_trip(a, b, c, d, blob, text):
    data = Writer().push_u8(a).push_u16(b).push_u32(c).push_u64(d).push_vbytes(blob, 1024).push_str(text, 255).getvalue()
    r = Reader(data)
    assert (r.pull_u8(), r.pull_u16(), r.pull_u32(), r.pull_u64(), r.pull_vbytes(1024), r.pull_str(255)) == (a, b, c, d, blob, text)
    r.finish()


def test_reader_bounds():
    with pytest.raises(E.MalformedError):
        Reader(b"\x00").pull_u16()
    assert Reader(b"\x01\x02").pull_u16() == 0x0102  # control: two bytes are enough
    with pytest.raises(E.MalformedError):
        Reader(b"\x05ab").pull_vbytes()
    assert Reader(b"\x02ab").pull_vbytes() == b"ab"
    with pytest.raises(E.MalformedError):
        Reader(b"\x02\xff\xfe").pull_str()
    assert Reader(b"\x02\xc3\xa9").pull_str() == "\u00e9"
    r = Reader(b"ab")
    r.pull_u8()
    with pytest.raises(E.MalformedError):
        r.finish()
    r.pull_u8()
    r.finish()  # control: read to the end, it finishes
    with pytest.raises(ValueError):
        Writer().push_vbytes(b"x" * 256)
    assert len(Writer().push_vbytes(b"x" * 255).getvalue()) == 256


def test_vbytes_over_its_bound_is_malformed():
    with pytest.raises(E.MalformedError):
        Reader(Writer().push_vbytes(b"x" * 20).getvalue()).pull_vbytes(max_len=10)
    assert Reader(Writer().push_vbytes(b"x" * 10).getvalue()).pull_vbytes(max_len=10) == b"x" * 10
    with pytest.raises(E.MalformedError):
        Reader(Writer().push_vbytes(b"x" * 2000, 4000).getvalue()).pull_vbytes(1024)
    assert Reader(Writer().push_vbytes(b"x" * 1024, 4000).getvalue()).pull_vbytes(1024) == b"x" * 1024


@given(realm=st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True), dev=st.from_regex(r"[A-Z][A-Z0-9-]{0,30}", fullmatch=True),
       ts=st.integers(0, 2**64 - 1), nonce=st.binary(min_size=16, max_size=16), blob=st.binary(max_size=1024))
def test_message_round_trip(realm, dev, ts, nonce, blob):
    for msg in (m.AuthRequest(realm, dev, "s1", ts, nonce, blob, b"\x01" * 32),
                m.PeerHello(realm, dev, "peer", nonce[:6], ts, nonce, blob, b"\x02" * 32),
                m.SessionReply(realm, dev, "p", nonce, nonce, ts, blob, blob[:10])):
        got = m.decode(msg.encode())
        assert got == msg and got.body() == msg.body()


def test_decode_rejects_unknown_type_version_and_unexpected():
    ok = m.ErrorMessage(2, 0, "x").encode()
    assert m.decode(ok) == m.ErrorMessage(2, 0, "x") == m.decode(ok, (m.ErrorMessage,))  # control
    with pytest.raises(E.UnsupportedVersionError):
        m.decode(b"\x02" + ok[1:])
    with pytest.raises(E.MalformedError):
        m.decode(b"\x01\x63")
    with pytest.raises(E.MalformedError):
        m.decode(ok, (m.AuthRequest,))
    with pytest.raises(E.MalformedError):
        m.decode(ok + b"\x00")
    with pytest.raises(E.MalformedError):
        m.decode(b"\x01\x01" + b"\x00" * 5000)


def test_repr_never_shows_proofs_or_blobs():
    msg = m.AuthRequest("r", "d", "s", 1, b"N" * 16, b"SECRETBLOB", b"M" * 32)
    assert "SECRETBLOB" not in repr(msg) and "MMMM" not in repr(msg) and "NNNN" not in repr(msg)
    assert repr(msg) == "AuthRequest(realm='r', device_id='d', server_id='s', timestamp=1)"  # what it does show


def test_bootstrap_bundle_round_trip_and_validation():
    key = DeviceKey.generate()
    b = BootstrapBundle("example.net", "SN-1", key.public_bytes(), [ServerEntry("r1", "192.0.2.1", 1812)],
                        "secret", key.pem())
    again = BootstrapBundle.from_json(b.to_json())
    assert again == b
    for broken in ("{}", "not json", b.to_json().replace("SN-1", "bad id!"),
                   b.to_json().replace('"tessera-bootstrap-1"', '"other"')):
        with pytest.raises(E.MalformedError):
            BootstrapBundle.from_json(broken)
