"""Carrier watcher: RTM_NEWLINK from the kernel -> ``LinkUp`` / ``LinkDown`` events.

How this works
--------------
One rtnetlink socket bound to RTMGRP_LINK (what ``IPRoute().bind()`` does) receives a
RTM_NEWLINK for every link change.  Carrier is ``flags & IFF_LOWER_UP`` (the same fact as
``IFLA_CARRIER``); the admin state ``IFF_UP`` is not carrier.  :class:`CarrierState` is the
pure part: it remembers the last carrier per watched name and turns a (name, carrier) fact
into an event only when carrier changed.  :class:`CarrierWatcher` is the I/O: it opens the
socket (optionally inside a named network namespace: ``setns`` in a short-lived thread, so
the rest of the process stays where it is — pyroute2's own netns mode forks helper processes
and, in 0.9.x, did not deliver multicast link events to us), asks for a link dump to learn
the initial state, and decodes messages with pyroute2's ``ifinfmsg``.

Measured: the kernel's linkwatch delays carrier-off reports by up to ~1 s and coalesces a
flap faster than that (down+up within ~1 s can arrive as one "up" or not at all).
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import select
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator


def _defer_package_init(name: str) -> None:
    """Put package `name` in sys.modules without running its __init__.py, so that one of its
    submodules imports alone. pyroute2's __init__.py imports every API it has (IPRoute, NDB,
    IPDB, conntrack, asyncio, sqlite3: ~19 MiB RSS per agent); the agent needs only the
    ifinfmsg decoder (~3.5 MiB). The __init__.py still runs on the first use of a name it
    defines (PEP 562 module __getattr__), so other code in the process sees all of pyroute2."""
    if name in sys.modules or (spec := importlib.util.find_spec(name)) is None:
        return
    pkg = importlib.util.module_from_spec(spec)
    ran = False

    def __getattr__(attr: str):
        nonlocal ran
        if importlib.util.find_spec(f"{name}.{attr}") is not None:  # `from pyroute2 import config`
            return importlib.import_module(f"{name}.{attr}")
        if ran:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        ran = True
        spec.loader.exec_module(pkg)
        return getattr(pkg, attr)

    pkg.__getattr__ = __getattr__
    sys.modules[name] = pkg


_defer_package_init("pyroute2")
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # noqa: E402

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
RTMGRP_LINK = 0x1
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_DONE, NLMSG_ERROR = 3, 2
CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class LinkUp:
    """Carrier came up on ``ifname`` (``at`` = time.monotonic())."""
    ifname: str
    at: float


@dataclass(frozen=True)
class LinkDown:
    """Carrier went away on ``ifname`` (or the link was deleted)."""
    ifname: str
    at: float


LinkEvent = LinkUp | LinkDown


@dataclass
class CarrierState:
    """Last known carrier per watched interface; emits an event only on change."""
    watched: set[str] | None = None          # None = every interface
    carrier: dict[str, bool] = field(default_factory=dict)

    def update(self, ifname: str, up: bool, at: float) -> LinkEvent | None:
        if self.watched is not None and ifname not in self.watched:
            return None
        if self.carrier.get(ifname) == up:
            return None
        self.carrier[ifname] = up
        return LinkUp(ifname, at) if up else LinkDown(ifname, at)


def carrier_of(flags: int) -> bool:
    """Carrier from ifinfomsg flags (IFF_LOWER_UP)."""
    return bool(flags & IFF_LOWER_UP)


def getlink_dump_request(seq: int = 1) -> bytes:
    """RTM_GETLINK dump request (nlmsghdr + ifinfomsg)."""
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)
    return struct.pack("=LHHLL", 16 + len(body), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP,
                       seq, 0) + body


def parse_links(data: bytes) -> list[tuple[str, bool, bool]]:
    """(ifname, carrier, deleted) for each RTM_NEWLINK/RTM_DELLINK in a netlink datagram."""
    out, off = [], 0
    while off + 16 <= len(data):
        length, mtype = struct.unpack_from("=LH", data, off)
        if length < 16:
            break
        if mtype in (RTM_NEWLINK, RTM_DELLINK):
            msg = ifinfmsg(data[off:off + length])
            msg.decode()
            name = msg.get_attr("IFLA_IFNAME")
            if name:
                out.append((name, carrier_of(msg["flags"]), mtype == RTM_DELLINK))
        off += (length + 3) & ~3
    return out


_libc = ctypes.CDLL(None, use_errno=True)


def call_in_netns(netns: str | None, fn):
    """Call ``fn()`` with the calling thread inside network namespace ``netns`` (a name).

    ``setns`` changes only the calling thread, so this runs ``fn`` in a short-lived thread;
    sockets ``fn`` creates stay bound to that namespace.  ``netns=None`` calls it here.
    """
    if netns is None:
        return fn()
    box: dict = {}

    def in_ns() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            finally:
                os.close(fd)
            box["r"] = fn()
        except BaseException as e:  # noqa: BLE001 -- re-raised in the caller
            box["e"] = e

    t = threading.Thread(target=in_ns)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["r"]


def open_link_socket(netns: str | None = None) -> socket.socket:
    """rtnetlink socket subscribed to RTMGRP_LINK, in namespace ``netns`` (a name) or here."""
    def make() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((0, RTMGRP_LINK))
        return s
    return call_in_netns(netns, make)


class CarrierWatcher:
    """Yields LinkUp/LinkDown for ``ifnames`` (None = all) in ``netns`` (None = here).

    ``initial()`` returns the state at start as events; then ``poll(timeout)`` or
    iteration gives changes.  ``fileno()`` makes it usable in select().
    """

    def __init__(self, ifnames: list[str] | None = None, netns: str | None = None):
        self.state = CarrierState(set(ifnames) if ifnames is not None else None)
        self.sock = open_link_socket(netns)
        self.sock.send(getlink_dump_request())
        self._pending: list[LinkEvent] = []
        self._drain_dump()

    def _drain_dump(self) -> None:
        while True:
            data = self.sock.recv(1 << 16)
            self._pending += self._feed(data)
            if _has_done(data):
                return

    def _feed(self, data: bytes) -> list[LinkEvent]:
        now = time.monotonic()
        evs = []
        for name, up, deleted in parse_links(data):
            ev = self.state.update(name, up and not deleted, now)
            if ev is not None:
                evs.append(ev)
        return evs

    def initial(self) -> list[LinkEvent]:
        """Events describing each watched link's carrier at start (taken once)."""
        out, self._pending = self._pending, []
        return out

    def watch(self, ifname: str) -> None:
        """Add an interface name to the watched set (its next change is reported)."""
        if self.state.watched is not None:
            self.state.watched.add(ifname)

    def carrier(self, ifname: str) -> bool | None:
        return self.state.carrier.get(ifname)

    def fileno(self) -> int:
        return self.sock.fileno()

    def poll(self, timeout: float | None = 0.0) -> list[LinkEvent]:
        """Changes received within ``timeout`` seconds (None = wait for the first)."""
        out, self._pending = self._pending, []
        r, _, _ = select.select([self.sock], [], [], timeout)
        while r:
            out += self._feed(self.sock.recv(1 << 16))
            r, _, _ = select.select([self.sock], [], [], 0)
        return out

    def __iter__(self) -> Iterator[LinkEvent]:
        while True:
            yield from self.poll(None)

    def close(self) -> None:
        self.sock.close()


def _has_done(data: bytes) -> bool:
    off = 0
    while off + 16 <= len(data):
        length, mtype = struct.unpack_from("=LH", data, off)
        if mtype in (NLMSG_DONE, NLMSG_ERROR):
            return True
        if length < 16:
            return True
        off += (length + 3) & ~3
    return False
