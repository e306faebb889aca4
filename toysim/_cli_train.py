"""``toysim train`` and ``toysim sample-vs-exact`` (docs/theory.md §7 and 10).

``toysim train INSTANCE.json`` trains the instance's policy family, starting from its parameters
(``π_0``), on the exact ``L = λ E[h] + KL(π_θ ‖ π_0)`` and prints the result against the closed-form
equilibrium, with the run's convergence certificate; a run that does not converge prints the JSON,
one line on stderr, and exits 1 (2 stays for bad input). ``toysim sample-vs-exact INSTANCE.json`` compares the REINFORCE estimate of every
``G_t`` with the exact value as the number of samples grows.
"""

from __future__ import annotations

import math
import sys

from ._cli import seed_arg, write_json


def _positive_lambda(value: float | None, default: float) -> float:
    lam = default if value is None else value
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"--lambda must be a finite number > 0, got {lam}")
    return lam


_MAX_SAMPLES = 2**40


def _sample_sizes(text: str) -> tuple[int, ...]:
    sizes = []
    for part in text.split(","):
        try:
            n = int(part.strip())
        except ValueError:
            raise ValueError(
                f"--samples must be a comma-separated list of integers >= 2, got {text!r}"
            ) from None
        if n < 2:
            raise ValueError(f"--samples must hold integers >= 2 (leave-one-out baseline), got {n}")
        if n > _MAX_SAMPLES:  # far beyond any memory; keeps the estimate's arithmetic in range
            shown = part.strip() if len(part.strip()) <= 30 else f"a {len(part.strip())}-digit number"
            raise ValueError(f"--samples must hold integers <= 2**40, got {shown}")
        sizes.append(n)
    return tuple(sizes)


def _cmd_train(args) -> int:
    import jax.numpy as jnp

    from ._harms import harm_values
    from ._instance import load
    from ._memory import check_fits
    from ._reports import training_report
    from ._training import train_alignment

    if args.steps < 1:
        raise ValueError(f"--steps must be an integer >= 1, got {args.steps}")
    if args.record_every < 0:
        raise ValueError(f"--record-every must be an integer >= 0, got {args.record_every}")
    if args.learning_rate is not None and not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise ValueError(f"--learning-rate must be a finite number > 0, got {args.learning_rate}")
    if not (math.isfinite(args.tol) and args.tol > 0):
        raise ValueError(f"--tol must be a finite number > 0, got {args.tol}")
    instance = load(args.instance)
    lam = _positive_lambda(args.lam, instance.lam)
    policy = instance.policy
    check_fits(policy.vocab_size, policy.horizon)
    h = jnp.asarray(harm_values(instance.harm, policy.vocab_size, policy.horizon))
    result = train_alignment(
        policy,
        None,
        instance.params,
        h,
        lam,
        optimizer=args.optimizer,
        steps=args.steps,
        learning_rate=args.learning_rate,
        record_every=args.record_every,
        certify_tol=args.tol,
    )
    report = training_report(policy, instance.params, h, lam, result)
    report = {"optimizer": args.optimizer, "steps": args.steps, **report}
    write_json(report, args.compact)
    if not result.certificate.converged:
        print(f"toysim: {result.certificate.message()}", file=sys.stderr)
        return 1
    return 0


def _cmd_sample_vs_exact(args) -> int:
    import jax.numpy as jnp

    from ._harms import harm_values
    from ._instance import load
    from ._memory import check_fits, check_samples_fit
    from ._sampling import sampling_versus_exact

    samples = _sample_sizes(args.samples)
    if args.repeats < 1:
        raise ValueError(f"--repeats must be an integer >= 1, got {args.repeats}")
    if args.seed < 0:
        raise ValueError(f"--seed must be an integer >= 0, got {args.seed}")
    instance = load(args.instance)
    policy = instance.policy
    check_fits(policy.vocab_size, policy.horizon)
    check_samples_fit(policy.vocab_size, policy.horizon, max(samples))
    h = jnp.asarray(harm_values(instance.harm, policy.vocab_size, policy.horizon))
    report = sampling_versus_exact(
        policy, instance.params, h, samples, seed=args.seed, repeats=args.repeats, timings=args.timings
    )
    write_json(report, args.compact)
    return 0


def register(sub) -> None:
    """Add ``train`` and ``sample-vs-exact`` to the ``toysim`` subcommands."""
    p = sub.add_parser(
        "train",
        help="exact KL-regularised training of an instance's policy (JSON on stdout)",
        description="Minimise λE[h] + KL(π_θ‖π_0) exactly, starting from the instance's policy π_0, "
        "and compare with the closed-form equilibrium π* ∝ π_0 e^{−λh} (docs/theory.md §7). Exit code 1 "
        "(JSON still printed, one line on stderr) when the run does not converge.",
    )
    p.add_argument("instance", help="path to a toysim.instance/1 JSON file")
    p.add_argument(
        "--optimizer",
        default="auto",
        choices=["auto", "newton", "lbfgs", "adam", "sgd"],
        help="auto (default): damped Newton on the explicit Hessian up to 2000 parameters, else "
        "L-BFGS; or an optax optimizer",
    )
    p.add_argument("--steps", type=int, default=200, help="maximal optimizer steps (default 200)")
    p.add_argument(
        "--tol",
        type=float,
        default=1e-8,
        help="converged means ‖∇L‖ <= TOL with positive curvature off the gauge (default 1e-8); "
        "otherwise exit code 1",
    )
    p.add_argument("--learning-rate", type=float, default=None, help="step size (default: optimizer's)")
    p.add_argument("--record-every", type=int, default=0, help="record every K steps (0: first and last)")
    p.add_argument("--lambda", dest="lam", type=float, default=None, help="override the instance's λ")
    p.add_argument("--compact", action="store_true", help="print the JSON on one line")
    p.set_defaults(func=_cmd_train)

    q = sub.add_parser(
        "sample-vs-exact",
        help="REINFORCE estimates of G_t against the exact values (JSON on stdout)",
        description="Error of the sampled (REINFORCE) estimate of every G_t, with and without a "
        "leave-one-out baseline, against the exact engine, as the sample size grows (docs/theory.md §10).",
    )
    q.add_argument("instance", help="path to a toysim.instance/1 JSON file")
    q.add_argument("--samples", default="10,100,1000", help="comma-separated sample sizes, each >= 2")
    q.add_argument("--seed", type=seed_arg, default=0, help="seed of the jax.random keys, in [0, 2**63 - 1]")
    q.add_argument("--repeats", type=int, default=20, help="estimates per sample size")
    q.add_argument(
        "--timings",
        action="store_true",
        help="also measure wall times (under the key 'timings'; off: reruns are byte-identical)",
    )
    q.add_argument("--compact", action="store_true", help="print the JSON on one line")
    q.set_defaults(func=_cmd_sample_vs_exact)
