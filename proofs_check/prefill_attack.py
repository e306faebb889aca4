"""Prefilling attacks in toy form (THEORY.md §9, Qi et al. 2025).

Attack success at depth ``k`` is ``A(k) = E_{p ~ Q_k}[P_θ(no recovery token in positions k+1..T | p)]``
(``k = 0..T−1``), computed by a masked backward pass over the engine's levels.

Statements checked, for ``π_0``, the standard-aligned optimum (the tilt ``π* ∝ π_0 e^{−λh}``) and
the deep-aligned optimum (``L_deep`` trained by L-BFGS over tabular policies):

* ``prefill_standard_is_base`` (*ours*, from [Thm 10]): the standard curve equals the base curve at
  every depth ``k ≥ k_h`` (the uniform harm horizon): the tilt leaves every determined prefix's
  conditional law unchanged bit for bit, and ``A(k)`` only reads prefixes of length ``≥ k``.
  Residual ``max_{k ≥ k_h} |A_std(k) − A_0(k)|``; tolerance 0 (exact equality, same arithmetic).
* ``prefill_deep_below_standard`` (*ours*): the deep curve lies strictly below the standard one at
  every depth. Residual ``max(0, 1e-9 − min_k (A_std(k) − A_deep(k)))``: zero iff the deep curve is
  below by more than the optimiser's precision (1e-9) at every depth; tolerance 0.
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
    return max(0.0, MARGIN - float(np.min(q["standard"] - q["deep"])))


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
        "standard-aligned one at every depth.",
        latex=r"A_{\mathrm{deep}}(k)<A_{\pi^*}(k)\quad k=0..T-1",
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
]
