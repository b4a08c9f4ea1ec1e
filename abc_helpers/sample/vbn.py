"""Generator of the synthetic Visual Behavior Neuropixels bucket: manifests, metadata CSVs, NWB files.

Everything written here is **synthetic**: ids, dates, mice, probe tracks, unit metrics and spike
times are drawn from a fixed random generator. Only the layout, the file formats, the column names
and order, the value formats and the region acronyms (from the real Allen structure tree) follow the
real bucket ``visual-behavior-neuropixels-data``::

    visual-behavior-neuropixels/manifests/visual-behavior-neuropixels_project_manifest_v0.1.0.json
    visual-behavior-neuropixels/project_metadata/{ecephys_sessions,behavior_sessions,probes,channels,units}.csv
    visual-behavior-neuropixels/behavior_ecephys_sessions/{id}/ecephys_session_{id}.nwb

The sample's release history (invented, shaped like the real one):

* ``v0.1.0``: the five tables, the NWB files of all sessions but one and the LFP files; ``units.csv`` without
  ``quality`` and with ``amplitude`` twice too large (the real scaling bug fixed in the real
  v0.5.0);
* ``v0.2.0``: ``units.csv`` changed (amplitude fixed, ``quality`` added): a new S3 version;
* ``v0.3.0``: the last session's NWB file created; every other file unchanged. From here on every
  session with a ``file_id`` has its NWB file, as in the real release.

Probe tracks are straight lines through the sample brain (:mod:`.brain`); each channel's
``structure_acronym`` is the annotation at its CCF coordinate (the area for cortical layers,
``'DG'`` for the dentate gyrus's layers, ``'root'`` outside the brain) and units inherit their
channel's. The session NWB files (:mod:`.vbn_nwb`, content drawn by :mod:`.vbn_session`) have the
structure of the real ones (the Allen NWB extensions; the AllenSDK's ``get_ecephys_session`` opens
them) over a session shortened to a few minutes; the probes of the first
:attr:`VbnScale.n_lfp_sessions` sessions have LFP files (``probe_<name>_lfp.nwb``), the others none.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..sources import VBN_BUCKET
from . import brain
from .vbn_nwb import SessionNwbWriter
from .world import WorldWriter

#: The project folder at the top of the bucket.
PREFIX = "visual-behavior-neuropixels"
#: The real bucket's HTTPS root; manifests carry absolute URLs below it, as the real ones do.
REAL_BUCKET_URL = "https://visual-behavior-neuropixels-data.s3.us-west-2.amazonaws.com/"
#: Metadata tables, in the order the real manifests list them.
TABLE_NAMES = ("units", "probes", "channels", "ecephys_sessions", "behavior_sessions")
#: The sample's manifest versions, oldest first, and the date their objects were put.
VERSIONS = {"0.1.0": "2022-06-07T18:00:00.000Z", "0.2.0": "2022-07-21T18:00:00.000Z",
            "0.3.0": "2022-10-19T18:00:00.000Z"}

#: Real column order of each CSV (the index column first).
COLUMNS = {
    "ecephys_sessions": [
        "ecephys_session_id", "behavior_session_id", "date_of_acquisition", "equipment_name",
        "session_type", "mouse_id", "genotype", "sex", "project_code", "age_in_days", "unit_count",
        "probe_count", "channel_count", "structure_acronyms", "image_set",
        "prior_exposures_to_image_set", "session_number", "experience_level",
        "prior_exposures_to_omissions", "file_id", "abnormal_histology", "abnormal_activity"],
    "behavior_sessions": [
        "behavior_session_id", "equipment_name", "genotype", "mouse_id", "sex", "age_in_days",
        "session_number", "prior_exposures_to_session_type", "prior_exposures_to_image_set",
        "prior_exposures_to_omissions", "ecephys_session_id", "date_of_acquisition", "session_type",
        "image_set", "file_id"],
    "probes": [
        "ecephys_probe_id", "ecephys_session_id", "name", "sampling_rate", "lfp_sampling_rate",
        "phase", "has_lfp_data", "unit_count", "channel_count", "structure_acronyms", "file_id"],
    "channels": [
        "ecephys_channel_id", "ecephys_probe_id", "ecephys_session_id", "probe_channel_number",
        "probe_vertical_position", "probe_horizontal_position", "anterior_posterior_ccf_coordinate",
        "dorsal_ventral_ccf_coordinate", "left_right_ccf_coordinate", "structure_acronym",
        "unit_count", "valid_data"],
    "units": [
        "unit_id", "ecephys_channel_id", "ecephys_probe_id", "ecephys_session_id",
        "amplitude_cutoff", "anterior_posterior_ccf_coordinate", "dorsal_ventral_ccf_coordinate",
        "left_right_ccf_coordinate", "cumulative_drift", "d_prime", "structure_acronym",
        "structure_id", "firing_rate", "isi_violations", "isolation_distance", "l_ratio",
        "local_index", "max_drift", "nn_hit_rate", "nn_miss_rate", "presence_ratio",
        "probe_horizontal_position", "probe_vertical_position", "silhouette_score", "snr",
        "quality", "valid_data", "amplitude", "waveform_duration", "waveform_halfwidth", "PT_ratio",
        "recovery_slope", "repolarization_slope", "spread", "velocity_above", "velocity_below"],
}

#: Each probe's insertion, like the real rigs' six probes: the visual area it enters, the entry
#: point on the brain surface (AP, LR in CCF um, right hemisphere) and how deep the tip goes below
#: the pia (um, along the track). Each probe goes down its entry's cortical column (nearly
#: perpendicular to the cortex, :func:`.brain.pia_entry`), so the structures along the track are
#: those of the sample brain (:mod:`.brain`) in their real order: the target area's layers from
#: the pia, white matter, the hippocampus's layers, then thalamus or midbrain.
PROBE_INSERTIONS: dict[str, tuple[str, tuple[int, int], int]] = {
    "probeA": ("VISam", (8400, 6750), 3150),
    "probeB": ("VISpm", (9300, 6750), 3150),
    "probeC": ("VISp", (9200, 7950), 3150),
    "probeD": ("VISl", (9250, 9200), 3150),
    "probeE": ("VISal", (8550, 9200), 3150),
    "probeF": ("VISrl", (7600, 8450), 3150),
}
#: Spacing of the channels along the track in the CCF (um per channel; 20 um per channel row on
#: the shank, shrunk by the tissue, as the real coordinates are).
CHANNEL_STEP_UM = 8.5
GENOTYPES = ["Sst-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt",
             "Vip-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt", "wt/wt"]
_TRAINING = ["TRAINING_0_gratings_autorewards_15min", "TRAINING_1_gratings",
             "TRAINING_2_gratings_flashed", "TRAINING_3_images_{s}_10uL_reward",
             "TRAINING_4_images_{s}_training", "TRAINING_5_images_{s}_epilogue",
             "TRAINING_5_images_{s}_handoff_ready_5uL_reward",
             "HABITUATION_5_images_{s}_handoff_ready_3uL_reward"]
_CHANNELS_PER_PROBE = 384
_SEED = 20220607


@dataclass(frozen=True)
class VbnScale:
    """How many of each thing to generate.

    Parameters
    ----------
    n_sessions, n_abnormal : int
        Ecephys sessions, and how many of them are flagged abnormal.
    n_probes, n_units : int
        Probes (at most six per session) and units, exactly.
    n_behavior_only : int
        Behavior-only (training and habituation) sessions.
    n_nwb : int
        Sessions that have a ``file_id`` and an NWB file (the first ones in table order; the real
        release has one for every session). The others get ``file_id`` -999, as rows without a
        file do in the real tables.
    n_lfp_sessions : int
        Sessions (the first ones in table order) whose probes have LFP files (``has_lfp_data``; 869 of
        the 905 real probes have one). The other probes have none: ``has_lfp_data`` False and
        ``file_id`` -999.
    """

    n_sessions: int
    n_abnormal: int
    n_probes: int
    n_units: int
    n_behavior_only: int
    n_nwb: int
    n_lfp_sessions: int = 2


#: The sample world: tens of sessions, a few hundred probes, tens of thousands of channels.
SAMPLE_SCALE = VbnScale(n_sessions=32, n_abnormal=10, n_probes=180, n_units=12_600,
                        n_behavior_only=160, n_nwb=32, n_lfp_sessions=2)
#: The real release's counts (v0.4.0): 153 sessions (50 abnormal), 905 probes, 319,013 units.
FULL_SCALE = VbnScale(n_sessions=153, n_abnormal=50, n_probes=905, n_units=319_013,
                      n_behavior_only=3271, n_nwb=153, n_lfp_sessions=153)


def channel_structure(structure_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the VBN-style acronym and id of each annotation value at a channel.

    The real VBN tables name the area, not the layer, in the cortex (``'VISp'`` where the
    annotation says ``'VISp5'``) and ``'DG'`` for the dentate gyrus's layers
    (:func:`.brain.structure_level`); points outside the brain (annotation 0) are ``'root'``
    (997), as on the real probes. Every other structure keeps its own acronym, so the annotation
    at a channel is always its structure or a descendant of it.

    Parameters
    ----------
    structure_ids : numpy.ndarray
        Annotation values (structure ids, 0 outside the brain).

    Returns
    -------
    tuple of numpy.ndarray
        The acronyms (object) and structure ids (int64) the tables show.
    """
    root = brain.structure_id("root")
    reported = {int(sid): brain.structure_level(int(sid)) or root for sid in np.unique(structure_ids)}
    out_ids = np.array([reported[int(s)] for s in structure_ids], dtype=np.int64)
    acronyms = {sid: brain.acronym(sid) for sid in set(reported.values())}
    return np.array([acronyms[int(s)] for s in out_ids], dtype=object), out_ids


def probe_tracks(probe_names: list[str], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return each probe's tip (CCF um) and unit direction up the shank, with a jittered entry point.

    Parameters
    ----------
    probe_names : list of str
        One name of :data:`PROBE_INSERTIONS` per probe.
    rng : numpy.random.Generator
        Jitters each entry point (about 80 um) and depth (about 60 um).
    """
    n = len(probe_names)
    entry = np.array([PROBE_INSERTIONS[p][1] for p in probe_names], float) + rng.normal(0, 80, (n, 2))
    depth = np.array([PROBE_INSERTIONS[p][2] for p in probe_names], float) + rng.normal(0, 60, n)
    top, up = brain.pia_entry(entry[:, 0], entry[:, 1])
    return top - up * depth[:, None], up


def _date_text(when: dt.datetime) -> str:
    """Format a time as the real tables do: ``2020-08-19 14:47:08.574000+00:00``."""
    return f"{when:%Y-%m-%d %H:%M:%S}.{when.microsecond // 1000:03d}000+00:00"


def _sessions(scale: VbnScale, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Draw the mice and their behavior and ecephys sessions; return (ecephys, behavior) frames."""
    n_mice = (scale.n_sessions + 1) // 2
    mouse_ids = np.sort(rng.choice(np.arange(500_000, 600_000), n_mice, replace=False))
    per_mouse = rng.multinomial(scale.n_behavior_only, np.full(n_mice, 1 / n_mice))
    start = dt.datetime(2020, 8, 20, tzinfo=dt.timezone.utc)
    rows = []  # one per behavior session, ecephys ones flagged
    n_left = scale.n_sessions
    for m, mouse in enumerate(mouse_ids):
        genotype = GENOTYPES[rng.choice(3, p=[0.4, 0.2, 0.4])]
        sex = "F" if rng.random() < 0.45 else "M"
        familiar = "G" if rng.random() < 0.75 else "H"
        novel = "H" if familiar == "G" else "G"
        birth = start + dt.timedelta(days=int(m * 5 - rng.integers(150, 260)))
        day = start + dt.timedelta(days=int(m * 5 - per_mouse[m] - 3))
        seen: dict[str, int] = {}
        same: dict[str, int] = {}
        n_beh = int(per_mouse[m])
        for i in range(n_beh):
            stype = _TRAINING[min(i * len(_TRAINING) // max(n_beh, 1), len(_TRAINING) - 1)]
            image_set = familiar if "images" in stype else None
            stype = stype.format(s=familiar)
            rows.append({"mouse_id": int(mouse), "genotype": genotype, "sex": sex, "birth": birth,
                             "when": day + dt.timedelta(hours=float(rng.uniform(8, 12))),
                             "session_type": stype, "image_set": image_set, "ecephys": False,
                             "equipment_name": f"BEH.{'BDFG'[rng.integers(4)]}-Box{rng.integers(1, 7)}",
                             "omissions": 0, "seen": seen.get(image_set, 0) if image_set else None,
                             "same_type": same.get(stype, 0)})
            same[stype] = same.get(stype, 0) + 1
            if image_set:
                seen[image_set] = seen.get(image_set, 0) + 1
            day += dt.timedelta(days=1)
        n_ephys = min(2, n_left)
        n_left -= n_ephys
        vol = "3" if rng.random() < 0.7 else "5"
        rig = f"NP.{rng.integers(2)}"
        for k in range(n_ephys):
            image_set = familiar if k == 0 else novel
            rows.append({"mouse_id": int(mouse), "genotype": genotype, "sex": sex, "birth": birth,
                             "when": day + dt.timedelta(hours=float(rng.uniform(14, 17))),
                             "session_type": f"EPHYS_1_images_{image_set}_{vol}uL_reward",
                             "image_set": image_set, "ecephys": True, "equipment_name": rig, "omissions": k,
                             "seen": seen.get(image_set, 0), "same_type": 0, "ephys_number": k + 1})
            seen[image_set] = seen.get(image_set, 0) + 1
            day += dt.timedelta(days=1)
    beh = pd.DataFrame(rows).sort_values("when", kind="stable").reset_index(drop=True)
    # LIMS-like ids that grow with time; an ecephys session id sits just below its behavior id
    gaps = rng.integers(20_000, 50_000, len(beh))
    beh["behavior_session_id"] = 1_040_000_000 + np.cumsum(gaps)
    beh["ecephys_session_id"] = pd.array(
        np.where(beh["ecephys"], beh["behavior_session_id"] - rng.integers(5_000, 15_000, len(beh)), 0),
        dtype="Int64")
    beh.loc[~beh["ecephys"], "ecephys_session_id"] = pd.NA
    beh["age_in_days"] = [(w - b).days for w, b in zip(beh["when"], beh["birth"], strict=True)]
    beh["session_number"] = beh.groupby("mouse_id").cumcount() + 1
    beh["date_of_acquisition"] = [_date_text(w) for w in beh["when"]]
    eph = beh[beh["ecephys"]].reset_index(drop=True)
    return eph, beh


def build_tables(scale: VbnScale = SAMPLE_SCALE, seed: int = _SEED) -> dict[str, pd.DataFrame]:
    """Generate the five metadata tables (the v0.2.0 layout), consistent across ids.

    Parameters
    ----------
    scale : VbnScale
        How many sessions, probes and units.
    seed : int
        Seed of the random generator (same seed, same tables).

    Returns
    -------
    dict of pandas.DataFrame
        Keyed by :data:`TABLE_NAMES`, each with the columns of :data:`COLUMNS` in order.
    """
    rng = np.random.default_rng(seed)
    eph, beh = _sessions(scale, rng)
    n_s = len(eph)

    # -- probes: six per session, some dropped to reach the total -----------------------------
    names = list(PROBE_INSERTIONS)
    keep = np.ones((n_s, 6), bool)
    drop = rng.choice(n_s * 6, n_s * 6 - scale.n_probes, replace=False)
    keep.flat[drop] = False
    sess_idx, probe_letter = np.nonzero(keep)
    n_p = len(sess_idx)
    probe_sid = eph["ecephys_session_id"].to_numpy("int64")[sess_idx]
    probe_ids = probe_sid + 120_000 + probe_letter
    drawn_lfp = rng.random(n_p) < 0.96
    has_lfp = drawn_lfp & (sess_idx < scale.n_lfp_sessions)  # LFP files for the first sessions' probes only
    sampling = np.round(30_000 + rng.normal(0, 0.08, n_p), 6)

    # -- channels: 384 per probe along a straight synthetic track -----------------------------
    n_c = n_p * _CHANNELS_PER_PROBE
    ch_num = np.tile(np.arange(_CHANNELS_PER_PROBE), n_p)
    ch_probe = np.repeat(np.arange(n_p), _CHANNELS_PER_PROBE)
    vertical = (20 * (ch_num // 2 + 1)).astype(float)
    horizontal = np.array([43.0, 11.0, 59.0, 27.0])[ch_num % 4]
    tips, dirs = probe_tracks([names[k] for k in probe_letter], rng)
    along = ch_num * CHANNEL_STEP_UM
    ccf = np.round(tips[ch_probe] + dirs[ch_probe] * along[:, None])
    structure, structure_id = channel_structure(brain.structure_at(ccf))
    valid = ch_num != 191  # the reference channel
    gaps = rng.choice([1, 1, 1, 2], n_c)
    channel_ids = 1_049_365_509 + np.cumsum(gaps) - gaps[0]

    # -- units: spread over probes, then over channels (none on root-free reference channel) --
    per_probe = rng.multinomial(scale.n_units, np.full(n_p, 1 / n_p))
    fibre = np.isin(structure_id, list(brain.descendants("fiber tracts")))
    weights = np.where((structure == "root") | fibre, 0.15, 1.0) * valid  # few units off grey matter
    unit_ch = np.empty(scale.n_units, np.int64)
    local_index = np.empty(scale.n_units, np.int64)
    pos = 0
    for p, k in enumerate(per_probe):
        w = weights[p * _CHANNELS_PER_PROBE:(p + 1) * _CHANNELS_PER_PROBE]
        chosen = np.sort(rng.choice(_CHANNELS_PER_PROBE, k, p=w / w.sum()))
        unit_ch[pos:pos + k] = p * _CHANNELS_PER_PROBE + chosen
        local_index[pos:pos + k] = np.arange(k)
        pos += k
    n_u = scale.n_units
    unit_ids = 1_157_001_000 + np.cumsum(rng.choice([1, 1, 2, 3], n_u))
    narrow = rng.random(n_u) < 0.25
    step = 1 / 72.8  # waveform metrics come in steps of the upsampled sample period (ms)
    duration = np.where(narrow, rng.integers(11, 26, n_u), rng.integers(36, 62, n_u)) * step
    halfwidth = np.where(narrow, rng.integers(5, 10, n_u), rng.integers(10, 20, n_u)) * step
    u_struct = structure[unit_ch]
    u_probe = ch_probe[unit_ch]
    units = pd.DataFrame({
        "unit_id": unit_ids,
        "ecephys_channel_id": channel_ids[unit_ch],
        "ecephys_probe_id": probe_ids[u_probe],
        "ecephys_session_id": probe_sid[u_probe],
        "amplitude_cutoff": np.round(np.minimum(rng.exponential(0.08, n_u), 0.5), 6),
        "anterior_posterior_ccf_coordinate": ccf[unit_ch, 0],
        "dorsal_ventral_ccf_coordinate": ccf[unit_ch, 1],
        "left_right_ccf_coordinate": ccf[unit_ch, 2],
        "cumulative_drift": np.round(rng.gamma(4, 50, n_u), 2),
        "d_prime": np.round(np.clip(rng.normal(4.5, 1.5, n_u), 0.3, None), 6),
        "structure_acronym": u_struct,
        "structure_id": structure_id[unit_ch],
        "firing_rate": np.round(np.exp(rng.normal(np.log(4.0), 1.0, n_u)), 6),
        "isi_violations": np.round(np.where(rng.random(n_u) < 0.5, 0.0, rng.exponential(0.3, n_u)), 6),
        "isolation_distance": np.round(np.exp(rng.normal(np.log(45), 0.5, n_u)), 6),
        "l_ratio": np.round(rng.exponential(0.05, n_u), 6),
        "local_index": local_index,
        "max_drift": np.round(rng.gamma(3, 12, n_u), 2),
        "nn_hit_rate": np.round(rng.beta(5, 1.5, n_u), 6),
        "nn_miss_rate": np.round(np.minimum(rng.exponential(0.01, n_u), 0.9), 6),
        "presence_ratio": np.round(np.clip(1 - rng.exponential(0.04, n_u), 0.05, 0.99), 2),
        "probe_horizontal_position": horizontal[unit_ch],
        "probe_vertical_position": vertical[unit_ch],
        "silhouette_score": np.round(np.where(rng.random(n_u) < 0.05, np.nan,
                                              rng.normal(0.1, 0.06, n_u)), 6),
        "snr": np.round(np.exp(rng.normal(np.log(2.5), 0.4, n_u)), 6),
        "quality": np.where(rng.random(n_u) < 0.07, "noise", "good"),
        "valid_data": True,
        "amplitude": np.round(np.exp(rng.normal(np.log(180), 0.45, n_u)), 6),
        "waveform_duration": np.round(duration, 6),
        "waveform_halfwidth": np.round(halfwidth, 6),
        "PT_ratio": np.round(np.where(narrow, rng.uniform(0.2, 0.45, n_u), rng.uniform(0.4, 0.75, n_u)), 6),
        "recovery_slope": np.round(-np.abs(rng.normal(0.15, 0.08, n_u)), 6),
        "repolarization_slope": np.round(np.exp(rng.normal(np.log(0.9), 0.5, n_u)), 6),
        "spread": (10 * rng.integers(2, 12, n_u)).astype(float),
        "velocity_above": np.round(np.where(rng.random(n_u) < 0.2, np.nan,
                                            rng.normal(0.3, 1.0, n_u)), 6),
        "velocity_below": np.round(np.where(rng.random(n_u) < 0.2, np.nan,
                                            rng.normal(-0.3, 1.0, n_u)), 6),
    })

    # -- counts and acronym lists, rolled up from units and channels --------------------------
    ch_units = np.bincount(unit_ch, minlength=n_c)
    channels = pd.DataFrame({
        "ecephys_channel_id": channel_ids, "ecephys_probe_id": probe_ids[ch_probe],
        "ecephys_session_id": probe_sid[ch_probe], "probe_channel_number": ch_num,
        "probe_vertical_position": vertical, "probe_horizontal_position": horizontal,
        "anterior_posterior_ccf_coordinate": ccf[:, 0], "dorsal_ventral_ccf_coordinate": ccf[:, 1],
        "left_right_ccf_coordinate": ccf[:, 2], "structure_acronym": structure,
        "unit_count": ch_units, "valid_data": valid,
    })
    probe_structs = [sorted(set(structure[p * _CHANNELS_PER_PROBE:(p + 1) * _CHANNELS_PER_PROBE]))
                     for p in range(n_p)]
    probe_file_id = np.full(n_p, -999, np.int64)
    probe_file_id[has_lfp] = np.arange(has_lfp.sum())
    probes = pd.DataFrame({
        "ecephys_probe_id": probe_ids, "ecephys_session_id": probe_sid,
        "name": [names[k] for k in probe_letter], "sampling_rate": sampling,
        "lfp_sampling_rate": np.round(sampling / 12, 6), "phase": 1.0, "has_lfp_data": has_lfp,
        "unit_count": per_probe, "channel_count": _CHANNELS_PER_PROBE,
        "structure_acronyms": [str(s) for s in probe_structs], "file_id": probe_file_id,
    })
    next_file_id = int(drawn_lfp.sum())  # the session files' ids do not depend on n_lfp_sessions

    abnormal = np.zeros(n_s, bool)
    abnormal[rng.choice(n_s, scale.n_abnormal, replace=False)] = True
    histology, activity = [], []
    for a in abnormal:
        kind = rng.integers(3) if a else -1  # 0: histology, 1: activity, 2: both
        histology.append(str(sorted(rng.choice(["Thalamus", "Hippocampus", "CA1", "VISp", "Midbrain"],
                                               rng.integers(1, 3), replace=False).tolist()))
                         if kind in (0, 2) else None)
        activity.append(str(sorted(rng.integers(300, 9000, rng.integers(1, 3)).tolist()))
                        if kind in (1, 2) else None)
    eph_structs = [sorted(set().union(*[probe_structs[p] for p in np.nonzero(sess_idx == s)[0]]))
                   for s in range(n_s)]
    ecephys = pd.DataFrame({
        "ecephys_session_id": eph["ecephys_session_id"].astype("int64"),
        "behavior_session_id": eph["behavior_session_id"],
        "date_of_acquisition": eph["date_of_acquisition"],
        "equipment_name": eph["equipment_name"], "session_type": eph["session_type"],
        "mouse_id": eph["mouse_id"], "genotype": eph["genotype"], "sex": eph["sex"],
        "project_code": "NeuropixelVisualBehavior", "age_in_days": eph["age_in_days"],
        "unit_count": np.bincount(sess_idx, weights=per_probe, minlength=n_s).astype(np.int64),
        "probe_count": np.bincount(sess_idx, minlength=n_s),
        "channel_count": np.bincount(sess_idx, minlength=n_s) * _CHANNELS_PER_PROBE,
        "structure_acronyms": [str(s) for s in eph_structs], "image_set": eph["image_set"],
        "prior_exposures_to_image_set": eph["seen"].astype("int64"),
        "session_number": eph["ephys_number"].astype("int64"),
        "experience_level": np.where(eph["ephys_number"] == 1, "Familiar", "Novel"),
        "prior_exposures_to_omissions": eph["omissions"],
        "file_id": np.where(np.arange(n_s) < scale.n_nwb, np.arange(next_file_id, next_file_id + n_s), -999),
        "abnormal_histology": histology, "abnormal_activity": activity,
    })
    next_file_id += n_s
    beh_only = ~beh["ecephys"].to_numpy()
    beh_file_id = np.full(len(beh), -999, np.int64)
    beh_file_id[beh_only] = np.arange(next_file_id, next_file_id + beh_only.sum())
    behavior = pd.DataFrame({
        "behavior_session_id": beh["behavior_session_id"], "equipment_name": beh["equipment_name"],
        "genotype": beh["genotype"], "mouse_id": beh["mouse_id"], "sex": beh["sex"],
        "age_in_days": beh["age_in_days"], "session_number": beh["session_number"],
        "prior_exposures_to_session_type": beh["same_type"],
        "prior_exposures_to_image_set": pd.array(beh["seen"], dtype="Int64"),
        "prior_exposures_to_omissions": beh["omissions"],
        "ecephys_session_id": beh["ecephys_session_id"],
        "date_of_acquisition": beh["date_of_acquisition"], "session_type": beh["session_type"],
        "image_set": beh["image_set"], "file_id": beh_file_id,
    })
    tables = {"units": units, "probes": probes, "channels": channels,
              "ecephys_sessions": ecephys, "behavior_sessions": behavior}
    for name, df in tables.items():
        assert list(df.columns) == COLUMNS[name], name
    return tables


def units_v010(units: pd.DataFrame) -> pd.DataFrame:
    """Return the v0.1.0 ``units.csv``: no ``quality`` column, ``amplitude`` twice too large."""
    old = units.drop(columns="quality")
    old["amplitude"] = np.round(old["amplitude"] * 2, 6)
    return old


def csv_bytes(df: pd.DataFrame) -> bytes:
    """Serialise a table as the real CSVs are: header, no pandas index, empty cells for missing."""
    buffer = io.StringIO()
    df.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue().encode()


def blake2b_hex(data: bytes) -> str:
    """Return the BLAKE2b hex digest the AllenSDK stores as ``file_hash``."""
    return hashlib.blake2b(data).hexdigest()


def relative_key(kind: str, name: str | int, probe: str | None = None) -> str:
    """Return the bucket key of a metadata table (*kind* ``"metadata"``), a session NWB file (``"nwb"``,
    *name* the session id) or a probe's LFP file (``"lfp"``, *name* the session id, *probe* its name)."""
    if kind == "metadata":
        return f"{PREFIX}/project_metadata/{name}.csv"
    if kind == "lfp":
        return f"{PREFIX}/behavior_ecephys_sessions/{name}/probe_{probe}_lfp.nwb"
    return f"{PREFIX}/behavior_ecephys_sessions/{name}/ecephys_session_{name}.nwb"


def manifest_key(version: str) -> str:
    """Return the bucket key of the manifest of *version* (e.g. ``'0.2.0'``)."""
    return f"{PREFIX}/manifests/{PREFIX}_project_manifest_v{version}.json"


def _entry(writer: WorldWriter, key: str, hashes: dict[str, str]) -> dict[str, str]:
    latest = writer.latest(VBN_BUCKET, key)
    return {"url": REAL_BUCKET_URL + key, "version_id": latest.version_id, "file_hash": hashes[latest.md5]}


def manifest_bytes(writer: WorldWriter, version: str, data_keys: dict[int, str],
                   hashes: dict[str, str]) -> bytes:
    """A VBN project manifest (the real schema) for the objects *writer* holds now.

    Parameters
    ----------
    writer : WorldWriter
        The world, whose current object versions the entries name.
    version : str
        The manifest version, e.g. ``"0.3.0"``.
    data_keys : dict
        ``{file_id: key}`` of the NWB files.
    hashes : dict
        ``{md5: blake2b}`` of the objects (the manifest gives blake2b hashes).

    Returns
    -------
    bytes
        The JSON, indented as the AllenSDK's manifests are.
    """
    manifest = {
        "project_name": PREFIX,
        "manifest_version": version,
        "metadata_file_id_column_name": "file_id",
        "data_pipeline": [{"name": "AllenSDK", "version": "2.13.5",
                           "comment": "synthetic sample world written by abc_helpers.sample.vbn"}],
        "metadata_files": {n: _entry(writer, relative_key("metadata", n), hashes) for n in TABLE_NAMES},
        "data_files": {str(fid): _entry(writer, key, hashes) for fid, key in sorted(data_keys.items())},
    }
    return (json.dumps(manifest, indent=2) + "\n").encode()


def generate(writer: WorldWriter) -> None:
    """Write the synthetic VBN bucket into the sample world: three manifest versions, five tables
    (``units.csv`` in two S3 versions) and an NWB file for every session that has a ``file_id``.

    Parameters
    ----------
    writer : WorldWriter
        The sample world being built.
    """
    tables = build_tables(SAMPLE_SCALE)
    hashes: dict[str, str] = {}  # md5 -> blake2b of every object put, for the manifests

    def put(key: str, data: bytes, version: str) -> None:
        obj = writer.put_bytes(VBN_BUCKET, key, data, last_modified=VERSIONS[version])
        hashes[obj.md5] = blake2b_hex(data)

    ecephys = tables["ecephys_sessions"]
    with_nwb = ecephys[ecephys["file_id"] >= 0]
    normal = with_nwb["abnormal_histology"].isna() & with_nwb["abnormal_activity"].isna()
    late = int(with_nwb.index[normal.to_numpy()][-1])  # a session whose file comes in v0.3.0

    with tempfile.TemporaryDirectory(prefix="vbn-") as folder, SessionNwbWriter(tables) as nwb:
        lfp_probes = tables["probes"][tables["probes"]["has_lfp_data"]].groupby("ecephys_session_id")

        def put_nwb(session: pd.Series, version: str) -> dict[int, str]:
            sid = int(session["ecephys_session_id"])
            key = relative_key("nwb", sid)
            path = Path(folder) / "session.nwb"
            nwb.write(path, session)
            put(key, path.read_bytes(), version)
            keys = {int(session["file_id"]): key}
            if sid in lfp_probes.groups:
                for _, probe in lfp_probes.get_group(sid).iterrows():
                    lfp_key = relative_key("lfp", sid, probe["name"])
                    nwb.write_lfp(path, session, probe)
                    put(lfp_key, path.read_bytes(), version)
                    keys[int(probe["file_id"])] = lfp_key
            return keys

        # v0.1.0: every table (the old units.csv) and the NWB files of every session but one
        for name in TABLE_NAMES:
            df = units_v010(tables[name]) if name == "units" else tables[name]
            put(relative_key("metadata", name), csv_bytes(df), "0.1.0")
        data_keys = {fid: key for i, row in with_nwb.iterrows() if i != late
                     for fid, key in put_nwb(row, "0.1.0").items()}
        manifests = {"0.1.0": manifest_bytes(writer, "0.1.0", data_keys, hashes)}
        # v0.2.0: units.csv fixed (a new S3 version of the same key)
        put(relative_key("metadata", "units"), csv_bytes(tables["units"]), "0.2.0")
        manifests["0.2.0"] = manifest_bytes(writer, "0.2.0", data_keys, hashes)
        # v0.3.0: the last session's NWB file
        data_keys.update(put_nwb(with_nwb.loc[late], "0.3.0"))
        manifests["0.3.0"] = manifest_bytes(writer, "0.3.0", data_keys, hashes)
    for version, data in manifests.items():
        writer.put_bytes(VBN_BUCKET, manifest_key(version), data, last_modified=VERSIONS[version])
