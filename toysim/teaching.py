"""Exercises that check themselves, and the classroom demo.

Each checker compares a learner's answer with toysim's exact value and, when the answer is wrong,
says *where*: which prefix, which position, which token, and by how much, rather than only "wrong".
A checker returns a :class:`Verdict` (true when the answer is right) whose message is printed by a
notebook; it never raises for a wrong answer, so an exercise cell left blank (``answer = None``)
still runs. An answer of the wrong shape or type raises a ``ValueError`` naming what was expected.

Exercises of the tutorials (``docs/tutorials``) and the checkers they use:

* :func:`check_martingale` -- ``H_t`` of every prefix of a small instance (the mathematics, §2);
* :func:`check_gradient` -- ``G_t`` with respect to the logits of a tabular policy (§4);
* :func:`check_fisher_tight` -- an instance where the Fisher bound is tight (§6);
* :func:`check_by_position` -- any per-position profile (``I_t``, ``D_t``, ``λ²I_t/2``, §3, §7);
* :func:`check_automaton` -- a harm written as an automaton against a harm given as a function (§1);
* :func:`check_theorem_check` -- a ``proofs_check`` :class:`~proofs_check._framework.Check` of your
  own: it must hold, and every negative control must be caught;
* :func:`check` -- the general comparison behind all of them.

:func:`classroom_demo` is the live demo (sliders with ``ipywidgets``, a static figure without).

Example:
  >>> check({(): 0.5, (0,): 0.25}, {(): 0.5, (0,): 0.75}, name="H", key_label=prefix_label)
  Verdict(ok=False): H is wrong at 1 of 2 entries; at prefix (0,) (position 1): you gave 0.25, the exact value is 0.75 (off by -0.5).
  >>> bool(check([0.1, 0.2], [0.1, 0.2]))
  True
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # jax is imported only when a checker needs the engine
    from ._types import Policy, PyTree

# Default tolerances of a learner's answer. Answers are typed by hand or computed in float64 from
# the learner's own formula; 1e-6 absolute plus 1e-6 relative accepts any float64 computation and
# any hand value written with 7 significant digits, and rejects every mistake of substance.
ATOL = 1e-6
RTOL = 1e-6
# Harm information below this counts as zero in the Fisher-bound exercise: I_t is a mean of squared
# differences of values in [0, 1], so rounding leaves at most ~1e-30 where it is exactly zero, and a
# genuine I_t of an exercise instance is many orders of magnitude above 1e-12.
INFO_ZERO = 1e-12
# How many wrong entries a message lists before summarising the rest.
SHOWN = 3

__all__ = [
    "ATOL",
    "INFO_ZERO",
    "RTOL",
    "Verdict",
    "check",
    "check_automaton",
    "check_by_position",
    "check_fisher_tight",
    "check_gradient",
    "check_martingale",
    "check_theorem_check",
    "classroom_demo",
    "demo_curves",
    "martingale_values",
    "position_label",
    "prefix_label",
]


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of an exercise check: ``ok`` and a message saying where the answer is wrong.

    Truthy iff the answer is right, so ``assert check(...)`` works in a script; in a notebook its
    representation is the message.
    """

    ok: bool
    message: str

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return f"Verdict(ok={self.ok}): {self.message}"

    def __str__(self) -> str:
        return ("correct: " if self.ok else "not yet: ") + self.message

    def require(self) -> Verdict:
        """Return the verdict if the answer is right, else raise ``AssertionError`` with its message.

        The solution pages end each check with it, so a regression in toysim (or in a solution)
        fails the documentation build instead of printing "not yet".
        """
        if not self.ok:
            raise AssertionError(self.message)
        return self

    def _repr_pretty_(self, printer, cycle) -> None:  # IPython / Jupyter display
        printer.text(str(self))


# --------------------------------------------------------------------------- labels


def prefix_label(key: Any) -> str:
    """``"prefix (0, 1) (position 2)"``: a prefix of tokens and the position it ends at."""
    key = tuple(int(v) for v in key)
    if not key:
        return "the empty prefix (position 0)"
    return f"prefix {key} (position {len(key)})"


def position_label(index: Any) -> str:
    """``"position t"`` for the 0-based array index ``t − 1`` of a per-position profile."""
    (i,) = index if isinstance(index, tuple) else (index,)
    return f"position {int(i) + 1}"


def _index_label(index: tuple) -> str:
    return f"entry {index[0]}" if len(index) == 1 else f"entry {index}"


def _fmt(x: float) -> str:
    return f"{x:.6g}"


# --------------------------------------------------------------------------- the general checker


def _as_float_array(value: Any, name: str, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{name}: {what} must be numbers (a number, a list or an array), got {value!r}"
        ) from err
    return arr


def _wrong_entries(
    pairs: Sequence[tuple[Any, float, float]], atol: float, rtol: float
) -> list[tuple[Any, float, float]]:
    wrong = []
    for key, given, exact in pairs:
        if not math.isfinite(given) or abs(given - exact) > atol + rtol * abs(exact):
            wrong.append((key, given, exact))
    return wrong


def _report(name: str, wrong: list, total: int, label: Callable[[Any], str]) -> Verdict:
    if not wrong:
        return Verdict(True, f"{name} matches the exact value at all {total} entries.")
    parts = []
    for key, given, exact in wrong[:SHOWN]:
        if math.isfinite(given):
            parts.append(
                f"at {label(key)}: you gave {_fmt(given)}, the exact value is {_fmt(exact)} "
                f"(off by {_fmt(given - exact)})"
            )
        else:
            parts.append(f"at {label(key)}: you gave {given}, the exact value is {_fmt(exact)}")
    more = f"; and {len(wrong) - SHOWN} more" if len(wrong) > SHOWN else ""
    return Verdict(
        False, f"{name} is wrong at {len(wrong)} of {total} entries; " + "; ".join(parts) + more + "."
    )


def check(
    answer: Any,
    expected: Any,
    *,
    name: str = "your answer",
    key_label: Callable[[Any], str] | None = None,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> Verdict:
    """Compare an answer with the exact value, entry by entry, and say where it differs.

    An entry is right when ``|answer − exact| <= atol + rtol·|exact|`` (see :data:`ATOL`).

    Args:
      answer: the learner's answer: a number, an array-like of numbers, or a mapping from keys
        (e.g. prefixes as tuples of tokens) to numbers. ``None`` means "not answered yet".
      expected: the exact value, of the same kind.
      name: what the answer is, used in the message (e.g. ``"H"``).
      key_label: turns a key (mapping) or an index tuple (array) into words, e.g.
        :func:`prefix_label` or :func:`position_label`.
      atol: absolute tolerance.
      rtol: relative tolerance.

    Returns:
      A :class:`Verdict`; its message names up to three wrong entries with the value given, the
      exact value and the difference, and counts the rest.

    Raises:
      ValueError: if the answer's shape or keys cannot be compared with the exact value (the
        message names both shapes), or the answer is not made of numbers.

    Example:
      >>> check([0.0, 0.5, 0.0], [0.0, 0.25, 0.0], name="I", key_label=position_label)
      Verdict(ok=False): I is wrong at 1 of 3 entries; at position 2: you gave 0.5, the exact value is 0.25 (off by 0.25).
    """
    if answer is None or answer is Ellipsis:
        return Verdict(False, f"{name}: no answer yet (replace the placeholder with your answer).")
    if isinstance(expected, Mapping):
        if not isinstance(answer, Mapping):
            raise ValueError(
                f"{name} must be a dict with one entry per key (e.g. {next(iter(expected))!r}), "
                f"got {type(answer).__name__}"
            )
        label = key_label or (lambda k: f"key {k!r}")
        norm = {_norm_key(k): v for k, v in answer.items()}
        exact = {_norm_key(k): v for k, v in expected.items()}
        extra = [k for k in norm if k not in exact]
        if extra:
            raise ValueError(
                f"{name} has keys that the exact value does not have: {extra[:SHOWN]!r} "
                f"(expected keys like {list(exact)[:SHOWN]!r})"
            )
        missing = [k for k in exact if k not in norm]
        if missing:
            listed = ", ".join(label(k) for k in missing[:SHOWN])
            more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
            return Verdict(False, f"{name} is incomplete: no value at {listed}{more}.")
        pairs = []
        for k, e in exact.items():
            g = _as_float_array(norm[k], name, f"the value at {label(k)}")
            if g.shape != ():
                raise ValueError(f"{name}: the value at {label(k)} must be one number, got shape {g.shape}")
            pairs.append((k, float(g), float(e)))
        return _report(name, _wrong_entries(pairs, atol, rtol), len(pairs), label)
    exact = _as_float_array(expected, name, "the exact value")
    given = _as_float_array(answer, name, "the answer")
    if given.shape != exact.shape:
        raise ValueError(f"{name} must have shape {exact.shape}, got shape {given.shape}")
    label = key_label or _index_label
    if exact.shape == ():
        wrong = _wrong_entries([((), float(given), float(exact))], atol, rtol)
        if not wrong:
            return Verdict(True, f"{name} matches the exact value.")
        g, e = float(given), float(exact)
        diff = f" (off by {_fmt(g - e)})" if math.isfinite(g) else ""
        return Verdict(False, f"{name} is wrong: you gave {_fmt(g)}, the exact value is {_fmt(e)}{diff}.")
    pairs = [(idx, float(given[idx]), float(exact[idx])) for idx in np.ndindex(exact.shape)]
    return _report(name, _wrong_entries(pairs, atol, rtol), len(pairs), label)


def _norm_key(key: Any) -> Any:
    if isinstance(key, (tuple, list)):
        return tuple(int(v) for v in key)
    if isinstance(key, (int, np.integer)):
        return int(key)
    return key


def check_by_position(answer: Any, expected: Any, *, name: str = "your profile", **tol) -> Verdict:
    """:func:`check` for a per-position profile ``x_1..x_T`` (entry ``i`` is position ``i + 1``).

    Example:
      >>> str(check_by_position([0.1, 0.0], [0.1, 0.2], name="D"))
      'not yet: D is wrong at 1 of 2 entries; at position 2: you gave 0, the exact value is 0.2 (off by -0.2).'
    """
    return check(answer, expected, name=name, key_label=position_label, **tol)


# --------------------------------------------------------------------------- exact values


def _harm_array(harm: Any, vocab_size: int, horizon: int) -> np.ndarray:
    from ._harms import AutomatonHarm, TableHarm, harm_values

    if isinstance(harm, (AutomatonHarm, TableHarm)):
        return np.asarray(harm_values(harm, vocab_size, horizon), dtype=np.float64)
    h = np.asarray(harm, dtype=np.float64).reshape(-1)
    if h.shape != (vocab_size**horizon,):
        raise ValueError(
            f"harm must be a toysim harm or {vocab_size**horizon} leaf values, got shape {h.shape}"
        )
    return h


def martingale_values(policy: Policy, params: PyTree, harm: Any) -> dict[tuple[int, ...], float]:
    """``H_t(p) = E[h | Y_≤t = p]`` for every prefix ``p`` of length ``0..T``, keyed by its tokens.

    Args:
      policy: a toysim policy (``V``, ``T`` small enough to enumerate).
      params: its parameters.
      harm: a toysim harm (table or automaton) or the ``V**T`` leaf values.

    Returns:
      ``{(): H_0, (0,): H_1(0), …, (y_1, …, y_T): h(y)}``.
    """
    import jax.numpy as jnp

    from ._enumerate import forward
    from ._martingale import harm_martingale

    V, T = policy.vocab_size, policy.horizon
    h = jnp.asarray(_harm_array(harm, V, T))
    H = harm_martingale(forward(policy, params), h)
    out = {}
    for t, level in enumerate(H):
        for i, value in enumerate(np.asarray(level).reshape(-1)):
            out[_digits(i, V, t)] = float(value)
    return out


def _digits(index: int, vocab_size: int, t: int) -> tuple[int, ...]:
    """The tokens of prefix number ``index`` of length ``t`` (lexicographic, first token most significant)."""
    return tuple((index // vocab_size ** (t - 1 - j)) % vocab_size for j in range(t))


def check_martingale(answer: Any, policy: Policy, params: PyTree, harm: Any, **tol) -> Verdict:
    """Check ``H_t`` of every prefix: ``answer`` maps prefixes (tuples of tokens) to values.

    Every prefix of length ``0..T`` must be there (``()`` is ``H_0``, a full response is
    ``h(y)``); a missing one is named, and a wrong one is named with its position and error.

    Example:
      >>> import jax; _ = jax.config.update("jax_enable_x64", True)
      >>> from toysim import TabularPolicy, table_harm
      >>> policy = TabularPolicy(2, 1)
      >>> params = policy.from_rows(jax.numpy.zeros((1, 2)))
      >>> str(check_martingale({(): 0.5, (0,): 0.0, (1,): 1.0}, policy, params, table_harm([0, 1], 2, 1)))
      'correct: H matches the exact value at all 3 entries.'
    """
    return check(answer, martingale_values(policy, params, harm), name="H", key_label=prefix_label, **tol)


def check_gradient(answer: Any, policy: Policy, params: PyTree, harm: Any, t: int, **tol) -> Verdict:
    """Check ``G_t = ∂E[h]/∂(logits read at position t)`` of a tabular policy.

    ``answer`` has the shape of the logits of position ``t``: ``(V**(t−1), V)``, row = prefix of
    length ``t − 1`` (lexicographic), column = token. By the mathematics §4 each entry is
    ``P(p)·π(v|p)·(H(p·v) − H(p))``. The exact value is the covariance form
    (``toysim.covariance_gradient``).

    Raises:
      ValueError: if the policy is not tabular, ``t`` is not in ``1..T``, or the shape is wrong.
    """
    from ._enumerate import forward
    from ._gradient import covariance_gradient
    from ._martingale import harm_martingale
    from ._policies import TabularPolicy

    if not isinstance(policy, TabularPolicy):
        raise ValueError(f"policy must be a TabularPolicy for check_gradient, got {type(policy).__name__}")
    V, T = policy.vocab_size, policy.horizon
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 1 <= t <= T:
        raise ValueError(f"t must be a position in 1..{T}, got {t!r}")
    import jax.numpy as jnp

    h = jnp.asarray(_harm_array(harm, V, T))
    levels = forward(policy, params)
    grads = covariance_gradient(policy, params, levels, harm_martingale(levels, h))
    exact = np.asarray(grads[t - 1][t - 1])

    def label(index):
        row, v = index
        p = _digits(row, V, t - 1)
        return f"token {v} after prefix {p}"

    return check(answer, exact, name=f"G_{t}", key_label=label, **tol)


def check_fisher_tight(
    policy: Policy, params: PyTree, harm: Any, t: int = 1, *, rtol: float = 1e-9
) -> Verdict:
    """Is the Fisher bound ``‖G_t‖² ≤ I_t·E[tr F_t]`` (§6) tight, with ``I_t > 0``, at position ``t``?

    The exercise: find an instance where it is. The message gives the ratio ``‖G_t‖² / (I_t E[tr
    F_t])`` at every position, so a learner sees how far from tight each one is.

    Args:
      policy, params, harm: the instance (any policy family, enumerable).
      t: the position that must be tight.
      rtol: how close to one the ratio must be (float64 rounding of both sides, far below any
        genuinely loose bound).
    """
    import jax.numpy as jnp

    from ._enumerate import forward
    from ._gradient import covariance_gradient, fisher_bound, tree_sq_norm
    from ._martingale import martingale_summary

    if policy is None:
        return Verdict(False, "Fisher bound: no answer yet (replace the placeholder with your instance).")
    V, T = policy.vocab_size, policy.horizon
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 1 <= t <= T:
        raise ValueError(f"t must be a position in 1..{T}, got {t!r}")
    levels = forward(policy, params)
    summary = martingale_summary(levels, jnp.asarray(_harm_array(harm, V, T)))
    grads = covariance_gradient(policy, params, levels, summary.martingale)
    g2 = np.array([float(tree_sq_norm(g)) for g in grads])
    bound = np.asarray(fisher_bound(policy, params, levels, summary.information)) ** 2
    info = np.asarray(summary.information)
    ratios = [g / b if i > INFO_ZERO else float("nan") for g, b, i in zip(g2, bound, info)]
    shown = ", ".join(
        f"t={i + 1}: {r:.6f}" if math.isfinite(r) else f"t={i + 1}: (I_t = 0)" for i, r in enumerate(ratios)
    )
    if info[t - 1] <= INFO_ZERO:
        return Verdict(
            False,
            f"I_{t} = 0 (up to rounding, {info[t - 1]:.1e}): both sides are 0, which is not the tight case asked for. Ratios: {shown}.",
        )
    r = ratios[t - 1]
    if abs(r - 1.0) <= rtol:
        return Verdict(
            True,
            f"the bound is tight at position {t}: ‖G_{t}‖² / (I_{t} E[tr F_{t}]) = {r:.12f}. Ratios: {shown}.",
        )
    return Verdict(
        False,
        f"at position {t} the ratio ‖G_{t}‖² / (I_{t} E[tr F_{t}]) is {r:.6f}, not 1 (off by {r - 1:.3g}). Ratios: {shown}.",
    )


def check_automaton(
    answer: Any, target: Callable[[tuple[int, ...]], float] | Any, vocab_size: int, horizon: int, **tol
) -> Verdict:
    """Check a harm written as an automaton against the harm it should compute.

    Args:
      answer: a :class:`toysim.AutomatonHarm` (e.g. from ``toysim.automaton_harm``).
      target: the intended harm: a function of the response (a tuple of ``horizon`` tokens) or any
        toysim harm.
      vocab_size, horizon: ``V`` and ``T`` over which to compare (every one of the ``V**T``
        responses is compared).

    Returns:
      A :class:`Verdict` naming the responses on which the two harms differ.
    """
    from ._harms import AutomatonHarm

    if answer is None:
        return Verdict(False, "harm automaton: no answer yet (replace the placeholder with your automaton).")
    if not isinstance(answer, AutomatonHarm):
        raise ValueError(
            f"answer must be a toysim.AutomatonHarm (see toysim.automaton_harm), got {type(answer).__name__}"
        )
    mine = _harm_array(answer, vocab_size, horizon)
    if callable(target):
        exact = np.array([float(target(_digits(i, vocab_size, horizon))) for i in range(vocab_size**horizon)])
    else:
        exact = _harm_array(target, vocab_size, horizon)
    as_dict = {_digits(i, vocab_size, horizon): float(x) for i, x in enumerate(mine)}
    want = {_digits(i, vocab_size, horizon): float(x) for i, x in enumerate(exact)}
    verdict = check(
        as_dict, want, name="your automaton's harm", key_label=lambda y: f"response y = {y}", **tol
    )
    message = verdict.message.replace("you gave", "your automaton gives").replace(
        "the exact value is", "the intended harm is"
    )
    return Verdict(verdict.ok, message.replace("matches the exact value", "matches the intended harm"))


# What check_theorem_check reads of a check: the attributes of proofs_check.Check that it uses.
_CHECK_ATTRIBUTES = ("name", "kind", "tolerance", "instances", "compute", "residual", "corruptions")


def check_theorem_check(check_obj: Any, *, examples: int = 10, seed: int = 0) -> Verdict:
    """Run a ``proofs_check`` check of your own and each of its negative controls.

    It must hold on ``examples`` hypothesis inputs (a theorem) and every corruption must push the
    residual above the tolerance on at least one of those inputs. The message names the input
    count, the worst residual, and each control that was or was not caught.

    ``check_obj`` is read by its attributes only (the library does not import ``proofs_check``), so
    a ``proofs_check.Check`` or any object with the same attributes is accepted: ``name`` (str),
    ``kind`` (``"theorem"`` or ``"finding"``), ``tolerance`` (float), ``instances`` (zero-argument
    function returning a hypothesis strategy), ``compute`` (input -> quantities), ``residual``
    (quantities -> float) and ``corruptions`` (dict: name -> (quantities -> wrong quantities)).
    """
    if check_obj is None:
        return Verdict(False, "your check: no answer yet (replace the placeholder with your Check).")
    missing = [a for a in _CHECK_ATTRIBUTES if not hasattr(check_obj, a)]
    if missing:
        raise ValueError(
            f"answer must be a proofs_check Check (an object with {', '.join(_CHECK_ATTRIBUTES)}); "
            f"got {type(check_obj).__name__}, which lacks {', '.join(missing)}"
        )
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed

    seen = []

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @hseed(seed)
    @given(check_obj.instances())
    def collect(value):
        seen.append(value)

    collect()
    quantities = [check_obj.compute(v) for v in seen]
    residuals = [float(check_obj.residual(q)) for q in quantities]
    worst = max(residuals) if residuals else math.nan
    if check_obj.kind == "theorem" and not worst <= check_obj.tolerance:
        i = int(np.argmax(residuals)) if residuals and not math.isnan(worst) else 0
        return Verdict(
            False,
            f"check {check_obj.name} fails: residual {worst:.3e} > tolerance {check_obj.tolerance:.1e} "
            f"on input {i} of {len(seen)} ({seen[i]!r:.200}).",
        )
    caught, missed = [], []
    for cname, corrupt in check_obj.corruptions.items():
        worst_c = max(float(check_obj.residual(corrupt(q))) for q in quantities)
        (caught if worst_c > check_obj.tolerance else missed).append(
            f"{cname} (worst residual {worst_c:.3e})"
        )
    head = f"check {check_obj.name}: worst residual {worst:.3e} <= tolerance {check_obj.tolerance:.1e} on {len(seen)} inputs"
    if missed:
        return Verdict(
            False, head + "; but these negative controls were NOT caught: " + "; ".join(missed) + "."
        )
    if not caught:
        return Verdict(
            False, head + "; but it has no negative control: a check that cannot fail proves nothing."
        )
    return Verdict(True, head + "; every negative control caught: " + "; ".join(caught) + ".")


# --------------------------------------------------------------------------- the classroom demo

_DEMO_V, _DEMO_T, _DEMO_HARMFUL, _DEMO_RECOVERY = 3, 6, (2,), (0,)


def _demo_model():
    import jax

    from ._policies import MarkovPolicy

    policy = MarkovPolicy(vocab_size=_DEMO_V, horizon=_DEMO_T)
    params = policy.init(jax.random.key(3), scale=0.7)
    return policy, params


def demo_curves(
    lam: float = 1.0, deadline: int = 2, mu: float = 2.0, gamma: float = 0.7
) -> dict[str, np.ndarray]:
    """Every curve of the classroom demo, for one setting of the sliders.

    Instance: a seeded Markov policy (``V = 3``, ``T = 6``) as ``π_0``; harm: token 2 within the
    first ``deadline`` positions; recovery token 0; ``Q`` = ``π_0`` conditioned on harm. The arrays
    keep their shapes for every setting, so JAX compiles once and a move of a slider costs a few
    milliseconds.

    Returns:
      ``gradient_norm`` ``‖G_t‖``, ``fisher_bound``, ``kl`` ``D_t``, ``second_order`` ``λ²I_t/2``,
      ``attack_base``, ``attack_standard`` (the tilt), ``attack_deep`` (the Gibbs form),
      ``guarantee`` ``σ(logit p_min + μγ^{k})``, by position or prefill depth ``k = 0..T−1``.
    """
    import jax.numpy as jnp

    from ._enumerate import forward
    from ._harms import deadline_harm, harm_values
    from ._recovery import (
        guaranteed_recovery,
        harmful_prefix_marginals,
        min_recovery_probability,
        recovery_spec,
    )

    if (
        isinstance(deadline, bool)
        or not isinstance(deadline, (int, np.integer))
        or not 1 <= deadline <= _DEMO_T
    ):
        raise ValueError(f"deadline must be an integer in 1..{_DEMO_T}, got {deadline!r}")
    if not (isinstance(lam, (int, float)) and lam > 0):
        raise ValueError(f"lam must be a number > 0, got {lam!r}")
    policy, params = _demo_model()
    h = jnp.asarray(harm_values(deadline_harm(_DEMO_V, list(_DEMO_HARMFUL), int(deadline)), _DEMO_V, _DEMO_T))
    base = forward(policy, params)
    spec = recovery_spec(_DEMO_V, list(_DEMO_RECOVERY), harmful_prefix_marginals(base, h), mu=mu, gamma=gamma)
    p_min = min_recovery_probability(base, spec.mask)
    out = {name: np.asarray(x) for name, x in _demo_kernel(policy, params, h, float(lam), spec).items()}
    out["guarantee"] = 1.0 - np.asarray(
        guaranteed_recovery(p_min, spec.mu, spec.gamma, np.arange(1, _DEMO_T + 1))
    )
    return out


def _demo_kernel(policy, params, h, lam, spec):
    """One compiled program for every curve of the demo (jitted lazily, compiled once per process)."""
    global _DEMO_KERNEL
    if _DEMO_KERNEL is None:
        import functools

        import jax
        import jax.numpy as jnp

        from ._enumerate import forward
        from ._equilibrium import tilt
        from ._gradient import covariance_gradient, fisher_bound, tree_sq_norm
        from ._martingale import martingale_summary
        from ._recovery import attack_success, gibbs_policy

        @functools.partial(jax.jit, static_argnums=0)
        def kernel(policy, params, h, lam, spec):
            base = forward(policy, params)
            summary = martingale_summary(base, h)
            grads = covariance_gradient(policy, params, base, summary.martingale)
            eq = tilt(base, h, lam)
            return {
                "gradient_norm": jnp.sqrt(jnp.stack([tree_sq_norm(g) for g in grads])),
                "fisher_bound": fisher_bound(policy, params, base, summary.information),
                "kl": eq.kl_by_position,
                "second_order": lam**2 * summary.information / 2,
                "attack_base": attack_success(base, spec),
                "attack_standard": attack_success(eq.levels, spec),
                "attack_deep": attack_success(gibbs_policy(base, spec), spec),
            }

        _DEMO_KERNEL = kernel
    return _DEMO_KERNEL(policy, params, h, lam, spec)


_DEMO_KERNEL = None


def _draw(fig, curves: dict, lam: float, deadline: int, mu: float, gamma: float) -> None:
    fig.clear()
    axes = fig.subplots(1, 3)
    t = np.arange(1, _DEMO_T + 1)
    ax = axes[0]
    ax.bar(t, curves["gradient_norm"], color="tab:blue", label="‖G_t‖ (covariance form)")
    ax.plot(t, curves["fisher_bound"], "k_", markersize=14, mew=2, label="Fisher bound √(I_t E tr F_t)")
    ax.axvline(deadline + 0.5, color="gray", ls=":", label=f"horizon k = {deadline}")
    ax.set(title="The gradient stops at the horizon", xlabel="position t", xticks=t)
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.bar(t - 0.2, curves["kl"], width=0.4, color="tab:red", label="D_t (exact)")
    ax.bar(t + 0.2, curves["second_order"], width=0.4, color="tab:orange", label="λ² I_t / 2")
    ax.set(title=f"KL follows harm information (λ = {lam:g})", xlabel="position t", xticks=t)
    ax.legend(fontsize=7)
    ax = axes[2]
    k = np.arange(_DEMO_T)
    ax.plot(k, curves["attack_base"], "o-", color="gray", label="base π_0")
    ax.plot(k, curves["attack_standard"], "s--", color="tab:red", label="standard-aligned (tilt)")
    ax.plot(k, curves["attack_deep"], "^-", color="tab:green", label=f"deep (Gibbs, μ={mu:g}, γ={gamma:g})")
    ax.plot(k, curves["guarantee"], ":", color="tab:green", label="1 − guaranteed recovery")
    ax.set(
        title="Prefilling attacks",
        xlabel="prefilled harmful tokens k",
        ylabel="attack success",
        ylim=(0, 1.02),
    )
    ax.legend(fontsize=7)
    fig.tight_layout()


def classroom_demo(
    widgets: bool | None = None, lam: float = 1.0, deadline: int = 2, mu: float = 2.0, gamma: float = 0.7
):
    """The live classroom demo: sliders for ``λ``, the harm's deadline, ``μ`` and ``γ``.

    With ``ipywidgets`` installed (``pip install -e ".[demo]"``) and inside Jupyter, returns the
    sliders, each move redrawing ``‖G_t‖`` with its Fisher bound, ``D_t`` against ``λ²I_t/2`` and
    the prefilling-attack curves (compiled once; a move costs milliseconds). Otherwise (or with
    ``widgets=False``, or ``TOYSIM_DEMO_STATIC=1`` as the documentation build sets) it draws and
    returns the static figure of the given setting.
    """
    import matplotlib.pyplot as plt  # in Jupyter, importing pyplot installs the inline display of figures

    if widgets is None:
        widgets = os.environ.get("TOYSIM_DEMO_STATIC", "0") != "1"
    ipw = None
    if widgets:
        try:
            import ipywidgets as ipw
        except ImportError:
            ipw = None
    fig = plt.figure(figsize=(13, 3.8))
    plt.close(fig)  # shown once, where it is returned (not again by pyplot at the end of the cell)
    if ipw is None:
        _draw(fig, demo_curves(lam, deadline, mu, gamma), lam, deadline, mu, gamma)
        return fig

    from IPython.display import display

    out = ipw.Output()
    sliders = {
        "lam": ipw.FloatLogSlider(value=lam, base=10, min=-2, max=1, step=0.05, description="λ"),
        "deadline": ipw.IntSlider(value=deadline, min=1, max=_DEMO_T, description="deadline k"),
        "mu": ipw.FloatSlider(value=mu, min=0.1, max=8.0, step=0.1, description="μ"),
        "gamma": ipw.FloatSlider(value=gamma, min=0.05, max=0.99, step=0.01, description="γ"),
    }

    def redraw(_=None):
        values = {name: s.value for name, s in sliders.items()}
        _draw(fig, demo_curves(**values), **values)
        with out:
            out.clear_output(wait=True)
            display(fig)

    for s in sliders.values():
        s.observe(redraw, names="value")
    redraw()
    return ipw.VBox([ipw.HBox(list(sliders.values())), out])
