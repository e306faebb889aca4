"""The deep-alignment inputs shared by the §8 recovery checks, with their exact ingredients and
cached trained optima.

Shared by gibbs_form.py [Thm 20], robustness_bound.py [Thm 22], attack_length.py [Cor 23] and
prefill_attack.py (§9): all four draw their inputs from :func:`deep_cases` (or :func:`joint_cases`)
and read the same trained optima, so the inputs, the L-BFGS runs and the brute-force references
live here rather than in any one check page. With the same hypothesis seed those checks see the
same inputs, and the caches below (keyed by :meth:`DeepCase.key`) train each optimum once per
process.

* :class:`DeepCase`, :func:`deep_cases`, :func:`joint_cases`: random tabular ``π_0`` of a fixed
  small shape (every shape costs one L-BFGS compilation, ~10-20 s on a loaded 2-core CPU) with a
  binary harm from :mod:`proofs_check.recovery_cases` (``k < T`` in most inputs), ``λ``, a
  recovery set ``R``, ``μ``, ``γ`` and ``Q`` (``π_0`` conditioned on harm, or a jailbroken policy);
* :func:`solved` (the library's ``π_0`` levels, leaf harms, recovery spec, determined prefixes) and
  :func:`reference` (the brute-force side, :mod:`proofs_check.recovery_reference`), cached;
* :func:`optimum`: the trained separable or joint optimum (``toysim.train_deep``, at most ``STEPS``
  L-BFGS steps, stopped at ``‖∇L‖₂ ≤ GRAD_TOL``), cached;
* :func:`certificate`: the exact a-posteriori bound ``ε_p ≥ |π_trained(R|p) − π*(R|p)|`` from the
  separable optimum's final gradient (derived in the docstring of :mod:`proofs_check.gibbs_form`);
* ``TOLERANCE``: the rounding allowed beyond that certificate, used by every check of the optimum.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

import toysim

from . import recovery_reference as ref
from .recovery_cases import shallow_harms

# L-BFGS step budget; runs stop earlier, at the first step with ‖∇L‖₂ ≤ GRAD_TOL (typically < 150).
STEPS = 400
GRAD_TOL = 1e-14
# Rounding in σ, the probabilities and the gradient behind the certificate (each ~1e-15).
TOLERANCE = 1e-12
# Library against brute-force reference (same quantity, different arithmetic): float64 rounding of
# sums of at most 27 terms of order one, measured ~1e-16; 1e-12 leaves room and is 1e-12 as well.
# Shapes (V, T): every one costs an L-BFGS compilation per objective.
SEPARABLE_SHAPES = ((2, 3), (3, 2))
JOINT_SHAPES = ((2, 3),)


class DeepCase(NamedTuple):
    """One input: a tabular ``π_0`` with harm and ``λ`` (the :class:`toysim.Instance`), and the
    recovery data. ``q`` is ``"harmful"`` (``π_0`` conditioned on harm) or ``"jailbroken"`` (a
    tabular policy drawn from ``q_seed`` with scale 2)."""

    instance: toysim.Instance
    recovery: tuple[int, ...]
    mu: float
    gamma: float
    q: str
    q_seed: int

    def key(self) -> tuple:
        """A hashable fingerprint (for the caches)."""
        inst = self.instance
        digest = hashlib.sha1()
        for x in inst.params:
            digest.update(np.asarray(x).tobytes())
        v, T = inst.policy.vocab_size, inst.policy.horizon
        digest.update(np.asarray(toysim.harm_values(inst.harm, v, T), dtype=np.float64).tobytes())
        return (
            v,
            T,
            digest.hexdigest(),
            float(inst.lam),
            self.recovery,
            self.mu,
            self.gamma,
            self.q,
            self.q_seed,
        )


def _jailbroken(policy, seed):
    return policy.init(jax.random.key(seed), scale=2.0)


@st.composite
def deep_cases(draw, shapes=SEPARABLE_SHAPES, gamma_below_one: bool = False):
    """A random :class:`DeepCase` of one of ``shapes``; ``γ < 1`` when ``gamma_below_one``."""
    v, T = draw(st.sampled_from(shapes))
    policy = toysim.TabularPolicy(v, T)
    params = policy.init(
        jax.random.key(draw(st.integers(0, 2**31 - 1))), scale=draw(st.sampled_from([0.3, 1.0, 3.0]))
    )
    harm = draw(shallow_harms(v, T))
    q = draw(st.sampled_from(["harmful", "jailbroken"]))
    # Q = π_0 | harm has no mass when h = 0 everywhere (softmax π_0 has full support)
    assume(q == "jailbroken" or bool(np.any(toysim.harm_values(harm, v, T) > 0)))
    inst = toysim.Instance(policy, params, harm, draw(st.sampled_from([0.1, 1.0, 4.0])))
    recovery = tuple(sorted(draw(st.lists(st.integers(0, v - 1), min_size=1, max_size=v - 1, unique=True))))
    mu = draw(st.floats(0.25, 2.0))
    gamma = draw(st.floats(0.3, 0.95) if gamma_below_one else st.floats(0.3, 1.0))
    return DeepCase(inst, recovery, mu, gamma, q, draw(st.integers(0, 2**31 - 1)))


class Solved(NamedTuple):
    """One input with its exact ingredients."""

    case: DeepCase
    base: toysim.Levels
    h: jnp.ndarray
    spec: toysim.RecoverySpec
    determined: tuple  # per level 0..T−1: determined (past the horizon) prefixes

    @property
    def support(self) -> list[np.ndarray]:
        """Per level: prefixes with ``Q(p) > 0`` (where the separable objective is not flat)."""
        return [np.asarray(q) > 0 for q in self.spec.q_prefix]


def build(case: DeepCase) -> Solved:
    """``π_0`` levels, leaf harms, the recovery spec and the determined-prefix masks of an input."""
    inst = case.instance
    policy = inst.policy
    V, T = policy.vocab_size, policy.horizon
    base = toysim.forward(policy, inst.params)
    h = jnp.asarray(toysim.harm_values(inst.harm, V, T))
    if case.q == "harmful":
        q = toysim.harmful_prefix_marginals(base, h)
    else:
        q = toysim.policy_prefix_marginals(toysim.forward(policy, _jailbroken(policy, case.q_seed)))
    spec = toysim.recovery_spec(V, case.recovery, q, mu=case.mu, gamma=case.gamma)
    return Solved(case, base, h, spec, toysim.determined_masks(h, V, T)[:-1])


# Caches keyed by DeepCase.key() (an Instance holds arrays, so inputs are not hashable).
_SOLVED: dict = {}
_OPTIMA: dict = {}


def solved(case: DeepCase) -> Solved:
    key = case.key()
    if key not in _SOLVED:
        _SOLVED[key] = build(case)
    return _SOLVED[key]


def optimum(case: DeepCase, objective: str, lam_zero: bool = False) -> toysim.Levels:
    """An input's trained optimum, cached (several checks share the same inputs)."""
    key = (case.key(), objective, lam_zero)
    if key not in _OPTIMA:
        s = solved(case)
        lam = 0.0 if lam_zero else float(case.instance.lam)
        _OPTIMA[key], _ = toysim.train_deep(
            s.base, s.h, lam, s.spec, objective=objective, steps=STEPS, tol=GRAD_TOL
        )
    return _OPTIMA[key]


_separable_gradient = jax.jit(jax.grad(toysim.separable_objective))


def certificate(case: DeepCase, lam_zero: bool) -> list[np.ndarray]:
    """``ε_p = expm1(D_p)`` per level (``inf`` where ``Q(p) = 0``): a bound on the trained separable
    optimum's ``|π(R|p) − π*_Gibbs(R|p)|`` from its gradient (derived in the docstring of
    :mod:`proofs_check.gibbs_form`)."""
    s = solved(case)
    levels = optimum(case, "separable", lam_zero)
    lam = 0.0 if lam_zero else float(case.instance.lam)
    grads = _separable_gradient(tuple(levels.log_cond), s.base, s.h, jnp.float64(lam), s.spec)
    out = []
    for g, lc, q in zip(grads, levels.log_cond, s.spec.q_prefix):
        q, g, pi = np.asarray(q), np.asarray(g), np.exp(np.asarray(lc))
        eps = np.full(q.shape, np.inf)
        on = q > 0
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            u = g[on] / (q[on, None] * pi[on])  # u_v − mean, one row per prefix (nan: π_v = 0)
            u = np.where(np.isnan(u), np.inf, u)  # π_v = 0 (underflow): no certificate
            eps[on] = np.expm1(np.max(u, axis=1) - np.min(u, axis=1))
        out.append(eps)
    return out


def recovery_probs(levels, spec):
    inside, _ = toysim.log_recovery_probability(levels, spec.mask)
    return [np.exp(np.asarray(x)) for x in inside]


class Reference(NamedTuple):
    """The brute-force side of an input (:mod:`proofs_check.recovery_reference`): ``π_0``'s logits
    per level, ``Q`` per response and its prefix marginals, the discounts, the Gibbs form, the
    determined prefixes (lengths ``0..T−1``) and ``k``, all from ``policy.logits`` and ``h``."""

    logits: list
    log_p0: np.ndarray
    leaf_q: np.ndarray
    q: list
    discounts: np.ndarray
    gibbs: list
    determined: list
    horizon: int

    @property
    def support(self) -> list[np.ndarray]:
        return [x > 0 for x in self.q]


_REFERENCES: dict = {}


def reference(case: DeepCase) -> Reference:
    """The brute-force side of an input, cached."""
    key = case.key()
    if key not in _REFERENCES:
        inst = case.instance
        policy = inst.policy
        V, T = policy.vocab_size, policy.horizon
        h = np.asarray(toysim.harm_values(inst.harm, V, T), dtype=np.float64)
        logits = [np.asarray(z) for z in ref.level_logits(policy, [inst.params] * T)]
        log_p0 = np.asarray(ref.sequence_log_probs_from_logits(logits, V))
        if case.q == "harmful":
            leaf = ref.harmful_leaf(log_p0, h)
        else:
            leaf = np.exp(np.asarray(ref.sequence_log_probs(policy, _jailbroken(policy, case.q_seed))))
        _REFERENCES[key] = Reference(
            logits,
            log_p0,
            leaf,
            ref.prefix_marginals(leaf, V, T),
            ref.discounts(case.mu, case.gamma, T),
            ref.gibbs_recovery(logits, case.recovery, case.mu, case.gamma),
            ref.determined(h, V, T)[:-1],
            ref.uniform_horizon(h, V, T),
        )
    return _REFERENCES[key]


def reference_recovery(levels, recovery) -> list:
    """``π(R | p)`` of a trained (tabular) optimum by the reference, from its rows alone."""
    return ref.recovery_by_level([np.asarray(x) for x in levels.log_cond], recovery)


def joint_cases():
    return deep_cases(JOINT_SHAPES)


APPLIES_TO = (
    "tabular π_0 (V = 2, T = 3 and V = 3, T = 2), binary harms, Q = π_0 | harm or a jailbroken policy"
)
