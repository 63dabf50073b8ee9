"""Message-Authenticator is required by Tessera's sites themselves, not by the client entry.

FreeRADIUS 3.2.1 drops a request without Message-Authenticator only for a client entry with
``require_message_authenticator = yes``; Debian's stock ``localhost`` client and any client an
operator adds by hand lack it. The server here has, in each class, a client at 127.0.0.2 whose
entry does NOT require it (``Client(..., require_message_authenticator=False)``): from there a
request without Message-Authenticator must get no answer at all -- on the device listener
(``tessera``) and on the NAS listener (``tessera-nas``), for Access-Request and Status-Server --
while the same request with one is answered, and every answer carries a valid one. A request
whose Message-Authenticator is keyed by another secret is dropped too (FreeRADIUS checks a
present one before the site runs). For Status-Server FreeRADIUS itself already requires one
(RFC 5997); that test pins the behaviour, the sites' own check there is a second line.
"""

from pathlib import Path

import pytest
from pyrad import packet

from tessera.lab.radiusd import Client

from tests.gate import needs_freeradius, require
from tests.server import rawradius
from tests.server.realserver import NAS_SECRET, SECRET, make_server

pytestmark = needs_freeradius
LAX = "127.0.0.2"  # the source address of the clients whose entries do not require it
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def server(tmp_path_factory, tls_dir, stub_db):
    require("root", "freeradius", "radclient")
    directory = tmp_path_factory.mktemp("ma")
    kek = directory / "kek"
    kek.write_bytes(b"unused by the stub")
    with make_server(directory, db=stub_db, kek=kek, tls_dir=tls_dir, realm_opener="stub_realm:open_realm",
                     python_path=(HERE,),
                     extra_clients=(Client("lax-device", LAX, SECRET, require_message_authenticator=False),),
                     extra_nas_clients=(Client("lax-switch", LAX, NAS_SECRET, require_message_authenticator=False),)
                     ) as s:
        clients = (s.proc.raddb / "clients.conf").read_text()
        assert clients.count("require_message_authenticator = no") == 2, clients  # the premise
        yield s


def ask(server, port, secret, attributes=(), code=packet.AccessRequest, ma=True):
    req = rawradius.request(secret, attributes, code, message_authenticator=ma)
    return rawradius.exchange(server.address, port, req, source=LAX)


TESSERA = (("User-Name", "dev-good"), ("Tessera-Message", b"TSR1ok"))


def test_message_authenticator_required_by_the_device_site(server):
    assert ask(server, server.port, SECRET, TESSERA, ma=False) is None
    answer = ask(server, server.port, SECRET, TESSERA)  # the same with it: answered, and signed
    assert answer.code == packet.AccessAccept and answer["Tessera-Reply"] == [b"ACK1ko"]


def test_message_authenticator_required_by_the_nas_site(server):
    plain = (("User-Name", "dev-good"),)
    assert ask(server, server.nas_port, NAS_SECRET, plain, ma=False) is None
    answer = ask(server, server.nas_port, NAS_SECRET, plain)  # answered (refused, with the reason)
    assert answer.code == packet.AccessReject and answer["Reply-Message"] == ["not an EAP request"]
    # a Tessera-Message without one is dropped as well, not even refused
    assert ask(server, server.nas_port, NAS_SECRET, TESSERA, ma=False) is None
    answer = ask(server, server.nas_port, NAS_SECRET, TESSERA)
    assert answer.code == packet.AccessReject


@pytest.mark.parametrize("site", ["device", "nas"])
def test_message_authenticator_required_for_status_server(server, site):
    port, secret = (server.port, SECRET) if site == "device" else (server.nas_port, NAS_SECRET)
    assert ask(server, port, secret, code=packet.StatusServer, ma=False) is None
    assert ask(server, port, secret, code=packet.StatusServer).code == packet.AccessAccept


@pytest.mark.parametrize("site", ["device", "nas"])
def test_message_authenticator_keyed_by_another_secret_is_dropped(server, site):
    port, secret = (server.port, SECRET) if site == "device" else (server.nas_port, NAS_SECRET)
    req = rawradius.request(secret, TESSERA)
    assert rawradius.send(server.address, port, rawradius.encode(req, ma_secret="not-" + secret), LAX) is None
    raw = rawradius.send(server.address, port, rawradius.encode(req), LAX)  # the right one: answered
    assert raw is not None and rawradius.reply(req, raw).code in (packet.AccessAccept, packet.AccessReject)
