"""A small synthetic MERFISH experiment (C57BL6J-638850) placed in the sample brain's ABC CCF.

Cells sit in 16 coronal sections of the 100 um ABC annotation (:mod:`.abc_ccf`); each cell's CCF
coordinates (mm; x = AP, y = DV, z = LR, as the real ``ccf_coordinates.csv``) fall in the voxel
whose ``parcellation_index`` the cell carries. Its cell type is drawn from the 10x class mix of
the brain division it falls in (:data:`.abc_cells.REGION_CLASSES`, the same mix as the 10x cells
dissected from that division), its expression from the same cluster means as the 10x cells (a
gene panel of 120 genes, like the real 500-gene panel but smaller).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .abc_ccf import (
    DIVISION_REGION,
    SECTION_THICKNESS_MM,
    SECTIONS,
    SPACING_MM,
    division_of_index,
    section_index,
)
from .abc_cells import FEATURED_GENES, PANEL_GENES, REGION_CLASSES, sample_counts
from .abc_taxonomy import Taxonomy

MATRIX_LABEL = "C57BL6J-638850"
#: Cells per section: the sections are planes of 100 um voxels, a few hundred to a few thousand each.
CELLS_PER_SECTION = 1000
PANEL_SIZE = 120
_NON_NEURONAL = {30: 0.35, 31: 0.45, 33: 0.12, 34: 0.08}

CELL_METADATA_COLUMNS = ["cell_label", "brain_section_label", "cluster_alias",
                         "average_correlation_score", "feature_matrix_label", "donor_label",
                         "donor_genotype", "donor_sex", "x", "y", "z"]


def panel(genes: pd.DataFrame) -> pd.DataFrame:
    """Return the MERFISH gene panel: the featured and panel genes plus expressed synthetic genes."""
    featured = genes["gene_symbol"].isin([*FEATURED_GENES, *PANEL_GENES])
    synthetic = genes.index[genes["gene_symbol"].str.startswith("Synth")]
    n_synthetic = PANEL_SIZE - int(featured.sum())
    keep = set(genes.index[featured]) | set(synthetic[:: max(1, len(synthetic) // n_synthetic)][:n_synthetic])
    return genes.loc[sorted(keep)].reset_index(drop=True)


def build_merfish(taxonomy: Taxonomy, annotation: np.ndarray, tree: pd.DataFrame,
                  means: pd.DataFrame, genes: pd.DataFrame, seed: int = 638850) -> dict:
    """Return the MERFISH cells, coordinates and matrices.

    Returns
    -------
    dict
        ``cells`` (cell_metadata columns), ``ccf`` and ``reconstructed`` (``cell_label, x, y,
        z, parcellation_index``), ``panel`` (gene rows), ``raw`` and ``log2`` (CSR float32).
    """
    rng = np.random.default_rng(seed)
    division = division_of_index(tree, annotation)
    cl = taxonomy.clusters
    by_class = {c: cl.index[cl["class_number"] == c].to_numpy() for c in range(1, 35)}
    rows = []
    half = 0.495 * SPACING_MM  # inside the voxel: the nearest voxel of a cell is its own
    for z_index, (section, ap) in enumerate(SECTIONS):
        ap_i = section_index(ap)
        dv_i, lr_i = np.nonzero(annotation[ap_i] > 0)
        pick = rng.choice(len(dv_i), size=CELLS_PER_SECTION, replace=len(dv_i) < CELLS_PER_SECTION)
        for k in pick:
            idx = int(annotation[ap_i, dv_i[k], lr_i[k]])
            mix = REGION_CLASSES.get(DIVISION_REGION.get(division[idx], ""), _NON_NEURONAL)
            classes = np.array(list(mix))
            p = np.array(list(mix.values()))
            alias = rng.choice(by_class[int(rng.choice(classes, p=p / p.sum()))])
            ap_mm, dv_mm, lr_mm = (np.array([ap_i, dv_i[k], lr_i[k]]) * SPACING_MM
                                   + rng.uniform(-half, half, size=3))
            rows.append({"brain_section_label": section, "cluster_alias": int(alias),
                         "ap": ap_mm, "dv": dv_mm, "lr": lr_mm,
                         "z_section": z_index * SECTION_THICKNESS_MM, "parcellation_index": idx})
    cells = pd.DataFrame(rows)
    n = len(cells)
    serial = rng.integers(10**17, 10**18, size=n)
    cells.insert(0, "cell_label", [f"10{s}-{i % 4 + 1}" for i, s in enumerate(serial)])
    cells["average_correlation_score"] = np.round(rng.uniform(0.45, 0.85, size=n), 6)
    cells["feature_matrix_label"] = MATRIX_LABEL
    cells["donor_label"] = MATRIX_LABEL
    cells["donor_genotype"] = "wt/wt"
    cells["donor_sex"] = "M"
    # section coordinates (mm): the reconstructed ones plus a per-section shift, like a raw scan
    shift = {s: rng.uniform(-0.5, 0.5, size=2) for s, _ in SECTIONS}
    cells["x"] = np.round(cells["lr"] + cells["brain_section_label"].map(lambda s: shift[s][0]), 6)
    cells["y"] = np.round(cells["dv"] + cells["brain_section_label"].map(lambda s: shift[s][1]), 6)
    cells["z"] = np.round(cells["z_section"], 6)
    ccf = pd.DataFrame({"cell_label": cells["cell_label"],
                        "x": np.round(cells["ap"], 6), "y": np.round(cells["dv"], 6),
                        "z": np.round(cells["lr"], 6),
                        "parcellation_index": cells["parcellation_index"]})
    reconstructed = pd.DataFrame({"cell_label": cells["cell_label"],
                                  "x": np.round(cells["lr"], 6), "y": np.round(cells["dv"], 6),
                                  "z": np.round(cells["z_section"], 6),
                                  "parcellation_index": cells["parcellation_index"]})
    genes_panel = panel(genes)
    cell_means = means.loc[cells["cluster_alias"], genes_panel["gene_identifier"]].to_numpy()
    raw, log2 = sample_counts(cell_means, rng)
    return {"cells": cells[CELL_METADATA_COLUMNS], "ccf": ccf, "reconstructed": reconstructed,
            "panel": genes_panel, "raw": sp.csr_matrix(raw), "log2": sp.csr_matrix(log2)}
