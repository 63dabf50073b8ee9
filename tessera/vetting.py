"""Vetting the client certificate of a RadSec connection, once a minute rather than per request.

How this works: over RadSec (RFC 6614) the device shows its certificate in the TLS handshake;
the listener has checked its chain against the trusted device CAs. Every request on the
connection then carries that certificate's serial, issuer and Common Name (copied by the site
from the connection, where a client cannot write), and before its message is looked at the
certificate must be the one enrolled for the device it names: ``Service.admit_certificate``,
the check EAP-TLS admission makes. FreeRADIUS 3.2.1 cannot run
that check once per connection (``check_client_connections`` stalls every connection it
checks), so it runs per request, and this keeps its positive answers for ``ttl`` seconds per
certificate, at most ``max_entries`` of them (the oldest go first), so the registry is asked
about a busy device about once a minute.

Revocation is the service's to refuse: it refuses every request of a revoked device by its
registry state (and signs that refusal when the request's proof holds, so the device can act on
it), so a revoked device's own certificate passes here, uncached, and its request is refused
there. Caching the yes is therefore safe: what the cache holds is only "this certificate is the
one enrolled for that device". Refusals are never cached, so an enrolment that follows takes
effect at once.

Sans-I/O: ``now`` is a parameter, the service is passed in.
"""

from __future__ import annotations

from typing import Protocol

from .errors import RevokedError


class CertificateAdmission(Protocol):
    def admit_certificate(self, serial_hex: str, issuer: str, common_name: str, now: float) -> str: ...


class CertificateVetting:
    """The device a connection's certificate speaks for, checked against the registry."""

    def __init__(self, service: CertificateAdmission, ttl: float = 60.0, max_entries: int = 4096):
        if ttl < 0 or max_entries < 1:
            raise ValueError("ttl must be >= 0 and max_entries >= 1")
        self.service = service
        self.ttl = ttl
        self.max_entries = max_entries
        self._vetted: dict[tuple[str, str, str], tuple[str, float]] = {}  # insertion order = age

    def device(self, serial_hex: str, issuer: str, common_name: str, now: float) -> str:
        """The device id the certificate is enrolled for (also when that device is revoked);
        raises the service's TesseraError (unknown-device, bad-certificate) when it is not."""
        key = (serial_hex.lower().removeprefix("0x"), issuer, common_name)
        hit = self._vetted.get(key)
        if hit is not None and 0 <= now - hit[1] < self.ttl:
            return hit[0]
        self._vetted.pop(key, None)
        try:
            device = self.service.admit_certificate(serial_hex, issuer, common_name, now)
        except RevokedError:
            # the certificate is the revoked device's own: let the request through to the service,
            # which refuses it by the registry state -- with an error signed over the request's
            # nonce when its proof holds, which the device may act on (an unsigned one it ignores)
            return common_name
        while len(self._vetted) >= self.max_entries:
            del self._vetted[next(iter(self._vetted))]
        self._vetted[key] = (device, now)
        return device

    def __len__(self) -> int:
        return len(self._vetted)
