"""Figures 9 and 10 (alignment methods, docs/theory.md §11): the numbers behind each, tiny sizes."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

import figures

NAMES = ["fig9_depth_by_method", "fig10_kl_harm_frontier"]


@pytest.fixture(scope="module")
def tiny():
    specs = {spec.name: spec for spec in figures.FIGURES}
    out = {}
    for name in NAMES:
        numbers, fig = figures.build(specs[name], tiny=True)
        assert fig.axes, name
        plt.close(fig)
        for key, value in numbers.items():
            assert isinstance(value, np.ndarray) and np.all(np.isfinite(value)), (name, key)
        out[name] = numbers
    return out


def test_tiny_data_match_the_committed_data(tiny):
    for name, numbers in tiny.items():
        record = figures.read_data(figures.DEFAULT_OUT_DIR / "tiny" / f"{name}.json")
        assert figures.compare_data(numbers, record) == [], name


def test_fig9_reweightings_stop_at_the_horizon_and_the_recovery_penalty_does_not(tiny):
    d = tiny["fig9_depth_by_method"]
    k = int(d["k"])
    for name in ("tilt", "ipo", "best_of_n", "rejection_sampling", "token_wise_kl"):
        assert np.all(d[f"kl_{name}"][k:] == 0.0), name
        # past the horizon every prefix of Q is determined: the policy is pi_0 there
        np.testing.assert_allclose(d[f"attack_{name}"][k:], d["attack_base"][k:], rtol=1e-10)
        assert int(d[f"depth_{name}"]) <= k, name
    assert np.all(d["kl_recovery_penalty"][k:] > 0)
    assert int(d["depth_recovery_penalty"]) > k


def test_fig10_every_optimum_is_on_or_above_the_frontier(tiny):
    d = tiny["fig10_kl_harm_frontier"]
    gaps = {key: float(v) for key, v in d.items() if key.startswith("gap_")}
    assert gaps and min(gaps.values()) >= -1e-10, gaps
    assert abs(gaps["gap_all_tilt"]) <= 1e-10
    # a graded harm: IPO and best-of-N reweight by non-exponential functions of h
    assert gaps["gap_all_ipo"] > 1e-9 and gaps["gap_all_best_of_n"] > 1e-9
    # the Markov family can do no better than all policies
    assert gaps["gap_family_tilt"] > 1e-9
    assert np.all(np.diff(d["frontier_harm"]) < 0) and np.all(np.diff(d["frontier_kl"]) > 0)
