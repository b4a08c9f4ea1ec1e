"""Drive the REAL AllenSDK ``VisualBehaviorNeuropixelsProjectCache`` against an S3 endpoint; dump JSON.

Runs in the separate AllenSDK virtualenv (``.venv-allensdk``), never imports ``abc_helpers``, and
changes no SDK code: the SDK's own ``boto3.client('s3', config=UNSIGNED)`` is pointed at the sample
server by the caller through botocore's standard environment (``AWS_ENDPOINT_URL_S3`` and an
``AWS_CONFIG_FILE`` asking for path-style addressing). It makes the seed tutorial's calls
(``/work/shared/seeds/004_*``) and writes, per call, either a summary of the result or the error::

    .venv-allensdk/bin/python tests/fidelity/allensdk_vbn.py --cache-dir DIR --out result.json

Each table summary holds the row count, the index name, the column names, the dtypes and the index
values, so the caller can compare them with ``abc_helpers.VbnProjectCache``'s tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from session_calls import session_calls  # tests/support: numpy and pandas only


def _table(df) -> dict:
    """Summarise a DataFrame as JSON-able facts."""
    return {"n_rows": len(df), "index_name": df.index.name, "columns": [str(c) for c in df.columns],
            "dtypes": {str(c): str(t) for c, t in df.dtypes.items()},
            "index": [int(i) for i in df.index],
            "nulls": {str(c): int(n) for c, n in df.isna().sum().items()},
            "sums": {str(c): float(df[c].astype("float64").sum()) for c in df.columns
                     if df[c].dtype.kind in "biuf"}}


def _read_nwb(path: Path) -> dict:
    """Open an NWB file with this environment's plain pynwb; count its units and electrodes."""
    import pynwb

    with pynwb.NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        return {"pynwb": pynwb.__version__, "session_id": nwb.session_id,
                "n_units": len(nwb.units), "n_electrodes": len(nwb.electrodes),
                "n_spikes": int(sum(len(t) for t in nwb.units["spike_times"][:]))}


def _call(results: dict, name: str, fn):
    """Run *fn*, store its summary (or its error and warnings) under *name*, return its value."""
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 (we report every failure)
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000],
                             "traceback": traceback.format_exc()[-4000:]}
            value = None
        else:
            results[name] = {"ok": True}
    results[name]["seconds"] = round(time.perf_counter() - t0, 3)
    results[name]["warnings"] = sorted({w.category.__name__ for w in caught})
    return value


def main() -> int:
    """Run the seed notebook's SDK calls and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--sessions", action="store_true",
                        help="open every session with a file and summarise each call (the first in full)")
    parser.add_argument("--max-sessions", type=int, default=None, help="open only the first N sessions")
    args = parser.parse_args()

    import allensdk
    import botocore
    from allensdk.brain_observatory.behavior.behavior_project_cache import (
        VisualBehaviorNeuropixelsProjectCache,
    )

    results: dict = {"versions": {"allensdk": allensdk.__version__, "botocore": botocore.__version__},
                     "endpoint": os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")}
    cache = _call(results, "from_s3_cache",
                  lambda: VisualBehaviorNeuropixelsProjectCache.from_s3_cache(cache_dir=args.cache_dir))
    if cache is None:
        args.out.write_text(json.dumps(results, indent=1))
        return 1

    def value(name: str, fn):
        got = _call(results, name, fn)
        if results[name]["ok"]:
            results[name]["value"] = got
        return got

    value("list_manifest_file_names", cache.list_manifest_file_names)
    value("latest_manifest_file", cache.latest_manifest_file)
    value("current_manifest", cache.current_manifest)
    value("list_all_downloaded_manifests", cache.list_all_downloaded_manifests)
    value("load_manifest_v0.2.0",
          lambda: cache.load_manifest("visual-behavior-neuropixels_project_manifest_v0.2.0.json"))
    value("current_manifest_after_load", cache.current_manifest)
    value("compare_manifests_v0.1.0_v0.2.0", lambda: cache.compare_manifests(
        "visual-behavior-neuropixels_project_manifest_v0.1.0.json",
        "visual-behavior-neuropixels_project_manifest_v0.2.0.json"))
    value("compare_manifests_v0.2.0_v0.3.0", lambda: cache.compare_manifests(
        "visual-behavior-neuropixels_project_manifest_v0.2.0.json",
        "visual-behavior-neuropixels_project_manifest_v0.3.0.json"))
    _call(results, "load_latest_manifest", cache.load_latest_manifest)
    value("current_manifest_latest", cache.current_manifest)

    tables = {
        "ecephys_sessions": lambda: cache.get_ecephys_session_table(),
        "ecephys_sessions_unfiltered": lambda: cache.get_ecephys_session_table(filter_abnormalities=False),
        "behavior_sessions": cache.get_behavior_session_table,
        "units": cache.get_unit_table,
        "probes": cache.get_probe_table,
        "channels": cache.get_channel_table,
    }
    frames = {}
    for name, fn in tables.items():
        frames[name] = df = _call(results, f"table:{name}", fn)
        if df is not None:
            results[f"table:{name}"].update(_table(df))

    # a session that has an NWB file in the loaded (latest) manifest
    sessions = frames.get("ecephys_sessions")
    if sessions is not None:
        with_file = sessions.dropna(subset=["file_id"])
        data_ids = {int(k) for k in cache.fetch_api.cache._manifest.file_id_values}  # NWB files listed
        chosen = [int(s) for s, fid in with_file["file_id"].items() if int(fid) in data_ids] or \
                 [int(with_file.index[0])]
        sid = chosen[0]
        results["nwb_session_id"] = sid
        session = _call(results, "get_ecephys_session", lambda: cache.get_ecephys_session(ecephys_session_id=sid))
        if session is not None:
            value("session.list_data_attributes_and_methods", session.list_data_attributes_and_methods)
            units = _call(results, "session.get_units", session.get_units)
            if units is not None:
                results["session.get_units"].update(_table(units))
        if args.sessions:
            results["sessions"] = {}
            everything = frames.get("ecephys_sessions_unfiltered")
            every = [int(s) for s, fid in everything["file_id"].items() if int(fid) in data_ids] \
                if everything is not None else chosen
            for number, other in enumerate(every[:args.max_sessions]):
                opened = _call(results, f"open:{other}", lambda o=other: cache.get_ecephys_session(ecephys_session_id=o))
                if opened is not None:
                    results["sessions"][str(other)] = session_calls(opened, full=number == 0)
        path = next(args.cache_dir.rglob(f"ecephys_session_{sid}.nwb"), None)
        if path is not None:
            value("pynwb_read", lambda: _read_nwb(path))
    nwb_files = sorted(str(p.relative_to(args.cache_dir)) for p in args.cache_dir.rglob("*.nwb"))
    results["downloaded_nwb"] = nwb_files
    args.out.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
