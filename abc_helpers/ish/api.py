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


def _api_error(response) -> str:
    """Return the ``msg`` of an Allen API error envelope (JSON or CSV), or the start of the body."""
    text = response.text
    try:
        return str(json.loads(text)["msg"])
    except (ValueError, KeyError, TypeError):
        pass
    try:
        frame = pd.read_csv(io.StringIO(text))
        if "msg" in frame.columns and len(frame):
            return str(frame["msg"].iloc[0])
    except (ValueError, UnicodeError):  # not a CSV table (pandas' ParserError is a ValueError)
        pass
    return text[:300]


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
        If the API rejects the query; the message quotes the API's ``msg``.
    DownloadError
        At once if the API's host name cannot be resolved (no network): retrying cannot help.
    """
    import requests

    from ..transfer import DownloadError, get_session, host_not_found, unresolvable_host

    src = get_source(source)
    session = get_session()
    pages, start = [], 0
    while True:
        url = section_datasets_url(plane, genes, src, start_row=start, num_rows=page_size)
        check_url_allowed(url)
        try:
            response = session.get(url, timeout=(10, 120))
        except requests.ConnectionError as error:
            reason = unresolvable_host(error)
            if reason is None:
                raise
            msg = f"Could not query the Allen API for SectionDataSets: {host_not_found(url, reason)}"
            raise DownloadError(msg) from None
        if response.status_code != 200:
            msg = (f"The Allen API rejected the SectionDataSet query (HTTP {response.status_code}): "
                   f"{_api_error(response)} URL: {url}")
            raise ValueError(msg)
        page = pd.read_csv(io.BytesIO(response.content))
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

