"""How big the gradient can be: the Fisher bound [Lemma 12, Thm 13] (THEORY.md §6).

Statement: with the conditional Fisher information ``F_t(y_<t) = E[s_t s_tᵀ | y_<t]``, per prefix
``‖Cov(H_t, s_t | y_<t)‖² ≤ Var(H_t | y_<t) · tr F_t(y_<t)`` (Cauchy–Schwarz), and per position
``‖G_t‖² ≤ I_t · E[tr F_t]``.

Residual: the largest relative excess ``(lhs − rhs) / max(rhs, 1e-12)`` (0 when every bound
holds), over prefixes (``fisher_bound_prefix``: ``toysim.prefix_covariance_sq_norm``, the local
variance ``Σ_v π(v|p) Δ_t(p·v)²`` and ``policy.fisher_trace``) or positions
(``fisher_bound_position``: ``toysim.tree_sq_norm`` of ``G_t`` against ``toysim.fisher_bound``²).

Tolerance 1e-10: the bound is attained (equality) for ``V = 2`` lookup policies, where both sides
are the same number computed by different float64 roundings, ~1e-16 relative; 1e-10 leaves margin
and still catches any real violation.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import toysim

from ._framework import Check
from .strategies import instances

FLOOR = 1e-12


def _excess(lhs, rhs) -> float:
    lhs, rhs = np.asarray(lhs, dtype=np.float64), np.asarray(rhs, dtype=np.float64)
    return float(max(0.0, np.max((lhs - rhs) / np.maximum(rhs, FLOOR), initial=0.0)))


def _engine(inst):
    policy = inst.policy
    h = jnp.asarray(toysim.harm_values(inst.harm, policy.vocab_size, policy.horizon))
    levels = toysim.forward(policy, inst.params)
    return levels, toysim.harm_martingale(levels, h)


def compute_prefix(inst):
    policy, params = inst.policy, inst.params
    levels, mart = _engine(inst)
    deltas = toysim.innovations(mart)
    cov_sq, var, trace = [], [], []
    for t in range(1, policy.horizon + 1):
        cov_sq.append(np.asarray(toysim.prefix_covariance_sq_norm(policy, params, levels, mart, t)))
        var.append(np.asarray(jnp.sum(jnp.exp(levels.log_cond[t - 1]) * deltas[t - 1] ** 2, axis=-1)))
        trace.append(np.asarray(policy.fisher_trace(params, t - 1)))
    return {"cov_sq": cov_sq, "var": var, "trace": trace}


def residual_prefix(q):
    return max(_excess(c, v * f) for c, v, f in zip(q["cov_sq"], q["var"], q["trace"]))


def compute_position(inst):
    policy, params = inst.policy, inst.params
    levels, mart = _engine(inst)
    info = toysim.harm_information(levels, mart)
    grads = toysim.covariance_gradient(policy, params, levels, mart)
    bound = np.asarray(toysim.fisher_bound(policy, params, levels, info))
    mean_trace = [
        float(jnp.sum(jnp.exp(levels.log_prefix[t]) * policy.fisher_trace(params, t)))
        for t in range(policy.horizon)
    ]
    return {
        "grad_sq": np.asarray([float(toysim.tree_sq_norm(g)) for g in grads]),
        "information": np.asarray(info),
        "mean_trace": np.asarray(mean_trace),  # E_{p ~ P}[tr F_t(p)]
        "bound_sq": bound**2,  # toysim.fisher_bound, squared
    }


def residual_position(q):
    return max(
        _excess(q["grad_sq"], q["bound_sq"]), _excess(q["grad_sq"], q["information"] * q["mean_trace"])
    )


def _variance_squared(q):
    return {**q, "var": [v**2 for v in q["var"]]}


def _norm_not_squared(q):
    return {**q, "cov_sq": [np.sqrt(c) for c in q["cov_sq"]]}


def _information_squared(q):
    return {**q, "bound_sq": q["information"] ** 2 * q["mean_trace"], "information": q["information"] ** 2}


def _gradient_norm_not_squared(q):
    return {**q, "grad_sq": np.sqrt(q["grad_sq"])}


FISHER_TOLERANCE = "equality holds for V = 2 lookup policies, so both sides differ only by float64 rounding (~1e-16 relative)"

CHECKS = [
    Check(
        name="fisher_bound_prefix",
        result="[Lemma 12]",
        section="§6",
        statement="At every prefix, ‖Cov(H_t, s_t | p)‖² ≤ Var(H_t | p) · tr F_t(p).",
        latex=r"\big\|\operatorname{Cov}(H_t,s_t\mid y_{<t})\big\|^2\le\operatorname{Var}(H_t\mid y_{<t})\,\operatorname{tr}F_t(y_{<t})",
        kind="theorem",
        tolerance=1e-10,
        tolerance_reason=FISHER_TOLERANCE,
        instances=lambda: instances(),
        compute=compute_prefix,
        residual=residual_prefix,
        corruptions={
            "local variance squared": _variance_squared,
            "covariance norm not squared": _norm_not_squared,
        },
        applies_to="tabular, Markov (order 1, 2) and MLP policies; every harm family",
        examples=15,
    ),
    Check(
        name="fisher_bound_position",
        result="[Thm 13]",
        section="§6",
        statement="At every position, ‖G_t‖² ≤ I_t · E[tr F_t].",
        latex=r"\|G_t\|^2\le I_t\,\mathbb{E}[\operatorname{tr}F_t]",
        kind="theorem",
        tolerance=1e-10,
        tolerance_reason=FISHER_TOLERANCE,
        instances=lambda: instances(),
        compute=compute_position,
        residual=residual_position,
        corruptions={
            "I_t squared": _information_squared,
            "gradient norm not squared": _gradient_norm_not_squared,
        },
        applies_to="tabular, Markov (order 1, 2) and MLP policies; every harm family",
        examples=15,
    ),
]
