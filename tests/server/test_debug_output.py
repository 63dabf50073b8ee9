"""What ``freeradius -X`` prints holds no key: a real radiusd in debug mode, a whole Tessera life.

One device registers, authenticates and renews over RADIUS, a second one too, the two get a
peer session key, and the first is admitted with EAP-PWD by eapol_test -- all against one
``freeradius -X`` whose output (``log/radiusd.out``) is then searched, as bytes, for every
secret the run made or used: the LLKs, the STKs, the session key, the keys derived from them
(proof keys, device-part keys, the EAP-PWD password), the EAP session keys sent to the switch
(MS-MPPE-Send/Recv-Key, as eapol_test received them), the realm's service master keys and the
keys derived from them, the KEK, the service signing key and the CA key. Each is searched for in
every form a debug line could print it -- hex in either case, raw, octal and \\x escapes,
base64 -- also in part (any 12-byte window), so a truncated print is found too.

The control: the same output *does* hold what a debug log must show, the Tessera messages as
they crossed the wire (so the search reads the right file, and the run reached each step), the
EAP-PWD exchange succeeded, so the password went through the server, and the line where
rlm_python3 prints the password it returned is there -- as ``'????…'``, the wire form
(``tessera.eappwd``) that FreeRADIUS's logger cannot print.

Sealed tickets appear in the log inside those messages, as on the wire: without the LLK or STK
they open for no one, and those are what the search looks for.
"""

from __future__ import annotations

import base64
import os
import re
import time
from pathlib import Path

import pytest

from tessera import eappwd, kdf, message as m
from tessera.device import DeviceClient
from tessera.identity import DeviceKey, ServerEntry, pem_certificate
from tessera.lab import radiusd
from tessera.lab.pki import DeviceCredentials
from tessera.peer import PeerInitiator, PeerResponder
from tessera.realm import Realm, create_kek
from tessera.seal import Sealer
from tessera.service import session_part_aad
from tessera.sqlite_registry import SQLiteRegistry

from tests.gate import needs_freeradius, require
from tests.server.eapol import eapol_test, pwd_network
from tests.server.realserver import NAS_SECRET, SECRET, RunningServer

pytestmark = needs_freeradius
REALM = "debug.example"
WINDOW = 12  # bytes of a secret that count as a leak when printed


def _escapes(data: bytes) -> list[bytes]:
    octal = "".join(f"\\{b:03o}" for b in data).encode()
    xesc = "".join(f"\\x{b:02x}" for b in data).encode()
    return [octal, xesc, xesc.upper().replace(b"\\X", b"\\x")]


def needles(secret: bytes) -> set[bytes]:
    """Every form, whole and in 12-byte windows, in which a debug line could print `secret`."""
    out = {base64.b64encode(secret), base64.b64encode(secret).rstrip(b"=")}
    for i in range(max(1, len(secret) - WINDOW + 1)):
        w = secret[i:i + WINDOW]
        out |= {w.hex().encode(), w.hex().upper().encode(), w, *_escapes(w)}
    return out


def leaks(log: bytes, secrets: dict[str, bytes]) -> list[str]:
    return sorted({name for name, s in secrets.items() for n in needles(s) if n in log})


@pytest.fixture(scope="module")
def debug_server(tmp_path_factory, pki):
    require("root", "freeradius", "radclient", "eapol_test")
    directory = tmp_path_factory.mktemp("debug")
    db, kek = directory / "registry.db", directory / "kek"
    realm = Realm.init(SQLiteRegistry(str(db)), create_kek(str(kek)), REALM, time.time())
    device_cas = b"".join(pem_certificate(c) for c in realm.trusted_cas())
    tls = pki.install_server_files(directory / "tls", "radius.lab", time.time(), (device_cas,))
    cfg = radiusd.RadiusConfig(db=db, kek=kek, tls_dir=tls, server_id="radius-debug",
                               secret=SECRET, nas_secret=NAS_SECRET)
    raddb = radiusd.build_config(directory / "raddb", cfg)
    radiusd.check_config(raddb)
    server = radiusd.RadiusServer.for_config(raddb, cfg, debug=True)  # freeradius -X
    try:
        server.start()
        yield realm, kek, RunningServer(server, cfg), directory
    finally:
        server.stop()
        assert not server.running()


def _device(realm, device_id, running, directory, pki):
    now = time.time()
    key = DeviceKey.generate()
    cert = realm.issue_certificate(device_id, key.public_bytes(), now)
    realm.enrol_key(device_id, key.public_bytes(), now, cert)
    pki.write_device_files(directory / "devices", DeviceCredentials(device_id, key, cert))
    servers = [ServerEntry(running.cfg.server_id, running.address, running.port)]
    return DeviceClient(realm.bundle(device_id, servers, SECRET), key), key


def test_debug_output_holds_no_key_of_a_whole_exchange(debug_server, pki, tmp_path):
    realm, kek_path, running, directory = debug_server
    client = running.client(timeout=3.0)
    secrets: dict[str, bytes] = {}
    devices = {}
    for name in ("dbg-a", "dbg-b"):
        dev, key = _device(realm, name, running, directory, pki)
        send = lambda build, d=dev: client.exchange(d.device_id, build)  # noqa: E731
        reg = dev.register_reply(send(lambda sid, d=dev: d.register_request(sid, time.time(), os.urandom(16))), time.time())
        first = dev.ticket_reply(send(lambda sid, d=dev: d.auth_request(sid, time.time(), os.urandom(16))), time.time())
        second = dev.ticket_reply(send(lambda sid, d=dev: d.renew_request(sid, time.time(), os.urandom(16))), time.time())
        devices[name] = dev
        secrets.update({
            f"{name} LLK": reg.llk, f"{name} auth proof key": kdf.derive(reg.llk, kdf.AUTH_PROOF),
            f"{name} TGT device-part key": kdf.derive(reg.llk, kdf.TGT_DEVICE_PART),
            f"{name} STK": first.stk, f"{name} renewed STK": second.stk,
            f"{name} renew proof key": kdf.derive(first.stk, kdf.RENEW_PROOF),
            f"{name} renew device-part key": kdf.derive(first.stk, kdf.RENEW_DEVICE_PART),
            f"{name} session request key": kdf.derive(second.stk, kdf.SESSION_REQUEST),
            f"{name} session part key": kdf.derive(second.stk, kdf.SESSION_PART),
            f"{name} EAP-PWD password": dev.eap_pwd_password().encode(),
            f"{name} EAP-PWD password bytes": bytes.fromhex(dev.eap_pwd_password()),
            f"{name} EAP-PWD password, wire form": eappwd.wire(dev.eap_pwd_password()),
            f"{name} private key": key.private_key.private_numbers().private_value.to_bytes(32, "big"),
        })
    # a peer session key for dbg-a → dbg-b, through the server
    a, b = devices["dbg-a"], devices["dbg-b"]
    ia, rb = PeerInitiator(a, b.device_id), PeerResponder(b)
    rb.receive_hello(ia.hello(time.time(), os.urandom(16)), time.time())
    reply = client.exchange(b.device_id, lambda sid: rb.session_request(sid, time.time(), os.urandom(16)))
    ia.receive_ticket(rb.receive_session_reply(reply, time.time()), time.time())
    msg = m.decode(reply, (m.SessionReply,))
    session_key = Sealer(kdf.derive(b.credentials.stk, kdf.SESSION_PART)).open(
        msg.part_responder, session_part_aad(REALM, a.device_id, b.device_id, msg.initiator_nonce, b"R"))[:32]
    secrets["session key"] = session_key
    # EAP-PWD admission of dbg-a with its password: the server derives the same password
    rc, out = eapol_test(tmp_path, "pwd-dbg-a", pwd_network(a.device_id, a.eap_pwd_password()),
                         running.address, running.nas_port, running.nas_secret)
    assert rc == 0 and "SUCCESS" in out, out[-3000:]
    # the EAP session keys the server sent the switch (MS-MPPE-Send/Recv-Key: the MSK's halves)
    mppe = re.findall(r"(MS-MPPE-\w+-Key) \(\w+\) - hexdump\(len=32\): ([0-9a-f ]+)", out)
    assert len(mppe) == 2, out[-3000:]
    secrets.update({f"EAP-PWD {name}": bytes.fromhex(value.replace(" ", "")) for name, value in mppe})
    # the realm's own keys
    for k in realm.keyring.versions():
        secrets[f"service key {k.kvno}"] = k.key
        secrets[f"DRT ticket key {k.kvno}"] = kdf.derive(k.key, kdf.TICKET_DRT, REALM.encode())
        secrets[f"TGT ticket key {k.kvno}"] = kdf.derive(k.key, kdf.TICKET_TGT, REALM.encode())
    secrets["KEK"] = Path(kek_path).read_bytes()
    secrets["service signing key"] = realm.signing_key.private_key.private_numbers().private_value.to_bytes(32, "big")
    secrets["CA key"] = realm.ca.private_key.private_numbers().private_value.to_bytes(32, "big")

    log = running.proc.output.read_bytes()
    # control: this is the -X output of these exchanges (the wire messages, the EAP-PWD step)
    assert b"Ready to process requests" in log
    assert b"Tessera-Reply = 0x" + reply[:24].hex().encode() in log  # the session reply, as sent
    assert b"eap-pwd-password" in log and b"tessera_eap" in log
    assert leaks(log, secrets) == []
    # the password did pass rlm_python3's print of returned pairs: as its wire form, all '?'
    printed = b"'config:Cleartext-Password' = '" + b"?" * len(eappwd.wire(a.eap_pwd_password())) + b"'"
    assert printed in log
    # ...and the session keys did pass the print of the Access-Accept: suppress_secrets took
    assert b"MS-MPPE-Recv-Key = <<< secret >>>" in log and b"MS-MPPE-Send-Key = <<< secret >>>" in log
