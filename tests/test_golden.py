"""Golden outputs: the command line's numbers on fixed instances equal the recorded ones.

They guard refactorings of the engines (every number must survive a rebuild). Recorded by
``python -m tests.golden.record``; rerun it only for an intended change of output.

Tolerances: exact quantities are sums of at most a few thousand float64 terms of order one (the
DP at T = 300 adds 300 per-position terms), so a refactoring that only reorders the sums moves them
by ~1e-14; 1e-12 (absolute, or relative for larger numbers) leaves margin and still catches any
real change. Trained quantities are compared at the optimiser's precision (``TRAINED``), since a
different but equally valid order of operations changes the trajectory within its certificate.
"""

import json
import math

import pytest

from tests.golden.record import EXPECTED, outputs

EXACT = 1e-12
TRAINED = 1e-7
TRAINED_KEYS = ("trajectory", "final_", "kl_", "spillover", "gibbs_gap", "separable_", "certificate")


def _compare(actual, expected, path, tol, problems):
    if isinstance(expected, dict):
        if set(actual) != set(expected):
            problems.append(f"{path}: keys differ: {sorted(set(actual) ^ set(expected))}")
            return
        for k in expected:
            key_tol = TRAINED if any(k.startswith(p) for p in TRAINED_KEYS) else tol
            _compare(actual[k], expected[k], f"{path}.{k}", key_tol, problems)
    elif isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            problems.append(
                f"{path}: {type(actual).__name__} of length {len(actual) if isinstance(actual, list) else '-'} != list of {len(expected)}"
            )
            return
        for i, (a, e) in enumerate(zip(actual, expected)):
            _compare(a, e, f"{path}[{i}]", tol, problems)
    elif isinstance(expected, float) and isinstance(actual, (int, float)):
        if not math.isclose(actual, expected, rel_tol=tol, abs_tol=tol):
            problems.append(f"{path}: {actual!r} != {expected!r}")
    elif actual != expected:
        problems.append(f"{path}: {actual!r} != {expected!r}")


@pytest.fixture(scope="module")
def fresh():
    return outputs()


def test_every_golden_output_is_recorded(fresh):
    recorded = {p.stem for p in EXPECTED.glob("*.json")}
    assert recorded == set(fresh), f"recorded {sorted(recorded)} but computed {sorted(fresh)}"


def test_golden_outputs_unchanged(fresh):
    problems = []
    for name, report in fresh.items():
        expected = json.loads((EXPECTED / f"{name}.json").read_text())
        _compare(report, expected, name, EXACT, problems)
    assert not problems, "\n".join(problems[:20])
