"""The suite's gate: a real-part test that cannot run is a failure where it must run.

How this works
--------------
Tests that need real parts (root, network namespaces, FreeRADIUS, hostapd, wpa_supplicant,
eapol_test, tcpdump, PostgreSQL, iperf3, bird2, tshark) say so with ``@needs(...)`` or ``require(...)``;
:func:`missing` names the first part that is absent, in words an engineer can act on: *not
root*, *freeradius is in /usr/sbin but /usr/sbin is not on PATH*, *Debian package eapoltest is
not installed*.

In **strict** mode -- as root (CI, ``./tools/test``) or with ``TESSERA_STRICT=1`` -- every
skipped test is reported as a *failure* carrying that one line, so the suite cannot go green
with real-part tests skipped. As a normal user the tests skip, and the summary says loudly how
many did and why. ``TESSERA_STRICT=0`` turns strict mode off (for running a unit test as root
on a machine without the Debian packages; CI never sets it).

Loaded by the root ``conftest.py`` (``pytest_plugins``); ``tests/unit/test_gate.py`` runs it
in a child pytest to show a skip failing the run.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

# command -> the Debian package that provides it (what tools/bootstrap installs)
PACKAGES = {
    "freeradius": "freeradius",
    "radclient": "freeradius-utils",
    "hostapd": "hostapd",
    "hostapd_cli": "hostapd",
    "wpa_supplicant": "wpasupplicant",
    "wpa_cli": "wpasupplicant",
    "eapol_test": "eapoltest",
    "nft": "nftables",
    "tcpdump": "tcpdump",
    "ip": "iproute2",
    "sysctl": "procps",
    "krb5kdc": "krb5-kdc",
    "kdb5_util": "krb5-kdc",
    "kadmin.local": "krb5-admin-server",
    "krb5-config": "libkrb5-dev",
    "gcc": "gcc",
    "iperf3": "iperf3",
    "bird": "bird2",
    "birdc": "bird2",
    "tshark": "tshark",
    "ping": "iputils-ping",
}
RLM_PYTHON3 = Path("/usr/lib/freeradius/rlm_python3.so")
# "postgresql": the server binaries, which Debian keeps off PATH (private clusters: lab/postgres.py)
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
SBIN = ("/usr/sbin", "/sbin")


def strict() -> bool:
    """True where a skip must fail the run: as root, unless TESSERA_STRICT=0; or TESSERA_STRICT=1."""
    flag = os.environ.get("TESSERA_STRICT")
    if flag in ("0", "1"):
        return flag == "1"
    return os.geteuid() == 0


def missing(*needs: str) -> str | None:
    """The first of ``needs`` ("root" or a command name) that is absent, as one line; None if
    everything is there."""
    for need in needs:
        if need == "root":
            if os.geteuid() != 0:
                return "not root: namespace and FreeRADIUS tests need root (run ./tools/test as root)"
            continue
        if need == "postgresql":
            if not (POSTGRES_BIN / "postgres").exists() or not (POSTGRES_BIN / "initdb").exists():
                return (f"{POSTGRES_BIN}/postgres not found: Debian package postgresql (15) is not installed "
                        f"(tools/bootstrap installs it)")
            continue
        if shutil.which(need) is None:
            in_sbin = [d for d in SBIN if os.access(os.path.join(d, need), os.X_OK)]
            if in_sbin:
                return (f"{need} is in {in_sbin[0]} but {in_sbin[0]} is not on PATH "
                        f"(root's PATH lacks it here; ./tools/test adds it)")
            pkg = PACKAGES.get(need, need)
            return f"{need} not found: Debian package {pkg} is not installed (tools/bootstrap installs it)"
        if need == "freeradius" and not RLM_PYTHON3.exists():
            return f"{RLM_PYTHON3} not found: Debian package freeradius-python3 is not installed"
    return None


def needs(*what: str) -> pytest.MarkDecorator:
    """Mark a test (or a module, as ``pytestmark``) as needing real parts."""
    why = missing(*what)
    return pytest.mark.skipif(why is not None, reason=why or "")


def require(*what: str) -> None:
    """In a fixture: skip (a failure in strict mode) when a real part is missing."""
    why = missing(*what)
    if why is not None:
        pytest.skip(why)


needs_root = needs("root", "ip")
needs_freeradius = needs("root", "freeradius", "radclient", "eapol_test")
LAB_PARTS = ("root", "ip", "sysctl", "freeradius", "radclient", "hostapd", "hostapd_cli", "wpa_supplicant",
             "nft", "tcpdump")
needs_lab = needs(*LAB_PARTS)
needs_postgres = needs("root", "postgresql")

_skipped: Counter = Counter()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.skipped or hasattr(rep, "wasxfail"):
        return
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if strict():
        rep.outcome = "failed"
        rep.longrepr = f"a skipped test fails the run as root / TESSERA_STRICT=1: {reason}"
    else:
        _skipped[reason] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _skipped:
        return
    tr = terminalreporter
    tr.section("REAL-PART TESTS SKIPPED", sep="!", red=True, bold=True)
    for reason, n in _skipped.most_common():
        tr.write_line(f"{n} skipped: {reason}", red=True)
    tr.write_line(f"{sum(_skipped.values())} tests did not run; as root (./tools/test, CI) each would be a failure",
                  red=True, bold=True)
