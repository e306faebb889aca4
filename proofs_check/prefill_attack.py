"""Prefilling attacks in toy form (THEORY.md §9, Qi et al. 2025).

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
  *every* depth", checked before on one fixed case, is false on random instances: L-BFGS
  converged to ``‖∇L‖ ≤ 1e-14`` (a stationary point; the joint objective is not convex) gives
  ``A_deep(k) > A_std(k)`` at shallow depths, by up to ~0.05 (e.g. depth 0: 0.377 against 0.340,
  while depth 2 drops from 0.996 to 3e-28). The joint objective weights the KL by ``π_θ``, so the
  optimum steers away early from the prefixes where it must later deviate from ``π_0`` to
  recover (those with ``Q`` mass), which can mean choosing non-recovery tokens at the root.

Inputs: :func:`proofs_check.gibbs_form.joint_cases` (random ``V = 2, T = 3`` instances).
"""

from __future__ import annotations

import numpy as np

import toysim
from toysim import _recovery as rc

from ._framework import Check
from .gibbs_form import joint_cases, optimum, solved

MARGIN = 1e-9
APPLIES_TO = "tabular π_0 (V = 2, T = 3), binary harms, Q = π_0 | harm or a jailbroken policy"


def compute(case):
    s = solved(case)
    V, T = s.base.vocab_size, s.base.horizon
    k_h = int(toysim.uniform_horizon(toysim.determined_masks(s.h, V, T)))
    std = rc.standard_optimum(s.base, s.h, float(case.instance.lam))
    return {
        "horizon": k_h,
        "base": np.asarray(rc.attack_success(s.base, s.spec)),
        "standard": np.asarray(rc.attack_success(std, s.spec)),
        "deep": np.asarray(rc.attack_success(optimum(case, "joint"), s.spec)),
    }


def residual_equal(q):
    k = q["horizon"]
    return float(np.max(np.abs(q["standard"][k:] - q["base"][k:]), initial=0.0))


def residual_below(q):
    return max(0.0, MARGIN - float(q["standard"][-1] - q["deep"][-1]))


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
        tolerance_reason="the tilt keeps determined prefixes' log-probabilities bit for bit",
        instances=joint_cases,
        compute=compute,
        residual=residual_equal,
        corruptions={"deep curve in place of the standard one": lambda q: {**q, "standard": q["deep"]}},
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
