"""The planted bugs: each a realistic mistake in one library module (issue 16, item 7).

A :class:`Mutant` replaces ``old`` (which must occur exactly once in ``file``) by ``new``.
``checks`` names the ``toysim check`` checks most likely to catch it; the runner tries those first
(to save time) and then every other check, so the order never decides whether a mutant is killed.
``expected`` says which work is expected to kill a mutant that survives on this branch.
"""

from __future__ import annotations

from typing import NamedTuple


class Mutant(NamedTuple):
    """One planted bug."""

    name: str
    file: str
    old: str
    new: str
    description: str
    checks: tuple[str, ...] = ()
    expected: str = ""


CORE = "core-checks branch (Fisher references, τ(y), DP chunk)"
LAW = "law-sampling branch (second-order law, sampling power)"

MUTANTS: tuple[Mutant, ...] = (
    # ---------------------------------------------------------------- _enumerate
    Mutant(
        "enumerate_unweighted_backward",
        "toysim/_engine.py",
        "    return kernel.mean(child)\n",
        "    return jnp.mean(child, axis=-1)\n",
        "the backward expectation averages the children uniformly instead of weighting them by π(v|x) (both engines)",
        ("martingale", "harm_information", "covariance_gradient_sum"),
    ),
    Mutant(
        "enumerate_no_constant_rule",
        "toysim/_engine.py",
        "expectation: Reduction = keep_constants(_expectation)\n",
        "expectation: Reduction = _expectation\n",
        "the backward expectation drops the exact-constant rule: determined states get Σ_v π(v)c, off by rounding",
        ("zero_gradient", "zero_kl", "horizon_equivalence", "prefill_standard_is_base"),
    ),
    Mutant(
        "enumerate_prefix_not_accumulated",
        "toysim/_enumerate.py",
        "log_prefix.append(shard_prefixes((log_prefix[-1][:, None] + lc).reshape(-1)))",
        "log_prefix.append(shard_prefixes((0.0 * log_prefix[-1][:, None] + lc).reshape(-1)))",
        "the tree's forward pass forgets the parent: log P(p·v) = log π(v|p) instead of log P(p) + log π(v|p)",
        ("harm_information", "covariance_gradient_sum"),
    ),
    Mutant(
        "log_partition_plain_log",
        "toysim/_engine.py",
        "    return top + jnp.log1p(kernel.mean(jnp.expm1(child - top[..., None])))\n",
        "    return top + jnp.log(kernel.mean(jnp.exp(child - top[..., None])))\n",
        "log Z in plain log/exp form: rounded to 1e-16 absolute, a relative error 1e-16/λ² in D_t",
        ("second-order-law",),
    ),
    # ---------------------------------------------------------------- _martingale
    Mutant(
        "martingale_uncentred_variance",
        "toysim/_martingale.py",
        "    return jnp.sum(p_final * (final - mean) ** 2)\n",
        "    return jnp.sum(p_final * final**2)\n",
        "Var(h) computed as E[h²] (the mean is not subtracted)",
        ("harm_information", "martingale"),
    ),
    Mutant(
        "martingale_innovation_sign",
        "toysim/_martingale.py",
        "        out.append(h_t.reshape(h_tm1.shape[0], -1) - h_tm1[:, None])\n",
        "        out.append(h_tm1[:, None] - h_t.reshape(h_tm1.shape[0], -1))\n",
        "innovation Δ_t = H_{t−1} − H_t (sign flipped): I_t unchanged, G_t has the wrong sign",
        ("covariance_gradient", "martingale", "covariance_gradient_sum"),
    ),
    # ---------------------------------------------------------------- _gradient
    Mutant(
        "gradient_missing_token_probability",
        "toysim/_engine.py",
        "        return weight[:, None] * jnp.exp(self.log_cond) * (child - centre[:, None])\n",
        "        return weight[:, None] * (child - centre[:, None])\n",
        "the tree's logit cotangent is P(p) Δ_t instead of P(p) π(v|p) Δ_t (token probability dropped)",
        ("covariance_gradient", "covariance_gradient_sum"),
    ),
    Mutant(
        "cov_sq_norm_square_of_sum",
        "toysim/_gradient.py",
        "        return jnp.sum((probs * delta) ** 2, axis=-1)\n",
        "        return jnp.sum(probs * delta, axis=-1) ** 2\n",
        "per-prefix ‖Cov(H_t, s_t)‖² as the square of a sum (Σ_v πΔ)² instead of Σ_v (πΔ)²",
        ("fisher_bound",),
        CORE,
    ),
    Mutant(
        "fisher_bound_missing_sqrt",
        "toysim/_gradient.py",
        "    return jnp.sqrt(information * traces)\n",
        "    return information * traces\n",
        "Fisher bound I_t E[tr F_t] without the square root",
        ("fisher_bound",),
    ),
    # ---------------------------------------------------------------- _horizon
    Mutant(
        "tau_off_by_one",
        "toysim/_horizon.py",
        "    for m in masks[:-1]:\n",
        "    for m in masks[1:]:\n",
        "τ(y) counts undetermined prefixes of lengths 1..T instead of 0..T−1 (off by one)",
        ("horizon_equivalence", "zero_gradient"),
        CORE,
    ),
    Mutant(
        "horizon_distribution_parent",
        "toysim/_horizon.py",
        "    open_mass = jnp.where(det_parent, 0.0, jnp.exp(step.log_p))\n",
        "    open_mass = jnp.exp(step.log_p)\n",
        "P(τ = t) counts every determined state, not only those whose parent is open",
        ("dp_matches_enumeration", "dp_long_horizon", "horizon_equivalence"),
    ),
    # ---------------------------------------------------------------- _equilibrium
    Mutant(
        "tilt_wrong_sign",
        "toysim/_equilibrium.py",
        "    return engine.leaf(-lam * h)\n",
        "    return engine.leaf(lam * h)\n",
        "the tilt uses e^{+λh} (sign of the harm term, both engines)",
        ("tilt_minimises", "tilt_kl", "zero_kl"),
    ),
    Mutant(
        "kl_by_position_reversed",
        "toysim/_objectives.py",
        "    prefix_kl = [_prefix_kl(lp, lq) for lp, lq in zip(p.log_cond, q.log_cond)]\n",
        "    prefix_kl = [_prefix_kl(lq, lp) for lp, lq in zip(p.log_cond, q.log_cond)]\n",
        "per-position KL(Q ‖ P) instead of KL(P ‖ Q) (arguments swapped)",
        ("training_convergence", "tilt_minimises", "kl_variance"),
    ),
    # ---------------------------------------------------------------- _policies
    Mutant(
        "fisher_tabular_uncentred",
        "toysim/_policies.py",
        '        """``tr F_t(p) = E[‖s_t‖² | p] = 1 − ‖π(·|p)‖²`` for a lookup parameterisation."""\n'
        "        probs = jax.nn.softmax(self.logits(params, t), axis=-1)\n"
        "        return 1.0 - jnp.sum(probs**2, axis=-1)\n",
        '        """``tr F_t(p) = E[‖s_t‖² | p] = 1 − ‖π(·|p)‖²`` for a lookup parameterisation."""\n'
        "        probs = jax.nn.softmax(self.logits(params, t), axis=-1)\n"
        "        return jnp.sum(probs, axis=-1)\n",
        "tabular Fisher trace Σ_v π(v) (uncentred) instead of 1 − Σ_v π(v)²",
        ("fisher_bound",),
        CORE,
    ),
    Mutant(
        "fisher_markov_square_of_sum",
        "toysim/_policies.py",
        '        """``tr F_t(p) = 1 − ‖π(·|p)‖²``: each prefix reads exactly one row of the table."""\n'
        "        probs = jax.nn.softmax(self.logits(params, t), axis=-1)\n"
        "        return 1.0 - jnp.sum(probs**2, axis=-1)\n",
        '        """``tr F_t(p) = 1 − ‖π(·|p)‖²``: each prefix reads exactly one row of the table."""\n'
        "        probs = jax.nn.softmax(self.logits(params, t), axis=-1)\n"
        "        return 1.0 - jnp.sum(probs, axis=-1) ** 2\n",
        "Markov Fisher trace 1 − (Σ_v π)² (square of the sum, = 0) instead of 1 − Σ_v π²",
        ("fisher_bound", "dp_matches_enumeration"),
    ),
    Mutant(
        "fisher_generic_unweighted",
        "toysim/_policies.py",
        "    return jnp.sum(probs * sq, axis=-1)\n",
        "    return jnp.sum(sq, axis=-1)\n",
        "generic (MLP) Fisher trace sums ‖∇ log π(v|p)‖² over tokens without the weights π(v|p)",
        ("fisher_bound",),
        CORE,
    ),
    # ---------------------------------------------------------------- _harms
    Mutant(
        "automaton_states_transposed",
        "toysim/_harms.py",
        "        states = transitions[states].reshape(-1)\n",
        "        states = transitions[states].T.reshape(-1)\n",
        "automaton leaf harms laid out token-major instead of lexicographically",
        ("dp_matches_enumeration",),
    ),
    # ---------------------------------------------------------------- _dp
    Mutant(
        "dp_drop_last_partial_chunk",
        "toysim/_dp.py",
        "        if rest:\n            tail, adds = chunk(n_full * size, rest)\n",
        "        if False:\n            tail, adds = chunk(n_full * size, rest)\n",
        "product per-position reductions drop the last partial chunk (T not a multiple of 128)",
        ("dp_long_horizon", "dp_matches_enumeration"),
        CORE,
    ),
    Mutant(
        "dp_fisher_uncentred",
        "toysim/_dp.py",
        "        return (1.0 - jnp.sum(pi**2, axis=-1))[:, None]  # tr F per logit row c, for every s\n",
        "        return jnp.sum(pi, axis=-1)[:, None]  # tr F per logit row c, for every s\n",
        "DP Fisher trace per row Σ_v π(v) (uncentred) instead of 1 − Σ_v π(v)²",
        ("dp_matches_enumeration", "dp_long_horizon"),
    ),
    # ---------------------------------------------------------------- _dp_recovery
    Mutant(
        "dp_harmful_q_unconditioned",
        "toysim/_engine.py",
        "            return self.pi @ child.T\n",
        "            return jnp.flip(self.pi, axis=0) @ child.T\n",
        "the product's Markov kernel reads the logit row of the wrong last token (rows reversed)",
        ("recovery_gradient", "dp_matches_enumeration"),
    ),
    Mutant(
        "dp_prefill_depth_off_by_one",
        "toysim/_recovery.py",
        "        return engine.sum_states(jax.tree_util.tree_map(lambda q, n: jnp.exp(q + n), log_q, log_n[:-1]))\n",
        "        return engine.sum_states(jax.tree_util.tree_map(lambda q, n: jnp.exp(q + n), log_q, log_n[1:]))\n",
        "the attack curve at depth k reads the no-recovery probability one token deeper (N_{k+1}), both engines",
        ("recovery_gradient", "dp_matches_enumeration"),
    ),
    Mutant(
        "dp_gibbs_missing_discount",
        "toysim/_recovery.py",
        "            return no_recovery(kernel, child, step) - jnp.logaddexp(outside, inside + step.extra[0])\n",
        "            return no_recovery(kernel, child, step) - jnp.logaddexp(outside, inside)\n",
        "the Gibbs-form normaliser without e^{μγ^{t−1}} on the recovery tokens (attack curves, both engines)",
        ("recovery_gradient", "dp_matches_enumeration"),
    ),
    Mutant(
        "dp_discount_off_by_one",
        "toysim/_reports.py",
        "    discounts_np = mu * gamma ** np.arange(T, dtype=np.float64)\n",
        "    discounts_np = mu * gamma ** np.arange(1, T + 1, dtype=np.float64)\n",
        "DP discounts μγ^t instead of μγ^{t−1}",
        ("recovery_gradient", "dp_matches_enumeration"),
    ),
    Mutant(
        "dp_deep_gradient_without_lambda",
        "toysim/_dp_recovery.py",
        "        g = lam * covariance_cotangent(step)\n",
        "        g = covariance_cotangent(step)\n",
        "the DP recovery report's gradient of λE[h] drops the factor λ (G_t of E[h] alone)",
        ("recovery_gradient", "dp_matches_enumeration", "robustness_bound"),
    ),
    # ---------------------------------------------------------------- _recovery
    Mutant(
        "recovery_discount_off_by_one",
        "toysim/_recovery.py",
        "        return self.mu * self.gamma ** np.arange(self.horizon, dtype=np.float64)\n",
        "        return self.mu * self.gamma ** np.arange(1, self.horizon + 1, dtype=np.float64)\n",
        "discounts μγ^t instead of μγ^{t−1} (off by one position)",
        ("recovery_gradient", "gibbs_form"),
    ),
    Mutant(
        "recovery_harmful_q_unconditioned",
        "toysim/_recovery.py",
        "        return log_p + jnp.where(positive, jnp.log(jnp.where(positive, mart, 1.0)), -jnp.inf) - jnp.log(total)\n",
        "        return log_p + 0.0 * jnp.where(positive, jnp.log(jnp.where(positive, mart, 1.0)), -jnp.inf)\n",
        "harmful Q marginals = π_0's state marginals (harm conditioning forgotten, both engines)",
        ("recovery_gradient", "gibbs_form"),
    ),
    Mutant(
        "recovery_penalty_complement",
        "toysim/_recovery.py",
        "    _, outside = log_recovery(step.kernel, mask)\n    return discount * jnp.sum(jnp.exp(log_q + outside))\n",
        "    outside, _ = log_recovery(step.kernel, mask)\n    return discount * jnp.sum(jnp.exp(log_q + outside))\n",
        "penalty reads π(R|p) (the complement set's non-recovery) instead of 1 − π(R|p)",
        ("recovery_gradient", "augmentation_unbiased"),
    ),
    Mutant(
        "gibbs_missing_mu",
        "toysim/_recovery.py",
        "    return tuple(jax.nn.sigmoid(z + d) for z, d in zip(logit_recovery(base, spec.mask), spec.discounts))\n",
        "    return tuple(jax.nn.sigmoid(z + d / spec.mu) for z, d in zip(logit_recovery(base, spec.mask), spec.discounts))\n",
        "Gibbs form σ(logit π_0(R|p) + γ^{t−1}) (μ missing)",
        ("gibbs_form",),
    ),
    Mutant(
        "no_recovery_pass_complement",
        "toysim/_engine.py",
        "        outside = jnp.where(mask, -jnp.inf, child)\n",
        "        outside = jnp.where(~mask, -jnp.inf, child)\n",
        "no-recovery pass sums over the recovery tokens instead of their complement",
        ("prefill_standard_is_base", "prefill_deep_below_standard"),
    ),
    Mutant(
        "attack_length_missing_one",
        "toysim/_recovery.py",
        "    return 1.0 + (math.log(mu) - math.log(gap)) / math.log(1.0 / gamma)\n",
        "    return (math.log(mu) - math.log(gap)) / math.log(1.0 / gamma)\n",
        "attack length without the leading 1 (positions counted from 0)",
        ("attack_length",),
    ),
    # ---------------------------------------------------------------- _training
    Mutant(
        "second_order_ratio_missing_2",
        "toysim/_equilibrium.py",
        "    ratio = jnp.where(info > 0, 2.0 * d / (lam2 * jnp.where(info > 0, info, 1.0)), jnp.nan)\n",
        "    ratio = jnp.where(info > 0, d / (lam2 * jnp.where(info > 0, info, 1.0)), jnp.nan)\n",
        "second_order_ratio D_t / (λ² I_t) without the factor 2",
        ("second_order_law",),
        LAW,
    ),
    # ---------------------------------------------------------------- _sampling
    Mutant(
        "sampling_baseline_includes_sample",
        "toysim/_sampling.py",
        "        reward = reward - (jnp.sum(reward) - reward) / (num_samples - 1)\n",
        "        reward = reward - jnp.sum(reward) / num_samples\n",
        "REINFORCE baseline is the mean over all samples, the sample itself included (biased)",
        ("sampling",),
        LAW,
    ),
    Mutant(
        "spillover_counts_open_prefixes",
        "toysim/_training.py",
        "            jnp.sum(jnp.where(masks[t], jnp.exp(levels.log_prefix[t]) * xlogy_kl(lc, lb), 0.0))\n",
        "            jnp.sum(jnp.where(~masks[t], jnp.exp(levels.log_prefix[t]) * xlogy_kl(lc, lb), 0.0))\n",
        "spillover sums the KL of the prefixes where the harm is still open instead of the determined ones",
        ("spillover",),
    ),
    # ---------------------------------------------------------------- _methods, _objectives, _compare (§11)
    Mutant(
        "ipo_preference_flipped",
        "toysim/_methods.py",
        "    g = (probs[None, :] * _sigmoid(beta_r * (values[None, :] - values[:, None]))).sum(axis=1)\n",
        "    g = (probs[None, :] * _sigmoid(beta_r * (values[:, None] - values[None, :]))).sum(axis=1)\n",
        "IPO's g(h) with the preference reversed: E[σ(β_r (h − h(y')))] rewards harm",
        ("reweighting_shallow", "dpo_optimum"),
    ),
    Mutant(
        "dpo_ratio_inverted",
        "toysim/_methods.py",
        'return -(check_positive("beta_r", beta_r) / check_positive("beta", beta)) * np.asarray(',
        'return -(check_positive("beta", beta) / check_positive("beta_r", beta_r)) * np.asarray(',
        "DPO's closed form as the tilt at λ = β/β_r instead of β_r/β",
        ("dpo_optimum", "reweighting_shallow"),
    ),
    Mutant(
        "best_of_n_ties_not_subtracted",
        "toysim/_methods.py",
        "        log_q = n * log_s + np.log(-np.expm1(n * (log_above - log_s)))\n",
        "        log_q = n * log_s\n",
        "best-of-N's level probability S(h)^N without − S⁺(h)^N: P(least harm ≥ h) instead of = h",
        ("best_of_n_kl", "reweighting_shallow"),
    ),
    Mutant(
        "dpo_loss_without_reference",
        "toysim/_objectives.py",
        "    return levels.log_prefix[-1] - base.log_prefix[-1]\n",
        "    return levels.log_prefix[-1]\n",
        "the DPO/IPO log-ratio ρ = log π without − log π_0 (the reference forgotten)",
        ("dpo_gradient_flow", "dpo_optimum"),
    ),
    Mutant(
        "sft_label_smoothing",
        "toysim/_objectives.py",
        "    cross = -jnp.sum(jnp.where(data > 0, data * log_p, 0.0))\n",
        "    cross = -jnp.sum((0.9 * data + 0.1 / data.shape[0]) * log_p)\n",
        "SFT's cross-entropy with label smoothing: every prefix is covered and moves",
        ("sft_coverage",),
    ),
    Mutant(
        "frontier_bracket_reversed",
        "toysim/_compare.py",
        "        if f_mid > 0:\n            lo, f_lo = lam, f_mid\n",
        "        if f_mid < 0:\n            lo, f_lo = lam, f_mid\n",
        "the frontier's root search on λ moves the wrong end of its bracket: converges away from E_λ[h] = target",
        ("frontier_binary", "methods_above_frontier"),
    ),
    # ---------------------------------------------------------------- _report
    Mutant(
        "report_squared_gradient_norm",
        "toysim/_analysis.py",
        "            jnp.sqrt(_sq_norm(g)),\n",
        "            _sq_norm(g),\n",
        "the report's ‖G_t‖ is the squared norm (square root forgotten)",
        ("dp_matches_enumeration", "fisher_bound"),
    ),
)
