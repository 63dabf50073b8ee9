"""The one-process demo: the whole Tessera flow on a real SQLite registry, step by step.

A realm service and three devices (enrolled by public key, by manufacturer certificate and by a
generated bootstrap bundle) exchange real protocol bytes through lists in memory: registration,
TGTs, peer sessions A-B and B-C with encrypted traffic both ways, a replayed and a tampered
frame, a TGT renewal, a service-key rotation mid-life, a revocation and an expiry. It uses the
real clock and os.urandom; only the wires are missing (the namespace lab adds them).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from .device import DeviceClient
from .errors import TesseraError
from .identity import CertificateAuthority, DeviceKey, ServerEntry, pem_certificate
from .peer import PeerInitiator, PeerResponder
from .realm import Realm, create_kek
from .sqlite_registry import SQLiteRegistry
from .ticket import ticket_kvno

SERVERS = [ServerEntry("radius-1", "192.0.2.1"), ServerEntry("radius-2", "192.0.2.2")]


class Demo:
    def __init__(self, workdir: str, out=sys.stdout):
        self.out = out
        self.clock = time.time()
        self.db = os.path.join(workdir, "registry.db")
        kek = create_kek(os.path.join(workdir, "kek"))
        self.realm = Realm.init(SQLiteRegistry(self.db), kek, "example.net", self.clock)
        self.servers = {s.server_id: self.realm.service(s.server_id) for s in SERVERS}
        self.wire_bytes = 0

    def say(self, step: str, text: str) -> None:
        print(f"[{self.clock - self.t0:8.1f}s] {step:<13} {text}", file=self.out)

    def rpc(self, server_id: str, request: bytes) -> bytes:
        """What the RADIUS round trip does: bytes to a server, reply bytes or an error reply."""
        svc = self.servers[server_id]
        self.wire_bytes += len(request)
        try:
            return svc.handle(request, self.clock)
        except TesseraError as exc:
            return svc.error_reply(exc, self.clock)

    def admit(self, dev: DeviceClient, server_id: str = "radius-1") -> None:
        reg = dev.register_reply(self.rpc(server_id, dev.register_request(server_id, self.clock, os.urandom(16))), self.clock)
        self.say("register", f"{dev.device_id}: signed request verified, DRT generation {reg.generation}, "
                 f"LLK sealed to its key, valid {int(reg.not_after - reg.not_before) // 86400} days")
        cred = dev.ticket_reply(self.rpc(server_id, dev.auth_request(server_id, self.clock, os.urandom(16))), self.clock)
        self.say("tgt", f"{dev.device_id}: proved the LLK (never sent), TGT + STK valid "
                 f"{int(cred.not_after - cred.not_before) // 3600} h (kvno {ticket_kvno(cred.tgt)})")

    def peer(self, a: DeviceClient, b: DeviceClient, server_id: str = "radius-1"):
        ia, rb = PeerInitiator(a, b.device_id), PeerResponder(b)
        hello = ia.hello(self.clock, os.urandom(16))
        rb.receive_hello(hello, self.clock)
        ticket = rb.receive_session_reply(self.rpc(server_id, rb.session_request(server_id, self.clock, os.urandom(16))), self.clock)
        fin = ia.receive_ticket(ticket, self.clock)
        cb = rb.receive_finished(fin, self.clock)
        self.say("session", f"{a.device_id} ⇄ {b.device_id}: hello {len(hello)} B, shared service ticket, "
                 f"mutual proof done, session {cb.session_id.hex()}")
        return ia.channel, cb

    def expect_reject(self, step: str, what: str, fn) -> None:
        try:
            fn()
        except TesseraError as exc:
            self.say(step, f"{what}: rejected ({exc.reason})")
            return
        raise SystemExit(f"demo: {what} was accepted")

    def run(self) -> int:
        self.t0 = self.clock
        realm = self.realm
        self.say("realm", f"{realm.name}: service key kvno 1, signing key {realm.service_public_key.hex()[:16]}…, "
                 f"registry {self.db}")
        # enrolment, three ways
        key_a = DeviceKey.generate()
        realm.enrol_key("switch-a", key_a.public_bytes(), self.clock)
        a = DeviceClient(realm.bundle("switch-a", SERVERS, "demo-secret"), key_a)
        self.say("enrol", "switch-a by public key")
        maker = CertificateAuthority.generate("Maker DevID CA", self.clock)
        realm.trust_ca(pem_certificate(maker.certificate), self.clock)
        key_b = DeviceKey.generate()
        realm.enrol_certificate(pem_certificate(maker.issue_device_certificate("router-b", key_b.public_key, self.clock)), self.clock)
        b = DeviceClient(realm.bundle("router-b", SERVERS, "demo-secret"), key_b)
        self.say("enrol", "router-b by its manufacturer certificate")
        bundle = realm.enrol_generated("switch-c", SERVERS, "demo-secret", self.clock)
        c = DeviceClient(bundle, DeviceKey.from_pem(bundle.device_key_pem))
        self.say("enrol", "switch-c with a generated key pair and bootstrap bundle")
        key_x = DeviceKey.generate()
        x = DeviceClient(realm.bundle("switch-a", SERVERS, "demo-secret"), key_x)
        self.expect_reject("register", "an impostor claiming switch-a",
                           lambda: x.register_reply(self.rpc("radius-1", x.register_request("radius-1", self.clock, os.urandom(16))), self.clock))
        for dev, server in ((a, "radius-1"), (b, "radius-2"), (c, "radius-1")):
            self.admit(dev, server)
        # sessions and traffic
        ab, ba = self.peer(a, b)
        frame = ab.seal(b"LLDP-like hello from switch-a")
        self.say("traffic", f"switch-a → router-b: {ba.open(frame)!r} ({len(frame)} B frame)")
        self.say("traffic", f"router-b → switch-a: {ab.open(ba.seal(b'ack from router-b'))!r}")
        self.expect_reject("traffic", "the same frame again", lambda: ba.open(frame))
        bad = bytearray(ab.seal(b"x")); bad[-1] ^= 1
        self.expect_reject("traffic", "a tampered frame", lambda: ba.open(bytes(bad)))
        bc, cb = self.peer(b, c, "radius-2")
        self.say("traffic", f"router-b → switch-c: {cb.open(bc.seal(b'route update'))!r}")
        self.say("traffic", f"switch-c → router-b: {bc.open(cb.seal(b'route ack'))!r}")
        # replay to another server
        req = a.auth_request("radius-1", self.clock, os.urandom(16))
        a.ticket_reply(self.rpc("radius-1", req), self.clock)
        self.expect_reject("replay", "an auth request replayed to radius-1",
                           lambda: self.servers["radius-1"].handle(req, self.clock))
        self.expect_reject("replay", "the same request replayed to radius-2",
                           lambda: self.servers["radius-2"].handle(req, self.clock))
        # time passes: renewal, rotation mid-life
        self.clock += 7 * 3600
        old = a.credentials.not_after
        a.ticket_reply(self.rpc("radius-1", a.renew_request("radius-1", self.clock, os.urandom(16))), self.clock)
        self.say("renew", f"switch-a: TGT renewed with its STK, valid until +{int(a.credentials.not_after - old)} s later")
        new = realm.rotate(self.clock)
        self.say("rotate", f"service key kvno {new.kvno} current; kvno 1 kept for tickets still alive")
        a.ticket_reply(self.rpc("radius-1", a.auth_request("radius-1", self.clock, os.urandom(16))), self.clock)
        self.say("rotate", f"switch-a: DRT sealed under kvno {ticket_kvno(a.registration.drt)} still opens; "
                 f"new TGT under kvno {ticket_kvno(a.credentials.tgt)}")
        self.clock += 600
        b.ticket_reply(self.rpc("radius-2", b.auth_request("radius-2", self.clock, os.urandom(16))), self.clock)
        ab, ba = self.peer(a, b)
        self.say("traffic", f"after rotation: {ba.open(ab.seal(b'still talking'))!r}")
        # revocation
        realm.revoke("switch-c", self.clock, "demo")
        self.say("revoke", "switch-c revoked by the operator")
        self.expect_reject("revoke", "switch-c asks for a TGT",
                           lambda: c.ticket_reply(self.rpc("radius-1", c.auth_request("radius-1", self.clock, os.urandom(16))), self.clock))
        self.expect_reject("revoke", "router-b asks for a new session with switch-c",
                           lambda: self.peer(b, c, "radius-2"))
        # expiry
        self.clock += 9 * 3600
        self.expect_reject("expiry", "router-b's old TGT (9 h later)",
                           lambda: PeerInitiator(b, "switch-a").hello(self.clock, os.urandom(16)))
        print(file=self.out)
        print(f"{'device':<10} {'state':<10} {'registered until':<18} {'TGT until':<12}", file=self.out)
        for r in realm.registry.list_devices():
            dev = {"switch-a": a, "router-b": b, "switch-c": c}[r.device_id]
            tgt = dev.credentials.not_after - self.t0 if dev.credentials else 0
            reg = ((r.registration_not_after or self.t0) - self.t0) / 86400
            print(f"{r.device_id:<10} {r.state.value:<10} {f'+{reg:.0f} d':<18} {f'+{tgt / 3600:.1f} h':<12}", file=self.out)
        print(f"\naudit trail ({self.db}):", file=self.out)
        for e in realm.registry.audit(limit=50):
            print(f"  {e.event:<16} {e.device_id or '-':<10} {e.detail}", file=self.out)
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Tessera's whole flow in one process, on a real SQLite registry")
    p.add_argument("--workdir", help="keep the registry and KEK here (default: a temporary directory)")
    a = p.parse_args(argv)
    if a.workdir:
        os.makedirs(a.workdir, exist_ok=True)
        return Demo(a.workdir).run()
    with tempfile.TemporaryDirectory(prefix="tessera-demo-") as d:
        return Demo(d).run()


if __name__ == "__main__":
    sys.exit(main())
