"""Link checker for the built documentation site (run after ``sphinx-build``; part of ``.ci/run``).

Usage: ``python docs/check_site.py [docs/_build/html]``. Exit 0 iff

* every local ``href`` / ``src`` of every HTML page points to a file of the site, and every
  ``#fragment`` to an ``id`` (or ``name``) on the target page;
* no page loads anything from outside the site (``<script src>``, ``<link href>``, ``<img src>``
  starting with ``http:``, ``https:`` or ``//``): the site must work from a local file, offline;
* no page links outside the repository except the few plain ``http`` links it is allowed to carry
  (none today): external ``<a href>`` are reported too;
* the formulas' renderer (MathJax, shipped by ``sphinx-mathjax-offline``) is in the site.

Problems are printed one per line as ``page: what``.
"""

from __future__ import annotations

import os
import sys
from html.parser import HTMLParser
from urllib.parse import unquote, urldefrag, urlsplit

EXTERNAL = ("http:", "https:", "//", "ftp:")


class _Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value)

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value is None:
                continue
            if name in ("id", "name"):
                self.ids.add(value)
            if name in ("href", "src"):
                self.links.append((tag, name, value))


def _parse(path: str) -> _Page:
    page = _Page()
    with open(path, encoding="utf-8") as f:
        page.feed(f.read())
    return page


def check_site(root: str) -> list[str]:
    """Every problem of the built site under ``root``, as ``"page: what"`` lines."""
    root = os.path.abspath(root)
    if not os.path.isfile(os.path.join(root, "index.html")):
        return [f"{root}: no index.html (build the site first)"]
    pages: dict[str, _Page] = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".html"):
                path = os.path.join(folder, name)
                pages[path] = _parse(path)
    problems = []
    for path, page in sorted(pages.items()):
        rel = os.path.relpath(path, root)
        for tag, attr, value in page.links:
            if value.startswith(("mailto:", "data:", "javascript:")):
                continue
            if value.lower().startswith(EXTERNAL):
                kind = "loads" if tag != "a" else "links to"
                problems.append(f"{rel}: <{tag} {attr}> {kind} a resource outside the site: {value}")
                continue
            target, fragment = urldefrag(value)
            target = urlsplit(target).path  # drop a cache-busting query (?v=...)
            target_path = (
                path if not target else os.path.normpath(os.path.join(os.path.dirname(path), unquote(target)))
            )
            if os.path.isdir(target_path):
                target_path = os.path.join(target_path, "index.html")
            if not os.path.exists(target_path):
                problems.append(f"{rel}: broken link {value} (no file {os.path.relpath(target_path, root)})")
                continue
            if fragment and target_path.endswith(".html"):
                target_page = pages.get(target_path) or _parse(target_path)
                if unquote(fragment) not in target_page.ids:
                    problems.append(f"{rel}: broken anchor {value} (no id {fragment!r} on the target page)")
    if not os.path.isfile(os.path.join(root, "_static", "mathjax", "tex-chtml.js")):
        problems.append("_static/mathjax/tex-chtml.js: missing (formulas would not render offline)")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build", "html")
    problems = check_site(root)
    for line in problems:
        print(line)
    n = sum(1 for _ in os.walk(root))
    print(f"check_site: {len(problems)} problem(s) in {root} ({n} folders)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
