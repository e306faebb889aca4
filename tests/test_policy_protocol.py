"""The ``toysim.Policy`` interface: every family implements it, and a family written outside the
library plugs into the engine and the sampler unchanged."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toysim
from toysim._policies import generic_fisher_trace

V, T = 3, 4
FAMILIES = {
    "tabular": toysim.TabularPolicy(V, T),
    "markov1": toysim.MarkovPolicy(V, T, order=1),
    "markov2": toysim.MarkovPolicy(V, T, order=2),
    "mlp": toysim.MLPPolicy(V, T, window=2, hidden=5),
}


def _all_prefixes(t, dtype):
    """Every prefix of length ``t`` in lexicographic order (first token most significant)."""
    return np.array(list(itertools.product(range(V), repeat=t)), dtype=dtype).reshape(V**t, t)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_families_implement_the_protocol(name):
    policy = FAMILIES[name]
    assert isinstance(policy, toysim.Policy)
    assert isinstance(policy.is_lookup, bool)
    assert isinstance(policy.level_reads_own_block, bool)
    assert policy.level_reads_own_block == (name == "tabular")
    assert policy.is_lookup == (name != "mlp")
    hash(policy)  # a static argument of jax.jit


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_prefix_logits_equal_the_level_logits(name, dtype):
    policy = FAMILIES[name]
    params = policy.init(jax.random.key(4))
    for t in range(T):
        got = policy.prefix_logits(params, jnp.asarray(_all_prefixes(t, dtype)))
        assert got.shape == (V**t, V)
        np.testing.assert_array_equal(got, policy.logits(params, t))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_level_log_probs_are_the_log_softmax_of_the_logits(name):
    # a family's own log_probs (Markov: the table normalised once, then tiled) is the engine's
    # log π(·|p); it must equal log_softmax of the level logits, which prefix_logits checks above
    from toysim._enumerate import log_probs

    policy = FAMILIES[name]
    params = policy.init(jax.random.key(6))
    for t in range(T):
        want = jax.nn.log_softmax(policy.prefix_logits(params, jnp.asarray(_all_prefixes(t, np.int32))))
        np.testing.assert_allclose(log_probs(policy, params, t), want, rtol=0, atol=4e-16)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_prefix_logits_of_a_shuffled_batch(name):
    # rows follow the batch, not the lexicographic order, and repeated prefixes are allowed
    policy = FAMILIES[name]
    params = policy.init(jax.random.key(5))
    t = T - 1
    order = np.random.default_rng(0).integers(0, V**t, size=40)
    got = policy.prefix_logits(params, jnp.asarray(_all_prefixes(t, np.int32)[order]))
    np.testing.assert_array_equal(got, policy.logits(params, t)[order])


def test_objects_without_the_interface_are_not_policies():
    @dataclasses.dataclass(frozen=True)
    class NoBatch:  # everything but prefix_logits
        vocab_size: int = 2
        horizon: int = 1
        is_lookup = False
        level_reads_own_block = False

        def init(self, key):
            return jnp.zeros(2)

        def logits(self, params, t):
            return jnp.zeros((2**t, 2))

        def fisher_trace(self, params, t):
            return jnp.zeros(2**t)

    assert not isinstance(NoBatch(), toysim.Policy)
    assert not isinstance(object(), toysim.Policy)


@dataclasses.dataclass(frozen=True)
class ConstantPolicy:
    """The same logit vector ``θ`` at every prefix: ``π(y) = Π_t softmax(θ)_{y_t}``."""

    vocab_size: int
    horizon: int
    is_lookup = False
    level_reads_own_block = False

    def init(self, key):
        return jax.random.normal(key, (self.vocab_size,))

    def logits(self, params, t):
        return jnp.broadcast_to(params, (self.vocab_size**t, self.vocab_size))

    def prefix_logits(self, params, prefixes):
        return jnp.broadcast_to(params, (prefixes.shape[0], self.vocab_size))

    def fisher_trace(self, params, t):
        return generic_fisher_trace(self, params, t)


def test_a_family_written_outside_the_library_works_with_forward_and_sampling():
    policy = ConstantPolicy(V, T)
    assert isinstance(policy, toysim.Policy)
    theta = policy.init(jax.random.key(2))

    # forward: leaf log-probabilities against the product formula, computed in numpy
    p = np.exp(np.asarray(theta)) / np.sum(np.exp(np.asarray(theta)))
    leaves = _all_prefixes(T, np.int64)
    expected = np.log(np.prod(p[leaves], axis=1))
    got = np.asarray(toysim.forward(policy, theta).log_prefix[-1])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)

    # sampling: the same draws as a library family with the same logits at every prefix
    # (a first-order Markov table whose every row, the initial row included, is θ)
    markov = toysim.MarkovPolicy(V, T, order=1)
    table = toysim.MarkovParams(jnp.broadcast_to(theta, (V + 1, V)))
    key = jax.random.key(8)
    tokens, leaf = toysim.sample_sequences(policy, theta, key, 500)
    ref_tokens, ref_leaf = toysim.sample_sequences(markov, table, key, 500)
    np.testing.assert_array_equal(tokens, ref_tokens)
    np.testing.assert_array_equal(leaf, ref_leaf)
    assert tokens.shape == (500, T)
    np.testing.assert_array_equal(leaf, np.asarray(tokens) @ (V ** np.arange(T - 1, -1, -1)))

    # the jitted REINFORCE estimator takes it as a static argument too
    h = jnp.asarray(toysim.harm_values(toysim.deadline_harm(V, [1], 2), V, T))
    grads = toysim.reinforce_gradients(policy, theta, h, key, 50)
    ref = toysim.reinforce_gradients(markov, table, h, key, 50)
    assert len(grads) == T
    for g, r in zip(grads, ref):
        # θ is every row of the table: its gradient is the sum of the rows' gradients
        np.testing.assert_allclose(g, r.logits.sum(axis=0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_small_levels_index_with_numpy_to_the_same_bits(name, monkeypatch):
    # levels of at most _SMALL_LEVEL prefixes build their index arrays (and the MLP its features)
    # with numpy, larger ones inside the program: both must give the same logits, bit for bit
    from toysim import _policies

    policy = FAMILIES[name]
    params = policy.init(jax.random.key(7))
    small = [np.asarray(policy.logits(params, t)) for t in range(T)]
    monkeypatch.setattr(_policies, "_SMALL_LEVEL", 0)
    jax.clear_caches()  # logits is a compiled program (toysim._aot.program): trace it again
    try:
        for t in range(T):
            np.testing.assert_array_equal(small[t], policy.logits(params, t))
            np.testing.assert_array_equal(small[t], jax.jit(policy.logits, static_argnums=1)(params, t))
    finally:
        monkeypatch.undo()
        jax.clear_caches()
