"""The primitives under every layout, against published vectors (tests/vectors/published.py):
HKDF-SHA256 (RFC 5869 Appendix A), AES-256-GCM (GCM spec test cases 13-16) through the core's
own AEAD wrapper `seal.Sealer`, HMAC-SHA256 (RFC 4231) through `kdf.mac`.

docs/layouts.md#hkdf-labels and #aead-sealing say how the core uses them; test_vectors.py builds
every layout with these same primitives, so this file is what anchors those builds to the specs.
"""

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from tessera import errors as E, kdf
from tessera.seal import Sealer
from tests.vectors.published import AES256_GCM, HKDF_SHA256, HMAC_SHA256


def rfc5869_extract(salt: bytes, ikm: bytes) -> bytes:
    """RFC 5869 §2.2, written out: PRK = HMAC-Hash(salt, IKM), salt defaulting to HashLen zeros."""
    return hmac.new(salt or b"\x00" * 32, ikm, hashlib.sha256).digest()


def rfc5869_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 §2.3, written out: T(i) = HMAC-Hash(PRK, T(i-1) | info | i)."""
    t, okm = b"", b""
    for i in range(1, -(-length // 32) + 1):
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        okm += t
    return okm[:length]


@pytest.mark.parametrize("name, ikm, salt, info, length, prk, okm", HKDF_SHA256, ids=[v[0] for v in HKDF_SHA256])
def test_hkdf_rfc5869_appendix_a(name, ikm, salt, info, length, prk, okm):
    """RFC 5869 A.1-A.3, both through `cryptography`'s HKDF (what kdf.derive calls and what the
    layout tests build with) and through extract/expand written out from the RFC."""
    assert rfc5869_extract(salt, ikm) == prk
    assert rfc5869_expand(prk, info, length) == okm
    assert HKDF(hashes.SHA256(), length, salt or None, info).derive(ikm) == okm
    assert HKDFExpand(hashes.SHA256(), length, info).derive(prk) == okm


def test_kdf_derive_is_rfc5869_with_the_tessera_info():
    """docs/layouts.md#hkdf-labels: derive = HKDF(ikm, salt, "tessera v1 " ‖ label ‖ 0x00 ‖ context),
    here with RFC 5869 A.1's IKM and salt and A.3's empty salt (→ 32 zero bytes)."""
    _, ikm, salt, _, _, _, _ = HKDF_SHA256[0]
    info = b"tessera v1 " + b"ticket drt" + b"\x00" + b"example.net"
    assert kdf.derive(ikm, b"ticket drt", b"example.net", 42, salt) == rfc5869_expand(rfc5869_extract(salt, ikm), info, 42)
    assert kdf.derive(ikm, b"ticket drt", b"example.net") == rfc5869_expand(rfc5869_extract(b"", ikm), info, 32)
    assert kdf.derive(ikm, b"ticket drt", b"example.net") != kdf.derive(ikm, b"ticket tgt", b"example.net")


@pytest.mark.parametrize("name, key, iv, plaintext, aad, ciphertext, tag", AES256_GCM, ids=[v[0] for v in AES256_GCM])
def test_sealer_is_aes256_gcm_per_the_gcm_spec(name, key, iv, plaintext, aad, ciphertext, tag):
    """docs/layouts.md#aead-sealing: Sealer.seal = nonce ‖ C ‖ T of AES-256-GCM (GCM spec, test
    cases 13-16), and Sealer.open takes exactly that back."""
    sealer = Sealer(key)
    assert sealer.seal(iv, plaintext, aad) == iv + ciphertext + tag
    assert sealer.open(iv + ciphertext + tag, aad) == plaintext


@pytest.mark.parametrize("name, key, iv, plaintext, aad, ciphertext, tag", AES256_GCM, ids=[v[0] for v in AES256_GCM])
def test_sealer_refuses_a_changed_vector(name, key, iv, plaintext, aad, ciphertext, tag):
    """Every byte counts: a changed nonce, ciphertext byte, tag byte or AAD is InvalidTicket, while
    the same Sealer opens the published vector (positive control)."""
    sealer, sealed = Sealer(key), iv + ciphertext + tag
    assert sealer.open(sealed, aad) == plaintext
    for i in {0, 11, 12 + len(ciphertext) // 2, len(sealed) - 1}:
        changed = bytearray(sealed)
        changed[i] ^= 0x01
        with pytest.raises(E.InvalidTicket):
            sealer.open(bytes(changed), aad)
    with pytest.raises(E.InvalidTicket):
        sealer.open(sealed, aad + b"\x00")


@pytest.mark.parametrize("name, key, data, mac", HMAC_SHA256, ids=[v[0] for v in HMAC_SHA256])
def test_kdf_mac_is_hmac_sha256_per_rfc4231(name, key, data, mac):
    """docs/layouts.md#proofs: every MAC is HMAC-SHA256 (RFC 4231 §4.2, §4.3)."""
    assert kdf.mac(key, data) == mac
    assert kdf.mac_ok(key, data, mac)
    assert not kdf.mac_ok(key, data, mac[:-1] + bytes([mac[-1] ^ 1]))
