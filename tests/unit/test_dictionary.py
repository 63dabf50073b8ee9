"""The one RADIUS dictionary agrees with the core: every error code has its VALUE, and pyrad
reads the file that FreeRADIUS includes."""

import os
import re

from tessera import errors

DICT = os.path.join(os.path.dirname(__file__), "..", "..", "radius", "dictionary.tessera")


def test_error_values_match_the_taxonomy():
    values = {int(code): name for name, code in re.findall(r"^VALUE\s+Tessera-Error\s+(\S+)\s+(\d+)", open(DICT).read(), re.M)}
    assert values == {cls.code: "-".join(w.capitalize() for w in cls.name.split("-")) for cls in errors.ALL}


def test_pyrad_loads_the_dictionary():
    from pyrad.dictionary import Dictionary

    d = Dictionary(DICT)
    assert d.attributes["Tessera-Message"].type == "octets"
    assert d.attributes["Tessera-Error"].values.GetForward("Revoked") == errors.RevokedError.code.to_bytes(4, "big")
