"""Writing a gene index: an out-of-core CSR to CSC conversion of an h5ad matrix, with lookup tables.

Phase 1 sorts row blocks by gene into runs in a scratch file; phase 2 gathers bands of genes from
every run. Memory stays bounded (about 16 bytes per value of one run) whatever the size of the
matrix; free disk space of about twice the matrix's ``X`` is needed while it runs.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..cachefolder import atomic_path, file_lock, temporary_path
from ..h5ad_layout import MatrixLayout, block_bounds, matrix_layout, read_index
from ..progress import ProgressBar
from .reader import (
    FORMAT,
    INFO_GROUP,
    LABEL_HASHES,
    LABEL_KEYS,
    LABEL_ORDER,
    LABELS_BLOB,
    gene_index_path,
    label_hashes,
    label_keys,
    read_var_column,
    var_text_key,
)

LOGGER = logging.getLogger("abc_helpers")

__all__ = ["DEFAULT_RUN_NNZ", "write_gene_index"]

#: Stored values per sorted run (memory is about 16 bytes per value).
DEFAULT_RUN_NNZ = 1 << 23


def _write_string(group, name: str, value: str) -> None:
    import h5py

    ds = group.create_dataset(name, data=value, dtype=h5py.string_dtype())
    ds.attrs["encoding-type"] = "string"
    ds.attrs["encoding-version"] = "0.2.0"


def _empty_dict(group) -> None:
    group.attrs["encoding-type"] = "dict"
    group.attrs["encoding-version"] = "0.1.0"


def _mark_array(dataset) -> None:
    """Tag a dataset as an anndata array, so anndata reads the ``uns`` entry back."""
    dataset.attrs["encoding-type"] = "array"
    dataset.attrs["encoding-version"] = "0.2.0"


def _write_blob(h5file, key: str, values) -> None:
    """Store strings as one newline-separated UTF-8 array (skipped if a value has a newline)."""
    text = "\n".join(values)
    if text.count("\n") != max(len(values) - 1, 0):
        return
    _mark_array(h5file.create_dataset(key, data=np.frombuffer(text.encode("utf-8"), dtype=np.uint8)))


def _write_label_keys(h5file, labels: pd.Index) -> None:
    """Store the labels' fixed-width keys, sorted hashes and order (what ``match_label_keys`` reads).

    Skipped if a label is not ASCII or holds a NUL: queries then match the labels as strings.
    """
    values = labels.to_numpy(dtype=object)
    if any("\x00" in v for v in values):
        return
    keys = label_keys(values)
    if keys is None:
        return
    hashes = label_hashes(keys)
    order = np.argsort(hashes, kind="stable")
    order = order.astype(np.int32 if len(order) < 2**31 else np.int64)
    datasets = [h5file.create_dataset(key, data=data) for key, data in
                ((LABEL_KEYS, keys), (LABEL_HASHES, hashes[order]), (LABEL_ORDER, order))]
    for dataset in datasets:  # tagged once all three exist: the same bytes as earlier versions
        _mark_array(dataset)


def _sorted_runs(x, indptr: np.ndarray, layout: MatrixLayout, run_nnz: int, scratch,
                 bar: tqdm) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Phase 1: write each row block, sorted by gene, to *scratch*; return the runs' indptrs."""
    import scipy.sparse as sp

    n_obs, n_vars = layout.shape
    nnz = int(indptr[-1])
    bounds = block_bounds(indptr, run_nnz)
    run_indptr = np.zeros((len(bounds), n_vars + 1), dtype=np.int64)
    rows_dtype = np.int32 if n_obs < 2**31 else np.int64
    scratch.create_dataset("rows", shape=(nnz,), dtype=rows_dtype)
    scratch.create_dataset("data", shape=(nnz,), dtype=x["data"].dtype)
    for i, (r0, r1) in enumerate(bounds):
        a, b = int(indptr[r0]), int(indptr[r1])
        if b == a:
            continue
        indices = x["indices"][a:b]
        local_ptr = (indptr[r0:r1 + 1] - a).astype(indices.dtype)
        block = sp.csr_matrix((x["data"][a:b], indices, local_ptr),
                              shape=(r1 - r0, n_vars)).tocsc()
        run_indptr[i] = block.indptr
        scratch["rows"][a:b] = block.indices.astype(rows_dtype) + r0
        scratch["data"][a:b] = block.data
        del block
        bar.update(b - a)
    return run_indptr, bounds


def _merge_bands(scratch, run_indptr: np.ndarray, bounds: list[tuple[int, int]],
                 indptr: np.ndarray, out_x, run_nnz: int, bar: tqdm) -> np.ndarray:
    """Phase 2: for each band of genes, gather its slices from every run and write them."""
    counts = np.diff(run_indptr, axis=1).sum(axis=0)
    col_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    nnz = int(col_ptr[-1])
    n_vars = len(counts)
    starts = np.array([int(indptr[r0]) for r0, _ in bounds], dtype=np.int64)
    edges = np.unique(np.concatenate([
        np.searchsorted(col_ptr, np.arange(0, nnz, run_nnz), side="right") - 1, [n_vars]]))
    edges = edges[(edges >= 0) & (edges <= n_vars)]
    if edges[0] != 0:
        edges = np.concatenate([[0], edges])
    rows_ds, data_ds = scratch["rows"], scratch["data"]
    for c0, c1 in itertools.pairwise(edges):
        lo, hi = int(col_ptr[c0]), int(col_ptr[c1])
        if hi == lo:
            continue
        band_rows = np.empty(hi - lo, dtype=rows_ds.dtype)
        band_data = np.empty(hi - lo, dtype=data_ds.dtype)
        cursor = col_ptr[c0:c1] - lo
        for i in range(len(bounds)):
            seg = run_indptr[i, c0:c1 + 1]
            s, e = int(starts[i] + seg[0]), int(starts[i] + seg[-1])
            if e == s:
                continue
            cnt = np.diff(seg)
            dest = np.repeat(cursor - (seg[:-1] - seg[0]), cnt) + np.arange(e - s)
            band_rows[dest] = rows_ds[s:e]
            band_data[dest] = data_ds[s:e]
            cursor = cursor + cnt
        out_x["indices"][lo:hi] = band_rows
        out_x["data"][lo:hi] = band_data
        bar.update(hi - lo)
    return col_ptr


def _write_index(src, out, scratch, source: Path, source_file: str, md5: str, run_nnz: int,
                 progressbar: bool) -> None:
    """Write the whole gene index of the open CSR h5ad *src* into the empty file *out*."""
    import h5py

    layout = matrix_layout(src)
    if layout.encoding != "csr_matrix":
        msg = (f"'{source}' stores X as '{layout.encoding}', not csr_matrix: a gene index is made "
               "from the cell-major 10x matrices only.")
        raise ValueError(msg)
    x = src["X"]
    indptr = x["indptr"][()].astype(np.int64, copy=False)
    nnz = int(indptr[-1])
    with ProgressBar(total=2 * nnz, unit="value", unit_scale=True, disable=not progressbar,
                     desc=f"Indexing {source.name}") as bar:
        run_indptr, bounds = _sorted_runs(x, indptr, layout, run_nnz, scratch, bar)
        out.attrs["encoding-type"] = "anndata"
        out.attrs["encoding-version"] = "0.1.0"
        ox = out.create_group("X")
        ox.attrs["encoding-type"] = "csc_matrix"
        ox.attrs["encoding-version"] = "0.1.0"
        ox.attrs["shape"] = np.array(layout.shape, dtype=np.int64)
        ox.create_dataset("indices", shape=(nnz,), dtype=scratch["rows"].dtype)
        ox.create_dataset("data", shape=(nnz,), dtype=x["data"].dtype)
        col_ptr = _merge_bands(scratch, run_indptr, bounds, indptr, ox, run_nnz, bar)
    ox.create_dataset("indptr", data=col_ptr)
    src.copy(src["var"], out, "var")
    obs = out.create_group("obs")
    for key, value in src["obs"].attrs.items():
        if key != "column-order":
            obs.attrs[key] = value
    obs.attrs["column-order"] = np.array([], dtype=h5py.string_dtype())
    index_key = src["obs"].attrs.get("_index", "_index")
    src.copy(src["obs"][index_key], obs, index_key)
    labels = read_index(src["obs"]).astype(str)
    for name in ("layers", "obsm", "obsp", "varm", "varp"):
        _empty_dict(out.create_group(name))
    _empty_dict(out.create_group("uns"))
    info = out.create_group(INFO_GROUP)
    _empty_dict(info)
    _write_string(info, "format", FORMAT)
    _write_string(info, "source_file", source_file)
    _write_string(info, "source_md5", md5)
    _write_blob(out, LABELS_BLOB, labels)
    _write_label_keys(out, labels)
    _write_blob(out, var_text_key(None), read_var_column(src, None).astype(str))
    if "gene_symbol" in src["var"]:
        _write_blob(out, var_text_key("gene_symbol"),
                    read_var_column(src, "gene_symbol").astype(str))


def write_gene_index(
    source: str | Path,
    target: str | Path | None = None,
    source_md5: str | None = None,
    source_file: str | None = None,
    run_nnz: int = DEFAULT_RUN_NNZ,
    progressbar: bool = True,
) -> Path:
    """Convert a CSR h5ad matrix to a gene-major (CSC) h5ad file, out of core.

    Phase 1 reads row blocks of about *run_nnz* values, sorts each by gene (``scipy`` CSR to CSC)
    and writes it to a scratch file beside *target*; phase 2 takes bands of genes holding about
    *run_nnz* values, gathers each band's slices from every run and writes them in place. Every
    read and write is contiguous. The result has ``X`` (csc_matrix, same shape and values), the
    ``var`` of the source, the ``obs`` index (cell labels, no other obs columns) and the provenance
    in ``uns['abc_helpers_gene_index']``. It is written to a temporary name and renamed into place,
    under a lock, so a file at *target* is always complete.

    Parameters
    ----------
    source : str or Path
        A CSR h5ad file (e.g. ``WMB-10Xv2-TH-log2.h5ad``).
    target : str, Path or None
        Where to write; default :func:`~abc_helpers.gene_index.reader.gene_index_path` of *source*.
    source_md5 : str or None
        The md5 (hex) of *source*, if already verified (e.g. from the release manifest); computed
        when None (one extra read of the file).
    source_file : str or None
        A name to record for the source (e.g. its relative path in the bucket); default its name.
    run_nnz : int
        Values per run and per band: memory is about 16 bytes per value.
    progressbar : bool
        Show progress bars.

    Returns
    -------
    Path
        *target*.

    Raises
    ------
    ValueError
        If ``X`` of *source* is not a CSR matrix.
    """
    import h5py

    from ..transfer import file_hash

    source = Path(source)
    target = Path(target) if target is not None else gene_index_path(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with file_lock(target):
        md5 = source_md5 or file_hash(source, "md5").split(":", 1)[1]
        runs = temporary_path(target, ".runs")
        try:
            with atomic_path(target) as part, h5py.File(source, "r") as src, \
                    h5py.File(runs, "w") as scratch, h5py.File(part, "w") as out:
                _write_index(src, out, scratch, source, source_file or source.name, md5,
                             run_nnz, progressbar)
        finally:
            runs.unlink(missing_ok=True)
    LOGGER.info("Gene index of %s written to %s in %.1f s", source.name, target,
                time.perf_counter() - started)
    return target
