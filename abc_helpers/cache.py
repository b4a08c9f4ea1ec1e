"""``AbcProjectCache``: ABC Atlas releases, directories and files, in a local cache folder.

The cache folder is laid out like the bucket::

    <cache_dir>/releases/<YYYYMMDD>/manifest.json
    <cache_dir>/<kind>/<directory>/<version>/<file>        e.g. metadata/WMB-10X/20231215/gene.csv
    <cache_dir>/_downloaded_data.json                        the record of verified files
    <cache_dir>/_manifest_last_used.txt                      the release used last, across processes

The bookkeeping (record, last-used release, confinement, read-only mode) is the one cache-folder
core, :class:`abc_helpers.cachefolder.CacheFolder`; this module keeps what is the ABC Atlas's own:
listing and parsing its release manifests and mapping a file to its key and md5.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import warnings
from pathlib import Path

import pandas as pd

from .cachefolder import CacheFolder, OutdatedManifestWarning, ReadOnlyLocalCacheWarning
from .manifest import (
    DATA_KINDS,
    FileAttributes,
    Manifest,
    ManifestComparison,
    compare_manifests,
    format_size,
    suggest,
)
from .sources import ABC_BUCKET, Source, get_source
from .transfer import DownloadJob, download, download_many, file_hash, list_objects

LOGGER = logging.getLogger("abc_helpers")

__all__ = ["AbcProjectCache", "LargeDataSizeWarning", "OutdatedManifestWarning",
           "ReadOnlyLocalCacheWarning"]

MANIFEST_PREFIX = "releases/"
#: Finished downloads recorded at once, when a directory is downloaded.
RECORD_BATCH = 32
_MANIFEST_RE = re.compile(r"^releases/(\d{8})/manifest\.json$")


class LargeDataSizeWarning(UserWarning):
    """A directory download is large (over 10 GB by default)."""


class AbcProjectCache:
    """Releases, directories and files of the Allen Brain Cell Atlas, cached in a local folder.

    Use :meth:`from_s3_cache` (downloads as needed), :meth:`from_local_cache` (read-only, e.g. a
    mounted bucket) or :meth:`from_cache_dir` (picks one by whether the folder is writable).

    Parameters
    ----------
    cache_dir : str or Path
        The cache folder.
    source : str, Source or None
        ``"aws"``, ``"sample"`` or a mirror URL (see :func:`abc_helpers.sources.get_source`).
        Ignored by a local cache.
    local : bool
        Read-only mode: only manifests and files already in *cache_dir* are used.
    large_directory_bytes : int
        Directory downloads larger than this warn with :class:`LargeDataSizeWarning`.
    max_workers : int
        Parallel transfers for directory downloads.
    progressbar : bool
        Show tqdm progress bars while downloading (one per file, or one per directory); the
        ``progressbar`` argument of the ``get_*_path`` methods overrides it for one call.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        source: str | Source | None = None,
        local: bool = False,
        large_directory_bytes: int = 10 * 1024**3,
        max_workers: int = 8,
        progressbar: bool = True,
    ) -> None:
        self._folder = CacheFolder(cache_dir, read_only=local)
        self._cache_dir = self._folder.root
        self.local = local
        self.large_directory_bytes = large_directory_bytes
        self.max_workers = max_workers
        self.progressbar = progressbar
        self._source = None if local else get_source(source)
        self._folder.ensure_exists()
        self._remote_manifests: list[str] | None = None
        self._manifest: Manifest | None = None
        self._warned_outdated: set[str] = set()
        self.load_last_manifest()

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def from_s3_cache(cls, cache_dir: str | Path, source: str | Source | None = None,
                      **kwargs) -> AbcProjectCache:
        """A cache that downloads from *source* (default ``ABC_HELPERS_SOURCE`` or ``"aws"``)."""
        return cls(cache_dir, source=source, **kwargs)

    @classmethod
    def from_local_cache(cls, cache_dir: str | Path, **kwargs) -> AbcProjectCache:
        """A read-only cache over a folder laid out like the bucket (e.g. an s3fs mount)."""
        return cls(cache_dir, local=True, **kwargs)

    @classmethod
    def from_cache_dir(cls, cache_dir: str | Path, source: str | Source | None = None,
                       **kwargs) -> AbcProjectCache:
        """A downloading cache if *cache_dir* is writable (or absent), else a read-only one."""
        path = Path(cache_dir).expanduser()
        if not path.exists() or os.access(path, os.W_OK):
            return cls.from_s3_cache(path, source=source, **kwargs)
        warnings.warn(f"'{path}' is read-only: using it as a local cache (no downloads).",
                      ReadOnlyLocalCacheWarning, stacklevel=2)
        return cls.from_local_cache(path, **kwargs)

    # -- basic properties ------------------------------------------------------------------------
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
        mode = "local" if self.local else f"source={self._source}"
        return f"AbcProjectCache('{self._cache_dir}', {mode}, manifest='{self.current_manifest}')"

    # -- manifests -------------------------------------------------------------------------------
    @property
    def list_manifest_file_names(self) -> list[str]:
        """Every release manifest available (on the source; downloaded ones for a local cache)."""
        if self.local:
            downloaded = self.list_all_downloaded_manifests
            if not downloaded:
                raise FileNotFoundError(f"No release manifests (releases/*/manifest.json) in the local "
                                        f"cache '{self._cache_dir}'.")
            return downloaded
        if self._remote_manifests is None:
            keys = [o["key"] for o in list_objects(self._src.bucket_url(ABC_BUCKET), MANIFEST_PREFIX)]
            self._remote_manifests = sorted(k for k in keys if _MANIFEST_RE.match(k))
            if not self._remote_manifests:
                raise FileNotFoundError(f"No release manifests under '{MANIFEST_PREFIX}' at "
                                        f"{self._src.bucket_url(ABC_BUCKET)}: is the data source right?")
        return list(self._remote_manifests)

    @property
    def latest_manifest_file(self) -> str:
        """The newest release manifest available."""
        return max(self.list_manifest_file_names)

    @property
    def list_all_downloaded_manifests(self) -> list[str]:
        """Release manifests already in the cache folder."""
        found = (p.relative_to(self._cache_dir).as_posix()
                 for p in self._cache_dir.glob("releases/*/manifest.json"))
        return sorted(name for name in found if _MANIFEST_RE.match(name))

    @property
    def latest_downloaded_manifest_file(self) -> str | None:
        """The newest release manifest in the cache folder, or None."""
        downloaded = self.list_all_downloaded_manifests
        return max(downloaded) if downloaded else None

    @property
    def current_manifest(self) -> str | None:
        """The name of the loaded release manifest, e.g. ``'releases/20231215/manifest.json'``."""
        return self._manifest.name if self._manifest is not None else None

    @property
    def manifest(self) -> Manifest:
        """The loaded :class:`~abc_helpers.manifest.Manifest`."""
        if self._manifest is None:
            raise RuntimeError("No release is loaded: call load_manifest() or load_latest_manifest().")
        return self._manifest

    @property
    def _src(self) -> Source:
        """The source, for a downloading cache (a local one never reaches it)."""
        if self._source is None:
            raise RuntimeError(f"'{self._cache_dir}' is a local (read-only) cache: nothing is downloaded. "
                               "Use AbcProjectCache.from_s3_cache to download.")
        return self._source

    def check_manifest_name(self, name: str) -> str:
        """Return the full manifest name of release *name* (``'20231215'`` is accepted).

        Raises
        ------
        ValueError
            If the source has no such release (the message suggests close names).
        """
        valid = self.list_manifest_file_names
        if name in valid:
            return name
        release = f"releases/{name}/manifest.json"  # accept '20231215' for convenience
        if release in valid:
            return release
        raise ValueError(f"'{name}' is not a release manifest of this source.{suggest(name, valid)} "
                         f"Valid names: {valid}")

    def get_manifest(self, name: str) -> Manifest:
        """Return the parsed manifest of release *name* (downloaded if needed) without loading it."""
        path = self._folder.path(name)
        if not path.exists():
            name = self.check_manifest_name(name)
            path = self._folder.path(name)
        if not path.exists():
            if self.local:
                raise FileNotFoundError(f"{name} is not in the local cache '{self._cache_dir}'.")
            download(self._src.object_url(ABC_BUCKET, name), path, progressbar=False)
        return Manifest.from_file(path, name=name)

    def load_manifest(self, manifest_name: str | None = None) -> None:
        """Load a release (``'releases/20230630/manifest.json'`` or ``'20230630'``), remembered for
        the next session; warns with :class:`OutdatedManifestWarning` if a newer release exists."""
        if manifest_name is None:
            self.load_last_manifest()
            return
        name = self.check_manifest_name(manifest_name)
        latest = self.latest_manifest_file
        if name != latest and latest not in self._warned_outdated and not self.local:
            self._warned_outdated.add(latest)
            warnings.warn(
                f"The manifest you are loading ({name}) is not the most up to date one available. "
                f"The newest is {latest}. To see what changed, run\n"
                f"AbcProjectCache.compare_manifests('{latest}', '{name}')\n"
                "To load the newest, run\nAbcProjectCache.load_latest_manifest()",
                OutdatedManifestWarning, stacklevel=2)
        self._manifest = self.get_manifest(name)
        self._folder.set_last_used(name)

    def load_latest_manifest(self) -> None:
        """Load the newest release; warns if you were working with an older one."""
        latest = self.latest_manifest_file
        previous = self.current_manifest
        if previous is not None and previous < latest and not self.local:
            warnings.warn(
                f"You are loading {latest}, which is newer than the most recent manifest you have "
                f"worked with ({previous}). Files that changed between the two releases will be "
                f"downloaded again when you ask for them (files already downloaded are kept). To "
                f"continue with {previous}, run\nAbcProjectCache.load_manifest('{previous}')",
                OutdatedManifestWarning, stacklevel=2)
        self._manifest = self.get_manifest(latest)
        self._folder.set_last_used(latest)

    def load_last_manifest(self) -> None:
        """Load the release used last (across Python sessions), or the newest one."""
        name = self._folder.last_used()
        if name is None:
            self.load_latest_manifest()
            return
        if name not in self.list_manifest_file_names:
            warnings.warn(f"The release recorded as last used ({name!r}) is not available from this "
                          f"source; loading the newest, {self.latest_manifest_file}, instead.",
                          UserWarning, stacklevel=2)
            self.load_latest_manifest()
            return
        latest = self.latest_manifest_file
        if name != latest and not self.local:
            self._warned_outdated.add(latest)
            warnings.warn(
                f"You are loading {name}. A more up to date version of the dataset -- {latest} -- "
                f"exists. To see the changes between the two releases, run\n"
                f"AbcProjectCache.compare_manifests('{latest}', '{name}')\n"
                f"To load the newest, run\nAbcProjectCache.load_manifest('{latest}')",
                OutdatedManifestWarning, stacklevel=3)
        self._manifest = self.get_manifest(name)

    def compare_manifests(self, manifest_newer_name: str, manifest_older_name: str) -> ManifestComparison:
        """What changed between two releases: directories and files added, removed and changed.

        Parameters
        ----------
        manifest_newer_name, manifest_older_name : str
            Two release manifest names, the newer first.

        Returns
        -------
        ManifestComparison
            Prints as readable text; ``.to_dataframe()`` gives one row per changed file.
        """
        newer = self.get_manifest(self.check_manifest_name(manifest_newer_name))
        older = self.get_manifest(self.check_manifest_name(manifest_older_name))
        return compare_manifests(newer, older)

    # -- listing ---------------------------------------------------------------------------------
    @property
    def list_directories(self) -> list[str]:
        """The directories of the loaded release."""
        return self.manifest.list_directories

    def list_metadata_files(self, directory: str) -> list[str]:
        """Metadata (CSV) file names of *directory*."""
        return self.manifest.list_files(directory, ("metadata",))

    def list_data_files(self, directory: str) -> list[str]:
        """Data file names of *directory* (h5ad pairs as ``'<name>/log2'``, ``'<name>/raw'``)."""
        return self.manifest.list_files(directory, DATA_KINDS)

    def list_expression_matrix_files(self, directory: str) -> list[str]:
        """Expression matrix (h5ad) names of *directory*."""
        return self.manifest.list_files(directory, ("expression_matrices",))

    def list_image_volume_files(self, directory: str) -> list[str]:
        """Image volume (nii.gz) names of *directory*."""
        return self.manifest.list_files(directory, ("image_volumes",))

    def get_directory_data_size(self, directory: str) -> str:
        """Total size of the data files of *directory*, e.g. ``'104.16 GB'``."""
        self.list_data_files(directory)  # raises if there are none
        return format_size(self.manifest.directory_size(directory, DATA_KINDS))

    def get_directory_metadata_size(self, directory: str) -> str:
        """Total size of the metadata files of *directory*, e.g. ``'4.65 MB'``."""
        self.list_metadata_files(directory)
        return format_size(self.manifest.directory_size(directory, ("metadata",)))

    def get_file_attributes(self, directory: str, file_name: str) -> FileAttributes:
        """The manifest entry of one file (size, md5, version, relative path)."""
        return self.manifest.get_file_attributes(directory, file_name)

    # -- the download record -----------------------------------------------------------------------
    def _record(self, files: list[FileAttributes], skip_hash_check: bool) -> None:
        self._folder.record({a.relative_path: None if skip_hash_check else a.known_hash for a in files})

    def _is_ready(self, attrs: FileAttributes, record: dict, skip_hash_check: bool) -> bool:
        """Is the file at its local path, whole and (if known) verified?"""
        path = self._folder.path(attrs.relative_path)
        if not path.is_file():
            return False
        if path.stat().st_size != attrs.size:
            LOGGER.warning("%s has %d bytes but the manifest says %d: downloading it again.",
                           path, path.stat().st_size, attrs.size)
            return False
        entry = record.get(attrs.relative_path)
        if CacheFolder.matches(entry, path, attrs.known_hash):
            return True
        if self.local or skip_hash_check:
            return True  # a read-only mirror is trusted; skip_hash_check trusts the size
        # Present but not recorded (or recorded for another release): check its hash once.
        if file_hash(path, "md5") == attrs.known_hash:
            self._record([attrs], skip_hash_check=False)
            return True
        return False

    def _fetch(self, files: list[FileAttributes], force_download: bool, skip_hash_check: bool,
               desc: str | None = None, progressbar: bool | None = None) -> list[Path]:
        show = self.progressbar if progressbar is None else progressbar
        paths = [self._folder.path(a.relative_path) for a in files]
        if self.local:
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise FileNotFoundError(
                    f"This is a local (read-only) cache and {len(missing)} file(s) are not in it: "
                    f"{missing[:3]}{' ...' if len(missing) > 3 else ''}. Use "
                    "AbcProjectCache.from_s3_cache to download them.")
            return paths
        record = self._folder.read_record()
        todo = [a for a in files if force_download or not self._is_ready(a, record, skip_hash_check)]
        if not todo:
            return paths
        needed = sum(a.size for a in todo)
        free = shutil.disk_usage(self._cache_dir).free
        if needed > free:
            raise OSError(f"Not enough disk space: {len(todo)} file(s) need {format_size(needed)} but "
                          f"only {format_size(free)} is free at '{self._cache_dir}'. Free some space or "
                          "use a cache_dir on a larger disk; nothing was downloaded.")

        # Files present now failed the checks above: replace them. Files absent now but present
        # once the per-file lock is held were completed by another process: keep those.
        stale = {self._folder.path(a.relative_path) for a in todo
                 if self._folder.path(a.relative_path).exists()}

        def job(a: FileAttributes) -> DownloadJob:
            path = self._folder.path(a.relative_path)
            return DownloadJob(self._src.object_url(ABC_BUCKET, a.relative_path), path,
                               None if skip_hash_check else a.known_hash, a.size,
                               force=force_download or path in stale)

        by_path = {self._folder.path(a.relative_path): a for a in todo}
        if len(todo) == 1:
            a = todo[0]
            j = job(a)
            download(j.url, j.path, known_hash=j.known_hash, size=j.size, force=j.force,
                     desc=a.file_name, progressbar=show)
            self._record([a], skip_hash_check)
        else:
            # Record finished files in batches (the record is one JSON file, rewritten each time),
            # and whatever is finished when a failure stops the others.
            done: list[FileAttributes] = []
            last = [time.monotonic()]

            def finished(_job: DownloadJob, path: Path) -> None:
                done.append(by_path[path])
                if len(done) >= RECORD_BATCH or time.monotonic() - last[0] > 1.0:
                    self._record(done, skip_hash_check)
                    done.clear()
                    last[0] = time.monotonic()

            try:
                download_many([job(a) for a in todo], max_workers=self.max_workers, desc=desc,
                              progressbar=show, on_done=finished)
            finally:
                self._record(done, skip_hash_check)
        return paths

    # -- files -----------------------------------------------------------------------------------
    def get_file_path(self, directory: str, file_name: str, force_download: bool = False,
                      skip_hash_check: bool = False, *, progressbar: bool | None = None) -> Path:
        """The local path of one file, downloading (and verifying) it if needed.

        Parameters
        ----------
        directory : str
            A directory of the loaded release, e.g. ``'WMB-10X'``.
        file_name : str
            A name from :meth:`list_metadata_files` / :meth:`list_data_files`, e.g. ``'gene'``
            or ``'WMB-10XMulti/log2'``.
        force_download : bool
            Download again even if the file is there (e.g. it was damaged).
        skip_hash_check : bool
            Do not compute the md5 (faster, less safe).
        progressbar : bool or None
            Show a progress bar while downloading; None: the cache's :attr:`progressbar`.

        Returns
        -------
        Path

        Raises
        ------
        KeyError
            Unknown or ambiguous names (the message lists the valid ones).
        DownloadError
            If the file could not be fetched.
        """
        attrs = self.manifest.get_file_attributes(directory, file_name)
        return self._fetch([attrs], force_download, skip_hash_check, progressbar=progressbar)[0]

    def get_data_path(self, directory: str, file_name: str, force_download: bool = False,
                      skip_hash_check: bool = False, *, progressbar: bool | None = None) -> Path:
        """The local path of a data file (h5ad, nii.gz), downloading it if needed.

        The arguments are those of :meth:`get_file_path`.
        """
        attrs = self.manifest.get_file_attributes(directory, file_name, DATA_KINDS)
        return self._fetch([attrs], force_download, skip_hash_check, progressbar=progressbar)[0]

    def get_metadata_path(self, directory: str, file_name: str, force_download: bool = False,
                          skip_hash_check: bool = False, *, progressbar: bool | None = None) -> Path:
        """The local path of a metadata CSV, downloading it if needed.

        The arguments are those of :meth:`get_file_path`.
        """
        attrs = self.manifest.get_file_attributes(directory, file_name, ("metadata",))
        return self._fetch([attrs], force_download, skip_hash_check, progressbar=progressbar)[0]

    def get_metadata_dataframe(self, directory: str, file_name: str, force_download: bool = False,
                               skip_hash_check: bool = False, **kwargs) -> pd.DataFrame:
        """A metadata CSV as a DataFrame; extra keyword arguments go to :func:`pandas.read_csv`."""
        path = self.get_metadata_path(directory, file_name, force_download, skip_hash_check)
        return pd.read_csv(path, **kwargs)

    def _get_directory(self, directory: str, kinds: tuple[str, ...], force_download: bool,
                       skip_hash_check: bool) -> list[Path]:
        files = self.manifest.files(directory, kinds)
        what = "metadata" if kinds == ("metadata",) else "data"
        if not files:
            self.manifest.list_files(directory, kinds)  # raises DataTypeNotInDirectory
        total = sum(a.size for a in files)
        if total > self.large_directory_bytes and not self.local:
            warnings.warn(f"{directory} {what} is {format_size(total)}. Continue only if you are sure "
                          "you have the space and the time.", LargeDataSizeWarning, stacklevel=3)
        files = sorted(files, key=lambda a: a.relative_path)
        return self._fetch(files, force_download, skip_hash_check,
                           desc=f"{directory} {what} ({len(files)} files)")

    def get_directory_data(self, directory: str, force_download: bool = False,
                           skip_hash_check: bool = False) -> list[Path]:
        """Download (if needed) every data file of *directory*; return their local paths."""
        return self._get_directory(directory, DATA_KINDS, force_download, skip_hash_check)

    def get_directory_metadata(self, directory: str, force_download: bool = False,
                               skip_hash_check: bool = False) -> list[Path]:
        """Download (if needed) every metadata file of *directory*; return their local paths."""
        return self._get_directory(directory, ("metadata",), force_download, skip_hash_check)
