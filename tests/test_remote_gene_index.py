"""Served gene indexes: a mirror (or the sample server) serves them, get_gene_data reads byte ranges.

Every check compares with the values streamed from the downloaded matrices, float32 for float32,
and reads the server's own request counts, so "no matrix downloaded" and "labels once" are
measured, not assumed. The fault cases inject each fault of the server's fault plan on the index
requests only, and check that it fired.
"""

from __future__ import annotations

import json
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.worlds import shared_world

from abc_helpers import (
    AbcProjectCache,
    DownloadError,
    MissingCellsWarning,
    OutdatedManifestWarning,
    get_gene_data,
)
from abc_helpers.gene_index import (
    CATALOG_FORMAT,
    GENE_TABLE_DTYPE,
    catalog_key,
    forget_served_indexes,
    served_indexes,
)
from abc_helpers.mirror import fill_mirror
from abc_helpers.sample import SampleServer, build_world

GENES = ["Slc17a7", "Slc32a1", "Tac2", "Slc17a6", "Xkr4"]


def _cache(folder: Path, source) -> AbcProjectCache:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutdatedManifestWarning)
        return AbcProjectCache.from_s3_cache(folder, source=source)


def _tables(cache: AbcProjectCache) -> tuple[pd.DataFrame, pd.DataFrame]:
    cells = cache.get_metadata_dataframe("WMB-10X", "cell_metadata", index_col="cell_label")
    genes = cache.get_metadata_dataframe("WMB-10X", "gene", index_col="gene_identifier")
    return cells, genes


def _equal(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert got.dtypes.eq(np.float32).all() and got.index.equals(expected.index)
    assert list(got.columns) == list(expected.columns)
    np.testing.assert_array_equal(got.to_numpy(), expected.to_numpy())  # NaN == NaN here


def _matrix_requests(server) -> dict[str, int]:
    """Requests for matrices themselves (not their indexes or sidecars)."""
    return {k: n for k, n in server.stats()["requests"].items()
            if k.endswith(".h5ad") and ".gene_index." not in k}


@pytest.fixture(scope="module")
def server():
    """A server of its own over the sample world (faults are set per test)."""
    with SampleServer(root=build_world()) as srv:
        yield srv


@pytest.fixture(scope="module")
def streamed(server, tmp_path_factory):
    """The reference: every cell of the newest release, streamed from the downloaded matrices."""
    cache = _cache(tmp_path_factory.mktemp("streamed"), server.url)
    cells, genes = _tables(cache)
    out = {}
    for data_type in ("log2", "raw"):
        out[data_type] = get_gene_data(cache, cells, genes, GENES, data_type=data_type,
                                       gene_index="off", progressbar=False)
    return cells, genes, out


@pytest.fixture(autouse=True)
def fresh_process_state(server):
    """Each test starts like a new Python session: no catalog or labels in memory, no faults."""
    forget_served_indexes()
    server.set_faults(None)
    yield
    server.set_faults(None)


@pytest.mark.parametrize("data_type", ["log2", "raw"])
def test_served_values_equal_streaming_without_downloading_a_matrix(server, streamed, tmp_path,
                                                                    data_type):
    """All cells, both data types: the served index gives the streamed values; no matrix is fetched."""
    cells, genes, reference = streamed
    cache = _cache(tmp_path / "c", server.url)
    server.reset_stats()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = get_gene_data(cache, cells, genes, GENES, data_type=data_type, gene_index="remote",
                            progressbar=False)
    _equal(got, reference[data_type])
    assert (got["Slc17a7"] > 0).mean() > 0.05  # real values, not zeros
    assert _matrix_requests(server) == {}
    assert not list((tmp_path / "c").rglob("*-log2.h5ad")) and not list((tmp_path / "c").rglob("*-raw.h5ad"))
    if data_type == "raw":
        assert np.array_equal(got.to_numpy(), np.round(got.to_numpy()))  # counts


def test_only_the_genes_bytes_are_read(server, streamed, tmp_path):
    """Index files are read in ranges: far fewer bytes than their size; the labels once per cache."""
    cells, genes, reference = streamed
    cache = _cache(tmp_path / "c", server.url)
    served = {k: v for k, v in served_indexes(cache).items()
              if k.endswith("/log2") and k.startswith("WMB-10X")}
    assert len(served) == 24  # and the MERFISH matrix
    server.reset_stats()
    get_gene_data(cache, cells, genes, ["Tac2"], gene_index="remote", progressbar=False)
    sent = server.stats()["bytes_sent"]
    index_bytes = sum(n for k, n in sent.items() if k.endswith(".gene_index.h5ad"))
    index_size = sum(s.entry["index"]["size"] for s in served.values())
    assert 0 < index_bytes < 0.2 * index_size
    labels = {k for k in sent if k.endswith(".labels.txt")}
    assert len(labels) == 24
    # a second query in the same session: the labels are not fetched again
    server.reset_stats()
    again = get_gene_data(cache, cells, genes, ["Tac2", "Slc17a7"], gene_index="remote",
                          progressbar=False)
    _equal(again, reference["log2"][["Tac2", "Slc17a7"]])
    assert not any(k.endswith(".labels.txt") for k in server.stats()["requests"])
    # a new session on the same cache folder: the labels come from the cache, checked by md5
    forget_served_indexes()
    server.reset_stats()
    get_gene_data(cache, cells, genes, ["Tac2"], gene_index="remote", progressbar=False)
    assert not any(k.endswith(".labels.txt") for k in server.stats()["requests"])


def test_cell_subsets_missing_cells_and_other_releases(server, streamed, tmp_path):
    """A shuffled subset, cells absent from their matrix or from the release: as streaming does."""
    cells, genes, reference = streamed
    cache = _cache(tmp_path / "c", server.url)
    subset = cells.sample(frac=0.3, random_state=7)
    subset = pd.concat([subset, pd.DataFrame(
        {"dataset_label": ["WMB-10Xv2", "WMB-10Xv2"], "feature_matrix_label": ["WMB-10Xv2-TH", "WMB-10Xv9"]},
        index=pd.Index(["NOT-A-CELL", "ANOTHER"], name="cell_label"))])
    results = {}
    for mode in ("remote", "off"):
        with pytest.warns(MissingCellsWarning) as caught:
            results[mode] = get_gene_data(cache, subset, genes, GENES, gene_index=mode, progressbar=False)
        results[mode + "-warnings"] = sorted(str(w.message) for w in caught)
    _equal(results["remote"], results["off"])
    assert results["remote-warnings"] == results["off-warnings"]
    _equal(results["remote"].iloc[:-2], reference["log2"].loc[subset.index[:-2]])
    assert results["remote"].iloc[-2:].isna().all().all()
    # an older release: its own catalog; its WMB-10XMulti cells are not in it
    old = _cache(tmp_path / "old", server.url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutdatedManifestWarning)
        old.load_manifest("20230630")
    with pytest.warns(MissingCellsWarning, match="WMB-10XMulti"):
        got = get_gene_data(old, cells, genes, ["Tac2"], gene_index="remote", progressbar=False)
    with pytest.warns(MissingCellsWarning, match="WMB-10XMulti"):
        _equal(got, get_gene_data(old, cells, genes, ["Tac2"], gene_index="off", progressbar=False))


def test_unknown_genes_and_modes(server, streamed, tmp_path):
    """Unknown genes: the same error with close matches; an unknown mode is named."""
    cells, genes, _ = streamed
    cache = _cache(tmp_path / "c", server.url)
    with pytest.raises(KeyError, match=r"'tac2' \(did you mean 'Tac2'\?\)"):
        get_gene_data(cache, cells, genes, ["tac2"], gene_index="remote", progressbar=False)
    with pytest.raises(ValueError, match=r"Unknown gene_index 'served': use one of \['auto', 'remote', 'local', 'off'\]"):
        get_gene_data(cache, cells, genes, ["Tac2"], gene_index="served", progressbar=False)
    with pytest.raises(ValueError, match="selected_genes is None"):
        get_gene_data(cache, cells, genes, None, progressbar=False)


def test_genes_absent_from_the_catalogs_gene_order(server, streamed, tmp_path):
    """A gene table in another order than the index's: the served var file maps the genes."""
    cells, genes, reference = streamed
    cache = _cache(tmp_path / "c", server.url)
    shuffled = genes.sample(frac=1.0, random_state=1)
    server.reset_stats()
    got = get_gene_data(cache, cells, shuffled, GENES, gene_index="remote", progressbar=False)
    _equal(got, reference["log2"])
    assert sum(k.endswith(".var.tsv") for k in server.stats()["requests"]) == 24


# -- a mirror: fill-mirror --gene-index, then serve it -------------------------------------------
@pytest.fixture(scope="module")
def mirror(tmp_path_factory, server):
    root = tmp_path_factory.mktemp("mirror")
    report = fill_mirror(root, source=server.url, abc_releases=["latest"], abc_metadata=["WMB-10X"],
                         abc_data=["WMB-10Xv2"], abc_data_types=["log2"], abc_gene_index=True,
                         vbn_manifests=None, progressbar=False)
    n = len(_cache(root / "allen-brain-cell-atlas", server.url).list_expression_matrix_files("WMB-10Xv2")) // 2
    assert n == 10
    assert report.files["gene-index"] == 4 * n + 1  # n indexes x (index + 3 sidecars) + catalog
    assert any(note.startswith(f"gene indexes: {n} built") for note in report.notes)
    return root


def test_mirror_serves_what_it_built(mirror, streamed, tmp_path):
    """A mirror filled with --gene-index answers remote queries with the streamed values; its
    catalog has the documented fields."""
    cells, genes, reference = streamed
    catalog = json.loads((mirror / "allen-brain-cell-atlas" / catalog_key("20231215")).read_text())
    assert catalog["format"] == CATALOG_FORMAT and len(catalog["indexes"]) == 10
    entry = catalog["indexes"][0]
    assert set(entry) >= {"directory", "file_name", "source", "index", "shape", "nnz", "indices",
                          "data", "gene_table", "labels", "var"}
    table = (mirror / "allen-brain-cell-atlas" / entry["gene_table"]["relative_path"]).read_bytes()
    assert len(table) == (entry["shape"][1] + 1) * GENE_TABLE_DTYPE.itemsize
    v2 = cells[cells["dataset_label"] == "WMB-10Xv2"]
    with SampleServer(mirror=mirror) as srv:
        cache = _cache(tmp_path / "c", srv.url)
        got = get_gene_data(cache, v2, genes, GENES, gene_index="remote", progressbar=False)
        _equal(got, reference["log2"].loc[v2.index])
        assert _matrix_requests(srv) == {}
        # raw matrices were not mirrored: "remote" refuses, "auto" says which it streams
        with pytest.raises(ValueError, match=r"gene_index='remote', but 10 matrices have no usable gene index"):
            get_gene_data(cache, v2, genes, GENES, data_type="raw", gene_index="remote", progressbar=False)


def test_index_of_another_file_is_refused(mirror, streamed, tmp_path):
    """A served index whose source md5 is not the release's: "remote" refuses, "auto" streams."""
    cells, genes, reference = streamed
    copy = tmp_path / "mirror"
    import shutil

    shutil.copytree(mirror, copy)
    path = copy / "allen-brain-cell-atlas" / catalog_key("20231215")
    catalog = json.loads(path.read_text())
    victim = catalog["indexes"][3]
    victim["source"]["md5"] = "0" * 32
    path.write_text(json.dumps(catalog))
    name = f"{victim['directory']}/{victim['file_name']}"
    matrix = victim["file_name"].split("/")[0]
    few = cells[cells["feature_matrix_label"].isin([matrix, catalog["indexes"][0]["file_name"].split("/")[0]])]
    with SampleServer(mirror=copy) as srv:
        cache = _cache(tmp_path / "c", srv.url)
        with pytest.raises(ValueError, match=rf"{name}: the served index of {name} was built from a file with md5 0{{32}}"):
            get_gene_data(cache, few, genes, GENES, gene_index="remote", progressbar=False)
        with pytest.warns(UserWarning, match=rf"1 of 2 matrices are downloaded and streamed.*{name}"):
            got = get_gene_data(cache, few, genes, GENES, gene_index="auto", progressbar=False)
        _equal(got, reference["log2"].loc[few.index])
        assert list(_matrix_requests(srv)) == [f"allen-brain-cell-atlas/{victim['source']['relative_path']}"]


def test_no_catalog_at_all(tmp_path, tmp_path_factory, streamed, server):
    """A source that serves no index: "auto" warns once and streams; "remote" says there is none."""
    cells, genes, reference = streamed
    world = shared_world(tmp_path_factory, ("abc",))  # the ABC generator alone serves no gene index
    few = cells[cells["feature_matrix_label"] == "WMB-10Xv2-TH"]
    with SampleServer(root=world) as srv:
        cache = _cache(tmp_path / "c", srv.url)
        with pytest.raises(ValueError, match="no gene index is served there"):
            get_gene_data(cache, few, genes, GENES, gene_index="remote", progressbar=False)
        with pytest.warns(UserWarning, match="1 of 1 matrices are downloaded and streamed, for want of "
                                             "a gene index"):
            got = get_gene_data(cache, few, genes, GENES, progressbar=False)
    _equal(got, reference["log2"].loc[few.index])


def test_executor_spreads_remote_reads(server, streamed, tmp_path):
    """Threads: the same values, each matrix read in its own task."""
    cells, genes, reference = streamed
    cache = _cache(tmp_path / "c", server.url)
    with ThreadPoolExecutor(4) as pool:
        got = get_gene_data(cache, cells, genes, GENES, gene_index="remote", executor=pool,
                            progressbar=False)
    _equal(got, reference["log2"])


# -- faults on the index requests ------------------------------------------------------------------
TH = "WMB-10Xv2-TH"
#: Offsets are fractions of each body, so a cut or a stall lands inside a 28-byte range as inside a
#: whole sidecar; the server counts a rule only when it changed a response (FaultPlan.effective).
FAULTS = {
    "cut": ["drop-after=50%,count=2"],
    "503": ["status=503,retry-after=0.1,count=2"],
    "500": ["status=500,count=1"],
    "stall-mid-body": ["stall-after=50%,stall=5,count=1"],
    "stall-first-byte": ["stall=5,count=1"],
    "wrong-byte": ["corrupt-at=50%,count=2"],
    "short-body": ["short-by=1%,count=1"],
    "range-ignored": ["ignore-range,count=2"],
}
#: Whole downloads (the sidecars, the catalog) send Range only when they resume a cut: there an
#: ignored Range follows a cut.
RESUMED_RANGE_IGNORED = ["drop-after=50%,count=1", "ignore-range,count=1"]
TARGETS = {
    "index": "*WMB-10Xv2-TH-log2.gene_index.h5ad",
    "gene-table": "*WMB-10Xv2-TH-log2.gene_index.genes.bin",
    "labels": "*WMB-10Xv2-TH-log2.gene_index.labels.txt",
    "var": "*WMB-10Xv2-TH-log2.gene_index.var.tsv",
    "catalog": "*gene-index/releases/20231215/catalog.json",
}
CASES = [(f, t) for f in FAULTS for t in TARGETS]


def _rules(fault: str, target: str) -> list[str]:
    rules = RESUMED_RANGE_IGNORED if fault == "range-ignored" and target != "index" else FAULTS[fault]
    return [f"{rule},key={TARGETS[target]}" for rule in rules]


def _assert_effective(server) -> None:
    """Every rule changed as many responses as it matched: its count if it has one, else >= 1."""
    plan = server.faults
    for fault, (rule, hits), (_, effective) in zip(plan.faults, plan.hits(), plan.effective(),
                                                   strict=True):
        if fault.count is not None:
            assert effective == hits == fault.count, \
                f"'{rule}' matched {hits} and changed {effective} responses, planned {fault.count}"
        else:
            assert effective == hits >= 1, f"'{rule}' matched {hits} and changed {effective} responses"


@pytest.mark.parametrize(("fault", "target"), CASES)
def test_fault_on_index_requests_gives_right_values(server, streamed, tmp_path, monkeypatch, fault, target):
    """Each transient fault on each request of a query (the catalog, the sidecars, the ranges):
    retried, the right values, never wrong ones; the fault changed a response as planned."""
    cells, genes, reference = streamed
    monkeypatch.setenv("ABC_HELPERS_TIMEOUT", "0.5")
    monkeypatch.setattr("abc_helpers.transfer.MAX_WAIT", 0.05)
    th = cells[cells["feature_matrix_label"] == TH]
    cache = _cache(tmp_path / "c", server.url)
    shuffled = genes.sample(frac=1.0, random_state=1)  # another gene order: the var file is read
    server.set_faults(_rules(fault, target))  # before anything is read, the catalog included
    got = get_gene_data(cache, th, shuffled, GENES, gene_index="remote", progressbar=False)
    _equal(got, reference["log2"].loc[th.index])
    _assert_effective(server)


@pytest.mark.parametrize(("fault", "cause"), [
    ("drop-after=50%", "connection broken"),
    ("status=503", "HTTP 503"),
    ("corrupt-at=0", "CRC-32"),
    ("ignore-range", "ignored the Range"),
    ("short-by=3", "connection broken|short body"),
    ("stall=5", "[Tt]imed? ?out"),
])
def test_persistent_fault_is_a_clear_error(server, streamed, tmp_path, monkeypatch, fault, cause):
    """A fault that never stops: a DownloadError naming the URL and the cause, no values."""
    cells, genes, _ = streamed
    monkeypatch.setenv("ABC_HELPERS_TIMEOUT", "0.3")
    monkeypatch.setattr("abc_helpers.transfer.pause", lambda seconds: None)  # the client's waits only
    th = cells[cells["feature_matrix_label"] == TH]
    cache = _cache(tmp_path / "c", server.url)
    server.set_faults([f"{fault},key={TARGETS['index']}"])
    with pytest.raises(DownloadError) as info:
        get_gene_data(cache, th, genes, GENES, gene_index="remote", progressbar=False)
    message = str(info.value)
    assert "WMB-10Xv2-TH-log2.gene_index.h5ad" in message
    assert re.search(cause, message), message
    _assert_effective(server)


def test_a_corrupted_catalog_is_refused(server, streamed, tmp_path, monkeypatch):
    """A catalog whose bytes do not match the md5 the listing gives: fetched again, then an error
    naming the catalog, its URL and the hash mismatch; no values."""
    cells, genes, _ = streamed
    monkeypatch.setattr("abc_helpers.transfer.pause", lambda seconds: None)
    th = cells[cells["feature_matrix_label"] == TH]
    cache = _cache(tmp_path / "c", server.url)
    server.set_faults([f"corrupt-at=50%,key={TARGETS['catalog']}"])
    with pytest.raises(DownloadError) as info:
        get_gene_data(cache, th, genes, GENES, gene_index="remote", progressbar=False)
    message = str(info.value)
    assert f"{server.url}/allen-brain-cell-atlas/{catalog_key('20231215')}" in message
    assert "'catalog.json'" in message and "md5 hash mismatch" in message
    _assert_effective(server)
    assert server.faults.hits()[0][1] == 3  # the first try and its 2 retries


def test_mirror_etags_come_from_the_record(mirror, tmp_path):
    """The mirror answers with the md5 its fill recorded, without reading big files again; a file
    changed since (another size) is hashed."""
    import requests

    from abc_helpers.cachefolder import CacheFolder

    bucket = mirror / "allen-brain-cell-atlas"
    record = CacheFolder(bucket).read_record()
    key = next(k for k in record if k.endswith(".gene_index.h5ad"))
    with SampleServer(mirror=mirror) as srv:
        head = requests.head(f"{srv.url}/allen-brain-cell-atlas/{key}", timeout=10)
        assert head.headers["ETag"] == f'"{record[key].hash[4:]}"'
    copy = tmp_path / "m"
    import shutil

    shutil.copytree(mirror, copy)
    (copy / "allen-brain-cell-atlas" / key).write_bytes(b"changed")
    with SampleServer(mirror=copy) as srv:
        head = requests.head(f"{srv.url}/allen-brain-cell-atlas/{key}", timeout=10)
        import hashlib

        assert head.headers["ETag"] == f'"{hashlib.md5(b"changed").hexdigest()}"'
