"""``VbnEcephysSession``: a Visual Behavior Neuropixels session file read as the AllenSDK reads it.

The calls, names, index names, columns and dtypes are those of the AllenSDK 2.16's
``BehaviorEcephysSession`` (``get_units``, ``spike_times``, ``stimulus_presentations``, ``trials``,
``running_speed``, ``licks``, ``rewards``, ``optotagging_table``, ``get_channels``, ``probes``,
``metadata``, ``stimulus_templates``, ...), checked against the SDK's own objects on the same files
by ``tests/fidelity``. It is a light reader: pynwb opens the file (the Allen extension types come
from the namespaces cached in the file), each table is read when first asked for, and the AllenSDK
(which pins numpy < 1.24) is not needed.

Two things differ from the SDK: the file stays open until :meth:`VbnEcephysSession.close` (the SDK
reads everything at once, then closes it), and the columns of ``stimulus_presentations`` after the
SDK's fixed first ones come in file order (the SDK orders them through a Python ``set``, an order
that changes from one process to the next).

A session can also be read over HTTP ranges (``stream``, a :class:`~abc_helpers.rangefile.RangeFile`,
from ``VbnProjectCache.get_ecephys_session(..., stream=True)``): each call then fetches only the parts
of the file it reads. ``get_units`` reads the scalar columns only (no spike times, amplitudes or
waveforms), and :meth:`VbnEcephysSession.get_spike_times` reads the spike times of the units asked for
(the SDK's ``spike_times`` reads every unit's: about 800 MB of a real session).
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .nwb_open import open_nwb

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .rangefile import RangeFile

__all__ = ["VbnEcephysSession"]

#: The data attributes and methods of a session (the AllenSDK's names; see ``list_data_attributes_and_methods``).
DATA_ATTRIBUTES = (
    "behavior_session_id", "eye_tracking", "eye_tracking_rig_geometry", "get_channels", "get_lfp", "get_units",
    "licks",
    "mean_waveforms", "metadata", "optotagging_table", "probes", "raw_running_speed", "rewards",
    "running_speed", "spike_amplitudes", "spike_times", "stimulus_presentations", "stimulus_templates",
    "stimulus_timestamps", "task_parameters", "trials")
#: The columns of ``get_units`` (the SDK's ``Unit`` properties; it has no ``waveform_halfwidth``, and returns
#: ``spike_times``, ``spike_amplitudes`` and ``waveform_mean`` separately, as dicts by unit id).
UNIT_COLUMNS = ("PT_ratio", "amplitude", "amplitude_cutoff", "cluster_id", "cumulative_drift", "d_prime",
                "firing_rate", "isi_violations", "isolation_distance", "l_ratio", "local_index", "max_drift",
                "nn_hit_rate", "nn_miss_rate", "peak_channel_id", "presence_ratio", "quality", "recovery_slope",
                "repolarization_slope", "silhouette_score", "snr", "spread", "velocity_above", "velocity_below",
                "waveform_duration")
#: The per-spike and per-waveform columns of the units table, each with its own call (never read by ``get_units``).
UNIT_ARRAY_COLUMNS = ("spike_times", "spike_amplitudes", "waveform_mean", "waveform_sd")
#: The SDK's first columns of ``stimulus_presentations``, in its order (the rest follow).
_PRESENTATION_ORDER = ("stimulus_block", "stimulus_block_name", "image_index", "image_name", "movie_frame_index",
                       "duration", "start_time", "end_time", "stop_time", "start_frame", "end_frame", "is_change",
                       "is_image_novel", "omitted", "movie_repeat", "flashes_since_change", "trials_id")
#: Presentation columns the SDK makes integers, missing values as -99.
_PRESENTATION_INTS = ("flashes_since_change", "image_index", "movie_repeat", "movie_frame_index", "repeat",
                      "stimulus_index")
#: The SDK's stand-in for a missing integer.
INT_NULL = -99
#: The channel filtering text the SDK's channels carry.
CHANNEL_FILTERING = "AP band: 500 Hz high-pass; LFP band: 1000 Hz low-pass"
#: The SDK's blink detection: z-score threshold of the eye and pupil areas and frames added on each side.
BLINK_Z_THRESHOLD, BLINK_DILATION_FRAMES = 3.0, 2


def _none_if_text_none(value: Any) -> Any:
    return None if value in (None, "None", "") else value


class VbnEcephysSession:
    """An opened ecephys session NWB file, with the AllenSDK's ``BehaviorEcephysSession`` calls.

    Close it with :meth:`close` or use it in a ``with`` block.

    Parameters
    ----------
    path : str or PathLike
        The session's NWB file (``ecephys_session_<id>.nwb``).
    probe_lfp : dict or None
        ``{probe name: (LFP file getter, lfp_sampling_rate)}`` of the probes with an LFP file (the
        cache gives it: the getter downloads the file and returns its path); None reads
        ``has_lfp_data`` and ``lfp_sampling_rate`` from the file (and :meth:`get_lfp` has no file).
    stream : RangeFile or None
        The file opened over HTTP ranges (*path* is then where the download would go); None reads
        *path*. Closing the session closes it.

    Examples
    --------
    ``with cache.get_ecephys_session(ecephys_session_id) as session: session.get_units()``
    """

    def __init__(self, path: str | os.PathLike, probe_lfp: dict[str, tuple[Any, float]] | None = None,
                 stream: RangeFile | None = None) -> None:
        import h5py

        self.path = Path(path)
        self._probe_lfp = probe_lfp
        #: The file read over HTTP ranges (``stream.stats``: what was fetched; ``stream.size``), or None if local.
        self.stream = stream
        with warnings.catch_warnings():
            # the files cache NWB core 2.7.0 (what the AllenSDK reads); newer pynwb reads them with its own
            warnings.filterwarnings("ignore", message="Ignoring cached namespace")
            warnings.filterwarnings("ignore", message="The 'manufacturer' field is deprecated")
            self._io = open_nwb(self.path) if stream is None else open_nwb(file=h5py.File(stream, "r"))
            self.nwbfile = self._io.read()

    # -- identity and metadata ----------------------------------------------------------------
    @property
    def ecephys_session_id(self) -> int:
        """The session id (the file's identifier)."""
        return int(self.nwbfile.identifier)

    @property
    def behavior_session_id(self) -> int:
        """The id of the behavior session recorded with this ecephys session."""
        return int(self.nwbfile.lab_meta_data["metadata"].behavior_session_id)

    @property
    def metadata(self) -> dict:
        """The session's metadata, with the SDK's keys: rig, mouse, lines, session type and ids."""
        meta = self.nwbfile.lab_meta_data["metadata"]
        subject = self.nwbfile.subject
        genotype = str(subject.genotype)
        drivers = getattr(subject, "driver_line", None)
        uuid_text = str(meta.behavior_session_uuid)
        age = re.fullmatch(r"P(\d+)D", str(subject.age))
        return {
            "equipment_name": meta.equipment_name, "sex": subject.sex,
            "age_in_days": int(age.group(1)) if age else None,
            "stimulus_frame_rate": float(meta.stimulus_frame_rate), "session_type": meta.session_type,
            "date_of_acquisition": self.nwbfile.session_start_time.astimezone(dt.timezone.utc),
            "reporter_line": _none_if_text_none(getattr(subject, "reporter_line", None)),
            "cre_line": genotype.split(";")[0].replace("/wt", "") if ";" in genotype else None,
            "behavior_session_uuid": None if uuid_text == "None" else uuid.UUID(uuid_text),
            "driver_line": None if drivers is None else sorted(str(d) for d in drivers),
            "mouse_id": subject.subject_id, "project_code": getattr(meta, "project_code", None),
            "full_genotype": genotype, "behavior_session_id": int(meta.behavior_session_id),
            "ecephys_session_id": self.ecephys_session_id}

    @property
    def task_parameters(self) -> dict:
        """The change-detection task's parameters (keys in the SDK's order)."""
        task = self.nwbfile.lab_meta_data["task_parameters"]
        session_type = str(task.session_type)
        parts = session_type.split("_")
        image_set = f"images_{parts[3]}" if parts[2] == "images" else "gratings"
        return {
            "auto_reward_volume": float(task.auto_reward_volume),
            "blank_duration_sec": [float(v) for v in task.blank_duration_sec],
            "image_set": image_set, "n_stimulus_frames": int(task.n_stimulus_frames),
            "omitted_flash_fraction": float(task.omitted_flash_fraction),
            "response_window_sec": [float(v) for v in task.response_window_sec],
            "reward_volume": float(task.reward_volume), "session_type": session_type,
            "stimulus": str(task.stimulus), "stimulus_distribution": str(task.stimulus_distribution),
            "stimulus_duration_sec": float(task.stimulus_duration_sec),
            "stimulus_name": str(task.stimulus_name), "task": str(task.task)}

    def list_data_attributes_and_methods(self) -> list[str]:
        """Return the names of the data attributes and methods of the session (as the SDK lists them)."""
        return sorted(DATA_ATTRIBUTES)

    # -- probes, channels, units ----------------------------------------------------------------
    def _probe_order(self) -> list[tuple[str, int]]:
        """``(name, probe_id)`` of each probe, in the file's order of electrode groups."""
        return [(name, int(group.probe_id)) for name, group in self.nwbfile.electrode_groups.items()]

    @functools.cached_property
    def _electrodes(self) -> pd.DataFrame:
        return self.nwbfile.electrodes.to_dataframe()

    @property
    def probes(self) -> pd.DataFrame:
        """One row per probe, index ``id``: name, location, sampling rates, ``has_lfp_data``."""
        rows = []
        for name, group in self.nwbfile.electrode_groups.items():
            if self._probe_lfp is None:
                has_lfp = bool(group.has_lfp_data)
                rate = float(group.lfp_sampling_rate) if has_lfp else None
            else:
                has_lfp = name in self._probe_lfp
                rate = float(self._probe_lfp[name][1]) if has_lfp else None
            rows.append({"id": int(group.probe_id), "name": name, "location": group.location,
                         "sampling_rate": float(group.device.sampling_rate), "lfp_sampling_rate": rate,
                         "has_lfp_data": has_lfp})
        return pd.DataFrame(rows).set_index("id")

    def get_channels(self, filter_by_validity: bool = True) -> pd.DataFrame:
        """Return the channels of every probe, index ``id`` (the channel id), columns sorted by name.

        Parameters
        ----------
        filter_by_validity : bool
            Keep only channels with ``valid_data`` (and drop that column), as the SDK does by default.
        """
        table = self._electrodes
        frames = []
        for _, probe_id in self._probe_order():
            rows = table[table["probe_id"] == probe_id]
            location = rows["location"].astype(object)
            frames.append(pd.DataFrame({
                "id": rows.index.to_numpy(),
                "anterior_posterior_ccf_coordinate": rows["x"].to_numpy(),
                "dorsal_ventral_ccf_coordinate": rows["y"].to_numpy(),
                "filtering": CHANNEL_FILTERING,
                "left_right_ccf_coordinate": rows["z"].to_numpy(),
                "probe_channel_number": rows["probe_channel_number"].to_numpy(),
                "probe_horizontal_position": rows["probe_horizontal_position"].to_numpy(),
                "probe_id": rows["probe_id"].to_numpy(),
                "probe_vertical_position": rows["probe_vertical_position"].to_numpy(),
                "structure_acronym": location.where(~location.isin(["None", ""]), None).to_numpy(),
                "valid_data": rows["valid_data"].to_numpy()}))
        channels = pd.concat(frames).set_index("id")
        if filter_by_validity:
            channels = channels[channels["valid_data"]].drop(columns=["valid_data"])
        return channels

    @functools.cached_property
    def _units(self) -> pd.DataFrame:
        """Every unit's scalar columns (no arrays), in the SDK's order: probe by probe, file order within
        a probe; ``_row`` is the unit's row in the file."""
        table = self.nwbfile.units
        units = table.to_dataframe(exclude={c for c in UNIT_ARRAY_COLUMNS if c in table.colnames})
        units["_row"] = np.arange(len(units))
        probe_of_channel = dict(zip(self._electrodes.index, self._electrodes["probe_id"], strict=True))
        probe = units["peak_channel_id"].map(probe_of_channel)
        order = [np.flatnonzero((probe == pid).to_numpy()) for _, pid in self._probe_order()]
        return units.iloc[np.concatenate(order) if order else []]

    def get_units(self, filter_by_validity: bool = False, filter_out_of_brain_units: bool = False,
                  amplitude_cutoff_maximum: float | None = None, presence_ratio_minimum: float | None = None,
                  isi_violations_maximum: float | None = None) -> pd.DataFrame:
        """Return the units of every probe, index ``id`` (the unit id), columns sorted by name.

        The spike times, spike amplitudes and mean waveforms are :attr:`spike_times`,
        :attr:`spike_amplitudes` and :attr:`mean_waveforms` (or :meth:`get_spike_times` for some
        units); this reads none of them.

        Parameters
        ----------
        filter_by_validity : bool
            Keep only units of ``quality`` 'good' on valid channels (and drop ``quality``).
        filter_out_of_brain_units : bool
            Keep only units on channels with a structure.
        amplitude_cutoff_maximum, presence_ratio_minimum, isi_violations_maximum : float or None
            Quality bounds (None: no bound).
        """
        units = self._units
        units = units[[c for c in UNIT_COLUMNS if c in units.columns]]
        units.index = pd.Index(units.index.to_numpy(), name="id")
        if filter_by_validity or filter_out_of_brain_units:
            channels = self.get_channels(filter_by_validity=filter_by_validity)
            if filter_out_of_brain_units:
                channels = channels[~channels["structure_acronym"].isna()]
            units = units[units["peak_channel_id"].isin(set(channels.index.tolist()))]
        if filter_by_validity:
            units = units[units["quality"] == "good"].drop(columns=["quality"])
        units = units[units["amplitude_cutoff"] <= (amplitude_cutoff_maximum or np.inf)]
        units = units[units["presence_ratio"] >= (presence_ratio_minimum or -np.inf)]
        return units[units["isi_violations"] <= (isi_violations_maximum or np.inf)]

    def _unit_arrays(self, column: str, unit_ids: Iterable[int] | None = None) -> dict[int, np.ndarray]:
        """``{unit id: the unit's values of an array column}``, every unit (SDK order) or *unit_ids* (their
        order); the file is read once per run of consecutive rows."""
        units = self._units
        if unit_ids is None:
            ids = [int(u) for u in units.index]
        else:
            ids = [int(u) for u in unit_ids]
            unknown = sorted(set(ids) - set(units.index.tolist()))
            if unknown:
                msg = (f"Unit ids {unknown[:10]}{' ...' if len(unknown) > 10 else ''} are not units of session "
                       f"{self.ecephys_session_id}: take them from get_units().index.")
                raise ValueError(msg)
        row_of = dict(zip(units.index.tolist(), units["_row"].tolist(), strict=True))
        rows = np.array(sorted({row_of[u] for u in ids}), dtype=np.int64)
        column_data = self.nwbfile.units[column]
        ragged = hasattr(column_data, "target")  # a VectorIndex: ends of each row in its target
        ends = np.asarray(column_data.data[:], dtype=np.int64) if ragged else None
        source = column_data.target.data if ragged else column_data.data
        values: dict[int, np.ndarray] = {}
        runs = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1) if len(rows) else []
        for run in runs:
            first, last = int(run[0]), int(run[-1])
            if ragged:
                assert ends is not None
                start = int(ends[first - 1]) if first else 0
                block = np.asarray(source[start:int(ends[last])])
                for row in run:
                    a = (int(ends[row - 1]) if row else 0) - start
                    values[int(row)] = block[a:int(ends[row]) - start]
            else:
                block = np.asarray(source[first:last + 1])
                for row in run:
                    values[int(row)] = block[int(row) - first]
        return {u: values[row_of[u]] for u in ids}

    @property
    def spike_times(self) -> dict[int, np.ndarray]:
        """``{unit id: spike times (s)}`` of every unit (streamed, this reads every unit's spikes:
        :meth:`get_spike_times` reads only the units asked for)."""
        return self._unit_arrays("spike_times")

    def get_spike_times(self, unit_ids: Iterable[int]) -> dict[int, np.ndarray]:
        """Return the spike times of some units: ``{unit id: spike times (s)}``, in the order given.

        Not an AllenSDK call (its :attr:`spike_times` reads every unit): the same values, read only
        for the units asked for, so a streamed session fetches only their bytes (units of one probe
        are stored together, and each run of consecutive units is one read).

        Parameters
        ----------
        unit_ids : iterable of int
            Unit ids (``get_units().index``).

        Returns
        -------
        dict of int to numpy.ndarray

        Raises
        ------
        ValueError
            If an id is not a unit of this session.
        """
        return self._unit_arrays("spike_times", unit_ids)

    @property
    def spike_amplitudes(self) -> dict[int, np.ndarray]:
        """``{unit id: the amplitude of each spike}``."""
        return self._unit_arrays("spike_amplitudes")

    @property
    def mean_waveforms(self) -> dict[int, np.ndarray]:
        """``{unit id: the mean waveform on the unit's peak channel}``."""
        return self._unit_arrays("waveform_mean")

    def get_lfp(self, probe_id: int) -> pd.DataFrame | None:
        """Return the LFP of one probe (volts): index ``time`` (s), one column per ``channel`` id.

        The AllenSDK returns the same values as an ``xarray.DataArray`` (dims ``time``, ``channel``);
        this returns a DataFrame (xarray is not a dependency): ``DataArray(df)`` makes one. The
        probe's LFP file (``probe_<name>_lfp.nwb``) is downloaded when first asked for.

        Parameters
        ----------
        probe_id : int
            A probe of the session (:attr:`probes`).

        Returns
        -------
        pandas.DataFrame or None
            None if the probe has no LFP data.

        Raises
        ------
        ValueError
            If *probe_id* is not a probe of this session.
        """
        names = {pid: name for name, pid in self._probe_order()}
        if int(probe_id) not in names:
            msg = (f"Could not find probe with id {probe_id} in session {self.ecephys_session_id}: its probes "
                   f"are {sorted(names)} (see .probes).")
            raise ValueError(msg)
        name = names[int(probe_id)]
        if not self._probe_lfp or name not in self._probe_lfp or self._probe_lfp[name][0] is None:
            return None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Ignoring cached namespace")
            warnings.filterwarnings("ignore", message="The 'manufacturer' field is deprecated")
            io = open_nwb(self._probe_lfp[name][0]())
        with io:
            nwb = io.read()
            series = nwb.acquisition[f"probe_{probe_id}_lfp"].electrical_series[f"probe_{probe_id}_lfp_data"]
            channels = nwb.electrodes.to_dataframe().index.to_numpy()
            return pd.DataFrame(np.asarray(series.data[:]),
                                index=pd.Index(np.asarray(series.timestamps[:]), name="time"),
                                columns=pd.Index(channels, name="channel"))

    # -- stimuli ----------------------------------------------------------------------------------
    @property
    def stimulus_timestamps(self) -> np.ndarray:
        """The display time of every stimulus frame (s)."""
        return np.asarray(self.nwbfile.processing["stimulus"]["timestamps"].timestamps[:])

    @property
    def stimulus_templates(self) -> pd.DataFrame:
        """The session's images, index ``image_name``: ``unwarped`` and ``warped`` (one 2-D array each)."""
        (series,) = list(self.nwbfile.stimulus_template.values())[:1]
        names = [str(n) for n in series.control_description[:]]
        warped, unwarped = np.asarray(series.data[:]), np.asarray(series.unwarped[:])
        return pd.DataFrame({"unwarped": list(unwarped), "warped": list(warped)},
                            index=pd.Index(np.array(names, dtype="str"), name="image_name"))

    @property
    def stimulus_presentations(self) -> pd.DataFrame:
        """Every stimulus presentation of every block, in time order, index ``stimulus_presentations_id``."""
        frames = []
        for name, table in self.nwbfile.intervals.items():
            if not name.endswith("_presentations"):
                continue
            columns = {c.name: list(c.data[:]) for c in table.columns
                       if c.name not in ("tags", "timeseries", "tags_index", "timeseries_index")}
            frames.append(pd.DataFrame(columns).replace({"N/A": ""}))
        table = pd.concat(frames, sort=False)
        table = table.astype(dict.fromkeys(table.select_dtypes(include="int"), "int64"))
        table = table.astype({c: "boolean" for c in table.select_dtypes(include="float")
                              if set(table[c][~table[c].isna()].unique()).issubset({1, 0})
                              and not c.endswith("_index")})
        table = table.sort_values(by=["start_time"]).reset_index(drop=True)
        for column in _PRESENTATION_INTS:
            if column in table.columns:
                table[column] = table[column].fillna(INT_NULL).astype(int)
        table.index = pd.Index(range(len(table)), name="stimulus_presentations_id", dtype="int")
        first = [c for c in _PRESENTATION_ORDER if c in table.columns]
        table = table[first + [c for c in table.columns if c not in first]]
        table = table.drop(columns=["image_set", "index"], errors="ignore")
        return table.rename(columns={"stop_time": "end_time"})

    # -- behavior ---------------------------------------------------------------------------------
    @property
    def trials(self) -> pd.DataFrame:
        """The change-detection trials, index ``trials_id`` (``is_change``, ``hit``, ``miss``, licks, ...)."""
        trials = self.nwbfile.trials.to_dataframe()
        trials = trials.drop(columns=["lick_events"], errors="ignore")
        trials.index = trials.index.rename("trials_id")
        trials = trials.rename(columns={"stimulus_change": "is_change"})
        if "change_frame" in trials.columns:
            trials["change_frame"] = trials["change_frame"].fillna(INT_NULL).astype(int)
        return trials

    def _series(self, module: str, name: str) -> Any:
        return self.nwbfile.processing[module][name]

    def _running(self, name: str) -> pd.DataFrame:
        series = self._series("running", name)
        speed = pd.DataFrame({"timestamps": series.timestamps[:], "speed": series.data[:]})
        if speed["speed"].mean() < -1:  # the SDK flips a reversed wheel
            speed["speed"] = -1 * speed["speed"]
        return speed

    @property
    def running_speed(self) -> pd.DataFrame:
        """Running speed (cm/s, filtered) at each stimulus frame: ``timestamps``, ``speed``."""
        return self._running("speed")

    @property
    def raw_running_speed(self) -> pd.DataFrame:
        """Running speed (cm/s, unfiltered): ``timestamps``, ``speed``."""
        return self._running("speed_unfiltered")

    @property
    def licks(self) -> pd.DataFrame:
        """Licks: ``timestamps`` (s) and the stimulus ``frame`` of each."""
        if "licking" not in self.nwbfile.processing:
            return pd.DataFrame({"timestamps": [], "frame": []})
        licks = self._series("licking", "licks")
        return pd.DataFrame({"timestamps": licks.timestamps[:], "frame": licks.data[:]})

    @property
    def rewards(self) -> pd.DataFrame:
        """Rewards: ``volume`` (mL), ``timestamps`` (s), ``auto_rewarded``."""
        if "rewards" not in self.nwbfile.processing:
            return pd.DataFrame({"volume": [], "timestamps": [], "auto_rewarded": []})
        auto = self._series("rewards", "autorewarded")
        return pd.DataFrame({"volume": self._series("rewards", "volume").data[:],
                             "timestamps": auto.timestamps[:], "auto_rewarded": auto.data[:]})

    @property
    def optotagging_table(self) -> pd.DataFrame:
        """Optotagging light pulses, index ``id``: start and stop times, condition, level, name, duration."""
        table = self._series("optotagging", "optogenetic_stimulation").to_dataframe()
        return table.drop(columns=["tags", "timeseries"])

    @property
    def eye_tracking(self) -> pd.DataFrame | None:
        """Ellipse fits of the eye, pupil and corneal reflection per camera frame, index ``frame``.

        As in the SDK, areas come from the raw areas; frames with a missing or outlying eye or pupil
        area (z-score above 3), and two frames on each side, are likely blinks, whose areas and
        shapes are set to NaN.
        """
        from scipy import ndimage, stats

        if "EyeTracking" not in self.nwbfile.acquisition:
            return None
        eye = self.nwbfile.acquisition["EyeTracking"]
        parts = {"eye": eye.eye_tracking, "pupil": eye.pupil_tracking, "cr": eye.corneal_reflection_tracking}
        data = {"timestamps": parts["eye"].timestamps[:], "cr_area": parts["cr"].area_raw[:],
                "eye_area": parts["eye"].area_raw[:], "pupil_area": parts["pupil"].area_raw[:],
                "likely_blink": eye.likely_blink.data[:], "pupil_area_raw": parts["pupil"].area_raw[:],
                "cr_area_raw": parts["cr"].area_raw[:], "eye_area_raw": parts["eye"].area_raw[:]}
        for part in ("cr", "eye", "pupil"):
            centre = parts[part].data[:]
            data.update({f"{part}_center_x": centre[:, 0], f"{part}_center_y": centre[:, 1],
                         f"{part}_width": parts[part].width[:], f"{part}_height": parts[part].height[:],
                         f"{part}_phi": parts[part].angle[:]})
        table = pd.DataFrame(data)
        table.index = table.index.rename("frame")
        areas = table[["eye_area_raw", "pupil_area_raw"]]
        outliers = pd.Series((areas.apply(stats.zscore, nan_policy="omit").apply(np.abs)
                              > BLINK_Z_THRESHOLD).any(axis=1))
        blinks = pd.isnull(table["eye_area_raw"]) | pd.isnull(table["pupil_area_raw"]) | outliers
        table["likely_blink"] = pd.Series(ndimage.binary_dilation(blinks, iterations=BLINK_DILATION_FRAMES),
                                          index=table.index)
        hidden = table["likely_blink"]
        for column in ("eye_area", "pupil_area", "cr_area", "eye_width", "eye_height", "eye_phi",
                       "pupil_width", "pupil_height", "pupil_phi"):
            table.loc[hidden, column] = np.nan
        return table

    @property
    def eye_tracking_rig_geometry(self) -> dict:
        """Positions (mm) and rotations (degrees) of the eye-tracking camera, LED and monitor."""
        if "eye_tracking_rig_metadata" not in self.nwbfile.processing:
            return {}
        rig = self._series("eye_tracking_rig_metadata", "eye_tracking_rig_metadata")
        return {"camera_position_mm": [float(v) for v in rig.camera_position[:]],
                "camera_rotation_deg": [float(v) for v in rig.camera_rotation[:]],
                "equipment": rig.equipment,
                "led_position": [float(v) for v in rig.led_position[:]],
                "monitor_position_mm": [float(v) for v in rig.monitor_position[:]],
                "monitor_rotation_deg": [float(v) for v in rig.monitor_rotation[:]]}

    # -- the file ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the NWB file (and the HTTP stream of a streamed session)."""
        self._io.close()
        if self.stream is not None:
            self.stream.close()

    def __enter__(self) -> VbnEcephysSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VbnEcephysSession({self.ecephys_session_id}, '{self.path.name}')"
