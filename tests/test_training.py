"""Exact alignment training, the second-order law, KL versus variance, spillover (docs/theory.md §7).

Training runs are few and share one fixed instance shape (V = 2, T = 3): each run compiles the
optimizer step once, which dominates the cost of these tests.
"""

import copy
import json

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import toysim
from proofs_check import kl_variance, second_order_law, spillover, training_convergence
from proofs_check.strategies import BINARY_HARM_KINDS, small_instances
from tests import reference
from tests.tolerances import IDENTITY, assert_close
from toysim import alignment_loss, second_order_ratio, spillover_by_position, train_alignment
from toysim._cli import main
from toysim._optimize import Objective, certify, minimize


def _h(inst):
    p = inst.policy
    return jnp.asarray(toysim.harm_values(inst.harm, p.vocab_size, p.horizon))


_loss = jax.jit(alignment_loss, static_argnums=0)


# few examples: each one sums over all sequences in plain Python (the brute-force reference)
@settings(max_examples=4)
@given(small_instances(horizons=(2,)), st.integers(0, 2**31 - 1))
def test_alignment_loss_matches_brute_force_and_tilt_identity(inst, seed):
    policy, h = inst.policy, _h(inst)
    base_params = policy.init(jax.random.key(seed))
    base = toysim.forward(policy, base_params)
    loss = _loss(policy, inst.params, base, h, inst.lam)
    p = reference.sequence_probs(policy, inst.params)
    p0 = reference.sequence_probs(policy, base_params)
    v = policy.vocab_size
    expected = sum(
        q * (inst.lam * float(h[reference.lex_index(y, v)]) + np.log(q / p0[y])) for y, q in p.items()
    )
    assert_close(loss, expected, what="λE[h] + KL(π‖π0)")
    # L(π) = KL(π ‖ π*) − log Z_0 for every π: the equilibrium is the unique minimiser
    eq = toysim.tilt(base, h, inst.lam)
    gap = toysim.sequence_kl(toysim.forward(policy, inst.params), eq.levels)
    assert_close(loss, gap - eq.log_partition[0][0], what="L − KL(π‖π*)")


def test_bad_lambda_is_rejected():
    policy = toysim.TabularPolicy(2, 1)
    params = (jnp.zeros((1, 2)),)
    for lam in (0.0, -1.0, float("nan"), "x"):
        with pytest.raises(ValueError, match="lambda"):
            train_alignment(policy, None, params, jnp.array([0.0, 1.0]), lam, steps=1)


def _fixed_tabular():
    policy = toysim.TabularPolicy(2, 3)
    params = policy.init(jax.random.key(7), scale=1.0)
    return toysim.Instance(policy, params, toysim.deadline_harm(2, [1], 2), 4.0)


def _assert_check(check, inst):
    """The check holds on ``inst`` and every negative control reports a violation."""
    q = check.compute(inst)
    assert check.residual(q) <= check.tolerance, (check.name, check.residual(q))
    for name, corrupt in check.corruptions.items():
        assert check.residual(corrupt(q)) > check.tolerance, (check.name, name)
    return q


def test_tabular_training_converges_to_tilt_and_controls_fail():
    q = _assert_check(training_convergence.CHECKS[0], _fixed_tabular())
    assert q["kl_to_equilibrium"] < 1e-8
    assert_close(q["kl_by_position"], q["equilibrium_kl_by_position"], atol=1e-8, what="KL_t vs D_t")
    assert q["equilibrium_kl_by_position"][2] == 0.0  # t = 3 > k = 2: D_t = 0 exactly


def test_tabular_no_spillover_and_controls_fail():
    q = _assert_check(spillover.CHECKS[0], _fixed_tabular())
    assert q["uniform_horizon"] == 2 and q["kl_by_position"][0] > 1e-3


def test_training_is_deterministic_and_records_trajectory():
    inst = _fixed_tabular()
    runs = [
        train_alignment(
            inst.policy, None, inst.params, _h(inst), 1.0, optimizer="sgd", steps=2, record_every=1
        )
        for _ in range(2)
    ]
    assert runs[0].steps == [0, 1, 2]
    assert runs[0].kl_by_position.shape == (3, 3) and runs[0].gradient_norm_by_position.shape == (3, 3)
    for a, b in zip(jax.tree_util.tree_leaves(runs[0].params), jax.tree_util.tree_leaves(runs[1].params)):
        np.testing.assert_array_equal(a, b)
    assert runs[0].losses == runs[1].losses
    assert np.all(runs[0].kl_by_position[0] == 0)  # starts at π_0
    assert runs[0].losses[-1] < runs[0].losses[0]
    # two SGD steps do not converge, and the certificate says so
    assert not runs[0].certificate.converged and "‖∇L‖" in runs[0].certificate.reason


# few examples: each sweeps λ over the tilt; `toysim check` runs the same check on more inputs
@settings(max_examples=6)
@given(second_order_law.CHECKS[0].instances())
def test_second_order_law_holds_and_controls_fail(inst):
    _assert_check(second_order_law.CHECKS[0], inst)


def test_second_order_ratio_tends_to_one():
    inst = _fixed_tabular()
    base = toysim.forward(inst.policy, inst.params)
    lams = jnp.array([0.1, 0.01, 0.001])
    ratio, d, info = second_order_ratio(base, _h(inst), lams)
    err = np.abs(np.asarray(ratio[:, :2]) - 1)
    assert np.all(err[1] < err[0] / 5) and np.all(err[2] < err[1] / 5)  # linear decay: factor 10
    assert np.isnan(ratio[0, 2]) and float(info[2]) == 0.0 and np.all(np.asarray(d[:, 2]) == 0.0)


# few examples: the same check runs in tests/test_proofs_check.py under the runner's budget
@settings(max_examples=6)
@given(kl_variance.CHECKS[0].instances())
def test_binary_kl_iff_variance_holds(inst):
    check = kl_variance.CHECKS[0]
    assert check.residual(check.compute(inst)) <= check.tolerance


# The controls on drawn binary harms with random policies. Not on the constructed XOR instances:
# there, a policy that hypothesis shrinks to uniform logits makes the control "Var(H) under the
# uniform policy" equal to the truth, so it cannot fire (tests/test_proofs_check.py shows every
# control detected on some input of the check's own strategy).
@settings(max_examples=6)
@given(small_instances(harm_kinds=BINARY_HARM_KINDS, horizons=(3,)).filter(kl_variance._nonconstant))
def test_binary_kl_iff_variance_controls_fail(inst):
    _assert_check(kl_variance.CHECKS[0], inst)


# the graded counterexamples form a small family; five draws cover its shapes
@settings(max_examples=5)
@given(kl_variance.graded_counterexamples())
def test_graded_counterexample_zero_variance_positive_kl(inst):
    q = kl_variance.CHECKS[1].compute(inst)
    assert q["root_var_h"] <= IDENTITY and q["root_kl"] > 1e-6
    # and the binary identity does not hold for this graded harm
    assert kl_variance.residual(q) > kl_variance.CHECKS[0].tolerance


def test_spillover_measures_kl_at_determined_prefixes_only():
    inst = _fixed_tabular()
    policy, h = inst.policy, _h(inst)
    moved = tuple(p + jnp.array([0.3, -0.3]) for p in inst.params)  # every row moves
    spill = np.asarray(spillover_by_position(policy, moved, inst.params, h))
    kl = np.asarray(toysim.kl_by_position(toysim.forward(policy, moved), toysim.forward(policy, inst.params)))
    assert spill[0] == 0.0  # the root is not determined
    assert_close(spill[2], kl[2], what="t > k: all prefixes determined")
    assert 0 <= spill[1] < kl[1]


MARKOV = {
    "format": "toysim.instance/1",
    "vocab_size": 2,
    "horizon": 3,
    "lambda": 1.0,
    "policy": {
        "kind": "markov",
        "initial_logits": [0.0, 0.4],
        "transition_logits": [[0.3, -0.2], [1.0, 0.0]],
    },
    "harm": {"kind": "deadline", "harmful_tokens": [1], "deadline": 2},
}


def _run(tmp_path, capsys, args, instance=MARKOV):
    path = tmp_path / "instance.json"
    path.write_text(json.dumps(instance))
    code = main([args[0], str(path), *args[1:]])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_train_markov_reports_spillover(tmp_path, capsys):
    code, out, err = _run(tmp_path, capsys, ["train", "--steps", "40", "--record-every", "2"])
    assert code == 0 and err == "", err
    rep = json.loads(out)
    steps = [s["step"] for s in rep["trajectory"]]
    # Newton stops at ‖∇L‖ <= 1e-13 (a few steps); recorded every 2 steps and at the last
    assert rep["uniform_horizon"] == 2 and steps[0] == 0 and all(s % 2 == 0 for s in steps[:-1])
    assert steps[-1] == rep["certificate"]["steps"] < 40
    assert rep["converged"] and rep["certificate"]["min_curvature"] > 0
    assert rep["final_gradient_norm"] < 1e-10 and rep["final_loss"] >= rep["equilibrium_loss"]
    # App. A finding on this instance: the tied transition rows move position 3 (beyond k = 2)
    assert rep["spillover_beyond_horizon"] > 1e-3
    assert rep["equilibrium_kl_by_position"][2] == 0.0


@pytest.mark.parametrize(
    "args, words",
    [
        (["train", "--lambda", "0"], "--lambda"),
        (["train", "--lambda", "-2"], "--lambda"),
        (["train", "--steps", "0"], "--steps"),
        (["train", "--optimizer", "bfgs"], "--optimizer"),
        (["train", "--tol", "0"], "--tol"),
        (["train", "--learning-rate", "-1"], "--learning-rate"),
        (["train", "--record-every", "-1"], "--record-every"),
        (["train", "--optimizer", "adam", "--learning-rate", "1e308", "--steps", "3"], "diverged"),
    ],
)
def test_cli_train_bad_settings(tmp_path, capsys, args, words):
    code, out, err = _run(tmp_path, capsys, args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and words in err, err


def test_cli_train_bad_instance(tmp_path, capsys):
    bad = copy.deepcopy(MARKOV)
    bad["lambda"] = 0
    code, _, err = _run(tmp_path, capsys, ["train"], instance=bad)
    assert code == 2 and err.count("\n") == 1 and "lambda" in err


# --------------------------------------------------------------------------- certification

# The instance of issue 16 on which the former default (optax L-BFGS) stalled at KL(π‖π*) = 0.091
SEED5 = {
    "format": "toysim.instance/1",
    "vocab_size": 2,
    "horizon": 2,
    "lambda": 4.0,
    "policy": {
        "kind": "tabular",
        "logits": [
            [0.1396568278519496, -0.6626519405194804],
            [-0.3521848478046701, 0.25203133544427503],
            [-0.2968141725506701, -0.45128456992259963],
        ],
    },
    "harm": {"kind": "table", "values": [1, 1, 1, 0]},
}


def test_seed5_instance_converges_to_the_tilt(tmp_path, capsys):
    code, out, err = _run(tmp_path, capsys, ["train"], instance=SEED5)
    assert code == 0 and err == "", err
    rep = json.loads(out)
    cert = rep["certificate"]
    assert rep["converged"] and cert["grad_norm"] <= 1e-8 and cert["min_curvature"] > 0
    # the reference is the closed-form tilt, not the optimiser: L − L* = KL(π‖π*) exactly
    assert abs(rep["kl_to_equilibrium"]) < 1e-12 and abs(cert["loss_gap"]) < 1e-12
    assert_close(rep["kl_by_position"], rep["equilibrium_kl_by_position"], 1e-12, what="KL_t vs D_t")
    assert cert["loss_gap_bound"] < 1e-12
    # spillover is not a finding for a tabular policy
    assert rep["spillover_by_position"] is None and "tabular" in rep["spillover_note"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--optimizer", "sgd", "--learning-rate", "1e6"], "did not converge"),
        (["--steps", "1"], "after 1 steps"),
    ],
)
def test_cli_train_not_converged_exits_1_with_one_line(tmp_path, capsys, args, words):
    code, out, err = _run(tmp_path, capsys, ["train", *args], instance=SEED5)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("toysim: did not converge: ") and words in err, err
    rep = json.loads(out)  # the JSON is still printed, with the certificate
    assert rep["converged"] is False and rep["certificate"]["reason"] in err
    assert rep["kl_to_equilibrium"] > 1e-8  # it really is away from the tilt


def test_certificate_paths():
    quad = Objective(_quadratic)
    # converged: exact curvature 2, distance and gap bounds from the gradient
    res = minimize(quad, jnp.array([1.0, -2.0]), steps=20, progress=False)
    c = res.certificate
    assert c.converged and c.min_curvature == pytest.approx(2.0) and c.distance_bound <= 1e-14
    # a loss that ends above its start is never a success (SGD overshooting: x -> -2x)
    bad = minimize(quad, jnp.array([1.0, -2.0]), optimizer="sgd", learning_rate=1.5, steps=3, progress=False)
    assert not bad.certificate.converged and "above the start" in bad.certificate.reason
    # a saddle point has zero gradient but is not a minimum
    saddle = certify(Objective(_saddle), jnp.zeros(2))
    assert saddle.grad_norm == 0.0 and not saddle.converged and "not a minimum" in saddle.reason
    # the softmax gauge: a row of logits shifted by a constant changes nothing, so the curvature is
    # measured off that direction (one gauge dimension), and it is positive there
    z = jnp.log(jnp.array([0.2, 0.3, 0.5]))
    gauge = certify(Objective(_row_kl), z + 1.7, gauge=Objective(_log_softmax))
    assert gauge.converged and gauge.gauge_dims == 1 and gauge.min_curvature > 0.1
    assert gauge.message().startswith("converged")
    assert saddle.message().startswith("did not converge: ") and "try --steps" in saddle.message()


def _quadratic(x):
    return jnp.sum((x - 3.0) ** 2)


def _saddle(x):
    return x[0] ** 2 - x[1] ** 2


def _log_softmax(z):
    return jax.nn.log_softmax(z)


def _row_kl(z):
    q = jnp.array([0.2, 0.3, 0.5])
    p = jax.nn.softmax(z)
    return jnp.sum(p * (jnp.log(p) - jnp.log(q)))


DEEP = {
    "format": "toysim.instance/1",
    "vocab_size": 2,
    "horizon": 2,
    "lambda": 1.0,
    "policy": {"kind": "tabular", "logits": [[0.1, -0.3], [0.2, 0.0], [-1.0, 0.5]]},
    "harm": {"kind": "table", "values": [0.0, 0.0, 1.0, 1.0]},
}


def test_cli_deep_certifies_both_optima_and_exits_1_when_one_fails(tmp_path, capsys):
    path = tmp_path / "deep.json"
    path.write_text(json.dumps(DEEP))
    argv = ["deep", str(path), "--recovery", "0", "--mu", "1", "--gamma", "0.5", "--engine", "enumerate"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    certs = json.loads(out)["certificates"]
    assert err == "" and certs["separable"]["converged"] and certs["joint"]["converged"]
    assert main([*argv, "--steps", "1"]) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("toysim: did not converge: ") and "after 1 steps" in err
    assert json.loads(out)["certificates"]["separable"]["converged"] is False


def test_kl_clamp_keeps_the_training_objectives_derivatives():
    # The per-prefix KL is clamped at 0 against rounding (values only): its gradient and Hessian
    # must be those of the plain sum Σ P(p) Σ_v π (log π − log π_0). A clamp inside the derivative
    # would flatten the curvature at π = π_0 (every prefix KL is 0 there) and break certification.
    policy = toysim.TabularPolicy(2, 3)
    params0 = policy.init(jax.random.key(11))
    base = toysim.forward(policy, params0)
    h = jnp.asarray([0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0])

    def plain(params):
        levels = toysim.forward(policy, params)
        kl = 0.0
        for t, (lc, lb) in enumerate(zip(levels.log_cond, base.log_cond)):
            kl = kl + jnp.sum(jnp.exp(levels.log_prefix[t])[:, None] * jnp.exp(lc) * (lc - lb))
        return 0.7 * jnp.sum(jnp.exp(levels.log_prefix[-1]) * h) + kl

    def library(params):
        return alignment_loss(policy, params, base, h, 0.7)

    for params in (params0, jax.tree_util.tree_map(lambda x: x + 0.3, params0)):
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        h_lib = jax.hessian(lambda x, u=unravel: library(u(x)))(flat)
        h_ref = jax.hessian(lambda x, u=unravel: plain(u(x)))(flat)
        assert_close(h_lib, h_ref, what="Hessian of the alignment objective")
        assert_close(
            jax.grad(lambda x, u=unravel: library(u(x)))(flat),
            jax.grad(lambda x, u=unravel: plain(u(x)))(flat),
        )
