"""Benchmark of sweeps: instances per second, batched (``jax.vmap``) against one call per instance.

Two cases, each a set of random instances of one shape (fixed seeds):

* ``enum``: first-order Markov policy, V = 3, T = 6 (729 leaves), deadline harm, the enumeration
  engine;
* ``dp``: first-order Markov policy, V = 8, T = 1000, a 4-state automaton harm, the DP engine.

Both compute ``expected_harm``, ``equilibrium_kl`` and ``harm_information`` without the autodiff
reference. ``loop``: the sweep's per-instance function (``toysim._sweep.enumerate_one`` /
``dp_one``) jitted without vmap, one call per instance on device arrays. ``loop (exact)``: what
``toysim exact`` computes, one ``toysim.analyze`` (everything, autodiff included) or
``toysim.dp_analyze(..., autodiff=False)`` call per instance. ``batched``: the sweep's program
(``toysim._sweep.stack_instances`` and ``analyze_batch``: stacking, transfer, one compiled call,
fetch); ``program``: the same without the stacking (the chunk's arrays already built, as the
sweep builds the next chunk's while one computes): transfer, one compiled call, fetch. Times after
one compiling call, best of ``--repeat``. For each batch size the table gives instances/s, the
speed-up over the loop, and the memory estimate of a chunk (``toysim._memory``); the last line
says the largest chunk the available memory allows (where memory stops the batch). ``sweep``
rows time a whole ``toysim.sweep`` (instance generation, parsing and CSV included), compiled
beforehand, best of ``--repeat``: ``--instances`` enumeration instances (4,096 by default) with the
chunk size "auto", and ``max(8, --instances // 256)`` DP instances in chunks of 16.

Run: ``python benchmarks/bench_sweep.py [--quick] [--json out.json] [--enum-batches N ...]
[--dp-batches N ...] [--cases enum dp] [--sub-batch auto|whole|N]``; limit the cores with
``taskset -c 0,1``. ``--sub-batch`` overrides how many instances the enumeration analyses at once
within a chunk (docs/sweeps.md: on CPU the sweep's choice is a cache-sized power of two, on an
accelerator the whole chunk). On a GPU: ``benchmarks/gpu.sh``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import toysim  # noqa: E402
from toysim import _sweep  # noqa: E402
from toysim._memory import available_bytes  # noqa: E402

NAMES = ("expected_harm", "equilibrium_kl", "harm_information")
LOOP_N = {"enum": 64, "dp": 4}
CASES = {
    "enum": {
        "policy": {"kind": "markov"},
        "vocab_size": 3,
        "horizon": 6,
        "harm": {"kind": "deadline", "harmful_tokens": [1], "deadline": 3},
    },
    "dp": {
        "policy": {"kind": "markov"},
        "vocab_size": 8,
        "horizon": 1000,
        "harm": {
            "kind": "automaton",
            "start": 0,
            "transitions": np.random.default_rng(0).integers(0, 4, size=(4, 8)).tolist(),
            "final_harm": [0.0, 1.0, 0.25, 0.5],
        },
    },
}
ENGINE = {"enum": "enumerate", "dp": "dp"}


def spec_of(case: str, n: int, out: str) -> toysim.SweepSpec:
    return toysim.load_sweep_spec(
        {
            "family": CASES[case],
            "grid": {"seed": list(range(n)), "lambda": [1.5]},
            "quantities": list(NAMES),
            "engine": ENGINE[case],
            "chunk_size": 1,
            "output": out,
        }
    )


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run_case(case: str, batches: list[int], loop_n: int, repeat: int, folder: str) -> list[dict]:
    spec = spec_of(case, max(batches + [loop_n]), os.path.join(folder, f"{case}.csv"))
    points = _sweep.sweep_points(spec)
    n = max(batches + [loop_n])
    instances = [toysim.loads_instance(json.dumps(_sweep.sweep_instance(spec, p))) for p in points[:n]]
    shape = _sweep._shape_of(spec, instances[0])
    per_instance = _sweep.instance_bytes(shape, autodiff=False)

    # the loop: the sweep's own per-instance function, jitted without vmap, one call per instance
    inputs = _sweep.stack_instances(instances[:loop_n], shape)
    if case == "enum":  # (params, harm table, harm row, λ) -> (params, harm, λ) of one instance
        params, table, which, lam = inputs
        inputs = (params, table[which], lam)
    singles = [jax.tree_util.tree_map(lambda x, i=i: jnp.asarray(x[i]), inputs) for i in range(loop_n)]
    if case == "enum":
        one = jax.jit(_sweep.enumerate_one(instances[0].policy, NAMES, False))
        h = jnp.asarray(toysim.harm_values(instances[0].harm, shape.vocab_size, shape.horizon))
        full_args = [
            (i.policy, jax.tree_util.tree_map(jnp.asarray, i.params), h, jnp.float64(i.lam))
            for i in instances
        ]

        def full(a):  # toysim exact's computation: everything, with the autodiff reference
            return jax.block_until_ready(toysim.analyze(*a).expected_harm)
    else:
        one = jax.jit(_sweep.dp_one(shape.horizon, NAMES, False))
        full_args = [(i.policy, i.params, i.harm, float(i.lam)) for i in instances]

        def full(a):  # toysim exact's computation without the autodiff reference
            return jax.block_until_ready(toysim.dp_analyze(*a, autodiff=False).expected_harm)

    jax.block_until_ready(one(*singles[0]))  # compile
    full(full_args[0])
    loop_s = best(lambda: [jax.block_until_ready(one(*a)) for a in singles], repeat) / loop_n
    full_s = best(lambda: [full(a) for a in full_args[:loop_n]], repeat) / loop_n
    rows = [
        {"case": case, "mode": "loop", "batch": 1, "inst_per_s": 1 / loop_s, "speedup": 1.0},
        {
            "case": case,
            "mode": "loop (exact)",
            "batch": 1,
            "inst_per_s": 1 / full_s,
            "speedup": loop_s / full_s,
        },
    ]
    for b in batches:
        chunk = instances[:b]

        def batched(chunk=chunk):
            return _sweep.analyze_batch(_sweep.stack_instances(chunk, shape), shape, NAMES, False)

        batched()  # compile
        t = best(batched, repeat)
        stacked = _sweep.stack_instances(chunk, shape)

        def program(stacked=stacked):  # transfer, the compiled call and the fetch
            return _sweep._fetch(_sweep._dispatch(stacked, shape, NAMES, False))

        tp = best(program, repeat)
        for mode, seconds in (("batched", t), ("program", tp)):
            rows.append(
                {
                    "case": case,
                    "mode": mode,
                    "batch": b,
                    "inst_per_s": b / seconds,
                    "speedup": (b / seconds) * loop_s,
                    "chunk_estimate_bytes": b * per_instance,
                }
            )
    memory = _device_memory()
    rows.append(
        {
            "case": case,
            "mode": "memory limit",
            "per_instance_bytes": per_instance,
            "largest_chunk": int(memory // per_instance),
            "available_bytes": memory,
        }
    )
    return rows


def _device_memory() -> int:
    """The memory a chunk lives in: the accelerator's where JAX reports it, else the host's."""
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return available_bytes()


def run_sweep(case: str, n: int, chunk, folder: str, repeat: int) -> dict:
    """A whole toysim.sweep of n instances, best of ``repeat`` (its programs compiled by a first
    sweep of the same chunks, the lambda changed so that its table is another)."""
    base = {
        "family": CASES[case],
        "grid": {"seed": list(range(n)), "lambda": [1.5]},
        "quantities": list(NAMES),
        "engine": ENGINE[case],
        "chunk_size": chunk,
    }
    warm = {**base, "grid": {"seed": list(range(n)), "lambda": [2.5]}}
    toysim.sweep({**warm, "output": os.path.join(folder, f"warm_{case}.csv")}, progress=False)
    times = []
    for k in range(repeat):
        out = os.path.join(folder, f"sweep_{case}_{k}.csv")
        t0 = time.perf_counter()
        toysim.sweep({**base, "output": out}, progress=False)
        times.append(time.perf_counter() - t0)
    t = min(times)
    batch = _sweep.plan_sweep(toysim.load_sweep_spec({**base, "output": out})).chunk_size
    return {"case": case, "mode": "sweep", "batch": batch, "instances": n, "inst_per_s": n / t}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batch sizes")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--instances", type=int, default=4096, help="instances of the whole-sweep rows")
    parser.add_argument("--json", default=None)
    parser.add_argument("--enum-batches", type=int, nargs="+", help="batch sizes of the enumeration case")
    parser.add_argument("--dp-batches", type=int, nargs="+", help="batch sizes of the DP case")
    parser.add_argument("--cases", nargs="+", choices=("enum", "dp"), default=["enum", "dp"])
    parser.add_argument(
        "--sub-batch",
        default="auto",
        help="instances the enumeration analyses at once within a chunk: auto (the sweep's choice, "
        "toysim._sweep.sub_batch), whole (one jax.vmap over the chunk) or a number",
    )
    args = parser.parse_args()
    if args.sub_batch == "whole":
        _sweep.sub_batch = lambda per_instance, per_device: per_device
    elif args.sub_batch != "auto":
        size = int(args.sub_batch)
        _sweep.sub_batch = lambda per_instance, per_device: min(size, per_device)
    batches = {"enum": [1, 16, 64, 256] if args.quick else [1, 16, 64, 256, 1024, 4096], "dp": [1, 4, 16, 64]}
    if args.quick:
        batches["dp"] = [1, 4, 16]
    batches["enum"] = args.enum_batches or batches["enum"]
    batches["dp"] = args.dp_batches or batches["dp"]
    print(f"jax {jax.__version__}, {jax.local_device_count()} {jax.default_backend()} device(s)")
    print(f"{'case':<5} {'mode':<13} {'batch':>6} {'inst/s':>10} {'x loop':>8} {'chunk estimate':>15}")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        # each case's rows are printed, and the JSON rewritten, as soon as they are measured: a run
        # stopped by a time limit keeps what it measured
        for case in args.cases:
            _report(rows, run_case(case, batches[case], LOOP_N[case], args.repeat, folder), args.json)
        if "enum" in args.cases:
            _report(rows, [run_sweep("enum", args.instances, "auto", folder, args.repeat)], args.json)
        if "dp" in args.cases:
            sweep_dp = run_sweep("dp", max(8, args.instances // 256), 16, folder, args.repeat)
            _report(rows, [sweep_dp], args.json)


def _report(rows: list[dict], new: list[dict], path: str | None) -> None:
    for r in new:
        if r["mode"] == "memory limit":
            print(
                f"{r['case']:<5} {'memory limit':<13} {r['per_instance_bytes'] / 2**20:.3g} MiB an instance: "
                f"at most {r['largest_chunk']} a chunk in {r['available_bytes'] / 2**30:.1f} GiB"
            )
            continue
        est = r.get("chunk_estimate_bytes")
        print(
            f"{r['case']:<5} {r['mode']:<13} {r['batch']:>6} {r['inst_per_s']:>10.4g} "
            f"{r.get('speedup', float('nan')):>8.3g} {'' if est is None else f'{est / 2**20:.3g} MiB':>15}",
            flush=True,
        )
    rows += new
    if path:
        with open(path, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
