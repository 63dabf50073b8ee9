"""Hand-made RADIUS packets for tests that must control every attribute and the source address.

How this works: ``request`` builds an Access-Request or Status-Server with pyrad and the
project's dictionary, with or without Message-Authenticator; ``encode`` makes its bytes, also
with a Message-Authenticator keyed by another secret; ``send`` sends them from a chosen local
address (any 127.0.0.0/8 address is this host, and FreeRADIUS picks the client entry by source
address) and returns the raw answer or None after ``timeout``; ``reply`` decodes an answer and
checks its Response Authenticator and its Message-Authenticator (which every reply must carry)
against the request.
"""

from __future__ import annotations

import os
import socket

from pyrad import packet

from tessera.radius.client import load_dictionary

DICT = load_dictionary()


def request(secret: str, attributes=(), code: int = packet.AccessRequest,
            message_authenticator: bool = True) -> packet.AuthPacket:
    """An Access-Request (or ``code``) with ``attributes`` ((name, value) pairs), with a
    Message-Authenticator (computed when encoded) unless told otherwise."""
    req = packet.AuthPacket(code=code, secret=secret.encode(), dict=DICT, id=packet.CreateID(),
                            authenticator=os.urandom(16))
    if message_authenticator:
        req.add_message_authenticator()
    for name, value in attributes:
        req.AddAttribute(name, value)
    return req


def encode(req: packet.AuthPacket, ma_secret: str | None = None) -> bytes:
    """The request's bytes; with ``ma_secret``, its Message-Authenticator keyed by that secret
    instead of the request's own (what someone without the secret can send)."""
    if ma_secret is None:
        return req.RequestPacket()
    own, req.secret = req.secret, ma_secret.encode()
    try:
        return req.RequestPacket()
    finally:
        req.secret = own


def send(address: str, port: int, raw: bytes, source: str = "127.0.0.1", timeout: float = 1.0) -> bytes | None:
    """Send ``raw`` from ``source`` to address:port; the first answer, or None within ``timeout``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(timeout)
        s.sendto(raw, (address, port))
        try:
            return s.recv(4096)
        except socket.timeout:
            return None


def reply(req: packet.AuthPacket, raw: bytes) -> packet.Packet:
    """The decoded answer to ``req``; asserts it is authentic and carries a valid
    Message-Authenticator."""
    answer = packet.Packet(packet=raw, secret=req.secret, dict=DICT)
    assert "Message-Authenticator" in answer, "a reply without Message-Authenticator"
    assert req.VerifyReply(answer, raw, enforce_ma=True), "a reply that does not verify"
    return answer


def exchange(address: str, port: int, req: packet.AuthPacket, source: str = "127.0.0.1",
             timeout: float = 1.0) -> packet.Packet | None:
    """``send`` + ``reply``: the verified answer, or None if there was none."""
    raw = send(address, port, encode(req), source, timeout)
    return None if raw is None else reply(req, raw)
