"""The Allen API routes of the sample server: RMA queries on SectionDataSet and 3-D grid downloads.

The data are the synthetic ones written by :mod:`abc_helpers.sample.amba` under
``<world>/allen-api``. Routes (GET and HEAD)::

    /api/v2/data/SectionDataSet/query.{csv,json}?criteria=...&tabular=...&start_row=..&num_rows=..
    /api/v2/data/query.{csv,json}?criteria=model::SectionDataSet,rma::criteria,...,rma::options[...]
    /api/v2/data/SectionDataSet/<id>.{csv,json}
    /grid_data/download/<id>[?include=energy,density,intensity]

RMA subset understood: filters ``[attr$op value]`` with ``$eq $ne $in $li $il $gt $lt $ge $le``
on the model (``[failed$eqfalse]``) and on the associations ``genes``, ``plane_of_section``,
``products`` and ``treatments`` (``products[abbreviation$eqMouse]``); ``rma::include`` /
``include=``; options ``num_rows`` (a number or ``all``; default 50), ``start_row``, ``order``,
``tabular`` (``table.attr+as+alias``) and ``count``. Anything else is answered with the API's
error envelope ``{"success": false, "id": -1, "start_row": 0, "num_rows": 0, "total_rows": 0,
"msg": "..."}`` and HTTP 500 (for ``.csv`` the same fields as a one-row CSV), never with a guess.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from collections.abc import Callable
from fnmatch import fnmatchcase
from functools import lru_cache, partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

Response = tuple[int, dict[str, str], "bytes | Path"]

#: SectionDataSet attributes, in the API's order (JSON records and CSV without ``tabular``).
DATA_SET_ATTRIBUTES = (
    "blue_channel", "delegate", "expression", "failed", "failed_facet", "green_channel", "id",
    "name", "plane_of_section_id", "qc_date", "red_channel", "reference_space_id",
    "rnaseq_design_id", "section_thickness", "specimen_id", "sphinx_id", "storage_directory",
    "weight",
)
#: Association name in criteria -> (table name in ``tabular``, attributes, has_many).
ASSOCIATIONS = {
    "genes": ("genes", ("id", "acronym", "name", "chromosome_id", "entrez_id",
                        "genomic_reference_update_id", "homologene_id", "organism_id",
                        "original_name", "original_symbol"), True),
    "plane_of_section": ("plane_of_sections", ("id", "name"), False),
    "products": ("products", ("id", "abbreviation", "name"), True),
    "treatments": ("treatments", ("id", "name"), True),
}
#: Table name in ``tabular`` -> its association; ``data_sets`` (the SectionDataSet itself) is the other table.
TABLES = {table: assoc for assoc, (table, _, _) in ASSOCIATIONS.items()}
OPERATORS = ("eq", "ne", "in", "li", "il", "gt", "lt", "ge", "le")
DEFAULT_NUM_ROWS = 50
GRID_VOLUMES = ("energy", "density", "intensity")


class RmaError(ValueError):
    """A query the sample API does not understand (answered with the API's error envelope)."""


# -- responses ---------------------------------------------------------------------------------------
def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _csv_bytes(columns: list[str], rows: list[list]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(v) for v in row])
    return buf.getvalue().encode()


def error_response(msg: str, fmt: str = "json", status: int = 500) -> Response:
    """Return the Allen API's error envelope (JSON, or the same fields as CSV for ``.csv`` routes)."""
    envelope = {"success": False, "id": -1, "start_row": 0, "num_rows": 0, "total_rows": 0, "msg": msg}
    if fmt == "csv":
        body = _csv_bytes(list(envelope), [list(envelope.values())])
        return status, {"Content-Type": "text/csv; charset=utf-8"}, body
    return status, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(envelope).encode()


# -- data ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _load_records(path: str, _mtime_ns: int) -> list[dict]:  # the mtime keys the cache
    with open(path) as fh:
        return json.load(fh)["section_data_sets"]


def load_records(root: Path) -> list[dict]:
    """Return the world's SectionDataSet records (cached per file version)."""
    path = Path(root) / "allen-api" / "section_data_sets.json"
    if not path.exists():
        raise FileNotFoundError(f"The sample world at '{root}' has no Allen API data ('{path}' is "
                                "missing): rebuild it with `python -m abc_helpers.sample build --force`.")
    return _load_records(str(path), path.stat().st_mtime_ns)


# -- RMA parsing --------------------------------------------------------------------------------------
def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split *text* at *sep* outside brackets, parentheses and single quotes."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == "'":
            quoted = not quoted
        elif quoted:
            continue
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
            if depth < 0:
                raise RmaError(f"Unbalanced '{ch}' in '{text}'.")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0 or quoted:
        raise RmaError(f"Unbalanced brackets or quotes in '{text}'.")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1]
    return value


_FILTER = re.compile(r"^([A-Za-z_][\w.]*)\$(eq|ne|in|li|il|gt|lt|ge|le)(.*)$", re.S)
_TOKEN = re.compile(r"^([A-Za-z_]\w*)?((?:\[[^\]]*\])*)$", re.S)


def parse_filters(brackets: str) -> list[tuple[str, str, list[str]]]:
    """Parse ``[a$eq1][b$in'x','y']`` into ``[(attr, op, values), ...]``."""
    filters = []
    for body in re.findall(r"\[([^\]]*)\]", brackets):
        m = _FILTER.match(body.strip())
        if not m:
            if "$" in body:
                raise RmaError(f"Unknown operator in '[{body}]': use one of "
                               + ", ".join("$" + o for o in OPERATORS) + ".")
            raise RmaError(f"Cannot parse the filter '[{body}]': expected '[attribute$operator value]'.")
        attr, op, value = m.groups()
        values = [_unquote(v) for v in split_top_level(value)] if op == "in" else [_unquote(value)]
        filters.append((attr, op, values))
    return filters


def _coerce(actual, value: str):
    if isinstance(actual, bool):
        if value.lower() not in ("true", "false", "t", "f"):
            raise RmaError(f"'{value}' is not a boolean: use true or false.")
        return value.lower() in ("true", "t")
    if isinstance(actual, (int, float)):
        try:
            return type(actual)(float(value))
        except ValueError:
            raise RmaError(f"'{value}' is not a number.") from None
    return value


def _match(actual, op: str, values: list[str]) -> bool:
    if op in ("li", "il"):
        text, pattern = str(actual), values[0]
        if op == "il":
            text, pattern = text.lower(), pattern.lower()
        return fnmatchcase(text, pattern.replace("%", "*"))
    if actual is None:
        return op == "ne"
    wanted = [_coerce(actual, v) for v in values]
    if op == "eq":
        return actual == wanted[0]
    if op == "ne":
        return actual != wanted[0]
    if op == "in":
        return actual in wanted
    return {"gt": actual > wanted[0], "lt": actual < wanted[0],
            "ge": actual >= wanted[0], "le": actual <= wanted[0]}[op]


def _items(record: dict, assoc: str) -> list[dict]:
    value = record[assoc]
    return value if isinstance(value, list) else [value]


def _data_set_matches(filters: list[tuple[str, str, list[str]]], record: dict) -> bool:
    """Does the SectionDataSet *record* pass every filter?"""
    return all(_match(record[a.removeprefix("data_sets.")], op, v) for a, op, v in filters)


def _association_matches(assoc: str, table: str, filters: list[tuple[str, str, list[str]]],
                         record: dict) -> bool:
    """Does one item of the association *assoc* (its *table*) pass every filter?"""
    return any(all(_match(item.get(x.removeprefix(table + ".")), op, v) for x, op, v in filters)
               for item in _items(record, assoc))


def parse_criteria(tokens: list[str]) -> list[Callable[[dict], bool]]:
    """Turn criteria tokens into predicates ``f(record) -> bool`` (bare associations are joins)."""
    predicates: list[Callable[[dict], bool]] = []
    for token in tokens:
        m = _TOKEN.match(token)
        if not m:
            raise RmaError(f"Cannot parse the criteria '{token}': the sample API understands "
                           "'[attribute$op value]' and 'association[attribute$op value]' only "
                           "(no nested associations).")
        assoc, brackets = m.groups()
        filters = parse_filters(brackets)
        if assoc is None:
            for attr, _, _ in filters:
                if attr.removeprefix("data_sets.") not in DATA_SET_ATTRIBUTES:
                    raise RmaError(f"Unknown SectionDataSet attribute '{attr}'.")
            predicates.append(partial(_data_set_matches, filters))
            continue
        if assoc not in ASSOCIATIONS:
            raise RmaError(f"Unknown association '{assoc}' of SectionDataSet: the sample API knows "
                           + ", ".join(f"'{k}'" for k in ASSOCIATIONS) + ".")
        table, attrs, _ = ASSOCIATIONS[assoc]
        for attr, _, _ in filters:
            if attr.removeprefix(table + ".") not in attrs:
                raise RmaError(f"Unknown attribute '{attr}' of '{assoc}': use one of {', '.join(attrs)}.")
        if filters:
            predicates.append(partial(_association_matches, assoc, table, filters))
    return predicates


def parse_tabular(spec: str) -> list[tuple[str, str, str]]:
    """Parse ``data_sets.id+as+experiment_id,genes.acronym`` into ``[(table, attr, alias)]``."""
    columns = []
    for item in _option_values(spec):
        item = item.replace("+", " ")
        parts = item.split()
        if len(parts) == 3 and parts[1].lower() == "as":
            name, alias = parts[0], parts[2]
        elif len(parts) == 1:
            name, alias = parts[0], None
        else:
            raise RmaError(f"Cannot parse the tabular column '{item}': use 'table.attribute' or "
                           "'table.attribute+as+alias'.")
        table, _, attr = name.rpartition(".")
        table = table or "data_sets"
        if table != "data_sets" and table not in TABLES:
            raise RmaError(f"Unknown table '{table}' in tabular column '{item}': use one of "
                           + ", ".join(["data_sets", *TABLES]) + ".")
        known = DATA_SET_ATTRIBUTES if table == "data_sets" else ASSOCIATIONS[TABLES[table]][1]
        if attr not in known:
            raise RmaError(f"Unknown column '{name}' in tabular: '{table}' has {', '.join(known)}.")
        columns.append((table, attr, alias or attr))
    return columns


def _column_value(record: dict, table: str, attr: str):
    if table == "data_sets":
        return record[attr]
    items = _items(record, TABLES[table])
    return items[0].get(attr) if items else None


def _order_key(table: str, attr: str, record: dict) -> tuple[bool, Any]:
    """Sort key of ``order``: the column's value, missing values last."""
    value = _column_value(record, table, attr)
    return value is None, value


def parse_options(tokens: list[str], options: dict[str, str]) -> None:
    """Read ``rma::options[num_rows$eq'all'][start_row$eq0]...`` tokens into *options*."""
    for token in tokens:
        for body in re.findall(r"\[([^\]]*)\]", token.removeprefix("rma::options")):
            m = _FILTER.match(body.strip())
            if not m:
                raise RmaError(f"Cannot parse the option '[{body}]': expected '[option$eq value]'.")
            attr, op, value = m.groups()
            if attr not in ("num_rows", "start_row", "order", "tabular", "count"):
                raise RmaError(f"The option '{attr}' is not supported by the sample API: use "
                               "num_rows, start_row, order, tabular or count.")
            if op != "eq":
                raise RmaError(f"Options take '$eq', not '${op}' ('{attr}').")
            options[attr] = value if attr in ("tabular", "order") else _unquote(value)


def _option_values(text: str) -> list[str]:
    """Split a tabular or order list: ``'a','b+as+c'``, ``'a,b'`` or ``a,b``."""
    return [v.strip() for item in split_top_level(text) for v in _unquote(item).split(",") if v.strip()]


@lru_cache(maxsize=256)
def _parse(criteria_text: str, params_key: tuple) -> tuple:
    """Parse one query into (predicates, includes, options); cached per query text."""
    params = dict(params_key)
    stage = "criteria"
    crit: list[str] = []
    include: list[str] = []
    opts: list[str] = []
    for token in split_top_level(criteria_text):
        low = token.lower()
        if low.startswith("model::"):
            model = token[len("model::"):]
            if model != "SectionDataSet":
                raise RmaError(f"The sample API serves the SectionDataSet model only, not '{model}'.")
            continue
        if low.startswith(("service::", "pipe::")):
            raise RmaError(f"Services and pipes ('{token}') are not part of the sample API.")
        if low == "rma::criteria":
            stage = "criteria"
            continue
        if low == "rma::include":
            stage = "include"
            continue
        if low.startswith("rma::options"):
            stage = "options"
            opts.append(token)
            continue
        if low.startswith("rma::"):
            raise RmaError(f"Unknown RMA stage '{token}': use rma::criteria, rma::include or rma::options.")
        {"criteria": crit, "include": include, "options": opts}[stage].append(token)
    predicates = parse_criteria(crit)
    options: dict[str, str] = {}
    parse_options(opts, options)
    for key in ("num_rows", "start_row", "order", "tabular", "count"):
        if key in params:
            options[key] = params[key]
    includes = include + split_top_level(params.get("include", ""))
    for name in includes:
        if name not in ASSOCIATIONS:
            raise RmaError(f"Cannot include '{name}': the sample API knows "
                           + ", ".join(f"'{k}'" for k in ASSOCIATIONS) + ".")
    return predicates, tuple(includes), options


def run_query(records: list[dict], criteria: str, params: dict[str, str]) -> tuple:
    """Filter, order and page *records*; return (columns, rows as dicts, start, total)."""
    predicates, includes, options = _parse(criteria, tuple(sorted(params.items())))
    hits = [r for r in records if all(p(r) for p in predicates)]
    if "order" in options:
        for key in reversed(_option_values(options["order"])):
            parts = key.replace("+", " ").split()
            desc = len(parts) > 1 and parts[1].lower() == "desc"
            (table, attr, _), = parse_tabular(parts[0])
            hits.sort(key=partial(_order_key, table, attr), reverse=desc)
    total = len(hits)
    try:
        start = int(options.get("start_row", 0))
        num = options.get("num_rows", str(DEFAULT_NUM_ROWS))
        num = total if str(num).lower() == "all" else int(num)
    except ValueError:
        raise RmaError("start_row must be a number and num_rows a number or 'all'.") from None
    if start < 0 or num < 0:
        raise RmaError("start_row and num_rows must not be negative.")
    page = hits[start:start + num]
    if "tabular" in options:
        columns = parse_tabular(options["tabular"])
        names = [alias for _, _, alias in columns]
        rows = [{alias: _column_value(r, t, a) for t, a, alias in columns} for r in page]
    else:
        names = list(DATA_SET_ATTRIBUTES)
        rows = []
        for r in page:
            row = {k: r[k] for k in DATA_SET_ATTRIBUTES}
            for name in includes:
                row[name] = r[name]
            rows.append(row)
    return names, rows, start, total


def query_response(root: Path, fmt: str, query: str, model_scoped: bool) -> Response:
    """Answer an RMA query in CSV or JSON."""
    params = dict(parse_qsl(query, keep_blank_values=True))
    criteria = params.pop("criteria", "")
    if not model_scoped and "model::" not in criteria:
        raise RmaError("The query has no model: start the criteria with 'model::SectionDataSet'.")
    unknown = set(params) - {"include", "tabular", "start_row", "num_rows", "order", "count"}
    if unknown:
        raise RmaError(f"Unknown query parameter(s) {sorted(unknown)}: use criteria, include, "
                       "tabular, start_row, num_rows, order or count.")
    names, rows, start, total = run_query(load_records(root), criteria, params)
    if fmt == "csv":
        body = _csv_bytes(names, [[row[n] for n in names] for row in rows])
        return 200, {"Content-Type": "text/csv; charset=utf-8"}, body
    envelope = {"success": True, "id": 0, "start_row": start, "num_rows": len(rows),
                "total_rows": total, "msg": rows}
    return 200, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(envelope).encode()


# -- grid data ------------------------------------------------------------------------------------
def _derived_volumes(zip_path: Path, include: list[str]) -> bytes:
    """Build a zip holding the requested volumes (density and intensity derived from energy)."""
    from .amba import grid_zip

    with zipfile.ZipFile(zip_path) as zf:
        if "energy.raw" not in zf.namelist():
            return grid_zip(None, {})
        energy = np.frombuffer(zf.read("energy.raw"), "<f4")
    missing = energy < 0
    density = np.where(missing, -1.0, np.clip(energy / 8.0, 0.0, 1.0) ** 0.5).astype("<f4")
    with np.errstate(divide="ignore", invalid="ignore"):
        intensity = np.where(missing, -1.0, np.where(density > 0, energy / density, 0.0)).astype("<f4")
    volumes = {"energy": energy, "density": density, "intensity": intensity}
    return grid_zip(None, {name: volumes[name] for name in include})


def grid_response(root: Path, experiment_id: str, query: str) -> Response:
    """Answer ``/grid_data/download/<id>`` with the zip (a file) or the requested volumes (bytes)."""
    if not experiment_id.isdigit():
        return error_response(f"'{experiment_id}' is not a SectionDataSet id.", status=400)
    path = Path(root) / "allen-api" / "grid_data" / f"{experiment_id}.zip"
    if not path.exists():
        return error_response(f"No 3-D grid data for SectionDataSet id {experiment_id}.", status=404)
    headers = {"Content-Type": "application/zip",
               "Content-Disposition": f'attachment; filename="{experiment_id}.zip"'}
    params = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(params) - {"include"}
    if unknown:
        return error_response(f"Unknown parameter(s) {sorted(unknown)}: grid_data/download takes "
                              "'include' only.", status=400)
    if "include" not in params:
        return 200, headers, path
    include = [v.strip() for v in params["include"].split(",") if v.strip()]
    bad = [v for v in include if v not in GRID_VOLUMES]
    if bad or not include:
        return error_response(f"Unknown volume(s) {bad or include} in include: use "
                              + ", ".join(GRID_VOLUMES) + ".", status=400)
    return 200, headers, _derived_volumes(path, include)


# -- entry point -----------------------------------------------------------------------------------
_QUERY = re.compile(r"^/api/v2/data/(?:(SectionDataSet)/)?query\.(csv|json|xml)$")
_RECORD = re.compile(r"^/api/v2/data/SectionDataSet/(\d+)\.(csv|json|xml)$")
_GRID = re.compile(r"^/grid_data/download/([^/]+)$")


def handle(root: Path, method: str, path: str, query: str) -> Response:
    """Answer one Allen API request against the sample world at *root*.

    Parameters
    ----------
    root : Path
        The world folder.
    method : str
        HTTP method; GET and HEAD are served.
    path : str
        URL path, starting with ``/api/v2/`` or ``/grid_data/``.
    query : str
        The raw (percent-encoded) query string.

    Returns
    -------
    tuple
        ``(status, headers, body)`` where body is bytes or a Path to stream.
    """
    fmt = "csv" if path.endswith(".csv") else "json"
    if method not in ("GET", "HEAD"):
        return error_response(f"Method {method} is not allowed: the Allen API is read-only (GET).",
                              fmt, status=405)
    try:
        if m := _GRID.match(path):
            return grid_response(root, m.group(1), query)
        if m := _QUERY.match(path):
            if m.group(2) == "xml":
                return error_response("The sample API answers .json and .csv, not .xml.", status=400)
            return query_response(root, m.group(2), query, model_scoped=m.group(1) is not None)
        if m := _RECORD.match(path):
            if m.group(2) == "xml":
                return error_response("The sample API answers .json and .csv, not .xml.", status=400)
            q = f"criteria=[id$eq{m.group(1)}]&num_rows=1" + (f"&{query}" if query else "")
            return query_response(root, m.group(2), q, model_scoped=True)
        return error_response(f"No route for '{path}' in the sample Allen API.", fmt, status=404)
    except RmaError as error:
        return error_response(str(error), fmt)
