"""Benchmark: 10 genes x all cells out of a 10x-like CSR h5ad, five ways, each in its own process.

Methods (each runs in a fresh subprocess, so its peak RSS is its own; page cache warmed first):

* ``io_floor``        read ``X/data`` and ``X/indices`` once, in the same blocks and with the same
                      plain ``readinto`` calls as ours (:class:`abc_helpers.h5ad_layout.RawReader`),
                      no processing, no thread
* ``io_floor_h5py``   the same blocks read with h5py ``read_direct`` (the issue's definition; slower
                      than the raw reads, so the ratio is taken against the faster of the two)
* ``ours_streaming``  :func:`abc_helpers.expression.extract_genes_from_h5ad` on the CSR file
* ``anndata_backed``  abc_atlas_access's 10x tutorial (part 2a):
                      ``anndata.read_h5ad(backed="r")[cells, genes].to_df()``
* ``chunked_dense``   the Allen helper: ``chunked_X(8192)``, ``.toarray()``, then the gene columns
* ``gene_index``      ours on the gene index, after ``write_gene_index`` (build, timed apart): the
                      first query of a fresh process (nothing cached) and, in the same process,
                      the median of 5 repeated queries (labels and gene names cached), reported
                      separately; in file order and with the cells shuffled

The index is built once (timed: ``seconds_gene_index_build``); then every method runs once per
round, ``--rounds`` rounds (3 at least), the order reversed every other round, each run from a
warm page cache. Each figure is the median over the rounds; each ratio is taken within a round
(the two methods ran a minute apart at most), then its median; ``spread`` holds the median,
lowest, highest and every round of each. The machine's load average is sampled before and after.

The matrix (>= 200,000 cells x 32,285 genes, ~2,000 values per cell; 50,000 cells with
``--quick``) is generated once, in blocks with h5py, under the user cache folder
(``platformdirs.user_cache_dir("abc_helpers")/bench``). Every method's answer is checked against
ours (exact equality). The last line printed is one JSON object with the figures.

Usage::

    python bench/gene_extraction.py            # 200,000 cells (about 3.3 GB, generated once)
    python bench/gene_extraction.py --quick    # 50,000 cells, a few minutes once generated
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _measure import (
    add_save_arguments,
    alternating,
    bytes_read,
    load_average,
    peak_rss_mb,
    ratios,
    rounds_of,
    save_result,
    spread,
)

N_GENES = 32_285
NNZ_PER_CELL = 2_000
GENES = ["Slc17a7", "Slc17a6", "Slc17a8", "Slc32a1", "Slc6a5", "Slc18a3", "Slc6a3", "Slc6a4",
         "Slc6a2", "Tac2"]
#: Popularity ranks of the 10 genes (0 = the most frequent gene): common to rare.
GENE_RANKS = [3, 40, 400, 150, 2_000, 6_000, 12_000, 800, 20_000, 1_200]
ROWS_PER_WRITE = 4_096


def data_dir() -> Path:
    """The benchmark data folder (outside the repository)."""
    from platformdirs import user_cache_dir

    return Path(os.environ.get("ABC_HELPERS_BENCH_DIR") or Path(user_cache_dir("abc_helpers")) / "bench")


def _gene_order(rng: np.random.Generator) -> np.ndarray:
    """Column of each popularity rank: the 10 named genes at GENE_RANKS, the rest shuffled."""
    return rng.permutation(N_GENES)


def generate(path: Path, n_cells: int, seed: int = 0) -> None:
    """Write a 10x-like CSR h5ad (anndata layout) of *n_cells* x 32,285 genes, block by block."""
    import h5py

    rng = np.random.default_rng(seed)
    order = _gene_order(rng)
    symbols = np.array([f"Gm{i:05d}" for i in range(N_GENES)], dtype=object)
    for name, rank in zip(GENES, GENE_RANKS, strict=True):
        symbols[order[rank]] = name
    part = path.with_name(path.name + f".part-{os.getpid()}")
    started = time.perf_counter()
    with h5py.File(part, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        x = f.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                        "shape": np.array([n_cells, N_GENES], dtype=np.int64)})
        chunk = 1 << 18
        data = x.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32,
                                chunks=(chunk,))
        indices = x.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32,
                                   chunks=(chunk,))
        indptr = np.zeros(n_cells + 1, dtype=np.int64)
        nnz = 0
        draws = int(NNZ_PER_CELL * 1.1)
        for r0 in range(0, n_cells, ROWS_PER_WRITE):
            r1 = min(r0 + ROWS_PER_WRITE, n_cells)
            # Zipf-like gene popularity: rank = N * u^2.2, most cells express the first genes.
            ranks = (N_GENES * rng.random((r1 - r0, draws)) ** 2.2).astype(np.int32)
            cols = np.sort(order[ranks].astype(np.int32), axis=1)
            keep = np.ones(cols.shape, dtype=bool)
            keep[:, 1:] = cols[:, 1:] != cols[:, :-1]
            counts = keep.sum(axis=1)
            ix = cols[keep]
            vals = np.log2(1 + rng.geometric(0.45, size=ix.size)).astype(np.float32)
            indptr[r0 + 1:r1 + 1] = nnz + np.cumsum(counts)
            data.resize((nnz + ix.size,))
            indices.resize((nnz + ix.size,))
            data[nnz:] = vals
            indices[nnz:] = ix
            nnz += ix.size
        x.create_dataset("indptr", data=indptr)
        string = h5py.string_dtype()
        obs = f.create_group("obs")
        obs.attrs.update({"_index": "cell_label", "encoding-type": "dataframe",
                          "encoding-version": "0.2.0", "column-order": np.array([], dtype=string)})
        bases = np.array(list("ACGT"))
        barcodes = ["".join(b) for b in bases[rng.integers(0, 4, (n_cells, 16))]]
        labels = [f"{b}-{i % 800:03d}_B{i % 9:02d}" for i, b in enumerate(barcodes)]
        ds = obs.create_dataset("cell_label", data=np.array(labels, dtype=object), dtype=string)
        ds.attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
        var = f.create_group("var")
        var.attrs.update({"_index": "gene_identifier", "encoding-type": "dataframe",
                          "encoding-version": "0.2.0",
                          "column-order": np.array(["gene_symbol"], dtype=object)})
        for name, values in (("gene_identifier", [f"ENSMUSG{i:011d}" for i in range(N_GENES)]),
                             ("gene_symbol", list(symbols))):
            ds = var.create_dataset(name, data=np.array(values, dtype=object), dtype=string)
            ds.attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
        for name in ("layers", "obsm", "obsp", "uns", "varm", "varp"):
            g = f.create_group(name)
            g.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
    part.replace(path)
    print(f"generated {path} ({n_cells} cells, {nnz} values, {path.stat().st_size / 1e9:.2f} GB) "
          f"in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def warm(path: Path) -> None:
    """Read the file once so that every method starts with a warm page cache."""
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass


# -- the methods (run in a child process) -------------------------------------------------------
def _delta(before: int | None) -> int | None:
    """Bytes read since *before* (a :func:`bytes_read` value), or None where it is not measured."""
    after = bytes_read()
    return None if before is None or after is None else after - before


def _cells_and_genes(path: Path, shuffled: bool = False):
    import h5py

    from abc_helpers.h5ad_layout import read_index

    with h5py.File(path, "r") as f:
        cells = read_index(f["obs"])
    if shuffled:
        cells = cells[np.random.default_rng(1).permutation(len(cells))]
    return cells, GENES


def method_io_floor(path: Path, **_):
    import h5py

    from abc_helpers.h5ad_layout import DEFAULT_BLOCK_NNZ, RawReader, block_bounds

    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        x = f["X"]
        indptr = x["indptr"][()]
        bounds = block_bounds(indptr, DEFAULT_BLOCK_NNZ)
        biggest = max(int(indptr[b] - indptr[a]) for a, b in bounds)
        ix_buf = np.empty(biggest, dtype=x["indices"].dtype)
        d_buf = np.empty(biggest, dtype=x["data"].dtype)
        readers = [RawReader.open(x["indices"]), RawReader.open(x["data"])]
        if None in readers:
            raise RuntimeError(f"{path}: X is not stored raw; use io_floor_h5py")
        total = 0
        for r0, r1 in bounds:
            a, b = int(indptr[r0]), int(indptr[r1])
            readers[0].read(a, b, ix_buf)
            readers[1].read(a, b, d_buf)
            total += b - a
        for reader in readers:
            reader.close()
    return time.perf_counter() - t0, None, {"nnz": total}


def method_io_floor_h5py(path: Path, **_):
    import h5py

    from abc_helpers.h5ad_layout import DEFAULT_BLOCK_NNZ, block_bounds

    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        x = f["X"]
        indptr = x["indptr"][()]
        bounds = block_bounds(indptr, DEFAULT_BLOCK_NNZ)
        biggest = max(int(indptr[b] - indptr[a]) for a, b in bounds)
        ix_buf = np.empty(biggest, dtype=x["indices"].dtype)
        d_buf = np.empty(biggest, dtype=x["data"].dtype)
        total = 0
        for r0, r1 in bounds:
            a, b = int(indptr[r0]), int(indptr[r1])
            x["indices"].read_direct(ix_buf, np.s_[a:b], np.s_[0:b - a])
            x["data"].read_direct(d_buf, np.s_[a:b], np.s_[0:b - a])
            total += b - a
    return time.perf_counter() - t0, None, {"nnz": total}


def method_ours_streaming(path: Path, **_):
    from abc_helpers.expression import extract_genes_from_h5ad

    cells, genes = _cells_and_genes(path)
    read0 = bytes_read()
    t0 = time.perf_counter()
    df = extract_genes_from_h5ad(path, genes, cell_labels=cells)
    seconds = time.perf_counter() - t0
    return seconds, df.to_numpy(), {"bytes_read": _delta(read0)}


def method_anndata_backed(path: Path, **_):
    import anndata

    cells, genes = _cells_and_genes(path)
    t0 = time.perf_counter()
    ad = anndata.read_h5ad(path, backed="r")
    gene_ids = ad.var.index[ad.var["gene_symbol"].isin(genes)]
    df = ad[cells, gene_ids].to_df()
    df.columns = ad.var.loc[df.columns, "gene_symbol"]
    ad.file.close()
    return time.perf_counter() - t0, df[genes].to_numpy(np.float32), {}


def method_chunked_dense(path: Path, **_):
    import anndata

    _cells, genes = _cells_and_genes(path)
    t0 = time.perf_counter()
    ad = anndata.read_h5ad(path, backed="r")
    symbols = ad.var["gene_symbol"].to_numpy()
    gene_mask = np.isin(symbols, genes)
    out = np.zeros((ad.n_obs, int(gene_mask.sum())), dtype=np.float32)
    for chunk, start, end in ad.chunked_X(8192):
        out[start:end] = chunk.toarray()[:, gene_mask]
    ad.file.close()
    columns = list(symbols[gene_mask])
    out = out[:, [columns.index(g) for g in genes]]
    return time.perf_counter() - t0, out, {}


def method_gene_index_build(path: Path, index: Path, **_):
    from abc_helpers.gene_index import write_gene_index

    t0 = time.perf_counter()
    write_gene_index(path, index, progressbar=False)
    return time.perf_counter() - t0, None, {"index_bytes": index.stat().st_size}


def method_gene_index(path: Path, index: Path, shuffled: bool = False, **_):
    from abc_helpers.expression import extract_genes_from_h5ad

    cells, genes = _cells_and_genes(path, shuffled)
    read0 = bytes_read()
    t0 = time.perf_counter()
    df = extract_genes_from_h5ad(index, genes, cell_labels=cells)
    seconds = time.perf_counter() - t0
    read_first = _delta(read0)
    repeated = []
    for _ in range(5):  # same process: the index's labels and gene names are cached now
        t1 = time.perf_counter()
        again = extract_genes_from_h5ad(index, genes, cell_labels=cells)
        repeated.append(time.perf_counter() - t1)
    assert again.equals(df)
    values = df.to_numpy()
    if shuffled:  # back to file order, to compare with the others
        values = df.reindex(_cells_and_genes(path)[0]).to_numpy()
    return seconds, values, {"seconds_repeated": statistics.median(repeated), "bytes_read": read_first}


def method_gene_index_shuffled(path: Path, index: Path, **_):
    return method_gene_index(path, index, shuffled=True)


METHODS = {name[len("method_"):]: fn for name, fn in globals().items() if name.startswith("method_")}



def child(method: str, path: Path, index: Path, out: Path) -> None:
    """Run one method; print its seconds and peak RSS as JSON; save its answer to *out*."""
    seconds, values, extra = METHODS[method](path, index=index)
    if values is not None:
        np.save(out, values)
    peak_mb = peak_rss_mb()
    print(json.dumps({"method": method, "seconds": seconds, "peak_rss_mb": peak_mb, **extra}))


def run(method: str, path: Path, index: Path, tmp: Path) -> dict:
    out = tmp / f"{method}.npy"
    proc = subprocess.run([sys.executable, __file__, "--child", method, "--file", str(path),
                           "--index", str(index), "--out", str(out)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{method} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["answer"] = out if out.exists() else None
    print(f"  {method:24s} {result['seconds']:8.3f} s   peak {result['peak_rss_mb']:7.0f} MB",
          file=sys.stderr)
    return result


#: The methods timed in every round (the index build is timed once, before the rounds).
ROUND_METHODS = ["io_floor", "io_floor_h5py", "ours_streaming", "anndata_backed", "chunked_dense",
                 "gene_index", "gene_index_shuffled"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50,000 cells instead of 200,000")
    parser.add_argument("--cells", type=int, help="number of cells (overrides --quick)")
    add_save_arguments(parser)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.file, args.index, args.out)
        return

    n_cells = args.cells or (50_000 if args.quick else 200_000)
    rounds = rounds_of(args)
    folder = data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"bench-{n_cells}x{N_GENES}-{NNZ_PER_CELL}.h5ad"
    if not path.exists():
        generate(path, n_cells)
    index = folder / f"{path.stem}.gene_index.h5ad"
    print(f"{path} ({path.stat().st_size / 1e9:.2f} GB); {os.cpu_count()} CPUs; {rounds} rounds",
          file=sys.stderr)
    load_before = load_average()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        warm(path)
        build = run("gene_index_build", path, index, tmp)  # measured in this run, once

        def method(name: str):
            def go() -> dict:
                warm(index if name.startswith("gene_index") else path)  # each starts warm
                return run(name, path, index, tmp)
            return go

        results = alternating({name: method(name) for name in ROUND_METHODS}, rounds)
        reference = np.load(results["ours_streaming"][0]["answer"])
        for name, runs in results.items():
            for done in runs:
                if done["answer"] is not None:
                    np.testing.assert_array_equal(np.load(done["answer"]), reference,
                                                  err_msg=f"{name} disagrees with ours")
        print(f"  all answers identical: {reference.shape}, {np.count_nonzero(reference)} "
              "non-zero values", file=sys.stderr)
    load_after = load_average()

    def times(method: str, key: str = "seconds") -> list[float]:
        return [r[key] for r in results[method]]

    def med(method: str, key: str = "seconds") -> float:
        return statistics.median(times(method, key))

    def peak(method: str) -> float:
        return max(r["peak_rss_mb"] for r in results[method])

    ours = times("ours_streaming")
    floor = [min(a, b) for a, b in zip(times("io_floor"), times("io_floor_h5py"), strict=True)]
    per_round = {  # each ratio taken within a round, then the median over the rounds
        "ratio_vs_io_floor": ratios(ours, floor),
        "ratio_vs_io_floor_h5py": ratios(ours, times("io_floor_h5py")),
        "speedup_vs_anndata_backed": ratios(times("anndata_backed"), ours),
        "speedup_vs_chunked_dense": ratios(times("chunked_dense"), ours),
        "speedup_gene_index_vs_streaming": ratios(ours, times("gene_index")),
        "speedup_gene_index_repeated_vs_streaming": ratios(ours, times("gene_index", "seconds_repeated")),
        "speedup_gene_index_shuffled_vs_streaming": ratios(ours, times("gene_index_shuffled")),
        "speedup_gene_index_shuffled_repeated_vs_streaming": ratios(
            ours, times("gene_index_shuffled", "seconds_repeated")),
    }
    timed = {
        "seconds_io_floor": times("io_floor"),
        "seconds_io_floor_h5py": times("io_floor_h5py"),
        "seconds_ours": ours,
        "seconds_anndata_backed": times("anndata_backed"),
        "seconds_chunked_dense": times("chunked_dense"),
        "seconds_gene_index_query": times("gene_index"),
        "seconds_gene_index_query_repeated": times("gene_index", "seconds_repeated"),
        "seconds_gene_index_query_shuffled_cells": times("gene_index_shuffled"),
        "seconds_gene_index_query_shuffled_cells_repeated": times("gene_index_shuffled",
                                                                  "seconds_repeated"),
    }
    summary = {
        "cells": n_cells,
        "genes": N_GENES,
        "nnz": results["io_floor"][0]["nnz"],
        "file_gb": round(path.stat().st_size / 1e9, 2),
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "load_before": load_before,
        "load_after": load_after,
        **{k: round(statistics.median(v), 4 if "gene_index_query" in k else 3) for k, v in timed.items()},
        **{k: round(statistics.median(v), 1 if "gene_index" in k else 2) for k, v in per_round.items()},
        "peak_rss_mb_io_floor": round(peak("io_floor")),
        "peak_rss_mb_ours": round(peak("ours_streaming")),
        "peak_rss_mb_anndata_backed": round(peak("anndata_backed")),
        "peak_rss_mb_chunked_dense": round(peak("chunked_dense")),
        "seconds_gene_index_build": round(build["seconds"], 2),
        "peak_rss_mb_gene_index_build": round(build["peak_rss_mb"]),
        "peak_rss_mb_gene_index_query": round(peak("gene_index")),
        "index_gb": round(index.stat().st_size / 1e9, 2),
        # read/pread bytes of the first round: the whole matrix, against the genes' slices
        "bytes_read_ours": results["ours_streaming"][0]["bytes_read"],
        "bytes_read_gene_index_query": results["gene_index"][0]["bytes_read"],
        "result_mb": round(n_cells * len(GENES) * 4 / 1e6, 1),
        # median, lowest, highest and every round of each timed figure and ratio
        "spread": {k: spread(v, 4) for k, v in {**timed, **per_round}.items()},
        "runs_gene_index_build": 1,
    }
    if args.save:
        out = save_result("gene_extraction", summary, args.quick, args.note, load_before)
        print(f"saved to {out}", file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
