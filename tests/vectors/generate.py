"""Known-answer vectors for every ticket format, message codec and key derivation.

`compute()` builds each vector from fixed keys, nonces and times; `python generate.py` writes
them to core.json. tests/unit/test_vectors.py checks that the code still produces exactly the
stored bytes (a format change must be deliberate: regenerate and review the diff) and checks
the HKDF vectors against an independent RFC 5869 implementation.
"""

from __future__ import annotations

import json
import os
import sys

from tessera import kdf, message as m, servicekey
from tessera.peer import key_schedule
from tessera.record import RecordSender
from tessera.seal import point_bytes, private_key_from_seed, seal_to_public_key
from tessera.servicekey import KeyRing, ServiceKey
from tessera.ticket import GrantingTicket, RegistrationTicket, seal_ticket

REALM = "example.net"
T = 1_800_000_000
LABELS = {name: getattr(kdf, name) for name in ("TICKET_DRT", "TICKET_TGT", "KEYRING_AT_REST", "SEAL_TO_DEVICE",
                                                  "AUTH_PROOF", "TGT_DEVICE_PART", "RENEW_PROOF", "RENEW_DEVICE_PART",
                                                  "PEER_AUTHENTICATOR", "SESSION_REQUEST", "SESSION_PART", "PEER_KEYS",
                                                  "EAP_PWD")}


def b(n: int, v: int) -> bytes:
    return bytes([v]) * n


def compute() -> dict:
    ikm = bytes(range(32))
    out: dict = {"kdf": [{"label": name, "ikm": ikm.hex(), "context": "636f6e74657874",
                          "okm": kdf.derive(ikm, label, b"context").hex()} for name, label in LABELS.items()]}
    ring = KeyRing(REALM, [ServiceKey(7, b(32, 0x11), T)])
    drt = RegistrationTicket("SN-0001", 3, T, T + 86400, b(32, 0x22))
    tgt = GrantingTicket("SN-0001", 3, T, T + 3600, T + 86400, b(32, 0x33))
    out["ticket"] = [
        {"kind": "drt", "realm": REALM, "kvno": 7, "service_key": b(32, 0x11).hex(), "nonce": b(12, 0x44).hex(),
         "fields": {"device_id": "SN-0001", "generation": 3, "not_before": T, "not_after": T + 86400, "llk": b(32, 0x22).hex()},
         "sealed": seal_ticket(ring, drt, T, b(12, 0x44)).hex()},
        {"kind": "tgt", "realm": REALM, "kvno": 7, "service_key": b(32, 0x11).hex(), "nonce": b(12, 0x55).hex(),
         "fields": {"device_id": "SN-0001", "generation": 3, "not_before": T, "not_after": T + 3600,
                    "registration_not_after": T + 86400, "stk": b(32, 0x33).hex()},
         "sealed": seal_ticket(ring, tgt, T, b(12, 0x55)).hex()},
    ]
    out["service_key_at_rest"] = {"kek": b(32, 0x66).hex(), "realm": REALM, "kvno": 7, "key": b(32, 0x11).hex(),
                                  "nonce": b(12, 0x77).hex(),
                                  "sealed": servicekey.seal_at_rest(b(32, 0x66), REALM, ServiceKey(7, b(32, 0x11), T), b(12, 0x77)).hex()}
    recipient = private_key_from_seed(b(32, 0x01))
    out["seal_to_device"] = {"recipient_seed": b(32, 0x01).hex(), "recipient_public": point_bytes(recipient.public_key()).hex(),
                             "ephemeral_seed": b(32, 0x02).hex(), "plaintext": b(60, 0x03).hex(), "aad": "616164",
                             "sealed": seal_to_public_key(recipient.public_key(), b(60, 0x03), b"aad", b(32, 0x02)).hex()}
    n16 = b(16, 0x0A)
    msgs = [
        m.RegisterRequest(REALM, "SN-0001", "radius-1", T, n16, b(64, 0x5A)),
        m.RegisterReply(REALM, "SN-0001", n16, b(111, 0xD1), b(125, 0xD2), b(64, 0x5B)),
        m.AuthRequest(REALM, "SN-0001", "radius-1", T, n16, b(111, 0xD1)),
        m.TicketReply(REALM, "SN-0001", n16, b(119, 0xE1), b(76, 0xE2)),
        m.RenewRequest(REALM, "SN-0001", "radius-1", T, n16, b(119, 0xE1)),
        m.PeerHello(REALM, "SN-0001", "SN-0002", T, n16, b(119, 0xE1)),
        m.SessionRequest(REALM, "SN-0002", "radius-1", T, b(16, 0x0B), b(119, 0xE3), b(193, 0xF0)),
        m.SessionReply(REALM, "SN-0001", "SN-0002", n16, b(16, 0x0B), T + 3600, b(126, 0xA1), b(126, 0xA2)),
        m.ErrorMessage(8, 0, "device SN-0001 is revoked"),
        m.PeerTicket(REALM, "SN-0001", "SN-0002", n16, b(16, 0x0B), T + 3600, b(126, 0xA2), b(32, 0xF1)),
        m.PeerFinished(REALM, "SN-0001", "SN-0002", n16, b(32, 0xF2)),
        m.PeerData(b(8, 0x99), 1, b(20, 0x98)),
        m.PeerAnnounce(REALM, "SN-0001", 0x0102030405060708),
    ]
    llk = b(32, 0x22)
    auth = msgs[2]
    out["auth_proof"] = {"llk": llk.hex(), "body": auth.body().hex(),
                         "mac": kdf.mac(kdf.derive(llk, kdf.AUTH_PROOF), auth.body()).hex()}
    out["message"] = [{"type": type(x).__name__, "encoded": x.encode().hex()} for x in msgs]
    ks = key_schedule(b(32, 0xC0), b"hello bytes", b"ticket body")
    out["key_schedule"] = {"session_key": b(32, 0xC0).hex(), "hello": b"hello bytes".hex(), "ticket_body": b"ticket body".hex(),
                           **{k: getattr(ks, k).hex() for k in ("transcript", "finished_responder", "finished_initiator",
                                                                 "key_i2r", "key_r2i", "iv_i2r", "iv_r2i", "session_id")}}
    sender = RecordSender(b(8, 0x99), b(32, 0xAA), b(12, 0xBB))
    out["record"] = {"session_id": b(8, 0x99).hex(), "key": b(32, 0xAA).hex(), "iv": b(12, 0xBB).hex(),
                     "frames": [{"seq": i + 1, "plaintext": p.hex(), "frame": sender.seal(p).hex()}
                                for i, p in enumerate([b"", b"first", b(200, 0x42)])]}
    return out


if __name__ == "__main__":
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "core.json")
    with open(path, "w") as f:
        json.dump(compute(), f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {path}", file=sys.stderr)
