"""The executable cache (``toysim._aot``): compiled programs kept on disk between processes.

What is checked: a cached call returns the same bits as the ordinary ``jax.jit`` call (both
engines, the DP's concurrent path included); a second process (here: a cleared in-process memo)
loads the program instead of tracing it; the key separates different static arguments, shapes and
dtypes and joins equal ones; a truncated entry is compiled again; a program that fails to run is
replaced by the jit path and a tombstone; tracers and undescribable statics take the jit path; and,
across real processes, an entry stored while JAX's own cache already holds the program still loads
and runs (the failure that ``_COMPILER_OPTIONS`` and ``_no_jax_cache_write`` exist to prevent),
and a stored program that calls LAPACK (the certified Newton step: an eigendecomposition) runs in a
new process (it crashed the process before ``_initialize_lapack``).
"""

import dataclasses
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toysim
from tests.test_compilation_cache import TINY
from toysim import _aot, _dp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cache(tmp_path):
    """The executable cache on, in a temporary folder, for one test; off again afterwards."""
    before = _aot.folder()
    _aot.disable()
    _aot.enable(str(tmp_path / "executables"))
    yield tmp_path / "executables"
    _aot.disable()
    if before is not None:
        _aot.enable(before)


def _markov_params(v, seed):
    # drawn with numpy: policy.init is itself a cached program, and these tests count the entries
    # of the programs they are about
    return toysim.MarkovParams(jnp.asarray(np.random.default_rng(seed).normal(size=(v + 1, v))))


def _instance(v=3, t=3, seed=0):
    policy = toysim.MarkovPolicy(v, t)
    params = _markov_params(v, seed)
    h = jnp.asarray(toysim.harm_values(toysim.graded_harm(v, t, [v - 1]), v, t))
    return policy, params, h


def _same_bits(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def _plain_analyze(policy, params, h, lam):
    return toysim._analysis._analyze_jit(policy, params, h, lam)


def test_cached_analysis_is_bit_identical_and_loaded_from_disk(cache, monkeypatch):
    policy, params, h = _instance()
    lam = jnp.float64(0.7)
    reference = _plain_analyze(policy, params, h, lam)
    first = toysim.analyze(policy, params, h, lam)
    files = sorted(os.listdir(cache))
    assert len(files) == 1 and files[0].startswith("analyze-")
    _same_bits(first, reference)

    _aot._loaded.clear()  # a new process: nothing in memory, the entry on disk

    def no_trace(*args, **kwargs):
        raise AssertionError("traced again although the executable is on disk")

    monkeypatch.setattr(toysim._analysis._analyze_jit, "lower", no_trace, raising=False)
    second = toysim.analyze(policy, params, h, lam)
    _same_bits(second, reference)
    assert sorted(os.listdir(cache)) == files


def test_dp_concurrent_path_is_bit_identical(cache):
    policy = toysim.MarkovPolicy(2, _dp._CONCURRENT_FROM)  # the threaded four-program path
    params = _markov_params(2, 1)
    harm = toysim.trigger_harm(2, [1])
    _aot.disable()
    reference = toysim.dp_analyze(policy, params, harm, 1.0)
    _aot.enable(str(cache))
    cold = toysim.dp_analyze(policy, params, harm, 1.0)
    assert {f.split("-")[0] for f in os.listdir(cache)} == {
        "dp_backward",
        "dp_forward",
        "dp_autodiff",
        "dp_analysis",
    }
    _aot._loaded.clear()
    warm = toysim.dp_analyze(policy, params, harm, 1.0)
    _same_bits(cold, reference)
    _same_bits(warm, reference)


def test_key_separates_statics_shapes_and_dtypes():
    a, b = _instance(3, 3), _instance(3, 3, seed=5)
    leaves = jax.tree_util.tree_leaves((a[1], a[2]))
    tree = jax.tree_util.tree_structure((a[1], a[2]))
    key = _aot._key("analyze", [a[0]], leaves, tree)
    # equal statics (a new but equal policy object) and other values of the same shapes: same key
    other_values = jax.tree_util.tree_leaves((b[1], b[2]))
    assert _aot._key("analyze", [toysim.MarkovPolicy(3, 3)], other_values, tree) == key
    # another static, another name, another shape, another dtype: other keys
    assert _aot._key("analyze", [toysim.TabularPolicy(3, 3)], leaves, tree) != key
    assert _aot._key("analyze2", [a[0]], leaves, tree) != key
    c = _instance(3, 4)
    assert _aot._key("analyze", [a[0]], jax.tree_util.tree_leaves((c[1], c[2])), tree) != key
    as_f32 = [np.asarray(x, np.float32) for x in leaves]
    assert _aot._key("analyze", [a[0]], as_f32, tree) != key
    # numpy arrays among the statics are described by their bytes, not by a truncated repr
    big = np.zeros(5000)
    bumped = big.copy()
    bumped[2500] = 1.0
    assert _aot._describe(big) != _aot._describe(bumped)


def test_in_process_key_memo_agrees_with_the_key():
    """The shortcut past :func:`_aot._key` gives the same key, separates what the key separates,
    remembers uncacheable calls, and does without a shortcut for unhashable statics."""
    a, c = _instance(3, 3), _instance(3, 4)
    leaves = jax.tree_util.tree_leaves((a[1], a[2]))
    tree = jax.tree_util.tree_structure((a[1], a[2]))
    _aot._keys.clear()
    for statics, xs in (([a[0], []], leaves), ([toysim.TabularPolicy(3, 3), []], leaves)):
        first = _aot._cached_key("analyze", _aot.call, statics, xs, tree)
        assert first == _aot._key("analyze", statics, xs, tree)
        assert _aot._cached_key("analyze", _aot.call, statics, xs, tree) == first
    assert len(_aot._keys) == 2
    other = jax.tree_util.tree_leaves((c[1], c[2]))
    assert _aot._cached_key("analyze", _aot.call, [a[0], []], other, tree) == _aot._key(
        "analyze", [a[0], []], other, tree
    )
    weak = _aot._cached_key("analyze", _aot.call, [a[0], []], [*leaves[:-1], 1.0], tree)
    assert weak == _aot._key("analyze", [a[0], []], [*leaves[:-1], 1.0], tree)
    assert weak != _aot._cached_key("analyze", _aot.call, [a[0], []], leaves, tree)
    # equal in Python, three programs for jax.jit: three keys, each the key's own
    typed = [_aot._cached_key("analyze", _aot.call, [a[0], [("n", x)]], leaves, tree) for x in (1, 1.0, True)]
    assert typed == [_aot._key("analyze", [a[0], [("n", x)]], leaves, tree) for x in (1, 1.0, True)]
    assert len(set(typed)) == 3
    # a closure cannot be described: None, remembered; an unhashable static: the key, no shortcut
    closure = (lambda y: lambda x: x + y)(1)
    assert _aot._cached_key("f", _aot.call, [[("f", closure)]], leaves, tree) is None
    n = len(_aot._keys)
    assert _aot._cached_key("g", _aot.call, [[("v", {"a": 1})]], leaves, tree) == _aot._key(
        "g", [[("v", {"a": 1})]], leaves, tree
    )
    assert len(_aot._keys) == n
    _aot._keys.clear()


def _loss_outside_toysim(levels):
    return levels


@dataclasses.dataclass(frozen=True)
class _PolicyOutsideToysim:
    vocab_size: int


def test_code_outside_toysim_is_not_described():
    """A function or class that is not toysim's could be edited under the same name, and its code is
    not in the source digest: such statics take the jit path instead of a possibly stale entry."""
    from toysim._objectives import standard_loss
    from toysim._optimize import Objective

    assert "standard_loss" in _aot._describe(Objective(standard_loss, (toysim.TabularPolicy(2, 2),)))
    for static in (
        _loss_outside_toysim,
        Objective(_loss_outside_toysim),
        functools.partial(_loss_outside_toysim),
        _PolicyOutsideToysim(2),
    ):
        with pytest.raises(_aot._Uncacheable):
            _aot._describe(static)


def test_figures_and_checks_are_described_with_their_sources(monkeypatch, tmp_path):
    """The figures' and the checks' functions are the project's: described by name and by the
    digest of those packages' sources, so an edit to either changes the key. A package of the same
    name loaded from elsewhere is not described."""
    import types

    import figures.fig4_shallow_after_training as fig4

    text = _aot._describe(fig4._drawn)
    assert text.startswith("function:figures.fig4_shallow_after_training._drawn@")
    digest = text.rpartition("@")[2]
    _aot._sources_digest.cache_clear()
    monkeypatch.setattr(_aot, "_PROJECT_PACKAGES", ("figures",))  # another set of sources
    assert _aot._describe(fig4._drawn).rpartition("@")[2] != digest
    _aot._sources_digest.cache_clear()
    monkeypatch.setattr(_aot, "_PROJECT_PACKAGES", ("figures", "proofs_check"))
    elsewhere = types.ModuleType("figures")
    elsewhere.__file__ = str(tmp_path / "figures" / "__init__.py")
    monkeypatch.setitem(sys.modules, "figures", elsewhere)
    with pytest.raises(_aot._Uncacheable):
        _aot._describe(fig4._drawn)


def test_truncated_entry_is_compiled_again(cache):
    policy, params, h = _instance()
    reference = _plain_analyze(policy, params, h, 1.0)
    toysim.analyze(policy, params, h, 1.0)
    (entry,) = list(cache.iterdir())
    entry.write_bytes(entry.read_bytes()[:100])
    _aot._loaded.clear()
    _same_bits(toysim.analyze(policy, params, h, 1.0), reference)
    assert entry.stat().st_size > 100  # replaced by a good one


def test_program_that_fails_to_run_takes_the_jit_path(cache, monkeypatch):
    policy, params, h = _instance()
    reference = _plain_analyze(policy, params, h, 1.0)
    toysim.analyze(policy, params, h, 1.0)
    (entry,) = list(cache.iterdir())
    _aot._loaded.clear()

    def broken(path):
        def run(*args):
            raise jax.errors.JaxRuntimeError("NOT_FOUND: Function fusion not found")

        return run

    monkeypatch.setattr(_aot, "_load", broken)
    _same_bits(toysim.analyze(policy, params, h, 1.0), reference)
    assert not entry.exists() and (cache / (entry.name + ".broken")).exists()
    _aot._loaded.clear()  # a later process sees the tombstone and does not load the entry
    _same_bits(toysim.analyze(policy, params, h, 1.0), reference)


def test_tracers_and_undescribable_statics_take_the_jit_path(cache):
    policy, params, h = _instance()
    inside = jax.jit(lambda p, hh: toysim.analyze(policy, p, hh, 1.0).expected_harm)(params, h)
    assert float(inside) == float(_plain_analyze(policy, params, h, 1.0).expected_harm)
    jitted = jax.jit(lambda x, f: f(x), static_argnums=1)
    assert float(_aot.call("lambda", jitted, (jnp.float64(2.0), lambda x: x + 1), static=(1,))) == 3.0
    assert list(cache.iterdir()) == []


def _cli(tmp_path, *args, horizon):
    """Run ``toysim ARGS inst.json --compact`` in a new process with its caches under ``tmp_path``,
    on the tiny Markov/trigger instance of ``test_compilation_cache`` at ``horizon``; its stdout."""
    (tmp_path / "inst.json").write_text(json.dumps({**TINY, "horizon": horizon}))
    drop = ("TOYSIM_NO_JAX_CACHE", "TOYSIM_NO_EXECUTABLE_CACHE", "JAX_COMPILATION_CACHE_DIR")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update({"XDG_CACHE_HOME": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"})
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "toysim", *args, "inst.json", "--compact"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    return proc.stdout


def test_stored_lapack_program_runs_in_a_new_process(tmp_path):
    cold = _cli(tmp_path, "train", "--optimizer", "newton", horizon=2)
    folder = tmp_path / "cache" / "toysim" / "executables"
    stored = [f.name for f in folder.iterdir()]
    assert any(name.startswith("certificate-") for name in stored), stored
    # loads the Newton step and the certificate (LAPACK eigh) without lowering them
    assert _cli(tmp_path, "train", "--optimizer", "newton", horizon=2) == cold


def test_entries_stored_after_jax_cached_the_program_still_run(tmp_path):
    """Across processes: cold run; our folder deleted (JAX's cache still holds the programs); a run
    that stores them again; a run that loads them. No tombstone, the same bytes every time."""
    horizon = 600  # DP, concurrent path: scans, the programs that failed
    folder = tmp_path / "cache" / "toysim" / "executables"
    cold = _cli(tmp_path, "exact", horizon=horizon)
    for entry in folder.iterdir():
        entry.unlink()
    restored = _cli(tmp_path, "exact", horizon=horizon)
    stored = sorted(os.listdir(folder))
    loaded = _cli(tmp_path, "exact", horizon=horizon)
    assert cold == restored == loaded
    assert len(stored) == 4 and not any(name.endswith(".broken") for name in os.listdir(folder))


def _close(a, b, tol=1e-14):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_program_decorator_compiles_a_library_function_whole(cache, monkeypatch):
    """``@_aot.program``: the decorated function returns what the function computes op by op (to
    rounding), the same bits as its ``jax.jit``; it is stored under its own name and a new process
    loads it without tracing; keyword-only arguments reach the function; inside ``jit`` and
    ``grad`` it is a nested ``jit``; with an input that is not an array it runs as written."""
    from toysim import _recovery

    policy, params, h = _instance()
    levels = toysim.forward(policy, params)
    _close(levels, toysim.forward.__wrapped__(policy, params))
    _same_bits(levels, toysim.forward.jitted(policy, params))
    stored = [f for f in os.listdir(cache) if f.startswith("_enumerate.forward-")]
    assert len(stored) == 1

    _aot._loaded.clear()  # a new process: loaded, not traced

    def no_trace(*args, **kwargs):
        raise AssertionError("traced again although the executable is on disk")

    monkeypatch.setattr(toysim.forward.jitted, "lower", no_trace, raising=False)
    _same_bits(toysim.forward(policy, params), levels)
    monkeypatch.undo()

    # keyword-only arguments, by keyword and by default
    mask = jnp.asarray(toysim.recovery_mask([0], 3))
    log_q, _ = _recovery.harmful_log_marginals(levels, toysim.harm_martingale(levels, h))
    discounts = jnp.asarray([0.5, 0.25, 0.125])
    for kwargs in ({}, {"discounts": discounts}):
        _close(
            _recovery.attack_curves(levels, mask, log_q, **kwargs),
            _recovery.attack_curves.__wrapped__(levels, mask, log_q, **kwargs),
        )
    with_d = _recovery.attack_curves(levels, mask, log_q, discounts=discounts)
    without = _recovery.attack_curves(levels, mask, log_q)
    assert any(
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree_util.tree_leaves(with_d), jax.tree_util.tree_leaves(without))
    )

    # inside jit and under grad: the function of the parameters, differentiated
    def harm(p):
        return toysim.harm_martingale(toysim.forward(policy, p), h)[0][0]

    def harm_op_by_op(p):
        return toysim.harm_martingale.__wrapped__(toysim.forward.__wrapped__(policy, p), h)[0][0]

    _close(jax.jit(harm)(params), harm_op_by_op(params))
    _close(jax.grad(harm)(params), jax.grad(harm_op_by_op)(params))

    # the product engine is not an array (it is built inside compiled functions): as written
    aut = _dp.automaton_arrays(toysim.trigger_harm(3, [2]), 3)
    engine = _dp.ProductEngine.markov(params.logits, aut, 3)
    final = jnp.asarray(aut.final_harm, dtype=jnp.float64)
    _same_bits(toysim.harm_martingale(engine, final), toysim.harm_martingale.__wrapped__(engine, final))


def test_folder_is_trimmed_to_its_limit_least_recently_used_first(cache, monkeypatch):
    """Past ``MAX_FOLDER_BYTES`` the entries used longest ago go first, until the folder is under
    three quarters of the limit; a store trims, and a load marks its entry used."""
    cache.mkdir(parents=True, exist_ok=True)
    for age, name in enumerate("abcde"):  # a used longest ago, e last; 100 bytes each
        (cache / f"{name}.exe").write_bytes(bytes(100))
        os.utime(cache / f"{name}.exe", (1000.0 + age, 1000.0 + age))
    (cache / "x.exe.broken").write_bytes(b"")
    monkeypatch.setattr(_aot, "MAX_FOLDER_BYTES", 500)
    _aot._trim(str(cache))
    assert len(os.listdir(cache)) == 6  # at the limit: nothing removed
    monkeypatch.setattr(_aot, "MAX_FOLDER_BYTES", 400)
    _aot._trim(str(cache))
    assert sorted(os.listdir(cache)) == ["c.exe", "d.exe", "e.exe", "x.exe.broken"]  # 300 <= 0.75 * 400

    trimmed = []
    monkeypatch.setattr(_aot, "_trim", lambda folder: trimmed.append(folder))
    policy, params, h = _instance()
    toysim.forward(policy, params)
    assert trimmed == [str(cache)]  # the store trimmed
    (entry,) = [f for f in os.listdir(cache) if f.startswith("_enumerate.forward-")]
    os.utime(cache / entry, (1000.0, 1000.0))
    _aot._loaded.clear()
    toysim.forward(policy, params)  # a load: marked used now
    assert os.path.getmtime(cache / entry) > 1000.0
    assert trimmed == [str(cache)]  # a load does not trim
