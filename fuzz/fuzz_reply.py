"""Fuzz what a device reads back from the realm: `DeviceClient.register_reply`, `ticket_reply`
(after an AuthRequest or a RenewRequest) and `revocation_reply`, fed a reply that anyone on the
RADIUS path could have written -- the Tessera-Reply of an Access-Accept, or the ErrorMessage of
an Access-Reject.

The first input byte picks the outstanding request (0 registration, 1 TGT, 2 renewal, 3
revocation query); the device built it with a fixed nonce, so the realm's real reply to it (made
once, when the world is made; the revocation list names a revoked device) is a seed that opens,
and mutations of it reach every check behind the framing.

Contract: the reply is taken (REGISTERED / AUTHENTICATED, holding what it brought; a revocation
list only if it answers the query, signed, and it changes no state or ticket) or refused with a
`TesseraError`, after which the device is back in the state it was in before the request and
still holds its old tickets. Nothing else escapes: the node treats only `TesseraError` as a
refusal.

    python fuzz/fuzz_reply.py -runs=1000000 [CORPUS_DIR]
"""

import common

with common.instrumented():
    from tessera import message as m
    from tessera.device import DeviceClient, State
    from tessera.errors import TesseraError
    import world

NONCE = bytes(range(16))


def make():
    w = world.World()
    dev = DeviceClient(w.realm.bundle(world.A, world.SERVERS, ""), world.device_key(world.A))
    held = (w.a.registration, w.a.credentials)
    kinds = ("register", "auth", "renew", "revocation")
    w.realm.revoke(w.enrol("SN-R-0000000003").device_id, world.T0, "fuzz seed")

    def start(kind: str) -> State:
        dev.registration, dev.credentials = held
        dev.state = State.AUTHENTICATED
        dev.abandon()
        if kind == "register":  # a second registration of A: newer than the first (the realm checks)
            dev.register_request(world.SERVER_ID, world.T0 + 1, NONCE)
        elif kind == "auth":
            dev.auth_request(world.SERVER_ID, world.T0, NONCE)
        elif kind == "revocation":
            dev.revocation_request(world.SERVER_ID, world.T0, NONCE)
        else:
            dev.renew_request(world.SERVER_ID, world.T0, NONCE)
        return State.AUTHENTICATED

    def test_one(data: bytes) -> None:
        if not data:
            return
        kind = kinds[data[0] % len(kinds)]
        fallback = start(kind)
        try:
            if kind == "revocation":
                got = dev.revocation_reply(data[1:], world.T0)
                assert isinstance(got, m.RevocationList) and got.request_nonce == NONCE and got.device_id == world.A
                assert dev.state is fallback and (dev.registration, dev.credentials) == held
            elif kind == "register":
                reg = dev.register_reply(data[1:], world.T0)
                assert dev.state is State.REGISTERED and dev.registration is reg and dev.credentials is None
            else:
                creds = dev.ticket_reply(data[1:], world.T0)
                assert dev.state is State.AUTHENTICATED and dev.credentials is creds
        except TesseraError:
            assert dev.state is fallback, f"refused reply left the device {dev.state.value}"
            assert (dev.registration, dev.credentials) == held, "a refused reply changed the tickets"

    seeds = []
    for i, kind in reversed(list(enumerate(kinds))):  # the realm's real answers to start()'s requests
        # (registration last: it supersedes the DRT the TGT requests present)
        start(kind)
        request = {"register": dev.register_request, "auth": dev.auth_request, "renew": dev.renew_request,
                   "revocation": dev.revocation_request}[kind](
            world.SERVER_ID, world.T0 + (kind == "register"), NONCE)
        seeds.append(bytes([i]) + w.service.handle(request, world.T0))
        seeds += [bytes([i]) + w.messages["error"], bytes([i]) + w.messages["error-plain"]]
    seeds += [bytes([1]) + w.messages["auth-a-reply"], bytes([0]) + w.messages["register-b-reply"]]
    return test_one, seeds


if __name__ == "__main__":
    common.harness_main("reply", make, max_len=4200)
