"""Client for the hostapd / wpa_supplicant control interface (``ctrl_iface`` over UNIX datagrams).

How this works
--------------
Both daemons listen on a UNIX datagram socket ``<ctrl_interface>/<ifname>``.  A client binds
its own socket path, connects, and sends one text command per datagram; the reply is one
datagram.  After ``ATTACH`` the daemon also sends unsolicited events, each starting with
``<level>`` (e.g. ``<3>CTRL-EVENT-EAP-SUCCESS ...``).  Replies and events can interleave on
an attached socket, so :meth:`CtrlClient.request` sets events aside in a queue while it waits
for its reply, and :meth:`CtrlClient.events` returns them afterwards.

Parsing is pure (:func:`parse_event`, :func:`parse_kv`) and unit-tested without daemons.
This is the same protocol as ``wpa_ctrl.c`` in hostap; we write our own client because the
Debian packages ship no Python binding.
"""

from __future__ import annotations

import collections
import os
import re
import select
import socket
import threading
import time
from dataclasses import dataclass

_EVENT_RE = re.compile(r"^<(\d)>(\S+)\s*(.*)$", re.S)
_MAC_RE = re.compile(r"\b([0-9a-f]{2}(?::[0-9a-f]{2}){5})\b")


@dataclass(frozen=True)
class CtrlEvent:
    """One unsolicited control-interface event: level, name, rest of line, first MAC in it."""
    level: int
    name: str
    text: str
    mac: str | None
    at: float  # time.monotonic() when received

    @property
    def line(self) -> str:
        return f"{self.name} {self.text}".strip()


def is_event(msg: str) -> bool:
    """True for unsolicited events (``<N>...``), False for command replies."""
    return bool(_EVENT_RE.match(msg))


def parse_event(msg: str, at: float = 0.0) -> CtrlEvent | None:
    """Parse ``<3>AP-STA-CONNECTED 02:..`` into a CtrlEvent; None if not an event."""
    m = _EVENT_RE.match(msg.strip())
    if not m:
        return None
    level, name, text = int(m.group(1)), m.group(2), m.group(3).strip()
    mm = _MAC_RE.search(text)
    return CtrlEvent(level, name, text, mm.group(1) if mm else None, at)


def parse_kv(reply: str) -> dict[str, str]:
    """Parse a ``key=value`` per line reply (STATUS, STA, ...) into a dict."""
    out = {}
    for line in reply.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


class CtrlError(RuntimeError):
    """A control-interface command failed or timed out."""


class CtrlClient:
    """One connection to a daemon's control socket.

    ``CtrlClient(path)`` connects; ``request(cmd)`` returns the reply text; ``attach()``
    subscribes to events, ``events()`` / ``wait_event()`` read them.  ``fileno()`` makes it
    selectable.  Thread-safe for requests (one lock).
    """

    def __init__(self, path: str, timeout: float = 5.0, connect_timeout: float = 5.0):
        self.path = path
        self.timeout = timeout
        self._lock = threading.Lock()
        self._events: collections.deque[CtrlEvent] = collections.deque()
        # a fresh random name; bind() creates it and refuses one that exists (no tempfile: it
        # imports shutil, bz2, lzma and random, ~0.8 MiB in every agent)
        self._local = f"/tmp/tessera-ctrl-{os.urandom(8).hex()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self._local)
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    self.close()
                    raise CtrlError(f"no control socket at {path}")
                time.sleep(0.02)
        self.attached = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        try:
            if self.attached:
                self.sock.send(b"DETACH")
        except OSError:
            pass
        self.sock.close()
        try:
            os.unlink(self._local)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _recv(self, timeout: float) -> str | None:
        r, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        if not r:
            return None
        return self.sock.recv(8192).decode(errors="replace")

    def request(self, cmd: str, timeout: float | None = None) -> str:
        """Send ``cmd`` and return its reply; events received meanwhile are queued."""
        timeout = self.timeout if timeout is None else timeout
        with self._lock:
            self.sock.send(cmd.encode())
            deadline = time.monotonic() + timeout
            while True:
                msg = self._recv(deadline - time.monotonic())
                if msg is None:
                    raise CtrlError(f"{cmd.split()[0]}: no reply from {self.path}")
                ev = parse_event(msg, time.monotonic())
                if ev is None:
                    return msg
                self._events.append(ev)

    def ok(self, cmd: str) -> None:
        """Send ``cmd``; raise CtrlError unless the reply is ``OK``."""
        reply = self.request(cmd).strip()
        if reply != "OK":
            raise CtrlError(f"{cmd.split()[0]}: {reply}")

    def attach(self) -> None:
        """Subscribe this socket to events."""
        self.ok("ATTACH")
        self.attached = True

    def pump(self, timeout: float = 0.0) -> list[CtrlEvent]:
        """Read whatever is waiting (up to ``timeout`` for the first datagram); return events."""
        with self._lock:
            msg = self._recv(timeout)
            while msg is not None:
                ev = parse_event(msg, time.monotonic())
                if ev is not None:
                    self._events.append(ev)
                msg = self._recv(0)
            out = list(self._events)
            self._events.clear()
            return out

    def wait_event(self, names: set[str] | frozenset[str], timeout: float) -> CtrlEvent | None:
        """Wait for the first event whose name is in ``names``; other events are dropped."""
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.pump(0):
                if ev.name in names:
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            with self._lock:
                msg = self._recv(min(left, 0.2))
                if msg is not None:
                    ev = parse_event(msg, time.monotonic())
                    if ev is not None:
                        self._events.append(ev)
