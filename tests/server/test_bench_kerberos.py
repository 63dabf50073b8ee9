"""The Kerberos anchor against a real MIT KDC (bench/kerberos.py, bench/krb5_load.c).

A throwaway realm per test, its KDC with two workers. Acceptance: 200 of each exchange all
complete, the KDC's log shows that the two-message AS met PREAUTH_REQUIRED and the one-message
AS did not, and the generator has checked that the TGS ticket is sealed in B's key and the
user-to-user ticket in B's TGT session key. Refusals on the same realm: with the principals
re-keyed the keytabs hold stale keys and every AS is counted as failed (exit 1), TGS cannot
even start; with the principals deleted every AS fails as unknown; and ``main`` then prints
the errors, exits 1 and writes no rows. Afterwards the realm's directory and the KDC are gone.
"""

from __future__ import annotations

import json

import pytest

from bench import kerberos
from tests.gate import require

KRB5_PARTS = ("krb5kdc", "kdb5_util", "kadmin.local", "krb5-config", "gcc")
DEVICES = 8


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    require(*KRB5_PARTS)
    return kerberos.build_load(tmp_path_factory.mktemp("build"))


@pytest.fixture
def krb5(binary):
    """(binary, realm, kdc): a new realm of DEVICES principals and its running KDC."""
    with kerberos.throwaway_realm(DEVICES) as realm:
        with realm.kdc("nowrites", workers=2) as kdc:
            assert len(kdc.workers()) == 2
            yield binary, realm, kdc
        assert kdc.proc.poll() is not None and not kdc.workers()
    assert not realm.directory.exists()


def log_count(kdc, text: str) -> int:
    return kdc.log.read_text(errors="replace").count(text)


def test_krb5_load_every_exchange_completes(krb5):
    binary, realm, kdc = krb5
    for exchange in kerberos.EXCHANGES:
        needed0 = log_count(kdc, "NEEDED_PREAUTH")
        m = kerberos.run_load(binary, realm, exchange, threads=4, count=200, kdc=kdc)
        assert (m.completed, m.failed, m.first_error, m.returncode) == (200, 0, None, 0), exchange
        assert m.kdc_cpu > 0 and m.p50_ms > 0 and m.p99_ms >= m.p50_ms
        needed = log_count(kdc, "NEEDED_PREAUTH") - needed0
        if exchange == "as":
            assert needed == 200  # every AS took two messages
        elif exchange == "as1":
            assert needed == 0  # optimistic PA-ENC-TIMESTAMP: one message
    assert log_count(kdc, "AS_REQ") >= 600 and log_count(kdc, "TGS_REQ") >= 400


def test_krb5_load_counts_stale_keys_and_unknown_principals_as_failures(krb5):
    binary, realm, kdc = krb5
    assert kerberos.run_load(binary, realm, "as", threads=4, count=50, kdc=kdc).failed == 0
    names = [kerberos.device_name(n) for n in range(DEVICES)]
    realm.kadmin([f"cpw -randkey {name}" for name in names])
    for exchange in ("as", "as1"):
        m = kerberos.run_load(binary, realm, exchange, threads=4, count=200, kdc=kdc)
        assert (m.completed, m.failed, m.returncode) == (0, 200, 1), exchange
        assert "Preauthentication failed" in m.first_error
    with pytest.raises(RuntimeError, match="setup failed: TGT for A"):
        kerberos.run_load(binary, realm, "tgs", threads=4, count=200, kdc=kdc)

    realm.kadmin([f"delprinc -force {name}" for name in names])
    m = kerberos.run_load(binary, realm, "as", threads=4, count=200, kdc=kdc)
    assert (m.completed, m.failed, m.returncode) == (0, 200, 1)
    assert "not found in Kerberos database" in m.first_error


def test_kerberos_main_writes_rows_and_refuses_to_report_failed_runs(binary, tmp_path, monkeypatch, capsys):
    out = tmp_path / "rows.jsonl"
    args = ["--seconds", "0.3", "--rounds", "1", "--configs", "nowrites", "--devices", str(DEVICES),
            "--json", str(out)]
    assert kerberos.main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["exchange"] for r in rows] == list(kerberos.EXCHANGES.values())
    for r in rows:
        assert r["suite"] == "mit-krb5" and "no DB writes, 2 workers" in r["system"]
        assert r["count"] > 0 and r["failed"] == 0 and r["server_cpu_us"] > 0 and r["client_cpu_us"] > 0

    made = kerberos.throwaway_realm

    def stale_realm(devices, parent=None):
        """A realm whose keytabs no longer match: every AS fails."""
        with made(devices, parent) as realm:
            realm.kadmin([f"cpw -randkey {kerberos.device_name(n)}" for n in range(devices)])
            yield realm

    monkeypatch.setattr(kerberos, "throwaway_realm", kerberos.contextlib.contextmanager(stale_realm))
    out.unlink()
    capsys.readouterr()
    assert kerberos.main(args[:-2] + ["--exchanges", "as", "as1", "--json", str(out)]) == 1
    err = capsys.readouterr()
    assert "FAILED nowrites AS with pre-auth (2 messages)" in err.err and "Preauthentication failed" in err.err
    assert "µs/exchange" not in err.out and not out.exists()
