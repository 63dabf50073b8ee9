"""The `tessera0` TAP interface: the agent's end of the secured link's data path (tessera.tunnel).

How this works
--------------
:class:`Tap` opens ``/dev/net/tun`` and attaches a TAP interface with ``TUNSETIFF``
(``IFF_TAP | IFF_NO_PI``: whole Ethernet frames, no packet-info header). It is **not
persistent**: the kernel removes the interface, its addresses and routes when the fd closes, so
an agent that exits or crashes takes tessera0 with it. Then, with ioctls on a throw-away
datagram socket in the same namespace: MAC (``SIOCSIFHWADDR``: the deterministic
``tessera.tunnel.tap_mac``), MTU (``SIOCSIFMTU``: 1452, ``tessera.tunnel.TUNNEL_MTU``) and admin
up (``SIOCSIFFLAGS``), a queue of 1000 frames (``SIOCSIFTXQLEN``: a tap's 500 overflowed while the
agent was busy with a rekey, measured: TCP retransmits); addresses (IPv4 and IPv6, several of each) with one rtnetlink
``RTM_NEWADDR`` each, struct-built (rtnetlink(7): nlmsghdr, ifaddrmsg, IFA_LOCAL / IFA_ADDRESS),
IPv6 ones with ``IFA_F_NODAD`` so that they are usable at once (and IPv6 switched on for this
interface: the lab's namespaces switch it off for all). No pyroute2: its IPRoute would
cost every agent megabytes (tests/unit/test_agent_imports.py).

Hardening (issue 12 review): ``IFF_TUN_EXCL`` in ``TUNSETIFF``, so a tap of that name that
already exists (a persistent one someone made, perhaps owned by another user who could attach to
it after us and read the tunnel's traffic in clear) is refused (EBUSY) instead of adopted.
Before it goes up: no router advertisements, no SLAAC, no redirects, no router solicitations
(``net.ipv6.conf.<tap>.accept_ra/autoconf/accept_redirects/router_solicitations`` = 0,
``net.ipv4.conf.<tap>.accept_redirects/send_redirects`` = 0): a peer may send frames, not
routes. Every OSError of the set-up (ioctl, sysctl, netlink error or timeout, ENOBUFS) is a
:class:`TapError` naming the step.

The carrier follows the sessions (``TUNSETCARRIER``, Linux ≥ 5.0): off while the agent has no
peer session, so the kernel does not queue traffic into a link that leads nowhere.

Per frame: ``read()`` is one ``read(2)`` on the non-blocking fd (``None`` when drained),
``write()`` one ``write(2)``. A frame the kernel will not take (a full queue: EAGAIN/ENOBUFS; a
frame it refuses: EINVAL; the interface set down: EIO) is dropped and counted (``write_drops``),
as a link would. Any other error means the interface is gone (``ip link del``: EBADFD, and the fd
stays readable for ever): :class:`TapGone` -- the agent must stop selecting on it and exit
non-zero (systemd restarts it), not spin.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import socket
import struct

TUNSETIFF = 0x400454CA
TUNSETCARRIER = 0x400454E2
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_TUN_EXCL = 0x8000  # refuse an interface of that name that exists already
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
SIOCSIFMTU = 0x8922
SIOCSIFHWADDR = 0x8924
SIOCGIFINDEX = 0x8933
SIOCSIFTXQLEN = 0x8943
TXQUEUELEN = 1000  # frames the kernel queues for the agent to read (a tap's default is 500)
IFF_UP = 0x1
ARPHRD_ETHER = 1
RTM_NEWADDR = 20
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL = 0x1, 0x4, 0x400, 0x200
NLMSG_ERROR = 2
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD = 0x02
RT_SCOPE_UNIVERSE = 0
TUN_PATH = "/dev/net/tun"


class TapError(OSError):
    """The tap could not be made or configured; the message names the step."""


class TapGone(TapError):
    """The tap failed under us (deleted: EBADFD): stop using it; the agent exits non-zero."""


# Written before the tap goes up: a peer may send frames, not routes (tessera0 is a link to
# peers, never to a router; routes over it are configured, or learned by a routing daemon).
TAP_SYSCTLS = (("ipv6", "accept_ra"), ("ipv6", "autoconf"), ("ipv6", "accept_redirects"),
               ("ipv6", "router_solicitations"), ("ipv4", "accept_redirects"), ("ipv4", "send_redirects"))
# the interface itself is gone (deleted: EBADFD; its device unregistered): anything else a write
# meets (a full queue, a refused frame, the interface down, memory pressure) drops that frame
GONE = frozenset({errno.EBADFD, errno.EBADF, errno.ENODEV, errno.ENXIO})


def parse_address(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """'198.51.100.1/24' or '2001:db8:100::1/64' → an interface address; ValueError names what is wrong."""
    if "/" not in text:
        raise ValueError(f"{text!r}: give the address with its prefix length, e.g. 198.51.100.1/24")
    try:
        return ipaddress.ip_interface(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address with a prefix length: {exc}") from None


def newaddr_request(index: int, addr: ipaddress.IPv4Interface | ipaddress.IPv6Interface, seq: int = 1) -> bytes:
    """RTM_NEWADDR for `addr` on interface `index` (IPv6: IFA_F_NODAD)."""
    family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    packed = addr.ip.packed
    flags = IFA_F_NODAD if addr.version == 6 else 0
    body = struct.pack("=BBBBI", family, addr.network.prefixlen, flags, RT_SCOPE_UNIVERSE, index)
    for kind, value in ((IFA_LOCAL, packed), (IFA_ADDRESS, packed), (IFA_FLAGS, struct.pack("=I", flags))):
        attr = struct.pack("=HH", 4 + len(value), kind) + value
        body += attr + b"\0" * (-len(attr) % 4)
    return struct.pack("=LHHLL", 16 + len(body), RTM_NEWADDR,
                       NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq, 0) + body


def _ifreq(name: str, tail: bytes = b"") -> bytes:
    return struct.pack("16s", name.encode()) + tail.ljust(24, b"\0")


class Tap:
    """A non-persistent TAP interface `name`, configured and up; `fileno()` for select()."""

    def __init__(self, name: str, mac: bytes, mtu: int, addresses=(), txqueuelen: int = TXQUEUELEN):
        if not 0 < len(name.encode()) < 16:
            raise ValueError(f"interface name {name!r}: 1 to 15 bytes")
        try:
            self.fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise TapError(exc.errno, f"{TUN_PATH}: {exc.strerror}") from None
        self.name, self.carrier = name, None
        self.write_drops = 0  # frames the kernel would not take (full queue, interface down)
        self.gone = False  # TapGone was raised: the interface failed under us
        try:
            try:
                fcntl.ioctl(self.fd, TUNSETIFF, _ifreq(name, struct.pack("H", IFF_TAP | IFF_NO_PI | IFF_TUN_EXCL)))
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise TapError(exc.errno, f"tap {name}: an interface {name} exists already (a persistent "
                                              f"tap? remove it: ip link del {name}); not adopting it") from None
                raise TapError(exc.errno, f"tap {name}: TUNSETIFF: {exc.strerror}") from None
            os.set_blocking(self.fd, False)
            self.set_carrier(False)
            self.harden()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                self._ioctl(s, SIOCSIFHWADDR, _ifreq(name, struct.pack("H", ARPHRD_ETHER) + mac), "set its MAC")
                self._ioctl(s, SIOCSIFMTU, _ifreq(name, struct.pack("i", mtu)), f"set its MTU to {mtu}")
                self._ioctl(s, SIOCSIFTXQLEN, _ifreq(name, struct.pack("i", txqueuelen)), "set its queue length")
                flags = struct.unpack_from("H", self._ioctl(s, SIOCGIFFLAGS, _ifreq(name), "read its flags"), 16)[0]
                self._ioctl(s, SIOCSIFFLAGS, _ifreq(name, struct.pack("H", flags | IFF_UP)), "bring it up")
                self.index = struct.unpack_from("i", self._ioctl(s, SIOCGIFINDEX, _ifreq(name), "find its index"), 16)[0]
            self.add_addresses(addresses)
        except TapError:
            self.close()
            raise
        except OSError as exc:  # netlink errors, timeouts, ENOBUFS...: one kind of error for the caller
            self.close()
            raise TapError(exc.errno, f"tap {name}: set-up failed: {exc.strerror or exc}") from None
        except BaseException:
            self.close()
            raise
        self.read_size = mtu + 14 + 1  # a frame is at most MTU + 14 bytes: one that fills this is too big
        self._fd_read, self._fd_write = os.read, os.write

    def _ioctl_fd(self, req: int, arg: bytes, what: str) -> bytes:
        try:
            return fcntl.ioctl(self.fd, req, arg)
        except OSError as exc:
            raise TapError(exc.errno, f"tap {self.name}: {what}: {exc.strerror}") from None

    def _ioctl(self, s: socket.socket, req: int, arg: bytes, what: str) -> bytes:
        try:
            return fcntl.ioctl(s, req, arg)
        except OSError as exc:
            raise TapError(exc.errno, f"tap {self.name}: {what}: {exc.strerror}") from None

    def add_addresses(self, addresses) -> None:
        if not addresses:
            return
        if any(a.version == 6 for a in addresses):
            self.enable_ipv6()
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
            nl.settimeout(5)
            for seq, addr in enumerate(addresses, 1):
                nl.send(newaddr_request(self.index, addr, seq))
                while True:
                    data = nl.recv(65536)
                    length, mtype, _, rseq = struct.unpack_from("=LHHL", data)
                    if mtype == NLMSG_ERROR and rseq == seq:
                        err = -struct.unpack_from("=i", data, 16)[0]
                        if err:
                            raise TapError(err, f"tap {self.name}: add address {addr}: {os.strerror(err)}")
                        break

    def harden(self) -> None:
        """No RAs, SLAAC, redirects or router solicitations on the tap (TAP_SYSCTLS), before it is
        up. A kernel without IPv6 has no net/ipv6: those are skipped; any other failure refuses."""
        for family, key in TAP_SYSCTLS:
            if family == "ipv6" and not os.path.isdir("/proc/sys/net/ipv6/conf"):
                continue
            self._sysctl_off(f"/proc/sys/net/{family}/conf/{self.name}/{key}", "set")

    def enable_ipv6(self) -> None:
        """IPv6 on this interface even where the namespace disables it for the others (the lab sets
        net.ipv6.conf.all.disable_ipv6=1, which new interfaces inherit): tessera0 was asked for it."""
        self._sysctl_off(f"/proc/sys/net/ipv6/conf/{self.name}/disable_ipv6", "enable IPv6:")

    def _sysctl_off(self, path: str, what: str) -> None:
        """Write 0 to one of this interface's sysctls; TapError naming it if that fails."""
        try:
            with open(path, "w") as f:
                f.write("0")
        except OSError as exc:
            raise TapError(exc.errno, f"tap {self.name}: {what} {path} to 0: {exc.strerror}") from None

    def set_carrier(self, on: bool) -> None:
        """Carrier on or off (TUNSETCARRIER); a kernel without it keeps the carrier on."""
        if on is self.carrier:
            return
        try:
            fcntl.ioctl(self.fd, TUNSETCARRIER, struct.pack("i", int(on)))
        except OSError:
            pass  # before Linux 5.0: a tap has carrier while its fd is open
        self.carrier = on

    def read(self) -> bytes | None:
        """The next frame the kernel sent on the tap, or None when none is waiting (or the read
        was interrupted). TapGone when the interface failed (deleted: EBADFD)."""
        try:
            return self._fd_read(self.fd, self.read_size)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            self.gone = True
            raise TapGone(exc.errno, f"tap {self.name}: read: {exc.strerror} (the interface is gone?)") from None

    def write(self, frame: bytes) -> None:
        """Hand one received frame to the kernel; dropped and counted (write_drops) if it will not
        take it (full queue, interface down). TapGone when the interface failed (deleted)."""
        try:
            self._fd_write(self.fd, frame)
        except InterruptedError:
            self.write_drops += 1
        except OSError as exc:
            if exc.errno not in GONE:
                self.write_drops += 1
                return
            self.gone = True
            raise TapGone(exc.errno, f"tap {self.name}: write: {exc.strerror} (the interface is gone?)") from None

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # the kernel removes the interface with its last fd
            self.fd = -1
