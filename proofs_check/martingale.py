"""The harm martingale and its Doob decomposition [Def 1, Prop 2, Def 3, Prop 4] (docs/theory.md §2).

Statement: ``H_t = E[h | y_≤t]`` satisfies ``E[H_t | y_<t] = H_{t−1}``; the innovations
``Δ_t = H_t − H_{t−1}`` add up to ``h − H_0`` along every sequence and are orthogonal,
``E[Δ_s Δ_t] = 0`` for ``s ≠ t``.

Residual: the largest of ``|E[H_t | y_<t] − H_{t−1}|`` over prefixes, ``|H_0 + Σ_t Δ_t − h|`` over
sequences and ``|E[Δ_s Δ_t]|`` over pairs ``s ≠ t``, and of the differences between the engine
(``toysim.harm_martingale``, ``toysim.forward``) and brute force (``proofs_check.reference``):
``H_t(p)`` summed over the sequences below ``p`` and ``π(v|p)`` from the policy's definition. The
identities run on the engine's arrays; the reference makes them speak about the right ``H``.

Exercised: ``Var h > 0`` (for a constant harm every innovation is 0 and the identities are
trivial).

Tolerance 1e-10: float64 identities on values in [0, 1] after O(T·V) roundings of 1.1e-16.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import toysim

from . import reference as ref
from ._framework import Check
from .strategies import instances


def compute(inst):
    policy = inst.policy
    v, T = policy.vocab_size, policy.horizon
    h = jnp.asarray(toysim.harm_values(inst.harm, v, T))
    levels = toysim.forward(policy, inst.params)
    H = toysim.harm_martingale(levels, h)
    deltas = toysim.innovations(H)
    leaf_deltas = [np.repeat(np.asarray(d).reshape(-1), v ** (T - t)) for t, d in enumerate(deltas, start=1)]
    return {
        "H": [np.asarray(x) for x in H],
        "cond": [np.asarray(jnp.exp(lc)) for lc in levels.log_cond],
        "leaf_deltas": leaf_deltas,
        "p_leaf": np.asarray(jnp.exp(levels.log_prefix[-1])),
        "h": np.asarray(h),
        **_reference(inst),
    }


def _reference(inst):
    r = ref.brute_force(inst.policy, inst.params, inst.harm, with_scores=False)
    return {"ref_H": r.H, "ref_cond": r.cond, "ref_variance": r.variance}


def residual(q):
    H, cond = q["H"], q["cond"]
    errs = [0.0]
    for t in range(1, len(H)):
        errs.append(np.max(np.abs(np.sum(cond[t - 1] * H[t].reshape(cond[t - 1].shape), axis=-1) - H[t - 1])))
    errs.append(np.max(np.abs(H[0][0] + np.sum(q["leaf_deltas"], axis=0) - q["h"])))
    d = q["leaf_deltas"]
    for s in range(len(d)):
        for t in range(s + 1, len(d)):
            errs.append(abs(float(np.sum(q["p_leaf"] * d[s] * d[t]))))
    errs.append(ref.max_error([(H, q["ref_H"]), (cond, q["ref_cond"])]))
    return float(max(errs))


def _martingale_one_level_late(q):
    # H_t reported for the prefix of length t − 1 (children averaged once too often)
    H = [q["H"][0]] + [
        np.repeat(q["H"][t - 1], len(q["H"][t]) // len(q["H"][t - 1])) for t in range(1, len(q["H"]))
    ]
    return {**q, "H": H}


def _drop_last_innovation(q):
    # a Doob decomposition that forgets one position
    return {**q, "leaf_deltas": q["leaf_deltas"][:-1] + [np.zeros_like(q["leaf_deltas"][-1])]}


def _wrong_policy_martingale(q):
    # H computed as a plain average over children instead of the policy's conditional law
    H = [q["H"][-1]]
    for c in reversed(q["cond"]):
        H.append(H[-1].reshape(c.shape).mean(axis=-1))
    return {**q, "H": list(reversed(H))}


CHECKS = [
    Check(
        name="martingale",
        result="[Def 1, Prop 2, Prop 4]",
        section="§2",
        statement="H_t is a martingale; h = H_0 + Σ_t Δ_t with orthogonal innovations.",
        latex=r"\mathbb{E}[H_t\mid y_{<t}]=H_{t-1},\quad h=H_0+\sum_t\Delta_t,\quad \mathbb{E}[\Delta_s\Delta_t]=0\ (s\neq t)",
        kind="theorem",
        tolerance=1e-10,
        tolerance_reason="float64 identities on values in [0,1] after O(T·V) roundings",
        instances=lambda: instances(),
        compute=compute,
        residual=residual,
        corruptions={
            "innovation dropped": _drop_last_innovation,
            "martingale under the uniform policy": _wrong_policy_martingale,
            "H_t one level late": _martingale_one_level_late,
        },
        applies_to="tabular, Markov (order 1, 2) and MLP policies; every harm family",
        exercised=lambda q: q["ref_variance"] > 0,
    )
]
