"""run_information: what produced a page, and which of its lines book/sanitize.cfg masks for nbval."""

from __future__ import annotations

import platform
import re
import warnings
from datetime import datetime, timedelta, timezone
from importlib.metadata import version
from pathlib import Path

import pytest

import abc_helpers
from abc_helpers import AbcProjectCache, OutdatedManifestWarning, VbnProjectCache, run_information

SANITIZE = Path(__file__).resolve().parents[1] / "book" / "sanitize.cfg"


def _sanitize(text: str) -> str:
    """Apply book/sanitize.cfg the way nbval does (each regex in turn, with re.sub)."""
    pairs = re.findall("^regex: (.*)$\n^replace: (.*)$", SANITIZE.read_text(), flags=re.MULTILINE)
    assert pairs
    for regex, replace in pairs:
        text = re.sub(regex, replace, text)
    return text


def _fields(text: str) -> dict[str, str]:
    lines = text.splitlines()
    assert lines[0] == "Run information (paste it into a bug report)"
    return {line[2:16].strip(): line[16:] for line in lines[1:]}


def test_versions_source_and_date():
    """The package, Python and key library versions, the source and today's date (UTC)."""
    before = datetime.now(timezone.utc)
    fields = _fields(run_information("sample"))
    assert fields["abc_helpers"] == abc_helpers.__version__
    assert fields["python"].startswith(platform.python_version() + " (")
    for name in ("numpy", "pandas", "h5py", "anndata", "SimpleITK", "requests"):
        assert f"{name} {version(name)}" in fields["libraries"]
    assert fields["data source"] == "sample (the synthetic sample world, offline)"
    assert fields["release"] == "none (no release manifest used)"
    stamp = datetime.strptime(fields["date"], "%Y-%m-%d %H:%M UTC").replace(tzinfo=timezone.utc)
    assert before - timedelta(minutes=1) <= stamp <= datetime.now(timezone.utc)


def test_sources_named(sample_source, monkeypatch):
    """aws, a mirror URL, a Source object and the environment's default are each named."""
    assert _fields(run_information("aws"))["data source"].startswith("aws (the real buckets")
    assert _fields(run_information("http://10.0.0.5:8000"))["data source"] == "mirror http://10.0.0.5:8000"
    assert (_fields(run_information(sample_source))["data source"]
            == f"sample (the synthetic sample world, served at {sample_source.root})")
    monkeypatch.setenv("ABC_HELPERS_SOURCE", "http://mirror.example:8000")
    assert _fields(run_information())["data source"] == "mirror http://mirror.example:8000"


def test_releases_of_the_caches(tmp_path, sample_source):
    """Each cache given adds the release or manifest it has loaded."""
    abc = AbcProjectCache.from_s3_cache(tmp_path / "abc", source=sample_source, progressbar=False)
    vbn = VbnProjectCache.from_s3_cache(tmp_path / "vbn", source=sample_source, progressbar=False)
    assert _fields(run_information(sample_source, abc))["ABC release"] == abc.current_manifest
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutdatedManifestWarning)
        abc.load_manifest("releases/20230630/manifest.json")
    fields = _fields(run_information(sample_source, [abc, vbn]))
    assert fields["ABC release"] == "releases/20230630/manifest.json"
    assert fields["VBN manifest"] == vbn.current_manifest() and fields["VBN manifest"].endswith(".json")
    assert "release" not in fields


def test_not_a_cache_is_named():
    """Something that is not a cache is a TypeError naming its type and what to pass."""
    with pytest.raises(TypeError, match=re.escape("got a cache of type 'str': pass an AbcProjectCache")):
        run_information("sample", ["not a cache"])


def test_sanitized_output_is_the_same_on_every_machine_and_day(tmp_path, sample_source):
    """After book/sanitize.cfg, only the data source and the release are left: what nbval compares."""
    abc = AbcProjectCache.from_s3_cache(tmp_path / "abc", source=sample_source, progressbar=False)
    text = run_information("sample", abc)
    other_machine = re.sub(r"\d+\.\d+\.\d+", "9.99.0", text)
    other_machine = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d", "1999-01-01 00:00", other_machine)
    assert other_machine != text
    expected = "\n".join([
        "Run information (paste it into a bug report)",
        "  date          VARIES",
        "  abc_helpers   VARIES",
        "  python        VARIES",
        "  libraries     VARIES",
        "  data source   sample (the synthetic sample world, offline)",
        f"  ABC release   {abc.current_manifest}",
    ])
    assert _sanitize(text) == _sanitize(other_machine) == expected
    # a mirror is named by its URL, which no sanitizer hides: stored chapters run on "sample" only
    mirror = _sanitize(run_information(sample_source.root))
    assert f"  data source   mirror {sample_source.root}\n" in mirror
