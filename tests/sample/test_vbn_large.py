"""The real-scale session on request: a sample session file with its units table enlarged."""

from __future__ import annotations

import hashlib

import h5py
import numpy as np

from abc_helpers.neuropixels import VbnEcephysSession
from abc_helpers.sample import build_world
from abc_helpers.sample.vbn_large import enlarge_session


def test_enlarge_session(tmp_path):
    """n units, sorted spike trains within the span, one amplitude per spike (both contiguous float64),
    same bytes twice."""
    sample = next(build_world().rglob("ecephys_session_*.nwb"))
    a = enlarge_session(sample, tmp_path / "a.nwb", n_units=60, seconds=200.0)
    b = enlarge_session(sample, tmp_path / "b.nwb", n_units=60, seconds=200.0)
    assert hashlib.md5(a.read_bytes()).digest() == hashlib.md5(b.read_bytes()).digest()
    with VbnEcephysSession(a) as session:
        units = session.get_units()
        spikes = session.spike_times
        assert len(units) == 60 and units.index.is_unique
        assert all(np.all(np.diff(t) >= 0) and (len(t) == 0 or (t[0] >= 0 and t[-1] <= 200)) for t in spikes.values())
        total = sum(len(t) for t in spikes.values())
        rates = units["firing_rate"].to_numpy()
        assert abs(total - rates.sum() * 200) < 6 * np.sqrt(rates.sum() * 200) + 1  # Poisson at the stated rates
    with h5py.File(a) as fh:
        assert len(fh["units/spike_amplitudes"]) == total
        np.testing.assert_array_equal(fh["units/spike_amplitudes_index"][()], fh["units/spike_times_index"][()])
        for name in ("spike_times", "spike_amplitudes"):  # as the real files store them
            assert fh["units"][name].dtype == np.float64 and fh["units"][name].chunks is None
