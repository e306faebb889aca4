"""The harm horizon: no information after it, and only then [Thm 9] (THEORY.md §5).

Statement: for every ``k ∈ {0, …, T}``, ``I_t = 0`` for all ``t > k`` if and only if the harm is a
function of the first ``k`` tokens, ``h(y) = g(y_≤k)`` (every prefix of length ``k`` is
determined). Both directions are tested at every ``k``, so the smallest such ``k``, the uniform
horizon ``toysim.uniform_horizon``, is also the last position with positive harm information
(the horizon is minimal).

Inputs: random instances whose harm is, half of the time, replaced by a table ``g(y_≤k)`` for a
drawn ``k`` with values in ``{0, ½, 1}`` (so that the ``⟸`` side and coincidences that lower the
horizon below ``k`` are exercised).

Residual: the number of ``k`` at which the two sides disagree, plus ``|k_engine − k_info|`` where
``k_info = max{t : I_t > 0}`` (0 if none).

Tolerance 0 (exact): both sides are exact booleans. Determination is decided by comparing harm
values (data, no arithmetic), and the engine keeps constants exact (``_constant_rows``), so below a
determined prefix every innovation, hence every ``I_t``, is exactly 0; before the horizon ``I_t`` is
a sum containing a strictly positive term.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

import toysim

from ._framework import Check
from .strategies import instances


@st.composite
def horizon_instances(draw, policy_kinds=None):
    """Random instances; half of them with a harm ``g(y_≤k)`` of a drawn ``k``."""
    inst = draw(instances() if policy_kinds is None else instances(policy_kinds=policy_kinds))
    if draw(st.booleans()):
        v, horizon = inst.policy.vocab_size, inst.policy.horizon
        k = draw(st.integers(0, horizon))
        rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
        g = rng.integers(0, 3, size=v**k) / 2.0
        inst = inst._replace(harm=toysim.table_harm(np.repeat(g, v ** (horizon - k)), v, horizon))
    return inst


def compute(inst):
    policy = inst.policy
    v, horizon = policy.vocab_size, policy.horizon
    h = jnp.asarray(toysim.harm_values(inst.harm, v, horizon))
    levels = toysim.forward(policy, inst.params)
    info = np.asarray(toysim.harm_information(levels, toysim.harm_martingale(levels, h)))
    masks = toysim.determined_masks(h, v, horizon)
    return {
        "information": info,
        "determined": np.asarray([bool(jnp.all(m)) for m in masks]),  # level k all determined
        "horizon": int(toysim.uniform_horizon(masks)),
    }


def residual(q):
    info, determined = q["information"], q["determined"]
    no_information_after = np.asarray([bool(np.all(info[k:] == 0.0)) for k in range(len(determined))])
    positive = np.nonzero(info > 0.0)[0]
    k_info = int(positive[-1]) + 1 if positive.size else 0
    return float(np.sum(no_information_after != determined) + abs(q["horizon"] - k_info))


def _information_one_position_early(q):
    info = np.append(q["information"][1:], 0.0)
    return {**q, "information": info}


def _horizon_one_position_late(q):
    determined = np.append(False, q["determined"][:-1])
    return {**q, "determined": determined, "horizon": q["horizon"] + 1}


CHECKS = [
    Check(
        name="horizon_equivalence",
        result="[Thm 9]",
        section="§5",
        statement="I_t = 0 for every t > k iff h is a function of y_≤k; the uniform horizon is the last "
        "position with positive harm information.",
        latex=r"\big(\forall t>k:\ I_t=0\big)\iff h(y)=g(y_{\le k}),\qquad k^*=\max\{t: I_t>0\}",
        kind="theorem",
        tolerance=0.0,
        tolerance_reason="exact booleans: determination compares data, and the engine keeps constants "
        "exact, so I_t is exactly 0 past the horizon",
        instances=lambda: horizon_instances(),
        compute=compute,
        residual=residual,
        corruptions={
            "I_t read one position early": _information_one_position_early,
            "horizon one position late": _horizon_one_position_late,
        },
        applies_to="tabular, Markov (order 1, 2) and MLP policies; every harm family and g(y_≤k) tables",
        examples=25,
    )
]
