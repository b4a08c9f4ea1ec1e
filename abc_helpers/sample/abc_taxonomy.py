"""The synthetic WMB cell-type taxonomy of the sample world (classes, subclasses, clusters).

The 34 class names, the 10 neurotransmitter terms and their colours, the term-set labels
(``CCN20230722_*``) and the table layouts are the real ones. Subclasses are modelled on the real
taxonomy (some names and numbers are real, e.g. ``145 MH Tac2 Glut``), supertypes and clusters
are generated from them, so the taxonomy is small (about 200 clusters instead of 5322).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

TAXONOMY = "CCN20230722"
LABEL_PREFIX = "CS20230722"

#: Neurotransmitter terms in the real term order, with their real colours ("NA" = non-neuronal).
NEUROTRANSMITTERS: dict[str, str] = {
    "Glut": "#2B93DF",
    "NA": "#666666",
    "GABA": "#FF3358",
    "Dopa": "#fcf04b",
    "Glut-GABA": "#0a9964",
    "Chol": "#73E785",
    "Hist": "#ff7621",
    "GABA-Glyc": "#820e57",
    "Sero": "#533691",
    "Nora": "#03EDFF",
}

#: The real 34 class names (release 20231215), in order.
CLASSES: tuple[str, ...] = (
    "01 IT-ET Glut", "02 NP-CT-L6b Glut", "03 OB-CR Glut", "04 DG-IMN Glut", "05 OB-IMN GABA",
    "06 CTX-CGE GABA", "07 CTX-MGE GABA", "08 CNU-MGE GABA", "09 CNU-LGE GABA", "10 LSX GABA",
    "11 CNU-HYa GABA", "12 HY GABA", "13 CNU-HYa Glut", "14 HY Glut", "15 HY Gnrh1 Glut",
    "16 HY MM Glut", "17 MH-LH Glut", "18 TH Glut", "19 MB Glut", "20 MB GABA", "21 MB Dopa",
    "22 MB-HB Sero", "23 P Glut", "24 MY Glut", "25 Pineal Glut", "26 P GABA", "27 MY GABA",
    "28 CB GABA", "29 CB Glut", "30 Astro-Epen", "31 OPC-Oligo", "32 OEC", "33 Vascular",
    "34 Immune",
)

#: Real class colours where known (the rest are generated).
_KNOWN_CLASS_COLORS = {"01 IT-ET Glut": "#FA0087", "27 MY GABA": "#0096C7"}

# Subclasses: (class number, subclass number, name, neurotransmitter, Tac2 level 0/1/2).
# Names follow the real taxonomy's style; several are real subclass names.
_SUBCLASSES: tuple[tuple[int, int, str, str, int], ...] = (
    (1, 1, "CLA-EPd-CTX Car3 Glut", "Glut", 0),
    (1, 4, "L6 IT CTX Glut", "Glut", 0),
    (1, 5, "L5 IT CTX Glut", "Glut", 0),
    (1, 7, "L2/3 IT CTX Glut", "Glut", 0),
    (1, 18, "L2 IT PPP-APr Glut", "Glut", 0),
    (1, 22, "L5 ET CTX Glut", "Glut", 0),
    (2, 29, "L6b CTX Glut", "Glut", 0),
    (2, 30, "L6 CT CTX Glut", "Glut", 0),
    (2, 32, "L5 NP CTX Glut", "Glut", 0),
    (3, 35, "OB Eomes Ms4a15 Glut", "Glut", 0),
    (3, 36, "HPF CR Glut", "Glut", 0),
    (4, 37, "DG Glut", "Glut", 0),
    (4, 38, "DG-PIR Ex IMN", "Glut", 0),
    (5, 42, "OB-out Frmd7 Gaba", "GABA", 0),
    (5, 43, "OB-mi Frmd7 Gaba", "GABA", 1),
    (5, 45, "OB-STR-CTX Inh IMN", "GABA", 0),
    (6, 46, "Vip Gaba", "GABA", 1),
    (6, 47, "Sncg Gaba", "GABA", 1),
    (6, 49, "Lamp5 Gaba", "GABA", 0),
    (7, 52, "Pvalb Gaba", "GABA", 0),
    (7, 53, "Sst Gaba", "GABA", 0),
    (8, 55, "STR Lhx8 Gaba", "GABA", 1),
    (8, 57, "NDB-SI-MA-STRv Lhx8 Gaba", "Chol", 1),
    (8, 59, "STR-SI Chat Gaba", "Chol", 0),
    (9, 61, "STR D1 Gaba", "GABA", 0),
    (9, 62, "STR D2 Gaba", "GABA", 0),
    (9, 63, "STR D1 Sema5a Gaba", "GABA", 1),
    (10, 75, "LSX Prdm12 Zeb2 Gaba", "GABA", 0),
    (10, 77, "LSX Nkx2-1 Gaba", "GABA", 0),
    (11, 82, "CEA-BST Ebf1 Pdyn Gaba", "GABA", 1),
    (11, 83, "CEA-BST Rai14 Pdyn Crh Gaba", "GABA", 1),
    (11, 87, "MPN-MPO-LPO Lhx6 Zfhx3 Gaba", "GABA", 1),
    (11, 88, "BST Tac2 Gaba", "GABA", 2),
    (12, 93, "ARH Th Dopa-Gaba", "Dopa", 0),
    (12, 98, "TMN Hdc Hist-Gaba", "Hist", 0),
    (12, 103, "PVHd-DMH Lhx6 Gaba", "GABA", 1),
    (12, 108, "ZI Pax6 Gaba", "GABA", 0),
    (13, 116, "MEA Slc17a7 Glut", "Glut", 0),
    (13, 118, "BST-po Iigp1 Glut", "Glut-GABA", 0),
    (14, 117, "LHA Barhl2 Glut", "Glut", 0),
    (14, 126, "ARH-PVp Tbx3 Glut", "Glut", 1),
    (14, 131, "PVH-SO Otp Glut", "Glut", 0),
    (14, 134, "DMH Hmx2 Glut-Gaba", "Glut-GABA", 0),
    (15, 138, "HY Gnrh1 Glut", "Glut", 0),
    (16, 140, "MM Foxb1 Glut", "Glut", 1),
    (16, 142, "PH-an Pitx2 Glut", "Glut", 0),
    (17, 145, "MH Tac2 Glut", "Chol", 2),
    (17, 146, "LH Pou4f1 Sox1 Glut", "Glut", 0),
    (18, 149, "PVT-PT Ntrk1 Glut", "Glut", 0),
    (18, 151, "TH Prkcd Grin2c Glut", "Glut", 0),
    (18, 154, "PF Fzd5 Glut", "Glut", 0),
    (18, 168, "SPA-SPFm-SPFp-POL-PIL-PoT Sp9 Glut", "Glut", 1),
    (19, 174, "PAG Pou4f2 Mesi2 Glut", "Glut", 1),
    (19, 184, "PAG Tcf24 Glut", "Glut", 1),
    (19, 188, "SC Tfap2b Glut", "Glut", 0),
    (20, 191, "PAG-MRN Rln3 Gaba", "GABA", 1),
    (20, 199, "SCs Pax7 Nfia Gaba", "GABA", 0),
    (20, 207, "SNr Six3 Gaba", "GABA", 0),
    (21, 215, "SNc-VTA-RAmb Foxa1 Dopa", "Dopa", 0),
    (22, 218, "DR Sero", "Sero", 0),
    (22, 220, "CS-PRNr-DR Sero", "Sero", 0),
    (23, 222, "PB Evx2 Glut", "Glut", 1),
    (23, 230, "LC Dbh Nora", "Nora", 0),
    (23, 236, "PG-TRN-LRN Fat2 Glut", "Glut", 0),
    (24, 255, "MY Chol Glut", "Chol", 0),
    (24, 258, "SPVC Nmu Glut", "Glut", 1),
    (24, 266, "NTS Phox2b Glut", "Glut", 0),
    (25, 281, "Pineal Crx Glut", "Glut", 0),
    (26, 282, "PB Lhx6 Gaba", "GABA", 0),
    (26, 284, "PRN Gly-Gaba", "GABA-Glyc", 0),
    (27, 285, "MY Lhx1 Gly-Gaba", "GABA-Glyc", 0),
    (27, 288, "MDRN Hoxb5 Ebf2 Gly-Gaba", "GABA-Glyc", 0),
    (27, 293, "PAS-MV Ebf2 Gly-Gaba", "GABA-Glyc", 1),
    (27, 307, "RO-RPA Pkd2l1 Gaba", "GABA", 1),
    (28, 310, "CBX Purkinje Gaba", "GABA", 0),
    (28, 312, "CBX Golgi Gly-Gaba", "GABA-Glyc", 0),
    (29, 314, "CB Granule Glut", "Glut", 0),
    (29, 315, "DCO UBC Glut", "Glut", 0),
    (30, 318, "Astro-NT NN", "NA", 0),
    (30, 319, "Astro-TE NN", "NA", 0),
    (30, 321, "Bergmann NN", "NA", 0),
    (30, 325, "CHOR NN", "NA", 1),
    (31, 326, "OPC NN", "NA", 0),
    (31, 327, "Oligo NN", "NA", 0),
    (32, 328, "OEC NN", "NA", 0),
    (33, 330, "VLMC NN", "NA", 0),
    (33, 331, "Peri NN", "NA", 0),
    (33, 333, "Endo NN", "NA", 0),
    (34, 334, "Microglia NN", "NA", 0),
    (34, 335, "BAM NN", "NA", 0),
    (34, 338, "Lymphoid NN", "NA", 0),
)

# UMAP-like layout: a centre per class, grouped so that Glut, GABA and non-neuronal classes
# form separate continents inside the real plot limits (-18..27).
_GROUP_CENTERS = {"pallium": (14.0, -4.0), "gaba_fore": (-6.0, -10.0), "hy": (-8.0, 6.0),
                  "th_mb": (5.0, 12.0), "hb": (18.0, 14.0), "cb": (20.0, 2.0), "nn": (-12.0, 20.0)}
_CLASS_GROUP = {1: "pallium", 2: "pallium", 3: "pallium", 4: "pallium", 5: "gaba_fore",
                6: "gaba_fore", 7: "gaba_fore", 8: "gaba_fore", 9: "gaba_fore", 10: "gaba_fore",
                11: "hy", 12: "hy", 13: "hy", 14: "hy", 15: "hy", 16: "hy", 17: "th_mb",
                18: "th_mb", 19: "th_mb", 20: "th_mb", 21: "th_mb", 22: "hb", 23: "hb", 24: "hb",
                25: "th_mb", 26: "hb", 27: "hb", 28: "cb", 29: "cb", 30: "nn", 31: "nn",
                32: "nn", 33: "nn", 34: "nn"}


@dataclass(frozen=True)
class Taxonomy:
    """The generated taxonomy: one row per cluster with every level's name, label and colour."""

    clusters: pd.DataFrame  # indexed by cluster_alias
    terms: pd.DataFrame  # cluster_annotation_term rows (all levels)

    @property
    def class_of_alias(self) -> pd.Series:
        """The class name of each cluster alias."""
        return self.clusters["class"]


def _hex(rng: np.random.Generator) -> str:
    r, g, b = rng.integers(0, 256, size=3)
    return f"#{r:02X}{g:02X}{b:02X}"


def build_taxonomy(seed: int = 20230722) -> Taxonomy:
    """Generate the synthetic taxonomy (deterministic for a given *seed*).

    Parameters
    ----------
    seed : int
        Seed of the random generator used for supertype/cluster counts, colours and layout.

    Returns
    -------
    Taxonomy
        ``clusters`` has one row per cluster (index ``cluster_alias``) with columns
        ``neurotransmitter, class, subclass, supertype, cluster`` (names), the matching
        ``*_label`` and ``*_color`` columns, ``class_number``, ``tac2`` and ``umap_x/umap_y``
        (the cluster's centre in the UMAP-like embedding); ``terms`` is the
        ``cluster_annotation_term`` table.
    """
    rng = np.random.default_rng(seed)
    class_colors = {name: _KNOWN_CLASS_COLORS.get(name) or _hex(rng) for name in CLASSES}
    class_centers = {}
    for number, name in enumerate(CLASSES, start=1):
        cx, cy = _GROUP_CENTERS[_CLASS_GROUP[number]]
        angle = rng.uniform(0, 2 * np.pi)
        class_centers[name] = (cx + 3.2 * np.cos(angle), cy + 3.2 * np.sin(angle))

    # supertypes: 1-2 per subclass; clusters: 1-2 per supertype
    rows = []
    for class_number, sub_number, sub_text, nt, tac2 in _SUBCLASSES:
        class_name = CLASSES[class_number - 1]
        sub_name = f"{sub_number:03d} {sub_text}"
        sub_color = "#0F6632" if sub_number == 18 else _hex(rng)
        cx, cy = class_centers[class_name]
        sx, sy = cx + rng.normal(0, 1.3), cy + rng.normal(0, 1.3)
        for k in range(1, int(rng.integers(1, 3)) + 1):
            supt_color = _hex(rng)
            tx, ty = sx + rng.normal(0, 0.6), sy + rng.normal(0, 0.6)
            for _ in range(int(rng.integers(1, 3))):
                rows.append({
                    "class_number": class_number, "class": class_name,
                    "class_color": class_colors[class_name], "subclass": sub_name,
                    "subclass_number": sub_number, "subclass_color": sub_color,
                    "supertype_text": f"{sub_text}_{k}", "supertype_color": supt_color,
                    "neurotransmitter": nt, "tac2": tac2, "cluster_color": _hex(rng),
                    "umap_x": tx + rng.normal(0, 0.35), "umap_y": ty + rng.normal(0, 0.35),
                })
    clusters = pd.DataFrame(rows)
    # numbers spread over the real ranges (1201 supertypes, 5322 clusters), in taxonomy order
    supt_keys = clusters["subclass"] + "|" + clusters["supertype_text"]
    supt_index = pd.factorize(supt_keys)[0]
    n_supt = supt_index.max() + 1
    supt_numbers = 1 + (np.arange(n_supt) * 1201) // n_supt
    clusters["supertype_number"] = supt_numbers[supt_index]
    clusters["supertype"] = [f"{n:04d} {t}" for n, t in
                             zip(clusters["supertype_number"], clusters["supertype_text"], strict=True)]
    clus_numbers = 1 + (np.arange(len(clusters)) * 5322) // len(clusters)
    clusters["cluster_number"] = clus_numbers
    clusters["cluster"] = [f"{n:04d} {t}" for n, t in zip(clus_numbers, clusters["supertype_text"], strict=True)]
    aliases = np.cumsum(rng.integers(1, 40, size=len(clusters)))
    aliases = aliases - aliases[0] + 1  # the first cluster (class 01) gets alias 1, like the real one
    clusters["cluster_alias"] = aliases
    clusters["neurotransmitter_color"] = clusters["neurotransmitter"].map(NEUROTRANSMITTERS)
    clusters["neurotransmitter_label"] = f"{LABEL_PREFIX}_NEUR_" + clusters["neurotransmitter"]
    clusters["class_label"] = [f"{LABEL_PREFIX}_CLAS_{n:02d}" for n in clusters["class_number"]]
    clusters["subclass_label"] = [f"{LABEL_PREFIX}_SUBC_{n:03d}" for n in clusters["subclass_number"]]
    clusters["supertype_label"] = [f"{LABEL_PREFIX}_SUPT_{n:04d}" for n in clusters["supertype_number"]]
    clusters["cluster_label"] = [f"{LABEL_PREFIX}_CLUS_{n:04d}" for n in clusters["cluster_number"]]
    clusters = clusters.drop(columns=["supertype_text"]).set_index("cluster_alias")
    return Taxonomy(clusters=clusters, terms=_terms(clusters))


_LEVELS = (("neurotransmitter", "NEUR"), ("class", "CLAS"), ("subclass", "SUBC"),
           ("supertype", "SUPT"), ("cluster", "CLUS"))


def _terms(clusters: pd.DataFrame) -> pd.DataFrame:
    """Build the ``cluster_annotation_term`` table from the cluster rows."""
    frames = []
    for order, (level, code) in enumerate(_LEVELS):
        if level == "neurotransmitter":
            names = list(NEUROTRANSMITTERS)
            frame = pd.DataFrame({"label": [f"{LABEL_PREFIX}_NEUR_{n}" for n in names],
                                  "name": names, "parent_term_label": "",
                                  "parent_term_set_label": "",
                                  "color_hex_triplet": [NEUROTRANSMITTERS[n] for n in names]})
        else:
            first = clusters.drop_duplicates(f"{level}_label").sort_values(f"{level}_label")
            parent = _LEVELS[order - 1] if order > 1 else None
            frame = pd.DataFrame({
                "label": first[f"{level}_label"].to_numpy(), "name": first[level].to_numpy(),
                "parent_term_label": first[f"{parent[0]}_label"].to_numpy() if parent else "",
                "parent_term_set_label": f"{TAXONOMY}_{parent[1]}" if parent else "",
                "color_hex_triplet": first[f"{level}_color"].to_numpy(),
            })
        frame["cluster_annotation_term_set_label"] = f"{TAXONOMY}_{code}"
        frame["term_set_order"] = order
        frame["term_order"] = np.arange(len(frame))
        frame["cluster_annotation_term_set_name"] = level
        frames.append(frame)
    terms = pd.concat(frames, ignore_index=True)
    return terms[["label", "name", "cluster_annotation_term_set_label", "parent_term_label",
                  "parent_term_set_label", "term_set_order", "term_order",
                  "cluster_annotation_term_set_name", "color_hex_triplet"]]


def term_set_table() -> pd.DataFrame:
    """Return the ``cluster_annotation_term_set`` table (real labels, names and descriptions)."""
    descriptions = {
        "neurotransmitter": "Clusters are assigned based on the average expression of both neurotransmitter transporter genes and key neurotransmitter synthesizing enzyme genes.",
        "class": "The top level of cell type definition in the mouse whole brain taxonomy. It is primarily determined by broad brain region and neurotransmitter type. All cells within a subclass belong to the same class. Class provides a broader categorization of cell types.",
        "subclass": "The coarse level of cell type definition in the mouse whole brain taxonomy. All cells within a supertype belong to the same subclass. Subclass groups together related supertypes.",
        "supertype": "The second finest level of cell type definition in the mouse whole brain taxonomy. All cells within a cluster belong to the same supertype. Supertype groups together similar clusters.",
        "cluster": "The finest level of cell type definition in the mouse whole brain taxonomy. Cells within a cluster share similar characteristics and belong to the same supertype.",
    }
    return pd.DataFrame({
        "label": [f"{TAXONOMY}_{code}" for _, code in _LEVELS],
        "name": [level for level, _ in _LEVELS],
        "description": [descriptions[level] for level, _ in _LEVELS],
        "order": range(len(_LEVELS)),
    })


def taxonomy_tables(taxonomy: Taxonomy, cells_per_cluster: pd.Series,
                    with_counts_view: bool = True) -> dict[str, pd.DataFrame]:
    """Return the WMB-taxonomy CSV tables keyed by their path below the directory version.

    Parameters
    ----------
    taxonomy : Taxonomy
        From :func:`build_taxonomy`.
    cells_per_cluster : pandas.Series
        Number of cells of each cluster alias (aliases absent count 0).
    with_counts_view : bool
        Include ``views/cluster_annotation_term_with_counts.csv`` (added in a later version).

    Returns
    -------
    dict of str to DataFrame
        ``{"cluster.csv": ..., "views/...csv": ...}``, each written without its index.
    """
    cl = taxonomy.clusters
    counts = cells_per_cluster.reindex(cl.index).fillna(0).astype(int)
    alias_sorted_as_text = sorted(cl.index, key=str)
    cluster_csv = pd.DataFrame({
        "cluster_alias": alias_sorted_as_text,
        "number_of_cells": counts.loc[alias_sorted_as_text].to_numpy(),
        "label": [f"{LABEL_PREFIX}_{a:04d}" for a in alias_sorted_as_text],
    })
    members = []
    by_cluster_number = cl.sort_values("cluster_number")
    for level, code in reversed(_LEVELS):
        members.append(pd.DataFrame({
            "cluster_annotation_term_label": by_cluster_number[f"{level}_label"].to_numpy(),
            "cluster_annotation_term_set_label": f"{TAXONOMY}_{code}",
            "cluster_alias": by_cluster_number.index.to_numpy(),
            "cluster_annotation_term_name": by_cluster_number[level].to_numpy(),
            "cluster_annotation_term_set_name": level,
            "number_of_cells": counts.loc[by_cluster_number.index].to_numpy(),
            "color_hex_triplet": by_cluster_number[f"{level}_color"].to_numpy(),
        }))
    membership = pd.concat(members, ignore_index=True)
    by_alias = cl.sort_index()
    pivoted = pd.DataFrame({"cluster_alias": by_alias.index})
    color = pd.DataFrame({"cluster_alias": by_alias.index})
    for level, _ in _LEVELS:
        names = by_alias[level].to_numpy()
        if level == "neurotransmitter":  # the real view leaves non-neuronal clusters empty
            names = np.where(names == "NA", "", names)
        pivoted[level] = names
        color[f"{level}_color"] = by_alias[f"{level}_color"].to_numpy()
    tables = {
        "cluster.csv": cluster_csv,
        "cluster_annotation_term.csv": taxonomy.terms,
        "cluster_annotation_term_set.csv": term_set_table(),
        "cluster_to_cluster_annotation_membership.csv": membership,
        "views/cluster_to_cluster_annotation_membership_pivoted.csv": pivoted,
        "views/cluster_to_cluster_annotation_membership_color.csv": color,
    }
    if with_counts_view:
        agg = membership.groupby("cluster_annotation_term_label").agg(
            number_of_clusters=("cluster_alias", "count"), number_of_cells=("number_of_cells", "sum"))
        with_counts = taxonomy.terms.join(agg, on="label")
        with_counts[["number_of_clusters", "number_of_cells"]] = (
            with_counts[["number_of_clusters", "number_of_cells"]].fillna(0).astype(int))
        tables["views/cluster_annotation_term_with_counts.csv"] = with_counts
    return tables
