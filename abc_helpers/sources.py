"""Where the data live: the real services (``"aws"``), the offline sample world, or a mirror."""

from __future__ import annotations

import ipaddress
import os
import threading
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

#: Environment variable that sets the default source.
SOURCE_ENV = "ABC_HELPERS_SOURCE"

#: The Allen Brain Cell Atlas bucket.
ABC_BUCKET = "allen-brain-cell-atlas"
#: The Visual Behavior Neuropixels bucket.
VBN_BUCKET = "visual-behavior-neuropixels-data"
#: The real endpoints, always over HTTPS.
AWS_BUCKET_URLS = {
    ABC_BUCKET: f"https://{ABC_BUCKET}.s3.us-west-2.amazonaws.com/",
    VBN_BUCKET: f"https://{VBN_BUCKET}.s3.us-west-2.amazonaws.com/",
}
AWS_API_URL = "https://api.brain-map.org/"

_sample_lock = threading.Lock()
_sample_server = None
#: Root URLs of mirrors the user named explicitly: the only non-loopback hosts allowed over plain HTTP.
_named_mirrors: set[str] = set()


@dataclass(frozen=True)
class Source:
    """One place to fetch from.

    Parameters
    ----------
    name : str
        ``"aws"``, ``"sample"`` or the root URL of a mirror.
    root : str or None
        The root URL for path-style access (``<root>/<bucket>/<key>``, ``<root>/api/v2/...``);
        None for ``"aws"``, whose buckets have their own hosts.
    """

    name: str
    root: str | None = None

    def bucket_url(self, bucket: str) -> str:
        """Return the URL of *bucket*, ending in ``/`` (objects and listings hang below it)."""
        if self.root is None:
            try:
                return AWS_BUCKET_URLS[bucket]
            except KeyError:
                msg = (f"Unknown bucket '{bucket}': the 'aws' source knows "
                       f"{sorted(AWS_BUCKET_URLS)}. Use a mirror URL for other buckets.")
                raise KeyError(msg) from None
        return f"{self.root}/{bucket}/"

    def object_url(self, bucket: str, key: str, version_id: str | None = None) -> str:
        """Return the URL of *key* in *bucket* (a specific version if *version_id* is given)."""
        url = self.bucket_url(bucket) + quote(key.lstrip("/"), safe="/")
        if version_id:
            url += "?versionId=" + quote(version_id, safe="")
        return url

    def api_url(self, path: str) -> str:
        """Return the URL of an Allen API *path* such as ``'api/v2/data/query.json?...'``."""
        base = AWS_API_URL if self.root is None else self.root + "/"
        return base + path.lstrip("/")

    def __str__(self) -> str:
        return self.name if self.root is None or self.name == "sample" else self.root


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _sample_root() -> str:
    """Start the sample server once per process and return its root URL."""
    global _sample_server
    with _sample_lock:
        if _sample_server is None:
            from .sample import start

            _sample_server = start()
        return _sample_server.url


def get_source(source: str | Source | None = None) -> Source:
    """Resolve *source* to a :class:`Source`.

    Parameters
    ----------
    source : str, Source or None
        ``"aws"`` for the real buckets and API over HTTPS; ``"sample"`` to build (once) and serve
        the synthetic sample world on 127.0.0.1; any ``http(s)://`` URL for a mirror laid out like
        the sample server. None reads ``ABC_HELPERS_SOURCE`` and falls back to ``"aws"``.

    Returns
    -------
    Source

    Raises
    ------
    ValueError
        If *source* is none of these.

    Examples
    --------
    >>> get_source("aws").object_url("allen-brain-cell-atlas", "releases/20231215/manifest.json")
    'https://allen-brain-cell-atlas.s3.us-west-2.amazonaws.com/releases/20231215/manifest.json'
    >>> get_source("http://127.0.0.1:8000").api_url("grid_data/download/69816930")
    'http://127.0.0.1:8000/grid_data/download/69816930'
    """
    if isinstance(source, Source):
        return source
    if source is None:
        source = os.environ.get(SOURCE_ENV) or "aws"
    text = str(source).strip()
    if text == "aws":
        return Source("aws")
    if text == "sample":
        return Source("sample", _sample_root())
    parts = urlsplit(text)
    if parts.scheme in ("http", "https") and parts.netloc:
        root = text.rstrip("/")
        _named_mirrors.add(root)
        return Source(root, root)
    msg = (f"Unknown data source '{text}': use 'aws' (the real buckets), 'sample' (the offline "
           f"sample world) or the root URL of a mirror such as 'http://127.0.0.1:8000'.")
    raise ValueError(msg)


def check_url_allowed(url: str) -> None:
    """Refuse plain HTTP except to loopback or to a mirror the user named as a data source.

    Raises
    ------
    ValueError
        If *url* is ``http://`` and its host is neither loopback nor a named mirror.
    """
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme != "http":
        raise ValueError(f"Refusing URL '{url}': only https:// (or http:// to loopback or a "
                         "mirror you named) is allowed.")
    if _is_loopback(parts.hostname or ""):
        return
    if any(url.startswith(root + "/") for root in _named_mirrors):
        return
    raise ValueError(f"Refusing plain-HTTP URL '{url}': real endpoints are reached over HTTPS "
                     "only. Pass the mirror's root URL as the data source to allow it.")
