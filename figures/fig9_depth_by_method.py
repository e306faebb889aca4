"""Figure 9: how deep is each alignment method? KL profiles and prefilling attacks, side by side.

Claim: every method whose optimum reweights ``π_0`` by a function of the harm (KL-regularised RL,
DPO, IPO, rejection sampling, best-of-N; the token-wise KL constraint too) puts exactly zero KL
past the harm horizon ``k`` and is exactly as vulnerable as ``π_0`` to prefilling attacks there, so
its depth is at most ``k``; only the recovery penalty moves the policy past ``k`` and resists every
prefill (docs/theory.md §11).

Data augmentation (cross-entropy on recovery tokens) is deep too (``toysim objectives`` reports its
depth) but is not drawn: its optimum is ill-conditioned, the cross-entropy pushing ``π(R|x)`` toward
1 at harmful prefixes that the aligned policy rarely visits, and its certificate bounds the logits
only to about 2 (measured on this instance), so its curve would not be a certified number.

Computed by :func:`toysim.compare_methods` on the instance of figure 5 (tabular ``π_0``, deadline
harm): closed forms for the reweightings and the token-wise optimum (``β_t`` = 0.5 at ``t = 1`` and
2 after, a constraint loosened after the first token), certified Newton training for the recovery
penalty (its logits certified to :data:`CERTIFIED_TOL`; ``data`` refuses
otherwise).
"""

from __future__ import annotations

import jax
import numpy as np

import toysim

from . import _style
from .fig5_recovery_penalty import GAMMA, LAM, MU, POLICY_SEED, RECOVERY

NAME = "fig9_depth_by_method"
FULL = {"vocab_size": 3, "horizon": 5, "deadline": 2}
TINY = {"vocab_size": 2, "horizon": 3, "deadline": 1}
# The trained optimum (recovery penalty) must certify ‖θ − θ*‖ ≤ CERTIFIED_TOL in its logits: Newton
# stops at ‖∇L‖ ≈ 1.5e-12 (rounding) and the flattest curvature off the gauge is ≈ 6e-7, so the local
# bound is 2.7e-6 on the full instance. D_t moves by O(1) times that (its logit derivatives are
# bounded by O(1 + |log π/π_0|)) and log A(k), a sum of at most T log-probabilities with logit
# derivatives at most 1, by at most 2T times that: below a percent of every drawn value on a log
# axis. Its attack curve is published as log10 A(k) (values down to 1e-30 keep relative digits).
# Measured (2026-12-08): that bound covers only the directions the Hessian sees (toysim._optimize,
# FLAT_RTOL). Conditionals with log π ≈ −30, which the loss weighs by ~1e-13, lie outside them and
# move with float64 rounding: two runs that differed only in how the same functions were compiled
# (op by op, or fused) certified the same bound, 2.7e-6, yet their log π differed by up to 5e-3 at
# such prefixes and log10 A(1) by 2.3e-4 (-19.13494 and -19.13471). Still far below a percent on
# the axis; the last published digit of log10 A can depend on the machine's rounding.
CERTIFIED_TOL = 1e-5
TRAINED_METHODS = ("recovery_penalty",)
METHODS = tuple(  # (name, label, colour, marker)
    (name, label, *_style.METHOD_STYLE[name])
    for name, label in (
        ("tilt", "KL-regularised RL (tilt) = DPO"),
        ("ipo", "IPO"),
        ("best_of_n", "best-of-4"),
        ("rejection_sampling", "rejection sampling = SFT"),
        ("token_wise_kl", "token-wise KL"),
        ("recovery_penalty", "recovery penalty"),
    )
)
TRAINED = {f"{what}_{name}": CERTIFIED_TOL for name in TRAINED_METHODS for what in ("kl", "log10_attack")}


def data(vocab_size: int, horizon: int, deadline: int) -> dict[str, np.ndarray]:
    """``D_t`` and ``A(k)`` of every method, the base curve, the horizon and each method's depth.

    Returns:
      ``kl_<method> (T,)``, ``attack_<method> (T,)`` (``log10_attack_<method>`` for the trained
      ones), ``depth_<method>``, ``attack_base (T,)``,
      ``k``, ``positions (T,)`` = ``1..T``, ``depths (T,)`` = ``0..T−1``.

    Raises:
      ValueError: when a trained optimum is not certified to :data:`CERTIFIED_TOL`.
    """
    jax.config.update("jax_enable_x64", True)
    policy = toysim.TabularPolicy(vocab_size, horizon)
    params = policy.init(jax.random.key(POLICY_SEED), scale=1.0)
    inst = toysim.Instance(policy, params, toysim.deadline_harm(vocab_size, [vocab_size - 1], deadline), LAM)
    betas = [0.5] + [2.0] * (horizon - 1)
    settings = toysim.MethodSettings(
        recovery=list(RECOVERY), mu=MU, gamma=GAMMA, n=4, token_betas=betas, steps=100
    )
    out = toysim.compare_methods(inst, only=[m for m, *_ in METHODS], settings=settings, engine="enumerate")
    numbers = {
        "positions": np.arange(1, horizon + 1),
        "depths": np.arange(horizon),
        "attack_base": np.asarray(out.base_attack_success),
        "k": np.asarray(deadline),
    }
    for name, *_ in METHODS:
        m = out.methods[name]
        if name in TRAINED_METHODS:
            cert = m.certificate
            if not (
                cert["converged"]
                and cert["distance_bound"] is not None
                and cert["distance_bound"] <= CERTIFIED_TOL
            ):
                raise ValueError(f"{NAME}: the {name} optimum is certified only to {cert['distance_bound']}")
        numbers[f"kl_{name}"] = m.kl_by_position
        if name in TRAINED_METHODS:
            numbers[f"log10_attack_{name}"] = np.log10(m.attack_success)
        else:
            numbers[f"attack_{name}"] = m.attack_success
        numbers[f"depth_{name}"] = np.asarray(m.depth)
    return numbers


def _attack(numbers: dict[str, np.ndarray], name: str) -> np.ndarray:
    if f"log10_attack_{name}" in numbers:
        return 10.0 ** numbers[f"log10_attack_{name}"]
    return numbers[f"attack_{name}"]


def plot(numbers: dict[str, np.ndarray]):
    """(a) ``D_t`` by position (log axis; exact zeros drawn at the floor); (b) ``A(k)``."""
    fig, (ax_a, ax_b) = _style.figure(2, 1, height=4.4)
    positions, depths, k = numbers["positions"], numbers["depths"], int(numbers["k"])
    kls = np.concatenate([numbers[f"kl_{m}"] for m, *_ in METHODS])
    floor = kls[kls > 0].min() / 30.0
    attacks = np.concatenate([_attack(numbers, m) for m, *_ in METHODS] + [numbers["attack_base"]])
    attack_floor = attacks[attacks > 0].min() / 30.0
    for i, (name, label, color, marker) in enumerate(METHODS):
        kl = numbers[f"kl_{name}"]
        shift = (i - len(METHODS) / 2) * 0.05
        ax_a.plot(
            positions + shift,
            np.where(kl > 0, kl, floor),
            "-" + marker,
            color=color,
            ms=3,
            lw=0.8,
            label=label,
        )
        depth = int(numbers[f"depth_{name}"])
        attack = _attack(numbers, name)
        ax_b.plot(
            depths,
            np.where(attack > 0, attack, attack_floor),
            "-" + marker,
            color=color,
            ms=3,
            lw=0.8,
            label=f"{label} (depth {depth})",
        )
    ax_b.plot(
        depths, numbers["attack_base"], "--", color=_style.OKABE_ITO["black"], lw=1.0, label=r"base $\pi_0$"
    )
    _finish_panel(
        ax_a,
        ticks=positions,
        floor=floor,
        ylabel=r"per-position KL $D_t$",
        xlabel=_style.SYMBOL["t"],
        legend_loc="upper right",
        title="(a) where each method moves the policy",
        horizon=k,
    )
    _finish_panel(
        ax_b,
        ticks=depths,
        floor=attack_floor,
        ylabel=r"attack success $A(k)$",
        xlabel=r"prefill depth $k$",
        legend_loc="center right",
        title="(b) prefilling attacks",
        horizon=k - 1,
    )
    return fig


def _finish_panel(ax, *, ticks, floor, ylabel, xlabel, legend_loc, title, horizon):
    """Log axis with exact zeros drawn on the dotted ``floor`` line, labels, legend, horizon mark."""
    ax.axhline(floor, color=_style.HORIZON_COLOR, lw=0.5, ls=":")
    ax.annotate(
        "exactly 0",
        xy=(ticks[-1] + 0.3, floor),
        ha="right",
        va="bottom",
        fontsize=6.5,
        color=_style.HORIZON_COLOR,
    )
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    ax.set_xticks(ticks)
    ax.legend(loc=legend_loc, fontsize=5.5, ncol=1, handlelength=1.4)
    _style.panel_label(ax, title)
    _style.mark_horizon(ax, horizon, label=r"$k$")


def main(out_dir=None):
    """Write ``fig9_depth_by_method.png`` and ``.pdf``."""
    from . import main_for

    return main_for(NAME, out_dir)


if __name__ == "__main__":
    main()
