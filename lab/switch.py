"""The lab switch: a namespace with bridge br0, one hostapd per 802.1X port, a port controller.

How this works
--------------
``Switch(lab, radius=RadiusServer(...))`` makes namespace ``sw`` with bridge ``br0`` (STP
off).  :meth:`Switch.add_device` makes a device namespace ``devN`` wired to switch port
``pN`` (``ip link add pN netns SW type veth peer name eth0 netns DEVN``), enslaves ``pN`` and
starts a hostapd for it (``driver=wired``; config from :func:`hostapd_conf`, a pure
function).  :meth:`Switch.add_uplink` wires an uncontrolled port (the RADIUS server's link)
and gives ``br0`` the switch's management address, from which hostapd talks RADIUS.
:meth:`Switch.start_controller` starts the :class:`~tessera.lab.portctl.PortController`
thread, which installs the nftables table and from then on enforces port state.

Addresses: management 203.0.113.0/24 (switch .1, RADIUS .2); device data 192.0.2.0/24.

``radius`` may name several servers (a realm on several hosts): each hostapd then lists them
all as repeated ``auth_server_*`` blocks, rotated by port (pN starts at server (N-1) mod S, as
switches spread their load), and one uplink per server (:meth:`Switch.add_uplink` with ``port``)
wires them; a server's crash then meets only the ports that list it first.

hostapd 2.10 has no dead-server detection (no Status-Server, RFC 5997): it fails over to the next
server only when an Access-Request sent at 0, 3, 9 and 21 s is due again unanswered, 45 s after
it was first sent (src/radius/radius_client.c, radius_client_timer; an ICMP "port unreachable"
from a dead server changes nothing), and then stays on that server. A supplicant that restarts
EAP meanwhile loses that: the third EAP start without success removes the station (AUTH_PAE
reAuthMax = 2) and with it its pending requests (radius_client_flush_auth); hostapd itself starts
over once after 30 s (serverTimeout). The agent therefore waits through a silent RADIUS path
(tessera.node, admission_silent_timeout): a port flapped while its first server is dead opens
through the next ~45 s after link-up (before that change: still closed after 180 s). Not so when
the cable was out for less than 5 s: the port controller's DEAUTHENTICATE on carrier loss
removes the station 5 s later (AP_MAX_INACTIVITY_AFTER_DEAUTH), flushing the request the
re-admission sent meanwhile; the controller has hostapd start EAP for it again a second later
(``NEW_STA``, lab/portctl.py), where before EAP started over only when wpa_supplicant's own 30 s
ran out (measured then: open after 76 s; with a dead first server the new request still waits
its 45 s). ``radius_retry_primary_interval`` is left unset: hostapd 2.10 goes
back to the first server blind, so while that is still down every interval would cost the next
admission on the port another 45 s.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Sequence

from tessera.lab.netns import Lab, LabError, Proc, mac_for, set_links
from tessera.lab.portctl import PortController

MGMT_NET = "203.0.113.0/24"
SWITCH_MGMT_IP = "203.0.113.1"
RADIUS_IP = "203.0.113.2"


@dataclass(frozen=True)
class RadiusServer:
    """Where hostapd sends Access-Requests: the realm's NAS listener (the ``tessera-nas`` site)
    and the NAS secret, which only switches hold (devices have their own, on another listener)."""
    addr: str = RADIUS_IP
    port: int = 1812
    secret: str = "testing123"


DAS_BASE_PORT = 3800  # the DAS (RFC 5176) port of pN's hostapd is DAS_BASE_PORT + N


def hostapd_conf(port: str, radius: RadiusServer | Sequence[RadiusServer], ctrl_dir: str, own_ip: str,
                 nas_identifier: str, das: tuple[int, str, str] | None = None) -> str:
    """hostapd.conf for one wired 802.1X authenticator port (pure). ``radius``: one server or
    several (primary first; the others are hostapd's failover order). ``das`` = (port, client
    address, secret) makes it take Disconnect-Requests from that client; its secret is the
    DAS secret, not the NAS secret hostapd uses towards the RADIUS server."""
    servers = (radius,) if isinstance(radius, RadiusServer) else tuple(radius)
    das_lines = "" if das is None else f"""\
# RFC 5176 Disconnect-Request from the realm (tessera-admin revoke): deauthenticate the station
radius_das_port={das[0]}
radius_das_client={das[1]} {das[2]}
radius_das_require_event_timestamp=1
radius_das_require_message_authenticator=1
"""
    failover = "" if len(servers) == 1 else (
        "# more RADIUS servers of the realm: tried in this order when the current one stops answering\n")
    auth = "".join(f"""\
auth_server_addr={r.addr}
auth_server_port={r.port}
auth_server_shared_secret={r.secret}
""" + (failover if i == 0 else "") for i, r in enumerate(servers))
    return f"""\
# hostapd for switch port {port}: wired 802.1X authenticator, RADIUS to {", ".join(r.addr for r in servers)}
interface={port}
driver=wired
logger_stdout=-1
logger_stdout_level=1
ctrl_interface={ctrl_dir}
ctrl_interface_group=0
# 802.1X-2004 EAPOL, sent to the PAE group address 01:80:c2:00:00:03 (no unicast learning)
ieee8021x=1
eapol_version=2
use_pae_group_addr=1
eap_reauth_period=0
own_ip_addr={own_ip}
nas_identifier={nas_identifier}
{auth}# NAS-Port-Id (87) = this port's name, so the server knows where the device sits
radius_auth_req_attr=87:s:{port}
""" + das_lines


def port_servers(radii: Sequence[RadiusServer], port: str) -> tuple[RadiusServer, ...]:
    """The servers port pN's hostapd lists (pure): rotated to start at server (N-1) mod S."""
    k = (int(port.lstrip("p")) - 1) % len(radii)
    return tuple(radii[k:]) + tuple(radii[:k])


@dataclass
class Device:
    """One device namespace wired to one switch port."""
    index: int
    ns: str
    port: str
    mac: str
    ifname: str = "eth0"
    ip: str | None = None


class Switch:
    """Switch namespace with br0, hostapd per port and a port controller."""

    def __init__(self, lab: Lab, radius: RadiusServer | Sequence[RadiusServer] | None = None, short: str = "sw",
                 nas_identifier: str = "tessera-lab-switch", das: tuple[str, str] | None = None):
        """``radius``: the realm's server, or its servers (each port lists them rotated: `port_servers`).
        ``das`` = (client address, secret): every port's hostapd takes Disconnect-Requests
        on DAS_BASE_PORT + its index, and calls itself ``<nas_identifier>-pN``. The DAS secret
        must differ from the NAS secret of ``radius``: whoever holds one of them must not be
        able to speak the other relation."""
        radii = (radius or RadiusServer(),) if radius is None or isinstance(radius, RadiusServer) else tuple(radius)
        if das is not None and radius is not None and any(das[1] == r.secret for r in radii):
            raise LabError("the DAS secret must differ from the NAS secret (one secret per trust relation)")
        self.lab = lab
        self.das = das
        self.radii = radii
        self.radius = radii[0]
        self._mgmt_ip: str | None = None
        self.ns = lab.add_ns(short)
        self.nas_identifier = nas_identifier
        self.ctrl_dir = os.path.join(lab.workdir, "hostapd")
        os.makedirs(self.ctrl_dir, exist_ok=True)
        self.devices: dict[str, Device] = {}
        self.hostapd: dict[str, Proc] = {}
        self.controller: PortController | None = None
        lab.add_bridge(self.ns, "br0")

    # -- wiring
    def add_uplink(self, peer_ns: str, peer_if: str = "eth0", port: str = "uplink",
                   switch_ip: str = SWITCH_MGMT_IP, peer_ip: str = RADIUS_IP) -> None:
        """Uncontrolled port to ``peer_ns`` (a RADIUS server); management IP on br0 (once, however
        many uplinks)."""
        self.lab.add_veth(self.ns, port, peer_ns, peer_if)
        self.lab.enslave(self.ns, port)
        if self._mgmt_ip is None:
            self.lab.add_addr(self.ns, "br0", f"{switch_ip}/24")
            self._mgmt_ip = switch_ip
        self.lab.add_addr(peer_ns, peer_if, f"{peer_ip}/24")

    def add_device(self, index: int, ip: bool = True, start_hostapd: bool = True) -> Device:
        """Namespace ``d<index>`` wired to port ``p<index>``; its hostapd is started."""
        ns = self.lab.add_ns(f"d{index}")
        port, mac = f"p{index}", mac_for(index)
        self.lab.add_veth(self.ns, port, ns, "eth0", b_mac=mac)
        self.lab.enslave(self.ns, port)
        dev = Device(index, ns, port, mac)
        if ip:
            dev.ip = f"192.0.2.{index + 100}"
            self.lab.add_addr(ns, "eth0", f"{dev.ip}/24")
        self.devices[port] = dev
        if start_hostapd:
            self.start_hostapd(port)
        return dev

    def port_servers(self, port: str) -> tuple[RadiusServer, ...]:
        return port_servers(self.radii, port)

    def start_hostapd(self, port: str) -> Proc:
        """Write the port's hostapd.conf and start hostapd; wait for its control socket."""
        conf = os.path.join(self.lab.workdir, f"hostapd-{port}.conf")
        with open(conf, "w") as f:
            das = (self.das_port(port), *self.das) if self.das else None
            f.write(hostapd_conf(port, self.port_servers(port), self.ctrl_dir, SWITCH_MGMT_IP,
                                 self.port_nas_identifier(port), das))
        sock = os.path.join(self.ctrl_dir, port)
        if os.path.exists(sock):
            os.unlink(sock)
        proc = self.lab.spawn(f"hostapd-{port}", self.ns, ["hostapd", conf])
        self.hostapd[port] = proc
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            if not proc.alive() or time.monotonic() > deadline:
                raise LabError(f"hostapd on {port} did not start; see {proc.log_path}")
            time.sleep(0.01)
        if self.controller is not None and port not in self.controller.state.ports:
            self.controller.add_port(port)
        return proc

    def port_nas_identifier(self, port: str) -> str:
        """With DAS each port's hostapd is its own NAS (one DAS endpoint each)."""
        return f"{self.nas_identifier}-{port}" if self.das else self.nas_identifier

    @staticmethod
    def das_port(port: str) -> int:
        return DAS_BASE_PORT + int(port.lstrip("p"))

    def start_controller(self) -> PortController:
        """Install the nftables table and start enforcing all current ports."""
        ctl = PortController(self.ns, sorted(self.hostapd), self.ctrl_dir)
        ctl.start()
        self.controller = ctl
        return ctl

    # -- operations used by tests and the demo
    def set_carrier(self, port: str, up: bool) -> None:
        """Simulate pulling/plugging the cable: switch-side port admin down/up.

        The device's eth0 stays admin up and only loses carrier, as with a real cable.
        """
        self.lab.set_link(self.ns, port, up)

    def set_carriers(self, ports: list[str], up: bool) -> float:
        """`set_carrier` for many ports truly at once: one netlink batch (`set_links`).
        Returns the time.monotonic() of the batch."""
        return set_links(self.ns, ports, up)

    def close(self) -> None:
        """Stop the controller thread (processes and namespaces go with the Lab)."""
        if self.controller is not None:
            self.controller.stop()
            self.controller = None
