"""The figures of toysim: one module per figure, one registry, one writer.

Every figure module (``figures/figN_name.py``) defines

* ``FULL`` and ``TINY``: keyword sizes for :func:`data` (``TINY`` builds in seconds, for tests);
* ``data(**size) -> dict[str, np.ndarray]``: the exact numbers behind the figure, computed from the
  public ``toysim`` API only, with fixed seeds;
* ``plot(data) -> matplotlib.figure.Figure``: the drawing, in the shared style of ``figures._style``;
* ``main(out_dir=None)``: writes that figure alone (``python -m figures.figN_name``).

Adding a figure is one module plus one :class:`FigureSpec` line in :data:`FIGURES`.
:func:`make_all` writes a PNG and a PDF per figure; re-running with the same inputs gives
byte-identical files (fixed seeds, no timestamps or software versions in the metadata), and each
file is replaced atomically (written to a temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "output"

# Metadata that would change between runs or machines is dropped: same inputs, same bytes.
PNG_METADATA = {"Software": None}
PDF_METADATA = {"Creator": None, "Producer": None, "CreationDate": None, "ModDate": None}
PNG_DPI = 200


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
        "After exact training the per-position KL to π_0 sits at positions up to the horizon k for a "
        "tabular policy (rounding level beyond it) but spills past k for the Markov policy, whose "
        "parameters are shared by all positions (for the MLP the spillover is non-zero but tiny).",
        "deadline harm (token 1 within 2 positions, k=2), V=2, T=5, λ=2; tabular, Markov (order 1) "
        "and MLP (window 2, 8 hidden) base policies (Gaussian parameters, seed 0), each trained by "
        "L-BFGS from π_0 (train_alignment, up to 300 steps).",
    ),
    FigureSpec(
        "fig5_recovery_penalty",
        "figures.fig5_recovery_penalty",
        "The recovery penalty gives gradient and KL beyond the horizon k, where the plain gradient "
        "λ‖G_t‖ and the standard optimum's D_t are exactly 0.",
        "tabular π_0 V=3, T=5 (Gaussian logits, seed 0); deadline harm (token 2 within 2 positions, "
        "k=2); R={0}, Q=π_0 conditioned on harm, λ=1, μ=3, γ=0.6; deep optimum of the separable "
        "objective by L-BFGS (300 steps), standard optimum the closed-form tilt.",
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


def write_atomic(fig, path: Path, **savefig_kwargs) -> Path:
    """``fig.savefig`` to a temporary file in ``path``'s folder, then ``os.replace`` onto ``path``.

    A failure at any point leaves the previous ``path`` untouched and no temporary file behind.
    """
    fmt = path.suffix.lstrip(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".{fmt}.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format=fmt, **savefig_kwargs)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; figures are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_figure(fig, out_dir: Path, name: str) -> list[Path]:
    """Write ``<name>.png`` and ``<name>.pdf`` into ``out_dir``, each atomically and reproducibly."""
    out_dir = Path(out_dir)
    png = write_atomic(fig, out_dir / f"{name}.png", dpi=PNG_DPI, metadata=PNG_METADATA)
    pdf = write_atomic(fig, out_dir / f"{name}.pdf", metadata=PDF_METADATA)
    return [png, pdf]


def build(spec: FigureSpec, tiny: bool = False):
    """``(data, figure)`` of one spec, at the module's ``TINY`` or ``FULL`` size."""
    from . import _style

    _style.apply()
    module = importlib.import_module(spec.module)
    numbers = module.data(**(module.TINY if tiny else module.FULL))
    return numbers, module.plot(numbers)


def make_all(
    out_dir: str | os.PathLike | None = None,
    only: Sequence[str] | None = None,
    progress: bool = True,
    tiny: bool = False,
) -> list[Path]:
    """Build the registered figures and write each as PNG and PDF.

    Args:
      out_dir: output folder (created if missing); default ``figures/output`` in the repository.
      only: names of the figures to build (full name such as ``fig2_gradient_by_position`` or its
        prefix ``fig2``); default all, in registry order.
      progress: print one line per figure on stderr.
      tiny: build at the tiny sizes (seconds; for tests).

    Returns:
      The written paths, PNG then PDF for each figure.

    Raises:
      ValueError: an unknown figure name or an output folder that cannot be written.
    """
    import matplotlib.pyplot as plt

    specs = _select(only)
    folder = _prepare_out_dir(out_dir)
    written = []
    for i, spec in enumerate(specs, start=1):
        start = time.perf_counter()
        _, fig = build(spec, tiny=tiny)
        try:
            written += save_figure(fig, folder, spec.name)
        finally:
            plt.close(fig)
        if progress:
            elapsed = time.perf_counter() - start
            print(f"figures: [{i}/{len(specs)}] {spec.name} ({elapsed:.1f} s)", file=sys.stderr)
    return written


def main_for(name: str, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """The ``main()`` of one figure module: write that figure alone."""
    return make_all(out_dir=out_dir, only=[name])


__all__ = [
    "DEFAULT_OUT_DIR",
    "FIGURES",
    "FigureSpec",
    "build",
    "main_for",
    "make_all",
    "save_figure",
    "write_atomic",
]
