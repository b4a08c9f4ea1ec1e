"""Allen Mouse Brain Atlas ISH: query experiments, download 3-D expression grids, reorient, write, stack.

The 200 µm grids of the Allen Mouse Brain Atlas (``grid_data/download/{id}``) are zips holding
``energy.mhd`` and ``energy.raw``: float32, little endian, MetaImage DimSize 67 41 58, i.e. the CCF
PIR axes (x: anterior→posterior, y: superior→inferior, z: left→right), -1 where there are no data.

World spaces, as in the seed script (``transform_space`` of the MICe tutorials):

* ``"CCFv3"``: millimetres along the CCF axes, origin at the CCF corner: a voxel at CCF position
  (AP, DV, LR) µm sits at (AP, DV, LR) / 1000.
* ``"MICe"``: an RAS space (x left→right, y posterior→anterior, z inferior→superior) whose origin is
  the CCF point (AP 5300, DV 5300, LR 5700) µm: (x, y, z) = (LR - 5.7, 5.3 - AP, 5.3 - DV) mm.

Images returned here carry these *world* coordinates verbatim in SimpleITK's origin and direction
(as MINC stores them). :func:`write_volume` converts to ITK's LPS convention for NIfTI, NRRD and
MetaImage, so that every file format puts each voxel at the same RAS world point for any reader;
:func:`read_volume` undoes it.
"""

from __future__ import annotations

import difflib
import io
import json
import logging
import os
import struct
import sys
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from .minc import geometry_from_itk, write_minc
from .sources import Source, check_url_allowed, get_source

LOGGER = logging.getLogger("abc_helpers")

#: Grid size along (AP, DV, LR) = MetaImage DimSize, and the numpy shape of ``energy.raw`` (LR, DV, AP).
GRID_SIZE = (67, 41, 58)
GRID_SHAPE = (58, 41, 67)
#: Bytes of one 200 µm float32 volume.
GRID_BYTES = 67 * 41 * 58 * 4
#: The columns of the seed's metadata query, in order.
SEED_COLUMNS = (
    "experiment_id", "section_thickness", "specimen_id", "plane", "gene", "gene_name",
    "chromosome_id", "entrez_id", "genomic_reference_update_id", "homologene_id", "organism_id",
)
_TABULAR = (
    "data_sets.id+as+experiment_id,data_sets.section_thickness,data_sets.specimen_id,"
    "plane_of_sections.name+as+plane,genes.acronym+as+gene,genes.name+as+gene_name,"
    "genes.chromosome_id,genes.entrez_id,genes.genomic_reference_update_id,genes.homologene_id,"
    "genes.organism_id"
)

#: Centres (x, y, z) in µm CCF and direction cosines of the seed script, per orientation and space.
CENTERS_UM = {
    "RAS": {"MICe": (5700, 7900, 2700), "CCFv3": (0, 13200, 8000)},
    "PIR": {"MICe": (5300, 5300, 5700), "CCFv3": (0, 0, 0)},
}
DIRECTION_COSINES = {
    "RAS": {"MICe": ((1, 0, 0), (0, 1, 0), (0, 0, 1)), "CCFv3": ((0, 0, 1), (-1, 0, 0), (0, -1, 0))},
    "PIR": {"MICe": ((0, -1, 0), (0, 0, -1), (1, 0, 0)), "CCFv3": ((1, 0, 0), (0, 1, 0), (0, 0, 1))},
}
#: File extensions :func:`write_volume` knows, and whether ITK stores them in LPS.
VOLUME_FORMATS = {".mnc": False, ".nii": True, ".nii.gz": True, ".nrrd": True, ".mha": True}
_LPS = np.diag([-1.0, -1.0, 1.0])
#: Progress bars count experiments; no rate, so that notebook outputs are stable.
_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}]"
#: ITK's MINC IO (libminc on HDF5) is not thread-safe: concurrent writes crash the process.
_MINC_LOCK = threading.Lock()

#: File names of an expression stack (as in iblatlas' AGEA cache) and of its correlation index.
STACK_FILE = "gene-expression.bin"
GENES_FILE = "gene-expression.pqt"
STACK_INFO_FILE = "gene-expression.json"
INDEX_FILE = "gene-expression-coarse.npy"


# -- querying ---------------------------------------------------------------------------------------
def _q(text: str) -> str:
    return quote(text, safe="[]$',:()=+*")


def section_datasets_url(
    plane: str | None = "coronal",
    genes: Iterable[str] | None = None,
    source: str | Source | None = None,
    start_row: int = 0,
    num_rows: int | str = "all",
) -> str:
    """Return the URL of the seed's SectionDataSet query (one page).

    Parameters
    ----------
    plane : str or None
        ``"coronal"``, ``"sagittal"`` or None for both.
    genes : iterable of str or None
        Gene acronyms to keep (``genes[acronym$in...]``); None for all genes.
    source : str, Source or None
        Where the Allen API is (see :func:`abc_helpers.sources.get_source`).
    start_row, num_rows : int, int or "all"
        The page.

    Returns
    -------
    str

    Examples
    --------
    >>> url = section_datasets_url("coronal", ["Pcp2"], source="aws", num_rows=10)
    >>> url.split("?")[0]
    'https://api.brain-map.org/api/v2/data/SectionDataSet/query.csv'
    >>> "genes[acronym$in'Pcp2']" in url
    True
    """
    criteria = ["[failed$eqfalse]"]
    if plane is not None:
        if plane not in ("coronal", "sagittal"):
            raise ValueError(f"Unknown plane of section '{plane}': use 'coronal', 'sagittal' or None.")
        criteria.append(f"plane_of_section[name$eq{plane}]")
    criteria += ["products[abbreviation$eqMouse]", "treatments[name$eqISH]"]
    if genes is not None:
        names = [str(g) for g in genes]
        if not names:
            raise ValueError("genes is empty: pass None for every gene, or at least one acronym.")
        criteria.append("genes[acronym$in" + ",".join(f"'{g}'" for g in names) + "]")
    else:
        criteria.append("genes")
    path = ("api/v2/data/SectionDataSet/query.csv?criteria=" + _q(",".join(criteria))
            + f"&tabular={_TABULAR}&start_row={int(start_row)}&num_rows={num_rows}")
    return get_source(source).api_url(path)


def _api_error(response) -> str:
    """Return the ``msg`` of an Allen API error envelope (JSON or CSV), or the start of the body."""
    text = response.text
    try:
        return str(json.loads(text)["msg"])
    except (ValueError, KeyError, TypeError):
        pass
    try:
        frame = pd.read_csv(io.StringIO(text))
        if "msg" in frame.columns and len(frame):
            return str(frame["msg"].iloc[0])
    except Exception:  # noqa: BLE001 - any unparsable body: show it as it is
        pass
    return text[:300]


def query_section_datasets(
    plane: str | None = "coronal",
    genes: Iterable[str] | None = None,
    source: str | Source | None = None,
    page_size: int = 2000,
) -> pd.DataFrame:
    """Query the ISH experiments (SectionDataSets) of the Allen Mouse Brain Atlas.

    The query is the seed's: not failed, product ``Mouse``, treatment ``ISH``, the plane of
    section, optionally some genes; the result has the seed's columns. Pages of *page_size* rows
    are fetched until a short page arrives (CSV answers carry no row count).

    Parameters
    ----------
    plane : str or None
        ``"coronal"`` (default), ``"sagittal"`` or None for both.
    genes : iterable of str or None
        Gene acronyms (e.g. ``["Pcp2", "Gad1"]``); None for every gene.
    source : str, Source or None
        ``"aws"`` (the real API), ``"sample"`` or a mirror URL.
    page_size : int
        Rows per request.

    Returns
    -------
    pandas.DataFrame
        One row per experiment: ``experiment_id, section_thickness, specimen_id, plane, gene,
        gene_name, chromosome_id, entrez_id, genomic_reference_update_id, homologene_id,
        organism_id``, duplicates dropped, in the API's order.

    Raises
    ------
    ValueError
        If the API rejects the query; the message quotes the API's ``msg``.
    """
    from .transfer import get_session

    src = get_source(source)
    session = get_session()
    pages, start = [], 0
    while True:
        url = section_datasets_url(plane, genes, src, start_row=start, num_rows=page_size)
        check_url_allowed(url)
        response = session.get(url, timeout=(10, 120))
        if response.status_code != 200:
            msg = (f"The Allen API rejected the SectionDataSet query (HTTP {response.status_code}): "
                   f"{_api_error(response)} URL: {url}")
            raise ValueError(msg)
        page = pd.read_csv(io.BytesIO(response.content))
        missing = [c for c in SEED_COLUMNS if c not in page.columns]
        if missing:
            raise ValueError(f"The SectionDataSet query answered without the columns {missing} "
                             f"(got {list(page.columns)}). URL: {url}")
        pages.append(page)
        if len(page) < page_size:
            break
        start += page_size
    frame = pd.concat(pages, ignore_index=True) if pages else pd.DataFrame(columns=SEED_COLUMNS)
    frame = frame[list(SEED_COLUMNS)].drop_duplicates().reset_index(drop=True)
    LOGGER.info("%d %s ISH experiments from %s", len(frame), plane or "coronal+sagittal", src)
    return frame


# -- downloading --------------------------------------------------------------------------------------
def grid_url(experiment_id: int, source: str | Source | None = None, include: str | None = None) -> str:
    """Return the URL of the 3-D grid zip of one experiment (``include``: e.g. ``"energy,density"``)."""
    path = f"grid_data/download/{int(experiment_id)}"
    if include:
        path += f"?include={include}"
    return get_source(source).api_url(path)


def check_grid_zip(path: str | os.PathLike, volume: str = "energy") -> str | None:
    """Check a grid zip: safe member names, a complete ``{volume}.raw``, every CRC right.

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
            info = zf.getinfo(f"{volume}.raw") if f"{volume}.raw" in names else None
            if info is None or info.file_size != GRID_BYTES:
                found = "missing" if info is None else f"{info.file_size} bytes"
                raise ValueError(f"the zip has no complete '{volume}.raw' ({found}, "
                                 f"expected {GRID_BYTES} bytes; members: {names}): the API has no "
                                 "3-D expression grid for this experiment. Leave it out.")
            damaged = zf.testzip()
    except (OSError, zipfile.BadZipFile) as error:
        return f"not a readable zip ({error})"
    return None if damaged is None else f"member '{damaged}' fails its CRC"


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
    from .transfer import download

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

    Unlike the seed's process pool, one failed experiment never loses the others: every row gets
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
    bar = (tqdm(total=len(ids), desc="grids", unit="grid", file=sys.stderr, bar_format=_BAR_FORMAT)
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
                future.add_done_callback(lambda f, i=i, path=path: finish(i, f.exception(), path))
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
    pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(ids) or 1))) if own else executor
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


# -- reading --------------------------------------------------------------------------------------
_MET_TYPES = {"MET_FLOAT": "f4", "MET_DOUBLE": "f8", "MET_UCHAR": "u1", "MET_CHAR": "i1",
              "MET_USHORT": "u2", "MET_SHORT": "i2", "MET_UINT": "u4", "MET_INT": "i4"}


def _parse_mhd(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in text.splitlines()) if _}


try:  # python-isal inflates a grid 2-4x faster than zlib (measured here); optional
    from isal.isal_zlib import decompress as _inflate
except ImportError:  # pragma: no cover - depends on the environment
    from zlib import decompress as _inflate


def _read_member(zf: zipfile.ZipFile, name: str) -> bytes:
    """Return one member of *zf*: a deflated member is inflated in one call, and its CRC is checked."""
    info = zf.getinfo(name)
    if info.compress_type not in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED) or info.flag_bits & 0x1:
        return zf.read(name)
    fp = zf.fp
    fp.seek(info.header_offset)
    header = fp.read(zipfile.sizeFileHeader)
    if len(header) != zipfile.sizeFileHeader or header[:4] != zipfile.stringFileHeader:
        raise zipfile.BadZipFile(f"Bad local header of '{name}' in '{zf.filename}': the zip is corrupt; "
                                 "delete it and download it again.")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    fp.seek(info.header_offset + zipfile.sizeFileHeader + name_len + extra_len)
    data = fp.read(info.compress_size)
    if info.compress_type == zipfile.ZIP_DEFLATED:
        # One byte more than needed: a full output buffer would be grown (and its pages faulted in) again.
        try:
            data = _inflate(data, -15, info.file_size + 1)
        except Exception as error:  # zlib.error or isal_zlib.error: the same remedy
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


# -- reorienting ----------------------------------------------------------------------------------
def _pir_to_ras(data: np.ndarray) -> np.ndarray:
    """The seed's ``reorient_to_standard``: (LR, DV, AP) -> (IS, PA, LR) numpy axes."""
    data = np.rot90(data, k=1, axes=(0, 2))
    return np.rot90(data, k=1, axes=(0, 1))


def world_geometry(orientation: str, world_space: str, resolution_um: float,
                   expansion_factor: float = 1.0) -> tuple[tuple, tuple, tuple]:
    """Return (origin, spacing, direction) in SimpleITK order for the seed's geometry, in mm."""
    try:
        centers = CENTERS_UM[orientation][world_space]
        cosines = DIRECTION_COSINES[orientation][world_space]
    except KeyError:
        msg = (f"Unknown orientation '{orientation}' or world space '{world_space}': use "
               f"orientation 'RAS' or 'PIR' and world_space 'MICe' or 'CCFv3'.")
        raise ValueError(msg) from None
    starts = np.array([-expansion_factor * c / 1000.0 for c in centers])
    direction = np.array(cosines, dtype=float).T  # columns: the x, y, z axis directions
    origin = direction @ starts
    step = expansion_factor * resolution_um / 1000.0
    return tuple(origin.tolist()), (step, step, step), tuple(direction.ravel().tolist())


def reorient(image, orientation: str = "RAS", world_space: str = "MICe", expansion_factor: float = 1.0):
    """Reorient a PIR grid (from :func:`read_grid`) to RAS or PIR voxels in MICe or CCFv3 world space.

    Voxels move exactly as the seed's numpy rotations move them (``rot90`` over axes (0, 2) then
    (0, 1) for RAS; nothing for PIR), and the geometry is the seed's centres and direction cosines.

    Parameters
    ----------
    image : SimpleITK.Image
        A grid in PIR voxel order (x = AP, y = DV, z = LR), as :func:`read_grid` returns it (or
        as this function returns it for ``orientation="PIR"``).
    orientation : str
        ``"RAS"`` (x = LR, y = PA, z = IS) or ``"PIR"``.
    world_space : str
        ``"MICe"`` or ``"CCFv3"``.
    expansion_factor : float
        Scales centres and steps, as in the seed.

    Returns
    -------
    SimpleITK.Image
        A new image; for RAS/MICe at 200 µm the origin is (-5.7, -7.9, -2.7) mm with identity
        direction.

    Raises
    ------
    ValueError
        For an unknown orientation or world space, or an input not in PIR voxel order.

    Examples
    --------
    >>> import numpy as np, SimpleITK as sitk
    >>> pir = sitk.GetImageFromArray(np.zeros((58, 41, 67), np.float32))  # (LR, DV, AP)
    >>> pir.SetSpacing((0.2, 0.2, 0.2))
    >>> ras = reorient(pir, "RAS", "MICe")
    >>> ras.GetSize(), tuple(round(v, 6) for v in ras.GetOrigin())
    ((58, 67, 41), (-5.7, -7.9, -2.7))
    """
    import SimpleITK as sitk

    direction = np.array(image.GetDirection()).reshape(3, 3)
    pir_options = [np.array(DIRECTION_COSINES["PIR"][w], float).T for w in ("CCFv3", "MICe")]
    size = image.GetSize()
    if not any(np.allclose(direction, d) for d in pir_options) or size[0] != max(size):
        msg = ("reorient() expects a grid in PIR voxel order, as read_grid() returns it (identity "
               f"direction, AP the longest axis); got size {size} and direction "
               f"{tuple(np.round(direction.ravel(), 3))}. Reorient the "
               "image read from the zip, not an already reoriented one.")
        raise ValueError(msg)
    resolution_um = round(image.GetSpacing()[0] * 1000.0 / (expansion_factor or 1.0), 6)
    origin, spacing, new_direction = world_geometry(orientation, world_space, resolution_um,
                                                    expansion_factor)
    data = sitk.GetArrayViewFromImage(image)
    if orientation == "RAS":
        data = _pir_to_ras(data)
    out = sitk.GetImageFromArray(np.ascontiguousarray(data))
    out.SetOrigin(origin)
    out.SetSpacing(spacing)
    out.SetDirection(new_direction)
    return out


def expected_world_point(ccf_um: Iterable[float], world_space: str = "MICe") -> tuple[float, float, float]:
    """Return the world point (mm) of a CCF position (AP, DV, LR) in µm, in *world_space*.

    Examples
    --------
    >>> expected_world_point((5300, 5300, 5700), "MICe")
    (0.0, 0.0, 0.0)
    >>> expected_world_point((1000, 2000, 3000), "CCFv3")
    (1.0, 2.0, 3.0)
    """
    ap, dv, lr = (float(v) / 1000.0 for v in ccf_um)
    if world_space == "MICe":
        return (round(lr - 5.7, 9), round(5.3 - ap, 9), round(5.3 - dv, 9))
    if world_space == "CCFv3":
        return (ap, dv, lr)
    raise ValueError(f"Unknown world space '{world_space}': use 'MICe' or 'CCFv3'.")


# -- writing ------------------------------------------------------------------------------------------
def _extension(path: Path) -> str:
    name = path.name.lower()
    for ext in sorted(VOLUME_FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    msg = (f"Cannot write '{path.name}': unknown extension. Use one of "
           + ", ".join(VOLUME_FORMATS) + ".")
    raise ValueError(msg)


def _flip_xy(out):
    """Mirror the geometry of the image *out* in x and y, in place (RAS <-> LPS), and return it."""
    direction = np.array(out.GetDirection()).reshape(3, 3)
    out.SetDirection(tuple((_LPS @ direction).ravel().tolist()))
    out.SetOrigin(tuple((_LPS @ np.array(out.GetOrigin())).tolist()))
    return out


def _tmp_path(path: Path, ext: str) -> Path:
    """A temporary name beside *path*, unique per process and thread, keeping the extension."""
    return path.with_name(f".{path.name[: -len(ext)]}.{os.getpid()}.{threading.get_ident()}.tmp{ext}")


def write_volume(image, path: str | os.PathLike) -> Path:
    """Write *image* to .mnc, .nii(.gz), .nrrd or .mha, with its world coordinates in each format's convention.

    The image's origin and direction are read as world (RAS-style, MINC) coordinates: MINC stores
    them verbatim, the other formats get ITK's LPS convention so that they too put every voxel at
    the same world point. The file is written beside *path* and renamed into place. Float volumes
    go to MINC through :func:`abc_helpers.minc.write_minc` (ITK's layout, no lock, thread-safe);
    other MINC volumes through ITK, one at a time (its MINC library is not thread-safe).

    Parameters
    ----------
    image : SimpleITK.Image
        E.g. ``reorient(read_grid(zip), "RAS", "MICe")``.
    path : str or PathLike
        Target file; the extension picks the format.

    Returns
    -------
    Path
    """
    import SimpleITK as sitk

    path = Path(path)
    ext = _extension(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = _flip_xy(sitk.Image(image)) if VOLUME_FORMATS[ext] else image
    tmp = _tmp_path(path, ext)
    try:
        if ext == ".mnc" and out.GetNumberOfComponentsPerPixel() == 1 and out.GetDimension() == 3 \
                and out.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
            write_minc(tmp, sitk.GetArrayViewFromImage(out),
                       *geometry_from_itk(out.GetOrigin(), out.GetSpacing(), out.GetDirection()))
        elif ext == ".mnc":
            with _MINC_LOCK:
                sitk.WriteImage(out, str(tmp))
        else:
            sitk.WriteImage(out, str(tmp), useCompression=ext in (".nrrd", ".mha"))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def convert_grid(
    path: str | os.PathLike,
    out_path: str | os.PathLike,
    orientation: str = "RAS",
    world_space: str = "MICe",
    volume: str = "energy",
) -> Path:
    """Read a grid zip, reorient it and write it: ``write_volume(reorient(read_grid(path)), out_path)`` in one step.

    The same voxels and geometry as the three calls, done in numpy: the rotation is a view, copied
    once while writing, and a float MINC file is written without SimpleITK (see
    :mod:`abc_helpers.minc`), so many grids convert in parallel threads without a lock. Use it as
    the *process* of :func:`download_grids` (e.g. through ``functools.partial``).

    Parameters
    ----------
    path : str or PathLike
        A grid zip from :func:`download_grid`.
    out_path : str or PathLike
        Target file: .mnc, .nii(.gz), .nrrd or .mha.
    orientation, world_space : str
        As in :func:`reorient`.
    volume : str
        ``"energy"`` (default), ``"density"`` or ``"intensity"``.

    Returns
    -------
    Path
    """
    out_path = Path(out_path)
    ext = _extension(out_path)
    array, spacing_um = read_grid_array(path, volume)
    origin, spacing, direction = world_geometry(orientation, world_space, spacing_um[0])
    data = _pir_to_ras(array) if orientation == "RAS" else array
    if ext != ".mnc":
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(data))
        image.SetOrigin(origin)
        image.SetSpacing(spacing)
        image.SetDirection(direction)
        return write_volume(image, out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(out_path, ext)
    try:
        write_minc(tmp, data, *geometry_from_itk(origin, spacing, direction))
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def read_volume(path: str | os.PathLike):
    """Read a file written by :func:`write_volume` back into world (MINC-convention) coordinates."""
    import SimpleITK as sitk

    path = Path(path)
    ext = _extension(path)
    if ext == ".mnc":
        with _MINC_LOCK:
            image = sitk.ReadImage(str(path))
    else:
        image = sitk.ReadImage(str(path))
    return _flip_xy(image) if VOLUME_FORMATS[ext] else image


# -- stacks ---------------------------------------------------------------------------------------
def build_expression_stack(
    metadata: pd.DataFrame,
    grid_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    volume: str = "energy",
    progressbar: bool = True,
) -> Path:
    """Stack the grids of *metadata* into one float16 memmap (n, 58, 41, 67), as iblatlas has it.

    Rows with ``success == False`` (if that column exists) or without a verified zip are left out.
    Writes ``gene-expression.bin`` (float16, (n, LR, DV, AP), -1 = no data),
    ``gene-expression.pqt`` (columns ``id`` and ``gene`` as strings, plus ``plane``), a small
    ``gene-expression.json`` and the correlation index used by :func:`correlated_genes`.

    Returns
    -------
    Path
        *out_dir*.
    """
    from tqdm import tqdm

    grid_dir, out_dir = Path(grid_dir), Path(out_dir)
    rows = metadata if "success" not in metadata.columns else metadata[metadata["success"].astype(bool)]
    keep = [r for r in rows.itertuples(index=False) if verify_grid(grid_dir / f"{int(r.experiment_id)}.zip")]
    if not keep:
        raise ValueError(f"No verified grid zips of these experiments in '{grid_dir}': run "
                         "download_grids() first.")
    out_dir.mkdir(parents=True, exist_ok=True)
    part = out_dir / (STACK_FILE + ".part")
    mm = np.memmap(part, dtype=np.float16, mode="w+", shape=(len(keep), *GRID_SHAPE))
    for i, r in enumerate(tqdm(keep, desc="stack", unit="grid", file=sys.stderr, disable=not progressbar,
                               bar_format=_BAR_FORMAT)):
        array, _ = read_grid_array(grid_dir / f"{int(r.experiment_id)}.zip", volume)
        mm[i] = array.astype(np.float16)
    mm.flush()
    del mm
    genes = pd.DataFrame({"id": [str(int(r.experiment_id)) for r in keep],
                          "gene": [str(r.gene) for r in keep],
                          "plane": [str(getattr(r, "plane", "")) for r in keep]})
    genes.to_parquet(out_dir / GENES_FILE, index=False)
    (out_dir / STACK_INFO_FILE).write_text(json.dumps(
        {"shape": [len(keep), *GRID_SHAPE], "dtype": "float16", "axes": ["experiment", "ml", "dv", "ap"],
         "spacing_um": 200, "volume": volume}))
    os.replace(part, out_dir / STACK_FILE)
    build_correlation_index(out_dir)
    return out_dir


def load_expression_stack(out_dir: str | os.PathLike) -> tuple[pd.DataFrame, np.memmap]:
    """Open a stack written by :func:`build_expression_stack`: (genes table, float16 memmap)."""
    out_dir = Path(out_dir)
    info_path, bin_path = out_dir / STACK_INFO_FILE, out_dir / STACK_FILE
    if not bin_path.exists():
        raise FileNotFoundError(f"No expression stack in '{out_dir}' ('{STACK_FILE}' is missing): "
                                "build it with build_expression_stack().")
    genes = pd.read_parquet(out_dir / GENES_FILE)
    if info_path.exists():
        shape = tuple(json.loads(info_path.read_text())["shape"])
    else:
        shape = (len(genes), *GRID_SHAPE)
    return genes, np.memmap(bin_path, dtype=np.float16, mode="r", shape=shape)


def _coarse_rows(block: np.ndarray) -> np.ndarray:
    """Pool (k, 58, 41, 67) volumes 2x2x2 (mean of valid voxels), NaN where none is valid."""
    k = block.shape[0]
    data = np.full((k, 58, 42, 68), np.nan, np.float32)
    values = block.astype(np.float32)
    values[values < 0] = np.nan
    data[:, :, :41, :67] = values
    data = data.reshape(k, 29, 2, 21, 2, 34, 2)
    valid = ~np.isnan(data)
    total = np.where(valid, data, 0.0).sum(axis=(2, 4, 6))
    count = valid.sum(axis=(2, 4, 6))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / count).reshape(k, -1)


def _normalise(coarse: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Centre and scale each row over its valid voxels; missing voxels become 0."""
    rows = coarse[:, keep]
    mean = np.nanmean(rows, axis=1, keepdims=True)
    rows = np.nan_to_num(rows - mean, nan=0.0)
    norm = np.linalg.norm(rows, axis=1, keepdims=True)
    norm[norm == 0] = 1.0
    return (rows / norm).astype(np.float32)


def coarse_index(stack: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Return the correlation index of *stack*: 400 µm pooled, centred, unit-norm rows (float32)."""
    parts = [_coarse_rows(np.asarray(stack[i:i + chunk])) for i in range(0, len(stack), chunk)]
    coarse = np.concatenate(parts) if parts else np.zeros((0, 29 * 21 * 34), np.float32)
    keep = np.mean(~np.isnan(coarse), axis=0) > 0.05 if len(coarse) else np.zeros(0, bool)
    return _normalise(coarse, keep)


def build_correlation_index(out_dir: str | os.PathLike) -> Path:
    """Precompute what :func:`correlated_genes` reuses and store it beside the stack.

    The index is the stack pooled to 400 µm, each experiment centred and scaled to unit norm over
    its valid voxels (float32, ~n x 8,000 for brain voxels); a query is then one matrix-vector
    product, and only the best candidates are re-scored at full resolution.
    """
    out_dir = Path(out_dir)
    _, stack = load_expression_stack(out_dir)
    index = coarse_index(stack)
    part = out_dir / (INDEX_FILE + ".part.npy")
    np.save(part, index)
    os.replace(part, out_dir / INDEX_FILE)
    _INDEX_CACHE.clear()
    return out_dir / INDEX_FILE


_INDEX_CACHE: dict[tuple, np.ndarray] = {}


def _index_for(stack: np.ndarray) -> np.ndarray:
    filename = getattr(stack, "filename", None)
    if filename:
        path = Path(filename).parent / INDEX_FILE
        if path.exists():
            key = (str(path), path.stat().st_mtime_ns)
            if key not in _INDEX_CACHE:
                _INDEX_CACHE.clear()
                index = np.load(path)
                if len(index) == len(stack):
                    _INDEX_CACHE[key] = index
                else:
                    LOGGER.warning("The correlation index '%s' does not match the stack; recomputing.", path)
                    return coarse_index(stack)
            return _INDEX_CACHE[key]
    return coarse_index(stack)


def _exact_correlations(stack: np.ndarray, query: int, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlation of experiment *query* with each candidate over voxels valid in both."""
    flat = np.reshape(stack, (len(stack), -1))  # a view, also of a memmap
    x = np.asarray(flat[query], np.float32)
    voxels = np.flatnonzero(x >= 0)
    x = x[voxels]
    order = np.argsort(candidates)
    rows = np.empty((len(candidates), len(voxels)), np.float32)
    rows[order] = flat[candidates[order]][:, voxels]  # sorted rows: sequential reads of the memmap
    mask = rows >= 0
    n = mask.sum(axis=1).astype(np.float64)
    y = np.where(mask, rows, 0.0)
    xm = mask * x
    sx, sy = xm.sum(1, dtype=np.float64), y.sum(1, dtype=np.float64)
    sxx, syy = (xm * x).sum(1, dtype=np.float64), (y * y).sum(1, dtype=np.float64)
    sxy = (y * x).sum(1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sy / n
        var = (sxx - sx * sx / n) * (syy - sy * sy / n)
        r = cov / np.sqrt(var)
    return np.where(n > 2, r, np.nan), n.astype(int)


def correlated_genes(
    stack: np.ndarray,
    genes: pd.DataFrame,
    gene: str | int,
    top: int = 20,
    candidates: int | None = None,
) -> pd.DataFrame:
    """Rank experiments by spatial correlation with one experiment, ignoring voxels without data (-1).

    A precomputed 400 µm index (see :func:`build_correlation_index`) ranks every experiment with
    one matrix-vector product; the best *candidates* are then re-scored exactly: the Pearson
    correlation at 200 µm over the voxels where both experiments have data.

    Parameters
    ----------
    stack : numpy.ndarray or numpy.memmap
        (n, 58, 41, 67) volumes, e.g. from :func:`load_expression_stack`.
    genes : pandas.DataFrame
        The stack's table (columns ``id``, ``gene``), one row per volume.
    gene : str or int
        A gene acronym (its first experiment is the query) or an experiment id.
    top : int
        Rows to return.
    candidates : int or None
        Experiments re-scored at full resolution; default ``max(5 * top, 100)``.

    Returns
    -------
    pandas.DataFrame
        ``rank, id, gene, correlation, n_voxels``, best first, without the query experiment.

    Raises
    ------
    KeyError
        If *gene* is neither an acronym nor an experiment id of the stack.
    """
    if len(genes) != len(stack):
        raise ValueError(f"genes has {len(genes)} rows but the stack holds {len(stack)} volumes: pass "
                         "the table that load_expression_stack() returned with it.")
    ids = genes["id"].astype(str).to_numpy()
    names = genes["gene"].astype(str).to_numpy()
    hits = np.flatnonzero(ids == str(gene))
    if not len(hits):
        hits = np.flatnonzero(names == str(gene))
    if not len(hits):
        close = difflib.get_close_matches(str(gene), sorted(set(names)), n=3)
        msg = f"'{gene}' is neither a gene nor an experiment id of this stack."
        raise KeyError(msg + (f" Did you mean {close}?" if close else ""))
    query = int(hits[0])
    index = _index_for(stack)
    scores = index @ index[query]
    scores[query] = -np.inf
    k = min(len(stack) - 1, candidates or max(5 * top, 100))
    if k <= 0:
        return pd.DataFrame(columns=["rank", "id", "gene", "correlation", "n_voxels"])
    best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.argsort(-scores)
    best = best[best != query]
    r, n = _exact_correlations(stack, query, best)
    order = np.argsort(-np.nan_to_num(r, nan=-np.inf), kind="stable")[:top]
    chosen = best[order]
    return pd.DataFrame({"rank": np.arange(1, len(chosen) + 1), "id": ids[chosen], "gene": names[chosen],
                         "correlation": r[order], "n_voxels": n[order]})
