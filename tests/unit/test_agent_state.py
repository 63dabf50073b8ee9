"""The agent's state file at start: a valid one is restored; one that does not open (empty,
truncated, flipped, sealed for another key, oversized) is moved aside as `state.corrupt` with a
log line naming why, and the agent starts from enrolment without a traceback; one that cannot be
read at all stops the agent with exit code 1 and the reason.

Why move aside rather than refuse to start: everything in the state (LLK, DRT, STK, TGT) can be
had again by registering with the device key, which lives in the bundle, not in the state; an
unattended device that refused to start would keep its port closed until someone came by. The
unreadable bytes stay on disk for the operator, and the next save cannot overwrite them."""

import logging
import os

import pytest

from tessera.agent.daemon import MAX_STATE, Agent, main
from tessera.device import DeviceClient, State
from tessera.identity import DeviceKey
from tessera.node import SaveState
from tests.unit.conftest import SERVERS, T0, admit


@pytest.fixture
def device(realm, service, rand):
    """A generated-key device, registered and holding a TGT: its bundle and its sealed state."""
    bundle = realm.enrol_generated("SN-A", SERVERS, "s3cret", T0)
    client = DeviceClient(bundle, DeviceKey.from_pem(bundle.device_key_pem))
    admit(service, client, rand)
    return bundle, client, client.export_state(rand(12))


def start(bundle, state_dir, content: bytes | None) -> Agent:
    os.makedirs(state_dir, exist_ok=True)
    if content is not None:
        with open(os.path.join(state_dir, "state"), "wb") as f:
            f.write(content)
    return Agent("eth0", bundle, state_dir)


def test_agent_restores_a_valid_state_file(device, tmp_path, caplog):
    bundle, client, sealed = device
    caplog.set_level(logging.INFO, "tessera.agent")
    agent = start(bundle, str(tmp_path), sealed)
    assert agent.client.state is State.AUTHENTICATED
    assert agent.client.registration.llk == client.registration.llk
    assert agent.client.credentials.stk == client.credentials.stk and agent.client.credentials.tgt == client.credentials.tgt
    assert agent.node.status(T0)["registration"]["generation"] == 1
    assert open(tmp_path / "state", "rb").read() == sealed and not (tmp_path / "state.corrupt").exists()
    assert any("state restored (authenticated)" in r.getMessage() for r in caplog.records)
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)


def _other_device_state(realm, service, rand):
    """A valid state file, but sealed by another device (another key, another id)."""
    other = realm.enrol_generated("SN-OTHER", SERVERS, "s3cret", T0)
    c = DeviceClient(other, DeviceKey.from_pem(other.device_key_pem))
    admit(service, c, rand)
    return c.export_state(rand(12))


BROKEN = {
    "empty": (lambda s, o: b"", "invalid-ticket"),
    "truncated by one byte": (lambda s, o: s[:-1], "invalid-ticket"),
    "truncated to its nonce": (lambda s, o: s[:12], "invalid-ticket"),
    "one bit flipped": (lambda s, o: s[:40] + bytes([s[40] ^ 1]) + s[41:], "invalid-ticket"),
    "another device's": (lambda s, o: o, "invalid-ticket"),
    "text, not a state": (lambda s, o: b"registration=1\nllk=00\n", "invalid-ticket"),
    "oversized": (lambda s, o: s + b"\0" * MAX_STATE, "malformed"),
}


@pytest.mark.parametrize("how", list(BROKEN))
def test_agent_moves_an_unusable_state_file_aside_and_starts_from_enrolment(how, device, realm, service, rand,
                                                                          tmp_path, caplog):
    bundle, _, sealed = device
    make, reason = BROKEN[how]
    bad = make(sealed, _other_device_state(realm, service, rand))
    caplog.set_level(logging.INFO, "tessera.agent")
    agent = start(bundle, str(tmp_path), bad)
    # started, from enrolment: nothing half-restored
    assert agent.client.state is State.ENROLLED
    assert agent.client.registration is None and agent.client.credentials is None
    assert agent.client.next_action(T0) == "register"
    # the unreadable bytes are kept, whole, beside the new state, and the log says so and why
    assert open(tmp_path / "state.corrupt", "rb").read() == bad and not (tmp_path / "state").exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"unusable ({reason}:" in warnings[0]
    assert str(tmp_path / "state.corrupt") in warnings[0]
    assert not any("state restored" in r.getMessage() for r in caplog.records)
    # the next save writes a fresh state and leaves the corrupt copy alone
    agent.act([SaveState()])
    assert open(tmp_path / "state.corrupt", "rb").read() == bad
    again = DeviceClient(bundle, DeviceKey.from_pem(bundle.device_key_pem))
    again.import_state(open(tmp_path / "state", "rb").read())
    assert again.state is State.ENROLLED


def test_a_state_file_that_cannot_be_read_stops_the_agent_with_the_reason(device, tmp_path, capsys):
    bundle, _, sealed = device
    (tmp_path / "bundle.json").write_text(bundle.to_json())
    state_dir = tmp_path / "state-dir"
    (state_dir / "state").mkdir(parents=True)  # a directory where the file should be: not ours to move
    code = main(["run", "--interface", "eth0", "--bundle", str(tmp_path / "bundle.json"), "--state-dir", str(state_dir)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("tessera-agent: ") and "Is a directory" in err and str(state_dir / "state") in err
    assert "Traceback" not in err and (state_dir / "state").is_dir() and not (state_dir / "state.corrupt").exists()
    # the same command with a readable state gets past the state (to opening the interface, which
    # this unit test does not have): proven on the Agent itself, which main() builds first
    (state_dir / "state").rmdir()
    (state_dir / "state").write_bytes(sealed)
    assert Agent("eth0", bundle, str(state_dir)).client.state is State.AUTHENTICATED
