"""The replay cache's per-device quota: one device flooding fresh proofs is refused by name, the
others keep being served, the flooder is served again once its proofs leave the skew window, and
the cache never holds more than the quotas allow. In memory, with the clock passed in."""

from __future__ import annotations

import pytest

from tessera import errors as E
from tessera.peer import PeerInitiator, PeerResponder
from tessera.replay import QuotaError, ReplayCache

from .conftest import T0, admit, make_device

SKEW = 300
WINDOW = 2 * SKEW + 1


def _nonce(i: int) -> bytes:
    return i.to_bytes(16, "big")


def test_replay_cache_quota_refuses_only_the_flooder_until_the_window_passes():
    cache = ReplayCache(SKEW, per_device=8, max_entries=1_000_000)
    for i in range(8):
        cache.add("flooder", b"N" + _nonce(i), T0, T0)
    with pytest.raises(QuotaError, match=r"device flooder already has 8 live proofs here \(quota 8") as exc:
        cache.add("flooder", b"N" + _nonce(8), T0, T0)
    # its own wire code in the taxonomy, which no other error uses
    assert exc.value.name == "over-quota" and E.BY_CODE[exc.value.code] is QuotaError
    assert sum(cls.code == exc.value.code for cls in E.ALL) == 1
    # another device is served at the same moment, and its replay is still a replay
    cache.add("calm", b"C" + _nonce(1000), T0, T0)
    with pytest.raises(E.ReplayError):
        cache.add("calm", b"C" + _nonce(1000), T0, T0)
    # a replay of the flooder's proof is `replay`, not a quota refusal
    with pytest.raises(E.ReplayError):
        cache.add("flooder", b"N" + _nonce(3), T0, T0)
    # 10,000 more fresh proofs from the flooder: every one refused, nothing stored
    for i in range(9, 10_009):
        with pytest.raises(QuotaError):
            cache.add("flooder", b"N" + _nonce(i), T0 + i % SKEW, T0 + i % SKEW)
    assert cache.held("flooder") == 8 and len(cache) == 9
    # one second before its first proofs could no longer pass, the flooder is still refused...
    last = T0 + SKEW  # its proofs' timestamps were T0: they pass check_skew until T0 + SKEW
    with pytest.raises(QuotaError):
        cache.add("flooder", b"N" + _nonce(20_000), last, last)
    # ...and once they have left the window it is served again; the old proofs are gone
    cache.add("flooder", b"N" + _nonce(20_001), last + 1, last + 1)
    assert cache.held("flooder") == 1 and cache.held("calm") == 0 and len(cache) == 1


def test_replay_cache_quota_entries_of_a_future_timestamp_live_until_it_leaves_the_window():
    cache = ReplayCache(SKEW, per_device=2)
    cache.add("d", b"x", T0 + SKEW, T0)  # the furthest future a proof may claim
    cache.add("d", b"y", T0, T0)  # passes check_skew until T0 + SKEW
    with pytest.raises(QuotaError):
        cache.add("d", b"z", T0 + SKEW, T0 + SKEW)
    cache.add("d", b"z", T0 + SKEW + 1, T0 + SKEW + 1)  # y has left; x has not
    with pytest.raises(QuotaError):
        cache.add("d", b"w", T0 + 2 * SKEW, T0 + 2 * SKEW)
    with pytest.raises(E.ReplayError):
        cache.add("d", b"x", T0 + 2 * SKEW, T0 + 2 * SKEW)  # the last second x could pass
    cache.add("d", b"x", T0 + WINDOW, T0 + WINDOW)  # x has left: it can no longer pass check_skew
    assert cache.held("d") == 2  # z and the new x


def test_replay_cache_quota_add_all_keeps_all_or_nothing():
    cache = ReplayCache(SKEW, per_device=3)
    cache.add_all("a", ((b"S1", T0), (b"H1", T0)), T0)
    with pytest.raises(QuotaError):  # two more would make four
        cache.add_all("a", ((b"S2", T0), (b"H2", T0)), T0)
    with pytest.raises(E.ReplayError):  # a fresh S with a replayed H stores nothing
        cache.add_all("b", ((b"S3", T0), (b"H1", T0)), T0)
    assert cache.held("a") == 2 and cache.held("b") == 0 and len(cache) == 2
    cache.add_all("b", ((b"S3", T0), (b"H3", T0)), T0)
    assert cache.held("b") == 2
    with pytest.raises(E.ReplayError):  # one proof twice in one request counts as a replay
        cache.add_all("c", ((b"S4", T0), (b"S4", T0)), T0)
    assert cache.held("c") == 0 and len(cache) == 4
    cache.add("c", b"S4", T0, T0)


def test_replay_cache_quota_when_full_serves_devices_that_ask_rarely():
    """The backstop: at `max_entries` only devices holding fewer than `reserve` proofs are
    served; the total stays within max_entries + reserve × devices."""
    cache = ReplayCache(SKEW, per_device=60, max_entries=100, reserve=4)
    n = 0
    for dev in ("f1", "f2", "f3"):
        for _ in range(50):
            n += 1
            try:
                cache.add(dev, _nonce(n), T0, T0)
            except QuotaError:
                pass
    # f1 and f2 filled it; f3 came when it was full and got only the reserve
    assert (cache.held("f1"), cache.held("f2"), cache.held("f3"), len(cache)) == (50, 50, 4, 104)
    with pytest.raises(QuotaError, match="replay cache is full .* device f1 holds 50"):
        cache.add("f1", b"late", T0, T0)
    with pytest.raises(QuotaError, match="replay cache is full .* device f3 holds 4"):
        cache.add("f3", b"late", T0, T0)
    for i, dev in enumerate(("calm-1", "calm-2")):  # devices that ask rarely are still served
        for j in range(4):
            cache.add(dev, b"%d-%d" % (i, j), T0, T0)
        with pytest.raises(QuotaError, match="is full"):
            cache.add(dev, b"%d-over" % i, T0, T0)
    assert len(cache) == 100 + 3 * 4 <= cache.max_entries + cache.reserve * cache.devices


def test_replay_cache_quota_memory_stays_bounded_under_a_long_flood():
    """Several devices flooding for ten windows: never more than per_device entries each."""
    cache = ReplayCache(SKEW, per_device=16)
    peak, served, n, step = 0, 0, 0, 3
    steps = range(0, 10 * WINDOW, step)
    for second in steps:
        now = T0 + second
        for dev in ("d1", "d2", "d3", "d4"):
            n += 1
            try:
                cache.add(dev, _nonce(n), now, now)
                served += 1
            except QuotaError:
                pass
        peak = max(peak, len(cache))
    assert peak == 4 * 16
    # a proof stamped `now` lives SKEW + 1 s (101 steps of 3 s): each device is served
    # exactly its 16 per lifetime of a proof, never more, never less
    lifetime = -(-(SKEW + 1) // step)
    assert served == 4 * 16 * -(-len(steps) // lifetime)


# -- through the service ------------------------------------------------------------------

def _renew(service, dev, rand, now):
    """One renewal with a fresh nonce; the device keeps its TGT either way."""
    try:
        return service.handle(dev.renew_request(service.server_id, now, rand(16)), now)
    finally:
        dev.abandon()


def test_replay_cache_quota_service_refuses_the_flooding_device_only(realm, service, rand):
    service.replay = ReplayCache(service.policy.clock_skew, per_device=6)
    x, y = make_device(realm, "SN-FLOOD"), make_device(realm, "SN-CALM")
    admit(service, x, rand)  # register + authenticate: two proofs of SN-FLOOD's quota
    admit(service, y, rand)
    for _ in range(4):
        _renew(service, x, rand, T0)
    with pytest.raises(QuotaError, match="device SN-FLOOD"):
        _renew(service, x, rand, T0)
    # the reply a device reads names the refusal; the other device keeps renewing
    err = service.error_reply(QuotaError("x"), T0)
    assert err[1] == 15 and int.from_bytes(err[2:4], "big") == QuotaError.code
    for _ in range(4):
        _renew(service, y, rand, T0)
    # not an internal error for anyone: the flooder alone waits out the window
    later = T0 + service.policy.clock_skew + 1
    _renew(service, x, rand, later)
    assert service.replay.held("SN-FLOOD") == 1 and len(service.replay) <= 6 * 2


def test_replay_cache_quota_a_neighbour_flooding_hellos_spends_its_own_quota(realm, service, rand):
    """Session requests are charged to the initiator: A flooding B with hellos is refused by
    name, and B still gets session keys with C."""
    service.replay = ReplayCache(service.policy.clock_skew, per_device=8)
    a, b, c = (make_device(realm, n) for n in ("SN-A", "SN-B", "SN-C"))
    for d in (a, b, c):
        admit(service, d, rand)

    def session(init, resp):
        ia, rb = PeerInitiator(init, resp.device_id), PeerResponder(resp)
        rb.receive_hello(ia.hello(T0, rand(16)), T0)
        return service.handle(rb.session_request(service.server_id, T0, rand(16)), T0)

    for _ in range(3):  # 2 (admission) + 3 × 2 = 8: A's quota is spent
        session(a, b)
    with pytest.raises(QuotaError, match="device SN-A"):
        session(a, b)
    session(c, b)  # B answers C: charged to C
    session(b, c)  # and B still opens sessions itself
    assert service.replay.held("SN-B") == 2 + 2 and service.replay.held("SN-A") == 8


def test_replay_cache_quota_a_responder_provoking_hellos_spends_only_the_pairs_share(realm, service, rand):
    """Z makes C start handshake after handshake (e.g. with fresh announces) and spends each of
    C's hellos in a session request: the pair (C, Z) stops at its share, C still renews and
    still opens sessions with others."""
    service.replay = ReplayCache(service.policy.clock_skew, per_device=64, per_pair=8)
    c, z, w = (make_device(realm, n) for n in ("SN-C", "SN-Z", "SN-W"))
    for d in (c, z, w):
        admit(service, d, rand)

    def session(init, resp):
        ia, rb = PeerInitiator(init, resp.device_id), PeerResponder(resp)
        rb.receive_hello(ia.hello(T0, rand(16)), T0)
        return service.handle(rb.session_request(service.server_id, T0, rand(16)), T0)

    for _ in range(4):  # 4 × 2 = 8: the pair's share
        session(c, z)
    with pytest.raises(QuotaError, match="session SN-C → SN-Z already spent 8 of SN-C's proofs"):
        session(c, z)
    assert service.replay.held("SN-C") == 2 + 8  # the refusal kept nothing
    session(c, w)  # C with another neighbour: served
    _renew(service, c, rand, T0)  # and C's own renewal: served
    later = T0 + 2 * service.policy.clock_skew + 2
    _renew(service, c, rand, later)  # the window passed: the pair's share is free again
    for d in (c, z):
        d.ticket_reply(service.handle(d.auth_request(service.server_id, later, rand(16)), later), later)
    ia, rb = PeerInitiator(c, z.device_id), PeerResponder(z)
    rb.receive_hello(ia.hello(later, rand(16)), later)
    service.handle(rb.session_request(service.server_id, later, rand(16)), later)
