"""The bootstrap bundle says how a device speaks RADIUS: RadSec with its certificate (no secret,
the default) or UDP with a shared secret (the weaker option, explicit); the agent follows it."""

from __future__ import annotations

import json

import pytest

from tessera.agent.daemon import Agent
from tessera.errors import MalformedError
from tessera.identity import RADSEC, UDP, BootstrapBundle, ServerEntry
from tessera.radius.client import Server
from tessera.radius.radsec import RadSecClient, RadSecServer

from tests.unit.conftest import T0

SERVERS = [ServerEntry("radius-a", "192.0.2.1", 1812, 2083, "radius-a.example.net"),
           ServerEntry("radius-b", "2001:db8::2", 11812, 12083)]


def test_bundle_for_radsec_holds_no_secret_and_the_radsec_ports(realm):
    b = realm.enrol_generated("SN-R1", SERVERS, "", T0)
    assert b.radius_transport == RADSEC and b.radius_secret == ""
    d = json.loads(b.to_json())
    assert d["radius_transport"] == "radsec" and "radius_secret" not in d
    assert d["servers"] == [{"id": "radius-a", "host": "192.0.2.1", "radsec_port": 2083, "tls_name": "radius-a.example.net"},
                            {"id": "radius-b", "host": "2001:db8::2", "radsec_port": 12083}]
    again = BootstrapBundle.from_json(b.to_json())
    assert again.radius_transport == RADSEC and again.device_key_pem == b.device_key_pem
    assert [(s.server_id, s.host, s.radsec_port, s.tls_name) for s in again.servers] == \
        [(s.server_id, s.host, s.radsec_port, s.tls_name) for s in SERVERS]


def test_bundle_for_udp_is_explicit_and_keeps_its_secret(realm):
    b = realm.bundle("SN-R2", SERVERS, "s3cret")  # a secret given: UDP, as before
    assert b.radius_transport == UDP
    d = json.loads(b.to_json())
    assert (d["radius_transport"], d["radius_secret"]) == ("udp", "s3cret")
    assert [s["port"] for s in d["servers"]] == [1812, 11812] and "radsec_port" not in d["servers"][0]
    assert BootstrapBundle.from_json(b.to_json()) == realm.bundle("SN-R2", [ServerEntry(s.server_id, s.host, s.port)
                                                                            for s in SERVERS], "s3cret", UDP)
    old = dict(d)  # a bundle written before the field existed: UDP with its secret
    del old["radius_transport"]
    assert BootstrapBundle.from_json(json.dumps(old)).radius_transport == UDP


def test_bundle_refuses_contradictions(realm):
    for secret, transport, why in (("s3cret", RADSEC, "carries no RADIUS secret"), ("", UDP, "needs the shared secret"),
                                   ("", "tcp", "must be 'radsec' or 'udp'")):
        with pytest.raises(MalformedError, match=why):
            realm.bundle("SN-R3", SERVERS, secret, transport)
    with pytest.raises(MalformedError):  # nothing enrolled by a bundle that cannot be made
        realm.enrol_generated("SN-R3", SERVERS, "s3cret", T0, RADSEC)
    assert realm.registry.get_device("SN-R3") is None
    good = json.loads(realm.bundle("SN-R3", SERVERS).to_json())
    for broken in ({**good, "radius_secret": "x"}, {**good, "radius_transport": "carrier-pigeon"},
                   {**good, "servers": [{"id": "r", "host": "h", "radsec_port": 0}]}, {**good, "servers": ["r"]}):
        with pytest.raises(MalformedError):
            BootstrapBundle.from_json(json.dumps(broken))


def test_agent_speaks_radsec_with_its_certificate_or_udp_with_the_secret(realm, tmp_path):
    agent = Agent("eth0", realm.enrol_generated("SN-R4", SERVERS, "", T0), str(tmp_path / "a"))
    try:
        assert isinstance(agent.radsec, RadSecClient)
        assert agent.servers == [RadSecServer("radius-a", "192.0.2.1", 2083, "radius-a.example.net"),
                                 RadSecServer("radius-b", "2001:db8::2", 12083, "")]
        assert agent.radsec.context.verify_mode.name == "CERT_REQUIRED" and agent.radsec.context.check_hostname
    finally:
        agent.radsec.close()
    udp = Agent("eth0", realm.enrol_generated("SN-R5", SERVERS, "s3cret", T0), str(tmp_path / "b"))
    assert udp.radsec is None and udp.servers[0] == Server("radius-a", "192.0.2.1", 1812, b"s3cret")
    bare = realm.enrol_generated("SN-R6", SERVERS, "", T0)
    bare.ca_certificate_pem = None
    with pytest.raises(ValueError, match="needs the realm CA certificate"):
        Agent("eth0", bare, str(tmp_path / "c"))
