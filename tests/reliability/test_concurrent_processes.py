"""Two (or three) processes fetching the same directory at once end with one correct copy of each file.

Each process is a fresh interpreter with its own ``AbcProjectCache`` on the same folder, started
from scratch (so they also race on the release manifest). The server stalls every file's first
body half-way for a second, so the processes are in flight on the same files at the same time;
the per-file locks must make the others wait and then reuse the finished file.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support.downloads import abc_cache, abc_files, check_whole

from abc_helpers.sample import SampleServer, build_world
from abc_helpers.sources import Source

CODE = """
import sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
from abc_helpers.cache import AbcProjectCache
from abc_helpers.sources import Source
cache = AbcProjectCache.from_s3_cache(sys.argv[2], source=Source("sample", sys.argv[1]))
getattr(cache, sys.argv[3])(sys.argv[4])
"""
CASES = {
    "WMB-taxonomy-metadata": ("get_directory_metadata", "WMB-taxonomy", ("metadata",)),
    "Allen-CCF-2020-data": ("get_directory_data", "Allen-CCF-2020", ("image_volumes",)),
}


@pytest.mark.parametrize(("case", "n_processes"), [("WMB-taxonomy-metadata", 3), ("Allen-CCF-2020-data", 2)])
def test_processes_fetching_one_directory(case, n_processes, tmp_path):
    """N processes, one directory, one cache folder: each file sent once, verified, no leftovers."""
    method, directory, kinds = CASES[case]
    with SampleServer(root=build_world()) as server:
        probe = abc_cache(tmp_path / "probe", Source("sample", server.url))
        cache_dir = tmp_path / "shared"
        files = [(cache_dir / local.relative_to(probe.cache_dir), key, known_hash, size)
                 for local, key, known_hash, size in abc_files(probe, probe.manifest.files(directory, kinds))]
        server.reset_stats()
        server.set_faults([f"stall-after=50%,stall=1.0,count=1,key={key}" for _, key, _, _ in files])
        procs = [subprocess.Popen([sys.executable, "-c", CODE, server.url, str(cache_dir), method,
                                   directory], stderr=subprocess.PIPE) for _ in range(n_processes)]
        errors = [p.communicate(timeout=120)[1].decode() for p in procs]
        assert [p.returncode for p in procs] == [0] * n_processes, "\n".join(errors)[-3000:]
        sent = server.stats()["bytes_sent"]
        assert [n for _, n in server.faults.effective()] == [1] * len(files), "a stall did not happen"
    check_whole(files)
    for _, key, _, size in files:
        assert sent.get(key) == size, f"{key}: {sent.get(key)} bytes sent for {size}: fetched twice?"
    assert [p for p in cache_dir.rglob("*") if p.name.endswith((".part", ".tmp"))] == []
    record = json.loads((cache_dir / "_downloaded_data.json").read_text())["files"]
    for local, _, known_hash, size in files:
        assert record[local.relative_to(cache_dir).as_posix()] == {"hash": known_hash, "size": size}
