"""Network namespaces, veth pairs, bridges and processes for the Tessera lab.

How this works
--------------
A :class:`Lab` owns everything it creates: namespaces (named ``ts<pid>-<tag>-<name>``, so
parallel runs never collide and a leftover can be traced to its owner PID), links and
processes.  Links are made with iproute2 straight into namespaces
(``ip link add pN netns SW type veth peer name eth0 netns DEV``), so no temporary name ever
exists in the root namespace.  Processes are started with ``ip netns exec`` (which execs, so
the PID we get is the daemon's PID) and are ended by that PID only.

Teardown (``Lab.close()``) ends processes (SIGTERM, then SIGKILL), then deletes namespaces
(which deletes the links inside them).  It runs from ``with Lab() as lab:``, from an atexit
hook and from a SIGTERM/SIGINT handler, so an exception or a kill still cleans up.
:func:`reap_stale` removes namespaces left by runs whose owner PID is gone (kill -9).

iproute2 via subprocess rather than pyroute2 for building: the commands are the ones in the
lab notes, a failing step prints an error an engineer can paste into a shell, and pyroute2's
netns support forks helper processes we would then have to track too.  pyroute2 is used
where events are needed (carrier watching, ``tessera.agent.link``).  The one exception is
:func:`set_links`, which brings many links up (or down) truly at once: one RTM_NEWLINK per
link, all in one ``sendmsg`` on one NETLINK_ROUTE socket opened inside the namespace, the
kernel's acks read afterwards (a loop of ``ip`` commands spreads 50 links over ~0.5 s).

Pure helpers (names, command lines) are separate functions so unit tests can check them
without root.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import signal
import socket
import struct
import subprocess
import threading
import time
import weakref
from dataclasses import dataclass, field

log = logging.getLogger("tessera.lab.netns")

NS_PREFIX = "ts"
_NETNS_DIR = "/run/netns"


# ---------------------------------------------------------------- pure helpers

def run_tag(pid: int | None = None, rand: str | None = None) -> str:
    """Unique prefix for one lab run: ``ts<pid>-<4 hex>``."""
    pid = os.getpid() if pid is None else pid
    rand = secrets.token_hex(2) if rand is None else rand
    return f"{NS_PREFIX}{pid}-{rand}"


def owner_pid(ns_name: str) -> int | None:
    """The PID encoded in a lab namespace name, or None if it is not one of ours."""
    if not ns_name.startswith(NS_PREFIX):
        return None
    head = ns_name[len(NS_PREFIX):].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def netns_exec_argv(ns: str | None, argv: list[str]) -> list[str]:
    """Command line that runs ``argv`` inside namespace ``ns`` (root namespace if None)."""
    return list(argv) if ns is None else ["ip", "netns", "exec", ns, *argv]


def veth_argv(a_ns: str, a_name: str, b_ns: str, b_name: str) -> list[str]:
    """``ip link add`` for a veth pair created straight into two namespaces."""
    return ["ip", "link", "add", a_name, "netns", a_ns, "type", "veth",
            "peer", "name", b_name, "netns", b_ns]


def mac_for(index: int, oui: str = "02:00:5e") -> str:
    """Locally administered, deterministic MAC for device number ``index`` (0..65535)."""
    return f"{oui}:10:{(index >> 8) & 0xff:02x}:{index & 0xff:02x}"


class LabError(RuntimeError):
    """A lab command failed; the message holds the command and its stderr."""


RTM_NEWLINK, NLMSG_ERROR = 16, 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
IFF_UP = 0x1


def setlink_batch(indexes: list[int], up: bool, seq0: int = 1) -> bytes:
    """One datagram of RTM_NEWLINK requests (pure): for each ifindex an nlmsghdr (len, type,
    flags, seq, pid) and an ifinfomsg (family, type, index, flags, change) that sets IFF_UP (or
    clears it, ``up`` False) and touches no other flag; each asks for an ack (NLM_F_ACK) and
    carries seq ``seq0 + i``. 32 bytes per link, already 4-byte aligned."""
    return b"".join(struct.pack("=LHHLL", 32, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq0 + i, 0)
                    + struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP)
                    for i, index in enumerate(indexes))


def parse_acks(data: bytes) -> dict[int, int]:
    """{seq: errno} from the NLMSG_ERROR messages in a netlink datagram (0: done)."""
    out, off = {}, 0
    while off + 20 <= len(data):
        length, mtype, _, seq, _ = struct.unpack_from("=LHHLL", data, off)
        if length < 16:
            break
        if mtype == NLMSG_ERROR:
            out[seq] = -struct.unpack_from("=i", data, off + 16)[0]
        off += (length + 3) & ~3
    return out


def set_links(ns: str | None, ifnames: list[str], up: bool = True, timeout: float = 5.0) -> float:
    """Set the admin state of ``ifnames`` in namespace ``ns`` in one netlink batch: every
    RTM_NEWLINK goes out in a single ``sendmsg`` (`setlink_batch`), so the kernel applies them
    back to back in one call, then the acks are read. Returns ``time.monotonic()`` just before
    the sendmsg (CLOCK_MONOTONIC is the same in every namespace, so agents' event stamps
    compare with it). Raises LabError naming each link the kernel refused."""
    from tessera.agent.link import call_in_netns

    def make() -> tuple[socket.socket, list[int]]:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((0, 0))
        indexes = []
        for n in ifnames:
            try:
                indexes.append(socket.if_nametoindex(n))
            except OSError as exc:
                s.close()
                raise LabError(f"set_links in {ns}: {n}: {exc.strerror or exc}") from None
        return s, indexes

    sock, indexes = call_in_netns(ns, make)
    try:
        sock.settimeout(timeout)
        batch = setlink_batch(indexes, up)
        t0 = time.monotonic()
        sock.send(batch)
        acks: dict[int, int] = {}
        while len(acks) < len(indexes):
            acks.update(parse_acks(sock.recv(1 << 16)))
    except OSError as exc:
        raise LabError(f"set_links in {ns}: {exc}") from None
    finally:
        sock.close()
    bad = [f"{n}: {os.strerror(acks[1 + i])}" for i, n in enumerate(ifnames) if acks.get(1 + i)]
    if bad:
        raise LabError(f"set_links in {ns}: {', '.join(bad)}")
    return t0


# ---------------------------------------------------------------- I/O

def sh(argv: list[str], ns: str | None = None, check: bool = True,
       input: bytes | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a command (in ``ns`` if given) and wait; raise LabError on failure if ``check``."""
    full = netns_exec_argv(ns, argv)
    cp = subprocess.run(full, input=input, capture_output=True, timeout=timeout)
    if check and cp.returncode != 0:
        raise LabError(f"{' '.join(full)}: exit {cp.returncode}: "
                       f"{cp.stderr.decode(errors='replace').strip()}")
    return cp


def list_netns() -> list[str]:
    """Names of all named network namespaces on the machine."""
    try:
        return sorted(os.listdir(_NETNS_DIR))
    except FileNotFoundError:
        return []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale() -> list[str]:
    """Delete lab namespaces whose owner process no longer exists; return their names.

    Processes still inside such a namespace are reported, not killed: we did not start them
    in this process, so we do not own them.
    """
    gone = []
    for ns in list_netns():
        pid = owner_pid(ns)
        if pid is None or _pid_alive(pid):
            continue
        pids = sh(["ip", "netns", "pids", ns], check=False).stdout.split()
        if pids:
            log.warning("stale namespace %s still holds pids %s; left alone", ns, pids)
            continue
        sh(["ip", "netns", "del", ns], check=False)
        gone.append(ns)
    return gone


@dataclass
class Proc:
    """A process the lab started: its name, namespace, argv and Popen handle."""
    name: str
    ns: str | None
    argv: list[str]
    popen: subprocess.Popen
    log_path: str | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


def _end_left_in(ns: str, grace: float = 3.0) -> None:
    """End, by PID, every process still inside namespace `ns` (one this lab created) once the
    lab's own processes are stopped: what they started and left behind -- an agent ended by
    SIGKILL leaves its wpa_supplicant -- would outlive the namespace's name otherwise."""
    def left() -> list[int]:
        cp = sh(["ip", "netns", "pids", ns], check=False)
        return [int(x) for x in cp.stdout.split()] if cp.returncode == 0 else []
    pids = left()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = [p for p in pids if _pid_alive(p)]
        if not pids:
            return
        log.error("processes %s left in namespace %s: %s", pids, ns, "killing" if sig == signal.SIGTERM else "unkillable")


def stop_process(p: subprocess.Popen, grace: float = 3.0) -> int | None:
    """End one process by its PID: SIGTERM, wait ``grace`` s, then SIGKILL. Returns its code."""
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        except ProcessLookupError:
            pass
    return p.returncode


_live_labs: "weakref.WeakSet[Lab]" = weakref.WeakSet()
_hooks_installed = False
_hooks_lock = threading.Lock()


def _close_all(*_args) -> None:
    # Only the process that built a lab tears it down: a forked child (pyroute2 forks helpers
    # to open sockets in a namespace) inherits the atexit hook and must not run it.
    for lab in list(_live_labs):
        if lab.owner != os.getpid():
            continue
        try:
            lab.close()
        except Exception:  # noqa: BLE001 -- best effort in the safety net
            log.exception("teardown of %s failed", lab.tag)


def _signal_handler(signum, frame):  # pragma: no cover -- exercised by hand
    _close_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_hooks() -> None:
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        atexit.register(_close_all)
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(s) in (signal.SIG_DFL, None):
                    signal.signal(s, _signal_handler)
        _hooks_installed = True


@dataclass(eq=False)
class Lab:
    """Owner of namespaces, links and processes for one run.

    ``ns(name)`` gives the full namespace name for a short name ("sw", "d1").
    Everything is undone by :meth:`close`, also on exceptions and at interpreter exit.
    """
    tag: str = field(default_factory=run_tag)
    workdir: str | None = None
    namespaces: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    closed: bool = False
    owner: int = field(default_factory=os.getpid)
    cleanups: list = field(default_factory=list)

    def __post_init__(self):
        if self.workdir is None:
            self.workdir = f"/tmp/tessera-lab/{self.tag}"
        os.makedirs(self.workdir, exist_ok=True)
        # the lab's configs hold its RADIUS and DAS secrets, its pcap the RADIUS traffic
        os.chmod(self.workdir, 0o700)
        _live_labs.add(self)
        _install_hooks()

    # -- context manager
    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- namespaces and links
    def ns(self, short: str) -> str:
        """Full namespace name for a short name."""
        return f"{self.tag}-{short}"

    def add_ns(self, short: str) -> str:
        """Create namespace ``short`` with loopback up; return its full name."""
        name = self.ns(short)
        sh(["ip", "netns", "add", name])
        self.namespaces.append(name)
        sh(["ip", "link", "set", "lo", "up"], ns=name)
        # Keep IPv6 DAD and router solicitations from adding noise to captures.
        sh(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"], ns=name, check=False)
        return name

    def add_veth(self, a_ns: str, a_name: str, b_ns: str, b_name: str,
                 b_mac: str | None = None, up: bool = True) -> None:
        """veth pair with end ``a_name`` in ``a_ns`` and ``b_name`` in ``b_ns`` (full names)."""
        sh(veth_argv(a_ns, a_name, b_ns, b_name))
        if b_mac:
            sh(["ip", "link", "set", b_name, "address", b_mac], ns=b_ns)
        if up:
            sh(["ip", "link", "set", a_name, "up"], ns=a_ns)
            sh(["ip", "link", "set", b_name, "up"], ns=b_ns)

    def add_bridge(self, ns: str, name: str = "br0") -> None:
        """Bridge with STP off and no forwarding delay, up, in ``ns``."""
        sh(["ip", "link", "add", name, "type", "bridge", "stp_state", "0",
            "forward_delay", "0"], ns=ns)
        sh(["ip", "link", "set", name, "up"], ns=ns)

    def enslave(self, ns: str, port: str, bridge: str = "br0") -> None:
        sh(["ip", "link", "set", port, "master", bridge], ns=ns)

    def add_addr(self, ns: str, ifname: str, cidr: str) -> None:
        sh(["ip", "addr", "add", cidr, "dev", ifname], ns=ns)

    def set_link(self, ns: str, ifname: str, up: bool) -> None:
        sh(["ip", "link", "set", ifname, "up" if up else "down"], ns=ns)

    def run(self, ns: str | None, argv: list[str], check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a short command inside ``ns`` and wait for it."""
        return sh(argv, ns=ns, check=check, timeout=timeout)

    # -- processes
    def spawn(self, name: str, ns: str | None, argv: list[str]) -> Proc:
        """Start a long-running process in ``ns``; stdout+stderr go to workdir/<name>.log."""
        log_path = os.path.join(self.workdir, f"{name}.log")
        out = open(log_path, "ab")
        try:
            p = subprocess.Popen(netns_exec_argv(ns, argv), stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            out.close()
        proc = Proc(name, ns, argv, p, log_path)
        self.procs.append(proc)
        log.info("started %s pid %d in %s: %s", name, p.pid, ns, " ".join(argv))
        return proc

    def stop(self, proc: Proc) -> None:
        """End one process the lab started."""
        stop_process(proc.popen)
        if proc in self.procs:
            self.procs.remove(proc)

    def pids(self) -> list[int]:
        """PIDs of processes this lab started that are still running."""
        return [p.pid for p in self.procs if p.alive()]

    # -- teardown
    def defer(self, fn) -> None:
        """Run ``fn()`` first thing in :meth:`close` (last deferred runs first): for parts that
        start processes of their own (a RadiusServer), so that they stop with the lab."""
        self.cleanups.append(fn)

    def close(self) -> None:
        """Run deferred cleanups, end every process, then delete every namespace this lab
        created. Idempotent."""
        if self.closed or self.owner != os.getpid():
            return
        self.closed = True
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 -- the rest of the teardown must still run
                log.error("cleanup %r failed: %s", fn, exc)
        self.cleanups.clear()
        for proc in reversed(self.procs):
            stop_process(proc.popen)
        self.procs.clear()
        for ns in reversed(self.namespaces):
            _end_left_in(ns)
            for _ in range(20):
                cp = sh(["ip", "netns", "del", ns], check=False)
                if cp.returncode == 0 or ns not in list_netns():
                    break
                time.sleep(0.05)
            else:
                log.error("could not delete namespace %s", ns)
        self.namespaces.clear()
        _live_labs.discard(self)
