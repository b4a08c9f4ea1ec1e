"""The parameters cell is a contract: every chapter, run by papermill with parameters other than its
defaults, completes and its key outputs change accordingly.

Each test skips (saying why) while its chapter does not exist yet. Any error fails the test: cells
that demonstrate an error catch it and print the message.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from support.notebooks import chapter, parameters_of, run_chapter, stored, text_of

from abc_helpers import AbcProjectCache, OutdatedManifestWarning
from abc_helpers.neuropixels import VbnProjectCache

pytestmark = pytest.mark.slow



# -- chapter 1: getting started --------------------------------------------------------------------
def test_getting_started_other_release(tmp_path, sample_source):
    """getting_started opens another release (its `release` parameter, or a cache_dir last used
    with it) and says so."""
    path = chapter("getting_started")
    params = parameters_of(path)
    needle = "from_cache_dir("
    assert "'releases/20231215/manifest.json'" in text_of(stored(path), needle)
    if "release" in params:
        nb = run_chapter(path, tmp_path, release="20230630", cache_dir=str(tmp_path / "cache"))
    else:
        # No release parameter (yet): a cache folder last used with an older release opens it.
        cache = tmp_path / "cache"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OutdatedManifestWarning)
            AbcProjectCache(cache, source=sample_source).load_manifest("20230630")
        nb = run_chapter(path, tmp_path, cache_dir=str(cache))
    opened = text_of(nb, needle)
    assert "'releases/20230630/manifest.json'" in opened, opened
    assert "OutdatedManifestWarning" in opened  # ... and the reader is told a newer one exists
    # the rest of the chapter ran on the same folder: the cache_dir parameter was honoured
    assert (tmp_path / "cache" / "releases" / "20230630" / "manifest.json").is_file()
    assert (tmp_path / "cache" / "metadata" / "WMB-10X" / "20231215" / "gene.csv").is_file()


# -- chapter 2: gene extraction --------------------------------------------------------------------
def test_gene_extraction_other_genes_raw(tmp_path):
    """gene_extraction with other genes and raw counts returns exactly those genes, as counts."""
    path = chapter("gene_extraction")
    params = parameters_of(path)
    genes = ["Slc32a1", "Xkr4", "Tac2"]
    assert genes != params["genes"] and params.get("data_type") == "log2"
    nb = run_chapter(path, tmp_path, genes=genes, data_type="raw", cache_dir=str(tmp_path / "cache"))
    table = text_of(nb, "gdata.head()")
    match = re.search(r"\((\d+), (\d+)\)", table)
    assert match and int(match.group(2)) == len(genes), table
    header = next(line for line in table.splitlines() if line.startswith("gene_symbol"))
    assert header.split()[1:] == genes, header
    # raw counts are whole numbers (log2 values of the default run are not)
    values = [float(v) for line in table.splitlines()[3:] for v in line.split()[1:]
              if re.fullmatch(r"-?\d+(\.\d+)?", v)]
    assert values and all(v == int(v) for v in values), table
    default_values = text_of(stored(path), "gdata.head()")
    assert re.search(r"\d+\.\d*[1-9]", default_values)
    # every cell, not just the head: the view the notebook saved equals the raw matrices it read,
    # read here independently with anndata
    import anndata

    saved = pd.read_csv(tmp_path / "cache" / "my_views" / "example_genes_all_cells_expression.csv",
                        index_col="cell_label")
    assert list(saved.columns) == genes and len(saved) > 1000
    frames = []
    for h5ad in sorted((tmp_path / "cache" / "expression_matrices").rglob("*-raw.h5ad")):
        adata = anndata.read_h5ad(h5ad, backed="r")
        var = adata.var.reset_index().set_index("gene_symbol")
        frame = adata[:, var.loc[genes].iloc[:, 0].to_numpy()].to_df()
        frame.columns = genes
        frames.append(frame)
        adata.file.close()
    expected = pd.concat(frames)
    assert set(saved.index) <= set(expected.index)
    np.testing.assert_array_equal(saved.to_numpy(), expected.loc[saved.index].to_numpy())
    assert np.array_equal(saved.to_numpy(), np.round(saved.to_numpy())) and saved.to_numpy().max() > 1


def test_gene_extraction_some_matrices(tmp_path):
    """gene_extraction with `matrices` reads only those matrices' cells, downloads and indexes only
    those matrices, and compares with the published view over the cells both have."""
    path = chapter("gene_extraction")
    assert parameters_of(path)["matrices"] is None  # the default: every matrix
    wanted = ["WMB-10XMulti", "WMB-10Xv2-HY"]
    cache = tmp_path / "cache"
    nb = run_chapter(path, tmp_path, matrices=wanted, cache_dir=str(cache))
    (metadata,) = (cache / "metadata" / "WMB-10X").iterdir()  # the loaded release's version
    cells = pd.read_csv(metadata / "cell_metadata.csv", index_col="cell_label", dtype={"cell_label": str})
    expected = cells.index[cells["feature_matrix_label"].isin(wanted)]
    assert 0 < len(expected) < len(cells)
    saved = pd.read_csv(cache / "my_views" / "example_genes_all_cells_expression.csv",
                        index_col="cell_label", dtype={"cell_label": str})
    assert sorted(saved.index) == sorted(expected)
    downloaded = sorted(p.name for p in (cache / "expression_matrices").rglob("*.h5ad")
                        if not p.name.endswith(".gene_index.h5ad"))
    assert downloaded == sorted(f"{m}-log2.h5ad" for m in wanted)
    assert f"{len(wanted)} gene indexes built" in text_of(nb, "build_gene_index(")
    compared = text_of(nb, "shared = ours.index.intersection")
    published = pd.read_csv(metadata / "views" / "example_genes_all_cells_expression.csv",
                            index_col="cell_label")
    counts = f"cells: {len(expected):,} here, {len(published):,} in the published view, {len(expected):,} in both"
    assert counts in compared, compared
    assert "largest difference over the shared genes: 0e+00" in compared, compared
    assert f"{len(wanted)} of the {len(wanted)} log2 matrices have a gene index served" in \
        text_of(nb, "served_indexes(learner)")


# -- chapter 3: ISH grids --------------------------------------------------------------------------
def test_ish_grids_other_plane(tmp_path):
    """ish_grids on the other plane queries, downloads and stacks sagittal experiments."""
    path = chapter("ish_grids")
    params = parameters_of(path)
    other = {"coronal": "sagittal", "sagittal": "coronal"}[params["plane"]]
    genes = ["Pcp2", "Calb1", "Pvalb", "Gad1", "Drd1"]
    nb = run_chapter(path, tmp_path, plane=other, genes=genes, show_gene="Pcp2",
                     out_dir=str(tmp_path / "out"))
    found = text_of(nb, "query_section_datasets(")
    match = re.search(rf"(\d+) {other} experiments for (\d+) genes", found)
    assert match, found
    assert int(match.group(2)) == len(genes)
    assert f"{params['plane']} experiments" in text_of(stored(path), "query_section_datasets(")
    stacked = text_of(nb, "build_expression_stack(")
    assert other in stacked and params["plane"] not in stacked.split("stack:")[-1], stacked
    assert any((tmp_path / "out" / "grids").glob("*.zip"))


# -- chapter 4: Neuropixels metadata ----------------------------------------------------------------
def _session_parameter(params: dict) -> str | None:
    names = [n for n in params if "session" in n]
    return names[0] if names else None


def test_neuropixels_other_session(tmp_path):
    """neuropixels_metadata on another session shows that session."""
    path = chapter("neuropixels_metadata")
    name = _session_parameter(parameters_of(path))
    if name is None:
        pytest.skip("neuropixels_metadata has no session parameter yet (e.g. `session_id = None`)")
    nb = run_chapter(path, tmp_path, **{name: 1041593107}, cache_dir=str(tmp_path / "cache"))
    shown = "".join(text_of(nb, needle) for needle in ("session.metadata",))
    assert "1041593107" in shown, shown
    assert "1041593107" not in text_of(stored(path), "session.metadata")


def test_neuropixels_cache_dir_last_used_manifest(tmp_path, sample_source):
    """neuropixels_metadata on a cache folder last used with manifest v0.1.0 opens that manifest."""
    path = chapter("neuropixels_metadata")
    old = "visual-behavior-neuropixels_project_manifest_v0.1.0.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutdatedManifestWarning)
        VbnProjectCache.from_s3_cache(tmp_path / "cache", source=sample_source,
                                      progressbar=False).load_manifest(old)
    nb = run_chapter(path, tmp_path, cache_dir=str(tmp_path / "cache"))
    assert old not in text_of(stored(path), "cache.current_manifest()")
    assert old in text_of(nb, "cache.current_manifest()")
    assert old in text_of(nb, "cache.list_all_downloaded_manifests()")


# -- chapter 5: Linking the atlases -----------------------------------------------------------------
def test_linking_atlases_other_session_and_probe(tmp_path):
    """linking_atlases on another session and probe follows that probe's own track."""
    path = chapter("linking_atlases")
    nb = run_chapter(path, tmp_path, session_id=1041593107, probe="probeA",
                     cache_dir=str(tmp_path / "cache"))
    shown = text_of(nb, "print(f\"session {session_id}")
    assert "session 1041593107, probeA" in shown, shown
    stored_text = text_of(stored(path), "print(f\"session {session_id}")
    assert "probeA" not in stored_text and "1041593107" not in stored_text
    tracks = [re.search(r"structures from tip to top: (.*)", t).group(1) for t in (shown, stored_text)]
    assert tracks[0] != tracks[1], tracks
    assert "genes with a coronal grid" in text_of(nb, "query_section_datasets(")


def test_linking_atlases_max_matrix_gb(tmp_path):
    """linking_atlases with `max_matrix_gb` reads only the smallest 10x matrices of the crossed
    regions, up to that total, and fetches nothing of any other matrix."""
    path = chapter("linking_atlases")
    assert parameters_of(path)["max_matrix_gb"] == 1.0  # the default: 1 GB (every matrix of the sample)
    cache = tmp_path / "cache"
    budget_gb = 0.0005
    nb = run_chapter(path, tmp_path, max_matrix_gb=budget_gb, cache_dir=str(cache))
    shown = text_of(nb, "by_size = size")
    listed = re.findall(r"^\s*(?:WMB-10X\S*\s+)?(WMB-10X\S*)\s+\d+\s+[\d.]+$", shown, re.M)
    assert len(listed) > 2, shown  # the crossed regions' matrices, all of them listed
    abc = AbcProjectCache.from_cache_dir(cache / "abc", source="sample")
    sizes = sorted((abc.get_file_attributes(d, f"{m}/log2").size, m)
                   for d in ("WMB-10Xv2", "WMB-10Xv3", "WMB-10XMulti")
                   for m in listed if m.startswith(d + "-") or m == d)
    assert len(sizes) == len(listed)
    expected = [m for (_, m), total in zip(sizes, np.cumsum([s for s, _ in sizes]), strict=True)
                if total <= budget_gb * 1024**3]  # the package's GB
    assert 0 < len(expected) < len(listed)
    assert f"reading {len(expected)} of them, " in shown, shown
    # the matrices read: downloaded (.h5ad) or queried through a served gene index (its sidecars)
    read = {p.name.split("-log2.")[0] for p in (cache / "abc" / "expression_matrices").rglob("*-log2.*")}
    assert read == set(expected)
    assert "No matrix of these regions fits" not in text_of(nb, "expression = get_gene_data(")
