"""The lab's certificates: one CA, the RADIUS server's EAP-TLS certificate, device certificates.

How this works: the lab has one CA (``tessera.identity.CertificateAuthority``, EC P-256). It
issues the RADIUS server's certificate (which supplicants verify, with the CA as their
``ca_cert``) and device certificates (which FreeRADIUS verifies against the trusted device CA
bundle, and the realm registry then admits or not). ``install_server_files`` writes what the
``tessera_eap`` module reads from ``${certdir}/tessera/``; ``write_device_files`` writes what a
supplicant (wpa_supplicant, eapol_test) needs. Keys are written 0600, or 0640 with a group for
files that FreeRADIUS reads as ``freerad``.

Time is a parameter (``now``), as everywhere in Tessera.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tessera.identity import (CertificateAuthority, DeviceKey, certificate_serial_hex,
                              load_certificate, pem_certificate, pem_private_key)
from tessera.secretfile import write_atomic

CA_CERT = "ca.pem"
CA_KEY = "ca.key"


def write_file(path: Path, data: bytes, mode: int = 0o644, group: str | None = None) -> Path:
    """Write ``data`` with exactly ``mode`` (and optional group), atomically, never through a
    symlink (``tessera.secretfile``): a key rewritten over an older, wider file is still 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, mode, group=group)
    return path


@dataclass
class DeviceCredentials:
    """A device's key and certificate, and the files written for a supplicant."""

    device_id: str
    key: DeviceKey
    certificate: object  # cryptography x509.Certificate
    cert_path: Path | None = None
    key_path: Path | None = None

    @property
    def serial_hex(self) -> str:
        """The serial as FreeRADIUS shows it in TLS-Client-Cert-Serial."""
        return certificate_serial_hex(self.certificate)


@dataclass
class LabPKI:
    """The lab CA and what it issues."""

    ca: CertificateAuthority

    @classmethod
    def generate(cls, now: float, name: str = "Tessera Lab CA") -> "LabPKI":
        return cls(CertificateAuthority.generate(name, now))

    @classmethod
    def load(cls, directory: Path) -> "LabPKI":
        d = Path(directory)
        return cls(CertificateAuthority.from_pem((d / CA_CERT).read_bytes(), (d / CA_KEY).read_bytes()))

    def save(self, directory: Path) -> None:
        """Keep the CA for later runs (key 0600)."""
        d = Path(directory)
        write_file(d / CA_CERT, self.ca_pem)
        write_file(d / CA_KEY, pem_private_key(self.ca.private_key), 0o600)

    @property
    def ca_pem(self) -> bytes:
        return pem_certificate(self.ca.certificate)

    def issue_device(self, device_id: str, now: float, key: DeviceKey | None = None,
                     lifetime_days: int = 3650) -> DeviceCredentials:
        """A device certificate (CN and serialNumber = device id) for a new or given key."""
        key = key or DeviceKey.generate()
        cert = self.ca.issue_device_certificate(device_id, key.public_key, now, lifetime_days)
        return DeviceCredentials(device_id, key, cert)

    def install_server_files(self, certs_dir: Path, hostname: str, now: float,
                             device_cas: tuple[bytes, ...] = (), group: str | None = None) -> Path:
        """Write ``server.pem`` (cert + CA), ``server.key`` and ``device-ca.pem`` into
        ``certs_dir`` (normally ``<raddb>/certs/tessera``). The device CA bundle is this lab CA
        plus ``device_cas`` (PEM). With ``group`` (e.g. ``freerad``) the key is 0640 to it."""
        d = Path(certs_dir)
        key = DeviceKey.generate()
        cert = self.ca.issue_server_certificate(hostname, key.public_key, now)
        write_file(d / "server.pem", pem_certificate(cert) + self.ca_pem, 0o644, group)
        write_file(d / "server.key", pem_private_key(key.private_key), 0o640 if group else 0o600, group)
        write_file(d / "device-ca.pem", b"".join((self.ca_pem,) + tuple(device_cas)), 0o644, group)
        return d

    def write_device_files(self, directory: Path, creds: DeviceCredentials) -> DeviceCredentials:
        """Write ``<id>.pem``, ``<id>.key`` (0600) and ``ca.pem`` (to verify the server)."""
        d = Path(directory)
        creds.cert_path = write_file(d / f"{creds.device_id}.pem", pem_certificate(creds.certificate))
        creds.key_path = write_file(d / f"{creds.device_id}.key", creds.key.pem(), 0o600)
        write_file(d / CA_CERT, self.ca_pem)
        return creds


def certificate_from_file(path: Path):
    """Load a PEM certificate (for tests and the lab's checks)."""
    return load_certificate(Path(path).read_bytes())
