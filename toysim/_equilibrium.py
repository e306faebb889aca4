"""The equilibrium of KL-regularised alignment in closed form (docs/theory.md §7).

The minimiser over all policies of ``L(π) = λ E_π[h] + KL(π ‖ π_0)`` is the tilt
``π*(y) ∝ π_0(y) e^{−λ h(y)}``. Per token, ``π*(v | p) = π_0(v | p) Z_t(p·v) / Z_{t−1}(p)`` with
``Z_t = E_{π_0}[e^{−λh} | y_≤t]``, computed in log space by the engine's backward pass.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from . import _aot
from ._engine import Kernel, Step, constant_children, log_expectation
from ._enumerate import Levels, levels_from_log_cond
from ._martingale import harm_martingale


class Equilibrium(NamedTuple):
    """The tilted policy on the prefix tree.

    Attributes:
      levels: ``π*`` laid out like :class:`~toysim.Levels`.
      log_partition: ``log Z_t`` for ``t = 0..T`` per prefix (``log Z_T = −λ h``).
      kl_by_position: ``D_1..D_T``, ``D_t = E_{p ~ π*}[KL(π*(·|p) ‖ π_0(·|p))]`` over prefixes of
        length ``t − 1``.
      prefix_kl: ``T`` arrays, the conditional KL at every prefix of length ``t − 1``.
    """

    levels: Levels
    log_partition: tuple[Array, ...]
    kl_by_position: Array
    prefix_kl: tuple[Array, ...]


def tilt_leaf(engine, h: Float[Array, " leaves"], lam) -> Array:
    """``log Z_T = −λ h``: the leaf of the tilt's log-partition pass."""
    return engine.leaf(-lam * h)


@_aot.program()
def log_partition(engine, h: Float[Array, " leaves"], lam) -> Any:
    """``log Z_t(x)``, ``Z_t = E_{π_0}[e^{−λh} | state x at t]``, for ``t = 0..T`` (either engine).

    The backward pass with the log-space expectation (exact-constant rule) from :func:`tilt_leaf`.
    """
    return engine.backward((tilt_leaf(engine, h, lam),), (log_expectation,))[0]


def tilted_log_cond(log_cond: Array, z_parent: Array, z_child: Array) -> Array:
    """``log π*_t(v|x) = log π_0(v|x) + (log Z_t(x·v) − log Z_{t−1}(x))``.

    Parenthesised so that a state whose children share ``Z`` keeps ``log π* == log π_0`` exactly.
    A state of weight zero (``log Z_{t−1}(x) = −inf``: every continuation has ``f = 0``, as below a
    rejected prefix) cannot occur under the reweighted policy; its conditional is taken to be
    ``π_0``'s (the convention of every reweighting, docs/theory.md §11).
    """
    dead = jnp.isneginf(z_parent)[..., None]
    return jnp.where(dead, log_cond, log_cond + (z_child - jnp.where(dead, 0.0, z_parent[..., None])))


def tilt_state_kl(kernel: Kernel, z_parent: Array, z_child: Array) -> Array:
    """``KL(π*(·|x) ‖ π_0(·|x)) = E_{π*}[log Z_t(x·v)] − log Z_{t−1}(x)`` at every parent state.

    With ``r = log Z_t(x·v) − top`` (``top`` the largest child) and ``π*(v|x) = π_0(v|x) e^{r} /
    e^{log Z_{t−1}(x) − top}``, this is ``e^{top − log Z_{t−1}} E_{π_0}[e^r r] − (log Z_{t−1} − top)``:
    one expectation under ``π_0``, so the product engine never builds the tilted chain. Exactly 0 at
    states whose children share ``log Z`` (the tilt leaves them unchanged, docs/theory.md §7); the
    rounding of two nearly equal terms below zero is clamped to 0 in value only (a KL is never
    negative; see :func:`_prefix_kl`).
    """
    top = jnp.max(z_child, axis=-1)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    rel = z_child - top[..., None]
    z_parent = jnp.where(jnp.isneginf(z_parent), top, z_parent)  # weight-zero state: no mass, KL 0
    # children of weight zero (``rel = −inf``) add 0·(−inf) := 0, the rule 0 · log 0 = 0
    kl = jnp.exp(top - z_parent) * kernel.mean(jnp.where(jnp.isneginf(rel), 0.0, jnp.exp(rel) * rel))
    kl = kl - (z_parent - top)
    kl = kl + jax.lax.stop_gradient(jnp.maximum(kl, 0.0) - kl)
    return jnp.where(constant_children(z_child), 0.0, kl)


def tilt_kl_term(step: Step, log_z0: Array, pair: tuple | None = None) -> Array:
    """``D_t = Σ_x P*_{t−1}(x) KL(π*(·|x) ‖ π_0(·|x))``, ``P*(x) = P(x) Z_{t−1}(x) / Z_0``."""
    z_parent, z_child = step.pairs[0] if pair is None else pair
    return _tilted_average(step, log_z0, z_parent, tilt_state_kl(step.kernel, z_parent, z_child))


def _tilted_average(step: Step, log_z0: Array, z_parent: Array, per_state: Array) -> Array:
    """``Σ_x P*_{t−1}(x) f(x)`` with ``P*(x) = P(x) Z_{t−1}(x) / Z_0``."""
    return jnp.sum(jnp.exp(step.log_p + z_parent - log_z0) * per_state)


def tilt_kl_by_position(engine, log_z) -> Float[Array, " T"]:
    """``D_1..D_T`` of the tilt from ``log Z`` (either engine; :func:`tilt_kl_term`)."""
    log_z0 = engine.at_start(log_z)
    kls, _ = engine.positions(lambda step: (tilt_kl_term(step, log_z0), None), (log_z,))
    return kls


@_aot.program()
def tilt(base: Levels, h: Float[Array, " leaves"], lam: float) -> Equilibrium:
    """The equilibrium ``π* ∝ π_0 e^{−λh}`` on the tree and its per-position KL to ``π_0`` [Thm 14].

    Args:
      base: the reference policy ``π_0`` on the tree (``toysim.forward``).
      h: leaf harms ``(V**T,)``.
      lam: ``λ > 0``.

    Returns:
      :class:`Equilibrium`; ``Σ_t D_t = KL(π* ‖ π_0) = −λ E_{π*}[h] − log Z_0``.

    Example:
      >>> policy = TabularPolicy(2, 1)
      >>> eq = tilt(forward(policy, (jnp.zeros((1, 2)),)), jnp.array([0.0, 1.0]), 1.0)
      >>> round(float(jnp.exp(eq.levels.log_cond[0][0, 1])), 6)  # e^-1 / (1 + e^-1)
      0.268941
    """
    return reweight(base, tilt_leaf(base, h, lam))


@_aot.program()
def reweight(base: Levels, log_weight: Float[Array, " leaves"]) -> Equilibrium:
    """The reweighted policy ``π(y) ∝ π_0(y) f(y)`` on the tree, from ``log f`` at every leaf.

    The tilt is ``log f = −λh``; rejection sampling, best-of-N and the DPO and IPO population optima
    are other weights (``toysim._methods``, docs/theory.md §11). ``log f = −inf`` (weight zero) is
    allowed wherever some leaf keeps a positive weight: prefixes all of whose continuations have
    weight zero keep ``π_0``'s conditionals (:func:`tilted_log_cond`).

    Returns:
      :class:`Equilibrium` with ``log_partition`` = ``log E_{π_0}[f | prefix]``.
    """
    log_z = base.backward((base.leaf(log_weight),), (log_expectation,))[0]
    steps = [base.step(t, (log_z,)) for t in range(1, base.horizon + 1)]
    star = levels_from_log_cond([tilted_log_cond(s.kernel.log_cond, *s.pairs[0]) for s in steps])
    prefix_kl = tuple(tilt_state_kl(s.kernel, *s.pairs[0]) for s in steps)
    log_z0 = base.at_start(log_z)
    kls = jnp.stack([_tilted_average(s, log_z0, s.pairs[0][0], kl) for s, kl in zip(steps, prefix_kl)])
    return Equilibrium(star, log_z, kls, prefix_kl)


@jax.jit
def second_order_ratio(
    base_levels: Levels, h: Float[Array, " leaves"], lams: Float[Array, " sweep"]
) -> tuple[Array, Array, Array]:
    """``2 D_t(λ) / (λ² I_t⁽⁰⁾)`` over a sweep of ``λ``, from the closed-form tilt [Thm 14].

    [Thm 14] says ``D_t = (λ²/2) I_t⁽⁰⁾ + O(λ³)``, so the ratio tends to 1 with ``|ratio − 1| =
    O(λ)`` at every position with ``I_t⁽⁰⁾ > 0``.

    Args:
      base_levels: ``π_0`` on the tree.
      h: leaf harms ``(V**T,)``.
      lams: values of ``λ > 0``, shape ``(L,)``.

    Returns:
      ``(ratio (L, T), D (L, T), I⁽⁰⁾ (T,))``; the ratio is NaN where ``I_t⁽⁰⁾ = 0``.

    Example:
      >>> policy = TabularPolicy(2, 1)
      >>> base = forward(policy, (jnp.zeros((1, 2)),))
      >>> ratio, _, _ = second_order_ratio(base, jnp.array([0.0, 1.0]), jnp.array([1e-3]))
      >>> round(float(ratio[0, 0]), 3)
      1.0
    """
    from ._martingale import harm_information

    h = jnp.asarray(h)
    info = harm_information(base_levels, harm_martingale(base_levels, h))
    lams = jnp.asarray(lams)
    d = jax.vmap(lambda lam: tilt(base_levels, h, lam).kl_by_position)(lams)  # one traced tilt for the sweep
    lam2 = lams[:, None] ** 2
    ratio = jnp.where(info > 0, 2.0 * d / (lam2 * jnp.where(info > 0, info, 1.0)), jnp.nan)
    return ratio, d, info
