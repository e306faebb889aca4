"""The documentation's sources stay in step with the code (fast, no Sphinx needed).

The full build (``sphinx-build -W`` with every tutorial executed) and the link check of the built
site run in ``.ci/run`` after the tests; here: the API page lists exactly the public names, the
mathematics page keeps its numbered anchors, tutorials use only public names and float64, nothing
links outside the repository, and the site checker catches what it must.
"""

import os
import re

import pytest

import toysim
from toysim import teaching

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
NOTEBOOKS = sorted(
    os.path.join(folder, name)
    for sub in ("tutorials", "solutions")
    for folder in [os.path.join(DOCS, sub)]
    for name in os.listdir(folder)
    if name.endswith(".md") and name != "index.md"
)
TUTORIALS = [
    "01_martingale",
    "02_gradient_horizon",
    "03_kl_information",
    "04_prefilling",
    "05_automaton_dp",
    "06_your_own_check",
]


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_api_page_documents_exactly_the_public_names():
    text = _read(os.path.join(DOCS, "api.md"))
    documented = re.findall(r"^\.\. auto(?:function|class|data):: (\w+)$", text, flags=re.M)
    assert len(documented) == len(set(documented)), "a name is documented twice"
    public = set(toysim.__all__) - {"teaching"}  # the module has its own page, docs/teaching.md
    assert set(documented) == public, (
        f"missing from docs/api.md: {sorted(public - set(documented))}; "
        f"stale in docs/api.md: {sorted(set(documented) - public)}"
    )
    assert "automodule:: toysim.teaching" in _read(os.path.join(DOCS, "teaching.md"))


def test_theory_page_keeps_sections_1_to_11_with_stable_anchors():
    text = _read(os.path.join(DOCS, "theory.md"))
    labels = re.findall(r"^\((s\d+)\)=\n## §(\d+) ", text, flags=re.M)
    assert [label for label, _ in labels] == [f"s{n}" for n in range(1, 12)]
    assert [int(n) for _, n in labels] == list(range(1, 12))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: os.path.relpath(p, DOCS))
def test_notebooks_use_public_names_and_float64(path):
    text = _read(path)
    code = "\n".join(re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", text, flags=re.S))
    assert code, "no code cells"
    first_import = code.index("import toysim") if "import toysim" in code else len(code)
    assert 'jax.config.update("jax_enable_x64", True)' in code[:first_import], "float64 must be on first"
    for name in re.findall(r"\btoysim\.(\w+)", code):
        if name != "teaching":
            assert name in toysim.__all__, f"toysim.{name} is not a public name"
    for name in re.findall(r"\btoysim\.teaching\.(\w+)", code):
        assert name in teaching.__all__, f"toysim.teaching.{name} is not public"
    for names in re.findall(r"^from toysim\.teaching import (.+)$", code, flags=re.M):
        for name in names.split(","):
            assert name.strip() in teaching.__all__, name
    for names in re.findall(r"^from toysim import (.+)$", code, flags=re.M):
        for name in names.split(","):
            assert name.strip() in toysim.__all__, name


def test_every_tutorial_has_exercises_and_separate_solutions():
    for name in TUTORIALS:
        tutorial = _read(os.path.join(DOCS, "tutorials", f"{name}.md"))
        assert re.search(r"^## Exercises?$", tutorial, flags=re.M), name
        assert "= None" in tutorial, f"{name}: exercises leave a placeholder for the answer"
        solution = _read(os.path.join(DOCS, "solutions", f"{name}.md"))
        assert "check" in solution, name
    index = _read(os.path.join(DOCS, "tutorials", "index.md"))
    for name in TUTORIALS + ["demo"]:
        assert f"\n{name}\n" in index, f"{name} missing from the tutorials' table of contents"


def _project_text_files():
    for folder in ("docs", "toysim"):
        for dirpath, dirnames, files in os.walk(os.path.join(ROOT, folder)):
            dirnames[:] = [d for d in dirnames if not d.startswith(("_build", "__pycache__", "."))]
            for name in files:
                if name.endswith((".md", ".py", ".css")):
                    yield os.path.join(dirpath, name)
    yield os.path.join(ROOT, "README.md")


def test_nothing_in_the_docs_or_readme_links_outside_the_repository():
    offenders = []
    for path in _project_text_files():
        for match in re.finditer(r"https?://\S+", _read(path)):
            offenders.append(f"{os.path.relpath(path, ROOT)}: {match.group(0)}")
    assert offenders == []


def test_readme_links_resolve_inside_the_repository():
    text = _read(os.path.join(ROOT, "README.md"))
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        assert not target.startswith(".."), f"README links outside the repository: {target}"
        assert os.path.exists(os.path.join(ROOT, target)), f"README links to a missing file: {target}"
    assert 'pip install -e ".[docs]" && sphinx-build -W --keep-going -b html docs docs/_build/html' in text
    assert "docs/theory.md" in text


# ---------------------------------------------------------------- the site checker itself


def _site(tmp_path, pages):
    for rel, body in pages.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<html><body>{body}</body></html>", encoding="utf-8")
    (tmp_path / "_static" / "mathjax").mkdir(parents=True, exist_ok=True)
    (tmp_path / "_static" / "mathjax" / "tex-chtml.js").write_text("// mathjax", encoding="utf-8")
    return str(tmp_path)


def _check_site():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_site", os.path.join(DOCS, "check_site.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.check_site


def test_site_checker_accepts_a_good_site(tmp_path):
    root = _site(
        tmp_path,
        {
            "index.html": '<a href="theory.html#s4">§4</a><a href="sub/page.html">p</a><script src="_static/mathjax/tex-chtml.js?v=1"></script>',
            "theory.html": '<section id="s4"><a href="#s4">here</a></section>',
            "sub/page.html": '<a href="../index.html">up</a><img src="../_static/mathjax/tex-chtml.js">',
        },
    )
    assert _check_site()(root) == []


@pytest.mark.parametrize(
    "body, needle",
    [
        ('<a href="missing.html">x</a>', "broken link missing.html"),
        ('<a href="theory.html#s11">x</a>', "broken anchor theory.html#s11"),
        ('<script src="https://cdn.example/mathjax.js"></script>', "loads a resource outside the site"),
        ('<a href="http://example.org/paper">x</a>', "links to a resource outside the site"),
    ],
)
def test_site_checker_catches_planted_problems(tmp_path, body, needle):
    root = _site(tmp_path, {"index.html": body, "theory.html": '<p id="s4"></p>'})
    problems = _check_site()(root)
    assert len(problems) == 1 and needle in problems[0], problems


def test_site_checker_needs_the_offline_math_renderer(tmp_path):
    root = _site(tmp_path, {"index.html": "<p>x</p>"})
    os.remove(os.path.join(root, "_static", "mathjax", "tex-chtml.js"))
    assert any("formulas would not render offline" in p for p in _check_site()(root))
