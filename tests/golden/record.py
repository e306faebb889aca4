"""Golden outputs of the command line, recorded before the engine rebuild (issue: one engine
interface), so that a refactoring can prove it changed no number.

``python -m tests.golden.record`` writes, for every instance file in ``tests/golden/instances``,
the JSON of ``toysim exact`` (every engine that applies), ``toysim deep`` (both engines where the
DP applies) and ``toysim train`` (tabular and Markov policies) into ``tests/golden/expected``, plus
the MLP analysis (no instance format for MLP policies) through the Python API.
``tests/test_golden.py`` recomputes them and compares with the tolerances stated there.

Run it only when a change of output is intended, and say why in the commit message.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSTANCES = HERE / "instances"
EXPECTED = HERE / "expected"

# (instance file, the runs recorded for it). Each run is (name, argv after the file name).
DEEP = ["--recovery", "0", "--mu", "2.0", "--gamma", "0.8", "--delta", "0.6"]
RUNS = {
    "tabular_table_v2_t3": [
        ("exact_enumerate", ["exact", "--engine", "enumerate"]),
        ("deep_enumerate", ["deep", *DEEP, "--engine", "enumerate"]),
        ("train", ["train"]),
    ],
    "tabular_deadline_v3_t2": [
        ("exact_enumerate", ["exact", "--engine", "enumerate"]),
        ("deep_enumerate", ["deep", *DEEP, "--engine", "enumerate"]),
    ],
    "markov_deadline_v3_t4": [
        ("exact_enumerate", ["exact", "--engine", "enumerate"]),
        ("exact_dp", ["exact", "--engine", "dp"]),
        ("deep_enumerate", ["deep", *DEEP, "--engine", "enumerate"]),
        ("deep_dp", ["deep", *DEEP, "--engine", "dp"]),
        ("train", ["train"]),
    ],
    "markov_first_decisive_v2_t5": [
        ("exact_enumerate", ["exact", "--engine", "enumerate"]),
        ("exact_dp", ["exact", "--engine", "dp"]),
        ("deep_dp", ["deep", *DEEP, "--engine", "dp"]),
    ],
    "markov_graded_v3_t3": [
        ("exact_enumerate", ["exact", "--engine", "enumerate"]),
        ("exact_dp", ["exact", "--engine", "dp"]),
    ],
    "markov_automaton_v3_t6": [
        ("exact_enumerate", ["exact", "--engine", "enumerate"]),
        ("exact_dp", ["exact", "--engine", "dp"]),
        ("deep_dp", ["deep", *DEEP, "--engine", "dp"]),
    ],
    "markov_trigger_v2_t300": [
        ("exact_dp", ["exact", "--engine", "dp"]),
        ("deep_dp", ["deep", *DEEP, "--engine", "dp"]),
    ],
}


def run_cli(argv: list[str]) -> dict:
    """``toysim ARGV`` in this process; its JSON report (exit code must be 0)."""
    from toysim._cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    if code != 0:
        raise RuntimeError(f"toysim {' '.join(argv)} exited {code}: {err.getvalue().strip()}")
    return json.loads(out.getvalue())


def outputs() -> dict[str, dict]:
    """Every golden output, recomputed: name -> JSON object."""
    result = {}
    for stem, runs in RUNS.items():
        path = str(INSTANCES / f"{stem}.json")
        for name, argv in runs:
            result[f"{stem}.{name}"] = run_cli([argv[0], path, *argv[1:]])
    result["mlp_table_v2_t3.analyze"] = mlp_analysis()
    return result


def mlp_analysis() -> dict:
    """``toysim.analyze`` of a fixed MLP policy (instance files hold no MLP policies)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import toysim

    policy = toysim.MLPPolicy(vocab_size=2, horizon=3, window=1, hidden=4)
    params = policy.init(jax.random.key(7))
    h = jnp.asarray(np.linspace(0.0, 1.0, 8) ** 2)
    a = jax.device_get(toysim.analyze(policy, params, h, jnp.float64(1.0)))
    # The fields recorded before the engine rebuild (issue 12); later fields are not golden.
    return {
        k: (np.asarray(v).tolist() if k != "martingale" else [np.asarray(m).tolist() for m in v])
        for k, v in a._asdict().items()
        if k in RECORDED_ANALYSIS_FIELDS
    }


RECORDED_ANALYSIS_FIELDS = (
    "expected_harm",
    "harm_variance",
    "harm_information",
    "gradient_norm_by_position",
    "autodiff_gradient_norm_by_position",
    "gradient_autodiff_max_abs_error",
    "fisher_bound_by_position",
    "horizon_distribution",
    "uniform_horizon",
    "equilibrium_kl_by_position",
    "equilibrium_kl",
    "martingale",
)


def main() -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    EXPECTED.mkdir(exist_ok=True)
    for name, report in outputs().items():
        (EXPECTED / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
        print("wrote", name)


if __name__ == "__main__":
    main()
