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


def _small(tmp_path, horizon):
    """The bench's enumeration instance (Markov V = 4, 4-state automaton) at a short horizon."""
    inst = BENCH.instances()["enumerate"]
    inst["horizon"] = horizon
    path = tmp_path / "inst.json"
    path.write_text(json.dumps(inst))
    return str(path)


def _compare(ours: dict, theirs: dict):
    for key, value in theirs.items():
        # float64 sums of the same terms in another order, over at most V**T = 4096 leaves
        assert_close(ours[key], value, what=key)


@pytest.mark.parametrize("engine", ["enumerate", "dp"])
def test_numpy_reference_matches_toysim_exact(tmp_path, engine):
    path = _small(tmp_path, 6)
    theirs = getattr(REF, f"{engine}_reference")(*REF._read(path))
    assert set(theirs) < set(exact_report(load(path), engine=engine))
    _compare(exact_report(load(path), engine=engine), theirs)
    assert 0 < theirs["uniform_horizon"] <= 6 and theirs["expected_harm"] > 0


def test_numpy_engines_agree_with_each_other(tmp_path):
    data = REF._read(_small(tmp_path, 5))
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
