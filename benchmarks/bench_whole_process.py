"""Whole-process time of ``toysim exact``: what a user waits for, start-up and compilation included.

Two instances, the ones of the speed issue, written by this script with fixed seeds:

* ``enumerate``: first-order Markov policy, V = 4, T = 12 (1.7e7 leaves), a 4-state automaton harm
  (a run of harmful tokens), ``toysim exact --engine enumerate``;
* ``dp``: first-order Markov policy, V = 64, T = 10,000, an 8-state automaton harm,
  ``toysim exact`` (the DP engine).

Each is run as a fresh ``python -m toysim exact`` process in four settings:

* ``no cache``: ``TOYSIM_NO_JAX_CACHE=1`` (every program traced and compiled);
* ``cold``: an empty cache folder (``XDG_CACHE_HOME``), so the run compiles and stores;
* ``warm``: the same folder again (JAX's compilation cache and toysim's executable cache full);
* ``warm, jax cache only``: the warm folder with ``TOYSIM_NO_EXECUTABLE_CACHE=1``: what a warm run
  cost before the executable cache (tracing and lowering, then a cached compilation).

Also timed: ``python -c pass`` and ``python -c "import toysim"`` (start-up floor). Each time is the
wall clock of the whole process, best and median of ``--repeat`` runs. The issue's reference times
for straightforward numpy programs of the same quantities (6.9 s and 9.7 s whole-process, measured
by the issue's author on this 2-core machine; the programs are not in this repository) are the
targets' denominators: at most 0.5× and 0.25×.

Run: ``python benchmarks/bench_whole_process.py [--repeat 3] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISSUE_NUMPY_S = {"enumerate": 6.9, "dp": 9.7}
TARGET_RATIO = {"enumerate": 0.5, "dp": 0.25}


def _markov(rng, vocab):
    return {
        "kind": "markov",
        "initial_logits": rng.normal(size=vocab).round(6).tolist(),
        "transition_logits": rng.normal(size=(vocab, vocab)).round(6).tolist(),
    }


def instances() -> dict:
    rng = np.random.default_rng(0)
    v = 4  # run of harmful tokens (token 3): 0 -> 1 -> 2 -> 3 (absorbing); any other token resets
    run = [[min(s + 1, 3) if tok == v - 1 else (3 if s == 3 else 0) for tok in range(v)] for s in range(4)]
    enum = {
        "format": "toysim.instance/1",
        "vocab_size": v,
        "horizon": 12,
        "lambda": 1.0,
        "policy": _markov(rng, v),
        "harm": {"kind": "automaton", "start": 0, "transitions": run, "final_harm": [0.0, 0.0, 0.5, 1.0]},
    }
    v, s = 64, 8  # count harmful tokens (63) up to 6, state 7 absorbing and harmful
    count = [[min(q + 1, 6) if tok == v - 1 else q for tok in range(v)] for q in range(7)]
    count = [
        [7 if (q == 6 and tok == v - 1) else nxt for tok, nxt in enumerate(row)]
        for q, row in enumerate(count)
    ]
    count.append([7] * v)
    dp = {
        "format": "toysim.instance/1",
        "vocab_size": v,
        "horizon": 10_000,
        "lambda": 1.0,
        "policy": _markov(rng, v),
        "harm": {
            "kind": "automaton",
            "start": 0,
            "transitions": count,
            "final_harm": [0.0] * (s - 1) + [1.0],
        },
    }
    return {"enumerate": enum, "dp": dp}


def _run(argv, env, cwd) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    work = tempfile.mkdtemp(prefix="toysim-bench-")
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TOYSIM_NO_JAX_CACHE", "TOYSIM_NO_EXECUTABLE_CACHE", "JAX_COMPILATION_CACHE_DIR")
    }
    base["PYTHONPATH"] = ROOT + os.pathsep + base.get("PYTHONPATH", "")
    base["JAX_PLATFORMS"] = "cpu"
    results: dict = {}
    try:
        floor = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "import toysim": [sys.executable, "-c", "import toysim"],
        }
        for name, cmd in floor.items():
            times = [_run(cmd, base, work) for _ in range(args.repeat)]
            results[name] = {"best_s": min(times), "median_s": statistics.median(times)}
            print(f"{name:<16} best {min(times):6.2f} s   median {statistics.median(times):6.2f} s")
        for name, inst in instances().items():
            path = os.path.join(work, f"{name}.json")
            with open(path, "w") as f:
                json.dump(inst, f)
            cmd = [sys.executable, "-m", "toysim", "exact", path, "--compact", "--engine", name]
            cache = os.path.join(work, f"cache-{name}")
            env_cache = {**base, "XDG_CACHE_HOME": cache}
            row = {}
            row["no cache"] = [
                _run(cmd, {**base, "TOYSIM_NO_JAX_CACHE": "1"}, work) for _ in range(args.repeat)
            ]
            row["cold"] = [_run(cmd, env_cache, work)]
            row["warm"] = [_run(cmd, env_cache, work) for _ in range(args.repeat)]
            jax_only = {**env_cache, "TOYSIM_NO_EXECUTABLE_CACHE": "1"}
            row["warm, jax cache only"] = [_run(cmd, jax_only, work) for _ in range(args.repeat)]
            ref = ISSUE_NUMPY_S[name]
            print(f"\n{name}: issue's numpy reference {ref} s, target <= {TARGET_RATIO[name]} x")
            results[name] = {}
            for setting, times in row.items():
                best, med = min(times), statistics.median(times)
                results[name][setting] = {
                    "times_s": times,
                    "best_s": best,
                    "median_s": med,
                    "ratio": med / ref,
                }
                print(
                    f"  {setting:<22} best {best:6.2f} s   median {med:6.2f} s   median/numpy {med / ref:5.2f}"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
