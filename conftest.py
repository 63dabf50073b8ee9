"""Suite-wide settings, loaded for any subset of the tests (one file, one folder, all).

- ``tests.gate``: a skipped real-part test fails the run as root (see tests/gate.py).
- Hypothesis: the ``ci`` profile (the default) is derandomised -- the same examples on every
  run, so a failure in CI reproduces on a laptop -- with no deadline (a loaded 2-core machine
  must not turn slowness into a failure) and the reproduction blob printed on failure.
  ``HYPOTHESIS_PROFILE=explore`` searches with fresh randomness and prints the seed.
"""

import os

from hypothesis import settings

pytest_plugins = ["tests.gate"]

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
