"""The secured link's hardening (issue 12 review), on real interfaces: the nftables guard keeps the
tunnel's addresses off eth0 (plain and forged-peer-source packets refused where the same traffic
through tessera0 is taken, ARP for them unanswered on eth0) and, after the agent is SIGKILLed,
keeps traffic for a peer's tunnel address from leaving eth0 in clear; without the guard each of
those goes through (the control). On a bare tap: a peer's router advertisement installs no
default route (it does once accept_ra/autoconf are put back), a pre-existing persistent tap is
refused, a deleted tap raises TapGone instead of spinning."""

from __future__ import annotations

import json
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from tessera.agent.guard import ruleset, table_name
from tessera.agent.link import call_in_netns
from tessera.agent.tap import parse_address
from tessera.lab.topology import RealmLab

from tests.gate import needs_lab

pytestmark = needs_lab

ETH_P_ALL, ETH_P_ARP = 0x0003, 0x0806


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp4(src: str, dst: str, dport: int, payload: bytes) -> bytes:
    """An IPv4/UDP packet (UDP checksum 0: none, allowed for IPv4)."""
    udp = struct.pack("!HHHH", 5555, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip[:10] + struct.pack("!H", csum(ip)) + ip[12:] + udp


def udp6(src: str, dst: str, dport: int, payload: bytes) -> bytes:
    """An IPv6/UDP packet (the checksum is mandatory)."""
    s6, d6 = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    udp = struct.pack("!HHHH", 5555, dport, 8 + len(payload), 0) + payload
    c = csum(s6 + d6 + struct.pack("!I3xB", len(udp), 17) + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    return struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + s6 + d6 + udp


def arp_request(sha: bytes, spa: str, tpa: str) -> bytes:
    return b"\xff" * 6 + sha + b"\x08\x06" + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, sha,
                                                          socket.inet_aton(spa), bytes(6), socket.inet_aton(tpa))


def hw(ns: str, ifname: str = "eth0") -> bytes:
    info = json.loads(subprocess.run(["ip", "-j", "-n", ns, "link", "show", ifname], capture_output=True,
                                     text=True, check=True).stdout)[0]
    return bytes.fromhex(info["address"].replace(":", ""))


def packet_socket(ns: str, proto: int = ETH_P_ALL) -> socket.socket:
    s = call_in_netns(ns, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto)))
    s.bind(("eth0", proto))
    return s


def drain(sock: socket.socket, wait: float) -> list[tuple[bytes, int]]:
    """(frame, packet type) of everything the socket got within `wait` seconds."""
    got, end = [], time.monotonic() + wait
    while (left := end - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        data, addr = sock.recvfrom(65536)
        got.append((data, addr[2]))
    return got


def received(sock: socket.socket, wait: float = 0.5) -> dict[bytes, str]:
    """payload → source address of the UDP datagrams a server socket got."""
    got, end = {}, time.monotonic() + wait
    while (left := end - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        data, addr = sock.recvfrom(2048)
        got[data] = addr[0]
    return got


def guard_tables(ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True, text=True).stdout


def test_guard_keeps_tunnel_addresses_off_eth0_and_nothing_leaves_in_clear_after_a_crash(lab):
    rl = RealmLab(lab, 2, capture=False)
    d1, d2 = rl.devices
    for d in rl.devices:
        rl.start_agent(d, tunnel=True)
    assert rl.wait(lambda: rl.peered(d1, [d2.device_id]) and rl.peered(d2, [d1.device_id]), 30)
    t = table_name("tessera0")
    assert f"table inet {t}" in guard_tables(d1.dev.ns) and f"table arp {t}" in guard_tables(d1.dev.ns)
    ns1, ns2 = d1.dev.ns, d2.dev.ns
    mac1, mac2 = hw(ns1), hw(ns2)
    for ns in (ns1, ns2):  # the lab switches IPv6 off; on eth0 it is what a real device has
        lab.run(ns, ["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0"])
    lab.run(ns1, ["ip", "addr", "add", "2001:db8:1::1/64", "dev", "eth0", "nodad"])
    server = call_in_netns(ns1, lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))  # IPv4 and IPv6
    raw = packet_socket(ns2)
    arps = packet_socket(ns2, ETH_P_ARP)
    peer = call_in_netns(ns2, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    peer6 = call_in_netns(ns2, lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
    try:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.bind(("::", 7777))

        def attack() -> tuple[dict[bytes, str], set[str]]:
            """From d2's eth0, in clear (no keys needed): UDP to d1 and ARP requests; through
            tessera0 the same UDP. What d1's server got, and which addresses d1 answered ARP for."""
            drain(arps, 0.05)
            for src, dst, what in (("203.0.113.102", "203.0.113.101", b"plain-to-underlay"),
                                   ("203.0.113.102", "198.51.100.1", b"plain-to-tunnel-address"),
                                   ("198.51.100.2", "198.51.100.1", b"forged-peer-source"),
                                   ("198.51.100.2", "203.0.113.101", b"forged-peer-source-to-underlay")):
                raw.send(mac1 + mac2 + b"\x08\x00" + udp4(src, dst, 7777, what))
            for src, dst, what in (("2001:db8:1::2", "2001:db8:1::1", b"plain6-to-underlay"),
                                   ("2001:db8:1::2", "2001:db8:100::1", b"plain6-to-tunnel-address"),
                                   ("2001:db8:100::2", "2001:db8:100::1", b"forged6-peer-source")):
                raw.send(mac1 + mac2 + b"\x86\xdd" + udp6(src, dst, 7777, what))
            for tpa in ("203.0.113.101", "198.51.100.1"):
                arps.send(arp_request(mac2, "203.0.113.102", tpa))
            for _ in range(5):  # the first may wait for ARP over the tunnel
                peer.sendto(b"through-tessera0", ("198.51.100.1", 7777))
                peer6.sendto(b"through-tessera0-v6", ("2001:db8:100::1", 7777))
                time.sleep(0.05)
            got = {data: src.removeprefix("::ffff:") for data, src in received(server, 1.0).items()}
            answered = {socket.inet_ntoa(f[28:32]) for f, _ in drain(arps, 0.3)
                        if f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02" and f[6:12] == mac1}
            return got, answered

        got, answered = attack()
        assert got.get(b"through-tessera0") == "198.51.100.2"  # the peer, through the tunnel: taken
        assert got.get(b"through-tessera0-v6") == "2001:db8:100::2"
        assert got.get(b"plain-to-underlay") == "203.0.113.102"  # control: the injection works
        assert got.get(b"plain6-to-underlay") == "2001:db8:1::2"
        assert not {b"plain-to-tunnel-address", b"forged-peer-source", b"forged-peer-source-to-underlay",
                    b"plain6-to-tunnel-address", b"forged6-peer-source"} & set(got), got
        assert answered == {"203.0.113.101"}, answered  # ARP for the tunnel address: not on eth0

        # the control: without the guard the same clear packets reach the service, ARP is answered
        lab.run(ns1, ["nft", f"delete table inet {t}; delete table arp {t}"])
        got, answered = attack()
        assert {b"plain-to-tunnel-address", b"forged-peer-source", b"plain6-to-tunnel-address",
                b"forged6-peer-source"} <= set(got), got
        assert "198.51.100.1" in answered, answered
        addrs = [parse_address("198.51.100.1/24"), parse_address("2001:db8:100::1/64")]
        subprocess.run(["ip", "netns", "exec", ns1, "nft", "-f", "-"], input=ruleset("tessera0", addrs),
                       text=True, check=True)  # back as the agent made it

        # the agent crashes: tessera0 and its routes go, the guard stays; with a default route out
        # of eth0 (where the review's leak went), nothing for a peer's tunnel address leaves in clear
        lab.run(ns1, ["ip", "route", "replace", "default", "via", "203.0.113.102", "dev", "eth0"])
        lab.run(ns1, ["ping", "-c", "1", "-W", "2", "203.0.113.102"])  # the gateway's MAC resolved
        d1.agent.popen.kill()  # SIGKILL, by the PID the lab started
        d1.agent.popen.wait(10)
        assert rl.wait(lambda: subprocess.run(["ip", "-n", ns1, "link", "show", "tessera0"],
                                              capture_output=True).returncode != 0, 10)
        assert f"table inet {t}" in guard_tables(ns1)  # the guard outlived the crash
        sniff = packet_socket(ns1)
        try:
            def leak() -> list[bytes]:
                client = call_in_netns(ns1, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                try:
                    for _ in range(3):
                        try:
                            client.sendto(b"SECRET-AFTER-CRASH", ("198.51.100.2", 9999))
                        except OSError:
                            pass  # EPERM: the guard's output chain
                        time.sleep(0.05)
                finally:
                    client.close()
                return [f for f, kind in drain(sniff, 0.5) if b"SECRET-AFTER-CRASH" in f]

            assert leak() == []
            lab.run(ns1, ["nft", f"delete table inet {t}; delete table arp {t}"])
            assert leak(), "control: without the guard the packet should have left eth0"
        finally:
            sniff.close()
    finally:
        for s in (server, raw, arps, peer, peer6):
            s.close()


TAP_SCRIPT = r'''
import ipaddress, json, struct, subprocess, sys, time
from tessera.agent.tap import Tap, TapError, TapGone
from tessera.tunnel import TUNNEL_MTU, tap_hw

def sh(*a):
    return subprocess.run(a, capture_output=True, text=True).stdout

def csum(data):
    if len(data) % 2: data += b"\0"
    s = sum(struct.unpack(f"!{len(data)//2}H", data))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff

out = {}
mac, peer = tap_hw("example.net", "SN-A"), tap_hw("example.net", "SN-B")
subprocess.run(["ip", "link", "set", "lo", "up"])
# a persistent tap of the same name exists: refused; once it is gone: made
subprocess.run(["ip", "tuntap", "add", "tessera0", "mode", "tap"], check=True)
try:
    Tap("tessera0", mac, TUNNEL_MTU)
    out["persistent"] = "adopted"
except TapError as exc:
    out["persistent"] = [exc.errno, str(exc)]
subprocess.run(["ip", "link", "del", "tessera0"], check=True)
t = Tap("tessera0", mac, TUNNEL_MTU, [ipaddress.ip_interface("2001:db8:100::1/64")])
out["sysctls"] = {k: open(f"/proc/sys/net/{k}").read().strip() for k in
                  ("ipv6/conf/tessera0/accept_ra", "ipv6/conf/tessera0/autoconf", "ipv6/conf/tessera0/accept_redirects",
                   "ipv6/conf/tessera0/router_solicitations", "ipv4/conf/tessera0/accept_redirects",
                   "ipv4/conf/tessera0/send_redirects")}
t.set_carrier(True)
time.sleep(0.3)

def ra(prefix):
    src, dst = ipaddress.IPv6Address("fe80::1").packed, ipaddress.IPv6Address("ff02::1").packed
    body = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0) + struct.pack("!BB6s", 1, 1, peer)
    body += struct.pack("!BBBBIII16s", 3, 4, 64, 0xC0, 86400, 14400, 0, ipaddress.IPv6Address(prefix).packed)
    c = csum(src + dst + struct.pack("!I3xB", len(body), 58) + body)
    body = body[:2] + struct.pack("!H", c) + body[4:]
    return b"\x33\x33\x00\x00\x00\x01" + peer + b"\x86\xdd" + struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + src + dst + body

t.write(ra("2001:db8:bad::"))  # what the agent writes for a peer's inner frame
time.sleep(1.0)
out["hardened"] = {"default": sh("ip", "-6", "route", "show", "default").strip(),
                   "addr": sh("ip", "-6", "-br", "addr", "show", "dev", "tessera0").strip()}
for k in ("accept_ra", "autoconf"):  # the control: the kernel's defaults back
    open(f"/proc/sys/net/ipv6/conf/tessera0/{k}", "w").write("1")
t.write(ra("2001:db8:bad::"))
time.sleep(1.0)
out["defaults"] = {"default": sh("ip", "-6", "route", "show", "default").strip(),
                   "addr": sh("ip", "-6", "-br", "addr", "show", "dev", "tessera0").strip()}
# deleted under us: TapGone from read and write, not a spin
n = 0
while n < 100 and t.read() is not None:  # what the kernel sent (MLD, ND): read, no error
    n += 1
out["before"] = [t.read() is None, t.write(b"\xff" * 6 + peer + b"\x08\x00" + bytes(46))]
subprocess.run(["ip", "link", "del", "tessera0"], check=True)
for op in ("read", "write"):
    try:
        t.read() if op == "read" else t.write(bytes(60))
        out[op] = "no error"
    except TapGone as exc:
        out[op] = ["TapGone", exc.errno, str(exc)]
out["gone"] = t.gone
t.close()
print(json.dumps(out))
'''


def test_tap_refuses_a_persistent_twin_takes_no_router_advertisement_and_reports_deletion(lab):
    ns = lab.add_ns("tap")
    lab.run(ns, ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"])
    done = lab.run(ns, [sys.executable, "-c", TAP_SCRIPT], timeout=60)
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["persistent"][0] == 16 and "exists already" in out["persistent"][1], out["persistent"]
    assert set(out["sysctls"].values()) == {"0"}, out["sysctls"]
    assert out["hardened"]["default"] == "" and "2001:db8:bad:" not in out["hardened"]["addr"], out["hardened"]
    assert "fe80::1" in out["defaults"]["default"] and "proto ra" in out["defaults"]["default"], out["defaults"]
    assert out["before"] == [True, None]  # control: a live tap reads nothing waiting, takes a frame
    assert out["read"][0] == "TapGone" and out["write"][0] == "TapGone" and out["gone"], out


def test_agent_whose_tap_is_deleted_exits_1_once_and_keeps_the_guard(lab):
    """`ip link del tessera0` under a running agent: the agent says so once and exits with status
    1 (its service manager starts it again with a fresh tap), leaving the guard in place -- where
    before it spun on the dead fd, logging an internal error per wakeup. Its neighbour, whose tap
    was left alone, keeps running (the control)."""
    rl = RealmLab(lab, 2)
    d1, d2 = rl.devices
    rl.set_carriers(rl.devices, True)
    for d in rl.devices:
        rl.start_agent(d, tunnel=True)
    assert rl.wait(lambda: rl.peered(d1, [d2.device_id]) and rl.peered(d2, [d1.device_id]), 20)
    subprocess.run(["ip", "-n", d1.dev.ns, "link", "del", "tessera0"], check=True)
    assert rl.wait(lambda: not d1.agent.alive(), 10), "the agent went on without its tap"
    assert d1.agent.popen.returncode == 1
    log = open(d1.agent.log_path).read()
    assert log.count("tunnel tessera0 gone") == 1, log[-3000:]
    assert "internal error" not in log, log[-3000:]
    listed = subprocess.run(["ip", "netns", "exec", d1.dev.ns, "nft", "list", "table", "inet", table_name("tessera0")],
                            capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr  # the guard outlives the tap
    assert d2.agent.alive() and rl.status(d2) is not None
    d1.agent = None  # ended; the lab's cleanup has nothing left to stop
    # a clean stop keeps the guard too (nothing for the tunnel's prefixes in clear until the next
    # start rebuilds it); `tessera-agent unguard` removes it, and only that
    rl.stop_agent(d2)
    def guarded(ns: str) -> bool:
        return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", table_name("tessera0")],
                              capture_output=True).returncode == 0
    assert guarded(d2.dev.ns)
    agent_bin = str(Path(sys.executable).with_name("tessera-agent"))  # the venv's
    done = subprocess.run(["ip", "netns", "exec", d2.dev.ns, agent_bin, "unguard"], capture_output=True, text=True)
    assert done.returncode == 0 and "removed" in done.stdout, done.stderr
    assert not guarded(d2.dev.ns) and guarded(d1.dev.ns)
