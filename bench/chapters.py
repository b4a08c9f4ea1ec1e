"""Benchmark: how long each chapter takes on the sample world, how much it leaves on disk, and the
sample world's own build.

The book quotes these figures (``book/intro.md``, ``book/workshop.md``, each chapter's
Prerequisites), so they come from here rather than from a guess:

* ``world``: ``python -m abc_helpers.sample build`` into a fresh, empty folder, in its own process:
  the seconds it takes (Python start included) and the size of the world on disk;
* each chapter (``book/*.ipynb``), executed with papermill and its default parameters
  (``data_source = "sample"``), ``--rounds`` times in turn (3 at least; the chapters in the
  opposite order every other round), each in a fresh
  kernel with a ``TMPDIR`` of its own, where the chapter's temporary cache folders go: the median,
  lowest and highest seconds (the kernel's start and the sample server's included, as for a reader
  running the whole notebook once the world is built), and the bytes left under that ``TMPDIR``
  (downloads, caches and the files the chapter writes).

There is no baseline to beat: these are the times a reader should expect. The load average is
sampled before the world's build and after the last chapter. Prints one JSON line last;
``--save`` writes ``bench/results/chapters[-quick].json`` with the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _measure import add_save_arguments, load_average, rounds_of, save_result

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"


def folder_bytes(folder: Path) -> int:
    """The bytes of every file below *folder* (symbolic links not followed)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def build_world(folder: Path) -> tuple[float, int]:
    """Build the sample world into the empty *folder* in a new process; return (seconds, bytes)."""
    env = {**os.environ, "ABC_HELPERS_SAMPLE_DIR": str(folder)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "abc_helpers.sample", "build"], env=env, check=True,
                   capture_output=True, text=True)
    return time.perf_counter() - started, folder_bytes(folder)


def run_chapter(notebook: Path, work: Path) -> tuple[float, int]:
    """Execute *notebook* with its defaults, its temporary folders under *work*; (seconds, bytes)."""
    import papermill as pm

    tmp = work / "tmp"
    tmp.mkdir(parents=True)
    old_tmp = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)  # the kernel's tempfile.mkdtemp() caches land here
    started = time.perf_counter()
    try:
        pm.execute_notebook(str(notebook), str(work / notebook.name), cwd=str(BOOK),
                            kernel_name="python3", progress_bar=False, log_output=False)
    finally:
        if old_tmp is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_tmp
        tempfile.tempdir = None  # this process cached the folder (kernel connection files)
    return time.perf_counter() - started, folder_bytes(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="the two shortest chapters only (getting_started, neuropixels_metadata)")
    parser.add_argument("--only", nargs="*", default=None, help="these chapters only (by name)")
    add_save_arguments(parser)
    args = parser.parse_args()
    repeat = rounds_of(args)
    chapters = sorted(BOOK.glob("*.ipynb"))
    if args.quick and args.only is None:
        args.only = ["getting_started", "neuropixels_metadata"]
    if args.only is not None:
        chapters = [c for c in chapters if c.stem in args.only]

    work = Path(tempfile.mkdtemp(prefix="bench-chapters-"))
    load_before = load_average()
    old_world = os.environ.get("ABC_HELPERS_SAMPLE_DIR")
    try:
        world_seconds, world_bytes = build_world(work / "world")
        print(f"  sample world: built in {world_seconds:.1f} s, {world_bytes / 1e6:.1f} MB", file=sys.stderr)
        os.environ["ABC_HELPERS_SAMPLE_DIR"] = str(work / "world")  # the kernels use this world
        runs: dict[str, list[tuple[float, int]]] = {c.stem: [] for c in chapters}
        for i in range(repeat):  # in turn, so that a busy minute on a shared machine hits them all
            for notebook in (chapters if i % 2 == 0 else chapters[::-1]):
                seconds, size = run_chapter(notebook, work / f"{notebook.stem}-{i}")
                runs[notebook.stem].append((seconds, size))
                print(f"  {notebook.stem:24s} {seconds:6.1f} s  {size / 1e6:6.1f} MB", file=sys.stderr)
                shutil.rmtree(work / f"{notebook.stem}-{i}")
    finally:
        if old_world is None:
            os.environ.pop("ABC_HELPERS_SAMPLE_DIR", None)
        else:
            os.environ["ABC_HELPERS_SAMPLE_DIR"] = old_world
        shutil.rmtree(work, ignore_errors=True)

    load_after = load_average()
    summary = {
        "load_before": load_before,
        "load_after": load_after,
        "world_seconds": round(world_seconds, 1),
        "world_mb": round(world_bytes / 1e6, 1),
        "repeat": repeat,
        "chapters": {
            name: {"seconds_median": round(statistics.median(s for s, _ in done), 1),
                   "seconds_min": round(min(s for s, _ in done), 1),
                   "seconds_max": round(max(s for s, _ in done), 1),
                   "disk_mb": round(max(b for _, b in done) / 1e6, 1)}
            for name, done in runs.items()
        },
    }
    if args.save:
        out = save_result("chapters", summary, args.quick, args.note, load_before, load_after)
        print(f"saved to {out}", file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
