"""Every discovered theorem check holds, every negative control fails it, and the runner works.

The checks are discovered exactly as ``toysim check`` discovers them, so the checks of every
module of ``proofs_check`` are included automatically. Budgets are smaller than ``toysim check``'s
(``SMALL`` inputs per check) to keep this file fast; ``toysim check`` runs the full budget.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import json
import pathlib
import pkgutil

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

import toysim
from proofs_check._framework import Check, instance_of
from proofs_check._runner import (
    check_modules,
    discover,
    run_check,
    run_checks,
    tabular_instance,
    write_counterexample,
)
from proofs_check.strategies import instances, make_policy, pad_automaton
from tests.tolerances import assert_close
from toysim._cli import main

SMALL = 6  # inputs per check here (toysim check uses check.examples)
DISCOVERED = discover()
CHECKS = [c for _, c in DISCOVERED if isinstance(c, Check)]
THEOREMS = [c for c in CHECKS if c.kind == "theorem"]
BY_NAME = {c.name: c for c in CHECKS}
CORRUPTIONS = [(c, name) for c in THEOREMS for name in c.corruptions]
FIND = settings(
    max_examples=200,
    database=None,
    deadline=None,
    derandomize=True,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def test_discovery_imports_every_module():
    broken = [f"{name}: {err!r}" for name, err in DISCOVERED if not isinstance(err, Check)]
    assert not broken, broken
    names = [c.name for c in CHECKS]
    assert len(names) == len(set(names)), "check names must be unique"
    assert {"harm_information", "covariance_gradient_sum", "zero_kl", "tilt_minimises"} <= set(names)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.name)
def test_check_holds(check, tmp_path):
    result = run_check(check, seed=0, counterexample_dir=str(tmp_path), examples=min(SMALL, check.examples))
    assert result.tried >= 1
    if check.kind == "theorem":
        assert result.status == "holds", (
            f"{check.name}: {result.verdict} (counterexample {result.counterexample})"
        )
        assert result.worst <= check.tolerance
    else:
        assert result.status == "measured", result.verdict
        assert result.verdict.startswith("measured: ")


@functools.cache
def _witnesses(name: str) -> dict:
    """For each negative control of a check, an input where it violates the tolerance.

    One search per check (not per control): every drawn input is computed once and tried against
    all controls, until each has a witness or the search budget is spent.
    """
    check = BY_NAME[name]
    found = {}

    def every_control_violated(x):
        q = check.compute(x)
        for label, corrupt in check.corruptions.items():
            if label not in found and not check.residual(corrupt(copy.deepcopy(q))) <= check.tolerance:
                found[label] = (x, q)
        return len(found) == len(check.corruptions)

    try:
        hypothesis.find(check.instances(), every_control_violated, settings=FIND)
    except hypothesis.errors.NoSuchExample:
        pass
    return found


@pytest.mark.parametrize(("check", "corruption"), CORRUPTIONS, ids=lambda x: getattr(x, "name", x))
def test_negative_control_is_detected(check, corruption, tmp_path):
    witness = _witnesses(check.name).get(corruption)
    assert witness is not None, f"{check.name}: no input where {corruption!r} exceeds the tolerance"
    x, q = witness
    assert check.residual(q) <= check.tolerance, "the uncorrupted check must hold on the witness"
    # the runner reports the corrupted check as failing on that input
    corrupt = check.corruptions[corruption]
    wrong = dataclasses.replace(
        check, instances=lambda: st.just(x), compute=lambda _: corrupt(copy.deepcopy(q))
    )
    result = run_check(wrong, counterexample_dir=str(tmp_path), examples=1)
    assert result.status == "fails", result.verdict
    assert not result.worst <= check.tolerance


def _expected_harm(inst):
    h = jnp.asarray(toysim.harm_values(inst.harm, inst.policy.vocab_size, inst.policy.horizon))
    return float(toysim.expected_harm(inst.policy, inst.params, h))


FALSE = Check(
    name="false_claim",
    result="(test)",
    section="§0",
    statement="Deliberately false: E[h] = 0 for every policy and harm.",
    latex=r"\mathbb{E}[h]=0",
    kind="theorem",
    tolerance=1e-10,
    tolerance_reason="test",
    instances=lambda: instances(policy_kinds=("mlp", "markov2")),
    compute=lambda inst: {"mean": _expected_harm(inst)},
    residual=lambda q: abs(q["mean"]),
    corruptions={"none": lambda q: q},
    applies_to="test",
    examples=20,
)


def test_false_check_fails_with_replayable_counterexample(tmp_path, capsys):
    result = run_check(FALSE, seed=1, counterexample_dir=str(tmp_path))
    assert result.status == "fails" and "FAILS" in result.verdict
    assert not result.ok
    path = result.counterexample
    assert path is not None and path.startswith(str(tmp_path))
    replayed = toysim.load_instance(path)
    assert isinstance(replayed.policy, toysim.TabularPolicy)
    assert FALSE.evaluate(replayed) > FALSE.tolerance  # the file is a counterexample too
    assert main(["exact", path]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["expected_harm"] == pytest.approx(_expected_harm(replayed), abs=1e-12)


def test_tabular_conversion_keeps_the_distribution():
    inst = hypothesis.find(instances(policy_kinds=("mlp",)), lambda x: x.policy.horizon == 3, settings=FIND)
    tab = tabular_instance(inst)
    a = toysim.forward(inst.policy, inst.params).log_prefix[-1]
    b = toysim.forward(tab.policy, tab.params).log_prefix[-1]
    assert float(jnp.max(jnp.abs(a - b))) <= 1e-12
    assert instance_of((inst, 3)) is inst and instance_of(inst) is inst and instance_of(3) is None


def test_long_markov_counterexample_is_written_as_is(tmp_path):
    """A first-order Markov / automaton input at T = 48 (3**48 leaves) is written without
    enumerating its tree, its padding states pruned, and replays through the DP engine."""
    policy = toysim.MarkovPolicy(3, 48)
    padded = pad_automaton(toysim.trigger_harm(3, [1]), 3, 6, seed=0)
    inst = toysim.Instance(policy, policy.init(jax.random.key(0)), padded, 1.0)
    path = write_counterexample((inst, 0), "dp_long_horizon", 0, str(tmp_path))
    replay = toysim.load_instance(path)
    assert replay.harm.transitions.shape[0] == 2 < padded.transitions.shape[0]
    a, b = toysim.exact_report(inst), toysim.exact_report(replay)
    assert a["engine"] == b["engine"] == "dp"
    assert_close(a["harm_information"], b["harm_information"], what="I_t")
    assert_close(a["equilibrium_kl_by_position"], b["equilibrium_kl_by_position"], what="D_t")


def _fake(name, compute, kind="theorem", strategy=None):
    return dataclasses.replace(
        FALSE,
        name=name,
        kind=kind,
        instances=strategy or (lambda: st.integers(0, 10**6)),
        compute=compute,
        residual=lambda q: q["r"],
    )


def test_error_in_a_check_is_reported_not_raised(tmp_path):
    def boom(x):
        raise RuntimeError("deliberate")

    result = run_check(_fake("boom", boom), counterexample_dir=str(tmp_path), examples=3)
    assert result.status == "error" and "RuntimeError: deliberate" in result.verdict and not result.ok
    assert result.counterexample is None and result.failing_input is not None  # an int: nothing to write


def test_finding_is_measured_never_holds(tmp_path):
    result = run_check(_fake("finding", lambda x: {"r": x / 10**6}, kind="finding"), examples=10)
    assert result.status == "measured" and result.ok
    assert result.verdict == f"measured: {result.worst:.3e}" and 0 <= result.worst <= 1


def test_finding_counts_unmeasurable_inputs_apart(tmp_path):
    # an input whose finding cannot be measured (e.g. an uncertified training run) returns NaN: it
    # is counted and named in the verdict, and the worst value is taken over the measured ones
    result = run_check(
        _fake("finding", lambda x: {"r": float("nan") if x % 2 else x / 10**6}, kind="finding"), examples=20
    )
    assert result.status == "measured" and result.ok
    assert "not measurable" in result.verdict and 0 <= result.worst <= 1


def test_runner_is_deterministic_given_the_seed():
    def record(seen):
        return _fake("record", lambda x: (seen.append(x), {"r": 0.0})[1])

    runs = {}
    for key, seed in (("a", 5), ("b", 5), ("c", 6)):
        seen = []
        run_check(record(seen), seed=seed, examples=15)
        runs[key] = seen
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]
    first = run_checks(["harm_information"], seed=2, examples=4)[0]
    again = run_checks(["harm_information"], seed=2, examples=4)[0]
    assert (first.tried, first.worst) == (again.tried, again.worst)


def test_unknown_names_and_profiles_are_rejected():
    with pytest.raises(ValueError, match="unknown result name"):
        run_checks(["no_such_result"])
    with pytest.raises(ValueError, match="profile"):
        run_checks(["harm_information"], profile="quick")
    with pytest.raises(ValueError, match="seed"):
        run_checks(["harm_information"], seed="1")


# -- the core checks: realistic bugs, planted in the library, are caught by `toysim check` --------

REALISTIC_CONTROLS = {
    "fisher_bound_prefix": ["uncentred Fisher trace Σπ instead of 1 − Σπ²", "‖Cov‖² as the square of a sum"],
    "fisher_bound_position": ["E[tr F_t] from the uncentred trace", "E[tr F] one position late"],
    "horizon_equivalence": ["τ(y) one less (off by one)", "P(τ = t) one position late"],
    "dp_past_chunk": ["partial chunk past position 128 dropped", "partial chunk reduced into zeros"],
    "harm_information": ["Var(h) not centred (E[h²])"],
}


def test_realistic_bug_controls_are_declared():
    """The negative controls modelling the reviewed bugs exist (each is then detected by
    ``test_negative_control_is_detected``)."""
    for name, labels in REALISTIC_CONTROLS.items():
        missing = [label for label in labels if label not in BY_NAME[name].corruptions]
        assert not missing, f"{name}: missing controls {missing}"


def _first_input(check, condition=lambda x: True):
    return hypothesis.find(check.instances(), condition, settings=FIND)


def _uncentred_trace(self, params, t):
    return jnp.sum(jax.nn.softmax(self.logits(params, t), axis=-1), axis=-1)


def _square_of_sum(policy, params, levels, martingale, t):
    delta = toysim.innovations(martingale)[t - 1]
    return jnp.sum(jnp.exp(levels.log_cond[t - 1]) * delta, axis=-1) ** 2


def _centred_at_zero(step, pair=None):
    # w_t(p, v) = P(p) π(v|p) H_t(p·v) instead of P(p) π(v|p) (H_t(p·v) − H_{t−1}(p)): the centring
    # of the covariance form dropped
    parent, child = step.pairs[0] if pair is None else pair
    return step.kernel.pull(jnp.exp(step.log_p), child, jnp.zeros_like(parent))


def _tau_off_by_one(masks):
    n = masks[-1].shape[0]
    return sum(jnp.repeat(~m, n // m.shape[0]).astype(jnp.int32) for m in masks[1:])


@pytest.mark.parametrize(
    ("check_name", "target", "attribute", "replacement", "kind"),
    [
        ("fisher_bound_prefix", toysim.TabularPolicy, "fisher_trace", _uncentred_trace, "tabular"),
        ("fisher_bound_position", toysim.TabularPolicy, "fisher_trace", _uncentred_trace, "tabular"),
        ("fisher_bound_prefix", toysim.MarkovPolicy, "fisher_trace", _uncentred_trace, "markov1"),
        ("fisher_bound_prefix", toysim, "prefix_covariance_sq_norm", _square_of_sum, "markov2"),
        ("horizon_equivalence", toysim, "sequence_horizon", _tau_off_by_one, None),
        (
            "covariance_gradient_tabular",
            toysim._gradient,
            "covariance_cotangent",
            _centred_at_zero,
            "tabular",
        ),
    ],
    ids=[
        "tabular-trace",
        "tabular-trace-position",
        "markov-trace",
        "square-of-sum",
        "tau-off-by-one",
        "tabular-gradient-centring",
    ],
)
def test_planted_library_bug_is_detected(check_name, target, attribute, replacement, kind, monkeypatch):
    """A realistic bug in the library (not in the quantities) makes the check's residual exceed
    its tolerance, while the same input passes with the library intact."""
    check = BY_NAME[check_name]

    def wanted(x):
        ok = kind is None or type(x.policy).__name__.lower().startswith(kind.rstrip("12"))
        ok = ok and (kind is None or not kind.startswith("markov") or x.policy.order == int(kind[-1]))
        # a wrong centring of G_1 is invisible (H(root) = E[h]): the gradient bug needs T ≥ 2
        ok = ok and (check_name != "covariance_gradient_tabular" or x.policy.horizon >= 2)
        q = check.compute(x)
        return ok and (check.exercised is None or check.exercised(q))

    x = _first_input(check, wanted)
    assert check.evaluate(x) <= check.tolerance
    monkeypatch.setattr(target, attribute, replacement)
    # the library's functions are compiled programs (toysim._aot.program): those traced before the
    # bug was planted would hide it, and those traced with it must not outlive it
    jax.clear_caches()
    try:
        assert not check.evaluate(x) <= check.tolerance, f"{check_name} missed the planted {attribute} bug"
    finally:
        monkeypatch.undo()
        jax.clear_caches()


def test_dropped_dp_tail_chunk_is_detected(monkeypatch):
    """The DP's per-position reductions losing the partial chunk after position 128."""
    check = BY_NAME["dp_past_chunk"]
    x = _first_input(check)
    assert check.evaluate(x) <= check.tolerance
    real = toysim.dp_analyze

    def truncated(*args, **kwargs):
        a = real(*args, **kwargs)
        cut = {f: getattr(a, f)[:128] for f in ("harm_information", "gradient_norm_by_position")}
        return a._replace(**cut)

    monkeypatch.setattr(toysim, "dp_analyze", truncated)
    assert not check.evaluate(x) <= check.tolerance


def test_fisher_bound_is_tight_exactly_for_two_token_lookup_policies():
    """The equality used by ``fisher_bound_prefix``: for tabular and Markov policies with V = 2 the
    per-prefix bound is attained (brute force, explicit Jacobian); with V = 3 it is strict
    somewhere, so the equality is specific to V = 2 and worth checking."""
    from proofs_check import reference as ref

    for kinds, vocab_size in ((("tabular", "markov1", "markov2"), 2), (("tabular", "markov1"), 3)):
        gaps = []
        for seed in range(3):
            for kind in kinds:
                policy = make_policy(kind, vocab_size, 3)
                params = policy.init(jax.random.key(seed))
                r = ref.brute_force(policy, params, toysim.trigger_harm(vocab_size, [1]))
                for c, v, f in zip(r.cov_sq, r.var_prefix, r.trace):
                    assert np.all(c <= v * f + 1e-15)
                    gaps.append(float(np.max(v * f - c)))
        if vocab_size == 2:
            assert max(gaps) <= 1e-15, max(gaps)
        else:
            assert max(gaps) > 1e-3, max(gaps)


def test_reference_agrees_with_the_test_suite_reference():
    """``proofs_check.reference`` (what ``toysim check`` uses) against ``tests/reference.py``."""
    from proofs_check import reference as ref
    from tests import reference as slow

    for kind in ("tabular", "markov2", "mlp"):
        policy = make_policy(kind, 2, 3)
        params = policy.init(jax.random.key(7))
        harm = toysim.deadline_harm(2, [1], 2)
        table = np.asarray(toysim.harm_values(harm, 2, 3))
        r = ref.brute_force(policy, params, harm)
        H = slow.martingale(policy, params, table)
        for t in range(4):
            want = [H[p] for p in slow.sequences(2, t)]
            assert_close(r.H[t], want, what=f"H_{t} ({kind})")
        assert_close(r.information, slow.harm_information(policy, params, table), what="I_t")
        tau = slow.horizon(policy, table)
        assert list(r.tau) == [tau[y] for y in slow.sequences(2, 3)]
        d, _, seq = ref.tilt_kl(r.cond, r.leaf, r.h, 1.0, 2)
        d_slow, seq_slow = slow.tilt_kl_by_position(policy, params, table, 1.0)
        assert_close(d, d_slow, what="D_t")
        assert_close(seq, seq_slow, what="KL")
        grad = ref.tied_gradient(policy, params, table)
        assert_close(np.sum(r.gradient, axis=0), grad, what="Σ_t G_t vs per-sequence jax.grad")


def test_horizon_instances_mostly_exercise_the_statement(tmp_path):
    """The strategy of the horizon checks puts positions past the horizon (k < T) in most inputs;
    the runner counts them."""
    check = BY_NAME["zero_gradient"]

    def cheap(inst):
        h = np.asarray(toysim.harm_values(inst.harm, inst.policy.vocab_size, inst.policy.horizon))
        masks = toysim.determined_masks(jnp.asarray(h), inst.policy.vocab_size, inst.policy.horizon)
        return {"k": int(toysim.uniform_horizon(masks)), "T": inst.policy.horizon}

    counted = dataclasses.replace(
        check, compute=cheap, residual=lambda q: 0.0, exercised=lambda q: q["k"] < q["T"]
    )
    result = run_check(counted, seed=0, counterexample_dir=str(tmp_path), examples=60)
    assert result.tried == 60 and result.exercised >= 0.7 * result.tried, result.exercised
    assert result.to_dict()["instances_exercised"] == result.exercised


def test_every_theorem_check_reports_exercised_inputs(tmp_path):
    """A check without a predicate counts every input; one with a predicate may count fewer."""
    result = run_check(
        dataclasses.replace(
            FALSE, compute=lambda x: {"mean": 0.0, "x": x}, exercised=lambda q: q["x"].policy.horizon > 1
        ),
        counterexample_dir=str(tmp_path),
        examples=20,
    )
    assert result.status == "holds" and 0 < result.exercised < result.tried
    plain = run_check(dataclasses.replace(FALSE, compute=lambda x: {"mean": 0.0}), examples=5)
    assert plain.exercised == plain.tried == 5


def test_kl_variance_xor_instances_have_undetermined_zero_variance_prefixes_with_zero_kl():
    """The constructed inputs of ``kl-variance-binary`` exercise its own content: a prefix where
    ``h`` is not determined but ``Var(H_t|p) = 0``, where the tilt's KL is then 0."""
    from proofs_check import kl_variance

    check = BY_NAME["kl-variance-binary"]
    hits = []

    @settings(FIND, max_examples=8)
    @hypothesis.given(kl_variance.xor_instances())
    def each(inst):
        q = check.compute(inst)
        flat = (q["var_h"] == 0) & q["ref_undetermined"]
        assert check.exercised(q) and flat.any()
        assert np.all(q["prefix_kl"][flat] == 0.0) and np.all(np.abs(q["ref_prefix_kl"][flat]) < 1e-14)
        assert check.residual(q) <= check.tolerance
        hits.append(int(flat.sum()))

    each()
    assert len(hits) == 8 and min(hits) >= 2  # both length-1 prefixes (and the root when r_0 = r_1)


def test_kl_variance_graded_exhibits_positive_kl_at_an_undetermined_zero_variance_root():
    """docs/theory.md §7: for graded harm, children with equal H but different laws of h move the policy."""
    check = BY_NAME["kl-variance-graded"]
    policy = toysim.TabularPolicy(2, 2)
    root = np.asarray([0.4, -0.3])
    params = (jnp.asarray(root[None, :]), jnp.asarray([[1.0, -0.5], [0.0, 0.0]]))
    lam = 1.0
    inst = toysim.Instance(policy, params, toysim.table_harm([0.5, 0.5, 0.0, 1.0], 2, 2), lam)
    q = check.compute(inst)
    assert q["root_var_h"] == 0.0 and q["ref_undetermined"][0]
    q0 = np.exp(root - np.logaddexp(*root))
    z = np.asarray([np.exp(-lam / 2), (1 + np.exp(-lam)) / 2])  # E[e^{−λh} | child]
    star = q0 * z / np.sum(q0 * z)
    closed = float(np.sum(star * np.log(star / q0)))
    assert closed > 1e-4
    assert abs(q["root_kl"] - closed) <= 1e-12


def _check_pages() -> dict[str, ast.Module]:
    """The modules of ``proofs_check`` that the runner would collect checks from (names not
    starting with ``_``, not ``strategies``, with a top-level ``CHECKS``), parsed."""
    import proofs_check

    pages = {}
    for info in pkgutil.iter_modules(proofs_check.__path__):
        if info.name.startswith("_") or info.name == "strategies":
            continue
        tree = ast.parse(
            pathlib.Path(proofs_check.__path__[0], f"{info.name}.py").read_text(encoding="utf-8")
        )
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if any(isinstance(t, ast.Name) and t.id == "CHECKS" for t in targets):
                pages[info.name] = tree
    return pages


def _imported_modules(tree: ast.Module) -> set[str]:
    """``proofs_check`` submodules a module imports, anywhere in it (relative or absolute; for
    ``from . import x`` and ``from proofs_check import x``, every ``x``)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("proofs_check.")}
        elif isinstance(node, ast.ImportFrom):
            if (
                node.level == 1
                or node.module == "proofs_check"
                or (node.module or "").startswith("proofs_check.")
            ):
                base = (
                    node.module
                    if node.level == 0
                    else f"proofs_check.{node.module}"
                    if node.module
                    else "proofs_check"
                )
                if base == "proofs_check":
                    out |= {a.name for a in node.names}
                else:
                    out.add(base.split(".")[1])
    return out


def test_no_check_page_imports_another_check_page():
    """A check module imports shared inputs, runs and references from modules without ``CHECKS``
    (strategies, recovery_cases, deep_cases, training_runs, ...), never from another check module:
    a page's cases are then not silently another page's fixtures."""
    pages = _check_pages()
    # the parse finds exactly the modules the runner collects checks from
    assert set(pages) == {m for m in check_modules().values()}, sorted(pages)
    crossings = {
        name: sorted(m for m in _imported_modules(tree) if m in pages and m != name)
        for name, tree in pages.items()
    }
    assert not {k: v for k, v in crossings.items() if v}, crossings


def test_import_scan_sees_every_import_form():
    """The scan of the test above reads relative, absolute and package imports, nested ones too."""
    src = (
        "from .a import x\nfrom . import b, c\nimport proofs_check.d\nfrom proofs_check import e\n"
        "from proofs_check.f import y\ndef g():\n    from .h import z\nimport numpy\nfrom toysim import t\n"
    )
    assert _imported_modules(ast.parse(src)) == {"a", "b", "c", "d", "e", "f", "h"}


def _drawn(check, tmp_path) -> list[str]:
    """The inputs a seed-0 run of ``check`` evaluates, in order."""
    seen = []

    def recording(value):
        seen.append(repr(value))
        return check.compute(value)

    run_check(dataclasses.replace(check, compute=recording), "ci", 0, str(tmp_path / "cx"))
    return seen


def test_draws_do_not_depend_on_the_modules_the_process_loaded(tmp_path, monkeypatch):
    """Hypothesis draws constants from the source of every local module loaded in the process; the
    runner switches that off (``source_constants_off``), so a seed draws the same inputs before and
    after a new module full of small integers is imported (without the switch, that import changes
    which inputs ``best_of_n_kl`` draws from its fourth on)."""
    import sys

    check = BY_NAME["best_of_n_kl"]
    name = "toysim_test_constants"
    (tmp_path / f"{name}.py").write_text("VALUES = (" + ", ".join(str(v) for v in range(200)) + ")\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = _drawn(check, tmp_path)
    try:
        __import__(name)
        assert _drawn(check, tmp_path) == before
    finally:
        sys.modules.pop(name, None)
