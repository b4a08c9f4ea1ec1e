"""abc_helpers.ish: queries, grid downloads, reorientation, writing and stacks, against the sample API."""

from __future__ import annotations

import re
import zipfile

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from abc_helpers import DownloadError, ish
from abc_helpers.sample import SampleServer, allen_api, amba
from abc_helpers.sources import Source

RNG = np.random.default_rng(7)
#: Random CCF voxels (AP, DV, LR indices) checked in every reorientation test.
VOXELS = np.c_[RNG.integers(0, 67, 25), RNG.integers(0, 41, 25), RNG.integers(0, 58, 25)]
CASES = [(o, w) for o in ("RAS", "PIR") for w in ("MICe", "CCFv3")]


@pytest.fixture(scope="module")
def world(amba_world):
    return amba_world


@pytest.fixture(scope="module")
def source(amba_server):
    return Source("sample", amba_server.url)


@pytest.fixture(scope="module")
def records(world):
    return allen_api.load_records(world)


@pytest.fixture(scope="module")
def coronal(source):
    return ish.query_section_datasets("coronal", source=source)


@pytest.fixture(scope="module")
def downloaded(coronal, source, tmp_path_factory):
    dest = tmp_path_factory.mktemp("grids")
    return ish.download_grids(coronal, dest, source=source, max_workers=4, progressbar=False), dest


@pytest.fixture(scope="module")
def unique_zip(tmp_path_factory):
    """A grid zip whose voxel values are all different (value = flat index in the raw file)."""
    path = tmp_path_factory.mktemp("unique") / "1.zip"
    values = np.arange(58 * 41 * 67, dtype="<f4").reshape(58, 41, 67)
    path.write_bytes(amba.grid_zip(None, {"energy": values}))
    return path


def _ccf_value(a, d, lr):
    """The unique value at CCF voxel (AP a, DV d, LR lr) in the unique zip."""
    return float((lr * 41 + d) * 67 + a)


def _seed_reorient(data):
    data = np.rot90(data, k=1, axes=(0, 2))
    return np.rot90(data, k=1, axes=(0, 1))


# -- query ----------------------------------------------------------------------------------------
def test_query_has_the_seed_columns(coronal, records):
    assert list(coronal.columns) == list(ish.SEED_COLUMNS)
    expected = {r["id"] for r in records if not r["failed"] and r["plane_of_section"]["name"] == "coronal"
                and r["products"][0]["id"] == 1 and r["treatments"][0]["name"] == "ISH"}
    assert set(coronal["experiment_id"]) == expected
    assert coronal["experiment_id"].is_unique


def test_query_genes_and_paging(source, coronal):
    """A gene filter keeps those genes; small pages give the same table as one big page."""
    some = ish.query_section_datasets("coronal", ["Pcp2", "Gad1"], source=source)
    assert set(some["gene"]) == {"Pcp2", "Gad1"}
    assert len(some) == coronal["gene"].isin(["Pcp2", "Gad1"]).sum()
    paged = ish.query_section_datasets("coronal", source=source, page_size=7)
    pd.testing.assert_frame_equal(paged, coronal)
    both = ish.query_section_datasets(None, source=source, page_size=50)
    assert set(both["plane"]) == {"coronal", "sagittal"}


def test_query_error_quotes_the_api(source):
    with pytest.raises(ValueError, match="Unknown plane"):
        ish.query_section_datasets("horizontal", source=source)
    with pytest.raises(ValueError, match=r"rejected the SectionDataSet query \(HTTP 500\)"):
        ish.query_section_datasets("coronal", ["Pcp2'"], source=source)


# -- the query under faults: one retry policy (abc_helpers.transfer.get_bytes) ----------------------
QUERY_PATH = "api/v2/data/SectionDataSet/query.csv"


@pytest.fixture
def api_server(amba_world, monkeypatch):
    """A server of its own (its fault plan is this test's only), short client time-outs, no waits
    between attempts (only the client's: transfer.pause, not the server's sleep)."""
    monkeypatch.setenv("ABC_HELPERS_TIMEOUT", "1.0")
    monkeypatch.setattr("abc_helpers.transfer.pause", lambda seconds: None)
    with SampleServer(root=amba_world) as srv:
        yield srv


def _effective_equals_hits(srv) -> list[int]:
    hits = [n for _, n in srv.faults.hits()]
    effective = [n for _, n in srv.faults.effective()]
    assert effective == hits, f"the faults matched {hits} requests but changed {effective}"
    return effective


@pytest.mark.parametrize("rule", [
    "drop-after=40%,count=2",  # a cut answer (the IncompleteRead the issue found)
    "short-by=1%,count=1",
    "status=503,retry-after=0.1,count=2",
    "status=500,count=2",  # a 500 that is not the API's envelope: a failing server
    "stall=5,count=1",
    "stall-after=50%,stall=5,count=1",
])
def test_query_survives_transient_faults(api_server, coronal, rule):
    """Cut answers, 5xx and stalls of the API are retried: the same table as without faults"""
    api_server.set_faults([f"{rule},key={QUERY_PATH}"])
    got = ish.query_section_datasets("coronal", source=Source("sample", api_server.url))
    pd.testing.assert_frame_equal(got, coronal)
    assert _effective_equals_hits(api_server) == [api_server.faults.faults[0].count]


@pytest.mark.parametrize(("rule", "cause"), [
    ("status=503", r"HTTP 503 \(SlowDown: Please reduce your request rate.\)"),
    ("status=500", r"HTTP 500 \(InternalError: "),
    ("drop-after=40%", r"connection broken after \d+ bytes of the body"),
    ("stall=5", r"ReadTimeout"),
])
def test_persistent_query_faults_are_a_clear_error(api_server, rule, cause):
    """A fault that never stops: after 6 attempts, a DownloadError naming the URL and the cause"""
    api_server.set_faults([f"{rule},key={QUERY_PATH}"])
    with pytest.raises(DownloadError) as info:
        ish.query_section_datasets("coronal", ["Pcp2"], source=Source("sample", api_server.url))
    message = str(info.value)
    assert message.startswith("Could not query the Allen API for SectionDataSets: gave up after 6 attempts")
    assert f"{api_server.url}/{QUERY_PATH}?criteria=" in message
    assert re.search(cause, message), message
    assert _effective_equals_hits(api_server) == [6]


def test_a_4xx_with_the_apis_message_is_an_error_at_once(api_server):
    """HTTP 400 with the API's error envelope: a ValueError quoting its msg, after one request"""
    api_server.set_faults([f"status=400,key={QUERY_PATH}"])
    with pytest.raises(ValueError, match=r"rejected the SectionDataSet query \(HTTP 400\): An error "
                                         r"occurred when parsing the HTTP request. \(injected fault: "
                                         r"HTTP 400\) URL: http://"):
        ish.query_section_datasets("coronal", source=Source("sample", api_server.url))
    assert _effective_equals_hits(api_server) == [1]
    assert api_server.stats()["requests"][QUERY_PATH] == 1


def test_the_apis_own_refusal_is_not_retried(api_server):
    """A query the API cannot run (its envelope, with HTTP 500): rejected at once, quoting it"""
    with pytest.raises(ValueError, match=r"rejected the SectionDataSet query \(HTTP 500\): .*Pcp2'"):
        ish.query_section_datasets("coronal", ["Pcp2'"], source=Source("sample", api_server.url))
    assert api_server.stats()["requests"][QUERY_PATH] == 1


# -- download -------------------------------------------------------------------------------------
def test_download_grids_reports_each_failure(downloaded, records):
    """Experiments without energy or without any grid fail in their row; the others succeed."""
    table, dest = downloaded
    grid = {r["id"]: r["_grid"] for r in records}
    for row in table.itertuples():
        if grid[row.experiment_id] == "energy":
            assert row.success and row.error == "" and ish.verify_grid(row.path), row
        else:
            assert not row.success and row.error and row.path == "", row
            assert not (dest / f"{row.experiment_id}.zip").exists()
    errors = table.loc[~table["success"], "error"].tolist()
    assert any("energy.raw" in e for e in errors) and any("404" in e for e in errors)
    assert table["success"].sum() >= 50


def test_existing_verified_grids_are_skipped(downloaded, source, coronal):
    table, dest = downloaded
    ok = table[table["success"]].head(5)
    before = {p: (dest / p).stat().st_mtime_ns for p in [f"{i}.zip" for i in ok["experiment_id"]]}
    again = ish.download_grids(ok, dest, source=source, progressbar=False)
    assert again["success"].all()
    assert {p: (dest / p).stat().st_mtime_ns for p in before} == before


def test_corrupt_grid_is_downloaded_again(downloaded, source):
    table, dest = downloaded
    eid = int(table.loc[table["success"], "experiment_id"].iloc[0])
    path = dest / f"{eid}.zip"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    assert not ish.verify_grid(path)
    assert ish.download_grid(eid, dest, source) == path and path.read_bytes() == good


def test_download_grids_with_executor_and_process(downloaded, source, tmp_path):
    """A given executor is used (and left open); process() runs per grid and its errors are reported."""
    from concurrent.futures import ThreadPoolExecutor

    table, _ = downloaded
    rows = table[table["success"]].head(3)
    seen = []

    def process(eid, path):
        seen.append(eid)
        if eid == int(rows["experiment_id"].iloc[1]):
            raise RuntimeError("boom")

    with ThreadPoolExecutor(2) as pool:
        out = ish.download_grids(rows, tmp_path, executor=pool, source=source, progressbar=False,
                                 process=process)
        assert pool.submit(lambda: 1).result() == 1
    assert sorted(seen) == sorted(rows["experiment_id"])
    assert out["success"].tolist() == [True, False, True]
    assert "RuntimeError: boom" in out["error"].iloc[1]

    seen.clear()
    threads = set()

    def tracked(eid, path):
        import threading

        threads.add(threading.current_thread().name)
        process(eid, path)

    with ThreadPoolExecutor(1, thread_name_prefix="converter") as converter:
        out = ish.download_grids(rows, tmp_path, source=source, progressbar=False, process=tracked,
                                 process_executor=converter)
    assert out["success"].tolist() == [True, False, True] and len(seen) == 3
    assert threads and all(t.startswith("converter") for t in threads)


# -- read and reorient ----------------------------------------------------------------------------------
def test_read_grid_geometry(unique_zip):
    image = ish.read_grid(unique_zip)
    assert image.GetSize() == (67, 41, 58)
    assert image.GetSpacing() == pytest.approx((0.2, 0.2, 0.2))
    assert image.GetOrigin() == (0, 0, 0) and image.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    for a, d, lr in VOXELS:  # index (x, y, z) = (AP, DV, LR) at CCF mm (AP, DV, LR)
        assert image[int(a), int(d), int(lr)] == _ccf_value(a, d, lr)
    with pytest.raises(KeyError, match=r"density\.raw"):
        ish.read_grid(unique_zip, "density")


@pytest.mark.parametrize(("orientation", "world_space"), CASES)
def test_reorient_puts_each_voxel_at_its_world_point(unique_zip, orientation, world_space):
    """The value at CCF (AP, DV, LR) sits at the expected world point after reorient()."""
    image = ish.reorient(ish.read_grid(unique_zip), orientation, world_space)
    for a, d, lr in VOXELS:
        point = ish.expected_world_point((200 * a, 200 * d, 200 * lr), world_space)
        index = image.TransformPhysicalPointToIndex(point)
        assert image[index] == _ccf_value(a, d, lr), (orientation, world_space, (a, d, lr))
        assert np.allclose(image.TransformIndexToPhysicalPoint(index), point, atol=1e-6)


def test_reorient_matches_the_seed_rotations(unique_zip):
    """RAS voxels are exactly the seed's numpy rot90s; PIR voxels are untouched."""
    raw = np.frombuffer(zipfile.ZipFile(unique_zip).read("energy.raw"), "<f4").reshape(58, 41, 67)
    for space in ("MICe", "CCFv3"):
        ras = ish.reorient(ish.read_grid(unique_zip), "RAS", space)
        assert np.array_equal(sitk.GetArrayFromImage(ras), _seed_reorient(raw))
        pir = ish.reorient(ish.read_grid(unique_zip), "PIR", space)
        assert np.array_equal(sitk.GetArrayFromImage(pir), raw)
    ras = ish.reorient(ish.read_grid(unique_zip), "RAS", "MICe")
    assert ras.GetOrigin() == pytest.approx((-5.7, -7.9, -2.7))
    with pytest.raises(ValueError, match="PIR voxel order"):
        ish.reorient(ras, "RAS", "MICe")
    with pytest.raises(ValueError, match="world space"):
        ish.reorient(ish.read_grid(unique_zip), "RAS", "stereotaxic")



@pytest.mark.parametrize(("axis", "horizontal"), [(a, h) for a in range(3) for h in range(3) if a != h])
def test_world_plane_cuts_at_the_world_point(axis, horizontal):
    """world_plane: the voxels of the plane nearest a world coordinate, oriented for imshow, with edges in mm."""
    size, origin, spacing = (4, 3, 5), (1.0, -2.0, 0.5), (0.2, 0.5, 1.0)
    z, y, x = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    values = (100 * x + 10 * y + z).astype(np.float32)
    values[2, 2, 2] = -1  # no data, in every plane cut below
    image = sitk.GetImageFromArray(values)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    vertical = 3 - axis - horizontal
    fixed = 2
    value = origin[axis] + fixed * spacing[axis] + 0.3 * spacing[axis]  # nearest voxel: index 2
    plane, extent = ish.world_plane(image, axis, value, horizontal)
    assert plane.shape == (size[vertical], size[horizontal])
    for r in range(size[vertical]):
        for c in range(size[horizontal]):
            index = [0, 0, 0]
            index[axis], index[horizontal], index[vertical] = fixed, c, r
            expected = image[index]
            if expected < 0:
                assert np.isnan(plane[r, c])
            else:
                assert plane[r, c] == expected, (r, c, index)
    assert np.isnan(plane).sum() == 1
    first = image.TransformIndexToPhysicalPoint((0, 0, 0))
    last = image.TransformIndexToPhysicalPoint(tuple(n - 1 for n in size))
    assert extent == pytest.approx((first[horizontal] - spacing[horizontal] / 2,
                                    last[horizontal] + spacing[horizontal] / 2,
                                    first[vertical] - spacing[vertical] / 2,
                                    last[vertical] + spacing[vertical] / 2))
    with pytest.raises(ValueError, match="outside the image"):
        ish.world_plane(image, axis, origin[axis] + size[axis] * spacing[axis], horizontal)
    with pytest.raises(ValueError, match="two different world axes"):
        ish.world_plane(image, axis, value, axis)
    image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))
    with pytest.raises(ValueError, match="identity direction"):
        ish.world_plane(image, axis, value, horizontal)

# -- write and read back --------------------------------------------------------------------------
@pytest.mark.parametrize(("orientation", "world_space"), CASES)
@pytest.mark.parametrize("ext", [".mnc", ".nii.gz", ".nrrd", ".mha"])
def test_write_and_read_back(unique_zip, tmp_path, orientation, world_space, ext):
    """After write_volume and read_volume each voxel is still at its world point."""
    image = ish.reorient(ish.read_grid(unique_zip), orientation, world_space)
    path = ish.write_volume(image, tmp_path / f"vol{ext}")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    back = ish.read_volume(path)
    for a, d, lr in VOXELS:
        point = ish.expected_world_point((200 * a, 200 * d, 200 * lr), world_space)
        assert back[back.TransformPhysicalPointToIndex(point)] == _ccf_value(a, d, lr)


@pytest.mark.parametrize(("orientation", "world_space"), CASES)
def test_minc_and_nifti_agree_in_nibabel(unique_zip, tmp_path, orientation, world_space):
    """An independent reader finds each voxel at the same RAS world point in the .mnc and the .nii.gz."""
    image = ish.reorient(ish.read_grid(unique_zip), orientation, world_space)
    for ext in (".mnc", ".nii.gz"):
        img = nib.load(ish.write_volume(image, tmp_path / f"v{ext}"))
        data = np.asarray(img.dataobj)
        for a, d, lr in VOXELS:
            index = np.argwhere(data == _ccf_value(a, d, lr))
            assert len(index) == 1
            world = img.affine @ np.r_[index[0], 1.0]
            expected = ish.expected_world_point((200 * a, 200 * d, 200 * lr), world_space)
            assert np.allclose(world[:3], expected, atol=1e-4), (ext, (a, d, lr))


def test_minc_has_the_seed_geometry(unique_zip, tmp_path):
    """RAS/MICe MINC: x/y/z starts -5.7, -7.9, -2.7 mm, steps 0.2, identity cosines, dims (z, y, x)."""
    path = ish.write_volume(ish.reorient(ish.read_grid(unique_zip), "RAS", "MICe"), tmp_path / "v.mnc")
    with h5py.File(path, "r") as h5:
        dims = h5["minc-2.0/dimensions"]
        expected = {"xspace": (-5.7, [1, 0, 0], 58), "yspace": (-7.9, [0, 1, 0], 67),
                    "zspace": (-2.7, [0, 0, 1], 41)}
        for name, (start, cosines, length) in expected.items():
            attrs = dims[name].attrs
            assert attrs["start"] == pytest.approx(start) and attrs["step"] == pytest.approx(0.2)
            assert np.allclose(attrs["direction_cosines"], cosines) and attrs["length"] == length
        assert h5["minc-2.0/image/0/image"].shape == (41, 67, 58)


@pytest.mark.parametrize(("orientation", "world_space"), CASES)
def test_our_minc_writer_matches_itk(unique_zip, tmp_path, orientation, world_space):
    """write_volume's MINC (no ITK) reads back like ITK's own MINC, in SimpleITK, nibabel and h5py."""
    image = ish.reorient(ish.read_grid(unique_zip), orientation, world_space)
    ours = ish.write_volume(image, tmp_path / "ours.mnc")
    itk = tmp_path / "itk.mnc"
    sitk.WriteImage(image, str(itk))
    a, b = sitk.ReadImage(str(ours)), sitk.ReadImage(str(itk))
    assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
    assert np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection())
    assert np.allclose(a.GetSpacing(), b.GetSpacing())
    na, nb = nib.load(ours), nib.load(itk)
    assert np.allclose(na.affine, nb.affine) and np.array_equal(np.asarray(na.dataobj), np.asarray(nb.dataobj))
    with h5py.File(ours, "r") as x, h5py.File(itk, "r") as y:
        for name in ("image-min", "image-max"):
            key = f"minc-2.0/image/0/{name}"
            assert x[key][()] == y[key][()]
        key = "minc-2.0/image/0/image"
        assert np.array_equal(x[key].attrs["valid_range"], y[key].attrs["valid_range"])
        assert x[key].attrs["dimorder"] == y[key].attrs["dimorder"]


def test_minc_writer_is_thread_safe(tmp_path):
    """Many volumes (views and contiguous arrays) written at once from threads each read back intact."""
    from concurrent.futures import ThreadPoolExecutor

    from abc_helpers import minc

    geometry = minc.geometry_from_itk(*ish.world_geometry("RAS", "MICe", 200))
    base = np.arange(58 * 41 * 67, dtype=np.float32).reshape(58, 41, 67)

    def write(i):
        data = ish.pir_to_ras(base + i) if i % 2 else np.ascontiguousarray(ish.pir_to_ras(base - i))
        return minc.write_minc(tmp_path / f"{i}.mnc", data, *geometry), data

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(write, range(24)))
    for path, data in results:
        back = sitk.ReadImage(str(path))
        assert np.array_equal(sitk.GetArrayViewFromImage(back), data)
        assert back.GetOrigin() == pytest.approx((-5.7, -7.9, -2.7))
    with pytest.raises(ValueError, match="float32/float64"):
        minc.write_minc(tmp_path / "int.mnc", base.astype(np.int16), *geometry)


def test_write_volume_integer_minc_goes_through_itk(tmp_path):
    """Non-float volumes (e.g. labels) are still written by ITK, and read back unchanged."""
    labels = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6))
    labels.SetSpacing((0.2, 0.2, 0.2))
    back = ish.read_volume(ish.write_volume(labels, tmp_path / "labels.mnc"))
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(labels))


@pytest.mark.parametrize(("orientation", "world_space"), CASES)
@pytest.mark.parametrize("ext", [".mnc", ".nii.gz"])
def test_convert_grid_equals_the_three_calls(unique_zip, tmp_path, orientation, world_space, ext):
    """convert_grid() writes what write_volume(reorient(read_grid())) writes, voxel for voxel."""
    slow = ish.write_volume(ish.reorient(ish.read_grid(unique_zip), orientation, world_space),
                            tmp_path / f"slow{ext}")
    fast = ish.convert_grid(unique_zip, tmp_path / f"fast{ext}", orientation, world_space)
    a, b = ish.read_volume(slow), ish.read_volume(fast)
    assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
    assert np.allclose(a.GetOrigin(), b.GetOrigin()) and a.GetDirection() == b.GetDirection()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([slow.name, fast.name])


@pytest.fixture
def corrupt_zip(unique_zip, tmp_path):
    """A copy of *unique_zip* with one byte of the deflated energy.raw flipped."""
    content = bytearray(unique_zip.read_bytes())
    with zipfile.ZipFile(unique_zip) as zf:
        info = zf.getinfo("energy.raw")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    content[start + info.compress_size // 2] ^= 0xFF
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(content))
    return bad


def test_corrupt_grid_member_is_reported(corrupt_zip):
    """A flipped byte in the deflated energy.raw fails the CRC (or the inflate), naming the fix."""
    with pytest.raises(zipfile.BadZipFile, match=r"corrupt.*download it again"):
        ish.read_grid_array(corrupt_zip)


def test_check_grid_zip_reports_a_corrupt_member(unique_zip, corrupt_zip):
    """check_grid_zip() inflates every member and names the one whose CRC (or inflate) fails."""
    assert ish.check_grid_zip(unique_zip) is None
    assert ish.check_grid_zip(corrupt_zip) == "member 'energy.raw' fails its CRC"
    assert not ish.verify_grid(corrupt_zip)


def test_a_checked_grid_converts_to_the_same_volume(unique_zip, tmp_path):
    """The volume check_grid_zip() inflated is what read_grid_array() inflates; a rewritten zip is read again."""
    fresh, _ = ish.read_grid_array(unique_zip)
    copy = tmp_path / "copy.zip"
    copy.write_bytes(unique_zip.read_bytes())
    assert ish.check_grid_zip(copy) is None
    moved = copy.rename(tmp_path / "moved.zip")  # a rename keeps the file: the kept volume is used
    kept, _ = ish.read_grid_array(moved)
    assert np.array_equal(kept, fresh)
    assert ish.check_grid_zip(moved) is None
    moved.write_bytes(b"not a zip")  # the same path, other bytes: nothing kept is given out
    with pytest.raises(zipfile.BadZipFile):
        ish.read_grid_array(moved)


def test_write_volume_refuses_unknown_formats(unique_zip, tmp_path):
    with pytest.raises(ValueError, match=r"\.mnc"):
        ish.write_volume(ish.read_grid(unique_zip), tmp_path / "v.tif")


# -- stacks ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack_dir(downloaded, tmp_path_factory):
    table, dest = downloaded
    return ish.build_expression_stack(table, dest, tmp_path_factory.mktemp("stack"), progressbar=False)


def test_stack_layout(stack_dir, downloaded):
    table, dest = downloaded
    genes, stack = ish.load_expression_stack(stack_dir)
    ok = table[table["success"]]
    assert stack.shape == (len(ok), 58, 41, 67) and stack.dtype == np.float16
    assert genes["id"].tolist() == [str(i) for i in ok["experiment_id"]]
    assert genes["gene"].tolist() == ok["gene"].tolist()
    raw, _ = ish.read_grid_array(dest / f"{ok['experiment_id'].iloc[3]}.zip")
    assert np.array_equal(stack[3], raw.astype(np.float16))
    assert (stack_dir / ish.INDEX_FILE).exists()


def test_correlated_genes(stack_dir):
    """A replicate of the same gene ranks first; correlations are exact and ignore -1."""
    genes, stack = ish.load_expression_stack(stack_dir)
    result = ish.correlated_genes(stack, genes, "Pcp2", top=5)
    assert list(result.columns) == ["rank", "id", "gene", "correlation", "n_voxels"]
    assert len(result) == 5 and result["gene"].iloc[0] == "Pcp2"
    assert result["correlation"].is_monotonic_decreasing
    query = int(np.flatnonzero(genes["gene"] == "Pcp2")[0])
    assert genes["id"].iloc[query] not in result["id"].tolist()
    other = int(np.flatnonzero(genes["id"] == result["id"].iloc[0])[0])
    x, y = stack[query].astype(np.float64).ravel(), stack[other].astype(np.float64).ravel()
    both = (x >= 0) & (y >= 0)
    assert result["correlation"].iloc[0] == pytest.approx(np.corrcoef(x[both], y[both])[0, 1], abs=1e-5)
    assert result["n_voxels"].iloc[0] == both.sum()
    by_id = ish.correlated_genes(stack, genes, int(genes["id"].iloc[query]), top=5)
    pd.testing.assert_frame_equal(by_id, result)
    with pytest.raises(KeyError, match="Pcp2"):
        ish.correlated_genes(stack, genes, "Pcp3")
