"""Faults, tried and tabled (issue 10): a realm on several hosts under the faults an operator
meets, each scenario measured in the same run and printed as one Markdown table.

    .venv/bin/python -m tessera.lab.faults [--only NAME] [--markdown FILE] [--grace S]

How this works: `FaultLab` builds the 3-server PostgreSQL lab once (`RealmLab(servers=3,
registry="postgresql")`, short TGT and session lifetimes so that the agents renew and rekey all
the time), brings every agent up and peered, and enrols probe devices: `Probe` is a device
without an agent or a port, run in radius2's namespace (never the one a scenario disturbs),
that asks named servers for registrations, TGTs and renewals over UDP, one JSON line per
command, and reports per request the server, the outcome, the Tessera-Error code and name, the
wall-clock times sent and answered and the TGT's kvno (its header: docs/layouts.md). Then each
scenario runs in turn and returns a `Row`; every cell is made from what that run measured:
probe answers, the agents' logs and status sockets, the servers' logs (their `rejected for`
lines carry the error's name) and the registry's rows read before and after.

The scenario interface is `SCENARIOS`: name -> `(FaultLab) -> Row`, in the order they run. A
scenario leaves the lab as it found it (servers running, PostgreSQL reachable, agents peered)
or says in its row that it could not. `tessera.lab.faults_device` (device faults: port flaps,
clocks), when it exists, contributes its own `SCENARIOS` of the same shape, run after these.
A row whose `failed` is set (a security bound broken, a scenario that could not run) makes the
run exit 1.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from tessera.identity import UDP
from tessera.lab.netns import Lab
from tessera.lab.pki import write_file
from tessera.lab.topology import POSTGRESQL, REPO, RealmLab
from tessera.registry_url import open_registry
from tessera.service import Policy


@dataclass
class Row:
    """One line of the table; `failed` names what broke (the run then exits 1)."""
    fault: str
    users_saw: str
    refused: str
    lost: str
    recovery: str
    failed: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)  # the measurements behind the cells, for tests

    def cells(self) -> tuple[str, ...]:
        return self.fault, self.users_saw, self.refused, self.lost, self.recovery


Scenario = Callable[["FaultLab"], Row]
SCENARIOS: dict[str, Scenario] = {}
COLUMNS = ("fault", "what users saw", "what was refused (named errors)", "lost or half-written",
           "recovery (measured)")


def scenario(name: str):
    def add(fn: Scenario) -> Scenario:
        SCENARIOS[name] = fn
        return fn
    return add


# s: TGT and session; agents renew with 15 s left and rekey 15 s before the end. Not shorter: a
# server takes 16 session requests per device pair in its replay window (301 s, tessera.replay),
# and a pair rekeying every 15 s (20 s tickets) runs out of them, faults or not.
TICKET_LIFETIME = 60
SETTLE_QUIET = 15.0  # s every pair must stay peered, without an agent failure, to count as settled
REGISTRY_GRACE = 15.0  # s: the module's registry_grace in this lab (its default is 30)

# A device without an agent, driven line by line: each stdin line {"op", "servers", ...} -> one
# stdout line, a list of results {"server", "ok", "code", "name", "reason", "t0", "t1", "kvno"}.
# op register/auth/renew: once at each server in turn; renew starts from the same TGT each time;
# "as_peer": as the second device (argv[2]). op session: a session key for this device (the
# initiator) and the second one (the responder asks the realm), both parts opened.
# op load: TGT requests with failover across "servers" (in order) every "every" s for "seconds".
# op save: keep the current TGT under "slot"; renew with "slot" starts from that TGT.
PROBE = r"""
import json, os, struct, sys, time
from tessera.device import DeviceClient
from tessera.identity import BootstrapBundle, DeviceKey
from tessera.peer import PeerInitiator, PeerResponder
from tessera.radius.client import NoServerAnsweredError, RadiusClient, RejectedError, Server

def device(path):
    bundle = BootstrapBundle.from_json(open(path).read())
    return bundle, DeviceClient(bundle, DeviceKey.from_pem(bundle.device_key_pem))

bundle, client = device(sys.argv[1])
peer_bundle, peer = device(sys.argv[2]) if len(sys.argv) > 2 else (None, None)
servers = {s.server_id: Server(s.server_id, s.host, s.port, bundle.radius_secret.encode()) for s in bundle.servers}
slots = {}

def one(op, c, sids, timeout, retries):
    c.abandon()
    asked, roles = [], []
    def build(sid):
        asked.append(sid)
        now, nonce = time.time(), os.urandom(16)
        if op == "register":
            return c.register_request(sid, now, nonce)
        if op == "session":  # this device the initiator, the peer device asks the realm
            ini, resp = PeerInitiator(client, peer.device_id), PeerResponder(peer)
            resp.receive_hello(ini.hello(now, os.urandom(16)), now)
            roles[:] = [ini, resp]
            return resp.session_request(sid, now, nonce)
        return (c.renew_request if op == "renew" else c.auth_request)(sid, now, nonce)
    rc = RadiusClient([servers[s] for s in sids], timeout=timeout, retries=retries)
    out = {"ok": False, "code": None, "name": "", "reason": "", "kvno": None, "t0": time.time()}
    try:
        reply = rc.exchange(peer.device_id if op == "session" else c.device_id, build)
        if op == "register":
            c.register_reply(reply, time.time())
        elif op == "session":
            roles[0].receive_ticket(roles[1].receive_session_reply(reply, time.time()), time.time())
        else:
            out["kvno"] = struct.unpack("!BBI", c.ticket_reply(reply, time.time()).tgt[:6])[2]
        out["ok"] = True
    except RejectedError as exc:
        out.update(code=exc.code, reason=exc.reason, name=exc.reason.split(":", 1)[0])
    except NoServerAnsweredError as exc:
        out.update(reason=str(exc), name="no-answer")
    except Exception as exc:  # refused on this side before asking (an expired TGT): named, not sent
        out.update(reason=str(exc), name="local " + getattr(exc, "name", type(exc).__name__))
    out["t1"] = time.time()
    out["server"] = asked[-1] if asked else None
    return out

for line in sys.stdin:
    cmd, results = json.loads(line), []
    timeout, retries = cmd.get("timeout", 1.0), cmd.get("retries", 1)
    c = peer if cmd.get("as_peer") else client
    if cmd["op"] == "save":
        slots[cmd["slot"]] = client.credentials
    elif cmd["op"] == "load":
        end = time.time() + cmd["seconds"]
        while time.time() < end:
            results.append(one("auth", c, cmd["servers"], timeout, retries))
            time.sleep(cmd["every"])
    else:
        held = slots[cmd["slot"]] if "slot" in cmd else c.credentials
        for sid in cmd["servers"]:
            if cmd["op"] == "renew":
                c.credentials = held
            results.append(one(cmd["op"], c, [sid], timeout, retries))
    print(json.dumps(results), flush=True)
"""


class Probe:
    """A probe device's process in a namespace (ended by its PID)."""

    def __init__(self, ns: str, bundle_path: str, peer_bundle_path: str | None = None):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, str(REPO / ".venv" / "bin" / "python"), "-c", PROBE,
                                      bundle_path, *([peer_bundle_path] if peer_bundle_path else [])],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lock = threading.Lock()

    def ask(self, op: str, servers: list[str], **kw) -> list[dict]:
        with self.lock:
            self.proc.stdin.write(json.dumps({"op": op, "servers": servers, **kw}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the probe exited with {self.proc.poll()}")
        return json.loads(line)

    def by_server(self, op: str, servers: list[str], **kw) -> dict[str, dict]:
        return {r["server"]: r for r in self.ask(op, servers, **kw)}

    def load(self, servers: list[str], seconds: float, every: float = 0.05, timeout: float = 1.0) -> "Background":
        """TGT requests with failover, in a thread; `.result()` waits for them."""
        return Background(lambda: self.ask("load", servers, seconds=seconds, every=every, timeout=timeout,
                                           retries=0))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


class Background:
    def __init__(self, fn):
        self._out, self._exc = None, None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn) -> None:
        try:
            self._out = fn()
        except BaseException as exc:  # noqa: BLE001 -- given to result()
            self._exc = exc

    def result(self):
        self._thread.join()
        if self._exc is not None:
            raise self._exc
        return self._out


@dataclass
class Mark:
    """Where the logs were at a moment: what happened after it is read from there on."""
    wall: float
    servers: dict[str, int]
    agents: dict[str, int]


AGENT_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) tessera\.agent (\S+?):? (\S+?):? (.*)$")
REJECTED = re.compile(r"rejected for '([^']*)': ([a-z-]+):")


class FaultLab:
    """The 3-server PostgreSQL lab with agents up and probe devices enrolled."""

    def __init__(self, lab: Lab, grace: float = REGISTRY_GRACE, devices: int = 4,
                 probes: tuple[tuple[str, str | None], ...] = (),
                 outage: float = 30.0, load_s: float = 20.0, flap_wait: float = 120.0):
        """`outage`: s PostgreSQL stays stopped; `load_s`: s of probe load around a kill;
        `flap_wait`: s a port flapped while a server is dead is given to open."""
        t = time.monotonic()
        self.lab, self.grace = lab, grace
        self.outage, self.load_s, self.flap_wait = outage, load_s, flap_wait
        self.rl = RealmLab(lab, devices, servers=3, registry=POSTGRESQL, registry_grace=grace, capture=False,
                           policy=Policy(tgt_lifetime=TICKET_LIFETIME, session_lifetime=TICKET_LIFETIME))
        self.ids = [d.device_id for d in self.rl.devices]
        self.probes: dict[str, Probe] = {}
        for name, peer in probes:
            self.add_probe(name, peer)
        for d in self.rl.devices:
            self.rl.set_carrier(d, False)
            self.rl.start_agent(d)
        for d in self.rl.devices:
            self.rl.set_carrier(d, True)
        if not self.rl.wait(self.all_peered, 60):
            raise RuntimeError(f"the lab's agents did not all peer: {[self.rl.status(d) for d in self.rl.devices]}")
        self.built_s = time.monotonic() - t

    @property
    def server_ids(self) -> list[str]:
        return [h.server_id for h in self.rl.hosts]

    def add_probe(self, name: str, peer: str | None = None) -> Probe:
        """Enrol `name` (and `peer`, its second device) over UDP, start its probe in radius2's
        namespace and register it (both) there."""
        paths = [self._enrol(n) for n in (name, peer) if n]
        p = Probe(self.rl.hosts[1].ns, *paths)
        self.lab.defer(p.close)
        self.probes[name] = p
        for as_peer in ([False, True] if peer else [False]):
            r = p.ask("register", ["radius2"], as_peer=as_peer)[0]
            if not r["ok"]:
                raise RuntimeError(f"probe {name} not registered: {r}")
        return p

    def _enrol(self, name: str) -> str:
        rl = self.rl
        bundle = rl.realm.enrol_generated(name, rl.servers, rl.cfg.secret, time.time(), UDP)
        path = rl.dir / f"probe-{name}.json"
        write_file(path, bundle.to_json().encode(), 0o600)
        return str(path)

    # -- what the run reads -----------------------------------------------------------------
    def all_peered(self) -> bool:
        return all(self.rl.peered(d, [i for i in self.ids if i != d.device_id]) for d in self.rl.devices)

    def rows(self) -> dict[str, tuple[str, int]]:
        """Every device's (state, generation) in the registry, read afresh over the socket."""
        reg = open_registry(self.rl.postgres.cluster.url())
        try:
            return {r.device_id: (r.state.value, r.generation) for r in reg.list_devices()}
        finally:
            reg.close()

    def audit(self, device_id: str | None = None) -> list:
        reg = open_registry(self.rl.postgres.cluster.url())
        try:
            return reg.audit(device_id, 10_000)
        finally:
            reg.close()

    def mark(self) -> Mark:
        return Mark(time.time(), {h.server_id: _size(h.radius.log_file) for h in self.rl.hosts},
                    {d.device_id: _size(d.agent.log_path) for d in self.rl.devices if d.agent})

    def server_lines(self, since: Mark) -> dict[str, list[str]]:
        return {h.server_id: _read_from(h.radius.log_file, since.servers.get(h.server_id, 0)).splitlines()
                for h in self.rl.hosts}

    def refusals(self, since: Mark) -> collections.Counter:
        """(server, error name) -> how many requests the servers rejected since the mark."""
        c: collections.Counter = collections.Counter()
        for sid, lines in self.server_lines(since).items():
            for line in lines:
                m = REJECTED.search(line)
                if m:
                    c[(sid, m.group(2))] += 1
        return c

    def agent_events(self, since: Mark) -> list[tuple[float, str, str, str]]:
        """(wall time, device, event, text) of the agents' log lines since the mark."""
        out = []
        day = time.strftime("%Y-%m-%d", time.localtime(since.wall))
        for d in self.rl.devices:
            if d.agent is None:
                continue
            for line in _read_from(d.agent.log_path, since.agents.get(d.device_id, 0)).splitlines():
                m = AGENT_LINE.match(line)
                if m:
                    h, mi, s, ms = m.groups()[:4]
                    t = time.mktime(time.strptime(f"{day} {h}:{mi}:{s}", "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
                    out.append((t, m.group(5), m.group(6), m.group(7)))
        return sorted(out)

    def failures(self, since: Mark) -> collections.Counter:
        """The agents' failure events since the mark, by event name."""
        return collections.Counter(e for _, _, e, _ in self.agent_events(since) if _bad(e))

    def close(self) -> None:
        for p in self.probes.values():
            p.close()


def _size(path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _read_from(path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _counts(c: collections.Counter) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(c.items())) or "none"


def _ms(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 10 else f"{s:.1f} s"


def _standing(before: dict, after: dict, ids: list[str]) -> list[str]:
    """Devices whose (state, generation) changed between two registry reads."""
    return [i for i in ids if before.get(i) != after.get(i)]


def _until(pred, timeout: float, every: float = 0.05) -> float | None:
    """Seconds until pred() held, or None if it did not within `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(every)
    return None


REVOKED = 8  # tessera.errors.RevokedError.code
# the probe devices, one (with its second device for session keys) per scenario, enrolled at build
PROBES = (("load-01", None), ("pg-01", "pg-02"), ("revoked-01", None), ("cut-01", None), ("rot-01", None))
BAD = ("failed", "expired", "ended", "link-down", "dropped", "rejected")  # agent events that are failures


def _bad(event: str) -> bool:
    return any(b in event for b in BAD)


def _settle(fl: FaultLab, quiet: float, timeout: float = 90.0) -> tuple[float | None, list[str]]:
    """Wait until every agent is peered with every other and has stayed so, with no failure in
    their logs, for `quiet` s. Returns (wall time that stretch began, what is still missing)."""
    m, end, stretch = fl.mark(), time.time() + timeout, None
    while time.time() < end:
        now = time.time()
        if fl.all_peered():
            last_bad = max((t for t, _, e, _ in fl.agent_events(m) if _bad(e)), default=0.0)
            stretch = max(stretch or now, last_bad)
            if now - stretch >= quiet:
                return stretch, []
        else:
            stretch = None
        time.sleep(0.2)
    return None, [f"{d.device_id} not peered steadily within {timeout:.0f} s (port "
                  f"{(fl.rl.status(d) or {}).get('port')})" for d in fl.rl.devices]


@scenario("kill-radiusd")
def kill_radiusd(fl: FaultLab) -> Row:
    """SIGKILL radius1 under the agents' renewals and a probe's TGT load; a port whose hostapd
    lists radius1 first flapped meanwhile; then radius1 started again."""
    rl, failed = fl.rl, _settle(fl, 3)[1]
    victim = rl.hosts[0]
    first = [d for i, d in enumerate(rl.devices, 1) if rl.bundle_servers(i)[0].server_id == victim.server_id]
    flapped = [d for d in rl.devices if rl.switch.port_servers(d.dev.port)[0].addr == victim.front][-1]
    users = [d for d in first if d is not flapped]  # their agents renew through the next server
    before, admissions = fl.rows(), rl.admissions_by_server()
    m = fl.mark()
    load = fl.probes["load-01"].load(fl.server_ids, seconds=fl.load_s, every=0.05)
    time.sleep(3)
    pid, t_kill = victim.pid, time.time()
    victim.kill()
    rl.set_carrier(flapped, False)
    time.sleep(0.5)
    rl.set_carrier(flapped, True)
    admitted_s = _until(lambda: rl.controller.is_open(flapped.dev.port)
                        and (rl.status(flapped) or {}).get("port") == "up", fl.flap_wait, every=0.1)
    via = {k: v - admissions.get(k, 0) for k, v in rl.admissions_by_server().items() if v > admissions.get(k, 0)}
    hostapd_log = _read_from(rl.dir / f"hostapd-{flapped.dev.port}.log", 0)
    failovers = re.findall(r"No response from Authentication server (\S+) - failover", hostapd_log)
    renewed = _until(lambda: all(any(e == "ticketed" and t > t_kill and dev == d.device_id
                                     for t, dev, e, _ in fl.agent_events(m)) for d in users), TICKET_LIFETIME)
    samples = load.result()
    after_kill = [r for r in samples if r["t0"] >= t_kill]
    first_ok = next((r for r in after_kill if r["ok"]), None)
    load_failed = collections.Counter(r["name"] for r in after_kill if not r["ok"])
    flap_log = [f"{e.what}@{e.at - t_kill:+.2f}s" for e in rl.controller.entries(port=flapped.dev.port)
                if e.at >= t_kill]
    print(f"  switch controller on {flapped.dev.port} since the kill: {' '.join(flap_log)}; hostapd failed over "
          f"from {failovers or 'nothing'}", flush=True)
    slowest = max((r["t1"] - r["t0"] for r in after_kill), default=0.0)
    # the agents' own failover: the renewal that began after the kill, to its TGT
    ev = fl.agent_events(m)
    agent_failover = []
    for d in users:
        start = next((t for t, dev, e, _ in ev if dev == d.device_id and e in ("renew", "authenticate") and t > t_kill),
                     None)
        done = next((t for t, dev, e, _ in ev if dev == d.device_id and e == "ticketed" and start and t >= start), None)
        if start and done:
            agent_failover.append(done - start)
    agent_via = {d.device_id: rl.radsec_servers(d) for d in users}
    still_closed = admitted_s is None
    t_restart = time.monotonic()
    victim.start()
    restart_s = time.monotonic() - t_restart
    serves = fl.probes["load-01"].by_server("auth", [victim.server_id])[victim.server_id]
    flap_after_restart = (_until(lambda: rl.controller.is_open(flapped.dev.port), 30, every=0.1)
                          if still_closed else None)
    _, missing = _settle(fl, SETTLE_QUIET)
    after = fl.rows()
    changed = _standing(before, after, fl.ids)
    if changed:
        failed.append(f"standing changed: {changed}")
    if first_ok is None:
        failed.append("no exchange succeeded after the kill")
    if not serves["ok"]:
        failed.append(f"{victim.server_id} did not serve after its restart: {serves['reason']}")
    failed += missing
    fault = f"`kill -9` {victim.server_id} (pid {pid}) under load: {len(rl.devices)} agents (TGT and sessions " \
            f"{TICKET_LIFETIME} s) + a probe asking a TGT every 50 ms over UDP (1 s timeout), {victim.server_id} " \
            f"first; port {flapped.dev.port} ({flapped.device_id}, its hostapd lists {victim.server_id} first) " \
            f"flapped (0.5 s down) right after the kill"
    if first_ok:
        saw_load = (f"probe: next TGT {_ms(first_ok['t1'] - t_kill)} after the kill, from {first_ok['server']}; "
                    f"slowest request {_ms(slowest)}")
    else:
        saw_load = "probe: no TGT after the kill"
    saw_agents = (f"agents first on {victim.server_id} ({', '.join(d.device_id for d in users)}): renewal through "
                  f"{', '.join(sorted({s for v in agent_via.values() for s in v})) or '?'} took "
                  f"{', '.join(_ms(s) for s in agent_failover) or 'n/a (none renewed)'}")
    if still_closed:
        saw_port = (f"flapped port **stayed closed** {fl.flap_wait:.0f} s (hostapd failovers logged: "
                    f"{len(failovers)}); opened "
                    + (f"{_ms(flap_after_restart)} after {victim.server_id} restarted" if flap_after_restart is not None
                       else "not even after the restart"))
    else:
        saw_port = (f"flapped port closed until hostapd failed over ({len(failovers)} failover(s) logged): "
                    f"admitted {_ms(admitted_s)} after link-up, via {', '.join(via) or '?'}")
    refused = f"probe requests that failed after the kill: {_counts(load_failed)}; server rejections: " \
              f"{_counts(collections.Counter(n for (_, n) in fl.refusals(m).elements()))}; agent failures: " \
              f"{_counts(fl.failures(m))}"
    lost = (f"registry rows (state, generation) of {len(fl.ids)} devices: " +
            ("unchanged" if not changed else f"CHANGED for {', '.join(changed)}") +
            f"; all pairs peered at the end: {'yes' if not missing else 'NO'}")
    recovery = (f"{victim.server_id} restarted and answering in {_ms(restart_s)}, then issued a TGT "
                f"({'ok' if serves['ok'] else serves['name']})")
    return Row(fault, f"{saw_load}; {saw_agents}; {saw_port}", refused, lost, recovery, failed,
               {"next_ok_s": first_ok and first_ok["t1"] - t_kill, "next_ok_server": first_ok and first_ok["server"],
                "agent_failover_s": agent_failover, "flap_admitted_s": admitted_s, "changed": changed,
                "restart_s": restart_s, "serves_again": serves["ok"], "renewed_s": renewed,
                "controller": flap_log, "failovers": failovers})


@scenario("postgres-stopped")
def postgres_stopped(fl: FaultLab) -> Row:
    """PostgreSQL fast-stopped (SIGINT) for `fl.outage` s while a probe asks every server for a
    TGT and a renewal, and one of them (in turn) for a session key and a registration, every
    0.5 s; then started again."""
    rl, failed = fl.rl, _settle(fl, 3)[1]
    probe, sids = fl.probes["pg-01"], fl.server_ids
    before = fl.rows()
    regs_before = sum(e.event == "registered" for e in fl.audit("pg-01"))
    pre = probe.ask("auth", sids) + probe.ask("auth", sids, as_peer=True) + probe.ask("session", sids)
    if not all(r["ok"] for r in pre):
        failed.append(f"refused before the fault: {[r for r in pre if not r['ok']]}")
    m = fl.mark()
    t_stop = time.time()
    rl.postgres.stop()
    stop_s = time.time() - t_stop
    tgt, renew, sess, reg = [], [], [], []
    i = 0
    while time.time() - t_stop < fl.outage:
        tgt += probe.ask("auth", sids)
        probe.ask("auth", [sids[i % len(sids)]], as_peer=True)
        renew += probe.ask("renew", sids)
        sess += probe.ask("session", [sids[i % len(sids)]])  # a pair has 16 a server's window
        reg += probe.ask("register", [sids[i % len(sids)]])
        i += 1
        time.sleep(0.5)
    t_start = time.time()
    rl.postgres.start()
    start_s = time.time() - t_start
    first_reg, fresh = None, {}
    ok_regs = 0
    while time.time() - t_start < 30 and (first_reg is None or len(fresh) < len(sids)):
        if first_reg is None:
            r = probe.ask("register", [sids[0]])[0]
            if r["ok"]:
                first_reg, ok_regs = r["t1"] - t_start, ok_regs + 1
        for r in probe.ask("auth", [s for s in sids if s not in fresh]):
            if r["ok"]:
                fresh[r["server"]] = r["t1"] - t_start
        time.sleep(0.05)
    peered_from, missing = _settle(fl, SETTLE_QUIET)
    after = fl.rows()
    changed = _standing(before, after, fl.ids)
    regs_after = sum(e.event == "registered" for e in fl.audit("pg-01"))
    gen_delta = after["pg-01"][1] - before["pg-01"][1]
    ok_regs += sum(r["ok"] for r in reg)

    def served(rs):  # last success and first refusal, seconds after the stop
        last_ok = max((r["t1"] - t_stop for r in rs if r["ok"]), default=None)
        bad = [r for r in rs if not r["ok"]]
        return last_ok, (bad[0]["t0"] - t_stop if bad else None), collections.Counter(r["name"] for r in bad)

    t_last, t_first_bad, t_names = served(tgt)
    r_last, r_first_bad, r_names = served(renew)
    s_last, s_first_bad, s_names = served(sess)
    reg_names = collections.Counter(r["name"] for r in reg if not r["ok"])
    reg_ms = sorted((r["t1"] - r["t0"]) * 1000 for r in reg if not r["ok"])
    ev = fl.agent_events(m)
    rekeys = sum(e == "session" for t, _, e, _ in ev if t < t_start)
    bad_during = collections.Counter(e for t, _, e, _ in ev if t < t_start and _bad(e))
    bad_after = collections.Counter(e for t, _, e, _ in ev if t >= t_start and _bad(e))
    late_ok = [r for r in tgt + renew + sess if r["ok"] and r["t0"] > t_stop + fl.grace]
    if late_ok:
        failed.append(f"{len(late_ok)} ticket(s) or session key(s) issued more than registry_grace after the stop")
    if reg_names and set(reg_names) != {"registry-unavailable"}:
        failed.append(f"registration refused with {dict(reg_names)}, not registry-unavailable")
    if changed:
        failed.append(f"standing changed: {changed}")
    if gen_delta != ok_regs or regs_after - regs_before != ok_regs:
        failed.append(f"{ok_regs} registrations succeeded, generation moved {gen_delta}, "
                      f"{regs_after - regs_before} audit rows")
    failed += missing
    fault = (f"PostgreSQL stopped (SIGINT, fast shutdown in {_ms(stop_s)}) for {fl.outage:.0f} s, then started; "
             f"registry_grace {fl.grace:.0f} s; every 0.5 s a probe asks every server for a TGT and a renewal, "
             f"and one in turn for a session key and a registration")
    def span(what, last, first_bad):  # each server's cache goes stale grace after its own last read
        return (f"{what}: last served +{last:.1f} s" if last is not None else f"{what}: none served") + \
               (f", first refused +{first_bad:.1f} s" if first_bad is not None else ", never refused")

    saw = "from the servers' caches after the stop: " + "; ".join(
              (span("TGTs", t_last, t_first_bad), span("renewals", r_last, r_first_bad),
               span("session keys", s_last, s_first_bad))) + \
          f". Agents: {rekeys} session keys made during the outage; failures during it: {_counts(bad_during)}; " \
          f"after PostgreSQL returned: {_counts(bad_after)}"
    refused = (f"registration x{len(reg_ms)}: {_counts(reg_names)}, answered in "
               f"{reg_ms[len(reg_ms) // 2]:.1f} ms median, {reg_ms[-1]:.1f} ms max; " if reg_ms else
               "registration: never refused; ") + \
              f"TGT after grace: {_counts(t_names)}; renewal: {_counts(r_names)}; session key: " \
              f"{_counts(s_names)}; server rejections " \
              f"{_counts(collections.Counter(n for (_, n) in fl.refusals(m).elements()))}"
    lost = (f"agents' rows {'unchanged' if not changed else 'CHANGED: ' + ', '.join(changed)}; probe: {ok_regs} "
            f"successful registration(s) = generation +{gen_delta} = {regs_after - regs_before} audit row(s)")
    recovery = (f"postgres ready {_ms(start_s)} after start; first registration {_ms(first_reg)} after; "
                if first_reg is not None else "no registration within 30 s; ") + \
               "TGT from every cache again: " + (", ".join(f"{s} {_ms(v)}" for s, v in sorted(fresh.items()))
                                                 or "none") + \
               (f"; every pair peered (for good) {peered_from - t_start:.1f} s after the start" if peered_from
                else "; NOT every pair peered again")
    return Row(fault, saw, refused, lost, recovery, failed,
               {"tgt_last_ok_s": t_last, "tgt_first_refused_s": t_first_bad, "tgt_refused": dict(t_names),
                "register_refused": dict(reg_names), "register_refusal_ms": reg_ms, "first_registration_s": first_reg,
                "session_last_ok_s": s_last, "session_refused": dict(s_names),
                "fresh_s": fresh, "changed": changed, "late_ok": len(late_ok)})


@scenario("server-cut-off")
def server_cut_off(fl: FaultLab) -> Row:
    """radius3 cut from PostgreSQL (nftables drop), then a device revoked with tessera-admin
    through radius1's namespace: how soon each server refuses it; radius3 must not issue it a
    ticket after its bound (registry_grace after its last confirmed read, at the latest the cut
    plus grace: a ticket whose request was sent after that is a violation, and fails the run);
    then healed."""
    rl, failed = fl.rl, _settle(fl, 3)[1]
    cut = rl.hosts[2]
    rest = [h.server_id for h in rl.hosts if h is not cut]
    victim, witness = fl.probes["revoked-01"], fl.probes["cut-01"]
    pre = victim.by_server("auth", fl.server_ids)
    if not all(r["ok"] for r in pre.values()):
        failed.append(f"the device was refused before the fault: {pre}")
    m = fl.mark()
    t_cut = time.time()
    rl.cut_from_registry(cut)
    bound = t_cut + fl.grace
    time.sleep(1.0)
    t_rev0 = time.time()
    rl.admin("revoke", "revoked-01", "--reason", "faults: revoked while radius3 is cut off")
    t_rev = time.time()
    refused_at: dict[str, float] = {}
    while len(refused_at) < len(rest) and time.time() - t_rev < 10:
        for sid, r in victim.by_server("auth", [s for s in rest if s not in refused_at]).items():
            if r["code"] == REVOKED:
                refused_at[sid] = r["t1"] - t_rev
        time.sleep(0.02)
    samples = []
    while time.time() < bound + 5:
        samples += victim.ask("auth", [cut.server_id], timeout=0.5, retries=0)
        time.sleep(0.2)
    witness_cut = witness.by_server("auth", [cut.server_id])[cut.server_id]
    users = [d for i, d in enumerate(rl.devices, 1) if rl.bundle_servers(i)[0].server_id == cut.server_id]
    users_via = {d.device_id: rl.radsec_servers(d) for d in users}
    users_refused = sum("registry not reached" in text for _, dev, e, text in fl.agent_events(m)
                        if dev in users_via and _bad(e))
    late = [r for r in samples if r["ok"] and r["t0"] > bound]
    if late:
        failed.append(f"SECURITY: {cut.server_id} issued {len(late)} ticket(s) to the revoked device after its bound "
                      f"(first sent {late[0]['t0'] - bound:.2f} s after it)")
    oks = [r for r in samples if r["ok"]]
    bad = [r for r in samples if not r["ok"]]
    last_sent = max((r["t0"] for r in oks), default=t_cut)
    first_bad = bad[0] if bad else None
    if first_bad is None:
        failed.append(f"{cut.server_id} never refused the revoked device")
    if len(refused_at) < len(rest):
        failed.append(f"not refused by {set(rest) - set(refused_at)} within 10 s")
    t_heal = time.time()
    rl.restore_registry(cut)
    healed_s = None
    while time.time() - t_heal < 20:
        r = victim.by_server("auth", [cut.server_id])[cut.server_id]
        if r["code"] == REVOKED:
            healed_s = r["t1"] - t_heal
            break
        time.sleep(0.1)
    witness_ok = _until(lambda: witness.by_server("auth", [cut.server_id])[cut.server_id]["ok"], 10, every=0.1)
    if healed_s is None or witness_ok is None:
        failed.append(f"{cut.server_id} did not recover after the heal")
    _, missing = _settle(fl, SETTLE_QUIET)
    ev = fl.agent_events(m)
    agent_bad = collections.Counter(e for t, _, e, _ in ev if _bad(e))
    failed += missing
    fault = (f"{cut.server_id} cut off from PostgreSQL (nftables drop in its namespace), {_ms(t_rev0 - t_cut)} later "
             f"a device revoked with `tessera-admin revoke` (took {_ms(t_rev - t_rev0)}); registry_grace "
             f"{fl.grace:.0f} s; the revoked device asks {cut.server_id} for a TGT every 0.2 s")
    others = ", ".join(f"{s} refused it `revoked` {_ms(v)} after the command returned"
                       for s, v in sorted(refused_at.items()))
    saw = (f"{others}; "
           f"{cut.server_id} issued it {len(oks)} TGT(s), the last asked for {last_sent - t_cut:.1f} s after the cut "
           f"({last_sent - t_rev:+.1f} s from the revocation), and refused it from "
           f"{((first_bad or {}).get('t0', t_cut) - t_cut):.1f} s after the cut "
           f"(bound {fl.grace:.0f} s): **{len(late)} after the bound**; "
           f"other devices on {cut.server_id} past the bound: "
           f"{'served' if witness_cut['ok'] else 'refused ' + witness_cut['name']}; agents first on {cut.server_id} "
           f"({', '.join(users_via)}): {users_refused} request(s) refused registry-unavailable, still connected to "
           f"{', '.join(sorted({s for v in users_via.values() for s in v})) or 'none'} past the bound; all agents: "
           f"{_counts(agent_bad)}")
    refused = (f"{cut.server_id}: {_counts(collections.Counter(r['name'] for r in bad))} (fails closed: it cannot "
               f"know of the revocation); others: revoked; server rejections "
               f"{_counts(collections.Counter(n for (_, n) in fl.refusals(m).elements()))}")
    lost = "none: the revocation is one committed row; no server wrote while cut off"
    recovery = (f"healed: {cut.server_id} refused it as `revoked` {_ms(healed_s)} after the drop was removed, "
                f"and served another device again within {_ms(witness_ok)}"
                if healed_s is not None and witness_ok is not None else "did not recover within 20 s")
    return Row(fault, saw, refused, lost, recovery, failed,
               {"others_refused_s": refused_at, "issued": len(oks), "issued_after_bound": len(late),
                "cut_first_refusal_s": first_bad and first_bad["t0"] - t_cut,
                "cut_refused": sorted({r["name"] for r in bad}), "healed_s": healed_s, "witness_ok_s": witness_ok,
                "pre_ok": all(r["ok"] for r in pre.values()), "users_via": users_via})


@scenario("key-rotation")
def key_rotation(fl: FaultLab) -> Row:
    """`tessera-admin rotate` with every agent live: which kvno a fresh TGT from each server
    carries, how soon; a TGT from before the rotation still renews on every server; every
    refusal counted through a full ticket lifetime afterwards."""
    rl, failed = fl.rl, _settle(fl, 3)[1]
    probe, sids = fl.probes["rot-01"], fl.server_ids
    old = probe.by_server("auth", sids)
    probe.ask("save", [], slot="old")
    kvno = {r["kvno"] for r in old.values()}
    m = fl.mark()
    t0 = time.time()
    out = rl.admin("rotate").stdout.decode().strip()
    t_rot = time.time()
    new_at: dict[str, float] = {}
    while len(new_at) < len(sids) and time.time() - t_rot < 10:
        for sid, r in probe.by_server("auth", [s for s in sids if s not in new_at]).items():
            if r["ok"] and r["kvno"] not in kvno:
                new_at[sid] = r["t1"] - t_rot
        time.sleep(0.01)
    new_kvno = {r["kvno"] for r in probe.ask("auth", sids)}
    renew_old = probe.by_server("renew", sids, slot="old")
    time.sleep(max(0.0, t_rot + TICKET_LIFETIME + 5 - time.time()))  # every pre-rotation TGT and session ends
    _, missing = _settle(fl, 3)
    refusals = fl.refusals(m)
    agent_bad = fl.failures(m)
    ev = fl.agent_events(m)
    renewed = sum(e == "ticketed" for _, _, e, _ in ev)
    rekeyed = sum(e == "session" for _, _, e, _ in ev)
    if refusals or agent_bad:
        failed.append(f"refusals during the rotation: servers {dict(refusals)}, agents {dict(agent_bad)}")
    if not all(r["ok"] for r in renew_old.values()):
        failed.append(f"a pre-rotation TGT was refused: {renew_old}")
    if len(new_at) < len(sids):
        failed.append(f"the new key was not in use on {set(sids) - set(new_at)} within 10 s")
    failed += missing
    said = next((line for line in out.splitlines() if "current" in line), out)
    fault = (f"`tessera-admin rotate` (took {_ms(t_rot - t0)}: \"{said}\") with "
             f"{len(rl.devices)} live agents (TGT and sessions {TICKET_LIFETIME} s) on 3 servers")
    saw = (f"nothing: {renewed} TGT renewals and {rekeyed} session keys made by the agents in the "
           f"{time.time() - t_rot:.0f} s after, every pair peered" if not (refusals or agent_bad or missing)
           else f"refusals or drops (see the next cell); {renewed} renewals, {rekeyed} session keys")
    refused = (f"none (servers' logs: {_counts(refusals)}; agents: {_counts(agent_bad)}); a TGT of kvno "
               f"{'/'.join(map(str, sorted(kvno)))} renewed after the rotation on "
               f"{sum(r['ok'] for r in renew_old.values())} of {len(sids)} servers")
    lost = "none: the old key stays in the keyring until its tickets expire"
    recovery = (f"fresh TGTs carry kvno {'/'.join(map(str, sorted(new_kvno)))} from every server, "
                f"{', '.join(f'{s} {_ms(v)}' for s, v in sorted(new_at.items()))} after the command returned")
    return Row(fault, saw, refused, lost, recovery, failed,
               {"old_kvno": sorted(kvno), "new_kvno": sorted(new_kvno), "new_key_s": new_at,
                "refusals": dict(refusals), "agent_failures": dict(agent_bad),
                "old_renewed": {s: r["ok"] for s, r in renew_old.items()}})


def markdown(rows: list[Row]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(c) for c in r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def all_scenarios() -> dict[str, Scenario]:
    """These, then tessera.lab.faults_device's (device faults), when that module exists."""
    out = dict(SCENARIOS)
    try:
        from tessera.lab.faults_device import SCENARIOS as device
    except ModuleNotFoundError as exc:
        if exc.name != "tessera.lab.faults_device":
            raise
        device = {}
    out.update(device)
    return out


def run(only: list[str] | None = None, grace: float = REGISTRY_GRACE, outage: float = 30.0,
        keep: bool = False, out=sys.stdout) -> tuple[list[Row], int]:
    """Build the lab, run the chosen scenarios in order, print the table; (rows, exit code)."""
    chosen = all_scenarios()
    names = only or list(chosen)
    unknown = [n for n in names if n not in chosen]
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; known: {', '.join(chosen)}")
    rows: list[Row] = []
    with Lab() as lab:
        try:
            print(f"building the lab: PostgreSQL and 3 FreeRADIUS servers in namespaces, 4 agents "
                  f"(registry_grace {grace:.0f} s)…", file=out, flush=True)
            fl = FaultLab(lab, grace, probes=PROBES, outage=outage)
            print(f"  built, every agent peered, in {fl.built_s:.1f} s", file=out, flush=True)
            for name in names:
                print(f"running {name}…", file=out, flush=True)
                t = time.monotonic()
                try:
                    row = chosen[name](fl)
                except Exception as exc:  # noqa: BLE001 -- a scenario that broke is a failed row
                    row = Row(name, "-", "-", "-", "-", [f"the scenario broke: {type(exc).__name__}: {exc}"])
                for f in row.failed:
                    print(f"  FAILED: {f}", file=out, flush=True)
                print(f"  done in {time.monotonic() - t:.0f} s", file=out, flush=True)
                rows.append(row)
            fl.close()
        finally:
            if keep:
                print(f"logs kept in {lab.workdir}", file=out)
            else:
                shutil.rmtree(lab.workdir, ignore_errors=True)
    return rows, 1 if any(r.failed for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", action="append", help="run only this scenario (repeatable); known: "
                   + ", ".join(SCENARIOS) + " and tessera.lab.faults_device's")
    p.add_argument("--markdown", help="also write the table to this file")
    p.add_argument("--grace", type=float, default=REGISTRY_GRACE, help="the servers' registry_grace, s")
    p.add_argument("--outage", type=float, default=30.0, help="how long PostgreSQL stays stopped, s")
    p.add_argument("--keep", action="store_true", help="keep the lab's logs")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("the lab needs root (network namespaces)", file=sys.stderr)
        return 2
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        rows, code = run(a.only, a.grace, a.outage, a.keep)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    table = markdown(rows)
    print(f"\nFaults, tried ({started}, {os.uname().nodename}, {os.cpu_count()} cores):\n\n{table}")
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(table + "\n")
    print("\nresult: " + ("every scenario held" if code == 0 else "FAILED (see above)"))
    return code


if __name__ == "__main__":
    sys.exit(main())
