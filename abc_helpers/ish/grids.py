"""Grid zips of the Allen Mouse Brain Atlas: download them, check them, read their volumes.

The 200 µm grids (``grid_data/download/{id}``) are zips holding ``energy.mhd`` and ``energy.raw``:
float32, little endian, MetaImage DimSize 67 41 58, i.e. the CCF PIR axes (x: anterior→posterior,
y: superior→inferior, z: left→right), -1 where there are no data.
"""

from __future__ import annotations

import logging
import os
import struct
import sys
import threading
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import pandas as pd

from ..sources import Source, get_source

LOGGER = logging.getLogger("abc_helpers")

#: Grid size along (AP, DV, LR) = MetaImage DimSize, and the numpy shape of ``energy.raw`` (LR, DV, AP).
GRID_SIZE = (67, 41, 58)
GRID_SHAPE = (58, 41, 67)
#: Bytes of one 200 µm float32 volume.
GRID_BYTES = 67 * 41 * 58 * 4
#: tqdm ``bar_format`` of the ISH progress bars: they count experiments, with no rate, so that
#: notebook outputs are stable.
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}]"


# -- downloading --------------------------------------------------------------------------------------
def grid_url(experiment_id: int, source: str | Source | None = None, include: str | None = None) -> str:
    """Return the URL of the 3-D grid zip of one experiment (``include``: e.g. ``"energy,density"``)."""
    path = f"grid_data/download/{int(experiment_id)}"
    if include:
        path += f"?include={include}"
    return get_source(source).api_url(path)


def check_grid_zip(path: str | os.PathLike, volume: str = "energy") -> str | None:
    """Check a grid zip: safe member names, a complete ``{volume}.raw``, every CRC right.

    Every member is inflated and its CRC compared, as ``ZipFile.testzip`` does, but each in one
    call (see :func:`read_grid_array`), and the members are kept for a little while, keyed by the
    file's identity: converting the grid right after its download (the *process* of
    :func:`download_grids`) then neither opens the zip nor inflates anything again.

    Returns
    -------
    str or None
        None if the zip is good, else what is wrong with it (a transfer may have damaged it).

    Raises
    ------
    ValueError
        For a zip that is wrong as published: members that would escape a folder they were
        extracted to, or no complete ``{volume}.raw`` (the API has no grid for the experiment).
    """
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            bad = [n for n in names if n.startswith(("/", "\\")) or "\\" in n or ":" in n
                   or ".." in n.split("/")]
            if bad:
                raise ValueError(f"the zip has members that escape its folder: {bad}. It is "
                                 "refused; nothing was extracted.")
            raw_name = f"{volume}.raw"
            info = zf.getinfo(raw_name) if raw_name in names else None
            if info is None or info.file_size != GRID_BYTES:
                found = "missing" if info is None else f"{info.file_size} bytes"
                raise ValueError(f"the zip has no complete '{raw_name}' ({found}, "
                                 f"expected {GRID_BYTES} bytes; members: {names}): the API has no "
                                 "3-D expression grid for this experiment. Leave it out.")
            identity = _identity(zf)
            members = {}
            for member in zf.infolist():
                try:
                    members[member.filename] = _read_member(zf, member.filename)
                except _DAMAGED_MEMBER:
                    return f"member '{member.filename}' fails its CRC"
    except (OSError, zipfile.BadZipFile) as error:
        return f"not a readable zip ({error})"
    if identity is not None:
        _keep_inflated(identity, members)
    return None


def verify_grid(path: str | os.PathLike, volume: str = "energy") -> bool:
    """Return True if *path* is a safe, undamaged zip holding a complete ``{volume}.raw``."""
    try:
        return Path(path).is_file() and check_grid_zip(path, volume) is None
    except ValueError:
        return False


def download_grid(
    experiment_id: int,
    dest_dir: str | os.PathLike,
    source: str | Source | None = None,
    force: bool = False,
) -> Path:
    """Download the 3-D expression grid zip of one experiment to ``dest_dir/<id>.zip``.

    An existing zip that verifies (opens, and holds a complete ``energy.raw``) is kept.

    Parameters
    ----------
    experiment_id : int
        The SectionDataSet id.
    dest_dir : str or PathLike
        Folder of the zips.
    source : str, Source or None
        Where the Allen API is.
    force : bool
        Download again even if a verified zip is there.

    Returns
    -------
    Path
        The verified zip.

    Raises
    ------
    abc_helpers.transfer.DownloadError
        If the download fails (after retries for network and server errors).
    ValueError
        If the zip has no complete ``energy.raw`` (the API has no grid for this experiment) or
        members that escape its folder; nothing is left at the final path. A zip damaged in transit
        (a CRC failure) is fetched again.
    """
    from ..transfer import download

    path = Path(dest_dir) / f"{int(experiment_id)}.zip"
    if not force and verify_grid(path):
        return path
    url = grid_url(experiment_id, source)
    try:
        download(url, path, progressbar=False, force=True, desc=path.name, verify=check_grid_zip)
    except ValueError as error:
        raise ValueError(f"The grid of experiment {experiment_id} from {url}: {error}") from None
    return path


def download_grids(
    metadata: pd.DataFrame,
    dest_dir: str | os.PathLike,
    executor: Executor | None = None,
    source: str | Source | None = None,
    max_workers: int = 8,
    progressbar: bool = True,
    process: Callable[[int, Path], object] | None = None,
    process_executor: Executor | None = None,
) -> pd.DataFrame:
    """Download the grids of many experiments in parallel, reporting each failure.

    Unlike the process pool of the Allen ISH grid download script, one failed experiment never loses the others: every row gets
    ``success`` and ``error``.

    Parameters
    ----------
    metadata : pandas.DataFrame
        Experiments, with an ``experiment_id`` column (e.g. from :func:`query_section_datasets`).
    dest_dir : str or PathLike
        Folder of the zips (``<id>.zip``).
    executor : concurrent.futures.Executor or None
        Run the downloads there (not shut down); default: a thread pool of *max_workers*.
    source : str, Source or None
        Where the Allen API is.
    max_workers : int
        Downloads at once when no *executor* is given.
    progressbar : bool
        Show a tqdm bar (experiments) on stderr.
    process : callable or None
        Called as ``process(experiment_id, zip_path)`` in the worker right after each verified
        download (e.g. reorient and write), so processing overlaps the transfers; an exception
        there marks the row failed.
    process_executor : concurrent.futures.Executor or None
        Queue *process* there instead of running it in the download thread, which then goes on
        downloading: a two-stage pipeline, e.g. ``ThreadPoolExecutor(1)`` (fewer converters
        than downloads, so conversions do not thrash the transfers) or a ``ProcessPoolExecutor``
        (then *process* must be picklable: a module-level function or a ``functools.partial``
        of one). It is not shut down; all its conversions are done when this returns.

    Returns
    -------
    pandas.DataFrame
        A copy of *metadata* with ``success`` (bool), ``error`` (str, empty on success) and
        ``path`` (the zip, or empty).
    """
    from tqdm import tqdm

    if "experiment_id" not in metadata.columns:
        raise KeyError(f"metadata has no 'experiment_id' column (columns: {list(metadata.columns)}): "
                       "pass the table of query_section_datasets().")
    out = metadata.copy()
    ids = [int(i) for i in out["experiment_id"]]
    src = get_source(source)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    results: list[tuple[bool, str, str]] = [(False, "not run", "")] * len(ids)
    bar = (tqdm(total=len(ids), desc="grids", unit="grid", file=sys.stderr, bar_format=BAR_FORMAT)
           if progressbar else None)
    lock = threading.Lock()

    def finish(i: int, error: BaseException | None, path: Path | None) -> None:
        if error is None:
            results[i] = (True, "", str(path))
        else:
            results[i] = (False, f"{type(error).__name__}: {error}", "")
            LOGGER.debug("Experiment %s failed: %s", ids[i], error)
        if bar is not None:
            with lock:
                bar.update(1)

    pending: list[Future] = []

    def job(i: int) -> None:
        try:
            path = download_grid(ids[i], dest, src)
            if process is not None and process_executor is not None:
                # Queue the conversion and return: this thread goes on downloading.
                future = process_executor.submit(process, ids[i], path)

                def done(f: Future, i: int = i, path: Path = path) -> None:
                    finish(i, f.exception(), path)

                future.add_done_callback(done)
                with lock:
                    pending.append(future)
                return
            if process is not None:
                process(ids[i], path)
        except Exception as error:  # noqa: BLE001 - every failure is reported in its row
            finish(i, error, None)
            return
        finish(i, None, path)

    own = executor is None
    pool: Executor = (ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(ids) or 1)))
                      if executor is None else executor)
    try:
        for future in [pool.submit(job, i) for i in range(len(ids))]:
            future.result()
        wait(pending)
    finally:
        if own:
            pool.shutdown(wait=True)
        if bar is not None:
            bar.close()
    out["success"] = [r[0] for r in results]
    out["error"] = [r[1] for r in results]
    out["path"] = [r[2] for r in results]
    n_failed = int((~out["success"]).sum())
    if n_failed:
        LOGGER.warning("%d of %d grids failed; see the 'error' column.", n_failed, len(out))
    return out


# -- volumes inflated by check_grid_zip, kept for the conversion that follows ---------------------------
#: How many checked zips :func:`check_grid_zip` keeps inflated (most recent first; about 0.6 MB each):
#: more than the downloads that can be waiting for a converter in :func:`download_grids`.
INFLATED_KEEP = 32
_inflated: OrderedDict[tuple, dict[str, bytes]] = OrderedDict()
_inflated_lock = threading.Lock()


def _stat_identity(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _identity(zf: zipfile.ZipFile) -> tuple | None:
    """The identity of an open zip's file: device, inode, size and modification time (None if unknown).

    A rename keeps it (the verified ``.part`` becomes the final zip); rewriting the file changes it.
    """
    fp = zf.fp
    try:
        return None if fp is None else _stat_identity(os.fstat(fp.fileno()))
    except (OSError, AttributeError, ValueError):  # e.g. a zip read from a BytesIO
        return None


def _keep_inflated(identity: tuple, members: dict[str, bytes]) -> None:
    with _inflated_lock:
        _inflated[identity] = members
        _inflated.move_to_end(identity)
        while len(_inflated) > INFLATED_KEEP:
            _inflated.popitem(last=False)


def _take_inflated(path: Path) -> dict[str, bytes] | None:
    """The members of the zip at *path* if :func:`check_grid_zip` kept them (given out once)."""
    try:
        identity = _stat_identity(path.stat())
    except OSError:
        return None
    with _inflated_lock:
        return _inflated.pop(identity, None)

# -- reading --------------------------------------------------------------------------------------
_MET_TYPES = {"MET_FLOAT": "f4", "MET_DOUBLE": "f8", "MET_UCHAR": "u1", "MET_CHAR": "i1",
              "MET_USHORT": "u2", "MET_SHORT": "i2", "MET_UINT": "u4", "MET_INT": "i4"}


def _parse_mhd(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in text.splitlines()) if _}


try:  # python-isal inflates a grid 2-4x faster than zlib (measured here); optional
    from isal.isal_zlib import decompress as _inflate
    from isal.isal_zlib import error as _isal_error

    # isal's stub declares `error` as an instance, but it is the exception class
    _INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error, _isal_error)  # type: ignore[assignment]
except ImportError:  # pragma: no cover - depends on the environment
    from zlib import decompress as _inflate

    _INFLATE_ERRORS = (zlib.error,)


#: What reading a damaged member raises: a CRC or size mismatch, a bad deflate stream, a cut member.
_DAMAGED_MEMBER: tuple[type[Exception], ...] = (zipfile.BadZipFile, EOFError, *_INFLATE_ERRORS)

#: A zip local file header (APPNOTE 4.3.7): 30 bytes starting with this signature.
_LOCAL_HEADER_SIZE = 30
_LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"


def _read_member(zf: zipfile.ZipFile, name: str) -> bytes:
    """Return one member of *zf*: a deflated member is inflated in one call, and its CRC is checked."""
    info = zf.getinfo(name)
    if info.compress_type not in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED) or info.flag_bits & 0x1:
        return zf.read(name)
    fp = zf.fp
    if fp is None:
        raise ValueError(f"The zip '{zf.filename}' is closed: read its members inside its with block.")
    fp.seek(info.header_offset)
    header = fp.read(_LOCAL_HEADER_SIZE)
    if len(header) != _LOCAL_HEADER_SIZE or header[:4] != _LOCAL_HEADER_SIGNATURE:
        raise zipfile.BadZipFile(f"Bad local header of '{name}' in '{zf.filename}': the zip is corrupt; "
                                 "delete it and download it again.")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    fp.seek(info.header_offset + _LOCAL_HEADER_SIZE + name_len + extra_len)
    data = fp.read(info.compress_size)
    if info.compress_type == zipfile.ZIP_DEFLATED:
        # One byte more than needed: a full output buffer would be grown (and its pages faulted in) again.
        try:
            data = _inflate(data, -15, info.file_size + 1)
        except _INFLATE_ERRORS as error:  # zlib.error or isal_zlib.error: the same remedy
            raise zipfile.BadZipFile(f"'{name}' in '{zf.filename}' is corrupt ({error}): delete the zip "
                                     "and download it again.") from None
    if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
        raise zipfile.BadZipFile(f"'{name}' in '{zf.filename}' is corrupt (size or CRC mismatch): "
                                 "delete the zip and download it again.")
    return data


def read_grid_array(path: str | os.PathLike, volume: str = "energy") -> tuple[np.ndarray, tuple]:
    """Read one grid volume from its zip, in memory: (array (LR, DV, AP) float32, spacing µm (x, y, z)).

    Raises
    ------
    KeyError
        If the zip has no ``{volume}.mhd``/``{volume}.raw``.
    """
    path = Path(path)
    kept = _take_inflated(path) or {}  # just checked (and inflated) by check_grid_zip
    header = _parse_mhd(kept[f"{volume}.mhd"].decode()) if f"{volume}.mhd" in kept else {}
    raw = kept.get(header.get("ElementDataFile", f"{volume}.raw")) if header else None
    if raw is None:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if f"{volume}.raw" not in names or f"{volume}.mhd" not in names:
                msg = (f"'{volume}.raw' is not in '{path}' (it holds {names}): download the grid with "
                       f"include={volume}, or read one of the volumes it has.")
                raise KeyError(msg)
            header = _parse_mhd(zf.read(f"{volume}.mhd").decode())
            raw = _read_member(zf, header.get("ElementDataFile", f"{volume}.raw"))
    size = tuple(int(v) for v in header["DimSize"].split())
    order = ">" if header.get("BinaryDataByteOrderMSB", "False").lower() == "true" else "<"
    dtype = np.dtype(order + _MET_TYPES[header.get("ElementType", "MET_FLOAT")])
    array = np.frombuffer(raw, dtype).reshape(size[::-1]).astype(np.float32, copy=False)
    spacing = tuple(float(v) for v in header.get("ElementSpacing", "200 200 200").split())
    return array, spacing


def read_grid(path: str | os.PathLike, volume: str = "energy"):
    """Read a grid volume straight from its zip as a SimpleITK image in PIR with CCFv3 geometry.

    Parameters
    ----------
    path : str or PathLike
        A grid zip (``<id>.zip``) from :func:`download_grid`.
    volume : str
        ``"energy"`` (default), ``"density"`` or ``"intensity"``.

    Returns
    -------
    SimpleITK.Image
        float32, size (67, 41, 58) along x = AP, y = DV, z = LR; spacing 0.2 mm, origin 0,
        identity direction (CCFv3 world in mm); -1 where there are no data.
    """
    import SimpleITK as sitk

    array, spacing_um = read_grid_array(path, volume)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([s / 1000.0 for s in spacing_um])
    return image

