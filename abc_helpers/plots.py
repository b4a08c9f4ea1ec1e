"""The book's figure style: a "synthetic sample" mark, structure colours, anatomical views, region labels.

Every chapter draws its figures with these few helpers, so one convention holds everywhere:

* **Synthetic data say so inside the figure.** :func:`mark_synthetic` writes "synthetic sample"
  in a corner when the data source is the offline sample world, so a figure copied into slides
  keeps its warning. It draws nothing for real data.
* **Categorical colours never repeat within a figure.** Structures take the ontology's own colours
  (``color_hex_triplet``, as the Allen viewers do) through :func:`structure_colors`; structures that
  share an ontology colour (VISp and VISl, CA1 and DG) get distinct shades of it. Other categories
  take :func:`categorical_colors`, which never repeats for any number of categories.
* **One orientation for anatomical views**, in CCF millimetres (or µm) from the volume's corner:
  coronal sections have left-right across and dorsal-ventral down (dorsal up); sagittal sections
  anterior-posterior across (anterior left), dorsal up; horizontal sections left-right across,
  anterior up. :func:`section` cuts a plane from an ``[AP, DV, LR]`` volume in this orientation,
  :func:`show_section` (:func:`show_coronal`) draws it with its axes named, and :func:`label_regions`
  writes each region's acronym on it. :func:`orientation_note` says the convention in a caption.

matplotlib is imported inside the functions (the ``book`` extra), so importing this module is light.
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np

from .ccf import StructureTree, plane_extent

#: The text of the mark on every figure drawn from the sample world.
SYNTHETIC_MARK = "synthetic sample"
#: The ``gid`` of the mark's text artist, so tests and tools can find it in a figure.
SYNTHETIC_GID = "abc-helpers-synthetic-mark"
#: The anatomical views and their (rows, columns) CCF axes, in the book's orientation.
VIEWS: dict[str, tuple[str, str]] = {"coronal": ("DV", "LR"), "sagittal": ("DV", "AP"), "horizontal": ("AP", "LR")}
#: How each CCF axis reads along a plotted axis (from index 0 on).
AXIS_NAMES: dict[str, str] = {"AP": "AP ({unit}, anterior → posterior)", "DV": "DV ({unit}, dorsal → ventral)",
                              "LR": "LR ({unit}, left → right)"}
_CCF_AXIS = {"AP": 0, "DV": 1, "LR": 2}
# tab10, then tab20's light partners: 20 distinct colours before the generated hues start
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
            "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
            "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5")

View = Literal["coronal", "sagittal", "horizontal"]


def is_sample(data_source: Any) -> bool:
    """Return whether *data_source* is the offline sample world (its data are synthetic).

    Parameters
    ----------
    data_source : str or Source
        A chapter's ``data_source`` parameter (``"sample"``, ``"aws"``, a mirror URL) or a
        :class:`~abc_helpers.sources.Source`. A mirror cannot tell what it holds: mark its figures
        yourself (``mark_synthetic(fig)``) when it was filled from the sample world.

    Returns
    -------
    bool

    Examples
    --------
    >>> is_sample("sample"), is_sample("aws"), is_sample("http://127.0.0.1:8000")
    (True, False, False)
    """
    name = getattr(data_source, "name", data_source)
    return isinstance(name, str) and name.strip() == "sample"


def mark_synthetic(target: Any, data_source: Any = "sample", *, text: str = SYNTHETIC_MARK) -> Any:
    """Write "synthetic sample" in a corner of a figure or axes, when the data are the sample's.

    Parameters
    ----------
    target : matplotlib Figure or Axes
        A Figure gets the mark in its bottom-right corner, outside the axes' data; an Axes gets it
        inside, in its top-right corner on a light box.
    data_source : str or Source
        The chapter's data source: the mark is drawn only for the sample world (:func:`is_sample`).
    text : str
        The mark's text.

    Returns
    -------
    matplotlib.text.Text or None
        The mark (its ``gid`` is :data:`SYNTHETIC_GID`), or None when *data_source* is not the sample.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> fig, ax = plt.subplots()
    >>> mark_synthetic(fig, "sample").get_text()
    'synthetic sample'
    >>> mark_synthetic(fig, "aws") is None
    True
    >>> plt.close(fig)
    """
    if not is_sample(data_source):
        return None
    style = {"fontsize": 8, "color": "#555555", "style": "italic", "gid": SYNTHETIC_GID}
    if hasattr(target, "transAxes"):
        return target.text(0.99, 0.99, text, transform=target.transAxes, ha="right", va="top", zorder=10,
                           bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.75, "lw": 0},
                           **style)
    return target.text(0.995, 0.005, text, ha="right", va="bottom", **style)


def has_synthetic_mark(figure: Any) -> bool:
    """Return whether a matplotlib figure carries the mark of :func:`mark_synthetic`.

    Parameters
    ----------
    figure : matplotlib Figure

    Returns
    -------
    bool
    """
    return any(t.get_gid() == SYNTHETIC_GID for t in figure.findobj(lambda a: hasattr(a, "get_text")))


def categorical_colors(n: int) -> list[str]:
    """Return *n* distinct colours as ``"#rrggbb"``: never a repeat, whatever *n*.

    The first 10 are matplotlib's ``tab10``, the next 10 their light partners of ``tab20``;
    beyond 20, hues go round the colour wheel by the golden angle at three lightness levels.

    Parameters
    ----------
    n : int
        How many categories.

    Returns
    -------
    list of str

    Raises
    ------
    ValueError
        If *n* is negative.

    Examples
    --------
    >>> categorical_colors(3)
    ['#1f77b4', '#ff7f0e', '#2ca02c']
    >>> colours = categorical_colors(60)
    >>> len(set(colours))
    60
    """
    if n < 0:
        msg = f"categorical_colors(n={n}): n is the number of categories, 0 or more."
        raise ValueError(msg)
    out = list(_PALETTE[:n])
    seen = set(out)
    k = 0
    while len(out) < n:
        hue = (k * 0.381966) % 1.0
        light = (0.38, 0.55, 0.70)[(k // 7) % 3]
        colour = _hex(colorsys.hls_to_rgb(hue, light, 0.65))
        if colour not in seen:
            out.append(colour)
            seen.add(colour)
        k += 1
    return out


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{round(min(max(c, 0.0), 1.0) * 255):02x}" for c in rgb)


def structure_colors(acronyms: Iterable[str], tree: StructureTree, *, distinct: bool = True,
                     missing: str = "#999999") -> dict[str, str]:
    """Return each structure's ontology colour (``color_hex_triplet``) as ``"#rrggbb"``.

    The ontology gives neighbours of one family the same colour (every visual area is ``08858C``,
    CA1, CA3 and DG are ``7ED04B``). With *distinct*, structures that would share a colour in this
    figure get shades of it instead (lighter and darker, same hue), so a legend stays usable and the
    colours still say "visual cortex" or "hippocampus". The first of them in the ontology's order
    keeps the colour itself; pass one figure's (or one chapter's) structures at once so every plot
    gives a structure the same shade.

    Parameters
    ----------
    acronyms : iterable of str
        The structures of one figure (repeats are ignored).
    tree : StructureTree
        E.g. ``ccf.StructureTree.shipped()``.
    distinct : bool
        Shade structures that share an ontology colour, so no two are equal.
    missing : str
        The colour of an acronym the tree does not know (e.g. a dataset's ``"unknown"``) and of
        ``root`` (white in the ontology); several such acronyms are shaded apart too.

    Returns
    -------
    dict
        Acronym -> ``"#rrggbb"``, in the order given.

    Examples
    --------
    >>> tree = StructureTree.shipped()
    >>> structure_colors(["VISp", "LGd"], tree)
    {'VISp': '#08858c', 'LGd': '#ff8084'}
    >>> shades = structure_colors(["VISp", "VISl", "VISal"], tree)
    >>> len(set(shades.values()))
    3
    """
    names = list(dict.fromkeys(acronyms))
    base = {a: _ontology_colour(a, tree, missing) for a in names}
    if not distinct:
        return base
    graph_order = {s.acronym: k for k, s in enumerate(tree)}
    groups: dict[str, list[str]] = {}
    for a in sorted(names, key=lambda a: (graph_order.get(a, len(graph_order)), a)):  # stable shades
        groups.setdefault(base[a], []).append(a)
    out = dict(base)
    for colour, members in groups.items():
        if len(members) > 1:
            out.update(zip(members, _shades(colour, len(members)), strict=True))
    # a shade may land on another group's colour: nudge until every colour is unique
    used: set[str] = set()
    for a in names:
        c = out[a]
        step = 0
        while c in used:
            step += 1
            hue, light, sat = colorsys.rgb_to_hls(*_rgb(out[a]))
            c = _hex(colorsys.hls_to_rgb(hue, min(0.9, max(0.1, light + 0.03 * step * (-1) ** step)), sat))
        out[a] = c
        used.add(c)
    return out


def _ontology_colour(acronym: str, tree: StructureTree, missing: str) -> str:
    """The ontology's colour, or *missing* for an unknown acronym or white (``root``: invisible on a page)."""
    if acronym not in tree or tree[acronym].color_hex_triplet.upper() == "FFFFFF":
        return missing.lower()
    return "#" + tree[acronym].color_hex_triplet.lower()


def _rgb(colour: str) -> tuple[float, float, float]:
    h = colour.lstrip("#")
    return (int(h[0:2], 16) / 255, int(h[2:4], 16) / 255, int(h[4:6], 16) / 255)


def _shades(colour: str, n: int) -> list[str]:
    """*n* shades of one colour, dark to light around its own lightness (the first is the colour itself)."""
    hue, light, sat = colorsys.rgb_to_hls(*_rgb(colour))
    lights = np.linspace(0.22, 0.80, n)
    # keep the ontology colour itself for the first structure: drop the shade nearest its lightness
    lights = np.r_[light, np.delete(lights, np.argmin(np.abs(lights - light)))]
    return [colour] + [_hex(colorsys.hls_to_rgb(hue, float(v), max(sat, 0.35) if sat > 0 else 0.0))
                       for v in lights[1:]]


def orientation_note(view: View = "coronal") -> str:
    """Return the sentence a caption uses to state the book's orientation of *view*.

    Parameters
    ----------
    view : {"coronal", "sagittal", "horizontal"}

    Returns
    -------
    str

    Examples
    --------
    >>> orientation_note("coronal")
    'Coronal section: left-right across, dorsal up (CCF coordinates).'
    """
    notes = {"coronal": "left-right across, dorsal up", "sagittal": "anterior to the left, dorsal up",
             "horizontal": "left-right across, anterior up"}
    return f"{_view(view).capitalize()} section: {notes[view]} (CCF coordinates)."


def _view(view: str) -> str:
    if view not in VIEWS:
        msg = f"Unknown view {view!r}: use one of {sorted(VIEWS)}."
        raise ValueError(msg)
    return view


def section(volume: Any, view: View, index: int) -> np.ndarray:
    """Cut one plane from an ``[AP, DV, LR]`` volume, rows and columns in the book's orientation.

    Parameters
    ----------
    volume : array_like
        Indexed ``[AP, DV, LR]`` (:data:`abc_helpers.ccf.CCF_AXES`; pass a SimpleITK array
        through ``ccf.image_to_array`` or ``.transpose(2, 1, 0)`` first).
    view : {"coronal", "sagittal", "horizontal"}
        Coronal: ``volume[index]`` as ``[DV, LR]``; sagittal: ``[DV, AP]`` at LR *index*;
        horizontal: ``[AP, LR]`` at DV *index*.
    index : int
        The voxel index along the axis the plane is cut across.

    Returns
    -------
    numpy.ndarray
        2-D, rows then columns as :data:`VIEWS` names them.

    Examples
    --------
    >>> v = np.zeros((5, 4, 3))
    >>> section(v, "coronal", 2).shape, section(v, "sagittal", 1).shape, section(v, "horizontal", 0).shape
    ((4, 3), (4, 5), (5, 3))
    """
    array = np.asarray(volume)
    rows, cols = VIEWS[_view(view)]
    fixed = ({"AP", "DV", "LR"} - {rows, cols}).pop()
    plane = np.take(array, index, axis=_CCF_AXIS[fixed])
    remaining = [a for a in ("AP", "DV", "LR") if a != fixed]
    return plane if remaining == [rows, cols] else plane.T


def _extent(shape: Sequence[int], resolution_um: float, unit: str) -> tuple[float, float, float, float]:
    scale = {"mm": 1.0, "µm": 1000.0}.get(unit)
    if scale is None:
        msg = f"unit={unit!r}: draw sections in 'mm' or 'µm'."
        raise ValueError(msg)
    return tuple(v * scale for v in plane_extent(shape, resolution_um, "upper"))  # type: ignore[return-value]


def show_section(ax: Any, plane: Any, resolution_um: float, view: View = "coronal", *,
                 tree: StructureTree | None = None, unit: str = "mm", labels: bool = False,
                 boundaries: bool = True, min_voxels: int | None = None, cmap: Any = "magma",
                 **imshow_kwargs: Any) -> Any:
    """Draw a section in the book's orientation, its axes named in mm (or µm) from the CCF corner.

    Parameters
    ----------
    ax : matplotlib Axes
    plane : array_like, 2-D
        From :func:`section` (rows and columns as :data:`VIEWS` says; voxel ``i`` at ``i *
        resolution_um``). Structure ids when *tree* is given, values otherwise (NaN: not drawn).
    resolution_um : float
        The volume's voxel size.
    view : {"coronal", "sagittal", "horizontal"}
    tree : StructureTree, optional
        Draw *plane* as structure ids in the ontology's colours (0: outside the brain, white).
    unit : {"mm", "µm"}
    labels : bool
        With *tree*: write each region's acronym on it (:func:`label_regions`).
    boundaries : bool
        With *tree*: draw the edges between structures as thin grey lines.
    min_voxels : int, optional
        With *labels*: the smallest region that gets a label (:func:`label_regions`).
    cmap : str or Colormap
        Without *tree*: the colour map of the values.
    **imshow_kwargs
        Passed to ``ax.imshow`` (``vmin``, ``vmax``, ``interpolation``, ...).

    Returns
    -------
    matplotlib.image.AxesImage
        For ``fig.colorbar`` when *plane* holds values.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> plane = np.zeros((3, 4), dtype=int)
    >>> plane[0] = 385  # the dorsal row: VISp
    >>> fig, ax = plt.subplots()
    >>> image = show_section(ax, plane, 100, "coronal", tree=StructureTree.shipped(), labels=True, min_voxels=1)
    >>> [float(v) for v in ax.get_ylim()]  # dorsal (DV 0 mm) at the top
    [0.25, -0.05]
    >>> ax.get_xlabel(), [t.get_text() for t in ax.texts]
    ('LR (mm, left → right)', ['VISp'])
    >>> plt.close(fig)
    """
    values = np.asarray(plane)
    if values.ndim != 2:
        msg = f"show_section needs a 2-D plane, got shape {values.shape}: cut one with section(volume, view, index)."
        raise ValueError(msg)
    extent = _extent(values.shape, resolution_um, unit)
    options: dict[str, Any] = {"interpolation": "nearest", "extent": extent, "origin": "upper"}
    options.update(imshow_kwargs)
    if tree is not None:
        image = ax.imshow(tree.colors(values), **options)
        if boundaries:
            _draw_boundaries(ax, values, extent)
    else:
        image = ax.imshow(np.ma.masked_invalid(values.astype(float)), cmap=cmap, **options)
    rows, cols = VIEWS[_view(view)]
    ax.set_xlabel(AXIS_NAMES[cols].format(unit=unit))
    ax.set_ylabel(AXIS_NAMES[rows].format(unit=unit))
    ax.set_aspect("equal")
    if tree is not None and labels:
        label_regions(ax, values, resolution_um, tree, unit=unit, min_voxels=min_voxels)
    return image


def show_coronal(ax: Any, plane: Any, resolution_um: float, **kwargs: Any) -> Any:
    """Draw a coronal ``[DV, LR]`` section: left-right across, dorsal up (:func:`show_section`).

    Parameters
    ----------
    ax : matplotlib Axes
    plane : array_like
        ``volume[ap_index]`` of an ``[AP, DV, LR]`` volume, i.e. ``section(volume, "coronal", ap_index)``.
    resolution_um : float
    **kwargs
        As for :func:`show_section` (``tree``, ``labels``, ``unit``, ``cmap``, ...).

    Returns
    -------
    matplotlib.image.AxesImage
    """
    return show_section(ax, plane, resolution_um, "coronal", **kwargs)


def _draw_boundaries(ax: Any, ids: np.ndarray, extent: tuple[float, float, float, float]) -> None:
    from matplotlib.collections import LineCollection

    left, right, bottom, top = extent
    rows, cols = ids.shape
    dx, dy = (right - left) / cols, (bottom - top) / rows
    r, c = np.nonzero(ids[:, 1:] != ids[:, :-1])  # vertical edges between columns c and c + 1
    x = left + (c + 1) * dx
    vertical = np.stack([np.c_[x, top + r * dy], np.c_[x, top + (r + 1) * dy]], axis=1)
    r, c = np.nonzero(ids[1:, :] != ids[:-1, :])  # horizontal edges between rows r and r + 1
    y = top + (r + 1) * dy
    horizontal = np.stack([np.c_[left + c * dx, y], np.c_[left + (c + 1) * dx, y]], axis=1)
    segments = np.concatenate([vertical, horizontal])
    if len(segments):
        ax.add_collection(LineCollection(list(segments), colors="#555555", linewidths=0.3, alpha=0.6))


def label_regions(ax: Any, plane: Any, resolution_um: float, tree: StructureTree, *, unit: str = "mm",
                  min_voxels: int | None = None, min_fraction: float = 0.003, fontsize: float = 7,
                  min_spacing: float = 0.045) -> list[Any]:
    """Write each region's acronym on a section drawn by :func:`show_section`.

    A region's label sits on its voxel nearest the region's centroid (so a curved region is
    labelled on itself); larger regions are labelled first, and a label closer than
    *min_spacing* (a fraction of the plot's width) to an earlier one is left out.

    Parameters
    ----------
    ax : matplotlib Axes
    plane : array_like of int, 2-D
        Structure ids, as drawn (0: outside the brain, never labelled).
    resolution_um : float
    tree : StructureTree
    unit : {"mm", "µm"}
        As drawn.
    min_voxels : int, optional
        The smallest region labelled, in voxels of the plane; by default *min_fraction* of the
        plane's voxels inside the brain (so the same at every resolution).
    min_fraction : float
        Without *min_voxels*: the smallest region labelled, as a fraction of the brain's voxels.
    fontsize : float
    min_spacing : float
        The least distance between two labels, as a fraction of the plot's width.

    Returns
    -------
    list of matplotlib.text.Text
    """
    import matplotlib.patheffects as path_effects

    ids = np.asarray(plane)
    left, right, bottom, top = _extent(ids.shape, resolution_um, unit)
    step_x, step_y = (right - left) / ids.shape[1], (bottom - top) / ids.shape[0]
    values, counts = np.unique(ids[ids != 0], return_counts=True)
    if min_voxels is None:
        min_voxels = max(1, round(min_fraction * counts.sum()))
    placed: list[tuple[float, float]] = []
    texts = []
    spacing = min_spacing * (right - left)
    for value in values[np.argsort(-counts, kind="stable")]:
        rows, cols = np.nonzero(ids == value)
        if len(rows) < min_voxels:
            continue
        nearest = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
        x, y = left + (cols[nearest] + 0.5) * step_x, top + (rows[nearest] + 0.5) * step_y
        if any((x - px) ** 2 + (y - py) ** 2 < spacing**2 for px, py in placed):
            continue
        placed.append((x, y))
        text = ax.text(x, y, tree[int(value)].acronym, ha="center", va="center", fontsize=fontsize,
                       color="black", zorder=5)
        text.set_path_effects([path_effects.withStroke(linewidth=2, foreground="white")])
        texts.append(text)
    return texts
