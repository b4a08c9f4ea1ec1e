"""The sample Allen API: RMA queries on SectionDataSet and grid downloads, over loopback HTTP."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import requests

from abc_helpers.sample import allen_api, amba, brain

SEED_QUERY = (
    "api/v2/data/SectionDataSet/query.csv?criteria=[failed$eqfalse],plane_of_section[name$eqcoronal],"
    "products[abbreviation$eqMouse],treatments[name$eqISH],genes&tabular=data_sets.id+as+experiment_id,"
    "data_sets.section_thickness,data_sets.specimen_id,plane_of_sections.name+as+plane,"
    "genes.acronym+as+gene,genes.name+as+gene_name,genes.chromosome_id,genes.entrez_id,"
    "genes.genomic_reference_update_id,genes.homologene_id,genes.organism_id&start_row=0&num_rows=all"
)
SEED_COLUMNS = ["experiment_id", "section_thickness", "specimen_id", "plane", "gene", "gene_name",
                "chromosome_id", "entrez_id", "genomic_reference_update_id", "homologene_id", "organism_id"]


@pytest.fixture(scope="module")
def world(amba_world):
    """A world with the Allen API data only."""
    return amba_world


@pytest.fixture(scope="module")
def api(amba_server):
    """The root URL of a sample server over that world."""
    return amba_server.url


@pytest.fixture(scope="module")
def records(world):
    return allen_api.load_records(world)


def _expected(records, plane="coronal"):
    return [r for r in records if not r["failed"] and r["plane_of_section"]["name"] == plane
            and r["products"][0]["abbreviation"] == "Mouse" and r["treatments"][0]["name"] == "ISH"]


def test_seed_query_returns_the_seed_columns(api, records):
    """The seed's exact URL answers a CSV with its columns and only unfailed coronal mouse ISH sets."""
    frame = pd.read_csv(f"{api}/{SEED_QUERY}")
    assert list(frame.columns) == SEED_COLUMNS
    expected = _expected(records)
    assert sorted(frame["experiment_id"]) == sorted(r["id"] for r in expected)
    assert set(frame["plane"]) == {"coronal"}
    failed = {r["id"] for r in records if r["failed"]}
    assert failed and not failed & set(frame["experiment_id"])
    pomc = frame[frame["gene"] == "Pomc"].iloc[0]  # a row of the seed's own output
    assert (pomc["experiment_id"], pomc["entrez_id"], pomc["homologene_id"]) == (2493, 18976, 723)
    assert len(records) >= 100


def test_filters_planes_genes_and_products(api, records):
    """plane_of_section, genes $eq/$in and products[id$eq1] select what the records say."""
    base = (f"{api}/api/v2/data/SectionDataSet/query.csv?criteria=[failed$eqfalse],"
            "products[id$eq1],treatments[name$eqISH],")
    sag = pd.read_csv(base + "plane_of_section[name$eqsagittal],genes&tabular=data_sets.id&num_rows=all")
    assert sorted(sag["id"]) == sorted(r["id"] for r in _expected(records, "sagittal"))
    one = pd.read_csv(base + "genes[acronym$eqPcp2]&tabular=genes.acronym+as+gene,data_sets.id&num_rows=all")
    assert set(one["gene"]) == {"Pcp2"} and len(one) >= 2
    two = pd.read_csv(base + "genes[acronym$in'Pcp2','Gad1']&tabular=genes.acronym+as+gene&num_rows=all")
    assert set(two["gene"]) == {"Pcp2", "Gad1"}
    dev = pd.read_csv(f"{api}/api/v2/data/SectionDataSet/query.csv?criteria=products[abbreviation$eqDevMouse]"
                      "&tabular=data_sets.id&num_rows=all")
    assert len(dev) == sum(r["products"][0]["id"] == 3 for r in records)


def test_paging_and_default_page(api, records):
    """start_row/num_rows pages add up to the whole answer; without num_rows the API sends 50 rows."""
    url = f"{api}/api/v2/data/SectionDataSet/query.csv?criteria=[failed$eqfalse]&tabular=data_sets.id"
    whole = pd.read_csv(url + "&num_rows=all")["id"].tolist()
    pages = [pd.read_csv(url + f"&start_row={s}&num_rows=17")["id"].tolist() for s in range(0, len(whole), 17)]
    assert [i for p in pages for i in p] == whole
    assert len(pd.read_csv(url)) == 50 < len(whole)
    body = requests.get(f"{api}/api/v2/data/SectionDataSet/query.json?criteria=[failed$eqfalse]"
                        "&start_row=10&num_rows=5", timeout=10).json()
    assert body["success"] is True and body["start_row"] == 10 and body["num_rows"] == 5
    assert body["total_rows"] == len(whole) and len(body["msg"]) == 5


def test_model_query_with_rma_options(api, records):
    """query.json with model::, rma::include and rma::options (tabular, order) like the IBL script."""
    url = (f"{api}/api/v2/data/query.json?criteria=model::SectionDataSet,rma::criteria,[failed$eqfalse],"
           "products[id$eq1],plane_of_section[name$eqcoronal],treatments[name$eqISH],"
           "rma::include,genes,rma::options[num_rows$eqall]")
    body = requests.get(url, timeout=10).json()
    assert body["total_rows"] == len(_expected(records)) == len(body["msg"])
    assert body["msg"][0]["genes"][0]["acronym"] and "plane_of_section_id" in body["msg"][0]
    url = (f"{api}/api/v2/data/query.csv?criteria=model::SectionDataSet,rma::criteria,[failed$eqfalse],"
           "products[abbreviation$eq'Mouse'],treatments[name$eq'ISH'],genes,plane_of_section,rma::options,"
           "[tabular$eq'plane_of_sections.name+as+plane','genes.acronym+as+gene','data_sets.id+as+section_data_set_id'],"
           "[order$eq'plane_of_sections.name,genes.acronym,data_sets.id']&start_row=0&num_rows=all")
    frame = pd.read_csv(url)
    assert list(frame.columns) == ["plane", "gene", "section_data_set_id"]
    assert frame.equals(frame.sort_values(["plane", "gene", "section_data_set_id"]).reset_index(drop=True))


@pytest.mark.parametrize("criteria", [
    "[failed$eqfalse],genes(chromosome)[name$eq1]",   # nested association
    "[failed$eqfalse],donors[id$eq1]",                # unknown association
    "[colour$eqred]",                                 # unknown attribute
    "[failed$xxfalse]",                               # unknown operator
    "[failed$eqfalse],rma::options[debug$eqtrue]",    # unsupported option
])
def test_unknown_criteria_get_the_error_envelope(api, criteria):
    """Criteria the sample does not understand get the API's error shape, not a guess."""
    response = requests.get(f"{api}/api/v2/data/SectionDataSet/query.json?criteria={criteria}", timeout=10)
    assert response.status_code == 500
    body = response.json()
    assert {k: body[k] for k in ("success", "id", "start_row", "num_rows", "total_rows")} == {
        "success": False, "id": -1, "start_row": 0, "num_rows": 0, "total_rows": 0}
    assert body["msg"]
    csv = requests.get(f"{api}/api/v2/data/SectionDataSet/query.csv?criteria={criteria}", timeout=10)
    assert csv.status_code == 500
    row = pd.read_csv(io.StringIO(csv.text))
    assert list(row.columns) == ["success", "id", "start_row", "num_rows", "total_rows", "msg"]
    assert row["msg"].iloc[0] == body["msg"]


def test_other_models_are_refused(api):
    response = requests.get(f"{api}/api/v2/data/query.json?criteria=model::Gene,rma::criteria,[id$eq1]",
                            timeout=10)
    assert response.status_code == 500 and "SectionDataSet" in response.json()["msg"]


def test_grid_zip_layout(api, records):
    """The default download is data_set.xml + energy.mhd + energy.raw (67 41 58 float32, -1 outside)."""
    rec = next(r for r in _expected(records) if r["_grid"] == "energy")
    response = requests.get(f"{api}/grid_data/download/{rec['id']}", timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(response.content))
    assert zf.namelist() == ["data_set.xml", "energy.mhd", "energy.raw"]
    header = zf.read("energy.mhd").decode()
    assert "DimSize = 67 41 58" in header and "ElementSpacing = 200 200 200" in header
    assert "ElementType = MET_FLOAT" in header and "BinaryDataByteOrderMSB = False" in header
    raw = np.frombuffer(zf.read("energy.raw"), "<f4")
    assert raw.size == 67 * 41 * 58
    vol = raw.reshape(58, 41, 67)
    annotation = amba.grid_annotation()
    assert np.all(vol[annotation == 0] == -1)
    assert (vol[annotation > 0] >= 0).mean() > 0.9
    assert all(i.date_time == amba.ZIP_DATE for i in zf.infolist())


def test_grid_include_and_missing(api, records):
    """?include= returns just those volumes; an experiment without a grid is a 404 error envelope."""
    rec = next(r for r in _expected(records) if r["_grid"] == "energy")
    response = requests.get(f"{api}/grid_data/download/{rec['id']}?include=energy,density", timeout=10)
    zf = zipfile.ZipFile(io.BytesIO(response.content))
    assert zf.namelist() == ["energy.mhd", "energy.raw", "density.mhd", "density.raw"]
    bad = requests.get(f"{api}/grid_data/download/{rec['id']}?include=injection", timeout=10)
    assert bad.status_code == 400 and bad.json()["success"] is False
    none = next(r for r in records if r["_grid"] == "none")
    missing = requests.get(f"{api}/grid_data/download/{none['id']}", timeout=10)
    assert missing.status_code == 404 and json.loads(missing.content)["success"] is False


def test_grid_range_request(api, records):
    """Grid zips are served as files: a Range request resumes a download."""
    rec = next(r for r in _expected(records) if r["_grid"] == "energy")
    whole = requests.get(f"{api}/grid_data/download/{rec['id']}", timeout=10).content
    tail = requests.get(f"{api}/grid_data/download/{rec['id']}", headers={"Range": "bytes=100-"}, timeout=10)
    assert tail.status_code == 206 and tail.content == whole[100:]


def test_region_specific_genes():
    """Pcp2 is highest in the Purkinje layer, Prox1 in the dentate gyrus, Ppp1r1b in the striatum."""
    annotation = amba.grid_annotation()
    for gene, region in (("Pcp2", "CBXpu"), ("Prox1", "DG"), ("Ppp1r1b", "CP")):
        vol = amba.experiment_volume(gene, "coronal", 1)
        inside = np.isin(annotation, list(brain.descendants(region)))  # DG: its layers
        assert inside.any(), region
        outside = (annotation > 0) & ~inside & (vol >= 0)
        assert vol[inside & (vol >= 0)].mean() > 3 * vol[outside].mean(), gene


def test_sagittal_left_hemisphere_only():
    vol = amba.experiment_volume("Pcp2", "sagittal", 3)
    assert np.all(vol[29:] == -1) and (vol[:29] >= 0).any()


def test_generation_is_deterministic():
    """Same records and same zip bytes on every build."""
    a, b = amba.section_data_sets(), amba.section_data_sets()
    assert a == b
    rec = a[0]
    vol = amba.experiment_volume(rec["genes"][0]["acronym"], "coronal", rec["_seed"])
    assert amba.grid_zip(rec, {"energy": vol}) == amba.grid_zip(rec, {"energy": vol.copy()})
    assert np.array_equal(vol, amba.experiment_volume(rec["genes"][0]["acronym"], "coronal", rec["_seed"]))
