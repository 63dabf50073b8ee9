"""The rlm_python3 adapter in memory: pairs in, exact tuples out, never raises."""

import types

import pytest

from tessera import errors
from tessera.plugin.adapter import Plugin
from tessera.radius import attrs

RLM = types.SimpleNamespace(RLM_MODULE_REJECT=0, RLM_MODULE_FAIL=1, RLM_MODULE_OK=2,
                            RLM_MODULE_NOOP=7, L_DBG=1, L_INFO=3, L_ERR=4)


class FakeService:
    def __init__(self):
        self.calls = []

    def handle(self, request, now):
        self.calls.append(("handle", request, now))
        if request == b"revoked":
            raise errors.RevokedError("device dev1 is revoked")
        if request == b"boom":
            raise RuntimeError("secret key 00112233 leaked into a message")
        return b"\x00reply\x00" + request

    def error_reply(self, exc, now):
        self.calls.append(("error_reply", exc.name))
        return b"\x01err" + bytes([exc.code])

    def admit_certificate(self, serial, issuer, cn, now):
        self.calls.append(("admit", serial, issuer, cn))
        if cn != "dev1":
            raise errors.UnknownDeviceError(f"device {cn!r} is not enrolled")
        return cn

    def eap_pwd_password(self, device_id, now):
        if device_id != "dev1":
            raise errors.NotRegisteredError("no registration")
        return "pw"


@pytest.fixture
def plugin():
    logs = []
    rlm = types.SimpleNamespace(**vars(RLM), radlog=lambda level, msg: logs.append((level, msg)))
    p = Plugin(FakeService(), rlm, clock=lambda: 1000.0)
    p.logs = logs
    return p


def request(message: bytes, *extra):
    return (("User-Name", "dev1"), *(("Tessera-Message", h) for h in attrs.split_to_hex(message)), *extra)


def test_plugin_operation_accept_splits_reply_with_plus_equals(plugin):
    message = bytes(range(256)) * 3
    rc, update = plugin.authorize(request(message))
    assert rc == RLM.RLM_MODULE_OK
    reply = update["reply"]
    assert type(reply) is tuple and all(type(t) is tuple and t[1] == "+=" for t in reply)
    assert attrs.join_from_hex(v for _, _, v in reply) == b"\x00reply\x00" + message
    assert plugin.service.calls[0] == ("handle", message, 1000.0)


def test_plugin_operation_reject_names_reason_and_code(plugin):
    rc, update = plugin.authorize(request(b"revoked"))
    assert rc == RLM.RLM_MODULE_REJECT
    # the service's error reply travels in Tessera-Reply beside the reason and code
    assert update["reply"] == (("Reply-Message", "revoked: device dev1 is revoked"), ("Tessera-Error", "8"),
                               ("Tessera-Reply", "+=", "0x" + (b"\x01err" + bytes([8])).hex()))
    assert any("revoked" in m for _, m in plugin.logs)
    rc, update = plugin.authorize(request(b"fine"))  # the same plugin, a message the core accepts
    assert rc == RLM.RLM_MODULE_OK and attrs.join_from_hex(v for _, _, v in update["reply"]) == b"\x00reply\x00fine"


def test_plugin_unexpected_exception_is_internal_error_without_its_text(plugin):
    rc, update = plugin.authorize(request(b"boom"))
    assert rc == RLM.RLM_MODULE_REJECT
    assert update["reply"] == (("Reply-Message", "internal error"), ("Tessera-Error", "20"))
    assert all("00112233" not in m for _, m in plugin.logs)
    assert any("RuntimeError" in m for _, m in plugin.logs)
    assert plugin.authorize(request(b"fine"))[0] == RLM.RLM_MODULE_OK  # and it keeps serving


def test_plugin_bad_hex_is_internal_error(plugin):
    rc, update = plugin.authorize((("User-Name", "dev1"), ("Tessera-Message", "garbage")))
    assert rc == RLM.RLM_MODULE_REJECT and update["reply"][0] == ("Reply-Message", "internal error")
    assert plugin.service.calls == []
    rc, update = plugin.authorize((("User-Name", "dev1"), ("Tessera-Message", "0x6f6b")))  # as FreeRADIUS formats octets
    assert rc == RLM.RLM_MODULE_OK and plugin.service.calls == [("handle", b"ok", 1000.0)]


def test_plugin_unknown_step_is_refused(plugin):
    rc, _ = plugin.authorize(request(b"x", ("Tessera-Step", "format-disk")))
    assert rc == RLM.RLM_MODULE_REJECT
    assert plugin.service.calls == []
    rc, _ = plugin.authorize(request(b"x"))  # the same request without the step: a Tessera operation
    assert rc == RLM.RLM_MODULE_OK and plugin.service.calls == [("handle", b"x", 1000.0)]


def test_plugin_admit_certificate(plugin):
    pairs = (("Tessera-Step", "admit-certificate"), ("TLS-Client-Cert-Serial", "0a1b"),
             ("TLS-Client-Cert-Issuer", "/O=Tessera/CN=Lab CA"), ("TLS-Client-Cert-Common-Name", "dev1"))
    rc, update = plugin.authorize(pairs)
    assert rc == RLM.RLM_MODULE_OK
    assert plugin.service.calls == [("admit", "0a1b", "/O=Tessera/CN=Lab CA", "dev1")]
    rc, update = plugin.authorize(pairs[:-1] + (("TLS-Client-Cert-Common-Name", "dev2"),))
    assert rc == RLM.RLM_MODULE_REJECT and update["reply"][1] == ("Tessera-Error", "7")


def test_plugin_eap_pwd_password(plugin):
    rc, update = plugin.authorize((("Tessera-Step", "eap-pwd-password"), ("User-Name", "dev1")))
    assert (rc, update) == (RLM.RLM_MODULE_OK, {"config": (("Cleartext-Password", b"\x87\x80\x87\x87"),)})
    rc, update = plugin.authorize((("Tessera-Step", "eap-pwd-password"), ("User-Name", "dev2")))
    assert rc == RLM.RLM_MODULE_REJECT and "config" not in update


def test_plugin_reply_message_is_one_short_line(plugin):
    class Noisy(errors.MalformedError):
        pass
    plugin.service.handle = lambda m, now: (_ for _ in ()).throw(Noisy("a\nb\x00" + "x" * 500))
    rc, update = plugin.authorize(request(b"x"))
    text = update["reply"][0][1]
    assert len(text) <= 240 and "\n" not in text and "\x00" not in text


def test_plugin_operation_reads_pairs_in_one_pass_as_before(plugin):
    """The first User-Name names the device in the log; every Tessera-Message instance is joined in
    order wherever it stands; a Tessera-Step anywhere picks its step; pairs may be any iterable."""
    message = bytes(range(256)) * 2
    hexes = attrs.split_to_hex(message)
    pairs = [("Tessera-Message", hexes[0]), ("User-Name", "dev1"), ("NAS-IP-Address", "192.0.2.1"),
             ("Tessera-Message", hexes[1]), ("User-Name", "dev2"), ("Tessera-Message", hexes[2])]
    rc, update = plugin.authorize(iter(pairs))
    assert rc == RLM.RLM_MODULE_OK and plugin.service.calls[-1] == ("handle", message, 1000.0)
    rc, update = plugin.authorize(pairs[:1] + [("User-Name", "dev2")] + pairs[3:4])
    assert rc == RLM.RLM_MODULE_OK and plugin.service.calls[-1] == ("handle", message[:494], 1000.0)
    rc, update = plugin.authorize([("Tessera-Message", "0x" + b"revoked".hex()), ("User-Name", "dev1"),
                                   ("User-Name", "dev2")])
    assert rc == RLM.RLM_MODULE_REJECT and any("for 'dev1'" in m for _, m in plugin.logs)
    rc, update = plugin.authorize((("User-Name", "dev1"), ("Tessera-Step", "eap-pwd-password")))
    assert rc == RLM.RLM_MODULE_OK and "config" in update


def test_plugin_operation_refuses_instances_that_only_join_to_hex(plugin):
    """Two odd-length instances whose digits would pair up are a formatting bug, not a message."""
    rc, update = plugin.authorize((("User-Name", "dev1"), ("Tessera-Message", "0x6"), ("Tessera-Message", "0xf6b")))
    assert rc == RLM.RLM_MODULE_REJECT and update["reply"][0] == ("Reply-Message", "internal error")
    assert plugin.service.calls == []
