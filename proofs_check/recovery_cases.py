"""Inputs for the recovery and prefilling checks, with a uniform horizon ``k < T`` in most draws.

Shared by recovery_gradient.py, augmentation.py, gibbs_form.py (through
:mod:`proofs_check.deep_cases`) and tests/test_recovery.py: :func:`shallow_harms` (the harms) and
:func:`recovery_cases` (whole ``(Instance, R, μ, γ)`` inputs of a few fixed shapes) live here, not
in a check page, so that no check page imports another.

The recovery checks test positions past the horizon ``k`` (where the plain gradient vanishes and
only the recovery term acts, where the standard-aligned policy equals ``π_0``). With the shared
strategy (:func:`proofs_check.strategies.harms`) ``k = T`` in most inputs, which leaves those
positions empty: the evidence is vacuous. Here four draws in five come from families with
``k < T`` by construction:

* ``deadline``: harmful iff a harmful token occurs within the first ``d < T`` positions (``k = d``);
* ``prefix_table``: a random binary table of the first ``d < T`` tokens (``k ≤ d``; not an
  automaton, for the enumeration engine only);
* ``decisive``: first-decisive harm whose comply and refuse sets cover the vocabulary, so the first
  token decides (``k = 1``);

and one in five from the shared binary families (``k = T`` possible), so that the general case
stays covered. ``T = 1`` has no ``k < T`` family but ``k = 0``; those draws fall back to the
shared families.
"""

from __future__ import annotations

import jax
import numpy as np
from hypothesis import strategies as st

import toysim
from toysim import deadline_harm, first_decisive_harm, table_harm

from .strategies import BINARY_HARM_KINDS, harms, make_policy

SHALLOW_KINDS = ("deadline", "prefix_table", "decisive")
AUTOMATON_SHALLOW_KINDS = ("deadline", "decisive")


@st.composite
def shallow_harms(draw, vocab_size: int, horizon: int, kinds=SHALLOW_KINDS):
    """A binary harm, from a ``k < T`` family (``kinds``) four times in five."""
    if horizon < 2 or draw(st.integers(0, 4)) == 0:
        automaton_only = "prefix_table" not in kinds
        shared = tuple(k for k in BINARY_HARM_KINDS if not (automaton_only and k == "binary_table"))
        return draw(harms(vocab_size, horizon, shared))
    kind = draw(st.sampled_from(kinds))
    depth = draw(st.integers(1, horizon - 1))
    if kind == "deadline":
        tokens = draw(
            st.lists(st.integers(0, vocab_size - 1), min_size=1, max_size=vocab_size - 1, unique=True)
        )
        return deadline_harm(vocab_size, tokens, depth)
    if kind == "decisive":
        order = draw(st.permutations(list(range(vocab_size))))
        split = draw(st.integers(1, vocab_size - 1))
        return first_decisive_harm(vocab_size, order[:split], order[split:], 0.0)
    # prefix_table: g(y_≤d), one random bit per prefix of length d, at least one harmful
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    bits = (rng.uniform(size=vocab_size**depth) < draw(st.floats(0.2, 0.8))).astype(float)
    bits[rng.integers(0, bits.size)] = 1.0
    return table_harm(np.repeat(bits, vocab_size ** (horizon - depth)), vocab_size, horizon)


# A few fixed shapes (policy kind, V, T): every new shape costs seconds of XLA compilation. The
# first-order Markov shape is listed twice, so that half the inputs also exercise the DP engine.
RECOVERY_SHAPES = (("tabular", 2, 3), ("markov1", 3, 3), ("markov1", 3, 3), ("markov2", 2, 3))


@st.composite
def recovery_cases(draw, shapes=RECOVERY_SHAPES):
    """``(Instance, R, μ, γ)`` with a binary harm of positive mean under ``π_0`` (first-order
    Markov policies get automaton harms, so that the DP engine applies)."""
    kind, v, T = draw(st.sampled_from(shapes))
    policy = make_policy(kind, v, T)
    params = policy.init(
        jax.random.key(draw(st.integers(0, 2**31 - 1))), scale=draw(st.sampled_from([0.3, 1.0, 3.0]))
    )
    kinds = AUTOMATON_SHALLOW_KINDS if kind == "markov1" else SHALLOW_KINDS
    harm = draw(shallow_harms(v, T, kinds).filter(lambda hm: bool(np.any(toysim.harm_values(hm, v, T) > 0))))
    inst = toysim.Instance(policy, params, harm, draw(st.sampled_from([0.1, 1.0, 4.0])))
    recovery = draw(st.lists(st.integers(0, v - 1), min_size=1, max_size=v - 1, unique=True))
    return inst, recovery, draw(st.sampled_from([0.5, 2.0])), draw(st.sampled_from([0.5, 0.9, 1.0]))
