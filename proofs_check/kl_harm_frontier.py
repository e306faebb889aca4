"""The KL–harm frontier is traced by the tilt; best-of-N's KL and its usual bound (docs/theory.md §11).

Statement: for every ``c``, ``F(c) = min{KL(π‖π_0) : E_π[h] ≤ c}`` is attained by a tilt
``π_λ ∝ π_0 e^{−λh}`` with ``E_λ[h] = c`` (``KL(π‖π_0) = KL(π‖π_λ) − λE_π[h] − log Z(λ) ≥
KL(π_λ‖π_0)`` when ``E_π[h] ≤ c``), so every method's optimum lies on or above it. For a binary harm
(``h ∈ {0, 1}``, ``p = P_0(h = 1)``) the frontier is the Bernoulli KL
``c log(c/p) + (1 − c) log((1 − c)/(1 − p))``, and every reweighting ``π ∝ π_0 f(h)`` lies exactly on
it (it keeps ``π_0`` inside each harm level, so its KL is the KL of the levels' masses). Best-of-N
(least harm of ``N`` draws, ties uniform) has ``KL ≤ log N − (N − 1)/N``, approached only without
ties. Three checks:

* ``frontier_binary`` -- binary harms, every policy family: ``toysim.frontier_kl`` (bisection on the
  library's tilt, ``toysim.reweighting`` with ``toysim.tilt_log_weights``) at ``c ∈ {0, p/10, p/2,
  9p/10, p}`` against the Bernoulli closed form; and ``(E_π[h], KL(π‖π_0))`` of the five
  reweightings (tilt, DPO, IPO, rejection sampling at 0, best-of-N, from the library's weights)
  against the closed form at their ``E_π[h]``, with ``|KL − F(E_π[h])|`` (on the frontier).
* ``methods_above_frontier`` -- every method of ``toysim.compare_methods`` (tabular ``π_0``,
  ``V = 2, T = 3``, recovery token 0, 30 training steps for the trained ones): its
  ``KL − F(E_π[h])`` is at least ``−tolerance``, where ``F`` is an independent numpy bisection on the
  sequence-level tilt (:func:`proofs_check.method_reference.tilt_frontier`); the method's reported
  ``frontier_kl`` equals it; for binary harms the reweightings' gap is 0 (both sides).
* ``best_of_n_kl`` -- ``KL(π_BoN ‖ π_0)`` by enumerating every ``N``-tuple of responses
  (``N ≤ 3``, ``V^T ≤ 27``, ``least harm, ties uniform``) against ``toysim.best_of_n_kl`` and the
  engine's KL of ``toysim.best_of_n_log_weights``; ``KL ≤ toysim.best_of_n_kl_bound(N)`` and that
  bound against ``log N − (N − 1)/N``; and, for the same ``N``, the no-ties limit: ``L`` equally
  likely distinct harm values, ``L = 10, 100, 1000``, with the KL written as
  ``Σ_i q_i log(L q_i)``, ``q_i = ((L − i + 1)^N − (L − i)^N)/L^N``: the library's KL matches it,
  the gap to the bound is positive and decreasing in ``L`` and below 1e-5 at ``L = 1000``
  (measured ``≈ 0.5/L²``), while with ties the gap is large: the finding ``best_of_n_bound_gap``
  reports the largest ``log N − (N−1)/N − KL`` over drawn instances (the whole bound when ``h`` is
  constant).

Residual: the largest absolute difference (closed form against the library, brute force against
the library), plus the excess of every inequality (``F − KL``, ``KL − bound``) and, for the no-ties
limit, 1 if a gap is not positive and decreasing or exceeds 1e-5.

Tolerance 1e-10: the bisections resolve ``λ`` to float64 (200 halvings, stopped when the midpoint
no longer moves), so ``E_λ[h]`` matches the target to ~1e-16 relative and the KL to ``λ`` times that
(measured residuals at most 2.2e-13); the KLs are sums of ≤ 27 terms of order one; the tuple
enumeration sums ≤ 27³ products of three probabilities (~1e-15). A real error (a missing position of ``D_t``,
a frontier at the wrong ``λ``) reads 0.19 and more on these instances.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

import toysim

from . import method_reference as mref
from . import reference as ref
from ._framework import Check
from .strategies import BINARY_HARM_KINDS, instances, small_instances

TOLERANCE = 1e-10
REASON = (
    "bisection on λ to float64 (KL error ~λ·1e-16); KLs are sums of ≤ 27 terms of order one; the N-tuple "
    "enumeration sums ≤ 27³ products (~1e-15)"
)
_reweighting = jax.jit(toysim.reweighting)


def _harm_and_kl(base, h):
    """``λ -> (E_λ[h], KL(π_λ‖π_0))`` of the library's tilt (a memo per ``λ``)."""
    cache = {}

    def f(lam):
        if lam not in cache:
            r = _reweighting(base, jnp.asarray(toysim.tilt_log_weights(h, lam)), jnp.asarray(h))
            cache[lam] = (float(r.expected_harm), float(r.kl))
        return cache[lam]

    return f


# ------------------------------------------------------------------ frontier_binary


class BinaryCase(NamedTuple):
    """An instance with a binary harm and the reweightings' settings."""

    instance: toysim.Instance
    beta: float
    beta_r: float
    n: int


def binary_cases():
    return st.builds(
        BinaryCase,
        instances(harm_kinds=BINARY_HARM_KINDS),
        st.sampled_from([0.5, 1.0, 2.0]),
        st.sampled_from([0.5, 1.0, 4.0]),
        st.integers(2, 4),
    )


FRACTIONS = (0.0, 0.1, 0.5, 0.9, 1.0)


def _library_weights(name, h, probs, case, lam):
    if name == "tilt":
        return toysim.tilt_log_weights(h, lam)
    if name == "dpo":
        return toysim.dpo_log_weights(h, case.beta, case.beta_r)
    if name == "ipo":
        return toysim.ipo_log_weights(h, probs, case.beta, case.beta_r)
    if name == "rejection_sampling":
        return toysim.rejection_log_weights(h, probs, 0.0)
    return toysim.best_of_n_log_weights(h, probs, case.n)


def compute_binary(case: BinaryCase):
    inst = case.instance
    policy = inst.policy
    h = np.asarray(toysim.harm_values(inst.harm, policy.vocab_size, policy.horizon), dtype=np.float64)
    base = toysim.forward(policy, inst.params)
    probs = np.exp(np.asarray(base.log_prefix[-1]))
    levels, level_probs = toysim.harm_levels(h, probs)
    harm_and_kl = _harm_and_kl(base, h)
    p = float(np.sum(ref.brute_force(policy, inst.params, inst.harm, with_scores=False).leaf * h))
    q = {"p": p, "targets": [], "frontier": [], "methods": {}}
    if not 0 < p < 1:
        return q  # a constant harm: no frontier to speak of (not exercised)
    for u in FRACTIONS:
        q["targets"].append(u * p)
        q["frontier"].append(toysim.frontier_kl(harm_and_kl, u * p, levels, level_probs))
    for name in mref.METHODS:
        log_w = _library_weights(name, h, probs, case, float(inst.lam))
        r = _reweighting(base, jnp.asarray(log_w), jnp.asarray(h))
        q["methods"][name] = (float(r.expected_harm), float(r.kl))
    q["base"], q["h"], q["probs"], q["levels"], q["level_probs"] = base, h, probs, levels, level_probs
    return q


def residual_binary(q):
    worst = 0.0
    for c, f in zip(q["targets"], q["frontier"]):
        worst = max(worst, abs(f - mref.bernoulli_kl(c, q["p"])) if f is not None else math.inf)
    for e, kl in q["methods"].values():
        worst = max(worst, abs(kl - mref.bernoulli_kl(min(max(e, 0.0), 1.0), q["p"])))
    return worst if not math.isnan(worst) else math.nan


def exercised_binary(q):
    return 0 < q["p"] < 1


def _kl_without_first_position(q):
    # D_1 dropped from every KL (the frontier's and the methods')
    def harm_and_kl(lam):
        r = _reweighting(q["base"], jnp.asarray(toysim.tilt_log_weights(q["h"], lam)), jnp.asarray(q["h"]))
        return float(r.expected_harm), float(jnp.sum(r.kl_by_position[1:]))

    frontier = [toysim.frontier_kl(harm_and_kl, c, q["levels"], q["level_probs"]) for c in q["targets"]]
    return {**q, "frontier": frontier}


def _harm_under_base(q):
    # E_π[h] taken under π_0: every method reported at the base policy's harm
    return {**q, "methods": {m: (q["p"], kl) for m, (_, kl) in q["methods"].items()}}


def _frontier_from_wrong_sign_tilt(q):
    def harm_and_kl(lam):
        r = _reweighting(q["base"], jnp.asarray(lam * q["h"]), jnp.asarray(q["h"]))
        return float(r.expected_harm), float(r.kl)

    frontier = [toysim.frontier_kl(harm_and_kl, c, q["levels"], q["level_probs"]) for c in q["targets"]]
    return {**q, "frontier": frontier}


# ------------------------------------------------------------------ methods_above_frontier

COMPARE_STEPS = 30


def frontier_cases():
    return small_instances(policy_kinds=("tabular",), vocab_size=2, horizons=(3,)).filter(
        lambda inst: float(np.max(toysim.harm_values(inst.harm, 2, 3))) > 0
    )


def compute_methods(inst):
    policy = inst.policy
    r = ref.brute_force(policy, inst.params, inst.harm, with_scores=False)
    values = np.unique(r.h)
    settings = toysim.MethodSettings(
        recovery=[0], steps=COMPARE_STEPS, threshold=float(values[len(values) // 2])
    )
    out = toysim.compare_methods(inst, settings=settings, engine="enumerate")
    return {
        "methods": {m: (o.expected_harm, o.kl, o.frontier_kl) for m, o in out.methods.items()},
        "leaf": r.leaf,
        "h": r.h,
        "binary": bool(np.all((r.h == 0) | (r.h == 1))),
        "e0": float(np.sum(r.leaf * r.h)),
    }


def residual_methods(q):
    worst = 0.0
    for name, (e, kl, frontier) in q["methods"].items():
        f = mref.tilt_frontier(q["leaf"], q["h"], e)
        if frontier is None or math.isnan(f):
            return math.inf
        worst = max(worst, f - kl, abs(frontier - f))
        if q["binary"] and name in mref.METHODS:
            worst = max(worst, abs(kl - f))
    return worst


def exercised_methods(q):
    return any(e < q["e0"] - 1e-9 for e, _, _ in q["methods"].values())


def _method_below_frontier(q):
    # a KL computed with D_T only (the methods' KL missing its earlier positions): below the frontier
    return {**q, "methods": {m: (e, 0.5 * kl, f) for m, (e, kl, f) in q["methods"].items()}}


def _frontier_reported_at_base_harm(q):
    return {**q, "methods": {m: (e, kl, 0.0) for m, (e, kl, _) in q["methods"].items()}}


# ------------------------------------------------------------------ best_of_n_kl

NO_TIE_LEVELS = (10, 100, 1000)
NO_TIE_GAP = 1e-5


class BestOfNCase(NamedTuple):
    instance: toysim.Instance
    n: int


def best_of_n_cases():
    return st.builds(BestOfNCase, instances(), st.integers(1, 3))


def _no_tie_kl(n: int, size: int) -> float:
    i = np.arange(size, dtype=np.float64)
    q = ((size - i) ** n - (size - i - 1) ** n) / float(size) ** n
    return float(np.sum(q * np.log(q * size)))


def compute_best_of_n(case: BestOfNCase):
    inst, n = case.instance, case.n
    policy = inst.policy
    h = np.asarray(toysim.harm_values(inst.harm, policy.vocab_size, policy.horizon), dtype=np.float64)
    base = toysim.forward(policy, inst.params)
    probs = np.exp(np.asarray(base.log_prefix[-1]))
    log_w = toysim.best_of_n_log_weights(h, probs, n)
    engine = _reweighting(base, jnp.asarray(log_w), jnp.asarray(h))
    r = ref.brute_force(policy, inst.params, inst.harm, with_scores=False)
    brute = mref.sequence_kl(mref.best_of_n_law(r.leaf, r.h, n), r.leaf)
    no_ties = []
    for size in NO_TIE_LEVELS:
        uniform = np.full(size, 1.0 / size)
        no_ties.append(
            (toysim.best_of_n_kl(np.arange(size, dtype=np.float64), uniform, n), _no_tie_kl(n, size))
        )
    bound = toysim.best_of_n_kl_bound(n)
    return {
        "library": toysim.best_of_n_kl(h, probs, n),
        "engine": float(engine.kl),
        "brute": brute,
        "bound": bound,
        "formula": math.log(n) - (n - 1) / n,
        "no_ties": no_ties,
        "gap": bound - brute,
        "levels": int(np.unique(r.h).size),
        "n": n,
        "h": h,
        "probs": probs,
        "base": base,
    }


def residual_best_of_n(q):
    worst = max(
        abs(q["library"] - q["brute"]),
        abs(q["engine"] - q["brute"]),
        abs(q["bound"] - q["formula"]),
        q["brute"] - q["bound"],
        q["library"] - q["bound"],
    )
    gaps = []
    for library, formula in q["no_ties"]:
        worst = max(worst, abs(library - formula))
        gaps.append(q["bound"] - library)
    if q["n"] > 1:  # N = 1 is π_0: KL 0 = bound, no gap to shrink
        ok = (
            all(g > 0 for g in gaps) and all(a > b for a, b in zip(gaps, gaps[1:])) and gaps[-1] <= NO_TIE_GAP
        )
        worst += 0.0 if ok else 1.0
    return worst if not math.isnan(worst) else math.nan


def exercised_best_of_n(q):
    return q["levels"] > 1 and q["n"] > 1


def bound_gap(q):
    """``log N − (N−1)/N − KL``: how far best-of-N stays below its usual formula (NaN for ``N = 1``)."""
    return q["gap"] if q["n"] > 1 else math.nan


def _bound_without_correction(q):
    # log N alone (the −(N−1)/N dropped) as the bound
    return {**q, "bound": math.log(q["n"])}


def _one_draw_too_few(q):
    # best-of-(N−1): an off-by-one in the number of draws, in the library's KL and the engine's weights
    n = max(1, q["n"] - 1)
    log_w = toysim.best_of_n_log_weights(q["h"], q["probs"], n)
    engine = _reweighting(q["base"], jnp.asarray(log_w), jnp.asarray(q["h"]))
    return {**q, "library": toysim.best_of_n_kl(q["h"], q["probs"], n), "engine": float(engine.kl)}


def _bound_from_the_ties(q):
    # the no-ties limit evaluated on the instance's own (tied) levels: no longer approaching the bound
    return {**q, "no_ties": [(q["library"], q["brute"])] * len(NO_TIE_LEVELS)}


CHECKS = [
    Check(
        name="frontier_binary",
        result="(ours)",
        section="§11",
        statement="For a binary harm the KL–harm frontier is the Bernoulli KL, and every reweighting lies "
        "exactly on it.",
        latex=r"F(c)=c\log\frac cp+(1-c)\log\frac{1-c}{1-p};\quad \mathrm{KL}(\pi_0 f(h)\,\|\,\pi_0)"
        r"=F(\mathbb{E}_{\pi_0 f}[h])",
        kind="theorem",
        tolerance=TOLERANCE,
        tolerance_reason=REASON,
        instances=binary_cases,
        compute=compute_binary,
        residual=residual_binary,
        corruptions={
            "D_1 dropped from the tilt's KL": _kl_without_first_position,
            "E[h] taken under π_0": _harm_under_base,
            "frontier traced by π_0 e^{+λh}": _frontier_from_wrong_sign_tilt,
        },
        applies_to="tabular, Markov (order 1, 2) and MLP base policies; binary harms; tilt, DPO, IPO, "
        "rejection at 0, best-of-N (N ≤ 4)",
        examples=15,
        exercised=exercised_binary,
    ),
    Check(
        name="methods_above_frontier",
        result="(ours)",
        section="§11",
        statement="Every method's optimum lies on or above the KL–harm frontier; reweightings lie on it for "
        "binary harms.",
        latex=r"\mathrm{KL}(\pi_m\|\pi_0)\ \ge\ \min\{\mathrm{KL}(\pi\|\pi_0):\mathbb{E}_\pi[h]\le\mathbb{E}_{\pi_m}[h]\}",
        kind="theorem",
        tolerance=TOLERANCE,
        tolerance_reason=REASON,
        instances=frontier_cases,
        compute=compute_methods,
        residual=residual_methods,
        corruptions={
            "a method's KL halved": _method_below_frontier,
            "frontier reported as 0": _frontier_reported_at_base_harm,
        },
        applies_to="tabular π_0, V = 2, T = 3, every harm family with some harm; all nine methods of "
        "compare_methods (recovery token 0, 30 steps)",
        examples=4,
        exercised=exercised_methods,
    ),
    Check(
        name="best_of_n_kl",
        result="(ours; Beirami et al. 2024 for the bound)",
        section="§11",
        statement="Best-of-N's exact KL (ties uniform) matches N-tuple enumeration and is at most "
        "log N − (N−1)/N, approached without ties.",
        latex=r"\mathrm{KL}(\pi_{\mathrm{BoN}}\|\pi_0)=\sum_h q(h)\log\frac{q(h)}{P_0(h)}\le\log N-\frac{N-1}N",
        kind="theorem",
        tolerance=TOLERANCE,
        tolerance_reason=REASON,
        instances=best_of_n_cases,
        compute=compute_best_of_n,
        residual=residual_best_of_n,
        corruptions={
            "bound log N without −(N−1)/N": _bound_without_correction,
            "one draw too few (N − 1)": _one_draw_too_few,
            "no-ties limit on tied levels": _bound_from_the_ties,
        },
        applies_to="tabular, Markov (order 1, 2) and MLP base policies; every harm family; N ≤ 3",
        examples=15,
        exercised=exercised_best_of_n,
    ),
    Check(
        name="best_of_n_bound_gap",
        result="(ours, measured)",
        section="§11",
        statement="How loose log N − (N−1)/N is for best-of-N on drawn instances (harms with ties).",
        latex=r"\log N-\frac{N-1}N-\mathrm{KL}(\pi_{\mathrm{BoN}}\|\pi_0)",
        kind="finding",
        tolerance=0.0,
        tolerance_reason="a measurement: the largest gap (the whole bound when h is constant)",
        instances=best_of_n_cases,
        compute=compute_best_of_n,
        residual=bound_gap,
        corruptions={},
        applies_to="tabular, Markov (order 1, 2) and MLP base policies; every harm family; 2 ≤ N ≤ 3",
        examples=15,
    ),
]
