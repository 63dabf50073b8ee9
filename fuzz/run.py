"""Run the harnesses: each in its own process, bounded by inputs and time; print what each did.

    python fuzz/run.py                                  # every harness, 1,000,000 inputs or 5 min each
    python fuzz/run.py --runs 5000 message ticket       # a quick look at two
    python fuzz/run.py --corpus /var/tmp/tessera-corpus  # keep what each run found, for the next

A harness that finds an input its decoder does not survive stops at once; the report holds the
traceback, the input (hex) and the command that replays it. Exit status 1 if any failed.
tests/unit/test_fuzz.py uses `run_harness` for the short run in CI.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
REPO = FUZZ.parent


def harnesses() -> list[str]:
    return sorted(p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.py"))


@dataclass
class Outcome:
    name: str
    passed: bool
    inputs: int  # inputs libFuzzer ran
    seconds: float
    coverage: int  # libFuzzer's "cov" (edges of tessera code reached) at the end
    corpus: int  # inputs kept for new coverage (seeds included)
    report: str  # the failure (traceback, reproducer) or the output's tail

    def line(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        rate = self.inputs / self.seconds if self.seconds else 0.0
        return (f"{self.name:<8} {verdict:<6} {self.inputs:>10,} inputs {self.seconds:7.1f} s "
                f"{rate:9,.0f}/s  cov {self.coverage:>4}  corpus {self.corpus:>5}")


def run_harness(name_or_script: str | Path, runs: int, workdir: Path, seconds: int = 0,
                corpus: Path | None = None, timeout: float | None = None, seed: int = 1) -> Outcome:
    """Run one harness for `runs` inputs (and at most `seconds`, if given) from its seeds (and
    `corpus`, where new finds are kept). libFuzzer's seed is fixed, so a failure reproduces."""
    script = Path(name_or_script)
    if not script.suffix:
        script = FUZZ / f"fuzz_{name_or_script}.py"
    name = script.stem.removeprefix("fuzz_")
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(script), f"-runs={runs}", f"-seed={seed}", f"-artifact_prefix={workdir}/",
           "-timeout=30", "-rss_limit_mb=2048", "-print_final_stats=1"]
    if seconds:
        cmd.append(f"-max_total_time={seconds}")
    if corpus is not None:
        corpus.mkdir(parents=True, exist_ok=True)
        cmd.append(str(corpus))
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout or (seconds + 600 if seconds else 3600))
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    done = re.search(r"^Done (\d+) runs", out, re.M)
    execs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", out)
    inputs = int(done.group(1)) if done else int(execs[-1]) if execs else 0
    covs = re.findall(r"\bcov: (\d+)", out)
    corps = re.findall(r"\bcorp: (\d+)/", out)
    cov, corp = (int(covs[-1]) if covs else 0), (int(corps[-1]) if corps else 0)
    finished = done is not None and (inputs == runs or seconds)
    if proc.returncode == 0 and finished:
        if "no interesting inputs were found" in out or "INITED cov:" not in out:
            return Outcome(name, False, inputs, elapsed, cov, corp,
                           f"{script.name}: ran without coverage (is the code instrumented?)\n{out[-3000:]}")
        return Outcome(name, True, inputs, elapsed, cov, corp, out[-2000:])
    report = [f"{script.name} failed (exit {proc.returncode}) after {inputs} inputs:", _excerpt(out)]
    for crash in sorted(workdir.glob("crash-*")) + sorted(workdir.glob("timeout-*")) + sorted(workdir.glob("oom-*")):
        data = crash.read_bytes()
        report.append(f"reproducer {crash.name} ({len(data)} bytes): {data[:2048].hex()}"
                      + (" ..." if len(data) > 2048 else ""))
        report.append(f"replay: {sys.executable} {script} {crash}")
    return Outcome(name, False, inputs, elapsed, cov, corp, "\n".join(report))


def _excerpt(out: str) -> str:
    """The uncaught exception and its traceback, or the output's tail."""
    i = out.find("=== Uncaught Python exception")
    return out[i:i + 4000] if i >= 0 else out[-4000:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help=f"harnesses (default: all of {', '.join(harnesses())})")
    p.add_argument("--runs", type=int, default=1_000_000, help="inputs per harness")
    p.add_argument("--seconds", type=int, default=300, help="time per harness (0: no limit)")
    p.add_argument("--corpus", type=Path, help="keep each harness's corpus in DIR/NAME (reused next time)")
    p.add_argument("--seed", type=int, default=1, help="libFuzzer's seed")
    p.add_argument("--artifacts", type=Path, help="where crashes are written (default: a temporary directory)")
    a = p.parse_args(argv)
    names = a.names or harnesses()
    unknown = set(names) - set(harnesses())
    if unknown:
        p.error(f"no harness {', '.join(sorted(unknown))}")
    failed = total = 0
    artifacts = a.artifacts or Path(tempfile.mkdtemp(prefix="tessera-fuzz-artifacts-"))
    for name in names:
        o = run_harness(name, a.runs, artifacts / name, a.seconds, a.corpus / name if a.corpus else None, seed=a.seed)
        total += o.inputs
        print(o.line(), flush=True)
        if not o.passed:
            failed += 1
            print(o.report, flush=True)
    print(f"{len(names)} harnesses, {total:,} inputs, {failed} failed")
    if not failed and a.artifacts is None:
        shutil.rmtree(artifacts, True)  # nothing to replay
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
