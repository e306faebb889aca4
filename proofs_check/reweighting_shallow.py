"""Every reweighting of the base policy by a function of the harm is shallow (docs/theory.md §11).

Statement: for every weight ``f`` of the harm alone, the policy ``π(y) ∝ π_0(y) f(h(y))`` has the
per-token law ``π(v|p) = π_0(v|p) W(p·v)/W(p)`` with ``W(p) = E_{π_0}[f(h) | p]``. At a determined
prefix ``p`` (``h = h*`` on every continuation) ``W(p·v) = f(h*)`` for every ``v``, so
``π(·|p) = π_0(·|p)``: the conditional KL is exactly 0 there and ``D_t = 0`` for every ``t > k``
(``k`` the uniform horizon). Prefixes of weight zero (``W(p) = 0``, below a rejected prefix) keep
``π_0`` by convention. Checked for the optima of five methods, with the library's weights:
the tilt (``toysim.tilt_log_weights``), DPO (``dpo_log_weights``, ``β, β_r``), IPO
(``ipo_log_weights``), rejection sampling at a threshold drawn among the harm's values
(``rejection_log_weights``) and best-of-N, ``N ∈ {1, 2, 3}`` (``best_of_n_log_weights``); the
policy is ``toysim.reweight(π_0, log f)``.

Residual: the sum of

* the exact part: the largest ``|prefix KL|`` (``Equilibrium.prefix_kl``) and ``|log π(v|p) −
  log π_0(v|p)|`` over determined prefixes, and ``|D_t|`` (``Equilibrium.kl_by_position``) over
  ``t > k``;
* the comparison with brute force (:mod:`proofs_check.method_reference`): the method's law over
  whole sequences from its definition (``π_0(y)f(h(y))`` normalised, IPO's ``g`` as a sum over
  responses, best-of-N by enumerating all ``N``-tuples of responses), summed below each prefix to
  ``π(v|p)``, its per-prefix KL and ``D_t``; the excess of the largest difference (conditionals,
  prefix KLs, ``D_t``) over 1e-10 (``tolerances.REFERENCE``) is added;
* the reference's own zeros: its prefix KL at determined prefixes and its ``D_t`` past its horizon
  must be below 1e-13 (``REFERENCE_ZERO``, the reason of ``zero_kl``: ratios of sums of at most 27
  leaf probabilities, ≤ ~60 ε); the excess is added. The determined prefixes and ``k`` come from
  :func:`proofs_check.reference.brute_force` (listed continuations).

Inputs: :func:`proofs_check.strategies.early_horizon_instances` (every policy family, harms decided
before ``T`` in most draws), a method, ``β ∈ {0.5, 1, 2}``, ``β_r ∈ {0.5, 1, 4}``, ``N`` and a
threshold index. Exercised: ``k < T``.

Tolerance 0 (exact) for the library: the log-space backward pass copies constants, so ``log W``
of the children of a determined prefix equal each other bit for bit, ``log π − log π_0`` is 0.0
there and so is every term of the KL (as for the tilt, ``zero_kl``).

Negative controls: a weight that depends on the sequence and not only on its harm,
``log f(y) = log f(h(y)) + ½·[last token]`` (the reweighting is then deep: the last position moves
at determined prefixes); and planted bugs on the library's quantities: ``π_0(v|p)W(p·v)`` not
divided by ``W(p)``, ``D_t`` averaged over ``π_0``'s prefixes instead of ``π``'s, and prefixes of
weight zero without the dead-state rule (``−inf − (−inf)``: NaN conditionals).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

import toysim

from . import method_reference as mref
from . import reference as ref
from . import tolerances as tol
from ._framework import Check
from .strategies import early_horizon_instances

REFERENCE_ZERO = 1e-13
SEQUENCE_DEPENDENCE = 0.5


class MethodCase(NamedTuple):
    """An instance (``π_0``, harm, ``λ``) and one method's settings."""

    instance: toysim.Instance
    method: str
    beta: float
    beta_r: float
    n: int
    level: int  # rejection threshold: the ``level``-th smallest harm value (mod their number)


@st.composite
def method_cases(draw, methods=mref.METHODS, policy_kinds=("tabular", "markov1", "markov2", "mlp")):
    """An early-horizon instance with a method and its settings."""
    return MethodCase(
        draw(early_horizon_instances(policy_kinds=policy_kinds)),
        draw(st.sampled_from(methods)),
        draw(st.sampled_from([0.5, 1.0, 2.0])),
        draw(st.sampled_from([0.5, 1.0, 4.0])),
        draw(st.integers(1, 3)),
        draw(st.integers(0, 3)),
    )


def settings_of(case: MethodCase, h: np.ndarray) -> dict:
    """The method's settings as numbers (the threshold resolved among ``h``'s values)."""
    values = np.unique(h)
    return {
        "lam": float(case.instance.lam),
        "beta": case.beta,
        "beta_r": case.beta_r,
        "n": case.n,
        "threshold": float(values[case.level % values.size]),
    }


def library_log_weights(name: str, h: np.ndarray, probs: np.ndarray, s: dict) -> np.ndarray:
    """``log f`` of a method from the library's public weight functions."""
    if name == "tilt":
        return toysim.tilt_log_weights(h, s["lam"])
    if name == "dpo":
        return toysim.dpo_log_weights(h, s["beta"], s["beta_r"])
    if name == "ipo":
        return toysim.ipo_log_weights(h, probs, s["beta"], s["beta_r"])
    if name == "rejection_sampling":
        return toysim.rejection_log_weights(h, probs, s["threshold"])
    return toysim.best_of_n_log_weights(h, probs, s["n"])


def compute(case: MethodCase):
    inst = case.instance
    policy = inst.policy
    v, horizon = policy.vocab_size, policy.horizon
    h = np.asarray(toysim.harm_values(inst.harm, v, horizon), dtype=np.float64)
    base = toysim.forward(policy, inst.params)
    probs = np.exp(np.asarray(base.log_prefix[-1]))
    s = settings_of(case, h)
    log_w = library_log_weights(case.method, h, probs, s)
    eq = toysim.reweight(base, jnp.asarray(log_w))
    r = ref.brute_force(policy, inst.params, inst.harm, with_scores=False)
    law = mref.method_law(case.method, r.leaf, r.h, s)
    ref_cond, ref_kl, ref_d, _ = mref.conditionals(law, r.cond, v)
    return {
        "log_star": [np.asarray(x) for x in eq.levels.log_cond],
        "log_base": [np.asarray(x) for x in base.log_cond],
        "log_prefix_base": [np.asarray(x) for x in base.log_prefix],
        "log_prefix_star": [np.asarray(x) for x in eq.levels.log_prefix],
        "log_partition": [np.asarray(x) for x in eq.log_partition],
        "prefix_kl": [np.asarray(x) for x in eq.prefix_kl],
        "kl_by_position": np.asarray(eq.kl_by_position),
        "log_weight": np.asarray(log_w, dtype=np.float64),
        "determined": r.determined[:horizon],
        "horizon": r.horizon,
        "ref_cond": ref_cond,
        "ref_prefix_kl": ref_kl,
        "ref_kl_by_position": ref_d,
        "V": v,
        "T": horizon,
    }


def exact_part(q) -> float:
    worst = float(np.max(np.abs(q["kl_by_position"][q["horizon"] :]), initial=0.0))
    for det, kl, star, base in zip(q["determined"], q["prefix_kl"], q["log_star"], q["log_base"]):
        worst = max(worst, float(np.max(np.abs(kl[det]), initial=0.0)))
        worst = max(worst, float(np.max(np.abs(star[det] - base[det]), initial=0.0)))
    return worst


def _has_nan(q) -> bool:
    arrays = [*q["log_star"], *q["prefix_kl"], q["kl_by_position"]]
    return any(bool(np.any(np.isnan(a))) for a in arrays)


def residual(q):
    if _has_nan(q):  # Python's max() would skip a NaN: a NaN anywhere is a failure, reported as NaN
        return float("nan")
    cond = [np.exp(x) for x in q["log_star"]]
    floats = ref.max_error(
        [
            (cond, q["ref_cond"]),
            (q["prefix_kl"], q["ref_prefix_kl"]),
            (q["kl_by_position"], q["ref_kl_by_position"]),
        ]
    )
    ref_zero = float(np.max(np.abs(q["ref_kl_by_position"][q["horizon"] :]), initial=0.0))
    for det, kl in zip(q["determined"], q["ref_prefix_kl"]):
        ref_zero = max(ref_zero, float(np.max(np.abs(kl[det]), initial=0.0)))
    return exact_part(q) + max(0.0, floats - tol.REFERENCE) + max(0.0, ref_zero - REFERENCE_ZERO)


def exercised(q):
    return q["horizon"] < q["T"]


def _replace_policy(q, eq):
    return {
        **q,
        "log_star": [np.asarray(x) for x in eq.levels.log_cond],
        "prefix_kl": [np.asarray(x) for x in eq.prefix_kl],
        "kl_by_position": np.asarray(eq.kl_by_position),
    }


def _sequence_dependent_weight(q):
    # f(y) = f(h(y)) e^{ε·y_T}: the weight sees the last token, not only the harm
    last = np.arange(q["log_weight"].size) % q["V"]
    base = toysim.levels_from_log_cond([jnp.asarray(x) for x in q["log_base"]])
    return _replace_policy(
        q, toysim.reweight(base, jnp.asarray(q["log_weight"] + SEQUENCE_DEPENDENCE * last))
    )


def _not_divided_by_parent(q):
    # π_0(v|p) W(p·v) without the division by W(p)
    star = [b + q["log_partition"][t + 1].reshape(b.shape) for t, b in enumerate(q["log_base"])]
    with np.errstate(invalid="ignore"):
        prefix_kl = [
            np.sum(np.where(np.isneginf(s), 0.0, np.exp(s) * (s - b)), axis=-1)
            for s, b in zip(star, q["log_base"])
        ]
    d = np.asarray([float(np.sum(np.exp(lp) * k)) for lp, k in zip(q["log_prefix_star"], prefix_kl)])
    return {**q, "log_star": star, "prefix_kl": prefix_kl, "kl_by_position": d}


def _averaged_over_base_prefixes(q):
    d = [float(np.sum(np.exp(lp) * k)) for lp, k in zip(q["log_prefix_base"], q["prefix_kl"])]
    return {**q, "kl_by_position": np.asarray(d)}


def _no_dead_state_rule(q):
    # log π_0 + (log W(p·v) − log W(p)) everywhere: −inf − (−inf) = NaN below a rejected prefix
    with np.errstate(invalid="ignore"):
        star = [
            b + (q["log_partition"][t + 1].reshape(b.shape) - q["log_partition"][t].reshape(-1, 1))
            for t, b in enumerate(q["log_base"])
        ]
    return {**q, "log_star": star}


CHECKS = [
    Check(
        name="reweighting_shallow",
        result="(ours, exact for every weight of the harm)",
        section="§11",
        statement="Every π ∝ π_0 f(h) (tilt, DPO, IPO, rejection sampling, best-of-N) keeps π_0 at every "
        "determined prefix, so D_t = 0 exactly for t > k.",
        latex=r"\pi(v\mid p)=\pi_0(v\mid p)\frac{W(pv)}{W(p)},\ W(p)=\mathbb{E}_0[f(h)\mid p];\quad "
        r"p\ \text{determined}\implies\pi(\cdot\mid p)=\pi_0(\cdot\mid p),\ D_t=0\ \forall t>k",
        kind="theorem",
        tolerance=0.0,
        tolerance_reason="exact: the log-space backward pass copies constants, so log W of a determined "
        "prefix's children agree bit for bit and log π − log π_0 is 0.0 there; the brute-force comparison "
        "is held to 1e-10 (float64 sums of ≤ 27 terms) and its own zeros to 1e-13",
        instances=lambda: method_cases(),
        compute=compute,
        residual=residual,
        corruptions={
            "weight depends on the last token, not only on h": _sequence_dependent_weight,
            "π_0 W(p·v) not divided by W(p)": _not_divided_by_parent,
            "D_t averaged over π_0's prefixes": _averaged_over_base_prefixes,
            "weight-zero prefixes without the dead-state rule (NaN)": _no_dead_state_rule,
        },
        applies_to="tabular, Markov (order 1, 2) and MLP base policies; early-horizon harms; tilt, DPO, "
        "IPO, rejection sampling, best-of-N (N ≤ 3)",
        examples=20,
        exercised=exercised,
    )
]
