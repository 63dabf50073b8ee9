"""Fuzz `BootstrapBundle.from_json`: the bundle file a device (and `tessera-agent run --bundle`)
loads.

The input is the file's bytes; like `open(path).read()` they are decoded as UTF-8 (bytes that are
not are kept as surrogate escapes, so every input reaches the loader).

Contract: `from_json` returns a bundle or raises `MalformedError` (its documented error: `main()`
prints it and exits 1). A bundle it returns is sane -- a realm and device id that pass their
checks, servers with string ids and hosts and a port 1..65535, PEMs as bytes -- and what `to_json` writes of it reads back to the same
bundle (the written form is a fixed point).

    python fuzz/fuzz_bundle.py -runs=1000000 [CORPUS_DIR]
"""

import json

import common

with common.instrumented():
    from tessera.errors import MalformedError
    from tessera.identity import BootstrapBundle, check_device_id, check_realm
    import world


def test_one(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    try:
        b = BootstrapBundle.from_json(text)
    except MalformedError:
        return
    check_realm(b.realm)
    check_device_id(b.device_id)
    for s in b.servers:
        assert isinstance(s.server_id, str) and isinstance(s.host, str), s
        assert 0 < s.port < 65536, f"port {s.port} accepted"
    for pem in (b.device_key_pem, b.device_certificate_pem, b.ca_certificate_pem):
        assert pem is None or isinstance(pem, bytes), type(pem)
    assert isinstance(b.radius_secret, str)
    written = b.to_json()
    assert BootstrapBundle.from_json(written).to_json() == written, "to_json → from_json changed the bundle"


def make():
    w = world.World()
    generated = w.realm.enrol_generated("SN-GEN-1", world.SERVERS, "s3cret", world.T0)
    plain = w.realm.bundle(world.A, world.SERVERS, "")
    d = json.loads(plain.to_json())
    seeds = [generated.to_json().encode(), plain.to_json().encode(),
             json.dumps(d, separators=(",", ":")).encode(),
             json.dumps({**d, "extra": {"note": "x"}, "servers": []}).encode(),
             json.dumps({**d, "servers": [{"id": 1, "host": 2, "port": "1812"}]}).encode(),
             b"[]", b"{}", b'{"format": "tessera-bootstrap-1"}', b"1e999", b"[" * 50]
    return test_one, seeds


if __name__ == "__main__":
    common.harness_main("bundle", make, max_len=8192)
