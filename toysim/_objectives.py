"""The alignment objectives (docs/theory.md §7–8): one ``E[h]``, one KL, and the objectives made of them.

* ``E_π[h] = Σ_y P(y) h(y)`` (:func:`harm_expectation`);
* ``KL(p ‖ q)`` per row with ``0 · log 0 = 0`` (:func:`xlogy_kl`), per position by the chain rule
  (:func:`kl_by_position`) and over whole sequences (:func:`sequence_kl`);
* the standard objective ``L(θ) = λ E[h] + KL(π_θ ‖ π_0)`` (:func:`alignment_loss`), the deep one
  ``L_deep`` with the recovery penalty (:func:`deep_objective`, its per-position gradients
  :func:`gradient_by_position`) and the separable tabular objective of the Gibbs form
  (:func:`separable_objective`).

Everything here is evaluated on the prefix tree: the objectives are differentiated through the
tree's levels (training, certificates), and the product engine's closed forms read their values
off the engine passes instead (``toysim._analysis``, ``toysim._dp_recovery``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from . import _aot
from ._enumerate import Levels, forward, levels_from_log_cond, log_cond_untied
from ._recovery import RecoverySpec, log_recovery_probability, recovery_penalty
from ._types import Policy, PyTree


def harm_expectation(levels: Levels, h: Float[Array, " leaves"]) -> Array:
    """``E_π[h] = Σ_y P(y) h(y)`` over the leaves of the tree."""
    return jnp.sum(jnp.exp(levels.log_prefix[-1]) * h)


def xlogy_kl(log_p: Array, log_q: Array, axis: int = -1) -> Array:
    """``KL(p ‖ q) = Σ p (log p − log q)`` along ``axis`` with the rule ``0 · log 0 = 0``."""
    p = jnp.exp(log_p)
    diff = jnp.where(p > 0, log_p - log_q, 0.0)
    return jnp.sum(p * diff, axis=axis)


@_aot.program()
def sequence_kl(p: Levels, q: Levels) -> Array:
    """``KL(P ‖ Q)`` between two policies, summed over whole sequences (reference for ``Σ D_t``)."""
    return _prefix_kl(p.log_prefix[-1], q.log_prefix[-1])


@_aot.program()
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
    The tilt's closed form clamps its per-state KL the same way (:func:`tilt_state_kl`).

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


def alignment_loss(
    policy: Policy, params: PyTree, base_levels: Levels, h: Float[Array, " leaves"], lam: float | Array
) -> Array:
    """The exact alignment objective ``L(θ) = λ E_{π_θ}[h] + KL(π_θ ‖ π_0)`` [Thm 14].

    The KL is the chain-rule sum ``Σ_t E_{p ~ π_θ}[KL(π_θ(·|p) ‖ π_0(·|p))]`` over the prefix tree
    (equal to the sequence-level KL), so the value and its gradient are exact.

    Args:
      policy: the policy object.
      params: its parameters ``θ``.
      base_levels: the reference policy on the tree, ``toysim.forward(policy0, params0)``.
      h: leaf harms ``(V**T,)``.
      lam: ``λ > 0`` (not validated here, so the function can be traced).

    Returns:
      The scalar ``L(θ)``; differentiable in ``params``.

    Example:
      >>> policy = TabularPolicy(2, 1)
      >>> base = forward(policy, (jnp.zeros((1, 2)),))
      >>> float(alignment_loss(policy, (jnp.zeros((1, 2)),), base, jnp.array([0.0, 1.0]), 2.0))
      1.0
    """
    levels = forward(policy, params)
    return lam * harm_expectation(levels, h) + jnp.sum(kl_by_position(levels, base_levels))


def standard_loss(levels: Levels, base: Levels, h: Float[Array, " leaves"], lam) -> Array:
    """``λ E[h] + KL(π ‖ π_0)`` of a policy on the tree (KL-regularised RL)."""
    return lam * harm_expectation(levels, h) + jnp.sum(kl_by_position(levels, base))


def recovery_objective(
    levels: Levels, base: Levels, h: Float[Array, " leaves"], lam, spec: RecoverySpec
) -> Array:
    """``L_deep``: :func:`standard_loss` plus the recovery penalty (docs/theory.md §8)."""
    return _objective(levels, base, h, lam, spec)


def _objective(levels: Levels, base: Levels, h: Array, lam: float, spec: RecoverySpec | None) -> Array:
    """``λ E[h] + KL(π ‖ π_0)`` (+ the recovery term when ``spec`` is given), from levels."""
    value = lam * harm_expectation(levels, h) + jnp.sum(kl_by_position(levels, base))
    return value if spec is None else value + recovery_penalty(levels, spec)


@functools.partial(jax.jit, static_argnames=("policy",))
def deep_objective(
    policy: Policy, params: PyTree, base: Levels, h: Float[Array, " leaves"], lam: float, spec: RecoverySpec
) -> Array:
    """``L_deep(θ) = λ E[h] + μ E_Q[Σ_t γ^{t−1}(1 − π_θ(R|y_<t))] + KL(π_θ ‖ π_0)`` (docs/theory.md §8).

    The KL is the sequence KL, computed by the chain rule ``Σ_t E_{p~π_θ}[KL(π_θ(·|p) ‖ π_0(·|p))]``.

    Args:
      policy: the trained policy's family.
      params: its parameters ``θ``.
      base: ``π_0`` on the tree.
      h: leaf harms ``(V**T,)``.
      lam: ``λ >= 0``.
      spec: the recovery data.

    Returns:
      The scalar objective, differentiable in ``params``.
    """
    return _objective(
        levels_from_log_cond(log_cond_untied(policy, [params] * policy.horizon)), base, h, lam, spec
    )


@functools.partial(jax.jit, static_argnames=("policy", "terms"))
def gradient_by_position(
    policy: Policy,
    params: PyTree,
    base: Levels,
    h: Float[Array, " leaves"],
    lam: float,
    spec: RecoverySpec | None,
    *,
    terms: str = "all",
) -> tuple[PyTree, ...]:
    """Per-position gradients of ``L_deep`` (or of the plain objective when ``spec`` is None).

    Untied as in :func:`toysim.untied_autodiff_gradient`: reverse-mode derivative of the objective
    with respect to each level's logits, pulled back through that level's parameterisation, so
    that the ``T`` results add up to ``∇_θ L``.

    Args:
      terms: ``"all"`` (the whole objective) or ``"recovery"`` (the recovery term alone).

    Returns:
      ``T`` pytrees shaped like ``params``.
    """
    logits = tuple(policy.logits(params, t) for t in range(policy.horizon))

    def objective(level_logits):
        lv = levels_from_log_cond(tuple(jax.nn.log_softmax(z, axis=-1) for z in level_logits))
        if terms == "recovery":
            return recovery_penalty(lv, spec)
        return _objective(lv, base, h, lam, spec)

    cotangents = jax.grad(objective)(logits)
    out = []
    for t in range(policy.horizon):
        _, vjp = jax.vjp(lambda theta, t=t: policy.logits(theta, t), params)
        out.append(vjp(cotangents[t])[0])
    return tuple(out)


def separable_objective(
    params: tuple[Array, ...], base: Levels, h: Float[Array, " leaves"], lam: float, spec: RecoverySpec
) -> Array:
    """The separable tabular objective for which the Gibbs form is exact (docs/theory.md §8, *ours*).

    ``Σ_t Σ_p Q(p) [μγ^{t−1}(1 − π(R|p)) + KL(π(·|p) ‖ π_0(·|p))] + λ E_π[h]``: prefixes are weighted
    by ``Q`` rather than by ``π``. With ``λ = 0`` the minimiser is the Gibbs form at every prefix
    with ``Q(p) > 0``; with ``λ > 0`` at every such prefix past the harm horizon (there the harm
    term's derivative with respect to the prefix's logits vanishes). At ``Q(p) = 0`` the objective
    does not depend on the prefix's logits (flat).

    Args:
      params: tabular logits, ``T`` arrays ``(V**t, V)``.
    """
    levels = levels_from_log_cond(tuple(jax.nn.log_softmax(z, axis=-1) for z in params))
    _, outside = log_recovery_probability(levels, spec.mask)
    value = lam * harm_expectation(levels, h)
    for t, (lc, blc) in enumerate(zip(levels.log_cond, base.log_cond)):
        kl = xlogy_kl(lc, blc)  # 0 · log 0 = 0 where π(v|p) underflows
        value = value + jnp.sum(spec.q_prefix[t] * (spec.discounts[t] * jnp.exp(outside[t]) + kl))
    return value


# ------------------------------------------------------------------ the methods of docs/theory.md §11


def _leaf_log_ratio(levels: Levels, base: Levels) -> Array:
    """``ρ(y) = log π(y) − log π_0(y)`` at every leaf."""
    return levels.log_prefix[-1] - base.log_prefix[-1]


def _pair_terms(levels: Levels, base: Levels, h: Array, beta_r) -> tuple[Array, Array, Array]:
    """``(π_0(y) π_0(y'), P(y ≻ y'), ρ(y) − ρ(y'))`` over all ordered pairs of leaves."""
    rho = _leaf_log_ratio(levels, base)
    p0 = jnp.exp(base.log_prefix[-1])
    weight = p0[:, None] * p0[None, :]
    prefer = jax.nn.sigmoid(beta_r * (h[None, :] - h[:, None]))  # y (row) preferred to y' (column)
    return weight, prefer, rho[:, None] - rho[None, :]


@_aot.program()
def dpo_loss(levels: Levels, base: Levels, h: Float[Array, " leaves"], beta, beta_r) -> Array:
    """The population DPO loss ``−E_{y,y'~π_0, label}[log σ(β(ρ(y_w) − ρ(y_l)))]`` (docs/theory.md §11).

    Pairs are drawn from ``π_ref ⊗ π_ref`` with ``π_ref = π_0``; the first response wins with the
    Bradley–Terry probability ``σ(β_r (h(y') − h(y)))``. Exact over all ``V^{2T}`` ordered pairs.
    """
    weight, prefer, margin = _pair_terms(levels, base, h, beta_r)
    term = prefer * jax.nn.log_sigmoid(beta * margin) + (1.0 - prefer) * jax.nn.log_sigmoid(-beta * margin)
    return -jnp.sum(weight * term)


@_aot.program()
def ipo_loss(levels: Levels, base: Levels, h: Float[Array, " leaves"], beta, beta_r) -> Array:
    """The population IPO loss ``E[(ρ(y_w) − ρ(y_l) − 1/(2β))²]`` on the pairs of :func:`dpo_loss`."""
    weight, prefer, margin = _pair_terms(levels, base, h, beta_r)
    target = 0.5 / beta
    term = prefer * (margin - target) ** 2 + (1.0 - prefer) * (margin + target) ** 2
    return jnp.sum(weight * term)


def sft_loss(levels: Levels, base: Levels, data: Float[Array, " leaves"], kl_weight) -> Array:
    """``−E_{y~D}[log π(y)] + α KL(π ‖ π_0)``: supervised fine-tuning on the distribution ``D``.

    ``D`` (``data``, one probability per leaf) is, by default, ``π_0`` conditioned on a harmless
    response; ``α = kl_weight >= 0``.
    """
    log_p = levels.log_prefix[-1]
    cross = -jnp.sum(jnp.where(data > 0, data * log_p, 0.0))
    return cross + kl_weight * jnp.sum(kl_by_position(levels, base))


def token_wise_loss(levels: Levels, base: Levels, h: Float[Array, " leaves"], lam, betas: Array) -> Array:
    """``λ E[h] + Σ_t β_t D_t``: the token-wise KL constraint (Qi et al.'s constrained objective,
    as a penalty with one weight per position; docs/theory.md §11)."""
    return lam * harm_expectation(levels, h) + jnp.sum(betas * kl_by_position(levels, base))


def augmentation_loss(
    levels: Levels, base: Levels, h: Float[Array, " leaves"], lam, spec: RecoverySpec
) -> Array:
    """``λ E[h] + KL(π ‖ π_0) + Σ_t μγ^{t−1} E_{x~Q_{t−1}}[−log π(R | x)]``: data augmentation in
    exact population form (docs/theory.md §11).

    Qi et al.'s augmentation trains by cross-entropy on recovery tokens after a harmful prefix of
    random length; its population loss is the expectation over the prefix law ``Q`` and the cut
    position, here with the recovery penalty's weights ``μγ^{t−1}`` (a uniform cut is ``γ = 1``).
    """
    return (
        lam * harm_expectation(levels, h)
        + jnp.sum(kl_by_position(levels, base))
        + augmentation_term(levels, spec)
    )


def augmentation_term(levels: Levels, spec: RecoverySpec) -> Array:
    """``Σ_t μγ^{t−1} E_{x~Q_{t−1}}[−log π(R | x)]``: the recovery part of :func:`augmentation_loss`
    (the mean of ``toysim.augmentation_samples(..., cross_entropy=True)``)."""
    inside, _ = log_recovery_probability(levels, spec.mask)
    return sum(
        spec.discounts[t] * jnp.sum(jnp.where(spec.q_prefix[t] > 0, -spec.q_prefix[t] * inside[t], 0.0))
        for t in range(levels.horizon)
    )


def per_token_penalty_gap(levels_fn, params: PyTree, base: Levels) -> tuple[PyTree, PyTree]:
    """The gradient of the sequence KL and the per-token KL penalty's update direction at ``params``.

    RL implementations often add ``Σ_t KL(π(·|y_<t) ‖ π_0(·|y_<t))`` to the loss with the prefixes
    sampled from the current policy and not differentiated: their update direction is
    ``Σ_t E_{x~π}[∇_θ KL_t(x)]``. The sequence KL's gradient adds the score term
    ``Σ_t E_{x~π}[KL_t(x) ∇_θ log P(x)]`` (docs/theory.md §11).

    Args:
      levels_fn: ``params -> Levels`` (e.g. ``lambda p: forward(policy, p)``).

    Returns:
      ``(∇ KL(π ‖ π_0), per-token direction)``, pytrees like ``params``.
    """

    def sequence(theta):
        return jnp.sum(kl_by_position(levels_fn(theta), base))

    def per_token(theta):
        levels = levels_fn(theta)
        frozen = Levels(levels.log_cond, tuple(jax.lax.stop_gradient(x) for x in levels.log_prefix))
        return jnp.sum(kl_by_position(frozen, base))

    return jax.grad(sequence)(params), jax.grad(per_token)(params)
