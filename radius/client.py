"""Tessera's RADIUS client: one core message out, one core reply back, with failover.

How this works: ``RadiusClient.exchange(user_name, build)`` walks the realm's servers in
order. For each server it calls ``build(server_id)`` -- the core signs or MACs the id of the
server the proof is addressed to, so a request is rebuilt (never re-sent as is) for the next
server -- and sends one Access-Request carrying the message split over ``Tessera-Message``
instances (``tessera.radius.attrs``) plus Message-Authenticator. Within one server it
retransmits the *identical* packet ``retries`` times (same Identifier and Authenticator, so
the server's duplicate cache answers and the core's replay cache is not hit), waiting
``timeout`` seconds each time.

Every reply is checked before it counts (BlastRADIUS, CVE-2024-3596): it must come from the
server's address, match the Identifier and Response Authenticator, carry a valid
Message-Authenticator, and bring no foreign Proxy-State. Anything else is dropped silently
and the client keeps waiting, as RFC 2865 asks.

Outcomes: Access-Accept -> the concatenated ``Tessera-Reply`` bytes; Access-Reject ->
``RejectedError`` with ``Tessera-Error`` and ``Reply-Message`` (a reject is an answer: no
failover), except a server saying it cannot serve anyone now (``CANNOT_SERVE``: its registry
is unreachable past its grace, or its clock is wrong), after which the next server is asked
and, if none does better, the last such refusal is raised; no valid answer from any server ->
``NoServerAnsweredError``. A forged refusal of that kind only moves the device to the next
server, which dropping its packets would do too.

The attribute numbers come from ``dictionary.rfc`` and ``dictionary.tessera`` next to this
file (the latter is the one FreeRADIUS loads too).
"""

from __future__ import annotations

import os
import select
import socket
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from pyrad import packet
from pyrad.dictionary import Dictionary

from ..errors import RegistryUnavailableError, ServerClockError
from .attrs import join_message, split_message

HERE = os.path.dirname(os.path.realpath(__file__))  # os.path, not pathlib: ~0.9 MiB less in every agent
CANNOT_SERVE = frozenset((RegistryUnavailableError.code, ServerClockError.code))  # ask the next server
DICTIONARY_FILES = (os.path.join(HERE, "dictionary.rfc"), os.path.join(HERE, "dictionary.tessera"))


def load_dictionary() -> Dictionary:
    """pyrad's view of the attributes Tessera uses."""
    return Dictionary(*DICTIONARY_FILES)


@dataclass(frozen=True)
class Server:
    """One RADIUS server of the realm. ``server_id`` is what proofs addressed to it name."""

    server_id: str
    host: str
    port: int = 1812
    secret: bytes = b""


class RadiusClientError(Exception):
    """Base of the client's outcomes other than an Access-Accept."""


class RejectedError(RadiusClientError):
    """The server answered Access-Reject: ``code`` is Tessera-Error (None if absent, e.g. a
    reject from the server's policy rather than the core), ``reason`` the Reply-Message."""

    def __init__(self, code: int | None, reason: str, server_id: str, reply: bytes = b""):
        self.code, self.reason, self.server_id = code, reason, server_id
        #: the core's ErrorMessage from Tessera-Reply (feed it to the device core), or b""
        self.reply = reply
        super().__init__(f"{server_id} rejected: {reason or 'no reason given'}"
                         + (f" (Tessera-Error {code})" if code is not None else ""))


class NoServerAnsweredError(RadiusClientError):
    """No server gave a valid answer within its timeout and retries. ``reasons`` names, per
    server id, why (RadSec: connection refused, TLS handshake failed, closed, timed out)."""

    def __init__(self, server_ids: Sequence[str], reasons: dict[str, str] | None = None):
        self.server_ids = list(server_ids)
        self.reasons = dict(reasons or {})
        super().__init__("no RADIUS server answered: " + ", ".join(
            f"{s} ({self.reasons[s]})" if s in self.reasons else s for s in self.server_ids))


class RadiusClient:
    """Send Tessera messages to a realm's RADIUS servers. Blocking; one exchange at a time."""

    def __init__(self, servers: Sequence[Server], timeout: float = 2.0, retries: int = 2,
                 dictionary: Dictionary | None = None, nas_identifier: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if not servers:
            raise ValueError("at least one server is needed")
        self.servers = list(servers)
        self.timeout = timeout
        self.retries = retries
        self.dict = dictionary or load_dictionary()
        self.nas_identifier = nas_identifier
        self.clock = clock

    # -- public -----------------------------------------------------------------------

    def exchange(self, user_name: str, build: Callable[[str], bytes]) -> bytes:
        """Send ``build(server_id)`` to each server in turn until one answers; returns the
        Tessera-Reply bytes of an Access-Accept. Raises ``RejectedError`` or
        ``NoServerAnsweredError``."""
        unable: RejectedError | None = None
        for server in self.servers:
            request = self.request_packet(server, user_name, build(server.server_id))
            reply = self._transact(server, request)
            if reply is not None:
                try:
                    return self._outcome(server, reply)
                except RejectedError as exc:
                    if exc.code not in CANNOT_SERVE:
                        raise
                    unable = exc
        if unable is not None:
            raise unable
        raise NoServerAnsweredError([s.server_id for s in self.servers])

    def status(self, server: Server) -> bool:
        """Status-Server (RFC 5997) with Message-Authenticator: True if the server answered."""
        req = packet.AuthPacket(code=packet.StatusServer, secret=server.secret, dict=self.dict,
                                id=packet.CreateID(), authenticator=os.urandom(16))
        req.add_message_authenticator()
        return self._transact(server, req) is not None

    def request_packet(self, server: Server, user_name: str, message: bytes) -> packet.AuthPacket:
        """The Access-Request for ``message`` (pre-building packets is what load tests need)."""
        req = packet.AuthPacket(code=packet.AccessRequest, secret=server.secret, dict=self.dict,
                                id=packet.CreateID(), authenticator=os.urandom(16))
        req.add_message_authenticator()
        req.AddAttribute("User-Name", user_name)
        if self.nas_identifier:
            req.AddAttribute("NAS-Identifier", self.nas_identifier)
        for piece in split_message(message):
            req.AddAttribute("Tessera-Message", piece)
        return req

    # -- internals --------------------------------------------------------------------

    def _outcome(self, server: Server, reply: packet.Packet) -> bytes:
        if reply.code == packet.AccessAccept:
            return join_message(reply.get("Tessera-Reply", []))
        if reply.code == packet.AccessReject:
            codes = reply.get("Tessera-Error", [])
            reason = "".join(reply.get("Reply-Message", []))
            raise RejectedError(self._error_code(codes[0]) if codes else None, reason,
                                server.server_id, join_message(reply.get("Tessera-Reply", [])))
        raise RejectedError(None, f"unexpected RADIUS code {reply.code}", server.server_id)

    def _error_code(self, value) -> int | None:
        """Tessera-Error as an int: pyrad gives a VALUE name (``"Revoked"``) for known codes."""
        if isinstance(value, int):
            return value
        encoded = self.dict.attributes["Tessera-Error"].values.forward.get(value)
        return int.from_bytes(encoded, "big") if encoded is not None else None

    def _transact(self, server: Server, request: packet.AuthPacket) -> packet.Packet | None:
        """Send ``request`` (1 + retries times) and return the first valid reply, or None."""
        raw = request.RequestPacket()
        infos = socket.getaddrinfo(server.host, server.port, type=socket.SOCK_DGRAM)
        family, _, _, _, addr = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)  # the kernel drops datagrams from other addresses
            for _ in range(1 + self.retries):
                try:
                    sock.send(raw)
                except OSError:  # e.g. no route, ICMP unreachable from the last try
                    pass
                reply = self._await_reply(sock, request, self.clock() + self.timeout)
                if reply is not None:
                    return reply
        return None

    def _await_reply(self, sock: socket.socket, request: packet.AuthPacket,
                     deadline: float) -> packet.Packet | None:
        while (left := deadline - self.clock()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                return None
            try:
                data = sock.recv(4096)
            except OSError:  # ICMP port unreachable surfaces here: wait out the timeout
                continue
            reply = self._verified(request, data)
            if reply is not None:
                return reply
        return None

    def _verified(self, request: packet.AuthPacket, data: bytes) -> packet.Packet | None:
        """The decoded reply if it is authentic and answers ``request``, else None."""
        try:
            reply = packet.Packet(packet=data, secret=request.secret, dict=self.dict)
        except Exception:  # noqa: BLE001 -- malformed datagram: drop it
            return None
        if reply.code not in (packet.AccessAccept, packet.AccessReject, packet.AccessChallenge):
            return None
        try:
            ok = request.VerifyReply(reply, data, enforce_ma=True)
        except Exception:  # noqa: BLE001
            return None
        return reply if ok else None
