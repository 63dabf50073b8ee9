"""State machines as tables (after h2): every (state, input) pair either follows the table or
raises StateError, and leaves the machine unchanged when it raises."""

import pytest
from hypothesis import given, strategies as st

from tessera import errors as E
from tessera.device import TRANSITIONS, State
from tessera.peer import INITIATOR, RESPONDER, PeerInitiator, PeerResponder, PeerState
from tests.unit.conftest import T0, admit, make_device

DEVICE_INPUTS = sorted({i for _, i in TRANSITIONS})


@given(state=st.sampled_from(list(State)), event=st.sampled_from(DEVICE_INPUTS))
def test_device_table_every_pair(state, event):
    from tessera.device import DeviceClient
    from tessera.identity import BootstrapBundle, DeviceKey

    key = DeviceKey.generate(b"\x01" * 32)
    dev = DeviceClient(BootstrapBundle("example.net", "SN-1", key.public_bytes(), []), key)
    dev.state = state
    if (state, event) in TRANSITIONS:
        dev._step(event)
        assert dev.state is TRANSITIONS[(state, event)]
    else:
        with pytest.raises(E.StateError):
            dev._step(event)
        assert dev.state is state


@pytest.mark.parametrize("table", [INITIATOR, RESPONDER])
def test_peer_tables_every_pair(table):
    role = PeerInitiator if table is INITIATOR else PeerResponder
    inputs = sorted({i for _, i in table})
    for state in PeerState:
        for event in inputs:
            obj = role.__new__(role)
            obj.state = state
            if (state, event) in table:
                obj._step(event)
                assert obj.state is table[(state, event)]
            else:
                with pytest.raises(E.StateError):
                    obj._step(event)
                assert obj.state is state


def test_out_of_order_peer_inputs_are_refused(realm, service, rand):
    a, b = make_device(realm, "SN-A"), make_device(realm, "SN-B")
    admit(service, a, rand)
    admit(service, b, rand)
    rb = PeerResponder(b)
    with pytest.raises(E.StateError):
        rb.session_request("radius-a", T0, rand(16))
    ia = PeerInitiator(a, "SN-B")
    hello = ia.hello(T0, rand(16))
    with pytest.raises(E.StateError):
        ia.hello(T0, rand(16))
    rb.receive_hello(hello, T0)
    with pytest.raises(E.StateError):
        rb.receive_hello(hello, T0)


def test_reply_without_request_is_refused(realm, service, rand):
    a = make_device(realm, "SN-A")
    with pytest.raises(E.StateError):
        a.register_reply(b"\x01\x02", T0)
