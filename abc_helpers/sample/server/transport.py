"""The sample server's HTTP side: threads, connections, response bytes, fault injection and counts."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import selectors
import socket
import socketserver
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote

from ..faults import Fault, FaultPlan, FaultUse
from .allen import API_PREFIXES, send_api_error, serve_allen_api
from .catalog import Catalog
from .link import Link, Pacer
from .s3 import S3Error, send_error, serve_s3

__all__ = ["FAULT_ERRORS", "SMALL_BODY", "SampleServer"]

LOGGER = logging.getLogger("abc_helpers.sample")
LOGGER.addHandler(logging.NullHandler())  # never print to stderr unless the user asks for logs

#: Bodies up to this size are sent in the same write as the headers.
SMALL_BODY = 64 * 1024
#: The S3 error code and message sent for each status a fault injects (others: ServiceUnavailable).
FAULT_ERRORS = {
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
_HAS_SENDFILE = hasattr(os, "sendfile")


def _pread(fh: BinaryIO, count: int, offset: int) -> bytes:
    """Read *count* bytes at *offset* (``os.pread`` where there is one; the handle is ours)."""
    if hasattr(os, "pread"):
        return os.pread(fh.fileno(), count, offset)
    fh.seek(offset)
    return fh.read(count)


def _fault_error(fault: Fault, status: int, name: str) -> S3Error:
    """The S3 error a ``status=`` fault (its *status*) answers for the request path *name*."""
    code, message = FAULT_ERRORS.get(status, ("ServiceUnavailable", "Injected fault."))
    err = S3Error(status, code, message)
    if status == 404 and name:
        err.fields["Key"] = name.partition("/")[2] or name
    if fault.retry_after is not None:
        ra = fault.retry_after
        err.headers = {"Retry-After": str(int(ra)) if float(ra).is_integer() else str(ra)}
    return err


class _HTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that knows its open connections (to close them on stop)."""

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
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), port  # an inet socket's host is a str

    def process_request(self, request, client_address) -> None:
        with self._conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:  # noqa: ARG002 (socketserver's signature)
        # socketserver prints tracebacks to stderr; a client that hangs up is not news, and
        # anything else goes to the log, never to the terminal of the user's notebook.
        if isinstance(sys.exc_info()[1], OSError):
            LOGGER.debug("Connection from %s ended with an error", client_address, exc_info=True)
        else:
            LOGGER.error("Sample server failed on a request from %s", client_address,
                         exc_info=True)

    def close_connections(self) -> None:
        with self._conn_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """One connection; each request is an :class:`~.s3.Exchange` answered by S3 or the Allen API."""

    protocol_version = "HTTP/1.1"
    server_version = "AmazonS3"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 300  # idle keep-alive connections are closed after this many seconds
    server: _HTTPServer

    # -- plumbing -------------------------------------------------------------------------
    def version_string(self) -> str:
        return "AmazonS3"

    def log_message(self, format: str, *args: object) -> None:
        LOGGER.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
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
        self.pacer: Pacer | None = None
        app._record(self.name, requests=1)
        self.status = 0
        plan = app._faults
        self.use: FaultUse | None = (plan.claim(self.name, method)
                                     if plan is not None and len(plan) else None)
        self.fault = self.use.fault if self.use is not None else None
        self.range_ignored = False
        if method not in ("GET", "HEAD"):
            self.close_connection = True  # we do not read request bodies
        app._begin()
        try:
            link = app._link
            if link is not None and link.latency_s > 0:
                time.sleep(link.latency_s)  # the link's time to the first byte
            if self.fault is not None:
                LOGGER.debug("fault %s on %s %s", self.fault, method, self.url_path)
                if self.fault.ignore_range and "Range" in self.headers:
                    del self.headers["Range"]  # answer 200 with everything
                    self.range_ignored = True
                if self.fault.stall is not None and self.fault.stall_after is None:
                    self._effect("stall")  # it withholds the whole response
                    time.sleep(self.fault.stall)
                    if self._peer_gone():  # the client gave up during the stall: answer no one
                        self._hang_up()
                        return
                if self.fault.status is not None:
                    self._effect("status")
                    status = self.fault.status
                    if (self.url_path.startswith(API_PREFIXES) and 400 <= status < 500
                            and status not in (408, 429)):  # the API refuses in its own words
                        _code, message = FAULT_ERRORS.get(status, ("", "Injected fault."))
                        send_api_error(self, status, f"{message} (injected fault: HTTP {status})")
                        return
                    raise _fault_error(self.fault, status, self.name)
            if self.url_path.startswith(API_PREFIXES):
                serve_allen_api(self, app._catalog.api_root)
            else:
                serve_s3(self, app._catalog)
        except S3Error as err:
            send_error(self, err)
        except (ConnectionError, TimeoutError) as err:
            LOGGER.debug("client went away during %s %s: %s", method, self.url_path, err)
            self.close_connection = True
        except (OSError, ValueError, LookupError) as err:  # a damaged world or mirror file
            LOGGER.exception("Sample server failed on %s %s", method, self.path)
            if self.status:  # the headers are out: all we can do is hang up
                self._hang_up()
            else:
                send_error(self, S3Error(500, "InternalError", f"{type(err).__name__}: {err}"))
        finally:
            app._end()
            LOGGER.debug("%s %s -> %s, %d body bytes in %.1f ms", method, self.path, self.status,
                         self.sent, 1000 * (time.perf_counter() - started))

    def _effect(self, kind: str) -> None:
        """Report to the fault plan that this request's rule changed its response (*kind*)."""
        if self.use is not None:
            self.use.took_effect(kind)

    # -- responses (the Exchange interface) -----------------------------------------------
    def send_bytes(self, status: int, headers: dict[str, str], body: bytes,
                   faulty: bool = False) -> None:
        """Send a response with *body* (headers only for HEAD); *faulty* applies body faults."""
        block = self._head_block(status, headers, len(body))
        fault = self.fault if faulty else None
        if self.method == "HEAD" or not body:
            self.connection.sendall(block)
        elif fault is None or not fault.touches_body:
            self._send_counted(block, body)
        else:
            self.connection.sendall(block)
            self._send_faulty(body, 0, len(body), fault)

    def send_file(self, status: int, headers: dict[str, str], fh: BinaryIO, offset: int,
                  length: int) -> None:
        """Send *length* bytes of the open file *fh* from *offset* (headers only for HEAD)."""
        block = self._head_block(status, headers, length)
        sock = self.connection
        fault = self.fault if self.fault is not None and self.fault.touches_body else None
        if self.method == "HEAD" or length == 0:
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

    def _head_block(self, status: int, headers: dict[str, str], length: int) -> bytes:
        self.status = status
        if self.range_ignored and status == 200:
            self._effect("ignore-range")  # the whole object instead of the range asked for
        link = self.server.app._link
        self.pacer = link.pacer() if link is not None else None  # the body's clock starts here
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

    def _count(self, n: int) -> None:
        """Count *n* body bytes as sent (before sending, so stats are right once a client has
        them; a failed send takes them back)."""
        self.sent += n
        self.server.app._record(self.name, bytes_sent=n)

    def _send_counted(self, prefix: bytes, body: bytes | memoryview) -> None:
        """Send *prefix* (headers or nothing) and *body* in one write, counting the body (paced
        in chunks when the link has a bandwidth)."""
        pacer = self.pacer
        if pacer is not None and body:
            if prefix:
                self.connection.sendall(prefix)
            view = memoryview(body)
            for at in range(0, len(view), pacer.chunk):
                chunk = view[at:at + pacer.chunk]
                pacer.wait(len(chunk))
                self._send_counted_now(chunk)
                pacer.sent(len(chunk))
            return
        self._send_counted_now(body, prefix)

    def _send_counted_now(self, body: bytes | memoryview, prefix: bytes = b"") -> None:
        """Send *prefix* and *body* in one write now, counting the body."""
        self._count(len(body))
        done = False
        try:
            self.connection.sendall(prefix + body if prefix else body)
            done = True
        finally:
            if not done:
                self._count(-len(body))

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
        pacer = self.pacer
        step = pacer.chunk if pacer is not None else 1 << 30
        self._count(count)
        try:
            while total < count:
                size = min(count - total, step)
                if pacer is not None:
                    pacer.wait(size)
                try:
                    n = os.sendfile(out_fd, in_fd, start + total, size)
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
                if pacer is not None:
                    pacer.sent(n)
        finally:
            if total < count:
                self._count(total - count)
            if selector is not None:
                selector.close()
        return total

    def _send_faulty(self, body: bytes | BinaryIO, offset: int, length: int, fault: Fault) -> None:
        """Send a body of *length* bytes the way *fault* says (drop, stall, corrupt, short)."""
        end, hang_up = length, False
        drop_after = fault.offset("drop_after", length)
        short_by = fault.offset("short_by", length)
        stall_after = fault.offset("stall_after", length)
        corrupt_at = fault.offset("corrupt_at", length)
        if drop_after is not None:
            end, hang_up = min(end, drop_after), True
        if short_by is not None:
            end, hang_up = min(end, max(0, length - short_by)), True
        events = []
        if stall_after is not None and stall_after < end:
            events.append((stall_after, 0, "stall"))
        if corrupt_at is not None and corrupt_at < end:
            events.append((corrupt_at, 1, "corrupt"))
        # the effects are counted when they are decided, before any byte goes out: a client that
        # leaves early cannot make a fault that landed inside its body look as if it had not
        for _, _, kind in events:
            self._effect("stall-after" if kind == "stall" else "corrupt-at")
        if end < length:  # bytes withheld: the cut or the short body changes the response
            self._effect("drop-after" if drop_after is not None and drop_after == end else "short-by")
        pos = 0
        for at, _, kind in sorted(events):
            if at > pos:
                pos += self._send_span(body, offset + pos, at - pos)
            if kind == "stall":
                time.sleep(fault.stall or 0.0)
                if self._peer_gone():  # the client gave up during the stall: nothing more reaches it
                    self._hang_up()
                    return
            elif pos == at:
                byte = body[at] if isinstance(body, bytes) else _pread(body, 1, offset + at)[0]
                self._send_counted(b"", bytes([byte ^ 0xFF]))
                pos += 1
        if end > pos:
            self._send_span(body, offset + pos, end - pos)
        if hang_up:
            self._hang_up()

    def _peer_gone(self) -> bool:
        """True when the client has closed its end (readable, and reading would return EOF)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _hang_up(self) -> None:
        """Close the connection abruptly (the client sees a short body)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self.connection.close()


# -- the public handle -------------------------------------------------------------------------
class SampleServer:
    """Serve a sample world (or a mirror folder) over HTTP on loopback, in background threads.

    It speaks the S3 REST subset that boto3 and the AllenSDK's ``S3CloudCache`` use
    (path-style ``/<bucket>/<key>``, see :mod:`.s3`) and the Allen API routes of
    ``api.brain-map.org`` (see :mod:`abc_helpers.sample.allen_api`). The world is read-only:
    other methods get ``405 MethodNotAllowed``. Bodies are streamed with ``os.sendfile``; a
    :class:`~abc_helpers.sample.faults.FaultPlan` makes chosen requests fail in controlled ways,
    and :meth:`stats` counts requests and body bytes per path. A :class:`~.link.Link` models a
    real network link: a first-byte latency on every request and a bandwidth each response body
    is paced at (:meth:`set_link` changes it while serving). Requests are logged at DEBUG level
    on the ``abc_helpers.sample`` logger.

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
    link : Link or None
        Latency and bandwidth to add to every response, e.g. ``Link(latency_s=0.02,
        bandwidth=50e6)`` for 20 ms to the first byte and 50 MB/s; None (default) for loopback
        speed.

    Raises
    ------
    ValueError
        If neither *root* nor *mirror* is given.
    FileNotFoundError
        If *mirror* is not a folder.

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
        link: Link | None = None,
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
        self._link: Link | None = None
        self.set_link(link)
        self._catalog = Catalog(self.root, self.mirror)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stats_lock = threading.Lock()
        self._idle = threading.Condition(self._stats_lock)
        self._active = 0
        self._requests: dict[str, int] = {}
        self._bytes: dict[str, int] = {}

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> SampleServer:
        """Start serving in a background thread (no-op if already running); return self.

        Raises
        ------
        OSError
            If the port cannot be bound (e.g. it is in use).
        """
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
        """Replace the fault plan (None removes every fault); return the plan now in force.

        Parameters
        ----------
        faults : FaultPlan, list of Fault or str, str or None
            The new plan, e.g. ``['status=503,count=1']``.

        Returns
        -------
        FaultPlan or None
            The plan now in force.
        """
        self._faults = FaultPlan.coerce(faults)
        return self._faults

    @property
    def link(self) -> Link | None:
        """The link model in force (None: loopback speed)."""
        return self._link

    def set_link(self, link: Link | None = None, *, latency_s: float | None = None,
                 bandwidth: float | None = None) -> Link | None:
        """Set the link model: first-byte latency and bandwidth of every later response.

        Parameters
        ----------
        link : Link or None
            The new link; None (with no keywords) removes the model (loopback speed).
        latency_s : float or None
            Instead of *link*: seconds to the first byte.
        bandwidth : float or None
            Instead of *link*: body bytes per second of each response (None: no limit).

        Returns
        -------
        Link or None
            The link now in force.

        Raises
        ------
        ValueError
            If both *link* and keywords are given, or a value is out of range (see :class:`Link`).

        Examples
        --------
        >>> server = SampleServer(root=".")  # doctest: +SKIP
        >>> server.set_link(latency_s=0.02, bandwidth=50e6)  # doctest: +SKIP
        Link(latency_s=0.02, bandwidth=50000000.0)
        """
        if latency_s is not None or bandwidth is not None:
            if link is not None:
                raise ValueError("set_link takes a Link or latency_s=/bandwidth=, not both.")
            link = Link(latency_s=latency_s or 0.0, bandwidth=bandwidth)
        if link is not None and not isinstance(link, Link):
            raise TypeError(f"link must be a Link or None, not {type(link).__name__}.")
        self._link = None if link is None or link.is_ideal else link
        return self._link

    def _record(self, path: str, requests: int = 0, bytes_sent: int = 0) -> None:
        with self._stats_lock:
            self._requests[path] = self._requests.get(path, 0) + requests
            self._bytes[path] = self._bytes.get(path, 0) + bytes_sent

    def _begin(self) -> None:
        with self._stats_lock:
            self._active += 1

    def _end(self) -> None:
        with self._stats_lock:
            self._active -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until no request is being answered, so :meth:`stats` and the fault plan's counts
        are final (e.g. after a client gave up on a stalled response).

        Parameters
        ----------
        timeout : float
            Seconds to wait at most.

        Returns
        -------
        bool
            True if the server is idle, False after the time-out.
        """
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._active:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
            return True

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
