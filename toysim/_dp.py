"""The automaton DP engine: the Markov × automaton product as an engine (``toysim._engine``).

For a first-order Markov policy and a harm computed by a DFA, the conditional law of the future
given a prefix ``y_≤t`` depends on the prefix only through the *product state*
``x = (c, s)``: ``c`` the last token (or BOS, row ``V`` of the logit table) and ``s`` the automaton
state after reading ``y_≤t``. Reading token ``v`` moves ``(c, s) → (v, δ(s, v))``. Every quantity
of docs/theory.md §2–7 is therefore a function of ``(t, x)``, and the ``V**T`` prefixes collapse to
``(V + 1) · S`` states per position. This module holds only what is specific to that state space:

* :class:`ProductEngine`: the engine interface on the product states (backward recursions as one
  reverse ``jax.lax.scan``, per-position reductions batched in chunks of positions, the forward
  pass ``log P_t(c, s)`` in log space with a scatter-logsumexp over the automaton's transitions);
* :class:`TableGradients`: how a position's cotangent reaches the shared logit table, and the
  autodiff reference (``jax.grad`` of the plain recursion, untied per position);
* :func:`dp_analyze`: :func:`toysim._analysis.analysis` on this engine, with the three independent
  recursions (backward, forward, autodiff reference) run side by side from a pool of threads
  (:func:`dp_analyze_concurrent`): XLA on CPU runs a scan on one core, as a handful of tiny kernels
  per step, so the cost is the number of small ops per step and several cores can share the scans;
* the memory estimate of the passes (:func:`toysim._memory.dp_estimate_bytes`).

The quantities themselves (``H``, ``I_t``, ``G_t``, ``P(τ = t)``, ``D_t``, recovery, attacks) are
written once, in the modules that define them, for both engines.

Cost ``O(T · (V + 1) · S · V)``; memory holds per-state arrays (``H``, ``log Z``, ``log P`` per
state and position) and scalars per position.

The equilibrium ``π*`` of a Markov ``π_0`` is a *time-dependent* Markov chain on the product state,
``π*_t(v | c, s) = π_0(v|c) Z_t(v, δ(s, v)) / Z_{t−1}(c, s)`` (:func:`dp_tilted_chain`); a
:class:`ProductEngine` built on it (``log_cond`` of shape ``(T, V + 1, S, V)``) studies ``π*``
itself with the same functions.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from . import _aot
from ._analysis import Analysis, analysis, backward_stage
from ._engine import ChainKernel, MarkovKernel, Step
from ._equilibrium import tilted_log_cond
from ._gradient import covariance_cotangent
from ._martingale import harm_martingale
from ._memory import dp_check_fits
from ._types import Policy, PyTree


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


def check_markov(policy: Policy) -> None:
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
# The product engine.


# Positions reduced together by :meth:`ProductEngine.positions`: large enough that the per-position
# terms are a few big batched contractions, small enough that the ``(chunk, V + 1, V)``
# temporaries (``G_t`` and the untied autodiff gradient) stay a few MB (4 MB at V = 64). At
# T = 10^4, V = 64, S = 8, chunks of 64, 128, 256 and 1024 were within the timing noise of each
# other (±10 %), 128 the best of them.
_CHUNK = 128


class ProductEngine:
    """The Markov × automaton product as an engine (``toysim._engine.Engine``).

    The states at position ``t`` are ``x = (c, s)``, ``(V + 1, S)`` of them (row ``V`` is BOS, only
    at ``t = 0``); reading ``v`` moves ``(c, s) → (v, δ(s, v))``, so the children of every state
    with automaton state ``s`` are ``values_t(v, δ(s, v))``, an ``(S, V)`` array independent of
    ``c``. Per-position containers are ``(T + 1, V + 1, S)`` arrays. Built inside compiled
    functions from raw arrays (it is not itself a pytree).

    Args:
      log_cond: ``(V + 1, 1, V)`` for a Markov policy (``log_softmax`` of its logit table) or
        ``(T, V + 1, S, V)`` for a time-dependent chain such as the tilt (:func:`dp_tilted_chain`).
      aut: the harm automaton.
      horizon: ``T``.
      unroll: loop unrolling of the sequential scans (same results).
    """

    def __init__(
        self, log_cond: Array, aut: Automaton, horizon: int, unroll: int = 1, log_p: Array | None = None
    ):
        self.log_cond, self.automaton, self.horizon, self.unroll = log_cond, aut, horizon, unroll
        self.homogeneous = log_cond.ndim == 3
        if not self.homogeneous and log_cond.shape[0] != horizon:
            raise ValueError(f"time-dependent log_cond must have T = {horizon} rows, got {log_cond.shape[0]}")
        self.pi = jnp.exp(log_cond[:, 0, :]) if self.homogeneous else None
        self._log_p = log_p

    @classmethod
    def markov(cls, logits: Float[Array, "V1 V"], aut: Automaton, horizon: int, unroll: int = 1, log_p=None):
        """The engine of a first-order Markov policy's ``(V + 1, V)`` logit table."""
        return cls(_markov_log_cond(logits), aut, horizon, unroll, log_p)

    @property
    def vocab_size(self) -> int:
        return self.automaton.transitions.shape[1]

    @property
    def log_prob(self) -> Float[Array, "T1 V1 S"]:
        """``log P_t(c, s)`` for ``t = 0..T`` (the forward pass; ``−inf`` where a state cannot occur)."""
        if self._log_p is None:
            self._log_p = _forward(self)
        return self._log_p

    def leaf(self, final: Float[Array, " S"]) -> Float[Array, "V1 S"]:
        """A function of the final automaton state as the leaf of a backward pass."""
        shape = (self.log_cond.shape[-3], self.automaton.transitions.shape[0])
        return jnp.broadcast_to(jnp.asarray(final, dtype=jnp.float64)[None, :], shape)

    def at_start(self, values: Array) -> Array:
        """The value at the start state ``(BOS, start)``."""
        return values[0, self.vocab_size, self.automaton.start]

    def children(self, values_t: Float[Array, "V1 S"]) -> Float[Array, "S V"]:
        """``values_t(v, δ(s, v))`` for every automaton state ``s`` and token ``v``."""
        return _children(values_t, self.automaton.transitions)

    def kernel(self, log_cond_t: Array | None):
        return MarkovKernel(self.pi, self.log_cond[:, 0, :]) if self.homogeneous else ChainKernel(log_cond_t)

    def _scanned_log_cond(self):
        return jnp.zeros((self.horizon, 0)) if self.homogeneous else self.log_cond

    def _step(self, t, lc, log_p, parents, nexts, extra) -> Step:
        pairs = tuple((p, self.children(n)) for p, n in zip(parents, nexts))
        return Step(t, self.kernel(lc), log_p, pairs, extra)

    def backward(self, leaves: tuple, reductions: tuple, values: tuple = (), extra: tuple = ()) -> tuple:
        """Backward recursions from each leaf in one reverse scan over ``t = T..1``.

        Returns:
          One ``(T + 1, V + 1, S)`` array per leaf.
        """
        xs = (
            jnp.arange(1, self.horizon + 1),
            self._scanned_log_cond(),
            tuple(v[:-1] for v in values),
            tuple(v[1:] for v in values),
            tuple(extra),
        )

        def body(carry, x):
            t, lc, parents, nexts, ex = x
            step = self._step(t, lc, None, parents, nexts, ex)
            out = tuple(
                jnp.broadcast_to(reduce(step.kernel, self.children(c), step), c.shape)
                for c, reduce in zip(carry, reductions)
            )
            return out, out

        leaves = tuple(jnp.asarray(x) for x in leaves)
        _, outs = jax.lax.scan(body, leaves, xs, reverse=True, unroll=self.unroll)
        return tuple(jnp.concatenate([o, leaf[None]], axis=0) for o, leaf in zip(outs, leaves))

    def positions(self, fn, values: tuple = (), extra: tuple = ()) -> tuple:
        """``fn`` at every position ``t = 1..T``: its first output stacked, its second summed.

        Batched by chunks of :data:`_CHUNK` positions (``vmap`` within a chunk, a scan over chunks),
        so nothing of size ``(T, V + 1, V)`` is held at once.
        """
        log_p = self.log_prob
        lc_all = self._scanned_log_cond()

        def one(t, lc, lp, parents, nexts, ex):
            return fn(self._step(t, lc, lp, parents, nexts, ex))

        def chunk(start, size):
            def rows(a, n=size):
                return jax.lax.dynamic_slice_in_dim(a, start, n)

            args = (
                jnp.arange(1, size + 1) + start,
                rows(lc_all),
                rows(log_p),
                tuple(rows(v) for v in values),
                tuple(rows(v[1:]) for v in values),
                tuple(rows(e) for e in extra),
            )
            outs, adds = jax.vmap(one)(*args)
            return outs, jax.tree_util.tree_map(lambda a: jnp.sum(a, axis=0), adds)

        size = min(_CHUNK, self.horizon)
        n_full, rest = divmod(self.horizon, size)
        first_outs, first_adds = chunk(0, size)

        def body(total, i):
            outs, adds = chunk(i * size, size)
            return jax.tree_util.tree_map(jnp.add, total, adds), outs

        total, outs = jax.lax.scan(body, first_adds, jnp.arange(1, n_full))
        outs = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), first_outs, outs)
        outs = jax.tree_util.tree_map(lambda a: a.reshape((n_full * size,) + a.shape[2:]), outs)
        if rest:
            tail, adds = chunk(n_full * size, rest)
            total = jax.tree_util.tree_map(jnp.add, total, adds)
            outs = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), outs, tail)
        return outs, total

    def sum_states(self, values: Array) -> Array:
        """``Σ_x values_t(x)`` at every position."""
        return jnp.sum(values, axis=(-2, -1))

    def reachable(self) -> Bool[Array, "T1 S"]:
        """Automaton states reached by some prefix of length ``t`` (:func:`dp_reachable`), as
        ``(T + 1, 1, S)`` so that it broadcasts over the last token."""
        return dp_reachable(self.automaton, self.horizon)[:, None, :]


def _forward(engine: ProductEngine) -> Float[Array, "T1 V1 S"]:
    """The forward pass: ``log P_t(c, s)`` from ``log P_0 = 0`` at ``(BOS, start)``."""
    aut, horizon = engine.automaton, engine.horizon
    if engine.homogeneous:
        return _forward_log_probs(engine.pi, aut, horizon, engine.unroll)
    onehot = _onehot(aut.transitions)
    first = _initial_log_probs(engine.vocab_size, aut)

    def step(log_p, lc):
        nxt = _next_log_probs(log_p, lc, aut.transitions, onehot)
        return nxt, nxt

    _, rest = jax.lax.scan(step, first, engine.log_cond)
    return jnp.concatenate([first[None], rest], axis=0)


@functools.partial(jax.jit, static_argnames=("horizon",))
def dp_martingale(log_cond: Array, aut: Automaton, horizon: int) -> Float[Array, "T1 V1 S"]:
    """``H_t(c, s) = E[h | state (c, s) after t tokens]`` for ``t = 0..T`` [Def 1]
    (:func:`toysim.harm_martingale` on the product engine).

    Args:
      log_cond: ``(V+1, 1, V)`` for a Markov policy (``log_softmax`` of its logit table) or
        ``(T, V+1, S, V)`` for a time-dependent chain such as the tilt.
      aut: the harm automaton.
      horizon: ``T`` (static).

    Returns:
      ``(T + 1, V + 1, S)``; ``H_0[V, start] = E[h]``. Rows of states that cannot occur at a
      position (BOS after ``t >= 1``) hold well-defined but unused values.
    """
    return harm_martingale(ProductEngine(log_cond, aut, horizon), aut.final_harm)


def _markov_log_cond(logits: Float[Array, "V1 V"]) -> Float[Array, "V1 1 V"]:
    return jax.nn.log_softmax(logits, axis=-1)[:, None, :]


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


def _forward_log_probs(pi: Float[Array, "V1 V"], aut: Automaton, horizon: int, unroll: int) -> Array:
    """The forward pass of a Markov policy, ``π`` computed once."""
    onehot = _onehot(aut.transitions)
    first = _initial_log_probs(pi.shape[-1], aut)

    def step(log_p, _):
        nxt = _next_log_probs_markov(log_p, pi, aut.transitions, onehot)
        return nxt, nxt

    _, rest = jax.lax.scan(step, first, None, length=horizon, unroll=unroll)
    return jnp.concatenate([first[None], rest], axis=0)


@jax.jit
def dp_tilted_chain(
    log_cond: Float[Array, "V1 1 V"], aut: Automaton, log_z: Float[Array, "T1 V1 S"]
) -> Float[Array, "T V1 S V"]:
    """``log π*_t(v | c, s) = log π_0(v|c) + (log Z_t(v, δ(s, v)) − log Z_{t−1}(c, s))``
    (:func:`toysim._equilibrium.tilted_log_cond` at every position).

    The equilibrium of a Markov ``π_0`` as a time-dependent Markov chain on the product state
    (docs/theory.md §7); build a :class:`ProductEngine` of it to study ``π*`` itself.
    Memory ``T · (V + 1) · S · V`` floats.
    """
    trans = aut.transitions
    return jax.vmap(lambda z_tm1, z_t: tilted_log_cond(log_cond, z_tm1, _children(z_t, trans)))(
        log_z[:-1], log_z[1:]
    )


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
    ``π(·|c) ⊙ Σ_s P_{t−1}(c, s) (H_t(·, δ(s, ·)) − H_{t−1}(c, s))``
    (:func:`toysim._gradient.covariance_cotangent` at every position)."""
    engine = ProductEngine.markov(logits, aut, horizon)
    hs = harm_martingale(engine, aut.final_harm)
    return engine.positions(lambda step: (covariance_cotangent(step), None), (hs,))[0]


class TableGradients(NamedTuple):
    """The product engine's :class:`toysim._analysis.Parameterisation`: the shared logit table.

    A Markov policy's parameters *are* the ``(V + 1, V)`` table every position reads, so ``G_t`` is
    the position's cotangent itself. The reference is ``jax.grad`` of :func:`dp_expected_harm`
    (the plain recursion, no constant rule), untied per position by one local VJP at the adjoint of
    ``H_{t−1}`` (:func:`_untied_at`).
    """

    logits: Array
    aut: Automaton
    horizon: int

    def pull(self, cotangent: Array, t) -> Array:
        return cotangent

    def fisher_trace(self, step) -> Array:
        pi = jax.nn.softmax(self.logits, axis=-1)
        return (1.0 - jnp.sum(pi**2, axis=-1))[:, None]  # tr F per logit row c, for every s

    def reference(self) -> tuple:
        total, adjoints = dp_autodiff(self.logits, self.aut, self.horizon)
        return total, (adjoints,)

    def untied(self, step) -> Array:
        return _untied_at(self.logits, step.pairs[0][1], step.extra[0])

    def summand(self, cotangent: Array) -> Array:
        return cotangent

    def total(self, summed: Array, martingale) -> Array:
        return summed


def _backward_stage(logits, aut: Automaton, lam, horizon: int, unroll: int):
    return backward_stage(ProductEngine.markov(logits, aut, horizon, unroll), aut.final_harm, lam)


def _forward_stage(logits, aut: Automaton, horizon: int, unroll: int):
    return ProductEngine.markov(logits, aut, horizon, unroll).log_prob


def _analysis_stage(logits, aut: Automaton, lam, horizon: int, autodiff: bool, backward, log_p, reference):
    engine = ProductEngine.markov(logits, aut, horizon, log_p=log_p)
    grads = TableGradients(logits, aut, horizon)
    return analysis(
        engine, grads, aut.final_harm, lam, autodiff=autodiff, backward=backward, reference=reference
    )


@functools.partial(jax.jit, static_argnames=("horizon", "autodiff", "unroll"))
def dp_analyze_arrays(
    logits: Float[Array, "V1 V"], aut: Automaton, lam, horizon: int, autodiff: bool = True, unroll: int = 1
) -> Analysis:
    """:func:`dp_analyze` on raw arrays, as one compiled program (``horizon``, ``autodiff`` and
    ``unroll`` static): :func:`toysim._analysis.analysis` on the product engine.

    :func:`dp_analyze_concurrent` computes the same values with the three recursions run side by side.
    """
    engine = ProductEngine.markov(logits, aut, horizon, unroll)
    return analysis(engine, TableGradients(logits, aut, horizon), aut.final_harm, lam, autodiff=autodiff)


# Horizon from which dp_analyze runs the recursions side by side (dp_analyze_concurrent).
_CONCURRENT_FROM = 512
_backward_jit = jax.jit(_backward_stage, static_argnames=("horizon", "unroll"))
_forward_jit = jax.jit(_forward_stage, static_argnames=("horizon", "unroll"))
_analysis_jit = jax.jit(_analysis_stage, static_argnames=("horizon", "autodiff"))


def _in_threads(jobs):
    """Run zero-argument jobs (each launching compiled programs) side by side; their results."""
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(lambda job=job: jax.block_until_ready(job())) for job in jobs]
        return [f.result() for f in futures]


def dp_analyze_concurrent(
    logits: Float[Array, "V1 V"], aut: Automaton, lam, horizon: int, autodiff: bool = True, unroll: int = 1
) -> Analysis:
    """:func:`dp_analyze_arrays` with its three independent recursions run at the same time.

    The backward scan (``H``, ``log Z``, determined states), the forward scan (``log P_t``) and the
    autodiff reference do not depend on each other. Each is a long chain of small steps that XLA
    on CPU runs on one core, one after the other within one program; compiled apart and launched
    from a pool of threads, they run side by side on several cores. The per-position reductions
    then run as a fourth program. Same operations on the same inputs, so the same values as
    :func:`dp_analyze_arrays` up to XLA's fusion choices (measured at T = 10^4: 4e-16 for ``H``,
    8e-14 for ``log Z`` and the summed KL, whose terms add up 10^4 roundings).
    """
    jobs = [
        lambda: _aot.call("dp_backward", _backward_jit, (logits, aut, lam, horizon, unroll), static=(3, 4)),
        lambda: _aot.call("dp_forward", _forward_jit, (logits, aut, horizon, unroll), static=(2, 3)),
    ]
    if autodiff:
        jobs.append(lambda: _aot.call("dp_autodiff", dp_autodiff, (logits, aut, horizon), static=(2,)))
    done = _in_threads(jobs)
    reference = (done[2][0], (done[2][1],)) if autodiff else None
    args = (logits, aut, lam, horizon, autodiff, done[0], done[1], reference)
    return _aot.call("dp_analysis", _analysis_jit, args, static=(3, 4))


def dp_analyze(policy: Policy, params: PyTree, harm: Any, lam: float, autodiff: bool = True) -> Analysis:
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
      :class:`toysim.Analysis`.

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
    args = (logits, aut, jnp.float64(lam), policy.horizon, autodiff, unroll)
    if policy.horizon >= _CONCURRENT_FROM:
        return dp_analyze_concurrent(*args)
    return _aot.call("dp_analyze", dp_analyze_arrays, args, static=(3, 4, 5))
