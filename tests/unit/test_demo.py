"""The one-process demo runs the whole flow to the end and says what happened."""

import io

from tessera.demo import Demo


def test_demo_runs_every_step(tmp_path):
    out = io.StringIO()
    assert Demo(str(tmp_path), out).run() == 0
    text = out.getvalue()
    for step in ("enrol", "register", "tgt", "session", "traffic", "replay", "renew", "rotate", "revoke", "expiry"):
        assert f"] {step}" in text, step
    assert "impostor claiming switch-a: rejected (bad-proof" in text
    assert "replayed to radius-2: rejected (wrong-server" in text
