"""A real FreeRADIUS with the real core: a realm on SQLite, devices speaking through RADIUS.

The realm is made with ``tessera.realm`` as ``tessera-admin init`` does; FreeRADIUS opens it
with the production opener. Covers registration and TGT over RADIUS, rejects that carry the
core's ErrorMessage (not-registered, not-yet-valid, expired, clock-skew, ...), replays,
revocation taking effect at once, and EAP-TLS / EAP-PWD admission decided by the registry.
Every refusal stands beside the same setup accepting the right input.
"""

import os
import time

import pytest

from tessera.device import Credentials, DeviceClient, Registration, State
from tessera.errors import NotRegisteredError, NotYetValidError, TesseraError
from tessera.identity import DeviceKey, ServerEntry, pem_certificate
from tessera.realm import Realm, create_kek
from tessera.radius.client import RadiusClient, RejectedError
from tessera.sqlite_registry import SQLiteRegistry
from tessera.ticket import GrantingTicket, RegistrationTicket, seal_ticket

from tests.gate import needs_freeradius
from tests.server.eapol import eapol_test, pwd_network, tls_network
from tests.server.realserver import SECRET, make_server

pytestmark = needs_freeradius
REALM = "lab.example"


class Lab:
    """The realm, its server, and helpers to make devices."""

    def __init__(self, directory, pki):
        self.dir, self.pki = directory, pki
        self.db, self.kek = directory / "registry.db", directory / "kek"
        self.realm = Realm.init(SQLiteRegistry(str(self.db)), create_kek(str(self.kek)), REALM, time.time())

    def device(self, device_id: str, server) -> tuple[DeviceClient, object]:
        """Enrol a key with a realm certificate; returns the device core and its credentials."""
        now = time.time()
        key = DeviceKey.generate()
        cert = self.realm.issue_certificate(device_id, key.public_bytes(), now)
        self.realm.enrol_key(device_id, key.public_bytes(), now, cert)
        servers = [ServerEntry(server.cfg.server_id, server.address, server.port)]
        dev = DeviceClient(self.realm.bundle(device_id, servers, SECRET), key)
        from tessera.lab.pki import DeviceCredentials
        creds = self.pki.write_device_files(self.dir / "devices", DeviceCredentials(device_id, key, cert))
        return dev, creds


@pytest.fixture(scope="module")
def core(tmp_path_factory, pki):
    directory = tmp_path_factory.mktemp("core")
    lab = Lab(directory, pki)
    device_cas = b"".join(pem_certificate(c) for c in lab.realm.trusted_cas())
    tls = pki.install_server_files(directory / "tls", "radius.lab", time.time(), (device_cas,))
    with make_server(directory, db=lab.db, kek=lab.kek, tls_dir=tls, server_id="radius-1") as server:
        lab.server = server
        yield lab


def rpc(server, dev):
    client = server.client(timeout=2.0)
    return lambda build: client.exchange(dev.device_id, build)


def register_and_authenticate(core, dev):
    send = rpc(core.server, dev)
    reg = dev.register_reply(send(lambda sid: dev.register_request(sid, time.time(), os.urandom(16))), time.time())
    cred = dev.ticket_reply(send(lambda sid: dev.auth_request(sid, time.time(), os.urandom(16))), time.time())
    return reg, cred


def realm_sealed_drt(core, device_id: str, generation: int, not_before: int, not_after: int) -> Registration:
    """A DRT with a fresh LLK, sealed under the realm's service key as a server seals one."""
    llk = os.urandom(32)
    drt = seal_ticket(core.realm.keyring, RegistrationTicket(device_id, generation, not_before, not_after, llk),
                      int(time.time()), os.urandom(12))
    return Registration(llk, drt, generation, not_before, not_after)


def realm_sealed_tgt(core, device_id: str, generation: int, not_before: int, not_after: int,
                     registration_not_after: int) -> Credentials:
    """A TGT with a fresh STK, sealed under the realm's service key as a server seals one."""
    stk = os.urandom(32)
    tgt = seal_ticket(core.realm.keyring, GrantingTicket(device_id, generation, not_before, not_after,
                                                         registration_not_after, stk),
                      int(time.time()), os.urandom(12))
    return Credentials(tgt, stk, not_before, not_after)


def hold(dev: DeviceClient, registration: Registration | None = None, credentials: Credentials | None = None) -> None:
    """Make the device core hold tickets it did not get over the wire, so that the request it
    builds differs from a good one in that ticket alone (the test plays the realm)."""
    if registration is not None:
        dev.registration = registration
        dev.state = State.REGISTERED
    if credentials is not None:
        dev.credentials = credentials
        dev.state = State.AUTHENTICATED


def test_core_register_and_tgt_over_radius(core):
    dev, _ = core.device("switch-1", core.server)
    reg, cred = register_and_authenticate(core, dev)
    assert reg.not_after > time.time() and cred.not_after > time.time()


def test_core_replayed_request_is_rejected_with_error_reply(core):
    dev, _ = core.device("switch-2", core.server)
    register_and_authenticate(core, dev)
    request = dev.auth_request(core.server.cfg.server_id, time.time(), os.urandom(16))
    client = core.server.client(timeout=2.0)
    dev.ticket_reply(client.exchange(dev.device_id, lambda sid: request), time.time())
    dev.auth_request(core.server.cfg.server_id, time.time(), os.urandom(16))  # device expects a reply again
    with pytest.raises(RejectedError) as exc:
        client.exchange(dev.device_id, lambda sid: request)  # a fresh packet, the same proof
    assert exc.value.code == 15 and exc.value.reason.startswith("replay: ")
    with pytest.raises(TesseraError) as err:
        dev.ticket_reply(exc.value.reply, time.time())  # the device core reads the ErrorMessage
    assert err.value.code == 15


def test_core_request_for_another_server_is_rejected(core):
    dev, _ = core.device("switch-3", core.server)
    with pytest.raises(RejectedError) as exc:
        rpc(core.server, dev)(lambda sid: dev.register_request("radius-2", time.time(), os.urandom(16)))
    assert exc.value.code == 16 and exc.value.reason == "wrong-server: addressed to 'radius-2', this is 'radius-1'"
    # the same device, its request addressed to this server: registered
    reg = dev.register_reply(rpc(core.server, dev)(lambda sid: dev.register_request(sid, time.time(), os.urandom(16))),
                             time.time())
    assert reg.generation == 1


def test_core_revocation_stops_tickets_at_once(core):
    dev, _ = core.device("switch-4", core.server)
    register_and_authenticate(core, dev)
    core.realm.revoke("switch-4", time.time(), "test")
    with pytest.raises(RejectedError) as exc:
        rpc(core.server, dev)(lambda sid: dev.auth_request(sid, time.time(), os.urandom(16)))
    assert exc.value.code == 8


def test_core_garbage_is_malformed(core):
    client = core.server.client()
    with pytest.raises(RejectedError) as exc:  # an empty attribute does not survive FreeRADIUS
        client.exchange("nobody", lambda sid: b"")
    assert (exc.value.code, exc.value.reason) == (None, "not a Tessera request")
    for junk in (b"\x00", b"\x01" * 3, os.urandom(700)):
        with pytest.raises(RejectedError) as exc:
            client.exchange("nobody", lambda sid: junk)
        assert exc.value.code in (2, 3), exc.value  # malformed or unsupported-version
    assert client.status(core.server.server_entry())
    dev, _ = core.device("after-junk", core.server)  # and a well-formed request is served
    register_and_authenticate(core, dev)


def eap_tls(core, creds, tmp_path):
    return eapol_test(tmp_path, creds.device_id,
                      tls_network(creds.device_id, creds.cert_path, creds.key_path, creds.cert_path.parent / "ca.pem"),
                      core.server.address, core.server.nas_port, core.server.nas_secret)


def test_core_eap_tls_enrolled_then_revoked(core, tmp_path):
    dev, creds = core.device("switch-5", core.server)
    rc, out = eap_tls(core, creds, tmp_path)
    assert rc == 0, out[-2000:]
    core.realm.revoke("switch-5", time.time(), "test")
    rc, out = eap_tls(core, creds, tmp_path)
    assert rc != 0 and "EAP-Failure" in out
    assert "EAP-TLS admission rejected for 'switch-5': revoked" in core.server.proc.log_text()


def test_core_eap_tls_unenrolled_certificate_fails_until_enrolled(core, tmp_path):
    key = DeviceKey.generate()
    cert = core.realm.issue_certificate("switch-x", key.public_bytes(), time.time())  # not enrolled yet
    from tessera.lab.pki import DeviceCredentials
    creds = core.pki.write_device_files(tmp_path, DeviceCredentials("switch-x", key, cert))
    rc, out = eap_tls(core, creds, tmp_path)
    assert rc != 0 and "EAP-Failure" in out
    assert "EAP-TLS admission rejected for 'switch-x': unknown-device" in core.server.proc.log_text()
    # the same certificate, once enrolled, is admitted
    core.realm.enrol_key("switch-x", key.public_bytes(), time.time(), cert)
    rc, out = eap_tls(core, creds, tmp_path)
    assert rc == 0, out[-2000:]


def test_core_eap_pwd_after_registration(core, tmp_path):
    dev, _ = core.device("switch-6", core.server)
    log = core.server.proc.log_text
    rc, out = eapol_test(tmp_path, "pwd0", pwd_network("switch-6", "x"), core.server.address,
                         core.server.nas_port, core.server.nas_secret)
    assert rc != 0 and "CTRL-EVENT-EAP-FAILURE" in out  # not registered yet: no password
    assert "EAP-PWD admission rejected for 'switch-6': not-registered" in log()
    register_and_authenticate(core, dev)
    mark = len(log())
    rc, out = eapol_test(tmp_path, "pwd1", pwd_network("switch-6", "0" * 64), core.server.address,
                         core.server.nas_port, core.server.nas_secret)
    assert rc != 0 and "EAP-PWD (peer): confirm did not verify" in out  # registered, wrong password
    assert "EAP-PWD admission rejected" not in log()[mark:]  # the registry gave the password
    rc, out = eapol_test(tmp_path, "pwd2", pwd_network("switch-6", dev.eap_pwd_password()),
                         core.server.address, core.server.nas_port, core.server.nas_secret)
    assert rc == 0, out[-2000:]


def test_core_not_registered_device_is_refused_then_served_once_registered(core):
    """An enrolled device that never registered asks for a TGT with a DRT the realm's own key
    sealed: not-registered. Once it registers, the very same DRT (its generation now current)
    and the one it received are both served."""
    dev, _ = core.device("nreg-1", core.server)
    send = rpc(core.server, dev)
    t = int(time.time())
    held = realm_sealed_drt(core, "nreg-1", 1, t, t + 3600)  # generation 1: what a first registration gets
    hold(dev, registration=held)
    with pytest.raises(RejectedError) as exc:
        send(lambda sid: dev.auth_request(sid, time.time(), os.urandom(16)))
    assert (exc.value.code, exc.value.reason) == (9, "not-registered: device nreg-1 is not registered")
    with pytest.raises(NotRegisteredError):
        dev.ticket_reply(exc.value.reply, time.time())  # the device core reads the ErrorMessage
    assert core.realm.registry.get_device("nreg-1").state.value == "enrolled"

    reg = dev.register_reply(send(lambda sid: dev.register_request(sid, time.time(), os.urandom(16))), time.time())
    assert reg.generation == held.generation
    cred = dev.ticket_reply(send(lambda sid: dev.auth_request(sid, time.time(), os.urandom(16))), time.time())
    assert cred.not_after > time.time()
    hold(dev, registration=held)
    cred = dev.ticket_reply(send(lambda sid: dev.auth_request(sid, time.time(), os.urandom(16))), time.time())
    assert cred.not_after > time.time()


@pytest.mark.parametrize("ticket", ["registration ticket", "TGT"])
def test_core_ticket_not_yet_valid_is_refused_and_within_skew_is_served(core, ticket):
    """A ticket whose validity starts later than the server's clock plus the allowed skew is
    not-yet-valid; the same ticket starting within the skew is served. Both are sealed by the
    realm for the device's current registration, so the start is the only difference."""
    device_id = "nyv-drt" if ticket == "registration ticket" else "nyv-tgt"
    dev, _ = core.device(device_id, core.server)
    register_and_authenticate(core, dev)
    reg = dev.registration
    skew = core.realm.policy.clock_skew
    send = rpc(core.server, dev)

    def attempt(start: int) -> bytes:
        if ticket == "registration ticket":
            hold(dev, registration=realm_sealed_drt(core, device_id, reg.generation, start, reg.not_after))
            return send(lambda sid: dev.auth_request(sid, time.time(), os.urandom(16)))
        hold(dev, credentials=realm_sealed_tgt(core, device_id, reg.generation, start, start + 3600, reg.not_after))
        return send(lambda sid: dev.renew_request(sid, time.time(), os.urandom(16)))

    with pytest.raises(RejectedError) as exc:
        attempt(int(time.time()) + skew + 120)
    assert exc.value.code == 12 and exc.value.reason.startswith(f"not-yet-valid: {ticket} valid from "), exc.value
    with pytest.raises(NotYetValidError):
        dev.ticket_reply(exc.value.reply, time.time())
    cred = dev.ticket_reply(attempt(int(time.time()) + skew - 120), time.time())
    assert cred.not_after > time.time()


def test_core_whole_flow_two_devices_session_key_and_records(core):
    """Enrol two devices, register both, TGTs, a session key for the pair over RADIUS; both
    open it, prove it to each other and exchange protected records both ways."""
    from tessera.peer import PeerInitiator, PeerResponder

    a, _ = core.device("flow-a", core.server)
    b, _ = core.device("flow-b", core.server)
    register_and_authenticate(core, a)
    register_and_authenticate(core, b)
    now = time.time()
    ia, rb = PeerInitiator(a, "flow-b"), PeerResponder(b)
    rb.receive_hello(ia.hello(now, os.urandom(16)), now)
    reply = rpc(core.server, b)(lambda sid: rb.session_request(sid, time.time(), os.urandom(16)))
    fin = ia.receive_ticket(rb.receive_session_reply(reply, now), now)
    ba = rb.receive_finished(fin, now)
    ab = ia.channel
    assert ab.session_id == ba.session_id
    assert ba.open(ab.seal(b"a to b")) == b"a to b" and ab.open(ba.seal(b"b to a")) == b"b to a"
    assert [r.state.value for r in (core.realm.registry.get_device("flow-a"), core.realm.registry.get_device("flow-b"))] \
        == ["registered", "registered"]


def test_core_tampered_expired_and_skewed_requests_get_their_reason(core):
    """Each bad request gets its own Tessera-Error and Reply-Message; the server keeps serving."""
    from tessera import kdf, message as m
    from tessera.ticket import GrantingTicket, seal_ticket

    dev, _ = core.device("bad-1", core.server)
    register_and_authenticate(core, dev)
    send = rpc(core.server, dev)
    sid = core.server.cfg.server_id

    def code_of(request: bytes) -> tuple[int, str]:
        with pytest.raises(RejectedError) as exc:
            send(lambda _sid: request)
        return exc.value.code, exc.value.reason

    # a tampered ticket: one bit of the sealed DRT flipped (the MAC is then recomputed with the
    # right LLK, so only the ticket's own tag can notice)
    req = m.decode(dev.auth_request(sid, time.time(), os.urandom(16)))
    dev.abandon()
    drt = bytearray(req.drt)
    drt[20] ^= 1
    req.drt, req.__dict__["_raw"] = bytes(drt), None
    req.mac = kdf.mac(kdf.derive(dev.registration.llk, kdf.AUTH_PROOF), req.body())
    assert code_of(req.encode())[0] == 4  # invalid-ticket
    # an expired TGT, sealed by the realm itself an hour ago
    t = int(time.time())
    old = GrantingTicket("bad-1", 1, t - 7200, t - 3600, t + 86400, os.urandom(32))
    renew = m.RenewRequest(REALM, "bad-1", sid, t, os.urandom(16), seal_ticket(core.realm.keyring, old, t, os.urandom(12)))
    renew.mac = kdf.mac(kdf.derive(old.stk, kdf.RENEW_PROOF), renew.body())
    code, reason = code_of(renew.encode())
    assert code == 11 and reason.startswith("expired: ")
    # a device whose clock is an hour fast: clock-skew, and the error reply carries server time
    with pytest.raises(RejectedError) as exc:
        send(lambda s: dev.auth_request(s, time.time() + 3600, os.urandom(16)))
    assert exc.value.code == 13
    with pytest.raises(TesseraError) as err:
        dev.ticket_reply(exc.value.reply, time.time())
    assert abs(err.value.server_time - time.time()) < 5
    # an unknown device and a wrong realm
    stranger = DeviceClient(core.realm.bundle("nobody-9", [], SECRET), DeviceKey.generate())
    assert code_of(stranger.register_request(sid, time.time(), os.urandom(16)))[0] == 7
    other = m.RegisterRequest("other.example", "bad-1", sid, int(time.time()), os.urandom(16), b"\0" * 64)
    assert code_of(other.encode())[0] == 6
    # and the server still serves
    register_and_authenticate(core, dev)


def test_core_rotation_by_the_operator_reaches_the_running_server(core):
    """tessera-admin rotate (another connection) → the running module picks up the new key
    version (it looks at most once a second; we wait for it, up to 15 s); tickets sealed under
    the old version keep working."""
    from tessera.realm import open_realm
    from tessera.ticket import ticket_kvno

    dev, _ = core.device("rot-1", core.server)
    reg, cred = register_and_authenticate(core, dev)
    before = ticket_kvno(cred.tgt)
    admin = open_realm(str(core.db), str(core.kek))  # as tessera-admin does: its own connection
    new = admin.rotate(time.time())
    assert new.kvno == before + 1
    deadline = time.monotonic() + 15
    while True:  # each TGT is served with the old DRT; wait until one is sealed under the new version
        cred = dev.ticket_reply(rpc(core.server, dev)(lambda sid: dev.auth_request(sid, time.time(), os.urandom(16))),
                                time.time())
        if ticket_kvno(cred.tgt) == new.kvno:
            break
        assert ticket_kvno(cred.tgt) == before, ticket_kvno(cred.tgt)
        assert time.monotonic() < deadline, "the running server did not pick up the rotation within 15 s"
        time.sleep(0.1)
    assert ticket_kvno(dev.registration.drt) == before
    assert "service keys reloaded" in core.server.proc.log_text()
