"""Benchmark: a VBN session opened by streaming (HTTP ranges) against download-then-open.

The sample world's VBN bucket is put in a mirror folder (hard links) with one session file
replaced by a **real-scale synthetic** one (:func:`abc_helpers.sample.vbn_large.enlarge_session`:
2,100 units over 2.5 h, 1.58 GB; ``--quick``: 200 units over 15 min), its manifest entry
rewritten with the new file's blake2b, and the folder served by the sample server on loopback,
bare and with the modelled link (20 ms to the first byte of every response, 50 MB/s per response).
Every client is a fresh process with an empty cache folder (the first-open cost, paid once per
process whatever the method: imports, and loading the NWB namespaces cached in the files, which
``VbnEcephysSession`` does once per process, is paid on a small local file before the clock starts):

* ``stream``: ``get_ecephys_session(sid, stream=True)``, the metadata and ``get_units()`` (the
  units table without its spike-level columns, as the AllenSDK's gives it: the ``open_units``
  figure); then ``get_spike_times`` of 100 units of the probe with most units (``spikes100``); then
  ``stimulus_presentations`` and ``trials`` (``tables``: time and bytes of each); then, in a second
  fresh process on the same cache folder, the open and the units again (``reopen``);
* ``download``: ``get_ecephys_session(sid)`` (the whole file, blake2b checked), then the same calls.

Each on loopback and on the link, ``--rounds`` times (3 at least) in alternating order; figures
are medians with their spread, speedups taken within a round. Bytes are counted by the server
for the session file. Then a room: 30 clients at once (``--quick``: 8), each opening a different
sample-scale session by streaming and reading its units, each checked for exact equality with the
downloaded file's units. The last line printed is one JSON object.

Usage::

    python bench/nwb_stream.py --quick
    python bench/nwb_stream.py --save --note "2 cores shared with other jobs"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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

BUCKET = "visual-behavior-neuropixels-data"
PREFIX = "visual-behavior-neuropixels"
MANIFEST = f"{PREFIX}/manifests/{PREFIX}_project_manifest_v0.3.0.json"
CACHE_HOME = Path.home() / ".cache" / "abc_helpers" / "bench-nwb-stream"


def session_key(sid: int) -> str:
    return f"{PREFIX}/behavior_ecephys_sessions/{sid}/ecephys_session_{sid}.nwb"


def is_session_file(entry: dict) -> bool:
    """Whether a manifest entry is a session's NWB file (not a probe's LFP file)."""
    return entry["url"].rsplit("/", 1)[-1].startswith("ecephys_session_")


# -- the served folder ---------------------------------------------------------------------------
def build_mirror(mirror: Path, quick: bool) -> tuple[int, int]:
    """Fill *mirror* with the sample VBN bucket, one session at the real scale; return (sid, size)."""
    from abc_helpers.sample import build_world
    from abc_helpers.sample.vbn_large import REAL_SECONDS, REAL_UNITS, enlarge_session

    world = build_world()
    src = world / "s3" / BUCKET
    if mirror.exists():
        shutil.rmtree(mirror)
    for path in src.rglob("*"):
        if path.is_file():
            target = mirror / BUCKET / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    manifest_path = mirror / BUCKET / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    entry = next(e for e in manifest["data_files"].values() if is_session_file(e))
    sid = int(entry["url"].rsplit("/", 2)[-2])
    units, seconds = (200, 900.0) if quick else (REAL_UNITS, REAL_SECONDS)
    # keyed by the world's fingerprint (the generators' source, vbn_large.py's included)
    large = CACHE_HOME / f"session-{sid}-{units}x{seconds:g}-{world.name}.nwb"
    for stale in CACHE_HOME.glob("session-*"):
        if f"-{world.name}." not in stale.name:  # from another world: up to 1.7 GB each, never read again
            stale.unlink()
    if not large.exists():
        CACHE_HOME.mkdir(parents=True, exist_ok=True)
        enlarge_session(src / session_key(sid), large, n_units=units, seconds=seconds)
    digest = large.with_suffix(".blake2b")
    if not digest.exists():
        hasher = hashlib.blake2b()
        with open(large, "rb") as fh:
            while chunk := fh.read(1 << 22):
                hasher.update(chunk)
        digest.write_text(hasher.hexdigest())
    target = mirror / BUCKET / session_key(sid)
    target.unlink()
    os.link(large, target)
    entry["file_hash"] = digest.read_text()
    manifest_path.unlink()  # a hard link into the world: never write through it
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return sid, large.stat().st_size


# -- a client (a fresh process) ------------------------------------------------------------------
def client(args: argparse.Namespace) -> None:
    """Open one session as *args.mode* says, time each step, print JSON (and save units if asked)."""
    import warnings

    import numpy as np

    from abc_helpers import VbnEcephysSession, VbnProjectCache

    warnings.simplefilter("ignore")
    # the once-per-process cost, before the clock: imports, and the NWB namespaces the session files
    # cache (VbnEcephysSession loads them once per process for every file that caches the same ones)
    with VbnEcephysSession(args.warm) as warm:
        warm.get_units()
    cache = VbnProjectCache.from_s3_cache(args.cache, source=args.url, progressbar=False)
    cache.get_ecephys_session_table()
    sid = int(args.sid)
    out: dict = {}
    t0 = time.perf_counter()
    session = cache.get_ecephys_session(sid, stream=args.mode == "stream")
    _ = session.metadata
    units = session.get_units()
    out["open_units"] = time.perf_counter() - t0
    stream = session.stream

    def fetched() -> int:
        return stream.stats.bytes_fetched if stream else 0

    out["fetched_open_units"] = fetched()
    if args.units_out:
        units.to_pickle(args.units_out)
    if args.steps == "all":
        channels = session.get_channels(filter_by_validity=False)
        probe = channels.loc[units["peak_channel_id"], "probe_id"].to_numpy()
        ids, counts = np.unique(probe, return_counts=True)
        chosen = units.index[probe == ids[np.argmax(counts)]][:100]
        before = fetched()
        t1 = time.perf_counter()
        spikes = session.get_spike_times(chosen)
        out["spikes100"] = time.perf_counter() - t1
        out["fetched_spikes100"] = fetched() - before
        out["spikes100_stored"] = int(sum(s.nbytes for s in spikes.values()))
        out["spikes100_units"] = len(spikes)
        for name in ("stimulus_presentations", "trials"):
            before = fetched()
            t2 = time.perf_counter()
            table = getattr(session, name)
            out[name] = time.perf_counter() - t2
            out[f"fetched_{name}"] = fetched() - before
            out[f"rows_{name}"] = len(table)
        out["fetched_total"] = fetched()
    session.close()
    print(json.dumps(out), flush=True)


def run_client(url: str, cache: Path, sid: int, mode: str, warm: Path, steps: str = "all",
               units_out: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--client", url, "--cache", str(cache), "--sid", str(sid),
           "--mode", mode, "--warm", str(warm), "--steps", steps]
    if units_out:
        cmd += ["--units-out", str(units_out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"client ({mode}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the measurements ----------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 200-unit, 15-minute session; a room of 8")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--sid", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--warm", help=argparse.SUPPRESS)
    parser.add_argument("--steps", default="all", help=argparse.SUPPRESS)
    parser.add_argument("--units-out", help=argparse.SUPPRESS)
    add_save_arguments(parser)
    args = parser.parse_args()
    if args.client:
        args.url = args.client
        client(args)
        return

    import pandas as pd
    import requests

    from abc_helpers import VbnEcephysSession
    from abc_helpers.sample import Link, SampleServer

    rounds = rounds_of(args)
    tmp = Path(tempfile.mkdtemp(prefix="nwb-stream-"))
    mirror = CACHE_HOME / "mirror"
    sid, file_bytes = build_mirror(mirror, args.quick)
    warm = next(p for p in (mirror / BUCKET).rglob("ecephys_session_*.nwb") if p.stat().st_size < 50e6)
    print(f"session {sid}: {file_bytes} bytes (synthetic, real scale)", file=sys.stderr)
    key = f"{BUCKET}/{session_key(sid)}"
    summary: dict = {"file_bytes": file_bytes, "session": sid, "rounds": rounds,
                     "link_model": {"latency_ms": LINK_LATENCY_MS, "bandwidth_mbs": LINK_BANDWIDTH_MBS}}
    load_before = load_average()
    with SampleServer(mirror=mirror) as server:
        for path in (mirror / BUCKET).rglob("*"):  # the mirror hashes each file (its ETag) once
            if path.is_file():
                requests.head(f"{server.url}/{BUCKET}/{path.relative_to(mirror / BUCKET).as_posix()}", timeout=600)
        for tag, link in (("loopback", None), ("link", Link(latency_s=LINK_LATENCY_MS / 1000,
                                                              bandwidth=LINK_BANDWIDTH_MBS * 1e6))):
            server.set_link(link)

            def measure(mode: str, tag: str = tag) -> dict:
                folder = tmp / f"{tag}-{mode}"
                shutil.rmtree(folder, ignore_errors=True)
                server.reset_stats()
                out = run_client(server.url, folder, sid, mode, warm)
                out["bytes"] = server.stats()["bytes_sent"].get(key, 0)
                if mode == "stream":
                    server.reset_stats()
                    again = run_client(server.url, folder, sid, mode, warm, steps="units")
                    out["reopen"] = again["open_units"]
                    out["bytes_reopen"] = server.stats()["bytes_sent"].get(key, 0)
                shutil.rmtree(folder, ignore_errors=True)
                return out

            def log(i: int, name: str, out: dict, tag: str = tag) -> None:
                print(f"{tag} round {i}: {name} {json.dumps(out)}", file=sys.stderr, flush=True)

            results = alternating({"stream": lambda: measure("stream"),
                                   "download": lambda: measure("download")}, rounds, log)
            s, d = results["stream"], results["download"]
            summary[tag] = {
                "stream_open_units_s": spread([r["open_units"] for r in s]),
                "download_open_units_s": spread([r["open_units"] for r in d]),
                "speedup_open_units": spread(ratios([r["open_units"] for r in d], [r["open_units"] for r in s])),
                "stream_bytes_open_units": spread([r["fetched_open_units"] for r in s], 0),
                "stream_spikes100_s": spread([r["spikes100"] for r in s]),
                "download_spikes100_s": spread([r["spikes100"] for r in d]),
                "spikes100_stored_bytes": s[0]["spikes100_stored"],
                "stream_bytes_spikes100": spread([r["fetched_spikes100"] for r in s], 0),
                **{f"{mode}_{name}_s": spread([r[name] for r in runs])
                   for name in ("stimulus_presentations", "trials") for mode, runs in (("stream", s), ("download", d))},
                **{f"stream_bytes_{name}": spread([r[f"fetched_{name}"] for r in s], 0)
                   for name in ("stimulus_presentations", "trials")},
                "rows_stimulus_presentations": s[0]["rows_stimulus_presentations"],
                "rows_trials": s[0]["rows_trials"],
                "stream_bytes_total": spread([r["bytes"] for r in s], 0),
                "download_bytes_total": spread([r["bytes"] for r in d], 0),
                "stream_reopen_s": spread([r["reopen"] for r in s]),
                "bytes_reopen": max(r["bytes_reopen"] for r in s),
            }
        # the room: many clients at once on the link, each a different sample-scale session
        n_room = 8 if args.quick else 30
        manifest = json.loads((mirror / BUCKET / MANIFEST).read_text())
        sids = [int(e["url"].rsplit("/", 2)[-2]) for e in manifest["data_files"].values() if is_session_file(e)]
        sids = [s for s in sids if s != sid][:n_room]
        expected = {}
        for other in sids:
            with VbnEcephysSession(mirror / BUCKET / session_key(other)) as local:
                expected[other] = local.get_units()
        procs = []
        started = time.perf_counter()
        for other in sids:
            cmd = [sys.executable, __file__, "--client", server.url, "--cache", str(tmp / f"room-{other}"),
                   "--sid", str(other), "--mode", "stream", "--warm", str(warm), "--steps", "units",
                   "--units-out", str(tmp / f"room-{other}.pkl")]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outs = [p.communicate() for p in procs]
        room_seconds = time.perf_counter() - started
        failed = [err[-500:] for p, (_, err) in zip(procs, outs, strict=True) if p.returncode]
        exact = sum(1 for other in sids if (tmp / f"room-{other}.pkl").exists()
                    and pd.read_pickle(tmp / f"room-{other}.pkl").equals(expected[other]))
        summary["room"] = {"clients": len(sids), "exact": exact, "failed": len(failed),
                           "seconds_total": round(room_seconds, 2), "link": "20ms_50MBs",
                           "note": "each client a fresh process (pynwb's first open included); "
                                   "sample-scale sessions (about 4 MB each)"}
    load_after = load_average()
    shutil.rmtree(tmp, ignore_errors=True)
    loop, linked = summary["loopback"], summary["link"]
    summary["bytes_ratio_open_units_vs_file"] = round(linked["stream_bytes_open_units"]["median"] / file_bytes, 6)
    summary["speedup_open_units_vs_download_link"] = linked["speedup_open_units"]["median"]
    summary["speedup_open_units_vs_download_loopback"] = loop["speedup_open_units"]["median"]
    summary["bytes_ratio_spikes_vs_stored"] = round(
        linked["stream_bytes_spikes100"]["median"] / linked["spikes100_stored_bytes"], 3)
    summary["bytes_reopen"] = max(loop["bytes_reopen"], linked["bytes_reopen"])
    if args.save:
        out = save_result("nwb_stream", summary, args.quick, args.note, load_before, load_after)
        print(f"saved {out}", file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
