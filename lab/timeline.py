"""The demo's picture: every device's way from link-up to its encrypted traffic, on one time axis.

`draw(events, t0, path)` reads the agents' event stream (`tessera.agent.daemon.EventStream`:
one dict per line, ``{"t": monotonic, "device": ID, "event": KIND, "peer": ID}``; the lab's
`AgentEvents` hands them over parsed) and writes a PNG: one row per device, time in ms from
``t0`` (the lab's common link-up, the same CLOCK_MONOTONIC the agents stamp with), and a mark
for each milestone (`tessera.node.Milestone`):

- ``link-up``, ``authorized`` (EAP success: the switch port opens), ``registered``,
  ``ticketed`` -- one mark each (a device that starts over gets another);
- ``peered`` -- one small tick per peer session established (49 on a row of a 50-device lab);
- ``record`` -- one small dot per peer for the first encrypted record opened from it.

A thin line joins a row's first mark to its last peered tick: how long the device took to be
in. An event that is not one of these -- not a dict, no device, no kind, no finite time, a peer
event without its peer, a kind nobody draws -- is skipped and counted by reason
(`Timeline.skipped`); the agent's ``started`` line is not a milestone and is left out
uncounted. Nothing in the stream is secret (kinds and ids only), and nothing here needs root.

matplotlib draws with its Agg backend (no display); it comes with the venv (`tools/bootstrap`
installs the ``test`` extra of setup.cfg).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("link-up", "authorized", "registered", "ticketed", "peered", "record")
PER_PEER = ("peered", "record")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NOT_MILESTONES = frozenset({"started"})  # the agent's first line (its pid), not a step on the way

# kind -> (marker, colour, size in points², legend label); drawn in this order, the per-peer ones under the rest
STYLE = {
    "record": ("o", "#9467bd", 9, "first encrypted record from a peer (one per peer)"),
    "peered": ("|", "#2ca02c", 40, "peer session established (one per peer)"),
    "link-up": ("o", "#7f7f7f", 26, "link up"),
    "authorized": ("s", "#1f77b4", 26, "802.1X: port authorized"),
    "registered": ("D", "#ff7f0e", 22, "registered with the realm"),
    "ticketed": ("^", "#d62728", 30, "TGT received"),
}


@dataclass
class Timeline:
    """What `draw` did: the PNG, its rows and marks, and the events it skipped (reason -> count)."""
    path: Path
    devices: int
    marks: int
    skipped: Counter = field(default_factory=Counter)
    width_px: int = 0
    height_px: int = 0

    def summary(self) -> str:
        bad = sum(self.skipped.values())
        why = "" if not bad else f"; {bad} event(s) skipped: " + ", ".join(
            f"{k} {v}" for k, v in sorted(self.skipped.items()))
        return (f"{self.path} ({self.width_px}×{self.height_px} px): {self.devices} device rows, "
                f"{self.marks} marks{why}")


def _check(ev) -> str | None:
    """Why `ev` cannot be drawn (a reason for `Timeline.skipped`), or None if it can."""
    if not isinstance(ev, dict):
        return "not an object"
    dev = ev.get("device")
    if not isinstance(dev, str) or not dev:
        return "no device"
    kind = ev.get("event")
    if not isinstance(kind, str) or not kind:
        return "no event kind"
    t = ev.get("t")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        return "no finite time"
    if kind not in KINDS:
        return f"unknown kind {kind[:20]!r}"
    if kind in PER_PEER and (not isinstance(ev.get("peer"), str) or not ev["peer"]):
        return f"{kind} without a peer"
    return None


def collect(events, t0: float) -> tuple[dict[str, dict[str, list[float]]], Counter]:
    """Per device, per kind, the milestones' times in ms from t0; and the skipped events by reason."""
    rows: dict[str, dict[str, list[float]]] = {}
    skipped: Counter = Counter()
    for ev in events:
        if isinstance(ev, dict) and ev.get("event") in NOT_MILESTONES and isinstance(ev.get("device"), str):
            rows.setdefault(ev["device"], {})  # a device whose agent started has a row, even if nothing followed
            continue
        why = _check(ev)
        if why is not None:
            skipped[why] += 1
            continue
        rows.setdefault(ev["device"], {}).setdefault(ev["event"], []).append((ev["t"] - t0) * 1000.0)
    return rows, skipped


def draw(events, t0: float, path, title: str | None = None, labels: dict[str, str] | None = None,
         dpi: int = 110) -> Timeline:
    """Write the timeline PNG to `path` (see the module docstring); `labels` adds a note to a
    device's row name (e.g. "not enrolled")."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows, skipped = collect(events, t0)
    labels = labels or {}
    devices = sorted(set(rows) | set(labels))
    n = max(1, len(devices))
    height = min(60.0, 1.6 + 0.24 * n)  # inches: ~26 px a row at 110 dpi, readable at 50 devices
    fig, ax = plt.subplots(figsize=(11.0, height), dpi=dpi)
    try:
        marks = 0
        y_of = {d: i for i, d in enumerate(devices)}
        for d in devices:  # the way in: first mark to last peer session
            kinds = rows.get(d, {})
            times = [t for ts in kinds.values() for t in ts]
            if times and kinds.get("peered"):
                ax.hlines(y_of[d], min(times), max(kinds["peered"]), color="#cccccc", lw=1.0, zorder=1)
        for kind, (marker, colour, size, _label) in STYLE.items():
            xs, ys = [], []
            for d in devices:
                for t in rows.get(d, {}).get(kind, ()):
                    xs.append(t)
                    ys.append(y_of[d])
            if xs:
                scale = (0.6 if n > 12 else 2.0) if kind in PER_PEER else 1.0  # per-peer marks: small when many
                ax.scatter(xs, ys, marker=marker, c=colour, s=size * scale,
                           linewidths=0.8 if marker == "|" else 0.3, zorder=3 if kind in PER_PEER else 4)
                marks += len(xs)
        ax.set_yticks(range(len(devices)))
        ax.set_yticklabels([f"{d} ({labels[d]})" if d in labels else d for d in devices],
                           fontsize=8 if n <= 20 else 6.5)
        ax.set_ylim(len(devices) - 0.5, -0.5)  # the first device on top
        ax.set_xlabel("ms from the common link-up (every port's carrier on in one netlink batch)")
        ax.grid(axis="x", color="#e6e6e6", lw=0.6)
        ax.axvline(0, color="#999999", lw=0.8, ls=":")
        ax.set_axisbelow(True)
        handles = [Line2D([], [], ls="", marker=STYLE[k][0], color=STYLE[k][1], label=STYLE[k][3],
                          markersize=4 if k == "record" else 6,
                          markeredgewidth=1.2 if STYLE[k][0] == "|" else 0.5) for k in KINDS]
        ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=7.5,
                  frameon=False, title=title, title_fontsize=10)
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=dpi, format="png", bbox_inches="tight", pad_inches=0.15)  # the legend above included
    finally:
        plt.close(fig)
    w, h = png_size(out)
    return Timeline(out, len(devices), marks, skipped, w, h)


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR; ValueError if the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != PNG_MAGIC or head[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
