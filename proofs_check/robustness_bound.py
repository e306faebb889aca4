"""Robustness bound of deep alignment [Thm 22] (THEORY.md §8).

Statement (the quantity, made precise): let ``π*`` be the minimiser of the separable tabular
objective with ``λ = 0`` (where the Gibbs form [Thm 20] is exact). Then at *every position*
``t = 1..T`` and *every prefix* ``p`` of length ``t − 1`` with ``Q(p) > 0``, the one-step
recovery probability satisfies

    π*(R | p) ≥ σ(logit p_min + μγ^{T−1}),    p_min = min over all prefixes of π_0(R | ·).

The bound is about the per-prefix probability that the *next* token is a recovery token, not the
probability of recovering somewhere later (which is larger), and not a ``Q``-average. It follows
from the Gibbs form because ``logit π_0(R|p) ≥ logit p_min`` and ``γ^{t−1} ≥ γ^{T−1}``; it is
tight at a prefix of length ``T − 1`` where ``π_0(R|·) = p_min``. At ``Q(p) = 0`` the separable
objective is flat in the prefix's logits, so nothing is claimed there.

Residual: ``max(0, bound − min_p (π_trained(R|p) + ε_p))`` over those prefixes, ``π_trained``
from L-BFGS (stopped at ``‖∇L‖ ≤ 1e-14``) and ``ε_p`` the exact bound on
``|π_trained(R|p) − π*(R|p)|`` from its final gradient (see gibbs_form.py): the optimum violates
the bound somewhere only if this is positive. Inputs: the random instances of gibbs_form.py
(:func:`proofs_check.gibbs_form.deep_cases`).

Tolerance 1e-12: rounding (~1e-15) beyond the certificate; the bound is attained (residual ~1e-14
measured without the certificate) where ``π_0(R|p) = p_min`` at a last-level prefix.
"""

from __future__ import annotations

import numpy as np

from toysim import _recovery as rc

from ._framework import Check
from .gibbs_form import APPLIES_TO, TOLERANCE, certificate, deep_cases, optimum, recovery_probs, solved


def compute(case):
    s = solved(case)
    where = s.support
    trained = recovery_probs(optimum(case, "separable", lam_zero=True), s.spec)
    # π*(R|p) ≥ π_trained(R|p) − ε_p can be below the bound only if π_trained + ε_p is
    trained = [r + e for r, e in zip(trained, certificate(case, lam_zero=True))]
    logit = [np.asarray(z) for z in rc.logit_recovery(s.base, s.spec.mask)]
    wrong_sign = [1.0 / (1.0 + np.exp(-(z - d))) for z, d in zip(logit, s.spec.discounts)]
    return {
        "recovery": [r[w] for r, w in zip(trained, where)],
        "base": [r[w] for r, w in zip(recovery_probs(s.base, s.spec), where)],
        "wrong_sign": [r[w] for r, w in zip(wrong_sign, where)],
        "bound": rc.robustness_bound(s.base, s.spec),
        # the bound with p_min taken over the prefixes with Q(p) > 0 only (for the negative controls:
        # both wrong policies fall below it at the prefix attaining that minimum)
        "bound_on_support": float(
            rc.guaranteed_recovery(
                min(float(np.min(r[w])) for r, w in zip(recovery_probs(s.base, s.spec), where) if w.any()),
                s.spec.mu,
                s.spec.gamma,
                s.spec.horizon,
            )
        ),
    }


def residual(q):
    return max(0.0, q["bound"] - min((float(np.min(r)) for r in q["recovery"] if r.size), default=1.0))


CHECKS = [
    Check(
        name="robustness_bound",
        result="[Thm 22]",
        section="§8",
        statement="At every position and every prefix with Q(p) > 0, the Gibbs-exact optimum recovers "
        "with probability π*(R|p) ≥ σ(logit p_min + μγ^{T−1}), p_min = min π_0(R|·).",
        latex=r"\pi^*(R\mid p)\ \ge\ \sigma\big(\operatorname{logit}p_{\min}+\mu\gamma^{T-1}\big)\quad\forall p:\ Q(p)>0",
        kind="theorem",
        tolerance=TOLERANCE,
        tolerance_reason="beyond the exact gradient certificate ε_p of the trained optimum: rounding",
        instances=deep_cases,
        compute=compute,
        residual=residual,
        corruptions={
            # π_0 itself, against the bound of its own smallest recovery probability on Q's support
            "untrained π_0 in place of π*": lambda q: {
                **q,
                "recovery": q["base"],
                "bound": q["bound_on_support"],
            },
            "penalty with the wrong sign": lambda q: {
                **q,
                "recovery": q["wrong_sign"],
                "bound": q["bound_on_support"],
            },
        },
        applies_to="separable tabular objective, λ = 0; " + APPLIES_TO,
        examples=8,
    )
]
