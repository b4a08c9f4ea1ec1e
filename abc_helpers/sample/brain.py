"""The one synthetic mouse brain of the sample world: a CCF annotation every dataset is drawn from.

The geometry is **synthetic**: superellipsoids and boxes in CCF micrometres, drawn to look roughly
like a mouse brain, with the topology of the real one along the VBN probes. What is real: the
structure ids, acronyms, names and the tree (``data/allen_structure_tree.csv``, the Allen CCFv3
ontology), the CCF extent (AP 13200, DV 8000, LR 11400 um), the axis order ``[AP, DV, LR]``
(anterior to posterior, dorsal to ventral, left to right, as the Allen ``annotation_<res>.nrrd``
read with pynrrd), and the Allen convention that voxel ``i`` of a volume at resolution ``r`` sits
at CCF coordinate ``i * r`` um. No real CCF annotation is used: none is shipped inside a package
that installs offline here (the Allen CCF annotation is downloaded at run time by the AllenSDK,
brainglobe and iblatlas, under the Allen Institute terms of use).

The cerebrum's cortex, white matter and dorsal hippocampus lie in layers parallel to the pia, by a
smooth depth below it (:func:`pia_depth_um`, in each coronal plane); each cortical voxel takes the
area of its foot on the pia (:func:`pia_foot`), so areas are side by side, in straight columns,
never stacked. From the pia down: the isocortex's layers 1, 2/3, 4, 5, 6a, 6b
(:data:`LAYER_ENDS_UM`), white matter (``cc``, ``ec``, ``alv``), the CA fields' strata oriens,
pyramidale, radiatum, lacunosum-moleculare and the dentate gyrus's molecular, granule cell,
polymorph, granule cell and molecular layers (:data:`HIPPOCAMPAL_LAYERS_UM`), then the thalamus or
the midbrain, nuclei side by side. A probe going down a column (:func:`pia_entry`) meets them in
that order.

The brain is defined once at 100 um (``[132, 80, 114]``, uint32 structure ids, 0 outside the brain,
left and right hemispheres mirror images about LR 5700 um) and sampled at coarser resolutions.
The ABC ``Allen-CCF-2020`` sample volume is the 100 um brain itself, the very volume the VBN
channels are labelled on (as the real channels are labelled on the CCF annotation ABC serves);
:func:`annotation` ``(200)``, padded to 67 x 41 x 58, is the Allen Mouse Brain Atlas ISH grid
annotation. The VBN probe tracks, the MERFISH cells and the ISH expression patterns of the sample
world are all drawn from it, so the datasets agree with each other where the real ones do.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

#: The CCFv3 extent in micrometres, (AP, DV, LR).
EXTENT_UM = (13200, 8000, 11400)
#: The resolution the brain is drawn at; other resolutions sample it.
BASE_RESOLUTION_UM = 100
#: The midline (LR, um): the hemispheres are mirror images about it.
MIDLINE_UM = 5700
#: The resolutions :func:`annotation` can give (each a multiple of the base resolution).
RESOLUTIONS_UM = (100, 200, 400)

_TREE = Path(__file__).with_name("data") / "allen_structure_tree.csv"
#: The cerebrum: a superellipsoid (centre and radii in um, AP, DV, LR-from-the-midline; power 3).
CEREBRUM_CENTRE_UM = (6300.0, 3700.0, 0.0)
CEREBRUM_RADII_UM = (4300.0, 3300.0, 4900.0)
_POWER = 3.0
_LAYERS = ("1", "2/3", "4", "5", "6a", "6b")
#: Depth below the pia (um) where each cortical layer ends. Each layer is at least 150 um thick, more
#: than the diagonal of a 100 um voxel's face (141 um), so a probe going down its column meets every
#: one of them in the 100 um annotation (layers 1, 4 and 6b are thicker than the real ones for that).
LAYER_ENDS_UM = (150.0, 400.0, 550.0, 750.0, 950.0, 1100.0)
_CORTEX_END_UM = LAYER_ENDS_UM[-1]
#: The white matter under the cortex (corpus callosum, external capsule, alveus) ends here.
WHITE_MATTER_END_UM = 1250.0
#: The dorsal hippocampus under it, in layers parallel to the pia, from the top: the CA fields'
#: strata (oriens, pyramidal, radiatum, lacunosum-moleculare), then the dentate gyrus's upper blade
#: (molecular, granule cell), its polymorph layer and its lower blade (granule cell, molecular):
#: (layer, depth below the pia where it ends, um), in the real order.
HIPPOCAMPAL_LAYERS_UM: tuple[tuple[str, float], ...] = (
    ("so", 1400.0), ("sp", 1550.0), ("sr", 1750.0), ("slm", 1900.0), ("DG-mo", 2050.0),
    ("DG-sg", 2200.0), ("DG-po", 2400.0), ("DG-sg", 2550.0), ("DG-mo", 2700.0))
HIPPOCAMPUS_END_UM = HIPPOCAMPAL_LAYERS_UM[-1][1]


# -- the real structure tree ---------------------------------------------------------------------
@lru_cache(maxsize=1)
def structure_tree() -> pd.DataFrame:
    """Return the real Allen structure tree shipped with the sample (row number = parcellation index).

    Returns
    -------
    pandas.DataFrame
        Columns ``id``, ``name``, ``acronym``, ``parent_structure_id``, ``structure_id_path``
        (``/997/8/.../id/``) and ``color_hex_triplet``; row 0 is ``void`` (id 0, outside the brain).
    """
    return pd.read_csv(_TREE, usecols=["id", "name", "acronym", "parent_structure_id",
                                       "structure_id_path", "color_hex_triplet"],
                       dtype={"color_hex_triplet": str})


@lru_cache(maxsize=1)
def _ids_by_acronym() -> dict[str, int]:
    tree = structure_tree()
    return dict(zip(tree["acronym"], tree["id"].astype(int), strict=True))


@lru_cache(maxsize=1)
def _paths() -> dict[int, tuple[int, ...]]:
    tree = structure_tree()
    return {int(i): tuple(int(p) for p in str(path).strip("/").split("/")) if i else ()
            for i, path in zip(tree["id"], tree["structure_id_path"], strict=True)}


def structure_id(acronym: str) -> int:
    """Return the real Allen structure id of *acronym* (e.g. ``'VISp'`` -> 385).

    Raises
    ------
    KeyError
        If *acronym* is not in the Allen structure tree.
    """
    ids = _ids_by_acronym()
    if acronym not in ids:
        msg = (f"Structure acronym '{acronym}' is not in the Allen structure tree "
               f"({_TREE.name}); acronyms are case-sensitive, e.g. 'VISp', 'CA1', 'DG-sg'.")
        raise KeyError(msg)
    return ids[acronym]


def acronym(structure: int) -> str:
    """Return the acronym of structure id *structure* (``'void'`` for 0, outside the brain)."""
    tree = structure_tree()
    return str(tree["acronym"].to_numpy()[_row_of_id()[int(structure)]])


@lru_cache(maxsize=1)
def _row_of_id() -> dict[int, int]:
    return {int(i): row for row, i in enumerate(structure_tree()["id"])}


def ancestors(structure: int) -> tuple[int, ...]:
    """Return the ids from ``root`` (997) down to *structure* itself, from the tree's id path."""
    return _paths()[int(structure)]


def is_within(structure: int, ancestor: int) -> bool:
    """Say whether structure id *structure* is *ancestor* or one of its descendants."""
    return int(ancestor) in _paths().get(int(structure), ())


def descendants(acronym_or_id: str | int) -> frozenset[int]:
    """Return the ids of a structure and of every structure below it in the tree."""
    sid = structure_id(acronym_or_id) if isinstance(acronym_or_id, str) else int(acronym_or_id)
    return _descendants(sid)


@cache
def _descendants(sid: int) -> frozenset[int]:
    return frozenset(s for s, path in _paths().items() if sid in path)


#: Structures whose children in the annotation are layers or parts, not structures of their own.
_LAYERED = ("DG", "CBX", "CA1", "CA2", "CA3")
_CORTICAL_LAYERS = ("1", "2", "2/3", "3", "4", "4/5", "5", "6a", "6b")


def structure_level(structure: int) -> int:
    """Return the structure a layer belongs to, or *structure* itself (0 stays 0).

    Cortical layers give their area (``VISp5`` -> ``VISp``), the dentate gyrus's layers ``DG``,
    the CA fields' strata their field (``CA1sp`` -> ``CA1``) and the cerebellar cortex's layers
    ``CBX``: the level the ABC parcellation calls
    ``structure`` (its ``substructure`` is the annotation's own leaf) and the level the real VBN
    tables name channels by.
    """
    if not structure:
        return 0
    path = ancestors(structure)
    if len(path) < 2:
        return int(structure)
    parent = path[-2]
    if parent in {structure_id(a) for a in _LAYERED}:
        return int(parent)
    own, area = acronym(structure), acronym(parent)
    if structure_id("Isocortex") in path and own.startswith(area) and own[len(area):] in _CORTICAL_LAYERS:
        return int(parent)
    return int(structure)


def parcellation_index(structures: Iterable[int] | np.ndarray) -> np.ndarray:
    """Return the parcellation index (row of the structure tree) of each structure id; 0 stays 0."""
    rows = _row_of_id()
    values = np.asarray(structures)
    return np.array([rows[int(s)] for s in values.ravel()], dtype=np.uint32).reshape(values.shape)


# -- the annotation ------------------------------------------------------------------------------
def shape(resolution_um: int) -> tuple[int, int, int]:
    """Return the shape ``(AP, DV, LR)`` of the annotation at *resolution_um* (e.g. 132, 80, 114 at 100)."""
    return tuple(int(np.ceil(e / resolution_um)) for e in EXTENT_UM)  # type: ignore[return-value]


@lru_cache(maxsize=len(RESOLUTIONS_UM))
def annotation(resolution_um: int = BASE_RESOLUTION_UM) -> np.ndarray:
    """Return the synthetic annotation: uint32 structure ids indexed ``[AP, DV, LR]``, read-only.

    Voxel ``[i, j, k]`` sits at CCF (AP, DV, LR) = ``(i, j, k) * resolution_um`` um; 0 is outside
    the brain. Coarser volumes sample the 100 um one at those points.

    Parameters
    ----------
    resolution_um : int
        One of :data:`RESOLUTIONS_UM`.

    Raises
    ------
    ValueError
        If *resolution_um* is not a multiple of the 100 um base resolution in :data:`RESOLUTIONS_UM`.

    Examples
    --------
    >>> annotation(100).shape, annotation(200).shape
    ((132, 80, 114), (66, 40, 57))
    >>> [acronym(s) for s in structure_at([[9400, 1600, 7550], [9400, 1600, 3850], [8000, 3300, 7000]])]
    ['VISp5', 'VISp5', 'LP']
    """
    if resolution_um not in RESOLUTIONS_UM:
        msg = (f"No sample annotation at {resolution_um} um: the sample brain is drawn at "
               f"{BASE_RESOLUTION_UM} um and sampled at {RESOLUTIONS_UM} um; pick one of those.")
        raise ValueError(msg)
    if resolution_um == BASE_RESOLUTION_UM:
        volume = _draw()
    else:
        step = resolution_um // BASE_RESOLUTION_UM
        volume = np.ascontiguousarray(_draw()[::step, ::step, ::step])
    volume.flags.writeable = False
    return volume


def voxel_index(points_um: np.ndarray | Iterable, resolution_um: int = BASE_RESOLUTION_UM) -> np.ndarray:
    """Return the nearest voxel ``(i, j, k)`` of CCF points ``(AP, DV, LR)`` in um (rounded, int64)."""
    points = np.asarray(points_um, dtype=float).reshape(-1, 3)
    return np.floor(points / resolution_um + 0.5).astype(np.int64)


def structure_at(points_um: np.ndarray | Iterable, resolution_um: int = BASE_RESOLUTION_UM) -> np.ndarray:
    """Return the structure id of the annotation at CCF points ``(AP, DV, LR)`` um (0 outside).

    Each point takes the value of its nearest voxel (voxel ``i`` at ``i * resolution_um``);
    points outside the volume are 0.
    """
    volume = annotation(resolution_um)
    index = voxel_index(points_um, resolution_um)
    inside = np.all((index >= 0) & (index < np.array(volume.shape)), axis=1)
    out = np.zeros(len(index), dtype=np.uint32)
    i, j, k = index[inside].T
    out[inside] = volume[i, j, k]
    return out


def surface_dv(ap_um: np.ndarray | float, lr_um: np.ndarray | float) -> np.ndarray:
    """Return the DV (um) of the dorsal brain surface above points (AP, LR) in um (nearest voxel column)."""
    volume = annotation(BASE_RESOLUTION_UM)
    i = np.clip(np.floor(np.asarray(ap_um, float) / BASE_RESOLUTION_UM + 0.5).astype(int), 0, volume.shape[0] - 1)
    k = np.clip(np.floor(np.asarray(lr_um, float) / BASE_RESOLUTION_UM + 0.5).astype(int), 0, volume.shape[2] - 1)
    column = volume[i, :, k] > 0  # [..., DV]
    return np.where(column.any(axis=-1), column.argmax(axis=-1), volume.shape[1]) * float(BASE_RESOLUTION_UM)


def mask(acronym_or_id: str | int, resolution_um: int = BASE_RESOLUTION_UM) -> np.ndarray:
    """Return the voxels of a structure and its descendants (bool, ``[AP, DV, LR]``)."""
    volume = annotation(resolution_um)
    present = np.unique(volume)
    wanted = descendants(acronym_or_id)
    return np.isin(volume, [s for s in present if int(s) in wanted])


def present_structures() -> list[str]:
    """Return the acronyms of the structures the brain contains (tree order)."""
    ids = set(np.unique(annotation(BASE_RESOLUTION_UM)).tolist()) - {0}
    tree = structure_tree()
    return tree.loc[tree["id"].isin(ids), "acronym"].tolist()


# -- the pia: depth below it, its foot on the pia, the column through it ---------------------------
def _coronal_radii(ap) -> tuple[np.ndarray, np.ndarray]:
    """Return the DV and LR half-axes (um) of the cerebrum's coronal outline at *ap* (0 outside)."""
    u_ap = np.abs(np.asarray(ap, float) - CEREBRUM_CENTRE_UM[0]) / CEREBRUM_RADII_UM[0]
    scale = np.cbrt(np.clip(1.0 - u_ap ** _POWER, 0.0, None))
    return CEREBRUM_RADII_UM[1] * scale, CEREBRUM_RADII_UM[2] * scale


def pia_depth_um(ap, dv, d) -> np.ndarray:
    """Return the depth (um) of points of the cerebrum below its pia, in their coronal plane.

    Each coronal section of the cerebrum is a superellipse; a point's depth is the *t* that
    shrinks its half-axes to ``R - t`` and puts the point on the shrunk outline: the pia's
    parallel curves (exact over the dorsal top and the sides), so that layers drawn by depth follow
    the pia. *d* is the distance from the midline (um). Solved by bisection, vectorised.
    """
    r_dv, r_lr = _coronal_radii(ap)
    x_dv = np.abs(np.asarray(dv, float) - CEREBRUM_CENTRE_UM[1])
    x_lr = np.abs(np.asarray(d, float))
    x_dv, x_lr, r_dv, r_lr = np.broadcast_arrays(x_dv, x_lr, r_dv, r_lr)
    lo = np.full(x_dv.shape, -3000.0)
    hi = np.minimum(r_dv, r_lr) - 1e-6
    for _ in range(40):
        t = (lo + hi) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            inside = (x_dv / (r_dv - t)) ** _POWER + (x_lr / (r_lr - t)) ** _POWER <= 1.0
        lo = np.where(inside, t, lo)
        hi = np.where(inside, hi, t)
    return (lo + hi) / 2


def pia_foot(ap, dv, d, depth_um) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the foot on the pia (AP, DV, d um) of points at *depth_um*: their cortical column's top.

    A column is the straight line, in a coronal plane, of the points
    ``c + (foot - c) * (R - t) / R`` for depths *t*: every point of it has the same foot, so
    the same cortical area.
    """
    r_dv, r_lr = _coronal_radii(ap)
    foot_dv = CEREBRUM_CENTRE_UM[1] + (np.asarray(dv, float) - CEREBRUM_CENTRE_UM[1]) * r_dv / (r_dv - depth_um)
    foot_d = np.asarray(d, float) * r_lr / (r_lr - depth_um)
    return np.asarray(ap, float) + 0 * foot_dv, foot_dv, foot_d


def pia_entry(ap_um: np.ndarray | float, lr_um: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Return the point of the dorsal pia above (AP, LR) and the unit direction up its column.

    Parameters
    ----------
    ap_um, lr_um : array_like
        CCF AP and LR (um) of entry points over the dorsal cerebrum.

    Returns
    -------
    tuple of numpy.ndarray
        ``(n, 3)`` points (AP, DV, LR) um on the pia, and ``(n, 3)`` unit vectors (AP, DV, LR)
        pointing out of the brain along the cortical column there (in the coronal plane, nearly
        perpendicular to the pia): a probe going down ``-up`` from the entry stays in one column,
        meeting the layers in order.

    Raises
    ------
    ValueError
        If a point (AP, LR) is not over the cerebrum.
    """
    ap = np.atleast_1d(np.asarray(ap_um, float))
    lr = np.atleast_1d(np.asarray(lr_um, float))
    r_dv, r_lr = _coronal_radii(ap)
    with np.errstate(divide="ignore", invalid="ignore"):
        u_lr = (lr - MIDLINE_UM) / r_lr
    rest = 1.0 - np.abs(u_lr) ** _POWER
    if np.any(~(rest > 0)) or np.any(r_dv <= 0):
        msg = ("An entry point (AP, LR) is not over the sample cerebrum "
               f"(AP {CEREBRUM_CENTRE_UM[0]:g} +- {CEREBRUM_RADII_UM[0]:g} um): pick one over the dorsal cortex.")
        raise ValueError(msg)
    u_dv = -np.cbrt(rest)
    dv = CEREBRUM_CENTRE_UM[1] + r_dv * u_dv
    up = np.column_stack([np.zeros_like(ap), u_dv, u_lr])  # d(point)/d(-depth) along the column
    up /= np.linalg.norm(up, axis=1, keepdims=True)
    return np.column_stack([ap, dv, lr]), up


# -- drawing -------------------------------------------------------------------------------------
def _superellipsoid(a, d, lr, centre, radii, power) -> np.ndarray:
    return sum(np.abs((x - c) / r) ** p for x, c, r, p in zip((a, d, lr), centre, radii, power,
                                                               strict=True)) <= 1.0


def _within(x, lo, hi) -> np.ndarray:
    return (x >= lo) & (x < hi)


@lru_cache(maxsize=1)
def _draw() -> np.ndarray:
    """Draw the brain at 100 um (see the module docstring); deterministic, no randomness."""
    from scipy import ndimage

    res = BASE_RESOLUTION_UM
    n_ap, n_dv, n_lr = shape(res)
    # open grids: ap [n, 1, 1], dv [1, m, 1], d [1, 1, k]; masks broadcast to the volume
    ap = (np.arange(n_ap) * res)[:, None, None]
    dv = (np.arange(n_dv) * res)[None, :, None]
    d = np.abs(np.arange(n_lr) * res - MIDLINE_UM)[None, None, :]  # both hemispheres at once
    ids = _ids_by_acronym()
    out = np.zeros((n_ap, n_dv, n_lr), dtype=np.uint32)

    def put(where: np.ndarray, name: str) -> None:
        out[np.broadcast_to(where, out.shape)] = ids[name]

    # -- the outline: cerebrum, olfactory bulbs, cerebellum, brainstem ----------------------------
    cerebrum = _superellipsoid(ap, dv, d, CEREBRUM_CENTRE_UM, CEREBRUM_RADII_UM, (_POWER,) * 3)
    bulb = _superellipsoid(ap, dv, d, (1500, 3400, 950), (1400, 1500, 900), (2, 2, 2)) & (ap < 2800)
    cerebellum = _superellipsoid(ap, dv, d, (11400, 3000, 0), (1700, 2100, 4000), (2.5, 2.5, 2.5))
    cerebellum &= ~cerebrum
    stem = _superellipsoid(ap, dv, d, (10000, 5600, 0), (3400, 1500, 2000), (2.5, 2.5, 2.5))
    stem &= ~cerebrum & ~cerebellum
    brain = cerebrum | bulb | cerebellum | stem
    # the longitudinal fissure between the hemispheres, down to the corpus callosum
    top = np.where(brain.any(axis=1), brain.argmax(axis=1), n_dv) * res  # [AP, LR] in um
    below_top = dv - top[:, None, :]
    fissure = cerebrum & (d == 0) & (below_top < 1300) & _within(ap, 1800, 10300)
    brain &= ~fissure
    cerebrum &= ~fissure
    depth = ndimage.distance_transform_edt(brain)  # voxels to the nearest non-brain voxel
    theta = np.degrees(np.arctan2(d, 3700 - dv))  # 0 at the dorsal midline, 90 lateral, 180 ventral

    # the cerebrum's depth below the pia (um), smooth, and each point's foot on the pia: layers
    # follow the depth, areas the foot (straight columns), as the real cortex's do
    ap_full = np.broadcast_to(ap, out.shape)
    dv_full = np.broadcast_to(dv, out.shape)
    d_full = np.broadcast_to(d, out.shape).astype(float)
    pia = np.full(out.shape, np.inf)
    pia[cerebrum] = pia_depth_um(ap_full[cerebrum], dv_full[cerebrum], d_full[cerebrum])
    ap_s, dv_s, d_s = (np.zeros(out.shape) for _ in range(3))
    ap_s[cerebrum], dv_s[cerebrum], d_s[cerebrum] = pia_foot(
        ap_full[cerebrum], dv_full[cerebrum], d_full[cerebrum], pia[cerebrum])
    theta_s = np.degrees(np.arctan2(d_s, 3700 - dv_s))
    # the medial cortex (retrosplenial, cingulate) faces the fissure above the corpus callosum:
    # its layers run along the fissure's wall, over 400 um from it
    fissure_bottom = (top[:, None, :] + 1300)[:, :, MIDLINE_UM // res][:, :, None]
    to_fissure = np.where(_within(ap_full, 1800, 10300) & (dv_full < fissure_bottom),
                          np.maximum(d_full - res / 2, 0) * _CORTEX_END_UM / 350, np.inf)
    pia = np.minimum(pia, to_fissure)
    # the dorsal half's depth, for what lies under the hippocampus (the ventral half is nearer
    # the ventral pia)
    dorsal_pia = np.where(dv_full < CEREBRUM_CENTRE_UM[1], pia, np.inf)

    # -- brainstem and cerebellum ---------------------------------------------------------------
    put(stem, "MB")
    put(stem & (ap >= 9000) & (dv >= 4600), "P")
    put(stem & (ap >= 9000) & (dv >= 4600) & (depth <= 3.5) & (ap < 10600), "PG")
    put(stem & (ap >= 9600) & (ap < 10600) & (dv >= 4600) & (depth > 3.5), "PRNr")
    put(stem & (ap >= 10600), "MY")
    put(stem & (ap >= 10600) & (d < 1200) & (dv >= 5200) & (depth > 3.5), "IRN")
    put(stem & _within(ap, 10600, 11800) & (d < 300) & (np.cumsum(stem, axis=1) <= 2), "V4")
    cb_depth = depth * cerebellum
    put(cerebellum, "arb")
    put(cerebellum & (cb_depth <= 6.0), "CBXgr")
    put(cerebellum & (cb_depth <= 3.5), "CBXpu")
    put(cerebellum & (cb_depth <= 2.5), "CBXmo")
    nuclei = cerebellum & (cb_depth > 7.0) & _within(dv, 2600, 4200)
    put(nuclei & (d < 800), "FN")
    put(nuclei & _within(d, 800, 1600), "IP")
    put(nuclei & _within(d, 1600, 2600), "DN")

    # -- olfactory bulbs --------------------------------------------------------------------------
    only_bulb = bulb & ~cerebrum
    put(only_bulb | (bulb & (ap < 2100)), "MOB")
    put(bulb & _within(ap, 1900, 2500) & (below_top < 500) & (d < 1300), "AOB")

    # -- cerebrum: a cortical mantle with white matter under it over the deep structures ----------
    cortex = cerebrum & (pia <= _CORTEX_END_UM) & (theta_s < 112) & (ap >= 1600)
    wm = cerebrum & ~cortex & (pia <= WHITE_MATTER_END_UM) & (theta_s < 100) & (ap >= 2600)
    piriform = cerebrum & (depth <= 4.0) & (theta >= 112) & (theta < 140) & _within(ap, 2600, 7200) & (d > 1500)
    piriform &= ~cortex
    deep = cerebrum & ~cortex & ~wm & ~piriform
    # deep fillers by position, refined below
    put(deep & (ap < 2900), "AON")
    put(deep & _within(ap, 2900, 6300), "CP")
    put(deep & _within(ap, 2900, 4700) & (dv >= 5400), "OT")
    put(deep & _within(ap, 6300, 8800) & (dv < 4700), "TH")
    put(deep & _within(ap, 4700, 8800) & (dv >= 4700), "HY")
    put(deep & (ap >= 8800), "MB")
    put(deep & _within(ap, 7600, 8800) & (d < 300) & (dv < 4700), "MB")
    # the dorsal hippocampus: the deep zone's top under the posterior cortex, in layers parallel
    # to the pia (labelled below)
    hip = (deep & _within(ap, 6400, 9900) & _within(d_s, 300, 3900) & (theta_s < 75)
           & (dorsal_pia <= HIPPOCAMPUS_END_UM))

    # striatum, septum, pallidum
    put(deep & _within(ap, 2600, 5000) & _within(d, 300, 1800) & _within(dv, 4300, 5600), "ACB")
    put(deep & _within(ap, 3200, 5800) & _within(d, 100, 700) & _within(dv, 2200, 4400), "LSr")
    put(deep & _within(ap, 3400, 5200) & (d < 100) & _within(dv, 3800, 4900), "MS")
    put(deep & _within(ap, 3400, 6200) & _within(d, 700, 1000) & _within(dv, 2200, 3500), "VL")
    put(deep & _within(ap, 5000, 6800) & _within(d, 1800, 2700) & _within(dv, 3600, 4800), "GPe")
    put(deep & _within(ap, 5200, 7000) & _within(d, 1450, 1800) & _within(dv, 3400, 5400), "int")
    put(deep & _within(ap, 4300, 6300) & _within(d, 600, 2600) & _within(dv, 5000, 5700), "SI")
    ventral_surface = cerebrum & (depth <= 4.0) & (theta > 120)
    put(ventral_surface & _within(ap, 2900, 5300) & (d < 2300), "OT")

    # thalamus (targets of the VBN probes: LP, LGd, LGv, MG, PoT, POL, SGN ...), placed by depth
    # below the hippocampus (in 100 um voxels, from the pia's depth), side by side across AP and LR
    below = np.minimum((dorsal_pia - HIPPOCAMPUS_END_UM) / res, 29.0)  # 29: the ventral half
    th = deep & ~hip & (out == ids["TH"])
    for name, ap_r, d_r, t_r in (
            ("AV", (6300, 6900), (300, 1200), (-4, 9)),
            ("LD", (6300, 7300), (800, 1800), (-4, 5)),
            ("MD", (6300, 7600), (0, 700), (-4, 13)),
            ("PO", (6600, 7700), (400, 1500), (0, 4)),
            ("VPM", (6300, 7600), (800, 1700), (2, 30)),
            ("VPL", (6300, 7600), (1700, 2500), (2, 30)),
            ("RT", (6300, 7300), (2500, 2900), (-4, 21)),
            ("LP", (7300, 8800), (700, 1500), (-4, 6)),
            ("PoT", (7300, 8800), (700, 1500), (6, 30)),
            ("LGd", (6700, 8800), (1500, 2400), (-4, 5)),
            ("LGv", (6700, 8800), (1500, 2400), (5, 30)),
            ("POL", (7300, 8800), (2400, 3000), (-4, 30)),
            ("opt", (6500, 8800), (3000, 3300), (-4, 30)),
            ("Eth", (8000, 8600), (300, 700), (-4, 6)),
):
        put(th & _within(ap, *ap_r) & _within(d, *d_r) & _within(below, *t_r), name)
    put(deep & _within(ap, 6200, 8200) & (d == 0) & _within(dv, 3500, 6300), "V3")

    # hypothalamus and amygdala
    put(deep & _within(ap, 5500, 8800) & (dv >= 4700) & (d >= 2000), "BMA")
    hy = deep & (out == ids["HY"])
    for name, ap_r, d_r, dv_r in (
            ("LHA", (5200, 8500), (800, 1700), (4700, 6400)),
            ("ZI", (6500, 7800), (1200, 2300), (4300, 4800)),
            ("MPO", (4700, 5800), (100, 700), (5000, 6600)),
            ("PVH", (5800, 6600), (100, 500), (4700, 5300)),
            ("DMH", (6800, 7800), (100, 700), (5000, 5700)),
            ("VMH", (6800, 7800), (300, 900), (5700, 6400)),
            ("ARH", (7000, 8100), (100, 400), (6200, 7000))):
        put(hy & _within(ap, *ap_r) & _within(d, *d_r) & _within(dv, *dv_r), name)
    put(deep & _within(ap, 5800, 7300) & _within(d, 2300, 2900) & _within(dv, 4800, 5600), "CEA")
    put(deep & _within(ap, 5800, 7600) & _within(d, 1700, 2300) & _within(dv, 5700, 6500), "MEA")
    put(deep & _within(ap, 6000, 8200) & _within(d, 2900, 3900) & _within(dv, 4700, 5900), "BLA")

    # midbrain (the deep targets of the VBN probes: APN, MRN, NOT, SC, PAG, ...)
    mb = deep & ~hip & (out == ids["MB"])
    for name, ap_r, d_r, t_r in (
            ("SCs", (9500, 10400), (0, 2100), (-4, 2)),
            ("SCig", (9500, 10400), (0, 2100), (2, 30)),
            ("ICc", (10100, 13200), (0, 2300), (-4, 8)),
            ("APN", (8800, 9500), (300, 2100), (-4, 5)),
            ("MRN", (8800, 9500), (300, 2100), (5, 30)),
            ("PAG", (8300, 10300), (0, 300), (0, 15)),
            ("AQ", (8300, 10300), (0, 100), (6, 10)),
            ("RN", (8700, 9300), (300, 900), (15, 20)),
            ("MGd", (8800, 9500), (2100, 3200), (-4, 5)),
            ("MGv", (8800, 9500), (2100, 3200), (5, 30)),
            ("MGm", (8800, 9500), (1800, 2100), (-4, 30)),
            ("PIL", (8800, 9500), (1500, 1800), (-4, 30)),
            ("NB", (9500, 10400), (2100, 3000), (-4, 6)),
            ("SGN", (9400, 10400), (2100, 3000), (6, 30))):
        put(mb & _within(ap, *ap_r) & _within(d, *d_r) & _within(below, *t_r) & (dv < 4600), name)
    put(deep & ~hip & _within(ap, 7600, 8800) & _within(d, 0, 300) & _within(below, -4, 6), "NOT")
    put(deep & _within(ap, 8000, 9300) & _within(d, 200, 900) & _within(dv, 4400, 5200), "VTA")
    put(deep & _within(ap, 8000, 9300) & _within(d, 900, 2100) & _within(dv, 4400, 4700), "SNc")
    put(deep & _within(ap, 8000, 9300) & _within(d, 900, 2100) & _within(dv, 4700, 5300), "SNr")
    # the ventral hippocampus, lateral and ventral behind the thalamus
    ventral_hip = deep & ~hip & (ap >= 8800) & (d >= 3000) & (dv >= 3800)
    put(ventral_hip, "CA1")
    put(ventral_hip & (d >= 3300) & _within(dv, 4300, 5300), "DG-mo")
    put(ventral_hip & (d >= 3500) & _within(dv, 4600, 5000), "DG-sg")

    # the dorsal hippocampus: CA1 over the dentate gyrus, CA2 and CA3 lateral, the subiculum behind
    field = np.where(d_s < 3050, "CA1", np.where(d_s < 3200, "CA2", "CA3"))  # by column
    upper = WHITE_MATTER_END_UM
    for layer, end in HIPPOCAMPAL_LAYERS_UM:
        band = hip & (pia > upper) & (pia <= end)
        if layer.startswith("DG"):
            put(band, layer)
        else:
            for name in ("CA1", "CA2", "CA3"):
                put(band & (field == name), f"{name}{layer}")
        upper = end
    put(hip & _within(ap, 9500, 9700) & (pia <= 1900), "ProS")
    put(hip & (ap >= 9700), "SUB")
    put(deep & ~hip & _within(ap, 9900, 10400) & _within(d, 300, 3000) & (pia <= 1900), "POST")

    # -- white matter and cortex --------------------------------------------------------------------
    put(wm & (d_s < 2500) & _within(ap, 2600, 9900), "cc")
    put(wm & (d_s >= 2500) & _within(ap, 2600, 9900), "ec")
    put(wm & (ap >= 9900), "alv")
    put(piriform, "PIR")
    # each cortical voxel takes the area of its foot on the pia and the layer of its depth
    at = np.nonzero(cortex)
    area, area_names = _cortical_areas(ap_s[at], theta_s[at], d_s[at])
    layer = np.searchsorted(np.array(LAYER_ENDS_UM), pia[at], side="left").clip(0, len(_LAYERS) - 1)
    labels = np.zeros(len(area), dtype=np.uint32)
    for code in np.unique(area):
        name = area_names[code]
        for k, suffix in enumerate(_LAYERS):
            leaf = name if name in ("ENTl", "ENTm") else f"{name}{suffix}"
            if leaf not in ids:  # agranular areas: layer 4 belongs to 2/3
                leaf = f"{name}2/3" if suffix == "4" else leaf
            labels[(area == code) & (layer == k)] = ids[leaf]
    out[at] = labels
    put(cortex & (theta_s >= 88) & _within(ap, 2600, 6800) & (pia > 850), "CLA")
    put(deep & (theta >= 105) & (depth <= 7.0) & _within(ap, 2900, 6600) & (d > 2300), "EPd")

    out[~brain] = 0
    # the left hemisphere mirrors the right one exactly; LR voxel 57 is the midline
    mid = MIDLINE_UM // res
    out[:, :, 1:mid] = out[:, :, mid + 1:2 * mid][:, :, ::-1]
    missing = [name for name in ("VISp5", "CA1sp", "DG-sg", "LP", "LGd", "APN", "CP", "CBXpu")
               if not (out == ids[name]).any()]
    if missing:  # pragma: no cover - a guard for whoever edits the geometry
        msg = f"The sample brain lost structures {missing}: check the geometry in {__file__}."
        raise RuntimeError(msg)
    return out


#: The cortical map: (area, AP from, AP to, theta from, theta to) in um and degrees of each
#: cortical voxel's foot on the pia, where theta is the angle around (DV 3700, midline): 0 at the
#: dorsal midline, 90 on the lateral surface; the mantle ends at 112 degrees (piriform cortex and
#: the ventral surface below). Later rows win. Areas roughly where the real ones are on the CCF's
#: right hemisphere; the visual areas are drawn by :data:`VISUAL_AREAS` over them.
CORTICAL_AREAS: tuple[tuple[str, int, int, float, float], ...] = (
    ("MOs", 0, 6500, 0, 60), ("VISa", 6500, 8500, 0, 56), ("VISp", 8500, 13200, 0, 54),
    ("FRP", 0, 2300, 0, 75), ("ORBl", 1600, 3400, 60, 112),
    ("AId", 2300, 5600, 85, 112), ("MOp", 2400, 6000, 20, 36), ("SSp-ul", 3400, 5300, 32, 44),
    ("SSp-ll", 5000, 6400, 18, 30), ("SSp-tr", 6300, 7200, 18, 32), ("SSp-n", 3900, 5300, 44, 54),
    ("SSp-m", 3400, 5600, 54, 64), ("SSp-bfd", 5200, 7300, 32, 56), ("SSs", 3400, 7200, 64, 74),
    ("GU", 3000, 5000, 74, 85), ("VISC", 5000, 6800, 74, 86), ("TEa", 8700, 13200, 54, 96),
    ("AUDd", 6600, 8700, 56, 66), ("AUDp", 6600, 8700, 66, 76), ("AUDv", 6600, 8700, 76, 86),
    ("TEa", 6800, 10300, 86, 96),
    ("ECT", 7200, 10300, 96, 104), ("PERI", 7600, 10300, 104, 118), ("ENTl", 8400, 13200, 94, 118),
    ("ACAd", 2800, 7000, 0, 9), ("ACAv", 3000, 6500, 0, 4), ("PL", 1800, 3200, 0, 9),
    ("RSPd", 6800, 13200, 0, 12), ("RSPv", 7200, 13200, 0, 5),
)
#: The visual areas on the dorsal posterior cortex, side by side: (area, AP from, AP to, distance
#: from the midline from, to) in um of each cortical voxel's foot on the pia. Later rows win. The
#: VBN probes (:data:`.vbn.PROBE_INSERTIONS`) enter near the middle of their target area, so a probe
#: inserted perpendicular to the cortex goes down through one area's layers.
VISUAL_AREAS: tuple[tuple[str, int, int, int, int], ...] = (
    ("VISa", 7000, 8000, 600, 2300), ("VISrl", 7000, 8200, 2300, 3800),
    ("VISp", 8200, 11600, 1600, 2900), ("VISam", 8000, 8800, 600, 1600),
    ("VISpm", 8800, 11600, 600, 1600), ("VISal", 8200, 8900, 2900, 3800),
    ("VISl", 8900, 10300, 2900, 3800), ("VISli", 10300, 10700, 2900, 3800),
    ("VISpl", 10700, 11600, 2900, 3800), ("VISpor", 10300, 11600, 3500, 3800),
)


def _cortical_areas(ap: np.ndarray, theta: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Return the index (into the returned names) of the cortical area of each foot on the pia."""
    names = ["MOs"] + [row[0] for row in CORTICAL_AREAS] + [row[0] for row in VISUAL_AREAS]
    code = np.zeros(ap.shape, dtype=np.int16)
    for k, (_, lo, hi, t_lo, t_hi) in enumerate(CORTICAL_AREAS, start=1):
        code[_within(ap, lo, hi) & (theta >= t_lo) & (theta < t_hi)] = k
    for k, (_, lo, hi, d_lo, d_hi) in enumerate(VISUAL_AREAS, start=1 + len(CORTICAL_AREAS)):
        code[_within(ap, lo, hi) & _within(d, d_lo, d_hi) & (theta < 70)] = k
    return code, names
