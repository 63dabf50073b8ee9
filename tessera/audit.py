"""Bounded audit of rejections: at most one audit row per (device, event, reason) per window.

Anyone can send registration requests for an enrolled device; one with a bad signature costs
the sender nothing, so writing an audit row for each would let a flood grow the registry (and
cost a registry write per packet on the serialised module). The service notes each such
rejection here instead, and writes only the rows this returns:

    a key's first rejection                  → a row with count 1, at once (the operator sees it)
    more within `window` s of the key's row  → counted here, no row
    the window's end (`due(now)`, which      → a row with the count since the key's last row, if
    every `note` runs first)                   any; else the key is forgotten, and its next
                                               rejection is a "first" again

So every key has at most one row per window, the counts of its rows add up to the rejections
noted (once `due` has run after the last window), and a key whose window passed with nothing
new is forgotten. Keys name enrolled devices only (the service checks the registry first) and
their number is capped: past `max_keys`, rejections fold into one row per (event, reason) with
no device, so memory stays bounded too. What is still uncounted when the process ends (at most
one window's worth per key) is lost unless the adapter calls `due` with a time past the window.

Sans-I/O: `now` is passed in; the caller writes the returned events.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .registry import AuditEvent

Key = tuple[str | None, str, str]  # (device id, event, reason)


@dataclass
class _Window:
    last_row: int  # time of the key's last written row
    uncounted: int = 0  # rejections since then, not in any row yet


class AuditAggregator:
    """Turns a stream of rejections into a bounded stream of audit rows with counts."""

    def __init__(self, server_id: str, window: int = 60, max_keys: int = 100_000):
        self.server_id = server_id
        self.window = window
        self.max_keys = max_keys
        self._keys: dict[Key, _Window] = {}
        self._due: deque[tuple[int, Key]] = deque()  # (window end, key), in the order rows were written

    def __len__(self) -> int:
        return len(self._keys)

    def note(self, device_id: str | None, event: str, reason: str, now: int) -> list[AuditEvent]:
        """One rejection; returns the rows to write now (none, or one)."""
        out = self.due(now)
        key: Key = (device_id, event, reason)
        if key not in self._keys and len(self._keys) >= self.max_keys:
            key = (None, event, reason)  # too many keys: count it with the device-less row
        w = self._keys.get(key)
        if w is None:  # new, or forgotten by `due` after a quiet window: on record at once
            self._keys[key] = _Window(now)
            self._due.append((now + self.window, key))
            out.append(self._row(key, 1, now))
        else:  # inside the window of its last row (`due` just closed any window that ended)
            w.uncounted += 1
        return out

    def due(self, now: int) -> list[AuditEvent]:
        """Rows for windows that have ended with uncounted rejections; forgets idle keys."""
        out: list[AuditEvent] = []
        while self._due and self._due[0][0] <= now:
            end, key = self._due.popleft()
            w = self._keys.get(key)
            if w is None or w.last_row + self.window != end:
                continue  # superseded by a later row for this key
            if w.uncounted:
                out.append(self._row(key, w.uncounted, now))
                w.last_row, w.uncounted = now, 0
                self._due.append((now + self.window, key))
            else:
                del self._keys[key]
        return out

    def _row(self, key: Key, count: int, now: int) -> AuditEvent:
        device_id, event, reason = key
        detail = reason if count == 1 else f"{reason} (x{count} since the last row)"
        return AuditEvent(now, event, device_id, detail, self.server_id, count)
