"""Reading a served gene index over HTTP: only the byte ranges of the genes asked for.

The server side is :mod:`abc_helpers.gene_index.catalog` (the catalog and the sidecar files). A
query of one matrix reads, through :mod:`abc_helpers.transfer` (retries, time-outs, resume):

1. the release's catalog, once per process (a few kB), checked against the md5 (S3 ETag) the
   bucket's listing gives for it;
2. once per matrix, the cell labels and the gene table (the index pointer with a CRC-32 per gene,
   16 bytes a gene): sidecar files downloaded into the local cache folder, verified with their md5
   from the catalog, and used again while the catalog gives the same md5s;
3. each selected gene's slice of ``X/indices`` and ``X/data`` (adjacent slices in one request,
   requests in parallel), each checked against its CRC-32, and fetched again if it does not match.

No matrix and no HDF5 metadata is downloaded. :func:`remote_extract_task` is the unit of work
:func:`~abc_helpers.get_gene_data` submits per matrix (plain, picklable arguments).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..cachefolder import CacheFolder
from ..sources import ABC_BUCKET, Source, get_source
from ..transfer import DownloadError, RequestRefused, download, list_objects, read_range
from .catalog import CATALOG_FORMAT, GENE_TABLE_DTYPE, catalog_key

LOGGER = logging.getLogger("abc_helpers")

__all__ = ["MAX_GAP", "ServedIndex", "forget_served_indexes", "load_catalog", "read_served_genes", "remote_extract_task",
           "served_indexes"]

#: Two byte ranges of the values closer than this are read with one request (the gap is dropped).
MAX_GAP = 4096
#: Parallel range requests per matrix.
MAX_REQUESTS = 16
#: Times a slice whose CRC does not match is fetched again before giving up.
CHECKSUM_RETRIES = 3
#: Parsed cell labels and gene tables kept in memory, by md5 (most recently used).
_PARSED: OrderedDict[str, Any] = OrderedDict()
_PARSED_KEEP = 16
_PARSED_LOCK = threading.Lock()
_CATALOGS: dict[tuple[str, str], dict | None] = {}
_CATALOGS_LOCK = threading.Lock()


@dataclass(frozen=True)
class ServedIndex:
    """One matrix's served gene index: where it is and its catalog entry (picklable).

    Attributes
    ----------
    source : str
        ``"aws"`` or the root URL serving the index (the bucket folder is below it).
    cache_dir : str
        The local cache folder, where the labels (and the genes, if needed) are kept.
    entry : dict
        The matrix's catalog entry.
    """

    source: str
    cache_dir: str
    entry: dict

    @property
    def name(self) -> str:
        """``'<directory>/<file_name>'``, e.g. ``'WMB-10Xv2/WMB-10Xv2-TH/log2'``."""
        return f"{self.entry['directory']}/{self.entry['file_name']}"

    def url(self, part: str) -> str:
        """The URL of the index (*part* ``"index"``) or of one of its sidecars."""
        return get_source(self.source).object_url(ABC_BUCKET, self.entry[part]["relative_path"])


def forget_served_indexes() -> None:
    """Forget the catalogs and cell labels this process has read (e.g. after a server's indexes
    were rebuilt); the next query reads the catalog again and checks the labels' md5."""
    with _CATALOGS_LOCK:
        _CATALOGS.clear()
    with _PARSED_LOCK:
        _PARSED.clear()


def _source_text(source: Source) -> str:
    return source.name if source.root is None else source.root


def load_catalog(source: str | Source, release: str, cache_dir: str | Path) -> dict | None:
    """The gene index catalog of *release* at *source*, or None if it serves none.

    Fetched once per process and source (the file is kept in the cache folder too), and checked
    against the md5 the bucket's listing gives for it (its S3 ETag): a damaged catalog is fetched
    again, and an error if it stays damaged. A server that answers no listing (a static HTTPS
    server) gives an unchecked catalog, said so in the log. A catalog of another format is
    refused (None, with a warning in the log).

    Parameters
    ----------
    source : str or Source
        Where the indexes are served (``"sample"``, a mirror URL, ...).
    release : str
        The release, e.g. ``'20231215'``.
    cache_dir : str or Path
        The local cache folder.

    Returns
    -------
    dict or None
        The parsed catalog.
    """
    src = get_source(source)
    memo = (_source_text(src), release)
    with _CATALOGS_LOCK:
        if memo in _CATALOGS:
            return _CATALOGS[memo]
    key = catalog_key(release)
    path = CacheFolder(cache_dir).path(key)
    try:
        known_hash = _listed_md5(src, key)
        download(src.object_url(ABC_BUCKET, key), path, known_hash=known_hash, progressbar=False,
                 force=True, retries=2)
    except FileNotFoundError as error:
        LOGGER.info("No gene index catalog at %s: %s", src.object_url(ABC_BUCKET, key), error)
        catalog = None
    except DownloadError as error:
        if "HTTP 404" not in str(error) and "HTTP 403" not in str(error):
            raise
        LOGGER.info("No gene index catalog at %s: %s", src.object_url(ABC_BUCKET, key), error)
        catalog = None
    else:
        try:
            catalog = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            LOGGER.warning("Ignoring the gene index catalog %s: not JSON (%s).", path, error)
            catalog = None
        if catalog is not None and catalog.get("format") != CATALOG_FORMAT:
            LOGGER.warning("Ignoring the gene index catalog %s: format %r, this version reads %r.",
                           path, catalog.get("format"), CATALOG_FORMAT)
            catalog = None
    with _CATALOGS_LOCK:
        _CATALOGS[memo] = catalog
    return catalog


def _listed_md5(src: Source, key: str) -> str | None:
    """``"md5:<hex>"`` of *key* from the bucket's listing (its ETag), or None if the server lists
    nothing (a static server: the catalog goes unchecked) or the ETag is not an md5 (multipart).

    Raises
    ------
    FileNotFoundError
        If the listing has no such key (the source serves no catalog for the release).
    """
    try:
        listed = list_objects(src.bucket_url(ABC_BUCKET), prefix=key)
    except DownloadError as error:
        if not isinstance(error, RequestRefused) and "not an S3 listing" not in str(error):
            raise  # the listing kept failing: so would the catalog
        LOGGER.warning("Could not check the gene index catalog %s against a listing (%s); reading "
                       "it unchecked.", key, error)
        return None
    etag = next((o["etag"] for o in listed if o["key"] == key), None)
    if etag is None:
        raise FileNotFoundError(f"the listing of {src.bucket_url(ABC_BUCKET)} has no {key}")
    if len(etag) != 32 or "-" in etag:
        LOGGER.info("The gene index catalog %s has a multipart ETag %s: not an md5; read unchecked.",
                    key, etag)
        return None
    return f"md5:{etag.lower()}"


def served_indexes(abc_cache: Any, source: str | Source | None = None) -> dict[str, ServedIndex | str]:
    """The served gene index of each expression matrix of the loaded release, or why there is none.

    Parameters
    ----------
    abc_cache : AbcProjectCache
        A downloading cache with a release loaded.
    source : str, Source or None
        Where the indexes are served; None: the cache's own source.

    Returns
    -------
    dict
        ``{'<directory>/<file_name>': ServedIndex}`` for matrices with a usable index, and
        ``{'<directory>/<file_name>': reason}`` (a str) for those whose served index was refused
        (built from another file than the release's). Matrices absent from the catalog are absent.
    """
    src = get_source(source) if source is not None else abc_cache.source
    if src is None:
        return {}
    release = abc_cache.manifest.version
    catalog = load_catalog(src, release, abc_cache.cache_dir)
    if catalog is None:
        return {}
    out: dict[str, ServedIndex | str] = {}
    for entry in catalog.get("indexes", []):
        name = f"{entry['directory']}/{entry['file_name']}"
        try:
            attrs = abc_cache.get_file_attributes(entry["directory"], entry["file_name"])
        except KeyError:
            continue
        if str(entry["source"]["md5"]).lower() != attrs.file_hash.lower():
            out[name] = (f"the served index of {name} was built from a file with md5 "
                         f"{entry['source']['md5']}, but release {release} has md5 {attrs.file_hash}")
            continue
        out[name] = ServedIndex(_source_text(src), str(abc_cache.cache_dir), entry)
    return out


# -- one matrix -------------------------------------------------------------------------------------
def _sidecar(index: ServedIndex, kind: str) -> Path:
    """Download (once, verified by md5) a sidecar of *index* into the cache folder."""
    folder = CacheFolder(index.cache_dir)
    spec = index.entry[kind]
    rel, known = spec["relative_path"], f"md5:{spec['md5']}"
    path = folder.path(rel)
    if CacheFolder.matches(folder.read_record().get(rel), path, known):
        return path
    download(index.url(kind), path, known_hash=known, size=spec["size"], progressbar=False,
             force=path.exists())
    folder.record({rel: known})
    return path


def _parsed(index: ServedIndex, kind: str) -> Any:
    """A sidecar of *index*, downloaded once and parsed once per process (kept by md5)."""
    md5 = index.entry[kind]["md5"]
    with _PARSED_LOCK:
        if md5 in _PARSED:
            _PARSED.move_to_end(md5)
            return _PARSED[md5]
    data = _sidecar(index, kind).read_bytes()
    if kind == "labels":
        text = data.decode("utf-8")
        value: Any = pd.Index(text.split("\n") if text else [], dtype=object)
        count, expected = len(value), index.entry["labels"]["count"]
    else:
        value = np.frombuffer(data, dtype=GENE_TABLE_DTYPE)
        count, expected = len(value), index.entry["shape"][1] + 1
        if count == expected and int(value["start"][-1]) != index.entry["nnz"]:
            count = -1
    if count != expected:
        msg = (f"The {kind} file of the served index {index.name} does not fit its catalog entry "
               f"({count} records, {expected} expected): the server's files are inconsistent. "
               "Rebuild them (fill-mirror --gene-index).")
        raise ValueError(msg)
    with _PARSED_LOCK:
        _PARSED[md5] = value
        while len(_PARSED) > _PARSED_KEEP:
            _PARSED.popitem(last=False)
    return value


def _columns(index: ServedIndex, gene_ids: Sequence[str], order_sha256: str | None,
             positions: Sequence[int] | None) -> np.ndarray:
    """The column of each gene in the index: from the caller's gene order when it is the same,
    else from the served var file (downloaded once)."""
    if positions is not None and order_sha256 == index.entry["var"]["identifiers_sha256"]:
        return np.asarray(positions, dtype=np.int64)
    text = _sidecar(index, "var").read_text(encoding="utf-8")
    column: dict[str, int] = {}
    for i, line in enumerate(text.splitlines()):
        identifier, _, symbol = line.partition("\t")
        column.setdefault(identifier, i)
        column.setdefault(symbol, i)
    return np.array([column.get(str(g), -1) for g in gene_ids], dtype=np.int64)


def _coalesce(ranges: list[tuple[int, int]], max_gap: int = MAX_GAP) -> list[tuple[int, int]]:
    """Merge sorted ``[start, stop)`` byte ranges that overlap or are at most *max_gap* apart.

    Examples
    --------
    >>> _coalesce([(0, 10), (10, 20), (5000, 5010), (30, 40)], max_gap=16)
    [(0, 40), (5000, 5010)]
    """
    out: list[list[int]] = []
    for start, stop in sorted(r for r in ranges if r[1] > r[0]):
        if out and start - out[-1][1] <= max_gap:
            out[-1][1] = max(out[-1][1], stop)
        else:
            out.append([start, stop])
    return [(a, b) for a, b in out]


class _RangeReader:
    """Fetch byte ranges of one URL, coalesced and in parallel; slice pieces out of them."""

    def __init__(self, url: str, pool: ThreadPoolExecutor, max_gap: int = MAX_GAP) -> None:
        self.url, self.pool, self.max_gap = url, pool, max_gap
        self.blocks: list[tuple[int, bytes]] = []

    def fetch(self, ranges: list[tuple[int, int]]) -> None:
        merged = _coalesce(ranges, self.max_gap)
        datas = list(self.pool.map(lambda r: read_range(self.url, r[0], r[1]), merged))
        self.blocks = [(start, data) for (start, _), data in zip(merged, datas, strict=True)]

    def piece(self, start: int, stop: int) -> memoryview:
        if stop == start:
            return memoryview(b"")
        for begin, data in self.blocks:
            if begin <= start and stop <= begin + len(data):
                return memoryview(data)[start - begin:stop - begin]
        raise LookupError(f"bytes {start}-{stop} were not fetched")  # a bug, not a server fault


def read_served_genes(index: ServedIndex, columns: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Fetch the rows and values of the given columns of a served index, checked by CRC-32.

    Parameters
    ----------
    index : ServedIndex
        The served index.
    columns : numpy.ndarray
        Distinct column numbers (>= 0).

    Returns
    -------
    (list of numpy.ndarray, list of numpy.ndarray)
        For each column, its row numbers and its values.

    Raises
    ------
    DownloadError
        If a range cannot be read, or a slice still fails its checksum after
        :data:`CHECKSUM_RETRIES` fetches (the message names the matrix, the URL and the gene).
    """
    entry = index.entry
    table = _parsed(index, "gene_table")
    url = index.url("index")
    dtypes = {name: np.dtype(entry[name]["dtype"]) for name in ("indices", "data")}

    def span(j: int, name: str) -> tuple[int, int]:
        c, size = int(columns[j]), dtypes[name].itemsize
        return (entry[name]["offset"] + int(table["start"][c]) * size,
                entry[name]["offset"] + int(table["start"][c + 1]) * size)

    rows: list[np.ndarray] = [np.empty(0, dtypes["indices"])] * len(columns)
    values: list[np.ndarray] = [np.empty(0, dtypes["data"])] * len(columns)
    todo = list(range(len(columns)))
    with ThreadPoolExecutor(MAX_REQUESTS) as pool:
        for attempt in range(CHECKSUM_RETRIES + 1):
            reader = _RangeReader(url, pool)
            reader.fetch([span(j, name) for j in todo for name in ("indices", "data")])
            failed = []
            for j in todo:
                c = int(columns[j])
                pieces = {name: reader.piece(*span(j, name)) for name in ("indices", "data")}
                if (zlib.crc32(pieces["indices"]) != int(table["crc_indices"][c])
                        or zlib.crc32(pieces["data"]) != int(table["crc_data"][c])):
                    failed.append(j)
                    continue
                rows[j] = np.frombuffer(pieces["indices"], dtype=dtypes["indices"])
                values[j] = np.frombuffer(pieces["data"], dtype=dtypes["data"])
            if not failed:
                return rows, values
            todo = failed
            if attempt < CHECKSUM_RETRIES:
                LOGGER.warning("%s: %d gene slice(s) of %s failed their CRC-32 check; fetching them again.",
                               index.name, len(failed), url)
    msg = (f"Could not read {index.name} from the served gene index {url}: the slices of "
           f"column(s) {[int(columns[j]) for j in todo][:5]} failed their CRC-32 check "
           f"{CHECKSUM_RETRIES + 1} times (a damaged file or a faulty connection). Check the "
           "server's files, or pass gene_index='off' to read the matrices instead.")
    raise DownloadError(msg)


def remote_extract_task(index: ServedIndex, labels: Sequence[str] | pd.Index | None,
                        gene_ids: Sequence[str], order_sha256: str | None = None,
                        positions: Sequence[int] | None = None) -> dict:
    """Read *gene_ids* for the cells *labels* from a served gene index (no matrix downloaded).

    The remote twin of :func:`abc_helpers.expression.extract_task`, returning the same dict.

    Parameters
    ----------
    index : ServedIndex
        The served index of one matrix.
    labels : sequence of str, pandas.Index or None
        The cells, in the order wanted; None: every cell, in row order.
    gene_ids : sequence of str
        Gene identifiers (or symbols).
    order_sha256, positions : str and sequence of int, or None
        The caller's gene order (:func:`~abc_helpers.gene_index.catalog.identifiers_sha256`) and
        the position of each of *gene_ids* in it: when the index has the same order, the served
        var file is not needed.

    Returns
    -------
    dict
        ``values``, ``missing_cells``, ``missing_genes``, ``layout`` (``"served gene index"``),
        ``seconds``, ``obs``.
    """
    started = time.perf_counter()
    if index.source not in ("aws", "sample"):
        get_source(index.source)  # allow plain HTTP to a mirror named by the caller, in this process
    gene_ids = list(gene_ids)
    cols = _columns(index, gene_ids, order_sha256, positions)
    present = np.unique(cols[cols >= 0])
    # the labels (cached after the first query) are read and parsed while the genes' ranges are
    # fetched: only the gene table is needed to ask for them
    with ThreadPoolExecutor(1) as pool:
        obs_future = pool.submit(_parsed, index, "labels")
        got_rows, got_values = read_served_genes(index, present) if present.size else ([], [])
        obs = obs_future.result()
    n_obs = len(obs)
    if labels is None:
        rows_out = None
        n_out = n_obs
    else:
        wanted = pd.Index(labels)
        n_out = len(wanted)
        if wanted.equals(obs):
            rows_out = None
        else:
            rows_in = obs.get_indexer(wanted)
            rows_out = np.full(n_obs, -1, dtype=np.int64)
            found = rows_in >= 0
            rows_out[rows_in[found]] = np.flatnonzero(found)
    out = np.zeros((len(cols), n_out), dtype=np.float32).T
    for col, r, v in zip(present, got_rows, got_values, strict=True):
        v = v.astype(np.float32, copy=False)
        for j in np.flatnonzero(cols == col):
            if rows_out is None:
                out[r, j] = v
            else:
                target = rows_out[r]
                keep = target >= 0
                out[target[keep], j] = v[keep]
    out[:, cols < 0] = np.nan
    missing_cells = 0
    if rows_out is not None:
        found_out = np.zeros(n_out, dtype=bool)
        found_out[rows_out[rows_out >= 0]] = True
        missing_cells = int((~found_out).sum())
        out[~found_out] = np.nan
    return {
        "values": out,
        "missing_cells": missing_cells,
        "missing_genes": [g for g, c in zip(gene_ids, cols, strict=True) if c < 0],
        "layout": "served gene index",
        "seconds": time.perf_counter() - started,
        "obs": obs if labels is None else None,
    }
