"""The equilibrium tilt and its KL chain rule [Thm 14 first part, Cor 15] (docs/theory.md §7).

Statement: the minimiser over all policies of ``L(π) = λ E_π[h] + KL(π ‖ π_0)`` is the tilt
``π*(y) = π_0(y) e^{−λ h(y)} / Z_0`` with ``Z_0 = E_{π_0}[e^{−λh}]``, and ``L(π*) = −log Z_0``;
its per-position KLs add up, ``Σ_t D_t = KL(π* ‖ π_0)``. Three checks:

* ``tilt_form`` -- the engine's per-token tilt ``π_0(v|p) Z_t(p·v) / Z_{t−1}(p)``
  (``toysim.tilt``), multiplied along every sequence, equals ``π_0(y) e^{−λh(y)} / Z_0`` computed
  in numpy from the leaves (``log`` space, ``Z_0`` by ``logsumexp``).
* ``tilt_kl_sum`` -- ``Σ_t D_t`` (``Equilibrium.kl_by_position``) equals the sequence-level
  ``KL(π* ‖ π_0)`` summed over leaves, which equals ``−λ E_{π*}[h] − log Z_0``.
* ``tilt_minimises`` -- ``L(π*) = −log Z_0`` and ``L(π*) ≤ L(π)`` for random perturbations ``π``
  of ``π*`` (every prefix's logits moved by ``±s·ε``, ``ε`` Gaussian, ``s ∈ {1e-3, 1e-1, 1}``), for
  ``π_0`` itself and for the uniform policy; ``L`` evaluated exactly by enumeration.

References: the base policy's sequence log-probabilities and conditional laws come from brute force
(``proofs_check.reference``: the policy's definition per prefix, products per sequence), not the
engine's ``forward``; ``tilt_kl_sum`` also compares every ``D_t`` and every per-prefix KL with the
tilt computed from sequence-level probabilities summed below each prefix.

Residual: the largest absolute difference (log-probabilities, KLs, ``L``), or for
``tilt_minimises`` also ``max(0, L(π*) − min L(candidates))``.

Tolerance 1e-10 (``tilt_form``, ``tilt_kl_sum``): float64 identities on log-probabilities of size
up to ~30 after O(T) additions (~1e-14 each). ``tilt_minimises`` 1e-12: ``L`` is a sum of
``V^T ≤ 27`` terms of size ``≤ λ + 30`` (rounding ~1e-14 at most), and a real violation of
optimality at the smallest perturbation ``s = 1e-3`` is first-order, ~1e-3 · |∇L| ≫ 1e-12.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

import toysim

from . import reference as ref
from ._framework import Check
from .strategies import instances


def _logsumexp(x: np.ndarray) -> float:
    m = float(np.max(x))
    return m + float(np.log(np.sum(np.exp(x - m))))


def _leaf_log_prob(log_cond) -> np.ndarray:
    """``log P(y)`` of every sequence, accumulated in numpy (independent of the engine)."""
    leaf = np.zeros(1)
    for lc in log_cond:
        leaf = (leaf[:, None] + np.asarray(lc)).reshape(-1)
    return leaf


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def _setup(inst):
    policy = inst.policy
    h = np.asarray(toysim.harm_values(inst.harm, policy.vocab_size, policy.horizon), dtype=np.float64)
    base = toysim.forward(policy, inst.params)
    return h, base, toysim.tilt(base, jnp.asarray(h), inst.lam)


def _brute(inst):
    return ref.brute_force(inst.policy, inst.params, inst.harm, with_scores=False)


def compute_form(inst):
    h, base, eq = _setup(inst)
    return {
        "log_star": np.asarray(eq.levels.log_prefix[-1]),
        "log_base": np.log(_brute(inst).leaf),
        "h": h,
        "lam": float(inst.lam),
    }


def residual_form(q):
    unnormalised = q["log_base"] - q["lam"] * q["h"]
    expected = unnormalised - _logsumexp(unnormalised)
    return float(np.max(np.abs(q["log_star"] - expected)))


def _wrong_sign(q):
    # π_0 e^{+λh} / Z: the tilt towards harm
    tilted = q["log_base"] + q["lam"] * q["h"]
    return {**q, "log_star": tilted - _logsumexp(tilted)}


def _not_normalised(q):
    return {**q, "log_star": q["log_base"] - q["lam"] * q["h"]}


def compute_kl_sum(inst):
    h, base, eq = _setup(inst)
    r = _brute(inst)
    d, prefix_kl, _ = ref.tilt_kl(r.cond, r.leaf, r.h, float(inst.lam), inst.policy.vocab_size)
    return {
        "kl_by_position": np.asarray(eq.kl_by_position),
        "prefix_kl": [np.asarray(k) for k in eq.prefix_kl],
        "log_prefix_base": [np.asarray(x) for x in base.log_prefix],
        "log_star": np.asarray(eq.levels.log_prefix[-1]),
        "log_base": np.log(r.leaf),
        "h": h,
        "lam": float(inst.lam),
        "ref_kl_by_position": d,
        "ref_prefix_kl": prefix_kl,
    }


def residual_kl_sum(q):
    p_star = np.exp(q["log_star"])
    kl_seq = float(np.sum(np.where(p_star > 0, p_star * (q["log_star"] - q["log_base"]), 0.0)))
    log_z0 = _logsumexp(q["log_base"] - q["lam"] * q["h"])
    closed = -q["lam"] * float(np.sum(p_star * q["h"])) - log_z0
    reference = ref.max_error(
        [(q["kl_by_position"], q["ref_kl_by_position"]), (q["prefix_kl"], q["ref_prefix_kl"])]
    )
    return float(max(abs(float(np.sum(q["kl_by_position"])) - kl_seq), abs(kl_seq - closed), reference))


def _weighted_by_base(q):
    # D_t averaged over prefixes drawn from π_0 instead of π*
    d = [float(np.sum(np.exp(q["log_prefix_base"][t]) * k)) for t, k in enumerate(q["prefix_kl"])]
    return {**q, "kl_by_position": np.asarray(d)}


def _first_position_dropped(q):
    d = q["kl_by_position"].copy()
    d[0] = 0.0
    return {**q, "kl_by_position": d}


SCALES = (1e-3, 1e-1, 1.0)


def _objective(log_cond, base_leaf: np.ndarray, h: np.ndarray, lam: float) -> float:
    """``L(π) = λ E_π[h] + KL(π ‖ π_0)``, exactly, from ``π``'s conditional log-probabilities."""
    leaf = _leaf_log_prob(log_cond)
    p = np.exp(leaf)
    return float(lam * np.sum(p * h) + np.sum(np.where(p > 0, p * (leaf - base_leaf), 0.0)))


def compute_minimises(value):
    inst, seed = value
    h, base, eq = _setup(inst)
    rng = np.random.default_rng(seed)
    return {
        "star": [np.asarray(lc) for lc in eq.levels.log_cond],
        "base": [np.log(c) for c in _brute(inst).cond],
        "directions": [rng.standard_normal(np.shape(lc)) for lc in eq.levels.log_cond],
        "h": h,
        "lam": float(inst.lam),
    }


def residual_minimises(q):
    base_leaf = _leaf_log_prob(q["base"])
    h, lam = q["h"], q["lam"]
    value = _objective(q["star"], base_leaf, h, lam)
    log_z0 = _logsumexp(base_leaf - lam * h)
    candidates = [q["base"], [np.full_like(lc, -np.log(lc.shape[-1])) for lc in q["base"]]]
    for s in SCALES:
        for sign in (1.0, -1.0):
            moved = [lc + sign * s * d for lc, d in zip(q["star"], q["directions"])]
            candidates.append([_log_softmax(m) for m in moved])
    best = min(_objective(c, base_leaf, h, lam) for c in candidates)
    return float(max(abs(value + log_z0), value - best, 0.0))


def _wrong_sign_policy(q):
    base = toysim.levels_from_log_cond([jnp.asarray(lc) for lc in q["base"]])
    wrong = toysim.tilt(base, jnp.asarray(q["h"]), -q["lam"])
    return {**q, "star": [np.asarray(lc) for lc in wrong.levels.log_cond]}


def _half_lambda(q):
    base = toysim.levels_from_log_cond([jnp.asarray(lc) for lc in q["base"]])
    half = toysim.tilt(base, jnp.asarray(q["h"]), q["lam"] / 2)
    return {**q, "star": [np.asarray(lc) for lc in half.levels.log_cond]}


def _harm_varies(q):
    return bool(np.ptp(q["h"]) > 0)  # a constant harm leaves π_0 unchanged: nothing to tilt


ALL = "tabular, Markov (order 1, 2) and MLP base policies; every harm family; λ ∈ {0.1, 1, 4}"
LOG_TOLERANCE = "float64 identities on log-probabilities of size up to ~30 after O(T) additions"

CHECKS = [
    Check(
        name="tilt_form",
        result="[Thm 14]",
        section="§7",
        statement="The per-token tilt π_0(v|p) Z_t(p·v)/Z_{t−1}(p) multiplies out to π_0(y) e^{−λh(y)}/Z_0.",
        latex=r"\prod_t\pi_0(y_t\mid y_{<t})\frac{Z_t(y_{\le t})}{Z_{t-1}(y_{<t})}=\frac{\pi_0(y)\,e^{-\lambda h(y)}}{Z_0}",
        kind="theorem",
        tolerance=1e-10,
        tolerance_reason=LOG_TOLERANCE,
        instances=lambda: instances(),
        compute=compute_form,
        residual=residual_form,
        corruptions={"tilt with the wrong sign": _wrong_sign, "normaliser Z_0 omitted": _not_normalised},
        applies_to=ALL,
        examples=15,
        exercised=_harm_varies,
    ),
    Check(
        name="tilt_kl_sum",
        result="[Cor 15]",
        section="§7",
        statement="The per-position KLs D_t of the tilt add up to KL(π*‖π_0) = −λE_{π*}[h] − log Z_0.",
        latex=r"\sum_{t=1}^T D_t=\mathrm{KL}(\pi^*\|\pi_0)=-\lambda\,\mathbb{E}_{\pi^*}[h]-\log Z_0",
        kind="theorem",
        tolerance=1e-10,
        tolerance_reason=LOG_TOLERANCE,
        instances=lambda: instances(),
        compute=compute_kl_sum,
        residual=residual_kl_sum,
        corruptions={
            "D_t averaged over π_0's prefixes": _weighted_by_base,
            "first position's D_t dropped": _first_position_dropped,
        },
        applies_to=ALL,
        examples=15,
        exercised=_harm_varies,
    ),
    Check(
        name="tilt_minimises",
        result="[Thm 14]",
        section="§7",
        statement="The tilt minimises L = λE[h] + KL(π‖π_0) over all policies, with L(π*) = −log Z_0.",
        latex=r"L(\pi^*)=-\log Z_0\le L(\pi)\quad\forall\pi",
        kind="theorem",
        tolerance=1e-12,
        tolerance_reason="L is a sum of ≤ 27 terms (rounding ~1e-14); a non-optimal π* loses ~1e-3·|∇L| "
        "to the smallest perturbation",
        instances=lambda: st.tuples(instances(), st.integers(0, 2**31 - 1)),
        compute=compute_minimises,
        residual=residual_minimises,
        corruptions={"tilt with the wrong sign": _wrong_sign_policy, "tilt at λ/2": _half_lambda},
        applies_to=ALL + "; perturbations in the tabular family (all policies)",
        examples=10,
        exercised=_harm_varies,
    ),
]
