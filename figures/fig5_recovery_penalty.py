"""Figure 5: the recovery penalty gives signal beyond the harm horizon.

Claim: at ``θ_0`` the plain objective's per-position gradient ``λ‖G_t‖`` (covariance form [Thm 8])
is exactly zero for ``t > k`` [Thm 10], while the deep objective ``L_deep`` [Def 16] has a
non-zero gradient at every position, carried beyond ``k`` by the recovery term
``−μγ^{t−1} E_Q[∇π_θ(R | y_<t)]``; after training, the standard optimum's ``D_t`` is exactly zero
beyond ``k`` and the deep optimum's is not [Thm 19] (docs/theory.md §8).

Instance (shared with figure 6, computed once per process by :func:`deep_instance`): a tabular base
policy ``π_0`` with Gaussian logits, a deadline harm (token ``V−1`` within the first ``k``
positions), recovery set ``R = {0}``, ``Q = π_0`` conditioned on harm, ``λ = 1``, ``μ = 3``,
``γ = 0.6``. The standard optimum is the closed-form tilt ``π* ∝ π_0 e^{−λh}``. The deep optimum is
the minimiser of the *separable* objective (``toysim.separable_objective``, trained by
the certified Newton optimizer of ``train_deep``), the one for which the Gibbs form [Thm 20] is exact past the horizon;
its KL term weights prefixes by ``Q`` rather than by ``π_θ``, so before the horizon it moves the
policy further from ``π_0`` than the tilt does. The joint ``L_deep`` optimum is not drawn: it
saturates (recovery pushed to 1 after harmful prefixes whose probability it drives to ~0; see
``proofs_check/gibbs_form.py``) and would cost a second compilation.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import toysim
from toysim import Objective, certify_values

from . import _style

NAME = "fig5_recovery_penalty"
FULL = {"vocab_size": 3, "horizon": 5, "deadline": 2}
TINY = {"vocab_size": 2, "horizon": 3, "deadline": 1}
POLICY_SEED = 0
LAM = 1.0
MU = 3.0
GAMMA = 0.6
RECOVERY = (0,)
# Maximal Newton steps for the separable optimum (it stops at ‖∇L‖ <= GRAD_TOL, ~10 steps).
STEPS = 300
GRAD_TOL = 1e-13
# The stated bound on |v(θ) − v(θ*)| of every drawn number of the trained deep optimum (its D_t,
# attack success and recovery probabilities): each run's local certificate
# (toysim.certify_values) must be below it; values at or below it are drawn as bounds.
CERTIFIED_TOL = 1e-11
# float64 rounding of a per-position KL or a probability summed over a few hundred prefixes.
ROUNDING = 1e-15
TRAINED = {"kl_deep": CERTIFIED_TOL, "gibbs_gap_past_horizon": CERTIFIED_TOL}


class DeepInstance(NamedTuple):
    """The instance of figures 5 and 6 and every number they draw (numpy, per position)."""

    k: int
    p_min: float
    numbers: dict[str, np.ndarray]
    bounds: dict[str, float]


def _deep_values(logits, base, spec):
    """The trained numbers of figures 5 and 6 as one flat vector of the deep optimum's logits:
    ``D_t`` (T), attack success (T), then ``π(R|p)`` at every prefix, level by level."""
    levels = toysim.levels_from_log_cond(tuple(jax.nn.log_softmax(z, axis=-1) for z in logits))
    inside, _ = toysim.log_recovery_probability(levels, spec.mask)
    return jnp.concatenate(
        [toysim.kl_by_position(levels, base), toysim.attack_success(levels, spec)]
        + [jnp.ravel(jnp.exp(x)) for x in inside]
    )


@functools.partial(jax.jit, static_argnums=(0,))
def _setup(policy, key, h):
    """``θ_0``, ``π_0``'s levels, ``Q``'s prefix marginals, the tilt's levels and ``k``: one program.

    ``Q_t(p) = P_0(p) H_0(p) / E_0[h]`` is the formula of ``toysim.harmful_prefix_marginals``, written
    here inside the compiled program (called eagerly it dispatches one small kernel per operation).
    """
    params = policy.init(key, scale=1.0)
    base = toysim.forward(policy, params)
    H = toysim.backward(base, h)
    q = tuple(jnp.exp(base.log_prefix[t]) * H[t] / H[0][0] for t in range(policy.horizon))
    masks = toysim.determined_masks(h, policy.vocab_size, policy.horizon)
    return params, base, q, toysim.standard_optimum(base, h, LAM), masks, toysim.uniform_horizon(masks)


def _tabular_log_probs(params):
    """Every ``log π(v|p)`` of tabular logits: the gauge of ``train_deep``'s certificate (each row's
    softmax shift leaves the policy unchanged), the same map ``toysim.train_deep`` certifies with."""
    return jnp.concatenate([jnp.ravel(jax.nn.log_softmax(z, axis=-1)) for z in params])


def _norms(grads):
    return jnp.sqrt(jnp.stack([toysim.tree_sq_norm(g) for g in grads]))


@functools.partial(jax.jit, static_argnums=(0,))
def _measures(policy, params, base, h, spec, standard, deep):
    """Every per-position number of figures 5 and 6, in one compiled program."""
    plain = toysim.covariance_gradient(policy, params, base, toysim.harm_martingale(base, h))
    out = {
        "plain": LAM * _norms(plain),
        "deep": _norms(toysim.deep_gradient_by_position(policy, params, base, h, LAM, spec)),
        "recovery": _norms(toysim.recovery_gradient(policy, params, spec)),
        "kl_standard": toysim.kl_by_position(standard, base),
        "kl_deep": toysim.kl_by_position(deep, base),
    }
    for name, levels in (("base", base), ("standard", standard), ("deep", deep)):
        out[f"attack_{name}"] = toysim.attack_success(levels, spec)
        inside, _ = toysim.log_recovery_probability(levels, spec.mask)
        out[f"recovery_prob_{name}"] = tuple(jnp.exp(x) for x in inside)
    out["gibbs"] = toysim.gibbs_recovery(base, spec)
    return out


@functools.cache
def deep_instance(vocab_size: int, horizon: int, deadline: int) -> DeepInstance:
    """The shared instance, its standard (tilt) and deep (separable, trained) optima, and numbers.

    Cached: the Newton step compiles once per shape, and figures 5 and 6 read the same optimum.
    Per-prefix quantities are reduced here to per-position ones: ``min_recovery_<policy> (T,)`` =
    ``min π(R|p)`` over prefixes of length ``t − 1`` with ``Q(p) > 0``; ``gibbs_gap_past_horizon``
    = ``max |π_deep(R|p) − σ(logit π_0(R|p) + μγ^{t−1})|`` over such prefixes that are determined.
    """
    jax.config.update("jax_enable_x64", True)
    policy = toysim.TabularPolicy(vocab_size, horizon)
    h = jnp.asarray(
        toysim.harm_values(toysim.deadline_harm(vocab_size, [vocab_size - 1], deadline), vocab_size, horizon)
    )
    params, base, q, standard, masks, k = _setup(policy, jax.random.key(POLICY_SEED), h)
    spec = toysim.recovery_spec(vocab_size, RECOVERY, [np.asarray(x) for x in q], mu=MU, gamma=GAMMA)
    deep, result = toysim.train_deep(base, h, LAM, spec, objective="separable", steps=STEPS, tol=GRAD_TOL)
    if not result.certificate.converged:
        raise ValueError(f"{NAME}: the deep optimum is not certified: {result.certificate.message()}")
    _, bound = certify_values(
        Objective(toysim.separable_objective),
        result.params,
        Objective(_deep_values),
        args=(base, h, jnp.float64(LAM), spec),
        value_args=(base, spec),
        gauge=Objective(_tabular_log_probs),
        rounding=ROUNDING,
    )
    # per-prefix recovery bounds; a min over prefixes moves by at most the largest of them
    bounds = {
        "kl_deep": float(np.max(bound[:horizon])),
        "attack_deep": float(np.max(bound[horizon : 2 * horizon])),
    }
    bounds["recovery_deep"] = float(np.max(bound[2 * horizon :]))
    if not max(bounds.values()) <= CERTIFIED_TOL:
        raise ValueError(
            f"{NAME}: the deep optimum's numbers are certified only to {bounds} > {CERTIFIED_TOL:g}"
        )
    raw = jax.tree_util.tree_map(np.asarray, _measures(policy, params, base, h, spec, standard, deep))
    where = [x > 0 for x in spec.q_prefix]
    past = [w & np.asarray(m) for w, m in zip(where, masks[:-1])]
    numbers = {key: raw[key] for key in raw if not key.startswith(("recovery_prob", "gibbs"))}
    for name in ("base", "standard", "deep"):
        probs = raw[f"recovery_prob_{name}"]
        numbers[f"min_recovery_{name}"] = np.array([p[w].min() for p, w in zip(probs, where)])
    gaps = [np.abs(a - b)[w] for a, b, w in zip(raw["recovery_prob_deep"], raw["gibbs"], past) if w.any()]
    numbers["gibbs_gap_past_horizon"] = np.asarray(max(float(g.max()) for g in gaps))
    return DeepInstance(
        k=int(k),
        p_min=float(min(p.min() for p in raw["recovery_prob_base"])),
        numbers=numbers,
        bounds=bounds,
    )


def data(vocab_size: int, horizon: int, deadline: int) -> dict[str, np.ndarray]:
    """Per-position gradient norms at ``θ_0`` and per-position KL of both optima.

    Returns:
      ``positions (T,)``; ``plain (T,)`` = ``λ‖G_t‖`` in covariance form (the plain objective's
      gradient at ``θ_0``, where the KL's gradient vanishes); ``deep (T,)`` = the norm of the
      position-untied autodiff gradient of ``L_deep`` at ``θ_0``; ``recovery (T,)`` = the closed-form
      recovery gradient ``μγ^{t−1}‖E_Q[∇π_θ(R|y_<t)]‖``; ``kl_standard (T,)`` and ``kl_deep (T,)``
      = ``D_t`` of the tilt and of the separable deep optimum; ``gibbs_gap_past_horizon`` =
      ``max |π_deep(R|p) − σ(logit π_0(R|p) + μγ^{t−1})|`` over determined prefixes with
      ``Q(p) > 0``; ``k``, ``lam``, ``mu``, ``gamma``. The deep optimum's numbers are certified to
      :data:`CERTIFIED_TOL` (``deep_instance`` refuses otherwise).
    """
    inst = deep_instance(vocab_size, horizon, deadline)
    keys = ("plain", "deep", "recovery", "kl_standard", "kl_deep", "gibbs_gap_past_horizon")
    return {
        "positions": np.arange(1, horizon + 1),
        **{key: inst.numbers[key] for key in keys},
        "k": np.asarray(inst.k),
        "lam": np.asarray(LAM),
        "mu": np.asarray(MU),
        "gamma": np.asarray(GAMMA),
    }


def _bars(ax, t, left, right, left_label, right_label):
    ax.bar(t - 0.19, left, width=0.36, color=_style.OKABE_ITO["sky"], label=left_label)
    ax.bar(t + 0.19, right, width=0.36, color=_style.OKABE_ITO["vermillion"], label=right_label)


def _zero_marks(ax, t, values, k):
    """Write ``0`` above the positions past ``k`` where ``values`` is exactly zero (log axes hide it)."""
    for x, v in zip(t, values):
        if x > k and v == 0.0:
            ax.annotate(
                "0",
                xy=(x - 0.19, 0.0),
                xycoords=("data", "axes fraction"),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=6.5,
                color=_style.OKABE_ITO["blue"],
            )


def plot(numbers: dict[str, np.ndarray]):
    """(a) gradient norms at ``θ_0``, plain vs deep; (b) ``D_t`` of the two optima. Log y axes."""
    fig, (ax_a, ax_b) = _style.figure(2, 1, height=3.9)
    t, k = numbers["positions"], int(numbers["k"])
    horizon = int(t[-1])
    lam, mu, gamma = float(numbers["lam"]), float(numbers["mu"]), float(numbers["gamma"])

    _bars(
        ax_a,
        t,
        numbers["plain"],
        numbers["deep"],
        r"plain: $\lambda\|G_t\|$ (0 past $k$)",
        r"deep: $\|\nabla_{\theta_t} L_{\rm deep}\|$",
    )
    ax_a.plot(
        t + 0.19, numbers["recovery"], "_", color="black", ms=7, mew=1.0, label="recovery term (closed form)"
    )
    ax_a.set_yscale("log")
    _zero_marks(ax_a, t, numbers["plain"], k)
    ax_a.set_ylabel("gradient norm at $\\theta_0$")
    _style.panel_label(
        ax_a, rf"(a) gradient by position ($\lambda={lam:g}$, $\mu={mu:g}$, $\gamma={gamma:g}$)"
    )

    _bars(
        ax_b,
        t,
        numbers["kl_standard"],
        numbers["kl_deep"],
        "standard optimum (tilt)",
        "deep optimum (separable)",
    )
    ax_b.set_yscale("log")
    _zero_marks(ax_b, t, numbers["kl_standard"], k)
    ax_b.set_ylabel(r"$D_t$ (nats)")
    ax_b.set_xlabel(_style.SYMBOL["t"])
    _style.panel_label(ax_b, r"(b) per-position KL to $\pi_0$ after training")

    for ax in (ax_a, ax_b):
        _style.mark_horizon(ax, k, label=r"$k$")
        _style.integer_positions(ax, horizon)
        ax.legend(loc="upper right", handlelength=1.0, fontsize=6.5)
    # room above the bars past the horizon for the legend
    for ax, keys in ((ax_a, ("plain", "deep", "recovery")), (ax_b, ("kl_standard", "kl_deep"))):
        values = np.concatenate([numbers[key] for key in keys])
        low, high = values[values > 0].min(), values.max()
        ax.set_ylim(low / 10.0, high * 4.0)
    return fig


def main(out_dir=None):
    """Write ``fig5_recovery_penalty.png`` and ``.pdf``."""
    from . import main_for

    return main_for(NAME, out_dir)


if __name__ == "__main__":
    main()
