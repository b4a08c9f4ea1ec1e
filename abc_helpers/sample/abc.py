"""The Allen Brain Cell (ABC) Atlas part of the sample world: bucket ``allen-brain-cell-atlas``.

Everything written here is **synthetic**, shaped like the real bucket:

- three release manifests (``releases/<YYYYMMDD>/manifest.json``, the real schema, written with
  ``json.dumps(indent=4)``) that differ like real releases do: WMB-10XMulti, MERFISH and the
  MERFISH CCF first appear in 20230830, WMB-neighborhoods in 20231215; the WMB-10X cell metadata
  is republished in 20231215 (refined UMAP coordinates, new md5); directory versions differ from
  the release version (20231215 points at ``expression_matrices/WMB-10Xv2/20230630``); an object
  shared by several releases is stored once, at its real key ``<kind>/<DIRECTORY>/<version>/<file>``;
- the 24 real WMB 10x matrices as small CSR h5ad pairs (about 40-210 cells each, 1000 genes of
  which the featured ten carry their real Ensembl ids), their cell metadata, gene table, ROI
  table and the two ``views/`` tables (``example_genes_all_cells_expression`` equals the log2
  matrices);
- the WMB taxonomy (real 34 classes and 10 neurotransmitter terms, ~200 clusters), the
  WMB-neighborhoods UMAPs, the Allen CCF volumes at 100 um drawn from the sample world's one
  synthetic brain (:mod:`.brain`, real structure ids), and a small MERFISH experiment in it.

See :mod:`.abc_taxonomy`, :mod:`.abc_cells`, :mod:`.abc_ccf` and :mod:`.abc_merfish` for how each
part is shaped.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ..sources import ABC_BUCKET
from .abc_ccf import (
    SECTION_THICKNESS_MM,
    SECTIONS,
    SPACING_MM,
    boundary,
    build_annotation,
    nii_gz_bytes,
    parcellation_tables,
    section_index,
    structure_tree,
    template,
)
from .abc_cells import (
    FEATURED_GENES,
    MATRICES,
    build_cells,
    build_genes,
    expression_means,
    roi_table,
    sample_counts,
    write_h5ad,
)
from .abc_merfish import MATRIX_LABEL, build_merfish
from .abc_taxonomy import build_taxonomy, taxonomy_tables
from .world import WorldWriter

LOGGER = logging.getLogger("abc_helpers")

__all__ = ["BUCKET_URL", "FEATURED_GENES", "RELEASES", "RELEASE_DIRECTORIES", "generate"]

#: The release manifests written, oldest first.
RELEASES: list[str] = ["20230630", "20230830", "20231215"]

#: The real public URL of the bucket (used in manifests, as the real ones do).
BUCKET_URL = "https://allen-brain-cell-atlas.s3.us-west-2.amazonaws.com/"

#: For each release: directory -> {kind: directory version}.
RELEASE_DIRECTORIES: dict[str, dict[str, dict[str, str]]] = {
    "20230630": {
        "WMB-10Xv2": {"expression_matrices": "20230630"},
        "WMB-10Xv3": {"expression_matrices": "20230630"},
        "WMB-10X": {"metadata": "20230630"},
        "WMB-taxonomy": {"metadata": "20230630"},
        "Allen-CCF-2020": {"image_volumes": "20230630", "metadata": "20230630"},
    },
    "20230830": {
        "MERFISH-C57BL6J-638850": {"expression_matrices": "20230830", "metadata": "20230830"},
        "WMB-10Xv2": {"expression_matrices": "20230630"},
        "WMB-10Xv3": {"expression_matrices": "20230630"},
        "WMB-10XMulti": {"expression_matrices": "20230830"},
        "WMB-10X": {"metadata": "20230830"},
        "WMB-taxonomy": {"metadata": "20230630"},
        "Allen-CCF-2020": {"image_volumes": "20230630", "metadata": "20230630"},
        "MERFISH-C57BL6J-638850-CCF": {"image_volumes": "20230630", "metadata": "20230830"},
    },
    "20231215": {
        "MERFISH-C57BL6J-638850": {"expression_matrices": "20230830", "metadata": "20231215"},
        "WMB-10Xv2": {"expression_matrices": "20230630"},
        "WMB-10Xv3": {"expression_matrices": "20230630"},
        "WMB-10XMulti": {"expression_matrices": "20230830"},
        "WMB-10X": {"metadata": "20231215"},
        "WMB-taxonomy": {"metadata": "20231215"},
        "WMB-neighborhoods": {"metadata": "20231215"},
        "Allen-CCF-2020": {"image_volumes": "20230630", "metadata": "20230630"},
        "MERFISH-C57BL6J-638850-CCF": {"image_volumes": "20230630", "metadata": "20231215"},
    },
}

#: WMB-neighborhoods cluster groups (real names) -> the class numbers they hold.
NEIGHBORHOODS: dict[str, tuple[int, ...]] = {
    "Pallium-Glut": (1, 2, 3, 4),
    "Subpallium-GABA": (5, 6, 7, 8, 9, 10, 11),
    "NN-IMN-GC": (4, 5, 29, 30, 31, 32, 33, 34),
    "TH-EPI-Glut": (17, 18, 25),
    "HY-EA-Glut-GABA": (11, 12, 13, 14, 15, 16),
    "MB-HB-Glut-Sero-Dopa": (19, 21, 22, 23, 24),
    "MB-HB-CB-GABA": (20, 26, 27, 28),
    "WholeBrain": tuple(range(1, 35)),
}

_SYNTHETIC_NOTE = "Synthetic sample data of the abc_helpers sample world (not real measurements)."


def _csv(frame: pd.DataFrame, index: bool = False) -> bytes:
    """Encode a table as CSV bytes (``\\n`` line ends, deterministic)."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=index, lineterminator="\n")
    return buffer.getvalue().encode()


class _World:
    """All synthetic ABC content, computed once per :func:`generate` call."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.taxonomy = build_taxonomy()
        self.genes = build_genes()
        self.means = expression_means(self.taxonomy, self.genes)
        self.cells = build_cells(self.taxonomy)
        self.tree = structure_tree()
        self.annotation = build_annotation()
        self.matrices: dict[str, tuple] = {}  # matrix label -> (raw, log2, obs)
        rng = np.random.default_rng(24)
        for _, matrix, _, _ in MATRICES:
            cells = self.cells[self.cells["feature_matrix_label"] == matrix]
            raw, log2 = sample_counts(self.means.loc[cells["cluster_alias"]].to_numpy(), rng)
            obs = pd.DataFrame({"cell_barcode": cells["cell_barcode"].to_numpy(),
                                "library_label": cells["library_label"].to_numpy(),
                                "anatomical_division_label": cells["_region"].to_numpy()},
                               index=pd.Index(cells["cell_label"].to_numpy(), name="cell_label"))
            self.matrices[matrix] = (raw, log2, obs)
        self.merfish = build_merfish(self.taxonomy, self.annotation, self.tree, self.means,
                                     self.genes)

    # -- WMB-10X metadata ----------------------------------------------------------------------
    def cell_metadata(self, version: str) -> pd.DataFrame:
        """The WMB-10X cell metadata published in directory *version* (rows sorted by cluster)."""
        cells = self.cells
        if version < "20230830":  # WMB-10XMulti is not released yet
            cells = cells[cells["dataset_label"] != "WMB-10XMulti"]
        cells = cells.drop(columns="_region").copy()
        if version >= "20231215":  # republished with refined UMAP coordinates
            shift = np.random.default_rng(1215).normal(0.0, 0.08, size=(len(cells), 2))
            cells[["x", "y"]] = cells[["x", "y"]].to_numpy() + shift
        cells[["x", "y"]] = cells[["x", "y"]].round(6)
        return cells.sort_values("cluster_alias", kind="stable").reset_index(drop=True)

    def example_genes(self, cells: pd.DataFrame) -> pd.DataFrame:
        """log2 expression of the featured genes (var order) for *cells*, from the matrices."""
        var = self.genes.reset_index(drop=True)
        cols = var.index[var["gene_symbol"].isin(list(FEATURED_GENES))].to_numpy()
        frames = []
        for _, log2, obs in self.matrices.values():
            frames.append(pd.DataFrame(log2[:, cols].toarray(), index=obs.index,
                                       columns=var.loc[cols, "gene_symbol"].to_numpy()))
        table = pd.concat(frames)
        table = table.loc[cells["cell_label"]]
        table.index.name = "cell_label"
        return table

    def with_cluster_annotation(self, cells: pd.DataFrame) -> pd.DataFrame:
        """Join *cells* with the pivoted taxonomy, colours and (10x only) the ROI order/colour."""
        cl = self.taxonomy.clusters
        levels = ["neurotransmitter", "class", "subclass", "supertype", "cluster"]
        names = cl[levels].copy()
        names["neurotransmitter"] = names["neurotransmitter"].replace("NA", "")
        colors = cl[[f"{lv}_color" for lv in levels]]
        out = cells.join(names, on="cluster_alias").join(colors, on="cluster_alias")
        if "region_of_interest_acronym" in cells:
            roi = roi_table().set_index("acronym")[["order", "color_hex_triplet"]]
            roi.columns = ["region_of_interest_order", "region_of_interest_color"]
            out = out.join(roi, on="region_of_interest_acronym")
        return out

    def wmb_10x_metadata(self, version: str) -> dict[str, bytes]:
        cells = self.cell_metadata(version)
        genes = self.genes.copy()
        return {
            "cell_metadata.csv": _csv(cells),
            "gene.csv": _csv(genes),
            "region_of_interest_metadata.csv": _csv(roi_table()),
            "views/cell_metadata_with_cluster_annotation.csv": _csv(self.with_cluster_annotation(cells)),
            "views/example_genes_all_cells_expression.csv": _csv(self.example_genes(cells), index=True),
        }

    def wmb_taxonomy(self, version: str) -> dict[str, bytes]:
        cells = self.cell_metadata("20231215" if version >= "20230830" else "20230630")
        counts = cells["cluster_alias"].value_counts()
        tables = taxonomy_tables(self.taxonomy, counts, with_counts_view=version >= "20231215")
        return {name: _csv(frame) for name, frame in tables.items()}

    # -- expression matrices -------------------------------------------------------------------
    def h5ad_files(self, dataset: str) -> dict[str, Callable[[Path], Path]]:
        """File name -> a function writing that h5ad to a path (files are written lazily)."""
        var = self.genes.set_index("gene_identifier")[["gene_symbol"]]
        out: dict[str, Callable[[Path], Path]] = {}
        if dataset.startswith("MERFISH"):
            mf = self.merfish
            obs = mf["cells"].set_index("cell_label")[["brain_section_label"]]
            mvar = mf["panel"].set_index("gene_identifier")[["gene_symbol"]]
            for kind in ("log2", "raw"):
                out[f"{MATRIX_LABEL}-{kind}.h5ad"] = self._h5ad_writer(mf[kind], obs, mvar, kind)
            return out
        for ds, matrix, _, _ in MATRICES:
            if ds != dataset:
                continue
            raw, log2, obs = self.matrices[matrix]
            out[f"{matrix}-log2.h5ad"] = self._h5ad_writer(log2, obs, var, "log2")
            out[f"{matrix}-raw.h5ad"] = self._h5ad_writer(raw, obs, var, "raw")
        return out

    @staticmethod
    def _h5ad_writer(X, obs, var, kind) -> Callable[[Path], Path]:
        uns = {"normalization": "log2(CPM+1)" if kind == "log2" else "raw counts",
               "description": _SYNTHETIC_NOTE}
        categorical = ("library_label", "anatomical_division_label", "brain_section_label")
        return lambda path: write_h5ad(path, X, obs, var, uns, categorical)

    # -- WMB-neighborhoods ---------------------------------------------------------------------
    def neighborhoods(self) -> dict[str, bytes]:
        cells = self.cell_metadata("20231215")
        cl = self.taxonomy.clusters
        cls = cells["cluster_alias"].map(cl["class_number"])
        groups: list[dict[str, object]] = []
        members: list[dict[str, object]] = []
        reductions: list[dict[str, object]] = []
        files: dict[str, bytes] = {}
        pivot = pd.DataFrame({"cluster_alias": cl.index.sort_values()})
        for n, (name, classes) in enumerate(NEIGHBORHOODS.items(), start=1):
            label = f"CCN20230722_CLGRP_{n:02d}"
            aliases = cl.index[cl["class_number"].isin(classes)].sort_values()
            groups.append({"label": label, "name": name,
                           "description": f"Clusters of classes {', '.join(f'{c:02d}' for c in classes)}",
                           "number_of_clusters": len(aliases)})
            members.extend({"cluster_group_label": label, "cluster_group_name": name,
                            "cluster_alias": a} for a in aliases)
            pivot[name] = pivot["cluster_alias"].isin(aliases)
            sub = cells[cls.isin(classes)]
            xy = sub[["x", "y"]].to_numpy()
            if name != "WholeBrain":  # zoom into the neighbourhood, like a re-computed UMAP
                xy = (xy - xy.mean(axis=0)) * 2.0 + 4.0
            umap = pd.DataFrame({"cell_label": sub["cell_label"].to_numpy(),
                                 "x": np.round(np.clip(xy[:, 0], -17.5, 26.5), 6),
                                 "y": np.round(np.clip(xy[:, 1], -17.5, 26.5), 6)})
            file_name = f"UMAP20230830-{name}"
            files[f"{file_name}.csv"] = _csv(umap.sort_values("cell_label"))
            reductions.append({"label": file_name, "name": name,
                               "description": f"UMAP of the {name} neighborhood",
                               "number_of_cells": len(umap), "cluster_group_label": label})
        files["cluster_group.csv"] = _csv(pd.DataFrame(groups))
        files["cluster_group_membership.csv"] = _csv(pd.DataFrame(members))
        files["dimension_reduction.csv"] = _csv(pd.DataFrame(reductions))
        files["views/cluster_group_membership_pivoted.csv"] = _csv(pivot)
        return files

    # -- CCF and MERFISH -----------------------------------------------------------------------
    def ccf_volumes(self) -> dict[str, bytes]:
        # array [AP, DV, LR] -> SimpleITK order [z=LR, y=DV, x=AP]
        def sitk_order(a):
            return np.ascontiguousarray(np.transpose(a, (2, 1, 0)))

        spacing = (SPACING_MM,) * 3
        return {
            "annotation_10.nii.gz": nii_gz_bytes(sitk_order(self.annotation), spacing, self.scratch),
            "annotation_boundary_10.nii.gz": nii_gz_bytes(sitk_order(boundary(self.annotation)),
                                                          spacing, self.scratch),
            "average_template_10.nii.gz": nii_gz_bytes(sitk_order(template(self.annotation)),
                                                       spacing, self.scratch),
        }

    def ccf_metadata(self) -> dict[str, bytes]:
        return {name: _csv(frame) for name, frame in
                parcellation_tables(self.tree, self.annotation).items()}

    def merfish_volumes(self) -> dict[str, bytes]:
        # one 2-D slice of the CCF per section, stacked in reconstructed space [z, y=DV, x=LR]
        ap_index = [section_index(ap) for _, ap in SECTIONS]
        annotation = np.ascontiguousarray(self.annotation[ap_index])  # [section, DV, LR]
        spacing = (SPACING_MM, SPACING_MM, SECTION_THICKNESS_MM)  # x = LR, y = DV, z = section
        return {
            "resampled_annotation.nii.gz": nii_gz_bytes(annotation, spacing, self.scratch),
            "resampled_annotation_boundary.nii.gz": nii_gz_bytes(
                np.ascontiguousarray(boundary(self.annotation)[ap_index]), spacing, self.scratch),
            "resampled_average_template.nii.gz": nii_gz_bytes(
                np.ascontiguousarray(template(self.annotation)[ap_index]), spacing, self.scratch),
        }

    def merfish_metadata(self, version: str) -> dict[str, bytes]:
        cells = self.merfish["cells"]
        files = {"cell_metadata.csv": _csv(cells), "gene.csv": _csv(self.merfish["panel"])}
        if version >= "20231215":
            files["views/cell_metadata_with_cluster_annotation.csv"] = _csv(
                self.with_cluster_annotation(cells))
            var = self.merfish["panel"]
            cols = var.index[var["gene_symbol"].isin(list(FEATURED_GENES))].to_numpy()
            table = pd.DataFrame(self.merfish["log2"][:, cols].toarray(),
                                 index=pd.Index(cells["cell_label"], name="cell_label"),
                                 columns=var.loc[cols, "gene_symbol"].to_numpy())
            files["views/example_genes_all_cells_expression.csv"] = _csv(table, index=True)
        return files

    def merfish_ccf_metadata(self, _version: str) -> dict[str, bytes]:  # one for every version
        return {"ccf_coordinates.csv": _csv(self.merfish["ccf"]),
                "reconstructed_coordinates.csv": _csv(self.merfish["reconstructed"])}

    # -- dispatch ------------------------------------------------------------------------------
    def files(self, directory: str, kind: str, version: str) -> dict:
        """Return ``{relative file name: bytes | writer function}`` of one directory version."""
        if kind == "expression_matrices":
            return self.h5ad_files(directory)
        if directory == "WMB-10X":
            return self.wmb_10x_metadata(version)
        if directory == "WMB-taxonomy":
            return self.wmb_taxonomy(version)
        if directory == "WMB-neighborhoods":
            return self.neighborhoods()
        if directory == "Allen-CCF-2020":
            return self.ccf_volumes() if kind == "image_volumes" else self.ccf_metadata()
        if directory == "MERFISH-C57BL6J-638850":
            return self.merfish_metadata(version)
        if directory == "MERFISH-C57BL6J-638850-CCF":
            return self.merfish_volumes() if kind == "image_volumes" else self.merfish_ccf_metadata(version)
        msg = (f"No sample content for directory '{directory}' ({kind}/{version}): add it to "
               f"abc_helpers.sample.abc._World.files or remove it from RELEASE_DIRECTORIES.")
        raise KeyError(msg)


def _file_entry(version: str, relative_path: str, size: int, md5: str) -> dict:
    return {"version": version, "relative_path": relative_path, "url": BUCKET_URL + relative_path,
            "size": size, "file_hash": md5}


def _listing_entry(name: str) -> tuple[str, str | None, str]:
    """Split a file name into (manifest key, log2/raw or None, extension)."""
    stem = Path(name).name
    if stem.endswith(".h5ad"):
        base = stem[: -len(".h5ad")]
        for sub in ("log2", "raw"):
            if base.endswith(f"-{sub}"):
                return base[: -len(sub) - 1], sub, "h5ad"
        return base, None, "h5ad"
    if stem.endswith(".nii.gz"):
        return stem[: -len(".nii.gz")], None, "nii.gz"
    base, ext = stem.rsplit(".", 1)
    return base, None, ext


def generate(writer: WorldWriter) -> None:
    """Write the synthetic ABC Atlas bucket (data files and release manifests) into *writer*.

    Parameters
    ----------
    writer : WorldWriter
        The sample world being built; objects go to bucket ``allen-brain-cell-atlas``.
    """
    scratch = writer.root / "tmp" / "abc"
    scratch.mkdir(parents=True, exist_ok=True)
    world = _World(scratch)
    stored: dict[str, tuple[int, str]] = {}  # key -> (size, md5), each object written once
    built: dict[str, dict] = {}
    for release in RELEASES:
        directory_listing: dict[str, dict] = {}
        file_listing: dict[str, dict] = {}
        for directory, kinds in RELEASE_DIRECTORIES[release].items():
            for kind, version in kinds.items():
                prefix = f"{kind}/{directory}/{version}"
                total = 0
                listing = file_listing.setdefault(directory, {}).setdefault(kind, {})
                if prefix not in built:  # a directory version shared by releases is built once
                    built[prefix] = world.files(directory, kind, version)
                contents = built[prefix]
                for name in sorted(contents):
                    key = f"{prefix}/{name}"
                    if key not in stored:
                        payload = contents[name]
                        if callable(payload):
                            path = payload(scratch / Path(name).name)
                            obj = writer.put_file(ABC_BUCKET, key, path, move=True)
                        else:
                            obj = writer.put_bytes(ABC_BUCKET, key, payload)
                        stored[key] = (obj.size, obj.md5)
                    size, md5 = stored[key]
                    total += size
                    entry_name, sub, ext = _listing_entry(name)
                    file_entry = {"files": {ext: _file_entry(version, key, size, md5)}}
                    if sub is None:
                        listing[entry_name] = file_entry
                    else:
                        listing.setdefault(entry_name, {})[sub] = file_entry
                directory_listing.setdefault(directory, {"directories": {}})["directories"][kind] = {
                    "version": version, "relative_path": prefix, "url": BUCKET_URL + prefix + "/",
                    "view_link": BUCKET_URL + "index.html#" + prefix + "/", "total_size": total,
                }
        manifest = {"version": release, "resource_uri": f"s3://{ABC_BUCKET}/",
                    "directory_listing": directory_listing, "file_listing": file_listing}
        writer.put_bytes(ABC_BUCKET, f"releases/{release}/manifest.json",
                         json.dumps(manifest, indent=4).encode())
    LOGGER.info("ABC sample: %d objects, %d bytes (synthetic)", len(stored),
                sum(size for size, _ in stored.values()))
