"""Unit tests of the pure parts of lab/ and agent/ I/O adapters (no root, no namespaces)."""

from __future__ import annotations

import itertools
import select

import pytest

from tessera.agent.ctrl import parse_event, parse_kv
from tessera.agent.l2 import (BROADCAST, MemoryHub, memory_pair, pack_frame, unpack_frame,
                              mac_bytes, mac_str)
from tessera.agent.link import CarrierState, LinkDown, LinkUp, carrier_of, getlink_dump_request
from tessera.agent.supplicant import (PwdCredentials, TlsCredentials, network_fields,
                                      on_link_action, supplicant_conf)
from tessera.lab import nft
from tessera.lab.netns import mac_for, netns_exec_argv, owner_pid, run_tag, veth_argv
from tessera.lab.portctl import FREED_AFTER_KICK, Allow, Block, Kick, PortTable, Readmit, table_input
from tessera.lab.probe import icmp_echo, parse_icmp_reply
from tessera.lab.switch import RadiusServer, hostapd_conf

A, B = "02:00:5e:10:00:01", "02:00:5e:10:00:02"


# -- PortTable: every input in every relevant state
def test_porttable_first_station_opens_port_second_does_not():
    t = PortTable()
    t.add_port("p1")
    assert t.station_authorized("p1", A, 0) == [Allow("p1", A, True)]
    assert t.station_authorized("p1", B, 0) == [Allow("p1", B, False)]
    assert t.station_authorized("p1", A, 0) == []  # re-authentication: no change


def test_porttable_last_station_gone_closes_port():
    t = PortTable()
    t.station_authorized("p1", A, 0), t.station_authorized("p1", B, 0)
    assert t.station_gone("p1", A) == [Block("p1", A, False)]
    assert t.station_gone("p1", B) == [Block("p1", B, True)]
    assert t.station_gone("p1", B) == []  # unknown station: nothing


def test_porttable_carrier_loss_blocks_and_kicks_every_station():
    t = PortTable()
    t.set_carrier("p1", True, 0)
    t.station_authorized("p1", B, 0), t.station_authorized("p1", A, 0)
    assert t.set_carrier("p1", False, 0) == [Block("p1", A, False), Kick("p1", A),
                                            Block("p1", B, True), Kick("p1", B)]
    assert t.set_carrier("p1", False, 0) == []
    assert t.set_carrier("p1", True, 0) == []
    assert t.ports["p1"] == set()


def test_porttable_authorization_on_dead_port_is_refused():
    t = PortTable()
    t.set_carrier("p1", False, 0)
    assert t.station_authorized("p1", A, 0) == [Kick("p1", A)]
    assert t.ports["p1"] == set()


def test_porttable_station_freed_after_a_quick_flap_is_closed_then_readmitted():
    """hostapd's 5 s removal timer of the carrier-loss kick frees the station the cable's return
    re-admitted: the controller closes it and has hostapd start EAP for it; only the next
    success opens it again."""
    t = PortTable()
    t.set_carrier("p1", True, 100)
    t.station_authorized("p1", A, 100)
    assert t.set_carrier("p1", False, 100) == [Block("p1", A, True), Kick("p1", A)]
    assert t.station_gone("p1", A) == []           # the kick's own AP-STA-DISCONNECTED
    assert t.set_carrier("p1", True, 100.5) == []
    assert t.station_authorized("p1", A, 100.53) == [Allow("p1", A, True)]
    assert t.feed("station_removed", "p1", A, 105) == [Block("p1", A, True), Readmit("p1", A)]
    assert t.ports["p1"] == set()
    assert t.station_authorized("p1", A, 105.01) == [Allow("p1", A, True)]
    assert t.tick(100 + FREED_AFTER_KICK) == []    # admitted: the timer's check has nothing to do
    assert t.next_due() is None


def test_porttable_removal_readmits_only_an_admitted_station_on_a_live_wire():
    t = PortTable()
    t.set_carrier("p1", True, 0)
    t.station_authorized("p1", A, 0), t.station_authorized("p1", B, 0)
    assert t.station_removed("p1", B) == [Block("p1", B, False), Readmit("p1", B)]
    assert t.station_removed("p1", B) == []        # not admitted (any more): nothing to restart
    assert t.station_removed("p1", "02:00:5e:10:00:63") == []
    assert t.set_carrier("p1", False, 0) == [Block("p1", A, True), Kick("p1", A)]
    assert t.station_removed("p1", A) == []        # freed behind a dead wire: nothing to restart


def test_porttable_kicked_station_freed_mid_admission_is_readmitted_when_due():
    """hostapd frees a kicked station 5 s later without a word if it is not authorized then (its
    re-admission still waiting for RADIUS): the table readmits it once that is due, on a live
    wire only, and only stations it kicked."""
    t = PortTable()
    t.set_carrier("p1", True, 0), t.set_carrier("p2", True, 0)
    t.station_authorized("p1", A, 0), t.station_authorized("p2", B, 0)
    t.set_carrier("p1", False, 10), t.set_carrier("p2", False, 11)
    assert t.next_due() == 10 + FREED_AFTER_KICK
    t.set_carrier("p1", True, 12)                  # p1 back (EAP under way); p2 stays dark
    assert t.tick(10 + FREED_AFTER_KICK - 0.01) == []
    assert t.tick(10 + FREED_AFTER_KICK) == [Readmit("p1", A)]
    assert t.tick(10 + FREED_AFTER_KICK) == []     # once
    assert t.next_due() == 11 + FREED_AFTER_KICK
    assert t.tick(11 + FREED_AFTER_KICK) == []     # freed behind a dead wire: its next link-up
    assert t.next_due() is None and t.ports == {"p1": set(), "p2": set()}


def test_porttable_model_nothing_opens_without_an_authorization_on_a_live_wire():
    """Every sequence of up to five inputs for one station against a model: the station is
    open exactly when its last authorization came on a live wire and nothing closed it since;
    a kick goes only to a wire that went dead or for an authorization on one; a readmission
    only for a station that was open (so never behind a dead wire) or, once hostapd has freed a
    kicked station, for one not open on a live wire."""
    inputs = ("up", "down", "station_authorized", "station_gone", "station_removed", "freed")
    for n in range(1, 6):
        for seq in itertools.product(inputs, repeat=n):
            t, carrier, is_open, kicked = PortTable(), None, False, None
            t.add_port("p1")
            for now, what in enumerate(seq):
                now *= 100.0  # "freed": the last kick's removal is due; anything else: it is not
                if kicked is not None:
                    assert t.tick(kicked + FREED_AFTER_KICK - 0.01) == [], seq
                if what == "freed":
                    expect = [Readmit("p1", A)] if kicked is not None and carrier and not is_open else []
                    assert t.tick(now) == expect, seq
                    kicked = None
                    continue
                if what in ("up", "down"):
                    acts = t.set_carrier("p1", what == "up", now)
                    if what == "down" and carrier is not False and is_open:
                        assert acts == [Block("p1", A, True), Kick("p1", A)], seq
                        is_open, kicked = False, now
                    else:
                        assert acts == [], seq
                    carrier = what == "up"
                    continue
                acts = t.feed(what, "p1", A, now)
                if what == "station_authorized":
                    expect = ([] if is_open else [Kick("p1", A)] if carrier is False
                              else [Allow("p1", A, True)])
                    if not is_open and carrier is False:
                        kicked = now
                    is_open = is_open or carrier is not False
                else:
                    expect = [Block("p1", A, True)] if is_open else []
                    if what == "station_removed" and is_open:
                        expect.append(Readmit("p1", A))
                    is_open = False
                assert acts == expect, seq
                assert (A in t.ports["p1"]) == is_open, seq


def test_porttable_unknown_input_raises():
    with pytest.raises(ValueError):
        PortTable().feed("station_exploded", "p1", A, 0)


def test_porttable_hostapd_events_map_to_inputs():
    ev = parse_event(f"<3>AP-STA-CONNECTED {A}")
    assert table_input(ev) == "station_authorized" and ev.mac == A
    assert table_input(parse_event(f"<3>CTRL-EVENT-EAP-FAILURE2 {A}")) == "station_gone"
    # the controller asks hostapd whether the station is still listed before it calls an
    # AP-STA-DISCONNECTED a removal; the event alone is an ordinary loss
    assert table_input(parse_event(f"<3>AP-STA-DISCONNECTED {A}")) == "station_gone"
    assert table_input(parse_event(f"<3>CTRL-EVENT-EAP-STARTED {A}")) is None
    assert table_input(parse_event("<3>AP-STA-CONNECTED")) is None  # no MAC: ignore


# -- control interface parsing
def test_ctrl_parse_event_and_reply():
    assert parse_event("OK\n") is None
    ev = parse_event("<3>CTRL-EVENT-EAP-SUCCESS EAP authentication completed successfully")
    assert (ev.level, ev.name, ev.mac) == (3, "CTRL-EVENT-EAP-SUCCESS", None)
    kv = parse_kv("wpa_state=COMPLETED\nsuppPortStatus=Authorized\nEAP state=SUCCESS\n")
    assert kv["suppPortStatus"] == "Authorized" and kv["EAP state"] == "SUCCESS"


# -- nftables scripts
def test_nft_ruleset_accepts_eapol_first_and_names_controlled_ports():
    text = nft.ruleset(["p1", "p2"])
    assert 'elements = { "p1", "p2" }' in text
    chain = text[text.index("chain ingress_port"):]
    assert chain.index("ether type 0x888e accept") < chain.index("drop")
    for kw in (" in ", " out ", " fwd "):
        assert f"chain{kw}" not in text  # nft keywords, not usable as chain names


def test_nft_set_changes():
    assert nft.authorize("p1", A, True) == (
        f'add element bridge tessera_pae authorized {{ "p1" . {A} }}\n'
        'add element bridge tessera_pae open_ports { "p1" }\n')
    assert "open_ports" not in nft.deauthorize("p1", A, False)


# -- hostapd / wpa_supplicant configs
def test_hostapd_conf_has_the_settings_the_notes_require():
    conf = hostapd_conf("p7", RadiusServer("203.0.113.2", 1812, "s3cret"), "/run/x",
                        "203.0.113.1", "sw1")
    for line in ("interface=p7", "driver=wired", "ieee8021x=1", "eapol_version=2",
                 "use_pae_group_addr=1", "radius_auth_req_attr=87:s:p7",
                 "auth_server_addr=203.0.113.2", "auth_server_shared_secret=s3cret",
                 "nas_identifier=sw1", "ctrl_interface=/run/x"):
        assert line in conf.splitlines()


def test_supplicant_conf_tls_and_pwd():
    tls = supplicant_conf("/c", TlsCredentials("dev1", "/d.pem", "/d.key", "/ca.pem"))
    for line in ("ap_scan=0", "eapol_version=2", "    key_mgmt=IEEE8021X", "    eapol_flags=0",
                 "    eap=TLS", '    client_cert="/d.pem"', '    private_key="/d.key"'):
        assert line in tls.splitlines()
    pwd = network_fields(PwdCredentials("dev2", "pw"))
    # the wire form (tessera.eappwd) as unquoted hex: "p" = 0x70 -> 87 80, "w" = 0x77 -> 87 87
    assert pwd["eap"] == "PWD" and pwd["password"] == "87808787"
    # a password cannot break out of its line: hex digits only
    assert network_fields(PwdCredentials("dev2", 'pw"\nnetwork={'))["password"].isalnum()
    with pytest.raises(ValueError):
        network_fields(PwdCredentials('dev2"\nnetwork={', "pw"))


def test_supplicant_starts_over_on_link_up_only():
    assert on_link_action(LinkUp("eth0", 0.0)) == "EAPOL-Start"
    assert on_link_action(LinkDown("eth0", 0.0)) is None


# -- carrier state
def test_carrier_state_reports_changes_only():
    s = CarrierState({"eth0"})
    assert s.update("eth0", True, 1.0) == LinkUp("eth0", 1.0)
    assert s.update("eth0", True, 2.0) is None
    assert s.update("eth1", False, 2.0) is None  # not watched
    assert s.update("eth0", False, 3.0) == LinkDown("eth0", 3.0)
    assert carrier_of(0x11043) and not carrier_of(0x1003)
    assert len(getlink_dump_request()) == 32


# -- L2 framing and the in-memory transport
def test_l2_frame_round_trip_and_bounds():
    f = pack_frame(mac_bytes(B), mac_bytes(A), b"hello")
    assert unpack_frame(f) == (mac_bytes(B), mac_bytes(A), b"hello")
    assert unpack_frame(f[:13]) is None
    assert unpack_frame(pack_frame(mac_bytes(B), mac_bytes(A), b"x", 0x0800)) is None
    assert mac_str(mac_bytes(A)) == A
    with pytest.raises(ValueError):
        pack_frame(mac_bytes(B), mac_bytes(A), b"x" * 1501)
    with pytest.raises(ValueError):
        mac_bytes("02:00")


def test_memory_transport_unicast_broadcast_and_select():
    hub = MemoryHub()
    a, b, c = hub.attach(A), hub.attach(B), hub.attach("02:00:00:00:00:0c")
    a.send(B, b"to-b")
    assert select.select([b], [], [], 0)[0] == [b]
    assert b.recv() == (A, b"to-b") and c.recv() is None and b.recv() is None
    a.send(BROADCAST, b"all")
    assert b.recv() == (A, b"all") and c.recv() == (A, b"all") and a.recv() is None
    for t in (a, b, c):
        t.close()
    x, y = memory_pair()
    y.send(x.mac, b"pong")
    assert x.recv() == (y.mac, b"pong")


# -- netns helpers and probes
def test_netns_names_and_commands():
    tag = run_tag(pid=4242, rand="beef")
    assert tag == "ts4242-beef" and owner_pid(f"{tag}-sw") == 4242
    assert owner_pid("someone-elses") is None
    assert netns_exec_argv("n1", ["hostapd", "c"]) == ["ip", "netns", "exec", "n1", "hostapd", "c"]
    assert veth_argv("sw", "p1", "d1", "eth0") == [
        "ip", "link", "add", "p1", "netns", "sw", "type", "veth", "peer", "name", "eth0",
        "netns", "d1"]
    assert mac_for(258) == "02:00:5e:10:01:02"


def test_icmp_echo_and_reply_parsing():
    req = icmp_echo(7, 1)
    assert req[0] == 8
    reply = bytes([0x45]) + bytes(19) + bytes([0, 0]) + req[2:]
    assert parse_icmp_reply(reply) == (7, 1)
    assert parse_icmp_reply(b"\x45" + bytes(10)) is None
