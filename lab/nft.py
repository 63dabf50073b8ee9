"""nftables bridge-family rules that enforce 802.1X port state in the switch namespace.

How this works
--------------
hostapd ``driver=wired`` only tracks who is authorized; it never blocks a frame.  The table
built here does, in the bridge family of the switch namespace:

* ``prerouting`` (every frame entering the bridge from a port):
  EAPOL (EtherType 0x888e) is always accepted, so authentication can happen; a frame from a
  *controlled* port is accepted only if ``(port . source MAC)`` is in set ``authorized``;
  anything else from a controlled port is dropped.  Uncontrolled ports (the uplink) pass.
* ``forward``: a frame is not forwarded *to* a controlled port that has no authorized
  station (set ``open_ports``), so an unauthenticated device hears nothing but EAPOL.
  (Chain names avoid ``in``/``out``/``fwd``, which are nft keywords.)

The port controller only adds and deletes set elements; the chains never change at run time.
Every function here returns nft script text; :func:`apply` feeds it to ``nft -f -`` inside the
namespace.  Nothing else in the lab writes nftables.
"""

from __future__ import annotations

from tessera.lab.netns import sh

TABLE = "tessera_pae"
ETH_P_PAE = 0x888E


def ruleset(controlled: list[str], table: str = TABLE) -> str:
    """Full table for the given controlled port names (idempotent: deletes the old table)."""
    ports = ", ".join(f'"{p}"' for p in controlled)
    elems = f"elements = {{ {ports} }}" if controlled else ""
    return f"""\
table bridge {table}
delete table bridge {table}
table bridge {table} {{
    set controlled {{ type ifname; {elems} }}
    set open_ports {{ type ifname; }}
    set authorized {{ type ifname . ether_addr; }}
    chain ingress_port {{
        type filter hook prerouting priority -200; policy accept;
        ether type 0x{ETH_P_PAE:04x} accept
        iifname != @controlled accept
        iifname . ether saddr @authorized accept
        counter drop comment "unauthorized source on a controlled port"
    }}
    chain to_port {{
        type filter hook forward priority -200; policy accept;
        ether type 0x{ETH_P_PAE:04x} accept
        oifname @controlled oifname != @open_ports counter drop comment "port closed"
    }}
}}
"""


def _elem(port: str, mac: str) -> str:
    return f'"{port}" . {mac}'


def authorize(port: str, mac: str, open_port: bool, table: str = TABLE) -> str:
    """Script that adds ``(port . mac)`` to ``authorized`` (and opens the port if asked)."""
    s = f"add element bridge {table} authorized {{ {_elem(port, mac)} }}\n"
    if open_port:
        s += f'add element bridge {table} open_ports {{ "{port}" }}\n'
    return s


def deauthorize(port: str, mac: str, close_port: bool, table: str = TABLE) -> str:
    """Script that removes ``(port . mac)`` (and closes the port if it was the last one)."""
    s = f"delete element bridge {table} authorized {{ {_elem(port, mac)} }}\n"
    if close_port:
        s += f'delete element bridge {table} open_ports {{ "{port}" }}\n'
    return s


def apply(ns: str, script: str) -> None:
    """Run an nft script inside namespace ``ns``."""
    sh(["nft", "-f", "-"], ns=ns, input=script.encode())


def list_set(ns: str, name: str, table: str = TABLE) -> str:
    """Text of one set as nft lists it (for tests and debugging)."""
    return sh(["nft", "list", "set", "bridge", table, name], ns=ns).stdout.decode()


def counters(ns: str, table: str = TABLE) -> str:
    """Text of the table with its drop counters."""
    return sh(["nft", "list", "table", "bridge", table], ns=ns).stdout.decode()
