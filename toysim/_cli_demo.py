"""``toysim demo``: the classroom demo's figure for one setting of its sliders (docs/tutorials/demo.md)."""

from __future__ import annotations

import json
import os
import sys


def _cmd_demo(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from .teaching import _DEMO_T, classroom_demo, demo_curves

    if not 1 <= args.deadline <= _DEMO_T:
        raise ValueError(f"--deadline must be in 1..{_DEMO_T}, got {args.deadline}")
    curves = demo_curves(lam=args.lam, deadline=args.deadline, mu=args.mu, gamma=args.gamma)
    if args.out is not None:
        folder = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(folder):
            raise ValueError(f"--out: folder {folder} does not exist")
        fig = classroom_demo(
            widgets=False, lam=args.lam, deadline=args.deadline, mu=args.mu, gamma=args.gamma
        )
        fig.savefig(args.out, dpi=110)
    json.dump({name: [float(x) for x in values] for name, values in curves.items()}, fp=sys.stdout, indent=1)
    print()
    return 0


def register(sub) -> None:
    """Add the ``demo`` subcommand to the ``toysim`` command line."""
    p = sub.add_parser(
        "demo",
        help="the classroom demo's curves (JSON) and, with --out, its figure",
        description="Compute the classroom demo's curves (||G_t|| and its Fisher bound, D_t against "
        "lambda^2 I_t / 2, prefilling-attack success for the base, standard-aligned and deep policies) "
        "for one setting, print them as JSON and, with --out, draw the figure. The live version with "
        "sliders is toysim.teaching.classroom_demo() in Jupyter (pip install -e '.[demo]').",
    )
    p.add_argument("--lam", type=float, default=1.0, help="lambda > 0 of the standard alignment (default 1)")
    p.add_argument("--deadline", type=int, default=2, help="the harm's deadline k in 1..6 (default 2)")
    p.add_argument("--mu", type=float, default=2.0, help="mu > 0 of the recovery penalty (default 2)")
    p.add_argument(
        "--gamma", type=float, default=0.7, help="gamma in (0, 1] of the recovery penalty (default 0.7)"
    )
    p.add_argument("--out", default=None, metavar="FILE", help="write the figure here (PNG, PDF or SVG)")
    p.set_defaults(func=_cmd_demo)
