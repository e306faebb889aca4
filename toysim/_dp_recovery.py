"""Recovery penalties in the automaton DP engine (docs/theory.md §8-9 at long horizons).

The recovery penalty of a first-order Markov policy [Def 16] needs ``Q`` only through its
marginals on the DP's product states ``x = (c, s)`` (last token, automaton state):

    μ Σ_t γ^{t−1} E_{y~Q}[1 − π_θ(R | y_<t)] = μ Σ_t γ^{t−1} Σ_{c,s} Q_{t−1}(c, s) π_θ(R^c | c),

because ``π_θ(R | y_<t)`` depends on the prefix only through its last token ``c``. Two families of
``Q`` have exact state marginals, computed in log space:

* ``Q = π_0`` conditioned on harm: ``Q_t(c, s) = P_t(c, s) H_t(c, s) / E[h]``
  (:func:`dp_harmful_q`), since ``Σ_{p → (c, s)} P(p) H(p) = P_t(c, s) H_t(c, s)``;
* ``Q`` = another (e.g. jailbroken) first-order Markov policy: its state law ``P^J_t(c, s)``
  (:func:`dp_policy_q`).

From these, at cost ``O(T (V + 1) S V)`` and memory linear in ``T``:

* the penalty, and its per-position gradient in closed form,
  ``G̃_t[c] = −μγ^{t−1} q_{t−1}(c) π(·|c) ⊙ (1_R − π(R|c))`` with ``q_{t−1}(c) = Σ_s Q_{t−1}(c, s)``,
  checked against reverse-mode autodiff (untied per position and shared);
* per-position norms of ``λ G_t``, ``G̃_t`` and of the deep objective's gradient ``λ G_t + G̃_t``
  at ``θ = θ_0`` (the KL term's gradient vanishes there);
* the prefilling-attack curve ``E_{(c, s) ~ Q_k}[P(no recovery token after the prefix)]`` for
  ``k = 0..T−1`` [docs/theory.md §9], by a masked log-space backward pass, for the base policy, the
  standard-aligned equilibrium (the time-dependent tilt, rebuilt per step from ``log Z``) and the
  Gibbs-form policy ``π^G_t(v | c) ∝ π_0(v | c) e^{μγ^{t−1} 1[v ∈ R]}`` [Thm 20];
* ``p_min``, the robustness bound [Thm 22] and the attack length [Cor 23].

The Gibbs-form policy is the exact optimum of the separable objective with ``λ = 0``, and its
recovery probabilities are exact for any ``λ`` past the harm horizon (docs/theory.md §8). The trained joint
optimum of :func:`toysim.deep_report` is not computed here: it would need an optimiser over the
``(V + 1) V`` logits per position, not a closed form.
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

from ._dp import (
    Automaton,
    _backward_passes,
    _children,
    _covariance_terms,
    _forward_log_probs,
    _markov_log_cond,
    _uniform_horizon,
    automaton_arrays,
    check_markov,
    dp_estimate_bytes,
    dp_reachable,
)
from ._recovery import (
    _check_weights,
    attack_length,
    check_attack_setting,
    guaranteed_recovery,
    logit_of_log,
    recovery_mask,
    sigmoid,
)

# Positions per batch of the per-position reductions: keeps the live (batch, V + 1, V) arrays small
# (0.5 MB per array at V = 64) while amortising the loop overhead.
_BATCH = 128


class DPRecoverySpec(NamedTuple):
    """The recovery penalty's data on the DP's product states [Def 16].

    Attributes:
      mask: boolean ``(V,)``, ``True`` on the recovery tokens ``R``.
      log_q: ``(T, V + 1, S)``: ``log Q_t(c, s)`` for prefix lengths ``t = 0..T−1``.
      mu: ``μ > 0``.
      gamma: ``γ ∈ (0, 1]``.
    """

    mask: np.ndarray
    log_q: Array
    mu: float
    gamma: float

    @property
    def discounts(self) -> np.ndarray:
        """``μ γ^{t−1}`` for ``t = 1..T``."""
        return self.mu * self.gamma ** np.arange(self.log_q.shape[0], dtype=np.float64)


def _pi(logits: Array) -> Float[Array, "V1 V"]:
    return jnp.exp(_markov_log_cond(logits)[:, 0, :])


def _harmful_from(hs: Array, log_p: Array, start: Array) -> tuple[Array, Array]:
    """``(log Q_t, E[h])`` of ``Q = π_0`` conditioned on harm, from ``H_t`` and ``log P_t``."""
    total = hs[0, -1, start]
    positive = hs[:-1] > 0
    log_h = jnp.where(positive, jnp.log(jnp.where(positive, hs[:-1], 1.0)), -jnp.inf)
    return log_p[:-1] + log_h - jnp.log(total), total


@functools.partial(jax.jit, static_argnames=("horizon",))
def _harmful_log_q(logits: Array, aut: Automaton, horizon: int) -> tuple[Array, Array]:
    pi = _pi(logits)
    hs, _, _ = _backward_passes(pi, aut, horizon, 0.0, 1)
    return _harmful_from(hs, _forward_log_probs(pi, aut, horizon, 1), aut.start)


def dp_harmful_q(logits: Float[Array, "V1 V"], aut: Automaton, horizon: int) -> Float[Array, "T V1 S"]:
    """``log Q_t(c, s)`` of ``Q = π_0`` conditioned on harm, ``Q(y) ∝ π_0(y) h(y)``.

    ``Q_t(c, s) = P_t(c, s) H_t(c, s) / E[h]`` for ``t = 0..T−1``.

    Raises:
      ValueError: if ``E_0[h] = 0`` (``Q`` has no mass).
    """
    log_q, total = _harmful_log_q(jnp.asarray(logits), aut, horizon)
    if not float(total) > 0:
        raise ValueError("q = harmful (π_0 conditioned on harm) has no mass: E_0[h] = 0")
    return log_q


def dp_policy_q(logits: Float[Array, "V1 V"], aut: Automaton, horizon: int) -> Float[Array, "T V1 S"]:
    """``log Q_t(c, s)`` of ``Q`` = the first-order Markov policy with these logits (a jailbroken one)."""
    return _forward_log_probs(_pi(jnp.asarray(logits)), aut, horizon, 1)[:-1]


def dp_recovery_spec(
    vocab_size: int, recovery: Sequence[int], log_q: Array, mu: float = 1.0, gamma: float = 1.0
) -> DPRecoverySpec:
    """Validate and bundle the DP recovery data (``R`` a non-empty proper subset, ``μ > 0``,
    ``γ ∈ (0, 1]``, ``log_q`` of shape ``(T, V + 1, S)``)."""
    mu, gamma = _check_weights(mu, gamma)
    mask = recovery_mask(recovery, vocab_size)
    log_q = jnp.asarray(log_q, dtype=jnp.float64)
    if log_q.ndim != 3 or log_q.shape[1] != vocab_size + 1:
        raise ValueError(f"q state marginals must have shape (T, {vocab_size + 1}, S), got {log_q.shape}")
    return DPRecoverySpec(mask, log_q, mu, gamma)


# ---------------------------------------------------------------------------------------------
# The penalty and its gradient.


def _row_recovery(logits: Array, mask: Array) -> tuple[Array, Array]:
    """``log π(R | c)`` and ``log π(R^c | c)`` per logit row (the complement summed directly)."""
    lc = jax.nn.log_softmax(logits, axis=-1)
    inside = jax.nn.logsumexp(jnp.where(mask, lc, -jnp.inf), axis=-1)
    outside = jax.nn.logsumexp(jnp.where(mask, -jnp.inf, lc), axis=-1)
    return inside, outside


def _token_q(log_q: Array) -> Array:
    """``q_t(c) = Σ_s Q_t(c, s)``, ``(T, V + 1)``."""
    return jnp.exp(jax.nn.logsumexp(log_q, axis=-1))


@jax.jit
def dp_recovery_penalty(logits: Float[Array, "V1 V"], mask: Array, log_q: Array, discounts: Array) -> Array:
    """``μ Σ_t γ^{t−1} Σ_c q_{t−1}(c) π(R^c | c)`` [Def 16], differentiable in ``logits``."""
    _, outside = _row_recovery(logits, mask)
    return jnp.sum(discounts * (_token_q(log_q) @ jnp.exp(outside)))


def _recovery_direction(pi: Array, mask: Array) -> Array:
    """``∇_{θ_c} π(R | c) = π(·|c) ⊙ (1_R − π(R|c))`` for every row ``c``, ``(V + 1, V)``."""
    p_r = jnp.sum(jnp.where(mask, pi, 0.0), axis=-1, keepdims=True)
    return pi * (mask.astype(pi.dtype) - p_r)


def _recovery_jacobian(logits: Array, mask: Array) -> Array:
    """``∂π(R^c | c)/∂θ_c`` for every row ``c`` by reverse mode, ``(V + 1, V)`` (the reference).

    ``π(R^c | c)`` depends only on row ``c`` of the logits, so one vector–Jacobian product with
    the all-ones cotangent returns every row's gradient at once.
    """
    _, vjp = jax.vjp(lambda theta: jnp.exp(_row_recovery(theta, mask)[1]), logits)
    return vjp(jnp.ones(logits.shape[0], logits.dtype))[0]


class DPRecoveryGradients(NamedTuple):
    """Per-position gradient norms at ``θ_0`` (all ``(T,)``) and the autodiff agreement.

    Attributes:
      plain_harm: ``‖λ G_t‖`` (the standard objective's harm term, covariance form).
      recovery_closed_form: ``‖G̃_t‖``, ``G̃_t = −μγ^{t−1} E_Q[∇π(R | y_<t)]``.
      recovery_autodiff: ``‖∂P/∂θ_t‖`` of the penalty ``P`` untied per position, by reverse mode.
      deep: ``‖λ G_t + G̃_t‖``, the deep objective's gradient at ``θ_0``.
      recovery_autodiff_max_abs_error: the largest entry of ``|G̃_t − ∂P/∂θ_t|`` over positions,
        and of ``|Σ_t G̃_t − ∇_θ P|`` with ``∇_θ P`` by reverse mode through the shared logits.
    """

    plain_harm: Array
    recovery_closed_form: Array
    recovery_autodiff: Array
    deep: Array
    recovery_autodiff_max_abs_error: Array


def _gradients_from(
    logits: Array, aut: Automaton, lam, mask: Array, log_q: Array, discounts: Array, hs: Array, log_p: Array
) -> DPRecoveryGradients:
    """:func:`dp_recovery_gradients` given ``H_t`` and ``log P_t`` of ``π_0``.

    The autodiff side: position ``t``'s penalty term ``μγ^{t−1} Σ_c q_{t−1}(c) π_θt(R^c | c)`` is
    linear in its weights, so its untied reverse-mode gradient is the row Jacobian of
    :func:`_recovery_jacobian` scaled by ``μγ^{t−1} q_{t−1}(c)``; the ``Q``-weighting itself is
    checked by ``jax.grad`` of the whole penalty through the shared logits.
    """
    pi = jnp.exp(jax.nn.log_softmax(logits, axis=-1))
    direction = _recovery_direction(pi, mask)  # ∇_{θ_c} π(R | c)
    jac = _recovery_jacobian(logits, mask)  # ∇_{θ_c} π(R^c | c) by autodiff, = −direction
    w = discounts[:, None] * _token_q(log_q)  # (T, V + 1): μγ^{t−1} q_{t−1}(c)
    dir_sq = jnp.sum(direction**2, axis=-1)
    closed = jnp.sqrt(w**2 @ dir_sq)
    auto = jnp.sqrt(w**2 @ jnp.sum(jac**2, axis=-1))
    per_row = jnp.max(jnp.abs(jac + direction), axis=-1)  # |G̃_t − ∂P/∂θ_t| = w_c |−u_c − J_c|
    err_untied = jnp.max(jnp.abs(w) * per_row[None, :])
    trans = aut.transitions

    def one(x):
        lp, h_tm1, h_t, w_t = x
        _, g = _covariance_terms(pi, lp, h_tm1, _children(h_t, trans))
        g = lam * g
        return jnp.sqrt(jnp.sum(g**2)), jnp.sqrt(jnp.sum((g - w_t[:, None] * direction) ** 2))

    plain, deep = jax.lax.map(one, (log_p[:-1], hs[:-1], hs[1:], w), batch_size=_BATCH)
    total = -jnp.sum(w, axis=0)[:, None] * direction
    shared = jax.grad(dp_recovery_penalty)(logits, mask, log_q, discounts)
    error = jnp.maximum(err_untied, jnp.max(jnp.abs(total - shared)))
    return DPRecoveryGradients(plain, closed, auto, deep, error)


@functools.partial(jax.jit, static_argnames=("horizon",))
def dp_recovery_gradients(
    logits: Float[Array, "V1 V"],
    aut: Automaton,
    lam,
    mask: Array,
    log_q: Array,
    discounts: Array,
    horizon: int,
) -> DPRecoveryGradients:
    """Per-position gradients of the harm and recovery terms at ``θ_0`` (docs/theory.md §8).

    ``G_t`` is the covariance form of the DP engine; ``G̃_t[c] = −μγ^{t−1} q_{t−1}(c) π(·|c) ⊙
    (1_R − π(R|c))``. Positions are reduced in batches of ``_BATCH``, so nothing of size
    ``(T, V + 1, V)`` is held.
    """
    pi = _pi(logits)
    hs, _, _ = _backward_passes(pi, aut, horizon, lam, 1)
    return _gradients_from(
        logits, aut, lam, mask, log_q, discounts, hs, _forward_log_probs(pi, aut, horizon, 1)
    )


# ---------------------------------------------------------------------------------------------
# Prefilling attacks.


def _masked_lse(pi_out: Array, b: Float[Array, "K V"], mask: Array) -> Float[Array, "V1 K"]:
    """``log Σ_{v ∉ R} π(v|c) e^{b[k, v]}`` for every row ``c`` and every ``k`` (a matmul).

    ``pi_out`` is ``π(v|c)`` with the recovery columns zeroed. Shifted by the largest ``b[k, v]``
    over the tokens outside ``R`` (the only ones summed), so no ``k`` underflows; ``−inf`` where
    every term is zero.
    """
    outside = jnp.where(mask, -jnp.inf, b)  # recovery columns out before exp: no inf · 0
    top = jnp.max(outside, axis=-1)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    return top[None, :] + jnp.log(pi_out @ jnp.exp(outside - top[:, None]).T)


class DPAttack(NamedTuple):
    """Prefilling-attack success at depth ``k = 0..T−1`` (each ``(T,)``) [docs/theory.md §9]."""

    base: Array
    standard: Array
    gibbs: Array


def _attack_from(
    logits: Array, aut: Automaton, log_z: Array, mask: Array, log_q: Array, discounts: Array, horizon: int
) -> DPAttack:
    """:func:`dp_attack_success` given ``log Z_t`` of the tilt.

    One backward scan carries ``log N_t(c, s)``, the log-probability of no recovery token in
    positions ``t+1..T`` from state ``(c, s)``, of the three policies (``log N_T = 0``):

    * base: ``log N_{t−1}(c, s) = log Σ_{v ∉ R} π_0(v|c) N_t(v, δ(s, v))``;
    * standard (the tilt): ``log Σ_{v ∉ R} π_0(v|c) Z_t(v, δ(s, v)) N*_t(v, δ(s, v)) − log Z_{t−1}(c, s)``;
    * gibbs: the base sum of ``N^G_t`` minus ``log(π_0(R^c|c) + π_0(R|c) e^{μγ^{t−1}})``, the
      normaliser of ``π^G_t(·|c)`` on the tokens outside ``R``.

    All three are one ``(V + 1, V) @ (V, 3S)`` product per position.
    """
    trans = aut.transitions
    n_states = trans.shape[0]
    lc = jax.nn.log_softmax(logits, axis=-1)
    pi_out = jnp.where(mask, 0.0, jnp.exp(lc))
    inside, outside = _row_recovery(logits, mask)
    shape = (logits.shape[0], n_states)
    zero = jnp.zeros(shape)

    def step(carry, x):
        n_base, n_std, n_gibbs = carry
        z_tm1, z_t, d_t = x
        b = jnp.concatenate(
            [
                _children(n_base, trans),
                _children(z_t, trans) + _children(n_std, trans),
                _children(n_gibbs, trans),
            ]
        )  # (3S, V)
        out = _masked_lse(pi_out, b, mask)
        norm = jnp.logaddexp(outside, inside + d_t)[:, None]
        nxt = (out[:, :n_states], out[:, n_states : 2 * n_states] - z_tm1, out[:, 2 * n_states :] - norm)
        return nxt, nxt

    _, rest = jax.lax.scan(step, (zero, zero, zero), (log_z[:-1], log_z[1:], discounts), reverse=True)

    def curve(log_n):
        return jnp.sum(jnp.exp(log_q + log_n), axis=(1, 2))  # Σ_{c,s} Q_k(c, s) N_k(c, s), k < T

    return DPAttack(*(curve(n) for n in rest))


@functools.partial(jax.jit, static_argnames=("horizon",))
def dp_attack_success(
    logits: Float[Array, "V1 V"],
    aut: Automaton,
    lam,
    mask: Array,
    log_q: Array,
    discounts: Array,
    horizon: int,
) -> DPAttack:
    """Attack success ``E_{(c,s)~Q_k}[P(no recovery token after the prefix)]`` of three policies.

    * base: ``π_0`` (homogeneous);
    * standard: the tilt ``π*_t(v|c, s) = π_0(v|c) Z_t(v, δ(s, v)) / Z_{t−1}(c, s)`` (docs/theory.md §7),
      rebuilt per step from ``log Z`` so that the ``(T, V+1, S, V)`` chain is never stored;
    * gibbs: ``π^G_t(v|c) ∝ π_0(v|c) e^{μγ^{t−1} 1[v ∈ R]}`` [Thm 20].
    """
    _, log_z, _ = _backward_passes(_pi(logits), aut, horizon, lam, 1)
    return _attack_from(logits, aut, log_z, mask, log_q, discounts, horizon)


class DPDeep(NamedTuple):
    """Everything :func:`dp_deep_report` reads, from one compiled program.

    Attributes:
      log_q: ``log Q_t(c, s)``, ``(T, V + 1, S)``.
      log_p: ``log P_t(c, s)`` of ``π_0``, ``(T + 1, V + 1, S)``.
      penalty: the recovery term at ``θ_0``.
      gradients: :class:`DPRecoveryGradients`.
      attack: :class:`DPAttack`.
      q_mass: ``E_0[h]`` for ``Q`` = harmful (must be > 0), else 1.
      uniform_horizon: ``k`` (docs/theory.md §5).
    """

    log_q: Array
    log_p: Array
    penalty: Array
    gradients: DPRecoveryGradients
    attack: DPAttack
    q_mass: Array
    uniform_horizon: Array


@functools.partial(jax.jit, static_argnames=("horizon",))
def dp_deep_arrays(
    logits: Float[Array, "V1 V"],
    aut: Automaton,
    lam,
    mask: Array,
    discounts: Array,
    horizon: int,
    q_logits: Array | None = None,
) -> DPDeep:
    """The recovery quantities of docs/theory.md §8-9 in one pass over ``H``, ``log P`` and ``log Z``.

    Args:
      logits: ``π_0``'s ``(V + 1, V)`` logit table.
      aut: the harm automaton.
      lam: ``λ`` of the standard objective and its tilt.
      mask: ``(V,)`` recovery tokens.
      discounts: ``μγ^{t−1}``, ``(T,)``.
      horizon: ``T`` (static).
      q_logits: ``None`` for ``Q = π_0`` conditioned on harm, else the logit table of the
        first-order Markov policy that gives ``Q``.
    """
    pi = _pi(logits)
    hs, log_z, det = _backward_passes(pi, aut, horizon, lam, 1)
    log_p = _forward_log_probs(pi, aut, horizon, 1)
    if q_logits is None:
        log_q, mass = _harmful_from(hs, log_p, aut.start)
    else:
        mass = jnp.ones(())
        log_q = _forward_log_probs(_pi(q_logits), aut, horizon, 1)[:-1]
    return DPDeep(
        log_q=log_q,
        log_p=log_p,
        penalty=dp_recovery_penalty(logits, mask, log_q, discounts),
        gradients=_gradients_from(logits, aut, lam, mask, log_q, discounts, hs, log_p),
        attack=_attack_from(logits, aut, log_z, mask, log_q, discounts, horizon),
        q_mass=mass,
        uniform_horizon=_uniform_horizon(det, dp_reachable(aut, horizon)),
    )


# ---------------------------------------------------------------------------------------------
# The report.


def dp_deep_report(
    instance: Any,
    recovery: Sequence[int],
    *,
    mu: float = 1.0,
    gamma: float = 1.0,
    q: str = "harmful",
    jailbroken: Any = None,
    delta: float | None = None,
) -> dict:
    """docs/theory.md §8-9 for a first-order Markov ``π_0`` and an automaton harm, any horizon.

    The DP counterpart of :func:`toysim.deep_report` (``toysim deep --engine dp``). Same keys for
    the per-position gradient norms, ``p_min``, the robustness bound, the attack length and the
    attack curves of the base and standard-aligned policies; the deep-aligned curve is the
    Gibbs-form policy's (key ``gibbs``), and there is no trained optimum (no ``gibbs_gap``).

    Args:
      instance: a :class:`toysim.Instance` with a first-order :class:`toysim.MarkovPolicy` and an
        automaton harm.
      recovery: recovery tokens ``R``.
      mu: ``μ > 0``.
      gamma: ``γ ∈ (0, 1]``.
      q: ``"harmful"`` or ``"jailbroken"`` (then ``jailbroken`` is an instance whose first-order
        Markov policy gives ``Q``).
      delta: if given, report ``t_attack(δ)`` [Cor 23].

    Raises:
      ValueError: naming the setting for bad input, or when the arrays would not fit in memory.
    """
    from ._enumerate import available_bytes

    policy = instance.policy
    check_markov(policy)
    V, T, lam = policy.vocab_size, policy.horizon, float(instance.lam)
    aut = automaton_arrays(instance.harm, V)
    n_states = int(aut.transitions.shape[0])
    # H, log P, log Z, log Q and three no-recovery passes per state and position, on top of the
    # DP analysis' own arrays (its estimate without autodiff).
    need = dp_estimate_bytes(V, T, n_states, autodiff=False) + 8 * (T + 1) * 8 * (V + 1) * n_states
    if need > available_bytes():
        raise ValueError(
            f"DP deep report over T = {T}, V = {V}, S = {n_states} needs about {need / 2**30:.2f} GiB, "
            f"more than the {available_bytes() / 2**30:.2f} GiB available (reduce horizon or vocab_size)"
        )
    logits = jnp.asarray(instance.params.logits, dtype=jnp.float64)
    q_logits = None
    if q == "jailbroken":
        if jailbroken is None:
            raise ValueError("q = jailbroken needs a jailbroken policy file")
        jp = jailbroken.policy
        try:
            check_markov(jp)
        except ValueError as err:
            raise ValueError(f"q jailbroken policy: {err}") from None
        if (jp.vocab_size, jp.horizon) != (V, T):
            raise ValueError(
                f"q jailbroken policy has vocab_size {jp.vocab_size}, horizon {jp.horizon}; expected {V}, {T}"
            )
        q_logits = jnp.asarray(jailbroken.params.logits, dtype=jnp.float64)
    elif q != "harmful":
        raise ValueError(f"q must be 'harmful' or 'jailbroken', got {q!r}")
    mu, gamma = _check_weights(mu, gamma)
    if delta is not None:  # before the passes: a bad δ fails in a second
        check_attack_setting(delta, gamma)
    mask_np = recovery_mask(recovery, V)
    discounts_np = mu * gamma ** np.arange(T, dtype=np.float64)
    mask, discounts = jnp.asarray(mask_np), jnp.asarray(discounts_np)
    out = jax.device_get(dp_deep_arrays(logits, aut, jnp.float64(lam), mask, discounts, T, q_logits))
    if not out.q_mass > 0:
        raise ValueError("q = harmful (π_0 conditioned on harm) has no mass: E_0[h] = 0")
    grads, attack = out.gradients, out.attack
    k = int(out.uniform_horizon)

    inside = np.asarray(_row_recovery(logits, mask)[0])
    occurs = np.isfinite(out.log_p[:-1]).any(axis=(0, 2))  # rows c that some prefix of length < T ends in
    log_p_min = float(inside[occurs].min())  # finite where p_min underflows (logits ±700)
    p_min = float(np.exp(log_p_min))
    t_attack = None if delta is None else attack_length(delta, p_min, mu, gamma, log_p_min=log_p_min)
    # σ(logit π_0(R|c) + μγ^{t−1}) at the rows Q reaches before position t [Thm 20]; σ is
    # increasing, so the minimum over rows is σ of the smallest logit plus the position's weight
    q_rows = np.asarray(_token_q(out.log_q)) > 0
    logit_r = logit_of_log(inside)
    lowest = np.where(q_rows, logit_r[None, :], np.inf).min(axis=1) + discounts_np
    gibbs = sigmoid(lowest)
    gibbs_min = [float(g) if any_q else None for g, any_q in zip(gibbs, q_rows.any(axis=1))]
    return {
        "engine": "dp",
        "vocab_size": V,
        "horizon": T,
        "lambda": lam,
        "recovery": [int(i) for i in np.flatnonzero(mask_np)],
        "mu": mu,
        "gamma": gamma,
        "q": q,
        "uniform_horizon": k,
        "recovery_penalty": float(out.penalty),
        "gradient_norm_by_position": {
            "plain_harm": grads.plain_harm.tolist(),
            "deep": grads.deep.tolist(),
            "recovery_closed_form": grads.recovery_closed_form.tolist(),
            "recovery_autodiff": grads.recovery_autodiff.tolist(),
        },
        "recovery_autodiff_max_abs_error": float(grads.recovery_autodiff_max_abs_error),
        "p_min": p_min,
        "robustness_bound": float(guaranteed_recovery(p_min, mu, gamma, T, log_p_min=log_p_min)),
        "gibbs_min_recovery_by_position": gibbs_min,
        "delta": delta,
        "attack_length": t_attack if t_attack is None or math.isfinite(t_attack) else None,
        "attack_success": {
            "base": attack.base.tolist(),
            "standard": attack.standard.tolist(),
            "gibbs": attack.gibbs.tolist(),
        },
    }
