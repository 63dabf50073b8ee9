"""The registry: which devices belong to the realm, their state, and the audit trail.

`Registry` is the interface the service and the CLI use; `tessera.sqlite_registry` implements
it on SQLite (the embedded default), `tessera.pg_registry` on PostgreSQL (a realm shared by
servers on several hosts); `tessera.registry_url.open_registry` opens either from a URL. The
interface is made of single-row reads by key and short transactions with compare-and-set on the
registration generation, so both fit behind it unchanged (tests/server/test_registry_contract.py
runs one suite on both).

It also knows where each device was last admitted (NAS, port, MAC) and the NASes that accept
RFC 5176 Disconnect-Requests, so that revoking a device also kicks it off its port.

Device states (claims 5-7): ENROLLED (the operator named the device) → REGISTERED (it proved
its key and holds a DRT) → REVOKED (no new tickets, ever; the port is kicked). The registry
keeps the DRT's service part (the LLK sealed under the service key) so a server can derive the
device's EAP-PWD password; it never holds an LLK in the clear.

Registration freshness that a restart does not reset (`check_freshness`): the row keeps the
time of the last registration request it accepted and the nonces of every request it accepted
at that second. A request is fresh if its time is later, or the same second with a nonce not
among those; older, or a nonce already there, is a replay. It is checked in the transaction
that bumps the generation (the compare-and-set). Every server of the realm writes through that
one row, so a captured request replayed to any of them, before or after a restart, changes
nothing; every request ever accepted is older than the row's second or listed in it. Keeping
only the last nonce would not do: of two requests in one second (a failover after a lost
reply), the first could be replayed after the second. At most `MAX_NONCES_PER_SECOND` are kept,
so the row stays small; more registrations than that in one second of one device's clock are
refused (only the device's own key can make them).

It also records the realm's servers (id, host, first seen), so that an installer can refuse to
give a second server an id another host already holds (`check_server_id`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from .errors import MalformedError
from .identity import check_device_id



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
    # freshness (check_freshness): the last accepted registration request's own timestamp, and
    # the nonces accepted at that second (16 bytes each, concatenated; None: not known)
    register_request_time: int | None = None
    register_request_nonces: bytes | None = None


@dataclass
class AuditEvent:
    time: int
    event: str  # enrolled, registered, revoked, key-rotated, register-rejected, ...
    device_id: str | None = None
    detail: str = ""
    server_id: str = ""
    count: int = 1  # occurrences this row stands for (aggregated rejections, see tessera.audit)


class Registered(str, enum.Enum):
    """What `Registry.record_registration` did."""

    RECORDED = "recorded"  # the row now holds this registration
    REPLAYED = "replayed"  # the request is not newer than the last accepted one: nothing written
    CHANGED = "changed"  # another registration won, or the device was revoked: nothing written


@dataclass(frozen=True)
class ServerRecord:
    """A RADIUS server of the realm, as its installer recorded it."""

    server_id: str
    host: str
    first_seen: int


class RegistryError(Exception):
    """A registry operation that cannot be done (duplicate enrolment, unknown device)."""


class StaleRequestError(RegistryError):
    """The registration request is not newer than what the device's row has accepted."""


NONCE_LEN = 16  # a request nonce (tessera.message.NONCE_LEN)
MAX_NONCES_PER_SECOND = 64  # kept per device for the row's second: 1 KiB at most


def check_freshness(last_time: int | None, last_nonces: bytes | None, request_time: int,
                    request_nonce: bytes) -> bytes:
    """The nonces the row keeps if it accepts this request; StaleRequestError if it must not.

    `last_time` None: the device never registered, anything is fresh. `last_nonces` None with a
    time: the nonces of that second are not known (a row from before they were kept), so that
    whole second is taken."""
    if len(request_nonce) != NONCE_LEN:
        raise ValueError(f"a request nonce is {NONCE_LEN} bytes")
    if last_time is None or request_time > last_time:
        return request_nonce
    if request_time < last_time:
        raise StaleRequestError(f"registration request of {request_time} is older than the last accepted one "
                                f"({last_time})")
    if last_nonces is None:
        raise StaleRequestError(f"registration requests of {request_time} may have been accepted already")
    seen = [last_nonces[i:i + NONCE_LEN] for i in range(0, len(last_nonces), NONCE_LEN)]
    if request_nonce in seen:
        raise StaleRequestError("this registration request was already accepted")
    if len(seen) >= MAX_NONCES_PER_SECOND:
        raise StaleRequestError(f"more than {MAX_NONCES_PER_SECOND} registrations in second {request_time}")
    return last_nonces + request_nonce


class ServerIdError(RegistryError):
    """The server id is not this server's to take (another host holds it, or it was not chosen)."""


class Registry(Protocol):
    def get_device(self, device_id: str) -> DeviceRecord | None: ...

    def find_by_certificate(self, issuer: str, serial_hex: str) -> DeviceRecord | None: ...

    def add_device(self, record: DeviceRecord, event: AuditEvent) -> None:
        """Enrol; raises RegistryError if the id (or certificate) is already enrolled."""

    def record_registration(self, device_id: str, expect_generation: int, generation: int,
                            not_after: int, sealed_drt: bytes, now: int, event: AuditEvent, *,
                            request_time: int, request_nonce: bytes) -> Registered:
        """Store a registration, in one transaction (compare-and-set), only if the request is
        fresh for the row (`check_freshness`, whose nonces the row then keeps), the generation is
        still `expect_generation` and the device is not revoked. REPLAYED when it is not fresh
        (whatever the generation: retrying that request cannot succeed), CHANGED when it lost to
        another registration or a revocation; nothing is written then."""

    def set_state(self, device_id: str, state: DeviceState, now: int, event: AuditEvent) -> None:
        """Move the device to `state` at `now` (its `updated`); revoking also drops its DRT."""

    def revoked_since(self, since: int, limit: int) -> list[tuple[str, int]]:
        """(device id, revoked at) of the revoked devices whose revocation time is at or after
        `since`, newest first (ties by device id, descending), at most `limit` rows. The
        revocation time is the row's `updated`: `set_state(REVOKED)` writes it and nothing
        writes a revoked row again but another `set_state` (a revocation repeated moves it
        later, which lists the device longer, never shorter). Served by an index, not a scan."""

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

    def list_servers(self) -> list[ServerRecord]: ...

    def claim_server(self, server_id: str, host: str, now: int, event: AuditEvent) -> ServerRecord:
        """Record `server_id` for `host` if no server holds it yet (with the audit line); returns
        the record that holds the id afterwards: `host`'s, or the other host's that had it."""


def check_server_id(servers: list[ServerRecord], server_id: str, host: str, explicit: bool,
                    created_realm: bool) -> str:
    """May this host's server take `server_id` in a realm whose recorded servers are `servers`?

    Each server's id must be unique in the realm (a request names the server it is addressed to,
    and that is what keeps one server's replay cache sufficient). Allowed: an id this host
    already holds (a re-install); a free id chosen explicitly; the default id only in a realm
    this very installation creates. Refused, naming the ids in use: an id another host holds, and
    the default id for a realm that existed before (its servers may predate this record).
    Returns what to tell the operator; raises ServerIdError otherwise."""
    try:
        check_device_id(server_id)  # server ids travel in the same field as device ids
    except MalformedError:
        raise ServerIdError(f"bad server id {server_id!r}: 1-64 characters of [A-Za-z0-9._:@-], starting alphanumeric")
    in_use = ", ".join(f"{s.server_id} (host {s.host})" for s in servers) or "none recorded"
    holder = next((s for s in servers if s.server_id == server_id), None)
    if holder is not None and holder.host != host:
        raise ServerIdError(f"server id {server_id!r} is already taken in this realm by host {holder.host!r}; "
                            f"ids in use: {in_use}. Give this server its own id with --server-id")
    if holder is not None:
        return f"server id {server_id!r} is already this host's ({host!r}): keeping it"
    if not explicit and not created_realm:
        raise ServerIdError(f"this realm exists already (ids in use: {in_use}): a second server must not take the "
                            f"default id {server_id!r} silently. Give it an id unique in the realm with --server-id")
    return f"server id {server_id!r} recorded for host {host!r} (ids in use before: {in_use})"


def claim_server_id(registry: Registry, server_id: str, host: str, explicit: bool, created_realm: bool,
                    now: int) -> str:
    """`check_server_id` on the recorded servers, then record the id for this host. The claim is
    itself a compare-and-set, so an installer elsewhere that took the id in between is refused
    here too. Returns what to tell the operator; raises ServerIdError."""
    message = check_server_id(registry.list_servers(), server_id, host, explicit, created_realm)
    holder = registry.claim_server(server_id, host, now,
                                   AuditEvent(now, "server-added", None, f"{server_id} on host {host}", server_id))
    if holder.host != host:
        in_use = ", ".join(f"{s.server_id} (host {s.host})" for s in registry.list_servers())
        raise ServerIdError(f"server id {server_id!r} was just taken by host {holder.host!r}; ids in use: {in_use}. "
                            f"Give this server its own id with --server-id")
    return message
