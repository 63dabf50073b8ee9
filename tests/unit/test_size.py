"""Wire sizes: every message fits RADIUS (values ≤ 247 bytes per attribute instance, several
instances allowed, whole packet ≤ 4096 bytes) and, all but a full RevocationList (only ever a
RADIUS reply), one Ethernet frame (1500-byte payload).
Measured with 16-character device ids and realm/server names of realistic length; run with -s
to print the table."""

import os

from tessera import message as m
from tessera.peer import PeerInitiator, PeerResponder
from tessera.realm import Realm
from tessera.sqlite_registry import SQLiteRegistry
from tests.unit.conftest import T0, Counter, admit, make_device

ATTR = 247
RADIUS_OVERHEAD = 20 + 18 + 40 + 64  # header, Message-Authenticator, User-Name, NAS attributes (generous)
ETHERNET = 1500
RADIUS_ONLY = "RevocationList (128 revoked)"  # a reply to a device, never a frame


def sizes():
    rand = Counter(b"sizes")
    realm = Realm.init(SQLiteRegistry(":memory:"), os.urandom(32), "campus.example.net", T0, random=rand)
    svc = realm.service("radius-01.example")
    a, b = make_device(realm, "FOC2231X0AB-0001"), make_device(realm, "FOC2231X0AB-0002")
    out = {}
    req = a.register_request(svc.server_id, T0, rand(16))
    out["RegisterRequest"] = req
    out["RegisterReply"] = rep = svc.handle(req, T0)
    a.register_reply(rep, T0)
    req = a.auth_request(svc.server_id, T0, rand(16))
    out["AuthRequest"], out["TicketReply"] = req, svc.handle(req, T0)
    a.ticket_reply(out["TicketReply"], T0)
    out["RenewRequest"] = a.renew_request(svc.server_id, T0, rand(16))
    a.abandon()
    admit(svc, b, rand)
    ia, rb = PeerInitiator(a, b.device_id), PeerResponder(b)
    out["PeerHello"] = ia.hello(T0, rand(16))
    rb.receive_hello(out["PeerHello"], T0)
    out["SessionRequest"] = rb.session_request(svc.server_id, T0, rand(16))
    out["SessionReply"] = svc.handle(out["SessionRequest"], T0)
    out["PeerTicket"] = rb.receive_session_reply(out["SessionReply"], T0)
    out["PeerFinished"] = ia.receive_ticket(out["PeerTicket"], T0)
    out["PeerData (200-byte payload)"] = ia.channel.seal(b"x" * 200)
    out["ErrorMessage"] = m.ErrorMessage(8, 0, "x" * 255).encode()
    out["RevocationQuery"] = query = a.revocation_request(svc.server_id, T0 + 200, rand(16))
    for i in range(m.MAX_REVOKED):
        realm.revoke(make_device(realm, f"FOC2231X0AB-{1000 + i}").device_id, T0 + i, "")
    out[RADIUS_ONLY] = svc.handle(query, T0 + 200)
    assert len(a.revocation_reply(out[RADIUS_ONLY], T0 + 200).revoked) == m.MAX_REVOKED
    out["DRT service part"] = a.registration.drt
    out["TGT service part"] = a.credentials.tgt
    return out


def test_every_message_fits_radius_and_one_frame():
    table = sizes()
    print()
    for name, data in table.items():
        instances = -(-len(data) // ATTR)
        radius_packet = RADIUS_OVERHEAD + len(data) + 8 * instances  # VSA headers
        print(f"  {name:<28} {len(data):>5} B  {instances} attribute(s)  RADIUS packet ≈ {radius_packet} B")
        assert radius_packet <= 4096, name
        assert len(data) + 14 <= ETHERNET + 14 or name == RADIUS_ONLY, name
    # the tickets fit one attribute each
    assert len(table["DRT service part"]) <= ATTR and len(table["TGT service part"]) <= ATTR
