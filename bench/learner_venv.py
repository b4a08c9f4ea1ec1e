"""Benchmark: the disk a learner's Python environment takes (a venv of ``requirements.txt``).

The workshop page quotes this figure (the learners' checklist), so it comes from here. By default a
fresh venv is made in a temporary folder with the running Python and ``pip install -r
requirements.txt`` of this checkout (pip's cache makes it faster, not smaller); ``--venv PATH``
measures a venv made that way already, ``--requirements`` names another requirements file. The
figures: the disk the venv's files occupy (allocated blocks, as ``du`` counts) and the sum of their
sizes, in GB of 1024**3 bytes (the package's units). Prints one JSON line last; ``--save`` writes
``bench/results/learner_venv.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _measure import add_save_arguments, save_result

ROOT = Path(__file__).resolve().parent.parent


def usage(folder: Path) -> tuple[int, int]:
    """(bytes allocated on disk, bytes of content) of every file under *folder*, each file once."""
    seen, blocks, size = set(), 0, 0
    for path in folder.rglob("*"):
        info = path.lstat()
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        blocks += info.st_blocks * 512
        size += info.st_size
    return blocks, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requirements", type=Path, default=ROOT / "requirements.txt")
    parser.add_argument("--venv", type=Path, default=None, help="measure this venv instead of making one")
    add_save_arguments(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-venv-") as folder:
        venv = args.venv
        if venv is None:
            venv = Path(folder) / ".venv"
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-r", str(args.requirements.resolve())],
                           check=True, cwd=args.requirements.resolve().parent, env={**os.environ})
        disk, content = usage(venv)
    summary = {"venv_disk_gb": round(disk / 1024**3, 2), "venv_content_gb": round(content / 1024**3, 2)}
    if args.save:
        print(f"saved to {save_result('learner_venv', summary, False, args.note)}", file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
