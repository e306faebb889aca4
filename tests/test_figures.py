"""The figures: the numbers behind each one, reproducible bytes, atomic writes, the CLI.

Each figure is built once at its tiny size (module fixture); the assertions are on the data the
figure draws, not on pixels. Re-runs in the same process reuse the compiled programs, so the
byte-identity and CLI tests cost only plotting and writing.
"""

import importlib
import os

import matplotlib.pyplot as plt
import numpy as np
import pytest

import figures
from tests.tolerances import IDENTITY, assert_close
from toysim._cli import main

NAMES = [spec.name for spec in figures.FIGURES]
OWN = {"fig1", "fig2", "fig3", "fig8"}  # the figures whose data this file asserts


@pytest.fixture(scope="module")
def tiny_data():
    """The data of every registered figure at its tiny size, and the figure builds without error."""
    out = {}
    for spec in figures.FIGURES:
        if spec.name.split("_")[0] not in OWN:
            continue  # figures 4-7 are built and asserted in tests/test_figures_more.py
        numbers, fig = figures.build(spec, tiny=True)
        assert fig.axes, f"{spec.name}: the figure has no axes"
        plt.close(fig)
        out[spec.name] = numbers
    return out


def _module(name):
    return importlib.import_module(f"figures.{name}")


# --- the registry -----------------------------------------------------------------------------


def test_registry_specs_are_complete():
    assert len(set(NAMES)) == len(NAMES), "figure names must be unique"
    for spec in figures.FIGURES:
        module = importlib.import_module(spec.module)
        assert spec.module == f"figures.{spec.name}"
        for attr in ("FULL", "TINY", "data", "plot", "main"):
            assert hasattr(module, attr), f"{spec.module} lacks {attr}"
        assert spec.claim.endswith(".") and spec.claim.count(". ") == 0, f"{spec.name}: one-sentence claim"
        assert spec.instance, f"{spec.name}: instance description missing"


def test_select_accepts_short_names_and_rejects_unknown():
    assert [s.name for s in figures._select(["fig8", "fig2_gradient_by_position"])] == [
        "fig2_gradient_by_position",
        "fig8_prefix_tree",
    ]
    with pytest.raises(ValueError, match="unknown figure 'fig99'"):
        figures._select(["fig99"])


def test_data_are_dicts_of_arrays(tiny_data):
    for name, numbers in tiny_data.items():
        assert numbers, name
        for key, value in numbers.items():
            assert isinstance(value, np.ndarray), f"{name}[{key!r}] is {type(value).__name__}"


# --- figure 1: martingale paths freeze at τ(y) --------------------------------------------------


def test_fig1_paths_are_frozen_after_their_horizon(tiny_data):
    d = tiny_data["fig1_martingale_paths"]
    size = _module("fig1_martingale_paths").TINY
    vocab, horizon = size["vocab_size"], size["horizon"]
    prefixes = d["prefix_index"]
    assert np.array_equal(prefixes[:, :-1], prefixes[:, 1:] // vocab), "sampled prefixes must nest"
    for kind in ("deadline", "graded"):
        paths, tau, h = d[f"{kind}_paths"], d[f"{kind}_tau"], d[f"{kind}_h"]
        assert paths.shape == (size["n_paths"], horizon + 1)
        assert np.all(paths[:, 0] == paths[0, 0]), "H_0 = E[h] is shared by every path"
        assert np.array_equal(paths[:, -1], h), "H_T = h(y)"
        assert np.all(tau <= d[f"{kind}_k"])
        for n in range(paths.shape[0]):
            frozen = paths[n, tau[n] :]
            assert np.all(frozen == frozen[0]), f"{kind} path {n} moves after τ(y) = {tau[n]}: {frozen}"
    assert int(d["deadline_k"]) == size["deadline"]
    assert np.all(d["graded_tau"] == horizon), "every token counts for graded harm: τ(y) = T"
    # the deadline sample shows more than one horizon (the figure's point), fixed seed
    assert len(set(d["deadline_tau"].tolist())) > 1


# --- figure 2: ‖G_t‖ covariance form = untied autodiff, zero past k ----------------------------


def test_fig2_bars_match_autodiff_and_vanish_past_the_horizon(tiny_data):
    d = tiny_data["fig2_gradient_by_position"]
    size = _module("fig2_gradient_by_position").TINY
    horizon = size["horizon"]
    for kind in ("deadline", "first_decisive", "graded"):
        cov, auto, k = d[f"{kind}_covariance"], d[f"{kind}_autodiff"], int(d[f"{kind}_k"])
        assert cov.shape == auto.shape == (horizon,)
        assert_close(cov, auto, IDENTITY, what=f"{kind}: ‖G_t‖ covariance vs untied autodiff")
        assert float(d[f"{kind}_max_abs_error"]) <= IDENTITY, kind
        assert np.all(cov[k:] == 0.0), f"{kind}: bars beyond k = {k} must be exactly 0, got {cov[k:]}"
        assert np.all(np.abs(auto[k:]) <= IDENTITY), kind
        assert cov[k - 1] > 0.0, f"{kind}: the last position before the horizon carries gradient"
    assert int(d["deadline_k"]) == size["deadline"] < horizon
    assert int(d["first_decisive_k"]) == int(d["graded_k"]) == horizon


# --- figure 3: D_t ≈ (λ²/2) I_t, ratio → 1 -----------------------------------------------------


def test_fig3_ratio_tends_to_one_and_kl_vanishes_past_the_horizon(tiny_data):
    d = tiny_data["fig3_kl_tracks_information"]
    k = int(d["k"])
    lams, ratio = d["lams"], d["ratio"]
    assert np.all(d["kl"][k:] == 0.0) and np.all(d["information"][k:] == 0.0)
    assert np.all(np.isnan(ratio[:, k:])), "the ratio is undefined where I_t = 0"
    assert np.all(d["information"][:k] > 0.0) and np.all(d["kl"][:k] > 0.0)
    gap = np.abs(ratio[:, :k] - 1.0)
    # [Thm 14]: 2D_t/(λ²I_t) = 1 + c_t λ + O(λ²). On these instances c_t is about 0.5 (measured:
    # ratio − 1 ≈ 5e-4 at λ = 1e-3 for the full size), so |ratio − 1| <= 2λ leaves a factor 4.
    assert np.all(gap[0] <= 2.0 * lams[0]), f"ratio at λ = {lams[0]}: {ratio[0, :k]}"
    assert np.all(gap[0] < gap[len(lams) // 2]), "the ratio must approach 1 as λ decreases"
    assert abs(float(d["total_ratio"][0]) - 1.0) <= 2.0 * lams[0]
    assert_close(d["quadratic"], 0.5 * float(d["lam"]) ** 2 * d["information"], what="(λ²/2) I_t")


# --- figure 8: covariance terms on the tree = the tabular gradient -----------------------------


def test_fig8_edge_terms_are_the_tabular_gradient(tiny_data):
    d = tiny_data["fig8_prefix_tree"]
    horizon = len(d["G_norm"])
    total_w, total_grad = 0.0, 0.0
    for t in range(1, horizon + 1):
        w, grad, pi = d[f"w{t}"], d[f"grad{t}"], d[f"pi{t}"]
        assert_close(w, grad, IDENTITY, what=f"level {t}: covariance terms vs jax.grad")
        assert_close(w.sum(), grad.sum(), IDENTITY, what=f"level {t}: sum of terms")
        assert_close(w.sum(axis=1), np.zeros(w.shape[0]), IDENTITY, what=f"level {t}: Σ_v w(p, v)")
        expected = d[f"P{t - 1}"][:, None] * pi * (d[f"H{t}"].reshape(pi.shape) - d[f"H{t - 1}"][:, None])
        assert_close(w, expected, IDENTITY, what=f"level {t}: P(p)π(v|p)(H(pv)−H(p))")
        determined = d[f"determined{t - 1}"]
        assert np.all(w[determined] == 0.0), f"level {t}: edges out of determined prefixes must be 0"
        assert_close(d["G_norm"][t - 1], np.sqrt(np.sum(w**2)), IDENTITY, what=f"‖G_{t}‖")
        total_w, total_grad = total_w + w.sum(), total_grad + grad.sum()
    assert d["determined1"].any() and not d["determined1"].all(), "the teaching tree shows both kinds"


# --- files: reproducible bytes, metadata, atomic replacement ----------------------------------


# Two figures keep this test short (PDF font embedding costs seconds per file); between them they
# use every element the others use: lines, markers, bars, log axes, mathtext, boxed text.
REPRODUCED = ["fig3", "fig8"]


def test_rerun_gives_byte_identical_files(tmp_path, tiny_data):
    first = figures.make_all(out_dir=tmp_path / "a", only=REPRODUCED, tiny=True, progress=False)
    second = figures.make_all(out_dir=tmp_path / "b", only=REPRODUCED, tiny=True, progress=False)
    assert [p.name for p in first] == [p.name for p in second]
    assert len(first) == 3 * len(REPRODUCED)  # PNG, PDF and the data (JSON) of each
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between runs"
    pdf = (tmp_path / "a" / "fig8_prefix_tree.pdf").read_bytes()
    png = (tmp_path / "a" / "fig8_prefix_tree.png").read_bytes()
    assert pdf.startswith(b"%PDF") and b"CreationDate" not in pdf and b"matplotlib" not in pdf.lower()
    assert png.startswith(b"\x89PNG") and b"Software" not in png
    assert sorted(os.listdir(tmp_path / "a")) == sorted(p.name for p in first), "no temporary files left"


def test_failed_plot_leaves_the_old_file(tmp_path, tiny_data, monkeypatch):
    out = [tmp_path / "fig8_prefix_tree.png", tmp_path / "fig8_prefix_tree.pdf"]
    for p in out:
        p.write_bytes(b"old " + p.suffix.encode())
    before = {p: p.read_bytes() for p in out}

    def broken_plot(numbers):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(_module("fig8_prefix_tree"), "plot", broken_plot)
    with pytest.raises(RuntimeError, match="plotting failed"):
        figures.make_all(out_dir=tmp_path, only=["fig8"], tiny=True, progress=False)
    assert {p: p.read_bytes() for p in out} == before
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in out)


def test_failed_write_midway_leaves_the_old_file(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    target = tmp_path / "x.png"
    target.write_bytes(b"old")

    class HalfWritten:
        def savefig(self, handle, **kwargs):
            handle.write(b"\x89PNG half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        figures.write_atomic(HalfWritten(), target)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.png"], "the temporary file must be removed"
    figures.write_atomic(fig, target, metadata=figures.PNG_METADATA)
    plt.close(fig)
    assert target.read_bytes().startswith(b"\x89PNG")
    assert os.listdir(tmp_path) == ["x.png"]


# --- the numbers behind the figures reproduce -------------------------------------------------

TINY_DATA = figures.DEFAULT_OUT_DIR / "tiny"


def test_tiny_data_match_the_committed_data(tiny_data):
    """Fresh tiny-size data agree with figures/output/tiny/*.json at the stated tolerances."""
    for name, numbers in tiny_data.items():
        record = figures.read_data(TINY_DATA / f"{name}.json")
        assert record["size"] == "tiny"
        assert figures.compare_data(numbers, record) == [], name


@pytest.mark.parametrize("name", ["fig3_kl_tracks_information", "fig8_prefix_tree"])
def test_full_data_match_the_committed_data(name):
    """Fresh full-size data agree with the committed figures/output/<name>.json (exact numbers)."""
    spec = next(s for s in figures.FIGURES if s.name == name)
    module = _module(name)
    numbers = figures.publish(module.data(**module.FULL), figures.trained_bounds(spec))
    record = figures.read_data(figures.DEFAULT_OUT_DIR / f"{name}.json")
    assert record["size"] == "full" and figures.compare_data(numbers, record) == []


def test_compare_data_detects_a_changed_number(tiny_data):
    name = "fig3_kl_tracks_information"
    record = figures.read_data(TINY_DATA / f"{name}.json")
    numbers = dict(tiny_data[name])
    key = next(k for k, v in numbers.items() if v.dtype.kind == "f" and np.any(np.abs(v) > 1e-3))
    numbers[key] = numbers[key] * (1 + 1e-8)  # a relative change far above the 1e-12 rounding
    assert any(p.startswith(key) for p in figures.compare_data(numbers, record))
    assert figures.compare_data({**numbers, "extra": np.zeros(1)}, record)


def test_publish_removes_residue():
    """Values that differ only by rounding or optimiser residue publish to the same numbers."""
    rng = np.random.default_rng(0)
    exact = rng.random(50)
    trained = np.concatenate([rng.random(20), rng.normal(size=5) * 1e-13])
    bounds = {"trained": 1e-11}
    a = figures.publish({"exact": exact, "trained": trained}, bounds)
    b = figures.publish({"exact": exact * (1 + 1e-15), "trained": trained + 1e-15}, bounds)
    assert np.array_equal(a["exact"], b["exact"]) and np.array_equal(a["trained"], b["trained"])
    assert np.all(a["trained"][20:] == 0.0)  # at or below the certified bound: 0 ("≤ bound")
    assert (
        np.max(np.abs(a["exact"] - exact)) <= 1e-12
        and np.max(np.abs(a["trained"][:20] - trained[:20])) < 1e-3
    )


# --- the command line ---------------------------------------------------------------------------


def test_cli_writes_figures_with_progress(tmp_path, capsys, tiny_data):
    assert main(["figures", "--tiny", "--only", "fig8", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == [
        str(tmp_path / "fig8_prefix_tree.png"),
        str(tmp_path / "fig8_prefix_tree.pdf"),
        str(tmp_path / "fig8_prefix_tree.json"),
    ]
    assert captured.err.count("\n") == 1 and "fig8_prefix_tree" in captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["figures", "--only", "fig99"], "unknown figure 'fig99'"),
        (["figures", "--only"], "expected at least one argument"),
    ],
)
def test_cli_bad_names(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_cli_unwritable_folder(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["figures", "--tiny", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err, err
    assert main(["figures", "--tiny", "--out", str(blocker)]) == 2
    assert "--out" in capsys.readouterr().err


def test_text_uses_matplotlib_bundled_font():
    """Fonts come from matplotlib's own (pinned) data, never from the system: a system DejaVu of
    another version would change the PDF's embedded font subset."""
    import matplotlib
    from matplotlib import font_manager

    from figures import _style

    _style.apply()
    path = font_manager.findfont(font_manager.FontProperties(family=_style.RC["font.family"]))
    assert os.path.realpath(path).startswith(os.path.realpath(matplotlib.get_data_path())), path
