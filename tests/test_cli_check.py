"""``toysim check`` and ``toysim reproduce``: table, JSON, exit codes, bad input (one line, exit 2).

The runner's discovery is replaced by small fake checks so that these tests exercise the command
line, not the mathematics (``tests/test_proofs_check.py`` runs the real checks).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import types

import pytest
from hypothesis import strategies as st

import toysim
from proofs_check import _runner
from proofs_check._framework import Check
from proofs_check.strategies import instances
from toysim._cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _check(name, residual, kind="theorem", strategy=None):
    return Check(
        name=name,
        result="(test)",
        section="§0",
        statement="test",
        latex="",
        kind=kind,
        tolerance=1e-10,
        tolerance_reason="test",
        instances=strategy or (lambda: st.integers(0, 100)),
        compute=lambda x: {"x": x},
        residual=residual,
        corruptions={"shift": lambda q: {"x": q["x"] + 1}},
        applies_to="test",
        examples=5,
    )


HOLDS = dataclasses.replace(
    _check("always_holds", lambda q: 0.0), exercised=lambda q: q["x"] % 2 == 0, examples=10
)
FINDING = _check("a_finding", lambda q: q["x"] / 100, kind="finding")
FAILS = _check(
    "harm_is_zero",
    lambda q: float(toysim.harm_values(q["x"].harm, q["x"].policy.vocab_size, q["x"].policy.horizon).max()),
    strategy=lambda: instances(policy_kinds=("markov1",), harm_kinds=("table",), max_horizon=2),
)


@pytest.fixture
def fake_checks(monkeypatch):
    checks = [("always_holds", HOLDS), ("a_finding", FINDING), ("harm_is_zero", FAILS)]
    monkeypatch.setattr(_runner, "discover", lambda: list(checks))
    monkeypatch.setattr(_runner, "check_modules", lambda: {"always_holds": "fake_module"})
    return checks


def test_table_and_exit_code_zero_when_theorems_hold(fake_checks, capsys):
    code = main(["check", "--only", "always_holds", "a_finding", "--seed", "3"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["result", "paper", "section", "tried"]
    row = next(line for line in lines if line.startswith("always_holds"))
    assert "§0" in row and row.rstrip().endswith("holds")
    finding = next(line for line in lines if line.startswith("a_finding"))
    assert "measured: " in finding and "holds" not in finding
    assert "1/1 theorem checks hold; 1 finding measured (not theorems)" in out
    # the exercised column: inputs that exercised the statement out of those tried
    assert lines[0].split()[4] == "exercised"
    cells = row.split()
    used, tried = (int(x) for x in cells[4].split("/"))
    assert tried == int(cells[3]) == 10 and 0 <= used <= tried
    assert finding.split()[4] == f"{finding.split()[3]}/{finding.split()[3]}"  # no predicate: all
    assert "[1/2] always_holds: holds" in err and "[2/2] a_finding: measured" in err


NEVER_EXERCISED = dataclasses.replace(
    _check("never_exercised", lambda q: 0.0), exercised=lambda q: False, examples=5
)


def test_theorem_no_input_exercised_is_vacuous_and_fails(monkeypatch, capsys):
    # residual 0 on every input, but no input exercised the statement: not "holds"
    monkeypatch.setattr(_runner, "discover", lambda: [("never_exercised", NEVER_EXERCISED)])
    monkeypatch.setattr(_runner, "check_modules", lambda: {})
    code = main(["check", "--seed", "1"])
    out, _ = capsys.readouterr()
    assert code == 1
    row = next(line for line in out.splitlines() if line.startswith("never_exercised"))
    assert "VACUOUS" in row and "0/5" in row
    assert "0/1 theorem checks hold" in out and "never_exercised (vacuous" in out
    assert main(["check", "--json", "--seed", "1"]) == 1
    (entry,) = json.loads(capsys.readouterr().out)["checks"]
    assert entry["status"] == "vacuous" and entry["instances_exercised"] == 0


def test_module_name_selects_its_checks(fake_checks, capsys):
    assert main(["check", "--only", "fake_module", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in report["checks"]] == ["always_holds"]


def test_failing_theorem_exit_one_and_replayable_file(fake_checks, tmp_path, capsys):
    folder = tmp_path / "cex"
    code = main(["check", "--json", "--counterexample-dir", str(folder)])
    out, err = capsys.readouterr()
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    by_name = {c["name"]: c for c in report["checks"]}
    assert set(by_name) == {"always_holds", "a_finding", "harm_is_zero"}
    failed = by_name["harm_is_zero"]
    assert failed["status"] == "fails" and failed["worst_residual"] > failed["tolerance"]
    assert by_name["a_finding"]["verdict"].startswith("measured: ")
    path = failed["counterexample"]
    assert path.startswith(str(folder)) and path in err
    assert main(["exact", path]) == 0
    capsys.readouterr()


def test_json_and_thorough_profile(fake_checks, capsys):
    assert main(["check", "--only", "always_holds", "--profile", "thorough", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["checks"]
    assert entry["instances_tried"] == 100  # examples = 10, x10 in thorough
    assert 0 < entry["instances_exercised"] < 100  # even draws exercise it, odd ones do not


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["check", "--only", "no_such_result"], "unknown result name"),
        (["check", "--seed", "1.5"], "--seed"),
        (["check", "--seed", "abc"], "--seed"),
        (["check", "--profile", "quick"], "--profile"),
        (["reproduce", "--seed", "x"], "--seed"),
    ],
)
def test_bad_input_one_line_exit_two(fake_checks, capsys, argv, needle):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and needle in err


def test_unwritable_folder_one_line_exit_two(fake_checks, tmp_path, monkeypatch, capsys):
    fake = types.ModuleType("figures")
    fake.make_all = lambda out_dir: []
    monkeypatch.setitem(sys.modules, "figures", fake)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["check", "--counterexample-dir", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not writable" in err
    assert main(["reproduce", "--jobs", "1", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not writable" in err


def test_reproduce_runs_checks_then_figures(fake_checks, tmp_path, monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("figures")
    fake.make_all = lambda out_dir: calls.append(out_dir) or [f"{out_dir}/fig.png"]
    monkeypatch.setitem(sys.modules, "figures", fake)
    out = tmp_path / "out"
    assert main(["reproduce", "--jobs", "1", "--out", str(out), "--only", "always_holds"]) == 0
    assert calls == [str(out)]
    assert json.loads((out / "checks.json").read_text())["ok"] is True
    assert "figure: " in capsys.readouterr().out
    # a failing check: figures are still made, exit code 1
    assert main(["reproduce", "--jobs", "1", "--out", str(out), "--only", "harm_is_zero"]) == 1
    assert len(calls) == 2


def test_reproduce_builds_the_figures_in_a_second_process(fake_checks, tmp_path, monkeypatch, capsys):
    """``--jobs 2``: the figures come from a ``toysim figures`` child started before the checks
    (here the tiny fig1, so the test takes seconds); the same files as ``toysim figures`` in this
    process, and the child's paths printed after the table. A child that fails: one line, exit 2."""
    from toysim import _cli_check

    def command(out):
        return [sys.executable, "-m", "toysim", "figures", "--tiny", "--only", "fig1", "--out", out]

    monkeypatch.setattr(_cli_check, "_figures_command", command)
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "out"
    assert main(["reproduce", "--jobs", "2", "--out", str(out), "--only", "always_holds"]) == 0
    printed = capsys.readouterr().out
    assert printed.index("theorem checks hold") < printed.index("figure: ")
    paths = [line.removeprefix("figure: ") for line in printed.splitlines() if line.startswith("figure: ")]
    assert sorted(os.path.basename(p) for p in paths) == [
        "fig1_martingale_paths.json",
        "fig1_martingale_paths.pdf",
        "fig1_martingale_paths.png",
    ]
    import figures

    here = figures.make_all(tmp_path / "here", only=["fig1"], progress=False, tiny=True)
    for path in here:
        assert path.read_bytes() == (out / path.name).read_bytes()

    monkeypatch.setattr(
        _cli_check, "_figures_command", lambda out: [sys.executable, "-c", "raise SystemExit(2)"]
    )
    assert main(["reproduce", "--jobs", "2", "--out", str(out), "--only", "always_holds"]) == 2
    err = capsys.readouterr().err
    assert "the figures failed" in err.strip().splitlines()[-1]
    assert main(["reproduce", "--jobs", "3"]) == 2
    assert "--jobs" in capsys.readouterr().err


def test_reproduce_without_figures_package_is_a_clear_error(fake_checks, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "figures", None)  # import figures -> ImportError
    assert main(["reproduce", "--jobs", "1", "--out", str(tmp_path / "o"), "--only", "always_holds"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "figures" in err
    fake = types.ModuleType("figures")  # importable but without make_all
    monkeypatch.setitem(sys.modules, "figures", fake)
    assert main(["reproduce", "--jobs", "1", "--out", str(tmp_path / "o"), "--only", "always_holds"]) == 2
    assert "make_all" in capsys.readouterr().err


def test_console_script_bad_name():
    proc = subprocess.run(
        [sys.executable, "-m", "toysim", "check", "--only", "no_such_result"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "no_such_result" in proc.stderr


def test_fake_checks_are_valid():
    # the fakes use the real contract: a theorem check needs a negative control
    with pytest.raises(ValueError, match="negative control"):
        dataclasses.replace(HOLDS, corruptions={})
