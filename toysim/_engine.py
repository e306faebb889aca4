"""Engines: a state space per position and the three passes every exact quantity is built from.

An *engine* lays a policy out on finitely many states per position ``t = 0..T`` such that the law
of the future given a prefix depends on the prefix only through its state. Two engines implement
one interface (:class:`Engine`):

* the prefix tree (:class:`toysim.Levels`, ``toysim._enumerate``): the states at ``t`` are the
  ``V**t`` prefixes, the children of prefix ``i`` are ``i·V + v``; any policy, any harm, memory
  ``O(V**T)``;
* the Markov × automaton product (:class:`ProductEngine`, ``toysim._dp``): the states are
  ``x = (c, s)``, the last token ``c`` (or BOS) and the harm automaton's state ``s``; reading ``v``
  moves ``(c, s) → (v, δ(s, v))``; first-order Markov policies and automaton harms, any horizon,
  cost ``O(T (V + 1) S V)``.

Every quantity of docs/theory.md (modules ``_martingale``, ``_gradient``, ``_horizon``,
``_equilibrium``, ``_recovery``) is written once against three passes and one per-position object:

* ``forward``: ``log P_t(x)``, the log-probability of every state at every position (the engine
  computes it when it is built; :attr:`Engine.log_prob`);
* :meth:`Engine.backward`: a backward recursion from a leaf value, the combination of a state's
  children given by a *reduction* (:func:`expectation`, :func:`log_expectation`,
  :func:`masked_log_expectation`, :func:`minimum`, :func:`maximum`, or any function of the same
  form); several recursions share one pass;
* :meth:`Engine.positions`: per-position reductions over the edges from the states at ``t − 1`` to
  those at ``t``, stacked over ``t = 1..T`` (and, where asked, summed).

A reduction sees a position's :class:`Kernel` and the *children* of each state, an array whose last
axis runs over the next token ``v``. The kernel knows the policy's conditional law at that position
and offers the two operations every quantity needs: the conditional expectation
``Σ_v π(v|x) f(x, v)`` (:meth:`Kernel.mean`) and its derivative with respect to the logits
(:meth:`Kernel.pull`). Shapes broadcast: on the tree a state's children are its own ``(V,)`` row;
on the product they depend only on ``(s, v)`` (the last token does not change where ``v`` leads),
so children are ``(S, V)`` and a parent value is ``(V + 1, S)``.

The exact-constant rule (:func:`keep_constants`): the expectation of children that all hold the same
value is that value *bit for bit*, not ``Σ_v π(v) c`` (off by the rounding of ``Σ_v π(v) ≈ 1``).
It makes ``H``, ``Δ``, ``G_t`` and the tilt exactly constant, zero or unchanged below every state
where the harm is determined (docs/theory.md §5, 7).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax.numpy as jnp
from jaxtyping import Array, Bool

# A reduction: (kernel, children (..., V), the position's Step or None) -> parent values.
Reduction = Callable[["Kernel", Array, Any], Array]


class Kernel(Protocol):
    """The policy's conditional law at one position, seen from the parent states.

    ``mean(f)`` is ``Σ_v π(v|x) f(x, v)`` for every parent state ``x``; ``pull(w, f, g)`` is the
    cotangent of this position's logits of ``Σ_x w(x) Σ_v π(v|x) f(x, v)`` at ``f − g`` centred,
    i.e. ``w(x) π(v|x) (f(x, v) − g(x))`` accumulated into the logit rows the states read.
    """

    def mean(self, child: Array) -> Array: ...

    def pull(self, weight: Array, child: Array, centre: Array) -> Array: ...

    def probs(self) -> Array: ...

    def log_probs(self) -> Array: ...


class Step(NamedTuple):
    """One position ``t`` as :meth:`Engine.positions` hands it to a reduction.

    Attributes:
      t: the position, ``1..T`` (a Python int on the tree, traced on the product).
      kernel: the policy's law of token ``t`` given the state at ``t − 1``.
      log_p: ``log P_{t−1}(x)`` of the parent states.
      pairs: for each per-position array handed in, ``(value at t − 1, children of the value at
        t)``.
      extra: for each per-position array handed in as ``extra`` (``T`` entries, one per step),
        its entry for position ``t``.

    Backward passes hand the same object to their reductions (with ``log_p`` of the parent states
    where the engine has it, else ``None``).
    """

    t: Any
    kernel: Kernel
    log_p: Array
    pairs: tuple
    extra: tuple


class Engine(Protocol):
    """The interface both engines implement (see the module docstring).

    Attributes:
      horizon: ``T``.
      vocab_size: ``V``.
      log_prob: ``log P_t(x)`` for ``t = 0..T`` (per-position container: a tuple of ``T + 1``
        arrays on the tree, one ``(T + 1, …)`` array on the product).
    """

    horizon: int
    vocab_size: int

    @property
    def log_prob(self) -> Any: ...

    def leaf(self, final: Array) -> Array: ...

    def at_start(self, values: Any) -> Array: ...

    def backward(self, leaves: tuple, reductions: tuple, values: tuple = (), extra: tuple = ()) -> tuple: ...

    def positions(self, fn: Callable[[Step], tuple], values: tuple = (), extra: tuple = ()) -> tuple: ...

    def sum_states(self, values: Any) -> Array: ...

    def reachable(self) -> Any: ...


# ------------------------------------------------------------------------------------ reductions


def constant_children(child: Array) -> Bool[Array, ...]:
    """States whose children all hold the same value."""
    return jnp.all(child == child[..., :1], axis=-1)


def keep_constants(reduction: Reduction) -> Reduction:
    """``reduction`` with the exact-constant rule: constant children give their value bit for bit."""

    def reduce(kernel, child, extra):
        return jnp.where(constant_children(child), child[..., 0], reduction(kernel, child, extra))

    return reduce


def _finite(top: Array) -> Array:
    return jnp.where(jnp.isfinite(top), top, 0.0)


def _expectation(kernel: Kernel, child: Array, extra=None) -> Array:
    return kernel.mean(child)


def _log_expectation(kernel: Kernel, child: Array, extra=None) -> Array:
    # log E[e^f] = top + log1p(E[expm1(f − top)]) for a normalised kernel. Written with log1p/expm1
    # so that children close to each other (the tilt at small λ: f = O(λ)) give a result accurate
    # relative to its size, ~1e-16·|f|, not to 1e-16 absolute as log(E[e^(f − top)]) would: the tilt's
    # D_t = O(λ²) is a difference of such values, and an absolute error of 1e-16 in log Z became a
    # relative error 1e-16/λ² in D_t (6e-9 at λ = 1e-3, measured against 50-digit arithmetic).
    top = _finite(jnp.max(child, axis=-1))
    return top + jnp.log1p(kernel.mean(jnp.expm1(child - top[..., None])))


expectation: Reduction = keep_constants(_expectation)
"""``E[f | x] = Σ_v π(v|x) f(x·v)``, exact-constant rule (the harm martingale, docs/theory.md §2)."""

log_expectation: Reduction = keep_constants(_log_expectation)
"""``log Σ_v π(v|x) e^{f(x·v)}``, shifted per state, exact-constant rule (the tilt's ``log Z``)."""


def masked_log_expectation(mask: Array) -> Reduction:
    """``log Σ_{v ∉ R} π(v|x) e^{f(x·v)}`` for the tokens outside ``mask`` (no constant rule).

    Shifted by the largest term outside ``R``; ``−inf`` where every term is zero. The probability of
    never recovering is this recursion from ``log N_T = 0`` (docs/theory.md §9).
    """

    def reduce(kernel, child, extra=None):
        outside = jnp.where(mask, -jnp.inf, child)
        top = _finite(jnp.max(outside, axis=-1))
        return top + jnp.log(kernel.mean(jnp.where(mask, 0.0, jnp.exp(outside - top[..., None]))))

    return reduce


def minimum(kernel, child: Array, extra=None) -> Array:
    """``min_v f(x·v)`` (softmax policies have full support: every child is reachable)."""
    return jnp.min(child, axis=-1)


def maximum(kernel, child: Array, extra=None) -> Array:
    """``max_v f(x·v)``."""
    return jnp.max(child, axis=-1)


# ------------------------------------------------------------------------------------ kernels


class TreeKernel(NamedTuple):
    """The law of one level of the prefix tree: ``log π(v|p)``, shape ``(V**t, V)``."""

    log_cond: Array

    def probs(self) -> Array:
        return jnp.exp(self.log_cond)

    def log_probs(self) -> Array:
        return self.log_cond

    def mean(self, child: Array) -> Array:
        return jnp.sum(jnp.exp(self.log_cond) * child, axis=-1)

    def pull(self, weight: Array, child: Array, centre: Array) -> Array:
        return weight[:, None] * jnp.exp(self.log_cond) * (child - centre[:, None])


class MarkovKernel(NamedTuple):
    """A first-order Markov law on the product states: ``π(v|c)``, shape ``(V + 1, V)``.

    Children ``f(s, v)`` do not depend on ``c``, so the expectation over ``v`` is one matrix product
    ``π f(s, ·)ᵀ`` for every ``(c, s)``, and the logits' cotangent sums the states of each row ``c``.
    """

    pi: Array
    log_pi: Array

    def probs(self) -> Array:
        return self.pi[:, None, :]

    def log_probs(self) -> Array:
        return self.log_pi[:, None, :]

    def mean(self, child: Array) -> Array:
        if child.ndim == 2:  # (S, V): independent of the last token
            return self.pi @ child.T
        return jnp.sum(self.pi[:, None, :] * child, axis=-1)

    def pull(self, weight: Array, child: Array, centre: Array) -> Array:
        return self.pi * (weight @ child - jnp.sum(weight * centre, axis=1, keepdims=True))


class ChainKernel(TreeKernel):
    """A time-dependent law on the product states (such as the tilt): ``log π_t(v | c, s)``,
    shape ``(V + 1, S, V)``; a logit cotangent sums the automaton states of each row ``c``."""

    def pull(self, weight: Array, child: Array, centre: Array) -> Array:
        return jnp.sum(weight[..., None] * jnp.exp(self.log_cond) * (child - centre[..., None]), axis=1)
