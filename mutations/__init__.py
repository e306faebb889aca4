"""A mutation suite for toysim: realistic bugs planted one at a time in a scratch copy of the
project, each run against ``toysim check`` (issue 16, item 7).

``python -m mutations [--list] [--only NAME ...] [--checks CHECK ...] [--seed S]``; the catalog is
:data:`mutations.catalog.MUTANTS`. A mutant is *killed* when a theorem check of ``toysim check``
fails (or a check errors) on the mutated copy, and *survives* when every check holds.
"""

from .catalog import MUTANTS as MUTANTS
from .catalog import Mutant as Mutant
from .runner import apply_mutant as apply_mutant
from .runner import run_mutant as run_mutant
from .runner import scratch_copy as scratch_copy

__all__ = ["MUTANTS", "Mutant", "apply_mutant", "run_mutant", "scratch_copy"]
