"""Key derivation: every key Tessera uses comes out of HKDF-SHA256 with a distinct label.

One labelled HKDF gives domain separation between ticket kinds, proof keys and traffic keys: a
key derived for one purpose never verifies or opens anything of another purpose, so a DRT
cannot be spliced in where a TGT belongs and an LLK proof cannot pass as an STK proof.
Byte layout: docs/layouts.md#hkdf-labels (every label spelled out; tests/unit/test_vectors.py checks them).
"""

from __future__ import annotations

import hashlib
import hmac

try:  # OpenSSL's HMAC as the stdlib's hmac.new uses it, without hmac.HMAC's Python wrapper
    from _hashlib import hmac_new as _hmac_new
except ImportError:  # a Python built without OpenSSL: the stdlib's pure path
    _hmac_new = hmac.new

PROTOCOL = b"tessera v1 "
_MAX_OKM = 255 * 32

# Labels (HKDF info prefixes). Ticket keys add the realm after the label.
TICKET_DRT = b"ticket drt"  # service part of the device registration ticket
TICKET_TGT = b"ticket tgt"  # service part of the ticket-granting ticket
KEYRING_AT_REST = b"keyring at rest"  # service keys sealed in the registry under the KEK
SEAL_TO_DEVICE = b"seal to device"  # ECIES key for the DRT's device part
AUTH_PROOF = b"auth proof"  # MAC key from the LLK: proof of possession for a TGT
TGT_DEVICE_PART = b"tgt device part"  # AEAD key from the LLK: the TGT's device part
RENEW_PROOF = b"renew proof"  # MAC key from the STK: proof for a renewal
RENEW_DEVICE_PART = b"renew device part"  # AEAD key from the old STK: the renewed TGT's device part
PEER_AUTHENTICATOR = b"peer authenticator"  # MAC key from the STK: A's authenticator bound to B
SESSION_REQUEST = b"session request"  # MAC key from the STK: B's request for a session key
SESSION_PART = b"session part"  # AEAD key from the STK: one half of the shared service ticket
PEER_KEYS = b"peer keys"  # key schedule of a peer session, salted with the transcript hash
EAP_PWD = b"eap-pwd password"  # EAP-PWD password for port admission of a registered device


def _hmac(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 in one call into OpenSSL (~0.35 µs less than ``hmac.new(...).digest()``)."""
    return _hmac_new(key, data, "sha256").digest()


def derive(key: bytes, label: bytes, context: bytes = b"", length: int = 32, salt: bytes = b"") -> bytes:
    """HKDF-SHA256(key, salt, info = "tessera v1 " || label || 0x00 || context).

    RFC 5869 spelled out with OpenSSL's HMAC-SHA256 (extract, then one expand block per 32
    bytes), the construction `derive_keys` shares; the same bytes as cryptography's HKDF
    (tests/unit/test_vectors.py and test_hot_path.py check this against it)."""
    if not 0 < length <= _MAX_OKM:
        raise ValueError(f"HKDF-SHA256 gives 1 to {_MAX_OKM} bytes")
    prk = _hmac(salt or bytes(32), key)  # RFC 5869: no salt is HashLen zero bytes
    info = PROTOCOL + label + b"\x00" + context
    if length <= 32:
        return _hmac(prk, info + b"\x01")[:length]
    okm, block = [], b""
    for i in range(1, -(-length // 32) + 1):
        block = _hmac(prk, block + info + bytes((i,)))
        okm.append(block)
    return b"".join(okm)[:length]


def derive_keys(key: bytes, *labels: bytes) -> list[bytes]:
    """``[derive(key, label) for label in labels]`` (32 bytes each, no context, no salt),
    with the HKDF extract done once: a request's proof key and reply key come from one STK or
    LLK, so the pair costs three HMACs instead of four."""
    prk = _hmac(bytes(32), key)
    return [_hmac(prk, PROTOCOL + label + b"\x00\x01") for label in labels]


def mac(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256, the MAC of every proof and finished message (32 bytes)."""
    return _hmac_new(key, data, "sha256").digest()


def mac_ok(key: bytes, data: bytes, tag: bytes) -> bool:
    """Constant-time check of a MAC."""
    return hmac.compare_digest(mac(key, data), tag)


def transcript_hash(*parts: bytes) -> bytes:
    """SHA-256 over length-prefixed parts, so that no two splits of the bytes collide."""
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(4, "big"))
        h.update(p)
    return h.digest()
