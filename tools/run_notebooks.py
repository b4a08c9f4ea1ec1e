"""Execute book notebooks in place on the sample world, so their stored outputs are current.

Usage: ``python tools/run_notebooks.py [book/x.ipynb ...]`` (default: every ``book/*.ipynb``);
``make notebooks`` runs it. Outputs are what readers see and what nbval compares against, so run
this after changing a notebook or anything its outputs depend on, and commit the result.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def run(path: Path) -> float:
    """Execute the notebook at *path* in its own folder and write it back; return seconds."""
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in nb.cells:  # execution timestamps would change every run
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)
    return time.perf_counter() - started


def main(argv: list[str]) -> int:
    book = Path(__file__).resolve().parent.parent / "book"
    paths = [Path(a) for a in argv] or sorted(book.glob("*.ipynb"))
    for path in paths:
        print(f"{path}: {run(path.resolve()):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
