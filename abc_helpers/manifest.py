"""The ABC Atlas release manifest: parse and check it, list directories and files, sizes, compare."""

from __future__ import annotations

import difflib
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .cachefolder import check_relative_path

#: The kinds of files a directory may hold, as the manifest names them.
KINDS = ("metadata", "expression_matrices", "image_volumes", "mapmycells")
#: Kinds that ``list_data_files`` and ``get_directory_data`` cover (everything but metadata).
DATA_KINDS = ("expression_matrices", "image_volumes", "mapmycells")
_FILE_KEYS = ("version", "relative_path", "url", "size", "file_hash")


class ManifestKeyError(KeyError):
    """A directory or file name that the release does not have (or that is ambiguous)."""

    def __str__(self) -> str:  # KeyError repr-quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class DataTypeNotInDirectory(ManifestKeyError):
    """The directory holds no files of the kind asked for."""


@dataclass(frozen=True)
class FileAttributes:
    """One file of a release, as the manifest describes it.

    Attributes
    ----------
    directory : str
        The manifest directory, e.g. ``'WMB-10X'``.
    name : str
        The name to ask for it by, e.g. ``'gene'`` or ``'WMB-10XMulti/log2'``.
    kind : str
        ``'metadata'``, ``'expression_matrices'``, ``'image_volumes'`` or ``'mapmycells'``.
    file_type : str
        The extension key: ``'csv'``, ``'h5ad'``, ``'nii.gz'``, ...
    version, relative_path, url, size, file_hash
        As in the manifest (``file_hash`` is an md5 hex digest).
    """

    directory: str
    name: str
    kind: str
    file_type: str
    version: str
    relative_path: str
    url: str
    size: int
    file_hash: str

    @property
    def known_hash(self) -> str:
        """The hash in ``"md5:<hex>"`` form."""
        return f"md5:{self.file_hash}"

    @property
    def file_name(self) -> str:
        """The file's base name, e.g. ``'gene.csv'``."""
        return posixpath.basename(self.relative_path)


def format_size(nbytes: float) -> str:
    """Format a byte count exactly as abc_atlas_access prints a directory size.

    Like its ``Manifest._get_directory_size``: gigabytes (1024**3 bytes), or megabytes below one
    gigabyte, rounded to two decimals by ``round`` (so trailing zeros are dropped: ``'1.5 MB'``).
    Every size this package shows uses it.

    Examples
    --------
    >>> format_size(111838076296)
    '104.16 GB'
    >>> format_size(4875000)
    '4.65 MB'
    >>> format_size(221010)  # 215.83 KiB
    '0.21 MB'
    >>> format_size(1.5 * 1024**2)
    '1.5 MB'
    """
    total = nbytes / 1024**3
    unit = "GB"
    if total < 1:
        total *= 1024
        unit = "MB"
    return f"{round(total, 2)} {unit}"


def suggest(name: str, choices: list[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest of *choices*, or an empty string."""
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[name.lower()]] if name.lower() in lowered else []
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class Manifest:
    """A parsed and checked ABC Atlas release manifest.

    Parameters
    ----------
    data : dict
        The manifest JSON (``version``, ``resource_uri``, ``directory_listing``, ``file_listing``).
    name : str or None
        Its name, e.g. ``'releases/20231215/manifest.json'`` (used in messages).

    Raises
    ------
    ValueError
        If a key is missing or a ``relative_path`` would escape the cache folder.
    """

    def __init__(self, data: dict, name: str | None = None) -> None:
        if not isinstance(data, dict):
            raise ValueError(f"Manifest '{name or '?'}' is not a JSON object: it is not an ABC Atlas "
                             "release manifest, or it is damaged. Download it again.")
        self.name = name or f"releases/{data.get('version', '?')}/manifest.json"
        for key in ("version", "resource_uri", "directory_listing", "file_listing"):
            if key not in data:
                raise ValueError(f"Manifest '{self.name}' is missing the key '{key}': it is not an ABC "
                                 "Atlas release manifest, or it is damaged. Download it again.")
        self.data = data
        self._files: dict[str, list[FileAttributes]] = {}
        for directory, kinds in data["file_listing"].items():
            self._files[directory] = list(self._parse_directory(directory, kinds))
        for directory, entry in data["directory_listing"].items():
            for kind, info in entry.get("directories", {}).items():
                check_relative_path(info.get("relative_path"), f"'{directory}/{kind}' of {self.name}")

    @classmethod
    def from_file(cls, path: str | Path, name: str | None = None) -> Manifest:
        """Read a manifest JSON file, refusing one that is not valid JSON with a clear error."""
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"Manifest '{name or path}' is not valid JSON ({error}). Delete "
                             f"'{path}' and load the manifest again to download a fresh copy.") from None
        return cls(data, name=name)

    def _parse_directory(self, directory: str, kinds: dict) -> Iterator[FileAttributes]:
        for kind, entries in kinds.items():
            for name, entry in entries.items():
                if "files" in entry:
                    yield from self._parse_files(directory, name, kind, entry["files"])
                else:  # h5ad pairs: {"log2": {"files": ...}, "raw": {"files": ...}}
                    for sub, sub_entry in entry.items():
                        yield from self._parse_files(directory, f"{name}/{sub}", kind, sub_entry["files"])

    def _parse_files(self, directory: str, name: str, kind: str, files: dict) -> Iterator[FileAttributes]:
        for file_type, info in files.items():
            where = f"'{directory}: {name}' of {self.name}"
            missing = [k for k in _FILE_KEYS if k not in info]
            if missing:
                raise ValueError(f"Invalid manifest entry {where} in '{self.name}': missing {missing}.")
            yield FileAttributes(
                directory=directory, name=name, kind=kind, file_type=file_type,
                version=str(info["version"]),
                relative_path=check_relative_path(info["relative_path"], where),
                url=info["url"], size=int(info["size"]), file_hash=str(info["file_hash"]).lower(),
            )

    # -- properties ------------------------------------------------------------------------
    @property
    def version(self) -> str:
        """The release, e.g. ``'20231215'``."""
        return str(self.data["version"])

    @property
    def resource_uri(self) -> str:
        """The bucket, e.g. ``'s3://allen-brain-cell-atlas/'``."""
        return self.data["resource_uri"]

    @property
    def list_directories(self) -> list[str]:
        """The directories of the release, sorted."""
        return sorted(self.data["directory_listing"])

    # -- lookups -----------------------------------------------------------------------------
    def _directory(self, directory: str) -> list[FileAttributes]:
        if directory not in self._files and directory not in self.data["directory_listing"]:
            msg = (f"'{directory}' is not a directory of release {self.version}."
                   f"{suggest(directory, self.list_directories)} Valid directories: {self.list_directories}")
            raise ManifestKeyError(msg)
        return self._files.get(directory, [])

    def files(self, directory: str | None = None, kinds: tuple[str, ...] = KINDS) -> list[FileAttributes]:
        """Every file (of one directory, of some kinds), in manifest order."""
        dirs = [directory] if directory is not None else sorted(self._files)
        return [f for d in dirs for f in self._directory(d) if f.kind in kinds]

    def list_files(self, directory: str, kinds: tuple[str, ...] = KINDS) -> list[str]:
        """The names of the files of *directory* of the given *kinds*, sorted.

        Raises
        ------
        DataTypeNotInDirectory
            If the directory holds none of those kinds.
        """
        names = sorted(f.name for f in self.files(directory, kinds))
        if not names:
            what = "metadata" if kinds == ("metadata",) else "data" if kinds == DATA_KINDS else "/".join(kinds)
            present = sorted({f.kind for f in self._directory(directory)})
            raise DataTypeNotInDirectory(f"No {what} files found in directory {directory} "
                                         f"(release {self.version}); it holds {present}.")
        return names

    def get_file_attributes(
        self, directory: str, file_name: str, kinds: tuple[str, ...] = KINDS
    ) -> FileAttributes:
        """Find one file by name (``'gene'``, ``'WMB-10XMulti/log2'``).

        Raises
        ------
        KeyError
            If the name is ambiguous (the message lists the valid names) or unknown (with the
            closest names).
        """
        candidates = self.files(directory, kinds)
        exact = [f for f in candidates if f.name == file_name]
        if len(exact) == 1:
            return exact[0]
        if len(exact) > 1:  # same name in two kinds (rare): ask for the file type
            choices = [f"{f.name} ({f.kind}/{f.file_type})" for f in exact]
            raise ManifestKeyError(f"'{file_name}' is ambiguous in {directory}: {choices}.")
        nested = sorted(f.name for f in candidates if f.name.startswith(file_name + "/"))
        if nested:
            raise ManifestKeyError(f"'{file_name}' is ambiguous: use one of {', '.join(repr(n) for n in nested)}")
        names = sorted(f.name for f in candidates)
        raise ManifestKeyError(f"File '{file_name}' not found in directory {directory} (release "
                       f"{self.version}).{suggest(file_name, names)} Valid names: {names}")

    def directory_size(self, directory: str, kinds: tuple[str, ...] = KINDS) -> int:
        """Total bytes of the files of *directory* of the given *kinds*."""
        return sum(f.size for f in self.files(directory, kinds))

    def directory_versions(self) -> dict[tuple[str, str], str]:
        """``{(directory, kind): version}`` from the directory listing."""
        return {(d, k): str(info["version"])
                for d, entry in self.data["directory_listing"].items()
                for k, info in entry.get("directories", {}).items()}

    def sizes_table(self) -> pd.DataFrame:
        """One row per directory and kind: version, number of files, bytes and a readable size."""
        rows = []
        versions = self.directory_versions()
        for directory in self.list_directories:
            for kind in KINDS:
                files = self.files(directory, (kind,)) if directory in self._files else []
                if files:
                    nbytes = sum(f.size for f in files)
                    rows.append({"directory": directory, "kind": kind,
                                 "version": versions.get((directory, kind), ""),
                                 "files": len(files), "bytes": nbytes, "size": format_size(nbytes)})
        return pd.DataFrame(rows)


@dataclass
class ManifestComparison:
    """What changed from an older release manifest to a newer one.

    Attributes
    ----------
    older, newer : str
        The two manifest names.
    directories_added, directories_removed : list of str
    directory_versions_changed : list of (directory, kind, old_version, new_version)
    files_added, files_removed : list of str
        ``'<directory>: <file name>'``.
    files_changed : list of str
        Files whose content changed (new hash), with the version they moved between.
    """

    older: str
    newer: str
    directories_added: list[str] = field(default_factory=list)
    directories_removed: list[str] = field(default_factory=list)
    directory_versions_changed: list[tuple[str, str, str, str]] = field(default_factory=list)
    files_added: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)
    files_changed: list[str] = field(default_factory=list)
    _rows: list[dict] = field(default_factory=list, repr=False)

    @property
    def is_equivalent(self) -> bool:
        """True if nothing changed."""
        return not (self.directories_added or self.directories_removed or self.files_added
                    or self.files_removed or self.files_changed or self.directory_versions_changed)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per changed file: directory, name, change, old and new version and size."""
        return pd.DataFrame(self._rows, columns=["directory", "name", "change", "old_version",
                                                 "new_version", "old_size", "new_size"])

    def as_dict(self) -> dict:
        """The comparison as plain lists, grouped like the Allen tool's result."""
        return {
            "directory_changes": {"new_dirs": self.directories_added,
                                  "removed_dirs": self.directories_removed,
                                  "changed_versions": self.directory_versions_changed},
            "file_changes": {"new_files": self.files_added, "removed_files": self.files_removed,
                             "changed_files": self.files_changed},
        }

    def __str__(self) -> str:
        if self.is_equivalent:
            return f"{self.older} and {self.newer} are equivalent."
        lines = [f"Changes going from {self.older} to {self.newer}:"]
        for title, items in (("directories added", self.directories_added),
                             ("directories removed", self.directories_removed),
                             ("files added", self.files_added),
                             ("files removed", self.files_removed),
                             ("files changed", self.files_changed)):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {item}" for item in items)
        if self.directory_versions_changed:
            lines.append(f"  directory versions changed ({len(self.directory_versions_changed)}):")
            lines.extend(f"    {d} {k}: {a} -> {b}" for d, k, a, b in self.directory_versions_changed)
        return "\n".join(lines)

    def _repr_pretty_(self, printer, _cycle) -> None:  # IPython display
        printer.text(str(self))


def compare_manifests(newer: Manifest, older: Manifest) -> ManifestComparison:
    """Compare two release manifests: directories and files added, removed and changed.

    Parameters
    ----------
    newer, older : Manifest
        The two releases (the order matters: changes go from *older* to *newer*).

    Returns
    -------
    ManifestComparison

    Raises
    ------
    ValueError
        If *older* is a later release than *newer*.
    """
    if older.version > newer.version:
        raise ValueError(f"The manifest {older.name} is newer than {newer.name}: pass the newer "
                         "release first, e.g. compare_manifests(newer, older).")
    result = ManifestComparison(older=older.name, newer=newer.name)
    old_dirs, new_dirs = set(older.list_directories), set(newer.list_directories)
    result.directories_added = sorted(new_dirs - old_dirs)
    result.directories_removed = sorted(old_dirs - new_dirs)
    old_versions, new_versions = older.directory_versions(), newer.directory_versions()
    result.directory_versions_changed = sorted(
        (d, k, old_versions[(d, k)], v) for (d, k), v in new_versions.items()
        if (d, k) in old_versions and old_versions[(d, k)] != v
    )
    old_files = {(f.directory, f.name, f.file_type): f for f in older.files()}
    new_files = {(f.directory, f.name, f.file_type): f for f in newer.files()}
    for key in sorted(new_files.keys() | old_files.keys()):
        a, b = old_files.get(key), new_files.get(key)
        label = f"{key[0]}: {key[1]}"
        if a is None:
            change = "added"
            result.files_added.append(label)
        elif b is None:
            change = "removed"
            result.files_removed.append(label)
        elif a.file_hash != b.file_hash or a.size != b.size:
            change = "changed"
            result.files_changed.append(f"{label} ({a.version} -> {b.version})")
        else:
            continue
        result._rows.append({"directory": key[0], "name": key[1], "change": change,
                             "old_version": a.version if a else None,
                             "new_version": b.version if b else None,
                             "old_size": a.size if a else None, "new_size": b.size if b else None})
    return result
