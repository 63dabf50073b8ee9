"""Fuzz `tessera.message.decode`: every message type, requests, replies and peer frames.

Contract: `decode(data)` returns a message or raises `MalformedError` / `UnsupportedVersionError`
(the module's documented errors). Codecs are paired: a message that decodes re-encodes to exactly
the bytes it came from, `body()` is those bytes less the proof, and decoding with `expect` set to
its own type gives the same message while any other `expect` refuses it as malformed.

    python fuzz/fuzz_message.py -runs=1000000 [CORPUS_DIR]
"""

import common

with common.instrumented():
    from tessera import message as m
    from tessera.errors import MalformedError, UnsupportedVersionError
    import world

DOCUMENTED = (MalformedError, UnsupportedVersionError)
OTHER = {cls: tuple(c for c in m.MESSAGES.values() if c is not cls) for cls in m.MESSAGES.values()}


def test_one(data: bytes) -> None:
    try:
        msg = m.decode(data)
    except DOCUMENTED:
        return
    assert msg.encode() == data, "decode/encode is not a round trip"
    if msg.PROOF is not None:
        proof = getattr(msg, msg.PROOF)
        assert msg.body() + proof == data, "body() is not the bytes before the proof"
    assert m.decode(data, (type(msg),)).encode() == data
    try:
        m.decode(data, OTHER[type(msg)])
    except MalformedError:
        pass
    else:
        raise AssertionError(f"{type(msg).__name__} accepted where it was not expected")
    repr(msg)


def make():
    w = world.World()
    # the revocation query and list (world.py's devices never ask): A's query, and the realm's
    # signed answer naming a revoked device
    w.realm.revoke(w.enrol("SN-R-0000000003").device_id, world.T0, "fuzz seed")
    query = w.a.revocation_request(world.SERVER_ID, world.T0, w.rand(16))
    revocation = [query, w.service.handle(query, world.T0)]
    return test_one, list(w.messages.values()) + w.tickets() + revocation


if __name__ == "__main__":
    common.harness_main("message", make, max_len=4200)
