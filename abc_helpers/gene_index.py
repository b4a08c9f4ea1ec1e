"""Gene indexes: gene-major (CSC) copies of 10x h5ad matrices, for fast repeated gene queries.

The ABC Atlas matrices are stored cell-major (CSR): all the values of one cell are contiguous, so
reading one gene means scanning the whole file. A gene index is the same matrix converted once to
CSC, written as an ordinary h5ad file that anndata opens (``anndata.read_h5ad(path, backed="r")``)
and in which each gene is one contiguous slice. It sits next to its source in the cache::

    <cache_dir>/expression_matrices/WMB-10Xv2/20230630/WMB-10Xv2-TH-log2.h5ad
    <cache_dir>/expression_matrices/WMB-10Xv2/20230630/WMB-10Xv2-TH-log2.gene_index.h5ad

and records the md5 of its source, so it is used only for the file it was built from. It also
stores the cell labels in a form that loads in milliseconds (fixed-width bytes, with their 64-bit
hashes sorted), so that a query matches 200,000 labels without decoding 200,000 strings. The
conversion is out of core: sorted runs of row blocks go to a scratch file, then column bands are
merged from the runs, so memory stays bounded (about 16 bytes per value of one run) whatever the
size of the matrix. It needs free disk space of about twice the matrix's ``X`` while it runs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock
from tqdm import tqdm

from ._h5ad import MatrixLayout, RawReader, block_bounds, matrix_layout, read_index

LOGGER = logging.getLogger("abc_helpers")

__all__ = ["build_gene_index", "find_gene_index", "gene_index_path", "index_tables",
           "read_gene_index_info", "write_gene_index"]

#: The format written by this version; an index with another format is rebuilt.
FORMAT = "abc_helpers.gene_index/2"
#: Where the provenance lives inside the index file.
INFO_GROUP = "uns/abc_helpers_gene_index"
#: The cell labels as one UTF-8 blob (newline-separated): reads ~5x faster than a string array.
LABELS_BLOB = INFO_GROUP + "/obs_labels_utf8"
#: The cell labels as fixed-width ASCII bytes (file order), padded to a multiple of 8 bytes.
LABEL_KEYS = INFO_GROUP + "/obs_label_keys"
#: :func:`label_hashes` of the keys, sorted, and the file row of each sorted hash.
LABEL_HASHES = INFO_GROUP + "/obs_label_hashes_sorted"
LABEL_ORDER = INFO_GROUP + "/obs_label_order"
#: How many files' tables :func:`index_tables` keeps in memory (most recently used).
LABEL_CACHE_SIZE = 4
#: Stored values per sorted run (memory is about 16 bytes per value).
DEFAULT_RUN_NNZ = 1 << 23


def gene_index_path(source: str | Path) -> Path:
    """Return where the gene index of the h5ad file *source* lives (same folder, same stem)."""
    source = Path(source)
    return source.with_name(f"{source.stem}.gene_index.h5ad")


def read_obs_labels(h5file) -> pd.Index:
    """Read the cell labels (``obs`` index) of an open h5ad file, fast for gene indexes."""
    labels = _read_blob(h5file, LABELS_BLOB)
    if labels is not None:
        name = h5file["obs"].attrs.get("_index", "_index")
        return pd.Index(labels, dtype=object, name=None if name == "_index" else name)
    return read_index(h5file["obs"])


def _blob_bytes(dataset) -> bytes:
    """The bytes of a 1-D uint8 dataset (one plain read when stored raw, else h5py)."""
    raw = RawReader.open(dataset)
    if raw is None:
        return dataset[()].tobytes()
    try:
        return raw.read_bytes(0, int(dataset.shape[0]))
    finally:
        raw.close()


class NoFastPath(Exception):
    """The labels cannot be matched by :meth:`IndexTables.rows_of` (the caller falls back)."""


def label_keys(values, width: int | None = None) -> np.ndarray | None:
    """Return ASCII labels as fixed-width bytes, padded to a multiple of 8 bytes, or None.

    *width* (a multiple of 8): the width to use; longer labels are cut, so the caller must check
    them (see :meth:`IndexTables.rows_of`). None when a label is not ASCII text.
    """
    try:
        keys = np.asarray(values, dtype="S" if width is None else f"S{width}")
    except (UnicodeEncodeError, TypeError, ValueError):
        return None
    if width is None:
        keys = keys.astype(f"S{-(-max(keys.dtype.itemsize, 1) // 8) * 8}", copy=False)
    return keys


def label_hashes(keys: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each fixed-width key (multiply-xorshift over its 8-byte words).

    Part of the gene index format: changing it needs a new :data:`FORMAT`.
    """
    words = np.ascontiguousarray(keys).view("<u8").reshape(len(keys), -1)
    h = np.full(len(keys), 0x243F6A8885A308D3, dtype=np.uint64)
    mult, shift = np.uint64(0x9E3779B97F4A7C15), np.uint64(29)
    for j in range(words.shape[1]):
        h ^= words[:, j]
        h *= mult
        h ^= h >> shift
    return h


class IndexTables:
    """The cell labels and gene names of one gene index file, read lazily and kept.

    Each piece is read from the open file passed in on first use: the labels as one UTF-8 text
    (to compare a caller's labels in one memory comparison), their fixed-width keys with sorted
    hashes (to match labels in another order without decoding strings), the ``var`` texts (to
    find genes with ``bytes.find``), and the labels as a pandas Index only if asked for.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pieces: dict[str, object] = {}

    def _get(self, name: str, load):
        with self._lock:
            if name not in self._pieces:
                self._pieces[name] = load()
            return self._pieces[name]

    def text(self, h5file) -> bytes:
        """The cell labels joined by newlines, UTF-8."""
        return self._get("text", lambda: _blob_bytes(h5file[LABELS_BLOB]))

    def csc(self, h5file) -> tuple[np.ndarray, list[tuple | None]]:
        """``X/indptr`` and the :class:`RawReader` spec of ``X/indices``, ``X/data`` (or None)."""
        def load():
            x = h5file["X"]
            specs = []
            for name in ("indices", "data"):
                reader = RawReader.open(x[name])
                specs.append(None if reader is None else reader.spec)
                if reader is not None:
                    reader.close()
            return x["indptr"][()], specs
        return self._get("csc", load)

    def layout(self, h5file) -> MatrixLayout:
        """The encoding and shape of ``X`` (read once)."""
        return self._get("layout", lambda: matrix_layout(h5file))

    def n_obs(self, h5file) -> int:
        """The number of cells."""
        return self.layout(h5file).shape[0]

    def index(self, h5file) -> pd.Index:
        """The cell labels as a pandas Index of ``str``."""
        def load() -> pd.Index:
            text = self.text(h5file).decode("utf-8")
            return pd.Index(text.split("\n") if text else [], dtype=object)
        return self._get("index", load)

    def keys(self, h5file) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(fixed-width keys, sorted hashes, file row of each sorted hash)`` or None."""
        def load():
            if LABEL_KEYS not in h5file:
                return None
            return h5file[LABEL_KEYS][()], h5file[LABEL_HASHES][()], h5file[LABEL_ORDER][()]
        return self._get("keys", load)

    def var_text(self, h5file, column: str | None) -> bytes | None:
        """A ``var`` column as newline-framed UTF-8 text."""
        key = f"{INFO_GROUP}/var_{column or 'index'}_utf8"

        def load():
            if key not in h5file:
                return None
            return b"\n" + _blob_bytes(h5file[key]) + b"\n"
        return self._get(key, load)

    def same_labels(self, h5file, values: np.ndarray, step: int = 16384) -> bool:
        """True if *values* (str) are the file's cell labels, in order.

        The labels are joined and compared with the stored text a slice of *step* labels at a
        time (small buffers that stay in the CPU cache, no 5 MB string built); the stored text is
        read in matching pieces straight from the file into one reused buffer when it is not in
        memory yet. The comparisons are in place (``startswith``: no copies). False as soon as a
        piece differs, or if a label is not an ASCII ``str``.
        """
        text = self._pieces.get("text")
        raw = None
        if text is None:
            ds = h5file[LABELS_BLOB]
            raw = RawReader.open(ds)
            if raw is None:
                text = self.text(h5file)
            size = int(ds.shape[0])
        else:
            size = len(text)
        try:
            items = values.tolist()
            buffer = bytearray()
            pos = 0
            for i in range(0, len(items), step):
                try:
                    piece = "\n".join(items[i:i + step])
                except TypeError:
                    return False
                if not piece.isascii():
                    return False
                encoded = piece.encode("ascii")
                end = pos + len(encoded)
                if end > size:
                    return False
                if raw is None:
                    same = text.startswith(encoded, pos) and (end == size or text[end] == 10)
                else:
                    stop = min(end + 1, size)  # with the newline that must follow
                    if len(buffer) < stop - pos:
                        buffer = bytearray(max(stop - pos, 2 * len(buffer)))
                    raw.read(pos, stop, np.frombuffer(buffer, dtype=np.uint8))
                    same = buffer.startswith(encoded) and (end == size or buffer[end - pos] == 10)
                if not same:
                    return False
                pos = end + 1
            return (pos - 1 if items else 0) == size
        finally:
            if raw is not None:
                raw.close()

    def rows_of(self, h5file, labels: pd.Index) -> np.ndarray | None:
        """File row of each label (-1 if absent), or None if *labels* are the file's in order.

        The labels joined by newlines are compared with the stored text (one memory
        comparison). Otherwise they are turned into fixed-width keys whose hashes are looked up in
        the sorted hashes, and the key found there is compared with the label's: a match is exact.

        Raises
        ------
        NoFastPath
            If a label is not a ``str``, or the labels are not all ASCII, or the file has no
            keys, or two labels of the file share a hash (e.g. duplicated labels).
        """
        if labels is self._pieces.get("index"):
            return None
        values = labels.to_numpy()
        if len(values) == self.n_obs(h5file) and self.same_labels(h5file, values):
            return None
        try:
            text = "\n".join(values.tolist()).encode("utf-8")
        except (TypeError, UnicodeEncodeError) as error:
            raise NoFastPath(f"labels are not all str ({error})") from None
        stored = self.keys(h5file)
        if stored is None or not text.isascii() or b"\0" in text:
            raise NoFastPath("labels are not all ASCII or the file has no label keys")
        keys, hashes, order = stored
        if (hashes[1:] == hashes[:-1]).any():
            raise NoFastPath("two labels of the file share a hash")
        if len(keys) == 0:
            return np.full(len(values), -1, dtype=np.int64)
        width = keys.dtype.itemsize
        wide = label_keys(values, width + 8)  # a byte past *width* marks a too long label
        if wide is None:
            raise NoFastPath("labels are not ASCII")
        grid = wide.view(np.uint8).reshape(len(wide), width + 8)
        too_long = grid[:, width] != 0
        mine = np.ascontiguousarray(grid[:, :width]).view(keys.dtype).ravel()
        h = label_hashes(mine)
        by_hash = np.argsort(h)
        pos = np.empty(len(h), dtype=np.int64)
        pos[by_hash] = np.searchsorted(hashes, h[by_hash])  # sorted queries: cache friendly
        np.minimum(pos, len(hashes) - 1, out=pos)
        rows = order[pos].astype(np.int64)
        found = (hashes[pos] == h) & (keys[rows] == mine) & ~too_long
        return np.where(found, rows, -1)


_TABLES: OrderedDict[tuple, IndexTables] = OrderedDict()
#: Default of the *tables* arguments: call :func:`index_tables`.
LOOK_UP = object()
_TABLES_LOCK = threading.Lock()


def index_tables(h5file) -> IndexTables | None:
    """The :class:`IndexTables` of an open gene index file, or None if it is not one.

    Kept in memory for the last :data:`LABEL_CACHE_SIZE` files, keyed by path, size and
    modification time, so repeated queries in one session do not read them again (the first
    query of a session reads them: about 10 MB for 200,000 cells).
    """
    path = os.path.abspath(h5file.filename)
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    with _TABLES_LOCK:
        tables = _TABLES.get(key)
        if tables is not None:
            _TABLES.move_to_end(key)
            return tables
    if LABELS_BLOB not in h5file:
        return None
    with _TABLES_LOCK:
        tables = _TABLES.setdefault(key, IndexTables())
        while len(_TABLES) > LABEL_CACHE_SIZE:
            _TABLES.popitem(last=False)
        return tables


def _write_label_keys(group, labels: pd.Index) -> None:
    """Store the fixed-width keys, sorted hashes and order (skipped if a label is not ASCII)."""
    values = labels.to_numpy(dtype=object)
    if any("\x00" in v for v in values):
        return
    keys = label_keys(values)
    if keys is None:
        return
    hashes = label_hashes(keys)
    order = np.argsort(hashes, kind="stable")
    order = order.astype(np.int32 if len(order) < 2**31 else np.int64)
    group.create_dataset("obs_label_keys", data=keys)
    group.create_dataset("obs_label_hashes_sorted", data=hashes[order])
    group.create_dataset("obs_label_order", data=order)
    for name in ("obs_label_keys", "obs_label_hashes_sorted", "obs_label_order"):
        group[name].attrs["encoding-type"] = "array"
        group[name].attrs["encoding-version"] = "0.2.0"


def var_positions(h5file, column: str | None, wanted: Sequence[str],
                  tables: IndexTables | None | object = LOOK_UP) -> np.ndarray:
    """Row of the first occurrence of each *wanted* value in a ``var`` column (-1 if absent).

    *column* None is the ``var`` index. In a gene index, the names are searched in the stored
    UTF-8 text without decoding it (a few ``bytes.find`` calls); otherwise the column is read.
    *tables*: :func:`index_tables` of *h5file* if the caller has it already.
    """
    if tables is LOOK_UP:
        tables = index_tables(h5file)
    found = tables.var_text(h5file, column) if tables is not None else None
    if found is None:
        index = pd.Index(read_var_column(h5file, column))
        if index.is_unique:
            return np.asarray(index.get_indexer(pd.Index(wanted)), dtype=np.int64)
        first = ~index.duplicated()
        rows = index[first].get_indexer(pd.Index(wanted))
        return np.where(rows >= 0, np.flatnonzero(first)[rows], -1).astype(np.int64)
    text = found
    known = tables._get(f"found_{column or 'index'}", dict)  # name -> row, kept per file
    out = np.full(len(wanted), -1, dtype=np.int64)
    for i, name in enumerate(wanted):
        name = str(name)
        row = known.get(name)
        if row is None:
            row = -1
            encoded = name.encode("utf-8")
            # a byte of the name absent from the column (one memchr each): not there, no search
            if name and "\n" not in name and all(bytes((c,)) in text for c in set(encoded)):
                at = text.find(b"\n" + encoded + b"\n")
                if at >= 0:
                    row = text.count(b"\n", 0, at)  # the rows before this one
            with tables._lock:
                known[name] = row
        out[i] = row
    return out


def _read_blob(h5file, key: str) -> list[str] | None:
    if key not in h5file:
        return None
    blob = h5file[key][()].tobytes().decode("utf-8")
    return blob.split("\n") if blob else []


def _write_blob(group, name: str, values) -> None:
    """Store strings as one newline-separated UTF-8 array (skipped if a value has a newline)."""
    text = "\n".join(values)
    if text.count("\n") != max(len(values) - 1, 0):
        return
    blob = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    ds = group.create_dataset(name, data=blob)
    ds.attrs["encoding-type"] = "array"
    ds.attrs["encoding-version"] = "0.2.0"


def read_var_column(h5file, column: str | None) -> np.ndarray:
    """Read the ``var`` index (*column* None) or a ``var`` string column of an open h5ad file."""
    from ._h5ad import read_strings

    blob = _read_blob(h5file, f"{INFO_GROUP}/var_{column or 'index'}_utf8")
    if blob is not None:
        return np.array(blob, dtype=object)
    if column is None:
        return read_index(h5file["var"]).to_numpy(dtype=object)
    return read_strings(h5file["var"][column])


def read_gene_index_info(path: str | Path) -> dict | None:
    """Return the provenance of a gene index (format, source file, source md5, shape), or None.

    None means *path* is missing, unreadable or not a gene index of this format.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            if INFO_GROUP not in f or matrix_layout(f).encoding != "csc_matrix":
                return None
            group = f[INFO_GROUP]
            info = {k: group[k].asstr()[()] for k in ("format", "source_file", "source_md5")}
            info["shape"] = tuple(int(n) for n in f["X"].attrs["shape"])
    except (OSError, KeyError, ValueError):
        return None
    return info if info["format"] == FORMAT else None


def _write_string(group, name: str, value: str) -> None:
    import h5py

    ds = group.create_dataset(name, data=value, dtype=h5py.string_dtype())
    ds.attrs["encoding-type"] = "string"
    ds.attrs["encoding-version"] = "0.2.0"


def _empty_dict(group) -> None:
    group.attrs["encoding-type"] = "dict"
    group.attrs["encoding-version"] = "0.1.0"


def _sorted_runs(x, indptr, layout, run_nnz, scratch, bar) -> tuple[np.ndarray, list]:
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


def _merge_bands(scratch, run_indptr, bounds, indptr, out_x, run_nnz, bar) -> np.ndarray:
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
    for c0, c1 in zip(edges[:-1], edges[1:], strict=True):
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
        Where to write; default :func:`gene_index_path` of *source*.
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

    from .transfer import file_hash

    source = Path(source)
    target = Path(target) if target is not None else gene_index_path(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with FileLock(str(target) + ".lock"):
        md5 = source_md5 or file_hash(source, "md5").split(":", 1)[1]
        part = target.with_name(f"{target.name}.part-{os.getpid()}")
        runs = target.with_name(f"{target.name}.runs-{os.getpid()}")
        try:
            with h5py.File(source, "r") as src:
                layout = matrix_layout(src)
                if layout.encoding != "csr_matrix":
                    msg = (f"'{source}' stores X as '{layout.encoding}', not csr_matrix: a gene "
                           "index is made from the cell-major 10x matrices only.")
                    raise ValueError(msg)
                x = src["X"]
                indptr = x["indptr"][()].astype(np.int64, copy=False)
                nnz = int(indptr[-1])
                with tqdm(total=2 * nnz, unit="value", unit_scale=True, disable=not progressbar,
                          desc=f"Indexing {source.name}") as bar, \
                        h5py.File(runs, "w") as scratch, h5py.File(part, "w") as out:
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
                    labels = read_index(src["obs"])
                    for name in ("layers", "obsm", "obsp", "varm", "varp"):
                        _empty_dict(out.create_group(name))
                    _empty_dict(out.create_group("uns"))
                    info = out.create_group(INFO_GROUP)
                    _empty_dict(info)
                    _write_string(info, "format", FORMAT)
                    _write_string(info, "source_file", source_file or source.name)
                    _write_string(info, "source_md5", md5)
                    _write_blob(info, "obs_labels_utf8", labels.astype(str))
                    _write_label_keys(info, labels.astype(str))
                    _write_blob(info, "var_index_utf8", read_var_column(src, None).astype(str))
                    if "gene_symbol" in src["var"]:
                        _write_blob(info, "var_gene_symbol_utf8",
                                    read_var_column(src, "gene_symbol").astype(str))
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
            runs.unlink(missing_ok=True)
    LOGGER.info("Gene index of %s written to %s in %.1f s", source.name, target,
                time.perf_counter() - started)
    return target


# -- through the cache --------------------------------------------------------------------------
def _local_path(abc_cache, attrs) -> Path:
    return Path(abc_cache.cache_dir) / attrs.relative_path


def find_gene_index(abc_cache, directory: str, file_name: str) -> Path | None:
    """Return the path of a valid gene index of one matrix of the loaded release, or None.

    Valid means: it exists, has this version's format and records the md5 that the release's
    manifest gives for the matrix. A stale index (another release's file) is ignored.
    """
    attrs = abc_cache.get_file_attributes(directory, file_name)
    path = gene_index_path(_local_path(abc_cache, attrs))
    info = read_gene_index_info(path)
    if info is None:
        return None
    if info["source_md5"].lower() != attrs.file_hash.lower():
        LOGGER.warning("Ignoring the gene index %s: it was built from a file with md5 %s, but the "
                       "loaded release's %s/%s has md5 %s. Rebuild it with build_gene_index.",
                       path, info["source_md5"], directory, file_name, attrs.file_hash)
        return None
    return path


def _data_files(abc_cache, directory: str) -> list[str]:
    """The data file names of *directory*; empty for a metadata-only or unknown directory."""
    from .manifest import DataTypeNotInDirectory

    if directory not in abc_cache.list_directories:
        return []
    try:
        return list(abc_cache.list_data_files(directory))
    except DataTypeNotInDirectory:
        return []


def _matrices(abc_cache, matrices, data_type: str) -> list[tuple[str, str]]:
    """Resolve *matrices* to ``(directory, file_name)`` pairs of the loaded release."""
    listing = {d: _data_files(abc_cache, d) for d in abc_cache.list_directories}
    by_matrix = {}
    for directory, names in listing.items():
        for name in names:
            if name.endswith(f"/{data_type}"):
                by_matrix[name.rsplit("/", 1)[0]] = (directory, name)
    if matrices is None:
        found = [pair for pair in by_matrix.values()
                 if _local_path(abc_cache, abc_cache.get_file_attributes(*pair)).is_file()]
        return sorted(found)
    if isinstance(matrices, pd.DataFrame):
        matrices = sorted(matrices["feature_matrix_label"].dropna().unique())
    if isinstance(matrices, str):
        matrices = [matrices]
    pairs = []
    for name in matrices:
        name = str(name).removesuffix(f"/{data_type}")
        if name in by_matrix:
            pairs.append(by_matrix[name])
        elif name in listing and any(n.endswith(f"/{data_type}") for n in listing[name]):
            pairs += [(name, n) for n in listing[name] if n.endswith(f"/{data_type}")]
        else:
            msg = (f"Unknown matrix '{name}': not a '{data_type}' matrix nor a directory of the "
                   f"loaded release. Use matrix names such as {sorted(by_matrix)[:3]} or "
                   "directories such as 'WMB-10Xv2'.")
            raise KeyError(msg)
    return sorted(set(pairs))


def build_gene_index(
    abc_cache,
    matrices: Sequence[str] | pd.DataFrame | str | None = None,
    data_type: str = "log2",
    force: bool = False,
    progressbar: bool = True,
    run_nnz: int = DEFAULT_RUN_NNZ,
) -> dict[str, Path]:
    """Build (once) the gene index of matrices of the loaded release, next to them in the cache.

    After this, :func:`~abc_helpers.expression.get_gene_data` reads those matrices' genes from the
    index (milliseconds per gene) instead of streaming the whole matrix. Each matrix is downloaded
    first if needed. An index that is already valid is kept unless *force* is true.

    Parameters
    ----------
    abc_cache : AbcProjectCache
        The cache of the release.
    matrices : sequence of str, str, pandas.DataFrame or None
        Matrix names (``'WMB-10Xv2-TH'``), directories (``'WMB-10Xv2'``: all its matrices) or a
        cell table with a ``feature_matrix_label`` column (the matrices its cells come from).
        None: every matrix of *data_type* already downloaded in the cache.
    data_type : {"log2", "raw"}
        Which matrix of each pair.
    force : bool
        Rebuild even if a valid index exists.
    progressbar : bool
        Show progress bars.
    run_nnz : int
        Values per sorted run (memory is about 16 bytes per value).

    Returns
    -------
    dict
        ``{'<directory>/<matrix>/<data_type>': Path of its gene index}``.

    Raises
    ------
    KeyError
        If a name is neither a matrix nor a directory of the release.
    """
    built = {}
    for directory, file_name in _matrices(abc_cache, matrices, data_type):
        existing = None if force else find_gene_index(abc_cache, directory, file_name)
        if existing is not None:
            built[f"{directory}/{file_name}"] = existing
            continue
        attrs = abc_cache.get_file_attributes(directory, file_name)
        source = abc_cache.get_data_path(directory, file_name)
        built[f"{directory}/{file_name}"] = write_gene_index(
            source, source_md5=attrs.file_hash, source_file=attrs.relative_path,
            run_nnz=run_nnz, progressbar=progressbar)
    return built
