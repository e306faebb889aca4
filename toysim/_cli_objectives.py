"""``toysim objectives``: alignment methods side by side on one instance (docs/theory.md §11)."""

from __future__ import annotations

import json
import sys

from ._cli import uncertified_exit, write_json


def _numbers(text: str, flag: str, kind=float) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated numbers, got {text!r}") from None


def _integer(text: str, flag: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{flag} must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise ValueError(f"{flag} must be an integer >= 1, got {value}")
    return value


def _sft_data(path: str):
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read --sft-data file {path!r}: {err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(
            f"--sft-data file {path!r} is not valid JSON: {err.msg} (line {err.lineno})"
        ) from None
    if isinstance(data, dict):
        data = data.get("weights")
    if not isinstance(data, list) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in data
    ):
        raise ValueError(f'--sft-data file {path!r} must hold a list of numbers (or {{"weights": [...]}})')
    return data


def _cmd_objectives(args) -> int:
    from ._compare import MethodSettings, compare_methods
    from ._instance import load
    from ._reports import objectives_report, objectives_table

    only = None if args.only is None else [m.strip() for m in args.only.split(",") if m.strip()]
    settings = MethodSettings(
        beta=args.beta,
        beta_r=args.beta_r,
        n=_integer(args.n, "--n"),
        threshold=args.threshold,
        sft_kl=args.sft_kl,
        sft_data=None if args.sft_data is None else _sft_data(args.sft_data),
        token_betas=None if args.token_betas is None else _numbers(args.token_betas, "--token-betas"),
        recovery=None if args.recovery is None else _numbers(args.recovery, "--recovery", int),
        mu=args.mu,
        gamma=args.gamma,
        steps=_integer(args.steps, "--steps"),
    )
    if settings.recovery is not None and not settings.recovery:
        raise ValueError("--recovery must name at least one token")
    instance = load(args.instance)
    comparison = compare_methods(instance, only, settings, engine=args.engine)
    report = objectives_report(comparison, instance)
    table = args.table or (sys.stdout.isatty() and not args.json)
    if table:
        print(objectives_table(report))
    else:
        write_json(report, args.compact)
    failed = [
        f"{where} {name}: {m['certificate'].get('reason', 'not converged')}"
        for where in ("methods", "in_family")
        for name, m in report[where].items()
        if m["certificate"].get("optimum") != "closed form" and not m["certificate"].get("converged")
    ]
    return uncertified_exit(failed)


def register(sub) -> None:
    """Add the ``objectives`` subcommand."""
    p = sub.add_parser(
        "objectives",
        help="alignment methods side by side: KL profile, harm, attack curve, depth (JSON or table)",
        description="The exact optimum of each alignment method (KL-regularised RL, DPO, IPO, SFT, "
        "rejection sampling, best-of-N, a token-wise KL constraint, data augmentation, the recovery "
        "penalty) on one instance whose policy is pi_0: E[h], KL and its profile D_t, the "
        "prefilling-attack curve A(k) and the depth (with --recovery), and the gap to the KL-harm "
        "frontier. Closed forms where they exist (the reweightings also by DP at any horizon), "
        "else certified training; non-tabular instances are also trained in their own family. "
        "JSON on stdout, or a table on a terminal.",
    )
    p.add_argument("instance", help="path to a toysim.instance/1 JSON file (its policy is pi_0)")
    p.add_argument("--only", default=None, help="comma-separated methods (default: all)")
    p.add_argument("--n", default="4", help="best-of-N's N, an integer >= 1 (default 4)")
    p.add_argument("--beta", type=float, default=1.0, help="DPO/IPO temperature beta > 0 (default 1)")
    p.add_argument(
        "--beta-r",
        type=float,
        default=None,
        help="Bradley-Terry strength of the harm preferences (default lambda*beta)",
    )
    p.add_argument("--threshold", type=float, default=0.0, help="harmless means h <= threshold (default 0)")
    p.add_argument("--sft-kl", type=float, default=0.0, help="SFT's KL weight alpha >= 0 (default 0)")
    p.add_argument("--sft-data", default=None, help="JSON file: SFT's data distribution, V**T weights")
    p.add_argument(
        "--token-betas", default=None, help="beta_1..beta_T of the token-wise constraint (default 1s)"
    )
    p.add_argument(
        "--recovery", default=None, help="recovery tokens R, comma-separated (attack curve, depth)"
    )
    p.add_argument("--mu", type=float, default=1.0, help="recovery weight mu > 0 (default 1)")
    p.add_argument("--gamma", type=float, default=1.0, help="discount gamma in (0, 1] (default 1)")
    p.add_argument("--steps", default="200", help="training steps per trained optimum (default 200)")
    p.add_argument("--engine", default="auto", choices=["auto", "enumerate", "dp"], help="exact engine")
    p.add_argument("--compact", action="store_true", help="print the JSON on one line")
    p.add_argument("--table", action="store_true", help="print a table (default on a terminal)")
    p.add_argument("--json", action="store_true", help="print JSON even on a terminal")
    p.set_defaults(func=_cmd_objectives)
