r"""Reading a gene index: its format and provenance, and fast lookups of cells, genes and slices.

The lookups that need no file work on plain numpy arrays and bytes, so they serve an index
whose pieces were fetched some other way: :func:`label_keys` and :func:`label_hashes` (the cell
labels' fixed-width keys and their hashes), :func:`match_label_keys` (cells to rows),
:func:`line_numbers` (gene names to columns) and :func:`column_slices` (a gene's values in
``X/indices`` and ``X/data``). :class:`IndexTables` reads their inputs from an open h5py file once
and keeps them; :func:`index_tables` keeps the tables of the last few files.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..h5ad_layout import MatrixLayout, RawReader, matrix_layout, read_index, read_strings

__all__ = [
    "FORMAT",
    "INFO_GROUP",
    "LABELS_BLOB",
    "LABEL_CACHE_SIZE",
    "LABEL_HASHES",
    "LABEL_KEYS",
    "LABEL_ORDER",
    "IndexTables",
    "NoFastPath",
    "column_slices",
    "gene_index_path",
    "index_tables",
    "label_hashes",
    "label_keys",
    "line_numbers",
    "match_label_keys",
    "read_gene_index_info",
    "read_obs_labels",
    "read_var_column",
    "var_positions",
    "var_text_key",
]

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


def gene_index_path(source: str | Path) -> Path:
    """Return where the gene index of the h5ad file *source* lives (same folder, same stem).

    Parameters
    ----------
    source : str or Path
        A matrix, e.g. ``.../WMB-10Xv2-TH-log2.h5ad``.

    Returns
    -------
    Path
        ``.../WMB-10Xv2-TH-log2.gene_index.h5ad``.

    Examples
    --------
    >>> gene_index_path("expression_matrices/WMB-10Xv2/20230630/WMB-10Xv2-TH-log2.h5ad").name
    'WMB-10Xv2-TH-log2.gene_index.h5ad'
    """
    source = Path(source)
    return source.with_name(f"{source.stem}.gene_index.h5ad")


def var_text_key(column: str | None) -> str:
    """The dataset holding a ``var`` column (None: the index) as one UTF-8 blob in a gene index.

    Examples
    --------
    >>> var_text_key("gene_symbol")
    'uns/abc_helpers_gene_index/var_gene_symbol_utf8'
    """
    return f"{INFO_GROUP}/var_{column or 'index'}_utf8"


# -- lookups on plain arrays -----------------------------------------------------------------------
class NoFastPath(Exception):
    """The labels cannot be matched through the label keys (the caller falls back to strings)."""


def label_keys(values: Sequence[str] | np.ndarray, width: int | None = None) -> np.ndarray | None:
    """Return ASCII labels as fixed-width bytes, padded to a multiple of 8 bytes, or None.

    Parameters
    ----------
    values : sequence of str
        The labels.
    width : int or None
        The width to use (a multiple of 8); longer labels are cut, so the caller must check them
        (see :func:`match_label_keys`). None: the longest label's length, rounded up.

    Returns
    -------
    numpy.ndarray or None
        A ``S<width>`` array, or None when a label is not ASCII text.

    Examples
    --------
    >>> label_keys(["AAACCCAAGGCCCAAA-1", "x"]).dtype
    dtype('S24')
    >>> label_keys(["cellule-é"]) is None
    True
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

    Parameters
    ----------
    keys : numpy.ndarray
        Keys from :func:`label_keys` (their width is a multiple of 8 bytes).

    Returns
    -------
    numpy.ndarray
        ``uint64``, one hash per key.
    """
    words = np.ascontiguousarray(keys).view("<u8").reshape(len(keys), -1)
    h = np.full(len(keys), 0x243F6A8885A308D3, dtype=np.uint64)
    mult, shift = np.uint64(0x9E3779B97F4A7C15), np.uint64(29)
    for j in range(words.shape[1]):
        h ^= words[:, j]
        h *= mult
        h ^= h >> shift
    return h


def match_label_keys(values: np.ndarray, keys: np.ndarray, hashes: np.ndarray,
                     order: np.ndarray) -> np.ndarray:
    """File row of each label of *values* (-1 if absent), through a gene index's label keys.

    The labels are turned into fixed-width keys whose hashes are looked up in the sorted hashes,
    and the key found there is compared with the label's: a match is exact. No string is decoded.

    Parameters
    ----------
    values : numpy.ndarray
        The labels to find (an object array of ``str``).
    keys : numpy.ndarray
        The file's labels as :func:`label_keys`, in file order (dataset :data:`LABEL_KEYS`).
    hashes : numpy.ndarray
        Their :func:`label_hashes`, sorted (dataset :data:`LABEL_HASHES`).
    order : numpy.ndarray
        The file row of each sorted hash (dataset :data:`LABEL_ORDER`).

    Returns
    -------
    numpy.ndarray
        ``int64``: the file row of each label, -1 where it is not in the file.

    Raises
    ------
    NoFastPath
        If a label is not a ``str``, or the labels are not all ASCII, or two labels of the file
        share a hash (e.g. duplicated labels).

    Examples
    --------
    >>> keys = label_keys(["AAAC-1", "AAAG-2", "CCCT-3"])
    >>> hashes = label_hashes(keys)
    >>> order = np.argsort(hashes, kind="stable")
    >>> wanted = np.array(["CCCT-3", "nope", "AAAC-1"], dtype=object)
    >>> match_label_keys(wanted, keys, hashes[order], order)
    array([ 2, -1,  0])
    """
    try:
        text = "\n".join(values.tolist()).encode("utf-8")
    except (TypeError, UnicodeEncodeError) as error:
        raise NoFastPath(f"labels are not all str ({error})") from None
    if not text.isascii() or b"\0" in text:
        raise NoFastPath("labels are not all ASCII")
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


def line_numbers(text: bytes, names: Sequence[str]) -> np.ndarray:
    r"""Line of each name in newline-framed UTF-8 text (-1 if absent; the first if repeated).

    The text is searched without being decoded: a name with a byte that the text lacks is absent
    at once (one ``memchr`` per distinct byte), else one ``bytes.find``.

    Parameters
    ----------
    text : bytes
        ``b"\n" + b"\n".join(lines) + b"\n"`` (see :meth:`IndexTables.var_text`).
    names : sequence of str
        The names to find.

    Returns
    -------
    numpy.ndarray
        ``int64``: the line (0 = first) of each name, -1 where absent.

    Examples
    --------
    >>> line_numbers(b"\nXkr4\nRp1\nSox17\n", ["Sox17", "Gad1", "Xkr4"])
    array([ 2, -1,  0])
    """
    out = np.full(len(names), -1, dtype=np.int64)
    for i, name in enumerate(names):
        name = str(name)
        encoded = name.encode("utf-8")
        # a byte of the name absent from the text (one memchr each): not there, no search
        if name and "\n" not in name and all(bytes((c,)) in text for c in set(encoded)):
            at = text.find(b"\n" + encoded + b"\n")
            if at >= 0:
                out[i] = text.count(b"\n", 0, at)  # the lines before this one
    return out


def column_slices(indptr: np.ndarray, columns: Sequence[int] | np.ndarray) -> np.ndarray:
    """Where the values of each column lie in ``X/indices`` and ``X/data`` of a CSC matrix.

    Multiplied by a dataset's item size and added to its file offset (see
    :class:`~abc_helpers.h5ad_layout.RawReader`), these are the byte ranges to read.

    Parameters
    ----------
    indptr : numpy.ndarray
        ``X/indptr`` of the gene index.
    columns : sequence of int
        Column numbers (e.g. from :func:`var_positions`); -1 for a gene that is absent.

    Returns
    -------
    numpy.ndarray
        ``int64``, shape ``(len(columns), 2)``: ``[start, stop)`` of each column; ``[0, 0]`` for -1.

    Examples
    --------
    >>> column_slices(np.array([0, 3, 3, 7]), [2, -1, 0])
    array([[3, 7],
           [0, 0],
           [0, 3]])
    """
    columns = np.asarray(columns, dtype=np.int64)
    out = np.zeros((len(columns), 2), dtype=np.int64)
    present = columns >= 0
    out[present, 0] = indptr[columns[present]]
    out[present, 1] = indptr[columns[present] + 1]
    return out


# -- reading from an open file ---------------------------------------------------------------------
def _read_blob(h5file, key: str) -> list[str] | None:
    if key not in h5file:
        return None
    blob = h5file[key][()].tobytes().decode("utf-8")
    return blob.split("\n") if blob else []


def _blob_bytes(dataset) -> bytes:
    """The bytes of a 1-D uint8 dataset (one plain read when stored raw, else h5py)."""
    raw = RawReader.open(dataset)
    if raw is None:
        return dataset[()].tobytes()
    try:
        return raw.read_bytes(0, int(dataset.shape[0]))
    finally:
        raw.close()


def read_obs_labels(h5file) -> pd.Index:
    """Read the cell labels (``obs`` index) of an open h5ad file, fast for gene indexes.

    Parameters
    ----------
    h5file : h5py.File
        An h5ad file (a gene index or any other).

    Returns
    -------
    pandas.Index
        The labels, as ``str``.
    """
    labels = _read_blob(h5file, LABELS_BLOB)
    if labels is not None:
        name = h5file["obs"].attrs.get("_index", "_index")
        return pd.Index(labels, dtype=object, name=None if name == "_index" else name)
    return read_index(h5file["obs"])


def read_var_column(h5file, column: str | None) -> np.ndarray:
    """Read the ``var`` index (*column* None) or a ``var`` string column of an open h5ad file.

    Parameters
    ----------
    h5file : h5py.File
        An h5ad file (a gene index or any other).
    column : str or None
        A string column of ``var`` (e.g. ``"gene_symbol"``); None for the index.

    Returns
    -------
    numpy.ndarray
        Object array of ``str``.
    """
    blob = _read_blob(h5file, var_text_key(column))
    if blob is not None:
        return np.array(blob, dtype=object)
    if column is None:
        return read_index(h5file["var"]).to_numpy(dtype=object)
    return read_strings(h5file["var"][column])


class IndexTables:
    """The cell labels and gene names of one gene index file, read lazily and kept.

    Each piece is read from the open file passed in on first use: the labels as one UTF-8 text
    (to compare a caller's labels in one memory comparison), their fixed-width keys with sorted
    hashes (to match labels in another order without decoding strings), the ``var`` texts (to
    find genes with ``bytes.find``), ``X/indptr``, and the labels as a pandas Index only if asked
    for. Safe to share between threads.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pieces: dict[str, object] = {}

    def _get(self, name: str, load: Callable[[], object]):
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
        """A ``var`` column as newline-framed UTF-8 text, or None if the file does not store it."""
        key = var_text_key(column)

        def load():
            if key not in h5file:
                return None
            return b"\n" + _blob_bytes(h5file[key]) + b"\n"
        return self._get(key, load)

    def var_rows(self, h5file, column: str | None, wanted: Sequence[str]) -> np.ndarray | None:
        """:func:`line_numbers` of *wanted* in a ``var`` column; names found once are kept.

        None if the file does not store the column as text (see :meth:`var_text`).
        """
        text = self.var_text(h5file, column)
        if text is None:
            return None
        known: dict[str, int] = self._get(f"found_{column or 'index'}", dict)  # name -> row
        names = [str(name) for name in wanted]
        new = [name for name in dict.fromkeys(names) if name not in known]
        if new:
            rows = line_numbers(text, new)
            with self._lock:
                known.update(zip(new, rows.tolist(), strict=True))
        return np.array([known[name] for name in names], dtype=np.int64)

    def same_labels(self, h5file, values: np.ndarray, step: int = 16384) -> bool:
        """True if *values* (str) are the file's cell labels, in order.

        The labels are joined and compared with the stored text a slice of *step* labels at a
        time (small buffers that stay in the CPU cache, no 5 MB string built); the stored text is
        read in matching pieces straight from the file into one reused buffer when it is not in
        memory yet. The comparisons are in place (``startswith``: no copies). False as soon as a
        piece differs, or if a label is not an ASCII ``str``.
        """
        cached = self._pieces.get("text")
        text = cached if isinstance(cached, bytes) else None  # set by text(), read below
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
                if text is not None:
                    same = text.startswith(encoded, pos) and (end == size or text[end] == 10)
                elif raw is not None:
                    stop = min(end + 1, size)  # with the newline that must follow
                    if len(buffer) < stop - pos:
                        buffer = bytearray(max(stop - pos, 2 * len(buffer)))
                    raw.read(pos, stop, np.frombuffer(buffer, dtype=np.uint8))
                    same = buffer.startswith(encoded) and (end == size or buffer[end - pos] == 10)
                else:  # cannot happen: the labels are either in memory or read straight from the file
                    raise RuntimeError("same_labels() has neither the label text nor a raw reader "
                                       f"of '{LABELS_BLOB}'; this is a bug in abc_helpers.")
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
        comparison); otherwise they are matched with :func:`match_label_keys`.

        Raises
        ------
        NoFastPath
            If the file has no label keys, or :func:`match_label_keys` raises it.
        """
        if labels is self._pieces.get("index"):
            return None
        values = labels.to_numpy()
        if len(values) == self.n_obs(h5file) and self.same_labels(h5file, values):
            return None
        stored = self.keys(h5file)
        if stored is None:
            raise NoFastPath("the file has no label keys")
        return match_label_keys(values, *stored)


_TABLES: OrderedDict[tuple, IndexTables] = OrderedDict()
_TABLES_LOCK = threading.Lock()


def index_tables(h5file) -> IndexTables | None:
    """The :class:`IndexTables` of an open gene index file, or None if it is not one.

    Kept in memory for the last :data:`LABEL_CACHE_SIZE` files, keyed by path, size and
    modification time, so repeated queries in one session do not read them again (the first
    query of a session reads them: about 10 MB for 200,000 cells).

    Parameters
    ----------
    h5file : h5py.File
        An open h5ad file.

    Returns
    -------
    IndexTables or None
        None if *h5file* is not a gene index.
    """
    path = str(Path(h5file.filename).resolve())
    st = Path(path).stat()
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


def var_positions(h5file, column: str | None, wanted: Sequence[str],
                  tables: IndexTables | None) -> np.ndarray:
    """Row of the first occurrence of each *wanted* value in a ``var`` column (-1 if absent).

    In a gene index, the names are searched in the stored UTF-8 text without decoding it
    (:func:`line_numbers`); otherwise the column is read.

    Parameters
    ----------
    h5file : h5py.File
        An open h5ad file.
    column : str or None
        A string column of ``var``; None for the index.
    wanted : sequence of str
        The names to find.
    tables : IndexTables or None
        :func:`index_tables` of *h5file* (None for a file that is not a gene index).

    Returns
    -------
    numpy.ndarray
        ``int64``: the row of each name, -1 where absent.
    """
    found = tables.var_rows(h5file, column, wanted) if tables is not None else None
    if found is not None:
        return found
    index = pd.Index(read_var_column(h5file, column))
    if index.is_unique:
        return np.asarray(index.get_indexer(pd.Index(wanted)), dtype=np.int64)
    first = ~index.duplicated()
    rows = index[first].get_indexer(pd.Index(wanted))
    return np.where(rows >= 0, np.flatnonzero(first)[rows], -1).astype(np.int64)


_INFO: OrderedDict[tuple, dict | None] = OrderedDict()
_INFO_LOCK = threading.Lock()


def read_gene_index_info(path: str | Path) -> dict | None:
    """Return the provenance of a gene index (format, source file, source md5, shape), or None.

    The answer is kept for the last :data:`LABEL_CACHE_SIZE` files, keyed by path, size and
    modification time (as :func:`index_tables`): the check that an index is valid, done before
    every query by :func:`~abc_helpers.gene_index.find_gene_index`, opens the file once per
    session instead of once per query.

    Parameters
    ----------
    path : str or Path
        A gene index file.

    Returns
    -------
    dict or None
        ``{"format", "source_file", "source_md5", "shape"}``; None if *path* is missing,
        unreadable or not a gene index of this version's :data:`FORMAT`.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return None
    if not path.is_file():
        return None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _INFO_LOCK:
        if key in _INFO:
            _INFO.move_to_end(key)
            info = _INFO[key]
            return None if info is None else dict(info)
    info = _read_info(path)
    with _INFO_LOCK:
        _INFO[key] = info
        while len(_INFO) > LABEL_CACHE_SIZE:
            _INFO.popitem(last=False)
    return None if info is None else dict(info)


def _read_info(path: Path) -> dict | None:
    import h5py

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
