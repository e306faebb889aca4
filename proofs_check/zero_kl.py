"""No KL beyond the harm horizon, exactly, for every λ (*ours*, docs/theory.md §7).

Statement: at a determined prefix ``p`` (``h`` constant on every continuation) the partition
function ``Z_t(p·v)`` is the same for every token ``v``, so the tilt leaves the policy unchanged
there: ``π*(·|p) = π_0(·|p)`` and ``KL(π*(·|p) ‖ π_0(·|p)) = 0``. Hence ``D_t = 0`` for every
``t > k`` (``k`` the uniform horizon), for every ``λ``, not only to second order.

Residual: the largest of ``D_t`` over ``t > k`` (``Equilibrium.kl_by_position``), of the prefix
KL over determined prefixes (``Equilibrium.prefix_kl``) and of ``|log π*(v|p) − log π_0(v|p)|``
over determined prefixes; plus the comparison with brute force (``proofs_check.reference``): ``k``
and the determined prefixes from listed continuations (a differing integer or flag adds 1), and
``D_t`` and every prefix KL from the sequence-level tilt ``π_0(y) e^{−λh(y)} / Z`` summed over the
sequences below each prefix (their excess over 1e-10, ``tolerances.REFERENCE``, is added).
The reference computes every prefix by the same sums (it does not assume the zero at determined
prefixes), so its zeros are float zeros: its prefix KL at determined prefixes and its ``D_t`` past
its horizon must be at most :data:`REFERENCE_ZERO` = 1e-13 (the excess is added). Reason:
``π*(v|p)/π_0(v|p)`` there is 1 up to the roundings of two sums of at most ``V^T = 27`` leaf
probabilities and a product of ``T`` softmaxes (≤ ~60 ε ≈ 7e-15), so each ``log`` and the KL (an
average of them) are below 1e-14; measured over 150 drawn instances: at most 2.8e-16. The
library's zeros are checked exactly (tolerance 0 below).

Inputs: :func:`proofs_check.strategies.early_horizon_instances`. Exercised: ``k < T``.

Tolerance 0 (exact): the engine's log-space backward pass copies constants
(``toysim._engine.keep_constants``), so ``log Z`` of the children of a determined prefix equal its
own bit for bit, ``log π* − log π_0`` is exactly 0.0 there and so is every term of the KL.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import toysim

from . import reference as ref
from . import tolerances as tol
from ._framework import Check
from .strategies import horizon_instances

REFERENCE_ZERO = 1e-13


def compute(inst):
    policy = inst.policy
    v, horizon = policy.vocab_size, policy.horizon
    h = jnp.asarray(toysim.harm_values(inst.harm, v, horizon))
    base = toysim.forward(policy, inst.params)
    eq = toysim.tilt(base, h, inst.lam)
    masks = toysim.determined_masks(h, v, horizon)
    return {
        "kl_by_position": np.asarray(eq.kl_by_position),
        "prefix_kl": [np.asarray(k) for k in eq.prefix_kl],
        "log_star": [np.asarray(lc) for lc in eq.levels.log_cond],
        "log_base": [np.asarray(lc) for lc in base.log_cond],
        "log_partition": [np.asarray(z) for z in eq.log_partition],
        "log_prefix_star": [np.asarray(x) for x in eq.levels.log_prefix],
        "determined": [np.asarray(masks[t]) for t in range(horizon)],  # prefixes of length t-1
        "horizon": int(toysim.uniform_horizon(masks)),
        **_reference(inst),
    }


def _reference(inst):
    r = ref.brute_force(inst.policy, inst.params, inst.harm, with_scores=False)
    d, prefix_kl, _ = ref.tilt_kl(r.cond, r.leaf, r.h, float(inst.lam), inst.policy.vocab_size)
    return {
        "ref_kl_by_position": d,
        "ref_prefix_kl": prefix_kl,
        "ref_determined": r.determined[: inst.policy.horizon],
        "ref_horizon": r.horizon,
        "T": inst.policy.horizon,
    }


def residual(q):
    worst = float(np.max(np.abs(q["kl_by_position"][max(q["horizon"], 0) :]), initial=0.0))
    for det, kl, star, base in zip(q["determined"], q["prefix_kl"], q["log_star"], q["log_base"]):
        worst = max(worst, float(np.max(np.abs(kl[det]), initial=0.0)))
        worst = max(worst, float(np.max(np.abs(star[det] - base[det]), initial=0.0)))
    worst += abs(q["horizon"] - q["ref_horizon"])
    worst += sum(float(np.sum(a != b)) for a, b in zip(q["determined"], q["ref_determined"]))
    floats = ref.max_error(
        [(q["kl_by_position"], q["ref_kl_by_position"]), (q["prefix_kl"], q["ref_prefix_kl"])]
    )
    ref_zero = float(np.max(np.abs(q["ref_kl_by_position"][q["ref_horizon"] :]), initial=0.0))
    for det, kl in zip(q["ref_determined"], q["ref_prefix_kl"]):
        ref_zero = max(ref_zero, float(np.max(np.abs(kl[det]), initial=0.0)))
    return worst + max(0.0, floats - tol.REFERENCE) + max(0.0, ref_zero - REFERENCE_ZERO)


def exercised(q):
    return q["ref_horizon"] < q["T"]


def _not_divided_by_parent(q):
    # π_0(v|p) Z_t(p·v) without the division by Z_{t−1}(p): not a distribution where Z ≠ 1
    star = [b + q["log_partition"][t + 1].reshape(b.shape) for t, b in enumerate(q["log_base"])]
    prefix_kl = [np.sum(np.exp(s) * (s - b), axis=-1) for s, b in zip(star, q["log_base"])]
    d = np.asarray([float(np.sum(np.exp(lp) * k)) for lp, k in zip(q["log_prefix_star"], prefix_kl)])
    return {**q, "log_star": star, "prefix_kl": prefix_kl, "kl_by_position": d}


def _kl_one_position_late(q):
    return {**q, "kl_by_position": np.append(0.0, q["kl_by_position"][:-1])}


def _horizon_one_position_early(q):
    return {**q, "horizon": q["horizon"] - 1}


CHECKS = [
    Check(
        name="zero_kl",
        result="(ours, exact for every λ)",
        section="§7",
        statement="The tilt leaves every determined prefix unchanged, so D_t = 0 exactly for t > k.",
        latex=r"p\ \text{determined}\implies\pi^*(\cdot\mid p)=\pi_0(\cdot\mid p);\qquad D_t=0\ \ \forall t>k",
        kind="theorem",
        tolerance=0.0,
        tolerance_reason="exact: the log-space backward pass copies constants, so log π* − log π_0 is 0.0 "
        "bit for bit at determined prefixes",
        instances=lambda: horizon_instances(),
        compute=compute,
        residual=residual,
        corruptions={
            "tilt not divided by Z_{t−1}": _not_divided_by_parent,
            "horizon one position early": _horizon_one_position_early,
            "D_t one position late": _kl_one_position_late,
        },
        applies_to="tabular, Markov (order 1, 2) and MLP base policies; every harm family and g(y_≤k) "
        "tables; λ ∈ {0.1, 1, 4}",
        examples=20,
        exercised=exercised,
    )
]
