"""Drive Debian's wpa_supplicant (``-D wired``) as the device's 802.1X supplicant.

How this works
--------------
:func:`supplicant_conf` (pure) writes a config with ``ap_scan=0``, ``eapol_version=2`` and
one network (``key_mgmt=IEEE8021X``, ``eapol_flags=0``) holding either EAP-TLS credentials
(:class:`TlsCredentials`) or EAP-PWD ones (:class:`PwdCredentials`).  :class:`Supplicant`
starts ``wpa_supplicant -D wired -i IFNAME -c CONF`` through a *launcher* (plain Popen for the
agent inside its own namespace; the lab passes one that runs it in a device namespace and
tracks the PID) and talks to it over its control socket with
:class:`tessera.agent.ctrl.CtrlClient`: one socket for commands, one ATTACHed for events.

wpa_supplicant wired ignores carrier: an EAPOL-Start sent while the link was down is lost and
the next comes 30 s later.  :func:`on_link_action` (pure) says what to do on a carrier event —
start over on LinkUp — and :meth:`Supplicant.on_link` does it with one EAPOL-Start of our own
(:meth:`Supplicant.restart`): the switch answers with EAP-Request/Identity, which takes
wpa_supplicant's EAPOL state machine from any state into a new authentication.  Exactly one
Start per attempt, and none while a conversation is under way: an authenticator takes each
Start as "begin again", aborting the conversation in progress, and hostapd drops a station
after reAuthMax (2) such restarts in a row -- right after a later EAP-Success, and without
telling the device (measured at 50 devices: the agent's Start, wpa_supplicant's own Start from
a ``REASSOCIATE`` processed later, and a retry gave four in ~4 s).  So the agent sends every
Start and wpa_supplicant none of its own (``Supplicant(own_starts=False)``, :data:`EAPOL_SETTINGS`:
``EAPOL::maxStart`` 0; it would otherwise send one 2 s after it starts if no EAP request came by
then, as a loaded switch's does not).  A Start that is lost is the node's to retry
(tessera.node: no EAP request within admission_timeout).  Stand-alone (the lab's testbed),
wpa_supplicant keeps its own Starts.

Events tell a silent RADIUS path from a refusal: ``CTRL-EVENT-EAP-STARTED`` (:data:`EAP_STARTED`)
comes from the switch's own EAP-Request/Identity (the switch relays to RADIUS from then on),
``CTRL-EVENT-EAP-PROPOSED-METHOD`` (:data:`EAP_PROPOSED_METHOD`) only once the RADIUS server
answered with its first method request (eap_peer GET_METHOD), and ``CTRL-EVENT-EAP-FAILURE`` is a
refusal.

Credentials switch at run time with ``SET_NETWORK`` (:meth:`Supplicant.set_credentials`),
e.g. from the device certificate to the LLK-based method once the device has one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

from tessera import eappwd
from tessera.agent.ctrl import CtrlClient, CtrlEvent, parse_kv
from tessera.secretfile import write_secret
from tessera.agent.link import LinkDown, LinkEvent, LinkUp, call_in_netns

EAP_SUCCESS = "CTRL-EVENT-EAP-SUCCESS"
EAP_FAILURE = "CTRL-EVENT-EAP-FAILURE"
# the server's first method request (only the RADIUS server proposes one; EAP-STARTED is the
# authenticator's own Identity request and says nothing about the RADIUS path)
EAP_PROPOSED_METHOD = "CTRL-EVENT-EAP-PROPOSED-METHOD"
EAP_STARTED = "CTRL-EVENT-EAP-STARTED"  # the authenticator's EAP-Request/Identity
# later steps of the method (wpa_supplicant took another of the server's requests): still moving
EAP_PROGRESS = frozenset({"CTRL-EVENT-EAP-METHOD", "CTRL-EVENT-EAP-PEER-CERT", "CTRL-EVENT-EAP-PEER-ALT",
                          "CTRL-EVENT-EAP-STATUS"})
CONNECTED = "CTRL-EVENT-CONNECTED"
DISCONNECTED = "CTRL-EVENT-DISCONNECTED"
OUTCOMES = frozenset({EAP_SUCCESS, EAP_FAILURE})
# wpa_supplicant's EAPOL state machine (ctrl SET; src/eapol_supp/eapol_supp_sm.c SUPP_PAE): no
# EAPOL-Start of its own (when startWhen runs out it goes to AUTHENTICATED as on a port without
# an authenticator -- no EAP success, which is what the agent acts on -- and an EAP request from
# the switch starts an authentication from there as from any state)
EAPOL_SETTINGS = {"EAPOL::maxStart": "0"}
ETH_P_PAE = 0x888E
PAE_GROUP_ADDR = bytes.fromhex("0180c2000003")


@dataclass(frozen=True)
class TlsCredentials:
    """EAP-TLS: identity, client certificate/key files, CA file to verify the server."""
    identity: str
    client_cert: str
    private_key: str
    ca_cert: str
    private_key_passwd: str | None = None


@dataclass(frozen=True)
class PwdCredentials:
    """EAP-PWD (RFC 5931): identity and password."""
    identity: str
    password: str


Credentials = TlsCredentials | PwdCredentials


def _q(s: str) -> str:
    """Quote a string value the way wpa_supplicant's config and SET_NETWORK expect."""
    if '"' in s or "\n" in s:
        raise ValueError("value may not contain quotes or newlines")
    return f'"{s}"'


def network_fields(creds: Credentials) -> dict[str, str]:
    """Network block fields (already quoted) for these credentials."""
    f = {"key_mgmt": "IEEE8021X", "eapol_flags": "0"}
    if isinstance(creds, TlsCredentials):
        f.update(eap="TLS", identity=_q(creds.identity), ca_cert=_q(creds.ca_cert),
                 client_cert=_q(creds.client_cert), private_key=_q(creds.private_key))
        if creds.private_key_passwd:
            f["private_key_passwd"] = _q(creds.private_key_passwd)
    elif isinstance(creds, PwdCredentials):
        # the wire form (tessera.eappwd), as unquoted hex: the bytes the RADIUS server uses
        f.update(eap="PWD", identity=_q(creds.identity), password=eappwd.supplicant_value(creds.password))
    else:
        raise TypeError(f"unsupported credentials {type(creds).__name__}")
    return f


def supplicant_conf(ctrl_dir: str, creds: Credentials) -> str:
    """wpa_supplicant.conf for a wired 802.1X port (pure)."""
    body = "\n".join(f"    {k}={v}" for k, v in network_fields(creds).items())
    return f"""\
# wpa_supplicant for a wired 802.1X port (written by tessera.agent.supplicant)
ctrl_interface={ctrl_dir}
ap_scan=0
eapol_version=2
network={{
{body}
}}
"""


def on_link_action(ev: LinkEvent) -> str | None:
    """What to do on a carrier event: an EAPOL-Start (start over at once) on LinkUp."""
    if isinstance(ev, LinkUp):
        return "EAPOL-Start"
    if isinstance(ev, LinkDown):
        return None  # nothing to say on a dead wire; hostapd is told by the switch side
    raise TypeError(ev)


def eapol_start_frame(src_mac: bytes) -> bytes:
    """EAPOL-Start (802.1X-2004: version 2, type 1, no body) to the PAE group address."""
    return PAE_GROUP_ADDR + src_mac + ETH_P_PAE.to_bytes(2, "big") + bytes([2, 1, 0, 0])


def send_eapol_start(ifname: str, netns: str | None = None) -> None:
    """Send one EAPOL-Start on ``ifname`` from a raw socket of our own.

    wpa_supplicant's ``REASSOCIATE`` would send its EAPOL-Start only when ``startWhen`` runs
    out on its 1-second tick (measured 1.5-2 s); hostapd answers this Start at once with
    EAP-Request/Identity, which the supplicant takes from any SUPP_PAE state (CONNECTING,
    AUTHENTICATED, HELD) into AUTHENTICATING.
    """
    def make() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_PAE))
        s.bind((ifname, ETH_P_PAE))
        return s
    s = call_in_netns(netns, make)
    try:
        s.send(eapol_start_frame(s.getsockname()[4][:6]))
    finally:
        s.close()


Launcher = Callable[[str, list[str]], subprocess.Popen]


def popen_launcher(log_path: str | None = None) -> Launcher:
    """Launcher that runs wpa_supplicant here (the agent already lives in its namespace)."""
    def launch(name: str, argv: list[str]) -> subprocess.Popen:
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        finally:
            if log_path:
                out.close()
    return launch


class Supplicant:
    """One wpa_supplicant on one wired interface, with its control sockets."""

    def __init__(self, ifname: str, creds: Credentials, workdir: str,
                 launcher: Launcher | None = None, debug: bool = False,
                 netns: str | None = None, own_starts: bool = True):
        """``netns``: namespace of ``ifname`` for our own raw EAPOL-Start (lab use only).
        ``own_starts=False``: wpa_supplicant sends no EAPOL-Start by itself, the caller sends
        each (:meth:`restart`; the module docstring)."""
        self.ifname, self.creds, self.workdir, self.netns = ifname, creds, workdir, netns
        self.ctrl_dir = os.path.join(workdir, "wpa")
        self.conf_path = os.path.join(workdir, f"wpa_supplicant-{ifname}.conf")
        os.makedirs(self.ctrl_dir, exist_ok=True)
        # it holds the EAP-PWD password or the key's path: 0600, never through a symlink
        write_secret(self.conf_path, supplicant_conf(self.ctrl_dir, creds).encode())
        sock = os.path.join(self.ctrl_dir, ifname)
        if os.path.exists(sock):
            os.unlink(sock)
        argv = ["wpa_supplicant", "-D", "wired", "-i", ifname, "-c", self.conf_path]
        if debug:
            argv.append("-d")
        launch = launcher or popen_launcher(os.path.join(workdir, f"wpa-{ifname}.log"))
        self.proc = launch(f"wpa_supplicant-{ifname}", argv)
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"wpa_supplicant on {ifname} did not start "
                                   f"(exit {self.proc.poll()})")
            time.sleep(0.01)
        self.cmd = CtrlClient(sock)
        self.mon = CtrlClient(sock)
        self.mon.attach()
        for name, value in (EAPOL_SETTINGS.items() if not own_starts else ()):
            self.cmd.ok(f"SET {name} {value}")
        self.history: list[CtrlEvent] = []

    # -- commands
    def status(self) -> dict[str, str]:
        """STATUS as a dict (``Supplicant PAE state``, ``suppPortStatus``, ``EAP state``...)."""
        return parse_kv(self.cmd.request("STATUS"))

    def authorized(self) -> bool:
        """The last EAP conversation succeeded (``suppPortStatus`` alone can read Authorized
        when SUPP_PAE stopped waiting for an authenticator: :data:`EAPOL_SETTINGS`)."""
        st = self.status()
        return st.get("suppPortStatus") == "Authorized" and st.get("EAP state") == "SUCCESS"

    def restart(self) -> None:
        """Start authentication over now with one EAPOL-Start of our own (not ``REASSOCIATE``:
        it resets the EAPOL state machine when its queued work runs, possibly after the
        switch answered our Start, and wpa_supplicant then sends a Start of its own that
        aborts the conversation just begun; the module docstring)."""
        send_eapol_start(self.ifname, self.netns)

    def logoff(self) -> None:
        self.cmd.ok("LOGOFF")

    def logon(self) -> None:
        self.cmd.ok("LOGON")

    def set_credentials(self, creds: Credentials, restart: bool = True) -> None:
        """Switch the network's credentials with SET_NETWORK (and start over)."""
        for k, v in network_fields(creds).items():
            self.cmd.ok(f"SET_NETWORK 0 {k} {v}")
        self.creds = creds
        if restart:
            self.restart()

    def on_link(self, ev: LinkEvent) -> str | None:
        """React to a carrier event; returns the command sent, if any."""
        cmd = on_link_action(ev)
        if cmd is not None and ev.ifname == self.ifname:
            self.restart()
            return cmd
        return None

    # -- events
    def events(self, timeout: float = 0.0) -> list[CtrlEvent]:
        """Events received so far (waiting up to ``timeout`` for the first)."""
        evs = self.mon.pump(timeout)
        self.history += evs
        return evs

    def wait_event(self, names=OUTCOMES, timeout: float = 10.0) -> CtrlEvent | None:
        """First event named in ``names`` within ``timeout`` (others go to ``history``)."""
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events(0):
                if ev.name in names:
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            for ev in self.events(min(left, 0.2)):
                if ev.name in names:
                    return ev

    def fileno(self) -> int:
        return self.mon.fileno()

    def close(self) -> None:
        """Close the control sockets and end wpa_supplicant (by its PID)."""
        for c in (self.cmd, self.mon):
            try:
                c.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)


def follow_carrier(watcher, supplicants: dict[str, "Supplicant"], stop) -> None:
    """Loop: feed carrier events from ``watcher`` (a CarrierWatcher) to the supplicant of
    each interface until ``stop`` (a threading.Event) is set.

    The agent's main loop does the same inside its own select(); this is the stand-alone
    form for the lab and tests (run it in a thread).
    """
    while not stop.is_set():
        for ev in watcher.poll(0.1):
            s = supplicants.get(ev.ifname)
            if s is not None:
                s.on_link(ev)
