"""Attack length of deep alignment [Cor 23] (docs/theory.md §8).

Statement: for ``p_min < δ < 1`` and ``γ < 1`` the guaranteed recovery
``g(t) = σ(logit p_min + μγ^{t−1})`` is decreasing in ``t`` and equals ``δ`` at
``t_attack(δ) = 1 + (log μ − log(logit δ − logit p_min)) / log(1/γ)``: ``g(t) > δ`` for
``t < t_attack`` and ``g(t) ≤ δ`` for ``t ≥ t_attack``. Compared with the exact (Gibbs-exact,
separable, λ = 0) optimum: its smallest per-position recovery probability
``m_t = min_{p: Q(p)>0} π*(R | p)`` is ``≥ g(t)`` at every position ``t = 1..T``, so an attacker must
prefill at least ``t_attack − 1`` tokens before the guarantee drops to ``δ``.

Independent reference (:mod:`proofs_check.recovery_reference`): ``p_min`` from ``policy.logits``
alone, the guarantee ``σ(logit p_min + μγ^{t−1})`` written out again, the real root of
``guarantee(t) = δ`` by bisection and the first integer position where the guarantee is ``≤ δ`` by
trying ``t = 1, 2, …``; the library's ``t_attack`` must match the root (to 1e-9 relative: bisection
to rounding of a closed form whose conditioning is ``|g'(t)|⁻¹``, measured ~1e-13) and satisfy
``first position = max(1, ⌈t_attack⌉)``; the library's ``p_min`` and guarantee must match theirs.

Residual: the largest of those reference differences and of ``|g(t_attack) − δ|``, ``max(0, δ − g(t))`` on a grid of ``t < t_attack``,
``max(0, g(t) − δ)`` on a grid of ``t > t_attack`` and ``max(0, g(t) − m_t)`` for ``t = 1..T``,
over three values of ``δ`` spread over ``(p_min, 1)``.

Inputs: the random instances of gibbs_form.py (:func:`proofs_check.deep_cases.deep_cases`) with
``γ ∈ [0.3, 0.95]`` (``t_attack`` needs ``γ < 1``). ``m_t`` is evaluated as
``min_p (π_trained(R|p) + ε_p)``, with the exact gradient certificate
``ε_p ≥ |π_trained(R|p) − π*(R|p)|`` of gibbs_form.py (:func:`proofs_check.deep_cases.certificate`).

Tolerance 1e-12: ``g`` is a closed form (rounding ~1e-16); beyond the certificate only rounding.
"""

from __future__ import annotations

import math

import numpy as np

import toysim

from . import recovery_reference as ref
from ._framework import Check
from .deep_cases import (
    APPLIES_TO,
    TOLERANCE,
    certificate,
    deep_cases,
    optimum,
    reference,
    reference_recovery,
    solved,
)

DELTA_FRACTIONS = (0.3, 0.6, 0.9)
GRID = np.linspace(0.01, 3.0, 30)  # offsets from t_attack
ROOT_TOLERANCE = 1e-9  # relative: bisection root against the closed form (measured ~1e-13)


def cases():
    return deep_cases(gamma_below_one=True)


def compute(case):
    s = solved(case)
    r = reference(case)
    spec = s.spec
    p_min = toysim.min_recovery_probability(s.base, spec.mask)
    ref_p_min = ref.min_recovery(r.logits, case.recovery)
    trained = reference_recovery(optimum(case, "separable", lam_zero=True), case.recovery)
    eps = certificate(case, lam_zero=True)  # |π_trained − π*| ≤ ε_p (deep_cases.py)
    m = np.array([np.min((x + e)[w]) if w.any() else np.inf for x, e, w in zip(trained, eps, r.support)])
    deltas = [ref_p_min + f * (1.0 - ref_p_min) for f in DELTA_FRACTIONS]
    positions = np.arange(1, spec.horizon + 1)
    return {
        "p_min": p_min,
        "ref_p_min": ref_p_min,
        "mu": case.mu,
        "gamma": case.gamma,
        "deltas": deltas,
        "t_attack": [toysim.attack_length(d, p_min, spec.mu, spec.gamma) for d in deltas],
        "ref_root": [ref.attack_root(ref_p_min, case.mu, case.gamma, d) for d in deltas],
        "ref_first": [ref.first_attack_position(ref_p_min, case.mu, case.gamma, d) for d in deltas],
        "guarantee": np.asarray(toysim.guaranteed_recovery(p_min, spec.mu, spec.gamma, positions)),
        "ref_guarantee": np.asarray(ref.guarantee(ref_p_min, case.mu, case.gamma, positions)),
        "min_recovery": m,
    }


def residual(q):
    g = lambda t: toysim.guaranteed_recovery(q["p_min"], q["mu"], q["gamma"], t)  # noqa: E731
    errs = [abs(q["p_min"] - q["ref_p_min"]), float(np.max(np.abs(q["guarantee"] - q["ref_guarantee"])))]
    for ta, root, first in zip(q["t_attack"], q["ref_root"], q["ref_first"]):
        errs.append(max(0.0, abs(ta - root) / max(1.0, abs(root)) - ROOT_TOLERANCE))
        # the first integer position at or past t_attack is the first where the guarantee is ≤ δ
        # (t_attack within rounding of an integer: either neighbour)
        near = {max(1, math.ceil(ta - 1e-9)), max(1, math.ceil(ta + 1e-9))}
        errs.append(0.0 if first in near else 1.0)
    for delta, ta in zip(q["deltas"], q["t_attack"]):
        errs.append(abs(float(g(ta)) - delta))
        errs.append(float(np.max(np.maximum(0.0, delta - g(ta - GRID)))))
        errs.append(float(np.max(np.maximum(0.0, g(ta + GRID) - delta))))
    errs.append(float(np.max(np.maximum(0.0, q["ref_guarantee"] - q["min_recovery"]))))
    return max(errs)


def _no_one(q):
    # t_attack without the leading "1 +"
    return {**q, "t_attack": [t - 1.0 for t in q["t_attack"]]}


def _log_gamma(q):
    # log γ in place of log(1/γ)
    return {**q, "t_attack": [2.0 - t for t in q["t_attack"]]}


CHECKS = [
    Check(
        name="attack_length",
        result="[Cor 23]",
        section="§8",
        statement="σ(logit p_min + μγ^{t−1}) > δ before t_attack(δ) and ≤ δ from it on; the exact "
        "optimum's per-position minimum recovery stays above the guarantee.",
        latex=r"t_{\mathrm{attack}}(\delta)=1+\frac{\log\mu-\log(\operatorname{logit}\delta-\operatorname{logit}p_{\min})}{\log(1/\gamma)}",
        kind="theorem",
        tolerance=TOLERANCE,
        tolerance_reason="closed form to rounding; trained optimum within its gradient certificate",
        instances=cases,
        compute=compute,
        residual=residual,
        corruptions={
            "missing the leading 1": _no_one,
            "log γ instead of log(1/γ)": _log_gamma,
            "discount off by one (μγ^t in the guarantee)": lambda q: {
                **q,
                "guarantee": np.asarray(
                    toysim.guaranteed_recovery(
                        q["p_min"], q["mu"], q["gamma"], np.arange(2, len(q["guarantee"]) + 2)
                    )
                ),
            },
        },
        applies_to="separable tabular objective, λ = 0, γ < 1; " + APPLIES_TO,
        examples=8,
    )
]
