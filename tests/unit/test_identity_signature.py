"""identity.sign / verify: 64-byte r||s ECDSA P-256, converted to and from DER by hand.

The oracle is cryptography's own DER codec (encode/decode_dss_signature), which the module no
longer calls on the request path."""

import types

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from tessera import identity

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551  # the P-256 group order


@pytest.mark.parametrize("r, s", [(0, 0), (1, N - 1), (0x7F, 0x80), (2 ** 255, 2 ** 255 - 1), (2 ** 248 - 1, 2 ** 247),
                                  (2 ** 256 - 1, 1)])
def test_identity_der_is_x690_minimal(r, s):
    body = identity._der_integer(r.to_bytes(32, "big")) + identity._der_integer(s.to_bytes(32, "big"))
    assert b"\x30" + bytes((len(body),)) + body == encode_dss_signature(r, s)



@pytest.mark.parametrize("r, s", [(1, N - 1), (0x7F, 0x80), (2 ** 255, 2 ** 255 - 1), (2 ** 248 - 1, 2 ** 247),
                                  (5, 2 ** 200)])
def test_identity_sign_unpacks_every_der_length(r, s):
    """Short values (leading zero bytes), and a 00 byte before a high bit, come out as 32 bytes each."""
    der_signer = types.SimpleNamespace(sign=lambda data, algorithm: encode_dss_signature(r, s))
    assert identity.sign(der_signer, b"") == r.to_bytes(32, "big") + s.to_bytes(32, "big")


def test_identity_sign_is_r_s_of_a_signature_that_verifies_with_the_standard_codec():
    key = ec.derive_private_key(0x1234567890ABCDEF, ec.SECP256R1())
    for i in range(64):  # every length of r and s OpenSSL produces shows up in a few dozen signatures
        data = b"message %d" % i
        sig = identity.sign(key, data)
        assert len(sig) == 64
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        key.public_key().verify(der, data, ec.ECDSA(hashes.SHA256()))  # raises if not
        assert identity.verify(key.public_key(), sig, data)
        assert not identity.verify(key.public_key(), sig, data + b"!")


def test_identity_verify_takes_a_standard_signature_and_refuses_bad_ones():
    key = ec.derive_private_key(0xFEDCBA0987654321, ec.SECP256R1())
    r, s = decode_dss_signature(key.sign(b"data", ec.ECDSA(hashes.SHA256())))
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert identity.verify(key.public_key(), sig, b"data")
    assert not identity.verify(key.public_key(), sig[:31] + bytes([sig[31] ^ 1]) + sig[32:], b"data")
    assert not identity.verify(key.public_key(), bytes(32) + sig[32:], b"data")  # r = 0
    assert not identity.verify(key.public_key(), N.to_bytes(32, "big") + sig[32:], b"data")  # r = n
    assert not identity.verify(key.public_key(), sig[:63], b"data")
