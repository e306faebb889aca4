"""Recovery penalties and deep alignment (docs/theory.md §8 and 9).

Deep alignment adds to the standard objective a penalty for *not* recovering after an adversarial
prefix: with recovery tokens ``R ⊂ V``, an adversarial prefix distribution ``Q`` and weights
``μ > 0``, ``γ ∈ (0, 1]`` [Def 16],

    L_deep(θ) = λ E_{π_θ}[h] + μ E_{y~Q}[Σ_t γ^{t−1} (1 − π_θ(R | y_<t))] + KL(π_θ ‖ π_0).

``Q`` enters only through its prefix marginals ``Q_t(p)`` (``t = 0..T−1``), so it is stored as
``T`` arrays of shapes ``(V**t,)`` in the engine's lexicographic layout (:class:`RecoverySpec`).
Everything is computed from the engine's levels (``toysim.forward``): ``π(R | p)`` is a
``logsumexp`` over the recovery columns of ``log π(·|p)``, the penalty is a ``Q``-weighted sum of
those per level, and the probability of never recovering after a prefix is a masked log-space
backward pass over the same levels (:func:`log_no_recovery`).

Results checked here (proofs_check/recovery_gradient.py, gibbs_form.py, robustness_bound.py,
attack_length.py, prefill_attack.py, augmentation.py):

* the recovery term's gradient at position ``t`` is ``−μγ^{t−1} E_Q[∇π_θ(R | y_<t)]``, non-zero at
  every position (beyond the harm horizon included) where the plain objective's ``G_t`` is zero;
* [Thm 20] Gibbs form ``π*(R | p) = σ(logit π_0(R | p) + μγ^{t−1})``, exact for the separable
  tabular objective, an approximation for the joint one;
* [Thm 22] ``π*(R | p) ≥ σ(logit p_min + μγ^{T−1})`` and [Cor 23] the attack length ``t_attack(δ)``;
* prefilling-attack curves (Qi et al.) and data augmentation as a sampled recovery penalty.

Design decision: ``R`` must be a non-empty *proper* subset of the vocabulary. With ``R = V`` every
policy has ``π(R | p) = 1``, the penalty is the constant 0, ``logit π_0(R | p) = +∞`` and there is
nothing to learn or to bound, so :func:`recovery_spec` refuses it with a ``ValueError``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _aot
from ._engine import Kernel, Step, masked_log_expectation
from ._enumerate import Levels, backward, forward, levels_from_log_cond
from ._equilibrium import tilt
from ._gradient import pull_back_level
from ._types import Policy, PyTree

# Tolerance for a user-given Q: prefix marginals must sum to one and be consistent across lengths
# (Q_t(p) = Σ_v Q_{t+1}(p·v)) up to this, far above float64 rounding of sums of V**T terms.
Q_CONSISTENCY_TOLERANCE = 1e-9


class RecoverySpec(NamedTuple):
    """The recovery penalty's data [Def 16].

    Attributes:
      mask: boolean ``(V,)``, ``True`` on the recovery tokens ``R``.
      q_prefix: ``T`` arrays; entry ``t`` of shape ``(V**t,)`` holds ``Q_t(p)``, the probability
        under ``Q`` that a response starts with the length-``t`` prefix ``p`` (entry 0 is ``[1]``).
      mu: ``μ > 0``.
      gamma: ``γ ∈ (0, 1]``.
    """

    mask: np.ndarray
    q_prefix: tuple[np.ndarray, ...]
    mu: float
    gamma: float

    @property
    def horizon(self) -> int:
        return len(self.q_prefix)

    @property
    def vocab_size(self) -> int:
        return self.mask.shape[0]

    @property
    def discounts(self) -> np.ndarray:
        """``μ γ^{t−1}`` for ``t = 1..T``."""
        return self.mu * self.gamma ** np.arange(self.horizon, dtype=np.float64)


# --------------------------------------------------------------------------- construction


def recovery_mask(tokens: Sequence[int], vocab_size: int) -> np.ndarray:
    """The boolean mask of a recovery set ``R``.

    Raises:
      ValueError: if ``R`` is empty, has a token outside ``0..V−1``, or is the whole vocabulary.
    """
    toks = list(tokens)
    if not toks:
        raise ValueError("recovery must name at least one token, got an empty set")
    for tok in toks:
        if isinstance(tok, bool) or not isinstance(tok, (int, np.integer)) or not 0 <= tok < vocab_size:
            raise ValueError(f"recovery token {tok!r} is outside the vocabulary 0..{vocab_size - 1}")
    mask = np.zeros(vocab_size, dtype=bool)
    mask[np.asarray(toks, dtype=int)] = True
    if mask.all():
        raise ValueError(
            "recovery must be a proper subset of the vocabulary: with R = V every policy has "
            "π(R|p) = 1, the penalty is constant and there is nothing to learn"
        )
    return mask


def _check_weights(mu: float, gamma: float) -> tuple[float, float]:
    try:
        mu, gamma = float(mu), float(gamma)
    except (TypeError, ValueError):
        raise ValueError(f"mu and gamma must be numbers, got mu={mu!r}, gamma={gamma!r}") from None
    if not (math.isfinite(mu) and mu > 0):
        raise ValueError(f"mu must be a finite number > 0, got {mu}")
    if not (math.isfinite(gamma) and 0 < gamma <= 1):
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    return mu, gamma


def recovery_spec(
    vocab_size: int,
    recovery: Sequence[int],
    q_prefix: Sequence[Any],
    mu: float = 1.0,
    gamma: float = 1.0,
) -> RecoverySpec:
    """Validate and bundle the recovery penalty's data.

    Args:
      vocab_size: ``V``.
      recovery: the recovery tokens ``R`` (a non-empty proper subset of ``0..V−1``).
      q_prefix: ``Q``'s prefix marginals, ``T`` arrays of shapes ``(V**t,)``, e.g. from
        :func:`harmful_prefix_marginals`, :func:`policy_prefix_marginals` or
        :func:`sequence_prefix_marginals`.
      mu: ``μ > 0``.
      gamma: ``γ ∈ (0, 1]``.

    Returns:
      :class:`RecoverySpec`.

    Raises:
      ValueError: naming ``recovery``, ``mu``, ``gamma`` or ``q`` (wrong shapes, negative or
        non-finite entries, no mass, marginals that do not sum to one or are inconsistent).

    Example:
      >>> spec = recovery_spec(2, [0], [np.ones(1), np.array([0.5, 0.5])], mu=2.0, gamma=0.5)
      >>> spec.discounts.tolist()
      [2.0, 1.0]
    """
    mu, gamma = _check_weights(mu, gamma)
    mask = recovery_mask(recovery, vocab_size)
    q = [np.asarray(x, dtype=np.float64).reshape(-1) for x in q_prefix]
    if not q:
        raise ValueError("q must give prefix marginals for t = 0..T-1, got none")
    for t, qt in enumerate(q):
        if qt.shape != (vocab_size**t,):
            raise ValueError(f"q at length {t} must have shape ({vocab_size**t},), got {qt.shape}")
        if not np.all(np.isfinite(qt)) or np.any(qt < 0):
            raise ValueError(f"q at length {t} must be finite and non-negative")
        if not abs(qt.sum() - 1.0) <= Q_CONSISTENCY_TOLERANCE:
            raise ValueError(f"q at length {t} must sum to 1 (does Q have mass?), got {qt.sum()}")
        if t > 0:
            parents = qt.reshape(-1, vocab_size).sum(axis=1)
            if np.max(np.abs(parents - q[t - 1])) > Q_CONSISTENCY_TOLERANCE:
                raise ValueError(
                    f"q is inconsistent: the length-{t} marginals do not add up to the length-{t - 1} ones"
                )
    return RecoverySpec(mask, tuple(q), mu, gamma)


@_aot.program()
def harmful_log_marginals(engine, martingale) -> tuple[Any, Array]:
    """``log Q_t(x)`` of ``Q = π_0`` conditioned on harm, ``Q(y) ∝ π_0(y) h(y)``, for ``t = 0..T−1``,
    and ``E_0[h]`` (either engine).

    ``Q_t(x) = P_t(x) H_t(x) / E_0[h]``: the ``Q``-mass of the prefixes in state ``x`` is
    ``Σ_{p → x} P(p) H(p) = P_t(x) H_t(x)``. ``−inf`` where ``H_t(x) = 0``.
    """
    total = engine.at_start(martingale)

    def one(log_p, mart):
        positive = mart > 0
        return log_p + jnp.where(positive, jnp.log(jnp.where(positive, mart, 1.0)), -jnp.inf) - jnp.log(total)

    return jax.tree_util.tree_map(one, engine.log_prob[:-1], martingale[:-1]), total


def harmful_prefix_marginals(base: Levels, h: Float[Array, " leaves"]) -> tuple[np.ndarray, ...]:
    """Prefix marginals of ``Q = π_0`` conditioned on harm on the tree (:func:`harmful_log_marginals`).

    Args:
      base: ``π_0`` on the tree.
      h: leaf harms ``(V**T,)``.

    Returns:
      ``T`` arrays, entry ``t`` of shape ``(V**t,)``.

    Raises:
      ValueError: if ``E_0[h] = 0`` (``Q`` has no mass).
    """
    q, total = _harmful_marginals(base, jnp.asarray(h))
    if not float(total) > 0:
        raise ValueError("q = harmful (π_0 conditioned on harm) has no mass: E_0[h] = 0")
    return tuple(np.asarray(x) for x in q)


@_aot.program()
def _harmful_marginals(base: Levels, h: Array) -> tuple[tuple[Array, ...], Array]:
    log_q, total = harmful_log_marginals(base, backward(base, h))
    return tuple(jnp.exp(x) for x in log_q), total


def policy_prefix_marginals(levels: Levels) -> tuple[np.ndarray, ...]:
    """Prefix marginals ``P(p)`` of a policy (e.g. a jailbroken one), lengths ``0..T−1``."""
    return tuple(np.exp(np.asarray(lp)) for lp in levels.log_prefix[:-1])


def sequence_prefix_marginals(
    sequences: Sequence[Sequence[int]], weights: Sequence[float], vocab_size: int, horizon: int
) -> tuple[np.ndarray, ...]:
    """Prefix marginals of explicit weighted responses, ``Q(y) ∝ weight(y)``.

    Args:
      sequences: responses of length ``T`` (token lists).
      weights: positive weights, one per response (repeats add up).
      vocab_size: ``V``.
      horizon: ``T``.

    Raises:
      ValueError: naming ``q`` for a wrong length, a token outside the vocabulary or a
        non-positive weight.
    """
    if len(sequences) == 0 or len(sequences) != len(weights):
        raise ValueError("q sequences and weights must be non-empty and of equal length")
    leaf = np.zeros(vocab_size**horizon)
    for y, w in zip(sequences, weights):
        if len(y) != horizon or any(not 0 <= int(tok) < vocab_size for tok in y):
            raise ValueError(f"q sequence {list(y)} must have {horizon} tokens in 0..{vocab_size - 1}")
        if not (math.isfinite(float(w)) and float(w) > 0):
            raise ValueError(f"q weight must be a finite number > 0, got {w}")
        index = 0
        for tok in y:
            index = index * vocab_size + int(tok)
        leaf[index] += float(w)
    leaf = leaf / leaf.sum()
    out = [leaf]
    for _ in range(horizon):
        out.append(out[-1].reshape(-1, vocab_size).sum(axis=1))
    return tuple(reversed(out[1:]))


# --------------------------------------------------------------------------- the objective


def log_recovery(kernel: Kernel, mask: Array) -> tuple[Array, Array]:
    """``log π(R | x)`` and ``log π(R^c | x)`` at every parent state of one position.

    The complement is summed directly, so ``1 − π(R | x)`` keeps full relative precision when
    ``π(R | x)`` is close to one. On the product the shape is ``(V + 1, 1)``: a state reads the
    row of its last token.
    """
    lc = kernel.log_probs()
    inside = jax.nn.logsumexp(jnp.where(mask, lc, -jnp.inf), axis=-1)
    outside = jax.nn.logsumexp(jnp.where(mask, -jnp.inf, lc), axis=-1)
    return inside, outside


@_aot.program()
def log_recovery_probability(levels: Levels, mask: np.ndarray) -> tuple[Array, ...]:
    """``log π(R | p)`` and ``log π(R^c | p)`` at every prefix of lengths ``0..T−1`` (the tree's
    :func:`log_recovery` per level).

    Returns:
      A pair of tuples of ``T`` arrays ``(V**t,)``.
    """
    both = [log_recovery(levels.step(t).kernel, mask) for t in range(1, levels.horizon + 1)]
    return tuple(b[0] for b in both), tuple(b[1] for b in both)


def penalty_term(step: Step, mask: Array) -> Array:
    """``μγ^{t−1} Σ_x Q_{t−1}(x) π(R^c | x)``: position ``t``'s recovery term [Def 16].

    ``step.extra`` holds ``(log Q_{t−1}, μγ^{t−1})``.
    """
    log_q, discount = step.extra[:2]
    _, outside = log_recovery(step.kernel, mask)
    return discount * jnp.sum(jnp.exp(log_q + outside))


def penalty(engine, mask: Array, log_q, discounts: Array) -> Array:
    """The recovery term ``μ Σ_t γ^{t−1} E_{y~Q}[1 − π(R | y_<t)]`` (either engine), differentiable."""
    terms, _ = engine.positions(lambda step: (penalty_term(step, mask), None), (), (log_q, discounts))
    return jnp.sum(terms)


def recovery_cotangent(step: Step, mask: Array) -> Array:
    """``G̃_t = −μγ^{t−1} E_Q[∇π(R | y_<t)]`` as the cotangent of position ``t``'s logits.

    For softmax logits ``∂π(R|x)/∂logit(x, v) = π(v|x) (1[v ∈ R] − π(R|x))`` (:meth:`Kernel.pull`
    with weight ``−μγ^{t−1} Q_{t−1}(x)``). Non-zero wherever ``Q`` has mass and ``0 < π(R|x) < 1``,
    past the harm horizon included (docs/theory.md §8). ``step.extra`` as in :func:`penalty_term`.
    """
    log_q, discount = step.extra[:2]
    inside, _ = log_recovery(step.kernel, mask)
    weight = -discount * jnp.exp(log_q)
    child = jnp.broadcast_to(jnp.asarray(mask, weight.dtype), (weight.shape[-1], mask.shape[-1]))
    return step.kernel.pull(weight, child, jnp.broadcast_to(jnp.exp(inside), weight.shape))


def _log_q(spec: RecoverySpec) -> tuple[Array, ...]:
    """``log Q_t`` of the tree's prefix marginals (``−inf`` where ``Q`` has no mass)."""
    return tuple(jnp.log(jnp.asarray(q)) for q in spec.q_prefix)


@jax.jit
def recovery_penalty(levels: Levels, spec: RecoverySpec) -> Array:
    """The recovery term ``μ Σ_t γ^{t−1} Σ_p Q_{t−1}(p) (1 − π(R | p))`` [Def 16] on the tree.

    Example:
      >>> lv = forward(TabularPolicy(2, 1), (jnp.zeros((1, 2)),))
      >>> spec = recovery_spec(2, [0], [np.ones(1)], mu=2.0)
      >>> float(recovery_penalty(lv, spec))  # 2 · (1 − 1/2)
      1.0
    """
    return penalty(levels, spec.mask, _log_q(spec), jnp.asarray(spec.discounts))


@functools.partial(jax.jit, static_argnames=("policy",))
def recovery_gradient(policy: Policy, params: PyTree, spec: RecoverySpec) -> tuple[PyTree, ...]:
    """Closed form of the recovery term's per-position gradient: ``−μγ^{t−1} E_Q[∇π_θ(R | y_<t)]``.

    :func:`recovery_cotangent` at every level, pulled back through the level's parameterisation.

    Returns:
      ``T`` pytrees shaped like ``params``.
    """
    levels = forward(policy, params)
    extra = (_log_q(spec), jnp.asarray(spec.discounts))
    return tuple(
        pull_back_level(policy, params, recovery_cotangent(levels.step(t, (), extra), spec.mask), t - 1)
        for t in range(1, policy.horizon + 1)
    )


# --------------------------------------------------------------------------- Gibbs form and training


@_aot.program()
def logit_recovery(levels: Levels, mask: np.ndarray) -> tuple[Array, ...]:
    """``logit π(R | p) = log π(R | p) − log π(R^c | p)`` at every prefix of lengths ``0..T−1``."""
    inside, outside = log_recovery_probability(levels, mask)
    return tuple(i - o for i, o in zip(inside, outside))


@_aot.program()
def gibbs_recovery(base: Levels, spec: RecoverySpec) -> tuple[Array, ...]:
    """[Thm 20] ``π*(R | p) = σ(logit π_0(R | p) + μγ^{t−1})`` at every prefix of length ``t − 1``."""
    return tuple(jax.nn.sigmoid(z + d) for z, d in zip(logit_recovery(base, spec.mask), spec.discounts))


@_aot.program()
def gibbs_policy(base: Levels, spec: RecoverySpec) -> Levels:
    """The Gibbs-form policy ``π*(v | p) ∝ π_0(v | p) exp(μγ^{t−1} 1[v ∈ R])`` at every prefix."""
    log_cond = tuple(
        jax.nn.log_softmax(lc + d * spec.mask, axis=-1) for lc, d in zip(base.log_cond, spec.discounts)
    )
    return levels_from_log_cond(log_cond)


def gibbs_gap(
    levels: Levels, base: Levels, spec: RecoverySpec, where: Sequence[Array] | None = None
) -> float:
    """``max |π(R|p) − σ(logit π_0(R|p) + μγ^{t−1})|`` over prefixes with ``Q(p) > 0``.

    Args:
      where: optional extra boolean masks per level (e.g. determined prefixes, past the horizon).
    """
    gibbs = gibbs_recovery(base, spec)
    inside, _ = log_recovery_probability(levels, spec.mask)
    err = 0.0
    for t in range(base.horizon):
        sel = np.asarray(spec.q_prefix[t]) > 0
        if where is not None:
            sel = sel & np.asarray(where[t])
        if sel.any():
            err = max(err, float(np.max(np.abs(np.asarray(jnp.exp(inside[t]) - gibbs[t])[sel]))))
    return err


# --------------------------------------------------------------------------- robustness


@_aot.program()
def min_log_recovery(engine, mask: Array) -> Array:
    """``log p_min = min_x log π_0(R | x)`` over every state that occurs at positions ``0..T−1``
    (either engine).

    Finite for finite logits even where ``p_min`` itself underflows to 0 (logits ±700 give
    ``log p_min ≈ −1400``): pass it to :func:`guaranteed_recovery` and :func:`attack_length`.
    """

    def term(step):
        inside = jnp.broadcast_to(log_recovery(step.kernel, mask)[0], step.log_p.shape)
        return jnp.min(jnp.where(jnp.isfinite(step.log_p), inside, jnp.inf)), None

    return jnp.min(engine.positions(term)[0])


def min_log_recovery_probability(base: Levels, mask: np.ndarray) -> float:
    """``log p_min = min_p log π_0(R | p)`` over every prefix of lengths ``0..T−1`` (:func:`min_log_recovery`)."""
    return float(min_log_recovery(base, jnp.asarray(mask)))


def min_recovery_probability(base: Levels, mask: np.ndarray) -> float:
    """``p_min = min_p π_0(R | p)`` over every prefix of lengths ``0..T−1``."""
    return float(np.exp(min_log_recovery_probability(base, mask)))


def logit_of_log(log_p: Any) -> Any:
    """``logit p = log p − log(1 − p)`` from ``log p``, without warnings at the ends.

    ``log(1 − p) = log(−expm1(log p))`` keeps full precision for ``p`` near 0 and near 1; ``p = 1``
    (``log p = 0``, also after rounding above 0) gives ``+inf`` and ``p = 0`` gives ``−inf``.
    """
    log_p = np.minimum(np.asarray(log_p, dtype=np.float64), 0.0)
    with np.errstate(divide="ignore"):
        return log_p - np.log(-np.expm1(log_p))


def sigmoid(x: Any) -> Any:
    """``σ(x) = 1 / (1 + e^{−x}) = exp(−log(1 + e^{−x}))``, without overflow for any ``x`` (±inf too)."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(x, dtype=np.float64)))


def _log_of(p_min: float, log_p_min: float | None) -> float:
    """``log p_min`` from whichever was given (the log is exact where ``p_min`` underflows)."""
    if log_p_min is not None:
        log_p_min = float(log_p_min)
        if not log_p_min <= 0.0:  # NaN included
            raise ValueError(f"log_p_min must be <= 0, got {log_p_min}")
        return log_p_min
    p_min = float(p_min)
    if not 0.0 <= p_min <= 1.0:  # NaN included
        raise ValueError(f"p_min must be in [0, 1], got {p_min}")
    with np.errstate(divide="ignore"):
        return float(np.log(p_min))


def guaranteed_recovery(
    p_min: float, mu: float, gamma: float, t: Any, *, log_p_min: float | None = None
) -> Any:
    """``σ(logit p_min + μγ^{t−1})``: the recovery probability guaranteed at position ``t`` [Thm 22].

    ``log_p_min``, if given, replaces ``p_min`` (full precision where ``p_min`` underflows). ``p_min``
    of 0 or 1 gives a guarantee of 0 or 1, no warning.
    """
    t = np.asarray(t, dtype=np.float64)
    return sigmoid(logit_of_log(_log_of(p_min, log_p_min)) + mu * gamma ** (t - 1.0))


def robustness_bound(base: Levels, spec: RecoverySpec) -> float:
    """[Thm 22] ``σ(logit p_min + μγ^{T−1})``, ``p_min = min_p π_0(R | p)``.

    It bounds from below, at every position ``t = 1..T`` and every prefix ``p`` with ``Q(p) > 0``,
    the one-step recovery probability ``π*(R | p)`` of the Gibbs-form optimum.
    """
    log_p_min = min_log_recovery_probability(base, spec.mask)
    return float(guaranteed_recovery(None, spec.mu, spec.gamma, spec.horizon, log_p_min=log_p_min))


def check_attack_setting(delta: float, gamma: float) -> float:
    """Validate ``δ`` for :func:`attack_length` before anything is computed: its own range
    ``0 < δ < 1`` first, then the requirement ``γ < 1``. Returns ``δ`` as a float.

    Raises:
      ValueError: naming delta (out of range) or gamma (= 1: the guarantee never decays).
    """
    try:
        delta = float(delta)
    except (TypeError, ValueError):
        raise ValueError(f"delta must be a number in (0, 1), got {delta!r}") from None
    if not (math.isfinite(delta) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not float(gamma) < 1:
        raise ValueError(
            f"an attack length for delta = {delta} needs gamma < 1, got gamma = {gamma} "
            "(with gamma = 1 the guarantee never decays)"
        )
    return delta


def attack_length(
    delta: float, p_min: float, mu: float, gamma: float, *, log_p_min: float | None = None
) -> float:
    """[Cor 23] ``t_attack(δ) = 1 + (log μ − log(logit δ − logit p_min)) / log(1/γ)``.

    The (real) prefill length at which the guaranteed recovery ``σ(logit p_min + μγ^{t−1})`` falls
    to ``δ``: above ``δ`` for ``t < t_attack``, at most ``δ`` for ``t >= t_attack``. ``log_p_min``,
    if given, replaces ``p_min`` (``logit p_min`` stays finite where ``p_min`` underflows to 0).

    Raises:
      ValueError: unless ``μ > 0``, ``0 < δ < 1`` (checked before ``γ``), ``0 < γ < 1`` and
        ``p_min < δ``.
    """
    mu, gamma = _check_weights(mu, gamma)
    delta = check_attack_setting(delta, gamma)
    log_p = _log_of(p_min, log_p_min)
    if log_p == -math.inf:  # p_min = 0: the guarantee is 0 at every position
        raise ValueError("p_min must be > 0 for an attack length (give log_p_min if p_min underflows)")
    logit_p = float(logit_of_log(log_p))
    gap = float(logit_of_log(math.log(delta))) - logit_p
    if not gap > 0:
        p_shown = math.exp(log_p)
        raise ValueError(f"delta must satisfy p_min < delta < 1 (p_min = {p_shown:.6g}), got {delta}")
    return 1.0 + (math.log(mu) - math.log(gap)) / math.log(1.0 / gamma)


# --------------------------------------------------------------------------- prefilling attacks


@_aot.program()
def attack_curves(engine, mask: Array, log_q, *, log_z=None, discounts=None) -> dict[str, Array]:
    """Prefilling-attack success ``A(k) = E_{x ~ Q_k}[P(no recovery token after x)]`` for
    ``k = 0..T−1`` (docs/theory.md §9, toy version of Qi et al.), of up to three policies in one
    backward pass (either engine):

    * ``"policy"``: the engine's own policy, ``log N_{t−1}(x) = log Σ_{v ∉ R} π(v|x) N_t(x·v)``
      (:func:`toysim._engine.masked_log_expectation` from ``log N_T = 0``);
    * ``"standard"`` (given ``log_z`` of the tilt, or of any reweighting ``π_0 f``): the tilt ``π*(v|x) = π(v|x) Z_t(x·v) / Z_{t−1}(x)``,
      ``log Σ_{v ∉ R} π(v|x) Z_t(x·v) N*_t(x·v) − log Z_{t−1}(x)``, so the tilted chain is never built;
    * ``"gibbs"`` (given ``discounts`` ``μγ^{t−1}``): the Gibbs form
      ``π^G_t(v|x) ∝ π(v|x) e^{μγ^{t−1} 1[v ∈ R]}`` [Thm 20]: the policy's sum minus
      ``log(π(R^c|x) + π(R|x) e^{μγ^{t−1}})``, the normaliser on the tokens outside ``R``.
    """
    no_recovery = masked_log_expectation(mask)
    zero = jnp.zeros_like(engine.log_prob[-1])  # log N_T = 0, in the layout of the final states
    names, reductions, values, extra = ["policy"], [no_recovery], (), ()
    if log_z is not None:
        values = (log_z,)

        def standard(kernel, child, step):
            z_parent, z_child = step.pairs[0]
            # a state of weight zero keeps the policy's own conditionals (toysim._equilibrium.reweight)
            dead = jnp.isneginf(z_parent)
            tilted = no_recovery(kernel, child + z_child, step) - jnp.where(dead, 0.0, z_parent)
            return jnp.where(dead, no_recovery(kernel, child, step), tilted)

        names.append("standard")
        reductions.append(standard)
    if discounts is not None:
        extra = (discounts,)

        def gibbs(kernel, child, step):
            inside, outside = log_recovery(kernel, mask)
            return no_recovery(kernel, child, step) - jnp.logaddexp(outside, inside + step.extra[0])

        names.append("gibbs")
        reductions.append(gibbs)
    passes = engine.backward(tuple(zero for _ in names), tuple(reductions), values, extra)

    def curve(log_n):
        return engine.sum_states(jax.tree_util.tree_map(lambda q, n: jnp.exp(q + n), log_q, log_n[:-1]))

    return {name: curve(log_n) for name, log_n in zip(names, passes)}


@jax.jit
def log_no_recovery(levels: Levels, mask: np.ndarray) -> tuple[Array, ...]:
    """``log P(no recovery token in positions t+1..T | p)`` at every prefix ``p`` of length ``t``
    (the backward pass of :func:`attack_curves` on the tree).

    Returns:
      ``T + 1`` arrays, entry ``t`` of shape ``(V**t,)``.
    """
    return levels.backward((jnp.zeros_like(levels.log_prefix[-1]),), (masked_log_expectation(mask),))[0]


@jax.jit
def attack_success(levels: Levels, spec: RecoverySpec) -> Float[Array, " T"]:
    """Prefilling-attack success at depth ``k``: ``E_{p ~ Q_k}[P_θ(no recovery token after p)]``
    of the tree's policy (:func:`attack_curves`), for ``k = 0..T−1``."""
    return attack_curves(levels, spec.mask, _log_q(spec))["policy"]


@_aot.program()
def standard_optimum(base: Levels, h: Float[Array, " leaves"], lam: float) -> Levels:
    """The standard-aligned optimum ``π* ∝ π_0 e^{−λh}`` (``toysim.tilt``)."""
    return tilt(base, jnp.asarray(h), lam).levels


# --------------------------------------------------------------------------- data augmentation


@functools.partial(jax.jit, static_argnames=("num_samples", "cross_entropy"))
def augmentation_samples(
    key: jax.Array, levels: Levels, spec: RecoverySpec, num_samples: int, cross_entropy: bool = False
) -> Array:
    """Monte-Carlo samples of the recovery term by Qi et al.'s augmentation recipe (docs/theory.md §9).

    Each sample draws a harmful response prefix ``y ~ Q`` (its first ``T − 1`` tokens, from
    ``Q_{T−1}``), a uniform prefix length ``t − 1`` with ``t ~ U{1..T}``, and scores the
    recovery target after ``y_<t``: ``T · μγ^{t−1} · (1 − π(R | y_<t))``. Its mean is exactly the
    recovery term (``Q``'s marginals are consistent across lengths). With ``cross_entropy`` the
    score is ``T · μγ^{t−1} · (−log π(R | y_<t))``, the cross-entropy of augmentation's training
    data, whose mean is the recovery part of :func:`toysim.augmentation_loss` (docs/theory.md §11).

    Args:
      key: a ``jax.random`` key.
      num_samples: ``N >= 1``.
      cross_entropy: score by cross-entropy instead of ``1 − π(R | y_<t)``.

    Returns:
      ``(N,)`` samples.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    T, V = spec.horizon, spec.vocab_size
    k_resp, k_len = jax.random.split(key)
    q_last = jnp.asarray(spec.q_prefix[-1])
    response = jax.random.categorical(k_resp, jnp.log(q_last), shape=(num_samples,))
    t = jax.random.randint(k_len, (num_samples,), 1, T + 1)
    prefix = response // V ** (T - t)  # index of y_<t among prefixes of length t − 1
    inside, outside = log_recovery_probability(levels, spec.mask)
    score = [-x for x in inside] if cross_entropy else [jnp.exp(x) for x in outside]
    values = jnp.zeros(num_samples)
    for s in range(1, T + 1):
        picked = score[s - 1][jnp.where(t == s, prefix, 0)]
        values = jnp.where(t == s, T * spec.discounts[s - 1] * picked, values)
    return values


def augmentation_variance(levels: Levels, spec: RecoverySpec) -> float:
    """Exact variance of one :func:`augmentation_samples` draw (for a concentration bound)."""
    _, outside = log_recovery_probability(levels, spec.mask)
    T = spec.horizon
    terms = zip(spec.q_prefix, spec.discounts, (np.exp(np.asarray(x)) for x in outside))
    second = sum(float(np.sum(np.asarray(q) * (T * d * o) ** 2)) / T for q, d, o in terms)
    mean = float(recovery_penalty(levels, spec))
    return max(second - mean**2, 0.0)


# --------------------------------------------------------------------------- report
