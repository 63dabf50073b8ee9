"""A realm on several hosts, end to end: PostgreSQL in its own namespace, three FreeRADIUS
servers each in its own (front and back addresses), the switch's hostapd and every device's
bundle listing all three (`RealmLab(registry="postgresql")`, tessera.lab.topology).

All devices are admitted, registered and peered, and the registrations are spread over the
servers (the bundles list them rotated by device). Then the server that served the most is
killed with SIGKILL (by the PID the lab started) and the devices that used it renew their TGTs
through the next server of their bundle. A revocation made with `tessera-admin` against the
PostgreSQL URL closes the device's port (DAS) and is refused by every server, the killed one
included once it is back: a probe device, enrolled over UDP and run in radius2's namespace,
gets a TGT from each server before the revocation and a `revoked` refusal from each after it.

The failover shown there is the agents' (RadSec, in their bundle's order). hostapd's is the
next test's: with radius1 killed, the port that lists it first (the switch rotates the list by
port) is flapped and opens through radius2 once hostapd 2.10 gives radius1 up, 45 s after its
first Access-Request, because the agent does not restart EAP while the switch relays and no
server answers (tessera.node; before, it restarted after 3 s and the port stayed closed > 180 s).

Also checked: `cut_from_registry` drops one server's traffic to PostgreSQL and
`restore_registry` undoes it. Measured (printed): lab build time, link-up -> all peered,
kill -> renewed elsewhere, `tessera-admin revoke` started -> refused by every live server.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest

from tessera.lab import radiusd
from tessera.identity import UDP
from tessera.lab.netns import sh
from tessera.lab.pki import write_file
from tessera.lab.switch import RadiusServer as RadiusAddr, hostapd_conf, port_servers
from tessera.lab.topology import POSTGRESQL, REPO, RealmLab
from tessera.registry_url import display_url
from tessera.service import Policy

from tests.gate import needs_freeradius, needs_lab

REVOKED = 8  # tessera.errors.RevokedError.code, the Tessera-Error a refusal carries

# A device without an agent, driven line by line: each stdin line {"op": "register"|"auth",
# "servers": [ids]} -> one stdout line [{"server", "ok", "code", "reason"}] (no key material).
PROBE = r"""
import json, os, sys, time
from tessera.device import DeviceClient
from tessera.identity import BootstrapBundle, DeviceKey
from tessera.radius.client import NoServerAnsweredError, RadiusClient, RejectedError, Server

bundle = BootstrapBundle.from_json(open(sys.argv[1]).read())
client = DeviceClient(bundle, DeviceKey.from_pem(bundle.device_key_pem))
servers = {s.server_id: Server(s.server_id, s.host, s.port, bundle.radius_secret.encode()) for s in bundle.servers}
for line in sys.stdin:
    cmd, results = json.loads(line), []
    for sid in cmd["servers"]:
        client.abandon()
        rc = RadiusClient([servers[sid]], timeout=1.0, retries=1)
        try:
            if cmd["op"] == "register":
                reply = rc.exchange(bundle.device_id, lambda s: client.register_request(s, time.time(), os.urandom(16)))
                client.register_reply(reply, time.time())
            else:
                reply = rc.exchange(bundle.device_id, lambda s: client.auth_request(s, time.time(), os.urandom(16)))
                client.ticket_reply(reply, time.time())
            results.append({"server": sid, "ok": True, "code": None, "reason": ""})
        except RejectedError as exc:
            results.append({"server": sid, "ok": False, "code": exc.code, "reason": exc.reason})
        except NoServerAnsweredError as exc:
            results.append({"server": sid, "ok": False, "code": None, "reason": str(exc)})
    print(json.dumps(results), flush=True)
"""


class Probe:
    """The probe device's process in a server's namespace (ended by its PID)."""

    def __init__(self, ns: str, bundle_path: str):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, str(REPO / ".venv" / "bin" / "python"), "-c", PROBE,
                                      bundle_path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, op: str, servers: list[str]) -> dict[str, dict]:
        self.proc.stdin.write(json.dumps({"op": op, "servers": servers}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the probe exited with {self.proc.poll()}"
        return {r["server"]: r for r in json.loads(line)}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


def reaches_postgres(rl: RealmLab, h) -> bool:
    """A TCP connection from server h's namespace to PostgreSQL opens within 1 s."""
    return sh(["timeout", "1", "bash", "-c", f"exec 3<>/dev/tcp/{rl.postgres.address}/{rl.postgres.port}"],
              ns=h.ns, check=False).returncode == 0


def ticketed(d) -> int:
    """How many TGTs the device's agent has received so far (its log's `ticketed` lines)."""
    with open(d.agent.log_path, errors="replace") as f:
        return sum(" ticketed" in line for line in f)


def test_hostapd_conf_lists_every_server_in_failover_order():
    servers = [RadiusAddr(f"203.0.113.{k}", 1812, "nas-secret") for k in (2, 3, 4)]
    conf = hostapd_conf("p1", servers, "/run/x", "203.0.113.1", "sw-p1")
    addrs = [line.split("=", 1)[1] for line in conf.splitlines() if line.startswith("auth_server_addr=")]
    assert addrs == ["203.0.113.2", "203.0.113.3", "203.0.113.4"]
    assert conf.count("auth_server_port=1812") == 3 and conf.count("auth_server_shared_secret=nas-secret") == 3
    one = hostapd_conf("p1", servers[0], "/run/x", "203.0.113.1", "sw-p1")
    assert one.count("auth_server_addr=") == 1 and "failover" not in one


def test_module_config_names_the_registry_url_and_grace(tmp_path):
    module = tmp_path / "tessera"
    shutil.copyfile(radiusd.CONFIGS / "mods-available" / "tessera", module)
    url = "postgresql://tessera@198.51.100.2:5432/tessera?passfile=/etc/tessera/pgpass"
    radiusd.set_registry(module, url, 5)
    items = dict(re.findall(r"^\s*(registry|db|registry_grace)\s*=\s*(.*)$", module.read_text(), re.M))
    assert items.get("registry", items.get("db")) == f'"{url}"' and items["registry_grace"] == "5", items
    radiusd.set_registry(module, "sqlite:///var/lib/tessera/registry.db")  # no grace: the item stays as it is
    assert re.search(r"^\s*registry_grace = 5$", module.read_text(), re.M)
    module.write_text("tessera {\n\tconfig {\n\t\tkek = \"/k\"\n\t}\n}\n")
    with pytest.raises(radiusd.RadiusdError, match="neither 'registry' nor 'db'"):
        radiusd.set_registry(module, url)


@needs_lab
@needs_freeradius
def test_three_servers_share_postgresql_fail_over_and_refuse_a_revoked_device(lab):
    t_build = time.monotonic()
    rl = RealmLab(lab, 4, servers=3, registry=POSTGRESQL, policy=Policy(tgt_lifetime=16, session_lifetime=16))
    build_s = time.monotonic() - t_build
    assert [h.server_id for h in rl.hosts] == ["radius1", "radius2", "radius3"]
    assert len({h.ns for h in rl.hosts} | {rl.postgres.ns}) == 4  # each host its own namespace
    assert rl.registry_url.startswith("postgresql://") and "passfile=" in rl.registry_url
    assert display_url(rl.registry_url) == rl.registry_url  # nothing to hide: no password in it
    for h in rl.hosts:
        assert (h.raddb / "mods-available" / "tessera").read_text().count(rl.postgres.address) >= 1

    # the probe device (no agent, no port): enrolled over UDP, it speaks from radius2's namespace
    probe_bundle = rl.realm.enrol_generated("probe-01", rl.servers, rl.cfg.secret, time.time(), UDP)
    write_file(rl.dir / "probe.json", probe_bundle.to_json().encode(), 0o600)
    probe = Probe(rl.hosts[1].ns, str(rl.dir / "probe.json"))
    lab.defer(probe.close)
    try:
        for d in rl.devices:
            rl.set_carrier(d, False)
            rl.start_agent(d)
        t0 = time.monotonic()
        for d in rl.devices:
            rl.set_carrier(d, True)
        ids = [d.device_id for d in rl.devices]
        assert rl.wait(lambda: all(rl.peered(d, [i for i in ids if i != d.device_id]) for d in rl.devices), 30), \
            [rl.status(d) for d in rl.devices]
        peered_s = time.monotonic() - t0
        for d in rl.devices:
            st = rl.status(d)
            assert st["admission"] == "tls" and st["registration"]["generation"] >= 1, st
        regs = rl.registrations_by_server()
        assert sum(regs.values()) == 4 and all(regs.values()), regs  # every server registered a device

        # the probe: registered by radius2, a TGT from each server
        assert probe.ask("register", ["radius2"])["radius2"]["ok"]
        before = probe.ask("auth", ["radius1", "radius2", "radius3"])
        assert all(r["ok"] for r in before.values()), before

        # kill -9 the busiest server; its devices renew through the next server of their bundle
        busiest = rl.host(max(regs, key=regs.get))
        users = [d for i, d in enumerate(rl.devices, 1) if rl.bundle_servers(i)[0].server_id == busiest.server_id]
        assert users and all(rl.radsec_servers(d) == [busiest.server_id] for d in users), \
            {d.device_id: rl.radsec_servers(d) for d in users}
        tickets = {d.device_id: ticketed(d) for d in users}
        pid = busiest.pid
        t_kill = time.monotonic()
        busiest.kill()
        assert not busiest.radius.running()
        assert rl.wait(lambda: all(ticketed(d) > tickets[d.device_id] for d in users), 25), \
            [rl.status(d) for d in users]
        renewed_s = time.monotonic() - t_kill
        for i, d in enumerate(rl.devices, 1):
            if d in users:
                nxt = rl.bundle_servers(i)[1].server_id
                assert rl.wait(lambda: rl.radsec_servers(d) == [nxt], 5), (d.device_id, rl.radsec_servers(d))
        assert rl.wait(lambda: all(rl.peered(d, [i for i in ids if i != d.device_id]) for d in rl.devices), 10)

        # revoke with tessera-admin on the PostgreSQL URL: the port closes, every server refuses
        victim = rl.devices[1]
        assert rl.controller.is_open(victim.dev.port)
        out = rl.admin("revoke", victim.device_id, "--reason", "stolen").stdout.decode()
        assert "Disconnect-ACK" in out, out
        t_rev = time.monotonic()
        rl.admin("revoke", "probe-01", "--reason", "stolen")
        live = [h.server_id for h in rl.hosts if h is not busiest]
        assert rl.wait(lambda: all(r["code"] == REVOKED for r in probe.ask("auth", live).values()), 5, every=0.2), \
            probe.ask("auth", live)
        refused_s = time.monotonic() - t_rev
        assert rl.wait(lambda: not rl.controller.is_open(victim.dev.port), 5)
        busiest.start()  # back after the crash: it too refuses, the ticket and the registration
        assert busiest.pid != pid
        after = probe.ask("auth", [h.server_id for h in rl.hosts])
        assert all(r["code"] == REVOKED and not r["ok"] for r in after.values()), after
        again = probe.ask("register", [h.server_id for h in rl.hosts])
        assert all(r["code"] == REVOKED for r in again.values()), again
        assert rl.controller.is_open(rl.devices[0].dev.port)  # the others stay in

        # what fault injection uses: one server cut from PostgreSQL (a drop, not a refusal), and back
        cut, other = rl.hosts[2], rl.hosts[1]
        assert reaches_postgres(rl, cut)
        rl.cut_from_registry(cut)
        assert not reaches_postgres(rl, cut) and reaches_postgres(rl, other)
        rl.restore_registry(cut)
        assert reaches_postgres(rl, cut)
    finally:
        probe.close()
    print(f"\nthree servers on PostgreSQL: lab built in {build_s:.1f} s, link-up -> all 4 peered {peered_s:.1f} s; "
          f"registrations {regs}; kill -9 {busiest.server_id} -> its {len(users)} device(s) renewed elsewhere "
          f"in {renewed_s:.1f} s; revoke -> refused by {', '.join(live)} in {refused_s * 1000:.0f} ms "
          f"(and by {busiest.server_id} after its restart)")


def test_port_servers_rotate_by_port():
    servers = [RadiusAddr(f"203.0.113.{k}", 1812, "nas-secret") for k in (2, 3, 4)]
    firsts = [port_servers(servers, f"p{n}")[0].addr for n in range(1, 7)]
    assert firsts == ["203.0.113.2", "203.0.113.3", "203.0.113.4"] * 2
    assert [r.addr for r in port_servers(servers, "p2")] == ["203.0.113.3", "203.0.113.4", "203.0.113.2"]
    assert port_servers(servers[:1], "p5") == (servers[0],)


def failed_admissions(d) -> int:
    with open(d.agent.log_path, errors="replace") as f:
        return sum(" admission-failed" in line for line in f)


# The port controller's kick on carrier loss (DEAUTHENTICATE) removes hostapd's station only 5 s
# later (AP_MAX_INACTIVITY_AFTER_DEAUTH), with whatever authentication began meanwhile: a cable
# pulled for 6 s keeps that out of what is measured here.
DOWN_S = 6.0


def flap(rl: RealmLab, d) -> float | None:
    """Carrier down for DOWN_S and up on d's switch port; seconds from link-up until the port is
    open and the agent says it is up (None: not within 90 s)."""
    rl.set_carrier(d, False)
    assert rl.wait(lambda: not rl.controller.is_open(d.dev.port), 5)
    time.sleep(DOWN_S)
    t0 = time.monotonic()
    rl.set_carrier(d, True)
    if rl.wait(lambda: rl.controller.is_open(d.dev.port) and (rl.status(d) or {}).get("port") == "up", 90, every=0.1):
        return time.monotonic() - t0
    return None


@needs_lab
@needs_freeradius
def test_port_flapped_while_its_first_server_is_dead_opens_through_the_next(lab):
    """kill -9 radius1, then flap p1 (whose hostapd lists radius1 first): the agent waits through
    the silent RADIUS path instead of restarting EAP, hostapd fails over after its 45 s and the
    port opens through radius2, the device's registration untouched. A port whose first server
    is alive opens at once, and a revoked device is still refused within seconds."""
    rl = RealmLab(lab, 3, servers=3, registry=POSTGRESQL, capture=False)
    for d in rl.devices:
        rl.start_agent(d)
    assert rl.wait(lambda: all((rl.status(d) or {}).get("port") == "up" and (rl.status(d) or {}).get("tgt")
                               for d in rl.devices), 40), [rl.status(d) for d in rl.devices]
    first = {d.device_id: rl.switch.port_servers(d.dev.port)[0].addr for d in rl.devices}
    victim = rl.hosts[0]
    d1, d2, d3 = rl.devices
    assert first[d1.device_id] == victim.front and victim.front not in (first[d2.device_id], first[d3.device_id])
    generation = {d.device_id: rl.realm.registry.get_device(d.device_id).generation for d in rl.devices}

    alive_s = flap(rl, d2)  # the control: its first server answers
    assert alive_s is not None and alive_s < 5, alive_s
    victim.kill()
    admissions = rl.admissions_by_server()
    dead_s = flap(rl, d1)
    assert dead_s is not None and 40 < dead_s < 60, dead_s  # hostapd's own failover: 45 s after its first request
    via = {k: v - admissions[k] for k, v in rl.admissions_by_server().items() if v > admissions.get(k, 0)}
    assert via == {"radius2": 1}, via
    with open(d1.agent.log_path, errors="replace") as f:
        log = f.read()
    assert " admission-failed" not in log.split(" link-down")[-1], log[-2000:]  # no EAP restart while silent
    st = rl.status(d1)
    assert st["registration"]["generation"] == generation[d1.device_id], st
    assert rl.realm.registry.get_device(d1.device_id).generation == generation[d1.device_id]

    # a refusal is not a silence: revoked d3 (its first server alive) is refused within seconds
    rl.admin("revoke", d3.device_id, "--reason", "stolen")
    assert rl.wait(lambda: not rl.controller.is_open(d3.dev.port), 5)
    failed = failed_admissions(d3)
    rl.set_carrier(d3, False)
    time.sleep(DOWN_S)
    t0 = time.monotonic()
    rl.set_carrier(d3, True)
    assert rl.wait(lambda: failed_admissions(d3) > failed and "EAP-TLS refused" in open(d3.agent.log_path).read()
                   .split(" link-down")[-1], 15, every=0.1), open(d3.agent.log_path).read()[-2000:]
    refused_s = time.monotonic() - t0
    assert refused_s < 10 and not rl.controller.is_open(d3.dev.port), refused_s
    print(f"\nkill -9 radius1: p1 (radius1 first) re-admitted through radius2 {dead_s:.1f} s after link-up "
          f"(p2, first server alive: {alive_s:.1f} s); generation {generation[d1.device_id]} unchanged; "
          f"revoked {d3.device_id} refused {refused_s:.1f} s after link-up")
