"""The peer record layer: AEAD-protected frames with sequence numbers and a replay window.

    PeerData frame = version u8 | type u8 (35) | session id [8] | seq u64 | AES-256-GCM(ct) | tag[16]
    nonce = per-direction IV XOR seq (as TLS 1.3), associated data = the 18-byte header

Each direction has its own key and IV from the session key schedule (peer.py). The receiver
keeps an RFC 4303-style sliding window (default 64 frames, like IPsec's minimum): a frame older
than the window or already seen is a replay; the window only moves after the tag verifies, so a
forged frame cannot advance it. A sender stops at 2**48 frames per key (rekey before).

Byte layout: docs/layouts.md#peer-records
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import BadProofError, MalformedError, ReplayError, StateError
from .message import VERSION, PeerData

_HEADER = struct.Struct("!BB8sQ")
HEADER_LEN = _HEADER.size
MAX_SEQ = 2**48
TAG_LEN = 16


class ReplayWindow:
    """Sliding window over sequence numbers (bit i set: top - i was received)."""

    __slots__ = ("size", "top", "bits")

    def __init__(self, size: int = 64):
        self.size = size
        self.top = 0
        self.bits = 0

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
            self.bits = ((self.bits << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.top = seq
        else:
            self.bits |= 1 << (self.top - seq)


class RecordSender:
    """Seals frames of one direction."""

    def __init__(self, session_id: bytes, key: bytes, iv: bytes):
        self.session_id = session_id
        self._aead = AESGCM(key)
        self._iv = int.from_bytes(iv, "big")
        self.seq = 0

    def seal(self, plaintext: bytes) -> bytes:
        if self.seq + 1 >= MAX_SEQ:
            raise StateError("sequence space used up: rekey the session")
        self.seq += 1
        header = _HEADER.pack(VERSION, PeerData.TYPE, self.session_id, self.seq)
        return header + self._aead.encrypt((self._iv ^ self.seq).to_bytes(12, "big"), plaintext, header)


class RecordReceiver:
    """Opens frames of one direction, rejecting tampered, foreign and replayed frames."""

    def __init__(self, session_id: bytes, key: bytes, iv: bytes, window: int = 64):
        self.session_id = session_id
        self._aead = AESGCM(key)
        self._iv = int.from_bytes(iv, "big")
        self.window = ReplayWindow(window)

    def open(self, frame: bytes) -> bytes:
        if len(frame) < HEADER_LEN + TAG_LEN:
            raise MalformedError("record shorter than header and tag")
        version, mtype, sid, seq = _HEADER.unpack_from(frame)
        if version != VERSION or mtype != PeerData.TYPE:
            raise MalformedError("not a data record")
        if sid != self.session_id:
            raise StateError("record for another session")
        self.window.check(seq)
        try:
            plaintext = self._aead.decrypt((self._iv ^ seq).to_bytes(12, "big"), frame[HEADER_LEN:], frame[:HEADER_LEN])
        except InvalidTag:
            raise BadProofError(f"record {seq} does not authenticate") from None
        self.window.accept(seq)
        return plaintext


def session_id_of(frame: bytes) -> bytes:
    """The session id of a data record (to find its receiver)."""
    if len(frame) < HEADER_LEN:
        raise MalformedError("record shorter than its header")
    return frame[2:10]
