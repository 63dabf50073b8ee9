"""The Wireshark dissector (wireshark/tessera.lua) read by tshark, field by field.

How this works
--------------
Each test writes or makes a pcap and runs what an engineer runs::

    tshark -X lua_script:wireshark/tessera.lua -r PCAP -Y tessera -T fields -e tessera.type ...

- ``test_known_frames_decode_field_by_field``: Ethernet II frames built here with ``struct``
  from docs/layouts.md alone (Encodings, Messages, Peer records; PeerFrame 38 has PeerData's
  layout), with known ids, nonces, times, hardware addresses, session ids and sequence numbers:
  every field tshark prints is compared with the value put in. The project's own decoder
  (``tessera.message.decode``) accepts the same bytes, so the builder and the code agree on
  the layout.
- ``test_malformed_frames_get_expert_info``: short, over-long, non-UTF-8, unknown-version,
  unknown-type, trailing-byte and too-short-to-be-sealed frames: each gets its own expert info
  (``tessera.truncated``, ...), the fields before the fault still decode, a well-formed frame
  next to them gets none, and tshark never reports a Lua error.
- ``test_every_truncation_and_random_bytes_never_break_the_dissector``: every prefix of the
  known frames and 300 seeded random corruptions.
- ``test_demo_pcap_decodes_every_frame_type`` (root, the lab): the demo's switch pcap
  (``tessera.lab.demo -n 3 --pcap``): announce, hello, ticket, finished, confirm and data
  records -- and PeerFrame records once the agent's tunnel sends them (type 38 in
  ``tessera.message``) -- with every field tshark prints equal to what the project's decoder
  reads from the same frame.
- ``test_tunnel_pcap_decodes_peer_frames`` (root, the lab): two agents with ``tessera0``, a ping
  over it; the switch's pcap holds PeerFrame records that decode like the rest, and no inner
  ICMP, ARP or tunnel address is visible in it.
"""

from __future__ import annotations

import inspect
import os
import select
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tessera import message
from tessera.errors import TesseraError

from tests.gate import needs, needs_lab

TOP = Path(__file__).resolve().parents[1]
LUA = TOP / "wireshark" / "tessera.lua"
ETHERTYPE = 0x88B5

pytestmark = needs("tshark")

# -- frames from docs/layouts.md ----------------------------------------------------------------


def u8(v: int) -> bytes:
    return struct.pack("!B", v)


def u16(v: int) -> bytes:
    return struct.pack("!H", v)


def u64(v: int) -> bytes:
    return struct.pack("!Q", v)


def ident(s: str) -> bytes:  # `id` and `str`: u8 length, then UTF-8
    b = s.encode()
    return u8(len(b)) + b


def blob(b: bytes) -> bytes:  # `blob`: u16 length, then the bytes
    return u16(len(b)) + b


def head(mtype: int, version: int = 1) -> bytes:
    return u8(version) + u8(mtype)


def ether(payload: bytes, dst: bytes = b"\xff" * 6, src: bytes = bytes.fromhex("02000000000a")) -> bytes:
    return dst + src + u16(ETHERTYPE) + payload


def write_pcap(path: Path, frames: list[bytes]) -> None:
    """libpcap format, LINKTYPE_ETHERNET (1), one second apart."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, fr in enumerate(frames):
            f.write(struct.pack("<IIII", 1_700_000_000 + i, 0, len(fr), len(fr)) + fr)


REALM, A, B = "example.net", "dev-a", "dev-b"
HW_A, HW_B = bytes.fromhex("02000000000a"), bytes.fromhex("02000000000b")
NONCE_A, NONCE_B = bytes(range(16)), bytes(range(16, 32))
TS, NOT_AFTER, EPOCH = 1_700_000_000, 1_700_003_600, 0x0123456789ABCDEF
SID = bytes.fromhex("0102030405060708")
# a TGT service part: kind 2, version 1, kvno 7 | AEAD: nonce 12 | ciphertext | tag 16
TGT = u8(2) + u8(1) + struct.pack("!I", 7) + b"\x11" * 12 + b"\x22" * 77 + b"\x33" * 16
PART = b"\x55" * 12 + b"\x66" * 88 + b"\x77" * 16  # session part: AEAD nonce | ciphertext | tag
MAC_HELLO, FIN_B, FIN_A, CONFIRM = b"\x44" * 32, b"\x88" * 32, b"\x99" * 32, b"\xaa" * 32
CT_DATA, TAG_DATA = bytes(range(100, 120)), b"\xbb" * 16  # a 20-byte ciphertext
CT_FRAME, TAG_FRAME = bytes(range(0, 60)), b"\xcc" * 16  # an encrypted 60-byte inner frame


def good_frames() -> list[tuple[str, bytes]]:
    """(name, Tessera message) of each frame type, with the known values above."""
    return [
        ("announce", head(36) + ident(REALM) + ident(A) + u64(EPOCH)),
        ("hello", head(32) + ident(REALM) + ident(A) + ident(B) + HW_A + u64(TS) + NONCE_A + blob(TGT) + MAC_HELLO),
        ("ticket", head(33) + ident(REALM) + ident(A) + ident(B) + NONCE_A + NONCE_B + HW_B + u64(NOT_AFTER)
         + blob(PART) + FIN_B),
        ("finished", head(34) + ident(REALM) + ident(A) + ident(B) + NONCE_A + FIN_A),
        ("confirm", head(37) + ident(REALM) + ident(A) + ident(B) + NONCE_A + CONFIRM),
        ("data", head(35) + SID + u64(5) + CT_DATA + TAG_DATA),
        ("frame", head(38) + SID + u64(6) + CT_FRAME + TAG_FRAME),
        ("error", head(15) + u16(13) + u64(TS + 123) + ident("clock skew: 400 s")),
        ("error without detail", head(15) + u16(2) + u64(0) + ident("")),  # ends on an empty field
        ("unicode", head(36) + ident(REALM) + ident("gerät-ü1") + u64(1)),
    ]


FIELDS = ("frame.number", "tessera.version", "tessera.type", "tessera.realm", "tessera.device_id",
          "tessera.initiator", "tessera.responder", "tessera.initiator_hw", "tessera.responder_hw",
          "tessera.timestamp", "tessera.not_after", "tessera.epoch", "tessera.nonce", "tessera.initiator_nonce",
          "tessera.responder_nonce", "tessera.tgt", "tessera.blob_len", "tessera.ticket.kind",
          "tessera.ticket.kvno", "tessera.aead_nonce", "tessera.ciphertext", "tessera.ciphertext_len",
          "tessera.tag", "tessera.mac", "tessera.finished", "tessera.confirm", "tessera.part_initiator",
          "tessera.session_id", "tessera.seq", "tessera.inner_len", "tessera.code", "tessera.server_time",
          "tessera.detail", "tessera.id_len", "tessera.text_len", "tessera.length", "_ws.expert.message", "_ws.col.Info")


def tshark(pcap: Path, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run(["tshark", "-n", "-X", f"lua_script:{LUA}", "-r", str(pcap), *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Lua" not in r.stderr and "rror" not in r.stderr.replace("Running as user", ""), r.stderr
    return r


def fields(pcap: Path, names=FIELDS, display_filter: str = "tessera") -> list[dict[str, list[str]]]:
    """One dict per frame: field name -> its values (every occurrence, in order)."""
    args = ["-Y", display_filter, "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a",
            "-E", "aggregator=\x1f", "-E", "quote=n"]
    for n in names:
        args += ["-e", n]
    rows = []
    for line in tshark(pcap, *args).stdout.splitlines():
        values = line.split("\t")
        assert len(values) == len(names), line
        rows.append({n: (v.split("\x1f") if v else []) for n, v in zip(names, values)})
    return rows


def no_lua_error(pcap: Path) -> str:
    verbose = tshark(pcap, "-V").stdout
    assert "Lua Error" not in verbose and "Dissector error" not in verbose and "Dissector bug" not in verbose
    return verbose


# -- (b) known frames ---------------------------------------------------------------------------


def test_known_frames_decode_field_by_field(tmp_path):
    frames = good_frames()
    for name, payload in frames:
        if payload[1] in message.MESSAGES:  # the project's decoder reads the same bytes
            message.decode(payload)
    pcap = tmp_path / "known.pcap"
    write_pcap(pcap, [ether(p) for _, p in frames])
    rows = {name: row for (name, _), row in zip(frames, fields(pcap))}
    assert len(rows) == len(frames)
    for row in rows.values():
        assert row["tessera.version"] == ["1"] and row["_ws.expert.message"] == []

    ann = rows["announce"]
    assert ann["tessera.type"] == ["36"] and ann["tessera.realm"] == [REALM] and ann["tessera.device_id"] == [A]
    assert ann["tessera.epoch"] == ["0x0123456789abcdef"] and ann["tessera.id_len"] == ["11", "5"]
    assert ann["tessera.length"] == [str(2 + 12 + 6 + 8)]
    assert ann["_ws.col.Info"] == [f"PeerAnnounce {A} ({REALM}) epoch 0x0123456789abcdef"]

    hello = rows["hello"]
    assert hello["tessera.type"] == ["32"]
    assert (hello["tessera.initiator"], hello["tessera.responder"]) == ([A], [B])
    assert hello["tessera.initiator_hw"] == ["02:00:00:00:00:0a"]
    assert hello["tessera.timestamp"] == [str(TS)] and hello["tessera.nonce"] == [NONCE_A.hex()]
    assert hello["tessera.tgt"] == [TGT.hex()] and hello["tessera.blob_len"] == [str(len(TGT))]
    assert hello["tessera.ticket.kind"] == ["2"] and hello["tessera.ticket.kvno"] == ["7"]
    assert hello["tessera.aead_nonce"] == [(b"\x11" * 12).hex()]
    assert hello["tessera.ciphertext"] == [(b"\x22" * 77).hex()] and hello["tessera.ciphertext_len"] == ["77"]
    assert hello["tessera.tag"] == [(b"\x33" * 16).hex()] and hello["tessera.mac"] == [MAC_HELLO.hex()]
    assert hello["_ws.col.Info"] == [f"PeerHello {A} → {B} ({REALM})"]

    ticket = rows["ticket"]
    assert ticket["tessera.type"] == ["33"]
    assert ticket["tessera.initiator_nonce"] == [NONCE_A.hex()] and ticket["tessera.responder_nonce"] == [NONCE_B.hex()]
    assert ticket["tessera.responder_hw"] == ["02:00:00:00:00:0b"] and ticket["tessera.not_after"] == [str(NOT_AFTER)]
    assert ticket["tessera.part_initiator"] == [PART.hex()] and ticket["tessera.blob_len"] == [str(len(PART))]
    assert ticket["tessera.aead_nonce"] == [(b"\x55" * 12).hex()] and ticket["tessera.ciphertext_len"] == ["88"]
    assert ticket["tessera.finished"] == [FIN_B.hex()]

    fin, conf = rows["finished"], rows["confirm"]
    assert fin["tessera.type"] == ["34"] and fin["tessera.finished"] == [FIN_A.hex()]
    assert fin["tessera.initiator_nonce"] == [NONCE_A.hex()] and fin["tessera.realm"] == [REALM]
    assert conf["tessera.type"] == ["37"] and conf["tessera.confirm"] == [CONFIRM.hex()]
    assert (conf["tessera.initiator"], conf["tessera.responder"]) == ([A], [B])

    data, frame = rows["data"], rows["frame"]
    assert data["tessera.type"] == ["35"] and data["tessera.session_id"] == [SID.hex()] and data["tessera.seq"] == ["5"]
    assert data["tessera.ciphertext"] == [CT_DATA.hex()] and data["tessera.ciphertext_len"] == ["20"]
    assert data["tessera.tag"] == [TAG_DATA.hex()] and data["tessera.inner_len"] == []
    assert data["_ws.col.Info"] == [f"PeerData sid={SID.hex()} seq=5 len=20"]
    assert frame["tessera.type"] == ["38"] and frame["tessera.session_id"] == [SID.hex()] and frame["tessera.seq"] == ["6"]
    assert frame["tessera.ciphertext_len"] == ["60"] and frame["tessera.inner_len"] == ["60"]
    assert frame["tessera.tag"] == [TAG_FRAME.hex()]
    assert frame["_ws.col.Info"] == [f"PeerFrame sid={SID.hex()} seq=6 len=60"]

    err = rows["error"]
    assert err["tessera.type"] == ["15"] and err["tessera.code"] == ["13"]
    assert err["tessera.server_time"] == [str(TS + 123)] and err["tessera.detail"] == ["clock skew: 400 s"]
    assert err["_ws.col.Info"] == ["ErrorMessage 13 (clock-skew): clock skew: 400 s"]

    quiet = rows["error without detail"]
    assert quiet["tessera.code"] == ["2"] and quiet["tessera.text_len"] == ["0"] and quiet["_ws.expert.message"] == []
    assert quiet["_ws.col.Info"] == ["ErrorMessage 2 (malformed)"]
    assert rows["unicode"]["tessera.device_id"] == ["gerät-ü1"]
    assert rows["unicode"]["tessera.id_len"] == ["11", str(len("gerät-ü1".encode()))]

    # display filters on the fields, as an engineer types them
    assert [r["frame.number"] for r in fields(pcap, ("frame.number",), "tessera.seq == 6")] == [["7"]]
    assert len(fields(pcap, ("frame.number",), f'tessera.initiator == "{A}"')) == 4
    verbose = no_lua_error(pcap)
    assert "Type: PeerTicket (33)" in verbose and "Ticket kind: TGT service part (2)" in verbose
    assert "Timestamp: 1700000000 (2023-11-14 22:13:20 UTC)" in verbose
    assert "Error code: clock-skew (13)" in verbose


# -- (b) malformed frames -----------------------------------------------------------------------


def malformed_frames() -> list[tuple[str, bytes, str]]:
    """(name, Tessera payload, the expert info's field that must be set)."""
    hello = dict(good_frames())["hello"]
    announce = dict(good_frames())["announce"]
    return [
        ("empty", b"", "tessera.truncated"),
        ("version only", b"\x01", "tessera.truncated"),
        ("version 2", head(36, version=2) + ident(REALM) + ident(A) + u64(1), "tessera.version.unsupported"),
        ("type 99", head(99) + b"\x00" * 20, "tessera.type.unknown"),
        ("hello cut in its nonce", hello[:2 + 12 + 6 + 6 + 6 + 8 + 5], "tessera.truncated"),
        ("hello cut in its MAC", hello[:-1], "tessera.truncated"),
        ("blob longer than the frame", head(32) + ident(REALM) + ident(A) + ident(B) + HW_A + u64(TS) + NONCE_A
         + u16(0xFFFF) + b"\x00" * 10, "tessera.truncated"),
        ("id length past the end", head(36) + u8(200) + b"x" * 10, "tessera.truncated"),
        ("id over 64 bytes", head(36) + ident("r" * 65) + ident(A) + u64(1), "tessera.too_long"),
        ("realm not UTF-8", head(36) + u8(3) + b"\xff\xfe\x80" + ident(A) + u64(1), "tessera.not_utf8"),
        ("announce with trailing bytes", announce + b"\x01\x02\x03", "tessera.trailing"),
        ("data shorter than a tag", head(35) + SID + u64(1) + b"\x00" * 15, "tessera.sealed.short"),
        ("data cut in its seq", head(35) + SID + b"\x00\x00", "tessera.truncated"),
        ("data with seq 0", head(35) + SID + u64(0) + CT_DATA + TAG_DATA, "tessera.seq.zero"),
        ("frame under an Ethernet header", head(38) + SID + u64(1) + b"\x00" * 10 + TAG_FRAME, "tessera.inner.short"),
        ("error cut in its detail", head(15) + u16(2) + u64(0) + u8(40) + b"short", "tessera.truncated"),
        ("RegisterRequest in a frame", head(1) + ident(REALM) + ident(A) + ident("radius-1") + u64(TS) + NONCE_A
         + b"\x00" * 64, "tessera.type.not_frame"),
        ("RevocationList in a frame", head(10) + ident(REALM) + ident(A) + ident("radius-1") + NONCE_A + u64(TS)
         + u64(TS - 3900) + u16(2) + ident("dev-x") + u64(TS - 50) + ident("dev-y") + u64(TS - 60) + b"\x00" * 64,
         "tessera.type.not_frame"),
        ("data with nothing sealed", head(35) + SID + u64(1), "tessera.sealed.short"),
        ("revocation count over 128", head(10) + ident(REALM) + ident(A) + ident("radius-1") + NONCE_A + u64(TS)
         + u64(TS) + u16(129), "tessera.too_long"),
        ("blob over 1024 bytes", head(32) + ident(REALM) + ident(A) + ident(B) + HW_A + u64(TS) + NONCE_A
         + blob(b"\x00" * 1025) + MAC_HELLO, "tessera.too_long"),
    ]


EXPERTS = ("tessera.truncated", "tessera.trailing", "tessera.too_long", "tessera.not_utf8",
           "tessera.version.unsupported", "tessera.type.unknown", "tessera.type.not_frame", "tessera.sealed.short",
           "tessera.seq.zero", "tessera.inner.short", "tessera.internal")


def test_malformed_frames_get_expert_info(tmp_path):
    bad = malformed_frames()
    for name, payload, want in bad:  # the project's decoder refuses the same layout faults
        if want in ("tessera.truncated", "tessera.trailing", "tessera.too_long", "tessera.not_utf8",
                    "tessera.version.unsupported", "tessera.type.unknown"):
            with pytest.raises(TesseraError):
                message.decode(payload)
    announce = dict(good_frames())["announce"]
    padded = announce + b"\x00" * (46 - len(announce))  # Ethernet's minimum: padding, not a fault
    payloads = [p for _, p, _ in bad] + [announce, padded]
    pcap = tmp_path / "malformed.pcap"
    write_pcap(pcap, [ether(p) for p in payloads])

    names = ("frame.number", "tessera.type", "tessera.realm", "tessera.nonce", "tessera.padding",
             "_ws.expert.message", "_ws.col.Info") + EXPERTS
    rows = fields(pcap, names)
    assert len(rows) == len(payloads)  # every frame is a Tessera frame, none is lost to an error
    for (name, _, want), row in zip(bad, rows):
        raised = [e for e in EXPERTS if row[e]]
        assert want in raised, (name, row)
        assert "tessera.internal" not in raised, (name, row)
        assert row["_ws.expert.message"], name
    by_name = {name: row for (name, _, _), row in zip(bad, rows)}
    # what comes before the fault still decodes
    assert by_name["hello cut in its nonce"]["tessera.realm"] == [REALM]
    assert by_name["hello cut in its nonce"]["tessera.nonce"] == []
    assert by_name["hello cut in its MAC"]["tessera.nonce"] == [NONCE_A.hex()]
    assert by_name["hello cut in its nonce"]["_ws.col.Info"][0].endswith("[malformed]")
    assert by_name["id over 64 bytes"]["tessera.realm"] == ["r" * 65]
    assert any("needs 8 bytes, 2 left" in m for m in by_name["data cut in its seq"]["_ws.expert.message"])
    # the well-formed announce and the zero-padded one: no expert info at all
    good, pad = rows[-2], rows[-1]
    assert good["_ws.expert.message"] == [] and pad["_ws.expert.message"] == []
    assert pad["tessera.padding"] == ["00" * (46 - len(announce))] and good["tessera.padding"] == []
    no_lua_error(pcap)


def test_every_truncation_and_random_bytes_never_break_the_dissector(tmp_path):
    """Every prefix of every known frame, and seeded random corruptions of them: each is still a
    Tessera frame in tshark's eyes, every prefix is reported truncated (a record: its sealed part
    too short; cut after a whole tag it is a valid shorter record), and the
    dissector's own error catcher (tessera.internal) never fires."""
    import random

    rnd = random.Random(12)
    frames = [p for _, p in good_frames()] + [p for _, p, _ in malformed_frames()]
    prefixes = [p[:k] for p in [p for _, p in good_frames()] for k in range(len(p))]
    corrupt = []
    for _ in range(300):
        b = bytearray(rnd.choice(frames))
        for _ in range(rnd.randint(1, 4)):
            if b:
                b[rnd.randrange(len(b))] = rnd.randrange(256)
        corrupt.append(bytes(b[: rnd.randint(0, len(b))] if rnd.random() < 0.3 else b))
    pcap = tmp_path / "fuzz.pcap"
    write_pcap(pcap, [ether(p) for p in prefixes + corrupt])
    rows = fields(pcap, ("frame.number", "tessera.truncated", "tessera.internal", "_ws.expert.message"))
    assert len(rows) == len(prefixes) + len(corrupt)
    assert not [r for r in rows if r["tessera.internal"]], [r for r in rows if r["tessera.internal"]][:3]
    for p, r in zip(prefixes, rows):
        if p[1:2] in (b"\x23", b"\x26") and len(p) >= 2 + 8 + 8 + 16:
            continue  # a record cut after a whole tag is a shorter record: nothing tells them apart
        # a record cut in its sealed part says so; anything else cut is truncated
        assert any(m.startswith(("Truncated", "Sealed part is")) for m in r["_ws.expert.message"]), r
    no_lua_error(pcap)


# -- (a) the demo's pcap ------------------------------------------------------------------------


def tessera_payloads(pcap: Path) -> list[tuple[int, bytes]]:
    """(frame number, Tessera message) of each 0x88B5 frame, read with scapy (Linux cooked v2
    or Ethernet II), independently of tshark."""
    from scapy.layers.l2 import CookedLinuxV2, Ether
    from scapy.utils import rdpcap

    out = []
    for i, p in enumerate(rdpcap(str(pcap)), 1):
        if p.haslayer(CookedLinuxV2) and p[CookedLinuxV2].proto == ETHERTYPE:
            out.append((i, bytes(p[CookedLinuxV2].payload)))
        elif p.haslayer(Ether) and p[Ether].type == ETHERTYPE:
            out.append((i, bytes(p[Ether].payload)))
    return out


def expected(msg: message.Message) -> dict[str, list[str]]:
    """What tshark must print for ``msg``, from the project's decoder."""
    want = {"tessera.type": [str(msg.TYPE)]}
    for name, kind in msg.FIELDS:
        v = getattr(msg, name)
        if kind in ("id", "text"):
            want[f"tessera.{name}"] = [v]
        elif kind in ("nonce", "mac", "sid"):
            want[f"tessera.{name}"] = [v.hex()]
        elif kind == "hw":
            want[f"tessera.{name}"] = [":".join(f"{b:02x}" for b in v)]
        elif kind == "u64":
            want[f"tessera.{name}"] = [f"0x{v:016x}" if name == "epoch" else str(v)]
        elif kind == "blob":
            want[f"tessera.{name}"] = [v.hex()]
        elif kind == "rest":  # a sealed record: ciphertext, then the 16-byte tag
            want["tessera.ciphertext_len"] = [str(len(v) - 16)]
            want["tessera.tag"] = [v[-16:].hex()]
    return want


DEMO_FIELDS = ("frame.number", "tessera.type", "tessera.realm", "tessera.device_id", "tessera.initiator",
               "tessera.responder", "tessera.initiator_hw", "tessera.responder_hw", "tessera.timestamp",
               "tessera.not_after", "tessera.epoch", "tessera.nonce", "tessera.initiator_nonce",
               "tessera.responder_nonce", "tessera.tgt", "tessera.part_initiator", "tessera.mac",
               "tessera.finished", "tessera.confirm", "tessera.session_id", "tessera.seq",
               "tessera.ciphertext_len", "tessera.tag", "_ws.expert.message")
NAMES = {32: "hello", 33: "ticket", 34: "finished", 35: "data", 36: "announce", 37: "confirm", 38: "frame"}


def check_against_decoder(pcap: Path) -> dict[str, int]:
    """tshark's fields of every Tessera frame in ``pcap`` equal the project's decoder's reading of
    the same bytes; no expert info, no Lua error. Returns how many frames of each type."""
    frames = tessera_payloads(pcap)
    assert frames, "no Tessera frame in the pcap"
    rows = {int(r["frame.number"][0]): r for r in fields(pcap, DEMO_FIELDS)}
    assert sorted(rows) == [n for n, _ in frames]  # tshark finds every Tessera frame, and only those
    seen: dict[str, int] = {}
    for n, payload in frames:
        row = rows[n]
        assert row["_ws.expert.message"] == [], (n, row)
        if payload[1] in message.MESSAGES:
            for name, values in expected(message.decode(payload)).items():
                assert row[name] == values, (n, NAMES.get(payload[1]), name, row[name], values)
        else:  # a type the project's decoder does not know (38 before the tunnel)
            assert row["tessera.type"] == [str(payload[1])]
        if payload[1] in (35, 38):  # the record header, read here from the bytes themselves
            assert row["tessera.session_id"] == [payload[2:10].hex()]
            assert row["tessera.seq"] == [str(int.from_bytes(payload[10:18], "big"))]
            assert row["tessera.ciphertext_len"] == [str(len(payload) - 34)]
        kind = NAMES.get(payload[1], str(payload[1]))
        seen[kind] = seen.get(kind, 0) + 1
    no_lua_error(pcap)
    return seen


@needs_lab
def test_demo_pcap_decodes_every_frame_type(tmp_path, capsys):
    from tessera.lab import demo

    pcap = tmp_path / "demo.pcap"
    assert demo.main(["-n", "3", "--pcap", str(pcap)]) == 0
    out = capsys.readouterr().out
    seen = check_against_decoder(pcap)
    want = {"announce", "hello", "ticket", "finished", "confirm", "data"}
    if "tessera0" in out or "tunnel=True" in inspect.getsource(demo):  # it pings over tessera0
        want.add("frame")
    assert want <= set(seen), f"frame types in the demo's pcap: {seen}"


def echo(ns: str, addr: str, count: int = 3) -> int:
    """ICMP echoes from namespace ``ns`` to ``addr``; how many were answered."""
    from tessera.agent.link import call_in_netns
    from tessera.lab.probe import icmp_echo

    sock = call_in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
    ident, answered = os.getpid() & 0xFFFF, 0
    try:
        for seq in range(1, count + 1):
            sock.sendto(icmp_echo(ident, seq), (addr, 0))
            deadline = time.monotonic() + 3
            while (left := deadline - time.monotonic()) > 0 and select.select([sock], [], [], left)[0]:
                data = sock.recv(2048)
                icmp = data[(data[0] & 0x0F) * 4:]
                typ, _, _, rid, rseq = struct.unpack_from("!BBHHH", icmp)
                if typ == 0 and (rid, rseq) == (ident, seq):
                    answered += 1
                    break
    finally:
        sock.close()
    return answered


@needs_lab
def test_tunnel_pcap_decodes_peer_frames(lab, tmp_path):
    """Two agents with tessera0 (the lab's addresses), a ping over it, the switch's pcap: the
    PeerFrame records decode like every other frame, and tshark finds no inner IP in them."""
    from tessera.lab.topology import RealmLab

    assert 38 in message.MESSAGES, "PeerFrame (38) is not in tessera.message"
    rl = RealmLab(lab, 2)
    try:
        for d in rl.devices:
            rl.set_carrier(d, False)
            rl.start_agent(d, tunnel=True)
        for d in rl.devices:
            rl.set_carrier(d, True)
        d1, d2 = rl.devices
        assert rl.wait(lambda: rl.peered(d1, [d2.device_id]) and rl.peered(d2, [d1.device_id]), 30)
        assert echo(d1.dev.ns, f"198.51.100.{d2.dev.index}") == 3
        stats = rl.stop_capture()
        assert stats is not None and stats.dropped == 0
        pcap = tmp_path / "tunnel.pcap"
        shutil.copyfile(rl.pcap, pcap)
    finally:
        rl.close()
    seen = check_against_decoder(pcap)
    assert seen.get("frame", 0) >= 6, seen  # 3 echo requests and 3 replies, at least (ARP too)
    rows = fields(pcap, ("frame.protocols", "tessera.inner_len", "tessera.ciphertext_len"), "tessera.type == 38")
    assert rows and all(r["frame.protocols"] == ["sll:ethertype:tessera"] for r in rows), rows
    assert all(int(r["tessera.inner_len"][0]) >= 14 for r in rows)
    # nothing of the inner traffic is readable on the switch: no ICMP, no tunnel address
    assert fields(pcap, ("frame.number",), "icmp || ip.addr == 198.51.100.0/24 || arp.dst.proto_ipv4 == 198.51.100.0/24") == []
