"""Shared fixtures for the core's unit tests: a realm on an in-memory SQLite registry, a clock,
and devices enrolled by key and by certificate — two parties in memory before any namespace."""

from __future__ import annotations

import hashlib

import pytest

from tessera.device import DeviceClient
from tessera.identity import CertificateAuthority, DeviceKey, ServerEntry, pem_certificate
from tessera.realm import Realm
from tessera.sqlite_registry import SQLiteRegistry

T0 = 1_800_000_000  # a fixed "now" for the tests (2027-01-15)
SERVERS = [ServerEntry("radius-a", "192.0.2.1"), ServerEntry("radius-b", "192.0.2.2")]


class Counter:
    """Deterministic random bytes (SHA-256 of a counter) so failures reproduce: the KEK, service
    keys, nonces and device keys of the fixtures come from it or from fixed seeds. (The realm's
    CA and service signing key, and ECDSA's per-signature k, still come from the OS: signatures
    differ between runs; nothing a test compares byte for byte depends on them.)"""

    def __init__(self, seed: bytes = b"test"):
        self.seed, self.n = seed, 0

    def __call__(self, size: int) -> bytes:
        out = b""
        while len(out) < size:
            self.n += 1
            out += hashlib.sha256(self.seed + self.n.to_bytes(8, "big")).digest()
        return out[:size]


@pytest.fixture
def rand():
    return Counter()


@pytest.fixture
def realm(rand):
    return Realm.init(SQLiteRegistry(":memory:"), rand(32), "example.net", T0, random=rand)


@pytest.fixture
def service(realm):
    return realm.service("radius-a")


def make_device(realm: Realm, device_id: str, how: str = "key", now: float = T0) -> DeviceClient:
    """Enrol a device (by key, by a manufacturer certificate, or with a generated bundle)."""
    if how == "bundle":
        bundle = realm.enrol_generated(device_id, SERVERS, "s3cret", now)
        return DeviceClient(bundle, DeviceKey.from_pem(bundle.device_key_pem))
    key = DeviceKey.generate(hashlib.sha256(b"device key " + device_id.encode()).digest())
    if how == "certificate":
        maker = CertificateAuthority.generate("Manufacturer DevID CA", now)
        realm.trust_ca(pem_certificate(maker.certificate), now)
        cert = maker.issue_device_certificate(device_id, key.public_key, now)
        realm.enrol_certificate(pem_certificate(cert), now)
    else:
        realm.enrol_key(device_id, key.public_bytes(), now)
    return DeviceClient(realm.bundle(device_id, SERVERS, "s3cret"), key)


def admit(service, dev: DeviceClient, rand, now: float = T0) -> None:
    """Register and get a TGT, through the service, in memory."""
    dev.register_reply(service.handle(dev.register_request(service.server_id, now, rand(16)), now), now)
    dev.ticket_reply(service.handle(dev.auth_request(service.server_id, now, rand(16)), now), now)


def peer(service, a: DeviceClient, b: DeviceClient, rand, now: float = T0):
    """Run the whole peer handshake A→B through the service; returns both channels."""
    from tessera.peer import PeerInitiator, PeerResponder

    ia, rb = PeerInitiator(a, b.device_id), PeerResponder(b)
    rb.receive_hello(ia.hello(now, rand(16)), now)
    reply = service.handle(rb.session_request(service.server_id, now, rand(16)), now)
    fin = ia.receive_ticket(rb.receive_session_reply(reply, now), now)
    return ia.channel, rb.receive_finished(fin, now)
