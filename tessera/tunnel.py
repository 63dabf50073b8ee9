"""The secured link's data path, sans-I/O: inner Ethernet frames of the `tessera0` TAP interface
in and out of the peer sessions' records (PeerFrame, type 38; docs/layouts.md#peerframe).

    outbound(frame, now)   a frame the kernel sent on tessera0 → the (underlay MAC, record) copies
                           to send: unicast to a peer's tap MAC → that peer's session; a group
                           address (I/G bit: broadcast, ARP, IPv6 ND, OSPF) → one copy per peer
                           with a confirmed session, each under that peer's key; a frame for a
                           peer without a session → nothing (no_session_drops); unicast to a MAC
                           that is no peer's tap MAC → nothing (unknown_drops): tap MACs derive
                           from device ids and nothing sits behind a peer's tap, so such a frame
                           has no receiver, and flooding it (as a learning bridge would) would
                           only hand our traffic to every other peer -- after a poisoned IPv6
                           neighbour entry, say. Group frames other than OSPF's pass a token
                           bucket (GROUP_BURST, GROUP_RATE per second; group_drops): a flood of
                           ARP/ND from the kernel -- or one a peer provokes -- is not multiplied by
                           the number of peers unchecked, and cannot starve OSPF's hellos.
                           Nothing ever leaves unencrypted.
    inbound(src, rec, now) a PeerFrame record from the wire → the inner frame for the tap, or None:
                           opened by the node's record path (`Node._open_record`, shared with
                           PeerData: the session by its id, revocation and expiry, the replay
                           window, the first record under a pending key establishes it, older keys
                           kept for frames in flight after a rekey), then the inner frame must be
                           ≥ 14 bytes and come from the sending peer's tap MAC (no peer speaks for
                           another: spoof_drops), an ARP frame's sender hardware address must be
                           that MAC too (spoof_drops), and it must fit the tap (≤ mtu + 14 bytes:
                           size_drops).

"No peer speaks for another" holds at layer 2 (the inner source MAC, and ARP's sender hardware
address), not for IP addresses: an enrolled peer may claim another peer's tunnel IP address in
its ARP/ND or as its packets' source, with its own MAC. Bind IP addresses to peers above this
(a routing daemon's authentication, the services' own). The underlay side of the same promise --
no plain packet from eth0 reaches a tunnel address -- is agent/guard.py's.

Each device's tap MAC is deterministic (`tap_mac`): every peer knows every other's from its device
id, so unicast needs no learning and an ARP cache stays valid across an agent restart. The MTU is
what an inner frame may carry so that its record fits one 1500-byte underlay frame:

    1500 − 18 (record header) − 16 (GCM tag) − 14 (inner Ethernet header) = 1452

The per-frame path is kept lean (it runs 30-40k times a second in Python): routes are a dict from
the destination's 6 bytes to (underlay MAC, the session sender's bound `seal_frame`, counters),
rebuilt only when the node's sessions changed (`Node.session_generation`) or the earliest of them
expired; no action objects, no tick per frame. The adapter holds the node's lock around a batch.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict

from .errors import ReplayError, TesseraError
from .record import OVERHEAD

UNDERLAY_MTU = 1500
ETH_HLEN = 14


def tunnel_mtu(underlay_mtu: int = UNDERLAY_MTU) -> int:
    """The tap MTU that makes every record fit one underlay frame: underlay − record overhead
    (18-byte header, 16-byte tag) − the inner Ethernet header. The same on every device."""
    mtu = underlay_mtu - OVERHEAD - ETH_HLEN
    if mtu < 68:  # IPv4's minimum (RFC 791); IPv6 wants 1280
        raise ValueError(f"an underlay MTU of {underlay_mtu} leaves {mtu} bytes: too small for IP")
    return mtu


TUNNEL_MTU = tunnel_mtu()  # 1452


def tap_hw(realm: str, device_id: str) -> bytes:
    """The 6 bytes of a device's tap MAC: SHA-256("tessera tap mac\\0" ‖ realm ‖ "\\0" ‖ device id),
    first 6 bytes, the first octet made locally administered and unicast."""
    h = hashlib.sha256(b"tessera tap mac\0" + realm.encode() + b"\0" + device_id.encode()).digest()
    return bytes([(h[0] & 0xFC) | 0x02]) + h[1:6]


def tap_mac(realm: str, device_id: str) -> str:
    """A device's tap MAC as text, "02:..:..:..:..:.." (see `tap_hw`)."""
    return ":".join(f"{b:02x}" for b in tap_hw(realm, device_id))


class PeerCounters:
    """Tunnel traffic with one peer, across its rekeys (bytes are inner frame bytes)."""

    __slots__ = ("frames_in", "frames_out", "bytes_in", "bytes_out", "auth_drops", "replay_drops", "spoof_drops",
                 "size_drops")

    def __init__(self):
        self.frames_in = self.frames_out = self.bytes_in = self.bytes_out = 0
        self.auth_drops = self.replay_drops = self.spoof_drops = self.size_drops = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


MAX_NAMES = 4096  # tap MACs computed per device id, cached (bounded: ids come from frames)
SEEN_MACS = 4096  # tap MACs of peers ever known (LRU): a frame to one of them is never flooded
# Fanned-out frames (group or unknown unicast) per second: each becomes one record per peer.
# A device's own multicast is small: OSPF hellos (1/s per interface), ARP and ND (a few per
# neighbour resolved, DAD at address configuration): 1000/s sustained and a burst of 200 (ARP
# and ND for 100 peers at once, as when tessera0 comes up) leave room for all of that and cap
# a storm at 1000 x peers records/s instead of what the kernel can queue (~30-40k/s).
GROUP_BURST = 200
GROUP_RATE = 1000.0
ETH_P_ARP = b"\x08\x06"
# OSPF's multicast groups (AllSPFRouters, AllDRouters: 224.0.0.5/6, ff02::5/6) as Ethernet
# destinations: outside the token bucket (a routing protocol's hellos must not queue behind ARP)
OSPF_MACS = frozenset(bytes.fromhex(m) for m in ("01005e000005", "01005e000006", "333300000005", "333300000006"))


def arp_from(frame: bytes, hw: bytes) -> bool:
    """An inner ARP frame (Ethernet/IPv4: htype 1, ptype 0x0800, hlen 6, plen 4, 28 bytes) whose
    sender hardware address is `hw` (the frame's source MAC); anything else is refused."""
    return (len(frame) >= ETH_HLEN + 28 and frame[14:20] == b"\x00\x01\x08\x00\x06\x04"
            and frame[22:28] == hw)


class Tunnel:
    """The tunnel of one node (`node.tunnel` is set to it: the node counts refusals of type-38
    records here, and `Node.status()` shows the counters)."""

    def __init__(self, node, underlay_mtu: int = UNDERLAY_MTU):
        self.node = node
        self.mtu = tunnel_mtu(underlay_mtu)
        self.max_frame = self.mtu + ETH_HLEN
        self.hw = tap_hw(node.client.realm, node.device_id)
        self.mac = ":".join(f"{b:02x}" for b in self.hw)
        self.no_session_drops = 0
        self.last_peer = ""  # the peer of the last inner frame inbound() returned
        self.size_drops = 0  # frames from the tap outside [14, mtu + 14] bytes
        self.group_drops = 0  # fanned-out frames over the token bucket (GROUP_BURST, GROUP_RATE)
        self.unknown_drops = 0  # unicast to a MAC that is no peer's tap MAC (no receiver: not flooded)
        self.send_failures = 0  # records the adapter could not send (it bumps this; frames_out counts the try)
        self._tokens, self._tokens_at = float(GROUP_BURST), -math.inf
        self._seen: OrderedDict[bytes, None] = OrderedDict()  # tap MACs of peers ever known (LRU, SEEN_MACS)
        self.counters: dict[str, PeerCounters] = {}
        self._names: dict[str, bytes] = {}
        self._generation = -1
        self._routes: dict[bytes, tuple] = {}  # peer's tap MAC → (underlay MAC, seal_frame, counters)
        self._all: tuple = ()  # every route: group and unknown unicast frames
        self._known: dict[bytes, str] = {}  # tap MACs of peers we know of (with a session or not)
        self._inbound: dict[str, tuple] = {}  # peer → (its tap MAC, counters): inbound's per-frame lookups
        self._not_after = -math.inf  # the earliest expiry among the routes: rebuilt once past it
        node.tunnel = self

    def peer_hw(self, peer: str) -> bytes:
        hw = self._names.get(peer)
        if hw is None:
            if len(self._names) >= MAX_NAMES:
                self._names.clear()
            hw = self._names[peer] = tap_hw(self.node.client.realm, peer)
        return hw

    def counters_of(self, peer: str) -> PeerCounters:
        c = self.counters.get(peer)
        if c is None:
            c = self.counters[peer] = PeerCounters()
        return c

    @property
    def carrier(self) -> bool:
        """The tap's carrier: on while at least one peer session exists."""
        return bool(self.node.sessions)

    # -- out -------------------------------------------------------------------------------
    def _rebuild(self, t: float) -> None:
        node = self.node
        self._generation = node.session_generation
        routes, not_after = {}, math.inf
        for peer, s in node.sessions.items():
            if not s.confirmed or peer in node.revoked or t >= s.channel.not_after:
                continue  # expired: the node's sweep ends it; until then nothing goes under it
            routes[self.peer_hw(peer)] = (s.mac, s.channel.sender.seal_frame, self.counters_of(peer))
            not_after = min(not_after, s.channel.not_after)
        self._routes, self._all, self._not_after = routes, tuple(routes.values()), not_after
        live = set(node.sessions) | {p for p, _ in node.by_id.values()}
        for peer in [p for p in self.counters if p not in live]:
            del self.counters[peer]  # bounded by the sessions held
        self._inbound = {}
        self._known = {self.peer_hw(p): p for p in (*node.neighbours, *live, *node.revoked)}
        self.remember(self._known)

    def remember(self, macs) -> None:
        """Keep tap MACs of peers in the bounded memory of every peer ever known (LRU)."""
        seen = self._seen
        for hw in macs:
            if hw in seen:
                seen.move_to_end(hw)
            else:
                seen[hw] = None
                if len(seen) > SEEN_MACS:
                    seen.popitem(last=False)

    def outbound(self, frame: bytes, now: float) -> tuple:
        """The (underlay MAC, record) copies of one inner frame read from the tap; () if dropped."""
        node = self.node
        if node.session_generation != self._generation or now + node.offset >= self._not_after:
            self._rebuild(now + node.offset)
        n = len(frame)
        if n < ETH_HLEN or n > self.max_frame:
            self.size_drops += 1
            return ()
        dst = frame[:6]
        route = self._routes.get(dst)
        try:
            if route is not None:
                c = route[2]
                c.frames_out += 1
                c.bytes_out += n
                return ((route[0], route[1](frame)),)
            if frame[0] & 1:  # group address: one copy per peer
                if not self._all:
                    self.no_session_drops += 1
                    return ()
                if dst not in OSPF_MACS:
                    tokens = self._tokens + (now - self._tokens_at) * GROUP_RATE
                    self._tokens_at = now
                    if tokens < 1.0:
                        self._tokens = max(tokens, 0.0)  # a clock that steps back refills nothing
                        self.group_drops += 1
                        return ()
                    self._tokens = min(tokens, GROUP_BURST) - 1.0
                copies = []
                for mac, seal, c in self._all:
                    c.frames_out += 1
                    c.bytes_out += n
                    copies.append((mac, seal(frame)))
                return tuple(copies)
        except TesseraError:  # a sender's sequence space used up (2**48): the rekey is overdue
            self.no_session_drops += 1
            return ()
        if dst not in self._seen:  # no peer's tap MAC: nobody to receive it
            self.unknown_drops += 1
            return ()
        self.no_session_drops += 1  # a peer we know or once knew, no session with it (yet, or any more)
        return ()

    # -- in --------------------------------------------------------------------------------
    def inbound(self, src: str, record: bytes, now: float, out: list) -> bytes | None:
        """The inner frame of a PeerFrame record received from underlay MAC `src`, or None
        (dropped and counted). Actions the node has to take on the way (a Log, the announce to
        a sender of records under an unknown key, a session established by its first record)
        are appended to `out`."""
        return self.inbound_at(src, record, now + self.node.offset, out)

    def inbound_at(self, src: str, record: bytes, t: float, out: list) -> bytes | None:
        """`inbound` at the node's time `t` (= now + node.offset: a batch computes it once)."""
        got = self.node._open_record(src, record, t, out)
        if got is None:
            return None
        peer, inner = got
        self.last_peer = peer
        entry = self._inbound.get(peer)
        if entry is None:  # once per peer between rebuilds
            entry = self._inbound[peer] = (self.peer_hw(peer), self.counters_of(peer))
            self.remember((entry[0],))  # the kernel may learn this MAC from the frame: keep it known
        hw, c = entry
        n = len(inner)
        if n < ETH_HLEN or inner[6:12] != hw or (inner[12:14] == ETH_P_ARP and not arp_from(inner, hw)):
            c.spoof_drops += 1
            if c.spoof_drops <= 3 or c.spoof_drops % 1000 == 0:
                from .node import Log  # only on this rare path: node.py does not import this module
                why = ("shorter than an Ethernet header" if n < ETH_HLEN else "not from the peer's tap MAC"
                       if inner[6:12] != hw else "an ARP frame whose sender is not the peer's tap MAC")
                out.append(Log("frame-dropped", f"from {peer}: inner frame {why} ({c.spoof_drops} dropped)"))
            return None
        if n > self.max_frame:  # more than the tap carries (a peer with another MTU, or a forged one)
            c.size_drops += 1
            if c.size_drops <= 3 or c.size_drops % 1000 == 0:
                from .node import Log
                out.append(Log("frame-dropped", f"from {peer}: inner frame of {n} bytes, over {self.max_frame} "
                                                f"({c.size_drops} dropped)"))
            return None
        c.frames_in += 1
        c.bytes_in += len(inner)
        return inner

    def refused(self, peer: str, exc: TesseraError) -> None:
        """The node could not open a PeerFrame record of `peer`'s session: count why."""
        c = self.counters_of(peer)
        if isinstance(exc, ReplayError):
            c.replay_drops += 1
        else:  # BadProofError, or a header that is not this session's
            c.auth_drops += 1

    def status(self) -> dict:
        return {"mac": self.mac, "mtu": self.mtu, "no_session_drops": self.no_session_drops,
                "size_drops": self.size_drops, "group_drops": self.group_drops, "unknown_drops": self.unknown_drops,
                "send_failures": self.send_failures}


__all__ = ["TUNNEL_MTU", "UNDERLAY_MTU", "PeerCounters", "Tunnel", "tap_hw", "tap_mac", "tunnel_mtu"]
