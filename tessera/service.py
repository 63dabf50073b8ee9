"""The realm service: registration, authentication → TGT, renewal, peer session keys and the
signed list of recent revocations.

Sans-I/O: `Service.process(request_bytes, now)` decides everything and returns the reply bytes
(or raises a `TesseraError` naming the reason); the FreeRADIUS module only moves bytes in and
out of attributes. Time, randomness (`random(n) -> bytes`), the registry and the key ring are
passed in. The service keeps no per-device secret: the LLK travels inside the DRT's service
part and the STK inside the TGT's, both sealed under the service key, so any server of the realm
can answer any request. Its only state is the replay cache of proofs addressed to it (and the
revocation list it read from the registry this second).

Checks run cheapest-first and proofs before anything is written: parse → realm → server id →
open ticket (registration: the enrolled key) → verify proof → clock skew → validity → registry
state → replay cache → issue. The proof comes before the clock and the registry so that a
request nobody proved learns nothing about a device's state (only, for a registration, whether
its id is enrolled: the enrolled key is what checks the proof), and so that an error a device
acts on (`TesseraError.changes_state`) is signed only for a real device: `error_reply` signs it
over the request's nonce (a `SignedError`) only when the request's proof verified, so a
signature (~24 µs) is spent only on a request a real device made: a replayed one costs about a
normal exchange, less than a forged registration does (docs/layouts.md#signederror).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import kdf, message as m
from .errors import (BadProofError, CertificateError, InvalidTicket, MalformedError, NotRegisteredError,
                     RevokedError, StateError, SupersededError, TesseraError, UnknownDeviceError,
                     WrongPeerError, WrongRealmError, WrongServerError)
from .errors import WrongIdentityError
from .errors import ReplayError
from .audit import AuditAggregator
from .identity import DeviceKey, check_device_id, verify
from .registry import AuditEvent, DeviceRecord, DeviceState, Registry
from .registry import Registered, StaleRequestError, check_freshness
from .replay import DEFAULT_PER_DEVICE, DEFAULT_PER_PAIR, ReplayCache, check_skew
from .seal import Sealer, point_from_bytes, seal_to_public_key
from .servicekey import KeyRing
from .ticket import GrantingTicket, RegistrationTicket, check_validity, open_ticket, seal_ticket
from .wire import Writer

REGISTER_CONTEXT = b"tessera v1 register\x00"
REGISTER_REPLY_CONTEXT = b"tessera v1 register reply\x00"
ERROR_CONTEXT = b"tessera v1 error\x00"  # SignedError: docs/layouts.md#signederror
REVOCATIONS_CONTEXT = b"tessera v1 revocations\x00"  # RevocationList: docs/layouts.md#revocationlist
#: the largest RevocationList: what one RADIUS reply carries (tessera.radius.attrs.MAX_MESSAGE,
#: 15 attribute instances); with long device ids fewer than MAX_REVOKED entries fit
MAX_REVOCATION_LIST = 3705


@dataclass(frozen=True)
class Policy:
    """Lifetimes in seconds (claims 12, 26: each ticket carries its validity)."""

    registration_lifetime: int = 30 * 86400  # DRT / LLK
    tgt_lifetime: int = 8 * 3600  # TGT / STK
    session_lifetime: int = 3600  # peer session key, capped by both TGTs
    clock_skew: int = 300  # as Kerberos' default
    replay_quota: int = DEFAULT_PER_DEVICE  # live proofs one device may hold in a server's replay cache
    replay_pair_quota: int = DEFAULT_PER_PAIR  # of those, what one peer-session pair may spend

    @property
    def longest_lifetime(self) -> int:
        return max(self.registration_lifetime, self.tgt_lifetime, self.session_lifetime) + self.clock_skew


@dataclass(frozen=True)
class Outcome:
    """What the service did, for the adapter's log line (never key material)."""

    operation: str
    device_id: str
    reply: bytes
    detail: str = ""


def drt_device_aad(realm: str, device_id: str, nonce: bytes) -> bytes:
    return Writer().push_bytes(b"drt device part\x00").push_str(realm).push_str(device_id).push_bytes(nonce).getvalue()


def tgt_device_aad(realm: str, device_id: str, nonce: bytes, tgt: bytes) -> bytes:
    return (Writer().push_bytes(b"tgt device part\x00").push_str(realm).push_str(device_id)
            .push_bytes(nonce).push_vbytes(tgt, 1024).getvalue())


def session_part_aad(realm: str, initiator: str, responder: str, initiator_nonce: bytes, role: bytes) -> bytes:
    return session_part_aads(realm, initiator, responder, initiator_nonce, role)[0]


def session_part_aads(realm: str, initiator: str, responder: str, initiator_nonce: bytes,
                      *roles: bytes) -> list[bytes]:
    """``session_part_aad`` for each role, the part after the role byte encoded once."""
    tail = Writer().push_str(realm).push_str(initiator).push_str(responder).push_bytes(initiator_nonce).getvalue()
    return [b"session part\x00" + role + tail for role in roles]


def session_part_body(key: bytes, not_after: int, initiator: str, responder: str, ni: bytes, nr: bytes) -> bytes:
    return (Writer().push_bytes(key).push_u64(not_after).push_str(initiator).push_str(responder)
            .push_bytes(ni).push_bytes(nr).getvalue())


class Service:
    """One server of a realm."""

    def __init__(self, realm: str, server_id: str, keyring: KeyRing, registry: Registry,
                 signing_key: DeviceKey, random: Callable[[int], bytes], policy: Policy = Policy()):
        self.realm = realm
        self.server_id = server_id
        self.keyring = keyring
        self.registry = registry
        self.signing_key = signing_key
        self.random = random
        self.policy = policy
        self.rejections = AuditAggregator(server_id)  # refused registrations: bounded audit rows (tessera.audit)
        self.replay = ReplayCache(policy.clock_skew, per_device=policy.replay_quota, per_pair=policy.replay_pair_quota)
        self._revocations: tuple[int, int, tuple] | None = None  # (second computed, complete_since, entries)
        self._handlers = {
            m.RegisterRequest: self._register,
            m.AuthRequest: self._authenticate,
            m.RenewRequest: self._renew,
            m.SessionRequest: self._session,
            m.RevocationQuery: self._revocation_query,
        }
        self._requests = tuple(self._handlers)

    # -- the entry points ----------------------------------------------------------------
    def handle(self, request: bytes, now: float) -> bytes:
        """Reply bytes for a request, or raise TesseraError with the reason."""
        return self.process(request, now).reply

    def handle_as(self, request: bytes, sender: str, now: float) -> bytes:
        """``handle`` for a request whose transport authenticated its sender (RadSec: the
        device certificate of the TLS connection, bound to its enrolled device by
        ``admit_certificate``, see tessera/vetting.py). A message naming another device is
        refused before anything else about it is checked or remembered: a device cannot speak
        for another (nor spend its replay-cache quota)."""
        return self.process(request, now, sender).reply

    def process(self, request: bytes, now: float, sender: str | None = None) -> Outcome:
        """``sender``: the device the transport authenticated, if it did (see ``handle_as``)."""
        msg = m.decode(request, self._requests)
        check_clock = getattr(self.registry, "check_clock", None)  # tessera.pg_cache: this host's clock
        if check_clock is not None:  # against the registry database's; ServerClockError when off
            check_clock()
        if sender is not None and msg.device_id != sender:
            raise WrongIdentityError(f"the connection is {sender[:64]!r}'s, the message is from {msg.device_id!r}")
        if msg.realm != self.realm:
            raise WrongRealmError(f"realm {msg.realm!r}, this is {self.realm!r}")
        if msg.server_id != self.server_id:
            raise WrongServerError(f"addressed to {msg.server_id!r}, this is {self.server_id!r}")
        return self._handlers[type(msg)](msg, int(now))  # each handler checks the clock after the proof

    def error_reply(self, exc: TesseraError, now: float) -> bytes:
        """The reply for a rejection (carried in Tessera-Reply beside Reply-Message).

        An error a device acts on (`exc.changes_state`: clock-skew, revoked, unknown-device,
        superseded, not-registered) that refuses a request whose proof verified
        (`exc.proven_request`, set by the handlers) is a `SignedError`: signed by the service key
        over the request's realm, device id, server id and nonce, so it answers that request and
        no other. Every other error is an unsigned `ErrorMessage`, which a device never changes
        state on (docs/layouts.md#signederror, #errormessage)."""
        req = exc.proven_request
        if exc.changes_state and req is not None:
            reply = m.SignedError(self.realm, req.device_id, req.server_id, req.nonce, exc.code,
                                  exc.server_time or int(now), str(exc))
            reply.signature = self.signing_key.sign(ERROR_CONTEXT + reply.body())
            return reply.encode()
        return m.ErrorMessage(exc.code, exc.server_time or 0, str(exc)).encode()

    # -- registration (claims 5-7, 11-15) --------------------------------------------------
    def _register(self, req: m.RegisterRequest, now: int) -> Outcome:
        self.flush_audit(now)
        rec = self._enrolled(req.device_id)  # the enrolled key checks the proof: revoked or not
        device_key = point_from_bytes(rec.public_key)  # decoded once: it checks the proof and seals the LLK
        if not verify(device_key, req.signature, REGISTER_CONTEXT + req.body()):
            self._registration_refused(req.device_id, "bad signature", now)
            raise BadProofError("registration signature does not verify with the enrolled key")
        with self._proven(req):  # the device proved itself: what follows may be signed
            check_skew(req.timestamp, now, self.policy.clock_skew)
            self._not_revoked(rec)
        # freshness that survives restarts and holds at every server: the registry row keeps the
        # last accepted request's time and that second's nonces (registry.check_freshness). This
        # read saves the work; the compare-and-set below decides (another server may accept a
        # newer request in between)
        try:
            check_freshness(rec.register_request_time, rec.register_request_nonces, req.timestamp, req.nonce)
        except StaleRequestError as exc:
            self._registration_refused(req.device_id, "replay", now)
            raise ReplayError(str(exc)) from None
        self.replay.add(req.device_id, b"R" + _key(req.device_id, req.nonce), req.timestamp, now)
        generation = rec.generation + 1
        not_after = now + self.policy.registration_lifetime
        llk = self.random(32)
        drt = seal_ticket(self.keyring, RegistrationTicket(req.device_id, generation, now, not_after, llk),
                          now, self.random(12))
        device_part = seal_to_public_key(
            device_key,
            Writer().push_bytes(llk).push_u32(generation).push_u64(now).push_u64(not_after).getvalue(),
            drt_device_aad(self.realm, req.device_id, req.nonce), self.random(32))
        reply = m.RegisterReply(self.realm, req.device_id, req.nonce, drt, device_part)
        reply.signature = self.signing_key.sign(REGISTER_REPLY_CONTEXT + reply.body())
        event = AuditEvent(now, "registered", req.device_id, f"generation {generation}, until {not_after}", self.server_id)
        done = self.registry.record_registration(req.device_id, rec.generation, generation, not_after, drt, now, event,
                                                 request_time=req.timestamp, request_nonce=req.nonce)
        if done is Registered.REPLAYED:
            self._registration_refused(req.device_id, "replay", now)
            raise ReplayError("registration request not fresh: another server accepted it, or a newer one, meanwhile")
        if done is not Registered.RECORDED:
            raise StateError("the device's registration changed meanwhile; retry")
        return Outcome("register", req.device_id, reply.encode(), f"generation {generation}")

    def _registration_refused(self, device_id: str, reason: str, now: int) -> None:
        """Audit a refused registration: at most one row per device and reason a minute, with a
        count, so a flood of forged or replayed requests cannot grow the registry (tessera.audit)."""
        for event in self.rejections.note(device_id, "register-rejected", reason, now):
            self.registry.add_audit(event)

    def flush_audit(self, now: float) -> None:
        """Write the counts of refused registrations whose minute has passed (each registration
        does this; an adapter may also call it, e.g. before shutting down, with a later `now`)."""
        for event in self.rejections.due(int(now)):
            self.registry.add_audit(event)

    # -- authentication → TGT (claims 1, 2, 16) ---------------------------------------------
    def _authenticate(self, req: m.AuthRequest, now: int) -> Outcome:
        drt = open_ticket(self.keyring, req.drt, RegistrationTicket, now)
        if drt.device_id != req.device_id:
            raise InvalidTicket("registration ticket belongs to another device")
        proof_key, part_key = kdf.derive_keys(drt.llk, kdf.AUTH_PROOF, kdf.TGT_DEVICE_PART)
        if not kdf.mac_ok(proof_key, req.body(), req.mac):
            raise BadProofError("proof of the LLK does not verify")
        with self._proven(req):
            check_skew(req.timestamp, now, self.policy.clock_skew)
            check_validity(drt.not_before, drt.not_after, now, self.policy.clock_skew, "registration ticket")
            self._check_current(drt.device_id, drt.generation)
        self.replay.add(req.device_id, b"A" + _key(req.device_id, req.nonce), req.timestamp, now)
        not_after = min(now + self.policy.tgt_lifetime, drt.not_after)
        tgt, device_part = self._issue_tgt(drt.device_id, drt.generation, now, not_after, drt.not_after,
                                           Sealer(part_key), req.nonce)
        reply = m.TicketReply(self.realm, req.device_id, req.nonce, tgt, device_part)
        return Outcome("authenticate", req.device_id, reply.encode(), f"TGT until {not_after}")

    def _renew(self, req: m.RenewRequest, now: int) -> Outcome:
        old = open_ticket(self.keyring, req.tgt, GrantingTicket, now)
        if old.device_id != req.device_id:
            raise InvalidTicket("TGT belongs to another device")
        proof_key, part_key = kdf.derive_keys(old.stk, kdf.RENEW_PROOF, kdf.RENEW_DEVICE_PART)
        if not kdf.mac_ok(proof_key, req.body(), req.mac):
            raise BadProofError("proof of the STK does not verify")
        with self._proven(req):
            check_skew(req.timestamp, now, self.policy.clock_skew)
            check_validity(old.not_before, old.not_after, now, self.policy.clock_skew, "TGT")
            self._check_current(old.device_id, old.generation)
        self.replay.add(req.device_id, b"N" + _key(req.device_id, req.nonce), req.timestamp, now)
        not_after = min(now + self.policy.tgt_lifetime, old.registration_not_after)
        tgt, device_part = self._issue_tgt(old.device_id, old.generation, now, not_after, old.registration_not_after,
                                           Sealer(part_key), req.nonce)
        reply = m.TicketReply(self.realm, req.device_id, req.nonce, tgt, device_part)
        return Outcome("renew", req.device_id, reply.encode(), f"TGT until {not_after}")

    def _issue_tgt(self, device_id, generation, now, not_after, reg_not_after, sealer, nonce):
        stk = self.random(32)
        tgt = seal_ticket(self.keyring, GrantingTicket(device_id, generation, now, not_after, reg_not_after, stk),
                          now, self.random(12))
        body = Writer().push_bytes(stk).push_u64(now).push_u64(not_after).getvalue()
        part = sealer.seal(self.random(12), body, tgt_device_aad(self.realm, device_id, nonce, tgt))
        return tgt, part

    # -- peer session key (claims 1, 3, 17, 27, 28) -----------------------------------------
    def _session(self, req: m.SessionRequest, now: int) -> Outcome:
        tgt_b = self._open_tgt(req.tgt, req.device_id, now)
        proof_b, part_b = kdf.derive_keys(tgt_b.stk, kdf.SESSION_REQUEST, kdf.SESSION_PART)
        if not kdf.mac_ok(proof_b, req.body(), req.mac):
            raise BadProofError("responder's proof of its STK does not verify")
        check_skew(req.timestamp, now, self.policy.clock_skew)
        self._valid_tgt(tgt_b, now)
        hello = m.decode(req.hello, (m.PeerHello,))
        if hello.realm != self.realm:
            raise WrongRealmError(f"initiator's realm {hello.realm!r}")
        if hello.responder != req.device_id:
            raise WrongPeerError(f"initiator's authenticator names {hello.responder!r}, not {req.device_id!r}")
        if hello.initiator == req.device_id:
            raise WrongPeerError("a device cannot open a session with itself")
        tgt_a = self._open_tgt(hello.tgt, hello.initiator, now)
        proof_a, part_a = kdf.derive_keys(tgt_a.stk, kdf.PEER_AUTHENTICATOR, kdf.SESSION_PART)
        if not kdf.mac_ok(proof_a, hello.body(), hello.mac):
            raise BadProofError("initiator's authenticator does not verify")
        check_skew(hello.timestamp, now, self.policy.clock_skew)
        self._valid_tgt(tgt_a, now)
        self._check_current(tgt_b.device_id, tgt_b.generation)
        self._check_current(tgt_a.device_id, tgt_a.generation)
        # both proofs are charged to the initiator, whose fresh hello every session request needs:
        # a neighbour flooding B with hellos spends its own quota, never B's; all or none is kept.
        # A responder provoking A's hellos spends at most the pair's share of A's quota.
        self.replay.add_all(hello.initiator, ((b"S" + _key(req.device_id, req.nonce), req.timestamp),
                                              (b"H" + _key(hello.initiator, hello.nonce), hello.timestamp)), now,
                            pair=f"{hello.initiator}\x00{req.device_id}")
        not_after = min(tgt_a.not_after, tgt_b.not_after, now + self.policy.session_lifetime)
        key = self.random(32)
        body = session_part_body(key, not_after, hello.initiator, req.device_id, hello.nonce, req.nonce)
        aad_r, aad_i = session_part_aads(self.realm, hello.initiator, req.device_id, hello.nonce, b"R", b"I")
        part_r = Sealer(part_b).seal(self.random(12), body, aad_r)
        part_i = Sealer(part_a).seal(self.random(12), body, aad_i)
        reply = m.SessionReply(self.realm, hello.initiator, req.device_id, hello.nonce, req.nonce, not_after,
                               part_r, part_i)
        return Outcome("session", req.device_id, reply.encode(), f"with {hello.initiator} until {not_after}")

    def _open_tgt(self, blob: bytes, device_id: str, now: int) -> GrantingTicket:
        """Open a TGT for its STK; its validity is checked after the proof made with that STK."""
        tgt = open_ticket(self.keyring, blob, GrantingTicket, now)
        if tgt.device_id != device_id:
            raise InvalidTicket("TGT belongs to another device")
        return tgt

    def _valid_tgt(self, tgt: GrantingTicket, now: int) -> None:
        check_validity(tgt.not_before, tgt.not_after, now, self.policy.clock_skew, f"TGT of {tgt.device_id}")

    # -- the revocation list (docs/layouts.md#revocationlist) -------------------------------
    def _revocation_query(self, req: m.RevocationQuery, now: int) -> Outcome:
        """Answer with the revocations since the horizon, signed over the query's nonce.

        The query carries no proof and changes nothing: no replay-cache entry, no registry
        write, no audit row. Its timestamp is not checked against the clock skew: a device
        whose clock is wrong must still learn whom to stop talking to (the nonce, not the time,
        makes the answer fresh). The list itself is computed once a second (`revocation_list`);
        each answer costs one ECDSA signature, over the nonce it answers."""
        complete_since, revoked = self.revocation_list(now)
        reply = m.RevocationList(self.realm, req.device_id, req.server_id, req.nonce, now, complete_since, revoked)
        body = reply.body()
        reply.signature = self.signing_key.sign(REVOCATIONS_CONTEXT + body)
        # the signature is the last field: the reply is the signed body and it, encoded once
        return Outcome("revocations", req.device_id, body + reply.signature, f"{len(revoked)} listed")

    def revocation_list(self, now: float) -> tuple[int, tuple[tuple[str, int], ...]]:
        """(complete_since, ((device id, revoked at), ...) newest first): every revocation at or
        after complete_since that the registry held when the list was read is in it.

        The horizon is now - (session lifetime + clock skew): a peer session lasts at most the
        session lifetime, so a device revoked before that has no live session left to end. At
        most MAX_REVOKED entries, and no more than fit MAX_REVOCATION_LIST bytes with any
        device id in the reply; when more were revoked, complete_since rises to one second
        past the newest left out, and listed entries older than that are dropped (they share
        its second), so the statement above stays true. Read from the registry at most once a
        second (one indexed query per second per server, whatever the query rate): a
        revocation made later in the second the list was read appears from the next second."""
        second = int(now)
        if self._revocations is None or self._revocations[0] != second:
            horizon = max(second - (self.policy.session_lifetime + self.policy.clock_skew), 0)
            rows = self.registry.revoked_since(horizon, m.MAX_REVOKED + 1)
            self._revocations = (second, *_complete_list(rows, horizon, self._revocation_budget()))
        return self._revocations[1], self._revocations[2]

    def _revocation_budget(self) -> int:
        """Bytes left for the entries in a RevocationList to any device id of this realm."""
        empty = m.RevocationList(self.realm, "x" * 64, self.server_id, bytes(m.NONCE_LEN), 0, 0, ())
        return MAX_REVOCATION_LIST - len(empty.encode())

    # -- registry checks -------------------------------------------------------------------
    def _device(self, device_id: str) -> DeviceRecord:
        rec = self._not_revoked(self._enrolled(device_id))
        if rec.state is not DeviceState.REGISTERED:
            raise NotRegisteredError(f"device {device_id} is not registered")
        return rec

    def _enrolled(self, device_id: str) -> DeviceRecord:
        rec = self.registry.get_device(device_id)
        if rec is None:
            raise UnknownDeviceError(f"device {device_id} is not enrolled in {self.realm}")
        return rec

    def _not_revoked(self, rec: DeviceRecord) -> DeviceRecord:
        if rec.state is DeviceState.REVOKED:
            raise RevokedError(f"device {rec.device_id} is revoked")
        return rec

    @staticmethod
    def _proven(req: m.Message) -> "_Proven":
        """Around the checks that follow a verified proof: an error raised inside refuses a real
        device's request, so it carries that request and `error_reply` may sign it."""
        return _Proven(req)

    def _check_current(self, device_id: str, generation: int) -> DeviceRecord:
        """Revocation and re-registration take effect at once: the ticket's generation must be current.

        A registry that caches (tessera.pg_cache) may lag another server by a moment: a ticket
        (authenticated, so the realm issued it) NEWER than the cached row means the device
        registered elsewhere just now (the row may even still say enrolled), and that one row
        is read through (`read_through`, which the cache budgets). A revoked row is final, and
        an older generation is refused as superseded, from the cache alone."""
        rec = self._not_revoked(self._enrolled(device_id))
        read_through = getattr(self.registry, "read_through", None)
        if rec.generation < generation and read_through is not None:
            rec = self._not_revoked(read_through(device_id) or rec)
        if rec.state is not DeviceState.REGISTERED:
            raise NotRegisteredError(f"device {device_id} is not registered")
        if rec.generation != generation:
            raise SupersededError(f"{device_id}: registration {generation} was replaced by {rec.generation}")
        return rec

    # -- 802.1X admission hooks --------------------------------------------------------------
    def admit_certificate(self, serial_hex: str, issuer: str, common_name: str, now: float) -> str:
        """EAP-TLS: the device certificate (already chain-checked by the EAP module) must be the
        one enrolled for that device, and the device not revoked. Returns the device id.

        The identity compared is the certificate's CN: the one field enrolment reads too
        (`identity.certificate_device_id`, which refuses a certificate whose serialNumber names
        another device), so every certificate that enrols names a device that can be admitted.
        End-entity, clientAuth and validity were checked at enrolment for this very certificate
        (issuer + serial); the EAP module checks the chain and the dates again now."""
        rec = self.registry.find_by_certificate(issuer, serial_hex.lower().removeprefix("0x"))
        if rec is None:
            known = self.registry.get_device(common_name) if _valid_id(common_name) else None
            if known is None:
                raise UnknownDeviceError(f"no device enrolled with certificate {serial_hex} ({common_name})")
            raise CertificateError(f"certificate {serial_hex} is not the one enrolled for {common_name}")
        if rec.device_id != common_name:
            raise CertificateError(f"certificate names {common_name!r}, enrolled for {rec.device_id!r}")
        if rec.state is DeviceState.REVOKED:
            raise RevokedError(f"device {rec.device_id} is revoked")
        return rec.device_id

    def record_location(self, device_id: str, nas_identifier: str, nas_address: str, nas_port_id: str,
                        calling_station: str, now: float) -> None:
        """After an 802.1X admission a switch relayed: remember the NAS, port and MAC, so that
        revoking the device can send that NAS a Disconnect-Request (RFC 5176). ``device_id`` is
        the identity EAP authenticated (the certificate's device, or EAP-PWD's peer id bound to
        the outer identity), never an unauthenticated User-Name: the adapter passes nothing else.

        A device revoked since its admission began (EAP-PWD takes its password at the first
        round and may finish up to a minute later) raises ``RevokedError`` and the adapter turns
        the accept into a reject, so its port stays closed. The state is checked before the
        write (nothing is recorded for a revoked device) and again after it: revocation writes
        the state and then reads the location, so of two that cross, one sees the other -- the
        revocation finds the new port, or this finds the device revoked."""
        if self._enrolled(check_device_id(device_id)).state is DeviceState.REVOKED:
            raise RevokedError(f"device {device_id} was revoked during its admission")
        if not self.registry.record_location(device_id, nas_identifier[:64], nas_address[:64], nas_port_id[:64],
                                             calling_station[:64], int(now)):
            raise UnknownDeviceError(f"device {device_id} is not enrolled in {self.realm}")
        rec = self.registry.get_device(device_id)
        if rec is None or rec.state is DeviceState.REVOKED:
            raise RevokedError(f"device {device_id} was revoked during its admission")

    def eap_pwd_password(self, device_id: str, now: float) -> str:
        """EAP-PWD password for a registered device, derived from its LLK (which the registry
        holds only inside the sealed DRT). The device derives the same from its own LLK."""
        rec = self._device(check_device_id(device_id))
        if rec.sealed_drt is None:
            raise NotRegisteredError(f"device {device_id} holds no registration")
        drt = open_ticket(self.keyring, rec.sealed_drt, RegistrationTicket, int(now))
        check_validity(drt.not_before, drt.not_after, int(now), self.policy.clock_skew, "registration")
        return eap_pwd_password(drt.llk, device_id)


def eap_pwd_password(llk: bytes, device_id: str) -> str:
    """The EAP-PWD password both sides derive from the LLK (hex, 64 characters)."""
    return kdf.derive(llk, kdf.EAP_PWD, device_id.encode()).hex()


def _complete_list(rows: list[tuple[str, int]], since: int, budget: int) -> tuple[int, tuple[tuple[str, int], ...]]:
    """The longest newest-first prefix of `rows` within MAX_REVOKED entries and `budget` bytes,
    cut so that every row at or after the returned complete_since is in it."""
    listed = []
    for device_id, at in rows:
        size = 1 + len(device_id.encode()) + 8  # id ‖ u64
        if len(listed) == m.MAX_REVOKED or size > budget:
            since = max(since, at + 1)
            return since, tuple((d, t) for d, t in listed if t >= since)
        listed.append((device_id, at))
        budget -= size
    return since, tuple(listed)


class _Proven:
    """`Service._proven`'s context (a class, not a generator: every TGT and renewal enters one)."""

    __slots__ = ("req",)

    def __init__(self, req: m.Message):
        self.req = req

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if isinstance(exc, TesseraError):
            exc.proven_request = self.req
        return False  # the error goes on


def _key(device_id: str, nonce: bytes) -> bytes:
    return device_id.encode() + b"\x00" + nonce


def _valid_id(device_id: str) -> bool:
    try:
        check_device_id(device_id)
        return True
    except MalformedError:
        return False
