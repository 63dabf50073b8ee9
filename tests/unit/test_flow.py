"""The whole flow in memory: a service and three devices, through every lifecycle step, with the
rejections the design requires (each with its specific reason)."""

import pytest

from tessera import errors as E
from tessera.device import State
from tessera.peer import PeerInitiator, PeerResponder
from tessera.ticket import ticket_kvno
from tests.unit.conftest import T0, admit, make_device, peer

H = 3600


@pytest.fixture
def three(realm, service, rand):
    devs = [make_device(realm, "SN-A", "key"), make_device(realm, "SN-B", "certificate"),
            make_device(realm, "SN-C", "bundle")]
    for d in devs:
        admit(service, d, rand)
    return devs


def test_flow_three_devices_sessions_and_traffic_both_ways(realm, service, rand, three):
    a, b, c = three
    assert [d.state for d in three] == [State.AUTHENTICATED] * 3
    assert [r.state.value for r in realm.registry.list_devices()] == ["registered"] * 3
    ab, ba = peer(service, a, b, rand)
    bc, cb = peer(service, b, c, rand)
    for x, y in ((ab, ba), (bc, cb)):
        for i in range(100):
            assert y.open(x.seal(b"to %d" % i)) == b"to %d" % i
            assert x.open(y.seal(b"back %d" % i)) == b"back %d" % i
    assert ab.session_id == ba.session_id != bc.session_id
    assert ab.not_after <= min(a.credentials.not_after, b.credentials.not_after)
    # a frame of one session does not open in the other
    with pytest.raises(E.StateError):
        cb.open(ab.seal(b"x"))


def test_flow_renewal_rotation_midlife_revocation_expiry(realm, service, rand, three):
    a, b, c = three
    # renewal before the TGT ends, with the STK (the LLK is not needed)
    t = T0 + 7 * H
    old = a.credentials
    a.ticket_reply(service.handle(a.renew_request("radius-a", t, rand(16)), t), t)
    assert a.credentials.stk != old.stk and a.credentials.not_after == t + 8 * H
    # rotation mid-life: tickets sealed under kvno 1 keep working everywhere
    assert realm.rotate(t).kvno == 2
    assert ticket_kvno(b.credentials.tgt) == 1
    ab, ba = peer(service, a, b, rand, t)  # b's TGT is kvno 1, a's renewal was kvno 1 too
    assert ba.open(ab.seal(b"after rotation")) == b"after rotation"
    a.ticket_reply(service.handle(a.auth_request("radius-a", t, rand(16)), t), t)  # DRT kvno 1 → TGT kvno 2
    assert ticket_kvno(a.registration.drt) == 1 and ticket_kvno(a.credentials.tgt) == 2
    peer(service, a, b, rand, t)
    # a second server of the realm (a fresh process) opens both versions
    other = realm.service("radius-b")
    b.ticket_reply(other.handle(b.auth_request("radius-b", t, rand(16)), t), t)
    # revocation: no new tickets at once, no new sessions with the revoked device (accepted a
    # moment before: the refusals below are the revocation's doing)
    c.ticket_reply(service.handle(c.auth_request("radius-a", t, rand(16)), t), t)
    peer(service, b, c, rand, t)
    realm.revoke("SN-C", t)
    with pytest.raises(E.RevokedError):
        service.handle(c.auth_request("radius-a", t, rand(16)), t)
    with pytest.raises(E.RevokedError):
        peer(service, b, c, rand, t)
    with pytest.raises(E.RevokedError):
        service.handle(c.register_request("radius-a", t, rand(16)), t)
    # expiry: B's TGT from T(t) is long gone 9 h later; the service refuses it too (and renewed it
    # while it was valid)
    b.ticket_reply(service.handle(b.renew_request("radius-a", t, rand(16)), t), t)
    assert b.credentials.not_after == t + 8 * H
    t2 = t + 8 * H + realm.policy.clock_skew
    with pytest.raises(E.ExpiredError):
        PeerInitiator(b, "SN-A").hello(t2, rand(16))
    with pytest.raises(E.ExpiredError):
        service.handle(b.renew_request("radius-a", t2, rand(16)), t2)


def test_registration_expiry_and_reregistration_supersedes(realm, service, rand, three):
    a = three[0]
    inside = T0 + 30 * 86400 - 1  # the DRT's last second: accepted
    a.ticket_reply(service.handle(a.auth_request("radius-a", inside, rand(16)), inside), inside)
    t = T0 + 30 * 86400 + realm.policy.clock_skew  # past its end and the skew: expired
    with pytest.raises(E.ExpiredError):
        service.handle(a.auth_request("radius-a", t, rand(16)), t)
    a.register_reply(service.handle(a.register_request("radius-a", t, rand(16)), t), t)
    assert a.registration.generation == 2
    old_drt_req = a.auth_request("radius-a", t, rand(16))
    a.ticket_reply(service.handle(old_drt_req, t), t)
    # the generation-1 TGT of SN-B still works; a generation-1 ticket of SN-A does not
    stale = make_device(realm, "SN-D")
    admit(service, stale, rand, t)
    first = stale.registration
    stale.register_reply(service.handle(stale.register_request("radius-a", t, rand(16)), t), t)
    current = stale.registration
    stale.registration = first
    with pytest.raises(E.SupersededError):
        service.handle(stale.auth_request("radius-a", t, rand(16)), t)
    stale.registration = current  # control: the same device with its current DRT is accepted
    stale.ticket_reply(service.handle(stale.auth_request("radius-a", t, rand(16)), t), t)


def test_replays_are_rejected_also_at_another_server(realm, service, rand, three):
    a, b, _ = three
    req = a.auth_request("radius-a", T0, rand(16))
    service.handle(req, T0)
    with pytest.raises(E.ReplayError):
        service.handle(req, T0 + 1)
    other = realm.service("radius-b")
    with pytest.raises(E.WrongServerError):
        other.handle(req, T0 + 1)
    other.handle(a.auth_request("radius-b", T0 + 1, rand(16)), T0 + 1)  # control: one addressed to it passes
    # a replayed session request and a replayed hello
    ia, rb = PeerInitiator(a, "SN-B"), PeerResponder(b)
    hello = ia.hello(T0, rand(16))
    rb.receive_hello(hello, T0)
    sreq = rb.session_request("radius-a", T0, rand(16))
    service.handle(sreq, T0)
    with pytest.raises(E.ReplayError):
        service.handle(sreq, T0)
    with pytest.raises(E.ReplayError):  # same hello, fresh request from B
        service.handle(rb.session_request("radius-a", T0, rand(16)), T0)


def test_authenticator_names_the_peer(realm, service, rand, three):
    """B cannot take A's hello (which names B) to get a key for A with C, nor can C use it."""
    a, b, c = three
    hello = PeerInitiator(a, "SN-B").hello(T0, rand(16))
    rc = PeerResponder(c)
    with pytest.raises(E.WrongPeerError):
        rc.receive_hello(hello, T0)
    rc._hello_bytes, rc.state = hello, rc.state.AWAITING_SERVICE  # a malicious C skips its own checks
    with pytest.raises(E.WrongPeerError):
        service.handle(rc.session_request("radius-a", T0, rand(16)), T0)
    rb = PeerResponder(b)  # control: the peer the hello names gets the key with the same hello
    rb.receive_hello(hello, T0)
    assert rb.receive_session_reply(service.handle(rb.session_request("radius-a", T0, rand(16)), T0), T0)


def test_clock_skew_reports_server_time(realm, service, rand, three):
    a = three[0]
    service.handle(a.auth_request("radius-a", T0 + 300, rand(16)), T0)  # control: at the skew's edge
    with pytest.raises(E.ClockSkewError):
        service.handle(a.auth_request("radius-a", T0 + 301, rand(16)), T0)
    with pytest.raises(E.ClockSkewError) as exc:
        service.handle(a.auth_request("radius-a", T0 + 3600, rand(16)), T0)
    assert exc.value.server_time == T0
    reply = service.error_reply(exc.value, T0)
    a.state = State.AUTHENTICATING
    with pytest.raises(E.ClockSkewError) as got:
        a.ticket_reply(reply, T0)
    assert got.value.server_time == T0 and a.state is State.AUTHENTICATED


def test_unknown_device_wrong_realm_and_bad_signature(realm, service, rand):
    from tessera.device import DeviceClient
    from tessera.identity import BootstrapBundle, DeviceKey

    ghost = DeviceClient(BootstrapBundle("example.net", "SN-GHOST", realm.service_public_key, []), DeviceKey.generate())
    with pytest.raises(E.UnknownDeviceError):
        service.handle(ghost.register_request("radius-a", T0, rand(16)), T0)
    other = DeviceClient(BootstrapBundle("other.example", "SN-GHOST", realm.service_public_key, []), DeviceKey.generate())
    with pytest.raises(E.WrongRealmError):
        service.handle(other.register_request("radius-a", T0, rand(16)), T0)
    real = make_device(realm, "SN-REAL")
    impostor = DeviceClient(BootstrapBundle("example.net", "SN-REAL", realm.service_public_key, []), DeviceKey.generate())
    with pytest.raises(E.BadProofError):
        service.handle(impostor.register_request("radius-a", T0, rand(16)), T0)
    assert realm.registry.audit("SN-REAL")[-1].event == "register-rejected"
    # control: the enrolled device of this realm, with its own key, registers at the same service
    service.handle(real.register_request("radius-a", T0, rand(16)), T0)
    assert realm.registry.audit("SN-REAL")[-1].event == "registered"


def test_device_rejects_reply_not_signed_by_its_service(realm, service, rand):
    from tessera.identity import DeviceKey

    import copy

    dev = make_device(realm, "SN-E")
    reply = service.handle(dev.register_request("radius-a", T0, rand(16)), T0)
    right = copy.copy(dev)  # the same device, same outstanding request, trusting the realm's key
    dev.service_key = DeviceKey.generate().public_key  # the device trusts another service key
    with pytest.raises(E.BadProofError):
        dev.register_reply(reply, T0)
    assert dev.registration is None and dev.state is State.ENROLLED
    assert right.register_reply(reply, T0).generation == 1 and right.state is State.REGISTERED


def test_unknown_key_version_after_prune(realm, service, rand, three):
    a = three[0]
    realm.rotate(T0)
    t = T0 + realm.policy.longest_lifetime + 1
    realm.rotate(t)  # prunes kvno 1
    with pytest.raises(E.UnknownKeyVersionError):
        service.handle(a.auth_request("radius-a", t, rand(16)), t)
    # control: registered again (DRT under kvno 3) it is accepted at the same moment
    admit(service, a, rand, t)
    assert ticket_kvno(a.registration.drt) == 3 == ticket_kvno(a.credentials.tgt)


def test_device_state_survives_export_and_import(realm, service, rand, three):
    from tessera.device import DeviceClient

    a = three[0]
    blob = a.export_state(rand(12))
    assert a.registration.llk not in blob and a.credentials.stk not in blob
    again = DeviceClient(realm.bundle("SN-A", [], ""), a.key)
    again.import_state(blob)
    assert again.state is State.AUTHENTICATED and again.credentials.stk == a.credentials.stk
    tampered = bytearray(blob)
    tampered[20] ^= 1
    for bad in (bytes(tampered), blob[:-1], b""):
        fresh = DeviceClient(realm.bundle("SN-A", [], ""), a.key)
        with pytest.raises(E.InvalidTicket):
            fresh.import_state(bad)
        assert fresh.state is State.ENROLLED and fresh.registration is None  # nothing half-imported


def test_eap_hooks(realm, service, rand, three):
    a, b, c = three
    assert service.eap_pwd_password("SN-A", T0) == a.eap_pwd_password()
    rec = realm.registry.get_device("SN-B")
    assert service.admit_certificate(rec.cert_serial, rec.cert_issuer, "SN-B", T0) == "SN-B"
    with pytest.raises(E.CertificateError):
        service.admit_certificate(rec.cert_serial, rec.cert_issuer, "SN-C", T0)
    with pytest.raises(E.UnknownDeviceError):
        service.admit_certificate("abcd", rec.cert_issuer, "SN-NOBODY", T0)
    realm.revoke("SN-B", T0)
    with pytest.raises(E.RevokedError):
        service.admit_certificate(rec.cert_serial, rec.cert_issuer, "SN-B", T0)
    realm.revoke("SN-A", T0)
    with pytest.raises(E.RevokedError):
        service.eap_pwd_password("SN-A", T0)


def test_trust_ca_refuses_what_is_not_a_ca(realm):
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    from tessera.identity import DeviceKey, pem_certificate

    key = DeviceKey.generate().private_key
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "no extensions")])
    start = dt.datetime.fromtimestamp(T0, dt.timezone.utc)
    bare = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    with pytest.raises(E.CertificateError):
        realm.trust_ca(pem_certificate(bare), T0)
    leaf = realm.ca.issue_device_certificate("SN-LEAF", key.public_key(), T0)
    with pytest.raises(E.CertificateError):
        realm.trust_ca(pem_certificate(leaf), T0)
    assert realm.trusted_cas() == [realm.ca.certificate]  # refused ones left no trace
    # control: a CA certificate is trusted, and a device certificate it issued then enrols
    from tessera.identity import CertificateAuthority

    maker = CertificateAuthority.generate("Maker CA", T0)
    realm.trust_ca(pem_certificate(maker.certificate), T0)
    assert realm.trusted_cas() == [realm.ca.certificate, maker.certificate]
    dev_cert = maker.issue_device_certificate("SN-MAKER", key.public_key(), T0)
    assert realm.enrol_certificate(pem_certificate(dev_cert), T0).enrolled_by == "certificate"


def test_not_yet_valid_ticket_from_a_server_whose_clock_runs_ahead(realm, rand):
    """radius-a's clock is an hour ahead: the DRT it issues starts an hour from now for radius-b,
    which refuses it as not-yet-valid (beyond the 300 s skew) until its own clock gets there."""
    ahead, behind = realm.service("radius-a"), realm.service("radius-b")
    dev = make_device(realm, "SN-F")
    dev.register_reply(ahead.handle(dev.register_request("radius-a", T0 + H, rand(16)), T0 + H), T0 + H)
    assert dev.registration.not_before == T0 + H
    with pytest.raises(E.NotYetValidError) as exc:
        behind.handle(dev.auth_request("radius-b", T0, rand(16)), T0)
    assert exc.value.name == "not-yet-valid" and "registration ticket valid from" in str(exc.value)
    # the device reads the service's error reply as the same named error
    with pytest.raises(E.NotYetValidError):
        dev.ticket_reply(behind.error_reply(exc.value, T0), T0)
    # within the skew of its start the same DRT is accepted by the same server, not before
    with pytest.raises(E.NotYetValidError):
        behind.handle(dev.auth_request("radius-b", T0 + H - 301, rand(16)), T0 + H - 301)
    dev.ticket_reply(behind.handle(dev.auth_request("radius-b", T0 + H - 300, rand(16)), T0 + H - 300), T0 + H - 300)
    assert dev.state is State.AUTHENTICATED
    # a TGT issued ahead is not-yet-valid for a renewal and a peer session at the server behind
    dev.ticket_reply(ahead.handle(dev.auth_request("radius-a", T0 + 2 * H, rand(16)), T0 + 2 * H), T0 + 2 * H)
    with pytest.raises(E.NotYetValidError):
        behind.handle(dev.renew_request("radius-b", T0 + H, rand(16)), T0 + H)
    other = make_device(realm, "SN-G")
    admit(behind, other, rand, T0 + H)
    ia, rb = PeerInitiator(dev, "SN-G"), PeerResponder(other)
    rb.receive_hello(ia.hello(T0 + H, rand(16)), T0 + H)
    with pytest.raises(E.NotYetValidError):
        behind.handle(rb.session_request("radius-b", T0 + H, rand(16)), T0 + H)
    # control: at the TGT's start both are accepted
    t = T0 + 2 * H
    ia, rb = PeerInitiator(dev, "SN-G"), PeerResponder(other)
    rb.receive_hello(ia.hello(t, rand(16)), t)
    assert rb.receive_session_reply(behind.handle(rb.session_request("radius-b", t, rand(16)), t), t)
    dev.ticket_reply(behind.handle(dev.renew_request("radius-b", t, rand(16)), t), t)


def test_not_registered_after_the_registry_is_restored_from_an_older_backup(tmp_path, rand):
    """A DRT is authentic but the registry (restored from a backup taken before the device
    registered) does not hold the device as registered: not-registered, for TGTs, renewals,
    sessions and EAP-PWD; a new registration is accepted and everything works again."""
    import os
    import sqlite3

    from tessera.realm import Realm
    from tessera.sqlite_registry import SQLiteRegistry

    db = tmp_path / "registry.db"
    realm = Realm.init(SQLiteRegistry(str(db)), os.urandom(32), "example.net", T0, random=rand)
    service = realm.service("radius-a")
    a, b = make_device(realm, "SN-A"), make_device(realm, "SN-B")
    with pytest.raises(E.NotRegisteredError):  # enrolled, never registered: no EAP-PWD password
        service.eap_pwd_password("SN-A", T0)
    with sqlite3.connect(db) as src, sqlite3.connect(tmp_path / "backup.db") as dst:
        src.backup(dst)
    admit(service, a, rand)
    admit(service, b, rand)
    # controls: everything is accepted before the restore
    assert service.eap_pwd_password("SN-A", T0) == a.eap_pwd_password()
    peer(service, a, b, rand, T0 + 10)
    with sqlite3.connect(tmp_path / "backup.db") as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    t = T0 + 20
    assert realm.registry.get_device("SN-A").state.value == "enrolled"
    with pytest.raises(E.NotRegisteredError) as exc:
        service.handle(a.auth_request("radius-a", t, rand(16)), t)
    assert exc.value.name == "not-registered"
    with pytest.raises(E.NotRegisteredError):
        a.ticket_reply(service.error_reply(exc.value, t), t)  # the device reads the named error
    with pytest.raises(E.NotRegisteredError):
        service.handle(a.renew_request("radius-a", t, rand(16)), t)
    with pytest.raises(E.NotRegisteredError):
        peer(service, a, b, rand, t)
    with pytest.raises(E.NotRegisteredError):
        service.eap_pwd_password("SN-A", t)
    # registering again puts it right
    admit(service, a, rand, t)
    admit(service, b, rand, t)
    ab, ba = peer(service, a, b, rand, t)
    assert ba.open(ab.seal(b"registered again")) == b"registered again"
    assert service.eap_pwd_password("SN-A", t) == a.eap_pwd_password()
