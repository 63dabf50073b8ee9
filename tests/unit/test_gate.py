"""The suite's gate (tests/gate.py), run in a child pytest: in strict mode (root, CI) a skipped
test fails the run with its one-line reason; as a normal user it skips and says so loudly."""

import os

import pytest

from tests import gate

pytest_plugins = ["pytester"]

SUITE = """
import pytest
from tests.gate import needs

def test_runs():
    assert True

@needs("tessera-no-such-command")
def test_needs_a_missing_part():
    pass

def test_skips_itself():
    pytest.skip("hostapd not found: Debian package hostapd is not installed")
"""


def run(pytester, monkeypatch, strict: str):
    monkeypatch.setenv("TESSERA_STRICT", strict)
    pytester.makepyfile(test_child=SUITE)
    return pytester.runpytest_subprocess("-p", "tests.gate", "-p", "no:cacheprovider",
                                         "--rootdir", str(pytester.path))


@pytest.fixture(autouse=True)
def repo_on_path(monkeypatch):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    monkeypatch.setenv("PYTHONPATH", repo + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_gate_strict_turns_every_skip_into_a_failure(pytester, monkeypatch):
    result = run(pytester, monkeypatch, "1")
    result.assert_outcomes(passed=1, failed=1, errors=1)  # a skip in setup reports as an error
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*fails the run as root*tessera-no-such-command not found*",
                                 "*fails the run as root*Debian package hostapd is not installed*"])


def test_gate_lenient_skips_loudly_with_the_count(pytester, monkeypatch):
    result = run(pytester, monkeypatch, "0")
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*REAL-PART TESTS SKIPPED*", "2 tests did not run*"])


def test_gate_names_what_is_missing(monkeypatch, tmp_path):
    assert gate.missing("ip") is None  # present: nothing to say
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    tool = sbin / "tessera-sbin-tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setattr(gate, "SBIN", (str(sbin),))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert gate.missing("tessera-sbin-tool") == (
        f"tessera-sbin-tool is in {sbin} but {sbin} is not on PATH (root's PATH lacks it here; ./tools/test adds it)")
    monkeypatch.setitem(gate.PACKAGES, "tessera-absent", "tessera-pkg")
    assert gate.missing("tessera-absent") == (
        "tessera-absent not found: Debian package tessera-pkg is not installed (tools/bootstrap installs it)")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert gate.missing("root", "ip").startswith("not root")
    monkeypatch.delenv("TESSERA_STRICT", raising=False)
    assert not gate.strict()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert gate.strict()
