"""Exact KL-regularised alignment training (docs/theory.md §7).

The objective ``L(θ) = λ E_{π_θ}[h] + KL(π_θ ‖ π_0)`` is computed exactly from the engine's forward
pass: ``E[h]`` as a sum over leaves, the sequence KL by the chain rule as the per-position sum
``Σ_t E_{p ~ π_θ}[KL(π_θ(·|p) ‖ π_0(·|p))]``. :func:`train_alignment` minimises it with the shared
optax driver (:func:`toysim._optimize.minimize`), so a run is deterministic.

Over all policies the minimiser is the tilt ``π* ∝ π_0 e^{−λh}`` and ``L(π) = KL(π ‖ π*) − log Z_0``
exactly, so for a tabular policy the distance to the equilibrium can be read off the loss. For
tied parameters (Markov, neural) the minimiser inside the family can move the policy at prefixes
whose harm is already determined ("spillover", App. A); :func:`spillover_by_position` measures it.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._enumerate import Levels, forward, xlogy_kl
from ._equilibrium import kl_by_position, sequence_kl, tilt
from ._gradient import covariance_gradient, tree_sq_norm
from ._horizon import determined_masks, uniform_horizon
from ._martingale import harm_martingale
from ._optimize import CERTIFY_TOL, Certificate, Objective, minimize
from ._policies import TabularPolicy
from ._types import Policy, PyTree


def _check_lambda(lam: Any) -> float:
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"lambda must be a number > 0, got {lam!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"lambda must be a finite number > 0, got {lam!r}")
    return value


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
    harm = jnp.sum(jnp.exp(levels.log_prefix[-1]) * h)
    return lam * harm + jnp.sum(kl_by_position(levels, base_levels))


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


def training_report(
    policy: Policy,
    base_params: PyTree,
    h: Float[Array, " leaves"],
    lam: float,
    result: TrainingResult,
) -> dict:
    """JSON-ready summary of a training run against the closed-form equilibrium (§7).

    Returns:
      A dict with the certificate (``converged``, ``‖∇L‖``, bounds), the start and final loss, the
      equilibrium loss ``−log Z_0``, per-position KL of the trained policy and ``D_t``,
      ``KL(π_trained ‖ π*)``, the spillover (shared families only: for a tabular policy it is 0 by
      theory and reported as ``None`` with a note) and the trajectory.
    """
    h = jnp.asarray(h)
    base = forward(policy, base_params)
    trained = forward(policy, result.params)
    eq = tilt(base, h, lam)
    masks = determined_masks(h, policy.vocab_size, policy.horizon)
    k = int(uniform_horizon(masks))
    kl_t = result.kl_by_position[-1]
    if isinstance(policy, TabularPolicy):
        # untied rows: a determined prefix gets zero gradient of E[h] and the tilt leaves it at π_0
        # ([Thm 10]), so spillover is exactly 0 by theory; what training leaves there is rounding.
        spill = {
            "spillover_by_position": None,
            "spillover_beyond_horizon": None,
            "spillover_note": "tabular policy: spillover is exactly 0 by theory (untied rows, Thm 10)",
        }
    else:
        spill = {
            "spillover_by_position": np.asarray(
                spillover_by_position(policy, result.params, base_params, h)
            ).tolist(),
            "spillover_beyond_horizon": float(np.sum(kl_t[k:])),
        }
    certificate = result.certificate
    return {
        "lambda": float(lam),
        "converged": None if certificate is None else certificate.converged,
        "certificate": None if certificate is None else certificate.to_dict(),
        "start_loss": float(result.losses[0]),
        "final_loss": float(result.losses[-1]),
        "equilibrium_loss": float(-eq.log_partition[0][0]),
        "kl_by_position": kl_t.tolist(),
        "equilibrium_kl_by_position": np.asarray(eq.kl_by_position).tolist(),
        "kl_to_equilibrium": float(sequence_kl(trained, eq.levels)),
        "uniform_horizon": k,
        **spill,
        "final_gradient_norm": float(result.grad_norms[-1]),
        "trajectory": [
            {
                "step": int(s),
                "loss": float(loss),
                "gradient_norm": float(g),
                "kl_by_position": kl.tolist(),
                "harm_gradient_norm_by_position": gn.tolist(),
            }
            for s, loss, g, kl, gn in zip(
                result.steps,
                result.losses,
                result.grad_norms,
                result.kl_by_position,
                result.gradient_norm_by_position,
            )
        ],
    }


@jax.jit
def second_order_ratio(
    base_levels: Levels, h: Float[Array, " leaves"], lams: Float[Array, " sweep"]
) -> tuple[Array, Array, Array]:
    """``2 D_t(λ) / (λ² I_t⁽⁰⁾)`` over a sweep of ``λ``, from the closed-form tilt [Thm 14].

    [Thm 14] says ``D_t = (λ²/2) I_t⁽⁰⁾ + O(λ³)``, so the ratio tends to 1 with ``|ratio − 1| =
    O(λ)`` at every position with ``I_t⁽⁰⁾ > 0``.

    Args:
      base_levels: ``π_0`` on the tree.
      h: leaf harms ``(V**T,)``.
      lams: values of ``λ > 0``, shape ``(L,)``.

    Returns:
      ``(ratio (L, T), D (L, T), I⁽⁰⁾ (T,))``; the ratio is NaN where ``I_t⁽⁰⁾ = 0``.

    Example:
      >>> policy = TabularPolicy(2, 1)
      >>> base = forward(policy, (jnp.zeros((1, 2)),))
      >>> ratio, _, _ = second_order_ratio(base, jnp.array([0.0, 1.0]), jnp.array([1e-3]))
      >>> round(float(ratio[0, 0]), 3)
      1.0
    """
    from ._martingale import harm_information

    h = jnp.asarray(h)
    info = harm_information(base_levels, harm_martingale(base_levels, h))
    lams = jnp.asarray(lams)
    d = jax.vmap(lambda lam: tilt(base_levels, h, lam).kl_by_position)(lams)  # one traced tilt for the sweep
    lam2 = lams[:, None] ** 2
    ratio = jnp.where(info > 0, 2.0 * d / (lam2 * jnp.where(info > 0, info, 1.0)), jnp.nan)
    return ratio, d, info
