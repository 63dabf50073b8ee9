"""The FreeRADIUS side of Tessera: attribute pairs in, core call, attribute tuples out.

How this works: ``tessera_rlm`` (the rlm_python3 entry module) builds one ``Plugin`` at
instantiate time; it opens the realm once (registry + sealed service keyring) and keeps
the sans-I/O ``Service`` for this server's id. Each ``authorize`` call gets the request list as
a tuple of ``(name, value)`` string pairs and does one of three steps, chosen by the
server-internal attribute ``Tessera-Step`` that the virtual servers set:

* (none) -- a Tessera operation: join the ``Tessera-Message`` instances (``'0x…'`` hex), call
  ``service.handle(message, now)``, answer ``ok`` with the reply split over ``Tessera-Reply``
  instances (``+=``, so every instance is kept), or ``reject`` with ``Reply-Message`` =
  "<name>: <reason>", ``Tessera-Error`` = the code and, in ``Tessera-Reply``, the core's
  ``error_reply`` (a SignedError or ErrorMessage the device core reads); a service-key rotation made by
  ``tessera-admin`` is picked up here, checked at most once a second. Over RadSec the site
  also sets ``Tessera-TLS-Identity`` and ``TLS-Client-Cert-Serial``/``-Issuer`` (the
  connection's certificate): the certificate must be the one enrolled for the device it names
  (``CertificateVetting``, tessera/vetting.py), and ``service.handle_as(message, device,
  now)`` refuses another device's message;
* ``admit-certificate`` -- EAP-TLS: ``service.admit_certificate(serial, issuer, cn, now)``;
* ``eap-pwd-password`` -- EAP-PWD: ``control:Cleartext-Password`` from
  ``service.eap_pwd_password(device_id, now)``, in its wire form (``tessera.eappwd``: bytes a
  ``freeradius -X`` log prints as ``?``), which the supplicant is configured with too.

Rules (docs/freeradius.md): return *exact tuples*; octets as ``"0x" + hex``; never raise into
FreeRADIUS (an exception becomes a bare reject with a traceback that could print values): any
unexpected error is logged as its type and code location only, and answered with
"internal error". The reasons the core gives (``str(TesseraError)``) carry no key material by
the core's contract; they are logged and sent.

``rlm`` is the ``radiusd`` module inside FreeRADIUS, or any object with the same ``RLM_MODULE_*``
and ``L_*`` constants and ``radlog`` (tests use a stand-in), so this file imports nothing from
FreeRADIUS.
"""

from __future__ import annotations

import importlib
import time
import traceback
from typing import Any, Callable, Iterable

from tessera import eappwd
from tessera.errors import InternalError, RevokedError
from tessera.registry import RegistryError
from tessera.radius.attrs import BadHexError, join_from_hex, reply_items, split_to_hex
from tessera.registry_url import display_url
from tessera.vetting import CertificateVetting

STEP_ATTRIBUTE = "Tessera-Step"
MESSAGE = "Tessera-Message"
REPLY = "Tessera-Reply"
ERROR = "Tessera-Error"
TLS_IDENTITY = "Tessera-TLS-Identity"
MAX_REPLY_MESSAGE = 240  # Reply-Message is at most 253 bytes on the wire
MAX_LOG_LINE = 1000  # a log line (describe): room for two paths and a command
RELOAD_EVERY = 1.0  # seconds between checks for a service-key rotation
DEFAULT_OPENER = "tessera.realm:open_realm"
DEFAULT_REGISTRY_GRACE = 30.0  # seconds (module config registry_grace)


def _is_realm_error(exc: BaseException) -> bool:
    """True for the core's ``TesseraError`` (a named reason with an integer code)."""
    return isinstance(getattr(exc, "code", None), int) and isinstance(getattr(exc, "name", None), str)


def _where(exc: BaseException) -> str:
    """``Type at file:line`` of the innermost frame: enough to debug, no values."""
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return type(exc).__name__
    last = tb[-1]
    return f"{type(exc).__name__} at {last.filename.rsplit('/', 1)[-1]}:{last.lineno}"


def describe(exc: BaseException) -> str:
    """A log line for a failure outside a request: the core's reason, or the text of OS and
    registry errors (a path, a schema version, a scrubbed database target: never a key), else
    only where it happened."""
    if _is_realm_error(exc):
        return _clean(f"{exc.name}: {exc}", MAX_LOG_LINE)
    if isinstance(exc, (OSError, ValueError, ImportError, RegistryError)):
        return _clean(f"{type(exc).__name__}: {exc}", MAX_LOG_LINE)
    return _where(exc)


def _clean(text: str, limit: int = MAX_REPLY_MESSAGE) -> str:
    """One printable line, by default short enough for Reply-Message."""
    text = " ".join(str(text).split())
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text[:limit]


def internal_error_result(rlm: Any, code: int | None = None):
    """The reject every unexpected failure turns into."""
    reply = [("Reply-Message", "internal error")]
    if code is not None:
        reply.append((ERROR, str(code)))
    return (rlm.RLM_MODULE_REJECT, {"reply": tuple(reply)})


def _load_opener(spec: str) -> Callable[[str, str], Any]:
    """Import ``"module:function"``."""
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise ValueError(f"realm_opener must be module:function, not {spec!r}")
    return getattr(importlib.import_module(module_name), func_name)


class Plugin:
    """One per radiusd process: the realm's service for this server, and the three steps."""

    def __init__(self, service: Any, rlm: Any, realm: Any = None,
                 clock: Callable[[], float] = time.time):
        self.service = service
        self.rlm = rlm
        self.realm = realm
        self.clock = clock
        self.internal_code = InternalError.code
        self._checked = float("-inf")
        self._steps = {  # by Tessera-Step; none is a Tessera operation (_operation)
            "admit-certificate": self._admit_certificate,
            "eap-pwd-password": self._eap_pwd_password,
        }
        self.vetting = CertificateVetting(service)  # RadSec: certificate → enrolled device

    @classmethod
    def from_config(cls, config: dict, rlm: Any) -> "Plugin":
        """Open the realm named by the module's ``config {}``: ``registry`` (a URL,
        tessera.registry_url; ``db`` is taken as its old name), ``kek``, ``server_id``,
        ``registry_grace`` (seconds a PostgreSQL realm is served from the cache while the
        database is unreachable, docs/registry.md) and ``realm_opener``. The default opener opens
        the realm for serving (a PostgreSQL registry through its in-process cache); another
        opener (a test's stand-in) is called with the registry and the KEK path only."""
        registry = config.get("registry") or config.get("db")
        if not registry:
            raise ValueError("tessera module: config item 'registry' is not set")
        for key in ("kek", "server_id"):
            if not config.get(key):
                raise ValueError(f"tessera module: config item {key!r} is not set")
        try:
            grace = float(config.get("registry_grace") or DEFAULT_REGISTRY_GRACE)
        except ValueError:
            raise ValueError("tessera module: registry_grace must be a number of seconds") from None
        if not grace > 0:
            raise ValueError("tessera module: registry_grace must be a number of seconds above 0")
        spec = config.get("realm_opener") or DEFAULT_OPENER
        if spec == DEFAULT_OPENER:
            from tessera.realm import open_realm

            def log(level: str, text: str) -> None:  # the registry's reachability, from its listener
                rlm.radlog(rlm.L_INFO if level == "info" else rlm.L_ERR, "tessera: " + text)
            realm = open_realm(registry, config["kek"], serving=True, grace=grace, log=log)
        else:
            realm = _load_opener(spec)(registry, config["kek"])
        plugin = cls(realm.service(config["server_id"]), rlm, realm)
        plugin.log(rlm.L_INFO, f"realm open, server id {config['server_id']!r}, registry {display_url(registry)}")
        return plugin

    def log(self, level: int, message: str) -> None:
        self.rlm.radlog(level, "tessera: " + message)

    def close(self) -> None:
        """Release the realm (its registry connection)."""
        if self.realm is not None:
            self.realm.close()

    # -- the callback -------------------------------------------------------------------

    def authorize(self, pairs: Iterable[tuple[str, str]]):
        """rlm_python3 ``authorize``: never raises."""
        try:
            if type(pairs) is not tuple:
                pairs = tuple(pairs)
            now = self.clock()
            self._refresh(now)  # every step reads the key ring (EAP-PWD's passwords too)
            step = None
            for k, v in pairs:
                if k == STEP_ATTRIBUTE:
                    step = v
                    break
            if step is None:  # a Tessera operation, the hot path
                return self._operation(pairs, now)
            handler = self._steps.get(step)
            if handler is None:
                self.log(self.rlm.L_ERR, f"unknown {STEP_ATTRIBUTE} {_clean(step)!r}")
                return internal_error_result(self.rlm, self.internal_code)
            return handler(pairs)
        except Exception as exc:  # noqa: BLE001 -- the contract is: never raise into radiusd
            self.log(self.rlm.L_ERR, f"internal error: {_where(exc)}")
            return internal_error_result(self.rlm, self.internal_code)

    def post_auth(self, pairs: Iterable[tuple[str, str]]):
        """rlm_python3 ``post_auth`` after an accepted 802.1X admission that a switch relayed:
        remember where the device sits (NAS-Identifier, NAS-IP-Address, NAS-Port-Id,
        Calling-Station-Id) so that revoking it can disconnect it.

        Only the ``tessera-nas`` site asks for this, with the server-internal ``Tessera-Step``
        ``record-location`` (no client can send it), and the location is recorded only under
        ``Tessera-Device-Id``: the identity EAP authenticated, which the site takes from
        session-state, where ``tessera-check-eap-tls`` (the enrolled device of the certificate)
        or ``tessera-eap-pwd`` (the peer id, bound to the outer identity by ``prep = -1``) put
        it, after deleting any a client sent. Never the User-Name, which the supplicant chose.
        Anything else records nothing and says why in the log.

        Rejects only a device revoked while its admission was under way (the service raises
        ``revoked``: EAP-PWD takes the password at its first round, and a device may stall the
        rest), so that its port stays closed; any other failure is logged and the admission
        stands. Never raises."""
        try:
            pairs = tuple(pairs)
            get = dict(pairs).get
            if get(STEP_ATTRIBUTE) != "record-location":
                self.log(self.rlm.L_ERR, "post_auth outside a switch's admission (no Tessera-Step "
                                         "record-location): no location recorded")
                return self.rlm.RLM_MODULE_NOOP
            ids = {v for k, v in pairs if k == "Tessera-Device-Id"}
            if len(ids) != 1:
                self.log(self.rlm.L_ERR, f"admission of User-Name {_clean(get('User-Name', ''))!r} with "
                                         f"{len(ids)} authenticated device ids, not 1: no location recorded")
                return self.rlm.RLM_MODULE_NOOP
            device = ids.pop()
            self.service.record_location(device, get("NAS-Identifier", ""), get("NAS-IP-Address", "")
                                         or get("NAS-IPv6-Address", ""), get("NAS-Port-Id", ""),
                                         get("Calling-Station-Id", ""), self.clock())
            self.log(self.rlm.L_INFO, f"{_clean(device)!r} admitted on {_clean(get('NAS-Identifier', '?'))} "
                                      f"port {_clean(get('NAS-Port-Id', '?'))}")
        except Exception as exc:  # noqa: BLE001 -- decided here: reject a revoked device, else admit
            if isinstance(exc, RevokedError):
                self.log(self.rlm.L_INFO, f"admission refused after all: {describe(exc)}")
                return self.rlm.RLM_MODULE_REJECT
            self.log(self.rlm.L_ERR, f"could not record the admission: {describe(exc)}")
        return self.rlm.RLM_MODULE_OK

    # -- the steps ------------------------------------------------------------------------

    def _reject(self, what: str, device: str, exc: BaseException, error_reply: bytes = b""):
        reason = _clean(f"{exc.name}: {exc}")
        self.log(self.rlm.L_INFO, f"{what} rejected for {_clean(device)!r}: {reason}")
        reply = (("Reply-Message", reason), (ERROR, str(exc.code)))
        if error_reply:
            reply += tuple((REPLY, "+=", h) for h in split_to_hex(error_reply))
        return (self.rlm.RLM_MODULE_REJECT, {"reply": reply})

    def _error_reply(self, exc: BaseException, now: float) -> bytes:
        """The core's error reply for a rejection, ``Service.error_reply``: a SignedError (signed
        by the service key over the request's nonce) when the device acts on it and the request
        was proven, else an unsigned ErrorMessage; empty only if making it failed."""
        try:
            return self.service.error_reply(exc, now)
        except Exception as err:  # noqa: BLE001 -- the reject still goes out
            self.log(self.rlm.L_ERR, f"error_reply failed: {_where(err)}")
            return b""

    def _refresh(self, now: float) -> None:
        """Pick up a service-key rotation made by tessera-admin (a cheap SQLite
        data_version check, or the PostgreSQL cache's counter), at most every ``RELOAD_EVERY``
        seconds; at the top of every authorize step."""
        if now - self._checked < RELOAD_EVERY:
            return
        self._checked = now
        if self.realm is not None and self.realm.reload_if_changed():
            self.log(self.rlm.L_INFO, "service keys reloaded")

    def _operation(self, pairs, now: float):
        # one pass over the pairs: the message's instances in order, the first User-Name and, over
        # RadSec, the identity of the TLS connection's certificate, set by the site (a client
        # cannot send this server-internal attribute); the message must be that device's
        identity = user = None
        hexes = []
        for k, v in pairs:
            if k == MESSAGE:
                hexes.append(v)
            elif k == "User-Name" and user is None:
                user = v
            elif k == TLS_IDENTITY and identity is None:
                identity = v
        device = identity if identity is not None else (user or "")
        try:
            message = join_from_hex(hexes)
        except BadHexError as exc:  # FreeRADIUS always formats octets as 0x…: a bug, not input
            self.log(self.rlm.L_ERR, f"internal error: {exc}")
            return internal_error_result(self.rlm, self.internal_code)
        try:
            reply = self._handle(message, identity, pairs, now)
        except Exception as exc:
            if not _is_realm_error(exc):
                raise
            return self._reject("operation", device, exc, self._error_reply(exc, now))
        return (self.rlm.RLM_MODULE_OK, {"reply": reply_items(REPLY, reply)})

    def _handle(self, message: bytes, identity: str | None, pairs, now: float) -> bytes:
        if identity is None:
            return self.service.handle(message, now)
        # the certificate must be the one enrolled for its device, then the message its
        get = dict(pairs).get
        sender = self.vetting.device(get("TLS-Client-Cert-Serial", ""), get("TLS-Client-Cert-Issuer", ""),
                                     identity, now)
        return self.service.handle_as(message, sender, now)

    def _admit_certificate(self, pairs):
        get = dict(pairs).get  # one instance each
        serial = get("TLS-Client-Cert-Serial", "")
        issuer = get("TLS-Client-Cert-Issuer", "")
        cn = get("TLS-Client-Cert-Common-Name", "")
        try:
            device = self.service.admit_certificate(serial, issuer, cn, self.clock())
        except Exception as exc:
            if not _is_realm_error(exc):
                raise
            return self._reject("EAP-TLS admission", cn, exc)
        self.log(self.rlm.L_DBG, f"EAP-TLS admission of {_clean(device)!r}")
        return (self.rlm.RLM_MODULE_OK, {"request": (("Tessera-Device-Id", str(device)),)})

    def _eap_pwd_password(self, pairs):
        device = next((v for k, v in pairs if k == "User-Name"), "")
        try:
            password = self.service.eap_pwd_password(device, self.clock())
        except Exception as exc:
            if not _is_realm_error(exc):
                raise
            return self._reject("EAP-PWD admission", device, exc)
        # the wire form (tessera.eappwd): rlm_python3 prints every value returned, and
        # FreeRADIUS's logger shows these bytes as '?'
        return (self.rlm.RLM_MODULE_OK, {"config": (("Cleartext-Password", eappwd.wire(str(password))),)})
