"""The peer record layer: AEAD-protected frames with sequence numbers and a replay window.

    PeerData frame  = version u8 | type u8 (35) | session id [8] | seq u64 | AES-256-GCM(ct) | tag[16]
    PeerFrame frame = the same with type 38: its plaintext is one inner Ethernet frame (tunnel.py)
    nonce = per-direction IV XOR seq (as TLS 1.3), associated data = the 18-byte header

Types 35 and 38 share each direction's key, IV, sequence counter and replay window: one seq
space per direction, and the type is in the associated data, so a record cannot be turned
from one into the other. `seal` makes a PeerData record, `seal_frame` a PeerFrame record;
`open` opens either (the caller dispatched on the type byte before).

Window size: RFC 4303's minimum is 64 (the default of `ReplayWindow`); a session's receiver
(`DATA_WINDOW`, tessera.peer.Channel's default) keeps 1024. A tunnel carries bursts of thousands of
frames a second (30-40k/s measured, docs: notes/secured-link.md); a record delayed behind 64
later ones (a multi-queue NIC, a bridge, a busy receive queue) would be refused as a replay and
TCP would see a loss. 1024 records are ~25 ms at 40k frames/s; the cost is one 1024-bit int per
direction, and its shift per record costs what a 64-bit one does (60 vs 56 ns, measured).

Each direction has its own key and IV from the session key schedule (peer.py). The receiver
keeps an RFC 4303-style sliding window (default 64 frames, like IPsec's minimum): a frame older
than the window or already seen is a replay; the window only moves after the tag verifies, so a
forged frame cannot advance it. A sender stops at 2**48 frames per key (rekey before).

Per frame, the data path does as few Python operations as it can: one AESGCM object per
direction, built once; the 10 header bytes before seq (version, type, session id) built once and
compared in one piece, the field-by-field checks run only to name a refusal; the window consulted
before the tag only for a seq at or below its top (above it there is nothing to refuse). Writing
into preallocated buffers (``encrypt_into``, ``pack_into``) measured slower here: the views and
calls it takes cost more than the small allocations they save.

Byte layout: docs/layouts.md#peer-records
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import BadProofError, MalformedError, ReplayError, StateError
from .message import VERSION, PeerData, PeerFrame

_HEADER = struct.Struct("!BB8sQ")
_pack_seq = struct.Struct("!Q").pack
_unpack_prefix = struct.Struct("!10sQ").unpack_from   # version, type, session id | seq
HEADER_LEN = _HEADER.size
MAX_SEQ = 2**48
TAG_LEN = 16
OVERHEAD = HEADER_LEN + TAG_LEN
DATA_WINDOW = 1024  # a session's receive window (see above)
RECORD_TYPES = (PeerData.TYPE, PeerFrame.TYPE)


class ReplayWindow:
    """Sliding window over sequence numbers (bit i set: top - i was received)."""

    __slots__ = ("size", "top", "bits", "_mask")

    def __init__(self, size: int = 64):
        self.size = size
        self.top = 0
        self.bits = 0
        self._mask = (1 << size) - 1

    def check(self, seq: int) -> None:
        if seq == 0:
            raise ReplayError("sequence number 0 is never sent")
        if seq > self.top:
            return
        if self.top - seq >= self.size:
            raise ReplayError(f"frame {seq} is older than the window (top {self.top})")
        if self.bits >> (self.top - seq) & 1:
            raise ReplayError(f"frame {seq} was already received")

    def accept(self, seq: int) -> None:
        if seq > self.top:
            shift = seq - self.top
            self.bits = ((self.bits << shift) | 1) & self._mask if shift < self.size else 1
            self.top = seq
        else:
            self.bits |= 1 << (self.top - seq)


class _Direction:
    """Key and IV of one direction, and the 10 header bytes before seq that its records share."""

    __slots__ = ("session_id", "_aead", "_iv", "_prefix", "_prefix_frame")

    def __init__(self, session_id: bytes, key: bytes, iv: bytes):
        if len(session_id) != 8:
            raise ValueError("a session id is 8 bytes")
        self.session_id = session_id
        self._aead = AESGCM(key)
        self._iv = int.from_bytes(iv, "big")
        self._prefix = _HEADER.pack(VERSION, PeerData.TYPE, session_id, 0)[:10]
        self._prefix_frame = _HEADER.pack(VERSION, PeerFrame.TYPE, session_id, 0)[:10]


class RecordSender(_Direction):
    """Seals frames of one direction."""

    __slots__ = ("seq",)

    def __init__(self, session_id: bytes, key: bytes, iv: bytes):
        super().__init__(session_id, key, iv)
        self.seq = 0

    def seal(self, plaintext: bytes) -> bytes:
        seq = self.seq + 1
        if seq >= MAX_SEQ:
            raise StateError("sequence space used up: rekey the session")
        self.seq = seq
        header = self._prefix + _pack_seq(seq)
        return header + self._aead.encrypt((self._iv ^ seq).to_bytes(12, "big"), plaintext, header)

    def seal_frame(self, plaintext: bytes) -> bytes:
        """A PeerFrame record (type 38) of `plaintext`, in the same sequence space as `seal`."""
        seq = self.seq + 1
        if seq >= MAX_SEQ:
            raise StateError("sequence space used up: rekey the session")
        self.seq = seq
        header = self._prefix_frame + _pack_seq(seq)
        return header + self._aead.encrypt((self._iv ^ seq).to_bytes(12, "big"), plaintext, header)


class RecordReceiver(_Direction):
    """Opens frames of one direction, rejecting tampered, foreign and replayed frames."""

    __slots__ = ("window",)

    def __init__(self, session_id: bytes, key: bytes, iv: bytes, window: int = 64):
        super().__init__(session_id, key, iv)
        self.window = ReplayWindow(window)

    def open(self, frame: bytes) -> bytes:
        """The plaintext of ``frame`` (PeerData or PeerFrame); the window moves only after the tag verifies."""
        if len(frame) < OVERHEAD:
            raise MalformedError("record shorter than header and tag")
        prefix, seq = _unpack_prefix(frame)
        if prefix != self._prefix and prefix != self._prefix_frame:
            self._refuse(frame)
        window = self.window
        top = window.top
        if seq <= top:  # above the top check() has nothing to refuse
            window.check(seq)
        try:
            plaintext = self._aead.decrypt((self._iv ^ seq).to_bytes(12, "big"), frame[HEADER_LEN:], frame[:HEADER_LEN])
        except InvalidTag:
            raise BadProofError(f"record {seq} does not authenticate") from None
        if seq == top + 1:  # in order: accept()'s shift by one, without the call
            window.bits = ((window.bits << 1) | 1) & window._mask
            window.top = seq
        else:
            window.accept(seq)
        return plaintext

    def _refuse(self, frame: bytes) -> None:
        version, mtype, sid, _ = _HEADER.unpack_from(frame)
        if version != VERSION or mtype not in RECORD_TYPES:
            raise MalformedError("not a data record")
        raise StateError("record for another session")


def session_id_of(frame: bytes) -> bytes:
    """The session id of a data record (to find its receiver)."""
    if len(frame) < HEADER_LEN:
        raise MalformedError("record shorter than its header")
    return frame[2:10]
