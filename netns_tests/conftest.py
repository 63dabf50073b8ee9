"""Fixtures for namespace tests (run as root).

How this works
--------------
``lab`` gives each test its own :class:`~tessera.lab.netns.Lab` (unique ``ts<pid>-<hex>``
names).  On teardown it closes the lab — also when the test failed — and then *asserts* that
every namespace it made and every process it started is gone.  When the test failed, the
lab's work directory (switch pcap, hostapd / wpa_supplicant / FreeRADIUS logs, configs) is
kept under ``/tmp/tessera-netns-failures/<test>/`` and its path printed; on success it is
deleted.  ``make_testbed(n)`` builds a RADIUS + switch + n devices testbed inside that lab.
Tests that need no root (pure parts of lab/ and agent/) live here too and skip nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import stat
import sys
import time
from pathlib import Path

import pytest

from tessera.lab.netns import Lab, list_netns  # noqa: E402

FAIL_DIR = Path("/tmp/tessera-netns-failures")

from tests.gate import LAB_PARTS, needs_lab, needs_root, require  # noqa: E402,F401 -- re-exported for the tests


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie we already reaped would be gone; a live child is not.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


@pytest.fixture
def lab(request):
    """A Lab for one test; torn down and checked for leftovers afterwards."""
    require(*LAB_PARTS)
    lab = Lab()
    pids: list[int] = []
    orig_spawn = lab.spawn

    def spawn(*a, **kw):
        p = orig_spawn(*a, **kw)
        pids.append(p.pid)
        return p

    lab.spawn = spawn  # remember every PID, also of processes a test stopped itself
    yield lab
    made = list(lab.namespaces)
    for ns in made:  # and every process inside the lab's namespaces: what the spawned ones started too
        cp = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        pids += [int(x) for x in cp.stdout.split()] if cp.returncode == 0 else []
    lab.close()
    failed = any(getattr(request.node, f"rep_{w}", None) is not None
                 and getattr(request.node, f"rep_{w}").failed for w in ("setup", "call"))
    if failed:
        dest = FAIL_DIR / request.node.name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(lab.workdir, dest, ignore_dangling_symlinks=True, symlinks=True,
                        ignore=lambda d, names: [n for n in names if stat.S_ISSOCK(os.lstat(os.path.join(d, n)).st_mode)])
        print(f"\nkept pcap and logs of {request.node.name} in {dest}")
    shutil.rmtree(lab.workdir, ignore_errors=True)
    left_ns = [ns for ns in made if ns in list_netns()]
    deadline = time.monotonic() + 3
    while (left_pids := [p for p in pids if not _pid_gone(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left_ns, f"namespaces left behind: {left_ns}"
    assert not left_pids, f"processes left behind: {left_pids}"


@pytest.fixture
def make_testbed(lab):
    """Factory: ``make_testbed(n)`` -> Testbed with n devices (closed at teardown)."""
    from netns_tests.testbed import Testbed
    made = []

    def make(n: int, **kw):
        tb = Testbed(lab, n, **kw)
        made.append(tb)
        return tb

    yield make
    for tb in made:
        tb.close()
