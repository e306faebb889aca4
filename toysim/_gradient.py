"""The alignment gradient as a covariance, and its autodiff references (docs/theory.md §4, 6).

[Thm 8]: ``∇_θ E[h] = Σ_t G_t`` with ``G_t = E_{y<t}[Cov_{y_t}(H_t, s_t)]``. Because
``Σ_v π(v|p) Δ_t(p·v) = 0`` (martingale property), the covariance at a prefix equals
``Σ_v π(v|p) Δ_t(p·v) ∇_θ logit_θ(p)[v]``, so

    G_t = J_{t-1}ᵀ w_t,     w_t(p, v) = P(p) π(v|p) (H_t(p·v) − H_{t−1}(p)),

a vector-Jacobian product of the level-``t−1`` logits with the *covariance weights* ``w_t``. For a
tabular policy ``J`` is the identity and ``w_t`` is the gradient itself (docs/theory.md §4, closed form).

The autodiff references are independent of ``H``: :func:`autodiff_gradient` is ``jax.grad`` of
``E[h] = Σ_y P(y) h(y)``, and :func:`untied_autodiff_gradient` unties the parameters by position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from . import _aot
from ._engine import Step, constant_children
from ._enumerate import Levels, levels_from_log_cond, log_cond_untied
from ._martingale import innovations
from ._types import Policy, PyTree


@_aot.program()
def tree_sq_norm(tree: PyTree) -> Array:
    """``‖θ‖²`` summed over all leaves of a pytree."""
    return sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(tree))


def covariance_cotangent(step: Step, pair: tuple | None = None) -> Array:
    """``G_t`` as the cotangent of position ``t``'s logits, from the pair ``(H_{t−1}, H_t)``.

    ``w_t(x, v) = P(x) π(v|x) (H_t(x·v) − H_{t−1}(x))`` (:meth:`toysim._engine.Kernel.pull`),
    accumulated into the logit rows the states read: on the tree one row per prefix (``w_t`` is
    ``∂E[h] / ∂logit(p, v)`` of a tabular policy, docs/theory.md §4), on the product the rows ``c``
    of the shared table. States whose children share ``H`` are left out (they give exactly 0).
    """
    parent, child = step.pairs[0] if pair is None else pair
    weight = jnp.where(constant_children(child), 0.0, jnp.exp(step.log_p))
    return step.kernel.pull(weight, child, parent)


@_aot.program()
def covariance_weights(levels: Levels, martingale: tuple[Array, ...]) -> tuple[Array, ...]:
    """``w_t(p, v) = P(p) π(v|p) Δ_t(p·v)`` for ``t = 1..T`` on the tree, each ``(V**(t-1), V)``
    (:func:`covariance_cotangent` at every level)."""
    return tuple(covariance_cotangent(levels.step(t, (martingale,))) for t in range(1, levels.horizon + 1))


def pull_back_level(policy: Policy, params: PyTree, cotangent: Array, t: int) -> PyTree:
    """``J_tᵀ c_t``: a cotangent of the level-``t`` logits as a parameter gradient."""
    _, vjp = jax.vjp(lambda theta: policy.logits(theta, t), params)
    return vjp(cotangent)[0]


def pull_back(policy: Policy, params: PyTree, cotangents: Sequence[Array]) -> tuple[PyTree, ...]:
    """Per-position parameter gradients ``J_tᵀ c_t`` from cotangents ``c_t`` of the level logits."""
    return tuple(pull_back_level(policy, params, c_t, t) for t, c_t in enumerate(cotangents))


def pull_back_sum(policy: Policy, params: PyTree, cotangents: Sequence[Array]) -> PyTree:
    """``Σ_t J_tᵀ c_t`` in one vector-Jacobian product of all level logits at once."""
    _, vjp = jax.vjp(lambda theta: tuple(policy.logits(theta, t) for t in range(policy.horizon)), params)
    return vjp(tuple(cotangents))[0]


def per_position(policy: Policy, params: PyTree, cotangents: Sequence[Array]) -> tuple:
    """Per-position gradients from level cotangents, in their most compact exact form.

    For a tabular policy level ``t`` reads exactly parameter block ``t``, so ``G_t`` is the
    cotangent itself (the parameters outside block ``t`` get exactly zero, which is not stored);
    other policies pull each cotangent back to their shared parameters (:func:`pull_back`).
    """
    if policy.level_reads_own_block:
        return tuple(cotangents)
    return pull_back(policy, params, cotangents)


@_aot.program(static_argnames=("policy",))
def covariance_gradient(
    policy: Policy, params: PyTree, levels: Levels, martingale: tuple[Array, ...]
) -> tuple[PyTree, ...]:
    """Per-position gradients ``G_1..G_T`` in covariance form [Thm 8].

    Args:
      policy: the policy object.
      params: its parameters (the ones ``levels`` was computed from).
      levels: ``toysim.forward(policy, params)``.
      martingale: ``toysim.harm_martingale(levels, h)``.

    Returns:
      A tuple of ``T`` pytrees shaped like ``params``; their sum is ``∇_θ E[h]``. For a tabular
      policy ``G_t`` is zero outside block ``t − 1``, where it equals
      :func:`covariance_weights` ``[t − 1]``; use the weights directly at large sizes.
    """
    return pull_back(policy, params, covariance_weights(levels, martingale))


def expected_harm_from_log_cond(log_cond: Sequence[Array], h: Float[Array, " leaves"]) -> Array:
    """``E[h] = Σ_y exp(log P(y)) h(y)`` from per-level conditional log-probabilities."""
    return jnp.sum(jnp.exp(levels_from_log_cond(log_cond).log_prefix[-1]) * h)


def expected_harm(policy: Policy, params: PyTree, h: Float[Array, " leaves"]) -> Array:
    """``E_{π_θ}[h]``, differentiable in ``params``.

    Example:
      >>> policy = TabularPolicy(2, 1)
      >>> float(expected_harm(policy, (jnp.zeros((1, 2)),), jnp.array([0.0, 1.0])))
      0.5
    """
    return expected_harm_from_log_cond(log_cond_untied(policy, [params] * policy.horizon), h)


def autodiff_gradient(policy: Policy, params: PyTree, h: Float[Array, " leaves"]) -> PyTree:
    """``jax.grad`` of :func:`expected_harm`: the reference for ``Σ_t G_t``."""
    return jax.grad(expected_harm, argnums=1)(policy, params, h)


def logit_cotangents(policy: Policy, params: PyTree, h: Float[Array, " leaves"]) -> tuple[Array, ...]:
    """``∂E[h] / ∂logits_t`` for every level ``t``, by reverse-mode autodiff.

    Differentiates ``E[h] = Σ_y P(y) h(y)`` through ``log_softmax`` and the log-probability
    accumulation with respect to each level's logit array, treated as independent inputs: this is
    the untying of docs/theory.md §4 at the level of the logits. Independent of ``H``.

    Returns:
      ``T`` arrays, entry ``t`` of shape ``(V**t, V)``.
    """
    logits = tuple(policy.logits(params, t) for t in range(policy.horizon))

    def objective(level_logits):
        log_cond = tuple(jax.nn.log_softmax(z, axis=-1) for z in level_logits)
        return expected_harm_from_log_cond(log_cond, h)

    return jax.grad(objective)(logits)


def untied_autodiff_gradient(policy: Policy, params: PyTree, h: Float[Array, " leaves"]) -> tuple:
    """Per-position autodiff gradients: ``G_t = ∂E[h]/∂θ_t`` with ``θ_1 = … = θ_T = θ`` (docs/theory.md §4).

    :func:`logit_cotangents` pulled back through each level's parameterisation. This equals
    differentiating with respect to ``T`` separate parameter copies (see
    :func:`untied_copies_gradient`) without storing ``T`` copies.

    Returns:
      A tuple of ``T`` pytrees shaped like ``params``.
    """
    return pull_back(policy, params, logit_cotangents(policy, params, h))


def untied_copies_gradient(policy: Policy, params: PyTree, h: Float[Array, " leaves"]) -> tuple:
    """Per-position gradients by literally untying: ``T`` parameter copies, one per position.

    Memory grows as ``T · |θ|``; a slow reference for tests and checks on small instances.
    """

    def objective(copies):
        return expected_harm_from_log_cond(log_cond_untied(policy, copies), h)

    return tuple(jax.grad(objective)([params] * policy.horizon))


@_aot.program(static_argnames=("policy", "t"))
def prefix_covariance_sq_norm(
    policy: Policy, params: PyTree, levels: Levels, martingale: tuple[Array, ...], t: int
) -> Float[Array, " prefix"]:
    """``‖Cov(H_t, s_t | p)‖²`` for every prefix ``p`` of length ``t − 1`` (``t = 1..T``).

    For lookup parameterisations (tabular, Markov) the score is ``e_v − π`` in the row read by
    ``p``, so the covariance is ``π ⊙ Δ_t`` and its squared norm ``Σ_v π² Δ_t²``. Other policies
    use the full Jacobian of the level (small instances only).
    """
    delta = innovations(martingale)[t - 1]
    probs = jnp.exp(levels.log_cond[t - 1])
    if policy.is_lookup:
        return jnp.sum((probs * delta) ** 2, axis=-1)

    def log_probs(theta):
        return jax.nn.log_softmax(policy.logits(theta, t - 1), axis=-1)

    jac = jax.jacrev(log_probs)(params)
    coeff = probs * delta
    total = 0.0
    for leaf in jax.tree_util.tree_leaves(jac):
        flat = leaf.reshape(leaf.shape[0], leaf.shape[1], -1)
        total = total + jnp.sum(jnp.einsum("pv,pvk->pk", coeff, flat) ** 2, axis=-1)
    return total


@_aot.program(static_argnames=("policy",))
def fisher_bound(
    policy: Policy, params: PyTree, levels: Levels, information: Float[Array, " T"]
) -> Float[Array, " T"]:
    """Right-hand side of [Thm 13]: ``sqrt(I_t · E[tr F_t])`` for ``t = 1..T``.

    [Lemma 12] gives ``‖G_t‖ ≤ sqrt(I_t · E[tr F_t])`` with ``F_t`` the conditional Fisher
    information of the level-``t`` token.
    """
    traces = jnp.stack(
        [
            jnp.sum(jnp.exp(levels.log_prefix[t]) * policy.fisher_trace(params, t))
            for t in range(policy.horizon)
        ]
    )
    return jnp.sqrt(information * traces)


class TreeGradients(NamedTuple):
    """The tree's :class:`toysim._analysis.Parameterisation`: a policy's own parameters.

    ``G_t`` is the level's cotangent pulled back through ``policy.logits(θ, t − 1)``
    (:func:`per_position`); the reference is ``jax.grad`` of ``E[h] = Σ_y P(y) h(y)`` with the level
    logits untied (:func:`logit_cotangents`), independent of ``H``.
    """

    policy: Policy
    params: PyTree
    levels: Levels
    h: Array

    def pull(self, cotangent: Array, t: int) -> PyTree:
        """``G_t`` in its most compact exact form (:func:`per_position`)."""
        if self.policy.level_reads_own_block:
            return cotangent
        return pull_back_level(self.policy, self.params, cotangent, t - 1)

    def fisher_trace(self, step) -> Array:
        return self.policy.fisher_trace(self.params, step.t - 1)

    def reference(self) -> tuple:
        cotangents = logit_cotangents(self.policy, self.params, self.h)
        return autodiff_gradient(self.policy, self.params, self.h), (cotangents,)

    def untied(self, step) -> PyTree:
        return self.pull(step.extra[0], step.t)

    def summand(self, cotangent: Array) -> None:
        return None  # the levels' shapes differ: summed at once by ``total``

    def total(self, summed, martingale) -> PyTree:
        return pull_back_sum(self.policy, self.params, covariance_weights(self.levels, martingale))
