"""Harm information and the variance decomposition [Def 5, Prop 6, Cor 7] (docs/theory.md §3).

Statement: the harm information ``I_t = E[Δ_t²]`` of position ``t`` is the expected drop of the
conditional variance of the harm when ``y_t`` is revealed,
``I_t = E[Var(h | y_<t)] − E[Var(h | y_≤t)]``, and the informations add up to the variance of the
harm, ``Σ_{t=1}^T I_t = Var(h)``.

Residual: the largest of ``|I_t − (E[Var(h|y_<t)] − E[Var(h|y_≤t)])|`` over ``t``,
``|Σ_t I_t − Var(h)|``, ``|Var(h) − Var_ref(h)|`` and ``|I_t − I_t^ref|``. ``I_t`` is the engine's
(``toysim.harm_information``: innovations of the backward pass) and ``Var(h)`` is
``toysim.harm_variance``; the conditional variances are computed independently, in numpy, as
``E[h² | p] − E[h | p]²`` summed over the sequences below each prefix ``p`` with per-sequence
probabilities from the policy's definition (``proofs_check.reference``, not the engine's
``log_prefix``); ``I_t^ref = Σ_p P(p) Var(H_t | p)`` and ``Var_ref(h)`` come from the same
brute force.

Exercised: ``Var h > 1e-28`` (brute force; a constant harm's variance of rounding size does not
count, ``tolerances.ROUNDING_VARIANCE``).

Tolerance 1e-10: float64 identities on values in [0, 1] after O(T·V^T) roundings of 1.1e-16
(``E[h²|p] − E[h|p]²`` cancels, but both terms are at most 1).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import toysim

from . import reference as ref
from . import tolerances as tol
from ._framework import Check
from .strategies import instances


def conditional_variances(p_leaf: np.ndarray, h: np.ndarray, vocab_size: int, horizon: int) -> np.ndarray:
    """``E_{p ~ P}[Var(h | y_≤t = p)]`` for ``t = 0..T``, by sums over the leaves below ``p``."""
    out = []
    for t in range(horizon + 1):
        p = p_leaf.reshape(vocab_size**t, -1)
        mass = p.sum(axis=1)
        first = (p * h.reshape(mass.shape[0], -1)).sum(axis=1) / mass
        second = (p * h.reshape(mass.shape[0], -1) ** 2).sum(axis=1) / mass
        out.append(float(np.sum(mass * (second - first**2))))
    return np.asarray(out)


def compute(inst):
    policy = inst.policy
    v, horizon = policy.vocab_size, policy.horizon
    h = np.asarray(toysim.harm_values(inst.harm, v, horizon), dtype=np.float64)
    levels = toysim.forward(policy, inst.params)
    summary = toysim.martingale_summary(levels, jnp.asarray(h))
    r = ref.brute_force(policy, inst.params, inst.harm, with_scores=False)
    return {
        "information": np.asarray(summary.information),
        "cond_var": conditional_variances(r.leaf, h, v, horizon),
        "variance": float(summary.variance),
        "ref_information": r.information,
        "ref_variance": r.variance,
        "p_leaf": r.leaf,
        "h": h,
        "vocab_size": v,
    }


def residual(q):
    info, cond_var = q["information"], q["cond_var"]
    if info.shape != q["ref_information"].shape:
        return float("inf")
    drop = cond_var[:-1] - cond_var[1:]
    return float(
        max(
            np.max(np.abs(info - drop)),
            abs(float(np.sum(info)) - q["variance"]),
            ref.max_error([(info, q["ref_information"]), (q["variance"], q["ref_variance"])]),
        )
    )


def _uniform_policy_information(q):
    # I_t of the wrong policy: the uniform one, with the same harm
    v, h = q["vocab_size"], q["h"]
    horizon = len(q["information"])
    uniform = np.full_like(q["p_leaf"], 1.0 / v**horizon)
    cond_var = conditional_variances(uniform, h, v, horizon)
    return {**q, "information": cond_var[:-1] - cond_var[1:]}


def _last_position_dropped(q):
    info = q["information"].copy()
    info[-1] = 0.0
    return {**q, "information": info}


def _variance_after_instead_of_before(q):
    # off by one position: I_t paired with the drop of the next position
    cond_var = q["cond_var"]
    drop_next = np.append(cond_var[1:-1] - cond_var[2:], 0.0)
    return {**q, "information": drop_next}


def _variance_not_centred(q):
    return {**q, "variance": float(np.sum(q["p_leaf"] * q["h"] ** 2))}


CHECKS = [
    Check(
        name="harm_information",
        result="[Def 5, Prop 6, Cor 7]",
        section="§3",
        statement="I_t = E[Var(h | y_<t)] − E[Var(h | y_≤t)], and the I_t add up to Var(h).",
        latex=r"I_t=\mathbb{E}[\operatorname{Var}(h\mid y_{<t})]-\mathbb{E}[\operatorname{Var}(h\mid y_{\le t})],"
        r"\quad \sum_{t=1}^T I_t=\operatorname{Var}(h)",
        kind="theorem",
        tolerance=1e-10,
        tolerance_reason="float64 identities on values in [0,1] after O(T·V^T) roundings",
        instances=lambda: instances(),
        compute=compute,
        residual=residual,
        corruptions={
            "I_t under the uniform policy": _uniform_policy_information,
            "last position's I_t dropped": _last_position_dropped,
            "I_t paired with the next position's variance drop": _variance_after_instead_of_before,
            "Var(h) not centred (E[h²])": _variance_not_centred,
        },
        applies_to="tabular, Markov (order 1, 2) and MLP policies; every harm family",
        examples=25,
        exercised=lambda q: q["ref_variance"] > tol.ROUNDING_VARIANCE,
    )
]
