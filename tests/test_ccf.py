"""abc_helpers.ccf: the real structure tree, µm <-> voxel <-> world conversions, structures at points."""

from __future__ import annotations

import json
import re
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from abc_helpers import AbcProjectCache, OutdatedManifestWarning, ccf, ish
from abc_helpers.sample import amba
from abc_helpers.sources import Source

RNG = np.random.default_rng(11)
CASES = [(o, w) for o in ("RAS", "PIR") for w in ("MICe", "CCFv3")]
GRID = (67, 41, 58)  # the ISH grid, [AP, DV, LR]


@pytest.fixture(scope="module")
def tree() -> ccf.StructureTree:
    return ccf.StructureTree.shipped()


# -- the structure tree ---------------------------------------------------------------------------
def test_shipped_tree_is_the_real_ontology(tree):
    """The shipped CSV: 1327 real structures (void skipped), real ids, names, paths and colours."""
    assert len(tree) == 1327 and 0 not in tree and "void" not in tree
    assert tree["root"].id == 997 and tree["root"].parent_id is None and tree["root"].depth == 0
    visp = tree["VISp"]
    assert (visp.id, visp.name, visp.parent_id) == (385, "Primary visual area", 669)
    assert visp.path == (997, 8, 567, 688, 695, 315, 669, 385)
    assert tree[385] is visp and tree.get(np.uint32(385)) is visp and tree.get(visp) is visp
    assert visp.color_hex_triplet == "08858C" and visp.rgb == (8, 133, 140)
    assert tree["AUD"].color_hex_triplet == "019399"  # the CSV lost the leading zero
    assert tree["CA1"].id == 382 and tree["Isocortex"].id == 315


def test_descendants_and_ancestors(tree):
    """VISp5 is in VISp and Isocortex; CA1 is not in Isocortex; the lists include the structure itself."""
    assert tree.is_descendant("VISp5", of="VISp") and tree.is_descendant("VISp5", of="Isocortex")
    assert tree.is_descendant(778, of=315) and tree.is_descendant("VISp", of="VISp")
    assert not tree.is_descendant("CA1", of="Isocortex") and not tree.is_descendant("VISp", of="VISp5")
    assert tree.is_descendant("CA1", of="HPF") and tree.is_descendant("CA1", of="root")
    ancestors = tree.ancestors("VISp5")
    assert ancestors[0] == tree["VISp5"].id and ancestors[-1] == 997
    assert [tree[i].acronym for i in ancestors] == ["VISp5", "VISp", "VIS", "Isocortex", "CTXpl", "CTX",
                                                    "CH", "grey", "root"]
    visp = tree.descendants("VISp")
    assert [tree[i].acronym for i in visp] == ["VISp", "VISp1", "VISp2/3", "VISp4", "VISp5", "VISp6a",
                                               "VISp6b"]
    assert len(tree.descendants("root")) == len(tree)
    iso = set(tree.descendants("Isocortex"))
    assert all(tree.is_descendant(i, of="Isocortex") for i in iso)
    assert sum(tree.is_descendant(s.id, of="Isocortex") for s in tree) == len(iso)
    assert tree.descendants("VISp6b") == [tree["VISp6b"].id]


def test_lookup_errors_name_the_key_and_suggest(tree):
    """Unknown acronyms suggest close ones (case first); unknown ids say what to pass."""
    with pytest.raises(KeyError, match=re.escape("acronym 'Visp'") + ".*did you mean 'VISp'"):
        tree["Visp"]
    with pytest.raises(KeyError, match="did you mean 'VISp5'"):
        tree.ancestors("VISpx5")
    with pytest.raises(KeyError, match=r"No structure with id 123456789 .*parcellation_structure_ids"):
        tree[123456789]
    with pytest.raises(TypeError, match="by id"):
        tree.get(3.5)
    assert "Visp" not in tree and 123456789 not in tree and True not in tree


def test_acronyms_and_colors_of_label_arrays(tree):
    """Vectorised acronyms and RGB colours keep the label array's shape; 0 is outside the brain."""
    labels = np.array([[385, 0], [382, 385]], dtype=np.uint32)
    assert tree.acronyms(labels).tolist() == [["VISp", ""], ["CA1", "VISp"]]
    colors = tree.colors(labels, background=(0.0, 0.0, 0.0))
    assert colors.shape == (2, 2, 3)
    assert np.allclose(colors[0, 0] * 255, tree["VISp"].rgb) and np.allclose(colors[0, 1], 0)
    assert np.allclose(colors[1, 0] * 255, tree["CA1"].rgb)
    assert tree.acronyms(np.zeros(0, int)).shape == (0,) and tree.colors([]).shape == (0, 3)
    with pytest.raises(KeyError, match="id 5 "):
        tree.acronyms([385, 5])


def _nested(frame: pd.DataFrame) -> dict:
    """The structure graph JSON of the Allen API (structure_graph_download/1.json) for *frame*."""
    nodes = {int(r.id): {"id": int(r.id), "acronym": r.acronym, "name": r.name,
                         "color_hex_triplet": r.color_hex_triplet, "graph_order": k,
                         "parent_structure_id": None if pd.isna(r.parent_structure_id) else int(r.parent_structure_id),
                         "children": []}
             for k, r in enumerate(frame.itertuples())}
    roots = []
    for node in nodes.values():
        parent = node["parent_structure_id"]
        (nodes[parent]["children"] if parent is not None else roots).append(node)
    return {"success": True, "id": 0, "start_row": 0, "num_rows": len(roots), "total_rows": len(roots),
            "msg": roots}


def test_structure_graph_json_and_frames_give_the_same_tree(tree, tmp_path):
    """Nested graph JSON (paths from the nesting), the flat API records and a DataFrame: one tree."""
    frame = tree.to_frame()
    assert list(frame.columns) == ["id", "acronym", "name", "parent_structure_id", "structure_id_path",
                                   "color_hex_triplet", "depth"]
    assert frame["structure_id_path"][frame["acronym"] == "VISp"].item() == "/997/8/567/688/695/315/669/385/"
    path = tmp_path / "1.json"
    path.write_text(json.dumps(_nested(frame)))
    flat = frame.drop(columns=["structure_id_path"]).astype(object).where(frame.notna(), None)
    for other in (ccf.StructureTree.from_json(path), ccf.StructureTree.from_json(_nested(frame)["msg"][0]),
                  ccf.StructureTree.from_dataframe(frame),
                  ccf.StructureTree.from_json({"msg": flat.to_dict("records")})):
        assert len(other) == len(tree)
        assert all(other[s.id] == s for s in tree)
        assert other.descendants("Isocortex") == tree.descendants("Isocortex")
    rgb = ccf.StructureTree.from_records([{"id": 997, "acronym": "root", "name": "root",
                                          "parent_structure_id": None, "rgb_triplet": [255, 255, 255]},
                                         {"id": 8, "acronym": "grey", "name": "grey",
                                          "structure_id_path": [997, 8], "rgb_triplet": [191, 218, 227]}])
    assert rgb["grey"].color_hex_triplet == "BFDAE3" and rgb["grey"].parent_id == 997


def test_bad_trees_are_refused(tmp_path):
    """A failed API answer, a missing parent, repeated ids and bad colours are errors that say so."""
    with pytest.raises(ValueError, match="reports a failure"):
        ccf.StructureTree.from_json({"success": False, "msg": "Data Access error"})
    with pytest.raises(ValueError, match="names parent 5, which is not among the records"):
        ccf.StructureTree.from_records([{"id": 8, "acronym": "grey", "name": "grey", "parent_structure_id": 5}])
    root = {"id": 997, "acronym": "root", "name": "root", "parent_structure_id": None}
    with pytest.raises(ValueError, match="id 997 appears twice"):
        ccf.StructureTree.from_records([root, {**root, "acronym": "other"}])
    with pytest.raises(ValueError, match="not a hex triplet"):
        ccf.StructureTree.from_records([{**root, "color_hex_triplet": "GGHHII"}])
    with pytest.raises(ValueError, match="has no name"):
        ccf.StructureTree.from_records([{"id": 1, "acronym": "x"}])
    with pytest.raises(ValueError, match="does not end with its parent"):
        ccf.StructureTree.from_records([root, {"id": 8, "acronym": "grey", "name": "grey",
                                               "parent_structure_id": 997, "structure_id_path": "/997/9/8/"}])


# -- coordinates ----------------------------------------------------------------------------------
@pytest.mark.parametrize("resolution", [10, 25, 100, 200])
def test_um_voxel_round_trips(resolution):
    """index -> µm -> index is the identity; µm -> index -> µm moves a point by at most half a voxel."""
    index = np.c_[RNG.integers(0, 13200 // resolution, 50), RNG.integers(0, 8000 // resolution, 50),
                  RNG.integers(0, 11400 // resolution, 50)]
    um = ccf.index_to_um(index, resolution)
    assert np.array_equal(um, index * float(resolution))
    assert np.array_equal(ccf.um_to_index(um, resolution), index)
    assert np.array_equal(ccf.um_to_index(um, resolution, rounding="floor"), index)
    points = RNG.uniform(0, 8000, size=(200, 3))
    back = ccf.index_to_um(ccf.um_to_index(points, resolution), resolution)
    assert np.abs(back - points).max() <= resolution / 2 + 1e-9
    floor = ccf.index_to_um(ccf.um_to_index(points, resolution, rounding="floor"), resolution)
    assert ((points - floor) >= -1e-9).all() and ((points - floor) < resolution).all()


def test_rounding_is_stated_and_exact_at_the_edges():
    """nearest: floor(µm / r + 0.5), halves up; floor: floor(µm / r); mm x 1000 noise does not matter."""
    um = np.array([0, 49.9, 50, 99.9, 100, 149.9, 150, -49.9, -50, -50.1])
    assert ccf.um_to_index(um, 100).tolist() == [0, 0, 1, 1, 1, 1, 2, 0, 0, -1]
    assert ccf.um_to_index(um, 100, rounding="floor").tolist() == [0, 0, 0, 0, 1, 1, 1, -1, -1, -1]
    mm = np.array([0.29, 4.6, 5.7, 0.07])  # 0.29 * 1000 = 289.99999999999994
    assert ccf.um_to_index(mm * 1000, 10, rounding="floor").tolist() == [29, 460, 570, 7]
    assert ccf.um_to_index(mm * 1000, 200).tolist() == [1, 23, 29, 0]
    with pytest.raises(ValueError, match="NaN"):
        ccf.um_to_index([[np.nan, 0, 0]], 10)
    with pytest.raises(ValueError, match="rounding 'up'"):
        ccf.um_to_index([0, 0, 0], 10, rounding="up")
    with pytest.raises(ValueError, match="resolution_um=0"):
        ccf.index_to_um([1, 2, 3], 0)


def test_world_spaces():
    """MICe: RAS around CCF (5300, 5300, 5700) µm; CCFv3: the CCF in mm; the inverse gives the points back."""
    points = RNG.uniform(-1000, 14000, size=(100, 3))
    ap, dv, lr = points.T
    assert np.allclose(ccf.um_to_world(points, "MICe"), np.c_[lr - 5700, 5300 - ap, 5300 - dv] / 1000)
    assert np.allclose(ccf.um_to_world(points, "CCFv3"), points / 1000)
    for world in ccf.WORLDS:
        assert np.allclose(ccf.world_to_um(ccf.um_to_world(points, world), world), points)
        affine = ccf.world_affine(world, 25)
        index = points / 25
        assert np.allclose((affine @ np.c_[index, np.ones(len(index))].T).T[:, :3], ccf.um_to_world(points, world))
    assert ccf.um_to_world(ccf.MICE_ORIGIN_UM, "MICe").tolist() == [0.0, 0.0, 0.0]
    assert ccf.um_to_world(np.zeros((2, 4, 3)), "CCFv3").shape == (2, 4, 3)
    with pytest.raises(ValueError, match="Unknown world space 'stereotaxic'"):
        ccf.um_to_world([0, 0, 0], "stereotaxic")
    with pytest.raises(ValueError, match=re.escape("3 coordinates (AP, DV, LR)")):
        ccf.um_to_world([0, 0], "MICe")


#: The MICe scripts' placement of a PIR volume (abeaucha/MouseHumanTranscriptomicSimilarity,
#: AllenMouseBrainAtlas/transform_space.py; /work/shared/reference/allen_formats.md B.5): the centre
#: in CCF µm (x, y, z = AP, DV, LR) and the world direction of each voxel axis; world = sum of
#: (position - centre) / 1000 along those directions, in mm.
TRANSFORM_SPACE_PIR = {
    "MICe": ((5300, 5300, 5700), ((0, -1, 0), (0, 0, -1), (1, 0, 0))),
    "CCFv3": ((0, 0, 0), ((1, 0, 0), (0, 1, 0), (0, 0, 1))),
}


def _transform_space_point(ccf_um, world_space: str) -> tuple[float, float, float]:
    """The world point (mm) of a CCF position (AP, DV, LR) µm, as transform_space.py places it."""
    centre, axes = TRANSFORM_SPACE_PIR[world_space]
    x, y, z = (sum((float(p) - c) / 1000 * axis[k] for p, c, axis in zip(ccf_um, centre, axes, strict=True))
               for k in range(3))
    return (x, y, z)


@pytest.mark.parametrize(("orientation", "world_space"), CASES)
def test_world_points_match_ish_reorient(orientation, world_space):
    """A grid reoriented by ish.reorient puts each CCF voxel exactly where ccf.um_to_world says, and
    both put it where the MICe scripts' transform_space.py does."""
    values = np.arange(np.prod(GRID), dtype=np.float32).reshape(GRID[::-1])  # [LR, DV, AP]
    pir = sitk.GetImageFromArray(values)
    pir.SetSpacing((0.2, 0.2, 0.2))
    image = ish.reorient(pir, orientation, world_space)
    index = np.c_[RNG.integers(0, GRID[0], 40), RNG.integers(0, GRID[1], 40), RNG.integers(0, GRID[2], 40)]
    points = ccf.um_to_world(ccf.index_to_um(index, 200), world_space)
    for (a, d, lr), point in zip(index, points, strict=True):
        voxel = image.TransformPhysicalPointToIndex(point.tolist())
        assert image[voxel] == values[lr, d, a]
        assert np.allclose(image.TransformIndexToPhysicalPoint(voxel), point, atol=1e-9)
        expected = _transform_space_point((200 * a, 200 * d, 200 * lr), world_space)
        assert tuple(point) == pytest.approx(expected, abs=1e-9)
        assert ish.expected_world_point((200 * a, 200 * d, 200 * lr), world_space) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("world_space", ["MICe", "CCFv3"])
def test_world_affine_is_the_pir_geometry_of_ish(world_space):
    """world_affine at 200 µm = spacing x direction and origin of ish.world_geometry('PIR', ...)."""
    origin, spacing, direction = ish.world_geometry("PIR", world_space, 200)
    affine = ccf.world_affine(world_space, 200)
    assert np.allclose(affine[:3, :3], np.array(direction).reshape(3, 3) * np.array(spacing))
    assert np.allclose(affine[:3, 3], origin)


def test_plane_extent_puts_voxel_centres_at_their_position():
    """Edges half a voxel beyond the first and last centres, for both imshow origins."""
    assert ccf.plane_extent((41, 67), 200) == (-0.1, 13.3, 8.1, -0.1)
    assert ccf.plane_extent((800, 1320), 10, origin="lower") == (-0.005, 13.195, -0.005, 7.995)
    with pytest.raises(ValueError, match="origin='middle'"):
        ccf.plane_extent((2, 2), 10, origin="middle")


# -- volumes at points ----------------------------------------------------------------------------
def _labels() -> np.ndarray:
    """A synthetic [AP, DV, LR] annotation whose voxel value encodes its index."""
    a, d, lr = np.meshgrid(*(np.arange(n) for n in (6, 4, 5)), indexing="ij")
    return (1 + 100 * a + 10 * d + lr).astype(np.uint32)


def test_structure_at_picks_the_nearest_voxel_and_0_outside():
    """Voxel centres, near points, both axis orders, outside -> 0, NaN -> 0, labels lookups."""
    labels = _labels()
    index = np.argwhere(np.ones(labels.shape, bool))
    assert np.array_equal(ccf.structure_at(labels, index * 25.0, 25), labels.ravel())
    jitter = index * 25.0 + RNG.uniform(-12.4, 12.4, size=index.shape)
    assert np.array_equal(ccf.structure_at(labels, jitter, 25), labels.ravel())
    itk = np.ascontiguousarray(labels.transpose(2, 1, 0))
    assert np.array_equal(ccf.structure_at(itk, jitter, 25, axes=ccf.ITK_AXES), labels.ravel())
    outside = [[-13, 0, 0], [0, 3 * 25 + 12.4, 0], [0, 0, 112.5], [np.nan, 0, 0], [0, np.inf, 0]]
    assert ccf.structure_at(labels, outside, 25).tolist() == [0, labels[0, 3, 0], 0, 0, 0]
    assert ccf.structure_at(labels, [[30, 0, 0]], 25, rounding="floor").tolist() == [labels[1, 0, 0]]
    assert ccf.structure_at(labels, [30, 0, 0], 25).shape == ()
    assert ccf.structure_at(labels, np.zeros((2, 3, 3)), 25).shape == (2, 3)
    lookup = np.arange(labels.max() + 1) * 2
    assert ccf.structure_at(labels, [[0, 0, 0], [-50, 0, 0]], 25, labels=lookup).tolist() == [2, 0]
    with pytest.raises(ValueError, match="value 101, beyond the 3 entries of labels"):
        ccf.structure_at(labels, [[0, 0, 0], [25, 0, 0]], 25, labels=[0, 1, 2])
    with pytest.raises(ValueError, match="axes=\\('AP', 'DV', 'AP'\\)"):
        ccf.structure_at(labels, [[0, 0, 0]], 25, axes=("AP", "DV", "AP"))
    with pytest.raises(ValueError, match="3-D"):
        ccf.structure_at(labels[0], [[0, 0, 0]], 25)


def test_structure_mask_covers_descendants(tree):
    """The mask of VISp holds its layers; Isocortex holds VISp's and SSp's layers; CA1 stays out."""
    ids = {a: tree[a].id for a in ("VISp5", "VISp2/3", "SSp-bfd4", "CA1", "VISp")}
    annotation = np.zeros((3, 3, 3), np.uint32)
    annotation[0, :, 0] = ids["VISp5"]
    annotation[1, :, 0] = ids["VISp2/3"]
    annotation[2, :, 0] = ids["VISp"]
    annotation[:, :, 1] = ids["SSp-bfd4"]
    annotation[:, 0, 2] = ids["CA1"]
    visp = ccf.structure_mask(annotation, "VISp", tree)
    assert np.array_equal(visp, np.isin(annotation, [ids["VISp5"], ids["VISp2/3"], ids["VISp"]]))
    assert np.array_equal(ccf.structure_mask(annotation, "Isocortex", tree), annotation[..., None].any(-1)
                          & (annotation != ids["CA1"]))
    assert not (ccf.structure_mask(annotation, "Isocortex", tree) & (annotation == ids["CA1"])).any()
    assert np.array_equal(ccf.structure_mask(annotation, ["VISp5", 382], tree),
                          np.isin(annotation, [ids["VISp5"], ids["CA1"]]))
    assert not ccf.structure_mask(annotation, "VISp6b", tree).any()
    index = np.zeros(max(ids.values()) + 1, np.uint32)  # a parcellation-style volume: small indices
    index_volume = np.zeros_like(annotation)
    for k, sid in enumerate(ids.values(), start=1):
        index[k] = sid
        index_volume[annotation == sid] = k
    assert np.array_equal(ccf.structure_mask(index_volume, "VISp", tree, labels=index), visp)


def test_sample_volume_nearest_and_trilinear():
    """order=0 is the nearest voxel, order=1 is exact on a linear field; NaN outside and for NaN points."""
    ap, dv, lr = np.meshgrid(*(np.arange(n, dtype=float) for n in (6, 4, 5)), indexing="ij")
    field = 3.0 * ap - 2.0 * dv + 0.5 * lr + 7.0
    points = RNG.uniform(0, 1, size=(300, 3)) * (np.array(field.shape) - 1) * 25
    expected = (3.0 * points[:, 0] - 2.0 * points[:, 1] + 0.5 * points[:, 2]) / 25 + 7.0
    assert np.allclose(ccf.sample_volume(field, points, 25, order=1), expected)
    itk = np.ascontiguousarray(field.transpose(2, 1, 0))
    assert np.allclose(ccf.sample_volume(itk, points, 25, order=1, axes=ccf.ITK_AXES), expected)
    nearest = ccf.sample_volume(field, points, 25, order=0)
    assert np.array_equal(nearest, field[tuple(ccf.um_to_index(points, 25).T)])
    corners = np.array([[0, 0, 0], [5, 3, 4]]) * 25.0
    assert ccf.sample_volume(field, corners, 25, order=1).tolist() == [field[0, 0, 0], field[5, 3, 4]]
    beyond_centres = [[-1, 0, 0], [5 * 25 + 1, 0, 0], [np.nan, 0, 0], [0, 0, 4 * 25 + 12]]
    assert np.isnan(ccf.sample_volume(field, beyond_centres, 25, order=1)).all()
    nearest = ccf.sample_volume(field, beyond_centres, 25, order=0)  # within half a voxel: inside
    assert nearest[[0, 1, 3]].tolist() == [field[0, 0, 0], field[5, 0, 0], field[0, 0, 4]]
    assert np.isnan(nearest[2])
    outside = [[-13, 0, 0], [5 * 25 + 13, 0, 0], [0, -13, 0], [0, 0, 4 * 25 + 13]]
    assert np.isnan(ccf.sample_volume(field, outside, 25, order=0)).all()
    holes = field.copy()
    holes[1, 1, 1] = np.nan
    on_plane = np.array([[0, 25, 25], [25, 25, 12.5], [12.5, 12.5, 12.5]])
    sampled = ccf.sample_volume(holes, on_plane, 25, order=1)
    assert sampled[0] == field[0, 1, 1] and np.isnan(sampled[1]) and np.isnan(sampled[2])
    skipped = ccf.sample_volume(holes, on_plane, 25, order=1, skip_nan=True)
    assert skipped[0] == field[0, 1, 1]  # no NaN corner: the same value
    cube = [field[a, d, r] for a in (0, 1) for d in (0, 1) for r in (0, 1) if (a, d, r) != (1, 1, 1)]
    assert np.isclose(skipped[2], np.mean(cube))  # the centre: the 7 corners with data, equal weights
    assert np.isfinite(skipped[1])
    empty = np.full_like(field, np.nan)
    assert np.isnan(ccf.sample_volume(empty, on_plane, 25, order=1, skip_nan=True)).all()
    with pytest.raises(ValueError, match="order=3"):
        ccf.sample_volume(field, points, 25, order=3)


def test_image_to_array_is_a_live_ccf_view():
    """[AP, DV, LR] without a copy, the resolution from the spacing, and the image kept alive."""
    values = np.arange(np.prod(GRID), dtype=np.float32).reshape(GRID[::-1])

    def make():
        image = sitk.GetImageFromArray(values)
        image.SetSpacing((0.009999999776482582,) * 3)
        image.SetDirection((0, 0, -1, 1, 0, 0, 0, -1, 0))  # the real ABC header: not used
        return ccf.image_to_array(image)

    array, resolution = make()
    _ = [np.full(10_000, -1.0) for _ in range(200)]  # reuse freed memory, if the image were gone
    assert resolution == 10.0 and array.shape == GRID and not array.flags.writeable
    assert np.array_equal(array, values.transpose(2, 1, 0))
    with pytest.raises(ValueError, match="not in the CCF's voxel order"):
        ccf.image_to_array(ish.reorient(sitk.GetImageFromArray(values), "RAS", "MICe"))
    anisotropic = sitk.GetImageFromArray(values)
    anisotropic.SetSpacing((0.2, 0.2, 0.1))
    with pytest.raises(ValueError, match="isotropic"):
        ccf.image_to_array(anisotropic)


# -- the sample world's real-format files ---------------------------------------------------------
@pytest.fixture(scope="module")
def abc_ccf(tmp_path_factory, sample_source):
    """The Allen-CCF-2020 annotation and parcellation tables, downloaded from the sample server."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutdatedManifestWarning)
        cache = AbcProjectCache.from_cache_dir(tmp_path_factory.mktemp("abc"), source=sample_source)
    image = sitk.ReadImage(str(cache.get_data_path("Allen-CCF-2020", "annotation_10")))
    wide = cache.get_metadata_dataframe("Allen-CCF-2020", "parcellation_to_parcellation_term_membership_acronym")
    long = cache.get_metadata_dataframe("Allen-CCF-2020", "parcellation_to_parcellation_term_membership")
    return image, wide, long


def test_abc_annotation_through_the_parcellation_tables(abc_ccf, tree):
    """ABC's annotation (parcellation indices) -> structure ids; masks agree with ABC's own divisions."""
    image, wide, long = abc_ccf
    annotation, resolution = ccf.image_to_array(image)
    assert annotation.shape == image.GetSize() and resolution == round(image.GetSpacing()[0] * 1000, 3)
    lookup = ccf.parcellation_structure_ids(wide, tree)
    assert np.array_equal(ccf.parcellation_structure_ids(long, tree), lookup)
    present = np.unique(annotation)
    assert set(present) <= set(wide["parcellation_index"]) and len(present) > 10
    for row in wide.itertuples():
        expected = row.substructure if row.substructure in tree else None
        assert (tree[int(lookup[row.parcellation_index])].acronym if lookup[row.parcellation_index] else None) \
            == expected, row
    index = np.argwhere(np.ones(annotation.shape, bool))[::7]
    points = ccf.index_to_um(index, resolution) + RNG.uniform(-0.49, 0.49, index.shape) * resolution
    values = annotation[tuple(index.T)]
    assert np.array_equal(ccf.structure_at(annotation, points, resolution), values)
    assert np.array_equal(ccf.structure_at(annotation, points, resolution, labels=lookup), lookup[values])
    itk = sitk.GetArrayViewFromImage(image)
    assert np.array_equal(ccf.structure_at(itk, points, resolution, axes=ccf.ITK_AXES), values)
    for division in ("Isocortex", "HPF", "CB"):
        mask = ccf.structure_mask(annotation, division, tree, labels=lookup)
        own = np.isin(annotation, wide.loc[wide["division"] == division, "parcellation_index"])
        assert mask.any() and np.array_equal(mask, own), division
    assert not (ccf.structure_mask(annotation, "CA1", tree, labels=lookup)
                & ccf.structure_mask(annotation, "Isocortex", tree, labels=lookup)).any()
    extent = np.array(annotation.shape) * resolution
    assert ccf.structure_at(annotation, [extent, -extent, [np.nan] * 3], resolution).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="parcellation_to_parcellation_term_membership_acronym"):
        ccf.parcellation_structure_ids(wide[["parcellation_index"]], tree)
    with pytest.raises(ValueError, match="Unknown parcellation level 'layer'"):
        ccf.parcellation_structure_ids(wide, tree, level="layer")


def test_division_level_lookup_is_coarser(abc_ccf, tree):
    """level='division' maps each index to its division's structure (or the category's for fibre tracts)."""
    _, wide, _ = abc_ccf
    fine = ccf.parcellation_structure_ids(wide, tree)
    coarse = ccf.parcellation_structure_ids(wide, tree, level="division")
    for index in wide["parcellation_index"]:
        if fine[index]:
            assert coarse[index] and tree.is_descendant(int(fine[index]), of=int(coarse[index]))


@pytest.fixture(scope="module")
def grid_zip(amba_server, tmp_path_factory):
    """A Pcp2 coronal energy grid downloaded from the sample Allen API."""
    source = Source("sample", amba_server.url)
    experiments = ish.query_section_datasets("coronal", ["Pcp2"], source=source)
    return ish.download_grid(int(experiments["experiment_id"].iloc[0]), tmp_path_factory.mktemp("g"),
                             source=source)


def test_downloaded_grid_in_ccf_and_world_coordinates(grid_zip):
    """A served ISH grid: read_grid's image, read_grid_array's [LR, DV, AP] and the world files agree."""
    image = ish.read_grid(grid_zip)
    grid, resolution = ccf.image_to_array(image)
    raw, spacing = ish.read_grid_array(grid_zip)
    assert grid.shape == GRID and resolution == 200.0 and spacing == (200.0, 200.0, 200.0)
    index = np.c_[RNG.integers(0, 67, 60), RNG.integers(0, 41, 60), RNG.integers(0, 58, 60)]
    points = ccf.index_to_um(index, resolution)
    expected = raw[index[:, 2], index[:, 1], index[:, 0]]
    assert np.array_equal(ccf.sample_volume(grid, points, resolution), expected)
    assert np.array_equal(ccf.sample_volume(raw, points, resolution, axes=ccf.ITK_AXES), expected)
    assert np.array_equal(ccf.sample_volume(raw, points, resolution, order=1, axes=ccf.ITK_AXES), expected)
    ras = ish.reorient(image, "RAS", "MICe")
    world = ccf.um_to_world(points, "MICe")
    assert [ras[ras.TransformPhysicalPointToIndex(p.tolist())] for p in world] == expected.tolist()
    nii = nib.Nifti1Image(np.ascontiguousarray(grid), ccf.world_affine("MICe", resolution))
    back = nib.as_closest_canonical(nii)  # reorders to RAS voxels; each voxel keeps its world point
    voxels = np.rint((np.linalg.inv(back.affine) @ np.c_[world, np.ones(len(world))].T).T[:, :3]).astype(int)
    assert np.asarray(back.dataobj)[tuple(voxels.T)].tolist() == expected.tolist()


def test_grid_annotation_structures_cover_the_marker(grid_zip, tree):
    """Pcp2 energy sampled at the grid annotation's Purkinje-layer voxels beats the rest of the brain."""
    annotation = amba.grid_annotation().transpose(2, 1, 0)  # the sample's [LR, DV, AP] -> [AP, DV, LR]
    grid, resolution = ccf.image_to_array(ish.read_grid(grid_zip))
    purkinje = ccf.structure_mask(annotation, "CBXpu", tree)
    brain = annotation > 0
    inside = np.argwhere(purkinje)
    rest = np.argwhere(brain & ~ccf.structure_mask(annotation, "CB", tree))
    energy = np.where(grid < 0, np.nan, grid)
    at_purkinje = ccf.sample_volume(energy, ccf.index_to_um(inside, resolution), resolution)
    elsewhere = ccf.sample_volume(energy, ccf.index_to_um(rest, resolution), resolution)
    assert np.nanmean(at_purkinje) > 3 * np.nanmean(elsewhere)
    assert set(tree.acronyms(ccf.structure_at(annotation, ccf.index_to_um(inside, resolution), resolution))) \
        == {"CBXpu"}


def test_regions_of_interest_from_the_roi_table(tmp_path, sample_source):
    """Every VBN-style area maps to the ROIs whose parts contain it; 'root' and fibre tracts to none."""
    cache = AbcProjectCache.from_s3_cache(tmp_path, source=sample_source, progressbar=False)
    rois = cache.get_metadata_dataframe("WMB-10X", "region_of_interest_metadata")["acronym"]
    tree = ccf.StructureTree.shipped()
    assert ccf.regions_of_interest("VISp", rois, tree) == ["VIS-PTLp", "VIS"]
    assert ccf.regions_of_interest("VISp5", rois, tree) == ["VIS-PTLp", "VIS"]  # a layer: its area's ROIs
    assert ccf.regions_of_interest("DG", rois, tree) == ["HIP"]
    assert ccf.regions_of_interest("LP", rois, tree) == ["TH"]
    assert ccf.regions_of_interest("ec", rois, tree) == []
    assert ccf.regions_of_interest("root", rois, tree) == []


def test_track_distance_geometry():
    """Distances to a tilted segment: perpendicular inside it, to the nearest end beyond it."""
    start, end = np.array([1000.0, 0.0, 0.0]), np.array([1000.0, 3000.0, 4000.0])  # length 5000
    unit = (end - start) / 5000
    normal = np.array([1.0, 0.0, 0.0])
    points = np.array([start + 2500 * unit + 30 * normal, end + 100 * unit, start - 200 * unit,
                       [np.nan, 0, 0]])
    distance, along = ccf.track_distance(points, start, end)
    np.testing.assert_allclose(distance[:3], [30, 100, 200])
    np.testing.assert_allclose(along[:3], [2500, 5000, 0])
    assert np.isnan(distance[3])
    with pytest.raises(ValueError, match="same point"):
        ccf.track_distance(points, start, start)
