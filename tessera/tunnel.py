"""The secured link's data path, sans-I/O: inner Ethernet frames of the `tessera0` TAP interface
in and out of the peer sessions' records (PeerFrame, type 38; docs/layouts.md#peerframe).

    outbound(frame, now)   a frame the kernel sent on tessera0 → the (underlay MAC, record) copies
                           to send: unicast to a peer's tap MAC → that peer's session; a group
                           address (I/G bit: broadcast, ARP, IPv6 ND, OSPF) or an unknown unicast →
                           one copy per peer with a confirmed session, each under that peer's key;
                           a frame for a known peer without a session → nothing (no_session_drops).
                           Nothing ever leaves unencrypted.
    inbound(src, rec, now) a PeerFrame record from the wire → the inner frame for the tap, or None:
                           opened by the node's record path (`Node._open_record`, shared with
                           PeerData: the session by its id, revocation and expiry, the replay
                           window, the first record under a pending key establishes it, older keys
                           kept for frames in flight after a rekey), then the inner frame must be
                           ≥ 14 bytes and come from the sending peer's tap MAC (no peer speaks for
                           another: spoof_drops).

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

    __slots__ = ("frames_in", "frames_out", "bytes_in", "bytes_out", "auth_drops", "replay_drops", "spoof_drops")

    def __init__(self):
        self.frames_in = self.frames_out = self.bytes_in = self.bytes_out = 0
        self.auth_drops = self.replay_drops = self.spoof_drops = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


MAX_NAMES = 4096  # tap MACs computed per device id, cached (bounded: ids come from frames)


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
            if frame[0] & 1 or dst not in self._known:  # group address, or unicast to nobody we know
                if not self._all:
                    self.no_session_drops += 1
                    return ()
                copies = []
                for mac, seal, c in self._all:
                    c.frames_out += 1
                    c.bytes_out += n
                    copies.append((mac, seal(frame)))
                return tuple(copies)
        except TesseraError:  # a sender's sequence space used up (2**48): the rekey is overdue
            self.no_session_drops += 1
            return ()
        self.no_session_drops += 1  # a known peer, no session with it (yet, or any more)
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
        if entry is None:
            entry = self._inbound[peer] = (self.peer_hw(peer), self.counters_of(peer))
        hw, c = entry
        if len(inner) < ETH_HLEN or inner[6:12] != hw:
            c.spoof_drops += 1
            if c.spoof_drops <= 3 or c.spoof_drops % 1000 == 0:
                from .node import Log  # only on this rare path: node.py does not import this module
                why = "shorter than an Ethernet header" if len(inner) < ETH_HLEN else "not from the peer's tap MAC"
                out.append(Log("frame-dropped", f"from {peer}: inner frame {why} ({c.spoof_drops} dropped)"))
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
                "size_drops": self.size_drops}


__all__ = ["TUNNEL_MTU", "UNDERLAY_MTU", "PeerCounters", "Tunnel", "tap_hw", "tap_mac", "tunnel_mtu"]
