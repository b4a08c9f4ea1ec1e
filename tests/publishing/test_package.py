"""The installable package: one version, an sdist and a wheel that carry the sample world's data
files (not the tests or the book), pass ``twine check``, and work alone in a fresh virtualenv.

The build runs offline (``--no-isolation``: setuptools and build come from the test's own
environment). The fresh venv (``python -m venv``) gets the wheel *with its dependencies* from the
package index (pip's cache makes this quick), so a dependency missing from ``pyproject.toml`` fails
here: it sees neither this checkout nor the test environment, and builds its own sample world.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import abc_helpers
from abc_helpers.sample.build import world_fingerprint
from abc_helpers.sources import ABC_BUCKET

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The sdist and the wheel, built from this checkout (the wheel from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)])
    return out


def test_version_is_defined_once():
    """pyproject.toml reads the version from abc_helpers.__version__, which is a plain literal."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "abc_helpers.__version__"}
    tree = ast.parse((ROOT / "abc_helpers" / "__init__.py").read_text())
    literals = [node.value.value for node in tree.body if isinstance(node, ast.Assign)
                and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
                and isinstance(node.value, ast.Constant)]
    assert literals == [abc_helpers.__version__]
    assert f"## [{abc_helpers.__version__}]" in (ROOT / "CHANGELOG.md").read_text()


def test_sdist_and_wheel_carry_the_data_not_the_tests(dist):
    """Both archives hold every module and the sample data files, and no tests, book or tools."""
    version = abc_helpers.__version__
    wheel = dist / f"abc_helpers-{version}-py3-none-any.whl"
    sdist = dist / f"abc_helpers-{version}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), sorted(p.name for p in dist.iterdir())
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    with tarfile.open(sdist) as tar:
        in_sdist = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    package = ROOT / "abc_helpers"
    modules = {p.relative_to(ROOT).as_posix() for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    data = {p.relative_to(ROOT).as_posix() for p in (package / "sample" / "data").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}
    assert "abc_helpers/sample/data/allen_structure_tree.csv" in data
    assert "abc_helpers/sample/data/nwb/core-2.7.0/nwb.file.yaml" in data  # the NWB schema the files cache
    for contents, name in ((in_wheel, wheel.name), (in_sdist, sdist.name)):
        assert modules | data <= contents, f"{name} misses {sorted((modules | data) - contents)}"
        stray = [n for n in contents if n.split("/")[0] in ("tests", "book", "bench", "tools", "binder")]
        assert not stray, f"{name} carries {stray[:5]}"
    assert "README.md" in in_sdist and "CHANGELOG.md" in in_sdist
    assert f"abc_helpers-{version}.dist-info/entry_points.txt" in in_wheel


def test_twine_check_passes(dist):
    """twine check accepts both archives (metadata and the README as the long description)."""
    result = _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())])
    assert result.stdout.count("PASSED") == 2, result.stdout


#: Run by the fresh venv's Python from a folder outside the checkout: a cache downloads through the
#: server (argv[1]) into argv[2], checks the hashes and opens an NWB session, and prints what it used.
CLIENT = """
import json, sys
from pathlib import Path

import abc_helpers, numpy, pynwb
from abc_helpers import AbcProjectCache, VbnProjectCache, file_hash

url, cache_dir = sys.argv[1], Path(sys.argv[2])
abc = AbcProjectCache.from_s3_cache(cache_dir / "abc", source=url, progressbar=False)
path = abc.get_metadata_path("WMB-10X", "gene")
attrs = abc.get_file_attributes("WMB-10X", "gene")
assert file_hash(path, "md5") == attrs.known_hash, (path, attrs)

vbn = VbnProjectCache.from_s3_cache(cache_dir / "vbn", source=url, progressbar=False)
manifest = json.loads((vbn.cache_dir / vbn.current_manifest()).read_text())
sessions = vbn.get_ecephys_session_table(filter_abnormalities=False)
with_file = sessions[sessions["file_id"].astype(str).isin(manifest["data_files"])]
session_id = int(with_file.index[0])
with vbn.get_ecephys_session(session_id) as session:
    assert session.ecephys_session_id == session_id

print(json.dumps({"manifest": abc.current_manifest, "path": str(path), "relative_path": attrs.relative_path,
                  "md5": attrs.known_hash, "session": session_id, "sys_path": sys.path,
                  "modules": {m.__name__: m.__file__ for m in (abc_helpers, numpy, pynwb)},
                  "version": abc_helpers.__version__}))
"""


def _clean_env(sample_dir: Path) -> dict[str, str]:
    """This process's environment without anything Python or abc_helpers (the machine's pip
    configuration, PATH and HOME stay), and a fresh folder for the sample world."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "ABC_HELPERS_", "VIRTUAL_ENV", "CONDA", "PYTEST", "COV_"))}
    env["ABC_HELPERS_SAMPLE_DIR"] = str(sample_dir)
    return env


def test_wheel_with_its_dependencies_builds_serves_and_downloads(dist, tmp_path):
    """A fresh venv with the wheel and its declared dependencies, outside the checkout: it builds
    the sample world, serves it, and an AbcProjectCache and a VbnProjectCache download through it."""
    wheel = next(dist.glob("*.whl"))
    work = tmp_path / "elsewhere"  # the current folder of every command: not the checkout
    work.mkdir()
    sample_dir = tmp_path / "sample-worlds"
    env = _clean_env(sample_dir)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=work, env=env)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    _run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], cwd=work, env=env)
    _run([str(python), "-m", "pip", "check"], cwd=work, env=env)

    # the console script builds the world in the fresh sample folder, from the installed generators
    built = _run([str(bin_dir / "abc-helpers-sample"), "build"], cwd=work, env=env).stdout
    world = sample_dir / world_fingerprint()  # the same generators as this checkout's
    assert f"sample world: {world} " in built, built
    assert json.loads((world / "WORLD.json").read_text())["synthetic"] is True

    server = subprocess.Popen([str(python), "-m", "abc_helpers.sample", "serve", "--port", "0"],
                              cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), (url, server.poll(), server.stderr.read())
        (work / "client.py").write_text(CLIENT)
        facts = json.loads(_run([str(python), "client.py", url, str(tmp_path / "cache")],
                                cwd=work, env=env).stdout)
    finally:
        server.terminate()
        server.wait(timeout=30)

    assert facts["version"] == abc_helpers.__version__
    for name, module in facts["modules"].items():  # the package and its libraries: the venv's own
        assert Path(module).is_relative_to(venv), (name, module)
    assert not [p for p in facts["sys_path"] if p and Path(p).resolve().is_relative_to(ROOT)]
    assert facts["manifest"].startswith("releases/")
    # the downloaded file is the served one, byte for byte (md5 computed here, independently)
    served = world / "s3" / ABC_BUCKET / facts["relative_path"]
    downloaded = Path(facts["path"]).read_bytes()
    assert downloaded == served.read_bytes() and len(downloaded) > 0
    assert facts["md5"] == "md5:" + hashlib.md5(downloaded).hexdigest()


def test_changelog_links_name_the_tags_of_its_versions():
    """Each released section of CHANGELOG.md links to the tree of its tag, v<version>; [Unreleased]
    compares the newest tag with HEAD; where git has the tags, each holds that version."""
    text = (ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d\d-\d\d$", text, flags=re.MULTILINE)
    assert versions, "CHANGELOG.md has no released version"
    links = dict(re.findall(r"^\[([^\]]+)\]: (\S+)$", text, flags=re.MULTILINE))
    repository = "https://github.com/allen-open-data/abc_helpers"
    assert links["Unreleased"] == f"{repository}/compare/v{versions[0]}...HEAD"
    for version in versions:
        assert links[version] == f"{repository}/tree/v{version}", links.get(version)
        shown = subprocess.run(["git", "show", f"v{version}:abc_helpers/__init__.py"], cwd=ROOT,
                               capture_output=True, text=True)
        if shown.returncode != 0:  # a shallow clone (CI's checkout) fetches no tags
            continue
        assert f'__version__ = "{version}"' in shown.stdout
