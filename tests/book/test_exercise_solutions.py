"""The exercise solutions run, and give what the text of each solution says they give.

Each chapter is executed (papermill, sample world) with the code of its solutions appended as cells;
the outcome a solution's text claims is then checked against what that code printed.
"""

from __future__ import annotations

import re

import nbformat
import pytest
from support.notebooks import chapter, run_chapter, text_of

pytestmark = pytest.mark.slow


def solutions(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """(code, text) of each solution dropdown: fenced (``` or ~~~) or indented code, and the prose."""
    found = []
    for cell in nb.cells:
        if cell.cell_type != "markdown" or "{admonition} Solution" not in cell.source:
            continue
        body = cell.source
        fenced = re.findall(r"(?ms)^(?:```|~~~)python\n(.*?)^(?:```|~~~)\s*$", body)
        if fenced:
            code = "\n".join(fenced)
        else:
            code = "\n".join(line[4:] for line in body.splitlines() if line.startswith("    "))
        assert code.strip(), f"a solution without code: {body[:120]}"
        found.append((code, body))
    return found


def run_with_solutions(name: str, tmp_path) -> tuple[nbformat.NotebookNode, list[tuple[str, str]]]:
    """Execute the chapter with its solutions appended; return it and the solutions."""
    path = chapter(name)
    nb = nbformat.read(path, as_version=4)
    found = solutions(nb)
    for i, (code, _) in enumerate(found, 1):
        nb.cells.append(nbformat.v4.new_code_cell(f"# solution {i}\n{code}"))
    copy = tmp_path / path.name
    nbformat.write(nb, copy)
    return run_chapter(copy, tmp_path, cache_dir=str(tmp_path / "cache")), found


def test_gene_extraction_solutions(tmp_path):
    """Slc6a5 peaks in GABA-Glyc cells; raw and log2 share their zeros; the parallel run is identical."""
    nb, found = run_with_solutions("gene_extraction", tmp_path)
    assert len(found) == 3
    top = text_of(nb, "# solution 1")
    assert "the GABA-Glyc cells come first" in found[0][1]
    assert top.split("\n")[1].split()[0] == "GABA-Glyc", top  # the first row after the header line
    assert "The zeros match" in found[1][1] and "same zeros: True" in text_of(nb, "# solution 2")
    assert 'gene_index="off"' in found[2][0] and "use_gene_index" not in found[2][0]
    assert text_of(nb, "# solution 3").strip().endswith("True")


def test_ish_grids_solutions(tmp_path):
    """The brightest voxel is found again in PIR; Ppp1r1b's neighbours are as the text says; -1 in one half."""
    nb, found = run_with_solutions("ish_grids", tmp_path)
    assert len(found) == 3
    assert text_of(nb, "# solution 1").strip().endswith("True")
    printed = text_of(nb, "# solution 2")
    genes = re.findall(r"^\s*\d+\s+\d+\s+\d+\s+(\w+)", printed, re.MULTILINE)  # index, rank, id, gene
    assert genes[0] == "Penk" and sorted(genes[:3]) == ["Penk", "Penk", "Ppp1r1b"], printed
    assert ("the top three are the second *Ppp1r1b* experiment and the two experiments of *Penk*"
            in found[1][1]) and "one *Penk* experiment ranks first" in found[1][1]
    assert text_of(nb, "# solution 3").strip().endswith("True")
