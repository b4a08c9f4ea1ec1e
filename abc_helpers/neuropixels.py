"""``VbnProjectCache``: the Visual Behavior Neuropixels manifests, metadata tables and session files.

The calls and the folder layout follow the AllenSDK's ``VisualBehaviorNeuropixelsProjectCache``
(which pins numpy < 1.24 and cannot share an environment with anndata or numpy 2)::

    <cache_dir>/visual-behavior-neuropixels_project_manifest_v0.3.0.json   the manifests
    <cache_dir>/_manifest_last_used.txt                                     the manifest used last
    <cache_dir>/_downloaded_data.json           the record of verified files (blake2b and size)
    <cache_dir>/visual-behavior-neuropixels-0.3.0/project_metadata/units.csv
    <cache_dir>/visual-behavior-neuropixels-0.3.0/project_metadata/units.<hash>.parquet   parsed table
    <cache_dir>/visual-behavior-neuropixels-0.3.0/behavior_ecephys_sessions/<id>/ecephys_session_<id>.nwb

Differences from the SDK: a table is downloaded when first asked for (not all five at start-up);
the parsed table is cached as parquet beside its CSV, keyed by the CSV's hash, so the next load
skips parsing; a file unchanged between two manifest versions is **hard-linked** from the version
that already has it (a real file on both paths: deleting the old version folder cannot break the
new one, and no symlink privileges are needed on Windows; a copy if the folder cannot hold hard
links); the download record stores paths relative to *cache_dir*, so the folder can move.
The bookkeeping (record, last-used manifest, confinement, read-only mode) is the one cache-folder
core, :class:`abc_helpers.cachefolder.CacheFolder`, shared with :class:`~abc_helpers.AbcProjectCache`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from .cachefolder import (
    CacheFolder,
    OutdatedManifestWarning,
    atomic_path,
    check_relative_path,
    link_or_copy,
)
from .neuropixels_session import VbnEcephysSession
from .session_stream import SessionFile, SessionResults, map_sessions, open_session
from .sources import VBN_BUCKET, Source, get_source
from .transfer import download, file_hash, list_objects

if TYPE_CHECKING:
    from concurrent.futures import Executor

LOGGER = logging.getLogger("abc_helpers")

__all__ = [
    "OutdatedManifestWarning",
    "VbnEcephysSession",
    "VbnProjectCache",
    "generate_all_download_urls_from_manifest",
    "get_behavior_session_url",
    "get_manifest_url",
    "get_metadata_url",
]

PROJECT_NAME = "visual-behavior-neuropixels"
MANIFEST_PREFIX = f"{PROJECT_NAME}/manifests/"
TABLE_NAMES = ("ecephys_sessions", "behavior_sessions", "probes", "channels", "units")
#: The index column of each table, as the SDK sets it.
INDEX_COLUMNS = {"ecephys_sessions": "ecephys_session_id", "behavior_sessions": "behavior_session_id",
                 "probes": "ecephys_probe_id", "channels": "ecephys_channel_id", "units": "unit_id"}
#: Columns the SDK casts to pandas' nullable ``Int64`` (session tables only), when present.
INTEGER_COLUMNS = ("prior_exposures_to_image_set", "ecephys_session_id", "unit_count", "probe_count",
                   "channel_count")
#: Columns kept as text (the Arrow CSV reader would otherwise parse the dates).
_TEXT_COLUMNS = ("date_of_acquisition", "structure_acronyms", "abnormal_histology", "abnormal_activity")
#: pandas' default missing-value markers, so the fast reader agrees with ``pandas.read_csv``.
_NA_VALUES = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
              "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]
_MANIFEST_RE = re.compile(r".*_manifest_v(\d+)\.(\d+)\.(\d+)\.json$")
_UI = "VbnProjectCache"


# -- direct links (the AllenSDK data-access notebook's helpers) -------------------------------------------------
def _object_url(key: str, source: str | Source | None, version_id: str | None = None) -> str:
    return get_source(source).object_url(VBN_BUCKET, key, version_id=version_id)


def get_manifest_url(manifest_version: str, source: str | Source | None = None) -> str:
    """Return the URL of the manifest of *manifest_version* (e.g. ``'0.1.0'``).

    Parameters
    ----------
    manifest_version : str
        ``'x.y.z'``.
    source : str, Source or None
        ``"aws"`` (the real https URL), ``"sample"`` or a mirror; None reads ``ABC_HELPERS_SOURCE``.

    Examples
    --------
    >>> get_manifest_url("0.1.0", source="aws")  # doctest: +NORMALIZE_WHITESPACE
    'https://visual-behavior-neuropixels-data.s3.us-west-2.amazonaws.com/visual-behavior-neuropixels/manifests/visual-behavior-neuropixels_project_manifest_v0.1.0.json'
    """
    return _object_url(f"{MANIFEST_PREFIX}{PROJECT_NAME}_project_manifest_v{manifest_version}.json", source)


def get_metadata_url(metadata_table_name: str, source: str | Source | None = None) -> str:
    """Return the URL of a metadata table (``'units'``, ``'behavior_sessions'``, ...), latest version.

    Examples
    --------
    >>> get_metadata_url("behavior_sessions", source="aws")  # doctest: +NORMALIZE_WHITESPACE
    'https://visual-behavior-neuropixels-data.s3.us-west-2.amazonaws.com/visual-behavior-neuropixels/project_metadata/behavior_sessions.csv'
    """
    name = metadata_table_name.removesuffix(".csv")
    if name not in TABLE_NAMES:
        raise KeyError(f"Unknown VBN metadata table '{metadata_table_name}': use one of {list(TABLE_NAMES)}.")
    return _object_url(f"{PROJECT_NAME}/project_metadata/{name}.csv", source)


def get_behavior_session_url(ecephys_session_id: int, source: str | Source | None = None) -> str:
    """Return the URL of the NWB file of an ecephys session (latest version).

    The AllenSDK's VBN data-access notebook's helper builds ``ecephys_sessions/ecephys_session_<id>.nwb``, a layout the
    bucket no longer uses; this returns the path the files really have,
    ``behavior_ecephys_sessions/<id>/ecephys_session_<id>.nwb``.

    Examples
    --------
    >>> get_behavior_session_url(1052533639, source="aws")  # doctest: +NORMALIZE_WHITESPACE
    'https://visual-behavior-neuropixels-data.s3.us-west-2.amazonaws.com/visual-behavior-neuropixels/behavior_ecephys_sessions/1052533639/ecephys_session_1052533639.nwb'
    """
    sid = int(ecephys_session_id)
    return _object_url(f"{PROJECT_NAME}/behavior_ecephys_sessions/{sid}/ecephys_session_{sid}.nwb", source)


def _relative_key(url: str) -> str:
    """The bucket key of a manifest ``url`` (its path), whatever host it names."""
    return urlsplit(url).path.lstrip("/")


def generate_all_download_urls_from_manifest(manifest_path: str | os.PathLike,
                                             source: str | Source | None = None) -> list[str]:
    """Return a versioned download URL (``...?versionId=...``) for every file a manifest lists.

    The URL is built from *source* and each entry's relative path and ``version_id`` (never from the
    absolute ``url`` in the manifest), metadata files first, then data files, as in the AllenSDK's
    VBN data-access notebook.

    Parameters
    ----------
    manifest_path : str or PathLike
        A downloaded manifest JSON.
    source : str, Source or None
        Where the links should point; ``"aws"`` gives the real https links.
    """
    manifest = json.loads(Path(manifest_path).read_text())
    src = get_source(source)
    entries = list(manifest["metadata_files"].values()) + list(manifest["data_files"].values())
    return [src.object_url(VBN_BUCKET, _relative_key(e["url"]), version_id=e["version_id"]) for e in entries]


# -- manifests --------------------------------------------------------------------------------
def _version_of(name: str) -> tuple[int, int, int]:
    match = _MANIFEST_RE.match(name)
    if not match:
        raise ValueError(f"'{name}' is not a VBN manifest name (expected "
                         f"'{PROJECT_NAME}_project_manifest_v<x.y.z>.json').")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def _latest(names: list[str]) -> str | None:
    return max(names, key=_version_of) if names else None


def _file_map(manifest: dict) -> tuple[dict[str, str], dict[str, str]]:
    """``({relative path without the project folder: hash})`` for metadata files and data files."""
    def strip(url: str) -> str:
        return _relative_key(url).split("/", 1)[1]

    return ({strip(e["url"]): e["file_hash"] for e in manifest["metadata_files"].values()},
            {strip(e["url"]): e["file_hash"] for e in manifest["data_files"].values()})


def _diff(old: dict[str, str], new: dict[str, str]) -> list[tuple[str, str]]:
    """The SDK's change list: changed, renamed, deleted, created."""
    changes, renamed_to = [], set()
    for fname, h0 in old.items():
        if fname in new:
            if new[fname] != h0:
                changes.append((fname, f"{fname} changed"))
            continue
        twins = [f for f, h in new.items() if h == h0 and f not in old]
        if twins:
            renamed_to.add(twins[0])
            changes.append((fname, f"{fname} renamed {twins[0]}"))
        else:
            changes.append((fname, f"{fname} deleted"))
    changes += [(f, f"{f} created") for f in new if f not in old and f not in renamed_to]
    return changes


class VbnProjectCache:
    """Visual Behavior Neuropixels manifests, tables and session files in a local cache folder.

    Build it with :meth:`from_s3_cache` (downloads as needed) or :meth:`from_local_cache`
    (offline: only what is already in *cache_dir*). On start it loads the manifest used last in
    this folder (warning with :class:`OutdatedManifestWarning` if a newer one exists), or the
    newest; nothing else is downloaded until a table or a session is asked for.

    Parameters
    ----------
    cache_dir : str or Path
        The cache folder (created if needed).
    source : str, Source or None
        ``"aws"``, ``"sample"`` or a mirror URL (:func:`abc_helpers.get_source`); None reads
        ``ABC_HELPERS_SOURCE`` and falls back to ``"aws"``.
    local : bool
        Offline mode: list and use only manifests and files already downloaded.
    progressbar : bool
        Show a tqdm bar per download.
    """

    PROJECT_NAME = PROJECT_NAME
    BUCKET_NAME = VBN_BUCKET

    def __init__(self, cache_dir: str | Path, source: str | Source | None = None, local: bool = False,
                 progressbar: bool = True) -> None:
        self._folder = CacheFolder(cache_dir, read_only=local)
        self._cache_dir = self._folder.root
        self.local = local
        self.progressbar = progressbar
        self._source: Source | None = None if local else get_source(source)
        self._folder.ensure_exists()
        self._remote: list[str] | None = None
        self._manifest: dict | None = None
        self._manifest_name: str | None = None
        self._warned: set[str] = set()
        self._load_last_manifest()

    @classmethod
    def from_s3_cache(cls, cache_dir: str | Path, source: str | Source | None = None,
                      **kwargs) -> VbnProjectCache:
        """A cache that downloads from *source* (default ``ABC_HELPERS_SOURCE`` or ``"aws"``)."""
        return cls(cache_dir, source=source, **kwargs)

    @classmethod
    def from_local_cache(cls, cache_dir: str | Path, **kwargs) -> VbnProjectCache:
        """An offline cache over a folder already filled by :meth:`from_s3_cache`."""
        return cls(cache_dir, local=True, **kwargs)

    @property
    def cache_dir(self) -> Path:
        """The cache folder (absolute)."""
        return self._cache_dir

    @property
    def cache_folder(self) -> CacheFolder:
        """The cache folder's bookkeeping (paths, record, last-used manifest)."""
        return self._folder

    @property
    def source(self) -> Source | None:
        """Where files come from (None for a local cache)."""
        return self._source

    def __repr__(self) -> str:
        return (f"{_UI}(cache_dir='{self._cache_dir}', source='{self._source or 'local'}', "
                f"manifest='{self._manifest_name}')")

    # -- listing ---------------------------------------------------------------------------------
    def list_manifest_file_names(self) -> list[str]:
        """Return the names of every manifest available (from the source; offline: downloaded)."""
        if self.local:
            return self.list_all_downloaded_manifests()
        objects = list_objects(self._src.bucket_url(VBN_BUCKET), MANIFEST_PREFIX)
        names = [Path(o["key"]).name for o in objects]
        self._remote = sorted(n for n in names if _MANIFEST_RE.match(n))
        return list(self._remote)

    def _available(self) -> list[str]:
        return list(self._remote) if self._remote is not None else self.list_manifest_file_names()

    def latest_manifest_file(self) -> str:
        """Return the name of the newest manifest available (by version number)."""
        latest = _latest(self._available())
        if latest is None:
            where = f"'{self._cache_dir}'" if self.local else f"{self._src.bucket_url(VBN_BUCKET)}{MANIFEST_PREFIX}"
            raise FileNotFoundError(f"No VBN manifest found in {where}. Check the data source (or, "
                                    "offline, that the cache folder was filled by from_s3_cache).")
        return latest

    def list_all_downloaded_manifests(self) -> list[str]:
        """Return the names of the manifests already in *cache_dir*."""
        return sorted(p.name for p in self._cache_dir.glob("*_manifest_v*.json") if _MANIFEST_RE.match(p.name))

    def latest_downloaded_manifest_file(self) -> str | None:
        """Return the newest manifest already downloaded, or None."""
        return _latest(self.list_all_downloaded_manifests())

    @property
    def manifest(self) -> dict:
        """The manifest in use, as parsed JSON (``metadata_files``, ``data_files``, ...)."""
        if self._manifest is None:
            raise RuntimeError("No manifest is loaded: call load_manifest() or load_latest_manifest().")
        return self._manifest

    @property
    def _src(self) -> Source:
        """The source, for a downloading cache (a local one never reaches it)."""
        if self._source is None:
            raise RuntimeError(f"'{self._cache_dir}' is a local (offline) cache: nothing is downloaded. "
                               f"Use {_UI}.from_s3_cache to download.")
        return self._source

    def current_manifest(self) -> str | None:
        """Return the name of the manifest in use."""
        return self._manifest_name

    # -- loading ---------------------------------------------------------------------------------
    def _check_name(self, name: str) -> str:
        available = self._available()
        if name not in available:
            raise ValueError(f"'{name}' is not a manifest of this dataset. Valid names: {available}. "
                             f"Use {_UI}.list_manifest_file_names() to see them.")
        return name

    def _read_manifest(self, name: str) -> dict:
        """Download (once) and parse the manifest *name*, without making it current."""
        path = self._cache_dir / name
        if not path.exists():
            if self.local:
                raise FileNotFoundError(f"Manifest '{name}' is not in the local cache '{self._cache_dir}'.")
            download(self._src.object_url(VBN_BUCKET, MANIFEST_PREFIX + name), path, progressbar=False)
        manifest = json.loads(path.read_text())
        missing = [k for k in ("project_name", "manifest_version", "metadata_file_id_column_name",
                               "data_pipeline", "metadata_files", "data_files") if k not in manifest]
        if missing:
            raise ValueError(f"Manifest '{path}' lacks the keys {missing}: it is not a VBN project "
                             "manifest. Delete it and load it again.")
        return manifest

    def _use(self, name: str) -> None:
        self._manifest = self._read_manifest(name)
        self._manifest_name = name
        self._folder.set_last_used(name)

    def load_manifest(self, manifest_name: str) -> None:
        """Use the manifest *manifest_name* (a dataset version), remembered for the next session.

        Warns once with :class:`OutdatedManifestWarning` (the SDK's text) if a newer one exists.
        """
        name = self._check_name(manifest_name)
        latest = self.latest_manifest_file()
        if name != latest and latest not in self._warned:
            self._warned.add(latest)
            warnings.warn(
                "\n\nThe manifest file you are loading is not the most up to date manifest file "
                "available for this dataset. The most up to data manifest file available for this "
                f"dataset is \n\n{latest}\n\nTo see the differences between these manifests,run\n\n"
                f"{_UI}.compare_manifests('{name}', '{latest}')\n\nTo see all of the manifest files "
                "currently downloaded onto your local system, run\n\n"
                "self.list_all_downloaded_manifests()\n\nIf you just want to load the latest "
                "manifest, run\n\nself.load_latest_manifest()\n\n",
                OutdatedManifestWarning, stacklevel=2)
        self._use(name)

    def load_latest_manifest(self) -> None:
        """Use the newest manifest; warns if you were working with an older one."""
        latest = self.latest_manifest_file()
        previous = self.latest_downloaded_manifest_file()
        if previous is not None and _version_of(previous) < _version_of(latest):
            warnings.warn(
                f"You are loading\n{latest}\nwhich is newer than the most recent manifest file you "
                f"have previously been working with\n{previous}\nIt is possible that some data files "
                "have changed between these two data releases, which will force you to re-download "
                "those data files (currently downloaded files will not be overwritten). To continue "
                f"using {previous}, run\n{_UI}.load_manifest('{previous}')",
                OutdatedManifestWarning, stacklevel=2)
        self._use(latest)

    def _load_last_manifest(self) -> None:
        name = self._folder.last_used()
        if not name:
            self.load_latest_manifest()
            return
        if name not in self._available():
            warnings.warn(f"The manifest version recorded as last used for this cache -- {name}-- is "
                          "not a valid manifest for this dataset. Loading latest version -- "
                          f"{self.latest_manifest_file()} -- instead.", UserWarning, stacklevel=3)
            self.load_latest_manifest()
            return
        latest = self.latest_manifest_file()
        if name != latest:
            self._warned.add(latest)
            warnings.warn(
                f"You are loading {name}. A more up to date version of the dataset -- {latest} -- "
                "exists online. To see the changes between the two versions of the dataset, run\n"
                f"{_UI}.compare_manifests('{name}', '{latest}')\nTo load another version of the "
                f"dataset, run\n{_UI}.load_manifest('{latest}')",
                OutdatedManifestWarning, stacklevel=4)
        self._use(name)

    def compare_manifests(self, manifest_0_name: str, manifest_1_name: str) -> str:
        """Return the SDK's readable summary of what changed going from one manifest to another.

        Examples of lines: ``project_metadata/units.csv changed``, ``... created``, ``... deleted``,
        ``... renamed <new path>``; ``'The two manifests are equivalent'`` if nothing changed.
        """
        m0 = self._read_manifest(self._check_name(manifest_0_name))
        m1 = self._read_manifest(self._check_name(manifest_1_name))
        (meta0, data0), (meta1, data1) = _file_map(m0), _file_map(m1)
        meta, data = sorted(_diff(meta0, meta1)), sorted(_diff(data0, data1))
        if not meta and not data:
            return "The two manifests are equivalent"
        msg = f"Changes going from\n{manifest_0_name}\nto\n{manifest_1_name}\n\n"
        return msg + "".join(f"{line}\n" for _, line in meta + data)

    # -- files -------------------------------------------------------------------------------------
    def _local_rel(self, entry: dict) -> str:
        """``<project>-<version>/<path below the project folder>``, the SDK's local layout.

        Raises ``ValueError`` if the manifest's URL would put the file outside the cache folder.
        """
        below = _relative_key(entry["url"]).split("/", 1)[-1]
        rel = f"{self.manifest['project_name']}-{self.manifest['manifest_version']}/{below}"
        check_relative_path(rel, f"'{entry['url']}' in {self._manifest_name}")
        try:
            self._folder.path(rel)
        except ValueError:
            raise ValueError(f"Manifest {self._manifest_name}: '{entry['url']}' would be written "
                             f"outside the cache folder '{self._cache_dir}': refused.") from None
        return rel

    def _fetch(self, entry: dict, download_missing: bool = True) -> Path | None:
        """Return the local path of a manifest entry: recorded, reused from another version, or
        downloaded (verified with its blake2b hash); None if it is not here and
        *download_missing* is False."""
        rel = self._local_rel(entry)
        path = self._folder.path(rel)
        expected = entry["file_hash"].lower()
        known = f"blake2b:{expected}"
        record = self._folder.read_record()
        if path.is_file():
            if CacheFolder.matches(record.get(rel), path, known):
                return path
            if file_hash(path, "blake2b") == known:  # present but unrecorded
                self._folder.record({rel: known})
                return path
            if self.local:
                raise OSError(f"'{path}' does not match its manifest hash; run from_s3_cache to fetch it again.")
            LOGGER.warning("'%s' does not match its manifest hash: downloading it again.", path)
            path.unlink()
        source = self._folder.find_recorded(known, record)
        if source is not None:
            LOGGER.info("Reusing '%s' for '%s' (same blake2b).", source, rel)
            link_or_copy(source, path)
            for parsed in source.parent.glob(f"{source.stem}.{expected[:16]}.parquet"):
                link_or_copy(parsed, path.parent / f"{path.stem}.{expected[:16]}.parquet")
            self._folder.record({rel: known})
            return path
        if not download_missing:
            return None
        if self.local:
            raise FileNotFoundError(f"'{rel}' is not in the local cache '{self._cache_dir}'. Use "
                                    f"{_UI}.from_s3_cache to download it.")
        url = self._src.object_url(VBN_BUCKET, _relative_key(entry["url"]), version_id=entry["version_id"])
        download(url, path, known_hash=known, progressbar=self.progressbar, desc=path.name)
        self._folder.record({rel: known})
        return path

    def _metadata_entry(self, name: str) -> dict:
        try:
            return self.manifest["metadata_files"][name]
        except KeyError:
            raise KeyError(f"Manifest '{self._manifest_name}' has no metadata file '{name}': it lists "
                           f"{sorted(self.manifest['metadata_files'])}.") from None

    def get_metadata_path(self, metadata_table_name: str) -> Path:
        """Download (once) a metadata CSV of the current manifest and return its local path."""
        return self._fetched(self._metadata_entry(metadata_table_name.removesuffix(".csv")))

    def _fetched(self, entry: dict) -> Path:
        path = self._fetch(entry)
        assert path is not None  # _fetch downloads what is missing
        return path

    # -- tables ------------------------------------------------------------------------------------
    def _table(self, name: str) -> pd.DataFrame:
        """Load a table: from its parquet cache if there is one, else parse the CSV and write it.

        The cache holds the parsed (untyped, unindexed) Arrow table, written without statistics or
        compression so that writing it costs little; typing and indexing run on every load.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        entry = self._metadata_entry(name)
        path = self._fetched(entry)
        parsed = path.with_name(f"{path.stem}.{entry['file_hash'].lower()[:16]}.parquet")
        if parsed.is_file():
            try:
                return _to_frame(pq.read_table(parsed, memory_map=True), name)
            except (OSError, pa.ArrowException) as error:  # damaged: parse the CSV again
                LOGGER.warning("Ignoring unreadable table cache '%s' (%s).", parsed, error)
        table = _read_csv_arrow(path)
        if self.local:  # a local cache reads and never writes
            return _to_frame(table, name)
        try:
            strings = [f.name for f in table.schema if pa.types.is_string(f.type)]
            with atomic_path(parsed) as tmp:
                pq.write_table(table, tmp, use_dictionary=strings, write_statistics=False,
                               compression="none")
        except OSError as error:  # a read-only folder: serve the table anyway
            LOGGER.warning("Could not cache the parsed table at '%s' (%s).", parsed, error)
        return _to_frame(table, name)

    def get_ecephys_session_table(self, filter_abnormalities: bool = True) -> pd.DataFrame:
        """Return the ecephys sessions, indexed by ``ecephys_session_id`` (nullable ``Int64``).

        Parameters
        ----------
        filter_abnormalities : bool
            Drop sessions with abnormal histology or abnormal activity (the SDK's default).
        """
        df = self._table("ecephys_sessions")
        if filter_abnormalities:
            df = df[df["abnormal_histology"].isna() & df["abnormal_activity"].isna()]
        return df

    def get_behavior_session_table(self) -> pd.DataFrame:
        """Return every behavior session (training, habituation, ecephys), indexed by ``behavior_session_id``."""
        return self._table("behavior_sessions")

    def get_probe_table(self) -> pd.DataFrame:
        """Return the probes, indexed by ``ecephys_probe_id``."""
        return self._table("probes")

    def get_channel_table(self) -> pd.DataFrame:
        """Return the channels, indexed by ``ecephys_channel_id``."""
        return self._table("channels")

    def get_unit_table(self) -> pd.DataFrame:
        """Return the units, indexed by ``unit_id``."""
        return self._table("units")

    # -- sessions ----------------------------------------------------------------------------------
    def _session_entry(self, ecephys_session_id: int) -> dict:
        """The manifest entry of a session's NWB file (KeyError / FileNotFoundError if none)."""
        sessions = self.get_ecephys_session_table(filter_abnormalities=False)
        sid = int(ecephys_session_id)
        if sid not in sessions.index:
            valid = [int(i) for i in sessions.index[:10]]
            raise KeyError(f"No ecephys session {sid} in {self._manifest_name}. Valid ids "
                           f"({len(sessions)} in all) include {valid}; see "
                           "get_ecephys_session_table(filter_abnormalities=False).index.")
        file_id = sessions.loc[sid, self.manifest["metadata_file_id_column_name"]]
        entry = None if pd.isna(file_id) else self.manifest["data_files"].get(str(int(file_id)))
        if entry is None:
            have = sorted(int(i) for i in sessions.index
                          if str(sessions.loc[i, "file_id"]) in self.manifest["data_files"])
            raise FileNotFoundError(f"Ecephys session {sid} (file_id {file_id}) has no NWB file in "
                                    f"{self._manifest_name}. Sessions with a file: {have}.")
        return entry

    def get_ecephys_session_path(self, ecephys_session_id: int) -> Path:
        """Download (once) the NWB file of an ecephys session and return its local path."""
        return self._fetched(self._session_entry(ecephys_session_id))

    def get_ecephys_session_file(self, ecephys_session_id: int) -> SessionFile:
        """Where the NWB file of a session is: its versioned URL, its path here, its hash.

        Nothing is downloaded; ``local`` says whether the file is already here (recorded, or the
        same blake2b kept for another manifest version, which is then linked in).
        """
        entry = self._session_entry(ecephys_session_id)
        local = self._fetch(entry, download_missing=False)
        rel = self._local_rel(entry)
        url = (self._src.object_url(VBN_BUCKET, _relative_key(entry["url"]), version_id=entry["version_id"])
               if local is None else "")
        return SessionFile(int(ecephys_session_id), url, self._folder.path(rel),
                           f"blake2b:{entry['file_hash'].lower()}", local is not None)

    def _probe_lfp(self, ecephys_session_id: int) -> dict[str, tuple[Any, float]]:
        """``{probe name: (LFP file getter, lfp_sampling_rate)}`` of the session's probes with
        ``has_lfp_data`` in the probes table, as the AllenSDK takes them from it (the getter
        downloads the probe's LFP file when ``get_lfp`` asks for it; None if the manifest has none)."""
        probes = self.get_probe_table()
        probes = probes[(probes["ecephys_session_id"] == int(ecephys_session_id)) & probes["has_lfp_data"]]
        files = self.manifest["data_files"]

        def getter(file_id: int) -> Callable[[], Path]:
            return lambda: self._fetched(files[str(file_id)])

        return {str(p.name): (getter(int(p.file_id)) if str(int(p.file_id)) in files else None,
                              float(p.lfp_sampling_rate)) for p in probes.itertuples()}

    def get_ecephys_session(self, ecephys_session_id: int, stream: bool = False) -> VbnEcephysSession:
        """Open the NWB file of an ecephys session with pynwb: downloaded (once), or streamed.

        As the AllenSDK does, the probes with ``has_lfp_data`` in the probes table carry their
        ``lfp_sampling_rate`` from that table.

        Parameters
        ----------
        ecephys_session_id : int
            The session.
        stream : bool
            False (the AllenSDK's way): download the whole file (about 2 GB on real data) once,
            then open it. True: read only what the calls ask for, over HTTP range requests
            pinned to the manifest's version of the file; the blocks fetched are kept in the
            cache folder, so opening the session again fetches nothing. A file already
            downloaded, or whose every block is kept, is read locally either way.

        Returns
        -------
        VbnEcephysSession
            Close it (or use ``with``); for a streamed session, ``session.stream.stats`` says
            what was fetched and ``session.stream.size`` the file's size.
        """
        lfp = self._probe_lfp(ecephys_session_id)
        if not stream:
            return VbnEcephysSession(self.get_ecephys_session_path(ecephys_session_id), probe_lfp=lfp)
        session, saved = open_session(self.get_ecephys_session_file(ecephys_session_id), probe_lfp=lfp)
        if saved:
            self._folder.record({self._folder.relative(session.path): saved})
        return session

    def map_sessions(self, function: Callable[[VbnEcephysSession], Any],
                     ecephys_session_ids: Iterable[int], *, stream: bool = True,
                     executor: Executor | None = None, max_workers: int = 8,
                     progressbar: bool | None = None) -> SessionResults:
        """Call ``function(session)`` on many sessions, streamed, in parallel; see
        :func:`abc_helpers.session_stream.map_sessions` (this cache is its first argument)."""
        return map_sessions(self, function, ecephys_session_ids, stream=stream, executor=executor,
                            max_workers=max_workers, progressbar=progressbar)

    # -- direct links --------------------------------------------------------------------------------
    def _link_source(self) -> Source:
        return self._source if self._source is not None else get_source("aws")

    def get_manifest_url(self, manifest_version: str) -> str:
        """Return the URL of a manifest version (from this cache's source)."""
        return get_manifest_url(manifest_version, self._link_source())

    def get_metadata_url(self, metadata_table_name: str) -> str:
        """Return the URL of a metadata table's latest version (from this cache's source)."""
        return get_metadata_url(metadata_table_name, self._link_source())

    def get_behavior_session_url(self, ecephys_session_id: int) -> str:
        """Return the URL of an ecephys session's NWB file (from this cache's source)."""
        return get_behavior_session_url(ecephys_session_id, self._link_source())

    def generate_all_download_urls_from_manifest(self, manifest_path: str | os.PathLike | None = None) -> list[str]:
        """Versioned URLs of every file a manifest lists (default: the current manifest)."""
        if manifest_path is None:
            manifest_path = self._cache_dir / str(self.current_manifest())
        return generate_all_download_urls_from_manifest(manifest_path, self._link_source())


def _read_csv_arrow(path: str | os.PathLike):
    """Parse a VBN CSV with the multi-threaded Arrow reader, treating empty cells as pandas does."""
    from pyarrow import csv as pacsv
    from pyarrow import string

    with open(path, "rb") as fh:
        header = fh.readline().decode().strip().split(",")
    text = {c: string() for c in header if c in _TEXT_COLUMNS}
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        column_types=text, null_values=_NA_VALUES, strings_can_be_null=True))


def _to_frame(table, name: str) -> pd.DataFrame:
    """Turn a parsed Arrow table into the DataFrame the AllenSDK returns (dtypes, NaN, index)."""
    import pyarrow as pa

    gaps = [(f.name, c.null_count == len(c), pa.types.is_string(f.type) or pa.types.is_dictionary(f.type))
            for f, c in zip(table.schema, table.columns, strict=True) if c.null_count]
    # one block per column and Arrow buffers freed as they convert: less copying, lower peak memory
    df = table.to_pandas(split_blocks=True, self_destruct=True)
    del table
    for column, empty, text in gaps:
        if empty:  # an empty column: float NaN, as pandas.read_csv gives
            df[column] = np.nan
        elif text:  # missing text as NaN (pandas.read_csv), not None (Arrow)
            values = df[column]
            df[column] = values.where(values.notna(), np.nan)
    if name in ("ecephys_sessions", "behavior_sessions"):
        for col in INTEGER_COLUMNS:
            if col in df.columns:
                df[col] = df[col].astype("Int64")
    index = df.pop(INDEX_COLUMNS[name])  # like set_index, without copying the other columns
    df.index = pd.Index(index, name=index.name)
    return df


def read_table_csv(path: str | os.PathLike, name: str) -> pd.DataFrame:
    """Read a VBN metadata CSV and type and index it as the AllenSDK does.

    The values and dtypes equal ``pandas.read_csv(path)`` followed by the SDK's post-processing
    (``Int64`` for the session tables' id and count columns, then the index column); the file is
    parsed with the multi-threaded Arrow CSV reader.

    Parameters
    ----------
    path : str or PathLike
        The CSV.
    name : str
        The table: ``'ecephys_sessions'``, ``'behavior_sessions'``, ``'probes'``, ``'channels'``
        or ``'units'``.
    """
    return _to_frame(_read_csv_arrow(path), name)
