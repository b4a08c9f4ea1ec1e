"""A VBN session file at the real scale, on request: for benchmarks of streamed reads.

The sample world's session files are small (a few hundred units, seconds of spikes). A real VBN
session file is about 2 GB, nearly all of it the units' spike times and amplitudes: about 2,000
units over a 2.5-hour session. :func:`enlarge_session` turns any sample session file into one of
that size: a copy whose ``/units`` table is rewritten with *n_units* units, each a **synthetic**
Poisson spike train over *seconds* at a rate drawn from a log-normal distribution (median 3.5 Hz,
mean about 6 Hz, as in extracellular recordings of mouse cortex), stored as the AllenSDK's files
store them (plain contiguous float64 arrays). The other per-unit columns are rows of the sample's
units drawn at random; everything else (subject, probes, channels, stimuli) is the sample file's.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from ..cachefolder import atomic_path

LOGGER = logging.getLogger("abc_helpers")

__all__ = ["REAL_SECONDS", "REAL_UNITS", "enlarge_session"]

#: Units in a real-scale VBN session file (real sessions hold about two thousand).
REAL_UNITS = 2100
#: A real session's length in seconds (2.5 hours).
REAL_SECONDS = 9000.0
#: Spikes generated at once (bounds the memory used).
_BATCH_SPIKES = 8_000_000


def _rates(rng: np.random.Generator, n: int) -> np.ndarray:
    """Firing rates in Hz: log-normal, median 3.5 Hz, clipped to [0.05, 80]."""
    return np.clip(rng.lognormal(np.log(3.5), 1.0, n), 0.05, 80.0)


def enlarge_session(sample_nwb: str | Path, out: str | Path, *, n_units: int = REAL_UNITS,
                    seconds: float = REAL_SECONDS, seed: int = 19) -> Path:
    """Write a copy of a sample session file whose units table has the real scale.

    Parameters
    ----------
    sample_nwb : str or Path
        A session NWB file of the sample world.
    out : str or Path
        Where the enlarged file goes (written whole, then renamed into place).
    n_units : int
        Units in the new table.
    seconds : float
        The span of the spike trains.
    seed : int
        Seeds the generator: the same arguments give the same bytes.

    Returns
    -------
    Path
        *out*. With the defaults the file is 1.58 GB (1,699,772,596 bytes with the sample of 2026-12).
    """
    import h5py

    rng = np.random.default_rng(seed)
    out = Path(out)
    with atomic_path(out) as tmp:
        shutil.copyfile(sample_nwb, tmp)
        with h5py.File(tmp, "r+") as fh:
            _rewrite_units(fh["units"], n_units, seconds, rng)
    LOGGER.info("Wrote the real-scale session '%s' (%d bytes).", out, out.stat().st_size)
    return out


def _rewrite_units(units, n: int, seconds: float, rng: np.random.Generator) -> None:
    """Replace every column of the units table by one of *n* rows (see the module's text)."""
    import h5py

    old_n = len(units["id"])
    targets = {units[name].attrs["target"]: name for name in units
               if isinstance(units[name], h5py.Dataset) and "target" in units[name].attrs}
    index_of = {units[ref].name.rsplit("/", 1)[-1]: name for ref, name in targets.items()}
    spike_index = units[index_of["spike_times"]][()] if "spike_times" in index_of else None
    rates = _rates(rng, n)
    counts = rng.poisson(rates * seconds)
    pick = np.sort(rng.integers(0, old_n, n))  # in the sample's order: a probe's units together, as in the real files
    new_index = np.cumsum(counts)
    ragged_rows = {}
    for data_name, index_name in index_of.items():
        old_index = units[index_name][()]
        per_spike = spike_index is not None and np.array_equal(old_index, spike_index)
        ragged_rows[data_name] = (index_name, per_spike, old_index)
    if "spike_times" in index_of and "spike_amplitudes" not in index_of:
        _add_amplitudes(units, index_of["spike_times"])
        index_of["spike_amplitudes"] = "spike_amplitudes_index"
        ragged_rows["spike_amplitudes"] = ("spike_amplitudes_index", True, spike_index)
        targets[units["spike_amplitudes_index"].attrs["target"]] = "spike_amplitudes_index"
    for name in list(units):
        ds = units[name]
        if not isinstance(ds, h5py.Dataset) or name in targets.values():
            continue
        attrs = {k: v for k, v in ds.attrs.items() if k != "target"}
        options = {"dtype": ds.dtype, "chunks": ds.chunks, "compression": ds.compression,
                   "shuffle": ds.shuffle, "maxshape": ds.maxshape if ds.chunks else None}
        if name in ragged_rows:
            index_name, per_spike, old_index = ragged_rows[name]
            if per_spike:
                del units[name]
                # float64, as the real files store spike times and amplitudes (the sample's amplitudes are float32)
                new = units.create_dataset(name, shape=(int(new_index[-1]),), dtype="f8")
                _fill_spikes(new, counts, seconds, rng, times=name == "spike_times")
                index_values = new_index
            else:  # a ragged column of per-unit rows (mean waveforms): the picked rows
                starts = np.concatenate([[0], old_index[:-1]])
                values = ds[()]
                rows = [values[starts[i]:old_index[i]] for i in pick]
                data = np.concatenate(rows) if rows else values[:0]
                index_values = np.cumsum([len(r) for r in rows])
                del units[name]
                new = units.create_dataset(name, data=data, **_sized(options, data.shape))
            index = units[index_name]
            index_attrs = {k: v for k, v in index.attrs.items() if k != "target"}
            index_options = {"dtype": index.dtype, "chunks": index.chunks, "compression": index.compression,
                             "shuffle": index.shuffle}
            del units[index_name]
            values = np.asarray(index_values, dtype=index_options["dtype"])
            new_idx = units.create_dataset(index_name, data=values, **_sized(
                {**index_options, "maxshape": (None,) if index_options["chunks"] else None}, values.shape))
            for key, value in index_attrs.items():
                new_idx.attrs[key] = value
            new_idx.attrs["target"] = new.ref
        elif ds.shape and ds.shape[0] == old_n:
            values = ds[()]
            if name == "id":
                data = np.arange(n, dtype=ds.dtype) + int(values.max()) + 1
            elif name == "firing_rate":
                data = rates.astype(ds.dtype)
            else:
                data = values[pick]
            del units[name]
            new = units.create_dataset(name, data=data, **_sized(options, data.shape))
        else:
            continue
        for key, value in attrs.items():
            new.attrs[key] = value


def _add_amplitudes(units, times_index: str) -> None:
    """Add the ``spike_amplitudes`` column the real files carry (float64 volts, one per spike), as
    hdmf writes a ragged column: ``VectorData`` and its ``VectorIndex``; filled by the caller."""
    import uuid

    n = len(units["spike_times"])
    data = units.create_dataset("spike_amplitudes", shape=(n,), dtype="f8")
    data.attrs.update({"description": "amplitude of each spike (V, synthetic)", "namespace": "hdmf-common",
                       "neurodata_type": "VectorData",
                       "object_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "abc_helpers/vbn_large/spike_amplitudes"))})
    index = units.create_dataset("spike_amplitudes_index", data=units[times_index][()])
    index.attrs.update({"description": "Index for VectorData 'spike_amplitudes'", "namespace": "hdmf-common",
                        "neurodata_type": "VectorIndex",
                        "object_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "abc_helpers/vbn_large/spike_amplitudes_index")),
                        "target": data.ref})
    units.attrs["colnames"] = np.array([*units.attrs["colnames"], "spike_amplitudes"], dtype=object)


def _sized(options: dict, shape: tuple[int, ...]) -> dict:
    """Dataset options fitted to *shape* (chunks no larger than the data; none for empty data)."""
    out = {k: v for k, v in options.items() if k != "dtype"}
    if not shape or shape[0] == 0 or out.get("chunks") is None:
        return {"dtype": options["dtype"]}
    out["chunks"] = tuple(min(c, max(1, s)) for c, s in zip(out["chunks"], shape, strict=False))
    out["maxshape"] = (None, *shape[1:])
    return {**out, "dtype": options["dtype"]}


def _fill_spikes(ds, counts: np.ndarray, seconds: float, rng: np.random.Generator,
                 times: bool) -> None:
    """Write each unit's spikes into *ds* batch by batch: sorted times, or amplitudes (volts)."""
    at = 0
    batch: list[np.ndarray] = []
    size = 0
    for count in counts:
        if times:
            batch.append(np.sort(rng.uniform(0.0, seconds, count)))
        else:
            batch.append(rng.lognormal(np.log(8e-5), 0.4, count))
        size += int(count)
        if size >= _BATCH_SPIKES:
            data = np.concatenate(batch)
            ds[at:at + len(data)] = data
            at += len(data)
            batch, size = [], 0
    if batch:
        data = np.concatenate(batch)
        ds[at:at + len(data)] = data
