"""Where a device sits, as the realm records it, is what a switch relayed and EAP proved.

A real FreeRADIUS with the real core (a realm on SQLite). ``tessera-admin revoke`` sends its
Disconnect-Request to the NAS and port the registry holds for the device, so that location must
come only from an 802.1X admission a switch (NAS client, NAS secret, ``tessera-nas`` site)
relayed, and be filed under the identity EAP authenticated:

* a device holds the device secret only: its own ``eapol_test`` run, with NAS-Identifier,
  NAS-Port-Id and Calling-Station-Id of its choosing, is refused on the device listener (no EAP
  there) and dropped on the NAS listener (wrong secret); the registry is unchanged. The same
  forged attributes from the NAS client are recorded: the setup does record what a NAS says;
* EAP-TLS files the location under the certificate's device, not the outer identity, nor a
  Tessera-Device-Id the client put in the request;
* EAP-PWD with peer id A and outer identity B (what the switch puts in User-Name) fails
  (``prep = -1`` binds them), and neither A's nor B's row changes; A as itself is recorded;
* a device revoked while its EAP-PWD exchange is under way (the server's realm here,
  ``revoking_realm``, revokes ``revoke-*`` devices the moment it hands out their password) gets
  Access-Reject with EAP-Failure and no keys, and its location stays where revocation found it.
"""

import time
from pathlib import Path

import pytest

from tessera.identity import DeviceKey, ServerEntry, pem_certificate
from tessera.lab.pki import DeviceCredentials
from tessera.realm import Realm, create_kek
from tessera.device import DeviceClient
from tessera.sqlite_registry import SQLiteRegistry

from tests.gate import needs_freeradius
from tests.server.eapol import eapol_test, pwd_began, pwd_network, tls_network
from tests.server.realserver import SECRET, make_server

pytestmark = needs_freeradius
REALM = "lab.example"
HERE = Path(__file__).resolve().parent


class Site:
    """The realm, its server, and its devices (enrolled with certificates, registered)."""

    def __init__(self, directory, pki):
        self.dir, self.pki = directory, pki
        self.db, self.kek = directory / "registry.db", directory / "kek"
        self.realm = Realm.init(SQLiteRegistry(str(self.db)), create_kek(str(self.kek)), REALM, time.time())
        self.server = None

    def device(self, device_id: str):
        """Enrol ``device_id`` with a realm certificate and register it over RADIUS (the device
        listener, device secret); returns (device core, credentials with files)."""
        now = time.time()
        key = DeviceKey.generate()
        cert = self.realm.issue_certificate(device_id, key.public_bytes(), now)
        self.realm.enrol_key(device_id, key.public_bytes(), now, cert)
        servers = [ServerEntry(self.server.cfg.server_id, self.server.address, self.server.port)]
        dev = DeviceClient(self.realm.bundle(device_id, servers, SECRET), key)
        client = self.server.client(timeout=2.0)
        reply = client.exchange(device_id, lambda sid: dev.register_request(sid, time.time(), b"n" * 16))
        dev.register_reply(reply, time.time())
        creds = self.pki.write_device_files(self.dir / "devices", DeviceCredentials(device_id, key, cert))
        return dev, creds

    def location(self, device_id: str):
        rec = self.realm.registry.get_device(device_id)
        return rec.nas_identifier, rec.nas_port_id, rec.calling_station

    def log(self) -> str:
        return self.server.proc.log_text()


@pytest.fixture(scope="module")
def site(tmp_path_factory, pki):
    directory = tmp_path_factory.mktemp("location")
    s = Site(directory, pki)
    device_cas = b"".join(pem_certificate(c) for c in s.realm.trusted_cas())
    tls = pki.install_server_files(directory / "tls", "radius.lab", time.time(), (device_cas,))
    with make_server(directory, db=s.db, kek=s.kek, tls_dir=tls, server_id="radius-1",
                     realm_opener="revoking_realm:open_realm", python_path=(HERE,)) as server:
        s.server = server
        yield s


def where(nas: str, port: str, mac: str) -> tuple[str, ...]:
    """eapol_test options: the NAS-Identifier, NAS-Port-Id and station MAC a sender claims."""
    return (f"-N32:s:{nas}", f"-N87:s:{port}", f"-M{mac}")


def tls(site, tmp_path, creds, outer_identity, port, secret, claims, name="tls"):
    ca = creds.cert_path.parent / "ca.pem"
    return eapol_test(tmp_path, name, tls_network(outer_identity, creds.cert_path, creds.key_path, ca),
                      site.server.address, port, secret, timeout=5, extra=claims)


def test_location_a_device_cannot_move_its_location_with_its_own_eapol_test(site, tmp_path):
    _, creds = site.device("loc-a")
    server = site.server
    # the switch admits it on its real port: recorded
    rc, out = tls(site, tmp_path, creds, "loc-a", server.nas_port, server.nas_secret,
                  where("switch-1", "p1", "02:00:5e:10:00:01"))
    assert rc == 0 and "SUCCESS" in out, out[-3000:]
    assert site.location("loc-a") == ("switch-1", "p1", "02-00-5E-10-00-01")

    # the device, about to be revoked, claims another switch's port with what it holds: the
    # device secret. On the device listener EAP is refused; on the NAS listener, dropped.
    forged = where("switch-9", "p9", "02:00:5e:10:00:09")
    mark = len(site.log())
    rc, out = tls(site, tmp_path, creds, "loc-a", server.port, server.secret, forged)
    assert rc != 0 and "Access-Reject" in out and "SUCCESS" not in out, out[-3000:]
    assert "EAP is not answered on the device listener" in out, out[-3000:]
    rc, out = tls(site, tmp_path, creds, "loc-a", server.nas_port, server.secret, forged)
    assert rc != 0 and "SUCCESS" not in out and "Access-Accept" not in out, out[-3000:]
    assert "Received RADIUS message" not in out, out[-3000:]  # not one answer came back
    assert site.location("loc-a") == ("switch-1", "p1", "02-00-5E-10-00-01")
    assert "loc-a' admitted on" not in site.log()[mark:]

    # the same claims relayed by the NAS client are what the realm records (a switch's word)
    rc, out = tls(site, tmp_path, creds, "loc-a", server.nas_port, server.nas_secret, forged)
    assert rc == 0 and "SUCCESS" in out, out[-3000:]
    assert site.location("loc-a") == ("switch-9", "p9", "02-00-5E-10-00-09")


def tessera_device_id(device_id: str) -> str:
    """eapol_test option adding Tessera-Device-Id (vendor 32473, type 4) as a Vendor-Specific
    attribute (RFC 2865 5.26): what a client could send to name the admitted device itself."""
    value = device_id.encode()
    vsa = (32473).to_bytes(4, "big") + bytes([4, 2 + len(value)]) + value
    return f"-N26:x:{vsa.hex()}"


def test_location_eap_tls_is_filed_under_the_certificate_not_the_outer_identity(site, tmp_path):
    _, creds_c = site.device("loc-c")
    site.device("loc-d")
    before_d = site.location("loc-d")
    # loc-c's certificate with EAP-Identity (and so User-Name) "loc-d", or "anonymous": refused
    # -- the switch would file the session under a name a Disconnect-Request for loc-c misses
    for outer in ("loc-d", "anonymous"):
        rc, out = tls(site, tmp_path, creds_c, outer, site.server.nas_port, site.server.nas_secret,
                      (*where("switch-2", "p4", "02:00:5e:10:00:04"), tessera_device_id("loc-d")), name=f"tls-{outer}")
        assert rc != 0 and "FAILURE" in out, out[-3000:]
        assert site.location("loc-c") == (None, None, None)
    # its own id outside, and a forged Tessera-Device-Id "loc-d" in every request: filed under
    # loc-c, the certificate's device, and the Access-Accept names loc-c for the switch
    rc, out = tls(site, tmp_path, creds_c, "loc-c", site.server.nas_port, site.server.nas_secret,
                  (*where("switch-2", "p4", "02:00:5e:10:00:04"), tessera_device_id("loc-d")))
    assert rc == 0 and "SUCCESS" in out, out[-3000:]
    accept = out[out.index("code=2 (Access-Accept)"):]
    assert "Attribute 1 (User-Name) length=7\n      Value: 'loc-c'" in accept, accept[:2000]
    assert site.location("loc-c") == ("switch-2", "p4", "02-00-5E-10-00-04")
    assert site.location("loc-d") == before_d == (None, None, None)


def test_location_eap_pwd_peer_a_outer_b_cannot_write_b(site, tmp_path):
    dev_a, _ = site.device("loc-pa")
    site.device("loc-pb")
    server = site.server
    claims = where("switch-3", "p5", "02:00:5e:10:00:05")
    # A proves its own password as peer id, its EAP-Identity says B: refused, nothing recorded
    mark = len(site.log())
    rc, out = eapol_test(tmp_path, "pwd-ab", pwd_network("loc-pa", dev_a.eap_pwd_password(), outer_identity="loc-pb"),
                         server.address, server.nas_port, server.nas_secret, timeout=5, extra=claims)
    assert rc != 0 and "SUCCESS" not in out and "CTRL-EVENT-EAP-FAILURE" in out, out[-3000:]
    assert site.location("loc-pb") == (None, None, None)
    assert site.location("loc-pa") == (None, None, None)
    assert "admitted on" not in site.log()[mark:]
    # A as itself, same password, same switch: admitted, recorded under A
    rc, out = eapol_test(tmp_path, "pwd-aa", pwd_network("loc-pa", dev_a.eap_pwd_password()),
                         server.address, server.nas_port, server.nas_secret, timeout=5, extra=claims)
    assert rc == 0 and "SUCCESS" in out, out[-3000:]
    assert site.location("loc-pa") == ("switch-3", "p5", "02-00-5E-10-00-05")
    assert site.location("loc-pb") == (None, None, None)


def test_location_device_revoked_during_its_eap_pwd_exchange_stays_out(site, tmp_path):
    """EAP-PWD takes the password at the exchange's first round; the server's realm here
    (revoking_realm) revokes a ``revoke-*`` device right then, as an operator's revoke landing
    mid-exchange would. The exchange completes, but the switch gets Access-Reject, so the port
    stays closed, and the location stays where the revocation found it. (FreeRADIUS 3.2's
    EAP-PWD fails about one session in 150 before it begins, after taking the password -- see
    tests/server/eapol.py: such a try revoked its device for nothing, so the next uses another.)"""
    server = site.server
    for n in range(1, 4):
        device = f"revoke-pwd{n}"
        dev, creds = site.device(device)
        rc, out = tls(site, tmp_path, creds, device, server.nas_port, server.nas_secret,
                      where("switch-1", "p1", "02:00:5e:10:00:11"))
        assert rc == 0 and "SUCCESS" in out, out[-3000:]  # EAP-TLS: not revoked meanwhile
        assert site.location(device) == ("switch-1", "p1", "02-00-5E-10-00-11")
        mark = len(site.log())
        rc, out = eapol_test(tmp_path, "pwd-revoked", pwd_network(device, dev.eap_pwd_password()),
                             server.address, server.nas_port, server.nas_secret, timeout=5,
                             extra=where("switch-4", "p6", "02:00:5e:10:00:16"), attempts=1)
        if pwd_began(out):
            break
    assert rc != 0 and "Access-Reject" in out and "Access-Accept" not in out, out[-3000:]
    reject = out[out.index("code=3 (Access-Reject)"):]
    assert "EAP-Failure" in reject and "EAP-Success" not in reject, reject[:3000]
    assert "Vendor-Specific" not in reject, reject[:3000]  # no MS-MPPE keys go with a reject
    assert f"admission refused after all: revoked: device {device} was revoked during its admission" \
        in site.log()[mark:], site.log()[mark:]
    assert site.location(device) == ("switch-1", "p1", "02-00-5E-10-00-11")
