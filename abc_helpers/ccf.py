"""CCF coordinates and structures: the Allen structure tree, µm <-> voxels <-> world mm, structures at points.

The Allen Mouse Brain Common Coordinate Framework (CCFv3) conventions used here:

* **CCF micrometres** ``(AP, DV, LR)``: anterior → posterior, dorsal → ventral, left → right, from
  the front-top-left corner of the reference volume (13200 x 8000 x 11400 µm). VBN channels
  (``anterior_posterior_ccf_coordinate``, ...) are in these units; ABC's MERFISH
  ``ccf_coordinates`` (``x = AP``, ``y = DV``, ``z = LR``) are in millimetres (multiply by 1000).
* **Voxels**: a volume at *resolution_um* is a numpy array indexed ``[AP, DV, LR]`` (the CCF's
  PIR voxel order, :data:`CCF_AXES`) and voxel ``i`` sits at ``i * resolution_um`` µm, the Allen
  convention (the 200 µm ISH grid: voxel i ↔ i * 200 µm; the 10 and 25 µm annotation). A point
  belongs to the voxel whose centre is nearest (``rounding="nearest"``: index = floor(µm /
  resolution + 0.5)); ``rounding="floor"`` (index = floor(µm / resolution)) is there for data
  whose voxel ``i`` spans ``[i, i + 1) * resolution``. Arrays in another axis order are passed
  with *axes*: SimpleITK and MetaImage arrays (``sitk.GetArrayViewFromImage`` of an ABC
  ``annotation_10.nii.gz``, :func:`~abc_helpers.ish.read_grid_array` of an ISH grid) are
  ``[LR, DV, AP]``, :data:`ITK_AXES`; :func:`image_to_array` returns the ``[AP, DV, LR]`` view of
  a SimpleITK image directly. pynrrd reads the CCF ``.nrrd`` files as ``[AP, DV, LR]`` already.
* **World spaces** (mm), those of the Allen ISH grid download script and of
  :func:`abc_helpers.ish.reorient`: ``"CCFv3"`` is the CCF axes in mm, ``(AP, DV, LR) / 1000``;
  ``"MICe"`` is an RAS space (x left → right, y posterior → anterior, z inferior → superior)
  whose origin is the CCF point (AP 5300, DV 5300, LR 5700) µm: ``(LR - 5700, 5300 - AP,
  5300 - DV) / 1000``.

:class:`StructureTree` reads the real structure ontology in its published forms (the Allen
API's structure graph JSON, the flat ``Structure`` CSV, the CSV shipped in this package) and
answers the questions of the AllenSDK's ``StructureTree``: lookups by id or acronym, ancestors,
descendants, colours. ABC's ``annotation_10.nii.gz`` holds *parcellation indices*, not structure
ids: :func:`parcellation_structure_ids` maps them through ABC's parcellation tables.
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

logger = logging.getLogger("abc_helpers")

#: The CCF axis order of volumes and points: anterior-posterior, dorsal-ventral, left-right.
CCF_AXES: tuple[str, str, str] = ("AP", "DV", "LR")
#: The numpy axis order of SimpleITK/MetaImage arrays of CCF volumes (x = AP varies fastest).
ITK_AXES: tuple[str, str, str] = ("LR", "DV", "AP")
#: The extent of the CCFv3 reference volume in µm (AP, DV, LR): 1320 x 800 x 1140 voxels of 10 µm.
CCF_EXTENT_UM: tuple[int, int, int] = (13200, 8000, 11400)
#: The CCF point (AP, DV, LR) in µm at the origin of the MICe world space.
MICE_ORIGIN_UM: tuple[float, float, float] = (5300.0, 5300.0, 5700.0)
#: The world spaces :func:`um_to_world` knows.
WORLDS: tuple[str, str] = ("CCFv3", "MICe")
#: ABC's parcellation term sets, coarse to fine (the columns of its ``..._acronym`` view).
PARCELLATION_LEVELS: tuple[str, ...] = ("organ", "category", "division", "structure", "substructure")

# world axis rows in terms of the CCF axes (AP, DV, LR) columns, and the world origin in CCF µm
_WORLD_AXES = {
    "CCFv3": np.eye(3),
    "MICe": np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
}
_WORLD_ORIGIN_UM = {"CCFv3": np.zeros(3), "MICe": np.array(MICE_ORIGIN_UM)}
_SHIPPED_TREE = Path(__file__).parent / "sample" / "data" / "allen_structure_tree.csv"

Rounding = Literal["nearest", "floor"]


# -- the structure tree ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Structure:
    """One structure of the Allen structure tree.

    Attributes
    ----------
    id : int
        The Allen structure id (e.g. 385 for VISp).
    acronym : str
        E.g. ``"VISp"``.
    name : str
        E.g. ``"Primary visual area"``.
    parent_id : int or None
        The parent's id; None for the root.
    path : tuple of int
        The ids from the root down to this structure (the API's ``structure_id_path``).
    color_hex_triplet : str
        Six upper-case hex digits, as in the API (``"08858C"``).
    """

    id: int
    acronym: str
    name: str
    parent_id: int | None
    path: tuple[int, ...]
    color_hex_triplet: str

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The colour as (red, green, blue) integers in 0-255, like the AllenSDK's ``rgb_triplet``."""
        h = self.color_hex_triplet
        return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))

    @property
    def depth(self) -> int:
        """The number of steps from the root (0 for the root)."""
        return len(self.path) - 1


def _int_or_none(value: Any) -> int | None:
    """An id from a CSV cell, a JSON value or a pandas cell (empty, None and NaN are None)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return int(value)


def _hex_color(record: Mapping[str, Any]) -> str:
    """The six-digit upper-case hex colour of a record (``color_hex_triplet`` or ``rgb_triplet``).

    Leading zeros lost by a spreadsheet or a CSV reader (``19399`` for AUD's ``019399``, as in
    iblatlas's copy of the tree) are put back.
    """
    value = record.get("color_hex_triplet")
    if isinstance(value, float) and not math.isnan(value) and value.is_integer():
        value = int(value)
    if isinstance(value, (int, np.integer)):
        value = str(int(value))
    if isinstance(value, str) and value.strip():
        text = value.strip().lstrip("#").upper().zfill(6)
        if len(text) == 6 and all(c in "0123456789ABCDEF" for c in text):
            return text
        raise ValueError(f"Colour '{value}' of structure {record.get('acronym')!r} is not a hex "
                         "triplet such as '08858C': fix the colour column of the structure table.")
    rgb = record.get("rgb_triplet")
    if rgb is not None and len(rgb) == 3:
        return "".join(f"{int(c):02X}" for c in rgb)
    return "FFFFFF"


def _flatten_graph(nodes: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """Yield the nodes of nested ``children`` lists in graph (pre-)order, each with its parent id."""
    stack: list[tuple[Mapping[str, Any], int | None]] = [(node, None) for node in reversed(list(nodes))]
    while stack:
        node, parent = stack.pop()
        record = {k: v for k, v in node.items() if k != "children"}
        if parent is not None and _int_or_none(record.get("parent_structure_id")) is None:
            record["parent_structure_id"] = parent
        yield record
        stack.extend((child, int(node["id"])) for child in reversed(node.get("children") or []))


class StructureTree:
    """The Allen structure tree: lookups by id or acronym, ancestors, descendants and colours.

    It answers the questions of the AllenSDK's ``StructureTree`` (``get_structures_by_id``,
    ``ancestor_ids``, ``descendant_ids``, ``structure_descends_from``, ``get_colormap``) from the
    real ontology in any of its published forms: :meth:`from_json` (the Allen API's
    ``structure_graph_download/1.json``), :meth:`from_csv` (the API's ``Structure`` query as CSV,
    or the copy shipped with this package: :meth:`shipped`), :meth:`from_records` and
    :meth:`from_dataframe`. Ids and acronyms are the Allen's: ids as in any CCF annotation volume
    (10, 25, 50, 100 µm and the 200 µm ISH grid annotation); ABC's volumes hold parcellation
    indices instead, see :func:`parcellation_structure_ids`.

    Parameters
    ----------
    structures : iterable of Structure
        Every structure once; each parent before or after its children.

    Raises
    ------
    ValueError
        For a repeated id or acronym, or a path that does not end with its structure's parent and id.

    Examples
    --------
    >>> tree = StructureTree.shipped()
    >>> tree["VISp5"].name, tree[385].acronym
    ('Primary visual area layer 5', 'VISp')
    >>> tree.is_descendant("VISp5", of="Isocortex"), tree.is_descendant("CA1", of="Isocortex")
    (True, False)
    >>> [tree[i].acronym for i in tree.ancestors("VISp5")][:4]
    ['VISp5', 'VISp', 'VIS', 'Isocortex']
    >>> tree["VISp"].rgb
    (8, 133, 140)
    """

    def __init__(self, structures: Iterable[Structure]) -> None:
        self._by_id: dict[int, Structure] = {}
        self._by_acronym: dict[str, Structure] = {}
        for s in structures:
            if s.id in self._by_id:
                raise ValueError(f"Structure id {s.id} appears twice ({self._by_id[s.id].acronym!r} and "
                                 f"{s.acronym!r}): pass each structure once.")
            if s.acronym in self._by_acronym:
                raise ValueError(f"Acronym {s.acronym!r} appears twice (ids {self._by_acronym[s.acronym].id} "
                                 f"and {s.id}): pass each structure once.")
            expected_end = (s.id,) if s.parent_id is None else (s.parent_id, s.id)
            if s.path[-len(expected_end):] != expected_end:
                raise ValueError(f"Structure {s.acronym!r} (id {s.id}) has path {s.path}, which does not "
                                 f"end with its parent and itself {expected_end}: fix its structure_id_path.")
            self._by_id[s.id] = s
            self._by_acronym[s.acronym] = s
        self._children: dict[int, list[int]] = {i: [] for i in self._by_id}
        for s in self._by_id.values():
            if s.parent_id is not None and s.parent_id in self._children:
                self._children[s.parent_id].append(s.id)

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], name: str = "the records") -> StructureTree:
        """Build the tree from flat records: one mapping per structure, as the Allen API returns them.

        Parameters
        ----------
        records : iterable of mapping
            Each with ``id``, ``acronym``, ``name``, ``parent_structure_id`` (None/empty for the
            root) and, optionally, ``structure_id_path`` (``"/997/8/567/"`` or a list of ids;
            derived from the parents when absent) and ``color_hex_triplet`` (or the AllenSDK's
            ``rgb_triplet``). A record with id 0 (``void``, outside the brain, which iblatlas's
            copy of the tree carries) is not a structure and is skipped.
        name : str
            What the records came from, for error messages.

        Returns
        -------
        StructureTree

        Raises
        ------
        ValueError
            If a record lacks a column, or names a parent that is not among the records.
        """
        rows: list[dict[str, Any]] = []
        for record in records:
            missing = [k for k in ("id", "acronym", "name") if k not in record]
            if missing:
                raise ValueError(f"A structure record of {name} has no {', '.join(missing)} "
                                 f"(keys: {sorted(record)}): pass the Allen API's Structure columns.")
            if _int_or_none(record["id"]) in (None, 0):
                continue
            rows.append(dict(record))
        parents = {int(r["id"]): _int_or_none(r.get("parent_structure_id")) for r in rows}
        paths: dict[int, tuple[int, ...]] = {}

        def path_of(sid: int) -> tuple[int, ...]:
            chain = [sid]
            while chain[-1] not in paths and parents[chain[-1]] is not None:
                parent = parents[chain[-1]]
                if parent not in parents:
                    raise ValueError(f"Structure {chain[-1]} of {name} names parent {parent}, which is "
                                     "not among the records: pass the whole tree.")
                if parent in chain:
                    raise ValueError(f"The parents of structure {sid} in {name} form a cycle {chain}.")
                chain.append(parent)
            base = paths.get(chain[-1], (chain[-1],))
            for i in range(len(chain) - 2, -1, -1):
                base = (*base, chain[i])
            return base

        structures = []
        for r in rows:
            sid = int(r["id"])
            given = r.get("structure_id_path")
            if isinstance(given, str) and given.strip("/ "):
                path = tuple(int(p) for p in given.strip("/ ").split("/"))
            elif isinstance(given, (list, tuple)) and given:
                path = tuple(int(p) for p in given)
            else:
                path = path_of(sid)
            paths[sid] = path
            parent = parents[sid] if parents[sid] is not None else (path[-2] if len(path) > 1 else None)
            structures.append(Structure(sid, str(r["acronym"]), str(r["name"]), parent, path, _hex_color(r)))
        return cls(structures)

    @classmethod
    def from_json(cls, source: str | os.PathLike | Mapping[str, Any] | Sequence[Any]) -> StructureTree:
        """Build the tree from the Allen API's structure graph (or ``Structure`` query) JSON.

        Parameters
        ----------
        source : str, PathLike, dict or list
            A file, or its parsed content: the API's envelope ``{"success": true, "msg": [...]}``
            of ``structure_graph_download/1.json`` (one root node with nested ``children``) or
            of a ``model::Structure`` query (flat records), or the list inside it, or one root node.

        Returns
        -------
        StructureTree

        Raises
        ------
        ValueError
            If the envelope reports a failure, or the content is not structure records.

        Examples
        --------
        >>> graph = {"success": True, "msg": [{"id": 997, "acronym": "root", "name": "root",
        ...          "color_hex_triplet": "FFFFFF", "parent_structure_id": None, "children": [
        ...          {"id": 8, "acronym": "grey", "name": "Basic cell groups and regions",
        ...           "color_hex_triplet": "BFDAE3", "parent_structure_id": 997, "children": []}]}]}
        >>> StructureTree.from_json(graph)["grey"].path
        (997, 8)
        """
        name = "the JSON"
        data: Any = source
        if isinstance(source, (str, os.PathLike)):
            name = f"'{source}'"
            with open(source, encoding="utf-8") as fh:
                data = json.load(fh)
        if isinstance(data, Mapping) and "msg" in data:
            if data.get("success") is False or not isinstance(data["msg"], list):
                raise ValueError(f"The Allen API answer in {name} reports a failure: {data['msg']!r}. "
                                 "Download the structure graph again.")
            data = data["msg"]
        if isinstance(data, Mapping):
            data = [data]
        if not isinstance(data, list) or not all(isinstance(n, Mapping) for n in data):
            raise ValueError(f"{name} holds no structure records: expected the Allen API's structure "
                             "graph (structure_graph_download/1.json) or a list of structures.")
        return cls.from_records(_flatten_graph(data), name=name)

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> StructureTree:
        """Build the tree from a CSV with the Allen API's ``Structure`` columns.

        Parameters
        ----------
        path : str or PathLike
            E.g. the API's ``model::Structure`` query saved as CSV, or the file :meth:`shipped` reads.

        Returns
        -------
        StructureTree
        """
        with open(path, newline="", encoding="utf-8") as fh:
            return cls.from_records(csv.DictReader(fh), name=f"'{path}'")

    @classmethod
    def from_dataframe(cls, frame: Any) -> StructureTree:
        """Build the tree from a pandas DataFrame with the Allen API's ``Structure`` columns.

        Parameters
        ----------
        frame : pandas.DataFrame
            Columns ``id``, ``acronym``, ``name``, ``parent_structure_id`` and optionally
            ``structure_id_path`` and ``color_hex_triplet`` (e.g. :meth:`to_frame`'s output).

        Returns
        -------
        StructureTree
        """
        return cls.from_records(frame.to_dict("records"), name="the DataFrame")

    @classmethod
    def shipped(cls) -> StructureTree:
        """Return the real Allen structure tree shipped with this package (1327 structures).

        A copy of the CCFv3 ontology (ids, acronyms, names, colours, parents) taken unchanged from
        ``iblatlas``'s ``allen_structure_tree.csv``; no download needed.

        Returns
        -------
        StructureTree

        Examples
        --------
        >>> len(StructureTree.shipped())
        1327
        """
        return cls.from_csv(_SHIPPED_TREE)

    # -- lookups -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Structure]:
        return iter(self._by_id.values())

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            return key in self._by_acronym
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            return int(key) in self._by_id
        return False

    def __getitem__(self, key: int | str) -> Structure:
        return self.get(key)

    def __repr__(self) -> str:
        return f"StructureTree({len(self)} structures)"

    def get(self, key: int | str | Structure) -> Structure:
        """Return the structure with this id or acronym.

        Parameters
        ----------
        key : int, str or Structure
            An Allen structure id (``385``) or acronym (``"VISp"``, case-sensitive).

        Returns
        -------
        Structure

        Raises
        ------
        KeyError
            If no structure has it; the message suggests close acronyms.
        TypeError
            If *key* is neither an id nor an acronym.
        """
        if isinstance(key, Structure):
            key = key.id
        if isinstance(key, str):
            found = self._by_acronym.get(key)
            if found is None:
                raise KeyError(self._unknown_acronym(key))
            return found
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            found = self._by_id.get(int(key))
            if found is None:
                raise KeyError(f"No structure with id {int(key)} in this structure tree ({len(self)} "
                               "structures): pass an Allen structure id (e.g. 385 for VISp) or an "
                               "acronym; an ABC annotation holds parcellation indices, map them with "
                               "parcellation_structure_ids().")
            return found
        raise TypeError(f"Look structures up by id (int) or acronym (str), not {type(key).__name__}.")

    def _unknown_acronym(self, key: str) -> str:
        same_case = [a for a in self._by_acronym if a.lower() == key.lower()]
        close = same_case + [a for a in difflib.get_close_matches(key, list(self._by_acronym), n=5, cutoff=0.6)
                             if a not in same_case]
        hint = (f"did you mean {', '.join(repr(a) for a in close[:5])}?" if close
                else "list them with tree.to_frame().")
        return (f"No structure with acronym {key!r} in this structure tree ({len(self)} structures): "
                f"acronyms are case-sensitive, as in the Allen structure tree; {hint}")

    def ancestors(self, key: int | str) -> list[int]:
        """Return the ids from this structure up to the root, itself first (the AllenSDK's ``ancestor_ids``).

        Parameters
        ----------
        key : int or str
            A structure id or acronym.

        Returns
        -------
        list of int
        """
        return list(reversed(self.get(key).path))

    def descendants(self, key: int | str) -> list[int]:
        """Return the ids of this structure and of every structure below it, in graph order.

        Parameters
        ----------
        key : int or str
            A structure id or acronym.

        Returns
        -------
        list of int
            The structure itself first (the AllenSDK's ``descendant_ids``).
        """
        out: list[int] = []
        stack = [self.get(key).id]
        while stack:
            sid = stack.pop()
            out.append(sid)
            stack.extend(reversed(self._children[sid]))
        return out

    def is_descendant(self, key: int | str, of: int | str) -> bool:
        """Return whether *key* is *of* or lies below it (the AllenSDK's ``structure_descends_from``).

        Parameters
        ----------
        key, of : int or str
            Structure ids or acronyms.

        Returns
        -------
        bool
        """
        return self.get(of).id in self.get(key).path

    def acronyms(self, ids: Any) -> np.ndarray:
        """Return the acronym of each id (any array shape); 0, outside the brain, gives ``""``.

        Parameters
        ----------
        ids : array_like of int
            E.g. :func:`structure_at`'s output.

        Returns
        -------
        numpy.ndarray
            Strings (object dtype), the shape of *ids*.

        Raises
        ------
        KeyError
            For an id that is not 0 and not in the tree.
        """
        values = np.asarray(ids)
        unique, inverse = np.unique(values, return_inverse=True)
        names = np.empty(len(unique), dtype=object)
        names[:] = ["" if u == 0 else self.get(int(u)).acronym for u in unique]
        return names[inverse].reshape(values.shape)

    def colors(self, ids: Any, background: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
        """Return the colour of each id as RGB floats in [0, 1], e.g. to ``imshow`` an annotation slice.

        Parameters
        ----------
        ids : array_like of int
            Structure ids, any shape (0 = outside the brain).
        background : sequence of 3 floats
            The colour of id 0.

        Returns
        -------
        numpy.ndarray
            float, shape ``ids.shape + (3,)``.

        Raises
        ------
        KeyError
            For an id that is not 0 and not in the tree.

        Examples
        --------
        >>> StructureTree.shipped().colors([[385, 0]]).round(3).tolist()
        [[[0.031, 0.522, 0.549], [1.0, 1.0, 1.0]]]
        """
        values = np.asarray(ids)
        unique, inverse = np.unique(values, return_inverse=True)
        table = np.empty((len(unique), 3))
        for row, u in enumerate(unique):
            table[row] = background if u == 0 else np.array(self.get(int(u)).rgb) / 255.0
        return table[inverse].reshape((*values.shape, 3))

    def to_frame(self) -> Any:
        """Return the tree as a pandas DataFrame, one row per structure in graph order.

        Returns
        -------
        pandas.DataFrame
            Columns ``id``, ``acronym``, ``name``, ``parent_structure_id`` (nullable int),
            ``structure_id_path`` (``"/997/8/"``), ``color_hex_triplet``, ``depth``.
        """
        import pandas as pd

        roots = [s.id for s in self._by_id.values() if s.parent_id is None or s.parent_id not in self._by_id]
        order = [sid for root in roots for sid in self.descendants(root)]
        rows = [self._by_id[sid] for sid in order]
        return pd.DataFrame({
            "id": [s.id for s in rows],
            "acronym": [s.acronym for s in rows],
            "name": [s.name for s in rows],
            "parent_structure_id": pd.array([s.parent_id for s in rows], dtype="Int64"),
            "structure_id_path": ["/" + "/".join(map(str, s.path)) + "/" for s in rows],
            "color_hex_triplet": [s.color_hex_triplet for s in rows],
            "depth": [s.depth for s in rows],
        })


def parcellation_structure_ids(membership: Any, tree: StructureTree,
                               level: str = "substructure") -> np.ndarray:
    """Map ABC's parcellation indices (the values of its CCF volumes) to Allen structure ids.

    ABC's ``Allen-CCF-2020`` volumes and MERFISH ``ccf_coordinates`` carry a
    ``parcellation_index``; abc_atlas_access's tables name each index's term at five levels
    (organ, category, division, structure, substructure). This returns a lookup array: use it as
    ``labels=`` of :func:`structure_at` and :func:`structure_mask`, or as ``lookup[indices]``.

    Parameters
    ----------
    membership : pandas.DataFrame
        ``parcellation_to_parcellation_term_membership_acronym`` (columns ``parcellation_index``
        and the five levels) or ``parcellation_to_parcellation_term_membership`` (columns
        ``parcellation_index``, ``parcellation_term_set_name``, ``parcellation_term_acronym``).
    tree : StructureTree
        E.g. :meth:`StructureTree.shipped`.
    level : str
        The finest level to use; when its acronym is not an Allen structure (``unassigned``, ...)
        the next coarser level's is used.

    Returns
    -------
    numpy.ndarray
        uint32, ``lookup[parcellation_index] = structure id``; 0 for indices that are absent or
        whose terms name no structure of *tree* at any level (``unassigned``, outside the brain).

    Raises
    ------
    ValueError
        If *membership* has neither layout, or *level* is not one of :data:`PARCELLATION_LEVELS`.
    """
    if level not in PARCELLATION_LEVELS:
        raise ValueError(f"Unknown parcellation level {level!r}: use one of {', '.join(PARCELLATION_LEVELS)}.")
    columns = set(membership.columns)
    if {"parcellation_index", "parcellation_term_set_name", "parcellation_term_acronym"} <= columns:
        wide = membership.pivot_table(index="parcellation_index", columns="parcellation_term_set_name",
                                      values="parcellation_term_acronym", aggfunc="first")
    elif "parcellation_index" in columns and level in columns:
        wide = membership.set_index("parcellation_index")
    else:
        raise ValueError(
            f"The parcellation table has columns {sorted(columns)}: pass ABC's Allen-CCF-2020 "
            "'parcellation_to_parcellation_term_membership_acronym' or "
            "'parcellation_to_parcellation_term_membership' (get_metadata_dataframe).")
    levels = [lv for lv in PARCELLATION_LEVELS[: PARCELLATION_LEVELS.index(level) + 1] if lv in wide.columns]
    lookup = np.zeros(int(wide.index.max()) + 1 if len(wide) else 1, dtype=np.uint32)
    unresolved = set()
    for index, row in zip(wide.index, wide[levels[::-1]].itertuples(index=False), strict=True):
        for acronym in row:
            if isinstance(acronym, str) and acronym in tree:
                lookup[int(index)] = tree[acronym].id
                break
        else:
            unresolved.add(row[0])
    if unresolved:
        logger.debug("Parcellation terms with no structure in the tree (mapped to 0): %s", sorted(map(str, unresolved)))
    return lookup


# -- coordinates ----------------------------------------------------------------------------------
def _resolution(resolution_um: float) -> float:
    value = float(resolution_um)
    if not value > 0:
        raise ValueError(f"resolution_um={resolution_um!r}: pass the voxel size in µm (10, 25, 100, 200, ...).")
    return value


def _points(points: Any, name: str = "points_um") -> np.ndarray:
    array = np.asarray(points, dtype=float)
    if array.ndim == 0 or array.shape[-1] != 3:
        raise ValueError(f"{name} must hold 3 coordinates (AP, DV, LR) along its last axis; got shape "
                         f"{array.shape}. Pass e.g. numpy.column_stack([ap, dv, lr]) or "
                         "frame[[ap_column, dv_column, lr_column]].to_numpy().")
    return array


def _world(world: str) -> tuple[np.ndarray, np.ndarray]:
    if world not in _WORLD_AXES:
        raise ValueError(f"Unknown world space {world!r}: use 'MICe' or 'CCFv3'.")
    return _WORLD_AXES[world], _WORLD_ORIGIN_UM[world]


def index_to_um(indices: Any, resolution_um: float) -> np.ndarray:
    """Return the CCF position in µm of voxel indices: ``index * resolution_um`` (the Allen convention).

    Parameters
    ----------
    indices : array_like
        Voxel indices ``[AP, DV, LR]`` along the last axis (any leading shape), or any array of
        indices along one axis.
    resolution_um : float
        The voxel size: 10, 25, 50, 100, 200 (the ISH grid), ...

    Returns
    -------
    numpy.ndarray
        float, the shape of *indices*.

    Examples
    --------
    >>> index_to_um([33, 20, 28], 200).tolist()
    [6600.0, 4000.0, 5600.0]
    """
    return np.asarray(indices, dtype=float) * _resolution(resolution_um)


def um_to_index(points_um: Any, resolution_um: float, rounding: Rounding = "nearest") -> np.ndarray:
    """Return the voxel indices of CCF positions in µm at *resolution_um*.

    With ``rounding="nearest"`` (default) a point belongs to the voxel whose centre
    ``i * resolution_um`` is nearest: index = floor(µm / resolution + 0.5), halves going up
    (as ITK's ``TransformPhysicalPointToIndex``); ``rounding="floor"`` gives floor(µm /
    resolution), for voxels spanning ``[i, i + 1) * resolution``. The ratio is rounded to 1e-9
    first, so that 4.6 mm x 1000 lands where 4600 µm does. Indices outside the volume are
    returned as they are (negative or too large): :func:`structure_at` and
    :func:`sample_volume` treat them as outside.

    Parameters
    ----------
    points_um : array_like
        CCF positions in µm, any shape (a coordinate or ``(..., 3)`` points).
    resolution_um : float
        The voxel size in µm.
    rounding : {"nearest", "floor"}

    Returns
    -------
    numpy.ndarray
        int64, the shape of *points_um*.

    Raises
    ------
    ValueError
        For NaN positions (use :func:`structure_at`, which gives 0 there) or an unknown rounding.

    Examples
    --------
    >>> um_to_index([6600, 4090, 5710], 200).tolist()
    [33, 20, 29]
    >>> um_to_index([6600, 4090, 5710], 200, rounding="floor").tolist()
    [33, 20, 28]
    >>> um_to_index([5.705 * 1000], 10).tolist()  # 570.5 voxels: rounds up
    [571]
    """
    scaled = np.round(np.asarray(points_um, dtype=float) / _resolution(resolution_um), 9)
    if rounding == "nearest":
        index = np.floor(scaled + 0.5)
    elif rounding == "floor":
        index = np.floor(scaled)
    else:
        raise ValueError(f"Unknown rounding {rounding!r}: use 'nearest' (the voxel whose centre "
                         "is nearest) or 'floor'.")
    if np.isnan(index).any():
        raise ValueError(f"{int(np.isnan(index).sum())} coordinate(s) are NaN: drop them first, or use "
                         "structure_at() / sample_volume(), which give 0 / NaN there.")
    return index.astype(np.int64)


def um_to_world(points_um: Any, world: str = "MICe") -> np.ndarray:
    """Return the world coordinates (mm) of CCF positions (AP, DV, LR) in µm.

    The world spaces of :func:`abc_helpers.ish.reorient` (and of the Allen ISH grid download
    script): a voxel of a reoriented grid at CCF position *p* sits at ``um_to_world(p, world)``.

    Parameters
    ----------
    points_um : array_like
        ``(3,)`` or ``(..., 3)``: AP, DV, LR in µm.
    world : {"MICe", "CCFv3"}
        ``"CCFv3"``: (AP, DV, LR) / 1000; ``"MICe"``: RAS, (LR - 5700, 5300 - AP, 5300 - DV) / 1000.

    Returns
    -------
    numpy.ndarray
        float, the shape of *points_um*, in mm.

    Examples
    --------
    >>> um_to_world([5300, 5300, 5700], "MICe").tolist()
    [0.0, 0.0, 0.0]
    >>> um_to_world([[11000, 3000, 4600]], "MICe").tolist()
    [[-1.1, -5.7, 2.3]]
    >>> um_to_world([11000, 3000, 4600], "CCFv3").tolist()
    [11.0, 3.0, 4.6]
    """
    axes, origin = _world(world)
    points = _points(points_um)
    return (points - origin) @ axes.T / 1000.0 + 0.0  # + 0.0 turns -0.0 into 0.0


def world_to_um(points_mm: Any, world: str = "MICe") -> np.ndarray:
    """Return the CCF positions (AP, DV, LR) in µm of world points in mm (the inverse of :func:`um_to_world`).

    Parameters
    ----------
    points_mm : array_like
        ``(3,)`` or ``(..., 3)`` world coordinates in mm.
    world : {"MICe", "CCFv3"}

    Returns
    -------
    numpy.ndarray
        float, in µm.

    Examples
    --------
    >>> world_to_um([-1.1, -5.7, 2.3], "MICe").round(6).tolist()
    [11000.0, 3000.0, 4600.0]
    """
    axes, origin = _world(world)
    return _points(points_mm, "points_mm") * 1000.0 @ axes + origin + 0.0


def world_affine(world: str = "MICe", resolution_um: float = 1.0) -> np.ndarray:
    """Return the 4x4 affine from voxel indices ``[AP, DV, LR]`` (or µm, at 1) to world mm.

    For a volume indexed ``[AP, DV, LR]`` at *resolution_um*; e.g. ``nibabel.Nifti1Image(volume,
    world_affine("MICe", 200))`` puts each voxel at its MICe (RAS) world point.

    Parameters
    ----------
    world : {"MICe", "CCFv3"}
    resolution_um : float
        The voxel size; 1 maps µm positions.

    Returns
    -------
    numpy.ndarray
        (4, 4) float.

    Examples
    --------
    >>> world_affine("MICe", 200).round(6).tolist()
    [[0.0, 0.0, 0.2, -5.7], [-0.2, 0.0, 0.0, 5.3], [0.0, -0.2, 0.0, 5.3], [0.0, 0.0, 0.0, 1.0]]
    """
    axes, origin = _world(world)
    affine = np.eye(4)
    affine[:3, :3] = axes * _resolution(resolution_um) / 1000.0
    affine[:3, 3] = -(axes @ origin) / 1000.0 + 0.0
    return affine


def plane_extent(shape: Sequence[int], resolution_um: float,
                 origin: Literal["upper", "lower"] = "upper") -> tuple[float, float, float, float]:
    """Return the ``imshow`` extent (left, right, bottom, top) in mm of a plane cut from a CCF volume.

    Rows and columns are CCF axes starting at index 0 (e.g. ``volume[:, :, lr].T`` of an ``[AP,
    DV, LR]`` volume: rows DV, columns AP); each edge lies half a voxel beyond the first or last
    voxel centre, so voxel ``i`` is drawn centred on ``i * resolution_um``.

    Parameters
    ----------
    shape : sequence of int
        ``plane.shape``: (rows, columns).
    resolution_um : float
    origin : {"upper", "lower"}
        As passed to ``imshow``: ``"upper"`` (matplotlib's default) puts row 0 at the top.

    Returns
    -------
    tuple of float

    Examples
    --------
    >>> plane_extent((41, 67), 200)
    (-0.1, 13.3, 8.1, -0.1)
    """
    step = _resolution(resolution_um) / 1000.0
    rows, cols = (int(n) for n in shape[:2])
    low, high_cols, high_rows = -step / 2, (cols - 0.5) * step, (rows - 0.5) * step
    left, right = round(low, 9), round(high_cols, 9)
    if origin == "upper":
        return (left, right, round(high_rows, 9), round(low, 9))
    if origin == "lower":
        return (left, right, round(low, 9), round(high_rows, 9))
    raise ValueError(f"origin={origin!r}: use 'upper' or 'lower', as for matplotlib's imshow.")


# -- volumes --------------------------------------------------------------------------------------
class _ImageBuffer:
    """Keeps a SimpleITK image alive for as long as a numpy view of its pixels exists."""

    def __init__(self, image: Any, view: np.ndarray) -> None:
        self.image = image
        self.__array_interface__ = view.__array_interface__


def image_to_array(image: Any) -> tuple[np.ndarray, float]:
    """Return a SimpleITK image of a CCF volume as a read-only ``[AP, DV, LR]`` view, and its resolution.

    For the files in the Allen's voxel order (x = AP, y = DV, z = LR): ABC's
    ``annotation_10.nii.gz`` / ``average_template_10.nii.gz`` (1320 x 800 x 1140 at 10 µm), the
    CCF ``.nrrd`` volumes read with SimpleITK, an ISH grid from
    :func:`~abc_helpers.ish.read_grid` (67 x 41 x 58 at 200 µm). Voxel ``i`` is taken at ``i *
    resolution`` µm, as abc_atlas_access's tutorials index these arrays; the header's origin and
    direction (which differ between sources) are not used. No copy is made: the view keeps the
    image alive (``.copy()`` it to modify).

    Parameters
    ----------
    image : SimpleITK.Image
        A 3-D image with isotropic spacing (mm).

    Returns
    -------
    array : numpy.ndarray
        The pixels indexed ``[AP, DV, LR]``.
    resolution_um : float
        The spacing in µm (rounded to 1e-3 µm: the ABC files store 0.009999999776 mm).

    Raises
    ------
    ValueError
        If the image is not 3-D, its spacing is not isotropic, or its axes are not in the CCF's
        voxel order (x the longest, y the shortest), e.g. a grid reoriented to RAS.

    Examples
    --------
    >>> import SimpleITK as sitk
    >>> image = sitk.Image(67, 41, 58, sitk.sitkFloat32)
    >>> image.SetSpacing((0.2, 0.2, 0.2))
    >>> array, resolution_um = image_to_array(image)
    >>> array.shape, resolution_um
    ((67, 41, 58), 200.0)
    """
    import SimpleITK as sitk

    size, spacing = image.GetSize(), image.GetSpacing()
    if image.GetDimension() != 3 or not np.allclose(spacing, spacing[0], rtol=1e-6):
        raise ValueError(f"image_to_array() needs a 3-D image with isotropic spacing; got size {size} and "
                         f"spacing {spacing} mm. Resample it first (SimpleITK.Resample).")
    if not size[0] >= size[2] >= size[1]:
        raise ValueError(f"An image of size {size} is not in the CCF's voxel order (x = AP, y = DV, "
                         "z = LR: x the longest axis, y the shortest, e.g. 1320 x 800 x 1140). Pass the "
                         "volume as read from its file, not one reoriented to RAS.")
    view = sitk.GetArrayViewFromImage(image)
    array = np.asarray(_ImageBuffer(image, view)).transpose(2, 1, 0)
    array.flags.writeable = False
    return array, round(spacing[0] * 1000.0, 3)


def _ccf_volume(volume: Any, axes: Sequence[str], name: str) -> np.ndarray:
    array = np.asarray(volume)
    axes = tuple(axes)
    if sorted(axes) != sorted(CCF_AXES):
        raise ValueError(f"axes={axes!r}: name the {name}'s three numpy axes with 'AP', 'DV' and 'LR', "
                         "e.g. ccf.CCF_AXES for [AP, DV, LR] or ccf.ITK_AXES for SimpleITK arrays [LR, DV, AP].")
    if array.ndim != 3:
        raise ValueError(f"The {name} must be a 3-D array; got shape {array.shape}.")
    return np.transpose(array, [axes.index(a) for a in CCF_AXES])


def _nearest_voxels(shape: tuple[int, ...], points_um: Any, resolution_um: float,
                    rounding: Rounding) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    points = _points(points_um)
    flat = points.reshape(-1, 3)
    finite = np.isfinite(flat).all(axis=1)
    index = np.zeros(flat.shape, dtype=np.int64)
    index[finite] = um_to_index(flat[finite], resolution_um, rounding)
    inside = finite & np.all((index >= 0) & (index < np.array(shape)), axis=1)
    return index, inside, points.shape[:-1]


def structure_at(annotation: Any, points_um: Any, resolution_um: float, *,
                 axes: Sequence[str] = CCF_AXES, labels: Any = None,
                 rounding: Rounding = "nearest") -> np.ndarray:
    """Return the annotation's label at each CCF point; 0 outside the volume and for NaN points.

    Parameters
    ----------
    annotation : numpy.ndarray
        A 3-D label volume (the CCF annotation at 10/25/50/100 µm, the 200 µm grid annotation,
        ABC's ``annotation_10``), indexed as *axes* says.
    points_um : array_like
        ``(3,)`` or ``(..., 3)`` CCF positions (AP, DV, LR) in µm.
    resolution_um : float
        The annotation's voxel size.
    axes : sequence of str
        The annotation's numpy axes: :data:`CCF_AXES` (``[AP, DV, LR]``, default) or
        :data:`ITK_AXES` (``[LR, DV, AP]``, a SimpleITK array or an ISH grid from
        :func:`~abc_helpers.ish.read_grid_array`).
    labels : array_like, optional
        A lookup applied to the values, e.g. :func:`parcellation_structure_ids` for ABC's volumes
        (whose values are parcellation indices), to return structure ids.
    rounding : {"nearest", "floor"}
        How a point picks its voxel, see :func:`um_to_index`.

    Returns
    -------
    numpy.ndarray
        The annotation's dtype (or *labels*'), shape ``points_um.shape[:-1]``.

    Raises
    ------
    ValueError
        For axes that are not a permutation of AP, DV, LR, or a value beyond the end of *labels*.

    Examples
    --------
    >>> annotation = np.zeros((3, 2, 2), np.uint32)
    >>> annotation[1, 0, 1] = 385
    >>> structure_at(annotation, [[100, 0, 100], [90, 40, 60], [900, 0, 0], [np.nan, 0, 0]], 100).tolist()
    [385, 385, 0, 0]
    """
    volume = _ccf_volume(annotation, axes, "annotation")
    index, inside, shape = _nearest_voxels(volume.shape, points_um, resolution_um, rounding)
    out = np.zeros(len(index), dtype=volume.dtype)
    hit = index[inside]
    out[inside] = volume[hit[:, 0], hit[:, 1], hit[:, 2]]
    if labels is not None:
        lookup = np.asarray(labels)
        if out.size and int(out.max()) >= len(lookup):
            raise ValueError(f"The annotation holds value {int(out.max())}, beyond the {len(lookup)} entries "
                             "of labels: build labels from the tables of the same release.")
        out = lookup[out]
    return out.reshape(shape)


def structure_mask(annotation: Any, structure: int | str | Sequence[int | str], tree: StructureTree,
                   *, labels: Any = None) -> np.ndarray:
    """Return where *annotation* is *structure* or any of its descendants.

    Parameters
    ----------
    annotation : array_like
        Labels of any shape and axis order: a volume, a slice, or :func:`structure_at`'s output.
    structure : int, str or sequence of them
        Structure ids or acronyms (``"VISp"`` covers ``VISp1`` ... ``VISp6b``).
    tree : StructureTree
    labels : array_like, optional
        As in :func:`structure_at`: the annotation's values are indices into it (ABC's
        parcellation indices with :func:`parcellation_structure_ids`).

    Returns
    -------
    numpy.ndarray
        bool, the shape of *annotation*.

    Examples
    --------
    >>> tree = StructureTree.shipped()
    >>> ids = [tree[a].id for a in ("VISp5", "VISp2/3", "CA1")] + [0]
    >>> structure_mask(ids, "VISp", tree).tolist(), structure_mask(ids, "Isocortex", tree).tolist()
    ([True, True, False, False], [True, True, False, False])
    """
    keys = [structure] if isinstance(structure, (int, str, np.integer)) else list(structure)
    wanted = sorted({sid for key in keys for sid in tree.descendants(key)})
    if labels is not None:
        wanted = np.flatnonzero(np.isin(np.asarray(labels), wanted)).tolist()
    return np.isin(np.asarray(annotation), wanted)


def sample_volume(volume: Any, points_um: Any, resolution_um: float, order: int = 0, *,
                  axes: Sequence[str] = CCF_AXES, skip_nan: bool = False) -> np.ndarray:
    """Return a volume's values at CCF points: nearest voxel (``order=0``) or trilinear (``order=1``).

    Voxel ``i`` holds the value at ``i * resolution_um`` µm. ``order=0`` takes the nearest voxel
    (as :func:`structure_at`); ``order=1`` interpolates between the 8 surrounding voxel centres,
    so it is defined from the first to the last centre. Points outside, and NaN points, give NaN.
    ISH grids mark missing data with -1: set those to NaN first (``np.where(grid < 0, np.nan,
    grid)``) so that they do not blend into interpolated values. A trilinear value needs all 8
    voxels around the point, so it is NaN within one voxel of the brain's surface or of a missing
    section; ``skip_nan=True`` averages only the voxels that hold data (their weights rescaled to 1),
    and is NaN only where none of the 8 does.

    Parameters
    ----------
    volume : array_like
        3-D, indexed as *axes* says (e.g. an ISH energy grid, a template).
    points_um : array_like
        ``(3,)`` or ``(..., 3)`` CCF positions (AP, DV, LR) in µm.
    resolution_um : float
    order : {0, 1}
    axes : sequence of str
        :data:`CCF_AXES` (default) or :data:`ITK_AXES` (``read_grid_array``'s ``[LR, DV, AP]``).
    skip_nan : bool
        With ``order=1``: leave out the surrounding voxels that are NaN and rescale the others'
        weights, instead of returning NaN.

    Returns
    -------
    numpy.ndarray
        float64, shape ``points_um.shape[:-1]``.

    Raises
    ------
    ValueError
        For an order other than 0 or 1, or axes that are not a permutation of AP, DV, LR.

    Examples
    --------
    >>> volume = np.arange(8.0).reshape(2, 2, 2)  # value = 4 AP + 2 DV + LR (in voxels)
    >>> sample_volume(volume, [[100, 100, 50], [100, 0, 200]], 100, order=1).tolist()
    [6.5, nan]
    >>> volume[1, 1, 1] = np.nan  # no data in one corner
    >>> sample_volume(volume, [[50, 50, 50]], 100, order=1).tolist()
    [nan]
    >>> sample_volume(volume, [[50, 50, 50]], 100, order=1, skip_nan=True).tolist()  # the other 7
    [3.0]
    """
    data = _ccf_volume(volume, axes, "volume")
    if order == 0:
        index, inside, shape = _nearest_voxels(data.shape, points_um, resolution_um, "nearest")
        out = np.full(len(index), np.nan)
        hit = index[inside]
        out[inside] = data[hit[:, 0], hit[:, 1], hit[:, 2]]
        return out.reshape(shape)
    if order != 1:
        raise ValueError(f"order={order!r}: use 0 (nearest voxel) or 1 (trilinear).")
    points = _points(points_um)
    flat = np.round(points.reshape(-1, 3) / _resolution(resolution_um), 9)
    size = np.array(data.shape)
    inside = np.isfinite(flat).all(axis=1) & np.all((flat >= 0) & (flat <= size - 1), axis=1)
    out = np.full(len(flat), np.nan)
    where = flat[inside]
    low = np.minimum(np.floor(where).astype(np.int64), np.maximum(size - 2, 0))
    frac = where - low
    high = np.minimum(low + 1, size - 1)
    total = np.zeros(len(where))
    weights = np.zeros(len(where))
    for corner in range(8):
        pick = [(corner >> k) & 1 for k in range(3)]
        idx = [np.where(pick[k], high[:, k], low[:, k]) for k in range(3)]
        weight = np.prod([np.where(pick[k], frac[:, k], 1.0 - frac[:, k]) for k in range(3)], axis=0)
        value = data[idx[0], idx[1], idx[2]]
        # a corner of weight 0 (a point on a voxel plane) must not bring in its NaN
        use = (weight > 0) & (np.isfinite(value) if skip_nan else True)
        total += np.where(use, weight * value, 0.0)
        weights += np.where(use, weight, 0.0)
    if skip_nan:
        with np.errstate(invalid="ignore", divide="ignore"):
            total = np.where(weights > 0, total / weights, np.nan)
    out[inside] = total
    return out.reshape(points.shape[:-1])


def regions_of_interest(structure: int | str, roi_acronyms: Iterable[str], tree: StructureTree) -> list[str]:
    """The dissection regions of interest (ABC's 10x ROIs) that a CCF structure lies in.

    A region-of-interest acronym of the ABC Atlas's ``region_of_interest_metadata`` table joins
    CCF acronyms with ``-`` (``'VIS-PTLp'``, ``'SS-GU-VISC'``, ``'HIP'``); a structure lies in an
    ROI when one of those parts is the structure itself or one of its ancestors. Parts that are
    not in the tree are ignored.

    Parameters
    ----------
    structure : int or str
        A structure id or acronym (e.g. a VBN channel's ``structure_acronym``).
    roi_acronyms : iterable of str
        The ROI acronyms, e.g. ``region_of_interest_metadata["acronym"]``.
    tree : StructureTree
        The structure tree.

    Returns
    -------
    list of str
        The ROIs containing the structure, in the order given (empty if none).

    Examples
    --------
    >>> tree = StructureTree.shipped()
    >>> regions_of_interest("VISp", ["MOp", "VIS-PTLp", "VIS", "HIP", "TH"], tree)
    ['VIS-PTLp', 'VIS']
    >>> regions_of_interest("CA1", ["VIS", "HIP", "TH"], tree), regions_of_interest("LP", ["VIS", "TH"], tree)
    (['HIP'], ['TH'])
    """
    path = set(tree.ancestors(structure))
    return [roi for roi in roi_acronyms
            if any(part in tree and tree[part].id in path for part in str(roi).split("-"))]


def track_distance(points_um: Any, start_um: Any, end_um: Any) -> tuple[np.ndarray, np.ndarray]:
    """Distance of points to a straight track (a segment), and where along it they are closest.

    Parameters
    ----------
    points_um : array_like, shape (..., 3)
        Points in CCF µm ``(AP, DV, LR)``, e.g. MERFISH cells' ``ccf_coordinates`` x 1000.
    start_um, end_um : array_like, shape (3,)
        The two ends of the track, e.g. a probe's deepest and shallowest channels.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        The distance (µm) of each point to the segment, and the position (µm from *start_um*
        along the track, clipped to the segment) of its nearest point; NaN for NaN points.

    Examples
    --------
    >>> d, along = track_distance([[0, 50, 30], [0, 300, 0]], [0, 0, 0], [0, 200, 0])
    >>> d.tolist(), along.tolist()
    ([30.0, 100.0], [50.0, 200.0])
    """
    points = _points(points_um)
    start, end = np.asarray(start_um, dtype=float), np.asarray(end_um, dtype=float)
    axis = end - start
    length = float(np.linalg.norm(axis))
    if not length:
        msg = "track_distance: the track's two ends are the same point; give two distinct ends."
        raise ValueError(msg)
    along = np.clip((points - start) @ axis / length, 0.0, length)
    nearest = start + along[..., None] * axis / length
    return np.linalg.norm(points - nearest, axis=-1), along
