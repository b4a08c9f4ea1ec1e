"""Running the book's chapters in tests: find one, read its parameters, run it with papermill, read outputs.

Shared by ``book/test_parameters.py`` and ``test_mirror.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import papermill as pm
import pytest

__all__ = ["BOOK", "chapter", "parameters_of", "run_chapter", "stored", "text_of"]

#: The book's folder.
BOOK = Path(__file__).resolve().parents[2] / "book"


def chapter(name: str) -> Path:
    """The chapter's notebook, or skip the test if it does not exist yet."""
    path = BOOK / f"{name}.ipynb"
    if not path.exists():
        pytest.skip(f"book/{name}.ipynb does not exist yet")
    return path


def parameters_of(path: Path) -> dict[str, object]:
    """The defaults in the cell tagged ``parameters`` (names -> literal values)."""
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name} needs exactly one cell tagged 'parameters' (has {len(cells)})"
    out = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = ast.literal_eval(node.value)
    assert out.get("data_source") == "sample", f"{path.name}: data_source must default to 'sample'"
    return out


def run_chapter(path: Path, workdir: Path, /, **parameters) -> nbformat.NotebookNode:
    """Execute *path* with papermill and *parameters*; return the executed notebook."""
    out = workdir / f"{path.stem}.out.ipynb"
    pm.execute_notebook(str(path), str(out), parameters=parameters, cwd=str(path.parent),
                        kernel_name="python3", progress_bar=False, log_output=False)
    nb = nbformat.read(out, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected, "papermill did not inject the parameters (is the parameters cell tagged?)"
    return nb


def text_of(nb: nbformat.NotebookNode, needle: str) -> str:
    """The text outputs (stream, text/plain, errors) of the first code cell containing *needle*."""
    for cell in nb.cells:
        if cell.cell_type == "code" and needle in cell.source:
            parts = []
            for o in cell.get("outputs", []):
                if o.output_type == "stream":
                    parts.append(o.text)
                elif o.output_type in ("execute_result", "display_data"):
                    parts.append(o.get("data", {}).get("text/plain", ""))
                elif o.output_type == "error":
                    parts.append(f"{o.ename}: {o.evalue}")
            return "".join(parts)
    raise AssertionError(f"no code cell contains {needle!r}")


def stored(path: Path) -> nbformat.NotebookNode:
    """The chapter as committed (outputs of the default parameters)."""
    return nbformat.read(path, as_version=4)
