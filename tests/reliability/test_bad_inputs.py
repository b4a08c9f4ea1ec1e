"""Untrusted inputs: bad manifests, hostile grid zips, unknown names, read-only caches, damaged files,
plain-HTTP URLs. Each is refused with an error that says what and why, and nothing is written
where it should not be."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import threading
import warnings
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from abc_helpers import ish
from abc_helpers.cache import AbcProjectCache, OutdatedManifestWarning
from abc_helpers.neuropixels import VbnProjectCache, get_metadata_url
from abc_helpers.sample import ABC_BUCKET, VBN_BUCKET, SampleServer, WorldWriter
from abc_helpers.sources import Source, check_url_allowed, get_source
from abc_helpers.transfer import DownloadError, download

RELEASE = "releases/20990101/manifest.json"
GENE = b"gene_identifier,gene_symbol\nENSMUSG00000000001,Gnai3\n"


def _manifest(relative_path: str = "metadata/TINY/20990101/gene.csv") -> dict:
    """A minimal, valid ABC release manifest with one metadata file."""
    return {
        "version": "20990101",
        "resource_uri": "s3://allen-brain-cell-atlas/",
        "directory_listing": {"TINY": {"directories": {"metadata": {
            "version": "20990101", "relative_path": "metadata/TINY/20990101",
            "url": "https://example.invalid/metadata/TINY/20990101/", "total_size": len(GENE)}}}},
        "file_listing": {"TINY": {"metadata": {"gene": {"files": {"csv": {
            "version": "20990101", "relative_path": relative_path,
            "url": "https://example.invalid/" + relative_path, "size": len(GENE),
            "file_hash": hashlib.md5(GENE).hexdigest()}}}}}},
    }


def _serve(tmp: Path, manifest: bytes) -> SampleServer:
    root = tmp / "world"
    with WorldWriter(root) as writer:
        writer.put_bytes(ABC_BUCKET, RELEASE, manifest)
        writer.put_bytes(ABC_BUCKET, "metadata/TINY/20990101/gene.csv", GENE)
    return SampleServer(root=root).start()


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder below *folder*: (size, mtime_ns)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.stat()
            out[p.relative_to(folder).as_posix()] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


# -- manifests ------------------------------------------------------------------------------------
def _valid_without(key: str) -> bytes:
    m = _manifest()
    del m[key]
    return json.dumps(m).encode()


def _entry_without_hash() -> bytes:
    m = _manifest()
    del m["file_listing"]["TINY"]["metadata"]["gene"]["files"]["csv"]["file_hash"]
    return json.dumps(m).encode()


BAD_MANIFESTS = {
    "not-json": (b"<html>503 Service Unavailable</html>", r"is not valid JSON"),
    "truncated-json": (json.dumps(_manifest()).encode()[:100], r"is not valid JSON"),
    "missing-file-listing": (_valid_without("file_listing"), r"missing the key 'file_listing'"),
    "missing-version": (_valid_without("version"), r"missing the key 'version'"),
    "entry-missing-file-hash": (_entry_without_hash(), r"missing \['file_hash'\]"),
    "dot-dot": (json.dumps(_manifest("../../escaped.csv")).encode(), r"escapes"),
    "dot-dot-inside": (json.dumps(_manifest("metadata/../../../escaped.csv")).encode(), r"escapes"),
    "absolute": (json.dumps(_manifest("/tmp/abc_helpers_escaped.csv")).encode(), r"escapes"),
    "backslash": (json.dumps(_manifest("..\\..\\escaped.csv")).encode(), r"escapes"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_bad_manifest_is_refused_and_nothing_escapes(case, tmp_path):
    """A bad release manifest from the server: a clear ValueError; nothing outside the cache folder."""
    body, message = BAD_MANIFESTS[case]
    Path("/tmp/abc_helpers_escaped.csv").unlink(missing_ok=True)
    server = _serve(tmp_path, body)
    try:
        outside = tmp_path / "outside"
        cache_dir = outside / "inner" / "cache"
        before = _listing(tmp_path / "world")
        with pytest.raises(ValueError, match=message) as info:
            AbcProjectCache.from_s3_cache(cache_dir, source=Source("sample", server.url))
        if message == r"escapes":  # names the offending entry and path
            assert "'TINY: gene'" in str(info.value) and "escaped.csv" in str(info.value)
        else:  # names the release
            assert "20990101" in str(info.value)
        assert sorted(_listing(outside)) == ["inner", "inner/cache", "inner/cache/releases",
                                             "inner/cache/releases/20990101",
                                             "inner/cache/releases/20990101/manifest.json",
                                             "inner/cache/releases/20990101/manifest.json.lock"]
        assert not Path("/tmp/abc_helpers_escaped.csv").exists()
        assert _listing(tmp_path / "world") == before
        assert not list(tmp_path.rglob("escaped.csv"))
    finally:
        server.stop()


def test_manifest_that_is_a_json_array_is_refused(tmp_path):
    """A manifest that is valid JSON but not an object: a ValueError, not an AttributeError."""
    server = _serve(tmp_path, b"[1, 2, 3]")
    try:
        with pytest.raises(ValueError, match="not a JSON object"):
            AbcProjectCache.from_s3_cache(tmp_path / "cache", source=Source("sample", server.url))
    finally:
        server.stop()


def _vbn_world(tmp: Path, units_key: str) -> SampleServer:
    """A tiny VBN world whose manifest points the units table at *units_key*."""
    data = b"unit_id,quality\n1,good\n"
    manifest = {
        "project_name": "visual-behavior-neuropixels", "manifest_version": "0.3.0",
        "metadata_file_id_column_name": "file_id", "data_pipeline": [],
        "metadata_files": {"units": {
            "url": f"https://{VBN_BUCKET}.s3.us-west-2.amazonaws.com/{units_key}",
            "version_id": "null", "file_hash": hashlib.blake2b(data).hexdigest()}},
        "data_files": {},
    }
    root = tmp / "vbn-world"
    with WorldWriter(root) as writer:
        writer.put_bytes(VBN_BUCKET, "visual-behavior-neuropixels/manifests/"
                         "visual-behavior-neuropixels_project_manifest_v0.3.0.json",
                         json.dumps(manifest).encode())
        writer.put_bytes(VBN_BUCKET, "visual-behavior-neuropixels/project_metadata/units.csv", data)
    return SampleServer(root=root).start()


def test_vbn_manifest_url_that_escapes_is_refused(tmp_path):
    """A VBN manifest whose file url climbs out of the cache folder is refused before any write."""
    key = "visual-behavior-neuropixels/project_metadata/../../../../escaped_units.csv"
    server = _vbn_world(tmp_path, key)
    try:
        cache_dir = tmp_path / "a" / "b" / "cache"
        cache = VbnProjectCache.from_s3_cache(cache_dir, source=Source("sample", server.url),
                                              progressbar=False)
        with pytest.raises(ValueError, match=r"outside|escapes"):
            cache.get_metadata_path("units")
    finally:
        server.stop()
        assert not list(tmp_path.rglob("escaped_units*")), "files were written outside the cache"


# -- grid zips --------------------------------------------------------------------------------------
def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


MHD = (b"ObjectType = Image\nNDims = 3\nDimSize = 67 41 58\nElementType = MET_FLOAT\n"
       b"ElementSpacing = 200 200 200\nElementDataFile = energy.raw\n")
RAW = np.zeros(ish.GRID_BYTES // 4, "<f4").tobytes()
BAD_GRIDS = {
    1: ({"energy.mhd": MHD}, "no energy.raw"),
    2: ({"energy.mhd": MHD, "energy.raw": RAW[:-4]}, "raw too short"),
    3: ({"energy.mhd": MHD, "energy.raw": RAW + b"\0\0\0\0"}, "raw too long"),
    4: ({"density.mhd": MHD, "density.raw": RAW}, "another volume only"),
    5: (None, "not a zip at all"),
}
ESCAPING = {"energy.mhd": MHD, "energy.raw": RAW, "../../escaped_grid.txt": b"x",
            "/tmp/abc_helpers_escaped_grid.txt": b"x"}


@pytest.fixture(scope="module")
def grid_server(tmp_path_factory):
    """A tiny world whose Allen API serves hand-made grid zips (ids 1-5 bad, 6 escaping, 7 good)."""
    root = tmp_path_factory.mktemp("grid-world")
    with WorldWriter(root) as writer:
        writer.put_bytes(ABC_BUCKET, "placeholder.txt", b"x")
    grids = root / "allen-api" / "grid_data"
    grids.mkdir(parents=True)
    for eid, (members, _) in BAD_GRIDS.items():
        (grids / f"{eid}.zip").write_bytes(_zip(members) if members else b"PK\x03\x04 garbage")
    (grids / "6.zip").write_bytes(_zip(ESCAPING))
    (grids / "7.zip").write_bytes(_zip({"energy.mhd": MHD, "energy.raw": RAW}))
    with SampleServer(root=root) as server:
        yield server


@pytest.mark.parametrize("eid", list(BAD_GRIDS), ids=[v[1] for v in BAD_GRIDS.values()])
def test_bad_grid_zip_is_refused(eid, grid_server, tmp_path, monkeypatch):
    """No energy.raw or a raw of the wrong size: ValueError naming the experiment. Not a zip at all
    (every time): retried as a damaged transfer, then a DownloadError naming the check. No zip kept."""
    monkeypatch.setattr("abc_helpers.transfer.MAX_WAIT", 0.01)
    if BAD_GRIDS[eid][0] is None:
        expected = pytest.raises(DownloadError, match=f"'{eid}.zip' .* failed its check \\(not a readable zip")
    else:
        expected = pytest.raises(ValueError, match=f"grid of experiment {eid} .* has no complete 'energy.raw'")
    with expected:
        ish.download_grid(eid, tmp_path, source=Source("sample", grid_server.url))
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == []


def test_good_grid_zip_is_kept(grid_server, tmp_path):
    """The control: a well-formed zip downloads and reads."""
    path = ish.download_grid(7, tmp_path, source=Source("sample", grid_server.url))
    assert ish.read_grid_array(path)[0].shape == ish.GRID_SHAPE


def test_grid_zip_with_escaping_members_is_refused(grid_server, tmp_path):
    """A zip with '../' or absolute member names is refused, and nothing lands outside *dest_dir*."""
    dest = tmp_path / "grids"
    try:
        with pytest.raises(ValueError, match="escape"):
            ish.download_grid(6, dest, source=Source("sample", grid_server.url))
    finally:
        assert not list(tmp_path.rglob("escaped_grid.txt"))
        assert not Path("/tmp/abc_helpers_escaped_grid.txt").exists()


def test_truncated_grid_zip_on_disk_is_fetched_again(grid_server, tmp_path):
    """A grid zip cut short on disk fails verification and is downloaded again."""
    source = Source("sample", grid_server.url)
    path = ish.download_grid(7, tmp_path, source=source)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    assert ish.download_grid(7, tmp_path, source=source).read_bytes() == good


# -- unknown names ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def abc(tmp_path_factory, sample_source) -> AbcProjectCache:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutdatedManifestWarning)
        return AbcProjectCache.from_s3_cache(tmp_path_factory.mktemp("abc"), source=sample_source)


@pytest.fixture(scope="module")
def vbn(tmp_path_factory, sample_source) -> VbnProjectCache:
    return VbnProjectCache.from_s3_cache(tmp_path_factory.mktemp("vbn"), source=sample_source,
                                         progressbar=False)


def test_unknown_directory_lists_the_valid_ones(abc):
    """An unknown directory: KeyError listing every valid directory."""
    with pytest.raises(KeyError, match=r"'WMB-10Y' is not a directory .*Valid directories: \[.*'WMB-10X'"):
        abc.get_metadata_path("WMB-10Y", "gene")
    with pytest.raises(KeyError, match=r"Valid directories: \[.*'WMB-taxonomy'"):
        abc.get_directory_metadata("no-such-directory")


def test_unknown_file_lists_the_valid_ones(abc):
    """An unknown file name: KeyError listing the valid names of that directory."""
    with pytest.raises(KeyError, match=r"File 'no_such_file' not found .*Valid names: \[.*'gene'"):
        abc.get_metadata_path("WMB-10X", "no_such_file")
    with pytest.raises(KeyError, match=r"Valid names: \[.*'WMB-10XMulti/log2'"):
        abc.get_data_path("WMB-10XMulti", "WMB-10XMulti/log3")


def test_unknown_gene_lists_the_close_ones(abc):
    """An unknown gene symbol: an error that names it and suggests valid symbols."""
    from abc_helpers.expression import get_gene_data

    cells = abc.get_metadata_dataframe("WMB-10X", "cell_metadata", index_col="cell_label").head(20)
    genes = abc.get_metadata_dataframe("WMB-10X", "gene", index_col="gene_identifier")
    symbol = str(genes["gene_symbol"].iloc[0])
    with pytest.raises(KeyError) as info:
        get_gene_data(abc, cells, genes, [symbol + "x"])
    message = str(info.value)
    assert symbol + "x" in message and symbol in message.replace(symbol + "x", "")


def test_unknown_table_lists_the_valid_ones(vbn):
    """An unknown VBN table: KeyError listing the valid tables (cache and direct link)."""
    with pytest.raises(KeyError, match=r"no metadata file 'unit'.*'units'"):
        vbn.get_metadata_path("unit")
    with pytest.raises(KeyError, match=r"Unknown VBN metadata table 'unit'.*'units'"):
        get_metadata_url("unit", source="aws")


def test_unknown_session_lists_valid_ones(vbn):
    """An unknown ecephys session: KeyError that lists (some of) the valid session ids."""
    valid = vbn.get_ecephys_session_table(filter_abnormalities=False).index
    with pytest.raises(KeyError) as info:
        vbn.get_ecephys_session(123)
    assert str(int(valid[0])) in str(info.value)


def test_unknown_manifest_names_list_the_valid_ones(abc, vbn):
    """Unknown release / manifest names list the valid ones."""
    with pytest.raises(ValueError, match=r"Valid names: \[.*releases/2023"):
        abc.load_manifest("20000101")
    with pytest.raises(ValueError, match=r"Valid names: \[.*manifest_v0\.3\.0\.json"):
        vbn.load_manifest("visual-behavior-neuropixels_project_manifest_v9.9.9.json")


# -- read-only caches --------------------------------------------------------------------------------
def test_local_abc_cache_reads_and_writes_nothing(tmp_path, sample_source):
    """A filled ABC cache opened with from_local_cache serves files and writes nothing at all."""
    folder = tmp_path / "abc"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutdatedManifestWarning)
        filled = AbcProjectCache.from_s3_cache(folder, source=sample_source)
    filled.get_metadata_path("WMB-10X", "gene")
    filled.get_directory_metadata("WMB-taxonomy")
    filled.get_data_path("WMB-10XMulti", "WMB-10XMulti/log2")
    before = _listing(folder)
    local = AbcProjectCache.from_local_cache(folder)
    assert local.get_metadata_dataframe("WMB-10X", "gene").shape[0] > 0
    assert len(local.get_directory_metadata("WMB-taxonomy")) == len(filled.list_metadata_files("WMB-taxonomy"))
    assert local.get_data_path("WMB-10XMulti", "WMB-10XMulti/log2").is_file()
    local.list_directories, local.list_manifest_file_names  # noqa: B018 - listing must not write
    with pytest.raises(FileNotFoundError, match="local \\(read-only\\) cache"):
        local.get_directory_data("Allen-CCF-2020")
    assert _listing(folder) == before


def test_local_vbn_cache_reads_and_writes_nothing(tmp_path, sample_source):
    """A VBN cache holding only downloaded CSVs, opened with from_local_cache: tables load, nothing is written."""
    folder = tmp_path / "vbn"
    filled = VbnProjectCache.from_s3_cache(folder, source=sample_source, progressbar=False)
    filled.get_metadata_path("units")  # the CSV only, as a mirror or an s3 mount would hold it
    before = _listing(folder)
    local = VbnProjectCache.from_local_cache(folder, progressbar=False)
    assert len(local.get_unit_table()) > 0
    assert _listing(folder) == before


# -- files damaged on disk ------------------------------------------------------------------------------
def test_truncated_h5ad_is_fetched_again(abc, sample_server):
    """An h5ad cut short on disk is noticed (size against the manifest) and downloaded again."""
    attrs = abc.get_file_attributes("WMB-10XMulti", "WMB-10XMulti/log2")
    path = abc.get_data_path("WMB-10XMulti", "WMB-10XMulti/log2")
    path.write_bytes(path.read_bytes()[: attrs.size // 3])
    again = abc.get_data_path("WMB-10XMulti", "WMB-10XMulti/log2")
    assert hashlib.md5(again.read_bytes()).hexdigest() == attrs.file_hash


def test_same_size_damage_is_fixed_on_request(abc):
    """A recorded CSV damaged in place (same size) is replaced by force_download, hash checked."""
    attrs = abc.get_file_attributes("WMB-10X", "gene")
    path = abc.get_metadata_path("WMB-10X", "gene")
    path.write_bytes(b"\0" * attrs.size)
    fixed = abc.get_metadata_path("WMB-10X", "gene", force_download=True)
    assert hashlib.md5(fixed.read_bytes()).hexdigest() == attrs.file_hash


def test_truncated_vbn_table_is_fetched_again(vbn):
    """A VBN table CSV cut short on disk is noticed and downloaded again."""
    path = vbn.get_metadata_path("units")
    good = hashlib.blake2b(path.read_bytes()).hexdigest()
    path.write_bytes(path.read_bytes()[:1000])
    again = vbn.get_metadata_path("units")
    assert hashlib.blake2b(again.read_bytes()).hexdigest() == good


# -- plain HTTP -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", [
    "https://allen-brain-cell-atlas.s3.us-west-2.amazonaws.com/x.csv",
    "http://127.0.0.1:9/x.csv", "http://localhost:9/x.csv", "http://[::1]:9/x.csv",
    "http://127.1.2.3/x.csv",
])
def test_https_and_loopback_are_allowed(url):
    """https anywhere; plain http to loopback only."""
    check_url_allowed(url)


@pytest.mark.parametrize("url", [
    "http://allen-brain-cell-atlas.s3.us-west-2.amazonaws.com/x.csv",
    "http://api.brain-map.org/grid_data/download/1",
    "http://127.0.0.1.nip.invalid/x.csv",
    "http://localhost.invalid/x.csv",
    "http://127.0.0.1@evil.invalid/x.csv",
    "ftp://127.0.0.1/x.csv",
    "file:///etc/passwd",
])
def test_plain_http_elsewhere_is_refused(url, tmp_path):
    """Plain http to a real host, look-alike hosts and other schemes: refused before any connection."""
    with pytest.raises(ValueError, match="Refusing"):
        check_url_allowed(url)
    with pytest.raises(ValueError, match="Refusing"):
        download(url, tmp_path / "x.csv", progressbar=False)
    assert not list(tmp_path.iterdir())


def test_named_mirror_is_allowed_over_http_and_only_it():
    """A mirror given as the data source may be plain http; its look-alikes may not."""
    mirror = "http://mirror-one.invalid:8000"
    with pytest.raises(ValueError, match="Refusing plain-HTTP"):
        check_url_allowed(mirror + "/allen-brain-cell-atlas/x.csv")
    source = get_source(mirror + "/")
    url = source.object_url(ABC_BUCKET, "x.csv")
    assert url == mirror + "/allen-brain-cell-atlas/x.csv"
    check_url_allowed(url)
    for other in ("http://mirror-one.invalid:8001/x.csv", "http://mirror-one.invalid:8000.evil.invalid/x",
                  "http://mirror-two.invalid:8000/x.csv"):
        with pytest.raises(ValueError, match="Refusing plain-HTTP"):
            check_url_allowed(other)


def test_aws_source_builds_https_urls_only():
    """Every URL the real source builds is https."""
    aws = get_source("aws")
    urls = [aws.object_url(ABC_BUCKET, "releases/20231215/manifest.json"),
            aws.object_url(VBN_BUCKET, "visual-behavior-neuropixels/project_metadata/units.csv", "v1"),
            aws.bucket_url(ABC_BUCKET), aws.api_url("grid_data/download/1")]
    assert all(u.startswith("https://") for u in urls)


class _Redirect(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a redirect to a plain-HTTP, non-loopback URL."""

    hits: ClassVar[list[str]] = []

    def do_GET(self):
        self.hits.append(self.path)
        self.send_response(302)
        self.send_header("Location", "http://downgrade.invalid/x.csv")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_redirect_to_plain_http_is_refused(tmp_path):
    """A redirect from an allowed URL to plain http elsewhere is refused, not followed."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/bucket/x.csv"
        with pytest.raises(DownloadError, match=r"'x.csv' from .*Refusing plain-HTTP URL 'http://downgrade"):
            download(url, tmp_path / "x.csv", progressbar=False)
        assert len(_Redirect.hits) == 1, "a refused redirect must not be retried"
        assert not (tmp_path / "x.csv").exists()
    finally:
        httpd.shutdown()
        httpd.server_close()
