"""The whole Tessera system in namespaces: a real realm, FreeRADIUS with the plugin, a switch
with 802.1X ports, and N devices each running tessera-agent.

How this works: `RealmLab` builds on the tested plumbing — `Lab` (namespaces, processes,
teardown), `Switch` (bridge, one hostapd per port, nftables port controller), `radiusd`
(FreeRADIUS from the repo's config in the `radius` namespace) — and adds the real realm: a
registry and KEK made with `Realm.init`, devices enrolled with generated key pairs and
bootstrap bundles, the RADIUS server's EAP certificate issued by the realm's CA (which devices
trust through their bundle), and one `tessera-agent run` per device namespace. Nothing is
scripted per device after start: the agents see carrier, admit, register, get TGTs and peer.
`RealmLab.set_carriers` plugs (or pulls) many cables truly at once, in one netlink batch, and
`RealmLab.events` gives a FIFO on which agents started with it report each milestone as it
happens (`AgentEvents`), so that a bench or the demo follows them without polling.

    netns radius  eth0 203.0.113.2 ── uplink ┐
    netns sw      br0 203.0.113.1 (bridge) ─ p1 … pN (hostapd each, nftables port control)
    netns dN      eth0 192.0.2.(100+N), 203.0.113.(100+N) ── pN

Devices reach the realm at 203.0.113.2 only once their port is authorized, over RadSec (RADIUS
over TLS on port 2083 with their device certificate; `radius_transport=UDP` for the weaker
shared-secret transport); the switch (hostapd) speaks RADIUS over UDP.

Three secrets, one per trust relation, all different (random per lab): the switch's hostapd
relays 802.1X to the NAS listener (``tessera-nas``, port 1812, only 203.0.113.1) with the NAS
secret; devices on UDP send Tessera operations to the device listener (``tessera``, port
11812) with the device secret; ``tessera-admin revoke`` sends its Disconnect-Request to each
port's hostapd DAS with `RealmLab.das_secret`.

A realm on several hosts (``registry="postgresql"``, ``servers=N``): the registry is a private
PostgreSQL 15 cluster (`tessera.lab.postgres`) in its own namespace, and each FreeRADIUS runs in
its own namespace with a front address on the switch's network and a back address on the
back-end network, as separate hosts would:

    netns pg       br0 198.51.100.2 (bridge, postgres on :5432) ─ r1 … rN
    netns radiusK  eth1 198.51.100.(10+K) ── rK          (back end: PostgreSQL only)
                   eth0 203.0.113.(1+K)   ── uplinkK ┐   (front: switch, devices)
    netns sw       br0 203.0.113.1 (bridge) ─ uplink1 … uplinkN, p1 … pN (hostapd, nftables)
    netns dN       eth0 192.0.2.(100+N), 203.0.113.(100+N) ── pN

PostgreSQL takes scram-sha-256 from 198.51.100.0/24 only; each server has its own libpq passfile
(0600, named by ``passfile=`` in its registry URL: the random password is in no URL, argv or
log), and so has ``tessera-admin`` (`RealmLab.registry_url`, run in radius1's namespace, which
is also the DAS client the switch trusts). The lab itself reaches the cluster over its unix
socket. Every server has its own server_id and the same KEK and server certificate; hostapd
lists them all (failover on timeout), and each device's bundle lists them all, rotated by
device (dN's list starts at radius((N-1) mod S + 1)) so that the servers share the Tessera
operations; a device fails over in its list's order.
`RealmLab.hosts` (namespace, addresses, PID, start/stop/kill), `RealmLab.postgres` (namespace,
PID, stop/start) and `cut_from_registry`/`restore_registry` (an nftables drop in one server's
namespace) are what fault injection needs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import secrets
import select
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tessera.agent.daemon import query
from tessera.identity import RADSEC, UDP, ServerEntry, pem_certificate
from tessera.lab import radiusd
from tessera.lab.clients import tunnel_ipv4, tunnel_ipv6
from tessera.lab.capture import CaptureStats, SwitchCapture
from tessera.lab.netns import Lab, LabError, Proc, sh
from tessera.lab.pki import LabPKI, write_file
from tessera.lab.postgres import Cluster, private_cluster, write_passfile
from tessera.lab.switch import RADIUS_IP, SWITCH_MGMT_IP, Device, RadiusServer as RadiusAddr, Switch
from tessera.realm import Realm, create_kek
from tessera.registry import Registry
from tessera.registry_url import display_url, open_registry
from tessera.service import Policy
from tessera.sqlite_registry import SQLiteRegistry

REPO = Path(__file__).resolve().parents[1]
AGENT = REPO / ".venv" / "bin" / "tessera-agent"
RADIUS_NAME = "radius.lab.example"  # in the servers' certificate (from the realm CA); devices check it over RadSec
RADSEC_PORT = 2083
NAS_PORT = 1812  # the tessera-nas site: the switch's hostapd relays 802.1X here, with the NAS secret
DEVICE_UDP_PORT = 11812  # the tessera site: devices over UDP, with the device secret
SQLITE, POSTGRESQL = "sqlite", "postgresql"
BACK_NET = "198.51.100.0/24"  # the back end: the servers and PostgreSQL
PG_IP, PG_PORT = "198.51.100.2", 5432
CUT_TABLE = "tessera_cut"  # nftables table of cut_from_registry in a server's namespace


def front_ip(k: int) -> str:
    """Server k's (1-based) address on the switch's network: radius1 is RADIUS_IP."""
    return f"203.0.113.{1 + k}"


def back_ip(k: int) -> str:
    return f"198.51.100.{10 + k}"


@dataclass
class LabServer:
    """One RADIUS server host of the realm: its namespace, addresses and running radiusd."""
    server_id: str
    ns: str
    front: str
    back: str | None  # None: a server of a SQLite realm has no back end
    cfg: radiusd.RadiusConfig
    raddb: Path
    radius: radiusd.RadiusServer

    @property
    def pid(self) -> int | None:
        return self.radius.pid

    def start(self) -> None:
        self.radius.start()

    def stop(self) -> None:
        self.radius.stop()

    def kill(self) -> None:
        """SIGKILL, by PID, the radiusd the lab started (a crash)."""
        self.radius.kill()


@dataclass
class LabPostgres:
    """The realm's PostgreSQL: its namespace, address and the running private cluster."""
    ns: str
    address: str
    port: int
    cluster: Cluster

    @property
    def pid(self) -> int:
        return self.cluster.pid

    def stop(self) -> None:
        """Fast shutdown (SIGINT) by PID: every server's connection breaks."""
        self.cluster.stop()

    def start(self) -> None:
        self.cluster.start()


class AgentEvents:
    """The read end of one FIFO that every agent started with it writes its event stream to
    (`tessera.agent.daemon.EventStream`: one JSON object a line, whole lines however many write).
    A thread drains the FIFO as lines come (agents drop lines that do not fit in the pipe, so a
    consumer busy printing must not leave them there); `read(timeout)` returns what has come,
    parsed, waiting up to `timeout` for the first. Nothing polls. The lab holds a write end too,
    so that the FIFO never reads as ended between agents."""

    def __init__(self, path: Path):
        self.path = path
        os.mkfifo(path, 0o600)
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        self._keep = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.fd, 1031, 1 << 20)  # F_SETPIPE_SZ: the most an unprivileged pipe gets
        self._lines: queue.Queue = queue.Queue()
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._drain, name="agent-events", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        tail = b""
        while True:
            ready = select.select([self.fd, self._stop_r], [], [])[0]
            if self._stop_r in ready:
                return
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                continue
            *lines, tail = (tail + chunk).split(b"\n")
            for line in lines:
                if line.strip():
                    self._lines.put(json.loads(line))

    def read(self, timeout: float | None) -> list[dict]:
        """Events that have come, waiting up to `timeout` s (None: for ever) for the first."""
        try:
            out = [self._lines.get(timeout=timeout) if timeout is None or timeout > 0 else self._lines.get_nowait()]
        except queue.Empty:
            return []
        while True:
            try:
                out.append(self._lines.get_nowait())
            except queue.Empty:
                return out

    def read_until(self, done, timeout: float) -> list[dict]:
        """Every event read until ``done(events so far)`` is true; TimeoutError (with what came)
        after ``timeout`` s."""
        seen: list[dict] = []
        deadline = time.monotonic() + timeout
        while not done(seen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"agent events after {timeout} s: {seen}")
            seen += self.read(left)
        return seen

    def close(self) -> None:
        if self._thread.is_alive():
            os.write(self._stop_w, b"x")
            self._thread.join(5)
        for fd in (self.fd, self._keep, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(self.path)


@dataclass
class LabDevice:
    device_id: str
    dev: Device
    dir: Path
    agent: Proc | None = None

    @property
    def state_dir(self) -> str:
        return str(self.dir / "state")


class RealmLab:
    """A running realm with devices; `close()` (or the Lab) tears everything down."""

    def __init__(self, lab: Lab, n_devices: int = 3, now: float | None = None, realm_name: str = "lab.example",
                 policy: Policy = Policy(), radius_debug: bool = False, capture: bool = True,
                 enrol: int | None = None, servers: int = 1, radius_transport: str = RADSEC,
                 registry: str = SQLITE, registry_grace: float | None = None):
        """`servers` RADIUS servers of the realm (at 203.0.113.2, .3, …, ids radius1, radius2, …)
        share the registry and the KEK; hostapd lists them all in that order. `registry`:
        SQLITE (one file; the servers share the `radius` namespace, devices fail over in order)
        or POSTGRESQL (a realm on several hosts, see the module docstring; `registry_grace`, the
        module's item, when given: seconds served from the cache while PostgreSQL is
        unreachable). Devices speak to them over `radius_transport`: RADSEC (RADIUS/TLS on port
        2083 with their device certificate; their bundles hold no RADIUS secret) or UDP (with
        the lab's secret)."""
        if registry not in (SQLITE, POSTGRESQL):
            raise LabError(f"registry must be {SQLITE!r} or {POSTGRESQL!r}, not {registry!r}")
        self.lab = lab
        self.now = time.time() if now is None else now
        self.dir = Path(lab.workdir)
        self.registry = registry
        self.postgres: LabPostgres | None = None
        kek = create_kek(str(self.dir / "kek"))
        if registry == POSTGRESQL:
            self.realm = Realm.init(self._start_postgres(lab), kek, realm_name, self.now, policy)
            self._pg_stack.callback(self.realm.close)  # before the cluster stops
            ns = [lab.add_ns(f"radius{k}") for k in range(1, servers + 1)]
        else:
            self.registry_url = f"sqlite://{self.dir / 'registry.db'}"
            self.realm = Realm.init(SQLiteRegistry(str(self.dir / "registry.db")), kek, realm_name, self.now, policy)
            ns = [lab.add_ns("radius")] * servers
        LabPKI(self.realm.ca).install_server_files(self.dir / "tls", RADIUS_NAME, self.now)
        self.radius_ns = ns[0]  # radius1: tessera-admin runs here (the switch's DAS client)
        # three secrets, one per trust relation: devices → realm (UDP), switch → realm (802.1X),
        # realm → switch (Disconnect-Request); a device holds at most the first
        device_udp_secret, nas_secret = secrets.token_hex(16), secrets.token_hex(16)
        self.das_secret = secrets.token_hex(16)
        self.cfgs = [radiusd.RadiusConfig(
            db=self._server_registry(i + 1), kek=self.dir / "kek", tls_dir=self.dir / "tls", server_id=f"radius{i + 1}",
            address=front_ip(i + 1), port=DEVICE_UDP_PORT, client_address="203.0.113.0/24",
            secret=device_udp_secret, nas_port=NAS_PORT, nas_secret=nas_secret, nas_client_address=SWITCH_MGMT_IP,
            radsec_port=RADSEC_PORT if radius_transport == RADSEC else None, registry_grace=registry_grace)
            for i in range(servers)]
        self.cfg = self.cfgs[0]
        raddbs = [radiusd.build_config(self.dir / f"raddb{i + 1}" if i else self.dir / "raddb", c)
                  for i, c in enumerate(self.cfgs)]
        self.raddb = raddbs[0]
        self.switch = Switch(lab, radius=[RadiusAddr(c.address, c.nas_port, c.nas_secret) for c in self.cfgs],
                             das=(RADIUS_IP, self.das_secret))
        if registry == POSTGRESQL:
            for k, c in enumerate(self.cfgs, 1):
                self.switch.add_uplink(ns[k - 1], port=f"uplink{k}", peer_ip=c.address)
                lab.add_veth(self.postgres.ns, f"r{k}", ns[k - 1], "eth1")
                lab.enslave(self.postgres.ns, f"r{k}")
                lab.add_addr(ns[k - 1], "eth1", f"{back_ip(k)}/24")
        else:
            self.switch.add_uplink(self.radius_ns)
            for c in self.cfgs[1:]:
                lab.add_addr(self.radius_ns, "eth0", f"{c.address}/24")
        self.servers = [ServerEntry(c.server_id, c.address, c.port, c.radsec_port or RADSEC_PORT, RADIUS_NAME)
                        for c in self.cfgs]
        device_secret = self.cfg.secret if radius_transport == UDP else ""  # RadSec: the certificate, no secret
        self.devices: list[LabDevice] = []
        for i in range(1, n_devices + 1):
            dev = self.switch.add_device(i)
            self.realm.add_nas(self.switch.port_nas_identifier(dev.port), SWITCH_MGMT_IP,
                               self.switch.das_port(dev.port), self.das_secret, self.now)
            lab.add_addr(dev.ns, "eth0", f"203.0.113.{100 + i}/24")
            # The first ARP for the server can leave before the switch opens the port (the
            # controller acts on hostapd's event, the device on its EAP-Success): retry in
            # 100 ms instead of Linux's 1 s.
            lab.run(dev.ns, ["sysctl", "-qw", "net.ipv4.neigh.eth0.retrans_time_ms=100"])
            d = LabDevice(f"dev-{i:02d}", dev, self.dir / f"d{i}")
            listed = self.bundle_servers(i)
            if enrol is None or i <= enrol:
                bundle = self.realm.enrol_generated(d.device_id, listed, device_secret, self.now, radius_transport)
            else:  # never enrolled: it knows the realm, but its certificate is from an unknown maker
                stranger = LabPKI.generate(self.now, "Unknown Maker CA").issue_device(d.device_id, self.now)
                bundle = self.realm.bundle(d.device_id, listed, device_secret, radius_transport)
                bundle.device_key_pem = stranger.key.pem()
                bundle.device_certificate_pem = pem_certificate(stranger.certificate)
            write_file(d.dir / "bundle.json", bundle.to_json().encode(), 0o600)
            self.devices.append(d)
        self.pcap = self.dir / "switch.pcap"
        self.capture = SwitchCapture(lab, self.switch.ns, self.pcap).start() if capture else None
        self.controller = self.switch.start_controller()
        self.radii = [radiusd.RadiusServer.for_config(r, c, run_prefix=("ip", "netns", "exec", n), debug=radius_debug)
                      for r, c, n in zip(raddbs, self.cfgs, ns)]
        self.radius = self.radii[0]
        self.hosts = [LabServer(c.server_id, n, c.address, back_ip(k) if registry == POSTGRESQL else None, c, r, rs)
                      for k, (c, n, r, rs) in enumerate(zip(self.cfgs, ns, raddbs, self.radii), 1)]
        lab.defer(self.close)  # radiusd is not a lab.spawn process: stop it with the lab, also on failure
        if registry == POSTGRESQL:  # separate hosts: they come up side by side
            with ThreadPoolExecutor(len(self.radii)) as pool:
                for f in [pool.submit(r.start) for r in self.radii]:
                    f.result()
        else:
            for r in self.radii:
                r.start()

    # -- the realm on several hosts ----------------------------------------------------------
    def _start_postgres(self, lab: Lab) -> Registry:
        """Namespace `pg` with the back-end bridge, the private cluster in it, its role's random
        password and the admin's passfile; returns the lab's own registry (over the socket)."""
        pg_ns = lab.add_ns("pg")
        lab.add_bridge(pg_ns, "br0")
        lab.add_addr(pg_ns, "br0", f"{PG_IP}/24")
        self._pg_stack = contextlib.ExitStack()
        lab.defer(self._pg_stack.close)  # after close(): the servers stop first
        cluster = self._pg_stack.enter_context(
            private_cluster(address=PG_IP, hba_subnet=BACK_NET, port=PG_PORT, netns=pg_ns))
        self._pg_password = secrets.token_urlsafe(24)
        cluster.set_password(self._pg_password)
        self.postgres = LabPostgres(pg_ns, PG_IP, PG_PORT, cluster)
        self.registry_url = self._pg_url("admin")
        return open_registry(cluster.url())

    def _pg_url(self, who: str) -> str:
        """A registry URL over the back end for `who`, with its own passfile (0600)."""
        c = self.postgres.cluster
        passfile = write_passfile(str(self.dir / f"pgpass-{who}"), PG_IP, PG_PORT, c.database, c.role,
                                  self._pg_password)
        return f"postgresql://{c.role}@{PG_IP}:{PG_PORT}/{c.database}?passfile={passfile}"

    def _server_registry(self, k: int) -> Path | str:
        return self._pg_url(f"radius{k}") if self.registry == POSTGRESQL else self.dir / "registry.db"

    def bundle_servers(self, i: int) -> list[ServerEntry]:
        """The servers device i's bundle lists: on PostgreSQL rotated by device, so that the
        devices share out their Tessera operations; else in the realm's order."""
        if self.registry != POSTGRESQL:
            return list(self.servers)
        k = (i - 1) % len(self.servers)
        return self.servers[k:] + self.servers[:k]

    def host(self, server_id: str) -> LabServer:
        return next(h for h in self.hosts if h.server_id == server_id)

    def cut_from_registry(self, h: LabServer) -> None:
        """Drop every packet between server `h` and PostgreSQL (nftables in h's namespace): a
        partition, not a refusal -- its connections hang until their TCP timeouts."""
        if self.postgres is None:
            raise LabError("a SQLite realm has no back end to cut")
        sh(["nft", "-f", "-"], ns=h.ns, input=(
            f"table inet {CUT_TABLE} {{\n"
            f"  chain output {{ type filter hook output priority 0; ip daddr {self.postgres.address} drop; }}\n"
            f"  chain input {{ type filter hook input priority 0; ip saddr {self.postgres.address} drop; }}\n"
            f"}}\n").encode())

    def restore_registry(self, h: LabServer) -> None:
        """Undo `cut_from_registry` (no error if nothing was cut)."""
        sh(["nft", "delete", "table", "inet", CUT_TABLE], ns=h.ns, check=False)

    def registrations_by_server(self) -> dict[str, int]:
        """How many registrations each server made, from the registry's audit rows."""
        counts = {h.server_id: 0 for h in self.hosts}
        for e in self.realm.registry.audit(None, 10_000):
            if e.event == "registered" and e.server_id in counts:
                counts[e.server_id] += 1
        return counts

    def radsec_servers(self, d: LabDevice) -> list[str]:
        """The servers device d's agent holds a RadSec connection to (``ss`` in its namespace)."""
        out = sh(["ss", "-Htn", "state", "established", f"( dport = :{RADSEC_PORT} )"], ns=d.dev.ns).stdout.decode()
        by_addr = {h.front: h.server_id for h in self.hosts}
        peers = [line.split()[-1].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()]
        return sorted({by_addr[p] for p in peers if p in by_addr})

    def admissions_by_server(self) -> dict[str, int]:
        """How many 802.1X admissions each server accepted (its module's post-auth log lines)."""
        return {h.server_id: h.radius.log_text().count("' admitted on ") for h in self.hosts}

    def registry_display(self) -> str:
        return display_url(self.registry_url)

    # -- devices ---------------------------------------------------------------------------
    def set_carrier(self, d: LabDevice, up: bool) -> None:
        self.switch.set_carrier(d.dev.port, up)

    def set_carriers(self, devices: list[LabDevice], up: bool) -> float:
        """Every device's cable in or out at once (one netlink batch in the switch); returns the
        batch's time.monotonic(), the zero of the agents' event stamps."""
        return self.switch.set_carriers([d.dev.port for d in devices], up)

    def events(self) -> AgentEvents:
        """A FIFO in the lab's directory for the agents' event streams (`start_agent(events=)`)."""
        ev = AgentEvents(self.dir / "events.fifo")
        self.lab.defer(ev.close)
        return ev

    def start_agent(self, d: LabDevice, announce_every: float = 0.5, revocation_poll: float = 5.0,
                    events: AgentEvents | None = None, tunnel: bool = False, wire: str | None = None,
                    batch: int | None = None) -> Proc:
        """Start d's tessera-agent; with `events`, it writes its milestones to that FIFO; with
        `tunnel`, its tessera0 gets 198.51.100.k/24 and 2001:db8:100::k/64 (k = d.dev.index),
        without it the agent runs with --no-tunnel. `wire` ("socket"/"ring") and `batch` are the
        agent's --wire and --batch (None: its defaults)."""
        k = d.dev.index
        tun = (["--tunnel-address", f"{tunnel_ipv4(k)}/24", "--tunnel-address", f"{tunnel_ipv6(k)}/64"]
               if tunnel else ["--no-tunnel"])
        d.agent = self.lab.spawn(f"agent-d{d.dev.index}", d.dev.ns,
                                 [str(AGENT), "run", "-i", "eth0", "--bundle", str(d.dir / "bundle.json"),
                                  "--state-dir", d.state_dir, "--announce-every", str(announce_every),
                                  "--revocation-poll", str(revocation_poll), *tun,
                                  *(["--wire", wire] if wire else []), *(["--batch", str(batch)] if batch else []),
                                  *(["--events", str(events.path)] if events is not None else [])])
        deadline = time.monotonic() + 15
        while not os.path.exists(os.path.join(d.state_dir, "agent.sock")):
            if not d.agent.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"agent of {d.device_id} did not start; see {d.agent.log_path}")
            time.sleep(0.02)
        return d.agent

    def admin(self, *args: str, check: bool = True):
        """Run tessera-admin on this realm from the RADIUS server's namespace (where a revocation's
        Disconnect-Request must come from)."""
        where = (["--registry", self.registry_url] if self.registry == POSTGRESQL
                 else ["--db", str(self.dir / "registry.db")])
        argv = [str(AGENT.with_name("tessera-admin")), *where, "--kek", str(self.dir / "kek"), *args]
        return self.lab.run(self.radius_ns, argv, check=check)

    def stop_agent(self, d: LabDevice) -> None:
        if d.agent is not None:
            self.lab.stop(d.agent)
            d.agent = None

    def status(self, d: LabDevice) -> dict | None:
        try:
            return query(d.state_dir, {"cmd": "status"}, timeout=2)
        except (OSError, ValueError):
            return None

    def send(self, d: LabDevice, peer: str, data: str) -> dict:
        return query(d.state_dir, {"cmd": "send", "peer": peer, "data": data})

    def inbox(self, d: LabDevice) -> list[dict]:
        return query(d.state_dir, {"cmd": "inbox"})

    def wait(self, pred, timeout: float, every: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(every)
        return pred()

    def peered(self, d: LabDevice, peers: list[str]) -> bool:
        st = self.status(d)
        return bool(st) and all(p in st["sessions"] for p in peers)

    def stop_capture(self) -> CaptureStats | None:
        """End the switch capture; the pcap then holds every frame that crossed the switch."""
        return self.capture.stop() if self.capture else None

    def close(self) -> None:
        for d in self.devices:
            self.stop_agent(d)
        self.switch.close()
        with ThreadPoolExecutor(len(self.radii)) as pool:  # each takes ~1 s (the module's listener stops)
            list(pool.map(lambda r: r.stop(), self.radii))
