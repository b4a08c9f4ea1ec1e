"""Binder and Colab: the image installs what every chapter imports; the Colab cell installs the
package on Colab only."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import types
from importlib.metadata import packages_distributions
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BINDER = ROOT / "binder"
COLAB_CELL = ROOT / "tools" / "colab_cell.py"


def _names(requirements: list[str]) -> set[str]:
    """Normalised distribution names of requirement lines (no versions, extras or markers)."""
    out = set()
    for line in requirements:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.add(re.split(r"[\s<>=!~;\[@]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return out


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_binder_requirements_cover_the_package_and_the_book_extra():
    """binder/requirements.txt lists every dependency of the package and of its `book` extra, and
    the rest of the learners' requirements.txt (JupyterLab, papermill)."""
    project = _project()
    needed = _names(project["dependencies"]) | _names(project["optional-dependencies"]["book"])
    needed |= _names((ROOT / "requirements.txt").read_text().splitlines())
    listed = _names((BINDER / "requirements.txt").read_text().splitlines())
    assert needed <= listed, f"binder/requirements.txt misses {sorted(needed - listed)}"
    assert (BINDER / "runtime.txt").read_text().strip().startswith("python-3.")


def test_binder_requirements_cover_every_chapter_import():
    """Every module a chapter imports is the standard library's, abc_helpers or installed by Binder."""
    listed = _names((BINDER / "requirements.txt").read_text().splitlines())
    dists = {module: {d.lower().replace("_", "-") for d in names}
             for module, names in packages_distributions().items()}
    missing = {}
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "code":
                continue
            for node in ast.walk(ast.parse(cell.source)):
                modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                           else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0
                           else [])
                for module in modules:
                    top = module.split(".")[0]
                    if top in sys.stdlib_module_names or top == "abc_helpers":
                        continue
                    if not dists.get(top, set()) & listed:
                        missing.setdefault(top, []).append(path.name)
    assert not missing, f"chapters import modules Binder does not install: {missing}"


def test_postbuild_installs_the_package_and_builds_the_sample_world():
    """postBuild is an executable bash script that installs this checkout and builds the world."""
    post = BINDER / "postBuild"
    assert post.stat().st_mode & 0o111, "binder/postBuild must be executable"
    lines = [line.strip() for line in post.read_text().splitlines()]
    assert lines[0] == "#!/bin/bash" and "set -euo pipefail" in lines
    install = [line for line in lines if line.startswith("python -m pip install")]
    assert install and install[0].endswith(" .") and "--no-deps" in install[0]
    assert lines.index(install[0]) < lines.index("python -m abc_helpers.sample build")
    result = subprocess.run(["bash", "-n", str(post)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _run_colab_cell(monkeypatch, on_colab: bool) -> list:
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: calls.append((args, kwargs)))
    if on_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(COLAB_CELL.read_text(), str(COLAB_CELL), "exec"), {"__name__": "__main__"})
    return calls


def test_colab_cell_does_nothing_elsewhere(monkeypatch):
    """Outside Colab the cell runs nothing."""
    assert _run_colab_cell(monkeypatch, on_colab=False) == []


def test_colab_cell_installs_the_package_on_colab(monkeypatch):
    """On Colab the cell pip-installs abc_helpers with its `book` extra from this repository."""
    calls = _run_colab_cell(monkeypatch, on_colab=True)
    assert len(calls) == 1
    (command,), kwargs = calls[0]
    assert command[:4] == [sys.executable, "-m", "pip", "install"] and kwargs == {"check": True}
    repository = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    assert command[-1] == f"abc_helpers[book] @ git+{repository}@main"
    assert "book" in _project()["optional-dependencies"]
