"""Helpers for the installer's tests: what a tree `tools/install-radius --root ROOT` wrote.

    AS_FREERAD            run a command as freerad, the installed registry's owner
    registry(root, sql)   one statement on the installed registry, as freerad, with the
                          installed venv's Python (the tree's, not the test's); the rows
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

AS_FREERAD = ("setpriv", "--reuid=freerad", "--regid=freerad", "--init-groups")


def registry(root: Path, sql: str, *params) -> list:
    """Run one statement on the installed registry as freerad (its owner); returns the rows."""
    venv_python = root / "usr" / "local" / "lib" / "tessera" / "venv" / "bin" / "python"
    code = ("import json, sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
            "rows = db.execute(sys.argv[2], json.loads(sys.argv[3])).fetchall(); db.commit(); "
            "print(json.dumps(rows))")
    out = subprocess.run([*AS_FREERAD, str(venv_python), "-I", "-c", code,
                          str(root / "var" / "lib" / "tessera" / "registry.db"), sql, json.dumps(params)],
                         capture_output=True, text=True, check=True)
    return [tuple(r) for r in json.loads(out.stdout)]
