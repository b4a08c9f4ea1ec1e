"""AbcProjectCache against the sample world over loopback: every call of the Allen tutorial."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
from collections import namedtuple
from pathlib import Path

import pandas as pd
import pytest

from abc_helpers import (
    AbcProjectCache,
    DataTypeNotInDirectory,
    LargeDataSizeWarning,
    OutdatedManifestWarning,
    format_size,
)


@pytest.fixture
def cache(tmp_path, sample_source) -> AbcProjectCache:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutdatedManifestWarning)
        return AbcProjectCache.from_cache_dir(tmp_path / "abc", source=sample_source)


def _md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _requests(server) -> int:
    return sum(server.stats()["requests"].values())


def test_releases_and_current_manifest(cache):
    """A fresh cache lists the releases and loads the newest one."""
    names = cache.list_manifest_file_names
    assert len(names) >= 3 and names == sorted(names)
    assert all(n.startswith("releases/") and n.endswith("/manifest.json") for n in names)
    assert cache.current_manifest == cache.latest_manifest_file == names[-1]
    assert cache.list_all_downloaded_manifests == [names[-1]]


def test_switching_releases_warns_and_is_remembered(cache, sample_source):
    """Loading an old release warns; the choice survives a new session, which warns again."""
    oldest, latest = cache.list_manifest_file_names[0], cache.latest_manifest_file
    with pytest.warns(OutdatedManifestWarning, match="not the most up to date"):
        cache.load_manifest(oldest)
    assert cache.current_manifest == oldest
    with pytest.warns(OutdatedManifestWarning, match=f"A more up to date version of the dataset -- {latest}"):
        again = AbcProjectCache.from_s3_cache(cache.cache_dir, source=sample_source)
    assert again.current_manifest == oldest
    assert (cache.cache_dir / "_manifest_last_used.txt").read_text() == oldest
    with pytest.warns(OutdatedManifestWarning, match="newer than the most recent manifest"):
        again.load_latest_manifest()
    assert again.current_manifest == latest
    with pytest.raises(ValueError, match="is not a release manifest"):
        again.load_manifest("releases/20990101/manifest.json")


def test_compare_releases(cache):
    """The oldest and newest releases differ by a directory added and files changed."""
    oldest, latest = cache.list_manifest_file_names[0], cache.latest_manifest_file
    diff = cache.compare_manifests(latest, oldest)
    assert diff.directories_added, "a later release adds a directory"
    assert diff.files_changed, "a later release changes a file"
    assert diff.directory_versions_changed
    frame = diff.to_dataframe()
    assert {"added", "changed"} <= set(frame["change"])
    with pytest.raises(ValueError, match="pass the newer release first"):
        cache.compare_manifests(oldest, latest)


def test_listing_and_sizes(cache):
    """Directories, data and metadata files, and sizes formatted like the Allen tools."""
    dirs = cache.list_directories
    for name in ("WMB-10X", "WMB-10Xv2", "WMB-10Xv3", "WMB-10XMulti", "WMB-taxonomy", "Allen-CCF-2020"):
        assert name in dirs
    data = cache.list_data_files("WMB-10Xv2")
    assert "WMB-10Xv2-TH/log2" in data and "WMB-10Xv2-TH/raw" in data and len(data) == 20
    assert "gene" in cache.list_metadata_files("WMB-10X")
    expected = sum(cache.get_file_attributes("WMB-10Xv2", n).size for n in data)
    assert cache.get_directory_data_size("WMB-10Xv2") == format_size(expected)
    taxonomy = sum(cache.get_file_attributes("WMB-taxonomy", n).size
                   for n in cache.list_metadata_files("WMB-taxonomy"))
    assert 1024 < taxonomy < 1024**2  # a few hundred KiB: abc_atlas_access still says MB ...
    size = cache.get_directory_metadata_size("WMB-taxonomy")
    assert size == format_size(taxonomy) and re.fullmatch(r"0\.\d{1,2} MB", size), size  # ... e.g. '0.21 MB'
    with pytest.raises(DataTypeNotInDirectory, match="No metadata files found in directory WMB-10Xv2"):
        cache.list_metadata_files("WMB-10Xv2")


def test_download_directory_once(cache, sample_server):
    """A directory downloads verified files; asking again sends no request."""
    paths = cache.get_directory_data("Allen-CCF-2020")
    assert paths and all(p.is_file() for p in paths)
    for p in paths:
        rel = p.relative_to(cache.cache_dir).as_posix()
        attrs = next(a for a in cache.manifest.files("Allen-CCF-2020") if a.relative_path == rel)
        assert _md5(p) == attrs.file_hash and rel.startswith("image_volumes/Allen-CCF-2020/")
    record = json.loads((cache.cache_dir / "_downloaded_data.json").read_text())["files"]
    assert all(not Path(k).is_absolute() for k in record)
    sample_server.reset_stats()
    assert cache.get_directory_data("Allen-CCF-2020") == paths
    assert _requests(sample_server) == 0
    meta = cache.get_directory_metadata("WMB-taxonomy")
    assert any("/views/" in p.as_posix() for p in meta)


def test_files_and_dataframes(cache):
    """Metadata paths and dataframes; read_csv keyword arguments are passed on."""
    path = cache.get_metadata_path(directory="WMB-10X", file_name="gene")
    assert path == cache.cache_dir / cache.get_file_attributes("WMB-10X", "gene").relative_path
    genes = cache.get_metadata_dataframe(directory="WMB-10X", file_name="gene")
    assert list(genes.columns) == ["gene_identifier", "gene_symbol", "name", "mapped_ncbi_identifier", "comment"]
    indexed = cache.get_metadata_dataframe("WMB-10X", "gene", index_col="gene_identifier")
    assert indexed.index.name == "gene_identifier" and len(indexed) == len(genes)
    h5ad = cache.get_data_path(directory="WMB-10XMulti", file_name="WMB-10XMulti/log2")
    assert h5ad.name == "WMB-10XMulti-log2.h5ad" and h5ad.stat().st_size > 0


def test_ambiguous_and_unknown_names(cache):
    """The ambiguous-name error names the valid choices; near misses are suggested."""
    with pytest.raises(KeyError, match=r"'WMB-10XMulti' is ambiguous: use one of 'WMB-10XMulti/log2', 'WMB-10XMulti/raw'"):
        cache.get_data_path(directory="WMB-10XMulti", file_name="WMB-10XMulti")
    with pytest.raises(KeyError, match="Did you mean 'WMB-taxonomy'"):
        cache.list_metadata_files("WMB-taxonomi")
    with pytest.raises(KeyError, match="Did you mean 'gene'"):
        cache.get_metadata_path("WMB-10X", "genes")


def test_force_download_and_skip_hash_check(cache, sample_server):
    """force_download fetches again; skip_hash_check records the file without a hash."""
    cache.get_metadata_path("WMB-10X", "gene")
    sample_server.reset_stats()
    cache.get_metadata_path("WMB-10X", "gene", force_download=True)
    assert _requests(sample_server) == 1
    attrs = cache.get_file_attributes("WMB-taxonomy", "cluster")
    cache.get_metadata_path("WMB-taxonomy", "cluster", skip_hash_check=True)
    record = json.loads((cache.cache_dir / "_downloaded_data.json").read_text())["files"]
    assert record[attrs.relative_path]["hash"] is None


def test_truncated_file_is_fetched_again(cache, sample_server):
    """A file cut short on disk (size differs from the manifest) is downloaded again."""
    path = cache.get_metadata_path("WMB-10X", "gene")
    good = _md5(path)
    path.write_bytes(path.read_bytes()[:100])
    assert _md5(cache.get_metadata_path("WMB-10X", "gene")) == good


def test_tampered_unrecorded_file_is_replaced(cache):
    """A file that appeared at a final path without a record is checked by hash, then replaced."""
    attrs = cache.get_file_attributes("WMB-10X", "gene")
    target = cache.cache_dir / attrs.relative_path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"x" * attrs.size)  # right size, wrong bytes
    assert _md5(cache.get_metadata_path("WMB-10X", "gene")) == attrs.file_hash


def test_moved_cache_needs_no_download(cache, tmp_path, sample_source, sample_server):
    """Records are relative: a moved cache folder is still complete."""
    cache.get_directory_metadata("WMB-taxonomy")
    moved = tmp_path / "moved"
    shutil.move(str(cache.cache_dir), moved)
    again = AbcProjectCache.from_s3_cache(moved, source=sample_source)
    sample_server.reset_stats()
    again.get_directory_metadata("WMB-taxonomy")
    assert _requests(sample_server) == 0


def test_local_cache_is_read_only(cache):
    """A local cache serves what is there, never downloads, and says what is missing."""
    cache.get_metadata_path("WMB-10X", "gene")
    local = AbcProjectCache.from_local_cache(cache.cache_dir)
    assert local.current_manifest == cache.current_manifest
    assert local.get_metadata_dataframe("WMB-10X", "gene").shape[0] > 0
    with pytest.raises(FileNotFoundError, match="local \\(read-only\\) cache"):
        local.get_metadata_path("WMB-taxonomy", "cluster")


def test_large_directory_warns(tmp_path, sample_source):
    """A directory bigger than the threshold warns before downloading."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutdatedManifestWarning)
        cache = AbcProjectCache.from_s3_cache(tmp_path, source=sample_source, large_directory_bytes=1000)
    with pytest.warns(LargeDataSizeWarning, match="Allen-CCF-2020 data is"):
        cache.get_directory_data("Allen-CCF-2020")


def test_directory_that_does_not_fit_is_refused(cache, monkeypatch):
    """Not enough disk space: a clear error before any byte is written."""
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with pytest.raises(OSError, match="Not enough disk space"):
        cache.get_directory_data("Allen-CCF-2020")
    assert not (cache.cache_dir / "image_volumes").exists()


def test_metadata_dataframe_matches_source(cache):
    """The CSV read through the cache equals the object the server holds."""
    frame = cache.get_metadata_dataframe("WMB-taxonomy", "cluster")
    assert isinstance(frame, pd.DataFrame) and len(frame) > 0


def test_progressbar_false_prints_no_bar(tmp_path, sample_source, capfd):
    """progressbar=False (the cache's, or one call's) silences the download bars on stderr."""
    quiet = AbcProjectCache.from_s3_cache(tmp_path / "quiet", source=sample_source, progressbar=False)
    quiet.get_metadata_path("WMB-10X", "gene")
    quiet.get_directory_metadata("WMB-taxonomy")
    assert "B/s" not in capfd.readouterr().err
    loud = AbcProjectCache.from_s3_cache(tmp_path / "loud", source=sample_source)
    loud.get_metadata_path("WMB-10X", "gene", progressbar=False)
    assert "B/s" not in capfd.readouterr().err
    loud.get_metadata_path("WMB-10X", "cell_metadata")
    assert "cell_metadata.csv" in capfd.readouterr().err  # the default shows the bar: the check can fail
