"""The adapter's post_auth in memory: a location is recorded only for a switch's admission, and
only under the device id EAP authenticated (Tessera-Device-Id, set by the tessera-nas site from
session-state), never under the User-Name the supplicant chose."""

import types

import pytest

from tessera import errors
from tessera.plugin.adapter import Plugin

RLM = types.SimpleNamespace(RLM_MODULE_REJECT=0, RLM_MODULE_FAIL=1, RLM_MODULE_OK=2,
                            RLM_MODULE_NOOP=7, L_DBG=1, L_INFO=3, L_ERR=4)
WHERE = (("NAS-Identifier", "switch-3"), ("NAS-IP-Address", "192.0.2.3"), ("NAS-Port-Id", "p7"),
         ("Calling-Station-Id", "02-00-5e-10-00-07"))


class Locations:
    def __init__(self):
        self.recorded = []

    def record_location(self, device_id, nas_identifier, nas_address, nas_port_id, calling_station, now):
        if device_id == "dev-gone":
            raise errors.UnknownDeviceError(f"device {device_id} is not enrolled")
        self.recorded.append((device_id, nas_identifier, nas_address, nas_port_id, calling_station, now))


@pytest.fixture
def plugin():
    logs = []
    rlm = types.SimpleNamespace(**vars(RLM), radlog=lambda level, msg: logs.append((level, msg)))
    p = Plugin(Locations(), rlm, clock=lambda: 1000.0)
    p.logs = logs
    return p


def admission(*extra):
    return (("User-Name", "dev-b"), *WHERE, *extra)


def test_adapter_location_recorded_under_the_authenticated_id_not_user_name(plugin):
    rc = plugin.post_auth(admission(("Tessera-Device-Id", "dev-a"), ("Tessera-Step", "record-location")))
    assert rc == RLM.RLM_MODULE_OK
    assert plugin.service.recorded == [("dev-a", "switch-3", "192.0.2.3", "p7", "02-00-5e-10-00-07", 1000.0)]


@pytest.mark.parametrize("extra,why", [
    ((("Tessera-Step", "record-location"),), "with 0 authenticated device ids"),  # User-Name alone
    ((("Tessera-Step", "record-location"), ("Tessera-Device-Id", "dev-a"), ("Tessera-Device-Id", "dev-b")),
     "with 2 authenticated device ids"),
    ((("Tessera-Device-Id", "dev-a"),), "outside a switch's admission"),  # no step: not the NAS site
    ((("Tessera-Device-Id", "dev-a"), ("Tessera-Step", "admit-certificate")), "outside a switch's admission"),
])
def test_adapter_location_not_recorded_without_one_authenticated_id_from_the_nas_site(plugin, extra, why):
    assert plugin.post_auth(admission(*extra)) == RLM.RLM_MODULE_NOOP
    assert plugin.service.recorded == []
    assert any(why in msg and "no location recorded" in msg for _, msg in plugin.logs), plugin.logs
    # the same admission with one authenticated id from the NAS site is recorded
    plugin.post_auth(admission(("Tessera-Device-Id", "dev-a"), ("Tessera-Step", "record-location")))
    assert [r[0] for r in plugin.service.recorded] == ["dev-a"]


def test_adapter_location_failure_is_logged_never_raised_never_rejects(plugin):
    rc = plugin.post_auth(admission(("Tessera-Device-Id", "dev-gone"), ("Tessera-Step", "record-location")))
    assert rc == RLM.RLM_MODULE_OK and plugin.service.recorded == []
    assert any("could not record the admission: unknown-device" in msg for _, msg in plugin.logs), plugin.logs
