"""No gradient beyond the harm horizon [Thm 10] and its per-prefix refinement (docs/theory.md §5).

Statement: with ``k`` the uniform harm horizon, ``G_t = 0`` for every ``t > k``, for every
parameterisation (shared parameters included). Finer (*ours*): the covariance weight
``w_t(p, v) = P(p) π(v|p) (H_t(p·v) − H_{t−1}(p))`` of every prefix ``p`` at or past its own
horizon (``p`` determined) is zero, and for a tabular policy the gradient with respect to the
logits of such a prefix is zero.

Residual: ``zero_gradient`` -- the largest ``|G_t|`` entry over ``t > k``
(``toysim.covariance_gradient``); ``zero_gradient_prefix`` -- the largest ``|w_t(p, ·)|`` over
determined prefixes ``p`` and, for tabular policies, the largest entry of ``G_t`` in the logit row
of such a prefix. Both also compare the engine with brute force (``proofs_check.reference``): ``k``
with ``max_y τ(y)`` from listed continuations, the determined prefixes, and ``G_t`` (every entry,
every position) with ``Σ_p P(p) Cov(H_t, s_t | p)`` from per-sequence sums and an explicit
Jacobian, respectively ``w_t`` with ``P(p) π(v|p) (H(p·v) − H(p))`` from per-sequence sums. A
differing integer or flag adds 1; a float difference adds its excess over 1e-10
(``tolerances.REFERENCE``), so the residual is 0 exactly when everything agrees.

Inputs: :func:`proofs_check.strategies.early_horizon_instances` (``k < T`` in most draws).
Exercised: ``zero_gradient`` -- ``k < T``; ``zero_gradient_prefix`` -- some prefix shorter than
``T`` is determined.

Tolerance 0 (exact): the engine keeps constants exact (``toysim._engine.keep_constants``): below a
determined prefix ``H`` is copied, not averaged, so every innovation there is exactly 0.0, and a
vector-Jacobian product of exact zeros is exact zeros. (``jax.grad`` of ``E[h]`` is *not* exactly
zero there: it sums ``O(V)`` rounded terms that cancel only to ~1e-16 (measured: up to 2.2e-16); the covariance form is the
exact statement.)
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import toysim

from . import reference as ref
from . import tolerances as tol
from ._framework import Check
from .strategies import horizon_instances


def _engine(inst):
    policy = inst.policy
    v, horizon = policy.vocab_size, policy.horizon
    h = jnp.asarray(toysim.harm_values(inst.harm, v, horizon))
    levels = toysim.forward(policy, inst.params)
    mart = toysim.harm_martingale(levels, h)
    masks = toysim.determined_masks(h, v, horizon)
    return h, levels, mart, masks


def compute_positions(inst):
    _, levels, mart, masks = _engine(inst)
    grads = toysim.covariance_gradient(inst.policy, inst.params, levels, mart)
    r = ref.brute_force(inst.policy, inst.params, inst.harm)
    return {
        "per_position": np.stack([ref.flat(g) for g in grads]),
        "horizon": int(toysim.uniform_horizon(masks)),
        "ref_per_position": r.gradient,
        "ref_horizon": r.horizon,
        "T": inst.policy.horizon,
    }


def _reference_excess(pairs) -> float:
    return max(0.0, ref.max_error(pairs) - tol.REFERENCE)


def residual_positions(q):
    beyond = q["per_position"][max(q["horizon"], 0) :]  # rows t = k+1..T
    exact = float(np.max(np.abs(beyond), initial=0.0)) + abs(q["horizon"] - q["ref_horizon"])
    return exact + _reference_excess([(q["per_position"], q["ref_per_position"])])


def exercised_positions(q):
    return q["ref_horizon"] < q["T"]


def _edge_weights(levels: toysim.Levels, t: int):
    """Joint probability ``P(p) π(v|p)`` of each edge from level ``t-1`` to ``t`` (``t >= 1``): the
    probabilities of the length-``t`` prefixes, laid out as (parent prefix, token)."""
    return jnp.exp(levels.log_prefix[t]).reshape(levels.log_cond[t - 1].shape)


def compute_prefixes(inst):
    policy = inst.policy
    v, horizon = policy.vocab_size, policy.horizon
    _, levels, mart, masks = _engine(inst)
    weights = toysim.covariance_weights(levels, mart)
    tabular_rows = None
    if isinstance(policy, toysim.TabularPolicy):
        grads = toysim.covariance_gradient(policy, inst.params, levels, mart)
        tabular_rows = [np.asarray(grads[t][t]) for t in range(horizon)]  # G_t in the rows of level t-1
    r = ref.brute_force(policy, inst.params, inst.harm, with_scores=False)
    ref_weights = [
        r.mass[t][:, None] * r.cond[t] * (r.H[t + 1].reshape(-1, v) - r.H[t][:, None]) for t in range(horizon)
    ]
    return {
        "weights": [np.asarray(w) for w in weights],
        "determined": [np.asarray(masks[t]) for t in range(horizon)],  # prefixes of length t-1
        "child_determined": [np.asarray(masks[t + 1]).reshape(-1, v) for t in range(horizon)],
        "edge": [np.asarray(_edge_weights(levels, t + 1)) for t in range(horizon)],
        "H_child": [np.asarray(mart[t + 1]).reshape(-1, v) for t in range(horizon)],
        "tabular_rows": tabular_rows,
        "ref_weights": ref_weights,
        "ref_determined": r.determined[:horizon],
    }


def residual_prefixes(q):
    worst = 0.0
    for t, det in enumerate(q["determined"]):
        worst = max(worst, float(np.max(np.abs(q["weights"][t][det]), initial=0.0)))
        if q["tabular_rows"] is not None:
            worst = max(worst, float(np.max(np.abs(q["tabular_rows"][t][det]), initial=0.0)))
            worst += _reference_excess([(q["tabular_rows"][t], q["ref_weights"][t])])
    flags = sum(float(np.sum(a != b)) for a, b in zip(q["determined"], q["ref_determined"]))
    return worst + flags + _reference_excess([(q["weights"], q["ref_weights"])])


def exercised_prefixes(q):
    return any(bool(np.any(d)) for d in q["ref_determined"])


def _horizon_one_position_early(q):
    return {**q, "horizon": q["horizon"] - 1}


def _gradient_one_position_late(q):
    per_position = np.concatenate([np.zeros_like(q["per_position"][:1]), q["per_position"][:-1]])
    return {**q, "per_position": per_position}


def _gradient_halved(q):
    # a dropped factor: every G_t halved
    return {**q, "per_position": 0.5 * q["per_position"]}


def _baseline_dropped(q):
    # P(p) π(v|p) H_t(p·v): the expected harm times the logit gradient instead of the covariance
    weights = [e * hc for e, hc in zip(q["edge"], q["H_child"])]
    return {**q, "weights": weights, "tabular_rows": None}


def _weights_one_level_late(q):
    # w_t computed with the conditional law of the next level's first prefixes (an off-by-one)
    weights = [q["weights"][0]] + [w for w in q["weights"][:-1]]
    weights = [np.resize(w, r.shape) for w, r in zip(weights, q["ref_weights"])]
    return {**q, "weights": weights}


def _determined_when_one_child_is(q):
    determined = [np.any(c, axis=1) for c in q["child_determined"]]
    return {**q, "determined": determined}


CHECKS = [
    Check(
        name="zero_gradient",
        result="[Thm 10]",
        section="§5",
        statement="The per-position gradient G_t is exactly zero at every position past the harm horizon.",
        latex=r"G_t=0\quad\text{for every } t>k",
        kind="theorem",
        tolerance=0.0,
        tolerance_reason="exact: the engine copies H below determined prefixes, so the covariance weights "
        "there are exact zeros and so is their VJP",
        instances=lambda: horizon_instances(),
        compute=compute_positions,
        residual=residual_positions,
        corruptions={
            "horizon one position early": _horizon_one_position_early,
            "gradients read one position late": _gradient_one_position_late,
            "G_t halved (a dropped factor)": _gradient_halved,
        },
        applies_to="tabular, Markov (order 1, 2) and MLP policies; every harm family and g(y_≤k) tables",
        examples=20,
        exercised=exercised_positions,
    ),
    Check(
        name="zero_gradient_prefix",
        result="[Thm 10] (ours: per prefix)",
        section="§5",
        statement="Every prefix at or past its own horizon contributes exactly zero; for tabular policies "
        "the gradient in its logit row is exactly zero.",
        latex=r"p\ \text{determined}\implies P(p)\,\pi(v\mid p)\,\big(H_t(p\cdot v)-H_{t-1}(p)\big)=0\ \forall v",
        kind="theorem",
        tolerance=0.0,
        tolerance_reason="exact: constants are copied, not averaged, below determined prefixes",
        instances=lambda: horizon_instances(),
        compute=compute_prefixes,
        residual=residual_prefixes,
        corruptions={
            "baseline H(p) dropped (logit gradient, not score)": _baseline_dropped,
            "prefix taken as determined when one child is": _determined_when_one_child_is,
            "weights of the previous level (off by one)": _weights_one_level_late,
        },
        applies_to="tabular, Markov (order 1, 2) and MLP policies (weights); tabular policies (logit rows)",
        examples=20,
        exercised=exercised_prefixes,
    ),
]
