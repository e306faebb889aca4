"""``toysim deep``: recovery penalties and deep alignment on one instance (docs/theory.md §8-9)."""

from __future__ import annotations

from ._cli import uncertified_exit, write_json


def _tokens(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise ValueError(f"--recovery must be comma-separated token ids, got {text!r}") from None


def _dp_applies(instance, jailbroken) -> bool:
    from ._harms import AutomatonHarm
    from ._policies import MarkovPolicy

    def markov1(inst):
        return isinstance(inst.policy, MarkovPolicy) and inst.policy.order == 1

    return (
        markov1(instance)
        and isinstance(instance.harm, AutomatonHarm)
        and (jailbroken is None or markov1(jailbroken))
    )


def _cmd_deep(args) -> int:
    from ._instance import load
    from ._recovery import _check_weights, check_attack_setting
    from ._reports import deep_report, dp_deep_report

    # the settings' own ranges first, in seconds, before reading or computing anything
    _check_weights(args.mu, args.gamma)
    if args.delta is not None:
        check_attack_setting(args.delta, args.gamma)
    instance = load(args.instance)
    jailbroken = None
    if args.q == "harmful":
        q = "harmful"
    elif args.q.startswith("jailbroken:") and len(args.q) > len("jailbroken:"):
        q, jailbroken = "jailbroken", load(args.q[len("jailbroken:") :])
    else:
        raise ValueError(f"--q must be 'harmful' or 'jailbroken:FILE', got {args.q!r}")
    if args.steps < 1:
        raise ValueError(f"--steps must be an integer >= 1, got {args.steps}")
    engine = args.engine
    if engine == "auto":
        engine = "dp" if _dp_applies(instance, jailbroken) else "enumerate"
    common = dict(mu=args.mu, gamma=args.gamma, q=q, jailbroken=jailbroken, delta=args.delta)
    if engine == "dp":
        report = dp_deep_report(instance, _tokens(args.recovery), **common)
    else:
        from ._memory import check_fits

        check_fits(instance.policy.vocab_size, instance.policy.horizon)
        report = {
            "engine": "enumerate",
            **deep_report(instance, _tokens(args.recovery), steps=args.steps, **common),
        }
    write_json(report, args.compact)
    # the enumeration engine trains two optima: a run that cannot certify itself is exit code 1
    failed = [
        f"{name} optimum: {cert['reason']} after {cert['steps']} steps"
        for name, cert in report.get("certificates", {}).items()
        if not cert["converged"]
    ]
    return uncertified_exit(failed)


def register(sub) -> None:
    """Add the ``deep`` subcommand."""
    p = sub.add_parser(
        "deep",
        help="deep alignment with a recovery penalty (JSON report on stdout)",
        description="Per-position gradients with and without the recovery penalty, the robustness "
        "bound, the attack length and the prefilling-attack curves of base, standard-aligned and "
        "deep-aligned policies. The enumeration engine also trains the separable and joint optima "
        "and reports their Gibbs-form gap; the DP engine (first-order Markov policy, automaton "
        "harm, any horizon) reports the Gibbs-form policy's curve instead of a trained one.",
    )
    p.add_argument("instance", help="path to a toysim.instance/1 JSON file (its policy is π_0)")
    p.add_argument("--recovery", required=True, help="recovery tokens R, comma-separated (e.g. 0 or 0,2)")
    p.add_argument("--mu", type=float, default=1.0, help="recovery weight μ > 0 (default 1)")
    p.add_argument("--gamma", type=float, default=1.0, help="discount γ in (0, 1] (default 1)")
    p.add_argument("--q", default="harmful", help="adversarial prefixes: harmful | jailbroken:FILE")
    p.add_argument("--steps", type=int, default=300, help="L-BFGS steps per trained optimum (enumerate)")
    p.add_argument(
        "--engine",
        choices=("auto", "enumerate", "dp"),
        default="auto",
        help="auto (default): dp for a first-order Markov policy with an automaton harm, else enumerate",
    )
    p.add_argument("--delta", type=float, default=None, help="report t_attack(δ) for p_min < δ < 1")
    p.add_argument("--compact", action="store_true", help="print the JSON on one line")
    p.set_defaults(func=_cmd_deep)
