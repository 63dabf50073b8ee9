"""The namespace lab demo (the README's first command): the whole system, as it happens.

Builds a realm with N enrolled devices and one stranger, FreeRADIUS with the plugin in its own
namespace, a switch with one 802.1X port per device, and one tessera-agent per device. Then it
brings every link up at once and prints each device's agent log as it happens — admitted,
registered, ticketed, peered — sends encrypted frames between every pair, pings every pair over
the agents' tessera0 interfaces and checks that the switch's pcap shows none of that traffic in
clear (lab/tunnel_proof.py), and ends with a summary table, the link-up → peered times, a pcap of
the switch and, next to it, a timeline (PNG, lab/timeline.py: a row per device, a mark per
milestone its agent reported on the event FIFO). The result line and the exit code cover the
peering, the messages, the pings, the pcap check and the stranger. Everything it made is removed
at the end, also after a failure or Ctrl-C.

`--servers N` (1-5) with `--registry postgresql` builds a realm on several hosts instead
(`tessera.lab.topology`): PostgreSQL in its own namespace, N FreeRADIUS servers each in its own,
the switch and the devices' bundles listing them all. More than one server implies PostgreSQL
(a SQLite file belongs to one host); `--registry postgresql` also takes one server. The output
is the default demo's, plus the servers and which of them served what.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import sys
import time

from tessera.lab.netns import Lab, sh
from tessera.lab.topology import POSTGRESQL, SQLITE, RealmLab
from tessera.lab.tunnel_proof import check_switch_pcap, ping_pairs, tunnel_address
from tessera.tunnel import tap_hw

# device i (and the stranger, n+1) sits at 192.0.2.(100+i) and 203.0.113.(100+i): up to .254. Memory is
# no limit here (~40 MiB per agent and ~3 MiB of hostapd per port)
MAX_DEVICES = 150
LINE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) tessera\.agent (\S+?):? (.*)$")


class LogFollower:
    """Prints new agent log lines, in time order, relative to link-up."""

    def __init__(self, paths: list[str], t0_wall: float, out=None):
        self.paths = {p: 0 for p in paths}
        self.t0 = t0_wall
        self.out = out or sys.stdout

    def _rel(self, h: str, m: str, s: str, ms: str) -> float:
        lt = time.localtime(self.t0)
        t = time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, int(h), int(m), int(s), 0, 0, -1)) + int(ms) / 1000
        return t - self.t0

    def poll(self) -> None:
        lines = []
        for path, pos in self.paths.items():
            if not os.path.exists(path):
                continue
            with open(path, "r", errors="replace") as f:
                f.seek(pos)
                chunk = f.read()
                self.paths[path] = pos + len(chunk.encode())
            for line in chunk.splitlines():
                m = LINE.match(line)
                if m:
                    lines.append((self._rel(*m.groups()[:4]), m.group(5), m.group(6)))
        for rel, dev, text in sorted(lines):
            print(f"  [{rel:+7.3f}s] {dev:<7} {text}", file=self.out, flush=True)


class EventLog:
    """The agents' event FIFO (`AgentEvents`), keeping every event read for the timeline."""

    def __init__(self, events):
        self.events, self.all = events, []

    def read(self, timeout: float | None) -> list[dict]:
        got = self.events.read(timeout)
        self.all += got
        return got


def timeline_path(pcap: str) -> str:
    """The timeline PNG next to the pcap: tessera-lab.pcap -> tessera-lab-timeline.png."""
    root, ext = os.path.splitext(pcap)
    return f"{root if ext == '.pcap' else pcap}-timeline.png"


def draw_timeline(events: list[dict], t0: float, path: str, n: int, stranger: str) -> None:
    """The timeline PNG (lab/timeline.py); a bonus like the pcap's dissection: a failure is said, not fatal."""
    try:
        from tessera.lab.timeline import draw

        tl = draw(events, t0, path, labels={stranger: "not enrolled"},
                  title=f"Tessera lab: {n} devices and a stranger, from link-up to encrypted traffic")
        print(f"timeline: {tl.summary()}")
    except ImportError as exc:
        print(f"timeline: not drawn ({exc}; tools/bootstrap installs matplotlib)")
    except Exception as exc:
        print(f"timeline: not drawn ({type(exc).__name__}: {exc})")


def run(n: int, timeout: float, pcap: str, keep: bool, servers: int = 1, registry: str = SQLITE,
        timeline: str | None = None) -> int:
    several = "" if registry == SQLITE else f" ({servers} RADIUS server{'s' * (servers > 1)}, registry in PostgreSQL)"
    print(f"Tessera lab: building a realm with {n} devices and one stranger in network namespaces{several}…", flush=True)
    t_build = time.monotonic()
    with Lab() as lab:
        try:  # the work directory goes also when the build fails
            rl = RealmLab(lab, n + 1, enrol=n, servers=servers, registry=registry)
            try:
                return _demo(rl, n, timeout, pcap, t_build, timeline)
            finally:
                rl.close()
        finally:
            if keep:
                print(f"logs kept in {lab.workdir}")
            else:
                shutil.rmtree(lab.workdir, ignore_errors=True)


def _demo(rl: RealmLab, n: int, timeout: float, pcap: str, t_build: float, timeline: str | None = None) -> int:
    devices, stranger = rl.devices[:n], rl.devices[n]
    if rl.postgres is None:
        print(f"  realm {rl.realm.name}: registry {rl.dir / 'registry.db'}, service key kvno {rl.realm.keyring.current.kvno}")
        print(f"  FreeRADIUS {rl.cfg.server_id} at {rl.cfg.address} (pid {rl.radius.pid}): switches on UDP {rl.cfg.nas_port}, "
              f"devices on RadSec {rl.cfg.radsec_port} (TLS, device certificate); with the "
              f"Tessera module; switch {rl.switch.ns} with {len(rl.devices)} 802.1X ports (hostapd each, nftables)")
    else:
        pg = rl.postgres
        print(f"  realm {rl.realm.name}: registry {rl.registry_display()}, service key kvno {rl.realm.keyring.current.kvno}")
        print(f"  PostgreSQL 15 in {pg.ns} at {pg.address}:{pg.port} (pid {pg.pid}), scram-sha-256 from the back end; "
              f"a passfile per server")
        for h in rl.hosts:
            print(f"  FreeRADIUS {h.server_id} in {h.ns} at {h.front}, back end {h.back} (pid {h.pid}): switches on "
                  f"UDP {h.cfg.nas_port}, devices on RadSec {h.cfg.radsec_port}; with the Tessera module")
        print(f"  switch {rl.switch.ns} with {len(rl.devices)} 802.1X ports (hostapd each, nftables), RADIUS failover "
              f"order {', '.join(h.server_id for h in rl.hosts)}")
    for i, d in enumerate(devices, 1):
        order = "" if rl.postgres is None else f"; its bundle lists {', '.join(s.server_id for s in rl.bundle_servers(i))}"
        print(f"  enrolled {d.device_id} (generated key pair, bootstrap bundle) on port {d.dev.port}, {d.dev.mac}{order}")
    print(f"  {stranger.device_id} on port {stranger.dev.port} is NOT enrolled (certificate from an unknown maker)")
    events = EventLog(rl.events())
    rl.set_carriers(rl.devices, False)
    for d in rl.devices:
        rl.start_agent(d, events=events.events, tunnel=True)
    print(f"  built in {time.monotonic() - t_build:.1f} s; agents waiting for carrier\n", flush=True)

    print("Links up (all at once: one netlink batch):", flush=True)
    t0_wall = time.time()
    t0 = rl.set_carriers(rl.devices, True)
    follow = LogFollower([d.agent.log_path for d in rl.devices], t0_wall)
    ids = {d.device_id for d in devices}
    peers: dict[str, set[str]] = {i: set() for i in ids}
    peered_at: dict[str, float] = {}  # from the agents' events (their monotonic stamps), not by polling them
    while time.monotonic() - t0 < timeout and len(peered_at) < n:
        for ev in events.read(0.1):
            dev, peer = ev.get("device"), ev.get("peer")
            if ev.get("event") == "peered" and dev in ids and peer in ids and isinstance(ev.get("t"), (int, float)):
                peers[dev].add(peer)
                if len(peers[dev]) == n - 1:
                    peered_at.setdefault(dev, ev["t"] - t0)
        follow.poll()
    time.sleep(0.3)
    follow.poll()
    if len(peered_at) < n:
        print(f"\nnot every device peered within {timeout:.0f} s (see the log above)")

    print("\nEncrypted traffic between every pair:", flush=True)
    for a in devices:
        events.read(0)
        for b in devices:
            if a is not b:
                rl.send(a, b.device_id, f"hello {b.device_id}, this is {a.device_id}")
    want = n * (n - 1)
    got: dict[str, list[dict]] = {d.device_id: [] for d in devices}
    deadline = time.monotonic() + max(10.0, want / 500)  # wait for the deliveries themselves, not a fixed time
    while True:
        events.read(0)  # keep the agents' event FIFO drained (their "record" lines)
        for b in devices:
            got[b.device_id] += rl.inbox(b)
        if sum(map(len, got.values())) >= want or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    delivered = 0
    for b in devices:
        for msg in got[b.device_id]:
            delivered += 1
            if delivered <= 6:
                print(f"  {b.device_id} got from {msg['peer']}: {msg['data']!r}")
    print(f"  {delivered} of {n * (n - 1)} messages delivered, each in one AES-256-GCM frame")

    pattern = os.urandom(16)  # what `ping -p` would fill the payload with; it must not show on the switch
    print(f"\nPings over tessera0 between every pair (ICMP echo, payload pattern {pattern.hex()}):", flush=True)
    events.read(0)
    try:
        pings = ping_pairs([(d.device_id, d.dev.ns, tunnel_address(d.dev.index)) for d in devices], pattern)
        print(f"  {pings.summary()}")
        if pings.unanswered:
            print("  unanswered: " + ", ".join(f"{a} → {b}" for a, b in pings.unanswered[:8])
                  + (" …" if len(pings.unanswered) > 8 else ""))
    except OSError as exc:  # no tessera0 in a namespace (an agent without the tunnel): said, and the result fails
        pings = None
        print(f"  not pinged: {exc}")

    st_x = rl.status(stranger)
    print(f"\n{stranger.device_id} (not enrolled): port {st_x['port'] if st_x else '?'}, "
          f"switch port open: {rl.controller.is_open(stranger.dev.port)}")

    print(f"\n{'device':<8} {'port':<8} {'via':<5} {'reg gen':>7} {'TGT left':>9} {'peers':>5} "
          f"{'out':>4} {'in':>4} {'tun out':>7} {'tun in':>6} {'link-up → peered':>17}")
    for d in rl.devices:
        st = rl.status(d) or {}
        ss = st.get("sessions", {})
        print(f"{d.device_id:<8} {st.get('port', '?'):<8} {st.get('admission') or '-':<5} "
              f"{(st.get('registration') or {}).get('generation', '-'):>7} "
              f"{str((st.get('tgt') or {}).get('expires_in', '-')) + ' s':>9} {len(ss):>5} "
              f"{sum(s['frames_out'] for s in ss.values()):>4} {sum(s['frames_in'] for s in ss.values()):>4} "
              f"{sum((s.get('tunnel') or {}).get('frames_out', 0) for s in ss.values()):>7} "
              f"{sum((s.get('tunnel') or {}).get('frames_in', 0) for s in ss.values()):>6} "
              f"{(f'{peered_at[d.device_id] * 1000:.0f} ms') if d.device_id in peered_at else '-':>17}")
    if peered_at:
        print(f"\nall {len(peered_at)} enrolled devices peered {max(peered_at.values()):.2f} s after link-up "
              f"(first: {min(peered_at.values()):.2f} s); every pair then exchanged encrypted frames")
    if rl.postgres is not None:
        regs = rl.registrations_by_server()
        print("registrations by server (the registry's audit): " + ", ".join(f"{k} {v}" for k, v in regs.items()))
        print("RadSec connections: " + ", ".join(f"{d.device_id} → {'+'.join(rl.radsec_servers(d)) or '-'}"
                                                for d in devices))
        print("802.1X admissions by server (their logs; hostapd uses the first until it stops answering): "
              + ", ".join(f"{k} {v}" for k, v in rl.admissions_by_server().items()))
    events.read(0.3)  # the last records' lines
    stats = rl.stop_capture()  # tcpdump flushes and exits: the file now holds every frame
    if stats is not None:
        print(f"pcap of the switch: {stats.captured} frames captured, {stats.dropped} dropped by the kernel")
    if os.path.exists(rl.pcap):
        shutil.copyfile(rl.pcap, pcap)
        try:
            from scapy.utils import rdpcap

            from tessera.agent.layer import summarize

            counts = summarize(rdpcap(pcap))
            print(f"pcap of the switch: {pcap} — Tessera frames: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        except Exception as exc:  # the pcap is a bonus; the demo's result does not hang on it
            print(f"pcap of the switch: {pcap} (not dissected: {exc})")
    clear = None
    if os.path.exists(pcap):
        clear = check_switch_pcap(pcap, port_ifindexes(rl), {s.host for s in rl.servers}, pattern,
                                  [tap_hw(rl.realm.name, d.device_id) for d in rl.devices])
        print("the switch's pcap, looking for the tunnel's traffic in clear:")
        for line in clear.summary():
            print(f"  {line}")
    draw_timeline(events.all, t0, timeline or timeline_path(pcap), n, stranger.device_id)
    peered = len(peered_at) == n and delivered == n * (n - 1)
    pinged = pings is not None and pings.ok
    unseen = clear is not None and clear.ok
    stranger_out = not rl.controller.is_open(stranger.dev.port)
    ok = peered and pinged and unseen and stranger_out
    if ok:
        print(f"\nresult: every enrolled device admitted, registered, ticketed and peered; {pings.answered} of "
              f"{pings.pairs} pairs pinged over tessera0 (RTT median {statistics.median(pings.warm_ms):.2f} ms) with "
              f"no inner frame visible on the switch; the stranger stayed out")
    else:
        missing = [what for what, good in (("not every device peered and exchanged messages", peered),
                                           (f"pings over tessera0: {pings.answered if pings else 0} of "
                                            f"{pings.pairs if pings else n * (n - 1) // 2} pairs answered", pinged),
                                           ("inner traffic visible on the switch (or no pcap)", unseen),
                                           ("the stranger's port opened", stranger_out)) if not good]
        print("\nresult: INCOMPLETE: " + "; ".join(missing))
    return 0 if ok else 1


def port_ifindexes(rl: RealmLab) -> set[int]:
    """The interface indexes of the switch's device ports (the pcap records each frame's)."""
    links = json.loads(sh(["ip", "-j", "link", "show"], ns=rl.switch.ns).stdout or b"[]")
    ports = {d.dev.port for d in rl.devices}
    return {link["ifindex"] for link in links if link.get("ifname") in ports}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", "--devices", type=int, default=3, help=f"enrolled devices (default 3, up to {MAX_DEVICES})")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds from link-up for every device to peer (default 30, 0.3 s more per device over 100)")
    p.add_argument("--pcap", default="tessera-lab.pcap")
    p.add_argument("--timeline", default=None, help="the timeline PNG (default: next to the pcap, NAME-timeline.png)")
    p.add_argument("--keep", action="store_true", help="keep the lab's logs and configuration")
    p.add_argument("--servers", type=int, default=1, help="RADIUS servers, each in its own namespace (1-5; "
                   "more than one implies --registry postgresql)")
    p.add_argument("--registry", choices=(SQLITE, POSTGRESQL), default=None,
                   help="the realm's registry: sqlite (one file, the default for one server) or postgresql "
                        "(a private cluster in its own namespace, shared by the servers)")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("the lab needs root (network namespaces)", file=sys.stderr)
        return 2
    if not 2 <= a.devices <= MAX_DEVICES:
        print(f"--devices must be between 2 and {MAX_DEVICES}", file=sys.stderr)
        return 2
    if not 1 <= a.servers <= 5:
        print("--servers must be between 1 and 5", file=sys.stderr)
        return 2
    registry = a.registry or (POSTGRESQL if a.servers > 1 else SQLITE)
    if registry == SQLITE and a.servers > 1:
        print("several servers share the registry in PostgreSQL, as separate hosts would: "
              "use --registry postgresql (a SQLite file belongs to one host)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    timeout = a.timeout if a.timeout is not None else 30.0 + 0.3 * max(0, a.devices - 100)
    return run(a.devices, timeout, a.pcap, a.keep, a.servers, registry, a.timeline)


if __name__ == "__main__":
    sys.exit(main())
