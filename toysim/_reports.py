"""Every JSON report of the command line, in one place.

* :func:`exact_report` (``toysim exact``): the engine choice and :class:`toysim.Analysis` as JSON;
* :func:`training_report` (``toysim train``): a certified training run, spillover, the λ² law;
* :func:`deep_report` (``toysim deep``) and :func:`dp_deep_report` (``toysim deep --engine dp``):
  the recovery penalty, its gradients, the Gibbs form, the bounds and the attack curves.

Reports compute nothing of their own: they call the library's functions and turn arrays into
lists and floats (JSON has no NaN: every value here is finite or ``None``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._analysis import analyze
from ._dp import automaton_arrays, check_markov
from ._dp_recovery import dp_deep_arrays
from ._enumerate import forward, levels_from_log_cond, log_cond_untied
from ._equilibrium import tilt
from ._gradient import covariance_gradient
from ._harms import harm_values
from ._horizon import determined_masks, uniform_horizon
from ._martingale import harm_martingale
from ._memory import dp_deep_check_fits
from ._objectives import gradient_by_position, sequence_kl
from ._policies import TabularPolicy
from ._recovery import (
    _check_weights,
    attack_length,
    attack_success,
    check_attack_setting,
    gibbs_gap,
    guaranteed_recovery,
    harmful_prefix_marginals,
    log_recovery_probability,
    min_log_recovery_probability,
    policy_prefix_marginals,
    recovery_gradient,
    recovery_mask,
    recovery_spec,
    robustness_bound,
    sigmoid,
    standard_optimum,
)
from ._training import TrainingResult, spillover_by_position, train_deep
from ._types import Policy, PyTree


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

        result = dp_analyze(policy, instance.params, instance.harm, instance.lam)
    else:
        check_fits(policy.vocab_size, policy.horizon)
        h = jnp.asarray(harm_values(instance.harm, policy.vocab_size, policy.horizon))
        params = jax.tree_util.tree_map(jnp.asarray, instance.params)
        result = analyze(policy, params, h, jnp.float64(instance.lam))
    # the report is every per-position and scalar field; only those come to the host (the
    # martingale, log Z and the gradient hold a number per state: 2.2e7 of each at V = 4, T = 12)
    per_state = ("martingale", "log_partition", "gradient")
    names = [k for k in result._fields if k not in per_state]
    fields = jax.device_get([getattr(result, k) for k in names])
    out = {k: np.asarray(v).tolist() for k, v in zip(names, fields)}
    out["engine"] = engine
    tabular = (
        engine == "enumerate" and isinstance(policy, TabularPolicy) and isinstance(instance.harm, TableHarm)
    )
    if tabular:
        out["martingale"] = [np.asarray(m).tolist() for m in jax.device_get(result.martingale)]
    return out


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


def _norms(grads) -> list[float]:
    return [float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(g)))) for g in grads]


def deep_report(
    instance: Any,
    recovery: Sequence[int],
    *,
    mu: float = 1.0,
    gamma: float = 1.0,
    q: str = "harmful",
    jailbroken: Any = None,
    steps: int = 300,
    delta: float | None = None,
) -> dict:
    """Everything docs/theory.md §8-9 says about one instance, as a JSON-ready dict (``toysim deep``).

    The instance's policy is ``π_0``. Gradients are taken in the instance's own parameterisation at
    ``θ = θ_0``; optima are over all (tabular) policies: the standard-aligned one is the tilt, the
    deep-aligned ones are trained by L-BFGS from ``π_0``.

    Args:
      instance: a :class:`toysim.Instance`.
      recovery: recovery tokens ``R``.
      mu: ``μ > 0``.
      gamma: ``γ ∈ (0, 1]``.
      q: ``"harmful"`` (``π_0`` conditioned on harm) or ``"jailbroken"`` (then ``jailbroken`` is an
        :class:`toysim.Instance` whose policy gives ``Q``).
      steps: L-BFGS steps for each trained optimum.
      delta: if given, report ``t_attack(δ)`` [Cor 23] (needs ``p_min < δ < 1`` and ``γ < 1``).

    Returns:
      A dict of lists and floats.

    Raises:
      ValueError: naming the setting for bad input.
    """
    policy, params = instance.policy, instance.params
    V, T, lam = policy.vocab_size, policy.horizon, float(instance.lam)
    h = jnp.asarray(harm_values(instance.harm, V, T))
    base = levels_from_log_cond(log_cond_untied(policy, [params] * T))
    if q == "harmful":
        q_prefix = harmful_prefix_marginals(base, h)
    elif q == "jailbroken":
        if jailbroken is None:
            raise ValueError("q = jailbroken needs a jailbroken policy file")
        jp = jailbroken.policy
        if (jp.vocab_size, jp.horizon) != (V, T):
            raise ValueError(
                f"q jailbroken policy has vocab_size {jp.vocab_size}, horizon {jp.horizon}; expected {V}, {T}"
            )
        q_prefix = policy_prefix_marginals(levels_from_log_cond(log_cond_untied(jp, [jailbroken.params] * T)))
    else:
        raise ValueError(f"q must be 'harmful' or 'jailbroken', got {q!r}")
    spec = recovery_spec(V, recovery, q_prefix, mu=mu, gamma=gamma)
    masks = determined_masks(h, V, T)
    k = int(uniform_horizon(masks))
    log_p_min = min_log_recovery_probability(base, spec.mask)
    p_min = float(np.exp(log_p_min))
    t_attack = (
        None if delta is None else attack_length(delta, p_min, spec.mu, spec.gamma, log_p_min=log_p_min)
    )

    plain = covariance_gradient(policy, params, base, harm_martingale(base, h))
    separable, separable_run = train_deep(base, h, lam, spec, objective="separable", steps=steps)
    joint, joint_run = train_deep(base, h, lam, spec, objective="joint", steps=steps)
    standard = standard_optimum(base, h, lam)
    inside, _ = log_recovery_probability(separable, spec.mask)
    where = [np.asarray(x) > 0 for x in spec.q_prefix]
    return {
        "vocab_size": V,
        "horizon": T,
        "lambda": lam,
        "recovery": [int(i) for i in np.flatnonzero(spec.mask)],
        "mu": spec.mu,
        "gamma": spec.gamma,
        "q": q,
        "uniform_horizon": k,
        "gradient_norm_by_position": {
            "plain_harm": [lam * n for n in _norms(plain)],
            "deep": _norms(gradient_by_position(policy, params, base, h, lam, spec)),
            "recovery_closed_form": _norms(recovery_gradient(policy, params, spec)),
            "recovery_autodiff": _norms(
                gradient_by_position(policy, params, base, h, lam, spec, terms="recovery")
            ),
        },
        "certificates": {
            "separable": separable_run.certificate.to_dict(),
            "joint": joint_run.certificate.to_dict(),
        },
        "gibbs_gap": {
            "separable_past_horizon": gibbs_gap(separable, base, spec, where=masks[:-1]),
            "separable": gibbs_gap(separable, base, spec),
            "joint": gibbs_gap(joint, base, spec),
        },
        "p_min": p_min,
        "robustness_bound": robustness_bound(base, spec),
        # where the Gibbs form is exact for any λ: prefixes with Q(p) > 0 past the horizon
        "separable_min_recovery_past_horizon_by_position": [
            float(np.min(np.exp(np.asarray(x))[w & np.asarray(m)])) if (w & np.asarray(m)).any() else None
            for x, w, m in zip(inside, where, masks[:-1])
        ],
        "delta": delta,
        "attack_length": t_attack,
        "attack_success": {
            "base": [float(x) for x in attack_success(base, spec)],
            "standard": [float(x) for x in attack_success(standard, spec)],
            "deep": [float(x) for x in attack_success(joint, spec)],
        },
    }


def dp_deep_report(
    instance: Any,
    recovery: Sequence[int],
    *,
    mu: float = 1.0,
    gamma: float = 1.0,
    q: str = "harmful",
    jailbroken: Any = None,
    delta: float | None = None,
) -> dict:
    """docs/theory.md §8-9 for a first-order Markov ``π_0`` and an automaton harm, any horizon.

    The DP counterpart of :func:`toysim.deep_report` (``toysim deep --engine dp``). Same keys for
    the per-position gradient norms, ``p_min``, the robustness bound, the attack length and the
    attack curves of the base and standard-aligned policies; the deep-aligned curve is the
    Gibbs-form policy's (key ``gibbs``), and there is no trained optimum (no ``gibbs_gap``).

    Args:
      instance: a :class:`toysim.Instance` with a first-order :class:`toysim.MarkovPolicy` and an
        automaton harm.
      recovery: recovery tokens ``R``.
      mu: ``μ > 0``.
      gamma: ``γ ∈ (0, 1]``.
      q: ``"harmful"`` or ``"jailbroken"`` (then ``jailbroken`` is an instance whose first-order
        Markov policy gives ``Q``).
      delta: if given, report ``t_attack(δ)`` [Cor 23].

    Raises:
      ValueError: naming the setting for bad input, or when the arrays would not fit in memory.
    """
    policy = instance.policy
    check_markov(policy)
    V, T, lam = policy.vocab_size, policy.horizon, float(instance.lam)
    aut = automaton_arrays(instance.harm, V)
    dp_deep_check_fits(V, T, int(aut.transitions.shape[0]))
    logits = jnp.asarray(instance.params.logits, dtype=jnp.float64)
    q_logits = None
    if q == "jailbroken":
        if jailbroken is None:
            raise ValueError("q = jailbroken needs a jailbroken policy file")
        jp = jailbroken.policy
        try:
            check_markov(jp)
        except ValueError as err:
            raise ValueError(f"q jailbroken policy: {err}") from None
        if (jp.vocab_size, jp.horizon) != (V, T):
            raise ValueError(
                f"q jailbroken policy has vocab_size {jp.vocab_size}, horizon {jp.horizon}; expected {V}, {T}"
            )
        q_logits = jnp.asarray(jailbroken.params.logits, dtype=jnp.float64)
    elif q != "harmful":
        raise ValueError(f"q must be 'harmful' or 'jailbroken', got {q!r}")
    mu, gamma = _check_weights(mu, gamma)
    if delta is not None:  # before the passes: a bad δ fails in a second
        check_attack_setting(delta, gamma)
    mask_np = recovery_mask(recovery, V)
    discounts_np = mu * gamma ** np.arange(T, dtype=np.float64)
    mask, discounts = jnp.asarray(mask_np), jnp.asarray(discounts_np)
    out = jax.device_get(dp_deep_arrays(logits, aut, jnp.float64(lam), mask, discounts, T, q_logits))
    if not out.q_mass > 0:
        raise ValueError("q = harmful (π_0 conditioned on harm) has no mass: E_0[h] = 0")
    grads, attack = out.gradients, out.attack
    k = int(out.uniform_horizon)

    log_p_min = float(out.log_p_min)  # finite where p_min underflows (logits ±700)
    p_min = float(np.exp(log_p_min))
    t_attack = None if delta is None else attack_length(delta, p_min, mu, gamma, log_p_min=log_p_min)
    # σ(logit π_0(R|x) + μγ^{t−1}) at the states Q reaches before position t [Thm 20]; σ is
    # increasing, so the minimum over states is σ of the smallest logit plus the position's weight
    lowest = np.asarray(out.lowest_logit_by_position)
    gibbs = sigmoid(lowest + discounts_np)
    gibbs_min = [float(g) if np.isfinite(x) else None for g, x in zip(gibbs, lowest)]
    return {
        "engine": "dp",
        "vocab_size": V,
        "horizon": T,
        "lambda": lam,
        "recovery": [int(i) for i in np.flatnonzero(mask_np)],
        "mu": mu,
        "gamma": gamma,
        "q": q,
        "uniform_horizon": k,
        "recovery_penalty": float(out.penalty),
        "gradient_norm_by_position": {
            "plain_harm": grads.plain_harm.tolist(),
            "deep": grads.deep.tolist(),
            "recovery_closed_form": grads.recovery_closed_form.tolist(),
            "recovery_autodiff": grads.recovery_autodiff.tolist(),
        },
        "recovery_autodiff_max_abs_error": float(grads.recovery_autodiff_max_abs_error),
        "p_min": p_min,
        "robustness_bound": float(guaranteed_recovery(p_min, mu, gamma, T, log_p_min=log_p_min)),
        "gibbs_min_recovery_by_position": gibbs_min,
        "delta": delta,
        "attack_length": t_attack if t_attack is None or math.isfinite(t_attack) else None,
        "attack_success": {
            "base": attack.base.tolist(),
            "standard": attack.standard.tolist(),
            "gibbs": attack.gibbs.tolist(),
        },
    }


def objectives_report(comparison: Any, instance: Any) -> dict:
    """The ``toysim objectives`` JSON object of a :class:`toysim.Comparison` (docs/theory.md §11).

    Every method gets ``expected_harm``, ``kl``, ``kl_by_position``, ``attack_success`` and
    ``depth`` (``null`` without recovery tokens), ``frontier_kl`` (the least KL at its ``E[h]``) and
    ``frontier_gap`` (its KL minus that), and a ``certificate``.
    """
    s = comparison.settings

    def method(m) -> dict:
        gap = None if m.frontier_kl is None else m.kl - m.frontier_kl
        return {
            "expected_harm": m.expected_harm,
            "kl": m.kl,
            "kl_by_position": m.kl_by_position.tolist(),
            "attack_success": None if m.attack_success is None else m.attack_success.tolist(),
            "depth": m.depth,
            "frontier_kl": m.frontier_kl,
            "frontier_gap": gap,
            "certificate": m.certificate,
            **m.extras,
        }

    return {
        "engine": comparison.engine,
        "family": comparison.family,
        "vocab_size": instance.policy.vocab_size,
        "horizon": instance.policy.horizon,
        "lambda": float(instance.lam),
        "settings": {
            "beta": s.beta,
            "beta_r": s.beta_r,
            "n": s.n,
            "threshold": float(s.threshold),
            "sft_kl": s.sft_kl,
            "sft_data": "given" if s.sft_data is not None else "pi_0 conditioned on h <= threshold",
            "token_betas": [float(b) for b in s.token_betas],
            "recovery": None if s.recovery is None else [int(r) for r in s.recovery],
            "mu": float(s.mu),
            "gamma": float(s.gamma),
            "steps": s.steps,
        },
        "base": {
            "expected_harm": comparison.base_expected_harm,
            "attack_success": None
            if comparison.base_attack_success is None
            else np.asarray(comparison.base_attack_success).tolist(),
        },
        "methods": {name: method(m) for name, m in comparison.methods.items()},
        "in_family": {name: method(m) for name, m in comparison.in_family.items()},
        "skipped": dict(comparison.skipped),
    }


def objectives_table(report: dict) -> str:
    """The ``toysim objectives`` report as a fixed-width table (for a terminal)."""
    head = f"{'method':<20} {'E[h]':>10} {'KL':>10} {'frontier gap':>13} {'depth':>6}  D_t (t = 1..T)"
    lines = [
        f"toysim objectives: {report['family']} policy, V = {report['vocab_size']}, T = {report['horizon']}, "
        f"lambda = {report['lambda']:g}, engine {report['engine']}; base E[h] = {report['base']['expected_harm']:.6g}",
    ]
    for title, block in (
        ("over all policies", report["methods"]),
        ("in the instance's family", report["in_family"]),
    ):
        if not block:
            continue
        lines += ["", title, head]
        for name, m in block.items():
            gap = "-" if m["frontier_gap"] is None else f"{m['frontier_gap']:.3g}"
            depth = "-" if m["depth"] is None else str(m["depth"])
            profile = " ".join(f"{d:.2g}" for d in m["kl_by_position"][:12])
            more = " ..." if len(m["kl_by_position"]) > 12 else ""
            cert = m["certificate"]
            flag = (
                "" if cert.get("optimum") == "closed form" or cert.get("converged") else "  (not certified)"
            )
            lines.append(
                f"{name:<20} {m['expected_harm']:>10.4g} {m['kl']:>10.4g} {gap:>13} {depth:>6}  {profile}{more}{flag}"
            )
    for name, reason in report["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    return "\n".join(lines)
