"""Gibbs form of the deep-aligned optimum [Thm 20] (THEORY.md §8).

Statement: the minimiser of the separable tabular objective
``Σ_t Σ_p Q(p)[μγ^{t−1}(1 − π(R|p)) + KL(π(·|p) ‖ π_0(·|p))] + λ E_π[h]`` satisfies
``π*(R | p) = σ(logit π_0(R | p) + μγ^{t−1})`` at every prefix with ``Q(p) > 0`` when ``λ = 0``,
and at every such prefix past the harm horizon (determined prefixes) when ``λ > 0``. At
``Q(p) = 0`` the objective does not depend on the prefix's logits (flat), so those prefixes are
excluded: the optimiser leaves them at their starting point ``π_0``.

Residual: ``max |π_trained(R|p) − σ(logit π_0(R|p) + μγ^{t−1})|`` over those prefixes, for the
optimum found by L-BFGS (``toysim._optimize.minimize``) started at ``π_0``.

Tolerance 1e-9: L-BFGS is run until the gradient norm is at rounding level (~1e-15); a residual
gradient ``g`` moves a logit by ``O(g / (Q(p) π(1−π)))``, below 1e-12 for these instances, and
``σ`` is 1/4-Lipschitz. Measured: ~1e-16.

Finding ``gibbs_form_joint``: for the joint objective ``L_deep`` (sequence KL, prefixes weighted
by ``π_θ``) the same distance is measured. The exact stationarity condition (*ours*) at a prefix
``p`` of the last level is ``π(v|p) ∝ π_0(v|p) exp(−λh(p·v) + μγ^{T−1} (Q(p)/π_θ(p)) 1[v ∈ R])``:
the effective weight is multiplied by ``Q(p)/π_θ(p)``, which the optimum inflates by steering
away from harmful prefixes, so recovery after them is pushed far above the Gibbs value, to
saturation: in the case below ``π_θ(p)`` falls to ~1e-22 at a harmful prefix and ``π(R|p)`` to 1 in
float64. The minimiser exists (the root KL's marginal cost of suppressing a prefix is unbounded),
but lies where softmax gradients vanish, so L-BFGS can also stop on a plateau with the wrong
saturation (seen with μ = 2). Measured distance from the Gibbs form: ~0.8 (μ = 0.5).

The trained optima of the fixed :data:`CASES` are computed once per process and shared with
robustness_bound.py, attack_length.py and prefill_attack.py: every ``minimize`` call compiles its
own L-BFGS step (8-15 s on a loaded 2-core CPU), so one small case is used. Training several
problems in one run (a summed loss over independent blocks) was tried: the compile grew to ~100 s
and the saturating joint problem spoiled the separable ones' convergence (gradient 3e-5).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

import toysim
from toysim import _recovery as rc

from ._framework import Check

# L-BFGS steps for the shared run (the separable problems converge in well under 100).
STEPS = 300


class Case(NamedTuple):
    vocab_size: int
    horizon: int
    seed: int
    harmful: tuple[int, ...]
    deadline: int
    recovery: tuple[int, ...]
    mu: float
    gamma: float
    lam: float
    q: str  # "harmful" or "jailbroken"


# μ = 0.5: with μ = 2 the joint problem's L-BFGS run stalls on a softmax plateau (a prefix of
# probability ~1e-22 left with π(R|p) = 0 where the optimum has π(R|p) = 1; see the finding below).
CASES = (Case(2, 3, 0, (1,), 1, (0,), 0.5, 0.7, 1.0, "harmful"),)


class Solved(NamedTuple):
    """One case with its exact ingredients."""

    case: Case
    base: toysim.Levels
    h: jnp.ndarray
    spec: rc.RecoverySpec
    determined: tuple


def build(case: Case) -> Solved:
    """``π_0`` levels, leaf harms, the recovery spec and the determined-prefix masks of a case."""
    V, T = case.vocab_size, case.horizon
    policy = toysim.TabularPolicy(V, T)
    base = toysim.forward(policy, policy.init(jax.random.key(case.seed), scale=1.0))
    h = jnp.asarray(toysim.harm_values(toysim.deadline_harm(V, list(case.harmful), case.deadline), V, T))
    if case.q == "harmful":
        q = rc.harmful_prefix_marginals(base, h)
    else:
        jail = policy.init(jax.random.key(case.seed + 100), scale=2.0)
        q = rc.policy_prefix_marginals(toysim.forward(policy, jail))
    spec = rc.recovery_spec(V, case.recovery, q, mu=case.mu, gamma=case.gamma)
    return Solved(case, base, h, spec, toysim.determined_masks(h, V, T)[:-1])


@functools.cache
def solved(index: int) -> Solved:
    return build(CASES[index])


@functools.cache
def optimum(index: int, objective: str, lam_zero: bool = False) -> toysim.Levels:
    """A case's trained optimum (cached: each ``minimize`` call compiles its own L-BFGS step)."""
    s = solved(index)
    lam = 0.0 if lam_zero else s.case.lam
    levels, _ = rc.train_deep(s.base, s.h, lam, s.spec, objective=objective, steps=STEPS)
    return levels


def case_indices():
    return st.sampled_from(range(len(CASES)))


def recovery_probs(levels, spec):
    inside, _ = rc.log_recovery_probability(levels, spec.mask)
    return [np.exp(np.asarray(x)) for x in inside]


def compute(index):
    s = solved(index)
    q_pos = [np.asarray(q) > 0 for q in s.spec.q_prefix]
    return {
        "free": recovery_probs(optimum(index, "separable", lam_zero=True), s.spec),
        "separable": recovery_probs(optimum(index, "separable"), s.spec),
        "gibbs": [np.asarray(g) for g in rc.gibbs_recovery(s.base, s.spec)],
        "free_where": q_pos,
        "past_horizon_where": [m & np.asarray(d) for m, d in zip(q_pos, s.determined)],
        "base": recovery_probs(s.base, s.spec),
        "logit_base": [np.asarray(z) for z in rc.logit_recovery(s.base, s.spec.mask)],
        "mu": s.spec.mu,
    }


def _gap(trained, gibbs, where):
    errs = [np.max(np.abs(a - b)[w]) for a, b, w in zip(trained, gibbs, where) if w.any()]
    return float(max(errs, default=0.0))


def residual(q):
    return max(
        _gap(q["free"], q["gibbs"], q["free_where"]),
        _gap(q["separable"], q["gibbs"], q["past_horizon_where"]),
    )


def _undiscounted(q):
    # the Gibbs form with μ at every position instead of μγ^{t−1}
    gibbs = [1.0 / (1.0 + np.exp(-(z + q["mu"]))) for z in q["logit_base"]]
    return {**q, "gibbs": gibbs}


def _untrained(q):
    return {**q, "free": q["base"], "separable": q["base"]}


def compute_joint(index):
    s = solved(index)
    return {
        "joint": recovery_probs(optimum(index, "joint"), s.spec),
        "gibbs": [np.asarray(g) for g in rc.gibbs_recovery(s.base, s.spec)],
        "where": [np.asarray(q) > 0 for q in s.spec.q_prefix],
    }


def residual_joint(q):
    return _gap(q["joint"], q["gibbs"], q["where"])


CHECKS = [
    Check(
        name="gibbs_form",
        result="[Thm 20]",
        section="§8",
        statement="The separable tabular optimum is the Gibbs form π*(R|p) = σ(logit π_0(R|p) + μγ^{t−1}) "
        "(λ = 0: at every prefix with Q(p) > 0; λ > 0: at every such prefix past the horizon).",
        latex=r"\pi^*(R\mid y_{<t})=\sigma\big(\operatorname{logit}\pi_0(R\mid y_{<t})+\mu\gamma^{t-1}\big)",
        kind="theorem",
        tolerance=1e-9,
        tolerance_reason="L-BFGS optimum at rounding-level gradient; σ is 1/4-Lipschitz (measured ~1e-16)",
        instances=case_indices,
        compute=compute,
        residual=residual,
        corruptions={"discount dropped (μ at every position)": _undiscounted, "untrained π_0": _untrained},
        applies_to="tabular π_0 (V = 2, T = 3); deadline harm (horizon 1); Q = π_0 conditioned on harm",
        examples=1,
    ),
    Check(
        name="gibbs_form_joint",
        result="[Thm 20]",
        section="§8",
        statement="Distance of the joint L_deep optimum (sequence KL) from the Gibbs form, over prefixes "
        "with Q(p) > 0 (an approximation, not a theorem).",
        latex=r"\max_{p:\,Q(p)>0}\big|\pi^*_{\mathrm{joint}}(R\mid p)-\sigma(\operatorname{logit}\pi_0(R\mid p)+\mu\gamma^{t-1})\big|",
        kind="finding",
        tolerance=0.0,
        tolerance_reason="a measurement",
        instances=case_indices,
        compute=compute_joint,
        residual=residual_joint,
        corruptions={},
        applies_to="tabular π_0 (V = 2, T = 3); deadline harm (horizon 1); Q = π_0 conditioned on harm",
        examples=1,
    ),
]
