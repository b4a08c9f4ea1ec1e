"""The VBN generator's session NWB files, laid out as the AllenSDK writes the real ones.

Each ``ecephys_session_<id>.nwb`` holds what a real Visual Behavior Neuropixels session file holds
(the parts ``BehaviorEcephysSession.from_nwb`` of the AllenSDK 2.16 reads, with their names and
types), filled with the **synthetic** content of :mod:`.vbn_session`:

* ``general``: the ``BehaviorSubject`` (driver and reporter lines), ``lab_meta_data``
  ``metadata`` (``BehaviorMetadata``) and ``task_parameters`` (``BehaviorTaskParameters``), the
  probes as ``EcephysProbe`` devices and ``EcephysElectrodeGroup`` groups, and the electrodes
  table (CCF coordinates, probe positions, ``probe_id``, ``valid_data``, ``imp``, ``filtering``);
* ``units``: spike times, spike amplitudes, mean waveforms and the unit metrics;
* ``acquisition``: the running wheel's ``v_in`` and ``v_sig``, and ``EyeTracking`` (ellipses);
* ``processing``: ``stimulus`` (frame times), ``running``, ``licking``, ``rewards``,
  ``eye_tracking_rig_metadata``, ``optotagging``;
* ``intervals``: ``trials`` and one ``<stimulus name>_presentations`` table per stimulus;
  ``stimulus/templates``: the images of the session's image set, warped and unwarped.

The Allen extension types come from namespaces written for this package from the published
specifications (``data/nwb/*.yaml``; the AllenSDK's own files are under the Allen Institute
Software License and are not copied). The files are NWB 2.7.0, the core the AllenSDK's pynwb 2
reads: pynwb writes them with this package's pynwb, then :func:`as_core_2_7` stores the
electrodes table as the ``DynamicTable`` NWB 2.7 names and caches the core 2.7.0 schema
(``data/nwb/core-2.7.0``, the NWB schema's own files, BSD licence) in place of the newer one.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import uuid
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd

from .vbn_session import SPIKE_CLOCK_HZ, SessionContent, generate_session

#: The files' fixed text (synthetic, and saying so).
INSTITUTION = "Allen Institute for Brain Science (synthetic sample)"
#: The NWB core version the files declare (the AllenSDK 2.16's pynwb 2.8 reads this core).
NWB_VERSION = "2.7.0"
#: Where the namespaces live: the Allen extensions (written from their specifications) and core 2.7.0.
SPEC_FOLDER = Path(__file__).with_name("data") / "nwb"
#: The extension namespaces the files use, by name: (version, file stem).
NAMESPACES = {"ndx-aibs-ecephys": "0.2.0", "ndx-aibs-behavior-ophys": "0.2.0",
              "ndx-ellipse-eye-tracking": "0.1.0", "ndx-aibs-stimulus-template": "0.1.0"}
#: Unit metrics of ``units.csv`` the units table carries (the AllenSDK's ``Unit`` fields).
UNIT_METRICS = ("quality", "firing_rate", "isi_violations", "presence_ratio", "amplitude_cutoff",
                "isolation_distance", "l_ratio", "d_prime", "nn_hit_rate", "nn_miss_rate", "max_drift",
                "cumulative_drift", "silhouette_score", "waveform_duration", "waveform_halfwidth",
                "PT_ratio", "repolarization_slope", "recovery_slope", "amplitude", "spread",
                "velocity_above", "velocity_below", "snr")
_EXTRACELLULAR = "general/extracellular_ephys"
#: Every LFP_CHANNEL_STEP-th channel of a probe is in its LFP file; the sample's LFP lasts LFP_SECONDS.
LFP_CHANNEL_STEP, LFP_SECONDS = 16, 1.0
_FILTERING = "AP band: 500 Hz high-pass; LFP band: 1000 Hz low-pass"


def _stable_uuid(seed: str) -> str:
    return str(uuid.UUID(bytes=hashlib.sha256(seed.encode()).digest()[:16], version=4))


class _FixedUUIDs:
    """Make hdmf's object ids deterministic while a file is built (restored on exit)."""

    def __init__(self, seed: str) -> None:
        self.seed, self.count = seed, 0

    def __call__(self) -> uuid.UUID:
        self.count += 1
        return uuid.UUID(_stable_uuid(f"{self.seed}/{self.count}"))

    def __enter__(self) -> _FixedUUIDs:
        import hdmf.container

        self._saved = hdmf.container.uuid4
        hdmf.container.uuid4 = self
        return self

    def __exit__(self, *exc: object) -> None:
        import hdmf.container

        hdmf.container.uuid4 = self._saved


@functools.lru_cache(maxsize=1)
def type_map() -> Any:
    """Return a pynwb type map with the Allen extension namespaces loaded (pynwb's global one untouched)."""
    import pynwb

    types = pynwb.get_type_map()
    for name in NAMESPACES:
        types.load_namespaces(str(SPEC_FOLDER / f"{name}.namespace.yaml"))
    return types


def extension_class(name: str, namespace: str) -> Any:
    """Return the pynwb class of an extension type, e.g. ``('EcephysProbe', 'ndx-aibs-ecephys')``."""
    return type_map().get_dt_container_cls(name, namespace)


def genotype_lines(genotype: str) -> tuple[list[str] | None, str]:
    """Return the driver lines and the reporter line of a full genotype.

    Examples
    --------
    >>> genotype_lines("Sst-IRES-Cre/wt;Ai32(RCL-ChR2(H134R)_EYFP)/wt")
    (['Sst-IRES-Cre'], 'Ai32(RCL-ChR2(H134R)_EYFP)')
    >>> genotype_lines("wt/wt")
    (None, 'None')
    """
    parts = [p.split("/")[0] for p in genotype.split(";")]
    drivers = [p for p in parts if "Cre" in p]
    reporters = [p for p in parts if p not in drivers and p != "wt"]
    return (drivers or None), (reporters[0] if reporters else "None")


def _packed(values: np.ndarray, shuffle: bool = True) -> Any:
    """Compress a large numeric array in the file (gzip, and *shuffle*); small ones stay plain."""
    from hdmf.backends.hdf5 import H5DataIO

    values = np.asarray(values)
    if values.dtype.kind in "biuf" and values.size >= 4096:
        return H5DataIO(values, compression="gzip", shuffle=shuffle)
    return values


def _time_intervals(name: str, description: str, frame: pd.DataFrame, extra: list | None = None) -> Any:
    """A ``TimeIntervals`` table with the columns of *frame* (``start_time`` and ``stop_time`` first).

    *extra* holds further columns already built (ragged ones, with their index).
    """
    from hdmf.common import ElementIdentifiers, VectorData
    from pynwb.epoch import TimeIntervals

    columns = []
    for column in frame.columns:
        values = frame[column].to_numpy()
        if values.dtype == object:
            values = np.asarray([str(v) for v in values], dtype=object)
        columns.append(VectorData(name=column, description=f"{column} (synthetic)", data=values))
    return TimeIntervals(name=name, description=description, columns=columns + (extra or []),
                         id=ElementIdentifiers(name="id", data=np.arange(len(frame), dtype=np.int64)))


def _header(session: pd.Series) -> dict[str, Any]:
    """The NWBFile fields a session's files share (its session and LFP files): dates, texts, keywords."""
    when = dt.datetime.strptime(session["date_of_acquisition"], "%Y-%m-%d %H:%M:%S.%f+00:00")
    when = when.replace(tzinfo=dt.timezone.utc)
    return {"session_id": str(int(session["ecephys_session_id"])), "session_start_time": when,
            "file_create_date": [when], "institution": INSTITUTION,
            "stimulus_notes": str(session["session_type"]),
            "experiment_description": ("Synthetic sample of a Visual Behavior Neuropixels session: change detection "
                                       "with natural images, receptive-field gabors, full-field flashes, passive "
                                       "replay and optotagging (abc_helpers)."),
            "keywords": ["synthetic", "visual behavior", "neuropixels", "change detection"]}


def _add_subject_and_metadata(nwb: Any, session: pd.Series) -> None:
    """Add the session's ``BehaviorSubject`` and its ``metadata`` (``BehaviorMetadata``) to *nwb*."""
    drivers, reporter = genotype_lines(str(session["genotype"]))
    nwb.subject = extension_class("BehaviorSubject", "ndx-aibs-behavior-ophys")(
        subject_id=str(session["mouse_id"]), description="A synthetic visual behavior subject",
        age=f"P{int(session['age_in_days'])}D", genotype=str(session["genotype"]),
        sex=str(session["sex"]), species="Mus musculus", reporter_line=reporter,
        **({"driver_line": drivers} if drivers else {}))
    nwb.add_lab_meta_data(extension_class("BehaviorMetadata", "ndx-aibs-behavior-ophys")(
        name="metadata", behavior_session_id=int(session["behavior_session_id"]),
        behavior_session_uuid="None", stimulus_frame_rate=60.0,
        session_type=str(session["session_type"]), equipment_name=str(session["equipment_name"]),
        project_code=str(session["project_code"])))


class SessionNwbWriter:
    """Write the NWB file of any ecephys session of the VBN tables (a context manager).

    Parameters
    ----------
    tables : dict of pandas.DataFrame
        The VBN tables (``probes``, ``channels``, ``units``), as :func:`.vbn.build_tables` gives.

    Examples
    --------
    ``with SessionNwbWriter(tables) as nwb: nwb.write(path, session_row)``
    """

    def __init__(self, tables: dict[str, pd.DataFrame]) -> None:
        self._channels = tables["channels"].groupby("ecephys_session_id")
        self._units = tables["units"].groupby("ecephys_session_id")
        self._probes = tables["probes"].groupby("ecephys_session_id")

    def __enter__(self) -> SessionNwbWriter:
        type_map()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        return None

    def content(self, session: pd.Series) -> SessionContent:
        """Draw the synthetic content of *session* (a row of ``ecephys_sessions``)."""
        sid = int(session["ecephys_session_id"])
        return generate_session(session, self._units.get_group(sid), np.random.default_rng(sid))

    def write(self, path: Path, session: pd.Series) -> None:
        """Write the NWB file of *session* (a row of ``ecephys_sessions``) to *path*."""
        from hdmf.build import BuildManager
        from pynwb import NWBHDF5IO

        sid = int(session["ecephys_session_id"])
        content = self.content(session)
        with _FixedUUIDs(str(sid)), warnings.catch_warnings():
            # EyeTracking's spec asks for SpatialSeries; the ellipse series are (named) ones: not missing
            warnings.filterwarnings("ignore", message=".*missing required value for attribute 'spatial_series'")
            nwb = self._nwbfile(session, content)
            with NWBHDF5IO(str(path), "w", manager=BuildManager(type_map())) as io:
                io.write(nwb, cache_spec=False)  # as_core_2_7 caches the 2.7.0 schema
        as_core_2_7(path)

    def write_lfp(self, path: Path, session: pd.Series, probe: pd.Series) -> None:
        """Write the LFP file (``probe_<name>_lfp.nwb``) of one *probe* (a row of ``probes``) of *session*.

        As the AllenSDK writes them: the probe's device and electrode group, the LFP channels in the
        electrodes table (every :data:`LFP_CHANNEL_STEP`-th channel) and, in ``acquisition``, an ``LFP``
        container ``probe_<id>_lfp`` with the ``ElectricalSeries`` ``probe_<id>_lfp_data`` (time x
        channels, volts). The sample's LFP is :data:`LFP_SECONDS` s of **synthetic** signal from the
        start of the change-detection block: slow noise, a theta rhythm below the cortex, and an
        evoked potential after each image flash in the cortex.
        """
        from hdmf.build import BuildManager
        from hdmf.common import ElementIdentifiers, VectorData
        from pynwb import NWBHDF5IO, NWBFile
        from pynwb.ecephys import LFP, ElectricalSeries, ElectrodesTable

        sid, probe_id = int(session["ecephys_session_id"]), int(probe["ecephys_probe_id"])
        chans = self._channels.get_group(sid)
        chans = chans[(chans["ecephys_probe_id"] == probe_id)
                      & (chans["probe_channel_number"] % LFP_CHANNEL_STEP == 0)]
        rate = float(probe["lfp_sampling_rate"]) / 2  # the AllenSDK's files halve the LFP band's rate
        content = self.content(session)
        start = float(content.stimulus_timestamps[0])
        rng = np.random.default_rng(probe_id)
        n_times = int(LFP_SECONDS * rate)  # the acquisition clock's times, with its jitter
        times = np.round(start + np.arange(n_times) / rate + rng.normal(0, 2e-6, n_times), 7)
        cortex = chans["structure_acronym"].astype(str).str.startswith("VIS").to_numpy()
        depth = chans["probe_vertical_position"].to_numpy(float)
        noise = np.cumsum(rng.normal(0, 1, (len(times), len(chans))), axis=0)
        noise -= np.linspace(0, 1, len(times))[:, None] * noise[-1]  # no drift
        signal = 8e-6 * noise / np.sqrt(len(times)) * 10
        signal += 20e-6 * np.sin(2 * np.pi * 7.0 * times)[:, None] * (~cortex)[None, :] * (depth[None, :] < 2000)
        flashes = content.presentations.loc[content.presentations["stimulus_block"] == 0, "start_time"].to_numpy()
        for onset in flashes[flashes < times[-1]]:
            lag = times - onset - 0.04
            kernel = np.where(lag > 0, (lag / 0.03) * np.exp(1 - lag / 0.03), 0.0)
            signal -= 60e-6 * kernel[:, None] * cortex[None, :]
        with _FixedUUIDs(f"{probe_id}/lfp"), warnings.catch_warnings():
            # the region is built before its series joins the file (as the AllenSDK's writer does)
            warnings.filterwarnings("ignore", message="The linked table for DynamicTableRegion")
            nwb = NWBFile(session_description="LFP data and associated info for one probe (synthetic sample)",
                          identifier=str(probe_id), **_header(session))
            _add_subject_and_metadata(nwb, session)
            device = extension_class("EcephysProbe", "ndx-aibs-ecephys")(
                name=probe["name"], description="Neuropixels 1.0 Probe (synthetic sample)", probe_id=probe_id,
                sampling_rate=float(probe["sampling_rate"]))
            nwb.add_device(device)
            group = extension_class("EcephysElectrodeGroup", "ndx-aibs-ecephys")(
                name=probe["name"], description="Ecephys Electrode Group", location="See electrode locations",
                device=device, probe_id=probe_id, has_lfp_data=True,
                lfp_sampling_rate=float(probe["lfp_sampling_rate"]))
            nwb.add_electrode_group(group)
            n = len(chans)
            nwb.electrodes = ElectrodesTable(columns=[
                VectorData(name="location", description="CCF structure acronym",
                           data=chans["structure_acronym"].to_numpy(dtype=object)),
                VectorData(name="group", description="the probe's electrode group", data=[group] * n),
                VectorData(name="group_name", description="probe name", data=np.full(n, probe["name"], dtype=object)),
                VectorData(name="x", description="CCF anterior-posterior (um)",
                           data=chans["anterior_posterior_ccf_coordinate"].to_numpy(float)),
                VectorData(name="y", description="CCF dorsal-ventral (um)",
                           data=chans["dorsal_ventral_ccf_coordinate"].to_numpy(float)),
                VectorData(name="z", description="CCF left-right (um)",
                           data=chans["left_right_ccf_coordinate"].to_numpy(float)),
                VectorData(name="probe_vertical_position", description="um from the tip",
                           data=chans["probe_vertical_position"].to_numpy(np.int64)),
                VectorData(name="probe_horizontal_position", description="um across",
                           data=chans["probe_horizontal_position"].to_numpy(np.int64)),
                VectorData(name="probe_id", description="the probe", data=np.full(n, probe_id, dtype=np.int64)),
                VectorData(name="probe_channel_number", description="channel on the probe",
                           data=chans["probe_channel_number"].to_numpy(np.int64)),
                VectorData(name="valid_data", description="channel usable", data=chans["valid_data"].to_numpy(bool))],
                id=ElementIdentifiers(name="id", data=chans["ecephys_channel_id"].to_numpy(np.int64)))
            region = nwb.create_electrode_table_region(region=list(range(n)),
                                                       description=f"lfp channels on probe {probe_id}")
            lfp = LFP(name=f"probe_{probe_id}_lfp")
            lfp.add_electrical_series(ElectricalSeries(
                name=f"probe_{probe_id}_lfp_data", data=_packed(signal.astype(np.float32)),
                timestamps=_packed(times), electrodes=region, description="LFP (synthetic)"))
            nwb.add_acquisition(lfp)
            with NWBHDF5IO(str(path), "w", manager=BuildManager(type_map())) as io:
                io.write(nwb, cache_spec=False)
        as_core_2_7(path)

    # -- the parts ----------------------------------------------------------------------------
    def _nwbfile(self, session: pd.Series, content: SessionContent) -> Any:
        from pynwb import NWBFile, ProcessingModule, TimeSeries

        sid = int(session["ecephys_session_id"])
        nwb = NWBFile(
            session_description=(f"SYNTHETIC sample of ecephys session {sid} (abc_helpers sample world; "
                                 "not real data)"),
            identifier=str(sid), **_header(session))
        _add_subject_and_metadata(nwb, session)
        task_cls = extension_class("BehaviorTaskParameters", "ndx-aibs-behavior-ophys")
        task = dict(content.task_parameters)
        for key in ("blank_duration_sec", "response_window_sec"):
            task[key] = np.array([repr(float(v)) for v in task[key]])  # type: ignore[attr-defined]
        nwb.add_lab_meta_data(task_cls(name="task_parameters", **task))
        self._probes_and_electrodes(nwb, session)
        self._units_table(nwb, session, content)

        times = content.stimulus_timestamps
        stimulus = ProcessingModule(name="stimulus", description="Stimulus Times processing")
        frames = TimeSeries(name="timestamps", data=_packed(times), timestamps=_packed(times), unit="s",
                            description="display time of each stimulus frame (synthetic)")
        stimulus.add(frames)
        nwb.add_processing_module(stimulus)
        running = ProcessingModule(name="running", description="Running speed processing module")
        run = content.running
        running.add(TimeSeries(name="speed", data=_packed(run["speed"].to_numpy()), timestamps=frames,
                               unit="cm/s", description="running speed (synthetic)"))
        running.add(TimeSeries(name="speed_unfiltered", data=_packed(run["speed_unfiltered"].to_numpy()),
                               timestamps=frames, unit="cm/s", description="running speed, unfiltered"))
        running.add(TimeSeries(name="dx", data=_packed(run["dx"].to_numpy()), timestamps=frames, unit="cm",
                               description="Running wheel angular change, computed during data collection"))
        nwb.add_processing_module(running)
        nwb.add_acquisition(TimeSeries(name="v_sig", data=_packed(run["v_sig"].to_numpy()), timestamps=frames,
                                       unit="V", description="Voltage signal from the running wheel encoder"))
        nwb.add_acquisition(TimeSeries(name="v_in", data=_packed(run["v_in"].to_numpy()), timestamps=frames,
                                       unit="V", description="The running wheel encoder's supply voltage"))
        self._licks_and_rewards(nwb, content)
        self._eye_tracking(nwb, session, content)
        self._stimuli(nwb, content)
        self._optotagging(nwb, content)
        return nwb

    def _probes_and_electrodes(self, nwb: Any, session: pd.Series) -> None:
        from hdmf.common import ElementIdentifiers, VectorData
        from pynwb.ecephys import ElectrodesTable

        sid = int(session["ecephys_session_id"])
        probe_cls = extension_class("EcephysProbe", "ndx-aibs-ecephys")
        group_cls = extension_class("EcephysElectrodeGroup", "ndx-aibs-ecephys")
        groups = {}
        for probe in self._probes.get_group(sid).itertuples():
            device = probe_cls(name=probe.name, description="Neuropixels 1.0 Probe (synthetic sample)",
                               probe_id=int(probe.ecephys_probe_id),
                               sampling_rate=float(probe.sampling_rate))
            nwb.add_device(device)
            groups[int(probe.ecephys_probe_id)] = group = group_cls(
                name=probe.name, description="Ecephys Electrode Group", location="See electrode locations",
                device=device, probe_id=int(probe.ecephys_probe_id), has_lfp_data=bool(probe.has_lfp_data),
                lfp_sampling_rate=float(probe.lfp_sampling_rate) if probe.has_lfp_data else np.nan)
            nwb.add_electrode_group(group)
        chans = self._channels.get_group(sid)
        probe_ids = chans["ecephys_probe_id"].to_numpy(np.int64)
        columns = [
            ("location", chans["structure_acronym"].to_numpy(dtype=object), "CCF structure acronym"),
            ("group", [groups[p] for p in probe_ids], "the probe's electrode group"),
            ("group_name", np.array([groups[p].name for p in probe_ids], dtype=object), "probe name"),
            ("x", chans["anterior_posterior_ccf_coordinate"].to_numpy(float), "CCF anterior-posterior (um)"),
            ("y", chans["dorsal_ventral_ccf_coordinate"].to_numpy(float), "CCF dorsal-ventral (um)"),
            ("z", chans["left_right_ccf_coordinate"].to_numpy(float), "CCF left-right (um)"),
            ("imp", np.full(len(chans), np.nan), "impedance (ohms): not measured"),
            ("filtering", np.full(len(chans), _FILTERING, dtype=object), "hardware filtering"),
            ("probe_vertical_position", chans["probe_vertical_position"].to_numpy(np.int64),
             "Length-wise position of electrode/channel on device (microns)"),
            ("probe_horizontal_position", chans["probe_horizontal_position"].to_numpy(np.int64),
             "Width-wise position of electrode/channel on device (microns)"),
            ("probe_id", probe_ids, "The unique id of this electrode's/channel's device"),
            ("probe_channel_number", chans["probe_channel_number"].to_numpy(np.int64),
             "The local index of electrode/channel on device"),
            ("valid_data", chans["valid_data"].to_numpy(bool), "Whether data from this electrode/channel is usable"),
        ]
        nwb.electrodes = ElectrodesTable(
            columns=[VectorData(name=n, description=d, data=v) for n, v, d in columns],
            id=ElementIdentifiers(name="id", data=chans["ecephys_channel_id"].to_numpy(np.int64)))

    def _units_table(self, nwb: Any, session: pd.Series, content: SessionContent) -> None:
        from hdmf.common import ElementIdentifiers, VectorData, VectorIndex
        from pynwb.misc import Units

        units = self._units.get_group(int(session["ecephys_session_id"]))
        ends = np.cumsum([len(t) for t in content.spike_times]).astype(np.int64)
        times = VectorData(name="spike_times", description="times (s) of detected spiking events",
                           data=_packed(np.concatenate(content.spike_times)))
        amplitudes = VectorData(name="spike_amplitudes", description="amplitude (V) of detected spiking events",
                                data=_packed(np.concatenate(content.spike_amplitudes), shuffle=False))
        columns = [times, VectorIndex(name="spike_times_index", target=times, data=ends), amplitudes,
                   VectorIndex(name="spike_amplitudes_index", target=amplitudes, data=ends),
                   VectorData(name="waveform_mean", description="mean waveforms on peak channels (over samples)",
                              data=_packed(content.waveforms)),
                   VectorData(name="peak_channel_id", description="the unit's peak channel",
                              data=units["ecephys_channel_id"].to_numpy(np.int64)),
                   VectorData(name="local_index", description="index of the unit on its probe",
                              data=units["local_index"].to_numpy(np.int64)),
                   VectorData(name="cluster_id", description="the spike sorter's cluster id",
                              data=units["local_index"].to_numpy(np.int64))]
        for name in UNIT_METRICS:
            values = units[name].to_numpy(dtype=object if name == "quality" else float)
            columns.append(VectorData(name=name, description=name.replace("_", " "), data=values))
        nwb.units = Units(name="units", description="units (synthetic spike trains)", columns=columns,
                          id=ElementIdentifiers(name="id", data=units["unit_id"].to_numpy(np.int64)),
                          resolution=1 / SPIKE_CLOCK_HZ, waveform_rate=SPIKE_CLOCK_HZ, waveform_unit="volts")

    def _licks_and_rewards(self, nwb: Any, content: SessionContent) -> None:
        from pynwb import ProcessingModule, TimeSeries

        licking = ProcessingModule(name="licking", description="Licking behavior processing module")
        licking.add(TimeSeries(name="licks", data=content.licks["frame"].to_numpy(np.int64),
                               timestamps=content.licks["timestamps"].to_numpy(float), unit="N/A",
                               description="Timestamps and stimulus presentation frame indices for lick events"))
        nwb.add_processing_module(licking)
        rewards = ProcessingModule(name="rewards", description="Licking behavior processing module")
        volume = TimeSeries(name="volume", data=content.rewards["volume"].to_numpy(float),
                            timestamps=content.rewards["timestamps"].to_numpy(float), unit="mL",
                            description="volume of each reward (synthetic)")
        rewards.add(volume)
        rewards.add(TimeSeries(name="autorewarded", data=content.rewards["auto_rewarded"].to_numpy(bool),
                               timestamps=volume, unit="mL", description="whether the reward was automatic"))
        nwb.add_processing_module(rewards)

    def _eye_tracking(self, nwb: Any, session: pd.Series, content: SessionContent) -> None:
        from pynwb import ProcessingModule, TimeSeries

        eye = content.eye_tracking
        series_cls = extension_class("EllipseSeries", "ndx-ellipse-eye-tracking")
        tracking_cls = extension_class("EllipseEyeTracking", "ndx-ellipse-eye-tracking")
        series: dict[str, Any] = {}
        first = None
        for part, name in (("eye", "eye_tracking"), ("pupil", "pupil_tracking"),
                           ("cr", "corneal_reflection_tracking")):
            series[name] = series_cls(
                name=name, reference_frame="nose", unit="pixels", description=f"{part} ellipse (synthetic)",
                data=eye[[f"{part}_center_x", f"{part}_center_y"]].to_numpy(),
                area=eye[f"{part}_area"].to_numpy(), area_raw=eye[f"{part}_area_raw"].to_numpy(),
                width=eye[f"{part}_width"].to_numpy(), height=eye[f"{part}_height"].to_numpy(),
                angle=eye[f"{part}_phi"].to_numpy(),
                timestamps=eye["timestamps"].to_numpy() if first is None else first)
            first = first or series[name]
        series["likely_blink"] = TimeSeries(name="likely_blink", data=eye["likely_blink"].to_numpy(bool),
                                            timestamps=first, unit="N/A", description="blinks")
        nwb.add_acquisition(tracking_cls(name="EyeTracking", **series))
        rig_cls = extension_class("OphysEyeTrackingRigMetadata", "ndx-aibs-behavior-ophys")
        rig = ProcessingModule(name="eye_tracking_rig_metadata", description="Eye tracking rig metadata module")
        rig.add(rig_cls(
            name="eye_tracking_rig_metadata", equipment=str(session["equipment_name"]),
            monitor_position=[170.0, 0.0, 0.0], monitor_position__unit_of_measurement="mm",
            camera_position=[102.8, 74.7, 31.6], camera_position__unit_of_measurement="mm",
            led_position=[246.0, 92.3, 52.6], led_position__unit_of_measurement="mm",
            monitor_rotation=[0.0, 0.0, 0.0], monitor_rotation__unit_of_measurement="deg",
            camera_rotation=[0.0, 0.0, 2.8], camera_rotation__unit_of_measurement="deg"))
        nwb.add_processing_module(rig)

    def _stimuli(self, nwb: Any, content: SessionContent) -> None:
        from hdmf.common import VectorData, VectorIndex

        rows = content.presentations.drop(columns=["start_frame", "end_frame"]).assign(
            start_frame=content.presentations["start_frame"], end_frame=content.presentations["end_frame"])
        order = ["start_time", "stop_time"] + [c for c in rows.columns if c not in ("start_time", "stop_time")]
        rows = rows[order]
        for name in sorted(rows["stimulus_name"].unique()):
            table = rows[rows["stimulus_name"] == name].dropna(axis=1, how="all")
            nwb.add_time_intervals(_time_intervals(
                f"{name}_presentations",
                f"Presentation times and stimuli details for '{name}' stimuli (synthetic). \n"
                "Note: image_name references control_description in stimulus/templates", table))
        trials = content.trials
        licks = list(trials["lick_times"])
        lick_times = VectorData(name="lick_times", description="times (s) of the licks of the trial",
                                data=np.concatenate(licks) if licks else np.empty(0))
        lick_index = VectorIndex(name="lick_times_index", target=lick_times,
                                 data=np.cumsum([len(x) for x in licks]).astype(np.int64))
        nwb.trials = _time_intervals("trials", "trials of the change-detection task (synthetic)",
                                     trials.drop(columns="lick_times"), [lick_times, lick_index])
        template_cls = extension_class("StimulusTemplate", "ndx-aibs-stimulus-template")
        for image_set, images in (("images", content.templates),):
            del image_set
            names = list(images)
            nwb.add_stimulus_template(template_cls(
                name=content.task_parameters["stimulus_name"], data=_packed(np.stack([images[n][0] for n in names])),
                unwarped=_packed(np.stack([images[n][1] for n in names])), control=np.arange(len(names), dtype=np.uint64),
                control_description=names, unit="NA", format="raw", starting_time=np.nan, rate=np.nan,
                description="the session's images, warped as shown and unwarped (synthetic)"))

    def _optotagging(self, nwb: Any, content: SessionContent) -> None:
        from hdmf.common import VectorData, VectorIndex
        from pynwb import ProcessingModule, TimeSeries
        from pynwb.base import TimeSeriesReference, TimeSeriesReferenceVectorData

        opto = content.optotagging
        module = ProcessingModule(name="optotagging", description="optogenetic stimulution data")
        series = TimeSeries(name="optotagging", timestamps=opto["start_time"].to_numpy(float),
                            data=opto["duration"].to_numpy(float), unit="seconds",
                            description="duration of each light pulse (synthetic)")
        module.add(series)
        n = len(opto)
        tags = VectorData(name="tags", description="user-defined tags", data=["optical_stimulation"] * n)
        refs = TimeSeriesReferenceVectorData(name="timeseries", description="the optotagging series",
                                             data=[TimeSeriesReference(i, 1, series) for i in range(n)])
        one_each = np.arange(1, n + 1, dtype=np.int64)
        module.add(_time_intervals("optogenetic_stimulation", "optotagging light pulses (synthetic)", opto, [
            tags, VectorIndex(name="tags_index", target=tags, data=one_each),
            refs, VectorIndex(name="timeseries_index", target=refs, data=one_each)]))
        nwb.add_processing_module(module)


@functools.lru_cache(maxsize=1)
def cached_specifications() -> dict[tuple[str, str], dict[str, str]]:
    """Return the schema the session files cache: ``{(namespace, version): {source: JSON}}``.

    NWB core 2.7.0 (``data/nwb/core-2.7.0``), hdmf-common and hdmf-experimental (the schema of the
    installed hdmf), and the Allen extensions (``data/nwb``), each source as the JSON hdmf caches
    (a namespace's sources named without their ``.yaml``, imported namespaces whole). Read once per
    process.
    """
    import hdmf.common
    from hdmf.spec.namespace import YAMLSpecReader

    files = [SPEC_FOLDER / f"core-{NWB_VERSION}" / "nwb.namespace.yaml",
             Path(hdmf.common.__file__).with_name("hdmf-common-schema") / "common" / "namespace.yaml",
             *(SPEC_FOLDER / f"{name}.namespace.yaml" for name in NAMESPACES)]
    out: dict[tuple[str, str], dict[str, str]] = {}
    for namespace_file in files:
        reader = YAMLSpecReader(indir=str(namespace_file.parent))
        for namespace in reader.read_namespace(str(namespace_file)):
            sources = {}
            for schema in namespace["schema"]:
                schema.pop("neurodata_types", None)  # hdmf caches whole namespaces, as here
                if "source" in schema:
                    source = schema["source"]
                    schema["source"] = source.removesuffix(".yaml")
                    sources[schema["source"]] = json.dumps(reader.read_spec(source), separators=(",", ":"))
            sources["namespace"] = json.dumps({"namespaces": [namespace]}, separators=(",", ":"))
            out[(namespace["name"], str(namespace["version"]))] = sources
    return out


def as_core_2_7(path: Path) -> None:
    """Make a file written by pynwb 3+ (without its schema) a NWB 2.7.0 file: types and cached schema.

    The electrodes table becomes the ``hdmf-common`` ``DynamicTable`` NWB 2.7 specifies (newer cores
    define ``ElectrodesTable``, which pynwb 2 cannot read), the root declares ``nwb_version``
    2.7.0, and ``/specifications`` caches :func:`cached_specifications`. Everything the sample files
    store is NWB 2.7.0 (checked by the pynwb validator in the tests).
    """
    import h5py

    with h5py.File(path, "r+") as fh:
        attrs = fh[f"{_EXTRACELLULAR}/electrodes"].attrs
        if attrs.get("neurodata_type") == "ElectrodesTable":
            attrs["namespace"] = "hdmf-common"
            attrs["neurodata_type"] = "DynamicTable"
        fh.attrs["nwb_version"] = NWB_VERSION
        for device in fh["general/devices"].values():
            if device.attrs.get("neurodata_type") == "EcephysProbe":
                device.attrs["manufacturer"] = "imec"  # a Device attribute in NWB 2.7 (pynwb 4 deprecates it)
        specs = fh.require_group("specifications")
        for (name, version), sources in cached_specifications().items():
            group = specs.require_group(name).create_group(version)
            for source, text in sources.items():
                group.create_dataset(source, data=text, dtype=h5py.string_dtype())
        fh.attrs[".specloc"] = specs.ref


def write_session_nwb(path: Path, session: pd.Series, tables: dict[str, pd.DataFrame]) -> None:
    """Write the NWB file of one ecephys session (see :class:`SessionNwbWriter` for many)."""
    with SessionNwbWriter(tables) as writer:
        writer.write(path, session)
