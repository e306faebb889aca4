"""The figures of toysim: one module per figure, one registry, one writer.

Every figure module (``figures/figN_name.py``) defines

* ``FULL`` and ``TINY``: keyword sizes for :func:`data` (``TINY`` builds in seconds, for tests);
* ``data(**size) -> dict[str, np.ndarray]``: the exact numbers behind the figure, computed from the
  public ``toysim`` API only, with fixed seeds;
* ``plot(data) -> matplotlib.figure.Figure``: the drawing, in the shared style of ``figures._style``;
* ``main(out_dir=None)``: writes that figure alone (``python -m figures.figN_name``);
* optionally ``TRAINED = {key: bound}``: the keys computed from a trained optimum, each with the
  bound its run's certificate must meet (``data`` refuses otherwise).

Adding a figure is one module plus one :class:`FigureSpec` line in :data:`FIGURES`.
:func:`make_all` writes a PNG, a PDF and the numbers behind them (``<name>.json``) per figure.
Both are drawn from the *published* numbers (:func:`publish`): exact values rounded to
:data:`EXACT_DIGITS` significant digits, trained ones to :data:`TRAINED_DIGITS` and set to 0 at or
below their certified bound (drawn as a bound, not a value), so that the bytes do not depend on
float64 rounding or optimiser residue, which differ between machines. Re-running gives
byte-identical files (fixed seeds, pinned versions, no timestamps or software versions in the
metadata), and each file is replaced atomically (temporary file in the same folder, ``os.replace``).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "output"

# Metadata that would change between runs or machines is dropped: same inputs, same bytes.
PNG_METADATA = {"Software": None}
PDF_METADATA = {"Creator": None, "Producer": None, "CreationDate": None, "ModDate": None}
PNG_DPI = 200

# Published numbers. Exact values carry float64 rounding (~1e-16 relative, machine-dependent in the
# last bits: vectorised log/exp differ between CPUs); 12 significant digits keep 4 digits of margin
# above it, and a PDF stores coordinates to ~10 digits. Trained values carry their certificate
# (≤ the module's TRAINED bound, ~1e-12 absolute, measured 1e-15): 4 significant digits is what a
# figure can show, and keeps residue below a rounding step except within ~1e-11 of a boundary.
EXACT_DIGITS = 12
TRAINED_DIGITS = 4
# Tolerances of the data comparison (tests/test_figures_data.py): an exact value to 1e-10 absolute
# (the project's identity tolerance) plus its rounding step; a trained one to its TRAINED bound plus
# one rounding step of its 4 digits.
EXACT_ATOL = 1e-10
DATA_FORMAT = "toysim.figure-data/1"


class FigureSpec(NamedTuple):
    """One figure of the registry.

    Attributes:
      name: file stem of the outputs (``<name>.png``, ``<name>.pdf``) and the CLI name.
      module: importable module holding ``FULL``, ``TINY``, ``data``, ``plot`` and ``main``.
      claim: the one sentence the figure shows.
      instance: the instance(s) it is computed on, in words.
    """

    name: str
    module: str
    claim: str
    instance: str


FIGURES: list[FigureSpec] = [
    FigureSpec(
        "fig1_martingale_paths",
        "figures.fig1_martingale_paths",
        "Along every sampled response the harm martingale H_t stops moving at the response's own "
        "horizon τ(y): early for a deadline harm, only at t = T for a graded harm.",
        "tabular policy V=3, T=6 (Gaussian logits, seed 0); deadline harm (token 2 within the first "
        "3 positions, k=3) and graded harm (fraction of token 2, k=T); 24 responses sampled with "
        "jax.random (seed 1).",
    ),
    FigureSpec(
        "fig2_gradient_by_position",
        "figures.fig2_gradient_by_position",
        "The per-position gradient ‖G_t‖ in covariance form equals position-untied autodiff and is "
        "exactly zero beyond the harm horizon k.",
        "Markov (order 1, shared parameters) policy V=3, T=6 (Gaussian logits, seed 0); deadline "
        "harm (token 2 within 3 positions, k=3), first-decisive harm (comply 2, refuse 1, k=T) and "
        "graded harm (fraction of token 2, k=T).",
    ),
    FigureSpec(
        "fig3_kl_tracks_information",
        "figures.fig3_kl_tracks_information",
        "The per-position KL D_t of the exact equilibrium tilt tracks (λ²/2) I_t, is zero beyond "
        "the horizon, and 2D_t/(λ² I_t) → 1 as λ → 0.",
        "Markov (order 1) base policy V=3, T=6 (Gaussian logits, seed 0); deadline harm (token 2 "
        "within 3 positions, k=3); λ = 0.5 for the profile, 17 values of λ from 1e-3 to 10 for the "
        "ratio.",
    ),
    FigureSpec(
        "fig4_shallow_after_training",
        "figures.fig4_shallow_after_training",
        "After certified exact training the per-position KL to π_0 sits at positions up to the horizon "
        "k for a tabular policy (certified below 1e-11 beyond it) but spills past k for the Markov "
        "policy, whose parameters are shared by all positions (the MLP here mimics the tilt: its "
        "spillover is certified below 1e-11).",
        "deadline harm (token 1 within 2 positions, k=2), V=2, T=5, λ=2; tabular, Markov (order 1) "
        "and MLP (window 2, 8 hidden) base policies (Gaussian parameters, seed 0), each trained by "
        "the certified Newton optimizer from π_0 (train_alignment, to ‖∇L‖ ≤ 1e-13); drawn values "
        "certified to 1e-11, smaller ones drawn as that bound.",
    ),
    FigureSpec(
        "fig5_recovery_penalty",
        "figures.fig5_recovery_penalty",
        "The recovery penalty gives gradient and KL beyond the horizon k, where the plain gradient "
        "λ‖G_t‖ and the standard optimum's D_t are exactly 0.",
        "tabular π_0 V=3, T=5 (Gaussian logits, seed 0); deadline harm (token 2 within 2 positions, "
        "k=2); R={0}, Q=π_0 conditioned on harm, λ=1, μ=3, γ=0.6; deep optimum of the separable "
        "objective by the certified Newton optimizer (train_deep), its numbers certified to 1e-11; "
        "standard optimum the closed-form tilt.",
    ),
    FigureSpec(
        "fig6_prefilling_attacks",
        "figures.fig6_prefilling_attacks",
        "Prefilling-attack success of the standard-aligned optimum equals the base policy's at every "
        "depth past the horizon, while the deep-aligned (separable) optimum lies below both at every "
        "depth and keeps its recovery above the guarantee σ(logit p_min + μγ^k), which reaches δ at "
        "t_attack(δ).",
        "the instance and optima of figure 5; δ=0.05.",
    ),
    FigureSpec(
        "fig7_sampling_vs_exact",
        "figures.fig7_sampling_vs_exact",
        "The REINFORCE estimate of G_t has error falling only as 1/√N at every position, including "
        "past the horizon where the exact G_t is 0.",
        "the Markov (order 1) policy and deadline harm of figure 2 (V=3, T=6, k=3); 20000 "
        "independent 10-sample estimates without baseline (jax.random, seed 7), grouped into "
        "N = 10 to 10000.",
    ),
    FigureSpec(
        "fig8_prefix_tree",
        "figures.fig8_prefix_tree",
        "The whole gradient is a sum of covariance terms P(p)π(v|p)(H(pv)−H(p)) over the edges of "
        "the prefix tree, and every edge leaving a determined prefix carries exactly zero.",
        "tabular policy V=2, T=3 (Gaussian logits, seed 3); trigger harm (h=1 iff token 1 ever "
        "occurs), so prefixes are determined at depths 1 to 3.",
    ),
    FigureSpec(
        "fig9_depth_by_method",
        "figures.fig9_depth_by_method",
        "Every alignment method whose optimum reweights π_0 by a function of the harm (RL, DPO, IPO, "
        "rejection sampling, best-of-N), and the token-wise KL constraint, puts exactly zero KL past "
        "the horizon k and is exactly as vulnerable as π_0 to prefills there; only the recovery "
        "penalty is deeper.",
        "the instance of figure 5 (tabular π_0 V=3, T=5, deadline harm k=2, R={0}, λ=1, μ=3, γ=0.6); "
        "DPO with β=1, β_r=λ (its optimum is the tilt), IPO β=1, best-of-4, β_t=(0.5, 2, 2, 2, 2); "
        "closed forms, and certified Newton training for the recovery penalty.",
    ),
    FigureSpec(
        "fig10_kl_harm_frontier",
        "figures.fig10_kl_harm_frontier",
        "The tilts trace the least KL at each expected harm; every method's optimum lies on or above "
        "this frontier: on it for RL and DPO, above it for IPO and best-of-N (a graded harm has more "
        "than two values), and above it in a Markov family.",
        "Markov (order 1) π_0 V=3, T=4 (Gaussian logits, seed 0); graded harm (fraction of token 2); "
        "λ=1.5, R={0}, μ=1, γ=1; the frontier from 60 values of λ; in-family optima by certified "
        "training.",
    ),
]


def _select(only: Sequence[str] | None) -> list[FigureSpec]:
    """The specs named by ``only`` (full name or its ``figN`` prefix), in registry order."""
    if only is None:
        return list(FIGURES)
    known = {}
    for spec in FIGURES:
        known[spec.name] = spec
        known[spec.name.split("_")[0]] = spec
    unknown = [name for name in only if name not in known]
    if unknown:
        names = ", ".join(spec.name for spec in FIGURES)
        raise ValueError(f"--only: unknown figure {', '.join(map(repr, unknown))}; known figures: {names}")
    wanted = {known[name].name for name in only}
    return [spec for spec in FIGURES if spec.name in wanted]


def _prepare_out_dir(out_dir: str | os.PathLike | None) -> Path:
    """Create the output folder if needed and check that it is writable (ValueError otherwise)."""
    path = DEFAULT_OUT_DIR if out_dir is None else Path(out_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out: cannot create output folder {str(path)!r}: {err.strerror}") from None
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"--out: output folder {str(path)!r} is not a writable folder")
    return path


def _replace_atomically(path: Path, write, mode: str) -> Path:
    """``write(handle)`` into a temporary file in ``path``'s folder, then ``os.replace`` onto ``path``.

    A failure at any point leaves the previous ``path`` untouched and no temporary file behind.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{path.suffix}.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            write(handle)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; figures are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_atomic(fig, path: Path, **savefig_kwargs) -> Path:
    """``fig.savefig`` onto ``path`` atomically (:func:`_replace_atomically`)."""
    fmt = path.suffix.lstrip(".")
    return _replace_atomically(path, lambda h: fig.savefig(h, format=fmt, **savefig_kwargs), "wb")


def save_figure(fig, out_dir: Path, name: str) -> list[Path]:
    """Write ``<name>.png`` and ``<name>.pdf`` into ``out_dir``, each atomically and reproducibly."""
    out_dir = Path(out_dir)
    png = write_atomic(fig, out_dir / f"{name}.png", dpi=PNG_DPI, metadata=PNG_METADATA)
    pdf = write_atomic(fig, out_dir / f"{name}.pdf", metadata=PDF_METADATA)
    return [png, pdf]


def _round(values, digits: int):
    """Round to ``digits`` significant digits, elementwise, through the decimal string (exact ties
    and the last bit of the result do not depend on the platform's ``log10``)."""
    arr = np.asarray(values, dtype=np.float64)
    flat = [float(f"{v:.{digits - 1}e}") if np.isfinite(v) else float(v) for v in arr.ravel()]
    return np.asarray(flat, dtype=np.float64).reshape(arr.shape)


def publish(numbers: dict, trained: dict | None = None) -> dict:
    """The numbers a figure draws and writes: rounded so that bytes do not depend on residue.

    Integer and boolean arrays pass unchanged. A float array is rounded to :data:`EXACT_DIGITS`
    significant digits; one named in ``trained`` (``{key: bound}``) to :data:`TRAINED_DIGITS`,
    after its entries with ``|v| <= bound`` are set to 0 (the figure draws them as "≤ bound").

    Example:
      >>> publish({"x": np.array([1 / 3, 1e-20]), "y": np.array([0.123456, 1e-13])}, {"y": 1e-12})
      {'x': array([3.33333333e-01, 1.00000000e-20]), 'y': array([0.1235, 0.    ])}
    """
    trained = trained or {}
    out = {}
    for key, value in numbers.items():
        arr = np.asarray(value)
        if arr.dtype.kind != "f":
            out[key] = arr
        elif key in trained:
            out[key] = _round(np.where(np.abs(arr) <= trained[key], 0.0, arr), TRAINED_DIGITS)
        else:
            out[key] = _round(arr, EXACT_DIGITS)
    return out


def data_record(name: str, numbers: dict, trained: dict | None, tiny: bool) -> dict:
    """The JSON document of one figure's published numbers (floats at ``repr`` precision)."""
    trained = trained or {}

    def plain(arr):
        arr = np.asarray(arr)
        if arr.dtype.kind == "f":  # NaN (undefined, e.g. a ratio 0/0) is JSON null
            arr = np.where(np.isfinite(arr), arr, None).astype(object)
        return arr.tolist() if arr.ndim else arr.item()

    return {
        "format": DATA_FORMAT,
        "figure": name,
        "size": "tiny" if tiny else "full",
        "exact": {"digits": EXACT_DIGITS, "atol": EXACT_ATOL},
        "trained": {"digits": TRAINED_DIGITS, "bounds": {k: trained[k] for k in sorted(trained)}},
        "data": {key: plain(numbers[key]) for key in sorted(numbers)},
    }


def write_text_atomic(text: str, path: Path) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`_replace_atomically`)."""
    return _replace_atomically(path, lambda h: h.write(text), "w")


def build(spec: FigureSpec, tiny: bool = False):
    """``(published data, figure)`` of one spec, at the module's ``TINY`` or ``FULL`` size."""
    from . import _style

    _style.apply()
    module = importlib.import_module(spec.module)
    numbers = publish(module.data(**(module.TINY if tiny else module.FULL)), getattr(module, "TRAINED", {}))
    return numbers, module.plot(numbers)


def trained_bounds(spec: FigureSpec) -> dict:
    """The module's ``TRAINED`` bounds (``{}`` for a figure of exact numbers only)."""
    return dict(getattr(importlib.import_module(spec.module), "TRAINED", {}))


def make_all(
    out_dir: str | os.PathLike | None = None,
    only: Sequence[str] | None = None,
    progress: bool = True,
    tiny: bool = False,
) -> list[Path]:
    """Build the registered figures and write each as PNG and PDF, with its numbers as JSON.

    Args:
      out_dir: output folder (created if missing); default ``figures/output`` in the repository.
      only: names of the figures to build (full name such as ``fig2_gradient_by_position`` or its
        prefix ``fig2``); default all, in registry order.
      progress: print one line per figure on stderr.
      tiny: build at the tiny sizes (seconds; for tests).

    Returns:
      The written paths, PNG, PDF then JSON for each figure.

    Raises:
      ValueError: an unknown figure name or an output folder that cannot be written.
    """
    import matplotlib.pyplot as plt

    specs = _select(only)
    folder = _prepare_out_dir(out_dir)
    written = []
    for i, spec in enumerate(specs, start=1):
        start = time.perf_counter()
        numbers, fig = build(spec, tiny=tiny)
        try:
            written += save_figure(fig, folder, spec.name)
        finally:
            plt.close(fig)
        record = data_record(spec.name, numbers, trained_bounds(spec), tiny)
        text = json.dumps(record, indent=1, allow_nan=False) + "\n"
        written.append(write_text_atomic(text, folder / f"{spec.name}.json"))
        if progress:
            elapsed = time.perf_counter() - start
            print(f"figures: [{i}/{len(specs)}] {spec.name} ({elapsed:.1f} s)", file=sys.stderr)
    return written


def write_data(
    out_dir: str | os.PathLike, only: Sequence[str] | None = None, tiny: bool = True
) -> list[Path]:
    """Write only the published numbers (``<name>.json``) of the figures, without drawing them.

    The tiny-size data committed under ``figures/output/tiny/`` (the reference of
    ``tests/test_figures_data.py``) is written by ``write_data("figures/output/tiny")``.
    """
    folder = _prepare_out_dir(out_dir)
    written = []
    for spec in _select(only):
        module = importlib.import_module(spec.module)
        numbers = publish(module.data(**(module.TINY if tiny else module.FULL)), trained_bounds(spec))
        text = json.dumps(
            data_record(spec.name, numbers, trained_bounds(spec), tiny), indent=1, allow_nan=False
        )
        written.append(write_text_atomic(text + "\n", folder / f"{spec.name}.json"))
    return written


def read_data(path: str | os.PathLike) -> dict:
    """A figure's data record (:func:`data_record`), its arrays as numpy arrays."""
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    if record.get("format") != DATA_FORMAT:
        raise ValueError(f"{path}: format must be {DATA_FORMAT!r}, got {record.get('format')!r}")

    def array(value):
        arr = np.asarray(value)
        return np.array(value, dtype=np.float64) if arr.dtype == object else arr  # null is NaN

    record["data"] = {key: array(value) for key, value in record["data"].items()}
    return record


def compare_data(fresh: dict, record: dict) -> list[str]:
    """Differences between freshly published numbers and a committed record, beyond tolerance.

    An exact value agrees when ``|a − b| <= EXACT_ATOL + |b|·10^(1 − EXACT_DIGITS)`` (the identity
    tolerance plus one rounding step); a trained one when ``|a − b| <= 2·bound + |b|·10^(1 −
    TRAINED_DIGITS)``: each side is within its certified bound of the optimum's value (or was set
    to 0 for being at most the bound), plus one rounding step. Integers must be equal. Returns
    messages, one per disagreeing key (empty: the data reproduce).
    """
    bounds = record["trained"]["bounds"]
    committed = record["data"]
    problems = []
    if sorted(fresh) != sorted(committed):
        problems.append(f"keys differ: fresh {sorted(fresh)} vs committed {sorted(committed)}")
    for key in sorted(set(fresh) & set(committed)):
        a, b = np.asarray(fresh[key]), np.asarray(committed[key])
        if a.shape != b.shape:
            problems.append(f"{key}: shape {a.shape} vs committed {b.shape}")
            continue
        if a.dtype.kind != "f" and b.dtype.kind != "f":
            if not np.array_equal(a, b):
                problems.append(f"{key}: {a.tolist()} vs committed {b.tolist()}")
            continue
        a, b = a.astype(np.float64), b.astype(np.float64)
        size = np.abs(np.where(np.isnan(b), 0.0, b))
        if key in bounds:
            tol = 2.0 * bounds[key] + size * 10.0 ** (1 - TRAINED_DIGITS)
        else:
            tol = EXACT_ATOL + size * 10.0 ** (1 - EXACT_DIGITS)
        both_nan = np.isnan(a) & np.isnan(b)
        err = np.where(both_nan, 0.0, np.abs(a - b))  # NaN on one side only: err NaN, fails
        if not np.all(err <= tol):
            worst = int(np.argmax(err - tol))
            problems.append(
                f"{key}: |fresh − committed| = {err.ravel()[worst]:.2e} > {np.ravel(tol)[worst]:.2e} at {worst}"
            )
    return problems


def main_for(name: str, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """The ``main()`` of one figure module: write that figure alone."""
    return make_all(out_dir=out_dir, only=[name])


__all__ = [
    "DEFAULT_OUT_DIR",
    "FIGURES",
    "FigureSpec",
    "build",
    "compare_data",
    "data_record",
    "main_for",
    "make_all",
    "publish",
    "read_data",
    "save_figure",
    "trained_bounds",
    "write_atomic",
    "write_data",
    "write_text_atomic",
]
