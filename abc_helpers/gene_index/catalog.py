"""Serving gene indexes: the sidecar files and the per-release catalog a remote client reads.

A gene index (:func:`~abc_helpers.gene_index.write_gene_index`) holds each gene's values in one
contiguous slice of ``X/indices`` and ``X/data``. Served over HTTP, a client can read just those
slices with ``Range`` requests, if it knows where they are; this module writes what it needs to
know, so that it never parses HDF5 over the network. Next to each index (in a mirror's bucket
folder, or any folder laid out like the bucket)::

    expression_matrices/<dir>/<version>/<matrix>.gene_index.h5ad            the index (a valid h5ad)
    expression_matrices/<dir>/<version>/<matrix>.gene_index.genes.bin       the gene table
    expression_matrices/<dir>/<version>/<matrix>.gene_index.labels.txt      the cell labels
    expression_matrices/<dir>/<version>/<matrix>.gene_index.var.tsv         the genes
    gene-index/releases/<YYYYMMDD>/catalog.json                             one catalog per release

* The **gene table** has one 16-byte little-endian record per gene, plus one after the last:
  ``start`` (int64, the gene's first value in ``X/indices`` and ``X/data``; the next record's
  ``start`` ends it), ``crc_indices`` and ``crc_data`` (uint32, the CRC-32 of the gene's bytes in
  each array). A client downloads the whole table once per matrix (verified by its md5 from the
  catalog, then kept in its cache folder) and checks every slice it receives against it, so a
  damaged byte anywhere (slice or table) is detected.
* The **labels** are the cell labels (the ``obs`` index), UTF-8, one per line, in row order.
* The **var** file has ``gene_identifier<TAB>gene_symbol`` lines, in column order.
* The **catalog** (JSON, format :data:`CATALOG_FORMAT`) lists, for each expression matrix of the
  release that has an index: the source matrix's relative path, md5 and size (a client refuses an
  index built from another file), the index's relative path, size and md5, ``shape``, ``nnz``,
  the byte ``offset`` and ``dtype`` of ``X/indices`` and ``X/data`` in the index file, and the
  relative path, size and md5 of each sidecar (the var entry also has the SHA-256 of its
  identifiers joined by newlines, so a client whose gene table is in the same order need not
  fetch it). A client checks the catalog itself against the md5 the bucket's listing gives for
  it (its S3 ETag), so every byte it reads is checked against a hash it did not read from the
  same body.

Any static HTTPS server or S3 bucket that honours ``Range`` can serve these files: put them at the
same keys under ``<root>/allen-brain-cell-atlas/`` and pass ``<root>`` as the data source (or as
``gene_index_source`` of :func:`~abc_helpers.get_gene_data`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..cachefolder import atomic_path, atomic_write_text
from .matrices import build_gene_index, data_files
from .reader import read_gene_index_info, read_obs_labels, read_var_column

if TYPE_CHECKING:
    from ..cache import AbcProjectCache
    from ..manifest import FileAttributes

LOGGER = logging.getLogger("abc_helpers")

__all__ = [
    "CATALOG_FORMAT",
    "CATALOG_PREFIX",
    "GENE_TABLE_DTYPE",
    "SIDECARS",
    "catalog_entry",
    "catalog_key",
    "catalog_text",
    "describe_gene_index",
    "identifiers_sha256",
    "sidecar_path",
    "write_catalog",
]

#: The catalog format this version writes and reads.
CATALOG_FORMAT = "abc_helpers.gene_index_catalog/1"
#: Where the catalogs live in the bucket layout: ``<prefix><release>/catalog.json``.
CATALOG_PREFIX = "gene-index/releases/"
#: One record of the gene table.
GENE_TABLE_DTYPE = np.dtype([("start", "<i8"), ("crc_indices", "<u4"), ("crc_data", "<u4")])
#: Sidecar suffixes, after the index's own name.
SIDECARS = {"gene_table": ".genes.bin", "labels": ".labels.txt", "var": ".var.tsv"}
#: Bytes per read while describing an index.
_CHUNK = 16 << 20


def catalog_key(release: str) -> str:
    """The key of a release's catalog, e.g. ``'gene-index/releases/20231215/catalog.json'``.

    Examples
    --------
    >>> catalog_key("20231215")
    'gene-index/releases/20231215/catalog.json'
    """
    return f"{CATALOG_PREFIX}{release}/catalog.json"


def sidecar_path(index: str | Path, kind: str) -> str | Path:
    """The path (or key) of one sidecar of an index: *kind* is a key of :data:`SIDECARS`.

    Examples
    --------
    >>> sidecar_path("expression_matrices/A/20230630/A-log2.gene_index.h5ad", "labels")
    'expression_matrices/A/20230630/A-log2.gene_index.labels.txt'
    """
    if isinstance(index, Path):
        return index.with_name(index.name.removesuffix(".h5ad") + SIDECARS[kind])
    return str(index).removesuffix(".h5ad") + SIDECARS[kind]


def identifiers_sha256(identifiers: list[str] | np.ndarray) -> str:
    """SHA-256 (hex) of gene identifiers joined by newlines: the identity of a gene order.

    Examples
    --------
    >>> identifiers_sha256(["a", "b"]) == hashlib.sha256(b"a\\nb").hexdigest()
    True
    """
    return hashlib.sha256("\n".join(str(i) for i in identifiers).encode("utf-8")).hexdigest()


def _contiguous(dataset: Any, where: str) -> int:
    """The file offset of an uncompressed, contiguous dataset (what a range request can read)."""
    offset = dataset.id.get_offset()
    if dataset.chunks is not None or dataset.compression is not None or offset is None:
        msg = (f"{where} of the gene index is chunked or compressed: a served index needs plain "
               "contiguous arrays. Rebuild it with build_gene_index(..., force=True).")
        raise ValueError(msg)
    return int(offset)


def _gene_checksums(path: Path, indptr: np.ndarray, regions: dict[str, tuple[int, int]]) -> tuple[
        dict[str, np.ndarray], str]:
    """One pass over the file: the md5 of all of it and the CRC-32 of every gene's slice.

    *regions*: ``{name: (byte offset, item size)}`` of the arrays to checksum gene by gene.
    """
    md5 = hashlib.md5(usedforsecurity=False)
    crcs = {name: np.zeros(len(indptr) - 1, dtype=np.uint32) for name in regions}
    # byte boundaries of the genes in the file, per array
    bounds = {name: offset + indptr * size for name, (offset, size) in regions.items()}
    gene = dict.fromkeys(regions, 0)
    position = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            md5.update(chunk)
            end = position + len(chunk)
            view = memoryview(chunk)
            for name, edges in bounds.items():
                g = gene[name]
                n = len(edges) - 1
                while g < n and edges[g + 1] <= position:  # genes that ended before this chunk
                    g += 1
                while g < n and edges[g] < end:
                    lo, hi = max(int(edges[g]), position), min(int(edges[g + 1]), end)
                    if hi > lo:
                        crcs[name][g] = zlib.crc32(view[lo - position:hi - position], int(crcs[name][g]))
                    if edges[g + 1] > end:
                        break  # this gene goes on in the next chunk
                    g += 1
                gene[name] = g
            position = end
    return crcs, md5.hexdigest()


def _md5_of(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _write_bytes(path: Path, data: bytes) -> dict[str, Any]:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return {"size": len(data), "md5": _md5_of(data)}


def describe_gene_index(index: str | Path, relative_path: str) -> dict[str, Any]:
    """Write the sidecars of one gene index and return its catalog entry.

    Parameters
    ----------
    index : str or Path
        A gene index file (written by :func:`~abc_helpers.gene_index.write_gene_index`).
    relative_path : str
        Its key in the bucket layout (sidecar keys are derived from it).

    Returns
    -------
    dict
        The catalog entry (see the module docstring), without the ``directory`` and
        ``file_name`` of the matrix, which the caller knows.

    Raises
    ------
    ValueError
        If *index* is not a gene index of this version, or its arrays are chunked or compressed.
    """
    import h5py

    index = Path(index)
    info = read_gene_index_info(index)
    if info is None:
        msg = (f"'{index}' is not a gene index of this version of abc_helpers: build it with "
               "build_gene_index (or write_gene_index).")
        raise ValueError(msg)
    with h5py.File(index, "r") as f:
        x = f["X"]
        indptr = x["indptr"][()].astype(np.int64)
        arrays = {name: {"offset": _contiguous(x[name], f"X/{name}"), "dtype": x[name].dtype.str}
                  for name in ("indices", "data")}
        sizes = {name: x[name].dtype.itemsize for name in ("indices", "data")}
        labels = "\n".join(read_obs_labels(f).astype(str)).encode("utf-8")
        identifiers = read_var_column(f, None)
        symbols = read_var_column(f, "gene_symbol") if "gene_symbol" in f["var"] else identifiers
    crcs, md5 = _gene_checksums(index, indptr, {n: (a["offset"], sizes[n]) for n, a in arrays.items()})
    table = np.zeros(len(indptr), dtype=GENE_TABLE_DTYPE)
    table["start"] = indptr
    table["crc_indices"][:-1] = crcs["indices"]
    table["crc_data"][:-1] = crcs["data"]
    var_text = "".join(f"{i}\t{s}\n" for i, s in zip(identifiers, symbols, strict=True)).encode("utf-8")
    entry: dict[str, Any] = {
        "source": {"relative_path": info["source_file"], "md5": info["source_md5"]},
        "index": {"relative_path": relative_path, "size": index.stat().st_size, "md5": md5,
                  "format": info["format"]},
        "shape": list(info["shape"]),
        "nnz": int(indptr[-1]),
        **arrays,
    }
    for kind, data in (("gene_table", table.tobytes()), ("labels", labels), ("var", var_text)):
        entry[kind] = {"relative_path": sidecar_path(relative_path, kind),
                       **_write_bytes(Path(sidecar_path(index, kind)), data)}
    entry["labels"]["count"] = int(info["shape"][0])
    entry["var"]["identifiers_sha256"] = identifiers_sha256(identifiers)
    return entry


def catalog_entry(attrs: FileAttributes, index: Path, index_relative_path: str) -> dict[str, Any]:
    """Write the sidecars of the gene index of one matrix of a release; return its catalog entry.

    Parameters
    ----------
    attrs : FileAttributes
        The matrix, as the release's manifest describes it.
    index : Path
        Its gene index file.
    index_relative_path : str
        The index's key in the bucket layout.

    Raises
    ------
    ValueError
        If the index was built from another file than the release's (another md5).
    """
    entry = describe_gene_index(index, index_relative_path)
    if entry["source"]["md5"].lower() != attrs.file_hash.lower():
        msg = (f"The gene index '{index}' was built from a file with md5 {entry['source']['md5']}, "
               f"not from {attrs.relative_path} (md5 {attrs.file_hash}): rebuild it.")
        raise ValueError(msg)
    entry["source"]["size"] = attrs.size
    return {"directory": attrs.directory, "file_name": attrs.name, **entry}


def catalog_text(release: str, manifest: str | None, entries: list[dict[str, Any]]) -> str:
    """The catalog of a release, as JSON text (entries sorted by directory and file name)."""
    catalog = {"format": CATALOG_FORMAT, "release": release, "manifest": manifest,
               "indexes": sorted(entries, key=lambda e: (e["directory"], e["file_name"]))}
    return json.dumps(catalog, indent=1)


def write_catalog(
    abc_cache: AbcProjectCache,
    data_types: tuple[str, ...] = ("log2", "raw"),
    build: bool = True,
    progressbar: bool = True,
) -> Path:
    """Index the loaded release's downloaded matrices and write their sidecars and catalog.

    For every expression matrix of the release that is in the cache folder (of the given data
    types), the gene index is built if needed (:func:`build_gene_index`), its sidecars are
    written and its entry goes into ``gene-index/releases/<release>/catalog.json``. The index,
    the sidecars and the catalog are recorded with their md5 in the cache folder's record (a
    mirror serves them with those md5s as ETags). Serve the folder (``serve --mirror``) or copy
    it to any static server.

    Parameters
    ----------
    abc_cache : AbcProjectCache
        A downloading cache (e.g. a mirror's ``allen-brain-cell-atlas`` folder), with the release
        loaded.
    data_types : tuple of str
        Which matrices of each pair (``"log2"``, ``"raw"``) to index, when downloaded.
    build : bool
        Build missing indexes; False describes only the indexes already built.
    progressbar : bool
        Show progress bars while building.

    Returns
    -------
    Path
        The catalog.
    """
    release = abc_cache.manifest.version
    folder = abc_cache.cache_folder
    entries = []
    started = time.perf_counter()
    for directory in abc_cache.list_directories:
        for file_name in data_files(abc_cache, directory):
            if file_name.rsplit("/", 1)[-1] not in data_types:
                continue
            attrs = abc_cache.get_file_attributes(directory, file_name)
            if attrs.file_type != "h5ad" or not folder.path(attrs.relative_path).is_file():
                continue
            if build:
                path = build_gene_index(abc_cache, [file_name.rsplit("/", 1)[0]],
                                        data_type=file_name.rsplit("/", 1)[1],
                                        progressbar=progressbar)[f"{directory}/{file_name}"]
            else:
                from .matrices import find_gene_index

                found = find_gene_index(abc_cache, directory, file_name)
                if found is None:
                    continue
                path = found
            entry = catalog_entry(attrs, path, folder.relative(path))
            entries.append(entry)
            folder.record({folder.relative(path): f"md5:{entry['index']['md5']}",
                           **{entry[k]["relative_path"]: f"md5:{entry[k]['md5']}" for k in SIDECARS}})
    key = catalog_key(release)
    text = catalog_text(release, abc_cache.current_manifest, entries)
    atomic_write_text(folder.path(key), text)
    folder.record({key: f"md5:{_md5_of(text.encode())}"})
    LOGGER.info("Gene index catalog of release %s: %d indexes, written in %.1f s", release,
                len(entries), time.perf_counter() - started)
    return folder.path(key)
