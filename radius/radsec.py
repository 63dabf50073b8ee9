"""RADIUS over TLS (RadSec, RFC 6614): how a device speaks to its realm with its own certificate.

How this works: ``RadSecClient`` has the contract of ``RadiusClient`` (``exchange(user_name,
build)`` returns the Tessera-Reply bytes of an Access-Accept, raises ``RejectedError`` for an
Access-Reject and ``NoServerAnsweredError`` when no server answered) over a different
transport. It keeps one TLS connection per server open (made when first needed, reused after):

- TLS (stdlib ``ssl``, 1.2 or 1.3) with the device certificate and key as the client
  certificate, and the realm CA as the only trust anchor for the server, whose certificate
  must also carry the server's name (``RadSecServer.tls_name``, else its host);
- each RADIUS packet is built with pyrad as for UDP, Message-Authenticator included, keyed with
  RFC 6614's fixed secret ``radsec`` -- TLS authenticates and protects the packets, not the
  secret -- and written to the stream as one TLS record (FreeRADIUS 3.2.1 reads one record as
  one packet); the reply is read by the length in its 4-byte header (20..4096 bytes, else the
  stream is broken and the connection is closed);
- the reply must answer the request: its Identifier, Response Authenticator and
  Message-Authenticator are checked as for UDP (``RadiusClient._verified``); anything else on
  the stream is dropped;
- one exchange at a time per connection (an SSL object must not be read and written from two
  threads at once): a second thread waits for the first, within its own time bound;
- every step is bounded by ``timeout``: connecting plus the TLS handshake, and then the wait
  for the answer (all non-blocking with ``poll``, so a server that accepts the TCP
  connection and then says nothing cannot hold a thread longer);
- a connection the server closed while idle (FreeRADIUS's ``idle_timeout``) is noticed before
  the request goes out (the socket is readable with no request outstanding) and replaced; if
  the server closes a reused connection before answering, the request is rebuilt and sent once
  more on a new connection. No request is ever retransmitted on the same connection
  (RFC 6614 section 2.6.1: TCP retransmits; a timeout means the connection is dead);
- failover: a server whose connection cannot be made, or which times out or closes before
  answering, is left for the next one (the request is rebuilt for it: ``build(server_id)``, as
  for UDP), and is tried last for ``holddown`` seconds, so that a dead server does not cost
  every exchange its time bound first. A later exchange reconnects.

A server that is down is a named failure: ``NoServerAnsweredError.reasons`` says, per server,
"connection refused", "TLS handshake failed: ...", "closed by the server before answering",
"timed out waiting for the answer", and so on. Nothing here logs or raises key material.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from pyrad import packet
from pyrad.dictionary import Dictionary

from .client import CANNOT_SERVE, NoServerAnsweredError, RadiusClient, RejectedError

#: RFC 6614 section 2.3: the shared secret of RADIUS/TLS is this fixed string.
RADSEC_SECRET = b"radsec"
#: IANA's port for RADIUS/TLS.
RADSEC_PORT = 2083
HEADER = 4  # code, identifier, length (2 bytes)
MIN_PACKET, MAX_PACKET = 20, 4096  # RFC 2865 section 3


@dataclass(frozen=True)
class RadSecServer:
    """One server of the realm over RadSec. ``tls_name`` is the name its certificate must carry
    (a DNS name or an IP address; empty: ``host``)."""

    server_id: str
    host: str
    port: int = RADSEC_PORT
    tls_name: str = ""

    @property
    def secret(self) -> bytes:
        return RADSEC_SECRET


def tls_context(certfile: str, keyfile: str, cadata: bytes | str) -> ssl.SSLContext:
    """The device's TLS client context: its certificate and key (files, as ``ssl`` needs), the
    realm CA (PEM) as the only trust anchor, the server's name checked, TLS 1.2 or newer."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=cadata.decode() if isinstance(cadata, bytes) else cadata)
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


class TransportError(Exception):
    """One server could not be asked (the text says why); the client fails over."""


class _Busy(TransportError):
    """Another thread held the server's connection for the whole time bound (it is waiting on
    that server, and will hold it down if it fails): fail over, without holding it down."""


class _Closed(TransportError):
    """The server closed the connection (or reset it) before answering."""


class _Connection:
    """One TLS connection to one server; used under ``lock`` only."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sock: ssl.SSLSocket | None = None
        self.buf = bytearray()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.buf.clear()

    def stale(self) -> bool:
        """True if the server has closed the connection or sent something unasked: with no
        request outstanding, readable application data, a close_notify or an EOF. TLS records
        that carry no data (TLS 1.3 session tickets, key updates) are taken and ignored."""
        if self.sock is None:
            return True
        if self.buf or self.sock.pending():
            return True
        try:
            if not _ready(self.sock, False, 0):
                return False
            self.sock.recv(4096)  # non-blocking: data or EOF (stale), or no data in those records
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except (OSError, ValueError):
            return True
        return True


class RadSecClient(RadiusClient):
    """Send Tessera messages to a realm's servers over RadSec. Thread-safe; ``close()`` when done."""

    def __init__(self, servers: Sequence[RadSecServer], context: ssl.SSLContext, timeout: float = 2.0,
                 holddown: float = 30.0, dictionary: Dictionary | None = None,
                 nas_identifier: str | None = None, clock: Callable[[], float] = time.monotonic):
        super().__init__(servers, timeout=timeout, retries=0, dictionary=dictionary,
                         nas_identifier=nas_identifier, clock=clock)
        self.context = context
        self.holddown = holddown
        self._lock = threading.Lock()
        self._conns: dict[str, _Connection] = {s.server_id: _Connection() for s in self.servers}
        self._down_until: dict[str, float] = {}

    # -- public -----------------------------------------------------------------------

    def exchange(self, user_name: str, build: Callable[[str], bytes]) -> bytes:
        """Send ``build(server_id)`` to the servers in turn until one answers (see the module
        docstring); returns the Tessera-Reply bytes of an Access-Accept."""
        reasons: dict[str, str] = {}
        unable: RejectedError | None = None
        for server in self._order():
            try:
                reply = self._ask(server, lambda: self.request_packet(server, user_name, build(server.server_id)))
            except TransportError as exc:
                reasons[server.server_id] = str(exc)
                if not isinstance(exc, _Busy):
                    with self._lock:
                        self._down_until[server.server_id] = self.clock() + self.holddown
                continue
            with self._lock:
                self._down_until.pop(server.server_id, None)
            try:
                return self._outcome(server, reply)
            except RejectedError as exc:  # see RadiusClient.exchange: this one cannot serve now
                if exc.code not in CANNOT_SERVE:
                    raise
                unable = exc
        if unable is not None:
            raise unable
        raise NoServerAnsweredError([s.server_id for s in self.servers if s.server_id in reasons], reasons)

    def status(self, server: RadSecServer) -> bool:
        """Status-Server (RFC 5997) over the server's connection: True if it answered."""
        def make():
            req = packet.AuthPacket(code=packet.StatusServer, secret=server.secret, dict=self.dict,
                                    id=packet.CreateID(), authenticator=os.urandom(16))
            req.add_message_authenticator()
            return req
        try:
            self._ask(server, make)
        except TransportError:
            return False
        return True

    def close(self) -> None:
        """Close every connection (a later exchange opens them again)."""
        for conn in self._conns.values():
            with conn.lock:
                conn.close()

    def __enter__(self) -> "RadSecClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------

    def _order(self) -> list[RadSecServer]:
        """The servers in order, those held down after the others."""
        now = self.clock()
        with self._lock:
            held = {s.server_id for s in self.servers if self._down_until.get(s.server_id, 0.0) > now}
        return [s for s in self.servers if s.server_id not in held] + [s for s in self.servers if s.server_id in held]

    def _ask(self, server: RadSecServer, make: Callable[[], packet.AuthPacket]) -> packet.Packet:
        """One request to one server over its connection; the verified reply. Raises
        ``TransportError`` naming why there is none."""
        conn = self._conns[server.server_id]
        if not conn.lock.acquire(timeout=self.timeout):
            raise _Busy(f"connection busy for {self.timeout:g} s")
        try:
            for attempt in (1, 2):
                fresh = False
                if conn.stale():
                    conn.close()
                    self._connect(server, conn)
                    fresh = True
                request = make()
                try:
                    self._send(conn, request.RequestPacket(), self.clock() + self.timeout)
                    return self._await_reply(conn, request, self.clock() + self.timeout)
                except _Closed as exc:
                    conn.close()
                    if fresh:  # FreeRADIUS closes (alert unsent) when it refuses the device certificate
                        raise TransportError("the server closed the new connection without answering "
                                             "(did it refuse the device certificate?)") from None
                    if attempt == 2:
                        raise TransportError(str(exc)) from None
                    # the server closed the reused connection just now (idle timeout): once more
                    # on a new one, with a request rebuilt for it
                except TransportError:
                    conn.close()
                    raise
            raise AssertionError("unreachable")
        finally:
            conn.lock.release()

    def _connect(self, server: RadSecServer, conn: _Connection) -> None:
        """TCP connect and TLS handshake, together within ``timeout``."""
        deadline = self.clock() + self.timeout
        try:
            raw = socket.create_connection((server.host, server.port), timeout=self.timeout)
        except ConnectionRefusedError:
            raise TransportError("connection refused") from None
        except (socket.timeout, TimeoutError):
            raise TransportError(f"no TCP connection within {self.timeout:g} s") from None
        except OSError as exc:
            raise TransportError(f"cannot connect: {exc.strerror or type(exc).__name__}") from None
        try:
            raw.setblocking(False)
            sock = self.context.wrap_socket(raw, server_hostname=server.tls_name or server.host,
                                            do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            raw.close()
            raise TransportError(f"TLS setup failed: {exc}") from None
        try:
            while True:
                try:
                    sock.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    _wait(sock, False, deadline, self.clock, "TLS handshake")
                except ssl.SSLWantWriteError:
                    _wait(sock, True, deadline, self.clock, "TLS handshake")
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise TransportError(f"TLS handshake failed: server certificate refused: {exc.verify_message}") from None
        except ssl.SSLError as exc:
            sock.close()
            raise TransportError(f"TLS handshake failed: {exc.reason or exc}") from None
        except (OSError, TransportError) as exc:
            sock.close()
            if isinstance(exc, TransportError):
                raise
            raise TransportError(f"TLS handshake failed: {exc.strerror or type(exc).__name__}") from None
        conn.sock = sock

    def _send(self, conn: _Connection, data: bytes, deadline: float) -> None:
        """One packet, one TLS record (one SSL_write)."""
        while True:
            try:
                sent = conn.sock.send(data)  # ≤ 4096 bytes: one record, written whole or not at all
                if sent != len(data):
                    raise TransportError(f"TLS wrote {sent} of {len(data)} bytes: stream out of step")
                return
            except ssl.SSLWantWriteError:
                _wait(conn.sock, True, deadline, self.clock, "sending the request")
            except ssl.SSLWantReadError:
                _wait(conn.sock, False, deadline, self.clock, "sending the request")
            except (ssl.SSLZeroReturnError, ConnectionError, BrokenPipeError):
                raise _Closed("closed by the server before the request went out") from None
            except ssl.SSLError as exc:
                raise TransportError(f"TLS error sending: {exc.reason or exc}") from None
            except OSError as exc:
                raise TransportError(f"cannot send: {exc.strerror or type(exc).__name__}") from None

    def _await_reply(self, conn: _Connection, request: packet.AuthPacket, deadline: float) -> packet.Packet:
        """Read packets until the one that answers ``request`` (others are dropped), at most
        until ``deadline`` -- also when the server keeps sending packets that answer nothing."""
        while True:
            if self.clock() >= deadline:
                raise TransportError("timed out waiting for the answer")
            header = self._read(conn, HEADER, deadline)
            length = int.from_bytes(header[2:4], "big")
            if not MIN_PACKET <= length <= MAX_PACKET:
                raise TransportError(f"the server sent a packet of length {length}: stream out of step")
            data = header + self._read(conn, length - HEADER, deadline)
            reply = self._verified(request, data)
            if reply is not None:
                return reply

    def _read(self, conn: _Connection, n: int, deadline: float) -> bytes:
        while len(conn.buf) < n:
            try:
                chunk = conn.sock.recv(max(n - len(conn.buf), 4096))
            except ssl.SSLWantReadError:
                _wait(conn.sock, False, deadline, self.clock, "the answer")
                continue
            except ssl.SSLWantWriteError:
                _wait(conn.sock, True, deadline, self.clock, "the answer")
                continue
            except (ssl.SSLZeroReturnError, ConnectionError):
                raise _Closed("closed by the server before answering") from None
            except ssl.SSLError as exc:  # e.g. TLS 1.3: the server's alert about our certificate
                raise TransportError(f"TLS refused by the server: {exc.reason or exc}") from None
            except OSError as exc:
                raise TransportError(f"cannot read: {exc.strerror or type(exc).__name__}") from None
            if not chunk:
                raise _Closed("closed by the server before answering")
            conn.buf += chunk
        out = bytes(conn.buf[:n])
        del conn.buf[:n]
        return out


def _ready(sock: socket.socket, write: bool, timeout: float) -> bool:
    """poll(2), not select(2): an agent with many sockets open may hold descriptors >= 1024,
    which select() cannot wait on (ValueError)."""
    p = select.poll()
    p.register(sock, select.POLLOUT if write else select.POLLIN)
    return bool(p.poll(max(0, int(timeout * 1000))))


def _wait(sock: socket.socket, write: bool, deadline: float, clock: Callable[[], float], what: str) -> None:
    """Wait until ``sock`` is readable (or writable); ``TransportError`` at the deadline."""
    left = deadline - clock()
    if left > 0 and _ready(sock, write, left):
        return
    raise TransportError(f"timed out waiting for {what}")
