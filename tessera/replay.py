"""Freshness: a clock-skew window and an in-memory replay cache.

Tessera proves freshness in one round trip: every request carries a timestamp and a random
nonce and names the server it is addressed to, all under its proof. A server accepts a request
only if the timestamp is within `skew` of its clock, the server id is its own, and the proof's
(kind, device, nonce) is not in its cache. Entries live until the timestamp leaves the window,
so the cache is bounded by the request rate times 2·skew. Because each proof is bound to one
server, a copy replayed to another server of the realm fails there with `WrongServerError`: each
server's own cache suffices and nothing shared sits in the request path (Kerberos replicas share
keys but not replay caches, so a replay to another KDC passes there).
"""

from __future__ import annotations

from collections import deque

from .errors import ClockSkewError, InternalError, ReplayError


def check_skew(timestamp: int, now: int, skew: int) -> None:
    if abs(timestamp - now) > skew:
        raise ClockSkewError(f"timestamp {timestamp} is {timestamp - now:+d} s from server time", server_time=now)


class ReplayCache:
    """Remembers proofs until they could no longer pass the skew check."""

    def __init__(self, skew: int, max_entries: int = 2_000_000):
        self.skew = skew
        self.max_entries = max_entries
        self._seen: dict[bytes, int] = {}
        self._order: deque[tuple[int, bytes]] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def _prune(self, now: int) -> None:
        while self._order and self._order[0][0] <= now:
            expiry, key = self._order.popleft()
            if self._seen.get(key) == expiry:
                del self._seen[key]

    def add(self, key: bytes, timestamp: int, now: int) -> None:
        """Record a verified proof; raises ReplayError if it was seen and could still pass."""
        self._prune(now)
        if self._seen.get(key, 0) > now:
            raise ReplayError("this proof was already used")
        if len(self._seen) >= self.max_entries:
            raise InternalError("replay cache full")
        expiry = max(timestamp, now) + self.skew + 1
        self._seen[key] = expiry
        # expiries arrive nearly in order; a late one only delays pruning, never correctness
        self._order.append((expiry, key))
