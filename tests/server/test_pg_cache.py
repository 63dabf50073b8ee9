"""A serving realm on PostgreSQL reads its registry from memory (tessera.pg_cache), on a private
cluster (`pg_cluster`, conftest.py).

How this works: each test gets its own database. "tessera-admin" is a `Realm` on a plain
`PostgresRegistry` (its own connection, as the CLI on another host would be); the server is the
realm `open_realm(url, kek, serving=True)` opens, whose registry is a `CachedRegistry`, and its
`Service` answers real device messages (tests/unit/conftest.py's in-memory devices). An outage
is made by forbidding connections to the test's database and terminating its backends (the
postmaster stays up for the other tests), then allowing them again.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import statistics
import time
import types

import psycopg
import pytest

from tessera import errors as E
from tessera.pg_cache import READS_PER_SECOND, CachedRegistry
from tessera.pg_registry import PostgresRegistry
from tessera.realm import Realm, create_kek, open_realm, read_kek
from tessera.registry import AuditEvent, DeviceState
from tests.unit.conftest import Counter, admit, make_device, peer

_dbs = itertools.count()
RLM = types.SimpleNamespace(RLM_MODULE_REJECT=0, RLM_MODULE_FAIL=1, RLM_MODULE_OK=2, RLM_MODULE_NOOP=7,
                            L_DBG=1, L_INFO=3, L_ERR=4)


class Setup:
    """One realm in a fresh database: the admin's realm, and servers opened for serving."""

    def __init__(self, cluster, tmp_path):
        self.cluster = cluster
        self.dbname = f"cache_{os.getpid()}_{next(_dbs)}"
        self.conninfo = cluster.create_database(self.dbname)
        self.url = cluster.url(self.dbname)
        self.kek_path = str(tmp_path / "kek")
        create_kek(self.kek_path)
        self.rand = Counter(self.dbname.encode())
        self.admin = Realm.init(PostgresRegistry(self.conninfo), read_kek(self.kek_path), "example.net", time.time(),
                                random=self.rand)
        self.logs: list[tuple[str, str]] = []
        self._opened: list[Realm] = []

    def serve(self, grace: float = 30.0) -> Realm:
        realm = open_realm(self.url, self.kek_path, serving=True, grace=grace,
                           log=lambda level, text: self.logs.append((level, text)))
        self._opened.append(realm)
        return realm

    def outage(self) -> None:
        """No connection to this database may be made, and those open are ended."""
        self.cluster.psql(f'ALTER DATABASE "{self.dbname}" ALLOW_CONNECTIONS false;'
                          f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{self.dbname}'")

    def recover(self) -> None:
        self.cluster.psql(f'ALTER DATABASE "{self.dbname}" ALLOW_CONNECTIONS true')
        self.admin.registry.close()  # the admin's connection was ended too: its next call connects

    def close(self) -> None:
        self.recover()
        for realm in self._opened:
            realm.close()
        self.admin.close()


@pytest.fixture
def setup(pg_cluster, tmp_path):
    s = Setup(pg_cluster, tmp_path)
    yield s
    s.close()


def wait_for(predicate, timeout: float, step: float = 0.0005) -> float:
    """Seconds until predicate() held; fails after timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(step)
    return time.monotonic() - start


def enrolled(admin: Realm, service, name: str):
    """Enrolled by the admin, once the serving cache holds it (enrolment is not the request
    path: a device unknown to the cache is read through, within a budget a second)."""
    dev = make_device(admin, name, now=time.time())
    wait_for(lambda: service.registry.cache.get(name) is not None, 1.0)
    return dev


def registered_device(admin: Realm, service, name: str, rand):
    dev = enrolled(admin, service, name)
    admit(service, dev, rand, time.time())
    return dev


def tgt(service, dev, rand):
    now = time.time()
    return dev.ticket_reply(service.handle(dev.auth_request(service.server_id, now, rand(16)), now), now)


# -- the change feed ---------------------------------------------------------------------------
def test_pg_cache_revocation_and_reregistration_reach_a_serving_service_within_a_second(setup):
    served = setup.serve()
    svc = served.service("radius-a")
    other = setup.admin.service("radius-b")  # another server, on the database directly
    rand = setup.rand
    delays = []
    for i in range(25):
        dev = registered_device(setup.admin, svc, f"SN-R{i}", rand)
        tgt(svc, dev, rand)  # accepted before
        time.sleep(2 / READS_PER_SECOND)  # an isolated change: the feed's rate limit is not what is measured
        setup.admin.revoke(dev.device_id, time.time(), "test")
        delays.append(wait_for(lambda: served.registry.get_device(dev.device_id).state is DeviceState.REVOKED, 1.0))
        with pytest.raises(E.RevokedError):
            tgt(svc, dev, rand)
    for i in range(25):
        dev = registered_device(setup.admin, svc, f"SN-G{i}", rand)
        gen = served.registry.get_device(dev.device_id).generation
        now = time.time()
        # re-registered at another server: the old DRT here is superseded
        old = dev.registration
        time.sleep(2 / READS_PER_SECOND)
        dev.register_reply(other.handle(dev.register_request("radius-b", now, rand(16)), now), now)
        delays.append(wait_for(lambda: served.registry.get_device(dev.device_id).generation == gen + 1, 1.0))
        tgt(svc, dev, rand)  # the new DRT is accepted here
        dev.registration = old
        with pytest.raises(E.SupersededError):
            tgt(svc, dev, rand)
    delays.sort()
    median, p99 = statistics.median(delays), delays[int(len(delays) * 0.99) - 1]
    print(f"\npropagation over {len(delays)} changes: median {median * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, "
          f"max {delays[-1] * 1000:.2f} ms")
    assert delays[-1] < 1.0


def test_pg_cache_a_transaction_that_commits_after_a_later_one_is_not_missed(setup):
    served = setup.serve()
    for name in ("SN-A", "SN-B"):
        make_device(setup.admin, name, now=time.time())
    wait_for(lambda: served.registry.get_device("SN-B") is not None, 1.0)
    first = psycopg.connect(setup.conninfo)  # not autocommit: open transactions
    second = psycopg.connect(setup.conninfo)
    try:
        first.execute("UPDATE device SET state = 'revoked', updated = 100 WHERE device_id = 'SN-A'")
        second.execute("UPDATE device SET state = 'revoked', updated = 101 WHERE device_id = 'SN-B'")
        txids = [c.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()[0] for c in (first, second)]
        assert txids[0] < txids[1]  # the earlier-numbered transaction commits last
        second.commit()
        wait_for(lambda: served.registry.get_device("SN-B").state is DeviceState.REVOKED, 1.0)
        time.sleep(1.2)  # the listener reads at least once more with SN-A's transaction still open
        assert served.registry.get_device("SN-A").state is DeviceState.ENROLLED
        first.commit()
        wait_for(lambda: served.registry.get_device("SN-A").state is DeviceState.REVOKED, 1.0)
        assert served.registry.revoked_since(0, 10) == [("SN-B", 101), ("SN-A", 100)]
    finally:
        first.close()
        second.close()


def test_pg_cache_a_rotation_reaches_reload_if_changed(setup):
    served = setup.serve()
    svc = served.service("radius-a")
    assert served.reload_if_changed() is False
    new = setup.admin.rotate(time.time())
    wait_for(served.reload_if_changed, 2.0, 0.01)  # keys are read at most once a second
    assert new.kvno == 2 and [k.kvno for k in svc.keyring.versions()] == [1, 2]
    dev = enrolled(setup.admin, svc, "SN-K")
    admit(svc, dev, setup.rand, time.time())  # tickets sealed with version 2 open here


def test_pg_cache_read_your_writes_after_registration(setup):
    served = setup.serve()
    svc = served.service("radius-a")
    for i in range(20):
        dev = enrolled(setup.admin, svc, f"SN-W{i}")
        admit(svc, dev, setup.rand, time.time())  # registers here, then asks for a TGT at once
        dev.registration, old = dev.registration, dev.registration
        now = time.time()
        dev.register_reply(svc.handle(dev.register_request("radius-a", now, setup.rand(16)), now), now)
        tgt(svc, dev, setup.rand)  # generation 2 at once
        dev.registration = old
        with pytest.raises(E.SupersededError):  # and generation 1 no longer
            tgt(svc, dev, setup.rand)


class Counting:
    """A PostgresRegistry that counts the calls that reach it."""

    def __init__(self, inner: PostgresRegistry):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr) or name in ("connect", "error_text", "close", "forget_connection"):
            return attr

        def counted(*args, **kwargs):
            self.calls.append(name)
            return attr(*args, **kwargs)
        return counted


def test_pg_cache_the_request_path_issues_no_query(setup):
    kek = read_kek(setup.kek_path)
    counted = Counting(PostgresRegistry(setup.conninfo))
    cached = CachedRegistry(counted)
    served = Realm(cached, kek)
    svc = served.service("radius-a")
    plain = Counting(PostgresRegistry(setup.conninfo))  # the control: no cache
    direct = Realm(plain, kek).service("radius-a")
    try:
        devs = [enrolled(setup.admin, svc, f"SN-Q{i}") for i in range(2)]
        for dev in devs:
            admit(svc, dev, setup.rand, time.time())
        setup.admin.revoke(make_device(setup.admin, "SN-gone", now=time.time()).device_id, time.time())
        wait_for(lambda: cached.get_device("SN-gone").state is DeviceState.REVOKED, 1.0)
        for service, reg in ((svc, counted), (direct, plain)):
            reg.calls.clear()
            now = time.time()
            for dev in devs:
                tgt(service, dev, setup.rand)
            a, b = peer(service, devs[0], devs[1], setup.rand, now)
            assert b.open(a.seal(b"x")) == b"x"
            service.eap_pwd_password("SN-Q0", now)
            assert ("SN-gone", int(now)) in [(d, t) for d, t in service.revocation_list(now + 5)[1]] or \
                "SN-gone" in dict(service.revocation_list(now + 5)[1])
        assert counted.calls == []
        assert plain.calls  # the same requests without the cache do query
        print(f"\nwithout the cache: {len(plain.calls)} registry calls ({sorted(set(plain.calls))})")
    finally:
        cached.close()
        plain.close()


# -- PostgreSQL unreachable ------------------------------------------------------------------------
def test_pg_cache_outage_serves_within_grace_refuses_after_and_recovers(setup):
    grace = 2.0
    served = setup.serve(grace)
    svc = served.service("radius-a")
    reg = served.registry
    dev = registered_device(setup.admin, svc, "SN-O", setup.rand)
    newcomer = make_device(setup.admin, "SN-N", now=time.time())
    wait_for(lambda: reg.get_device("SN-N") is not None, 1.0)

    setup.outage()
    wait_for(lambda: not reg.connected, 2.0)
    down = time.monotonic()
    tgt(svc, dev, setup.rand)  # within grace: from the cache
    now = time.time()
    request = newcomer.register_request("radius-a", now, setup.rand(16))
    t0 = time.monotonic()
    with pytest.raises(E.RegistryUnavailableError, match="refused without waiting"):
        svc.handle(request, now)
    refused_in = time.monotonic() - t0
    t0 = time.monotonic()
    reg.add_audit(AuditEvent(int(now), "register-rejected", "SN-N", "while down", "radius-a"))  # buffered
    buffered_in = time.monotonic() - t0
    print(f"\nregistration refused in {refused_in * 1000:.2f} ms, audit buffered in {buffered_in * 1000:.3f} ms "
          "while the registry is down")
    assert refused_in < 0.5 and buffered_in < 0.05
    time.sleep(max(0.0, grace + 0.3 - (time.monotonic() - down)))
    with pytest.raises(E.RegistryUnavailableError, match=r"registry not reached for [0-9]+ s; .*at most 2 s") as refused:
        tgt(svc, dev, setup.rand)
    assert refused.value.code == 23 and refused.value.name == "registry-unavailable"
    assert setup.dbname not in str(refused.value)  # a device reads this: no database names
    with pytest.raises(E.RegistryUnavailableError):
        svc.revocation_list(time.time())
    assert [level for level, text in setup.logs if "unreachable" in text] == ["error"]  # once, not per request

    setup.recover()
    back = wait_for(lambda: reg.connected, 7.0, 0.01)
    tgt(svc, dev, setup.rand)
    admit(svc, newcomer, setup.rand, time.time())  # registration works again
    print(f"recovered {back:.2f} s after PostgreSQL accepted connections again")
    assert [text for level, text in setup.logs if "reachable again" in text]
    wait_for(lambda: any(e.detail == "while down" for e in setup.admin.registry.audit("SN-N")), 2.0, 0.01)
    setup.admin.revoke("SN-O", time.time())
    wait_for(lambda: reg.get_device("SN-O").state is DeviceState.REVOKED, 1.0)


def test_pg_cache_registry_unreachable_at_start_refuses_to_open(setup):
    setup.outage()
    with pytest.raises(E.RegistryUnavailableError, match=setup.dbname):
        setup.serve()


# -- the module's configuration -------------------------------------------------------------------
def test_pg_cache_plugin_from_config_serves_postgresql_through_the_cache(setup):
    from tessera.plugin.adapter import Plugin

    logs = []
    rlm = types.SimpleNamespace(**vars(RLM), radlog=lambda level, msg: logs.append((level, msg)))
    plugin = Plugin.from_config({"registry": setup.url, "kek": setup.kek_path, "server_id": "radius-a",
                                 "registry_grace": "5"}, rlm)
    reg = plugin.realm.registry
    assert isinstance(reg, CachedRegistry) and reg.grace == 5.0 and reg._thread.is_alive()
    plugin.close()
    assert not reg._thread.is_alive()
    old = Plugin.from_config({"db": setup.url, "kek": setup.kek_path, "server_id": "radius-a"}, rlm)  # old name
    assert old.realm.registry.grace == 30.0
    old.close()
    with pytest.raises(ValueError, match="registry_grace"):
        Plugin.from_config({"registry": setup.url, "kek": setup.kek_path, "server_id": "radius-a",
                            "registry_grace": "soon"}, rlm)
    with pytest.raises(ValueError, match="'registry' is not set"):
        Plugin.from_config({"kek": setup.kek_path, "server_id": "radius-a"}, rlm)


def test_pg_cache_a_forked_child_keeps_its_cache_current(setup):
    served = setup.serve()
    make_device(setup.admin, "SN-F", now=time.time())
    wait_for(lambda: served.registry.get_device("SN-F") is not None, 1.0)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: as radiusd after instantiate
        os.close(r)
        verdict = b"1"
        try:
            wait_for(lambda: served.registry.get_device("SN-F").state is DeviceState.REVOKED, 3.0)
        except BaseException as exc:  # noqa: BLE001 -- reported through the pipe
            verdict = repr(exc).encode()
        os.write(w, verdict)
        os._exit(0)
    os.close(w)
    try:
        time.sleep(0.2)
        setup.admin.revoke("SN-F", time.time())
        assert os.read(r, 1000) == b"1"
        wait_for(lambda: served.registry.get_device("SN-F").state is DeviceState.REVOKED, 1.0)  # the parent too
    finally:
        os.close(r)
        os.waitpid(pid, 0)


def test_pg_cache_plugin_reads_through_a_ticket_newer_than_the_cache(setup):
    """Registered a moment ago on another server, before the notification arrived here: the
    module reads the device's row once and serves the new ticket; an old one stays superseded."""
    from tessera.plugin.adapter import Plugin
    from tessera.radius.attrs import split_to_hex

    rlm = types.SimpleNamespace(**vars(RLM), radlog=lambda level, msg: None)
    plugin = Plugin.from_config({"registry": setup.url, "kek": setup.kek_path, "server_id": "radius-a"}, rlm)
    reg = plugin.realm.registry
    try:
        dev = registered_device(setup.admin, plugin.service, "SN-T", setup.rand)
        reg._stop.set()  # no notification reaches this server from now on
        reg._thread.join(5)
        old = dev.registration
        now = time.time()
        dev.register_reply(setup.admin.service("radius-b").handle(dev.register_request("radius-b", now, setup.rand(16)),
                                                                  now), now)
        assert reg.cache.get("SN-T").generation == 1

        def authorize(registration):
            dev.registration = registration
            message = dev.auth_request("radius-a", time.time(), setup.rand(16))
            return plugin.authorize((("User-Name", "SN-T"), *(("Tessera-Message", h) for h in split_to_hex(message))))

        new = dev.registration
        reg.read_through = lambda device_id: None  # the control: without the read-through
        rc, reply = authorize(new)
        assert rc == RLM.RLM_MODULE_REJECT and ("Tessera-Error", "10") in reply["reply"]
        del reg.read_through
        rc, reply = authorize(new)
        assert rc == RLM.RLM_MODULE_OK and reg.cache.get("SN-T").generation == 2
        rc, reply = authorize(old)
        assert rc == RLM.RLM_MODULE_REJECT and ("Tessera-Error", "10") in reply["reply"]
    finally:
        plugin.close()


# -- break-this findings (issue 10): regressions -----------------------------------------------------
def test_pg_cache_a_put_read_before_a_revocation_does_not_undo_it(setup):
    """record_location reads the row (registered); another server revokes it and the feed
    applies that before this thread puts its read: the put is skipped, the revocation stays, and
    the service's check after the write refuses the admission."""
    served = setup.serve()
    svc, reg = served.service("radius-a"), served.registry
    dev = registered_device(setup.admin, svc, "SN-PR", setup.rand)
    real = reg.inner.get_device

    def racing(device_id):
        rec = real(device_id)
        setup.admin.revoke(device_id, time.time(), "stolen")
        wait_for(lambda: reg.cache.devices[device_id].state is DeviceState.REVOKED, 0.8)
        return rec
    reg.inner.get_device = racing
    try:
        with pytest.raises(E.RevokedError):
            svc.record_location("SN-PR", "sw1", "192.0.2.10", "ge-0/0/1", "02-00-00-00-00-01", time.time())
    finally:
        del reg.inner.get_device
    time.sleep(1.2)  # more feed reads
    assert reg.cache.get("SN-PR").state is DeviceState.REVOKED
    with pytest.raises(E.RevokedError):
        tgt(svc, dev, setup.rand)


def test_pg_cache_registration_puts_the_database_row_not_the_cache_row(setup):
    """The row put after a registration is the database's (RETURNING), not the cached one with
    state=registered swapped in: a field the cache holds stale is not carried on, and a
    revocation the feed applied after the registration's statement began is not undone."""
    served = setup.serve()
    svc, reg = served.service("radius-a"), served.registry
    dev = enrolled(setup.admin, svc, "SN-RR")
    with reg._lock:  # a stale cached field (as a row read before some change would hold)
        reg.cache.devices["SN-RR"] = dataclasses.replace(reg.cache.devices["SN-RR"], enrolled_by="stale")
    admit(svc, dev, setup.rand, time.time())
    assert reg.cache.get("SN-RR").enrolled_by == setup.admin.registry.get_device("SN-RR").enrolled_by != "stale"
    real = reg.inner.record_registration_row

    def racing(*args, **kwargs):
        done = real(*args, **kwargs)
        setup.admin.revoke("SN-RR", time.time(), "stolen")
        wait_for(lambda: reg.cache.devices["SN-RR"].state is DeviceState.REVOKED, 0.8)
        return done
    reg.inner.record_registration_row = racing
    try:
        now = time.time()
        dev.register_reply(svc.handle(dev.register_request("radius-a", now, setup.rand(16)), now), now)
    finally:
        del reg.inner.record_registration_row
    assert reg.cache.get("SN-RR").state is DeviceState.REVOKED
    with pytest.raises(E.RevokedError):
        tgt(svc, dev, setup.rand)


def test_pg_cache_a_horizon_from_another_history_triggers_a_full_read(setup):
    """The cache learned a horizon far above this database's transaction counter (a restore, a
    promoted standby): a revocation made here is still found, by a full read, and logged."""
    served = setup.serve()
    reg = served.registry
    make_device(setup.admin, "SN-H", now=time.time())
    wait_for(lambda: reg.cache.get("SN-H") is not None, 1.0)
    with reg._lock:
        reg.cache.horizon = (10 ** 9, 10 ** 9, ())
        reg.cache.devices["SN-GONE"] = reg.cache.devices["SN-H"]  # only the other history had it
    setup.admin.revoke("SN-H", time.time())
    wait_for(lambda: reg.cache.get("SN-H").state is DeviceState.REVOKED, 2.0)
    assert reg.cache.get("SN-GONE") is None and reg.cache.horizon[1] < 10 ** 9
    assert [t for _, t in setup.logs if "transaction counter went back" in t]


def test_pg_cache_a_new_system_identifier_on_reconnect_triggers_a_full_read(setup):
    """The listener reconnects to a server whose (system identifier, timeline) differs from the
    last one's (a restored or promoted server): it reads every device again, replacing the cache."""
    served = setup.serve()
    reg = served.registry
    make_device(setup.admin, "SN-I", now=time.time())
    wait_for(lambda: reg.cache.get("SN-I") is not None and reg._listener_db is not None, 2.0, 0.01)
    assert reg._identity is not None  # the role may read pg_control_system() (PUBLIC by default)
    with reg._lock:
        reg.cache.devices["SN-OTHER"] = reg.cache.devices["SN-I"]  # only the other history had it
        reg._identity = (1, 1)  # as if the last connection had reached another server
    setup.cluster.psql(f"SELECT pg_terminate_backend({reg._listener_db.info.backend_pid})")
    wait_for(lambda: reg.cache.get("SN-OTHER") is None, 5.0, 0.01)
    assert reg._identity != (1, 1) and [t for _, t in setup.logs if "another database history" in t]


def test_pg_cache_a_row_lock_refuses_a_registration_fast_and_names_no_database(setup):
    """A row locked elsewhere (an operator's open transaction, a migration): lock_timeout ends
    the wait in ~0.2 s (not statement_timeout's 5 s), the device reads a generic text, the
    reason goes to the log once, and the next write is refused at once until the listener's
    next read clears the mark."""
    served = setup.serve()
    svc, reg = served.service("radius-a"), served.registry
    dev = enrolled(setup.admin, svc, "SN-L")
    holder = psycopg.connect(setup.conninfo)
    try:
        holder.execute("SELECT 1 FROM device WHERE device_id = 'SN-L' FOR UPDATE")
        now = time.time()
        t0 = time.monotonic()
        with pytest.raises(E.RegistryUnavailableError) as refused:
            svc.handle(dev.register_request("radius-a", now, setup.rand(16)), now)
        took = time.monotonic() - t0
        assert took < 0.8, took
        assert str(refused.value) == "the realm's registry is unavailable"
        assert setup.dbname not in str(refused.value) and "lock" not in str(refused.value)
        assert not reg.connected
        t0 = time.monotonic()
        with pytest.raises(E.RegistryUnavailableError, match="refused without waiting"):
            reg.record_location("SN-L", "sw1", "192.0.2.10", "ge-0/0/1", "02-00-00-00-00-01", int(now))
        assert time.monotonic() - t0 < 0.05
        assert [t for level, t in setup.logs if "unreachable" in t and "lock" in t]
    finally:
        holder.close()
    wait_for(lambda: reg.connected, 2.0, 0.01)
    admit(svc, dev, setup.rand, time.time())


def test_pg_cache_a_call_that_does_not_return_is_refused_at_the_deadline(setup):
    """A backend that is alive but does not answer (a commit waiting for a synchronous standby):
    the request is answered registry-unavailable at the deadline; the next is refused at once
    while the stuck call is pending; its late result is not put; then writes work again."""
    served = setup.serve()
    svc, reg = served.service("radius-a"), served.registry
    dev = registered_device(setup.admin, svc, "SN-D", setup.rand)
    real, release = reg.inner.record_location, __import__("threading").Event()

    def stuck(*args):
        release.wait(10)
        return real(*args)
    reg.inner.record_location = stuck
    try:
        t0 = time.monotonic()
        with pytest.raises(E.RegistryUnavailableError, match="^the realm's registry is unavailable$"):
            reg.record_location("SN-D", "sw1", "192.0.2.10", "ge-0/0/1", "02-00-00-00-00-01", int(time.time()))
        assert 0.9 < time.monotonic() - t0 < 1.5
        t0 = time.monotonic()
        for call in (lambda: svc.handle(dev.register_request("radius-a", time.time(), setup.rand(16)), time.time()),
                     lambda: reg.read_through("SN-D")):
            try:
                assert call() is None  # a read-through is not asked while the call is pending
            except E.RegistryUnavailableError:
                pass
        assert time.monotonic() - t0 < 0.1 and not reg.connected
        tgt(svc, dev, setup.rand)  # the cache still serves
        before = reg.cache.get("SN-D")
        release.set()
        wait_for(lambda: reg.connected, 3.0, 0.01)
        assert reg.cache.get("SN-D") == before
    finally:
        release.set()
        del reg.inner.record_location
    admit(svc, dev, setup.rand, time.time())


def test_pg_cache_a_location_is_not_a_change_and_an_open_transaction_does_not_hold_the_feed(setup):
    """Location writes neither stamp change_txid nor notify; a transaction held open elsewhere
    does not make every later read return every row changed since (the snapshot's xip)."""
    from tessera.pg_registry import read_changes

    served = setup.serve()
    svc = served.service("radius-a")
    for i in range(5):
        make_device(setup.admin, f"SN-X{i}", now=time.time())
    db = psycopg.connect(setup.conninfo, autocommit=True)
    idle = psycopg.connect(setup.conninfo)  # not autocommit: an open transaction with an xid
    try:
        db.execute("LISTEN tessera_changes")

        def txid():
            return db.execute("SELECT change_txid FROM device WHERE device_id = 'SN-X0'").fetchone()[0]
        before = txid()
        setup.admin.registry.record_location("SN-X0", "sw1", "192.0.2.10", "ge-0/0/1", "02-00-00-00-00-01", 5)
        assert txid() == before and list(db.notifies(timeout=0.3)) == []
        setup.admin.revoke("SN-X0", time.time())
        assert txid() != before and len(list(db.notifies(timeout=1, stop_after=1))) == 1

        idle.execute("SELECT pg_current_xact_id()")
        snap, rows, _ = read_changes(db, None)
        for i in range(1, 5):
            setup.admin.revoke(f"SN-X{i}", time.time())
        snap, rows, _ = read_changes(db, snap)
        assert sorted(r.device_id for r in rows) == [f"SN-X{i}" for i in range(1, 5)]
        snap, rows, _ = read_changes(db, snap)
        assert rows == []  # the open transaction's xid is in xip, not the horizon of every row
        idle.execute("UPDATE device SET updated = 12345 WHERE device_id = 'SN-X0'")
        idle.commit()  # it commits last, with the lowest id: still found
        snap, rows, _ = read_changes(db, snap)
        assert [r.device_id for r in rows] == ["SN-X0"]
        wait_for(lambda: svc.registry.get_device("SN-X4").state is DeviceState.REVOKED, 1.0)
    finally:
        db.close()
        idle.close()


def test_pg_cache_a_notification_flood_costs_a_bounded_number_of_reads(setup):
    served = setup.serve()
    reg = served.registry
    db = psycopg.connect(setup.conninfo, autocommit=True)
    try:
        reads, t0 = reg.reads, time.monotonic()
        for _ in range(2000):
            db.execute("NOTIFY tessera_changes")
        took = time.monotonic() - t0
        time.sleep(0.2)
        n = reg.reads - reads
        print(f"\n2000 notifications in {took:.2f} s: {n} feed reads")
        assert n <= 20 * (took + 0.2) + 3
    finally:
        db.close()


def test_pg_cache_a_forked_child_detaches_the_parent_sockets(setup):
    """In the child the parent's connections' sockets are /dev/null: nothing the child does
    reaches the parent's sessions, and the parent's exit ends its backends."""
    served = setup.serve()
    reg = served.registry
    reg.get_device("SN-none")  # the writer's connection is open too (a read-through)
    wait_for(lambda: reg._listener_db is not None, 2.0, 0.01)
    fds = [reg._listener_db.pgconn.socket, reg.inner._db.pgconn.socket]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, "|".join(os.readlink(f"/proc/self/fd/{fd}") for fd in fds).encode())
        os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1000).decode().split("|") == ["/dev/null", "/dev/null"]
        assert all(os.readlink(f"/proc/self/fd/{fd}").startswith("socket:") for fd in fds)  # the parent's own
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    make_device(setup.admin, "SN-after", now=time.time())
    wait_for(lambda: reg.cache.get("SN-after") is not None, 1.0)  # the parent's listener unharmed


def test_pg_cache_unauthenticated_lookups_cannot_spend_the_proven_budget(setup):
    from tessera.pg_cache import UNPROVEN_READ_THROUGH_PER_SECOND

    served = setup.serve()
    reg = served.registry
    make_device(setup.admin, "SN-B", now=time.time())
    wait_for(lambda: reg.cache.get("SN-B") is not None, 1.0)
    counted = Counting(reg.inner)
    reg.inner = counted
    try:
        for i in range(3 * UNPROVEN_READ_THROUGH_PER_SECOND):
            assert reg.get_device(f"SN-unknown-{i}") is None
        assert reg.find_by_certificate("/CN=nobody", "0a") is None
        assert counted.calls.count("get_device") <= UNPROVEN_READ_THROUGH_PER_SECOND + 2
        assert "find_by_certificate" not in counted.calls  # that budget is spent
        assert reg.read_through("SN-B") is not None  # a proven request's is not
    finally:
        reg.inner = counted.inner


def test_pg_cache_audit_overflow_is_counted_logged_once_and_written(setup, monkeypatch):
    from tessera import pg_cache

    monkeypatch.setattr(pg_cache, "AUDIT_BUFFER", 3)
    served = setup.serve()
    reg = served.registry
    reg._stop.set()  # no listener: the flush is run below
    reg._thread.join(5)
    reg._down_since = reg.clock()
    for i in range(5):
        reg.add_audit(AuditEvent(int(time.time()), "register-rejected", "SN-AU", f"E{i}", "radius-a"))
    assert [e.detail for e in reg._audit] == ["E2", "E3", "E4"] and reg.dropped_audit == 2
    assert len([t for _, t in setup.logs if "audit buffer full" in t]) == 1
    reg._down_since = None
    real = reg.inner.add_audit
    fail = {"E3"}

    def flaky(event):
        if event.detail in fail:
            fail.clear()
            raise E.RegistryUnavailableError("down again")
        real(event)
    reg.inner.add_audit = flaky
    with pytest.raises(E.RegistryUnavailableError):
        reg._flush_audit()
    assert [e.detail for e in reg._audit] == ["E3", "E4"]  # put back in front
    reg._down_since = None
    reg._flush_audit()
    rows = setup.admin.registry.audit()
    assert [e.detail for e in rows if e.device_id == "SN-AU"] == ["E2", "E3", "E4"]
    dropped = [e for e in rows if e.event == "audit-dropped"]
    assert len(dropped) == 1 and dropped[0].count == 2 and reg._dropped_unwritten == 0
    del reg.inner.add_audit


def test_pg_cache_plugin_reloads_the_key_ring_on_an_eap_step(setup):
    """A server that sees only EAP (no Tessera operation) still picks up a rotation."""
    from tessera.plugin.adapter import Plugin

    rlm = types.SimpleNamespace(**vars(RLM), radlog=lambda level, msg: None)
    plugin = Plugin.from_config({"registry": setup.url, "kek": setup.kek_path, "server_id": "radius-a"}, rlm)
    try:
        reg = plugin.realm.registry
        version = reg.cache.keys_version
        setup.admin.rotate(time.time())
        wait_for(lambda: reg.cache.keys_version != version, 2.0, 0.01)
        time.sleep(1.05)  # RELOAD_EVERY
        plugin.authorize((("Tessera-Step", "eap-pwd-password"), ("User-Name", "SN-nobody")))
        assert [k.kvno for k in plugin.service.keyring.versions()] == [1, 2]
    finally:
        plugin.close()
