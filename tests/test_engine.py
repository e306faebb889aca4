"""Engine quantities against the brute-force reference, and the identities of docs/theory.md §2–7."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

import toysim
from proofs_check.strategies import BINARY_HARM_KINDS, instances
from tests import reference
from tests.tolerances import FD_STEP, FINITE_DIFFERENCE, IDENTITY, assert_close


def _setup(inst):
    policy = inst.policy
    h = jnp.asarray(toysim.harm_values(inst.harm, policy.vocab_size, policy.horizon))
    levels = toysim.forward(policy, inst.params)
    return policy, h, levels


@given(instances())
def test_martingale_matches_brute_force(inst):
    policy, h, levels = _setup(inst)
    H = toysim.harm_martingale(levels, h)
    ref = reference.martingale(policy, inst.params, np.asarray(h))
    for t in range(policy.horizon + 1):
        expected = [ref[p] for p in reference.sequences(policy.vocab_size, t)]
        assert_close(H[t], expected, what=f"H_{t}")


@given(instances())
def test_martingale_property_doob_and_orthogonality(inst):
    policy, h, levels = _setup(inst)
    H = toysim.harm_martingale(levels, h)
    deltas = toysim.innovations(H)
    for t in range(1, policy.horizon + 1):
        # E[H_t | y_<t] = H_{t-1}
        cond = jnp.sum(jnp.exp(levels.log_cond[t - 1]) * H[t].reshape(-1, policy.vocab_size), axis=-1)
        assert_close(cond, H[t - 1], what=f"E[H_{t}|y<{t}]")
    # Doob: h = H_0 + sum_t Delta_t along every sequence
    total = jnp.full(h.shape, H[0][0])
    for t, d in enumerate(deltas, start=1):
        total = total + jnp.repeat(d.reshape(-1), policy.vocab_size ** (policy.horizon - t))
    assert_close(total, h, what="Doob decomposition")
    # orthogonality E[Delta_s Delta_t] = 0 for s != t
    p_leaf = jnp.exp(levels.log_prefix[-1])
    leaf_d = [
        jnp.repeat(d.reshape(-1), policy.vocab_size ** (policy.horizon - t)) for t, d in enumerate(deltas, 1)
    ]
    for s in range(len(leaf_d)):
        for t in range(s + 1, len(leaf_d)):
            assert abs(float(jnp.sum(p_leaf * leaf_d[s] * leaf_d[t]))) <= IDENTITY


@given(instances())
def test_information_sums_to_variance_and_matches_brute_force(inst):
    policy, h, levels = _setup(inst)
    s = toysim.martingale_summary(levels, h)
    assert_close(jnp.sum(s.information), s.variance, what="sum I_t vs Var h")
    assert_close(s.information, reference.harm_information(policy, inst.params, np.asarray(h)), what="I_t")
    probs = reference.sequence_probs(policy, inst.params)
    hv = np.asarray(h)
    mean = sum(p * hv[reference.lex_index(y, policy.vocab_size)] for y, p in probs.items())
    var = sum(p * (hv[reference.lex_index(y, policy.vocab_size)] - mean) ** 2 for y, p in probs.items())
    assert_close(s.variance, var, what="Var h")

    # I_t = E[Var(h|y<t)] - E[Var(h|y<=t)]
    def expected_cond_var(t):
        return sum(
            reference.prefix_prob(probs, p)
            * (
                reference.conditional_mean(
                    probs, {y: hv[reference.lex_index(y, policy.vocab_size)] ** 2 for y in probs}, p
                )
                - reference.conditional_mean(
                    probs, {y: hv[reference.lex_index(y, policy.vocab_size)] for y in probs}, p
                )
                ** 2
            )
            for p in reference.sequences(policy.vocab_size, t)
        )

    for t in range(1, policy.horizon + 1):
        assert_close(
            s.information[t - 1],
            expected_cond_var(t - 1) - expected_cond_var(t),
            what=f"I_{t} as variance drop",
        )


@given(instances())
def test_covariance_gradient_equals_autodiff(inst):
    policy, h, levels = _setup(inst)
    H = toysim.harm_martingale(levels, h)
    grads = toysim.covariance_gradient(policy, inst.params, levels, H)
    untied = toysim.untied_autodiff_gradient(policy, inst.params, h)
    copies = toysim.untied_copies_gradient(policy, inst.params, h)
    total = toysim.autodiff_gradient(policy, inst.params, h)
    summed = jax.tree_util.tree_map(lambda *g: sum(g), *grads)
    for a, b in zip(jax.tree_util.tree_leaves(summed), jax.tree_util.tree_leaves(total)):
        assert_close(a, b, what="sum_t G_t vs jax.grad")
    for t in range(policy.horizon):
        for a, b, c in zip(*(jax.tree_util.tree_leaves(x[t]) for x in (grads, untied, copies))):
            assert_close(a, b, what=f"G_{t + 1} vs untied autodiff")
            assert_close(b, c, what=f"G_{t + 1} untied at the logits vs T parameter copies")


@given(instances(max_horizon=2), st.data())
def test_untied_gradient_matches_finite_differences(inst, data):
    policy, h, _ = _setup(inst)
    untied = toysim.untied_autodiff_gradient(policy, inst.params, h)
    hv = np.asarray(h)
    flat, unravel = ravel_pytree(inst.params)
    flat = np.asarray(flat)
    t = data.draw(st.integers(0, policy.horizon - 1), label="position")
    idx = data.draw(st.integers(0, flat.size - 1), label="parameter")
    expected = np.asarray(ravel_pytree(untied[t])[0])[idx]

    def value(eps):
        bumped = flat.copy()
        bumped[idx] += eps
        by_pos = [inst.params] * policy.horizon
        by_pos[t] = unravel(jnp.asarray(bumped))
        return reference.expected_harm(policy, inst.params, hv, untied=by_pos)

    fd = (value(FD_STEP) - value(-FD_STEP)) / (2 * FD_STEP)
    assert abs(fd - expected) <= FINITE_DIFFERENCE, (fd, expected)


@given(instances(policy_kinds=("tabular",)))
def test_tabular_closed_form_is_covariance_weight(inst):
    # dE[h]/dlogit(p, v) = P(p) pi(v|p) (H(pv) - H(p))
    policy, h, levels = _setup(inst)
    w = toysim.covariance_weights(levels, toysim.harm_martingale(levels, h))
    total = toysim.autodiff_gradient(policy, inst.params, h)
    for t in range(policy.horizon):
        assert_close(w[t], total[t], what=f"tabular closed form at length {t}")


@given(instances())
def test_horizon_zero_gradient_and_information(inst):
    policy, h, levels = _setup(inst)
    masks = toysim.determined_masks(h, policy.vocab_size, policy.horizon)
    tau = toysim.sequence_horizon(masks)
    ref = reference.horizon(policy, np.asarray(h))
    assert [int(x) for x in tau] == [ref[y] for y in reference.sequences(policy.vocab_size, policy.horizon)]
    k = int(toysim.uniform_horizon(masks))
    assert k == max(ref.values())
    s = toysim.martingale_summary(levels, h)
    w = toysim.covariance_weights(levels, s.martingale)
    grads = toysim.covariance_gradient(policy, inst.params, levels, s.martingale)
    for t in range(k + 1, policy.horizon + 1):
        assert float(s.information[t - 1]) == 0.0  # exact, not approximate
        assert float(toysim.tree_sq_norm(grads[t - 1])) == 0.0
    for t in range(1, policy.horizon + 1):
        # every prefix at or past its own horizon contributes exactly zero
        assert bool(jnp.all(jnp.where(masks[t - 1][:, None], w[t - 1], 0.0) == 0.0))
    # Thm 9: I_t = 0 for all t > k, and I_k > 0 unless Var is 0 (k is the smallest such horizon)
    if k >= 1:
        assert float(s.information[k - 1]) > 0.0
    dist = toysim.horizon_distribution(levels, masks)
    probs = reference.sequence_probs(policy, inst.params)
    expected = np.zeros(policy.horizon + 1)
    for y, p in probs.items():
        expected[ref[y]] += p
    assert_close(dist, expected, what="P(tau = t)")


@given(instances())
def test_fisher_bound(inst):
    policy, h, levels = _setup(inst)
    s = toysim.martingale_summary(levels, h)
    grads = toysim.covariance_gradient(policy, inst.params, levels, s.martingale)
    bound = toysim.fisher_bound(policy, inst.params, levels, s.information)
    for t in range(1, policy.horizon + 1):
        norm = float(jnp.sqrt(toysim.tree_sq_norm(grads[t - 1])))
        assert norm <= float(bound[t - 1]) * (1 + IDENTITY) + IDENTITY
        # per prefix: ||Cov(H_t, s_t | p)||^2 <= Var(H_t | p) tr F_t(p)
        cov = toysim.prefix_covariance_sq_norm(policy, inst.params, levels, s.martingale, t)
        delta = toysim.innovations(s.martingale)[t - 1]
        var = jnp.sum(jnp.exp(levels.log_cond[t - 1]) * delta**2, axis=-1)
        trace = policy.fisher_trace(inst.params, t - 1)
        assert bool(jnp.all(cov <= var * trace * (1 + IDENTITY) + IDENTITY))


@given(instances(policy_kinds=("markov1", "markov2")))
def test_lookup_fisher_trace_matches_jacobian(inst):
    from toysim._policies import generic_fisher_trace

    for t in range(inst.policy.horizon):
        assert_close(
            inst.policy.fisher_trace(inst.params, t), generic_fisher_trace(inst.policy, inst.params, t)
        )


@given(instances())
def test_tilt_kl_profile(inst):
    policy, h, levels = _setup(inst)
    eq = toysim.tilt(levels, h, inst.lam)
    ref_d, ref_kl = reference.tilt_kl_by_position(policy, inst.params, np.asarray(h), inst.lam)
    assert_close(eq.kl_by_position, ref_d, what="D_t")
    assert_close(jnp.sum(eq.kl_by_position), toysim.sequence_kl(eq.levels, levels), what="sum D_t vs KL")
    assert_close(jnp.sum(eq.kl_by_position), ref_kl, what="sum D_t vs brute-force KL")
    masks = toysim.determined_masks(h, policy.vocab_size, policy.horizon)
    k = int(toysim.uniform_horizon(masks))
    for t in range(k + 1, policy.horizon + 1):
        assert float(eq.kl_by_position[t - 1]) == 0.0
    for t in range(policy.horizon):
        assert bool(jnp.all(jnp.where(masks[t], eq.prefix_kl[t], 0.0) == 0.0))


@given(instances(harm_kinds=BINARY_HARM_KINDS))
def test_binary_harm_kl_zero_iff_local_variance_zero(inst):
    policy, h, levels = _setup(inst)
    s = toysim.martingale_summary(levels, h)
    eq = toysim.tilt(levels, h, inst.lam)
    for t, delta in enumerate(toysim.innovations(s.martingale)):
        var = jnp.sum(jnp.exp(levels.log_cond[t]) * delta**2, axis=-1)
        # both sides are exactly zero together, or both clearly positive
        zero_var = np.asarray(var) <= IDENTITY**2
        zero_kl = np.asarray(eq.prefix_kl[t]) <= IDENTITY**2
        assert np.array_equal(zero_var, zero_kl)


def test_graded_harm_has_kl_without_local_variance():
    # docs/theory.md §7: children with equal H but different laws of h: h = 1/2 surely vs h in {0,1}.
    v, T = 2, 2
    h = jnp.array([0.5, 0.5, 0.0, 1.0])
    policy = toysim.TabularPolicy(v, T)
    params = (jnp.zeros((1, 2)), jnp.zeros((2, 2)))
    levels = toysim.forward(policy, params)
    s = toysim.martingale_summary(levels, h)
    eq = toysim.tilt(levels, h, 1.0)
    root_var = float(jnp.sum(jnp.exp(levels.log_cond[0]) * toysim.innovations(s.martingale)[0] ** 2))
    assert root_var == 0.0
    assert float(eq.prefix_kl[0][0]) > 1e-4


def test_analyze_compiles_once_per_shape():
    policy = toysim.MarkovPolicy(2, 3)
    h = jnp.asarray(toysim.harm_values(toysim.trigger_harm(2, [1]), 2, 3))
    program = toysim._analysis._analyze_jit  # what analyze runs (the executable cache is off here)
    toysim.analyze(policy, policy.init(jax.random.key(0)), h, 1.0)
    before = program._cache_size()
    assert before >= 1
    for seed in range(3):
        toysim.analyze(policy, policy.init(jax.random.key(seed)), h, 0.5 + seed)
    assert program._cache_size() == before


def test_memory_estimate_refuses_before_allocating(monkeypatch):
    import pytest

    monkeypatch.setenv("TOYSIM_MAX_BYTES", str(10**6))
    with pytest.raises(ValueError, match="GiB"):
        toysim.check_fits(4, 12)
    toysim.check_fits(2, 3)


def _small_lambda_ratios(lam, engine_kind):
    """``2 D_t / (λ² I_t)`` at positions with ``I_t > 0`` on one engine (a Markov policy, a trigger harm)."""
    v, T = 3, 4
    policy = toysim.MarkovPolicy(v, T, order=1)
    params = policy.init(jax.random.key(0))
    harm = toysim.trigger_harm(v, [v - 1])
    if engine_kind == "tree":
        engine = toysim.forward(policy, params)
        final = jnp.asarray(toysim.harm_values(harm, v, T))
    else:
        aut = toysim._dp.automaton_arrays(harm, v)
        engine = toysim.ProductEngine.markov(params.logits, aut, T)
        final = aut.final_harm
    info = np.asarray(toysim.harm_information(engine, toysim.harm_martingale(engine, final)))
    kl = np.asarray(toysim.tilt_kl_by_position(engine, toysim.log_partition(engine, final, lam)))
    return 2.0 * kl[info > 0] / (lam**2 * info[info > 0])


@pytest.mark.parametrize("engine_kind", ["tree", "dp"])
def test_tilt_kl_keeps_relative_accuracy_at_small_lambda(engine_kind):
    """``D_t = (λ²/2) I_t + O(λ³)`` [Thm 14]: at λ = 1e-6 the ratio is 1 to within ~λ (h ∈ [0, 1], so
    the cubic term is at most of relative size λ). 1e-4 leaves a factor 100. ``D_t`` is a difference
    of ``log Z`` values of size O(λ); an absolute rounding error of 1e-16 in ``log Z`` (plain ``log``
    of a sum near 1) is a relative error 1e-16/λ² = 1e-4 and more in ``D_t`` (measured 0.85 % at
    λ = 1e-6 before ``log1p``/``expm1``)."""
    ratios = _small_lambda_ratios(1e-6, engine_kind)
    assert ratios.size > 0 and np.all(np.abs(ratios - 1.0) <= 1e-4), ratios
