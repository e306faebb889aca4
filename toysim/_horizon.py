"""Harm horizons: where the harm is already decided (docs/theory.md §5).

A prefix ``p`` of length ``t`` is *determined* when ``h(p·c)`` is the same for every continuation
``c``. This is a property of ``h`` alone (softmax policies have full support), decided exactly by
comparing the minimum and maximum of ``h`` below ``p``. The per-sequence horizon is
``τ(y) = min{t : y_≤t determined}`` and the uniform horizon is ``k = max_y τ(y)``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._enumerate import Levels


def determined_masks(h: Float[Array, " leaves"], vocab_size: int, horizon: int) -> tuple[Array, ...]:
    """For ``t = 0..T``, which prefixes of length ``t`` determine the harm.

    Exact: ``max h == min h`` over the subtree, with no tolerance (harm values are data, not
    results of arithmetic).

    Returns:
      ``T + 1`` boolean arrays, entry ``t`` of shape ``(V**t,)``; entry ``T`` is all true.
    """
    hi, lo = h, h
    masks = [jnp.ones(h.shape, dtype=bool)]
    for _ in range(horizon):
        hi = hi.reshape(-1, vocab_size).max(axis=1)
        lo = lo.reshape(-1, vocab_size).min(axis=1)
        masks.append(hi == lo)
    return tuple(reversed(masks))


def sequence_horizon(masks: tuple[Bool[Array, ...], ...]) -> Int[Array, " leaves"]:
    """``τ(y)`` for every sequence, shape ``(V**T,)``.

    Determination is inherited by extensions, so ``τ(y)`` is the number of undetermined prefixes
    ``y_≤t`` for ``t = 0..T``.
    """
    n_leaves = masks[-1].shape[0]
    tau = jnp.zeros((n_leaves,), dtype=jnp.int32)
    for m in masks[:-1]:
        tau = tau + jnp.repeat(~m, n_leaves // m.shape[0]).astype(jnp.int32)
    return tau


def uniform_horizon(masks: tuple[Array, ...]) -> Int[Array, ""]:
    """``k = max_y τ(y)``: the first length at which every prefix is determined."""
    return jnp.argmax(jnp.stack([jnp.all(m) for m in masks]))


def horizon_distribution(levels: Levels, masks: tuple[Array, ...]) -> Float[Array, " T_plus_1"]:
    """``P(τ = t)`` for ``t = 0..T`` under the policy.

    Computed as the probability of the prefixes that are determined at length ``t`` while their
    parent is not, so every entry is a sum of non-negative terms.
    """
    out = [jnp.sum(jnp.exp(levels.log_prefix[0]) * masks[0])]
    for t in range(1, len(masks)):
        parent_open = jnp.repeat(~masks[t - 1], levels.vocab_size)
        out.append(jnp.sum(jnp.where(masks[t] & parent_open, jnp.exp(levels.log_prefix[t]), 0.0)))
    return jnp.stack(out)
