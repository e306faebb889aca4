"""Figure 1: harm martingale paths freeze at their own horizon.

Claim: along every sampled response the harm martingale ``H_t = E[h | y_≤t]`` stops moving at the
response's own horizon ``τ(y)`` (docs/theory.md §2 and 5): early for a deadline harm, only at
``t = T`` for a graded harm, where every token still counts.

Responses are sampled token by token with ``jax.random.categorical`` from the policy's exact
conditionals (fixed seed); ``H_t`` and ``τ(y)`` are exact (``toysim.harm_martingale``,
``toysim.sequence_horizon``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import toysim

from . import _style

NAME = "fig1_martingale_paths"
HARMS = ("deadline", "graded")
FULL = {"vocab_size": 3, "horizon": 6, "deadline": 3, "n_paths": 24}
TINY = {"vocab_size": 3, "horizon": 3, "deadline": 2, "n_paths": 6}
POLICY_SEED, SAMPLE_SEED = 0, 1


def _harm(kind: str, vocab_size: int, horizon: int, deadline: int):
    harmful = [vocab_size - 1]
    if kind == "deadline":
        return toysim.deadline_harm(vocab_size, harmful, deadline)
    return toysim.graded_harm(vocab_size, horizon, harmful)


def sample_prefixes(levels: toysim.Levels, key: jax.Array, n_paths: int) -> jax.Array:
    """Leaf indices of ``n_paths`` responses drawn from the policy, one token at a time.

    Returns:
      ``(n_paths, T + 1)`` prefix indices: column ``t`` is the index of ``y_≤t`` at level ``t``.
    """
    index = jnp.zeros((n_paths,), dtype=jnp.int64)
    columns = [index]
    for t, key_t in enumerate(jax.random.split(key, levels.horizon)):
        token = jax.random.categorical(key_t, levels.log_cond[t][index], axis=-1)
        index = index * levels.vocab_size + token
        columns.append(index)
    return jnp.stack(columns, axis=1)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _exact(policy, policy_key, sample_key, harms, n_paths):
    """Sampled prefixes and, per harm (``harms`` stacked ``(K, V**T)``), ``H_t`` along them,
    ``τ(y)``, ``h(y)`` and ``k``: one compiled program, the harms mapped with ``vmap``."""
    levels = toysim.forward(policy, policy.init(policy_key))
    prefixes = sample_prefixes(levels, sample_key, n_paths)

    def along_paths(h):
        masks = toysim.determined_masks(h, policy.vocab_size, policy.horizon)
        mart = toysim.harm_martingale(levels, h)
        paths = jnp.stack([mart[t][prefixes[:, t]] for t in range(policy.horizon + 1)], axis=1)
        tau = toysim.sequence_horizon(masks)[prefixes[:, -1]]
        return paths, tau, h[prefixes[:, -1]], toysim.uniform_horizon(masks)

    return prefixes, jax.vmap(along_paths)(harms)


def data(vocab_size: int, horizon: int, deadline: int, n_paths: int) -> dict[str, np.ndarray]:
    """``H_t`` along sampled responses, their horizons ``τ(y)`` and harms ``h(y)``.

    Returns:
      For each harm kind ``K`` in :data:`HARMS`: ``K_paths (n, T+1)`` values ``H_0..H_T`` along
      each response, ``K_tau (n,)`` its horizon ``τ(y)``, ``K_h (n,)`` its harm, ``K_k`` the uniform
      horizon. Also ``prefix_index (n, T+1)`` (the sampled prefixes, shared by both harms).
    """
    jax.config.update("jax_enable_x64", True)
    policy = toysim.TabularPolicy(vocab_size, horizon)
    harms = jnp.stack(
        [
            toysim.harm_values(_harm(kind, vocab_size, horizon, deadline), vocab_size, horizon)
            for kind in HARMS
        ]
    )
    prefixes, per_harm = _exact(
        policy, jax.random.key(POLICY_SEED), jax.random.key(SAMPLE_SEED), harms, n_paths
    )
    paths, tau, h, k = (np.asarray(x) for x in per_harm)
    out = {"prefix_index": np.asarray(prefixes)}
    for i, kind in enumerate(HARMS):
        out[f"{kind}_paths"] = paths[i]
        out[f"{kind}_tau"] = tau[i]
        out[f"{kind}_h"] = h[i]
        out[f"{kind}_k"] = np.asarray(k[i])
    return out


def plot(numbers: dict[str, np.ndarray]):
    """Two stacked panels of paths ``t ↦ H_t(y_≤t)``, each frozen from its dot at ``τ(y)`` on."""
    fig, axes = _style.figure(2, 1, height=3.4, sharex=True)
    titles = {"deadline": "(a) deadline harm", "graded": "(b) graded harm"}
    harmful, safe = _style.OKABE_ITO["vermillion"], _style.OKABE_ITO["blue"]
    for ax, kind in zip(axes, HARMS):
        paths, tau, h = numbers[f"{kind}_paths"], numbers[f"{kind}_tau"], numbers[f"{kind}_h"]
        horizon = paths.shape[1] - 1
        t = np.arange(horizon + 1)
        for n in range(paths.shape[0]):
            color = harmful if h[n] >= 0.5 else safe
            stop = int(tau[n])
            ax.plot(t[: stop + 1], paths[n, : stop + 1], color=color, alpha=0.55, lw=0.8)
            ax.plot(t[stop:], paths[n, stop:], color=color, alpha=0.55, lw=0.8, ls=":")
            ax.plot([stop], [paths[n, stop]], "o", color=color, ms=2.8, mec="white", mew=0.3)
        _style.mark_horizon(ax, int(numbers[f"{kind}_k"]), label=r"$k$", offset=0.0)
        ax.set_ylabel(_style.SYMBOL["H"])
        ax.set_ylim(-0.05, 1.05)
        _style.panel_label(ax, titles[kind])
    axes[-1].set_xlabel(_style.SYMBOL["t"])
    axes[-1].set_xticks(range(paths.shape[1]))
    axes[0].plot([], [], "o", color="0.3", ms=2.8, label=r"$\tau(y)$: path frozen after")
    axes[0].plot([], [], color=harmful, label=r"$h(y)\geq\frac{1}{2}$")
    axes[0].plot([], [], color=safe, label=r"$h(y)<\frac{1}{2}$")
    axes[0].legend(loc="center right", handlelength=1.2)
    return fig


def main(out_dir=None):
    """Write ``fig1_martingale_paths.png`` and ``.pdf``."""
    from . import main_for

    return main_for(NAME, out_dir)


if __name__ == "__main__":
    main()
