"""Device faults, tried and tabled (issue 10): port flaps and clocks, in the lab of
`tessera.lab.faults` (3 servers on PostgreSQL, agents up and peered), in its scenario interface:
`SCENARIOS` maps a name to `(FaultLab) -> Row`. `tessera.lab.faults` runs them after its own;
this module also runs them alone:

    .venv/bin/python -m tessera.lab.faults_device [--only NAME] [--flaps N]

How this works: every cell is measured in the run, from the agents' status sockets (port,
TGT, sessions, clock offset), the servers' logs (their "rejected for" lines name the error),
the registry's rows and audit read over PostgreSQL's socket, and /proc (the agents' RSS).

- port-flaps: one device's cable pulled and plugged `flaps` times (switch port down, wait for
  the agent to see it, up); per flap the time to re-admitted (port up), to a valid TGT and to
  re-peered with every other device (both sides hold the session; waited for PEER_WAIT, since
  a realm server answers at most 16 session requests per pair in its replay window, 301 s:
  tessera/replay.py DEFAULT_PER_PAIR), then how long re-peering took after the last; after all of them, the
  registry (every device's generation equals its "registered" audit rows, one transaction
  each: nothing half-written), the agents' RSS before and after, and the peers' session
  tables (one session per peer, no handshakes left open).
- device-clock: one agent restarted under libfaketime (LD_PRELOAD, FAKETIME "+10m" and then
  "-10m"; Debian's `faketime` package), so that only its clock is off (and its wpa_supplicant's); the time until it is
  peered again, the offset it adopted (status `clock_offset`), what the servers refused; then
  restarted on the true clock.
- server-clock: radius1 (hostapd's first server, first in two devices' lists) restarted under
  libfaketime "+10m" for `SERVER_SKEW_S`; what the servers refused, which devices adopted a
  wrong clock, whether every pair stayed peered and a port flapped meanwhile was admitted; then
  restarted on the true clock and the recovery measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

from tessera.lab.faults import FaultLab, Row, _ms, _until
from tessera.lab.netns import Lab
from tessera.lab.topology import AGENT, LabDevice
from tessera.service import Policy

FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"  # Debian's faketime / libfaketime
FLAPS = 100
PEER_WAIT = 4.0  # s a flap waits for re-peering before the next (a handshake takes ~0.5 s; see port_flaps)
FLAP_EVERY = 2.0  # s between plug-ins: a peer answers 0.5 hellos a second per initiator after a burst of 4
# (tessera.node Timers.hello_rate): flaps back to back would measure that rate limit, not the recovery
SERVER_SKEW_S = 40.0  # how long radius1 runs on the wrong clock (two TGT lifetimes of the lab)


def faketime_env(offset: str) -> list[str]:
    """`env` arguments that shift one process's clock (and its children's) by `offset`, e.g.
    "+10m". libfaketime moves its monotonic clock too: left true (FAKETIME_DONT_FAKE_MONOTONIC),
    Python 3.11's time.sleep fails with EINVAL under Debian's libfaketime 0.9.10
    (wolfcw/libfaketime#426, clock_nanosleep with TIMER_ABSTIME). Intervals stay right either
    way; a timed wait on a threading lock may not (libfaketime#390), which the agent's request
    path does not use."""
    if not os.path.exists(FAKETIME_LIB):
        raise RuntimeError(f"{FAKETIME_LIB} is missing: install Debian's faketime package (tools/bootstrap does)")
    return [f"LD_PRELOAD={FAKETIME_LIB}", f"FAKETIME={offset}"]


def rss_kib(pid: int | None) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration, TypeError):
        return None


def start_agent(fl: FaultLab, d: LabDevice, env: list[str] = ()) -> None:
    """(Re)start d's agent as `RealmLab.start_agent` does, under `env` (faketime) if given."""
    rl = fl.rl
    rl.stop_agent(d)
    sock = os.path.join(d.state_dir, "agent.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    argv = [str(AGENT), "run", "-i", "eth0", "--bundle", str(d.dir / "bundle.json"), "--state-dir", d.state_dir,
            "--announce-every", "0.5", "--revocation-poll", "5.0"]
    d.agent = rl.lab.spawn(f"agent-d{d.dev.index}", d.dev.ns, ["env", *env, *argv] if env else argv)
    if not rl.wait(lambda: os.path.exists(sock), 15):
        raise RuntimeError(f"agent of {d.device_id} did not start; see {d.agent.log_path}")


def _status(fl: FaultLab, d: LabDevice) -> dict:
    return fl.rl.status(d) or {}


def _pair_peered(fl: FaultLab, d: LabDevice, others: list[LabDevice]) -> bool:
    """d and every other device hold the same session with each other."""
    st = _status(fl, d)
    mine = st.get("sessions", {})
    for o in others:
        theirs = _status(fl, o).get("sessions", {}).get(d.device_id)
        if o.device_id not in mine or theirs is None or theirs["session_id"] != mine[o.device_id]["session_id"]:
            return False
    return True


def _registry_consistent(fl: FaultLab) -> tuple[list[str], dict[str, int]]:
    """Devices whose row and audit disagree (generation vs "registered" audit rows, state,
    a registration without its DRT), and the registrations per device."""
    bad, regs = [], {}
    events = fl.audit()
    for device_id, (state, generation) in fl.rows().items():
        n = sum(1 for e in events if e.device_id == device_id and e.event == "registered")
        regs[device_id] = n
        if n != generation or (generation and state not in ("registered", "revoked")):
            bad.append(f"{device_id}: generation {generation}, {n} registered audit rows, {state}")
    return bad, regs


def _refusals(c) -> str:
    """(server, error) counts as "radius2 clock-skew x1, ..."."""
    return ", ".join(f"{sid} {name} x{n}" for (sid, name), n in sorted(c.items())) or "none"


def _q(values: list[float]) -> str:
    """median / p95 / max of seconds."""
    if not values:
        return "-"
    v = sorted(values)
    return f"{_ms(statistics.median(v))} / {_ms(v[min(len(v) - 1, int(0.95 * len(v)))])} / {_ms(v[-1])}"


# -- (a) port flaps ----------------------------------------------------------------------------
def port_flaps(fl: FaultLab, flaps: int = FLAPS) -> Row:
    rl = fl.rl
    d, others = rl.devices[0], rl.devices[1:]
    failed: list[str] = []
    mark = fl.mark()
    gen_before = fl.rows()[d.device_id][1]
    rss_before = {x.device_id: rss_kib(x.agent.pid) for x in rl.devices}
    limited_before = sum(_status(fl, o).get("hellos_limited", 0) for o in others)
    admitted, ticketed, peered, missed = [], [], [], []
    plugged = 0.0
    for i in range(flaps):
        time.sleep(max(0.0, plugged + FLAP_EVERY - time.monotonic()))
        rl.set_carrier(d, False)
        if _until(lambda: _status(fl, d).get("port") == "down", 5, 0.01) is None:
            failed.append(f"flap {i + 1}: the agent did not see the carrier go")
            break
        rl.set_carrier(d, True)
        plugged = time.monotonic()
        a = _until(lambda: _status(fl, d).get("port") == "up", 30, 0.01)
        t = _until(lambda: (_status(fl, d).get("tgt") or {}).get("expires_in", 0) > 0
                   and _status(fl, d).get("state") == "authenticated", 30, 0.01)
        if None in (a, t):
            failed.append(f"flap {i + 1}: not re-admitted with a TGT within 30 s")
            break
        admitted.append(a)  # each _until counts from where the one before it ended
        ticketed.append(a + t)
        p = _until(lambda: _pair_peered(fl, d, others), PEER_WAIT, 0.02)
        if p is None:
            missed.append(i + 1)
        else:
            peered.append(a + t + p)
    settled = _until(lambda: _pair_peered(fl, d, others), 2 * Policy.clock_skew + 30, 0.2)
    if settled is not None:
        settled = time.monotonic() - plugged  # from the last plug-in
    time.sleep(2.0)  # keys retiring after the last handshakes go
    rss_after = {x.device_id: rss_kib(x.agent.pid) for x in rl.devices}
    bad_rows, regs = _registry_consistent(fl)
    gen_after = fl.rows()[d.device_id][1]
    tables = {o.device_id: (len(_status(fl, o).get("sessions", {})), len(_status(fl, o).get("handshakes", [])))
              for o in rl.devices}
    unbounded = {k: v for k, v in tables.items() if v[0] > len(rl.devices) - 1 or v[1] > 0}
    limited = sum(_status(fl, o).get("hellos_limited", 0) for o in others) - limited_before
    refused = fl.refusals(mark)
    if settled is None:
        failed.append(f"{d.device_id} not re-peered with all within {2 * Policy.clock_skew + 30} s of the last flap")
    if bad_rows:
        failed.append("registry rows inconsistent: " + "; ".join(bad_rows))
    if unbounded:
        failed.append(f"session tables beyond one per peer or handshakes left: {unbounded}")
    grow = {k: rss_after[k] - rss_before[k] for k in rss_before if rss_before[k] and rss_after[k]}
    return Row(
        fault=(f"{len(admitted)} port flaps of {d.device_id} (cable out until its agent saw it, then in; plugged "
               f"in every {FLAP_EVERY:.0f} s at most, the next flap {PEER_WAIT:.0f} s after the plug-in at most)"),
        users_saw=(f"re-admitted (port up) median/p95/max {_q(admitted)}; valid TGT {_q(ticketed)}; "
                   f"re-peered with all {len(others)} peers (both sides) within {PEER_WAIT:.0f} s after {len(peered)} "
                   f"of {len(admitted)} flaps, {_q(peered)}; not after {len(missed)} (first: flap "
                   f"{missed[0] if missed else '-'}); its hellos its peers left over their rate limit: {limited}"),
        refused=f"servers: {_refusals(refused)}",
        lost=(f"none: {d.device_id} generation {gen_before} → {gen_after}; every device's generation = its "
              f"'registered' audit rows ({', '.join(f'{k} {v}' for k, v in sorted(regs.items()))})"
              if not bad_rows else "; ".join(bad_rows))
             + f"; sessions held per device after: {', '.join(f'{k} {v[0]}' for k, v in sorted(tables.items()))}, "
               f"open handshakes {sum(v[1] for v in tables.values())}",
        recovery=((f"by itself: re-peered with all {_ms(settled)} after the last plug-in" if settled is not None
                   else "NOT re-peered with all after the last flap")
                  + "; agent RSS before → after (KiB): "
                  + ", ".join(f"{k} {rss_before[k]} → {rss_after[k]}" for k in sorted(rss_before))),
        failed=failed,
        data={"admitted": admitted, "ticketed": ticketed, "peered": peered, "missed": missed, "settled": settled,
              "rss_before": rss_before, "rss_after": rss_after, "rss_growth": grow, "tables": tables,
              "registrations": regs, "limited": limited,
              "refused": dict((f"{s}:{n}", c) for (s, n), c in refused.items())})


# -- (b) a device clock 10 min off -------------------------------------------------------------
CERT_SLACK = 300  # s: the lab's certificates begin 5 min before the lab (tessera/identity.py)


def _agent_log(d: LabDevice, since: int) -> str:
    try:
        with open(d.agent.log_path, "rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def device_clock(fl: FaultLab) -> Row:
    rl = fl.rl
    d = rl.devices[1]
    others = [o for o in rl.devices if o is not d]
    failed, parts, refused_all = [], [], []

    def run(offset: str, within: float, label: str) -> float | None:
        mark = fl.mark()
        since = os.path.getsize(d.agent.log_path) if d.agent else 0
        t0 = time.monotonic()
        start_agent(fl, d, faketime_env(offset))
        p = _until(lambda: _pair_peered(fl, d, others), within, 0.05)
        st, text = _status(fl, d), _agent_log(d, since)
        refused_all.append((label, fl.refusals(mark)))
        how = [line.split(" clock: ", 1)[1] for line in text.splitlines() if " clock: " in line][:2]
        tls = "certificate is not yet valid" in text
        if p is None:
            parts.append(f"{label}: not peered within {within:.0f} s (port {st.get('port')}, {st.get('state')}, "
                         f"offset {st.get('clock_offset')} s" + ("; RadSec refused: the servers' certificate is not "
                                                                 "yet valid by its clock" if tls else "") + ")")
        else:
            parts.append(f"{label}: peered again {_ms(time.monotonic() - t0)} after its agent started, offset "
                         f"{st.get('clock_offset'):+d} s ({'; '.join(how) or 'no clock line'})")
        peer_offsets = {o.device_id: _status(fl, o).get("clock_offset") for o in others}
        if any(peer_offsets.values()):
            failed.append(f"peers moved their clocks: {peer_offsets}")
        return p

    if run("+10m", 60, "clock +10 min") is None:
        failed.append(f"{d.device_id} with its clock 10 min ahead not peered within 60 s")
    age = time.time() - rl.now
    if age < CERT_SLACK + 10:  # the servers' certificate is younger than the clock is behind: measure that too
        run("-10m", 15, f"clock -10 min, lab {age:.0f} s old")
        time.sleep(max(0.0, CERT_SLACK + 10 - (time.time() - rl.now)))
    if run("-10m", 60, f"clock -10 min, lab {time.time() - rl.now:.0f} s old") is None:
        failed.append(f"{d.device_id} with its clock 10 min behind not peered within 60 s (certificates older "
                      f"than 10 min)")
    t0 = time.monotonic()
    start_agent(fl, d)
    back = _until(lambda: _pair_peered(fl, d, others), 60, 0.05)
    if back is None:
        failed.append(f"{d.device_id} on the true clock not peered within 60 s")
    bad_rows, _ = _registry_consistent(fl)
    return Row(
        fault=f"{d.device_id}'s clock 10 min off (its agent and wpa_supplicant under libfaketime, agent restarted "
              f"with its saved tickets)",
        users_saw="; ".join(parts) + "; its peers' clocks unchanged",
        refused="; ".join(f"{o}: {_refusals(r)}" for o, r in refused_all),
        lost="none: " + ("registry rows consistent" if not bad_rows else "; ".join(bad_rows)),
        recovery=(f"by itself, from the realm's signed time; restarted on the true clock: peered again in "
                  f"{_ms(time.monotonic() - t0) if back is not None else 'NOT within 60 s'}"),
        failed=failed + [f"registry: {b}" for b in bad_rows],
        data={"parts": parts, "refused": {o: {f"{s}:{n}": c for (s, n), c in r.items()} for o, r in refused_all}})


# -- (c) a server clock 10 min off -------------------------------------------------------------
SKEW_ENV, GRACE_ENV = "TESSERA_LAB_CLOCK_SKEW", "TESSERA_LAB_REGISTRY_GRACE"
SKEWED_OPENER = "tessera.lab.faults_device:open_skewed_realm"


class SkewedService:
    """A `Service` whose every `now` is `skew` seconds off (see `open_skewed_realm`); its clock
    check against the registry database (`Service.process`) runs as in a real module."""

    def __init__(self, service, skew: float):
        self._service, self._skew = service, skew

    def __getattr__(self, name):
        return getattr(self._service, name)

    def handle(self, request, now):
        return self._service.handle(request, now + self._skew)

    def handle_as(self, request, sender, now):
        return self._service.handle_as(request, sender, now + self._skew)

    def error_reply(self, exc, now):
        return self._service.error_reply(exc, now + self._skew)

    def admit_certificate(self, serial_hex, issuer, common_name, now):
        return self._service.admit_certificate(serial_hex, issuer, common_name, now + self._skew)

    def eap_pwd_password(self, device_id, now):
        return self._service.eap_pwd_password(device_id, now + self._skew)

    def record_location(self, device_id, nas_identifier, nas_address, nas_port_id, calling_station, now):
        return self._service.record_location(device_id, nas_identifier, nas_address, nas_port_id, calling_station,
                                              now + self._skew)


class SkewedRealm:
    def __init__(self, realm, skew: float):
        self._realm, self._skew = realm, skew

    def __getattr__(self, name):
        return getattr(self._realm, name)

    def service(self, server_id: str) -> SkewedService:
        return SkewedService(self._realm.service(server_id), self._skew)


def open_skewed_realm(registry: str, kek_path: str) -> SkewedRealm:
    """The module's `realm_opener` for a lab radiusd whose clock is $TESSERA_LAB_CLOCK_SKEW
    seconds off. libfaketime cannot shift the module's clock: FreeRADIUS loads libpython so that
    its clock_gettime binds to libc itself (LD_DEBUG=bindings: "libpython3.11.so.1.0 to
    libc.so.6: clock_gettime"), whatever LD_PRELOAD says; it does shift radiusd's own C code and
    OpenSSL. So the module's clock is shifted here, everywhere the module reads it: the
    registry cache's wall clock (its check against PostgreSQL's) and every `now` the service
    is given. Otherwise the realm is opened as `tessera.realm.open_realm(serving=True)` does."""
    import radiusd  # inside radiusd only

    from tessera.pg_cache import CachedRegistry
    from tessera.realm import Realm, read_kek
    from tessera.registry_url import open_registry

    skew = float(os.environ[SKEW_ENV])

    def log(level: str, text: str) -> None:
        radiusd.radlog(radiusd.L_INFO if level == "info" else radiusd.L_ERR, "tessera: " + text)
    reg = CachedRegistry(open_registry(registry), grace=float(os.environ[GRACE_ENV]), log=log,
                         wall=lambda: time.time() + skew)
    return SkewedRealm(Realm(reg, read_kek(kek_path)), skew)


def _set_opener(h, opener: str) -> None:
    """Point server h's module config (the lab's own copy) at `opener`."""
    path = h.raddb / "mods-available" / "tessera"
    text = path.read_text()
    old = next(line for line in text.splitlines() if line.strip().startswith("realm_opener = "))
    path.write_text(text.replace(old, old.split("=")[0] + f'= "{opener}"'))


def server_clock(fl: FaultLab, seconds: float = SERVER_SKEW_S) -> Row:
    rl = fl.rl
    h = rl.hosts[0]
    base = h.radius.run_prefix
    failed: list[str] = []
    h.stop()
    mark = fl.mark()
    _set_opener(h, SKEWED_OPENER)
    h.radius.run_prefix = (*base, "env", *faketime_env("+10m"), f"{SKEW_ENV}=600", f"{GRACE_ENV}={fl.grace}")
    try:
        h.start()
        t0 = time.monotonic()
        said = _until(lambda: "off the registry database's" in _read_log(h, mark), 10)
        offsets, unpeered, apart = {}, set(), {d.device_id: 0 for d in rl.devices}
        flapped = rl.devices[-1]
        flap_admitted = None
        while time.monotonic() - t0 < seconds:
            for d in rl.devices:
                st = _status(fl, d)
                if abs(st.get("clock_offset") or 0) > 2:
                    offsets.setdefault(d.device_id, set()).add(st["clock_offset"])
                # not peered with all for 2 s in a row (a rekey's handshake, ~0.5 s, is not counted)
                apart[d.device_id] = 0 if _pair_peered(fl, d, [o for o in rl.devices if o is not d]) \
                    else apart[d.device_id] + 1
                if apart[d.device_id] >= 8:
                    unpeered.add(d.device_id)
            if flap_admitted is None and time.monotonic() - t0 > seconds / 2:
                rl.set_carrier(flapped, False)
                _until(lambda: _status(fl, flapped).get("port") == "down", 5, 0.01)
                rl.set_carrier(flapped, True)
                flap_admitted = _until(lambda: _status(fl, flapped).get("port") == "up", 20, 0.02)
            time.sleep(0.25)
        refused = fl.refusals(mark)
    finally:
        h.stop()
        _set_opener(h, "tessera.realm:open_realm")
        h.radius.run_prefix = base
        h.start()
    rest = _until(lambda: fl.all_peered() and all(abs(_status(fl, d).get("clock_offset", 99)) <= 2
                                                  for d in rl.devices), 90)
    after = {d.device_id: _status(fl, d).get("clock_offset") for d in rl.devices}
    bad_rows, _ = _registry_consistent(fl)
    if rest is None:
        failed.append(f"not all peered on the true clock within 90 s of radius1's restart: offsets {after}")
    if offsets:
        failed.append(f"devices adopted radius1's wrong clock: {offsets}")
    if bad_rows:
        failed.append("registry: " + "; ".join(bad_rows))
    return Row(
        fault=f"{h.server_id}'s clock 10 min ahead for {seconds:.0f} s (its module's clock shifted by the lab's "
              f"realm opener, radiusd itself under libfaketime +10m)"
              + "; the service checks its clock against the registry database's before each exchange",
        users_saw=(f"{h.server_id} " + (f"logged its clock off {_ms(said)} after its start" if said is not None
                                        else "did NOT log its clock off")
                   + "; devices that adopted a wrong clock: "
                   + (", ".join(f"{k} ({'/'.join(f'{o:+d}' for o in sorted(v))} s)" for k, v in sorted(offsets.items()))
                      or "none")
                   + f"; devices not peered with all for 2 s or more: {', '.join(sorted(unpeered)) or 'none'}"
                   + f"; a port flapped meanwhile re-admitted in "
                   + (_ms(flap_admitted) if flap_admitted is not None else "NOT within 20 s")),
        refused=_refusals(refused),
        lost="none: registry rows consistent" if not bad_rows else "; ".join(bad_rows),
        recovery=(f"{h.server_id} restarted on the true clock: all peered, no device offset after "
                  + (_ms(rest) if rest is not None else f"NOT within 90 s (offsets {after})")
                  + "; no device offset above 2 s: "
                  + ("yes" if all(abs(v or 0) <= 2 for v in after.values()) else str(after))),
        failed=failed,
        data={"offsets": {k: sorted(v) for k, v in offsets.items()}, "unpeered": sorted(unpeered), "said": said,
              "flap_admitted": flap_admitted, "refused": {f"{s}:{n}": c for (s, n), c in refused.items()},
              "recovery": rest, "after": after})


def _read_log(h, mark) -> str:
    try:
        with open(h.radius.log_file, "rb") as f:
            f.seek(mark.servers.get(h.server_id, 0))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


SCENARIOS = {
    "port-flaps": port_flaps,
    "device-clock": device_clock,
    "server-clock": server_clock,  # Service.process checks the clock against the registry database's
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tessera.lab.faults_device", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=sorted(SCENARIOS), action="append")
    p.add_argument("--flaps", type=int, default=FLAPS)
    p.add_argument("--keep", action="store_true", help="keep the lab's logs")
    a = p.parse_args(argv)
    rows = []
    with Lab() as lab:
        try:
            fl = FaultLab(lab)
            print(f"lab built and peered in {fl.built_s:.1f} s", flush=True)
            for name, fn in SCENARIOS.items():
                if a.only and name not in a.only:
                    continue
                t = time.monotonic()
                row = fn(fl, a.flaps) if name == "port-flaps" else fn(fl)
                print(f"{name}: {time.monotonic() - t:.0f} s"
                      + (f"; FAILED: {'; '.join(row.failed)}" if row.failed else ""), flush=True)
                rows.append(row)
            fl.close()
        finally:
            if a.keep:
                print(f"logs kept in {lab.workdir}")
            else:
                shutil.rmtree(lab.workdir, ignore_errors=True)
    print("\n| fault | what users saw | what was refused (named errors) | lost or half-written | recovery (measured) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(c.replace("|", "/") for c in row.cells()) + " |")
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
