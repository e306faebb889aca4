"""Figure 7: sampling versus exactness, the REINFORCE estimate of ``G_t``.

Claim: the REINFORCE estimate ``Ĝ_t = (1/N) Σ_n h(y⁽ⁿ⁾) s_t(y⁽ⁿ⁾)`` is unbiased but its error falls
only as ``1/√N`` at every position, beyond the harm horizon too, where the exact ``G_t`` is 0: at
any affordable ``N`` a sampler sees noise where the theorem says zero (docs/theory.md §10).

Instance: the Markov (order 1) policy and deadline harm of figure 2. The estimates are
``toysim.reinforce_gradients`` without baseline, ``N_0`` samples each, mapped with ``vmap``
over independent keys (one compiled program). Because this estimator is a plain mean over i.i.d.
samples, the mean of ``m`` independent ``N_0``-sample estimates *is* an ``m N_0``-sample estimate,
so every sample count ``N`` is read from the same draws: disjoint groups of them give the
independent repeats behind the root-mean-square error at ``N``. The exact ``G_t`` is the covariance
form (``toysim.exact_gradients``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import toysim

from . import _style

NAME = "fig7_sampling_vs_exact"
FULL = {"vocab_size": 3, "horizon": 6, "deadline": 3, "samples": (10, 100, 1000, 10000), "estimates": 20000}
TINY = {"vocab_size": 3, "horizon": 3, "deadline": 2, "samples": (10, 100, 1000), "estimates": 2000}
POLICY_SEED = 0
SAMPLE_SEED = 7
BASE_SAMPLES = 10  # N_0: samples per compiled estimate
SPREAD_SAMPLES = 100  # the sample count whose estimates are shown beside the exact value


@functools.partial(jax.jit, static_argnums=(0, 3))
def _estimates(policy, key, h, estimates):
    """Exact ``G_t`` and ``estimates`` independent ``N_0``-sample REINFORCE estimates, flattened."""
    params = policy.init(jax.random.key(POLICY_SEED))
    exact = toysim.exact_gradients(policy, params, h)

    def one(k):
        est = toysim.reinforce_gradients(policy, params, h, k, BASE_SAMPLES, "none")
        return jnp.stack([jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(g)]) for g in est])

    flat_exact = jnp.stack(
        [jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(g)]) for g in exact]
    )
    return flat_exact, jax.vmap(one)(jax.random.split(key, estimates))


def data(
    vocab_size: int, horizon: int, deadline: int, samples: tuple, estimates: int
) -> dict[str, np.ndarray]:
    """RMS error of ``Ĝ_t`` against ``N`` per position, and the spread of ``‖Ĝ_t‖`` at one ``N``.

    Returns:
      ``positions (T,)``; ``exact (T,)`` = ``‖G_t‖``; ``samples (S,)`` the sample counts;
      ``rms_error (S, T)`` = ``sqrt(mean_r ‖Ĝ_t − G_t‖²)`` over the ``repeats (S,)`` disjoint groups;
      ``spread_samples``; ``spread (R, T)`` = ``‖Ĝ_t‖`` of each repeat at ``N = spread_samples``;
      ``k`` the uniform horizon.

    Raises:
      ValueError: if a sample count is not a multiple of ``N_0`` or needs more than ``estimates``
        base estimates for two repeats.
    """
    jax.config.update("jax_enable_x64", True)
    policy = toysim.MarkovPolicy(vocab_size, horizon, order=1)
    h = jnp.asarray(
        toysim.harm_values(toysim.deadline_harm(vocab_size, [vocab_size - 1], deadline), vocab_size, horizon)
    )
    k = int(toysim.uniform_horizon(toysim.determined_masks(h, vocab_size, horizon)))
    exact, base = (np.asarray(x) for x in _estimates(policy, jax.random.key(SAMPLE_SEED), h, estimates))
    rms, repeats, spread = [], [], None
    for n in samples:
        m = n // BASE_SAMPLES
        if n % BASE_SAMPLES or estimates // m < 2:
            raise ValueError(f"samples: {n} must be a multiple of {BASE_SAMPLES} and at most {estimates * 5}")
        groups = estimates // m
        mean = base[: groups * m].reshape(groups, m, *base.shape[1:]).mean(axis=1)  # (groups, T, P)
        rms.append(np.sqrt(np.mean(np.sum((mean - exact) ** 2, axis=-1), axis=0)))
        repeats.append(groups)
        if n == SPREAD_SAMPLES:
            spread = np.sqrt(np.sum(mean**2, axis=-1))
    return {
        "positions": np.arange(1, horizon + 1),
        "exact": np.sqrt(np.sum(exact**2, axis=-1)),
        "samples": np.asarray(samples),
        "rms_error": np.stack(rms),
        "repeats": np.asarray(repeats),
        "spread_samples": np.asarray(SPREAD_SAMPLES),
        "spread": spread,
        "k": np.asarray(k),
    }


def plot(numbers: dict[str, np.ndarray]):
    """(a) RMS error against ``N`` per position (log-log); (b) exact ``‖G_t‖`` beside sampled ``‖Ĝ_t‖``."""
    fig, (ax_a, ax_b) = _style.figure(2, 1, height=4.2)
    t, k = numbers["positions"], int(numbers["k"])
    horizon = int(t[-1])
    samples, rms = numbers["samples"], numbers["rms_error"]
    for j in range(horizon):
        past = t[j] > k
        ax_a.plot(
            samples,
            rms[:, j],
            "--o" if past else "-o",
            ms=2.5,
            color=_style.PALETTE[j % len(_style.PALETTE)],
            label=rf"$t = {t[j]}$" + (r" ($>k$)" if past else ""),
        )
    ref = rms[0].max() * np.sqrt(samples[0] / samples)
    ax_a.plot(samples, ref, ":", color="0.3", lw=0.9, label=r"$\propto 1/\sqrt{N}$")
    ax_a.set_xscale("log")
    ax_a.set_yscale("log")
    ax_a.set_xlabel(r"samples $N$")
    ax_a.set_ylabel(r"RMS $\|\hat G_t - G_t\|$")
    ax_a.legend(loc="lower left", ncols=2, handlelength=1.6, columnspacing=0.8, fontsize=6.5)
    _style.panel_label(ax_a, "(a) REINFORCE error against sample count")

    n = int(numbers["spread_samples"])
    spread = numbers["spread"]
    ax_b.bar(t, numbers["exact"], width=0.6, color=_style.OKABE_ITO["sky"], label=r"exact $\|G_t\|$")
    parts = ax_b.violinplot(spread, positions=t, widths=0.5, showextrema=False, showmedians=True)
    for body in parts["bodies"]:
        body.set_facecolor(_style.OKABE_ITO["vermillion"])
        body.set_edgecolor(_style.OKABE_ITO["vermillion"])
        body.set_alpha(0.45)
    parts["cmedians"].set_color(_style.OKABE_ITO["vermillion"])
    ax_b.fill(
        [], [], color=_style.OKABE_ITO["vermillion"], alpha=0.45, label=rf"sampled $\|\hat G_t\|$, $N = {n}$"
    )
    top = 1.5 * max(float(numbers["exact"].max()), float(spread.max()))
    ax_b.set_ylim(0, top)
    if k < horizon:
        _style.mark_horizon(ax_b, k, label=None)
        ax_b.text(
            (k + 0.5 + horizon + 0.6) / 2,
            0.97 * top,
            "exact $G_t = 0$ here",
            ha="center",
            va="top",
            fontsize=7,
            color=_style.HORIZON_COLOR,
        )
    _style.integer_positions(ax_b, horizon)
    ax_b.set_xlabel(_style.SYMBOL["t"])
    ax_b.set_ylabel(_style.SYMBOL["G"])
    ax_b.legend(loc="upper left", handlelength=1.2, fontsize=6.5)
    _style.panel_label(
        ax_b, f"(b) exact value beside {int(numbers['repeats'][list(numbers['samples']).index(n)])} estimates"
    )
    return fig


def main(out_dir=None):
    """Write ``fig7_sampling_vs_exact.png`` and ``.pdf``."""
    from . import main_for

    return main_for(NAME, out_dir)


if __name__ == "__main__":
    main()
