"""ISH volumes: reorient grids to RAS or PIR in MICe or CCFv3 world space, write and read them.

World spaces, as in the Allen ISH grid download script (``transform_space`` of the MICe tutorials):

* ``"CCFv3"``: millimetres along the CCF axes, origin at the CCF corner: a voxel at CCF position
  (AP, DV, LR) µm sits at (AP, DV, LR) / 1000.
* ``"MICe"``: an RAS space (x left→right, y posterior→anterior, z inferior→superior) whose origin is
  the CCF point (AP 5300, DV 5300, LR 5700) µm: (x, y, z) = (LR - 5.7, 5.3 - AP, 5.3 - DV) mm.

:mod:`abc_helpers.ccf` converts points between CCF µm, voxels and these world spaces
(:func:`~abc_helpers.ccf.um_to_world`); the images made here put every voxel at those points.

Images returned here carry these *world* coordinates verbatim in SimpleITK's origin and direction
(as MINC stores them). :func:`write_volume` converts to ITK's LPS convention for NIfTI, NRRD and
MetaImage, so that every file format puts each voxel at the same RAS world point for any reader;
:func:`read_volume` undoes it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..cachefolder import atomic_path
from ..ccf import um_to_world
from ..minc import geometry_from_itk, write_minc
from .grids import read_grid_array

#: Centres (x, y, z) in µm CCF and direction cosines of the Allen ISH grid download script, per
#: orientation and space.
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
#: ITK's MINC IO (libminc on HDF5) is not thread-safe: concurrent writes crash the process.
_MINC_LOCK = threading.Lock()


# -- reorienting ----------------------------------------------------------------------------------
def pir_to_ras(data: np.ndarray) -> np.ndarray:
    """Rotate a grid array from PIR to RAS voxel order, as the Allen ISH grid download script does.

    Its ``reorient_to_standard``: ``numpy.rot90`` over axes (0, 2), then over axes (0, 1).

    Parameters
    ----------
    data : numpy.ndarray
        A grid in numpy axes (LR, DV, AP), e.g. from :func:`~abc_helpers.ish.grids.read_grid_array`.

    Returns
    -------
    numpy.ndarray
        A view in numpy axes (IS, PA, LR), i.e. RAS voxels for SimpleITK (x = LR, y = PA, z = IS).

    Examples
    --------
    >>> pir_to_ras(np.zeros((58, 41, 67))).shape
    (41, 67, 58)
    """
    data = np.rot90(data, k=1, axes=(0, 2))
    return np.rot90(data, k=1, axes=(0, 1))


def world_geometry(orientation: str, world_space: str, resolution_um: float,
                   expansion_factor: float = 1.0) -> tuple[tuple, tuple, tuple]:
    """Return (origin, spacing, direction) in SimpleITK order, in mm, for the geometry of the Allen ISH grid download script."""
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

    Voxels move exactly as the numpy rotations of the Allen ISH grid download script move them
    (``rot90`` over axes (0, 2) then (0, 1) for RAS; nothing for PIR), and the geometry is that
    script's centres and direction cosines.

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
        Scales centres and steps, as in the Allen ISH grid download script.

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
        data = pir_to_ras(data)
    out = sitk.GetImageFromArray(np.ascontiguousarray(data))
    out.SetOrigin(origin)
    out.SetSpacing(spacing)
    out.SetDirection(new_direction)
    return out


def expected_world_point(ccf_um: Iterable[float], world_space: str = "MICe") -> tuple[float, float, float]:
    """Return the world point (mm) of a CCF position (AP, DV, LR) in µm, in *world_space*.

    :func:`abc_helpers.ccf.um_to_world` for one point, rounded to 1e-9 mm.

    Examples
    --------
    >>> expected_world_point((5300, 5300, 5700), "MICe")
    (0.0, 0.0, 0.0)
    >>> expected_world_point((1000, 2000, 3000), "CCFv3")
    (1.0, 2.0, 3.0)
    """
    x, y, z = (round(float(v), 9) + 0.0 for v in um_to_world(list(ccf_um), world_space))
    return (x, y, z)


def world_plane(image, axis: int, value: float,
                horizontal_axis: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Return the 2-D plane of *image* at world coordinate *value* along *axis*, and its extent in mm.

    The plane is the slice of voxels nearest to *value*, as ``matplotlib.pyplot.imshow`` wants it
    with ``origin="lower"``: columns run along *horizontal_axis*, rows along the remaining axis,
    both with increasing world coordinates. Voxels without data (negative values, -1 in the
    grids) become NaN, so they are left blank.

    Parameters
    ----------
    image : SimpleITK.Image
        A 3-D image with identity direction, e.g. :func:`~abc_helpers.ish.grids.read_grid` (PIR,
        CCFv3) or ``reorient(..., "RAS", "MICe")``.
    axis : int
        The world axis held fixed (0, 1 or 2 = x, y, z).
    value : float
        Its world coordinate, in mm.
    horizontal_axis : int
        The world axis shown left to right; the third axis is shown bottom to top.

    Returns
    -------
    plane : numpy.ndarray
        (rows, columns), float, NaN where the image has no data.
    extent : tuple of float
        (left, right, bottom, top) in world mm: the outer edges of the first and last voxels,
        for ``imshow(plane, origin="lower", extent=extent)``.

    Raises
    ------
    ValueError
        If the axes are not two different ones of 0, 1, 2, the image's direction is not the
        identity, or *value* is outside the image.

    Examples
    --------
    >>> import SimpleITK as sitk
    >>> image = sitk.GetImageFromArray(np.arange(24, dtype=np.float32).reshape(2, 3, 4))  # (z, y, x)
    >>> image.SetOrigin((10.0, 20.0, 30.0))
    >>> image.SetSpacing((0.5, 1.0, 2.0))
    >>> plane, extent = world_plane(image, axis=2, value=32.0, horizontal_axis=0)  # z = 32 mm: z index 1
    >>> plane.shape, extent
    ((3, 4), (9.75, 11.75, 19.5, 22.5))
    """
    import SimpleITK as sitk

    if axis not in (0, 1, 2) or horizontal_axis not in (0, 1, 2) or axis == horizontal_axis:
        raise ValueError(f"axis={axis} and horizontal_axis={horizontal_axis}: pass two different world "
                         "axes among 0, 1 and 2 (x, y, z).")
    if image.GetDimension() != 3 or not np.allclose(image.GetDirection(), np.eye(3).ravel()):
        raise ValueError(f"world_plane() needs a 3-D image with identity direction; got dimension "
                         f"{image.GetDimension()} and direction {image.GetDirection()}. Reorient it "
                         "with reorient(), whose RAS/MICe and PIR/CCFv3 images have identity direction.")
    origin, spacing, size = image.GetOrigin(), image.GetSpacing(), image.GetSize()
    index = round((value - origin[axis]) / spacing[axis])
    if not 0 <= index < size[axis]:
        low, high = origin[axis], origin[axis] + spacing[axis] * (size[axis] - 1)
        raise ValueError(f"World coordinate {value} mm along axis {axis} is outside the image "
                         f"({low:g} to {high:g} mm): pick a value in that range.")
    cut = [slice(None)] * 3
    cut[2 - axis] = index  # numpy axes are (z, y, x)
    plane = sitk.GetArrayViewFromImage(image)[tuple(cut)]
    rest = [a for a in (0, 1, 2) if a != axis]  # plane rows follow rest[1], columns rest[0]
    if horizontal_axis != rest[0]:
        plane, rest = plane.T, rest[::-1]
    low = [origin[a] - spacing[a] / 2 for a in rest]
    high = [origin[a] + spacing[a] * (size[a] - 0.5) for a in rest]
    return np.where(plane < 0, np.nan, plane), (low[0], high[0], low[1], high[1])

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
    with atomic_path(path, suffix=ext) as tmp:
        if ext == ".mnc" and out.GetNumberOfComponentsPerPixel() == 1 and out.GetDimension() == 3 \
                and out.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
            write_minc(tmp, sitk.GetArrayViewFromImage(out),
                       *geometry_from_itk(out.GetOrigin(), out.GetSpacing(), out.GetDirection()))
        elif ext == ".mnc":
            with _MINC_LOCK:
                sitk.WriteImage(out, str(tmp))
        else:
            sitk.WriteImage(out, str(tmp), useCompression=ext in (".nrrd", ".mha"))
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
    data = pir_to_ras(array) if orientation == "RAS" else array
    if ext != ".mnc":
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(data))
        image.SetOrigin(origin)
        image.SetSpacing(spacing)
        image.SetDirection(direction)
        return write_volume(image, out_path)
    with atomic_path(out_path, suffix=ext) as tmp:
        write_minc(tmp, data, *geometry_from_itk(origin, spacing, direction))
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
