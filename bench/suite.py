#!/usr/bin/env python3
"""The benchmark suite in one sitting: run every part, print the table and the ratios the
issue targets, write ``bench/results/`` (results.md, results.json, PNG plots).

How this works: ``PARTS`` are the scripts, each called as a subprocess with ``--json ROWS``
(rows: ``bench/measure.py``) in a fixed order. The parts that measure server CPU per exchange
-- the FreeRADIUS floors (PAP, and PAP behind a Python module returning at once), Tessera's
exchanges, the MIT KDC (stock and without DB writes) -- run ``--rounds`` times, one run each
per round and the order reversed every other round, so drift and the other load on the
machine spread over all of them; then the lab's peering curve and the l2 frame rates (which
alternate plain and AEAD themselves). A part that exits non-zero is named and the suite goes
on with the others; ``main`` then exits 1. The rows of one (suite, system, exchange) are
reduced to their median (``aggregate``); the ratios (``checks``) take Tessera's SQLite realm
and the KDC's no-DB-writes config, each with its target and PASS/MISS (``n/a`` when a part
gave no row). ``--rows FILE`` renders results from rows already measured, running nothing.

    sudo .venv/bin/python bench/suite.py [--quick] [--rounds 3] [--out bench/results] [--rows FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from measure import Row, append_rows, read_rows  # noqa: E402

# Exchange names, as the scripts write them
TESSERA = ("registration", "TGT (auth with LLK)", "TGT renewal", "session key (2 TGTs)",
           "revocations (none)", "revocations (128)")
MIT_AS, MIT_AS1, MIT_TGS, MIT_U2U = ("AS with pre-auth (2 messages)", "AS with pre-auth (1 message)",
                                     "TGS", "user-to-user TGS")
PAP, PYTHON = "PAP from files (no Python)", "PAP + Python module returning at once"
# Tessera's exchange -> the MIT exchange doing the same job
ANCHOR = {"TGT (auth with LLK)": MIT_AS, "TGT renewal": MIT_TGS, "session key (2 TGTs)": MIT_U2U}


@dataclass(frozen=True)
class Part:
    """One script of the suite: ``args`` for a full run, ``quick`` for ``--quick``."""

    name: str
    script: str
    args: tuple[str, ...]
    quick: tuple[str, ...]
    per_round: bool  # one run per suite round (server CPU), or one run at the end


PARTS = (
    # the floors answer 15,000 requests in about half a second: more runs for a steady median
    Part("FreeRADIUS floors (PAP, Python)", "freeradius_floor.py", ("--rounds", "4"),
         ("--rounds", "2", "--count", "5000"), True),
    Part("Tessera exchanges", "realm_exchanges.py", ("--rounds", "1"),
         ("--rounds", "1", "--count", "3000", "--registrations", "300"), True),
    # user-to-user requests carry a TGT (~2 kB): over UDP, like Tessera's RADIUS, not libkrb5's
    # TCP fallback above 1465 bytes (UDP costs the KDC ~10 % less: the stricter anchor)
    Part("MIT KDC (stock, no DB writes)", "kerberos.py",
         ("--rounds", "1", "--seconds", "3", "--udp-preference-limit", "4096"),
         ("--rounds", "1", "--seconds", "1", "--udp-preference-limit", "4096"), True),
    Part("lab peering curve", "lab_peering.py", ("--devices", "10", "25", "50", "100"), ("--devices", "10"), False),
    Part("l2 frames", "l2_rate.py", ("--rounds", "5"), ("--rounds", "2"), False),
    Part("secured link (iperf3, ping over tessera0)", "tunnel.py", ("--rounds", "3", "--udp"),
         ("--rounds", "1", "--seconds", "2", "--pings", "50"), False),
)


@dataclass
class Agg:
    """The rows of one (suite, system, exchange): medians, and the range of the rounds."""

    suite: str
    system: str
    exchange: str
    runs: int
    count: int
    failed: int
    server_cpu_us: float | None
    cpu_range: tuple[float, float] | None
    per_second: float | None
    rate_range: tuple[float, float] | None
    client_cpu_us: float | None
    p50_ms: float | None
    p99_ms: float | None
    seconds: float | None = None  # median wall time of a run (the lab: link-up to the last device peered)
    extra: dict = field(default_factory=dict)


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _rounds(rows: list[Row], attr: str) -> tuple[list[float], tuple[float, float] | None]:
    """(every round's value, their range): a row's ``extra[attr + "_rounds"]`` list (a script
    that wrote medians over its rounds) or the row's own value (one row per run); a row's
    ``extra[attr + "_range"]`` ([min, max]) widens the range."""
    values: list[float] = []
    ends: list[float] = []
    for r in rows:
        listed = r.extra.get(attr + "_rounds")
        if isinstance(listed, list) and listed:
            values += [float(v) for v in listed if v is not None]
        elif getattr(r, attr) is not None:
            values.append(float(getattr(r, attr)))
        span = r.extra.get(attr + "_range")
        if isinstance(span, list) and len(span) == 2 and None not in span:
            ends += [float(v) for v in span]
    everything = values + ends
    return values, (min(everything), max(everything)) if everything else None


def aggregate(rows: list[Row]) -> list[Agg]:
    """One ``Agg`` per (suite, system, exchange), in the order first seen."""
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.suite, r.system, r.exchange), []).append(r)
    out = []
    for (suite, system, exchange), rs in groups.items():
        cpu, cpu_range = _rounds(rs, "server_cpu_us")
        rate, rate_range = _rounds(rs, "per_second")
        out.append(Agg(suite, system, exchange, len(rs), sum(r.count for r in rs), sum(r.failed for r in rs),
                       _median(cpu), cpu_range, _median(rate), rate_range,
                       _median(r.client_cpu_us for r in rs), _median(r.p50_ms for r in rs),
                       _median(r.p99_ms for r in rs), _median(r.seconds for r in rs), rs[-1].extra))
    return out


def _find(aggs: list[Agg], suite: str, exchange: str, prefer: str | None = None) -> Agg | None:
    """The aggregate of ``exchange`` in ``suite``; among several systems the one whose name
    holds ``prefer``, else the first."""
    found = [a for a in aggs if a.suite == suite and a.exchange == exchange]
    preferred = [a for a in found if prefer and prefer in a.system]
    return (preferred or found or [None])[0]


def tessera(aggs, exchange):
    return _find(aggs, "tessera", exchange, "SQLite")


def mit(aggs, exchange, config="nowrites"):
    """The KDC's aggregate for ``config`` ("nowrites" or "stock"): by the row's
    ``extra["config"]``, else by its system name."""
    for a in aggs:
        if a.suite == "mit-krb5" and a.exchange == exchange:
            named = a.extra.get("config") or ("nowrites" if "no DB writes" in a.system else "stock")
            if named == config:
                return a
    return None


def floor(aggs, exchange):
    return _find(aggs, "freeradius", exchange)


def lab_rows(aggs: list[Agg]) -> list[Agg]:
    """The lab's aggregates, by device count."""
    def devices(a: Agg) -> int:
        if "devices" in a.extra:
            return int(a.extra["devices"])
        m = re.match(r"(\d+) devices", a.exchange)
        return int(m.group(1)) if m else 0
    return sorted((a for a in aggs if a.suite == "lab"), key=devices)


def l2_pair(aggs: list[Agg]) -> tuple[Agg | None, Agg | None]:
    """(plain, AEAD) frames of the l2 part."""
    l2 = [a for a in aggs if a.suite == "l2"]
    plain = next((a for a in l2 if "plain" in a.exchange.lower()), None)
    aead = next((a for a in l2 if "aead" in a.exchange.lower()), None)
    return plain, aead


@dataclass
class Check:
    """One ratio or figure the issue names, against its target (None: shown, not judged)."""

    what: str
    value: float | None
    target: float | None = None
    at_most: bool = True  # the target is an upper bound (a ratio of CPU), else a lower one
    unit: str = "×"
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        if self.value is None:
            return "n/a"
        ok = self.value <= self.target if self.at_most else self.value >= self.target
        return "PASS" if ok else "MISS"

    def shown(self, v: float | None) -> str:
        if v is None:
            return "—"
        if self.unit == "×":
            return f"{v:.2f}×"
        if self.unit == "/s":
            return f"{v:,.0f}/s"
        digits = 1 if self.unit == "MiB" else 2
        return f"{v:.{digits}f} {self.unit}" if v < 100 else f"{v:,.0f} {self.unit}"

    def target_text(self) -> str:
        if self.target is None:
            return ""
        bound = "≤" if self.at_most else "≥"
        inverse = 1 / self.target if self.target else 0
        if self.unit == "×" and self.target < 1 and abs(inverse - round(inverse)) < 1e-9:
            return f"{bound} 1/{round(inverse)}"  # "≤ 1/3", as the issue states it
        return f"{bound} {self.shown(self.target)}"


def _ratio(a: Agg | None, b: Agg | None) -> float | None:
    if a is None or b is None or not a.server_cpu_us or not b.server_cpu_us:
        return None
    return a.server_cpu_us / b.server_cpu_us


def checks(aggs: list[Agg]) -> list[Check]:
    """The issue's targets as ratios of one run, then the ratios shown without a target."""
    out = []
    for exchange, anchor, name in (("TGT (auth with LLK)", MIT_AS, "TGT ÷ MIT AS with pre-auth (no DB writes)"),
                                   ("TGT renewal", MIT_TGS, "renewal ÷ MIT TGS"),
                                   ("session key (2 TGTs)", MIT_U2U, "session key ÷ MIT user-to-user TGS")):
        out.append(Check(name, _ratio(tessera(aggs, exchange), mit(aggs, anchor)), 1 / 3))
    pap, py = floor(aggs, PAP), floor(aggs, PYTHON)
    for exchange in TESSERA:
        out.append(Check(f"{exchange} ÷ PAP floor", _ratio(tessera(aggs, exchange), pap), 2.5))
    reg = tessera(aggs, "registration")
    out.append(Check("registrations/s on one core (1 / CPU per registration)",
                     1e6 / reg.server_cpu_us if reg and reg.server_cpu_us else None, 2000, False, "/s"))
    lab = {int(a.extra.get("devices", 0)): a for a in lab_rows(aggs)}
    fifty = lab.get(50)
    # a run that did not peer every pair counts its timeout (the row's seconds), a MISS
    out.append(Check("50 devices linked up at once: all 1,225 pairs peered",
                     fifty.seconds if fifty is not None else None, 2.0, True, "s",
                     f"{fifty.failed} pairs not peered within {fifty.seconds:.0f} s"
                     if fifty is not None and fifty.failed else ""))
    rss = [(a.extra.get("rss_mean_mib"), a.extra.get("rss_max_mib"), n) for n, a in lab.items()
           if a.extra.get("rss_mean_mib") is not None]
    worst = max(rss, default=None)
    out.append(Check("agent memory: RSS per device agent (mean, worst N)", worst[0] if worst else None, 30.0,
                     True, "MiB", f"max {worst[1]} MiB with {worst[2]} devices" if worst else ""))
    plain, aead = l2_pair(aggs)
    ratio = aead.extra.get("ratio") if aead else None
    if not isinstance(ratio, (int, float)):
        ratio = aead.per_second / plain.per_second if plain and aead and plain.per_second else None
    out.append(Check("AEAD ÷ plain frames/s", ratio, 0.8, False))
    tcp = _find(aggs, "tunnel", "iperf3 TCP over tessera0")
    out.append(Check("TCP over tessera0 (iperf3)", tcp.per_second / 1e9 if tcp and tcp.per_second else None, 0.5,
                     False, "Gbit/s", f"{tcp.extra.get('retransmits')} retransmits, MSS {'/'.join(map(str, tcp.extra.get('mss') or ['?']))}"
                     if tcp else ""))
    rtt = _find(aggs, "tunnel", "ICMP echo over tessera0 (one at a time)")
    out.append(Check("added ping RTT over tessera0", rtt.extra.get("added_rtt_ms") if rtt else None, 0.5, True, "ms"))
    # bench/tunnel.py's steps, each against the agent's default in the same rounds (shown, not judged)
    for step, label in (("[socket, batch 1]", "1 frame per wakeup ÷ 256"), ("[ring, batch 256]", "rings ÷ socket")):
        a = _find(aggs, "tunnel", f"iperf3 TCP over tessera0 {step}")
        vs = a.extra.get("vs_default") or {} if a else {}
        out.append(Check(f"TCP over tessera0, {label}: Gbit/s", vs.get("gbits")))
        out.append(Check(f"TCP over tessera0, {label}: agents' CPU per frame", vs.get("cpu_per_frame")))
    # shown, not judged
    out.append(Check("TGT ÷ MIT AS with pre-auth, 1 message (no DB writes)",
                     _ratio(tessera(aggs, "TGT (auth with LLK)"), mit(aggs, MIT_AS1))))
    for exchange, anchor in ANCHOR.items():
        out.append(Check(f"{exchange} ÷ MIT {anchor} (stock config)",
                         _ratio(tessera(aggs, exchange), mit(aggs, anchor, "stock"))))
    for exchange in TESSERA:
        out.append(Check(f"{exchange} ÷ Python floor", _ratio(tessera(aggs, exchange), py)))
    out.append(Check("Python floor ÷ PAP floor (rlm_python3's own cost)", _ratio(py, pap)))
    return out


# ---------------------------------------------------------------- rendering

def conditions(started: float | None = None, load_at_start: list[str] | None = None, mode: str | None = None) -> dict:
    """The machine and software a run had: CPU, cores, memory, load, versions, date, commit."""
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), "0")
    fr = next((w.rstrip(",") for w in run("freeradius", "-v").split() if w[:1].isdigit() and w.count(".") >= 2), "?")
    dirty = run("git", "status", "--porcelain", "--untracked-files=no")
    return {
        "run": mode,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(int(mem) / 2 ** 20, 1),
        "load_at_start": load_at_start,
        "load_at_end": Path("/proc/loadavg").read_text().split()[:3],
        "kernel": platform.release(), "python": platform.python_version(),
        "freeradius": fr, "krb5": run("dpkg-query", "-W", "-f=${Version}", "krb5-kdc") or "?",
        "commit": (run("git", "rev-parse", "--short", "HEAD") or "?") + (" + uncommitted changes" if dirty else ""),
        "minutes": round((time.time() - started) / 60, 1) if started else None,
    }


def _num(v: float | None, fmt: str = ".1f") -> str:
    return "—" if v is None else format(v, fmt)


def _span(v: float | None, rng: tuple[float, float] | None, fmt: str = ".1f") -> str:
    if v is None:
        return "—"
    if rng is None or rng[0] == rng[1]:
        return format(v, fmt)
    return f"{format(v, fmt)} ({format(rng[0], fmt)}–{format(rng[1], fmt)})"


def render(rows: list[Row], cond: dict, plots: list[str], failed_parts: list[str] = ()) -> str:
    """results.md: the server-CPU table, the targets with PASS/MISS, the lab, l2, conditions."""
    aggs = aggregate(rows)
    out = ["# Benchmark results", "",
           f"One sitting on one machine: {cond.get('cpu', '?')}, {cond.get('cores', '?')} cores, "
           f"{cond.get('date', '?')}, commit {cond.get('commit', '?')}. Only ratios from this one run count "
           "(absolute figures move up to 2× between machines of this kind and ±10–40 % with other load).", ""]
    if "quick" in str(cond.get("run")):
        out += ["**A `--quick` smoke run: short runs, one round. Not figures to quote.**", ""]
    if failed_parts:
        out += ["**Parts that failed (their rows are missing or incomplete):** " + "; ".join(failed_parts), ""]
    out += ["## Targets", "", "| what | measured | target | verdict | note |", "|---|---|---|---|---|"]
    judged = checks(aggs)
    for c in judged:
        if c.target is not None:
            out.append(f"| {c.what} | {c.shown(c.value)} | {c.target_text()} | {c.verdict} | {c.note} |")
    out += ["", "Shown without a target:", "", "| what | measured |", "|---|---|"]
    for c in judged:
        if c.target is None:
            out.append(f"| {c.what} | {c.shown(c.value)} |")
    out += ["", "## Server CPU per exchange", "",
            "Median over the runs (range in brackets). Server CPU: all the server's processes and threads, "
            "from /proc, over the measured window, divided by the answers. Load generator: its own CPU per "
            "exchange (it must not be the bottleneck).", "",
            "| system | exchange | server CPU µs | per second | p50 ms | p99 ms | load generator µs | runs | failed |",
            "|---|---|---|---|---|---|---|---|---|"]
    for a in aggs:
        if a.suite in ("tessera", "mit-krb5", "freeradius"):
            out.append(f"| {a.system} | {a.exchange} | {_span(a.server_cpu_us, a.cpu_range)} | "
                       f"{_span(a.per_second, a.rate_range, ',.0f')} | {_num(a.p50_ms, '.2f')} | {_num(a.p99_ms, '.2f')} | "
                       f"{_num(a.client_cpu_us)} | {a.runs} | {a.failed} |")
    lab = lab_rows(aggs)
    if lab:
        out += ["", "## The lab: N devices linked up at once (one netlink batch), until every pair is peered", "",
                "| devices | pairs | first device peered s | all peered s | RSS mean MiB | RSS max MiB | failed pairs |",
                "|---|---|---|---|---|---|---|"]
        for a in lab:
            x = a.extra
            out.append(f"| {x.get('devices', '?')} | {x.get('sessions', a.count)} | {_num(x.get('first'), '.2f')} | "
                       f"{_num(a.seconds if not a.failed else None, '.2f')} | {_num(x.get('rss_mean_mib'))} | "
                       f"{_num(x.get('rss_max_mib'))} | {a.failed} |")
    plain, aead = l2_pair(aggs)
    if plain or aead:
        out += ["", "## Peer data path: frames/s between two devices", "",
                "| frames | per second (median, range) | rounds |", "|---|---|---|"]
        for a in (plain, aead):
            if a:
                out.append(f"| {a.exchange} | {_span(a.per_second, a.rate_range, ',.0f')} | "
                           f"{a.extra.get('rounds', a.runs)} |")
    tunnel = [a for a in aggs if a.suite == "tunnel"]
    if tunnel:
        out += ["", "## The secured link: tessera0 and the plain path between the same two devices", "",
                "| path | what | median (range over rounds) | retransmits | MSS | agent RSS MiB |",
                "|---|---|---|---|---|---|"]
        for a in tunnel:
            x = a.extra
            if a.exchange.startswith("ICMP"):
                value = f"avg {_num(x.get('avg_ms'), '.3f')} ms" + (
                    f", added {_num(x.get('added_rtt_ms'), '.3f')} ms" if x.get("added_rtt_ms") is not None else "")
            elif "UDP" in a.exchange:
                value = f"{_span(a.per_second, a.rate_range, ',.0f')} datagrams/s of {x.get('size', '?')} B"
            else:
                value = f"{_span(a.per_second / 1e9 if a.per_second else None, [v / 1e9 for v in a.rate_range] if a.rate_range else None, '.2f')} Gbit/s"
            rss = [v for v in x.get("agent_rss_mib") or [] if v is not None]
            out.append(f"| {a.system} | {a.exchange} | {value} | {x.get('retransmits', '')} | "
                       f"{'/'.join(map(str, x.get('mss') or [])) } | {_num(max(rss), '.1f') if rss else ''} |")
    if plots:
        out += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    out += ["", "## Conditions", "", "| | |", "|---|---|"]
    out += [f"| {k} | {' '.join(v) if isinstance(v, list) else v} |" for k, v in cond.items() if v is not None]
    return "\n".join(out) + "\n"


def table(rows: list[Row]) -> str:
    """The console table: targets and ratios."""
    lines = [f"{'what':<62} {'measured':>12} {'target':>12}  verdict"]
    for c in checks(aggregate(rows)):
        lines.append(f"{c.what:<62} {c.shown(c.value):>12} {c.target_text():>12}  {c.verdict}")
    return "\n".join(lines)


def plot(rows: list[Row], out: Path) -> list[str]:
    """The PNGs: CPU per exchange (grouped bars), the lab curve, RSS per device, l2 frames/s.
    Returns the files written (a plot without data is skipped)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aggs = aggregate(rows)
    written = []

    def save(fig, name: str) -> None:
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))

    def bar_err(a: Agg | None) -> tuple[float, list[float]]:
        if a is None or a.server_cpu_us is None:
            return float("nan"), [0.0, 0.0]  # no bar
        lo, hi = a.cpu_range or (a.server_cpu_us, a.server_cpu_us)
        return a.server_cpu_us, [a.server_cpu_us - lo, hi - a.server_cpu_us]

    exchanges = [e for e in TESSERA if tessera(aggs, e)]
    if exchanges:
        series = [("Tessera (FreeRADIUS + rlm_python3, SQLite)", lambda e: tessera(aggs, e)),
                  ("MIT KDC, no DB writes", lambda e: mit(aggs, ANCHOR[e]) if e in ANCHOR else None),
                  ("MIT KDC, stock", lambda e: mit(aggs, ANCHOR[e], "stock") if e in ANCHOR else None),
                  ("FreeRADIUS + Python returning at once", lambda e: floor(aggs, PYTHON)),
                  ("FreeRADIUS PAP (floor)", lambda e: floor(aggs, PAP))]
        fig, ax = plt.subplots(figsize=(11, 5))
        width = 0.8 / len(series)
        for k, (label, get) in enumerate(series):
            vals = [bar_err(get(e)) for e in exchanges]
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(exchanges))]
            ax.bar(xs, [v for v, _ in vals], width, yerr=list(zip(*[err for _, err in vals])) or None,
                   capsize=2, label=label)
        labels = [e + (f"\nvs MIT {ANCHOR[e]}" if e in ANCHOR else "") for e in exchanges]
        ax.set_xticks(range(len(exchanges)), labels, fontsize=8)
        ax.set_ylabel("server CPU per exchange, µs")
        ax.set_title("Server CPU per exchange (median, range over runs), one sitting")
        ax.legend(fontsize=8)
        save(fig, "cpu_per_exchange.png")

    lab = [a for a in lab_rows(aggs) if isinstance(a.extra.get("completion_s"), list)]
    if lab:
        fig, ax = plt.subplots(figsize=(8, 5))
        for a in lab:
            done = sorted(a.extra["completion_s"])
            n = int(a.extra.get("devices", len(done)))
            ax.step([0.0] + done, list(range(len(done) + 1)), where="post", label=f"{n} devices")
        ax.axvline(2.0, color="grey", linestyle=":", label="target for 50 devices: 2 s")
        ax.set_xlabel("seconds since every link came up at once")
        ax.set_ylabel("devices peered with every other device")
        ax.set_title("Lab: link-up to all pairs peered")
        ax.legend(fontsize=8)
        save(fig, "lab_peering.png")

    rss = [a for a in lab_rows(aggs) if a.extra.get("rss_mean_mib") is not None]
    if rss:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        labels = [str(a.extra.get("devices", "?")) for a in rss]
        xs = range(len(rss))
        ax.bar([x - 0.2 for x in xs], [a.extra["rss_mean_mib"] for a in rss], 0.4, label="mean")
        ax.bar([x + 0.2 for x in xs], [a.extra.get("rss_max_mib") or 0 for a in rss], 0.4, label="max")
        ax.axhline(30, color="grey", linestyle=":", label="target 30 MiB")
        ax.set_xticks(list(xs), labels)
        ax.set_xlabel("devices in the lab")
        ax.set_ylabel("agent RSS once peered, MiB")
        ax.set_title("Memory per device agent")
        ax.legend(fontsize=8)
        save(fig, "rss_per_device.png")

    plain, aead = l2_pair(aggs)
    if plain or aead:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        shown = [a for a in (plain, aead) if a and a.per_second is not None]
        errs = [[a.per_second - (a.rate_range or (a.per_second,) * 2)[0] for a in shown],
                [(a.rate_range or (a.per_second,) * 2)[1] - a.per_second for a in shown]]
        ax.bar(range(len(shown)), [a.per_second for a in shown], yerr=errs, capsize=4,
               color=["tab:grey", "tab:blue"][:len(shown)])
        ax.set_xticks(range(len(shown)), [a.exchange for a in shown], fontsize=8)
        ax.set_ylabel("frames/s (median, range over rounds)")
        ax.set_title("Peer data path, alternated and repeated")
        save(fig, "l2_frames.png")
    return written


def write_results(rows: list[Row], out: Path, cond: dict, failed_parts: list[str] = ()) -> list[str]:
    """results.md, results.json and the plots into ``out``; returns the plot files."""
    out.mkdir(parents=True, exist_ok=True)
    plots = plot(rows, out)
    (out / "results.md").write_text(render(rows, cond, plots, failed_parts))
    aggs = aggregate(rows)
    doc = {"conditions": cond, "failed_parts": list(failed_parts),
           "checks": [{**asdict(c), "verdict": c.verdict} for c in checks(aggs)],
           "rows": [asdict(r) for r in rows]}
    (out / "results.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return plots


# ---------------------------------------------------------------- running

def run_part(part: Part, rows_file: Path, quick: bool, python: str = sys.executable) -> int:
    """One script, its output passed through; its exit code (127 when it is not there)."""
    script = HERE / part.script
    if not script.exists():
        print(f"== {part.name}: {script} is missing", file=sys.stderr)
        return 127
    cmd = [python, str(script), *(part.quick if quick else part.args), "--json", str(rows_file)]
    print(f"\n== {part.name}: {' '.join(cmd[1:])}", flush=True)
    env = dict(os.environ, PATH="/usr/sbin:/sbin:" + os.environ.get("PATH", "/usr/bin:/bin"))
    return subprocess.run(cmd, cwd=REPO, env=env).returncode


def schedule(rounds: int, parts: tuple[Part, ...] | None = None) -> list[Part]:
    """The fixed order: the per-round parts once each per round, reversed every other round,
    then the parts that run once."""
    parts = PARTS if parts is None else parts
    per_round = [p for p in parts if p.per_round]
    order = []
    for r in range(rounds):
        order += per_round if r % 2 == 0 else per_round[::-1]
    return order + [p for p in parts if not p.per_round]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short smoke run of every part (one round)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the server-CPU parts")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--rows", help="render from this JSON-lines file of rows; run nothing")
    ap.add_argument("--keep-rows", help="also append the rows measured to this file")
    a = ap.parse_args(argv)
    started = time.time()
    load_at_start = Path("/proc/loadavg").read_text().split()[:3]
    failed: list[str] = []
    if a.rows:
        rows = read_rows(a.rows)
    else:
        with tempfile.TemporaryDirectory(prefix="tessera-suite-") as d:
            rows_file = Path(d) / "rows.jsonl"
            rows_file.touch()
            for part in schedule(1 if a.quick else a.rounds):
                rc = run_part(part, rows_file, a.quick)
                if rc != 0 and part.name not in failed:
                    failed.append(part.name)
                    print(f"== {part.name} FAILED (exit {rc})", file=sys.stderr, flush=True)
            rows = read_rows(rows_file)
            if a.keep_rows:
                append_rows(a.keep_rows, rows)
    out = Path(a.out)
    mode = "--quick (a smoke run, not figures to quote)" if a.quick else f"full, {a.rounds} rounds"
    cond = conditions(None, None, f"rendered from {a.rows}") if a.rows else conditions(started, load_at_start, mode)
    plots = write_results(rows, out, cond, failed)
    print("\n" + table(rows))
    print(f"\nwrote {out / 'results.md'}, {out / 'results.json'}" + "".join(f", {Path(p).name}" for p in plots))
    if failed:
        print("FAILED parts: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
