"""The S3 REST subset of the sample server: objects, ranges, conditions, listings and XML errors."""

from __future__ import annotations

import base64
import itertools
import mimetypes
import os
import re
from collections.abc import Callable, Iterator
from email.message import Message
from typing import BinaryIO, Protocol
from urllib.parse import parse_qs, quote_plus
from xml.sax.saxutils import escape

from .catalog import Bucket, Catalog, ServedVersion, walk_listing

__all__ = ["MAX_KEYS", "REGION", "S3_NS", "XML_HEAD", "Exchange", "S3Error", "parse_range",
           "send_error", "serve_file", "serve_s3"]

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'
REGION = "us-west-2"
#: The most keys one listing page holds, as on S3.
MAX_KEYS = 1000
_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")
_QUOTE_ATTR = {'"': "&quot;"}

Query = dict[str, list[str]]
Encoder = Callable[[str], str]


class Exchange(Protocol):
    """One request being answered: what the protocols read, and how they reply.

    The sample server's request handler (:mod:`.transport`) is one; it counts the body bytes,
    applies injected faults and adds the headers every S3 response carries.
    """

    #: ``'GET'``, ``'HEAD'``, ...
    method: str
    #: The decoded URL path, e.g. ``'/my-bucket/a b.txt'``.
    url_path: str
    #: The URL path without its leading slash: ``'<bucket>/<key>'``.
    name: str
    #: The raw (percent-encoded) query string, without ``?``.
    query: str
    #: The request headers.
    headers: Message
    #: The ``x-amz-request-id`` of the response.
    request_id: str

    def send_bytes(self, status: int, headers: dict[str, str], body: bytes,
                   faulty: bool = False) -> None:
        """Send a response with *body* (headers only for HEAD); *faulty* applies body faults."""

    def send_file(self, status: int, headers: dict[str, str], fh: BinaryIO, offset: int,
                  length: int) -> None:
        """Send *length* bytes of the open file *fh* from *offset* (headers only for HEAD)."""


class S3Error(Exception):
    """An S3 error response: status, code, message and extra XML fields.

    Parameters
    ----------
    status : int
        HTTP status.
    code : str
        S3 error code, e.g. ``'NoSuchKey'``.
    message : str
        The ``<Message>`` text.
    **fields : str
        More elements of the ``<Error>`` document, e.g. ``Key='a/b.txt'``.
    """

    def __init__(self, status: int, code: str, message: str, **fields: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields
        #: Extra response headers, e.g. ``{'Retry-After': '1'}``.
        self.headers: dict[str, str] = {}


# -- sending -------------------------------------------------------------------------------------
def send_error(exchange: Exchange, err: S3Error) -> None:
    """Answer with the XML error document S3 sends for *err* (no body for HEAD).

    Parameters
    ----------
    exchange : Exchange
        The request to answer.
    err : S3Error
        The error.
    """
    headers = {"Content-Type": "application/xml"}
    headers.update(err.headers)
    if err.status == 416 and "ActualObjectSize" in err.fields:
        headers["Content-Range"] = f"bytes */{err.fields['ActualObjectSize']}"
    if err.status == 405:
        headers["Allow"] = "GET, HEAD"
    extra = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in err.fields.items())
    body = (f"{XML_HEAD}<Error><Code>{err.code}</Code><Message>{escape(err.message)}</Message>"
            f"{extra}<RequestId>{exchange.request_id}</RequestId>"
            f"<HostId>{exchange.request_id.lower()}</HostId></Error>").encode()
    exchange.send_bytes(err.status, headers, body)


def _send_xml(exchange: Exchange, xml: str) -> None:
    exchange.send_bytes(200, {"Content-Type": "application/xml"}, (XML_HEAD + xml).encode(),
                        faulty=True)


def _etags(header: str) -> set[str]:
    """The entity tags listed in an If-Match / If-None-Match header."""
    return {t.strip().removeprefix("W/") for t in header.split(",") if t.strip()}


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """Parse a single-range ``Range`` header the way S3 does.

    Parameters
    ----------
    header : str
        The header value, e.g. ``'bytes=0-99'``, ``'bytes=100-'`` or ``'bytes=-10'``.
    size : int
        Size of the object in bytes.

    Returns
    -------
    tuple of (int, int), str or None
        ``(start, end)`` (inclusive), ``'unsatisfiable'`` (answer 416), or None: ignore the
        header and send everything (bad syntax or several ranges, as S3 does).

    Examples
    --------
    >>> parse_range("bytes=0-99", 50), parse_range("bytes=-10", 50), parse_range("bytes=60-", 50)
    ((0, 49), (40, 49), 'unsatisfiable')
    """
    m = _RANGE_RE.match(header)
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    if m.group(1):
        start = int(m.group(1))
        if m.group(2) and int(m.group(2)) < start:
            return None  # 'bytes=5-3' is invalid: ignored, as S3 does
        if start >= size:
            return "unsatisfiable"
        end = int(m.group(2)) if m.group(2) else size - 1
        return start, min(end, size - 1)
    suffix = int(m.group(2))
    if suffix == 0 or size == 0:
        return "unsatisfiable"
    return max(0, size - suffix), size - 1


def serve_file(exchange: Exchange, fh: BinaryIO, headers: dict[str, str], etag: str | None) -> None:
    """Answer GET/HEAD with a file as S3 does: conditional headers, ``Range``, then the bytes.

    Parameters
    ----------
    exchange : Exchange
        The request to answer.
    fh : BinaryIO
        The open file (the caller closes it).
    headers : dict
        Response headers (``ETag``, ``Last-Modified``, ``Content-Type``, ...);
        ``Content-Range`` is added for a range.
    etag : str or None
        The quoted entity tag for ``If-Match``/``If-None-Match``/``If-Range``; None skips them.

    Raises
    ------
    S3Error
        412 PreconditionFailed or 416 InvalidRange.
    """
    size = os.fstat(fh.fileno()).st_size
    h = exchange.headers
    if etag is not None:
        if_match = h.get("If-Match")
        if if_match and if_match.strip() != "*" and etag not in _etags(if_match):
            raise S3Error(412, "PreconditionFailed", "At least one of the pre-conditions "
                          "you specified did not hold", Condition="If-Match")
        if_none = h.get("If-None-Match")
        if if_none and (if_none.strip() == "*" or etag in _etags(if_none)):
            return exchange.send_bytes(
                304, {"ETag": etag, "Last-Modified": headers.get("Last-Modified", "")}, b"")
    range_header = h.get("Range")
    if range_header and h.get("If-Range"):
        if_range = h["If-Range"].strip()
        if if_range != etag and if_range != headers.get("Last-Modified"):
            range_header = None  # the object changed: send all of it
    if range_header:
        span = parse_range(range_header, size)
        if isinstance(span, str):  # 'unsatisfiable'
            raise S3Error(416, "InvalidRange", "The requested range is not satisfiable",
                          RangeRequested=range_header, ActualObjectSize=str(size))
        if span is not None:
            start, end = span
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            return exchange.send_file(206, headers, fh, start, end - start + 1)
    return exchange.send_file(200, headers, fh, 0, size)


# -- requests ------------------------------------------------------------------------------------
def serve_s3(exchange: Exchange, catalog: Catalog) -> None:
    """Answer one S3 request (path-style ``/<bucket>/<key>``) from *catalog*.

    GetObject, HeadObject, HeadBucket, GetBucketLocation, ListBuckets, ListObjectsV2,
    ListObjects (v1) and ListObjectVersions; other methods get ``405 MethodNotAllowed``.

    Parameters
    ----------
    exchange : Exchange
        The request to answer.
    catalog : Catalog
        The objects served.

    Raises
    ------
    S3Error
        For every error S3 would answer (404 NoSuchKey, 400 InvalidArgument, ...).
    """
    method = exchange.method
    if not exchange.name:
        if method not in ("GET", "HEAD"):
            raise S3Error(405, "MethodNotAllowed",
                          "The specified method is not allowed against this resource.",
                          Method=method, ResourceType="SERVICE")
        return _list_buckets(exchange, catalog)
    bucket_name, _, key = exchange.name.partition("/")
    bucket = catalog.buckets.get(bucket_name)
    if bucket is None:
        raise S3Error(404, "NoSuchBucket", "The specified bucket does not exist.",
                      BucketName=bucket_name)
    if method not in ("GET", "HEAD"):
        raise S3Error(405, "MethodNotAllowed",
                      "The specified method is not allowed against this resource: the "
                      "sample world is read-only.",
                      Method=method, ResourceType="OBJECT" if key else "BUCKET")
    query = parse_qs(exchange.query, keep_blank_values=True)
    if key:
        return _get_object(exchange, catalog, bucket, key, query)
    if method == "HEAD":
        return exchange.send_bytes(200, {"x-amz-bucket-region": REGION}, b"")
    if "versions" in query:
        return _list_versions(exchange, catalog, bucket, query)
    if "location" in query:
        return _send_xml(exchange, f'<LocationConstraint xmlns="{S3_NS}">{REGION}</LocationConstraint>')
    if query.get("list-type", [""])[0] == "2":
        return _list_v2(exchange, catalog, bucket, query)
    return _list_v1(exchange, catalog, bucket, query)


def _get_object(exchange: Exchange, catalog: Catalog, bucket: Bucket, key: str,
                query: Query) -> None:
    version_id = query.get("versionId", [""])[0]
    stored = None
    if catalog.mirror is not None and version_id and version_id != "null":
        stored = catalog.mirror_version(bucket, key, version_id)
    versions = [stored] if stored else catalog.lookup(bucket, key)
    if not versions:
        raise S3Error(404, "NoSuchKey", "The specified key does not exist.", Key=key)
    if stored is False:  # a plain mirror keeps one version per key: serve it
        version_id = ""
    if version_id:
        match = [v for v in versions if v.version_id == version_id]
        if not match:
            raise S3Error(404, "NoSuchVersion", "The specified version does not exist.",
                          Key=key, VersionId=version_id)
        version = match[0]
    else:
        version = versions[-1]
    try:
        fh = open(version.path, "rb")  # noqa: SIM115 (closed by the with block below)
    except FileNotFoundError:
        raise S3Error(404, "NoSuchKey", "The specified key does not exist.", Key=key) from None
    with fh:
        etag = catalog.etag(version)
        headers = {
            "Accept-Ranges": "bytes",
            "Content-Type": mimetypes.guess_type(key)[0] or "application/octet-stream",
            "ETag": etag,
            "Last-Modified": version.http_date,
            "x-amz-version-id": version.version_id,
        }
        serve_file(exchange, fh, headers, etag)


# -- listings ------------------------------------------------------------------------------------
def _encode_token(marker: str) -> str:
    return base64.urlsafe_b64encode(marker.encode()).decode()


def _decode_token(token: str) -> str:
    return base64.urlsafe_b64decode(token.encode()).decode()


def _max_keys(query: Query) -> int:
    raw = query.get("max-keys", [str(MAX_KEYS)])[0]
    try:
        value = int(raw)
    except ValueError:
        raise S3Error(400, "InvalidArgument", "Provided max-keys not an integer or within "
                      "integer range", ArgumentName="max-keys", ArgumentValue=raw) from None
    if value < 0:
        raise S3Error(400, "InvalidArgument", "Argument maxKeys must be an integer between 0 "
                      "and 2147483647", ArgumentName="maxKeys", ArgumentValue=raw)
    return min(value, MAX_KEYS)


def _encoder(query: Query) -> Encoder:
    if query.get("encoding-type", [""])[0].lower() == "url":
        return lambda s: escape(quote_plus(s, safe="/"))
    return escape


def _list_buckets(exchange: Exchange, catalog: Catalog) -> None:
    names = sorted(catalog.buckets)
    buckets = "".join(f"<Bucket><Name>{escape(n)}</Name><CreationDate>2023-01-01T00:00:00.000Z"
                      "</CreationDate></Bucket>" for n in names)
    _send_xml(exchange, f'<ListAllMyBucketsResult xmlns="{S3_NS}"><Owner><ID>sample</ID>'
              f"<DisplayName>sample</DisplayName></Owner><Buckets>{buckets}</Buckets>"
              "</ListAllMyBucketsResult>")


def _contents_xml(catalog: Catalog, bucket: Bucket, key: str, enc: Encoder) -> str:
    versions = bucket.versions.get(key)
    if not versions:  # a mirror file that vanished since the walk
        return ""
    v = versions[-1]
    return (f"<Contents><Key>{enc(key)}</Key><LastModified>{v.last_modified}</LastModified>"
            f"<ETag>{escape(catalog.etag(v), _QUOTE_ATTR)}</ETag><Size>{v.size}</Size>"
            "<StorageClass>STANDARD</StorageClass></Contents>")


def _page(catalog: Catalog, bucket: Bucket, query: Query, after: str,
          skip_upto: str) -> tuple[list[tuple[str, str]], bool, int]:
    prefix = query.get("prefix", [""])[0]
    delimiter = query.get("delimiter", [""])[0]
    max_keys = _max_keys(query)
    with catalog.lock:
        items = list(itertools.islice(walk_listing(bucket, prefix, delimiter, after, skip_upto),
                                      max_keys + 1))
    truncated = len(items) > max_keys and max_keys > 0
    return items[:max_keys], truncated, max_keys


def _entries_xml(catalog: Catalog, bucket: Bucket, items: list[tuple[str, str]],
                 enc: Encoder) -> str:
    parts = [_contents_xml(catalog, bucket, v, enc) for kind, v in items if kind == "key"]
    parts += [f"<CommonPrefixes><Prefix>{enc(v)}</Prefix></CommonPrefixes>"
              for kind, v in items if kind == "prefix"]
    return "".join(parts)


def _list_v2(exchange: Exchange, catalog: Catalog, bucket: Bucket, query: Query) -> None:
    enc = _encoder(query)
    token = query.get("continuation-token", [""])[0]
    start_after = query.get("start-after", [""])[0]
    if token:
        try:
            marker = _decode_token(token)
        except ValueError:
            raise S3Error(400, "InvalidArgument", "The continuation token provided is "
                          "incorrect", ArgumentName="continuation-token") from None
        after, skip_upto = max(marker, start_after), marker
    else:
        after, skip_upto = start_after, ""
    items, truncated, max_keys = _page(catalog, bucket, query, after, skip_upto)
    prefix = query.get("prefix", [""])[0]
    delimiter = query.get("delimiter", [""])[0]
    xml = [(f'<ListBucketResult xmlns="{S3_NS}"><Name>{escape(bucket.name)}</Name>'
           f"<Prefix>{enc(prefix)}</Prefix>")]
    if token:
        xml.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
    if truncated:
        xml.append(f"<NextContinuationToken>{_encode_token(items[-1][1])}"
                   "</NextContinuationToken>")
    xml.append(f"<KeyCount>{len(items)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>")
    if delimiter:
        xml.append(f"<Delimiter>{enc(delimiter)}</Delimiter>")
    if enc is not escape:
        xml.append("<EncodingType>url</EncodingType>")
    xml.append(f"<IsTruncated>{str(truncated).lower()}</IsTruncated>")
    if start_after:
        xml.append(f"<StartAfter>{enc(start_after)}</StartAfter>")
    xml.append(_entries_xml(catalog, bucket, items, enc))
    xml.append("</ListBucketResult>")
    _send_xml(exchange, "".join(xml))


def _list_v1(exchange: Exchange, catalog: Catalog, bucket: Bucket, query: Query) -> None:
    enc = _encoder(query)
    marker = query.get("marker", [""])[0]
    items, truncated, max_keys = _page(catalog, bucket, query, marker, marker)
    prefix = query.get("prefix", [""])[0]
    delimiter = query.get("delimiter", [""])[0]
    xml = [(f'<ListBucketResult xmlns="{S3_NS}"><Name>{escape(bucket.name)}</Name>'
           f"<Prefix>{enc(prefix)}</Prefix><Marker>{enc(marker)}</Marker>")]
    if truncated:
        xml.append(f"<NextMarker>{enc(items[-1][1])}</NextMarker>")
    xml.append(f"<MaxKeys>{max_keys}</MaxKeys>")
    if delimiter:
        xml.append(f"<Delimiter>{enc(delimiter)}</Delimiter>")
    if enc is not escape:
        xml.append("<EncodingType>url</EncodingType>")
    xml.append(f"<IsTruncated>{str(truncated).lower()}</IsTruncated>")
    xml.append(_entries_xml(catalog, bucket, items, enc))
    xml.append("</ListBucketResult>")
    _send_xml(exchange, "".join(xml))


def _list_versions(exchange: Exchange, catalog: Catalog, bucket: Bucket, query: Query) -> None:
    enc = _encoder(query)
    prefix = query.get("prefix", [""])[0]
    delimiter = query.get("delimiter", [""])[0]
    key_marker = query.get("key-marker", [""])[0]
    vid_marker = query.get("version-id-marker", [""])[0]
    max_keys = _max_keys(query)
    if vid_marker and not key_marker:
        raise S3Error(400, "InvalidArgument", "A version-id marker cannot be specified "
                      "without a key marker.", ArgumentName="version-id-marker",
                      ArgumentValue=vid_marker)

    def entries() -> Iterator[tuple[str, str, ServedVersion | None]]:
        if key_marker and vid_marker:
            versions = catalog.lookup(bucket, key_marker) or []
            newest_first = versions[::-1]
            ids = [v.version_id for v in newest_first]
            if vid_marker not in ids:
                raise S3Error(400, "InvalidArgument", "Invalid version id specified",
                              ArgumentName="version-id-marker", ArgumentValue=vid_marker)
            for v in newest_first[ids.index(vid_marker) + 1:]:
                yield "version", key_marker, v
        for kind, value in walk_listing(bucket, prefix, delimiter, key_marker, key_marker):
            if kind == "prefix":
                yield "prefix", value, None
            else:
                for v in reversed(bucket.versions[value]):
                    yield "version", value, v

    with catalog.lock:
        items = list(itertools.islice(entries(), max_keys + 1))
    truncated = len(items) > max_keys and max_keys > 0
    items = items[:max_keys]
    xml = [(f'<ListVersionsResult xmlns="{S3_NS}"><Name>{escape(bucket.name)}</Name>'
           f"<Prefix>{enc(prefix)}</Prefix><KeyMarker>{enc(key_marker)}</KeyMarker>"
           f"<VersionIdMarker>{escape(vid_marker)}</VersionIdMarker>")]
    if truncated:
        _, value, last = items[-1]
        xml.append(f"<NextKeyMarker>{enc(value)}</NextKeyMarker>")
        if last is not None:
            xml.append(f"<NextVersionIdMarker>{escape(last.version_id)}</NextVersionIdMarker>")
    xml.append(f"<MaxKeys>{max_keys}</MaxKeys>")
    if delimiter:
        xml.append(f"<Delimiter>{enc(delimiter)}</Delimiter>")
    if enc is not escape:
        xml.append("<EncodingType>url</EncodingType>")
    xml.append(f"<IsTruncated>{str(truncated).lower()}</IsTruncated>")
    for _, value, v in items:
        if v is not None:  # a version (a common prefix carries None)
            xml.append(
                f"<Version><Key>{enc(value)}</Key><VersionId>{escape(v.version_id)}</VersionId>"
                f"<IsLatest>{str(v.is_latest).lower()}</IsLatest>"
                f"<LastModified>{v.last_modified}</LastModified>"
                f"<ETag>{escape(catalog.etag(v), _QUOTE_ATTR)}</ETag><Size>{v.size}</Size>"
                "<StorageClass>STANDARD</StorageClass></Version>")
    xml += [f"<CommonPrefixes><Prefix>{enc(value)}</Prefix></CommonPrefixes>"
            for kind, value, _ in items if kind == "prefix"]
    xml.append("</ListVersionsResult>")
    _send_xml(exchange, "".join(xml))
