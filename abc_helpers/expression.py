"""Gene expression for many cells out of large 10x h5ad matrices, with bounded memory.

:func:`get_gene_data` takes the same arguments as the Allen ``abc_atlas_access`` helper of that
name. Instead of densifying chunks of 8,192 cells x 32,285 genes (about 1 GB each), it streams
contiguous row blocks of the CSR arrays (``X/indptr``, ``X/indices``, ``X/data``) with h5py and
keeps only the values of the selected genes, so memory is the output plus one block. When a gene
index (a gene-major copy made by :func:`~abc_helpers.gene_index.build_gene_index`) exists for a
matrix, the selected genes are read directly from it instead, which takes milliseconds; when the
data source serves gene indexes (a mirror filled with ``--gene-index``, the sample world), only
the byte ranges of the selected genes are read over the network and no matrix is downloaded
(:mod:`abc_helpers.gene_index.remote`).
"""

from __future__ import annotations

import difflib
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd

from .gene_index import (
    IndexTables,
    NoFastPath,
    ServedIndex,
    build_gene_index,
    column_slices,
    data_files,
    find_gene_index,
    identifiers_sha256,
    index_tables,
    read_obs_labels,
    remote_extract_task,
    served_indexes,
    var_positions,
)
from .h5ad_layout import (
    DEFAULT_BLOCK_NNZ,
    BlockReader,
    RawReader,
    block_bounds,
    matrix_layout,
)
from .progress import ProgressBar
from .sources import Source

LOGGER = logging.getLogger("abc_helpers")

__all__ = ["MissingCellsWarning", "build_gene_index", "extract_genes_from_h5ad", "extract_task",
           "get_gene_data"]

#: The data types of the WMB/WHB 10x matrices.
DATA_TYPES = ("log2", "raw")
#: Where :func:`get_gene_data` may read a matrix's genes from (see its *gene_index*).
GENE_INDEX_MODES = ("auto", "remote", "local", "off")
#: Matrices read at once from served gene indexes when no executor is given (network-bound).
REMOTE_MATRICES_AT_ONCE = 4


#: Binary-search the rows of a block when rows x genes x SEARCH_COST < values in the block,
#: else scan the block with a boolean table (about 2 ns per value).
SEARCH_COST = 16


class MissingCellsWarning(UserWarning):
    """Some requested cells have no expression data (their matrix or their row is not there)."""


# -- one matrix --------------------------------------------------------------------------------
def _row_map(obs: pd.Index, labels: pd.Index, path: str) -> np.ndarray | None:
    """Positions of *labels* in *obs* (-1 if absent), or None if they are *obs* in order."""
    if len(labels) == len(obs) and labels.equals(obs):
        return None
    if not obs.is_unique:
        dup = obs[obs.duplicated()][:3].tolist()
        msg = (f"The cell labels of '{path}' are not unique (e.g. {dup}): cannot match cells to "
               "rows. Re-download the file with force_download=True.")
        raise ValueError(msg)
    return obs.get_indexer(labels)


def _gene_columns(h5file, genes: Sequence[str], tables: IndexTables | None) -> np.ndarray:
    """Column of each gene (a var index value or a ``gene_symbol``) in ``X``; -1 if absent.

    *tables*: :func:`~abc_helpers.gene_index.index_tables` of *h5file* (None if not an index).
    """
    cols = var_positions(h5file, None, genes, tables)
    if (cols < 0).any() and "gene_symbol" in h5file["var"]:
        cols = np.where(cols >= 0, cols, var_positions(h5file, "gene_symbol", genes, tables))
    return cols


def _stream_csr(x, layout, cols, rows_out, out, block_nnz, progress) -> None:
    """Fill *out* from a CSR ``X`` group by streaming row blocks; only *cols* are kept.

    *rows_out* gives the output row of each file row (-1: not wanted); blocks with no wanted row
    are not read.
    """
    indptr = x["indptr"][()].astype(np.int64, copy=False)
    needed = np.flatnonzero(rows_out >= 0)
    if needed.size == 0:
        return
    first, last = int(needed[0]), int(needed[-1]) + 1
    wanted = np.concatenate([[0], np.cumsum(rows_out >= 0)])
    bounds = block_bounds(indptr, block_nnz, first, last)
    skipped = [(a, b) for a, b in bounds if wanted[b] == wanted[a]]
    bounds = [(a, b) for a, b in bounds if wanted[b] > wanted[a]]
    if progress:
        progress(sum(b - a for a, b in skipped))
    with BlockReader(x, indptr, bounds) as reader:
        _process_blocks(reader, indptr, layout.shape[1], cols, rows_out, out, progress)


def _stream_whole(h5file, layout, genes, tables, block_nnz, progress):
    """Stream every row of a CSR ``X`` in file order, then read the cell labels.

    The reader thread starts on block 0 before the gene names are looked up. (Decoding the labels
    a slice per block, between blocks, was measured slower: h5py holds the GIL while it decodes,
    and slices cost more than one read.)

    Returns
    -------
    tuple
        ``(labels of the file, column of each gene, values)``: *values* holds one column per
        gene (a repeated gene is filled from its first column), rows in file order.
    """
    x = h5file["X"]
    n_obs, n_vars = layout.shape
    indptr = x["indptr"][()].astype(np.int64, copy=False)
    bounds = block_bounds(indptr, block_nnz)
    with BlockReader(x, indptr, bounds) as reader:
        cols = _gene_columns(h5file, genes, tables)
        out = np.zeros((n_obs, len(cols)), dtype=np.float32)
        _process_blocks(reader, indptr, n_vars, _first_columns(cols), None, out, progress)
    return read_obs_labels(h5file), cols, out


def _first_columns(cols: np.ndarray) -> np.ndarray:
    """*cols* with every repeat of a column set to -1 (read each column once)."""
    _, first = np.unique(cols, return_index=True)
    read = np.full_like(cols, -1)
    read[first] = cols[first]
    return read


def _process_blocks(blocks, indptr, n_vars, cols, rows_out, out, progress) -> None:
    """Keep the values of *cols* from each ``(r0, r1, indices, data, _)`` block of a :class:`BlockReader`.

    Whether the rows of a block are sorted (needed by the binary search) is checked here, while
    the reader thread fetches the next block: reading is the bottleneck, so the reader does nothing
    else (checking in the reader thread, as before, added about 20% to the stream, measured).
    """
    present = np.flatnonzero(cols >= 0)
    selected = np.zeros(n_vars, dtype=bool)  # a bool table indexed by int64 is numpy's fastest
    selected[cols[present]] = True
    column_of = np.full(n_vars, -1, dtype=np.int64)
    column_of[cols[present]] = present
    targets = cols[present]
    order = np.argsort(targets)
    targets, target_column = targets[order], present[order]
    scratch = np.empty(0, dtype=bool)
    for r0, r1, ix, d, _ in blocks:
        starts = indptr[r0:r1 + 1] - indptr[r0]
        found = None
        if len(targets) and (r1 - r0) * len(targets) * SEARCH_COST < len(ix):
            if scratch.size < len(ix):
                scratch = np.empty(len(ix), dtype=bool)
            found = _search_sorted_rows(ix, starts, targets, scratch)
        if found is not None:
            pos, local_rows, t = found
            rows, j = local_rows + r0, target_column[t]
        else:  # one pass over the block with a boolean table
            pos = np.flatnonzero(selected[ix.astype(np.int64)])
            rows = np.searchsorted(starts, pos, side="right") - 1 + r0
            j = column_of[ix[pos]]
        if pos.size:
            vals = d[pos]
            if rows_out is None:
                out[rows, j] = vals
            else:
                orow = rows_out[rows]
                keep = orow >= 0
                out[orow[keep], j[keep]] = vals[keep]
        if progress:
            progress(r1 - r0)


def _rows_sorted(ix: np.ndarray, starts: np.ndarray, scratch: np.ndarray | None = None) -> bool:
    """True if the indices of every row of a CSR block are strictly increasing.

    One comparison per value; *scratch* (bool, at least ``len(ix)``) avoids an allocation.
    """
    n = len(ix)
    if n < 2:
        return True
    bad = np.less_equal(ix[1:], ix[:-1], out=None if scratch is None else scratch[:n - 1])
    edges = starts[1:-1]
    bad[edges[(edges > 0) & (edges < n)] - 1] = False  # a row's first value follows another row
    return not bad.any()


def _search_sorted_rows(ix: np.ndarray, starts: np.ndarray, targets: np.ndarray,
                        scratch: np.ndarray | None = None, rows_sorted: bool | None = None):
    """Find sorted *targets* in each row of a CSR block whose rows have sorted indices.

    A vectorized binary search over every (row, target) pair: it touches about
    ``rows x targets x log2(row length)`` values instead of the whole block. *rows_sorted* is
    :func:`_rows_sorted` of the block if already known (it is computed otherwise). Returns
    ``(positions, local rows, target numbers)`` of the hits, or None if some row of the block is
    not sorted (the caller then scans the block).
    """
    n = len(ix)
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    if rows_sorted is None:
        rows_sorted = _rows_sorted(ix, starts, scratch)
    if not rows_sorted:
        return None
    k = len(targets)
    bounds = starts.astype(np.int64, copy=False)
    base = np.repeat(bounds[:-1], k)  # one (row, target) pair per element
    length = np.repeat(np.diff(bounds), k)
    t = np.tile(targets.astype(ix.dtype, copy=False), len(bounds) - 1)
    end = base + length
    half, probe = np.empty_like(length), np.empty_like(base)
    less, vals = np.empty(len(base), dtype=bool), np.empty(len(base), dtype=ix.dtype)
    # branchless lower bound, the same number of steps for every pair (few numpy calls)
    for _ in range(int(length.max(initial=0)).bit_length()):
        np.right_shift(length, 1, out=half)
        np.add(base, half, out=probe)
        np.take(ix, probe, out=vals, mode="clip")
        np.less(vals, t, out=less)
        base += half * less
        length -= half
    inside = base < end
    np.take(ix, base, out=vals, mode="clip")
    base += (vals < t) & inside
    np.take(ix, base, out=vals, mode="clip")
    q = np.flatnonzero((base < end) & (vals == t))
    return base[q], q // k, q % k


def _read_csc(x, cols, rows_out, out, tables=None) -> None:
    """Fill *out* from a CSC ``X`` group (a gene index): one contiguous read per gene.

    The slices are read with plain ``readinto`` calls when the datasets are stored raw (see
    :class:`~abc_helpers.h5ad_layout.RawReader`; h5py otherwise). *out* should be column-major
    (``out[:, j]`` contiguous): each gene is then one 1-D scatter. *tables* (the file's
    :class:`~abc_helpers.gene_index.IndexTables`, if any) keeps ``indptr`` and the datasets'
    layout between queries.
    """
    if tables is not None:
        indptr, specs = tables.csc(x.file)
        raw = [None if spec is None else RawReader(*spec) for spec in specs]
    else:
        indptr = x["indptr"][()]
        raw = [RawReader.open(x["indices"]), RawReader.open(x["data"])]
    slices = column_slices(indptr, cols)  # [0, 0] for an absent gene
    try:
        for j in np.argsort(cols, kind="stable"):
            a, b = (int(v) for v in slices[j])
            if b == a:
                continue
            raw_indices, raw_data = raw
            if raw_indices is None or raw_data is None:  # compressed or chunked: through h5py
                rows, vals = x["indices"][a:b], x["data"][a:b]
            else:
                rows = np.empty(b - a, dtype=raw_indices.dtype)
                vals = np.empty(b - a, dtype=raw_data.dtype)
                raw_indices.read(a, b, rows)
                raw_data.read(a, b, vals)
            column = out[:, j]
            if rows_out is None:
                column[rows] = vals
            else:
                orow = rows_out[rows]
                keep = orow >= 0
                column[orow[keep]] = vals[keep]
    finally:
        for reader in raw:
            if reader is not None:
                reader.close()


def _read_dense(x, layout, cols, rows_out, out, block_nnz, progress) -> None:
    """Fill *out* from a dense ``X`` dataset, reading row blocks."""
    n_obs, n_vars = layout.shape
    step = max(1, block_nnz // max(n_vars, 1))
    present = np.flatnonzero(cols >= 0)
    order = np.argsort(cols[present])
    sorted_cols = cols[present][order]
    for r0 in range(0, n_obs, step):
        r1 = min(r0 + step, n_obs)
        block = x[r0:r1][:, sorted_cols]
        if rows_out is None:
            out[r0:r1, present[order]] = block
        else:
            orow = rows_out[r0:r1]
            keep = orow >= 0
            out[np.ix_(orow[keep], present[order])] = block[keep]
        if progress:
            progress(r1 - r0)


def _file_rows(h5file, labels: pd.Index | None, path: str, tables: IndexTables | None):
    """Match *labels* to the rows of an open h5ad file.

    Returns ``(rows_in, obs)``: the file row of each label (-1 if absent; None if *labels* are the
    file's cells in order, or None) and the file's labels as an Index if they had to be decoded.
    A gene index (*tables* not None) is matched through its fixed-width keys and sorted hashes
    (no decoding).
    """
    if tables is not None:
        if labels is None:
            return None, tables.index(h5file)
        try:
            return tables.rows_of(h5file, labels), None
        except NoFastPath as reason:
            LOGGER.debug("%s: matching the cell labels as strings (%s)", path, reason)
            obs = tables.index(h5file)
    else:
        obs = read_obs_labels(h5file)
    if labels is None:
        return None, obs
    return _row_map(obs, labels, path), obs


def extract_task(path: str, labels: Sequence[str] | pd.Index | None, genes: Sequence[str],
                 block_nnz: int = DEFAULT_BLOCK_NNZ,
                 progress: Callable[[int], None] | None = None) -> dict:
    """Read *genes* for the cells *labels* from one h5ad file: the unit of work of an executor.

    :func:`get_gene_data` submits one per matrix to its *executor* (it is a module-level function
    of plain arguments, so process pools and Dask can pickle it); :func:`extract_genes_from_h5ad`
    runs it in this process. When all the rows of a CSR file are wanted (*labels* None or as many
    as the file's rows), the file is streamed in file order and the labels are matched at the end
    (their decoding hides behind the I/O); otherwise the labels are matched first, so blocks with
    no wanted cell are skipped. A gene index is read one slice per gene.

    Parameters
    ----------
    path : str
        An h5ad file (a matrix or its gene index).
    labels : sequence of str, pandas.Index or None
        The cells, in the order wanted; None: every cell, in file order.
    genes : sequence of str
        ``var`` index values or ``gene_symbol`` values.
    block_nnz : int
        Stored values per streamed block.
    progress : callable or None
        Called with a number of file rows as they are done.

    Returns
    -------
    dict
        ``values`` (float32, cells x genes; NaN rows for cells not in the file, NaN columns for
        genes not in it), ``missing_cells`` (count), ``missing_genes`` (names), ``layout`` (the
        encoding of ``X``), ``seconds`` and ``obs`` (the file's labels when *labels* is None, else
        None). Missing cells and genes are reported, not raised.
    """
    import h5py

    started = time.perf_counter()
    genes = list(genes)
    labels = None if labels is None else pd.Index(labels)
    want_all = labels is None
    with h5py.File(path, "r") as f:
        tables = index_tables(f)  # None unless a gene index
        layout = matrix_layout(f) if tables is None else tables.layout(f)
        if layout.encoding == "csr_matrix" and (labels is None or len(labels) == layout.shape[0]):
            obs, cols, out = _stream_whole(f, layout, genes, tables, block_nnz, progress)
            rows_in = None if want_all else _row_map(obs, labels, path)
            if rows_in is not None:
                found = rows_in >= 0
                out = out[np.where(found, rows_in, 0)]
                out[~found] = np.nan
            missing_cells = 0 if rows_in is None else int((rows_in < 0).sum())
        else:
            rows_in, obs = _file_rows(f, labels, path, tables)
            n_out = layout.shape[0] if labels is None else len(labels)
            rows_out = None
            if rows_in is not None:
                rows_out = np.full(layout.shape[0], -1, dtype=np.int64)
                found_in = rows_in >= 0
                rows_out[rows_in[found_in]] = np.flatnonzero(found_in)
            cols = _gene_columns(f, genes, tables)
            read = _first_columns(cols)
            if layout.encoding == "csc_matrix":  # column-major: one gene is contiguous
                out = np.zeros((len(cols), n_out), dtype=np.float32).T
            else:
                out = np.zeros((n_out, len(cols)), dtype=np.float32)
            x = f["X"]
            if layout.encoding == "csr_matrix":
                _stream_csr(x, layout, read, rows_out, out, block_nnz, progress)
            elif layout.encoding == "csc_matrix":
                _read_csc(x, read, rows_out, out, tables)
            else:
                _read_dense(x, layout, read, rows_out, out, block_nnz, progress)
            missing_cells = 0
            if rows_out is not None:
                found = np.zeros(n_out, dtype=bool)
                found[rows_out[rows_out >= 0]] = True
                missing_cells = int((~found).sum())
                out[~found] = np.nan
    repeats = np.flatnonzero((_first_columns(cols) < 0) & (cols >= 0))
    if repeats.size:
        first = {int(c): j for j, c in reversed(list(enumerate(cols)))}
        out[:, repeats] = out[:, [first[int(cols[j])] for j in repeats]]
    out[:, cols < 0] = np.nan
    return {
        "values": out,
        "missing_cells": missing_cells,
        "missing_genes": [g for g, c in zip(genes, cols, strict=True) if c < 0],
        "layout": layout.encoding,
        "seconds": time.perf_counter() - started,
        "obs": obs if want_all else None,
    }


def extract_genes_from_h5ad(
    path: str | Path,
    genes: Sequence[str],
    cell_labels: Sequence[str] | pd.Index | None = None,
    block_nnz: int = DEFAULT_BLOCK_NNZ,
    progressbar: bool = False,
) -> pd.DataFrame:
    """Read a few genes for many cells from one h5ad file, streaming it with bounded memory.

    A CSR matrix (as the 10x matrices of the ABC Atlas are stored) is read in contiguous blocks of
    about *block_nnz* stored values; only the values of the selected genes are kept. A CSC matrix
    (a gene index) is read one contiguous slice per gene. A dense ``X`` is read in row blocks.

    Parameters
    ----------
    path : str or Path
        An h5ad file written by anndata (>= 0.7).
    genes : sequence of str
        Gene identifiers (the ``var`` index) or gene symbols (the ``gene_symbol`` column of ``var``).
    cell_labels : sequence of str, pandas.Index or None
        The cells (``obs`` index values) to return, in this order; None: every cell, in file order.
    block_nnz : int
        Stored values per block (memory is about 8 bytes per value for one block).
    progressbar : bool
        Show a tqdm progress bar over the rows.

    Returns
    -------
    pandas.DataFrame
        Indexed by cell label, one float32 column per gene in the order given. Cells that are not
        in the file are kept as rows of NaN (and reported with a :class:`MissingCellsWarning`).

    Raises
    ------
    KeyError
        If a gene is neither a ``var`` index value nor a ``gene_symbol`` of the file.
    ValueError
        If the file's cell labels are not unique or ``X`` is not a matrix anndata writes.
    """
    genes = [genes] if isinstance(genes, str) else list(genes)
    if progressbar:
        import h5py

        with h5py.File(path, "r") as f:
            total = matrix_layout(f).shape[0]
        with ProgressBar(total=total, unit="row", unit_scale=True, desc=Path(path).name) as bar:
            result = extract_task(str(path), cell_labels, genes, block_nnz, bar.update)
    else:  # no bar at all: even disabled, tqdm costs a lock and a monitor thread (~3 ms, measured)
        result = extract_task(str(path), cell_labels, genes, block_nnz, None)
    if result["missing_genes"]:
        msg = (f"Genes {result['missing_genes']} are not in '{path}': give var index values "
               "(e.g. Ensembl ids) or values of its var 'gene_symbol' column.")
        raise KeyError(msg)
    if result["missing_cells"]:
        warnings.warn(f"{result['missing_cells']} of {len(result['values'])} cells are not in "
                      f"'{path}'; their rows are NaN.", MissingCellsWarning, stacklevel=2)
    index = pd.Index(cell_labels) if cell_labels is not None else result["obs"].copy()
    index.name = "cell_label"
    return pd.DataFrame(result["values"], index=index, columns=pd.Index(genes, name="gene"))


# -- many matrices through the cache --------------------------------------------------------------
def _resolve_genes(all_genes: pd.DataFrame, selected: list[str]) -> list[str]:
    """Map gene symbols (or identifiers) to the gene identifiers of *all_genes*."""
    genes = all_genes
    if "gene_identifier" in genes.columns:
        genes = genes.set_index("gene_identifier")
    if "gene_symbol" not in genes.columns:
        msg = (f"all_genes has no 'gene_symbol' column (columns: {list(genes.columns)}): pass the "
               "'gene' table of the release, e.g. abc_cache.get_metadata_dataframe('WMB-10X', "
               "'gene', index_col='gene_identifier').")
        raise ValueError(msg)
    dup = sorted({g for g in selected if selected.count(g) > 1})
    if dup:
        raise ValueError(f"selected_genes lists {dup} more than once: give each gene once.")
    symbols = genes["gene_symbol"].astype(str)
    first = pd.Series(genes.index, index=symbols.values)
    first = first[~first.index.duplicated()]
    ids, unknown = [], []
    for name in selected:
        if name in first.index:
            ids.append(str(first[name]))
        elif name in genes.index:
            ids.append(str(name))
        else:
            unknown.append(name)
    if unknown:
        lower = {s.lower(): s for s in first.index}
        hints = []
        for name in unknown:
            close = [lower[name.lower()]] if name.lower() in lower else \
                difflib.get_close_matches(name, first.index.tolist(), n=3, cutoff=0.75)
            hints.append(f"'{name}' (did you mean {', '.join(repr(c) for c in close)}?)" if close
                         else f"'{name}'")
        msg = (f"Unknown gene symbols: {', '.join(hints)}. They are not in all_genes "
               f"({len(genes)} genes); symbols are case-sensitive (mouse 'Slc17a7', human "
               "'SLC17A7').")
        raise KeyError(msg)
    return ids


def _cell_table(all_cells: pd.DataFrame) -> pd.DataFrame:
    cells = all_cells
    if "cell_label" in cells.columns:
        cells = cells.set_index("cell_label")
    missing = [c for c in ("dataset_label", "feature_matrix_label") if c not in cells.columns]
    if missing:
        msg = (f"all_cells lacks the columns {missing}: pass the 'cell_metadata' table of the "
               "release (indexed by cell_label), e.g. abc_cache.get_metadata_dataframe('WMB-10X', "
               "'cell_metadata', index_col='cell_label').")
        raise ValueError(msg)
    if not cells.index.is_unique:
        dup = cells.index[cells.index.duplicated()][:3].tolist()
        raise ValueError(f"all_cells has duplicated cell labels (e.g. {dup}): drop them first.")
    return cells


def _matrix_available(abc_cache, directory: str, file_name: str, listing: dict) -> bool:
    if directory not in listing:
        listing[directory] = data_files(abc_cache, directory)
    return file_name in listing[directory]


_ORDERS: list[tuple[pd.Index, str]] = []


def _order_sha256(index: pd.Index) -> str:
    """:func:`identifiers_sha256` of a gene order, kept for the last few (immutable) Index objects."""
    for seen, digest in _ORDERS:
        if seen is index:
            return digest
    digest = identifiers_sha256(index.astype(str).to_numpy())
    _ORDERS[:] = [(index, digest), *_ORDERS[:3]]
    return digest


def _gene_index_mode(gene_index: str, use_gene_index: bool | None) -> str:
    if use_gene_index is not None:  # the earlier switch: True is the default, False reads matrices
        return gene_index if use_gene_index else "off"
    if gene_index not in GENE_INDEX_MODES:
        msg = f"Unknown gene_index '{gene_index}': use one of {list(GENE_INDEX_MODES)}."
        raise ValueError(msg)
    return gene_index


def get_gene_data(
    abc_cache,
    all_cells: pd.DataFrame,
    all_genes: pd.DataFrame,
    selected_genes: Sequence[str],
    data_type: str = "log2",
    executor: Executor | None = None,
    progressbar: bool = True,
    use_gene_index: bool | None = None,
    block_nnz: int = DEFAULT_BLOCK_NNZ,
    gene_index: str = "auto",
    gene_index_source: str | Source | None = None,
) -> pd.DataFrame:
    """Expression of a few genes in many cells, read from the 10x matrices of a release.

    Same call as ``abc_atlas_access``'s ``get_gene_data``. For each matrix the cells come from, the
    genes are read from the fastest place that has them (see *gene_index*):

    * a valid **local gene index** (see :func:`build_gene_index`): milliseconds, no matrix needed;
    * a gene index **served** by the data source (a workshop mirror filled with ``--gene-index``,
      the sample world, or any server named by *gene_index_source*): only the byte ranges of the
      selected genes are fetched (a few MB), plus the matrix's cell labels once; no matrix is
      downloaded;
    * else the **matrix**, downloaded through *abc_cache* if it is not there yet and read by
      streaming contiguous row blocks, keeping only the selected genes: memory is the output plus
      one block (about 32 MB), whatever the size of the matrix.

    The values are the same, float32 for float32, whichever way they are read.

    Parameters
    ----------
    abc_cache : AbcProjectCache
        The cache of the release.
    all_cells : pandas.DataFrame
        The cells, indexed by ``cell_label``, with ``dataset_label`` and ``feature_matrix_label``
        columns (the release's ``cell_metadata`` or a subset of it).
    all_genes : pandas.DataFrame
        The release's ``gene`` table: indexed by ``gene_identifier``, with ``gene_symbol``.
    selected_genes : sequence of str
        Gene symbols (or gene identifiers), one column each in this order.
    data_type : {"log2", "raw"}
        Which matrix of each pair to read.
    executor : concurrent.futures.Executor or None
        Reads the matrices in parallel on this executor (a ``ProcessPoolExecutor``, a
        ``ThreadPoolExecutor`` or a Dask ``Client.get_executor()``); the workers must see the cache
        folder. None reads them one after the other in this process.
    progressbar : bool
        Show a progress bar over the cells, and one per matrix download.
    use_gene_index : bool or None
        The earlier switch, kept for existing code: False is ``gene_index="off"``.
    block_nnz : int
        Stored values per streamed block.
    gene_index : {"auto", "remote", "local", "off"}
        ``"auto"`` (default): a local index, else a served one, else the matrix; the function says
        once (a ``UserWarning``) which matrices had to be downloaded. ``"remote"``: served indexes
        only (an error names the matrices that have none, before anything is read). ``"local"``: a
        local index, else the matrix. ``"off"``: always the matrices.
    gene_index_source : str, Source or None
        Where gene indexes are served, if not from the cache's own data source (e.g. a lab's
        static server holding only the indexes, ``"http://host:8000"``).

    Returns
    -------
    pandas.DataFrame
        Indexed like *all_cells* (``cell_label``), one float32 column per selected gene. Cells
        whose matrix is not in the loaded release, or that are missing from their matrix, are
        **kept as rows of NaN** and reported with a :class:`MissingCellsWarning` naming the
        matrices and the counts; ``result.dropna()`` removes them.

    Raises
    ------
    KeyError
        If a selected gene is not in *all_genes* (the message suggests close symbols).
    ValueError
        If *data_type* or *gene_index* is unknown, the tables lack the columns named above, or
        ``gene_index="remote"`` and a matrix has no usable served index.
    DownloadError
        If a matrix or a served range cannot be fetched (after retries).

    Examples
    --------
    >>> cells = abc_cache.get_metadata_dataframe("WMB-10X", "cell_metadata",
    ...                                          index_col="cell_label")  # doctest: +SKIP
    >>> genes = abc_cache.get_metadata_dataframe("WMB-10X", "gene",
    ...                                          index_col="gene_identifier")  # doctest: +SKIP
    >>> get_gene_data(abc_cache, cells, genes, ["Slc17a7", "Tac2"])  # doctest: +SKIP
    """
    if data_type not in DATA_TYPES:
        raise ValueError(f"Unknown data_type '{data_type}': use one of {list(DATA_TYPES)}.")
    mode = _gene_index_mode(gene_index, use_gene_index)
    if selected_genes is None:
        raise ValueError("selected_genes is None: give gene symbols, e.g. ['Slc17a7', 'Tac2'].")
    selected = [selected_genes] if isinstance(selected_genes, str) else list(selected_genes)
    if not selected:
        raise ValueError("selected_genes is empty: give at least one gene symbol.")
    gene_ids = _resolve_genes(all_genes, selected)
    cells = _cell_table(all_cells)
    result = np.full((len(cells), len(selected)), np.nan, dtype=np.float32)

    groups = cells.groupby(["dataset_label", "feature_matrix_label"], sort=True,
                           dropna=False).indices
    listing: dict[str, list[str]] = {}
    jobs: list[tuple[str, str, np.ndarray]] = []
    not_in_release: dict[str, int] = {}
    for key, positions in groups.items():
        directory, matrix = key
        if pd.isna(directory) or pd.isna(matrix):
            not_in_release["(no feature_matrix_label)"] = len(positions)
            continue
        file_name = f"{matrix}/{data_type}"
        if _matrix_available(abc_cache, str(directory), file_name, listing):
            jobs.append((str(directory), file_name, positions))
        else:
            not_in_release[f"{directory}/{file_name}"] = len(positions)
    if not_in_release:
        detail = ", ".join(f"'{k}' ({v} cells)" for k, v in not_in_release.items())
        warnings.warn(
            f"{sum(not_in_release.values())} cells come from matrices that are not in the loaded "
            f"release ({getattr(abc_cache, 'current_manifest', None)}): {detail}. Their rows are "
            "NaN; load the release they come from (abc_cache.load_manifest) or drop them.",
            MissingCellsWarning, stacklevel=2)

    # where each matrix is read from: a local index, a served index, or the matrix itself
    local = {}
    if mode in ("auto", "local"):
        for directory, file_name, _ in jobs:
            path = find_gene_index(abc_cache, directory, file_name)
            if path is not None:
                local[f"{directory}/{file_name}"] = path
    served: dict[str, ServedIndex | str] = {}
    if mode in ("auto", "remote") and len(local) < len(jobs):
        served = served_indexes(abc_cache, gene_index_source)
    unserved = {f"{d}/{f}": served.get(f"{d}/{f}", "not in the catalog") for d, f, _ in jobs
                if f"{d}/{f}" not in local and not isinstance(served.get(f"{d}/{f}"), ServedIndex)}
    if unserved and mode in ("auto", "remote"):
        where = gene_index_source if gene_index_source is not None else abc_cache.source
        reasons = ("no gene index is served there" if not served else
                   "; ".join(f"{name}: {why}" for name, why in sorted(unserved.items())[:5]))
        if mode == "remote":
            msg = (f"gene_index='remote', but {len(unserved)} matrices have no usable gene index at "
                   f"{where} ({reasons}): {sorted(unserved)}. Serve them (fill-mirror --gene-index), "
                   "or use gene_index='auto' to download and stream those matrices.")
            raise ValueError(msg)
        warnings.warn(f"{len(unserved)} of {len(jobs)} matrices are downloaded and streamed, for "
                      f"want of a gene index at {where} ({reasons}): {sorted(unserved)}.",
                      UserWarning, stacklevel=2)
    order_sha256, gene_positions = None, None  # the caller's gene order, to skip the served var
    if any(isinstance(v, ServedIndex) for v in served.values()):
        ordered = all_genes.index if "gene_identifier" not in all_genes.columns \
            else pd.Index(all_genes["gene_identifier"])
        if ordered.is_unique:
            order_sha256 = _order_sha256(ordered)
            gene_positions = ordered.get_indexer(gene_ids)

    started = time.perf_counter()
    bar = ProgressBar(total=sum(len(p) for *_, p in jobs), unit="cell", unit_scale=True,
                      desc=f"Extracting {len(selected)} genes", disable=not progressbar)
    missing_in_matrix: dict[str, int] = {}
    missing_genes: dict[str, list[str]] = {}
    futures: dict[Future, tuple] = {}
    remote_pool: ThreadPoolExecutor | None = None

    def collect(job: tuple, out: dict) -> None:
        directory, file_name, positions = job
        result[positions] = out["values"]
        if out["missing_cells"]:
            missing_in_matrix[f"{directory}/{file_name}"] = out["missing_cells"]
        if out["missing_genes"]:
            missing_genes[f"{directory}/{file_name}"] = out["missing_genes"]
        where = {"csc_matrix": "gene index", "served gene index": "served gene index"}.get(
            out["layout"], "matrix")
        LOGGER.info("%s/%s: %d cells from the %s in %.2f s", directory, file_name, len(positions),
                    where, out["seconds"])

    try:
        for job in jobs:
            directory, file_name, positions = job
            name = f"{directory}/{file_name}"
            labels = cells.index.values[positions]
            remote = served.get(name) if name not in local else None
            if isinstance(remote, ServedIndex):
                args: tuple = (remote, labels, gene_ids, order_sha256, gene_positions)
                if executor is not None:
                    runner: Executor = executor
                else:  # network-bound: a few matrices at once
                    remote_pool = remote_pool or ThreadPoolExecutor(REMOTE_MATRICES_AT_ONCE)
                    runner = remote_pool
                futures[runner.submit(remote_extract_task, *args)] = job
                continue
            path = local.get(name) or abc_cache.get_data_path(directory, file_name,
                                                              progressbar=progressbar)
            if executor is None:
                n_rows = _n_rows(path)
                share = len(positions) / max(n_rows, 1)
                done = [0.0]

                def tick(rows: int, share=share, done=done) -> None:
                    done[0] += rows * share
                    step = int(done[0])
                    if step:
                        bar.update(step)
                        done[0] -= step

                before = bar.n
                collect(job, extract_task(str(path), labels, gene_ids, block_nnz, tick))
                bar.update(len(positions) - (bar.n - before))
            else:
                futures[executor.submit(extract_task, str(path), labels, gene_ids,
                                        block_nnz)] = job
        for future in as_completed(futures):
            job = futures[future]
            collect(job, future.result())
            bar.update(len(job[2]))
    finally:
        for future in futures:
            future.cancel()
        if remote_pool is not None:
            remote_pool.shutdown()
        bar.close()

    if missing_in_matrix:
        detail = ", ".join(f"'{k}' ({v} cells)" for k, v in missing_in_matrix.items())
        warnings.warn(f"{sum(missing_in_matrix.values())} cells are not in the matrix their "
                      f"metadata names: {detail}. Their rows are NaN.", MissingCellsWarning,
                      stacklevel=2)
    if missing_genes:
        warnings.warn(f"Some genes are absent from some matrices (their values are NaN there): "
                      f"{missing_genes}.", MissingCellsWarning, stacklevel=2)
    LOGGER.info("Extracted %d genes for %d cells from %d matrices in %.1f s", len(selected),
                len(cells), len(jobs), time.perf_counter() - started)
    return pd.DataFrame(result, index=cells.index, columns=pd.Index(selected, name="gene_symbol"))


def _n_rows(path: Path) -> int:
    import h5py

    with h5py.File(path, "r") as f:
        return matrix_layout(f).shape[0]
