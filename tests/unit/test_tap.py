"""agent/tap.py without a kernel: the ioctls, sysctl writes and netlink exchanges of Tap's set-up
recorded against stand-ins, and how read/write classify errors. What the kernel does with them is
netns_tests/test_tunnel_guard.py's (a persistent twin refused, no RA taken, deletion reported)."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

import pytest

from tessera.agent import tap as tap_mod
from tessera.agent.tap import (IFF_NO_PI, IFF_TAP, IFF_TUN_EXCL, IFF_UP, NLMSG_ERROR, SIOCGIFFLAGS, SIOCGIFINDEX,
                               SIOCSIFFLAGS, TUNSETIFF, Tap, TapError, TapGone)

MAC = b"\x02\x11\x22\x33\x44\x55"


class Kernel:
    """Stand-ins for fcntl.ioctl, open() of /proc/sys and the netlink socket; records the order."""

    def __init__(self, tunsetiff_errno=None, netlink=None):
        self.calls: list = []
        self.tunsetiff_errno = tunsetiff_errno
        self.netlink = netlink or (lambda seq: struct.pack("=LHHLLi", 36, NLMSG_ERROR, 0, seq, 0, 0) + bytes(16))

    def ioctl(self, fd, req, arg):
        self.calls.append(("ioctl", req, arg))
        if req == TUNSETIFF and self.tunsetiff_errno:
            raise OSError(self.tunsetiff_errno, "refused")
        if req == SIOCGIFFLAGS:
            return arg[:16] + struct.pack("H", 0x1002).ljust(24, b"\0")
        if req == SIOCGIFINDEX:
            return arg[:16] + struct.pack("i", 7).ljust(24, b"\0")
        return arg

    def open(self, path, mode="r"):
        kernel = self

        class F:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def write(self, text):
                kernel.calls.append(("sysctl", path, text))

        return F()

    def socket(self, family, kind, proto=0):
        kernel = self

        class S:
            seq = 0

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def settimeout(self, t):
                pass

            def send(self, data):
                self.seq = struct.unpack_from("=L", data, 8)[0]
                kernel.calls.append(("netlink", self.seq))

            def recv(self, n):
                return kernel.netlink(self.seq)

        return S()


@pytest.fixture
def kernel(monkeypatch):
    def make(**kw):
        k = Kernel(**kw)
        monkeypatch.setattr(tap_mod, "TUN_PATH", "/dev/null")
        monkeypatch.setattr(tap_mod.fcntl, "ioctl", k.ioctl)
        monkeypatch.setattr(tap_mod, "open", k.open, raising=False)
        monkeypatch.setattr(tap_mod.socket, "socket", k.socket)
        return k
    return make


def test_tunsetiff_asks_for_an_exclusive_new_tap_and_a_twin_is_refused_by_name(kernel):
    k = kernel()
    t = Tap("tessera0", MAC, 1452)
    flags = struct.unpack_from("H", next(a for c, r, a in k.calls if r == TUNSETIFF), 16)[0]
    assert flags == IFF_TAP | IFF_NO_PI | IFF_TUN_EXCL == 0x9002
    t.close()
    kernel(tunsetiff_errno=errno.EBUSY)
    with pytest.raises(TapError, match="exists already.*ip link del tessera0") as exc:
        Tap("tessera0", MAC, 1452)
    assert exc.value.errno == errno.EBUSY
    kernel(tunsetiff_errno=errno.EPERM)  # another refusal: named as the TUNSETIFF step
    with pytest.raises(TapError, match="TUNSETIFF"):
        Tap("tessera0", MAC, 1452)


def test_router_advertisements_redirects_and_solicitations_are_off_before_the_tap_goes_up(kernel):
    k = kernel()
    Tap("tessera0", MAC, 1452).close()
    sysctls = [(p, v) for c, p, v in k.calls if c == "sysctl"]
    want = {f"/proc/sys/net/{f}/conf/tessera0/{key}" for f, key in tap_mod.TAP_SYSCTLS}
    assert {p for p, v in sysctls} == want and {v for p, v in sysctls} == {"0"}
    assert "/proc/sys/net/ipv6/conf/tessera0/accept_ra" in want and "/proc/sys/net/ipv4/conf/tessera0/accept_redirects" in want
    up = next(i for i, c in enumerate(k.calls) if c[0] == "ioctl" and c[1] == SIOCSIFFLAGS)
    assert struct.unpack_from("H", k.calls[up][2], 16)[0] & IFF_UP
    assert max(i for i, c in enumerate(k.calls) if c[0] == "sysctl") < up  # all of them before admin-up


def test_every_os_error_of_the_set_up_is_a_tap_error_naming_it(kernel):
    addr = [ipaddress.ip_interface("198.51.100.1/24")]
    k = kernel()
    t = Tap("tessera0", MAC, 1452, addr)  # control: the kernel acks the address
    assert t.index == 7 and ("netlink", 1) in k.calls
    t.close()

    def timeout(seq):
        raise socket.timeout("timed out")

    def nobufs(seq):
        raise OSError(errno.ENOBUFS, "No buffer space available")

    for reply, want in ((timeout, "timed out"), (nobufs, "No buffer space")):
        kernel(netlink=reply)
        with pytest.raises(TapError, match=f"tap tessera0: set-up failed: {want}"):
            Tap("tessera0", MAC, 1452, addr)
    kernel(netlink=lambda seq: struct.pack("=LHHLLi", 36, NLMSG_ERROR, 0, seq, 0, -errno.EEXIST) + bytes(16))
    with pytest.raises(TapError, match="add address 198.51.100.1/24: File exists"):
        Tap("tessera0", MAC, 1452, addr)


def bare_tap(read=None, write=None) -> Tap:
    t = Tap.__new__(Tap)
    t.name, t.fd, t.read_size, t.write_drops, t.gone = "tessera0", -1, 1467, 0, False

    def fail(err):
        def f(*args):
            raise OSError(err, errno.errorcode.get(err, "?")) if isinstance(err, int) else err
        return f
    t._fd_read = fail(read) if read is not None else (lambda fd, n: b"frame")
    t._fd_write = fail(write) if write is not None else (lambda fd, b: len(b))
    return t


def test_read_and_write_tell_a_gone_tap_from_a_busy_one():
    assert bare_tap().read() == b"frame" and bare_tap().write(b"x" * 60) is None  # control
    for busy in (BlockingIOError(errno.EAGAIN, "again"), InterruptedError(errno.EINTR, "intr")):
        assert bare_tap(read=busy).read() is None
    for err in (errno.EBADFD, errno.EIO, errno.EFAULT):
        t = bare_tap(read=err)
        with pytest.raises(TapGone, match="tap tessera0: read") as exc:
            t.read()
        assert exc.value.errno == err and t.gone and isinstance(exc.value, TapError)
    t = bare_tap(write=errno.ENOBUFS)  # a full queue: the frame is dropped and counted, as on a link
    t.write(b"x" * 60)
    t.write(b"x" * 60)
    assert t.write_drops == 2 and not t.gone
    t = bare_tap(write=errno.EBADFD)  # `ip link del tessera0`
    with pytest.raises(TapGone, match="tap tessera0: write"):
        t.write(b"x" * 60)
    assert t.gone
