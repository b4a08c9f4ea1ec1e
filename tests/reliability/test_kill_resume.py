"""SIGKILL mid-transfer, then resume: the killed process leaves a ``.part`` and no final file; the
next call continues from the ``.part`` and is sent exactly the bytes that were missing.

The transfer runs in a child process (a fresh interpreter) against a loopback server whose fault
plan stalls the body of the target half-way, so the kill lands mid-body at a known place.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from support.downloads import PATHS, check_whole, grid_experiment, sent

from abc_helpers.sample import SampleServer, build_world
from abc_helpers.sources import Source

#: What the child runs for each download path (same folders as the builders of test_faults).
CHILD = {
    "abc-h5ad": "AbcProjectCache.from_s3_cache(tmp / 'abc', source=src)"
                ".get_data_path('WMB-10XMulti', 'WMB-10XMulti/log2')",
    "abc-directory": "AbcProjectCache.from_s3_cache(tmp / 'abc', source=src)"
                     ".get_directory_metadata('WMB-taxonomy')",
    "vbn-units-table": "VbnProjectCache.from_s3_cache(tmp / 'vbn', source=src, progressbar=False)"
                       ".get_unit_table()",
    "ish-grid-zip": "ish.download_grid({eid}, tmp / 'grids', source=src)",
}
PRELUDE = """
import sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
from abc_helpers import ish
from abc_helpers.cache import AbcProjectCache
from abc_helpers.neuropixels import VbnProjectCache
from abc_helpers.sources import Source
src = Source("sample", sys.argv[1])
tmp = Path(sys.argv[2])
"""


RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module", autouse=True)
def _report():
    """Write the measured bytes to ``$ABC_HELPERS_FAULT_REPORT.kill.json`` (if set)."""
    yield
    out = os.environ.get("ABC_HELPERS_FAULT_REPORT")
    if out and RESULTS:
        with open(out + ".kill.json", "w") as fh:
            json.dump(RESULTS, fh, indent=1)


@pytest.fixture
def server():
    with SampleServer(root=build_world()) as srv:
        yield srv


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("path", list(CHILD))
def test_sigkill_mid_transfer_then_resume(path, server, tmp_path):
    """Kill -9 half-way through a body: .part kept, no final file; the next call resumes it."""
    source = Source("sample", server.url)
    target = PATHS[path](tmp_path, source, build_world())
    local, key, _, size = max(target.files, key=lambda f: f[3])  # stall the largest file
    stall_after = size // 2
    server.set_faults([f"stall-after={stall_after},stall=60,count=1,key={key}"])
    code = PRELUDE + CHILD[path].format(eid=grid_experiment(build_world()))
    child = subprocess.Popen([sys.executable, "-c", code, server.url, str(tmp_path)],
                             stderr=subprocess.PIPE)
    part = local.with_name(local.name + ".part")
    try:
        _wait(lambda: server.faults.effective()[0][1] == 1 or child.poll() is not None,
              60, "the child to reach the stall")  # the server counts the stall as it begins
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        last = [-1]

        def settled() -> bool:  # the .part holds what was sent and stops growing
            now = part.stat().st_size if part.exists() else -1
            done, last[0] = now == last[0] and now > 0, now
            return done

        _wait(lambda: (time.sleep(0.1), settled())[1], 30, "the .part to settle")
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert child.returncode == -signal.SIGKILL
    assert part.exists() and 0 < part.stat().st_size <= stall_after
    assert not local.exists(), "a killed transfer left a file at the final path"
    kept = part.stat().st_size
    # what is on disk now: finished files (the child completed them) and the .part of the killed one
    present = sum(f[3] if f[0].is_file() else f[0].with_name(f[0].name + ".part").stat().st_size
                  if f[0].with_name(f[0].name + ".part").exists() else 0 for f in target.files)

    server.set_faults(None)
    before = sent(server, target)
    target.fetch()  # the next call, in this process
    check_whole(target)
    second = sent(server, target) - before
    RESULTS[path] = {"size": target.size, "killed_file_size": size, "part_bytes_kept": kept,
                     "bytes_on_disk_before_resume": present, "bytes_sent_by_resume": second}
    assert second == target.size - present, \
        f"the resume sent {second} bytes; {target.size - present} were missing (kept {kept})"
