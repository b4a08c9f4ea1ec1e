"""Streamed VBN sessions: a session's NWB file opened over HTTP ranges instead of downloaded.

:meth:`VbnProjectCache.get_ecephys_session(..., stream=True) <abc_helpers.VbnProjectCache.get_ecephys_session>`
comes here: the file is read through a :class:`~abc_helpers.rangefile.RangeFile` pinned to the
manifest's version, its blocks kept beside where the download would go
(``ecephys_session_<id>.nwb.<hash>.blocks/``). When every block is kept, the file is written out
whole (checked against the manifest's blake2b) and read locally from then on.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .cachefolder import blocks_path
from .neuropixels import VbnEcephysSession
from .rangefile import RangeFile

LOGGER = logging.getLogger("abc_helpers")

__all__ = ["SESSION_BLOCK_SIZE", "open_streamed"]

#: Block size for session files: the unit of each range request and of the cache.
SESSION_BLOCK_SIZE = 256 << 10


def open_streamed(url: str, path: Path, known_hash: str, *,
                  block_size: int = SESSION_BLOCK_SIZE) -> tuple[VbnEcephysSession, bool]:
    """Open a session file over HTTP ranges (or locally, once every block is kept).

    Parameters
    ----------
    url : str
        The file's versioned URL.
    path : Path
        Where a download of the file would go; its blocks go beside it.
    known_hash : str
        ``"blake2b:<hex>"`` from the manifest: names the blocks folder, checks the whole file.
    block_size : int
        Bytes per block.

    Returns
    -------
    tuple of (VbnEcephysSession, bool)
        The session, and True if the file was just written out whole at *path* (to record).
    """
    tag = known_hash.partition(":")[2][:16]
    blocks = blocks_path(path, tag)
    stream = RangeFile(url, blocks, what=path.name, block_size=block_size)
    try:
        if stream.cached_blocks() >= stream.n_blocks:  # all here: a local file from now on
            stream.save(path, known_hash)
            stream.close()
            shutil.rmtree(blocks, ignore_errors=True)
            LOGGER.info("Every block of '%s' was kept: it is now a local file.", path.name)
            return VbnEcephysSession(path), True
        return VbnEcephysSession(path, stream=stream), False
    except BaseException:
        stream.close()
        raise
