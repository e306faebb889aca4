"""Harm horizons: where the harm is already decided (docs/theory.md §5).

A state ``x`` at position ``t`` is *determined* when the final harm is the same for every
continuation: ``min == max`` of the harms reachable below ``x``, two backward recursions of the
engine (:func:`toysim._engine.minimum`, :func:`toysim._engine.maximum`), exact (harm values are
data, not results of arithmetic). On the product engine this depends on the remaining length, not
only on the automaton state. This is a property of ``h`` alone (softmax policies have full support).
The per-sequence horizon is ``τ(y) = min{t : y_≤t determined}`` and the uniform horizon is
``k = max_y τ(y)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from . import _aot
from ._engine import Step, maximum, minimum
from ._enumerate import Levels


@_aot.program()
def determined(engine, final: Array):
    """Which states determine the harm, at every position ``t = 0..T`` (either engine).

    Args:
      engine: the tree (:class:`toysim.Levels`, or ``Levels.structure(V, T)``) or the product.
      final: the harm of each final state (``(V**T,)`` leaves on the tree).
    """
    leaf = engine.leaf(final)
    lo, hi = engine.backward((leaf, leaf), (minimum, maximum))
    return jax.tree_util.tree_map(jnp.equal, lo, hi)


@_aot.program(static_argnames=("vocab_size", "horizon"))
def determined_masks(h: Float[Array, " leaves"], vocab_size: int, horizon: int) -> tuple[Array, ...]:
    """For ``t = 0..T``, which prefixes of length ``t`` determine the harm (the tree's
    :func:`determined`, from ``h`` alone).

    Returns:
      ``T + 1`` boolean arrays, entry ``t`` of shape ``(V**t,)``; entry ``T`` is all true.
    """
    return determined(Levels.structure(vocab_size, horizon), h)


@_aot.program()
def sequence_horizon(masks: tuple[Bool[Array, ...], ...]) -> Int[Array, " leaves"]:
    """``τ(y)`` for every sequence, shape ``(V**T,)`` (the tree only: one entry per sequence).

    Determination is inherited by extensions, so ``τ(y)`` is the number of undetermined prefixes
    ``y_≤t`` for ``t = 0..T``.
    """
    n_leaves = masks[-1].shape[0]
    tau = jnp.zeros((n_leaves,), dtype=jnp.int32)
    for m in masks[:-1]:
        tau = tau + jnp.repeat(~m, n_leaves // m.shape[0]).astype(jnp.int32)
    return tau


@_aot.program()
def uniform_horizon(masks, engine=None) -> Int[Array, ""]:
    """``k = max_y τ(y)``: the first position at which every reachable state is determined.

    Args:
      masks: :func:`determined`.
      engine: the engine the masks belong to, whose ``reachable()`` states count and whose
        ``sum_states`` counts them per position (default: every state of a sequence of
        per-position arrays, as on the tree).
    """
    if engine is None:
        undetermined = jnp.stack([jnp.sum(~m) for m in masks])
    else:
        open_states = jax.tree_util.tree_map(
            lambda m, r: (~m & r).astype(jnp.int32), masks, engine.reachable()
        )
        undetermined = engine.sum_states(open_states)
    return jnp.argmax(undetermined == 0)


def horizon_term(step: Step, pair: tuple | None = None) -> Array:
    """``P(τ = t)``: mass of the edges from an undetermined state into a determined one."""
    det_parent, det_child = step.pairs[0] if pair is None else pair
    # the parent's flag is constant over the next token, so it weights the parent (and the product
    # engine's children stay (S, V), never broadcast to (V + 1, S, V))
    open_mass = jnp.where(det_parent, 0.0, jnp.exp(step.log_p))
    return jnp.sum(open_mass * step.kernel.mean(det_child.astype(step.log_p.dtype)))


@_aot.program()
def horizon_distribution(engine, masks) -> Float[Array, " T_plus_1"]:
    """``P(τ = t)`` for ``t = 0..T`` under the policy (either engine).

    Computed as the probability of the states that are determined at position ``t`` while their
    parent is not, so every entry is a sum of non-negative terms.
    """
    first = jnp.where(engine.at_start(masks), 1.0, 0.0)
    by_position, _ = engine.positions(lambda step: (horizon_term(step), None), (masks,))
    return jnp.concatenate([first[None], by_position])
