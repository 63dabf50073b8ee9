"""The demo's timeline (lab/timeline.py) on synthetic agent events: a PNG with a row per device
and a mark per milestone, and events it cannot draw skipped with a count, not a crash."""

import math

import pytest

pytest.importorskip("matplotlib")

from tessera.lab import timeline  # noqa: E402

T0 = 5000.0  # a monotonic clock's link-up, as the lab's set_carriers returns it


def lab_events(n: int) -> list[dict]:
    """What n enrolled devices' agents write: started, link-up ... ticketed, then a peered and a
    record per peer; plus a stranger whose link comes up and nothing more."""
    ids = [f"dev-{i:02d}" for i in range(1, n + 1)]
    ev = []
    for k, d in enumerate(ids + [f"dev-{n + 1:02d}"]):
        ev.append({"t": T0 - 1.0, "time": 1.7e9, "device": d, "event": "started", "pid": 100 + k})
        ev.append({"t": T0 + 0.002, "time": 1.7e9, "device": d, "event": "link-up"})
    for k, d in enumerate(ids):
        base = T0 + 0.1 + 0.01 * k
        ev += [{"t": base, "device": d, "event": "authorized"},
               {"t": base + 0.2, "device": d, "event": "registered"},
               {"t": base + 0.25, "device": d, "event": "ticketed"}]
        for j, p in enumerate(x for x in ids if x != d):
            ev.append({"t": base + 0.3 + 0.01 * j, "device": d, "event": "peered", "peer": p})
            ev.append({"t": T0 + 2.0 + 0.001 * j, "device": d, "event": "record", "peer": p})
    return ev


def marks_of(n: int) -> int:
    """link-up for every device (n + 1), three single milestones and 2·(n−1) per-peer ones per enrolled device"""
    return (n + 1) + n * 3 + n * 2 * (n - 1)


def test_draws_a_png_with_a_row_per_device(tmp_path):
    tl = timeline.draw(lab_events(3), T0, tmp_path / "t3.png", title="3 devices", labels={"dev-04": "not enrolled"})
    data = (tmp_path / "t3.png").read_bytes()
    assert data[:8] == timeline.PNG_MAGIC
    assert (tl.width_px, tl.height_px) == timeline.png_size(tmp_path / "t3.png")
    assert 800 <= tl.width_px <= 1600 and 200 <= tl.height_px <= 800, (tl.width_px, tl.height_px)
    assert 10_000 < len(data) < 2_000_000
    assert tl.devices == 4 and tl.marks == marks_of(3) and not tl.skipped
    assert "4 device rows" in tl.summary() and "skipped" not in tl.summary()


def test_fifty_devices_get_taller_not_wider(tmp_path):
    small = timeline.draw(lab_events(3), T0, tmp_path / "t3.png")
    big = timeline.draw(lab_events(50), T0, tmp_path / "t50.png")
    assert big.devices == 51 and big.marks == marks_of(50)  # one mark per peer: 49 peered + 49 record a row
    assert big.height_px > 3 * small.height_px and 1000 <= big.height_px <= 3000
    assert abs(big.width_px - small.width_px) < 200


def test_times_are_ms_from_link_up():
    rows, skipped = timeline.collect(lab_events(2), T0)
    assert rows["dev-01"]["link-up"] == [pytest.approx(2.0)]
    assert rows["dev-01"]["authorized"] == [pytest.approx(100.0)]
    assert rows["dev-02"]["peered"] == [pytest.approx(110.0 + 300.0)]
    assert "started" not in rows["dev-01"] and rows["dev-03"] == {"link-up": [pytest.approx(2.0)]}
    assert not skipped


def test_bad_events_are_skipped_and_counted_not_fatal(tmp_path):
    bad = [
        {"device": "dev-01", "event": "peered", "peer": "dev-02"},         # no time
        {"t": "soon", "device": "dev-01", "event": "authorized"},          # a time that is not a number
        {"t": math.nan, "device": "dev-01", "event": "authorized"},        # not finite
        {"t": True, "device": "dev-01", "event": "authorized"},            # a bool is no time
        {"t": T0, "event": "ticketed"},                                    # no device
        {"t": T0, "device": "", "event": "ticketed"},                      # empty device
        {"t": T0, "device": "dev-01"},                                     # no kind
        {"t": T0, "device": "dev-01", "event": "peered"},                  # per-peer kind without a peer
        {"t": T0, "device": "dev-01", "event": "record", "peer": None},
        {"t": T0, "device": "dev-01", "event": "exploded"},                # a kind nobody draws
        "not json at all", None, 42,
    ]
    good = lab_events(2)
    tl = timeline.draw(good + bad, T0, tmp_path / "t.png")
    assert timeline.png_size(tmp_path / "t.png") == (tl.width_px, tl.height_px)
    assert tl.marks == marks_of(2) and tl.devices == 3  # the good ones all drawn, no row for a nameless device
    assert sum(tl.skipped.values()) == len(bad)
    assert tl.skipped == {"no finite time": 4, "no device": 2, "no event kind": 1, "peered without a peer": 1,
                          "record without a peer": 1, "unknown kind 'exploded'": 1, "not an object": 3}
    assert f"{len(bad)} event(s) skipped" in tl.summary()


def test_nothing_but_bad_events_still_draws(tmp_path):
    tl = timeline.draw([{"t": "x"}, None], T0, tmp_path / "empty.png", labels={"dev-02": "not enrolled"})
    assert tl.devices == 1 and tl.marks == 0 and sum(tl.skipped.values()) == 2
    assert (tmp_path / "empty.png").read_bytes()[:8] == timeline.PNG_MAGIC


def test_png_size_refuses_a_file_that_is_not_a_png(tmp_path):
    (tmp_path / "x.png").write_bytes(b"GIF89a" + bytes(30))
    with pytest.raises(ValueError, match="not a PNG"):
        timeline.png_size(tmp_path / "x.png")
