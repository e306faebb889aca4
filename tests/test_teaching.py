"""The exercise checkers of ``toysim.teaching``: right answers accepted, wrong ones rejected with
the location of the error (prefix, position, token, magnitude), bad shapes refused by name.

Every exact value here is written by hand from the mathematics (docs/theory.md), not read from
toysim: the checkers compare against toysim, so the tests pin toysim's side independently.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toysim
from toysim import teaching

# ---------------------------------------------------------------- a tree one can compute by hand
# V = 2, T = 2, P(next = 1) = 1/2 at the root, 1/4 after 0, 3/4 after 1; harm = 1 on "11" only.
P_ONE = np.array([0.5, 0.25, 0.75])
POLICY = toysim.TabularPolicy(2, 2)
PARAMS = POLICY.from_rows(jnp.asarray(np.stack([np.log(1 - P_ONE), np.log(P_ONE)], axis=1)))
HARM = toysim.table_harm([0.0, 0.0, 0.0, 1.0], 2, 2)
# H by hand: H(11) = 1, others 0 at the leaves; H(0) = 0, H(1) = 3/4; H_0 = 1/2 · 3/4 = 3/8.
H_BY_HAND = {
    (): 3 / 8,
    (0,): 0.0,
    (1,): 3 / 4,
    (0, 0): 0.0,
    (0, 1): 0.0,
    (1, 0): 0.0,
    (1, 1): 1.0,
}
# G_2 by hand, P(p) π(v|p) (H(pv) − H(p)): prefix 0 has H constant (0) -> zero row;
# prefix 1: P = 1/2; token 0: 1/2 · 1/4 · (0 − 3/4) = −3/32; token 1: 1/2 · 3/4 · (1 − 3/4) = 3/32.
G2_BY_HAND = np.array([[0.0, 0.0], [-3 / 32, 3 / 32]])
# G_1: prefix () with P = 1; token 0: 1/2 · (0 − 3/8) = −3/16; token 1: 1/2 · (3/4 − 3/8) = 3/16.
G1_BY_HAND = np.array([[-3 / 16, 3 / 16]])


# ---------------------------------------------------------------- the general checker


def test_check_accepts_equal_arrays_and_rejects_with_location():
    assert teaching.check([0.1, 0.2, 0.3], np.array([0.1, 0.2, 0.3]))
    v = teaching.check([0.1, 0.25, 0.3], [0.1, 0.2, 0.3], name="I", key_label=teaching.position_label)
    assert not v
    assert "position 2" in v.message and "0.25" in v.message and "0.2" in v.message
    assert "off by 0.05" in v.message
    assert "1 of 3" in v.message


def test_check_tolerance_is_relative_plus_absolute():
    assert teaching.check(1.0 + 5e-7, 1.0)  # inside atol + rtol·|x| = 2e-6
    assert not teaching.check(1.0 + 5e-6, 1.0)
    assert teaching.check(1e6 * (1 + 5e-7), 1e6)  # relative part scales
    assert not teaching.check(1e-3, 0.0)


def test_check_lists_at_most_three_and_counts_the_rest():
    v = teaching.check(np.ones(6), np.zeros(6))
    assert not v
    assert "6 of 6" in v.message and "and 3 more" in v.message
    assert v.message.count("you gave") == 3


def test_check_none_is_not_answered_yet_and_nan_is_wrong():
    v = teaching.check(None, [1.0])
    assert not v and "no answer yet" in v.message
    v = teaching.check([np.nan, 1.0], [0.5, 1.0], key_label=teaching.position_label)
    assert not v and "position 1" in v.message and "nan" in v.message


def test_require_passes_right_answers_through_and_raises_on_wrong_ones():
    ok = teaching.check(0.5, 0.5)
    assert ok.require() is ok
    with pytest.raises(AssertionError, match="off by -0.1"):
        teaching.check(0.4, 0.5).require()


def test_check_scalar():
    assert teaching.check(0.5, 0.5)
    v = teaching.check(0.4, 0.5, name="D_1")
    assert not v and "D_1" in v.message and "off by -0.1" in v.message


@pytest.mark.parametrize(
    "answer, expected, needle",
    [
        ([1.0, 2.0], [1.0, 2.0, 3.0], "shape (3,), got shape (2,)"),
        ([[1.0, 2.0]], [1.0, 2.0], "shape (2,), got shape (1, 2)"),
        (["a", "b"], [1.0, 2.0], "must be numbers"),
        ([1.0], {(): 1.0}, "must be a dict"),
    ],
)
def test_check_bad_shapes_raise_a_named_value_error(answer, expected, needle):
    with pytest.raises(ValueError, match="answer") as err:
        teaching.check(answer, expected, name="your answer")
    assert needle in str(err.value)


def test_check_dict_missing_extra_and_non_scalar_entries():
    exact = {(0,): 1.0, (1,): 2.0}
    v = teaching.check({(0,): 1.0}, exact, name="H", key_label=teaching.prefix_label)
    assert not v and "incomplete" in v.message and "prefix (1,)" in v.message
    with pytest.raises(ValueError, match=r"H has keys .*\(2,\)"):
        teaching.check({(0,): 1.0, (1,): 2.0, (2,): 0.0}, exact, name="H")
    with pytest.raises(ValueError, match="must be one number"):
        teaching.check({(0,): [1.0, 2.0], (1,): 2.0}, exact, name="H", key_label=teaching.prefix_label)
    # keys may be lists or numpy integers
    assert teaching.check({(np.int64(0),): 1.0, (1,): 2.0}, exact)


# ---------------------------------------------------------------- martingale


def test_martingale_values_match_the_hand_computation():
    values = teaching.martingale_values(POLICY, PARAMS, HARM)
    assert set(values) == set(H_BY_HAND)
    for k, v in H_BY_HAND.items():
        assert abs(values[k] - v) <= 1e-12, k


def test_martingale_values_keys_are_tokens_first_token_first():
    # asymmetric: only "01" is harmful. H(01) = 1, H(10) = 0; H(0) = P(1 | 0) = 1/4, H(1) = 0;
    # H_0 = 1/2 · 1/4 = 1/8. A layout with the first token least significant swaps 01 and 10.
    values = teaching.martingale_values(POLICY, PARAMS, toysim.table_harm([0.0, 1.0, 0.0, 0.0], 2, 2))
    expected = {(): 1 / 8, (0,): 1 / 4, (1,): 0.0, (0, 0): 0.0, (0, 1): 1.0, (1, 0): 0.0, (1, 1): 0.0}
    for k, v in expected.items():
        assert abs(values[k] - v) <= 1e-12, k


def test_check_martingale_right_answer_accepted():
    v = teaching.check_martingale(H_BY_HAND, POLICY, PARAMS, HARM)
    assert v and "7 entries" in v.message


@pytest.mark.parametrize(
    "prefix, wrong, where",
    [
        ((), 0.5, "the empty prefix (position 0)"),
        ((1,), 0.5, "prefix (1,) (position 1)"),
        ((1, 0), 0.25, "prefix (1, 0) (position 2)"),
    ],
)
def test_check_martingale_wrong_answer_names_prefix_position_and_error(prefix, wrong, where):
    answer = dict(H_BY_HAND)
    answer[prefix] = wrong
    v = teaching.check_martingale(answer, POLICY, PARAMS, HARM)
    assert not v
    assert where in v.message
    assert f"off by {wrong - H_BY_HAND[prefix]:.6g}" in v.message


def test_check_martingale_missing_prefix_and_bad_harm():
    answer = {k: v for k, v in H_BY_HAND.items() if k != (0, 1)}
    v = teaching.check_martingale(answer, POLICY, PARAMS, HARM)
    assert not v and "prefix (0, 1)" in v.message
    with pytest.raises(ValueError, match="harm must be"):
        teaching.check_martingale(H_BY_HAND, POLICY, PARAMS, [0.0, 1.0, 0.0])


# ---------------------------------------------------------------- gradient


def test_check_gradient_right_answers_accepted():
    assert teaching.check_gradient(G2_BY_HAND, POLICY, PARAMS, HARM, t=2)
    assert teaching.check_gradient(G1_BY_HAND, POLICY, PARAMS, HARM, t=1)


def test_check_gradient_missing_prefix_probability_is_located():
    # the classic slip: P(p) forgotten, so prefix 1's row is doubled
    v = teaching.check_gradient(2 * G2_BY_HAND, POLICY, PARAMS, HARM, t=2)
    assert not v
    assert "token 0 after prefix (1,)" in v.message and "token 1 after prefix (1,)" in v.message
    assert "2 of 4" in v.message and "off by -0.09375" in v.message


def test_check_gradient_bad_inputs():
    with pytest.raises(ValueError, match=r"G_2 must have shape \(2, 2\)"):
        teaching.check_gradient([0.0, 0.0], POLICY, PARAMS, HARM, t=2)
    with pytest.raises(ValueError, match=r"t must be a position in 1..2"):
        teaching.check_gradient(G2_BY_HAND, POLICY, PARAMS, HARM, t=3)
    markov = toysim.MarkovPolicy(2, 2)
    with pytest.raises(ValueError, match="TabularPolicy"):
        teaching.check_gradient(G2_BY_HAND, markov, markov.init(jax.random.key(0)), HARM, t=2)


# ---------------------------------------------------------------- Fisher bound


def test_check_fisher_tight_two_tokens_first_position_is_tight():
    # V = 2, one prefix at position 1: the score lives on one line, Cauchy–Schwarz is an equality
    v = teaching.check_fisher_tight(POLICY, PARAMS, HARM, t=1)
    assert v and "tight at position 1" in v.message


def test_check_fisher_tight_rejects_loose_and_degenerate_positions():
    # position 2 has two prefixes with different weights: the bound is strict
    v = teaching.check_fisher_tight(POLICY, PARAMS, HARM, t=2)
    assert not v and "position 2" in v.message and "not 1" in v.message
    three = toysim.TabularPolicy(3, 1)
    v = teaching.check_fisher_tight(three, three.init(jax.random.key(1)), toysim.table_harm([0, 0, 1], 3, 1))
    assert not v and "t=1: 0." in v.message
    # I_1 = 0: both sides are zero, which is not what the exercise asks
    # H(0) = 3/4 = H(1) = 1/4 · 0 + 3/4 · 1, so I_1 = 0
    flat = toysim.table_harm([1.0, 1.0, 0.0, 0.0], 2, 2)
    v = teaching.check_fisher_tight(POLICY, PARAMS, toysim.table_harm([0.75, 0.75, 0.0, 1.0], 2, 2), t=1)
    assert not v and "I_1 = 0" in v.message
    assert teaching.check_fisher_tight(POLICY, PARAMS, flat, t=1)
    assert not teaching.check_fisher_tight(None, None, None)
    with pytest.raises(ValueError, match="t must be a position"):
        teaching.check_fisher_tight(POLICY, PARAMS, HARM, t=0)


# ---------------------------------------------------------------- automata


def _two_in_a_row(y):
    return float(any(a == 2 and b == 2 for a, b in zip(y, y[1:])))


def test_check_automaton_right_and_wrong():
    good = toysim.automaton_harm(0, [[0, 0, 1], [0, 0, 2], [2, 2, 2]], [0.0, 0.0, 1.0], 3)
    assert teaching.check_automaton(good, _two_in_a_row, 3, 4)
    no_reset = toysim.automaton_harm(0, [[0, 0, 1], [1, 1, 2], [2, 2, 2]], [0.0, 0.0, 1.0], 3)
    v = teaching.check_automaton(no_reset, _two_in_a_row, 3, 3)
    assert not v
    # the first response (lexicographic) on which they differ is (2, 0, 2)
    assert "response y = (2, 0, 2)" in v.message and "your automaton gives 1" in v.message
    wrong_count = sum(
        _two_in_a_row(y) != float(any(y[i] == 2 and 2 in y[i + 1 :] for i in range(3)))
        for y in itertools.product(range(3), repeat=3)
    )
    assert f"{wrong_count} of 27" in v.message


def test_check_automaton_reads_responses_first_token_first():
    # "harmful iff the first token is 1": not symmetric under reversing the response
    first_is_one = toysim.automaton_harm(0, [[1, 2], [1, 1], [2, 2]], [0.0, 0.0, 1.0], 2)
    assert teaching.check_automaton(first_is_one, lambda y: float(y[0] == 1), 2, 3)
    v = teaching.check_automaton(first_is_one, lambda y: float(y[-1] == 1), 2, 3)
    assert not v and "response y = (0, 0, 1)" in v.message and "your automaton gives 0" in v.message


def test_check_automaton_against_a_toysim_harm_and_bad_inputs():
    deadline = toysim.deadline_harm(2, [1], deadline=1)
    same = toysim.automaton_harm(0, [[1, 2], [1, 1], [2, 2]], [0.0, 0.0, 1.0], 2)
    assert teaching.check_automaton(same, deadline, 2, 3)
    assert not teaching.check_automaton(None, deadline, 2, 3)
    with pytest.raises(ValueError, match="AutomatonHarm"):
        teaching.check_automaton([0, 1], deadline, 2, 3)


# ---------------------------------------------------------------- theorem checks


def _root_check(corruptions):
    from proofs_check._framework import Check
    from proofs_check.strategies import instances

    def compute(inst):
        p, h = (
            inst.policy,
            np.asarray(toysim.harm_values(inst.harm, inst.policy.vocab_size, inst.policy.horizon)),
        )
        levels = toysim.forward(p, inst.params)
        return {
            "root": float(toysim.harm_martingale(levels, jnp.asarray(h))[0][0]),
            "p": np.exp(np.asarray(levels.log_prefix[-1])),
            "h": h,
        }

    return Check(
        name="root",
        result="(test)",
        section="§2",
        statement="H_0 = E[h]",
        latex="",
        kind="theorem",
        tolerance=1e-12,
        tolerance_reason="float64 sums",
        instances=lambda: instances(policy_kinds=("tabular",), max_horizon=2),
        compute=compute,
        residual=lambda q: abs(q["root"] - float(q["p"] @ q["h"])),
        corruptions=corruptions,
        applies_to="tabular",
    )


def test_check_theorem_check_accepts_a_check_with_caught_controls():
    c = _root_check({"unweighted": lambda q: {**q, "p": np.full_like(q["p"], 1 / q["p"].size)}})
    v = teaching.check_theorem_check(c, examples=5)
    assert v and "unweighted" in v.message


def test_check_theorem_check_rejects_uncaught_control_and_failing_theorem():
    c = _root_check({"nothing": lambda q: q})
    v = teaching.check_theorem_check(c, examples=3)
    assert not v and "NOT caught: nothing" in v.message
    broken = _root_check({"x": lambda q: q})
    broken = type(broken)(**{**broken.__dict__, "residual": lambda q: 1.0})
    v = teaching.check_theorem_check(broken, examples=2)
    assert not v and "fails: residual 1.000e+00" in v.message
    assert not teaching.check_theorem_check(None)
    with pytest.raises(ValueError, match="proofs_check Check"):
        teaching.check_theorem_check(lambda: 0)


def test_check_theorem_check_reads_any_object_with_the_check_attributes():
    """The library does not import proofs_check: a plain namespace with the same fields works, and
    an object lacking some is refused with their names."""
    import types

    c = _root_check({"unweighted": lambda q: {**q, "p": np.full_like(q["p"], 1 / q["p"].size)}})
    duck = types.SimpleNamespace(**{a: getattr(c, a) for a in teaching._CHECK_ATTRIBUTES})
    assert teaching.check_theorem_check(duck, examples=3)
    del duck.corruptions
    with pytest.raises(ValueError, match="lacks corruptions"):
        teaching.check_theorem_check(duck)


# ---------------------------------------------------------------- the classroom demo


def test_demo_curves_theory_holds_and_compiles_once():
    c = teaching.demo_curves(lam=0.05, deadline=3, mu=2.0, gamma=0.7)
    assert np.all(c["gradient_norm"][3:] == 0) and np.all(c["kl"][3:] == 0)
    assert np.all(c["gradient_norm"] <= c["fisher_bound"] + 1e-12)
    # second-order law at small λ: 2D_t/(λ² I_t) within a few percent of 1 before the horizon
    ratio = c["kl"][:3] / c["second_order"][:3]
    assert np.all(np.abs(ratio - 1) < 0.05), ratio
    # past the horizon the tilt is π_0: standard-aligned attack success equals the base one
    assert np.allclose(c["attack_standard"][3:], c["attack_base"][3:], atol=1e-12)
    assert np.all(c["attack_deep"] <= c["guarantee"] + 1e-12)
    before = teaching._DEMO_KERNEL._cache_size()
    teaching.demo_curves(lam=2.0, deadline=5, mu=0.5, gamma=0.3)
    assert teaching._DEMO_KERNEL._cache_size() == before  # a slider move does not recompile


def test_demo_rejects_bad_settings_and_draws_static():
    with pytest.raises(ValueError, match="deadline"):
        teaching.demo_curves(deadline=0)
    with pytest.raises(ValueError, match="lam"):
        teaching.demo_curves(lam=-1.0)
    fig = teaching.classroom_demo(widgets=False)
    assert len(fig.axes) == 3


def test_demo_widgets_redraw_on_a_slider_move():
    pytest.importorskip("ipywidgets")
    box = teaching.classroom_demo(widgets=True)
    sliders = box.children[0].children
    assert [s.description for s in sliders] == ["λ", "deadline k", "μ", "γ"]
    sliders[1].value = 4  # moving the deadline redraws without error


def test_cli_demo_prints_curves_and_writes_the_figure(tmp_path, capsys):
    import json

    from toysim._cli import main

    out = tmp_path / "demo.png"
    assert main(["demo", "--lam", "0.5", "--deadline", "3", "--out", str(out)]) == 0
    curves = json.loads(capsys.readouterr().out)
    assert curves["gradient_norm"][3:] == [0.0, 0.0, 0.0]
    assert out.stat().st_size > 10_000


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["demo", "--deadline", "7"], "--deadline must be in 1..6"),
        (["demo", "--lam", "-1"], "lam must be a number > 0"),
        (["demo", "--gamma", "1.5"], "gamma"),
        (["demo", "--out", "/nonexistent-folder/x.png"], "--out: folder"),
    ],
)
def test_cli_demo_bad_input_is_one_line_and_exit_2(argv, needle, capsys):
    from toysim._cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
