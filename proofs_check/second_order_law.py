"""Second-order law of the equilibrium KL [Thm 14] (THEORY.md §7).

Statement: for the tilt ``π* ∝ π_0 e^{−λh}``, ``D_t = (λ²/2) I_t⁽⁰⁾ + O(λ³)``, so at every position
with ``I_t⁽⁰⁾ > 0`` the ratio ``2 D_t / (λ² I_t⁽⁰⁾)`` tends to 1 and ``e(λ) = |ratio − 1|`` shrinks
at least linearly in ``λ``.

Residual: with ``e`` measured at ``λ = 0.02`` and ``λ = 0.01`` (closed-form tilt), the log-log
slope ``s_t = log₂(e(0.02)/e(0.01))`` is ``1 + O(λ)`` (or ``2`` where the ``λ³`` term vanishes);
the residual is ``max_t max(0, 1 − s_t)`` over positions with ``I_t⁽⁰⁾ > 1e-6``. A wrong ``I_t``
leaves ``e`` at a constant, slope 0, residual 1. Positions where ``e(0.02) < 1e-7`` (both the
cubic and quartic terms vanish to float64 precision) count as holding.

Tolerance 0.25: the slope differs from 1 by ``O(λ) ≈ 0.02`` times the ratio of the quartic to the
cubic coefficient; float64 error of ``2D/λ²`` at ``λ = 0.01`` is ~1e-12, far below ``e ≈ 1e-2·c``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import toysim
from toysim._training import second_order_ratio

from ._framework import Check
from .strategies import small_instances

LAMBDAS = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01)
INFO_FLOOR = 1e-6
HARM_KINDS = ("table", "binary_table", "deadline", "graded", "automaton")
E_FLOOR = 1e-7


def compute(inst):
    policy = inst.policy
    h = jnp.asarray(toysim.harm_values(inst.harm, policy.vocab_size, policy.horizon))
    base = toysim.forward(policy, inst.params)
    _, d, info = second_order_ratio(base, h, jnp.asarray(LAMBDAS))
    uniform = toysim.forward(policy, jax.tree_util.tree_map(jnp.zeros_like, inst.params))
    info_uniform = _information(uniform, h)
    return {
        "lams": np.asarray(LAMBDAS),
        "D": np.asarray(d),
        "I": np.asarray(info),
        "I_uniform_policy": np.asarray(info_uniform),
    }


@jax.jit
def _information(levels, h):
    return toysim.harm_information(levels, toysim.harm_martingale(levels, h))


def _nonconstant(inst):
    policy = inst.policy
    return np.ptp(toysim.harm_values(inst.harm, policy.vocab_size, policy.horizon)) > 0


def ratios(q):
    """``2 D_t / (λ² I_t)`` for every λ of the sweep (NaN where ``I_t = 0``)."""
    info = q["I"]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(info > 0, 2 * q["D"] / (q["lams"][:, None] ** 2 * info), np.nan)


def residual(q):
    r = ratios(q)
    big, small = np.abs(r[-2] - 1), np.abs(r[-1] - 1)
    worst = 0.0
    for t in np.flatnonzero(q["I"] > INFO_FLOOR):
        if big[t] < E_FLOOR:
            continue
        slope = np.log2(big[t] / max(small[t], 1e-300))
        worst = max(worst, 1.0 - slope)
    return float(worst)


CHECKS = [
    Check(
        name="second-order-law",
        result="[Thm 14]",
        section="§7",
        statement="D_t = (λ²/2) I_t^(0) + O(λ³): |2D_t/(λ² I_t) − 1| shrinks linearly in λ.",
        latex=r"D_t=\tfrac{\lambda^2}{2}I_t^{(0)}+O(\lambda^3)",
        kind="theorem",
        tolerance=0.25,
        tolerance_reason="log-log slope of |ratio−1| between λ=0.02 and 0.01 is 1+O(λ); float64 error ~1e-12",
        instances=lambda: small_instances(harm_kinds=HARM_KINDS, horizons=(3,)).filter(_nonconstant),
        compute=compute,
        residual=residual,
        corruptions={
            "I_t without the factor 1/2": lambda q: {**q, "I": 2 * q["I"]},
            "I_t of the uniform policy": lambda q: {**q, "I": q["I_uniform_policy"]},
        },
        applies_to="tabular, Markov (order 1, 2) and MLP reference policies; non-constant harms of "
        "the table, deadline, graded and automaton families",
        examples=4,
    )
]
