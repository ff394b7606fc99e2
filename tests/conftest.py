"""Suite-wide test settings.

hypothesis: the same examples on every run (``derandomize``), so CI cannot fail on a random draw
that no local run saw (tests/test_geometry.py drew new examples on each run); no example database
written into the clone (``.hypothesis/``); no per-example deadline and no "too slow" health check,
which measure the wall clock of a shared, loaded machine, not the code. A test's own ``@settings``
still sets its example count.
"""

from hypothesis import HealthCheck, settings

settings.register_profile("freehand3d", derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("freehand3d")

# terminal settings of the calling shell or CI runner must not change what rich prints (colour codes,
# wrapping) in the messages the tests read; the subprocesses the tests start inherit this too
import os  # noqa: E402

for _name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES"):
    os.environ.pop(_name, None)
