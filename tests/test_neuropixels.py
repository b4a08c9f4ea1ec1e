"""VbnProjectCache against the sample world over loopback: every call of the seed notebook."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from abc_helpers.cache import OutdatedManifestWarning
from abc_helpers.neuropixels import (
    VbnProjectCache,
    generate_all_download_urls_from_manifest,
    get_behavior_session_url,
    get_manifest_url,
    get_metadata_url,
)
from abc_helpers.sample import vbn

NAMES = [f"visual-behavior-neuropixels_project_manifest_v{v}.json" for v in vbn.VERSIONS]
V1, V2, V3 = NAMES
AWS = "https://visual-behavior-neuropixels-data.s3.us-west-2.amazonaws.com/visual-behavior-neuropixels/"


@pytest.fixture
def cache(tmp_path, sample_source) -> VbnProjectCache:
    """A fresh cache on the sample server."""
    return VbnProjectCache.from_s3_cache(tmp_path / "vbn", source=sample_source, progressbar=False)


#: What the AllenSDK's VisualBehaviorNeuropixelsProjectCloudApi does after pandas.read_csv, written out
#: here (not taken from the module under test): nullable Int64 for these columns of the session
#: tables (``enforce_df_int_typing``), then the index column.
SDK_INTEGER_COLUMNS = ("prior_exposures_to_image_set", "ecephys_session_id", "unit_count", "probe_count",
                       "channel_count")
SDK_INDEX_COLUMNS = {"ecephys_sessions": "ecephys_session_id", "behavior_sessions": "behavior_session_id",
                     "probes": "ecephys_probe_id", "channels": "ecephys_channel_id", "units": "unit_id"}


def _sdk_read(path, name) -> pd.DataFrame:
    """What the AllenSDK does: pandas.read_csv, Int64 for the session tables, then the index."""
    df = pd.read_csv(path)
    if name in ("ecephys_sessions", "behavior_sessions"):
        for col in SDK_INTEGER_COLUMNS:
            if col in df.columns:
                df[col] = df[col].astype("Int64")
    return df.set_index(SDK_INDEX_COLUMNS[name])


def test_manifest_listing_and_start_up(cache):
    """Listing, latest, downloaded and current manifests on an empty cache; no table downloaded."""
    assert cache.list_manifest_file_names() == NAMES
    assert cache.latest_manifest_file() == V3
    assert cache.latest_downloaded_manifest_file() == V3
    assert cache.list_all_downloaded_manifests() == [V3]
    assert cache.current_manifest() == V3
    assert (cache.cache_dir / "_manifest_last_used.txt").read_text() == V3
    assert not (cache.cache_dir / "visual-behavior-neuropixels-0.3.0").exists()  # lazy tables


def test_tables_counts_index_and_dtypes(cache):
    """Each table: the sample's counts, the SDK's index and dtypes, equal to the SDK's reading."""
    s = vbn.SAMPLE_SCALE
    sessions = cache.get_ecephys_session_table()
    everything = cache.get_ecephys_session_table(filter_abnormalities=False)
    assert len(everything) == s.n_sessions and len(sessions) == s.n_sessions - s.n_abnormal
    assert sessions["abnormal_histology"].isna().all() and sessions["abnormal_activity"].isna().all()
    assert everything.index.name == "ecephys_session_id" and str(everything.index.dtype) == "Int64"
    for col in ("unit_count", "probe_count", "channel_count", "prior_exposures_to_image_set"):
        assert str(everything[col].dtype) == "Int64"
    real = json.loads((Path(__file__).resolve().parent / "data" / "vbn_columns.json").read_text())
    assert list(everything.columns) == real["headers"]["ecephys_sessions"][1:]
    behavior = cache.get_behavior_session_table()
    assert len(behavior) == s.n_sessions + s.n_behavior_only
    assert behavior.index.name == "behavior_session_id"
    assert str(behavior["ecephys_session_id"].dtype) == "Int64" and behavior["ecephys_session_id"].isna().any()
    probes, channels, units = cache.get_probe_table(), cache.get_channel_table(), cache.get_unit_table()
    assert (len(probes), len(channels), len(units)) == (s.n_probes, 384 * s.n_probes, s.n_units)
    assert (probes.index.name, channels.index.name, units.index.name) == \
           ("ecephys_probe_id", "ecephys_channel_id", "unit_id")
    assert units["valid_data"].dtype == bool and units["structure_acronym"].dtype == object
    getters = {"ecephys_sessions": lambda: cache.get_ecephys_session_table(filter_abnormalities=False),
               "behavior_sessions": cache.get_behavior_session_table, "probes": cache.get_probe_table,
               "channels": cache.get_channel_table, "units": cache.get_unit_table}
    for name, get in getters.items():
        path = cache.get_metadata_path(name)
        ours = get()
        pd.testing.assert_frame_equal(ours, _sdk_read(path, name), check_exact=False, rtol=1e-12)
    # the ids link the tables
    assert set(units["ecephys_probe_id"]) <= set(probes.index)
    assert set(probes["ecephys_session_id"]) == set(everything.index)


def test_parsed_table_cache_is_used(cache, sample_source):
    """The second load reads the parquet beside the CSV (keyed by the CSV's hash)."""
    units = cache.get_unit_table()
    csv = cache.get_metadata_path("units")
    parsed = list(csv.parent.glob("units.*.parquet"))
    assert len(parsed) == 1
    digest = cache._manifest["metadata_files"]["units"]["file_hash"]
    assert parsed[0].name == f"units.{digest[:16]}.parquet"
    import pyarrow.parquet as pq

    raw = pq.read_table(parsed[0])
    assert raw.num_rows == len(units)
    pq.write_table(raw.append_column("marker", raw.column("unit_id")), parsed[0])  # a sentinel
    again = VbnProjectCache.from_s3_cache(cache.cache_dir, source=sample_source, progressbar=False)
    assert "marker" in again.get_unit_table().columns


def test_load_old_manifest_warns_and_compare_text(cache, sample_source):
    """Loading v0.2.0 warns with the SDK's text; compare_manifests gives the SDK's summary."""
    with pytest.warns(OutdatedManifestWarning) as caught:
        cache.load_manifest(V2)
    text = str(caught[0].message)
    assert "The most up to data manifest file available for this dataset is \n\n" + V3 in text
    assert f"VbnProjectCache.compare_manifests('{V2}', '{V3}')" in text
    assert cache.current_manifest() == V2
    assert cache.compare_manifests(V1, V2) == (
        f"Changes going from\n{V1}\nto\n{V2}\n\nproject_metadata/units.csv changed\n")
    diff = cache.compare_manifests(V2, V3)
    assert re.search(r"\nbehavior_ecephys_sessions/(\d+)/ecephys_session_\1\.nwb created\n$", diff)
    assert cache.compare_manifests(V2, V2) == "The two manifests are equivalent"
    with pytest.raises(ValueError, match=re.escape("'v9.json' is not a manifest of this dataset")):
        cache.load_manifest("v9.json")
    # a new cache on the same folder resumes v0.2.0 and says a newer one exists
    with pytest.warns(OutdatedManifestWarning, match=re.escape(
            f"You are loading {V2}. A more up to date version of the dataset -- {V3} -- exists online")):
        again = VbnProjectCache.from_s3_cache(cache.cache_dir, source=sample_source, progressbar=False)
    assert again.current_manifest() == V2


def test_load_latest_warns_when_moving_up(tmp_path, sample_source):
    """load_latest_manifest warns when the newest manifest you had was older."""
    folder = tmp_path / "vbn"
    folder.mkdir()
    (folder / "_manifest_last_used.txt").write_text(V1)
    with pytest.warns(OutdatedManifestWarning):
        cache = VbnProjectCache.from_s3_cache(folder, source=sample_source, progressbar=False)
    assert cache.current_manifest() == V1 and cache.list_all_downloaded_manifests() == [V1]
    with pytest.warns(OutdatedManifestWarning, match=re.escape(f"You are loading\n{V3}\nwhich is newer")):
        cache.load_latest_manifest()
    assert cache.current_manifest() == V3


def test_unchanged_files_are_reused_across_versions(cache):
    """A file unchanged between versions is hard-linked, not downloaded; a changed one is fetched."""
    with pytest.warns(OutdatedManifestWarning):
        cache.load_manifest(V1)
    probes_v1 = cache.get_metadata_path("probes")
    units_v1 = cache.get_unit_table()
    cache.get_probe_table()  # writes the parquet, which is reused too
    cache.load_manifest(V2)
    probes_v2 = cache.get_metadata_path("probes")
    assert probes_v2 != probes_v1 and "visual-behavior-neuropixels-0.2.0" in str(probes_v2)
    assert probes_v2.stat().st_ino == probes_v1.stat().st_ino  # same file, no second download
    assert list(probes_v2.parent.glob("probes.*.parquet"))
    units_v2 = cache.get_unit_table()
    assert cache.get_metadata_path("units").stat().st_ino != \
           (cache.cache_dir / "visual-behavior-neuropixels-0.1.0/project_metadata/units.csv").stat().st_ino
    assert "quality" in units_v2.columns and "quality" not in units_v1.columns
    assert np.allclose(units_v1["amplitude"], 2 * units_v2["amplitude"])
    record = json.loads((cache.cache_dir / "_downloaded_data.json").read_text())["files"]
    assert "visual-behavior-neuropixels-0.2.0/project_metadata/probes.csv" in record
    assert all(not k.startswith("/") for k in record)  # relative paths


def test_open_ecephys_session(cache):
    """get_ecephys_session downloads and opens a real NWB file; sessions without one say so."""
    sessions = cache.get_ecephys_session_table(filter_abnormalities=False)
    with_file = [int(i) for i in sessions.index if str(sessions.loc[i, "file_id"]) in cache._manifest["data_files"]]
    assert len(with_file) == vbn.SAMPLE_SCALE.n_nwb == len(sessions)  # every session has its file
    sessions = cache.get_ecephys_session_table()
    sid = with_file[0]
    with cache.get_ecephys_session(sid) as session:
        units = session.get_units()
        expected = cache.get_unit_table().query("ecephys_session_id == @sid")
        assert sorted(units.index) == sorted(expected.index)
        spikes = session.spike_times
        assert set(spikes) == set(units.index) and all(np.all(np.diff(t) >= 0) for t in spikes.values())
        channels = session.get_channels(filter_by_validity=False)
        assert len(channels) == 384 * sessions.loc[sid, "probe_count"]
        assert len(session.get_channels()) == len(channels) - channels["valid_data"].eq(False).sum()
        assert session.metadata["ecephys_session_id"] == sid
        assert "get_units" in session.list_data_attributes_and_methods()
    # v0.2.0 did not have the file of the session that v0.3.0 added
    with pytest.warns(OutdatedManifestWarning):
        cache.load_manifest(V2)
    without = next(int(i) for i in sessions.index
                   if str(sessions.loc[i, "file_id"]) not in cache._manifest["data_files"])
    with pytest.raises(FileNotFoundError, match=f"Ecephys session {without} .* has no NWB file"):
        cache.get_ecephys_session(without)


def test_direct_links(cache, sample_source):
    """The seed's URL helpers: real https links for 'aws', the source's links otherwise."""
    assert get_manifest_url("0.1.0", "aws") == AWS + "manifests/visual-behavior-neuropixels_project_manifest_v0.1.0.json"
    assert get_metadata_url("behavior_sessions", "aws") == AWS + "project_metadata/behavior_sessions.csv"
    assert get_behavior_session_url(1052533639, "aws") == \
           AWS + "behavior_ecephys_sessions/1052533639/ecephys_session_1052533639.nwb"
    assert cache.get_manifest_url("0.1.0").startswith(sample_source.root + "/visual-behavior-neuropixels-data/")
    manifest = cache.cache_dir / V3
    real = json.loads(manifest.read_text())
    aws_links = generate_all_download_urls_from_manifest(manifest, "aws")
    entries = list(real["metadata_files"].values()) + list(real["data_files"].values())
    assert aws_links == [e["url"] + "?versionId=" + e["version_id"] for e in entries]
    for link, entry in zip(cache.generate_all_download_urls_from_manifest(manifest), entries, strict=True):
        assert link.startswith(sample_source.root)
        body = requests.get(link, timeout=30).content
        assert hashlib.blake2b(body).hexdigest() == entry["file_hash"]
    with pytest.raises(KeyError, match="Unknown VBN metadata table 'unit'"):
        get_metadata_url("unit", "aws")


def test_local_cache_works_offline(cache):
    """from_local_cache uses what is downloaded and says what is missing."""
    cache.get_ecephys_session_table()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        offline = VbnProjectCache.from_local_cache(cache.cache_dir)
    assert offline.source is None and offline.list_manifest_file_names() == [V3]
    assert len(offline.get_ecephys_session_table(filter_abnormalities=False)) == vbn.SAMPLE_SCALE.n_sessions
    with pytest.raises(FileNotFoundError, match="is not in the local cache"):
        offline.get_channel_table()
