"""The denominators of the benchmarks compute what they claim to.

``benchmarks/numpy_reference.py`` is the numpy program that ``bench_whole_process.py`` times beside
``toysim exact``: a ratio against it means something only if it computes the same report. Its two
engines are checked here against toysim's (and against each other) on instances small enough to
enumerate, with a planted error to show the comparison can fail.
"""

import importlib.util
import json
import os

import numpy as np
import pytest

from toysim._instance import load, loads
from toysim._reports import exact_report

from .tolerances import assert_close

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REF = _module("numpy_reference")
BENCH = _module("bench_whole_process")


def _write(tmp_path, inst) -> str:
    path = tmp_path / "inst.json"
    path.write_text(json.dumps(inst))
    return str(path)


def _small(tmp_path, horizon):
    """The bench's enumeration instance (Markov V = 4, 4-state automaton) at a short horizon."""
    inst = BENCH.instances()["enumerate"]
    inst["horizon"] = horizon
    return _write(tmp_path, inst)


# V = 3 tokens, S = 4 states, start state 1, λ = 0.7: harmful iff token 2 comes within the first two
# positions (state 0 harmful, 1 and 2 still open, 3 safe), so the uniform horizon is 2 < T
DEADLINE = {
    "format": "toysim.instance/1",
    "vocab_size": 3,
    "horizon": 6,
    "lambda": 0.7,
    "policy": BENCH._markov(np.random.default_rng(1), 3),
    "harm": {
        "kind": "automaton",
        "start": 1,
        "transitions": [[0, 0, 0], [2, 2, 0], [3, 3, 0], [3, 3, 3]],
        "final_harm": [1.0, 0.0, 0.0, 0.0],
    },
}
# harm 1 unless token 1 ever occurs, with π(1 | 0) ≈ e^-8: after 95 positions of token 0 the
# probability of the undetermined state underflows, but the state is reachable until T
UNDERFLOW = {
    "format": "toysim.instance/1",
    "vocab_size": 2,
    "horizon": 200,
    "lambda": 1.0,
    "policy": {
        "kind": "markov",
        "initial_logits": [0.0, 0.0],
        "transition_logits": [[-8.0, 0.0], [0.0, 0.0]],
    },
    "harm": {"kind": "automaton", "start": 0, "transitions": [[0, 1], [1, 1]], "final_harm": [1.0, 0.0]},
}


def _compare(ours: dict, theirs: dict):
    for key, value in theirs.items():
        # float64 sums of the same terms in another order, over at most V**T = 4096 leaves (the DP:
        # 200 positions of 4 states)
        assert_close(ours[key], value, what=key)


@pytest.mark.parametrize("engine", ["enumerate", "dp"])
def test_numpy_reference_matches_toysim_exact(tmp_path, engine):
    path = _small(tmp_path, 6)
    theirs = getattr(REF, f"{engine}_reference")(*REF._read(path))
    assert set(theirs) < set(exact_report(load(path), engine=engine))
    _compare(exact_report(load(path), engine=engine), theirs)
    assert 0 < theirs["uniform_horizon"] <= 6 and theirs["expected_harm"] > 0


@pytest.mark.parametrize("engine", ["enumerate", "dp"])
def test_numpy_reference_matches_on_an_early_horizon_with_fewer_tokens_than_states(tmp_path, engine):
    path = _write(tmp_path, DEADLINE)
    theirs = getattr(REF, f"{engine}_reference")(*REF._read(path))
    assert theirs["uniform_horizon"] == 2
    _compare(exact_report(load(path), engine=engine), theirs)


def test_numpy_dp_reference_reads_reachability_not_underflowed_probabilities(tmp_path):
    path = _write(tmp_path, UNDERFLOW)
    theirs = REF.dp_reference(*REF._read(path))
    assert theirs["uniform_horizon"] == 200
    _compare(exact_report(load(path), engine="dp"), theirs)


def test_numpy_engines_agree_with_each_other(tmp_path):
    for path in (_small(tmp_path, 5), _write(tmp_path, DEADLINE)):
        data = REF._read(path)
        _compare(REF.enumerate_reference(*data), REF.dp_reference(*data))


def test_comparison_fails_on_a_planted_error(tmp_path):
    """Negative control: the reference with its tilt's λ doubled is caught by the comparison."""
    path = _small(tmp_path, 5)
    v, t, lam, *rest = REF._read(path)
    wrong = REF.dp_reference(v, t, 2 * lam, *rest)
    with pytest.raises(AssertionError, match="equilibrium_kl"):
        _compare(exact_report(load(path), engine="dp"), wrong)


def test_bench_instances_load():
    for inst in BENCH.instances().values():
        assert loads(json.dumps(inst)).policy.horizon == inst["horizon"]
    assert np.isfinite(list(BENCH.ISSUE_NUMPY_S.values())).all()
