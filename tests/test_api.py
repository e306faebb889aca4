"""The public API: every exported name exists and is documented."""

import inspect

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
