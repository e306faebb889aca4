"""The full exact analysis of one instance: what ``toysim exact`` prints.

One jitted function, :func:`analyze`, runs the engine's forward pass once for the policy, one
backward pass for ``H``, one log-space backward pass for the tilt, and reads every quantity of
docs/theory.md §2–7 off those arrays.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._analysis import Analysis, analysis
from ._enumerate import forward
from ._gradient import TreeGradients
from ._types import Policy, PyTree


@functools.partial(jax.jit, static_argnames=("policy",))
def analyze(policy: Policy, params: PyTree, h: Array, lam: float | Array) -> Analysis:
    """Exact analysis of a policy and a harm table on the prefix tree.

    :func:`toysim._analysis.analysis` on the tree engine (``toysim.forward``).

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
    return analysis(levels, TreeGradients(policy, params, levels, h), h, lam)


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
    from ._harms import AutomatonHarm, TableHarm, harm_values
    from ._memory import check_fits
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
