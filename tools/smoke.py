"""Run the book's chapters with parameter profiles: ``make smoke-aws`` and the weekly real-data workflow.

Usage::

    python tools/smoke.py [--profiles book/profiles/aws] [--out _build/smoke] [--only CHAPTER ...]
                          [--data-source SOURCE] [--allow-missing NAME ...] [--keep]

Each profile ``<profiles>/<chapter>.yaml`` holds papermill parameters for ``book/<chapter>.ipynb``.
A profile that sets a parameter the chapter does not declare fails before anything runs (papermill
would inject it and the chapter would ignore it, downloading what the profile meant to avoid),
unless that name is passed to ``--allow-missing``, which drops it. Each chapter runs in a work
folder of its own (its ``TMPDIR``, so the chapters' temporary caches land there), removed after
the run unless ``--keep``: the disk holds one chapter's data at a time. The executed notebooks go to
``--out``; any error in any chapter makes the exit status 1, after every chapter had its run.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import papermill as pm
import yaml
from nbclient.exceptions import CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"


@dataclass
class Outcome:
    """One chapter's run: its name, whether it passed, what happened, time and peak disk."""

    chapter: str
    ok: bool
    note: str
    seconds: float = 0.0
    disk_bytes: int = 0


def declared_parameters(notebook: Path) -> dict[str, object]:
    """The names and default values in the cell tagged ``parameters`` of *notebook*."""
    nb = nbformat.read(notebook, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{notebook.name} needs exactly one cell tagged 'parameters' (has {len(cells)})")
    names: dict[str, object] = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            names[node.targets[0].id] = ast.literal_eval(node.value)
    return names


def read_profile(path: Path) -> dict[str, object]:
    """The parameters of one profile file (a YAML mapping of names to values)."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not data:
        raise ValueError(f"Profile '{path}' must be a YAML mapping of parameter names to values "
                         f"(got {type(data).__name__}).")
    return data


def folder_bytes(folder: Path) -> int:
    """The bytes of every file below *folder*."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def run_profile(profile: Path, out: Path, data_source: str | None, allow_missing: set[str],
                keep: bool, cell_timeout: int) -> Outcome:
    """Check *profile* against its chapter's parameters, then run the chapter with papermill."""
    chapter = profile.stem
    notebook = BOOK / f"{chapter}.ipynb"
    if not notebook.is_file():
        return Outcome(chapter, False, f"{profile} names no chapter: book/{chapter}.ipynb does not exist")
    parameters = read_profile(profile)
    declared = declared_parameters(notebook)
    undeclared = sorted(set(parameters) - set(declared))
    refused = [name for name in undeclared if name not in allow_missing]
    if refused:
        return Outcome(chapter, False, f"book/{chapter}.ipynb has no parameter {refused} that {profile.name} "
                       "sets: add it to the chapter's parameters cell, or remove it from the profile")
    for name in undeclared:
        print(f"{chapter}: dropping {name!r}: the chapter does not declare it yet", flush=True)
        del parameters[name]
    if data_source is not None:
        parameters["data_source"] = data_source
    work = out / "work" / chapter
    shutil.rmtree(work, ignore_errors=True)
    (work / "tmp").mkdir(parents=True)
    old_tmp = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(work / "tmp")  # the kernel's tempfile.mkdtemp() caches land here
    started = time.perf_counter()
    print(f"{chapter}: running with {parameters}", flush=True)
    try:
        pm.execute_notebook(str(notebook), str(out / f"{chapter}.ipynb"), parameters=parameters,
                            cwd=str(BOOK), kernel_name="python3", progress_bar=False,
                            log_output=False, execution_timeout=cell_timeout)
        outcome = Outcome(chapter, True, "ran to the end")
    except pm.PapermillExecutionError as error:
        outcome = Outcome(chapter, False, f"cell {error.cell_index}: {error.ename}: {error.evalue}")
    except (CellTimeoutError, DeadKernelError) as error:
        outcome = Outcome(chapter, False, f"{type(error).__name__}: {error}")
    finally:
        if old_tmp is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_tmp
        tempfile.tempdir = None  # this process cached the work folder (kernel connection files)
    outcome.seconds = time.perf_counter() - started
    outcome.disk_bytes = folder_bytes(work)
    if not keep:
        shutil.rmtree(work)
    return outcome


def summary(outcomes: list[Outcome]) -> str:
    """A Markdown table of the outcomes (printed, and added to the GitHub job summary)."""
    lines = ["| chapter | result | time | disk |", "| --- | --- | --- | --- |"]
    for o in outcomes:
        lines.append(f"| {o.chapter} | {'passed' if o.ok else 'FAILED'}: {o.note} | {o.seconds:.0f} s "
                     f"| {o.disk_bytes / 1024**3:.2f} GiB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every profile (or those named by ``--only``); return 1 if any chapter failed."""
    parser = argparse.ArgumentParser(prog="python tools/smoke.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=Path, default=BOOK / "profiles" / "aws")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "smoke")
    parser.add_argument("--only", nargs="*", default=None, help="these chapters only (by name)")
    parser.add_argument("--data-source", default=None, help="replace each profile's data_source")
    parser.add_argument("--allow-missing", action="append", default=[],
                        help="drop this parameter where the chapter does not declare it yet")
    parser.add_argument("--keep", action="store_true", help="keep each chapter's work folder")
    parser.add_argument("--cell-timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args(argv)

    profiles = sorted(args.profiles.glob("*.yaml"))
    if args.only is not None:
        unknown = sorted(set(args.only) - {p.stem for p in profiles})
        if unknown:
            print(f"smoke: no profile for {unknown} in {args.profiles}", file=sys.stderr)
            return 2
        profiles = [p for p in profiles if p.stem in args.only]
    if not profiles:
        print(f"smoke: no profiles (*.yaml) in {args.profiles}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for profile in profiles:
        outcome = run_profile(profile, args.out.resolve(), args.data_source, set(args.allow_missing),
                              args.keep, args.cell_timeout)
        print(f"{outcome.chapter}: {'passed' if outcome.ok else 'FAILED'} ({outcome.note})", flush=True)
        outcomes.append(outcome)
    table = summary(outcomes)
    print(table)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a") as handle:
            handle.write(f"## Chapters on {args.data_source or 'the profiles data sources'}\n\n{table}\n")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
