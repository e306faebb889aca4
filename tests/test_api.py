"""The public API: every exported name exists and is documented."""

import ast
import inspect
import pathlib

import pytest

import toysim


def test_every_public_name_has_a_docstring():
    missing = [
        name
        for name in toysim.__all__
        if not inspect.getdoc(getattr(toysim, name)) or len(inspect.getdoc(getattr(toysim, name))) < 20
    ]
    assert missing == []


def test_all_is_sorted_and_complete():
    assert list(toysim.__all__) == sorted(toysim.__all__)
    for name in toysim.__all__:
        assert hasattr(toysim, name)


# --------------------------------------------------------------------------- layering

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _python_files(*folders: str) -> list[pathlib.Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Every module an ``import``, ``from ... import`` or ``importlib.import_module("...")`` names,
    with its line; ``from a import b`` counts as ``a.b`` too (``b`` may be a submodule)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Attribute, ast.Name))
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def _private_toysim_uses(source: str) -> list[str]:
    """Where ``source`` reaches a private part of toysim: a ``toysim._x`` module imported in any form,
    a private name imported from ``toysim``, or an attribute ``_x`` read off the ``toysim`` module."""
    tree = ast.parse(source)
    uses = [
        f"line {line}: {name}"
        for line, name in _imported_modules(tree)
        if name.split(".")[0] == "toysim" and any(part.startswith("_") for part in name.split(".")[1:])
    ]
    toysim_names = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name == "toysim"
    }
    uses += [
        f"line {node.lineno}: {node.value.id}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in toysim_names
        and node.attr.startswith("_")
        and not (node.attr.startswith("__") and node.attr.endswith("__"))  # toysim.__version__, __all__
    ]
    return uses


@pytest.mark.parametrize(
    "source",
    [
        "from toysim._recovery import train_deep",
        "from toysim import _recovery as rc",
        "import toysim._sampling",
        "import toysim as ts\nts._enumerate.level_weights",
        "import importlib\nimportlib.import_module('toysim._dp')",
    ],
)
def test_private_use_detector_catches(source):
    assert _private_toysim_uses(source) != []


def test_private_use_detector_allows_public_names():
    assert (
        _private_toysim_uses("import toysim\nfrom toysim import forward\ntoysim.tilt, toysim.__version__")
        == []
    )


def test_checks_and_figures_use_only_public_names():
    """proofs_check/ and figures/ are clients of the library: they read its public API only."""
    offenders = {
        str(path.relative_to(ROOT)): uses
        for path in _python_files("proofs_check", "figures")
        if (uses := _private_toysim_uses(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}


def test_library_does_not_import_checks_or_figures():
    """The library stands alone; only the command-line modules ``toysim/_cli*.py`` (which run the
    checks and draw the figures) may import ``proofs_check`` or ``figures``."""
    offenders = {
        str(path.relative_to(ROOT)): [
            f"line {line}: {name}"
            for line, name in _imported_modules(ast.parse(path.read_text(encoding="utf-8")))
            if name.split(".")[0] in ("proofs_check", "figures")
        ]
        for path in _python_files("toysim")
        if not (path.parent == ROOT / "toysim" and path.name.startswith("_cli"))
    }
    assert {path: uses for path, uses in offenders.items() if uses} == {}
