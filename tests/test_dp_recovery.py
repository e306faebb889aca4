"""The DP engine's recovery-penalty quantities (docs/theory.md §8-9) against the enumeration engine."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import toysim
from proofs_check.strategies import markov_automaton_instances
from tests.tolerances import IDENTITY, assert_close
from toysim import _recovery as rc
from toysim import _reports
from toysim._cli import main
from toysim._enumerate import levels_from_log_cond, log_cond_untied

HORIZON = 3


def enumeration_deep(inst, recovery, mu, gamma, q_logits=None):
    """The enumeration engine's values of every key :func:`toysim.dp_deep_report` shares with it."""
    policy, params = inst.policy, inst.params
    V, T = policy.vocab_size, policy.horizon
    h = jnp.asarray(toysim.harm_values(inst.harm, V, T))
    base = levels_from_log_cond(log_cond_untied(policy, [params] * T))
    if q_logits is None:
        q = rc.harmful_prefix_marginals(base, h)
    else:
        jail = levels_from_log_cond(log_cond_untied(policy, [toysim.MarkovParams(q_logits)] * T))
        q = rc.policy_prefix_marginals(jail)
    spec = rc.recovery_spec(V, recovery, q, mu=mu, gamma=gamma)
    plain = toysim.covariance_gradient(policy, params, base, toysim.harm_martingale(base, h))
    return {
        "recovery_penalty": float(rc.recovery_penalty(base, spec)),
        "plain_harm": [inst.lam * n for n in _reports._norms(plain)],
        "recovery_closed_form": _reports._norms(rc.recovery_gradient(policy, params, spec)),
        "recovery_autodiff": _reports._norms(
            toysim.deep_gradient_by_position(policy, params, base, h, inst.lam, spec, terms="recovery")
        ),
        "deep": _reports._norms(toysim.deep_gradient_by_position(policy, params, base, h, inst.lam, spec)),
        "base": np.asarray(rc.attack_success(base, spec)),
        "standard": np.asarray(rc.attack_success(rc.standard_optimum(base, h, inst.lam), spec)),
        "gibbs": np.asarray(rc.attack_success(rc.gibbs_policy(base, spec), spec)),
        "p_min": rc.min_recovery_probability(base, spec.mask),
        "robustness_bound": rc.robustness_bound(base, spec),
    }


def compare(dp, en):
    grads, curves = dp["gradient_norm_by_position"], dp["attack_success"]
    assert_close(dp["recovery_penalty"], en["recovery_penalty"], what="recovery penalty")
    for key in ("plain_harm", "recovery_closed_form", "recovery_autodiff", "deep"):
        assert_close(grads[key], en[key], what=key)
    for key in ("base", "standard", "gibbs"):
        assert_close(curves[key], en[key], what=f"attack success {key}")
    assert_close(dp["p_min"], en["p_min"], what="p_min")
    assert_close(dp["robustness_bound"], en["robustness_bound"], what="robustness bound")
    assert dp["recovery_autodiff_max_abs_error"] <= IDENTITY


# Compiling the enumeration's autodiff of the deep objective takes ~15 s per shape, so one shape
# (V = 3, T = 3, S = 6); every example after the first takes ~0.1 s.
@settings(max_examples=25)
@given(
    markov_automaton_instances(HORIZON, vocab_sizes=(3,)),
    st.sampled_from([0.5, 2.0]),
    st.sampled_from([0.5, 1.0]),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_dp_recovery_matches_enumeration(inst, mu, gamma, jailbroken, seed):
    V = inst.policy.vocab_size
    h = toysim.harm_values(inst.harm, V, HORIZON)
    recovery = [seed % V]
    if jailbroken:
        q_logits = np.asarray(inst.policy.init(jax.random.key(seed), scale=2.0).logits)
        jail = toysim.Instance(inst.policy, toysim.MarkovParams(q_logits), inst.harm, inst.lam)
        dp = toysim.dp_deep_report(inst, recovery, mu=mu, gamma=gamma, q="jailbroken", jailbroken=jail)
    elif h.max() == 0.0:
        with pytest.raises(ValueError, match="no mass"):
            toysim.dp_deep_report(inst, recovery, mu=mu, gamma=gamma)
        return
    else:
        q_logits = None
        dp = toysim.dp_deep_report(inst, recovery, mu=mu, gamma=gamma)
    compare(dp, enumeration_deep(inst, recovery, mu, gamma, q_logits))


def chain(vocab_size, horizon, seed=0):
    policy = toysim.MarkovPolicy(vocab_size, horizon)
    return policy, policy.init(jax.random.key(seed), scale=1.0)


def test_long_horizon_recovery_signal_past_the_horizon():
    """T = 2000 with a deadline harm (k = 3): the plain gradient is exactly 0 past the horizon, the
    recovery gradient is not [docs/theory.md §8], and the Gibbs policy never recovers less than π_0."""
    T = 2000
    policy, params = chain(3, T)
    inst = toysim.Instance(policy, params, toysim.deadline_harm(3, [2], deadline=3), 1.0)
    report = toysim.dp_deep_report(inst, [0], mu=1.0, gamma=0.999, delta=0.999)
    grads = report["gradient_norm_by_position"]
    k = report["uniform_horizon"]
    assert k == 3
    assert all(g == 0.0 for g in grads["plain_harm"][k:])
    assert min(grads["recovery_closed_form"][k:]) > 0.0
    assert grads["deep"][k:] == pytest.approx(grads["recovery_closed_form"][k:], rel=1e-12)
    assert_close(grads["recovery_autodiff"], grads["recovery_closed_form"], what="recovery gradient")
    curves = report["attack_success"]
    # π^G keeps π_0's law among the tokens outside R and puts more mass on R, so no-recovery
    # probabilities can only fall; the tilt equals π_0 past the horizon.
    assert all(g <= b * (1 + 1e-12) for g, b in zip(curves["gibbs"], curves["base"]))
    assert_close(curves["standard"][k:], curves["base"][k:], what="standard = base past the horizon")
    gibbs_min = report["gibbs_min_recovery_by_position"]
    assert min(gibbs_min) >= report["robustness_bound"] * (1 - 1e-12)
    assert rc.guaranteed_recovery(report["p_min"], 1.0, 0.999, report["attack_length"]) == pytest.approx(
        0.999
    )


def test_deep_arrays_compile_once_per_shape():
    policy, params = chain(2, 50)
    harm = toysim.trigger_harm(2, [1])
    sizes = []
    for lam in (0.5, 1.0, 2.0):
        toysim.dp_deep_report(toysim.Instance(policy, params, harm, lam), [0], mu=lam, gamma=0.9)
        sizes.append(toysim.dp_deep_arrays._cache_size())
    assert sizes[0] == sizes[1] == sizes[2]


def test_refuses_bad_input(monkeypatch):
    policy, params = chain(2, 5)
    inst = toysim.Instance(policy, params, toysim.trigger_harm(2, [1]), 1.0)
    harmless = toysim.Instance(policy, params, toysim.automaton_harm(0, [[0, 0]], [0.0], 2), 1.0)
    with pytest.raises(ValueError, match="no mass"):
        toysim.dp_deep_report(harmless, [0])
    with pytest.raises(ValueError, match="proper subset"):
        toysim.dp_deep_report(inst, [0, 1])
    with pytest.raises(ValueError, match="gamma"):
        toysim.dp_deep_report(inst, [0], gamma=1.5)
    tabular = toysim.Instance(
        toysim.TabularPolicy(2, 2), toysim.TabularPolicy(2, 2).init(jax.random.key(0)), inst.harm, 1.0
    )
    with pytest.raises(ValueError, match="Markov"):
        toysim.dp_deep_report(tabular, [0])
    with pytest.raises(ValueError, match="jailbroken policy"):
        toysim.dp_deep_report(inst, [0], q="jailbroken", jailbroken=tabular)
    monkeypatch.setenv("TOYSIM_MAX_BYTES", str(2**20))
    long = toysim.Instance(*chain(2, 100_000), inst.harm, 1.0)
    with pytest.raises(ValueError, match="GiB"):
        toysim.dp_deep_report(long, [0])


MARKOV = {
    "format": "toysim.instance/1",
    "vocab_size": 3,
    "horizon": HORIZON,
    "lambda": 1.0,
    "policy": {
        "kind": "markov",
        "initial_logits": [0.0, -1.0, 0.5],
        "transition_logits": [[0.5, -2.0, 0.0], [0.0, 0.3, 1.0], [-1.0, 0.0, 0.2]],
    },
    "harm": {"kind": "deadline", "harmful_tokens": [1], "deadline": 1},
}


def deep(tmp_path, capsys, instance, *argv):
    path = tmp_path / "instance.json"
    path.write_text(json.dumps(instance))
    code = main(["deep", str(path), "--recovery", "0", "--mu", "2", "--gamma", "0.5", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_dp_engine_matches_enumeration(tmp_path, capsys):
    """``auto`` picks the DP for this Markov/automaton instance; its report matches the
    enumeration engine's values (computed in Python: the CLI's enumerate path also trains two
    optima, covered by tests/test_recovery.py)."""
    reports = {}
    for engine in ("auto", "dp"):
        code, out, err = deep(tmp_path, capsys, MARKOV, "--engine", engine)
        assert code == 0, err
        reports[engine] = json.loads(out)
    assert reports["auto"] == reports["dp"] and reports["dp"]["engine"] == "dp"
    path = tmp_path / "instance.json"
    compare(reports["dp"], enumeration_deep(toysim.load_instance(path), [0], 2.0, 0.5))
    assert reports["dp"]["uniform_horizon"] == 1


def test_cli_dp_refuses_what_it_cannot_read(tmp_path, capsys):
    tabular = {**MARKOV, "horizon": 1, "policy": {"kind": "tabular", "logits": [[0.0, 1.0, 2.0]]}}
    code, out, err = deep(tmp_path, capsys, tabular, "--engine", "dp")
    assert code == 2 and out == "" and "Markov" in err and err.count("\n") == 1
    table = {**MARKOV, "harm": {"kind": "table", "values": [0.0] * 26 + [1.0]}}
    code, out, err = deep(tmp_path, capsys, table, "--engine", "dp")
    assert code == 2 and out == "" and "automaton harm" in err and err.count("\n") == 1
    huge = {**MARKOV, "horizon": 60}
    code, out, err = deep(tmp_path, capsys, huge, "--engine", "enumerate")
    assert code == 2 and out == "" and "GiB" in err and err.count("\n") == 1
