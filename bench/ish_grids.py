"""Benchmark: the ISH grid pipeline against the seed's method, and correlation queries on a full stack.

(a) On >= 500 synthetic coronal experiments served by the sample server (its own process):

    * the seed's method: one request at a time, the zip written to disk and ``energy.raw``
      extracted (both deleted, as the seed does), the raw file read, rotated with numpy
      (``rot90`` twice) and written as MICe MINC with SimpleITK;
    * ours: a two-stage pipeline: ``download_grids`` (8 download threads) queues each verified zip
      to ``--converters`` conversion threads running ``convert_grid`` (zip inflated in memory,
      rotation as a numpy view, MINC2 written without ITK): the same .mnc files, checked equal;
    * download only: ``download_many`` of the same zips with the same number of workers.

    ``speedup_vs_seed_method`` = seed / ours (goal >= 2.5), ``ratio_vs_download_only`` =
    ours / download only (goal <= 1.3). Each run is its own process (imports are not timed); the
    methods take turns ``--rounds`` times (3 at least, the order reversed every other round), each
    ratio is taken within a round and its median reported with the lowest and highest
    (``spread``). Measured on the modelled link (the sample server's ``--latency-ms 20
    --bandwidth-mbs 50``: 20 ms to the first byte of every response, 50 MB/s per response) and on
    bare loopback. The machine's load average is sampled before and after. Outputs go under the cache
    folder, not /tmp, and are deleted only at the end (see ``compare_methods``).

(b) On a full-size synthetic stack (4,345 x 58 x 41 x 67, float16, cached on disk), the median time
    of ``correlated_genes`` over 5 queries after a warm-up (goal < 1 s), in a fresh process; and,
    for reference, one query done the plain way (float16 -> float32 chunks, masked correlation);
    both once per round, in alternating order.

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
from _measure import (
    LINK_BANDWIDTH_MBS,
    LINK_LATENCY_MS,
    add_save_arguments,
    alternating,
    load_average,
    ratios,
    rounds_of,
    save_result,
    serve_args,
    spread,
)
from platformdirs import user_cache_dir

CACHE = Path(os.environ.get("ABC_HELPERS_BENCH_DIR") or Path(user_cache_dir("abc_helpers")) / "bench-ish")
STACK_N = 4345


# -- fixtures -------------------------------------------------------------------------------------
def build_world(n_extra: int) -> Path:
    """A sample world (Allen API only) with *n_extra* more coronal experiments, built once."""
    from abc_helpers.sample import amba
    from abc_helpers.sample.build import world_fingerprint
    from abc_helpers.sample.world import WorldWriter

    root = CACHE / f"world-{n_extra}-{world_fingerprint()}"
    if (root / "READY").exists():
        return root
    tmp = root.with_name(root.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    with WorldWriter(tmp) as writer:
        amba.generate(writer, n_extra=n_extra)
    (tmp / "READY").write_text("ok")
    shutil.rmtree(root, ignore_errors=True)
    Path(tmp).replace(root)
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


def start_server(root: Path, link: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    """The sample server in its own process, with the link options *link* (:func:`serve_args`)."""
    cmd = [sys.executable, "-m", "abc_helpers.sample", "serve", "--root", str(root), *(link or [])]
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
        (tmp / "energy.raw").rename(tmp / f"{eid}.raw")
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
    """Ours, per grid: read the zip in memory, reorient to RAS/MICe, write MINC (numpy, no ITK)."""
    from abc_helpers.ish import convert_grid as convert

    convert(path, out / f"{gene_of[eid]}_{eid}.mnc", "RAS", "MICe")


def our_method(url: str, out: Path, ids: list[int], genes: list[str], workers: int, converters: int,
               processes: int) -> None:
    """Ours: parallel downloads; each grid queued for conversion as soon as it arrives (2-stage pipeline)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
    from functools import partial

    import pandas as pd

    from abc_helpers.ish import download_grids
    from abc_helpers.sources import Source

    convert = partial(convert_grid, out=out, gene_of=dict(zip(ids, genes, strict=True)))
    table = pd.DataFrame({"experiment_id": ids, "gene": genes})
    if processes:
        # Forked before any download thread exists (so no lock is copied held), and started now.
        converter = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"))
        list(converter.map(abs, range(processes)))
    else:
        converter = ThreadPoolExecutor(converters) if converters else None
    with converter or nullcontext():
        result = download_grids(table, out / "grids", source=Source("mirror", url), max_workers=workers,
                                progressbar=False, process=convert, process_executor=converter)
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
    # Imports are not part of any method's time: load what every method uses first.
    import pandas as pd  # noqa: F401
    import requests  # noqa: F401
    import SimpleITK  # noqa: F401

    import abc_helpers.ish
    import abc_helpers.transfer  # noqa: F401

    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "seed":
        seed_method(args["url"], Path(args["out"]), args["ids"], args["genes"])
    elif kind == "ours":
        our_method(args["url"], Path(args["out"]), args["ids"], args["genes"], args["workers"],
                   args["converters"], args["processes"])
    elif kind == "download":
        download_only(args["url"], Path(args["out"]), args["ids"], args["workers"])
    elif kind == "corr":
        print(json.dumps(correlation_queries(Path(args["stack"]), args["queries"])))
        return 0
    elif kind == "naive":
        print(json.dumps(naive_query(Path(args["stack"]), args["gene"])))
        return 0
    print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}))
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
                and np.allclose(x.GetOrigin(), y.GetOrigin()) and x.GetDirection() == y.GetDirection()
                and np.allclose(x.GetSpacing(), y.GetSpacing())):
            return False
    return True


def compare_methods(world: Path, ids: list[int], genes: list[str], workers: int, converters: int,
                    processes: int, link: list[str], rounds: int, workdir: Path) -> dict:
    """Time the seed's method, ours and download-only against one server (over *link*).

    Each method runs once per round, *rounds* times, the order reversed every other round, each
    run in a fresh process and a fresh folder under *workdir*; the medians are kept, and each
    ratio is taken within a round, then its median. Nothing is deleted until the whole benchmark
    is over: on this machine's journal-less ext4, creating a file costs ~1 ms (up to ~4 ms
    measured) for ~30 s after many deletions (``recently_deleted`` scans), which would penalise
    whichever method runs next.
    """
    from abc_helpers import ish
    from abc_helpers.sources import Source

    proc, url = start_server(world, link)
    identical = True
    try:
        meta = ish.query_section_datasets("coronal", source=Source("mirror", url))
        assert set(ids) <= set(meta["experiment_id"]), "the query misses experiments"
        common = {"url": url, "ids": ids}
        base = Path(tempfile.mkdtemp(prefix="setting-", dir=workdir))
        run_child("download", out=str(base / "warm"), workers=workers, **common)  # warm caches
        count = iter(range(10**6))
        cpu: dict[str, list[float]] = {"download": [], "ours": [], "seed": []}

        def timed(kind: str, done: dict) -> float:
            cpu[kind].append(done["cpu_seconds"])  # all the child's threads: immune to waiting
            return done["seconds"]

        def download() -> float:
            return timed("download", run_child("download", out=str(base / f"dl-{next(count)}"),
                                               workers=workers, **common))

        def ours() -> float:
            return timed("ours", run_child("ours", out=str(base / f"ours-{next(count)}"), genes=genes,
                                           workers=workers, converters=converters,
                                           processes=processes, **common))

        def seed() -> float:
            out = base / f"seed-{next(count)}"
            seconds = timed("seed", run_child("seed", out=str(out), genes=genes, **common))
            seed_runs.append(out)
            return seconds

        seed_runs: list[Path] = []
        times = alternating({"download": download, "ours": ours, "seed": seed}, rounds)
        ours_runs = sorted(base.glob("ours-*"), key=lambda p: int(p.name.split("-")[1]))
        for i, (seed_out, ours_out) in enumerate(zip(seed_runs, ours_runs, strict=True)):
            names = sorted(p.name for p in seed_out.glob("*.mnc"))
            identical &= len(names) == len(ids) and same_outputs(
                seed_out, ours_out, names[i:: max(1, len(names) // 25)])
    finally:
        proc.terminate()
        proc.wait()
    seed, ours_s, dl = (float(np.median(times[k])) for k in ("seed", "ours", "download"))
    speedup, ratio = ratios(times["seed"], times["ours"]), ratios(times["ours"], times["download"])
    return {"outputs_identical": bool(identical), "seconds_seed_method": round(seed, 3),
            "seconds_ours": round(ours_s, 3), "seconds_download_only": round(dl, 3),
            "speedup_vs_seed_method": round(float(np.median(speedup)), 2),
            "ratio_vs_download_only": round(float(np.median(ratio)), 2),
            "runs_seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
            # CPU seconds of each run's process (converting in a process pool is not counted)
            "runs_cpu_seconds": {k: [round(t, 3) for t in v] for k, v in cpu.items()},
            "cpu_ratio_vs_download_only": round(float(np.median(ratios(cpu["ours"], cpu["download"]))), 2),
            "spread": {"seconds_seed_method": spread(times["seed"]), "seconds_ours": spread(times["ours"]),
                       "seconds_download_only": spread(times["download"]),
                       "speedup_vs_seed_method": spread(speedup, 2),
                       "ratio_vs_download_only": spread(ratio, 2)}}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return _child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="120 experiments and a 600-volume stack")
    parser.add_argument("--experiments", type=int, default=520, help="coronal experiments (default 520)")
    parser.add_argument("--workers", type=int, default=8, help="download threads (default 8)")
    parser.add_argument("--converters", type=int, default=2,
                        help="conversion threads for ours, fed by the download threads (default 2; 0: "
                             "convert in the download threads)")
    parser.add_argument("--processes", type=int, default=0,
                        help="conversion processes for ours instead of threads (default 0)")
    parser.add_argument("--stack", type=int, default=STACK_N, help="volumes in the stack (default 4345)")
    parser.add_argument("--latency-ms", type=float, default=LINK_LATENCY_MS,
                        help="the modelled link's first-byte latency per request, for the headline figures "
                             f"(default {LINK_LATENCY_MS:g} ms; bare loopback figures are reported too)")
    parser.add_argument("--bandwidth-mbs", type=float, default=LINK_BANDWIDTH_MBS,
                        help=f"the modelled link's bandwidth per response (default {LINK_BANDWIDTH_MBS:g} MB/s)")
    add_save_arguments(parser)
    args = parser.parse_args(argv)
    n_exp, n_stack = (120, 600) if args.quick else (args.experiments, args.stack)
    rounds = rounds_of(args)

    from abc_helpers import ish
    from abc_helpers.sample import allen_api

    world = build_world(max(0, n_exp - 50))
    records = [r for r in allen_api.load_records(world) if r["_grid"] == "energy" and not r["failed"]
               and r["plane_of_section"]["name"] == "coronal"][:n_exp]
    ids = [r["id"] for r in records]
    genes = [r["genes"][0]["acronym"] for r in records]
    result: dict = {"quick": args.quick, "n_experiments": len(ids), "workers": args.workers,
                    "converters": args.converters, "processes": args.processes, "rounds": rounds,
                    "latency_ms": args.latency_ms, "bandwidth_mbs": args.bandwidth_mbs}
    load_before = load_average()
    CACHE.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ish-", dir=CACHE))  # not /tmp: see compare_methods
    try:
        for label, link in (("", serve_args(args.latency_ms, args.bandwidth_mbs)), ("_loopback", [])):
            result.update({k + label: v for k, v in compare_methods(
                world, ids, genes, args.workers, args.converters, args.processes, link, rounds,
                workdir).items()})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.perf_counter()
    stack_dir = build_stack(n_stack)
    result["seconds_stack_build_or_cache"] = round(time.perf_counter() - t0, 1)
    queries = ["Pcp2", "Ppp1r1b", "Prox1", "Rorb", "Slc17a7"]
    corr_naive = alternating({"corr": lambda: run_child("corr", stack=str(stack_dir), queries=queries),
                              "naive": lambda: run_child("naive", stack=str(stack_dir), gene="Pcp2")},
                             rounds)
    query = [float(np.median(c["times"])) for c in corr_naive["corr"]]  # each round's median of 5
    naive = [n["seconds"] for n in corr_naive["naive"]]
    result.update({
        "stack_shape": [n_stack, *ish.GRID_SHAPE],
        "seconds_correlation_query": round(float(np.median(query)), 4),
        "seconds_correlation_queries": [round(t, 4) for c in corr_naive["corr"] for t in c["times"]],
        "seconds_correlation_warm_up": round(float(np.median([c["warm_up"] for c in corr_naive["corr"]])), 3),
        "seconds_correlation_naive_loop": round(float(np.median(naive)), 3),
        "spread_correlation": {"seconds_correlation_query": spread(query, 4),
                               "seconds_correlation_naive_loop": spread(naive)},
    })
    result["load_before"], result["load_after"] = load_before, load_average()
    if args.save:
        print(f"saved to {save_result('ish_grids', result, args.quick, args.note, load_before)}",
              file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
