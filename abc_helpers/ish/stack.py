"""Expression stacks: many ISH grids in one float16 memmap, and the genes whose maps look alike."""

from __future__ import annotations

import difflib
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ..cachefolder import atomic_path, atomic_write_text
from .grids import BAR_FORMAT, GRID_SHAPE, read_grid_array, verify_grid

LOGGER = logging.getLogger("abc_helpers")

#: File names of an expression stack (as in iblatlas's AGEA cache) and of its correlation index.
STACK_FILE = "gene-expression.bin"
GENES_FILE = "gene-expression.pqt"
STACK_INFO_FILE = "gene-expression.json"
INDEX_FILE = "gene-expression-coarse.npy"



# -- stacks ---------------------------------------------------------------------------------------
def build_expression_stack(
    metadata: pd.DataFrame,
    grid_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    volume: str = "energy",
    progressbar: bool = True,
) -> Path:
    """Stack the grids of *metadata* into one float16 memmap (n, 58, 41, 67), as iblatlas has it.

    Rows with ``success == False`` (if that column exists) or without a verified zip are left out.
    Writes ``gene-expression.bin`` (float16, (n, LR, DV, AP), -1 = no data),
    ``gene-expression.pqt`` (columns ``id`` and ``gene`` as strings, plus ``plane``), a small
    ``gene-expression.json`` and the correlation index used by :func:`correlated_genes`.

    Returns
    -------
    Path
        *out_dir*.
    """
    from tqdm import tqdm

    grid_dir, out_dir = Path(grid_dir), Path(out_dir)
    rows = metadata if "success" not in metadata.columns else metadata[metadata["success"].astype(bool)]
    keep = [r for r in rows.itertuples(index=False) if verify_grid(grid_dir / f"{int(r.experiment_id)}.zip")]
    if not keep:
        raise ValueError(f"No verified grid zips of these experiments in '{grid_dir}': run "
                         "download_grids() first.")
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / STACK_FILE) as part:
        mm = np.memmap(part, dtype=np.float16, mode="w+", shape=(len(keep), *GRID_SHAPE))
        for i, r in enumerate(tqdm(keep, desc="stack", unit="grid", file=sys.stderr,
                                   disable=not progressbar, bar_format=BAR_FORMAT)):
            array, _ = read_grid_array(grid_dir / f"{int(r.experiment_id)}.zip", volume)
            mm[i] = array.astype(np.float16)
        mm.flush()
        del mm
        genes = pd.DataFrame({"id": [str(int(r.experiment_id)) for r in keep],
                              "gene": [str(r.gene) for r in keep],
                              "plane": [str(getattr(r, "plane", "")) for r in keep]})
        with atomic_path(out_dir / GENES_FILE, suffix=".pqt") as tmp:
            genes.to_parquet(tmp, index=False)
        atomic_write_text(out_dir / STACK_INFO_FILE, json.dumps(
            {"shape": [len(keep), *GRID_SHAPE], "dtype": "float16", "axes": ["experiment", "ml", "dv", "ap"],
             "spacing_um": 200, "volume": volume}))
    build_correlation_index(out_dir)
    return out_dir


def load_expression_stack(out_dir: str | os.PathLike) -> tuple[pd.DataFrame, np.memmap]:
    """Open a stack written by :func:`build_expression_stack`: (genes table, float16 memmap)."""
    out_dir = Path(out_dir)
    info_path, bin_path = out_dir / STACK_INFO_FILE, out_dir / STACK_FILE
    if not bin_path.exists():
        raise FileNotFoundError(f"No expression stack in '{out_dir}' ('{STACK_FILE}' is missing): "
                                "build it with build_expression_stack().")
    genes = pd.read_parquet(out_dir / GENES_FILE)
    if info_path.exists():
        shape = tuple(json.loads(info_path.read_text())["shape"])
    else:
        shape = (len(genes), *GRID_SHAPE)
    return genes, np.memmap(bin_path, dtype=np.float16, mode="r", shape=shape)


def _coarse_rows(block: np.ndarray) -> np.ndarray:
    """Pool (k, 58, 41, 67) volumes 2x2x2 (mean of valid voxels), NaN where none is valid."""
    k = block.shape[0]
    data = np.full((k, 58, 42, 68), np.nan, np.float32)
    values = block.astype(np.float32)
    values[values < 0] = np.nan
    data[:, :, :41, :67] = values
    data = data.reshape(k, 29, 2, 21, 2, 34, 2)
    valid = ~np.isnan(data)
    total = np.where(valid, data, 0.0).sum(axis=(2, 4, 6))
    count = valid.sum(axis=(2, 4, 6))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / count).reshape(k, -1)


def _normalise(coarse: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Centre and scale each row over its valid voxels; missing voxels become 0."""
    rows = coarse[:, keep]
    mean = np.nanmean(rows, axis=1, keepdims=True)
    rows = np.nan_to_num(rows - mean, nan=0.0)
    norm = np.linalg.norm(rows, axis=1, keepdims=True)
    norm[norm == 0] = 1.0
    return (rows / norm).astype(np.float32)


def coarse_index(stack: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Return the correlation index of *stack*: 400 µm pooled, centred, unit-norm rows (float32)."""
    parts = [_coarse_rows(np.asarray(stack[i:i + chunk])) for i in range(0, len(stack), chunk)]
    coarse = np.concatenate(parts) if parts else np.zeros((0, 29 * 21 * 34), np.float32)
    keep = np.mean(~np.isnan(coarse), axis=0) > 0.05 if len(coarse) else np.zeros(0, bool)
    return _normalise(coarse, keep)


def build_correlation_index(out_dir: str | os.PathLike) -> Path:
    """Precompute what :func:`correlated_genes` reuses and store it beside the stack.

    The index is the stack pooled to 400 µm, each experiment centred and scaled to unit norm over
    its valid voxels (float32, ~n x 8,000 for brain voxels); a query is then one matrix-vector
    product, and only the best candidates are re-scored at full resolution.
    """
    out_dir = Path(out_dir)
    _, stack = load_expression_stack(out_dir)
    index = coarse_index(stack)
    with atomic_path(out_dir / INDEX_FILE, suffix=".npy") as tmp:
        np.save(tmp, index)
    _INDEX_CACHE.clear()
    return out_dir / INDEX_FILE


_INDEX_CACHE: dict[tuple, np.ndarray] = {}


def _index_for(stack: np.ndarray) -> np.ndarray:
    filename = getattr(stack, "filename", None)
    if filename:
        path = Path(filename).parent / INDEX_FILE
        if path.exists():
            key = (str(path), path.stat().st_mtime_ns)
            if key not in _INDEX_CACHE:
                _INDEX_CACHE.clear()
                index = np.load(path)
                if len(index) == len(stack):
                    _INDEX_CACHE[key] = index
                else:
                    LOGGER.warning("The correlation index '%s' does not match the stack; recomputing.", path)
                    return coarse_index(stack)
            return _INDEX_CACHE[key]
    return coarse_index(stack)


def _exact_correlations(stack: np.ndarray, query: int, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlation of experiment *query* with each candidate over voxels valid in both."""
    flat = np.reshape(stack, (len(stack), -1))  # a view, also of a memmap
    x = np.asarray(flat[query], np.float32)
    voxels = np.flatnonzero(x >= 0)
    x = x[voxels]
    order = np.argsort(candidates)
    rows = np.empty((len(candidates), len(voxels)), np.float32)
    rows[order] = flat[candidates[order]][:, voxels]  # sorted rows: sequential reads of the memmap
    mask = rows >= 0
    n = mask.sum(axis=1).astype(np.float64)
    y = np.where(mask, rows, 0.0)
    xm = mask * x
    sx, sy = xm.sum(1, dtype=np.float64), y.sum(1, dtype=np.float64)
    sxx, syy = (xm * x).sum(1, dtype=np.float64), (y * y).sum(1, dtype=np.float64)
    sxy = (y * x).sum(1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sy / n
        var = (sxx - sx * sx / n) * (syy - sy * sy / n)
        r = cov / np.sqrt(var)
    return np.where(n > 2, r, np.nan), n.astype(int)


def correlated_genes(
    stack: np.ndarray,
    genes: pd.DataFrame,
    gene: str | int,
    top: int = 20,
    candidates: int | None = None,
) -> pd.DataFrame:
    """Rank experiments by spatial correlation with one experiment, ignoring voxels without data (-1).

    A precomputed 400 µm index (see :func:`build_correlation_index`) ranks every experiment with
    one matrix-vector product; the best *candidates* are then re-scored exactly: the Pearson
    correlation at 200 µm over the voxels where both experiments have data.

    Parameters
    ----------
    stack : numpy.ndarray or numpy.memmap
        (n, 58, 41, 67) volumes, e.g. from :func:`load_expression_stack`.
    genes : pandas.DataFrame
        The stack's table (columns ``id``, ``gene``), one row per volume.
    gene : str or int
        A gene acronym (its first experiment is the query) or an experiment id.
    top : int
        Rows to return.
    candidates : int or None
        Experiments re-scored at full resolution; default ``max(5 * top, 100)``.

    Returns
    -------
    pandas.DataFrame
        ``rank, id, gene, correlation, n_voxels``, best first, without the query experiment.

    Raises
    ------
    KeyError
        If *gene* is neither an acronym nor an experiment id of the stack.
    """
    if len(genes) != len(stack):
        raise ValueError(f"genes has {len(genes)} rows but the stack holds {len(stack)} volumes: pass "
                         "the table that load_expression_stack() returned with it.")
    ids = genes["id"].astype(str).to_numpy()
    names = genes["gene"].astype(str).to_numpy()
    hits = np.flatnonzero(ids == str(gene))
    if not len(hits):
        hits = np.flatnonzero(names == str(gene))
    if not len(hits):
        close = difflib.get_close_matches(str(gene), sorted(set(names)), n=3)
        msg = f"'{gene}' is neither a gene nor an experiment id of this stack."
        raise KeyError(msg + (f" Did you mean {close}?" if close else ""))
    query = int(hits[0])
    index = _index_for(stack)
    scores = index @ index[query]
    scores[query] = -np.inf
    k = min(len(stack) - 1, candidates or max(5 * top, 100))
    if k <= 0:
        return pd.DataFrame(columns=["rank", "id", "gene", "correlation", "n_voxels"])
    best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.argsort(-scores)
    best = best[best != query]
    r, n = _exact_correlations(stack, query, best)
    order = np.argsort(-np.nan_to_num(r, nan=-np.inf), kind="stable")[:top]
    chosen = best[order]
    return pd.DataFrame({"rank": np.arange(1, len(chosen) + 1), "id": ids[chosen], "gene": names[chosen],
                         "correlation": r[order], "n_voxels": n[order]})
