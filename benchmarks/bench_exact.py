"""Speed and memory of the exact enumeration engine (issue: foundation).

For tabular and Markov policies at several sizes up to V**T ≈ 1.7e7 leaves, prints:

* leaves/s of the martingale and every ``G_t`` in covariance form (forward + backward + VJPs),
* leaves/s of the full ``toysim exact`` analysis (``toysim.analyze``: also autodiff references,
  horizons, Fisher bound and the tilt),
* the time of the closed-form ``G_t`` (all positions) against one ``jax.grad`` of ``E[h]``,
* peak resident memory per leaf of the full analysis, measured in a fresh process,
* the same quantities (martingale, ``I_t``, tabular ``G_t``) in straightforward numpy.

Compile time is excluded (one warm-up call); each timing is the best of ``--repeats`` runs.
Usage: ``python benchmarks/bench_exact.py [--quick] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

SIZES = [(2, 16), (2, 20), (2, 24), (4, 12), (16, 6)]
QUICK_SIZES = [(2, 12), (4, 6)]


def _best(fn, repeats):
    import jax

    jax.block_until_ready(fn())  # compile / warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def _setup(kind, v, t):
    import jax
    import jax.numpy as jnp

    import toysim

    policy = toysim.TabularPolicy(v, t) if kind == "tabular" else toysim.MarkovPolicy(v, t)
    params = policy.init(jax.random.key(0))
    h = jnp.asarray(toysim.harm_values(toysim.graded_harm(v, t, [v - 1]), v, t))
    return policy, params, h


def measure_speed(kind, v, t, repeats):
    """Timings in this process (no memory measurement)."""
    import functools

    import jax

    import toysim
    from toysim._gradient import per_position

    policy, params, h = _setup(kind, v, t)

    @functools.partial(jax.jit, static_argnums=0)
    def closed_form(policy, params, h):
        levels = toysim.forward(policy, params)
        mart = toysim.harm_martingale(levels, h)
        weights = toysim.covariance_weights(levels, mart)
        return toysim.harm_information(levels, mart), per_position(policy, params, weights)

    grad = jax.jit(toysim.autodiff_gradient, static_argnums=0)
    n = v**t
    t_closed = _best(lambda: closed_form(policy, params, h), repeats)
    t_grad = _best(lambda: grad(policy, params, h), repeats)
    t_full = _best(lambda: toysim.analyze(policy, params, h, 1.0), repeats)
    return {
        "closed_form_s": t_closed,
        "jax_grad_s": t_grad,
        "full_analysis_s": t_full,
        "closed_form_leaves_per_s": n / t_closed,
        "full_leaves_per_s": n / t_full,
    }


def numpy_reference(v, t, repeats):
    """Martingale, I_t and tabular G_t in plain numpy (same algorithm, no JAX)."""
    import numpy as np

    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(v**s, v)) for s in range(t)]
    h = np.asarray(__import__("toysim").harm_values(__import__("toysim").graded_harm(v, t, [v - 1]), v, t))

    def run():
        cond = []
        for z in logits:
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            cond.append(e / e.sum(axis=1, keepdims=True))
        prefix = [np.ones(1)]
        for c in cond:
            prefix.append((prefix[-1][:, None] * c).reshape(-1))
        H = [h]
        for c in reversed(cond):
            H.append((c * H[-1].reshape(c.shape)).sum(axis=1))
        H = H[::-1]
        info, grads = [], []
        for s in range(1, t + 1):
            delta = H[s].reshape(-1, v) - H[s - 1][:, None]
            w = prefix[s].reshape(-1, v) * delta
            grads.append(w)
            info.append(float((prefix[s].reshape(-1, v) * delta**2).sum()))
        return info, grads

    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _child_memory(kind, v, t):
    """Run in a fresh process: peak RSS before and after the full analysis."""
    code = f"""
import resource, jax
jax.config.update("jax_enable_x64", True)
import sys; sys.path.insert(0, {repr(sys.path[0])})
from bench_exact import _setup
import toysim
policy, params, h = _setup({kind!r}, {v}, {t})
jax.block_until_ready((params, h))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
jax.block_until_ready(toysim.analyze(policy, params, h, 1.0))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before * 1024, after * 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = (int(x) for x in out.stdout.split())
    return before, after


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-process memory runs")
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    rows = []
    for v, t in QUICK_SIZES if args.quick else SIZES:
        n = v**t
        t_np = numpy_reference(v, t, args.repeats)
        for kind in ("tabular", "markov"):
            row = {"policy": kind, "V": v, "T": t, "leaves": n, **measure_speed(kind, v, t, args.repeats)}
            row["numpy_closed_form_s"] = t_np
            row["numpy_leaves_per_s"] = n / t_np
            if not args.no_memory:
                before, after = _child_memory(kind, v, t)
                # whole-process peak (JAX runtime and compiler included) over leaves: meaningful
                # at the largest sizes, where the arrays dominate
                row["peak_bytes_per_leaf"] = after / n
                row["setup_peak_bytes_per_leaf"] = before / n
            rows.append(row)
            print(
                f"{kind:8s} V={v:<3d} T={t:<3d} leaves={n:>10.3g}  "
                f"G_t+H: {row['closed_form_leaves_per_s']:9.3g}/s  full: {row['full_leaves_per_s']:9.3g}/s  "
                f"closed {row['closed_form_s'] * 1e3:8.1f} ms vs jax.grad {row['jax_grad_s'] * 1e3:8.1f} ms  "
                f"numpy {row['numpy_leaves_per_s']:9.3g}/s  "
                + (
                    f"peak {row['peak_bytes_per_leaf']:7.1f} B/leaf (inputs+runtime {row['setup_peak_bytes_per_leaf']:7.1f})"
                    if "peak_bytes_per_leaf" in row
                    else ""
                ),
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": str(jax.devices()[0]), "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
