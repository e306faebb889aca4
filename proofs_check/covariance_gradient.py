"""The gradient of the expected harm is a sum of covariances [Thm 8] (docs/theory.md §4).

Statement: with the score ``s_t = ∇_θ log π_θ(y_t | y_<t)``,
``∇_θ E[h] = Σ_t G_t`` where ``G_t = E_{y_<t}[Cov_{y_t}(H_t, s_t)]``. Three checks:

* ``covariance_gradient_sum`` -- ``Σ_t G_t`` (``toysim.covariance_gradient``: a VJP of the level
  logits with covariance weights) equals the derivative of ``E[h] = Σ_y P(y) h(y)``, for every
  parameterisation, and each ``G_t`` equals the brute-force covariance
  ``Σ_p P(p) Σ_v π (H(p·v) − E H)(s_v − E s)`` (per-sequence sums, explicit Jacobian scores).
* ``covariance_gradient_positions`` (*ours*) -- each single ``G_t`` equals ``∂E[h]/∂θ_t`` where the
  parameters are untied by position (``T`` literal copies), evaluated at ``θ_1 = … = θ_T = θ``.
* ``covariance_gradient_tabular`` (*ours*) -- for a tabular policy, the library's ``G_t``
  (``toysim.covariance_gradient``) is, at every prefix ``p`` of length ``t − 1`` and token ``v``,
  ``G_t[logit(p, v)] = P(p) π(v|p) (H(p·v) − H(p))`` and zero on the logits of every other level,
  with ``P(p·v)`` and ``H`` computed in numpy by summing per-sequence probabilities below each
  prefix (``proofs_check.reference``); the closed form is also cross-checked against the
  complex-step derivative of ``E[h]`` (reference against reference, a check of the closed form
  itself). Controls model library bugs: ``G_t`` centred at ``E[h]`` instead of ``H(p)``, without
  the prefix probability ``P(p)``, without any baseline.

Every derivative reference here is a complex-step derivative (exact to float64 rounding) of
``E[h]`` written one term per sequence in numpy
(``proofs_check.reference.sequence_expected_harm``: each sequence multiplies its own rows of the
softmax of the policy's per-prefix logits), not the library's ``autodiff_gradient`` or
``untied_copies_gradient``, which share the engine's level accumulation.

Residual: the largest absolute difference over all parameters (and positions), divided by
``max(1, largest reference entry)`` so that it is relative for large gradients.

Exercised: some entry of the reference ``G_t`` (brute-force covariance, untied complex-step
derivative, or closed form) exceeds the tolerance 1e-10, i.e. a gradient that rounding cannot
fake (the reference's arrays, not the engine's, decide).

Tolerance 1e-10: two float64 evaluations of the same derivative (the engine's reverse mode
through ``log_softmax`` and sums over ``V^T ≤ 27`` leaves; the complex step, whose truncation
error, the step squared times a third derivative, is ~1e-60 at step 1e-30), each off by O(10)
roundings of 1.1e-16 relative to the gradient's scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import toysim

from . import reference as ref
from ._framework import Check
from .strategies import instances


def _flat(tree) -> np.ndarray:
    return np.concatenate(
        [np.asarray(x, dtype=np.float64).reshape(-1) for x in jax.tree_util.tree_leaves(tree)]
    )


def _scaled_error(actual, reference) -> float:
    actual, reference = np.asarray(actual), np.asarray(reference)
    scale = max(1.0, float(np.max(np.abs(reference), initial=0.0)))
    return float(np.max(np.abs(actual - reference), initial=0.0)) / scale


def _engine(inst):
    policy = inst.policy
    h = jnp.asarray(toysim.harm_values(inst.harm, policy.vocab_size, policy.horizon))
    levels = toysim.forward(policy, inst.params)
    mart = toysim.harm_martingale(levels, h)
    grads = toysim.covariance_gradient(policy, inst.params, levels, mart)
    return h, levels, mart, np.stack([_flat(g) for g in grads])


def compute_sum(inst):
    h, _, _, per_position = _engine(inst)
    r = ref.brute_force(inst.policy, inst.params, inst.harm)
    return {
        "per_position": per_position,
        "autodiff": ref.tied_gradient(inst.policy, inst.params, np.asarray(h)),
        "covariance": r.gradient,
    }


def residual_sum(q):
    if q["per_position"].shape != q["covariance"].shape:
        return float("inf")
    return max(
        _scaled_error(np.sum(q["per_position"], axis=0), q["autodiff"]),
        _scaled_error(q["per_position"], q["covariance"]),
    )


def _exercised_by(key):
    def exercised(q):
        return bool(np.any(np.abs(q[key]) > GRADIENT_TOL))

    return exercised


def compute_positions(inst):
    h, _, _, per_position = _engine(inst)
    return {
        "per_position": per_position,
        "untied": ref.untied_gradients(inst.policy, inst.params, np.asarray(h)),
    }


def residual_positions(q):
    return _scaled_error(q["per_position"], q["untied"])


def _leaf_tree(p_leaf: np.ndarray, h: np.ndarray, vocab_size: int, horizon: int):
    """``P(p)`` and ``H(p) = E[h | p]`` at every level, summed over the leaves below ``p``."""
    mass, mean = [], []
    for t in range(horizon + 1):
        p = p_leaf.reshape(vocab_size**t, -1)
        m = p.sum(axis=1)
        mass.append(m)
        mean.append((p * h.reshape(m.shape[0], -1)).sum(axis=1) / m)
    return mass, mean


def compute_tabular(inst):
    policy = inst.policy
    v, horizon = policy.vocab_size, policy.horizon
    h, _, _, per_position = _engine(inst)
    h = np.asarray(h, dtype=np.float64)
    leaf = ref.brute_force(policy, inst.params, inst.harm, with_scores=False).leaf
    mass, mean = _leaf_tree(leaf, h, v, horizon)
    grad = ref.tied_gradient(policy, inst.params, h)
    sizes = np.cumsum([0] + [v ** (t + 1) for t in range(horizon)])
    return {
        "library": per_position,  # (T, |θ|): G_t over every level's logits
        "slots": sizes,
        "mass": [mass[t] for t in range(horizon)],  # P(p), prefixes of length t − 1
        "edge": [mass[t + 1].reshape(-1, v) for t in range(horizon)],  # P(p·v) = P(p) π(v|p)
        "H_child": [mean[t + 1].reshape(-1, v) for t in range(horizon)],
        "H_parent": [mean[t] for t in range(horizon)],
        "H_root": float(mean[0][0]),
        "autodiff": [grad[sizes[t] : sizes[t + 1]] for t in range(horizon)],
    }


def _closed_rows(q):
    """``P(p) π(v|p) (H(p·v) − H(p))`` per level, ``(V^{t−1}, V)``."""
    return [e * (hc - hp[:, None]) for e, hc, hp in zip(q["edge"], q["H_child"], q["H_parent"])]


def _closed_positions(q):
    """The closed form laid out like the library's ``G_t``: level ``t − 1``'s logits, zeros elsewhere."""
    out = np.zeros_like(q["library"])
    for t, rows in enumerate(_closed_rows(q)):
        out[t, q["slots"][t] : q["slots"][t + 1]] = rows.reshape(-1)
    return out


def residual_tabular(q):
    closed = _closed_positions(q)
    if q["library"].shape != closed.shape:
        return float("inf")
    cross = _scaled_error(
        np.concatenate([c.reshape(-1) for c in _closed_rows(q)]),
        np.concatenate([g.reshape(-1) for g in q["autodiff"]]),
    )
    return max(_scaled_error(q["library"], closed), cross)


def _exercised_tabular(q):
    return bool(any(np.any(np.abs(c) > GRADIENT_TOL) for c in _closed_rows(q)))


def _library_rows_changed(q, change):
    """The library's ``G_t`` with ``change(t, edge, H_child, H_parent, mass)`` added to level
    ``t − 1``'s logits (what a library with that bug would return)."""
    library = q["library"].copy()
    for t, (e, hc, hp, m) in enumerate(zip(q["edge"], q["H_child"], q["H_parent"], q["mass"])):
        library[t, q["slots"][t] : q["slots"][t + 1]] = change(
            library[t, q["slots"][t] : q["slots"][t + 1]].reshape(e.shape), e, hc, hp, m, q["H_root"]
        ).reshape(-1)
    return {**q, "library": library}


def _centred_at_mean_harm(q):
    # H(p·v) − E[h] instead of H(p·v) − H(p): the global baseline instead of the prefix's
    return _library_rows_changed(q, lambda g, e, hc, hp, m, h0: g + e * (hp[:, None] - h0))


def _baseline_dropped(q):
    # E[H_t ∇logit] instead of Cov(H_t, s_t): no subtraction of H(p)
    return _library_rows_changed(q, lambda g, e, hc, hp, m, h0: g + e * hp[:, None])


def _conditional_instead_of_joint(q):
    # π(v|p) (H(p·v) − H(p)) instead of P(p) π(v|p) (...): the prefix probability forgotten
    return _library_rows_changed(
        q, lambda g, e, hc, hp, m, h0: np.where(m[:, None] > 0, g / np.where(m > 0, m, 1.0)[:, None], g)
    )


def _last_position_dropped(q):
    per_position = q["per_position"].copy()
    per_position[-1] = 0.0
    return {**q, "per_position": per_position}


def _first_position_doubled(q):
    per_position = q["per_position"].copy()
    per_position[0] *= 2.0
    return {**q, "per_position": per_position}


def _positions_reversed(q):
    return {**q, "per_position": q["per_position"][::-1].copy()}


def _spread_evenly(q):
    # the tied gradient split equally over the positions instead of the per-position covariances
    per_position = q["per_position"]
    return {
        **q,
        "per_position": np.repeat(per_position.mean(axis=0, keepdims=True), len(per_position), axis=0),
    }


GRADIENT_TOL = 1e-10
ALL_POLICIES = "tabular, Markov (order 1, 2) and MLP policies; every harm family"
GRADIENT_TOLERANCE = (
    "reverse mode against a complex-step derivative of one float64 quantity; O(10) roundings "
    "relative to its scale"
)

CHECKS = [
    Check(
        name="covariance_gradient_sum",
        result="[Thm 8]",
        section="§4",
        statement="The gradient of E[h] is the sum over positions of G_t = E[Cov(H_t, s_t | y_<t)].",
        latex=r"\nabla_\theta\mathbb{E}_{\pi_\theta}[h]=\sum_{t=1}^T G_t,\quad "
        r"G_t=\mathbb{E}_{y_{<t}}\big[\operatorname{Cov}_{y_t}(H_t,s_t)\big]",
        kind="theorem",
        tolerance=GRADIENT_TOL,
        tolerance_reason=GRADIENT_TOLERANCE,
        instances=lambda: instances(),
        compute=compute_sum,
        residual=residual_sum,
        corruptions={
            "last position's G_t dropped": _last_position_dropped,
            "first position's G_t doubled": _first_position_doubled,
            "positions reversed": _positions_reversed,
        },
        applies_to=ALL_POLICIES,
        examples=20,
        exercised=_exercised_by("covariance"),
    ),
    Check(
        name="covariance_gradient_positions",
        result="[Thm 8] (ours: per position)",
        section="§4",
        statement="Each G_t equals the gradient with respect to position t's copy of untied parameters.",
        latex=r"G_t=\frac{\partial\,\mathbb{E}[h]}{\partial\theta_t}\Big|_{\theta_1=\dots=\theta_T=\theta}",
        kind="theorem",
        tolerance=GRADIENT_TOL,
        tolerance_reason=GRADIENT_TOLERANCE,
        instances=lambda: instances(),
        compute=compute_positions,
        residual=residual_positions,
        corruptions={
            "positions reversed": _positions_reversed,
            "tied gradient spread evenly over positions": _spread_evenly,
        },
        applies_to=ALL_POLICIES,
        examples=15,
        exercised=_exercised_by("untied"),
    ),
    Check(
        name="covariance_gradient_tabular",
        result="(ours, closed form)",
        section="§4",
        statement="For a tabular policy, the library's G_t is P(p) π(v|p) (H(p·v) − H(p)) on the logits "
        "(p, v) of every prefix p of length t − 1, and 0 on other levels.",
        latex=r"\frac{\partial\,\mathbb{E}[h]}{\partial\,\mathrm{logit}(p,v)}=P(p)\,\pi(v\mid p)\,\big(H(p\cdot v)-H(p)\big)",
        kind="theorem",
        tolerance=GRADIENT_TOL,
        tolerance_reason=GRADIENT_TOLERANCE,
        instances=lambda: instances(policy_kinds=("tabular",)),
        compute=compute_tabular,
        residual=residual_tabular,
        corruptions={
            "G_t centred at E[h] instead of H(p)": _centred_at_mean_harm,
            "baseline H(p) dropped": _baseline_dropped,
            "prefix probability P(p) forgotten": _conditional_instead_of_joint,
        },
        applies_to="tabular policies; every harm family",
        examples=15,
        exercised=_exercised_tabular,
    ),
]
