"""A realm's state and the operator's actions on it: enrol, revoke, rotate, bootstrap bundles.

`Realm` sits on a `Registry` and the key-encryption key (KEK). It keeps in the registry, sealed
under the KEK: the service's master keys (one row per version), the service's signing key, and
the realm's own device CA key; in the clear: the realm name, the CA certificate and the trusted
manufacturer CA certificates. Every server of the realm opens the same registry with the same
KEK and so holds the same keys; `reload_if_changed` picks up a rotation made by the CLI.

`open_realm(registry, kek_path)` is the one function here that touches files (or a database).
"""

from __future__ import annotations

import os
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from . import servicekey
from .errors import CertificateError, MalformedError
from .identity import (BootstrapBundle, CertificateAuthority, DeviceKey, ServerEntry, certificate_serial_hex,
                       check_device_certificate, check_device_id, check_realm, load_certificate,
                       pem_certificate)
from .registry import AuditEvent, DeviceRecord, DeviceState, Registry, RegistryError
from .seal import Sealer, point_bytes, point_from_bytes
from . import kdf
from .service import Policy, Service
from .servicekey import KeyRing, ServiceKey

KEK_LEN = 32


def issuer_string(cert: x509.Certificate) -> str:
    """The issuer as FreeRADIUS prints TLS-Client-Cert-Issuer (OpenSSL's one-line form)."""
    return name_string(cert.issuer)


def name_string(name: x509.Name) -> str:
    """A name in OpenSSL's one-line form (``/O=…/CN=…``), as FreeRADIUS prints it."""
    parts = []
    for rdn in name.rdns:
        for a in rdn:
            short = {NameOID.COMMON_NAME: "CN", NameOID.ORGANIZATION_NAME: "O", NameOID.COUNTRY_NAME: "C",
                     NameOID.ORGANIZATIONAL_UNIT_NAME: "OU", NameOID.SERIAL_NUMBER: "serialNumber"}.get(a.oid, a.oid.dotted_string)
            parts.append(f"/{short}={a.value}")
    return "".join(parts)


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class Realm:
    def __init__(self, registry: Registry, kek: bytes, random: Callable[[int], bytes] = os.urandom):
        if len(kek) != KEK_LEN:
            raise MalformedError("the KEK must be 32 bytes")
        self.registry = registry
        self._kek = kek
        self.random = random
        name = registry.get_meta("realm")
        if name is None:
            raise RegistryError("the registry holds no realm: run `tessera-admin init` first")
        self.name = name.decode()
        self.policy = Policy(**{k: int(v) for k, v in ((k, registry.get_meta("policy." + k)) for k in
                                                      ("registration_lifetime", "tgt_lifetime", "session_lifetime", "clock_skew",
                                                       "replay_quota", "replay_pair_quota")) if v})
        self.signing_key = DeviceKey.from_pem(self._open_meta("service_signing_key"))
        self.ca = CertificateAuthority.from_pem(registry.get_meta("ca_certificate"), self._open_meta("ca_key"))
        self._services: list[Service] = []
        self.keyring = self._load_keyring()
        self._version = self._data_version()

    # -- creation ----------------------------------------------------------------------------
    @classmethod
    def init(cls, registry: Registry, kek: bytes, name: str, now: float, policy: Policy = Policy(),
             random: Callable[[int], bytes] = os.urandom) -> "Realm":
        check_realm(name)
        if registry.get_meta("realm") is not None:
            raise RegistryError("the registry already holds a realm")
        t = int(now)
        ca = CertificateAuthority.generate(f"{name} device CA", now)
        sealer = Sealer(kdf.derive(kek, kdf.KEYRING_AT_REST, b"meta"))
        registry.set_meta("service_signing_key", sealer.seal(random(12), DeviceKey.generate().pem(), b"service_signing_key"))
        registry.set_meta("ca_key", sealer.seal(random(12), DeviceKey(ca.private_key).pem(), b"ca_key"))
        registry.set_meta("ca_certificate", pem_certificate(ca.certificate))
        for k, v in policy.__dict__.items():
            registry.set_meta("policy." + k, str(v).encode())
        key = ServiceKey(1, random(32), t)
        registry.store_service_keys([(1, servicekey.seal_at_rest(kek, name, key, random(12)), t, None)],
                                    AuditEvent(t, "realm-created", None, f"realm {name}, service key version 1"))
        registry.set_meta("realm", name.encode())
        return cls(registry, kek, random)

    def _meta_sealer(self) -> Sealer:
        return Sealer(kdf.derive(self._kek, kdf.KEYRING_AT_REST, b"meta"))

    def _open_meta(self, key: str) -> bytes:
        sealed = self.registry.get_meta(key)
        if sealed is None:
            raise RegistryError(f"the registry lacks {key}")
        return self._meta_sealer().open(sealed, key.encode())

    def _load_keyring(self) -> KeyRing:
        keys = [ServiceKey(kvno, servicekey.open_at_rest(self._kek, self.name, kvno, sealed), created, retire)
                for kvno, sealed, created, retire in self.registry.load_service_keys()]
        return KeyRing(self.name, keys)

    def _data_version(self) -> int:
        dv = getattr(self.registry, "data_version", None)
        return dv() if dv else 0

    # -- serving -----------------------------------------------------------------------------
    def service(self, server_id: str, random: Callable[[int], bytes] | None = None) -> Service:
        svc = Service(self.name, server_id, self.keyring, self.registry, self.signing_key,
                      random or self.random, self.policy)
        self._services.append(svc)
        return svc

    def reload_if_changed(self) -> bool:
        """Reload the key ring if another process changed the registry (a rotation)."""
        v = self._data_version()
        if v == self._version:
            return False
        self._version = v
        ring = self._load_keyring()
        if [(k.kvno, k.retire_at) for k in ring.versions()] == [(k.kvno, k.retire_at) for k in self.keyring.versions()]:
            return False
        self.keyring = ring
        for svc in self._services:
            svc.keyring = ring
        return True

    def close(self) -> None:
        """Close the registry (a serving cache's listener stops first)."""
        self.registry.close()

    @property
    def service_public_key(self) -> bytes:
        return point_bytes(self.signing_key.public_key)

    # -- operator actions --------------------------------------------------------------------
    def enrol_key(self, device_id: str, public_key: bytes, now: float, certificate: x509.Certificate | None = None,
                  how: str = "key") -> DeviceRecord:
        """Enrol by device id + public key (claim 7); a certificate, if given, binds EAP-TLS admission."""
        check_device_id(device_id)
        point_from_bytes(public_key)
        t = int(now)
        rec = DeviceRecord(device_id, public_key, DeviceState.ENROLLED, how, t, t,
                           cert_issuer=issuer_string(certificate) if certificate else None,
                           cert_serial=certificate_serial_hex(certificate) if certificate else None)
        self.registry.add_device(rec, AuditEvent(t, "enrolled", device_id, f"by {how}"))
        return rec

    def enrol_certificate(self, cert_pem: bytes, now: float) -> DeviceRecord:
        """Enrol by a device certificate from a trusted device CA (claims 10, 20): an end-entity
        certificate for client authentication, valid now, issued by a trusted CA valid now, naming
        the device in its CN (`identity.check_device_certificate`) -- the CN and the issuer string
        are what admission matches, so a certificate that enrols is one that can be admitted."""
        cert = load_certificate(cert_pem)
        device_id = check_device_certificate(cert, self.trusted_cas(), now)
        issuer = issuer_string(cert)
        odd = [part for part in issuer.split("/")[1:] if part.split("=", 1)[0][:1].isdigit()]
        if odd or not issuer.isascii() or not issuer.isprintable():
            # admission looks the device up by TLS-Client-Cert-Issuer, OpenSSL's one-line form,
            # which names these attributes (or escapes these characters) otherwise
            raise CertificateError(f"the issuer name {issuer[:120]!r} has parts the realm cannot match to what "
                                   "FreeRADIUS reports at admission; the device could never be admitted")
        return self.enrol_key(device_id, point_bytes(cert.public_key()), now, cert, "certificate")

    def issue_certificate(self, device_id: str, public_key: bytes, now: float) -> x509.Certificate:
        return self.ca.issue_device_certificate(device_id, point_from_bytes(public_key), now)

    def enrol_generated(self, device_id: str, servers: list[ServerEntry], radius_secret: str, now: float,
                        transport: str = "") -> BootstrapBundle:
        """The service makes the key pair and a certificate, and exports the bundle (claim 13).
        ``radius_secret`` "" makes a RadSec bundle (the device speaks with its certificate)."""
        b = self.bundle(device_id, servers, radius_secret, transport)  # a bad bundle enrols nothing
        key = DeviceKey.generate()
        cert = self.issue_certificate(device_id, key.public_bytes(), now)
        self.enrol_key(device_id, key.public_bytes(), now, cert, "bundle")
        b.device_key_pem, b.device_certificate_pem = key.pem(), pem_certificate(cert)
        return b

    def bundle(self, device_id: str, servers: list[ServerEntry], radius_secret: str = "",
               transport: str = "") -> BootstrapBundle:
        """The bootstrap bundle for ``device_id``: RadSec (``identity.RADSEC``, the default
        without a secret) or, with ``radius_secret``, RADIUS over UDP (``identity.UDP``, the
        weaker option: every holder of the secret can speak as any device)."""
        return BootstrapBundle(self.name, device_id, self.service_public_key, servers, radius_secret,
                               ca_certificate_pem=pem_certificate(self.ca.certificate), radius_transport=transport)

    def trusted_cas(self) -> list[x509.Certificate]:
        pem = self.registry.get_meta("trusted_cas") or b""
        return [self.ca.certificate] + x509.load_pem_x509_certificates(pem) if pem else [self.ca.certificate]

    def trust_ca(self, cert_pem: bytes, now: float) -> x509.Certificate:
        cert = load_certificate(cert_pem)
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise CertificateError("not a CA certificate")
        # Admission finds a device by (issuer as FreeRADIUS prints it, serial): a second CA with
        # the same name and another key could issue a working copy of any device's certificate
        # (same issuer string, same serial, its own key). One name, one key.
        name, key = name_string(cert.subject), _spki(cert)
        for known in self.trusted_cas():
            if name_string(known.subject) == name and _spki(known) != key:
                raise CertificateError(f"a trusted CA named {name} already exists with another key "
                                       "(devices are found by issuer name and serial)")
            if known == cert:
                return cert  # already trusted
        old = self.registry.get_meta("trusted_cas") or b""
        self.registry.set_meta("trusted_cas", old + pem_certificate(cert))
        self.registry.add_audit(AuditEvent(int(now), "ca-trusted", None, cert.subject.rfc4514_string()))
        return cert

    def add_nas(self, name: str, address: str, port: int, secret: str, now: float) -> None:
        """A NAS (switch) that takes RFC 5176 Disconnect-Requests; the secret is sealed under the KEK."""
        if not name or not address or not (0 < port < 65536) or not secret:
            raise MalformedError("a NAS needs a name (its NAS-Identifier), an address, a port and a secret")
        sealed = self._meta_sealer().seal(self.random(12), secret.encode(), b"nas\x00" + name.encode())
        self.registry.put_nas(name, address, port, sealed, AuditEvent(int(now), "nas-added", None, f"{name} at {address}:{port}"))

    def nas(self, name: str) -> tuple[str, int, str] | None:
        """(address, port, secret) of the NAS with this NAS-Identifier, if known."""
        row = self.registry.get_nas(name)
        if row is None:
            return None
        return row[0], row[1], self._meta_sealer().open(row[2], b"nas\x00" + name.encode()).decode()

    def revoke(self, device_id: str, now: float, reason: str = "") -> None:
        self.registry.set_state(device_id, DeviceState.REVOKED, int(now),
                                AuditEvent(int(now), "revoked", device_id, reason))

    def rotate(self, now: float) -> ServiceKey:
        """New service key version; the old ones keep opening their tickets until they expire."""
        t = int(now)
        ring = self._load_keyring()
        ring.prune(t)
        new = ring.rotate(self.random(32), t, self.policy.longest_lifetime)
        rows = [(k.kvno, servicekey.seal_at_rest(self._kek, self.name, k, self.random(12)), k.created, k.retire_at)
                for k in ring.versions()]
        self.registry.store_service_keys(rows, AuditEvent(t, "key-rotated", None, f"service key version {new.kvno}"))
        self.keyring = ring
        for svc in self._services:
            svc.keyring = ring
        return new


def read_kek(path: str) -> bytes:
    st = os.stat(path)
    if st.st_mode & 0o077:
        raise PermissionError(f"{path} must not be readable by group or others (mode {oct(st.st_mode & 0o777)})")
    with open(path, "rb") as f:
        kek = f.read()
    if len(kek) != KEK_LEN:
        raise MalformedError(f"{path}: the KEK must be {KEK_LEN} bytes")
    return kek


def create_kek(path: str) -> bytes:
    """Write a new random KEK, 0600, refusing to overwrite one (or to write through a symlink):
    whole or not at all (`secretfile.write_secret`)."""
    from .secretfile import write_secret

    kek = os.urandom(KEK_LEN)
    write_secret(path, kek, exclusive=True)
    return kek


def open_realm(registry: str, kek_path: str, *, serving: bool = False, grace: float | None = None,
               log: Callable[[str, str], None] | None = None) -> Realm:
    """The realm in the registry `registry` names (a `tessera.registry_url` URL, or a SQLite
    file's path as before), opened with the KEK in `kek_path`. The registry is closed again if
    the realm cannot be opened.

    `serving`: for a RADIUS server's module. A PostgreSQL registry is then read from an
    in-process cache kept current by LISTEN/NOTIFY (`tessera.pg_cache.CachedRegistry`, served
    while confirmed within `grace` seconds; docs/registry.md), so the request path issues no
    query; `log(level, text)` ("info" or "error") hears when the database is lost and back.
    SQLite is local and stays as it is."""
    from .registry_url import POSTGRES_SCHEMES, open_registry

    reg = open_registry(registry)
    if serving and registry.startswith(POSTGRES_SCHEMES):
        from .pg_cache import DEFAULT_GRACE, CachedRegistry
        options = {"log": log} if log is not None else {}
        try:
            reg = CachedRegistry(reg, grace=DEFAULT_GRACE if grace is None else grace, **options)
        except BaseException:
            reg.close()
            raise
    try:
        return Realm(reg, read_kek(kek_path))
    except BaseException:
        reg.close()
        raise
