"""The objects the sample server knows: buckets, keys and versions, from a world index or a mirror folder."""

from __future__ import annotations

import bisect
import email.utils
import hashlib
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from ...cachefolder import CacheFolder, is_bookkeeping
from ..world import load_index

__all__ = ["MIRROR_VERSIONS", "Bucket", "Catalog", "ServedVersion", "is_hidden", "walk_listing"]

#: Mirror mode: ``<DIR>/<bucket>/_versions/<version_id>/<key>`` holds the object versions that
#: manifests name (``?versionId=`` requests); see :mod:`abc_helpers.mirror`.
MIRROR_VERSIONS = "_versions"
_VERSION_ID_RE = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_LAST = "\U0010ffff"  # sorts after every character a key can hold


def _iso_to_http(iso: str) -> str:
    dt = datetime.strptime(iso.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")
    return email.utils.format_datetime(dt, usegmt=True)


def _mtime_to_iso(mtime: float) -> str:
    dt = datetime.fromtimestamp(mtime, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def is_hidden(name: str, at_bucket_root: bool) -> bool:
    """Is this file or folder name in a mirror bucket something other than an object?

    Hidden: the cache folder's own files (:func:`abc_helpers.cachefolder.is_bookkeeping`: the
    download record, the last-used manifest, ``*.part``, ``*.lock`` and temporary names), any
    name starting with ``.``, and, at the root of a bucket folder, any name starting with ``_``
    (such as the ``_versions/`` folder of :mod:`abc_helpers.mirror`).

    Parameters
    ----------
    name : str
        One file or folder name (not a path).
    at_bucket_root : bool
        True if the name sits directly in the bucket folder.

    Returns
    -------
    bool
        True if the server never serves or lists it.

    Examples
    --------
    >>> [is_hidden(n, False) for n in ("cells.csv", "cells.csv.part", ".DS_Store", "_x.csv")]
    [False, True, True, False]
    >>> is_hidden("_versions", at_bucket_root=True)
    True
    """
    if is_bookkeeping(name) or name.startswith("."):
        return True
    return at_bucket_root and name.startswith("_")


@dataclass
class ServedVersion:
    """One servable object version (mutable so that mirror entries can refresh).

    Parameters
    ----------
    key : str
        The object key.
    version_id : str
        The S3 version id (``'null'`` for a mirror file).
    size : int
        Size in bytes.
    last_modified : str
        ISO 8601 time, as S3 lists it (``'2023-12-15T00:00:00.000Z'``).
    path : Path
        Absolute path of the bytes.
    is_latest : bool
        True for the current version of the key.
    md5 : str or None
        Hex md5; None until :meth:`Catalog.etag` hashes the file (mirror mode).
    mtime_ns : int
        Mirror mode: the file's modification time, to notice changed files.
    """

    key: str
    version_id: str
    size: int
    last_modified: str
    path: Path
    is_latest: bool
    md5: str | None = None
    mtime_ns: int = 0

    @property
    def http_date(self) -> str:
        """The ``Last-Modified`` header value, e.g. ``'Fri, 15 Dec 2023 00:00:00 GMT'``."""
        return _iso_to_http(self.last_modified)


class Bucket:
    """Sorted keys of one bucket and their versions (oldest first).

    Parameters
    ----------
    name : str
        The bucket name.
    versions : dict of str to list of ServedVersion
        The versions of each key, oldest first.
    """

    def __init__(self, name: str, versions: dict[str, list[ServedVersion]]) -> None:
        self.name = name
        self.versions = versions
        self.keys = sorted(versions)


class Catalog:
    """Every bucket the server knows, from a world index or a mirror folder walk.

    Parameters
    ----------
    root : Path or None
        A built world folder (its ``s3-index/``); used when *mirror* is None.
    mirror : Path or None
        A mirror folder: ``<mirror>/<bucket>/<key>`` files, looked at again on each request.

    Raises
    ------
    FileNotFoundError
        If *mirror* is not a folder.
    """

    def __init__(self, root: Path | None, mirror: Path | None) -> None:
        self.root = root
        self.mirror = mirror
        #: Held while reading or changing :attr:`buckets` (listings see one consistent state).
        self.lock = threading.RLock()
        self._md5_cache: dict[tuple[str, int, int], str] = {}
        self._records: dict[Path, tuple[int, dict]] = {}
        self.buckets: dict[str, Bucket] = {}
        self.refresh()

    @property
    def api_root(self) -> Path | None:
        """The folder holding ``allen-api/`` (passed to ``allen_api.handle``), if any."""
        base = self.mirror if self.mirror is not None else self.root
        if base is not None and (base / "allen-api").is_dir():
            return base
        return None

    def refresh(self) -> None:
        """Re-read the world index, or walk the mirror folder again."""
        if self.mirror is not None:
            buckets = self._walk_mirror(self.mirror)
        else:
            root = self.root
            if root is None:
                raise ValueError("Catalog() needs a built world folder (root=) or a mirror folder "
                                 "(mirror=); both are None.")
            buckets = {}
            for bucket, keys in load_index(root).items():
                versions = {}
                for key, vs in keys.items():
                    versions[key] = [
                        ServedVersion(key=v.key, version_id=v.version_id, size=v.size,
                                      last_modified=v.last_modified, path=root / v.path,
                                      is_latest=(i == len(vs) - 1), md5=v.md5)
                        for i, v in enumerate(vs)
                    ]
                buckets[bucket] = Bucket(bucket, versions)
        with self.lock:
            self.buckets = buckets

    # -- mirror mode ----------------------------------------------------------------------
    @staticmethod
    def _mirror_version(key: str, path: Path, st: os.stat_result) -> ServedVersion:
        return ServedVersion(key=key, version_id="null", size=st.st_size,
                             last_modified=_mtime_to_iso(st.st_mtime), path=path, is_latest=True,
                             md5=None, mtime_ns=st.st_mtime_ns)

    def _walk_mirror(self, top: Path) -> dict[str, Bucket]:
        buckets = {}
        if not top.is_dir():
            raise FileNotFoundError(f"Mirror folder '{top}' does not exist: pass the folder that "
                                    "holds one subfolder per bucket.")
        for entry in sorted(os.scandir(top), key=lambda e: e.name):
            if not entry.is_dir() or entry.name == "allen-api" or not _BUCKET_RE.match(entry.name):
                continue
            base = Path(entry.path)
            versions: dict[str, list[ServedVersion]] = {}
            for dirpath, dirnames, filenames in os.walk(base):
                at_root = dirpath == entry.path
                dirnames[:] = [d for d in dirnames if not is_hidden(d, at_root)]
                for name in filenames:
                    if is_hidden(name, at_root):
                        continue
                    path = Path(dirpath, name)
                    try:
                        st = path.stat()
                    except OSError:
                        continue
                    key = path.relative_to(base).as_posix()
                    versions[key] = [self._mirror_version(key, path, st)]
            buckets[entry.name] = Bucket(entry.name, versions)
        return buckets

    def _mirror_lookup(self, bucket: Bucket, key: str) -> list[ServedVersion] | None:
        """Find (or re-check) a mirror file at request time; files may come and go."""
        if self.mirror is None:
            raise ValueError("Catalog._mirror_lookup() looks in a mirror folder; this catalog "
                             "serves a world index (mirror=None).")
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts) or is_hidden(parts[0], True) \
                or any(is_hidden(p, False) for p in parts):
            return None
        path = self.mirror / bucket.name / key
        try:
            st = path.stat()
        except OSError:
            st = None
        with self.lock:
            versions = bucket.versions.get(key)
            if st is None or not path.is_file():
                if versions is not None:
                    del bucket.versions[key]
                    bucket.keys.remove(key)
                return None
            if versions is None:
                versions = [self._mirror_version(key, path, st)]
                bucket.versions[key] = versions
                bisect.insort(bucket.keys, key)
            elif versions[0].size != st.st_size or versions[0].mtime_ns != st.st_mtime_ns:
                versions[0] = self._mirror_version(key, path, st)
            return versions

    def mirror_version(self, bucket: Bucket, key: str,
                       version_id: str) -> ServedVersion | Literal[False] | None:
        """A versioned request in mirror mode: the ``_versions/<id>/<key>`` file if there is one.

        Parameters
        ----------
        bucket : Bucket
            The bucket asked for.
        key : str
            The object key.
        version_id : str
            The ``versionId`` of the request.

        Returns
        -------
        ServedVersion, None or False
            The version; None if the bucket keeps versions but not this one; False if the
            bucket has no ``_versions/`` folder (a plain mirror: one version per key, so the
            current file answers and the client's hash check catches a mismatch).

        Raises
        ------
        ValueError
            If this catalog serves a world index, not a mirror folder.
        """
        if self.mirror is None:
            raise ValueError("Catalog.mirror_version() answers versioned requests of a mirror "
                             "folder; this catalog serves a world index (mirror=None).")
        versions_dir = self.mirror / bucket.name / MIRROR_VERSIONS
        if not versions_dir.is_dir():
            return False
        if version_id in (".", "..") or not _VERSION_ID_RE.match(version_id):
            return None
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts):
            return None
        path = versions_dir / version_id / key
        try:
            st = path.stat()
        except OSError:
            return None
        if not path.is_file():
            return None
        version = self._mirror_version(key, path, st)
        version.version_id = version_id
        version.is_latest = False
        return version

    # -- lookups --------------------------------------------------------------------------
    def lookup(self, bucket: Bucket, key: str) -> list[ServedVersion] | None:
        """Return the versions of *key* (oldest first), or None if there is no such key.

        Parameters
        ----------
        bucket : Bucket
            The bucket asked for.
        key : str
            The object key.

        Returns
        -------
        list of ServedVersion or None
            In mirror mode the file is looked at again, so files may come and go.
        """
        if self.mirror is not None:
            return self._mirror_lookup(bucket, key)
        return bucket.versions.get(key)

    def _recorded_md5(self, version: ServedVersion) -> str | None:
        """The md5 a mirror's cache-folder record gives for *version* (same size), if any.

        ``fill-mirror`` fills each bucket folder through a cache that records the md5 of every
        file it verified (and of every gene index it built), so large files need not be read
        again at their first request.
        """
        if self.mirror is None or version.path is None:
            return None
        try:
            rel = Path(version.path).relative_to(self.mirror)
        except ValueError:
            return None
        if len(rel.parts) < 2:
            return None
        folder = CacheFolder(self.mirror / rel.parts[0], read_only=True)
        try:
            stamp = folder.record_path.stat().st_mtime_ns
        except OSError:
            return None
        with self.lock:
            cached = self._records.get(folder.root)
            if cached is None or cached[0] != stamp:
                cached = self._records[folder.root] = (stamp, folder.read_record())
        entry = cached[1].get(Path(*rel.parts[1:]).as_posix())
        digest = entry.hash if entry is not None and entry.size == version.size else None
        if digest is None or not digest.startswith("md5:"):
            return None
        return digest[4:]

    def etag(self, version: ServedVersion) -> str:
        """The quoted md5 of *version* (from the mirror's record, or hashed once, in mirror mode).

        Parameters
        ----------
        version : ServedVersion
            The version to describe.

        Returns
        -------
        str
            ``'"<hex md5>"'``, as S3 sends it in the ``ETag`` header.

        Raises
        ------
        OSError
            If a mirror file cannot be read.
        """
        if version.md5 is None:
            cache_key = (str(version.path), version.size, version.mtime_ns)
            md5 = self._md5_cache.get(cache_key) or self._recorded_md5(version)
            if md5 is None:
                digest = hashlib.md5(usedforsecurity=False)
                with open(version.path, "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        digest.update(chunk)
                md5 = self._md5_cache[cache_key] = digest.hexdigest()
            version.md5 = md5
        return f'"{version.md5}"'


# -- listings --------------------------------------------------------------------------------
def walk_listing(bucket: Bucket, prefix: str, delimiter: str, after: str,
                 skip_prefixes_upto: str) -> Iterator[tuple[str, str]]:
    """Yield the entries of a bucket listing in S3 order, starting after a marker.

    Parameters
    ----------
    bucket : Bucket
        The bucket to list; hold :attr:`Catalog.lock` while iterating.
    prefix : str
        Only keys starting with this.
    delimiter : str
        Group keys by their part up to this after the prefix (``''``: no grouping).
    after : str
        Only keys sorting after this (``''``: from the start).
    skip_prefixes_upto : str
        Leave out common prefixes up to this one (those of the previous page).

    Yields
    ------
    tuple of (str, str)
        ``('key', key)`` or ``('prefix', common_prefix)``.

    Examples
    --------
    >>> b = Bucket("b", {"a/1": [], "a/2": [], "c": []})
    >>> list(walk_listing(b, "", "/", "", ""))
    [('prefix', 'a/'), ('key', 'c')]
    """
    keys = bucket.keys
    i = bisect.bisect_right(keys, after) if after else 0
    i = max(i, bisect.bisect_left(keys, prefix))
    n = len(keys)
    while i < n:
        key = keys[i]
        if not key.startswith(prefix):
            return
        if delimiter:
            d = key.find(delimiter, len(prefix))
            if d >= 0:
                common = key[: d + len(delimiter)]
                if common > skip_prefixes_upto:
                    yield "prefix", common
                i = bisect.bisect_left(keys, common + _LAST, i + 1)
                continue
        yield "key", key
        i += 1
