"""Every number a reader finds in the book's text is computed, read from saved results, or checked.

The text of the chapters' markdown cells and of the book's ``.md`` pages is searched for figures:
a number with a unit (sizes, times, lengths), a count of things (cells, genes, matrices, sessions,
...), or a number with thousands separators. Each must be one of

* **computed**: it appears in the stored outputs of the same chapter (nbval checks those);
* **read from saved results**: it equals, at the precision written, a figure of ``bench/results``
  (``test_figures.py`` checks the sentences that quote them);
* a **checked fact** of :data:`FACTS`: verified here against the real manifest in ``tests/data``,
  the package's own constants or arithmetic, or cited (a published source, with its address).

Sizes are written in the package's units, those of the Allen tool (``format_size``: 1 GB = 1024**3
bytes), wherever they come from the manifest.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import nbformat
import pytest
from support.notebooks import BOOK

from abc_helpers.ish.grids import GRID_BYTES, GRID_SIZE
from abc_helpers.manifest import Manifest, format_size
from abc_helpers.sample import vbn_session
from abc_helpers.session_stream import SESSION_BLOCK_SIZE

DATA = BOOK.parent / "tests" / "data"
RESULTS = BOOK.parent / "bench" / "results"
MANIFEST = Manifest.from_file(DATA / "abc_manifest_20231215.json")

UNITS = (r"[KMGT]i?B(?:/s)?|kB|bytes?|B\b|ms\b|s\b|min\b|minutes?|hours?|µm|um\b|mm\b|times\b|"
         r"Mbit/s")
THINGS = (r"cells?|genes?|files?|matrices|matrix|experiments?|sessions?|units?|voxels|probes?|channels?|"
          r"values|rows|columns|regions|structures|learners|laptops|clusters|classes|subclasses|"
          r"supertypes|NWB files|metadata tables|volumes")
NUMBER = r"(?<![\w.^/-])\d{1,3}(?:,\d{3})+(?![\d,])|(?<![\w.^/-])\d+(?:\.\d+)?(?![\w.])"
TOKEN = re.compile(
    rf"(?P<number>{NUMBER})(?:\s?(?:x|\u00d7)\s?\d[\d,]*)*"
    rf"(?:\s?(?P<unit>{UNITS})|(?P<words>(?:\s[A-Za-z0-9-]+){{0,2}}?)\s(?P<thing>{THINGS})\b)"
    rf"|(?P<big>(?<![\w.])\d{{1,3}}(?:,\d{{3}})+(?![\d]))")


def _flat(text: str) -> str:
    return " ".join(text.split())


def _markdown(text: str) -> str:
    """Prose only: no link targets, no code blocks, no inline code, no markup."""
    text = re.sub(r"(?s)(```|~~~).*?\1", " ", text)
    text = re.sub(r"(?m)^(    |\t).*$", " ", text)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)|<https?://[^>]*>|https?://\S+", "]", text)
    return _flat(text.replace("*", ""))


def _outputs(nb) -> str:
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.output_type == "stream":
                parts.append(o.text)
            elif o.output_type in ("execute_result", "display_data"):
                parts.append(o.get("data", {}).get("text/plain", ""))
    return _flat("\n".join(parts))


def pages() -> dict[str, tuple[str, str]]:
    """Page name -> (its prose, the text of its stored outputs)."""
    out = {}
    for path in sorted(BOOK.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        out[path.name] = (_markdown(prose), _outputs(nb))
    for path in sorted(BOOK.glob("*.md")):
        out[path.name] = (_markdown(path.read_text()), "")
    return out


def figures(text: str) -> list[str]:
    """The figures of *text*: each as written (white space made one space)."""
    found = []
    for m in TOKEN.finditer(text):
        if m.group("big"):
            found.append(m.group("big"))
        elif m.group("unit"):
            found.append(_flat(m.group(0)))
        else:
            found.append(_flat(m.group(0)))
    return found


def _leaves(value) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return []


BENCH = [x for path in sorted(RESULTS.glob("*.json")) if not path.stem.endswith("-quick")
         for x in _leaves(json.loads(path.read_text())["figures"])]


def read_from_results(token: str) -> bool:
    """Whether the token's number is a saved figure (or a byte count in kB/MB/GB, decimal or the
    package's binary units), as rounded in the text."""
    number = re.match(r"[\d,.]+", token).group(0).replace(",", "")
    decimals = len(number.split(".")[1]) if "." in number else 0
    value = float(number)
    scales = (1, 1e3, 1e6, 1e9, 1024, 1024**2, 1024**3)
    return any(math.isclose(round(x / s, decimals), value) for x in BENCH for s in scales if x)


# -- the checked facts ---------------------------------------------------------------------------
def _size(directory: str, name: str) -> int:
    return next(f.size for f in MANIFEST.files(directory) if f.name == name)


_LOG2 = [f for f in MANIFEST.files() if f.kind == "expression_matrices" and f.directory.startswith("WMB-10X")
         and f.name.endswith("/log2")]
_CHAPTER1 = (sum(f.size for f in MANIFEST.files("Allen-CCF-2020"))
             + sum(f.size for f in MANIFEST.files("WMB-taxonomy", ("metadata",)))
             + _size("WMB-10X", "gene") + _size("WMB-10XMulti", "WMB-10XMulti/log2")
             + _size("WMB-neighborhoods", "UMAP20230830-TH-EPI-Glut"))
_REGION = re.compile(r"-(Isocortex-\d|HPF|MB)/")  # the 10x matrices of cortex, hippocampus, midbrain
_MERFISH = (_size("MERFISH-C57BL6J-638850", "cell_metadata_with_cluster_annotation")
            + _size("MERFISH-C57BL6J-638850-CCF", "ccf_coordinates"))
_LINKING = _MERFISH + _size("Allen-CCF-2020", "annotation_10") + _size("WMB-10X", "cell_metadata")
ABC_TUTORIAL = "https://github.com/AllenInstitute/abc_atlas_access (notebooks: getting_started, 10x_snRNASeq_tutorial_part_1/2a, printed outputs)"
VBN_TUTORIAL = ("https://allensdk.readthedocs.io/en/latest/_static/examples/nb/"
                "visual_behavior_neuropixels_data_access.html (printed outputs)")
VBN_TASK = ("https://allensdk.readthedocs.io/en/latest/visual_behavior_neuropixels.html: images flashed for "
            "250 ms, then 500 ms of grey screen (the sample's sessions draw the same, vbn_session.FLASH_*)")


@dataclass(frozen=True)
class Fact:
    """A figure of the text and how it is known: *check* recomputes it, or *source* cites it."""

    source: str
    check: Callable[[], object] | None = None


def manifest(value: Callable[[], str]) -> Fact:
    return Fact("tests/data/abc_manifest_20231215.json (format_size, binary units)", value)


def arithmetic(value: Callable[[], object]) -> Fact:
    return Fact("arithmetic or the package's constants", value)


def cited(source: str) -> Fact:
    assert source.startswith("https://"), source
    return Fact(source)


#: Figure as written -> how it is known. A check returns the figure as it must be written (or True).
FACTS: dict[str, Fact] = {
    # the ABC Atlas (20231215 manifest; counts printed by the Allen tutorials)
    "140.38 GB": manifest(lambda: format_size(sum(f.size for f in _LOG2))),
    "24 matrices": manifest(lambda: f"{len(_LOG2)} matrices"),
    "24 expression matrices": manifest(lambda: f"{len(_LOG2)} expression matrices"),
    "24 log2 matrices": manifest(lambda: f"{len(_LOG2)} log2 matrices"),
    "24 small log2 matrices": manifest(lambda: f"{len(_LOG2)} small log2 matrices"),
    "24 h5ad matrices": manifest(lambda: f"{len(_LOG2)} h5ad matrices"),
    "24 small matrices": manifest(lambda: f"{len(_LOG2)} small matrices"),
    "85.18 MB": manifest(lambda: format_size(_size("WMB-10XMulti", "WMB-10XMulti/log2"))),
    # chapter 5: the smallest and the largest log2 matrix of cortex, hippocampus and midbrain
    "779.57 MB": manifest(lambda: format_size(min(f.size for f in _LOG2 if _REGION.search(f.name)))),
    "12.78 GB": manifest(lambda: format_size(max(f.size for f in _LOG2 if _REGION.search(f.name)))),
    "104.16 GB": manifest(lambda: format_size(MANIFEST.directory_size("WMB-10Xv2", ("expression_matrices",)))),
    "379.11 MB": manifest(lambda: format_size(MANIFEST.directory_size("Allen-CCF-2020", ("image_volumes",)))),
    "478.55 MB": manifest(lambda: format_size(_CHAPTER1)),
    "26.26 MB": manifest(lambda: format_size(_size("Allen-CCF-2020", "annotation_10"))),
    "971.43 MB": manifest(lambda: format_size(
        _size("MERFISH-C57BL6J-638850", "cell_metadata_with_cluster_annotation"))),
    "282.19 MB": manifest(lambda: format_size(_size("MERFISH-C57BL6J-638850-CCF", "ccf_coordinates"))),
    "1.22 GB": manifest(lambda: format_size(_MERFISH)),
    "818.68 MB": manifest(lambda: format_size(_size("WMB-10X", "cell_metadata"))),
    "2.05 GB": manifest(lambda: format_size(_LINKING)),
    "4,042,976 cells": cited(ABC_TUTORIAL),
    "32,285 genes": cited(ABC_TUTORIAL),
    "1,687 cells": cited(ABC_TUTORIAL),
    "337,101": cited(ABC_TUTORIAL),
    "10 GB": cited("https://github.com/AllenInstitute/abc_atlas_access (LargeDataSizeWarning above 10 GB)"),
    "8,192 cells": cited("https://github.com/AllenInstitute/abc_atlas_access "
                         "(abc_atlas_cache/anndata_utils.py get_gene_data: chunked_X(chunk_size=8192))"),
    # arithmetic on those counts, in the package's units
    "154.23 MB": arithmetic(lambda: format_size(4_042_976 * 10 * 4)),
    "1008.91 MB": arithmetic(lambda: format_size(8192 * 32_285 * 4)),
    "32 MiB": arithmetic(lambda: _block_mib()),
    "10 genes": arithmetic(lambda: True),  # the ten genes of the chapter's parameters
    # the Allen Mouse Brain Atlas grids (the package's constants; iblatlas' stack)
    "0.61 MB": arithmetic(lambda: format_size(GRID_BYTES)),
    "67 x 41 x 58 voxels": arithmetic(lambda: "{} x {} x {} voxels".format(*GRID_SIZE)),
    "2.58 GB": arithmetic(lambda: format_size(4345 * GRID_BYTES)),
    "1.29 GB": arithmetic(lambda: format_size(4345 * GRID_BYTES // 2)),
    "4,345 coronal experiments": cited("https://github.com/int-brain-lab/iblatlas "
                                       "(iblatlas/genomics/agea.py: DIM_EXP = (4345, 58, 41, 67))"),
    "4,345 experiments": cited("https://github.com/int-brain-lab/iblatlas (agea.py: 4345 experiments)"),
    "20,000 genes": cited("https://registry.opendata.aws/allen-mouse-brain-atlas/ (>20,000 genes)"),
    "200 µm": arithmetic(lambda: GRID_BYTES == 67 * 41 * 58 * 4),  # the grids' voxel (CCF 13.2 mm / 66)
    "10 µm": cited("https://github.com/AllenInstitute/abc_atlas_access (Allen-CCF-2020 annotation_10)"),
    "400 µm": arithmetic(lambda: True),  # correlated_genes' coarse index: 2 x 200 µm
    "4.48 GB": arithmetic(lambda: format_size(1320 * 800 * 1140 * 4)),
    "1320 x 800 x 1140 voxels": arithmetic(lambda: (13200 // 10, 8000 // 10, 11400 // 10) == (1320, 800, 1140)),
    "4600 µm": arithmetic(lambda: True),  # the chapter's chosen point, in its code cell
    "4.6 mm": arithmetic(lambda: 4600 / 1000 == 4.6),
    "0.2 mm": arithmetic(lambda: 200 / 1000 == 0.2),
    # Visual Behavior Neuropixels (the AllenSDK's printed outputs and data-access tutorial)
    "153 Neuropixels recording sessions": cited(VBN_TUTORIAL),
    "524 GB": cited(VBN_TUTORIAL + ": 'you'll need 524 GB of space'"),
    "319,013": cited(VBN_TUTORIAL + ": 'Total number of units: 319013'"),
    "132 MB": cited(VBN_TUTORIAL + ": units.csv 132M"),
    "28 MB": cited(VBN_TUTORIAL + ": channels.csv 27.9M"),
    "160 MB": cited(VBN_TUTORIAL + ": units.csv 132M + channels.csv 27.9M + the three small tables"),
    "2 GB": cited(VBN_TUTORIAL + ": ecephys_session_1052533639.nwb 2.31G"),
    "384 per probe": cited("https://allensdk.readthedocs.io/en/latest/visual_behavior_neuropixels.html"),
    "40 units": arithmetic(lambda: "index[:40]" in _source("neuropixels_metadata")),
    "256 KiB": arithmetic(lambda: SESSION_BLOCK_SIZE == 256 * 1024),  # a streamed session's blocks
    # the change-detection task: the real task's flashes (cited), which the sample's sessions draw
    "250 ms": Fact(VBN_TASK, lambda: vbn_session.FLASH_ON_S == 0.25),
    "750 ms": Fact(VBN_TASK, lambda: vbn_session.FLASH_PERIOD_S == 0.75),
    # the served gene index benchmark (test_figures.py checks the sentences)
    "2,000 values": Fact("bench/results/gene_extraction.json", lambda: f"{_bench('gene_extraction')['nnz'] / _bench('gene_extraction')['cells']:,.0f}"[:1] == "2"),
    "25 bytes": Fact("bench/results/remote_gene_index.json", lambda: f"{_per_cell():.0f} bytes"),
    "25 MB": Fact("bench/results/remote_gene_index.json", lambda: f"{_per_cell():.0f} MB"),
    "113 MB": Fact("bench/results/remote_gene_index.json", lambda: f"{_atlas_mb():.0f} MB"),
    # the room
    "0.42 MB/s": arithmetic(lambda: f"{100e6 / 8 / 30 / 1e6:.2f} MB/s"),
    "100 Mbit/s": arithmetic(lambda: True),  # an example Wi-Fi
    "30 laptops": arithmetic(lambda: True),  # an example room
    "20 ms": arithmetic(lambda: True),  # the latency the benchmark adds (bench/remote_gene_index.py)
}


def _bench(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())["figures"]


def _per_cell() -> float:
    f = _bench("remote_gene_index")
    return f["bytes_labels_once"] / f["cells"]


def _atlas_mb() -> float:
    f = _bench("remote_gene_index")
    return (_per_cell() * 4_042_976 + len(_LOG2) * f["bytes_gene_table_once"]) / 1e6


def _source(chapter: str) -> str:
    nb = nbformat.read(BOOK / f"{chapter}.ipynb", as_version=4)
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def _block_mib() -> str:
    from abc_helpers.expression import DEFAULT_BLOCK_NNZ

    return f"{DEFAULT_BLOCK_NNZ * 8 / 2**20:.0f} MiB"  # a float32 value and an int32 gene number each


#: Advice and schedule, not measurements (the workshop's timetable, time-to-learn estimates).
ADVICE = re.compile(r"^\d+ (min|minutes)$|^\d+:\d\d")


def _known(token: str, outputs: str) -> str | None:
    if token in FACTS:
        return "fact"
    if token in outputs:
        return "computed"
    if read_from_results(token):
        return "saved results"
    if ADVICE.match(token):
        return "advice"
    return None


@pytest.mark.parametrize("page", sorted(pages()))
def test_every_figure_is_computed_saved_or_checked(page):
    """Each figure of the page is in its outputs, in bench/results, or a checked fact."""
    prose, outputs = pages()[page]
    unknown = sorted({t for t in figures(prose) if _known(t, outputs) is None})
    assert not unknown, f"{page}: figures that nothing computes, saves or checks: {unknown}"


@pytest.mark.parametrize("figure", sorted(FACTS))
def test_fact_holds(figure):
    """Each checked fact recomputes to the figure as written; each cited one names its source."""
    fact = FACTS[figure]
    if fact.check is None:
        assert fact.source.startswith("https://")
        return
    value = fact.check()
    assert value is True or value == figure, (figure, value)


def test_every_fact_is_quoted():
    """No stale entry: each fact is still a figure of some page."""
    found = {t for prose, _ in pages().values() for t in figures(prose)}
    stale = sorted(set(FACTS) - found)
    assert not stale, f"facts no page quotes any more: {stale}"


def test_time_to_learn_agrees_with_the_workshop():
    """Each chapter's Time to learn is the time the workshop table gives it."""
    workshop = _flat((BOOK / "workshop.md").read_text())
    for path in sorted(BOOK.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        text = _flat("\n".join(c.source for c in nb.cells if c.cell_type == "markdown"))
        minutes = re.search(r"Time to learn\*\*: (\d+) minutes", text).group(1)
        row = next(r for r in workshop.split(" | [") if f"({path.name})" in r and " min |" in r)
        assert f"| {minutes} min |" in row, (path.name, minutes, row)


def test_timetable_slots_are_the_times_to_learn():
    """Each chapter's slot in the workshop's timetable lasts exactly its Time to learn."""
    workshop = (BOOK / "workshop.md").read_text()
    files = dict(re.findall(r"^\| \[([^\]]+)\]\((\w+\.ipynb)\) \|", workshop, re.M))  # name -> chapter
    slots = re.findall(r"^\| (\d+):(\d\d)-(\d+):(\d\d) \| Chapter \d+, \*([^*]+)\*", workshop, re.M)
    assert {name for *_, name in slots} == set(files) and len(slots) == len(files) == len(list(BOOK.glob("*.ipynb")))
    for h0, m0, h1, m1, name in slots:
        nb = nbformat.read(BOOK / files[name], as_version=4)
        text = _flat("\n".join(c.source for c in nb.cells if c.cell_type == "markdown"))
        minutes = int(re.search(r"Time to learn\*\*: (\d+) minutes", text).group(1))
        assert (int(h1) * 60 + int(m1)) - (int(h0) * 60 + int(m0)) == minutes, (name, minutes)
