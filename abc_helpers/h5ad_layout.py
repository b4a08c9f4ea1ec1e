"""Low-level h5py reading of AnnData (h5ad) files: string columns, indexes, sparse matrix layout.

Shared by :mod:`abc_helpers.expression` and :mod:`abc_helpers.gene_index`, for reads that
anndata's backed mode makes slow: they read only what is asked for, never the whole matrix, and
:class:`RawReader` reads uncompressed ranges with plain ``readinto`` calls (no GIL held).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Default number of stored values per block when streaming a sparse matrix (16 MiB of float32).
DEFAULT_BLOCK_NNZ = 1 << 22


def _decode(values: np.ndarray) -> np.ndarray:
    """Return an object array of ``str`` from an array of bytes, str or fixed-width ``S``/``U``."""
    if values.dtype.kind == "S":
        return values.astype("U").astype(object)
    if values.dtype.kind == "U":
        return values.astype(object)
    out = values.astype(object, copy=False)
    if out.size and isinstance(out.flat[0], bytes):
        out = np.array([v.decode("utf-8") for v in out], dtype=object)
    return out


def read_strings(node) -> np.ndarray:
    """Read a string column of an AnnData dataframe group as an object array of ``str``.

    Handles the encodings anndata writes: ``string-array`` (variable-length UTF-8 or fixed-width
    bytes), ``categorical`` (``codes`` + ``categories``; code -1 is missing) and
    ``nullable-string-array`` (``values`` + ``mask``).

    Parameters
    ----------
    node : h5py.Dataset or h5py.Group
        The column.

    Returns
    -------
    numpy.ndarray
        Object array of ``str`` (missing values are None).
    """
    import h5py

    if isinstance(node, h5py.Dataset):
        if node.dtype.kind == "O":
            return node.asstr()[()].astype(object)
        return _decode(node[()])
    encoding = node.attrs.get("encoding-type", "")
    if encoding == "categorical":
        categories = read_strings(node["categories"])
        codes = node["codes"][()].astype(np.int64)
        out = np.empty(codes.shape, dtype=object)
        valid = codes >= 0
        out[valid] = categories[codes[valid]]
        return out
    if encoding == "nullable-string-array":
        values = read_strings(node["values"])
        values[node["mask"][()].astype(bool)] = None
        return values
    msg = (f"Cannot read '{node.name}' in '{node.file.filename}' as strings: encoding-type "
           f"'{encoding}' is not a string column (expected string-array, categorical or "
           "nullable-string-array).")
    raise ValueError(msg)


def read_index(group) -> pd.Index:
    """Read the index of an AnnData dataframe group (``obs`` or ``var``).

    The index column is the one named by the group's ``_index`` attribute (``'_index'`` if absent).
    """
    key = group.attrs.get("_index", "_index")
    if isinstance(key, bytes):
        key = key.decode()
    if key not in group:
        msg = (f"'{group.name}' in '{group.file.filename}' has no index column '{key}': this is not "
               "an AnnData dataframe written by anndata >= 0.7. Re-write it with anndata.")
        raise ValueError(msg)
    return pd.Index(read_strings(group[key]), name=None if key == "_index" else key)


def read_dataframe(group, columns: list[str] | None = None) -> pd.DataFrame:
    """Read the index and the string *columns* (default: every string column) of a dataframe group."""
    index = read_index(group)
    order = [c.decode() if isinstance(c, bytes) else str(c) for c in group.attrs.get("column-order", [])]
    wanted = order if columns is None else columns
    data = {}
    for name in wanted:
        try:
            data[name] = read_strings(group[name])
        except (KeyError, ValueError):
            if columns is not None:
                raise
    return pd.DataFrame(data, index=index)


@dataclass(frozen=True)
class MatrixLayout:
    """How ``X`` is stored in an h5ad file."""

    encoding: str  # "csr_matrix", "csc_matrix" or "array"
    shape: tuple[int, int]

    @property
    def gene_major(self) -> bool:
        """True for a CSC matrix (genes are contiguous: a gene index)."""
        return self.encoding == "csc_matrix"


def matrix_layout(h5file) -> MatrixLayout:
    """Return the encoding and the shape of ``X`` in an open h5ad file."""
    import h5py

    x = h5file["X"]
    if isinstance(x, h5py.Dataset):
        if x.ndim != 2:
            msg = (f"X in '{h5file.filename}' is a dense array of shape {x.shape}: an h5ad matrix "
                   "has two axes (cells, genes); rewrite the file with anndata.")
            raise ValueError(msg)
        return MatrixLayout("array", (int(x.shape[0]), int(x.shape[1])))
    encoding = x.attrs.get("encoding-type", x.attrs.get("h5sparse_format", ""))
    if isinstance(encoding, bytes):
        encoding = encoding.decode()
    encoding = {"csr": "csr_matrix", "csc": "csc_matrix"}.get(encoding, encoding)
    if encoding not in ("csr_matrix", "csc_matrix"):
        msg = (f"X in '{h5file.filename}' has encoding '{encoding}': expected a csr_matrix or "
               "csc_matrix group (data, indices, indptr) or a dense array.")
        raise ValueError(msg)
    shape = x.attrs.get("shape", x.attrs.get("h5sparse_shape"))
    return MatrixLayout(encoding, (int(shape[0]), int(shape[1])))


def block_bounds(indptr: np.ndarray, block_nnz: int, first: int = 0,
                 last: int | None = None) -> list[tuple[int, int]]:
    """Split rows ``[first, last)`` into contiguous blocks of about *block_nnz* stored values.

    Every block has at least one row, so a row with more values than *block_nnz* is a block alone.

    Returns
    -------
    list of (int, int)
        ``(row_start, row_stop)`` pairs covering the range in order.
    """
    last = len(indptr) - 1 if last is None else last
    bounds = []
    row = first
    while row < last:
        target = indptr[row] + block_nnz
        stop = int(np.searchsorted(indptr, target, side="right")) - 1
        stop = min(max(stop, row + 1), last)
        bounds.append((row, stop))
        row = stop
    return bounds


class RawReader:
    """Read ranges of an uncompressed 1-D HDF5 dataset straight from the file, without h5py.

    h5py holds the GIL while it reads; a plain ``readinto`` releases it, so a reader thread can
    fetch the next block while numpy works on this one. Only for datasets that HDF5 stores as
    raw bytes (contiguous, or chunked with no filter, every chunk allocated, native byte order);
    :meth:`open` returns None for anything else, and the caller falls back to h5py.
    """

    def __init__(self, path: str, dtype: np.dtype, pieces: np.ndarray, chunk: int | None) -> None:
        self.spec = (path, dtype, pieces, chunk)  # RawReader(*spec) opens another one
        self.dtype = dtype
        self._pieces = pieces  # file offset of each chunk (or of the whole dataset)
        self._chunk = chunk
        self._fh = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()

    @classmethod
    def open(cls, dataset) -> RawReader | None:
        """A reader for *dataset*, or None if its bytes are not stored raw."""
        import h5py

        try:
            plist = dataset.id.get_create_plist()
            if dataset.ndim != 1 or plist.get_nfilters() or dataset.dtype.byteorder == ">" \
                    or dataset.dtype.kind not in "iuf" or dataset.external:
                return None
            layout = plist.get_layout()
            if layout == h5py.h5d.CONTIGUOUS:
                offset = dataset.id.get_offset()
                if offset is None:
                    return None
                return cls(dataset.file.filename, dataset.dtype, np.array([offset]), None)
            if layout != h5py.h5d.CHUNKED:
                return None
            chunk = int(dataset.chunks[0])
            n_chunks = -(-dataset.shape[0] // chunk)
            offsets = np.full(n_chunks, -1, dtype=np.int64)

            def record(info) -> None:
                offsets[info.chunk_offset[0] // chunk] = info.byte_offset

            if hasattr(dataset.id, "chunk_iter"):
                dataset.id.chunk_iter(record)
            else:
                for i in range(dataset.id.get_num_chunks()):
                    record(dataset.id.get_chunk_info(i))
            if (offsets < 0).any():
                return None
            return cls(dataset.file.filename, dataset.dtype, offsets, chunk)
        except (AttributeError, TypeError, ValueError, RuntimeError, OSError):
            return None

    def _read_exact(self, view: memoryview, offset: int) -> None:
        self._fh.seek(offset)
        done = 0
        while done < len(view):
            n = self._fh.readinto(view[done:])
            if not n:
                raise OSError(f"Unexpected end of '{self._fh.name}' at byte {offset + done}.")
            done += n

    def read(self, start: int, stop: int, out: np.ndarray) -> None:
        """Read elements ``[start, stop)`` into ``out[: stop - start]``."""
        size = self.dtype.itemsize
        view = out[: stop - start].view(np.uint8).data
        if self._chunk is None:
            self._read_exact(view, int(self._pieces[0]) + start * size)
            return
        pos = start
        while pos < stop:
            k, within = divmod(pos, self._chunk)
            end = min(stop, (k + 1) * self._chunk)
            self._read_exact(view[(pos - start) * size:(end - start) * size],
                             int(self._pieces[k]) + within * size)
            pos = end

    def read_bytes(self, start: int, stop: int) -> bytes:
        """Elements ``[start, stop)`` as ``bytes`` (one read for a contiguous dataset)."""
        if self._chunk is not None:
            out = np.empty(stop - start, dtype=self.dtype)
            self.read(start, stop, out)
            return out.tobytes()
        size = self.dtype.itemsize
        self._fh.seek(int(self._pieces[0]) + start * size)
        data = self._fh.read((stop - start) * size)
        if len(data) != (stop - start) * size:
            raise OSError(f"Unexpected end of '{self._fh.name}'.")
        return data

    def close(self) -> None:
        """Close the file."""
        self._fh.close()


class BlockReader:
    """Read the row blocks of a CSR/CSC group *x*; reading starts as soon as it is created.

    Iterating yields ``(r0, r1, indices, data)`` for each ``(r0, r1)`` of *bounds*; the arrays are
    views of two reused buffers, valid until the next block is requested. When the datasets are
    stored raw (see :class:`RawReader`), a background thread reads block k + 1 while block k is
    processed, and block 0 is already being read when the constructor returns, so the caller can
    do other work (read gene names, ...) meanwhile. Use it as a context manager, or call
    :meth:`close`.

    *inspect*, if given, is called as ``inspect(r0, r1, indices)`` on each block right after it
    is read, in the reader thread (while the block is in that core's cache; numpy releases the
    GIL for large array operations), and its result is yielded as a fifth item.
    """

    def __init__(self, x, indptr: np.ndarray, bounds: list[tuple[int, int]],
                 inspect=None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._x, self._indptr, self._bounds = x, indptr, bounds
        self._inspect = inspect
        self._pool = self._pending = None
        self._raw: list[RawReader] = []
        if not bounds:
            return
        indices, data = x["indices"], x["data"]
        biggest = max(int(indptr[b] - indptr[a]) for a, b in bounds)
        self._buffers = [(np.empty(biggest, dtype=indices.dtype),
                          np.empty(biggest, dtype=data.dtype)) for _ in range(2)]
        index_reader, data_reader = RawReader.open(indices), RawReader.open(data)
        if index_reader is None or data_reader is None:
            for reader in (index_reader, data_reader):
                if reader is not None:
                    reader.close()
            return
        self._raw = [index_reader, data_reader]
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="abc_helpers-read")
        self._pending = self._pool.submit(self._load, 0)

    def _load(self, k: int) -> tuple[np.ndarray, np.ndarray, object]:
        r0, r1 = self._bounds[k]
        a, b = int(self._indptr[r0]), int(self._indptr[r1])
        ix_buf, d_buf = self._buffers[k % 2]
        self._raw[0].read(a, b, ix_buf)
        self._raw[1].read(a, b, d_buf)
        ix = ix_buf[: b - a]
        return ix, d_buf[: b - a], None if self._inspect is None else self._inspect(r0, r1, ix)

    def __iter__(self):
        bounds = self._bounds
        if self._pool is None:  # h5py reads, in this thread
            indices, data = self._x["indices"], self._x["data"]
            for r0, r1 in bounds:
                ix_buf, d_buf = self._buffers[0]
                a, b = int(self._indptr[r0]), int(self._indptr[r1])
                indices.read_direct(ix_buf, np.s_[a:b], np.s_[0:b - a])
                data.read_direct(d_buf, np.s_[a:b], np.s_[0:b - a])
                ix = ix_buf[: b - a]
                info = None if self._inspect is None else self._inspect(r0, r1, ix)
                yield r0, r1, ix, d_buf[: b - a], info
            return
        for k, (r0, r1) in enumerate(bounds):
            ix, d, info = self._pending.result()
            self._pending = self._pool.submit(self._load, k + 1) if k + 1 < len(bounds) else None
            yield r0, r1, ix, d, info

    def close(self) -> None:
        """Stop the reader thread and close the files."""
        if self._pool is not None:
            if self._pending is not None:
                self._pending.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None
        for reader in self._raw:
            reader.close()
        self._raw = []

    def __enter__(self) -> BlockReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_blocks(x, indptr: np.ndarray, bounds: list[tuple[int, int]]):
    """Yield ``(r0, r1, indices, data)`` for each row block of a CSR/CSC group *x*.

    A generator over a :class:`BlockReader` (the arrays are valid until the next block).
    """
    with BlockReader(x, indptr, bounds) as reader:
        for r0, r1, ix, d, _ in reader:
            yield r0, r1, ix, d
