"""The one look of every toysim figure: paper column width, 8 pt type, Okabe–Ito colours.

Axis symbols follow docs/theory.md: ``H_t`` (harm martingale), ``I_t`` (harm information), ``‖G_t‖``
(per-position gradient), ``D_t`` (per-position KL), ``λ`` (harm weight), ``τ`` and ``k`` (harm
horizons). Rendering is the non-interactive Agg backend, so figures build on machines without a
display and give the same pixels on every run.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

# A single column of a two-column paper, in inches.
COLUMN_WIDTH = 3.3
DOUBLE_WIDTH = 6.9

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision
# deficiencies, and in greyscale by lightness.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
}
PALETTE = [OKABE_ITO[c] for c in ("blue", "vermillion", "green", "orange", "purple", "sky", "yellow")]
# One colour and marker per alignment method, the same in every figure that compares them (9, 10).
METHOD_STYLE = {
    "tilt": (OKABE_ITO["blue"], "s"),
    "ipo": (OKABE_ITO["sky"], "v"),
    "best_of_n": (OKABE_ITO["orange"], "^"),
    "rejection_sampling": (OKABE_ITO["yellow"], "<"),
    "token_wise_kl": (OKABE_ITO["purple"], ">"),
    "recovery_penalty": (OKABE_ITO["vermillion"], "D"),
}
HORIZON_COLOR = "#555555"
DETERMINED_FILL = "#DDDDDD"

# Mathtext labels, one spelling everywhere.
SYMBOL = {
    "t": r"position $t$",
    "H": r"$H_t$",
    "I": r"$I_t$",
    "G": r"$\|G_t\|$",
    "D": r"$D_t$",
    "lam": r"$\lambda$",
    "tau": r"$\tau(y)$",
    "k": r"$k$",
}

RC = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "lines.linewidth": 1.0,
    "lines.markersize": 3.5,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "mathtext.fontset": "dejavusans",
    "pdf.fonttype": 42,  # embed TrueType: text stays selectable and editable
    "svg.hashsalt": "toysim",
    "figure.dpi": 100,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
}


def apply() -> None:
    """Set the shared rcParams (idempotent)."""
    plt.rcParams.update(RC)


def figure(nrows: int = 1, ncols: int = 1, height: float = 2.2, width: float = COLUMN_WIDTH, **kwargs):
    """``plt.subplots`` at paper column width with constrained layout, in the shared style."""
    apply()
    return plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", **kwargs)


def mark_horizon(ax, k: float, label: str | None = r"$k$", offset: float = 0.5) -> None:
    """A dashed vertical line between position ``k`` and ``k + 1``: everything right of it is past
    the horizon."""
    ax.axvline(k + offset, color=HORIZON_COLOR, linestyle="--", linewidth=0.7, zorder=0)
    if label:
        ax.annotate(
            label,
            xy=(k + offset, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -10),
            textcoords="offset points",
            ha="left",
            va="top",
            fontsize=7,
            color=HORIZON_COLOR,
        )


def integer_positions(ax, horizon: int, start: int = 1) -> None:
    """Ticks at positions ``start..T``."""
    ax.set_xticks(range(start, horizon + 1))
    ax.set_xlim(start - 0.6, horizon + 0.6)


def panel_label(ax, text: str) -> None:
    """A small bold panel title at the top left, e.g. ``(a) deadline``."""
    ax.set_title(text, loc="left", fontsize=8, pad=3)
