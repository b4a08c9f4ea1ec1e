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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
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


def start_server(root: Path, fault: str | None = None) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "abc_helpers.sample", "serve", "--root", str(root)]
    if fault:
        cmd += ["--fault", fault]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    return proc, url


def md5_of(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run (200 MB, 3 repeats)")
    args = parser.parse_args()
    big_mb = 200 if args.quick else 512
    repeat = 3
    root = build_world(Path(user_cache_dir("abc_helpers")) / "bench" / "download-world", big_mb, 200)
    big_src = root / "s3" / BUCKET / "bench" / "big.bin"
    big_md5 = md5_of(big_src)
    small_keys = [f"bench/small/file_{i:03d}.csv" for i in range(200)]
    small_md5 = {k: md5_of(root / "s3" / BUCKET / k) for k in small_keys}
    data = big_src.read_bytes()
    big_size = len(data)

    proc, url = start_server(root)
    try:
        session = requests.Session()
        big_url = f"{url}/{BUCKET}/bench/big.bin"

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

        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "big.bin"

            def ours() -> None:
                target.unlink(missing_ok=True)
                download(big_url, target, known_hash=f"md5:{big_md5}", progressbar=False)

            raw_get()  # warm up
            t_raw = best(raw_get, repeat)
            t_md5 = best(md5_memory, repeat)
            t_ours = best(ours, repeat)
        data = None  # free 500 MB before the small-file runs
        limit = max(t_raw, t_md5)

        def small_runs(server_url: str) -> tuple[float, float]:
            with tempfile.TemporaryDirectory() as tmp:
                def sequential() -> None:
                    for k in small_keys:
                        path = Path(tmp) / "seq" / k
                        path.parent.mkdir(parents=True, exist_ok=True)
                        r = session.get(f"{server_url}/{BUCKET}/{k}")
                        r.raise_for_status()
                        path.write_bytes(r.content)
                        assert md5_of(path) == small_md5[k]

                counter = iter(range(10**6))

                def pool() -> None:
                    base = Path(tmp) / f"pool{next(counter)}"
                    jobs = [DownloadJob(f"{server_url}/{BUCKET}/{k}", base / k, f"md5:{small_md5[k]}")
                            for k in small_keys]
                    download_many(jobs, max_workers=16, progressbar=False)

                return best(sequential, repeat), best(pool, repeat)

        t_seq, t_pool = small_runs(url)
    finally:
        proc.terminate()
        proc.wait()

    proc, url = start_server(root, fault="stall=0.02,key=*/bench/small/*")
    try:
        t_seq_lat, t_pool_lat = small_runs(url)
    finally:
        proc.terminate()
        proc.wait()

    result = {
        "file_mb": big_mb,
        "seconds_ours": round(t_ours, 3),
        "seconds_raw_get": round(t_raw, 3),
        "seconds_md5_memory": round(t_md5, 3),
        "ratio_vs_limit": round(t_ours / limit, 3),
        "ratio_vs_raw_get": round(t_ours / t_raw, 3),
        "throughput_mb_s_ours": round(big_mb / t_ours, 1),
        "small_files": len(small_keys),
        "seconds_sequential_20ms_latency": round(t_seq_lat, 3),
        "seconds_ours_20ms_latency": round(t_pool_lat, 3),
        "speedup_vs_sequential": round(t_seq_lat / t_pool_lat, 2),
        "seconds_sequential_no_latency": round(t_seq, 3),
        "seconds_ours_no_latency": round(t_pool, 3),
        "speedup_vs_sequential_no_latency": round(t_seq / t_pool, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
