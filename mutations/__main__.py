"""``python -m mutations``: plant each catalogued bug in a scratch copy and run ``toysim check``."""

from __future__ import annotations

import argparse
import sys
import time

from .catalog import MUTANTS
from .runner import run_mutant, table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mutations",
        description="Plant realistic bugs one at a time in a scratch copy of the project and run the "
        "theorem checks of `toysim check` there (each mutant's likely checks first, stopping at the "
        "first failing theorem). Exit 0 if every mutant run was killed, 1 otherwise.",
    )
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", nargs="+", action="extend", metavar="NAME", help="run only these mutants")
    parser.add_argument(
        "--checks", nargs="+", action="extend", metavar="CHECK", help="run only these checks (default: all)"
    )
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed of the checks")
    parser.add_argument("--profile", default="ci", choices=["ci", "thorough"])
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per mutant")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folders")
    parser.add_argument(
        "--control", action="store_true", help="first run the checks on the unmutated copy (must all hold)"
    )
    args = parser.parse_args(argv)

    by_name = {m.name: m for m in MUTANTS}
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:36s} {m.file:24s} {m.description}")
        return 0
    unknown = [n for n in args.only or [] if n not in by_name]
    if unknown:
        print(f"error: unknown mutant(s): {', '.join(unknown)} (see --list)", file=sys.stderr)
        return 2
    chosen = [by_name[n] for n in args.only] if args.only else list(MUTANTS)
    if args.control:
        chosen = [None] + chosen
    outcomes = []
    start = time.perf_counter()
    for i, mutant in enumerate(chosen, start=1):
        o = run_mutant(
            mutant,
            checks=tuple(args.checks or ()),
            seed=args.seed,
            profile=args.profile,
            timeout=args.timeout,
            keep=args.keep,
        )
        outcomes.append(o)
        state = f"killed by {o.check}" if o.killed else "SURVIVED"
        print(
            f"[{i}/{len(chosen)}] {o.mutant.name}: {state} ({o.seconds:.0f} s) {o.verdict or ''}",
            file=sys.stderr,
            flush=True,
        )
    print(table(outcomes))
    control = [o for o in outcomes if o.mutant.name == "(control)"]
    mutants = [o for o in outcomes if o.mutant.name != "(control)"]
    killed = sum(o.killed for o in mutants)
    print(f"{killed}/{len(mutants)} mutants killed in {time.perf_counter() - start:.0f} s")
    if control and control[0].killed:
        print(f"CONTROL FAILED: the unmutated copy fails {control[0].check}: {control[0].verdict}")
        return 1
    return 0 if killed == len(mutants) else 1


if __name__ == "__main__":
    sys.exit(main())
