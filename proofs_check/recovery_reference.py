"""Slow, obviously-correct references for the recovery and prefilling quantities (docs/theory.md §8-9).

Everything here is computed per sequence, by brute force over the ``V**T`` responses, from the
policy's definition only: ``policy.logits(params, t)`` (the logits of every prefix of length
``t``, in lexicographic order) and ``jax.nn.log_softmax``. No toysim engine helper is used
(no ``Levels``, ``forward``/``backward``, ``_recovery`` or ``_dp_recovery`` function, no
``determined_masks``), so a bug in the library's shared code cannot appear on both sides of a
check. Each response ``y`` is an explicit token tuple; the row of its prefix ``y_<t`` in the
logits of level ``t`` is its lexicographic index, computed token by token
(:func:`prefix_index`).

Quantities (``t = 1..T`` is a position, its prefix ``y_<t`` has length ``t − 1``):

* discounts ``μγ^{t−1}`` (position 1 gets ``μ``): :func:`discounts`;
* a policy's sequence probabilities ``π(y) = ∏_t π(y_t | y_<t)``: :func:`sequence_log_probs`;
* ``Q`` as a law on whole responses: ``π_0(y) h(y) / E_0[h]`` (harmful) or ``π_J(y)``
  (jailbroken), and its prefix marginals ``Q_t(p) = Σ_{y ⊇ p} Q(y)``: :func:`prefix_marginals`;
* ``π(R | p)`` and ``π(R^c | p)`` summed over tokens: :func:`recovery_probability`;
* the penalty ``μ Σ_y Q(y) Σ_t γ^{t−1} (1 − π(R | y_<t))`` and its per-position gradient by
  ``jax.grad`` with the parameters untied per position: :func:`penalty`,
  :func:`per_position_gradient`;
* ``τ(y)``, the uniform horizon ``k`` and the determined prefixes, from ``h`` alone:
  :func:`determined`, :func:`uniform_horizon`;
* the Gibbs form ``σ(logit π_0(R|p) + μγ^{t−1})`` [Thm 20]; the guarantee
  ``σ(logit p_min + μγ^{t−1})`` [Thm 22]; the attack length by a direct search of where the
  guarantee falls to ``δ`` [Cor 23] (:func:`first_attack_position`, :func:`attack_root`);
* the prefilling-attack curve ``A(k) = E_{p~Q_k}[P_θ(no recovery token at positions k+1..T | p)]``
  by enumerating the continuations of every prefix (:func:`attack_curve`).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


# --------------------------------------------------------------------------- sequences


@functools.cache
def sequences(vocab_size: int, horizon: int) -> tuple[tuple[int, ...], ...]:
    """Every response of length ``T``, lexicographic (``(0,…,0), (0,…,1), …``)."""
    return tuple(itertools.product(range(vocab_size), repeat=horizon))


def prefix_index(prefix: Sequence[int], vocab_size: int) -> int:
    """The row of ``prefix`` among the prefixes of its length (lexicographic order)."""
    index = 0
    for tok in prefix:
        index = index * vocab_size + int(tok)
    return index


@functools.cache
def _rows(vocab_size: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows[t, i]`` = row of ``y_<t+1`` (length ``t``) of sequence ``i``; ``tokens[t, i] = y_{t+1}``."""
    seqs = sequences(vocab_size, horizon)
    rows = np.array([[prefix_index(y[:t], vocab_size) for y in seqs] for t in range(horizon)], dtype=int)
    tokens = np.array([[y[t] for y in seqs] for t in range(horizon)], dtype=int)
    return rows.reshape(horizon, -1), tokens.reshape(horizon, -1)


def discounts(mu: float, gamma: float, horizon: int) -> np.ndarray:
    """``μγ^{t−1}`` for positions ``t = 1..T`` (position 1, the empty prefix, gets ``μ``)."""
    return np.array([mu * gamma ** (t - 1) for t in range(1, horizon + 1)], dtype=np.float64)


# --------------------------------------------------------------------------- policies


def level_logits(policy: Any, params_by_position: Sequence[PyTree]) -> list:
    """``policy.logits(θ_t, t)`` for ``t = 0..T−1`` (position ``t + 1`` reads ``θ_t``)."""
    return [policy.logits(params_by_position[t], t) for t in range(policy.horizon)]


def sequence_log_probs_from_logits(logits: Sequence[Any], vocab_size: int) -> jax.Array:
    """``log π(y) = Σ_t log_softmax(logits_t)[y_<t, y_t]`` for every response ``y``, ``(V**T,)``."""
    return _sequence_log_probs(tuple(jnp.asarray(z) for z in logits), vocab_size)


# Compiled (one program per shape instead of one per operation and shape: the checks call these
# outside jit on many small shapes); the same operations, in the same order.
@functools.partial(jax.jit, static_argnums=1)
def _sequence_log_probs(logits: tuple, vocab_size: int) -> jax.Array:
    horizon = len(logits)
    rows, tokens = _rows(vocab_size, horizon)
    total = jnp.zeros(vocab_size**horizon)
    for t, z in enumerate(logits):
        total = total + jax.nn.log_softmax(z, axis=-1)[rows[t], tokens[t]]
    return total


def sequence_log_probs(policy: Any, params: PyTree, untied: Sequence[PyTree] | None = None) -> jax.Array:
    """``log π_θ(y)`` for every response (``untied``: one parameter set per position)."""
    by_pos = untied if untied is not None else [params] * policy.horizon
    return sequence_log_probs_from_logits(level_logits(policy, by_pos), policy.vocab_size)


def tabular_log_probs(log_cond: Sequence[Any]) -> np.ndarray:
    """``log π(y)`` of a tabular policy given by its per-level rows (e.g. a trained optimum's
    ``log π(·|p)``); ``log_softmax`` is applied again, which leaves normalised rows unchanged."""
    vocab = int(np.asarray(log_cond[0]).shape[-1])
    return np.asarray(sequence_log_probs_from_logits([jnp.asarray(x) for x in log_cond], vocab))


# --------------------------------------------------------------------------- Q and its marginals


def harmful_leaf(base_log_probs: Any, h: Any) -> np.ndarray:
    """``Q(y) = π_0(y) h(y) / Σ_y' π_0(y') h(y')`` (``π_0`` conditioned on harm)."""
    w = np.exp(np.asarray(base_log_probs, dtype=np.float64)) * np.asarray(h, dtype=np.float64)
    total = w.sum()
    if not total > 0:
        raise ValueError("q = harmful has no mass: E_0[h] = 0")
    return w / total


def prefix_marginals(leaf: Any, vocab_size: int, horizon: int, lengths: int | None = None) -> list:
    """``Q_t(p) = Σ_{y ⊇ p} Q(y)`` for prefix lengths ``t = 0..lengths−1`` (default ``T``), by
    adding every sequence's weight to the row of its prefix."""
    leaf = np.asarray(leaf, dtype=np.float64)
    out = []
    for t in range(horizon if lengths is None else lengths):
        q = np.zeros(vocab_size**t)
        for y, w in zip(sequences(vocab_size, horizon), leaf):
            q[prefix_index(y[:t], vocab_size)] += w
        out.append(q)
    return out


# --------------------------------------------------------------------------- recovery probability


def recovery_probability(logits: Any, recovery: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """``(π(R | p), π(R^c | p))`` for every row ``p`` of one level's logits, each summed over its
    own tokens (so ``1 − π(R|p)`` keeps its relative precision)."""
    return _recovery_probability(jnp.asarray(logits), tuple(int(r) for r in recovery))


@functools.partial(jax.jit, static_argnums=1)
def _recovery_probability(logits: jax.Array, recovery: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    probs = jnp.exp(jax.nn.log_softmax(logits, axis=-1))
    vocab = probs.shape[-1]
    inside = [v for v in range(vocab) if v in set(recovery)]
    outside = [v for v in range(vocab) if v not in inside]
    return jnp.sum(probs[:, inside], axis=-1), jnp.sum(probs[:, outside], axis=-1)


def recovery_by_level(logits: Sequence[Any], recovery: Sequence[int]) -> list[np.ndarray]:
    """``π(R | p)`` per level (prefix lengths ``0..T−1``), numpy."""
    return [np.asarray(recovery_probability(z, recovery)[0]) for z in logits]


def logit_recovery_by_level(logits: Sequence[Any], recovery: Sequence[int]) -> list[np.ndarray]:
    """``logit π(R | p) = log π(R|p) − log π(R^c|p)`` per level."""
    out = []
    for z in logits:
        inside, outside = recovery_probability(z, recovery)
        out.append(np.log(np.asarray(inside)) - np.log(np.asarray(outside)))
    return out


def sigmoid(x: Any) -> Any:
    """``σ(x) = 1 / (1 + e^{−x})``."""
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def penalty(
    policy: Any,
    params_by_position: Sequence[PyTree],
    leaf_q: Any,
    recovery: Sequence[int],
    mu: float,
    gamma: float,
) -> jax.Array:
    """``μ Σ_y Q(y) Σ_{t=1}^T γ^{t−1} (1 − π_{θ_t}(R | y_<t))``, one term per response and position."""
    T, V = policy.horizon, policy.vocab_size
    rows, _ = _rows(V, T)
    weights = discounts(mu, gamma, T)
    leaf_q = jnp.asarray(leaf_q)
    value = jnp.float64(0.0)
    for t in range(T):
        _, outside = recovery_probability(policy.logits(params_by_position[t], t), recovery)
        value = value + weights[t] * jnp.sum(leaf_q * outside[rows[t]])
    return value


def expected_harm(policy: Any, params_by_position: Sequence[PyTree], h: Any) -> jax.Array:
    """``Σ_y π(y) h(y)`` (parameters untied per position)."""
    log_p = sequence_log_probs(policy, None, params_by_position)
    return jnp.sum(jnp.exp(log_p) * jnp.asarray(h))


def sequence_kl(policy: Any, params_by_position: Sequence[PyTree], base_log_probs: Any) -> jax.Array:
    """``KL(π ‖ π_0) = Σ_y π(y) (log π(y) − log π_0(y))`` (``π_0`` fixed)."""
    log_p = sequence_log_probs(policy, None, params_by_position)
    return jnp.sum(jnp.exp(log_p) * (log_p - jnp.asarray(base_log_probs)))


def per_position_gradient(policy: Any, params: PyTree, objective: Callable) -> list:
    """``∂ objective(θ_1, …, θ_T) / ∂θ_t`` at ``θ_1 = … = θ_T = θ`` (docs/theory.md §4), one pytree per
    position, by ``jax.grad`` of the brute-force objective."""
    grads = jax.jit(jax.grad(objective))([params] * policy.horizon)  # one program, not one per operation
    return list(grads)


def flat(tree: PyTree) -> np.ndarray:
    """All leaves of a pytree as one float64 vector."""
    leaves = jax.tree_util.tree_leaves(tree)
    return np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1) for x in leaves])


# --------------------------------------------------------------------------- horizon


def determined(h: Any, vocab_size: int, horizon: int) -> list[np.ndarray]:
    """Per prefix length ``t = 0..T``: ``True`` where ``h`` is the same on every continuation."""
    h = np.asarray(h, dtype=np.float64)
    out = []
    for t in range(horizon + 1):
        low = np.full(vocab_size**t, np.inf)
        high = np.full(vocab_size**t, -np.inf)
        for y, value in zip(sequences(vocab_size, horizon), h):
            i = prefix_index(y[:t], vocab_size)
            low[i], high[i] = min(low[i], value), max(high[i], value)
        out.append(low == high)
    return out


def uniform_horizon(h: Any, vocab_size: int, horizon: int) -> int:
    """``k = max_y τ(y)``, ``τ(y) = min{t : h(y_≤t, ·) is constant}``."""
    masks = determined(h, vocab_size, horizon)
    tau = [
        min(t for t in range(horizon + 1) if masks[t][prefix_index(y[:t], vocab_size)])
        for y in sequences(vocab_size, horizon)
    ]
    return max(tau)


# --------------------------------------------------------------------------- Gibbs form and bounds


def gibbs_recovery(base_logits: Sequence[Any], recovery: Sequence[int], mu: float, gamma: float) -> list:
    """[Thm 20] ``σ(logit π_0(R|p) + μγ^{t−1})`` at every prefix ``p`` of length ``t − 1``."""
    d = discounts(mu, gamma, len(base_logits))
    return [sigmoid(z + d[t]) for t, z in enumerate(logit_recovery_by_level(base_logits, recovery))]


def gibbs_logits(base_logits: Sequence[Any], recovery: Sequence[int], mu: float, gamma: float) -> list:
    """The Gibbs-form policy's logits ``logits_0(p, v) + μγ^{t−1} 1[v ∈ R]`` per level."""
    d = discounts(mu, gamma, len(base_logits))
    mask = np.zeros(int(np.asarray(base_logits[0]).shape[-1]))
    mask[list(recovery)] = 1.0
    return [np.asarray(z, dtype=np.float64) + d[t] * mask for t, z in enumerate(base_logits)]


def min_recovery(base_logits: Sequence[Any], recovery: Sequence[int]) -> float:
    """``p_min = min_p π_0(R | p)`` over every prefix of length ``0..T−1``."""
    return float(min(np.min(r) for r in recovery_by_level(base_logits, recovery)))


def guarantee(p_min: float, mu: float, gamma: float, t: Any) -> Any:
    """``σ(logit p_min + μγ^{t−1})`` [Thm 22] at (real) position ``t``."""
    t = np.asarray(t, dtype=np.float64)
    return sigmoid(math.log(p_min) - math.log(1.0 - p_min) + mu * gamma ** (t - 1.0))


def robustness_bound(p_min: float, mu: float, gamma: float, horizon: int) -> float:
    """[Thm 22] ``σ(logit p_min + μγ^{T−1})``."""
    return float(guarantee(p_min, mu, gamma, horizon))


def first_attack_position(p_min: float, mu: float, gamma: float, delta: float, limit: int = 100_000) -> int:
    """The first integer position ``t ≥ 1`` with ``σ(logit p_min + μγ^{t−1}) ≤ δ``, by trying
    ``t = 1, 2, …`` in turn [Cor 23]."""
    for t in range(1, limit + 1):
        if guarantee(p_min, mu, gamma, t) <= delta:
            return t
    raise ValueError(f"the guarantee stays above delta = {delta} up to t = {limit}")


def attack_root(p_min: float, mu: float, gamma: float, delta: float) -> float:
    """The real ``t`` where the (decreasing) guarantee equals ``δ``, by bisection to rounding."""
    lo, hi = -1.0, 2.0
    while guarantee(p_min, mu, gamma, hi) > delta:
        hi = 2.0 * hi
    while guarantee(p_min, mu, gamma, lo) <= delta:
        lo = 2.0 * lo - 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if guarantee(p_min, mu, gamma, mid) > delta:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------- prefilling attacks


def attack_curve(
    log_probs: Any, leaf_q: Any, recovery: Sequence[int], vocab_size: int, horizon: int
) -> np.ndarray:
    """``A(k) = Σ_{p, |p| = k} Q_k(p) Σ_c π(c | p) 1[c has no token of R]`` for ``k = 0..T−1``.

    The continuations ``c`` of a prefix ``p`` are the last ``T − k`` tokens of the responses that
    start with ``p``; ``π(c | p) = π(p·c) / π(p)`` with ``π(p) = Σ_{y ⊇ p} π(y)`` (in log space).
    """
    log_probs = np.asarray(log_probs, dtype=np.float64)
    seqs = sequences(vocab_size, horizon)
    recovery = set(int(r) for r in recovery)
    curve = np.zeros(horizon)
    for k in range(horizon):
        q_k = prefix_marginals(leaf_q, vocab_size, horizon, lengths=k + 1)[k]
        groups: dict[int, list[int]] = {}
        for i, y in enumerate(seqs):
            groups.setdefault(prefix_index(y[:k], vocab_size), []).append(i)
        total = 0.0
        for p, members in groups.items():
            if q_k[p] == 0.0:
                continue
            lp = log_probs[members]
            top = np.max(lp)
            log_prefix = top + math.log(np.sum(np.exp(lp - top)))
            safe = [i for i in members if not any(tok in recovery for tok in seqs[i][k:])]
            if safe:
                total += q_k[p] * float(np.sum(np.exp(log_probs[safe] - log_prefix)))
        curve[k] = total
    return curve


def tilt_log_probs(base_log_probs: Any, h: Any, lam: float) -> np.ndarray:
    """``log π*(y)`` of the standard-aligned optimum ``π* ∝ π_0 e^{−λh}`` (docs/theory.md §7)."""
    w = np.asarray(base_log_probs, dtype=np.float64) - lam * np.asarray(h, dtype=np.float64)
    top = np.max(w)
    return w - (top + math.log(np.sum(np.exp(w - top))))
