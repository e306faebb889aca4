"""``toysim check`` and ``toysim reproduce``: run the theorem checks, regenerate the figures.

``toysim check`` runs every check of ``proofs_check`` (see ``proofs_check/_runner.py``) and prints
a table: result, section, instances tried, instances that exercised the statement (for example
``k < T`` for a statement about positions past the horizon ``k``), worst residual, tolerance,
verdict. Exit code 0 only if
every theorem holds and was exercised by at least one input (a theorem whose inputs were all
vacuous is reported ``VACUOUS`` and counts as failing; findings are measurements and never fail);
1 otherwise; 2 on bad input.
``toysim reproduce`` runs the same checks, then ``figures.make_all(out_dir)``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from ._cli import enable_compilation_cache as _enable_compilation_cache  # also used by mutations/runner.py
from ._cli import out_dir_arg, seed_arg


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return "0" if x == 0 else f"{x:.1e}"


def _table(results) -> str:
    """The report table, one row per check."""
    header = ("result", "paper", "section", "tried", "exercised", "worst residual", "tolerance", "verdict")
    rows = [header]
    for r in results:
        chk = r.check
        rows.append(
            (
                r.name,
                chk.result if chk else "-",
                chk.section if chk else "-",
                str(r.tried),
                f"{r.exercised}/{r.tried}" if chk else "-",
                _fmt(r.worst),
                _fmt(chk.tolerance) if chk and chk.kind == "theorem" else "-",
                r.verdict,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths)]
        lines.append("  ".join(cells + [row[-1]]))
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _progress(i: int, n: int, result) -> None:
    """One line per finished check on stderr; on a terminal also the check now running."""
    tty = sys.stderr.isatty()
    if isinstance(result, str):  # about to start
        if tty:
            print(f"[{i}/{n}] running {result} ...", end="\r", file=sys.stderr, flush=True)
        return
    if tty:
        print("\x1b[2K", end="", file=sys.stderr)  # clear the "running" line
    where = f"  -> {result.counterexample}" if result.counterexample else ""
    print(
        f"[{i:>{len(str(n))}}/{n}] {result.name}: {result.verdict} "
        f"({result.tried} instances, {result.exercised} exercising it, {result.seconds:.1f} s){where}",
        file=sys.stderr,
        flush=True,
    )


def _validate_names(names) -> None:
    """Refuse unknown ``--only`` names before any folder is created (one line, exit 2)."""
    if names:
        from proofs_check._runner import select

        select(names)


def _run(args, counterexample_dir: str | None):
    from proofs_check._runner import DEFAULT_COUNTEREXAMPLE_DIR, prepare_dir, run_checks

    _validate_names(args.only)
    if counterexample_dir is None:  # the default folder is created only when a check fails
        counterexample_dir = DEFAULT_COUNTEREXAMPLE_DIR
    else:
        prepare_dir(counterexample_dir)  # fail early, in one line, on an unwritable folder
    _enable_compilation_cache()
    return run_checks(
        names=args.only,
        profile=args.profile,
        seed=args.seed,
        progress=None if getattr(args, "quiet", False) else _progress,
        counterexample_dir=counterexample_dir,
    )


def _report(results, as_json: bool, stream) -> bool:
    from proofs_check._runner import all_ok

    ok = all_ok(results)
    if as_json:
        json.dump({"ok": ok, "checks": [r.to_dict() for r in results]}, stream, indent=1, allow_nan=False)
        stream.write("\n")
    else:
        stream.write(_table(results) + "\n")
        failed = [r for r in results if not r.ok]
        theorems = [r for r in results if r.status != "measured"]
        findings = len(results) - len(theorems)
        summary = f"{len(theorems) - len(failed)}/{len(theorems)} theorem checks hold"
        summary += f"; {findings} finding{'s' if findings != 1 else ''} measured (not theorems)"
        if failed:
            summary += "; failing: " + ", ".join(
                f"{r.name} (vacuous: no input exercised it)" if r.status == "vacuous" else r.name
                for r in failed
            )
            paths = [r.counterexample for r in failed if r.counterexample]
            if paths:
                summary += "; replay with: toysim exact " + " | ".join(paths)
        stream.write(summary + "\n")
        for r in failed:
            if r.counterexample is None and r.failing_input is not None:
                stream.write(f"{r.name}: minimal failing input (no instance to write): {r.failing_input}\n")
    return ok


def _cmd_check(args) -> int:
    results = _run(args, args.counterexample_dir)
    return 0 if _report(results, args.json, sys.stdout) else 1


def _figures_make_all():
    """``figures.make_all``, imported lazily (the figures package is optional for ``check``)."""
    try:
        import figures
    except ImportError as err:
        raise ValueError(
            f"cannot regenerate the figures: the figures package is not importable ({err})"
        ) from None
    make_all = getattr(figures, "make_all", None)
    if make_all is None:
        raise ValueError("cannot regenerate the figures: figures.make_all(out_dir) does not exist")
    return make_all


def _figures_command(out: str | None) -> list[str]:
    """The ``toysim figures`` process that ``reproduce --jobs 2`` runs beside the checks."""
    return [sys.executable, "-m", "toysim", "figures"] + (["--out", out] if out else [])


def _start_figures(out: str | None):
    """Start the figures in a child process (its progress lines go to our stderr as they come)."""
    import subprocess

    return subprocess.Popen(_figures_command(out), stdout=subprocess.PIPE, text=True)


def _finish_figures(child) -> list[str]:
    """The paths the child wrote; a ValueError (one line, exit 2) if it failed."""
    out, _ = child.communicate()
    if child.returncode != 0:
        raise ValueError(f"the figures failed (exit code {child.returncode}; its message is above)")
    return [line for line in out.splitlines() if line.strip()]


def _cmd_reproduce(args) -> int:
    out_dir = args.out or "reproduce"
    make_all = _figures_make_all()  # before the checks: a missing package fails in seconds
    from proofs_check._runner import prepare_dir

    _validate_names(args.only)  # before creating --out: a typo leaves nothing behind
    prepare_dir(out_dir, what="--out folder")
    # --jobs 2: the figures are built by a second process while the checks run (both are mostly
    # single-threaded tracing; the figures are the same bytes either way)
    child = _start_figures(args.out) if args.jobs > 1 else None
    try:
        results = _run(args, os.path.join(out_dir, "counterexamples"))
        ok = _report(results, False, sys.stdout)
        # encoded before the file is opened: a value JSON cannot hold leaves no half-written file
        text = json.dumps({"ok": ok, "checks": [r.to_dict() for r in results]}, indent=1, allow_nan=False)
        with open(os.path.join(out_dir, "checks.json"), "w", encoding="utf-8") as fh:
            fh.write(text)
    except BaseException:  # the figures child is not left running behind a failure
        if child is not None:
            child.kill()
            child.wait()
        raise
    # None: the committed figures under figures/output
    made = _finish_figures(child) if child is not None else make_all(args.out)
    if made:
        for path in made:
            print(f"figure: {path}")
    return 0 if ok else 1


def _jobs_arg(text: str) -> int:
    if text not in ("1", "2"):
        raise argparse.ArgumentTypeError(f"must be 1 or 2, got {text!r}")
    return int(text)


def _add_common(p) -> None:
    p.add_argument(
        "--profile", default="ci", choices=["ci", "thorough"], help="examples per check (thorough: x10)"
    )
    p.add_argument(
        "--seed",
        type=seed_arg,
        default=0,
        help="hypothesis seed in [0, 2**63 - 1] (runs are deterministic given it)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="run only these checks (check or module names)",
    )


def register(sub) -> None:
    """Add ``check`` and ``reproduce`` to the ``toysim`` subcommands."""
    p = sub.add_parser(
        "check",
        help="run every theorem check of proofs_check (table on stdout, progress on stderr)",
        description="Run the executable theorem checks of docs/theory.md with hypothesis. Exit 0 only if "
        "every theorem holds; a failing theorem's minimal counterexample is written as a "
        "toysim.instance/1 file that `toysim exact` replays.",
    )
    _add_common(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument(
        "--counterexample-dir",
        type=out_dir_arg,
        default=None,
        metavar="DIR",
        help="folder for counterexample instance files (default: ./toysim-counterexamples)",
    )
    p.set_defaults(func=_cmd_check)

    r = sub.add_parser(
        "reproduce",
        help="run the checks, then regenerate every figure",
        description="Run `toysim check`, write checks.json (and any counterexamples), then regenerate "
        "every figure with figures.make_all. "
        "Exit non-zero if a check fails.",
    )
    _add_common(r)
    r.add_argument(
        "--out",
        type=out_dir_arg,
        default=None,
        metavar="DIR",
        help="write checks.json, counterexamples and the figures here (default: checks.json in "
        "./reproduce, figures regenerated in place under figures/output)",
    )
    r.add_argument(
        "--jobs",
        type=_jobs_arg,
        default=2 if (os.cpu_count() or 1) >= 2 else 1,
        metavar="N",
        help="1: checks, then figures, in this process; 2 (default with two or more cores): the "
        "figures in a second process while the checks run",
    )
    r.set_defaults(func=_cmd_reproduce)
