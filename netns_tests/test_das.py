"""Revocation's Disconnect-Request (RFC 5176) against the lab switch's real hostapd DAS.

Every port's hostapd takes Disconnect-Requests from the RADIUS server's address with the
realm's NAS secret (``radius_das_port`` / ``radius_das_client``, lab/switch.py); RealmLab
registers each port as a NAS. The tests drive the same paths an operator does —
``tessera-admin revoke`` (run from the RADIUS server's namespace, as ``RealmLab.admin`` does)
and ``tessera.radius.das.disconnect`` — and check the outcome where it happens: the port
controller, the nftables sets of the switch, and hostapd's own station table.

Each refusal sits next to an acceptance in the same lab: a NAK next to an ACK, a wrong secret or
a foreign client address next to the right one, a dead DAS address next to the live one.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time

from tessera.agent.ctrl import CtrlClient, parse_kv
from tessera.agent.link import call_in_netns
from tessera.lab import nft
from tessera.lab.probe import l2_reach, ping
from tessera.lab.switch import SWITCH_MGMT_IP
from tessera.lab.topology import LabDevice, RealmLab
from tessera.radius.client import load_dictionary
from tessera.radius.das import DisconnectResult, disconnect
from tessera.registry import DeviceState

from pyrad import packet

from tests.gate import needs_lab  # noqa: E402

pytestmark = needs_lab

SESSION_CONTEXT_NOT_FOUND = 503  # RFC 5176 section 3.5, Error-Cause
NOBODY = "203.0.113.77"          # on the management segment, but no host has this address
UNROUTED = "198.51.100.9"        # the RADIUS server's namespace has no route there
CLI_DAS_BOUND = 2.0 * (1 + 2)     # tessera-admin revoke: disconnect() defaults, timeout × (1 + retries)


# ------------------------------------------------------------------------------- helpers

def admit(rl: RealmLab, devices: list[LabDevice], timeout: float = 25.0) -> None:
    """Start the devices' agents and wait until each is authorized on its port and the
    registry holds the location its NAS reported (what revoke looks up)."""
    for d in devices:
        rl.set_carrier(d, False)
        rl.start_agent(d)
    for d in devices:
        rl.set_carrier(d, True)
    assert rl.wait(lambda: all(port_open(rl, d) and located(rl, d) for d in devices), timeout), \
        [(d.device_id, rl.status(d)) for d in devices]


def located(rl: RealmLab, d: LabDevice) -> bool:
    rec = rl.realm.registry.get_device(d.device_id)
    return rec.nas_identifier == rl.switch.port_nas_identifier(d.dev.port) and rec.calling_station is not None


def hostapd_station(rl: RealmLab, d: LabDevice) -> dict | None:
    """hostapd's own view of the device's station on its port (``STA <mac>``), None if unlisted."""
    with CtrlClient(os.path.join(rl.switch.ctrl_dir, d.dev.port)) as c:
        reply = c.request(f"STA {d.dev.mac}")
    if reply.startswith("FAIL") or not reply.strip():
        return None
    return parse_kv(reply)


def hostapd_authorized(rl: RealmLab, d: LabDevice) -> bool:
    sta = hostapd_station(rl, d)
    return sta is not None and "[AUTHORIZED]" in sta.get("flags", "")


def nft_open(rl: RealmLab, d: LabDevice) -> bool:
    """The switch's nftables really let the device's frames in and forward to its port."""
    authorized = nft.list_set(rl.switch.ns, "authorized")
    open_ports = nft.list_set(rl.switch.ns, "open_ports")
    return f'"{d.dev.port}" . {d.dev.mac}' in authorized and f'"{d.dev.port}"' in open_ports


def port_open(rl: RealmLab, d: LabDevice) -> bool:
    return rl.controller.is_open(d.dev.port, d.dev.mac) and hostapd_authorized(rl, d)


def port_closed(rl: RealmLab, d: LabDevice) -> bool:
    return (not rl.controller.is_open(d.dev.port) and not nft_open(rl, d)
            and not hostapd_authorized(rl, d))


def das(rl: RealmLab, from_ns: str, d: LabDevice, secret: str, user_name: str | None = None,
        calling_station: str | None = None, address: str = SWITCH_MGMT_IP, **kw) -> DisconnectResult:
    """``tessera.radius.das.disconnect`` from namespace ``from_ns`` to the DAS of d's port,
    naming d's session as the registry recorded it unless told otherwise."""
    rec = rl.realm.registry.get_device(d.device_id)
    args = (address, rl.switch.das_port(d.dev.port), secret, user_name or d.device_id,
            calling_station or rec.calling_station)
    return call_in_netns(from_ns, lambda: disconnect(*args, **kw))


def revoke(rl: RealmLab, device_id: str, reason: str = "test") -> tuple[int, str, str, float]:
    t0 = time.monotonic()
    r = rl.admin("revoke", device_id, "--reason", reason, check=False)
    return r.returncode, r.stdout.decode(), r.stderr.decode(), time.monotonic() - t0


def revoked_with_reason(rl: RealmLab, device_id: str, reason: str) -> bool:
    rec = rl.realm.registry.get_device(device_id)
    return rec.state is DeviceState.REVOKED and any(
        e.event == "revoked" and e.detail == reason for e in rl.realm.registry.audit(device_id, 20))


# ------------------------------------------------------------------------------- tests

def test_das_revoke_acks_and_closes_the_port_naks_a_device_that_left_and_names_an_unknown_nas(lab):
    rl = RealmLab(lab, 4)
    a, b, c, _never_started = rl.devices
    admit(rl, [a, b, c])
    assert nft_open(rl, a) and l2_reach(a.dev.ns, c.dev.ns, c.dev.mac)

    # ACK: the device's hostapd deauthenticates it and the switch closes its port
    code, out, err, _ = revoke(rl, "dev-01", "stolen")
    assert code == 0, (out, err)
    assert f"at {SWITCH_MGMT_IP}:{rl.switch.das_port('p1')}: Disconnect-ACK" in out, out
    assert rl.wait(lambda: port_closed(rl, a), 10), (hostapd_station(rl, a), rl.controller.entries(port="p1")[-5:])
    assert {e.mac for e in rl.controller.entries("AP-STA-DISCONNECTED", "p1")} == {a.dev.mac}
    assert revoked_with_reason(rl, "dev-01", "stolen")
    assert not l2_reach(a.dev.ns, c.dev.ns, c.dev.mac)
    # only that station: its neighbours stay authorized and keep talking
    assert port_open(rl, b) and port_open(rl, c) and nft_open(rl, c)
    assert l2_reach(b.dev.ns, c.dev.ns, c.dev.mac)

    # NAK: b left its port before the operator revokes it (cable pulled; the switch kicks the
    # station, and hostapd forgets a deauthenticated station some seconds later)
    rl.set_carrier(b, False)
    assert rl.wait(lambda: hostapd_station(rl, b) is None and not rl.controller.is_open(b.dev.port), 20), \
        hostapd_station(rl, b)
    code, out, err, _ = revoke(rl, "dev-02", "lost")
    assert f"Disconnect-NAK (Error-Cause {SESSION_CONTEXT_NOT_FOUND})" in out, (out, err)
    assert code == 1 and "the device is revoked, but" in err and rl.switch.port_nas_identifier("p2") in err, err
    assert revoked_with_reason(rl, "dev-02", "lost")
    assert port_open(rl, c)  # the NAK changed nothing elsewhere

    # unknown NAS: the device was last seen on a switch nobody registered for Disconnect-Requests
    assert rl.realm.registry.record_location("dev-04", "closet-switch-9", "198.51.100.9", "p9",
                                             "02-00-5E-10-00-04", int(time.time()))
    assert "closet-switch-9" not in rl.admin("nas", "list").stdout.decode()
    code, out, err, took = revoke(rl, "dev-04", "decommissioned")
    assert code == 0, (out, err)
    assert "closet-switch-9" in out and "not configured for Disconnect-Requests" in out, out
    assert "tessera-admin nas add closet-switch-9" in out and "Disconnect-Request to" not in out, out
    assert took < CLI_DAS_BOUND  # nothing was sent, so nothing was waited for
    assert revoked_with_reason(rl, "dev-04", "decommissioned")
    assert port_open(rl, c)


def test_das_wrong_secret_foreign_client_and_unknown_session_next_to_the_right_request(lab):
    rl = RealmLab(lab, 2)
    a, b = rl.devices
    admit(rl, [a, b])
    secret = rl.das_secret  # the DAS secret: neither the NAS nor the device secret

    # NAK: hostapd has a station with that MAC, but not that user: it names the cause
    # and leaves the real session alone
    nak = das(rl, rl.radius_ns, a, secret, user_name="dev-99")
    assert (nak.answered, nak.acked, nak.error_cause) == (True, False, SESSION_CONTEXT_NOT_FOUND), nak
    assert str(nak) == f"Disconnect-NAK (Error-Cause {SESSION_CONTEXT_NOT_FOUND})"
    nak = das(rl, rl.radius_ns, a, secret, calling_station="02-00-5E-10-00-63")  # no such station
    assert (nak.answered, nak.acked, nak.error_cause) == (True, False, SESSION_CONTEXT_NOT_FOUND), nak
    # a wrong secret, and the right secret from an address that is not the DAS client (b, whose
    # open port reaches the switch): hostapd drops both without a word, within the time asked for
    assert ping(b.dev.ns, SWITCH_MGMT_IP) == 1
    for from_ns, s in ((rl.radius_ns, "not-" + secret), (b.dev.ns, secret)):
        t0 = time.monotonic()
        silent = das(rl, from_ns, a, s, timeout=0.5, retries=1)
        took = time.monotonic() - t0
        assert (silent.answered, silent.acked, str(silent)) == (False, False, "no answer"), silent
        assert 0.9 < took < 2.5, took
    assert port_open(rl, a) and nft_open(rl, a)  # none of that touched the session

    # ACK: the same request, right secret, right client
    ack = das(rl, rl.radius_ns, a, secret)
    assert (ack.answered, ack.acked, str(ack)) == (True, True, "Disconnect-ACK"), ack
    assert rl.wait(lambda: port_closed(rl, a), 10), hostapd_station(rl, a)
    assert port_open(rl, b)
    # a second request for the session that is gone now: NAK
    again = das(rl, rl.radius_ns, a, secret)
    assert (again.answered, again.acked, again.error_cause) == (True, False, SESSION_CONTEXT_NOT_FOUND), again

    # timeout: a DAS address where nothing answers; the API honours its own bound
    t0 = time.monotonic()
    lost = das(rl, rl.radius_ns, b, secret, address=NOBODY, timeout=0.4, retries=2)
    took = time.monotonic() - t0
    assert (lost.answered, str(lost)) == (False, "no answer") and 1.1 < took < 3.0, (lost, took)
    unrouted = das(rl, rl.radius_ns, b, secret, address=UNROUTED, timeout=0.4, retries=2)
    assert not unrouted.answered and str(unrouted).startswith("not sent ("), unrouted

    # the same through tessera-admin: the NAS registered with a dead address → a clear timeout,
    # revoked all the same, the port open as before
    nas_b = rl.switch.port_nas_identifier(b.dev.port)
    das_b = rl.switch.das_port(b.dev.port)
    rl.admin("nas", "add", nas_b, f"{NOBODY}:{das_b}", "--secret", secret)
    code, out, err, took = revoke(rl, "dev-02", "first try")
    assert code == 1 and f"at {NOBODY}:{das_b}: no answer" in out, (out, err)
    assert f"{nas_b} did not confirm the disconnect (no answer)" in err, err
    assert took < CLI_DAS_BOUND + 5, took
    assert revoked_with_reason(rl, "dev-02", "first try")
    assert port_open(rl, b)
    # …with the wrong secret: hostapd drops it, so again no answer
    rl.admin("nas", "add", nas_b, f"{SWITCH_MGMT_IP}:{das_b}", "--secret", "not-" + secret)
    code, out, err, took = revoke(rl, "dev-02", "second try")
    assert code == 1 and f"at {SWITCH_MGMT_IP}:{das_b}: no answer" in out, (out, err)
    assert took < CLI_DAS_BOUND + 5, took
    assert port_open(rl, b)
    # …at an address the RADIUS server has no route to: said so at once, no traceback
    rl.admin("nas", "add", nas_b, f"{UNROUTED}:{das_b}", "--secret", secret)
    code, out, err, took = revoke(rl, "dev-02", "fourth try")
    assert code == 1 and f"at {UNROUTED}:{das_b}: not sent (" in out and "unreachable" in out, (out, err)
    assert "Traceback" not in err and "did not confirm the disconnect (not sent" in err, err
    assert took < CLI_DAS_BOUND, took
    assert revoked_with_reason(rl, "dev-02", "fourth try") and port_open(rl, b)
    # …and once the operator fixes the NAS entry, revoking again kicks the port
    rl.admin("nas", "add", nas_b, f"{SWITCH_MGMT_IP}:{das_b}", "--secret", secret)
    assert f"{nas_b:<24} {SWITCH_MGMT_IP}:{das_b}" in rl.admin("nas", "list").stdout.decode()
    code, out, err, _ = revoke(rl, "dev-02", "third try")
    assert code == 0 and f"at {SWITCH_MGMT_IP}:{das_b}: Disconnect-ACK" in out, (out, err)
    assert rl.wait(lambda: port_closed(rl, b), 10), hostapd_station(rl, b)
    assert revoked_with_reason(rl, "dev-02", "third try")


class FakeNAS:
    """A DAS endpoint on 198.51.100.1:3799 in its own namespace that answers each
    Disconnect-Request the way ``answers`` says, in turn: "ack" (Response Authenticator and
    Message-Authenticator with the right secret), "ack-no-ma" (a correct Response
    Authenticator, no Message-Authenticator), "ack-wrong-secret" (both made with another
    secret). It records the requests it got, decoded with the right secret."""

    ADDRESS, PORT = "198.51.100.1", 3799

    def __init__(self, lab, secret: str, answers: list[str]):
        self.ns = lab.add_ns("nas")
        lab.add_addr(self.ns, "lo", f"{self.ADDRESS}/32")
        self.secret, self.answers, self.requests = secret.encode(), list(answers), []
        self.sock = call_in_netns(self.ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        self.sock.bind((self.ADDRESS, self.PORT))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        d = load_dictionary()
        while not self.stop.is_set():
            if not select.select([self.sock], [], [], 0.05)[0]:
                continue
            data, peer = self.sock.recvfrom(4096)
            req = packet.CoAPacket(packet=data, secret=self.secret, dict=d)
            self.requests.append(req)
            how = self.answers.pop(0)
            reply = req.CreateReply()
            if how == "ack-wrong-secret":
                reply.secret = b"not-" + self.secret
            if how != "ack-no-ma":
                reply.add_message_authenticator()
            self.sock.sendto(reply.ReplyPacket(), peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def test_das_counts_only_replies_with_a_valid_message_authenticator(lab):
    """BlastRADIUS (CVE-2024-3596): a Disconnect-ACK counts only with a Message-Authenticator
    made with the NAS's secret — next to the same NAS's properly signed ACK."""
    nas = FakeNAS(lab, "das-secret", ["ack-no-ma", "ack-wrong-secret", "ack"])
    try:  # the client asks from the NAS's namespace (over its loopback)
        results = [call_in_netns(nas.ns, lambda: disconnect(FakeNAS.ADDRESS, FakeNAS.PORT, "das-secret", "dev-07",
                                                            "02-00-5E-10-00-07", timeout=0.5, retries=0))
                   for _ in range(3)]
    finally:
        nas.close()
    assert [str(r) for r in results] == ["no answer", "no answer", "Disconnect-ACK"], results
    # what the NAS got each time: a signed Disconnect-Request naming the session
    assert len(nas.requests) == 3
    for req in nas.requests:
        assert req.code == packet.DisconnectRequest and req.VerifyCoARequest()
        assert req.message_authenticator and req.verify_message_authenticator()
        assert (req["User-Name"], req["Calling-Station-Id"]) == (["dev-07"], ["02-00-5E-10-00-07"])
        assert abs(req["Event-Timestamp"][0] - time.time()) < 60
