"""The figures typed into the book's text are measured ones: each equals, rounded as the text rounds
it, a figure that a benchmark saved in ``bench/results/`` with the machine and the date it ran on.

The benchmark tables of ``gene_extraction.ipynb`` and ``ish_grids.ipynb`` are computed cells that
read those files (nbval checks their outputs); this module checks the typed text: ``intro.md``,
``workshop.md`` and each chapter's Prerequisites. After a benchmark is run again with ``--save``,
the text must quote its new figures, or this fails.
"""

from __future__ import annotations

import json
import re

import nbformat
import pytest
from support.notebooks import BOOK

from abc_helpers.manifest import Manifest, format_size

RESULTS = BOOK.parent / "bench" / "results"
DATA = BOOK.parent / "tests" / "data"
CHAPTERS = sorted(p.stem for p in BOOK.glob("*.ipynb"))
#: Saved results the book quotes: full runs (not --quick).
QUOTED = ["chapters", "gene_extraction", "ish_grids", "nwb_stream", "remote_gene_index"]
#: The real WMB 10x data (the 20231215 release): cells (cited in test_text_numbers.FACTS) and log2 matrices.
WMB_CELLS = 4_042_976
_LOG2 = [f for f in Manifest.from_file(DATA / "abc_manifest_20231215.json").files()
         if f.kind == "expression_matrices" and f.directory.startswith("WMB-10X") and f.name.endswith("/log2")]
WMB_MATRICES, WMB_LOG2_BYTES = len(_LOG2), sum(f.size for f in _LOG2)


def _saved(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _flat(text: str) -> str:
    """*text* with every run of white space made one space (quotes may wrap across lines)."""
    return " ".join(text.split())


def seconds(value: float) -> str:
    """A time as the text quotes it: whole seconds."""
    return f"{value:.0f} s"


def megabytes(value: float) -> str:
    """A size in MB as the text quotes it: one decimal below 10 MB, whole MB above."""
    return f"{value:.1f} MB" if value < 10 else f"{value:.0f} MB"


INTRO = _flat((BOOK / "intro.md").read_text())
WORKSHOP = _flat((BOOK / "workshop.md").read_text())


def _prerequisites(chapter: str) -> str:
    """The text of a chapter's Prerequisites section."""
    text = "\n".join(c.source for c in nbformat.read(BOOK / f"{chapter}.ipynb", as_version=4).cells
                     if c.cell_type == "markdown")
    section = text.split("\n## Prerequisites\n", 1)[1].split("\n## ", 1)[0]
    return _flat(section)


@pytest.mark.parametrize("name", QUOTED)
def test_saved_results_say_where_and_when(name):
    """Each quoted result is a full run, with the machine, the date, its load and a note (any note)."""
    saved = _saved(name)
    assert saved["benchmark"] == name and saved["quick"] is False
    machine = saved["machine"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", machine["date"])
    assert machine["cpu"] and machine["cpus"] >= 1 and machine["memory_gb"] > 0
    assert len(machine["load_average"]) == 3
    assert isinstance(saved["note"], str) and saved["note"].strip()


def machine_words(saved: dict) -> str:
    """How the text describes the machine of a saved result: shared with other jobs only if the note says so."""
    machine = saved["machine"]
    shared = " shared with other jobs" if "shared" in saved["note"] else ""
    return f"{machine['cpus']}-core machine ({machine['cpu']}){shared}"


def test_every_chapter_was_measured():
    """bench/results/chapters.json holds every chapter of the book, and the sample world's build."""
    figures = _saved("chapters")["figures"]
    assert set(figures["chapters"]) == set(CHAPTERS)
    assert figures["world_seconds"] > 0 and figures["world_mb"] > 0


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_prerequisites_quote_the_measured_sample_run(chapter):
    """Each chapter's Prerequisites give its measured time and disk on the sample."""
    measured = _saved("chapters")["figures"]["chapters"][chapter]
    quote = f"{seconds(measured['seconds_median'])} and {megabytes(measured['disk_mb'])} on disk"
    assert quote in _prerequisites(chapter), _prerequisites(chapter)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_intro_and_workshop_tables_quote_the_measured_sample_run(chapter):
    """The chapter tables of intro.md and workshop.md give the measured times and disk."""
    measured = _saved("chapters")["figures"]["chapters"][chapter]
    intro_row = next(r for r in INTRO.split(" | [") if f"({chapter}.ipynb)" in r)
    assert f"| {seconds(measured['seconds_median'])}, {megabytes(measured['disk_mb'])} |" in intro_row
    workshop_row = next(r for r in WORKSHOP.split(" | [") if f"({chapter}.ipynb)" in r and " min |" in r)
    times = (f"{measured['seconds_median']:.1f} s ({measured['seconds_min']:.1f}-"
             f"{measured['seconds_max']:.1f})")
    assert f"| {times} | {megabytes(measured['disk_mb'])} |" in workshop_row, workshop_row


def test_run_times_say_where_and_when():
    """Both pages name the benchmark, its saved file, the date and the machine of the run times."""
    saved = _saved("chapters")
    machine = saved["machine"]
    for text in (INTRO, WORKSHOP):
        assert f"`bench/chapters.py` on {machine['date']}" in text
        assert "`bench/results/chapters.json`" in text
        assert machine_words(saved) in text
        if "shared" not in saved["note"]:
            assert "shared with other jobs" not in text


def test_sample_world_build_is_quoted_as_measured():
    """Every "built in N s" and "N MB on disk, built in" of intro.md and workshop.md is the measured build."""
    figures = _saved("chapters")["figures"]
    for text in (INTRO, WORKSHOP):
        builds = re.findall(r"built in (\d+(?:\.\d+)?) s\b", text)
        assert builds and set(builds) == {f"{figures['world_seconds']:.0f}"}, builds
        sizes = re.findall(r"(\d+(?:\.\d+)?) MB on disk, built in", text)
        assert sizes and set(sizes) == {f"{figures['world_mb']:.0f}"}, sizes
    largest = max(c["disk_mb"] for c in figures["chapters"].values())
    assert f"the sample world {figures['world_mb']:.0f} MB, and each chapter leaves up to {megabytes(largest)}" in WORKSHOP


def test_workshop_quotes_the_served_gene_index_benchmark():
    """The workshop's gene-index figures (disk, build time, bytes, query times, the room) are saved ones."""
    saved = _saved("remote_gene_index")
    f, machine = saved["figures"], saved["machine"]
    per_cell = f["bytes_labels_once"] / f["cells"]
    table_mb = f["bytes_gene_table_once"] / 1e6
    atlas_mb = (per_cell * WMB_CELLS + WMB_MATRICES * f["bytes_gene_table_once"]) / 1e6
    ranges_mb = f["bytes_received_per_query"] / 1e6
    quotes = [
        f"{per_cell:.0f} bytes a cell and {table_mb:.1f} MB a matrix in the benchmark below",
        f"about {atlas_mb:.0f} MB for the 4 million cells of the {WMB_MATRICES} log2 matrices",
        f"about {atlas_mb:.0f} MB in all for the 4 million cells",
        f"the benchmark's {f['matrix_gb']} GB matrix has a {f['index_gb']} GB index",
        f"the sidecar files add {per_cell:.0f} MB per million cells",
        f"took {seconds(f['seconds_index_build'])}, sidecars included",
        (f"about {WMB_LOG2_BYTES / f['bytes_matrix_download'] * f['seconds_index_build'] / 60:.0f} minutes "
         f"for the {format_size(WMB_LOG2_BYTES)} of log2 matrices"),
        (f"{ranges_mb:.1f} MB of byte ranges, plus, fetched once, {f['bytes_labels_once'] / 1e6:.1f} MB of "
        f"cell labels and {table_mb:.1f} MB of gene table"),
        (f"{f['seconds_served_first_query']:.2f} s for the first query, against "
        f"{f['seconds_download_then_stream']:.2f} s to download and stream the {f['matrix_gb']} GB matrix "
        f"({f['speedup_vs_download_then_stream']} times faster); "
        f"{f['seconds_served_first_query_20ms']:.2f} s on a modelled link of 20 ms per request and 50 MB/s, "
        f"where downloading and streaming take {f['seconds_download_then_stream_20ms']:.2f} s"),
        f"{f['seconds_repeat_query']:.2f} s for a repeated query",
        f"the whole room was done in {f['room_seconds_total']:.1f} s",
        f"{ranges_mb:.1f} MB per ten genes per {f['cells']:,} cells",
        f"measured on {machine['date']} on a {machine['cpus']}-core machine"
        + (" shared with other jobs" if "shared" in saved["note"] else ""),
    ]
    missing = [quote for quote in quotes if quote not in WORKSHOP]
    assert not missing, missing
    assert f["room_clients"] == 30 and f["room_all_exact"] is True  # "Thirty learners ... all got exact values"


def _markdown_of(chapter: str) -> str:
    return _flat("\n".join(c.source for c in nbformat.read(BOOK / f"{chapter}.ipynb", as_version=4).cells
                           if c.cell_type == "markdown"))


def nwb_stream_quotes() -> dict[str, list[str]]:
    """The streamed-session benchmark's figures as chapters 4 and 5 quote them."""
    saved = _saved("nwb_stream")
    f, machine = saved["figures"], saved["machine"]
    link = f["link"]
    shared = " shared with other jobs" if "shared" in saved["note"] else ""
    where = f"measured on {machine['date']} on a {machine['cpus']}-core machine{shared}"
    mib = 1024**2  # the package's binary units (format_size)
    file_gb = f"{f['file_bytes'] / 1024**3:.2f} GB"
    spikes = (f"the spike times of a hundred units of one probe fetched "
              f"{link['stream_bytes_spikes100']['median'] / mib:.0f} MB for {link['spikes100_stored_bytes'] / mib:.0f} MB "
              f"stored")
    return {
        "neuropixels_metadata": [
            f"a synthetic session of {file_gb}",
            (f"opening it and reading its units table fetched {link['stream_bytes_open_units']['median'] / mib:.1f} MB "
             f"({f['bytes_ratio_open_units_vs_file']:.2%} of the file) in {link['stream_open_units_s']['median']:.1f} s "
             f"on a modelled home link of 20 ms and {f['link_model']['bandwidth_mbs']:.0f} MB/s, against "
             f"{link['download_open_units_s']['median']:.0f} s to download the file first and open it "
             f"({f['speedup_open_units_vs_download_link']:.0f} times faster)"),
            spikes, "opening it again fetched nothing", where],
        "linking_atlases": [f"a synthetic session of {file_gb}", spikes, where],
    }


@pytest.mark.parametrize("chapter", ["neuropixels_metadata", "linking_atlases"])
def test_chapters_quote_the_streamed_session_benchmark(chapter):
    """Chapters 4 and 5 quote bench/results/nwb_stream.json as saved (file size, bytes, times, speedup)."""
    saved = _saved("nwb_stream")["figures"]
    assert saved["bytes_reopen"] == 0  # "opening it again fetched nothing"
    text = _markdown_of(chapter)
    missing = [quote for quote in nwb_stream_quotes()[chapter] if quote not in text]
    assert not missing, missing
