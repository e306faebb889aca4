"""The full exact analysis of one instance, on either engine: what ``toysim exact`` computes.

One backward pass carries the four recursions (``H`` by expectation, ``log Z`` of the tilt by
log-space expectation, and the range ``[min, max]`` of reachable final harms that decides where the
harm is determined); the forward pass gives ``log P``; one pass over positions then reads every
per-position quantity of docs/theory.md §2–7 off those arrays with the functions that define them
(:func:`~toysim._martingale.information_term`, :func:`~toysim._gradient.covariance_cotangent`,
:func:`~toysim._horizon.horizon_term`, :func:`~toysim._equilibrium.tilt_kl_term`), next to the
autodiff reference.

What differs between the engines is how a cotangent of a position's logits reaches the parameters
and what the autodiff reference is: a :class:`Parameterisation` says it (``TreeGradients`` in
``toysim._gradient``, ``TableGradients`` in ``toysim._dp``).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jaxtyping import Array

from . import _aot
from ._engine import Step, expectation, log_expectation, maximum, minimum
from ._enumerate import forward
from ._equilibrium import tilt_kl_term, tilt_leaf
from ._gradient import TreeGradients, covariance_cotangent
from ._horizon import horizon_term, uniform_horizon
from ._martingale import harm_variance, information_term
from ._types import Policy, PyTree


class Analysis(NamedTuple):
    """Every exact quantity of one instance (docs/theory.md §2–7), from either engine.

    Attributes:
      expected_harm: ``E[h]``.
      harm_variance: ``Var(h)``.
      harm_information: ``I_1..I_T``.
      gradient_norm_by_position: ``‖G_t‖₂`` in covariance form.
      autodiff_gradient_norm_by_position: ``‖∂E[h]/∂θ_t‖₂`` with untied parameters (NaN-free zeros
        when the reference is not computed).
      gradient_autodiff_max_abs_error: largest entry-wise gap between the covariance form and
        autodiff, over every ``G_t`` and over ``Σ_t G_t`` against ``jax.grad`` (NaN when the
        reference is not computed).
      fisher_bound_by_position: ``sqrt(I_t E[tr F_t])`` [Thm 13].
      horizon_distribution: ``P(τ = t)`` for ``t = 0..T``.
      uniform_horizon: ``k = max τ``.
      equilibrium_kl_by_position: ``D_1..D_T`` of the tilt, this policy acting as ``π_0``.
      equilibrium_kl: ``KL(π* ‖ π_0)``.
      martingale: ``H_0..H_T`` per state (a tuple of levels on the tree, ``(T + 1, V + 1, S)`` on
        the product).
      log_partition: ``log Z_t`` of the tilt per state, laid out like ``martingale``.
      gradient: ``Σ_t G_t`` in covariance form, shaped like the parameters.
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
    martingale: Any
    log_partition: Any
    gradient: PyTree


class Parameterisation(Protocol):
    """How a position's logit cotangent reaches the parameters, and the autodiff reference.

    ``pull(cotangent, t)``: ``G_t`` in its most compact exact form; ``fisher_trace(step)``: ``tr F``
    of the token at ``step.t`` per parent state; ``reference()``: ``(∇_θ E[h] by jax.grad, extra
    per-position data for untied)``; ``untied(step)``: ``∂E[h]/∂θ_t`` by reverse mode;
    ``summand(cotangent)`` and ``total(summed, martingale)``: ``Σ_t G_t``.
    """

    def pull(self, cotangent: Array, t: Any) -> PyTree: ...

    def fisher_trace(self, step: Step) -> Array: ...

    def reference(self) -> tuple: ...

    def untied(self, step: Step) -> PyTree: ...

    def summand(self, cotangent: Array) -> Any: ...

    def total(self, summed: Any, martingale: Any) -> PyTree: ...


def backward_stage(engine, h: Array, lam) -> tuple:
    """``H``, ``log Z`` and the determined states from one backward pass (either engine)."""
    leaf = engine.leaf(h)
    mart, log_z, lo, hi = engine.backward(
        (leaf, tilt_leaf(engine, h, lam), leaf, leaf), (expectation, log_expectation, minimum, maximum)
    )
    return mart, log_z, jax.tree_util.tree_map(jnp.equal, lo, hi)


def _sq_norm(tree: PyTree) -> Array:
    return sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(tree))


def _max_abs_diff(a: PyTree, b: PyTree) -> Array:
    diffs = jax.tree_util.tree_map(lambda x, y: jnp.max(jnp.abs(x - y), initial=0.0), a, b)
    return jnp.max(jnp.stack(jax.tree_util.tree_leaves(diffs)))


def analysis(
    engine,
    grads: Parameterisation,
    h: Array,
    lam,
    *,
    autodiff: bool = True,
    backward: tuple | None = None,
    reference: tuple | None = None,
) -> Analysis:
    """Every quantity of :class:`Analysis` on ``engine``.

    Args:
      engine: the policy on the tree or on the product states.
      grads: the engine's :class:`Parameterisation`.
      h: the harm of each final state.
      lam: ``λ`` of the tilt.
      autodiff: also compare with the autodiff reference.
      backward, reference: :func:`backward_stage` and ``grads.reference()`` when computed apart
        (the product engine runs them side by side in threads).
    """
    mart, log_z, det = backward_stage(engine, h, lam) if backward is None else backward
    if autodiff and reference is None:
        reference = grads.reference()
    total_autodiff, extra = reference if autodiff else (None, ())
    log_z0 = engine.at_start(log_z)

    def terms(step: Step):
        h_pair, z_pair, det_pair = step.pairs
        cotangent = covariance_cotangent(step, h_pair)
        g = grads.pull(cotangent, step.t)
        trace = jnp.sum(jnp.exp(step.log_p) * grads.fisher_trace(step))
        if autodiff:
            untied = grads.untied(step)
            err, u_norm = _max_abs_diff(g, untied), jnp.sqrt(_sq_norm(untied))
        else:
            err, u_norm = jnp.zeros(()), jnp.zeros(())
        outs = (
            information_term(step, h_pair),
            jnp.sqrt(_sq_norm(g)),
            trace,
            horizon_term(step, det_pair),
            tilt_kl_term(step, log_z0, z_pair),
            err,
            u_norm,
        )
        return outs, grads.summand(cotangent)

    outs, summed = engine.positions(terms, (mart, log_z, det), extra)
    info, g_norms, traces, tau, kls, errs, u_norms = outs
    gradient = grads.total(summed, mart)
    if autodiff:
        error = jnp.maximum(jnp.max(errs, initial=0.0), _max_abs_diff(gradient, total_autodiff))
    else:
        error = jnp.float64(jnp.nan)
    first = jnp.where(engine.at_start(det), 1.0, 0.0)
    return Analysis(
        expected_harm=engine.at_start(mart),
        harm_variance=harm_variance(engine, h),
        harm_information=info,
        gradient_norm_by_position=g_norms,
        autodiff_gradient_norm_by_position=u_norms,
        gradient_autodiff_max_abs_error=error,
        fisher_bound_by_position=jnp.sqrt(info * traces),
        horizon_distribution=jnp.concatenate([first[None], tau]),
        uniform_horizon=uniform_horizon(det, engine),
        equilibrium_kl_by_position=kls,
        equilibrium_kl=jnp.sum(kls),
        martingale=mart,
        log_partition=log_z,
        gradient=gradient,
    )


@functools.partial(jax.jit, static_argnames=("policy",))
def _analyze_jit(policy: Policy, params: PyTree, h: Array, lam: float | Array) -> Analysis:
    levels = forward(policy, params)
    return analysis(levels, TreeGradients(policy, params, levels, h), h, lam)


def analyze(policy: Policy, params: PyTree, h: Array, lam: float | Array) -> Analysis:
    """Exact analysis of a policy and a harm table on the prefix tree.

    :func:`toysim._analysis.analysis` on the tree engine (``toysim.forward``).

    Args:
      policy: a policy object (static).
      params: its parameters.
      h: leaf harms, shape ``(V**T,)``, in ``[0, 1]``.
      lam: ``λ > 0`` for the equilibrium tilt.

    Returns:
      :class:`Analysis`.

    Example:
      >>> policy = TabularPolicy(2, 2)
      >>> a = analyze(policy, policy.init(jax.random.key(0)), jnp.array([0.0, 0.0, 1.0, 1.0]), 1.0)
      >>> float(a.harm_information[1])  # decided by the first token
      0.0

    One compiled program (``policy`` static); where the executable cache is on (every ``toysim``
    subcommand, :mod:`toysim._aot`) a later process loads it instead of tracing it again.
    """
    return _aot.call("analyze", _analyze_jit, (policy, params, h, lam), static=(0,))
