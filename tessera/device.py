"""The device side: registration, TGT and renewal, as a state machine with a transitions table.

`DeviceClient` builds requests and takes replies; it never sends anything. The agent (or a test)
moves the bytes. Each request is addressed to one server (its id is under the proof); on
failover the caller builds a fresh request for the next server.

    state           input                   next state
    ENROLLED        register_request        REGISTERING
    REGISTERING     register_reply          REGISTERED
    REGISTERED      auth_request            AUTHENTICATING
    AUTHENTICATING  ticket_reply            AUTHENTICATED
    AUTHENTICATED   renew_request           RENEWING
    RENEWING        ticket_reply            AUTHENTICATED
    A new request while one is outstanding abandons the old one (its reply is then refused); a
    failed reply or `abandon()` (a timeout) returns to the state before the request.

Beside the table, `revocation_request` / `revocation_reply` ask a server which devices were
revoked lately (docs/layouts.md#revocationlist): one query outstanding at a time (a new one
abandons the old), answered by a list the service key signed over this query's nonce. They
neither need nor change any state above, nor the tickets.

`next_action(now)` tells the agent what is due: register when there is no DRT or it is within
`refresh` of its end, authenticate when there is no TGT or it is close to its end, or when it
starts more than the realm's usual skew after `now`: a server whose clock ran ahead issued it,
and the realm's other servers refuse it as not yet valid (a server beyond the skew answers a
clock-skew first, so this cannot repeat without a signed answer in between).

Errors from the realm (docs/layouts.md#signederror): an error the device acts on (clock-skew,
revoked, unknown-device, superseded, not-registered: `TesseraError.changes_state`) counts only
as a `SignedError` that the realm's service key signed over this request's realm, device id,
server id and nonce; it is raised with `signed = True` (and the server's time). The same code
in an unsigned `ErrorMessage`, or a signed one that answers another request or does not verify,
is a `BadProofError`: a transient failure that changes nothing. Anyone holding the RADIUS secret
can write the former; only the realm can write the latter.

Request builders take any `now` and raise only the project's errors: a time that is not a whole
number of seconds in 0..2^64-1 is a `MalformedError`, before any state changes.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from . import kdf, message as m
from .errors import (BadProofError, ExpiredError, MalformedError, StateError, TesseraError, WrongServerError,
                     from_code)
from .identity import BootstrapBundle, DeviceKey, verify
from .seal import Sealer, open_with_private_key, point_from_bytes
from .service import (ERROR_CONTEXT, REGISTER_CONTEXT, REGISTER_REPLY_CONTEXT, REVOCATIONS_CONTEXT, Policy,
                      drt_device_aad, eap_pwd_password, tgt_device_aad)
from .wire import Reader, Writer


class State(enum.Enum):
    ENROLLED = "enrolled"
    REGISTERING = "registering"
    REGISTERED = "registered"
    AUTHENTICATING = "authenticating"
    AUTHENTICATED = "authenticated"
    RENEWING = "renewing"


S = State
TRANSITIONS: dict[tuple[State, str], State] = {
    (S.ENROLLED, "register_request"): S.REGISTERING,
    (S.REGISTERING, "register_request"): S.REGISTERING,
    (S.REGISTERED, "register_request"): S.REGISTERING,
    (S.AUTHENTICATED, "register_request"): S.REGISTERING,
    (S.AUTHENTICATING, "register_request"): S.REGISTERING,
    (S.RENEWING, "register_request"): S.REGISTERING,
    (S.REGISTERING, "register_reply"): S.REGISTERED,
    (S.REGISTERED, "auth_request"): S.AUTHENTICATING,
    (S.REGISTERING, "auth_request"): S.AUTHENTICATING,  # a re-registration abandoned; the old DRT still holds
    (S.AUTHENTICATING, "auth_request"): S.AUTHENTICATING,
    (S.AUTHENTICATED, "auth_request"): S.AUTHENTICATING,
    (S.RENEWING, "auth_request"): S.AUTHENTICATING,
    (S.AUTHENTICATING, "ticket_reply"): S.AUTHENTICATED,
    (S.AUTHENTICATED, "renew_request"): S.RENEWING,
    (S.RENEWING, "renew_request"): S.RENEWING,
    (S.AUTHENTICATING, "renew_request"): S.RENEWING,
    (S.RENEWING, "ticket_reply"): S.AUTHENTICATED,
}


@dataclass
class Registration:
    """What the device holds after registration: the LLK and the DRT's service part."""

    llk: bytes
    drt: bytes
    generation: int
    not_before: int
    not_after: int

    def __repr__(self) -> str:
        return f"Registration(gen={self.generation}, {self.not_before}..{self.not_after})"


@dataclass
class Credentials:
    """A TGT (service part) and its STK."""

    tgt: bytes
    stk: bytes
    not_before: int
    not_after: int

    def __repr__(self) -> str:
        return f"Credentials({self.not_before}..{self.not_after})"


class DeviceClient:
    def __init__(self, bundle: BootstrapBundle, key: DeviceKey, refresh: float = 0.25):
        self.realm = bundle.realm
        self.device_id = bundle.device_id
        self.service_key = point_from_bytes(bundle.service_public_key)
        self.key = key
        self.refresh = refresh  # act when this fraction of a ticket's life is left
        self.state = State.ENROLLED
        self.registration: Registration | None = None
        self.credentials: Credentials | None = None
        self._pending: tuple[str, m.Message, State] | None = None
        self._revocation_query: m.RevocationQuery | None = None  # outstanding, apart from the table

    def _step(self, event: str) -> None:
        try:
            new = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise StateError(f"{event} is not allowed in state {self.state.value}") from None
        self.state = new

    def _allowed(self, event: str) -> None:
        if (self.state, event) not in TRANSITIONS:
            raise StateError(f"{event} is not allowed in state {self.state.value}")

    def _begin(self, kind: str, event: str, req: m.Message) -> None:
        """Take the transition for a new request, built in full before (so a request that cannot
        be built changes nothing); the fallback on failure is the state before the first of a
        run of retries (a retry keeps the fallback of the request it replaces)."""
        fallback = self._pending[2] if self._pending is not None else self.state
        self._step(event)
        self._pending = (kind, req, fallback)

    def abandon(self) -> None:
        """Give up the outstanding request (no server answered)."""
        self._fail()

    def _expect(self, kind: str) -> m.Message:
        if self._pending is None or self._pending[0] != kind:
            raise StateError(f"no {kind} outstanding")
        return self._pending[1]

    def _fail(self) -> None:
        if self._pending is not None:
            self.state = self._pending[2]
            self._pending = None

    def _reply(self, data: bytes, cls: type[m.Message], req: m.Message) -> m.Message:
        """The reply of type `cls` to `req`, or raise the realm's error (see the module's doc)."""
        msg = m.decode(data, (cls, m.SignedError, m.ErrorMessage))
        if isinstance(msg, m.SignedError):
            raise self._signed_error(msg, req)
        if isinstance(msg, m.ErrorMessage):
            exc = from_code(msg.code, msg.detail)
            if exc.changes_state:
                raise BadProofError(f"an unsigned {exc.name} error is not acted on ({exc.detail})")
            raise exc  # an error no device acts on: passed on as it came, for the log and the back-off
        return msg

    def _signed_error(self, msg: m.SignedError, req: m.Message) -> TesseraError:
        if (msg.realm, msg.device_id, msg.server_id, msg.request_nonce) != (self.realm, self.device_id,
                                                                            req.server_id, req.nonce):
            return BadProofError("a signed error that answers another request is not acted on")
        if not verify(self.service_key, msg.signature, ERROR_CONTEXT + msg.body()):
            return BadProofError("an error not signed by the realm's service key is not acted on")
        exc = from_code(msg.code, msg.detail)
        exc.signed, exc.server_time = True, msg.server_time
        return exc

    # -- registration --------------------------------------------------------------------
    def register_request(self, server_id: str, now: float, nonce: bytes) -> bytes:
        self._allowed("register_request")
        req = m.RegisterRequest(self.realm, self.device_id, server_id, seconds(now), nonce)
        req.signature = self.key.sign(REGISTER_CONTEXT + req.body())
        data = req.encode()
        self._begin("register", "register_request", req)
        return data

    def register_reply(self, data: bytes, now: float) -> Registration:
        req = self._expect("register")
        try:
            rep = self._reply(data, m.RegisterReply, req)
            if rep.request_nonce != req.nonce or rep.device_id != self.device_id or rep.realm != self.realm:
                raise BadProofError("registration reply does not answer this request")
            if not verify(self.service_key, rep.signature, REGISTER_REPLY_CONTEXT + rep.body()):
                raise BadProofError("registration reply is not signed by the realm's service key")
            r = Reader(open_with_private_key(self.key.private_key, rep.device_part,
                                             drt_device_aad(self.realm, self.device_id, req.nonce)))
            reg = Registration(r.pull_bytes(32), rep.drt, r.pull_u32(), r.pull_u64(), r.pull_u64())
            r.finish()
        except Exception:
            self._fail()
            raise
        self._step("register_reply")
        self._pending = None
        self.registration, self.credentials = reg, None
        return reg

    # -- TGT -----------------------------------------------------------------------------
    def auth_request(self, server_id: str, now: float, nonce: bytes) -> bytes:
        if self.registration is None:
            raise StateError("no registration to authenticate with")
        self._allowed("auth_request")
        req = m.AuthRequest(self.realm, self.device_id, server_id, seconds(now), nonce, self.registration.drt)
        req.mac = kdf.mac(kdf.derive(self.registration.llk, kdf.AUTH_PROOF), req.body())
        data = req.encode()
        self._begin("ticket", "auth_request", req)
        return data

    def renew_request(self, server_id: str, now: float, nonce: bytes) -> bytes:
        if self.credentials is None:
            raise StateError("no TGT to renew")
        self._allowed("renew_request")
        req = m.RenewRequest(self.realm, self.device_id, server_id, seconds(now), nonce, self.credentials.tgt)
        req.mac = kdf.mac(kdf.derive(self.credentials.stk, kdf.RENEW_PROOF), req.body())
        data = req.encode()
        self._begin("ticket", "renew_request", req)
        return data

    def ticket_reply(self, data: bytes, now: float) -> Credentials:
        req = self._expect("ticket")
        try:
            rep = self._reply(data, m.TicketReply, req)
            if rep.request_nonce != req.nonce or rep.device_id != self.device_id or rep.realm != self.realm:
                raise BadProofError("ticket reply does not answer this request")
            if isinstance(req, m.AuthRequest):
                key = kdf.derive(self.registration.llk, kdf.TGT_DEVICE_PART)
            else:
                key = kdf.derive(self.credentials.stk, kdf.RENEW_DEVICE_PART)
            r = Reader(Sealer(key).open(rep.device_part, tgt_device_aad(self.realm, self.device_id, req.nonce, rep.tgt)))
            creds = Credentials(rep.tgt, r.pull_bytes(32), r.pull_u64(), r.pull_u64())
            r.finish()
        except Exception:
            self._fail()
            raise
        self._step("ticket_reply")
        self._pending = None
        self.credentials = creds
        return creds

    # -- revocations -----------------------------------------------------------------------
    def revocation_request(self, server_id: str, now: float, nonce: bytes) -> bytes:
        """A RevocationQuery to `server_id`, in any state (it carries no proof: the answer is
        public within the realm); it replaces a query still outstanding."""
        req = m.RevocationQuery(self.realm, self.device_id, server_id, seconds(now), nonce)
        data = req.encode()
        self._revocation_query = req
        return data

    def revocation_reply(self, data: bytes, now: float) -> m.RevocationList:
        """The signed RevocationList answering the outstanding query, or the project's error.

        Taken only if the service key's signature over `"tessera v1 revocations\x00"` ‖ body
        verifies and realm, device id and nonce are this query's (else `BadProofError`) and the
        server id is the one it was addressed to (else `WrongServerError`); errors as for the
        other replies (an unsigned state-changing code is a `BadProofError`). The query is
        answered either way: a second reply to it is a `StateError`. `now` is not compared
        with `issued_at`: the nonce makes the list fresh, whatever this device's clock says."""
        req = self._revocation_query
        if req is None:
            raise StateError("no revocation query outstanding")
        self._revocation_query = None
        rep = self._reply(data, m.RevocationList, req)
        if rep.server_id != req.server_id:
            raise WrongServerError(f"revocation list from {rep.server_id!r}, the query went to {req.server_id!r}")
        if (rep.realm, rep.device_id, rep.request_nonce) != (self.realm, self.device_id, req.nonce):
            raise BadProofError("revocation list does not answer this query")
        if not verify(self.service_key, rep.signature, REVOCATIONS_CONTEXT + rep.body()):
            raise BadProofError("revocation list is not signed by the realm's service key")
        return rep

    # -- what is due ---------------------------------------------------------------------
    def next_action(self, now: float) -> str | None:
        """'register', 'authenticate', 'renew' or None, by the tickets' remaining life."""
        reg = self.registration
        if reg is None or now >= reg.not_after - self.refresh * (reg.not_after - reg.not_before):
            return "register"
        c = self.credentials
        if c is None or now >= c.not_after or now < c.not_before - Policy.clock_skew:
            return "authenticate"
        if now >= c.not_after - self.refresh * (c.not_after - c.not_before):
            return "renew" if c.not_after < reg.not_after else "authenticate"
        return None

    def tgt_for_peering(self, now: float) -> Credentials:
        """The TGT for a peer hello or session request at `now` (which must be a time the
        messages can carry: the peer roles build with it)."""
        seconds(now)
        if self.credentials is None or now >= self.credentials.not_after:
            raise ExpiredError("no valid TGT")
        return self.credentials

    def eap_pwd_password(self) -> str:
        """The EAP-PWD password for port admission once registered (same derivation as the service)."""
        if self.registration is None:
            raise StateError("not registered")
        return eap_pwd_password(self.registration.llk, self.device_id)

    # -- state at rest ---------------------------------------------------------------------
    def export_state(self, nonce: bytes) -> bytes:
        """LLK, DRT, STK, TGT sealed under a key derived from the device's private key."""
        w = Writer().push_u8(1)
        for part in (self.registration, self.credentials):
            w.push_u8(part is not None)
        if self.registration:
            g = self.registration
            w.push_bytes(g.llk).push_vbytes(g.drt, 1024).push_u32(g.generation).push_u64(g.not_before).push_u64(g.not_after)
        if self.credentials:
            c = self.credentials
            w.push_bytes(c.stk).push_vbytes(c.tgt, 1024).push_u64(c.not_before).push_u64(c.not_after)
        return Sealer(self._state_key()).seal(nonce, w.getvalue(), self.device_id.encode())

    def import_state(self, sealed: bytes) -> None:
        r = Reader(Sealer(self._state_key()).open(sealed, self.device_id.encode()))
        if r.pull_u8() != 1:
            raise StateError("unknown state format")
        has_reg, has_creds = r.pull_u8(), r.pull_u8()
        reg = creds = None
        if has_reg:
            llk, drt = r.pull_bytes(32), r.pull_vbytes(1024)
            reg = Registration(llk, drt, r.pull_u32(), r.pull_u64(), r.pull_u64())
        if has_creds:
            stk, tgt = r.pull_bytes(32), r.pull_vbytes(1024)
            creds = Credentials(tgt, stk, r.pull_u64(), r.pull_u64())
        r.finish()
        self.registration, self.credentials = reg, creds
        self.state = State.AUTHENTICATED if creds else State.REGISTERED if reg else State.ENROLLED

    def _state_key(self) -> bytes:
        scalar = self.key.private_key.private_numbers().private_value.to_bytes(32, "big")
        return kdf.derive(scalar, b"device state at rest", self.device_id.encode())


MAX_TIME = 2**64 - 1  # times are u64 seconds (docs/layouts.md#encodings)


def seconds(now: float) -> int:
    """`now` as the whole seconds a message carries; MalformedError if it is not a finite time
    in 0..2^64-1 (a device clock gone wild, or an offset that would put it there)."""
    try:
        finite = math.isfinite(now)
    except TypeError:
        finite = False
    if not finite or not 0 <= now <= MAX_TIME:
        raise MalformedError("the time is not a number of seconds a message can carry (0..2^64-1)")
    return int(now)
