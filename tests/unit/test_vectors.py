"""Known-answer tests built from the documented layouts (docs/layouts.md), not from the code.

Every expected byte string below is assembled here, field by field, with `struct` and bytes
concatenation, and sealed with `cryptography`'s primitives directly (AESGCM, HKDF, HMAC, ECDH
on a fixed P-256 scalar), from fixed keys, nonces and times. Then (a) the code given the same
inputs (randomness and `now` are parameters of the core) must write exactly those bytes, and
(b) the code must read the bytes built here back, field by field. Each test names the section of
docs/layouts.md it builds from. The primitives themselves are pinned to RFC 5869, the GCM spec
and RFC 4231 in test_primitives.py.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tessera import errors as E, kdf, message as m, servicekey
from tessera.device import Credentials, DeviceClient, Registration
from tessera.identity import BootstrapBundle, DeviceKey
from tessera.peer import PeerInitiator, PeerResponder, key_schedule
from tessera.realm import Realm
from tessera.record import RecordReceiver, RecordSender, session_id_of
from tessera.seal import open_with_private_key, seal_to_public_key
from tessera.service import Policy, Service, drt_device_aad, eap_pwd_password, session_part_aad, session_part_body, tgt_device_aad
from tessera.servicekey import KeyRing, ServiceKey
from tessera.sqlite_registry import SQLiteRegistry
from tessera.ticket import GrantingTicket, RegistrationTicket, open_ticket, seal_ticket
from tests.unit.conftest import Counter

# -- fixed inputs --------------------------------------------------------------------------------
REALM = "example.net"
A, B = "FOC2231X0AB-0001", "FOC2231X0AB-0002"  # 16-character device ids, as the documented sizes assume
SERVER = "radius-a"
T = 1_800_000_000
KVNO = 7
MASTER = bytes(range(0x40, 0x60))  # service master key, version KVNO
KEK = bytes(range(0x60, 0x80))
LLK = bytes(range(0x80, 0xA0))
STK = bytes(range(0xA0, 0xC0))
N12 = bytes.fromhex("0c0d0e0f1011121314151617")
N16 = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
SEED = bytes(range(0xC0, 0xE0))
SCALAR_A = 0x2B7E151628AED2A6ABF7158809CF4F3C762E7160F38B4DA56A784D9045190CFE
SCALAR_B = 0x3243F6A8885A308D313198A2E03707344A4093822299F31D0082EFA98EC4E6C8
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # SEC 2 §2.4.2, the group order
POLICY = Policy(registration_lifetime=86400, tgt_lifetime=3600, session_lifetime=600, clock_skew=300)


# -- the layout, written out (docs/layouts.md#encodings) -----------------------------------------
def u8(v: int) -> bytes:
    return struct.pack("!B", v)


def u16(v: int) -> bytes:
    return struct.pack("!H", v)


def u32(v: int) -> bytes:
    return struct.pack("!I", v)


def u64(v: int) -> bytes:
    return struct.pack("!Q", v)


def id_(s: str) -> bytes:
    """`id`: u8 length ≤ 64, UTF-8."""
    b = s.encode()
    assert len(b) <= 64
    return u8(len(b)) + b


def str_(s: str) -> bytes:
    """`str`: u8 length ≤ 255, UTF-8."""
    b = s.encode()
    assert len(b) <= 255
    return u8(len(b)) + b


def blob(b: bytes) -> bytes:
    """`blob`: u16 length ≤ 1024."""
    assert len(b) <= 1024
    return u16(len(b)) + b


def header(mtype: int) -> bytes:
    """docs/layouts.md#messages: version 1, type."""
    return u8(1) + u8(mtype)


# -- the primitives, used directly ---------------------------------------------------------------
def hkdf(ikm: bytes, label: bytes, context: bytes = b"", length: int = 32, salt: bytes | None = None) -> bytes:
    """docs/layouts.md#hkdf-labels: info = "tessera v1 " ‖ label ‖ 0x00 ‖ context."""
    return HKDF(hashes.SHA256(), length, salt, b"tessera v1 " + label + b"\x00" + context).derive(ikm)


def aead(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """docs/layouts.md#aead-sealing: nonce ‖ ciphertext ‖ tag."""
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def hmac256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def point(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)


def p256(scalar: int) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(scalar, ec.SECP256R1())


def ecdsa_sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def ecdsa_ok(public_key: ec.EllipticCurvePublicKey, data: bytes, sig: bytes) -> bool:
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        public_key.verify(der, data, ec.ECDSA(hashes.SHA256()))
        return True
    except Exception:
        return False


# -- structures, built from their sections -------------------------------------------------------
def ticket(kind: int, body: bytes, nonce: bytes, master: bytes = MASTER, kvno: int = KVNO, realm: str = REALM,
           label: bytes | None = None) -> bytes:
    """docs/layouts.md#service-sealed-tickets."""
    hdr = u8(kind) + u8(1) + u32(kvno)
    label = label or {1: b"ticket drt", 2: b"ticket tgt"}[kind]
    return hdr + aead(hkdf(master, label, realm.encode()), nonce, body, hdr + realm.encode())


def drt_body(device: str, generation: int, not_before: int, not_after: int, llk: bytes) -> bytes:
    """docs/layouts.md#drt-service-part."""
    return id_(device) + u32(generation) + u64(not_before) + u64(not_after) + llk


def tgt_body(device: str, generation: int, not_before: int, not_after: int, reg_not_after: int, stk: bytes) -> bytes:
    """docs/layouts.md#tgt-service-part."""
    return id_(device) + u32(generation) + u64(not_before) + u64(not_after) + u64(reg_not_after) + stk


def ecies(recipient: ec.EllipticCurvePublicKey, seed: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """docs/layouts.md#ecies-device-part."""
    eph = p256(int.from_bytes(seed[:48], "big") % (P256_N - 1) + 1)
    e_point = point(eph.public_key())
    key = hkdf(eph.exchange(ec.ECDH(), recipient), b"seal to device", e_point + point(recipient))
    return e_point + AESGCM(key).encrypt(bytes(12), plaintext, aad)


def drt_aad(realm: str, device: str, nonce: bytes) -> bytes:
    """docs/layouts.md#ecies-device-part: the AAD."""
    return b"drt device part\x00" + str_(realm) + str_(device) + nonce


def tgt_aad(realm: str, device: str, nonce: bytes, tgt: bytes) -> bytes:
    """docs/layouts.md#tgt-device-part: the AAD."""
    return b"tgt device part\x00" + str_(realm) + str_(device) + nonce + blob(tgt)


def session_aad(role: bytes, realm: str, initiator: str, responder: str, ni: bytes) -> bytes:
    """docs/layouts.md#session-parts: the AAD."""
    return b"session part\x00" + role + str_(realm) + str_(initiator) + str_(responder) + ni


def session_plaintext(key: bytes, not_after: int, initiator: str, responder: str, ni: bytes, nr: bytes) -> bytes:
    """docs/layouts.md#session-parts: the plaintext."""
    return key + u64(not_after) + str_(initiator) + str_(responder) + ni + nr


def record(sid: bytes, key: bytes, iv: bytes, seq: int, plaintext: bytes) -> bytes:
    """docs/layouts.md#peer-records: the IV's last 8 bytes XOR u64(seq) is the nonce."""
    hdr = u8(1) + u8(35) + sid + u64(seq)
    nonce = iv[:4] + bytes(x ^ y for x, y in zip(iv[4:], u64(seq)))
    return hdr + AESGCM(key).encrypt(nonce, plaintext, hdr)


def flipped(data: bytes, i: int) -> bytes:
    out = bytearray(data)
    out[i] ^= 0x01
    return bytes(out)


def ring(realm: str = REALM, kvno: int = KVNO, master: bytes = MASTER) -> KeyRing:
    return KeyRing(realm, [ServiceKey(kvno, master, T)])


# == docs/layouts.md#hkdf-labels ==================================================================
LABELS = [
    ("TICKET_DRT", b"ticket drt"),
    ("TICKET_TGT", b"ticket tgt"),
    ("KEYRING_AT_REST", b"keyring at rest"),
    ("SEAL_TO_DEVICE", b"seal to device"),
    ("AUTH_PROOF", b"auth proof"),
    ("TGT_DEVICE_PART", b"tgt device part"),
    ("RENEW_PROOF", b"renew proof"),
    ("RENEW_DEVICE_PART", b"renew device part"),
    ("PEER_AUTHENTICATOR", b"peer authenticator"),
    ("SESSION_REQUEST", b"session request"),
    ("SESSION_PART", b"session part"),
    ("PEER_KEYS", b"peer keys"),
    ("EAP_PWD", b"eap-pwd password"),
]


@pytest.mark.parametrize("name, label", LABELS, ids=[n for n, _ in LABELS])
def test_kdf_label_is_the_documented_string(name, label):
    """docs/layouts.md#hkdf-labels: each label, byte for byte, and derive = HKDF over the documented info."""
    assert getattr(kdf, name) == label
    ikm = bytes(range(32))
    for context in (b"", b"example.net"):
        info = b"tessera v1 " + label + b"\x00" + context
        assert kdf.derive(ikm, getattr(kdf, name), context) == HKDF(hashes.SHA256(), 32, None, info).derive(ikm)


def test_kdf_labels_are_all_documented():
    """docs/layouts.md#hkdf-labels lists every label kdf.py defines; a new one needs a row there."""
    defined = {n for n, v in vars(kdf).items() if n.isupper() and isinstance(v, bytes)}
    assert kdf.PROTOCOL == b"tessera v1 "
    assert defined - {"PROTOCOL"} == {n for n, _ in LABELS}


def test_kdf_info_salt_and_length_as_documented():
    """docs/layouts.md#hkdf-labels: the worked example, a salt, a longer output."""
    info = b"tessera v1 ticket drt\x00example.net"
    assert kdf.derive(MASTER, b"ticket drt", b"example.net") == HKDF(hashes.SHA256(), 32, bytes(32), info).derive(MASTER)
    th = hashlib.sha256(b"transcript").digest()
    want = HKDF(hashes.SHA256(), 160, th, b"tessera v1 peer keys\x00").derive(STK)
    assert kdf.derive(STK, b"peer keys", length=160, salt=th) == want


def test_eap_pwd_password_as_documented():
    """docs/layouts.md#hkdf-labels: lowercase hex of derive(LLK, "eap-pwd password", device id)."""
    want = HKDF(hashes.SHA256(), 32, None, b"tessera v1 eap-pwd password\x00" + A.encode()).derive(LLK).hex()
    assert eap_pwd_password(LLK, A) == want and len(want) == 64


# == docs/layouts.md#service-sealed-tickets =======================================================
DRT_FIELDS = dict(device_id=A, generation=3, not_before=T, not_after=T + 86400, llk=LLK)
TGT_FIELDS = dict(device_id=A, generation=3, not_before=T, not_after=T + 3600, registration_not_after=T + 86400, stk=STK)
TICKETS = [
    pytest.param(RegistrationTicket, 1, DRT_FIELDS, drt_body(A, 3, T, T + 86400, LLK), 103, id="drt"),
    pytest.param(GrantingTicket, 2, TGT_FIELDS, tgt_body(A, 3, T, T + 3600, T + 86400, STK), 111, id="tgt"),
]


@pytest.mark.parametrize("cls, kind, fields, body, size", TICKETS)
def test_ticket_seals_to_the_layout(cls, kind, fields, body, size):
    """docs/layouts.md#drt-service-part, #tgt-service-part: the code seals exactly the built bytes."""
    built = ticket(kind, body, N12)
    assert len(built) == size
    assert seal_ticket(ring(), cls(**fields), T, N12) == built


@pytest.mark.parametrize("cls, kind, fields, body, size", TICKETS)
def test_ticket_opens_field_by_field(cls, kind, fields, body, size):
    """docs/layouts.md#service-sealed-tickets: the code opens a ticket built here."""
    t = open_ticket(ring(), ticket(kind, body, N12), cls, T)
    assert isinstance(t, cls)
    for name, value in fields.items():
        assert getattr(t, name) == value, name


@pytest.mark.parametrize("cls, kind, fields, body, size", TICKETS)
def test_ticket_with_any_byte_changed_is_refused(cls, kind, fields, body, size):
    """docs/layouts.md#service-sealed-tickets: header and realm are AAD, the rest is GCM; a changed
    byte anywhere is refused (kind → InvalidTicket, version → unsupported, kvno → unknown key)."""
    built = ticket(kind, body, N12)
    assert open_ticket(ring(), built, cls, T) == cls(**fields)  # positive control
    expect = {0: E.InvalidTicket, 1: E.UnsupportedVersionError, **{i: E.UnknownKeyVersionError for i in range(2, 6)}}
    for i in range(len(built)):
        with pytest.raises(expect.get(i, E.InvalidTicket)):
            open_ticket(ring(), flipped(built, i), cls, T)


@pytest.mark.parametrize("cls, kind, fields, body, size", TICKETS)
def test_ticket_of_another_kvno_realm_or_kind_is_refused(cls, kind, fields, body, size):
    """docs/layouts.md#service-sealed-tickets: the key is per kvno, realm and kind."""
    other_cls = GrantingTicket if cls is RegistrationTicket else RegistrationTicket
    # wrong kvno: sealed under version 8, which the ring does not hold; a ring that holds it opens it
    v8 = ticket(kind, body, N12, kvno=8)
    with pytest.raises(E.UnknownKeyVersionError):
        open_ticket(ring(), v8, cls, T)
    assert open_ticket(ring(kvno=8), v8, cls, T) == cls(**fields)
    # right kvno, other master key
    with pytest.raises(E.InvalidTicket):
        open_ticket(ring(), ticket(kind, body, N12, master=KEK), cls, T)
    # wrong realm: the same key and kvno in another realm
    built = ticket(kind, body, N12)
    with pytest.raises(E.InvalidTicket):
        open_ticket(ring("other.example"), built, cls, T)
    assert open_ticket(ring(), built, cls, T) == cls(**fields)
    # wrong kind: as the other class, or with the other kind's label under this kind's header
    with pytest.raises(E.InvalidTicket):
        open_ticket(ring(), built, other_cls, T)
    other_label = b"ticket tgt" if kind == 1 else b"ticket drt"
    with pytest.raises(E.InvalidTicket):
        open_ticket(ring(), ticket(kind, body, N12, label=other_label), cls, T)
    # authentic but with a trailing byte in the body
    with pytest.raises(E.InvalidTicket):
        open_ticket(ring(), ticket(kind, body + b"\x00", N12), cls, T)


# == docs/layouts.md#ecies-device-part ============================================================
DRT_PART_PLAINTEXT = LLK + u32(3) + u64(T) + u64(T + 86400)


@pytest.mark.parametrize("seed", [SEED, SEED * 2], ids=["32-byte seed", "64-byte seed"])
def test_ecies_device_part_seals_to_the_layout(seed):
    """docs/layouts.md#ecies-device-part: ECDH with a fixed scalar, HKDF over both points, zero nonce."""
    device = p256(SCALAR_A).public_key()
    aad = drt_aad(REALM, A, N16)
    built = ecies(device, seed, DRT_PART_PLAINTEXT, aad)
    assert len(DRT_PART_PLAINTEXT) == 52 and len(built) == 101
    assert drt_device_aad(REALM, A, N16) == aad
    assert seal_to_public_key(device, DRT_PART_PLAINTEXT, aad, seed) == built


def test_ecies_device_part_opens_with_the_device_key():
    """docs/layouts.md#ecies-device-part: the code opens a part built here; every changed byte,
    another device key or another AAD is refused."""
    aad = drt_aad(REALM, A, N16)
    built = ecies(p256(SCALAR_A).public_key(), SEED, DRT_PART_PLAINTEXT, aad)
    assert open_with_private_key(p256(SCALAR_A), built, aad) == DRT_PART_PLAINTEXT  # positive control
    for i in range(len(built)):
        with pytest.raises(E.InvalidTicket):
            open_with_private_key(p256(SCALAR_A), flipped(built, i), aad)
    with pytest.raises(E.InvalidTicket):
        open_with_private_key(p256(SCALAR_B), built, aad)
    with pytest.raises(E.InvalidTicket):
        open_with_private_key(p256(SCALAR_A), built, drt_aad(REALM, A, bytes(16)))


def test_part_aads_and_bodies_as_documented():
    """docs/layouts.md#tgt-device-part, #session-parts: the AAD and plaintext helpers of the service."""
    tgt = b"\xd1" * 111
    assert tgt_device_aad(REALM, A, N16, tgt) == tgt_aad(REALM, A, N16, tgt)
    for role in (b"I", b"R"):
        assert session_part_aad(REALM, A, B, N16, role) == session_aad(role, REALM, A, B, N16)
    nr = bytes(range(16))
    assert session_part_body(STK, T + 600, A, B, N16, nr) == session_plaintext(STK, T + 600, A, B, N16, nr)


# == docs/layouts.md#messages =====================================================================
SIG = bytes(range(64))
MAC = bytes(range(100, 132))
NR = bytes(range(16, 32))
DRT_BLOB, TGT_BLOB, PART = b"\xd1" * 103, b"\xe1" * 111, b"\xe2" * 76
HW_A, HW_B = bytes.fromhex("02005e100001"), bytes.fromhex("02005e100002")  # Ethernet addresses, 6 bytes
MESSAGES = [
    (m.RegisterRequest, dict(realm=REALM, device_id=A, server_id=SERVER, timestamp=T, nonce=N16, signature=SIG),
     header(1) + id_(REALM) + id_(A) + id_(SERVER) + u64(T) + N16 + SIG, 64),
    (m.RegisterReply, dict(realm=REALM, device_id=A, request_nonce=N16, drt=DRT_BLOB, device_part=b"\xd2" * 101, signature=SIG),
     header(2) + id_(REALM) + id_(A) + N16 + blob(DRT_BLOB) + blob(b"\xd2" * 101) + SIG, 64),
    (m.AuthRequest, dict(realm=REALM, device_id=A, server_id=SERVER, timestamp=T, nonce=N16, drt=DRT_BLOB, mac=MAC),
     header(3) + id_(REALM) + id_(A) + id_(SERVER) + u64(T) + N16 + blob(DRT_BLOB) + MAC, 32),
    (m.TicketReply, dict(realm=REALM, device_id=A, request_nonce=N16, tgt=TGT_BLOB, device_part=PART),
     header(4) + id_(REALM) + id_(A) + N16 + blob(TGT_BLOB) + blob(PART), 0),
    (m.RenewRequest, dict(realm=REALM, device_id=A, server_id=SERVER, timestamp=T, nonce=N16, tgt=TGT_BLOB, mac=MAC),
     header(5) + id_(REALM) + id_(A) + id_(SERVER) + u64(T) + N16 + blob(TGT_BLOB) + MAC, 32),
    (m.SessionRequest, dict(realm=REALM, device_id=B, server_id=SERVER, timestamp=T, nonce=NR, tgt=TGT_BLOB,
                            hello=b"\x01\x20" + b"\xf0" * 191, mac=MAC),
     header(6) + id_(REALM) + id_(B) + id_(SERVER) + u64(T) + NR + blob(TGT_BLOB) + blob(b"\x01\x20" + b"\xf0" * 191) + MAC, 32),
    (m.SessionReply, dict(realm=REALM, initiator=A, responder=B, initiator_nonce=N16, request_nonce=NR, not_after=T + 600,
                          part_responder=b"\xa1" * 126, part_initiator=b"\xa2" * 126),
     header(7) + id_(REALM) + id_(A) + id_(B) + N16 + NR + u64(T + 600) + blob(b"\xa1" * 126) + blob(b"\xa2" * 126), 0),
    (m.SignedError, dict(realm=REALM, device_id=A, server_id=SERVER, request_nonce=N16, code=8, server_time=T,
                         detail=f"device {A} is revoked", signature=SIG),
     header(8) + id_(REALM) + id_(A) + id_(SERVER) + N16 + u16(8) + u64(T) + str_(f"device {A} is revoked") + SIG, 64),
    (m.ErrorMessage, dict(code=8, server_time=T, detail=f"device {A} is revoked"),
     header(15) + u16(8) + u64(T) + str_(f"device {A} is revoked"), 0),
    (m.PeerHello, dict(realm=REALM, initiator=A, responder=B, initiator_hw=HW_A, timestamp=T, nonce=N16, tgt=TGT_BLOB,
                       mac=MAC),
     header(32) + id_(REALM) + id_(A) + id_(B) + HW_A + u64(T) + N16 + blob(TGT_BLOB) + MAC, 32),
    (m.PeerTicket, dict(realm=REALM, initiator=A, responder=B, initiator_nonce=N16, responder_nonce=NR, responder_hw=HW_B,
                        not_after=T + 600, part_initiator=b"\xa2" * 126, finished=MAC),
     header(33) + id_(REALM) + id_(A) + id_(B) + N16 + NR + HW_B + u64(T + 600) + blob(b"\xa2" * 126) + MAC, 32),
    (m.PeerFinished, dict(realm=REALM, initiator=A, responder=B, initiator_nonce=N16, finished=MAC),
     header(34) + id_(REALM) + id_(A) + id_(B) + N16 + MAC, 32),
    (m.PeerData, dict(session_id=bytes(range(8)), seq=0x0102030405, sealed=b"\x98" * 20),
     header(35) + bytes(range(8)) + u64(0x0102030405) + b"\x98" * 20, 0),
    (m.PeerAnnounce, dict(realm=REALM, device_id=A, epoch=0x0102030405060708),
     header(36) + id_(REALM) + id_(A) + u64(0x0102030405060708), 0),
    (m.RevocationQuery, dict(realm=REALM, device_id=A, server_id=SERVER, timestamp=T, nonce=N16),
     header(9) + id_(REALM) + id_(A) + id_(SERVER) + u64(T) + N16, 0),
    (m.RevocationList, dict(realm=REALM, device_id=A, server_id=SERVER, request_nonce=N16, issued_at=T,
                            complete_since=T - 3900, revoked=((B, T - 5), (A + "-old", T - 60)), signature=SIG),
     header(10) + id_(REALM) + id_(A) + id_(SERVER) + N16 + u64(T) + u64(T - 3900)
     + u16(2) + id_(B) + u64(T - 5) + id_(A + "-old") + u64(T - 60) + SIG, 64),
    (m.PeerConfirm, dict(realm=REALM, initiator=A, responder=B, initiator_nonce=N16, confirm=MAC),
     header(37) + id_(REALM) + id_(A) + id_(B) + N16 + MAC, 32),
    (m.PeerFrame, dict(session_id=bytes(range(8)), seq=0x0102030405, sealed=b"\x98" * 30),
     header(38) + bytes(range(8)) + u64(0x0102030405) + b"\x98" * 30, 0),
]
MSG_IDS = [c.__name__ for c, *_ in MESSAGES]


def test_every_message_type_has_a_vector():
    """docs/layouts.md#messages lists 18 types; each has a case here."""
    assert sorted(c.TYPE for c, *_ in MESSAGES) == sorted(m.MESSAGES) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 32, 33, 34,
                                                                         35, 36, 37, 38]


@pytest.mark.parametrize("cls, fields, built, proof_len", MESSAGES, ids=MSG_IDS)
def test_message_encodes_to_the_layout(cls, fields, built, proof_len):
    """docs/layouts.md#messages: the code writes exactly the built bytes; the body ends before the proof."""
    msg = cls(**fields)
    assert msg.encode() == built
    if proof_len:
        assert msg.body() == built[:-proof_len]


@pytest.mark.parametrize("cls, fields, built, proof_len", MESSAGES, ids=MSG_IDS)
def test_message_decodes_field_by_field(cls, fields, built, proof_len):
    """docs/layouts.md#messages: the code reads the built bytes back, field by field."""
    msg = m.decode(built)
    assert isinstance(msg, cls)
    for name, value in fields.items():
        assert getattr(msg, name) == value, name
    if proof_len:
        assert msg.body() == built[:-proof_len]


@pytest.mark.parametrize("cls, fields, built, proof_len", MESSAGES, ids=MSG_IDS)
def test_message_truncated_extended_or_versioned_is_refused(cls, fields, built, proof_len):
    """docs/layouts.md#encodings: short, long (except a trailing `rest`) and version ≠ 1 are refused."""
    assert isinstance(m.decode(built), cls)  # positive control
    rest = cls in (m.PeerData, m.PeerFrame)
    short = built[:17] if rest else built[:-1]  # PeerData and PeerFrame end in `rest`: cut into the header
    with pytest.raises(E.MalformedError):
        m.decode(short)
    if not rest:
        with pytest.raises(E.MalformedError):
            m.decode(built + b"\x00")
    with pytest.raises(E.UnsupportedVersionError):
        m.decode(b"\x02" + built[1:])
    with pytest.raises(E.MalformedError):
        m.decode(built, tuple(c for c, *_ in MESSAGES if c is not cls))


def test_id_bound_is_64_bytes():
    """docs/layouts.md#encodings: an `id` of 64 bytes is read, one of 65 is refused."""
    ok = header(36) + u8(64) + b"r" * 64 + id_(A) + u64(1)
    assert m.decode(ok).realm == "r" * 64
    with pytest.raises(E.MalformedError):
        m.decode(header(36) + u8(65) + b"r" * 65 + id_(A) + u64(1))


# == docs/layouts.md#peer-key-schedule ============================================================
def test_key_schedule_as_documented():
    """docs/layouts.md#peer-key-schedule: th, the 160-byte okm and its split."""
    hello, ticket_body = header(32) + b"\x11" * 150, header(33) + b"\x22" * 200
    th = hashlib.sha256(u32(len(hello)) + hello + u32(len(ticket_body)) + ticket_body).digest()
    okm = HKDF(hashes.SHA256(), 160, th, b"tessera v1 peer keys\x00").derive(STK)
    assert kdf.transcript_hash(hello, ticket_body) == th
    ks = key_schedule(STK, hello, ticket_body)
    assert ks.transcript == th
    assert (ks.finished_responder, ks.finished_initiator) == (okm[0:32], okm[32:64])
    assert (ks.key_i2r, ks.key_r2i) == (okm[64:96], okm[96:128])
    assert (ks.iv_i2r, ks.iv_r2i) == (okm[128:140], okm[140:152])
    assert ks.session_id == okm[152:160]
    # the length prefixes separate the parts: the same bytes split differently hash differently
    assert kdf.transcript_hash(hello + ticket_body[:1], ticket_body[1:]) != th


# == docs/layouts.md#peer-records =================================================================
SID, RKEY, RIV = bytes(range(0x90, 0x98)), bytes(range(0x20, 0x40)), bytes.fromhex("f0e0d0c0b0a0908070605040")
PLAINTEXTS = [b"", b"first", b"\x42" * 200]


def test_record_seals_to_the_layout():
    """docs/layouts.md#peer-records: header, seq from 1, nonce = IV XOR seq, header as AAD."""
    sender = RecordSender(SID, RKEY, RIV)
    for seq, p in enumerate(PLAINTEXTS, 1):
        assert sender.seal(p) == record(SID, RKEY, RIV, seq, p)
    sender.seq = 0x0102030405 - 1  # a seq that reaches into five bytes of the IV
    assert sender.seal(b"late") == record(SID, RKEY, RIV, 0x0102030405, b"late")


def test_record_opens_and_decodes_field_by_field():
    """docs/layouts.md#peer-records, #peerdata: the code opens records built here."""
    rx = RecordReceiver(SID, RKEY, RIV)
    for seq, p in enumerate(PLAINTEXTS, 1):
        frame = record(SID, RKEY, RIV, seq, p)
        msg = m.decode(frame)
        assert isinstance(msg, m.PeerData)
        assert (msg.session_id, msg.seq, msg.sealed) == (SID, seq, frame[18:])
        assert session_id_of(frame) == SID
        assert rx.open(frame) == p


def test_record_changed_replayed_or_foreign_is_refused():
    """docs/layouts.md#peer-records: every byte is authenticated; replays and other sessions refused."""
    rx = RecordReceiver(SID, RKEY, RIV)
    assert rx.open(record(SID, RKEY, RIV, 1, b"one")) == b"one"
    two = record(SID, RKEY, RIV, 2, b"two")
    for i in range(len(two)):
        with pytest.raises((E.BadProofError, E.MalformedError, E.StateError, E.ReplayError)):
            rx.open(flipped(two, i))
    assert rx.open(two) == b"two"  # the refusals did not move the window
    with pytest.raises(E.ReplayError):
        rx.open(two)
    with pytest.raises(E.StateError):
        rx.open(record(bytes(8), RKEY, RIV, 3, b"x"))
    with pytest.raises(E.BadProofError):
        rx.open(record(SID, RKEY, bytes(12), 3, b"x"))  # another IV: another nonce
    assert rx.open(record(SID, RKEY, RIV, 3, b"x")) == b"x"


# == docs/layouts.md#service-key-at-rest ==========================================================
def test_service_key_at_rest_as_documented():
    """docs/layouts.md#service-key-at-rest: 60 bytes under derive(KEK, "keyring at rest")."""
    aad = b"service key\x00" + REALM.encode() + b"\x00" + u32(KVNO)
    built = aead(hkdf(KEK, b"keyring at rest"), N12, MASTER, aad)
    assert len(built) == 60
    assert servicekey.seal_at_rest(KEK, REALM, ServiceKey(KVNO, MASTER, T), N12) == built
    assert servicekey.open_at_rest(KEK, REALM, KVNO, built) == MASTER  # positive control
    with pytest.raises(E.InvalidTicket):
        servicekey.open_at_rest(KEK, REALM, KVNO + 1, built)
    with pytest.raises(E.InvalidTicket):
        servicekey.open_at_rest(KEK, "other.example", KVNO, built)
    with pytest.raises(E.InvalidTicket):
        servicekey.open_at_rest(MASTER, REALM, KVNO, built)


# == docs/layouts.md#other-sealed-state ===========================================================
def test_device_state_at_rest_as_documented():
    """docs/layouts.md#other-sealed-state: the agent's state file, built here, written and read by the code."""
    key = p256(SCALAR_A)
    drt, tgt = b"\xd1" * 103, b"\xe1" * 111
    body = (u8(1) + u8(1) + u8(1) + LLK + blob(drt) + u32(3) + u64(T) + u64(T + 86400)
            + STK + blob(tgt) + u64(T) + u64(T + 3600))
    state_key = hkdf(SCALAR_A.to_bytes(32, "big"), b"device state at rest", A.encode())
    built = aead(state_key, N12, body, A.encode())
    bundle = BootstrapBundle(REALM, A, point(p256(SCALAR_B).public_key()), [])
    dev = DeviceClient(bundle, DeviceKey(key))
    dev.registration = Registration(LLK, drt, 3, T, T + 86400)
    dev.credentials = Credentials(tgt, STK, T, T + 3600)
    assert dev.export_state(N12) == built
    fresh = DeviceClient(bundle, DeviceKey(key))
    fresh.import_state(built)
    g, c = fresh.registration, fresh.credentials
    assert (g.llk, g.drt, g.generation, g.not_before, g.not_after) == (LLK, drt, 3, T, T + 86400)
    assert (c.stk, c.tgt, c.not_before, c.not_after) == (STK, tgt, T, T + 3600)
    with pytest.raises(E.InvalidTicket):
        DeviceClient(bundle, DeviceKey(p256(SCALAR_B))).import_state(built)


def test_realm_secrets_at_rest_as_documented():
    """docs/layouts.md#other-sealed-state: the realm's signing key opens with the documented key and AAD."""
    realm = Realm.init(SQLiteRegistry(":memory:"), KEK, REALM, T, random=Counter(b"realm"))
    sealed = realm.registry.get_meta("service_signing_key")
    pem = AESGCM(hkdf(KEK, b"keyring at rest", b"meta")).decrypt(sealed[:12], sealed[12:], b"service_signing_key")
    key = serialization.load_pem_private_key(pem, None)
    assert point(key.public_key()) == realm.service_public_key


# == the exchanges: docs/layouts.md#messages, #proofs, the parts, #randomness =======================
class Script:
    """The service's random source, scripted (docs/layouts.md#randomness): each draw is the next
    value given, and must be of the size the documentation says comes next."""

    def __init__(self, *draws: bytes):
        self.draws = list(draws)

    def __call__(self, n: int) -> bytes:
        assert self.draws, f"unexpected draw of {n} random bytes"
        d = self.draws.pop(0)
        assert len(d) == n, f"drew {n} bytes where {len(d)} were expected"
        return d


@dataclass
class Flow:
    realm: Realm
    service: Service
    keys: dict  # device id → P-256 private key
    devices: dict  # device id → DeviceClient

    @property
    def service_key(self) -> ec.EllipticCurvePrivateKey:
        return self.realm.signing_key.private_key

    def answer(self, request: bytes, now: int, *draws: bytes) -> bytes:
        self.service.random = Script(*draws)
        reply = self.service.handle(request, now)
        assert self.service.random.draws == []
        return reply


@pytest.fixture
def flow():
    realm = Realm.init(SQLiteRegistry(":memory:"), KEK, REALM, T, random=Counter(b"flow"))
    service = Service(REALM, SERVER, ring(), realm.registry, realm.signing_key, Script(), POLICY)
    keys = {A: p256(SCALAR_A), B: p256(SCALAR_B)}
    devices = {}
    for device, key in keys.items():
        realm.enrol_key(device, point(key.public_key()), T)
        devices[device] = DeviceClient(realm.bundle(device, [], "s3cret"), DeviceKey(key))
    return Flow(realm, service, keys, devices)


# Per device: (LLK, DRT nonce, ECIES seed, register nonce, STK, TGT nonce, part nonce, auth nonce)
SECRETS = {
    A: (LLK, N12, SEED, N16, STK, bytes(range(12)), bytes(range(12, 24)), bytes(range(0x30, 0x40))),
    B: (bytes(range(0xE0, 0x100)), bytes(range(24, 36)), bytes(range(1, 33)), bytes(range(0x50, 0x60)),
        bytes(range(0x10, 0x30)), bytes(range(36, 48)), bytes(range(48, 60)), bytes(range(0x70, 0x80))),
}
REG_END, TGT_END = T + POLICY.registration_lifetime, T + POLICY.tgt_lifetime


def expected_drt(device: str) -> bytes:
    llk, drt_nonce, *_ = SECRETS[device]
    return ticket(1, drt_body(device, 1, T, REG_END, llk), drt_nonce)


def expected_tgt(device: str) -> bytes:
    _, _, _, _, stk, tgt_nonce, *_ = SECRETS[device]
    return ticket(2, tgt_body(device, 1, T, TGT_END, REG_END, stk), tgt_nonce)


def register(flow: Flow, device: str) -> None:
    llk, drt_nonce, seed, nonce, *_ = SECRETS[device]
    dev = flow.devices[device]
    dev.register_reply(flow.answer(dev.register_request(SERVER, T, nonce), T, llk, drt_nonce, seed), T)


def authenticate(flow: Flow, device: str) -> None:
    _, _, _, _, stk, tgt_nonce, part_nonce, nonce = SECRETS[device]
    dev = flow.devices[device]
    dev.ticket_reply(flow.answer(dev.auth_request(SERVER, T, nonce), T, stk, tgt_nonce, part_nonce), T)


def test_registration_exchange_as_documented(flow):
    """docs/layouts.md#registerrequest, #registerreply, #proofs, #drt-service-part, #ecies-device-part."""
    llk, drt_nonce, seed, nonce, *_ = SECRETS[A]
    dev, key = flow.devices[A], flow.keys[A]
    body = header(1) + id_(REALM) + id_(A) + id_(SERVER) + u64(T) + nonce
    # the device writes the documented body and signs it under the documented context
    request = dev.register_request(SERVER, T, nonce)
    assert request[:-64] == body
    assert ecdsa_ok(key.public_key(), b"tessera v1 register\x00" + body, request[-64:])
    # the service accepts a request built and signed here, and answers with the built reply body
    reply = flow.answer(body + ecdsa_sign(key, b"tessera v1 register\x00" + body), T, llk, drt_nonce, seed)
    drt = expected_drt(A)
    part = ecies(key.public_key(), seed, llk + u32(1) + u64(T) + u64(REG_END), drt_aad(REALM, A, nonce))
    reply_body = header(2) + id_(REALM) + id_(A) + nonce + blob(drt) + blob(part)
    assert reply[:-64] == reply_body
    assert ecdsa_ok(flow.service_key.public_key(), b"tessera v1 register reply\x00" + reply_body, reply[-64:])
    # the device takes a reply built and signed here, field by field
    reg = dev.register_reply(reply_body + ecdsa_sign(flow.service_key, b"tessera v1 register reply\x00" + reply_body), T)
    assert (reg.llk, reg.drt, reg.generation, reg.not_before, reg.not_after) == (llk, drt, 1, T, REG_END)


def test_registration_with_a_bad_signature_is_refused(flow):
    """docs/layouts.md#proofs: a signature under another context or key is refused; the right one
    is accepted (positive control)."""
    llk, drt_nonce, seed, nonce, *_ = SECRETS[A]
    body = header(1) + id_(REALM) + id_(A) + id_(SERVER) + u64(T) + nonce
    with pytest.raises(E.BadProofError):
        flow.answer(body + ecdsa_sign(flow.keys[A], body), T)
    with pytest.raises(E.BadProofError):
        flow.answer(body + ecdsa_sign(flow.keys[B], b"tessera v1 register\x00" + body), T)
    assert flow.answer(body + ecdsa_sign(flow.keys[A], b"tessera v1 register\x00" + body), T, llk, drt_nonce, seed)


def test_authentication_exchange_as_documented(flow):
    """docs/layouts.md#authrequest, #ticketreply, #proofs, #tgt-service-part, #tgt-device-part."""
    register(flow, A)
    llk, _, _, _, stk, tgt_nonce, part_nonce, nonce = SECRETS[A]
    drt = expected_drt(A)
    body = header(3) + id_(REALM) + id_(A) + id_(SERVER) + u64(T) + nonce + blob(drt)
    request = body + hmac256(hkdf(llk, b"auth proof"), body)
    assert flow.devices[A].auth_request(SERVER, T, nonce) == request
    # a changed proof is refused, the built one answered with the built reply
    with pytest.raises(E.BadProofError):
        flow.answer(flipped(request, len(request) - 1), T)
    tgt = expected_tgt(A)
    part = aead(hkdf(llk, b"tgt device part"), part_nonce, stk + u64(T) + u64(TGT_END), tgt_aad(REALM, A, nonce, tgt))
    reply = header(4) + id_(REALM) + id_(A) + nonce + blob(tgt) + blob(part)
    assert len(tgt) == 111 and len(part) == 76
    assert flow.answer(request, T, stk, tgt_nonce, part_nonce) == reply
    creds = flow.devices[A].ticket_reply(reply, T)
    assert (creds.tgt, creds.stk, creds.not_before, creds.not_after) == (tgt, stk, T, TGT_END)


def test_renewal_exchange_as_documented(flow):
    """docs/layouts.md#renewrequest, #ticketreply, #proofs, #tgt-device-part (the renewal key)."""
    register(flow, A)
    authenticate(flow, A)
    _, _, _, _, stk, *_ = SECRETS[A]
    now, nonce, new_stk, n_tgt, n_part = T + 100, bytes(range(0x40, 0x50)), bytes(range(0x55, 0x75)), b"\x01" * 12, b"\x02" * 12
    old_tgt = expected_tgt(A)
    body = header(5) + id_(REALM) + id_(A) + id_(SERVER) + u64(now) + nonce + blob(old_tgt)
    request = body + hmac256(hkdf(stk, b"renew proof"), body)
    assert flow.devices[A].renew_request(SERVER, now, nonce) == request
    with pytest.raises(E.BadProofError):  # a changed proof, or one under the auth label, is refused
        flow.answer(flipped(request, len(request) - 1), now)
    with pytest.raises(E.BadProofError):
        flow.answer(body + hmac256(hkdf(stk, b"auth proof"), body), now)
    not_after = min(now + POLICY.tgt_lifetime, REG_END)
    tgt = ticket(2, tgt_body(A, 1, now, not_after, REG_END, new_stk), n_tgt)
    part = aead(hkdf(stk, b"renew device part"), n_part, new_stk + u64(now) + u64(not_after), tgt_aad(REALM, A, nonce, tgt))
    reply = header(4) + id_(REALM) + id_(A) + nonce + blob(tgt) + blob(part)
    assert flow.answer(request, now, new_stk, n_tgt, n_part) == reply
    creds = flow.devices[A].ticket_reply(reply, now)
    assert (creds.tgt, creds.stk, creds.not_before, creds.not_after) == (tgt, new_stk, now, not_after)


def test_peer_handshake_and_records_as_documented(flow):
    """docs/layouts.md#peerhello, #sessionrequest, #sessionreply, #session-parts, #peerticket,
    #peerfinished, #peerconfirm, #peer-key-schedule, #peer-records: every byte A, B and the service write."""
    for device in (A, B):
        register(flow, device)
        authenticate(flow, device)
    stk_a, stk_b = SECRETS[A][4], SECRETS[B][4]
    tgt_a, tgt_b = expected_tgt(A), expected_tgt(B)
    ni, nr, session_key, nonce_r, nonce_i = N16, NR, bytes(range(0x33, 0x53)), b"\x0b" * 12, b"\x0c" * 12

    hello_body = header(32) + id_(REALM) + id_(A) + id_(B) + HW_A + u64(T) + ni + blob(tgt_a)
    hello = hello_body + hmac256(hkdf(stk_a, b"peer authenticator"), hello_body)
    initiator = PeerInitiator(flow.devices[A], B)
    assert initiator.hello(T, ni, HW_A) == hello

    responder = PeerResponder(flow.devices[B])
    responder.receive_hello(hello, T)
    req_body = header(6) + id_(REALM) + id_(B) + id_(SERVER) + u64(T) + nr + blob(tgt_b) + blob(hello)
    request = req_body + hmac256(hkdf(stk_b, b"session request"), req_body)
    assert responder.session_request(SERVER, T, nr) == request

    not_after = min(TGT_END, TGT_END, T + POLICY.session_lifetime)
    plaintext = session_plaintext(session_key, not_after, A, B, ni, nr)
    part_r = aead(hkdf(stk_b, b"session part"), nonce_r, plaintext, session_aad(b"R", REALM, A, B, ni))
    part_i = aead(hkdf(stk_a, b"session part"), nonce_i, plaintext, session_aad(b"I", REALM, A, B, ni))
    reply = header(7) + id_(REALM) + id_(A) + id_(B) + ni + nr + u64(not_after) + blob(part_r) + blob(part_i)
    assert flow.answer(request, T, session_key, nonce_r, nonce_i) == reply

    ticket_body = header(33) + id_(REALM) + id_(A) + id_(B) + ni + nr + HW_B + u64(not_after) + blob(part_i)
    th = hashlib.sha256(u32(len(hello)) + hello + u32(len(ticket_body)) + ticket_body).digest()
    okm = HKDF(hashes.SHA256(), 160, th, b"tessera v1 peer keys\x00").derive(session_key)
    finished_r = hmac256(okm[0:32], b"responder finished" + th)
    assert responder.receive_session_reply(reply, T, HW_B) == ticket_body + finished_r

    finished_i = hmac256(okm[32:64], b"initiator finished" + th + finished_r)
    fin = header(34) + id_(REALM) + id_(A) + id_(B) + ni + finished_i
    with pytest.raises(E.BadProofError):  # B's finished changed: A refuses, then takes the right one
        initiator.receive_ticket(ticket_body + flipped(finished_r, 0), T)
    assert initiator.receive_ticket(ticket_body + finished_r, T) == fin
    with pytest.raises(E.BadProofError):
        responder.receive_finished(flipped(fin, len(fin) - 1), T)
    channel_b = responder.receive_finished(fin, T)

    confirm_r = hmac256(okm[0:32], b"responder confirm" + th + finished_i)
    confirm = header(37) + id_(REALM) + id_(A) + id_(B) + ni + confirm_r
    assert responder.confirm_bytes == confirm
    with pytest.raises(E.BadProofError):  # B's confirm changed: A refuses, stays confirming, then takes the right one
        initiator.receive_confirm(flipped(confirm, len(confirm) - 1))
    assert initiator.state.value == "confirming"
    initiator.receive_confirm(confirm)
    assert initiator.state.value == "established"

    sid = okm[152:160]
    assert initiator.channel.session_id == channel_b.session_id == sid
    a_to_b = record(sid, okm[64:96], okm[128:140], 1, b"ping")
    b_to_a = record(sid, okm[96:128], okm[140:152], 1, b"pong")
    assert initiator.channel.seal(b"ping") == a_to_b
    assert channel_b.seal(b"pong") == b_to_a
    assert channel_b.open(a_to_b) == b"ping"
    assert initiator.channel.open(b_to_a) == b"pong"


def test_session_request_with_a_changed_authenticator_is_refused(flow):
    """docs/layouts.md#proofs: the service checks A's authenticator inside B's request; the
    untouched hello is answered (positive control)."""
    for device in (A, B):
        register(flow, device)
        authenticate(flow, device)
    hello = PeerInitiator(flow.devices[A], B).hello(T, N16)
    stk_b, tgt_b = SECRETS[B][4], expected_tgt(B)

    def request(h: bytes, nr: bytes) -> bytes:
        body = header(6) + id_(REALM) + id_(B) + id_(SERVER) + u64(T) + nr + blob(tgt_b) + blob(h)
        return body + hmac256(hkdf(stk_b, b"session request"), body)

    with pytest.raises(E.BadProofError):
        flow.answer(request(flipped(hello, len(hello) - 1), NR), T)
    with pytest.raises(E.BadProofError):  # B's own proof under another label
        body = request(hello, N12 + b"\x00" * 4)[:-32]
        flow.answer(body + hmac256(hkdf(stk_b, b"peer authenticator"), body), T)
    assert m.decode(flow.answer(request(hello, NR), T, STK, N12, N12)).part_initiator


# == docs/layouts.md#signederror ==================================================================
ERROR_CONTEXT = b"tessera v1 error\x00"


def signed_error_body(device: str, nonce: bytes, code: int, server_time: int, detail: str, server: str = SERVER) -> bytes:
    """docs/layouts.md#signederror: realm ‖ device_id ‖ server_id ‖ request_nonce ‖ code ‖ server_time ‖ detail."""
    return header(8) + id_(REALM) + id_(device) + id_(server) + nonce + u16(code) + u64(server_time) + str_(detail)


def test_signed_error_the_service_writes_as_documented(flow):
    """docs/layouts.md#signederror: a revoked device's proven AuthRequest and a proven request
    from a clock an hour fast get SignedErrors with the documented body, whose signature verifies
    with the service key over the documented context (ECDSA is randomised: verified, not compared);
    the same errors for an unproven request are the unsigned ErrorMessage of #errormessage."""
    register(flow, A)
    *_, nonce = SECRETS[A]
    dev = flow.devices[A]
    # a clock an hour fast: clock-skew, server_time = the server's clock
    fast = dev.auth_request(SERVER, T + 3600, nonce)
    with pytest.raises(E.ClockSkewError) as exc:
        flow.answer(fast, T)
    reply = flow.service.error_reply(exc.value, T)
    body = signed_error_body(A, nonce, 13, T, str(exc.value))
    assert reply[:-64] == body and len(reply) == len(body) + 64
    assert ecdsa_ok(flow.service_key.public_key(), ERROR_CONTEXT + body, reply[-64:])
    assert not ecdsa_ok(flow.service_key.public_key(), body, reply[-64:])  # the context is under the signature
    dev.abandon()
    # revoked, answering a request whose LLK proof verified
    flow.realm.revoke(A, T, "test")
    request = dev.auth_request(SERVER, T, nonce)
    with pytest.raises(E.RevokedError) as exc:
        flow.answer(request, T)
    reply = flow.service.error_reply(exc.value, T)
    body = signed_error_body(A, nonce, 8, T, str(exc.value))
    assert reply[:-64] == body
    assert ecdsa_ok(flow.service_key.public_key(), ERROR_CONTEXT + body, reply[-64:])
    # the same request with its MAC changed: bad-proof, unsigned (docs/layouts.md#errormessage)
    forged = request[:-1] + bytes([request[-1] ^ 1])
    with pytest.raises(E.BadProofError) as exc:
        flow.answer(forged, T)
    assert flow.service.error_reply(exc.value, T) == header(15) + u16(14) + u64(0) + str_(str(exc.value))


def test_signed_error_built_here_is_taken_and_any_other_is_transient(flow):
    """docs/layouts.md#signederror: the device acts on a SignedError built and signed here with
    cryptography (positive control: RevokedError, signed, with the server's time); the same body
    signed without the context, by another key, for another nonce or server, or the same code in
    an unsigned ErrorMessage (#errormessage), is a BadProofError and changes nothing."""
    register(flow, A)
    *_, nonce = SECRETS[A]
    dev = flow.devices[A]
    detail = f"device {A} is revoked"
    cases = {
        "no context": ecdsa_sign(flow.service_key, signed_error_body(A, nonce, 8, T, detail)),
        "device key": ecdsa_sign(flow.keys[A], ERROR_CONTEXT + signed_error_body(A, nonce, 8, T, detail)),
        "register reply context": ecdsa_sign(flow.service_key, b"tessera v1 register reply\x00"
                                             + signed_error_body(A, nonce, 8, T, detail)),
    }
    for name, sig in cases.items():
        dev.auth_request(SERVER, T, nonce)
        with pytest.raises(E.BadProofError):
            dev.ticket_reply(signed_error_body(A, nonce, 8, T, detail) + sig, T)
        assert dev.registration is not None and dev.state.value == "registered", name
    for body in (signed_error_body(A, bytes(16), 8, T, detail), signed_error_body(A, nonce, 8, T, detail, "radius-b"),
                 signed_error_body(B, nonce, 8, T, detail)):
        dev.auth_request(SERVER, T, nonce)
        with pytest.raises(E.BadProofError):
            dev.ticket_reply(body + ecdsa_sign(flow.service_key, ERROR_CONTEXT + body), T)
    dev.auth_request(SERVER, T, nonce)
    with pytest.raises(E.BadProofError):
        dev.ticket_reply(header(15) + u16(8) + u64(T) + str_(detail), T)
    assert dev.registration is not None
    # positive control: the documented body, signed by the service key under the context
    dev.auth_request(SERVER, T, nonce)
    body = signed_error_body(A, nonce, 8, T + 5, detail)
    with pytest.raises(E.RevokedError) as exc:
        dev.ticket_reply(body + ecdsa_sign(flow.service_key, ERROR_CONTEXT + body), T)
    assert exc.value.signed and exc.value.server_time == T + 5 and str(exc.value) == detail


# == the citations themselves ======================================================================
def test_every_cited_section_exists_and_every_test_cites_one():
    """Each section of docs/layouts.md that these tests or the core's docstrings name is one of its
    headings (GitHub's anchors: lower case, spaces to hyphens, punctuation dropped), and every
    test here names one."""
    import pathlib
    import re
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "layouts.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", doc, re.M)}
    cited = set()
    for path in [pathlib.Path(__file__), *(root / "tessera").glob("*.py")]:
        text = path.read_text()
        cited |= set(re.findall(r"docs/layouts\.md#([a-z0-9-]+)", text))
        cited |= {a for line in re.findall(r"docs/layouts\.md#[^\n]*", text) for a in re.findall(r"#([a-z0-9-]+)", line)}
    assert cited and cited <= anchors, sorted(cited - anchors)
    module = sys.modules[__name__]
    for name, fn in vars(module).items():
        if name.startswith("test_") and name != "test_every_cited_section_exists_and_every_test_cites_one":
            assert "docs/layouts.md#" in (fn.__doc__ or ""), f"{name} cites no section"
