"""Every figure of the book explains itself: a caption and alt text, and the sample's mark inside it.

myst-nb 1.x renders a code cell's image output as a ``<figure>`` with a ``<figcaption>`` when the
cell's metadata has ``mystnb: {figure: {caption, name}}``, and gives the ``<img>`` the ``alt`` of
``mystnb: {image: {alt}}`` (without it, the alt text is the image's file path). The figure context
wraps every rich output of the cell, so a figure cell shows nothing else rich (a table after a
figure would become a second figure under the same name). Text drawn by matplotlib is not in the
stored PNG, so the "synthetic sample" mark is checked on the cell's source: a plotting cell calls
``plots.mark_synthetic(..., data_source)`` (which draws only when the data are the sample's), or a
helper it calls does.
"""

from __future__ import annotations

import re

import nbformat
import pytest
from support.notebooks import BOOK

CHAPTERS = sorted(p.stem for p in BOOK.glob("*.ipynb"))
#: A figure's name: a MyST target, unique in the book.
NAME = re.compile(r"fig-[a-z0-9-]+")
MARK = re.compile(r"plots\.mark_synthetic\([^)]*data_source")


def _figure_cells(chapter: str) -> list:
    nb = nbformat.read(BOOK / f"{chapter}.ipynb", as_version=4)
    return [c for c in nb.cells if c.cell_type == "code"
            and any(k.startswith("image/") for o in c.get("outputs", []) for k in o.get("data", {}))]


def _helpers(chapter: str) -> str:
    """The source of the chapter's code cells that define functions (a plotting helper marks for its callers)."""
    nb = nbformat.read(BOOK / f"{chapter}.ipynb", as_version=4)
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code" and "\ndef " in "\n" + c.source)


def test_every_chapter_has_figures():
    """The test looks at something: every chapter stores at least one figure."""
    assert all(_figure_cells(c) for c in CHAPTERS), {c: len(_figure_cells(c)) for c in CHAPTERS}


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_figures_have_caption_name_and_alt_text(chapter):
    """Each figure cell has a caption, a fig- name and alt text in its mystnb metadata, and one rich output."""
    problems = []
    for cell in _figure_cells(chapter):
        where = cell.source.strip().splitlines()[0][:60]
        options = cell.metadata.get("mystnb", {})
        caption = options.get("figure", {}).get("caption", "")
        name = options.get("figure", {}).get("name", "")
        alt = options.get("image", {}).get("alt", "")
        if len(caption.split()) < 8:
            problems.append(f"{where}: no caption (mystnb.figure.caption) of a sentence or more")
        if not NAME.fullmatch(name):
            problems.append(f"{where}: no figure name like 'fig-...' (mystnb.figure.name), got {name!r}")
        if len(alt.split()) < 5 or alt.endswith(".png"):
            problems.append(f"{where}: no alt text saying what the image shows (mystnb.image.alt)")
        rich = [o for o in cell.outputs if o.get("output_type") in ("display_data", "execute_result")]
        if len(rich) != 1:
            problems.append(f"{where}: {len(rich)} rich outputs; a figure cell shows the figure only "
                            "(move tables to the next cell)")
    assert not problems, "\n".join(problems)


def test_figure_names_are_unique():
    """A figure name is a target of the whole book: no two figures share one."""
    names = [c.metadata.get("mystnb", {}).get("figure", {}).get("name") for ch in CHAPTERS for c in _figure_cells(ch)]
    names = [n for n in names if n]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_figures_mark_the_sample_as_synthetic(chapter):
    """Every figure cell marks the sample's data inside the figure: plots.mark_synthetic(..., data_source)."""
    helpers = _helpers(chapter)
    marking = {m.group(1) for m in re.finditer(r"def (\w+)\(", helpers)
               if MARK.search(helpers[m.start():].split("\ndef ", 2)[0] if helpers[m.start():] else "")}
    unmarked = []
    for cell in _figure_cells(chapter):
        calls_helper = any(re.search(rf"\b{name}\(", cell.source) for name in marking)
        if not (MARK.search(cell.source) or calls_helper):
            unmarked.append(cell.source.strip().splitlines()[0][:60])
    assert not unmarked, f"figure cells without plots.mark_synthetic(..., data_source): {unmarked}"
