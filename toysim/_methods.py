"""Alignment methods in closed form: the policies ``π(y) ∝ π_0(y) f(h(y))`` (docs/theory.md §11).

Four of the standard methods have a population optimum that *reweights* the base policy by a
function of the harm alone:

* KL-regularised RL, ``λ E[h] + KL(π ‖ π_0)``: ``f = e^{−λh}`` (the tilt, §7);
* DPO with Bradley–Terry preferences ``P(y ≻ y') = σ(β_r (h(y') − h(y)))`` and temperature ``β``:
  ``f = e^{−(β_r/β) h}``, the tilt at ``λ = β_r/β`` (:func:`dpo_log_weights`);
* IPO on the same preferences: ``f = e^{g(h)/β}``, ``g(h) = E_{y'~π_0}[σ(β_r (h(y') − h))]``
  (:func:`ipo_log_weights`);
* rejection sampling (``π_0`` conditioned on ``h ≤ c``): ``f = 1[h ≤ c]``
  (:func:`rejection_log_weights`); best-of-N with the harm as the score, ties broken uniformly:
  ``f(h) = (S(h)^N − S⁺(h)^N) / P_0(h)`` with ``S(h) = P_0(h(Y) ≥ h)``, ``S⁺(h) = P_0(h(Y) > h)``
  (:func:`best_of_n_log_weights`).

Each is one backward pass on either engine (:func:`reweighting`): ``log W_t(x) = log E_{π_0}[f |
x]``, the per-token law ``π(v|x) = π_0(v|x) W_t(x·v)/W_{t−1}(x)``, its per-position KL ``D_t``
(the tilt's formula, :func:`toysim._equilibrium.tilt_kl_term`), ``E_π[h]`` and the prefilling-attack
curve. Because ``f`` depends on the sequence only through ``h``, ``W_t(x·v) = f(h*)`` for every
child of a state where the harm is determined (``h = h*`` on all its continuations): the
conditional KL there is exactly 0, whatever the method. The token-wise KL constraint of Qi et al.
(``λ E[h] + Σ_t β_t E[KL_t]``) is not a reweighting, but its optimum is a backward recursion with a
per-position temperature (:func:`token_wise_optimum`).

The weights are computed on the host from the distribution of the harm's values under ``π_0``
(:func:`harm_levels`), then handed to the compiled passes.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _aot
from ._engine import keep_constants, log_expectation
from ._enumerate import Levels, levels_from_log_cond
from ._equilibrium import tilt_kl_term, tilted_log_cond
from ._recovery import attack_curves


class Reweighted(NamedTuple):
    """A reweighted policy ``π ∝ π_0 f`` on an engine, in closed form (:func:`reweighting`).

    Attributes:
      log_partition: ``log W_t(x) = log E_{π_0}[f | x]`` for ``t = 0..T`` (engine layout).
      kl_by_position: ``D_1..D_T``, ``D_t = E_{x~π}[KL(π(·|x) ‖ π_0(·|x))]``.
      kl: ``KL(π ‖ π_0) = Σ_t D_t``.
      expected_harm: ``E_π[h]``.
      attack_success: ``A(k)`` of the reweighted policy for ``k = 0..T−1`` (``None`` without
        recovery tokens).
      base_attack_success: ``A(k)`` of ``π_0`` (``None`` without recovery tokens).
    """

    log_partition: Any
    kl_by_position: Array
    kl: Array
    expected_harm: Array
    attack_success: Array | None
    base_attack_success: Array | None


def _log_harm(h: Array) -> Array:
    return jnp.where(h > 0, jnp.log(jnp.where(h > 0, h, 1.0)), -jnp.inf)


def reweighting(
    engine, log_weight: Array, h: Array, mask: Array | None = None, log_q: Any = None
) -> Reweighted:
    """``π ∝ π_0 f`` on ``engine`` (either engine) from ``log f`` of every final state.

    Args:
      engine: ``π_0`` on the tree (:class:`toysim.Levels`) or the product states.
      log_weight: ``log f`` in the layout of the engine's leaf (``(V**T,)`` on the tree, one value
        per automaton state on the product); ``−inf`` allowed where some state keeps weight.
      h: the harm in the same layout.
      mask: recovery tokens ``R`` (``(V,)`` booleans) for the attack curve, with ``log_q`` the
        attacker's prefix law ``log Q_k`` for ``k = 0..T−1`` (e.g.
        :func:`toysim._recovery.harmful_log_marginals`).

    Returns:
      :class:`Reweighted`.
    """
    log_f = engine.leaf(log_weight)
    log_w, log_wh = engine.backward(
        (log_f, log_f + engine.leaf(_log_harm(jnp.asarray(h)))), (log_expectation, log_expectation)
    )
    log_w0 = engine.at_start(log_w)
    kls, _ = engine.positions(lambda step: (tilt_kl_term(step, log_w0), None), (log_w,))
    expected = jnp.exp(engine.at_start(log_wh) - log_w0)
    if mask is None:
        return Reweighted(log_w, kls, jnp.sum(kls), expected, None, None)
    curves = attack_curves(engine, mask, log_q, log_z=log_w)
    return Reweighted(log_w, kls, jnp.sum(kls), expected, curves["standard"], curves["policy"])


@_aot.program()
def reweighted_levels(base: Levels, log_weight: Float[Array, " leaves"]) -> Levels:
    """The reweighted policy's per-token conditionals on the tree, as :class:`toysim.Levels`."""
    from ._equilibrium import reweight

    return reweight(base, log_weight).levels


# ------------------------------------------------------------------------------ the weights


def final_probabilities(engine) -> np.ndarray:
    """``P_0`` of every final state in the layout of the engine's leaf (host array)."""
    log_p = np.asarray(engine.log_prob[-1], dtype=np.float64)
    if log_p.ndim == 2:  # product states (last token, automaton state): sum out the last token
        return np.exp(log_p).sum(axis=0)
    return np.exp(log_p)


def harm_levels(h: Any, probabilities: Any) -> tuple[np.ndarray, np.ndarray]:
    """The distinct harm values of positive probability and their probabilities under ``π_0``."""
    h = np.asarray(h, dtype=np.float64).reshape(-1)
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    values, index = np.unique(h[p > 0], return_inverse=True)
    return values, np.bincount(index, weights=p[p > 0], minlength=len(values))


def _per_state(h: np.ndarray, values: np.ndarray, per_level: np.ndarray) -> np.ndarray:
    """A per-level value at every final state (``−inf`` at states of probability zero)."""
    h = np.asarray(h, dtype=np.float64)
    idx = np.clip(np.searchsorted(values, h), 0, len(values) - 1)
    return np.where(values[idx] == h, per_level[idx], -np.inf)


def check_positive(name: str, value: Any) -> float:
    """A finite ``value > 0`` (one-line ``ValueError`` naming ``name`` otherwise)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number > 0, got {value!r}") from None
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return x


def check_count(name: str, value: Any) -> int:
    """An integer ``>= 1`` (``True``, ``2.5`` and ``"3"`` are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def tilt_log_weights(h: Any, lam: float) -> np.ndarray:
    """``log f = −λ h``: KL-regularised RL's optimum (the tilt)."""
    return -check_positive("lambda", lam) * np.asarray(h, dtype=np.float64)


def dpo_log_weights(h: Any, beta: float, beta_r: float) -> np.ndarray:
    """``log f = −(β_r/β) h``: the population optimum of DPO over all policies (docs/theory.md §11).

    With pairs from ``π_0 ⊗ π_0`` labelled by ``P(y ≻ y') = σ(β_r (h(y') − h(y)))``, the DPO loss is
    a logistic regression of the labels on ``β(ρ(y) − ρ(y'))``, ``ρ = log π/π_0``; the model is well
    specified at ``βρ = −β_r h + const``, which is the tilt at ``λ = β_r/β``.
    """
    return -(check_positive("beta_r", beta_r) / check_positive("beta", beta)) * np.asarray(
        h, dtype=np.float64
    )


def ipo_log_weights(h: Any, probabilities: Any, beta: float, beta_r: float) -> np.ndarray:
    """``log f = g(h)/β``, ``g(h) = E_{y'~π_0}[σ(β_r (h(y') − h))]``: IPO's population optimum.

    IPO's loss ``E[(ρ(y_w) − ρ(y_l) − 1/(2β))²]`` is least squares in the margin; its minimiser over
    all ``ρ`` has ``ρ(y) = (2 E_{y'}[P(y ≻ y')] − 1)/(2β) + const`` (docs/theory.md §11).
    """
    beta, beta_r = check_positive("beta", beta), check_positive("beta_r", beta_r)
    values, probs = harm_levels(h, probabilities)
    probs = probs / probs.sum()
    g = (probs[None, :] * _sigmoid(beta_r * (values[None, :] - values[:, None]))).sum(axis=1)
    return _per_state(h, values, g / beta)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def rejection_log_weights(h: Any, probabilities: Any, threshold: float = 0.0) -> np.ndarray:
    """``log f = log 1[h ≤ c]``: ``π_0`` conditioned on a harm at most ``c`` (rejection sampling).

    Raises:
      ValueError: when no sequence of positive probability has ``h ≤ c``.
    """
    try:
        c = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number, got {threshold!r}") from None
    if not math.isfinite(c):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    h = np.asarray(h, dtype=np.float64)
    kept = float(np.sum(np.asarray(probabilities)[h <= c]))
    if not kept > 0:
        raise ValueError(f"no response of positive probability has harm <= threshold {c}: nothing to keep")
    return np.where(h <= c, 0.0, -np.inf)


def best_of_n_log_weights(h: Any, probabilities: Any, n: int) -> np.ndarray:
    """``log f(h) = log(S(h)^N − S⁺(h)^N) − log P_0(h)``: best-of-N, the least harmful of ``N``
    draws from ``π_0``, ties broken uniformly (docs/theory.md §11).

    The least harm among ``N`` draws is ``h`` with probability ``S(h)^N − S⁺(h)^N``; given that, the
    tie-break picks each draw with harm ``h`` alike, so the response is ``π_0`` restricted to the
    level ``h``. Computed as ``N log S + log(−expm1(N (log S⁺ − log S)))`` for accuracy at large
    ``N``.
    """
    n = check_count("n", n)
    values, probs = harm_levels(h, probabilities)
    total = probs.sum()
    probs = probs / total
    at_least = np.cumsum(probs[::-1])[::-1]  # S(h): P(h(Y) >= h), levels sorted upwards
    above = at_least - probs  # S⁺(h)
    with np.errstate(divide="ignore"):
        log_s, log_above = np.log(at_least), np.log(np.maximum(above, 0.0))
        log_q = n * log_s + np.log(-np.expm1(n * (log_above - log_s)))
        log_f = log_q - np.log(probs)
    return _per_state(h, values, log_f)


def best_of_n_kl(h: Any, probabilities: Any, n: int) -> float:
    """``KL(π_BoN ‖ π_0) = Σ_h q(h) log(q(h)/P_0(h))`` from the harm levels alone (host, exact)."""
    n = check_count("n", n)
    values, probs = harm_levels(h, probabilities)
    probs = probs / probs.sum()
    log_f = best_of_n_log_weights(values, probs, n)
    q = probs * np.exp(log_f)
    return float(np.sum(np.where(q > 0, q * log_f, 0.0)))


def best_of_n_kl_bound(n: int) -> float:
    """``log N − (N − 1)/N``: the usual best-of-N KL formula, an upper bound (Beirami et al. 2024)."""
    n = check_count("n", n)
    return math.log(n) - (n - 1) / n


# ------------------------------------------------------------------------------ token-wise KL


def check_token_betas(betas: Any, horizon: int) -> np.ndarray:
    """``β_1..β_T``: ``T`` finite numbers ``> 0``."""
    try:
        arr = np.asarray(betas, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"token betas must be {horizon} numbers > 0, got {betas!r}") from None
    if arr.shape != (horizon,):
        raise ValueError(f"token betas must have one value per position (T = {horizon}), got {arr.size}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"token betas must be finite and > 0, got {arr.tolist()}")
    return arr


def _soft_value(kernel, child, step):
    """``β_t log E_{π_0}[e^{U_t/β_t}]``: the token-wise optimum's value one position up."""
    beta = step.extra[0]
    return beta * log_expectation(kernel, child / beta, step)


soft_value = keep_constants(_soft_value)


@_aot.program()
def token_wise_optimum(base: Levels, h: Float[Array, " leaves"], lam, betas: Array) -> Levels:
    """The minimiser over all policies of ``λ E[h] + Σ_t β_t E_{x~π}[KL(π(·|x) ‖ π_0(·|x))]``.

    By dynamic programming from the last position: with ``U_T = −λh`` and
    ``U_{t−1}(x) = β_t log E_{π_0}[e^{U_t(x·v)/β_t} | x]``, the optimum is
    ``π(v|x) = π_0(v|x) e^{(U_t(x·v) − U_{t−1}(x))/β_t}`` (docs/theory.md §11). With every
    ``β_t = 1`` it is the tilt. Where the harm is determined, ``U_t(x·v)`` is the same for every
    child and the optimum keeps ``π_0``.

    Args:
      base: ``π_0`` on the tree.
      h: leaf harms.
      lam: ``λ``.
      betas: ``(T,)`` positive weights.
    """
    u = base.backward((base.leaf(-lam * jnp.asarray(h)),), (soft_value,), extra=(jnp.asarray(betas),))[0]
    log_cond = []
    for t in range(1, base.horizon + 1):
        step = base.step(t, (u,))
        parent, child = step.pairs[0]
        beta = betas[t - 1]
        log_cond.append(tilted_log_cond(step.kernel.log_cond, parent / beta, child / beta))
    return levels_from_log_cond(log_cond)
