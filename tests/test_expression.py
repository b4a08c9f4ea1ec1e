"""Gene extraction from h5ad matrices: streaming, the gene index, executors and errors."""

from __future__ import annotations

import itertools
import re
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from abc_helpers import expression
from abc_helpers.expression import MissingCellsWarning, extract_genes_from_h5ad
from abc_helpers.gene_index import gene_index_path, read_gene_index_info, write_gene_index
from abc_helpers.h5ad_layout import RawReader, block_bounds, read_strings

N_CELLS, N_GENES = 1_500, 300


def _matrix(seed: int = 0, n_cells: int = N_CELLS, n_genes: int = N_GENES) -> sp.csr_matrix:
    """A 10x-like sparse matrix: skewed gene frequencies, some empty rows, float32 log2 values."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_genes + 1) ** 0.8
    p = weights[rng.permutation(n_genes)] * 0.6 / weights.max()
    dense = (rng.random((n_cells, n_genes)) < p).astype(np.float32)
    dense *= np.log2(1 + rng.geometric(0.3, size=dense.shape)).astype(np.float32)
    dense[rng.choice(n_cells, 20, replace=False)] = 0  # cells with no counts at all
    dense[:, 7] = 0  # a gene never seen
    return sp.csr_matrix(dense)


def _labels(n: int, prefix: str = "") -> list[str]:
    return [f"{prefix}AAAC{i:08d}-{i % 7:03d}_B05" for i in range(n)]


def _gene_ids(n: int) -> list[str]:
    return [f"ENSMUSG{i:011d}" for i in range(n)]


def _symbols(n: int) -> list[str]:
    return [f"Gene{i}" for i in range(n)]


@pytest.fixture(scope="module")
def h5ad_file(tmp_path_factory):
    """A CSR h5ad written by anndata, and its dense reference."""
    X = _matrix()
    path = tmp_path_factory.mktemp("h5ad") / "TEST-log2.h5ad"
    obs = pd.DataFrame({"library_label": ["L1"] * N_CELLS},
                       index=pd.Index(_labels(N_CELLS), name="cell_label"))
    var = pd.DataFrame({"gene_symbol": _symbols(N_GENES)},
                       index=pd.Index(_gene_ids(N_GENES), name="gene_identifier"))
    anndata.AnnData(X, obs=obs, var=var).write_h5ad(path)
    return path, pd.DataFrame(X.toarray(), index=obs.index, columns=var["gene_symbol"])


def test_block_bounds_cover_every_row_once():
    """Blocks are contiguous, cover the range, and a huge row is a block of its own"""
    indptr = np.concatenate([[0], np.cumsum([3, 0, 50, 2, 2, 0, 1])])
    bounds = block_bounds(indptr, 5)
    assert bounds[0][0] == 0 and bounds[-1][1] == 7
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    assert (2, 3) in bounds
    assert block_bounds(indptr, 5, first=3, last=5) == [(3, 5)]


@pytest.mark.parametrize("search_cost", [0, 10**9], ids=["row-search", "block-scan"])
@pytest.mark.parametrize("block_nnz", [1, 97, 1 << 22])
def test_streaming_matches_dense_reference(h5ad_file, block_nnz, search_cost, monkeypatch):
    """Streaming CSR blocks gives exactly the dense values, in the order asked (both strategies)"""
    monkeypatch.setattr(expression, "SEARCH_COST", search_cost)
    path, dense = h5ad_file
    genes = ["Gene5", "Gene0", "Gene7", "Gene299", "Gene42", "ENSMUSG00000000005"]
    got = extract_genes_from_h5ad(path, genes, block_nnz=block_nnz)
    assert got.dtypes.eq(np.float32).all()
    assert list(got.columns) == genes
    np.testing.assert_array_equal(got.to_numpy(), dense[[*genes[:-1], "Gene5"]].to_numpy())
    assert got.index.equals(dense.index)


def test_unsorted_rows_are_scanned(tmp_path, monkeypatch):
    """Rows whose indices are not sorted (allowed by the format) still give exact values"""
    monkeypatch.setattr(expression, "SEARCH_COST", 0)
    X = _matrix(seed=5, n_cells=200, n_genes=50)
    rng = np.random.default_rng(5)
    for r in range(X.shape[0]):  # shuffle each row's (index, value) pairs
        a, b = X.indptr[r], X.indptr[r + 1]
        perm = rng.permutation(b - a) + a
        X.indices[a:b], X.data[a:b] = X.indices[perm], X.data[perm]
    assert not X.has_sorted_indices
    path = tmp_path / "unsorted.h5ad"
    anndata.AnnData(X, obs=pd.DataFrame(index=_labels(200)),
                    var=pd.DataFrame({"gene_symbol": _symbols(50)}, index=_gene_ids(50))
                    ).write_h5ad(path)
    with h5py.File(path) as f:  # anndata kept the order
        assert not (np.diff(f["X/indices"][: X.indptr[1]]) > 0).all() or X.indptr[1] < 2
    got = extract_genes_from_h5ad(path, ["Gene1", "Gene30", "Gene0"], block_nnz=300)
    np.testing.assert_array_equal(got.to_numpy(), X.toarray()[:, [1, 30, 0]])


def test_compressed_file_is_read_through_h5py(h5ad_file, tmp_path):
    """A gzip-compressed matrix (no raw reads possible) gives the same values"""
    path, dense = h5ad_file
    small = tmp_path / "gzip.h5ad"
    anndata.read_h5ad(path).write_h5ad(small, compression="gzip")
    with h5py.File(small) as f:
        assert f["X/data"].compression == "gzip"
        assert RawReader.open(f["X/data"]) is None
    got = extract_genes_from_h5ad(small, ["Gene3", "Gene2"], block_nnz=500)
    np.testing.assert_array_equal(got.to_numpy(), dense[["Gene3", "Gene2"]].to_numpy())


def test_streaming_subset_in_any_order_with_missing_cells(h5ad_file):
    """A shuffled subset is returned in the order asked; unknown cells are NaN and reported"""
    path, dense = h5ad_file
    rng = np.random.default_rng(1)
    cells = [*list(dense.index[rng.choice(N_CELLS, 300, replace=False)]), "NOT-A-CELL"]
    with pytest.warns(MissingCellsWarning, match=r"1 of 301 cells are not in"):
        got = extract_genes_from_h5ad(path, ["ENSMUSG00000000003", "Gene9"], cell_labels=cells,
                                      block_nnz=50)
    np.testing.assert_array_equal(got.iloc[:-1].to_numpy(),
                                  dense.loc[cells[:-1], ["Gene3", "Gene9"]].to_numpy())
    assert got.loc["NOT-A-CELL"].isna().all()


def test_unknown_gene_in_file_is_an_error(h5ad_file):
    """A gene that is neither an id nor a symbol of the file raises KeyError naming it"""
    path, _ = h5ad_file
    with pytest.raises(KeyError, match=re.escape("['Nope1']")):
        extract_genes_from_h5ad(path, ["Gene1", "Nope1"])


@pytest.mark.parametrize("run_nnz", [64, 1 << 23])
def test_gene_index_is_the_same_matrix_in_csc(h5ad_file, tmp_path, run_nnz):
    """The gene index holds the same values as the source, anndata reads it, queries match"""
    path, dense = h5ad_file
    target = write_gene_index(path, tmp_path / "idx.h5ad", run_nnz=run_nnz, progressbar=False)
    info = read_gene_index_info(target)
    assert info["shape"] == (N_CELLS, N_GENES)
    with open(path, "rb") as fh:
        import hashlib

        assert info["source_md5"] == hashlib.md5(fh.read()).hexdigest()
    backed = anndata.read_h5ad(target, backed="r")
    assert backed.obs_names.equals(dense.index)
    assert list(backed.var["gene_symbol"]) == _symbols(N_GENES)
    X = backed.X[:, :].tocsc() if hasattr(backed.X, "format") else backed.X.to_memory()
    np.testing.assert_array_equal(sp.csr_matrix(X).toarray(), dense.to_numpy())
    backed.file.close()
    genes = ["Gene42", "Gene7", "Gene0"]
    cells = list(dense.index[::-3])
    got = extract_genes_from_h5ad(target, genes, cell_labels=cells)
    np.testing.assert_array_equal(got.to_numpy(), dense.loc[cells, genes].to_numpy())
    assert not list(tmp_path.glob("*.part-*")) and not list(tmp_path.glob("*.runs-*"))


@pytest.mark.parametrize("case", ["same", "shuffled", "subset+missing", "longer label",
                                  "non-ascii", "not str"])
def test_gene_index_matches_cells_in_every_shape(h5ad_file, tmp_path, case):
    """The index's label keys match any list of cells exactly, else the string path does"""
    from abc_helpers.gene_index import index_tables

    path, dense = h5ad_file
    target = write_gene_index(path, tmp_path / "idx.h5ad", progressbar=False)
    rng = np.random.default_rng(2)
    labels = list(dense.index)
    cells = {
        "same": labels,
        "shuffled": [labels[i] for i in rng.permutation(N_CELLS)],
        "subset+missing": [labels[5], "NOT-A-CELL", labels[0], labels[-1]],
        "longer label": [labels[3] + "X" * 40, labels[2], labels[3][:-1]],
        "non-ascii": [labels[1], "cellule-é", labels[9]],
        "not str": [labels[4], 12345, labels[8]],
    }[case]
    genes = ["Gene42", "Gene0", "Gene42"]  # a repeated gene is returned twice
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingCellsWarning)
        got = extract_genes_from_h5ad(target, genes, cell_labels=cells)
        again = extract_genes_from_h5ad(target, genes, cell_labels=cells)  # from the cache
    expected = dense.reindex(cells)[genes].to_numpy()
    np.testing.assert_array_equal(got.to_numpy(), expected)
    np.testing.assert_array_equal(again.to_numpy(), expected)
    assert list(got.index) == cells
    with h5py.File(target) as f:
        tables = index_tables(f)
        assert tables is not None and tables.keys(f)[0].dtype.itemsize % 8 == 0


@pytest.mark.parametrize("cached", [False, True])
def test_same_labels_is_exact(h5ad_file, tmp_path, cached):
    """The piecewise comparison with the stored labels accepts only the file's labels, in order"""
    from abc_helpers.gene_index import index_tables

    path, dense = h5ad_file
    target = write_gene_index(path, tmp_path / "idx.h5ad", progressbar=False)
    labels = list(dense.index)
    merged = [*labels[:10], labels[10] + "\n" + labels[11], *labels[12:]]
    cases = {
        "one char": [*labels[:700], labels[700][:-1] + "X", *labels[701:]],
        "swapped": labels[:2][::-1] + labels[2:],
        "merged": [*merged, "extra"],
        "last longer": [*labels[:-1], labels[-1] + "0"],
        "non-ascii": [*labels[:-1], "é" + labels[-1][1:]],
        "not str": [*labels[:-1], 12345],
    }
    with h5py.File(target) as f:
        tables = index_tables(f)
        if cached:
            tables.text(f)
        assert tables.same_labels(f, np.array(labels, dtype=object), step=64)
        for name, cells in cases.items():
            assert len(cells) == N_CELLS, name
            assert not tables.same_labels(f, np.array(cells, dtype=object), step=64), name


def test_streaming_all_rows_in_another_order(h5ad_file):
    """As many cells as the file, permuted and with one unknown: exact, NaN row reported"""
    path, dense = h5ad_file
    cells = list(dense.index[::-1])
    cells[10] = "NOT-A-CELL"
    with pytest.warns(MissingCellsWarning, match=r"1 of 1500 cells are not in"):
        got = extract_genes_from_h5ad(path, ["Gene3", "Gene3", "Gene8"], cell_labels=cells,
                                      block_nnz=200)
    np.testing.assert_array_equal(got.to_numpy(),
                                  dense.reindex(cells)[["Gene3", "Gene3", "Gene8"]].to_numpy())
    assert got.iloc[10].isna().all()


def test_gene_index_refuses_a_csc_source(h5ad_file, tmp_path):
    """Indexing an index is refused with a clear error, and leaves nothing behind"""
    path, _ = h5ad_file
    first = write_gene_index(path, tmp_path / "a.h5ad", progressbar=False)
    with pytest.raises(ValueError, match="not csr_matrix"):
        write_gene_index(first, tmp_path / "b.h5ad", progressbar=False)
    assert not (tmp_path / "b.h5ad").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["a.h5ad"]


def test_gene_index_path_is_next_to_the_source(tmp_path):
    """The index of x/WMB-10Xv2-TH-log2.h5ad is x/WMB-10Xv2-TH-log2.gene_index.h5ad"""
    got = gene_index_path(tmp_path / "WMB-10Xv2-TH-log2.h5ad")
    assert got == tmp_path / "WMB-10Xv2-TH-log2.gene_index.h5ad"
    assert read_gene_index_info(got) is None


def test_other_string_encodings(tmp_path):
    """Fixed-width labels, categorical symbols and nullable strings are read like anndata's"""
    X = _matrix(seed=3, n_cells=40, n_genes=12)
    path = tmp_path / "enc.h5ad"
    with h5py.File(path, "w") as f:
        x = f.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                        "shape": np.array(X.shape)})
        for name in ("data", "indices", "indptr"):
            x.create_dataset(name, data=getattr(X, name))
        obs = f.create_group("obs")
        obs.attrs.update({"_index": "cell_label", "encoding-type": "dataframe",
                          "encoding-version": "0.2.0"})
        obs.create_dataset("cell_label", data=np.array(_labels(40), dtype="S"))
        var = f.create_group("var")
        var.attrs.update({"_index": "_index", "encoding-type": "dataframe",
                          "encoding-version": "0.2.0", "column-order": ["gene_symbol", "note"]})
        var.create_dataset("_index", data=np.array(_gene_ids(12), dtype=object),
                           dtype=h5py.string_dtype())
        sym = var.create_group("gene_symbol")
        sym.attrs.update({"encoding-type": "categorical", "encoding-version": "0.2.0",
                          "ordered": False})
        sym.create_dataset("categories", data=np.array(_symbols(12)[::-1], dtype=object),
                           dtype=h5py.string_dtype())
        sym.create_dataset("codes", data=np.arange(12)[::-1].astype(np.int8))
        note = var.create_group("note")
        note.attrs.update({"encoding-type": "nullable-string-array", "encoding-version": "0.1.0"})
        note.create_dataset("values", data=np.array(["a"] * 12, dtype=object),
                            dtype=h5py.string_dtype())
        note.create_dataset("mask", data=np.arange(12) % 2 == 0)
    with h5py.File(path) as f:
        assert list(read_strings(f["var/gene_symbol"])) == _symbols(12)
        assert read_strings(f["var/note"])[0] is None
    got = extract_genes_from_h5ad(path, ["Gene11", "Gene2"])
    np.testing.assert_array_equal(got.to_numpy(), X.toarray()[:, [11, 2]])
    assert list(got.index[:2]) == _labels(2)
    index = write_gene_index(path, progressbar=False)
    np.testing.assert_array_equal(extract_genes_from_h5ad(index, ["Gene11", "Gene2"]).to_numpy(),
                                  X.toarray()[:, [11, 2]])


def test_dense_x_is_read_too(tmp_path):
    """A dense X (rare, but anndata writes it) gives the same answer"""
    X = _matrix(seed=4, n_cells=50, n_genes=10).toarray()
    path = tmp_path / "dense.h5ad"
    anndata.AnnData(X, obs=pd.DataFrame(index=_labels(50)),
                    var=pd.DataFrame({"gene_symbol": _symbols(10)}, index=_gene_ids(10))
                    ).write_h5ad(path)
    got = extract_genes_from_h5ad(path, ["Gene3", "Gene1"], cell_labels=_labels(50)[::-1],
                                  block_nnz=30)
    np.testing.assert_array_equal(got.to_numpy(), X[::-1][:, [3, 1]])


def test_executors_give_the_same_answer(h5ad_file):
    """Thread and process pools run the per-matrix task and give identical values"""
    from abc_helpers.expression import extract_task

    path, dense = h5ad_file
    genes = ["ENSMUSG00000000010", "ENSMUSG00000000001"]
    serial = extract_task(str(path), None, genes, 100)["values"]
    for pool in (ThreadPoolExecutor(2), ProcessPoolExecutor(1)):
        with pool:
            got = pool.submit(extract_task, str(path), None, genes, 100).result()["values"]
        np.testing.assert_array_equal(got, serial)
    np.testing.assert_array_equal(serial, dense[["Gene10", "Gene1"]].to_numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extract_genes_from_h5ad(path, ["Gene1"])


# -- through the cache, against the sample server -------------------------------------------------
FEATURED = ["Slc17a7", "Slc17a6", "Slc17a8", "Slc32a1", "Slc6a5", "Slc18a3", "Slc6a3", "Slc6a4",
            "Slc6a2", "Tac2"]


@pytest.fixture(scope="module")
def abc_cache(sample_source, tmp_path_factory):
    from abc_helpers.cache import AbcProjectCache

    return AbcProjectCache.from_s3_cache(tmp_path_factory.mktemp("abc_cache"), source=sample_source)


@pytest.fixture(scope="module")
def tables(abc_cache):
    cells = abc_cache.get_metadata_dataframe("WMB-10X", "cell_metadata", index_col="cell_label")
    genes = abc_cache.get_metadata_dataframe("WMB-10X", "gene", index_col="gene_identifier")
    return cells, genes


@pytest.fixture(scope="module")
def reference(abc_cache, tables):
    """The featured genes for every cell, from each whole log2 matrix read into memory by anndata"""
    cells, genes = tables
    frames = []
    for (directory, matrix), group in cells.groupby(["dataset_label", "feature_matrix_label"]):
        ad = anndata.read_h5ad(abc_cache.get_data_path(directory, f"{matrix}/log2"))
        ids = [genes.index[genes["gene_symbol"] == g][0] for g in FEATURED]
        dense = ad[group.index, ids].X
        dense = dense.toarray() if sp.issparse(dense) else np.asarray(dense)
        frames.append(pd.DataFrame(dense, index=group.index, columns=FEATURED))
    return pd.concat(frames).loc[cells.index].astype(np.float32)


def _assert_exact(got: pd.DataFrame, reference: pd.DataFrame) -> None:
    assert got.dtypes.eq(np.float32).all()
    assert list(got.columns) == list(reference.columns)
    assert got.index.equals(reference.index)
    np.testing.assert_array_equal(got.to_numpy(), reference.to_numpy())


def test_get_gene_data_streaming_is_exact(abc_cache, tables, reference):
    """All cells of the 24 sample matrices, streamed, equal anndata's in-memory values exactly"""
    from abc_helpers.expression import get_gene_data

    cells, genes = tables
    assert cells["feature_matrix_label"].nunique() == 24
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingCellsWarning)
        got = get_gene_data(abc_cache, cells, genes, FEATURED, progressbar=False,
                            use_gene_index=False)
    _assert_exact(got, reference)
    assert (got["Slc17a7"] > 0).mean() > 0.05  # not all zeros: the check can fail


@pytest.mark.parametrize("gene_index", ["off", "remote"])
def test_get_gene_data_matches_the_published_view(abc_cache, tables, gene_index):
    """Our result equals the sample's example_genes_all_cells_expression view (to CSV precision),
    streaming the downloaded matrices ("off") or reading the served gene indexes ("remote")"""
    from abc_helpers.expression import get_gene_data

    cells, genes = tables
    view = abc_cache.get_metadata_dataframe("WMB-10X", "example_genes_all_cells_expression",
                                            index_col="cell_label")
    got = get_gene_data(abc_cache, cells, genes, list(view.columns), progressbar=False,
                        gene_index=gene_index)
    np.testing.assert_allclose(got.loc[view.index].to_numpy(), view.to_numpy(), atol=1e-5)


@pytest.mark.parametrize("gene_index", ["off", "remote"])
@pytest.mark.parametrize("kind", ["threads", "processes", "dask"])
def test_get_gene_data_with_executors(abc_cache, tables, reference, kind, gene_index):
    """A thread pool, a process pool and a Dask LocalCluster executor give the exact values,
    streaming downloaded matrices or reading the indexes the sample server serves"""
    from abc_helpers.expression import get_gene_data

    cells, genes = tables
    subset = cells.sample(frac=0.5, random_state=3)  # a shuffled half of the cells
    if kind == "dask":
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            got = get_gene_data(abc_cache, subset, genes, FEATURED, progressbar=False,
                                executor=client.get_executor(), gene_index=gene_index)
    else:
        pool = ThreadPoolExecutor(2) if kind == "threads" else ProcessPoolExecutor(2)
        with pool:
            got = get_gene_data(abc_cache, subset, genes, FEATURED, progressbar=False,
                                executor=pool, gene_index=gene_index)
    _assert_exact(got, reference.loc[subset.index])


def test_gene_index_is_used_and_exact(abc_cache, tables, reference, caplog):
    """After build_gene_index, queries read the index (not the matrix) and stay exact"""
    import logging

    from abc_helpers.expression import build_gene_index, get_gene_data
    from abc_helpers.gene_index import find_gene_index

    cells, genes = tables
    built = build_gene_index(abc_cache, ["WMB-10Xv2-TH", "WMB-10Xv3"], progressbar=False)
    assert "WMB-10Xv2/WMB-10Xv2-TH/log2" in built and len(built) == 14
    for path in built.values():
        assert path.name.endswith("-log2.gene_index.h5ad") and path.is_file()
    assert find_gene_index(abc_cache, "WMB-10Xv2", "WMB-10Xv2-HPF/log2") is None
    again = build_gene_index(abc_cache, "WMB-10Xv2-TH", progressbar=False)
    assert again["WMB-10Xv2/WMB-10Xv2-TH/log2"].stat().st_mtime_ns == \
        built["WMB-10Xv2/WMB-10Xv2-TH/log2"].stat().st_mtime_ns  # kept, not rebuilt
    with caplog.at_level(logging.INFO, logger="abc_helpers"):
        got = get_gene_data(abc_cache, cells, genes, FEATURED, progressbar=False, gene_index="local")
    _assert_exact(got, reference)
    used = [r.getMessage() for r in caplog.records if "cells from the" in r.getMessage()]
    assert sum("gene index" in m for m in used) == 14
    assert sum("from the matrix" in m for m in used) == 10
    with ThreadPoolExecutor(2) as pool:
        _assert_exact(get_gene_data(abc_cache, cells, genes, FEATURED, progressbar=False,
                                    executor=pool, gene_index="local"), reference)


def test_stale_gene_index_is_ignored(abc_cache, tables, reference, tmp_path):
    """An index whose recorded md5 is not the release's is not used (falls back to streaming)"""
    from abc_helpers.expression import get_gene_data
    from abc_helpers.gene_index import find_gene_index, gene_index_path, write_gene_index

    cells, genes = tables
    source = abc_cache.get_data_path("WMB-10Xv2", "WMB-10Xv2-MB/log2")
    write_gene_index(source, source_md5="0" * 32, progressbar=False)
    assert gene_index_path(source).is_file()
    assert find_gene_index(abc_cache, "WMB-10Xv2", "WMB-10Xv2-MB/log2") is None
    mb = cells[cells["feature_matrix_label"] == "WMB-10Xv2-MB"]
    _assert_exact(get_gene_data(abc_cache, mb, genes, FEATURED, progressbar=False, gene_index="local"),
                  reference.loc[mb.index])
    gene_index_path(source).unlink()


def test_unknown_genes_are_named_with_suggestions(abc_cache, tables):
    """Unknown symbols raise KeyError naming each of them, with close symbols"""
    from abc_helpers.expression import get_gene_data

    cells, genes = tables
    with pytest.raises(KeyError, match=r"'slc17a7' \(did you mean 'Slc17a7'\?\).*'Tac22'"):
        get_gene_data(abc_cache, cells, genes, ["Slc17a6", "slc17a7", "Tac22"],
                      progressbar=False)
    with pytest.raises(ValueError, match="more than once"):
        get_gene_data(abc_cache, cells, genes, ["Tac2", "Tac2"], progressbar=False)
    with pytest.raises(ValueError, match="Unknown data_type 'log10'"):
        get_gene_data(abc_cache, cells, genes, ["Tac2"], data_type="log10", progressbar=False)
    with pytest.raises(ValueError, match="lacks the columns"):
        get_gene_data(abc_cache, cells.drop(columns="dataset_label"), genes, ["Tac2"],
                      progressbar=False)


@pytest.mark.parametrize("gene_index", ["off", "remote"])
def test_cells_outside_the_release_are_reported_not_dropped(abc_cache, tables, reference, gene_index):
    """Cells whose matrix is not in the loaded release, or not in their matrix, are NaN + warned,
    streaming or from the served gene indexes"""
    from abc_helpers.expression import get_gene_data

    cells, genes = tables
    cells = cells.copy()
    cells.loc[cells.index[:3], "feature_matrix_label"] = "WMB-10Xv9-XX"
    extra = pd.DataFrame({"dataset_label": ["WMB-10Xv2"], "feature_matrix_label": ["WMB-10Xv2-TH"]},
                         index=pd.Index(["NOT-A-CELL-1"], name="cell_label"))
    cells = pd.concat([cells, extra])
    with pytest.warns(MissingCellsWarning) as record:
        got = get_gene_data(abc_cache, cells, genes, ["Tac2", "Slc17a7"], progressbar=False,
                            gene_index=gene_index)
    messages = " ".join(str(w.message) for w in record)
    assert "'WMB-10Xv2/WMB-10Xv9-XX/log2' (3 cells)" in messages
    assert "'WMB-10Xv2/WMB-10Xv2-TH/log2' (1 cells)" in messages
    assert len(got) == len(cells)
    assert got.iloc[:3].isna().all().all() and got.loc["NOT-A-CELL-1"].isna().all()
    np.testing.assert_array_equal(got.iloc[3:-1].to_numpy(),
                                  reference.iloc[3:][["Tac2", "Slc17a7"]].to_numpy())


@pytest.mark.parametrize("gene_index", ["off", "auto"])
def test_older_release_without_a_matrix(sample_source, tmp_path, tables, gene_index):
    """Loading 20230630 (no WMB-10XMulti yet) reports the 10XMulti cells as not in the release,
    streaming or with the default (served gene indexes where the release has them)"""
    from abc_helpers.cache import AbcProjectCache
    from abc_helpers.expression import get_gene_data

    cells, genes = tables
    cache = AbcProjectCache.from_s3_cache(tmp_path, source=sample_source)
    with pytest.warns(UserWarning, match="not the most up to date"):
        cache.load_manifest("releases/20230630/manifest.json")
    multi = cells[cells["dataset_label"] == "WMB-10XMulti"]
    assert len(multi)
    with pytest.warns(MissingCellsWarning, match=r"WMB-10XMulti/WMB-10XMulti/log2' \(\d+ cells\)"):
        got = get_gene_data(cache, multi, genes, ["Tac2"], progressbar=False, gene_index=gene_index)
    assert got["Tac2"].isna().all()


def test_get_gene_data_progressbar_false_prints_no_bar(sample_source, tmp_path, tables, capfd):
    """get_gene_data(progressbar=False) downloads its matrices without one bar on stderr."""
    from abc_helpers.cache import AbcProjectCache
    from abc_helpers.expression import get_gene_data

    cells, genes = tables
    two = cells[cells["feature_matrix_label"].isin(sorted(cells["feature_matrix_label"].unique())[:2])]
    quiet = AbcProjectCache.from_s3_cache(tmp_path / "quiet", source=sample_source)
    capfd.readouterr()
    # gene_index="off": download and stream the matrices (the sample also serves gene indexes)
    got = get_gene_data(quiet, two, genes, ["Tac2"], progressbar=False, gene_index="off")
    assert got.shape == (len(two), 1) and len(list((tmp_path / "quiet").rglob("*.h5ad"))) == 2
    assert capfd.readouterr().err == ""
    # the default on the sample, its served gene indexes, is quiet too
    served = AbcProjectCache.from_s3_cache(tmp_path / "served", source=sample_source)
    assert get_gene_data(served, two, genes, ["Tac2"], progressbar=False).equals(got)
    assert capfd.readouterr().err == ""
    # the default shows the downloads: the check above can fail
    loud = AbcProjectCache.from_s3_cache(tmp_path / "loud", source=sample_source)
    get_gene_data(loud, two, genes, ["Tac2"], gene_index="off")
    err = capfd.readouterr().err
    assert "-log2.h5ad" in err and "B/s" in err, err
