"""Open NWB files with pynwb, loading each set of cached namespaces once per process.

pynwb's ``NWBHDF5IO(path, "r")`` reads the namespaces (schemas) cached in the file and builds its
type map from them at every open: for a Visual Behavior Neuropixels session (NWB core and four Allen
extensions) that is most of the time an open takes. Files that cache the same specifications (every
session of a release) can share one type map, so :func:`open_nwb` keys the type maps it builds by a
digest of the cached specification text: the first session of a release pays for the schemas, the
next ones open in a fraction of the time. A file whose cached specifications differ in any byte gets
its own type map, so nothing is read with another file's schema.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import h5py
    from pynwb import NWBHDF5IO

__all__ = ["cached_specifications_digest", "open_nwb"]

#: The type maps built so far, by the digest of the specifications they were built from.
_TYPE_MAPS: dict[str, Any] = {}
_LOCK = threading.Lock()


def cached_specifications_digest(fh: h5py.File) -> str:
    """A digest of the namespaces an NWB file caches (every name and text under its specification group).

    Parameters
    ----------
    fh : h5py.File
        The open NWB file.

    Returns
    -------
    str
        Hex digest; ``""`` when the file caches no specifications.
    """
    import h5py

    location = fh.attrs.get(".specloc")
    if location is None:
        return ""
    specs = fh[location]
    digest = hashlib.blake2b(digest_size=16)

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            value = item[()]
            text = value if isinstance(value, bytes) else str(value).encode()
            digest.update(f"{name}\0{len(text)}\0".encode())
            digest.update(text)

    specs.visititems(visit)
    return digest.hexdigest()


def open_nwb(path: str | os.PathLike | None = None, *, file: h5py.File | None = None) -> NWBHDF5IO:
    """Open an NWB file for reading, with the namespaces it caches (loaded once per set of specifications).

    Parameters
    ----------
    path : str or PathLike, optional
        The file to open.
    file : h5py.File, optional
        An open file to read instead of *path* (for example one opened over HTTP ranges); the returned
        reader closes it when it is closed.

    Returns
    -------
    pynwb.NWBHDF5IO
        The reader: ``io.read()`` gives the ``NWBFile``; close it (or use it in a ``with`` block).
    """
    import h5py
    from hdmf.build import BuildManager
    from pynwb import NWBHDF5IO, get_type_map

    if (path is None) == (file is None):
        msg = "open_nwb needs exactly one of path= and file= (got both or neither): pass the file to read"
        raise TypeError(msg)
    fh = file if file is not None else h5py.File(os.fspath(path), "r")  # type: ignore[arg-type]
    try:
        key = cached_specifications_digest(fh)
        with _LOCK:
            type_map = _TYPE_MAPS.get(key)
            if type_map is None:
                type_map = get_type_map()  # a copy of pynwb's core types, the file's namespaces added
                if key:
                    NWBHDF5IO.load_namespaces(type_map, file=fh)
                _TYPE_MAPS[key] = type_map
        return NWBHDF5IO(file=fh, mode="r", manager=BuildManager(type_map))
    except BaseException:
        fh.close()
        raise
