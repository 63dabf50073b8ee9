"""Fuzz what arrives on the device segment: Ethernet frames through `agent.l2.unpack_frame` into
the node (`tessera.node.Node.handle(FrameReceived)`), which decodes every 0x88B5 payload --
PeerAnnounce, PeerHello, PeerTicket, PeerFinished, PeerConfirm, PeerData records and error frames.

Two real nodes, A and B (A's id is lower: A initiates), with their ports up and TGTs from an
in-memory realm. The first input byte picks how far their handshake has gone before the fuzzed
frames arrive -- 0: they have only announced; 1: A sent its hello and B its PeerTicket (B's
session request answered by the realm); 2: the session is established both ways -- so frames
reach every state. Reaching a stage replays what the nodes said when the world was made (their
randomness is a counter, so they say it again byte for byte). The rest of the input is up to 32
frames: a byte choosing the receiving node, a two-byte length, the whole Ethernet frame
(destination, source, EtherType, payload). Seeds are the frames the nodes sent each other.

Contract: `unpack_frame` returns None or (dst, src, payload) that `pack_frame` puts back together
(for payloads it can send); `Node.handle` never raises, for any frame in any state, and returns
only actions of its own kinds, with frames it sends no longer than one Ethernet payload.

    python fuzz/fuzz_l2.py -runs=1000000 [CORPUS_DIR]
"""

import common

with common.instrumented():
    from tessera import message as m
    from tessera.agent import l2
    from tessera.node import (Deliver, FrameReceived, Log, Milestone, RadiusRequest, SaveState, SendFrame,
                              StartAdmission)
    import world

MAC_A, MAC_B, MAC_X = world.MAC_A, world.MAC_B, world.MAC_X
ACTIONS = (StartAdmission, RadiusRequest, SendFrame, Deliver, SaveState, Log, Milestone)
T = world.Stages.T


def check(actions) -> None:
    for x in actions:
        assert isinstance(x, ACTIONS), type(x)
        if isinstance(x, SendFrame):
            assert len(x.payload) <= l2.MAX_PAYLOAD, len(x.payload)


def make():
    stages = world.Stages(world.World())

    def test_one(data: bytes) -> None:
        if not data:
            return
        a, b = stages.build(data[0] % 3)
        i, n = 1, 0
        while i + 3 <= len(data) and n < 32:
            to, size = data[i], int.from_bytes(data[i + 1:i + 3], "big") % 1600
            frame = data[i + 3:i + 3 + size]
            i, n = i + 3 + size, n + 1
            parts = l2.unpack_frame(frame)
            if parts is None:
                continue
            dst, src, payload = parts
            if len(payload) <= l2.MAX_PAYLOAD:
                assert l2.pack_frame(dst, src, payload) == frame
            node = a if to & 1 else b
            check(node.handle(FrameReceived(l2.mac_str(src), payload), T + n))
        check(a.handle(None, T + 40))
        check(b.handle(None, T + 40))

    def frame(to_a: bool, src: str, dst: str, payload: bytes) -> bytes:
        f = l2.pack_frame(l2.mac_bytes(dst), l2.mac_bytes(src), payload)
        return bytes([int(to_a)]) + len(f).to_bytes(2, "big") + f

    seeds = []
    for stage in (0, 1, 2):
        for src, dst, payload in stages.sent:
            seeds.append(bytes([stage]) + frame(dst == MAC_A, src, dst, payload))
    seeds.append(bytes([0]) + b"".join(frame(d == MAC_A, s, d, p) for s, d, p in stages.sent))
    seeds.append(bytes([2]) + frame(True, MAC_X, MAC_A, stages.w.messages["error"]))
    seeds.append(bytes([1]) + frame(True, MAC_B, MAC_A, m.ErrorMessage(14, 0, "bad-proof: no").encode()))
    return test_one, seeds


if __name__ == "__main__":
    common.harness_main("l2", make, max_len=8192)
