"""Figure 6: prefilling attacks against base, standard-aligned and deep-aligned policies.

Claim: the prefilling-attack success ``A(k) = E_{p~Q_k}[P_θ(no recovery token after p)]`` of the
standard-aligned optimum (the tilt ``π* ∝ π_0 e^{−λh}``) equals the base policy's at every depth
``k ≥ k_h`` (the harm horizon), while the deep-aligned optimum lies below both at every depth; its
one-step recovery after the prefill stays above the guarantee ``σ(logit p_min + μγ^{t−1})``
[Thm 22], which falls to ``δ`` at ``t_attack(δ)`` [Cor 23] (docs/theory.md §8-9; the toy
counterpart of Qi et al.'s attack-success-against-prefill figure).

The instance and both optima are those of figure 5 (:func:`figures.fig5_recovery_penalty.deep_instance`,
computed once per process). The deep optimum is the minimiser of the *separable* objective, for
which the Gibbs form [Thm 20] is exact past the horizon, so [Thm 22] and [Cor 23] describe it
exactly there. The joint ``L_deep`` optimum is not drawn: it saturates (``π(R|p)`` driven to 1 after
harmful prefixes, attack success to exactly 0 at some depths, which a log axis cannot show, and
L-BFGS can stop on softmax plateaus; ``proofs_check/gibbs_form.py``), so its curve says more about
the optimiser than about the objective.

Depth ``k`` counts the prefilled tokens; the first free token is at position ``t = k + 1``, so the
guarantee at depth ``k`` is ``σ(logit p_min + μγ^k)`` and the attack length ``t_attack(δ)`` is drawn
at depth ``t_attack(δ) − 1``.
"""

from __future__ import annotations

import numpy as np

import toysim

from . import _style
from .fig5_recovery_penalty import CERTIFIED_TOL, GAMMA, MU, deep_instance

NAME = "fig6_prefilling_attacks"
FULL = {"vocab_size": 3, "horizon": 5, "deadline": 2, "delta": 0.05}
TINY = {"vocab_size": 2, "horizon": 3, "deadline": 1, "delta": 0.2}
# the deep optimum's curves are trained numbers, certified to CERTIFIED_TOL (figure 5's instance)
TRAINED = {"attack_deep": CERTIFIED_TOL, "min_recovery_deep": CERTIFIED_TOL}
CURVES = (
    ("base", r"base $\pi_0$", _style.OKABE_ITO["black"], "o"),
    ("standard", r"standard (tilt $\pi^*$)", _style.OKABE_ITO["blue"], "s"),
    ("deep", "deep (separable optimum)", _style.OKABE_ITO["vermillion"], "D"),
)


def data(vocab_size: int, horizon: int, deadline: int, delta: float) -> dict[str, np.ndarray]:
    """Attack success and one-step recovery against prefill depth, and the guarantee.

    Returns:
      ``depths (T,)`` = ``0..T−1``; ``attack_<policy> (T,)`` = ``A(k)`` for ``base``, ``standard``
      and ``deep``; ``min_recovery_<policy> (T,)`` = ``min π(R|p)`` over prefixes ``p`` of length
      ``k`` with ``Q(p) > 0``; ``guarantee (T,)`` = ``σ(logit p_min + μγ^k)``; ``p_min``;
      ``delta``; ``t_attack`` = ``t_attack(δ)`` (a position); ``k`` the harm horizon;
      ``mu``, ``gamma``.

    Raises:
      ValueError: if ``δ`` is not in ``(p_min, 1)`` (no attack length).
    """
    inst = deep_instance(vocab_size, horizon, deadline)
    depths = np.arange(horizon)
    out = {"depths": depths}
    for name, *_ in CURVES:
        out[f"attack_{name}"] = inst.numbers[f"attack_{name}"]
        out[f"min_recovery_{name}"] = inst.numbers[f"min_recovery_{name}"]
    out.update(
        guarantee=np.asarray(toysim.guaranteed_recovery(inst.p_min, MU, GAMMA, depths + 1)),
        p_min=np.asarray(inst.p_min),
        delta=np.asarray(delta),
        t_attack=np.asarray(toysim.attack_length(delta, inst.p_min, MU, GAMMA)),
        k=np.asarray(inst.k),
        mu=np.asarray(MU),
        gamma=np.asarray(GAMMA),
    )
    return out


def _mark_attack(ax, depth, label):
    ax.axvline(depth, color=_style.OKABE_ITO["green"], linestyle=":", linewidth=1.0, zorder=0)
    if label:
        ax.annotate(
            r"$t_{\rm attack}(\delta)$",
            xy=(depth, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -10),
            textcoords="offset points",
            ha="left",
            va="top",
            fontsize=7,
            color=_style.OKABE_ITO["green"],
        )


def plot(numbers: dict[str, np.ndarray]):
    """(a) ``A(k)`` on a log axis; (b) one-step recovery after the prefill against the guarantee."""
    fig, (ax_a, ax_b) = _style.figure(2, 1, height=4.1, sharex=True)
    depths, k = numbers["depths"], int(numbers["k"])
    delta, t_attack = float(numbers["delta"]), float(numbers["t_attack"])
    for name, label, color, marker in CURVES:
        ax_a.plot(depths, numbers[f"attack_{name}"], "-" + marker, color=color, ms=3, label=label)
        ax_b.plot(depths, numbers[f"min_recovery_{name}"], marker, color=color, ms=3.5)
    ax_a.set_yscale("log")
    ax_a.set_ylabel(r"attack success $A(k)$")
    ax_a.legend(loc="lower right", handlelength=1.6)
    _style.panel_label(ax_a, "(a) prefilling attack success")

    lo, hi = depths[0] - 0.4, depths[-1] + 0.4
    fine = np.linspace(lo, hi, 200)
    mu, gamma = float(numbers["mu"]), float(numbers["gamma"])
    bound = toysim.guaranteed_recovery(float(numbers["p_min"]), mu, gamma, fine + 1)
    ax_b.plot(
        fine,
        bound,
        "-",
        color=_style.OKABE_ITO["green"],
        lw=1.0,
        label="guarantee [Thm 22]\n" + r"$\sigma(\mathrm{logit}\,p_{\min}+\mu\gamma^{k})$",
    )
    ax_b.axhline(delta, color=_style.HORIZON_COLOR, lw=0.6, ls="-.", zorder=0)
    ax_b.annotate(
        rf"$\delta = {delta:g}$",
        xy=(lo, delta),
        xytext=(2, -2),
        textcoords="offset points",
        ha="left",
        va="top",
        fontsize=7,
        color=_style.HORIZON_COLOR,
    )
    ax_b.set_yscale("log")
    ax_b.set_ylabel(r"one-step recovery $\min_p\,\pi(R\mid p)$")
    ax_b.set_xlabel(r"prefill depth $k$ (first free position $t = k+1$)")
    ax_b.legend(loc="upper right", bbox_to_anchor=(1.0, 0.84), handlelength=1.6, fontsize=6.5)
    _style.panel_label(ax_b, "(b) recovery right after the prefill")

    for ax in (ax_a, ax_b):
        _style.mark_horizon(ax, k, label=r"$k_h$" if ax is ax_b else None, offset=-0.5)
        _mark_attack(ax, t_attack - 1.0, label=ax is ax_b)
        ax.set_xticks(depths)
        ax.set_xlim(lo, hi)
    return fig


def main(out_dir=None):
    """Write ``fig6_prefilling_attacks.png`` and ``.pdf``."""
    from . import main_for

    return main_for(NAME, out_dir)


if __name__ == "__main__":
    main()
