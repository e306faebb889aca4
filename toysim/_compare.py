"""Alignment methods side by side on one instance, exactly (``toysim objectives``; docs/theory.md §11).

:func:`compare_methods` takes an instance (its policy is ``π_0``) and, for each method, the policy
the method converges to and what it does:

* **over all policies** (a tabular policy can represent any policy of full support): the closed
  form where there is one (the reweightings of :mod:`toysim._methods`, the token-wise optimum, SFT
  without a KL term), else the tabular optimum trained from ``π_0`` by the one training loop
  (:func:`toysim.train_objective`) with its certificate;
* **in the instance's own family** (Markov, MLP) when it is not tabular: the method's loss trained
  from ``θ_0`` in that family (rejection sampling and best-of-N: the forward-KL fit of their target,
  which is SFT on the filtered samples).

For each: ``E_π[h]``, ``KL(π ‖ π_0)`` and its profile ``D_t``, the prefilling-attack curve ``A(k)``
(with recovery tokens), the **depth** (:func:`attack_depth`) and the KL of the KL–harm frontier at
the method's ``E_π[h]`` (:func:`frontier_kl`). The closed-form reweightings run on either engine;
on the Markov × automaton product (any horizon) they are the only methods.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._dp import ProductEngine, automaton_arrays, check_markov
from ._enumerate import Levels, forward
from ._equilibrium import reweight
from ._gradient import tree_sq_norm
from ._harms import AutomatonHarm, harm_values
from ._martingale import harm_martingale
from ._memory import available_bytes, check_fits, dp_check_fits, refuse_unless_fits
from ._methods import (
    best_of_n_kl_bound,
    best_of_n_log_weights,
    check_count,
    check_positive,
    check_token_betas,
    dpo_log_weights,
    harm_levels,
    ipo_log_weights,
    rejection_log_weights,
    reweighted_levels,
    reweighting,
    token_wise_optimum,
)
from ._objectives import (
    augmentation_loss,
    augmentation_term,
    dpo_loss,
    harm_expectation,
    ipo_loss,
    kl_by_position,
    per_token_penalty_gap,
    recovery_objective,
    sft_loss,
    standard_loss,
    token_wise_loss,
)
from ._policies import MarkovPolicy, TabularPolicy
from ._recovery import (
    attack_curves,
    augmentation_samples,
    harmful_log_marginals,
    harmful_prefix_marginals,
    recovery_mask,
    recovery_spec,
)
from ._training import train_objective

METHODS = (
    "tilt",
    "dpo",
    "ipo",
    "sft",
    "rejection_sampling",
    "best_of_n",
    "token_wise_kl",
    "augmentation",
    "recovery_penalty",
)
"""Every method of :func:`compare_methods`, in the order of the report."""

REWEIGHTINGS = ("tilt", "dpo", "ipo", "rejection_sampling", "best_of_n")
"""The methods whose optimum is ``π_0 f(h)`` in closed form: the ones the product engine runs."""

NEEDS_RECOVERY = ("augmentation", "recovery_penalty")

# Bytes per ordered pair of leaves for the DPO/IPO losses and their gradients (about eight float64
# arrays of the pairs' size live at once under reverse-mode autodiff).
BYTES_PER_PAIR = 64


@dataclasses.dataclass(frozen=True)
class MethodSettings:
    """The methods' settings (defaults in brackets).

    Attributes:
      beta: DPO/IPO temperature ``β`` [1].
      beta_r: Bradley–Terry strength ``β_r`` of the harm preferences [``λ β``: DPO's optimum is then
        the instance's tilt].
      n: best-of-N's ``N`` [4].
      threshold: rejection sampling and SFT keep responses with ``h ≤ threshold`` [0].
      sft_kl: SFT's KL weight ``α`` [0: the closed form].
      sft_data: SFT's data distribution ``D`` as ``V**T`` non-negative weights [``π_0`` conditioned
        on ``h ≤ threshold``].
      token_betas: the token-wise constraint's ``β_1..β_T`` [all 1: the tilt].
      recovery: recovery tokens ``R`` [none: no attack curve, depth, augmentation or recovery
        penalty].
      mu, gamma: the recovery weights ``μ``, ``γ`` [1, 1].
      steps: training steps of each trained optimum [200].
    """

    beta: float = 1.0
    beta_r: float | None = None
    n: int = 4
    threshold: float = 0.0
    sft_kl: float = 0.0
    sft_data: Any = None
    token_betas: Any = None
    recovery: Sequence[int] | None = None
    mu: float = 1.0
    gamma: float = 1.0
    steps: int = 200


class MethodOutcome(NamedTuple):
    """What one method's optimum does.

    Attributes:
      expected_harm: ``E_π[h]``.
      kl: ``KL(π ‖ π_0)``.
      kl_by_position: ``D_1..D_T``.
      attack_success: ``A(0..T−1)`` (``None`` without recovery tokens).
      depth: :func:`attack_depth` (``None`` without recovery tokens).
      frontier_kl: the least KL of any policy with the same ``E[h]`` (:func:`frontier_kl`).
      certificate: how the optimum was obtained: ``{"optimum": "closed form", …}`` or a training
        certificate.
      extras: what only this method has: augmentation's exact recovery term at its optimum and
        Qi et al.'s sampled estimate of it (``augmentation_term``, ``sampled_estimate``);
        best-of-N's ``kl_bound`` ``log N − (N−1)/N``; the
        token-wise constraint's ``per_token_penalty`` (at the tilt, the optimum of the sequence-KL
        objective: the norm of the per-token KL penalty's update direction, which is the exact gap
        between the two gradients there, since the sequence objective's gradient is 0).
    """

    expected_harm: float
    kl: float
    kl_by_position: np.ndarray
    attack_success: np.ndarray | None
    depth: int | None
    frontier_kl: float | None
    certificate: dict
    extras: dict = {}


class Comparison(NamedTuple):
    """The result of :func:`compare_methods`.

    Attributes:
      engine: ``"enumerate"`` or ``"dp"``.
      family: the instance's policy family.
      base_expected_harm: ``E_0[h]``.
      base_attack_success: ``A(k)`` of ``π_0`` (``None`` without recovery tokens).
      methods: ``name -> MethodOutcome`` over all policies.
      in_family: ``name -> MethodOutcome`` trained in the instance's family (empty when tabular).
      skipped: ``name -> reason`` for the methods asked for that could not run.
      settings: the settings used (``beta_r`` and ``token_betas`` filled in).
    """

    engine: str
    family: str
    base_expected_harm: float
    base_attack_success: np.ndarray | None
    methods: dict
    in_family: dict
    skipped: dict
    settings: MethodSettings


def attack_depth(curve: Any, base: Any) -> int:
    """Depth: the number of prefill lengths ``k = 0, 1, …`` at which the method still at least halves
    the base policy's attack success, ``min{k : A(k) > A_0(k)/2}`` (``T`` if none).

    A method of depth ``d`` resists (by a factor of two) every prefilling attack shorter than ``d``
    tokens; Qi et al.'s finding is that standard alignment has depth of a few tokens. The reweighting
    methods never reach past the harm horizon: where the harm is determined they keep ``π_0``'s
    conditionals, so ``A(k) = A_0(k)`` there.
    """
    curve, base = np.asarray(curve), np.asarray(base)
    failed = np.flatnonzero(curve > base / 2)
    return int(failed[0]) if failed.size else int(curve.size)


def frontier_kl(
    harm_and_kl: Callable[[float], tuple[float, float]], target: float, levels, probs
) -> float | None:
    """``min {KL(π ‖ π_0) : E_π[h] ≤ target}``: the KL–harm frontier at ``target``.

    The minimiser is a tilt ``π_0 e^{−λh}`` (docs/theory.md §11); ``λ`` is the root of
    ``E_λ[h] = target`` (``E_λ[h]`` decreases in ``λ``), bracketed by doubling and found by the
    Illinois method (regula falsi that keeps the bracket). At the least harm value ``h_min`` the
    frontier is the limit ``λ → ∞``, ``−log P_0(h = h_min)``; below it, ``None`` (no policy).

    Args:
      harm_and_kl: ``λ -> (E_λ[h], KL(π_λ ‖ π_0))`` of the tilt.
      target: the harm level.
      levels, probs: the harm's distinct values and their ``π_0`` probabilities
        (:func:`toysim._methods.harm_levels`).
    """
    probs = probs / probs.sum()
    e0, h_min = float(np.dot(levels, probs)), float(levels[0])
    scale = max(1.0, abs(e0))
    if target >= e0:
        return 0.0
    if target < h_min - 1e-12 * scale:
        return None
    if target <= h_min + 1e-15 * scale:
        return float(-np.log(probs[0]))
    lo, hi = 0.0, 1.0
    f_lo, f_hi = e0 - target, harm_and_kl(hi)[0] - target
    while f_hi > 0 and hi < 1e12:
        lo, f_lo, hi = hi, f_hi, 2.0 * hi
        f_hi = harm_and_kl(hi)[0] - target
    # Illinois (regula falsi keeping a bracket): superlinear, ~10 evaluations instead of ~60 halvings
    lam, kept = hi, None
    for _ in range(100):
        slope = f_hi - f_lo
        lam = hi - f_hi * (hi - lo) / slope if slope != 0 else 0.5 * (lo + hi)
        if not lo < lam < hi:  # also a NaN step: fall back to halving
            lam = 0.5 * (lo + hi)
        f_mid = harm_and_kl(lam)[0] - target
        if abs(f_mid) <= 1e-16 * scale or hi - lo <= 4e-16 * hi:
            break
        if f_mid > 0:
            lo, f_lo = lam, f_mid
            f_hi = f_hi / 2 if kept == "hi" else f_hi
            kept = "hi"
        else:
            hi, f_hi = lam, f_mid
            f_lo = f_lo / 2 if kept == "lo" else f_lo
            kept = "lo"
    return float(harm_and_kl(lam)[1])


# ------------------------------------------------------------------------------ shared pieces


def _outcome(harm, kl, kls, curve, base_curve, frontier, certificate) -> MethodOutcome:
    curve_np = None if curve is None else np.asarray(curve, dtype=np.float64)
    depth = None if curve is None else attack_depth(curve_np, base_curve)
    return MethodOutcome(
        float(harm), float(kl), np.asarray(kls, dtype=np.float64), curve_np, depth, frontier, certificate
    )


@jax.jit
def _levels_summary(levels: Levels, base: Levels, h, mask, log_q):
    kls = kl_by_position(levels, base)
    curve = None if mask is None else attack_curves(levels, mask, log_q)["policy"]
    return harm_expectation(levels, h), jnp.sum(kls), kls, curve


_tree_reweighting = jax.jit(reweighting)


@functools.partial(jax.jit, static_argnames=("horizon", "unroll"))
def _dp_reweighting(logits, aut, horizon: int, unroll: int, log_weight, mask):
    engine = ProductEngine.markov(logits, aut, horizon, unroll)
    log_q = None
    if mask is not None:
        log_q, _ = harmful_log_marginals(engine, harm_martingale(engine, aut.final_harm))
    return reweighting(engine, log_weight, aut.final_harm, mask, log_q)


@functools.partial(jax.jit, static_argnames=("horizon",))
def _dp_final_log_prob(logits, aut, horizon: int):
    return ProductEngine.markov(logits, aut, horizon).log_prob[-1]


@functools.partial(jax.jit, static_argnames=("loss",))
def _tabular_grad(loss: Callable, log_cond: tuple, *args):
    policy = TabularPolicy(log_cond[0].shape[-1], len(log_cond))
    return jax.grad(lambda z: loss(forward(policy, z), *args))(log_cond)


def _tabular_grad_norm(loss: Callable, levels: Levels, args: tuple) -> float:
    """``‖∇ loss‖`` over tabular logits at ``levels`` (a closed form's optimality residual)."""
    grad = _tabular_grad(loss, tuple(levels.log_cond), *args)
    return float(jnp.sqrt(tree_sq_norm(grad)))


@jax.jit
def _per_token_penalty_norms(base: Levels, h, lam):
    policy = TabularPolicy(base.vocab_size, base.horizon)
    star = tuple(reweight(base, -lam * h).levels.log_cond)

    def objective(z):
        return lam * harm_expectation(forward(policy, z), h)

    harm_grad = jax.grad(objective)(star)
    seq, tok = per_token_penalty_gap(lambda z: forward(policy, z), star, base)

    def norm(tree):
        return jnp.sqrt(tree_sq_norm(tree))

    sequence = jax.tree_util.tree_map(jnp.add, harm_grad, seq)
    per_token = jax.tree_util.tree_map(jnp.add, harm_grad, tok)
    gap = jax.tree_util.tree_map(jnp.subtract, seq, tok)
    return norm(sequence), norm(per_token), norm(gap)


def _per_token_penalty_at_tilt(base: Levels, h, lam: float) -> dict:
    """At the tilt (tabular logits), ``‖∇(λE[h] + KL)‖`` (0: its optimum), the norm of the update
    of ``λE[h]`` plus the per-token KL penalty, and the norm of their difference."""
    sequence, per_token, gap = (float(x) for x in _per_token_penalty_norms(base, h, jnp.float64(lam)))
    return {"sequence_kl_grad_norm": sequence, "per_token_update_norm": per_token, "gap_norm": gap}


AUGMENTATION_SAMPLES = 1000
AUGMENTATION_SEED = 0


def _augmentation_estimate(levels: Levels, spec) -> dict:
    """The recovery part of the augmentation loss at ``levels``, exactly and as Qi et al.'s sampled
    estimate (:data:`AUGMENTATION_SAMPLES` draws, seed :data:`AUGMENTATION_SEED`: deterministic)."""
    exact = float(augmentation_term(levels, spec))
    draws = np.asarray(
        augmentation_samples(
            jax.random.key(AUGMENTATION_SEED), levels, spec, AUGMENTATION_SAMPLES, cross_entropy=True
        )
    )
    return {
        "augmentation_term": exact,
        "sampled_estimate": {
            "samples": AUGMENTATION_SAMPLES,
            "seed": AUGMENTATION_SEED,
            "mean": float(draws.mean()),
            "standard_error": float(draws.std(ddof=1) / np.sqrt(draws.size)),
        },
    }


def _check_pairs(n_leaves: int, what: str) -> None:
    refuse_unless_fits(
        float(n_leaves) ** 2 * BYTES_PER_PAIR,
        f"{what} over all {n_leaves}**2 pairs of responses",
        "use a smaller vocabulary or horizon, or leave dpo and ipo out (--only)",
    )


def _check_pair_hessian(n_leaves: int, params, what: str) -> None:
    """The certificate's explicit Hessian of a pair loss: one pass over the pairs per parameter."""
    n_params = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(params))
    refuse_unless_fits(
        float(n_leaves) ** 2 * BYTES_PER_PAIR * n_params / 4,
        f"the certified {what} fit in the instance's family ({n_params} parameters, {n_leaves}**2 pairs)",
        "use a smaller vocabulary or horizon, or leave dpo and ipo out (--only)",
    )


def _pairs_fit(n_leaves: int) -> bool:
    return float(n_leaves) ** 2 * BYTES_PER_PAIR <= 0.5 * available_bytes()


def _settings(settings: MethodSettings, lam: float, horizon: int, leaves: int | None) -> MethodSettings:
    beta = check_positive("beta", settings.beta)
    beta_r = beta * lam if settings.beta_r is None else check_positive("beta_r", settings.beta_r)
    n = check_count("n", settings.n)
    if not math.isfinite(float(settings.threshold)):
        raise ValueError(f"threshold must be finite, got {settings.threshold!r}")
    alpha = float(settings.sft_kl)
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"sft_kl must be a finite number >= 0, got {settings.sft_kl!r}")
    betas = (
        np.ones(horizon) if settings.token_betas is None else check_token_betas(settings.token_betas, horizon)
    )
    data = settings.sft_data
    if data is not None:
        data = check_sft_data(data, leaves)
    steps = check_count("steps", settings.steps)
    return dataclasses.replace(
        settings,
        beta=beta,
        beta_r=beta_r,
        n=n,
        sft_kl=alpha,
        token_betas=tuple(betas),
        sft_data=data,
        steps=steps,
    )


def check_sft_data(data: Any, leaves: int | None) -> np.ndarray:
    """SFT's distribution ``D``: ``V**T`` finite non-negative weights, not all zero (normalised)."""
    try:
        arr = np.asarray(data, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError("sft data must be a list of non-negative numbers, one per response") from None
    if leaves is None:
        raise ValueError("sft data (a distribution over responses) needs the enumeration engine")
    if arr.size != leaves:
        raise ValueError(f"sft data must give one weight per response (V**T = {leaves}), got {arr.size}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError("sft data must be finite and non-negative")
    if not arr.sum() > 0:
        raise ValueError("sft data is empty: every weight is zero")
    return arr / arr.sum()


def _family(policy) -> str:
    return {"TabularPolicy": "tabular", "MarkovPolicy": "markov", "MLPPolicy": "mlp"}.get(
        type(policy).__name__, type(policy).__name__
    )


def _choose_engine(instance, engine: str) -> str:
    if engine not in ("auto", "enumerate", "dp"):
        raise ValueError(f"engine must be 'auto', 'enumerate' or 'dp', got {engine!r}")
    policy = instance.policy
    dp_ok = (
        isinstance(policy, MarkovPolicy) and policy.order == 1 and isinstance(instance.harm, AutomatonHarm)
    )
    if engine == "auto":
        try:
            check_fits(policy.vocab_size, policy.horizon)
            return "enumerate"
        except ValueError:
            if dp_ok:
                return "dp"
            raise
    return engine


def _methods(only: Sequence[str] | None) -> tuple[str, ...]:
    if only is None:
        return METHODS
    names = tuple(only)
    if not names:
        raise ValueError(f"--only must name at least one method among {', '.join(METHODS)}")
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; choose among {', '.join(METHODS)}")
    return tuple(m for m in METHODS if m in names)


# ------------------------------------------------------------------------------ the comparison


def compare_methods(
    instance: Any,
    only: Sequence[str] | None = None,
    settings: MethodSettings = MethodSettings(),
    engine: str = "auto",
) -> Comparison:
    """Every alignment method's optimum on one instance, exactly (docs/theory.md §11).

    Args:
      instance: a :class:`toysim.Instance`; its policy is ``π_0``, its ``λ`` that of the tilt, the
        token-wise constraint, augmentation and the recovery penalty.
      only: the methods to run (default :data:`METHODS`).
      settings: :class:`MethodSettings`.
      engine: ``"enumerate"`` (every method, every family), ``"dp"`` (first-order Markov policy and
        automaton harm, any horizon: the closed-form reweightings only) or ``"auto"`` (enumerate
        where it fits in memory, else the DP).

    Returns:
      :class:`Comparison`.

    Raises:
      ValueError: for a bad setting, an unknown method, or an enumeration or pair set too large for
        memory.

    Example:
      >>> from toysim import Instance, MarkovPolicy, deadline_harm
      >>> policy = MarkovPolicy(2, 3)
      >>> inst = Instance(policy, policy.init(jax.random.key(0)), deadline_harm(2, [1], 1), 1.0)
      >>> out = compare_methods(inst, only=["tilt", "best_of_n"], settings=MethodSettings(recovery=[0]))
      >>> sorted(out.methods), out.methods["tilt"].kl_by_position[1:].tolist()  # determined after t = 1
      (['best_of_n', 'tilt'], [0.0, 0.0])
    """
    names = _methods(only)
    which = _choose_engine(instance, engine)
    policy = instance.policy
    lam = check_positive("lambda", instance.lam)
    leaves = policy.vocab_size**policy.horizon if which == "enumerate" else None
    settings = _settings(settings, lam, policy.horizon, leaves)
    if which == "dp":
        return _compare_dp(instance, names, settings)
    return _compare_tree(instance, names, settings)


def _reweighting_weights(name: str, h: np.ndarray, probs: np.ndarray, lam: float, s: MethodSettings):
    if name == "tilt":
        return -lam * h
    if name == "dpo":
        return dpo_log_weights(h, s.beta, s.beta_r)
    if name == "ipo":
        return ipo_log_weights(h, probs, s.beta, s.beta_r)
    if name == "rejection_sampling":
        return rejection_log_weights(h, probs, s.threshold)
    return best_of_n_log_weights(h, probs, s.n)


def _compare_dp(instance, names: tuple[str, ...], s: MethodSettings) -> Comparison:
    policy, lam = instance.policy, float(instance.lam)
    check_markov(policy)
    aut = automaton_arrays(instance.harm, policy.vocab_size)
    T, V, S = policy.horizon, policy.vocab_size, aut.transitions.shape[0]
    dp_check_fits(V, T, S, autodiff=False)
    logits = jnp.asarray(instance.params.logits, dtype=jnp.float64)
    unroll = 4 if T >= 64 else 1
    mask = None if s.recovery is None else jnp.asarray(recovery_mask(s.recovery, V))
    h = np.asarray(aut.final_harm, dtype=np.float64)
    probs = np.exp(np.asarray(_dp_final_log_prob(logits, aut, T))).sum(axis=0)  # per automaton state
    skipped = {
        m: "the DP engine computes the closed-form reweightings only" for m in names if m not in REWEIGHTINGS
    }

    def run(log_weight):
        return jax.device_get(_dp_reweighting(logits, aut, T, unroll, jnp.asarray(log_weight), mask))

    levels, level_probs = harm_levels(h, probs)
    base = run(np.zeros_like(h))
    _require_harm(base.expected_harm, mask)

    @functools.cache
    def harm_and_kl(lam_):
        r = run(-lam_ * h)
        return float(r.expected_harm), float(r.kl)

    out = {}
    for name in names:
        if name in skipped:
            continue
        r = run(_reweighting_weights(name, h, probs, lam, s))
        frontier = frontier_kl(harm_and_kl, float(r.expected_harm), levels, level_probs)
        out[name] = _outcome(
            r.expected_harm,
            r.kl,
            r.kl_by_position,
            r.attack_success,
            base.base_attack_success,
            frontier,
            {"optimum": "closed form", "engine": "dp"},
        )
    return Comparison(
        "dp", _family(policy), float(base.expected_harm), base.base_attack_success, out, {}, skipped, s
    )


def _require_harm(expected_harm, mask) -> None:
    if mask is not None and not float(expected_harm) > 0:
        raise ValueError("the base policy never harms (E[h] = 0): there is no harmful prefix to prefill")


def _compare_tree(instance, names: tuple[str, ...], s: MethodSettings) -> Comparison:
    policy, params, lam = instance.policy, instance.params, float(instance.lam)
    V, T = policy.vocab_size, policy.horizon
    check_fits(V, T)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    h_np = harm_values(instance.harm, V, T)
    h = jnp.asarray(h_np)
    base = forward(policy, params)
    probs = np.exp(np.asarray(base.log_prefix[-1]))
    levels, level_probs = harm_levels(h_np, probs)
    mart = harm_martingale(base, h)
    e0 = float(mart[0][0])
    mask = log_q = spec = None
    if s.recovery is not None:
        _require_harm(e0, True)
        mask = jnp.asarray(recovery_mask(s.recovery, V))
        log_q, _ = harmful_log_marginals(base, mart)
        spec = recovery_spec(V, s.recovery, harmful_prefix_marginals(base, h), mu=s.mu, gamma=s.gamma)
    skipped = {m: "needs recovery tokens (--recovery)" for m in names if m in NEEDS_RECOVERY and spec is None}
    for m in ("dpo", "ipo"):
        if m in names and not _pairs_fit(V**T):
            _check_pairs(V**T, m)
    betas = jnp.asarray(s.token_betas)
    base_curve = None if mask is None else np.asarray(attack_curves(base, mask, log_q)["policy"])

    @functools.cache
    def harm_and_kl(lam_):
        r = _tree_reweighting(base, jnp.asarray(-lam_ * h_np), h)
        return float(r.expected_harm), float(r.kl)

    def frontier(harm):
        return frontier_kl(harm_and_kl, float(harm), levels, level_probs)

    def summarize(levels_, certificate):
        harm, kl, kls, curve = jax.device_get(_levels_summary(levels_, base, h, mask, log_q))
        return _outcome(harm, kl, kls, curve, base_curve, frontier(harm), certificate)

    tabular = TabularPolicy(V, T)
    # the sft data D: given, or π_0 conditioned on h <= threshold
    if "sft" in names or (
        not isinstance(policy, TabularPolicy) and {"rejection_sampling", "best_of_n"} & set(names)
    ):
        data = s.sft_data
        if data is None:
            keep = rejection_log_weights(h_np, probs, s.threshold)
            data = probs * np.exp(keep)
            data = data / data.sum()
    losses: dict[str, tuple[Callable, tuple]] = {
        "tilt": (standard_loss, (base, h, lam)),
        "dpo": (dpo_loss, (base, h, s.beta, s.beta_r)),
        "ipo": (ipo_loss, (base, h, s.beta, s.beta_r)),
        "token_wise_kl": (token_wise_loss, (base, h, lam, betas)),
    }
    if "sft" in names:
        losses["sft"] = (sft_loss, (base, jnp.asarray(data), s.sft_kl))
    if spec is not None:
        losses["augmentation"] = (augmentation_loss, (base, h, lam, spec))
        losses["recovery_penalty"] = (recovery_objective, (base, h, lam, spec))

    methods, in_family, targets = {}, {}, {}
    for name in names:
        if name in skipped:
            continue
        if name in REWEIGHTINGS:
            log_w = _reweighting_weights(name, h_np, probs, lam, s)
            r = jax.device_get(_tree_reweighting(base, jnp.asarray(log_w), h, mask, log_q))
            certificate: dict = {"optimum": "closed form", "engine": "enumerate"}
            if name in losses and (name not in ("dpo", "ipo") or _pairs_fit(V**T)):
                loss, args = losses[name]
                certificate["grad_norm"] = _tabular_grad_norm(
                    loss, reweighted_levels(base, jnp.asarray(log_w)), args
                )
            targets[name] = probs * np.exp(np.asarray(log_w, dtype=np.float64))
            extras = {"kl_bound": best_of_n_kl_bound(s.n)} if name == "best_of_n" else {}
            methods[name] = _outcome(
                r.expected_harm,
                r.kl,
                r.kl_by_position,
                r.attack_success,
                base_curve,
                frontier(r.expected_harm),
                certificate,
            )._replace(extras=extras)
        elif name == "token_wise_kl":
            star = token_wise_optimum(base, h, lam, betas)
            loss, args = losses[name]
            certificate = {
                "optimum": "closed form",
                "engine": "enumerate",
                "grad_norm": _tabular_grad_norm(loss, star, args),
            }
            methods[name] = summarize(star, certificate)._replace(
                extras={"per_token_penalty": _per_token_penalty_at_tilt(base, h, lam)}
            )
        elif name == "sft" and s.sft_kl == 0:
            with np.errstate(divide="ignore"):
                log_w = np.log(np.asarray(data)) - np.log(probs)
            methods[name] = summarize(
                reweighted_levels(base, jnp.asarray(log_w)), {"optimum": "closed form", "engine": "enumerate"}
            )
        else:
            loss, args = losses[name]
            res = train_objective(tabular, tuple(base.log_cond), loss, args, steps=s.steps)
            trained = forward(tabular, res.params)
            methods[name] = summarize(trained, res.certificate.to_dict())
            if name == "augmentation":
                methods[name] = methods[name]._replace(extras=_augmentation_estimate(trained, spec))
        if not isinstance(policy, TabularPolicy):
            if name in ("rejection_sampling", "best_of_n"):
                target = targets[name] / targets[name].sum()
                loss, args = sft_loss, (base, jnp.asarray(target), 0.0)
            else:
                loss, args = losses[name]
            if name in ("dpo", "ipo"):
                _check_pair_hessian(V**T, params, name)
            res = train_objective(policy, params, loss, args, steps=s.steps)
            in_family[name] = summarize(forward(policy, res.params), res.certificate.to_dict())
    return Comparison("enumerate", _family(policy), e0, base_curve, methods, in_family, skipped, s)
