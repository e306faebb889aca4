"""Figure 2: the per-position gradient, covariance form against autodiff, vanishes past the horizon.

Claim: ``‖G_t‖`` computed in covariance form [Thm 8] (``toysim.covariance_gradient``) equals the
position-untied autodiff gradient ``∂E[h]/∂θ_t`` (``toysim.untied_autodiff_gradient``) at every
position, and is exactly zero for ``t > k`` [Thm 10] (docs/theory.md §4-5).

The policy is Markov (order 1): its parameters are shared by all positions, so the untied autodiff
is the only independent per-position reference. The deadline harm has ``k = deadline < T``; the
first-decisive and graded harms have ``k = T`` and show instead how the gradient spreads over
positions: it decays with the probability of still being undecided (first-decisive), and stays
spread over every position when every token counts (graded).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import toysim

from . import _style

NAME = "fig2_gradient_by_position"
HARMS = ("deadline", "first_decisive", "graded")
TITLES = {"deadline": "(a) deadline", "first_decisive": "(b) first decisive", "graded": "(c) graded"}
FULL = {"vocab_size": 3, "horizon": 6, "deadline": 3}
TINY = {"vocab_size": 3, "horizon": 3, "deadline": 2}
POLICY_SEED = 0


def _harm(kind: str, vocab_size: int, horizon: int, deadline: int):
    harmful = vocab_size - 1
    if kind == "deadline":
        return toysim.deadline_harm(vocab_size, [harmful], deadline)
    if kind == "first_decisive":
        return toysim.first_decisive_harm(vocab_size, comply_tokens=[harmful], refuse_tokens=[1])
    return toysim.graded_harm(vocab_size, horizon, [harmful])


@functools.partial(jax.jit, static_argnums=(0,))
def _gradients(policy, key, harms):
    """Per harm (``harms`` stacked ``(K, V**T)``, mapped with ``vmap``): ``‖G_t‖`` in covariance form and by untied autodiff, their largest entrywise gap, and ``k``."""
    params = policy.init(key)
    levels = toysim.forward(policy, params)

    def per_harm(h):
        mart = toysim.harm_martingale(levels, h)
        cov = toysim.covariance_gradient(policy, params, levels, mart)
        auto = toysim.untied_autodiff_gradient(policy, params, h)
        k = toysim.uniform_horizon(toysim.determined_masks(h, policy.vocab_size, policy.horizon))
        cov_norms = jnp.sqrt(jnp.stack([toysim.tree_sq_norm(g) for g in cov]))
        auto_norms = jnp.sqrt(jnp.stack([toysim.tree_sq_norm(g) for g in auto]))
        gaps = jax.tree_util.tree_map(lambda a, b: jnp.max(jnp.abs(a - b)), cov, auto)
        return cov_norms, auto_norms, jnp.max(jnp.stack(jax.tree_util.tree_leaves(gaps))), k

    return jax.vmap(per_harm)(harms)


def data(vocab_size: int, horizon: int, deadline: int) -> dict[str, np.ndarray]:
    """``‖G_t‖`` both ways, for each harm kind.

    Returns:
      For each ``K`` in :data:`HARMS`: ``K_covariance (T,)`` the covariance-form norms (bars),
      ``K_autodiff (T,)`` the untied autodiff norms (markers), ``K_max_abs_error`` the largest
      entrywise difference between the two gradients over all positions and parameters, ``K_k``
      the uniform horizon. Also ``positions (T,)`` = ``1..T``.
    """
    jax.config.update("jax_enable_x64", True)
    policy = toysim.MarkovPolicy(vocab_size, horizon, order=1)
    harms = jnp.stack(
        [
            toysim.harm_values(_harm(kind, vocab_size, horizon, deadline), vocab_size, horizon)
            for kind in HARMS
        ]
    )
    cov_norms, auto_norms, gap, k = (
        np.asarray(x) for x in _gradients(policy, jax.random.key(POLICY_SEED), harms)
    )
    out = {"positions": np.arange(1, horizon + 1)}
    for i, kind in enumerate(HARMS):
        out[f"{kind}_covariance"] = cov_norms[i]
        out[f"{kind}_autodiff"] = auto_norms[i]
        out[f"{kind}_max_abs_error"] = np.asarray(gap[i])
        out[f"{kind}_k"] = np.asarray(k[i])
    return out


def plot(numbers: dict[str, np.ndarray]):
    """Three stacked panels: bars ``‖G_t‖`` (covariance form), markers (untied autodiff)."""
    fig, axes = _style.figure(3, 1, height=4.0, sharex=True)
    t = numbers["positions"]
    horizon = int(t[-1])
    for ax, kind in zip(axes, HARMS):
        cov, auto, k = numbers[f"{kind}_covariance"], numbers[f"{kind}_autodiff"], int(numbers[f"{kind}_k"])
        ax.bar(t, cov, width=0.6, color=_style.OKABE_ITO["sky"], label="covariance form")
        ax.plot(t, auto, "x", color=_style.OKABE_ITO["vermillion"], ms=4, mew=1.0, label="untied autodiff")
        top = max(float(cov.max()), float(auto.max())) * 1.15 or 1.0
        ax.set_ylim(0, top)
        if k < horizon:
            _style.mark_horizon(ax, k, label=None)
            ax.text(
                (k + 0.5 + horizon + 0.6) / 2,
                0.5 * top,
                "$G_t = 0$ exactly\n" + rf"for $t > k = {k}$",
                ha="center",
                va="center",
                fontsize=7,
                color=_style.HORIZON_COLOR,
            )
        else:
            ax.text(
                0.98,
                0.92,
                f"k = T = {k}: no position\nis past the horizon",
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=7,
            )
        ax.set_ylabel(_style.SYMBOL["G"])
        _style.panel_label(ax, TITLES[kind] + " harm")
    _style.integer_positions(axes[-1], horizon)
    axes[-1].set_xlabel(_style.SYMBOL["t"])
    axes[0].legend(loc="upper right", handlelength=1.0)
    return fig


def main(out_dir=None):
    """Write ``fig2_gradient_by_position.png`` and ``.pdf``."""
    from . import main_for

    return main_for(NAME, out_dir)


if __name__ == "__main__":
    main()
