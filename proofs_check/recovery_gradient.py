"""The recovery penalty's gradient reaches every position (THEORY.md §8, [Def 16]).

Statement: the per-position gradient of the recovery term
``μ E_Q[Σ_t γ^{t−1}(1 − π_θ(R | y_<t))]`` is ``G̃_t = −μγ^{t−1} E_Q[∇π_θ(R | y_<t)]`` (closed form:
a VJP of the level logits with weights ``−μγ^{t−1} Q(p) π(v|p)(1[v∈R] − π(R|p))``), and it is
non-zero at every position where ``Q`` has mass, since softmax policies have ``0 < π(R|p) < 1``
for a proper non-empty ``R``. In particular at every ``t > k`` (the uniform harm horizon), where
the plain objective's gradient ``λ G_t`` is exactly zero [Thm 10], the deep objective's
per-position gradient (at ``θ = θ_0``, where the KL gradient vanishes) is non-zero.

Residual: the largest of ``|G̃_t(closed form) − G̃_t(untied autodiff)|`` (entries),
``‖λ G_t‖`` for ``t > k``, and an indicator (1.0) that some ``‖G̃_t‖`` or some deep ``‖∇_t L_deep‖``
with ``t > k`` is at most 1e-12 (counted as zero).

Tolerance 1e-10: float64 identities on gradients of order one. The zero floor 1e-12 sits far
below the smallest true norm in these instances (V ≤ 3, logits of scale ≤ 3, ``μ ≥ 0.5``,
``γ ≥ 0.5``: above 1e-6) and far above rounding (1e-16).

Applies to lookup parameterisations (tabular, Markov), where ``G̃_t ≠ 0`` is guaranteed: every
context row receives a positive combination of the same non-zero vector.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

import toysim
from toysim import _recovery as rc

from ._framework import Check
from .strategies import BINARY_HARM_KINDS, harms, make_policy

ZERO_FLOOR = 1e-12


# A few fixed shapes (policy kind, V, T): every new shape costs seconds of XLA compilation.
SHAPES = (("tabular", 2, 3), ("markov1", 3, 2), ("markov2", 2, 3))


@st.composite
def recovery_cases(draw, shapes=SHAPES):
    """``(Instance, R, μ, γ)`` with a binary harm of positive mean under ``π_0``."""
    kind, v, T = draw(st.sampled_from(shapes))
    policy = make_policy(kind, v, T)
    params = policy.init(
        jax.random.key(draw(st.integers(0, 2**31 - 1))), scale=draw(st.sampled_from([0.3, 1.0, 3.0]))
    )
    harm = draw(
        harms(v, T, BINARY_HARM_KINDS).filter(lambda hm: bool(np.any(toysim.harm_values(hm, v, T) > 0)))
    )
    inst = toysim.Instance(policy, params, harm, draw(st.sampled_from([0.1, 1.0, 4.0])))
    recovery = draw(st.lists(st.integers(0, v - 1), min_size=1, max_size=v - 1, unique=True))
    return inst, recovery, draw(st.sampled_from([0.5, 2.0])), draw(st.sampled_from([0.5, 0.9, 1.0]))


def compute(case):
    inst, recovery, mu, gamma = case
    policy, params = inst.policy, inst.params
    V, T = policy.vocab_size, policy.horizon
    h = jnp.asarray(toysim.harm_values(inst.harm, V, T))
    base = toysim.forward(policy, params)
    spec = rc.recovery_spec(V, recovery, rc.harmful_prefix_marginals(base, h), mu=mu, gamma=gamma)
    k = int(toysim.uniform_horizon(toysim.determined_masks(h, V, T)))
    flat = lambda tree: np.asarray(ravel_pytree(tree)[0])  # noqa: E731
    plain = toysim.covariance_gradient(policy, params, base, toysim.harm_martingale(base, h))
    return {
        "closed": [flat(g) for g in rc.recovery_gradient(policy, params, spec)],
        "autodiff": [
            flat(g)
            for g in rc.gradient_by_position(policy, params, base, h, inst.lam, spec, terms="recovery")
        ],
        "deep": [flat(g) for g in rc.gradient_by_position(policy, params, base, h, inst.lam, spec)],
        "plain": [inst.lam * flat(g) for g in plain],
        "horizon": k,
    }


def residual(q):
    k = q["horizon"]
    norm = np.linalg.norm
    errs = [float(np.max(np.abs(c - a))) for c, a in zip(q["closed"], q["autodiff"])]
    errs += [float(norm(g)) for g in q["plain"][k:]]
    if min(norm(g) for g in q["closed"]) <= ZERO_FLOOR:
        errs.append(1.0)
    if any(norm(g) <= ZERO_FLOOR for g in q["deep"][k:]):
        errs.append(1.0)
    return max(errs)


def _last_position_dropped(q):
    zero = np.zeros_like(q["closed"][-1])
    return {**q, "closed": q["closed"][:-1] + [zero], "autodiff": q["autodiff"][:-1] + [zero]}


CHECKS = [
    Check(
        name="recovery_gradient",
        result="[Def 16], THEORY §8",
        section="§8",
        statement="The recovery term's gradient at position t is −μγ^{t−1}E_Q[∇π_θ(R|y_<t)], non-zero at "
        "every position, including t > k where the plain objective's G_t vanishes.",
        latex=r"\nabla_{\theta_t}\,\mu\,\mathbb{E}_Q\Big[\sum_t\gamma^{t-1}(1-\pi_\theta(R\mid y_{<t}))\Big]"
        r"=-\mu\gamma^{t-1}\mathbb{E}_Q[\nabla\pi_\theta(R\mid y_{<t})]\neq0",
        kind="theorem",
        tolerance=1e-10,
        tolerance_reason="float64 identity between a closed form and autodiff; zero floor 1e-12",
        instances=recovery_cases,
        compute=compute,
        residual=residual,
        corruptions={
            "closed form with the wrong sign": lambda q: {**q, "closed": [-g for g in q["closed"]]},
            "penalty dropped at the last position": _last_position_dropped,
        },
        applies_to="tabular and Markov (order 1, 2) policies; binary harms with E_0[h] > 0; Q = π_0 | harm",
        examples=4,
    )
]
