"""Streamed VBN sessions: a session's NWB file opened over HTTP ranges instead of downloaded.

:meth:`VbnProjectCache.get_ecephys_session(..., stream=True) <abc_helpers.VbnProjectCache.get_ecephys_session>`
comes here: the file is read through a :class:`~abc_helpers.rangefile.RangeFile` pinned to the
manifest's version, its blocks kept beside where the download would go
(``ecephys_session_<id>.nwb.<hash>.blocks/``). When every block is kept, the file is written out
whole (checked against the manifest's blake2b) and read locally from then on.

:func:`map_sessions` calls a function on many sessions at once (threads by default; any
``concurrent.futures`` executor, processes or Dask's ``Client.get_executor()``), each session
streamed, and reports the bytes each one cost.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .cachefolder import blocks_path
from .neuropixels_session import VbnEcephysSession
from .progress import ProgressBar
from .rangefile import RangeFile

if TYPE_CHECKING:
    from .neuropixels import VbnProjectCache

LOGGER = logging.getLogger("abc_helpers")

__all__ = ["SESSION_BLOCK_SIZE", "SessionFile", "SessionResults", "map_sessions", "open_session", "session_task"]

#: Block size for session files: the unit of each range request and of the cache.
SESSION_BLOCK_SIZE = 256 << 10


@dataclass(frozen=True)
class SessionFile:
    """Where the NWB file of a session is (:meth:`VbnProjectCache.get_ecephys_session_file`).

    Attributes
    ----------
    ecephys_session_id : int
        The session.
    url : str
        The file's URL pinned to the manifest's version (``?versionId=``); empty if ``local``.
    path : Path
        Where the file is, or would be once downloaded, in the cache folder.
    known_hash : str
        ``"blake2b:<hex>"`` from the manifest.
    local : bool
        True if the file is at *path*, whole and verified.
    """

    ecephys_session_id: int
    url: str
    path: Path
    known_hash: str
    local: bool


def open_session(file: SessionFile, *, probe_lfp: dict[str, tuple[Any, float]] | None = None,
                 block_size: int = SESSION_BLOCK_SIZE) -> tuple[VbnEcephysSession, str | None]:
    """Open a session file: locally if it is here, else over HTTP ranges.

    Parameters
    ----------
    file : SessionFile
        From :meth:`VbnProjectCache.get_ecephys_session_file`.
    probe_lfp : dict or None
        The probes' LFP files, as :class:`VbnEcephysSession` takes them (None: read from the file).
    block_size : int
        Bytes per block.

    Returns
    -------
    tuple of (VbnEcephysSession, str or None)
        The session, and the file's hash if it was just written out whole at ``file.path``
        (every block was kept): the caller records it in the cache folder.
    """
    if file.local:
        return VbnEcephysSession(file.path, probe_lfp=probe_lfp), None
    tag = file.known_hash.partition(":")[2][:16]
    blocks = blocks_path(file.path, tag)
    stream = RangeFile(file.url, blocks, what=file.path.name, block_size=block_size)
    try:
        if stream.cached_blocks() >= stream.n_blocks:  # all here: a local file from now on
            stream.save(file.path, file.known_hash)
            stream.close()
            shutil.rmtree(blocks, ignore_errors=True)
            LOGGER.info("Every block of '%s' was kept: it is now a local file.", file.path.name)
            return VbnEcephysSession(file.path, probe_lfp=probe_lfp), file.known_hash
        return VbnEcephysSession(file.path, probe_lfp=probe_lfp, stream=stream), None
    except BaseException:
        stream.close()
        raise


@dataclass(frozen=True)
class SessionOutcome:
    """What :func:`session_task` did for one session."""

    ecephys_session_id: int
    value: Any
    file_bytes: int
    bytes_fetched: int
    requests: int
    seconds: float
    streamed: bool
    saved_hash: str | None


def session_task(file: SessionFile, function: Callable[[VbnEcephysSession], Any]) -> SessionOutcome:
    """Open one session, call *function* on it, close it: the unit of work of an executor.

    A module-level function of picklable arguments, so process pools and Dask can run it; the
    worker must see the cache folder (the blocks are shared through it).
    """
    started = time.perf_counter()
    session, saved = open_session(file)
    with session:
        value = function(session)
        stats = session.stream.stats if session.stream is not None else None
        size = session.stream.size if session.stream is not None else session.path.stat().st_size
    return SessionOutcome(file.ecephys_session_id, value, size,
                          stats.bytes_fetched if stats else 0, stats.requests if stats else 0,
                          time.perf_counter() - started, session.stream is not None, saved)


class SessionResults(dict):
    """``{ecephys_session_id: value}`` from :func:`map_sessions`, with what each session cost.

    Attributes
    ----------
    report : pandas.DataFrame
        One row per session (index ``ecephys_session_id``): ``file_bytes``, ``bytes_fetched``,
        ``requests``, ``seconds`` (in the worker), ``streamed``.
    """

    report: pd.DataFrame

    @property
    def bytes_fetched(self) -> int:
        """Bytes fetched over the network for all the sessions."""
        return int(self.report["bytes_fetched"].sum())

    @property
    def file_bytes(self) -> int:
        """The sessions' files' total size (what downloading them would cost)."""
        return int(self.report["file_bytes"].sum())


def map_sessions(cache: VbnProjectCache, function: Callable[[VbnEcephysSession], Any],
                 ecephys_session_ids: Iterable[int], *, stream: bool = True,
                 executor: Executor | None = None, max_workers: int = 8,
                 progressbar: bool | None = None) -> SessionResults:
    """Call ``function(session)`` on many sessions, each streamed, several at once.

    Parameters
    ----------
    cache : VbnProjectCache
        The cache (a downloading one).
    function : callable
        ``function(session) -> value``; for a process pool or Dask, a module-level function.
        Return what you need (a small table, an array), not the session.
    ecephys_session_ids : iterable of int
        The sessions.
    stream : bool
        True (default): stream each file (blocks kept in the cache folder). False: download
        each file first, then open it.
    executor : concurrent.futures.Executor or None
        Where the sessions run: a ``ThreadPoolExecutor`` (the work is mostly waiting on the
        network), a ``ProcessPoolExecutor`` (the work is mostly computing) or a Dask
        ``Client.get_executor()``; the workers must see the cache folder. None: a pool of
        *max_workers* threads.
    max_workers : int
        Threads when *executor* is None.
    progressbar : bool or None
        One bar over the sessions (default: the cache's ``progressbar``).

    Returns
    -------
    SessionResults
        ``{ecephys_session_id: value}``; ``.report`` says what each session cost,
        ``.bytes_fetched`` and ``.file_bytes`` the totals.

    Raises
    ------
    DownloadError
        If a session could not be read; raised once the others are done, naming each failure.

    Examples
    --------
    The units of every session in VISp and their mean firing rate, streamed::

        def visp_rates(session):
            units = session.get_units()
            channels = session.get_channels()
            in_visp = channels.loc[units["peak_channel_id"], "structure_acronym"].str.startswith("VISp")
            return units.loc[in_visp.to_numpy(), "firing_rate"]

        results = cache.map_sessions(visp_rates, cache.get_ecephys_session_table().index[:10])
        print(f"{results.bytes_fetched / 1e6:.0f} MB fetched of {results.file_bytes / 1e9:.1f} GB")
    """
    from .transfer import DownloadError

    ids = [int(i) for i in ecephys_session_ids]
    files = []
    for sid in ids:
        if not stream:
            cache.get_ecephys_session_path(sid)  # downloads (once)
        files.append(cache.get_ecephys_session_file(sid))
    show = cache.progressbar if progressbar is None else progressbar
    bar = ProgressBar(total=len(ids), desc="sessions", unit="session", disable=not show)
    own = executor is None
    runner = executor if executor is not None else ThreadPoolExecutor(max(1, min(max_workers, len(ids))))
    outcomes: list[SessionOutcome] = []
    failures: list[str] = []
    try:
        futures = {runner.submit(session_task, f, function): f for f in files}
        for future in as_completed(futures):
            try:
                outcomes.append(future.result())
            except DownloadError as error:
                failures.append(f"session {futures[future].ecephys_session_id}: {error}")
            bar.update(1)
    finally:
        bar.close()
        if own:
            runner.shutdown()
    folder, by_id = cache.cache_folder, {f.ecephys_session_id: f for f in files}
    saved = {folder.relative(by_id[o.ecephys_session_id].path): o.saved_hash for o in outcomes if o.saved_hash}
    folder.record(saved)
    if failures:
        raise DownloadError(f"{len(failures)} of {len(ids)} sessions could not be read:\n- "
                            + "\n- ".join(failures))
    order = {sid: i for i, sid in enumerate(ids)}
    outcomes.sort(key=lambda o: order[o.ecephys_session_id])
    results = SessionResults((o.ecephys_session_id, o.value) for o in outcomes)
    results.report = pd.DataFrame(
        [{"ecephys_session_id": o.ecephys_session_id, "file_bytes": o.file_bytes,
          "bytes_fetched": o.bytes_fetched, "requests": o.requests,
          "seconds": round(o.seconds, 3), "streamed": o.streamed} for o in outcomes],
        columns=["ecephys_session_id", "file_bytes", "bytes_fetched", "requests", "seconds",
                 "streamed"]).set_index("ecephys_session_id")
    return results
