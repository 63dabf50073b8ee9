"""Run eapol_test (wpa_supplicant's RADIUS-side test client) for one EAP method.

How this works: write a one-network wpa_supplicant config for EAP-TLS (device certificate and
key, the lab CA to verify the server) or EAP-PWD (identity and password), run ``eapol_test``
against the server, and return its exit code (0 = EAP-Success and an MSK) and output.
eapol_test always sends Message-Authenticator with EAP-Message.

FreeRADIUS 3.2's rlm_eap_pwd fails about one session in 150 before its first request ("failed to
obtain password element", from the session's random token; 2 of 300 exchanges with the right
password measured here), answering the supplicant's NAK to EAP-PWD with Access-Reject -- just as
it does when the realm refuses the device's password. ``eapol_test`` therefore runs an EAP-PWD
exchange that the server refused before it began up to ``attempts`` times (3: one in ~3 million
fails all three by chance), so a test sees the realm's answer, not that bug; a test whose realm
changes state on the first try (revoking_realm) passes ``attempts=1``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tessera import eappwd


def tls_network(identity: str, cert: Path, key: Path, ca: Path) -> str:
    return (f'network={{\n\tkey_mgmt=IEEE8021X\n\teap=TLS\n\tidentity="{identity}"\n'
            f'\tca_cert="{ca}"\n\tclient_cert="{cert}"\n\tprivate_key="{key}"\n'
            f'\teapol_flags=0\n}}\n')


def pwd_network(identity: str, password: str, outer_identity: str | None = None) -> str:
    """EAP-PWD with peer id ``identity``; ``outer_identity`` (wpa_supplicant's
    anonymous_identity) is what the EAP-Identity response, and so User-Name, says instead.
    The password goes in as the agent configures it: its wire form (``tessera.eappwd``)."""
    outer = f'\tanonymous_identity="{outer_identity}"\n' if outer_identity is not None else ""
    return (f'network={{\n\tkey_mgmt=IEEE8021X\n\teap=PWD\n\tidentity="{identity}"\n{outer}'
            f'\tpassword={eappwd.supplicant_value(password)}\n\teapol_flags=0\n}}\n')


def pwd_began(out: str) -> bool:
    """Whether the server sent the first request of EAP-PWD (method 52) in this output."""
    return re.search(r"Received EAP-Request id=\d+ method=52\b", out) is not None


def eapol_test(conf_dir: Path, name: str, network: str, address: str, port: int, secret: str,
               timeout: int = 10, extra: tuple[str, ...] = (), attempts: int = 3) -> tuple[int, str]:
    """Run eapol_test; returns (exit code, output) of the last run. ``extra``: more eapol_test
    options, e.g. ``-N32:s:switch-9`` (an attribute of the sender's choosing) or
    ``-M02:00:5e:10:00:09``. An EAP-PWD exchange refused before it began runs again, up to
    ``attempts`` runs in all (the module docstring)."""
    conf = Path(conf_dir) / f"{name}.conf"
    conf.write_text(network)
    for _ in range(max(1, attempts) if "eap=PWD" in network else 1):
        r = subprocess.run(["eapol_test", "-c", str(conf), "-a", address, "-p", str(port), "-s", secret,
                            "-t", str(timeout), "-r", "0", *extra],
                           capture_output=True, text=True, timeout=timeout + 20)
        out = r.stdout + r.stderr
        if r.returncode == 0 or pwd_began(out):
            break
    return r.returncode, out
