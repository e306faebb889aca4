"""Every discovered theorem check holds, every negative control fails it, and the runner works.

The checks are discovered exactly as ``toysim check`` discovers them, so the checks of every
module of ``proofs_check`` are included automatically. Budgets are smaller than ``toysim check``'s
(``SMALL`` inputs per check) to keep this file fast; ``toysim check`` runs the full budget.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json

import hypothesis
import jax
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

import toysim
from proofs_check._framework import Check, instance_of
from proofs_check._runner import discover, run_check, run_checks, tabular_instance, write_counterexample
from proofs_check.strategies import instances, pad_automaton
from tests.tolerances import assert_close
from toysim._cli import main

SMALL = 6  # inputs per check here (toysim check uses check.examples)
DISCOVERED = discover()
CHECKS = [c for _, c in DISCOVERED if isinstance(c, Check)]
THEOREMS = [c for c in CHECKS if c.kind == "theorem"]
BY_NAME = {c.name: c for c in CHECKS}
CORRUPTIONS = [(c, name) for c in THEOREMS for name in c.corruptions]
FIND = settings(
    max_examples=200,
    database=None,
    deadline=None,
    derandomize=True,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def test_discovery_imports_every_module():
    broken = [f"{name}: {err!r}" for name, err in DISCOVERED if not isinstance(err, Check)]
    assert not broken, broken
    names = [c.name for c in CHECKS]
    assert len(names) == len(set(names)), "check names must be unique"
    assert {"harm_information", "covariance_gradient_sum", "zero_kl", "tilt_minimises"} <= set(names)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.name)
def test_check_holds(check, tmp_path):
    result = run_check(check, seed=0, counterexample_dir=str(tmp_path), examples=min(SMALL, check.examples))
    assert result.tried >= 1
    if check.kind == "theorem":
        assert result.status == "holds", (
            f"{check.name}: {result.verdict} (counterexample {result.counterexample})"
        )
        assert result.worst <= check.tolerance
    else:
        assert result.status == "measured", result.verdict
        assert result.verdict.startswith("measured: ")


@functools.cache
def _witnesses(name: str) -> dict:
    """For each negative control of a check, an input where it violates the tolerance.

    One search per check (not per control): every drawn input is computed once and tried against
    all controls, until each has a witness or the search budget is spent.
    """
    check = BY_NAME[name]
    found = {}

    def every_control_violated(x):
        q = check.compute(x)
        for label, corrupt in check.corruptions.items():
            if label not in found and not check.residual(corrupt(copy.deepcopy(q))) <= check.tolerance:
                found[label] = (x, q)
        return len(found) == len(check.corruptions)

    try:
        hypothesis.find(check.instances(), every_control_violated, settings=FIND)
    except hypothesis.errors.NoSuchExample:
        pass
    return found


@pytest.mark.parametrize(("check", "corruption"), CORRUPTIONS, ids=lambda x: getattr(x, "name", x))
def test_negative_control_is_detected(check, corruption, tmp_path):
    witness = _witnesses(check.name).get(corruption)
    assert witness is not None, f"{check.name}: no input where {corruption!r} exceeds the tolerance"
    x, q = witness
    assert check.residual(q) <= check.tolerance, "the uncorrupted check must hold on the witness"
    # the runner reports the corrupted check as failing on that input
    corrupt = check.corruptions[corruption]
    wrong = dataclasses.replace(
        check, instances=lambda: st.just(x), compute=lambda _: corrupt(copy.deepcopy(q))
    )
    result = run_check(wrong, counterexample_dir=str(tmp_path), examples=1)
    assert result.status == "fails", result.verdict
    assert not result.worst <= check.tolerance


def _expected_harm(inst):
    h = jnp.asarray(toysim.harm_values(inst.harm, inst.policy.vocab_size, inst.policy.horizon))
    return float(toysim.expected_harm(inst.policy, inst.params, h))


FALSE = Check(
    name="false_claim",
    result="(test)",
    section="§0",
    statement="Deliberately false: E[h] = 0 for every policy and harm.",
    latex=r"\mathbb{E}[h]=0",
    kind="theorem",
    tolerance=1e-10,
    tolerance_reason="test",
    instances=lambda: instances(policy_kinds=("mlp", "markov2")),
    compute=lambda inst: {"mean": _expected_harm(inst)},
    residual=lambda q: abs(q["mean"]),
    corruptions={"none": lambda q: q},
    applies_to="test",
    examples=20,
)


def test_false_check_fails_with_replayable_counterexample(tmp_path, capsys):
    result = run_check(FALSE, seed=1, counterexample_dir=str(tmp_path))
    assert result.status == "fails" and "FAILS" in result.verdict
    assert not result.ok
    path = result.counterexample
    assert path is not None and path.startswith(str(tmp_path))
    replayed = toysim.load_instance(path)
    assert isinstance(replayed.policy, toysim.TabularPolicy)
    assert FALSE.evaluate(replayed) > FALSE.tolerance  # the file is a counterexample too
    assert main(["exact", path]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["expected_harm"] == pytest.approx(_expected_harm(replayed), abs=1e-12)


def test_tabular_conversion_keeps_the_distribution():
    inst = hypothesis.find(instances(policy_kinds=("mlp",)), lambda x: x.policy.horizon == 3, settings=FIND)
    tab = tabular_instance(inst)
    a = toysim.forward(inst.policy, inst.params).log_prefix[-1]
    b = toysim.forward(tab.policy, tab.params).log_prefix[-1]
    assert float(jnp.max(jnp.abs(a - b))) <= 1e-12
    assert instance_of((inst, 3)) is inst and instance_of(inst) is inst and instance_of(3) is None


def test_long_markov_counterexample_is_written_as_is(tmp_path):
    """A first-order Markov / automaton input at T = 48 (3**48 leaves) is written without
    enumerating its tree, its padding states pruned, and replays through the DP engine."""
    policy = toysim.MarkovPolicy(3, 48)
    padded = pad_automaton(toysim.trigger_harm(3, [1]), 3, 6, seed=0)
    inst = toysim.Instance(policy, policy.init(jax.random.key(0)), padded, 1.0)
    path = write_counterexample((inst, 0), "dp_long_horizon", 0, str(tmp_path))
    replay = toysim.load_instance(path)
    assert replay.harm.transitions.shape[0] == 2 < padded.transitions.shape[0]
    a, b = toysim.exact_report(inst), toysim.exact_report(replay)
    assert a["engine"] == b["engine"] == "dp"
    assert_close(a["harm_information"], b["harm_information"], what="I_t")
    assert_close(a["equilibrium_kl_by_position"], b["equilibrium_kl_by_position"], what="D_t")


def _fake(name, compute, kind="theorem", strategy=None):
    return dataclasses.replace(
        FALSE,
        name=name,
        kind=kind,
        instances=strategy or (lambda: st.integers(0, 10**6)),
        compute=compute,
        residual=lambda q: q["r"],
    )


def test_error_in_a_check_is_reported_not_raised(tmp_path):
    def boom(x):
        raise RuntimeError("deliberate")

    result = run_check(_fake("boom", boom), counterexample_dir=str(tmp_path), examples=3)
    assert result.status == "error" and "RuntimeError: deliberate" in result.verdict and not result.ok
    assert result.counterexample is None and result.failing_input is not None  # an int: nothing to write


def test_finding_is_measured_never_holds(tmp_path):
    result = run_check(_fake("finding", lambda x: {"r": x / 10**6}, kind="finding"), examples=10)
    assert result.status == "measured" and result.ok
    assert result.verdict == f"measured: {result.worst:.3e}" and 0 <= result.worst <= 1


def test_runner_is_deterministic_given_the_seed():
    def record(seen):
        return _fake("record", lambda x: (seen.append(x), {"r": 0.0})[1])

    runs = {}
    for key, seed in (("a", 5), ("b", 5), ("c", 6)):
        seen = []
        run_check(record(seen), seed=seed, examples=15)
        runs[key] = seen
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]
    first = run_checks(["harm_information"], seed=2, examples=4)[0]
    again = run_checks(["harm_information"], seed=2, examples=4)[0]
    assert (first.tried, first.worst) == (again.tried, again.worst)


def test_unknown_names_and_profiles_are_rejected():
    with pytest.raises(ValueError, match="unknown result name"):
        run_checks(["no_such_result"])
    with pytest.raises(ValueError, match="profile"):
        run_checks(["harm_information"], profile="quick")
    with pytest.raises(ValueError, match="seed"):
        run_checks(["harm_information"], seed="1")
