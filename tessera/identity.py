"""Device identity, the service's identity, device certificates and the bootstrap bundle.

A device is a device id (its serial) and an EC P-256 key pair, optionally with an X.509
certificate from a device CA (IEEE 802.1AR-style; EAP-TLS uses it for port admission before
the device holds an LLK). P-256 is chosen because one key then serves ECDSA (registration
proof), ECIES (the DRT is sealed to it) and X.509/EAP-TLS, which every supplicant and RADIUS
server accepts. Signatures are ECDSA-SHA256 in fixed 64-byte r||s form (fits RADIUS attributes
and has no DER length games).

The bootstrap bundle is what a device needs to find and trust its realm: realm name, the
service's public key, the RADIUS servers (id, address, ports, certificate name), how to reach
them -- RADIUS over TLS with the device certificate (RadSec, the default: no shared secret) or,
as the weaker option, over UDP with a shared secret -- and optionally the device's own key and
certificate when the service generated them.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

if TYPE_CHECKING:  # X.509 (~5 MiB RSS) is imported by the functions that use certificates: the agent never does
    from cryptography import x509

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


_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def _der_integer(value: bytes) -> bytes:
    """DER INTEGER of an unsigned big-endian number: minimal, with a 00 byte before a high bit."""
    value = value.lstrip(b"\x00")
    if not value or value[0] & 0x80:
        value = b"\x00" + value
    return b"\x02" + bytes((len(value),)) + value


def sign(private_key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256, as 64 bytes r||s, cut from OpenSSL's DER SEQUENCE { r, s } here
    (``30 L 02 Lr r 02 Ls s``, every length below 128 for P-256): cryptography's
    decode_dss_signature costs ~5 % of a signature (callgrind)."""
    der = private_key.sign(data, _ECDSA_SHA256)
    lr = der[3]
    ls = der[5 + lr]
    if der[0] != 0x30 or der[1] != len(der) - 2 or der[2] != 2 or der[4 + lr] != 2 or 6 + lr + ls != len(der):
        raise ValueError("unexpected ECDSA signature encoding")
    r, s = der[4:4 + lr].lstrip(b"\x00"), der[6 + lr:].lstrip(b"\x00")
    return r.rjust(32, b"\x00") + s.rjust(32, b"\x00")


def verify(public_key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    """Check a 64-byte r||s signature (as DER, built here: the same bytes as cryptography's
    encode_dss_signature, without its cost)."""
    if len(signature) != SIGNATURE_LEN:
        return False
    body = _der_integer(signature[:32]) + _der_integer(signature[32:])
    der = b"\x30" + bytes((len(body),)) + body
    try:
        public_key.verify(der, data, _ECDSA_SHA256)
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
    from cryptography import x509
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
    """The device id a device certificate names: its subject CN, the one field both enrolment
    and admission read (FreeRADIUS hands the admission check TLS-Client-Cert-Common-Name, and
    RadSec matches the connection's CN to the message). An 802.1AR subject serialNumber, if
    there is one, must name the same device: a certificate whose CN names something else would
    enrol a device that could never be admitted."""
    from cryptography.x509.oid import NameOID
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise CertificateError("the subject must hold exactly one CN, the device id "
                               f"(it holds {len(cns)})")
    device_id = str(cns[0].value)
    try:
        check_device_id(device_id)
    except MalformedError:
        raise CertificateError(f"the subject CN {device_id[:64]!r} is not a device id") from None
    for attr in cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER):
        if str(attr.value) != device_id:
            raise CertificateError(f"the subject serialNumber {str(attr.value)[:64]!r} differs from the CN "
                                   f"{device_id!r}: a device is admitted by the CN, so both must name it")
    return device_id


def _utc(now: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(now, dt.timezone.utc)


def _check_validity(cert: x509.Certificate, when: dt.datetime, what: str) -> None:
    if when < cert.not_valid_before_utc:
        raise CertificateError(f"{what} is outside its validity period: not valid before "
                               f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%SZ}")
    if when > cert.not_valid_after_utc:
        raise CertificateError(f"{what} is outside its validity period: expired at "
                               f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}")


def _extension(cert: x509.Certificate, cls):
    from cryptography import x509
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None
    except (ValueError, x509.DuplicateExtension) as exc:  # parsed lazily: bad DER, duplicates
        raise CertificateError(f"the certificate's extensions do not parse ({exc})") from None


def check_end_entity(cert: x509.Certificate) -> None:
    """A device's certificate: not a CA (BasicConstraints CA=false or absent in a v3
    certificate, no keyCertSign), usable for TLS client authentication (clientAuth if it
    restricts its extended key usage) and for signatures (digitalSignature if it has a
    keyUsage), on an EC P-256 key."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID
    if cert.version is not x509.Version.v3:
        raise CertificateError("an X.509 v1 certificate cannot say it is an end-entity certificate")
    bc = _extension(cert, x509.BasicConstraints)
    if bc is not None and bc.ca:
        raise CertificateError("a CA certificate (BasicConstraints CA=true) is not a device certificate")
    ku = _extension(cert, x509.KeyUsage)
    if ku is not None and (ku.key_cert_sign or ku.crl_sign):
        raise CertificateError("a certificate that may sign certificates (keyUsage keyCertSign/cRLSign) "
                               "is not a device certificate")
    if ku is not None and not ku.digital_signature:
        raise CertificateError("the certificate's keyUsage lacks digitalSignature (EAP-TLS and registration sign)")
    eku = _extension(cert, x509.ExtendedKeyUsage)
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        eku_names = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
                     ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
                     ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
                     ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping", ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
                     ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage"}
        names = ", ".join(eku_names.get(u, u.dotted_string) for u in eku)
        raise CertificateError(f"the certificate's extended key usage ({names}) lacks clientAuth")
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise CertificateError("device certificates must carry an EC P-256 key")


def check_device_certificate(cert: x509.Certificate, trusted: list[x509.Certificate], now: float) -> str:
    """Verify a device certificate for enrolment; returns the device id (`certificate_device_id`).
    It must be an end-entity certificate for client authentication (`check_end_entity`), valid
    now, and signed by a trusted device CA that is itself a CA valid now. Each refusal is a
    CertificateError naming what is wrong."""
    when = _utc(now)
    check_end_entity(cert)
    _check_validity(cert, when, "certificate")
    refusal = CertificateError("certificate is not issued by a trusted device CA")
    for ca in trusted:  # several may carry the issuer's name (a renewed CA): one must do
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        try:
            _check_issuer(ca, when)
        except CertificateError as exc:
            refusal = exc
            continue
        return certificate_device_id(cert)
    raise refusal


def _check_issuer(ca: x509.Certificate, when: dt.datetime) -> None:
    from cryptography import x509
    name = ca.subject.rfc4514_string()[:80]
    bc = _extension(ca, x509.BasicConstraints)
    if bc is None or not bc.ca:
        raise CertificateError(f"the issuer {name} is not a CA certificate")
    ku = _extension(ca, x509.KeyUsage)
    if ku is not None and not ku.key_cert_sign:
        raise CertificateError(f"the issuer {name} may not sign certificates (keyUsage lacks keyCertSign)")
    _check_validity(ca, when, f"the issuing CA {name}")


@dataclass
class CertificateAuthority:
    """A device CA (the realm's own, or the lab's): issues device and server certificates."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, name: str, now: float, lifetime_days: int = 3650) -> "CertificateAuthority":
        from cryptography import x509
        from cryptography.x509.oid import NameOID
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
        from cryptography import x509
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
        from cryptography import x509
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
        check_device_id(device_id)
        subject = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, device_id),
                             x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
        return self._issue(subject, public_key, now, lifetime_days, ExtendedKeyUsageOID.CLIENT_AUTH)

    def issue_server_certificate(self, hostname: str, public_key, now: float, lifetime_days: int = 825) -> x509.Certificate:
        from cryptography import x509
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
        return self._issue(subject, public_key, now, lifetime_days, ExtendedKeyUsageOID.SERVER_AUTH,
                           [x509.DNSName(hostname)])


@dataclass(frozen=True)
class ServerEntry:
    """One RADIUS server of the realm, as the device addresses its proofs to it: its UDP port,
    and for RadSec its TCP port and the name its TLS certificate carries (empty: ``host``)."""

    server_id: str
    host: str
    port: int = 11812  # the device listener (sites-available/tessera); 1812 is the NAS listener's
    radsec_port: int = 2083  # IANA's port for RADIUS/TLS (RFC 6614)
    tls_name: str = ""


RADSEC = "radsec"  # RADIUS/TLS with the device certificate (RFC 6614): no shared secret
UDP = "udp"  # RADIUS/UDP with a shared secret: the weaker option, for labs and old devices


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
    # How the device speaks RADIUS: RADSEC (the default when there is no secret: TLS with the
    # device certificate, to each server's radsec_port, the server's certificate checked against
    # ca_certificate_pem and its tls_name) or UDP (with radius_secret, which every holder of
    # such a bundle shares: anyone holding one can forge replies to, and requests as, any device
    # at an address the server accepts -- for labs and devices that cannot do TLS).
    radius_transport: str = ""

    def __post_init__(self) -> None:
        if not self.radius_transport:
            self.radius_transport = UDP if self.radius_secret else RADSEC
        if self.radius_transport not in (RADSEC, UDP):
            raise MalformedError(f"bootstrap bundle: radius_transport must be {RADSEC!r} or {UDP!r}, "
                                 f"not {str(self.radius_transport)[:32]!r}")
        if self.radius_transport == RADSEC and self.radius_secret:
            raise MalformedError("bootstrap bundle: a RadSec bundle carries no RADIUS secret")
        if self.radius_transport == UDP and not self.radius_secret:
            raise MalformedError("bootstrap bundle: RADIUS over UDP needs the shared secret")

    def _server_json(self, s: ServerEntry) -> dict:
        if self.radius_transport == UDP:
            return {"id": s.server_id, "host": s.host, "port": s.port}
        return {"id": s.server_id, "host": s.host, "radsec_port": s.radsec_port,
                **({"tls_name": s.tls_name} if s.tls_name else {})}

    def to_json(self) -> str:
        def b64(v):
            return base64.b64encode(v).decode() if v is not None else None

        return json.dumps({
            "format": "tessera-bootstrap-1",
            "realm": self.realm,
            "device_id": self.device_id,
            "service_public_key": b64(self.service_public_key),
            "radius_transport": self.radius_transport,
            "servers": [self._server_json(s) for s in self.servers],
            **({"radius_secret": self.radius_secret} if self.radius_transport == UDP else {}),
            "device_key_pem": self.device_key_pem.decode() if self.device_key_pem else None,
            "device_certificate_pem": self.device_certificate_pem.decode() if self.device_certificate_pem else None,
            "ca_certificate_pem": self.ca_certificate_pem.decode() if self.ca_certificate_pem else None,
            **({"extra": self.extra} if self.extra else {}),
        }, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "BootstrapBundle":
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or d.get("format") != "tessera-bootstrap-1":
                raise MalformedError("not a tessera-bootstrap-1 bundle")
            pub = base64.b64decode(d["service_public_key"], validate=True)
            point_from_bytes(pub)
            if not isinstance(d["servers"], list) or not all(isinstance(s, dict) for s in d["servers"]):
                raise MalformedError("bootstrap bundle: servers must be a list of objects")
            servers = [ServerEntry(str(s["id"]), str(s["host"]), int(s.get("port", ServerEntry.port)),
                                   int(s.get("radsec_port", ServerEntry.radsec_port)), str(s.get("tls_name", ""))) for s in d["servers"]]
            if not all(0 < s.port < 65536 and 0 < s.radsec_port < 65536 for s in servers):
                raise MalformedError("bootstrap bundle: a server port is outside 1..65535")
            for k in ("device_key_pem", "device_certificate_pem", "ca_certificate_pem"):
                if not isinstance(d.get(k) or "", str):
                    raise MalformedError(f"bootstrap bundle: {k} is not a string")
            enc = lambda v: v.encode() if v else None  # noqa: E731
            return cls(
                realm=check_realm(d["realm"]), device_id=check_device_id(d["device_id"]),
                service_public_key=pub, servers=servers, radius_secret=str(d.get("radius_secret", "")),
                device_key_pem=enc(d.get("device_key_pem")),
                device_certificate_pem=enc(d.get("device_certificate_pem")),
                ca_certificate_pem=enc(d.get("ca_certificate_pem")), extra=d.get("extra", {}),
                radius_transport=str(d.get("radius_transport", "")),
            )
        except RecursionError:  # nested deeper than json can read
            raise MalformedError("bootstrap bundle: JSON nested too deeply") from None
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # OverflowError: a port of 1e999
            raise MalformedError(f"bootstrap bundle: {exc}") from exc
