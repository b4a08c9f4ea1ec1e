"""The gene indexes of a release's matrices, through an AbcProjectCache: list, find and build them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..manifest import DataTypeNotInDirectory
from ..progress import ProgressBar
from .reader import gene_index_path, read_gene_index_info
from .writer import DEFAULT_RUN_NNZ, write_gene_index

if TYPE_CHECKING:
    from ..cache import AbcProjectCache

LOGGER = logging.getLogger("abc_helpers")

__all__ = ["build_gene_index", "data_files", "find_gene_index"]


def data_files(abc_cache: AbcProjectCache, directory: str) -> list[str]:
    """The data file names of *directory* in the loaded release; empty if it has none.

    Like ``abc_cache.list_data_files(directory)``, but a metadata-only directory, or one that is
    not in the release, gives an empty list instead of an error.

    Parameters
    ----------
    abc_cache : AbcProjectCache
        The cache of the release.
    directory : str
        A directory of the release, e.g. ``'WMB-10Xv2'``.

    Returns
    -------
    list of str
        E.g. ``['WMB-10Xv2-HPF/log2', 'WMB-10Xv2-HPF/raw', ...]``.
    """
    if directory not in abc_cache.list_directories:
        return []
    try:
        return list(abc_cache.list_data_files(directory))
    except DataTypeNotInDirectory:
        return []


def find_gene_index(abc_cache: AbcProjectCache, directory: str, file_name: str) -> Path | None:
    """Return the path of a valid gene index of one matrix of the loaded release, or None.

    Valid means: it exists, has this version's format and records the md5 that the release's
    manifest gives for the matrix. A stale index (another release's file) is ignored, with a
    warning in the log.

    Parameters
    ----------
    abc_cache : AbcProjectCache
        The cache of the release.
    directory : str
        The matrix's directory, e.g. ``'WMB-10Xv2'``.
    file_name : str
        The matrix, e.g. ``'WMB-10Xv2-TH/log2'``.

    Returns
    -------
    Path or None
        The index beside the matrix in the cache folder, or None if there is no valid one.
    """
    attrs = abc_cache.get_file_attributes(directory, file_name)
    path = gene_index_path(abc_cache.cache_folder.path(attrs.relative_path))
    info = read_gene_index_info(path)
    if info is None:
        return None
    if info["source_md5"].lower() != attrs.file_hash.lower():
        LOGGER.warning("Ignoring the gene index %s: it was built from a file with md5 %s, but the "
                       "loaded release's %s/%s has md5 %s. Rebuild it with build_gene_index.",
                       path, info["source_md5"], directory, file_name, attrs.file_hash)
        return None
    return path


def _matrices(abc_cache: AbcProjectCache, matrices: Sequence[str] | pd.DataFrame | str | None,
              data_type: str) -> list[tuple[str, str]]:
    """Resolve *matrices* to ``(directory, file_name)`` pairs of the loaded release."""
    listing = {d: data_files(abc_cache, d) for d in abc_cache.list_directories}
    by_matrix = {}
    for directory, names in listing.items():
        for name in names:
            if name.endswith(f"/{data_type}"):
                by_matrix[name.rsplit("/", 1)[0]] = (directory, name)
    if matrices is None:
        folder = abc_cache.cache_folder
        found = [pair for pair in by_matrix.values()
                 if folder.path(abc_cache.get_file_attributes(*pair).relative_path).is_file()]
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
    abc_cache: AbcProjectCache,
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

    Examples
    --------
    >>> build_gene_index(abc_cache, ["WMB-10Xv2-TH"])  # doctest: +SKIP
    {'WMB-10Xv2/WMB-10Xv2-TH/log2': PosixPath('.../WMB-10Xv2-TH-log2.gene_index.h5ad')}
    """
    built = {}
    todo = []
    pairs = _matrices(abc_cache, matrices, data_type)
    for directory, file_name in pairs:
        existing = None if force else find_gene_index(abc_cache, directory, file_name)
        if existing is not None:
            built[f"{directory}/{file_name}"] = existing
        else:
            todo.append((directory, file_name))
    # one overall bar; each matrix's download and indexing bars share its line and are cleared
    with ProgressBar(total=len(todo), unit="matrix", desc=f"Indexing {len(todo)} matrices",
                     disable=not progressbar or not todo) as bar:
        for directory, file_name in todo:
            attrs = abc_cache.get_file_attributes(directory, file_name)
            source = abc_cache.get_data_path(directory, file_name, progressbar=progressbar)
            built[f"{directory}/{file_name}"] = write_gene_index(
                source, source_md5=attrs.file_hash, source_file=attrs.relative_path,
                run_nnz=run_nnz, progressbar=progressbar)
            bar.update(1)
    return {f"{d}/{f}": built[f"{d}/{f}"] for d, f in pairs}
