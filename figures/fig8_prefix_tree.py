"""Figure 8 (teaching): the whole prefix tree of a tiny instance, with the gradient on its edges.

Claim: for a tabular policy the gradient of ``E[h]`` with respect to the logit of token ``v`` at
prefix ``p`` is the covariance term ``w(p, v) = P(p) π(v|p) (H(p·v) − H(p))`` (docs/theory.md §4,
closed form), so ``G_t`` is the collection of the terms on the edges into level ``t``; every edge
leaving a determined prefix (shaded: ``h`` is the same for every continuation) carries exactly
zero (section 5).

Every node shows its prefix and ``H = E[h | prefix]``; every edge shows ``π(v|p)`` and ``w(p, v)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import toysim

from . import _style

NAME = "fig8_prefix_tree"
FULL = {"vocab_size": 2, "horizon": 3}
TINY = FULL  # the instance is already tiny
POLICY_SEED = 3


@functools.partial(jax.jit, static_argnums=(0,))
def _tree(policy, key, h):
    """Every exact quantity of the tree, in one compiled program."""
    params = policy.init(key)
    levels = toysim.forward(policy, params)
    mart = toysim.harm_martingale(levels, h)
    masks = toysim.determined_masks(h, policy.vocab_size, policy.horizon)
    weights = toysim.covariance_weights(levels, mart)
    grad = toysim.autodiff_gradient(policy, params, h)
    g_norm = jnp.sqrt(jnp.stack([jnp.sum(w**2) for w in weights]))  # tabular: G_t = w_t
    return levels, mart, masks, weights, grad, g_norm, toysim.uniform_horizon(masks)


def data(vocab_size: int, horizon: int) -> dict[str, np.ndarray]:
    """Every node and edge of the tree.

    Returns:
      For ``t = 0..T``: ``H{t} (V**t,)`` martingale values, ``P{t} (V**t,)`` prefix
      probabilities, ``determined{t} (V**t,)`` masks. For ``t = 1..T``: ``pi{t} (V**(t-1), V)``
      edge probabilities, ``w{t} (V**(t-1), V)`` covariance terms, ``grad{t}`` the tabular
      gradient ``∂E[h]/∂logits`` of level ``t-1`` by ``jax.grad`` (independent of ``H``).
      ``G_norm (T,)`` = ``‖G_t‖ = ‖w_t‖`` (tabular: ``G_t`` is ``w_t``), ``k`` the uniform horizon.

    The harm is a trigger (``h = 1`` iff token ``V − 1`` ever occurs): a prefix is determined as
    soon as it holds the trigger, so horizons differ from response to response (``τ(y) = 1..T``).
    """
    jax.config.update("jax_enable_x64", True)
    policy = toysim.TabularPolicy(vocab_size, horizon)
    h = jnp.asarray(
        toysim.harm_values(toysim.trigger_harm(vocab_size, [vocab_size - 1]), vocab_size, horizon)
    )
    levels, mart, masks, weights, grad, g_norm, k = _tree(policy, jax.random.key(POLICY_SEED), h)
    out = {"G_norm": np.asarray(g_norm), "k": np.asarray(k)}
    for t in range(horizon + 1):
        out[f"H{t}"] = np.asarray(mart[t])
        out[f"P{t}"] = np.exp(np.asarray(levels.log_prefix[t]))
        out[f"determined{t}"] = np.asarray(masks[t])
    for t in range(1, horizon + 1):
        out[f"pi{t}"] = np.exp(np.asarray(levels.log_cond[t - 1]))
        out[f"w{t}"] = np.asarray(weights[t - 1])
        out[f"grad{t}"] = np.asarray(grad[t - 1])
    return out


def _prefix_name(index: int, t: int, vocab_size: int) -> str:
    if t == 0:
        return "∅"
    digits = [(index // vocab_size**j) % vocab_size for j in reversed(range(t))]
    return "".join(str(d) for d in digits)


def plot(numbers: dict[str, np.ndarray]):
    """The tree laid out left to right: root at ``t = 0``, leaves at ``t = T``."""
    horizon = len(numbers["G_norm"])
    vocab_size = numbers["pi1"].shape[1]
    fig, ax = _style.figure(1, 1, height=3.6, width=_style.DOUBLE_WIDTH)
    n_leaves = vocab_size**horizon
    ys = [np.arange(n_leaves, dtype=float)[::-1]]  # first leaf on top
    for _ in range(horizon):
        ys.append(ys[-1].reshape(-1, vocab_size).mean(axis=1))
    ys = ys[::-1]  # ys[t]: vertical position of every prefix of length t
    node_box = {"boxstyle": "round,pad=0.25", "lw": 0.6}
    for t in range(1, horizon + 1):
        w, pi = numbers[f"w{t}"], numbers[f"pi{t}"]
        for p in range(vocab_size ** (t - 1)):
            for v in range(vocab_size):
                child = p * vocab_size + v
                x0, y0, x1, y1 = t - 1, ys[t - 1][p], t, ys[t][child]
                if w[p, v] == 0.0:
                    style = {"color": "0.6", "ls": "--"}
                elif w[p, v] > 0:
                    style = {"color": _style.OKABE_ITO["vermillion"], "ls": "-"}
                else:
                    style = {"color": _style.OKABE_ITO["blue"], "ls": "-"}
                ax.plot([x0, x1], [y0, y1], lw=0.9, zorder=1, **style)
                s = 0.62  # label position along the edge, nearer the child where edges fan out
                ax.text(
                    x0 + s * (x1 - x0),
                    y0 + s * (y1 - y0),
                    f"π={pi[p, v]:.2f}\n" + ("w=0 (exact)" if w[p, v] == 0.0 else f"w={w[p, v]:+.3f}"),
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color=style["color"] if w[p, v] != 0.0 else "0.35",
                    linespacing=1.0,
                    bbox={"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none"},
                    zorder=2,
                )
    for t in range(horizon + 1):
        H, det = numbers[f"H{t}"], numbers[f"determined{t}"]
        for p in range(vocab_size**t):
            ax.text(
                t,
                ys[t][p],
                f"{_prefix_name(p, t, vocab_size)}\nH={H[p]:.3f}",
                ha="center",
                va="center",
                fontsize=7,
                linespacing=1.0,
                bbox={**node_box, "fc": _style.DETERMINED_FILL if det[p] else "white", "ec": "0.3"},
                zorder=3,
            )
    for t in range(1, horizon + 1):
        ax.text(
            t - 0.5,
            -1.0,
            rf"$\|G_{t}\| = {numbers['G_norm'][t - 1]:.3f}$",
            ha="center",
            va="center",
            fontsize=7,
        )
    for t in range(horizon + 1):
        ax.text(t, n_leaves - 0.2, f"t = {t}", ha="center", va="bottom", fontsize=7, color="0.3")
    ax.set_xlim(-0.35, horizon + 0.35)
    ax.set_ylim(-1.5, n_leaves + 0.3)
    ax.axis("off")
    fig.text(
        0.5,
        0.0,
        r"shaded node: determined prefix (zero on every edge out of it);  "
        r"edge: $\pi(v|p)$ and $w = P(p)\,\pi(v|p)\,(H(pv)-H(p)) = \partial E[h]/\partial\,\mathrm{logit}(p,v)$",
        ha="center",
        va="bottom",
        fontsize=7,
        color="0.25",
    )
    return fig


def main(out_dir=None):
    """Write ``fig8_prefix_tree.png`` and ``.pdf``."""
    from . import main_for

    return main_for(NAME, out_dir)


if __name__ == "__main__":
    main()
