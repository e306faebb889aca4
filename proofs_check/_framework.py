"""What a theorem check is.

Each module of ``proofs_check`` (one per result of docs/theory.md) defines ``CHECKS``: a list of
:class:`Check` objects. A check draws instances from a hypothesis strategy, computes the quantities
the result speaks about (``compute``), and reduces them to one non-negative *residual* that is zero
(up to the stated tolerance) when the result holds. ``corruptions`` are the negative controls: each
turns correct quantities into deliberately wrong ones for which the residual must exceed the
tolerance, proving that the check can fail.

A check of kind ``"finding"`` measures something that is not a theorem (for example spillover of
shared parameters beyond the horizon): its residual is the measured value and its verdict is
"measured: <worst value>", never "holds".

Inputs. ``instances()`` may draw a bare :class:`toysim.Instance` or any richer object. The runner
(``proofs_check._runner``) writes a failing input as a ``toysim.instance/1`` file, so a richer
input must expose the instance it is about, found by :func:`instance_of` in this order: the input
itself if it is an ``Instance``; its attribute ``.instance``; its first element if it is a tuple
or list whose first element is an ``Instance``. An input exposing none is still checked, but its
counterexample can only be printed, not written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from hypothesis.strategies import SearchStrategy

Quantities = dict[str, Any]


def instance_of(value: Any):
    """The :class:`toysim.Instance` a check input is about, or ``None`` (see the module docstring)."""
    from toysim import Instance

    if isinstance(value, Instance):
        return value
    inner = getattr(value, "instance", None)
    if isinstance(inner, Instance):
        return inner
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Instance):
        return value[0]
    return None


@dataclasses.dataclass(frozen=True)
class Check:
    """One executable result of docs/theory.md.

    Attributes:
      name: short identifier used on the command line (``toysim check --only NAME``).
      result: the paper's label, e.g. ``"[Thm 8]"``, or ``"(ours)"``.
      section: the docs/theory.md section, e.g. ``"§4"``.
      statement: the result in words.
      latex: the result in LaTeX.
      kind: ``"theorem"`` (must hold) or ``"finding"`` (a measurement).
      tolerance: the residual below which the result counts as holding.
      tolerance_reason: why that tolerance (float64 rounding, finite differences, optimiser
        precision, ...).
      instances: a zero-argument function returning the hypothesis strategy of inputs.
      compute: ``input -> quantities`` (a dict of arrays / floats).
      residual: ``quantities -> float``, ``>= 0``; ``<= tolerance`` iff the result holds.
      corruptions: negative controls, name -> ``quantities -> wrong quantities``.
      applies_to: the instance families, in words (shown in the report).
      examples: examples per run in the ``ci`` profile (``thorough`` multiplies it by 10).
      exercised: ``quantities -> bool``, whether an input exercised the statement (for example,
        for "``G_t = 0`` past the horizon ``k``", whether ``k < T``, so that some position lies
        past it). ``None`` for a check that is never vacuous: every input counts. The runner counts
        the exercising inputs and ``toysim check`` shows the count next to the inputs tried.
    """

    name: str
    result: str
    section: str
    statement: str
    latex: str
    kind: str
    tolerance: float
    tolerance_reason: str
    instances: Callable[[], SearchStrategy]
    compute: Callable[[Any], Quantities]
    residual: Callable[[Quantities], float]
    corruptions: dict[str, Callable[[Quantities], Quantities]]
    applies_to: str
    examples: int = 30
    exercised: Callable[[Quantities], bool] | None = None

    def __post_init__(self):
        if self.kind not in ("theorem", "finding"):
            raise ValueError(f"check {self.name}: kind must be 'theorem' or 'finding'")
        if self.kind == "theorem" and not self.corruptions:
            raise ValueError(f"check {self.name}: a theorem check needs at least one negative control")

    def evaluate(self, instance: Any) -> float:
        """The residual of one input."""
        return self.assess(instance)[0]

    def assess(self, instance: Any) -> tuple[float, bool]:
        """The residual of one input and whether the input exercised the statement."""
        quantities = self.compute(instance)
        used = True if self.exercised is None else bool(self.exercised(quantities))
        return float(self.residual(quantities)), used
