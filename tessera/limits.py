"""Bounded tables and rate limits for what strangers on the wire can make a node remember.

Sans-I/O like the rest of the core: time is passed in. Every structure here has a fixed
capacity and constant cost per call, so a flood of distinct forged sources or identities
costs the same per frame as one sender does, and memory stays bounded:

    Lru(capacity)                    a dict that forgets its least recently touched entry
    RateLimit(rate, burst, capacity) a token bucket per key (source MAC, claimed device id),
                                     the buckets themselves in an Lru: an evicted key starts
                                     full again, which costs an attacker `burst` per key it
                                     cycles through, never more than `capacity` keys at a time
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Hashable, Iterator, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Lru(Generic[K, V]):
    """A mapping of at most `capacity` entries; `put` evicts the least recently used."""

    __slots__ = ("capacity", "_d", "evicted")

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._d: OrderedDict[K, V] = OrderedDict()
        self.evicted = 0

    def get(self, key: K, default: V | None = None) -> V | None:
        value = self._d.get(key, default)
        if key in self._d:
            self._d.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.capacity:
            self._d.popitem(last=False)
            self.evicted += 1

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._d.pop(key, default)

    def oldest(self) -> tuple[K, V] | None:
        return next(iter(self._d.items()), None)

    def clear(self) -> None:
        self._d.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._d))

    def items(self) -> list[tuple[K, V]]:
        return list(self._d.items())

    def values(self) -> list[V]:
        return list(self._d.values())


class RateLimit:
    """Token buckets by key: `allow(key, now)` spends one token if there is one. Tokens refill
    at `rate` per second up to `burst`."""

    __slots__ = ("rate", "burst", "_buckets", "refused")

    def __init__(self, rate: float, burst: float, capacity: int = 1024):
        self.rate, self.burst = rate, burst
        self._buckets: Lru[Hashable, tuple[float, float]] = Lru(capacity)
        self.refused = 0

    def _tokens(self, key: Hashable, now: float) -> float:
        tokens, at = self._buckets.get(key) or (self.burst, now)
        return min(self.burst, tokens + max(0.0, now - at) * self.rate)

    def available(self, key: Hashable, now: float) -> bool:
        """Whether `allow` would say yes (nothing spent)."""
        return self._tokens(key, now) >= 1.0

    def spend(self, key: Hashable, now: float) -> None:
        """Take one token whether or not there is one (the count may go below zero: an
        allowance spent after the fact, by what was checked with `available`, is still owed)."""
        self._buckets.put(key, (self._tokens(key, now) - 1.0, now))

    def allow(self, key: Hashable, now: float) -> bool:
        tokens = self._tokens(key, now)
        if tokens < 1.0:
            self._buckets.put(key, (tokens, now))
            self.refused += 1
            return False
        self._buckets.put(key, (tokens - 1.0, now))
        return True
