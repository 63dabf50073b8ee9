"""tshark names the Tessera-* attributes of a real RADIUS exchange with the project's dictionary.

A real FreeRADIUS with the real core (a realm on SQLite, ``make_server``); a device core
registers, gets a TGT and has a replayed request refused, over UDP on loopback, while tcpdump
captures the exchange. Then tshark reads the pcap twice:

- with the personal configuration ``tools/wireshark-profile --config-dir DIR --radius-port PORT``
  made (``WIRESHARK_CONFIG_DIR=DIR``; its Decode As entry makes the server's port RADIUS): the
  Vendor-Specific attributes of PEN 32473 show as ``Tessera-Message``, ``Tessera-Reply`` and
  ``Tessera-Error`` (with its value name; ``radius.Tessera_Device_Id`` is a valid field too,
  though this path never carries it), the standard ones (User-Name, Message-Authenticator)
  still by name; the Tessera-Message instances, concatenated, are the AuthRequest the device sent;
- with an empty personal configuration (and ``-d udp.port==PORT,radius``): no Tessera name
  anywhere (the dictionary is what names them, not something else); without ``-d`` no RADIUS;
- with the profile and ``-X lua_script:wireshark/tessera.lua``: the message inside the
  attributes decodes (RegisterRequest, RegisterReply, AuthRequest, TicketReply, AuthRequest,
  ErrorMessage 15 replay), as ``tessera_radius`` with the ``tessera.*`` fields.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tessera import message
from tessera.device import DeviceClient
from tessera.identity import DeviceKey, ServerEntry, pem_certificate
from tessera.radius.client import RejectedError
from tessera.realm import Realm, create_kek
from tessera.sqlite_registry import SQLiteRegistry

from tests.gate import needs
from tests.server.realserver import SECRET, make_server

pytestmark = needs("root", "freeradius", "radclient", "tcpdump", "tshark")

TOP = Path(__file__).resolve().parents[2]
REALM = "lab.example"
DEVICE = "switch-ws-1"
PEN = 32473


class Tcpdump:
    """tcpdump on loopback for one UDP port; stopped by its own PID, waited for."""

    def __init__(self, path: Path, port: int):
        self.path, self.log = path, path.with_suffix(".log")
        self.proc = subprocess.Popen(
            ["tcpdump", "-i", "lo", "-n", "-U", "--immediate-mode", "-s", "0", "-w", str(path), f"udp port {port}"],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))
        deadline = time.monotonic() + 10
        while b"listening on" not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tcpdump did not start: {self.log.read_text(errors='replace')}")
            time.sleep(0.01)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def exchange(tmp_path_factory, pki):
    """The pcap of: RegisterRequest → Accept, AuthRequest → Accept, the same AuthRequest again
    → Reject (replay). Returns (pcap path, the server's UDP port, the AuthRequest's bytes)."""
    directory = tmp_path_factory.mktemp("wsradius")
    db, kek = directory / "registry.db", directory / "kek"
    realm = Realm.init(SQLiteRegistry(str(db)), create_kek(str(kek)), REALM, time.time())
    pcap = directory / "radius.pcap"
    device_cas = b"".join(pem_certificate(c) for c in realm.trusted_cas())
    tls = pki.install_server_files(directory / "tls", "radius.lab", time.time(), (device_cas,))
    with make_server(directory, db=db, kek=kek, tls_dir=tls, server_id="radius-1") as server:
        key = DeviceKey.generate()
        now = time.time()
        realm.enrol_key(DEVICE, key.public_bytes(), now, realm.issue_certificate(DEVICE, key.public_bytes(), now))
        dev = DeviceClient(realm.bundle(DEVICE, [ServerEntry("radius-1", server.address, server.port)], SECRET), key)
        client = server.client(timeout=2.0)
        cap = Tcpdump(pcap, server.port)
        try:
            dev.register_reply(client.exchange(DEVICE, lambda sid: dev.register_request(sid, time.time(), os.urandom(16))),
                               time.time())
            auth = dev.auth_request("radius-1", time.time(), os.urandom(16))
            dev.ticket_reply(client.exchange(DEVICE, lambda sid: auth), time.time())
            dev.auth_request("radius-1", time.time(), os.urandom(16))  # the device expects a reply again
            with pytest.raises(RejectedError) as refused:
                client.exchange(DEVICE, lambda sid: auth)  # a fresh packet, the same proof
            assert refused.value.code == 15  # replay
            time.sleep(0.2)  # the last reply reaches the capture
        finally:
            log = cap.stop()
        assert "\n0 packets dropped by kernel" in log, log
        port = server.port
    return pcap, port, auth


def tshark(pcap: Path, port: int | None, config: Path, *args: str) -> str:
    """tshark on the pcap with ``config`` as its personal configuration; with ``port``, that
    port (the server's: a free one, not 1812) is decoded as RADIUS on the command line."""
    env = dict(os.environ, WIRESHARK_CONFIG_DIR=str(config))
    decode = ["-d", f"udp.port=={port},radius"] if port else []
    r = subprocess.run(["tshark", "-n", "-r", str(pcap), *decode, *args],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Could not open file" not in r.stderr, r.stderr  # a dictionary $INCLUDE that failed
    return r.stdout


@pytest.fixture(scope="module")
def profile(tmp_path_factory, exchange) -> Path:
    """A personal configuration made by the tool: the dictionary, and the server's port decoded
    as RADIUS (a "Decode As" entry)."""
    config = tmp_path_factory.mktemp("wsconfig")
    r = subprocess.run([str(TOP / "tools" / "wireshark-profile"), "--config-dir", str(config), "--no-plugin",
                        "--radius-port", str(exchange[1])], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (config / "radius" / "dictionary.tessera").read_bytes() == (TOP / "radius" / "dictionary.tessera").read_bytes()
    return config


def test_profile_names_tessera_attributes(exchange, profile):
    pcap, _, auth = exchange
    port = None  # the profile decodes the server's port as RADIUS itself
    # field names: the dictionary's attribute names with "-" as "_" (radius.Tessera_Message)
    rows = [line.split("\t") for line in tshark(
        pcap, port, profile, "-Y", "radius", "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=|",
        "-e", "radius.code", "-e", "radius.Tessera_Message", "-e", "radius.Tessera_Reply",
        "-e", "radius.Tessera_Error", "-e", "radius.Tessera_Device_Id", "-e", "radius.User_Name").splitlines()]
    codes = [int(r[0]) for r in rows]
    assert codes == [1, 2, 1, 2, 1, 3], codes  # Access-Request/Accept twice, then Request/Reject
    requests = [r for r in rows if r[0] == "1"]
    assert all(r[1] and r[5] == DEVICE for r in requests), requests
    # the instances of Tessera-Message, in order, are the message the device sent
    sent = [bytes.fromhex(r[1].replace("|", "").replace(":", "")) for r in requests]
    assert sent[1] == auth and sent[2] == auth
    assert isinstance(message.decode(sent[0]), message.RegisterRequest)
    assert isinstance(message.decode(sent[1]), message.AuthRequest)
    accepts = [r for r in rows if r[0] == "2"]
    assert all(r[2] for r in accepts)
    assert accepts[0][2].count("|") == 1  # the RegisterReply is split over two Tessera-Reply instances
    reply = bytes.fromhex(accepts[1][2].replace("|", "").replace(":", ""))
    assert isinstance(message.decode(reply), message.TicketReply)
    reject = rows[-1]
    assert reject[3] == "15", reject  # Tessera-Error: Replay
    assert isinstance(message.decode(bytes.fromhex(reject[2].replace("|", "").replace(":", ""))), message.ErrorMessage)

    assert tshark(pcap, port, profile, "-Y", "radius.Tessera_Error == 15", "-T", "fields",
                  "-e", "frame.number").split() == ["6"]  # a display filter on the attribute works
    verbose = tshark(pcap, port, profile, "-Y", "radius.code == 3", "-V")
    assert "Tessera-Error: Replay (15)" in verbose, verbose
    assert "Tessera-Reply" in verbose
    assert "Message-Authenticator" in verbose  # standard attributes still decode by name


def test_lua_decodes_the_message_inside_the_attributes(exchange, profile):
    """With the dissector loaded too, each packet's Tessera-Message / Tessera-Reply instances,
    concatenated, decode as one Tessera message (protocol tessera_radius, tessera.* fields)."""
    pcap, _, _ = exchange
    rows = [line.split("\t") for line in tshark(
        pcap, None, profile, "-X", f"lua_script:{TOP / 'wireshark' / 'tessera.lua'}", "-Y", "tessera_radius",
        "-T", "fields", "-E", "occurrence=a", "-e", "radius.code", "-e", "tessera.type", "-e", "tessera.realm",
        "-e", "tessera.device_id", "-e", "tessera.server_id", "-e", "tessera.code", "-e", "tessera.detail",
        "-e", "_ws.expert.message", "-e", "_ws.col.Info").splitlines()]
    assert [(r[0], r[1]) for r in rows] == [("1", "1"), ("2", "2"), ("1", "3"), ("2", "4"), ("1", "3"), ("3", "15")]
    for r in rows[:5]:
        assert (r[2], r[3]) == (REALM, DEVICE) and r[7] == "", r  # no expert info: well-formed, not "in a frame"
    assert [r[4] for r in rows if r[1] in ("1", "3")] == ["radius-1"] * 3
    assert rows[5][5] == "15" and rows[5][6] == "this proof was already used"
    assert rows[2][8].endswith(f"[AuthRequest {DEVICE} ({REALM})]"), rows[2][8]
    assert rows[5][8].endswith("[ErrorMessage 15 (replay): this proof was already used]"), rows[5][8]


def test_without_profile_no_tessera_names(exchange, tmp_path):
    pcap, port, _ = exchange
    empty = tmp_path / "empty"
    empty.mkdir()
    verbose = tshark(pcap, port, empty, "-X", f"lua_script:{TOP / 'wireshark' / 'tessera.lua'}", "-Y", "radius", "-V")
    assert "Tessera" not in verbose  # the dissector loaded, and nothing to name without the dictionary
    assert "Vendor-Specific" in verbose and str(PEN) in verbose  # the same attributes, unnamed
    assert "User-Name" in verbose
    # and without the profile's Decode As entry the server's port is not RADIUS at all
    assert "RADIUS" not in tshark(pcap, None, empty)
