"""The synthetic Visual Behavior Neuropixels bucket: tables, manifests, versions and NWB files."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from support.worlds import shared_world

from abc_helpers.nwb_open import open_nwb
from abc_helpers.sample import brain, build_world, vbn
from abc_helpers.sample.world import load_index
from abc_helpers.sources import VBN_BUCKET

S3 = "{http://s3.amazonaws.com/doc/2006-03-01/}"
#: The real column names, as the AllenSDK's notebooks print them (tests/data/README.md).
REAL_COLUMNS = json.loads((Path(__file__).resolve().parents[1] / "data" / "vbn_columns.json").read_text())
UNITS_KEY = vbn.relative_key("metadata", "units")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The VBN-only world of this run, built straight on disk (no server); tests only read it."""
    return shared_world(tmp_path_factory, ("vbn",))


def _current(world: Path, key: str) -> bytes:
    return (world / "s3" / VBN_BUCKET / key).read_bytes()


def _table(world: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(_current(world, vbn.relative_key("metadata", name))))


def _manifest(world: Path, version: str) -> dict:
    return json.loads(_current(world, vbn.manifest_key(version)))


def test_csv_headers_are_the_real_ones(world):
    """Each CSV starts with the real header, in the real column order (units: as far as it is known)."""
    headers = {name: _current(world, vbn.relative_key("metadata", name)).split(b"\n", 1)[0].decode().split(",")
               for name in vbn.TABLE_NAMES}
    for name, real in REAL_COLUMNS["headers"].items():
        assert headers[name] == real, name
    units, real = headers["units"], REAL_COLUMNS["units"]
    first, last = len(real["first"]), len(real["last"])
    assert units[0] == real["index"]
    assert units[1:1 + first] == real["first"] and units[-last:] == real["last"]
    assert set(units[1:]) - set(real["writer_only"]) == set(real["names"])
    assert len(units) - 1 == len(set(units[1:]))  # no column twice


def test_counts_are_scaled_down_but_consistent(world):
    """Tens of sessions, a few hundred probes, tens of thousands of channels; roll-ups agree."""
    s = vbn.SAMPLE_SCALE
    sessions, probes = _table(world, "ecephys_sessions"), _table(world, "probes")
    channels, units = _table(world, "channels"), _table(world, "units")
    behavior = _table(world, "behavior_sessions")
    assert (len(sessions), len(probes), len(units)) == (s.n_sessions, s.n_probes, s.n_units)
    assert len(channels) == 384 * s.n_probes and channels["probe_channel_number"].max() == 383
    assert len(behavior) == s.n_sessions + s.n_behavior_only
    assert len(_current(world, UNITS_KEY)) < 5_000_000
    # ids link across tables
    assert set(units["ecephys_channel_id"]) <= set(channels["ecephys_channel_id"])
    assert set(channels["ecephys_probe_id"]) == set(probes["ecephys_probe_id"])
    assert set(probes["ecephys_session_id"]) == set(sessions["ecephys_session_id"])
    assert set(sessions["behavior_session_id"]) <= set(behavior["behavior_session_id"])
    assert sessions["ecephys_session_id"].is_unique and units["unit_id"].is_unique
    # counts roll up
    per_probe = units.groupby("ecephys_probe_id").size()
    assert (probes.set_index("ecephys_probe_id")["unit_count"] == per_probe).all()
    per_channel = units.groupby("ecephys_channel_id").size()
    ch = channels.set_index("ecephys_channel_id")["unit_count"]
    assert (ch.loc[per_channel.index] == per_channel).all() and ch.sum() == len(units)
    by_session = sessions.set_index("ecephys_session_id")
    assert (by_session["unit_count"] == units.groupby("ecephys_session_id").size()).all()
    assert (by_session["probe_count"] == probes.groupby("ecephys_session_id").size()).all()
    assert (by_session["channel_count"] == 384 * by_session["probe_count"]).all()


def test_value_formats(world):
    """Stringified lists, dates with +00:00, -999 file ids, real acronyms, some abnormal sessions."""
    sessions, probes = _table(world, "ecephys_sessions"), _table(world, "probes")
    behavior, units = _table(world, "behavior_sessions"), _table(world, "units")
    ids = dict(zip(brain.structure_tree()["acronym"], brain.structure_tree()["id"], strict=True))
    acronyms = set(ids)
    for text in list(sessions["structure_acronyms"]) + list(probes["structure_acronyms"]):
        assert text.startswith("['") and set(ast.literal_eval(text)) <= acronyms
    assert set(units["structure_acronym"]) <= acronyms
    assert (units["structure_id"] == units["structure_acronym"].map(ids)).all()
    abnormal = sessions["abnormal_histology"].notna() | sessions["abnormal_activity"].notna()
    assert abnormal.sum() == vbn.SAMPLE_SCALE.n_abnormal
    assert all(isinstance(ast.literal_eval(t), list) for t in sessions["abnormal_activity"].dropna())
    assert sessions["date_of_acquisition"].str.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}\+00:00$").all()
    with_ephys = behavior["ecephys_session_id"].notna()
    assert (behavior.loc[with_ephys, "file_id"] == -999).all()
    assert (behavior.loc[~with_ephys, "file_id"] >= 0).all()
    assert (probes.loc[~probes["has_lfp_data"], "file_id"] == -999).all()
    assert set(sessions["genotype"]) <= set(vbn.GENOTYPES)
    assert behavior["prior_exposures_to_image_set"].isna().any()  # gratings sessions


def test_manifests_reference_exact_versions_and_blake2b(world):
    """Every manifest entry names a stored version of its key and the blake2b of those bytes."""
    index = load_index(world)[VBN_BUCKET]
    for version in vbn.VERSIONS:
        manifest = _manifest(world, version)
        assert list(manifest)[:6] == ["project_name", "manifest_version", "metadata_file_id_column_name",
                                      "data_pipeline", "metadata_files", "data_files"]
        assert manifest["manifest_version"] == version
        assert list(manifest["metadata_files"]) == list(vbn.TABLE_NAMES)
        entries = list(manifest["metadata_files"].values()) + list(manifest["data_files"].values())
        for entry in entries:
            assert entry["url"].startswith(vbn.REAL_BUCKET_URL + "visual-behavior-neuropixels/")
            key = entry["url"][len(vbn.REAL_BUCKET_URL):]
            stored = {v.version_id: v for v in index[key]}[entry["version_id"]]
            data = (world / stored.path).read_bytes()
            assert hashlib.blake2b(data).hexdigest() == entry["file_hash"]


def test_units_change_between_v010_and_v020_only(world):
    """units.csv has two S3 versions; v0.2.0 points at the new one; v0.3.0 adds one NWB file."""
    m1, m2, m3 = (_manifest(world, v) for v in vbn.VERSIONS)
    assert m1["metadata_files"]["units"]["version_id"] != m2["metadata_files"]["units"]["version_id"]
    for name in vbn.TABLE_NAMES[1:]:
        assert m1["metadata_files"][name] == m2["metadata_files"][name] == m3["metadata_files"][name]
    assert m2["metadata_files"]["units"] == m3["metadata_files"]["units"]
    assert m1["data_files"] == m2["data_files"]
    assert set(m3["data_files"]) - set(m2["data_files"]) and set(m2["data_files"]) < set(m3["data_files"])
    versions = load_index(world)[VBN_BUCKET][UNITS_KEY]
    assert [v.is_latest for v in versions] == [False, True]
    old = pd.read_csv(world / versions[0].path)
    new = _table(world, "units")
    assert "quality" not in old.columns and "quality" in new.columns
    assert np.allclose(old["amplitude"], 2 * new["amplitude"], rtol=1e-5)


def test_build_is_deterministic(world):
    """Another build gives byte-identical objects (NWB files included): the VBN bucket of the default
    world, built by another process beside every other generator, equals the VBN-only world's."""
    again = build_world()
    first = load_index(world)[VBN_BUCKET]
    second = load_index(again)[VBN_BUCKET]
    assert {k: [v.md5 for v in vs] for k, vs in first.items()} == \
           {k: [v.md5 for v in vs] for k, vs in second.items()}


def test_nwb_files_open_with_pynwb(world):
    """Each session NWB holds that session's units, spike times and electrodes."""
    pynwb = pytest.importorskip("pynwb")
    units, channels = _table(world, "units"), _table(world, "channels")
    m3 = _manifest(world, "0.3.0")
    sessions = [e for e in m3["data_files"].values() if "/ecephys_session_" in e["url"]]
    assert len(sessions) == vbn.SAMPLE_SCALE.n_nwb
    for entry in sessions:
        path = world / "s3" / VBN_BUCKET / entry["url"][len(vbn.REAL_BUCKET_URL):]
        sid = int(path.parent.name)
        with open_nwb(path) as nwb_io:  # pynwb, with the namespaces the file caches
            nwb = nwb_io.read()
            assert isinstance(nwb, pynwb.NWBFile)
            assert nwb.session_id == str(sid) and "SYNTHETIC" in nwb.session_description
            expected = units[units["ecephys_session_id"] == sid]
            assert sorted(nwb.units.id[:]) == sorted(expected["unit_id"])
            assert len(nwb.units["spike_times"].target.data) > 0
            assert set(nwb.electrodes.id[:]) == set(
                channels.loc[channels["ecephys_session_id"] == sid, "ecephys_channel_id"])


def test_lfp_files_for_the_probes_with_lfp_data(world):
    """The probes with has_lfp_data (those of the first sessions) have a probe_<name>_lfp.nwb file, by file_id."""
    pynwb = pytest.importorskip("pynwb")
    probes, sessions = _table(world, "probes"), _table(world, "ecephys_sessions")
    with_lfp = probes[probes["has_lfp_data"]]
    first = set(sessions["ecephys_session_id"][:vbn.SAMPLE_SCALE.n_lfp_sessions])
    assert set(with_lfp["ecephys_session_id"]) == first and len(with_lfp) > 0
    assert (probes.loc[~probes["has_lfp_data"], "file_id"] == -999).all()
    data_files = _manifest(world, "0.3.0")["data_files"]
    for probe in with_lfp.itertuples():
        key = vbn.relative_key("lfp", probe.ecephys_session_id, probe.name)
        assert data_files[str(probe.file_id)]["url"] == vbn.REAL_BUCKET_URL + key
        with pynwb.NWBHDF5IO(str(world / "s3" / VBN_BUCKET / key), "r") as nwb_io:
            nwb = nwb_io.read()
            lfp = nwb.acquisition[f"probe_{probe.ecephys_probe_id}_lfp"]
            series = lfp.electrical_series[f"probe_{probe.ecephys_probe_id}_lfp_data"]
            assert series.data.shape == (len(series.timestamps), len(nwb.electrodes))
            assert nwb.electrode_groups[probe.name].lfp_sampling_rate == pytest.approx(probe.lfp_sampling_rate)


def test_server_serves_versions_and_listings(sample_source):
    """Over loopback: ListObjectVersions shows both units.csv versions; versionId picks the old one."""
    bucket_url = sample_source.bucket_url(VBN_BUCKET)
    listing = requests.get(bucket_url, params={"versions": "", "prefix": UNITS_KEY}, timeout=30)
    assert listing.status_code == 200
    root = ET.fromstring(listing.content)
    version_ids = [v.findtext(f"{S3}VersionId") for v in root.iter(f"{S3}Version")]
    assert len(version_ids) == 2
    m1 = requests.get(sample_source.object_url(VBN_BUCKET, vbn.manifest_key("0.1.0")), timeout=30).json()
    old = m1["metadata_files"]["units"]
    assert old["version_id"] in version_ids
    body = requests.get(sample_source.object_url(VBN_BUCKET, UNITS_KEY, version_id=old["version_id"]),
                        timeout=30).content
    assert hashlib.blake2b(body).hexdigest() == old["file_hash"]
    assert b"quality" not in body.split(b"\n", 1)[0]
    names = requests.get(bucket_url, params={"list-type": "2", "prefix": f"{vbn.PREFIX}/manifests/"},
                         timeout=30)
    keys = [k.text for k in ET.fromstring(names.content).iter(f"{S3}Key")]
    assert keys == [vbn.manifest_key(v) for v in vbn.VERSIONS]
