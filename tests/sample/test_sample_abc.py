"""The synthetic ABC Atlas bucket of the sample world: manifests, objects, matrices, biology."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.worlds import shared_world

from abc_helpers.sample import abc, build_world
from abc_helpers.sample.world import load_index, md5_of_file
from abc_helpers.sources import ABC_BUCKET

#: Real published files the sample must match (tests/data/README.md).
REFERENCE = Path(__file__).resolve().parents[1] / "data"
CLASS_NAMES_20231215 = 34


def _build(root: Path) -> Path:
    return build_world(root, generators=("abc",))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """One ABC-only world, built into a temporary folder once per test run."""
    return shared_world(tmp_path_factory, ("abc",))


def _bucket(world: Path) -> Path:
    return world / "s3" / ABC_BUCKET


def _manifest(world: Path, release: str) -> dict:
    return json.loads((_bucket(world) / "releases" / release / "manifest.json").read_text())


def _files(manifest: dict):
    """Yield (directory, kind, name, sub or None, ext, FILE) for every file of a manifest."""
    for directory, kinds in manifest["file_listing"].items():
        for kind, entries in kinds.items():
            for name, entry in entries.items():
                if "files" in entry:
                    for ext, file in entry["files"].items():
                        yield directory, kind, name, None, ext, file
                else:
                    for sub, sub_entry in entry.items():
                        for ext, file in sub_entry["files"].items():
                            yield directory, kind, name, sub, ext, file


def _file(manifest: dict, directory: str, name: str, sub: str | None = None) -> dict:
    for d, _, n, s, _, file in _files(manifest):
        if (d, n, s) == (directory, name, sub):
            return file
    raise KeyError(f"{directory}/{name}/{sub} not in release {manifest['version']}")


def test_release_manifests_exist_and_parse(world):
    """Every release has a manifest with the real top-level keys and its own version."""
    keys = sorted(p.parent.name for p in (_bucket(world) / "releases").glob("*/manifest.json"))
    assert keys == abc.RELEASES
    for release in abc.RELEASES:
        manifest = _manifest(world, release)
        assert set(manifest) == {"version", "resource_uri", "directory_listing", "file_listing"}
        assert manifest["version"] == release
        assert manifest["resource_uri"] == "s3://allen-brain-cell-atlas/"
        assert set(manifest["directory_listing"]) == set(manifest["file_listing"])


def test_manifest_is_indented_like_manifest_builder(world):
    """Manifests are written with json.dumps(indent=4), as manifest_builder does."""
    text = (_bucket(world) / "releases" / "20231215" / "manifest.json").read_text()
    assert text == json.dumps(json.loads(text), indent=4)


def test_manifest_key_sets_match_the_real_manifest(world):
    """Directory entries, FILE entries and h5ad pairs have exactly the real keys."""
    real = json.loads((REFERENCE / "abc_manifest_20231215.json").read_text())
    real_dir_keys = {frozenset(e) for d in real["directory_listing"].values()
                     for e in d["directories"].values()}
    real_file_keys = {frozenset(f) for *_, f in _files(real)}
    real_h5ad_subs = {frozenset(e) for d in real["file_listing"].values()
                      for e in d.get("expression_matrices", {}).values() if "files" not in e}
    real_kinds = {k for d in real["file_listing"].values() for k in d}
    for release in abc.RELEASES:
        manifest = _manifest(world, release)
        for directory in manifest["directory_listing"].values():
            assert set(directory) == {"directories"}
            for entry in directory["directories"].values():
                assert frozenset(entry) in real_dir_keys
        for d, kind, name, _sub, _ext, file in _files(manifest):
            assert frozenset(file) in real_file_keys, (d, name)
            assert kind in real_kinds
        for d in manifest["file_listing"].values():
            for entry in d.get("expression_matrices", {}).values():
                assert "files" in entry or frozenset(entry) in real_h5ad_subs
    # the directories the sample shares with the real release carry the same file names
    sample = _manifest(world, "20231215")
    for directory in ("WMB-10X", "WMB-10Xv2", "WMB-10Xv3", "WMB-10XMulti", "WMB-taxonomy",
                      "Allen-CCF-2020"):
        for kind, entries in real["file_listing"][directory].items():
            assert set(sample["file_listing"][directory][kind]) == set(entries), directory
            for name, entry in entries.items():
                real_paths = [f["relative_path"].split("/", 3)[3] for *_, f in
                              _files({"file_listing": {directory: {kind: {name: entry}}}})]
                ours = [f["relative_path"].split("/", 3)[3] for *_, f in
                        _files({"file_listing": {directory: {kind: {
                            name: sample["file_listing"][directory][kind][name]}}}})]
                assert sorted(ours) == sorted(real_paths)


def test_every_file_entry_matches_its_stored_object(world):
    """size, md5, url and relative_path of every FILE match the object; total_size adds up."""
    index = load_index(world)[ABC_BUCKET]
    for release in abc.RELEASES:
        manifest = _manifest(world, release)
        totals: dict[tuple[str, str], int] = {}
        for directory, kind, _, _, _, file in _files(manifest):
            path = _bucket(world) / file["relative_path"]
            assert path.is_file(), file["relative_path"]
            assert file["size"] == path.stat().st_size
            assert file["file_hash"] == md5_of_file(path)
            assert file["url"] == abc.BUCKET_URL + file["relative_path"]
            dir_entry = manifest["directory_listing"][directory]["directories"][kind]
            assert file["relative_path"].startswith(dir_entry["relative_path"] + "/")
            assert file["version"] == dir_entry["version"]
            assert index[file["relative_path"]][-1].md5 == file["file_hash"]
            totals[(directory, kind)] = totals.get((directory, kind), 0) + file["size"]
        for directory, entry in manifest["directory_listing"].items():
            for kind, d in entry["directories"].items():
                assert d["total_size"] == totals[(directory, kind)]
                assert d["relative_path"] == f"{kind}/{directory}/{d['version']}"
                assert d["url"] == abc.BUCKET_URL + d["relative_path"] + "/"
                assert d["view_link"] == abc.BUCKET_URL + "index.html#" + d["relative_path"] + "/"


def test_releases_differ_like_real_releases(world):
    """Directories appear in later releases, a file is republished, versions are independent."""
    old, mid, new = (_manifest(world, r) for r in abc.RELEASES)
    assert "WMB-10XMulti" not in old["directory_listing"]
    assert "WMB-10XMulti" in mid["directory_listing"]
    assert "WMB-neighborhoods" not in mid["directory_listing"]
    assert "WMB-neighborhoods" in new["directory_listing"]
    before = _file(mid, "WMB-10X", "cell_metadata")
    after = _file(new, "WMB-10X", "cell_metadata")
    assert after["relative_path"] == "metadata/WMB-10X/20231215/cell_metadata.csv"
    assert before["file_hash"] != after["file_hash"]
    v2 = new["directory_listing"]["WMB-10Xv2"]["directories"]["expression_matrices"]
    assert v2["version"] == "20230630" and v2["relative_path"] == "expression_matrices/WMB-10Xv2/20230630"
    th = _file(new, "WMB-10Xv2", "WMB-10Xv2-TH", "log2")
    assert th["relative_path"] == "expression_matrices/WMB-10Xv2/20230630/WMB-10Xv2-TH-log2.h5ad"
    assert _file(old, "WMB-10Xv2", "WMB-10Xv2-TH", "log2") == th  # one object, shared
    color = _file(new, "WMB-taxonomy", "cluster_to_cluster_annotation_membership_color")
    assert color["relative_path"] == (
        "metadata/WMB-taxonomy/20231215/views/cluster_to_cluster_annotation_membership_color.csv")
    # objects shared by several releases are stored once (a single S3 version)
    index = load_index(world)[ABC_BUCKET]
    assert all(len(versions) == 1 for versions in index.values())


def test_matrix_labels_and_counts(world):
    """All 24 real matrix labels, 10 WMB-10Xv2 and 13 WMB-10Xv3 pairs, 1 WMB-10XMulti pair."""
    new = _manifest(world, "20231215")["file_listing"]
    counts = {d: len(new[d]["expression_matrices"]) for d in ("WMB-10Xv2", "WMB-10Xv3", "WMB-10XMulti")}
    assert counts == {"WMB-10Xv2": 10, "WMB-10Xv3": 13, "WMB-10XMulti": 1}
    for d in counts:
        for entry in new[d]["expression_matrices"].values():
            assert set(entry) == {"log2", "raw"}


def test_two_builds_are_byte_identical(world, tmp_path):
    """The generator is deterministic: a second build gives the same md5 for every object."""
    second = _build(tmp_path / "again")
    first_index = {k: v[-1].md5 for k, v in load_index(world)[ABC_BUCKET].items()}
    second_index = {k: v[-1].md5 for k, v in load_index(second)[ABC_BUCKET].items()}
    assert first_index == second_index
    assert len(first_index) > 100


def _read_csv(world: Path, file: dict, **kwargs) -> pd.DataFrame:
    return pd.read_csv(_bucket(world) / file["relative_path"], **kwargs)


def _matrix_paths(world: Path, manifest: dict, sub: str = "log2") -> dict[str, Path]:
    out = {}
    for d, kind, name, s, _, file in _files(manifest):
        if kind == "expression_matrices" and s == sub and d.startswith("WMB"):
            out[name] = _bucket(world) / file["relative_path"]
    return out


def test_h5ad_files_open_with_anndata(world):
    """log2 and raw open backed as CSR, with cell_label obs, gene_identifier var, gene_symbol."""
    anndata = pytest.importorskip("anndata")
    new = _manifest(world, "20231215")
    log2 = anndata.read_h5ad(_bucket(world) / _file(new, "WMB-10Xv2", "WMB-10Xv2-TH", "log2")["relative_path"], backed="r")
    raw = anndata.read_h5ad(_bucket(world) / _file(new, "WMB-10Xv2", "WMB-10Xv2-TH", "raw")["relative_path"])
    try:
        assert log2.obs.index.name == "cell_label" and log2.var.index.name == "gene_identifier"
        assert list(log2.var.columns) == ["gene_symbol"]
        assert set(log2.obs.columns) == {"cell_barcode", "library_label", "anatomical_division_label"}
        assert log2.X.format == "csr"
        for symbol, gene_id in abc.FEATURED_GENES.items():
            assert log2.var.loc[gene_id, "gene_symbol"] == symbol
        X = log2.X[:]
        assert X.dtype == np.float32 and raw.X.dtype == np.float32
        assert np.array_equal(X.indices, raw.X.indices) and np.array_equal(X.indptr, raw.X.indptr)
        assert np.array_equal(raw.X.data, np.round(raw.X.data))  # integer counts
        density = raw.X.nnz / np.prod(raw.shape)
        assert 0.03 < density < 0.12
        label = log2.obs.index[0]
        barcode, sample = label.split("-", 1)
        assert len(barcode) == 16 and set(barcode) <= set("ACGT") and "_" in sample
    finally:
        log2.file.close()


def test_cell_metadata_is_exactly_the_cells_of_the_release_matrices(world):
    """Each release's WMB-10X cell_metadata lists exactly the cells of its matrices."""
    h5py = pytest.importorskip("h5py")
    for release in abc.RELEASES:
        manifest = _manifest(world, release)
        cells = _read_csv(world, _file(manifest, "WMB-10X", "cell_metadata"), dtype={"cell_label": str})
        obs = set()
        for name, path in _matrix_paths(world, manifest).items():
            with h5py.File(path, "r") as f:
                labels = f["obs"]["cell_label"].asstr()[:]
            obs |= set(labels)
            assert set(cells.loc[cells["feature_matrix_label"] == name, "cell_label"]) == set(labels)
        assert set(cells["cell_label"]) == obs
        assert cells["cell_label"].is_unique
        assert ("WMB-10XMulti" in set(cells["feature_matrix_label"])) == (release != "20230630")


def test_csv_headers_are_the_real_ones(world):
    """cell_metadata, gene and taxonomy tables carry the real headers (as listed in abc_tables.md)."""
    new = _manifest(world, "20231215")
    expected = {
        ("WMB-10X", "cell_metadata"): "cell_label,cell_barcode,barcoded_cell_sample_label,library_label,feature_matrix_label,entity,brain_section_label,library_method,region_of_interest_acronym,donor_label,donor_genotype,donor_sex,dataset_label,x,y,cluster_alias",
        ("WMB-10X", "gene"): "gene_identifier,gene_symbol,name,mapped_ncbi_identifier,comment",
        ("WMB-taxonomy", "cluster"): "cluster_alias,number_of_cells,label",
        ("WMB-taxonomy", "cluster_annotation_term_set"): "label,name,description,order",
        ("WMB-taxonomy", "cluster_annotation_term"): "label,name,cluster_annotation_term_set_label,parent_term_label,parent_term_set_label,term_set_order,term_order,cluster_annotation_term_set_name,color_hex_triplet",
        ("WMB-taxonomy", "cluster_to_cluster_annotation_membership"): "cluster_annotation_term_label,cluster_annotation_term_set_label,cluster_alias,cluster_annotation_term_name,cluster_annotation_term_set_name,number_of_cells,color_hex_triplet",
        ("WMB-taxonomy", "cluster_to_cluster_annotation_membership_pivoted"): "cluster_alias,neurotransmitter,class,subclass,supertype,cluster",
        ("WMB-taxonomy", "cluster_to_cluster_annotation_membership_color"): "cluster_alias,neurotransmitter_color,class_color,subclass_color,supertype_color,cluster_color",
        ("WMB-10X", "example_genes_all_cells_expression"): "cell_label,Slc32a1,Slc17a7,Slc6a5,Slc17a6,Slc6a2,Slc17a8,Tac2,Slc6a4,Slc6a3,Slc18a3",
    }
    for (directory, name), header in expected.items():
        path = _bucket(world) / _file(new, directory, name)["relative_path"]
        assert path.read_text().split("\n", 1)[0] == header, name
    joined = _read_csv(world, _file(new, "WMB-10X", "cell_metadata_with_cluster_annotation"), nrows=1)
    assert list(joined.columns)[16:] == [
        "neurotransmitter", "class", "subclass", "supertype", "cluster", "neurotransmitter_color",
        "class_color", "subclass_color", "supertype_color", "cluster_color",
        "region_of_interest_order", "region_of_interest_color"]


def test_example_genes_view_equals_the_matrices(world):
    """views/example_genes_all_cells_expression holds the featured genes' log2 values."""
    anndata = pytest.importorskip("anndata")
    for release in ("20230630", "20231215"):
        manifest = _manifest(world, release)
        view = _read_csv(world, _file(manifest, "WMB-10X", "example_genes_all_cells_expression"),
                         index_col="cell_label")
        cells = _read_csv(world, _file(manifest, "WMB-10X", "cell_metadata"), index_col="cell_label")
        assert list(view.index) == list(cells.index)
        frames = []
        for path in _matrix_paths(world, manifest).values():
            adata = anndata.read_h5ad(path, backed="r")
            genes = adata.var[adata.var["gene_symbol"].isin(list(abc.FEATURED_GENES))]
            frame = adata[:, genes.index].to_df()
            frame.columns = genes["gene_symbol"].to_numpy()
            frames.append(frame)
            adata.file.close()
        expected = pd.concat(frames).loc[view.index, view.columns]
        np.testing.assert_allclose(view.to_numpy(), expected.to_numpy(), rtol=1e-6, atol=1e-6)
        assert (view.to_numpy() > 0).any()


def _annotated_expression(world: Path) -> pd.DataFrame:
    new = _manifest(world, "20231215")
    cells = _read_csv(world, _file(new, "WMB-10X", "cell_metadata_with_cluster_annotation"),
                      index_col="cell_label", keep_default_na=False)
    view = _read_csv(world, _file(new, "WMB-10X", "example_genes_all_cells_expression"),
                     index_col="cell_label")
    return cells.join(view)


def test_biology_glut_and_gaba_markers(world):
    """Slc17a7 is higher in Glut than GABA classes, Slc32a1 the reverse, and so on."""
    data = _annotated_expression(world)
    by_nt = data.groupby("neurotransmitter")[list(abc.FEATURED_GENES)].mean()
    assert by_nt.loc["Glut", "Slc17a7"] > by_nt.loc["GABA", "Slc17a7"] + 3
    assert by_nt.loc["GABA", "Slc32a1"] > by_nt.loc["Glut", "Slc32a1"] + 3
    for nt, gene in (("GABA-Glyc", "Slc6a5"), ("Chol", "Slc18a3"), ("Dopa", "Slc6a3"),
                     ("Sero", "Slc6a4"), ("Nora", "Slc6a2")):
        assert by_nt[gene].idxmax() == nt, gene
    glut_classes = data[data["class"].str.endswith("Glut")]
    by_class = glut_classes.groupby("class")[["Slc17a7", "Slc17a6"]].mean()
    assert by_class.loc["01 IT-ET Glut", "Slc17a7"] > by_class.loc["18 TH Glut", "Slc17a7"]
    assert by_class.loc["18 TH Glut", "Slc17a6"] > by_class.loc["01 IT-ET Glut", "Slc17a6"]
    th = data[data["feature_matrix_label"].str.endswith("-TH")]
    assert th["class"].value_counts().index[0] == "18 TH Glut"
    assert th.groupby("class")["Tac2"].mean().idxmax() == "17 MH-LH Glut"
    assert data["x"].between(-18, 27).all() and data["y"].between(-18, 27).all()


def test_taxonomy_uses_the_real_classes_and_neurotransmitters(world):
    """34 real classes, 10 neurotransmitter terms with their real colours, a modest tree."""
    new = _manifest(world, "20231215")
    terms = _read_csv(world, _file(new, "WMB-taxonomy", "cluster_annotation_term"), keep_default_na=False)
    sets = terms.groupby("cluster_annotation_term_set_name").size()
    assert sets["class"] == CLASS_NAMES_20231215 and sets["neurotransmitter"] == 10
    assert 100 <= sets["cluster"] <= 300
    nt = terms[terms["cluster_annotation_term_set_name"] == "neurotransmitter"]
    assert dict(zip(nt["name"], nt["color_hex_triplet"], strict=True)) == {
        "Glut": "#2B93DF", "NA": "#666666", "GABA": "#FF3358", "Dopa": "#fcf04b",
        "Glut-GABA": "#0a9964", "Chol": "#73E785", "Hist": "#ff7621", "GABA-Glyc": "#820e57",
        "Sero": "#533691", "Nora": "#03EDFF"}
    classes = terms.loc[terms["cluster_annotation_term_set_name"] == "class", "name"].tolist()
    assert classes[0] == "01 IT-ET Glut" and classes[-1] == "34 Immune" and "17 MH-LH Glut" in classes
    pivot = _read_csv(world, _file(new, "WMB-taxonomy", "cluster_to_cluster_annotation_membership_pivoted"),
                      keep_default_na=False)
    assert len(pivot) == sets["cluster"]
    assert set(pivot["neurotransmitter"]) == {"", "Chol", "Dopa", "GABA", "GABA-Glyc", "Glut",
                                              "Glut-GABA", "Hist", "Nora", "Sero"}
    counts = _read_csv(world, _file(new, "WMB-taxonomy", "cluster"))
    cells = _read_csv(world, _file(new, "WMB-10X", "cell_metadata"))
    assert counts["number_of_cells"].sum() == len(cells)
    assert (counts["number_of_cells"] > 0).all()


def test_ccf_volumes_are_coarse_brains_with_real_regions(world):
    """The CCF nii.gz volumes read with SimpleITK: 100 um, real structures, gzip without mtime."""
    sitk = pytest.importorskip("SimpleITK")
    new = _manifest(world, "20231215")
    path = _bucket(world) / _file(new, "Allen-CCF-2020", "annotation_10")["relative_path"]
    assert path.read_bytes()[4:8] == b"\x00\x00\x00\x00"  # gzip mtime field
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (132, 80, 114)
    assert np.allclose(image.GetSpacing(), 0.1)
    values = np.unique(sitk.GetArrayFromImage(image))
    membership = _read_csv(world, _file(new, "Allen-CCF-2020", "parcellation_to_parcellation_term_membership_acronym"))
    assert set(values) == set(membership["parcellation_index"])
    acronyms = set(membership["structure"])
    assert {"MOp", "SSp-bfd", "VISp", "CA1", "DG", "CP", "LP", "VPM", "HY", "CBX", "MY"} <= acronyms
    assert {"VISp5", "DG-sg", "CBXpu"} <= set(membership["substructure"])
    ccf = _read_csv(world, _file(new, "MERFISH-C57BL6J-638850-CCF", "ccf_coordinates"))
    assert list(ccf.columns) == ["cell_label", "x", "y", "z", "parcellation_index"]
    assert set(ccf["parcellation_index"]) <= set(values) and 0 not in set(ccf["parcellation_index"])


def test_merfish_matrix_matches_its_metadata(world):
    """The MERFISH h5ad pair holds exactly the cells of the MERFISH cell metadata."""
    anndata = pytest.importorskip("anndata")
    new = _manifest(world, "20231215")
    cells = _read_csv(world, _file(new, "MERFISH-C57BL6J-638850", "cell_metadata"), dtype={"cell_label": str})
    adata = anndata.read_h5ad(_bucket(world) / _file(new, "MERFISH-C57BL6J-638850", "C57BL6J-638850", "log2")["relative_path"])
    assert list(adata.obs.index) == list(cells["cell_label"])
    assert set(abc.FEATURED_GENES.values()) <= set(adata.var.index)
