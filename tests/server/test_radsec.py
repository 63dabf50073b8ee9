"""Devices over RADIUS/TLS (RadSec, RFC 6614) with their own certificate, on the real FreeRADIUS.

One radiusd for the module, built by ``tessera.lab.radiusd`` with the RadSec listener
(``sites-available/tessera-radsec``) beside the UDP site, its server certificate issued by the
realm CA (which the devices' bundles carry) and the realm's device CA as the listener's
``ca_file``. Devices are enrolled with generated keys and RadSec bundles (no RADIUS secret), and
speak through ``tessera.radius.radsec.RadSecClient``.

Each refusal stands beside an acceptance in the same setup: the handshake that cuts off a client
without a certificate, or with one from a foreign CA, lets the enrolled device through; the
message of another device refused on A's connection is accepted, byte for byte, on B's own; a
revoked device is refused on its open connection while another device's open connection is
served.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from pathlib import Path

import pytest
from pyrad import packet

from tessera.device import DeviceClient
from tessera.errors import CertificateError, RevokedError, UnknownDeviceError, WrongIdentityError
from tessera.identity import RADSEC, BootstrapBundle, DeviceKey, ServerEntry, pem_certificate
from tessera.lab.pki import LabPKI, write_file
from tessera.peer import PeerInitiator, PeerResponder
from tessera.radius.client import NoServerAnsweredError, RejectedError, load_dictionary
from tessera.radius.radsec import RADSEC_SECRET, RadSecClient, RadSecServer, tls_context
from tessera.realm import Realm, create_kek
from tessera.registry import DeviceState
from tessera.sqlite_registry import SQLiteRegistry

from tests.gate import needs_freeradius
from tests.server.realserver import SECRET, make_server

pytestmark = needs_freeradius
REALM = "radsec.example"
NAME = "radius.radsec.example"  # in the server's certificate


class Realmlet:
    """The realm, its server (UDP and RadSec), and devices speaking RadSec."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.db, self.kek = directory / "registry.db", directory / "kek"
        self.realm = Realm.init(SQLiteRegistry(str(self.db)), create_kek(str(self.kek)), REALM, time.time())
        self.tls = LabPKI(self.realm.ca).install_server_files(directory / "tls", NAME, time.time())

    def entries(self) -> list[ServerEntry]:
        c = self.server.cfg
        return [ServerEntry(c.server_id, c.address, c.port, c.radsec_port, NAME)]

    def files(self, name: str, key_pem: bytes, cert_pem: bytes) -> tuple[str, str]:
        d = self.dir / "devices"
        return (str(write_file(d / f"{name}.pem", cert_pem)), str(write_file(d / f"{name}.key", key_pem, 0o600)))

    def device(self, device_id: str) -> tuple[DeviceClient, RadSecClient, BootstrapBundle]:
        """Enrol with a generated key (a RadSec bundle) and open its client."""
        bundle = self.realm.enrol_generated(device_id, self.entries(), "", time.time())
        return DeviceClient(bundle, DeviceKey.from_pem(bundle.device_key_pem)), self.client(bundle), bundle

    def client(self, bundle: BootstrapBundle, context: ssl.SSLContext | None = None) -> RadSecClient:
        if context is None:
            cert, key = self.files(bundle.device_id, bundle.device_key_pem, bundle.device_certificate_pem)
            context = tls_context(cert, key, bundle.ca_certificate_pem)
        servers = [RadSecServer(s.server_id, s.host, s.radsec_port, s.tls_name) for s in bundle.servers]
        return RadSecClient(servers, context, timeout=3.0)

    def log_since(self, mark: int) -> str:
        return self.server.proc.log_text()[mark:]


@pytest.fixture(scope="module")
def rs(tmp_path_factory):
    lab = Realmlet(tmp_path_factory.mktemp("radsec"))
    with make_server(lab.dir, db=lab.db, kek=lab.kek, tls_dir=lab.tls, server_id="radius-1", radsec_port=0) as server:
        lab.server = server
        yield lab


def register(dev: DeviceClient, client: RadSecClient):
    reply = client.exchange(dev.device_id, lambda sid: dev.register_request(sid, time.time(), os.urandom(16)))
    return dev.register_reply(reply, time.time())


def authenticate(dev: DeviceClient, client: RadSecClient):
    reply = client.exchange(dev.device_id, lambda sid: dev.auth_request(sid, time.time(), os.urandom(16)))
    return dev.ticket_reply(reply, time.time())


def renew(dev: DeviceClient, client: RadSecClient):
    reply = client.exchange(dev.device_id, lambda sid: dev.renew_request(sid, time.time(), os.urandom(16)))
    return dev.ticket_reply(reply, time.time())


def test_radsec_enrolled_device_is_served_and_its_bundle_holds_no_secret(rs):
    a, ca, bundle = rs.device("edge-a")
    b, cb, _ = rs.device("edge-b")
    # the bundle made for RadSec: no RADIUS secret in any field, the servers' RadSec ports and name
    text = bundle.to_json()
    assert bundle.radius_transport == RADSEC and bundle.radius_secret == ""
    assert "radius_secret" not in text and SECRET not in text and '"radius_transport": "radsec"' in text
    again = BootstrapBundle.from_json(text)
    assert (again.radius_transport, again.radius_secret, again.device_key_pem) == (RADSEC, "", bundle.device_key_pem)
    assert [(s.server_id, s.host, s.radsec_port, s.tls_name) for s in again.servers] == \
        [("radius-1", "127.0.0.1", rs.server.cfg.radsec_port, NAME)]
    with ca, cb:
        reg = register(a, ca)
        sock = ca._conns["radius-1"].sock
        authenticate(a, ca)
        first = a.credentials
        renew(a, ca)
        assert reg.generation == 1 and a.credentials.not_after >= first.not_after and a.credentials.tgt != first.tgt
        assert ca._conns["radius-1"].sock is sock  # one connection, kept open
        # a peer session key: B asks for both, over its own connection
        register(b, cb)
        authenticate(b, cb)
        t = time.time()
        ia, rb = PeerInitiator(a, b.device_id), PeerResponder(b)
        rb.receive_hello(ia.hello(t, os.urandom(16)), t)
        reply = cb.exchange(b.device_id, lambda sid: rb.session_request(sid, t, os.urandom(16)))
        ticket = rb.receive_session_reply(reply, t)
        channel_b = rb.receive_finished(ia.receive_ticket(ticket, t), t)
        assert channel_b.open(ia.channel.seal(b"over a key from RadSec")) == b"over a key from RadSec"
    assert rs.realm.registry.get_device("edge-a").state is DeviceState.REGISTERED


def test_radsec_handshake_cuts_off_a_client_without_certificate_or_from_a_foreign_ca(rs, tmp_path):
    dev, client, bundle = rs.device("edge-h")
    nocert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts the realm CA, shows no certificate
    nocert.load_verify_locations(cadata=bundle.ca_certificate_pem.decode())
    # a certificate naming the enrolled device, from a CA the realm does not trust
    forged = LabPKI.generate(time.time(), "Foreign Maker CA").issue_device("edge-h", time.time())
    cert, key = rs.files("forged-edge-h", forged.key.pem(), pem_certificate(forged.certificate))
    foreign = tls_context(cert, key, bundle.ca_certificate_pem)
    for name, context in (("no certificate", nocert), ("foreign CA", foreign)):
        mark = len(rs.server.proc.log_text())
        with rs.client(bundle, context) as intruder:
            with pytest.raises(NoServerAnsweredError) as e:
                register(dev, intruder)
        assert "closed the new connection without answering" in e.value.reasons["radius-1"], (name, e.value)
        log = rs.log_since(mark)
        assert "(TLS) Alert write:fatal" in log, (name, log)  # refused inside the TLS handshake
        assert "tessera:" not in log, (name, log)  # no request reached the module
    assert "unable to get local issuer certificate" in log
    assert rs.realm.registry.get_device("edge-h").state is DeviceState.ENROLLED
    with client:  # the enrolled device's own certificate, same server, same message kind: served
        assert register(dev, client).generation == 1


def test_radsec_another_devices_message_is_refused_with_wrong_identity(rs):
    a, ca, _ = rs.device("edge-i")
    b, cb, _ = rs.device("edge-j")
    with ca, cb:
        register(a, ca)
        message = b.register_request("radius-1", time.time(), os.urandom(16))  # B's own, validly signed
        mark = len(rs.server.proc.log_text())
        with pytest.raises(RejectedError) as e:
            ca.exchange("edge-j", lambda sid: message)  # on A's connection (even with B's User-Name)
        assert e.value.code == WrongIdentityError.code and e.value.reason.startswith("wrong-identity: "), e.value
        assert "'edge-i''s" in e.value.reason and "'edge-j'" in e.value.reason
        assert "operation rejected for 'edge-i': wrong-identity" in rs.log_since(mark)
        assert rs.realm.registry.get_device("edge-j").state is DeviceState.ENROLLED  # nothing changed for B
        # nothing about it was remembered either (no replay-cache entry): the same bytes on B's
        # own connection are B's registration
        reply = cb.exchange("edge-j", lambda sid: message)
        assert b.register_reply(reply, time.time()).generation == 1


def test_radsec_a_certificate_must_be_the_one_enrolled_for_its_device(rs):
    dev, client, bundle = rs.device("edge-k")
    now = time.time()
    # chain-valid certificates from the realm's own CA, over keys of their own: one for the
    # enrolled device's id (not the certificate enrolled for it), one for an id never enrolled
    impostors = {}
    for name, device_id in (("twin", "edge-k"), ("ghost", "edge-ghost")):
        key = DeviceKey.generate()
        cert = rs.realm.issue_certificate(device_id, key.public_bytes(), now)
        files = rs.files(f"{name}-{device_id}", key.pem(), pem_certificate(cert))
        impostors[name] = (device_id, DeviceClient(rs.realm.bundle(device_id, rs.entries()), key),
                           tls_context(*files, bundle.ca_certificate_pem))
    for name, code in (("twin", CertificateError.code), ("ghost", UnknownDeviceError.code)):
        device_id, core, context = impostors[name]
        with rs.client(bundle, context) as intruder:
            with pytest.raises(RejectedError) as e:
                register(core, intruder)
        assert e.value.code == code, (name, e.value)
    assert rs.realm.registry.get_device("edge-k").state is DeviceState.ENROLLED
    with client:
        assert register(dev, client).generation == 1


def acts_on_it(read, rejected: RejectedError) -> None:
    """The refusal is the service's own, signed over the refused request's nonce, so the device
    may act on it (the certificate check lets a revoked device's own certificate through for
    that: an unsigned "revoked" would be ignored)."""
    with pytest.raises(RevokedError) as exc:
        read(rejected.reply, time.time())
    assert getattr(exc.value, "signed", False), exc.value


def test_radsec_revoked_device_is_refused_on_a_new_connection_and_on_its_open_one(rs):
    c, cc, _ = rs.device("edge-r")
    d, cd, dbundle = rs.device("edge-s")
    e, ce, _ = rs.device("edge-t")
    with cc, cd, ce:
        for dev, client in ((c, cc), (d, cd), (e, ce)):
            register(dev, client)
            authenticate(dev, client)
        # D revoked; its next request goes out on a new connection (a new client)
        cd.close()
        rs.realm.revoke("edge-s", time.time(), "test")
        with rs.client(dbundle) as fresh:
            with pytest.raises(RejectedError) as err:
                renew(d, fresh)
        assert err.value.code == RevokedError.code, err.value
        acts_on_it(d.ticket_reply, err.value)
        # C revoked while its connection is open: the next request on that same connection
        sock = cc._conns["radius-1"].sock
        renew(c, cc)  # served before the revocation
        rs.realm.revoke("edge-r", time.time(), "test")
        for request, read in ((renew, c.ticket_reply), (authenticate, c.ticket_reply), (register, c.register_reply)):
            with pytest.raises(RejectedError) as err:
                request(c, cc)
            assert err.value.code == RevokedError.code, (request.__name__, err.value)
            acts_on_it(read, err.value)
        assert cc._conns["radius-1"].sock is sock  # refused on the open connection, not reconnected
        # E, on its own open connection, is served throughout
        renew(e, ce)
    # F, revoked before it ever connected (its certificate never vetted): refused, signed
    f, cf, _ = rs.device("edge-u")
    rs.realm.revoke("edge-u", time.time(), "test")
    with cf:
        with pytest.raises(RejectedError) as err:
            register(f, cf)
    assert err.value.code == RevokedError.code, err.value
    acts_on_it(f.register_reply, err.value)


def test_radsec_serves_more_devices_at_once_than_freeradius_default_connection_limit(rs):
    """Every device matches the one client entry: FreeRADIUS' default per-client limit of 16
    connections would leave the 17th device out."""
    mark = len(rs.server.proc.log_text())
    devices = [rs.device(f"edge-n{i:02d}") for i in range(24)]
    try:
        for dev, client, _ in devices:
            assert register(dev, client).generation == 1
        socks = [client._conns["radius-1"].sock for _, client, _ in devices]
        for dev, client, _ in devices:  # all still connected: each answers on its own connection
            assert client.status(client.servers[0])
        assert [client._conns["radius-1"].sock for _, client, _ in devices] == socks and None not in socks
    finally:
        for _, client, _ in devices:
            client.close()
    assert "max_connections" not in rs.log_since(mark)


def test_radsec_request_without_message_authenticator_is_refused_by_the_site(rs):
    dev, client, bundle = rs.device("edge-m")
    cert, key = rs.files("raw-edge-m", bundle.device_key_pem, bundle.device_certificate_pem)
    ctx = tls_context(cert, key, bundle.ca_certificate_pem)
    raw = ctx.wrap_socket(socket.create_connection(("127.0.0.1", rs.server.cfg.radsec_port), timeout=5),
                          server_hostname=NAME)
    dictionary = load_dictionary()
    try:
        answers = []
        for with_ma in (False, True):
            req = packet.AuthPacket(code=packet.AccessRequest, secret=RADSEC_SECRET, dict=dictionary,
                                    id=10 + with_ma, authenticator=os.urandom(16))
            if with_ma:
                req.add_message_authenticator()
            req.AddAttribute("User-Name", "edge-m")
            req.AddAttribute("Tessera-Message", dev.register_request("radius-1", time.time(), os.urandom(16)))
            raw.sendall(req.RequestPacket())
            head = raw.recv(4)
            data = head + raw.recv(int.from_bytes(head[2:4], "big") - 4)
            reply = packet.Packet(packet=data, secret=RADSEC_SECRET, dict=dictionary)
            assert req.VerifyReply(reply, data, enforce_ma=True)
            answers.append((reply.code, reply.get("Reply-Message", [])))
    finally:
        raw.close()
    assert answers[0] == (packet.AccessReject, ["Message-Authenticator required"])
    assert answers[1][0] == packet.AccessAccept  # the same request with it: the registration
    assert rs.realm.registry.get_device("edge-m").generation == 1
