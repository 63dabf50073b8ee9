"""Faults in the realm on several hosts (issue 10), the server side, as `tessera.lab.faults`
runs them for the README's table -- here with registry_grace shortened to 5 s:

- one server cut off from PostgreSQL (an nftables drop) while a device is revoked through
  another: the other servers refuse it `revoked` within a second, and the cut-off server, which
  served it from its cache until then, never issues it a ticket after its bound (the cut plus
  registry_grace) and refuses it `registry-unavailable` from then on; healed, it refuses it
  `revoked` and serves another device again;
- PostgreSQL stopped (a fast shutdown) for 8 s: TGTs, renewals and session keys served from the
  caches until the grace ends, then `registry-unavailable`; registrations refused at once with
  that name; after the start the first registration goes through and every cache is fresh, and
  no device's state or generation moved.

The same setup accepted each of these requests before the fault (a refusal beside an
acceptance). The table rows are printed (`pytest -s`).
"""

from __future__ import annotations

from tessera.lab import faults

from tests.gate import needs_freeradius, needs_lab, needs_postgres

GRACE = 5.0


@needs_lab
@needs_freeradius
@needs_postgres
def test_faults_cut_off_server_keeps_its_bound_and_an_outage_is_refused_by_name(lab):
    fl = faults.FaultLab(lab, grace=GRACE, outage=8.0,
                         probes=(("revoked-01", None), ("cut-01", None), ("pg-01", "pg-02")))
    try:
        cut = faults.server_cut_off(fl)
        pg = faults.postgres_stopped(fl)
    finally:
        fl.close()
    print("\n" + faults.markdown([cut, pg]))

    d = cut.data
    assert not cut.failed, cut.failed
    assert d["pre_ok"]  # every server gave the device a TGT before the fault
    assert all(s < 1.0 for s in d["others_refused_s"].values()) and len(d["others_refused_s"]) == 2, d
    assert d["issued"] >= 1  # the cut-off server served it from its cache until its bound ...
    assert d["issued_after_bound"] == 0  # ... and never after
    assert d["cut_refused"] == ["registry-unavailable"], d
    assert d["cut_first_refusal_s"] <= GRACE + 0.5, d  # probed every 0.2 s
    assert d["healed_s"] is not None and d["witness_ok_s"] is not None, d

    d = pg.data
    assert not pg.failed, pg.failed
    assert d["tgt_last_ok_s"] is not None and d["tgt_last_ok_s"] > 0, d  # served from the caches
    assert d["session_last_ok_s"] is not None and d["session_last_ok_s"] > 0, d
    assert d["tgt_first_refused_s"] is not None and d["tgt_first_refused_s"] <= GRACE + 0.6, d
    assert set(d["tgt_refused"]) == {"registry-unavailable"}, d
    assert set(d["register_refused"]) == {"registry-unavailable"}, d
    assert max(d["register_refusal_ms"]) < 100, d  # at once, not after a connect timeout (3 s)
    assert d["late_ok"] == 0 and d["changed"] == [], d
    assert d["first_registration_s"] is not None and sorted(d["fresh_s"]) == ["radius1", "radius2", "radius3"], d
