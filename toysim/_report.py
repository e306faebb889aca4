"""The full exact analysis of one instance: what ``toysim exact`` prints.

One jitted function, :func:`analyze`, runs the engine's forward pass once for the policy, one
backward pass for ``H``, one log-space backward pass for the tilt, and reads every quantity of
docs/theory.md §2–7 off those arrays.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._enumerate import forward
from ._equilibrium import tilt
from ._gradient import (
    autodiff_gradient,
    covariance_weights,
    fisher_bound,
    logit_cotangents,
    per_position,
    pull_back_sum,
    tree_sq_norm,
)
from ._horizon import determined_masks, horizon_distribution, uniform_horizon
from ._martingale import martingale_summary

PyTree = Any


class Analysis(NamedTuple):
    """Every exact quantity of one instance (docs/theory.md §2–7).

    Attributes:
      expected_harm: ``E[h]``.
      harm_variance: ``Var(h)``.
      harm_information: ``I_1..I_T``.
      gradient_norm_by_position: ``‖G_t‖₂`` in covariance form.
      autodiff_gradient_norm_by_position: ``‖∂E[h]/∂θ_t‖₂`` with untied parameters.
      gradient_autodiff_max_abs_error: largest entry-wise gap between the covariance form and
        autodiff, over every ``G_t`` and over ``Σ_t G_t`` against ``jax.grad``.
      fisher_bound_by_position: ``sqrt(I_t E[tr F_t])`` [Thm 13].
      horizon_distribution: ``P(τ = t)`` for ``t = 0..T``.
      uniform_horizon: ``k = max τ``.
      equilibrium_kl_by_position: ``D_1..D_T`` of the tilt, this policy acting as ``π_0``.
      equilibrium_kl: ``KL(π* ‖ π_0)``.
      martingale: ``H_0..H_T`` per prefix.
    """

    expected_harm: Array
    harm_variance: Array
    harm_information: Array
    gradient_norm_by_position: Array
    autodiff_gradient_norm_by_position: Array
    gradient_autodiff_max_abs_error: Array
    fisher_bound_by_position: Array
    horizon_distribution: Array
    uniform_horizon: Array
    equilibrium_kl_by_position: Array
    equilibrium_kl: Array
    martingale: tuple[Array, ...]


def _max_abs_diff(a: PyTree, b: PyTree) -> Array:
    diffs = jax.tree_util.tree_map(lambda x, y: jnp.max(jnp.abs(x - y)), a, b)
    return jnp.max(jnp.stack(jax.tree_util.tree_leaves(diffs)))


@functools.partial(jax.jit, static_argnames=("policy",))
def analyze(policy: Any, params: PyTree, h: Array, lam: float | Array) -> Analysis:
    """Exact analysis of a policy and a harm table.

    Args:
      policy: a policy object (static).
      params: its parameters.
      h: leaf harms, shape ``(V**T,)``, in ``[0, 1]``.
      lam: ``λ > 0`` for the equilibrium tilt.

    Returns:
      :class:`Analysis`.

    Example:
      >>> policy = TabularPolicy(2, 2)
      >>> a = analyze(policy, policy.init(jax.random.key(0)), jnp.array([0.0, 0.0, 1.0, 1.0]), 1.0)
      >>> float(a.harm_information[1])  # decided by the first token
      0.0
    """
    levels = forward(policy, params)
    summary = martingale_summary(levels, h)
    weights = covariance_weights(levels, summary.martingale)
    cotangents = logit_cotangents(policy, params, h)
    grads = per_position(policy, params, weights)
    untied = per_position(policy, params, cotangents)
    error = jnp.maximum(
        jnp.max(jnp.stack([_max_abs_diff(g, u) for g, u in zip(grads, untied)])),
        _max_abs_diff(pull_back_sum(policy, params, weights), autodiff_gradient(policy, params, h)),
    )
    masks = determined_masks(h, policy.vocab_size, policy.horizon)
    eq = tilt(levels, h, lam)
    return Analysis(
        expected_harm=summary.expected_harm,
        harm_variance=summary.variance,
        harm_information=summary.information,
        gradient_norm_by_position=jnp.sqrt(jnp.stack([tree_sq_norm(g) for g in grads])),
        autodiff_gradient_norm_by_position=jnp.sqrt(jnp.stack([tree_sq_norm(g) for g in untied])),
        gradient_autodiff_max_abs_error=error,
        fisher_bound_by_position=fisher_bound(policy, params, levels, summary.information),
        horizon_distribution=horizon_distribution(levels, masks),
        uniform_horizon=uniform_horizon(masks),
        equilibrium_kl_by_position=eq.kl_by_position,
        equilibrium_kl=jnp.sum(eq.kl_by_position),
        martingale=summary.martingale,
    )


def exact_report(instance: Any, engine: str = "auto") -> dict:
    """The ``toysim exact`` JSON object of a parsed instance (float64 throughout).

    Args:
      instance: a :class:`toysim.Instance`.
      engine: ``"enumerate"`` (prefix tree, every policy and harm), ``"dp"`` (automaton DP:
        first-order Markov policy with an automaton harm, any horizon), or ``"auto"`` (``"dp"``
        where it applies, else ``"enumerate"``).

    Raises:
      ValueError: for an unknown engine, an enumeration that would not fit in memory, or the DP
        engine asked for a policy or harm it cannot read.
    """
    from ._enumerate import check_fits
    from ._harms import AutomatonHarm, TableHarm, harm_values
    from ._policies import MarkovPolicy, TabularPolicy

    if engine not in ("auto", "enumerate", "dp"):
        raise ValueError(f"engine must be 'auto', 'enumerate' or 'dp', got {engine!r}")
    if not jax.config.jax_enable_x64:
        raise ValueError("toysim exact needs float64: call jax.config.update('jax_enable_x64', True)")
    policy = instance.policy
    if engine == "auto":
        dp_ok = isinstance(policy, MarkovPolicy) and policy.order == 1
        engine = "dp" if dp_ok and isinstance(instance.harm, AutomatonHarm) else "enumerate"
    if engine == "dp":
        from ._dp import dp_analyze

        # DPAnalysis has the fields of Analysis read below, per state instead of per prefix.
        result = jax.device_get(dp_analyze(policy, instance.params, instance.harm, instance.lam))
    else:
        check_fits(policy.vocab_size, policy.horizon)
        h = jnp.asarray(harm_values(instance.harm, policy.vocab_size, policy.horizon))
        params = jax.tree_util.tree_map(jnp.asarray, instance.params)
        result = jax.device_get(analyze(policy, params, h, jnp.float64(instance.lam)))
    out = {
        "expected_harm": float(result.expected_harm),
        "harm_variance": float(result.harm_variance),
        "harm_information": result.harm_information.tolist(),
        "gradient_norm_by_position": result.gradient_norm_by_position.tolist(),
        "autodiff_gradient_norm_by_position": result.autodiff_gradient_norm_by_position.tolist(),
        "gradient_autodiff_max_abs_error": float(result.gradient_autodiff_max_abs_error),
        "fisher_bound_by_position": result.fisher_bound_by_position.tolist(),
        "horizon_distribution": result.horizon_distribution.tolist(),
        "uniform_horizon": int(result.uniform_horizon),
        "equilibrium_kl_by_position": result.equilibrium_kl_by_position.tolist(),
        "equilibrium_kl": float(result.equilibrium_kl),
        "engine": engine,
    }
    if engine == "enumerate" and isinstance(policy, TabularPolicy) and isinstance(instance.harm, TableHarm):
        out["martingale"] = [m.tolist() for m in result.martingale]
    return out
