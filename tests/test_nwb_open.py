"""open_nwb: pynwb readers that share one type map per set of cached specifications, and no more."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from support.worlds import shared_world

from abc_helpers.nwb_open import cached_specifications_digest, open_nwb
from abc_helpers.sources import VBN_BUCKET

pynwb = pytest.importorskip("pynwb")


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> list[Path]:
    """The session files of the VBN-only sample world of this run."""
    world = shared_world(tmp_path_factory, ("vbn",))
    return sorted((world / "s3" / VBN_BUCKET).rglob("ecephys_session_*.nwb"))


def test_files_with_the_same_specifications_share_a_type_map(sessions):
    """Two sessions cache the same specifications: one type map, which knows the Allen extension types."""
    with open_nwb(sessions[0]) as first, open_nwb(sessions[1]) as second:
        assert first.manager.type_map is second.manager.type_map
        assert first.manager is not second.manager  # builders are per file
        with h5py.File(sessions[0], "r") as fh:
            stored = fh["general/metadata"].attrs["neurodata_type"]  # an Allen extension type
        assert type(first.read().lab_meta_data["metadata"]).__name__ == stored


def test_changed_specifications_get_their_own_type_map(sessions, tmp_path):
    """A file whose cached specification text differs in one byte is read with its own schema."""
    changed = tmp_path / sessions[0].name
    shutil.copyfile(sessions[0], changed)
    with h5py.File(changed, "r+") as fh:
        location = fh.attrs[".specloc"]
        namespace = fh[location]["ndx-aibs-ecephys"]
        dataset = namespace[next(iter(namespace))]["namespace"]
        text = dataset[()].decode()
        assert "Neuropixels probes" in text  # the namespace's doc
        del namespace[next(iter(namespace))]["namespace"]
        namespace[next(iter(namespace))]["namespace"] = text.replace("Neuropixels probes", "Neuropixels  probes", 1)
    with h5py.File(sessions[0], "r") as a, h5py.File(changed, "r") as b:
        assert cached_specifications_digest(a) != cached_specifications_digest(b)
    with open_nwb(sessions[0]) as first, open_nwb(changed) as second:
        assert first.manager.type_map is not second.manager.type_map


def test_values_equal_a_plain_pynwb_read(sessions):
    """What open_nwb reads is what ``NWBHDF5IO(path, "r")`` (namespaces loaded at each open) reads."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_nwb(sessions[2]) as ours, pynwb.NWBHDF5IO(str(sessions[2]), "r") as plain:
            a, b = ours.read(), plain.read()
            assert a.identifier == b.identifier
            assert np.array_equal(a.units.id[:], b.units.id[:])
            assert np.array_equal(a.units["spike_times"].target.data[:], b.units["spike_times"].target.data[:])
            assert sorted(a.intervals) == sorted(b.intervals)
            assert np.array_equal(a.trials["start_time"].data[:], b.trials["start_time"].data[:])


def test_an_open_file_is_read_and_closed_with_the_reader(sessions):
    """``file=`` reads an h5py file already open (over HTTP ranges, say) and closes it with the reader."""
    fh = h5py.File(sessions[0], "r")
    with open_nwb(file=fh) as io:
        assert io.read().identifier == sessions[0].parent.name
    assert not fh.id.valid


def test_exactly_one_source():
    """Neither or both of path= and file=: a TypeError that says what to pass."""
    with pytest.raises(TypeError, match="exactly one of path= and file="):
        open_nwb()
