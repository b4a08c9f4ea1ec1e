"""The sample world's one brain: every dataset drawn from it agrees with it, as the real ones agree."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from abc_helpers import AbcProjectCache, VbnProjectCache, ccf, ish
from abc_helpers.cache import OutdatedManifestWarning
from abc_helpers.sample import abc_cells, amba, brain, vbn

#: Marker genes of the sample's ISH grids and the structure (with its descendants) they mark.
MARKERS = (("Pcp2", "CBXpu"), ("Prox1", "DG"), ("Ppp1r1b", "STR"), ("Pomc", "ARH"), ("Th", "VTA"),
           ("Tcf7l2", "TH"), ("Mbp", "fiber tracts"), ("Rorb", "VISp4"))


@pytest.fixture(scope="module")
def vbn_cache(tmp_path_factory, sample_source) -> VbnProjectCache:
    """The VBN tables as the package reads them from the sample server."""
    return VbnProjectCache.from_s3_cache(tmp_path_factory.mktemp("vbn"), source=sample_source,
                                         progressbar=False)


@pytest.fixture(scope="module")
def abc_cache(tmp_path_factory, sample_source) -> AbcProjectCache:
    """The ABC release as the package reads it from the sample server."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutdatedManifestWarning)
        return AbcProjectCache.from_s3_cache(tmp_path_factory.mktemp("abc"), source=sample_source)


@pytest.fixture(scope="module")
def abc_annotation(abc_cache) -> np.ndarray:
    """The served ABC annotation as structure ids, ``[AP, DV, LR]`` at 100 um."""
    sitk = pytest.importorskip("SimpleITK")
    image = sitk.ReadImage(str(abc_cache.get_data_path("Allen-CCF-2020", "annotation_10")))
    assert np.allclose(image.GetSpacing(), 0.1) and image.GetOrigin() == (0.0, 0.0, 0.0)
    index = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # SimpleITK [z=LR, y=DV, x=AP]
    terms = abc_cache.get_metadata_dataframe(
        "Allen-CCF-2020", "parcellation_to_parcellation_term_membership_acronym")
    ids = dict(zip(brain.structure_tree()["acronym"], brain.structure_tree()["id"], strict=True))
    lookup = np.zeros(int(terms["parcellation_index"].max()) + 1, dtype=np.uint32)
    for row in terms.itertuples():
        lookup[row.parcellation_index] = ids.get(row.substructure, 0)
    return lookup[index]


def _within(structures: np.ndarray, ancestors: np.ndarray) -> np.ndarray:
    """For each pair, whether the structure is the ancestor or one of its descendants."""
    return np.array([brain.is_within(int(s), int(a)) for s, a in zip(structures, ancestors, strict=True)])


# -- the brain itself ---------------------------------------------------------------------------------
def test_brain_is_on_the_real_ccf_grid_with_real_structures():
    """100 um, the real extent and axis order, real ids only, mirror-image hemispheres."""
    volume = brain.annotation(100)
    assert volume.shape == (132, 80, 114) and volume.dtype == np.uint32 and not volume.flags.writeable
    assert set(np.unique(volume)) - {0} <= set(brain.structure_tree()["id"])
    assert np.array_equal(volume[:, :, 1:], volume[:, :, 1:][:, :, ::-1])  # about LR 5700 um
    assert np.array_equal(brain.annotation(200), volume[::2, ::2, ::2])  # voxel i at i * 200 um
    present = set(brain.present_structures())
    assert {"VISp5", "VISl2/3", "VISal4", "VISam1", "VISpm6a", "VISrl5", "CA1sp", "CA3sp", "DG-mo", "DG-sg",
            "DG-po", "ProS", "SUB", "LP", "LGd", "LGv", "MGv", "MGd", "PoT", "POL", "APN", "MRN", "NOT",
            "SGN", "CP", "ACB", "CBXpu", "CBXgr", "cc", "VL", "MOB", "ARH", "VTA"} <= present
    # structures at CCF points: nearest voxel, 0 outside the volume
    assert brain.structure_at([[-500, 0, 0], [9349, 1551, 7549], [13200, 8000, 11400]]).tolist() == [
        0, volume[93, 16, 75], 0]
    assert [brain.acronym(s) for s in brain.structure_at([[9400, 1600, 7550], [9400, 1600, 3850]])] == [
        "VISp5", "VISp5"]  # both hemispheres
    with pytest.raises(ValueError, match="sampled at"):
        brain.annotation(25)
    with pytest.raises(KeyError, match="'VISP' is not in the Allen structure tree"):
        brain.structure_id("VISP")


def test_brain_is_deterministic_across_processes(vbn_cache, sample_server, tmp_path):
    """Another process draws the same brain and builds the same channels, NWB file and ISH grid bytes."""
    sessions = vbn_cache.get_ecephys_session_table()
    sid = int(sessions.index[0])
    record = next(r for r in amba.section_data_sets() if r["_grid"] == "energy")
    code = f"""
import hashlib, pathlib
from abc_helpers.sample import amba, brain, vbn, vbn_nwb
tables = vbn.build_tables()
path = pathlib.Path({str(tmp_path / "again.nwb")!r})
vbn_nwb.write_session_nwb(path, tables["ecephys_sessions"].set_index("ecephys_session_id", drop=False).loc[{sid}], tables)
record = next(r for r in amba.section_data_sets() if r["_grid"] == "energy")
volume = amba.experiment_volume(record["genes"][0]["acronym"], record["plane_of_section"]["name"], record["_seed"])
for data in (brain.annotation(100).tobytes(), vbn.csv_bytes(tables["channels"]), path.read_bytes(),
             amba.grid_zip(record, {{"energy": volume}})):
    print(hashlib.sha256(data).hexdigest())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    served = [brain.annotation(100).tobytes(), vbn_cache.get_metadata_path("channels").read_bytes()]
    with vbn_cache.get_ecephys_session(sid) as session:
        served.append(session.path.read_bytes())
    served.append((sample_server.root / "allen-api" / "grid_data" / f"{record['id']}.zip").read_bytes())
    assert out.stdout.split() == [hashlib.sha256(data).hexdigest() for data in served]


# -- VBN ------------------------------------------------------------------------------------------------
def test_every_channel_structure_is_the_annotation_at_its_coordinate(vbn_cache):
    """The annotation at a channel's CCF coordinate is its structure or a descendant; 'root' outside."""
    channels = vbn_cache.get_channel_table()
    points = channels[["anterior_posterior_ccf_coordinate", "dorsal_ventral_ccf_coordinate",
                       "left_right_ccf_coordinate"]].to_numpy()
    at = brain.structure_at(points)
    root = channels["structure_acronym"] == "root"
    assert root.any() and (~root).sum() > 0.8 * len(channels)
    assert (at[root.to_numpy()] == 0).all()  # outside the brain, as on the real probes
    named = channels.loc[~root, "structure_acronym"].map(brain.structure_id).to_numpy()
    assert _within(at[~root.to_numpy()], named).all()
    # the area for the cortex's layers, DG for the dentate gyrus's: as the real tables name them
    assert all(brain.structure_level(int(s)) == s for s in set(named))
    assert not set(channels["structure_acronym"]) & {"VISp5", "VISp2/3", "DG-sg", "DG-mo", "DG-po"}
    assert {"VISp", "VISl", "VISal", "VISam", "VISpm", "VISrl", "CA1", "DG", "LP", "LGd"} <= set(
        channels["structure_acronym"])


def test_probe_tracks_are_straight_lines_from_visual_cortex_down(vbn_cache):
    """Channels lie on a straight line: a visual area at the top, then hippocampus, then deeper."""
    channels = vbn_cache.get_channel_table()
    probes = vbn_cache.get_probe_table()
    visual = (brain.structure_id("VIS"), brain.structure_id("PTLp"))  # VISrl and VISa are PTLp's
    on_target = 0
    for probe_id, group in channels.groupby("ecephys_probe_id"):
        group = group.sort_values("probe_channel_number")
        xyz = group[["anterior_posterior_ccf_coordinate", "dorsal_ventral_ccf_coordinate",
                     "left_right_ccf_coordinate"]].to_numpy(float)
        spread = np.linalg.svd(xyz - xyz.mean(axis=0), compute_uv=False)
        assert spread[1] < 0.01 * spread[0]  # one line (rounding to 1 um only)
        assert np.all(np.diff(xyz[:, 1]) < 0)  # channel 0 at the tip, deepest
        inside = group[group["structure_acronym"] != "root"]
        ids = inside["structure_acronym"].map(brain.structure_id).to_numpy()
        assert all(any(brain.is_within(int(s), v) for v in visual) for s in ids[-20:]), probe_id  # visual cortex
        assert any(brain.is_within(int(s), brain.structure_id("HPF")) for s in ids), probe_id
        assert any(brain.is_within(int(s), brain.structure_id(d)) for s in ids[:40] for d in ("TH", "MB")) \
            or any(brain.is_within(int(s), brain.structure_id("HPF")) for s in ids[:40]), probe_id
        on_target += vbn.PROBE_INSERTIONS[probes.loc[probe_id, "name"]][0] == inside["structure_acronym"].iloc[-1]
    assert on_target > 0.75 * len(probes)  # most probes enter the area they aim at, as on the rigs


#: The CA fields' strata from the alveus down, and the dentate gyrus's layers from its upper blade
#: to its lower one: the real order a probe going down through the dorsal hippocampus meets them.
CA_STRATA = ("so", "sp", "sr", "slm")
DG_ORDER = ("DG-mo", "DG-sg", "DG-po", "DG-sg", "DG-mo")
CORTICAL_LAYERS = ("1", "2/3", "4", "5", "6a", "6b")
AXES = ["anterior_posterior_ccf_coordinate", "dorsal_ventral_ccf_coordinate", "left_right_ccf_coordinate"]


@pytest.fixture(scope="module")
def served_ccf(abc_cache) -> tuple[np.ndarray, float, np.ndarray, ccf.StructureTree]:
    """The served ABC annotation read as chapter 5 reads it: array, resolution, index -> id, tree."""
    sitk = pytest.importorskip("SimpleITK")
    image = sitk.ReadImage(str(abc_cache.get_data_path("Allen-CCF-2020", "annotation_10")))
    annotation, resolution = ccf.image_to_array(image)
    tree = ccf.StructureTree.shipped()
    membership = abc_cache.get_metadata_dataframe(
        "Allen-CCF-2020", "parcellation_to_parcellation_term_membership_acronym")
    return annotation, resolution, ccf.parcellation_structure_ids(membership, tree), tree


def _runs(acronyms: list[str]) -> list[str]:
    """The structures in order, each run of equal neighbours once."""
    return [a for k, a in enumerate(acronyms) if k == 0 or a != acronyms[k - 1]]


def _is_subsequence(items: list[str], of: tuple[str, ...]) -> bool:
    rest = iter(of)
    return all(any(x == y for y in rest) for x in items)


def topology_errors(runs: list[str], target: str) -> list[str]:
    """What is wrong with a probe's structures from the pia down (annotation leaves, 'void' outside).

    The order rules of the real brain along a VBN probe: one cortical area's layers 1 ... 6b in
    order from the pia, white matter, the hippocampus's strata and dentate gyrus layers in order,
    then thalamus or midbrain, and nothing met twice (but the dentate gyrus's two blades).
    """
    errors = []
    inside = [a for a in runs if a != "void"]
    kind = []
    for a in inside:
        sid = brain.structure_id(a)
        if brain.is_within(sid, brain.structure_id("Isocortex")):
            kind.append("cortex")
        elif brain.is_within(sid, brain.structure_id("fiber tracts")):
            kind.append("white matter")
        elif brain.is_within(sid, brain.structure_id("HPF")):
            kind.append("hippocampus")
        elif any(brain.is_within(sid, brain.structure_id(x)) for x in ("TH", "MB")):
            kind.append("deep")
        else:
            kind.append(f"other ({a})")
    order = ["cortex", "white matter", "hippocampus", "deep"]
    groups = _runs(kind)
    if groups[:3] != order[:3] or not set(groups) <= set(order) or groups != sorted(groups, key=order.index):
        errors.append(f"not cortex -> white matter -> hippocampus -> thalamus/midbrain: {groups}")
    cortex = [a for a, k in zip(inside, kind, strict=True) if k == "cortex"]
    areas = {brain.acronym(brain.structure_level(brain.structure_id(a))) for a in cortex}
    if areas != {target}:
        errors.append(f"cortical areas {sorted(areas)}, not {target} alone")
    layers = [a[len(target):] for a in cortex if a.startswith(target)]
    if layers != list(CORTICAL_LAYERS):
        errors.append(f"cortical layers {layers}, not {list(CORTICAL_LAYERS)} from the pia")
    hippocampus = [a for a, k in zip(inside, kind, strict=True) if k == "hippocampus"]
    dentate = [a for a in hippocampus if a.startswith("DG")]
    fields = [a for a in hippocampus if not a.startswith("DG")]
    if hippocampus[:len(fields)] != fields:
        errors.append(f"a CA field under the dentate gyrus: {hippocampus}")
    strata = [a[3:] for a in fields if a[:3] in ("CA1", "CA2", "CA3")]
    if [CA_STRATA.index(x) for x in strata] != sorted(CA_STRATA.index(x) for x in strata):
        errors.append(f"CA strata out of order: {fields}")
    if not dentate or not _is_subsequence(dentate, DG_ORDER):
        errors.append(f"dentate gyrus layers {dentate}, not in the order {DG_ORDER}")
    met = [a if a.startswith("DG") or a[:3] not in ("CA1", "CA2", "CA3") else a[3:] for a in inside
           if not a.startswith("DG")]
    twice = sorted({a for a in _runs(met) if _runs(met).count(a) > 1})
    if twice:
        errors.append(f"met twice: {twice}")
    return errors


def test_every_probe_crosses_the_real_topology(vbn_cache, served_ccf):
    """Along every probe, the served annotation follows the real brain's order from the pia down.

    One cortical area (the probe's target) with its layers 1, 2/3, 4, 5, 6a, 6b in order, white
    matter, the CA strata (oriens, pyramidal, radiatum, lacunosum-moleculare) then the dentate
    gyrus's layers in order, then thalamus or midbrain; no structure met twice.
    """
    annotation, resolution, lookup, _ = served_ccf
    channels = vbn_cache.get_channel_table()
    probes = vbn_cache.get_probe_table()
    failures = {}
    for probe_id, track in channels.groupby("ecephys_probe_id"):
        track = track.sort_values("probe_channel_number", ascending=False)  # the top first
        ids = ccf.structure_at(annotation, track[AXES].to_numpy(float), resolution, labels=lookup)
        runs = _runs([brain.acronym(int(i)) for i in ids])
        target = vbn.PROBE_INSERTIONS[probes.loc[probe_id, "name"]][0]
        errors = topology_errors(runs, target)
        if errors:
            failures[probe_id] = (runs, errors)
    assert len(probes) == 180 and not failures, failures


def test_topology_rules_catch_the_old_anatomy():
    """The rules above fail the anatomy issue 17 found: areas stacked in depth, DG under the cc."""
    good = ["void", "VISp1", "VISp2/3", "VISp4", "VISp5", "VISp6a", "VISp6b", "cc", "CA1so", "CA1sp",
            "CA1sr", "CA1slm", "DG-mo", "DG-sg", "DG-po", "DG-sg", "DG-mo", "LP", "PoT"]
    assert topology_errors(good, "VISp") == []
    stacked = ["void", "VISp1", "VISp2/3", "VISp4", "VISp5", "VISp6a", "VISpl6b", "ec", "CA1so", "CA1sp",
               "CA1sr", "CA1slm", "DG-mo", "DG-sg", "DG-po", "DG-sg", "DG-mo", "MB"]
    assert any("cortical areas" in e for e in topology_errors(stacked, "VISp"))
    no_ca1 = ["void", "VISam1", "VISam2/3", "VISam4", "VISam5", "VISam6a", "VISam6b", "cc", "DG-mo",
              "DG-sg", "DG-po", "DG-sg", "DG-mo", "LP"]
    assert topology_errors(no_ca1, "VISam") == []  # CA1 is allowed to be missed, but not its order:
    swapped = [*no_ca1[:8], "CA1sr", "CA1sp", *no_ca1[8:]]
    assert any("CA strata" in e for e in topology_errors(swapped, "VISam"))
    back = [*good[:-2], "LP", "DG-mo", "LP"]
    assert topology_errors(back, "VISp")
    no_wm = [a for a in good if a != "cc"]
    assert any("white matter" in e for e in topology_errors(no_wm, "VISp"))
    layers_swapped = [*good[:3], "VISp5", "VISp4", *good[5:]]
    assert any("cortical layers" in e for e in topology_errors(layers_swapped, "VISp"))


def test_channel_labels_agree_with_the_served_annotation(vbn_cache, served_ccf):
    """Chapter 5's check, on every probe: each channel's structure is the served ABC annotation's
    at its coordinate, or holds it (area for layer, DG for its layers, CA1 for its strata), 'root'
    outside the brain. The channels are labelled on that very volume, at its resolution, as the real
    channels are labelled on the CCF annotation the real ABC release serves."""
    annotation, resolution, lookup, tree = served_ccf
    assert resolution == brain.BASE_RESOLUTION_UM
    channels = vbn_cache.get_channel_table()
    for probe_id, track in channels.groupby("ecephys_probe_id"):
        at_point = ccf.structure_at(annotation, track[AXES].to_numpy(float), resolution, labels=lookup)
        agree = [(s == "root" and i == 0) or (int(i) in tree and tree.is_descendant(int(i), of=s))
                 for i, s in zip(at_point, track["structure_acronym"], strict=True)]
        assert all(agree), (probe_id, track.loc[~np.array(agree), "structure_acronym"].value_counts())


def test_units_inherit_their_channel_and_lists_roll_up(vbn_cache):
    """Units carry their channel's structure and coordinates; probes and sessions list their channels'."""
    channels = vbn_cache.get_channel_table()
    units = vbn_cache.get_unit_table()
    joined = units.join(channels, on="ecephys_channel_id", rsuffix="_channel")
    for col in ("structure_acronym", "anterior_posterior_ccf_coordinate", "dorsal_ventral_ccf_coordinate",
                "left_right_ccf_coordinate"):
        assert (joined[col] == joined[f"{col}_channel"]).all(), col
    assert (units["structure_id"] == units["structure_acronym"].map(brain.structure_id)).all()
    probes = vbn_cache.get_probe_table()
    listed = channels.groupby("ecephys_probe_id")["structure_acronym"].apply(lambda s: str(sorted(set(s))))
    assert (probes["structure_acronyms"].to_numpy() == listed.loc[probes.index].to_numpy()).all()
    sessions = vbn_cache.get_ecephys_session_table(filter_abnormalities=False)
    listed = channels.groupby("ecephys_session_id")["structure_acronym"].apply(lambda s: str(sorted(set(s))))
    assert (sessions["structure_acronyms"].to_numpy() == listed.loc[sessions.index].to_numpy()).all()


def test_every_session_with_a_file_id_has_its_nwb(vbn_cache):
    """Each session's file_id names an NWB object of the bucket; each opens with pynwb and holds the
    session's units and channels (with the channels' structures)."""
    sessions = vbn_cache.get_ecephys_session_table(filter_abnormalities=False)
    data_files = vbn_cache.manifest["data_files"]
    assert (sessions["file_id"] >= 0).all()
    assert {str(int(f)) for f in sessions["file_id"]} <= set(data_files)
    units = vbn_cache.get_unit_table()
    channels = vbn_cache.get_channel_table()
    for sid in sessions.index:
        assert data_files[str(int(sessions.loc[sid, "file_id"]))]["url"].endswith(
            f"/behavior_ecephys_sessions/{sid}/ecephys_session_{sid}.nwb")
        with vbn_cache.get_ecephys_session(int(sid)) as session:
            assert session.nwbfile.session_id == str(sid)
            assert "SYNTHETIC" in session.nwbfile.session_description
            assert sorted(session.get_units().index) == sorted(units.index[units["ecephys_session_id"] == sid])
            got = session.get_channels(filter_by_validity=False)
            expected = channels[channels["ecephys_session_id"] == sid]
            assert list(got.index) == list(expected.index)
            assert (got["structure_acronym"] == expected["structure_acronym"]).all()
            probes = vbn_cache.get_probe_table().query("ecephys_session_id == @sid")
            assert sorted(session.probes.index) == sorted(probes.index)
            assert sorted(session.probes["name"]) == sorted(probes["name"])


# -- ABC: MERFISH cells, 10x regions ------------------------------------------------------------------------
def test_merfish_cells_sit_in_the_annotation_voxel_they_name(abc_cache, abc_annotation):
    """Each MERFISH cell's parcellation_index is the ABC annotation at its CCF coordinate (mm)."""
    sitk = pytest.importorskip("SimpleITK")
    ccf = abc_cache.get_metadata_dataframe("MERFISH-C57BL6J-638850-CCF", "ccf_coordinates")
    image = sitk.ReadImage(str(abc_cache.get_data_path("Allen-CCF-2020", "annotation_10")))
    values = sitk.GetArrayFromImage(image)  # parcellation indices, [LR, DV, AP]
    index = [image.TransformPhysicalPointToIndex(p) for p in ccf[["x", "y", "z"]].to_numpy().tolist()]
    at = np.array([values[k, j, i] for i, j, k in index])  # x = AP, y = DV, z = LR (mm)
    assert (at == ccf["parcellation_index"].to_numpy()).all() and (at > 0).all()
    ap_um = ccf[["x", "y", "z"]].to_numpy() * 1000
    ids = brain.structure_at(ap_um, 100)
    assert (ids == abc_annotation[tuple(brain.voxel_index(ap_um, 100).T)]).all()


def test_merfish_cell_types_follow_their_region_as_10x_cells_do(abc_cache):
    """A MERFISH cell's class is one the 10x cells of its brain division have (non-neuronal elsewhere)."""
    cells = abc_cache.get_metadata_dataframe("MERFISH-C57BL6J-638850", "cell_metadata_with_cluster_annotation")
    ccf = abc_cache.get_metadata_dataframe("MERFISH-C57BL6J-638850-CCF", "ccf_coordinates")
    divisions = abc_cache.get_metadata_dataframe(
        "Allen-CCF-2020", "parcellation_to_parcellation_term_membership_acronym").set_index(
        "parcellation_index")["division"]
    merfish = cells.merge(ccf[["cell_label", "parcellation_index"]], on="cell_label")
    merfish["division"] = merfish["parcellation_index"].map(divisions)
    tenx = abc_cache.get_metadata_dataframe("WMB-10X", "cell_metadata_with_cluster_annotation")
    tenx["division"] = tenx["feature_matrix_label"].str.replace(r"^WMB-10X(v2|v3|Multi)-", "", regex=True) \
        .str.replace(r"-\d$", "", regex=True)
    classes = tenx.groupby("division")["class"].apply(set)
    non_neuronal = {"30 Astro-Epen", "31 OPC-Oligo", "33 Vascular", "34 Immune"}
    checked = 0
    for label, division, cls in zip(merfish["cell_label"], merfish["division"], merfish["class"], strict=True):
        if division in classes.index:
            assert cls in classes[division], (label, division, cls)
            checked += 1
        else:  # fibre tracts and ventricles: non-neuronal cells only
            assert cls in non_neuronal, (label, division, cls)
    assert checked > 0.7 * len(merfish)
    assert set(merfish["division"]) >= {"Isocortex", "HPF", "STR", "TH", "HY", "MB"}


def roi_of_structure(acronym: str, rois: pd.DataFrame) -> list[str]:
    """The 10x dissection regions of interest a CCF structure lies in, from the ROI table.

    A real WMB ROI acronym joins CCF acronyms with ``-`` (``'VIS-PTLp'``, ``'SS-GU-VISC'``); a
    structure is in an ROI when it is one of those structures or below one of them in the tree.
    """
    path = set(brain.ancestors(brain.structure_id(acronym)))
    return [roi for roi in rois["acronym"]
            if any(brain.structure_id(part) in path for part in roi.split("-"))]


def test_ccf_structures_map_to_the_10x_regions_of_interest(abc_cache):
    """VISp -> VIS and VIS-PTLp, LP -> TH, CA1 -> HIP, ...; each ROI's 10x cells come from the matrices of
    the division the structure is in (the same class mix as the MERFISH cells there)."""
    rois = abc_cache.get_metadata_dataframe("WMB-10X", "region_of_interest_metadata")
    assert list(rois.columns) == ["label", "acronym", "name", "order", "color_hex_triplet"]
    for roi in rois["acronym"]:  # every part is a real CCF acronym
        assert all(brain.structure_id(part) for part in roi.split("-")), roi
    assert roi_of_structure("VISp", rois) == ["VIS-PTLp", "VIS"]
    assert roi_of_structure("LP", rois) == ["TH"]
    assert roi_of_structure("CA1", rois) == ["HIP"]
    assert roi_of_structure("MOp", rois) == ["MO-FRP", "MOp"]
    assert roi_of_structure("CP", rois) == ["STRd"]
    cells = abc_cache.get_metadata_dataframe("WMB-10X", "cell_metadata")
    region = dict(zip([m for _, m, _, _ in abc_cells.MATRICES], [r for _, _, r, _ in abc_cells.MATRICES],
                      strict=True))
    for structure, division in (("VISp", "Isocortex"), ("LP", "TH"), ("CA1", "HPF"), ("CP", "STR")):
        for roi in roi_of_structure(structure, rois):
            matrices = cells.loc[cells["region_of_interest_acronym"] == roi, "feature_matrix_label"]
            assert len(matrices) and set(matrices.map(region)) == {division}, (structure, roi)


# -- AMBA ISH grids and the two annotations -------------------------------------------------------------
def test_abc_and_amba_annotations_are_the_same_brain(abc_annotation):
    """At the same CCF points (voxel i at i * 200 um) the ABC volume (100 um) and the ISH grid
    annotation (200 um) agree."""
    grid = amba.grid_annotation().transpose(2, 1, 0)  # [LR, DV, AP] -> [AP, DV, LR]
    assert grid.shape == (67, 41, 58) and abc_annotation.shape == (132, 80, 114)
    assert np.array_equal(grid[:66, :40, :57], abc_annotation[::2, ::2, ::2])
    assert not grid[66:].any() and not grid[:, 40:].any() and not grid[:, :, 57:].any()
    assert np.array_equal(abc_annotation, brain.annotation(100))


def test_ish_energy_is_high_in_each_markers_structure(sample_source, tmp_path):
    """Served energy grids: each marker's mean energy in its structure is several times the rest's."""
    grid = amba.grid_annotation()
    brain_voxels = grid > 0
    experiments = ish.query_section_datasets("coronal", [g for g, _ in MARKERS], source=sample_source)
    for gene, structure in MARKERS:
        first = int(experiments.loc[experiments["gene"] == gene, "experiment_id"].iloc[0])
        energy, _ = ish.read_grid_array(ish.download_grid(first, tmp_path, source=sample_source))
        inside = np.isin(grid, list(brain.descendants(structure)))
        seen = energy >= 0
        assert inside.any() and np.all(energy[~brain_voxels] == -1), gene
        ratio = energy[inside & seen].mean() / energy[brain_voxels & ~inside & seen].mean()
        assert ratio > 3, (gene, structure, ratio)
    sagittal = ish.query_section_datasets("sagittal", ["Pcp2"], source=sample_source)
    energy, _ = ish.read_grid_array(ish.download_grid(int(sagittal["experiment_id"].iloc[0]), tmp_path,
                                                      source=sample_source))
    assert np.all(energy[29:] == -1) and (energy[:29] >= 0).any()  # one hemisphere (LR < 5700 um)
