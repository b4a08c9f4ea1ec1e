"""Execute book notebooks in place on the sample world, so their stored outputs are current.

Usage: ``python tools/run_notebooks.py [book/x.ipynb ...]`` (default: every ``book/*.ipynb``);
``make notebooks`` runs it. Outputs are what readers see and what nbval compares against, so run
this after changing a notebook or anything its outputs depend on, and commit the result.

Stored outputs are stored as a reader sees them in Jupyter: consecutive stream outputs of a cell
are merged, and the redraws of progress bars (text followed by a carriage return or backspaces)
are resolved, so a bar keeps only its final line (as nbval and myst-nb also read them).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

#: Text up to a carriage return that is not followed by a newline: overwritten on screen.
CARRIAGE_RETURN = re.compile(r"^.*\r(?=[^\n])", re.MULTILINE)
#: A character followed by a backspace: erased on screen.
BACKSPACE = re.compile(r"[^\n]\x08")


def as_displayed(text: str) -> str:
    """*text* as a terminal or Jupyter shows it: redrawn lines keep their last state."""
    previous = None
    while previous != text:
        previous, text = text, BACKSPACE.sub("", text)
    text = CARRIAGE_RETURN.sub("", text)
    # a bar cleared at the end (leave=False) leaves blanks and a carriage return: nothing shows
    return re.sub(r"(?m)^[ \t]*\r$\n?", "", text).replace("\r\n", "\n").rstrip("\r")


def coalesce_streams(outputs: list) -> list:
    """Merge consecutive stream outputs of the same name and resolve their redraws."""
    merged: list = []
    for output in outputs:
        if (output.get("output_type") == "stream" and merged
                and merged[-1].get("output_type") == "stream" and merged[-1]["name"] == output["name"]):
            merged[-1]["text"] += output["text"]
        else:
            merged.append(output)
    for output in merged:
        if output.get("output_type") == "stream":
            output["text"] = as_displayed(output["text"])
    return [o for o in merged if o.get("output_type") != "stream" or o["text"]]


def run(path: Path) -> float:
    """Execute the notebook at *path* in its own folder and write it back; return seconds."""
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in nb.cells:  # execution timestamps would change every run
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs = coalesce_streams(cell.outputs)
    nbformat.write(nb, path)
    return time.perf_counter() - started


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Re-execute the book's chapters in place "
                                     "(all of book/*.ipynb, or the ones named).")
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: all)")
    book = Path(__file__).resolve().parent.parent / "book"
    paths = parser.parse_args(argv).notebooks or sorted(book.glob("*.ipynb"))
    for path in paths:
        print(f"{path}: {run(path.resolve()):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
