"""The automaton DP engine: exact quantities by dynamic programming over (position, state).

For a first-order Markov policy and a harm computed by a DFA, the conditional law of the future
given a prefix ``y_≤t`` depends on the prefix only through the *product state*
``x = (c, s)``: ``c`` the last token (or BOS, row ``V`` of the logit table) and ``s`` the automaton
state after reading ``y_≤t``. Reading token ``v`` moves ``(c, s) → (v, δ(s, v))``. Every quantity
of docs/theory.md §2–7 that the enumeration engine reads off the prefix tree is therefore a
function of ``(t, x)``, and the ``V**T`` prefixes collapse to ``(V + 1) · S`` states per position:

* backward passes (``jax.lax.scan`` from ``t = T`` to ``1``): the harm martingale
  ``H_{t−1}(c, s) = Σ_v π(v|c) H_t(v, δ(s, v))``, the log-partition of the tilt
  ``log Z_{t−1}(c, s) = logsumexp_v(log π(v|c) + log Z_t(v, δ(s, v)))`` and the range
  ``[min, max]`` of final harms reachable from ``s`` in the ``T − t`` remaining steps (which
  decides where the harm is determined; it depends on the remaining length, not only on ``s``);
* one forward pass (``t = 1..T``) carrying ``log P_t(c, s)`` in log space;
* the per-position reductions ``I_t``, ``G_t`` (a scatter into row ``c`` of the shared logit
  table), ``E[tr F_t]``, ``P(τ = t)`` and ``D_t``, batched over chunks of positions.

The analysis (:func:`dp_analyze_arrays`) runs the three backward recursions as one scan and keeps
the sequential scans down to the recursions themselves: XLA on CPU runs a scan step as a handful of
tiny kernels, so the cost is the number of small ops per step, not their flops. A scan runs on one
core; :func:`dp_analyze` (``toysim exact``) therefore launches the independent recursions
(backward, forward, autodiff reference) as separate programs from a pool of threads
(:func:`dp_analyze_concurrent`), so that several cores share them.

Constants stay exact with the rule of :func:`toysim._enumerate._constant_rows`: a state whose
children all hold the same ``H`` (or ``log Z``) gets that value bit for bit, so ``Δ``, ``G_t``
and the tilt are exactly zero or unchanged wherever the harm is determined (docs/theory.md §5, 7).

Cost ``O(T · (V + 1) · S · V)``; memory holds per-state arrays (``H``, ``log Z``, ``log P`` per
state and position) and scalars per position, see :func:`dp_estimate_bytes`.

The equilibrium ``π*`` of a Markov ``π_0`` is a *time-dependent* Markov chain on the product state,
``π*_t(v | c, s) = π_0(v|c) Z_t(v, δ(s, v)) / Z_{t−1}(c, s)``. The passes :func:`dp_martingale`,
:func:`dp_state_log_probs` and :func:`dp_information` accept such a chain too
(``log_cond`` of shape ``(T, V + 1, S, V)``, see :func:`dp_tilted_chain`).
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

PyTree = Any


class Automaton(NamedTuple):
    """A DFA harm as device arrays (the traced form of :class:`toysim.AutomatonHarm`).

    Attributes:
      start: start state, integer scalar.
      transitions: ``(S, V)`` next states.
      final_harm: ``(S,)`` harm of each state after ``T`` tokens.
    """

    start: Int[Array, ""]
    transitions: Int[Array, "S V"]
    final_harm: Float[Array, " S"]


def automaton_arrays(harm: Any, vocab_size: int) -> Automaton:
    """The DP form of a harm, validated.

    Args:
      harm: a :class:`toysim.AutomatonHarm` (the family constructors ``deadline_harm``,
        ``first_decisive_harm``, ``trigger_harm``, ``graded_harm`` build these).
      vocab_size: ``V`` of the policy.

    Raises:
      ValueError: for a table harm (the DP engine needs an automaton) or a DFA over another
        vocabulary.
    """
    from ._harms import AutomatonHarm, TableHarm

    if isinstance(harm, TableHarm):
        raise ValueError(
            "the DP engine needs an automaton harm, got a table harm (use --engine enumerate, or "
            "describe the harm as an automaton)"
        )
    if not isinstance(harm, AutomatonHarm):
        raise ValueError(f"the DP engine needs an automaton harm, got {type(harm).__name__}")
    trans = np.asarray(harm.transitions)
    if trans.ndim != 2 or trans.shape[1] != vocab_size:
        raise ValueError(f"harm.transitions must have V = {vocab_size} columns, got shape {trans.shape}")
    return Automaton(
        jnp.asarray(int(harm.start), dtype=jnp.int32),
        jnp.asarray(trans, dtype=jnp.int32),
        jnp.asarray(harm.final_harm, dtype=jnp.float64),
    )


def check_markov(policy: Any) -> None:
    """Refuse every policy but a first-order :class:`toysim.MarkovPolicy`.

    Raises:
      ValueError: naming the policy kind (or order) that the DP engine cannot read.
    """
    from ._policies import MarkovPolicy

    if not isinstance(policy, MarkovPolicy):
        raise ValueError(
            f"the DP engine needs a first-order Markov policy, got {type(policy).__name__} "
            "(use --engine enumerate)"
        )
    if policy.order != 1:
        raise ValueError(
            f"the DP engine needs a first-order Markov policy, got order {policy.order} "
            "(use --engine enumerate)"
        )


# ---------------------------------------------------------------------------------------------
# Building blocks of every pass.


def _children(values_t: Float[Array, "V1 S"], trans: Int[Array, "S V"]) -> Float[Array, "S V"]:
    """``values_t(v, δ(s, v))`` for every state ``s`` and token ``v`` (independent of ``c``)."""
    return values_t[jnp.arange(trans.shape[1])[None, :], trans]


def _children_linear(values_t: Float[Array, "V1 S"], onehot: Array) -> Float[Array, "S V"]:
    """:func:`_children` as a one-hot contraction (exact for finite values; its transpose is a
    contraction too, which keeps reverse-mode autodiff free of scatters)."""
    return jnp.einsum("vt,svt->sv", values_t[: onehot.shape[1]], onehot.astype(values_t.dtype))


def _constant_states(child: Float[Array, "S V"]) -> Bool[Array, " S"]:
    """States whose children all hold the same value (the exact-constant rule of the engine)."""
    return jnp.all(child == child[:, :1], axis=-1)


def _positions(log_cond: Array, horizon: int):
    """Scan input and per-step accessor for a homogeneous ``(V+1, 1, V)`` or a time-dependent
    ``(T, V+1, S, V)`` conditional log-probability table."""
    if log_cond.ndim == 3:
        return jnp.zeros((horizon, 0)), lambda _: log_cond
    if log_cond.shape[0] != horizon:
        raise ValueError(f"time-dependent log_cond must have T = {horizon} rows, got {log_cond.shape[0]}")
    return log_cond, lambda x: x


def _markov_log_cond(logits: Float[Array, "V1 V"]) -> Float[Array, "V1 1 V"]:
    return jax.nn.log_softmax(logits, axis=-1)[:, None, :]


def _scatter_logsumexp(b: Float[Array, "S V"], trans: Int[Array, "S V"], onehot: Array) -> Array:
    """``out[v, s'] = logsumexp_{s : δ(s, v) = s'} b[s, v]`` (``−inf`` where no ``s`` leads).

    Shifted by the largest term of each destination, so no reachable destination underflows. The
    shift is a scatter-max (one pass over the ``S · V`` edges; a masked max over the dense
    ``(S, V, S')`` one-hot was the costliest op of the forward scan).
    """
    tokens = jnp.broadcast_to(jnp.arange(trans.shape[1])[None, :], trans.shape)
    top = jnp.full((trans.shape[1], onehot.shape[-1]), -jnp.inf, b.dtype).at[tokens, trans].max(b)
    top = jnp.where(jnp.isfinite(top), top, 0.0)  # (V, S')
    mass = jnp.einsum("sv,svt->vt", jnp.exp(b - top[tokens, trans]), onehot.astype(b.dtype))
    return top + jnp.log(mass)


def _next_log_probs(log_p: Float[Array, "V1 S"], lc: Array, trans: Array, onehot: Array) -> Array:
    """``log P_t(v, s') = logsumexp_{(c, s) → (v, s')} log P_{t−1}(c, s) + log π(v | c, s)``."""
    if lc.shape[1] == 1:
        return _next_log_probs_markov(log_p, jnp.exp(lc[:, 0, :]), trans, onehot)
    top = _finite_max(log_p)
    mass = jnp.einsum("cs,csv->sv", jnp.exp(log_p - top[None, :]), jnp.exp(lc))
    return _push_forward(top[:, None] + jnp.log(mass), trans, onehot)


def _next_log_probs_markov(log_p: Float[Array, "V1 S"], pi: Float[Array, "V1 V"], trans, onehot):
    """:func:`_next_log_probs` for a Markov policy, from ``π = exp(log π)`` computed once per scan."""
    top = _finite_max(log_p)
    mass = jnp.exp(log_p - top[None, :]).T @ pi
    return _push_forward(top[:, None] + jnp.log(mass), trans, onehot)


def _finite_max(log_p: Float[Array, "V1 S"]) -> Float[Array, " S"]:
    """Per-state shift ``max_c log P(c, s)``, 0 for a state of probability 0."""
    top = jnp.max(log_p, axis=0)
    return jnp.where(jnp.isfinite(top), top, 0.0)


def _push_forward(b: Float[Array, "S V"], trans: Array, onehot: Array) -> Float[Array, "V1 S"]:
    """``log P_t`` from the edge terms ``b[s, v]``; the BOS row ``V`` cannot occur after ``t = 0``."""
    inner = _scatter_logsumexp(b, trans, onehot)
    return jnp.concatenate([inner, jnp.full((1, b.shape[0]), -jnp.inf, b.dtype)], axis=0)


def _initial_log_probs(vocab_size: int, aut: Automaton) -> Float[Array, "V1 S"]:
    n_states = aut.transitions.shape[0]
    log_p = jnp.full((vocab_size + 1, n_states), -jnp.inf)
    return log_p.at[vocab_size, aut.start].set(0.0)


def _onehot(trans: Array) -> Bool[Array, "S V S"]:
    return trans[:, :, None] == jnp.arange(trans.shape[0])[None, None, :]


# ---------------------------------------------------------------------------------------------
# The passes.


def _martingale_step(h_t: Float[Array, "V1 S"], lc: Array, pi: Array | None, trans: Array) -> Array:
    """``H_{t−1}`` from ``H_t``: ``π`` for a Markov policy (hoisted out of the scan), else the
    time-dependent ``log π_t`` of shape ``(V+1, S, V)``; exact-constant rule."""
    child = _children(h_t, trans)
    if pi is not None:
        mean = pi @ child.T
    else:
        mean = jnp.sum(jnp.exp(lc) * child[None], axis=-1)
    return jnp.where(_constant_states(child)[None, :], child[None, :, 0], mean)


def _log_partition_step(z_t: Float[Array, "V1 S"], pi: Float[Array, "V1 V"], trans: Array) -> Array:
    """``log Z_{t−1}`` from ``log Z_t`` for a Markov ``π_0``, shifted per state; exact-constant rule."""
    child = _children(z_t, trans)
    top = jnp.max(child, axis=-1)
    lse = top[None, :] + jnp.log(pi @ jnp.exp(child - top[:, None]).T)
    return jnp.where(_constant_states(child)[None, :], child[None, :, 0], lse)


def _determined_step(lo: Array, hi: Array, trans: Array):
    """Range ``[min, max]`` of final harms reachable with one more step to go."""
    return jnp.min(lo[trans], axis=-1), jnp.max(hi[trans], axis=-1)


@functools.partial(jax.jit, static_argnames=("horizon",))
def dp_martingale(log_cond: Array, aut: Automaton, horizon: int) -> Float[Array, "T1 V1 S"]:
    """``H_t(c, s) = E[h | state (c, s) after t tokens]`` for ``t = 0..T`` [Def 1].

    ``H_T(c, s) = h(s)`` and ``H_{t−1}(c, s) = Σ_v π_t(v | c, s) H_t(v, δ(s, v))``, with the
    exact-constant rule.

    Args:
      log_cond: ``(V+1, 1, V)`` for a Markov policy (``log_softmax`` of its logit table) or
        ``(T, V+1, S, V)`` for a time-dependent chain such as the tilt.
      aut: the harm automaton.
      horizon: ``T`` (static).

    Returns:
      ``(T + 1, V + 1, S)``; ``H_0[V, start] = E[h]``. Rows of states that cannot occur at a
      position (BOS after ``t >= 1``) hold well-defined but unused values.

    docs/theory.md §2.
    """
    xs, lc_at = _positions(log_cond, horizon)
    v1, n_states = log_cond.shape[-3], aut.transitions.shape[0]
    h_T = jnp.broadcast_to(aut.final_harm[None, :], (v1, n_states))
    pi = jnp.exp(log_cond[:, 0, :]) if log_cond.ndim == 3 else None

    def step(h_t, x):
        h_tm1 = _martingale_step(h_t, lc_at(x), pi, aut.transitions)
        return h_tm1, h_tm1

    _, hs = jax.lax.scan(step, h_T, xs, reverse=True)
    return jnp.concatenate([hs, h_T[None]], axis=0)


@functools.partial(jax.jit, static_argnames=("horizon",))
def dp_log_partition(log_cond: Float[Array, "V1 1 V"], aut: Automaton, horizon: int, lam) -> Array:
    """``log Z_t(c, s)``, ``Z_t = E_{π_0}[e^{−λh} | state]``, for ``t = 0..T`` (log space).

    ``log Z_T = −λ h(s)``; ``log Z_{t−1}(c, s) = logsumexp_v(log π_0(v|c) + log Z_t(v, δ(s, v)))``
    with the exact-constant rule.

    Returns:
      ``(T + 1, V + 1, S)``.

    docs/theory.md §7.
    """
    xs, lc_at = _positions(log_cond, horizon)
    v1, n_states = log_cond.shape[-3], aut.transitions.shape[0]
    z_T = jnp.broadcast_to(-lam * aut.final_harm[None, :], (v1, n_states))
    pi = jnp.exp(log_cond[:, 0, :]) if log_cond.ndim == 3 else None

    def step(z_t, x):
        if pi is not None:
            z_tm1 = _log_partition_step(z_t, pi, aut.transitions)
        else:
            child = _children(z_t, aut.transitions)
            lse = jax.nn.logsumexp(lc_at(x) + child[None], axis=-1)
            z_tm1 = jnp.where(_constant_states(child)[None, :], child[None, :, 0], lse)
        return z_tm1, z_tm1

    _, zs = jax.lax.scan(step, z_T, xs, reverse=True)
    return jnp.concatenate([zs, z_T[None]], axis=0)


@functools.partial(jax.jit, static_argnames=("horizon",))
def dp_determined(aut: Automaton, horizon: int) -> Bool[Array, "T1 S"]:
    """Which automaton states determine the harm at each position ``t = 0..T``.

    A state ``s`` after ``t`` tokens is determined when the final harm is the same for every
    continuation of length ``T − t``: ``min == max`` of the harms reachable in exactly ``T − t``
    steps (exact comparison, harm values are data). Reachability depends on the remaining length,
    so this is per position, not per state.

    Returns:
      ``(T + 1, S)`` booleans; row ``T`` is all true.

    docs/theory.md §5.
    """
    trans = aut.transitions

    def step(carry, _):
        lo_tm1, hi_tm1 = _determined_step(*carry, trans)
        return (lo_tm1, hi_tm1), lo_tm1 == hi_tm1

    _, det = jax.lax.scan(step, (aut.final_harm, aut.final_harm), None, length=horizon, reverse=True)
    return jnp.concatenate([det, jnp.ones((1, trans.shape[0]), bool)], axis=0)


def _backward_passes(pi: Float[Array, "V1 V"], aut: Automaton, horizon: int, lam, unroll: int):
    """:func:`dp_martingale`, :func:`dp_log_partition` and :func:`dp_determined` of a Markov
    policy in one reverse scan.

    ``H`` and ``log Z`` travel side by side as one ``(V + 1, 2S)`` carry, so that their children
    are one gather and their expectations under ``π`` one matrix product per step (the scan is
    bound by the number of small ops per step, not by their flops). The values are those of the
    separate passes, bit for bit: the same sums, shifts and exact-constant rule per column.
    """
    trans = aut.transitions
    n_states = trans.shape[0]
    tokens = jnp.arange(trans.shape[1])[None, :]
    both = jnp.concatenate([trans, trans + n_states], axis=0)  # (2S, V): children of [H | log Z]
    shape = (pi.shape[0], n_states)
    h_T = jnp.broadcast_to(aut.final_harm[None, :], shape)
    z_T = jnp.broadcast_to(-lam * aut.final_harm[None, :], shape).astype(pi.dtype)

    def step(carry, _):
        hz_t, lo, hi = carry
        child = hz_t[tokens, both]  # (2S, V)
        top = jnp.max(child[n_states:], axis=-1)
        scaled = jnp.concatenate([child[:n_states], jnp.exp(child[n_states:] - top[:, None])], axis=0)
        expect = pi @ scaled.T  # (V+1, 2S): E[H_t | c, s] and Z_{t−1} e^{−top}
        update = jnp.concatenate([expect[:, :n_states], top[None, :] + jnp.log(expect[:, n_states:])], axis=1)
        hz_tm1 = jnp.where(_constant_states(child)[None, :], child[None, :, 0], update)
        lo_tm1, hi_tm1 = _determined_step(lo, hi, trans)
        return (hz_tm1, lo_tm1, hi_tm1), (hz_tm1, lo_tm1 == hi_tm1)

    init = (jnp.concatenate([h_T, z_T], axis=1), aut.final_harm, aut.final_harm)
    _, (hz, det) = jax.lax.scan(step, init, None, length=horizon, reverse=True, unroll=unroll)
    last = jnp.ones((1, n_states), bool)
    return (
        jnp.concatenate([hz[:, :, :n_states], h_T[None]], axis=0),
        jnp.concatenate([hz[:, :, n_states:], z_T[None]], axis=0),
        jnp.concatenate([det, last], axis=0),
    )


@functools.partial(jax.jit, static_argnames=("horizon",))
def dp_reachable(aut: Automaton, horizon: int) -> Bool[Array, "T1 S"]:
    """Automaton states reached by some prefix of length ``t``, for ``t = 0..T`` (exact booleans)."""
    onehot = _onehot(aut.transitions)
    first = jnp.zeros((aut.transitions.shape[0],), bool).at[aut.start].set(True)

    def step(reach, _):
        nxt = jnp.any(reach[:, None, None] & onehot, axis=(0, 1))
        return nxt, nxt

    _, rest = jax.lax.scan(step, first, None, length=horizon)
    return jnp.concatenate([first[None], rest], axis=0)


@functools.partial(jax.jit, static_argnames=("horizon",))
def dp_state_log_probs(log_cond: Array, aut: Automaton, horizon: int) -> Float[Array, "T1 V1 S"]:
    """``log P_t(c, s)``: log-probability of being in state ``(c, s)`` after ``t`` tokens.

    Returns:
      ``(T + 1, V + 1, S)``; ``−inf`` for states that cannot occur.
    """
    if log_cond.ndim == 3:
        return _forward_log_probs(jnp.exp(log_cond[:, 0, :]), aut, horizon, 1)
    xs, lc_at = _positions(log_cond, horizon)
    onehot = _onehot(aut.transitions)
    first = _initial_log_probs(log_cond.shape[-1], aut)

    def step(log_p, x):
        nxt = _next_log_probs(log_p, lc_at(x), aut.transitions, onehot)
        return nxt, nxt

    _, rest = jax.lax.scan(step, first, xs)
    return jnp.concatenate([first[None], rest], axis=0)


def _forward_log_probs(pi: Float[Array, "V1 V"], aut: Automaton, horizon: int, unroll: int) -> Array:
    """:func:`dp_state_log_probs` of a Markov policy, ``π`` computed once."""
    onehot = _onehot(aut.transitions)
    first = _initial_log_probs(pi.shape[-1], aut)

    def step(log_p, _):
        nxt = _next_log_probs_markov(log_p, pi, aut.transitions, onehot)
        return nxt, nxt

    _, rest = jax.lax.scan(step, first, None, length=horizon, unroll=unroll)
    return jnp.concatenate([first[None], rest], axis=0)


@functools.partial(jax.jit, static_argnames=("horizon",))
def dp_information(log_cond: Array, aut: Automaton, horizon: int) -> Float[Array, " T"]:
    """``I_t = Σ_x P_{t−1}(x) Σ_v π_t(v|x) (H_t(x·v) − H_{t−1}(x))²`` for ``t = 1..T`` [Def 5].

    Works for Markov and time-dependent chains (``log_cond`` as in :func:`dp_martingale`).
    """
    hs = dp_martingale(log_cond, aut, horizon)
    log_p = dp_state_log_probs(log_cond, aut, horizon)
    xs, lc_at = _positions(log_cond, horizon)

    def info(x, h_tm1, h_t, lp):
        child = _children(h_t, aut.transitions)
        delta = child[None] - h_tm1[:, :, None]
        return jnp.sum(jnp.exp(lp)[:, :, None] * jnp.exp(lc_at(x)) * delta**2)

    return jax.vmap(info)(xs, hs[:-1], hs[1:], log_p[:-1])


@jax.jit
def dp_tilted_chain(
    log_cond: Float[Array, "V1 1 V"], aut: Automaton, log_z: Float[Array, "T1 V1 S"]
) -> Float[Array, "T V1 S V"]:
    """``log π*_t(v | c, s) = log π_0(v|c) + (log Z_t(v, δ(s, v)) − log Z_{t−1}(c, s))``.

    The equilibrium of a Markov ``π_0`` as a time-dependent Markov chain on the product state
    (docs/theory.md §7); feed it to :func:`dp_martingale` / :func:`dp_information` to study ``π*`` itself.
    Memory ``T · (V + 1) · S · V`` floats.
    """

    def one(z_tm1, z_t):
        child = _children(z_t, aut.transitions)
        return log_cond + (child[None] - z_tm1[:, :, None])

    return jax.vmap(one)(log_z[:-1], log_z[1:])


# ---------------------------------------------------------------------------------------------
# Autodiff references.


@jax.jit
def dp_expected_harm(
    logits: Float[Array, "V1 V"], aut: Automaton, perturbation: Float[Array, "T V1 S"]
) -> Array:
    """``E[h]`` by the plain backward recursion (no constant rule), differentiable.

    ``H_{t−1} = π @ H_t(children)ᵀ + e_{t−1}`` with ``e = perturbation`` (zeros for ``E[h]``).
    ``jax.grad`` with respect to ``logits`` is ``∇_θ E[h]`` for the shared table, and with respect
    to ``e_{t−1}`` it is the adjoint ``∂E[h]/∂H_{t−1}`` (docs/theory.md §4), from which the untied
    per-position gradient follows by one local VJP (:func:`dp_untied_gradients`).
    """
    v1, n_states = logits.shape[0], aut.transitions.shape[0]
    onehot = _onehot(aut.transitions)
    probs = jax.nn.softmax(logits, axis=-1)
    h_T = jnp.broadcast_to(aut.final_harm[None, :], (v1, n_states))

    def step(h_t, e_tm1):
        return probs @ _children_linear(h_t, onehot).T + e_tm1, None

    h_0, _ = jax.lax.scan(step, h_T, perturbation, reverse=True)
    return h_0[v1 - 1, aut.start]


def _step_values(logits: Array, child: Float[Array, "S V"]) -> Float[Array, "V1 S"]:
    """One backward step ``H_{t−1}(c, s) = Σ_v softmax(θ)[c, v] child[s, v]`` as a function of ``θ``."""
    return jax.nn.softmax(logits, axis=-1) @ child.T


def _untied_at(logits: Array, child: Array, adjoint_tm1: Array) -> Float[Array, "V1 V"]:
    """``∂E[h]/∂θ_t``: the VJP of one step at the adjoint of its output."""
    _, vjp = jax.vjp(lambda theta: _step_values(theta, child), logits)
    return vjp(adjoint_tm1)[0]


@functools.partial(jax.jit, static_argnames=("horizon",))
def dp_autodiff(logits: Float[Array, "V1 V"], aut: Automaton, horizon: int):
    """``jax.grad`` of :func:`dp_expected_harm`: ``(∇_θ E[h], ∂E[h]/∂H_{t−1} for t = 1..T)``."""
    zeros = jnp.zeros((horizon, logits.shape[0], aut.transitions.shape[0]), logits.dtype)
    return jax.grad(dp_expected_harm, argnums=(0, 2))(logits, aut, zeros)


@functools.partial(jax.jit, static_argnames=("horizon",))
def dp_untied_gradients(logits: Float[Array, "V1 V"], aut: Automaton, horizon: int) -> Array:
    """Per-position autodiff gradients ``∂E[h]/∂θ_t`` at ``θ_1 = … = θ_T = θ``, ``(T, V+1, V)``.

    The cotangent-at-logits trick (as :func:`toysim._gradient.untied_autodiff_gradient`): reverse
    mode gives the adjoint of every ``H_{t−1}``; position ``t`` then pulls it back through its own
    step. Memory ``T (V+1) V``; :func:`dp_analyze` does the same per position without storing it.
    """
    _, adjoints = dp_autodiff(logits, aut, horizon)
    hs = dp_martingale(_markov_log_cond(logits), aut, horizon)
    trans = aut.transitions
    return jax.vmap(lambda h_t, adj: _untied_at(logits, _children(h_t, trans), adj))(hs[1:], adjoints)


@functools.partial(jax.jit, static_argnames=("horizon",))
def dp_covariance_gradients(logits: Float[Array, "V1 V"], aut: Automaton, horizon: int) -> Array:
    """``G_1..G_T`` in covariance form [Thm 8], ``(T, V+1, V)``: row ``c`` of ``G_t`` is
    ``π(·|c) ⊙ Σ_s P_{t−1}(c, s) (H_t(·, δ(s, ·)) − H_{t−1}(c, s))``."""
    log_cond = _markov_log_cond(logits)
    hs = dp_martingale(log_cond, aut, horizon)
    log_p = dp_state_log_probs(log_cond, aut, horizon)
    pi = jnp.exp(log_cond[:, 0, :])
    trans = aut.transitions
    return jax.vmap(lambda lp, a, b: _covariance_terms(pi, lp, a, _children(b, trans))[1])(
        log_p[:-1], hs[:-1], hs[1:]
    )


def _covariance_terms(pi: Array, log_p: Array, h_tm1: Array, child: Array):
    """``(I_t, G_t)`` at one position from ``log P_{t−1}``, ``H_{t−1}`` and the children of ``H_t``.

    States whose children share ``H`` contribute exactly 0 to ``Δ``, ``I_t`` and ``G_t``; they are
    dropped, so that ``G_t`` and ``I_t`` vanish bit for bit past the horizon (docs/theory.md §5).
    """
    p_open = jnp.where(_constant_states(child)[None, :], 0.0, jnp.exp(log_p))  # (V+1, S)
    # Var(H_t | c, s) = E[(H_t − H_{t−1})² | c, s], expanded about the first child m_s: the
    # cancellation error is then ε · spread² of the children instead of ε · H², so a variance that
    # is tiny because the children nearly agree (far from the horizon, a mixing chain) keeps its
    # relative accuracy instead of rounding to a ±1e-17 residue.
    centred = child - child[:, :1]
    gap = h_tm1 - child[None, :, 0]
    mean = pi @ centred.T  # E[H_t − m | c, s]
    second = pi @ (centred**2).T
    var_state = jnp.maximum(second - 2.0 * gap * mean + gap**2, 0.0)
    info = jnp.sum(p_open * var_state)
    grad = pi * (p_open @ child - jnp.sum(p_open * h_tm1, axis=1, keepdims=True))
    return info, grad


# ---------------------------------------------------------------------------------------------
# The full analysis.


class DPAnalysis(NamedTuple):
    """Every exact quantity of a Markov policy with an automaton harm (docs/theory.md §2–7).

    The fields mirror :class:`toysim.Analysis`, with per-state instead of per-prefix arrays.

    Attributes:
      expected_harm, harm_variance, harm_information, gradient_norm_by_position,
      autodiff_gradient_norm_by_position, gradient_autodiff_max_abs_error,
      fisher_bound_by_position, horizon_distribution, uniform_horizon,
      equilibrium_kl_by_position, equilibrium_kl: as in :class:`toysim.Analysis`.
      martingale: ``H_t(c, s)``, shape ``(T + 1, V + 1, S)``.
      log_partition: ``log Z_t(c, s)`` of the tilt, shape ``(T + 1, V + 1, S)``.
      gradient: ``Σ_t G_t`` in covariance form, shape ``(V + 1, V)`` (the per-position ``G_t``
        come from :func:`dp_covariance_gradients`).
    """

    expected_harm: Array
    harm_variance: Array
    harm_information: Array
    gradient_norm_by_position: Array
    autodiff_gradient_norm_by_position: Array
    gradient_autodiff_max_abs_error: Array
    fisher_bound_by_position: Array
    horizon_distribution: Array
    uniform_horizon: Array
    equilibrium_kl_by_position: Array
    equilibrium_kl: Array
    martingale: Array
    log_partition: Array
    gradient: Array


# Positions reduced together by :func:`dp_analyze_arrays`: large enough that the per-position
# terms are a few big batched contractions, small enough that the ``(chunk, V + 1, V)``
# temporaries (``G_t`` and the untied autodiff gradient) stay a few MB (4 MB at V = 64). At
# T = 10^4, V = 64, S = 8, chunks of 64, 128, 256 and 1024 were within the timing noise of each
# other (±10 %), 128 the best of them.
_CHUNK = 128


def _position_terms(logits, aut: Automaton, hs, log_z, det, log_p, adjoints, log_z0=None):
    """Per-position reductions of :func:`dp_analyze_arrays` at ``t = 1..T``, batched by chunks of
    :data:`_CHUNK` positions; returns the stacked scalars and ``Σ_t G_t``.

    ``adjoints`` is ``(T, V + 1, S)`` (the autodiff references are compared) or ``(T, 0)``.
    The arrays may be a window of positions ``t = a+1..b`` (``hs``, ``log_z``, ``det`` and
    ``log_p`` at ``a..b``, ``adjoints`` at ``a+1..b``), with ``log_z0 = log Z_0`` of the start
    state given (it is ``log_z[0, -1, start]`` only for the whole range).
    """
    autodiff = adjoints.shape[-1] > 0
    trans = aut.transitions
    pi = jnp.exp(_markov_log_cond(logits)[:, 0, :])
    trace_row = 1.0 - jnp.sum(pi**2, axis=-1)  # tr F per logit row
    if log_z0 is None:
        log_z0 = log_z[0, -1, aut.start]

    def terms(log_p_tm1, h_tm1, h_t, z_tm1, z_t, det_tm1, det_t, adj):
        """Every per-position quantity at position ``t`` (docs/theory.md §3-7).

        The reductions run over ``(c, s, v)``; every sum that does not need ``c`` and ``v`` apart
        goes through ``Q = P_{t−1}ᵀ π``, ``Q[s, v] = P(state s, next token v)``, so that the only
        ``(V+1) · S · V`` products per position are ``Q`` and ``G_t`` (and the untied reference).
        """
        p = jnp.exp(log_p_tm1)  # (V+1, S)
        edges = p.T @ pi  # Q[s, v] = Σ_c P_{t−1}(c, s) π(v|c)
        child = _children(h_t, trans)  # (S, V)
        open_ = ~_constant_states(child)  # states whose children differ (the others give exactly 0)
        p_open = jnp.where(open_[None, :], p, 0.0)
        # Expanded about the first child m_s (rounding error ε · spread², not ε · H²), with
        # E[H_t − m | c, s] = H_{t−1}(c, s) − m at every open state (the martingale property):
        # I_t = Σ_s [Σ_v Q[s, v] (H_t(v, δ(s, v)) − m_s)² − Σ_c P(c, s) (H_{t−1}(c, s) − m_s)²].
        centred = child - child[:, :1]
        gap = h_tm1 - child[None, :, 0]
        var_s = jnp.sum(edges * centred**2, axis=-1) - jnp.sum(p * gap**2, axis=0)
        info = jnp.sum(jnp.where(open_, jnp.maximum(var_s, 0.0), 0.0))
        grad = pi * (p_open @ centred - jnp.sum(p_open * gap, axis=1, keepdims=True))
        trace = jnp.sum(p * trace_row[:, None])
        newly = det_t[trans]  # (S, V): the child is determined
        horizon_mass = jnp.sum(jnp.where(newly & ~det_tm1[:, None], edges, 0.0))
        # tilt: P*(c, s) = P(c, s) Z_{t−1}(c, s) / Z_0 and KL(π*(·|x) ‖ π_0(·|x)) =
        # E_{π*}[log Z_t(x·v)] − log Z_{t−1}(x); summed over c, the first term is
        # Σ_v Q[s, v] Z_t(v, δ(s, v)) log Z_t(v, δ(s, v)) / Z_0 (shifted by the top child of s).
        # Exactly 0 at states whose children share log Z_t.
        child_z = _children(z_t, trans)
        z_top = jnp.max(child_z, axis=-1)
        rel = child_z - z_top[:, None]
        p_star = jnp.exp(log_p_tm1 + z_tm1 - log_z0)  # P*(c, s)
        kl_s = jnp.exp(z_top - log_z0) * jnp.sum(edges * jnp.exp(rel) * rel, axis=-1) - jnp.sum(
            p_star * (z_tm1 - z_top[None, :]), axis=0
        )
        kl = jnp.sum(jnp.where(_constant_states(child_z), 0.0, jnp.maximum(kl_s, 0.0)))
        if autodiff:
            untied = _untied_at(logits, child, adj)
            err = jnp.max(jnp.abs(grad - untied))
            u_norm = jnp.sqrt(jnp.sum(untied**2))
        else:
            err, u_norm = jnp.zeros(()), jnp.zeros(())
        return (info, jnp.sqrt(jnp.sum(grad**2)), trace, horizon_mass, kl, err, u_norm), grad

    def chunk_terms(start, size):
        """``terms`` at positions ``start + 1 .. start + size``, and the sum of their ``G_t``."""

        def rows(a, n):
            return jax.lax.dynamic_slice_in_dim(a, start, n)

        h, z, d = rows(hs, size + 1), rows(log_z, size + 1), rows(det, size + 1)
        adj = rows(adjoints, size)
        outs, grads = jax.vmap(terms)(rows(log_p, size), h[:-1], h[1:], z[:-1], z[1:], d[:-1], d[1:], adj)
        return outs, jnp.sum(grads, axis=0)

    horizon = log_p.shape[0] - 1
    chunk = min(_CHUNK, horizon)
    n_full, rest = divmod(horizon, chunk)

    def body(grad_sum, i):
        outs, grads = chunk_terms(i * chunk, chunk)
        return grad_sum + grads, outs

    grad_sum, outs = jax.lax.scan(body, jnp.zeros_like(logits), jnp.arange(n_full))
    outs = jax.tree.map(lambda a: a.reshape((n_full * chunk,)), outs)
    if rest:
        tail, grads = chunk_terms(n_full * chunk, rest)
        grad_sum = grad_sum + grads
        outs = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), outs, tail)
    return outs, grad_sum


def _finish(
    logits, aut: Automaton, backward, log_p, autodiff_out, outs, grad_sum, autodiff: bool
) -> DPAnalysis:
    """The :class:`DPAnalysis` from the recursions and the per-position reductions."""
    hs, log_z, det, reach = backward
    total = autodiff_out[0] if autodiff else jnp.zeros_like(logits)
    info, g_norms, traces, tau, kls, errs, u_norms = outs
    p_T = jnp.exp(log_p[-1])
    final = aut.final_harm[None, :]
    mean = jnp.sum(p_T * final)
    variance = jnp.sum(p_T * (final - mean) ** 2)
    tau_0 = jnp.where(det[0, aut.start], 1.0, 0.0)
    error = jnp.maximum(jnp.max(errs, initial=0.0), jnp.max(jnp.abs(grad_sum - total)))
    return DPAnalysis(
        expected_harm=hs[0, -1, aut.start],
        harm_variance=variance,
        harm_information=info,
        gradient_norm_by_position=g_norms,
        autodiff_gradient_norm_by_position=u_norms,
        gradient_autodiff_max_abs_error=error if autodiff else jnp.float64(jnp.nan),
        fisher_bound_by_position=jnp.sqrt(info * traces),
        horizon_distribution=jnp.concatenate([tau_0[None], tau]),
        uniform_horizon=_uniform_horizon(det, reach),
        equilibrium_kl_by_position=kls,
        equilibrium_kl=jnp.sum(kls),
        martingale=hs,
        log_partition=log_z,
        gradient=grad_sum,
    )


def _uniform_horizon(det: Bool[Array, "T1 S"], reach: Bool[Array, "T1 S"]) -> Array:
    """``k``: the first position at which every reachable automaton state is determined."""
    return jnp.argmax(jnp.all(det | ~reach, axis=1))


def _no_adjoints(horizon: int) -> Array:
    return jnp.zeros((horizon, 0))


def _backward_stage(logits, aut: Automaton, lam, horizon: int, unroll: int):
    pi = jnp.exp(_markov_log_cond(logits)[:, 0, :])  # (V+1, V)
    hs, log_z, det = _backward_passes(pi, aut, horizon, lam, unroll)
    return hs, log_z, det, dp_reachable(aut, horizon)


def _forward_stage(logits, aut: Automaton, horizon: int, unroll: int):
    return _forward_log_probs(jnp.exp(_markov_log_cond(logits)[:, 0, :]), aut, horizon, unroll)


@functools.partial(jax.jit, static_argnames=("horizon", "autodiff", "unroll"))
def dp_analyze_arrays(
    logits: Float[Array, "V1 V"], aut: Automaton, lam, horizon: int, autodiff: bool = True, unroll: int = 1
) -> DPAnalysis:
    """:func:`dp_analyze` on raw arrays, as one compiled program (``horizon``, ``autodiff`` and
    ``unroll`` static).

    Three sequential passes, each as lean as the recursion allows: one reverse scan for ``H``,
    ``log Z`` and the determined states, one forward scan for ``log P_t`` (stored, ``T (V+1) S``
    numbers), and the autodiff reference. The per-position quantities are then reduced in chunks
    of :data:`_CHUNK` positions, batched, so nothing of size ``(T, V+1, V)`` is held at once.
    ``unroll`` is passed to the two sequential scans of the analysis.

    :func:`dp_analyze_concurrent` computes the same values with the three passes run side by side.
    """
    backward = _backward_stage(logits, aut, lam, horizon, unroll)
    log_p = _forward_stage(logits, aut, horizon, unroll)
    autodiff_out = dp_autodiff(logits, aut, horizon) if autodiff else None
    adjoints = autodiff_out[1] if autodiff else _no_adjoints(horizon)
    hs, log_z, det, _ = backward
    outs, grad_sum = _position_terms(logits, aut, hs, log_z, det, log_p, adjoints)
    return _finish(logits, aut, backward, log_p, autodiff_out, outs, grad_sum, autodiff)


# Horizon from which dp_analyze runs the recursions side by side (dp_analyze_concurrent).
_CONCURRENT_FROM = 512
_backward_jit = jax.jit(_backward_stage, static_argnames=("horizon", "unroll"))
_forward_jit = jax.jit(_forward_stage, static_argnames=("horizon", "unroll"))
_position_terms_jit = jax.jit(_position_terms)
_finish_jit = jax.jit(_finish, static_argnames=("autodiff",))


def _in_threads(jobs):
    """Run zero-argument jobs (each launching compiled programs) side by side; their results."""
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(lambda job=job: jax.block_until_ready(job())) for job in jobs]
        return [f.result() for f in futures]


def dp_analyze_concurrent(
    logits: Float[Array, "V1 V"], aut: Automaton, lam, horizon: int, autodiff: bool = True, unroll: int = 1
) -> DPAnalysis:
    """:func:`dp_analyze_arrays` with its three independent recursions run at the same time.

    The backward scan (``H``, ``log Z``, determined states), the forward scan (``log P_t``) and the
    autodiff reference do not depend on each other. Each is a long chain of small steps that XLA
    on CPU runs on one core, one after the other within one program; compiled apart and launched
    from a pool of threads, they run side by side on several cores (measured on 2 cores at
    T = 10^4, V = 64, S = 8: 0.58 s for the three instead of 0.80 s). The reductions then run as a
    fourth program. Same operations on the same inputs, so the same values as
    :func:`dp_analyze_arrays` up to XLA's fusion choices (measured at T = 10^4: 4e-16 for ``H``,
    8e-14 for ``log Z`` and the summed KL, whose terms add up 10^4 roundings).
    """
    jobs = [
        lambda: _backward_jit(logits, aut, lam, horizon, unroll),
        lambda: _forward_jit(logits, aut, horizon, unroll),
    ]
    if autodiff:
        jobs.append(lambda: dp_autodiff(logits, aut, horizon))
    done = _in_threads(jobs)
    backward, log_p = done[0], done[1]
    autodiff_out = done[2] if autodiff else None
    adjoints = autodiff_out[1] if autodiff else _no_adjoints(horizon)
    hs, log_z, det, _ = backward
    outs, grad_sum = _position_terms_jit(logits, aut, hs, log_z, det, log_p, adjoints)
    return _finish_jit(logits, aut, backward, log_p, autodiff_out, outs, grad_sum, autodiff)


# Float64 numbers held per position by :func:`dp_analyze_arrays`, per product state ``(V + 1) · S``:
# the stacks H, log Z and log P with the scan outputs they are assembled from, the autodiff adjoints
# with their zero perturbation and the carries saved by reverse mode; per edge ``S · V``: the
# children saved by reverse mode. About twice the measured growth, as a margin for XLA temporaries:
# peak resident memory grows by 6.7 (5.2 without autodiff) floats per state and position between
# T = 10^4 and 2 · 10^4 at V = 64, S = 8 (CPU); the whole process peaks at 0.68 GB (0.57 GB) at
# T = 10^4, of which about 0.35 GB is the interpreter, JAX and compilation, not in the estimate.
_FLOATS_PER_STATE = 14
_FLOATS_PER_STATE_NO_AUTODIFF = 11
_FLOATS_PER_EDGE = 2
# Bytes per entry of the one-hot transition tensor (S, V, S) (:func:`_onehot`) that the forward,
# reachability and autodiff scans contract with: XLA's memory analysis of each compiled pass
# shows 16.1 to 16.7 bytes per entry at S = 200..800, V = 2..8 (the boolean one-hot and its
# float64 copy, transposed); two such passes run side by side (dp_analyze_concurrent).
_BYTES_PER_ONEHOT_ENTRY = 32


def dp_automaton_bytes(vocab_size: int, n_states: int) -> int:
    """Memory of the DP passes' one-hot transition tensors: ``32 · S² · V`` bytes.

    Independent of ``T`` and quadratic in the number of automaton states ``S``: a DFA with 20,000
    states over 4 tokens needs about 51 GB, whatever the horizon.
    """
    return int(_BYTES_PER_ONEHOT_ENTRY * n_states * n_states * vocab_size)


def dp_estimate_bytes(vocab_size: int, horizon: int, n_states: int, autodiff: bool = True) -> int:
    """Predicted peak memory of :func:`dp_analyze`, independent of ``V**T``.

    ``8 · (T + 1) · (a · (V + 1) · S + b · S · V) + 32 · S² · V`` bytes, with ``a = 14, b = 2``
    (``a = 11, b = 0`` without the autodiff references): the per-position arrays, linear in ``T``,
    plus the one-hot transition tensors of :func:`dp_automaton_bytes`, quadratic in ``S``. Nothing
    of size ``(T, V + 1, V)`` is stored by the analysis (per-position gradients are reduced to
    norms chunk by chunk); :func:`dp_covariance_gradients` and :func:`dp_untied_gradients` do
    return ``T · (V + 1) · V`` numbers.
    """
    per_state = _FLOATS_PER_STATE if autodiff else _FLOATS_PER_STATE_NO_AUTODIFF
    per_edge = _FLOATS_PER_EDGE if autodiff else 0
    per_pos = per_state * (vocab_size + 1) * n_states + per_edge * n_states * vocab_size
    return int(8 * (horizon + 1) * per_pos) + dp_automaton_bytes(vocab_size, n_states)


def dp_check_fits(vocab_size: int, horizon: int, n_states: int, autodiff: bool = True) -> None:
    """Refuse a DP analysis whose arrays would not fit in memory (:func:`dp_estimate_bytes`).

    Raises:
      ValueError: with the estimate and the available memory.
    """
    from ._enumerate import available_bytes

    need = dp_estimate_bytes(vocab_size, horizon, n_states, autodiff)
    have = available_bytes()
    if need > have:
        raise ValueError(
            f"DP analysis over T = {horizon} positions, V = {vocab_size}, S = {n_states} automaton "
            f"states needs about {need / 2**30:.2f} GiB, more than the {have / 2**30:.2f} GiB "
            "available (reduce horizon or vocab_size)"
        )


def dp_analyze(policy: Any, params: PyTree, harm: Any, lam: float, autodiff: bool = True) -> DPAnalysis:
    """Exact analysis of a first-order Markov policy and a DFA harm by DP over (position, state).

    Same quantities as :func:`toysim.analyze` (``E[h]``, ``Var h``, ``I_t``, ``G_t`` in
    covariance form — ``G_t[c] = π(·|c) ⊙ Σ_s P_{t−1}(c, s) Δ_t(c, s, ·)`` scattered into row ``c``
    of the shared logit table —, the autodiff references, the Fisher bound, ``P(τ = t)``, ``k``,
    ``D_t`` of the tilt), at cost ``O(T (V+1) S V)`` instead of ``O(V**T)``.

    Args:
      policy: a :class:`toysim.MarkovPolicy` of order 1.
      params: its :class:`~toysim.MarkovParams` (logits ``(V + 1, V)``, row ``V`` = BOS).
      harm: a :class:`toysim.AutomatonHarm`.
      lam: ``λ > 0`` of the tilt.
      autodiff: also compute the autodiff references (``jax.grad``, untied per position).

    Returns:
      :class:`DPAnalysis`.

    Raises:
      ValueError: for another policy kind or order, a table harm, or outputs that would not fit.

    Example:
      >>> policy = MarkovPolicy(2, 3)
      >>> a = dp_analyze(policy, policy.init(jax.random.key(0)), trigger_harm(2, [1]), 1.0)
      >>> bool(abs(float(a.harm_information.sum() - a.harm_variance)) < 1e-12)
      True

    docs/theory.md §2–7.
    """
    check_markov(policy)
    aut = automaton_arrays(harm, policy.vocab_size)
    dp_check_fits(policy.vocab_size, policy.horizon, aut.transitions.shape[0], autodiff)
    logits = jnp.asarray(params.logits, dtype=jnp.float64)
    unroll = 4 if policy.horizon >= 64 else 1  # long scans: fewer loop trips, same results
    # threads cost a few milliseconds: worth it only for long scans
    run = dp_analyze_concurrent if policy.horizon >= _CONCURRENT_FROM else dp_analyze_arrays
    return run(logits, aut, jnp.float64(lam), policy.horizon, autodiff, unroll)
