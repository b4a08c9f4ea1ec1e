"""SampleServer: a loopback HTTP server speaking the S3 REST subset and the Allen API routes.

It serves either a built sample world (``root``, laid out as in :mod:`.world`) or a mirror
folder (``mirror``: ``<DIR>/<bucket>/<key>`` files, e.g. a cache filled from the real buckets),
path-style: ``/<bucket>/<key>``. Supported, with the headers and XML that S3 sends, so that
boto3 and requests work unchanged:

* GetObject / HeadObject, with ``Range``, ``versionId``, ``If-Match``/``If-None-Match``/``If-Range``;
* ListObjectsV2 (``?list-type=2``), ListObjects (v1), ListObjectVersions (``?versions``),
  HeadBucket, GetBucketLocation, ListBuckets (``GET /``);
* the Allen API (``/api/v2/...``, ``/grid_data/...``), answered by :mod:`.allen_api`.

The world is read-only: other methods get ``405 MethodNotAllowed``. Bodies are streamed with
``os.sendfile`` (many GB/s on loopback). A :class:`~.faults.FaultPlan` makes chosen requests
fail in controlled ways, and :meth:`SampleServer.stats` counts requests and body bytes per path.
Requests are logged at DEBUG level on the ``abc_helpers.sample`` logger.
"""

from __future__ import annotations

import base64
import bisect
import email.utils
import hashlib
import importlib
import importlib.util
import itertools
import logging
import mimetypes
import os
import re
import secrets
import selectors
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, quote_plus, unquote
from xml.sax.saxutils import escape

from .faults import Fault, FaultPlan
from .world import load_index

__all__ = ["SampleServer"]

LOGGER = logging.getLogger("abc_helpers.sample")
LOGGER.addHandler(logging.NullHandler())  # never print to stderr unless the user asks for logs

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'
REGION = "us-west-2"
MAX_KEYS = 1000
#: Bodies up to this size are sent in the same write as the headers.
SMALL_BODY = 64 * 1024
#: Prefixes of the Allen API routes.
API_PREFIXES = ("/api/v2/", "/grid_data/")
#: Mirror-mode files that are cache bookkeeping, not objects.
BOOKKEEPING_SUFFIXES = (".part", ".lock", ".tmp")
#: Mirror mode: ``<DIR>/<bucket>/_versions/<version_id>/<key>`` holds the object versions that
#: manifests name (``?versionId=`` requests); see :mod:`abc_helpers.mirror`.
MIRROR_VERSIONS = "_versions"
_VERSION_ID_RE = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")
_HAS_SENDFILE = hasattr(os, "sendfile")
_LAST = "\U0010ffff"  # sorts after every character a key can hold

_FAULT_ERRORS = {
    400: ("BadRequest", "An error occurred when parsing the HTTP request."),
    403: ("AccessDenied", "Access Denied"),
    404: ("NoSuchKey", "The specified key does not exist."),
    408: ("RequestTimeout", "Your socket connection to the server was not read from or written to within the timeout period."),
    429: ("SlowDown", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    502: ("BadGateway", "Bad gateway."),
    503: ("SlowDown", "Please reduce your request rate."),
    504: ("GatewayTimeout", "Gateway timeout."),
}


# -- the catalogue of objects ------------------------------------------------------------------
def _iso_to_http(iso: str) -> str:
    dt = datetime.strptime(iso.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")
    return email.utils.format_datetime(dt, usegmt=True)


def _mtime_to_iso(mtime: float) -> str:
    dt = datetime.fromtimestamp(mtime, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


@dataclass
class _Version:
    """One servable object version (internal; mutable so that mirror entries can refresh)."""

    key: str
    version_id: str
    size: int
    last_modified: str  # ISO 8601 as S3 lists it
    path: Path  # absolute
    is_latest: bool
    md5: str | None = None  # None: computed lazily (mirror mode)
    mtime_ns: int = 0  # mirror mode: to notice changed files

    @property
    def http_date(self) -> str:
        return _iso_to_http(self.last_modified)


class _Bucket:
    """Sorted keys and their versions (oldest first)."""

    def __init__(self, name: str, versions: dict[str, list[_Version]]) -> None:
        self.name = name
        self.versions = versions
        self.keys = sorted(versions)


class _Catalog:
    """Every bucket the server knows, from a world index or a mirror folder walk."""

    def __init__(self, root: Path | None, mirror: Path | None) -> None:
        self.root = root
        self.mirror = mirror
        self.lock = threading.RLock()
        self._md5_cache: dict[tuple[str, int, int], str] = {}
        self.buckets: dict[str, _Bucket] = {}
        self.refresh()

    @property
    def api_root(self) -> Path | None:
        """The folder holding ``allen-api/`` (passed to ``allen_api.handle``), if any."""
        base = self.mirror if self.mirror is not None else self.root
        if base is not None and (base / "allen-api").is_dir():
            return base
        return None

    def refresh(self) -> None:
        """Re-read the world index, or walk the mirror folder again."""
        if self.mirror is not None:
            buckets = self._walk_mirror(self.mirror)
        else:
            buckets = {}
            for bucket, keys in load_index(self.root).items():
                versions = {}
                for key, vs in keys.items():
                    versions[key] = [
                        _Version(key=v.key, version_id=v.version_id, size=v.size,
                                 last_modified=v.last_modified, path=self.root / v.path,
                                 is_latest=(i == len(vs) - 1), md5=v.md5)
                        for i, v in enumerate(vs)
                    ]
                buckets[bucket] = _Bucket(bucket, versions)
        with self.lock:
            self.buckets = buckets

    # -- mirror mode ----------------------------------------------------------------------
    @staticmethod
    def _is_bookkeeping(name: str, at_bucket_root: bool) -> bool:
        if name.endswith(BOOKKEEPING_SUFFIXES) or name.startswith("."):
            return True
        return at_bucket_root and name.startswith("_")

    def _mirror_version(self, key: str, path: Path, st: os.stat_result) -> _Version:
        return _Version(key=key, version_id="null", size=st.st_size,
                        last_modified=_mtime_to_iso(st.st_mtime), path=path, is_latest=True,
                        md5=None, mtime_ns=st.st_mtime_ns)

    def _walk_mirror(self, top: Path) -> dict[str, _Bucket]:
        buckets = {}
        if not top.is_dir():
            raise FileNotFoundError(f"Mirror folder '{top}' does not exist: pass the folder that "
                                    "holds one subfolder per bucket.")
        for entry in sorted(os.scandir(top), key=lambda e: e.name):
            if not entry.is_dir() or entry.name == "allen-api" or not _BUCKET_RE.match(entry.name):
                continue
            base = Path(entry.path)
            versions: dict[str, list[_Version]] = {}
            for dirpath, dirnames, filenames in os.walk(base):
                at_root = dirpath == entry.path
                dirnames[:] = [d for d in dirnames if not self._is_bookkeeping(d, at_root)]
                for name in filenames:
                    if self._is_bookkeeping(name, at_root):
                        continue
                    path = Path(dirpath, name)
                    try:
                        st = path.stat()
                    except OSError:
                        continue
                    key = path.relative_to(base).as_posix()
                    versions[key] = [self._mirror_version(key, path, st)]
            buckets[entry.name] = _Bucket(entry.name, versions)
        return buckets

    def _mirror_lookup(self, bucket: _Bucket, key: str) -> list[_Version] | None:
        """Find (or re-check) a mirror file at request time; files may come and go."""
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts) or self._is_bookkeeping(parts[0], True) \
                or any(self._is_bookkeeping(p, False) for p in parts):
            return None
        path = self.mirror / bucket.name / key
        try:
            st = path.stat()
        except OSError:
            st = None
        with self.lock:
            versions = bucket.versions.get(key)
            if st is None or not path.is_file():
                if versions is not None:
                    del bucket.versions[key]
                    bucket.keys.remove(key)
                return None
            if versions is None:
                versions = [self._mirror_version(key, path, st)]
                bucket.versions[key] = versions
                bisect.insort(bucket.keys, key)
            elif versions[0].size != st.st_size or versions[0].mtime_ns != st.st_mtime_ns:
                versions[0] = self._mirror_version(key, path, st)
            return versions

    def mirror_version(self, bucket: _Bucket, key: str, version_id: str) -> _Version | None | bool:
        """A versioned request in mirror mode: the ``_versions/<id>/<key>`` file if there is one.

        Returns the version, None if the bucket keeps versions but not this one, or False if the
        bucket has no ``_versions/`` folder (a plain mirror: one version per key, so the current
        file answers and the client's hash check catches a mismatch).
        """
        versions_dir = self.mirror / bucket.name / MIRROR_VERSIONS
        if not versions_dir.is_dir():
            return False
        if version_id in (".", "..") or not _VERSION_ID_RE.match(version_id):
            return None
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts):
            return None
        path = versions_dir / version_id / key
        try:
            st = path.stat()
        except OSError:
            return None
        if not path.is_file():
            return None
        version = self._mirror_version(key, path, st)
        version.version_id = version_id
        version.is_latest = False
        return version

    # -- lookups --------------------------------------------------------------------------
    def lookup(self, bucket: _Bucket, key: str) -> list[_Version] | None:
        """Return the versions of *key* (oldest first), or None if there is no such key."""
        if self.mirror is not None:
            return self._mirror_lookup(bucket, key)
        return bucket.versions.get(key)

    def etag(self, version: _Version) -> str:
        """The quoted md5 of *version* (hashed once, then cached, in mirror mode)."""
        if version.md5 is None:
            cache_key = (str(version.path), version.size, version.mtime_ns)
            md5 = self._md5_cache.get(cache_key)
            if md5 is None:
                digest = hashlib.md5(usedforsecurity=False)
                with open(version.path, "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        digest.update(chunk)
                md5 = self._md5_cache[cache_key] = digest.hexdigest()
            version.md5 = md5
        return f'"{version.md5}"'


# -- listing helpers ---------------------------------------------------------------------------
def _walk(bucket: _Bucket, prefix: str, delimiter: str, after: str,
          skip_prefixes_upto: str) -> Iterator[tuple[str, str]]:
    """Yield ``('key', key)`` and ``('prefix', common_prefix)`` in S3 order, keys after *after*."""
    keys = bucket.keys
    i = bisect.bisect_right(keys, after) if after else 0
    i = max(i, bisect.bisect_left(keys, prefix))
    n = len(keys)
    while i < n:
        key = keys[i]
        if not key.startswith(prefix):
            return
        if delimiter:
            d = key.find(delimiter, len(prefix))
            if d >= 0:
                common = key[: d + len(delimiter)]
                if common > skip_prefixes_upto:
                    yield "prefix", common
                i = bisect.bisect_left(keys, common + _LAST, i + 1)
                continue
        yield "key", key
        i += 1


def _encode_token(marker: str) -> str:
    return base64.urlsafe_b64encode(marker.encode()).decode()


def _decode_token(token: str) -> str:
    return base64.urlsafe_b64decode(token.encode()).decode()


class _S3Error(Exception):
    """An S3 error response: status, code, message and extra XML fields."""

    def __init__(self, status: int, code: str, message: str, **fields: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields
        self.headers: dict[str, str] = {}


# -- the HTTP side -----------------------------------------------------------------------------
class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: SampleServer) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        self.connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), which can wait on DNS: skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address) -> None:
        with self._conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        # socketserver prints tracebacks to stderr; a client that hangs up is not news.
        LOGGER.debug("Connection from %s ended with an error", client_address, exc_info=True)

    def close_connections(self) -> None:
        with self._conn_lock:
            conns = list(self.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "AmazonS3"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 300  # idle keep-alive connections are closed after this many seconds
    server: _HTTPServer

    # -- plumbing -------------------------------------------------------------------------
    def version_string(self) -> str:
        return "AmazonS3"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
        LOGGER.debug("%s - " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        app = self.server.app
        started = time.perf_counter()
        raw_path, _, self.query = self.path.partition("?")
        if raw_path.startswith(("http://", "https://")):  # absolute-form request target
            raw_path = "/" + raw_path.split("/", 3)[-1] if raw_path.count("/") >= 3 else "/"
        self.url_path = unquote(raw_path)
        self.name = self.url_path.lstrip("/")
        self.method = method
        self.request_id = secrets.token_hex(8).upper()
        self.sent = 0
        app._record(self.name, requests=1)
        self.status = 0
        plan = app._faults
        self.fault = plan.take(self.name, method) if plan is not None and len(plan) else None
        if method not in ("GET", "HEAD"):
            self.close_connection = True  # we do not read request bodies
        try:
            if self.fault is not None:
                LOGGER.debug("fault %s on %s %s", self.fault, method, self.url_path)
                if self.fault.stall is not None and self.fault.stall_after is None:
                    time.sleep(self.fault.stall)
                if self.fault.status is not None:
                    raise self._fault_error(self.fault)
            if self.url_path.startswith(API_PREFIXES):
                self._allen_api()
            else:
                self._s3()
        except _S3Error as err:
            self._send_s3_error(err)
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as err:
            LOGGER.debug("client went away during %s %s: %s", method, self.url_path, err)
            self.close_connection = True
        except Exception as err:  # a bug: answer 500 rather than dropping the connection
            LOGGER.exception("Sample server failed on %s %s", method, self.path)
            if self.status:  # the headers are out: all we can do is hang up
                self._hang_up()
            else:
                self._send_s3_error(_S3Error(500, "InternalError", f"{type(err).__name__}: {err}"))
        finally:
            LOGGER.debug("%s %s -> %s, %d body bytes in %.1f ms", method, self.path, self.status,
                         self.sent, 1000 * (time.perf_counter() - started))

    # -- responses ------------------------------------------------------------------------
    def _head_block(self, status: int, headers: dict[str, str], length: int) -> bytes:
        self.status = status
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        lines = [f"HTTP/1.1 {status} {reason}", f"Date: {self.date_time_string()}",
                 "Server: AmazonS3", f"x-amz-request-id: {self.request_id}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {length}")
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send_bytes(self, status: int, headers: dict[str, str], body: bytes,
                    head_only: bool = False, fault: Fault | None = None) -> None:
        block = self._head_block(status, headers, len(body))
        sock = self.connection
        if head_only or not body:
            sock.sendall(block)
        elif fault is None or not fault.touches_body:
            self._send_counted(block, body)
        else:
            sock.sendall(block)
            self._send_faulty(body, 0, len(body), fault)

    def _send_file(self, status: int, headers: dict[str, str], fh: BinaryIO, offset: int,
                   length: int, head_only: bool = False) -> None:
        block = self._head_block(status, headers, length)
        sock = self.connection
        fault = self.fault if self.fault is not None and self.fault.touches_body else None
        if head_only or length == 0:
            sock.sendall(block)
        elif fault is not None:
            sock.sendall(block)
            self._send_faulty(fh, offset, length, fault)
        elif length <= SMALL_BODY:
            body = _pread(fh, length, offset)
            self._send_counted(block, body)
            if len(body) < length:
                self._hang_up()
        else:
            sock.sendall(block)
            if self._send_span(fh, offset, length) < length:
                self._hang_up()  # the file shrank under us: do not leave the client waiting

    def _count(self, n: int) -> None:
        """Count *n* body bytes as sent (before sending, so stats are right once a client has
        them; a failed send takes them back)."""
        self.sent += n
        self.server.app._record(self.name, bytes_sent=n)

    def _send_counted(self, prefix: bytes, body: bytes | memoryview) -> None:
        """Send *prefix* (headers or nothing) and *body* in one write, counting the body."""
        self._count(len(body))
        try:
            self.connection.sendall(prefix + body if prefix else body)
        except BaseException:
            self._count(-len(body))
            raise

    def _send_span(self, body: bytes | BinaryIO, start: int, count: int) -> int:
        """Send *count* bytes of *body* from *start* (an offset in a bytes body or a file)."""
        if count <= 0:
            return 0
        sock = self.connection
        if isinstance(body, (bytes, bytearray, memoryview)):
            self._send_counted(b"", memoryview(body)[start:start + count])
            return count
        if not _HAS_SENDFILE:
            total = 0
            while total < count:
                chunk = _pread(body, min(count - total, 1 << 20), start + total)
                if not chunk:
                    break
                self._send_counted(b"", chunk)
                total += len(chunk)
            return total
        out_fd, in_fd = sock.fileno(), body.fileno()
        total = 0
        selector = None
        timeout = sock.gettimeout()
        self._count(count)
        try:
            while total < count:
                try:
                    n = os.sendfile(out_fd, in_fd, start + total, min(count - total, 1 << 30))
                except BlockingIOError:  # the socket has a timeout, hence is non-blocking
                    if selector is None:
                        selector = selectors.DefaultSelector()
                        selector.register(out_fd, selectors.EVENT_WRITE)
                    if not selector.select(timeout):
                        raise TimeoutError("timed out sending the body") from None
                    continue
                if n == 0:
                    break
                total += n
        finally:
            if total < count:
                self._count(total - count)
            if selector is not None:
                selector.close()
        return total

    def _send_faulty(self, body: bytes | BinaryIO, offset: int, length: int, fault: Fault) -> None:
        """Send a body of *length* bytes the way *fault* says (drop, stall, corrupt, short)."""
        end, hang_up = length, False
        if fault.drop_after is not None:
            end, hang_up = min(end, fault.drop_after), True
        if fault.short_by is not None:
            end, hang_up = min(end, max(0, length - fault.short_by)), True
        events = []
        if fault.stall_after is not None and fault.stall_after < end:
            events.append((fault.stall_after, 0, "stall"))
        if fault.corrupt_at is not None and fault.corrupt_at < end:
            events.append((fault.corrupt_at, 1, "corrupt"))
        pos = 0
        for at, _, kind in sorted(events):
            if at > pos:
                pos += self._send_span(body, offset + pos, at - pos)
            if kind == "stall":
                time.sleep(fault.stall or 0.0)
            elif pos == at:
                if isinstance(body, bytes):
                    byte = body[at]
                else:
                    byte = _pread(body, 1, offset + at)[0]
                self._send_counted(b"", bytes([byte ^ 0xFF]))
                pos += 1
        if end > pos:
            self._send_span(body, offset + pos, end - pos)
        if hang_up:
            self._hang_up()

    def _hang_up(self) -> None:
        """Close the connection abruptly (the client sees a short body)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.connection.close()

    def _fault_error(self, fault: Fault) -> _S3Error:
        code, message = _FAULT_ERRORS.get(fault.status, ("ServiceUnavailable", "Injected fault."))
        err = _S3Error(fault.status, code, message)
        if fault.status == 404 and self.name:
            err.fields["Key"] = self.name.partition("/")[2] or self.name
        if fault.retry_after is not None:
            ra = fault.retry_after
            err.headers = {"Retry-After": str(int(ra)) if float(ra).is_integer() else str(ra)}
        return err

    def _send_s3_error(self, err: _S3Error) -> None:
        headers = {"Content-Type": "application/xml"}
        headers.update(err.headers)
        if err.status == 416 and "ActualObjectSize" in err.fields:
            headers["Content-Range"] = f"bytes */{err.fields['ActualObjectSize']}"
        if err.status == 405:
            headers["Allow"] = "GET, HEAD"
        extra = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in err.fields.items())
        body = (f"{XML_HEAD}<Error><Code>{err.code}</Code><Message>{escape(err.message)}</Message>"
                f"{extra}<RequestId>{self.request_id}</RequestId>"
                f"<HostId>{self.request_id.lower()}</HostId></Error>").encode()
        # S3 sends no body with errors to HEAD; a 304 never has one.
        self._send_bytes(err.status, headers, body, head_only=self.method == "HEAD",
                         fault=None)

    def _send_xml(self, xml: str) -> None:
        self._send_bytes(200, {"Content-Type": "application/xml"}, (XML_HEAD + xml).encode(),
                         head_only=self.method == "HEAD", fault=self.fault)

    # -- S3 ---------------------------------------------------------------------------------
    def _s3(self) -> None:
        catalog = self.server.app._catalog
        if not self.name:
            if self.method not in ("GET", "HEAD"):
                raise _S3Error(405, "MethodNotAllowed",
                               "The specified method is not allowed against this resource.",
                               Method=self.method, ResourceType="SERVICE")
            return self._list_buckets()
        bucket_name, _, key = self.name.partition("/")
        bucket = catalog.buckets.get(bucket_name)
        if bucket is None:
            raise _S3Error(404, "NoSuchBucket", "The specified bucket does not exist.",
                           BucketName=bucket_name)
        if self.method not in ("GET", "HEAD"):
            raise _S3Error(405, "MethodNotAllowed",
                           "The specified method is not allowed against this resource: the "
                           "sample world is read-only.",
                           Method=self.method, ResourceType="OBJECT" if key else "BUCKET")
        query = parse_qs(self.query, keep_blank_values=True)
        if key:
            return self._object(bucket, key, query)
        if self.method == "HEAD":
            return self._send_bytes(200, {"x-amz-bucket-region": REGION}, b"", head_only=True)
        if "versions" in query:
            return self._list_versions(bucket, query)
        if "location" in query:
            return self._send_xml(f'<LocationConstraint xmlns="{S3_NS}">{REGION}</LocationConstraint>')
        if query.get("list-type", [""])[0] == "2":
            return self._list_v2(bucket, query)
        return self._list_v1(bucket, query)

    @staticmethod
    def _max_keys(query: dict[str, list[str]]) -> int:
        raw = query.get("max-keys", [str(MAX_KEYS)])[0]
        try:
            value = int(raw)
        except ValueError:
            raise _S3Error(400, "InvalidArgument", "Provided max-keys not an integer or within "
                           "integer range", ArgumentName="max-keys", ArgumentValue=raw) from None
        if value < 0:
            raise _S3Error(400, "InvalidArgument", "Argument maxKeys must be an integer between 0 "
                           "and 2147483647", ArgumentName="maxKeys", ArgumentValue=raw)
        return min(value, MAX_KEYS)

    def _contents_xml(self, bucket: _Bucket, key: str, enc) -> str:
        catalog = self.server.app._catalog
        versions = bucket.versions.get(key)
        if not versions:  # a mirror file that vanished since the walk
            return ""
        v = versions[-1]
        return (f"<Contents><Key>{enc(key)}</Key><LastModified>{v.last_modified}</LastModified>"
                f"<ETag>{escape(catalog.etag(v), {chr(34): '&quot;'})}</ETag><Size>{v.size}</Size>"
                "<StorageClass>STANDARD</StorageClass></Contents>")

    @staticmethod
    def _encoder(query: dict[str, list[str]]):
        if query.get("encoding-type", [""])[0].lower() == "url":
            return lambda s: escape(quote_plus(s, safe="/"))
        return escape

    def _page(self, bucket: _Bucket, query: dict[str, list[str]], after: str,
              skip_upto: str) -> tuple[list[tuple[str, str]], bool, int]:
        prefix = query.get("prefix", [""])[0]
        delimiter = query.get("delimiter", [""])[0]
        max_keys = self._max_keys(query)
        with self.server.app._catalog.lock:
            items = list(itertools.islice(_walk(bucket, prefix, delimiter, after, skip_upto),
                                          max_keys + 1))
        truncated = len(items) > max_keys and max_keys > 0
        return items[:max_keys], truncated, max_keys

    def _entries_xml(self, bucket: _Bucket, items: list[tuple[str, str]], enc) -> str:
        parts = [self._contents_xml(bucket, v, enc) for kind, v in items if kind == "key"]
        parts += [f"<CommonPrefixes><Prefix>{enc(v)}</Prefix></CommonPrefixes>"
                  for kind, v in items if kind == "prefix"]
        return "".join(parts)

    def _list_v2(self, bucket: _Bucket, query: dict[str, list[str]]) -> None:
        enc = self._encoder(query)
        token = query.get("continuation-token", [""])[0]
        start_after = query.get("start-after", [""])[0]
        if token:
            try:
                marker = _decode_token(token)
            except ValueError:
                raise _S3Error(400, "InvalidArgument", "The continuation token provided is "
                               "incorrect", ArgumentName="continuation-token") from None
            after, skip_upto = max(marker, start_after), marker
        else:
            after, skip_upto = start_after, ""
        items, truncated, max_keys = self._page(bucket, query, after, skip_upto)
        prefix = query.get("prefix", [""])[0]
        delimiter = query.get("delimiter", [""])[0]
        xml = [f'<ListBucketResult xmlns="{S3_NS}"><Name>{escape(bucket.name)}</Name>'
               f"<Prefix>{enc(prefix)}</Prefix>"]
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
        xml.append(self._entries_xml(bucket, items, enc))
        xml.append("</ListBucketResult>")
        self._send_xml("".join(xml))

    def _list_v1(self, bucket: _Bucket, query: dict[str, list[str]]) -> None:
        enc = self._encoder(query)
        marker = query.get("marker", [""])[0]
        items, truncated, max_keys = self._page(bucket, query, marker, marker)
        prefix = query.get("prefix", [""])[0]
        delimiter = query.get("delimiter", [""])[0]
        xml = [f'<ListBucketResult xmlns="{S3_NS}"><Name>{escape(bucket.name)}</Name>'
               f"<Prefix>{enc(prefix)}</Prefix><Marker>{enc(marker)}</Marker>"]
        if truncated:
            xml.append(f"<NextMarker>{enc(items[-1][1])}</NextMarker>")
        xml.append(f"<MaxKeys>{max_keys}</MaxKeys>")
        if delimiter:
            xml.append(f"<Delimiter>{enc(delimiter)}</Delimiter>")
        if enc is not escape:
            xml.append("<EncodingType>url</EncodingType>")
        xml.append(f"<IsTruncated>{str(truncated).lower()}</IsTruncated>")
        xml.append(self._entries_xml(bucket, items, enc))
        xml.append("</ListBucketResult>")
        self._send_xml("".join(xml))

    def _list_versions(self, bucket: _Bucket, query: dict[str, list[str]]) -> None:
        catalog = self.server.app._catalog
        enc = self._encoder(query)
        prefix = query.get("prefix", [""])[0]
        delimiter = query.get("delimiter", [""])[0]
        key_marker = query.get("key-marker", [""])[0]
        vid_marker = query.get("version-id-marker", [""])[0]
        max_keys = self._max_keys(query)
        if vid_marker and not key_marker:
            raise _S3Error(400, "InvalidArgument", "A version-id marker cannot be specified "
                           "without a key marker.", ArgumentName="version-id-marker",
                           ArgumentValue=vid_marker)

        def entries() -> Iterator[tuple[str, str, _Version | None]]:
            if key_marker and vid_marker:
                versions = catalog.lookup(bucket, key_marker) or []
                newest_first = versions[::-1]
                ids = [v.version_id for v in newest_first]
                if vid_marker not in ids:
                    raise _S3Error(400, "InvalidArgument", "Invalid version id specified",
                                   ArgumentName="version-id-marker", ArgumentValue=vid_marker)
                for v in newest_first[ids.index(vid_marker) + 1:]:
                    yield "version", key_marker, v
            for kind, value in _walk(bucket, prefix, delimiter, key_marker, key_marker):
                if kind == "prefix":
                    yield "prefix", value, None
                else:
                    for v in reversed(bucket.versions[value]):
                        yield "version", value, v

        with catalog.lock:
            items = list(itertools.islice(entries(), max_keys + 1))
        truncated = len(items) > max_keys and max_keys > 0
        items = items[:max_keys]
        xml = [f'<ListVersionsResult xmlns="{S3_NS}"><Name>{escape(bucket.name)}</Name>'
               f"<Prefix>{enc(prefix)}</Prefix><KeyMarker>{enc(key_marker)}</KeyMarker>"
               f"<VersionIdMarker>{escape(vid_marker)}</VersionIdMarker>"]
        if truncated:
            kind, value, last = items[-1]
            xml.append(f"<NextKeyMarker>{enc(value)}</NextKeyMarker>")
            if last is not None:
                xml.append(f"<NextVersionIdMarker>{escape(last.version_id)}</NextVersionIdMarker>")
        xml.append(f"<MaxKeys>{max_keys}</MaxKeys>")
        if delimiter:
            xml.append(f"<Delimiter>{enc(delimiter)}</Delimiter>")
        if enc is not escape:
            xml.append("<EncodingType>url</EncodingType>")
        xml.append(f"<IsTruncated>{str(truncated).lower()}</IsTruncated>")
        quote_attr = {'"': "&quot;"}
        for kind, value, v in items:
            if kind == "version":
                xml.append(
                    f"<Version><Key>{enc(value)}</Key><VersionId>{escape(v.version_id)}</VersionId>"
                    f"<IsLatest>{str(v.is_latest).lower()}</IsLatest>"
                    f"<LastModified>{v.last_modified}</LastModified>"
                    f"<ETag>{escape(catalog.etag(v), quote_attr)}</ETag><Size>{v.size}</Size>"
                    "<StorageClass>STANDARD</StorageClass></Version>")
        xml += [f"<CommonPrefixes><Prefix>{enc(value)}</Prefix></CommonPrefixes>"
                for kind, value, _ in items if kind == "prefix"]
        xml.append("</ListVersionsResult>")
        self._send_xml("".join(xml))

    def _list_buckets(self) -> None:
        names = sorted(self.server.app._catalog.buckets)
        buckets = "".join(f"<Bucket><Name>{escape(n)}</Name><CreationDate>2023-01-01T00:00:00.000Z"
                          "</CreationDate></Bucket>" for n in names)
        self._send_xml(f'<ListAllMyBucketsResult xmlns="{S3_NS}"><Owner><ID>sample</ID>'
                       f"<DisplayName>sample</DisplayName></Owner><Buckets>{buckets}</Buckets>"
                       "</ListAllMyBucketsResult>")

    def _object(self, bucket: _Bucket, key: str, query: dict[str, list[str]]) -> None:
        catalog = self.server.app._catalog
        version_id = query.get("versionId", [""])[0]
        stored = None
        if catalog.mirror is not None and version_id and version_id != "null":
            stored = catalog.mirror_version(bucket, key, version_id)
        versions = [stored] if stored else catalog.lookup(bucket, key)
        if not versions:
            raise _S3Error(404, "NoSuchKey", "The specified key does not exist.", Key=key)
        if stored is False:  # a plain mirror keeps one version per key: serve it
            version_id = ""
        if version_id:
            match = [v for v in versions if v.version_id == version_id]
            if not match:
                raise _S3Error(404, "NoSuchVersion", "The specified version does not exist.",
                               Key=key, VersionId=version_id)
            version = match[0]
        else:
            version = versions[-1]
        try:
            fh = open(version.path, "rb")
        except FileNotFoundError:
            raise _S3Error(404, "NoSuchKey", "The specified key does not exist.", Key=key) from None
        with fh:
            etag = catalog.etag(version)
            headers = {
                "Accept-Ranges": "bytes",
                "Content-Type": mimetypes.guess_type(key)[0] or "application/octet-stream",
                "ETag": etag,
                "Last-Modified": version.http_date,
                "x-amz-version-id": version.version_id,
            }
            self._serve_file(fh, headers, etag)

    def _serve_file(self, fh: BinaryIO, headers: dict[str, str], etag: str | None) -> None:
        """Answer GET/HEAD with the file *fh*: conditional headers, Range, then the bytes."""
        size = os.fstat(fh.fileno()).st_size
        h = self.headers
        if etag is not None:
            if_match = h.get("If-Match")
            if if_match and if_match.strip() != "*" and etag not in _etags(if_match):
                raise _S3Error(412, "PreconditionFailed", "At least one of the pre-conditions "
                               "you specified did not hold", Condition="If-Match")
            if_none = h.get("If-None-Match")
            if if_none and (if_none.strip() == "*" or etag in _etags(if_none)):
                self.status = 304
                return self.connection.sendall(self._head_block(
                    304, {"ETag": etag, "Last-Modified": headers.get("Last-Modified", "")}, 0))
        range_header = h.get("Range")
        if range_header and self.fault is not None and self.fault.ignore_range:
            range_header = None
        if range_header and h.get("If-Range"):
            if_range = h["If-Range"].strip()
            if if_range != etag and if_range != headers.get("Last-Modified"):
                range_header = None  # the object changed: send all of it
        span = _parse_range(range_header, size) if range_header else None
        head_only = self.method == "HEAD"
        if span == "unsatisfiable":
            raise _S3Error(416, "InvalidRange", "The requested range is not satisfiable",
                           RangeRequested=range_header, ActualObjectSize=str(size))
        if span is None:
            return self._send_file(200, headers, fh, 0, size, head_only)
        start, end = span
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return self._send_file(206, headers, fh, start, end - start + 1, head_only)

    # -- Allen API --------------------------------------------------------------------------
    def _allen_api(self) -> None:
        app = self.server.app
        root = app._catalog.api_root
        module = _allen_api_module()
        if module is None or root is None:
            why = ("the sample package has no allen_api module" if module is None
                   else "this world has no 'allen-api' folder")
            body = f"Not found: {self.url_path} ({why}).".encode()
            return self._send_bytes(404, {"Content-Type": "text/plain"}, body,
                                    head_only=self.method == "HEAD")
        status, headers, body = module.handle(root, self.method, self.url_path, self.query)
        if self.method == "HEAD" and status == 405:
            status, headers, body = module.handle(root, "GET", self.url_path, self.query)
        headers = {k: v for k, v in headers.items() if k.lower() not in ("content-length", "connection")}
        if isinstance(body, (str, os.PathLike)):
            with open(body, "rb") as fh:
                if status == 200:
                    headers.setdefault("Accept-Ranges", "bytes")
                    return self._serve_file(fh, headers, headers.get("ETag"))
                return self._send_file(status, headers, fh, 0, os.fstat(fh.fileno()).st_size,
                                       self.method == "HEAD")
        self._send_bytes(status, headers, bytes(body), head_only=self.method == "HEAD",
                         fault=self.fault)


def _pread(fh: BinaryIO, count: int, offset: int) -> bytes:
    """Read *count* bytes at *offset* (``os.pread`` where there is one; the handle is ours)."""
    if hasattr(os, "pread"):
        return os.pread(fh.fileno(), count, offset)
    fh.seek(offset)
    return fh.read(count)


def _etags(header: str) -> set[str]:
    """The entity tags listed in an If-Match / If-None-Match header."""
    return {t.strip().removeprefix("W/") for t in header.split(",") if t.strip()}


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """Parse a single-range ``Range`` header: ``(start, end)``, ``'unsatisfiable'`` or None.

    None means "ignore the header and send everything" (bad syntax or several ranges, as S3 does).
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


_ALLEN_API_LOCK = threading.Lock()


def _allen_api_module():
    """Import the Allen API routes lazily; None if the module does not exist (yet)."""
    with _ALLEN_API_LOCK:
        name = f"{__package__}.allen_api"
        if importlib.util.find_spec(name) is None:
            return None
        return importlib.import_module(name)


# -- the public handle -------------------------------------------------------------------------
class SampleServer:
    """Serve a sample world (or a mirror folder) over HTTP on loopback, in background threads.

    Parameters
    ----------
    root : Path, str or None
        A built world folder (see :mod:`abc_helpers.sample.world`). Ignored if *mirror* is given.
    host : str
        Address to bind; ``'127.0.0.1'`` by default.
    port : int
        Port to bind; 0 picks a free one (kept across :meth:`stop`/:meth:`start`).
    faults : FaultPlan, list of Fault or str, or None
        Faults to inject (see :mod:`abc_helpers.sample.faults`).
    mirror : Path, str or None
        Serve this folder instead: each subfolder named like a bucket is a bucket, its files
        the objects (cache bookkeeping such as ``*.part`` or ``_*.json`` is skipped), and
        ``allen-api/`` the Allen API files.

    Examples
    --------
    >>> import tempfile
    >>> from abc_helpers.sample.world import WorldWriter
    >>> root = tempfile.mkdtemp()
    >>> with WorldWriter(root) as w:
    ...     _ = w.put_bytes("my-bucket", "a/b.txt", b"hello")
    >>> with SampleServer(root=root) as server:
    ...     import requests
    ...     requests.get(server.url + "/my-bucket/a/b.txt").content
    b'hello'
    """

    def __init__(
        self,
        root: Path | str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: FaultPlan | list | str | None = None,
        mirror: Path | str | None = None,
    ) -> None:
        if root is None and mirror is None:
            raise ValueError("SampleServer needs a world folder (root=...) or a mirror folder "
                             "(mirror=...): build one with abc_helpers.sample.build_world().")
        self.root = Path(root) if root is not None and mirror is None else None
        self.mirror = Path(mirror) if mirror is not None else None
        if self.root is not None and not (self.root / "s3-index").is_dir():
            LOGGER.warning("World folder '%s' has no s3-index/: no bucket will be served.", self.root)
        self.host = host
        self._port = port
        self._faults = FaultPlan.coerce(faults)
        self._catalog = _Catalog(self.root, self.mirror)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stats_lock = threading.Lock()
        self._requests: dict[str, int] = {}
        self._bytes: dict[str, int] = {}

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> SampleServer:
        """Start serving in a background thread (no-op if already running); return self."""
        if self._httpd is not None:
            return self
        httpd = _HTTPServer((self.host, self._port), self)
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"SampleServer:{self._port}", daemon=True)
        self._thread.start()
        LOGGER.debug("Sample server on %s serving %s", self.url, self.mirror or self.root)
        return self

    def stop(self) -> None:
        """Stop serving and close open connections; :meth:`start` serves again on the same port."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SampleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while the server accepts connections."""
        return self._httpd is not None

    @property
    def port(self) -> int:
        """The bound port (the requested one before the first :meth:`start`)."""
        return self._port

    @property
    def url(self) -> str:
        """The root URL, e.g. ``'http://127.0.0.1:38211'`` (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    def refresh(self) -> None:
        """Re-read the world index (or walk the mirror folder again)."""
        self._catalog.refresh()

    # -- faults and statistics --------------------------------------------------------------
    @property
    def faults(self) -> FaultPlan | None:
        """The fault plan in force (None: no faults)."""
        return self._faults

    def set_faults(self, faults: FaultPlan | list | str | None) -> FaultPlan | None:
        """Replace the fault plan (None removes every fault); return the plan now in force."""
        self._faults = FaultPlan.coerce(faults)
        return self._faults

    def _record(self, path: str, requests: int = 0, bytes_sent: int = 0) -> None:
        with self._stats_lock:
            self._requests[path] = self._requests.get(path, 0) + requests
            self._bytes[path] = self._bytes.get(path, 0) + bytes_sent

    def stats(self) -> dict[str, dict[str, int]]:
        """Requests and body bytes sent per request path (decoded, without the leading slash).

        Returns
        -------
        dict
            ``{"requests": {path: n}, "bytes_sent": {path: n}}``, e.g.
            ``{"requests": {"my-bucket/a.csv": 2}, "bytes_sent": {"my-bucket/a.csv": 2048}}``.
        """
        with self._stats_lock:
            return {"requests": dict(self._requests), "bytes_sent": dict(self._bytes)}

    def reset_stats(self) -> None:
        """Forget the request and byte counts."""
        with self._stats_lock:
            self._requests.clear()
            self._bytes.clear()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"SampleServer({self.url!r}, {state}, serving {str(self.mirror or self.root)!r})"
