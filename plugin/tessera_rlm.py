"""rlm_python3 entry module for Tessera (``module = tessera_rlm`` in mods-available/tessera).

How this works: FreeRADIUS imports this file by its bare name from ``python_path``, which it
*appends* to ``sys.path`` after Debian's dist-packages. Before anything imports
``cryptography`` or ``tessera``, this shim puts the venv named in the module's ``config {}``
first on ``sys.path`` (``site.addsitedir`` also processes the venv's ``.pth`` files, which an
editable install needs), then hands every callback to ``tessera.plugin.adapter``.

It stays tiny on purpose: the adapter holds the logic and is tested without FreeRADIUS.
"""

import site
import sys

import radiusd  # provided by rlm_python3 inside radiusd only


def _venv_first(venv: str) -> None:
    """Put ``venv``'s site-packages (and its .pth entries) in front of sys.path."""
    if not venv:
        return
    before = list(sys.path)
    tag = "python%d.%d" % sys.version_info[:2]
    site.addsitedir(f"{venv}/lib/{tag}/site-packages")
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before


_venv_first(radiusd.config.get("venv", ""))

from tessera.plugin import adapter  # noqa: E402  (must follow the sys.path fix)

_plugin = None


def instantiate(_pairs):
    """Open the realm once per server process; must return 0 (also runs on ``radiusd -C``)."""
    global _plugin
    try:
        _plugin = adapter.Plugin.from_config(dict(radiusd.config), radiusd)
    except Exception as exc:  # noqa: BLE001 -- report and refuse to start, never raise
        radiusd.radlog(radiusd.L_ERR, "tessera: cannot open the realm: " + adapter.describe(exc))
        return -1
    return 0


def authorize(pairs):
    """Tessera operation, EAP-TLS admission or EAP-PWD password (see the sites)."""
    if _plugin is None:  # instantiate failed: it already logged why
        return adapter.internal_error_result(radiusd)
    return _plugin.authorize(pairs)


def post_auth(pairs):
    """After an accepted 802.1X admission: remember the device's NAS and port (never rejects)."""
    if _plugin is None:
        return radiusd.RLM_MODULE_NOOP
    return _plugin.post_auth(pairs)


def detach(_pairs=None):
    """Close the realm on shutdown (and after ``radiusd -C``): a PostgreSQL realm's registry
    listener stops and its connections close (tessera.pg_cache)."""
    if _plugin is not None:
        _plugin.close()
    return 0
