"""A node told `superseded` or `not-registered` registers again within one retry (issue 8, item
1), and a replayed registration no longer supersedes it at all.

One node and the realm's service in memory: every RADIUS request the node makes goes to the
service (or to a restarted one on the same registry file); the answers and Access-Reject
ErrorMessages go back as the RADIUS client delivers them.
"""

import os

import pytest

from tessera import errors as E
from tessera.node import Node, PortAuthorized, RadiusAnswer, RadiusFailed, RadiusRequest, StartAdmission, Timers
from tessera.realm import Realm
from tessera.registry import DeviceState
from tessera.service import Policy
from tessera.sqlite_registry import SQLiteRegistry

from tests.unit.conftest import T0, Counter, make_device

KEK = bytes(range(32))
POLICY = Policy(registration_lifetime=4 * 3600, tgt_lifetime=3600, session_lifetime=1800, clock_skew=300)


class Rig:
    """The node, the service it talks to, a clock, and a log of (time, operation, outcome)."""

    def __init__(self, path: str, timers: Timers = Timers()):
        self.path = path
        self.realm = Realm.init(SQLiteRegistry(path), KEK, "example.net", T0, POLICY, Counter(b"rig"))
        self.service = self.realm.service("radius-a")
        self.node = Node(make_device(self.realm, "SN-N"), Counter(b"node"), timers)
        self.now = float(T0)
        self.log: list[tuple[float, str, str]] = []
        self.sent: list[bytes] = []  # every request the node put on the wire

    def restart(self) -> None:
        """A new radiusd on the same registry file: new connection, empty replay cache."""
        self.realm = Realm(SQLiteRegistry(self.path), KEK, Counter(b"restarted"))
        self.service = self.realm.service("radius-a")

    def feed(self, event) -> None:
        pending = [event]
        while pending:
            for action in self.node.handle(pending.pop(0), self.now):
                if isinstance(action, StartAdmission):
                    pending.append(PortAuthorized(action.method))
                elif isinstance(action, RadiusRequest):
                    request = action.build("radius-a")
                    self.sent.append(request)
                    try:
                        pending.append(RadiusAnswer(action.op_id, self.service.handle(request, self.now)))
                        self.log.append((self.now, action.operation, "ok"))
                    except E.TesseraError as exc:
                        pending.append(RadiusFailed(action.op_id, exc.reason, self.service.error_reply(exc, self.now)))
                        self.log.append((self.now, action.operation, exc.name))

    def run(self, seconds: float, step: float = 1.0) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += step
            self.feed(None)

    def since(self, mark: int) -> list[tuple[str, str]]:
        """The registration and ticket exchanges (not the periodic revocation poll)."""
        return [(op, how) for _, op, how in self.log[mark:] if op != "revocations"]


@pytest.fixture
def rig(tmp_path):
    from tessera.node import LinkUp

    r = Rig(str(tmp_path / "registry.db"))
    r.feed(LinkUp())
    r.run(3)
    assert r.since(0) == [("register", "ok"), ("ticket", "ok")]
    return r


def supersede(rig) -> None:
    """Someone with the device's key (a restored copy of the device) registers it again."""
    from tessera.device import DeviceClient

    twin = DeviceClient(rig.realm.bundle("SN-N", [], ""), rig.node.client.key)
    twin.register_reply(rig.service.handle(twin.register_request("radius-a", rig.now, os.urandom(16)), rig.now),
                        rig.now)


@pytest.mark.parametrize("cause", ["superseded", "not-registered"])
def test_node_told_its_registration_is_dead_registers_again_within_one_retry(rig, cause):
    if cause == "superseded":
        supersede(rig)
    else:  # e.g. the registry restored from before the device registered
        rig.realm.registry.set_state("SN-N", DeviceState.ENROLLED, int(rig.now), _event(rig.now))
    generation = rig.realm.registry.get_device("SN-N").generation
    mark = len(rig.log)
    rig.run(3600)  # past the TGT's renewal point
    refused_at = next(t for t, op, how in rig.log[mark:] if how != "ok")
    # the refusal, then at the first retry a registration, accepted, then a TGT from it
    assert rig.since(mark)[:3] == [("ticket", cause), ("register", "ok"), ("ticket", "ok")]
    retry_at = rig.log[mark + 1][0]
    assert retry_at - refused_at <= rig.node.timers.retry_min  # one retry, not the DRT's last quarter
    assert rig.node.client.registration.generation == rig.realm.registry.get_device("SN-N").generation
    assert rig.realm.registry.get_device("SN-N").generation == generation + 1
    assert rig.node.client.credentials.not_after > rig.now


def test_a_replayed_registration_after_a_restart_does_not_supersede_the_node(rig):
    """What issue 8 found: a captured RegisterRequest replayed within the skew after a radiusd
    restart was accepted, and the real device was 'superseded' for weeks. Now it is refused
    and the node never notices."""
    captured = next(r for r, (_, op, _) in zip(rig.sent, rig.log) if op == "register")
    generation = rig.realm.registry.get_device("SN-N").generation
    rig.restart()
    with pytest.raises(E.ReplayError):
        rig.service.handle(captured, rig.now + 60)
    assert rig.realm.registry.get_device("SN-N").generation == generation
    mark = len(rig.log)
    rig.run(3600)
    assert ("ticket", "ok") in rig.since(mark) and all(how == "ok" for _, how in rig.since(mark))
    assert rig.node.client.registration.generation == generation


def _event(now):
    from tessera.registry import AuditEvent

    return AuditEvent(int(now), "restored", "SN-N")
