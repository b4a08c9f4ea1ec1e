"""Run information for the end of a chapter or a bug report: versions, data source, release, date."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

from .cache import AbcProjectCache
from .neuropixels import VbnProjectCache
from .sources import SOURCE_ENV, Source

#: The libraries whose versions decide what a chapter computes and shows (distribution names).
KEY_LIBRARIES = ("numpy", "pandas", "scipy", "h5py", "anndata", "pyarrow", "SimpleITK", "requests",
                 "tqdm", "matplotlib", "nibabel", "pynwb")

#: The width of the field names, so that every value starts in the same column.
_FIELD = 14


def _library_versions(names: Sequence[str]) -> str:
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def _describe_source(data_source: str | Source | None) -> str:
    if isinstance(data_source, Source):
        if data_source.root is None:
            return "aws (the real buckets and api.brain-map.org, over HTTPS)"
        if data_source.name == "sample":
            return f"sample (the synthetic sample world, served at {data_source.root})"
        return f"mirror {data_source.root}"
    text = str(data_source).strip() if data_source is not None else os.environ.get(SOURCE_ENV) or "aws"
    if text == "aws":
        return "aws (the real buckets and api.brain-map.org, over HTTPS)"
    if text == "sample":
        return "sample (the synthetic sample world, offline)"
    return f"mirror {text}"


def _describe_cache(cache: AbcProjectCache | VbnProjectCache) -> tuple[str, str]:
    if isinstance(cache, AbcProjectCache):
        return "ABC release", cache.current_manifest or "none loaded"
    if isinstance(cache, VbnProjectCache):
        return "VBN manifest", cache.current_manifest() or "none loaded"
    msg = (f"run_information got a cache of type {type(cache).__name__!r}: pass an AbcProjectCache, "
           "a VbnProjectCache, a list of them, or None.")
    raise TypeError(msg)


def run_information(
    data_source: str | Source | None = None,
    cache: AbcProjectCache | VbnProjectCache | Sequence[AbcProjectCache | VbnProjectCache] | None = None,
) -> str:
    """Describe this run: package and library versions, data source, release in use, date.

    Chapters print it as their last cell, so a reader can see what produced a page and paste it into
    a bug report. The lines that differ from one machine or day to the next (date, versions) start
    with fixed field names, which ``book/sanitize.cfg`` masks for nbval.

    Parameters
    ----------
    data_source : str, Source or None
        The chapter's ``data_source``: ``"aws"``, ``"sample"``, a mirror URL, or a
        :class:`~abc_helpers.sources.Source`. None means the default that :func:`get_source` would
        use (``ABC_HELPERS_SOURCE``, else ``"aws"``). Nothing is contacted.
    cache : AbcProjectCache, VbnProjectCache, a sequence of them, or None
        The caches the chapter used; each adds the release (ABC Atlas) or manifest (VBN) it has
        loaded. None: the chapter used no release manifest (e.g. the Allen API).

    Returns
    -------
    str
        Several lines, one ``name  value`` pair per line.

    Raises
    ------
    TypeError
        If *cache* is something else than these caches.

    Examples
    --------
    >>> text = run_information("sample")
    >>> print(text.splitlines()[0])
    Run information (paste it into a bug report)
    >>> "data source   sample (the synthetic sample world, offline)" in text
    True
    """
    from . import __version__

    caches: Sequence[AbcProjectCache | VbnProjectCache]
    if cache is None:
        caches = ()
    elif isinstance(cache, (AbcProjectCache, VbnProjectCache)):
        caches = (cache,)
    else:
        caches = tuple(cache)
    rows = [
        ("date", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("abc_helpers", __version__),
        ("python", (f"{platform.python_version()} ({platform.python_implementation()}, "
                    f"{sys.platform}-{platform.machine()})")),
        ("libraries", _library_versions(KEY_LIBRARIES)),
        ("data source", _describe_source(data_source)),
    ]
    rows += [_describe_cache(c) for c in caches] or [("release", "none (no release manifest used)")]
    lines = ["Run information (paste it into a bug report)"]
    lines += [f"  {name:<{_FIELD}}{value}" for name, value in rows]
    return "\n".join(lines)
