"""Root pytest configuration: float64 everywhere, toysim names for the doctests, and the executable
cache off.

Tests that call ``toysim._cli.main`` in-process would otherwise turn the executable cache
(``toysim._aot``) on for the rest of the session, and later tests that count compilations of a
``jax.jit`` function would see it bypassed. The cache has its own tests
(``tests/test_executable_cache.py``), which turn it on explicitly or clear this variable in their
subprocesses.
"""

import os

os.environ.setdefault("TOYSIM_NO_EXECUTABLE_CACHE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    import toysim

    doctest_namespace.update({name: getattr(toysim, name) for name in toysim.__all__})
    doctest_namespace.update({"jax": jax, "jnp": jnp})
