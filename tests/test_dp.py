"""The automaton DP engine against the enumeration engine, and its input checks.

Every DP quantity is compared with the enumeration engine (itself checked against the brute-force
reference in ``test_engine.py``) at ``IDENTITY`` = 1e-10: both are float64 evaluations of the same
sums in a different order. Automata are padded with unreachable states to a fixed ``S`` so that
every example reuses a few compiled shapes, which also checks that unreachable states are inert.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import toysim
from proofs_check.strategies import harms
from tests.tolerances import FD_STEP, FINITE_DIFFERENCE, IDENTITY, assert_close
from toysim import _dp, _memory
from toysim._cli import main
from toysim._gradient import covariance_gradient, untied_autodiff_gradient
from toysim._harms import automaton_states

PADDED_STATES = 6
HORIZON = 3
AUTOMATON_KINDS = ("deadline", "first_decisive", "trigger", "graded", "automaton")
FIELDS = (
    "expected_harm",
    "harm_variance",
    "harm_information",
    "gradient_norm_by_position",
    "autodiff_gradient_norm_by_position",
    "fisher_bound_by_position",
    "horizon_distribution",
    "uniform_horizon",
    "equilibrium_kl_by_position",
    "equilibrium_kl",
)


def pad(harm, vocab_size, seed):
    """The same DFA with unreachable states appended (random transitions and harms)."""
    n = harm.transitions.shape[0]
    if n > PADDED_STATES:
        return harm
    rng = np.random.default_rng(seed)
    extra = rng.integers(0, PADDED_STATES, size=(PADDED_STATES - n, vocab_size))
    trans = np.concatenate([harm.transitions, extra])
    final = np.concatenate([harm.final_harm, rng.integers(0, 3, size=PADDED_STATES - n) / 2.0])
    return toysim.automaton_harm(harm.start, trans, final, vocab_size)


@st.composite
def markov_instances(draw):
    """Random first-order Markov instances with automaton harms; ``T = 3`` and ``S = 6`` fixed so
    that only ``V`` changes the compiled shapes."""
    vocab_size = draw(st.integers(2, 3))
    horizon = HORIZON
    policy = toysim.MarkovPolicy(vocab_size, horizon, order=1)
    scale = draw(st.sampled_from([0.3, 1.0, 3.0]))
    params = policy.init(jax.random.key(draw(st.integers(0, 2**31 - 1))), scale=scale)
    harm = draw(harms(vocab_size, horizon, AUTOMATON_KINDS))
    harm = pad(harm, vocab_size, draw(st.integers(0, 2**31 - 1)))
    lam = draw(st.sampled_from([0.1, 1.0, 4.0]))
    return toysim.Instance(policy, params, harm, lam)


def enumerate_analysis(inst):
    policy = inst.policy
    h = jnp.asarray(toysim.harm_values(inst.harm, policy.vocab_size, policy.horizon))
    return toysim.analyze(policy, inst.params, h, inst.lam), h


@settings(max_examples=20)
@given(markov_instances())
def test_dp_matches_enumeration(inst):
    dp = _dp.dp_analyze(inst.policy, inst.params, inst.harm, inst.lam)
    ref, _ = enumerate_analysis(inst)
    for field in FIELDS:
        assert_close(getattr(dp, field), getattr(ref, field), what=field)
    assert float(dp.gradient_autodiff_max_abs_error) <= IDENTITY


@functools.partial(jax.jit, static_argnums=0)
def enumeration_gradients(policy, params, h):
    levels = toysim.forward(policy, params)
    cov = covariance_gradient(policy, params, levels, toysim.harm_martingale(levels, h))
    return cov, untied_autodiff_gradient(policy, params, h)


@functools.partial(jax.jit, static_argnums=0)
def enumeration_tilt(policy, params, h, lam):
    eq = toysim.tilt(toysim.forward(policy, params), h, lam)
    return toysim.martingale_summary(eq.levels, h)


@settings(max_examples=10)
@given(markov_instances())
def test_dp_martingale_and_gradients_per_prefix(inst):
    policy, params, harm = inst.policy, inst.params, inst.harm
    v, T = policy.vocab_size, policy.horizon
    ref, _ = enumerate_analysis(inst)
    dp = _dp.dp_analyze(policy, params, harm, inst.lam)
    for t in range(T + 1):
        states = automaton_states(harm, v, t)
        last = np.arange(v**t) % v if t else np.full(1, v)
        assert_close(dp.martingale[t][last, states], ref.martingale[t], what=f"H_{t} per prefix")
    aut = _dp.automaton_arrays(harm, v)
    h = jnp.asarray(toysim.harm_values(harm, v, T))
    cov, untied = enumeration_gradients(policy, params, h)
    dp_cov = _dp.dp_covariance_gradients(params.logits, aut, T)
    dp_untied = _dp.dp_untied_gradients(params.logits, aut, T)
    for t in range(T):
        assert_close(dp_cov[t], cov[t].logits, what=f"G_{t + 1} (covariance)")
        assert_close(dp_untied[t], untied[t].logits, what=f"G_{t + 1} (autodiff)")
    assert_close(dp.gradient, sum(g.logits for g in cov), what="sum_t G_t")


@settings(max_examples=10)
@given(markov_instances())
def test_dp_tilted_chain_is_the_equilibrium(inst):
    """``π*`` as a time-dependent chain on the product state: its ``E[h]`` and ``I_t`` equal those
    of the enumeration's tilted tree."""
    policy, harm = inst.policy, inst.harm
    v, T = policy.vocab_size, policy.horizon
    aut = _dp.automaton_arrays(harm, v)
    log_cond = _dp._markov_log_cond(inst.params.logits)
    log_z = toysim.log_partition(_dp.ProductEngine(log_cond, aut, T), aut.final_harm, inst.lam)
    star = _dp.ProductEngine(_dp.dp_tilted_chain(log_cond, aut, log_z), aut, T)
    h = jnp.asarray(toysim.harm_values(harm, v, T))
    summary = enumeration_tilt(policy, inst.params, h, inst.lam)
    mart = toysim.harm_martingale(star, aut.final_harm)
    assert_close(mart[0, v, aut.start], summary.expected_harm, what="E*[h]")
    assert_close(toysim.harm_information(star, mart), summary.information, what="I_t under pi*")
    log_p = star.log_prob
    assert_close(jnp.sum(jnp.exp(log_p), axis=(1, 2)), np.ones(T + 1), what="P* sums to 1")


def test_gradient_matches_finite_difference():
    policy = toysim.MarkovPolicy(3, HORIZON)
    params = policy.init(jax.random.key(3))
    harm = pad(toysim.first_decisive_harm(3, [1], [2], 0.5), 3, 0)
    aut = _dp.automaton_arrays(harm, 3)
    zeros = jnp.zeros((HORIZON, 4, PADDED_STATES))
    grad, _ = _dp.dp_autodiff(params.logits, aut, HORIZON)
    bump = jnp.zeros_like(params.logits).at[1, 2].set(FD_STEP)
    fd = (
        _dp.dp_expected_harm(params.logits + bump, aut, zeros)
        - _dp.dp_expected_harm(params.logits - bump, aut, zeros)
    ) / (2 * FD_STEP)
    dp = _dp.dp_analyze(policy, params, harm, 1.0)
    assert abs(float(fd - grad[1, 2])) <= FINITE_DIFFERENCE
    assert abs(float(fd - dp.gradient[1, 2])) <= FINITE_DIFFERENCE


def test_exact_zeros_past_the_horizon():
    """docs/theory.md §5, 7: past the uniform horizon ``I_t``, ``G_t`` and ``D_t`` are exactly zero."""
    policy = toysim.MarkovPolicy(3, HORIZON)
    params = policy.init(jax.random.key(1))
    dp = _dp.dp_analyze(policy, params, pad(toysim.deadline_harm(3, [2], deadline=2), 3, 1), 2.0)
    assert int(dp.uniform_horizon) == 2
    for name in ("harm_information", "gradient_norm_by_position", "equilibrium_kl_by_position"):
        arr = np.asarray(getattr(dp, name))
        assert np.all(arr[:2] > 0) and np.all(arr[2:] == 0.0), name


COMPILED = ("_backward_jit", "_forward_jit", "dp_autodiff", "_analysis_jit")


def test_compiles_once_per_shape():
    for horizon, compiled in ((HORIZON, ("dp_analyze_arrays",)), (_dp._CONCURRENT_FROM, COMPILED)):
        policy = toysim.MarkovPolicy(2, horizon)
        harm = pad(toysim.trigger_harm(2, [1]), 2, 0)
        _dp.dp_analyze(policy, policy.init(jax.random.key(0)), harm, 1.0)
        before = [getattr(_dp, name)._cache_size() for name in compiled]
        assert min(before) >= 1  # dp_analyze ran every one of these programs
        _dp.dp_analyze(policy, policy.init(jax.random.key(1)), harm, 2.0)
        assert [getattr(_dp, name)._cache_size() for name in compiled] == before


# few examples: the concurrent path compiles four programs of its own per V; the equality is
# structural (the same operations), and agreement with enumeration is tested above on 20 inputs
@settings(max_examples=5)
@given(markov_instances())
def test_concurrent_analysis_equals_the_single_program(inst):
    """``dp_analyze`` (three recursions in threads, then the reductions) and ``dp_analyze_arrays``
    (one program) run the same operations; they differ only by XLA's fusion choices."""
    logits = jnp.asarray(inst.params.logits)
    aut = _dp.automaton_arrays(inst.harm, inst.policy.vocab_size)
    lam = jnp.float64(inst.lam)
    one = _dp.dp_analyze_arrays(logits, aut, lam, HORIZON, True, 1)
    many = _dp.dp_analyze_concurrent(logits, aut, lam, HORIZON, True, 1)
    for field in toysim.Analysis._fields:
        assert_close(getattr(many, field), getattr(one, field), what=field)


def test_refuses_what_it_cannot_read(monkeypatch):
    harm = toysim.trigger_harm(2, [1])
    tab = toysim.TabularPolicy(2, 2)
    with pytest.raises(ValueError, match="first-order Markov policy, got TabularPolicy"):
        _dp.dp_analyze(tab, tab.init(jax.random.key(0)), harm, 1.0)
    second = toysim.MarkovPolicy(2, 2, order=2)
    with pytest.raises(ValueError, match="got order 2"):
        _dp.dp_analyze(second, second.init(jax.random.key(0)), harm, 1.0)
    first = toysim.MarkovPolicy(2, 2)
    table = toysim.table_harm([0.0, 1.0, 1.0, 1.0], 2, 2)
    with pytest.raises(ValueError, match="needs an automaton harm, got a table harm"):
        _dp.dp_analyze(first, first.init(jax.random.key(0)), table, 1.0)
    monkeypatch.setenv("TOYSIM_MAX_BYTES", "100000")
    long = toysim.MarkovPolicy(2, 10_000)
    with pytest.raises(ValueError, match="T = 10000 .* GiB"):
        _dp.dp_analyze(long, long.init(jax.random.key(0)), harm, 1.0)


def test_estimate_is_linear_in_horizon():
    onehot = _memory.dp_automaton_bytes(64, 8)  # the (S, V, S) transition tensors, independent of T
    a = _memory.dp_estimate_bytes(64, 1000, 8) - onehot
    b = _memory.dp_estimate_bytes(64, 2001, 8) - onehot
    assert b == 2 * a and onehot == 32 * 8 * 8 * 64


LONG = 10_000
CHAIN = toysim.MarkovPolicy.from_initial_transition(
    jnp.array([0.0, -3.0]), jnp.array([[0.5, -4.0], [0.0, 0.0]])
)


def test_long_horizon_uses_dp_and_skips_the_enumeration_check(monkeypatch):
    """T = 10,000 would need 2**10000 leaves; ``auto`` picks DP, whose estimate is linear in T."""
    monkeypatch.setenv("TOYSIM_MAX_BYTES", str(2**30))
    harm = pad(toysim.trigger_harm(2, [1]), 2, 0)
    inst = toysim.Instance(toysim.MarkovPolicy(2, LONG), CHAIN, harm, 1.0)
    report = toysim.exact_report(inst)
    assert report["engine"] == "dp" and len(report["harm_information"]) == LONG
    # Var(h) = Σ_t I_t over 10^4 positions: 10^4 float64 additions of terms <= 1/4, error < 1e-12.
    assert abs(sum(report["harm_information"]) - report["harm_variance"]) <= IDENTITY
    assert abs(sum(report["horizon_distribution"]) - 1.0) <= IDENTITY
    assert report["gradient_autodiff_max_abs_error"] <= IDENTITY
    shorter = toysim.Instance(toysim.MarkovPolicy(2, 40), CHAIN, harm, 1.0)
    with pytest.raises(ValueError, match="GiB"):
        toysim.exact_report(shorter, engine="enumerate")


def instance_json(harm, horizon):
    return {
        "format": "toysim.instance/1",
        "vocab_size": 2,
        "horizon": horizon,
        "lambda": 1.0,
        "policy": {
            "kind": "markov",
            "initial_logits": [0.0, -3.0],
            "transition_logits": [[0.5, -4.0], [0.0, 0.0]],
        },
        "harm": {
            "kind": "automaton",
            "start": harm.start,
            "transitions": harm.transitions.tolist(),
            "final_harm": harm.final_harm.tolist(),
        },
    }


def run(tmp_path, capsys, instance, *extra):
    path = tmp_path / "instance.json"
    path.write_text(json.dumps(instance))
    code = main(["exact", str(path), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_dp_agrees_with_enumerate_and_refuses_tabular(tmp_path, capsys):
    small = instance_json(toysim.trigger_harm(2, [1]), HORIZON)
    reports = {}
    for engine in ("dp", "enumerate", "auto"):
        code, out, err = run(tmp_path, capsys, small, "--engine", engine)
        assert code == 0, err
        reports[engine] = json.loads(out)
    assert reports["dp"]["engine"] == "dp" == reports["auto"]["engine"]
    assert reports["enumerate"]["engine"] == "enumerate"
    assert set(reports["dp"]) == set(reports["enumerate"])
    for key, value in reports["enumerate"].items():
        if key != "engine":
            assert_close(reports["dp"][key], value, what=key)
    tabular = {**small, "horizon": 1, "policy": {"kind": "tabular", "logits": [[0.0, 1.0]]}}
    code, out, err = run(tmp_path, capsys, tabular, "--engine", "dp")
    assert code == 2 and out == "" and "Markov" in err and err.count("\n") == 1
    table = {**small, "harm": {"kind": "table", "values": [0.0] * 8}}
    code, out, err = run(tmp_path, capsys, table, "--engine", "dp")
    assert code == 2 and out == "" and "automaton harm" in err and err.count("\n") == 1


scatter_logsumexp = jax.jit(_dp._scatter_logsumexp)


@functools.partial(jax.jit, static_argnums=(2, 4))
def backward_stage(log_cond, aut, horizon, lam, unroll):
    return _dp.backward_stage(_dp.ProductEngine(log_cond, aut, horizon, unroll), aut.final_harm, lam)


@functools.partial(jax.jit, static_argnums=(2, 3))
def forward_pass(log_cond, aut, horizon, unroll):
    return _dp.ProductEngine(log_cond, aut, horizon, unroll).log_prob


@settings(max_examples=10)
@given(markov_instances())
def test_one_backward_pass_equals_the_separate_ones(inst):
    """The analysis' single reverse scan (``H``, ``log Z`` and the range of final harms side by
    side, unrolled) gives the values of the separate public passes; the forward scan unrolled equals
    the forward scan of the time-dependent form of the same chain; ``_scatter_logsumexp`` (a
    scatter-max shift) equals a dense logsumexp over the one-hot edges."""
    v, T = inst.policy.vocab_size, inst.policy.horizon
    aut = _dp.automaton_arrays(inst.harm, v)
    log_cond = _dp._markov_log_cond(inst.params.logits)
    engine = _dp.ProductEngine(log_cond, aut, T)
    hs, log_z, det = backward_stage(log_cond, aut, T, inst.lam, 2)
    assert_close(hs, _dp.dp_martingale(log_cond, aut, T), what="H (one pass)")
    assert_close(log_z, toysim.log_partition(engine, aut.final_harm, inst.lam), what="log Z (one pass)")
    assert np.array_equal(det, toysim.determined(engine, aut.final_harm))
    chain = jnp.broadcast_to(log_cond[None, :, :, :], (T, v + 1, aut.transitions.shape[0], v))
    log_p, unrolled = forward_pass(chain, aut, T, 1), forward_pass(log_cond, aut, T, 2)
    assert np.array_equal(np.isfinite(log_p), np.isfinite(unrolled))
    finite = jnp.isfinite(log_p)
    assert_close(jnp.where(finite, unrolled, 0.0), jnp.where(finite, log_p, 0.0), what="log P (unrolled)")
    b = jnp.asarray(np.random.default_rng(T).normal(size=aut.transitions.shape) * 50.0)
    onehot = _dp._onehot(aut.transitions)
    dense = jax.nn.logsumexp(jnp.where(onehot, b[:, :, None], -jnp.inf), axis=0)
    scattered = scatter_logsumexp(b, aut.transitions, onehot)
    assert np.array_equal(np.isfinite(scattered), np.isfinite(dense))  # −inf where no s leads
    assert_close(
        jnp.where(jnp.isfinite(dense), scattered, 0.0),
        jnp.where(jnp.isfinite(dense), dense, 0.0),
        what="logsumexp",
    )


def test_information_keeps_relative_accuracy_far_from_the_horizon():
    """Far from the horizon of a mixing chain the children of a state agree to ~1e-17 and ``I_t``
    is the variance of rounding noise (~1e-32): expanded about the first child it matches the
    direct ``Σ P Σ_v π (H_t − H_{t−1})²`` up to the rounding of the martingale identity
    ``E[H_t | x] = H_{t−1}(x)`` that the expansion uses, ``|H| · ε · sqrt(I_t)`` (with ``|H| <= 1``
    and a factor 4 for the few roundings involved); the uncentred ``E[H_t²] − 2 H_{t−1} E[H_t] +
    H_{t−1}²`` leaves residues of ε · H² ~ 1e-17 instead. Negative control: the uncentred form on
    the same numbers has no correct digit left."""
    T = 200
    harm = pad(toysim.trigger_harm(2, [1]), 2, 0)
    policy = toysim.MarkovPolicy(2, T)
    params = policy.init(jax.random.key(5), scale=0.3)
    aut = _dp.automaton_arrays(harm, 2)
    dp = _dp.dp_analyze(policy, params, harm, 1.0, autodiff=False)
    log_cond = _dp._markov_log_cond(params.logits)
    pi = np.exp(np.asarray(log_cond[:, 0, :]))
    hs = np.asarray(dp.martingale)
    p = np.exp(np.asarray(_dp.ProductEngine(log_cond, aut, T).log_prob))
    trans = np.asarray(aut.transitions)
    t = 1
    child = hs[t][np.arange(2)[None, :], trans]  # (S, V)
    delta = child[None] - hs[t - 1][:, :, None]
    open_ = ~np.all(child == child[:, :1], axis=-1)
    direct = np.sum(np.where(open_[None, :], p[t - 1], 0.0)[:, :, None] * pi[:, None, :] * delta**2)
    info = float(dp.harm_information[t - 1])
    assert direct < 1e-20  # the regime this test is about
    eps = np.finfo(np.float64).eps
    assert abs(info - direct) <= 4 * eps * np.sqrt(direct)
    uncentred = np.sum(
        np.where(open_[None, :], p[t - 1], 0.0)
        * np.maximum(pi @ (child**2).T - 2 * hs[t - 1] * (pi @ child.T) + hs[t - 1] ** 2, 0.0)
    )
    assert abs(uncentred - direct) > 0.5 * direct  # no relative accuracy left (0 or ~1e-17)
