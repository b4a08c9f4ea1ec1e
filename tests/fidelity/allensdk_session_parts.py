"""Open an ecephys session NWB file with the REAL AllenSDK, part by part; report which parts fail.

Runs in the AllenSDK virtualenv (``.venv-allensdk``) and never imports ``abc_helpers``. The
AllenSDK's ``BehaviorEcephysSession.from_nwb`` reads a file through one data-object reader per
part (metadata, stimulus timestamps, running, licks, rewards, stimuli, task parameters, trials,
eye tracking, probes, optotagging); it stops at the first that fails. This script calls every
reader on its own, so one run lists every part the file lacks::

    .venv-allensdk/bin/python tests/fidelity/allensdk_session_parts.py FILE.nwb [--out parts.json]

It prints one line per part (``ok`` or the error) and, with ``--out``, writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import traceback
import warnings
from pathlib import Path


def _readers() -> dict:
    """The AllenSDK 2.16.2 readers ``BehaviorEcephysSession.from_nwb`` calls, by part name."""
    from allensdk.brain_observatory.behavior.behavior_session import BehaviorSession  # noqa: F401
    from allensdk.brain_observatory.behavior.data_objects import (
        BehaviorSessionId,
        RunningAcquisition,
        RunningSpeed,
        StimulusTimestamps,
    )
    from allensdk.brain_observatory.behavior.data_objects.eye_tracking.eye_tracking_table import (
        EyeTrackingTable,
    )
    from allensdk.brain_observatory.behavior.data_objects.eye_tracking.rig_geometry import (
        RigGeometry,
    )
    from allensdk.brain_observatory.behavior.data_objects.licks import Licks
    from allensdk.brain_observatory.behavior.data_objects.metadata.behavior_metadata.behavior_metadata import (
        BehaviorMetadata,
    )
    from allensdk.brain_observatory.behavior.data_objects.metadata.behavior_metadata.date_of_acquisition import (
        DateOfAcquisition,
    )
    from allensdk.brain_observatory.behavior.data_objects.rewards import Rewards
    from allensdk.brain_observatory.behavior.data_objects.stimuli.stimuli import Stimuli
    from allensdk.brain_observatory.behavior.data_objects.task_parameters import TaskParameters
    from allensdk.brain_observatory.ecephys._behavior_ecephys_metadata import (
        BehaviorEcephysMetadata,
    )
    from allensdk.brain_observatory.ecephys.data_objects.trials import VBNTrials
    from allensdk.brain_observatory.ecephys.optotagging import OptotaggingTable
    from allensdk.brain_observatory.ecephys.probes import Probes

    return {
        "behavior_session_id": BehaviorSessionId.from_nwb,
        "stimulus_timestamps": StimulusTimestamps.from_nwb,
        "running_acquisition": RunningAcquisition.from_nwb,
        "raw_running_speed": lambda f: RunningSpeed.from_nwb(f, filtered=False),
        "running_speed": RunningSpeed.from_nwb,
        "behavior_metadata": BehaviorMetadata.from_nwb,
        "licks": lambda f: Licks.from_nwb(nwbfile=f),
        "rewards": lambda f: Rewards.from_nwb(nwbfile=f),
        "stimuli": lambda f: Stimuli.from_nwb(nwbfile=f, add_is_change_to_presentations_table=False),
        "task_parameters": lambda f: TaskParameters.from_nwb(nwbfile=f),
        "trials": lambda f: VBNTrials.from_nwb(nwbfile=f),
        "date_of_acquisition": lambda f: DateOfAcquisition.from_nwb(nwbfile=f),
        "eye_tracking_rig_geometry": lambda f: RigGeometry.from_nwb(nwbfile=f),
        "eye_tracking": lambda f: EyeTrackingTable.from_nwb(nwbfile=f),
        "probes": lambda f: Probes.from_nwb(nwbfile=f),
        "optotagging": lambda f: OptotaggingTable.from_nwb(nwbfile=f),
        "ecephys_metadata": lambda f: BehaviorEcephysMetadata.from_nwb(nwbfile=f),
    }


def read_parts(path: Path) -> dict[str, dict]:
    """Call every reader on the file at *path*; return ``{part: {"ok", "error", "warnings"}}``."""
    import pynwb

    results: dict[str, dict] = {}
    with pynwb.NWBHDF5IO(str(path), "r", load_namespaces=True) as io:
        nwbfile = io.read()
        for name, reader in _readers().items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    reader(nwbfile)
                except Exception as exc:  # noqa: BLE001 (every failure is reported)
                    results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500],
                                     "traceback": traceback.format_exc()[-2000:]}
                else:
                    results[name] = {"ok": True}
            results[name]["warnings"] = sorted({f"{w.category.__name__}: {w.message}"[:200] for w in caught})
    return results


def main() -> int:
    """Read every part of one file, print a line per part, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = read_parts(args.path)
    for name, result in results.items():
        print(f"{name:28s} {'ok' if result['ok'] else result['error']}")
    failed = sum(not r["ok"] for r in results.values())
    print(f"{len(results) - failed} of {len(results)} parts read; {failed} failed")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
