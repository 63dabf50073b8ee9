"""A private FreeRADIUS for tests, the lab and benchmarks: build a config directory, run it.

How this works: ``build_config`` writes a complete, self-contained config directory from this
repository alone -- never from the machine's ``/etc/freeradius/3.0``, which an operator changes
(Tessera installed there, sites disabled, clients added, ``radiusd.conf`` edited) and which the
private server must not depend on. The tree holds:

- ``radiusd.conf`` (``RADIUSD_CONF`` below: Debian's defaults for the server core, with
  ``logdir``/``run_dir`` in the directory, no proxying, ``suppress_secrets = yes``);
- ``dictionary``: ``$INCLUDE`` of the packaged ``/usr/share/freeradius/dictionary`` (package
  data, not configuration) plus Tessera's block from ``configs/freeradius/dictionary``;
- the ``tessera`` and ``tessera_eap`` modules and Tessera's four sites from
  ``configs/freeradius``, ``always`` (the ``reject``/``ok`` the sites call) -- the only modules
  and sites enabled -- and the EAP-TLS files;
- two classes of RADIUS client, each on its own listener with its own secret (``clients.conf``:
  one ``clients`` section per class, which only that listener consults): the NAS clients
  (switches, relaying 802.1X) of the ``tessera-nas`` site on ``RadiusConfig.nas_port`` with
  ``nas_secret``, and the device clients (Tessera operations over UDP) of the ``tessera`` site on
  ``RadiusConfig.port`` with ``secret``. Each class has one client by default
  (``nas_client_address``, ``client_address``), with ``require_message_authenticator = yes``;
  ``extra_nas_clients`` / ``extra_clients`` add ``Client`` entries (one without that setting
  shows that the sites refuse a request without Message-Authenticator themselves);
- with ``RadiusConfig.radsec_port``, the RadSec listener for devices (``tessera-radsec``: RADIUS
  over TLS with the device certificate, RFC 6614), with the same server certificate and
  trusted device CAs; radiusd then runs threaded also for debugging (``-f -xx -l stdout``).

From the system it takes only what the Debian packages own and no operator edits: the module
libraries in ``/usr/lib/freeradius`` and the dictionaries in ``/usr/share/freeradius``.
``build_floor_config`` writes another tree the same way, for the benchmark floors: the same
server core, PAP from ``files`` with no Python, and PAP behind a Python module returning at once.
``check_config`` runs ``freeradius -XC -d DIR``.

``RadiusServer`` starts ``freeradius -f -d DIR`` (``-X`` for debugging), optionally behind a
run prefix such as ``ip netns exec NS`` or ``setpriv --reuid=freerad ...`` (which must exec,
so that the PID we hold is radiusd's), waits for "Ready to process requests" in the log and
for an answer to a Status-Server sent with radclient through the same prefix, and stops it by
PID -- always, also when start-up fails. ``cpu_seconds()`` reads radiusd's CPU time from
``/proc/PID/stat`` for benchmarks.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "freeradius"
DICTIONARY = REPO / "radius" / "dictionary.tessera"
SYSTEM_DICTIONARY = Path("/usr/share/freeradius/dictionary")  # package data, not a conffile
FREERADIUS = "freeradius"
DEVICE_SITE, NAS_SITE = "tessera", "tessera-nas"  # the two UDP listeners, one per client class
TESSERA_SITES = (DEVICE_SITE, NAS_SITE, "tessera-check-eap-tls", "tessera-eap-pwd")
# The clients sections (clients.conf) that the two sites' listeners name with "clients = ..."
DEVICE_CLIENTS, NAS_CLIENTS = "tessera-device-clients", "tessera-nas-clients"
TESSERA_MODS = ("tessera", "tessera_eap")
RADSEC_SITE = "tessera-radsec"  # devices over RADIUS/TLS: only with RadiusConfig.radsec_port


# The server core's settings: Debian 3.2's radiusd.conf defaults, without its proxy.conf,
# policy.d and mods-enabled (nothing in Tessera's sites uses them). @DIR@ and @SECURITY@ are
# filled in by build_config.
RADIUSD_CONF = """\
# radiusd.conf -- a private FreeRADIUS for Tessera's tests and lab (made by tessera.lab.radiusd).
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = ${exec_prefix}/sbin
logdir = @DIR@/log
raddbdir = @DIR@
radacctdir = ${logdir}/radacct
name = freeradius
confdir = ${raddbdir}
modconfdir = ${confdir}/mods-config
certdir = ${confdir}/certs
cadir = ${confdir}/certs
run_dir = @DIR@/run
db_dir = ${raddbdir}
libdir = /usr/lib/freeradius
pidfile = ${run_dir}/${name}.pid
max_request_time = 30
cleanup_delay = 5
max_requests = 16384
hostname_lookups = no

log {
	destination = files
	colourise = no
	file = ${logdir}/radius.log
	syslog_facility = daemon
	stripped_names = no
	auth = no
	auth_badpass = no
	auth_goodpass = no
	# Debug output shows <<< secret >>> for attributes FreeRADIUS marks secret (the MSK
	# halves in MS-MPPE-*-Key, passwords). 3.2.1 reads this in log { } -- where Debian's
	# radiusd.conf has it -- and silently ignores it in security { }.
	suppress_secrets = yes
}

checkrad = ${sbindir}/checkrad

security {
@SECURITY@
	allow_core_dumps = no
	max_attributes = 200
	# Debian delays every Access-Reject by 1 s (against password guessing, which Tessera's
	# signed/MACed proofs do not allow); tests and benchmarks want the answer at once.
	reject_delay = @REJECT_DELAY@
	status_server = yes
}

# No proxying: no proxy listener on a random port.
proxy_requests = no

$INCLUDE clients.conf

thread pool {
	start_servers = 5
	max_servers = 32
	min_spare_servers = 3
	max_spare_servers = 10
	max_requests_per_server = 0
	auto_limit_acct = no
}

modules {
	$INCLUDE mods-enabled/
}

instantiate {
}

$INCLUDE sites-enabled/
"""


# The rcode modules Tessera's sites call (``reject``, ``ok``, ...): Debian's mods-available/always.
ALWAYS_MODULE = "".join(f"always {rc} {{\n\trcode = {rc}\n}}\n" for rc in (
    "reject", "fail", "ok", "handled", "invalid", "userlock", "notfound", "noop", "updated"))


class RadiusdError(RuntimeError):
    """FreeRADIUS refused the configuration or did not come up."""


@dataclass(frozen=True)
class Client:
    """One RADIUS client entry of a class (NAS or device): who may use that class's listener.
    ``require_message_authenticator=False`` only to show that the sites refuse a request without
    one themselves (as they must for a client an operator adds without it)."""

    name: str
    address: str  # an address or a CIDR network
    secret: str
    require_message_authenticator: bool = True


@dataclass
class RadiusConfig:
    """What a private server needs. Paths are absolute; ``tls_dir`` holds ``server.pem``,
    ``server.key`` and ``device-ca.pem`` (see ``tessera.lab.pki``)."""

    db: Path | str  # the registry: a SQLite file, or a URL (postgresql://..., passfile= for its password)
    kek: Path
    tls_dir: Path
    server_id: str = "radius1"
    address: str = "127.0.0.1"
    # devices (the tessera site, Tessera operations over UDP): port, secret, who
    port: int = 0  # 0: pick a free UDP port on this host
    secret: str = "tessera-lab-device-secret"
    client_address: str = "127.0.0.1"  # an address or a CIDR network
    # switches (the tessera-nas site, 802.1X/EAP): port, secret, who
    nas_port: int = 0  # 0: pick a free UDP port on this host (not ``port``)
    nas_secret: str = "tessera-lab-nas-secret"
    nas_client_address: str = "127.0.0.1"  # an address or a CIDR network
    venv: Path = REPO / ".venv"
    realm_opener: str = "tessera.realm:open_realm"
    python_path: tuple[Path, ...] = ()  # extra entries after the plugin directory
    reject_delay: int = 0  # seconds; Debian's default is 1
    keep_user: bool = False  # run as user/group freerad, as Debian's unit does (files must be readable)
    extra_clients: tuple[Client | tuple[str, str, str], ...] = field(default=())  # more device clients
    extra_nas_clients: tuple[Client | tuple[str, str, str], ...] = field(default=())  # more NAS clients
    # RadSec (RFC 6614) listener for devices, sites-available/tessera-radsec: None = none,
    # 0 = a free TCP port on this host (filled in by build_config), else that port (2083 is IANA's)
    radsec_port: int | None = None
    # PostgreSQL: the module's registry_grace (seconds served from its cache while the database is
    # unreachable); None leaves the module's default
    registry_grace: float | None = None


def free_udp_port(address: str = "127.0.0.1") -> int:
    """A UDP port that was free a moment ago on ``address``."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def free_tcp_port(address: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``address``."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def set_option(text: str, key: str, value: str, count: int = 1) -> str:
    """Replace the value of the first ``count`` ``key = value`` lines (comments untouched)."""
    pattern = re.compile(rf"^(\s*){re.escape(key)}(\s*)=.*$", re.M)
    new, n = pattern.subn(lambda m: f"{m.group(1)}{key}{m.group(2)}= {value}", text, count=count)
    if n == 0:
        raise RadiusdError(f"no option {key!r} to set")
    return new


def suppress_secrets(radiusd_conf: str) -> str:
    """Turn on ``log { suppress_secrets = yes }`` in Debian's radiusd.conf (shipped commented
    out, in its ``log`` section, the only place 3.2.1 reads it): debug output shows
    ``<<< secret >>>`` instead of attributes FreeRADIUS marks secret. For install-radius, which
    edits the system's tree."""
    return re.sub(r"^(\s*)#\s*suppress_secrets\s*=\s*no\s*$", r"\1suppress_secrets = yes", radiusd_conf, count=1, flags=re.M)


def set_registry(module: Path, url: str, grace: float | None = None) -> None:
    """Point the module config at the registry: its ``registry`` item and the older ``db``
    (an alias), whichever of the two the file sets; with ``grace``, also ``registry_grace``
    (uncommented, or added after the registry's line)."""
    text = module.read_text()
    items = [k for k in ("registry", "db") if re.search(rf"^\s*{k}\s*=", text, re.M)]
    if not items:
        raise RadiusdError(f"{module} sets neither 'registry' nor 'db'")
    for key in items:
        text = set_option(text, key, f'"{url}"')
    if grace is not None:
        line = re.compile(r"^#?(\s*)registry_grace\s*=.*$", re.M)
        if line.search(text):
            text = line.sub(lambda m: f"{m.group(1)}registry_grace = {grace:g}", text, count=1)
        else:
            at = re.search(rf"^(\s*){items[0]}\s*=.*$", text, re.M)
            text = text[:at.end()] + f"\n{at.group(1)}registry_grace = {grace:g}" + text[at.end():]
    module.write_text(text)


def _edit(path: Path, **options: str) -> None:
    text = path.read_text()
    for key, value in options.items():
        text = set_option(text, key, value)
    path.write_text(text)


def listen_on(site: Path, address: str, port: int) -> None:
    """Point a site's first listen section at ``address`` ("*", an IPv4 or an IPv6 address) and
    ``port`` (its first ``ipaddr``/``port`` lines)."""
    text = site.read_text()
    if ":" in address:
        text = set_option(text, "ipaddr", "*").replace("ipaddr = *", f"ipv6addr = {address}", 1)
    else:
        text = set_option(text, "ipaddr", address)
    site.write_text(set_option(text, "port", str(port)))


def _client_block(name: str, address: str, secret: str, require_message_authenticator: bool = True) -> str:
    """One ``client`` entry (tab-indented, for a ``clients`` section). It names no virtual
    server: the listener whose ``clients`` section holds it decides which site answers.
    Raises ``RadiusdError`` for a value FreeRADIUS would misread (never echoing the secret)."""
    for what, value in (("client name", name), ("client address", address), ("client secret", secret)):
        if not value or any(c.isspace() or c in '{}"#\\' for c in value):
            shown = "" if what == "client secret" else f" {value!r}"
            raise RadiusdError(f"{what}{shown} is empty or holds blanks, braces, quotes, # or backslashes")
    key = "ipv6addr" if ":" in address else "ipaddr"
    require = "yes" if require_message_authenticator else "no"
    return (f"\tclient {name} {{\n\t\t{key} = {address}\n\t\tsecret = {secret}\n"
            f"\t\trequire_message_authenticator = {require}\n\t\tshortname = {name}\n\t}}\n")


def client_entry(c: Client | tuple[str, str, str]) -> Client:
    """A ``Client`` from a ``Client`` or a (name, address, secret) tuple."""
    return c if isinstance(c, Client) else Client(*c)


def clients_section(section: str, clients) -> str:
    """``clients SECTION { client ... }``: the clients one listener knows (it may be empty)."""
    body = "".join(_client_block(c.name, c.address, c.secret, c.require_message_authenticator)
                   for c in map(client_entry, clients))
    return f"clients {section} {{\n{body}}}\n"


def install_dictionary(raddb: Path, base: str | None = None) -> None:
    """Copy the vendor dictionary next to ``raddb/dictionary`` and add Tessera's lines
    (idempotent: an existing Tessera block is replaced). ``base``, when given, is the whole
    file before Tessera's block (a private tree's ``$INCLUDE`` of the packaged dictionary)."""
    shutil.copyfile(DICTIONARY, raddb / "dictionary.tessera")
    block = (CONFIGS / "dictionary").read_text()
    block = block[block.index("# >>> tessera >>>"):]
    target = raddb / "dictionary"
    text = base if base is not None else target.read_text()
    text = re.sub(r"# >>> tessera >>>.*?# <<< tessera <<<\n?", "", text, flags=re.S)
    target.write_text(text.rstrip("\n") + "\n\n" + block)


def _add_radsec(raddb: Path, cfg: RadiusConfig) -> None:
    """Enable the RadSec listener for devices (``RADSEC_SITE``) on ``cfg.address`` and
    ``cfg.radsec_port`` (0: a free TCP port, written back). It uses the server certificate
    and the trusted device CAs already in ``certs/tessera/``."""
    if not cfg.radsec_port:
        cfg.radsec_port = free_tcp_port(cfg.address)
    shutil.copyfile(CONFIGS / "sites-available" / RADSEC_SITE, raddb / "sites-available" / RADSEC_SITE)
    (raddb / "sites-enabled" / RADSEC_SITE).symlink_to(f"../sites-available/{RADSEC_SITE}")
    listen_on(raddb / "sites-available" / RADSEC_SITE, cfg.address, cfg.radsec_port)


def build_config(directory: Path, cfg: RadiusConfig) -> Path:
    """Make a complete FreeRADIUS config directory for ``cfg`` at ``directory`` (must not
    exist) from this repository alone. Returns it. ``cfg.port`` is filled in if it was 0."""
    raddb = Path(directory)
    raddb.mkdir(parents=True)
    if cfg.port and cfg.port == cfg.nas_port:
        raise RadiusdError(f"the device and the NAS listeners need two ports, not both {cfg.port}")
    if cfg.secret == cfg.nas_secret:
        raise RadiusdError("the device and the NAS clients need two secrets: a device would speak as a switch")
    while not cfg.port or cfg.port == cfg.nas_port:
        cfg.port = free_udp_port(cfg.address)
    while not cfg.nas_port or cfg.nas_port == cfg.port:
        cfg.nas_port = free_udp_port(cfg.address)
    for sub in ("mods-available", "mods-enabled", "sites-available", "sites-enabled", "certs/tessera",
                "log/radacct", "run"):
        (raddb / sub).mkdir(parents=True, exist_ok=True)

    for site in TESSERA_SITES:
        shutil.copyfile(CONFIGS / "sites-available" / site, raddb / "sites-available" / site)
        (raddb / "sites-enabled" / site).symlink_to(f"../sites-available/{site}")
    for mod in TESSERA_MODS:
        shutil.copyfile(CONFIGS / "mods-available" / mod, raddb / "mods-available" / mod)
        (raddb / "mods-enabled" / mod).symlink_to(f"../mods-available/{mod}")

    (raddb / "mods-available" / "always").write_text(ALWAYS_MODULE)
    (raddb / "mods-enabled" / "always").symlink_to("../mods-available/always")

    python_path = ":".join(str(p) for p in (REPO / "plugin", *cfg.python_path))
    module = raddb / "mods-available" / "tessera"
    _edit(module, python_path=f'"{python_path}"', venv=f'"{cfg.venv}"', kek=f'"{cfg.kek}"',
          server_id=f'"{cfg.server_id}"', realm_opener=f'"{cfg.realm_opener}"')
    set_registry(module, str(cfg.db), cfg.registry_grace)
    listen_on(raddb / "sites-available" / DEVICE_SITE, cfg.address, cfg.port)
    listen_on(raddb / "sites-available" / NAS_SITE, cfg.address, cfg.nas_port)

    install_dictionary(raddb, base=f"# private dictionary: the packaged one, then Tessera's\n"
                                   f"$INCLUDE {SYSTEM_DICTIONARY}\n")
    for name in ("server.pem", "server.key", "device-ca.pem"):
        shutil.copy2(Path(cfg.tls_dir) / name, raddb / "certs" / "tessera" / name)

    (raddb / "clients.conf").write_text(
        "# Tessera's two client classes: each listener consults only its own section.\n"
        + clients_section(DEVICE_CLIENTS, [Client("devices", cfg.client_address, cfg.secret), *cfg.extra_clients])
        + clients_section(NAS_CLIENTS, [Client("switches", cfg.nas_client_address, cfg.nas_secret),
                                        *cfg.extra_nas_clients]))

    security = "\tuser = freerad\n\tgroup = freerad" if cfg.keep_user else "\t# runs as the user that starts it"
    (raddb / "radiusd.conf").write_text(
        RADIUSD_CONF.replace("@DIR@", str(raddb.resolve())).replace("@SECURITY@", security)
        .replace("@REJECT_DELAY@", str(cfg.reject_delay)))
    if cfg.radsec_port is not None:
        _add_radsec(raddb, cfg)
    return raddb


# The floors of bench/freeradius_floor.py: the same server core (RADIUSD_CONF) and listener
# settings as Tessera's device site, PAP from ``files`` with nothing else, and the same again
# behind a Python module that returns at once. @...@ are filled in by build_floor_config.
FLOOR_SITE = """\
server @NAME@ {
listen {
	type = auth
	ipaddr = @ADDRESS@
	port = @PORT@
	clients = floor-clients
	recv_buff = 4194304
	limit {
		max_pps = 0
	}
}
authorize {
@PYTHON@	files
	pap
}
authenticate {
	Auth-Type PAP {
		pap
	}
}
post-auth {
	update reply {
		&Message-Authenticator := 0x00
	}
}
}
"""
FLOOR_MODULES = """\
files {
	filename = ${confdir}/users
}
pap {
	normalise = yes
}
# rlm_python3's own cost: one call with the request's pairs, returning at once
python3 floor_python {
	python_path = "@DIR@"
	module = floor_rlm
	pass_all_vps = no
	pass_all_vps_dict = no
	mod_authorize = ${.module}
	func_authorize = authorize
}
"""
FLOOR_PYTHON = "def authorize(p):\n    return 2  # RLM_MODULE_OK, at once\n"


def build_floor_config(directory: Path, users: dict[str, str], address: str = "127.0.0.1",
                       secret: str = "tessera-floor-secret") -> tuple[Path, int, int]:
    """A private config directory with two sites on one radiusd (same ``RADIUSD_CONF``): PAP
    from a ``users`` file of Cleartext-Passwords (``authorize { files; pap }``, no Python) on
    one UDP port, and the same behind the ``floor_python`` rlm_python3 module returning at once
    on another. Returns (raddb, PAP port, Python port)."""
    raddb = Path(directory)
    for sub in ("mods-enabled", "sites-enabled", "log/radacct", "run"):
        (raddb / sub).mkdir(parents=True, exist_ok=True)
    pap_port = free_udp_port(address)
    python_port = pap_port
    while python_port == pap_port:
        python_port = free_udp_port(address)
    for name, port, python in (("floor-pap", pap_port, ""), ("floor-python", python_port, "\tfloor_python\n")):
        (raddb / "sites-enabled" / name).write_text(FLOOR_SITE.replace("@NAME@", name).replace(
            "@ADDRESS@", address).replace("@PORT@", str(port)).replace("@PYTHON@", python))
    (raddb / "mods-enabled" / "floor").write_text(FLOOR_MODULES.replace("@DIR@", str(raddb.resolve())))
    (raddb / "floor_rlm.py").write_text(FLOOR_PYTHON)
    for name, password in users.items():
        if any(c.isspace() or c in '"\\' for c in name + password):
            raise RadiusdError(f"floor user {name!r}: blanks, quotes or backslashes")
    (raddb / "users").write_text("".join(f'{n}\tCleartext-Password := "{pw}"\n' for n, pw in users.items()))
    (raddb / "dictionary").write_text(f"$INCLUDE {SYSTEM_DICTIONARY}\n")
    (raddb / "clients.conf").write_text(clients_section("floor-clients", [Client("bench", address, secret)]))
    (raddb / "radiusd.conf").write_text(
        RADIUSD_CONF.replace("@DIR@", str(raddb.resolve())).replace("@SECURITY@", "\t# runs as the user that starts it")
        .replace("@REJECT_DELAY@", "0"))
    return raddb, pap_port, python_port


def check_config(raddb: Path, run_prefix: tuple[str, ...] = ()) -> None:
    """``freeradius -XC -d raddb``; raises ``RadiusdError`` with the output's tail."""
    r = subprocess.run([*run_prefix, FREERADIUS, "-XC", "-d", str(raddb)],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RadiusdError("config check failed:\n" + "\n".join((r.stdout + r.stderr).splitlines()[-30:]))


def status_server(address: str, port: int, secret: str, run_prefix: tuple[str, ...] = (),
                  timeout: float = 1.0) -> bool:
    """One Status-Server with Message-Authenticator via radclient; True if answered."""
    r = subprocess.run([*run_prefix, "radclient", "-q", "-r", "1", "-t", str(timeout),
                        f"[{address}]:{port}" if ":" in address else f"{address}:{port}",
                        "status", secret],
                       input="Message-Authenticator = 0x00\n", capture_output=True, text=True,
                       timeout=timeout + 10)
    return r.returncode == 0


class RadiusServer:
    """One running ``freeradius -f`` for a built config directory. Use as a context manager,
    or call ``start()`` and, always, ``stop()``."""

    def __init__(self, raddb: Path, address: str, port: int, secret: str,
                 run_prefix: tuple[str, ...] = (), debug: bool = False):
        self.raddb = Path(raddb)
        self.address, self.port, self.secret = address, port, secret
        self.run_prefix = tuple(run_prefix)
        self.debug = debug
        self.proc: subprocess.Popen | None = None
        self.log_dir = self.raddb / "log"  # the config's logdir (build_config puts it here)
        self.output = self.log_dir / "radiusd.out"

    @classmethod
    def for_config(cls, raddb: Path, cfg: RadiusConfig, **kw) -> "RadiusServer":
        return cls(raddb, cfg.address, cfg.port, cfg.secret, **kw)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def log_file(self) -> Path:
        """Where the server logs: radius.log with -f, the captured stdout with -X."""
        return self.output if self.debug else self.log_dir / "radius.log"

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 20.0) -> "RadiusServer":
        """Start and wait until it answers a Status-Server; stops it again on failure."""
        args = [*self.run_prefix, FREERADIUS, "-f", "-d", str(self.raddb)]
        if self.debug and (self.raddb / "sites-enabled" / RADSEC_SITE).exists():
            args += ["-xx", "-l", "stdout"]  # -X is single-threaded, which TLS sockets refuse
        elif self.debug:
            args.append("-X")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RadiusdError(f"radiusd exited with {self.proc.returncode}:\n{self._tail()}")
            if "Ready to process requests" in self.log_text() and status_server(
                    self.address, self.port, self.secret, self.run_prefix, timeout=0.5):
                return
            time.sleep(0.1)
        raise RadiusdError(f"radiusd did not answer within {timeout}s:\n{self._tail()}")

    def _tail(self, lines: int = 30) -> str:
        text = self.log_text()
        if self.log_file != self.output and self.output.exists():
            text += self.output.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL by PID (a crash, for fault injection) and reap it; ``start()`` runs it again."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, then SIGKILL; reaps the process. Safe to call twice."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)
        except ProcessLookupError:
            self.proc.wait(timeout)

    def cpu_seconds(self) -> float:
        """radiusd's user + system CPU time so far (``/proc/PID/stat`` fields 14 and 15)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> "RadiusServer":
        return self.start() if not self.running() else self

    def __exit__(self, *exc) -> None:
        self.stop()
