"""What every harness shares: instrumented imports, the seed corpus, and the libFuzzer command line.

How this works: a harness imports this module first (it imports nothing of Tessera), then imports
the code under test inside ``instrumented()`` so atheris adds coverage counters to every
``tessera.*`` module, builds its seeds from real encodings (``world.World``), and calls
``run(name, test_one, seeds)``. ``run`` writes the seeds to a fresh directory and hands libFuzzer
the command line: the user's flags (``-runs=N``, ``-max_total_time=S``, ``-seed=S``, ...), the
user's corpus directories (new finds are written to the first), then the seed directory.
A harness given a file instead of a directory runs that one input: ``python fuzz/fuzz_message.py
crash-<sha1>`` replays a crash.

The contract every harness checks: the decoder returns, or raises one of the errors it documents
(``tessera.errors.*``, the module's named errors). Anything else escapes ``test_one``; atheris
prints the traceback, libFuzzer writes the input to ``<artifact_prefix>crash-<sha1>`` and the
process exits non-zero. Invariants (round trips, a replay window's model) are plain asserts.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import sys
import tempfile
from typing import Callable, Iterable

import atheris

_cleanups: list[Callable[[], None]] = []


def _clean_up(*_) -> None:
    while _cleanups:
        try:
            _cleanups.pop()()
        except Exception:  # noqa: BLE001 -- leaving: nothing to report to
            pass


# libFuzzer ends a finished run with C exit(), which skips Python's atexit; a crash ends through
# sys.exit, which runs it. Register with both so temporary files and sockets always go.
_C_CLEAN_UP = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(_clean_up)
ctypes.CDLL("libc.so.6").__cxa_atexit(_C_CLEAN_UP, None, None)
atexit.register(_clean_up)


def on_exit(fn: Callable[[], None]) -> None:
    """Run ``fn`` when the harness ends, however libFuzzer ends it."""
    _cleanups.append(fn)


def instrumented():
    """Context manager: modules of the ``tessera`` package imported inside it get coverage counters."""
    return atheris.instrument_imports(include=["tessera"])


def write_seeds(directory: str, seeds: Iterable[bytes]) -> int:
    n = 0
    for n, seed in enumerate(seeds, 1):
        with open(os.path.join(directory, f"seed-{n:04d}"), "wb") as f:
            f.write(seed)
    return n


def run(name: str, test_one: Callable[[bytes], None], seeds: Iterable[bytes], max_len: int = 4096) -> None:
    """Start libFuzzer on ``test_one`` with ``seeds`` as the starting corpus (never returns)."""
    argv = list(sys.argv)
    flags = [a for a in argv[1:] if a.startswith("-")]
    paths = [a for a in argv[1:] if not a.startswith("-")]
    if paths and all(os.path.isfile(p) for p in paths):
        extra = []  # reproduce: run exactly the inputs given
    else:
        seed_dir = tempfile.mkdtemp(prefix=f"tessera-fuzz-{name}-")
        on_exit(lambda: shutil.rmtree(seed_dir, True))
        write_seeds(seed_dir, seeds)
        extra = [seed_dir]
    if not any(f.startswith("-max_len=") for f in flags):
        flags.append(f"-max_len={max_len}")
    atheris.Setup([argv[0], *flags, *paths, *extra], atheris.instrument_func(test_one))
    atheris.Fuzz()


def harness_main(name: str, make: Callable[[], tuple[Callable[[bytes], None], list[bytes]]], max_len: int = 4096) -> None:
    """``make()`` builds the world and returns (test_one, seeds); ``--seeds DIR`` only writes the seeds."""
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        _, seeds = make()
        os.makedirs(sys.argv[2], exist_ok=True)
        print(f"{write_seeds(sys.argv[2], seeds)} seeds written to {sys.argv[2]}")
        return
    test_one, seeds = make()
    run(name, test_one, seeds, max_len)
