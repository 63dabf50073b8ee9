"""Run eapol_test (wpa_supplicant's RADIUS-side test client) for one EAP method.

How this works: write a one-network wpa_supplicant config for EAP-TLS (device certificate and
key, the lab CA to verify the server) or EAP-PWD (identity and password), run ``eapol_test``
against the server, and return its exit code (0 = EAP-Success and an MSK) and output.
eapol_test always sends Message-Authenticator with EAP-Message.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def tls_network(identity: str, cert: Path, key: Path, ca: Path) -> str:
    return (f'network={{\n\tkey_mgmt=IEEE8021X\n\teap=TLS\n\tidentity="{identity}"\n'
            f'\tca_cert="{ca}"\n\tclient_cert="{cert}"\n\tprivate_key="{key}"\n'
            f'\teapol_flags=0\n}}\n')


def pwd_network(identity: str, password: str) -> str:
    return (f'network={{\n\tkey_mgmt=IEEE8021X\n\teap=PWD\n\tidentity="{identity}"\n'
            f'\tpassword="{password}"\n\teapol_flags=0\n}}\n')


def eapol_test(conf_dir: Path, name: str, network: str, address: str, port: int, secret: str,
               timeout: int = 10) -> tuple[int, str]:
    """Run eapol_test once; returns (exit code, output)."""
    conf = Path(conf_dir) / f"{name}.conf"
    conf.write_text(network)
    r = subprocess.run(["eapol_test", "-c", str(conf), "-a", address, "-p", str(port), "-s", secret,
                        "-t", str(timeout), "-r", "0"],
                       capture_output=True, text=True, timeout=timeout + 20)
    return r.returncode, r.stdout + r.stderr
