"""Hypothesis strategies for random small instances, shared by every check and test.

Shapes are drawn from a small set (``V ∈ {2, 3}``, ``T ∈ {1, 2, 3}``) so that each jitted
function compiles a bounded number of times; all randomness inside an instance comes from a JAX
key seeded by a drawn integer, so hypothesis can replay and shrink it.
"""

from __future__ import annotations

import jax
import numpy as np
from hypothesis import strategies as st

from toysim import (
    Instance,
    MarkovPolicy,
    MLPPolicy,
    TabularPolicy,
    automaton_harm,
    deadline_harm,
    first_decisive_harm,
    graded_harm,
    harm_values,
    table_harm,
    trigger_harm,
)

POLICY_KINDS = ("tabular", "markov1", "markov2", "mlp")
HARM_KINDS = ("table", "binary_table", "deadline", "first_decisive", "trigger", "graded", "automaton")
BINARY_HARM_KINDS = ("binary_table", "deadline", "first_decisive", "trigger")


def make_policy(kind: str, vocab_size: int, horizon: int):
    """The policy object of a kind name in :data:`POLICY_KINDS`."""
    if kind == "tabular":
        return TabularPolicy(vocab_size, horizon)
    if kind == "markov1":
        return MarkovPolicy(vocab_size, horizon, order=1)
    if kind == "markov2":
        return MarkovPolicy(vocab_size, horizon, order=2)
    if kind == "mlp":
        return MLPPolicy(vocab_size, horizon, window=1, hidden=4)
    raise ValueError(f"unknown policy kind {kind!r}")


@st.composite
def harms(draw, vocab_size: int, horizon: int, kinds=HARM_KINDS):
    """A harm of a drawn family over ``V**T`` sequences."""
    kind = draw(st.sampled_from(kinds))
    tokens = st.lists(st.integers(0, vocab_size - 1), min_size=1, max_size=vocab_size - 1, unique=True)
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    n = vocab_size**horizon
    if kind == "table":
        return table_harm(rng.uniform(size=n), vocab_size, horizon)
    if kind == "binary_table":
        return table_harm(
            (rng.uniform(size=n) < draw(st.floats(0.1, 0.9))).astype(float), vocab_size, horizon
        )
    if kind == "deadline":
        return deadline_harm(vocab_size, draw(tokens), draw(st.integers(1, horizon)))
    if kind == "first_decisive":
        comply = draw(st.integers(0, vocab_size - 1))
        refuse = draw(st.integers(0, vocab_size - 1).filter(lambda r: r != comply))
        return first_decisive_harm(vocab_size, [comply], [refuse], draw(st.sampled_from([0.0, 1.0])))
    if kind == "trigger":
        return trigger_harm(vocab_size, draw(tokens))
    if kind == "graded":
        return graded_harm(vocab_size, horizon, draw(tokens))
    n_states = draw(st.integers(1, 4))
    trans = rng.integers(0, n_states, size=(n_states, vocab_size))
    final = rng.integers(0, 3, size=n_states) / 2.0
    return automaton_harm(0, trans, final, vocab_size)


@st.composite
def instances(draw, policy_kinds=POLICY_KINDS, harm_kinds=HARM_KINDS, max_horizon: int = 3):
    """A random :class:`toysim.Instance` (float64 parameters)."""
    vocab_size = draw(st.integers(2, 3))
    horizon = draw(st.integers(1, max_horizon))
    policy = make_policy(draw(st.sampled_from(policy_kinds)), vocab_size, horizon)
    scale = draw(st.sampled_from([0.3, 1.0, 3.0]))
    params = policy.init(jax.random.key(draw(st.integers(0, 2**31 - 1))), scale=scale)
    harm = draw(harms(vocab_size, horizon, harm_kinds))
    lam = draw(st.sampled_from([0.1, 1.0, 4.0]))
    return Instance(policy, params, harm, lam)


AUTOMATON_HARM_KINDS = ("deadline", "first_decisive", "trigger", "graded", "automaton")


def pad_automaton(harm, vocab_size: int, n_states: int, seed: int):
    """The same DFA with unreachable states appended up to ``n_states`` (random transitions and
    harms), so that every drawn automaton has one shape and the DP engine compiles once per ``V``.

    Unreachable states change no quantity: they are never entered from the start state.
    """
    n = harm.transitions.shape[0]
    if n >= n_states:
        return harm
    rng = np.random.default_rng(seed)
    extra = rng.integers(0, n_states, size=(n_states - n, vocab_size))
    trans = np.concatenate([harm.transitions, extra])
    final = np.concatenate([harm.final_harm, rng.integers(0, 3, size=n_states - n) / 2.0])
    return automaton_harm(harm.start, trans, final, vocab_size)


@st.composite
def markov_automaton_instances(
    draw, horizon: int, n_states: int = 6, kinds=AUTOMATON_HARM_KINDS, vocab_sizes=(2, 3)
):
    """A first-order Markov policy with an automaton harm padded to ``n_states`` states: the inputs
    of the DP engine. ``V`` from ``vocab_sizes``, ``T`` fixed by the caller (one compiled shape per
    ``V``); the harm families are drawn as for ``T <= 3``.

    Families whose automaton has more than ``n_states`` states at this horizon are redrawn.
    """
    vocab_size = draw(st.sampled_from(vocab_sizes))
    policy = MarkovPolicy(vocab_size, horizon, order=1)
    scale = draw(st.sampled_from([0.3, 1.0, 3.0]))
    params = policy.init(jax.random.key(draw(st.integers(0, 2**31 - 1))), scale=scale)
    harm = draw(
        harms(vocab_size, min(horizon, 3), kinds).filter(lambda h: h.transitions.shape[0] <= n_states)
    )
    harm = pad_automaton(harm, vocab_size, n_states, draw(st.integers(0, 2**31 - 1)))
    lam = draw(st.sampled_from([0.1, 1.0, 4.0]))
    return Instance(policy, params, harm, lam)


@st.composite
def small_instances(
    draw,
    policy_kinds=POLICY_KINDS,
    harm_kinds=HARM_KINDS,
    vocab_size: int = 2,
    horizons=(2, 3),
    scales=(0.3, 1.0),
    lams=(0.5, 1.0, 4.0),
):
    """Like :func:`instances` with ``V`` and the horizons pinned, so that checks that train or
    sweep λ (docs/theory.md §7) compile once per shape."""
    horizon = draw(st.sampled_from(horizons))
    policy = make_policy(draw(st.sampled_from(policy_kinds)), vocab_size, horizon)
    params = policy.init(jax.random.key(draw(st.integers(0, 2**31 - 1))), scale=draw(st.sampled_from(scales)))
    harm = draw(harms(vocab_size, horizon, harm_kinds))
    return Instance(policy, params, harm, draw(st.sampled_from(lams)))


@st.composite
def early_horizon_instances(draw, policy_kinds=POLICY_KINDS, horizons=(2, 3)):
    """Instances whose harm is decided before the end, so that statements about the positions past
    the uniform horizon ``k`` have positions to speak about (``k < T`` in most draws).

    ``T`` from ``horizons`` (``V ∈ {2, 3}``, the shapes of :func:`instances`). The harm is, by a
    drawn integer ``0..19``:

    * ``0..11`` -- a harm of a drawn family over the first ``m < T`` tokens, ignoring the rest
      (``h(y) = f(y_≤m)``, a table): ``k ≤ m < T``;
    * ``12..14`` -- a deadline harm with deadline ``< T`` (an automaton): ``k ≤ deadline < T``;
    * ``15..16`` -- a table ``g(y_≤m)`` with values in ``{0, ½, 1}`` for a drawn ``m ∈ 0..T`` (ties
      that lower the horizon below ``m``, and ``m = T``);
    * ``17..19`` -- a harm of a drawn family over all ``T`` tokens (``k = T`` mostly): the
      statements must also hold when nothing lies past the horizon.
    """
    vocab_size = draw(st.integers(2, 3))
    horizon = draw(st.sampled_from(horizons))
    policy = make_policy(draw(st.sampled_from(policy_kinds)), vocab_size, horizon)
    scale = draw(st.sampled_from([0.3, 1.0, 3.0]))
    params = policy.init(jax.random.key(draw(st.integers(0, 2**31 - 1))), scale=scale)
    lam = draw(st.sampled_from([0.1, 1.0, 4.0]))
    mode = draw(st.integers(0, 19))
    if mode <= 11:
        m = draw(st.integers(1, horizon - 1))
        head = harm_values(draw(harms(vocab_size, m)), vocab_size, m)
        harm = table_harm(np.repeat(head, vocab_size ** (horizon - m)), vocab_size, horizon)
    elif mode <= 14:
        tokens = draw(
            st.lists(st.integers(0, vocab_size - 1), min_size=1, max_size=vocab_size - 1, unique=True)
        )
        harm = deadline_harm(vocab_size, tokens, draw(st.integers(1, horizon - 1)))
    elif mode <= 16:
        m = draw(st.integers(0, horizon))
        rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
        g = rng.integers(0, 3, size=vocab_size**m) / 2.0
        harm = table_harm(np.repeat(g, vocab_size ** (horizon - m)), vocab_size, horizon)
    else:
        harm = draw(harms(vocab_size, horizon))
    return Instance(policy, params, harm, lam)


# The inputs of every check about the horizon (horizon_equivalence, zero_gradient, zero_kl): one
# name, so that those pages cannot drift apart and none of them imports another.
horizon_instances = early_horizon_instances
