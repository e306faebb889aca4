"""Gibbs form of the deep-aligned optimum [Thm 20] (docs/theory.md §8).

Statement: the minimiser of the separable tabular objective
``Σ_t Σ_p Q(p)[μγ^{t−1}(1 − π(R|p)) + KL(π(·|p) ‖ π_0(·|p))] + λ E_π[h]`` satisfies
``π*(R | p) = σ(logit π_0(R | p) + μγ^{t−1})`` at every prefix with ``Q(p) > 0`` when ``λ = 0``,
and at every such prefix past the harm horizon (determined prefixes) when ``λ > 0``. At
``Q(p) = 0`` the objective does not depend on the prefix's logits (flat), so those prefixes are
excluded: the optimiser leaves them at their starting point ``π_0``.

Inputs (:func:`proofs_check.deep_cases.deep_cases`): random tabular ``π_0`` of a fixed small shape (``V = 2, T = 3`` and
``V = 3, T = 2``; every shape costs one L-BFGS compilation, ~10-20 s on a loaded 2-core CPU)
with a drawn seed and scale, a random binary harm (deadline, first-decisive, trigger or binary
table), ``λ``, a random recovery set ``R`` (non-empty, proper), ``μ ∈ [0.25, 2]``,
``γ ∈ [0.3, 1]`` and ``Q`` either ``π_0`` conditioned on harm (instances with ``E_0[h] = 0`` are
skipped: ``Q`` has no mass) or a random jailbroken policy. Each input is a :class:`DeepCase`
whose first field is its :class:`toysim.Instance`, so a failure is written as a replayable file.

Residual: ``max(0, |π_trained(R|p) − σ(logit π_0(R|p) + μγ^{t−1})| − ε_p)`` over those prefixes,
for the optimum found by L-BFGS (``toysim.train_deep``) started at ``π_0`` and stopped at the first
step with ``‖∇L‖₂ ≤ GRAD_TOL = 1e-14`` (or after ``STEPS``), where ``ε_p`` is an exact a-posteriori
bound computed from the optimiser's final gradient (below).

The trained optima's ``π(R|p)`` are read by the reference (:mod:`proofs_check.recovery_reference`,
from their rows alone), and compared with the reference Gibbs form (from ``policy.logits`` of
``π_0``); ``Q``, its support and the determined prefixes are the brute-force ones. The residual
also takes the library's own ``π(R|p)`` of the optima, Gibbs form, ``Q`` marginals and discounts
minus their references (identities, float64 rounding ~1e-16). Inputs draw their harm from
:mod:`proofs_check.recovery_cases` (``k < T`` in most inputs, so "past the horizon" is not empty).

Certificate ``ε_p``. At a prefix ``p`` the separable objective is ``Q(p) f_p(π(·|p))`` plus terms
not involving ``p``'s logits ``z`` (for ``λ > 0`` at a determined prefix, the harm term's
derivative vanishes), and ``∂/∂z_v = Q(p) π_v (u_v − Σ_w π_w u_w)`` with
``u_v = log(π_v/π_0(v|p)) − μγ^{t−1} 1[v ∈ R]``. The Gibbs form ``π*`` makes ``u`` constant, and
``log(π_v/π*_v) = u_v + const``, so with ``D_p = max_v − min_v of g_v / (Q(p) π_v)`` (computed from
the gradient ``g``) every ratio ``π_v/π*_v`` lies in ``[e^{−D_p}, e^{D_p}]`` and
``|π(R|p) − π*(R|p)| ≤ ε_p = expm1(D_p)``: zero exactly at stationarity. So the check holds iff the
trained policy's distance from the Gibbs form is explained by its remaining non-stationarity,
i.e. iff the Gibbs form is the objective's stationary point (and, the per-prefix problem being
convex in ``π``, its minimiser).

Why. A run with random inputs, a fixed 300 steps, no certificate and tolerance 1e-9 failed with
residual 2.9e-6 (that input was not kept; the two mechanisms below, reproduced here, give errors
of that size at prefixes with ``Q(p)`` a few orders smaller than those measured). The optimiser's precision at a prefix is ``|Δπ(R|p)| ≈ |g_p| / Q(p)``: the curvature in the prefix's
recovery logit is ``Q(p) π(1 − π)``. Two things limit ``|g_p|``, both measured on these inputs:
(1) L-BFGS stalls. When a step's decrease ``g²/(2 Q π(1−π))`` falls below the rounding of the
loss (~1e-16), the zoom line search can hardly see progress; 3 of 40 inputs ended 300 steps at
``‖∇L‖ ~ 1e-11..2e-10``, with ``Δπ = 3e-8`` at a prefix with ``Q = 1.8e-4``. (2) After reaching a
rounding-level gradient, L-BFGS keeps stepping along curvature pairs made of rounding noise,
moving the logits of tiny-``Q`` prefixes (``‖∇L‖ ≤ 1e-12`` throughout while the error at a
``Q ~ 3e-9`` prefix grows to 4e-8); ``train_deep(tol=...)`` stops at the first converged step.
Hence the per-prefix certificate instead of a fixed tolerance; the remaining tolerance 1e-12
covers rounding in ``σ``, the probabilities and the gradient (~1e-15). Measured over 40 inputs
(``STEPS = 400``): residual ≤ 4e-17; certificate ``max_p ε_p`` median 5e-14, largest 1.2e-10.

Finding ``gibbs_form_joint``: for the joint objective ``L_deep`` (sequence KL, prefixes weighted
by ``π_θ``) the same distance is measured. The exact stationarity condition (*ours*) at a prefix
``p`` of the last level is ``π(v|p) ∝ π_0(v|p) exp(−λh(p·v) + μγ^{T−1} (Q(p)/π_θ(p)) 1[v ∈ R])``:
the effective weight is multiplied by ``Q(p)/π_θ(p)``, which the optimum inflates by steering
away from harmful prefixes, so recovery after them is pushed far above the Gibbs value, towards
saturation. The minimiser can lie where softmax gradients vanish, so L-BFGS may also stop on a
plateau. Measured over ``V = 2, T = 3`` instances only (one more compilation per shape): up to
0.98 over the 6 inputs of ``toysim check`` (0.94 over 30).

Inputs, trained optima (cached per input), the references and the certificate ``ε_p`` live in
:mod:`proofs_check.deep_cases`, shared with robustness_bound.py, attack_length.py and
prefill_attack.py, which draw from the same strategy: with the same hypothesis seed they see the
same inputs, so each optimum is trained once per process.
"""

from __future__ import annotations

import numpy as np

import toysim

from ._framework import Check
from .deep_cases import (
    APPLIES_TO,
    TOLERANCE,
    certificate,
    deep_cases,
    joint_cases,
    optimum,
    recovery_probs,
    reference,
    reference_recovery,
    solved,
)


def _identity_gap(a, b) -> float:
    return float(
        max((np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0.0) for x, y in zip(a, b)), default=0.0)
    )


def compute(case):
    s = solved(case)
    r = reference(case)
    free = optimum(case, "separable", lam_zero=True)
    separable = optimum(case, "separable")
    logit_base = [np.asarray(z) for z in toysim.logit_recovery(s.base, s.spec.mask)]
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    shift = np.arange(len(logit_base))
    return {
        # the library
        "free": recovery_probs(free, s.spec),
        "separable": recovery_probs(separable, s.spec),
        "gibbs": [np.asarray(g) for g in toysim.gibbs_recovery(s.base, s.spec)],
        "q": [np.asarray(x) for x in s.spec.q_prefix],
        "discounts": np.asarray(s.spec.discounts),
        "free_certificate": certificate(case, lam_zero=True),
        "separable_certificate": certificate(case, lam_zero=False),
        # the reference: Gibbs form, Q, discounts, the optima's recovery from their rows
        "ref_free": reference_recovery(free, case.recovery),
        "ref_separable": reference_recovery(separable, case.recovery),
        "ref_gibbs": r.gibbs,
        "ref_q": r.q,
        "ref_discounts": r.discounts,
        "free_where": r.support,
        "past_horizon_where": [m & d for m, d in zip(r.support, r.determined)],
        # for the negative controls
        "base": recovery_probs(s.base, s.spec),
        "logit_base": logit_base,
        "mu": s.spec.mu,
        "gamma": s.spec.gamma,
        "gibbs_no_mu": [sig(z + s.spec.gamma**t) for t, z in zip(shift, logit_base)],
        "gibbs_shifted": [sig(z + s.spec.mu * s.spec.gamma ** (t + 1)) for t, z in zip(shift, logit_base)],
        "q_unconditioned": [np.asarray(x) for x in toysim.policy_prefix_marginals(s.base)],
    }


def _gap(trained, gibbs, where, allowance=None):
    if allowance is None:
        allowance = [np.zeros_like(a) for a in trained]
    errs = [
        np.max(np.maximum(0.0, np.abs(a - b) - e)[w])
        for a, b, e, w in zip(trained, gibbs, allowance, where)
        if w.any()
    ]
    return float(max(errs, default=0.0))


def residual(q):
    return max(
        # the optima (read by the reference) against the reference Gibbs form, within the certificate
        _gap(q["ref_free"], q["ref_gibbs"], q["free_where"], q["free_certificate"]),
        _gap(q["ref_separable"], q["ref_gibbs"], q["past_horizon_where"], q["separable_certificate"]),
        # the library's own quantities against their references (identities)
        _identity_gap(q["free"], q["ref_free"]),
        _identity_gap(q["separable"], q["ref_separable"]),
        _identity_gap(q["gibbs"], q["ref_gibbs"]),
        _identity_gap(q["q"], q["ref_q"]),
        float(np.max(np.abs(q["discounts"] - q["ref_discounts"]))),
    )


def _undiscounted(q):
    # the Gibbs form with μ at every position instead of μγ^{t−1}
    gibbs = [1.0 / (1.0 + np.exp(-(z + q["mu"]))) for z in q["logit_base"]]
    return {**q, "gibbs": gibbs}


def _untrained(q):
    return {**q, "free": q["base"], "separable": q["base"], "ref_free": q["base"], "ref_separable": q["base"]}


def compute_joint(case):
    r = reference(case)
    return {
        "joint": reference_recovery(optimum(case, "joint"), case.recovery),
        "gibbs": r.gibbs,
        "where": r.support,
    }


def residual_joint(q):
    return _gap(q["joint"], q["gibbs"], q["where"])


CHECKS = [
    Check(
        name="gibbs_form",
        result="[Thm 20]",
        section="§8",
        statement="The separable tabular optimum is the Gibbs form π*(R|p) = σ(logit π_0(R|p) + μγ^{t−1}) "
        "(λ = 0: at every prefix with Q(p) > 0; λ > 0: at every such prefix past the horizon).",
        latex=r"\pi^*(R\mid y_{<t})=\sigma\big(\operatorname{logit}\pi_0(R\mid y_{<t})+\mu\gamma^{t-1}\big)",
        kind="theorem",
        tolerance=TOLERANCE,
        tolerance_reason="beyond the exact gradient certificate ε_p: rounding (~1e-15)",
        instances=deep_cases,
        compute=compute,
        residual=residual,
        corruptions={
            "discount dropped (μ at every position)": _undiscounted,
            "untrained π_0": _untrained,
            "Gibbs form with a missing μ (σ(logit + γ^{t−1}))": lambda q: {**q, "gibbs": q["gibbs_no_mu"]},
            "discount off by one (μγ^t)": lambda q: {**q, "gibbs": q["gibbs_shifted"]},
            "unconditioned harmful Q (π_0 marginals)": lambda q: {**q, "q": q["q_unconditioned"]},
        },
        applies_to=APPLIES_TO,
        examples=8,
    ),
    Check(
        name="gibbs_form_joint",
        result="[Thm 20]",
        section="§8",
        statement="Distance of the joint L_deep optimum (sequence KL) from the Gibbs form, over prefixes "
        "with Q(p) > 0 (an approximation, not a theorem).",
        latex=r"\max_{p:\,Q(p)>0}\big|\pi^*_{\mathrm{joint}}(R\mid p)-\sigma(\operatorname{logit}\pi_0(R\mid p)+\mu\gamma^{t-1})\big|",
        kind="finding",
        tolerance=0.0,
        tolerance_reason="a measurement",
        instances=joint_cases,
        compute=compute_joint,
        residual=residual_joint,
        corruptions={},
        applies_to="tabular π_0 (V = 2, T = 3), binary harms, Q = π_0 | harm or a jailbroken policy",
        examples=6,
    ),
]
