"""Every limit is refused before it is hit; valid input at the edges is accepted.

Each extreme input below used to end in a traceback, an allocation failure or a hang. Now each
must end with exit code 2, exactly one line on stderr naming the setting, nothing on stdout,
nothing written, and quickly: the refusal happens before the expensive work. The memory limit is
pinned with ``TOYSIM_MAX_BYTES`` so that the verdicts do not depend on the machine.
"""

import copy
import json
import math
import os
import time
import warnings

import numpy as np
import pytest

import toysim
from toysim import _recovery as rc
from toysim._cli import build_parser, main
from toysim._instance import loads

# A refusal runs no JAX program: parsing, validation and an estimate. Two seconds would do on an
# idle core; 20 leaves room for a machine shared with other jobs and still catches an allocation
# or a hang (each of which took minutes or died).
QUICK_S = 20.0
GIB = 2**30

MARKOV = {
    "format": "toysim.instance/1",
    "vocab_size": 2,
    "horizon": 4,
    "lambda": 1.0,
    "policy": {
        "kind": "markov",
        "initial_logits": [0.0, 0.4],
        "transition_logits": [[0.3, -0.2], [1.0, 0.0]],
    },
    "harm": {"kind": "automaton", "start": 0, "transitions": [[0, 1], [1, 1]], "final_harm": [0.0, 1.0]},
}


def markov(vocab=2, horizon=4, harm=None, **extra):
    inst = copy.deepcopy(MARKOV)
    inst.update(vocab_size=vocab, horizon=horizon, **extra)
    inst["policy"] = {
        "kind": "markov",
        "initial_logits": [0.1 * i for i in range(vocab)],
        "transition_logits": [[0.2 * ((i + j) % 3) for j in range(vocab)] for i in range(vocab)],
    }
    if harm is not None:
        inst["harm"] = harm
    return inst


@pytest.fixture
def memory(monkeypatch):
    """16 GiB available, whatever the machine has."""
    monkeypatch.setenv("TOYSIM_MAX_BYTES", str(16 * GIB))


def write(tmp_path, obj, name="instance.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def refused(capsys, argv, *words, cwd_files=None):
    """Run ``toysim argv``; assert exit 2, one line naming ``words``, no stdout, in QUICK_S."""
    start = time.perf_counter()
    code = main(argv)
    elapsed = time.perf_counter() - start
    out, err = capsys.readouterr()
    assert code == 2, (code, err)
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("toysim: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    assert elapsed < QUICK_S, f"refusal took {elapsed:.1f} s"
    return err


# --- instance files -----------------------------------------------------------------------------


def test_state_index_beyond_int64(tmp_path, capsys):
    inst = markov(
        harm={"kind": "automaton", "start": 0, "transitions": [[0, 10**30], [1, 1]], "final_harm": [0, 1]}
    )
    refused(capsys, ["exact", write(tmp_path, inst)], "harm.transitions[0][1]", "[0, 2)")


@pytest.mark.parametrize("field,value", [("start", 10**30), ("start", -1)])
def test_start_state_out_of_range(tmp_path, capsys, field, value):
    inst = markov(harm={**MARKOV["harm"], field: value})
    refused(capsys, ["exact", write(tmp_path, inst)], "harm.start")


def test_integer_with_thousands_of_digits(tmp_path, capsys):
    text = json.dumps(MARKOV).replace('"start": 0', '"start": 1' + "0" * 5000)
    refused(capsys, ["exact", write(tmp_path, text)], "integer with thousands of digits")


@pytest.mark.parametrize("field", ["vocab_size", "horizon"])
def test_size_beyond_int32(tmp_path, capsys, field):
    refused(capsys, ["exact", write(tmp_path, {**MARKOV, field: 10**30})], field, "2147483647")


def test_json_nested_20000_deep(tmp_path, capsys):
    refused(capsys, ["exact", write(tmp_path, "[" * 20000 + "]" * 20000)], "nested too deeply")


def test_device_file_is_capped(capsys, monkeypatch):
    """``/dev/zero`` never ends: read at most one byte past the cap (small here, 256 MiB by default)."""
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    monkeypatch.setenv("TOYSIM_MAX_FILE_BYTES", "4096")
    refused(capsys, ["exact", "/dev/zero"], "/dev/zero", "larger than 4096 bytes")


def test_large_regular_file_refused_without_reading(tmp_path, capsys):
    """A 1 GiB sparse file (no disk used) is refused from its size alone, at the default cap."""
    path = tmp_path / "huge.json"
    with open(path, "wb") as fh:
        fh.truncate(GIB)
    refused(capsys, ["exact", str(path)], "larger than 268435456 bytes")


def test_deadline_beyond_horizon_is_clamped():
    """Every deadline >= T gives the same harm on responses of length T: the automaton has T + 2
    states, not deadline + 2 (deadline 20,000 on T = 4 used to allocate 12.8 GB; 1e8 hung)."""
    want = toysim.deadline_harm(4, [1], 4)
    for deadline in (5, 20_000, 10**8, 10**9, 10**30):
        harm = loads(
            json.dumps(markov(4, 4, {"kind": "deadline", "harmful_tokens": [1], "deadline": deadline}))
        ).harm
        assert harm.transitions.shape == (6, 4)
        np.testing.assert_array_equal(harm.transitions, want.transitions)
        np.testing.assert_array_equal(toysim.harm_values(harm, 4, 4), toysim.harm_values(want, 4, 4))
    # a deadline inside the horizon is kept
    assert loads(
        json.dumps(markov(4, 4, {"kind": "deadline", "harmful_tokens": [1], "deadline": 2}))
    ).harm.transitions.shape == (4, 4)


@pytest.mark.parametrize(
    "horizon,harm,words",
    [
        (
            20_000,
            {"kind": "deadline", "harmful_tokens": [1], "deadline": 20_000},
            ["harm.deadline = 20000", "S = 20002"],
        ),
        (
            10**8,
            {"kind": "deadline", "harmful_tokens": [1], "deadline": 10**9},
            ["clamped to horizon = 100000000"],
        ),
        (10**8, {"kind": "graded", "harmful_tokens": [1]}, ["graded", "S = 100000001"]),
    ],
)
def test_huge_family_automaton_refused_before_it_is_built(tmp_path, capsys, memory, horizon, harm, words):
    """S = deadline + 2 (or T + 1) states: the DP's (S, V, S) one-hot needs 32·S²·V bytes."""
    refused(capsys, ["exact", write(tmp_path, markov(4, horizon, harm))], *words, "GiB")


def test_dp_estimate_counts_the_one_hot_transition_tensor(tmp_path, capsys, monkeypatch):
    """An explicit 3,000-state automaton on T = 4: the per-position arrays are tiny (~1 MB), the
    (S, V, S) one-hot is 576 MB. The estimate used to pass it; now it refuses at 100 MB."""
    monkeypatch.setenv("TOYSIM_MAX_BYTES", str(10**8))
    n = 3000
    trans = [[min(s + 1, n - 1), s] for s in range(n)]
    harm = {
        "kind": "automaton",
        "start": 0,
        "transitions": trans,
        "final_harm": [s / (n - 1) for s in range(n)],
    }
    assert toysim.dp_estimate_bytes(2, 4, n) >= 32 * n * n * 2
    refused(capsys, ["exact", write(tmp_path, markov(2, 4, harm)), "--engine", "dp"], "S = 3000", "GiB")
    refused(
        capsys,
        ["deep", write(tmp_path, markov(2, 4, harm)), "--recovery", "0", "--engine", "dp"],
        "S = 3000",
        "GiB",
    )


# --- command-line settings ----------------------------------------------------------------------


def test_sample_vs_exact_a_billion_samples(tmp_path, capsys, memory):
    err = refused(
        capsys,
        ["sample-vs-exact", write(tmp_path, MARKOV), "--samples", "10,1000000000"],
        "--samples 1000000000",
        "GiB",
    )
    assert "268 GiB" in err  # 8 · (3·T·V + 2·T + 4) = 288 bytes a sample at V = 2, T = 4


def test_sample_size_with_many_digits(tmp_path, capsys):
    refused(
        capsys,
        ["sample-vs-exact", write(tmp_path, MARKOV), "--samples", "1" + "0" * 60],
        "--samples",
        "2**40",
    )


@pytest.mark.parametrize("seed", [str(2**63), str(2**64), "1" + "0" * 30, "-1"])
@pytest.mark.parametrize("command", [["sample-vs-exact", "INSTANCE"], ["check"], ["reproduce"]])
def test_seed_beyond_64_bits(tmp_path, capsys, command, seed):
    argv = [write(tmp_path, MARKOV) if a == "INSTANCE" else a for a in command]
    refused(capsys, [*argv, "--seed", seed], "--seed", "2**63 - 1")


def test_largest_seed_is_accepted_by_the_parser():
    for command in (["check"], ["reproduce"], ["sample-vs-exact", "x.json"]):
        assert build_parser().parse_args([*command, "--seed", str(2**63 - 1)]).seed == 2**63 - 1


def test_sampler_accepts_the_largest_seed():
    """The bound is jax.random.key's own: 2**63 − 1 is a valid key, 2**63 overflows it."""
    import jax

    jax.random.key(2**63 - 1)
    with pytest.raises(OverflowError):
        jax.random.key(2**63)


@pytest.mark.parametrize(
    "argv,word",
    [
        (["figures", "--out", "", "--only", "fig2", "--tiny"], "--out"),
        (["figures", "--out", "  ", "--only", "fig2", "--tiny"], "--out"),
        (["reproduce", "--out", "", "--only", "tilt_kl"], "--out"),
        (["check", "--counterexample-dir", "", "--only", "tilt_kl"], "--counterexample-dir"),
    ],
)
def test_empty_output_folder(tmp_path, capsys, monkeypatch, argv, word):
    monkeypatch.chdir(tmp_path)  # an empty path used to mean the current folder
    refused(capsys, argv, word, "empty path")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["reproduce", "--only", "bogus", "--out", "D"],
        ["check", "--only", "tilt_kl", "bogus", "--counterexample-dir", "D"],
    ],
)
def test_unknown_check_name_creates_no_folder(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    refused(capsys, argv, "bogus")
    assert os.listdir(tmp_path) == []  # no D, no D/counterexamples


@pytest.mark.parametrize("delta", ["2", "0", "-0.5", "1", "nan", "inf"])
def test_deep_names_delta_before_gamma(tmp_path, capsys, delta):
    """The default γ = 1 has no attack length, but a δ outside (0, 1) is the first thing wrong."""
    refused(
        capsys,
        ["deep", write(tmp_path, MARKOV), "--recovery", "0", "--delta", delta],
        "delta must be in (0, 1)",
    )


def test_deep_gamma_one_with_a_valid_delta(tmp_path, capsys):
    err = refused(capsys, ["deep", write(tmp_path, MARKOV), "--recovery", "0", "--delta", "0.5"], "gamma < 1")
    assert "delta = 0.5" in err


# --- numerics at the edges ----------------------------------------------------------------------


def test_logit_and_guarantee_in_log_space_without_warnings():
    """Logits ±700 give log p_min = −1400: p_min underflows to 0, its logit does not."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rc.logit_of_log(-1400.0) == pytest.approx(-1400.0, rel=1e-15)
        assert rc.logit_of_log(0.0) == math.inf and rc.logit_of_log(1e-17) == math.inf
        assert rc.logit_of_log(-math.inf) == -math.inf
        assert rc.sigmoid(math.inf) == 1.0 and rc.sigmoid(-math.inf) == 0.0 and rc.sigmoid(-1400.0) == 0.0
        assert rc.guaranteed_recovery(0.0, 1.0, 0.5, 4) == 0.0
        assert rc.guaranteed_recovery(1.0, 1.0, 0.5, 4) == 1.0
        assert rc.guaranteed_recovery(None, 1.0, 0.5, 4, log_p_min=-1400.0) == 0.0
        # σ(logit p + μγ^{t−1}) against the closed form at an ordinary p_min
        p, mu, g, t = 0.2, 1.3, 0.5, 3.0
        want = 1 / (1 + (1 - p) / p * math.exp(-mu * g ** (t - 1)))
        assert rc.guaranteed_recovery(p, mu, g, t) == pytest.approx(want, rel=1e-14)
        # t_attack from the log: finite where p_min underflows; the guarantee there equals δ
        t_attack = rc.attack_length(0.5, 0.0, 1.0, 0.5, log_p_min=-1400.0)
        assert math.isfinite(t_attack)
        gap = 0.0 - (-1400.0)  # logit δ − logit p_min with δ = 1/2
        assert t_attack == pytest.approx(1 + (0.0 - math.log(gap)) / math.log(2.0), rel=1e-14)
    with pytest.raises(ValueError, match="p_min must be > 0"):
        rc.attack_length(0.5, 0.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="p_min < delta"):
        rc.attack_length(0.5, 1.0, 1.0, 0.5)


@pytest.mark.parametrize("recovery", ["0", "1"])
def test_deep_on_logits_700_prints_no_warning(tmp_path, capsys, recovery):
    """π_0(R|c) rounds to exactly 1 (R = {0}) or underflows to 0 (R = {1}); both used to print
    RuntimeWarnings, and R = {1} ended in "math domain error"."""
    inst = markov(
        harm={"kind": "trigger", "trigger_tokens": [0]},
    )
    inst["policy"] = {
        "kind": "markov",
        "initial_logits": [700.0, -700.0],
        "transition_logits": [[700.0, -700.0], [-700.0, 700.0]],
    }
    code = main(
        [
            "deep",
            write(tmp_path, inst),
            "--recovery",
            recovery,
            "--gamma",
            "0.5",
            "--engine",
            "dp",
            "--compact",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0 and err == "", err
    report = json.loads(out)
    if recovery == "0":
        assert report["p_min"] == 1.0 and report["robustness_bound"] == 1.0
    else:
        assert report["p_min"] == 0.0 and report["robustness_bound"] == 0.0


def test_kl_is_never_negative_at_tiny_lambda(tmp_path, capsys):
    """λ = 1e-12: D_t ≈ λ² I_t / 2 ≈ 1e-25 is far below rounding; the enumeration used to report
    D_1 = −8.3e-17. Both engines now give values >= 0 (and at rounding size)."""
    path = write(tmp_path, {**MARKOV, "lambda": 1e-12})
    for engine in ("enumerate", "dp"):
        assert main(["exact", path, "--engine", engine, "--compact"]) == 0
        report = json.loads(capsys.readouterr().out)
        d = report["equilibrium_kl_by_position"]
        assert min(d) >= 0.0 and report["equilibrium_kl"] >= 0.0, (engine, d)
        assert max(d) < 1e-15, (engine, d)


# --- valid input accepted -----------------------------------------------------------------------


UNREACHABLE = {  # state 2 is never reached from 0; state 3 only from 2
    "kind": "automaton",
    "start": 0,
    "transitions": [[0, 1], [1, 1], [3, 0], [2, 3]],
    "final_harm": [0.0, 1.0, 0.5, 0.25],
}
PRUNED = {"kind": "automaton", "start": 0, "transitions": [[0, 1], [1, 1]], "final_harm": [0.0, 1.0]}


@pytest.mark.parametrize("engine", ["dp", "enumerate"])
def test_unreachable_states_are_accepted(tmp_path, capsys, engine):
    """A product, a generated or minimised DFA, a padded one: unreachable states are valid. The
    report equals the pruned automaton's exactly (one warning line on stderr)."""
    a = write(tmp_path, markov(harm=UNREACHABLE), "a.json")
    b = write(tmp_path, markov(harm=PRUNED), "b.json")
    assert main(["exact", a, "--engine", engine]) == 0
    out_a, err_a = capsys.readouterr()
    assert err_a.count("\n") == 1 and "warning" in err_a and "2 state(s)" in err_a and "(2, 3)" in err_a
    assert main(["exact", b, "--engine", engine]) == 0
    out_b, err_b = capsys.readouterr()
    assert err_b == ""
    assert json.loads(out_a) == json.loads(out_b)


def test_unreachable_states_with_a_start_state_renumbered():
    inst = loads(
        json.dumps(markov(harm={**UNREACHABLE, "start": 2, "transitions": [[0, 0], [0, 1], [1, 2], [3, 3]]}))
    )
    assert inst.harm.transitions.shape == (3, 2)  # state 3 is dropped, 0..2 kept
    want = toysim.automaton_harm(2, [[0, 0], [0, 1], [1, 2], [3, 3]], [0.0, 1.0, 0.5, 0.25], 2)
    np.testing.assert_array_equal(toysim.harm_values(inst.harm, 2, 4), toysim.harm_values(want, 2, 4))
