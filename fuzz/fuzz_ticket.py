"""Fuzz `tessera.ticket.open_ticket` with a fixed key ring of two versions (kvno 1 retiring, 2 current).

The first input byte picks what the rest is:
  even: a sealed ticket as received (header, nonce, ciphertext, tag) -- the hostile case;
  odd:  a ticket *body*, sealed here under the real key with a header of the chosen kind, so that
        the body parser behind the tag ("authentic but unparseable") is fuzzed too.
Bit 1 picks the expected class (DRT or TGT).

Contract: `open_ticket` returns a ticket of the class asked for, or raises `MalformedError`,
`UnsupportedVersionError`, `InvalidTicket` or `UnknownKeyVersionError`; `ticket_kvno` returns an
int or raises `MalformedError`; `check_validity` raises only `NotYetValidError` / `ExpiredError`.
A body that opens re-encodes to the bytes sealed.

    python fuzz/fuzz_ticket.py -runs=1000000 [CORPUS_DIR]
"""

import struct

import common

with common.instrumented():
    from tessera import ticket as tk
    from tessera.errors import (ExpiredError, InvalidTicket, MalformedError, NotYetValidError,
                                UnknownKeyVersionError, UnsupportedVersionError)
    import world

DOCUMENTED = (MalformedError, UnsupportedVersionError, InvalidTicket, UnknownKeyVersionError)
CLASSES = (tk.RegistrationTicket, tk.GrantingTicket)


def make():
    w = world.World()
    ring = w.realm.keyring
    kvnos = [k.kvno for k in ring.versions()]
    nonce = bytes(12)

    def test_one(data: bytes) -> None:
        if not data:
            return
        mode, rest = data[0], data[1:]
        cls = CLASSES[(mode >> 1) & 1]
        body = None
        if mode & 1:  # seal the body under a held key version, with this class's header
            kvno = kvnos[(mode >> 2) % len(kvnos)]
            header = struct.pack("!BBI", cls.KIND, tk.VERSION, kvno)
            body = rest
            blob = header + ring.sealer(kvno, cls.LABEL, world.T0).seal(nonce, body, header + ring.realm.encode())
        else:
            blob = rest
        try:
            tk.ticket_kvno(blob)
        except MalformedError:
            pass
        try:
            t = tk.open_ticket(ring, blob, cls, world.T0)
        except DOCUMENTED:
            return
        assert isinstance(t, cls), type(t)
        if body is not None:
            assert t.body() == body, "ticket body does not re-encode to the bytes sealed"
        repr(t)
        try:
            tk.check_validity(t.not_before, t.not_after, world.T0, 300, "ticket")
        except (NotYetValidError, ExpiredError):
            pass

    drt, tgt = tk.RegistrationTicket, tk.GrantingTicket
    seeds = [bytes([0]) + t for t in w.tickets()]  # as received (open as DRT)
    seeds += [bytes([2]) + t for t in w.tickets()]  # as received (open as TGT)
    seeds += [bytes([1 | 4 * i]) + drt(world.A, 3, world.T0, world.T0 + 86400, bytes(range(32))).body() for i in (0, 1)]
    seeds += [bytes([3 | 4 * i]) + tgt(world.B, 1, world.T0, world.T0 + 3600, world.T0 + 86400, bytes(32)).body()
              for i in (0, 1)]
    return test_one, seeds


if __name__ == "__main__":
    common.harness_main("ticket", make, max_len=600)
