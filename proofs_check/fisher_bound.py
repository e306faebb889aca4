"""How big the gradient can be: the Fisher bound [Lemma 12, Thm 13] (docs/theory.md §6).

Statement: with the conditional Fisher information ``F_t(y_<t) = E[s_t s_tᵀ | y_<t]``, per prefix
``‖Cov(H_t, s_t | y_<t)‖² ≤ Var(H_t | y_<t) · tr F_t(y_<t)`` (Cauchy–Schwarz), and per position
``‖G_t‖² ≤ I_t · E[tr F_t]``.

Both sides are checked, each against its own brute-force reference (``proofs_check.reference``:
``H`` from per-sequence sums, score vectors from an explicit Jacobian of ``log_softmax`` of each
prefix's logits written from the policy's definition, by complex-step differentiation; never
``policy.fisher_trace`` or ``generic_fisher_trace``), then the bound itself on both the engine's and the reference's values,
then equality where it is tight:

* ``fisher_bound_prefix`` -- per prefix: ``toysim.prefix_covariance_sq_norm`` against
  ``‖Σ_v π (H(p·v) − E H)(s_v − E s)‖²``; the engine's local variance ``Σ_v π Δ_t²`` against
  ``Σ_v π (H(p·v) − H(p))²``; ``policy.fisher_trace`` against ``Σ_v π ‖s_v‖²``; the bound; and,
  for lookup policies (tabular, Markov) with ``V = 2``, equality ``lhs = rhs`` (the score is
  ``e_v − π`` in the row the prefix reads, so ``lhs = Σ_v π_v² Δ_v²``; with ``π = (a, b)`` and
  ``aΔ_a + bΔ_b = 0`` both sides equal ``2a²Δ_a²``).
* ``fisher_bound_position`` -- per position: ``G_t`` (``toysim.covariance_gradient``) against
  ``Σ_p P(p) Cov(H_t, s_t | p)``; ``I_t`` against ``Σ_p P(p) Var(H_t | p)``; ``E[tr F_t]`` and
  ``toysim.fisher_bound²`` against the reference product; the bound; and equality at ``t = 1``
  (a single prefix) for lookup policies with ``V = 2``.

Residual: the largest of the scaled reference errors (``|a − r| / max(1, |r|)``), the relative
excesses ``(lhs − rhs) / max(rhs, 1e-12)`` and the gaps ``|lhs − rhs|`` where the bound is tight.
Tolerance 1e-10 (``tolerances.REFERENCE``): float64 sums of at most 27 terms of order one on both
sides, ~1e-14 apart.

Exercised: an input exercises the bound when some prefix (position) has a non-zero local variance
(harm information), so that the bound is not ``0 ≤ 0``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import toysim

from . import reference as ref
from . import tolerances as tol
from ._framework import Check
from .strategies import instances


def _excess(lhs, rhs) -> float:
    """Relative excess of ``lhs`` over ``rhs``, beyond the rounding of two squares
    (``tolerances.SQUARED_ROUNDING``)."""
    lhs, rhs = np.asarray(lhs, dtype=np.float64), np.asarray(rhs, dtype=np.float64)
    if lhs.shape != rhs.shape:
        return float("inf")
    allowance = tol.SQUARED_ROUNDING * np.sqrt(np.maximum(np.abs(lhs), np.abs(rhs)))
    excess = (lhs - rhs - allowance) / np.maximum(rhs, tol.BOUND_FLOOR)
    return float(max(0.0, np.max(excess, initial=0.0)))


def _gap(lhs, rhs) -> float:
    lhs, rhs = np.asarray(lhs, dtype=np.float64), np.asarray(rhs, dtype=np.float64)
    if lhs.shape != rhs.shape:
        return float("inf")
    return float(np.max(np.abs(lhs - rhs), initial=0.0))


def _tight(inst) -> bool:
    """Whether the per-prefix bound is an equality: a lookup policy over two tokens."""
    return bool(getattr(inst.policy, "is_lookup", False)) and inst.policy.vocab_size == 2


def _engine(inst):
    levels = toysim.forward(inst.policy, inst.params)
    return levels, toysim.harm_martingale(levels, ref.jnp_h(inst))


def compute_prefix(inst):
    policy, params = inst.policy, inst.params
    levels, mart = _engine(inst)
    deltas = toysim.innovations(mart)
    cov_sq, var, trace = [], [], []
    for t in range(1, policy.horizon + 1):
        cov_sq.append(np.asarray(toysim.prefix_covariance_sq_norm(policy, params, levels, mart, t)))
        var.append(np.asarray(jnp.sum(jnp.exp(levels.log_cond[t - 1]) * deltas[t - 1] ** 2, axis=-1)))
        trace.append(np.asarray(policy.fisher_trace(params, t - 1)))
    r = ref.brute_force(policy, params, inst.harm)
    return {
        "cov_sq": cov_sq,
        "var": var,
        "trace": trace,
        "probs": ref.as_numpy(jnp.exp(lc) for lc in levels.log_cond),
        "deltas": ref.as_numpy(deltas),
        "H_child": [np.asarray(mart[t + 1]).reshape(-1, policy.vocab_size) for t in range(policy.horizon)],
        "ref_cov_sq": r.cov_sq,
        "ref_var": r.var_prefix,
        "ref_trace": r.trace,
        "tight": _tight(inst),
    }


def residual_prefix(q):
    errors = [
        ref.max_error(
            [(q["cov_sq"], q["ref_cov_sq"]), (q["var"], q["ref_var"]), (q["trace"], q["ref_trace"])]
        )
    ]
    for cov_sq, var, trace in (
        (q["cov_sq"], q["var"], q["trace"]),
        (q["ref_cov_sq"], q["ref_var"], q["ref_trace"]),
    ):
        rhs = [v * f for v, f in zip(var, trace)]
        errors += [_excess(c, r) for c, r in zip(cov_sq, rhs)]
        if q["tight"]:
            errors += [_gap(c, r) for c, r in zip(cov_sq, rhs)]
    return float(max(errors))


# a constant harm leaves variances of rounding size in the reference (tolerances.ROUNDING_VARIANCE)
ROUNDING_VARIANCE = tol.ROUNDING_VARIANCE


def exercised_prefix(q):
    return any(np.any(v > ROUNDING_VARIANCE) for v in q["ref_var"])


def _uncentred_trace(q):
    # tr F = Σ_v π(v|p) instead of 1 − Σ_v π(v|p)²: the score taken as e_v, not e_v − π
    return {**q, "trace": [p.sum(axis=-1) for p in q["probs"]]}


def _square_of_sum(q):
    # ‖Σ_v π Δ e_v‖² computed as (Σ_v π_v Δ_v)²: the square taken after the sum
    return {**q, "cov_sq": [np.sum(p * d, axis=-1) ** 2 for p, d in zip(q["probs"], q["deltas"])]}


def _variance_not_centred(q):
    # Var(H_t | p) as Σ_v π H_t(p·v)²: the second moment, without subtracting H_{t−1}(p)
    return {**q, "var": [np.sum(p * c**2, axis=-1) for p, c in zip(q["probs"], q["H_child"])]}


def _variance_squared(q):
    return {**q, "var": [v**2 for v in q["var"]]}


def _norm_not_squared(q):
    return {**q, "cov_sq": [np.sqrt(c) for c in q["cov_sq"]]}


def compute_position(inst):
    policy, params = inst.policy, inst.params
    levels, mart = _engine(inst)
    info = np.asarray(toysim.harm_information(levels, mart))
    grads = np.stack([ref.flat(g) for g in toysim.covariance_gradient(policy, params, levels, mart)])
    bound = np.asarray(toysim.fisher_bound(policy, params, levels, jnp.asarray(info)))
    mean_trace = [
        float(jnp.sum(jnp.exp(levels.log_prefix[t]) * policy.fisher_trace(params, t)))
        for t in range(policy.horizon)
    ]
    r = ref.brute_force(policy, params, inst.harm)
    return {
        "gradient": grads,
        "information": info,
        "mean_trace": np.asarray(mean_trace),  # E_{p ~ P}[tr F_t(p)]
        "bound_sq": bound**2,  # toysim.fisher_bound, squared
        "ref_gradient": r.gradient,
        "ref_information": r.information,
        "ref_mean_trace": r.mean_trace,
        "tight": _tight(inst),
    }


def residual_position(q):
    grad_sq = np.sum(q["gradient"] ** 2, axis=1)
    ref_sq = np.sum(q["ref_gradient"] ** 2, axis=1)
    ref_rhs = q["ref_information"] * q["ref_mean_trace"]
    errors = [
        ref.max_error(
            [
                (q["gradient"], q["ref_gradient"]),
                (q["information"], q["ref_information"]),
                (q["mean_trace"], q["ref_mean_trace"]),
                (q["bound_sq"], ref_rhs),
            ]
        ),
        _excess(grad_sq, q["bound_sq"]),
        _excess(grad_sq, q["information"] * q["mean_trace"]),
        _excess(ref_sq, ref_rhs),
    ]
    if q["tight"]:  # t = 1 has a single prefix: the per-position bound is the per-prefix one
        errors += [_gap(grad_sq[:1], q["bound_sq"][:1]), _gap(ref_sq[:1], ref_rhs[:1])]
    return float(max(errors))


def exercised_position(q):
    return bool(np.any(q["ref_information"] > ROUNDING_VARIANCE))


def _uncentred_mean_trace(q):
    # E[tr F_t] from the uncentred per-prefix trace Σ_v π(v|p) = 1
    ones = np.ones_like(q["mean_trace"])
    return {**q, "mean_trace": ones, "bound_sq": q["information"] * ones}


def _information_squared(q):
    return {**q, "bound_sq": q["information"] ** 2 * q["mean_trace"], "information": q["information"] ** 2}


def _trace_one_position_late(q):
    # E[tr F_{t+1}] paired with I_t (the last position repeats)
    late = np.append(q["mean_trace"][1:], q["mean_trace"][-1:])
    return {**q, "mean_trace": late, "bound_sq": q["information"] * late}


def _gradient_without_baseline(q):
    # G_t scaled as if the covariance were not centred: the gradient doubled at every position
    return {**q, "gradient": 2.0 * q["gradient"]}


ALL = "tabular, Markov (order 1, 2) and MLP policies; every harm family"

CHECKS = [
    Check(
        name="fisher_bound_prefix",
        result="[Lemma 12]",
        section="§6",
        statement="At every prefix, ‖Cov(H_t, s_t | p)‖² ≤ Var(H_t | p) · tr F_t(p); each side equals "
        "its brute-force reference (explicit Jacobian), and the bound is an equality for V = 2 lookup "
        "policies.",
        latex=r"\big\|\operatorname{Cov}(H_t,s_t\mid y_{<t})\big\|^2\le\operatorname{Var}(H_t\mid y_{<t})\,\operatorname{tr}F_t(y_{<t})",
        kind="theorem",
        tolerance=tol.REFERENCE,
        tolerance_reason=tol.REFERENCE_REASON + "; the V = 2 equality differs by rounding only",
        instances=lambda: instances(),
        compute=compute_prefix,
        residual=residual_prefix,
        corruptions={
            "uncentred Fisher trace Σπ instead of 1 − Σπ²": _uncentred_trace,
            "‖Cov‖² as the square of a sum": _square_of_sum,
            "local variance not centred at H(p)": _variance_not_centred,
            "local variance squared": _variance_squared,
            "covariance norm not squared": _norm_not_squared,
        },
        applies_to=ALL,
        examples=15,
        exercised=exercised_prefix,
    ),
    Check(
        name="fisher_bound_position",
        result="[Thm 13]",
        section="§6",
        statement="At every position, ‖G_t‖² ≤ I_t · E[tr F_t]; G_t, I_t and E[tr F_t] each equal their "
        "brute-force reference, and the bound is an equality at t = 1 for V = 2 lookup policies.",
        latex=r"\|G_t\|^2\le I_t\,\mathbb{E}[\operatorname{tr}F_t]",
        kind="theorem",
        tolerance=tol.REFERENCE,
        tolerance_reason=tol.REFERENCE_REASON + "; the V = 2 equality differs by rounding only",
        instances=lambda: instances(),
        compute=compute_position,
        residual=residual_position,
        corruptions={
            "E[tr F_t] from the uncentred trace": _uncentred_mean_trace,
            "I_t squared": _information_squared,
            "E[tr F] one position late": _trace_one_position_late,
            "G_t doubled (covariance not centred)": _gradient_without_baseline,
        },
        applies_to=ALL,
        examples=15,
        exercised=exercised_position,
    ),
]
