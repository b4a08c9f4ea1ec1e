"""The AllenSDK tutorials' session calls, made the same way on the SDK's session and on ours.

Imported by the fidelity test and, by path, by the AllenSDK's script (``tests/fidelity/allensdk_vbn.py``)
in the SDK's own virtualenv: it uses only the standard library and :mod:`frames` (numpy, pandas).
"""

from __future__ import annotations

import traceback

try:  # the AllenSDK's script puts tests/support itself on the path
    from frames import summarise
except ModuleNotFoundError:  # the tests import it as support.session_calls
    from support.frames import summarise

__all__ = ["SDK_ONLY", "SESSION_CALLS", "session_calls"]

#: What the AllenSDK's session lists that abc_helpers' does not offer: SDK internals (the behavior data
#: class, the probes object), the performance metrics it computes from the trials (d-prime, reward rate)
#: and the current source density (not in the sample's LFP files).
SDK_ONLY = frozenset({"behavior_data_class", "get_probes_obj", "get_performance_metrics", "get_reward_rate",
                      "get_rolling_performance_df", "get_current_source_density"})


def _first_lfp(session):
    """The LFP of the session's first probe with LFP data, as a DataFrame (time x channel), or None."""
    probes = session.probes
    with_lfp = probes.index[probes["has_lfp_data"]]
    if len(with_lfp) == 0:
        return None
    lfp = session.get_lfp(int(with_lfp[0]))
    return lfp.to_pandas() if hasattr(lfp, "to_pandas") else lfp  # the SDK's xarray.DataArray

#: The session calls of the AllenSDK's tutorials, each made on every sample session.
SESSION_CALLS = {
    "list_data_attributes_and_methods": lambda s: s.list_data_attributes_and_methods(),
    "metadata": lambda s: s.metadata,
    "behavior_session_id": lambda s: s.behavior_session_id,
    "stimulus_templates": lambda s: s.stimulus_templates,
    "get_units": lambda s: s.get_units(),
    "get_units_filtered": lambda s: s.get_units(filter_by_validity=True, filter_out_of_brain_units=True,
                                                amplitude_cutoff_maximum=0.1, presence_ratio_minimum=0.9,
                                                isi_violations_maximum=0.5),
    "spike_times": lambda s: s.spike_times,
    "spike_amplitudes": lambda s: s.spike_amplitudes,
    "mean_waveforms": lambda s: s.mean_waveforms,
    "stimulus_presentations": lambda s: s.stimulus_presentations,
    "trials": lambda s: s.trials,
    "running_speed": lambda s: s.running_speed,
    "raw_running_speed": lambda s: s.raw_running_speed,
    "licks": lambda s: s.licks,
    "rewards": lambda s: s.rewards,
    "optotagging_table": lambda s: s.optotagging_table,
    "get_channels": lambda s: s.get_channels(),
    "get_channels_all": lambda s: s.get_channels(filter_by_validity=False),
    "probes": lambda s: s.probes,
    "stimulus_timestamps": lambda s: s.stimulus_timestamps,
    "task_parameters": lambda s: s.task_parameters,
    "eye_tracking": lambda s: s.eye_tracking,
    "eye_tracking_rig_geometry": lambda s: s.eye_tracking_rig_geometry,
    "get_lfp": _first_lfp,
}


def session_calls(session, full: bool) -> dict:
    """Make every call of :data:`SESSION_CALLS` on an open session; summarise each result or its error."""
    out = {}
    for name, call in SESSION_CALLS.items():
        try:
            out[name] = {"ok": True, **summarise(call(session), full=full)}
        except Exception as exc:  # noqa: BLE001 (every failure is reported)
            out[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:1000],
                         "traceback": traceback.format_exc()[-3000:]}
    return out
