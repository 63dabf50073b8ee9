"""Service keys: the realm's master sealing keys, each with a version number (like a kvno).

A `KeyRing` holds every version still needed. The newest active version seals new tickets; an
older version keeps opening tickets sealed under it until `retire_at`, the moment the last
ticket it could have sealed expires (the time it was replaced + the longest ticket lifetime).
Rotation therefore never invalidates a live ticket. Per-purpose AEAD keys are derived from
each master key with a labelled HKDF (kdf.TICKET_DRT / kdf.TICKET_TGT + realm), once, and kept.

At rest the master keys are sealed under a key-encryption key (KEK, a 32-byte file readable only
by the service, like the Kerberos stash file), with the kvno and realm as associated data.

Byte layout: docs/layouts.md#service-key-at-rest
"""

from __future__ import annotations

from dataclasses import dataclass

from . import kdf
from .errors import UnknownKeyVersionError
from .seal import Sealer

KEY_LEN = 32


@dataclass(frozen=True)
class ServiceKey:
    kvno: int
    key: bytes
    created: int
    retire_at: int | None = None  # None: the current key; else usable for opening until then

    def __repr__(self) -> str:  # never print key bytes
        return f"ServiceKey(kvno={self.kvno}, created={self.created}, retire_at={self.retire_at})"


class KeyRing:
    """The versions of the realm's service key, with derived ticket sealers."""

    def __init__(self, realm: str, keys: list[ServiceKey]):
        if not keys:
            raise ValueError("a key ring needs at least one key")
        self.realm = realm
        self.realm_bytes = realm.encode()  # in every ticket's associated data
        self._keys = {k.kvno: k for k in keys}
        self._sealers: dict[tuple[int, bytes], Sealer] = {}
        self._current = self._newest_active()

    def _newest_active(self) -> ServiceKey:
        active = [k for k in self._keys.values() if k.retire_at is None]
        return max(active or self._keys.values(), key=lambda k: k.kvno)

    @property
    def current(self) -> ServiceKey:
        """The newest active version (kept from the last change of the ring: every ticket asks)."""
        return self._current

    def versions(self) -> list[ServiceKey]:
        return sorted(self._keys.values(), key=lambda k: k.kvno)

    def sealer(self, kvno: int, purpose: bytes, now: int) -> Sealer:
        """The AEAD for tickets of one purpose under key version `kvno`."""
        key = self._keys.get(kvno)
        if key is None or (key.retire_at is not None and now >= key.retire_at):
            raise UnknownKeyVersionError(f"service key version {kvno} is not held")
        s = self._sealers.get((kvno, purpose))
        if s is None:
            s = Sealer(kdf.derive(key.key, purpose, self.realm.encode()))
            self._sealers[(kvno, purpose)] = s
        return s

    def rotate(self, new_key: bytes, now: int, longest_lifetime: int) -> ServiceKey:
        """Make `new_key` current; the old current key opens tickets until now + longest_lifetime."""
        if len(new_key) != KEY_LEN:
            raise ValueError("service keys are 32 bytes")
        old = self.current
        self._keys[old.kvno] = ServiceKey(old.kvno, old.key, old.created, now + longest_lifetime)
        new = ServiceKey(max(self._keys) + 1, new_key, now)
        self._keys[new.kvno] = new
        self._current = self._newest_active()
        return new

    def prune(self, now: int) -> list[int]:
        """Drop versions whose last ticket has expired; returns the dropped kvnos."""
        gone = [k.kvno for k in self._keys.values() if k.retire_at is not None and now >= k.retire_at]
        for kvno in gone:
            del self._keys[kvno]
            for key in [k for k in self._sealers if k[0] == kvno]:
                del self._sealers[key]
        if gone:
            self._current = self._newest_active()
        return gone


def seal_at_rest(kek: bytes, realm: str, key: ServiceKey, nonce: bytes) -> bytes:
    """Seal one master key under the KEK (AES-256-GCM, kvno and realm as associated data)."""
    return Sealer(kdf.derive(kek, kdf.KEYRING_AT_REST)).seal(nonce, key.key, _aad(realm, key.kvno))


def open_at_rest(kek: bytes, realm: str, kvno: int, sealed: bytes) -> bytes:
    return Sealer(kdf.derive(kek, kdf.KEYRING_AT_REST)).open(sealed, _aad(realm, kvno))


def _aad(realm: str, kvno: int) -> bytes:
    return b"service key\x00" + realm.encode() + b"\x00" + kvno.to_bytes(4, "big")
