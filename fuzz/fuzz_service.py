"""Fuzz the server's side of a Tessera request: the FreeRADIUS module's `Plugin.authorize` with the
real `Service` of an in-memory realm behind it -- what radiusd runs for every Access-Request.

The input is the `Tessera-Message` a client sent. It reaches the plugin as rlm_python3 hands it
over: `User-Name` and the message split over `Tessera-Message` values of at most 247 bytes, as
`0x…` hex (a message longer than one RADIUS packet holds is still split, as a hostile client
could send it, and must be refused). Seeds are every request both devices sent (registration,
TGT, renewal, session) and the replies and peer frames (which a server must refuse).

Contract: `authorize` never raises and always returns an accept carrying `Tessera-Reply` values,
or a reject naming the core's reason (`Reply-Message` "<name>: ..." and `Tessera-Error`); never
the "internal error" reject, which means something other than a `TesseraError` escaped the core
for this input. Every returned list is an exact tuple of 2- or 3-tuples of strings
(docs/freeradius.md). The same request is never accepted twice (the replay cache), except a
RevocationQuery: it carries no proof and changes nothing, so it is answered every time.

    python fuzz/fuzz_service.py -runs=1000000 [CORPUS_DIR]
"""

import hashlib
import types

import common

with common.instrumented():
    from tessera import errors, message as m
    from tessera.plugin.adapter import Plugin
    from tessera.radius import attrs
    import world

RLM = types.SimpleNamespace(RLM_MODULE_REJECT=0, RLM_MODULE_FAIL=1, RLM_MODULE_OK=2, RLM_MODULE_HANDLED=3,
                            RLM_MODULE_NOOP=7, L_DBG=1, L_INFO=3, L_ERR=4, radlog=lambda level, text: None)


def error_names() -> set[str]:
    """Every reason the core can name: the taxonomy and its subclasses elsewhere (replay's quota)."""
    names, todo = set(), [errors.TesseraError]
    while todo:
        cls = todo.pop()
        names.add(cls.name)
        todo += cls.__subclasses__()
    return names


def make():
    w = world.World()
    plugin = Plugin(w.service, RLM, w.realm, clock=lambda: float(world.T0))
    accepted: set[bytes] = set()
    names = error_names()

    def test_one(data: bytes) -> None:
        pieces = [data[i:i + attrs.MAX_CHUNK] for i in range(0, len(data), attrs.MAX_CHUNK)] or [b""]
        pairs = (("User-Name", world.A),) + tuple(("Tessera-Message", attrs.to_hex(p)) for p in pieces)
        result = plugin.authorize(pairs)
        assert isinstance(result, tuple) and len(result) == 2, result
        rc, update = result
        assert set(update) == {"reply"} and isinstance(update["reply"], tuple), update
        for item in update["reply"]:
            assert isinstance(item, tuple) and len(item) in (2, 3) and all(isinstance(x, str) for x in item), item
        reply = dict((i[0], i[-1]) for i in update["reply"])
        if rc == RLM.RLM_MODULE_OK:
            assert "Tessera-Reply" in reply, update
            if data[1:2] == bytes([m.RevocationQuery.TYPE]):
                return  # no proof, nothing to replay: answered every time
            digest = hashlib.sha256(data).digest()
            assert digest not in accepted, "the same request was accepted twice"
            accepted.add(digest)
            return
        assert rc == RLM.RLM_MODULE_REJECT, rc
        message = reply.get("Reply-Message", "")
        assert message != "internal error", "a non-Tessera exception escaped the core (see the log of a replay)"
        assert message == "not a Tessera request" or message.split(":")[0] in names, message

    requests = [v for k, v in w.messages.items() if not k.endswith("-reply")]
    # fresh copies of the devices' requests, so the seeds include requests not yet seen
    fresh = [w.a.renew_request(world.SERVER_ID, world.T0, w.rand(16)), w.b.auth_request(world.SERVER_ID, world.T0, w.rand(16))]
    fresh.append(w.a.revocation_request(world.SERVER_ID, world.T0, w.rand(16)))
    return test_one, fresh + requests + [v for k, v in w.messages.items() if k.endswith("-reply")] + [b"", bytes(4000)]


if __name__ == "__main__":
    common.harness_main("service", make, max_len=4200)
