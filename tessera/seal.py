"""Sealing: AEAD with associated data, and sealing to a device's P-256 public key.

* `Sealer` wraps AES-256-GCM with a 12-byte nonce carried in front of the ciphertext. The
  associated data binds the header (kind, version, key version, realm) so that a ticket moved
  to another kind, key version or realm does not open.
* `seal_to_public_key` is ECIES on P-256: an ephemeral key pair, ECDH with the recipient's
  static key, HKDF-SHA256 over both public keys, AES-256-GCM with a zero nonce (the key is used
  once). The ephemeral private key comes from caller-supplied random bytes, so vectors are
  deterministic. P-256 rather than X25519 because the same device key signs (ECDSA) and sits in
  the X.509 certificate EAP-TLS uses; ECDSA and ECIES on one key are jointly secure
  (Degabriele, Lehmann, Paterson, Smart, Strefler: "On the joint security of encryption and
  signature in EMV", CT-RSA 2012).
Every failure to open raises `InvalidTicket`; the caller adds the local reason.

Byte layout: docs/layouts.md#ecies-device-part
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import kdf
from .errors import InvalidTicket

NONCE_LEN = 12
TAG_LEN = 16
POINT_LEN = 33  # compressed SEC1 P-256 point
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class Sealer:
    """AES-256-GCM under one key; output is nonce || ciphertext || tag."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes):
        if len(key) != 32:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._aead = AESGCM(key)

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        if len(nonce) != NONCE_LEN:
            raise ValueError("nonce must be 12 bytes")
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < NONCE_LEN + TAG_LEN:
            raise InvalidTicket("sealed data shorter than nonce and tag")
        try:
            return self._aead.decrypt(sealed[:NONCE_LEN], sealed[NONCE_LEN:], aad)
        except InvalidTag:
            raise InvalidTicket("authentication tag does not verify") from None


def private_key_from_seed(seed: bytes) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from ≥ 32 random bytes (reduced into [1, n-1])."""
    if len(seed) < 32:
        raise ValueError("need at least 32 random bytes")
    scalar = int.from_bytes(seed[:48] if len(seed) >= 48 else seed, "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def point_bytes(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """Compressed SEC1 encoding (33 bytes)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public_key.public_bytes(Encoding.X962, PublicFormat.CompressedPoint)


def point_from_bytes(data: bytes) -> ec.EllipticCurvePublicKey:
    """Decode a compressed or uncompressed P-256 point; a bad point is malformed input."""
    from .errors import MalformedError

    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes(data))
    except (ValueError, TypeError) as exc:
        raise MalformedError("not a P-256 point") from exc


def seal_to_public_key(recipient: ec.EllipticCurvePublicKey, plaintext: bytes, aad: bytes, seed: bytes) -> bytes:
    """ECIES-P256-HKDF-SHA256-AES256GCM: ephemeral point (33) || ciphertext || tag."""
    eph = private_key_from_seed(seed)
    eph_pub = point_bytes(eph.public_key())
    shared = eph.exchange(ec.ECDH(), recipient)
    key = kdf.derive(shared, kdf.SEAL_TO_DEVICE, eph_pub + point_bytes(recipient))
    return eph_pub + AESGCM(key).encrypt(b"\x00" * NONCE_LEN, plaintext, aad)


def open_with_private_key(private_key: ec.EllipticCurvePrivateKey, sealed: bytes, aad: bytes) -> bytes:
    """Open `seal_to_public_key` output; any failure is `InvalidTicket`."""
    if len(sealed) < POINT_LEN + TAG_LEN:
        raise InvalidTicket("sealed data shorter than point and tag")
    try:
        eph = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sealed[:POINT_LEN])
    except ValueError:
        raise InvalidTicket("ephemeral point is not on P-256") from None
    shared = private_key.exchange(ec.ECDH(), eph)
    key = kdf.derive(shared, kdf.SEAL_TO_DEVICE, sealed[:POINT_LEN] + point_bytes(private_key.public_key()))
    try:
        return AESGCM(key).decrypt(b"\x00" * NONCE_LEN, sealed[POINT_LEN:], aad)
    except InvalidTag:
        raise InvalidTicket("sealed part does not open with this device key") from None
