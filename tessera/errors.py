"""The error taxonomy: every rejection has a named reason.

Like h2, each class carries its wire code (sent in Tessera-Error and in error frames); like
dnspython, the docstring is the default message. Errors never carry key material: they are
logged and sent to the peer as they are.

Ticket failures (bad tag, wrong key, splice, truncation inside a sealed blob) collapse into the
opaque `InvalidTicket` towards the other side, as Fernet's `InvalidToken` does; the `detail`
keeps the local reason for the log.
"""

from __future__ import annotations


class TesseraError(Exception):
    """Tessera rejected the input."""

    code = 1
    name = "error"
    #: a device changes state on this error (drops its tickets, moves its clock): the service
    #: signs it over the request's nonce and a device acts on it only when `signed`
    #: (docs/layouts.md#signederror)
    changes_state = False
    #: service side: the request this error refuses, set once that request's proof verified
    #: (only then may `Service.error_reply` sign it: the error is for a real device)
    proven_request = None
    #: device side: True once the service's signature over this device's request verified
    signed = False
    #: the server's clock as the error reply gave it (a device adopts it only from a signed
    #: ClockSkewError)
    server_time: int | None = None

    def __init__(self, detail: str | None = None):
        self.detail = detail
        super().__init__(detail or (self.__doc__ or self.name).strip())

    @property
    def reason(self) -> str:
        """The text for Reply-Message / the error frame: `name: detail`."""
        return f"{self.name}: {self}"


class MalformedError(TesseraError):
    """The message does not parse."""

    code, name = 2, "malformed"


class UnsupportedVersionError(TesseraError):
    """The message uses a protocol version this side does not speak."""

    code, name = 3, "unsupported-version"


class InvalidTicket(TesseraError):
    """The ticket or sealed part does not open (tampered, truncated, spliced or wrong key)."""

    code, name = 4, "invalid-ticket"


class UnknownKeyVersionError(TesseraError):
    """The ticket is sealed under a service key version this service does not hold."""

    code, name = 5, "unknown-key-version"


class WrongRealmError(TesseraError):
    """The message belongs to another realm."""

    code, name = 6, "wrong-realm"


class UnknownDeviceError(TesseraError):
    """The device is not enrolled in this realm."""

    code, name = 7, "unknown-device"
    changes_state = True


class RevokedError(TesseraError):
    """The device is revoked."""

    code, name = 8, "revoked"
    changes_state = True


class NotRegisteredError(TesseraError):
    """The device has no valid registration."""

    code, name = 9, "not-registered"
    changes_state = True


class SupersededError(TesseraError):
    """The registration ticket was replaced by a newer registration."""

    code, name = 10, "superseded"
    changes_state = True


class ExpiredError(TesseraError):
    """The ticket or proof has expired."""

    code, name = 11, "expired"


class NotYetValidError(TesseraError):
    """The ticket or proof is not valid yet."""

    code, name = 12, "not-yet-valid"


class ClockSkewError(TesseraError):
    """The request's timestamp is outside the allowed clock skew."""

    code, name = 13, "clock-skew"
    changes_state = True

    def __init__(self, detail: str | None = None, server_time: int | None = None):
        super().__init__(detail)
        #: the server's clock, sent back so a device without a set clock can correct itself
        self.server_time = server_time


class BadProofError(TesseraError):
    """The proof of possession (signature or MAC) does not verify."""

    code, name = 14, "bad-proof"


class ReplayError(TesseraError):
    """The request, authenticator or frame was seen before."""

    code, name = 15, "replay"


class WrongServerError(TesseraError):
    """The proof is addressed to another server."""

    code, name = 16, "wrong-server"


class WrongPeerError(TesseraError):
    """The authenticator names another peer."""

    code, name = 17, "wrong-peer"


class StateError(TesseraError):
    """The input is not allowed in the current protocol state."""

    code, name = 18, "bad-state"


class CertificateError(TesseraError):
    """The device certificate is not acceptable."""

    code, name = 19, "bad-certificate"


class InternalError(TesseraError):
    """The service failed internally."""

    code, name = 20, "internal-error"


class WrongIdentityError(TesseraError):
    """The message names another device than the one the transport authenticated (RadSec:
    the device certificate of the TLS connection)."""

    code, name = 21, "wrong-identity"


class QuotaError(TesseraError):
    """The device sent more fresh proofs within the replay window than its quota allows."""

    code, name = 22, "over-quota"


class RegistryUnavailableError(TesseraError):
    """The realm's registry cannot be reached (its database is down, partitioned or too slow)."""

    code, name = 23, "registry-unavailable"


class ServerClockError(TesseraError):
    """This server's clock disagrees with the realm's (its registry database's clock) by more
    than half the allowed skew: it refuses requests until its clock is right; another server
    of the realm can serve them."""

    code, name = 24, "server-clock"


ALL: tuple[type[TesseraError], ...] = (
    TesseraError, MalformedError, UnsupportedVersionError, InvalidTicket, UnknownKeyVersionError,
    WrongRealmError, UnknownDeviceError, RevokedError, NotRegisteredError, SupersededError,
    ExpiredError, NotYetValidError, ClockSkewError, BadProofError, ReplayError, WrongServerError,
    WrongPeerError, StateError, CertificateError, InternalError, WrongIdentityError, QuotaError,
    RegistryUnavailableError, ServerClockError,
)
BY_CODE: dict[int, type[TesseraError]] = {cls.code: cls for cls in ALL}


def from_code(code: int, detail: str | None = None) -> TesseraError:
    """The error for a wire code (an unknown code becomes the generic TesseraError)."""
    return BY_CODE.get(code, TesseraError)(detail)
