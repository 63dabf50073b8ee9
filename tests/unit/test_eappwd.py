"""The EAP-PWD password's wire form (tessera.eappwd): the bytes both peers use, which
FreeRADIUS's debug log prints as '?' (tests/server/test_debug_output.py runs the real -X)."""

from hypothesis import given, strategies as st

from tessera import eappwd
from tessera.agent.supplicant import PwdCredentials, network_fields


def test_eappwd_wire_form_from_its_definition():
    # '0' = 0x30 -> 0x83 0x80, 'a' = 0x61 -> 0x86 0x81, 'é' = c3 a9 -> 8c 83 8a 89
    assert eappwd.wire("0a") == bytes([0x83, 0x80, 0x86, 0x81])
    assert eappwd.wire("é") == bytes([0x8C, 0x83, 0x8A, 0x89])
    password = "e21bb4a8c689c3c7e09dabe76b838b417e927200ce8747c3d6e3222d0a3ec608"  # 64 hex, as the realm's
    w = eappwd.wire(password)
    assert len(w) == 128 and bytes((w[i] & 15) << 4 | w[i + 1] & 15 for i in range(0, 128, 2)) == password.encode()
    # what the agent configures wpa_supplicant with: the same bytes, as unquoted hex
    assert network_fields(PwdCredentials("dev1", password))["password"] == w.hex() == eappwd.supplicant_value(password)


@given(st.text(min_size=1, max_size=80))
def test_eappwd_wire_form_is_never_utf8_and_loses_nothing(password):
    w = eappwd.wire(password)
    assert all(0x80 <= b <= 0x8F for b in w)  # continuation bytes: no UTF-8 character starts here
    for i in range(len(w)):  # not even a tail of it decodes
        try:
            w[i:].decode("utf-8")
        except UnicodeDecodeError:
            continue
        raise AssertionError(f"decodes from byte {i}")
    assert bytes((w[i] & 15) << 4 | w[i + 1] & 15 for i in range(0, len(w), 2)).decode() == password
