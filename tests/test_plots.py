"""abc_helpers.plots: the synthetic mark, distinct structure colours, the sections' orientation, region labels."""

from __future__ import annotations

import re

import matplotlib as mpl
import numpy as np
import pytest

from abc_helpers import ccf, plots

mpl.use("Agg")
import matplotlib.pyplot as plt


@pytest.fixture(scope="module")
def tree() -> ccf.StructureTree:
    return ccf.StructureTree.shipped()


@pytest.fixture
def fig_ax():
    fig, ax = plt.subplots()
    yield fig, ax
    plt.close(fig)


def _texts(fig) -> list[str]:
    fig.canvas.draw()
    return [t.get_text() for t in fig.findobj(mpl.text.Text)]


def test_mark_is_in_the_figure_for_the_sample_only(fig_ax):
    """The sample's figures carry "synthetic sample" (figure or axes); real data's do not."""
    fig, ax = fig_ax
    assert plots.mark_synthetic(fig, "aws") is None and plots.mark_synthetic(ax, "https://mirror.example") is None
    assert plots.SYNTHETIC_MARK not in _texts(fig) and not plots.has_synthetic_mark(fig)
    plots.mark_synthetic(fig, "sample")
    assert plots.SYNTHETIC_MARK in _texts(fig) and plots.has_synthetic_mark(fig)
    inside = plots.mark_synthetic(ax, "sample")
    assert inside.get_transform() == ax.transAxes and inside in ax.texts


def test_mark_accepts_a_source_object(fig_ax):
    """A Source named "sample" is the sample world."""
    from abc_helpers.sources import Source

    assert plots.is_sample(Source("sample", "http://127.0.0.1:1")) and not plots.is_sample(Source("aws"))
    assert plots.mark_synthetic(fig_ax[0], Source("sample", "http://127.0.0.1:1")) is not None


@pytest.mark.parametrize("n", [0, 1, 10, 11, 20, 21, 45, 120])
def test_categorical_colours_never_repeat(n):
    """Any number of categories gets that many different colours."""
    colours = plots.categorical_colors(n)
    assert len(colours) == n == len(set(colours))
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colours)


def test_categorical_colours_refuse_a_negative_count():
    with pytest.raises(ValueError, match=re.escape("categorical_colors(n=-1)")):
        plots.categorical_colors(-1)


def test_structure_colours_are_the_ontologys(tree):
    """One structure per ontology colour: exactly its color_hex_triplet."""
    colours = plots.structure_colors(["VISp", "CA1", "LGd", "APN", "scwm"], tree)
    assert colours == {"VISp": "#08858c", "CA1": "#7ed04b", "LGd": "#ff8084", "APN": "#ff90ff", "scwm": "#cccccc"}


def test_structure_colours_shade_apart_what_the_ontology_repeats(tree):
    """The pairs tab20 and the ontology both repeat (DG/CA1, VISl/VISli, LGd/VPM) get distinct colours,
    each a shade of the ontology's hue; one of a family keeps the ontology colour itself."""
    names = ["VISp", "VISl", "VISli", "VISal", "VISam", "VISpm", "CA1", "CA2", "CA3", "DG", "LGd", "VPM",
             "MGm", "LP", "PIL", "POL", "Eth", "APN", "MRN", "unknown", "also unknown"]
    colours = plots.structure_colors(names, tree)
    assert list(colours) == names and len(set(colours.values())) == len(names)
    for family, colour in ((names[:6], "#08858c"), (names[6:10], "#7ed04b"), (["LGd", "VPM", "MGm"], "#ff8084")):
        assert [colours[n] for n in family].count(colour) == 1, family  # the first in the ontology's order
    import colorsys

    def hue(c):
        return colorsys.rgb_to_hls(*(int(c[i:i + 2], 16) / 255 for i in (1, 3, 5)))[0]

    for name in ("VISl", "VISli", "VISal", "VISam", "VISpm"):
        assert abs(hue(colours[name]) - hue("#08858c")) < 0.02, name
    assert plots.structure_colors(["DG", "CA1"], tree) == plots.structure_colors(["CA1", "DG"], tree)
    assert plots.structure_colors(["root"], tree) == {"root": "#999999"}  # white would not show
    same = plots.structure_colors(["VISp", "VISl"], tree, distinct=False)
    assert same["VISp"] == same["VISl"] == "#08858c"


def test_section_orientation_and_axes():
    """section() cuts [AP, DV, LR] volumes into the book's (rows, columns) for every view."""
    volume = np.arange(5 * 4 * 3).reshape(5, 4, 3)
    assert np.array_equal(plots.section(volume, "coronal", 2), volume[2])  # [DV, LR]
    assert np.array_equal(plots.section(volume, "sagittal", 1), volume[:, :, 1].T)  # [DV, AP]
    assert np.array_equal(plots.section(volume, "horizontal", 0), volume[:, 0, :])  # [AP, LR]
    with pytest.raises(ValueError, match="Unknown view 'axial'"):
        plots.section(volume, "axial", 0)


def test_coronal_section_has_dorsal_up_and_left_on_the_left(tree, fig_ax):
    """The dorsal row is drawn at the top, the first LR column at the left, axes in mm or µm."""
    _, ax = fig_ax
    plane = np.zeros((8, 10), dtype=int)
    plane[:2, :] = tree["VISp"].id  # dorsal rows
    plane[2:, :5] = tree["CA1"].id
    plane[2:, 5:] = tree["LGd"].id
    image = plots.show_coronal(ax, plane, 100, tree=tree, labels=True, min_voxels=1)
    bottom, top = ax.get_ylim()
    assert top < bottom and top == pytest.approx(-0.05)  # DV 0 at the top
    left, right = ax.get_xlim()
    assert left < right and left == pytest.approx(-0.05)
    assert image.get_array()[0, 0].tolist() == pytest.approx((np.array(tree["VISp"].rgb) / 255).tolist())
    assert ax.get_xlabel() == "LR (mm, left → right)" and ax.get_ylabel() == "DV (mm, dorsal → ventral)"
    labels = {t.get_text(): t.get_position() for t in ax.texts}
    assert set(labels) == {"VISp", "CA1", "LGd"}
    assert labels["VISp"][1] < labels["CA1"][1]  # dorsal label above (smaller DV)
    assert labels["CA1"][0] < labels["LGd"][0]
    fig2, ax2 = plt.subplots()
    plots.show_section(ax2, plane.astype(float), 100, "sagittal", unit="µm")
    assert ax2.get_xlabel() == "AP (µm, anterior → posterior)" and ax2.get_ylim()[1] == pytest.approx(-50)
    plt.close(fig2)


def test_labels_skip_small_and_crowded_regions(tree, fig_ax):
    """A region below min_voxels gets no label; of two labels closer than min_spacing, the larger stays."""
    _, ax = fig_ax
    plane = np.full((20, 20), tree["VISp"].id)
    plane[0, 0] = tree["LGd"].id
    plane[9:11, 9:11] = tree["CA1"].id  # 4 voxels at the centre, where VISp's label would go
    plots.show_section(ax, plane, 100, tree=tree)
    texts = plots.label_regions(ax, plane, 100, tree, min_voxels=2, min_spacing=0.2)
    assert [t.get_text() for t in texts] == ["VISp"]
    assert [t.get_text() for t in plots.label_regions(ax, plane, 100, tree, min_voxels=2, min_spacing=0.0)] \
        == ["VISp", "CA1"]


def test_show_section_refuses_a_volume_and_an_unknown_unit(fig_ax):
    _, ax = fig_ax
    with pytest.raises(ValueError, match=re.escape("needs a 2-D plane, got shape (2, 2, 2)")):
        plots.show_section(ax, np.zeros((2, 2, 2)), 100)
    with pytest.raises(ValueError, match="unit='um'"):
        plots.show_section(ax, np.zeros((2, 2)), 100, unit="um")


def test_orientation_note_names_the_convention():
    assert plots.orientation_note("coronal") == "Coronal section: left-right across, dorsal up (CCF coordinates)."
    assert "anterior to the left" in plots.orientation_note("sagittal")
