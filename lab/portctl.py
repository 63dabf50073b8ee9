"""Port controller: turns hostapd events and port carrier into nftables port state.

How this works
--------------
:class:`PortTable` is the decision core, pure and unit-tested: it takes facts
(``station_authorized``, ``station_gone``, ``station_removed``, ``carrier``, the clock) and
returns :class:`Action` values — ``Allow``/``Block`` (an nft set change), ``Kick`` (tell hostapd
to deauthenticate a station, because hostapd ``driver=wired`` ignores carrier and would keep it
authorized) and ``Readmit`` (ask hostapd to start EAP for a station it dropped behind our back).
:func:`table_input` maps a hostapd control-interface event to such a fact.

A kicked station is not gone at once: hostapd 2.10 clears its authorization
(AP-STA-DISCONNECTED) and frees it ``AP_MAX_INACTIVITY_AFTER_DEAUTH`` = 5 s later
(src/ap/sta_info.c, ap_sta_deauthenticate), whatever happened meanwhile.  A cable back within
those 5 s re-admits the device on the same station (AP-STA-CONNECTED, measured 27 ms after
link-up), and the old timer then frees it ("deauthenticated due to local deauth request":
AP-STA-DISCONNECTED, and any RADIUS request in flight flushed).  The device is not told
(``driver=wired`` sends no deauthentication frame), so it would sit behind a closed port
believing it is admitted.  The controller tells that removal from other disconnections by asking
hostapd (``STA <mac>``) after the event: a deauthentication (the kick, a Disconnect-Request)
leaves the station listed for its 5 s, a freed one is not listed — ``station_removed``.  It
closes the port as for any loss and readmits: ``NEW_STA <mac>`` makes hostapd add the station
and send EAP-Request/Identity, the device's supplicant answers from AUTHENTICATED, and the port
opens again on that fresh EAP success (measured: closed 9 ms, 5 s after the kick).  A station
freed while its re-admission is still under way (a slow or dead RADIUS server) was never
authorized again, so hostapd says nothing; the table therefore remembers when each kicked
station is freed (:meth:`PortTable.tick`, a second after hostapd's 5 s) and readmits it then if
its wire is up and it is not admitted (``NEW_STA`` leaves a station hostapd still holds alone).
The remedy is a new authentication, never an opening: whatever a removal is taken for, a revoked
device or a silent wire stays closed.

:class:`PortController` is the thin I/O shell, one thread in the lab process: it ATTACHes to
each port's hostapd control socket, subscribes to RTM_NEWLINK in the switch namespace with
pyroute2, ``select()``s on all of them, feeds :class:`PortTable`, and carries the actions out
(nftables in the switch namespace through libnftables, :class:`NftContext`, one transaction for
all that one wakeup decided; ``DEAUTHENTICATE``, ``NEW_STA`` and ``STA`` on a second,
unattached control socket per port, so that no event waits behind a reply).  Its state is
queryable (:meth:`PortController.authorized`, :attr:`PortController.log`) and every change is
logged with a timestamp.  No polling: it sleeps until hostapd or the kernel says something, or
until a kicked station is due to have been freed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import threading
import time
from dataclasses import dataclass, field

from tessera.agent.ctrl import CtrlClient, CtrlError, CtrlEvent, parse_kv
from tessera.agent.link import CarrierWatcher, LinkEvent, LinkUp, call_in_netns
from tessera.lab import nft
from tessera.lab.netns import LabError

log = logging.getLogger("tessera.lab.portctl")


# ---------------------------------------------------------------- pure core

@dataclass(frozen=True)
class Allow:
    """Add (port . mac) to the authorized set; open the port if it was closed."""
    port: str
    mac: str
    open_port: bool


@dataclass(frozen=True)
class Block:
    """Remove (port . mac) from the authorized set; close the port if it is now empty."""
    port: str
    mac: str
    close_port: bool


@dataclass(frozen=True)
class Kick:
    """Ask the port's hostapd to deauthenticate mac (it does not see carrier loss itself)."""
    port: str
    mac: str


@dataclass(frozen=True)
class Readmit:
    """Ask the port's hostapd to add mac again and start EAP for it (it freed it after a kick)."""
    port: str
    mac: str


Action = Allow | Block | Kick | Readmit

# hostapd event name -> PortTable input.  AP-STA-CONNECTED is hostapd's "station is now
# authorized" for wired ports; DISCONNECTED covers logoff, deauthentication and a failed
# re-authentication; EAP-FAILURE2 closes a station that had been open.  The shell turns an
# AP-STA-DISCONNECTED of a station hostapd no longer lists into "station_removed".
EVENT_INPUT = {
    "AP-STA-CONNECTED": "station_authorized",
    "AP-STA-DISCONNECTED": "station_gone",
    "CTRL-EVENT-EAP-FAILURE2": "station_gone",
    "CTRL-EVENT-EAP-FAILURE": "station_gone",
    "CTRL-EVENT-EAP-TIMEOUT-FAILURE2": "station_gone",
    "CTRL-EVENT-EAP-TIMEOUT-FAILURE": "station_gone",
}


# hostapd frees a deauthenticated station AP_MAX_INACTIVITY_AFTER_DEAUTH (5 s) after the kick;
# the table looks a second later
FREED_AFTER_KICK = 5.0 + 1.0


def table_input(ev: CtrlEvent) -> str | None:
    """The PortTable input a hostapd event stands for, or None if it changes nothing."""
    if ev.mac is None:
        return None
    return EVENT_INPUT.get(ev.name)


@dataclass
class PortTable:
    """Which stations are authorized on which ports, which ports have carrier, and when hostapd
    frees the stations it was told to deauthenticate (``now``: seconds on a monotonic clock)."""
    ports: dict[str, set[str]] = field(default_factory=dict)
    carrier: dict[str, bool] = field(default_factory=dict)
    freed_at: dict[tuple[str, str], float] = field(default_factory=dict)

    def add_port(self, port: str) -> None:
        self.ports.setdefault(port, set())

    def _kick(self, port: str, mac: str, now: float) -> Kick:
        self.freed_at[(port, mac)] = now + FREED_AFTER_KICK
        return Kick(port, mac)

    def station_authorized(self, port: str, mac: str, now: float) -> list[Action]:
        macs = self.ports.setdefault(port, set())
        if mac in macs:
            return []  # re-authentication of an open station: nothing changes
        if self.carrier.get(port) is False:
            return [self._kick(port, mac, now)]  # authorized on a dead wire: refuse it
        open_port = not macs
        macs.add(mac)
        return [Allow(port, mac, open_port)]

    def station_gone(self, port: str, mac: str) -> list[Action]:
        macs = self.ports.get(port, set())
        if mac not in macs:
            return []
        macs.discard(mac)
        return [Block(port, mac, close_port=not macs)]

    def station_removed(self, port: str, mac: str) -> list[Action]:
        """hostapd freed an admitted station (a deauthentication's late timer): close it and have
        hostapd start EAP for it again.  (On a dead wire nothing is admitted: carrier loss
        closed it.)"""
        acts = self.station_gone(port, mac)
        return acts + [Readmit(port, mac)] if acts else []

    def set_carrier(self, port: str, up: bool, now: float) -> list[Action]:
        was = self.carrier.get(port)
        self.carrier[port] = up
        if up or was is False:
            return []
        acts: list[Action] = []
        for mac in sorted(self.ports.get(port, set())):
            acts += self.station_gone(port, mac)
            acts.append(self._kick(port, mac, now))
        return acts

    def next_due(self) -> float | None:
        """When :meth:`tick` has something to do next (None: nothing is pending)."""
        return min(self.freed_at.values(), default=None)

    def tick(self, now: float) -> list[Action]:
        """Stations hostapd has freed by now after a kick: where the wire came back and the
        station is not admitted (a re-admission the removal cut short, or none begun), have
        hostapd start EAP for it.  hostapd says nothing when it frees a station it did not
        hold authorized."""
        acts: list[Action] = []
        for (port, mac), at in sorted(self.freed_at.items()):
            if at <= now:
                del self.freed_at[(port, mac)]
                if self.carrier.get(port) and mac not in self.ports.get(port, set()):
                    acts.append(Readmit(port, mac))
        return acts

    def feed(self, what: str, port: str, mac: str, now: float) -> list[Action]:
        """Dispatch a named input (see EVENT_INPUT) for (port, mac)."""
        if what == "station_authorized":
            return self.station_authorized(port, mac, now)
        if what == "station_gone":
            return self.station_gone(port, mac)
        if what == "station_removed":
            return self.station_removed(port, mac)
        raise ValueError(f"unknown input {what!r}")


# ---------------------------------------------------------------- I/O shell

class NftContext:
    """libnftables with its netlink socket opened inside namespace ``ns`` (``nft_ctx_new`` in a
    thread that entered it, `call_in_netns`): a script costs one netlink transaction, ~0.4 ms,
    where ``ip netns exec NS nft -f -`` forks two programs (tens of ms, and hundreds on a loaded
    machine, while the ports it is to open wait). Same scripts, same all-or-nothing transaction;
    a refused one raises LabError with nft's message. One caller at a time (the controller's
    lock): a context is not thread-safe."""

    def __init__(self, ns: str):
        lib = ctypes.CDLL("libnftables.so.1")
        lib.nft_ctx_new.restype, lib.nft_ctx_new.argtypes = ctypes.c_void_p, [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib, self.ns = lib, ns
        self.ctx = call_in_netns(ns, lambda: lib.nft_ctx_new(0))
        if not self.ctx:
            raise LabError(f"nft_ctx_new in {ns} failed")
        lib.nft_ctx_buffer_error(self.ctx)

    def apply(self, script: str) -> None:
        if self.lib.nft_run_cmd_from_buffer(self.ctx, script.encode()) != 0:
            err = (self.lib.nft_ctx_get_error_buffer(self.ctx) or b"").decode(errors="replace").strip()
            raise LabError(f"nft in {self.ns}: {err}")

    def close(self) -> None:
        if self.ctx:
            self.lib.nft_ctx_free(self.ctx)
            self.ctx = None


def _by_port(actions: list[Action]) -> dict[str, list[Action]]:
    out: dict[str, list[Action]] = {}
    for a in actions:
        out.setdefault(a.port, []).append(a)
    return out


@dataclass(frozen=True)
class LogEntry:
    """One line of the controller's event log."""
    at: float        # time.time()
    mono: float      # time.monotonic(), for latency measurements
    port: str
    what: str        # hostapd event name, "carrier-up"/"carrier-down", or an action
    mac: str | None = None


class PortController(threading.Thread):
    """Thread enforcing port state in switch namespace ``ns`` for ``ports``.

    ``ctrl_dir`` holds hostapd's control sockets (one per port, named by port).
    """

    def __init__(self, ns: str, ports: list[str], ctrl_dir: str, table: str = nft.TABLE):
        super().__init__(name=f"portctl-{ns}", daemon=True)
        self.ns, self.ctrl_dir, self.table = ns, ctrl_dir, table
        self.state = PortTable()
        self.log: list[LogEntry] = []
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._clients: dict[str, CtrlClient] = {}   # attached: events only
        self._cmds: dict[str, CtrlClient] = {}      # requests and their replies
        self._stop_r, self._stop_w = os.pipe()
        self._ports = list(ports)
        self._ready = threading.Event()
        self._stopping = False
        self._links = CarrierWatcher(list(self._ports), netns=ns)
        nft.apply(ns, nft.ruleset(self._ports, table))
        try:
            self._nft: NftContext | None = NftContext(ns)
        except OSError as exc:  # no libnftables: the nft program, as for the ruleset
            log.warning("libnftables: %s; using the nft program", exc)
            self._nft = None
        for ev in self._links.initial():
            self.state.set_carrier(ev.ifname, isinstance(ev, LinkUp), time.monotonic())
        for port in self._ports:
            self._attach(port)

    # -- queries
    def authorized(self) -> dict[str, set[str]]:
        """Copy of {port: set of authorized MACs}."""
        with self._cond:
            return {p: set(m) for p, m in self.state.ports.items()}

    def is_open(self, port: str, mac: str | None = None) -> bool:
        macs = self.authorized().get(port, set())
        return bool(macs) if mac is None else mac in macs

    def wait_for(self, pred, timeout: float) -> bool:
        """Wait until ``pred(self)`` holds (re-checked on every change); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self):
                left = deadline - time.monotonic()
                if left <= 0 or self.error is not None:
                    return False
                self._cond.wait(left)
            return True

    def entries(self, what: str | None = None, port: str | None = None) -> list[LogEntry]:
        with self._cond:
            return [e for e in self.log if (what is None or e.what == what)
                    and (port is None or e.port == port)]

    # -- lifecycle
    def add_port(self, port: str) -> None:
        """Put a new (already running) hostapd port under control."""
        with self._cond:
            self._ports.append(port)
            nft.apply(self.ns, f'add element bridge {self.table} controlled {{ "{port}" }}\n')
            self._links.watch(port)
            self._attach(port)
        os.write(self._stop_w, b"r")  # re-read the fd set

    def stop(self) -> None:
        self._stopping = True
        os.write(self._stop_w, b"x")
        if self.is_alive():
            self.join(5)
        for c in (*self._clients.values(), *self._cmds.values()):
            c.close()
        self._links.close()
        if self._nft is not None:
            self._nft.close()
        os.close(self._stop_r)
        os.close(self._stop_w)

    # -- internals
    def _attach(self, port: str) -> None:
        client = CtrlClient(os.path.join(self.ctrl_dir, port))
        client.attach()
        self._clients[port] = client
        self._cmds[port] = CtrlClient(os.path.join(self.ctrl_dir, port))
        self.state.add_port(port)
        self._sync(port, self._cmds[port])

    def _sync(self, port: str, client: CtrlClient) -> None:
        """Adopt stations hostapd already holds as authorized (controller started late)."""
        reply = client.request("STA-FIRST")
        while reply.strip() and not reply.startswith("FAIL"):
            mac = reply.splitlines()[0].strip()
            if "[AUTHORIZED]" in parse_kv(reply).get("flags", ""):
                acts = self.state.station_authorized(port, mac, time.monotonic())
                self._do(port, acts, "sync", mac)
            reply = client.request(f"STA-NEXT {mac}")

    def _record(self, port: str, what: str, mac: str | None, mono: float | None = None) -> None:
        """Log one entry, stamped now or at `mono` (when its input was read)."""
        now = time.monotonic()
        at = now if mono is None else mono
        e = LogEntry(time.time() - (now - at), at, port, what, mac)
        self.log.append(e)
        log.info("%s %s %s", port, what, mac or "")

    def _do(self, port: str, actions: list[Action], cause: str, mac: str | None) -> None:
        self._do_all([(port, actions, cause, mac)])

    def _do_all(self, batch: list[tuple[str, list[Action], str, str | None]], read_at: float | None = None) -> None:
        """Carry out the actions of several inputs (port, actions, cause, mac), in order: every
        nft change of the batch in one nftables transaction first (`NftContext`; it used to be
        an ``nft`` process per change: 50 ports authorized together opened one after another
        over ~1 s, while their devices' first packets met a closed port), then the hostapd
        commands. The
        inputs' entries carry `read_at`, when they were read; the actions', when done."""
        script = "".join(nft.authorize(a.port, a.mac, a.open_port, self.table) if isinstance(a, Allow)
                         else nft.deauthorize(a.port, a.mac, a.close_port, self.table)
                         for _, actions, _, _ in batch for a in actions if isinstance(a, (Allow, Block)))
        with self._cond:
            if script and self._nft is not None:
                self._nft.apply(script)
            elif script:
                nft.apply(self.ns, script)
            for port, actions, cause, mac in batch:
                self._record(port, cause, mac, read_at)
                for a in actions:
                    if isinstance(a, Allow):
                        self._record(a.port, "allow" + (" +open" if a.open_port else ""), a.mac)
                    elif isinstance(a, Block):
                        self._record(a.port, "block" + (" +close" if a.close_port else ""), a.mac)
                    elif isinstance(a, Kick):
                        self._command(a.port, f"DEAUTHENTICATE {a.mac}")
                        self._record(a.port, "kick", a.mac)
                    elif isinstance(a, Readmit):
                        self._command(a.port, f"NEW_STA {a.mac}")
                        self._record(a.port, "readmit", a.mac)
            self._cond.notify_all()

    def _command(self, port: str, cmd: str) -> None:
        try:
            self._cmds[port].ok(cmd)
        except (CtrlError, OSError, KeyError) as e:
            log.warning("%s on %s: %s", cmd, port, e)

    def _listed(self, port: str, mac: str) -> bool:
        """Whether the port's hostapd still holds a station for mac (``STA <mac>``)."""
        try:
            reply = self._cmds[port].request(f"STA {mac}")
        except (CtrlError, OSError, KeyError) as e:
            log.warning("STA %s on %s: %s", mac, port, e)
            return True  # unknown: treat as an ordinary disconnection
        return bool(reply.strip()) and not reply.startswith("FAIL")

    def _on_link(self, ev: LinkEvent) -> tuple[str, list[Action], str, None]:
        up = isinstance(ev, LinkUp)
        acts = self.state.set_carrier(ev.ifname, up, time.monotonic())
        return ev.ifname, acts, "carrier-up" if up else "carrier-down", None

    def _on_ctrl(self, port: str, ev: CtrlEvent) -> tuple[str, list[Action], str, str | None] | None:
        what = table_input(ev)
        if ev.name == "AP-STA-DISCONNECTED" and ev.mac and not self._listed(port, ev.mac):
            what = "station_removed"
        if what is None:
            if ev.name.startswith(("CTRL-EVENT-EAP", "AP-STA")):
                return port, [], ev.name, ev.mac
            return None
        return port, self.state.feed(what, port, ev.mac, time.monotonic()), ev.name, ev.mac

    def run(self) -> None:
        try:
            while not self._stopping:
                by_fd = {c.fileno(): (p, c) for p, c in self._clients.items()}
                due = self.state.next_due()
                wait = None if due is None else max(0.0, due - time.monotonic())
                r, _, _ = select.select([self._stop_r, self._links, *by_fd], [], [], wait)
                read_at = time.monotonic()
                batch = [(port, acts, "freed", None)
                         for port, acts in _by_port(self.state.tick(time.monotonic())).items()]
                for fd in r:  # everything that arrived together is decided, then done in one go
                    if fd is self._links:
                        batch += [self._on_link(ev) for ev in self._links.poll(0)]
                    elif fd == self._stop_r:
                        os.read(self._stop_r, 64)
                    else:
                        port, client = by_fd[fd]
                        batch += [x for x in (self._on_ctrl(port, ev) for ev in client.pump(0)) if x is not None]
                if batch:
                    self._do_all(batch, read_at)
        except BaseException as e:  # noqa: BLE001 -- surfaced through .error and wait_for
            if not self._stopping:
                log.exception("port controller died")
                self.error = e
                with self._cond:
                    self._cond.notify_all()
