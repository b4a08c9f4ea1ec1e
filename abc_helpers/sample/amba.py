"""Sample generator for the Allen Mouse Brain Atlas API: SectionDataSets and 3-D expression grids.

Everything here is **synthetic**. The grid annotation is the sample world's one brain
(:mod:`.brain`, real structure ids and acronyms of the Allen structure tree) sampled on the real
200 µm grid (67 x 41 x 58 voxels, CCF PIR axes; voxel ``i`` at CCF ``i * 200`` µm, the last plane
of each axis past the CCF extent is outside the brain). Each gene is enriched in a few structures
with their descendants (Pcp2 in the Purkinje layer, Ppp1r1b in the striatum, Prox1 in the dentate
gyrus, ...), each experiment adds its own gain, noise and missing sections, and everything
outside the brain is -1 (no data), like the real ``energy.raw``. Gene and experiment metadata copy the
columns of the Allen ISH grid download script's query; the ten genes shown in its output keep their real ids, the others have
real acronyms, names and Entrez ids and synthetic experiment ids.

Files written under ``<world>/allen-api/``::

    section_data_sets.json      every SectionDataSet with its gene, plane, product and treatment
    grid_data/<id>.zip          data_set.xml, energy.mhd, energy.raw (the default download)
"""

from __future__ import annotations

import io
import json
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..cachefolder import atomic_path, atomic_write_text
from . import brain
from .world import WorldWriter

#: Grid shape in numpy (C) order: (LR, DV, AP), i.e. MetaImage DimSize 67 41 58 reversed.
GRID_SHAPE = (58, 41, 67)
#: Grid spacing in micrometres.
GRID_SPACING_UM = 200
#: Fixed date of every zip entry (deterministic bytes).
ZIP_DATE = (2012, 1, 1, 0, 0, 0)

SEED = 20240404
GENOMIC_REFERENCE_UPDATE_ID = 491928275
MOUSE_ORGANISM_ID = 2
PLANES = {"coronal": 1, "sagittal": 2}
REFERENCE_SPACES = {"coronal": 9, "sagittal": 10}
PRODUCTS = {1: {"id": 1, "abbreviation": "Mouse", "name": "Mouse Brain"},
            3: {"id": 3, "abbreviation": "DevMouse", "name": "Developing Mouse Brain"}}
TREATMENTS = {"ISH": {"id": 1, "name": "ISH"}, "NISSL": {"id": 2, "name": "NISSL"}}

# acronym, name, chromosome_id, entrez_id, homologene_id, (seed experiment id, specimen id) or None,
# regional enrichment {structure acronym: weight}. The first ten rows are the download script's real output.
GENES: list[tuple] = [
    ("Nr2f2", "nuclear receptor subfamily 2, group F, member 2", 52, 11819, 7628, (112646890, 710945),
     {"HY": 2.0, "TH": 1.0, "MB": 1.0}),
    ("Tbc1d8", "TBC1 domain family, member 8", 34, 54610, 31421, (71836747, 71035669),
     {"PIR": 2.0, "Isocortex": 0.6}),
    ("Kcng3", "potassium voltage-gated channel, subfamily G, member 3", 43, 225030, 15168,
     (71717451, 71019378), {"HPF": 2.0, "MOB": 1.5}),
    ("Phox2b", "paired-like homeobox 2b", 50, 18935, 68371, (2480, 702794), {"MY": 3.0}),
    ("Thbs2", "thrombospondin 2", 43, 21826, 2438, (73929578, 71903222), {"CBXgr": 1.5, "MOB": 1.0}),
    ("Cldn12", "claudin 12", 50, 64945, 40809, (2107, 702831), {"grey": 0.8}),
    ("Acsl6", "acyl-CoA synthetase long-chain family member 6", 36, 216739, 100939,
     (71836810, 71035725), {"Isocortex": 1.5, "HPF": 1.5, "CBXgr": 1.0}),
    ("Pomc", "pro-opiomelanocortin-alpha", 37, 18976, 723, (2493, 702795), {"ARH": 6.0}),
    ("Mtf2", "metal response element binding transcription factor 2", 50, 17765, 7207,
     (1510, 702587), {"grey": 0.6}),
    ("Oprd1", "opioid receptor, delta 1", 49, 18386, 20252, (112646675, 710947),
     {"CP": 1.5, "PIR": 2.0, "Isocortex": 0.8}),
    ("Slc17a7", "solute carrier family 17 (sodium-dependent inorganic phosphate cotransporter), member 7",
     None, 72961, None, None, {"Isocortex": 3.0, "HPF": 3.0, "PIR": 2.0, "TH": 0.8}),
    ("Gad1", "glutamate decarboxylase 1", None, 14415, None, None,
     {"STR": 2.5, "LS": 2.5, "CBXpu": 3.0, "MOB": 2.0, "Isocortex": 0.6, "HY": 1.0, "MB": 1.0}),
    ("Gad2", "glutamic acid decarboxylase 2", None, 14417, None, None,
     {"STR": 2.5, "LS": 2.0, "CBXpu": 2.0, "MOB": 2.0, "HY": 1.2}),
    ("Pvalb", "parvalbumin", None, 19293, None, None,
     {"Isocortex": 1.0, "CBXpu": 3.0, "CBXmo": 1.0}),
    ("Sst", "somatostatin", None, 20604, None, None, {"Isocortex": 0.9, "HY": 1.2, "HPF": 0.5}),
    ("Vip", "vasoactive intestinal polypeptide", None, 22353, None, None, {"Isocortex": 0.8}),
    ("Calb1", "calbindin 1", None, 12307, None, None,
     {"CBXpu": 4.0, "DG": 2.0, "CA1": 1.5, "Isocortex": 0.8}),
    ("Th", "tyrosine hydroxylase", None, 21823, None, None, {"VTA": 5.0, "SNc": 5.0, "MOB": 1.5}),
    ("Slc6a3", "solute carrier family 6 (neurotransmitter transporter, dopamine), member 3",
     None, 13162, None, None, {"VTA": 5.0, "SNc": 5.0}),
    ("Drd1", "dopamine receptor D1", None, 13488, None, None, {"STR": 3.0, "Isocortex": 0.5}),
    ("Drd2", "dopamine receptor D2", None, 13489, None, None, {"STR": 3.0, "VTA": 2.0, "SNc": 2.0}),
    ("Penk", "preproenkephalin", None, 18619, None, None, {"STR": 3.5, "Isocortex": 0.4}),
    ("Ppp1r1b", "protein phosphatase 1, regulatory inhibitor subunit 1B", None, 19049, None, None,
     {"STR": 4.0, "Isocortex": 0.5}),
    ("Pcp2", "Purkinje cell protein 2 (L7)", None, 18545, None, None, {"CBXpu": 6.0}),
    ("Prox1", "prospero homeobox 1", None, 19130, None, None, {"DG": 5.0}),
    ("Mbp", "myelin basic protein", None, 17196, None, None,
     {"fiber tracts": 4.0, "MY": 2.0, "P": 2.0, "MB": 1.0}),
    ("Plp1", "proteolipid protein (myelin) 1", None, 18823, None, None,
     {"fiber tracts": 4.0, "MY": 2.0, "P": 2.0}),
    ("Gfap", "glial fibrillary acidic protein", None, 14580, None, None,
     {"VS": 2.5, "fiber tracts": 1.0, "grey": 0.3}),
    ("Tcf7l2", "transcription factor 7 like 2, T cell specific, HMG box", None, 21416, None, None,
     {"TH": 4.0, "MB": 1.0}),
    ("Rorb", "RAR-related orphan receptor beta", None, 225998, None, None,
     {"SSp-bfd4": 4.0, "VISp4": 4.0, "AUDp4": 4.0, "TH": 1.0}),
    ("Cux2", "cut-like homeobox 2", None, 13048, None, None,
     {"MOp2/3": 3.0, "SSp-bfd2/3": 3.0, "VISp2/3": 3.0, "AUDp2/3": 3.0, "SSp-bfd4": 1.5}),
    ("Fezf2", "Fez family zinc finger 2", None, 54713, None, None,
     {"MOp5": 3.0, "SSp-bfd5": 3.0, "VISp5": 3.0, "AUDp5": 3.0}),
    ("Foxp2", "forkhead box P2", None, 114142, None, None,
     {"MOp6a": 3.0, "SSp-bfd6a": 3.0, "VISp6a": 3.0, "AUDp6a": 3.0, "TH": 1.5, "STR": 1.2}),
    ("Hoxb5", "homeobox B5", None, 15413, None, None, {"MY": 2.5}),
]

#: Genes with a second coronal experiment, and genes with a second sagittal one.
CORONAL_REPLICATES = ("Slc17a7", "Gad1", "Pvalb", "Sst", "Calb1", "Th", "Drd1", "Penk", "Pcp2",
                      "Prox1", "Mbp", "Tcf7l2", "Rorb", "Cux2", "Fezf2", "Foxp2", "Gfap", "Plp1",
                      "Ppp1r1b", "Gad2")
SAGITTAL_REPLICATES = ("Slc17a7", "Gad1", "Pcp2", "Prox1", "Mbp", "Rorb", "Th", "Penk", "Calb1",
                       "Tcf7l2", "Foxp2", "Cux2")
#: Coronal experiments whose grid zip has no energy volume, and one without any grid (404).
NO_ENERGY_GENES = ("Vip", "Hoxb5")
NO_GRID_GENES = ("Drd2",)


# -- the annotation ---------------------------------------------------------------------------------
def structure_id(acronym: str) -> int:
    """Return the real Allen structure id of *acronym*."""
    return brain.structure_id(acronym)


@lru_cache(maxsize=1)
def grid_annotation() -> np.ndarray:
    """Return the 200 µm grid annotation: uint32 structure ids, shape (58, 41, 67) = (LR, DV, AP).

    Voxel ``[l, d, a]`` sits at CCF (AP, DV, LR) = (200 a, 200 d, 200 l) µm; 0 is outside the brain
    (the sample brain at 200 µm, padded with one empty plane per axis to the real grid's size).
    """
    ccf = brain.annotation(GRID_SPACING_UM)  # [AP, DV, LR], 66 x 40 x 57
    padded = np.zeros(GRID_SHAPE[::-1], dtype=np.uint32)  # [AP, DV, LR], 67 x 41 x 58
    padded[: ccf.shape[0], : ccf.shape[1], : ccf.shape[2]] = ccf
    out = np.ascontiguousarray(padded.transpose(2, 1, 0))
    out.flags.writeable = False
    return out


def _ancestor_masks(annotation: np.ndarray, acronyms: set[str]) -> dict[str, np.ndarray]:
    """Return, per acronym, the voxels whose structure is that structure or one of its descendants."""
    labels = np.unique(annotation[annotation > 0])
    masks = {}
    for acronym in acronyms:
        below = brain.descendants(acronym)
        masks[acronym] = np.isin(annotation, [lab for lab in labels if int(lab) in below])
    return masks


@lru_cache(maxsize=1)
def gene_patterns() -> dict[str, np.ndarray]:
    """Return each gene's smooth mean expression map (float32, grid shape, 0 outside the brain)."""
    from scipy import ndimage

    annotation = grid_annotation()
    brain = annotation > 0
    masks = _ancestor_masks(annotation, {k for g in GENES for k in g[6]})
    patterns = {}
    for acronym, *_, enrich in GENES:
        level = 0.2 * brain.astype(np.float32)
        for region, weight in enrich.items():
            level += weight * masks[region]
        level = ndimage.gaussian_filter(level, 0.6) * brain
        patterns[acronym] = level.astype(np.float32)
    return patterns


# -- experiments -----------------------------------------------------------------------------------
def experiment_volume(gene: str, plane: str, seed: int) -> np.ndarray:
    """Return one synthetic energy volume (float32, shape (58, 41, 67)), -1 where there are no data.

    Sagittal experiments cover the left hemisphere only (LR index < 29); some experiments miss a
    few sections, which are -1 through the brain, like real grids.
    """
    rng = np.random.default_rng(seed)
    brain = grid_annotation() > 0
    gain = float(rng.lognormal(0.0, 0.25))
    noise = rng.lognormal(0.0, 0.35, GRID_SHAPE).astype(np.float32)
    vol = gain * gene_patterns()[gene] * noise
    vol = np.round(vol * 64.0) / 64.0  # quantised: smaller zips
    vol[~brain] = -1.0
    if plane == "sagittal":
        vol[29:] = -1.0
        for _ in range(int(rng.integers(0, 2))):
            vol[int(rng.integers(4, 28))] = -1.0
    else:
        for _ in range(int(rng.integers(0, 3))):
            vol[:, :, int(rng.integers(8, 60))] = -1.0
    return vol.astype("<f4")


def energy_mhd(volume: str = "energy") -> bytes:
    """Return the MetaImage header of a 200 µm ISH grid volume (``energy``, ``density``, ``intensity``)."""
    return (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        "CompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\n"
        "CenterOfRotation = 0 0 0\nAnatomicalOrientation = RAI\nElementSpacing = 200 200 200\n"
        f"DimSize = 67 41 58\nElementType = MET_FLOAT\nElementDataFile = {volume}.raw\n"
    ).encode()


def data_set_xml(record: dict) -> bytes:
    """Return a short ``data_set.xml`` for one SectionDataSet (synthetic, says so)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<!-- SYNTHETIC sample data generated by abc_helpers; not Allen Institute data -->\n"
        "<section-data-set>\n"
        f'  <id type="integer">{record["id"]}</id>\n'
        f'  <failed type="boolean">{str(record["failed"]).lower()}</failed>\n'
        f'  <plane-of-section-id type="integer">{record["plane_of_section_id"]}</plane-of-section-id>\n'
        f'  <reference-space-id type="integer">{record["reference_space_id"]}</reference-space-id>\n'
        f'  <section-thickness type="float">{record["section_thickness"]}</section-thickness>\n'
        f'  <specimen-id type="integer">{record["specimen_id"]}</specimen-id>\n'
        "  <section-images type=\"array\"/>\n"
        "</section-data-set>\n"
    ).encode()


def _zip_entry(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data, compresslevel=6)


def grid_zip(record: dict | None, volumes: dict[str, np.ndarray]) -> bytes:
    """Return the bytes of a grid download: ``data_set.xml`` (if *record*) then ``{vol}.mhd/.raw``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        if record is not None:
            _zip_entry(zf, "data_set.xml", data_set_xml(record))
        for name, vol in volumes.items():
            _zip_entry(zf, f"{name}.mhd", energy_mhd(name))
            _zip_entry(zf, f"{name}.raw", np.ascontiguousarray(vol, "<f4").tobytes())
    return buf.getvalue()


def _gene_record(i: int, row: tuple) -> dict:
    acronym, name, chromosome_id, entrez_id, homologene_id = row[:5]
    return {"id": 10_000 + 7 * i, "acronym": acronym, "name": name, "chromosome_id": chromosome_id,
            "entrez_id": entrez_id, "genomic_reference_update_id": GENOMIC_REFERENCE_UPDATE_ID,
            "homologene_id": homologene_id, "organism_id": MOUSE_ORGANISM_ID,
            "original_name": name, "original_symbol": acronym}


def section_data_sets(n_extra: int = 0, seed: int = SEED) -> list[dict]:
    """Return every synthetic SectionDataSet record, in the API's (fixed, unsorted) row order.

    Each record has the SectionDataSet attributes plus ``genes``, ``plane_of_section``,
    ``products``, ``treatments`` and the generator's own ``_grid`` (``"energy"``, ``"no-energy"``
    or ``"none"``) and ``_seed``. *n_extra* adds that many more coronal ISH experiments (for the
    benchmark's large worlds), cycling through the genes.
    """
    rng = np.random.default_rng(seed)
    genes = {row[0]: (_gene_record(i, row), row) for i, row in enumerate(GENES)}
    plan: list[tuple[str, str, str, int, bool, str]] = []  # gene, plane, treatment, product, failed, grid
    for acronym in genes:
        plan.append((acronym, "coronal", "ISH", 1, False, "energy"))
        plan.append((acronym, "sagittal", "ISH", 1, False, "energy"))
    plan += [(g, "coronal", "ISH", 1, False, "energy") for g in CORONAL_REPLICATES]
    plan += [(g, "sagittal", "ISH", 1, False, "energy") for g in SAGITTAL_REPLICATES]
    plan += [(g, "coronal", "ISH", 1, False, "no-energy") for g in NO_ENERGY_GENES]
    plan += [(g, "coronal", "ISH", 1, False, "none") for g in NO_GRID_GENES]
    plan += [(g, p, "ISH", 1, True, "energy") for g, p in (
        ("Gad1", "coronal"), ("Pvalb", "coronal"), ("Pcp2", "coronal"), ("Slc17a7", "coronal"),
        ("Th", "coronal"), ("Mbp", "sagittal"), ("Prox1", "sagittal"), ("Sst", "sagittal"))]
    plan += [("Gad1", "coronal", "NISSL", 1, False, "none"), ("Pcp2", "coronal", "ISH", 3, False, "none"),
             ("Slc17a7", "sagittal", "ISH", 3, False, "none"), ("Prox1", "coronal", "ISH", 3, False, "none")]
    names = list(genes)
    plan += [(names[k % len(names)], "coronal", "ISH", 1, False, "energy") for k in range(n_extra)]

    records, used_seed_ids = [], set()
    next_id = 69_000_000
    for k, (acronym, plane, treatment, product, failed, grid) in enumerate(plan):
        gene, row = genes[acronym]
        seed_ids = row[5]
        if (seed_ids and plane == "coronal" and treatment == "ISH" and product == 1 and not failed
                and grid == "energy" and acronym not in used_seed_ids):
            exp_id, specimen_id = seed_ids
            used_seed_ids.add(acronym)
        else:
            next_id += int(rng.integers(1_000, 400_000))
            exp_id, specimen_id = next_id, next_id - int(rng.integers(10_000, 90_000))
        records.append({
            "blue_channel": None, "delegate": False, "expression": True, "failed": failed,
            "failed_facet": 734881840, "green_channel": None, "id": exp_id, "name": None,
            "plane_of_section_id": PLANES[plane], "qc_date": "2009-05-02T22:52:23Z",
            "red_channel": None, "reference_space_id": REFERENCE_SPACES[plane],
            "rnaseq_design_id": None, "section_thickness": 25.0, "specimen_id": specimen_id,
            "sphinx_id": 6000 + k, "storage_directory": f"/external/sample/image_series_{exp_id}/",
            "weight": 5270,
            "genes": [gene], "plane_of_section": {"id": PLANES[plane], "name": plane},
            "products": [PRODUCTS[product]], "treatments": [TREATMENTS[treatment]],
            "_grid": grid, "_seed": seed + k,
        })
    order = rng.permutation(len(records))  # the API's row order is not sorted by id
    return [records[i] for i in order]


def write_api(root: Path, records: list[dict]) -> None:
    """Write ``section_data_sets.json`` and every grid zip under ``<root>/allen-api``."""
    base = Path(root) / "allen-api"
    grid_dir = base / "grid_data"
    grid_dir.mkdir(parents=True, exist_ok=True)
    for rec in records:
        if rec["_grid"] == "none":
            continue
        if rec["_grid"] == "no-energy":
            data = grid_zip(rec, {})
        else:
            vol = experiment_volume(rec["genes"][0]["acronym"], rec["plane_of_section"]["name"],
                                    rec["_seed"])
            data = grid_zip(rec, {"energy": vol})
        with atomic_path(grid_dir / f"{rec['id']}.zip") as tmp:
            tmp.write_bytes(data)
    atomic_write_text(base / "section_data_sets.json",
                      json.dumps({"synthetic": True, "section_data_sets": records}, indent=None))


def generate(writer: WorldWriter, n_extra: int = 0) -> None:
    """Write the synthetic Allen Mouse Brain Atlas API data into the sample world.

    Parameters
    ----------
    writer : WorldWriter
        The world being built; files go to ``writer.root / "allen-api"``.
    n_extra : int
        More coronal experiments than the default ~120 (the benchmark uses 500+).
    """
    write_api(writer.root, section_data_sets(n_extra=n_extra))
