"""Root pytest configuration: float64 everywhere and toysim names for the doctests."""

import jax
import jax.numpy as jnp
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    import toysim

    doctest_namespace.update({name: getattr(toysim, name) for name in toysim.__all__})
    doctest_namespace.update({"jax": jax, "jnp": jnp})
