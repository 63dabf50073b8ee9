"""A short coverage-guided run of every atheris harness in fuzz/, and the findings they made.

Each harness runs in a child process (libFuzzer ends the process when it is done) for a bounded
number of inputs from its seeds, with a fixed libFuzzer seed so a failure reproduces. A harness
fails on any exception its decoder does not document and on any broken invariant; the test then
prints the traceback, the input (hex) and the command that replays it. Long runs are described
in fuzz/README.md.

Beside them: the runner catches a planted crash (so a green run means the harnesses ran and
found nothing, not that crashes go unseen), every decoder the issue names has its harness, and
one regression test per finding, each beside the input that must still be accepted.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from tessera.errors import MalformedError
from tessera.identity import BootstrapBundle
from tessera.radius import attrs

REPO = Path(__file__).resolve().parents[2]
FUZZ = REPO / "fuzz"
_spec = importlib.util.spec_from_file_location("tessera_fuzz_run", FUZZ / "run.py")
RUNNER = sys.modules.setdefault("tessera_fuzz_run", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(RUNNER)
HARNESSES = RUNNER.harnesses()
RUNS = 5000  # inputs per harness: ~0.3-2 s each on this machine
# The decoders issue 8 names, and where each is fuzzed.
DECODERS = {
    "message": "tessera.message.decode",
    "ticket": "tessera.ticket.open_ticket",
    "record": "tessera.record.RecordReceiver.open",
    "attrs": "tessera.radius.attrs.join_from_hex / split_message",
    "ctrl": "tessera.agent.ctrl (wpa_supplicant / hostapd replies and events)",
    "l2": "tessera.agent.l2.unpack_frame → Node.handle(FrameReceived)",
    "status": "tessera.agent.daemon.StatusSocket + Agent.request",
    "bundle": "tessera.identity.BootstrapBundle.from_json",
    "state": "tessera.device.DeviceClient.import_state (the agent's state file)",
    "service": "tessera.plugin.adapter.Plugin.authorize → Service (the server's request path)",
    "reply": "tessera.device.DeviceClient register_reply / ticket_reply",
}


def run_harness(script: Path, runs: int, workdir: Path) -> tuple[bool, str]:
    """fuzz/run.py's runner: (passed, report with the traceback, the input and how to replay it)."""
    o = RUNNER.run_harness(script, runs, workdir, timeout=120)
    return o.passed, o.report


def test_fuzz_every_named_decoder_has_a_harness():
    assert importlib.util.find_spec("atheris") is not None, "atheris is missing: run tools/bootstrap (extras [test])"
    assert set(HARNESSES) == set(DECODERS), f"harnesses {HARNESSES} vs decoders {sorted(DECODERS)}"


@pytest.mark.parametrize("name", HARNESSES)
def test_fuzz_harness_short_run(name, tmp_path):
    passed, report = run_harness(FUZZ / f"fuzz_{name}.py", RUNS, tmp_path)
    assert passed, report


PLANTED = '''
import sys
sys.path.insert(0, {fuzz!r})
import common

with common.instrumented():
    from tessera.radius import attrs


def test_one(data):
    try:
        attrs.join_from_hex([data.decode("latin-1")])
    except attrs.BadHexError:
        pass
    if data[:6] == b"0xbeef":
        raise KeyError("planted: an undocumented exception")


common.harness_main("planted", lambda: (test_one, [b"0xbe", b"0xbeee00"]))
'''


def test_fuzz_runner_reports_a_planted_crash_with_its_reproducer(tmp_path):
    script = tmp_path / "fuzz_planted.py"
    script.write_text(PLANTED.format(fuzz=str(FUZZ)))
    passed, report = run_harness(script, 200_000, tmp_path / "out")
    assert not passed
    assert "KeyError: 'planted: an undocumented exception'" in report
    hexed = re.search(r"reproducer crash-\w+ \(\d+ bytes\): ([0-9a-f]+)", report)
    assert hexed and bytes.fromhex(hexed.group(1)).startswith(b"0xbeef"), report
    assert f"replay: {sys.executable} {script}" in report
    # and the same harness without the planted bug runs clean
    script.write_text(PLANTED.format(fuzz=str(FUZZ)).replace('raise KeyError("planted: an undocumented exception")',
                                                             "pass"))
    passed, report = run_harness(script, 20_000, tmp_path / "out2")
    assert passed, report


# -- findings ------------------------------------------------------------------------------------
# fuzz_attrs: rlm_python3 octets were parsed with bytes.fromhex, which skips whitespace, so
# "0x 01" was taken for what FreeRADIUS never writes (its docstring promised BadHexError).

@pytest.mark.parametrize("value", ["0x ", "0x 01", "0x01 02", "0x0102\n", "0x\t0a", " 0x01", "0x01\x0b"])
def test_fuzz_finding_from_hex_refuses_whitespace(value):
    assert attrs.from_hex("0x0102") == b"\x01\x02" and attrs.from_hex("0X") == b""  # FreeRADIUS's form
    with pytest.raises(attrs.BadHexError):
        attrs.from_hex(value)


# fuzz_bundle: BootstrapBundle.from_json let AttributeError (a JSON list or number instead of an
# object, a PEM that is a number), RecursionError (nesting) and OverflowError (a port of 1e999)
# escape, which `tessera-agent run` does not catch (a traceback instead of "bad bundle"), and took
# ports outside 1..65535.

def _bundle_dict(realm, port=1812) -> dict:
    from tests.unit.conftest import SERVERS
    d = json.loads(realm.bundle("SN-BUNDLE", SERVERS, "s3cret").to_json())
    return {**d, "servers": [{"id": "radius-a", "host": "192.0.2.1", "port": port}]}


BAD_BUNDLES = {
    "a JSON list": lambda d: "[]",
    "a JSON number": lambda d: "7",
    "nested 100000 deep": lambda d: "[" * 100_000 + "]" * 100_000,
    "port 1e999": lambda d: json.dumps({**d, "servers": [{**d["servers"][0], "port": 1e999}]}),
    "port 0": lambda d: json.dumps({**d, "servers": [{**d["servers"][0], "port": 0}]}),
    "port 65536": lambda d: json.dumps({**d, "servers": [{**d["servers"][0], "port": 65536}]}),
    "a PEM that is a number": lambda d: json.dumps({**d, "device_key_pem": 5}),
}


@pytest.mark.parametrize("what", list(BAD_BUNDLES))
def test_fuzz_finding_bundle_loader_refuses_with_malformed(realm, what):
    d = _bundle_dict(realm)
    good = BootstrapBundle.from_json(json.dumps(d))  # the same bundle, unspoilt, loads
    assert good.device_id == "SN-BUNDLE" and good.servers[0].port == 1812
    assert BootstrapBundle.from_json(json.dumps(_bundle_dict(realm, 65535))).servers[0].port == 65535
    with pytest.raises(MalformedError):
        BootstrapBundle.from_json(BAD_BUNDLES[what](d))
