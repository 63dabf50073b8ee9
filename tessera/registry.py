"""The registry: which devices belong to the realm, their state, and the audit trail.

`Registry` is the interface the service and the CLI use; `tessera.sqlite_registry` implements
it on SQLite (the embedded default). The interface is made of single-row reads by key and short
transactions with compare-and-set on the registration generation, so a PostgreSQL
implementation shared by several RADIUS servers fits behind it unchanged.

It also knows where each device was last admitted (NAS, port, MAC) and the NASes that accept
RFC 5176 Disconnect-Requests, so that revoking a device also kicks it off its port.

Device states (claims 5-7): ENROLLED (the operator named the device) → REGISTERED (it proved
its key and holds a DRT) → REVOKED (no new tickets, ever; the port is kicked). The registry
keeps the DRT's service part (the LLK sealed under the service key) so a server can derive the
device's EAP-PWD password; it never holds an LLK in the clear.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class DeviceState(str, enum.Enum):
    ENROLLED = "enrolled"
    REGISTERED = "registered"
    REVOKED = "revoked"


@dataclass
class DeviceRecord:
    device_id: str
    public_key: bytes  # compressed P-256 point
    state: DeviceState
    enrolled_by: str  # "key", "certificate" or "bundle"
    created: int
    updated: int
    cert_issuer: str | None = None  # RFC 4514 string of the device certificate's issuer
    cert_serial: str | None = None  # lower-case hex, as FreeRADIUS's TLS-Client-Cert-Serial
    generation: int = 0  # registrations so far; the DRT carries the one it belongs to
    registered_at: int | None = None
    registration_not_after: int | None = None
    sealed_drt: bytes | None = None
    # where 802.1X last admitted it (from the Access-Request), so a revocation can kick the port
    nas_identifier: str | None = None
    nas_address: str | None = None
    nas_port_id: str | None = None
    calling_station: str | None = None
    located_at: int | None = None


@dataclass
class AuditEvent:
    time: int
    event: str  # enrolled, registered, revoked, key-rotated, register-rejected, ...
    device_id: str | None = None
    detail: str = ""
    server_id: str = ""


class RegistryError(Exception):
    """A registry operation that cannot be done (duplicate enrolment, unknown device)."""


class Registry(Protocol):
    def get_device(self, device_id: str) -> DeviceRecord | None: ...

    def find_by_certificate(self, issuer: str, serial_hex: str) -> DeviceRecord | None: ...

    def add_device(self, record: DeviceRecord, event: AuditEvent) -> None:
        """Enrol; raises RegistryError if the id (or certificate) is already enrolled."""

    def record_registration(self, device_id: str, expect_generation: int, generation: int,
                            not_after: int, sealed_drt: bytes, now: int, event: AuditEvent) -> bool:
        """Store a registration if the generation is still `expect_generation` (compare-and-set)."""

    def set_state(self, device_id: str, state: DeviceState, now: int, event: AuditEvent) -> None: ...

    def record_location(self, device_id: str, nas_identifier: str, nas_address: str, nas_port_id: str,
                        calling_station: str, now: int) -> bool:
        """Remember where the device was last admitted; False if it is not enrolled."""

    def put_nas(self, name: str, address: str, port: int, sealed_secret: bytes, event: AuditEvent) -> None:
        """Add or replace a NAS that accepts Disconnect-Requests (RFC 5176)."""

    def get_nas(self, name: str) -> tuple[str, int, bytes] | None:
        """(address, port, sealed secret) of a NAS by its NAS-Identifier."""

    def list_nas(self) -> list[tuple[str, str, int]]: ...

    def list_devices(self) -> list[DeviceRecord]: ...

    def add_audit(self, event: AuditEvent) -> None: ...

    def audit(self, device_id: str | None = None, limit: int = 100) -> list[AuditEvent]: ...

    def get_meta(self, key: str) -> bytes | None: ...

    def set_meta(self, key: str, value: bytes) -> None: ...

    def load_service_keys(self) -> list[tuple[int, bytes, int, int | None]]:
        """(kvno, sealed key, created, retire_at) for every held version."""

    def store_service_keys(self, rows: list[tuple[int, bytes, int, int | None]], event: AuditEvent) -> None:
        """Replace the held versions in one transaction."""
