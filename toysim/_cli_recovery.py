"""``toysim deep``: recovery penalties and deep alignment on one instance (THEORY.md §8-9)."""

from __future__ import annotations

from ._cli import write_json


def _tokens(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise ValueError(f"--recovery must be comma-separated token ids, got {text!r}") from None


def _cmd_deep(args) -> int:
    from ._instance import load
    from ._recovery import deep_report

    instance = load(args.instance)
    jailbroken = None
    if args.q == "harmful":
        q = "harmful"
    elif args.q.startswith("jailbroken:") and len(args.q) > len("jailbroken:"):
        q, jailbroken = "jailbroken", load(args.q[len("jailbroken:") :])
    else:
        raise ValueError(f"--q must be 'harmful' or 'jailbroken:FILE', got {args.q!r}")
    report = deep_report(
        instance,
        _tokens(args.recovery),
        mu=args.mu,
        gamma=args.gamma,
        q=q,
        jailbroken=jailbroken,
        steps=args.steps,
        delta=args.delta,
    )
    write_json(report, args.compact)
    return 0


def register(sub) -> None:
    """Add the ``deep`` subcommand."""
    p = sub.add_parser(
        "deep",
        help="deep alignment with a recovery penalty (JSON report on stdout)",
        description="Per-position gradients with and without the recovery penalty, the Gibbs-form gap "
        "of the separable and joint optima, the robustness bound, the attack length and the "
        "prefilling-attack curves of base, standard-aligned and deep-aligned policies.",
    )
    p.add_argument("instance", help="path to a toysim.instance/1 JSON file (its policy is π_0)")
    p.add_argument("--recovery", required=True, help="recovery tokens R, comma-separated (e.g. 0 or 0,2)")
    p.add_argument("--mu", type=float, default=1.0, help="recovery weight μ > 0 (default 1)")
    p.add_argument("--gamma", type=float, default=1.0, help="discount γ in (0, 1] (default 1)")
    p.add_argument("--q", default="harmful", help="adversarial prefixes: harmful | jailbroken:FILE")
    p.add_argument("--steps", type=int, default=300, help="L-BFGS steps per trained optimum")
    p.add_argument("--delta", type=float, default=None, help="report t_attack(δ) for p_min < δ < 1")
    p.add_argument("--compact", action="store_true", help="print the JSON on one line")
    p.set_defaults(func=_cmd_deep)
