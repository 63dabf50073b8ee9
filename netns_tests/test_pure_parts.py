"""Unit tests of the pure parts of lab/ and agent/ I/O adapters (no root, no namespaces)."""

from __future__ import annotations

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
from tessera.lab.portctl import Allow, Block, Kick, PortTable, table_input
from tessera.lab.probe import icmp_echo, parse_icmp_reply
from tessera.lab.switch import RadiusServer, hostapd_conf

A, B = "02:00:5e:10:00:01", "02:00:5e:10:00:02"


# -- PortTable: every input in every relevant state
def test_porttable_first_station_opens_port_second_does_not():
    t = PortTable()
    t.add_port("p1")
    assert t.station_authorized("p1", A) == [Allow("p1", A, True)]
    assert t.station_authorized("p1", B) == [Allow("p1", B, False)]
    assert t.station_authorized("p1", A) == []  # re-authentication: no change


def test_porttable_last_station_gone_closes_port():
    t = PortTable()
    t.station_authorized("p1", A), t.station_authorized("p1", B)
    assert t.station_gone("p1", A) == [Block("p1", A, False)]
    assert t.station_gone("p1", B) == [Block("p1", B, True)]
    assert t.station_gone("p1", B) == []  # unknown station: nothing


def test_porttable_carrier_loss_blocks_and_kicks_every_station():
    t = PortTable()
    t.set_carrier("p1", True)
    t.station_authorized("p1", B), t.station_authorized("p1", A)
    assert t.set_carrier("p1", False) == [Block("p1", A, False), Kick("p1", A),
                                         Block("p1", B, True), Kick("p1", B)]
    assert t.set_carrier("p1", False) == []
    assert t.set_carrier("p1", True) == []
    assert t.ports["p1"] == set()


def test_porttable_authorization_on_dead_port_is_refused():
    t = PortTable()
    t.set_carrier("p1", False)
    assert t.station_authorized("p1", A) == [Kick("p1", A)]
    assert t.ports["p1"] == set()


def test_porttable_unknown_input_raises():
    with pytest.raises(ValueError):
        PortTable().feed("station_exploded", "p1", A)


def test_porttable_hostapd_events_map_to_inputs():
    ev = parse_event(f"<3>AP-STA-CONNECTED {A}")
    assert table_input(ev) == "station_authorized" and ev.mac == A
    assert table_input(parse_event(f"<3>CTRL-EVENT-EAP-FAILURE2 {A}")) == "station_gone"
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
    assert on_link_action(LinkUp("eth0", 0.0)) == "REASSOCIATE"
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
