"""The equilibrium of KL-regularised alignment in closed form (docs/theory.md §7).

The minimiser over all policies of ``L(π) = λ E_π[h] + KL(π ‖ π_0)`` is the tilt
``π*(y) ∝ π_0(y) e^{−λ h(y)}``. Per token, ``π*(v | p) = π_0(v | p) Z_t(p·v) / Z_{t−1}(p)`` with
``Z_t = E_{π_0}[e^{−λh} | y_≤t]``, computed in log space by the engine's backward pass.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._enumerate import Levels, levels_from_log_cond, log_backward, xlogy_kl


class Equilibrium(NamedTuple):
    """The tilted policy on the prefix tree.

    Attributes:
      levels: ``π*`` laid out like :class:`~toysim.Levels`.
      log_partition: ``log Z_t`` for ``t = 0..T`` per prefix (``log Z_T = −λ h``).
      kl_by_position: ``D_1..D_T``, ``D_t = E_{p ~ π*}[KL(π*(·|p) ‖ π_0(·|p))]`` over prefixes of
        length ``t − 1``.
      prefix_kl: ``T`` arrays, the conditional KL at every prefix of length ``t − 1``.
    """

    levels: Levels
    log_partition: tuple[Array, ...]
    kl_by_position: Array
    prefix_kl: tuple[Array, ...]


def tilt(base: Levels, h: Float[Array, " leaves"], lam: float) -> Equilibrium:
    """The equilibrium ``π* ∝ π_0 e^{−λh}`` and its per-position KL to ``π_0`` [Thm 14].

    Args:
      base: the reference policy ``π_0`` on the tree (``toysim.forward``).
      h: leaf harms ``(V**T,)``.
      lam: ``λ > 0``.

    Returns:
      :class:`Equilibrium`; ``Σ_t D_t = KL(π* ‖ π_0) = −λ E_{π*}[h] − log Z_0``.

    Example:
      >>> policy = TabularPolicy(2, 1)
      >>> eq = tilt(forward(policy, (jnp.zeros((1, 2)),)), jnp.array([0.0, 1.0]), 1.0)
      >>> round(float(jnp.exp(eq.levels.log_cond[0][0, 1])), 6)  # e^-1 / (1 + e^-1)
      0.268941
    """
    log_z = log_backward(base, -lam * h)
    log_cond = []
    for t, lc in enumerate(base.log_cond):
        # Parenthesised so that a prefix whose children share Z keeps log π* == log π_0 exactly.
        log_cond.append(lc + (log_z[t + 1].reshape(lc.shape) - log_z[t][:, None]))
    star = levels_from_log_cond(log_cond)
    prefix_kl = tuple(_prefix_kl(s, b) for s, b in zip(star.log_cond, base.log_cond))
    return Equilibrium(star, log_z, _average_over_prefixes(star, prefix_kl), prefix_kl)


def sequence_kl(p: Levels, q: Levels) -> Array:
    """``KL(P ‖ Q)`` between two policies, summed over whole sequences (reference for ``Σ D_t``)."""
    return _prefix_kl(p.log_prefix[-1], q.log_prefix[-1])


def kl_by_position(p: Levels, q: Levels) -> Float[Array, " T"]:
    """Per-position KL ``E_{p ~ P}[KL(P(·|p) ‖ Q(·|p))]`` for ``t = 1..T`` (chain rule of KL)."""
    prefix_kl = [_prefix_kl(lp, lq) for lp, lq in zip(p.log_cond, q.log_cond)]
    return _average_over_prefixes(p, prefix_kl)


def _prefix_kl(log_p: Array, log_q: Array) -> Array:
    """``KL(p ‖ q) ≥ 0`` of each row: :func:`xlogy_kl`, its rounding below zero clamped to 0.

    The only place the enumeration engine computes a KL per prefix (every ``D_t``, the sequence
    KL). A KL is never negative, but ``Σ p (log p − log q)`` of two nearly equal distributions
    sums terms of both signs and can round to about −1e-16 (λ = 1e-12 gave ``D_1 = −8e-17``); the
    true value is then below the rounding (``≈ λ² Var/2``), so 0 is the closest float64 answer.
    The DP engine clamps its per-state KL the same way (``toysim/_dp.py``, ``_position_terms``).

    The clamp corrects the *value* only: derivatives are those of the unclamped sum (a
    straight-through correction). The training objective ``λ E[h] + KL`` is differentiated through
    this function; a plain ``maximum`` would zero the gradient and the Hessian of every prefix whose
    KL rounds below 0 (all of them at ``π = π_0``), and the certificate would then see a flat or
    negative curvature where the true objective is strictly convex (seen: figure 4's MLP run, not
    certified, ``μ_min = −6e-8``).
    """
    kl = xlogy_kl(log_p, log_q)
    return kl + jax.lax.stop_gradient(jnp.maximum(kl, 0.0) - kl)


def _average_over_prefixes(p: Levels, per_prefix) -> Float[Array, " T"]:
    """``E_{prefix ~ P}[f_t(prefix)]`` for per-prefix values at lengths ``0..T−1``."""
    return jnp.stack([jnp.sum(jnp.exp(p.log_prefix[t]) * f) for t, f in enumerate(per_prefix)])
