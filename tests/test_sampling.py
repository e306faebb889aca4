"""REINFORCE estimates of G_t against the exact engine (docs/theory.md §10).

Statistical tests state their false-failure probability; all keys come from fixed or drawn seeds,
so every run is reproducible.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import toysim
from proofs_check import sampling
from proofs_check.strategies import make_policy
from toysim._cli import main
from toysim._sampling import (
    exact_gradients,
    reinforce_gradients,
    sample_sequences,
    sampling_versus_exact,
)


# few examples: each samples thousands of sequences per policy family (one compile per family)
@settings(max_examples=6)
@given(
    st.sampled_from(["tabular", "markov1", "markov2", "mlp"]),
    st.just(3),
    st.integers(0, 2**31 - 1),
)
def test_prefix_logits_match_the_level_logits(kind, v, seed):
    policy = make_policy(kind, v, 3)
    params = policy.init(jax.random.key(seed))
    for t in range(3):
        tokens = toysim.prefix_digits(v, t)
        got = policy.prefix_logits(params, tokens)
        np.testing.assert_array_equal(got, policy.logits(params, t))


def test_sampled_leaves_follow_the_policy():
    # 40000 draws; each leaf frequency within 5 binomial standard errors of P(y):
    # false-failure probability < 8 · 5.7e-7 (Bonferroni over the 8 leaves, normal approximation).
    policy = toysim.MarkovPolicy(2, 3, 1)
    params = policy.init(jax.random.key(3))
    n = 40000
    _, leaf = sample_sequences(policy, params, jax.random.key(11), n)
    freq = np.bincount(np.asarray(leaf), minlength=8) / n
    p = np.exp(np.asarray(toysim.forward(policy, params).log_prefix[-1]))
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n))


@pytest.mark.parametrize("kind", ["tabular", "mlp"])
def test_reinforce_unbiased_and_controls_fail(kind):
    # deadline at 2: two live positions; the stated power needs 22 000 / 32 000 estimates here
    check = sampling.CHECKS[0]
    policy = make_policy(kind, 2, 3)
    inst = toysim.Instance(policy, policy.init(jax.random.key(1)), toysim.deadline_harm(2, [1], 2), 1.0)
    q = check.compute((inst, 123))
    assert q["repeats"] <= sampling.MAX_REPEATS
    assert check.residual(q) <= check.tolerance
    for name, corrupt in check.corruptions.items():
        assert check.residual(corrupt(q)) > check.tolerance, name


def test_both_baselines_are_unbiased_and_baseline_reduces_error():
    # 400 estimates of N = 50: z-test at 5 standard errors (false failure < 1e-4 over 2·T·|θ| = 84
    # coordinates); the baseline's mean squared error is smaller (deadline harm, E[h] far from 0).
    policy = toysim.TabularPolicy(2, 3)
    params = policy.init(jax.random.key(2))
    h = jnp.asarray(toysim.harm_values(toysim.deadline_harm(2, [1], 2), 2, 3))
    exact = np.concatenate(
        [np.ravel(x) for x in jax.tree_util.tree_leaves(exact_gradients(policy, params, h))]
    )
    keys = jax.random.split(jax.random.key(9), 400)
    mse = {}
    for b in ("none", "leave_one_out"):
        est = jax.vmap(lambda k, b=b: reinforce_gradients(policy, params, h, k, 50, b))(keys)
        est = np.concatenate([np.asarray(x).reshape(400, -1) for x in jax.tree_util.tree_leaves(est)], axis=1)
        se = est.std(axis=0, ddof=1) / np.sqrt(400)
        live = se > 0
        assert np.all(np.abs(est.mean(0) - exact)[live] <= 5 * se[live]), b
        assert np.all(est[:, ~live] == exact[~live])
        mse[b] = np.mean(np.sum((est - exact) ** 2, axis=1))
    assert mse["leave_one_out"] < mse["none"]


def test_beyond_horizon_exact_is_zero_and_estimate_is_not():
    policy = toysim.MLPPolicy(2, 3, 1, 4)
    params = policy.init(jax.random.key(4))
    h = jnp.asarray(toysim.harm_values(toysim.deadline_harm(2, [1], 2), 2, 3))
    exact = exact_gradients(policy, params, h)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree_util.tree_leaves(exact[2]))
    est = reinforce_gradients(policy, params, h, jax.random.key(0), 10, "leave_one_out")
    assert float(toysim.tree_sq_norm(est[2])) > 0


def test_reinforce_compiles_once_per_shape():
    policy = toysim.TabularPolicy(2, 3)
    params = policy.init(jax.random.key(0))
    h = jnp.zeros(8)
    reinforce_gradients(policy, params, h, jax.random.key(0), 7, "none")
    before = reinforce_gradients._cache_size()
    reinforce_gradients(policy, params, h, jax.random.key(1), 7, "none")
    assert reinforce_gradients._cache_size() == before


def test_sampling_versus_exact_report_and_bad_settings():
    policy = toysim.TabularPolicy(2, 3)
    params = policy.init(jax.random.key(1))
    h = jnp.asarray(toysim.harm_values(toysim.deadline_harm(2, [1], 2), 2, 3))
    rep = sampling_versus_exact(policy, params, h, (10, 1000), seed=3, repeats=5)
    json.dumps(rep, allow_nan=False)
    assert rep["exact_max_abs_error"] <= 1e-12 and rep["exact_gradient_norm_by_position"][2] == 0.0
    small, large = rep["sampled"]
    # RMS error shrinks ~ 1/sqrt(N): a factor 10 expected, 3 required (5 repeats; failure needs a
    # > 3-fold fluctuation of an RMS over 5 draws at every position at once)
    assert np.all(
        np.asarray(large["rms_error_baseline_by_position"]) * 3 < small["rms_error_baseline_by_position"]
    )
    for bad in ({"samples": (1,)}, {"samples": ()}, {"repeats": 0}, {"seed": -1}):
        args = {"samples": (10,), "repeats": 1, "seed": 0, **bad}
        with pytest.raises(ValueError, match=next(iter(bad))):
            sampling_versus_exact(
                policy, params, h, args["samples"], seed=args["seed"], repeats=args["repeats"]
            )


TABULAR = {
    "format": "toysim.instance/1",
    "vocab_size": 2,
    "horizon": 2,
    "lambda": 1.0,
    "policy": {"kind": "tabular", "logits": [[0.1, -0.3], [0.2, 0.0], [-1.0, 0.5]]},
    "harm": {"kind": "table", "values": [0.0, 0.0, 1.0, 1.0]},
}


def _run(tmp_path, capsys, args):
    path = tmp_path / "instance.json"
    path.write_text(json.dumps(TABULAR))
    code = main(["sample-vs-exact", str(path), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_sample_vs_exact(tmp_path, capsys):
    code, out, err = _run(tmp_path, capsys, ["--samples", "10,100", "--repeats", "3", "--seed", "1"])
    assert code == 0, err
    rep = json.loads(out)
    assert [r["samples"] for r in rep["sampled"]] == [10, 100]
    assert rep["uniform_horizon"] == 1 and rep["exact_gradient_norm_by_position"][1] == 0.0
    assert len(rep["sampled"][0]["rms_error_by_position"]) == 2
    # results only: two runs print the same bytes (no wall times in the JSON)
    assert "timings" not in rep and "wall_time" not in out
    code2, out2, _ = _run(tmp_path, capsys, ["--samples", "10,100", "--repeats", "3", "--seed", "1"])
    assert code2 == 0 and out2 == out


def test_sampling_versus_exact_timings_are_a_separate_key():
    policy = toysim.TabularPolicy(2, 2)
    params = policy.init(jax.random.key(1))
    h = jnp.asarray(toysim.harm_values(toysim.deadline_harm(2, [1], 1), 2, 2))
    plain = sampling_versus_exact(policy, params, h, (10, 20), seed=2, repeats=2)
    timed = sampling_versus_exact(policy, params, h, (10, 20), seed=2, repeats=2, timings=True)
    tim = timed.pop("timings")
    assert timed == plain
    assert tim["exact_wall_time_s"] > 0 and [r["samples"] for r in tim["sampled"]] == [10, 20]
    assert all(r["wall_time_baseline_s"] > 0 for r in tim["sampled"])
    assert len(tim["sampled_rms_at_exact_wall_time_by_position"]) == 2


@pytest.mark.parametrize(
    "args, words",
    [
        (["--samples", "0"], "--samples"),
        (["--samples", "10,-5"], "--samples"),
        (["--samples", "ten"], "--samples"),
        (["--repeats", "0"], "--repeats"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_cli_sample_vs_exact_bad_settings(tmp_path, capsys, args, words):
    code, out, err = _run(tmp_path, capsys, args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and words in err, err
