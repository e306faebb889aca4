"""Where the equilibrium moves the policy: KL versus conditional variance (docs/theory.md §7, *ours*).

Statement (binary harm, every λ > 0): at every prefix ``p`` the tilt's conditional KL
``KL(π*(·|p) ‖ π_0(·|p))`` is zero iff ``Var_{π_0}(H_t | p) = 0``. Reason: ``π*(v|p) ∝ π_0(v|p)
Z_t(p·v)`` moves iff the children's ``Z`` differ, and for ``h ∈ {0, 1}``,
``Z = 1 − (1 − e^{−λ}) H``, so ``Var_{π_0}(Z_t | p) = (1 − e^{−λ})² Var_{π_0}(H_t | p)``.

Residual (theorem ``kl-variance-binary``): the largest of
``|Var(Z_t|p) − (1 − e^{−λ})² Var(H_t|p)|`` over prefixes and of the conditional KL at prefixes
with ``Var(H_t|p) = 0`` exactly, and of the differences between the engine's ``Var(H_t|p)``,
``Var(Z_t|p)`` and prefix KL and brute force (``proofs_check.reference``: ``H`` and ``Z`` summed
over the sequences below each prefix with per-sequence probabilities, the KL of the tilt from
sequence-level probabilities).

Inputs and exercise. A prefix with ``Var(H_t|p) = 0`` that is *determined* (``h`` constant below
it) has KL 0 for any harm: that is ``zero_kl``'s content, not this one's. The content here is the
*undetermined* prefix with zero variance of ``H``, which random binary harms almost never produce.
So two of three inputs are constructed (:func:`xor_instances`): ``V = 2``, ``T = 3``,
``h(y) = y_2 XOR y_3`` and level-2 rows with ``π(1 | y_1·0) = π(0 | y_1·1) = r_{y_1}`` (tabular
rows ``(0, x)`` / ``(x, 0)``; for a first-order Markov policy the transition rows after token 0
and 1, ``(a, a + x)`` / ``(b + x, b)``, which makes ``r`` the same for every ``y_1``). Then
``H(y_1·y_2) = r_{y_1}`` for both ``y_2``: the prefix ``y_1`` is undetermined (``h`` takes both
values below it) with ``Var(H_2 | y_1) = 0`` exactly, and the root too when ``r_0 = r_1``; its
children's ``Z = 1 − r + r e^{−λ}`` are equal and the KL must be 0. The third input is a drawn
binary harm on a drawn policy (tests the identity and the reference agreement). Exercised: some
prefix is undetermined (brute force) and has ``Var(H_t|p) = 0`` exactly.

Tolerance 1e-12: ``Z`` comes from a log-space backward pass and ``exp``, ``H`` from a linear one; both are O(T) roundings of 1.1e-16 on values in [0, 1], squared
differences are below 1e-15; the KL at a prefix with equal-``Z`` children is exactly 0 (constant
rule of the engine) or O(1e-16) where equality is only up to rounding.

Finding ``kl-variance-graded``: for graded harm the "iff" fails (docs/theory.md §7), and the check
exhibits it rather than restricting to binary harm. On ``V = 2, T = 2`` with
``h(0·) = ½`` surely and ``h(1·0) = 0, h(1·1) = 1`` under a uniform ``π_0(·|1)``, both children of
the root have ``H = ½`` (zero variance of ``H_1`` at the root) but different laws of ``h``, so
``Z(0) = e^{−λ/2} ≠ cosh-like Z(1) = (1 + e^{−λ})/2`` and the root's KL is positive. The measured
residual is that KL (reported, never "holds"); ``Var(H_1 | root)`` is in the quantities.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

import toysim

from . import reference as ref
from ._framework import Check
from .strategies import BINARY_HARM_KINDS, make_policy, small_instances


@jax.jit
def _prefix_quantities(levels, h, lam):
    """Per prefix: ``Var(H_t|p)``, ``Var(Z_t|p)`` under ``π_0`` and the tilt's conditional KL."""
    H = toysim.harm_martingale(levels, h)
    Z = toysim.backward(levels, jnp.exp(-lam * h))
    eq = toysim.tilt(levels, h, lam)
    var_h, var_z = [], []
    for t, lc in enumerate(levels.log_cond):
        probs = jnp.exp(lc)
        var_h.append(jnp.sum(probs * (H[t + 1].reshape(lc.shape) - H[t][:, None]) ** 2, axis=-1))
        var_z.append(jnp.sum(probs * (Z[t + 1].reshape(lc.shape) - Z[t][:, None]) ** 2, axis=-1))
    return var_h, var_z, eq.prefix_kl


def compute(inst):
    policy = inst.policy
    h = jnp.asarray(toysim.harm_values(inst.harm, policy.vocab_size, policy.horizon))
    levels = toysim.forward(policy, inst.params)
    var_h, var_z, kl = _prefix_quantities(levels, h, inst.lam)
    uniform = toysim.forward(policy, jax.tree_util.tree_map(jnp.zeros_like, inst.params))
    var_h_uniform, _, _ = _prefix_quantities(uniform, h, inst.lam)
    cat = lambda xs: np.concatenate([np.asarray(x) for x in xs])  # noqa: E731
    return {
        "lam": float(inst.lam),
        "var_h": cat(var_h),
        "var_z": cat(var_z),
        "prefix_kl": cat(kl),
        "var_h_uniform_policy": cat(var_h_uniform),
        **_reference(inst),
    }


def _reference(inst):
    """Brute-force ``Var(H_t|p)``, ``Var(Z_t|p)`` and the tilt's prefix KL, concatenated by level."""
    v = inst.policy.vocab_size
    r = ref.brute_force(inst.policy, inst.params, inst.harm, with_scores=False)
    lam = float(inst.lam)
    z = [ref.conditional_means(r.leaf, np.exp(-lam * r.h), v, t) for t in range(len(r.H))]
    var_z = [np.sum(c * (z[t + 1].reshape(-1, v) - z[t][:, None]) ** 2, axis=1) for t, c in enumerate(r.cond)]
    _, prefix_kl, _ = ref.tilt_kl(r.cond, r.leaf, r.h, lam, v)
    return {
        "ref_undetermined": ~np.concatenate(r.determined[: inst.policy.horizon]),
        "ref_var_h": np.concatenate(r.var_prefix),
        "ref_var_z": np.concatenate(var_z),
        "ref_prefix_kl": np.concatenate(prefix_kl),
    }


def residual(q):
    shrink = (1.0 - np.exp(-q["lam"])) ** 2
    identity = np.max(np.abs(q["var_z"] - shrink * q["var_h"]))
    flat = q["var_h"] == 0
    kl_at_flat = np.max(np.abs(q["prefix_kl"][flat]), initial=0.0)
    reference = ref.max_error(
        [(q["var_h"], q["ref_var_h"]), (q["var_z"], q["ref_var_z"]), (q["prefix_kl"], q["ref_prefix_kl"])]
    )
    return float(max(identity, kl_at_flat, reference))


def _exercised(q):
    """Some undetermined prefix (brute force) has ``Var(H_t|p) = 0`` exactly."""
    return bool(np.any((q["var_h"] == 0) & q["ref_undetermined"]))


@st.composite
def xor_instances(draw):
    """``V = 2, T = 3``, ``h = y_2 XOR y_3``, rows making every length-1 prefix undetermined with
    ``Var(H_2 | y_1) = 0`` (module docstring); tabular or first-order Markov, drawn logits."""
    h = toysim.table_harm([float((i >> 1 & 1) ^ (i & 1)) for i in range(8)], 2, 3)
    logit = st.floats(-2.0, 2.0)
    lam = draw(st.sampled_from([0.5, 1.0, 4.0]))
    if draw(st.booleans()):
        policy = toysim.TabularPolicy(2, 3)
        x0 = draw(logit)
        x1 = x0 if draw(st.booleans()) else draw(logit)  # r_0 = r_1: the root has zero variance too
        rows = np.asarray([[0.0, x0], [x0, 0.0], [0.0, x1], [x1, 0.0]])
        a = [np.asarray([draw(logit), draw(logit)]) for _ in range(3)]
        params = (jnp.asarray(a[0][None, :]), jnp.asarray(np.stack(a[1:])), jnp.asarray(rows))
        return toysim.Instance(policy, params, h, lam)
    policy = make_policy("markov1", 2, 3)
    a, b, x = draw(logit), draw(logit), draw(logit)
    table = np.asarray([[a, a + x], [b + x, b], [draw(logit), draw(logit)]])  # rows: after 0, 1, BOS
    params = policy.init(jax.random.key(0))._replace(logits=jnp.asarray(table))
    return toysim.Instance(policy, params, h, lam)


def binary_instances():
    """Two of three inputs from :func:`xor_instances`, one a drawn binary harm (module docstring)."""
    drawn = small_instances(harm_kinds=BINARY_HARM_KINDS, horizons=(3,)).filter(_nonconstant)
    return st.integers(0, 2).flatmap(lambda i: drawn if i == 2 else xor_instances())


def _nonconstant(inst):
    policy = inst.policy
    return np.ptp(toysim.harm_values(inst.harm, policy.vocab_size, policy.horizon)) > 0


@st.composite
def graded_counterexamples(draw):
    """``V = 2, T = 2`` tabular ``π_0`` with a uniform row at prefix ``1``; ``h = (½, ½, 0, 1)``."""
    root = np.asarray(draw(st.lists(st.floats(-2.0, 2.0), min_size=2, max_size=2)))
    row0 = np.asarray(draw(st.lists(st.floats(-2.0, 2.0), min_size=2, max_size=2)))
    params = (jnp.asarray(root[None, :]), jnp.asarray(np.stack([row0, np.zeros(2)])))
    harm = toysim.table_harm([0.5, 0.5, 0.0, 1.0], 2, 2)
    return toysim.Instance(toysim.TabularPolicy(2, 2), params, harm, draw(st.sampled_from([0.5, 1.0, 4.0])))


def compute_graded(inst):
    q = compute(inst)
    return {**q, "root_var_h": float(q["var_h"][0]), "root_kl": float(q["prefix_kl"][0])}


CHECKS = [
    Check(
        name="kl-variance-binary",
        result="(ours)",
        section="§7",
        statement="Binary harm: the tilt's KL at a prefix is 0 iff Var_{π0}(H_t | prefix) = 0, "
        "since Var(Z_t|p) = (1 − e^{−λ})² Var(H_t|p).",
        latex=r"h\in\{0,1\}:\ \mathrm{KL}(\pi^*(\cdot|p)\|\pi_0(\cdot|p))=0\iff"
        r"\mathrm{Var}_{\pi_0}(H_t\mid p)=0,\quad \mathrm{Var}(Z_t|p)=(1-e^{-\lambda})^2\mathrm{Var}(H_t|p)",
        kind="theorem",
        tolerance=1e-12,
        tolerance_reason="float64 backward passes on values in [0,1]; squared differences below 1e-15",
        instances=binary_instances,
        compute=compute,
        residual=residual,
        corruptions={
            "Var(H) under the uniform policy": lambda q: {**q, "var_h": q["var_h_uniform_policy"]},
            "tilt strength λ/2 in the identity": lambda q: {**q, "lam": q["lam"] / 2},
        },
        applies_to="tabular, Markov (order 1, 2) and MLP policies (V=2, T=3); binary harms; two "
        "thirds constructed with undetermined zero-variance prefixes (h = y2 XOR y3)",
        examples=6,
        exercised=_exercised,
    ),
    Check(
        name="kl-variance-graded",
        result="(ours)",
        section="§7",
        statement="Graded harm: zero conditional variance of H does not imply zero KL "
        "(h = ½ surely versus h ∈ {0,1} with equal odds); measured: the root's KL.",
        latex=r"\mathrm{Var}_{\pi_0}(H_1\mid\varnothing)=0\ \not\Rightarrow\ "
        r"\mathrm{KL}(\pi^*(\cdot|\varnothing)\|\pi_0(\cdot|\varnothing))=0",
        kind="finding",
        tolerance=0.0,
        tolerance_reason="a measurement, not a bound: the KL at a zero-variance prefix (positive)",
        instances=graded_counterexamples,
        compute=compute_graded,
        residual=lambda q: q["root_kl"],
        corruptions={},
        applies_to="tabular V=2, T=2 with h = (½, ½, 0, 1) and π_0(·|1) uniform",
        examples=3,
    ),
]
