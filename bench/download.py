"""Benchmark: our downloads against the limits of the machine and a sequential loop.

(a) One file of >= 500 MB from the sample server (run in its own process): our ``download``
    (md5 computed while receiving) against the *limit*, the slower of a plain streaming GET to
    /dev/null (no hashing) and an md5 of the same bytes from memory. Goal: ours/limit <= 1.15.
(b) A directory of 200 small files: ``download_many`` (thread pool) against a sequential loop of
    plain GETs with an md5 check each. Measured twice: with the server answering at once, and with
    a 20 ms first-byte latency per request (``stall`` fault), which is closer to S3 than loopback.

Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
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

from abc_helpers.sample.world import WorldWriter
from abc_helpers.transfer import DownloadJob, download, download_many

BUCKET = "allen-brain-cell-atlas"


def build_world(root: Path, big_mb: int, n_small: int) -> Path:
    """Build (once) a world with one big object and *n_small* small ones."""
    marker = root / f"READY-{big_mb}-{n_small}"
    if marker.exists():
        return root
    rng = np.random.default_rng(0)
    with WorldWriter(root) as writer:
        part = root / "big.tmp"
        with open(part, "wb") as fh:
            for _ in range(big_mb):
                fh.write(rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes())
        writer.put_file(BUCKET, "bench/big.bin", part)
        for i in range(n_small):
            writer.put_bytes(BUCKET, f"bench/small/file_{i:03d}.csv",
                             rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    marker.write_text("ok")
    return root


def start_server(root: Path, link: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    """The sample server in its own process, with the link options *link* (:func:`serve_args`)."""
    cmd = [sys.executable, "-m", "abc_helpers.sample", "serve", "--root", str(root), *(link or [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    return proc, url


def md5_of(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def measure(root: Path, link: list[str], big_size: int, big_md5: str, small_keys: list[str],
            small_md5: dict[str, str], rounds: int, tmp: Path) -> dict[str, list[float]]:
    """Every method, *rounds* times in alternating order, against one server (over *link*)."""
    big_src = root / "s3" / BUCKET / "bench" / "big.bin"
    data = big_src.read_bytes()
    proc, url = start_server(root, link)
    session = requests.Session()
    big_url = f"{url}/{BUCKET}/bench/big.bin"
    count = iter(range(10**6))

    def timed(fn):
        def go() -> float:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        return go

    def raw_get() -> None:
        received = 0
        with session.get(big_url, stream=True) as r, open("/dev/null", "wb") as out:
            r.raise_for_status()
            for chunk in r.iter_content(1 << 20):
                out.write(chunk)
                received += len(chunk)
        assert received == big_size, (received, big_size)

    def md5_memory() -> None:
        hashlib.md5(data).hexdigest()

    def ours() -> None:
        target = tmp / f"big-{next(count)}.bin"
        download(big_url, target, known_hash=f"md5:{big_md5}", progressbar=False)
        target.unlink()

    def sequential() -> None:
        base = tmp / f"seq{next(count)}"
        for k in small_keys:
            path = base / k
            path.parent.mkdir(parents=True, exist_ok=True)
            r = session.get(f"{url}/{BUCKET}/{k}")
            r.raise_for_status()
            path.write_bytes(r.content)
            assert md5_of(path) == small_md5[k]

    def pool() -> None:
        base = tmp / f"pool{next(count)}"
        jobs = [DownloadJob(f"{url}/{BUCKET}/{k}", base / k, f"md5:{small_md5[k]}") for k in small_keys]
        download_many(jobs, max_workers=16, progressbar=False)

    try:
        raw_get()  # warm up
        return alternating({"raw_get": timed(raw_get), "md5_memory": timed(md5_memory), "ours": timed(ours),
                            "sequential": timed(sequential), "pool": timed(pool)}, rounds)
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run (a 200 MB file)")
    parser.add_argument("--latency-ms", type=float, default=LINK_LATENCY_MS,
                        help=f"the modelled link's first-byte latency (default {LINK_LATENCY_MS:g} ms)")
    parser.add_argument("--bandwidth-mbs", type=float, default=LINK_BANDWIDTH_MBS,
                        help=f"the modelled link's bandwidth per response (default {LINK_BANDWIDTH_MBS:g} MB/s)")
    add_save_arguments(parser)
    args = parser.parse_args()
    big_mb = 200 if args.quick else 512
    rounds = rounds_of(args)
    root = build_world(Path(user_cache_dir("abc_helpers")) / "bench" / "download-world", big_mb, 200)
    big_src = root / "s3" / BUCKET / "bench" / "big.bin"
    big_md5 = md5_of(big_src)
    big_size = big_src.stat().st_size
    small_keys = [f"bench/small/file_{i:03d}.csv" for i in range(200)]
    small_md5 = {k: md5_of(root / "s3" / BUCKET / k) for k in small_keys}
    load_before = load_average()
    result: dict = {"file_mb": big_mb, "small_files": len(small_keys), "rounds": rounds,
                    "link": {"latency_ms": args.latency_ms, "bandwidth_mbs": args.bandwidth_mbs}}
    spreads: dict = {}
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        for tag, link in (("", []), ("_link", serve_args(args.latency_ms, args.bandwidth_mbs))):
            t = measure(root, link, big_size, big_md5, small_keys, small_md5, rounds, Path(tmp) / tag.strip("_"))
            limit = [max(a, b) for a, b in zip(t["raw_get"], t["md5_memory"], strict=True)]
            figures = {
                f"seconds_ours{tag}": (t["ours"], 3),
                f"seconds_raw_get{tag}": (t["raw_get"], 3),
                f"seconds_md5_memory{tag}": (t["md5_memory"], 3),
                f"ratio_vs_limit{tag}": (ratios(t["ours"], limit), 3),
                f"ratio_vs_raw_get{tag}": (ratios(t["ours"], t["raw_get"]), 3),
                f"throughput_mb_s_ours{tag}": ([big_mb / s for s in t["ours"]], 1),
                f"seconds_sequential{tag}": (t["sequential"], 3),
                f"seconds_ours_small{tag}": (t["pool"], 3),
                f"speedup_vs_sequential{tag}": (ratios(t["sequential"], t["pool"]), 2),
            }
            for key, (values, digits) in figures.items():
                result[key] = round(statistics.median(values), digits)
                spreads[key] = spread(values, digits)
    result["spread"] = spreads
    result["load_before"], result["load_after"] = load_before, load_average()
    if args.save:
        print(f"saved to {save_result('download', result, args.quick, args.note, load_before)}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
