"""``toysim exact``: the report contract and every bad-input case (one line, exit 2)."""

import copy
import json
import subprocess
import sys

import numpy as np
import pytest

from toysim._cli import main

BASE = {
    "format": "toysim.instance/1",
    "vocab_size": 2,
    "horizon": 2,
    "lambda": 1.0,
    "policy": {"kind": "tabular", "logits": [[0.1, -0.3], [0.2, 0.0], [-1.0, 0.5]]},
    "harm": {"kind": "table", "values": [0.0, 0.0, 1.0, 0.5]},
}
MARKOV = {
    **BASE,
    "policy": {
        "kind": "markov",
        "initial_logits": [0.0, 0.4],
        "transition_logits": [[0.3, -0.2], [1.0, 0.0]],
    },
    "harm": {"kind": "automaton", "start": 0, "transitions": [[0, 1], [1, 1]], "final_harm": [0.0, 1.0]},
}
KEYS = {
    "expected_harm",
    "harm_variance",
    "harm_information",
    "gradient_norm_by_position",
    "autodiff_gradient_norm_by_position",
    "gradient_autodiff_max_abs_error",
    "horizon_distribution",
    "equilibrium_kl_by_position",
}


def run(tmp_path, capsys, instance, *extra, raw=None):
    path = tmp_path / "instance.json"
    path.write_text(raw if raw is not None else json.dumps(instance))
    code = main(["exact", str(path), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_tabular_table_report(tmp_path, capsys):
    code, out, err = run(tmp_path, capsys, BASE)
    assert code == 0, err
    report = json.loads(out)
    assert KEYS <= set(report)
    # hand computation: pi(.|root) = softmax(0.1, -0.3); h decided by the 2nd token only under "1"
    p1 = 1 / (1 + np.exp(0.4))
    q = 1 / (1 + np.exp(-1.5))  # pi(1 | "1") = softmax(-1.0, 0.5)[1]
    assert report["expected_harm"] == pytest.approx(p1 * (1 - q) + p1 * q * 0.5, abs=1e-12)
    assert len(report["martingale"]) == 3 and report["martingale"][2] == BASE["harm"]["values"]
    assert report["horizon_distribution"] == pytest.approx([0.0, 1 - p1, p1], abs=1e-12)
    assert report["gradient_autodiff_max_abs_error"] < 1e-12
    assert sum(report["harm_information"]) == pytest.approx(report["harm_variance"], abs=1e-12)


def test_markov_automaton_report(tmp_path, capsys):
    code, out, err = run(tmp_path, capsys, MARKOV, "--engine", "enumerate")
    assert code == 0, err
    report = json.loads(out)
    assert KEYS <= set(report) and "martingale" not in report
    assert len(report["gradient_norm_by_position"]) == 2
    assert report["gradient_norm_by_position"] == pytest.approx(
        report["autodiff_gradient_norm_by_position"], abs=1e-12
    )


def _mutate(path, value):
    inst = copy.deepcopy(BASE)
    *parents, last = path
    node = inst
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return inst


BAD = [
    (("vocab_size",), KeyError, "vocab_size"),
    (("vocab_size",), "2", "vocab_size"),
    (("vocab_size",), 1, "vocab_size"),
    (("horizon",), 0, "horizon"),
    (("horizon",), 2.5, "horizon"),
    (("lambda",), 0.0, "lambda"),
    (("lambda",), -1, "lambda"),
    (("lambda",), "big", "lambda"),
    (("format",), "toysim.instance/9", "format"),
    (("policy", "kind"), "transformer", "policy.kind"),
    (("policy", "logits"), [[0.0, 0.0]], "policy.logits"),
    (("policy", "logits"), [[0.0, 0.0], [0.0], [0.0, 0.0]], "policy.logits[1]"),
    (("policy", "logits"), [[0.0, 0.0], [0.0, "x"], [0.0, 0.0]], "policy.logits[1][1]"),
    (("policy", "logits"), KeyError, "policy.logits"),
    (("harm", "kind"), "vibes", "harm.kind"),
    (("harm", "values"), [0.0, 0.0, 1.0], "harm.values"),
    (("harm", "values"), [0.0, 0.0, 1.0, 1.5], "harm.values"),
    (("harm", "values"), [0.0, -0.1, 1.0, 1.0], "harm.values"),
    (
        ("harm",),
        {"kind": "automaton", "start": 0, "transitions": [[0, 2], [1, 1]], "final_harm": [0, 1]},
        "harm.transitions",
    ),
    (
        ("harm",),
        {"kind": "automaton", "start": 5, "transitions": [[0, 1], [1, 1]], "final_harm": [0, 1]},
        "harm.start",
    ),
    (
        ("harm",),
        {"kind": "automaton", "start": 0, "transitions": [[0, 10**30], [1, 1]], "final_harm": [0, 1]},
        "harm.transitions[0][1]",
    ),
    (
        ("harm",),
        {"kind": "automaton", "start": 0, "transitions": [[0, 1], [1, 1]], "final_harm": [0]},
        "harm.final_harm",
    ),
    (
        ("harm",),
        {"kind": "automaton", "start": 0, "transitions": [[0, 1, 1], [1, 1, 1]], "final_harm": [0, 1]},
        "harm.transitions",
    ),
    (
        ("harm",),
        {"kind": "automaton", "start": 0, "transitions": [[0, 1], [1, 1]], "final_harm": [0, 2]},
        "harm.final_harm",
    ),
    (("harm",), {"kind": "deadline", "harmful_tokens": [7], "deadline": 1}, "harmful_tokens"),
    (
        ("policy",),
        {"kind": "markov", "initial_logits": [0.0, 0.0], "transition_logits": [[0.0, 0.0]]},
        "policy.transition_logits",
    ),
]


@pytest.mark.parametrize("path,value,field", BAD, ids=[f"{'.'.join(p)}={v!r}"[:60] for p, v, _ in BAD])
def test_bad_instance_one_line_exit_2(tmp_path, capsys, path, value, field):
    code, out, err = run(tmp_path, capsys, _mutate(path, value))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and field in err, err


@pytest.mark.parametrize(
    "raw,field",
    [
        ("{not json", "not valid JSON"),
        (json.dumps(BASE).replace("0.1", "NaN"), "finite"),
        (json.dumps(BASE).replace("-0.3", "Infinity"), "finite"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_unparseable_instance(tmp_path, capsys, raw, field):
    code, _, err = run(tmp_path, capsys, None, raw=raw)
    assert code == 2 and err.count("\n") == 1 and field in err, err


def test_unreachable_states_are_accepted_with_one_warning(tmp_path, capsys):
    """Unreachable states (a product or padded DFA) are valid: pruned, same report as without them
    (tests/test_limits.py compares the two on both engines)."""
    padded = {
        **MARKOV,
        "harm": {
            "kind": "automaton",
            "start": 0,
            "transitions": [[0, 1], [1, 1], [2, 0]],
            "final_harm": [0, 1, 0],
        },
    }
    code, out, err = run(tmp_path, capsys, padded, "--engine", "enumerate")
    assert code == 0 and err.count("\n") == 1 and "cannot be reached" in err and "warning" in err
    assert KEYS <= set(json.loads(out))


def test_missing_file_and_bad_engine(tmp_path, capsys):
    assert main(["exact", str(tmp_path / "nope.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    code, _, err = run(tmp_path, capsys, BASE, "--engine", "quantum")
    assert code == 2 and err.count("\n") == 1 and "engine" in err


def test_refuses_enumeration_that_does_not_fit(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TOYSIM_MAX_BYTES", "1000000")
    v, T = 4, 9
    inst = {
        **MARKOV,
        "vocab_size": v,
        "horizon": T,
        "policy": {"kind": "markov", "initial_logits": [0.0] * v, "transition_logits": [[0.0] * v] * v},
        "harm": {"kind": "trigger", "trigger_tokens": [1]},
    }
    code, out, err = run(tmp_path, capsys, inst, "--engine", "enumerate")
    assert code == 2 and out == "" and "GiB" in err and err.count("\n") == 1


def test_console_script_no_traceback(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**BASE, "lambda": -2}))
    proc = subprocess.run(
        [sys.executable, "-m", "toysim", "exact", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_console_exit_keeps_the_output_and_the_exit_status(tmp_path):
    """``python -m toysim`` ends with ``os._exit`` after the command: the report is whole, the
    status is the command's, ``--help`` exits 0, and a reader that goes away early gets no
    traceback (status 141, as for a process ended by SIGPIPE), whether the report overflows the
    pipe while it is written or sits in stdout's buffer until the final flush."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered
    path = tmp_path / "inst.json"
    path.write_text(json.dumps(MARKOV))
    cmd = [sys.executable, "-m", "toysim", "exact", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stderr == ""
    assert json.loads(proc.stdout) == json.loads(json.dumps(main_report(path)))
    helped = subprocess.run(
        [sys.executable, "-m", "toysim", "--help"], capture_output=True, text=True, env=env
    )
    assert helped.returncode == 0 and "usage: toysim" in helped.stdout
    usage = subprocess.run([sys.executable, "-m", "toysim", "bogus"], capture_output=True, text=True, env=env)
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    for horizon, read in ((4000, 1), (2, 0)):  # a report larger than the pipe, and a small one
        path.write_text(json.dumps({**MARKOV, "horizon": horizon}))
        reader = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        reader.stdout.read(read)
        reader.stdout.close()
        assert reader.wait() == 141, horizon
        assert "Traceback" not in reader.stderr.read().decode()


def main_report(path):
    from toysim._instance import load
    from toysim._reports import exact_report

    return exact_report(load(str(path)))
