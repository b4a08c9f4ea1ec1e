"""The workshop page works as written: its rehearsal commands, run verbatim, fill a mirror from the
sample world, serve it and run every chapter against it.

The commands are read from the ``bash`` blocks of the section *Rehearsing the mirror* of
``book/workshop.md`` and run, unchanged, by bash in a fresh folder that holds links to the
repository's ``book/`` and to the running Python environment as ``.venv`` (so ``.venv/bin/...`` and
``book/...`` mean what they mean in a learner's checkout). The ``serve`` command runs in the
background, as in the instructor's first terminal, until the chapters are done.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import threading
from pathlib import Path

import nbformat
import pytest
from support.notebooks import BOOK

pytestmark = pytest.mark.slow

WORKSHOP = BOOK / "workshop.md"


def rehearsal_commands() -> list[str]:
    """The commands of the rehearsal section's bash blocks, in order."""
    text = WORKSHOP.read_text()
    section = re.search(r"^### Rehearsing the mirror\n(.*?)^#", text, re.S | re.M)
    assert section, "workshop.md has no section '### Rehearsing the mirror'"
    blocks = re.findall(r"^```bash\n(.*?)^```", section.group(1), re.S | re.M)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_rehearsal_names_every_chapter():
    """The rehearsal fills a mirror from the sample, serves it and runs each chapter of the book."""
    commands = rehearsal_commands()
    assert sum(" fill-mirror " in c and "--source sample" in c for c in commands) == 1
    assert sum(" serve --mirror " in c for c in commands) == 1
    run = {Path(shlex.split(c)[1]).stem for c in commands if c.startswith(".venv/bin/papermill ")}
    assert run == {p.stem for p in BOOK.glob("*.ipynb")}


def test_the_fill_mirror_examples_agree():
    """The rehearsal fills the mirror with the options of the page's real-data example (source aside)."""
    text = WORKSHOP.read_text()
    example = re.search(r"```bash\n(\.venv/bin/python -m abc_helpers\.sample fill-mirror /data/mirror.*?)```",
                        text, re.S).group(1)
    options = shlex.split(example.replace("\\\n", " "))[5:]  # after the mirror folder
    rehearsal = next(c for c in rehearsal_commands() if " fill-mirror " in c)
    mine = shlex.split(rehearsal)[5:]
    drop = {"--source", "sample", "aws", "--quiet"}
    assert [o for o in options if o not in drop] == [o for o in mine if o not in drop]


def _port(command: str) -> int:
    return int(re.search(r"--port (\d+)", command).group(1))


def test_rehearsal_runs_verbatim(tmp_path):
    """Every rehearsal command succeeds as written; each chapter ends without an error."""
    commands = rehearsal_commands()
    serve = next(c for c in commands if " serve --mirror " in c)
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", _port(serve))) == 0:
            pytest.skip(f"port {_port(serve)} is in use on this machine: the rehearsal's server cannot start")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    (tmp_path / "book").symlink_to(BOOK, target_is_directory=True)
    if not (tmp_path / ".venv" / "bin" / "papermill").exists():
        pytest.skip("papermill's command is not installed in this environment")

    def run(command: str) -> None:
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    before = commands[:commands.index(serve)]
    after = commands[commands.index(serve) + 1:]
    for command in before:
        run(command)
    server = subprocess.Popen(["bash", "-c", f"exec {serve}"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        ready = threading.Event()
        printed: list[str] = []

        def watch() -> None:
            for line in server.stdout:
                printed.append(line)
                if "http://" in line:
                    ready.set()

        threading.Thread(target=watch, daemon=True).start()
        assert ready.wait(60), f"the server printed no address: {''.join(printed)}"
        for command in after:
            run(command)
    finally:
        server.terminate()
        server.wait(30)
    for command in after:
        out = tmp_path / shlex.split(command)[2]
        nb = nbformat.read(out, as_version=4)
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
        assert not errors, (out.name, errors)
