"""One cache folder: confined paths, the download record, the last-used manifest, read-only mode.

Every folder this package keeps files in (an :class:`~abc_helpers.AbcProjectCache` or
:class:`~abc_helpers.VbnProjectCache` cache, the gene indexes beside the matrices, a mirror) has
the same bookkeeping, written here once::

    <root>/_downloaded_data.json      the download record: every verified file, its hash and size
    <root>/_manifest_last_used.txt    the manifest used last, across Python sessions
    <file>.part                       the bytes of an unfinished download (the next call resumes it)
    <file>.lock                       the inter-process lock of one file
    <file>.<tag>.blocks/              the blocks of a file read over HTTP ranges, not downloaded
                                      (:class:`abc_helpers.rangefile.RangeFile`; *tag*: its hash)
    .<file>.<pid>-<thread>.tmp<ext>   a file being written; renamed into place only when complete

:func:`is_bookkeeping` tells these names apart from data, so a mirror never serves them. Paths in
the record are relative to the folder, so the folder can be moved or mounted elsewhere.

The record is JSON::

    {"format": "abc_helpers.record/2",
     "files": {"metadata/WMB-10X/20231215/gene.csv": {"hash": "md5:<hex>", "size": 2816432}}}

``hash`` is None for a file fetched with ``skip_hash_check``. The reader also accepts the two older
forms (``{path: "<md5 hex>"}`` of the ABC cache and ``{path: "<blake2b hex>:<size>"}`` of the VBN
cache), so caches filled by earlier versions keep working, and it survives a damaged record (the
files are then checked again by hash).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import shutil
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

LOGGER = logging.getLogger("abc_helpers")

__all__ = [
    "LAST_USED_FILE",
    "RECORD_FILE",
    "RECORD_FORMAT",
    "CacheFolder",
    "FileRecord",
    "OutdatedManifestWarning",
    "ReadOnlyLocalCacheWarning",
    "atomic_path",
    "atomic_write_text",
    "blocks_path",
    "check_relative_path",
    "file_lock",
    "is_bookkeeping",
    "link_or_copy",
    "lock_path",
    "partial_path",
    "temporary_path",
]

#: The download record's file name, at the root of a cache folder.
RECORD_FILE = "_downloaded_data.json"
#: The name of the manifest used last, at the root of a cache folder.
LAST_USED_FILE = "_manifest_last_used.txt"
#: The record format this version writes.
RECORD_FORMAT = "abc_helpers.record/2"

_TEMPORARY = re.compile(r"^\..+\.\d+-\d+\.tmp(\.[\w.]+)?$")


class OutdatedManifestWarning(UserWarning):
    """A newer release (manifest) exists than the one being loaded."""


class ReadOnlyLocalCacheWarning(UserWarning):
    """The cache folder is read-only: nothing will be downloaded or recorded."""


# -- names -------------------------------------------------------------------------------------------
def temporary_path(path: str | os.PathLike, suffix: str = "") -> Path:
    """A hidden name beside *path*, unique to this process and thread, for writing before a rename.

    Parameters
    ----------
    path : str or PathLike
        The final path.
    suffix : str
        Appended after ``.tmp``: writers that choose a format by extension (SimpleITK, numpy)
        need the final extension, e.g. ``".nii.gz"``.

    Examples
    --------
    >>> name = temporary_path("/data/WMB-10X/gene.csv").name
    >>> name.startswith(".gene.csv.") and name.endswith(".tmp") and is_bookkeeping(name)
    True
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp{suffix}")


def partial_path(path: str | os.PathLike) -> Path:
    """Where the bytes of an unfinished download of *path* are kept (``<name>.part``)."""
    path = Path(path)
    return path.with_name(path.name + ".part")


def blocks_path(path: str | os.PathLike, tag: str) -> Path:
    """The folder of the blocks of *path* read over HTTP ranges (``<name>.<tag>.blocks``).

    Parameters
    ----------
    path : str or PathLike
        The file's path in the cache (where a download would put it).
    tag : str
        Names the object's content, e.g. the start of its hash: blocks of two versions never mix.

    Examples
    --------
    >>> blocks_path("/cache/session.nwb", "0123abcd").name
    'session.nwb.0123abcd.blocks'
    >>> is_bookkeeping("session.nwb.0123abcd.blocks")
    True
    """
    path = Path(path)
    return path.with_name(f"{path.name}.{tag}.blocks")


def lock_path(path: str | os.PathLike) -> Path:
    """The inter-process lock file of *path* (``<name>.lock``)."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def file_lock(path: str | os.PathLike) -> FileLock:
    """The inter-process lock of *path*: ``with file_lock(path): ...``."""
    return FileLock(str(lock_path(path)))


def is_bookkeeping(name: str) -> bool:
    """Is *name* (a file name, not a path) the cache's own rather than data?

    True for the download record, the last-used manifest, ``.part`` and ``.lock`` files, the
    ``.blocks`` folders of files read over HTTP ranges (:func:`blocks_path`) and temporary names
    from :func:`temporary_path`.

    Examples
    --------
    >>> [is_bookkeeping(n) for n in ("gene.csv", "gene.csv.part", "_downloaded_data.json")]
    [False, True, True]
    """
    return (name in (RECORD_FILE, LAST_USED_FILE) or name.endswith((".part", ".lock", ".blocks"))
            or _TEMPORARY.match(name) is not None)


# -- atomic writes -----------------------------------------------------------------------------------
@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Write to a temporary path and rename it to *path* only if the block succeeds.

    The temporary file sits beside *path* (same file system, so the rename is atomic); if the
    block raises, or writes nothing, it is deleted and *path* is left as it was.

    Parameters
    ----------
    path : str or PathLike
        The final path; its folder is created.
    suffix : str
        Extension to keep on the temporary name (see :func:`temporary_path`).

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "table.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("complete")
    >>> target.read_text()
    'complete'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path, suffix)
    try:
        yield tmp
        if tmp.exists():
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write *text* to *path* through a temporary sibling and an atomic rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make *dst* the same file as *src*: a hard link, or a copy where links are refused.

    The link (or copy) is made under a temporary name and renamed into place, so *dst* is never
    half-written; nothing happens if *dst* already is *src*.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.samefile(src):
        return
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)


def check_relative_path(relative_path: object, where: str) -> str:
    """Refuse a relative path that is not a plain path inside a bucket.

    Parameters
    ----------
    relative_path : object
        The path as a manifest gives it.
    where : str
        Names the entry in the error message (e.g. ``"WMB-10X/gene"``).

    Returns
    -------
    str
        *relative_path*, checked.

    Raises
    ------
    ValueError
        If it is empty, absolute, holds ``..``, a backslash or a drive letter.
    """
    if not isinstance(relative_path, str) or not relative_path:
        raise ValueError(f"Invalid manifest entry {where}: 'relative_path' must be a non-empty string.")
    normal = posixpath.normpath(relative_path)
    if (relative_path.startswith(("/", "\\")) or "\\" in relative_path or ":" in relative_path
            or normal.startswith("..") or normal != relative_path.rstrip("/")):
        raise ValueError(
            f"Invalid manifest entry {where}: relative_path '{relative_path}' escapes or is not a "
            "plain path inside the bucket. The manifest is refused; nothing was written."
        )
    return relative_path


# -- the record ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileRecord:
    """What the download record says of one file.

    Attributes
    ----------
    hash : str or None
        ``"md5:<hex>"`` or ``"blake2b:<hex>"`` (lower case); None if fetched without a check.
    size : int or None
        The size when it was verified (None in records written before sizes were kept).
    """

    hash: str | None
    size: int | None = None


def _old_entry(value: object) -> FileRecord | None:
    """Read one entry of the two record forms written before :data:`RECORD_FORMAT`."""
    if value is None:
        return FileRecord(None)
    if not isinstance(value, str):
        return None
    digest, sep, size = value.partition(":")
    if sep and size.isdigit():  # VbnProjectCache: "<blake2b hex>:<size>"
        return FileRecord(f"blake2b:{digest.lower()}", int(size))
    if re.fullmatch(r"[0-9a-fA-F]{32}", value):  # AbcProjectCache: "<md5 hex>"
        return FileRecord(f"md5:{value.lower()}")
    return None


def _new_entry(value: object) -> FileRecord | None:
    if not isinstance(value, dict):
        return None
    digest, size = value.get("hash"), value.get("size")
    if digest is not None and not isinstance(digest, str):
        return None
    if size is not None and not isinstance(size, int):
        return None
    return FileRecord(digest.lower() if digest else None, size)


def parse_record(data: object) -> dict[str, FileRecord]:
    """Read a download record (any of its forms) parsed from JSON; malformed entries are skipped.

    Examples
    --------
    >>> parse_record({"a.csv": "900150983CD24FB0D6963F7D28E17F72", "b.nwb": "ab12:42", "c": None})
    {'a.csv': FileRecord(hash='md5:900150983cd24fb0d6963f7d28e17f72', size=None), \
'b.nwb': FileRecord(hash='blake2b:ab12', size=42), 'c': FileRecord(hash=None, size=None)}
    """
    if not isinstance(data, dict):
        return {}
    if data.get("format") == RECORD_FORMAT:
        files, read = data.get("files"), _new_entry
        if not isinstance(files, dict):
            return {}
    else:
        files, read = data, _old_entry
    out = {}
    for rel, value in files.items():
        entry = read(value)
        if isinstance(rel, str) and entry is not None:
            out[rel] = entry
    return out


class CacheFolder:
    """A cache folder: where files go, what was verified, which manifest was used last.

    The project caches hold one each (by composition) and keep only what is their own: listing and
    parsing their manifests and mapping an entry to its key and hash.

    Parameters
    ----------
    root : str or PathLike
        The folder. A writable folder is created when first written to.
    read_only : bool
        Write nothing: no record, no last-used manifest, no downloads (a mounted bucket, a shared
        read-only copy).

    Examples
    --------
    >>> import tempfile
    >>> folder = CacheFolder(tempfile.mkdtemp())
    >>> path = folder.path("metadata/WMB-10X/20231215/gene.csv")
    >>> folder.path("../outside.csv")
    Traceback (most recent call last):
    ...
    ValueError: '../outside.csv' would be written outside the cache folder ... refused.
    """

    def __init__(self, root: str | os.PathLike, read_only: bool = False) -> None:
        self.root = Path(root).expanduser().resolve()
        self.read_only = read_only

    def __repr__(self) -> str:
        return f"CacheFolder('{self.root}', read_only={self.read_only})"

    # -- paths -----------------------------------------------------------------------------------
    def path(self, relative_path: str) -> Path:
        """The absolute path of *relative_path* in the folder.

        Raises
        ------
        ValueError
            If the path would fall outside the folder (``..``, absolute paths, links out).
        """
        path = (self.root / relative_path).resolve()
        if self.root not in path.parents:
            raise ValueError(f"'{relative_path}' would be written outside the cache folder "
                             f"'{self.root}': refused.")
        return path

    def relative(self, path: str | os.PathLike) -> str:
        """The record key (POSIX path relative to the folder) of a path inside the folder."""
        return Path(path).resolve().relative_to(self.root).as_posix()

    def ensure_exists(self) -> None:
        """Create the folder (writable caches) or check that it exists (read-only ones).

        Raises
        ------
        FileNotFoundError
            If a read-only folder does not exist.
        """
        if not self.read_only:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise FileNotFoundError(f"Local cache folder '{self.root}' does not exist: give a folder "
                                    "that a downloading cache has filled (or a mounted bucket).")

    # -- the download record -----------------------------------------------------------------------
    @property
    def record_path(self) -> Path:
        """The download record's path."""
        return self.root / RECORD_FILE

    def read_record(self) -> dict[str, FileRecord]:
        """Every recorded file: ``{relative path: FileRecord}``; empty if absent or damaged."""
        path = self.record_path
        try:
            text = path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as error:
            LOGGER.warning("Cannot read the download record %s (%s); files will be checked again.",
                           path, error)
            return {}
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            LOGGER.warning("The download record %s is damaged; files will be checked again.", path)
            return {}
        return parse_record(data)

    def record(self, files: Mapping[str, str | None]) -> None:
        """Record verified files: ``{relative path: "md5:<hex>" | "blake2b:<hex>" | None}``.

        Each file's size is taken from the disk now. Nothing happens in a read-only folder.
        """
        if self.read_only or not files:
            return
        sizes = {rel: (self.root / rel).stat().st_size for rel in files}  # paths made by path()
        with file_lock(self.record_path):
            record = self.read_record()
            for rel, digest in files.items():
                record[rel] = FileRecord(digest.lower() if digest else None, sizes[rel])
            data = {"format": RECORD_FORMAT,
                    "files": {rel: {"hash": e.hash, "size": e.size} for rel, e in sorted(record.items())}}
            atomic_write_text(self.record_path, json.dumps(data, indent=1))

    @staticmethod
    def matches(entry: FileRecord | None, path: Path, known_hash: str | None) -> bool:
        """Does *entry* vouch for the file at *path* having *known_hash* (and its recorded size)?

        *known_hash* None asks for a file recorded without a hash check.
        """
        if entry is None or not path.is_file():
            return False
        if entry.size is not None and entry.size != path.stat().st_size:
            return False
        wanted = known_hash.lower() if known_hash else None
        return entry.hash == wanted

    def find_recorded(self, known_hash: str, record: Mapping[str, FileRecord] | None = None) -> Path | None:
        """A recorded file with *known_hash* that is still whole on disk (to link instead of fetch)."""
        record = self.read_record() if record is None else record
        for rel, entry in record.items():
            if entry.hash != known_hash.lower():
                continue
            try:
                path = self.path(rel)
            except ValueError:
                continue
            if self.matches(entry, path, known_hash):
                return path
        return None

    # -- the manifest used last ---------------------------------------------------------------------
    def last_used(self) -> str | None:
        """The manifest name used last in this folder, or None."""
        try:
            name = (self.root / LAST_USED_FILE).read_text().strip()
        except OSError:
            return None
        return name or None

    def set_last_used(self, name: str) -> None:
        """Remember *name* as the manifest to open next time (nothing in a read-only folder)."""
        if not self.read_only:
            atomic_write_text(self.root / LAST_USED_FILE, name)
