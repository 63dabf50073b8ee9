"""Revocation reaches the peers, over a real FreeRADIUS (issue 9 §3).

The realm's own FreeRADIUS (production opener, SQLite registry) answers a RevocationQuery sent
with pyrad (the project's RADIUS client, Message-Authenticator both ways): two devices enrolled
and registered, one revoked with ``tessera-admin revoke``; the Access-Accept carries a
RevocationList that verifies with the bundle's service key over the documented context and
names the revoked device and only it. Beside it, the same query addressed to another realm is
rejected with an unsigned ErrorMessage, and the list answers no other query.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tessera import errors as E, message as m
from tessera.device import DeviceClient
from tessera.identity import DeviceKey, ServerEntry, pem_certificate
from tessera.radius.client import RejectedError
from tessera.realm import Realm, create_kek
from tessera.registry import DeviceState
from tessera.sqlite_registry import SQLiteRegistry

from tests.gate import needs_freeradius
from tests.server.realserver import SECRET, make_server

pytestmark = needs_freeradius
REALM = "revocations.example"
CONTEXT = b"tessera v1 revocations\x00"  # docs/layouts.md#revocationlist


@pytest.fixture(scope="module")
def lab(tmp_path_factory, pki):
    directory = tmp_path_factory.mktemp("revocations")
    db, kek = directory / "registry.db", directory / "kek"
    realm = Realm.init(SQLiteRegistry(str(db)), create_kek(str(kek)), REALM, time.time())
    device_cas = b"".join(pem_certificate(c) for c in realm.trusted_cas())
    tls = pki.install_server_files(directory / "tls", "radius.lab", time.time(), (device_cas,))
    with make_server(directory, db=db, kek=kek, tls_dir=tls, server_id="radius-1") as server:
        yield realm, server, db, kek


def device(realm, server, device_id: str) -> DeviceClient:
    key = DeviceKey.generate()
    realm.enrol_key(device_id, key.public_bytes(), time.time())
    return DeviceClient(realm.bundle(device_id, [ServerEntry("radius-1", server.address, server.port)], SECRET), key)


def verify_raw(point: bytes, signature: bytes, data: bytes) -> None:
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    key.verify(encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")),
               data, ec.ECDSA(hashes.SHA256()))


def test_revocation_list_over_freeradius_names_the_revoked_device_and_only_it(lab):
    realm, server, db, kek = lab
    client = server.client(timeout=2.0)
    a, b = device(realm, server, "rl-dev-a"), device(realm, server, "rl-dev-b")
    for dev in (a, b):
        reply = client.exchange(dev.device_id, lambda sid: dev.register_request(sid, time.time(), os.urandom(16)))
        dev.register_reply(reply, time.time())
    revoked_at = int(time.time())
    admin = subprocess.run([str(Path(sys.executable).parent / "tessera-admin"), "--db", str(db), "--kek", str(kek),
                            "revoke", "rl-dev-b", "--reason", "test"], capture_output=True, text=True, timeout=60)
    assert admin.returncode == 0, admin.stderr
    time.sleep(1.1)  # the server reads the list at most once a second: past the second it was revoked in
    nonce = os.urandom(16)
    sent = []

    def query(sid):
        sent.append(a.revocation_request(sid, time.time(), nonce))
        return sent[-1]

    reply = client.exchange(a.device_id, query)
    got = a.revocation_reply(reply, time.time())
    assert [d for d, _ in got.revoked] == ["rl-dev-b"]
    assert realm.registry.get_device("rl-dev-a").state is DeviceState.REGISTERED  # registered: not listed
    assert revoked_at <= got.revoked[0][1] <= got.issued_at <= time.time() + 1
    assert got.complete_since == got.issued_at - (3600 + 300)
    # the bytes, as documented: the query's fields and nonce under the bundle's service key
    body = (struct.pack("!BB", 1, 10) + bytes([len(REALM)]) + REALM.encode() + b"\x08rl-dev-a" + b"\x08radius-1"
            + nonce + struct.pack("!QQH", got.issued_at, got.complete_since, 1) + b"\x08rl-dev-b"
            + struct.pack("!Q", got.revoked[0][1]))
    assert reply[:-64] == body
    verify_raw(realm.bundle("rl-dev-a", [], SECRET).service_public_key, reply[-64:], CONTEXT + body)
    assert m.decode(sent[-1]).nonce == nonce
    # the revoked device learns it too (the query needs no ticket); the registered one is not listed
    reply_b = client.exchange(b.device_id, lambda sid: b.revocation_request(sid, time.time(), os.urandom(16)))
    got_b = b.revocation_reply(reply_b, time.time())
    assert [d for d, _ in got_b.revoked] == ["rl-dev-b"]
    # beside it: the same list does not answer another query of the same device
    a.revocation_request("radius-1", time.time(), os.urandom(16))
    with pytest.raises(E.BadProofError):
        a.revocation_reply(reply, time.time())


def test_query_for_another_realm_is_rejected_unsigned(lab):
    realm, server, _, _ = lab
    client = server.client(timeout=2.0)
    dev = device(realm, server, "rl-dev-c")
    ok = client.exchange(dev.device_id, lambda sid: dev.revocation_request(sid, time.time(), os.urandom(16)))
    assert isinstance(dev.revocation_reply(ok, time.time()), m.RevocationList)  # positive control
    with pytest.raises(RejectedError) as exc:
        client.exchange(dev.device_id, lambda sid: m.RevocationQuery("elsewhere.example", dev.device_id, sid,
                                                                     int(time.time()), os.urandom(16)).encode())
    assert exc.value.code == E.WrongRealmError.code
    assert isinstance(m.decode(exc.value.reply), m.ErrorMessage)
