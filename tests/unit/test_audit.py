"""Bounded audit of refused registrations (issue 8, item 5): a flood of forged registrations
writes at most one audit row per device and reason a minute, and the rows' counts add up."""

import hashlib

import pytest
from hypothesis import given, settings, strategies as st

from tessera import errors as E
from tessera.audit import AuditAggregator
from tessera.device import DeviceClient
from tessera.identity import BootstrapBundle, DeviceKey

from tests.unit.conftest import T0, make_device

W = 60


def test_aggregator_first_row_at_once_then_one_per_window_with_the_count():
    agg = AuditAggregator("radius-a", window=W)
    first = agg.note("SN-1", "register-rejected", "bad signature", 100)
    assert [(e.time, e.device_id, e.detail, e.server_id, e.count) for e in first] == \
        [(100, "SN-1", "bad signature", "radius-a", 1)]
    assert all(agg.note("SN-1", "register-rejected", "bad signature", 100 + i) == [] for i in range(59))
    # a window after the first row: a row for the 59 since it; the one at 160 opens the next window
    row = agg.note("SN-1", "register-rejected", "bad signature", 160)
    assert [(e.time, e.count, e.detail) for e in row] == [(160, 59, "bad signature (x59 since the last row)")]
    # other reasons and devices are counted apart
    assert [e.count for e in agg.note("SN-1", "register-rejected", "replay", 161)] == [1]
    assert [e.count for e in agg.note("SN-2", "register-rejected", "bad signature", 161)] == [1]
    agg.note("SN-1", "register-rejected", "bad signature", 170)
    assert agg.due(219) == []  # the window of the row at 160 has not ended
    assert [(e.device_id, e.detail, e.count) for e in agg.due(220)] == \
        [("SN-1", "bad signature (x2 since the last row)", 2)]
    assert agg.due(10_000) == [] and len(agg) == 0  # idle keys are forgotten


def test_aggregator_memory_is_capped_by_folding_into_a_device_less_row():
    agg = AuditAggregator("radius-a", window=W, max_keys=3)
    rows = [e for i in range(10) for e in agg.note(f"SN-{i}", "register-rejected", "bad signature", 100)]
    assert len(agg) == 4  # three devices, and one shared key per (event, reason)
    assert [e.device_id for e in rows] == ["SN-0", "SN-1", "SN-2", None]  # SN-3 opened the shared key
    rows += agg.due(100 + W)
    assert [(e.device_id, e.count) for e in rows[4:]] == [(None, 6)]  # SN-4..9
    assert sum(e.count for e in rows) == 10


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["SN-1", "SN-2"]), st.sampled_from(["bad signature", "replay"]),
                          st.integers(0, 90)), max_size=300))
def test_aggregator_against_a_model(steps):
    """For any arrival pattern: a key's rows are at least a window apart, and once the last
    window has passed, the counts of its rows are exactly the rejections noted for it."""
    agg = AuditAggregator("radius-a", window=W)
    now, rows, noted = 1_000, [], {}
    for device, reason, gap in steps:
        now += gap
        rows += agg.note(device, "register-rejected", reason, now)
        noted[(device, reason)] = noted.get((device, reason), 0) + 1
    rows += agg.due(now + W)
    counted: dict = {}
    last: dict = {}
    for e in rows:
        key = (e.device_id, e.detail.split(" (x")[0])
        assert key not in last or e.time - last[key] >= W, (key, last[key], e.time)
        last[key] = e.time
        counted[key] = counted.get(key, 0) + e.count
    assert counted == noted
    assert agg.due(now + 10 * W) == [] and len(agg) == 0


def impostor(realm, device_id: str) -> DeviceClient:
    """Someone who knows a device's id but not its key."""
    key = DeviceKey.generate(hashlib.sha256(b"impostor").digest())
    return DeviceClient(BootstrapBundle(realm.name, device_id, realm.service_public_key, []), key)


def test_flood_of_10000_bad_signature_registrations_writes_a_bounded_audit_with_the_right_count(realm, service, rand):
    real = make_device(realm, "SN-FLOOD")
    forger = impostor(realm, "SN-FLOOD")
    before = len(realm.registry.audit(limit=1_000_000))
    n, per_second = 10_000, 100  # 100 s of flood: two windows and a bit
    for i in range(n):
        now = T0 + i // per_second
        with pytest.raises(E.BadProofError):
            service.handle(forger.register_request("radius-a", now, rand(16)), now)
    end = T0 + n // per_second
    service.flush_audit(end + 60)  # what the next registration (or an adapter) does after the last window
    rows = realm.registry.audit(limit=1_000_000)[before:]
    assert all((e.event, e.device_id) == ("register-rejected", "SN-FLOOD") for e in rows)
    assert len(rows) <= 3, [(e.time, e.count) for e in rows]  # at most one a minute: T0, T0+60, the tail
    assert sum(e.count for e in rows) == n
    assert [(e.time, e.count) for e in rows] == [(T0, 1), (T0 + 60, 60 * per_second - 1),
                                                 (end + 60, n - 60 * per_second)]
    # control: the device itself registers in the same setup, with its audit line
    real.register_reply(service.handle(real.register_request("radius-a", end + 61, rand(16)), end + 61), end + 61)
    assert realm.registry.audit("SN-FLOOD", 1)[0].event == "registered"
    assert realm.registry.get_device("SN-FLOOD").generation == 1


def test_refused_registration_of_the_same_reason_within_a_minute_adds_no_row(realm, service, rand):
    """The first refusal is on record at once; more within its minute only count."""
    make_device(realm, "SN-F2")
    forger = impostor(realm, "SN-F2")
    for t in (T0, T0 + 30, T0 + 59):
        with pytest.raises(E.BadProofError):
            service.handle(forger.register_request("radius-a", t, rand(16)), t)
    rows = [e for e in realm.registry.audit("SN-F2") if e.event == "register-rejected"]
    assert [(e.time, e.count, e.detail) for e in rows] == [(T0, 1, "bad signature")]
    with pytest.raises(E.BadProofError):
        service.handle(forger.register_request("radius-a", T0 + 60, rand(16)), T0 + 60)
    rows = [e for e in realm.registry.audit("SN-F2") if e.event == "register-rejected"]
    assert [(e.time, e.count) for e in rows] == [(T0, 1), (T0 + 60, 2)]  # the one at T0+60 opens the next minute
    service.flush_audit(T0 + 120)
    rows = [e for e in realm.registry.audit("SN-F2") if e.event == "register-rejected"]
    assert [(e.time, e.count) for e in rows] == [(T0, 1), (T0 + 60, 2), (T0 + 120, 1)]
