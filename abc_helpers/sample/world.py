"""The on-disk layout of the sample world and the writer that generators use.

The sample world is a folder that the loopback server serves as it is::

    <root>/s3/<bucket>/<key>                          the current version of each object
    <root>/s3-versions/<bucket>/<version_id>.bin      older versions of an object
    <root>/s3-index/<bucket>.json                     every version of every key (md5, size, dates)
    <root>/allen-api/...                              files behind the Allen API routes
    <root>/WORLD.json                                 what was built, by which generator version

Generators never write these files directly: they call :class:`WorldWriter`, which keeps the
index (ETag, size, version ids, dates) consistent, so that the server can answer HEAD, LIST and
ranged GET requests without hashing anything at request time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

#: The fixed date every object gets unless its generator gives one (keeps builds byte-identical).
DEFAULT_LAST_MODIFIED = "2023-12-15T00:00:00.000Z"


@dataclass(frozen=True)
class ObjectVersion:
    """One stored version of an S3 object."""

    key: str
    version_id: str
    md5: str
    size: int
    last_modified: str
    path: str  # relative to the world root
    is_latest: bool = True

    @property
    def etag(self) -> str:
        """The quoted md5, as S3 sends it for single-part uploads."""
        return f'"{self.md5}"'


def make_version_id(bucket: str, key: str, md5: str, serial: int) -> str:
    """Return a deterministic 32-character S3-style version id for one object version."""
    digest = hashlib.sha256(f"{bucket}/{key}/{md5}/{serial}".encode()).digest()
    return base64.b64encode(digest).decode()[:32].replace("+", ".").replace("/", "_")


def md5_of_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Return the md5 hex digest of a file, read in 1 MiB chunks."""
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            md5.update(chunk)
    return md5.hexdigest()


class WorldWriter:
    """Write objects into a sample world folder and keep its S3 index.

    Parameters
    ----------
    root : Path
        The world folder (created if needed).

    Notes
    -----
    Putting a key that already exists turns its current bytes into an older version, like S3
    does on a versioned bucket. Call :meth:`close` (or use the writer as a context manager) to
    write the index files.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, dict[str, list[dict]]] = {}

    # -- objects -----------------------------------------------------------------------------
    def object_path(self, bucket: str, key: str) -> Path:
        """Return where the current version of *key* lives on disk."""
        return self.root / "s3" / bucket / key

    def put_bytes(
        self, bucket: str, key: str, data: bytes, last_modified: str = DEFAULT_LAST_MODIFIED
    ) -> ObjectVersion:
        """Store *data* as the new current version of *key* in *bucket*."""
        tmp = self.root / "tmp" / hashlib.sha1(f"{bucket}/{key}".encode()).hexdigest()
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        return self.put_file(bucket, key, tmp, last_modified=last_modified, move=True)

    def put_file(
        self,
        bucket: str,
        key: str,
        path: Path,
        last_modified: str = DEFAULT_LAST_MODIFIED,
        move: bool = True,
    ) -> ObjectVersion:
        """Store the file at *path* as the new current version of *key* (moved by default)."""
        versions = self._index.setdefault(bucket, {}).setdefault(key, [])
        target = self.object_path(bucket, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if versions:  # keep the previous current version as an older one
            previous = versions[-1]
            old = self.root / "s3-versions" / bucket / f"{previous['version_id']}.bin"
            old.parent.mkdir(parents=True, exist_ok=True)
            target.replace(old)
            previous["path"] = old.relative_to(self.root).as_posix()
            previous["is_latest"] = False
        if move:
            shutil.move(str(path), target)
        else:
            shutil.copyfile(path, target)
        md5 = md5_of_file(target)
        version = ObjectVersion(
            key=key,
            version_id=make_version_id(bucket, key, md5, len(versions)),
            md5=md5,
            size=target.stat().st_size,
            last_modified=last_modified,
            path=target.relative_to(self.root).as_posix(),
        )
        versions.append(asdict(version))
        return version

    def latest(self, bucket: str, key: str) -> ObjectVersion:
        """Return the current version of *key* in *bucket*."""
        return ObjectVersion(**self._index[bucket][key][-1])

    def versions(self, bucket: str, key: str) -> list[ObjectVersion]:
        """Return every version of *key*, oldest first."""
        return [ObjectVersion(**v) for v in self._index[bucket][key]]

    # -- closing -----------------------------------------------------------------------------
    def close(self) -> None:
        """Write the S3 index of every bucket and remove the scratch folder."""
        index_dir = self.root / "s3-index"
        index_dir.mkdir(parents=True, exist_ok=True)
        for bucket, keys in self._index.items():
            out = index_dir / f"{bucket}.json"
            out.write_text(json.dumps(dict(sorted(keys.items())), indent=1))
        shutil.rmtree(self.root / "tmp", ignore_errors=True)

    def __enter__(self) -> WorldWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_index(root: Path) -> dict[str, dict[str, list[ObjectVersion]]]:
    """Read the S3 index of a world folder: ``{bucket: {key: [versions, oldest first]}}``."""
    index: dict[str, dict[str, list[ObjectVersion]]] = {}
    for path in sorted((Path(root) / "s3-index").glob("*.json")):
        raw = json.loads(path.read_text())
        index[path.stem] = {k: [ObjectVersion(**v) for v in vs] for k, vs in raw.items()}
    return index
