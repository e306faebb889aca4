"""The harm martingale, its innovations and the harm information (docs/theory.md §2-3).

Written once against the engine interface (``toysim._engine``), so each function takes either the
prefix tree (:class:`toysim.Levels`) or the Markov × automaton product: ``H_t = E[h | state at t]``
is the backward pass with the expectation reduction, and ``I_t`` a per-position reduction.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float

from . import _aot
from ._engine import Step, constant_children
from ._enumerate import backward


@_aot.program()
def harm_martingale(engine, h: Float[Array, " leaves"]):
    """``H_t(y_≤t) = E_π[h(Y) | Y_≤t = y_≤t]`` for ``t = 0..T`` [Def 1].

    Args:
      engine: the policy on the prefix tree (``toysim.forward``) or on the product states.
      h: the harm of each final state (leaf harms ``(V**T,)`` on the tree).

    Returns:
      Values at ``t = 0..T``; on the tree ``T + 1`` arrays, entry ``t`` of shape ``(V**t,)``,
      ``H_0 = E[h]`` and ``H_T = h``.

    Example:
      >>> policy = TabularPolicy(2, 2)
      >>> lv = forward(policy, policy.init(jax.random.key(0)))
      >>> H = harm_martingale(lv, jnp.array([0.0, 1.0, 1.0, 1.0]))
      >>> [x.shape for x in H]
      [(1,), (2,), (4,)]
    """
    return backward(engine, h)


@_aot.program()
def innovations(martingale: tuple[Array, ...]) -> tuple[Array, ...]:
    """``Δ_t(p·v) = H_t(p·v) − H_{t−1}(p)`` for ``t = 1..T`` on the tree, each ``(V**(t-1), V)``.

    The full per-edge table exists on the tree only (the product engine reduces ``Δ_t`` per position
    without storing it). Doob decomposition [Prop 4]: ``h = H_0 + Σ_t Δ_t`` along every sequence.
    """
    out = []
    for t in range(1, len(martingale)):
        h_t, h_tm1 = martingale[t], martingale[t - 1]
        out.append(h_t.reshape(h_tm1.shape[0], -1) - h_tm1[:, None])
    return tuple(out)


def information_term(step: Step, pair: tuple | None = None) -> Array:
    """``I_t = Σ_x P_{t−1}(x) Var(H_t | x)`` at one position, from the pair ``(H_{t−1}, H_t)``.

    ``Var(H_t | x) = E[(H_t − m)² | x] − (H_{t−1}(x) − m)²`` expanded about the first child ``m``
    (the martingale property gives ``E[H_t | x] = H_{t−1}(x)``): the rounding is then
    ``ε · spread²`` of the children, not ``ε · H²``, so a variance that is tiny because the
    children nearly agree keeps its relative accuracy. States whose children share ``H`` contribute
    exactly 0, so ``I_t`` vanishes bit for bit past the horizon (docs/theory.md §5).
    """
    parent, child = step.pairs[0] if pair is None else pair
    m = child[..., :1]
    var = step.kernel.mean((child - m) ** 2) - (parent - m[..., 0]) ** 2
    mass = jnp.exp(step.log_p) * jnp.maximum(var, 0.0)
    return jnp.sum(jnp.where(constant_children(child), 0.0, mass))


@_aot.program()
def harm_information(engine, martingale) -> Float[Array, " T"]:
    """``I_t = E[Δ_t²] = E_{y<t}[Var(H_t | y_<t)]`` for ``t = 1..T`` [Def 5] (either engine).

    Returns:
      Array of shape ``(T,)``; ``Σ_t I_t = Var(h)`` [Cor 7].
    """
    info, _ = engine.positions(lambda step: (information_term(step), None), (martingale,))
    return info


@_aot.program()
def harm_variance(engine, h: Float[Array, " leaves"]) -> Array:
    """``Var(h) = E[(h − E h)²]`` under the policy, computed directly from the final states."""
    p_final = jnp.exp(engine.log_prob[-1])
    final = engine.leaf(h)
    mean = jnp.sum(p_final * final)
    return jnp.sum(p_final * (final - mean) ** 2)


class MartingaleSummary(NamedTuple):
    """Exact harm statistics of one policy.

    Attributes:
      expected_harm: ``E[h] = H_0``.
      variance: ``Var(h)``.
      information: ``I_1..I_T``.
      martingale: ``H_0..H_T`` per state.
    """

    expected_harm: Array
    variance: Array
    information: Array
    martingale: tuple[Array, ...]


@_aot.program()
def martingale_summary(engine, h: Float[Array, " leaves"]) -> MartingaleSummary:
    """``E[h]``, ``Var(h)``, ``I_t`` and ``H_t`` from one backward pass."""
    mart = harm_martingale(engine, h)
    return MartingaleSummary(
        engine.at_start(mart), harm_variance(engine, h), harm_information(engine, mart), mart
    )
