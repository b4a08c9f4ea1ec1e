"""The cache-folder core: one record format, a tolerant reader, confinement, atomic writes."""

from __future__ import annotations

import json
import re
import warnings

import pytest

from abc_helpers import AbcProjectCache, OutdatedManifestWarning, VbnProjectCache
from abc_helpers.cachefolder import (
    LAST_USED_FILE,
    RECORD_FILE,
    RECORD_FORMAT,
    CacheFolder,
    FileRecord,
    atomic_path,
    atomic_write_text,
    is_bookkeeping,
    lock_path,
    partial_path,
    temporary_path,
)


def _requests(server) -> int:
    """Object requests since the last reset (bucket listings, which every start-up makes, excluded)."""
    return sum(n for key, n in server.stats()["requests"].items() if not key.endswith("/"))


def _abc(folder, source) -> AbcProjectCache:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutdatedManifestWarning)
        return AbcProjectCache.from_s3_cache(folder, source=source)


def _vbn(folder, source) -> VbnProjectCache:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutdatedManifestWarning)
        return VbnProjectCache.from_s3_cache(folder, source=source, progressbar=False)


def test_bookkeeping_names_are_recognised(tmp_path):
    """Every name the core makes for itself is bookkeeping; data names are not."""
    data = tmp_path / "WMB-10Xv2-TH-log2.h5ad"
    made = [temporary_path(data), temporary_path(data, ".nii.gz"), partial_path(data), lock_path(data),
            tmp_path / RECORD_FILE, tmp_path / LAST_USED_FILE]
    assert all(is_bookkeeping(p.name) for p in made), [p.name for p in made if not is_bookkeeping(p.name)]
    for name in ("gene.csv", "WMB-10Xv2-TH-log2.h5ad", "units.csv", ".hidden", "a.tmp", "x.tmp.csv",
                 "ecephys_session_1052533639.nwb", "units.0123456789abcdef.parquet"):
        assert not is_bookkeeping(name), name
    assert temporary_path(data, ".nii.gz").name.endswith(".tmp.nii.gz")  # writers pick formats by extension


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    """A failing block leaves the final path as it was and no temporary file."""
    target = tmp_path / "sub" / "table.csv"
    atomic_write_text(target, "old")
    def write_half_then_fail() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_half_then_fail()
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.csv"]


def test_paths_are_confined(tmp_path):
    """A relative path that escapes the folder is refused; others resolve inside it."""
    folder = CacheFolder(tmp_path / "cache")
    assert folder.path("metadata/a/b.csv") == folder.root / "metadata/a/b.csv"
    for bad in ("../x.csv", "metadata/../../x.csv", "/etc/passwd"):
        with pytest.raises(ValueError, match=re.escape(f"'{bad}' would be written outside the cache folder")):
            folder.path(bad)


def test_read_only_folder_writes_nothing(tmp_path):
    """A read-only folder neither records nor remembers the last manifest."""
    (tmp_path / "f.csv").write_text("a")
    folder = CacheFolder(tmp_path, read_only=True)
    folder.record({"f.csv": "md5:0cc175b9c0f1b6a831c399e269772661"})
    folder.set_last_used("releases/20231215/manifest.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.csv"]
    assert folder.read_record() == {} and folder.last_used() is None


def test_record_round_trip_and_size(tmp_path):
    """A recorded file matches its hash and recorded size; a changed size does not."""
    folder = CacheFolder(tmp_path)
    path = folder.path("a/b.csv")
    path.parent.mkdir()
    path.write_bytes(b"abc")
    folder.record({"a/b.csv": "MD5:900150983CD24FB0D6963F7D28E17F72"})
    data = json.loads((tmp_path / RECORD_FILE).read_text())
    assert data == {"format": RECORD_FORMAT, "files": {
        "a/b.csv": {"hash": "md5:900150983cd24fb0d6963f7d28e17f72", "size": 3}}}
    entry = folder.read_record()["a/b.csv"]
    assert CacheFolder.matches(entry, path, "md5:900150983cd24fb0d6963f7d28e17f72")
    assert not CacheFolder.matches(entry, path, "md5:00000000000000000000000000000000")
    path.write_bytes(b"abcd")
    assert not CacheFolder.matches(entry, path, "md5:900150983cd24fb0d6963f7d28e17f72")


@pytest.mark.parametrize("damage", ["{not json", "[1, 2]", '{"format": "abc_helpers.record/2", "files": 3}',
                                    '{"a": 12, "b": "zz:qq"}', ""])
def test_damaged_record_is_survived(tmp_path, damage):
    """Any damaged record reads as empty (or keeps its good entries): the files are checked again."""
    (tmp_path / RECORD_FILE).write_text(damage)
    assert CacheFolder(tmp_path).read_record() == {}


def test_old_records_of_both_kinds_are_read(tmp_path):
    """The records written by earlier versions (ABC md5, VBN blake2b:size) keep working."""
    (tmp_path / RECORD_FILE).write_text(json.dumps({
        "metadata/WMB-10X/20231215/gene.csv": "900150983CD24FB0D6963F7D28E17F72",
        "metadata/WMB-taxonomy/20231215/cluster.csv": None,
        "visual-behavior-neuropixels-0.3.0/project_metadata/units.csv": "ab" * 64 + ":1234"}))
    assert CacheFolder(tmp_path).read_record() == {
        "metadata/WMB-10X/20231215/gene.csv": FileRecord("md5:900150983cd24fb0d6963f7d28e17f72"),
        "metadata/WMB-taxonomy/20231215/cluster.csv": FileRecord(None),
        "visual-behavior-neuropixels-0.3.0/project_metadata/units.csv": FileRecord("blake2b:" + "ab" * 64, 1234)}


def test_damaged_vbn_record_does_not_break_the_cache(tmp_path, sample_source, sample_server):
    """A VBN cache whose record is damaged checks its files by hash, reuses them and repairs the record."""
    folder = tmp_path / "vbn"
    probes = _vbn(folder, sample_source).get_probe_table()
    (folder / RECORD_FILE).write_text('{"visual-behavior-neuropixels-0.3.0/proj')
    sample_server.reset_stats()
    again = _vbn(folder, sample_source).get_probe_table()
    assert again.equals(probes)
    assert not any(k.endswith("probes.csv") for k in sample_server.stats()["requests"])  # not fetched again
    assert any(rel.endswith("probes.csv") for rel in CacheFolder(folder).read_record())


def test_old_vbn_record_is_used_without_download(tmp_path, sample_source, sample_server):
    """A cache filled by the previous version (record 'blake2b:size') keeps its files."""
    folder = tmp_path / "vbn"
    cache = _vbn(folder, sample_source)
    path = cache.get_metadata_path("probes")
    entry = CacheFolder(folder).read_record()[path.relative_to(folder).as_posix()]
    digest = entry.hash.split(":")[1]
    (folder / RECORD_FILE).write_text(json.dumps({path.relative_to(folder).as_posix():
                                                  f"{digest}:{path.stat().st_size}"}))
    sample_server.reset_stats()
    assert _vbn(folder, sample_source).get_metadata_path("probes") == path
    assert _requests(sample_server) == 0, sample_server.stats()["requests"]


def test_old_abc_record_is_used_without_download(tmp_path, sample_source, sample_server):
    """An ABC cache with the previous record format ({path: md5}) does not download again."""
    folder = tmp_path / "abc"
    cache = _abc(folder, sample_source)
    path = cache.get_metadata_path("WMB-10X", "gene")
    attrs = cache.get_file_attributes("WMB-10X", "gene")
    (folder / RECORD_FILE).write_text(json.dumps({attrs.relative_path: attrs.file_hash}))
    sample_server.reset_stats()
    assert _abc(folder, sample_source).get_metadata_path("WMB-10X", "gene") == path
    assert _requests(sample_server) == 0


def test_both_caches_write_one_record_format(tmp_path, sample_source):
    """ABC and VBN caches write the same record format, with hash and size."""
    abc = _abc(tmp_path / "abc", sample_source)
    gene = abc.get_metadata_path("WMB-10X", "gene")
    vbn = _vbn(tmp_path / "vbn", sample_source)
    units = vbn.get_metadata_path("units")
    for cache, path, alg, current in ((abc, gene, "md5", abc.current_manifest),
                                      (vbn, units, "blake2b", vbn.current_manifest())):
        data = json.loads((cache.cache_dir / RECORD_FILE).read_text())
        assert data["format"] == RECORD_FORMAT
        entry = data["files"][path.relative_to(cache.cache_dir).as_posix()]
        assert entry["hash"].startswith(f"{alg}:") and entry["size"] == path.stat().st_size
        assert (cache.cache_dir / LAST_USED_FILE).read_text() == current
