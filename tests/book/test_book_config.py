"""The book's pages are fresh: ``make book`` executes every notebook at every build.

Sphinx re-reads only the pages whose source changed, and myst-nb executes a notebook only when Sphinx
reads it; so ``execute_notebooks: force`` alone would keep the outputs of older package code on
pages whose ``.ipynb`` did not change. The ``book`` target therefore passes ``--all``.
"""

from __future__ import annotations

import re

import yaml
from support.notebooks import BOOK

ROOT = BOOK.parent


def _recipe(target: str) -> str:
    """The recipe lines of *target* in the Makefile."""
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert match, f"no '{target}' target in the Makefile"
    return match.group(1)


def test_every_build_executes_every_notebook():
    """execute_notebooks is force, and make book re-reads every page (--all): a package change shows."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "force"
    assert config["execute"]["allow_errors"] is False
    build = [line for line in _recipe("book").splitlines() if "jupyter-book build" in line]
    assert build and all(re.search(r"\s(--all|-a)\b", line) for line in build), build


def test_every_page_is_in_the_table_of_contents():
    """Every chapter and page of book/ is listed in _toc.yml (only_build_toc_files would drop it)."""
    toc = (ROOT / "_toc.yml").read_text()
    pages = sorted(p.stem for p in BOOK.iterdir() if p.suffix in (".ipynb", ".md"))
    missing = [page for page in pages if f"book/{page}" not in toc]
    assert not missing, missing
