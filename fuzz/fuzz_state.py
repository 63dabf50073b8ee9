"""Fuzz `DeviceClient.import_state`: the agent's sealed state file (<state-dir>/state).

The first input byte picks what the rest is:
  even: the file as found on disk (nonce, ciphertext, tag) -- a corrupt or planted file;
  odd:  the *plaintext* state, sealed here under the device's real state key, so that the parser
        behind the tag (an authentic file from another version, or a bug in export) is fuzzed too.

Contract: `import_state` installs the state or raises a `TesseraError` (`InvalidTicket`,
`MalformedError`, `StateError`): the agent moves such a file aside and registers afresh. Any
other exception would escape `Agent.__init__`, and the agent would refuse to start until someone
removed the file. A state it installs is consistent (the client's state names what it holds) and
survives `export_state` → `import_state` unchanged. A refused file leaves the client as it was.

    python fuzz/fuzz_state.py -runs=1000000 [CORPUS_DIR]
"""

import common

with common.instrumented():
    from tessera.device import DeviceClient, State
    from tessera.errors import TesseraError
    from tessera.seal import Sealer
    import world


def make():
    w = world.World()
    a = w.a
    key = a._state_key()
    before = (a.registration, a.credentials, a.state)
    fresh = DeviceClient(w.realm.bundle(world.A, world.SERVERS, ""), world.device_key(world.A))

    def test_one(data: bytes) -> None:
        if not data:
            return
        if data[0] & 1:
            blob = Sealer(key).seal(bytes(12), data[1:], world.A.encode())
        else:
            blob = data[1:]
        dev = fresh
        dev.registration, dev.credentials, dev.state = before
        try:
            dev.import_state(blob)
        except TesseraError:
            assert (dev.registration, dev.credentials, dev.state) == before, "a refused file changed the state"
            return
        reg, creds = dev.registration, dev.credentials
        want = State.AUTHENTICATED if creds else State.REGISTERED if reg else State.ENROLLED
        assert dev.state is want, (dev.state, want)
        again = dev.export_state(bytes(12))
        dev.import_state(again)
        assert (dev.registration, dev.credentials) == (reg, creds), "export → import changed the state"

    seeds = [bytes([0]) + a.export_state(w.rand(12)), bytes([0]) + w.b.export_state(w.rand(12))]
    plain = Sealer(key).open(a.export_state(bytes(12)), world.A.encode())
    seeds += [bytes([1]) + plain, bytes([1, 1, 0, 0]), bytes([1, 1, 1, 0]) + plain[3:], bytes([1, 2, 0, 0])]
    return test_one, seeds


if __name__ == "__main__":
    common.harness_main("state", make, max_len=4500)
