"""Robustness bound of deep alignment [Thm 22] (docs/theory.md §8).

Statement (the quantity, made precise): let ``π*`` be the minimiser of the separable tabular
objective with ``λ = 0`` (where the Gibbs form [Thm 20] is exact). Then at *every position*
``t = 1..T`` and *every prefix* ``p`` of length ``t − 1`` with ``Q(p) > 0``, the one-step
recovery probability satisfies

    π*(R | p) ≥ σ(logit p_min + μγ^{T−1}),    p_min = min over all prefixes of π_0(R | ·).

The bound is about the per-prefix probability that the *next* token is a recovery token, not the
probability of recovering somewhere later (which is larger), and not a ``Q``-average. It follows
from the Gibbs form because ``logit π_0(R|p) ≥ logit p_min`` and ``γ^{t−1} ≥ γ^{T−1}``; it is
tight at a prefix of length ``T − 1`` where ``π_0(R|·) = p_min`` (and anywhere ``π_0(R|·) = p_min``
when ``γ = 1``). At ``Q(p) = 0`` the separable objective is flat in the prefix's logits, so nothing
is claimed there.

Both sides are checked against an independent reference (:mod:`proofs_check.recovery_reference`,
from ``policy.logits`` alone):

* the bound: the library's ``robustness_bound`` against ``σ(logit p_min + μγ^{T−1})`` with
  ``p_min`` the smallest ``π_0(R|p)`` over every prefix (identity);
* the optimum: its ``π(R|p)`` read by the library against the reference's reading of the same rows
  (identity), and the inequality ``min_p (π_trained(R|p) + ε_p) ≥ bound`` over the reference's
  ``Q`` support, with ``ε_p`` the exact bound on ``|π_trained(R|p) − π*(R|p)|`` from its final
  gradient (see gibbs_form.py);
* tightness: the reference Gibbs form ``σ(logit π_0(R|p) + μγ^{t−1})`` is ``≥`` the bound at every
  prefix, and equals it (to rounding) at the prefix attaining ``p_min`` when that prefix has
  length ``T − 1`` or ``γ = 1``; where that prefix also has ``Q(p) > 0`` the trained optimum is
  within ``ε_p`` of the bound there.

Residual: the largest of those identity differences, the positive parts of the inequalities,
and the tightness gaps. Inputs: the random instances of gibbs_form.py
(:func:`proofs_check.deep_cases.deep_cases`).

Tolerance 1e-12: rounding (~1e-15) beyond the certificate; the bound is attained (residual ~1e-14
measured without the certificate) where ``π_0(R|p) = p_min`` at a last-level prefix.
"""

from __future__ import annotations

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
    recovery_probs,
    reference,
    reference_recovery,
    solved,
)


def compute(case):
    s = solved(case)
    r = reference(case)
    mu, gamma, T = case.mu, case.gamma, s.spec.horizon
    where = r.support
    levels = optimum(case, "separable", lam_zero=True)
    eps = certificate(case, lam_zero=True)
    trained_ref = reference_recovery(levels, case.recovery)
    base_ref = ref.recovery_by_level(r.logits, case.recovery)
    p_min = ref.min_recovery(r.logits, case.recovery)
    # the prefix attaining p_min, and whether the bound is tight there
    level, row = min(
        ((t, int(np.argmin(x))) for t, x in enumerate(base_ref)), key=lambda lr: base_ref[lr[0]][lr[1]]
    )
    logit = [np.asarray(z) for z in toysim.logit_recovery(s.base, s.spec.mask)]
    wrong_sign = [1.0 / (1.0 + np.exp(-(z - d))) for z, d in zip(logit, s.spec.discounts)]
    on_support = min(float(np.min(b[w])) for b, w in zip(base_ref, where) if w.any())
    return {
        # the library
        "bound": toysim.robustness_bound(s.base, s.spec),
        "recovery_lib": recovery_probs(levels, s.spec),
        # the reference
        "ref_bound": ref.robustness_bound(p_min, mu, gamma, T),
        "recovery_ref": trained_ref,
        "certificate": eps,
        "where": where,
        "gibbs_ref": r.gibbs,
        "tight": bool(level == T - 1 or gamma == 1.0),
        "tight_at": (level, row),
        # for the negative controls
        "base": base_ref,
        "wrong_sign": wrong_sign,
        # the bound with p_min taken over the prefixes with Q(p) > 0 only: both wrong policies of the
        # controls fall below it at the prefix attaining that minimum
        "bound_on_support": ref.robustness_bound(on_support, mu, gamma, T),
        "bound_shifted": float(
            toysim.guaranteed_recovery(toysim.min_recovery_probability(s.base, s.spec.mask), mu, gamma, T + 1)
        ),
    }


def _identity(a, b) -> float:
    return float(
        max((np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0.0) for x, y in zip(a, b)), default=0.0)
    )


def residual(q):
    bound, where, eps = q["ref_bound"], q["where"], q["certificate"]
    lowest = min(
        (float(np.min((r + e)[w])) for r, e, w in zip(q["recovery_ref"], eps, where) if w.any()), default=1.0
    )
    errs = [
        abs(q["bound"] - bound),  # the library's bound against its reference
        _identity(q["recovery_lib"], q["recovery_ref"]),  # the optimum's reading against its reference
        max(0.0, q["bound"] - lowest),  # the inequality, library bound
        max(0.0, bound - lowest),  # the inequality, reference bound
        max(0.0, bound - min(float(np.min(g)) for g in q["gibbs_ref"])),  # Gibbs form ≥ bound everywhere
    ]
    if q["tight"]:
        t, row = q["tight_at"]
        errs.append(abs(float(q["gibbs_ref"][t][row]) - bound))  # attained by the Gibbs form
        if where[t][row]:  # attained by the trained optimum, within its certificate
            errs.append(max(0.0, abs(float(q["recovery_ref"][t][row]) - bound) - float(eps[t][row])))
    return max(errs)


def _as_policy(name):
    def corrupt(q):
        wrong = q[name]
        return {
            **q,
            "recovery_lib": wrong,
            "recovery_ref": wrong,
            "bound": q["bound_on_support"],
            "ref_bound": q["bound_on_support"],
        }

    return corrupt


CHECKS = [
    Check(
        name="robustness_bound",
        result="[Thm 22]",
        section="§8",
        statement="At every position and every prefix with Q(p) > 0, the Gibbs-exact optimum recovers "
        "with probability π*(R|p) ≥ σ(logit p_min + μγ^{T−1}), p_min = min π_0(R|·); tight at a "
        "last-level prefix attaining p_min.",
        latex=r"\pi^*(R\mid p)\ \ge\ \sigma\big(\operatorname{logit}p_{\min}+\mu\gamma^{T-1}\big)\quad\forall p:\ Q(p)>0",
        kind="theorem",
        tolerance=TOLERANCE,
        tolerance_reason="beyond the exact gradient certificate ε_p of the trained optimum: rounding",
        instances=deep_cases,
        compute=compute,
        residual=residual,
        corruptions={
            # π_0 itself, against the bound of its own smallest recovery probability on Q's support
            "untrained π_0 in place of π*": _as_policy("base"),
            "penalty with the wrong sign": _as_policy("wrong_sign"),
            "discount off by one (μγ^T in the bound)": lambda q: {**q, "bound": q["bound_shifted"]},
            "recovery probability of the complement set": lambda q: {
                **q,
                "recovery_lib": [1.0 - x for x in q["recovery_lib"]],
            },
        },
        applies_to="separable tabular objective, λ = 0; " + APPLIES_TO,
        examples=8,
    )
]
