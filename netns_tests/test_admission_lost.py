"""A device admitted in its own mind while its port is shut (issue 11's lab at 50 devices: hostapd
dropped a station right after its EAP-Success, and the agent retried registration with "No route
to host" for good). Here the switch does the same on purpose: the port controller swallows one
device's first AP-STA-CONNECTED and has hostapd deauthenticate it, which tells the device
nothing. Its agent takes `admission_lost` (10 s) of unanswered requests after the EAP-Success as
a shut port, starts 802.1X over, and registers; the other device, whose port opened, never
does."""

from __future__ import annotations

import time

from tessera.lab.topology import RealmLab

from tests.gate import needs_lab



@needs_lab
def test_agent_readmits_when_the_switch_dropped_it_after_eap_success(lab):
    rl = RealmLab(lab, 2, capture=False)
    shut, ok = rl.devices
    ctl = rl.controller
    table_authorized = ctl.state.station_authorized
    dropped: list[float] = []

    def drop_first(port: str, mac: str, now: float):
        """hostapd's DISCONNECTED after reAuthMax restarts: the EAP-Success went out, the
        station does not stay (the controller runs this in its own thread)."""
        if port == shut.dev.port and not dropped:
            dropped.append(time.monotonic())
            ctl._command(port, f"DEAUTHENTICATE {mac}")
            return []
        return table_authorized(port, mac, now)

    ctl.state.station_authorized = drop_first
    events = rl.events()
    rl.set_carriers(rl.devices, False)
    for d in rl.devices:
        rl.start_agent(d, events=events)
    t0 = rl.set_carriers(rl.devices, True)
    got = events.read_until(lambda seen: {(shut.device_id, "ticketed"), (ok.device_id, "ticketed")}
                      <= {(e["device"], e["event"]) for e in seen}, 40)
    mine = [(e["event"], e["t"] - t0) for e in got if e["device"] == shut.device_id and e["event"] != "started"]
    kinds = [k for k, _ in mine]
    assert dropped and kinds[:3] == ["link-up", "authorized", "authorized"], mine
    first, again = (t for k, t in mine if k == "authorized")
    assert 10 <= again - first <= 14, mine  # admission_lost after the first EAP-Success, then a new EAP run
    assert kinds[3:5] == ["registered", "ticketed"]
    log = open(shut.agent.log_path).read()
    assert "admission-lost" in log and "No route to host" in log
    assert ctl.is_open(shut.dev.port, shut.dev.mac)
    # the device whose port opened: one admission, registered at once, never taken as shut
    theirs = [e["event"] for e in got if e["device"] == ok.device_id]
    assert theirs.count("authorized") == 1 and "admission-lost" not in open(ok.agent.log_path).read()
