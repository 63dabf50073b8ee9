"""Device identity, the service's identity, device certificates and the bootstrap bundle.

A device is a device id (its serial) and an EC P-256 key pair, optionally with an X.509
certificate from a device CA (IEEE 802.1AR-style; EAP-TLS uses it for port admission before
the device holds an LLK). P-256 is chosen because one key then serves ECDSA (registration
proof), ECIES (the DRT is sealed to it) and X.509/EAP-TLS, which every supplicant and RADIUS
server accepts. Signatures are ECDSA-SHA256 in fixed 64-byte r||s form (fits RADIUS attributes
and has no DER length games).

The bootstrap bundle is what a device needs to find and trust its realm: realm name, the
service's public key, the RADIUS servers (id, address, port, shared secret), and optionally
the device's own key and certificate when the service generated them.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import CertificateError, MalformedError
from .seal import point_bytes, point_from_bytes, private_key_from_seed

SIGNATURE_LEN = 64
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")
_REALM = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}")


def check_device_id(device_id: str) -> str:
    """A device id: 1-64 characters of [A-Za-z0-9._:@-], starting alphanumeric."""
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        raise MalformedError(f"bad device id {device_id!r}")
    return device_id


def check_realm(realm: str) -> str:
    """A realm name: a DNS-like name of at most 63 characters."""
    if not isinstance(realm, str) or not _REALM.fullmatch(realm):
        raise MalformedError(f"bad realm {realm!r}")
    return realm


def sign(private_key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256, as 64 bytes r||s."""
    r, s = decode_dss_signature(private_key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify(public_key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    """Check a 64-byte r||s signature."""
    if len(signature) != SIGNATURE_LEN:
        return False
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        public_key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def pem_certificate(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM (the caller writes it 0600)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise MalformedError("device and service keys must be EC P-256")
    return key


def load_certificate(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise CertificateError("not a PEM certificate") from exc


@dataclass
class DeviceKey:
    """A P-256 key pair: a device's identity key, or the service's signing key."""

    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, seed: bytes | None = None) -> "DeviceKey":
        if seed is None:
            return cls(ec.generate_private_key(ec.SECP256R1()))
        return cls(private_key_from_seed(seed))

    @classmethod
    def from_pem(cls, pem: bytes) -> "DeviceKey":
        return cls(load_private_key(pem))

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()

    def public_bytes(self) -> bytes:
        return point_bytes(self.public_key)

    def pem(self) -> bytes:
        return pem_private_key(self.private_key)

    def sign(self, data: bytes) -> bytes:
        return sign(self.private_key, data)


def certificate_serial_hex(cert: x509.Certificate) -> str:
    """The serial as FreeRADIUS shows it in TLS-Client-Cert-Serial (lower-case hex, no 0x)."""
    h = format(cert.serial_number, "x")
    return h if len(h) % 2 == 0 else "0" + h


def certificate_device_id(cert: x509.Certificate) -> str:
    """The device id a device certificate names: its subject serialNumber, else its CN."""
    for oid in (NameOID.SERIAL_NUMBER, NameOID.COMMON_NAME):
        attrs = cert.subject.get_attributes_for_oid(oid)
        if attrs:
            return check_device_id(str(attrs[0].value))
    raise CertificateError("certificate names no device (no serialNumber or CN)")


def check_device_certificate(cert: x509.Certificate, trusted: list[x509.Certificate], now: float) -> str:
    """Verify a device certificate against trusted CA certificates; returns the device id."""
    when = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    if not (cert.not_valid_before_utc <= when <= cert.not_valid_after_utc):
        raise CertificateError("certificate is outside its validity period")
    if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
        raise CertificateError("device certificates must carry an EC P-256 key")
    for ca in trusted:
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return certificate_device_id(cert)
    raise CertificateError("certificate is not issued by a trusted device CA")


@dataclass
class CertificateAuthority:
    """A device CA (the realm's own, or the lab's): issues device and server certificates."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, name: str, now: float, lifetime_days: int = 3650) -> "CertificateAuthority":
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tessera"),
                             x509.NameAttribute(NameOID.COMMON_NAME, name)])
        start = dt.datetime.fromtimestamp(now, dt.timezone.utc) - dt.timedelta(minutes=5)
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=lifetime_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> "CertificateAuthority":
        return cls(load_certificate(cert_pem), load_private_key(key_pem))

    def _issue(self, subject: x509.Name, public_key, now: float, days: int, eku, san=None) -> x509.Certificate:
        start = dt.datetime.fromtimestamp(now, dt.timezone.utc) - dt.timedelta(minutes=5)
        b = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self.certificate.subject)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, True, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.private_key.public_key()), critical=False)
        )
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(self.private_key, hashes.SHA256())

    def issue_device_certificate(self, device_id: str, public_key, now: float, lifetime_days: int = 3650) -> x509.Certificate:
        """An 802.1AR-style device certificate: CN and serialNumber are the device id."""
        check_device_id(device_id)
        subject = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, device_id),
                             x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
        return self._issue(subject, public_key, now, lifetime_days, ExtendedKeyUsageOID.CLIENT_AUTH)

    def issue_server_certificate(self, hostname: str, public_key, now: float, lifetime_days: int = 825) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
        return self._issue(subject, public_key, now, lifetime_days, ExtendedKeyUsageOID.SERVER_AUTH,
                           [x509.DNSName(hostname)])


@dataclass(frozen=True)
class ServerEntry:
    """One RADIUS server of the realm, as the device addresses its proofs to it."""

    server_id: str
    host: str
    port: int = 1812


@dataclass
class BootstrapBundle:
    """Everything a new device needs to join its realm (JSON on disk, written 0600)."""

    realm: str
    device_id: str
    service_public_key: bytes  # compressed P-256 point of the service's signing key
    servers: list[ServerEntry]
    radius_secret: str = ""  # the RADIUS shared secret: transport only, not a security boundary
    device_key_pem: bytes | None = None  # present when the service generated the key pair
    device_certificate_pem: bytes | None = None
    ca_certificate_pem: bytes | None = None  # trust anchor for the RADIUS server's EAP-TLS cert
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        def b64(v):
            return base64.b64encode(v).decode() if v is not None else None

        return json.dumps({
            "format": "tessera-bootstrap-1",
            "realm": self.realm,
            "device_id": self.device_id,
            "service_public_key": b64(self.service_public_key),
            "servers": [{"id": s.server_id, "host": s.host, "port": s.port} for s in self.servers],
            "radius_secret": self.radius_secret,
            "device_key_pem": self.device_key_pem.decode() if self.device_key_pem else None,
            "device_certificate_pem": self.device_certificate_pem.decode() if self.device_certificate_pem else None,
            "ca_certificate_pem": self.ca_certificate_pem.decode() if self.ca_certificate_pem else None,
            **({"extra": self.extra} if self.extra else {}),
        }, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "BootstrapBundle":
        try:
            d = json.loads(text)
            if d.get("format") != "tessera-bootstrap-1":
                raise MalformedError("not a tessera-bootstrap-1 bundle")
            pub = base64.b64decode(d["service_public_key"], validate=True)
            point_from_bytes(pub)
            servers = [ServerEntry(str(s["id"]), str(s["host"]), int(s["port"])) for s in d["servers"]]
            enc = lambda v: v.encode() if v else None  # noqa: E731
            return cls(
                realm=check_realm(d["realm"]), device_id=check_device_id(d["device_id"]),
                service_public_key=pub, servers=servers, radius_secret=str(d.get("radius_secret", "")),
                device_key_pem=enc(d.get("device_key_pem")),
                device_certificate_pem=enc(d.get("device_certificate_pem")),
                ca_certificate_pem=enc(d.get("ca_certificate_pem")), extra=d.get("extra", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedError(f"bootstrap bundle: {exc}") from exc
