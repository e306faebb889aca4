"""Copy the project, plant one mutant, run the theorem checks there, report killed or survived."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from .catalog import Mutant

ROOT = Path(__file__).resolve().parent.parent
# What a scratch copy needs to run `toysim check` (not .git, tests or benchmarks).
COPIED = ("toysim", "proofs_check", "figures", "pyproject.toml", "README.md", "conftest.py")

# Runs inside the scratch copy (PYTHONPATH = the copy): the runner of `toysim check`, check by check
# in the given order, stopping at the first theorem that fails or check that errors. Set up as the
# CLI sets it up (float64, compilation cache).
DRIVER = r"""
import json, sys, time
args = json.loads(sys.argv[1])
out = {"killed": False, "check": None, "verdict": None, "ran": 0}
try:
    import jax
    jax.config.update("jax_enable_x64", True)  # as toysim._cli does for every command
    from toysim._cli_check import _enable_compilation_cache
    from proofs_check._runner import run_check, select
    _enable_compilation_cache()
    first = [c for name in args["first"] for c in select([name])]  # in the catalog's order
    rest = select(args["checks"]) if args["checks"] else select(None)
    order, seen = [], set()
    for name, check in first + rest:
        if name not in seen and (not args["checks"] or name in {n for n, _ in rest}):
            seen.add(name)
            order.append((name, check))
    for name, check in order:
        out["ran"] += 1
        if isinstance(check, Exception):
            out.update(killed=True, check=name, verdict=f"error: import failed: {check!r}"[:200])
            break
        result = run_check(check, args["profile"], args["seed"], args["cex"])
        if result.status in ("fails", "error"):
            out.update(killed=True, check=name, verdict=result.verdict[:200])
            break
except Exception as err:  # an error anywhere (import, compile) kills the mutant
    out.update(killed=True, check=out["check"] or "(error)", verdict=f"error: {err!r}"[:200])
print("MUTANT-RESULT " + json.dumps(out), flush=True)
"""


CONTROL = Mutant("(control)", "toysim/__init__.py", "", "", "the unmutated project: must survive")


class Outcome(NamedTuple):
    """The fate of one mutant."""

    mutant: Mutant
    killed: bool
    check: str | None
    verdict: str | None
    checks_run: int
    seconds: float


def scratch_copy(dest: Path, root: Path = ROOT) -> Path:
    """Copy the project's runnable parts (:data:`COPIED`) to ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "output")
    for name in COPIED:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def apply_mutant(mutant: Mutant, root: Path) -> None:
    """Replace ``mutant.old`` by ``mutant.new`` in ``root / mutant.file``.

    Raises:
      ValueError: if ``old`` does not occur exactly once (the catalog is stale).
    """
    path = root / mutant.file
    text = path.read_text(encoding="utf-8")
    count = text.count(mutant.old)
    if count != 1:
        raise ValueError(f"mutant {mutant.name}: old text occurs {count} times in {mutant.file}, expected 1")
    path.write_text(text.replace(mutant.old, mutant.new), encoding="utf-8")


def run_mutant(
    mutant: Mutant | None,
    *,
    checks: tuple[str, ...] = (),
    seed: int = 0,
    profile: str = "ci",
    timeout: float = 3600.0,
    keep: bool = False,
) -> Outcome:
    """Plant ``mutant`` in a scratch copy and run the checks there (its ``checks`` first).

    ``mutant=None`` is the control: the same run on the unmutated copy, which must survive.

    Args:
      checks: restrict to these checks (check or module names); all when empty.
      timeout: seconds before the run is stopped (counted as survived, verdict "timeout").
      keep: keep the scratch folder (its path is printed).
    """
    start = time.perf_counter()
    if mutant is None:
        mutant = CONTROL
    tmp = Path(tempfile.mkdtemp(prefix=f"toysim-mutant-{mutant.name}-"))
    try:
        scratch_copy(tmp)
        if mutant is not CONTROL:
            apply_mutant(mutant, tmp)
        first = [c for c in mutant.checks if not checks or c in checks]
        args = {
            "first": first,
            "checks": list(checks),
            "seed": seed,
            "profile": profile,
            "cex": str(tmp / "counterexamples"),
        }
        env = {**os.environ, "PYTHONPATH": str(tmp)}
        try:
            proc = subprocess.run(
                [sys.executable, "-c", DRIVER, json.dumps(args)],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return Outcome(mutant, False, None, "timeout", 0, time.perf_counter() - start)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("MUTANT-RESULT ")), None)
        if line is None:  # the interpreter itself died: an error
            tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
            return Outcome(mutant, True, "(error)", f"error: {tail[0][:200]}", 0, time.perf_counter() - start)
        out = json.loads(line[len("MUTANT-RESULT ") :])
        return Outcome(
            mutant, out["killed"], out["check"], out["verdict"], out["ran"], time.perf_counter() - start
        )
    finally:
        if keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def table(outcomes: list[Outcome]) -> str:
    """The result table: mutant, module, killed/survived, killing check, seconds."""
    header = ("mutant", "module", "result", "killed by", "seconds", "expected killer if survived")
    rows = [header]
    for o in outcomes:
        rows.append(
            (
                o.mutant.name,
                Path(o.mutant.file).stem,
                "killed" if o.killed else "SURVIVED",
                o.check or "-",
                f"{o.seconds:.0f}",
                "" if o.killed or o.mutant is CONTROL else (o.mutant.expected or "?"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-" * max(len(x) for x in lines))
    return "\n".join(lines)
