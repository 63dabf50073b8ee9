"""The tunnel's nftables guard: the tunnel's addresses are reachable through tessera0 only, and
nothing for the tunnel's prefixes leaves in clear on another interface -- also after a crash.

Why
---
Linux is a weak host: an address on tessera0 is answered on every interface (eth0 too, ARP
included), so a station on the underlay segment with no keys could send plain IP to a tunnel
address, with a peer's tunnel address as its source, and a service meant for tunnel peers would
take it. And when the agent dies, tessera0 goes with its routes: traffic for the tunnel's
prefixes then follows the default route out of eth0, in clear.

What
----
One nftables transaction (``nft -f -``, a one-off subprocess: the agent keeps no libnftables in
memory) makes two tables named after the tunnel interface, ``inet tessera_guard_<name>`` and
``arp tessera_guard_<name>``, each first declared and deleted in the same transaction, so a
start rebuilds them whatever a previous run left:

- inet input: from an interface other than tessera0 or lo, drop packets to the tunnel's
  prefixes (its addresses, and the prefix's broadcast and anycast addresses) and packets with a
  source in them (IPv4 and IPv6);
- inet forward: nothing from the agent's port (the underlay, in clear) into tessera0, no packet
  with a source in the tunnel's prefixes from anywhere but tessera0 (a device that routes, as an
  OSPF router does, must not carry a station's plain or forged packets into a peer's session);
- inet output and forward: drop packets to the tunnel's prefixes that would leave on an
  interface other than tessera0 (or lo, for the device's own addresses);
- arp input: ARP for or from the tunnel's addresses/prefixes only on tessera0 (not answered on
  eth0); arp output: no ARP for the tunnel's prefixes on another interface.

Interfaces are matched by name (``iifname``/``oifname``), so the rules hold while tessera0 does
not exist: **the tables outlive a crash** (SIGKILL, TapGone, a failed start: fail closed) and
traffic for the tunnel's prefixes is dropped, not sent in clear, until the agent is back. **No
exit removes them** -- a stop, an exception, a lost tap: the next start rebuilds them;
``tessera-agent unguard --tunnel-name NAME`` (:meth:`Guard.remove`) removes them once the agent
is stopped for good. Stub networks
reached over the tunnel (routes learned by OSPF) are not covered: their prefixes are not known
here.

Without ``nft`` (Debian package ``nftables``) or nf_tables in the kernel, :meth:`Guard.install`
raises GuardError: the agent refuses to run a tunnel with addresses rather than run it open.
"""

from __future__ import annotations

import os
import re

NFT_PATHS = ("/usr/sbin/nft", "/sbin/nft")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")


class GuardError(OSError):
    """The guard could not be installed (nft missing or refused); the message says what to do."""


def table_name(ifname: str) -> str:
    """The guard's table for tunnel interface `ifname` (the same in the inet and arp families):
    one name per interface name (its bytes in hex: "a-b" and "a_b" get different tables)."""
    if not _NAME.fullmatch(ifname):
        raise ValueError(f"interface name {ifname!r}: the guard takes letters, digits, '_', '.', '-' (1-15)")
    return "tessera_guard_" + ifname.encode().hex()


def _set(items) -> str:
    return "{ " + ", ".join(str(i) for i in items) + " }"


def ruleset(ifname: str, addresses, port: str | None = None) -> str:
    """The nft script that (re)builds the guard of `ifname` for its `addresses` (ipaddress
    interfaces: the address and its prefix); `port`, the agent's 802.1X port (the underlay),
    may not forward into the tunnel."""
    t = table_name(ifname)
    if port is not None:
        table_name(port)  # the same check of the name before it goes into the script
    v4 = [a for a in addresses if a.version == 4]
    v6 = [a for a in addresses if a.version == 6]
    tun = f'"{ifname}"'
    inp, out, fwd_in, arp_in, arp_out = [], [], [], [], []
    for fam, addrs in (("ip", v4), ("ip6", v6)):
        if not addrs:
            continue
        hosts, nets = _set(sorted({a.ip for a in addrs})), _set(sorted({a.network for a in addrs}))
        # the whole prefix: its broadcast and anycast addresses too
        inp += [f"{fam} daddr {nets} drop", f"{fam} saddr {nets} drop"]
        out += [f"{fam} daddr {nets} drop"]
        fwd_in += [f"iifname != {tun} {fam} saddr {nets} drop"]  # no forged tunnel source forwarded in
        if fam == "ip":
            arp_in += [f"arp daddr ip {hosts} drop", f"arp saddr ip {nets} drop"]
            arp_out += [f"arp daddr ip {nets} drop"]

    if port is not None:  # plain traffic from the underlay is not carried into the tunnel for anyone
        fwd_in.insert(0, f'iifname "{port}" oifname {tun} drop')

    def chain(name: str, hook: str, accept: str, rules: list[str], first: tuple[str, ...] = ()) -> str:
        body = "".join(f"\n        {r}" for r in [*first, accept, *rules])
        return (f"    chain {name} {{\n        type filter hook {hook} priority filter - 10; policy accept;"
                f"{body}\n    }}\n")

    script = (f"table inet {t}\ndelete table inet {t}\ntable arp {t}\ndelete table arp {t}\n"
              f"table inet {t} {{\n"
              + chain("input", "input", f'iifname {{ {tun}, "lo" }} accept', inp)
              + chain("forward", "forward", f"oifname {tun} accept", out, tuple(fwd_in))
              + chain("output", "output", f'oifname {{ {tun}, "lo" }} accept', out)
              + "}\n")
    if arp_in:
        script += (f"table arp {t} {{\n" + chain("input", "input", f"iifname {tun} accept", arp_in)
                   + chain("output", "output", f"oifname {tun} accept", arp_out) + "}\n")
    return script


def nft_path() -> str | None:
    """nft on PATH, or in /usr/sbin or /sbin (a service's PATH may lack them); None if absent."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    candidates = [os.path.join(d, "nft") for d in dirs] + list(NFT_PATHS)
    return next((p for p in candidates if os.path.isfile(p) and os.access(p, os.X_OK)), None)


def _run(args: list[str], script: str) -> None:
    import subprocess  # only at start and exit
    try:
        done = subprocess.run(args, input=script, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GuardError(getattr(exc, "errno", None) or 0, f"{args[0]}: {exc}") from None
    if done.returncode != 0:
        raise GuardError(0, f"nft refused the guard: {done.stderr.strip()[:500] or f'exit {done.returncode}'}")


class Guard:
    """The nftables guard of tunnel interface `ifname` with `addresses`."""

    def __init__(self, ifname: str, addresses, port: str | None = None):
        self.ifname, self.addresses, self.port = ifname, tuple(addresses), port
        self.table = table_name(ifname)
        self.installed = False

    def install(self) -> None:
        """Build (or rebuild) the guard's tables in one transaction; GuardError if nft is missing
        or refuses (fail closed: the caller must not run the tunnel)."""
        nft = nft_path()
        if nft is None:
            raise GuardError(0, "nft not found: the tunnel's addresses need the nftables guard "
                                "(install the Debian package nftables), or run with --no-tunnel")
        _run([nft, "-f", "-"], ruleset(self.ifname, self.addresses, self.port))
        self.installed = True

    def remove(self) -> None:
        """Delete the guard's tables; GuardError if nft refuses."""
        if self.installed:
            remove_guard(self.ifname)
            self.installed = False


def remove_guard(ifname: str) -> str:
    """Delete the guard of tunnel interface `ifname`, whatever run made it (`tessera-agent
    unguard`); returns its table name. GuardError if nft is missing or refuses."""
    nft = nft_path()
    if nft is None:
        raise GuardError(0, "nft not found: cannot remove the guard")
    t = table_name(ifname)
    _run([nft, "-f", "-"], f"table inet {t}\ndelete table inet {t}\ntable arp {t}\ndelete table arp {t}\n")
    return t


__all__ = ["Guard", "GuardError", "remove_guard", "ruleset", "table_name"]
