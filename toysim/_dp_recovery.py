"""Recovery penalties on the automaton DP engine (docs/theory.md §8-9 at long horizons).

The recovery quantities are written once, for both engines, in ``toysim._recovery`` (``Q``
marginals, the penalty, its per-position gradient in closed form, ``p_min``, the attack curves of
the base, standard-aligned and Gibbs-form policies). Here they run on the
:class:`~toysim._dp.ProductEngine` of a first-order Markov ``π_0``, at cost ``O(T (V + 1) S V)``
and memory linear in ``T``, together with the product's autodiff reference for the recovery term:
position ``t``'s term ``μγ^{t−1} Σ_c q_{t−1}(c) π_θt(R^c | c)`` is linear in its weights, so its
untied reverse-mode gradient is the row Jacobian of ``π(R^c | c)`` (:func:`_recovery_jacobian`)
scaled by ``μγ^{t−1} q_{t−1}(c)``, and the ``Q``-weighting itself is checked by ``jax.grad`` of the
whole penalty through the shared logits.

Two families of ``Q`` have exact state marginals: ``π_0`` conditioned on harm
(:func:`toysim._recovery.harmful_log_marginals`) and another (e.g. jailbroken) first-order Markov
policy (its forward pass). The Gibbs-form policy is the exact optimum of the separable objective
with ``λ = 0``, and its recovery probabilities are exact for any ``λ`` past the harm horizon
(docs/theory.md §8). The trained joint optimum of :func:`toysim.deep_report` is not computed here:
it would need an optimiser over the ``(V + 1) V`` logits per position, not a closed form.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._analysis import backward_stage
from ._dp import Automaton, ProductEngine
from ._engine import MarkovKernel
from ._gradient import covariance_cotangent
from ._horizon import uniform_horizon
from ._recovery import (
    attack_curves,
    harmful_log_marginals,
    log_recovery,
    min_log_recovery,
    penalty,
    recovery_cotangent,
)


def _recovery_jacobian(logits: Array, mask: Array) -> Array:
    """``∂π(R^c | c)/∂θ_c`` for every row ``c`` by reverse mode, ``(V + 1, V)`` (the reference).

    ``π(R^c | c)`` depends only on row ``c`` of the logits, so one vector–Jacobian product with
    the all-ones cotangent returns every row's gradient at once.
    """

    def outside(theta):
        log_pi = jax.nn.log_softmax(theta, axis=-1)
        return jnp.exp(log_recovery(MarkovKernel(jnp.exp(log_pi), log_pi), mask)[1][:, 0])

    _, vjp = jax.vjp(outside, logits)
    return vjp(jnp.ones(logits.shape[0], logits.dtype))[0]


class DPRecoveryGradients(NamedTuple):
    """Per-position gradient norms at ``θ_0`` (all ``(T,)``) and the autodiff agreement.

    Attributes:
      plain_harm: ``‖λ G_t‖`` (the standard objective's harm term, covariance form).
      recovery_closed_form: ``‖G̃_t‖``, ``G̃_t = −μγ^{t−1} E_Q[∇π(R | y_<t)]``.
      recovery_autodiff: ``‖∂P/∂θ_t‖`` of the penalty ``P`` untied per position, by reverse mode.
      deep: ``‖λ G_t + G̃_t‖``, the deep objective's gradient at ``θ_0``.
      recovery_autodiff_max_abs_error: the largest entry of ``|G̃_t − ∂P/∂θ_t|`` over positions,
        and of ``|Σ_t G̃_t − ∇_θ P|`` with ``∇_θ P`` by reverse mode through the shared logits.
    """

    plain_harm: Array
    recovery_closed_form: Array
    recovery_autodiff: Array
    deep: Array
    recovery_autodiff_max_abs_error: Array


class DPAttack(NamedTuple):
    """Prefilling-attack success at depth ``k = 0..T−1`` (each ``(T,)``) [docs/theory.md §9]."""

    base: Array
    standard: Array
    gibbs: Array


class DPDeep(NamedTuple):
    """Everything :func:`dp_deep_report` reads, from one compiled program.

    Attributes:
      log_q: ``log Q_t(c, s)``, ``(T, V + 1, S)``.
      penalty: the recovery term at ``θ_0``.
      gradients: :class:`DPRecoveryGradients`.
      attack: :class:`DPAttack`.
      q_mass: ``E_0[h]`` for ``Q`` = harmful (must be > 0), else 1.
      uniform_horizon: ``k`` (docs/theory.md §5).
      log_p_min: ``log min_x π_0(R | x)`` over the states that occur before ``T``.
      lowest_logit_by_position: ``min logit π_0(R | x)`` over the states ``Q`` reaches at each
        position (``+inf`` where it reaches none).
    """

    log_q: Array
    penalty: Array
    gradients: DPRecoveryGradients
    attack: DPAttack
    q_mass: Array
    uniform_horizon: Array
    log_p_min: Array
    lowest_logit_by_position: Array


def _norm(x: Array) -> Array:
    return jnp.sqrt(jnp.sum(x**2))


@functools.partial(jax.jit, static_argnames=("horizon",))
def dp_deep_arrays(
    logits: Float[Array, "V1 V"],
    aut: Automaton,
    lam,
    mask: Array,
    discounts: Array,
    horizon: int,
    q_logits: Array | None = None,
) -> DPDeep:
    """The recovery quantities of docs/theory.md §8-9 in one pass over ``H``, ``log P`` and ``log Z``.

    Args:
      logits: ``π_0``'s ``(V + 1, V)`` logit table.
      aut: the harm automaton.
      lam: ``λ`` of the standard objective and its tilt.
      mask: ``(V,)`` recovery tokens.
      discounts: ``μγ^{t−1}``, ``(T,)``.
      horizon: ``T`` (static).
      q_logits: ``None`` for ``Q = π_0`` conditioned on harm, else the logit table of the
        first-order Markov policy that gives ``Q``.
    """
    engine = ProductEngine.markov(logits, aut, horizon)
    mart, log_z, det = backward_stage(engine, aut.final_harm, lam)
    if q_logits is None:
        log_q, mass = harmful_log_marginals(engine, mart)
    else:
        mass = jnp.ones(())
        log_q = ProductEngine.markov(q_logits, aut, horizon).log_prob[:-1]
    jac = _recovery_jacobian(logits, mask)  # ∂π(R^c | c)/∂θ_c by reverse mode

    def terms(step):
        g = lam * covariance_cotangent(step)
        r = recovery_cotangent(step, mask)
        q_log, discount = step.extra
        untied = (discount * jnp.sum(jnp.exp(q_log), axis=-1))[:, None] * jac
        inside, outside = log_recovery(step.kernel, mask)
        logit = jnp.broadcast_to(inside - outside, q_log.shape)
        lowest = jnp.min(jnp.where(jnp.isfinite(q_log), logit, jnp.inf))
        outs = (_norm(g), _norm(r), _norm(untied), _norm(g + r), jnp.max(jnp.abs(r - untied)), lowest)
        return outs, r

    outs, total = engine.positions(terms, (mart,), (log_q, discounts))
    plain, closed, auto, deep, errs, lowest = outs
    shared = jax.grad(
        lambda theta: penalty(ProductEngine.markov(theta, aut, horizon), mask, log_q, discounts)
    )(logits)
    error = jnp.maximum(jnp.max(errs), jnp.max(jnp.abs(total - shared)))
    curves = attack_curves(engine, mask, log_q, log_z=log_z, discounts=discounts)
    return DPDeep(
        log_q=log_q,
        penalty=penalty(engine, mask, log_q, discounts),
        gradients=DPRecoveryGradients(plain, closed, auto, deep, error),
        attack=DPAttack(curves["policy"], curves["standard"], curves["gibbs"]),
        q_mass=mass,
        uniform_horizon=uniform_horizon(det, engine),
        log_p_min=min_log_recovery(engine, mask),
        lowest_logit_by_position=lowest,
    )


# ---------------------------------------------------------------------------------------------
# The report.
