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
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from tessera.lab.netns import Lab, LabError, Proc, mac_for
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


def hostapd_conf(port: str, radius: RadiusServer, ctrl_dir: str, own_ip: str,
                 nas_identifier: str, das: tuple[int, str, str] | None = None) -> str:
    """hostapd.conf for one wired 802.1X authenticator port (pure). ``das`` = (port, client
    address, secret) makes it take Disconnect-Requests from that client; its secret is the
    DAS secret, not the NAS secret hostapd uses towards the RADIUS server."""
    das_lines = "" if das is None else f"""\
# RFC 5176 Disconnect-Request from the realm (tessera-admin revoke): deauthenticate the station
radius_das_port={das[0]}
radius_das_client={das[1]} {das[2]}
radius_das_require_event_timestamp=1
radius_das_require_message_authenticator=1
"""
    return f"""\
# hostapd for switch port {port}: wired 802.1X authenticator, RADIUS to {radius.addr}
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
auth_server_addr={radius.addr}
auth_server_port={radius.port}
auth_server_shared_secret={radius.secret}
# NAS-Port-Id (87) = this port's name, so the server knows where the device sits
radius_auth_req_attr=87:s:{port}
""" + das_lines


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

    def __init__(self, lab: Lab, radius: RadiusServer | None = None, short: str = "sw",
                 nas_identifier: str = "tessera-lab-switch", das: tuple[str, str] | None = None):
        """``das`` = (client address, secret): every port's hostapd takes Disconnect-Requests
        on DAS_BASE_PORT + its index, and calls itself ``<nas_identifier>-pN``. The DAS secret
        must differ from the NAS secret of ``radius``: whoever holds one of them must not be
        able to speak the other relation."""
        if das is not None and radius is not None and das[1] == radius.secret:
            raise LabError("the DAS secret must differ from the NAS secret (one secret per trust relation)")
        self.lab = lab
        self.das = das
        self.radius = radius or RadiusServer()
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
        """Uncontrolled port to ``peer_ns`` (the RADIUS server); management IP on br0."""
        self.lab.add_veth(self.ns, port, peer_ns, peer_if)
        self.lab.enslave(self.ns, port)
        self.lab.add_addr(self.ns, "br0", f"{switch_ip}/24")
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

    def start_hostapd(self, port: str) -> Proc:
        """Write the port's hostapd.conf and start hostapd; wait for its control socket."""
        conf = os.path.join(self.lab.workdir, f"hostapd-{port}.conf")
        with open(conf, "w") as f:
            f.write(hostapd_conf(port, self.radius, self.ctrl_dir, SWITCH_MGMT_IP, self.port_nas_identifier(port),
                                 (self.das_port(port), *self.das) if self.das else None))
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

    def close(self) -> None:
        """Stop the controller thread (processes and namespaces go with the Lab)."""
        if self.controller is not None:
            self.controller.stop()
            self.controller = None
