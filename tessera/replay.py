"""Freshness: a clock-skew window and an in-memory replay cache with per-device quotas.

Tessera proves freshness in one round trip: every request carries a timestamp and a random
nonce and names the server it is addressed to, all under its proof. A server accepts a request
only if the timestamp is within `skew` of its clock, the server id is its own, and the proof's
(kind, device, nonce) is not in its cache. Entries live until the timestamp leaves the window
(at most 2·skew + 1 s), so the cache holds only what could still pass. Because each proof is
bound to one server, a copy replayed to another server of the realm fails there with
`WrongServerError`: each server's own cache suffices and nothing shared sits in the request path
(Kerberos replicas share keys but not replay caches, so a replay to another KDC passes there).

Bounded per device, not only in total. Every entry is charged to one device, and only after
that device's proof verified (so only enrolled devices, with their own keys, are charged). A
device may hold at most `per_device` live entries: one device flooding fresh nonces is refused
with `QuotaError` naming it, while every other device keeps being served, and it is served again
once its entries leave the window. A replay is refused as `replay` before any quota is counted.
As a backstop the whole cache has a soft size, `max_entries`: when it is reached only devices
holding fewer than `reserve` entries are served (a device that asks rarely is never starved by
many that ask a lot). So at all times

    entries ≤ min(per_device × D, max_entries + reserve × D)

with D the devices holding entries — never more than the realm's enrolled devices.
"""

from __future__ import annotations

import heapq

from .errors import ClockSkewError, QuotaError, ReplayError

# Live proofs per device. A proof stamped `now` is kept skew + 1 s (301 s at the default skew),
# so 512 allow ~1.7 requests/s from one device for ever -- a device makes a few per TGT lifetime
# plus two per peer session it starts. A device's neighbours cannot spend its quota (see service).
DEFAULT_PER_DEVICE = 512
DEFAULT_MAX_ENTRIES = 2_000_000
DEFAULT_RESERVE = 16
# Of a device's quota, what one pair (initiator, responder) of a peer session may spend: a
# responder provoking hellos (e.g. with fresh announces) spends at most this much of the
# initiator's quota, never enough to keep its renewals out. 16 session requests per window.
DEFAULT_PER_PAIR = 32


def check_skew(timestamp: int, now: int, skew: int) -> None:
    if abs(timestamp - now) > skew:
        raise ClockSkewError(f"timestamp {timestamp} is {timestamp - now:+d} s from server time", server_time=now)


class ReplayCache:
    """Remembers proofs until they could no longer pass the skew check, at most `per_device`
    of them per device."""

    def __init__(self, skew: int, per_device: int = DEFAULT_PER_DEVICE, max_entries: int = DEFAULT_MAX_ENTRIES,
                 reserve: int = DEFAULT_RESERVE, per_pair: int = DEFAULT_PER_PAIR):
        if per_device < 2 or reserve < 2 or max_entries < 1:
            raise ValueError("per_device and reserve must be at least 2 (a session request adds two proofs)")
        self.skew = skew
        self.per_device = per_device
        self.max_entries = max_entries
        self.reserve = min(reserve, per_device)
        self.per_pair = max(2, min(per_pair, per_device))
        self._seen: dict[bytes, str] = {}  # proof key → the device it is charged to
        self._pair_of: dict[bytes, str] = {}  # proof key → the session pair it was spent by
        self._held_pair: dict[str, int] = {}  # pair → live entries it spent
        self._expiry: list[tuple[int, bytes]] = []  # heap of (expiry, proof key)
        self._held: dict[str, int] = {}  # device → live entries charged to it

    def __len__(self) -> int:
        return len(self._seen)

    def held(self, device: str) -> int:
        """Live entries charged to `device`."""
        return self._held.get(device, 0)

    @property
    def devices(self) -> int:
        """Devices holding at least one live entry."""
        return len(self._held)

    def _prune(self, now: int) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, key = heapq.heappop(self._expiry)
            device = self._seen.pop(key)
            left = self._held[device] - 1
            if left:
                self._held[device] = left
            else:
                del self._held[device]
            pair = self._pair_of.pop(key, None)
            if pair is not None:
                left = self._held_pair[pair] - 1
                if left:
                    self._held_pair[pair] = left
                else:
                    del self._held_pair[pair]

    def add(self, device: str, key: bytes, timestamp: int, now: int) -> None:
        """Record a verified proof charged to `device`; raises ReplayError if it was seen and
        could still pass, QuotaError if the device is over its quota."""
        self.add_all(device, ((key, timestamp),), now)

    def add_all(self, device: str, proofs: tuple[tuple[bytes, int], ...], now: int, pair: str | None = None) -> None:
        """Record several verified proofs charged to one device: all of them, or none (a
        refusal leaves nothing behind that could count against anyone). ``pair`` (a peer
        session's initiator and responder) may spend at most ``per_pair`` of the device's quota."""
        self._prune(now)
        if len(proofs) > 1 and len({key for key, _ in proofs}) != len(proofs):
            raise ReplayError("the same proof twice in one request")
        for key, _ in proofs:
            if key in self._seen:
                raise ReplayError("this proof was already used")
        held = self.held(device)
        window = 2 * self.skew + 1
        if held + len(proofs) > self.per_device:
            raise QuotaError(f"device {device} already has {held} live proofs here (quota {self.per_device}, "
                             f"each kept up to {window} s); retry later")
        if pair is not None and self._held_pair.get(pair, 0) + len(proofs) > self.per_pair:
            raise QuotaError(f"session {pair.replace(chr(0), ' → ')} already spent {self._held_pair[pair]} of "
                             f"{device}'s proofs here (at most {self.per_pair} per pair); retry later")
        if len(self._seen) + len(proofs) > self.max_entries and held + len(proofs) > self.reserve:
            raise QuotaError(f"the replay cache is full ({len(self._seen)} proofs) and device {device} "
                             f"holds {held}; retry later")
        for key, timestamp in proofs:
            # the latest moment the proof could still pass check_skew
            heapq.heappush(self._expiry, (max(timestamp, now) + self.skew + 1, key))
            self._seen[key] = device
            if pair is not None:
                self._pair_of[key] = pair
        self._held[device] = held + len(proofs)
        if pair is not None:
            self._held_pair[pair] = self._held_pair.get(pair, 0) + len(proofs)
