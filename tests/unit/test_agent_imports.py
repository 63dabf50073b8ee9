"""The device agent imports only what runs (issue 11: ≤ 30 MiB RSS per agent). A fresh interpreter
imports the agent's entry module and reports what is in sys.modules: a later import that drags
scapy, pyroute2's whole API, X.509, ssl or tempfile back into every agent fails here. Beside each
guard, the same probe shows the module does load where it is meant to, so a guard cannot pass
because the probe saw nothing."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

# Never loaded by `import tessera.agent.daemon`, with what each would cost every agent:
NEVER_IN_AGENT = (
    "scapy",  # dissection only (tessera.agent.layer); ~30x slower framing, never on the I/O path
    "pyroute2.iproute", "pyroute2.ndb", "pyroute2.ipdb", "pyroute2.conntrack", "asyncio", "sqlite3",  # pyroute2/__init__.py
    "cryptography.x509",  # certificates are the service's and the CLI's business
    "tessera.radius.radsec", "ssl",  # imported by Agent() for a RadSec bundle only
    "tempfile",  # with shutil, bz2, lzma
    "pathlib",  # ~0.9 MiB; the editable install's finder loads it at start-up, a production agent does not
)


def _loaded_after(code: str) -> set[str]:
    """sys.modules of a fresh interpreter after running `code`; what site loaded before is
    forgotten first, so that an import of it by `code` shows."""
    probe = (f"import sys\nfor m in {NEVER_IN_AGENT!r}: sys.modules.pop(m, None)\n"
             f"{code}\nimport json\nprint(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout.splitlines()[-1]))


def _heavy(loaded: set[str]) -> set[str]:
    return {m for m in loaded for never in NEVER_IN_AGENT if m == never or m.startswith(never + ".")}


def test_agent_entry_module_loads_nothing_heavy():
    loaded = _loaded_after("import tessera.agent.daemon")
    assert {"tessera.agent.daemon", "pyroute2.netlink.rtnl.ifinfmsg", "pyrad.packet"} <= loaded
    assert _heavy(loaded) == set()


def test_probe_sees_the_heavy_modules_where_they_belong():
    loaded = _loaded_after("import tessera.agent.layer, tessera.radius.radsec, pyroute2, tempfile, pathlib\n"
                           "from tessera.identity import CertificateAuthority\n"
                           "CertificateAuthority.generate('probe', 1.7e9)")
    assert {"scapy", "pyroute2.iproute", "cryptography.x509", "ssl", "tempfile", "pathlib"} <= _heavy(loaded)


def test_deferred_pyroute2_decodes_links_and_still_gives_its_whole_api():
    """RTM_NEWLINK built from rtnetlink(7)'s layout: nlmsghdr, ifinfomsg, IFLA_IFNAME (3)."""
    name = b"eth0\0"
    attr = struct.pack("=HH", 4 + len(name), 3) + name + b"\0" * (-len(name) % 4)
    body = struct.pack("=BxHiII", 0, 1, 2, 0x10043, 0) + attr  # AF_UNSPEC, ARPHRD_ETHER, index 2, UP|RUNNING|LOWER_UP
    down = struct.pack("=BxHiII", 0, 1, 2, 0x1003, 0) + attr  # UP, no LOWER_UP: no carrier
    msgs = b"".join(struct.pack("=IHHII", 16 + len(b), 16, 0, 0, 0) + b for b in (body, down))
    code = ("import sys\n"
            "from tessera.agent.link import parse_links\n"
            f"links = parse_links({msgs!r})\n"
            "whole_api_before = 'pyroute2.iproute' in sys.modules\n"
            "from pyroute2 import IPRoute\n"
            "print(links, whole_api_before, IPRoute.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split("\n")[0] == "[('eth0', True, False), ('eth0', False, False)] False pyroute2.iproute.linux"
