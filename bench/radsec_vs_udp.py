"""Server CPU per Tessera exchange over RadSec (RADIUS/TLS, RFC 6614) vs RADIUS/UDP, same run.

One private FreeRADIUS (`-f`) with the plugin, a fresh realm, and both listeners: the UDP
`tessera` site (shared secret) and the RadSec `tessera-radsec` site (TLS with the device
certificate; every request's certificate vetted and bound to the message's device id). Devices,
enrolled with generated keys and certificates, register and get TGTs over RadSec. Then,
per round and per exchange (TGT from the LLK, TGT renewal, peer session key), the same number of
fresh requests (own nonces: the replay cache passes each; spread over fresh devices, each within
its replay-cache quota) go over UDP and over RadSec, alternating which goes first, `--window` in
flight each way:

- UDP: `radius_load.run_load` (pre-built datagrams on non-blocking sockets);
- RadSec: pre-built packets written, one TLS record each, over each device's own TLS connection
  (its certificate must match the message's device id), replies read by their header's length
  and matched by Identifier.

The figure is radiusd's CPU time (utime + stime from /proc) per answered exchange; the ratio is
RadSec over UDP. TLS handshakes are not in it (one per device and server, kept open). Every
request must be accepted: a rejected or lost request makes the script exit 1.

    .venv/bin/python bench/radsec_vs_udp.py [--count 4000] [--rounds 3] [--window 64] [--transport both]
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from radius_load import Result, cpu_seconds, prebuild, run_load, session_requests  # noqa: E402

from tessera.device import DeviceClient  # noqa: E402
from tessera.identity import DeviceKey, ServerEntry  # noqa: E402
from tessera.lab import radiusd  # noqa: E402
from tessera.lab.pki import LabPKI, write_file  # noqa: E402
from tessera.radius.client import Server  # noqa: E402
from tessera.radius.radsec import RadSecClient, RadSecServer, tls_context  # noqa: E402
from tessera.realm import Realm, create_kek  # noqa: E402
from tessera.service import Policy  # noqa: E402
from tessera.sqlite_registry import SQLiteRegistry  # noqa: E402

NAME = "radius.bench.example"


def run_tls_load(streams: list[tuple[RadSecClient, list[bytes]]], server: RadSecServer, pid: int, window: int,
                 timeout: float = 5.0) -> Result:
    """Write each device's pre-built packets over its own new TLS connection (one record per
    packet), at most ``window`` unanswered in all (< 256 per connection: Identifiers are unique
    in flight); read the replies by their length. Returns the counts and radiusd's CPU time."""
    per = max(1, min(255, window // len(streams)))
    conns = []
    for client, packets in streams:
        raw = socket.create_connection((server.host, server.port), timeout=timeout)
        sock = client.context.wrap_socket(raw, server_hostname=server.tls_name or server.host)
        sock.setblocking(False)
        conns.append({"sock": sock, "packets": packets, "i": 0, "out": {}, "buf": bytearray()})
    accepted = rejected = lost = 0
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    last = t0
    try:
        while any(c["i"] < len(c["packets"]) or c["out"] for c in conns):
            for c in conns:
                sock, packets, out = c["sock"], c["packets"], c["out"]
                while c["i"] < len(packets) and len(out) < per and packets[c["i"]][1] not in out:
                    try:
                        sock.send(packets[c["i"]])
                    except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                        break
                    out[packets[c["i"]][1]] = time.monotonic()
                    c["i"] += 1
            select.select([c["sock"] for c in conns], [], [], 0.05)
            for c in conns:
                while True:
                    try:
                        chunk = c["sock"].recv(65536)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        break
                    if not chunk:
                        raise ConnectionError("the server closed a connection")
                    c["buf"] += chunk
                buf = c["buf"]
                while len(buf) >= 4 and len(buf) >= int.from_bytes(buf[2:4], "big"):
                    n = int.from_bytes(buf[2:4], "big")
                    code, ident = buf[0], buf[1]
                    del buf[:n]
                    if c["out"].pop(ident, None) is not None:
                        last = time.monotonic()
                        accepted += code == 2
                        rejected += code != 2
            if time.monotonic() - last > timeout:
                break
    except (ConnectionError, ssl.SSLError, OSError) as exc:
        print(f"  RadSec connection failed: {exc}", file=sys.stderr)
    finally:
        seconds, cpu1 = time.monotonic() - t0, cpu_seconds(pid)
        for c in conns:
            lost += len(c["out"]) + len(c["packets"]) - c["i"]
            c["sock"].close()
    return Result(sum(len(p) for _, p in streams), accepted, rejected, lost, seconds, cpu1 - cpu0)


# The replay cache allows a device 512 live proofs (tessera/replay.py): each batch of requests
# is spread over fresh devices, PROOFS_PER_DEVICE each (a session request is two proofs, both
# charged to the initiator).
PROOFS_PER_DEVICE = 400


class Pool:
    """Enrolled, registered, ticketed devices with their RadSec clients, handed out fresh."""

    def __init__(self, realm: Realm, directory: Path, entry: list[ServerEntry], tls: RadSecServer):
        self.realm, self.dir, self.entry, self.tls = realm, directory, entry, tls
        self.clients: dict[str, RadSecClient] = {}
        self.made = 0

    def take(self, n: int) -> list[DeviceClient]:
        out = []
        for _ in range(n):
            self.made += 1
            name = f"bench-{self.made:04d}"
            b = self.realm.enrol_generated(name, self.entry, "", time.time())
            cert = write_file(self.dir / f"{name}.pem", b.device_certificate_pem)
            key = write_file(self.dir / f"{name}.key", b.device_key_pem, 0o600)
            dev = DeviceClient(b, DeviceKey.from_pem(b.device_key_pem))
            c = RadSecClient([self.tls], tls_context(str(cert), str(key), b.ca_certificate_pem))
            dev.register_reply(c.exchange(name, lambda sid: dev.register_request(sid, time.time(), os.urandom(16))), time.time())
            dev.ticket_reply(c.exchange(name, lambda sid: dev.auth_request(sid, time.time(), os.urandom(16))), time.time())
            c.close()
            self.clients[name] = c
            out.append(dev)
        return out


def batch(pool: Pool, kind: str, count: int, server_id: str) -> list[tuple[DeviceClient, list[tuple[str, bytes]]]]:
    """``count`` fresh requests of ``kind``, as (sending device, [(user, message)]) per device."""
    t = time.time()
    if kind == "session":
        per = PROOFS_PER_DEVICE // 2
        pairs = pool.take(2 * -(-count // per))
        out = []
        for k in range(0, len(pairs), 2):
            x, y = pairs[k], pairs[k + 1]
            n = min(per, count - per * (k // 2))
            out.append((y, session_requests(x, y, server_id, t, n)))
        return out
    per = PROOFS_PER_DEVICE
    out = []
    for k, dev in enumerate(pool.take(-(-count // per))):
        n = min(per, count - per * k)
        make = dev.auth_request if kind == "auth" else dev.renew_request
        out.append((dev, [(dev.device_id, make(server_id, t, os.urandom(16))) for _ in range(n)]))
        dev.abandon()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=4000, help="requests per exchange, transport and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--window", type=int, default=64, help="requests in flight (both transports)")
    p.add_argument("--transport", choices=("both", "radsec", "udp"), default="both")
    a = p.parse_args(argv)
    transports = ("udp", "radsec") if a.transport == "both" else (a.transport,)
    failures: list[str] = []
    cpu: dict[tuple[str, str], list[float]] = {}
    names = {"auth": "TGT (auth with LLK)", "renew": "TGT renewal", "session": "session key (2 TGTs)"}
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as d:
        d = Path(d)
        now = time.time()
        # a pair of devices does up to PROOFS_PER_DEVICE/2 sessions: past the per-pair share of
        # the replay quota (32 proofs), which only a flood needs; lift that one
        realm = Realm.init(SQLiteRegistry(str(d / "registry.db")), create_kek(str(d / "kek")), "bench.example", now,
                           Policy(replay_pair_quota=PROOFS_PER_DEVICE))
        LabPKI(realm.ca).install_server_files(d / "tls", NAME, now)
        cfg = radiusd.RadiusConfig(db=d / "registry.db", kek=d / "kek", tls_dir=d / "tls", radsec_port=0)
        raddb = radiusd.build_config(d / "raddb", cfg)
        udp = Server(cfg.server_id, cfg.address, cfg.port, cfg.secret.encode())
        tls = RadSecServer(cfg.server_id, cfg.address, cfg.radsec_port, NAME)
        pool = Pool(realm, d, [ServerEntry(cfg.server_id, cfg.address, cfg.port, cfg.radsec_port, NAME)], tls)
        with radiusd.RadiusServer.for_config(raddb, cfg) as rs:
            print(f"FreeRADIUS pid {rs.pid}, realm {realm.name}; {a.count} requests per exchange, transport and "
                  f"round, {a.window} in flight, at most {PROOFS_PER_DEVICE} proofs per device")
            print(f"{'exchange':<22} {'transport':<9} {'answered':>9} {'rejected':>8} {'lost':>5} {'per second':>11} "
                  f"{'server CPU/exchange':>20}")
            for r in range(a.rounds):
                order = transports if r % 2 == 0 else tuple(reversed(transports))
                for kind, name in names.items():
                    for transport in order:
                        work = batch(pool, kind, a.count, cfg.server_id)
                        if transport == "udp":
                            requests = [req for _, reqs in work for req in reqs]
                            res = run_load(udp, prebuild(udp, requests), pid=rs.pid, window=a.window)
                        else:
                            streams = []
                            for dev, reqs in work:
                                client, packets = pool.clients[dev.device_id], []
                                for k, (user, message) in enumerate(reqs):
                                    pkt = client.request_packet(tls, user, message)
                                    pkt.id = k % 256
                                    packets.append(pkt.RequestPacket())
                                streams.append((client, packets))
                            res = run_tls_load(streams, tls, rs.pid, a.window)
                        if res.rejected or res.lost:
                            failures.append(f"{name} over {transport}: {res.rejected} rejected, {res.lost} lost")
                        answered = res.accepted + res.rejected
                        us = res.server_cpu / max(answered, 1) * 1e6
                        cpu.setdefault((name, transport), []).append(us)
                        print(f"{name:<22} {transport:<9} {res.accepted:>9} {res.rejected:>8} {res.lost:>5} "
                              f"{answered / res.seconds:>11.0f} {us:>17.1f} µs", flush=True)
    if a.transport == "both" and not failures:  # no ratios from rows with refused or lost requests
        print("\nmedian server CPU per exchange, RadSec / UDP:")
        for name in names.values():
            u, s = (sorted(cpu[(name, t)])[len(cpu[(name, t)]) // 2] for t in ("udp", "radsec"))
            print(f"  {name:<22} UDP {u:7.1f} µs   RadSec {s:7.1f} µs   ratio {s / u:5.2f}   (+{s - u:.1f} µs)")
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
