"""A real FreeRADIUS for one test module: build a private config directory from the repo's
configs, check it, start ``freeradius -f``, stop it by PID and assert it is gone.

Set ``TESSERA_RADIUSD_DEBUG=1`` to run radiusd with ``-X`` (its output is in the config
directory's ``log/radiusd.out``, printed on failure).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from tessera.lab import radiusd
from tessera.radius.client import RadiusClient, Server

SECRET = "tessera-test-secret"  # the device clients' (tessera site)
NAS_SECRET = "tessera-test-nas-secret"  # the NAS clients' (tessera-nas site: EAP, eapol_test)
DEBUG = os.environ.get("TESSERA_RADIUSD_DEBUG") == "1"


class RunningServer:
    """What a test needs to talk to a started server: ``port``/``secret`` for devices (Tessera
    operations), ``nas_port``/``nas_secret`` for switches (EAP, e.g. eapol_test)."""

    def __init__(self, server: radiusd.RadiusServer, cfg: radiusd.RadiusConfig):
        self.proc, self.cfg = server, cfg
        self.address, self.port, self.secret = cfg.address, cfg.port, cfg.secret
        self.nas_port, self.nas_secret = cfg.nas_port, cfg.nas_secret

    def client(self, secret: str | None = None, **kw) -> RadiusClient:
        kw.setdefault("timeout", 1.0)
        kw.setdefault("retries", 0)
        srv = Server(self.cfg.server_id, self.address, self.port, (secret or self.secret).encode())
        return RadiusClient([srv], **kw)

    def server_entry(self, secret: str | None = None) -> Server:
        return Server(self.cfg.server_id, self.address, self.port, (secret or self.secret).encode())


def make_server(directory: Path, **cfg_kw):
    """Context manager: build, check and start a server; stop it by PID and assert it is gone."""
    @contextlib.contextmanager
    def run():
        cfg_kw.setdefault("nas_secret", NAS_SECRET)
        cfg = radiusd.RadiusConfig(secret=SECRET, **cfg_kw)
        raddb = radiusd.build_config(directory / "raddb", cfg)
        radiusd.check_config(raddb)
        server = radiusd.RadiusServer.for_config(raddb, cfg, debug=DEBUG)
        try:
            server.start()
            yield RunningServer(server, cfg)
        except BaseException:
            print(server._tail(80))
            raise
        finally:
            server.stop()
            pid = server.pid
            assert not server.running(), "radiusd still running after stop()"
            assert pid is None or not Path(f"/proc/{pid}").exists(), f"radiusd {pid} left behind"

    return run()
