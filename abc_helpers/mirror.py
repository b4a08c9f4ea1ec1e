"""Fill a mirror folder once (from the real services, or any source), then serve it to a room.

A mirror is a folder that ``python -m abc_helpers.sample serve --mirror DIR`` serves with the
same protocol as the sample world (S3 REST subset, Allen API routes), so learners pass its URL as
``data_source`` and the book runs on real data without the internet::

    DIR/allen-brain-cell-atlas/                 an AbcProjectCache cache_dir (= the bucket layout)
        releases/<YYYYMMDD>/manifest.json
        metadata/<directory>/<version>/...      expression_matrices/..., image_volumes/...
        expression_matrices/.../<matrix>.gene_index.h5ad, .genes.bin, .labels.txt, .var.tsv
        gene-index/releases/<YYYYMMDD>/catalog.json   with --gene-index (abc_helpers.gene_index.catalog)
        _downloaded_data.json, _manifest_last_used.txt, *.lock, *.part   bookkeeping: never served
                                                (abc_helpers.cachefolder.is_bookkeeping)
    DIR/visual-behavior-neuropixels-data/       laid out like that bucket
        visual-behavior-neuropixels/manifests/<manifest>.json
        visual-behavior-neuropixels/project_metadata/<table>.csv          the newest version
        visual-behavior-neuropixels/behavior_ecephys_sessions/<id>/ecephys_session_<id>.nwb
        _versions/<version_id>/<key>            each version a manifest names (hard links)
    DIR/allen-api/
        section_data_sets.json                  SectionDataSet records with genes, plane, ...
        grid_data/<id>.zip                      3-D expression grids, as the API sends them

Every file goes through :mod:`abc_helpers.transfer` (verified with the manifest's md5 or
blake2b, resumable, atomic), so an interrupted fill is simply run again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from tqdm import tqdm

from .cache import AbcProjectCache, LargeDataSizeWarning
from .cachefolder import OutdatedManifestWarning, atomic_write_text, link_or_copy, temporary_path
from .gene_index import SIDECARS, write_catalog
from .manifest import format_size
from .sources import ABC_BUCKET, VBN_BUCKET, Source, get_source
from .transfer import DownloadError, DownloadJob, download, download_many, file_hash, list_objects

LOGGER = logging.getLogger("abc_helpers")

__all__ = [
    "API_FOLDER",
    "VERSIONS_FOLDER",
    "MirrorReport",
    "fill_abc",
    "fill_allen_api",
    "fill_mirror",
    "fill_vbn",
    "index_abc",
]

VBN_PROJECT = "visual-behavior-neuropixels"
VBN_MANIFESTS = f"{VBN_PROJECT}/manifests/"
#: Folder of the Allen API files in a mirror.
API_FOLDER = "allen-api"
#: Folder (at a bucket's root) of the object versions that manifests name.
VERSIONS_FOLDER = "_versions"
#: Associations kept with each SectionDataSet record (the sample API filters on them).
API_INCLUDE = "genes,plane_of_section,products,treatments"


@dataclass
class MirrorReport:
    """What a fill put in the mirror.

    Attributes
    ----------
    mirror_dir : Path
        The mirror folder.
    files : dict
        Files in the mirror per part (``"abc"``, ``"vbn"``, ``"allen-api"``).
    bytes : dict
        Their total size per part.
    notes : list of str
        Things a reader should know (e.g. grids the source does not have).
    """

    mirror_dir: Path
    files: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, part: str, paths: Iterable[Path]) -> None:
        """Count *paths* under *part*: files once each, hard links to one file once."""
        inodes = {}
        for p in {Path(p) for p in paths}:
            st = p.stat()
            inodes[(st.st_dev, st.st_ino)] = st.st_size
        self.files[part] = self.files.get(part, 0) + len(inodes)
        self.bytes[part] = self.bytes.get(part, 0) + sum(inodes.values())

    def __str__(self) -> str:
        lines = [f"Mirror {self.mirror_dir}:"]
        for part in self.files:
            lines.append(f"  {part:10s} {self.files[part]:6d} files  {format_size(self.bytes[part])}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _names(values: str | Sequence[str | int] | None) -> list[str] | None:
    """Normalise a CLI/user list: None or ``"all"`` -> None (everything); else a list of str."""
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    names = [str(v) for v in values]
    return None if names == ["all"] else names


# -- the Allen Brain Cell Atlas ------------------------------------------------------------------
def fill_abc(
    mirror_dir: str | os.PathLike,
    source: str | Source | None = "aws",
    releases: str | Sequence[str] = "latest",
    metadata: str | Sequence[str] | None = "all",
    data: str | Sequence[str] | None = (),
    data_types: Sequence[str] | None = None,
    progressbar: bool = True,
) -> list[Path]:
    """Download ABC Atlas releases and files into ``<mirror_dir>/allen-brain-cell-atlas``.

    That folder is an :class:`~abc_helpers.cache.AbcProjectCache` cache folder, filled with the
    cache itself, so it can also be opened directly with ``AbcProjectCache.from_local_cache``.

    Parameters
    ----------
    mirror_dir : str or PathLike
        The mirror folder.
    source : str, Source or None
        Where to download from: ``"aws"`` (default), ``"sample"`` or another mirror's URL.
    releases : str or sequence of str
        ``"all"`` or release names such as ``["20230630", "20231215"]``; ``"latest"`` names the
        newest (e.g. ``["20230630", "latest"]``).
    metadata : str, sequence of str or None
        Directories whose metadata (CSV) files to mirror, for every release listed, or ``"all"``.
    data : str, sequence of str or None
        Directories whose data files (h5ad, nii.gz) to mirror, or ``"all"`` (on the real bucket,
        several TB: name the directories you teach with).
    data_types : sequence of str or None
        Expression matrices to keep, e.g. ``["log2"]`` (half the bytes of log2 and raw); None keeps
        both. Image volumes are always kept.

    Returns
    -------
    list of Path
        Every manifest and file of the selection, in the mirror.

    Raises
    ------
    ValueError
        If a release or directory is not offered by the source (the message lists the valid ones).
    """
    if data_types is not None and set(data_types) - {"log2", "raw"}:
        raise ValueError(f"Unknown expression matrix types {sorted(set(data_types) - {'log2', 'raw'})}: "
                         "use 'log2' and/or 'raw'.")
    cache = AbcProjectCache(Path(mirror_dir) / ABC_BUCKET, source=source, progressbar=progressbar)
    asked = _names(releases)
    if asked is None:
        names = cache.list_manifest_file_names
    else:
        names = sorted({cache.latest_manifest_file if r == "latest" else cache.check_manifest_name(r)
                        for r in asked})
    wanted = {"metadata": _names(metadata) if metadata else [], "data": _names(data) if data else []}
    seen = {d for name in names for d in cache.get_manifest(name).list_directories}
    for kind, dirs in wanted.items():  # check the names before downloading anything
        unknown = sorted(set(dirs or ()) - seen)
        if unknown:
            raise ValueError(f"ABC {kind} directories {unknown} are in none of the releases {names}: "
                             f"use names from {sorted(seen)}.")
    paths: list[Path] = []
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OutdatedManifestWarning)
            cache.load_manifest(name)
        paths.append(cache.cache_dir / name)
        directories = cache.list_directories
        for kind, has in (("metadata", cache.list_metadata_files), ("data", cache.list_data_files)):
            wanted_here = wanted[kind]
            chosen = directories if wanted_here is None else [d for d in wanted_here if d in directories]
            for directory in chosen:
                try:
                    files = has(directory)
                except KeyError:  # this directory has no files of this kind
                    continue
                LOGGER.info("Mirroring %s %s of %s", directory, kind, name)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", LargeDataSizeWarning)
                    if kind == "metadata":
                        paths += cache.get_directory_metadata(directory)
                    elif data_types is None:
                        paths += cache.get_directory_data(directory)
                    else:
                        paths += [cache.get_data_path(directory, f) for f in files
                                  if "/" not in f or f.rsplit("/", 1)[1] in data_types]
    # Leave the newest release as "last used", so a local cache over the mirror opens it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutdatedManifestWarning)
        cache.load_manifest(max(names))
    return paths


def index_abc(
    mirror_dir: str | os.PathLike,
    source: str | Source | None = "aws",
    data_types: Sequence[str] | None = None,
    progressbar: bool = True,
) -> list[Path]:
    """Build the gene indexes of a mirror's expression matrices, and a catalog per release.

    Every release already in ``<mirror_dir>/allen-brain-cell-atlas`` gets its catalog
    (:func:`abc_helpers.gene_index.write_catalog`); the indexes of matrices shared by several
    releases are built once.

    Parameters
    ----------
    mirror_dir : str or PathLike
        The mirror folder, filled by :func:`fill_abc`.
    source : str, Source or None
        The source the mirror was filled from (to list its releases).
    data_types : sequence of str or None
        ``["log2"]``, ``["raw"]`` or None for both (only matrices in the mirror are indexed).
    progressbar : bool
        Show progress bars.

    Returns
    -------
    list of Path
        The indexes, their sidecar files and the catalogs.
    """
    cache = AbcProjectCache(Path(mirror_dir) / ABC_BUCKET, source=source)
    last = cache.current_manifest
    paths: list[Path] = []
    for name in cache.list_all_downloaded_manifests:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OutdatedManifestWarning)
            cache.load_manifest(name)
        catalog = write_catalog(cache, data_types=tuple(data_types or ("log2", "raw")),
                                progressbar=progressbar)
        paths.append(catalog)
        for entry in json.loads(catalog.read_text())["indexes"]:
            paths += [cache.cache_folder.path(entry[k]["relative_path"]) for k in ("index", *SIDECARS)]
    if last is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OutdatedManifestWarning)
            cache.load_manifest(last)
    return paths


# -- Visual Behavior Neuropixels -----------------------------------------------------------------
def _manifest_version(name: str) -> tuple[int, ...]:
    stem = name.rsplit("_v", 1)[-1].removesuffix(".json")
    try:
        return tuple(int(p) for p in stem.split("."))
    except ValueError:
        return (-1,)


#: The ``sessions`` value of :func:`fill_vbn` that names the chapters' default session;
#: ``"first:N"`` names the first N (chapter 4 maps a function over its first four).
FIRST_SESSION = "first"


def first_count(token: int | str) -> int | None:
    """How many first sessions a ``sessions`` token of :func:`fill_vbn` names.

    Examples
    --------
    >>> first_count("first"), first_count("first:4"), first_count("1052533639")
    (1, 4, None)
    """
    name, _, count = str(token).partition(":")
    if name != FIRST_SESSION:
        return None
    if not count:
        return 1
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"VBN sessions token {token!r}: use 'first' or 'first:N' with N a positive "
                         "whole number (e.g. 'first:4').")
    return int(count)


def first_sessions_with_file(source: Source, bucket_dir: Path, manifest_name: str, n: int = 1) -> list[str]:
    """The first *n* ecephys sessions of a VBN manifest's session table that have an NWB file.

    These are the sessions the chapters open by default: chapter 4's ``session_id=None`` is the
    first, and it maps a function over the first ``n_sessions``: the rows of
    ``get_ecephys_session_table()`` (abnormal sessions dropped, as there) whose ``file_id`` is among
    the manifest's ``data_files``.

    Parameters
    ----------
    source : Source
        Where to read the manifest and the table from.
    bucket_dir : Path
        The mirror's VBN bucket folder: the manifest and the table are stored there as
        :func:`fill_vbn` stores them (at their versions), so nothing is fetched twice.
    manifest_name : str
        E.g. ``"visual-behavior-neuropixels_project_manifest_v0.3.0.json"``.
    n : int
        How many.

    Returns
    -------
    list of str
        The ecephys session ids, in the table's order (fewer if the table has fewer).

    Raises
    ------
    ValueError
        If no session of the table has an NWB file in the manifest.
    """
    import pandas as pd

    key = VBN_MANIFESTS + manifest_name
    manifest = json.loads(download(source.object_url(VBN_BUCKET, key), bucket_dir / key, progressbar=False).read_text())
    entry = manifest["metadata_files"]["ecephys_sessions"]
    rel = urlsplit(entry["url"]).path.lstrip("/")
    path = download(source.object_url(VBN_BUCKET, rel, version_id=entry["version_id"]),
                    bucket_dir / VERSIONS_FOLDER / entry["version_id"] / rel,
                    known_hash=f"blake2b:{entry['file_hash'].lower()}", progressbar=False)
    table = pd.read_csv(path, usecols=["ecephys_session_id", "file_id", "abnormal_histology",
                                       "abnormal_activity"])
    table = table[table["abnormal_histology"].isna() & table["abnormal_activity"].isna()]
    with_file = [str(sid) for sid, fid in zip(table["ecephys_session_id"], table["file_id"], strict=True)
                 if str(fid) in manifest["data_files"]]
    if not with_file:
        msg = (f"No session of the ecephys_sessions table of {manifest_name} has an NWB file in its "
               "data_files: name the sessions to mirror by id.")
        raise ValueError(msg)
    return with_file[:n]


def fill_vbn(
    mirror_dir: str | os.PathLike,
    source: str | Source | None = "aws",
    manifests: str | Sequence[str] = "all",
    sessions: str | Sequence[int | str] | None = (),
    progressbar: bool = True,
) -> list[Path]:
    """Download VBN manifests, metadata tables and session NWB files, laid out like the bucket.

    Each file is fetched at the version its manifest names (``?versionId=``, verified with the
    manifest's blake2b) into ``_versions/<version_id>/<key>``; the plain ``<key>`` is a hard link
    to the version named by the newest manifest mirrored. The mirror server answers versioned
    requests from ``_versions/``, so ``VbnProjectCache`` works against it unchanged.

    Parameters
    ----------
    mirror_dir : str or PathLike
        The mirror folder.
    source : str, Source or None
        Where to download from (``"aws"`` by default).
    manifests : str or sequence of str
        ``"all"``, ``"latest"`` or versions such as ``["0.3.0"]``.
    sessions : str, sequence or None
        Ecephys session ids whose NWB files to mirror (each about 2-3 GB on the real bucket), or
        ``"all"``; none by default. ``"first"`` (alone or among ids) names the first session of
        the newest mirrored manifest's ``ecephys_sessions`` table that has an NWB file: the one
        the chapters open when their ``session_id`` is None; ``"first:N"`` the first N (chapter
        4 maps a function over the first four).

    Returns
    -------
    list of Path
        The manifests and files mirrored.
    """
    src = get_source(source)
    bucket_dir = Path(mirror_dir) / VBN_BUCKET
    keys = [o["key"] for o in list_objects(src.bucket_url(VBN_BUCKET), VBN_MANIFESTS)]
    available = sorted((k.rsplit("/", 1)[-1] for k in keys if k.endswith(".json")), key=_manifest_version)
    if not available:
        raise FileNotFoundError(f"No VBN manifests under {src.bucket_url(VBN_BUCKET)}{VBN_MANIFESTS}: "
                                "is the data source right?")
    if manifests in ("latest", ["latest"]):
        chosen = available[-1:]
    elif (asked := _names(manifests)) is None:
        chosen = available
    else:
        by_version = {n.rsplit("_v", 1)[-1].removesuffix(".json"): n for n in available}
        unknown = [m for m in asked if m not in by_version and m not in available]
        if unknown:
            raise ValueError(f"VBN manifest versions {unknown} are not offered by {src}: use some of "
                             f"{sorted(by_version, key=lambda v: _manifest_version('_v' + v))}.")
        chosen = sorted({by_version.get(m, m) for m in asked}, key=_manifest_version)
    wanted_sessions = _names(sessions) if sessions else []
    counts = [c for c in map(first_count, wanted_sessions or []) if c is not None]
    if wanted_sessions and counts:
        first = first_sessions_with_file(src, bucket_dir, chosen[-1], max(counts))
        expanded: list[str] = []
        for token in wanted_sessions:
            count = first_count(token)
            expanded += first[:count] if count else [str(token)]
        wanted_sessions = list(dict.fromkeys(expanded))
    paths: list[Path] = []
    jobs: dict[Path, DownloadJob] = {}
    current: dict[str, Path] = {}  # key -> the version file named by the newest manifest
    for name in chosen:  # oldest first, so the newest manifest wins `current`
        key = VBN_MANIFESTS + name
        path = download(src.object_url(VBN_BUCKET, key), bucket_dir / key, progressbar=False)
        paths.append(path)
        manifest = json.loads(path.read_text())
        entries = list(manifest["metadata_files"].values())
        for entry in manifest["data_files"].values():
            sid = entry["url"].rstrip("/").rsplit("/", 2)[-2]
            if wanted_sessions is None or sid in wanted_sessions:
                entries.append(entry)
        for entry in entries:
            rel = urlsplit(entry["url"]).path.lstrip("/")  # the key, whatever host the url names
            version_path = bucket_dir / VERSIONS_FOLDER / entry["version_id"] / rel
            jobs[version_path] = DownloadJob(
                src.object_url(VBN_BUCKET, rel, version_id=entry["version_id"]), version_path,
                known_hash=f"blake2b:{entry['file_hash'].lower()}")
            current[rel] = version_path
    missing = sorted(set(wanted_sessions or ()) - {p.parts[-2] for p in jobs if p.suffix == ".nwb"})
    if missing:
        raise ValueError(f"VBN sessions {missing} have no NWB file in the manifests {chosen}: use ids "
                         "from the data_files of a manifest (ecephys_session_id).")
    # Files already in the mirror are kept if they match their manifest's hash, fetched again if not.
    todo = [DownloadJob(j.url, j.path, j.known_hash, force=j.path.exists()) for j in jobs.values()
            if not (j.path.is_file() and file_hash(j.path, "blake2b") == j.known_hash)]
    download_many(todo, progressbar=progressbar, desc=f"VBN ({len(todo)} files)")
    for rel, version_path in current.items():
        link_or_copy(version_path, bucket_dir / rel)
    return paths + list(jobs) + [bucket_dir / rel for rel in current]


# -- the Allen API (ISH grids) ---------------------------------------------------------------------
def fill_allen_api(
    mirror_dir: str | os.PathLike,
    source: str | Source | None = "aws",
    genes: Sequence[str] = (),
    max_workers: int = 8,
    progressbar: bool = True,
) -> tuple[list[Path], list[int]]:
    """Mirror the SectionDataSet records (both planes) and 3-D grids of some genes.

    Records already in the mirror are kept (fills with other genes add to them).

    Parameters
    ----------
    mirror_dir : str or PathLike
        The mirror folder.
    source : str, Source or None
        Where the Allen API is (``"aws"``: api.brain-map.org).
    genes : sequence of str
        Gene acronyms, e.g. ``["Pcp2", "Calb1"]``.

    Returns
    -------
    (list of Path, list of int)
        The files written, and the experiments whose grid the source does not have (the mirror
        answers 404 for those, as the source does).
    """
    genes = [str(g) for g in genes]
    if not genes:
        return [], []
    src = get_source(source)
    api_dir = Path(mirror_dir) / API_FOLDER
    criteria = "products[abbreviation$eqMouse],genes[acronym$in" + ",".join(f"'{g}'" for g in genes) + "]"
    url = src.api_url("api/v2/data/SectionDataSet/query.json?criteria="
                      + quote(criteria, safe="[]$',") + f"&include={API_INCLUDE}&num_rows=all")
    tmp_query = temporary_path(api_dir / "query.json")
    download(url, tmp_query, progressbar=False, force=True)
    try:
        answer = json.loads(tmp_query.read_text())
    finally:
        tmp_query.unlink(missing_ok=True)
    if not answer.get("success") or not isinstance(answer.get("msg"), list):
        raise ValueError(f"The Allen API at {src} refused the SectionDataSet query: {answer.get('msg')}")
    records = {r["id"]: r for r in answer["msg"]}
    found = {g["acronym"] for r in records.values() for g in r.get("genes", [])}
    if set(genes) - found:
        LOGGER.warning("No SectionDataSet at %s for the genes %s.", src, sorted(set(genes) - found))
    index = api_dir / "section_data_sets.json"
    old = json.loads(index.read_text())["section_data_sets"] if index.exists() else []
    merged = {r["id"]: r for r in old} | records
    atomic_write_text(index, json.dumps({"filled_from": str(src),
                                         "section_data_sets": list(merged.values())}, indent=1))

    grid_dir = api_dir / "grid_data"
    unavailable: list[int] = []

    def fetch(exp_id: int) -> Path | None:
        path = grid_dir / f"{exp_id}.zip"
        if path.is_file():
            return path
        try:
            return download(src.api_url(f"grid_data/download/{exp_id}"), path, progressbar=False, retries=1)
        except DownloadError as error:
            LOGGER.info("No grid for experiment %s at %s: %s", exp_id, src, error)
            unavailable.append(exp_id)
            return None

    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        done = list(tqdm(pool.map(fetch, sorted(records)), total=len(records), desc="grids",
                         disable=not progressbar))
    return [index] + [p for p in done if p is not None], sorted(unavailable)


# -- everything ------------------------------------------------------------------------------------
def fill_mirror(
    mirror_dir: str | os.PathLike,
    source: str | Source | None = "aws",
    abc_releases: str | Sequence[str] | None = "latest",
    abc_metadata: str | Sequence[str] | None = "all",
    abc_data: str | Sequence[str] | None = (),
    abc_data_types: Sequence[str] | None = None,
    abc_gene_index: bool = False,
    vbn_manifests: str | Sequence[str] | None = "all",
    vbn_sessions: str | Sequence[int | str] | None = (),
    ish_genes: Sequence[str] = (),
    progressbar: bool = True,
) -> MirrorReport:
    """Fill (or top up) a mirror folder for ``serve --mirror``; see the module docstring for the layout.

    Parameters
    ----------
    mirror_dir : str or PathLike
        The mirror folder (created if needed).
    source : str, Source or None
        Where to download from: ``"aws"`` (the real buckets and API), ``"sample"``, a mirror URL.
    abc_releases, abc_metadata, abc_data, abc_data_types
        See :func:`fill_abc` (``releases``, ``metadata``, ``data``, ``data_types``);
        ``abc_releases=None`` skips the ABC Atlas.
    abc_gene_index : bool
        Then build the gene index of every mirrored matrix and the catalogs (:func:`index_abc`);
        the report says how long it took and how much disk the indexes take.
    vbn_manifests, vbn_sessions
        See :func:`fill_vbn`. ``vbn_manifests=None`` skips VBN.
    ish_genes : sequence of str
        Genes whose ISH records and grids to mirror (see :func:`fill_allen_api`).

    Returns
    -------
    MirrorReport
        Files and bytes per part; prints as a short summary.

    Examples
    --------
    >>> report = fill_mirror("/data/mirror", source="aws", abc_data=["Allen-CCF-2020"],
    ...                      vbn_sessions=[1052533639], ish_genes=["Pcp2"])  # doctest: +SKIP
    """
    mirror_dir = Path(mirror_dir).expanduser().resolve()
    mirror_dir.mkdir(parents=True, exist_ok=True)
    report = MirrorReport(mirror_dir)
    if abc_releases is not None:
        report.add("abc", fill_abc(mirror_dir, source, abc_releases, abc_metadata, abc_data,
                                      abc_data_types, progressbar))
        if abc_gene_index:
            started = time.perf_counter()
            indexed = index_abc(mirror_dir, source, abc_data_types, progressbar)
            report.add("gene-index", indexed)
            report.notes.append(
                f"gene indexes: {sum(p.name.endswith('.gene_index.h5ad') for p in indexed)} built or "
                f"checked in {time.perf_counter() - started:.1f} s, "
                f"{format_size(report.bytes['gene-index'])} on disk")
    if vbn_manifests is not None:
        report.add("vbn", fill_vbn(mirror_dir, source, vbn_manifests, vbn_sessions, progressbar))
    if ish_genes:
        paths, unavailable = fill_allen_api(mirror_dir, source, ish_genes, progressbar=progressbar)
        report.add("allen-api", paths)
        if unavailable:
            report.notes.append(f"{len(unavailable)} experiment(s) have no 3-D grid at the source "
                                f"(the mirror answers 404 for them too): {unavailable}")
    return report


# -- command line (``python -m abc_helpers.sample fill-mirror``) -------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``fill-mirror`` options to *parser*."""
    parser.add_argument("mirror_dir", help="the mirror folder (created if needed)")
    parser.add_argument("--source", default="aws", help="'aws' (default), 'sample' or a mirror URL")
    parser.add_argument("--abc-releases", nargs="+", default=["latest"], metavar="RELEASE",
                        help="'latest' (default), 'all' or names such as 20231215")
    parser.add_argument("--abc-metadata", nargs="*", default=["all"], metavar="DIR",
                        help="directories whose metadata to mirror ('all', the default; none if empty)")
    parser.add_argument("--abc-data", nargs="*", default=[], metavar="DIR",
                        help="directories whose data files to mirror, e.g. Allen-CCF-2020 WMB-10XMulti")
    parser.add_argument("--abc-data-types", nargs="+", default=None, metavar="TYPE",
                        help="expression matrices to keep: log2 and/or raw (default: both)")
    parser.add_argument("--gene-index", action="store_true",
                        help="build the gene index of every mirrored matrix and a catalog per release, "
                             "so learners query genes over the network (abc_helpers.gene_index.catalog)")
    parser.add_argument("--no-abc", action="store_true", help="skip the ABC Atlas")
    parser.add_argument("--vbn-manifests", nargs="+", default=["all"], metavar="VERSION",
                        help="'all' (default), 'latest' or versions such as 0.3.0")
    parser.add_argument("--vbn-sessions", nargs="*", default=[], metavar="ID",
                        help="ecephys session ids whose NWB files to mirror (about 2-3 GB each); 'first': "
                             "the chapters' default session (the first of the table with an NWB file); "
                             "'first:N': the first N (chapter 4 streams the first four)")
    parser.add_argument("--no-vbn", action="store_true", help="skip Visual Behavior Neuropixels")
    parser.add_argument("--ish-genes", nargs="*", default=[], metavar="GENE",
                        help="genes whose ISH experiments and 3-D grids to mirror")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> MirrorReport:
    """Run ``fill-mirror`` with parsed *args*."""
    return fill_mirror(
        args.mirror_dir, source=args.source,
        abc_releases=None if args.no_abc else args.abc_releases,
        abc_metadata=args.abc_metadata, abc_data=args.abc_data, abc_data_types=args.abc_data_types,
        abc_gene_index=args.gene_index,
        vbn_manifests=None if args.no_vbn else args.vbn_manifests,
        vbn_sessions=args.vbn_sessions, ish_genes=args.ish_genes, progressbar=not args.quiet)
