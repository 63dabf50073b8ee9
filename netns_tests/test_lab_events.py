"""Links up truly at once and the agents' event stream: `set_links` brings many ports up in one
netlink batch (its bytes checked against pyroute2's own ifinfmsg encoder), refuses a name that
is not there; agents started with `--events` report their milestones on one FIFO as they
happen -- an enrolled device link-up → authorized → registered → ticketed → peered, a stranger
never past link-up."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import time

import pytest
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from tessera.lab.netns import LabError, parse_acks, set_links, setlink_batch, sh
from tessera.lab.topology import RealmLab

from tests.gate import needs_lab


def _pyroute2_setlink(index: int, up: bool, seq: int) -> bytes:
    msg = ifinfmsg()
    msg["header"]["type"] = 16  # RTM_NEWLINK
    msg["header"]["flags"] = 0x1 | 0x4  # NLM_F_REQUEST | NLM_F_ACK
    msg["header"]["sequence_number"] = seq
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = index
    msg["flags"] = 1 if up else 0
    msg["change"] = 1  # IFF_UP only
    msg.encode()
    return bytes(msg.data)


def test_setlink_batch_is_pyroute2s_messages_back_to_back():
    assert setlink_batch([7, 9, 12], True, seq0=5) == b"".join(
        _pyroute2_setlink(i, True, s) for i, s in ((7, 5), (9, 6), (12, 7)))
    assert setlink_batch([3], False) == _pyroute2_setlink(3, False, 1)


def test_parse_acks_reads_each_error_message():
    def ack(seq: int, err: int) -> bytes:  # nlmsgerr: header, int error, the request's header
        return struct.pack("=LHHLLi", 36, 2, 0x100, seq, 0, -err) + bytes(16)
    assert parse_acks(ack(1, 0) + ack(2, 19) + ack(3, 0)) == {1: 0, 2: 19, 3: 0}


def _up(ns: str, ifname: str) -> bool:
    flags = sh(["ip", "-o", "link", "show", ifname], ns=ns).stdout.decode().split("<", 1)[1].split(">")[0]
    return "UP" in flags.split(",")


@needs_lab
def test_set_links_brings_every_port_up_in_one_batch_and_refuses_an_unknown_name(lab):
    sw = lab.add_ns("sw")
    ports = [f"p{i}" for i in range(1, 5)]
    for i, p in enumerate(ports, 1):
        lab.add_veth(sw, p, lab.add_ns(f"d{i}"), "eth0", up=False)
    assert not any(_up(sw, p) for p in ports)
    t0 = set_links(sw, ports, True)
    assert t0 <= time.monotonic() and all(_up(sw, p) for p in ports)
    with pytest.raises(LabError, match="nope"):
        set_links(sw, ["p1", "nope"], False)
    assert _up(sw, "p1")  # nothing of a refused batch was sent
    set_links(sw, ports[:2], False)
    assert [_up(sw, p) for p in ports] == [False, False, True, True]


@needs_lab
def test_agents_report_milestones_from_link_up_to_peered(lab):
    rl = RealmLab(lab, 3, enrol=2, capture=False)
    a, b, stranger = rl.devices
    events = rl.events()
    rl.set_carriers(rl.devices, False)
    for d in rl.devices:
        rl.start_agent(d, events=events)
    started = {e["device"]: e["pid"] for e in events.read_until(lambda seen: len(seen) == 3, 10)}
    assert started == {d.device_id: d.agent.pid for d in rl.devices}
    t0 = rl.set_carriers(rl.devices, True)
    got = events.read_until(lambda seen: {("peered", a.device_id), ("peered", b.device_id)}
                      <= {(e["event"], e["device"]) for e in seen}, 30)
    for d, peer in ((a, b), (b, a)):
        mine = [e for e in got if e["device"] == d.device_id]
        assert [e["event"] for e in mine][:4] == ["link-up", "authorized", "registered", "ticketed"]
        assert [e.get("peer") for e in mine if e["event"] == "peered"] == [peer.device_id]
        assert all(t0 <= x["t"] <= y["t"] for x, y in zip(mine, mine[1:]))
    assert rl.send(a, b.device_id, "first")["ok"]
    rec = events.read_until(lambda seen: any(e["event"] == "record" for e in seen), 10)
    assert [(e["device"], e["peer"]) for e in rec if e["event"] == "record"] == [(b.device_id, a.device_id)]
    # the stranger's certificate is refused: it saw carrier and nothing more
    assert rl.wait(lambda: "EAP-TLS refused" in open(stranger.agent.log_path).read(), 15)
    assert {e["event"] for e in got + rec if e["device"] == stranger.device_id} <= {"link-up"}



def test_event_stream_never_blocks_the_agent_and_writes_whole_lines(tmp_path):
    from tessera.agent.daemon import EventStream
    from tessera.lab.topology import AgentEvents

    fifo = tmp_path / "slow.fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="nobody reads"):  # a FIFO without its reader: refused at start, not hung
        EventStream(str(fifo), "dev-01")
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fcntl.fcntl(reader, 1031, 4096)  # F_SETPIPE_SZ: one page, full after a few dozen lines
        stream = EventStream(str(fifo), "dev-01")
        start = time.monotonic()
        for i in range(500):  # nobody reads meanwhile
            stream.emit("peered", f"dev-{i:03d}")
        assert time.monotonic() - start < 5 and stream.dropped > 0  # lines lost, the agent not stalled
        lines = os.read(reader, 1 << 16).split(b"\n")
        assert lines[-1] == b""  # whole lines only
        got = [json.loads(x) for x in lines[:-1]]
        assert got[0]["event"] == "started" and got[0]["pid"] == os.getpid()
        peers = [e["peer"] for e in got[1:]]
        assert peers == [f"dev-{i:03d}" for i in range(len(peers))] and 0 < len(peers) < 500  # in order
        stream.close()
    finally:
        os.close(reader)
    events = AgentEvents(tmp_path / "events.fifo")  # the lab's reader drains as lines come
    try:
        stream = EventStream(str(events.path), "dev-02")
        for i in range(2000):
            stream.emit("record", f"dev-{i:04d}")
        got = []
        while len(got) < 2001 and (more := events.read(5)):
            got += more
        assert stream.dropped == 0 and [e.get("peer") for e in got[1:]] == [f"dev-{i:04d}" for i in range(2000)]
        assert got[-1] == {"t": pytest.approx(time.monotonic(), abs=5), "time": pytest.approx(time.time(), abs=5),
                           "device": "dev-02", "event": "record", "peer": "dev-1999"}
        stream.close()
    finally:
        events.close()
