"""The one place tolerances live, with the reason for each.

* ``IDENTITY`` -- an algebraic identity evaluated in float64 on values of order one: a few dozen
  roundings of relative size 1.1e-16 each, so 1e-10 leaves four orders of magnitude of margin and
  still fails on any real error.
* ``FINITE_DIFFERENCE`` -- a central difference with step 1e-5 has truncation error ~ step² · f'''
  ~ 1e-10 and rounding error ~ 1e-16 / step ~ 1e-11; 1e-7 covers both with margin.
"""

import numpy as np

IDENTITY = 1e-10
FINITE_DIFFERENCE = 1e-7
FD_STEP = 1e-5


def assert_close(actual, expected, atol=IDENTITY, what=""):
    """Element-wise ``|actual − expected| <= atol`` with a message naming the quantity."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = np.max(np.abs(actual - expected), initial=0.0)
    assert err <= atol, f"{what}: max abs error {err:.3e} > {atol:.1e}"
