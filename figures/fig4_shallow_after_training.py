"""Figure 4: alignment after training is shallow, exactly for tabular policies, not for shared ones.

Claim: after exact training of ``L(θ) = λ E[h] + KL(π_θ ‖ π_0)`` (``toysim._training.train_alignment``,
L-BFGS from ``π_0``), the per-position KL ``D_t`` to the base policy concentrates on the positions
up to the harm horizon ``k``; beyond it the tabular policy does not move (``D_t`` at rounding level,
the equilibrium's is exactly 0 [Thm 14, Thm 10]), while the Markov policy, whose parameters are
shared by all positions, carries KL past the horizon ("spillover", App. A, Thm 27; a finding,
measured by ``spillover_by_position``). The MLP's spillover is non-zero but tiny (5e-10 to 3e-8 at
the full size, rounding level at the tiny one): its features let it mimic the tilt. Toy counterpart of Qi et al.'s per-token KL figure
(THEORY.md sections 7 and 9).

Each family has its own base policy ``π_0`` (Gaussian parameters, same seed) and its own closed-form
equilibrium ``π* ∝ π_0 e^{−λh}`` over all policies (``toysim.tilt``), drawn as a tick on its bar.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import toysim
from toysim._training import spillover_by_position, train_alignment

from . import _style

NAME = "fig4_shallow_after_training"
FULL = {"vocab_size": 2, "horizon": 5, "deadline": 2, "steps": 300}
TINY = {"vocab_size": 2, "horizon": 3, "deadline": 2, "steps": 60}
FAMILIES = ("tabular", "markov", "mlp")
LABELS = {"tabular": "tabular", "markov": "Markov", "mlp": "MLP"}
COLORS = {
    "tabular": _style.OKABE_ITO["sky"],
    "markov": _style.OKABE_ITO["orange"],
    "mlp": _style.OKABE_ITO["green"],
}
POLICY_SEED = 0
LAM = 2.0
# stop once ‖∇L‖ reaches rounding level (L-BFGS; the tabular and Markov runs get there)
GRAD_TOL = 1e-12
RECORD_EVERY = 25


def _policy(family: str, vocab_size: int, horizon: int):
    if family == "tabular":
        return toysim.TabularPolicy(vocab_size, horizon)
    if family == "markov":
        return toysim.MarkovPolicy(vocab_size, horizon, order=1)
    return toysim.MLPPolicy(vocab_size, horizon, window=2, hidden=8)


@functools.partial(jax.jit, static_argnums=(0,))
def _measures(policy, params, base_params, h, lam):
    """The trained policy's spillover ``S_t`` and the equilibrium's ``D_t``, in one compiled program."""
    spill = spillover_by_position(policy, params, base_params, h)
    equilibrium = toysim.tilt(toysim.forward(policy, base_params), h, lam).kl_by_position
    return spill, equilibrium


def data(vocab_size: int, horizon: int, deadline: int, steps: int) -> dict[str, np.ndarray]:
    """Per-position KL to ``π_0`` after training, for each family.

    Returns:
      ``positions (T,)``; for each family ``F`` in :data:`FAMILIES`: ``F_kl (T,)`` the trained
      policy's ``D_t``, ``F_spillover (T,)`` its KL at determined prefixes ``S_t`` (equal to
      ``D_t`` for ``t > k``), ``F_equilibrium (T,)`` the tilt's ``D_t``, ``F_grad_norm`` the final
      ``‖∇L‖`` and ``F_steps`` the steps run; ``k`` the uniform horizon; ``lam``.
    """
    jax.config.update("jax_enable_x64", True)
    harm = toysim.deadline_harm(vocab_size, [vocab_size - 1], deadline)
    h = jnp.asarray(toysim.harm_values(harm, vocab_size, horizon))
    k = int(toysim.uniform_horizon(toysim.determined_masks(h, vocab_size, horizon)))
    out = {"positions": np.arange(1, horizon + 1), "k": np.asarray(k), "lam": np.asarray(LAM)}
    for family in FAMILIES:
        policy = _policy(family, vocab_size, horizon)
        base_params = policy.init(jax.random.key(POLICY_SEED), scale=1.0)
        res = train_alignment(
            policy,
            None,
            base_params,
            h,
            LAM,
            steps=steps,
            record_every=RECORD_EVERY,
            tol=GRAD_TOL,
            progress=False,
        )
        spill, equilibrium = _measures(policy, res.params, base_params, h, jnp.float64(LAM))
        out[f"{family}_kl"] = np.asarray(res.kl_by_position[-1])
        out[f"{family}_spillover"] = np.asarray(spill)
        out[f"{family}_equilibrium"] = np.asarray(equilibrium)
        out[f"{family}_grad_norm"] = np.asarray(res.grad_norms[-1])
        out[f"{family}_steps"] = np.asarray(res.steps[-1])
    return out


# KL values below this are rounding (|D_t| ~ 1e-17 of either sign): drawn as a note, not a bar.
ROUNDING = 1e-14


def plot(numbers: dict[str, np.ndarray]):
    """Grouped bars ``D_t`` per family on a log axis, equilibrium ticks, the horizon marked."""
    fig, ax = _style.figure(1, 1, height=2.5)
    t, k = numbers["positions"], int(numbers["k"])
    horizon = int(t[-1])
    width = 0.26
    values = np.concatenate([numbers[f"{f}_kl"] for f in FAMILIES])
    low = values[values > ROUNDING].min() / 20.0
    for i, family in enumerate(FAMILIES):
        x = t + (i - 1) * width
        kl = numbers[f"{family}_kl"]
        shown = np.where(kl > ROUNDING, kl, np.nan)
        ax.bar(x, shown, width=width * 0.95, color=COLORS[family], label=LABELS[family])
        eq = numbers[f"{family}_equilibrium"]
        ax.plot(x[eq > 0], eq[eq > 0], "_", color="black", ms=6, mew=1.0)
        for xi, v in zip(x, kl):
            if abs(v) <= ROUNDING:
                ax.annotate(
                    r"$<10^{-16}$",
                    xy=(xi, low),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    rotation=90,
                    fontsize=5.5,
                    color=_style.OKABE_ITO["blue"],
                )
    ax.plot([], [], "_", color="black", ms=6, mew=1.0, label=r"tilt $\pi^*$")
    ax.set_yscale("log")
    ax.set_ylim(low, values.max() * 5.0)
    _style.mark_horizon(ax, k, label=r"$k$")
    _style.integer_positions(ax, horizon)
    ax.set_xlabel(_style.SYMBOL["t"])
    ax.set_ylabel(r"$D_t = $ KL to $\pi_0$ (nats)")
    ax.legend(loc="lower left", handlelength=1.0, fontsize=6)
    _style.panel_label(ax, rf"per-position KL after training ($\lambda = {float(numbers['lam']):g}$)")
    return fig


def main(out_dir=None):
    """Write ``fig4_shallow_after_training.png`` and ``.pdf``."""
    from . import main_for

    return main_for(NAME, out_dir)


if __name__ == "__main__":
    main()
