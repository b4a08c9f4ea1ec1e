"""Synthetic WMB 10x cells, genes and expression matrices for the sample world.

Shapes follow the real release: 24 feature matrices (``WMB-10Xv2-*``, ``WMB-10Xv3-*``,
``WMB-10XMulti``), each a CSR h5ad pair (``raw`` integer counts stored as float32, ``log2`` =
log2(CPM + 1) as float32), ``obs`` indexed by ``cell_label`` (``BARCODE-SAMPLE``), ``var`` indexed
by Ensembl ``gene_identifier`` with a ``gene_symbol`` column. Counts are Poisson draws from
cluster-level means, so marker genes follow biology: Slc17a7 in cortical Glut classes, Slc17a6 in
the other Glut classes, Slc32a1 in GABA classes, Slc6a5 in Gly-GABA, Slc18a3 in cholinergic,
Slc6a3 in Dopa, Slc6a4 in Sero, Slc6a2 in Nora, Tac2 in a few subclasses (highest in MH Tac2 Glut).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .abc_taxonomy import Taxonomy

#: The 10 featured genes (symbol -> real Ensembl id), in the genome order of the real var table.
FEATURED_GENES: dict[str, str] = {
    "Slc32a1": "ENSMUSG00000037771",
    "Slc17a7": "ENSMUSG00000070570",
    "Slc6a5": "ENSMUSG00000039728",
    "Slc17a6": "ENSMUSG00000030500",
    "Slc6a2": "ENSMUSG00000055368",
    "Slc17a8": "ENSMUSG00000019935",
    "Tac2": "ENSMUSG00000025400",
    "Slc6a4": "ENSMUSG00000020838",
    "Slc6a3": "ENSMUSG00000021609",
    "Slc18a3": "ENSMUSG00000100241",
}

_FEATURED_NAMES = {
    "Slc32a1": "solute carrier family 32 (GABA vesicular transporter), member 1",
    "Slc17a7": "solute carrier family 17 (sodium-dependent inorganic phosphate cotransporter), member 7",
    "Slc6a5": "solute carrier family 6 (neurotransmitter transporter, glycine), member 5",
    "Slc17a6": "solute carrier family 17 (sodium-dependent inorganic phosphate cotransporter), member 6",
    "Slc6a2": "solute carrier family 6 (neurotransmitter transporter, noradrenalin), member 2",
    "Slc17a8": "solute carrier family 17 (sodium-dependent inorganic phosphate cotransporter), member 8",
    "Tac2": "tachykinin 2",
    "Slc6a4": "solute carrier family 6 (neurotransmitter transporter, serotonin), member 4",
    "Slc6a3": "solute carrier family 6 (neurotransmitter transporter, dopamine), member 3",
    "Slc18a3": "solute carrier family 18 (vesicular monoamine), member 3",
}

#: Region and cell-type marker genes shared with the ISH sample (symbol -> real Ensembl id, real
#: name): their synthetic expression follows the same cell types as the ISH patterns' structures,
#: so that chapter 5 can set the two atlases side by side.
PANEL_GENES: dict[str, tuple[str, str]] = {
    "Calb1": ("ENSMUSG00000028222", "calbindin 1"),
    "Gad1": ("ENSMUSG00000070880", "glutamate decarboxylase 1"),
    "Prox1": ("ENSMUSG00000010175", "prospero homeobox 1"),
    "Pvalb": ("ENSMUSG00000005716", "parvalbumin"),
    "Tcf7l2": ("ENSMUSG00000024985", "transcription factor 7 like 2, T cell specific, HMG box"),
}

# Real rows of the real gene.csv (abc_tables.md section 4): (id, symbol, name, ncbi, comment).
_REAL_HEAD = (
    ("ENSMUSG00000051951", "Xkr4", "X-linked Kx blood group related 4", "NCBIGene:497097", ""),
    ("ENSMUSG00000089699", "Gm1992", "predicted gene 1992", "", ""),
    ("ENSMUSG00000102331", "Gm19938", "predicted gene, 19938", "", ""),
    ("ENSMUSG00000102343", "Gm37381", "predicted gene, 37381", "", ""),
    ("ENSMUSG00000025900", "Rp1", "retinitis pigmentosa 1 (human)", "NCBIGene:19888", ""),
)
_REAL_NO_EXPRESSION = (
    ("ENSMUSG00000118272", "Arhgef4", "Rho guanine nucleotide exchange factor (GEF) 4", ""),
    ("ENSMUSG00000117809", "Asdurf", "Asnsd1 upstream reading frame", "NCBIGene:110599589"),
    ("ENSMUSG00000047383", "AC169382.1", "novel transcript", ""),
    ("ENSMUSG00000097001", "1700054K02Rik", "RIKEN cDNA 1700054K02 gene", ""),
    ("ENSMUSG00000116048", "Sept2", "septin 2", ""),
    ("ENSMUSG00000091585", "AC140365.1", "PRAME family member 8-like", ""),
)
_REAL_TAIL = (
    ("ENSMUSG00000095523", "AC124606.1", "PRAME family member 8-like", "NCBIGene:100038995", "no expression"),
    ("ENSMUSG00000095475", "AC133095.2", "uncharacterized LOC545763", "NCBIGene:545763", "no expression"),
    ("ENSMUSG00000094855", "AC133095.1", "uncharacterized LOC620639", "NCBIGene:620639", "no expression"),
    ("ENSMUSG00000095019", "AC234645.1", "", "", "no expression"),
    ("ENSMUSG00000095041", "AC149090.1", "", "", ""),
)

#: Number of genes in the sample gene table (real: 32285).
N_GENES = 1000

#: The 24 real feature matrices: (dataset_label, feature_matrix_label, region, real cell count).
MATRICES: tuple[tuple[str, str, str, int], ...] = (
    ("WMB-10XMulti", "WMB-10XMulti", "TH", 1687),
    ("WMB-10Xv2", "WMB-10Xv2-CTXsp", "CTXsp", 43985),
    ("WMB-10Xv2", "WMB-10Xv2-HPF", "HPF", 207281),
    ("WMB-10Xv2", "WMB-10Xv2-HY", "HY", 99879),
    ("WMB-10Xv2", "WMB-10Xv2-Isocortex-1", "Isocortex", 248776),
    ("WMB-10Xv2", "WMB-10Xv2-Isocortex-2", "Isocortex", 249360),
    ("WMB-10Xv2", "WMB-10Xv2-Isocortex-3", "Isocortex", 249356),
    ("WMB-10Xv2", "WMB-10Xv2-Isocortex-4", "Isocortex", 248784),
    ("WMB-10Xv2", "WMB-10Xv2-MB", "MB", 29781),
    ("WMB-10Xv2", "WMB-10Xv2-OLF", "OLF", 192182),
    ("WMB-10Xv2", "WMB-10Xv2-TH", "TH", 130555),
    ("WMB-10Xv3", "WMB-10Xv3-CB", "CB", 181723),
    ("WMB-10Xv3", "WMB-10Xv3-CTXsp", "CTXsp", 78223),
    ("WMB-10Xv3", "WMB-10Xv3-HPF", "HPF", 181055),
    ("WMB-10Xv3", "WMB-10Xv3-HY", "HY", 162296),
    ("WMB-10Xv3", "WMB-10Xv3-Isocortex-1", "Isocortex", 227670),
    ("WMB-10Xv3", "WMB-10Xv3-Isocortex-2", "Isocortex", 227537),
    ("WMB-10Xv3", "WMB-10Xv3-MB", "MB", 337101),
    ("WMB-10Xv3", "WMB-10Xv3-MY", "MY", 191746),
    ("WMB-10Xv3", "WMB-10Xv3-OLF", "OLF", 88560),
    ("WMB-10Xv3", "WMB-10Xv3-P", "P", 143157),
    ("WMB-10Xv3", "WMB-10Xv3-PAL", "PAL", 108046),
    ("WMB-10Xv3", "WMB-10Xv3-STR", "STR", 283782),
    ("WMB-10Xv3", "WMB-10Xv3-TH", "TH", 130454),
)

_METHOD = {"WMB-10Xv2": "10Xv2", "WMB-10Xv3": "10Xv3", "WMB-10XMulti": "10xRSeq_Mult"}

#: Dissection regions of interest (real acronyms, order, labels; colours partly real). As in the
#: real release, an ROI acronym joins real CCF acronyms with "-" ("VIS-PTLp", "SS-GU-VISC"): a CCF
#: structure lies in the ROIs one of whose parts is the structure or one of its ancestors (VISp ->
#: VIS-PTLp and VIS, LP -> TH, CA1 -> HIP), and an ROI's cells come from the matrices of the
#: division those structures are in (tests/sample/test_brain.py checks it).
ROIS: tuple[tuple[str, str, str], ...] = (
    ("MO-FRP", "Somatomotor - Frontal pole", "#3DCC7C"),
    ("MOp", "Primary motor area", "#179968"),
    ("SS-GU-VISC", "Somatosensory/gustatory/visceral areas", "#2E8599"),
    ("SSp", "Primary somatosensory area", "#5CCCCC"),
    ("AUD", "Auditory areas", "#455A99"),
    ("AUD-TEa-PERI-ECT", "Auditory/temporal association/perirhinal/ectorhinal areas", "#0059CC"),
    ("VIS-PTLp", "Visual/posterior parietal association areas", "#26AEFF"),
    ("VIS", "Visual areas", "#300099"),
    ("ACA", "Anterior cingulate area", "#341FCC"),
    ("PL-ILA-ORB", "Prelimbic/infralimbic/orbital areas", "#4D58FF"),
    ("AI", "Agranular insular area", "#00FFCF"),
    ("RSP", "Retrosplenial area", "#9F3DCC"),
    ("TEa-PERI-ECT", "Temporal association/perirhinal/ectorhinal areas", "#B973FF"),
    ("OLF", "Olfactory areas", "#84FF4D"),
    ("HIP", "Hippocampal region", "#6F9945"),
    ("RHP", "Retrohippocampal region", "#CCB05C"),
    ("ENT", "Entorhinal area", "#99922E"),
    ("CTXsp", "Cortical subplate", "#8CCC00"),
    ("STRd", "Striatum dorsal region", "#00990A"),
    ("STRv", "Striatum ventral region", "#34CC1F"),
    ("LSX", "Lateral septal complex", "#E4FF26"),
    ("sAMY", "Striatum-like amygdalar nuclei", "#FF8F00"),
    ("PAL", "Pallidum", "#994817"),
    ("TH", "Thalamus", "#FF2678"),
    ("HY", "Hypothalamus", "#CC0026"),
    ("MB", "Midbrain", "#FF7373"),
    ("P", "Pons", "#CC5CB0"),
    ("MY", "Medulla", "#992E6A"),
    ("CB", "Cerebellum", "#FF00EF"),
)

_REGION_ROIS = {
    "Isocortex": ["MO-FRP", "MOp", "SS-GU-VISC", "SSp", "AUD", "AUD-TEa-PERI-ECT", "VIS-PTLp",
                  "VIS", "ACA", "PL-ILA-ORB", "AI", "RSP", "TEa-PERI-ECT"],
    "HPF": ["HIP", "RHP", "ENT"], "OLF": ["OLF"], "CTXsp": ["CTXsp"],
    "STR": ["STRd", "STRv", "LSX", "sAMY"], "PAL": ["PAL"], "TH": ["TH"], "HY": ["HY"],
    "MB": ["MB"], "P": ["P"], "MY": ["MY"], "CB": ["CB"],
}

_NN = {30: 0.07, 31: 0.08, 33: 0.03, 34: 0.02}
#: Class mix (class number -> weight) of each dissected region.
REGION_CLASSES: dict[str, dict[int, float]] = {
    "Isocortex": {1: 0.45, 2: 0.2, 6: 0.07, 7: 0.08, **_NN},
    "HPF": {1: 0.3, 4: 0.25, 2: 0.05, 3: 0.03, 6: 0.06, 7: 0.06, **_NN},
    "OLF": {3: 0.15, 5: 0.3, 1: 0.15, 9: 0.05, 32: 0.05, **_NN},
    "CTXsp": {1: 0.3, 2: 0.25, 6: 0.08, 7: 0.1, 13: 0.05, **_NN},
    "STR": {9: 0.45, 8: 0.1, 10: 0.12, 11: 0.08, 13: 0.03, **_NN},
    "PAL": {8: 0.25, 11: 0.2, 9: 0.1, 13: 0.1, 10: 0.05, **_NN},
    "TH": {18: 0.5, 17: 0.12, 12: 0.05, 20: 0.03, 14: 0.03, **_NN},
    "HY": {12: 0.25, 14: 0.22, 16: 0.1, 15: 0.03, 11: 0.07, 13: 0.05, **_NN},
    "MB": {19: 0.25, 20: 0.25, 21: 0.1, 22: 0.07, 25: 0.02, **_NN},
    "P": {23: 0.3, 26: 0.25, 22: 0.06, 27: 0.06, **_NN},
    "MY": {24: 0.3, 27: 0.3, 22: 0.03, 23: 0.05, **_NN},
    "CB": {29: 0.5, 28: 0.2, 30: 0.1, 31: 0.08, 33: 0.03, 34: 0.02},
}

_GENOTYPES = {
    "Snap25-IRES2-Cre;Ai14": "Snap25-IRES2-Cre/wt;Ai14(RCL-tdT)/wt",
    "Gad2-IRES-Cre;Ai14": "Gad2-IRES-Cre/wt;Ai14(RCL-tdT)/wt",
    "Slc32a1-IRES-Cre;Ai14": "Slc32a1-IRES-Cre/wt;Ai14(RCL-tdT)/wt",
    "Ai14": "Ai14(RCL-tdT)/wt",
    "C57BL6J": "wt/wt",
}

CELL_METADATA_COLUMNS = [
    "cell_label", "cell_barcode", "barcoded_cell_sample_label", "library_label",
    "feature_matrix_label", "entity", "brain_section_label", "library_method",
    "region_of_interest_acronym", "donor_label", "donor_genotype", "donor_sex", "dataset_label",
    "x", "y", "cluster_alias",
]


def cells_in_matrix(real_count: int) -> int:
    """Return the number of sample cells of a matrix with *real_count* cells (about 40-210)."""
    return max(48, 40 + real_count // 2000)


# -- genes -------------------------------------------------------------------------------------
def build_genes(n_genes: int = N_GENES) -> pd.DataFrame:
    """Return the sample gene table in var order, with the real ``gene.csv`` columns.

    Real rows (the first five genes of the real table, the ten featured genes, a few
    "no expression" genes and the real tail) are placed among synthetic filler genes whose ids
    (``ENSMUSG00099xxxxxx``) and symbols (``Synth####``) cannot be mistaken for real ones.
    """
    filler_needed = (n_genes - len(_REAL_HEAD) - len(FEATURED_GENES) - len(PANEL_GENES)
                     - len(_REAL_NO_EXPRESSION) - len(_REAL_TAIL))
    rows: list[tuple[str, str, str, str, str]] = list(_REAL_HEAD)
    middle: list[tuple[str, str, str, str, str]] = [
        (f"ENSMUSG{99_000_000 + i:011d}", f"Synth{i:04d}", "synthetic sample gene", "", "")
        for i in range(1, filler_needed + 1)
    ]
    # spread the featured genes (genome order) and no-expression genes through the fillers
    inserts = [(sym, gid, _FEATURED_NAMES[sym], "", "") for sym, gid in FEATURED_GENES.items()]
    inserts += [(sym, gid, name, "", "") for sym, (gid, name) in PANEL_GENES.items()]
    step = filler_needed // (len(inserts) + 1)
    for k, (sym, gid, name, ncbi, comment) in reversed(list(enumerate(inserts, start=1))):
        middle.insert(k * step, (gid, sym, name, ncbi, comment))
    step = len(middle) // (len(_REAL_NO_EXPRESSION) + 1)
    for k, (gid, sym, name, ncbi) in reversed(list(enumerate(_REAL_NO_EXPRESSION, start=1))):
        middle.insert(k * step + 3, (gid, sym, name, ncbi, "no expression"))
    rows += middle + list(_REAL_TAIL)
    genes = pd.DataFrame(rows, columns=["gene_identifier", "gene_symbol", "name",
                                        "mapped_ncbi_identifier", "comment"])
    assert genes["gene_identifier"].is_unique and len(genes) == n_genes
    return genes


# -- expression model --------------------------------------------------------------------------
def _featured_means(row: pd.Series) -> dict[str, float]:
    """Mean raw counts of the featured genes in one cluster (a cell with size factor 1)."""
    c, nt, sub = int(row["class_number"]), row["neurotransmitter"], row["subclass"]
    m = dict.fromkeys(FEATURED_GENES, 0.01)
    if c in (1, 2, 3, 4):
        m["Slc17a7"] = 7.0
    elif c == 29:
        m["Slc17a7"] = 5.0
    elif c in (13, 18):
        m["Slc17a7"] = 1.0
    elif nt == "Glut":
        m["Slc17a7"] = 0.1
    if (nt in ("Glut", "Glut-GABA") and c >= 13) or c == 17:
        m["Slc17a6"] = 6.0
    elif c == 2:
        m["Slc17a6"] = 1.2
    elif c in (21, 22):
        m["Slc17a6"] = 0.8
    if nt in ("GABA", "GABA-Glyc", "Glut-GABA", "Hist") or (nt in ("Chol", "Dopa") and c in (8, 12)):
        m["Slc32a1"] = 6.0
    if nt == "GABA-Glyc":
        m["Slc6a5"] = 5.0
    if nt == "Chol":
        m["Slc18a3"] = 5.0
    if nt == "Dopa":
        m["Slc6a3"] = 6.0 if c == 21 else 1.5
    if nt == "Sero":
        m["Slc6a4"] = 6.0
        m["Slc17a8"] = 2.5
    if nt == "Nora":
        m["Slc6a2"] = 6.0
    if "Chat" in sub:
        m["Slc17a8"] = 3.0
    if "Sncg" in sub or "Vip" in sub:
        m["Slc17a8"] = 1.5
    m["Tac2"] = {2: 9.0, 1: 0.4}.get(int(row["tac2"]), 0.01)
    return m


def _panel_means(row: pd.Series) -> dict[str, float]:
    """Mean raw counts of the panel genes in one cluster: the cell types of the ISH patterns."""
    c, nt, sub = int(row["class_number"]), row["neurotransmitter"], row["subclass"]
    m = dict.fromkeys(PANEL_GENES, 0.02)
    m["Prox1"] = {4: 7.0, 6: 1.5}.get(c, 0.02)  # dentate granule cells; CGE interneurons
    m["Tcf7l2"] = {18: 7.0, 19: 2.0, 20: 1.5, 31: 0.8}.get(c, 0.02)  # thalamus, then midbrain
    if nt in ("GABA", "GABA-Glyc", "Glut-GABA"):
        m["Gad1"] = 6.0
    m["Pvalb"] = 6.0 if "Pvalb" in sub else {28: 5.0}.get(c, 0.03)
    m["Calb1"] = {4: 4.0, 28: 6.0, 1: 1.0, 18: 0.8}.get(c, 0.05)
    return m


def expression_means(taxonomy: Taxonomy, genes: pd.DataFrame, seed: int = 7) -> pd.DataFrame:
    """Return the mean raw count of every gene in every cluster (clusters x genes).

    Background genes get a log-normal mean (about 6% non-zero per cell, like 10x data), each
    class has a few synthetic marker genes, the featured genes follow :func:`_featured_means` and
    the panel genes :func:`_panel_means`.
    "no expression" genes are zero everywhere.
    """
    rng = np.random.default_rng(seed)
    n_genes = len(genes)
    clusters = taxonomy.clusters
    base = np.minimum(rng.lognormal(np.log(0.045), 1.0, size=n_genes), 2.0)
    synthetic = np.flatnonzero(genes["gene_symbol"].str.startswith("Synth").to_numpy())
    markers = {c: rng.choice(synthetic, size=15, replace=False) for c in range(1, 35)}
    means = np.empty((len(clusters), n_genes))
    symbols = genes["gene_symbol"].to_numpy()
    featured_cols = {s: int(np.flatnonzero(symbols == s)[0]) for s in (*FEATURED_GENES, *PANEL_GENES)}
    for i, (_, row) in enumerate(clusters.iterrows()):
        lam = base * rng.lognormal(0.0, 0.3, size=n_genes)
        lam[markers[int(row["class_number"])]] *= 12.0
        for sym, value in {**_featured_means(row), **_panel_means(row)}.items():
            lam[featured_cols[sym]] = value * rng.lognormal(0.0, 0.15)
        means[i] = lam
    means[:, (genes["comment"] == "no expression").to_numpy()] = 0.0
    return pd.DataFrame(means, index=clusters.index, columns=genes["gene_identifier"])


def sample_counts(means: np.ndarray, rng: np.random.Generator) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Draw raw counts for cells with the given per-cell means; return (raw, log2) CSR float32.

    log2 is log2(CPM + 1), the CPM computed against a per-cell library size that stands for the
    ~10,000 UMIs a real cell has over all 32k genes (the sample has only 1000 genes).
    """
    n_cells = len(means)
    size = rng.lognormal(0.0, 0.35, size=n_cells)
    raw = rng.poisson(means * size[:, None]).astype(np.float32)
    library = np.round(9000.0 * size * rng.lognormal(0.0, 0.1, size=n_cells)) + raw.sum(axis=1)
    raw_csr = sp.csr_matrix(raw)
    log2 = raw_csr.copy()
    row_of_value = np.repeat(np.arange(raw.shape[0]), np.diff(raw_csr.indptr))
    log2.data = np.log2(raw_csr.data / library[row_of_value] * 1e6 + 1.0).astype(np.float32)
    return raw_csr, log2


# -- cells -------------------------------------------------------------------------------------
def _barcodes(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.array(list("ACGT"))
    codes: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        code = "".join(letters[rng.integers(0, 4, size=16)])
        if code not in codes:
            codes.add(code)
            out.append(code)
    return out


def build_cells(taxonomy: Taxonomy, seed: int = 10) -> pd.DataFrame:
    """Return the 10x cell metadata of all 24 matrices (real columns, one row per cell).

    Cells of each matrix come from the classes of its dissected region (``REGION_CLASSES``);
    every cluster gets at least one cell. x, y are the cluster's UMAP centre plus noise.
    Rows are in matrix order; within a matrix, in sample order (the h5ad ``obs`` order).
    """
    rng = np.random.default_rng(seed)
    cl = taxonomy.clusters
    by_class = {c: cl.index[cl["class_number"] == c].to_numpy() for c in range(1, 35)}
    frames = []
    sample_serial = 30
    for m_index, (dataset, matrix, region, real_count) in enumerate(MATRICES):
        n = cells_in_matrix(real_count)
        weights = REGION_CLASSES[region]
        classes = np.array(list(weights))
        p = np.array(list(weights.values()))
        cell_class = rng.choice(classes, size=n, p=p / p.sum())
        alias = np.array([rng.choice(by_class[c]) for c in cell_class])
        n_samples = 2 if n < 100 else 3
        method = _METHOD[dataset]
        year = {"10Xv2": "18", "10Xv3": "20", "10xRSeq_Mult": "21"}[method]
        samples = []
        for _ in range(n_samples):
            sample_serial += int(rng.integers(3, 25))
            well = f"{'ABCDEFGH'[int(rng.integers(0, 8))]}{int(rng.integers(1, 13)):02d}"
            prefix = "L8XR" if method == "10xRSeq_Mult" else "L8TX"
            month, day = int(rng.integers(1, 13)), int(rng.integers(1, 29))
            donor_kind = list(_GENOTYPES)[int(rng.choice(5, p=[0.55, 0.1, 0.1, 0.1, 0.15]))]
            samples.append({
                "barcoded_cell_sample_label": f"{sample_serial:03d}_{well}",
                "library_label": f"{prefix}_{year}{month:02d}{day:02d}_01_{well}",
                "donor_label": f"{donor_kind}-{int(rng.integers(380000, 640000))}",
                "donor_genotype": _GENOTYPES[donor_kind],
                "donor_sex": "FM"[int(rng.integers(0, 2))],
            })
        sample_of_cell = np.sort(rng.integers(0, n_samples, size=n))
        barcodes = _barcodes(rng, n)
        rois = _REGION_ROIS[region]
        roi = rng.choice(rois, size=n) if region != "Isocortex" else np.array(
            [rois[(m_index + int(k)) % len(rois)] for k in rng.integers(0, 4, size=n)])
        frame = pd.DataFrame([samples[s] for s in sample_of_cell])
        frame.insert(0, "cell_barcode", barcodes)
        frame.insert(0, "cell_label", [f"{b}-{s}" for b, s in
                                       zip(barcodes, frame["barcoded_cell_sample_label"], strict=True)])
        frame["feature_matrix_label"] = matrix
        frame["entity"] = "cell"
        frame["brain_section_label"] = ""
        frame["library_method"] = method
        frame["region_of_interest_acronym"] = roi
        frame["dataset_label"] = dataset
        frame["cluster_alias"] = alias
        frame["_region"] = region
        frames.append(frame)
    cells = pd.concat(frames, ignore_index=True)
    # every cluster gets at least one cell: move one cell of its class from a region that has it
    counts = cells["cluster_alias"].value_counts()
    for alias in cl.index:
        if counts.get(alias, 0) > 0:
            continue
        cls = int(cl.loc[alias, "class_number"])
        donors = cells.index[(cells["cluster_alias"].map(cl["class_number"]) == cls)
                             & (cells["cluster_alias"].map(counts) > 1)]
        if len(donors) == 0:
            continue
        pick = donors[int(rng.integers(0, len(donors)))]
        counts[cells.at[pick, "cluster_alias"]] -= 1
        cells.at[pick, "cluster_alias"] = alias
        counts[alias] = 1
    centre = cl.loc[cells["cluster_alias"], ["umap_x", "umap_y"]].to_numpy()
    xy = centre + rng.normal(0.0, 0.45, size=centre.shape)
    cells["x"] = np.clip(xy[:, 0], -17.5, 26.5)
    cells["y"] = np.clip(xy[:, 1], -17.5, 26.5)
    return cells[[*CELL_METADATA_COLUMNS, "_region"]]


def roi_table() -> pd.DataFrame:
    """Return ``region_of_interest_metadata.csv`` (label, acronym, name, order, colour)."""
    return pd.DataFrame({
        "label": [f"WMB-{a}" for a, _, _ in ROIS],
        "acronym": [a for a, _, _ in ROIS],
        "name": [n for _, n, _ in ROIS],
        "order": range(len(ROIS)),
        "color_hex_triplet": [c for _, _, c in ROIS],
    })


# -- files -------------------------------------------------------------------------------------
def _string_array(group, name: str, values) -> None:
    ds = group.create_dataset(name, data=np.asarray(values, dtype=object),
                              dtype=h5py.string_dtype("utf-8"))
    ds.attrs["encoding-type"] = "string-array"
    ds.attrs["encoding-version"] = "0.2.0"


def _dataframe(group, frame: pd.DataFrame, categorical: tuple[str, ...] = ()) -> None:
    """Write *frame* in the anndata on-disk dataframe encoding (0.2.0)."""
    group.attrs["_index"] = frame.index.name
    group.attrs["column-order"] = np.asarray(list(frame.columns), dtype=object)
    group.attrs["encoding-type"] = "dataframe"
    group.attrs["encoding-version"] = "0.2.0"
    _string_array(group, frame.index.name, frame.index.to_numpy())
    for column in frame.columns:
        values = frame[column].astype(str)
        if column in categorical:
            codes, categories = pd.factorize(values, sort=True)
            sub = group.create_group(column)
            sub.attrs["encoding-type"] = "categorical"
            sub.attrs["encoding-version"] = "0.2.0"
            sub.attrs["ordered"] = np.False_
            _string_array(sub, "categories", categories.to_numpy())
            ds = sub.create_dataset("codes", data=codes.astype(np.int8 if len(categories) < 128 else np.int16))
            ds.attrs["encoding-type"] = "array"
            ds.attrs["encoding-version"] = "0.2.0"
        else:
            _string_array(group, column, values.to_numpy())


def write_h5ad(path: Path, X: sp.csr_matrix, obs: pd.DataFrame, var: pd.DataFrame,
               uns: dict[str, str], categorical: tuple[str, ...] = ()) -> Path:
    """Write one CSR h5ad file in the anndata on-disk format, directly with h5py.

    Writing with h5py instead of anndata keeps the sample build fast (no anndata import, ~5 ms
    a file); the layout is the one ``anndata.write_h5ad`` produces (X as ``csr_matrix`` group,
    ``obs``/``var`` dataframes with ``_index``, string ``uns`` entries, empty ``obsm``... dicts).
    HDF5 object times are not tracked, so the bytes are the same on every build.

    Parameters
    ----------
    path : Path
        Where to write.
    X : scipy.sparse.csr_matrix
        The matrix (cells x genes), stored as float32 with int32 indices.
    obs, var : pandas.DataFrame
        Cell and gene tables; their index names become ``_index`` (``cell_label``,
        ``gene_identifier``). Columns are written as strings.
    uns : dict of str to str
        Unstructured string annotations.
    categorical : tuple of str
        Columns (of obs or var) to store as categoricals, as anndata does for repeated strings.

    Returns
    -------
    Path
        *path*.
    """
    X = sp.csr_matrix(X)
    with h5py.File(path, "w", track_order=False) as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        g = f.create_group("X")
        g.attrs["encoding-type"] = "csr_matrix"
        g.attrs["encoding-version"] = "0.1.0"
        g.attrs["shape"] = np.asarray(X.shape, dtype=np.int64)
        chunk = max(1, min(len(X.data), 1 << 14))
        g.create_dataset("data", data=X.data.astype(np.float32), chunks=(chunk,))
        g.create_dataset("indices", data=X.indices.astype(np.int32), chunks=(chunk,))
        g.create_dataset("indptr", data=X.indptr.astype(np.int32))
        for name in ("layers", "obsm", "obsp", "varm", "varp"):
            sub = f.create_group(name)
            sub.attrs["encoding-type"] = "dict"
            sub.attrs["encoding-version"] = "0.1.0"
        _dataframe(f.create_group("obs"), obs, categorical)
        _dataframe(f.create_group("var"), var, categorical)
        u = f.create_group("uns")
        u.attrs["encoding-type"] = "dict"
        u.attrs["encoding-version"] = "0.1.0"
        for key, value in uns.items():
            ds = u.create_dataset(key, data=value, dtype=h5py.string_dtype("utf-8"))
            ds.attrs["encoding-type"] = "string"
            ds.attrs["encoding-version"] = "0.2.0"
    return path
