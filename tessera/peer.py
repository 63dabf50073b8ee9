"""The peer handshake (claims 1, 3, 4, 17, 27-29): two devices get a session key from the
service, prove it to each other, and then talk without the service.

    A (initiator)                 B (responder)                      service
    PeerHello ------------------> (TGT_A, authenticator naming B)
                                  SessionRequest -----------------> (TGT_B, B's proof, A's hello)
                                  <----------------- SessionReply   (key sealed for B, for A)
    <-------------------------- PeerTicket   (A's part, B's finished)
    PeerFinished --------------->            (A's finished)           B established: B sends
    <-------------------------- PeerConfirm  (B's confirm)            A established: A sends
    ======== PeerData records both ways, keys from the schedule below ========

Key confirmation runs both ways: B's finished proves B holds the key before A uses it, A's
finished proves A does before B does, and B's confirm tells A that B has switched, so A never
sends under a key B does not hold (any record of the new session from B confirms as well: B
sends under it only once established). Retransmission is the node's: a repeated hello gets
the same PeerTicket, a repeated PeerFinished the same PeerConfirm (`ticket_bytes`,
`confirm_bytes`), so no lost frame needs a second request to the realm.

Key schedule: th = H(hello ‖ PeerTicket body); HKDF(session key, salt = th, "peer keys") →
finished keys for B and A, a key and IV per direction, and the 8-byte session id. B's finished
MAC covers th, A's covers th ‖ B's finished, B's confirm th ‖ A's finished: each side proves it holds the session key and saw
the same handshake (mutual authentication), and a changed frame changes every derived key.

Both roles are state machines with transition tables; an input not in the table is StateError.

Byte layout: docs/layouts.md#peer-key-schedule
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from . import kdf, message as m
from .device import Credentials, DeviceClient
from .errors import BadProofError, ExpiredError, StateError, WrongPeerError, WrongRealmError, from_code
from .record import DATA_WINDOW, RecordReceiver, RecordSender
from .replay import check_skew
from .seal import Sealer
from .service import session_part_aad
from .wire import Reader


class PeerState(enum.Enum):
    START = "start"
    HELLO_SENT = "hello-sent"  # initiator
    AWAITING_SERVICE = "awaiting-service"  # responder
    TICKET_SENT = "ticket-sent"  # responder
    CONFIRMING = "confirming"  # initiator: holds the keys, waits for B's confirm before sending
    ESTABLISHED = "established"
    CLOSED = "closed"


P = PeerState
INITIATOR: dict[tuple[PeerState, str], PeerState] = {
    (P.START, "hello"): P.HELLO_SENT,
    (P.HELLO_SENT, "peer_ticket"): P.CONFIRMING,
    (P.CONFIRMING, "peer_confirm"): P.ESTABLISHED,
}
RESPONDER: dict[tuple[PeerState, str], PeerState] = {
    (P.START, "peer_hello"): P.AWAITING_SERVICE,
    (P.AWAITING_SERVICE, "session_request"): P.AWAITING_SERVICE,
    (P.AWAITING_SERVICE, "session_reply"): P.TICKET_SENT,
    (P.TICKET_SENT, "peer_finished"): P.ESTABLISHED,
}
FINISHED_I, FINISHED_R, CONFIRM_R = b"initiator finished", b"responder finished", b"responder confirm"
NO_HW = bytes(6)  # a hello or ticket that binds no MAC (the node always binds its own)


@dataclass
class Keys:
    transcript: bytes
    finished_responder: bytes
    finished_initiator: bytes
    key_i2r: bytes
    key_r2i: bytes
    iv_i2r: bytes
    iv_r2i: bytes
    session_id: bytes

    def __repr__(self) -> str:
        return f"Keys(session_id={self.session_id.hex()})"


def key_schedule(session_key: bytes, hello: bytes, ticket_body: bytes) -> Keys:
    th = kdf.transcript_hash(hello, ticket_body)
    okm = kdf.derive(session_key, kdf.PEER_KEYS, length=32 * 4 + 12 * 2 + 8, salt=th)
    return Keys(th, okm[0:32], okm[32:64], okm[64:96], okm[96:128], okm[128:140], okm[140:152], okm[152:160])


class Channel:
    """An established peer session: seal and open records, no server involved."""

    def __init__(self, peer: str, keys: Keys, initiator: bool, not_after: int, window: int = DATA_WINDOW):
        self.peer = peer
        self.session_id = keys.session_id
        self.not_after = not_after
        send = (keys.key_i2r, keys.iv_i2r) if initiator else (keys.key_r2i, keys.iv_r2i)
        recv = (keys.key_r2i, keys.iv_r2i) if initiator else (keys.key_i2r, keys.iv_i2r)
        self.sender = RecordSender(keys.session_id, *send)
        self.receiver = RecordReceiver(keys.session_id, *recv, window=window)

    def seal(self, data: bytes) -> bytes:
        return self.sender.seal(data)

    def open(self, frame: bytes) -> bytes:
        return self.receiver.open(frame)

    def expired(self, now: float) -> bool:
        return now >= self.not_after

    def __repr__(self) -> str:
        return f"Channel(peer={self.peer!r}, session_id={self.session_id.hex()}, not_after={self.not_after})"


class _Role:
    TABLE: dict
    state: PeerState

    def _step(self, event: str) -> None:
        try:
            self.state = self.TABLE[(self.state, event)]
        except KeyError:
            raise StateError(f"{event} is not allowed in state {self.state.value}") from None

    def close(self) -> None:
        self.state = P.CLOSED


def _open_part(creds: Credentials, part: bytes, realm: str, initiator: str, responder: str,
               ni: bytes, role: bytes) -> tuple[bytes, int, bytes, bytes]:
    r = Reader(Sealer(kdf.derive(creds.stk, kdf.SESSION_PART)).open(
        part, session_part_aad(realm, initiator, responder, ni, role)))
    key, not_after, i, rr, ni2, nr = r.pull_bytes(32), r.pull_u64(), r.pull_str(), r.pull_str(), r.pull_bytes(16), r.pull_bytes(16)
    r.finish()
    if (i, rr, ni2) != (initiator, responder, ni):
        raise BadProofError("session part names another handshake")
    return key, not_after, ni2, nr


class PeerInitiator(_Role):
    """Device A's side."""

    TABLE = INITIATOR

    def __init__(self, client: DeviceClient, responder: str):
        self.client = client
        self.responder = responder
        self.state = P.START
        self.channel: Channel | None = None

    def hello(self, now: float, nonce: bytes, hw: bytes = NO_HW) -> bytes:
        """The hello; `hw`: our MAC, which B answers to (under the authenticator the realm checks)."""
        creds = self.client.tgt_for_peering(now)
        self._step("hello")
        msg = m.PeerHello(self.client.realm, self.client.device_id, self.responder, hw, int(now), nonce, creds.tgt)
        msg.mac = kdf.mac(kdf.derive(creds.stk, kdf.PEER_AUTHENTICATOR), msg.body())
        self._creds, self._hello = creds, msg
        self._hello_bytes = self.hello_bytes = msg.encode()  # the same bytes again on a resend
        return self._hello_bytes

    def receive_ticket(self, data: bytes, now: float) -> bytes:
        """Take B's PeerTicket (or an error frame); returns PeerFinished. The channel opens B's
        records from here on; A sends under it once confirmed (`receive_confirm`)."""
        msg = m.decode(data, (m.PeerTicket, m.ErrorMessage))
        if isinstance(msg, m.ErrorMessage):
            self.close()
            raise from_code(msg.code, f"peer {self.responder}: {msg.detail}")
        if self.state is not P.HELLO_SENT:
            raise StateError(f"peer_ticket is not allowed in state {self.state.value}")
        h = self._hello
        if (msg.realm, msg.initiator, msg.responder, msg.initiator_nonce) != (h.realm, h.initiator, h.responder, h.nonce):
            raise WrongPeerError("ticket answers another hello")
        key, not_after, _, nr = _open_part(self._creds, msg.part_initiator, h.realm, h.initiator, h.responder, h.nonce, b"I")
        if nr != msg.responder_nonce or not_after != msg.not_after:
            raise BadProofError("ticket fields differ from the sealed part")
        if now >= not_after:
            raise ExpiredError("session key already expired")
        keys = key_schedule(key, self._hello_bytes, msg.body())
        if not kdf.mac_ok(keys.finished_responder, FINISHED_R + keys.transcript, msg.finished):
            raise BadProofError("responder's finished MAC does not verify")
        self._step("peer_ticket")
        fin = m.PeerFinished(h.realm, h.initiator, h.responder, h.nonce)
        fin.finished = kdf.mac(keys.finished_initiator, FINISHED_I + keys.transcript + msg.finished)
        self.channel = Channel(self.responder, keys, True, not_after)
        self._keys, self.ticket_bytes, self.finished_bytes = keys, bytes(data), fin.encode()
        self.responder_hw = msg.responder_hw  # B's MAC, under B's finished MAC
        return self.finished_bytes

    def receive_confirm(self, data: bytes) -> None:
        """Take B's PeerConfirm: B holds the session, A may send under it."""
        msg = m.decode(data, (m.PeerConfirm,))
        if self.state is not P.CONFIRMING:
            raise StateError(f"peer_confirm is not allowed in state {self.state.value}")
        h = self._hello
        if (msg.realm, msg.initiator, msg.responder, msg.initiator_nonce) != (h.realm, h.initiator, h.responder, h.nonce):
            raise WrongPeerError("confirm answers another handshake")
        expect = CONFIRM_R + self._keys.transcript + m.decode(self.finished_bytes, (m.PeerFinished,)).finished
        if not kdf.mac_ok(self._keys.finished_responder, expect, msg.confirm):
            raise BadProofError("responder's confirm MAC does not verify")
        self._step("peer_confirm")


class PeerResponder(_Role):
    """Device B's side: takes A's hello, asks the service, answers A."""

    TABLE = RESPONDER

    def __init__(self, client: DeviceClient, skew: int = 300):
        self.client = client
        self.skew = skew
        self.state = P.START
        self.channel: Channel | None = None
        self.initiator: str | None = None

    def receive_hello(self, data: bytes, now: float) -> None:
        hello = m.decode(data, (m.PeerHello,))
        if hello.realm != self.client.realm:
            raise WrongRealmError(f"hello from realm {hello.realm!r}")
        if hello.responder != self.client.device_id or hello.initiator == self.client.device_id:
            raise WrongPeerError(f"hello names {hello.responder!r}")
        check_skew(hello.timestamp, int(now), self.skew)
        self._step("peer_hello")
        self._hello, self._hello_bytes = hello, bytes(data)
        self.initiator = hello.initiator
        self.initiator_hw = hello.initiator_hw  # A's MAC as A's authenticator covers it (the realm checks it)

    def session_request(self, server_id: str, now: float, nonce: bytes) -> bytes:
        """B's request to one server (call again with a new nonce to fail over)."""
        creds = self.client.tgt_for_peering(now)
        self._step("session_request")
        req = m.SessionRequest(self.client.realm, self.client.device_id, server_id, int(now), nonce,
                               creds.tgt, self._hello_bytes)
        req.mac = kdf.mac(kdf.derive(creds.stk, kdf.SESSION_REQUEST), req.body())
        self._creds, self._request = creds, req
        return req.encode()

    def receive_session_reply(self, data: bytes, now: float, hw: bytes = NO_HW) -> bytes:
        """Open B's part of the shared service ticket; returns the PeerTicket frame for A
        (`hw`: our MAC, which A sends to, under our finished MAC)."""
        msg = m.decode(data, (m.SessionReply, m.ErrorMessage))
        if isinstance(msg, m.ErrorMessage):
            exc = from_code(msg.code, msg.detail)
            exc.server_time = msg.server_time or None
            raise exc
        if self.state is not P.AWAITING_SERVICE or not hasattr(self, "_request"):
            raise StateError("no session request outstanding")
        h, req = self._hello, self._request
        if (msg.initiator, msg.responder, msg.initiator_nonce, msg.request_nonce) != (h.initiator, req.device_id, h.nonce, req.nonce):
            raise BadProofError("session reply answers another request")
        key, not_after, _, nr = _open_part(self._creds, msg.part_responder, h.realm, h.initiator, req.device_id, h.nonce, b"R")
        if nr != req.nonce or not_after != msg.not_after:
            raise BadProofError("session reply fields differ from the sealed part")
        self._step("session_reply")
        ticket = m.PeerTicket(h.realm, h.initiator, req.device_id, h.nonce, req.nonce, hw, not_after, msg.part_initiator)
        self._keys = key_schedule(key, self._hello_bytes, ticket.body())
        ticket.finished = kdf.mac(self._keys.finished_responder, FINISHED_R + self._keys.transcript)
        self._ticket, self._not_after = ticket, not_after
        self.ticket_bytes = ticket.encode()
        return self.ticket_bytes

    def receive_finished(self, data: bytes, now: float) -> Channel:
        """Take A's PeerFinished: B is established (and sends under the channel); the confirm
        for A is `confirm_bytes`."""
        msg = m.decode(data, (m.PeerFinished,))
        if self.state is not P.TICKET_SENT:
            raise StateError(f"peer_finished is not allowed in state {self.state.value}")
        t = self._ticket
        if (msg.realm, msg.initiator, msg.responder, msg.initiator_nonce) != (t.realm, t.initiator, t.responder, t.initiator_nonce):
            raise WrongPeerError("finished answers another handshake")
        if not kdf.mac_ok(self._keys.finished_initiator, FINISHED_I + self._keys.transcript + t.finished, msg.finished):
            raise BadProofError("initiator's finished MAC does not verify")
        self._step("peer_finished")
        self.channel = Channel(t.initiator, self._keys, False, self._not_after)
        confirm = m.PeerConfirm(t.realm, t.initiator, t.responder, t.initiator_nonce)
        confirm.confirm = kdf.mac(self._keys.finished_responder, CONFIRM_R + self._keys.transcript + msg.finished)
        self.finished_bytes, self.confirm_bytes = bytes(data), confirm.encode()
        return self.channel
