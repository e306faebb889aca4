"""The mutation suite (``python -m mutations``): the catalog never goes stale, and the machinery
kills a planted bug end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from mutations import MUTANTS, apply_mutant, run_mutant, scratch_copy
from mutations.__main__ import main
from proofs_check._runner import select

ROOT = Path(__file__).resolve().parent.parent
BY_NAME = {m.name: m for m in MUTANTS}

# Reported by a reviewer: each must be in the catalog.
REQUIRED = (
    "fisher_tabular_uncentred",
    "cov_sq_norm_square_of_sum",
    "sampling_baseline_includes_sample",
    "tau_off_by_one",
    "dp_drop_last_partial_chunk",
    "second_order_ratio_missing_2",
    "dp_prefill_depth_off_by_one",
    "recovery_harmful_q_unconditioned",
)
LIBRARY_MODULES = (
    "_engine",
    "_enumerate",
    "_martingale",
    "_gradient",
    "_horizon",
    "_equilibrium",
    "_policies",
    "_harms",
    "_dp",
    "_dp_recovery",
    "_recovery",
    "_training",
    "_sampling",
    "_analysis",
    "_objectives",
    "_reports",
)


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_old_text_occurs_exactly_once(mutant):
    text = (ROOT / mutant.file).read_text(encoding="utf-8")
    assert text.count(mutant.old) == 1, f"{mutant.name}: the catalog is stale for {mutant.file}"
    assert mutant.new != mutant.old
    assert mutant.description and mutant.file.startswith("toysim/")


def test_catalog_covers_every_module_and_the_reported_bugs():
    assert len(MUTANTS) >= 20
    assert len(BY_NAME) == len(MUTANTS), "mutant names must be unique"
    assert set(REQUIRED) <= set(BY_NAME)
    assert set(LIBRARY_MODULES) <= {Path(m.file).stem for m in MUTANTS}
    for m in MUTANTS:
        select(list(m.checks))  # raises ValueError on an unknown check name


def test_apply_refuses_a_stale_mutant(tmp_path):
    scratch_copy(tmp_path)
    mutant = BY_NAME["tilt_wrong_sign"]
    apply_mutant(mutant, tmp_path)
    assert mutant.new in (tmp_path / mutant.file).read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="occurs 0 times"):
        apply_mutant(mutant, tmp_path)  # already applied: the old text is gone
    assert (ROOT / mutant.file).read_text(encoding="utf-8").count(mutant.old) == 1  # the tree is untouched


def test_list_and_bad_name(capsys):
    assert main(["--list"]) == 0
    assert "tau_off_by_one" in capsys.readouterr().out
    assert main(["--only", "no_such_mutant"]) == 2
    assert "no_such_mutant" in capsys.readouterr().err


def test_one_mutant_is_killed_end_to_end():
    """Var(h) uncentred: `toysim check`'s harm_information (Σ_t I_t = Var h) must fail on the copy."""
    outcome = run_mutant(BY_NAME["martingale_uncentred_variance"], checks=("harm_information",), timeout=900)
    assert outcome.killed, outcome.verdict
    assert outcome.check == "harm_information"
    assert outcome.checks_run == 1
    assert outcome.verdict.startswith("FAILS"), outcome.verdict  # a failing theorem, not a setup error
    # the control: the same run on the unmutated copy holds (float64 and the cache set up as the CLI)
    control = run_mutant(None, checks=("harm_information",), timeout=900)
    assert not control.killed, control.verdict
    assert control.checks_run == 1
