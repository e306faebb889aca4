"""Attack length of deep alignment [Cor 23] (THEORY.md §8).

Statement: for ``p_min < δ < 1`` and ``γ < 1`` the guaranteed recovery
``g(t) = σ(logit p_min + μγ^{t−1})`` is decreasing in ``t`` and equals ``δ`` at
``t_attack(δ) = 1 + (log μ − log(logit δ − logit p_min)) / log(1/γ)``: ``g(t) > δ`` for
``t < t_attack`` and ``g(t) ≤ δ`` for ``t ≥ t_attack``. Compared with the exact (Gibbs-exact,
separable, λ = 0) optimum: its smallest per-position recovery probability
``m_t = min_{p: Q(p)>0} π*(R | p)`` is ``≥ g(t)`` at every position ``t = 1..T``, so an attacker must
prefill at least ``t_attack − 1`` tokens before the guarantee drops to ``δ``.

Residual: the largest of ``|g(t_attack) − δ|``, ``max(0, δ − g(t))`` on a grid of ``t < t_attack``,
``max(0, g(t) − δ)`` on a grid of ``t > t_attack`` and ``max(0, g(t) − m_t)`` for ``t = 1..T``,
over three values of ``δ`` spread over ``(p_min, 1)``.

Inputs: the random instances of gibbs_form.py with ``γ ∈ [0.3, 0.95]`` (``t_attack`` needs
``γ < 1``). ``m_t`` is evaluated as ``min_p (π_trained(R|p) + ε_p)``, with the exact gradient
certificate ``ε_p ≥ |π_trained(R|p) − π*(R|p)|`` of gibbs_form.py.

Tolerance 1e-12: ``g`` is a closed form (rounding ~1e-16); beyond the certificate only rounding.
"""

from __future__ import annotations

import numpy as np

from toysim import _recovery as rc

from ._framework import Check
from .gibbs_form import APPLIES_TO, TOLERANCE, certificate, deep_cases, optimum, recovery_probs, solved

DELTA_FRACTIONS = (0.3, 0.6, 0.9)
GRID = np.linspace(0.01, 3.0, 30)  # offsets from t_attack


def cases():
    return deep_cases(gamma_below_one=True)


def compute(case):
    s = solved(case)
    spec = s.spec
    p_min = rc.min_recovery_probability(s.base, spec.mask)
    trained = recovery_probs(optimum(case, "separable", lam_zero=True), spec)
    eps = certificate(case, lam_zero=True)  # |π_trained − π*| ≤ ε_p (gibbs_form.py)
    m = np.array([np.min((r + e)[w]) for r, e, w in zip(trained, eps, s.support)])
    deltas = [p_min + f * (1.0 - p_min) for f in DELTA_FRACTIONS]
    return {
        "p_min": p_min,
        "mu": spec.mu,
        "gamma": spec.gamma,
        "deltas": deltas,
        "t_attack": [rc.attack_length(d, p_min, spec.mu, spec.gamma) for d in deltas],
        "min_recovery": m,
    }


def residual(q):
    g = lambda t: rc.guaranteed_recovery(q["p_min"], q["mu"], q["gamma"], t)  # noqa: E731
    errs = []
    for delta, ta in zip(q["deltas"], q["t_attack"]):
        errs.append(abs(float(g(ta)) - delta))
        errs.append(float(np.max(np.maximum(0.0, delta - g(ta - GRID)))))
        errs.append(float(np.max(np.maximum(0.0, g(ta + GRID) - delta))))
    positions = np.arange(1, len(q["min_recovery"]) + 1)
    errs.append(float(np.max(np.maximum(0.0, g(positions) - q["min_recovery"]))))
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
        corruptions={"missing the leading 1": _no_one, "log γ instead of log(1/γ)": _log_gamma},
        applies_to="separable tabular objective, λ = 0, γ < 1; " + APPLIES_TO,
        examples=8,
    )
]
