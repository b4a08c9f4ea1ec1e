"""Mirror mode end to end: fill a mirror FROM THE SAMPLE with the real client code, serve it with
``SampleServer(mirror=DIR)`` and with ``python -m abc_helpers.sample serve --mirror DIR``, and run the
chapters against it with papermill (``data_source`` = the mirror's URL)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import requests
from support.notebooks import chapter, run_chapter, stored, text_of

from abc_helpers import AbcProjectCache, OutdatedManifestWarning
from abc_helpers.mirror import fill_mirror
from abc_helpers.sample import SampleServer
from abc_helpers.transfer import list_objects

ABC = "allen-brain-cell-atlas"
VBN = "visual-behavior-neuropixels-data"
#: Two of the sample's three releases: a cache pointed at the mirror must see exactly these.
RELEASES = ["20230630", "20231215"]
#: The session whose NWB file the neuropixels chapter opens (the first with a file).
SESSION = 1040573564
ISH_GENES = ["Pcp2", "Calb1", "Pvalb", "Gad1", "Ppp1r1b", "Penk", "Drd1", "Drd2", "Prox1", "Slc17a7",
             "Tcf7l2", "Mbp", "Vip"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mirror_dir(tmp_path_factory, sample_source) -> Path:
    """A mirror filled from the sample server with the same code an instructor runs on AWS (chapter 4's
    sessions: `first:4`, as the workshop page fills it)."""
    top = tmp_path_factory.mktemp("mirror")
    report = fill_mirror(
        top, source=sample_source, abc_releases=RELEASES, abc_metadata="all",
        abc_data=["Allen-CCF-2020", "WMB-10XMulti", "WMB-10Xv2", "WMB-10Xv3"], abc_data_types=["log2"],
        vbn_manifests="all", vbn_sessions=[SESSION, "first:4"], ish_genes=ISH_GENES, progressbar=False)
    assert set(report.files) == {"abc", "vbn", "allen-api"} and all(report.bytes.values())
    return top


@pytest.fixture(scope="module")
def mirror_server(mirror_dir):
    with SampleServer(mirror=mirror_dir) as server:
        yield server


def test_mirror_layout(mirror_dir):
    """The ABC part is a cache folder; VBN keeps each manifest's versions; the API part is there."""
    local = AbcProjectCache.from_local_cache(mirror_dir / ABC)
    assert local.list_manifest_file_names == [f"releases/{r}/manifest.json" for r in RELEASES]
    assert local.current_manifest == "releases/20231215/manifest.json"
    assert (mirror_dir / ABC / "_downloaded_data.json").is_file()  # bookkeeping, never served
    matrices = sorted(p.name for p in (mirror_dir / ABC / "expression_matrices").rglob("*.h5ad"))
    assert len(matrices) == 24 and all(m.endswith("-log2.h5ad") for m in matrices)  # data_types=["log2"]
    assert len(list((mirror_dir / ABC / "image_volumes" / "Allen-CCF-2020").rglob("*.nii.gz"))) == 3
    manifests = sorted((mirror_dir / VBN / "visual-behavior-neuropixels/manifests").glob("*.json"))
    assert len(manifests) == 3
    units_versions = {json.loads(m.read_text())["metadata_files"]["units"]["version_id"] for m in manifests}
    stored_units = {p.parent.parent.parent.name for p in
                    (mirror_dir / VBN / "_versions").glob("*/visual-behavior-neuropixels/project_metadata/units.csv")}
    assert stored_units == units_versions and len(units_versions) >= 2  # units.csv changed between versions
    nwb = list((mirror_dir / VBN / "visual-behavior-neuropixels/behavior_ecephys_sessions").rglob("*.nwb"))
    sessions = {p.parent.name for p in nwb if p.name.startswith("ecephys_session_")}
    # SESSION and chapter 4's first four (which four: test_first_sessions_are_chapter_4s)
    assert str(SESSION) in sessions and len(sessions) == 4, sessions
    lfp = [p for p in nwb if not p.name.startswith("ecephys_session_")]  # those sessions' probes' LFP files
    assert all(p.parent.name in sessions and re.fullmatch(r"probe_probe[A-F]_lfp\.nwb", p.name) for p in lfp)
    records = json.loads((mirror_dir / "allen-api" / "section_data_sets.json").read_text())["section_data_sets"]
    assert {g["acronym"] for r in records for g in r["genes"]} == set(ISH_GENES)
    assert {r["plane_of_section"]["name"] for r in records} == {"coronal", "sagittal"}


def test_mirror_serves_the_protocol(mirror_server, mirror_dir):
    """Listings show the mirrored releases only; bookkeeping is hidden; versioned GETs work."""
    url = mirror_server.url
    keys = [o["key"] for o in list_objects(f"{url}/{ABC}/", "releases/")]
    assert keys == [f"releases/{r}/manifest.json" for r in RELEASES]
    for name in ("_downloaded_data.json", "_manifest_last_used.txt", "_downloaded_data.json.lock"):
        assert requests.get(f"{url}/{ABC}/{name}", timeout=10).status_code == 404, name
    assert requests.get(f"{url}/{VBN}/_versions/", timeout=10).status_code == 404
    listed = [o["key"] for o in list_objects(f"{url}/{VBN}/", "")]
    assert listed and not any(k.startswith("_versions") for k in listed)
    oldest = json.loads((mirror_dir / VBN / "visual-behavior-neuropixels/manifests"
                         / "visual-behavior-neuropixels_project_manifest_v0.1.0.json").read_text())
    entry = oldest["metadata_files"]["units"]
    key = "visual-behavior-neuropixels/project_metadata/units.csv"
    old = requests.get(f"{url}/{VBN}/{key}", params={"versionId": entry["version_id"]}, timeout=10)
    assert old.status_code == 200 and old.headers["x-amz-version-id"] == entry["version_id"]
    assert hashlib.blake2b(old.content).hexdigest() == entry["file_hash"]
    newest = requests.get(f"{url}/{VBN}/{key}", timeout=10)
    assert newest.status_code == 200 and newest.content != old.content
    missing = requests.get(f"{url}/{VBN}/{key}", params={"versionId": "NotAVersion"}, timeout=10)
    assert missing.status_code == 404 and b"NoSuchVersion" in missing.content


def test_plain_mirror_ignores_version_ids(tmp_path):
    """A mirror without _versions/ (e.g. synced by hand) answers a versioned GET with its one file."""
    path = tmp_path / VBN / "a" / "b.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x,y\n1,2\n")
    with SampleServer(mirror=tmp_path) as server:
        r = requests.get(f"{server.url}/{VBN}/a/b.csv", params={"versionId": "abc123"}, timeout=10)
        assert (r.status_code, r.content) == (200, b"x,y\n1,2\n")


def test_getting_started_on_mirror(mirror_server, tmp_path):
    """Chapter 1 runs against the mirror and shows the mirrored releases (two of the sample's three)."""
    path = chapter("getting_started")
    mirror_server.reset_stats()
    nb = run_chapter(path, tmp_path, data_source=mirror_server.url, cache_dir=str(tmp_path / "cache"))
    releases = text_of(nb, "list_manifest_file_names")
    found = re.findall(r"releases/(\d{8})/manifest\.json", releases)
    assert found == RELEASES, releases
    assert "20230830" in text_of(stored(path), "list_manifest_file_names")  # the sample has three
    assert "'releases/20231215/manifest.json'" in text_of(nb, "from_cache_dir(")
    served = mirror_server.stats()["requests"]
    assert served.get(f"{ABC}/releases/20230630/manifest.json")
    assert any(k.startswith(f"{ABC}/image_volumes/Allen-CCF-2020/") for k in served)


def test_gene_extraction_on_mirror(mirror_server, tmp_path):
    """Chapter 2 extracts the same expression values from the mirror as from the sample."""
    path = chapter("gene_extraction")
    nb = run_chapter(path, tmp_path, data_source=mirror_server.url, cache_dir=str(tmp_path / "cache"))
    assert text_of(nb, "gdata.head()") == text_of(stored(path), "gdata.head()")


def test_ish_grids_on_mirror(mirror_server, tmp_path):
    """Chapter 3 finds the same experiments and grids (and the same missing grids) on the mirror."""
    path = chapter("ish_grids")
    nb = run_chapter(path, tmp_path, data_source=mirror_server.url, out_dir=str(tmp_path / "out"))
    for needle in ("query_section_datasets(", "correlated_genes("):
        assert text_of(nb, needle) == text_of(stored(path), needle), needle
    downloaded = text_of(nb, "download_grids(")
    assert re.search(r"\d+ of \d+ grids downloaded", downloaded)
    assert downloaded.split("\n")[-2:] == text_of(stored(path), "download_grids(").split("\n")[-2:]


def test_neuropixels_on_cli_mirror(mirror_dir, tmp_path):
    """`serve --mirror DIR` in a subprocess; chapter 4 loads old and new manifests and a session."""
    path = chapter("neuropixels_metadata")
    proc = subprocess.Popen([sys.executable, "-m", "abc_helpers.sample", "serve", "--mirror",
                             str(mirror_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), proc.stderr.read() if proc.poll() else url
        nb = run_chapter(path, tmp_path, data_source=url, cache_dir=str(tmp_path / "cache"))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    for needle in ("cache.get_unit_table()", "compare_manifests(names[0]"):
        assert text_of(nb, needle) == text_of(stored(path), needle), needle
    assert str(SESSION) in text_of(nb, "session.metadata")


def test_cli_fill_mirror(sample_source, tmp_path):
    """`python -m abc_helpers.sample fill-mirror DIR --source URL ...` fills what it is asked for."""
    top = tmp_path / "m"
    done = subprocess.run(
        [sys.executable, "-m", "abc_helpers.sample", "fill-mirror", str(top), "--source", sample_source.root,
         "--abc-releases", "20231215", "--abc-metadata", "WMB-taxonomy", "--vbn-manifests", "latest",
         "--ish-genes", "Pcp2", "--quiet"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"abc\s+\d+ files", done.stdout) and "allen-api" in done.stdout, done.stdout
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutdatedManifestWarning)
        local = AbcProjectCache.from_local_cache(top / ABC)
    assert local.list_manifest_file_names == ["releases/20231215/manifest.json"]
    metadata = top / ABC / "metadata"
    assert [p.relative_to(metadata).as_posix() for p in metadata.glob("*/*")] == ["WMB-taxonomy/20231215"]
    assert len(list((top / VBN / "visual-behavior-neuropixels/manifests").glob("*.json"))) == 1
    assert not list((top / VBN).rglob("*.nwb"))
    bad = subprocess.run(
        [sys.executable, "-m", "abc_helpers.sample", "fill-mirror", str(top), "--source", sample_source.root,
         "--abc-releases", "20231215", "--abc-metadata", "WMB-10x", "--no-vbn", "--quiet"],
        capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "WMB-10x" in bad.stderr and "WMB-10X" in bad.stderr


def test_refill_repairs_damaged_files(sample_source, tmp_path):
    """Running fill again keeps good files and fetches a damaged VBN file again (hash check)."""
    from abc_helpers.mirror import fill_vbn

    fill_vbn(tmp_path, source=sample_source, manifests="latest", progressbar=False)
    key = "visual-behavior-neuropixels/project_metadata/probes.csv"
    plain = tmp_path / VBN / key
    good = plain.read_bytes()
    damaged = b"X" + good[1:]
    plain.write_bytes(damaged)  # a hard link: its _versions/ twin is damaged too
    fill_vbn(tmp_path, source=sample_source, manifests="latest", progressbar=False)
    assert plain.read_bytes() == good
    assert [p.read_bytes() == good for p in (tmp_path / VBN / "_versions").glob(f"*/{key}")] == [True]


def test_first_session_is_the_chapters_default(sample_source, tmp_path):
    """vbn_sessions="first" mirrors the NWB file of the session the chapters open with session_id=None
    (the first of the session table whose file_id is in the manifest's data_files), and no other."""
    from abc_helpers.mirror import fill_vbn
    from abc_helpers.neuropixels import VbnProjectCache

    cache = VbnProjectCache.from_s3_cache(tmp_path / "cache", source=sample_source, progressbar=False)
    sessions = cache.get_ecephys_session_table()
    files = cache.manifest["data_files"]
    expected = next(int(sid) for sid, fid in sessions["file_id"].items() if str(fid) in files)
    fill_vbn(tmp_path / "mirror", source=sample_source, manifests="all", sessions="first", progressbar=False)
    nwb = sorted((tmp_path / "mirror" / VBN / "visual-behavior-neuropixels").rglob("*.nwb"))
    assert [p.name for p in nwb if p.name.startswith("ecephys_session_")] == [f"ecephys_session_{expected}.nwb"]
    assert {p.parent.name for p in nwb} == {str(expected)}  # and the LFP files of its probes, if any


def test_first_sessions_are_chapter_4s(sample_source, tmp_path):
    """vbn_sessions="first:N" mirrors the sessions chapter 4 maps a function over with n_sessions=N (the
    first N of the table, abnormal sessions dropped, with an NWB file); a bad count is refused."""
    from abc_helpers.mirror import fill_vbn
    from abc_helpers.neuropixels import VbnProjectCache

    cache = VbnProjectCache.from_s3_cache(tmp_path / "cache", source=sample_source, progressbar=False)
    sessions = cache.get_ecephys_session_table()
    files = cache.manifest["data_files"]
    expected = [int(sid) for sid, fid in sessions["file_id"].items() if str(fid) in files][:8]
    # eight: the sample's first abnormal session is among the first eight rows, so the filter matters
    assert cache.get_ecephys_session_table(filter_abnormalities=False).index[:8].tolist() != expected
    fill_vbn(tmp_path / "mirror", source=sample_source, manifests="latest", sessions=["first:8", "first"],
             progressbar=False)
    nwb = (tmp_path / "mirror" / VBN / "visual-behavior-neuropixels").rglob("ecephys_session_*.nwb")
    assert sorted(int(p.parent.name) for p in nwb) == sorted(expected)
    with pytest.raises(ValueError, match="'first:N'"):
        fill_vbn(tmp_path / "mirror", source=sample_source, manifests="latest", sessions="first:0",
                 progressbar=False)
