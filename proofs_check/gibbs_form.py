"""Gibbs form of the deep-aligned optimum [Thm 20] (THEORY.md §8).

Statement: the minimiser of the separable tabular objective
``Σ_t Σ_p Q(p)[μγ^{t−1}(1 − π(R|p)) + KL(π(·|p) ‖ π_0(·|p))] + λ E_π[h]`` satisfies
``π*(R | p) = σ(logit π_0(R | p) + μγ^{t−1})`` at every prefix with ``Q(p) > 0`` when ``λ = 0``,
and at every such prefix past the harm horizon (determined prefixes) when ``λ > 0``. At
``Q(p) = 0`` the objective does not depend on the prefix's logits (flat), so those prefixes are
excluded: the optimiser leaves them at their starting point ``π_0``.

Inputs (:func:`deep_cases`): random tabular ``π_0`` of a fixed small shape (``V = 2, T = 3`` and
``V = 3, T = 2``; every shape costs one L-BFGS compilation, ~10-20 s on a loaded 2-core CPU)
with a drawn seed and scale, a random binary harm (deadline, first-decisive, trigger or binary
table), ``λ``, a random recovery set ``R`` (non-empty, proper), ``μ ∈ [0.25, 2]``,
``γ ∈ [0.3, 1]`` and ``Q`` either ``π_0`` conditioned on harm (instances with ``E_0[h] = 0`` are
skipped: ``Q`` has no mass) or a random jailbroken policy. Each input is a :class:`DeepCase`
whose first field is its :class:`toysim.Instance`, so a failure is written as a replayable file.

Residual: ``max |π_trained(R|p) − σ(logit π_0(R|p) + μγ^{t−1})|`` over those prefixes with
``Q(p) ≥ Q_FLOOR = 1e-5``, for the optimum found by L-BFGS (``toysim.train_deep``) started at
``π_0`` and stopped at the first step with ``‖∇L‖₂ ≤ GRAD_TOL = 1e-14``.

Why the threshold and the stopping rule (a run with a fixed 300 steps and no threshold failed with
residual 2.9e-6). At a prefix ``p`` the separable objective is ``Q(p)`` times a per-prefix
problem whose curvature in the recovery logit is ``π(1 − π)``, so a gradient component ``g_p``
leaves ``π(R|p)`` off by ``|g_p| / Q(p)`` to first order. Two things went wrong: (1) prefixes with
tiny ``Q(p)`` (a jailbroken ``Q`` of scale 2 or a harm-conditioned ``Q`` of a peaked ``π_0`` gives
``Q(p)`` down to ~1e-9) have logits the objective hardly determines: even a rounding-level
gradient (1e-16) allows ``Δπ ~ 1e-7`` there; (2) L-BFGS does not stop at convergence: after its
gradient reaches ~1e-16 it keeps stepping along curvature pairs made of rounding noise, and those
steps move exactly the ill-determined logits (measured: ``‖∇L‖`` stays ≤ 1e-12 while the error at
a ``Q ~ 3e-9`` prefix grows to 4e-8). Hence: stop at ``GRAD_TOL`` (``train_deep(tol=...)``), and
count only prefixes with ``Q(p) ≥ 1e-5``, where ``|Δπ| ≲ GRAD_TOL / Q_FLOOR = 1e-9``: that is the
tolerance. Measured residuals are ~1e-13 or below.

Finding ``gibbs_form_joint``: for the joint objective ``L_deep`` (sequence KL, prefixes weighted
by ``π_θ``) the same distance is measured. The exact stationarity condition (*ours*) at a prefix
``p`` of the last level is ``π(v|p) ∝ π_0(v|p) exp(−λh(p·v) + μγ^{T−1} (Q(p)/π_θ(p)) 1[v ∈ R])``:
the effective weight is multiplied by ``Q(p)/π_θ(p)``, which the optimum inflates by steering
away from harmful prefixes, so recovery after them is pushed far above the Gibbs value, towards
saturation. The minimiser can lie where softmax gradients vanish, so L-BFGS may also stop on a
plateau. Measured over ``V = 2, T = 3`` instances only (one more compilation per shape).

Trained optima are cached per input (:func:`optimum`) and shared with robustness_bound.py,
attack_length.py and prefill_attack.py, which draw from the same strategy: with the same
hypothesis seed they see the same inputs, so each optimum is trained once per process.
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
from toysim import _recovery as rc

from ._framework import Check
from .strategies import BINARY_HARM_KINDS, harms

# L-BFGS step budget; runs stop earlier, at the first step with ‖∇L‖₂ ≤ GRAD_TOL (typically < 150).
STEPS = 400
GRAD_TOL = 1e-14
# Prefixes with Q(p) below this are not compared: there |Δπ(R|p)| ≈ |g_p| / Q(p) is not pinned
# down to the tolerance by a gradient of GRAD_TOL (see the module docstring).
Q_FLOOR = 1e-5
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
        return (v, T, digest.hexdigest(), float(inst.lam), self.recovery, self.mu, self.gamma, self.q, self.q_seed)


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
    harm = draw(harms(v, T, BINARY_HARM_KINDS))
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
    spec: rc.RecoverySpec
    determined: tuple  # per level 0..T−1: determined (past the horizon) prefixes

    @property
    def compared(self) -> list[np.ndarray]:
        """Per level: prefixes with ``Q(p) ≥ Q_FLOOR`` (where a trained optimum is compared)."""
        return [np.asarray(q) >= Q_FLOOR for q in self.spec.q_prefix]


def build(case: DeepCase) -> Solved:
    """``π_0`` levels, leaf harms, the recovery spec and the determined-prefix masks of an input."""
    inst = case.instance
    policy = inst.policy
    V, T = policy.vocab_size, policy.horizon
    base = toysim.forward(policy, inst.params)
    h = jnp.asarray(toysim.harm_values(inst.harm, V, T))
    if case.q == "harmful":
        q = rc.harmful_prefix_marginals(base, h)
    else:
        q = rc.policy_prefix_marginals(toysim.forward(policy, _jailbroken(policy, case.q_seed)))
    spec = rc.recovery_spec(V, case.recovery, q, mu=case.mu, gamma=case.gamma)
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
        _OPTIMA[key], _ = rc.train_deep(
            s.base, s.h, lam, s.spec, objective=objective, steps=STEPS, tol=GRAD_TOL
        )
    return _OPTIMA[key]


def recovery_probs(levels, spec):
    inside, _ = rc.log_recovery_probability(levels, spec.mask)
    return [np.exp(np.asarray(x)) for x in inside]


def compute(case):
    s = solved(case)
    compared = s.compared
    return {
        "free": recovery_probs(optimum(case, "separable", lam_zero=True), s.spec),
        "separable": recovery_probs(optimum(case, "separable"), s.spec),
        "gibbs": [np.asarray(g) for g in rc.gibbs_recovery(s.base, s.spec)],
        "free_where": compared,
        "past_horizon_where": [m & np.asarray(d) for m, d in zip(compared, s.determined)],
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


def joint_cases():
    return deep_cases(JOINT_SHAPES)


def compute_joint(case):
    s = solved(case)
    return {
        "joint": recovery_probs(optimum(case, "joint"), s.spec),
        "gibbs": [np.asarray(g) for g in rc.gibbs_recovery(s.base, s.spec)],
        "where": s.compared,
    }


def residual_joint(q):
    return _gap(q["joint"], q["gibbs"], q["where"])


APPLIES_TO = (
    "tabular π_0 (V = 2, T = 3 and V = 3, T = 2), binary harms, Q = π_0 | harm or a jailbroken "
    "policy; prefixes with Q(p) ≥ 1e-5"
)

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
        tolerance_reason="L-BFGS stopped at ‖∇L‖ ≤ 1e-14; |Δπ(R|p)| ≈ |g_p|/Q(p) ≤ 1e-9 on Q(p) ≥ 1e-5",
        instances=deep_cases,
        compute=compute,
        residual=residual,
        corruptions={"discount dropped (μ at every position)": _undiscounted, "untrained π_0": _untrained},
        applies_to=APPLIES_TO,
        examples=8,
    ),
    Check(
        name="gibbs_form_joint",
        result="[Thm 20]",
        section="§8",
        statement="Distance of the joint L_deep optimum (sequence KL) from the Gibbs form, over prefixes "
        "with Q(p) ≥ 1e-5 (an approximation, not a theorem).",
        latex=r"\max_{p:\,Q(p)>0}\big|\pi^*_{\mathrm{joint}}(R\mid p)-\sigma(\operatorname{logit}\pi_0(R\mid p)+\mu\gamma^{t-1})\big|",
        kind="finding",
        tolerance=0.0,
        tolerance_reason="a measurement",
        instances=joint_cases,
        compute=compute_joint,
        residual=residual_joint,
        corruptions={},
        applies_to="tabular π_0 (V = 2, T = 3), binary harms, Q = π_0 | harm or a jailbroken policy",
        examples=6,
    ),
]
