"""A read-only, seekable file over HTTP ranges: one object version, its blocks kept on disk.

:class:`RangeFile` reads an object (an NWB session file, a gene index) without downloading it:
``h5py.File(RangeFile(...), "r")`` opens it, and each read asks the server for the blocks it
needs. The rules:

* **one version**: the URL names the object's version (``?versionId=`` from the manifest) and,
  from the first answer on, every request carries ``If-Match`` on the object's ``ETag``; an
  answer for another version is an error (:class:`~abc_helpers.transfer.ObjectChanged`), never
  a mix of bytes;
* **fetched once**: blocks (``block_size`` bytes, aligned) go into a folder of the cache
  (``blocks_dir``, one file per block, each written whole through
  :func:`~abc_helpers.cachefolder.atomic_path`) and into a small in-memory LRU, so reading the
  same bytes again, in this process or the next, sends no request;
* **few round trips**: the blocks one read needs that are missing are fetched as runs of
  adjacent blocks (at most ``max_request`` bytes per request), several runs at once; a read that
  continues where the last one ended fetches ahead in the background, as much as the
  sequential streak has read so far (so at most doubling what it needed), up to ``max_request``;
* **faults**: every request goes through :func:`abc_helpers.transfer.fetch_range`, the package's
  one retry policy (cut bodies resumed, 5xx and stalls retried, a ``Range`` ignored hung up on,
  4xx and an unresolvable host at once).

The blocks folder::

    <blocks_dir>/object.json      {"size", "etag", "block_size", "url"}: what the blocks belong to
    <blocks_dir>/<index>.block    bytes [index * block_size, (index + 1) * block_size) of the object
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from .cachefolder import atomic_path, atomic_write_text
from .transfer import fetch_range

LOGGER = logging.getLogger("abc_helpers")

__all__ = ["DEFAULT_BLOCK_SIZE", "RangeFile", "RangeStats"]

#: Bytes per block: the unit of caching (a read is served by whole blocks).
DEFAULT_BLOCK_SIZE = 256 << 10
#: Most bytes one request asks for (runs of missing blocks are split at this size).
DEFAULT_MAX_REQUEST = 8 << 20
#: Bytes of blocks kept in memory (least recently used dropped first).
DEFAULT_MEMORY = 64 << 20
#: Requests in flight at once when one read needs several runs of blocks.
DEFAULT_WORKERS = 4
_INFO = "object.json"


@dataclass
class RangeStats:
    """What a :class:`RangeFile` cost so far.

    Attributes
    ----------
    requests : int
        Range requests that returned data (retries inside one request not counted).
    bytes_fetched : int
        Bytes received from the server.
    reads : int
        Reads served (calls of ``readinto``).
    blocks_from_disk : int
        Blocks read from the blocks folder.
    blocks_from_memory : int
        Blocks served from the in-memory cache.
    """

    requests: int = 0
    bytes_fetched: int = 0
    reads: int = 0
    blocks_from_disk: int = 0
    blocks_from_memory: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Add *counts* (e.g. ``requests=1``) to the counters, thread-safely."""
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return {"requests": self.requests, "bytes_fetched": self.bytes_fetched, "reads": self.reads,
                "blocks_from_disk": self.blocks_from_disk, "blocks_from_memory": self.blocks_from_memory}


class RangeFile(io.RawIOBase):
    """A read-only binary file whose bytes come from HTTP range requests (see the module's text).

    Parameters
    ----------
    url : str
        The object's URL; put the version in it (``Source.object_url(..., version_id=...)``).
    blocks_dir : str, PathLike or None
        Where fetched blocks are kept (created on first write); None keeps them in memory only.
    what : str or None
        The file's name in messages (default: the last part of the URL).
    block_size : int
        Bytes per block.
    max_request : int
        Most bytes per request.
    memory : int
        Bytes of blocks kept in memory.
    workers : int
        Requests in flight at once for one read.
    read_only : bool
        Never write to *blocks_dir* (a read-only cache): blocks found there are used, new ones are
        kept in memory only.

    Raises
    ------
    DownloadError
        If the first block cannot be read (the object's size and ``ETag`` come with it).

    Examples
    --------
    Over the sample server (``python -m abc_helpers.sample serve``)::

        with RangeFile(url, blocks_dir=cache / "session.nwb.blocks") as fh, h5py.File(fh, "r") as f:
            units = f["units/id"][:]
    """

    def __init__(self, url: str, blocks_dir: str | os.PathLike | None = None, *,
                 what: str | None = None, block_size: int = DEFAULT_BLOCK_SIZE,
                 max_request: int = DEFAULT_MAX_REQUEST, memory: int = DEFAULT_MEMORY,
                 workers: int = DEFAULT_WORKERS, read_only: bool = False) -> None:
        super().__init__()
        if block_size < 1 or max_request < block_size:
            raise ValueError(f"RangeFile: block_size ({block_size}) must be at least 1 and "
                             f"max_request ({max_request}) at least block_size.")
        self.url = url
        self.what = what or url.split("?", 1)[0].rsplit("/", 1)[-1]
        self.block_size = block_size
        self.max_request = max_request
        self.workers = max(1, workers)
        self.read_only = read_only
        self.blocks_dir = Path(blocks_dir) if blocks_dir is not None else None
        self.stats = RangeStats()
        self._memory: OrderedDict[int, bytes] = OrderedDict()
        self._memory_blocks = max(1, memory // block_size)
        self._lock = threading.RLock()
        self._pos = 0
        self._last_end = -1
        self._streak = 0
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: dict[int, Future] = {}
        info = self._read_info()
        if info is None:
            first = fetch_range(url, 0, block_size, what=self.what)
            self.stats.add(requests=1, bytes_fetched=len(first.data))
            self.size, self.etag = first.size, first.etag
            if self.size < 0:
                raise OSError(f"'{self.what}': the server did not say the object's size "
                              f"(no total in Content-Range). URL: {url}")
            self._write_info()
            self._keep(0, first.data[:self._block_length(0)])
        else:
            self.size, self.etag = info["size"], info["etag"]

    # -- the blocks folder ---------------------------------------------------------------------
    def _read_info(self) -> dict | None:
        """``object.json`` of the blocks folder, if it describes blocks of this size; else None."""
        if self.blocks_dir is None:
            return None
        try:
            info = json.loads((self.blocks_dir / _INFO).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or info.get("block_size") != self.block_size \
                or not isinstance(info.get("size"), int):
            LOGGER.warning("Ignoring the blocks in '%s': they were kept with another block size "
                           "or their description is damaged.", self.blocks_dir)
            return None
        return info

    def _write_info(self) -> None:
        if self.blocks_dir is None or self.read_only:
            return
        atomic_write_text(self.blocks_dir / _INFO, json.dumps(
            {"size": self.size, "etag": self.etag, "block_size": self.block_size,
             "url": self.url.split("?", 1)[0]}))

    def _block_path(self, index: int) -> Path | None:
        return None if self.blocks_dir is None else self.blocks_dir / f"{index}.block"

    def _block_length(self, index: int) -> int:
        return max(0, min(self.block_size, self.size - index * self.block_size))

    @property
    def n_blocks(self) -> int:
        """How many blocks the object has."""
        return -(-self.size // self.block_size)

    def cached_blocks(self) -> int:
        """How many of the object's blocks are in the blocks folder."""
        if self.blocks_dir is None or not self.blocks_dir.is_dir():
            return 0
        return sum(1 for p in self.blocks_dir.glob("*.block") if p.stem.isdigit())

    def _keep(self, index: int, data: bytes) -> None:
        """Put a fetched block in memory and on disk."""
        self._remember(index, data)
        path = self._block_path(index)
        if path is None or self.read_only:
            return
        try:
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        except OSError as error:  # a full or read-only disk: keep reading from memory
            LOGGER.warning("Could not keep block %d of '%s' in '%s' (%s).", index, self.what,
                           self.blocks_dir, error)

    def _remember(self, index: int, data: bytes) -> None:
        with self._lock:
            self._memory[index] = data
            self._memory.move_to_end(index)
            while len(self._memory) > self._memory_blocks:
                self._memory.popitem(last=False)

    def _known(self, index: int) -> bytes | None:
        """A block from memory or disk, or None if it must be fetched."""
        with self._lock:
            data = self._memory.get(index)
            if data is not None:
                self._memory.move_to_end(index)
        if data is not None:
            self.stats.add(blocks_from_memory=1)
            return data
        path = self._block_path(index)
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if len(data) != self._block_length(index):
            return None  # not the block this object has there: fetch it again
        self.stats.add(blocks_from_disk=1)
        self._remember(index, data)
        return data

    # -- fetching ------------------------------------------------------------------------------
    def _runs(self, missing: Iterable[int]) -> list[tuple[int, int]]:
        """Missing block indices -> ``[(first, last + 1)]`` runs, each at most max_request bytes."""
        per_request = max(1, self.max_request // self.block_size)
        runs: list[tuple[int, int]] = []
        for index in sorted(missing):
            if runs and runs[-1][1] == index and index - runs[-1][0] < per_request:
                runs[-1] = (runs[-1][0], index + 1)
            else:
                runs.append((index, index + 1))
        return runs

    def _fetch_run(self, run: tuple[int, int]) -> dict[int, bytes]:
        first, stop = run
        start, end = first * self.block_size, min(self.size, stop * self.block_size)
        reply = fetch_range(self.url, start, end, if_match=self.etag, what=self.what)
        self.stats.add(requests=1, bytes_fetched=len(reply.data))
        blocks = {}
        for index in range(first, stop):
            offset = (index - first) * self.block_size
            blocks[index] = reply.data[offset:offset + self._block_length(index)]
            self._keep(index, blocks[index])
        return blocks

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="rangefile")
            return self._pool

    def _fetch(self, missing: list[int]) -> dict[int, bytes]:
        """Fetch *missing* blocks now (runs of them, several at once) and return them."""
        runs = self._runs(missing)
        out: dict[int, bytes] = {}
        if len(runs) == 1 or self.workers == 1:
            for run in runs:
                out.update(self._fetch_run(run))
            return out
        for blocks in self._executor().map(self._fetch_run, runs):
            out.update(blocks)
        return out

    def _fetch_ahead(self, first: int, stop: int) -> None:
        """Start fetching blocks ``first .. stop - 1`` in the background (those not kept or coming)."""
        with self._lock:
            wanted = [i for i in range(first, min(stop, self.n_blocks))
                      if i not in self._inflight and self._known_quietly(i) is None]
            if not wanted or len(set(self._inflight.values())) >= self.workers:
                return
            pool = self._executor()
            for run in self._runs(wanted):
                future = pool.submit(self._fetch_run, run)
                for index in range(*run):
                    self._inflight[index] = future
                future.add_done_callback(partial(self._landed, run))

    def _landed(self, run: tuple[int, int], _future: Future) -> None:
        with self._lock:
            for index in range(*run):
                self._inflight.pop(index, None)

    def blocks(self, first: int, stop: int) -> dict[int, bytes]:
        """Blocks ``first .. stop - 1``, fetching the missing ones (several requests at once).

        Parameters
        ----------
        first, stop : int
            Block indices, *stop* excluded.

        Returns
        -------
        dict
            ``{index: bytes}``.

        Raises
        ------
        DownloadError
            If a block could not be fetched (names the file, the URL and the cause).
        """
        found: dict[int, bytes] = {}
        missing = []
        coming: dict[int, Future] = {}
        for index in range(max(0, first), min(stop, self.n_blocks)):
            data = self._known(index)
            if data is not None:
                found[index] = data
                continue
            with self._lock:
                future = self._inflight.get(index)
            if future is not None:
                coming[index] = future
            else:
                missing.append(index)
        if missing:
            found.update(self._fetch(missing))
        for index, future in coming.items():
            found[index] = future.result()[index]  # a fetch ahead's error is raised here
        return found

    def prefetch(self, spans: Iterable[tuple[int, int]]) -> None:
        """Fetch the blocks of byte spans ``[(start, stop), ...]`` now, several at once.

        For a caller that knows what it will read (the datasets of a table), so that one round
        of parallel requests replaces one round trip per read.
        """
        wanted: set[int] = set()
        for start, stop in spans:
            if stop > start:
                wanted.update(range(start // self.block_size, (stop - 1) // self.block_size + 1))
        missing = [i for i in sorted(wanted) if i < self.n_blocks and self._known(i) is None]
        if missing:
            self._fetch(missing)

    def forget(self) -> None:
        """Drop every block kept, in memory and in the blocks folder (e.g. after a hash mismatch)."""
        with self._lock:
            self._memory.clear()
        if self.blocks_dir is not None and not self.read_only:
            for path in self.blocks_dir.glob("*.block"):
                path.unlink(missing_ok=True)

    def save(self, path: str | os.PathLike, known_hash: str | None = None) -> Path:
        """Write the whole object to *path*, fetching the blocks still missing; check its hash.

        Reading by ranges cannot tell a byte that went wrong on the way (S3 gives no checksum of a
        range); the whole object's hash can. On a mismatch every block kept is dropped and the
        object fetched once more; *path* appears (atomically) only with the right hash.

        Parameters
        ----------
        path : str or PathLike
            Where the object goes.
        known_hash : str or None
            ``"md5:<hex>"``, ``"blake2b:<hex>"``, ...; None writes without a check.

        Returns
        -------
        Path
            *path*.

        Raises
        ------
        DownloadError
            If the hash is still wrong after fetching the object again (names the file, the
            expected and the actual hash).
        """
        from .transfer import DownloadError, new_hasher, parse_hash

        algorithm, expected = parse_hash(known_hash) if known_hash else (None, None)
        digest = ""
        for _attempt in range(2):
            hasher = new_hasher(algorithm) if algorithm else None
            per_round = max(1, self.workers) * max(1, self.max_request // self.block_size)
            with atomic_path(path) as tmp, open(tmp, "wb") as out:
                for first in range(0, self.n_blocks, per_round):
                    found = self.blocks(first, first + per_round)
                    for index in range(first, min(first + per_round, self.n_blocks)):
                        out.write(found[index])
                        if hasher is not None:
                            hasher.update(found[index])
                digest = hasher.hexdigest() if hasher is not None else ""
                if expected is not None and digest != expected:
                    out.close()
                    tmp.unlink()  # atomic_path renames nothing
            if expected is None or digest == expected:
                return Path(path)
            LOGGER.warning("'%s': %s hash mismatch (expected %s, got %s): a byte went wrong on "
                           "the way; fetching it again.", self.what, algorithm, expected, digest)
            self.forget()
        raise DownloadError(f"'{self.what}': {algorithm} hash mismatch after fetching it twice: "
                            f"expected {expected} but got {digest}. URL: {self.url} The bytes were "
                            "not kept; check the data source (a mirror serving damaged files?).")

    # -- the file interface ------------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"RangeFile.seek: invalid whence {whence}.")
        if pos < 0:
            raise OSError(f"RangeFile.seek: negative position {pos} in '{self.what}'.")
        self._pos = pos
        return pos

    def readinto(self, buffer) -> int:
        """Read up to ``len(buffer)`` bytes at the current position into *buffer*."""
        if self.closed:
            raise ValueError(f"I/O operation on the closed RangeFile '{self.what}'.")
        view = memoryview(buffer).cast("B")
        start = self._pos
        stop = min(self.size, start + len(view))
        if stop <= start:
            return 0
        first, last = start // self.block_size, (stop - 1) // self.block_size
        ahead = 0
        if start == self._last_end:  # ahead: as much as the streak read so far, up to max_request
            self._streak += stop - start
            ahead = max(1, min(self._streak, self.max_request) // self.block_size)
        else:
            self._streak = stop - start
        wanted = self.blocks(first, last + 1)
        if ahead:
            self._fetch_ahead(last + 1, last + 1 + ahead)
        for index in range(first, last + 1):
            data = wanted[index]
            lo = max(start, index * self.block_size)
            hi = min(stop, index * self.block_size + len(data))
            offset = lo - index * self.block_size
            view[lo - start:hi - start] = data[offset:offset + hi - lo]
        self._pos = stop
        self._last_end = stop
        self.stats.add(reads=1)
        return stop - start

    def _known_quietly(self, index: int) -> bytes | None:
        """Is block *index* in memory or on disk (without counting it as served)?"""
        with self._lock:
            if index in self._memory:
                return self._memory[index]
        path = self._block_path(index)
        return b"" if path is not None and path.is_file() else None

    def read(self, size: int = -1) -> bytes:
        """Read *size* bytes (all that is left if negative) at the current position."""
        if size is None or size < 0:
            size = max(0, self.size - self._pos)
        buffer = bytearray(size)
        n = self.readinto(buffer)
        return bytes(buffer[:n])

    def close(self) -> None:
        """Close the file (the blocks on disk stay)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._inflight.clear()
            self._memory.clear()
        super().close()

    def __repr__(self) -> str:
        return (f"RangeFile('{self.what}', size={self.size}, block_size={self.block_size}, "
                f"fetched={self.stats.bytes_fetched} bytes in {self.stats.requests} requests)")
