"""Speed of exact alignment training, and exact versus sampled gradients (issue 4, docs/theory.md §7, §10).

Prints two tables:

* steps/second of exact training (the exact ``L = λE[h] + KL`` of ``toysim._training`` through the
  shared optax driver) for tabular, first-order Markov and MLP policies at two sizes, with L-BFGS
  and SGD; compile time excluded (timed between steps 10 and S, see ``_steps_per_second``);
* for each family at the small size, the exact ``G_t`` (time, float64 error against autodiff)
  against the REINFORCE estimate with the leave-one-out baseline: RMS error at N samples and
  extrapolated to the exact engine's wall time.

Usage: ``python benchmarks/bench_training.py [--steps S] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import time

SIZES = [(2, 4), (3, 6)]
FAMILIES = ("tabular", "markov1", "mlp")


def _policy(kind, v, T):
    import toysim

    if kind == "tabular":
        return toysim.TabularPolicy(v, T)
    if kind == "markov1":
        return toysim.MarkovPolicy(v, T, 1)
    return toysim.MLPPolicy(v, T, window=2, hidden=8)


def _steps_per_second(policy, params, h, optimizer, steps, every=10):
    """Steps/s of the exact objective through the shared driver, compile excluded.

    A callback stamps the time at every ``every``-th step; the rate is taken between the first
    stamp after compilation (step ``every``) and the last, so it includes one loss evaluation per
    ``every`` steps (the driver's recording) and nothing else.
    """
    from toysim import alignment_loss, forward
    from toysim._optimize import minimize

    base = forward(policy, params)
    stamps = {}
    start = time.perf_counter()
    minimize(
        lambda th: alignment_loss(policy, th, base, h, 1.0),
        params,
        optimizer=optimizer,
        steps=steps,
        record_every=every,
        callback=lambda i, _: stamps.setdefault(i, time.perf_counter()),
        progress=False,
    )
    first = stamps[every] - start
    return (steps - every) / (stamps[steps] - stamps[every]), first


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per run")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    import toysim
    from toysim._sampling import sampling_versus_exact

    training, sampling = [], []
    print(f"{'family':8} {'V':>2} {'T':>2} {'leaves':>7} {'optimizer':>9} {'steps/s':>9} {'first 10 s':>11}")
    for v, T in SIZES:
        h = jnp.asarray(toysim.harm_values(toysim.deadline_harm(v, [v - 1], max(1, T // 2)), v, T))
        for kind in FAMILIES:
            policy = _policy(kind, v, T)
            params = policy.init(jax.random.key(0))
            for opt in ("lbfgs", "sgd"):
                rate, t1 = _steps_per_second(policy, params, h, opt, args.steps)
                row = {
                    "family": kind,
                    "V": v,
                    "T": T,
                    "optimizer": opt,
                    "steps_per_s": rate,
                    "first_step_s": t1,
                }
                training.append(row)
                print(f"{kind:8} {v:>2} {T:>2} {v**T:>7} {opt:>9} {rate:>9.1f} {t1:>11.2f}")
    print()
    print(
        f"{'family':8} {'t_exact s':>10} {'exact err':>9} {'N':>6} {'t_N s':>8} "
        f"{'rms(N) no-bl':>12} {'rms(N) LOO':>10} {'rms@t_exact':>11}  (norms summed over positions)"
    )
    v, T = SIZES[0]
    h = jnp.asarray(toysim.harm_values(toysim.deadline_harm(v, [v - 1], max(1, T // 2)), v, T))
    for kind in FAMILIES:
        policy = _policy(kind, v, T)
        params = policy.init(jax.random.key(0))
        rep = sampling_versus_exact(policy, params, h, (10, 100, 1000), seed=0, repeats=10, timings=True)
        rep["family"] = kind
        sampling.append(rep)
        tim = rep["timings"]
        for row, trow in zip(rep["sampled"], tim["sampled"]):
            print(
                f"{kind:8} {tim['exact_wall_time_s']:>10.2e} {rep['exact_max_abs_error']:>9.1e} "
                f"{row['samples']:>6} {trow['wall_time_baseline_s']:>8.2e} "
                f"{sum(row['rms_error_by_position']):>12.3e} {sum(row['rms_error_baseline_by_position']):>10.3e} "
                f"{sum(tim['sampled_rms_at_exact_wall_time_by_position']):>11.3e}"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"training": training, "sampling": sampling}, fh, indent=1, allow_nan=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
