"""The real-data parameter profiles (book/profiles/aws/) on the sample world: a profile that a chapter
no longer accepts fails here, not on the weekly real-data run.

Each profile runs through ``tools/smoke.py`` (what ``make smoke-aws`` and the workflow run) with
``--data-source sample`` and the rest of the profile as it is. :data:`PLANNED` names the parameters
a profile sets that its chapter does not declare yet: they are dropped while the chapter lacks them,
and any other undeclared parameter fails the test.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from support.notebooks import BOOK, parameters_of

ROOT = BOOK.parent
PROFILES = BOOK / "profiles" / "aws"
TOOL = ROOT / "tools" / "smoke.py"
#: Parameters the profiles set that the chapters do not declare yet (see each profile's comments).
PLANNED: dict[str, set[str]] = {}

pytestmark = pytest.mark.slow


def _smoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True,
                          timeout=1800, cwd=ROOT)


def test_every_chapter_has_a_real_data_profile():
    """One profile per chapter, each for the real services and only with literal values."""
    chapters = {p.stem for p in BOOK.glob("*.ipynb")}
    profiles = {p.stem for p in PROFILES.glob("*.yaml")}
    assert profiles == chapters, (f"chapters without a profile: {chapters - profiles}; "
                                  f"profiles without a chapter: {profiles - chapters}")
    for path in PROFILES.glob("*.yaml"):
        assert yaml.safe_load(path.read_text())["data_source"] == "aws", path.name


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Every profile in one run of the tool (as `make smoke-aws` runs them), on the sample world."""
    out = tmp_path_factory.mktemp("smoke")
    planned = sorted(set().union(*PLANNED.values()))
    result = _smoke("--out", str(out), "--data-source", "sample",
                    *[f"--allow-missing={name}" for name in planned])
    return out, result


@pytest.mark.parametrize("chapter", sorted(p.stem for p in PROFILES.glob("*.yaml")))
def test_profile_runs_on_the_sample_world(chapter, smoke_run):
    """The chapter runs to the end with its profile (data_source switched to sample)."""
    out, result = smoke_run
    profile = yaml.safe_load((PROFILES / f"{chapter}.yaml").read_text())
    declared = parameters_of(BOOK / f"{chapter}.ipynb")
    undeclared = set(profile) - set(declared)
    planned = PLANNED.get(chapter, set())
    assert undeclared <= planned, (f"book/{chapter}.ipynb no longer accepts {sorted(undeclared - planned)} "
                                   f"from book/profiles/aws/{chapter}.yaml")
    assert f"{chapter}: passed" in result.stdout, result.stdout[-4000:] + result.stderr[-4000:]
    executed = nbformat.read(out / f"{chapter}.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1
    values = {node.targets[0].id: ast.literal_eval(node.value)
              for node in ast.parse(injected[0].source).body if isinstance(node, ast.Assign)}
    expected = {name: value for name, value in profile.items() if name in declared}
    assert values == {**expected, "data_source": "sample"}
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert not (out / "work" / chapter).exists()  # the chapter's data went with its work folder


def test_the_whole_run_passes(smoke_run):
    """Every chapter in one run: exit status 0 and a summary row per chapter."""
    _, result = smoke_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for path in PROFILES.glob("*.yaml"):
        assert f"| {path.stem} | passed: ran to the end |" in result.stdout


def test_an_undeclared_parameter_fails_before_running(tmp_path):
    """A profile setting a parameter the chapter lacks fails at once, naming both."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "getting_started.yaml").write_text("data_source: aws\nrelese: '20230630'\n")
    result = _smoke("--profiles", str(profiles), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "book/getting_started.ipynb has no parameter ['relese']" in result.stdout, result.stdout
    assert "getting_started: FAILED" in result.stdout
    assert not (tmp_path / "out" / "getting_started.ipynb").exists()  # nothing ran
    assert "release" in parameters_of(BOOK / "getting_started.ipynb")  # the fix the message points to


def test_a_failing_chapter_fails_the_run(tmp_path):
    """An error in a chapter makes the exit status 1 and names the cell and the error."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "getting_started.yaml").write_text("data_source: aws\nrelease: '19990101'\n")
    result = _smoke("--profiles", str(profiles), "--out", str(tmp_path / "out"), "--data-source", "sample")
    assert result.returncode == 1, result.stdout[-3000:]
    assert "getting_started: FAILED (cell" in result.stdout and "19990101" in result.stdout
    assert Path(tmp_path / "out" / "getting_started.ipynb").is_file()  # kept, for the artifacts
