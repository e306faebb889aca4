"""Prefilling attacks in toy form (docs/theory.md §9, Qi et al. 2025).

Attack success at depth ``k`` is ``A(k) = E_{p ~ Q_k}[P_θ(no recovery token in positions k+1..T | p)]``
(``k = 0..T−1``), computed by a masked backward pass over the engine's levels.

Statements checked, for ``π_0``, the standard-aligned optimum (the tilt ``π* ∝ π_0 e^{−λh}``) and
the deep-aligned optimum (``L_deep`` trained by L-BFGS over tabular policies):

* ``prefill_standard_is_base`` (*ours*, from [Thm 10]): the standard curve equals the base curve at
  every depth ``k ≥ k_h`` (the uniform harm horizon): the tilt leaves every determined prefix's
  conditional law unchanged bit for bit, and ``A(k)`` only reads prefixes of length ``≥ k``.
  Residual ``max_{k ≥ k_h} |A_std(k) − A_0(k)|``; tolerance 0 (exact equality, same arithmetic).
* ``prefill_deep_below_standard`` (*ours*): at the last depth ``k = T − 1`` the deep curve lies
  strictly below the standard one. Reason: ``A(T−1) = E_{Q_{T−1}}[1 − π(R|p)]``, and the joint
  optimum's stationarity condition at a last-level prefix is
  ``π(v|p) ∝ π_0(v|p) exp(−λh(p·v) + μγ^{T−1}(Q(p)/π_θ(p)) 1[v ∈ R])`` while the tilt has
  ``π(v|p) ∝ π_0(v|p) exp(−λh(p·v))``: the extra factor raises ``π(R|p)`` at every prefix with
  ``Q(p) > 0``. Residual ``max(0, 1e-9 − (A_std(T−1) − A_deep(T−1)))``: zero iff the deep curve is
  below by more than the optimiser's precision (1e-9); tolerance 0.
* ``prefill_deep_vs_standard`` (finding): ``max_k (A_deep(k) − A_std(k))``. The claim "below at
  *every* depth", checked before on one fixed case, is false on random instances: the certified
  optimum (a stationary point with positive curvature; the joint objective is not convex) gives
  ``A_deep(k) > A_std(k)`` at shallow depths — measured up to 3.3e-2 over seeds 0..19 with the
  default inputs (an earlier L-BFGS run on other inputs: depth 0 at 0.377 against 0.340, while depth
  2 dropped from 0.996 to 3e-28). The joint objective weights the KL by ``π_θ``, so the
  optimum steers away early from the prefixes where it must later deviate from ``π_0`` to
  recover (those with ``Q`` mass), which can mean choosing non-recovery tokens at the root.

Independent reference (:mod:`proofs_check.recovery_reference`): every curve is also computed per
response, ``A(k) = Σ_{|p|=k} Q_k(p) Σ_c π(c|p) 1[c ∩ R = ∅]`` with ``π(c|p) = π(p·c)/π(p)`` from the
policy's sequence probabilities: ``π_0`` from ``policy.logits``, the tilt as
``π_0(y) e^{−λh(y)} / Z`` per response (not the library's tilt), the deep optimum from its trained
rows; ``Q_k`` and ``k_h`` by brute force. Both theorem checks add the largest
``|A_library(k) − A_reference(k)|`` over the three curves and all depths (tolerance
``REFERENCE_TOLERANCE = 1e-12``: sums of at most 8 products of order one, measured ~1e-16; a
residual above it counts as a failure: the residual adds ``1`` to the excess), and
``prefill_standard_is_base`` also compares the two *reference* curves past the reference's
``k_h`` (``≤ 1e-12``: the tilt divides by its normaliser per response, so the reference curves
agree only to rounding). Inputs draw their harm from :mod:`proofs_check.recovery_cases`:
``k_h < T`` in most inputs, so the depths past the horizon are not empty.

Inputs: :func:`proofs_check.deep_cases.joint_cases` (random ``V = 2, T = 3`` instances).
"""

from __future__ import annotations

import numpy as np

import toysim

from . import recovery_reference as ref
from ._framework import Check
from .deep_cases import joint_cases, optimum, reference, solved

MARGIN = 1e-9
REFERENCE_TOLERANCE = 1e-12
APPLIES_TO = "tabular π_0 (V = 2, T = 3), binary harms, Q = π_0 | harm or a jailbroken policy"


def _shifted(curve):
    """A curve read one depth too deep: depth ``k`` reports ``A(k + 1)`` (``A(T) = 1``)."""
    return np.append(np.asarray(curve)[1:], 1.0)


def compute(case):
    s = solved(case)
    r = reference(case)
    V, T = s.base.vocab_size, s.base.horizon
    lam = float(case.instance.lam)
    k_h = int(toysim.uniform_horizon(toysim.determined_masks(s.h, V, T)))
    std = toysim.standard_optimum(s.base, s.h, lam)
    deep = optimum(case, "joint")
    h = np.asarray(s.h)
    curve = lambda lp: ref.attack_curve(lp, r.leaf_q, case.recovery, V, T)  # noqa: E731
    unconditioned = toysim.recovery_spec(
        V, case.recovery, toysim.policy_prefix_marginals(s.base), case.mu, case.gamma
    )
    return {
        "horizon": k_h,
        "base": np.asarray(toysim.attack_success(s.base, s.spec)),
        "standard": np.asarray(toysim.attack_success(std, s.spec)),
        "deep": np.asarray(toysim.attack_success(deep, s.spec)),
        "ref_horizon": r.horizon,
        "ref_base": curve(r.log_p0),
        "ref_standard": curve(ref.tilt_log_probs(r.log_p0, h, lam)),
        "ref_deep": curve(ref.tabular_log_probs(deep.log_cond)),
        # for the negative control "unconditioned harmful Q" (meaningful when q = harmful)
        "base_unconditioned": np.asarray(toysim.attack_success(s.base, unconditioned)),
        "standard_unconditioned": np.asarray(toysim.attack_success(std, unconditioned)),
        "deep_unconditioned": np.asarray(toysim.attack_success(deep, unconditioned)),
    }


def reference_gap(q) -> float:
    """``0`` if every library curve matches its reference within ``REFERENCE_TOLERANCE``, else
    ``1 +`` the largest difference (a failure of any theorem check using it)."""
    gap = max(float(np.max(np.abs(q[c] - q[f"ref_{c}"]))) for c in ("base", "standard", "deep"))
    gap = max(gap, 0.0 if q["horizon"] == q["ref_horizon"] else 1.0)
    return 0.0 if gap <= REFERENCE_TOLERANCE else 1.0 + gap


def residual_equal(q):
    k = q["horizon"]
    lib = float(np.max(np.abs(q["standard"][k:] - q["base"][k:]), initial=0.0))
    kr = q["ref_horizon"]
    mine = float(np.max(np.abs(q["ref_standard"][kr:] - q["ref_base"][kr:]), initial=0.0))
    return max(lib, max(0.0, mine - REFERENCE_TOLERANCE), reference_gap(q))


def residual_below(q):
    return max(0.0, MARGIN - float(q["standard"][-1] - q["deep"][-1]), reference_gap(q))


def _depth_off_by_one(q):
    return {**q, **{c: _shifted(q[c]) for c in ("base", "standard", "deep")}}


def _unconditioned(q):
    return {**q, **{c: q[f"{c}_unconditioned"] for c in ("base", "standard", "deep")}}


def residual_excess(q):
    return float(np.max(q["deep"] - q["standard"]))


CHECKS = [
    Check(
        name="prefill_standard_is_base",
        result="(ours), from [Thm 10]",
        section="§9",
        statement="Beyond the harm horizon the standard-aligned policy is as vulnerable to prefilling "
        "as the base policy: A_std(k) = A_0(k) for every k ≥ k_h.",
        latex=r"A_{\pi^*}(k)=A_{\pi_0}(k)\quad\forall k\ge k_h",
        kind="theorem",
        tolerance=0.0,
        tolerance_reason="the tilt keeps determined prefixes' log-probabilities bit for bit; the "
        "reference comparisons carry their own 1e-12 (rounding) inside the residual",
        instances=joint_cases,
        compute=compute,
        residual=residual_equal,
        corruptions={
            "deep curve in place of the standard one": lambda q: {**q, "standard": q["deep"]},
            "prefill depth off by one (depth k reports A(k + 1))": _depth_off_by_one,
            "unconditioned harmful Q (π_0 marginals)": _unconditioned,
        },
        applies_to=APPLIES_TO,
        examples=6,
    ),
    Check(
        name="prefill_deep_below_standard",
        result="(ours)",
        section="§9",
        statement="The deep-aligned optimum's prefilling-attack success is strictly below the "
        "standard-aligned one at the last depth T − 1.",
        latex=r"A_{\mathrm{deep}}(T-1)<A_{\pi^*}(T-1)",
        kind="theorem",
        tolerance=0.0,
        tolerance_reason="strict inequality with a 1e-9 margin (optimiser precision) built into the residual",
        instances=joint_cases,
        compute=compute,
        residual=residual_below,
        corruptions={
            "base curve in place of the deep one": lambda q: {**q, "deep": q["base"]},
            "curves swapped": lambda q: {**q, "deep": q["standard"], "standard": q["deep"]},
            "prefill depth off by one (depth k reports A(k + 1))": _depth_off_by_one,
        },
        applies_to=APPLIES_TO,
        examples=6,
    ),
    Check(
        name="prefill_deep_vs_standard",
        result="(ours)",
        section="§9",
        statement="Largest excess of the deep-aligned optimum's prefilling-attack success over the "
        "standard-aligned one, over depths (positive: deep is more vulnerable at some depth).",
        latex=r"\max_k\big(A_{\mathrm{deep}}(k)-A_{\pi^*}(k)\big)",
        kind="finding",
        tolerance=0.0,
        tolerance_reason="a measurement",
        instances=joint_cases,
        compute=compute,
        residual=residual_excess,
        corruptions={},
        applies_to=APPLIES_TO,
        examples=6,
    ),
]
