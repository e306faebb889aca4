"""``toysim figures``: regenerate the paper figures (PNG and PDF) from the registry in ``figures``."""

from __future__ import annotations

from ._cli import out_dir_arg


def _import_figures():
    """The ``figures`` package, or a ValueError saying how to make it importable.

    Imported only when the subcommand runs, so that ``toysim`` keeps working without it.
    """
    try:
        import figures
    except ImportError as err:
        raise ValueError(
            f"toysim figures needs the 'figures' package of the repository ({err}); "
            "reinstall toysim from the repository with `pip install -e .`"
        ) from None
    return figures


def _cmd_figures(args) -> int:
    make_all = _import_figures().make_all
    for path in make_all(out_dir=args.out, only=args.only, progress=True, tiny=args.tiny):
        print(path)
    return 0


def register(sub) -> None:
    """Add the ``figures`` subcommand to the ``toysim`` command line."""
    p = sub.add_parser(
        "figures",
        help="regenerate the figures (PNG and PDF)",
        description="Build the registered figures with fixed seeds and write each as PNG and PDF "
        "(byte-identical on re-run), one progress line per figure on stderr, the written paths on "
        "stdout. The figures and their names are listed in figures/README.md (registry: "
        "figures.FIGURES).",
    )
    p.add_argument(
        "--out", type=out_dir_arg, default=None, metavar="DIR", help="output folder (default: figures/output)"
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="NAME",
        help="build only these figures (full name or its figN prefix, e.g. fig2)",
    )
    p.add_argument("--tiny", action="store_true", help="tiny instances, seconds per figure (for tests)")
    p.set_defaults(func=_cmd_figures)
