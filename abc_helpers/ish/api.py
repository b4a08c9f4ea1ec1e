"""Allen API queries for the ISH experiments (SectionDataSets) of the Allen Mouse Brain Atlas."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable
from urllib.parse import quote

import pandas as pd

from ..sources import Source, check_url_allowed, get_source

LOGGER = logging.getLogger("abc_helpers")

#: Seconds to wait for the API's bytes (its big queries take a while before the first byte).
API_READ_TIMEOUT = 120.0
#: The columns of the metadata query of the Allen ISH grid download script, in order.
SEED_COLUMNS = (
    "experiment_id", "section_thickness", "specimen_id", "plane", "gene", "gene_name",
    "chromosome_id", "entrez_id", "genomic_reference_update_id", "homologene_id", "organism_id",
)
_TABULAR = (
    "data_sets.id+as+experiment_id,data_sets.section_thickness,data_sets.specimen_id,"
    "plane_of_sections.name+as+plane,genes.acronym+as+gene,genes.name+as+gene_name,"
    "genes.chromosome_id,genes.entrez_id,genes.genomic_reference_update_id,genes.homologene_id,"
    "genes.organism_id"
)


def _q(text: str) -> str:
    return quote(text, safe="[]$',:()=+*")


def section_datasets_url(
    plane: str | None = "coronal",
    genes: Iterable[str] | None = None,
    source: str | Source | None = None,
    start_row: int = 0,
    num_rows: int | str = "all",
) -> str:
    """Return the URL of the SectionDataSet query of the Allen ISH grid download script (one page).

    Parameters
    ----------
    plane : str or None
        ``"coronal"``, ``"sagittal"`` or None for both.
    genes : iterable of str or None
        Gene acronyms to keep (``genes[acronym$in...]``); None for all genes.
    source : str, Source or None
        Where the Allen API is (see :func:`abc_helpers.sources.get_source`).
    start_row, num_rows : int, int or "all"
        The page.

    Returns
    -------
    str

    Examples
    --------
    >>> url = section_datasets_url("coronal", ["Pcp2"], source="aws", num_rows=10)
    >>> url.split("?")[0]
    'https://api.brain-map.org/api/v2/data/SectionDataSet/query.csv'
    >>> "genes[acronym$in'Pcp2']" in url
    True
    """
    criteria = ["[failed$eqfalse]"]
    if plane is not None:
        if plane not in ("coronal", "sagittal"):
            raise ValueError(f"Unknown plane of section '{plane}': use 'coronal', 'sagittal' or None.")
        criteria.append(f"plane_of_section[name$eq{plane}]")
    criteria += ["products[abbreviation$eqMouse]", "treatments[name$eqISH]"]
    if genes is not None:
        names = [str(g) for g in genes]
        if not names:
            raise ValueError("genes is empty: pass None for every gene, or at least one acronym.")
        criteria.append("genes[acronym$in" + ",".join(f"'{g}'" for g in names) + "]")
    else:
        criteria.append("genes")
    path = ("api/v2/data/SectionDataSet/query.csv?criteria=" + _q(",".join(criteria))
            + f"&tabular={_TABULAR}&start_row={int(start_row)}&num_rows={num_rows}")
    return get_source(source).api_url(path)


def api_error_message(body: bytes) -> str | None:
    """The ``msg`` of an Allen API error envelope (JSON, or the one-row CSV of a ``.csv`` query),
    or None if *body* is not one (e.g. a proxy's or S3's error page).

    Examples
    --------
    >>> api_error_message(b'{"success": false, "id": -1, "msg": "Data Access error"}')
    'Data Access error'
    >>> api_error_message(b"success,id,start_row,num_rows,total_rows,msg\nfalse,-1,0,0,0,Bad query\n")
    'Bad query'
    >>> api_error_message(b"<Error><Code>SlowDown</Code></Error>") is None
    True
    """
    text = body.decode("utf-8", "replace")
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict):
        return str(value["msg"]) if value.get("success") is False and "msg" in value else None
    try:
        frame = pd.read_csv(io.StringIO(text))
    except (ValueError, UnicodeError):  # not a CSV table (pandas' ParserError is a ValueError)
        return None
    if {"success", "msg"} <= set(frame.columns) and len(frame):
        return str(frame["msg"].iloc[0])
    return None


def _api_refuses(status: int, body: bytes) -> str | None:
    """An answer of the API that retrying cannot change: its error envelope (which the API sends
    with HTTP 500 for a query it cannot run), or any 4xx."""
    message = api_error_message(body)
    if message is None and 400 <= status < 500 and status not in (408, 429):
        from ..transfer import server_message

        message = server_message(body)
    return message


def query_section_datasets(
    plane: str | None = "coronal",
    genes: Iterable[str] | None = None,
    source: str | Source | None = None,
    page_size: int = 2000,
) -> pd.DataFrame:
    """Query the ISH experiments (SectionDataSets) of the Allen Mouse Brain Atlas.

    The query is the Allen ISH grid download script's: not failed, product ``Mouse``, treatment
    ``ISH``, the plane of section, optionally some genes; the result has that script's columns
    (:data:`SEED_COLUMNS`). Pages of *page_size* rows
    are fetched until a short page arrives (CSV answers carry no row count).

    Parameters
    ----------
    plane : str or None
        ``"coronal"`` (default), ``"sagittal"`` or None for both.
    genes : iterable of str or None
        Gene acronyms (e.g. ``["Pcp2", "Gad1"]``); None for every gene.
    source : str, Source or None
        ``"aws"`` (the real API), ``"sample"`` or a mirror URL.
    page_size : int
        Rows per request.

    Returns
    -------
    pandas.DataFrame
        One row per experiment: ``experiment_id, section_thickness, specimen_id, plane, gene,
        gene_name, chromosome_id, entrez_id, genomic_reference_update_id, homologene_id,
        organism_id``, duplicates dropped, in the API's order.

    Raises
    ------
    ValueError
        At once if the API rejects the query (a 4xx, or its error envelope, which it sends with
        HTTP 500); the message quotes the API's ``msg``.
    DownloadError
        If the API keeps failing (cut answers, stalls, 5xx without its envelope: each retried with
        backoff by :func:`abc_helpers.transfer.get_bytes`), or at once if its host name cannot be
        resolved (no network); the message names the URL and the cause.
    """
    from ..transfer import RequestRefused, get_bytes

    src = get_source(source)
    pages, start = [], 0
    while True:
        url = section_datasets_url(plane, genes, src, start_row=start, num_rows=page_size)
        check_url_allowed(url)
        try:
            body = get_bytes(url, read_timeout=API_READ_TIMEOUT, refuses=_api_refuses,
                             what="Could not query the Allen API for SectionDataSets")
        except RequestRefused as error:
            msg = (f"The Allen API rejected the SectionDataSet query (HTTP {error.status}): "
                   f"{error.server_message} URL: {url}")
            raise ValueError(msg) from None
        page = pd.read_csv(io.BytesIO(body))
        missing = [c for c in SEED_COLUMNS if c not in page.columns]
        if missing:
            raise ValueError(f"The SectionDataSet query answered without the columns {missing} "
                             f"(got {list(page.columns)}). URL: {url}")
        pages.append(page)
        if len(page) < page_size:
            break
        start += page_size
    frame = pd.concat(pages, ignore_index=True) if pages else pd.DataFrame(columns=SEED_COLUMNS)
    frame = frame[list(SEED_COLUMNS)].drop_duplicates().reset_index(drop=True)
    LOGGER.info("%d %s ISH experiments from %s", len(frame), plane or "coronal+sagittal", src)
    return frame

