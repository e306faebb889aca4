"""``toysim sweep``: batched rows against one ``toysim exact`` per instance, resume, parts, plots,
and every bad-input case (one line, exit 2, nothing written).

Every row is checked against an independent computation: the instance the row replays to
(``--replay``), analysed alone by ``toysim exact`` (``exact_report``, one compiled call per
instance, no vmap). Tolerance 1e-12: the batched program runs the same float64 operations, fused
differently, on values of order one.
"""

import copy
import csv
import json
import os

import jax
import numpy as np
import pytest

import toysim
from toysim import _sweep
from toysim._cli import main
from toysim._reports import exact_report

TOLERANCE = 1e-12

MARKOV_FAMILY = {
    "family": {
        "policy": {"kind": "markov", "scale": 1.5},
        "vocab_size": 3,
        "horizon": 3,
        "harm": {"kind": "deadline", "harmful_tokens": [1], "deadline": 2},
    },
    "grid": {"lambda": [0.5, 2.0], "seed": [0, 1, 2]},
    "quantities": [
        "expected_harm",
        "harm_variance",
        "equilibrium_kl",
        "uniform_horizon",
        "gradient_autodiff_max_abs_error",
        "harm_information",
        "gradient_norm_by_position",
        "autodiff_gradient_norm_by_position",
        "fisher_bound_by_position",
        "horizon_distribution",
        "equilibrium_kl_by_position",
    ],
    "chunk_size": 4,
    "output": "table.csv",
}


def write_spec(tmp_path, spec, name="spec.json"):
    path = tmp_path / name
    path.write_text(json.dumps(spec))
    return str(path)


def table(path):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def check_rows_against_exact(spec_path, header, rows, engine_of_row=True):
    """Each row equals ``exact_report`` of the instance it replays to, column by column."""
    spec = toysim.load_sweep_spec(spec_path)
    assert [int(r[0]) for r in sorted(rows, key=lambda r: int(r[0]))] == list(range(len(rows)))
    for row in rows:
        cells = dict(zip(header, row))
        instance = toysim.loads_instance(json.dumps(toysim.sweep_replay(spec, int(cells["id"]))))
        report = exact_report(instance, engine=cells["engine"])
        assert float(cells["lambda"]) == instance.lam
        compared = 0
        for name in spec.quantities:
            want = np.atleast_1d(np.asarray(report[name], dtype=np.float64))
            if name in _sweep.SCALAR_QUANTITIES:
                got = np.array([float(cells[name])])
            else:
                first = 0 if name == "horizon_distribution" else 1
                got = np.array([float(cells[f"{name}[{t}]"]) for t in range(first, first + len(want))])
            assert np.max(np.abs(got - want)) <= TOLERANCE, (name, cells["id"], got, want)
            compared += want.size
        assert compared >= len(spec.quantities)


@pytest.mark.parametrize("engine", ["enumerate", "dp"])
def test_markov_rows_equal_exact_per_instance(tmp_path, engine):
    spec = {**MARKOV_FAMILY, "engine": engine}
    path = write_spec(tmp_path, spec)
    result = toysim.sweep(path, progress=False)
    assert (result.computed, result.skipped, result.chunks) == (6, 0, 2)
    header, rows = table(tmp_path / "table.csv")
    assert len(rows) == 6 and {dict(zip(header, r))["engine"] for r in rows} == {engine}
    check_rows_against_exact(path, header, rows)
    # every parameter in every row
    cells = dict(zip(header, rows[4]))
    assert (cells["policy"], cells["vocab_size"], cells["horizon"], cells["scale"]) == (
        "markov",
        "3",
        "3",
        "1.5",
    )
    assert (float(cells["lambda"]), int(cells["seed"])) == (2.0, 1)
    assert json.loads(cells["harm"]) == spec["family"]["harm"]


def test_sub_batches_of_a_chunk_give_the_exact_rows(tmp_path, monkeypatch):
    """Chunks of 5 run 3 instances at a time (a full sub-batch, then a remainder of 2) give each
    instance its own ``toysim exact`` row: Markov instances differing in λ and seed, and tabular
    ones with a different harm each."""
    monkeypatch.setattr(_sweep, "sub_batch", lambda per_instance, per_device: min(3, per_device))
    path = write_spec(tmp_path, {**MARKOV_FAMILY, "engine": "enumerate", "chunk_size": 5})
    assert toysim.sweep(path, progress=False).computed == 6
    check_rows_against_exact(path, *table(tmp_path / "table.csv"))
    harms = copy.deepcopy(MARKOV_FAMILY)
    harms["family"]["policy"] = {"kind": "tabular"}
    harms.update(
        engine="enumerate",
        grid={"harm.deadline": [1, 2, 3], "seed": [0, 1], "lambda": [0.5]},
        chunk_size=5,
        output="harms.csv",
    )
    path = write_spec(tmp_path, harms, "harms.json")
    assert toysim.sweep(path, progress=False).computed == 6
    check_rows_against_exact(path, *table(tmp_path / "harms.csv"))


def test_sub_batch_sizes():
    size = _sweep._SUB_BATCH_BYTES
    assert _sweep.sub_batch(size / 256, 1024) == 256
    assert _sweep.sub_batch(size / 191.5, 1024) == 128  # a power of two: no remainder to trace
    assert _sweep.sub_batch(size / 256, 64) == 64  # at most a device's share
    assert _sweep.sub_batch(2.0 * size, 1024) == 1  # at least one instance


def test_tabular_and_mlp_families_and_harm_grid(tmp_path):
    spec = {
        "family": {
            "policy": {"kind": "tabular"},
            "vocab_size": 2,
            "horizon": 3,
            "harm": {"kind": "first_decisive", "comply_tokens": [1], "refuse_tokens": [0]},
            "lambda": 1.25,
        },
        "grid": {"harm.undecided_harm": [0.0, 0.5], "seed": [3, 4]},
        "quantities": ["expected_harm", "harm_information", "gradient_norm_by_position"],
        "output": "tab.csv",
    }
    path = write_spec(tmp_path, spec)
    toysim.sweep(path, progress=False)
    header, rows = table(tmp_path / "tab.csv")
    assert "harm.undecided_harm" in header and len(rows) == 4
    check_rows_against_exact(path, header, rows)

    mlp = copy.deepcopy(spec)
    mlp["family"]["policy"] = {"kind": "mlp", "window": 1, "hidden": 3}
    mlp["family"]["harm"] = {"kind": "graded", "harmful_tokens": [1]}
    mlp["grid"] = {"seed": [0, 1]}
    mlp["quantities"] = ["expected_harm", "equilibrium_kl_by_position", "horizon_distribution"]
    mlp["output"] = "mlp.csv"
    path = write_spec(tmp_path, mlp, "mlp.json")
    toysim.sweep(path, progress=False)
    header, rows = table(tmp_path / "mlp.csv")
    check_rows_against_exact(path, header, rows)
    # the replayed tabular instance has the MLP's law: E[h] by brute force over the 8 responses,
    # with the MLP's per-prefix logits from prefix_logits (the sampling path, not logits)
    policy = toysim.MLPPolicy(2, 3, window=1, hidden=3)
    params = policy.init(jax.random.key(1), 1.0)
    h = toysim.harm_values(toysim.graded_harm(2, 3, [1]), 2, 3)
    ys = np.array([[(k >> (2 - t)) & 1 for t in range(3)] for k in range(8)])  # lexicographic
    log_p = np.zeros(8)
    for t in range(3):
        logits = np.asarray(policy.prefix_logits(params, jax.numpy.asarray(ys[:, :t])))
        log_p += (logits - np.logaddexp.reduce(logits, axis=1, keepdims=True))[np.arange(8), ys[:, t]]
    expected = float(np.sum(np.exp(log_p) * h))
    assert abs(float(dict(zip(header, rows[1]))["expected_harm"]) - expected) <= TOLERANCE


def test_base_instance_toml_spec_and_random_ranges(tmp_path):
    base = {
        "format": "toysim.instance/1",
        "vocab_size": 2,
        "horizon": 4,
        "lambda": 1.0,
        "policy": {
            "kind": "markov",
            "initial_logits": [0.2, -0.1],
            "transition_logits": [[0.3, 0.0], [-0.5, 1.0]],
        },
        "harm": {"kind": "deadline", "harmful_tokens": [1], "deadline": 3},
    }
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "spec.toml").write_text(
        'base = "base.json"\nquantities = ["expected_harm", "equilibrium_kl"]\noutput = "base.csv"\n'
        'engine = "enumerate"\n[grid]\n"harm.deadline" = [1, 2]\n'
        "[random]\nseed = 5\nsamples = 3\n[random.ranges.lambda]\nlow = 0.1\nhigh = 10.0\nlog = true\n"
    )
    path = str(tmp_path / "spec.toml")
    toysim.sweep(path, progress=False)
    header, rows = table(tmp_path / "base.csv")
    assert len(rows) == 6
    lams = [float(dict(zip(header, r))["lambda"]) for r in rows]
    assert all(0.1 <= x <= 10.0 for x in lams) and len(set(lams)) == 3  # 3 draws, reused per grid point
    assert [dict(zip(header, r))["harm.deadline"] for r in rows] == ["1"] * 3 + ["2"] * 3
    check_rows_against_exact(path, header, rows)
    # λ only changes the tilt: E[h] is the same for every draw of one deadline
    eh = [float(dict(zip(header, r))["expected_harm"]) for r in rows]
    assert len(set(eh[:3])) == 1 and len(set(eh[3:])) == 1 and eh[0] != eh[3]


def test_replay_through_the_command_line_equals_the_row(tmp_path, capsys):
    path = write_spec(tmp_path, {**MARKOV_FAMILY, "engine": "dp"})
    assert main(["sweep", path]) == 0
    capsys.readouterr()
    header, rows = table(tmp_path / "table.csv")
    cells = dict(zip(header, rows[3]))
    assert main(["sweep", path, "--replay", cells["id"]]) == 0
    instance_path = tmp_path / "row.json"
    instance_path.write_text(capsys.readouterr().out)
    assert main(["exact", str(instance_path), "--engine", cells["engine"]]) == 0
    report = json.loads(capsys.readouterr().out)
    assert abs(report["expected_harm"] - float(cells["expected_harm"])) <= TOLERANCE
    got = [float(cells[f"equilibrium_kl_by_position[{t}]"]) for t in (1, 2, 3)]
    assert np.max(np.abs(np.array(got) - report["equilibrium_kl_by_position"])) <= TOLERANCE


def test_resume_computes_only_missing_rows(tmp_path):
    path = write_spec(tmp_path, {**MARKOV_FAMILY, "chunk_size": 2})
    toysim.sweep(path, progress=False)
    full = (tmp_path / "table.csv").read_bytes()
    lines = full.decode().splitlines(keepends=True)
    # a run stopped after two chunks, with half of a row of the third written
    (tmp_path / "table.csv").write_text("".join(lines[:5]) + lines[5][:20])
    result = toysim.sweep(path, progress=False)
    assert (result.computed, result.skipped, result.chunks) == (2, 4, 1)
    assert (tmp_path / "table.csv").read_bytes() == full
    again = toysim.sweep(path, progress=False)  # complete: nothing to do
    assert (again.computed, again.chunks) == (0, 0)
    assert (tmp_path / "table.csv").read_bytes() == full


def test_compiles_once_per_shape(tmp_path, monkeypatch):
    spec = {**MARKOV_FAMILY, "engine": "dp", "chunk_size": 1, "quantities": ["expected_harm"]}
    spec["family"] = {**spec["family"], "horizon": 5}
    traces = []
    original = _sweep.dp_one

    def counted(*args):
        one = original(*args)

        def traced(*xs):
            traces.append(1)  # runs once per trace: a second compilation would trace again
            return one(*xs)

        return traced

    monkeypatch.setattr(_sweep, "dp_one", counted)
    _sweep._dp_program.cache_clear()
    try:
        toysim.sweep(write_spec(tmp_path, spec), progress=False)
    finally:
        _sweep._dp_program.cache_clear()
    assert len(traces) == 1  # six chunks, one trace and compilation


def test_parts_merge_to_the_one_process_table(tmp_path, capsys):
    path = write_spec(tmp_path, {**MARKOV_FAMILY, "chunk_size": 1})
    toysim.sweep(path, progress=False, process_id=1, num_processes=2)
    first = toysim.sweep(path, progress=False, process_id=0, num_processes=2)
    assert first.merged == str(tmp_path / "table.csv")
    _, part0 = table(_sweep.part_path(str(tmp_path / "table.csv"), 0, 2))
    assert sorted(int(r[0]) for r in part0) == [0, 2, 4]  # chunk i goes to process i mod 2
    merged = (tmp_path / "table.csv").read_bytes()
    os.remove(tmp_path / "table.csv")
    assert main(["sweep", path, "--merge", "--num-processes", "2"]) == 0
    assert (tmp_path / "table.csv").read_bytes() == merged
    single = write_spec(tmp_path, {**MARKOV_FAMILY, "chunk_size": 1, "output": "single.csv"}, "single.json")
    toysim.sweep(single, progress=False)
    assert (tmp_path / "single.csv").read_bytes() == merged


def test_plot(tmp_path, capsys):
    path = write_spec(tmp_path, MARKOV_FAMILY)
    toysim.sweep(path, progress=False)
    fig = toysim.sweep_plot(str(tmp_path / "table.csv"), x="lambda", y="equilibrium_kl", group="seed")
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3 and all(len(line.get_xdata()) == 2 for line in lines)
    header, rows = table(tmp_path / "table.csv")
    cells = [dict(zip(header, r)) for r in rows]
    seed0 = sorted((float(c["lambda"]), float(c["equilibrium_kl"])) for c in cells if c["seed"] == "0")
    assert np.allclose(lines[0].get_ydata(), [y for _, y in seed0], atol=0)
    out = tmp_path / "kl.png"
    assert (
        main(["sweep", path, "--plot", str(out), "--x", "lambda", "--y", "expected_harm", "--group", "seed"])
        == 0
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------- bad input


def bad(**changes):
    spec = copy.deepcopy(MARKOV_FAMILY)
    for key, value in changes.items():
        if value is None:
            del spec[key]
        else:
            spec[key] = value
    return spec


BAD_SPECS = {
    "unknown top-level key": (bad(grids={"lambda": [1.0]}), "unknown key 'grids'"),
    "unknown family key": (bad(family={**MARKOV_FAMILY["family"], "vocab": 3}), "unknown key 'vocab'"),
    "unknown grid parameter": (bad(grid={"gamma": [1.0]}), "grid has unknown key 'gamma'"),
    "empty grid list": (bad(grid={"lambda": []}), "grid.lambda is empty"),
    "empty random range": (
        bad(
            grid={"seed": [0]},
            random={"seed": 0, "samples": 2, "ranges": {"lambda": {"low": 2.0, "high": 1.0}}},
        ),
        "random.ranges.lambda is empty",
    ),
    "wrong type": (bad(grid={"lambda": ["big"]}), "grid.lambda[0] must be a finite number"),
    "wrong seed type": (bad(grid={"seed": [1.5], "lambda": [1.0]}), "grid.seed[0] must be an integer"),
    "negative lambda": (bad(grid={"lambda": [-1.0]}), "must be > 0"),
    "unknown quantity": (bad(quantities=["harm"]), "quantities holds 'harm'"),
    "no lambda": (bad(grid={"seed": [0]}), "needs lambda"),
    "both base and family": (bad(base="x.json"), "exactly one of"),
    "missing output folder": (bad(output="nowhere/table.csv"), "does not exist"),
    "output not csv": (bad(output="table.parquet"), "must end in .csv"),
    "bad chunk size": (bad(chunk_size=0), "chunk_size must be"),
    "dp on a tabular family": (
        bad(family={**MARKOV_FAMILY["family"], "policy": {"kind": "tabular"}}, engine="dp"),
        "engine 'dp' needs",
    ),
    "mlp gradient": (
        bad(family={**MARKOV_FAMILY["family"], "policy": {"kind": "mlp"}}),
        "depends on the MLP's parameters",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    spec, message = BAD_SPECS[case]
    path = write_spec(tmp_path, spec)
    before = sorted(os.listdir(tmp_path))
    assert main(["sweep", path]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("toysim: error: ") and message in err, err
    assert sorted(os.listdir(tmp_path)) == before
    with pytest.raises(ValueError, match="."):
        toysim.load_sweep_spec(path) if case != "dp on a tabular family" else toysim.sweep(path)


def test_not_json_and_missing_spec(tmp_path, capsys):
    path = tmp_path / "spec.json"
    path.write_text("{ not json")
    assert main(["sweep", str(path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "absent.json")]) == 2
    assert "cannot read sweep spec" in capsys.readouterr().err


def test_too_large_for_memory_or_disk(tmp_path, capsys, monkeypatch):
    path = write_spec(
        tmp_path, bad(family={**MARKOV_FAMILY["family"], "policy": {"kind": "tabular"}, "horizon": 12})
    )
    monkeypatch.setenv("TOYSIM_MAX_BYTES", str(2**20))  # 3**12 leaves need ~130 MB
    assert main(["sweep", path]) == 2
    assert "needs about" in capsys.readouterr().err and not (tmp_path / "table.csv").exists()

    monkeypatch.setenv("TOYSIM_MAX_BYTES", str(2 * 10**4))  # one instance (6.4 kB) fits, 4 do not
    path = write_spec(tmp_path, MARKOV_FAMILY)
    assert main(["sweep", path]) == 2
    assert "chunk_size = 4" in capsys.readouterr().err and not (tmp_path / "table.csv").exists()
    monkeypatch.delenv("TOYSIM_MAX_BYTES")

    free = 10**4  # bytes free on the output's disk: less than 6 rows of ~40 columns
    monkeypatch.setattr(_sweep.shutil, "disk_usage", lambda _: type("U", (), {"free": free})())
    assert main(["sweep", path]) == 2
    assert "free on the output's disk" in capsys.readouterr().err and not (tmp_path / "table.csv").exists()


def test_refuses_to_resume_another_spec(tmp_path, capsys):
    path = write_spec(tmp_path, MARKOV_FAMILY)
    toysim.sweep(path, progress=False)
    before = (tmp_path / "table.csv").read_bytes()
    other = write_spec(tmp_path, bad(grid={"lambda": [0.5, 3.0], "seed": [0, 1, 2]}), "other.json")
    assert main(["sweep", other]) == 2
    assert "another sweep spec" in capsys.readouterr().err
    assert (tmp_path / "table.csv").read_bytes() == before


@pytest.mark.parametrize("kind", ["markov", "tabular", "mlp"])
def test_chunk_draws_equal_the_replayed_instances_bit_for_bit(tmp_path, kind):
    """The sweep draws a chunk's policies at once; each equals its replayed instance file exactly."""
    family = {**MARKOV_FAMILY["family"], "policy": {"kind": kind}, "vocab_size": 2}
    spec = toysim.load_sweep_spec(
        {
            "family": family,
            "grid": {"seed": [0, 5, 2**62 + 1], "scale": [0.3, 2.0], "lambda": [1.0]},
            "quantities": ["expected_harm"],
            "chunk_size": 6,
            "output": str(tmp_path / "t.csv"),
        }
    )
    plan = _sweep.plan_sweep(spec)
    [(shape, ids)] = plan.chunks
    got = _sweep.chunk_inputs(spec, [plan.points[i] for i in ids], shape)
    replayed = [toysim.loads_instance(json.dumps(toysim.sweep_replay(spec, i))) for i in ids]
    want = _sweep.stack_instances(replayed, shape)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len({np.asarray(x).tobytes() for x in np.asarray(jax.tree_util.tree_leaves(got)[0])}) == 6


def test_progress_line_only_on_a_terminal(tmp_path, capsys, monkeypatch):
    path = write_spec(tmp_path, MARKOV_FAMILY)
    toysim.sweep(path)  # stderr is not a terminal under pytest: quiet
    assert capsys.readouterr().err == ""
    os.remove(tmp_path / "table.csv")
    monkeypatch.setattr(_sweep.sys.stderr, "isatty", lambda: True)
    toysim.sweep(path)
    err = capsys.readouterr().err
    assert "\rtoysim sweep: 4/6 instances, chunk 1/2" in err and "6/6 instances, chunk 2/2" in err
