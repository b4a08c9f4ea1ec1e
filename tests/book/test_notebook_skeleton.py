"""Every chapter follows one skeleton (Project Pythia's, with parameters and hidden solutions).

Title; Overview; Prerequisites with the time to learn and the data size; Parameters (the papermill
cell); Imports, opened by the Colab install cell of ``tools/colab_cell.py``; the narrative sections;
Summary with "What's next?"; Exercises whose solutions are hidden (a dropdown); Resources and
references with full https links; Run information, printed by the chapter's last cell.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

BOOK = Path(__file__).resolve().parents[2] / "book"
CHAPTERS = sorted(BOOK.glob("*.ipynb"))
COLAB_CELL = BOOK.parent / "tools" / "colab_cell.py"
#: The second-level sections every chapter opens and closes with, in this order.
OPENING = ["Overview", "Prerequisites", "Parameters", "Imports"]
CLOSING = ["Summary", "Exercises", "Resources and references", "Run information"]
#: The chapter's last cell: the run information of its data source (and of the caches it used).
RUN_INFORMATION = re.compile(r"print\(run_information\(data_source(, \w+|, \[\w+(, \w+)*\])?\)\)")


def _colab_code() -> str:
    """The Colab install cell: the code of ``tools/colab_cell.py`` below its docstring."""
    text = COLAB_CELL.read_text()
    docstring_end = ast.parse(text).body[0].end_lineno
    return "\n".join(text.splitlines()[docstring_end:]).strip()


def _markdown_lines(text: str) -> list[str]:
    """The lines of a markdown cell outside fenced code blocks (``` or ~~~)."""
    lines, fence = [], None
    for line in text.splitlines():
        mark = re.match(r"^\s*(```+|~~~+)", line)
        if mark:
            if fence is None:
                fence = mark.group(1)[:3]
            elif mark.group(1).startswith(fence):
                fence = None
            continue
        if fence is None:
            lines.append(line)
    return lines


class Section:
    """One level-2 section: its heading, its markdown text and its code cells."""

    def __init__(self, heading: str) -> None:
        self.heading, self.lines, self.code = heading, [], []

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _sections(nb) -> dict[str, Section]:
    """The level-2 sections by heading, in order (text before the first one is under ``""``)."""
    out = {"": Section("")}
    current = out[""]
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            current.code.append(cell)
            continue
        for line in cell.source.splitlines():
            if line.startswith("## ") and line in _markdown_lines(cell.source):
                current = out.setdefault(line[3:].strip(), Section(line[3:].strip()))
            else:
                current.lines.append(line)
    return out


@pytest.fixture(params=CHAPTERS, ids=[p.stem for p in CHAPTERS])
def nb(request):
    return nbformat.read(request.param, as_version=4)


def test_one_title_first(nb):
    """The first cell opens with the one level-1 title; no other level-1 heading."""
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    titles = [line for c in nb.cells if c.cell_type == "markdown"
              for line in _markdown_lines(c.source) if line.startswith("# ")]
    assert len(titles) == 1, titles


def test_sections_in_order(nb):
    """Overview, Prerequisites, Parameters, Imports first; Summary, Exercises, Resources last."""
    headings = list(_sections(nb))[1:]
    assert headings[:len(OPENING)] == OPENING, headings
    assert headings[-len(CLOSING):] == CLOSING, headings
    assert len(headings) > len(OPENING) + len(CLOSING), "no narrative sections"


def test_prerequisites_give_time_and_data_size(nb):
    """The prerequisites table, the time to learn and the data size (sample and real)."""
    text = _sections(nb)["Prerequisites"].text
    assert re.search(r"\|\s*Concepts?\s*\|\s*Importance\s*\|\s*Notes\s*\|", text), "no prerequisites table"
    assert re.search(r"\*\*Time to learn\*\*", text), "no **Time to learn**"
    assert re.search(r"\*\*[^*]*[Dd]ata size[^*]*\*\*", text), "no **Data size**"
    assert "sample" in text.lower() and "real" in text.lower(), "data size for the sample and the real data"


def test_parameters_cell_then_imports(nb):
    """Under Parameters: the cell tagged ``parameters`` (data_source = "sample"); under Imports: the imports."""
    sections = _sections(nb)
    code = sections["Parameters"].code
    assert code and "parameters" in code[0].metadata.get("tags", []), "the first code cell is not tagged parameters"
    assert re.search(r'^data_source\s*=\s*"sample"', code[0].source, re.M)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert tagged == [code[0]], "exactly one parameters cell"
    imports = sections["Imports"].code
    assert len(imports) >= 2 and re.search(r"^(from|import) ", imports[1].source, re.M)
    before = [c for h in ("", "Overview", "Prerequisites") for c in sections[h].code]
    assert before == [], "code before the Parameters section"


def test_colab_cell_opens_the_imports(nb):
    """The Colab install cell, verbatim, is the first code cell after the parameters (before any import)."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert code[1].source.strip() == _colab_code(), "the Colab cell differs from tools/colab_cell.py"
    assert code[1] is _sections(nb)["Imports"].code[0]


def test_ends_with_run_information(nb):
    """The last cell prints the run information (versions, data source, release, date), executed."""
    section = _sections(nb)["Run information"]
    assert len(section.code) == 1 and section.code[0] is nb.cells[-1], "one code cell, the chapter's last"
    cell = nb.cells[-1]
    assert RUN_INFORMATION.fullmatch(cell.source.strip()), cell.source
    assert any(re.search(r"^from abc_helpers import[^)]*\brun_information\b", c.source, re.M)
               for c in _sections(nb)["Imports"].code), "run_information is not imported under Imports"
    text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")
    assert text.startswith("Run information (paste it into a bug report)\n"), "not executed"
    assert "  data source   sample (the synthetic sample world, offline)" in text


def test_summary_has_whats_next(nb):
    """The summary ends with what to read next."""
    assert re.search(r"^### What's next\?", _sections(nb)["Summary"].text, re.M)


def test_exercises_have_hidden_solutions(nb):
    """Numbered exercises, each solution in a dropdown (hidden until clicked)."""
    text = _sections(nb)["Exercises"].text
    exercises = re.findall(r"^\d+\. ", text, re.M)
    solutions = re.findall(r"^:class: dropdown", text, re.M)
    assert exercises, "no numbered exercises"
    assert solutions, "no hidden solution"


def test_resources_link_out_and_to_the_api(nb):
    """Resources cite with full https links and link the helpers to the API reference."""
    text = _sections(nb)["Resources and references"].text
    assert re.search(r"\]\(https://", text), "no https link"
    assert not re.search(r"\]\((?!https://|#|[\w./-]+\.md|[\w./-]+\.ipynb|[\w-]+\))", text), "a link without https://"
    assert "api.md" in text or "(api)" in text, "no link to the API reference"


def test_progress_bars_render_offline(nb):
    """``from tqdm import tqdm``, never ``tqdm.auto`` (its widget needs a CDN)."""
    assert not any("tqdm.auto" in c.source for c in nb.cells if c.cell_type == "code")
