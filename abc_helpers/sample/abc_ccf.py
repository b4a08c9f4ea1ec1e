"""The ABC generator's ``Allen-CCF-2020`` files (100 um volumes, parcellation tables) from the sample brain.

The annotation is the sample world's one synthetic brain (:mod:`.brain`) at the resolution it is
drawn at, 100 um: the very volume the VBN channels are labelled on (:mod:`.vbn`), so a channel's
structure is the annotation at its coordinate, as on the real data, where both come from the same
CCF annotation. Voxel ``[i, j, k]`` at CCF (AP, DV, LR) = ``(i, j, k) * 100`` um, SimpleITK x = AP,
y = DV, z = LR with spacing in mm, as the real ``annotation_10.nii.gz`` is at 10 um. Its values
are ``parcellation_index`` values (row numbers of the real structure tree), 0 outside the brain.
The MERFISH cells (:mod:`.abc_merfish`) sit in 16 coronal sections of it, 600 um apart.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd

from . import brain

#: Voxel size of the sample's ABC CCF volumes (the real ones are 10 um): the sample brain's own.
RESOLUTION_UM = brain.BASE_RESOLUTION_UM
SPACING_MM = RESOLUTION_UM / 1000
#: Thickness of a MERFISH section (mm): the z step of the reconstructed coordinates and volumes.
SECTION_THICKNESS_MM = 0.2

#: Division acronym -> the region key of the 10x class mix (abc_cells.REGION_CLASSES).
DIVISION_REGION = {"Isocortex": "Isocortex", "OLF": "OLF", "HPF": "HPF", "CTXsp": "CTXsp",
                   "STR": "STR", "PAL": "PAL", "TH": "TH", "HY": "HY", "MB": "MB", "P": "P",
                   "MY": "MY", "CB": "CB"}
_DIVISIONS = {315: "Isocortex", 698: "OLF", 1089: "HPF", 703: "CTXsp", 477: "STR", 803: "PAL",
              549: "TH", 1097: "HY", 313: "MB", 771: "P", 354: "MY", 512: "CB", 1009: "lfbs",
              73: "VS"}
_CATEGORIES = {8: "grey", 1009: "fiber tracts", 73: "VS"}


def structure_tree() -> pd.DataFrame:
    """Return the real Allen structure tree shipped with the package (row order = parcellation index)."""
    return brain.structure_tree()


def build_annotation() -> np.ndarray:
    """Return the ABC annotation volume: the sample brain at 100 um as ``parcellation_index`` values.

    Returns
    -------
    numpy.ndarray
        ``uint32``, indexed ``[AP, DV, LR]`` (132 x 80 x 114); 0 outside the brain.
    """
    ids = brain.annotation(RESOLUTION_UM)
    values, inverse = np.unique(ids, return_inverse=True)
    return brain.parcellation_index(values)[inverse].reshape(ids.shape)


def boundary(annotation: np.ndarray) -> np.ndarray:
    """Return 1 where a voxel's label differs from a face neighbour's, else 0 (``uint32``)."""
    edge = np.zeros(annotation.shape, dtype=bool)
    for axis in range(3):
        diff = np.diff(annotation.astype(np.int64), axis=axis) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis] = slice(0, -1)
        hi[axis] = slice(1, None)
        edge[tuple(lo)] |= diff
        edge[tuple(hi)] |= diff
    return (edge & (annotation > 0)).astype(np.uint32)


def template(annotation: np.ndarray, seed: int = 3) -> np.ndarray:
    """Return a synthetic average template (``uint16``): tissue contrast by region plus noise."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(90, 220, size=int(annotation.max()) + 1)
    level[0] = 0
    image = level[annotation] + rng.normal(0, 6, size=annotation.shape) * (annotation > 0)
    return np.clip(image, 0, 65535).astype(np.uint16)


def nii_gz_bytes(volume_xyz_last: np.ndarray, spacing: tuple[float, float, float], scratch: Path) -> bytes:
    """Encode a volume as ``.nii.gz`` bytes with SimpleITK, gzip'ed with ``mtime=0``.

    Parameters
    ----------
    volume_xyz_last : numpy.ndarray
        The array in SimpleITK order ``[z, y, x]``.
    spacing : tuple of float
        Voxel size in mm along x, y, z.
    scratch : Path
        A folder for the temporary uncompressed file.
    """
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume_xyz_last)
    image.SetSpacing(spacing)
    image.SetOrigin((0.0, 0.0, 0.0))
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / "volume.nii"
    sitk.WriteImage(image, str(path), useCompression=False)
    data = path.read_bytes()
    path.unlink()
    return gzip.compress(data, compresslevel=6, mtime=0)


def parcellation_tables(tree: pd.DataFrame, annotation: np.ndarray) -> dict[str, pd.DataFrame]:
    """Return the Allen-CCF-2020 metadata tables (paths below the directory version -> frame).

    One parcellation per structure present in the volume (plus ``unassigned``), with five term
    sets: organ, category, division, structure, substructure.
    """
    indices = np.unique(annotation)
    counts = np.bincount(annotation.ravel(), minlength=int(indices.max()) + 1)
    by_id = tree.set_index("id")
    levels = ("organ", "category", "division", "structure", "substructure")

    def term_of(sid: int) -> tuple[str, str, str]:
        return (by_id.at[sid, "acronym"], by_id.at[sid, "name"], by_id.at[sid, "color_hex_triplet"])

    # one row per parcellation: its index and its (acronym, name, colour) at each level
    rows: list[tuple[int, dict[str, tuple[str, str, str]]]] = []
    for idx in indices:
        if idx == 0:
            rows.append((0, dict.fromkeys(levels, ("unassigned", "unassigned", "000000"))))
            continue
        node = tree.iloc[int(idx)]
        path = [int(p) for p in node["structure_id_path"].strip("/").split("/")]
        category = next(s for s in path if s in _CATEGORIES)
        division = next((s for s in reversed(path) if s in _DIVISIONS), category)
        structure = brain.structure_level(int(node["id"]))  # VISp for VISp5, DG for DG-sg
        rows.append((int(idx), {"organ": ("brain", "brain", "FFFFFF"), "category": term_of(category),
                                "division": term_of(division), "structure": term_of(structure),
                                "substructure": term_of(int(node["id"]))}))
    voxel_mm3 = SPACING_MM ** 3
    parcellation = pd.DataFrame({
        "label": [f"AllenCCF-2020-{index:04d}" for index, _ in rows],
        "parcellation_index": [index for index, _ in rows],
        "voxel_count": [int(counts[index]) for index, _ in rows],
        "volume_mm3": [round(int(counts[index]) * voxel_mm3, 6) for index, _ in rows],
    })
    term_set = pd.DataFrame({
        "label": [f"CCF2020_{lv}" for lv in levels], "name": list(levels),
        "description": [f"The {lv} level of the Allen CCF 2020 parcellation (sample world)."
                        for lv in levels],
        "order": range(len(levels)), "parcellation_terminology_label": "CCF2020",
    })
    terms: dict[tuple[str, str], dict[str, object]] = {}
    for lv_order, lv in enumerate(levels):
        for _, at_level in rows:
            acronym, name, color = at_level[lv]
            key = (lv, acronym)
            if key not in terms:
                parent = at_level[levels[lv_order - 1]][0] if lv_order else ""
                terms[key] = {"label": f"CCF2020_{lv}_{acronym}", "name": name, "acronym": acronym,
                              "parcellation_term_set_label": f"CCF2020_{lv}",
                              "parent_term_label": f"CCF2020_{levels[lv_order - 1]}_{parent}" if parent else "",
                              "term_set_order": lv_order, "color_hex_triplet": f"#{color}"}
    term = pd.DataFrame(list(terms.values()))
    term["term_order"] = term.groupby("term_set_order").cumcount()
    memberships: list[dict[str, object]] = []
    for index, at_level in rows:
        for lv_order, lv in enumerate(levels):
            acronym, name, color = at_level[lv]
            memberships.append({
                "parcellation_label": f"AllenCCF-2020-{index:04d}",
                "parcellation_term_label": f"CCF2020_{lv}_{acronym}",
                "parcellation_term_set_label": f"CCF2020_{lv}",
                "parcellation_index": index, "parcellation_term_name": name,
                "parcellation_term_acronym": acronym, "parcellation_term_set_name": lv,
                "term_set_order": lv_order, "color_hex_triplet": f"#{color}",
            })
    membership = pd.DataFrame(memberships)
    tables = {
        "parcellation.csv": parcellation,
        "parcellation_term.csv": term,
        "parcellation_term_set.csv": term_set,
        "parcellation_term_set_membership.csv": term[["label", "parcellation_term_set_label",
                                                      "term_set_order", "term_order"]].rename(
            columns={"label": "parcellation_term_label"}),
        "parcellation_to_parcellation_term_membership.csv": membership,
    }
    voxels = membership.groupby("parcellation_term_label")["parcellation_index"].apply(
        lambda s: int(counts[s.to_numpy()].sum()))
    with_counts = term.copy()
    with_counts["voxel_count"] = with_counts["label"].map(voxels).fillna(0).astype(int)
    with_counts["volume_mm3"] = (with_counts["voxel_count"] * voxel_mm3).round(6)
    tables["views/parcellation_term_with_counts.csv"] = with_counts
    for field in ("acronym", "name", "color", "red", "green", "blue"):
        view = pd.DataFrame({"parcellation_index": [index for index, _ in rows]})
        for lv in levels:
            acr_name_color = [at_level[lv] for _, at_level in rows]
            if field == "acronym":
                view[lv] = [a for a, _, _ in acr_name_color]
            elif field == "name":
                view[lv] = [n for _, n, _ in acr_name_color]
            elif field == "color":
                view[lv] = [f"#{c}" for _, _, c in acr_name_color]
            else:
                channel = {"red": 0, "green": 1, "blue": 2}[field]
                view[lv] = [int(c.zfill(6)[2 * channel:2 * channel + 2], 16) for _, _, c in acr_name_color]
        tables[f"views/parcellation_to_parcellation_term_membership_{field}.csv"] = view
    return tables


def division_of_index(tree: pd.DataFrame, annotation: np.ndarray) -> dict[int, str]:
    """Return the division acronym (``Isocortex``, ``TH``, ``lfbs``...) of each index present."""
    out = {}
    for idx in np.unique(annotation):
        if idx == 0:
            continue
        path = [int(p) for p in tree.iloc[int(idx)]["structure_id_path"].strip("/").split("/")]
        out[int(idx)] = next((_DIVISIONS[s] for s in reversed(path) if s in _DIVISIONS), "lfbs")
    return out


#: AP positions (mm, on the voxel grid, every 600 um) of the 16 MERFISH sections and their real-style labels.
SECTIONS = tuple((f"C57BL6J-638850.{round(5 + (ap - 2.0) / 0.2):02d}", round(ap, 1))
                 for ap in np.arange(1.4, 10.7, 0.6))


def section_index(ap_mm: float) -> int:
    """Return the AP voxel index (in the ABC volumes) of a section at *ap_mm*."""
    return int(np.floor(ap_mm / SPACING_MM + 0.5))
