"""Fidelity: the REAL AllenSDK's VisualBehaviorNeuropixelsProjectCache against the sample VBN bucket.

The SDK runs unchanged, in its own virtualenv (``make fidelity`` creates ``.venv-allensdk`` with
``allensdk==2.16.2``), in a subprocess: ``tests/fidelity/allensdk_vbn.py`` makes the seed
tutorial's calls and writes a JSON summary. Its ``boto3`` reaches the sample server only through
botocore's standard configuration (``AWS_ENDPOINT_URL_S3`` and a config file asking for path-style
addressing). The test then checks every call succeeded and that the SDK's tables equal
``abc_helpers.VbnProjectCache``'s: rows, index name and values, columns, dtypes, nulls and sums.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.session_calls import SDK_ONLY, SESSION_CALLS, session_calls

from abc_helpers.neuropixels import VbnProjectCache
from abc_helpers.sample import vbn

ROOT = Path(__file__).resolve().parents[2]
SDK_PYTHON = ROOT / ".venv-allensdk" / "bin" / "python"
SCRIPT = Path(__file__).with_name("allensdk_vbn.py")
NAMES = [f"visual-behavior-neuropixels_project_manifest_v{v}.json" for v in vbn.VERSIONS]
TABLES = {
    "ecephys_sessions": lambda c: c.get_ecephys_session_table(),
    "ecephys_sessions_unfiltered": lambda c: c.get_ecephys_session_table(filter_abnormalities=False),
    "behavior_sessions": lambda c: c.get_behavior_session_table(),
    "units": lambda c: c.get_unit_table(),
    "probes": lambda c: c.get_probe_table(),
    "channels": lambda c: c.get_channel_table(),
}


def _sdk_missing() -> str | None:
    """Say why the AllenSDK virtualenv cannot be used, or None if it can."""
    if not SDK_PYTHON.exists():
        return f"{SDK_PYTHON} does not exist: run `make fidelity` to create it (needs PyPI access)"
    done = subprocess.run([str(SDK_PYTHON), "-c", "import allensdk"], capture_output=True, text=True)
    if done.returncode:
        return f"{SDK_PYTHON} cannot import allensdk: {done.stderr.strip().splitlines()[-1:]}"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800),
              pytest.mark.skipif(_sdk_missing() is not None, reason=str(_sdk_missing()))]


@pytest.fixture(scope="module")
def sdk(sample_server, tmp_path_factory) -> dict:
    """Run the SDK script against the sample server; return its JSON report."""
    tmp = tmp_path_factory.mktemp("allensdk")
    config = tmp / "aws_config"
    config.write_text("[default]\ns3 =\n    addressing_style = path\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp), AWS_CONFIG_FILE=str(config), AWS_SHARED_CREDENTIALS_FILE=os.devnull,
               AWS_ENDPOINT_URL_S3=sample_server.url, AWS_EC2_METADATA_DISABLED="true")
    out = tmp / "sdk.json"
    done = subprocess.run([str(SDK_PYTHON), str(SCRIPT), "--cache-dir", str(tmp / "cache"), "--out", str(out),
                           "--sessions"], env=env, capture_output=True, text=True, timeout=1200)
    assert out.exists(), f"the SDK script wrote no report (exit {done.returncode}):\n{done.stderr[-3000:]}"
    report = json.loads(out.read_text())
    report["_cache_dir"] = str(tmp / "cache")
    return report


@pytest.fixture(scope="module")
def ours(sample_source, tmp_path_factory) -> VbnProjectCache:
    """abc_helpers' own cache on the same server."""
    return VbnProjectCache.from_s3_cache(tmp_path_factory.mktemp("ours") / "vbn", source=sample_source,
                                         progressbar=False)


def test_sdk_reached_the_sample_server(sdk, sample_server):
    assert sdk["endpoint"] == sample_server.url
    assert sdk["versions"]["allensdk"] == "2.16.2"


@pytest.mark.parametrize("call", [
    "from_s3_cache", "list_manifest_file_names", "latest_manifest_file", "current_manifest",
    "list_all_downloaded_manifests", "load_manifest_v0.2.0", "current_manifest_after_load",
    "compare_manifests_v0.1.0_v0.2.0", "compare_manifests_v0.2.0_v0.3.0", "load_latest_manifest",
    *[f"table:{t}" for t in TABLES], "pynwb_read"])
def test_sdk_call_succeeds(sdk, call):
    assert call in sdk, f"the SDK script never reached {call!r}"
    assert sdk[call]["ok"], f"{call} failed in the AllenSDK:\n{sdk[call].get('traceback')}"


def test_manifests_as_the_sdk_sees_them(sdk, ours):
    assert sdk["list_manifest_file_names"]["value"] == NAMES == ours.list_manifest_file_names()
    assert sdk["latest_manifest_file"]["value"] == NAMES[-1]
    assert sdk["list_all_downloaded_manifests"]["value"] == [NAMES[-1]]
    assert sdk["current_manifest_after_load"]["value"] == NAMES[1]
    assert sdk["load_manifest_v0.2.0"]["warnings"] == ["OutdatedManifestWarning"]
    assert sdk["current_manifest_latest"]["value"] == NAMES[-1]
    for old, new in (NAMES[:2], NAMES[1:]):
        key = f"compare_manifests_v{old[-10:-5]}_v{new[-10:-5]}"
        assert sdk[key]["value"] == ours.compare_manifests(old, new)
    assert "project_metadata/units.csv changed" in sdk["compare_manifests_v0.1.0_v0.2.0"]["value"]


@pytest.mark.parametrize("name", list(TABLES))
def test_tables_equal_ours(sdk, ours, name):
    theirs = sdk[f"table:{name}"]
    df = TABLES[name](ours)
    assert theirs["n_rows"] == len(df)
    assert theirs["index_name"] == df.index.name
    assert theirs["columns"] == [str(c) for c in df.columns]
    assert theirs["index"] == [int(i) for i in df.index]
    assert theirs["dtypes"] == {str(c): str(t) for c, t in df.dtypes.items()}
    assert theirs["nulls"] == {str(c): int(n) for c, n in df.isna().sum().items()}
    for col, total in theirs["sums"].items():
        assert np.isclose(total, float(df[col].astype("float64").sum()), rtol=1e-9), col


def test_filter_abnormalities_drops_the_abnormal_sessions(sdk):
    assert sdk["table:ecephys_sessions"]["n_rows"] == vbn.SAMPLE_SCALE.n_sessions - vbn.SAMPLE_SCALE.n_abnormal
    assert sdk["table:ecephys_sessions_unfiltered"]["n_rows"] == vbn.SAMPLE_SCALE.n_sessions


def test_sdk_downloads_and_old_pynwb_reads_the_session_nwb(sdk, ours):
    sid = sdk["nwb_session_id"]
    folder = "visual-behavior-neuropixels-0.3.0/behavior_ecephys_sessions"
    assert f"{folder}/{sid}/ecephys_session_{sid}.nwb" in sdk["downloaded_nwb"]
    assert len([p for p in sdk["downloaded_nwb"] if "/ecephys_session_" in p]) == vbn.SAMPLE_SCALE.n_nwb
    got = sdk["pynwb_read"]["value"]
    assert int(got["pynwb"].split(".")[0]) < 3  # the old pynwb the SDK pins, not ours
    assert got["session_id"] == str(sid)
    with ours.get_ecephys_session(sid) as session:
        assert got["n_units"] == len(session.get_units())
        assert got["n_electrodes"] == len(session.get_channels(filter_by_validity=False))
        assert got["n_spikes"] == sum(len(t) for t in session.spike_times.values())


def test_sdk_opens_every_session_file(sdk):
    """``get_ecephys_session`` opens every sample session file (each with every part the SDK reads)."""
    assert sdk["get_ecephys_session"]["ok"], sdk["get_ecephys_session"].get("traceback")
    opened = {k.split(":", 1)[1] for k, v in sdk.items() if k.startswith("open:") and v["ok"]}
    failed = {k: v.get("error") for k, v in sdk.items() if k.startswith("open:") and not v["ok"]}
    assert not failed
    assert len(opened) == vbn.SAMPLE_SCALE.n_nwb == len(sdk["sessions"])


@pytest.fixture(scope="module")
def our_calls(sdk, ours) -> dict[str, dict]:
    """Our session's answers to the same calls on the same sessions (the first in full, as the SDK's)."""
    out = {}
    for number, sid in enumerate(sdk["sessions"]):
        with ours.get_ecephys_session(int(sid)) as session:
            out[sid] = session_calls(session, full=number == 0)
    return out


def _by_name(summary: dict) -> dict:
    """Values (or digests) of a frame summary keyed by column name."""
    key = "values" if "values" in summary else "digests"
    return {k.split(":", 1)[1]: v for k, v in summary[key].items()}


def _frame_differences(call: str, ours: dict, theirs: dict) -> list[str]:
    """What differs between two frame summaries (empty when equal)."""
    out = [f"{k}: ours {str(ours[k])[:200]} != SDK {str(theirs[k])[:200]}"
           for k in ("n_rows", "index_name", "index", "index_dtype") if ours[k] != theirs[k]]
    if call == "stimulus_presentations":
        # The SDK orders the columns after its fixed first ones through a Python set (hash-randomised per
        # process): compare its fixed prefix, then the rest as a set.
        first = ["stimulus_block", "image_name", "duration", "start_time", "end_time", "start_frame", "end_frame",
                 "is_change", "is_image_novel", "omitted", "flashes_since_change", "trials_id"]
        n = len([c for c in first if c in theirs["columns"]])
        if ours["columns"][:n] != theirs["columns"][:n] or set(ours["columns"]) != set(theirs["columns"]):
            out.append(f"columns: ours {ours['columns']} != SDK {theirs['columns']}")
    elif ours["columns"] != theirs["columns"]:
        out.append(f"columns: ours {ours['columns']} != SDK {theirs['columns']}")
    our_types = dict(zip(ours["columns"], ours["dtypes"], strict=True))
    their_types = dict(zip(theirs["columns"], theirs["dtypes"], strict=True))
    if our_types != their_types:
        out.append(f"dtypes: ours {our_types} != SDK {their_types}")
    our_values, their_values = _by_name(ours), _by_name(theirs)
    out += [f"values of {c!r} differ" for c in their_values if our_values.get(c) != their_values[c]]
    return out


@pytest.mark.parametrize("call", list(SESSION_CALLS))
def test_session_call_equals_the_sdks(sdk, our_calls, call):
    """Each tutorial call gives what the AllenSDK gives on the same file: index, columns, dtypes, values."""
    problems = {}
    for sid, calls in sdk["sessions"].items():
        theirs, ours = calls[call], our_calls[sid][call]
        assert theirs["ok"], f"the AllenSDK's {call} failed on session {sid}:\n{theirs.get('traceback')}"
        assert ours["ok"], f"our {call} failed on session {sid}:\n{ours.get('traceback')}"
        if call == "list_data_attributes_and_methods":
            found = [] if set(ours["value"]) == set(theirs["value"]) - SDK_ONLY else [
                f"ours {ours['value']} != SDK {theirs['value']} less {sorted(SDK_ONLY)}"]
        elif "frame" in theirs:
            found = _frame_differences(call, ours["frame"], theirs["frame"])
        else:
            found = [] if ours == theirs else [f"ours {str(ours)[:300]} != SDK {str(theirs)[:300]}"]
        if found:
            problems[sid] = found
    assert not problems, f"{call}: {len(problems)} sessions differ: {dict(list(problems.items())[:3])}"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
