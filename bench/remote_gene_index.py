"""Benchmark: gene queries over the network from a served gene index, against download-then-stream.

The matrix of ``bench/gene_extraction.py`` (200,000 cells x 32,285 genes; 50,000 with ``--quick``)
is put in a mirror folder as a one-matrix release (``releases/20991231``, directory ``BENCH-10X``,
with its ``cell_metadata`` and ``gene`` tables), its gene index and catalog are built once
(:func:`abc_helpers.gene_index.write_gene_index`, :func:`~abc_helpers.gene_index.catalog_entry`),
and the folder is served by the sample server (``serve --mirror``) on loopback. Every client runs
in a fresh process with an empty cache folder and times ``get_gene_data`` for 10 genes x all
cells (the metadata tables are loaded before the clock starts):

* ``download_then_stream``: ``gene_index="off"``: the matrix is downloaded (md5 checked), then
  streamed;
* ``served``: ``gene_index="remote"``: the catalog, the cell labels (once), then byte ranges;
  then, in the same process, the median of 5 repeated queries (labels cached);
* both on bare loopback and on the modelled link (``Link``: 20 ms to the first byte of every
  response, 50 MB/s per response; the ``_20ms`` figures), each ``--rounds`` times (3 at least)
  in alternating order; each figure is the median over the rounds, each speedup is taken within
  a round, and ``spread`` holds the median, lowest, highest and every round; the load average
  is sampled before the first and after the last timed run (not after the room);
* a room: 30 clients at once, each asking 10 other genes; each result is checked for exact
  equality with the values read from the local gene index.

Bytes are counted by the server. ``bytes_ratio_vs_needed`` is what the first served query received
(the catalog, the gene table, the value ranges), cell labels excluded, over the bytes of the 10
genes' values and row indices; ``bytes_ratio_repeat_vs_needed`` is the same for a repeated query
(the value ranges only). ``seconds_index_build`` is the time the gene index and its sidecars take
to build, measured in every run (a scratch copy, deleted after). The mirror server computes each file's md5 (its ETag) at the first
request: the benchmark asks for every file once (HEAD) before timing, as a teacher running the
chapters once before a workshop does. The last line printed is one JSON object.

Usage::

    python bench/remote_gene_index.py            # 200,000 cells (the matrix is generated once)
    python bench/remote_gene_index.py --quick    # 50,000 cells
    python bench/remote_gene_index.py --save     # and write bench/results/remote_gene_index.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _measure import (
    LINK_BANDWIDTH_MBS,
    LINK_LATENCY_MS,
    add_save_arguments,
    alternating,
    load_average,
    ratios,
    rounds_of,
    save_result,
    spread,
)
from gene_extraction import GENES, N_GENES, NNZ_PER_CELL, data_dir, generate

RELEASE = "20991231"
DIRECTORY = "BENCH-10X"
BUCKET = "allen-brain-cell-atlas"
ROOM = 30


def _md5(path: Path) -> str:
    from abc_helpers import file_hash

    return file_hash(path, "md5").split(":", 1)[1]


def build_mirror(matrix: Path, mirror: Path) -> dict:
    """The one-matrix release, its gene index and catalog, in *mirror* (kept between runs)."""
    import h5py
    import pandas as pd

    from abc_helpers.cachefolder import atomic_write_text, link_or_copy
    from abc_helpers.gene_index import catalog_entry, catalog_key, catalog_text, write_gene_index
    from abc_helpers.h5ad_layout import read_index
    from abc_helpers.manifest import Manifest

    bucket = mirror / BUCKET
    done = bucket / catalog_key(RELEASE)
    key = f"expression_matrices/{DIRECTORY}/{RELEASE}/{DIRECTORY}-log2.h5ad"
    index_key = key.replace(".h5ad", ".gene_index.h5ad")
    if done.exists():
        return json.loads(done.read_text())
    link_or_copy(matrix, bucket / key)
    with h5py.File(matrix, "r") as f:
        cells = read_index(f["obs"])
        var = pd.DataFrame({"gene_identifier": read_index(f["var"]),
                            "gene_symbol": f["var"]["gene_symbol"].asstr()[()]})
    meta = {"cell_metadata": pd.DataFrame({"cell_label": cells, "dataset_label": DIRECTORY,
                                           "feature_matrix_label": DIRECTORY}).to_csv(index=False),
            "gene": var.to_csv(index=False)}
    files: dict = {"expression_matrices": {DIRECTORY: {"log2": {"files": {"h5ad": {}}}}},
                   "metadata": {}}
    for name, text in meta.items():
        rel = f"metadata/{DIRECTORY}/{RELEASE}/{name}.csv"
        atomic_write_text(bucket / rel, text)
        files["metadata"][name] = {"files": {"csv": {
            "version": RELEASE, "relative_path": rel, "url": f"https://x/{rel}",
            "size": (bucket / rel).stat().st_size, "file_hash": _md5(bucket / rel)}}}
    files["expression_matrices"][DIRECTORY]["log2"]["files"]["h5ad"] = {
        "version": RELEASE, "relative_path": key, "url": f"https://x/{key}",
        "size": matrix.stat().st_size, "file_hash": _md5(matrix)}
    manifest = {"version": RELEASE, "resource_uri": f"s3://{BUCKET}/",
                "directory_listing": {DIRECTORY: {"directories": {
                    kind: {"version": RELEASE, "relative_path": f"{kind}/{DIRECTORY}/{RELEASE}",
                           "url": "https://x/", "view_link": "https://x/", "total_size": 0}
                    for kind in ("metadata", "expression_matrices")}}},
                "file_listing": {DIRECTORY: files}}
    atomic_write_text(bucket / f"releases/{RELEASE}/manifest.json", json.dumps(manifest, indent=1))
    attrs = Manifest(manifest).get_file_attributes(DIRECTORY, f"{DIRECTORY}/log2")
    started = time.perf_counter()
    write_gene_index(bucket / key, bucket / index_key, source_md5=attrs.file_hash,
                     source_file=key, progressbar=False)
    entry = catalog_entry(attrs, bucket / index_key, index_key)
    seconds = time.perf_counter() - started
    print(f"gene index and sidecars built in {seconds:.0f} s", file=sys.stderr)
    atomic_write_text(done, catalog_text(RELEASE, f"releases/{RELEASE}/manifest.json", [entry]))
    return json.loads(done.read_text())


def time_index_build(mirror: Path, matrix: Path, scratch: Path) -> float:
    """Seconds to build the matrix's gene index and its sidecars again, into *scratch* (then deleted).

    Measured in every run, so that the saved figure is this run's (the mirror's own index was
    built once, when the mirror was made).
    """
    from abc_helpers.gene_index import catalog_entry, write_gene_index
    from abc_helpers.manifest import Manifest

    manifest = json.loads((mirror / BUCKET / f"releases/{RELEASE}/manifest.json").read_text())
    attrs = Manifest(manifest).get_file_attributes(DIRECTORY, f"{DIRECTORY}/log2")
    folder = Path(tempfile.mkdtemp(prefix="index-build-", dir=scratch))
    try:
        target = folder / f"{DIRECTORY}-log2.gene_index.h5ad"
        started = time.perf_counter()
        write_gene_index(matrix, target, source_md5=attrs.file_hash, source_file=attrs.relative_path,
                         progressbar=False)
        catalog_entry(attrs, target, target.name)
        return time.perf_counter() - started
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- a client (a fresh process) ------------------------------------------------------------------
def client(url: str, cache_dir: str, genes: list[str], mode: str, out: str | None, go: str | None,
           repeats: int) -> None:
    """Load the tables, wait for *go* (a file) if given, time the query; print JSON; save values."""
    import warnings

    from abc_helpers import AbcProjectCache, get_gene_data

    warnings.simplefilter("ignore")
    cache = AbcProjectCache.from_s3_cache(cache_dir, source=url)
    cells = cache.get_metadata_dataframe(DIRECTORY, "cell_metadata", index_col="cell_label")
    table = cache.get_metadata_dataframe(DIRECTORY, "gene", index_col="gene_identifier")
    if go:
        print("ready", flush=True)
        while not Path(go).exists():
            time.sleep(0.001)
    t0 = time.perf_counter()
    df = get_gene_data(cache, cells, table, genes, gene_index=mode, progressbar=False)
    first = time.perf_counter() - t0
    again = []
    for _ in range(repeats):
        t1 = time.perf_counter()
        get_gene_data(cache, cells, table, genes, gene_index=mode, progressbar=False)
        again.append(time.perf_counter() - t1)
    if out:
        np.save(out, df.to_numpy())
    print(json.dumps({"seconds": first, "seconds_repeat": statistics.median(again) if again else None}),
          flush=True)


def _client_cmd(url, cache_dir, genes, mode, out=None, go=None, repeats=0) -> list[str]:
    cmd = [sys.executable, __file__, "--client", url, "--cache", str(cache_dir), "--mode", mode,
           "--genes", ",".join(genes), "--repeats", str(repeats)]
    if out:
        cmd += ["--out", str(out)]
    if go:
        cmd += ["--go", str(go)]
    return cmd


def run_client(url, cache_dir, genes, mode, out=None, repeats=0) -> dict:
    proc = subprocess.run(_client_cmd(url, cache_dir, genes, mode, out, repeats=repeats),
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"client ({mode}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _sent(server) -> dict[str, int]:
    return server.stats()["bytes_sent"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50,000 cells instead of 200,000")
    parser.add_argument("--latency-ms", type=float, default=LINK_LATENCY_MS,
                        help=f"the modelled link's first-byte latency (default {LINK_LATENCY_MS:g} ms)")
    parser.add_argument("--bandwidth-mbs", type=float, default=LINK_BANDWIDTH_MBS,
                        help=f"the modelled link's bandwidth per response (default {LINK_BANDWIDTH_MBS:g} MB/s)")
    add_save_arguments(parser)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--genes", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(args.client, args.cache, args.genes.split(","), args.mode, args.out, args.go,
               args.repeats)
        return

    import requests

    from abc_helpers.expression import extract_genes_from_h5ad
    from abc_helpers.sample import Link, SampleServer

    n_cells = 50_000 if args.quick else 200_000
    rounds = rounds_of(args)
    folder = data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    matrix = folder / f"bench-{n_cells}x{N_GENES}-{NNZ_PER_CELL}.h5ad"
    if not matrix.exists():
        generate(matrix, n_cells)
    mirror = folder / f"remote-mirror-{n_cells}"
    catalog = build_mirror(matrix, mirror)
    entry = catalog["indexes"][0]
    bucket = mirror / BUCKET
    index = bucket / entry["index"]["relative_path"]
    table = np.frombuffer((bucket / entry["gene_table"]["relative_path"]).read_bytes(),
                          dtype=[("start", "<i8"), ("crc_indices", "<u4"), ("crc_data", "<u4")])
    var = (bucket / entry["var"]["relative_path"]).read_text().splitlines()
    symbols = [line.split("\t")[1] for line in var]
    column = {s: i for i, s in enumerate(symbols)}
    item = np.dtype(entry["indices"]["dtype"]).itemsize + np.dtype(entry["data"]["dtype"]).itemsize

    def needed(genes: list[str]) -> int:
        return sum(int(table["start"][column[g] + 1] - table["start"][column[g]]) * item for g in genes)

    rng = np.random.default_rng(5)
    others = [s for s in symbols if s not in GENES]
    room_genes = [list(rng.choice(others, 10, replace=False)) for _ in range(ROOM)]
    summary: dict = {"cells": n_cells, "genes": N_GENES, "matrix_gb": round(matrix.stat().st_size / 1e9, 2),
                     "index_gb": round(index.stat().st_size / 1e9, 2), "cpus": os.cpu_count(),
                     "rounds": rounds, "link": {"latency_ms": args.latency_ms, "bandwidth_mbs": args.bandwidth_mbs}}
    load_before = load_average()
    summary["seconds_index_build"] = round(time_index_build(mirror, matrix, folder), 1)
    with SampleServer(mirror=mirror) as server, tempfile.TemporaryDirectory(dir=folder) as tmp:
        tmp = Path(tmp)
        for path in sorted(p for p in bucket.rglob("*") if p.is_file() and not p.name.startswith("_")):
            requests.head(f"{server.url}/{BUCKET}/{path.relative_to(bucket).as_posix()}", timeout=600)
        expected = extract_genes_from_h5ad(index, GENES).to_numpy()
        results: dict[str, dict[str, list[dict]]] = {}
        count = iter(range(10**6))
        for tag, link in (("", None), ("_20ms", Link.from_units(args.latency_ms, args.bandwidth_mbs))):
            server.set_link(link)
            sent_first: list[dict] = []

            def served(tag: str = tag, sent_first: list = sent_first) -> dict:
                os.sync()  # the baseline's 3 GB copy is written back before the served query reads
                server.reset_stats()
                out = run_client(server.url, tmp / f"served{tag}-{next(count)}", GENES, "remote",
                                 tmp / "served.npy", repeats=5)
                np.testing.assert_array_equal(np.load(tmp / "served.npy"), expected)
                sent_first.append(_sent(server))
                return out

            def download_then_stream(tag: str = tag) -> dict:
                cache = tmp / f"stream{tag}-{next(count)}"
                out = run_client(server.url, cache, GENES, "off", tmp / "stream.npy")
                np.testing.assert_array_equal(np.load(tmp / "stream.npy"), expected)
                shutil.rmtree(cache)
                os.sync()
                return out

            def log(i: int, name: str, out: dict, tag: str = tag) -> None:
                print(f"  round {i} {name}{tag or '_loopback'}: {out['seconds']:.3f} s", file=sys.stderr)

            results[tag] = alternating({"served": served, "download_then_stream": download_then_stream},
                                       rounds, log)
            if not tag:
                sent = sent_first[0]

                def total(suffix: str, sent: dict = sent) -> int:
                    return sum(n for k, n in sent.items() if k.endswith(suffix))

                # once per process or cache: the catalog, the labels, the gene table; then the
                # first query and its 5 repeats each read the genes' ranges of the index once
                catalog, labels, gene_table = total("catalog.json"), total(".labels.txt"), total(".genes.bin")
                per_query = total(".gene_index.h5ad") / 6
                summary.update({
                    "bytes_needed": needed(GENES),
                    "bytes_received_per_query": round(per_query),
                    "bytes_catalog": catalog,
                    "bytes_gene_table_once": gene_table,
                    "bytes_labels_once": labels,
                    # the first query, everything but the labels (the definition)
                    "bytes_ratio_vs_needed": round((catalog + gene_table + per_query) / needed(GENES), 3),
                    "bytes_ratio_repeat_vs_needed": round(per_query / needed(GENES), 3),
                    "bytes_matrix_download": matrix.stat().st_size})
        server.set_link(None)
        load_after = load_average()  # before the room: the room is not part of the comparison
        server.set_faults(None)
        # the room: 30 clients ready, then all at once
        go = tmp / "go"
        procs = []
        for i, genes in enumerate(room_genes):
            procs.append(subprocess.Popen(_client_cmd(server.url, tmp / f"room{i}", genes, "remote",
                                                      tmp / f"room{i}.npy", go),
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()[-2000:]
        started = time.perf_counter()
        go.touch()
        outs = [p.communicate() for p in procs]
        total = time.perf_counter() - started
        if any(p.returncode for p in procs):
            raise RuntimeError("a room client failed:\n" + next(e for (_o, e), p in zip(outs, procs, strict=True) if p.returncode)[-2000:])
        seconds = sorted(json.loads(o.strip().splitlines()[-1])["seconds"] for o, _ in outs)
        exact = all(np.array_equal(np.load(tmp / f"room{i}.npy"),
                                   extract_genes_from_h5ad(index, genes).to_numpy())
                    for i, genes in enumerate(room_genes))
    spreads: dict = {}
    for tag in ("", "_20ms"):
        base = [r["seconds"] for r in results[tag]["download_then_stream"]]
        first = [r["seconds"] for r in results[tag]["served"]]
        repeat = [r["seconds_repeat"] for r in results[tag]["served"]]
        speedup = ratios(base, first)
        for key, values, digits in ((f"seconds_download_then_stream{tag}", base, 3),
                                    (f"seconds_served_first_query{tag}", first, 3),
                                    (f"seconds_repeat_query{tag}", repeat, 4),
                                    (f"speedup_vs_download_then_stream{tag}", speedup, 1)):
            summary[key] = round(statistics.median(values), digits)
            spreads[key] = spread(values, digits)
    summary.update({
        "spread": spreads,
        "load_before": load_before,
        "load_after": load_after,
        "room_clients": ROOM,
        "room_all_exact": exact,
        "room_seconds_total": round(total, 2),
        "room_seconds_p95": round(seconds[int(0.95 * (len(seconds) - 1))], 2),
        "room_seconds_max": round(seconds[-1], 2),
    })
    summary["goals_met"] = bool(
        summary["bytes_ratio_vs_needed"] <= 1.25 and summary["speedup_vs_download_then_stream"] >= 10
        and summary["speedup_vs_download_then_stream_20ms"] >= 20
        and summary["seconds_repeat_query_20ms"] <= 0.25 and exact and total <= 15)
    if args.save:
        out = save_result("remote_gene_index", summary, args.quick, args.note, load_before, load_after)
        print(f"saved to {out}", file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
