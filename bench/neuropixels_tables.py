"""Benchmark: VbnProjectCache tables against pandas.read_csv and the AllenSDK's eager start-up.

A full-size synthetic VBN bucket (319,013 units, 347,520 channels, 905 probes, 153 sessions, 3,424
behavior sessions; the real columns) is generated once into a folder outside the repository
(``--data-dir``, default: the user cache folder) and served by the sample server on loopback.
Each measurement runs in its own Python process (fresh memory, no warm pandas caches):

* ``read_csv``: ``pandas.read_csv(units.csv)`` of the downloaded file (the baseline);
* ``first_load``: ``get_unit_table()`` with units.csv already downloaded and no parsed cache:
  parse, type, index and write the parquet table cache;
* ``second_load``: ``get_unit_table()`` again, from the parquet cache;
* ``eager_startup``: what the AllenSDK does when the cache is built: list and download the manifest,
  download all five tables and read them with ``pandas.read_csv`` plus the SDK's typing (through
  the same transfer engine, so only the eager habit differs);
* ``lazy_startup``: ours: ``from_s3_cache`` then ``get_ecephys_session_table()`` only.

Every method runs once per round, ``--rounds`` times (3 at least), the order reversed every other
round; each figure is the median over the rounds, each ratio is taken within a round, and
``spread`` holds the median, lowest, highest and every round. The load average is sampled before
and after. Prints one JSON line last. ``--quick`` uses a tenth of the data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from _measure import (
    add_save_arguments,
    alternating,
    load_average,
    peak_rss_mb,
    ratios,
    rounds_of,
    save_result,
    spread,
)

QUICK_SCALE = {"n_sessions": 16, "n_abnormal": 5, "n_probes": 92, "n_units": 31_901, "n_behavior_only": 330, "n_nwb": 16}


def build_bench_world(data_dir: Path, quick: bool) -> tuple[Path, dict]:
    """Generate (once, cached by scale and generator source) a world holding only the five tables."""
    from abc_helpers.sample import vbn
    from abc_helpers.sample.world import WorldWriter
    from abc_helpers.sources import VBN_BUCKET

    scale = vbn.VbnScale(**QUICK_SCALE) if quick else vbn.FULL_SCALE
    code = hashlib.sha256(Path(vbn.__file__).read_bytes()).hexdigest()[:12]
    root = data_dir / f"world-{'quick' if quick else 'full'}-{code}"
    if (root / "WORLD.json").exists():
        return root, asdict(scale)
    print(f"generating the benchmark bucket ({scale}) in {root} ...", file=sys.stderr, flush=True)
    tmp = root.with_name(root.name + f".building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tables = vbn.build_tables(scale)
    hashes: dict[str, str] = {}
    with WorldWriter(tmp) as writer:
        for name in vbn.TABLE_NAMES:
            data = vbn.csv_bytes(tables[name])
            obj = writer.put_bytes(VBN_BUCKET, vbn.relative_key("metadata", name), data)
            hashes[obj.md5] = vbn.blake2b_hex(data)
        writer.put_bytes(VBN_BUCKET, vbn.manifest_key("0.1.0"), vbn.manifest_bytes(writer, "0.1.0", {}, hashes))
    (tmp / "WORLD.json").write_text(json.dumps({"synthetic": True, "bench": "neuropixels_tables",
                                                "scale": asdict(scale)}))
    if root.exists():
        shutil.rmtree(root)
    Path(tmp).replace(root)
    return root, asdict(scale)


# -- workers (one process each) -------------------------------------------------------------------
def _worker(method: str, source: str, cache_dir: Path) -> dict:
    import pandas as pd

    from abc_helpers.neuropixels import INDEX_COLUMNS, INTEGER_COLUMNS, VbnProjectCache

    out: dict = {}
    if method == "read_csv":
        path = next(cache_dir.glob("visual-behavior-neuropixels-*/project_metadata/units.csv"))
        t0 = time.perf_counter()
        df = pd.read_csv(path)
        out["seconds"] = time.perf_counter() - t0
        out["rows"] = len(df)
    elif method in ("first_load", "second_load"):
        cache = VbnProjectCache.from_s3_cache(cache_dir, source=source, progressbar=False)
        t0 = time.perf_counter()
        df = cache.get_unit_table()
        out["seconds"] = time.perf_counter() - t0
        out["rows"] = len(df)
    elif method == "eager_startup":
        t0 = time.perf_counter()
        cache = VbnProjectCache.from_s3_cache(cache_dir, source=source, progressbar=False)
        tables = {}
        for name in cache.manifest["metadata_files"]:  # the SDK downloads and reads all at start
            df = pd.read_csv(cache.get_metadata_path(name))
            if name in ("ecephys_sessions", "behavior_sessions"):
                for col in INTEGER_COLUMNS:
                    if col in df.columns:
                        df[col] = df[col].astype("Int64")
            tables[name] = df.set_index(INDEX_COLUMNS[name])
        out["seconds"] = time.perf_counter() - t0
        out["rows"] = len(tables["units"])
    elif method == "lazy_startup":
        t0 = time.perf_counter()
        cache = VbnProjectCache.from_s3_cache(cache_dir, source=source, progressbar=False)
        df = cache.get_ecephys_session_table()
        out["seconds"] = time.perf_counter() - t0
        out["rows"] = len(df)
    else:
        raise ValueError(f"Unknown method '{method}'")
    out["max_rss_mb"] = peak_rss_mb()
    return out



def _run(method: str, source: str, cache_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--source", source, "--cache-dir", str(cache_dir)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker '{method}' failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the data")
    add_save_arguments(parser)
    parser.add_argument("--data-dir", default=None, help="where the benchmark bucket is generated (cached)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--source", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.source, Path(args.cache_dir))))
        return 0

    from platformdirs import user_cache_dir

    from abc_helpers.neuropixels import VbnProjectCache
    from abc_helpers.sample import start

    data_dir = Path(args.data_dir or Path(user_cache_dir("abc_helpers")) / "bench" / "neuropixels_tables")
    repeat = rounds_of(args)
    world, scale = build_bench_world(data_dir, args.quick)
    server = start(root=world)
    work = data_dir / f"caches-{os.getpid()}"
    try:
        source = server.url
        prepared = work / "prepared"
        cache = VbnProjectCache.from_s3_cache(prepared, source=source, progressbar=False)
        units_csv = cache.get_metadata_path("units")
        rss: dict[str, float] = {}
        count = iter(range(10**6))

        def method(name: str):
            def go() -> float:
                if name in ("eager_startup", "lazy_startup"):
                    cache_dir = work / f"{name}-{next(count)}"
                    shutil.rmtree(cache_dir, ignore_errors=True)
                else:
                    cache_dir = prepared
                    if name == "first_load":
                        for parsed in units_csv.parent.glob("units.*.parquet"):
                            parsed.unlink()
                result = _run(name, source, cache_dir)
                rss[name] = max(rss.get(name, 0.0), result["max_rss_mb"])
                print(f"{name:14s} {result['seconds']:.3f} s, {result['rows']} rows, "
                      f"peak RSS {result['max_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
                return result["seconds"]
            return go

        load_before = load_average()
        # second_load reads the parquet cache first_load writes: first_load comes first in round 0
        times = alternating({m: method(m) for m in ("read_csv", "first_load", "second_load",
                                                    "eager_startup", "lazy_startup")}, repeat)
        load_after = load_average()
        med = {m: statistics.median(v) for m, v in times.items()}
        per_round = {  # within a round, then the median
            "ratio_first_load_vs_read_csv": ratios(times["first_load"], times["read_csv"]),
            "speedup_second_load_vs_read_csv": ratios(times["read_csv"], times["second_load"]),
            "speedup_startup_vs_eager": ratios(times["eager_startup"], times["lazy_startup"])}
        report = {
            "bench": "neuropixels_tables",
            "quick": args.quick,
            "rounds": repeat,
            "units_rows": scale["n_units"],
            "units_csv_mb": round(units_csv.stat().st_size / 1e6, 1),
            "seconds": {m: round(v, 3) for m, v in med.items()},
            "peak_rss_mb": {m: round(v) for m, v in rss.items()},
            "ratio_first_load_vs_read_csv": round(statistics.median(per_round["ratio_first_load_vs_read_csv"]), 3),
            "speedup_second_load_vs_read_csv": round(
                statistics.median(per_round["speedup_second_load_vs_read_csv"]), 2),
            "speedup_startup_vs_eager": round(statistics.median(per_round["speedup_startup_vs_eager"]), 2),
            "spread": {**{f"seconds_{m}": spread(v) for m, v in times.items()},
                       **{k: spread(v) for k, v in per_round.items()}},
            "load_before": load_before,
            "load_after": load_after,
            "goals": {"ratio_first_load_vs_read_csv": "<= 1.2", "speedup_second_load_vs_read_csv": ">= 5",
                      "speedup_startup_vs_eager": ">= 10"},
        }
        report["goals_met"] = (report["ratio_first_load_vs_read_csv"] <= 1.2
                               and report["speedup_second_load_vs_read_csv"] >= 5
                               and report["speedup_startup_vs_eager"] >= 10)
        if args.save:
            out = save_result("neuropixels_tables", report, args.quick, args.note, load_before, load_after)
            print(f"saved to {out}", file=sys.stderr)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
