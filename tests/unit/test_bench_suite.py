"""bench/suite.py: the ratios against the issue's targets, results.md and the plots, from rows
built here by hand (bench/measure.py's Row), as the parts' scripts write them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import suite  # noqa: E402
from measure import Row, append_rows, read_rows  # noqa: E402

SQLITE = "Tessera on FreeRADIUS 3.2.1 (rlm_python3), SQLite"
NOWRITES = "MIT krb5 1.20.1 KDC, no DB writes, 2 workers"
STOCK = "MIT krb5 1.20.1 KDC, stock config, 2 workers"
FLOOR = "FreeRADIUS 3.2.1, minimal site"


def tessera(exchange: str, us: float, system: str = SQLITE) -> Row:
    return Row("tessera", system, exchange, 1000, server_cpu_us=us, per_second=5000.0, seconds=0.2)


def kdc(exchange: str, us: float, config: str) -> Row:
    return Row("mit-krb5", NOWRITES if config == "nowrites" else STOCK, exchange, 1000, server_cpu_us=us,
               per_second=2000.0, extra={"config": config, "server_cpu_us_rounds": [us]})


def lab(n: int, done: list[float], rss_mean: float, rss_max: float, missing: int = 0) -> Row:
    return Row("lab", f"Tessera lab, {n} tessera-agents", f"{n} devices: link-up → all pairs peered",
               n * (n - 1) // 2 - missing, failed=missing, seconds=max(done) if not missing else 60.0,
               extra={"devices": n, "first": min(done), "sessions": n * (n - 1) // 2,
                      "rss_mean_mib": rss_mean, "rss_max_mib": rss_max, "completion_s": done})


def sitting(tgt: float = 90.0, pap: float = 40.0) -> list[Row]:
    """A complete run: Tessera, the KDC in both configs, both floors, the lab and l2."""
    return [
        tessera("registration", 400.0), tessera("TGT (auth with LLK)", tgt), tessera("TGT renewal", 80.0),
        tessera("session key (2 TGTs)", 150.0), tessera("revocations (none)", 60.0),
        tessera("revocations (128)", 100.0),
        # the stock config is cheaper here on purpose: the target is against no-DB-writes
        kdc(suite.MIT_AS, 300.0, "nowrites"), kdc(suite.MIT_AS, 200.0, "stock"),
        kdc(suite.MIT_AS1, 250.0, "nowrites"), kdc(suite.MIT_TGS, 330.0, "nowrites"),
        kdc(suite.MIT_TGS, 330.0, "stock"), kdc(suite.MIT_U2U, 480.0, "nowrites"),
        Row("freeradius", FLOOR, suite.PAP, 15000, server_cpu_us=pap, per_second=30000.0),
        Row("freeradius", FLOOR, suite.PYTHON, 15000, server_cpu_us=55.0, per_second=25000.0),
        lab(10, [0.4, 0.5, 0.6, 0.7, 0.8, 0.8, 0.9, 0.9, 1.0, 1.1], 24.0, 26.5),
        lab(50, [0.5 + i / 50 for i in range(50)], 25.0, 29.0),
        Row("l2", "two devices", "plain AF_PACKET frames", 200000, per_second=100000.0),
        Row("l2", "two devices", "AEAD records (AES-256-GCM)", 200000, per_second=85000.0),
    ]


def verdicts(rows: list[Row]) -> dict[str, suite.Check]:
    return {c.what: c for c in suite.checks(suite.aggregate(rows))}


def test_suite_tgt_ratio_passes_at_a_third_of_the_kdc_no_writes_config():
    c = verdicts(sitting(tgt=90.0))["TGT ÷ MIT AS with pre-auth (no DB writes)"]
    assert c.value == pytest.approx(0.3)  # 90 / 300, not 90 / 200 (stock)
    assert c.verdict == "PASS"


def test_suite_tgt_ratio_above_a_third_is_a_miss():
    c = verdicts(sitting(tgt=120.0))["TGT ÷ MIT AS with pre-auth (no DB writes)"]
    assert c.value == pytest.approx(0.4)
    assert c.verdict == "MISS"


def test_suite_pap_floor_target_is_an_upper_bound_of_two_and_a_half():
    at = verdicts(sitting(tgt=100.0, pap=40.0))["TGT (auth with LLK) ÷ PAP floor"]
    above = verdicts(sitting(tgt=101.0, pap=40.0))["TGT (auth with LLK) ÷ PAP floor"]
    assert (at.value, at.verdict) == (pytest.approx(2.5), "PASS")
    assert (above.value, above.verdict) == (pytest.approx(2.525), "MISS")
    assert verdicts(sitting())["registration ÷ PAP floor"].verdict == "MISS"  # 400 / 40 = 10×


def test_suite_registrations_per_second_from_cpu_per_registration():
    rows = sitting()
    assert verdicts(rows)["registrations/s on one core (1 / CPU per registration)"].value == pytest.approx(2500)
    assert verdicts(rows)["registrations/s on one core (1 / CPU per registration)"].verdict == "PASS"
    rows[0] = tessera("registration", 600.0)
    c = verdicts(rows)["registrations/s on one core (1 / CPU per registration)"]
    assert (round(c.value), c.verdict) == (1667, "MISS")


def test_suite_lab_l2_and_memory_targets():
    v = verdicts(sitting())
    assert (v["50 devices linked up at once: all 1,225 pairs peered"].value, v[
        "50 devices linked up at once: all 1,225 pairs peered"].verdict) == (pytest.approx(1.48), "PASS")
    assert (v["agent memory: RSS per device agent (mean, worst N)"].value,
            v["agent memory: RSS per device agent (mean, worst N)"].verdict) == (25.0, "PASS")
    assert (v["AEAD ÷ plain frames/s"].value, v["AEAD ÷ plain frames/s"].verdict) == (pytest.approx(0.85), "PASS")
    rows = sitting()
    rows[-1] = Row("l2", "two devices", "AEAD records (AES-256-GCM)", 200000, per_second=85000.0,
                   extra={"ratio": 0.7})  # the script's median of per-round ratios wins
    rows[-3] = lab(50, [0.5 + i / 50 for i in range(49)], 31.0, 33.0, missing=49)
    v = verdicts(rows)
    assert v["AEAD ÷ plain frames/s"].verdict == "MISS"
    assert v["agent memory: RSS per device agent (mean, worst N)"].verdict == "MISS"
    late = v["50 devices linked up at once: all 1,225 pairs peered"]
    assert (late.value, late.verdict) == (60.0, "MISS") and "49 pairs not peered" in late.note


def test_suite_missing_part_is_not_applicable_not_a_pass():
    rows = [r for r in sitting() if r.suite != "mit-krb5"]
    v = verdicts(rows)
    assert v["TGT ÷ MIT AS with pre-auth (no DB writes)"].value is None
    assert v["TGT ÷ MIT AS with pre-auth (no DB writes)"].verdict == "n/a"
    assert v["TGT (auth with LLK) ÷ PAP floor"].verdict == "PASS"


def test_suite_aggregate_takes_median_and_range_over_runs():
    rows = [tessera("TGT (auth with LLK)", us) for us in (100.0, 130.0, 90.0)]
    rows.append(tessera("TGT (auth with LLK)", 10.0, system="Tessera on FreeRADIUS 3.2.1 (rlm_python3), PostgreSQL"))
    rows.append(Row("mit-krb5", NOWRITES, "TGS", 3000, server_cpu_us=300.0, extra={
        "config": "nowrites", "server_cpu_us_rounds": [280.0, 300.0, 350.0]}))
    aggs = suite.aggregate(rows)
    tgt = suite.tessera(aggs, "TGT (auth with LLK)")
    assert "SQLite" in tgt.system  # the PostgreSQL realm is shown, not used for the ratios
    assert (tgt.server_cpu_us, tgt.cpu_range, tgt.runs) == (100.0, (90.0, 130.0), 3)
    tgs = suite.mit(aggs, "TGS")
    assert (tgs.server_cpu_us, tgs.cpu_range) == (300.0, (280.0, 350.0))
    assert suite.mit(aggs, "TGS", "stock") is None
    l2 = suite.aggregate([Row("l2", "two devices", "plain AF_PACKET frames", 10, per_second=100.0,
                              extra={"per_second_range": [80.0, 130.0]})])[0]
    assert (l2.per_second, l2.rate_range) == (100.0, (80.0, 130.0))


def test_suite_schedule_alternates_cpu_parts_then_runs_the_rest_once():
    order = [p.script for p in suite.schedule(2)]
    assert order == ["freeradius_floor.py", "realm_exchanges.py", "kerberos.py",
                     "kerberos.py", "realm_exchanges.py", "freeradius_floor.py",
                     "lab_peering.py", "l2_rate.py", "tunnel.py"]


def test_suite_results_written_from_rows(tmp_path):
    rows_file = tmp_path / "rows.jsonl"
    append_rows(rows_file, sitting(tgt=120.0))
    rows = read_rows(rows_file)
    cond = {"date": "2026-11-29 10:00 UTC", "cpu": "Test CPU", "cores": 2, "commit": "abc1234"}
    plots = suite.write_results(rows, tmp_path / "out", cond, ["l2 frames"])
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| TGT ÷ MIT AS with pre-auth (no DB writes) | 0.40× | ≤ 1/3 | MISS |" in md
    assert "| registrations/s on one core (1 / CPU per registration) | 2,500/s | ≥ 2,000/s | PASS |" in md
    assert "Test CPU" in md and "abc1234" in md and "l2 frames" in md
    assert f"| {SQLITE} | TGT (auth with LLK) | 120.0 |" in md
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(doc["rows"]) == len(rows) and doc["failed_parts"] == ["l2 frames"]
    assert {c["what"]: c["verdict"] for c in doc["checks"]}["TGT ÷ MIT AS with pre-auth (no DB writes)"] == "MISS"
    names = sorted(Path(p).name for p in plots)
    assert names == ["cpu_per_exchange.png", "l2_frames.png", "lab_peering.png", "rss_per_device.png"]
    for p in plots:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(p).stat().st_size > 5000
        assert f"]({Path(p).name})" in md


def test_suite_plots_skip_what_no_part_measured(tmp_path):
    rows = [r for r in sitting() if r.suite in ("tessera", "freeradius")]
    plots = suite.plot(rows, tmp_path)
    assert [Path(p).name for p in plots] == ["cpu_per_exchange.png"]


def test_suite_names_a_failed_part_exits_1_and_keeps_the_others_rows(tmp_path, monkeypatch, capsys):
    good = tmp_path / "good.py"
    good.write_text(
        "import json, sys\n"
        "path = sys.argv[sys.argv.index('--json') + 1]\n"
        "row = {'suite': 'freeradius', 'system': 'FreeRADIUS 3.2.1, minimal site', 'exchange': %r,\n"
        "       'count': 100, 'server_cpu_us': 40.0, 'per_second': 1000.0}\n"
        "open(path, 'a').write(json.dumps(row) + '\\n')\n" % suite.PAP)
    (tmp_path / "bad.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.setattr(suite, "HERE", tmp_path)
    monkeypatch.setattr(suite, "PARTS", (suite.Part("the good part", "good.py", (), (), True),
                                         suite.Part("the broken part", "bad.py", (), (), False),
                                         suite.Part("the missing part", "absent.py", (), (), False)))
    assert suite.main(["--quick", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "FAILED parts: the broken part; the missing part" in err
    md = (tmp_path / "out" / "results.md").read_text()
    assert "the broken part; the missing part" in md
    assert "| FreeRADIUS 3.2.1, minimal site | PAP from files (no Python) | 40.0 |" in md
    monkeypatch.setattr(suite, "PARTS", suite.PARTS[:1])
    assert suite.main(["--quick", "--out", str(tmp_path / "out2")]) == 0
