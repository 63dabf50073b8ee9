"""Shipped configuration matches the code it starts."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_agent_unit_starts_the_agent_with_options_it_has():
    unit = (REPO / "configs" / "systemd" / "tessera-agent@.service").read_text()
    exec_start = re.search(r"^ExecStart=(.*?)(?<!\\)$", unit, re.M | re.S).group(1).replace("\\\n", " ")
    argv = exec_start.split()
    assert argv[0].endswith("/tessera-agent") and argv[1] == "run"
    help_text = subprocess.run([sys.executable, "-m", "tessera.agent.daemon", "run", "--help"],
                               capture_output=True, text=True, check=True).stdout
    for opt in (a for a in argv if a.startswith("--")):
        assert opt in help_text, opt
