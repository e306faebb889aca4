"""Run the theorem checks: discovery, hypothesis search, shrinking, counterexample files.

Every module ``proofs_check/<name>.py`` (names not starting with ``_``) that defines a ``CHECKS``
list is discovered, in alphabetical module order and list order inside a module. For each check
the runner draws ``check.examples`` inputs (ten times as many in the ``thorough`` profile) from
``check.instances()`` with hypothesis, seeded by ``seed`` so that a run is reproducible (whatever
modules the process has loaded: :func:`source_constants_off`), and records the number of inputs
evaluated and the worst residual.

A theorem fails when a residual exceeds its tolerance (or is not a number); hypothesis then
shrinks the input, and the minimal counterexample is written as a ``toysim.instance/1`` file
that ``toysim exact FILE`` replays: as it is for a first-order Markov policy with an automaton
harm (unreachable automaton states pruned), else converted to an equivalent tabular policy (by its
per-level logits) with a table harm when the ``V**T`` tree fits in memory. A finding never fails: its verdict is the measured worst value.

A theorem with an ``exercised`` predicate (:attr:`Check.exercised`) that no input exercised
(for example, "``G_t = 0`` past the horizon" on inputs that all have ``k = T``) has verdict
``vacuous`` and fails (status ``"vacuous"``, not ok, exit code 1): it tested nothing, so it may
not report "holds". A seed that happens to draw only vacuous inputs says so.
An exception inside a check is that check's failure (verdict ``error: ...``), not the runner's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import os
import pkgutil
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._framework import Check, instance_of

PROFILES = {"ci": 1, "thorough": 10}


@contextlib.contextmanager
def source_constants_off():
    """Hypothesis without the constants of the "local" modules loaded in the process.

    Recent Hypothesis (the pinned 6.155.2) replaces about one draw in twenty by a constant found in
    the source of a local module (any loaded module outside site-packages and the standard
    library: toysim, the checks, the figures, a user's script). Which modules are loaded depends
    on how the checks were started, so the same seed drew different inputs under ``toysim
    check``, ``toysim reproduce`` and ``run_checks`` from Python (``best_of_n_kl`` exercised 12, 7
    and 9 of its 15 inputs), and any edit to a number in the library's source would move them too. Within this context the
    draws use Hypothesis's own fixed constants only, so a run depends on the seed and the checks'
    strategies alone. The switch is Hypothesis's internal ``_get_local_constants`` (no public
    setting exists); where that is missing (another Hypothesis version) nothing is changed.
    """
    try:
        from hypothesis.internal.conjecture import providers

        original = providers._get_local_constants
        empty = providers.Constants()
        cache = providers.CONSTANTS_CACHE
    except (ImportError, AttributeError):
        yield
        return
    providers._get_local_constants = lambda: empty
    cache.cache.clear()  # pools cached for the constants before
    try:
        yield
    finally:
        providers._get_local_constants = original
        cache.cache.clear()


DEFAULT_COUNTEREXAMPLE_DIR = "toysim-counterexamples"


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The outcome of one check.

    Attributes:
      check: the :class:`Check` (``None`` when its module failed to import).
      name: the check's name (the module's name on an import error).
      status: ``"holds"``, ``"fails"``, ``"vacuous"`` (a theorem no input exercised),
        ``"error"`` or ``"measured"``.
      verdict: the text shown in the report (``holds``, ``FAILS``, ``VACUOUS ...``,
        ``measured: v``, ``error: ...``).
      tried: inputs evaluated (including those of shrinking).
      worst: the largest residual seen (``nan`` if none was computed).
      counterexample: path of the written instance file, or ``None``.
      seconds: wall time of the check.
      failing_input: ``repr`` of the minimal failing input (truncated), for a failed check.
      exercised: how many of the ``tried`` inputs exercised the statement
        (:attr:`Check.exercised`; all of them for a check that is never vacuous).
    """

    check: Check | None
    name: str
    status: str
    verdict: str
    tried: int
    worst: float
    counterexample: str | None
    seconds: float
    failing_input: str | None = None
    exercised: int = 0

    @property
    def ok(self) -> bool:
        """Whether this result lets ``toysim check`` exit 0 (a holding theorem, or a finding)."""
        return self.status in ("holds", "measured")

    def to_dict(self) -> dict:
        """JSON-ready summary (non-finite numbers become ``None``)."""
        chk = self.check

        def num(x):
            return float(x) if x is not None and math.isfinite(x) else None

        return {
            "name": self.name,
            "result": chk.result if chk else None,
            "section": chk.section if chk else None,
            "kind": chk.kind if chk else None,
            "status": self.status,
            "verdict": self.verdict,
            "instances_tried": self.tried,
            "instances_exercised": self.exercised,
            "worst_residual": num(self.worst),
            "tolerance": num(chk.tolerance) if chk else None,
            "counterexample": self.counterexample,
            "failing_input": self.failing_input,
            "seconds": round(self.seconds, 3),
        }


def discover() -> list[tuple[str, Check | Exception]]:
    """Every check of ``proofs_check``, in deterministic order.

    Returns:
      ``(name, check)`` pairs; a module that fails to import gives ``(module_name, exception)``.
    """
    import proofs_check

    out: list[tuple[str, Check | Exception]] = []
    for info in sorted(pkgutil.iter_modules(proofs_check.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "strategies":
            continue
        try:
            module = importlib.import_module(f"proofs_check.{info.name}")
        except Exception as err:  # another module's bug must not hide every other check
            out.append((info.name, err))
            continue
        for check in getattr(module, "CHECKS", None) or []:
            out.append((check.name, check))
    return out


def check_modules() -> dict[str, str]:
    """Check name -> module name, for ``--only MODULE``."""
    import proofs_check

    out = {}
    for info in pkgutil.iter_modules(proofs_check.__path__):
        if info.name.startswith("_") or info.name == "strategies":
            continue
        try:
            module = importlib.import_module(f"proofs_check.{info.name}")
        except Exception:
            continue
        for check in getattr(module, "CHECKS", None) or []:
            out[check.name] = info.name
    return out


def select(names: Sequence[str] | None) -> list[tuple[str, Check | Exception]]:
    """The discovered checks named by ``names`` (check or module names); all when ``None``.

    Raises:
      ValueError: naming the unknown result names and the known ones.
    """
    found = discover()
    if not names:
        return found
    modules = check_modules()
    known = {n for n, _ in found} | set(modules.values())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"unknown result name(s) for --only: {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    wanted = set(names)
    return [(n, c) for n, c in found if n in wanted or modules.get(n) in wanted]


def tabular_instance(instance: Any):
    """An equivalent instance with a tabular policy and a table harm (for ``toysim exact``).

    The tabular logits of prefix ``p`` are the original policy's logits at ``p``
    (``policy.logits(params, t)``), so both define the same distribution over sequences.
    """
    import jax.numpy as jnp

    from toysim import Instance, TabularPolicy, harm_values, table_harm

    policy = instance.policy
    v, horizon = policy.vocab_size, policy.horizon
    tab = TabularPolicy(v, horizon)
    params = tuple(jnp.asarray(policy.logits(instance.params, t), dtype=jnp.float64) for t in range(horizon))
    harm = table_harm(np.asarray(harm_values(instance.harm, v, horizon), dtype=np.float64), v, horizon)
    return Instance(tab, params, harm, float(instance.lam))


def prepare_dir(path: str, what: str = "counterexample folder") -> str:
    """Create ``path`` if needed and make sure files can be written there.

    Raises:
      ValueError: naming the folder when it cannot be created or written.
    """
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".toysim-write-test")
        with open(probe, "w") as fh:
            fh.write("")
        os.remove(probe)
    except OSError as err:
        raise ValueError(f"{what} {path!r} is not writable: {err.strerror or err}") from None
    return path


def write_counterexample(value: Any, check_name: str, seed: int, directory: str) -> str | None:
    """Write the instance of a failing input as ``<dir>/<check>-seed<seed>.json``; its path."""
    from toysim import dump_instance

    inst = instance_of(value)
    if inst is None:
        return None
    prepare_dir(directory)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", check_name)
    path = os.path.join(directory, f"{safe}-seed{seed}.json")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(dump_instance(file_instance(inst)))
        fh.write("\n")
    return path


def file_instance(instance: Any):
    """The instance a counterexample file holds (see the module docstring).

    Raises:
      ValueError: when neither form applies (a policy other than first-order Markov, or an
        automaton harm, over a tree too large to convert).
    """
    from toysim import AutomatonHarm, Instance, MarkovPolicy, check_fits, prune_unreachable

    policy = instance.policy
    if isinstance(policy, MarkovPolicy) and policy.order == 1 and isinstance(instance.harm, AutomatonHarm):
        return Instance(policy, instance.params, prune_unreachable(instance.harm), float(instance.lam))
    check_fits(policy.vocab_size, policy.horizon)
    return tabular_instance(instance)


class _Violation(Exception):
    """Raised inside the hypothesis test when a theorem's residual exceeds its tolerance."""


def run_check(
    check: Check,
    profile: str = "ci",
    seed: int = 0,
    counterexample_dir: str = DEFAULT_COUNTEREXAMPLE_DIR,
    examples: int | None = None,
) -> CheckResult:
    """Run one check under hypothesis (see the module docstring).

    Args:
      check: the check.
      profile: ``"ci"`` (``check.examples`` inputs) or ``"thorough"`` (ten times as many).
      seed: hypothesis seed; equal seeds give equal runs.
      counterexample_dir: where a failing theorem's minimal input is written.
      examples: overrides the number of inputs (tests use a smaller budget).

    Returns:
      :class:`CheckResult`.
    """
    import hypothesis
    from hypothesis import HealthCheck, Verbosity, given, settings

    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    n = examples if examples is not None else check.examples * PROFILES[profile]
    theorem = check.kind == "theorem"
    state = {
        "tried": 0,
        "exercised": 0,
        "unmeasured": 0,
        "worst": -math.inf,
        "failing": None,
        "failing_residual": None,
    }
    start = time.perf_counter()

    @settings(
        max_examples=max(1, n),
        deadline=None,
        database=None,
        derandomize=False,
        verbosity=Verbosity.quiet,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @hypothesis.seed(seed)
    @given(check.instances())
    def search(value):
        state["failing"] = value  # the last input seen: the minimal one if an error is re-raised
        r, used = check.assess(value)
        state["tried"] += 1
        state["exercised"] += int(used)
        if math.isnan(r) and not theorem:
            state["unmeasured"] += 1  # a finding that cannot be measured here (e.g. an uncertified run)
        elif math.isnan(r):
            state["worst"] = math.nan
        elif r > state["worst"]:  # False once the worst is nan: nan stays the worst
            state["worst"] = r
        if theorem and not r <= check.tolerance:
            state["failing_residual"] = r
            raise _Violation(f"residual {r:.3e} > tolerance {check.tolerance:.1e}")

    error = None
    try:
        with source_constants_off():
            search()
    except _Violation:
        pass
    except Exception as err:
        error = err
    worst = state["worst"] if state["tried"] else math.nan
    seconds = time.perf_counter() - start

    def done(status, verdict, counterexample=None):
        shown = None
        if status in ("fails", "error") and state["failing"] is not None:
            text = repr(state["failing"])
            shown = text if len(text) <= 300 else text[:297] + "..."
        return CheckResult(
            check,
            check.name,
            status,
            verdict,
            state["tried"],
            worst,
            counterexample,
            seconds,
            shown,
            state["exercised"],
        )

    if error is not None or (theorem and state["failing_residual"] is not None):
        path = None
        if state["failing"] is not None:
            try:
                path = write_counterexample(state["failing"], check.name, seed, counterexample_dir)
            except Exception:  # an input that cannot be serialised must not crash the runner
                path = None
        if error is not None:
            message = " ".join(f"{type(error).__name__}: {error}".split())
            return done("error", f"error: {message[:200]}", path)
        r = state["failing_residual"]
        return done("fails", f"FAILS (minimal residual {r:.3e})", path)
    if not theorem:
        skipped = state["unmeasured"]
        note = f" ({skipped} of {state['tried']} inputs not measurable)" if skipped else ""
        worst = worst if math.isfinite(worst) else math.nan
        return done("measured", f"measured: {worst:.3e}{note}")
    if check.exercised is not None and state["exercised"] == 0:
        return done("vacuous", f"VACUOUS (none of {state['tried']} inputs exercised the statement)")
    return done("holds", "holds")


def run_checks(
    names: Sequence[str] | None = None,
    profile: str = "ci",
    seed: int = 0,
    progress: Callable[[int, int, CheckResult], None] | None = None,
    counterexample_dir: str = DEFAULT_COUNTEREXAMPLE_DIR,
    examples: int | None = None,
) -> list[CheckResult]:
    """Run every discovered check (or those named), in discovery order.

    Args:
      names: check or module names to run; ``None`` for all.
      profile: ``"ci"`` or ``"thorough"``.
      seed: hypothesis seed (results are deterministic given the seed).
      progress: called as ``progress(i, n, name)`` (a ``str``) before and
        ``progress(i, n, result)`` (a :class:`CheckResult`) after check ``i`` of ``n``.
      counterexample_dir: folder for counterexample files of failing theorems.
      examples: override of every check's number of inputs.

    Returns:
      One :class:`CheckResult` per check.

    Raises:
      ValueError: on an unknown name or profile.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    selected = select(names)
    results = []
    for i, (name, check) in enumerate(selected, start=1):
        if progress is not None:
            progress(i, len(selected), name)
        if isinstance(check, Exception):
            message = " ".join(f"{type(check).__name__}: {check}".split())
            result = CheckResult(
                None, name, "error", f"error: import failed: {message[:200]}", 0, math.nan, None, 0.0
            )
        else:
            result = run_check(check, profile, seed, counterexample_dir, examples)
        results.append(result)
        if progress is not None:
            progress(i, len(selected), result)
    return results


def all_ok(results: Sequence[CheckResult]) -> bool:
    """``True`` iff every theorem holds (and was exercised) and nothing raised."""
    return all(r.ok for r in results)
