"""One row of a benchmark result, shared by every script that `bench/run` collects.

Each script takes ``--json PATH`` and appends its rows there as JSON lines (one object per
line, the fields below); ``bench/run`` reads them back, prints the table with the ratios and
writes ``bench/results/``. Times are per exchange (or per frame) and in the units the field
names say; a field a benchmark cannot measure is None, never a made-up value.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Row:
    suite: str                  # "tessera", "mit-krb5", "freeradius", "lab", "l2"
    system: str                 # what served it, e.g. "MIT krb5 1.20.1 KDC, no DB writes"
    exchange: str               # e.g. "AS with pre-auth (2 messages)", "TGT (auth with LLK)"
    count: int                  # exchanges (or frames) completed
    failed: int = 0             # refused, lost or timed out
    seconds: float = 0.0        # wall time of the measured window
    per_second: float = 0.0     # count / seconds
    server_cpu_us: float | None = None  # server CPU per exchange (all its processes), µs
    client_cpu_us: float | None = None  # load generator CPU per exchange, µs
    p50_ms: float | None = None
    p99_ms: float | None = None
    load1: float | None = None  # the machine's 1-minute load average at the end
    extra: dict = field(default_factory=dict)


def load1() -> float:
    return os.getloadavg()[0]


def append_rows(path: str | os.PathLike | None, rows: list[Row]) -> None:
    """Append ``rows`` to the JSON-lines file ``path`` (nothing when path is None)."""
    if path is None:
        return
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(asdict(row), sort_keys=True) + "\n")


def read_rows(path: str | os.PathLike) -> list[Row]:
    return [Row(**json.loads(line)) for line in Path(path).read_text().splitlines() if line.strip()]
