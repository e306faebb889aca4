"""Recovery penalties and deep alignment (docs/theory.md §8-9): engine against brute force, validation, and
``toysim deep`` on good and bad input.

The theorem checks of proofs_check (gibbs_form, robustness_bound, attack_length, prefill_attack,
augmentation, recovery_gradient) and their negative controls run in tests/test_proofs_check.py."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import toysim
from proofs_check import recovery_gradient
from proofs_check.recovery_cases import recovery_cases
from tests import reference
from tests.tolerances import FD_STEP, FINITE_DIFFERENCE, IDENTITY, assert_close
from toysim import _recovery as rc
from toysim._cli import main

# --------------------------------------------------------------------------- brute force

SHAPES = (("tabular", 2, 3), ("markov1", 3, 2))  # few shapes: each costs seconds of compilation


@st.composite
def cases(draw):
    inst, recovery, mu, gamma = draw(recovery_cases(SHAPES))
    theta = inst.policy.init(jax.random.key(draw(st.integers(0, 2**31 - 1))), scale=1.0)
    return inst, recovery, mu, gamma, theta


def _brute_marginals(probs, weights, v, T):
    """``Q_t(p)`` from leaf weights ``Q(y) ∝ probs[y] · weights[y]``, by summing over sequences."""
    total = sum(probs[y] * weights[y] for y in probs)
    return [
        np.array(
            [
                sum(probs[y] * weights[y] for y in probs if y[:t] == p) / total
                for p in reference.sequences(v, t)
            ]
        )
        for t in range(T)
    ]


def _brute_recovery(policy, params, p, recovery):
    return sum(reference.cond_probs(policy, [params] * policy.horizon, p)[r] for r in recovery)


def _brute_no_recovery(probs, p, recovery):
    """``P(no recovery token after p | p)`` by summing over the sequences extending ``p``."""
    k = len(p)
    num = sum(q for y, q in probs.items() if y[:k] == p and not any(tok in recovery for tok in y[k:]))
    return num / reference.prefix_prob(probs, p)


# few examples: each one enumerates every sequence in plain Python (the brute-force reference)
@settings(max_examples=6)
@given(cases())
def test_quantities_match_brute_force(case):
    inst, recovery, mu, gamma, theta = case
    policy, v, T = inst.policy, inst.policy.vocab_size, inst.policy.horizon
    h = np.asarray(toysim.harm_values(inst.harm, v, T))
    base = toysim.forward(policy, inst.params)
    q = rc.harmful_prefix_marginals(base, jnp.asarray(h))
    base_probs = reference.sequence_probs(policy, inst.params)
    h_of = {y: h[reference.lex_index(y, v)] for y in base_probs}
    for t, (got, want) in enumerate(zip(q, _brute_marginals(base_probs, h_of, v, T))):
        assert_close(got, want, what=f"harmful Q_{t}")
    spec = rc.recovery_spec(v, recovery, q, mu=mu, gamma=gamma)

    # the objective at a second policy θ
    probs = reference.sequence_probs(policy, theta)
    penalty = mu * sum(
        gamma**t
        * sum(
            qp * (1.0 - _brute_recovery(policy, theta, p, recovery))
            for qp, p in zip(q[t], reference.sequences(v, t))
        )
        for t in range(T)
    )
    kl = sum(p * np.log(p / base_probs[y]) for y, p in probs.items())
    harm = sum(p * h_of[y] for y, p in probs.items())
    levels = toysim.forward(policy, theta)
    assert_close(rc.recovery_penalty(levels, spec), penalty, what="recovery penalty")
    value = toysim.deep_objective(policy, theta, base, jnp.asarray(h), inst.lam, spec)
    assert_close(value, inst.lam * harm + penalty + kl, what="L_deep")

    # per-position gradients add up to jax.grad, which matches a central difference
    total = jax.grad(toysim.deep_objective, argnums=1)(policy, theta, base, jnp.asarray(h), inst.lam, spec)
    parts = toysim.deep_gradient_by_position(policy, theta, base, jnp.asarray(h), inst.lam, spec)
    summed = jax.tree_util.tree_map(lambda *xs: sum(xs), *parts)
    for a, b in zip(jax.tree_util.tree_leaves(summed), jax.tree_util.tree_leaves(total)):
        assert_close(a, b, what="Σ_t per-position gradient")
    leaf = jax.tree_util.tree_leaves(theta)[-1]
    bump = jnp.zeros_like(leaf).at[(0,) * leaf.ndim].set(FD_STEP)

    def shift(sign):
        leaves = jax.tree_util.tree_leaves(theta)[:-1] + [leaf + sign * bump]
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(theta), leaves)

    fd = (
        toysim.deep_objective(policy, shift(1), base, jnp.asarray(h), inst.lam, spec)
        - toysim.deep_objective(policy, shift(-1), base, jnp.asarray(h), inst.lam, spec)
    ) / (2 * FD_STEP)
    assert_close(
        fd, jax.tree_util.tree_leaves(total)[-1][(0,) * leaf.ndim], FINITE_DIFFERENCE, "finite difference"
    )

    # no-recovery probabilities and attack success
    log_n = rc.log_no_recovery(levels, spec.mask)
    for k in range(T):
        want = [_brute_no_recovery(probs, p, recovery) for p in reference.sequences(v, k)]
        assert_close(jnp.exp(log_n[k]), want, what=f"P(no recovery after length-{k} prefix)")
        assert_close(
            rc.attack_success(levels, spec)[k], np.dot(q[k], want), what=f"attack success at depth {k}"
        )

    # the Gibbs-form policy has the Gibbs recovery probabilities
    inside, _ = rc.log_recovery_probability(rc.gibbs_policy(base, spec), spec.mask)
    for t, g in enumerate(rc.gibbs_recovery(base, spec)):
        assert_close(jnp.exp(inside[t]), g, what=f"Gibbs recovery at position {t + 1}")


# few examples: brute force over every sequence for each Q construction
@settings(max_examples=4)
@given(cases())
def test_other_q_constructions_match_brute_force(case):
    inst, recovery, mu, gamma, theta = case
    policy, v, T = inst.policy, inst.policy.vocab_size, inst.policy.horizon
    probs = reference.sequence_probs(policy, theta)
    want = _brute_marginals(probs, {y: 1.0 for y in probs}, v, T)
    for t, got in enumerate(rc.policy_prefix_marginals(toysim.forward(policy, theta))):
        assert_close(got, want[t], what=f"jailbroken Q_{t}")
    seqs = reference.sequences(v, T)[:: max(1, len(probs) // 3)]
    weights = [1.0 + i for i in range(len(seqs))]
    w_of = {y: 0.0 for y in probs}
    for y, w in zip(seqs, weights):
        w_of[y] += w
    want = _brute_marginals({y: 1.0 for y in probs}, w_of, v, T)
    for t, got in enumerate(rc.sequence_prefix_marginals(seqs, weights, v, T)):
        assert_close(got, want[t], what=f"sequence Q_{t}")


@given(st.floats(0.01, 0.9), st.floats(0.1, 5.0), st.floats(0.1, 0.99), st.floats(0.01, 0.99))
def test_attack_length_is_where_the_guarantee_reaches_delta(p_min, mu, gamma, frac):
    delta = p_min + frac * (1 - p_min)
    t = rc.attack_length(delta, p_min, mu, gamma)
    assert abs(rc.guaranteed_recovery(p_min, mu, gamma, t) - delta) <= IDENTITY
    assert rc.guaranteed_recovery(p_min, mu, gamma, t - 0.5) > delta
    assert rc.guaranteed_recovery(p_min, mu, gamma, t + 0.5) < delta


# --------------------------------------------------------------------------- training


def test_train_deep_stops_at_the_gradient_tolerance():
    # V = 2, T = 2 as in the CLI tests below: the compiled L-BFGS step is shared
    policy = toysim.TabularPolicy(2, 2)
    base = toysim.forward(policy, policy.init(jax.random.key(3), scale=1.0))
    jail = toysim.forward(policy, policy.init(jax.random.key(4), scale=1.0))
    spec = rc.recovery_spec(2, [0], rc.policy_prefix_marginals(jail), mu=1.5, gamma=0.5)
    h = jnp.asarray([0.0, 1.0, 0.0, 1.0])
    levels, result = toysim.train_deep(base, h, 0.0, spec, objective="separable", steps=300, tol=1e-13)
    assert result.grad_norms[-1] <= 1e-13 and result.steps[-1] < 300
    assert result.steps == list(range(len(result.steps)))  # recorded at every step
    # Q has full support here (no tiny Q(p)), so the Gibbs form holds at every prefix
    assert rc.gibbs_gap(levels, base, spec) <= 1e-9
    _, fixed = toysim.train_deep(base, h, 0.0, spec, objective="separable", steps=5)
    assert fixed.steps == [0, 5]


# --------------------------------------------------------------------------- validation


def _q(v=2, T=2):
    return rc.sequence_prefix_marginals([[0] * T, [1] * T], [1.0, 1.0], v, T)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"recovery": []}, "recovery"),
        ({"recovery": [2]}, "recovery"),
        ({"recovery": [0, 1]}, "recovery"),
        ({"mu": 0.0}, "mu"),
        ({"mu": float("nan")}, "mu"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": 1.5}, "gamma"),
        ({"q_prefix": [np.ones(1), np.array([0.3, 0.3])]}, "q"),
        ({"q_prefix": [np.ones(1), np.array([1.5, -0.5])]}, "q"),
        ({"q_prefix": [np.ones(1), np.ones(3) / 3]}, "q"),
    ],
)
def test_recovery_spec_rejects_bad_settings(kwargs, word):
    args = {"vocab_size": 2, "recovery": [0], "q_prefix": _q(), "mu": 1.0, "gamma": 0.5, **kwargs}
    with pytest.raises(ValueError, match=word):
        rc.recovery_spec(**args)


def test_harmless_instance_has_no_harmful_q():
    policy = toysim.TabularPolicy(2, 2)
    base = toysim.forward(policy, policy.init(jax.random.key(0)))
    with pytest.raises(ValueError, match="q = harmful.*E_0\\[h\\] = 0"):
        rc.harmful_prefix_marginals(base, jnp.zeros(4))


@pytest.mark.parametrize(
    "delta, p_min, gamma, word",
    [(0.1, 0.2, 0.5, "delta"), (1.0, 0.2, 0.5, "delta"), (0.5, 0.2, 1.0, "gamma")],
)
def test_attack_length_rejects_bad_settings(delta, p_min, gamma, word):
    with pytest.raises(ValueError, match=word):
        rc.attack_length(delta, p_min, 1.0, gamma)


def test_sequence_marginals_reject_bad_sequences():
    with pytest.raises(ValueError, match="q sequence"):
        rc.sequence_prefix_marginals([[0, 2]], [1.0], 2, 2)
    with pytest.raises(ValueError, match="q weight"):
        rc.sequence_prefix_marginals([[0, 1]], [0.0], 2, 2)


# --------------------------------------------------------------------------- CLI

INSTANCE = {
    "format": "toysim.instance/1",
    "vocab_size": 2,
    "horizon": 2,
    "lambda": 1.0,
    "policy": {"kind": "tabular", "logits": [[0.1, -0.3], [0.2, 0.0], [-1.0, 0.5]]},
    "harm": {"kind": "table", "values": [0.0, 0.0, 1.0, 1.0]},
}


def _cli(tmp_path, capsys, *argv, instance=INSTANCE):
    path = tmp_path / "instance.json"
    path.write_text(json.dumps(instance))
    code = main(["deep", str(path), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_report(tmp_path, capsys):
    code, out, err = _cli(
        tmp_path, capsys, "--recovery", "0", "--mu", "1", "--gamma", "0.5", "--delta", "0.6"
    )
    assert code == 0, err
    report = json.loads(out)
    grads = report["gradient_norm_by_position"]
    assert report["uniform_horizon"] == 1
    assert grads["plain_harm"][1] == 0.0 and grads["deep"][1] > 1e-3  # the penalty reaches t > k
    assert grads["recovery_closed_form"] == pytest.approx(grads["recovery_autodiff"], abs=1e-12)
    assert report["gibbs_gap"]["separable_past_horizon"] < 1e-9
    curves = report["attack_success"]
    assert curves["standard"][1] == curves["base"][1]
    assert all(d < s for d, s in zip(curves["deep"], curves["standard"]))
    mins = report["separable_min_recovery_past_horizon_by_position"]
    assert min(m for m in mins if m is not None) >= report["robustness_bound"] - 1e-9
    assert rc.guaranteed_recovery(report["p_min"], 1.0, 0.5, report["attack_length"]) == pytest.approx(0.6)


@pytest.mark.parametrize(
    "argv, word",
    [
        (["--recovery", "5"], "recovery"),
        (["--recovery", "0,1"], "recovery"),
        (["--recovery", "a"], "recovery"),
        (["--recovery", "0", "--mu", "0"], "mu"),
        (["--recovery", "0", "--gamma", "2"], "gamma"),
        (["--recovery", "0", "--q", "nonsense"], "--q"),
        (["--recovery", "0", "--q", "jailbroken:/nonexistent.json"], "nonexistent"),
        (["--recovery", "0", "--gamma", "0.5", "--delta", "1.5"], "delta"),
        (["--recovery", "0", "--steps", "0"], "steps"),
    ],
)
def test_cli_bad_input(tmp_path, capsys, argv, word):
    code, out, err = _cli(tmp_path, capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and word in err


def test_cli_harmless_instance(tmp_path, capsys):
    harmless = {**INSTANCE, "harm": {"kind": "table", "values": [0.0, 0.0, 0.0, 0.0]}}
    code, _, err = _cli(tmp_path, capsys, "--recovery", "0", instance=harmless)
    assert code == 2 and "E_0[h] = 0" in err


def test_cli_jailbroken_shape_mismatch(tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_text(
        json.dumps(
            {
                **INSTANCE,
                "horizon": 1,
                "policy": {"kind": "tabular", "logits": [[0.0, 1.0]]},
                "harm": {"kind": "table", "values": [0.0, 1.0]},
            }
        )
    )
    code, _, err = _cli(tmp_path, capsys, "--recovery", "0", "--q", f"jailbroken:{other}")
    assert code == 2 and "jailbroken" in err


# --------------------------------------------------------------------------- the checks' reference
# and their realistic negative controls (proofs_check/recovery_reference.py)

from proofs_check import attack_length as attack_check  # noqa: E402
from proofs_check import deep_cases, gibbs_form, prefill_attack, robustness_bound  # noqa: E402
from proofs_check import recovery_reference as ref_mod  # noqa: E402
from proofs_check.recovery_cases import shallow_harms  # noqa: E402


def test_reference_matches_the_test_brute_force():
    """The checks' reference against the tests' plain-numpy brute force (tests/reference.py): two
    independent per-sequence implementations of π(y), Q's marginals and the attack curve."""
    policy = toysim.TabularPolicy(2, 3)
    params = policy.init(jax.random.key(3), scale=1.0)
    h = np.asarray(toysim.harm_values(toysim.deadline_harm(2, [1], 2), 2, 3))
    probs = reference.sequence_probs(policy, params)
    log_p = np.asarray(ref_mod.sequence_log_probs(policy, params))
    assert_close(np.exp(log_p), [probs[y] for y in ref_mod.sequences(2, 3)], what="π(y)")
    leaf = ref_mod.harmful_leaf(log_p, h)
    h_of = {y: h[reference.lex_index(y, 2)] for y in probs}
    for t, (got, want) in enumerate(
        zip(ref_mod.prefix_marginals(leaf, 2, 3), _brute_marginals(probs, h_of, 2, 3))
    ):
        assert_close(got, want, what=f"Q_{t}")
    curve = ref_mod.attack_curve(log_p, leaf, [0], 2, 3)
    for k in range(3):
        want = [_brute_no_recovery(probs, p, [0]) for p in reference.sequences(2, k)]
        assert_close(curve[k], np.dot(ref_mod.prefix_marginals(leaf, 2, 3)[k], want), what=f"A({k})")
    assert ref_mod.uniform_horizon(h, 2, 3) == 2
    assert ref_mod.discounts(2.0, 0.5, 3).tolist() == [2.0, 1.0, 0.5]


@given(st.floats(0.01, 0.9), st.floats(0.1, 5.0), st.floats(0.1, 0.99), st.floats(0.01, 0.99))
def test_reference_attack_search_matches_the_closed_form(p_min, mu, gamma, frac):
    delta = p_min + frac * (1.0 - p_min)
    root = ref_mod.attack_root(p_min, mu, gamma, delta)
    assert abs(root - rc.attack_length(delta, p_min, mu, gamma)) <= 1e-9 * max(1.0, abs(root))
    first = ref_mod.first_attack_position(p_min, mu, gamma, delta)
    assert ref_mod.guarantee(p_min, mu, gamma, first) <= delta
    assert first == 1 or ref_mod.guarantee(p_min, mu, gamma, first - 1) > delta


@settings(max_examples=1)
@given(st.lists(recovery_cases(), min_size=30, max_size=30))
def test_recovery_inputs_have_positions_past_the_horizon(cases):
    """Not vacuous: most drawn inputs have k < T (positions past the horizon exist)."""
    shallow = 0
    for inst, *_ in cases:
        v, T = inst.policy.vocab_size, inst.policy.horizon
        shallow += ref_mod.uniform_horizon(toysim.harm_values(inst.harm, v, T), v, T) < T
    assert shallow >= 0.5 * len(cases), f"only {shallow}/{len(cases)} inputs with k < T"


@settings(max_examples=20)
@given(st.data())
def test_shallow_harms_have_a_short_horizon_when_drawn_from_a_shallow_family(data):
    v, T = data.draw(st.sampled_from([(2, 3), (3, 3)]))
    harm = data.draw(shallow_harms(v, T))
    h = toysim.harm_values(harm, v, T)
    assert set(np.unique(h)) <= {0.0, 1.0}  # binary, as the recovery checks need


def _detected(check, q, label):
    assert check.residual(q) <= check.tolerance, f"{check.name} must hold on this input"
    assert label in check.corruptions, f"{check.name} has no control {label!r}"
    wrong = check.residual(check.corruptions[label](q))
    assert not wrong <= check.tolerance, f"{check.name}: control {label!r} not detected ({wrong})"


# One fixed input per family, chosen so that every realistic bug changes the numbers: γ < 1 (a
# discount off by one is visible), a harm with k < T and E_0[h] < 1 (conditioning on harm changes Q).
GRADIENT_CASE = (
    toysim.Instance(
        toysim.TabularPolicy(2, 3),
        toysim.TabularPolicy(2, 3).init(jax.random.key(11), scale=1.0),
        toysim.deadline_harm(2, [1], 2),
        1.0,
    ),
    [0],
    2.0,
    0.5,
)


def _deep_case(q="harmful"):
    policy = toysim.TabularPolicy(2, 3)
    inst = toysim.Instance(
        policy, policy.init(jax.random.key(5), scale=1.0), toysim.deadline_harm(2, [1], 2), 1.0
    )
    return deep_cases.DeepCase(inst, (0,), 1.5, 0.6, q, 7)


@pytest.mark.parametrize(
    "label",
    [
        "discount off by one (γ^t instead of γ^{t−1})",
        "unconditioned harmful Q (π_0 marginals)",
        "recovery probability of the complement set",
        "closed form with the wrong sign",
        "penalty dropped at the last position",
    ],
)
def test_recovery_gradient_detects_realistic_bugs(label):
    check = recovery_gradient.CHECKS[0]
    _detected(check, _cached(check, GRADIENT_CASE), label)


def test_recovery_gradient_dp_side_detects_a_wrong_dp_curve():
    """The DP engine's quantities enter the residual: a Markov case with an automaton harm."""
    policy = toysim.MarkovPolicy(3, 3, order=1)
    inst = toysim.Instance(
        policy, policy.init(jax.random.key(2), scale=1.0), toysim.deadline_harm(3, [2], 1), 1.0
    )
    check = recovery_gradient.CHECKS[0]
    q = check.compute((inst, [0], 2.0, 0.5))
    assert q["dp"] is not None
    assert check.residual(q) <= check.tolerance
    got, want = q["dp"]["attack_base"]
    shifted = {**q, "dp": {**q["dp"], "attack_base": (prefill_attack._shifted(got), want)}}
    assert not check.residual(shifted) <= check.tolerance, "prefill depth off by one in the DP curve"


_COMPUTED: dict = {}


def _cached(check, case, key=None):
    key = (check.name, key if key is not None else id(case))
    if key not in _COMPUTED:
        _COMPUTED[key] = check.compute(case)
    return _COMPUTED[key]


@pytest.mark.parametrize(
    "label",
    [
        "Gibbs form with a missing μ (σ(logit + γ^{t−1}))",
        "discount off by one (μγ^t)",
        "unconditioned harmful Q (π_0 marginals)",
        "discount dropped (μ at every position)",
        "untrained π_0",
    ],
)
def test_gibbs_form_detects_realistic_bugs(label):
    check = gibbs_form.CHECKS[0]
    _detected(check, _cached(check, _deep_case(), "harmful"), label)


@pytest.mark.parametrize(
    "label",
    [
        "discount off by one (μγ^T in the bound)",
        "recovery probability of the complement set",
        "untrained π_0 in place of π*",
        "penalty with the wrong sign",
    ],
)
def test_robustness_bound_detects_realistic_bugs(label):
    check = robustness_bound.CHECKS[0]
    _detected(check, _cached(check, _deep_case(), "harmful"), label)


def test_robustness_bound_is_tight_on_this_input():
    """The inequality's other side: here p_min is attained at a last-level prefix, and the Gibbs
    form (and the trained optimum, within its certificate) meets the bound there."""
    q = _cached(robustness_bound.CHECKS[0], _deep_case(), "harmful")
    assert q["tight"]
    t, row = q["tight_at"]
    assert abs(float(q["gibbs_ref"][t][row]) - q["ref_bound"]) <= 1e-12
    assert abs(q["bound"] - q["ref_bound"]) <= 1e-12


@pytest.mark.parametrize(
    "label",
    ["discount off by one (μγ^t in the guarantee)", "missing the leading 1", "log γ instead of log(1/γ)"],
)
def test_attack_length_detects_realistic_bugs(label):
    check = attack_check.CHECKS[0]
    _detected(check, _cached(check, _deep_case(), "harmful"), label)


@pytest.mark.parametrize(
    ("check_index", "label"),
    [
        (0, "prefill depth off by one (depth k reports A(k + 1))"),
        (0, "unconditioned harmful Q (π_0 marginals)"),
        (0, "deep curve in place of the standard one"),
        (1, "prefill depth off by one (depth k reports A(k + 1))"),
        (1, "curves swapped"),
    ],
)
def test_prefill_checks_detect_realistic_bugs(check_index, label):
    check = prefill_attack.CHECKS[check_index]
    _detected(check, _cached(prefill_attack.CHECKS[0], _deep_case(), "harmful"), label)
