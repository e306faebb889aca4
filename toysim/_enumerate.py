"""The enumeration engine: one level-by-level pass over the prefix tree.

Level ``t`` of the tree holds the ``V**t`` prefixes of length ``t`` in lexicographic order, so the
children of prefix ``i`` are ``i·V + v``: moving between levels is a reshape. Every exact
quantity in toysim is built from two passes defined here:

* :func:`forward` -- conditional log-probabilities ``log π(v | p)`` at every level and prefix
  log-probabilities ``log P(p)``, accumulated in log space;
* :func:`backward` / :func:`log_backward` -- conditional expectations ``E[f(Y) | Y_≤t]`` of a leaf
  function, level by level from the leaves (``log_backward`` does it in log space, for the
  partition functions of the equilibrium tilt). Both keep constants exact: where every child of a
  prefix holds the same value, the prefix gets that value bit for bit.

Everything else (martingale, innovations, ``I_t``, gradients, horizons, KL) is a reduction of these
arrays. Memory is ``O(V**T)``; :func:`estimate_bytes` predicts it before anything is allocated.

With several devices (GPUs, or CPU devices from ``XLA_FLAGS=--xla_force_host_platform_device_count``)
every level array whose prefix count divides evenly is sharded along its prefix axis over a 1-D
mesh (:func:`shard_prefixes`); XLA partitions the passes and inserts the reductions. Results equal
the single-device ones up to the order of floating-point sums. ``TOYSIM_SHARDING=0`` turns it off.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float

from . import _aot
from ._engine import Step, TreeKernel, expectation, log_expectation
from ._types import Policy, PyTree


class Levels(NamedTuple):
    """A policy laid out on the prefix tree: the tree engine (``toysim._engine.Engine``).

    The states at position ``t`` are the ``V**t`` prefixes of length ``t`` in lexicographic order;
    the children of prefix ``i`` are ``i·V + v``, so moving between positions is a reshape.

    Attributes:
      log_cond: ``T`` arrays; entry ``t`` has shape ``(V**t, V)`` and holds ``log π(v | p)`` for
        every prefix ``p`` of length ``t``.
      log_prefix: ``T + 1`` arrays; entry ``t`` has shape ``(V**t,)`` and holds ``log P(p)``.
    """

    log_cond: tuple[Array, ...]
    log_prefix: tuple[Array, ...]

    @property
    def horizon(self) -> int:
        return len(self.log_cond)

    @property
    def vocab_size(self) -> int:
        return self.log_cond[0].shape[-1]

    @property
    def log_prob(self) -> tuple[Array, ...]:
        """``log P_t(p)`` for ``t = 0..T`` (the forward pass)."""
        return self.log_prefix

    def leaf(self, final: Array) -> Array:
        """A function of the whole sequence, ``(V**T,)``, as the leaf of a backward pass."""
        return final

    def at_start(self, values: Sequence[Array]) -> Array:
        """The value at the empty prefix."""
        return values[0][0]

    @classmethod
    def structure(cls, vocab_size: int, horizon: int) -> Levels:
        """The tree's shape without a policy, for reductions that read no probabilities (``min``,
        ``max``: where the harm is determined depends on ``h`` alone)."""
        shapes = tuple(jax.ShapeDtypeStruct((vocab_size**t, vocab_size), jnp.float64) for t in range(horizon))
        return cls(shapes, ())

    def sum_states(self, values: Sequence[Array]) -> Array:
        """``Σ_p values_t(p)`` at every position of a per-position container, stacked."""
        return jnp.stack([jnp.sum(v) for v in values])

    def reachable(self) -> tuple[Array, ...]:
        """Every prefix can occur (softmax policies have full support)."""
        return tuple(jnp.ones((self.vocab_size**t,), bool) for t in range(self.horizon + 1))

    def children(self, values_t: Array, t: int) -> Array:
        """``values_t(p·v)`` for every prefix ``p`` of length ``t − 1``, shape ``(V**(t−1), V)``."""
        return values_t.reshape(self.log_cond[t - 1].shape)

    def step(self, t: int, values: tuple = (), extra: tuple = ()) -> Step:
        """Position ``t`` (``1..T``): its kernel, the parents' ``log P`` and the value pairs."""
        pairs = tuple((v[t - 1], self.children(v[t], t)) for v in values)
        log_p = self.log_prefix[t - 1] if self.log_prefix else None
        return Step(t, TreeKernel(self.log_cond[t - 1]), log_p, pairs, tuple(e[t - 1] for e in extra))

    def backward(self, leaves: tuple, reductions: tuple, values: tuple = (), extra: tuple = ()) -> tuple:
        """Backward recursions from each leaf, level by level, with its reduction.

        Args:
          leaves: leaf values ``(V**T,)``, one per recursion.
          reductions: one :data:`toysim._engine.Reduction` per leaf.
          values, extra: per-position data handed to the reductions in the :class:`Step` of each
            position (as in :meth:`positions`).

        Returns:
          One tuple of ``T + 1`` arrays per leaf (entry ``t`` of shape ``(V**t,)``).
        """
        outs = [[leaf] for leaf in leaves]
        for t in range(self.horizon, 0, -1):
            step = self.step(t, values, extra)
            for out, reduce in zip(outs, reductions):
                out.append(shard_prefixes(reduce(step.kernel, self.children(out[-1], t), step)))
        return tuple(tuple(reversed(out)) for out in outs)

    def positions(self, fn: Callable, values: tuple = (), extra: tuple = ()) -> tuple:
        """``fn`` at every position ``t = 1..T``: its first output stacked, its second summed.

        ``fn`` gets a :class:`toysim._engine.Step` and returns ``(per_position, summed)``; the
        per-position outputs must be scalars (or equal shapes) to stack, ``summed`` pytrees of equal
        structure (``None`` for none).
        """
        stacked, total = [], None
        for t in range(1, self.horizon + 1):
            out, add = fn(self.step(t, values, extra))
            stacked.append(out)
            total = add if total is None else jax.tree_util.tree_map(jnp.add, total, add)
        return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *stacked), total


@functools.cache
def _prefix_mesh(devices: tuple) -> Mesh:
    return Mesh(np.array(devices), ("prefix",))


def shard_prefixes(x: Array) -> Array:
    """Shard a level array along its prefix axis (axis 0) over every available device.

    A 1-D :class:`jax.sharding.Mesh` named ``"prefix"`` and ``jax.lax.with_sharding_constraint``
    (inside ``jit``; a transfer outside). No-op with one device, when the prefix count is not a
    multiple of the device count, or when ``TOYSIM_SHARDING=0``.
    """
    devices = tuple(jax.devices())
    n = len(devices)
    if n == 1 or x.ndim == 0 or x.shape[0] % n or os.environ.get("TOYSIM_SHARDING", "1") == "0":
        return x
    spec = PartitionSpec("prefix", *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(_prefix_mesh(devices), spec))


def levels_from_log_cond(log_cond: Sequence[Array]) -> Levels:
    """Prefix log-probabilities from conditional ones: ``log P(p·v) = log P(p) + log π(v|p)``."""
    log_cond = [shard_prefixes(lc) for lc in log_cond]
    log_prefix = [jnp.zeros((1,), dtype=log_cond[0].dtype)]
    for lc in log_cond:
        log_prefix.append(shard_prefixes((log_prefix[-1][:, None] + lc).reshape(-1)))
    return Levels(tuple(log_cond), tuple(log_prefix))


def log_cond_untied(policy: Policy, params_by_level: Sequence[PyTree]) -> tuple[Array, ...]:
    """``log π(·|p)`` at every level, level ``t`` reading its own parameter copy."""
    return tuple(log_probs(policy, params_by_level[t], t) for t in range(policy.horizon))


def log_probs(policy: Policy, params: PyTree, t: int) -> Float[Array, "prefix vocab"]:
    """``log π(·|p)`` of every prefix of length ``t``: the policy's own ``log_probs`` where it has
    one (a cheaper, equal form), else ``log_softmax`` of its logits."""
    own = getattr(policy, "log_probs", None)
    if own is not None:
        return own(params, t)
    return jax.nn.log_softmax(policy.logits(params, t), axis=-1)


@_aot.program(static_argnames=("policy",))
def forward(policy: Policy, params: PyTree) -> Levels:
    """Lay a policy out on the prefix tree.

    Args:
      policy: a policy object (``toysim.TabularPolicy``, ``MarkovPolicy`` or ``MLPPolicy``).
      params: its parameter pytree.

    Returns:
      :class:`Levels` with ``log π`` and ``log P`` for every prefix.

    Example:
      >>> policy = TabularPolicy(2, 2)
      >>> lv = forward(policy, policy.init(jax.random.key(0)))
      >>> float(jnp.exp(lv.log_prefix[2]).sum())  # doctest: +ELLIPSIS
      1.0...
    """
    return levels_from_log_cond(log_cond_untied(policy, [params] * policy.horizon))


def backward(engine, leaf: Float[Array, " leaves"]) -> tuple[Array, ...]:
    """Conditional expectations ``E_t(x) = E[f(Y) | state x at t]`` of a leaf function.

    ``E_{t-1}(x) = Σ_v π(v|x) E_t(x·v)`` (:func:`toysim._engine.expectation`, exact-constant rule),
    on either engine.

    Args:
      engine: the policy on the prefix tree (:class:`Levels`) or on the product states.
      leaf: ``f`` at every leaf (``(V**T,)`` on the tree).

    Returns:
      Values at ``t = 0..T``; entry ``T`` is ``leaf`` itself.
    """
    return engine.backward((engine.leaf(leaf),), (expectation,))[0]


def log_backward(engine, log_leaf: Float[Array, " leaves"]) -> tuple[Array, ...]:
    """Like :func:`backward` for ``exp(log_leaf)``, in log space (:func:`toysim._engine.log_expectation`)."""
    return engine.backward((engine.leaf(log_leaf),), (log_expectation,))[0]


def level_weights(levels: Levels, t: int) -> Float[Array, "prefix vocab"]:
    """Joint probability ``P(p) π(v|p)`` of each edge from level ``t-1`` to ``t`` (``t >= 1``)."""
    return jnp.exp(levels.log_prefix[t]).reshape(levels.log_cond[t - 1].shape)
