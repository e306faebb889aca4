"""Root pytest configuration: float64 everywhere, toysim names for the doctests, the executable
cache off, and each module's compiled programs released when it ends.

Tests that call ``toysim._cli.main`` in-process would otherwise turn the executable cache
(``toysim._aot``) on for the rest of the session, and later tests that count compilations of a
``jax.jit`` function would see it bypassed. The cache has its own tests
(``tests/test_executable_cache.py``), which turn it on explicitly or clear this variable in their
subprocesses.
"""

import gc
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


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Free every compiled program when a test module ends (``jax.clear_caches``).

    The whole suite runs in one process, and each executable XLA keeps holds memory mappings for
    its code. Kept to the end they reached the kernel's limit per process (``vm.max_map_count``,
    65,530; measured 65,515 mappings after the last test module), so that LLVM could no longer
    allocate and the process crashed in the doctests. Released per module they stay under 1,000;
    a program that several modules use is compiled (or read from the compilation cache) again,
    and the suite was no slower (6 min 19 s against 6 min 38 s).
    """
    yield
    jax.clear_caches()
    gc.collect()
