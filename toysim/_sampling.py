"""Sampling versus exactness: the REINFORCE estimate of every ``G_t`` (docs/theory.md §10).

The exact engine gives ``G_t = E_{y<t}[Cov(H_t, s_t | y_<t)]`` to float64 precision. A sampler
sees only ``N`` sequences ``y⁽ⁿ⁾ ~ π_θ`` and estimates

    Ĝ_t = (1/N) Σ_n (h(y⁽ⁿ⁾) − b_n) s_t(y⁽ⁿ⁾),     s_t = ∇_θ log π_θ(y_t | y_<t),

which is unbiased for any baseline ``b_n`` independent of ``y⁽ⁿ⁾`` (``E[s_t | y_<t] = 0``). Two
baselines: none (``b = 0``) and leave-one-out (``b_n = mean of h over the other N − 1 samples``,
independent of ``y⁽ⁿ⁾`` because the samples are i.i.d.). Beyond the harm horizon the exact
``G_t`` is 0 while ``Ĝ_t`` is noise of size ``O(1/√N)``: the theorem is invisible to a sampler.

Sampling draws one token per position with ``jax.random.categorical``, the key split from a seed;
logits are computed only for the sampled prefixes (``Policy.prefix_logits``, no enumeration of the
tree), so any policy implementing :class:`toysim.Policy` can be sampled.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._enumerate import forward
from ._gradient import covariance_gradient, tree_sq_norm, untied_autodiff_gradient
from ._horizon import determined_masks, uniform_horizon
from ._martingale import harm_martingale
from ._types import Policy, PyTree

BASELINES = ("none", "leave_one_out")


def sample_sequences(policy: Policy, params: PyTree, key: jax.Array, num_samples: int) -> tuple[Array, Array]:
    """``N`` i.i.d. sequences ``y ~ π_θ``, token by token with ``jax.random.categorical``.

    Position ``t`` draws from ``policy.prefix_logits(params, tokens[:, :t])`` with key ``t`` of
    ``jax.random.split(key, T)``.

    Args:
      policy: any :class:`toysim.Policy`.
      params: its parameters.
      key: a ``jax.random`` key.
      num_samples: ``N``.

    Returns:
      ``(tokens (N, T), leaf index (N,))``.
    """
    keys = jax.random.split(key, policy.horizon)
    tokens = jnp.zeros((num_samples, 0), dtype=jnp.int32)
    index = jnp.zeros((num_samples,), dtype=jnp.int32)
    for t in range(policy.horizon):
        logits = policy.prefix_logits(params, tokens)
        y_t = jax.random.categorical(keys[t], logits, axis=-1).astype(jnp.int32)
        tokens = jnp.concatenate([tokens, y_t[:, None]], axis=1)
        index = index * policy.vocab_size + y_t
    return tokens, index


@functools.partial(jax.jit, static_argnames=("policy", "num_samples", "baseline"))
def reinforce_gradients(
    policy: Policy,
    params: PyTree,
    h: Float[Array, " leaves"],
    key: jax.Array,
    num_samples: int,
    baseline: str = "leave_one_out",
) -> tuple[PyTree, ...]:
    """REINFORCE estimates ``Ĝ_1..Ĝ_T`` from ``N`` sampled sequences (docs/theory.md §10).

    ``Ĝ_t = (1/N) Σ_n (h(y⁽ⁿ⁾) − b_n) ∇_θ log π_θ(y⁽ⁿ⁾_t | y⁽ⁿ⁾_<t)``: the gradient, with respect
    to position ``t``'s copy of the parameters, of the surrogate
    ``(1/N) Σ_n (h_n − b_n) Σ_t log π_{θ_t}(y_t | y_<t)`` with the samples held fixed.

    Args:
      policy: the policy object (static).
      params: its parameters.
      h: leaf harms ``(V**T,)`` (only the sampled leaves are read).
      key: a ``jax.random`` key.
      num_samples: ``N >= 2`` (static).
      baseline: ``"none"`` or ``"leave_one_out"`` (static).

    Returns:
      A tuple of ``T`` pytrees shaped like ``params``; unbiased for ``G_t``.
    """
    tokens, leaf = sample_sequences(policy, params, key, num_samples)
    reward = h[leaf]
    if baseline == "leave_one_out":
        reward = reward - (jnp.sum(reward) - reward) / (num_samples - 1)

    def surrogate(copies):
        total = 0.0
        for t in range(policy.horizon):
            logp = jax.nn.log_softmax(policy.prefix_logits(copies[t], tokens[:, :t]), axis=-1)
            chosen = jnp.take_along_axis(logp, tokens[:, t : t + 1], axis=1)[:, 0]
            total = total + jnp.mean(reward * chosen)
        return total

    return tuple(jax.grad(surrogate)([params] * policy.horizon))


@functools.partial(jax.jit, static_argnames=("policy",))
def exact_gradients(policy: Policy, params: PyTree, h: Float[Array, " leaves"]) -> tuple[PyTree, ...]:
    """The exact ``G_1..G_T`` in covariance form (one forward and one backward pass)."""
    levels = forward(policy, params)
    return covariance_gradient(policy, params, levels, harm_martingale(levels, h))


def _sq_error_by_position(estimate: tuple, exact: tuple) -> np.ndarray:
    return np.array(
        [float(tree_sq_norm(jax.tree_util.tree_map(jnp.subtract, e, g))) for e, g in zip(estimate, exact)]
    )


def _timed(fn, *args, repeats: int = 1) -> tuple[Any, float]:
    """Result and median wall time of ``fn(*args)`` after one warm-up (compile) call."""
    out = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return out, float(np.median(times))


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def sampling_versus_exact(
    policy: Policy,
    params: PyTree,
    h: Float[Array, " leaves"],
    samples: tuple[int, ...] = (10, 100, 1000),
    *,
    seed: int = 0,
    repeats: int = 20,
    timings: bool = False,
) -> dict:
    """Error of the REINFORCE estimate of every ``G_t`` against the exact value, as ``N`` grows.

    For each ``N``, ``repeats`` independent estimates (keys folded from ``seed``) give the RMS
    error ``sqrt(mean_r ‖Ĝ_t − G_t‖²)`` per position, without and with the leave-one-out baseline.
    The exact engine's error is measured against the independent untied autodiff gradient. The
    result depends only on the inputs and ``seed``: two runs give byte-identical JSON.

    Wall times are not results and are only measured with ``timings=True``; they then sit under
    the separate key ``"timings"``: the median wall time of the exact engine and of one estimate
    per ``N`` (after a compile call), and the extrapolation of the largest ``N`` to the exact
    engine's wall time (``samples_at_exact_wall_time``, RMS ∝ 1/√N, time ∝ N).

    Args:
      policy: the policy object.
      params: its parameters.
      h: leaf harms ``(V**T,)``.
      samples: sample sizes, each ``>= 2``.
      seed: seed of the ``jax.random`` keys.
      repeats: estimates per sample size, ``>= 1``.
      timings: also measure wall times (key ``"timings"``; differs between runs).

    Returns:
      A JSON-ready dict (docs/theory.md §10).

    Raises:
      ValueError: for a sample size below 2 or ``repeats < 1``.
    """
    samples = tuple(_check_count("samples", n, 2) for n in samples)
    if not samples:
        raise ValueError("samples must list at least one sample size >= 2")
    repeats = _check_count("repeats", repeats, 1)
    seed = _check_count("seed", seed, 0)
    h = jnp.asarray(h)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    if timings:
        exact, t_exact = _timed(exact_gradients, policy, params, h, repeats=5)
    else:
        exact = exact_gradients(policy, params, h)
    reference = untied_autodiff_gradient(policy, params, h)
    exact_error = max(
        float(jnp.max(jnp.abs(a - b)))
        for e, r in zip(exact, reference)
        for a, b in zip(jax.tree_util.tree_leaves(e), jax.tree_util.tree_leaves(r))
    )
    masks = determined_masks(h, policy.vocab_size, policy.horizon)
    rows, times_by_n = [], []
    for n in samples:
        sq = {b: np.zeros(policy.horizon) for b in BASELINES}
        times = {b: [] for b in BASELINES}
        if timings:
            for b in BASELINES:  # compile outside the timed calls
                jax.block_until_ready(reinforce_gradients(policy, params, h, jax.random.key(0), n, b))
        for r in range(repeats):
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), n), r)
            for b in BASELINES:
                start = time.perf_counter()
                est = jax.block_until_ready(reinforce_gradients(policy, params, h, key, n, b))
                times[b].append(time.perf_counter() - start)
                sq[b] += _sq_error_by_position(est, exact)
        rows.append(
            {
                "samples": n,
                "rms_error_by_position": np.sqrt(sq["none"] / repeats).tolist(),
                "rms_error_baseline_by_position": np.sqrt(sq["leave_one_out"] / repeats).tolist(),
            }
        )
        times_by_n.append(
            {
                "samples": n,
                "wall_time_s": float(np.median(times["none"])),
                "wall_time_baseline_s": float(np.median(times["leave_one_out"])),
            }
        )
    report = {
        "baseline": "leave_one_out (b_n = mean harm of the other N-1 samples)",
        "seed": seed,
        "repeats": repeats,
        "uniform_horizon": int(uniform_horizon(masks)),
        "exact_gradient_norm_by_position": [float(jnp.sqrt(tree_sq_norm(g))) for g in exact],
        "exact_max_abs_error": exact_error,
        "sampled": rows,
    }
    if timings:
        last, t_last = rows[-1], times_by_n[-1]["wall_time_baseline_s"]
        n_equal = last["samples"] * t_exact / max(t_last, 1e-12)
        report["timings"] = {
            "note": "wall times of this run: they differ between runs; nothing outside this key does",
            "exact_wall_time_s": t_exact,
            "sampled": times_by_n,
            "samples_at_exact_wall_time": float(n_equal),
            "sampled_rms_at_exact_wall_time_by_position": (
                np.asarray(last["rms_error_baseline_by_position"])
                * np.sqrt(last["samples"] / max(n_equal, 1e-300))
            ).tolist(),
        }
    return report
