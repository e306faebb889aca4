"""Autoregressive softmax policies over a finite vocabulary (docs/theory.md §1).

A policy object is a frozen dataclass holding only static integers (so it can be a static
argument of ``jax.jit``); its parameters are a separate pytree. Every policy implements
the :class:`toysim.Policy` interface (``toysim._types``). Its central question is :meth:`logits`:
the unnormalised logits of all ``V**t`` prefixes of length ``t`` at once, in lexicographic order
with the first token most significant; the enumeration engine (``toysim._enumerate``) builds
everything else from that. The sampler asks :meth:`prefix_logits` instead: the logits of a batch
of given prefixes, computed from the same definition without enumerating the level.

Three parameterisations, as docs/theory.md requires:

* :class:`TabularPolicy` -- one free logit vector per prefix (untied across positions).
* :class:`MarkovPolicy` -- n-gram logits that depend on the last ``order`` tokens only, with a
  beginning-of-sequence symbol ``V`` padding short contexts; tied across positions.
* :class:`MLPPolicy` -- a one-hidden-layer network over a fixed window of the last tokens and the
  token frequencies of the whole prefix; its weights are shared by all positions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from . import _aot
from ._types import Policy, PyTree


def _check_positive_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def prefix_digits(vocab_size: int, t: int) -> Int[Array, "prefix t"]:
    """Tokens of every length-``t`` prefix, in lexicographic order.

    Row ``i`` holds the base-``V`` digits of ``i`` (first token most significant), so that
    ``prefix_digits(V, t)[i]`` is the ``i``-th prefix of length ``t``.

    Args:
      vocab_size: ``V``.
      t: prefix length.

    Returns:
      Integer array of shape ``(V**t, t)``.

    Example:
      >>> prefix_digits(2, 2).tolist()
      [[0, 0], [0, 1], [1, 0], [1, 1]]
    """
    return jnp.asarray(_digits(vocab_size, t))


def _digits(vocab_size: int, t: int) -> Int[Array, "prefix t"]:
    """:func:`prefix_digits`, a numpy array for a small level (:data:`_SMALL_LEVEL`)."""
    xp = _index_module(vocab_size**t)
    index = xp.arange(vocab_size**t)
    powers = vocab_size ** xp.arange(t - 1, -1, -1)
    return (index[:, None] // powers[None, :]) % vocab_size


# Index arrays of a level with at most this many prefixes are computed with numpy: constants,
# with no device work when a policy is evaluated outside jit (one compiled program per jnp
# operation and shape there). Larger ones are computed by the program itself (iota), so that no
# large constant is embedded in it.
_SMALL_LEVEL = 4096


def _index_module(prefixes: int):
    return np if prefixes <= _SMALL_LEVEL else jnp


def _last_tokens(vocab_size: int, t: int, window: int) -> Int[Array, "prefix window"]:
    """Last ``window`` tokens of every length-``t`` prefix, most recent first, BOS-padded.

    The padding symbol is ``V`` (beginning of sequence).
    """
    xp = _index_module(vocab_size**t)
    index = xp.arange(vocab_size**t)
    cols = []
    for j in range(window):
        if j < t:
            cols.append((index // vocab_size**j) % vocab_size)
        else:
            cols.append(xp.full_like(index, vocab_size))
    return xp.stack(cols, axis=1) if cols else xp.zeros((index.shape[0], 0), index.dtype)


def _last_columns(vocab_size: int, prefixes: Int[Array, "n t"], window: int) -> Int[Array, "n window"]:
    """Last ``window`` tokens of given prefixes, most recent first, BOS-padded (as :func:`_last_tokens`)."""
    n, t = prefixes.shape
    cols = [prefixes[:, t - 1 - j] if j < t else jnp.full((n,), vocab_size) for j in range(window)]
    return jnp.stack(cols, axis=1)


def _lex_index(prefixes: Int[Array, "n t"], vocab_size: int) -> Int[Array, " n"]:
    """Lexicographic index ``Σ_j y_j V^{t−1−j}`` of each prefix (row order of :func:`prefix_digits`)."""
    index = jnp.zeros((prefixes.shape[0],), dtype=jnp.int32)
    for j in range(prefixes.shape[1]):
        index = index * vocab_size + prefixes[:, j]
    return index


@dataclasses.dataclass(frozen=True)
class TabularPolicy:
    """One free logit vector per prefix: ``logits(p) = θ_p`` (docs/theory.md §1).

    Parameters are a tuple of ``T`` arrays; entry ``t`` has shape ``(V**t, V)`` and holds the
    logits of every prefix of length ``t`` in lexicographic order. This is also the row order of
    the ``toysim.instance/1`` file format.

    Args:
      vocab_size: ``V >= 2``.
      horizon: ``T >= 1``.

    Example:
      >>> policy = TabularPolicy(vocab_size=2, horizon=3)
      >>> params = policy.init(jax.random.key(0))
      >>> [p.shape for p in params]
      [(1, 2), (2, 2), (4, 2)]
    """

    vocab_size: int
    horizon: int
    is_lookup: ClassVar[bool] = True  # each prefix reads one free row of logits
    level_reads_own_block: ClassVar[bool] = True  # level t's logits are exactly parameter block t

    def __post_init__(self):
        _check_positive_int("vocab_size", self.vocab_size, 2)
        _check_positive_int("horizon", self.horizon, 1)

    @_aot.program(static_argnames=("self",))
    def init(self, key: jax.Array, scale: float = 1.0) -> tuple[Array, ...]:
        """Gaussian logits with standard deviation ``scale``."""
        keys = jax.random.split(key, self.horizon)
        return tuple(
            scale * jax.random.normal(keys[t], (self.vocab_size**t, self.vocab_size))
            for t in range(self.horizon)
        )

    def logits(self, params: tuple[Array, ...], t: int) -> Float[Array, "prefix vocab"]:
        """Logits of all prefixes of length ``t``."""
        return params[t]

    def prefix_logits(
        self, params: tuple[Array, ...], prefixes: Int[Array, "n t"]
    ) -> Float[Array, "n vocab"]:
        """Logits of given prefixes of one length ``t``: the rows of block ``t`` at their indices."""
        return params[prefixes.shape[1]][_lex_index(prefixes, self.vocab_size)]

    @_aot.program(static_argnames=("self", "t"))
    def fisher_trace(self, params: PyTree, t: int) -> Float[Array, " prefix"]:
        """``tr F_t(p) = E[‖s_t‖² | p] = 1 − ‖π(·|p)‖²`` for a lookup parameterisation."""
        probs = jax.nn.softmax(self.logits(params, t), axis=-1)
        return 1.0 - jnp.sum(probs**2, axis=-1)

    def from_rows(self, rows: Float[Array, "rows vocab"]) -> tuple[Array, ...]:
        """Split the stacked rows of the instance format into per-length blocks."""
        out, start = [], 0
        for t in range(self.horizon):
            n = self.vocab_size**t
            out.append(rows[start : start + n])
            start += n
        return tuple(out)

    @property
    def num_rows(self) -> int:
        """Number of prefixes with a logit row: ``1 + V + ... + V**(T-1)``."""
        return sum(self.vocab_size**t for t in range(self.horizon))


class MarkovParams(NamedTuple):
    """Logit table of an n-gram policy.

    Attributes:
      logits: shape ``((V+1)**order, V)``. Row ``c`` is the context whose most recent token is the
        least significant base-``V+1`` digit of ``c``; digit ``V`` is the beginning-of-sequence
        padding. For ``order = 1`` rows ``0..V-1`` are the transition logits from the previous
        token and row ``V`` holds the initial logits.
    """

    logits: Float[Array, "context vocab"]


@dataclasses.dataclass(frozen=True)
class MarkovPolicy:
    """n-gram policy: logits depend on the last ``order`` tokens only (tied across positions).

    ``logits(y_<t) = θ[c(y_<t)]`` with ``c`` the BOS-padded context of the last ``order`` tokens.

    Args:
      vocab_size: ``V >= 2``.
      horizon: ``T >= 1``.
      order: ``n >= 1``.

    Example:
      >>> policy = MarkovPolicy(vocab_size=3, horizon=4, order=1)
      >>> policy.init(jax.random.key(0)).logits.shape
      (4, 3)
    """

    vocab_size: int
    horizon: int
    order: int = 1
    is_lookup: ClassVar[bool] = True  # each prefix reads one row of the shared table
    level_reads_own_block: ClassVar[bool] = False  # one table tied across positions

    def __post_init__(self):
        _check_positive_int("vocab_size", self.vocab_size, 2)
        _check_positive_int("horizon", self.horizon, 1)
        _check_positive_int("order", self.order, 1)

    @_aot.program(static_argnames=("self",))
    def init(self, key: jax.Array, scale: float = 1.0) -> MarkovParams:
        """Gaussian logits with standard deviation ``scale``."""
        shape = ((self.vocab_size + 1) ** self.order, self.vocab_size)
        return MarkovParams(scale * jax.random.normal(key, shape))

    def contexts(self, t: int) -> Int[Array, " prefix"]:
        """Row of the logit table read by every prefix of length ``t``."""
        return self._rows(_last_tokens(self.vocab_size, t, self.order))

    def _rows(self, last: Int[Array, "n order"]) -> Int[Array, " n"]:
        """Table row of the BOS-padded last ``order`` tokens (most recent first)."""
        xp = np if isinstance(last, np.ndarray) else jnp
        weights = (self.vocab_size + 1) ** xp.arange(self.order)
        return xp.sum(last * weights[None, :], axis=1)

    @_aot.program(static_argnames=("self", "t"))
    def logits(self, params: MarkovParams, t: int) -> Float[Array, "prefix vocab"]:
        """Logits of all prefixes of length ``t``."""
        return self._tile(params.logits, t)

    @_aot.program(static_argnames=("self", "t"))
    def log_probs(self, params: MarkovParams, t: int) -> Float[Array, "prefix vocab"]:
        """``log π(·|p)`` of all prefixes of length ``t``: the table's rows normalised once, then
        read by every prefix (equal to ``log_softmax(logits(params, t))`` row by row)."""
        return self._tile(jax.nn.log_softmax(params.logits, axis=-1), t)

    def _tile(self, table: Array, t: int) -> Array:
        """Rows of ``table`` read by the prefixes of length ``t``. Past ``t = order`` the prefixes
        repeat the ``V**order`` contexts of level ``order`` in lexicographic order (the last
        ``order`` tokens are the least significant digits), so the level is that block tiled: a
        broadcast that XLA fuses into its consumers, not a gather."""
        k, v = self.order, self.vocab_size
        if t <= k:
            return table[self.contexts(t)]
        block = table[self.contexts(k)]
        return jnp.broadcast_to(block, (v ** (t - k), v**k, v)).reshape(v**t, v)

    def prefix_logits(self, params: MarkovParams, prefixes: Int[Array, "n t"]) -> Float[Array, "n vocab"]:
        """Logits of given prefixes of one length: the rows of their BOS-padded last ``order`` tokens."""
        return params.logits[self._rows(_last_columns(self.vocab_size, prefixes, self.order))]

    @_aot.program(static_argnames=("self", "t"))
    def fisher_trace(self, params: MarkovParams, t: int) -> Float[Array, " prefix"]:
        """``tr F_t(p) = 1 − ‖π(·|p)‖²``: each prefix reads exactly one row of the table."""
        probs = jax.nn.softmax(self.logits(params, t), axis=-1)
        return 1.0 - jnp.sum(probs**2, axis=-1)

    @staticmethod
    def from_initial_transition(initial: Array, transition: Array) -> MarkovParams:
        """First-order parameters from ``initial (V,)`` and ``transition (V, V)`` logits."""
        return MarkovParams(jnp.concatenate([transition, initial[None, :]], axis=0))


class MLPParams(NamedTuple):
    """Weights of :class:`MLPPolicy`."""

    w_in: Float[Array, "features hidden"]
    b_in: Float[Array, " hidden"]
    w_out: Float[Array, "hidden vocab"]
    b_out: Float[Array, " vocab"]


@dataclasses.dataclass(frozen=True)
class MLPPolicy:
    """A tiny neural policy whose weights are shared by all positions.

    ``logits(y_<t) = W_out tanh(W_in x(y_<t) + b_in) + b_out``, with features ``x`` the one-hot
    codes of the last ``window`` tokens (BOS-padded) followed by the token frequencies of the
    whole prefix (zero for the empty prefix).

    Args:
      vocab_size: ``V >= 2``.
      horizon: ``T >= 1``.
      window: number of most recent tokens seen one-hot, ``>= 1``.
      hidden: width of the hidden layer, ``>= 1``.

    Example:
      >>> policy = MLPPolicy(vocab_size=2, horizon=3, window=1, hidden=4)
      >>> policy.logits(policy.init(jax.random.key(0)), 2).shape
      (4, 2)
    """

    vocab_size: int
    horizon: int
    window: int = 2
    hidden: int = 8
    is_lookup: ClassVar[bool] = False  # every weight feeds every prefix's logits
    level_reads_own_block: ClassVar[bool] = False  # weights tied across positions

    def __post_init__(self):
        _check_positive_int("vocab_size", self.vocab_size, 2)
        _check_positive_int("horizon", self.horizon, 1)
        _check_positive_int("window", self.window, 1)
        _check_positive_int("hidden", self.hidden, 1)

    @property
    def num_features(self) -> int:
        return self.window * (self.vocab_size + 1) + self.vocab_size

    @_aot.program(static_argnames=("self",))
    def init(self, key: jax.Array, scale: float = 1.0) -> MLPParams:
        """Gaussian weights scaled by fan-in, times ``scale``."""
        k1, k2, k3 = jax.random.split(key, 3)
        f, h, v = self.num_features, self.hidden, self.vocab_size
        return MLPParams(
            w_in=scale * jax.random.normal(k1, (f, h)) / jnp.sqrt(f),
            b_in=jnp.zeros((h,)),
            w_out=scale * jax.random.normal(k2, (h, v)) / jnp.sqrt(h),
            b_out=scale * 0.5 * jax.random.normal(k3, (v,)),
        )

    def features(self, t: int) -> Float[Array, "prefix features"]:
        """Input features of all prefixes of length ``t``."""
        v = self.vocab_size
        last = _last_tokens(v, t, self.window)
        if isinstance(last, np.ndarray):  # a small level: the same codes, as constants
            digits = _digits(v, t)
            onehots = (last[..., None] == np.arange(v + 1)).reshape(v**t, -1)
            freq = (digits[..., None] == np.arange(v)).sum(axis=1) * (1.0 / t) if t else np.zeros((v**t, v))
            return np.concatenate([onehots, freq], axis=1).astype(np.float64)
        return self._encode(last, _digits(v, t))

    def _encode(
        self, last: Int[Array, "n window"], prefixes: Int[Array, "n t"]
    ) -> Float[Array, "n features"]:
        """One-hot codes of the last tokens, then the token frequencies of the whole prefixes."""
        v = self.vocab_size
        n, t = prefixes.shape
        onehots = jax.nn.one_hot(last, v + 1).reshape(n, -1)
        if t == 0:
            freq = jnp.zeros((n, v))
        else:
            # times 1/t, as XLA computes a division by a constant: the same bits on either path
            freq = jax.nn.one_hot(prefixes, v).sum(axis=1) * (1.0 / t)
        return jnp.concatenate([onehots, freq], axis=1)

    @staticmethod
    def _network(params: MLPParams, x: Float[Array, "n features"]) -> Float[Array, "n vocab"]:
        x = x.astype(params.w_in.dtype)
        hidden = jnp.tanh(x @ params.w_in + params.b_in)
        return hidden @ params.w_out + params.b_out

    @_aot.program(static_argnames=("self", "t"))
    def logits(self, params: MLPParams, t: int) -> Float[Array, "prefix vocab"]:
        """Logits of all prefixes of length ``t``."""
        return self._network(params, self.features(t))

    def prefix_logits(self, params: MLPParams, prefixes: Int[Array, "n t"]) -> Float[Array, "n vocab"]:
        """Logits of given prefixes of one length: the network on their features."""
        last = _last_columns(self.vocab_size, prefixes, self.window)
        return self._network(params, self._encode(last, prefixes))

    @_aot.program(static_argnames=("self", "t"))
    def fisher_trace(self, params: MLPParams, t: int) -> Float[Array, " prefix"]:
        """``tr F_t(p) = Σ_v π(v|p) ‖∇_θ log π(v|p)‖²`` from the full Jacobian (small sizes)."""
        return generic_fisher_trace(self, params, t)


def generic_fisher_trace(policy: Policy, params: PyTree, t: int) -> Float[Array, " prefix"]:
    """Conditional Fisher trace of any policy from the Jacobian of its log-probabilities.

    Costs ``V**t · V · |θ|`` memory; meant for small instances and for tests.
    """

    def log_probs(theta):
        return jax.nn.log_softmax(policy.logits(theta, t), axis=-1)

    jac = jax.jacrev(log_probs)(params)
    sq = sum(
        jnp.sum(leaf.reshape(leaf.shape[0], leaf.shape[1], -1) ** 2, axis=-1)
        for leaf in jax.tree_util.tree_leaves(jac)
    )
    probs = jnp.exp(log_probs(params))
    return jnp.sum(probs * sq, axis=-1)
