"""The sample's VBN NWB files (sessions, LFP): valid NWB 2.7.0 (pynwb validator, nwbinspector), realistic spikes.

nwbinspector (the NWB best-practice checker DANDI runs) inspects every session and LFP file: no CRITICAL
message and no BEST_PRACTICE_VIOLATION, but one known false positive: ``check_data_orientation`` on
the stimulus templates (an image stack, 8 images x rows x columns, whose first axis is not the longest:
the check assumes time series; DANDI's own configuration lowers it because it is "not 100% accurate").
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from support.worlds import shared_world

from abc_helpers.nwb_open import open_nwb
from abc_helpers.sample import vbn, vbn_nwb, vbn_session
from abc_helpers.sources import VBN_BUCKET


@pytest.fixture(scope="module")
def nwb_files(tmp_path_factory) -> list[Path]:
    """Every NWB file (sessions and LFP) of the VBN-only sample world (built once per run)."""
    world = shared_world(tmp_path_factory, ("vbn",))
    return sorted((world / "s3" / VBN_BUCKET).rglob("*.nwb"))


@pytest.fixture(scope="module")
def session_files(nwb_files) -> list[Path]:
    """Every session NWB file (``ecephys_session_<id>.nwb``)."""
    files = [p for p in nwb_files if p.name.startswith("ecephys_session_")]
    assert len(files) == vbn.SAMPLE_SCALE.n_nwb
    return files


def _allowed(message) -> bool:
    """The known false positive: the orientation check on the stimulus templates' image stack."""
    return message.check_function_name == "check_data_orientation" and message.location.startswith(
        "/stimulus/templates/")


@pytest.mark.slow
def test_nwbinspector_finds_no_critical_issue_and_no_violation(nwb_files, session_files):
    """nwbinspector's checks over every session and LFP file: 0 CRITICAL, 0 BEST_PRACTICE_VIOLATION.

    Each file is read by pynwb with its cached namespaces (``open_nwb``) and inspected as an object:
    that is ``inspect_nwbfile`` without its schema validation, which costs 2.5 s a file and is the
    pynwb validator's test below."""
    nwbinspector = pytest.importorskip("nwbinspector")
    assert len(nwb_files) > len(session_files)  # the LFP files too
    counts: Counter[str] = Counter()
    serious = []
    for path in nwb_files:
        with open_nwb(path) as io:
            messages = list(nwbinspector.inspect_nwbfile_object(io.read()))
        for message in messages:
            counts[message.importance.name] += 1
            if message.importance.value >= nwbinspector.Importance.BEST_PRACTICE_VIOLATION.value \
                    and not _allowed(message):
                serious.append(f"{path.name}: {message.importance.name} {message.check_function_name} "
                               f"at {message.location}: {message.message}")
    assert not serious, "\n".join(serious[:20])
    assert counts["CRITICAL"] == len(session_files)  # exactly the one known false positive per file


def test_pynwb_validator_passes(nwb_files, session_files):
    """The pynwb validator, against the schema each file caches (NWB core 2.7.0 and the extensions)."""
    from pynwb import validate

    lfp = [p for p in nwb_files if p.name.endswith("_lfp.nwb")]
    for path in session_files[:3] + lfp[:2]:
        assert validate(path=str(path)) == [], path.name


def test_files_are_nwb_2_7_with_the_types_that_version_names(session_files):
    """NWB 2.7.0 declared and cached; electrodes a DynamicTable (NWB 2.7 has no ElectrodesTable); Allen types."""
    with h5py.File(session_files[0], "r") as fh:
        assert fh.attrs["nwb_version"] == vbn_nwb.NWB_VERSION == "2.7.0"
        assert list(fh["specifications/core"]) == ["2.7.0"]
        assert set(vbn_nwb.NAMESPACES) <= set(fh["specifications"])
        electrodes = fh["general/extracellular_ephys/electrodes"].attrs
        assert (electrodes["namespace"], electrodes["neurodata_type"]) == ("hdmf-common", "DynamicTable")
        types = {name: fh[path].attrs["neurodata_type"] for name, path in (
            ("subject", "general/subject"), ("metadata", "general/metadata"),
            ("task", "general/task_parameters"), ("eye", "acquisition/EyeTracking"))}
        assert types == {"subject": "BehaviorSubject", "metadata": "BehaviorMetadata",
                         "task": "BehaviorTaskParameters", "eye": "EllipseEyeTracking"}
        for name in fh["general/extracellular_ephys"]:
            if name != "electrodes":
                assert fh[f"general/extracellular_ephys/{name}"].attrs["neurodata_type"] == "EcephysElectrodeGroup"
                assert fh[f"general/devices/{name}"].attrs["neurodata_type"] == "EcephysProbe"


def test_spike_trains_have_a_refractory_period_and_the_tables_rates(session_files):
    """Spikes ascend with at least 1.5 ms between two of a unit; each unit fires at its units.csv rate."""
    import pynwb

    units_csv = vbn.build_tables()["units"].set_index("unit_id")
    with pynwb.NWBHDF5IO(str(session_files[0]), "r") as io:
        nwb = io.read()
        units = nwb.units
        assert units.resolution == 1 / vbn_session.SPIKE_CLOCK_HZ  # the sample's spike clock, 2**15 Hz
        start = nwb.processing["stimulus"]["timestamps"].timestamps[0] - 5.0
        end = nwb.processing["optotagging"]["optotagging"].timestamps[-1] + 2.0
        ratios = []
        for i, uid in enumerate(units.id[:]):
            times = np.asarray(units["spike_times"][i])
            assert np.all(np.diff(times) >= 0.0015), uid
            assert np.all(times * vbn_session.SPIKE_CLOCK_HZ == np.round(times * vbn_session.SPIKE_CLOCK_HZ))
            ratios.append(len(times) / (end - start) / units_csv.loc[uid, "firing_rate"])
        assert 0.85 < np.median(ratios) < 1.15
