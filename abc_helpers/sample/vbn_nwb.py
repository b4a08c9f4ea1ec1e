"""The VBN generator's session NWB files: small real NWB files, one per ecephys session.

Each file holds the session's subject, one device and electrode group per probe, every channel
(the electrodes table, with CCF coordinates and structure acronyms) and every unit with a
**synthetic** spike train (a Poisson train at the unit's firing rate over the first 10 s).

hdmf takes about 0.3 s to build and write even a small NWB file, mostly the same work for every
file; the sample world has one file per session. So pynwb writes one template file (six probes,
a row or two per table), and each session's file is a copy of it filled in with h5py: its scalar
fields, its probes (absent ones removed), whole tables, and object ids of its own. The result
is what pynwb would write for that session, in about 20 ms.

The files are plain NWB: the AllenSDK's ``get_ecephys_session`` cannot open them, because its
``BehaviorEcephysSession.from_nwb`` first reads ``lab_meta_data['metadata']`` (the
``ndx-aibs-behavior-ophys`` ``BehaviorMetadata`` type) and then, with no optional parts, the
subject's ``BehaviorSubject`` fields (driver and reporter lines), ``task_parameters``, the
``stimulus`` timestamps, ``running`` speed and the raw ``v_in``/``v_sig`` acquisition, the
``licking`` and ``rewards`` modules, one stimulus-presentation interval table per stimulus block,
the stimulus templates (``ndx-aibs-stimulus-template``, full-size images), the trials table, eye
tracking and its rig geometry, ``optotagging``, and the ``ndx-aibs-ecephys`` probe devices and
electrode groups, each with the SDK's exact names and types. Those extensions' YAML namespaces
(in the AllenSDK 2.16.2 wheel) would have to be cached in each file and read by the SDK's pinned
pynwb 2, and none of it can be checked without an AllenSDK environment. ``abc_helpers``'s own
:class:`~abc_helpers.neuropixels.VbnEcephysSession` opens them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import tempfile
import uuid
from pathlib import Path
from types import TracebackType

import numpy as np
import pandas as pd

#: The probes a template carries; a session's file keeps those it has.
PROBE_NAMES = ("probeA", "probeB", "probeC", "probeD", "probeE", "probeF")
#: Seconds of synthetic spike train per unit.
SPIKE_SECONDS = 10.0
#: The files' fixed text (synthetic, and saying so).
INSTITUTION = "Allen Institute (synthetic sample)"
_EXTRACELLULAR = "general/extracellular_ephys"
#: Unit metrics copied from ``units.csv`` into the units table.
UNIT_METRICS = ("firing_rate", "presence_ratio", "isi_violations", "amplitude", "snr")


def _stable_uuid(seed: str) -> str:
    return str(uuid.UUID(bytes=hashlib.sha256(seed.encode()).digest()[:16], version=4))


class _FixedUUIDs:
    """Make hdmf's object ids deterministic while the template is built (restored on exit)."""

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


def electrode_columns(chans: pd.DataFrame) -> dict[str, tuple[np.ndarray, str]]:
    """Return the electrodes table of a session's channels: name -> (values, description), in order.

    *chans* are rows of ``channels.csv`` with a ``probe_name`` column added. ``group`` holds the
    probe names here; the file stores references to the probes' electrode groups.
    """
    names = chans["probe_name"].to_numpy(dtype=object)
    return {
        "id": (chans["ecephys_channel_id"].to_numpy(np.int64), "ecephys_channel_id"),
        "location": (chans["structure_acronym"].to_numpy(dtype=object), "CCF structure acronym"),
        "group": (names, "the probe's electrode group"),
        "group_name": (names, "probe name"),
        "x": (chans["anterior_posterior_ccf_coordinate"].to_numpy(float), "CCF AP (um)"),
        "y": (chans["dorsal_ventral_ccf_coordinate"].to_numpy(float), "CCF DV (um)"),
        "z": (chans["left_right_ccf_coordinate"].to_numpy(float), "CCF LR (um)"),
        "probe_channel_number": (chans["probe_channel_number"].to_numpy(np.int64), "channel on the probe"),
        "probe_vertical_position": (chans["probe_vertical_position"].to_numpy(float), "um from the tip"),
        "probe_horizontal_position": (chans["probe_horizontal_position"].to_numpy(float), "um across"),
        "valid_data": (chans["valid_data"].to_numpy(bool), "channel usable"),
    }


def unit_columns(units: pd.DataFrame, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, str]]:
    """Return the units table of a session: name -> (values, description), spike trains included.

    Spike times are a Poisson train at each unit's ``firing_rate`` (at most 60 Hz) over the first
    :data:`SPIKE_SECONDS` seconds, drawn from *rng*.
    """
    rates = np.minimum(units["firing_rate"].to_numpy(float), 60.0)
    counts = rng.poisson(rates * SPIKE_SECONDS)
    spikes = np.concatenate([np.sort(rng.uniform(0, SPIKE_SECONDS, c)) for c in counts] or [np.empty(0)])
    return {
        "id": (units["unit_id"].to_numpy(np.int64), "unit_id"),
        "spike_times": (np.round(spikes, 6), "spike times (s)"),
        "spike_times_index": (np.cumsum(counts).astype(np.int64), "index into spike_times"),
        "peak_channel_id": (units["ecephys_channel_id"].to_numpy(np.int64), "ecephys_channel_id"),
        **{c: (units[c].to_numpy(float), c.replace("_", " ")) for c in UNIT_METRICS},
        "quality": (units["quality"].to_numpy(dtype=object), "'good' or 'noise'"),
    }


def write_template(path: Path) -> None:
    """Write the template NWB file with pynwb: six probes, two electrodes and one unit per table.

    Every value is a placeholder that :meth:`SessionNwbWriter.write` replaces; the layout, types
    and attributes are pynwb's own.
    """
    from hdmf.common import ElementIdentifiers, VectorData, VectorIndex
    from pynwb import NWBHDF5IO, H5DataIO, NWBFile
    from pynwb.ecephys import ElectrodesTable
    from pynwb.file import Subject
    from pynwb.misc import Units

    when = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    chans = pd.DataFrame({"ecephys_channel_id": [1, 2], "structure_acronym": ["root", "root"],
                          "probe_name": ["probeA", "probeB"], "probe_channel_number": [0, 1],
                          **{c: [0.0, 0.0] for c in (
                              "anterior_posterior_ccf_coordinate", "dorsal_ventral_ccf_coordinate",
                              "left_right_ccf_coordinate", "probe_vertical_position",
                              "probe_horizontal_position")},
                          "valid_data": [True, True]})
    units = pd.DataFrame({"unit_id": [1], "ecephys_channel_id": [1], "quality": ["good"],
                          **{c: [1.0] for c in UNIT_METRICS}})
    with _FixedUUIDs("template"):
        nwb = NWBFile(session_description="template", identifier="template", session_id="0",
                      session_start_time=when, file_create_date=[when], institution=INSTITUTION,
                      stimulus_notes="template",
                      subject=Subject(subject_id="0", sex="U", species="Mus musculus",
                                      genotype="template", age="P0D"))
        groups = {}
        for name in PROBE_NAMES:
            device = nwb.create_device(name=name, description="Neuropixels 1.0 (synthetic)")
            groups[name] = nwb.create_electrode_group(name=name, description="ecephys_probe_id 0",
                                                      location="See electrode locations", device=device)

        def resizable(values: np.ndarray) -> H5DataIO:
            """A chunked dataset a session's file resizes (numbers gzip-compressed)."""
            packed = {"compression": "gzip", "shuffle": True} if values.dtype.kind in "biuf" else {}
            return H5DataIO(values, maxshape=(None,), chunks=(4096,), **packed)

        def col(name: str, values: np.ndarray, description: str) -> VectorData:
            return VectorData(name=name, description=description, data=resizable(values))

        electrodes = electrode_columns(chans)
        group = VectorData(name="group", description=electrodes["group"][1],
                           data=[groups[n] for n in chans["probe_name"]])
        nwb.electrodes = ElectrodesTable(
            columns=[group if n == "group" else col(n, v, d) for n, (v, d) in electrodes.items() if n != "id"],
            id=ElementIdentifiers(name="id", data=resizable(electrodes["id"][0])))
        columns = unit_columns(units, np.random.default_rng(0))
        times = col("spike_times", np.array([0.5]), columns["spike_times"][1])
        index = VectorIndex(name="spike_times_index", target=times,
                            data=resizable(np.array([1], dtype=np.uint64)))
        nwb.units = Units(
            name="units", description="units (synthetic spike times)",
            columns=[times, index, *[col(n, v, d) for n, (v, d) in columns.items()
                                     if n not in ("id", "spike_times", "spike_times_index")]],
            id=ElementIdentifiers(name="id", data=resizable(columns["id"][0])))
        with NWBHDF5IO(str(path), "w") as nwb_io:
            nwb_io.write(nwb)


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
        probes = tables["probes"].set_index("ecephys_probe_id")["name"]
        self._channels = tables["channels"].assign(
            probe_name=tables["channels"]["ecephys_probe_id"].map(probes)).groupby("ecephys_session_id")
        self._units = tables["units"].groupby("ecephys_session_id")
        self._probes = tables["probes"].groupby("ecephys_session_id")
        self._folder: tempfile.TemporaryDirectory | None = None
        self._template: Path | None = None

    def __enter__(self) -> SessionNwbWriter:
        self._folder = tempfile.TemporaryDirectory(prefix="vbn-nwb-")
        self._template = Path(self._folder.name) / "template.nwb"
        write_template(self._template)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._folder is not None:
            self._folder.cleanup()
        self._folder = self._template = None

    def write(self, path: Path, session: pd.Series) -> None:
        """Write the NWB file of *session* (a row of ``ecephys_sessions``) to *path*.

        Raises
        ------
        RuntimeError
            If the writer is used outside its ``with`` block (no template yet).
        """
        import h5py

        if self._template is None:
            msg = "SessionNwbWriter.write needs its template: use it inside 'with SessionNwbWriter(tables) as w:'."
            raise RuntimeError(msg)
        sid = int(session["ecephys_session_id"])
        rng = np.random.default_rng(sid)
        probes = self._probes.get_group(sid)
        when = dt.datetime.strptime(session["date_of_acquisition"], "%Y-%m-%d %H:%M:%S.%f+00:00")
        stamp = when.replace(tzinfo=dt.timezone.utc).isoformat()
        shutil.copyfile(self._template, path)
        with h5py.File(path, "r+") as fh:
            for name, value in (
                    ("identifier", str(sid)), ("session_start_time", stamp),
                    ("timestamps_reference_time", stamp),
                    ("session_description", (f"SYNTHETIC sample of ecephys session {sid} "
                                             "(abc_helpers sample world; not real data)")),
                    ("general/session_id", str(sid)),
                    ("general/stimulus", str(session["session_type"])),  # stimulus_notes
                    ("general/subject/subject_id", str(session["mouse_id"])),
                    ("general/subject/sex", str(session["sex"])),
                    ("general/subject/genotype", str(session["genotype"])),
                    ("general/subject/age", f"P{int(session['age_in_days'])}D")):
                fh[name][()] = value
            fh["file_create_date"][0] = stamp
            present = dict(zip(probes["name"], probes["ecephys_probe_id"], strict=True))
            for name in PROBE_NAMES:
                if name in present:
                    fh[f"{_EXTRACELLULAR}/{name}"].attrs["description"] = f"ecephys_probe_id {present[name]}"
                else:
                    del fh[f"{_EXTRACELLULAR}/{name}"], fh[f"general/devices/{name}"]
            electrodes = electrode_columns(self._channels.get_group(sid))
            refs = {n: fh[f"{_EXTRACELLULAR}/{n}"].ref for n in present}
            electrodes["group"] = (np.array([refs[n] for n in electrodes["group"][0]], dtype=h5py.ref_dtype),
                                   electrodes["group"][1])
            _fill_columns(fh[f"{_EXTRACELLULAR}/electrodes"], electrodes)
            _fill_columns(fh["units"], unit_columns(self._units.get_group(sid), rng))
            _retype_electrodes(fh[f"{_EXTRACELLULAR}/electrodes"])
            _renew_object_ids(fh, str(sid))


def _fill_columns(table: object, columns: dict[str, tuple[np.ndarray, str]]) -> None:
    """Resize each column of a table to all its rows and write them (the template's are resizable).

    The ``group`` column, references written by hdmf one by one, is replaced instead: a dataset
    of the same type and attributes holding every row.
    """
    for name, (values, _) in columns.items():
        old = table[name]  # type: ignore[index]
        if old.maxshape == (None,):
            old.resize((len(values),))
            old[...] = values
            continue
        attrs, dtype = dict(old.attrs), old.dtype
        del table[name]  # type: ignore[attr-defined]
        new = table.create_dataset(name, data=np.asarray(values, dtype=dtype), track_times=False)  # type: ignore[attr-defined]
        for key, value in attrs.items():
            new.attrs[key] = value


def _retype_electrodes(table: object) -> None:
    """Store the electrodes table as a plain ``hdmf-common`` ``DynamicTable``, as the real files do.

    pynwb >= 3 writes a ``core`` ``ElectrodesTable``, a type only NWB schema 2.9+ defines, which
    pynwb < 3 (what the AllenSDK 2.16 installs) refuses ("No specification for 'ElectrodesTable'
    in namespace 'core'"); the real VBN files (NWB 2.2-2.5) carry a ``DynamicTable`` there, which
    both old and new pynwb read (new pynwb still returns an ``ElectrodesTable``).
    """
    attrs = table.attrs  # type: ignore[attr-defined]
    if attrs.get("neurodata_type") == "ElectrodesTable":
        attrs["namespace"] = "hdmf-common"
        attrs["neurodata_type"] = "DynamicTable"


def _renew_object_ids(fh: object, seed: str) -> None:
    """Give every object of the file an object id of its own, derived from *seed* and its path."""
    def renew(name: str, obj: object) -> None:
        attrs = obj.attrs  # type: ignore[attr-defined]
        if "object_id" in attrs:
            attrs["object_id"] = _stable_uuid(f"{seed}/{name}")

    renew("/", fh)
    for name, obj in fh.items():  # type: ignore[attr-defined]
        if name != "specifications":  # the cached schema has no object ids
            renew(name, obj)
            if hasattr(obj, "visititems"):
                obj.visititems(lambda sub, o, top=name: renew(f"{top}/{sub}", o))


def write_session_nwb(path: Path, session: pd.Series, tables: dict[str, pd.DataFrame]) -> None:
    """Write the NWB file of one ecephys session (see :class:`SessionNwbWriter` for many)."""
    with SessionNwbWriter(tables) as writer:
        writer.write(path, session)
