"""Switches (NASes) and devices are different RADIUS clients of different virtual servers.

On a real FreeRADIUS built from the repository's configs: the NAS listener (``tessera-nas``,
NAS secret) answers only EAP, the device listener (``tessera``, device secret) only Tessera
messages. Each refusal stands beside the right use in the same setup:

* a device client sending EAP is refused; the NAS client's identical ``eapol_test`` is admitted;
* a NAS client sending a Tessera-Message is refused; the device client's is answered;
* each secret works only on its own listener (the other drops the request unanswered);
* class membership is by source address, per listener: an address listed only as a device
  client is unknown to the NAS listener, whatever secret it uses;
* a client of the global list (Debian's stock ``localhost``, secret ``testing123``) reaches
  neither listener;
* every answer, Access-Challenge included, carries a valid Message-Authenticator.
"""

from pathlib import Path

import pytest
from pyrad import packet

from tessera.lab import radiusd
from tessera.radius.client import NoServerAnsweredError, RadiusClient, RejectedError, Server

from tests.gate import needs_freeradius, require
from tests.server import rawradius
from tests.server.eapol import eapol_test, tls_network
from tests.server.realserver import NAS_SECRET, SECRET

pytestmark = needs_freeradius
HERE = Path(__file__).resolve().parent
EAP_IDENTITY = b"\x02\x01\x00\x0d\x01dev-good"  # EAP-Response/Identity "dev-good" (RFC 3748 5.1)
DEBIAN_LOCALHOST = 'client localhost {\n\tipaddr = 127.0.0.1\n\tsecret = testing123\n}\n'  # as Debian ships it


def run_tls(server, tmp_path, creds, port, secret, timeout=5):
    return eapol_test(tmp_path, creds.device_id,
                      tls_network(creds.device_id, creds.cert_path, creds.key_path, creds.cert_path.parent / "ca.pem"),
                      server.address, port, secret, timeout=timeout)


def tessera_client(server, port, secret):
    return RadiusClient([Server(server.cfg.server_id, server.address, port, secret.encode())], timeout=1.0, retries=0)


def test_client_classes_device_client_sending_eap_is_refused_nas_client_admitted(stub_server, devices, tmp_path):
    rc, out = run_tls(stub_server, tmp_path, devices["dev-good"], stub_server.port, stub_server.secret)
    assert rc != 0 and "SUCCESS" not in out, out[-3000:]
    assert "Access-Reject" in out and "EAP is not answered on the device listener" in out, out[-3000:]
    rc, out = run_tls(stub_server, tmp_path, devices["dev-good"], stub_server.nas_port, stub_server.nas_secret)
    assert rc == 0 and "SUCCESS" in out, out[-3000:]


def test_client_classes_nas_client_sending_tessera_message_is_refused_device_client_answered(stub_server):
    with pytest.raises(RejectedError) as exc:
        tessera_client(stub_server, stub_server.nas_port, stub_server.nas_secret).exchange(
            "dev-good", lambda sid: b"TSR1ok")
    assert exc.value.reason == "Tessera messages are not answered on the NAS listener"
    reply = tessera_client(stub_server, stub_server.port, stub_server.secret).exchange("dev-good", lambda sid: b"TSR1ok")
    assert reply == b"ACK1ko"


def test_client_classes_each_secret_only_on_its_own_listener(stub_server):
    s = stub_server
    for port, wrong, right in ((s.nas_port, s.secret, s.nas_secret), (s.port, s.nas_secret, s.secret)):
        req = rawradius.request(wrong, code=packet.StatusServer)
        assert rawradius.exchange(s.address, port, req) is None, port
        assert rawradius.exchange(s.address, port, rawradius.request(right, code=packet.StatusServer)).code \
            == packet.AccessAccept
    with pytest.raises(NoServerAnsweredError):  # the device secret cannot speak EAP on the NAS port
        tessera_client(s, s.nas_port, s.secret).exchange("dev-good", lambda sid: b"TSR1ok")
    eap = (("User-Name", "dev-good"), ("EAP-Message", EAP_IDENTITY))
    assert rawradius.exchange(s.address, s.nas_port, rawradius.request(s.secret, eap)) is None
    answer = rawradius.exchange(s.address, s.nas_port, rawradius.request(s.nas_secret, eap))
    assert answer.code == packet.AccessChallenge  # and it carries a valid Message-Authenticator


@pytest.fixture(scope="module")
def split_server(tmp_path_factory, tls_dir, stub_db):
    """Devices at 127.0.0.1, switches only at 127.0.0.3, and Debian's stock localhost client in
    the global list."""
    require("root", "freeradius", "radclient")
    directory = tmp_path_factory.mktemp("classes")
    kek = directory / "kek"
    kek.write_bytes(b"unused by the stub")
    cfg = radiusd.RadiusConfig(db=stub_db, kek=kek, tls_dir=tls_dir, realm_opener="stub_realm:open_realm",
                               python_path=(HERE,), secret=SECRET, nas_secret=NAS_SECRET,
                               client_address="127.0.0.1", nas_client_address="127.0.0.3")
    raddb = radiusd.build_config(directory / "raddb", cfg)
    with open(raddb / "clients.conf", "a") as f:
        f.write(DEBIAN_LOCALHOST)
    radiusd.check_config(raddb)
    server = radiusd.RadiusServer.for_config(raddb, cfg)
    try:
        server.start()
        yield cfg
    finally:
        server.stop()
    assert not server.running()


def test_client_classes_membership_is_per_listener_by_source_address(split_server):
    cfg = split_server
    status = lambda secret: rawradius.request(secret, code=packet.StatusServer)  # noqa: E731
    # 127.0.0.1 is a device client only: unknown to the NAS listener, even with the NAS secret
    assert rawradius.exchange(cfg.address, cfg.nas_port, status(NAS_SECRET), source="127.0.0.1") is None
    assert rawradius.exchange(cfg.address, cfg.nas_port, status(NAS_SECRET), source="127.0.0.3").code \
        == packet.AccessAccept
    # 127.0.0.3 is a switch only: unknown to the device listener, even with the device secret
    assert rawradius.exchange(cfg.address, cfg.port, status(SECRET), source="127.0.0.3") is None
    assert rawradius.exchange(cfg.address, cfg.port, status(SECRET), source="127.0.0.1").code == packet.AccessAccept


def test_client_classes_global_clients_reach_neither_listener(split_server):
    cfg = split_server
    tessera = (("User-Name", "dev-good"), ("Tessera-Message", b"TSR1ok"))
    for port in (cfg.port, cfg.nas_port):
        for code, attrs in ((packet.StatusServer, ()), (packet.AccessRequest, tessera)):
            req = rawradius.request("testing123", attrs, code)
            assert rawradius.exchange(cfg.address, port, req, source="127.0.0.1") is None, (port, code)
    answer = rawradius.exchange(cfg.address, cfg.port, rawradius.request(SECRET, tessera), source="127.0.0.1")
    assert answer.code == packet.AccessAccept and answer["Tessera-Reply"] == [b"ACK1ko"]


def test_client_classes_shipped_example_is_what_the_sites_read(tmp_path, tls_dir, stub_db):
    """configs/freeradius/clients.conf.example, with its addresses and secrets put to this host,
    is the whole clients.conf of a server whose two listeners then answer their own class."""
    require("root", "freeradius", "radclient")
    kek = tmp_path / "kek"
    kek.write_bytes(b"unused by the stub")
    cfg = radiusd.RadiusConfig(db=stub_db, kek=kek, tls_dir=tls_dir, realm_opener="stub_realm:open_realm",
                               python_path=(HERE,), secret=SECRET, nas_secret=NAS_SECRET)
    raddb = radiusd.build_config(tmp_path / "raddb", cfg)
    example = (radiusd.CONFIGS / "clients.conf.example").read_text()
    for old, new in (("192.0.2.10", "127.0.0.1"), ("198.51.100.0/24", "127.0.0.1"),
                     ("change-me-to-the-switches-secret", NAS_SECRET), ("change-me-to-the-devices-secret", SECRET)):
        assert example.count(old) == 1, old
        example = example.replace(old, new)
    (raddb / "clients.conf").write_text(example)
    server = radiusd.RadiusServer.for_config(raddb, cfg)
    try:
        server.start()  # answers a Status-Server on the device listener with the device secret
        status = rawradius.request(NAS_SECRET, code=packet.StatusServer)
        assert rawradius.exchange(cfg.address, cfg.nas_port, status).code == packet.AccessAccept
        assert rawradius.exchange(cfg.address, cfg.nas_port, rawradius.request(SECRET, code=packet.StatusServer)) is None
    finally:
        server.stop()
    assert not server.running()
