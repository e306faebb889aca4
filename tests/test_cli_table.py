"""The command line's subcommand table: complete, truthful, and in the order of ``toysim --help``."""

import pathlib
import subprocess
import sys

import pytest

from toysim import _cli

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _names_added_by(entry) -> list[str]:
    sub = _cli._Parser(prog="toysim").add_subparsers(dest="command", parser_class=_cli._Parser)
    _cli.registrar(entry)(sub)
    return list(sub.choices)


def test_every_cli_module_is_in_the_table():
    modules = {f"toysim.{p.stem}" for p in (ROOT / "toysim").glob("_cli_*.py")}
    listed = {entry for _, entry in _cli.SUBCOMMANDS if isinstance(entry, str)}
    assert modules == listed


@pytest.mark.parametrize(
    "names, entry", _cli.SUBCOMMANDS, ids=lambda x: ",".join(x) if isinstance(x, tuple) else ""
)
def test_each_entry_registers_the_names_it_claims(names, entry):
    assert _names_added_by(entry) == list(names)


def test_help_lists_the_table_in_order():
    sub = next(a for a in _cli.build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == [name for names, _ in _cli.SUBCOMMANDS for name in names]


def test_building_the_parser_imports_neither_checks_nor_figures():
    """Subcommand modules are imported to build the parser; what they run stays lazy."""
    code = (
        "import sys; from toysim._cli import build_parser; build_parser(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'proofs_check', 'figures', 'matplotlib', 'hypothesis'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
