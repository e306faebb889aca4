"""Sphinx configuration of toysim's documentation (``sphinx-build -W --keep-going -b html docs docs/_build/html``).

Sphinx + myst-nb, as optax and dynamax do: the tutorials are MyST markdown notebooks (text files
that diff like code) executed at every build, with errors not allowed, so an example cannot go
stale. Formulas are rendered by MathJax 3 shipped inside the ``sphinx-mathjax-offline`` package and
copied into the built site, so the site works from a local file with no network.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)  # the checkout's toysim, proofs_check and figures, also without pip install
# the executed notebooks run in a kernel of their own: make it import the same checkout
os.environ["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
os.environ.setdefault("TOYSIM_DEMO_STATIC", "1")  # the built demo page is static (no widget JS)
# compiled JAX programs of the tutorials are kept between builds (a warm build is much faster)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, "docs", "_build", ".jax_cache"))

project = "toysim"
author = "the toysim authors"
copyright = "toysim authors, Apache-2.0"  # noqa: A001

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",
]

# --- MyST / notebooks
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "force"  # every notebook is run at every build
nb_execution_raise_on_error = True  # a broken example fails the build
nb_execution_timeout = 300
nb_execution_show_tb = True
nb_merge_streams = True
nb_execution_excludepatterns: list[str] = []

# --- API reference from the docstrings (Google style)
autodoc_default_options = {"members": False}
autodoc_typehints = "none"  # jaxtyping annotations are in the docstrings' words already
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autosummary_generate = False

# --- HTML
html_theme = "alabaster"
html_title = "toysim"
html_static_path = ["_static"]
html_theme_options = {
    "description": "An exact simulator for the theory of shallow safety alignment",
    "fixed_sidebar": True,
    "page_width": "1240px",
    "sidebar_width": "250px",
    "show_powered_by": False,  # no links outside the site
}
html_show_sphinx = False
html_show_sourcelink = False
html_copy_source = False

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "README.md"]
suppress_warnings = ["mystnb.unknown_mime_type"]
nitpicky = False


def _checks_as_written(app, what, name, obj, options, lines):
    """Show each ``proofs_check`` module's docstring as written (a literal block).

    Those docstrings are plain text with inline formulas, not reStructuredText; parsing them would
    turn a stray ``|x|`` or backquote into a build error unrelated to the documentation.
    """
    if what == "module" and name.startswith("proofs_check.") and lines:
        body = [line for line in lines]
        lines[:] = ["::", ""] + ["   " + line for line in body] + [""]


def setup(app):
    app.connect("autodoc-process-docstring", _checks_as_written)
    app.add_css_file("toysim.css")
