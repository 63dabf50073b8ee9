"""Disconnect-Request (RFC 5176) to a NAS: kick a revoked device off its port.

How this works: one CoAPacket(Disconnect-Request) from pyrad, naming the session by User-Name
(the device id) and Calling-Station-Id (its MAC, as the NAS reported it at admission), with
Message-Authenticator and Event-Timestamp; retransmitted as is, `retries` times. The reply
counts only if it is a Disconnect-ACK/-NAK whose Response Authenticator and
Message-Authenticator verify with the NAS's secret; a request that cannot leave (no route to the
NAS, an address that does not resolve) is reported as not sent, at once, rather than raised.
hostapd answers these when configured with `radius_das_port` / `radius_das_client`,
deauthenticates the station and closes the port.
"""

from __future__ import annotations

import select
import socket
import time
from dataclasses import dataclass

from pyrad import packet

from .client import load_dictionary


@dataclass(frozen=True)
class DisconnectResult:
    acked: bool
    answered: bool
    error_cause: int | None = None
    not_sent: str | None = None  # why the request could not leave (no route, bad address)

    def __str__(self) -> str:
        if self.not_sent is not None:
            return f"not sent ({self.not_sent})"
        if not self.answered:
            return "no answer"
        return "Disconnect-ACK" if self.acked else f"Disconnect-NAK (Error-Cause {self.error_cause})"


def disconnect(address: str, port: int, secret: str, user_name: str, calling_station: str | None,
               timeout: float = 2.0, retries: int = 2) -> DisconnectResult:
    """Ask the NAS at address:port to end the session of `user_name` / `calling_station`."""
    d = load_dictionary()
    req = packet.CoAPacket(code=packet.DisconnectRequest, secret=secret.encode(), dict=d,
                           id=packet.CreateID(), authenticator=None)
    req.add_message_authenticator()
    req["User-Name"] = user_name
    if calling_station:
        req["Calling-Station-Id"] = calling_station
    req["Event-Timestamp"] = int(time.time())
    raw = req.RequestPacket()
    try:
        family, _, _, _, addr = socket.getaddrinfo(address, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        return DisconnectResult(False, False, not_sent=exc.strerror or str(exc))
    with sock:
        try:
            sock.connect(addr)  # fails at once when there is no route to the NAS
        except OSError as exc:
            return DisconnectResult(False, False, not_sent=exc.strerror or str(exc))
        for _ in range(1 + retries):
            try:
                sock.send(raw)
            except OSError:
                pass
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                if not select.select([sock], [], [], left)[0]:
                    break
                try:
                    data = sock.recv(4096)
                except OSError:
                    continue
                reply = _verified(req, data, secret.encode(), d)
                if reply is not None:
                    cause = reply.get("Error-Cause", [None])[0] if "Error-Cause" in reply else None
                    return DisconnectResult(reply.code == packet.DisconnectACK, True, cause)
    return DisconnectResult(False, False)


def _verified(req: packet.CoAPacket, data: bytes, secret: bytes, d) -> packet.Packet | None:
    try:
        reply = packet.CoAPacket(packet=data, secret=secret, dict=d)
    except Exception:  # noqa: BLE001 -- malformed datagram: drop it
        return None
    if reply.code not in (packet.DisconnectACK, packet.DisconnectNAK):
        return None
    if not reply.message_authenticator:
        # pyrad's enforce_ma covers only replies to Access-Request/Status-Server; a
        # Disconnect-ACK/-NAK must carry one too (BlastRADIUS, CVE-2024-3596)
        return None
    try:
        return reply if req.VerifyReply(reply, data, enforce_ma=True) else None
    except Exception:  # noqa: BLE001
        return None


__all__ = ["DisconnectResult", "disconnect"]
