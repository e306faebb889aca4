"""Exact KL-regularised alignment training (docs/theory.md §7).

The objective ``L(θ) = λ E_{π_θ}[h] + KL(π_θ ‖ π_0)`` is computed exactly from the engine's forward
pass (``toysim._objectives``). :func:`train_alignment` minimises it over a policy family,
:func:`train_deep` minimises the deep objective ``L_deep`` (or the separable one) over tabular
policies, both with the one driver (:func:`toysim._optimize.minimize`), so a run is deterministic
and carries its convergence certificate.

Over all policies the minimiser is the tilt ``π* ∝ π_0 e^{−λh}`` and ``L(π) = KL(π ‖ π*) − log Z_0``
exactly, so for a tabular policy the distance to the equilibrium can be read off the loss. For
tied parameters (Markov, neural) the minimiser inside the family can move the policy at prefixes
whose harm is already determined ("spillover", App. A); :func:`spillover_by_position` measures it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._enumerate import Levels, forward, levels_from_log_cond
from ._equilibrium import tilt
from ._gradient import covariance_gradient, tree_sq_norm
from ._horizon import determined_masks
from ._martingale import harm_martingale
from ._objectives import (
    alignment_loss,
    deep_objective,
    kl_by_position,
    separable_objective,
    sequence_kl,
    xlogy_kl,
)
from ._optimize import CERTIFY_TOL, Certificate, Objective, OptimizeResult, minimize
from ._policies import TabularPolicy
from ._recovery import RecoverySpec
from ._types import Policy, PyTree


def _check_lambda(lam: Any) -> float:
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"lambda must be a number > 0, got {lam!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"lambda must be a finite number > 0, got {lam!r}")
    return value


class TrainingResult(NamedTuple):
    """Result of :func:`train_alignment`.

    Attributes:
      params: the final parameters.
      steps: the recorded step numbers (step 0 is the start).
      losses: ``L(θ)`` at each recorded step.
      grad_norms: ``‖∇L‖₂`` at each recorded step.
      kl_by_position: ``(recorded, T)`` array, per-position KL of ``π_θ`` to ``π_0``.
      gradient_norm_by_position: ``(recorded, T)`` array, ``‖G_t‖₂`` of ``E_{π_θ}[h]`` in
        covariance form at each recorded step.
      certificate: the :class:`toysim.Certificate` of the final parameters; for a tabular policy
        its ``loss_gap`` is the exact ``L − L* = KL(π_θ ‖ π*)``.
    """

    params: PyTree
    steps: list[int]
    losses: list[float]
    grad_norms: list[float]
    kl_by_position: np.ndarray
    gradient_norm_by_position: np.ndarray
    certificate: Certificate | None = None


def policy_log_probs(policy: Policy, params: PyTree) -> Array:
    """Every ``log π(v|p)`` of the prefix tree, concatenated: the map whose Jacobian's null space is
    the gauge of ``params`` (moves that leave the policy unchanged), used by the certificate."""
    return jnp.concatenate([jnp.ravel(x) for x in forward(policy, params).log_cond])


@functools.partial(jax.jit, static_argnames=("policy",))
def _kl_to_tilt(policy: Policy, params: PyTree, base_levels: Levels, h: Array, lam: Array) -> Array:
    return sequence_kl(forward(policy, params), tilt(base_levels, h, lam).levels)


@functools.partial(jax.jit, static_argnames=("policy",))
def _snapshot(policy: Policy, params: PyTree, base_levels: Levels, h: Array) -> tuple[Array, Array]:
    """Per-position KL to ``π_0`` and ``‖G_t‖`` at one point of training."""
    levels = forward(policy, params)
    grads = covariance_gradient(policy, params, levels, harm_martingale(levels, h))
    g_norm = jnp.sqrt(jnp.stack([tree_sq_norm(g) for g in grads]))
    return kl_by_position(levels, base_levels), g_norm


def train_alignment(
    policy: Policy,
    params0: PyTree | None,
    base_params: PyTree,
    h: Float[Array, " leaves"],
    lam: float,
    *,
    optimizer: str = "auto",
    steps: int = 200,
    learning_rate: float | None = None,
    record_every: int = 0,
    progress: bool | None = None,
    tol: float = 1e-13,
    certify_tol: float = CERTIFY_TOL,
) -> TrainingResult:
    """Minimise the exact ``L(θ) = λ E[h] + KL(π_θ ‖ π_0)`` by full-batch steps and certify (§7).

    The result carries a :class:`toysim.Certificate`: ``‖∇L‖``, the local bound ``‖θ − θ*‖ ≲
    ‖∇L‖/μ_min`` (``μ_min`` the Hessian's smallest curvature off the softmax gauge) and, for a
    tabular policy, the exact gap ``L − L* = KL(π_θ ‖ π*)`` (the tilt is the optimum over all
    policies, and a tabular policy can represent every policy).

    Args:
      policy: the policy object (tabular, Markov or MLP); ``π_0`` is the same family.
      params0: starting parameters; ``None`` starts from ``base_params`` (the usual choice:
        alignment fine-tunes the base policy).
      base_params: parameters of ``π_0``.
      h: leaf harms ``(V**T,)``.
      lam: ``λ > 0``.
      optimizer: ``"auto"`` (default: damped Newton on these small problems, see
        :func:`toysim.minimize`), ``"newton"``, ``"lbfgs"``, ``"adam"`` or ``"sgd"``.
      steps: maximal number of optimizer steps, ``>= 1``.
      learning_rate: step size (``None``: the optimizer's default).
      record_every: record every this many steps (``0``: first and last only).
      progress: progress bar on stderr (default: when stderr is a terminal).
      tol: stop early once ``‖∇L‖₂ <= tol`` at a recorded step (``0``: run every step). The default
        1e-13 is near rounding for these O(1) objectives; Newton gets there in tens of steps.
      certify_tol: ``‖∇L‖`` below which the certificate calls the run converged.

    Returns:
      :class:`TrainingResult`. Deterministic: no sampling anywhere.

    Raises:
      ValueError: for ``λ <= 0``, a bad optimizer setting, or divergence (from ``minimize``).

    Example:
      >>> policy = TabularPolicy(2, 2)
      >>> base = policy.init(jax.random.key(0))
      >>> res = train_alignment(policy, None, base, jnp.array([0.0, 0.0, 1.0, 1.0]), 1.0, steps=50)
      >>> res.kl_by_position.shape[1], res.certificate.converged
      (2, True)
    """
    lam = _check_lambda(lam)
    h = jnp.asarray(h)
    base_params = jax.tree_util.tree_map(jnp.asarray, base_params)
    params = base_params if params0 is None else jax.tree_util.tree_map(jnp.asarray, params0)
    base_levels = forward(policy, base_params)
    kls, gnorms = [], []

    def gap(theta):
        # L − L* = KL(π_θ ‖ π*) exactly: the tilt is the optimum over all policies, all tabular
        return float(_kl_to_tilt(policy, theta, base_levels, h, jnp.float64(lam)))

    def callback(step, theta):
        kl, g = _snapshot(policy, theta, base_levels, h)
        kls.append(np.asarray(kl))
        gnorms.append(np.asarray(g))

    res = minimize(
        Objective(alignment_loss, (policy,)),  # one compiled step per policy and shape
        params,
        args=(base_levels, h, jnp.float64(lam)),
        optimizer=optimizer,
        learning_rate=learning_rate,
        steps=steps,
        record_every=record_every,
        callback=callback,
        progress=progress,
        tol=tol,
        gauge=Objective(policy_log_probs, (policy,)),
        certify_tol=certify_tol,
        loss_gap=gap if isinstance(policy, TabularPolicy) else None,
    )
    return TrainingResult(
        res.params, res.steps, res.losses, res.grad_norms, np.stack(kls), np.stack(gnorms), res.certificate
    )


def spillover_by_position(
    policy: Policy, params: PyTree, base_params: PyTree, h: Float[Array, " leaves"]
) -> Float[Array, " T"]:
    """KL to ``π_0`` carried by prefixes whose harm is already determined (App. A, Thm 27).

    ``S_t = E_{p ~ π_θ}[1{p determined} · KL(π_θ(·|p) ‖ π_0(·|p))]`` over prefixes ``p`` of length
    ``t − 1``. At a determined prefix ``G_t`` and the equilibrium KL are exactly zero, so any
    ``S_t > 0`` is movement caused by parameter sharing. For ``t > k`` (uniform horizon) every
    prefix is determined and ``S_t`` is the whole per-position KL.

    Returns:
      Array ``(T,)``.
    """
    levels = forward(policy, params)
    base = forward(policy, base_params)
    masks = determined_masks(jnp.asarray(h), policy.vocab_size, policy.horizon)
    return jnp.stack(
        [
            jnp.sum(jnp.where(masks[t], jnp.exp(levels.log_prefix[t]) * xlogy_kl(lc, lb), 0.0))
            for t, (lc, lb) in enumerate(zip(levels.log_cond, base.log_cond))
        ]
    )


def _all_log_softmax(params: tuple[Array, ...]) -> Array:
    """Every ``log π(v|p)`` of tabular logits: the gauge map of :func:`train_deep`'s certificate."""
    return jnp.concatenate([jnp.ravel(jax.nn.log_softmax(z, axis=-1)) for z in params])


def train_deep(
    base: Levels,
    h: Float[Array, " leaves"],
    lam: float,
    spec: RecoverySpec,
    *,
    objective: str = "joint",
    steps: int = 300,
    optimizer: str = "auto",
    callback: Callable | None = None,
    tol: float = 0.0,
) -> tuple[Levels, OptimizeResult]:
    """Minimise ``L_deep`` (``"joint"``) or the separable objective over tabular policies.

    Training starts at ``π_0`` (tabular logits ``log π_0(·|p)``) and uses
    :func:`toysim._optimize.minimize` (default ``"auto"``: damped Newton up to 2000 parameters,
    else L-BFGS). The record carries a :class:`toysim.Certificate` whose gauge is the softmax
    shift of each row (and, for the separable objective, the rows of prefixes with ``Q(p) = 0``
    that it does not see, cut as flat directions).

    Args:
      optimizer: ``"auto"``, ``"newton"``, ``"lbfgs"``, ``"adam"`` or ``"sgd"``.
      tol: if ``> 0``, stop at the first step with ``‖∇L‖₂ <= tol`` (the gradient is then recorded,
        and ``callback`` called, at every step). Once L-BFGS has reached a rounding-level
        gradient, further steps use curvature pairs made of rounding noise and can move logits
        that the objective barely determines (prefixes of tiny ``Q(p)``: ``|Δπ(R|p)| ≈ |g_p| / Q(p)``
        for the separable objective), so a run to a tolerance is more precise than a fixed count.

    Returns:
      The trained policy's levels and the optimiser's record.

    Raises:
      ValueError: for an unknown ``objective`` (and from ``minimize`` for bad settings).
    """
    if objective not in ("joint", "separable"):
        raise ValueError(f"objective must be 'joint' or 'separable', got {objective!r}")
    horizon, vocab = base.horizon, base.vocab_size
    policy = TabularPolicy(vocab, horizon)
    h = jnp.asarray(h)
    # Objective + args: one compiled optimiser step per shape, reused across calls.
    loss = Objective(deep_objective, (policy,)) if objective == "joint" else Objective(separable_objective)
    result = minimize(
        loss,
        tuple(base.log_cond),
        args=(base, h, jnp.float64(lam), spec),
        optimizer=optimizer,
        steps=steps,
        record_every=1 if tol > 0 else 0,
        callback=callback,
        progress=False,
        tol=tol,
        gauge=Objective(_all_log_softmax),
    )
    levels = levels_from_log_cond(tuple(jax.nn.log_softmax(z, axis=-1) for z in result.params))
    return levels, result


def _levels_objective(loss: Callable, policy: Policy, params: PyTree, *args) -> Array:
    return loss(forward(policy, params), *args)


def train_objective(
    policy: Policy,
    params0: PyTree,
    loss: Callable,
    args: tuple,
    *,
    steps: int = 200,
    optimizer: str = "auto",
    tol: float = 1e-13,
    progress: bool | None = False,
) -> OptimizeResult:
    """Minimise ``loss(levels, *args)`` over a policy family's parameters, from ``params0``, and
    certify the result: the one training loop behind every method of ``toysim objectives``.

    Args:
      policy: the family (tabular, Markov, MLP).
      params0: starting parameters (usually ``π_0``'s: alignment fine-tunes the base policy).
      loss: a module-level function ``(levels, *args) -> scalar`` of the policy on the tree, such as
        :func:`toysim.dpo_loss` (one compiled step per loss, policy and shape).
      args: its array arguments.
      steps, optimizer, tol, progress: as for :func:`toysim.minimize`.

    Returns:
      The optimizer's record (:class:`toysim.OptimizeResult`) and its certificate, whose gauge is
      every ``log π(v|p)`` of the policy.
    """
    return minimize(
        Objective(_levels_objective, (loss, policy)),
        jax.tree_util.tree_map(jnp.asarray, params0),
        args=args,
        optimizer=optimizer,
        steps=steps,
        progress=progress,
        tol=tol,
        gauge=Objective(policy_log_probs, (policy,)),
    )
