"""Benchmark: the ISH grid pipeline against the seed's method, and correlation queries on a full stack.

(a) On >= 500 synthetic coronal experiments served by the sample server (its own process):

    * the seed's method: one request at a time, the zip written to disk and ``energy.raw``
      extracted, the raw file read, rotated with numpy (``rot90`` twice) and written as MICe MINC;
    * ours: ``download_grids`` (thread pool) with ``process=`` reading each zip in memory,
      ``reorient`` and ``write_volume`` (the same .mnc files, checked equal);
    * download only: ``download_many`` of the same zips with the same number of workers.

    ``speedup_vs_seed_method`` = seed / ours (goal >= 2.5), ``ratio_vs_download_only`` =
    ours / download only (goal <= 1.3). Each method runs in its own process.

(b) On a full-size synthetic stack (4,345 x 58 x 41 x 67, float16, cached on disk), the median time
    of ``correlated_genes`` over 5 queries after a warm-up (goal < 1 s), in a fresh process; and,
    for reference, one query done the plain way (float16 -> float32 chunks, masked correlation).

The worlds and the stack are cached under the user cache folder. Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from platformdirs import user_cache_dir

CACHE = Path(os.environ.get("ABC_HELPERS_BENCH_DIR") or Path(user_cache_dir("abc_helpers")) / "bench-ish")
STACK_N = 4345


# -- fixtures -------------------------------------------------------------------------------------
def build_world(n_extra: int) -> Path:
    """A sample world (Allen API only) with *n_extra* more coronal experiments, built once."""
    from abc_helpers.sample import amba
    from abc_helpers.sample.build import _fingerprint
    from abc_helpers.sample.world import WorldWriter

    root = CACHE / f"world-{n_extra}-{_fingerprint()}"
    if (root / "READY").exists():
        return root
    tmp = root.with_name(root.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    with WorldWriter(tmp) as writer:
        amba.generate(writer, n_extra=n_extra)
    (tmp / "READY").write_text("ok")
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    return root


def build_stack(n: int) -> Path:
    """A synthetic full-size float16 stack in the layout of build_expression_stack, built once."""
    import pandas as pd

    from abc_helpers import ish
    from abc_helpers.sample import amba

    out = CACHE / f"stack-{n}"
    if (out / "READY").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(1)
    patterns = amba.gene_patterns()
    names = list(patterns)
    brain = amba.grid_annotation() > 0
    fields = rng.lognormal(0.0, 0.35, (16, *ish.GRID_SHAPE)).astype(np.float32)
    mm = np.memmap(out / ish.STACK_FILE, dtype=np.float16, mode="w+", shape=(n, *ish.GRID_SHAPE))
    genes = []
    for i in range(n):
        gene = names[i % len(names)]
        noise = np.roll(fields[i % 16], int(rng.integers(0, 67)), axis=2) * fields[(i // 16) % 16]
        vol = float(rng.lognormal(0, 0.25)) * patterns[gene] * noise
        vol[~brain] = -1
        if i % 3 == 0:
            vol[:, :, int(rng.integers(8, 60))] = -1
        mm[i] = vol.astype(np.float16)
        genes.append((str(100_000_000 + i), gene))
    mm.flush()
    del mm
    pd.DataFrame(genes, columns=["id", "gene"]).assign(plane="coronal").to_parquet(out / ish.GENES_FILE)
    (out / ish.STACK_INFO_FILE).write_text(json.dumps({"shape": [n, *ish.GRID_SHAPE], "dtype": "float16"}))
    ish.build_correlation_index(out)
    (out / "READY").write_text("ok")
    return out


def start_server(root: Path, fault: str | None = None) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "abc_helpers.sample", "serve", "--root", str(root)]
    if fault:
        cmd += ["--fault", fault]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


# -- the three methods (each run in a child process by main) ---------------------------------------
def seed_method(url: str, out: Path, ids: list[int], genes: list[str]) -> None:
    """The seed script's loop: GET, write the zip, extract energy.raw, read, rot90, write MINC."""
    import requests
    import SimpleITK as sitk

    from abc_helpers.ish import world_geometry

    origin, spacing, direction = world_geometry("RAS", "MICe", 200)
    tmp = out / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    for eid, gene in zip(ids, genes, strict=True):
        content = requests.get(f"{url}/grid_data/download/{eid}", timeout=60).content
        zip_path = tmp / f"{eid}.zip"
        zip_path.write_bytes(content)
        with zipfile.ZipFile(zip_path) as zf:
            zf.extract("energy.raw", path=tmp)
        os.rename(tmp / "energy.raw", tmp / f"{eid}.raw")
        zip_path.unlink()
        data = np.fromfile(tmp / f"{eid}.raw", "<f4").reshape(58, 41, 67)
        (tmp / f"{eid}.raw").unlink()
        data = np.rot90(data, k=1, axes=(0, 2))
        data = np.rot90(data, k=1, axes=(0, 1))
        image = sitk.GetImageFromArray(np.ascontiguousarray(data))
        image.SetOrigin(origin)
        image.SetSpacing(spacing)
        image.SetDirection(direction)
        sitk.WriteImage(image, str(out / f"{gene}_{eid}.mnc"))


def convert_grid(eid: int, path: Path, out: Path, gene_of: dict[int, str]) -> None:
    """Ours, per grid: read the zip in memory, reorient to RAS/MICe, write MINC."""
    from abc_helpers.ish import read_grid, reorient, write_volume

    write_volume(reorient(read_grid(path), "RAS", "MICe"), out / f"{gene_of[eid]}_{eid}.mnc")


def our_method(url: str, out: Path, ids: list[int], genes: list[str], workers: int, processes: int) -> None:
    """Ours: parallel downloads; each grid converted as soon as it arrives, in a process pool."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    import pandas as pd

    from abc_helpers.ish import download_grids
    from abc_helpers.sources import Source

    convert = partial(convert_grid, out=out, gene_of=dict(zip(ids, genes, strict=True)))
    table = pd.DataFrame({"experiment_id": ids, "gene": genes})
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(processes, mp_context=context) if processes else nullcontext() as pool:
        result = download_grids(table, out / "grids", source=Source("mirror", url), max_workers=workers,
                                progressbar=False, process=convert, process_executor=pool)
    if not result["success"].all():
        raise RuntimeError(result.loc[~result["success"], "error"].tolist())


def download_only(url: str, out: Path, ids: list[int], workers: int) -> None:
    from abc_helpers.transfer import DownloadJob, download_many

    jobs = [DownloadJob(f"{url}/grid_data/download/{eid}", out / f"{eid}.zip") for eid in ids]
    download_many(jobs, max_workers=workers, progressbar=False)


def correlation_queries(stack_dir: Path, queries: list[str]) -> dict:
    from abc_helpers.ish import correlated_genes, load_expression_stack

    genes, stack = load_expression_stack(stack_dir)
    t0 = time.perf_counter()
    correlated_genes(stack, genes, "Pvalb")  # warm-up: loads the index, touches the pages
    warm = time.perf_counter() - t0
    times = []
    for gene in queries:
        t0 = time.perf_counter()
        top = correlated_genes(stack, genes, gene, top=20)
        times.append(time.perf_counter() - t0)
    return {"times": times, "warm_up": warm, "top_gene_of_last": str(top["gene"].iloc[0])}


def naive_query(stack_dir: Path, gene: str) -> dict:
    """One query the plain way: every volume converted to float32, masked Pearson per experiment."""
    from abc_helpers.ish import load_expression_stack

    genes, stack = load_expression_stack(stack_dir)
    q = int(np.flatnonzero(genes["gene"] == gene)[0])
    t0 = time.perf_counter()
    x = stack[q].astype(np.float32).ravel()
    vx = x >= 0
    r = np.empty(len(stack))
    for i in range(len(stack)):
        y = stack[i].astype(np.float32).ravel()
        m = vx & (y >= 0)
        r[i] = np.corrcoef(x[m], y[m])[0, 1]
    return {"seconds": time.perf_counter() - t0}


def _child(argv: list[str]) -> int:
    kind, args = argv[0], json.loads(argv[1])
    t0 = time.perf_counter()
    if kind == "seed":
        seed_method(args["url"], Path(args["out"]), args["ids"], args["genes"])
    elif kind == "ours":
        our_method(args["url"], Path(args["out"]), args["ids"], args["genes"], args["workers"],
                   args["processes"])
    elif kind == "download":
        download_only(args["url"], Path(args["out"]), args["ids"], args["workers"])
    elif kind == "corr":
        print(json.dumps(correlation_queries(Path(args["stack"]), args["queries"])))
        return 0
    elif kind == "naive":
        print(json.dumps(naive_query(Path(args["stack"]), args["gene"])))
        return 0
    print(json.dumps({"seconds": time.perf_counter() - t0}))
    return 0


def run_child(kind: str, **args) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(args)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark step '{kind}' failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def same_outputs(a: Path, b: Path, names: list[str]) -> bool:
    import SimpleITK as sitk

    for name in names:
        x, y = sitk.ReadImage(str(a / name)), sitk.ReadImage(str(b / name))
        if not (np.array_equal(sitk.GetArrayFromImage(x), sitk.GetArrayFromImage(y))
                and np.allclose(x.GetOrigin(), y.GetOrigin()) and x.GetDirection() == y.GetDirection()):
            return False
    return True


def compare_methods(world: Path, ids: list[int], genes: list[str], workers: int, processes: int,
                    fault: str | None) -> dict:
    """Time the seed's method, ours and download-only against one server (with *fault*, if any)."""
    from abc_helpers import ish

    proc, url = start_server(world, fault)
    try:
        meta = ish.query_section_datasets("coronal", source=ish.Source("mirror", url))
        assert set(ids) <= set(meta["experiment_id"]), "the query misses experiments"
        with tempfile.TemporaryDirectory(prefix="bench-ish-") as tmp:
            tmp = Path(tmp)
            common = {"url": url, "ids": ids}
            run_child("download", out=str(tmp / "warm"), workers=workers, **common)  # warm caches
            seed = run_child("seed", out=str(tmp / "seed"), genes=genes, **common)["seconds"]
            ours = run_child("ours", out=str(tmp / "ours"), genes=genes, workers=workers,
                             processes=processes, **common)["seconds"]
            dl = run_child("download", out=str(tmp / "dl"), workers=workers, **common)["seconds"]
            names = sorted(p.name for p in (tmp / "seed").glob("*.mnc"))
            identical = len(names) == len(ids) and same_outputs(
                tmp / "seed", tmp / "ours", names[:: max(1, len(names) // 25)])
    finally:
        proc.terminate()
        proc.wait()
    return {"outputs_identical": identical, "seconds_seed_method": round(seed, 3),
            "seconds_ours": round(ours, 3), "seconds_download_only": round(dl, 3),
            "speedup_vs_seed_method": round(seed / ours, 2), "ratio_vs_download_only": round(ours / dl, 2)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return _child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="120 experiments and a 600-volume stack")
    parser.add_argument("--experiments", type=int, default=520, help="coronal experiments (default 520)")
    parser.add_argument("--workers", type=int, default=8, help="download threads (default 8)")
    parser.add_argument("--processes", type=int, default=0,
                        help="conversion processes for ours (default 0: convert in the download threads)")
    parser.add_argument("--stack", type=int, default=STACK_N, help="volumes in the stack (default 4345)")
    parser.add_argument("--latency-ms", type=float, default=20.0,
                        help="first-byte latency per grid request for the headline figures (default 20 ms, "
                             "closer to the real API than bare loopback; loopback figures are reported too)")
    args = parser.parse_args(argv)
    n_exp, n_stack = (120, 600) if args.quick else (args.experiments, args.stack)

    from abc_helpers import ish
    from abc_helpers.sample import allen_api

    world = build_world(max(0, n_exp - 50))
    records = [r for r in allen_api.load_records(world) if r["_grid"] == "energy" and not r["failed"]
               and r["plane_of_section"]["name"] == "coronal"][:n_exp]
    ids = [r["id"] for r in records]
    genes = [r["genes"][0]["acronym"] for r in records]
    result: dict = {"quick": args.quick, "n_experiments": len(ids), "workers": args.workers,
                    "processes": args.processes,
                    "latency_ms": args.latency_ms}
    for label, fault in (("", f"stall={args.latency_ms / 1000},key=grid_data/download/*"),
                         ("_loopback", None)):
        result.update({k + label: v for k, v in compare_methods(world, ids, genes, args.workers, args.processes, fault).items()})
    t0 = time.perf_counter()
    stack_dir = build_stack(n_stack)
    result["seconds_stack_build_or_cache"] = round(time.perf_counter() - t0, 1)
    queries = ["Pcp2", "Ppp1r1b", "Prox1", "Rorb", "Slc17a7"]
    corr = run_child("corr", stack=str(stack_dir), queries=queries)
    naive = run_child("naive", stack=str(stack_dir), gene="Pcp2")
    result.update({
        "stack_shape": [n_stack, *ish.GRID_SHAPE],
        "seconds_correlation_query": round(float(np.median(corr["times"])), 4),
        "seconds_correlation_queries": [round(t, 4) for t in corr["times"]],
        "seconds_correlation_warm_up": round(corr["warm_up"], 3),
        "seconds_correlation_naive_loop": round(naive["seconds"], 3),
    })
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
