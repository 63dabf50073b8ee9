"""A stand-in realm for testing the RADIUS plumbing without the core's protocol.

How this works: FreeRADIUS loads it through the tessera module's ``realm_opener =
stub_realm:open_realm`` (the test fixture adds this directory to ``python_path``). The "db"
is a JSON file ``{"devices": {id: {"serial": hex, "revoked": bool, "password": str}}}`` and
the kek is ignored. ``handle`` speaks a toy protocol that exercises every adapter path:

* ``b"TSR1" + payload``   -> ``b"ACK1" + payload[::-1]`` (long payloads test splitting);
* ``b"TSR1revoked"``      -> ``RevokedError``;
* ``b"TSR1crash"``        -> ``ZeroDivisionError`` (the adapter's "internal error" path);
* anything else           -> ``MalformedError`` (garbage, truncation, empty).
"""

from __future__ import annotations

import json

from tessera.errors import CertificateError, MalformedError, RevokedError, UnknownDeviceError

MAGIC = b"TSR1"


class StubService:
    def __init__(self, devices: dict, server_id: str):
        self.devices = devices
        self.server_id = server_id

    def handle(self, request: bytes, now: float) -> bytes:
        if not request.startswith(MAGIC) or len(request) == len(MAGIC):
            raise MalformedError("not a TSR1 message (garbage or truncated)")
        payload = request[len(MAGIC):]
        if payload == b"revoked":
            raise RevokedError("device is revoked")
        if payload == b"crash":
            return 1 // 0  # noqa: the adapter must survive this
        return b"ACK1" + payload[::-1]

    def _device(self, device_id: str) -> dict:
        dev = self.devices.get(device_id)
        if dev is None:
            raise UnknownDeviceError(f"device {device_id!r} is not enrolled")
        if dev.get("revoked"):
            raise RevokedError(f"device {device_id!r} is revoked")
        return dev

    def handle_as(self, request: bytes, sender: str, now: float) -> bytes:
        return self.handle(request, now)  # the stub has no device identities to bind

    def error_reply(self, exc, now: float) -> bytes:
        return b""  # the stub holds no service key: its rejects carry only Reply-Message

    def record_location(self, device_id: str, nas_identifier: str, nas_address: str, nas_port: str,
                        calling_station: str, now: float) -> None:
        pass  # the stub keeps no locations

    def admit_certificate(self, serial_hex: str, issuer: str, common_name: str, now: float) -> str:
        dev = self._device(common_name)
        if dev.get("serial", "").lower() != serial_hex.lower():
            raise CertificateError("certificate serial does not match the registry")
        return common_name

    def eap_pwd_password(self, device_id: str, now: float) -> str:
        return self._device(device_id)["password"]


class StubRealm:
    def __init__(self, db: str):
        with open(db) as f:
            self.devices = json.load(f)["devices"]

    def service(self, server_id: str) -> StubService:
        return StubService(self.devices, server_id)

    def close(self) -> None:
        pass

    def reload_if_changed(self) -> bool:
        return False  # the stub has no service keys to rotate


def open_realm(db: str, kek: str) -> StubRealm:
    return StubRealm(db)
