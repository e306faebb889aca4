"""The harm horizon: no information after it, and only then [Thm 9] (docs/theory.md §5).

Statement: for every ``k ∈ {0, …, T}``, ``I_t = 0`` for all ``t > k`` if and only if the harm is a
function of the first ``k`` tokens, ``h(y) = g(y_≤k)`` (every prefix of length ``k`` is
determined). Both directions are tested at every ``k``, so the smallest such ``k``, the uniform
horizon ``toysim.uniform_horizon``, is also the last position with positive harm information
(the horizon is minimal).

The horizon quantities are also compared with brute force (``proofs_check.reference``): the
per-sequence horizon ``τ(y)`` (``toysim.sequence_horizon``) with ``min{t : h(y_≤t, c) is the same
for every continuation c}`` found by listing the continuations, the determined prefixes
(``toysim.determined_masks``), ``k = max_y τ(y)``, ``P(τ = t)`` (``toysim.horizon_distribution``)
with ``Σ_y P(y) 1[τ(y) = t]`` from per-sequence probabilities, and ``I_t`` with
``Σ_p P(p) Var(H_t | p)`` from per-sequence sums.

Inputs: :func:`proofs_check.strategies.early_horizon_instances`, whose harms are mostly decided
before ``T`` (``k < T``), with some ``g(y_≤m)`` tables with ties and some full-length harms.

Residual: the number of ``k`` at which the two sides disagree, plus ``|k_engine − k_info|`` where
``k_info = max{t : I_t > 0}`` (0 if none), plus the number of sequences whose ``τ`` differs, of
determined flags that differ and ``|k_engine − k_reference|``; plus the excess of the float
comparisons (``P(τ = t)``, ``I_t``) over ``tolerances.REFERENCE``.

Tolerance 0 (exact): the integers and booleans are exact (determination compares harm values,
data, no arithmetic; the engine keeps constants exact, so below a determined prefix every
innovation, hence every ``I_t``, is exactly 0; before the horizon ``I_t`` is a sum containing a
strictly positive term); the float comparisons enter only by their excess over 1e-10
(``tolerances.REFERENCE``: sums of ≤ 27 probabilities on both sides).

Exercised: an input with ``k < T`` (some position lies past the horizon).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import toysim

from . import reference as ref
from . import tolerances as tol
from ._framework import Check
from .strategies import horizon_instances


def compute(inst):
    policy = inst.policy
    v, horizon = policy.vocab_size, policy.horizon
    h = ref.jnp_h(inst)
    levels = toysim.forward(policy, inst.params)
    info = np.asarray(toysim.harm_information(levels, toysim.harm_martingale(levels, h)))
    masks = toysim.determined_masks(h, v, horizon)
    r = ref.brute_force(policy, inst.params, inst.harm, with_scores=False)
    return {
        "information": info,
        "determined": np.asarray([bool(jnp.all(m)) for m in masks]),  # level k all determined
        "horizon": int(toysim.uniform_horizon(masks)),
        "masks": [np.asarray(m) for m in masks],
        "tau": np.asarray(toysim.sequence_horizon(masks)),
        "tau_distribution": np.asarray(toysim.horizon_distribution(levels, masks)),
        "ref_masks": r.determined,
        "ref_tau": r.tau,
        "ref_horizon": r.horizon,
        "ref_tau_distribution": r.tau_distribution,
        "ref_information": r.information,
        "T": horizon,
    }


def _mismatches(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.sum(a != b)) if a.shape == b.shape else float("inf")


def residual(q):
    info, determined = q["information"], q["determined"]
    no_information_after = np.asarray([bool(np.all(info[k:] == 0.0)) for k in range(len(determined))])
    positive = np.nonzero(info > 0.0)[0]
    k_info = int(positive[-1]) + 1 if positive.size else 0
    exact = float(np.sum(no_information_after != determined) + abs(q["horizon"] - k_info))
    exact += _mismatches(q["tau"], q["ref_tau"]) + abs(q["horizon"] - q["ref_horizon"])
    if len(q["masks"]) != len(q["ref_masks"]):
        exact += float("inf")
    else:
        exact += sum(_mismatches(m, r) for m, r in zip(q["masks"], q["ref_masks"]))
    floats = ref.max_error([(q["tau_distribution"], q["ref_tau_distribution"]), (info, q["ref_information"])])
    return exact + max(0.0, floats - tol.REFERENCE)


def exercised(q):
    return q["ref_horizon"] < q["T"]


def _information_one_position_early(q):
    info = np.append(q["information"][1:], 0.0)
    return {**q, "information": info}


def _horizon_one_position_late(q):
    determined = np.append(False, q["determined"][:-1])
    return {**q, "determined": determined, "horizon": q["horizon"] + 1}


def _tau_one_less(q):
    # τ(y) counting the undetermined prefixes from length 1 instead of 0
    return {**q, "tau": np.maximum(q["tau"] - 1, 0)}


def _tau_distribution_one_late(q):
    # P(τ = t) reported at t + 1
    return {**q, "tau_distribution": np.append(0.0, q["tau_distribution"][:-1])}


CHECKS = [
    Check(
        name="horizon_equivalence",
        result="[Thm 9]",
        section="§5",
        statement="I_t = 0 for every t > k iff h is a function of y_≤k; the uniform horizon is the last "
        "position with positive harm information; τ(y), k and P(τ = t) equal their brute-force values.",
        latex=r"\big(\forall t>k:\ I_t=0\big)\iff h(y)=g(y_{\le k}),\qquad k^*=\max\{t: I_t>0\}",
        kind="theorem",
        tolerance=tol.EXACT,
        tolerance_reason="exact booleans and integers: determination compares data, and the engine keeps "
        "constants exact, so I_t is exactly 0 past the horizon; float comparisons count only beyond 1e-10",
        instances=lambda: horizon_instances(),
        compute=compute,
        residual=residual,
        corruptions={
            "I_t read one position early": _information_one_position_early,
            "horizon one position late": _horizon_one_position_late,
            "τ(y) one less (off by one)": _tau_one_less,
            "P(τ = t) one position late": _tau_distribution_one_late,
        },
        applies_to="tabular, Markov (order 1, 2) and MLP policies; harms of every family over the first "
        "m < T tokens, deadline harms, g(y_≤m) tables and full-length harms",
        examples=25,
        exercised=exercised,
    )
]
