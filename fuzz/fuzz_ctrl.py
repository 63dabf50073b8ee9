"""Fuzz what the agent reads from wpa_supplicant's (and hostapd's) control socket: datagrams
through the real `CtrlClient` over a real UNIX datagram socket, and the pure parsers
`parse_event` / `parse_kv` that `Supplicant.status()` / `events()` use.

One input is a list of datagrams (a two-byte length, then that many bytes). A stand-in daemon
socket sends them all to the client, then the agent asks `STATUS` as `Supplicant.status()` does
(`request` returns the first datagram that is not an event, setting events aside) and reads
what is left with `pump()` as `Supplicant.events()` does.

Contract: `request` returns the reply text or raises `CtrlError` (only when no reply came);
`pump` returns events; `parse_kv` returns a str → str dict whose every key came from a line of
the reply; `parse_event` returns None or an event whose level is 0..9, whose name has no
whitespace, and whose MAC (if any) is six lower-case hex pairs found in the text. Nothing else
escapes and the client never hangs (every wait here is bounded by a zero timeout).

    python fuzz/fuzz_ctrl.py -runs=1000000 [CORPUS_DIR]
"""

import os
import re
import shutil
import socket
import tempfile

import common

with common.instrumented():
    from tessera.agent import ctrl

MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


def datagrams_of(data: bytes) -> list[bytes]:
    out, i = [], 0
    while i + 2 <= len(data) and len(out) < 32:
        n = int.from_bytes(data[i:i + 2], "big") % 9000
        out.append(data[i + 2:i + 2 + n])
        i += 2 + n
    return out


def check_event(ev) -> None:
    assert isinstance(ev.level, int) and 0 <= ev.level <= 9, ev.level
    assert ev.name and not any(c.isspace() for c in ev.name), ev.name
    assert ev.mac is None or (MAC.fullmatch(ev.mac) and ev.mac in ev.text), ev.mac
    ev.line


def check_kv(reply: str) -> None:
    kv = ctrl.parse_kv(reply)
    lines = reply.splitlines()
    for k, v in kv.items():
        assert isinstance(k, str) and isinstance(v, str)
        assert any(line.startswith(k + "=") for line in lines), k


def make():
    workdir = tempfile.mkdtemp(prefix="tessera-fuzz-ctrl-")
    path = os.path.join(workdir, "eth0")
    daemon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    daemon.bind(path)
    daemon.setblocking(False)
    client = ctrl.CtrlClient(path, timeout=0.0, connect_timeout=1.0)
    common.on_exit(lambda: shutil.rmtree(workdir, True))
    common.on_exit(client.close)
    peer = client._local

    def test_one(data: bytes) -> None:
        grams = datagrams_of(data)
        for g in grams:
            try:
                daemon.sendto(g, peer)
            except BlockingIOError:  # the client's queue is full: the kernel drops the rest
                break
        try:
            reply = client.request("STATUS", timeout=0.0)
        except ctrl.CtrlError:
            reply = None  # nothing but events (or nothing) came
        while True:  # the daemon's side: take the command(s) the client sent
            try:
                daemon.recv(65536)
            except BlockingIOError:
                break
        for ev in client.pump(0.0):
            check_event(ev)
        if reply is not None:
            assert ctrl.parse_event(reply) is None
            check_kv(reply)
        for g in grams:
            text = g.decode(errors="replace")
            ev = ctrl.parse_event(text, 1.0)
            if ev is not None:
                check_event(ev)
            ctrl.is_event(text)
            check_kv(text)

    def gram(s: str | bytes) -> bytes:
        b = s.encode() if isinstance(s, str) else s
        return len(b).to_bytes(2, "big") + b

    status = ("bssid=01:80:c2:00:00:03\nfreq=0\nssid=\nid=0\nmode=station\npairwise_cipher=NONE\n"
              "group_cipher=NONE\nkey_mgmt=IEEE 802.1X (no WPA)\nwpa_state=COMPLETED\nip_address=192.0.2.7\n"
              "Supplicant PAE state=AUTHENTICATED\nsuppPortStatus=Authorized\nEAP state=SUCCESS\n"
              "selectedMethod=13 (EAP-TLS)\neap_tls_version=TLSv1.3\nEAP TLS cipher=TLS_AES_256_GCM_SHA384\n"
              "uuid=6f2b2c3e-1b1a-5f7e-9d3c-2a1b0c9d8e7f\n")
    sta = "02:00:00:00:00:0a\nflags=[AUTH][AUTHORIZED]\ndot1xAuthSessionId=1A2B3C\nconnected_time=12\n"
    events = ["<3>CTRL-EVENT-EAP-STARTED EAP authentication started",
              "<3>CTRL-EVENT-EAP-METHOD EAP vendor 0 method 13 (TLS) selected",
              "<3>CTRL-EVENT-EAP-SUCCESS EAP authentication completed successfully",
              "<3>CTRL-EVENT-EAP-FAILURE EAP authentication failed",
              "<3>CTRL-EVENT-CONNECTED - Connection to 01:80:c2:00:00:03 completed [id=0 id_str=]",
              "<3>AP-STA-CONNECTED 02:00:00:00:00:0a", "<3>CTRL-EVENT-EAP-SUCCESS2 02:00:00:00:00:0b"]
    seeds = [gram(status), gram(events[0]) + gram(status) + gram(events[2]), gram(sta), gram("OK\n"),
             gram("FAIL\n"), b"".join(gram(e) for e in events), gram(""), gram(b"\xff\xfe<3>\x00 x")]
    return test_one, seeds


if __name__ == "__main__":
    common.harness_main("ctrl", make, max_len=20000)
