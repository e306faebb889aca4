"""Figure 3: the equilibrium KL by position tracks the harm information.

Claim: the per-position KL ``D_t`` of the exact equilibrium ``π* ∝ π_0 e^{−λh}`` (``toysim.tilt``)
tracks ``(λ²/2) I_t`` [Thm 14], is exactly zero beyond the horizon ``k``, and the ratio
``2 D_t / (λ² I_t)`` tends to 1 as ``λ → 0`` (docs/theory.md §7). ``I_t`` is the harm
information under the base policy ``π_0``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import toysim

from . import _style

NAME = "fig3_kl_tracks_information"
FULL = {"vocab_size": 3, "horizon": 6, "deadline": 3, "lam": 0.5, "n_lams": 17}
TINY = {"vocab_size": 3, "horizon": 3, "deadline": 2, "lam": 0.5, "n_lams": 5}
LAM_RANGE = (1e-3, 1e1)
POLICY_SEED = 0


@functools.partial(jax.jit, static_argnums=(0,))
def _profiles(policy, key, h, lams):
    """``I_t`` under ``π_0``, the horizon ``k`` and ``D_t`` of the tilt at every ``λ`` in ``lams``
    (mapped with ``vmap``): one compiled program."""
    base = toysim.forward(policy, policy.init(key))
    info = toysim.harm_information(base, toysim.harm_martingale(base, h))
    k = toysim.uniform_horizon(toysim.determined_masks(h, policy.vocab_size, policy.horizon))
    kl = jax.vmap(lambda lam: toysim.tilt(base, h, lam).kl_by_position)(lams)
    return info, k, kl


def data(vocab_size: int, horizon: int, deadline: int, lam: float, n_lams: int) -> dict[str, np.ndarray]:
    """``D_t`` and ``(λ²/2) I_t`` at one ``λ``, and ``2 D_t / (λ² I_t)`` over a range of ``λ``.

    Returns:
      ``positions (T,)``; ``information (T,)`` = ``I_t`` under ``π_0``; ``lam`` (profile λ);
      ``kl (T,)`` = ``D_t`` at ``lam``; ``quadratic (T,)`` = ``(λ²/2) I_t``; ``lams (L,)``;
      ``ratio (L, T)`` = ``2 D_t / (λ² I_t)``, NaN where ``I_t = 0``; ``total_ratio (L,)`` =
      ``2 KL(π*‖π_0) / (λ² Var h)``; ``k`` the uniform horizon.
    """
    jax.config.update("jax_enable_x64", True)
    policy = toysim.MarkovPolicy(vocab_size, horizon, order=1)
    h = jnp.asarray(
        toysim.harm_values(toysim.deadline_harm(vocab_size, [vocab_size - 1], deadline), vocab_size, horizon)
    )
    lams = np.logspace(np.log10(LAM_RANGE[0]), np.log10(LAM_RANGE[1]), n_lams)
    info, k, kl_all = (
        np.asarray(x) for x in _profiles(policy, jax.random.key(POLICY_SEED), h, np.append(lams, lam))
    )
    kl_by_lam, kl = kl_all[:-1], kl_all[-1]
    informative = info > 0
    ratio = np.full(kl_by_lam.shape, np.nan)
    ratio[:, informative] = 2.0 * kl_by_lam[:, informative] / (lams[:, None] ** 2 * info[informative])
    return {
        "positions": np.arange(1, horizon + 1),
        "information": info,
        "lam": np.asarray(lam),
        "kl": kl,
        "quadratic": 0.5 * lam**2 * info,
        "lams": lams,
        "ratio": ratio,
        "total_ratio": 2.0 * kl_by_lam.sum(axis=1) / (lams**2 * info.sum()),
        "k": np.asarray(k),
    }


def plot(numbers: dict[str, np.ndarray]):
    """(a) bars ``D_t`` with markers ``(λ²/2) I_t``; (b) ``2D_t/(λ² I_t)`` against ``λ``, log axes."""
    fig, (ax_a, ax_b) = _style.figure(2, 1, height=3.9)
    t, k, lam = numbers["positions"], int(numbers["k"]), float(numbers["lam"])
    horizon = int(t[-1])
    ax_a.bar(t, numbers["kl"], width=0.6, color=_style.OKABE_ITO["sky"], label=r"$D_t$ (exact tilt)")
    ax_a.plot(t, numbers["quadratic"], "x", color=_style.OKABE_ITO["vermillion"], ms=4, mew=1.0)
    ax_a.plot([], [], "x", color=_style.OKABE_ITO["vermillion"], label=r"$\frac{\lambda^2}{2} I_t$")
    top = 1.15 * max(float(numbers["kl"].max()), float(numbers["quadratic"].max()))
    ax_a.set_ylim(0, top)
    if k < horizon:
        _style.mark_horizon(ax_a, k, label=None)
        ax_a.text(
            (k + 0.5 + horizon + 0.6) / 2,
            0.5 * top,
            "$D_t = 0$ exactly\n" + rf"for $t > k = {k}$",
            ha="center",
            va="center",
            fontsize=7,
        )
    _style.integer_positions(ax_a, horizon)
    ax_a.set_xlabel(_style.SYMBOL["t"])
    ax_a.set_ylabel("KL (nats)")
    ax_a.legend(loc="upper right", handlelength=1.0)
    _style.panel_label(ax_a, rf"(a) per-position KL at $\lambda = {lam:g}$")

    lams, ratio = numbers["lams"], numbers["ratio"]
    for j in range(ratio.shape[1]):
        if np.all(np.isnan(ratio[:, j])):
            continue
        ax_b.plot(lams, ratio[:, j], "-o", ms=2.0, label=rf"$t = {j + 1}$")
    ax_b.plot(lams, numbers["total_ratio"], "--", color="0.2", lw=0.9, label=r"$\sum_t$")
    ax_b.axhline(1.0, color=_style.HORIZON_COLOR, lw=0.6, ls=":", zorder=0)
    ax_b.set_xscale("log")
    ax_b.set_yscale("log")
    ax_b.set_xlabel(_style.SYMBOL["lam"])
    ax_b.set_ylabel(r"$2 D_t \,/\, (\lambda^2 I_t)$")
    ax_b.legend(loc="lower left", ncols=2, handlelength=1.4, columnspacing=0.8)
    _style.panel_label(ax_b, r"(b) ratio $\to 1$ as $\lambda \to 0$")
    return fig


def main(out_dir=None):
    """Write ``fig3_kl_tracks_information.png`` and ``.pdf``."""
    from . import main_for

    return main_for(NAME, out_dir)


if __name__ == "__main__":
    main()
