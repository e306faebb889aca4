"""Exact training converges to the equilibrium tilt, with a certificate (docs/theory.md §7, *ours*).

Statement: full-batch training of a tabular policy on the exact
``L(θ) = λ E_{π_θ}[h] + KL(π_θ ‖ π_0)``, started at ``π_0`` with the default optimizer (damped
Newton on the explicit Hessian, ``toysim.minimize``), *certifies* its own convergence
(``‖∇L‖ <= 1e-8``, positive curvature off the softmax gauge, loss below its start) and reaches
``π* ∝ π_0 e^{−λh}``: its per-position KL to ``π_0`` matches the closed-form profile ``D_t``.

Residual: ``max(KL(π_trained ‖ π*), max_t |KL_t(π_trained ‖ π_0) − D_t|, ‖∇L‖²/(2μ_min))``: the
last term is the run's certified distance to the optimum in the loss's own units (``L − L*`` is
``KL(π ‖ π*)``), from the gradient and the Hessian only (``μ_min`` its smallest curvature off the
softmax gauge); an uncertified run has residual ``inf``.
The first two terms are the independent reference: the closed-form tilt (``toysim.tilt``), never
the optimizer's own numbers.

Tolerance 1e-10: ``L(π) = KL(π ‖ π*) − log Z_0`` exactly, so the distance to ``π*`` is the
optimality gap, quadratic in the gradient; Newton reaches ``‖∇L‖ ~ 1e-15`` within ~10 steps on
these problems (measured gaps and ``|KL_t − D_t|`` ~1e-16, distance bounds ~1e-14). The failures
this check exists for are five orders and more above it: the L-BFGS stalls of issue 16 stopped at
``KL(π‖π*) = 0.09`` and ``|KL_t − D_t| = 3.6e-5``.
"""

from __future__ import annotations

import jax
import numpy as np

import toysim

from ._framework import Check
from .strategies import small_instances
from .training_runs import train


@jax.jit
def _distances(trained, star, base):
    return (
        toysim.sequence_kl(trained, star),
        toysim.kl_by_position(trained, base),
        toysim.kl_by_position(star, base),
    )


def compute(inst):
    policy = inst.policy
    h, res = train(inst)
    base = toysim.forward(policy, inst.params)
    trained = toysim.forward(policy, res.params)
    kl_star, kl_t, d_t = _distances(trained, toysim.tilt(base, h, inst.lam).levels, base)
    wrong_star = toysim.tilt(base, h, -inst.lam).levels
    cert = res.certificate
    equilibrium_loss = -float(toysim.tilt(base, h, inst.lam).log_partition[0][0])
    return {
        "kl_to_equilibrium": float(kl_star),
        "kl_by_position": np.asarray(kl_t),
        "equilibrium_kl_by_position": np.asarray(d_t),
        "kl_to_wrong_sign_tilt": float(toysim.sequence_kl(trained, wrong_star)),
        "base_kl_to_equilibrium": float(toysim.sequence_kl(base, toysim.tilt(base, h, inst.lam).levels)),
        "final_gradient_norm": res.grad_norms[-1],
        "converged": bool(cert.converged),
        "distance_bound": float(cert.distance_bound),
        "loss_gap_bound": float(cert.loss_gap_bound),
        # after the first optimizer step: L − L* there is the exact KL to π* (the loss identity)
        "first_step_gap": float(res.losses[1] - equilibrium_loss) if len(res.losses) > 1 else 0.0,
        "first_step_kl_by_position": res.kl_by_position[min(1, len(res.losses) - 1)],
    }


def residual(q):
    if not q["converged"]:
        return float("inf")  # the run could not certify itself: nothing is claimed
    return float(
        max(
            abs(q["kl_to_equilibrium"]),
            np.max(np.abs(q["kl_by_position"] - q["equilibrium_kl_by_position"])),
            q["loss_gap_bound"],
        )
    )


def _wrong_sign(q):
    # compared with the tilt π_0 e^{+λh} (sign of λ flipped)
    d = q["equilibrium_kl_by_position"]
    return {**q, "kl_to_equilibrium": q["kl_to_wrong_sign_tilt"], "equilibrium_kl_by_position": d}


def _untrained(q):
    # the base policy reported as the trained one
    return {
        **q,
        "kl_to_equilibrium": q["base_kl_to_equilibrium"],
        "kl_by_position": np.zeros_like(q["kl_by_position"]),
    }


def _one_step(q):
    # a stalled run reported as converged: the policy after the first optimizer step
    return {**q, "kl_to_equilibrium": q["first_step_gap"], "kl_by_position": q["first_step_kl_by_position"]}


def _one_position_late(q):
    # D_t read one position late (an off-by-one in the profile): position t gets D_{t+1}
    d = q["equilibrium_kl_by_position"]
    return {**q, "equilibrium_kl_by_position": np.concatenate([d[1:], [0.0]])}


def _nonconstant(inst):
    policy = inst.policy
    return np.ptp(toysim.harm_values(inst.harm, policy.vocab_size, policy.horizon)) > 0


CHECKS = [
    Check(
        name="training-converges-to-tilt",
        result="(ours)",
        section="§7",
        statement="Exact training of a tabular policy on λE[h] + KL(π‖π0) certifies its convergence "
        "(‖∇L‖ ≤ 1e-8, positive curvature off the gauge) and reaches the tilt π* ∝ π0 e^{−λh}; its "
        "per-position KL profile equals D_t.",
        latex=r"\mathrm{KL}(\pi_{\hat\theta}\|\pi^*)\approx 0,\quad "
        r"\mathbb{E}_{p\sim\pi_{\hat\theta}}[\mathrm{KL}(\pi_{\hat\theta}(\cdot|p)\|\pi_0(\cdot|p))]=D_t",
        kind="theorem",
        tolerance=1e-10,
        tolerance_reason="optimiser precision: L = KL(π‖π*) − log Z0; Newton gaps ~1e-16, certified "
        "distances ~1e-14 within ~10 steps; the stalls it catches are >= 3.6e-5",
        instances=lambda: small_instances(
            policy_kinds=("tabular",), harm_kinds=("table", "binary_table", "deadline")
        ).filter(_nonconstant),
        compute=compute,
        residual=residual,
        corruptions={
            "tilt with the wrong sign of λ": _wrong_sign,
            "untrained policy": _untrained,
            "stalled optimiser: one step reported as converged": _one_step,
            "D_t compared one position late": _one_position_late,
        },
        applies_to="tabular policies, V=2, T in {2, 3}; table, binary-table and deadline harms",
        examples=6,
    )
]
