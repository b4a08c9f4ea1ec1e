"""The installable package: one version, an sdist and a wheel that carry the sample world's data
files (not the tests or the book), pass ``twine check``, and work alone in a fresh virtualenv.

The build runs offline (``--no-isolation``: setuptools and build come from the test's own
environment). The fresh venv gets the wheel only (``--no-deps``); the libraries it needs are made
importable by a ``.pth`` line naming this environment's site-packages, whose own ``.pth`` files
(the editable install of this checkout among them) are not processed from there.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import abc_helpers
from abc_helpers.sample import build_world, default_world_dir

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
    data = {p.relative_to(ROOT).as_posix() for p in (package / "sample" / "data").iterdir()}
    assert "abc_helpers/sample/data/allen_structure_tree.csv" in data
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


def test_wheel_alone_serves_the_sample_world_and_downloads(dist, tmp_path):
    """A fresh venv with only the wheel: `python -m abc_helpers.sample serve`, then a cache
    download against it, both from the installed copy."""
    wheel = next(dist.glob("*.whl"))
    venv = tmp_path / "venv"
    # nothing of this checkout on the path (PYTHONPATH, or the current folder for `python -c`)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
         cwd=tmp_path, env=env)
    fresh_site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           cwd=tmp_path, env=env).stdout.strip())
    # the libraries, from this environment, without its editable abc_helpers (.pth not processed)
    (fresh_site / "zz_test_libraries.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    build_world()  # the world of this checkout; the wheel must find the very same one

    probe = ("import json, abc_helpers; from abc_helpers.sample import default_world_dir; "
             "print(json.dumps({'file': abc_helpers.__file__, 'version': abc_helpers.__version__, "
             "'world': str(default_world_dir())}))")
    facts = json.loads(_run([str(python), "-c", probe], cwd=tmp_path, env=env).stdout)
    assert Path(facts["file"]).is_relative_to(venv), facts["file"]
    assert facts["version"] == abc_helpers.__version__
    # the same generators and data files: the wheel's world fingerprint is this checkout's
    assert facts["world"] == str(default_world_dir())

    server = subprocess.Popen([str(python), "-m", "abc_helpers.sample", "serve", "--port", "0"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), (url, server.poll())
        client = (
            "import sys, abc_helpers\n"
            "from abc_helpers import AbcProjectCache, file_hash\n"
            "cache = AbcProjectCache.from_s3_cache(sys.argv[1], source=sys.argv[2], progressbar=False)\n"
            "path = cache.get_metadata_path('WMB-10X', 'gene')\n"
            "attrs = cache.get_file_attributes('WMB-10X', 'gene')\n"
            "assert file_hash(path, 'md5') == attrs.known_hash, (path, attrs)\n"
            "print(cache.current_manifest, path.stat().st_size, abc_helpers.__file__)\n"
        )
        result = _run([str(python), "-c", client, str(tmp_path / "cache"), url], cwd=tmp_path, env=env)
        manifest, size, module = result.stdout.split()
        assert manifest.startswith("releases/") and int(size) > 0
        assert Path(module).is_relative_to(venv)
        assert (tmp_path / "cache" / "metadata" / "WMB-10X").is_dir()
    finally:
        server.terminate()
        server.wait(timeout=30)
