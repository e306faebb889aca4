"""Speed of ``toysim objectives`` (issue 14, docs/theory.md §11).

Prints two tables:

* the whole ``toysim objectives`` computation (every method, ``--recovery 0``) on V = 3, T = 6 for a
  tabular, a first-order Markov and an MLP ``π_0`` (deadline harm), each in a fresh process with an
  empty compilation cache (cold) and then again with the cache it filled (warm); wall seconds of
  the whole process;
* the closed-form reweightings (tilt, DPO, IPO, rejection sampling, best-of-N) on Markov ×
  automaton instances by DP at T = 1,000 and 10,000: one call of :func:`toysim.compare_methods`
  (which includes the frontier bisection for each method), compile excluded (second call).

Usage: ``python benchmarks/bench_objectives.py [--families tabular,markov,mlp] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

V, T = 3, 6


SCRIPT = r"""
import sys, jax
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_compilation_cache_dir", sys.argv[2])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
import toysim
V, T, family = {V}, {T}, sys.argv[1]
policy = {{
    "tabular": toysim.TabularPolicy(V, T),
    "markov": toysim.MarkovPolicy(V, T, 1),
    "mlp": toysim.MLPPolicy(V, T, window=2, hidden=4),
}}[family]
inst = toysim.Instance(policy, policy.init(jax.random.key(0)), toysim.deadline_harm(V, [2], 2), 1.0)
out = toysim.compare_methods(inst, settings=toysim.MethodSettings(recovery=[0]))
toysim._reports.objectives_report(out, inst)
"""


def _whole_process(family: str, cache: str) -> float:
    """One process: import, build the instance, every method, the report (what `toysim objectives`
    does; MLP policies have no instance file, so the library is called directly)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", SCRIPT.format(V=V, T=T), family, cache], check=True)
    return time.perf_counter() - start


def _dp_rate(horizon: int) -> tuple[float, float]:
    import jax

    jax.config.update("jax_enable_x64", True)
    import toysim

    policy = toysim.MarkovPolicy(4, horizon, 1)
    inst = toysim.Instance(policy, policy.init(jax.random.key(1)), toysim.deadline_harm(4, [3], 5), 1.0)
    settings = toysim.MethodSettings(recovery=[0], n=8)
    only = ["tilt", "dpo", "ipo", "rejection_sampling", "best_of_n"]
    start = time.perf_counter()
    toysim.compare_methods(inst, only=only, settings=settings, engine="dp")
    first = time.perf_counter() - start
    start = time.perf_counter()
    toysim.compare_methods(inst, only=only, settings=settings, engine="dp")
    return first, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="tabular,markov,mlp")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    out = {"whole_process": {}, "dp": {}}
    with tempfile.TemporaryDirectory() as folder:
        print(f"toysim objectives, every method, V = {V}, T = {T} (whole process, seconds)")
        print(f"{'family':<10} {'cold':>8} {'warm':>8}")
        for family in args.families.split(","):
            cache = os.path.join(folder, f"cache-{family}")
            cold, warm = _whole_process(family, cache), _whole_process(family, cache)
            out["whole_process"][family] = {"cold_s": cold, "warm_s": warm}
            print(f"{family:<10} {cold:>8.1f} {warm:>8.1f}", flush=True)
    print("\nclosed-form reweightings by DP (5 methods + frontier bisection), V = 4, S = 7 (seconds)")
    print(f"{'T':>7} {'first call':>11} {'compiled':>9}")
    for horizon in (1000, 10000):
        first, warm = _dp_rate(horizon)
        out["dp"][horizon] = {"first_s": first, "compiled_s": warm}
        print(f"{horizon:>7} {first:>11.2f} {warm:>9.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
