"""Data augmentation as a sampled recovery penalty (docs/theory.md §9, Qi et al. 2025).

Qi et al.'s recipe (a harmful response cut at a random length, followed by a refusal) is the
Monte-Carlo counterpart of the recovery term. One draw: ``y ~ Q`` (its first ``T − 1`` tokens,
from ``Q_{T−1}``), ``t ~ U{1..T}``, value ``X = T μγ^{t−1} (1 − π(R | y_<t))``. Then
``E[X] = μ E_Q[Σ_t γ^{t−1}(1 − π(R | y_<t))]`` exactly, because ``Q``'s prefix marginals are
consistent across lengths.

Residual: ``|mean of N draws − exact term| / ε`` with ``N = 100 000`` draws (``jax.random``, key
from the drawn seed) and ``ε`` from Bernstein's inequality with the *exact* variance ``σ²`` of
one draw and its range ``b = Tμ``: ``P(|X̄ − E X| ≥ ε) ≤ 2 exp(−N ε² / (2σ² + 2bε/3)) = α``.

The exact term is the library's ``recovery_penalty``; it is also compared with the per-sequence
brute force of :mod:`proofs_check.recovery_reference` (``μ Σ_y Q(y) Σ_t γ^{t−1}(1 − π(R|y_<t))``
with ``Q(y) = π_0(y) h(y) / E_0[h]``): the residual takes ``|exact − reference| / 1e-10`` as well
(an identity in float64 on values of order one, measured ~1e-16), so a wrong penalty fails the
check even when the samples follow it.

Tolerance 1: the check fails wrongly with probability at most ``α = 1e-6`` per example.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

import toysim

from . import recovery_reference as ref
from ._framework import Check
from .recovery_cases import recovery_cases

NUM_SAMPLES = 100_000
SHAPES = (("tabular", 2, 3), ("markov1", 3, 2))
FALSE_FAILURE = 1e-6
IDENTITY = 1e-10  # library penalty against the brute-force reference (float64 rounding ~1e-16)


@st.composite
def cases(draw):
    inst, recovery, mu, _ = draw(recovery_cases(SHAPES))
    return inst, recovery, mu, draw(st.sampled_from([0.5, 0.9])), draw(st.integers(0, 2**31 - 1))


def bernstein_radius(variance: float, bound: float, n: int, alpha: float) -> float:
    """``ε`` with ``2 exp(−n ε² / (2σ² + 2bε/3)) = α`` (positive root of the quadratic)."""
    log_term = math.log(2.0 / alpha)
    a, b_, c = n, -2.0 * bound * log_term / 3.0, -2.0 * variance * log_term
    return (-b_ + math.sqrt(b_ * b_ - 4 * a * c)) / (2 * a)


def compute(case):
    inst, recovery, mu, gamma, seed = case
    V, T = inst.policy.vocab_size, inst.policy.horizon
    h = jnp.asarray(toysim.harm_values(inst.harm, V, T))
    levels = toysim.forward(inst.policy, inst.params)
    spec = toysim.recovery_spec(V, recovery, toysim.harmful_prefix_marginals(levels, h), mu=mu, gamma=gamma)
    samples = np.asarray(toysim.augmentation_samples(jax.random.key(seed), levels, spec, NUM_SAMPLES))
    log_p0 = ref.sequence_log_probs(inst.policy, inst.params)
    leaf_q = ref.harmful_leaf(log_p0, np.asarray(h))
    reference = ref.penalty(inst.policy, [inst.params] * T, leaf_q, recovery, mu, gamma)
    return {
        "samples": samples,
        "reference": float(reference),
        "exact": float(toysim.recovery_penalty(levels, spec)),
        "radius": bernstein_radius(
            toysim.augmentation_variance(levels, spec), T * mu, NUM_SAMPLES, FALSE_FAILURE
        ),
        "horizon": T,
    }


def residual(q):
    return max(
        abs(float(np.mean(q["samples"])) - q["exact"]) / q["radius"],
        abs(q["exact"] - q["reference"]) / IDENTITY,
    )


CHECKS = [
    Check(
        name="augmentation_unbiased",
        result="(ours), Qi et al. 2025",
        section="§9",
        statement="Harmful prefix of random length + recovery target is an unbiased sampled estimate of "
        "the recovery penalty.",
        latex=r"\mathbb{E}\big[T\mu\gamma^{t-1}(1-\pi(R\mid y_{<t}))\big]=\mu\,\mathbb{E}_Q\Big[\sum_t\gamma^{t-1}(1-\pi(R\mid y_{<t}))\Big]",
        kind="theorem",
        tolerance=1.0,
        tolerance_reason="Bernstein radius with the exact variance: false failure ≤ 1e-6 per example",
        instances=cases,
        compute=compute,
        residual=residual,
        corruptions={
            "position weight T forgotten": lambda q: {**q, "samples": q["samples"] / q["horizon"]},
            "penalty and samples off by the same factor (a bug shared by both)": lambda q: {
                **q,
                "exact": q["exact"] * 0.5,
                "samples": q["samples"] * 0.5,
            },
        },
        applies_to="tabular (V = 2, T = 3) and Markov order-1 (V = 3, T = 2) policies; binary harms, E_0[h] > 0",
        examples=5,
    )
]
