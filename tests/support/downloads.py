"""The download paths of the reliability suite: what each way of downloading fetches, and checks.

Shared by ``test_faults.py``, ``test_kill_resume.py`` and ``test_concurrent_processes.py``: a
:class:`Target` per path (the ABC metadata CSV, an h5ad matrix, a whole ABC directory, a VBN table,
a VBN NWB file, an ISH grid zip) with the files it fetches and their expected hashes; checks of
the files on disk and of the bytes the server sent.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from abc_helpers import ish
from abc_helpers.cache import AbcProjectCache, OutdatedManifestWarning
from abc_helpers.neuropixels import VbnProjectCache
from abc_helpers.sample import ABC_BUCKET, VBN_BUCKET, build_world
from abc_helpers.sources import Source

__all__ = ["PATHS", "Target", "abc_cache", "abc_files", "check_whole", "grid_experiment", "sent"]


# -- download paths ------------------------------------------------------------------------------
@dataclass
class Target:
    """What one download path fetches and how to call it."""

    fetch: Callable[[], object]
    #: (final local path, request path on the server, expected "alg:hex", size)
    files: list[tuple[Path, str, str, int]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(f[3] for f in self.files)


def abc_cache(tmp: Path, source: Source) -> AbcProjectCache:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutdatedManifestWarning)
        return AbcProjectCache.from_s3_cache(tmp / "abc", source=source)


def abc_files(cache: AbcProjectCache, attrs_list) -> list[tuple[Path, str, str, int]]:
    return [(cache.cache_dir / a.relative_path, f"{ABC_BUCKET}/{a.relative_path}", a.known_hash, a.size)
            for a in attrs_list]


def abc_metadata(tmp: Path, source: Source, world: Path) -> Target:
    cache = abc_cache(tmp, source)
    attrs = cache.manifest.get_file_attributes("WMB-10X", "gene", ("metadata",))
    return Target(lambda: cache.get_metadata_path("WMB-10X", "gene"), abc_files(cache, [attrs]))


def abc_h5ad(tmp: Path, source: Source, world: Path) -> Target:
    cache = abc_cache(tmp, source)
    attrs = cache.manifest.get_file_attributes("WMB-10XMulti", "WMB-10XMulti/log2")
    return Target(lambda: cache.get_data_path("WMB-10XMulti", "WMB-10XMulti/log2"),
                  abc_files(cache, [attrs]))


def abc_directory(tmp: Path, source: Source, world: Path) -> Target:
    cache = abc_cache(tmp, source)
    files = cache.manifest.files("WMB-taxonomy", ("metadata",))
    assert len(files) >= 5
    return Target(lambda: cache.get_directory_metadata("WMB-taxonomy"), abc_files(cache, files))


def vbn_cache(tmp: Path, source: Source) -> tuple[VbnProjectCache, dict]:
    cache = VbnProjectCache.from_s3_cache(tmp / "vbn", source=source, progressbar=False)
    manifest = json.loads((cache.cache_dir / cache.current_manifest()).read_text())
    return cache, manifest


def vbn_file(cache: VbnProjectCache, manifest: dict, entry: dict) -> tuple[Path, str, str, int]:
    key = entry["url"].split(".amazonaws.com/", 1)[1]
    below = key.split("/", 1)[1]
    local = cache.cache_dir / f"{manifest['project_name']}-{manifest['manifest_version']}" / below
    size = (build_world() / "s3" / VBN_BUCKET / key).stat().st_size
    return local, f"{VBN_BUCKET}/{key}", f"blake2b:{entry['file_hash']}", size


def vbn_table(tmp: Path, source: Source, world: Path) -> Target:
    cache, manifest = vbn_cache(tmp, source)

    def fetch():
        table = cache.get_unit_table()
        assert len(table) > 0 and table.index.name == "unit_id"
        return table

    return Target(fetch, [vbn_file(cache, manifest, manifest["metadata_files"]["units"])])


def vbn_nwb(tmp: Path, source: Source, world: Path) -> Target:
    cache, manifest = vbn_cache(tmp, source)
    sessions = cache.get_ecephys_session_table(filter_abnormalities=False)
    with_file = sessions[sessions["file_id"].astype(str).isin(manifest["data_files"])]
    session_id = int(with_file.index[0])
    entry = manifest["data_files"][str(int(with_file.loc[session_id, "file_id"]))]

    def fetch():
        with cache.get_ecephys_session(session_id) as session:
            assert session.ecephys_session_id == session_id
        return session

    return Target(fetch, [vbn_file(cache, manifest, entry)])


def grid_experiment(world: Path) -> int:
    for path in sorted((world / "allen-api" / "grid_data").glob("*.zip")):
        with zipfile.ZipFile(path) as zf:
            if "energy.raw" in zf.namelist() and zf.getinfo("energy.raw").file_size == ish.GRID_BYTES:
                return int(path.stem)
    raise AssertionError("the sample world has no complete grid zip")


def ish_grid(tmp: Path, source: Source, world: Path) -> Target:
    eid = grid_experiment(world)
    served = world / "allen-api" / "grid_data" / f"{eid}.zip"
    md5 = "md5:" + hashlib.md5(served.read_bytes()).hexdigest()

    def fetch():
        path = ish.download_grid(eid, tmp / "grids", source=source)
        array, _ = ish.read_grid_array(path)  # a corrupt member fails its CRC here
        assert array.shape == ish.GRID_SHAPE
        return path

    return Target(fetch, [(tmp / "grids" / f"{eid}.zip", f"grid_data/download/{eid}", md5,
                           served.stat().st_size)])


PATHS = {
    "abc-metadata-csv": abc_metadata,
    "abc-h5ad": abc_h5ad,
    "abc-directory": abc_directory,
    "vbn-units-table": vbn_table,
    "vbn-nwb": vbn_nwb,
    "ish-grid-zip": ish_grid,
}



def check_whole(target: Target | list) -> None:
    """Every file of *target* (or a list of its file tuples) is whole, verified, without a .part."""
    for local, _, known_hash, size in getattr(target, "files", target):
        assert local.is_file(), f"{local} missing"
        algorithm, digest = known_hash.split(":")
        h = hashlib.new(algorithm) if algorithm != "blake2b" else hashlib.blake2b()
        h.update(local.read_bytes())
        assert h.hexdigest() == digest, f"{local} does not match its hash"
        assert local.stat().st_size == size
        assert not local.with_name(local.name + ".part").exists(), f"{local}.part left behind"


def sent(server, target: Target) -> int:
    counts = server.stats()["bytes_sent"]
    return sum(counts.get(key, 0) for _, key, _, _ in target.files)
