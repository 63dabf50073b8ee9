"""tessera-admin: the operator's tool for a realm (enrol, list, show, revoke, rotate, audit, migrate).

Works on the realm's registry and KEK directly (as kadmin.local does), so it runs on a RADIUS
server or wherever the registry is reachable. `--registry` names the registry by URL, SQLite or
PostgreSQL (`tessera.registry_url`); every command opens it through `open_registry`, which
refuses a registry at another schema version than this code's. `migrate` alone brings an older
one to this version (every step in one transaction, under PostgreSQL's advisory lock or SQLite's
write lock), after every server of the realm runs this version. Output is for people by default
and JSON with --json. Exit codes: 0 done, 1 refused (unknown device, duplicate, bad certificate,
registry-unavailable, a schema this code does not serve...), 2 usage, 3 `migrate --check`: a
migration is needed.
Nothing it prints or logs contains key material; files it writes with keys are 0600.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import re
import sys
import time

from .errors import InvalidTicket, MalformedError, RegistryUnavailableError, TesseraError
from .identity import RADSEC, UDP, ServerEntry, check_device_id, load_certificate, pem_certificate
from .realm import Realm, create_kek, open_realm, read_kek
from .registry import RegistryError
from .registry_url import display_url, open_registry
from .seal import point_bytes
from .secretfile import SecretFileError, write_secret
from .service import Policy

DEFAULT_DB = os.environ.get("TESSERA_DB", "/var/lib/tessera/registry.db")
DEFAULT_KEK = os.environ.get("TESSERA_KEK", "/var/lib/tessera/kek")


def _when(t: int | None) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") if t else "-"


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")  # RFC 1123 host name


def _host_port(spec: str, default_port: int) -> tuple[str, int]:
    """host[:port]: an IPv4 address, an IPv6 address (bare, or in brackets to add a port) or a
    DNS name; the port 1-65535. Raises ValueError naming what is wrong."""
    if spec.startswith("["):
        host, bracket, rest = spec[1:].partition("]")
        if not bracket or rest[:1] not in ("", ":"):
            raise ValueError("an IPv6 address in brackets is [address] or [address]:port")
        ipaddress.IPv6Address(host)
        has_port, port = rest.startswith(":"), rest[1:]
    elif spec.count(":") > 1:  # a bare IPv6 address, no port
        ipaddress.IPv6Address(spec)
        host, has_port, port = spec, False, ""
    else:
        host, colon, port = spec.partition(":")
        has_port = bool(colon)
        if not _HOSTNAME.fullmatch(host) or (host.replace(".", "").isdigit() and not _is_ipv4(host)):
            raise ValueError(f"{host!r} is neither an IP address nor a host name")
    if has_port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"port {port!r} is not a number from 1 to 65535")
    return host, int(port) if has_port else default_port


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
        return True
    except ValueError:
        return False


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _server(spec: str) -> tuple[str, str, int | None]:
    """id=host[:port] -> (id, host, port or None: the transport's default port)"""
    try:
        sid, addr = spec.split("=", 1)
        try:
            check_device_id(sid)  # server ids share the device ids' syntax (both travel as ids)
        except MalformedError:
            raise ValueError(f"bad server id {sid!r}") from None
        host, port = _host_port(addr, 0)
        return sid, host, port or None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"server must be id=host[:port], not {spec!r} ({exc})") from None


def _servers(a) -> list[ServerEntry]:
    """The bundle's servers: --server's port is the RadSec port (default 2083) for a RadSec
    bundle, the device listener's UDP port (default 11812) for a UDP one."""
    if a.transport == RADSEC:
        return [ServerEntry(sid, host, radsec_port=port or ServerEntry.radsec_port) for sid, host, port in a.server]
    return [ServerEntry(sid, host, port=port or ServerEntry.port) for sid, host, port in a.server]


def _nas_address(spec: str) -> tuple[str, int]:
    """host[:port] of a NAS's Disconnect-Request listener (RFC 5176), port 3799 by default."""
    try:
        return _host_port(spec, 3799)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"NAS address must be host[:port], not {spec!r} ({exc})") from None


def _write_private(path: str, data: str | bytes) -> None:
    """A file with a secret (a bundle): 0600 even over an existing file, never through a symlink."""
    write_secret(path, data.encode() if isinstance(data, str) else data)


def _public_key(arg: str) -> bytes:
    """A public key given as a PEM file, a certificate file, or hex of the point."""
    if os.path.exists(arg):
        data = open(arg, "rb").read()
        if b"CERTIFICATE" in data:
            return point_bytes(load_certificate(data).public_key())
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        return point_bytes(load_pem_public_key(data))
    return bytes.fromhex(arg)


def _device_row(r) -> dict:
    return {"device_id": r.device_id, "state": r.state.value, "enrolled_by": r.enrolled_by,
            "generation": r.generation, "registered_at": r.registered_at,
            "registration_not_after": r.registration_not_after, "certificate_serial": r.cert_serial,
            "certificate_issuer": r.cert_issuer, "public_key": r.public_key.hex(),
            "created": r.created, "updated": r.updated}


def cmd_init(a, now):
    reg = open_registry(a.registry)  # before the KEK: a refused registry leaves no KEK behind
    try:
        kek = read_kek(a.kek) if os.path.exists(a.kek) else create_kek(a.kek)
        policy = Policy(a.registration_lifetime, a.tgt_lifetime, a.session_lifetime, a.clock_skew)
        realm = Realm.init(reg, kek, a.realm, now, policy)
    finally:
        reg.close()
    print(f"realm {realm.name} created in {display_url(a.registry)}; KEK {a.kek}; service key version 1")
    print(f"service public key: {realm.service_public_key.hex()}")


def cmd_enrol(a, now, realm: Realm):
    if a.how == "key":
        cert = None
        public_key = _public_key(a.public_key)
        if a.certificate_out:
            cert = realm.issue_certificate(a.device_id, public_key, now)
        rec = realm.enrol_key(a.device_id, public_key, now, cert)
        if cert is not None:
            with open(a.certificate_out, "wb") as f:
                f.write(pem_certificate(cert))
        print(f"enrolled {rec.device_id} by public key" + (f"; certificate in {a.certificate_out}" if cert else ""))
    elif a.how == "certificate":
        rec = realm.enrol_certificate(open(a.certificate, "rb").read(), now)
        print(f"enrolled {rec.device_id} by certificate serial {rec.cert_serial}")
    else:
        bundle = realm.enrol_generated(a.device_id, _servers(a), a.secret or "", now, a.transport)
        _write_private(a.out, bundle.to_json())
        print(f"enrolled {a.device_id} with a generated key; bootstrap bundle (0600) in {a.out}")


def cmd_bundle(a, now, realm: Realm):
    if realm.registry.get_device(a.device_id) is None:
        raise RegistryError(f"device {a.device_id} is not enrolled")
    _write_private(a.out, realm.bundle(a.device_id, _servers(a), a.secret or "", a.transport).to_json())
    print(f"bootstrap bundle for {a.device_id} in {a.out}")


def cmd_list(a, now, realm: Realm):
    rows = realm.registry.list_devices()
    if a.json:
        print(json.dumps([_device_row(r) for r in rows], indent=2))
        return
    print(f"{'DEVICE':<24} {'STATE':<11} {'BY':<12} {'GEN':>3}  {'REGISTERED UNTIL':<21}")
    for r in rows:
        print(f"{r.device_id:<24} {r.state.value:<11} {r.enrolled_by:<12} {r.generation:>3}  {_when(r.registration_not_after):<21}")
    print(f"{len(rows)} device(s) in realm {realm.name}")


def cmd_show(a, now, realm: Realm):
    r = realm.registry.get_device(a.device_id)
    if r is None:
        raise RegistryError(f"device {a.device_id} is not enrolled")
    row = _device_row(r)
    if a.json:
        print(json.dumps(row, indent=2))
    else:
        for k, v in row.items():
            print(f"{k:<24} {_when(v) if k in ('registered_at', 'registration_not_after', 'created', 'updated') else v}")
        for e in realm.registry.audit(a.device_id, 10):
            print(f"  {_when(e.time)}  {e.event:<18} {e.detail}")


def cmd_revoke(a, now, realm: Realm):
    realm.revoke(a.device_id, now, a.reason)
    print(f"revoked {a.device_id}: no new tickets from now on")
    rec = realm.registry.get_device(a.device_id)
    if a.no_disconnect:
        return
    if rec.nas_identifier is None:
        print(f"  {a.device_id} was never admitted on a port: nothing to disconnect")
        return
    nas = realm.nas(rec.nas_identifier)
    where = f"NAS {rec.nas_identifier} port {rec.nas_port_id or '?'} ({rec.calling_station or '?'})"
    if nas is None:
        print(f"  last seen on {where}, which is not configured for Disconnect-Requests "
              f"(tessera-admin nas add {rec.nas_identifier} ADDRESS --secret S): the port stays open until it re-authenticates")
        return
    from tessera.radius.das import disconnect  # RADIUS I/O only when there is someone to tell

    result = disconnect(nas[0], nas[1], nas[2], a.device_id, rec.calling_station)
    print(f"  Disconnect-Request to {where} at {nas[0]}:{nas[1]}: {result}")
    if not result.acked:
        raise RegistryError(f"the device is revoked, but {rec.nas_identifier} did not confirm the disconnect ({result})")


def cmd_nas(a, now, realm: Realm):
    if a.action == "add":
        host, port = a.address
        realm.add_nas(a.name, host, port, a.secret, now)
        print(f"NAS {a.name} at {_where(host, port)} takes Disconnect-Requests")
    else:
        for name, address, port in realm.registry.list_nas():
            print(f"  {name:<24} {_where(address, port)}")


def cmd_rotate(a, now, realm: Realm):
    new = realm.rotate(now)
    print(f"service key version {new.kvno} is current; older versions open their tickets until they expire")
    cmd_keys(a, now, realm)


def cmd_keys(a, now, realm: Realm):
    for k in realm.keyring.versions():
        state = "current" if k.kvno == realm.keyring.current.kvno else f"retires {_when(k.retire_at)}"
        print(f"  kvno {k.kvno:<4} created {_when(k.created)}  {state}")


def cmd_audit(a, now, realm: Realm):
    events = realm.registry.audit(a.device_id, a.limit)
    if a.json:
        print(json.dumps([e.__dict__ for e in events], indent=2))
        return
    for e in events:
        print(f"{_when(e.time)}  {e.event:<18} {e.device_id or '-':<20} {e.detail}")


def cmd_trust_ca(a, now, realm: Realm):
    cert = realm.trust_ca(open(a.certificate, "rb").read(), now)
    print(f"trusting device CA {cert.subject.rfc4514_string()}")


def cmd_export_ca(a, now, realm: Realm):
    with open(a.out, "wb") as f:
        f.write(b"".join(pem_certificate(c) for c in realm.trusted_cas()))
    print(f"device CA bundle (for the EAP module's ca_file) in {a.out}")


def _migration_steps(module, found: int) -> list[str]:
    """The steps from `found` to the current version, each with its statements (one line each)."""
    lines = []
    for n in range(found, module.SCHEMA_VERSION):
        lines.append(f"  step {n} -> {n + 1}:")
        for statement in module.MIGRATIONS[n]:
            text = " ".join(statement.split())
            lines.append(f"    {text if len(text) <= 96 else text[:93] + '...'}")
    return lines


def _open_for_migration(url: str, *, dry_run: bool):
    """(registry, its backend module) for `migrate`: opened with migrate=True (`open_registry`
    alone refuses an older schema, as a server must)."""
    path = _sqlite_path(url)
    if path is not None and path != ":memory:" and not os.path.exists(path):
        raise RegistryError(f"no registry at {path} (create one with `tessera-admin init`)")
    reg = open_registry(url, migrate=True, dry_run=dry_run)
    return reg, sys.modules[type(reg).__module__]


def cmd_migrate(a) -> int:
    """Bring the registry's schema to this code's version; with --check only say whether it is."""
    shown = display_url(a.registry)
    reg, module = _open_for_migration(a.registry, dry_run=True)  # finds the version, changes nothing
    found = reg.schema_found
    reg.close()
    if found is None:
        raise RegistryError(f"no realm's registry in {shown} (create one with `tessera-admin init`)")
    current = module.SCHEMA_VERSION
    if found == current:
        print(f"registry {shown}: schema {current}, already at {current}: nothing to migrate")
        return 0
    print(f"registry {shown}: schema {found} -> {current}")
    print("\n".join(_migration_steps(module, found)))
    if a.check:
        print(f"a migration is needed: tessera-admin migrate --registry '{shown}'")
        return 3
    reg, _ = _open_for_migration(a.registry, dry_run=False)  # every step in one transaction, under the lock
    try:
        if reg.schema_found == current:
            print(f"already at {current}: another migrate did it meanwhile")
        else:
            print(f"migrated: schema {current}")
    finally:
        reg.close()
    return 0


def _sqlite_path(url: str) -> str | None:
    """The file a SQLite registry (a bare path or sqlite:///path) is in; None for any other URL."""
    if url.startswith("sqlite:"):
        return url[len("sqlite://"):] if url.startswith("sqlite:///") else None
    return None if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url) else url


def _open(a) -> Realm:
    path = _sqlite_path(a.registry)
    if path is not None and path != ":memory:" and not os.path.exists(path):
        # do not leave an empty registry behind a mistyped path
        raise RegistryError(f"no registry at {path} (create one with `tessera-admin init`)")
    try:
        return open_realm(a.registry, a.kek)
    except InvalidTicket:
        raise RegistryError(f"the KEK in {a.kek} does not open the registry {display_url(a.registry)} "
                            f"(another realm's KEK?)") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tessera-admin", description=__doc__.split("\n")[0])
    p.add_argument("--registry", metavar="URL",
                   help="the realm's registry: sqlite:///path/registry.db or postgresql://user@host/dbname "
                        "(no password in the URL: libpq's ~/.pgpass, PGPASSFILE or ?passfile=); wins over --db")
    p.add_argument("--db", default=DEFAULT_DB, metavar="PATH",
                   help=f"the registry as a SQLite file's path (or a URL, as --registry), default {DEFAULT_DB}")
    p.add_argument("--kek", default=DEFAULT_KEK, help=f"key-encryption key file (0600), default {DEFAULT_KEK}")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("init", help="create the realm: KEK, service keys, signing key, device CA")
    s.add_argument("--realm", required=True)
    d = Policy()
    for name in ("registration_lifetime", "tgt_lifetime", "session_lifetime", "clock_skew"):
        s.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name), metavar="SECONDS")
    e = sub.add_parser("enrol", help="enrol a device").add_subparsers(dest="how", required=True)
    k = e.add_parser("key", help="by device id and public key")
    k.add_argument("device_id")
    k.add_argument("public_key", help="PEM public key file, certificate file, or hex point")
    k.add_argument("--certificate-out", help="also issue a realm device certificate (for EAP-TLS) to this file")
    c = e.add_parser("certificate", help="by a device certificate from a trusted device CA")
    c.add_argument("certificate")
    g = e.add_parser("generate", help="generate the key pair and export a bootstrap bundle")
    g.add_argument("device_id")
    for sp in (g, b := sub.add_parser("bundle", help="export the bootstrap bundle of an enrolled device")):
        if sp is b:
            sp.add_argument("device_id")
        sp.add_argument("--server", type=_server, action="append", required=True,
                        help="id=host[:port], repeatable (port: RadSec 2083, or with --transport udp 11812)")
        sp.add_argument("--transport", choices=(RADSEC, UDP), default=RADSEC,
                        help="radsec (default): RADIUS/TLS with the device certificate, no shared secret; "
                             "udp: RADIUS/UDP with --secret, the weaker option (every holder can speak as any device)")
        sp.add_argument("--secret", help="RADIUS shared secret of the device listener (--transport udp only)")
        sp.add_argument("--out", required=True)
    ls = sub.add_parser("list", help="list devices")
    ls.add_argument("--json", action="store_true")
    sh = sub.add_parser("show", help="show one device and its recent events")
    sh.add_argument("device_id")
    sh.add_argument("--json", action="store_true")
    r = sub.add_parser("revoke", help="revoke a device: no new tickets at once")
    r.add_argument("device_id")
    r.add_argument("--reason", default="")
    r.add_argument("--no-disconnect", action="store_true",
                   help="do not send the device's NAS a Disconnect-Request (RFC 5176)")
    n = sub.add_parser("nas", help="NASes (switches) that take Disconnect-Requests")
    n.add_argument("action", choices=("add", "list"))
    n.add_argument("name", nargs="?", help="its NAS-Identifier")
    n.add_argument("address", nargs="?", type=_nas_address, help="host[:port], port 3799 by default ([v6]:port)")
    n.add_argument("--secret", help="the DAS shared secret")
    sub.add_parser("rotate", help="new service key version")
    sub.add_parser("keys", help="list service key versions (never the keys)")
    au = sub.add_parser("audit", help="show audit events")
    au.add_argument("device_id", nargs="?")
    au.add_argument("--limit", type=int, default=50)
    au.add_argument("--json", action="store_true")
    t = sub.add_parser("trust-ca", help="trust a manufacturer device CA for enrolment by certificate")
    t.add_argument("certificate")
    x = sub.add_parser("export-ca", help="write the trusted device CA bundle")
    x.add_argument("out")
    m = sub.add_parser("migrate", help="bring the registry's schema to this version (after every server is "
                                       "upgraded): exit 0 done or already current, 1 refused")
    m.add_argument("--check", action="store_true",
                   help="change nothing: exit 0 if the schema is current, 3 if a migration is needed")
    return p


COMMANDS = {"enrol": cmd_enrol, "bundle": cmd_bundle, "list": cmd_list, "show": cmd_show, "revoke": cmd_revoke,
            "rotate": cmd_rotate, "keys": cmd_keys, "audit": cmd_audit, "trust-ca": cmd_trust_ca,
            "export-ca": cmd_export_ca, "nas": cmd_nas}


def main(argv: list[str] | None = None) -> int:
    p = parser()
    a = p.parse_args(argv)
    if getattr(a, "transport", None) is not None:  # enrol generate, bundle
        if a.transport == UDP and not a.secret:
            p.error("--transport udp needs --secret (the device listener's shared secret)")
        if a.transport == RADSEC and a.secret:
            p.error("a RadSec bundle carries no shared secret: drop --secret, or use --transport udp")
    if a.cmd == "nas" and a.action == "add" and not (a.name and a.address and a.secret):
        p.error("nas add needs NAME ADDRESS --secret S")
    a.registry = a.registry or a.db
    now = time.time()
    try:
        if a.cmd == "init":
            cmd_init(a, now)
        elif a.cmd == "migrate":
            return cmd_migrate(a)
        else:
            realm = _open(a)
            try:
                COMMANDS[a.cmd](a, now, realm)
            finally:
                realm.registry.close()
    except RegistryUnavailableError as exc:  # its text names host, port and database, never a password
        print(f"tessera-admin: {exc.reason} (registry {display_url(a.registry)})", file=sys.stderr)
        return 1
    except (TesseraError, RegistryError, PermissionError, FileNotFoundError, ValueError, SecretFileError) as exc:
        print(f"tessera-admin: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
