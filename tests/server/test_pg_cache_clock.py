"""A serving server whose own clock is wrong knows it, refuses with `server-clock` and recovers by
itself (tessera.pg_cache): its clock is compared with PostgreSQL's on every feed read, on a
private cluster (`pg_cluster`, conftest.py). The skew is injected through the cache's `wall`
clock, as a host whose clock drifted would have it."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time

import pytest
from pyrad import packet

from tessera import errors as E, message as m
from tessera.pg_cache import CLOCK_BOUND, CachedRegistry, clock_off
from tessera.pg_registry import PostgresRegistry
from tessera.radius.attrs import join_message, split_message
from tessera.radius.client import RadiusClient, RejectedError, Server, load_dictionary
from tessera.realm import Realm, read_kek
from tessera.service import Policy
from tests.server.test_pg_cache import Setup, enrolled, wait_for
from tests.unit.conftest import admit

OFF = 600.0  # ten minutes, twice the realm's clock skew


@pytest.fixture
def setup(pg_cluster, tmp_path):
    s = Setup(pg_cluster, tmp_path)
    yield s
    s.close()


class Drift:
    """This host's wall clock, `off` seconds from the truth (changed by the test)."""

    def __init__(self, off: float):
        self.off = off

    def __call__(self) -> float:
        return time.time() + self.off


def serve(setup: Setup, wall: Drift) -> Realm:
    reg = CachedRegistry(PostgresRegistry(setup.conninfo), wall=wall,
                         log=lambda level, text: setup.logs.append((level, text)))
    realm = Realm(reg, read_kek(setup.kek_path))
    setup._opened.append(realm)
    return realm


def register(svc, dev, rand, server_now: float):
    """A registration by a device whose clock is right, at a server whose clock reads `server_now`."""
    now = time.time()
    return dev.register_reply(svc.handle(dev.register_request(svc.server_id, now, rand(16)), server_now), now)


def test_pg_cache_server_clock_off_refuses_unsigned_server_clock_then_recovers(setup):
    wall = Drift(OFF)
    served = serve(setup, wall)
    svc = served.service("radius-skewed")
    assert served.registry.clock_off == pytest.approx(-OFF, abs=5)  # known before the module serves
    dev = enrolled(setup.admin, svc, "SN-CLOCK")
    with pytest.raises(E.ServerClockError) as caught:
        served.registry.check_clock()
    assert "+600 s off the realm's" in str(caught.value)
    # unsigned, and the device takes it as it came: a transient failure, no state or clock change
    req = dev.register_request(svc.server_id, time.time(), setup.rand(16))
    reply = svc.error_reply(caught.value, wall())
    assert isinstance(m.decode(reply, (m.SignedError, m.ErrorMessage)), m.ErrorMessage)
    assert m.decode(reply, (m.ErrorMessage,)).code == E.ServerClockError.code == 24
    with pytest.raises(E.ServerClockError) as seen:
        dev.register_reply(reply, time.time())
    assert not seen.value.signed and dev.registration is None
    # writes are refused (here the service is given the true time, so the request passes its own
    # time checks and meets the write); nothing is written
    with pytest.raises(E.ServerClockError):
        svc.handle(dev.register_request(svc.server_id, time.time(), setup.rand(16)), time.time())
    dev.abandon()
    assert setup.admin.registry.get_device("SN-CLOCK").generation == 0
    assert [e for e in setup.admin.registry.audit("SN-CLOCK") if e.event == "registered"] == []
    # reads stay served: 802.1X admission does not depend on this server's clock
    assert served.registry.get_device("SN-CLOCK").device_id == "SN-CLOCK"
    # the same request to a server whose clock is right is served
    right = serve(setup, Drift(0.0)).service("radius-right")
    right.registry.check_clock()
    assert register(right, dev, setup.rand, time.time()).generation == 1
    # the clock is put right: within the next feed read (one a second) the skewed one serves again
    time.sleep(2.2)  # a few reads while off: logged once
    wall.off = 0.0
    wait_for(lambda: served.registry.clock_off is None, 3.0, step=0.01)
    served.registry.check_clock()
    assert register(svc, dev, setup.rand, wall()).generation == 2
    said = [(level, text) for level, text in setup.logs if "clock" in text]
    assert said == [("error", "this server's clock is +600 s off the registry database's: refusing requests "
                              "(server-clock) until they agree within 150 s"),
                    ("info", "this server's clock agrees with the registry database's again (within 150 s)")]


@pytest.mark.parametrize("off", [-OFF, 2 * CLOCK_BOUND])
def test_pg_cache_server_clock_behind_or_just_beyond_the_bound_is_refused(setup, off):
    served = serve(setup, Drift(off))
    with pytest.raises(E.ServerClockError):
        served.registry.check_clock()
    assert served.registry.clock_off == pytest.approx(-off, abs=5)


def test_pg_cache_server_clock_within_the_bound_serves(setup):
    served = serve(setup, Drift(CLOCK_BOUND / 2))
    svc = served.service("radius-a")
    dev = enrolled(setup.admin, svc, "SN-NEAR")
    assert served.registry.clock_off is None
    served.registry.check_clock()
    admit(svc, dev, setup.rand, time.time())  # registration and TGT within the skew
    assert dev.credentials is not None


def test_clock_bound_is_half_the_realms_skew():
    assert CLOCK_BOUND == Policy().clock_skew / 2 == 150


@pytest.mark.parametrize("before, theirs, after, expected", [
    (1000.0, 1000.0, 1000.0, None),        # the same clock
    (1000.0, 1150.0, 1000.0, None),        # at the bound: allowed
    (1000.0, 1151.0, 1000.0, 151.0),       # beyond it: the database's clock minus ours
    (1000.0, 849.0, 1000.0, -151.0),       # ours ahead
    (1000.0, 1340.0, 1200.0, None),        # 240 off the middle, but the round trip took 200 s: 140 at least
    (1000.0, 1351.0, 1200.0, 251.0),       # 151 off even at the round trip's edge
])
def test_clock_off_counts_beyond_half_the_round_trip(before, theirs, after, expected):
    assert clock_off(before, theirs, after, 150.0) == expected


# -- the device's side: its RADIUS client passes over a server that says its clock is wrong ----
class Refusing:
    """A RADIUS server on loopback answering every request with Access-Reject carrying
    Tessera-Error `code` and the core's unsigned ErrorMessage (or Access-Accept when None)."""

    def __init__(self, code: int | None):
        self.code, self.asked = code, []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def entry(self, server_id: str) -> Server:
        return Server(server_id, "127.0.0.1", self.sock.getsockname()[1], SECRET)

    def _serve(self) -> None:
        while self.running:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            req = packet.AuthPacket(packet=data, secret=SECRET, dict=DICT)
            message = join_message(req["Tessera-Message"])
            self.asked.append(m.decode(message).server_id)
            reply = req.CreateReply()
            if self.code is None:
                reply.code = packet.AccessAccept
                for piece in split_message(b"served"):
                    reply.AddAttribute("Tessera-Reply", piece)
            else:
                exc = E.from_code(self.code, "this server's clock is +600 s off the realm's")
                reply.code = packet.AccessReject
                reply.AddAttribute("Reply-Message", exc.reason)
                reply.AddAttribute("Tessera-Error", self.code)
                reply.AddAttribute("Tessera-Reply", m.ErrorMessage(self.code, 0, str(exc)).encode())
            reply.add_message_authenticator()
            self.sock.sendto(reply.ReplyPacket(), peer)

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()


SECRET = b"device-secret"
DICT = load_dictionary()


@pytest.fixture
def servers():
    made: list[Refusing] = []

    def serve(*codes):
        made.extend(Refusing(code) for code in codes)
        return made
    yield serve
    for s in made:
        s.close()


def exchange(made: list[Refusing]) -> bytes:
    """One exchange as the agent makes it: a request built for each server it reaches."""
    client = RadiusClient([s.entry(f"r{i}") for i, s in enumerate(made, 1)], timeout=2.0, retries=0, dictionary=DICT)
    query = m.RevocationQuery("example.net", "SN-F", "", 0, bytes(16))
    return client.exchange("SN-F", lambda sid: dataclasses.replace(query, server_id=sid).encode())


def test_client_passes_over_a_server_refusing_with_server_clock(servers):
    r1, r2, r3 = servers(E.ServerClockError.code, None, None)
    assert exchange([r1, r2, r3]) == b"served"
    assert (r1.asked, r2.asked, r3.asked) == (["r1"], ["r2"], [])  # built anew for r2, addressed to it
    # a refusal of the device itself (revoked) is the realm's answer: no other server is asked
    r1.code = E.RevokedError.code
    with pytest.raises(RejectedError) as refused:
        exchange([r1, r2, r3])
    assert refused.value.code == E.RevokedError.code and (len(r1.asked), len(r2.asked)) == (2, 1)


def test_client_server_clock_from_every_server_is_the_refusal_the_node_hears(servers):
    r1, r2 = servers(E.ServerClockError.code, E.ServerClockError.code)
    with pytest.raises(RejectedError) as refused:
        exchange([r1, r2])
    assert refused.value.code == E.ServerClockError.code and (r1.asked, r2.asked) == (["r1"], ["r2"])


def test_pg_cache_a_server_whose_clock_is_off_issues_no_ticket(setup):
    """Every exchange, not only writes: a TGT asked of the server whose clock is off is refused
    with server-clock before anything is signed with its wrong time; the same request to a
    server whose clock is right gets its TGT."""
    skewed = serve(setup, Drift(OFF)).service("radius-skewed")
    right = serve(setup, Drift(0.0)).service("radius-right")
    dev = enrolled(setup.admin, right, "SN-CLOCK-TGT")
    assert register(right, dev, setup.rand, time.time()).generation == 1
    with pytest.raises(E.ServerClockError):
        skewed.handle(dev.auth_request("radius-skewed", time.time(), setup.rand(16)), time.time() + OFF)
    reply = right.handle(dev.auth_request("radius-right", time.time(), setup.rand(16)), time.time())
    assert isinstance(m.decode(reply, (m.TicketReply,)), m.TicketReply)
