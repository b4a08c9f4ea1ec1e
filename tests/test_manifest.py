"""The release manifest: parsing the real manifest, lookups, errors, sizes, comparisons."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from abc_helpers import DataTypeNotInDirectory, Manifest, compare_manifests, format_size

#: The published 20231215 manifest, carried in the tests' own data (tests/data/README.md).
REFERENCE = Path(__file__).resolve().parent / "data" / "abc_manifest_20231215.json"


@pytest.fixture(scope="module")
def real() -> Manifest:
    return Manifest.from_file(REFERENCE)


def test_real_manifest_directories_and_files(real):
    """The published 20231215 manifest parses; lists and sizes match the Allen tutorial's output."""
    assert real.version == "20231215"
    assert len(real.list_directories) == 18
    assert real.list_files("WMB-10XMulti") == ["WMB-10XMulti/log2", "WMB-10XMulti/raw"]
    taxonomy = real.list_files("WMB-taxonomy", ("metadata",))
    assert "cluster_to_cluster_annotation_membership_pivoted" in taxonomy and len(taxonomy) == 7
    assert format_size(real.directory_size("WMB-10Xv2", ("expression_matrices",))) == "104.16 GB"
    assert format_size(real.directory_size("WMB-taxonomy", ("metadata",))) == "4.65 MB"
    view = real.get_file_attributes("WMB-10X", "cell_metadata_with_cluster_annotation")
    assert view.relative_path == "metadata/WMB-10X/20231215/views/cell_metadata_with_cluster_annotation.csv"
    assert real.get_file_attributes("WMB-10XMulti", "WMB-10XMulti/log2").version == "20230830"


@pytest.mark.parametrize(("nbytes", "text"), [
    (111838076296, "104.16 GB"),  # WMB-10Xv2, as abc_atlas_access's getting-started page shows it
    (4875000, "4.65 MB"),         # WMB-taxonomy metadata, ditto
    (221010, "0.21 MB"),          # 215.83 KiB: MB below a gigabyte, never KB
    (0, "0.0 MB"),
    (1024**2 * 3 // 2, "1.5 MB"),  # round(), not a fixed two decimals
    (1024**3 - 1, "1024.0 MB"),
    (1024**3, "1.0 GB"),
    (5 * 1024**4, "5120.0 GB"),   # no TB
])
def test_sizes_are_formatted_like_abc_atlas_access(nbytes, text):
    """Sizes read as abc_atlas_access prints them: f"{round(size, 2)} {unit}", GB or else MB."""
    assert format_size(nbytes) == text


def test_ambiguous_and_near_miss_names(real):
    """An ambiguous name lists the valid choices; a near miss suggests the closest names."""
    with pytest.raises(KeyError) as info:
        real.get_file_attributes("WMB-10XMulti", "WMB-10XMulti")
    assert str(info.value) == ("'WMB-10XMulti' is ambiguous: use one of 'WMB-10XMulti/log2', "
                               "'WMB-10XMulti/raw'")
    with pytest.raises(KeyError, match="Did you mean 'gene'"):
        real.get_file_attributes("WMB-10X", "gen")
    with pytest.raises(KeyError, match="Did you mean 'WMB-10X'"):
        real.files("WMB-10x")
    with pytest.raises(DataTypeNotInDirectory, match="No metadata files found in directory WMB-10Xv2"):
        real.list_files("WMB-10Xv2", ("metadata",))


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "metadata/../../x.csv",
                                 "C:\\x.csv", "metadata\\..\\x.csv"])
def test_escaping_relative_paths_are_refused(real, bad):
    """A relative_path that escapes the cache folder makes the whole manifest invalid."""
    data = copy.deepcopy(real.data)
    data["file_listing"]["WMB-10X"]["metadata"]["gene"]["files"]["csv"]["relative_path"] = bad
    with pytest.raises(ValueError, match="escapes or is not a plain path"):
        Manifest(data)


def test_not_json_and_missing_keys(tmp_path):
    """A manifest that is not JSON, or misses a key, is refused with the fix in the message."""
    bad = tmp_path / "manifest.json"
    bad.write_text("<html>not json</html>")
    with pytest.raises(ValueError, match="is not valid JSON"):
        Manifest.from_file(bad)
    bad.write_text(json.dumps({"version": "20231215", "resource_uri": "s3://x/"}))
    with pytest.raises(ValueError, match="missing the key 'directory_listing'"):
        Manifest.from_file(bad)


def test_compare_manifests_reports_each_kind_of_change(real):
    """Added and removed directories and files, changed files and directory versions are listed."""
    older = copy.deepcopy(real.data)
    older["version"] = "20230830"
    del older["file_listing"]["WMB-neighborhoods"]
    del older["directory_listing"]["WMB-neighborhoods"]
    gene = older["file_listing"]["WMB-10X"]["metadata"]["gene"]["files"]["csv"]
    gene["file_hash"] = "0" * 32
    gene["version"] = "20230830"
    older["file_listing"]["WMB-10X"]["metadata"]["old_table"] = copy.deepcopy(
        older["file_listing"]["WMB-10X"]["metadata"]["gene"])
    older["directory_listing"]["WMB-10X"]["directories"]["metadata"]["version"] = "20230830"
    result = compare_manifests(real, Manifest(older, name="releases/20230830/manifest.json"))
    assert result.directories_added == ["WMB-neighborhoods"]
    assert result.files_removed == ["WMB-10X: old_table"]
    assert result.files_changed == ["WMB-10X: gene (20230830 -> 20231215)"]
    assert ("WMB-10X", "metadata", "20230830", "20231215") in result.directory_versions_changed
    assert len(result.files_added) == len(real.files("WMB-neighborhoods"))
    table = result.to_dataframe()
    assert set(table["change"]) == {"added", "removed", "changed"}
    assert "files changed (1)" in str(result)
    with pytest.raises(ValueError, match="pass the newer release first"):
        compare_manifests(Manifest(older, name="old"), real)
    assert compare_manifests(real, real).is_equivalent
