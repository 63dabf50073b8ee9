"""The request path's shortcuts against the documented layouts (docs/layouts.md): the HKDF
written out with HMAC, one extract for several keys, the bounded reads done in place, the
ticket header and tails read with struct, the revocation entries encoded once per list, the
key ring's current version kept, and the replay checks with one proof or two. Each expected
value is built here with `cryptography` and `struct`, and each refusal beside an acceptance."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tessera import kdf, message as m
from tessera.errors import InvalidTicket, MalformedError, ReplayError, UnsupportedVersionError
from tessera.replay import ReplayCache
from tessera.servicekey import KeyRing, ServiceKey
from tessera.ticket import GrantingTicket, RegistrationTicket, open_ticket, seal_ticket
from tessera.wire import Reader

IKM = bytes(range(32))
REALM = "example.net"
T0 = 1_800_000_000


def hkdf(ikm: bytes, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    return HKDF(hashes.SHA256(), length, salt, info).derive(ikm)


# -- kdf: docs/layouts.md#hkdf-labels -------------------------------------------------------
@pytest.mark.parametrize("length", [1, 16, 31, 32, 33, 64, 100, 160, 255 * 32])
@pytest.mark.parametrize("salt", [b"", b"s", bytes(range(64)), bytes(100)])
def test_kdf_derive_is_rfc5869_hkdf(length, salt):
    info = b"tessera v1 peer keys\x00ctx"
    assert kdf.derive(IKM, b"peer keys", b"ctx", length, salt) == hkdf(IKM, info, length, salt or None)


@pytest.mark.parametrize("length", [0, -1, 255 * 32 + 1])
def test_kdf_derive_refuses_lengths_hkdf_cannot_give(length):
    assert len(kdf.derive(IKM, b"peer keys", length=1)) == 1
    with pytest.raises(ValueError):
        kdf.derive(IKM, b"peer keys", length=length)


def test_kdf_derive_keys_equals_one_hkdf_per_label():
    labels = (kdf.AUTH_PROOF, kdf.TGT_DEVICE_PART, kdf.SESSION_REQUEST, kdf.SESSION_PART)
    got = kdf.derive_keys(IKM, *labels)
    assert got == [hkdf(IKM, b"tessera v1 " + label + b"\x00") for label in labels]
    assert len(set(got)) == len(labels)  # domain separation holds with a shared extract
    assert kdf.derive_keys(bytes(32), kdf.AUTH_PROOF) != kdf.derive_keys(IKM, kdf.AUTH_PROOF)


# -- wire: docs/layouts.md#encodings --------------------------------------------------------
def test_reader_reads_fields_in_place_as_laid_out():
    data = struct.pack("!BHIQ", 7, 0x0102, 0x03040506, 2**64 - 1) + b"\x03abc" + b"\x01\x00" + bytes(256) + b"xyz"
    r = Reader(data)
    assert (r.pull_u8(), r.pull_u16(), r.pull_u32(), r.pull_u64()) == (7, 0x0102, 0x03040506, 2**64 - 1)
    assert r.pull_str(64) == "abc"
    assert r.pull_vbytes(1024) == bytes(256)
    assert r.pull_rest() == b"xyz"
    r.finish()


@pytest.mark.parametrize("read, data", [
    (Reader.pull_u8, b""),
    (Reader.pull_u16, b"\x01"),
    (Reader.pull_u32, b"\x01\x02\x03"),
    (Reader.pull_u64, bytes(7)),
    (lambda r: r.pull_vbytes(255), b""),
    (lambda r: r.pull_vbytes(255), b"\x05abcd"),  # one byte short
    (lambda r: r.pull_vbytes(1024), b"\x00"),  # half a u16 length
    (lambda r: r.pull_vbytes(1024), b"\x00\x03ab"),
    (lambda r: r.pull_vbytes(4), b"\x05abcde"),  # over the bound, though present
    (lambda r: r.pull_str(64), b"\x02\xff\xfe"),  # not UTF-8
    (lambda r: r.pull_bytes(4), b"abc"),
])
def test_reader_refuses_short_or_oversized_fields(read, data):
    with pytest.raises(MalformedError):
        read(Reader(data))
    with pytest.raises(MalformedError):  # and a field cut at any byte, never IndexError
        read(Reader(data[:-1])) if data else read(Reader(b""))


# -- tickets: docs/layouts.md#service-sealed-tickets -----------------------------------------
@pytest.fixture
def ring():
    return KeyRing(REALM, [ServiceKey(1, bytes(range(32)), T0)])


def test_ticket_body_is_the_documented_layout(ring):
    tgt = GrantingTicket("dev-0000000000001", 3, T0, T0 + 10, T0 + 20, bytes(range(32)))
    want = b"\x11dev-0000000000001" + struct.pack("!IQQQ", 3, T0, T0 + 10, T0 + 20) + bytes(range(32))
    assert tgt.body() == want
    drt = RegistrationTicket("dev-1", 2, T0, T0 + 10, bytes(32))
    assert drt.body() == b"\x05dev-1" + struct.pack("!IQQ", 2, T0, T0 + 10) + bytes(32)
    sealed = seal_ticket(ring, tgt, T0, bytes(12))
    assert sealed[:6] == struct.pack("!BBI", 2, 1, 1)
    assert open_ticket(ring, sealed, GrantingTicket, T0) == tgt


def test_ticket_open_refuses_a_short_header_a_wrong_kind_version_or_a_flipped_bit(ring):
    sealed = seal_ticket(ring, RegistrationTicket("dev-1", 2, T0, T0 + 10, bytes(32)), T0, bytes(12))
    assert open_ticket(ring, sealed, RegistrationTicket, T0).device_id == "dev-1"
    for n in range(6):
        with pytest.raises(MalformedError):
            open_ticket(ring, sealed[:n], RegistrationTicket, T0)
    with pytest.raises(InvalidTicket):
        open_ticket(ring, sealed, GrantingTicket, T0)
    with pytest.raises(UnsupportedVersionError):
        open_ticket(ring, sealed[:1] + b"\x02" + sealed[2:], RegistrationTicket, T0)
    for i in (6, 20, len(sealed) - 1):
        with pytest.raises(InvalidTicket):
            open_ticket(ring, sealed[:i] + bytes([sealed[i] ^ 1]) + sealed[i + 1:], RegistrationTicket, T0)
    with pytest.raises(InvalidTicket):  # the realm is in the associated data
        open_ticket(KeyRing("example.org", [ServiceKey(1, bytes(range(32)), T0)]), sealed, RegistrationTicket, T0)


def test_keyring_current_follows_rotation_and_pruning(ring):
    assert ring.current.kvno == 1
    new = ring.rotate(bytes(32), T0, 100)
    assert ring.current.kvno == new.kvno == 2
    sealed = seal_ticket(ring, RegistrationTicket("dev-1", 1, T0, T0 + 10, bytes(32)), T0, bytes(12))
    assert sealed[2:6] == struct.pack("!I", 2)
    assert ring.prune(T0 + 100) == [1]
    assert ring.current.kvno == 2
    assert ring.rotate(bytes(range(1, 33)), T0 + 200, 100).kvno == ring.current.kvno == 3


# -- RevocationList: docs/layouts.md#revocationlist ------------------------------------------
def revocation_list_bytes(entries, nonce=bytes(16), signature=bytes(64)) -> bytes:
    out = b"\x01\x0a" + b"\x0bexample.net" + b"\x05dev-a" + b"\x07radius1" + nonce + struct.pack("!QQ", T0, T0 - 3900)
    out += struct.pack("!H", len(entries))
    for device_id, at in entries:
        out += bytes([len(device_id)]) + device_id.encode() + struct.pack("!Q", at)
    return out + signature


def revocation_list(entries, nonce=bytes(16)) -> m.RevocationList:
    return m.RevocationList(REALM, "dev-a", "radius1", nonce, T0, T0 - 3900, entries, bytes(64))


def test_revocation_list_encodes_the_layout_for_each_list_and_each_query():
    one = tuple((f"revoked-{i:03d}", T0 - i) for i in range(128))
    other = one[:-1] + (("revoked-127", T0 - 1000),)  # one time differs: not the same list
    for entries in (one, other, one, (), one[:5]):
        for nonce in (bytes(16), b"\x01" * 16):
            assert revocation_list(entries, nonce).encode() == revocation_list_bytes(entries, nonce)
    as_lists = [list(e) for e in one[:3]]  # not hashable: encoded without the cache, the same bytes
    assert revocation_list(as_lists).encode() == revocation_list_bytes(one[:3])
    decoded = m.decode(revocation_list_bytes(one))
    assert decoded.revoked == one and decoded.encode() == revocation_list_bytes(one)


def test_revocation_list_refuses_more_than_max_revoked():
    entries = tuple((f"revoked-{i:03d}", T0) for i in range(m.MAX_REVOKED + 1))
    assert revocation_list(entries[:-1]).encode() == revocation_list_bytes(entries[:-1])
    with pytest.raises(MalformedError):
        revocation_list(entries).encode()
    with pytest.raises(MalformedError):
        m.decode(revocation_list_bytes(entries))


# -- replay: one proof, or two in one request ------------------------------------------------
def test_replay_cache_refuses_a_seen_proof_and_a_proof_twice_in_one_request():
    cache = ReplayCache(300)
    cache.add("dev-a", b"A1", T0, T0)
    with pytest.raises(ReplayError):
        cache.add("dev-a", b"A1", T0, T0)
    with pytest.raises(ReplayError):
        cache.add_all("dev-a", ((b"S1", T0), (b"S1", T0)), T0)
    with pytest.raises(ReplayError):  # all or none: S2 is not kept when A1 is refused
        cache.add_all("dev-a", ((b"S2", T0), (b"A1", T0)), T0)
    cache.add_all("dev-a", ((b"S2", T0), (b"H2", T0)), T0)
    assert len(cache) == 3 and cache.held("dev-a") == 3


# -- messages: decoded positionally ----------------------------------------------------------
def test_message_fields_are_the_dataclass_fields_in_order():
    """decode builds each message from its FIELDS positionally: a reordered dataclass would
    swap fields silently, so the two orders must agree (and a request decodes as laid out)."""
    from dataclasses import fields
    for cls in m.MESSAGES.values():
        assert [f.name for f in fields(cls)] == [name for name, _ in cls.FIELDS], cls.__name__
    raw = (b"\x01\x03" + b"\x0bexample.net" + b"\x05dev-a" + b"\x07radius1" + struct.pack("!Q", T0)
           + bytes(range(16)) + struct.pack("!H", 3) + b"drt" + bytes(range(32)))
    req = m.decode(raw, (m.AuthRequest,))
    assert (req.realm, req.device_id, req.server_id, req.timestamp, req.nonce, req.drt, req.mac) == (
        REALM, "dev-a", "radius1", T0, bytes(range(16)), b"drt", bytes(range(32)))
    assert req.body() == raw[:-32] and req.encode() == raw
    with pytest.raises(MalformedError):
        m.decode(raw + b"\x00", (m.AuthRequest,))
