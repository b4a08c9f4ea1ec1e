"""The stored outputs of the chapters are clean: what a reader sees on the website, GitHub or Colab.

For every code cell of ``book/*.ipynb``: at most one progress line per top-level statement (a call
leaves one overall bar, its inner bars are cleared), bars stored as displayed (their redraws
resolved), no terminal escape codes, no temporary folders, no loopback addresses or ports; and
correctness lines are compared by nbval (a cell that hides its output from nbval prints nothing but
what varies from run to run). These are properties of the outputs, so they hold after any
re-execution (``make notebooks``).
"""

from __future__ import annotations

import ast
import itertools
import re
import tempfile

import nbformat
import pytest
from support.notebooks import BOOK

CHAPTERS = sorted(p.stem for p in BOOK.glob("*.ipynb"))

#: A tqdm line: "<desc>: 100%|██████████| 3/3 [00:00<00:00, 3.4it/s]" (any bar_format keeps "%|").
PROGRESS = re.compile(r"^.*\d+%\|.*\|.*$", re.MULTILINE)
#: Where temporary folders live: the system's and the usual POSIX / macOS / Windows ones.
TEMP_DIRS = sorted({tempfile.gettempdir(), "/tmp/", "/var/folders/", "AppData\\Local\\Temp"})
#: A loopback address, or any host with a port.
LOOPBACK = re.compile(r"\b(127\.\d+\.\d+\.\d+|localhost|0\.0\.0\.0|\[::1\])(:\d+)?\b|https?://[^/\s:]+:\d+")
#: A terminal escape sequence (colours, cursor movement).
ESCAPE = re.compile(r"\x1b\[|\x1b\]|\x1b")
#: Tags that hide a cell's output from nbval.
IGNORED = ("nbval-ignore-output", "nbval-skip")


def _cells(chapter: str) -> list:
    nb = nbformat.read(BOOK / f"{chapter}.ipynb", as_version=4)
    return [c for c in nb.cells if c.cell_type == "code"]


def _texts(cell) -> list[str]:
    """Every text a reader sees in the cell's outputs: streams, text and HTML data, errors."""
    out = []
    for o in cell.get("outputs", []):
        if o.output_type == "stream":
            out.append(o.text)
        elif o.output_type in ("execute_result", "display_data"):
            out.extend(v for k, v in o.get("data", {}).items() if k.startswith("text/") and isinstance(v, str))
        elif o.output_type == "error":
            out.append(f"{o.ename}: {o.evalue}\n" + "\n".join(o.get("traceback", [])))
    return out


def _statements(source: str) -> int:
    """Top-level statements of a cell (a line magic or a shell escape counts as one)."""
    try:
        return len(ast.parse(source).body)
    except SyntaxError:
        return len([line for line in source.splitlines() if line.strip()])


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_a_call_leaves_at_most_one_progress_line(chapter):
    """Each cell shows at most one progress line per top-level statement, and no bar twice."""
    for cell in _cells(chapter):
        lines = [line for text in _texts(cell) for line in PROGRESS.findall(text)]
        assert len(lines) <= _statements(cell.source), (cell.source[:80], lines)
        descriptions = [line.split("%|")[0].rsplit(":", 1)[0] for line in lines]
        assert len(descriptions) == len(set(descriptions)), (cell.source[:80], lines)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_streams_are_stored_as_displayed(chapter):
    """Consecutive streams are merged and redraws resolved: no carriage return or backspace is left."""
    for cell in _cells(chapter):
        outputs = cell.get("outputs", [])
        for before, after in itertools.pairwise(outputs):
            assert not (before.output_type == after.output_type == "stream" and before.name == after.name), \
                cell.source[:80]
        for o in outputs:
            if o.output_type == "stream":
                assert "\r" not in o.text and "\b" not in o.text, (cell.source[:80], o.text[:200])


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_no_escape_codes_temporary_folders_or_ports(chapter):
    """No terminal escape code, temporary folder or loopback address appears in a stored output."""
    for cell in _cells(chapter):
        for text in _texts(cell):
            assert not ESCAPE.search(text), (cell.source[:80], text[:200])
            for folder in TEMP_DIRS:
                assert folder not in text, (cell.source[:80], folder, text[:300])
            assert not LOOPBACK.search(text), (cell.source[:80], LOOPBACK.search(text))


#: What a cell hidden from nbval may print: timings and other run-dependent figures only.
VARYING = re.compile(r"\b\d+(\.\d+)? ?(s|ms|min|seconds?)\b|\d+(\.\d+)? ?[kMG]i?B/s|\d{4}-\d\d-\d\d")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_outputs_hidden_from_nbval_hold_only_what_varies(chapter):
    """A cell tagged nbval-ignore-output prints only lines that hold a timing (nothing else to check)."""
    for cell in _cells(chapter):
        if not set(IGNORED) & set(cell.metadata.get("tags", [])):
            continue
        for text in _texts(cell):
            for line in text.splitlines():
                assert not line.strip() or VARYING.search(line), (cell.source[:80], line)


def test_sanitizers_hide_no_path_port_or_computed_rate():
    """book/sanitize.cfg masks only what varies between runs: bar timings, run information."""
    rules = (BOOK / "sanitize.cfg").read_text()
    from nbval.plugin import get_sanitize_patterns

    # every rule is one nbval reads: "regex: ..." directly followed by "replace: ..." (with its space)
    assert len(get_sanitize_patterns(rules)) == rules.count("\nregex: ") + rules.startswith("regex: ")
    for gone in ("/tmp/", "127\\.0\\.0\\.1", "localhost", "TMPPATH", "LOOPBACK"):
        assert gone not in rules, gone
    # a computed rate in a table is compared; only a progress bar's time and rate are masked
    sanitized = _apply_sanitizers("streaming rate: 1.9 GB/s from the page cache\n"
                                  "gene.csv: 100%|██████████| 52.5k/52.5k [00:00<00:00, 8.86MB/s]\n")
    assert "1.9 GB/s" in sanitized and "8.86MB/s" not in sanitized and "52.5k/52.5k" in sanitized


def _apply_sanitizers(text: str) -> str:
    """*text* after every rule of book/sanitize.cfg, read and applied as nbval does."""
    from nbval.plugin import get_sanitize_patterns

    for regex, replace in get_sanitize_patterns((BOOK / "sanitize.cfg").read_text()):
        text = re.sub(regex, replace, text)
    return text
