"""The harm martingale, its innovations and the harm information (docs/theory.md §2-3).

All quantities are reductions of the engine's two passes (``toysim._enumerate``):
``H_t = E[h | Y_≤t]`` is :func:`~toysim._enumerate.backward` applied to the harm table.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._enumerate import Levels, backward, level_weights


def harm_martingale(levels: Levels, h: Float[Array, " leaves"]) -> tuple[Array, ...]:
    """``H_t(y_≤t) = E_π[h(Y) | Y_≤t = y_≤t]`` for ``t = 0..T`` [Def 1].

    Args:
      levels: the policy on the prefix tree (``toysim.forward``).
      h: leaf harms, shape ``(V**T,)``.

    Returns:
      ``T + 1`` arrays; entry ``t`` has shape ``(V**t,)``. ``H_0 = E[h]`` and ``H_T = h``.

    Example:
      >>> policy = TabularPolicy(2, 2)
      >>> lv = forward(policy, policy.init(jax.random.key(0)))
      >>> H = harm_martingale(lv, jnp.array([0.0, 1.0, 1.0, 1.0]))
      >>> [x.shape for x in H]
      [(1,), (2,), (4,)]
    """
    return backward(levels, h)


def innovations(martingale: tuple[Array, ...]) -> tuple[Array, ...]:
    """``Δ_t(p·v) = H_t(p·v) − H_{t−1}(p)`` for ``t = 1..T``, each of shape ``(V**(t-1), V)``.

    Doob decomposition [Prop 4]: ``h = H_0 + Σ_t Δ_t`` along every sequence.
    """
    out = []
    for t in range(1, len(martingale)):
        h_t, h_tm1 = martingale[t], martingale[t - 1]
        out.append(h_t.reshape(h_tm1.shape[0], -1) - h_tm1[:, None])
    return tuple(out)


def harm_information(levels: Levels, martingale: tuple[Array, ...]) -> Float[Array, " T"]:
    """``I_t = E[Δ_t²] = E_{y<t}[Var(H_t | y_<t)]`` for ``t = 1..T`` [Def 5].

    Returns:
      Array of shape ``(T,)``; ``Σ_t I_t = Var(h)`` [Cor 7].
    """
    deltas = innovations(martingale)
    return jnp.stack([jnp.sum(level_weights(levels, t + 1) * deltas[t] ** 2) for t in range(len(deltas))])


def harm_variance(levels: Levels, h: Float[Array, " leaves"]) -> Array:
    """``Var(h) = E[(h − E h)²]`` under the policy, computed directly from the leaves."""
    p_leaf = jnp.exp(levels.log_prefix[-1])
    mean = jnp.sum(p_leaf * h)
    return jnp.sum(p_leaf * (h - mean) ** 2)


class MartingaleSummary(NamedTuple):
    """Exact harm statistics of one policy.

    Attributes:
      expected_harm: ``E[h] = H_0``.
      variance: ``Var(h)``.
      information: ``I_1..I_T``.
      martingale: ``H_0..H_T`` per prefix.
    """

    expected_harm: Array
    variance: Array
    information: Array
    martingale: tuple[Array, ...]


def martingale_summary(levels: Levels, h: Float[Array, " leaves"]) -> MartingaleSummary:
    """``E[h]``, ``Var(h)``, ``I_t`` and ``H_t`` from one backward pass."""
    mart = harm_martingale(levels, h)
    return MartingaleSummary(mart[0][0], harm_variance(levels, h), harm_information(levels, mart), mart)
