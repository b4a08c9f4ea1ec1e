"""HTTP downloads: retries, resume, streaming hash, atomic rename, a lock per file, progress bars.

Every file this package fetches goes through :func:`download` (one file) or :func:`download_many`
(a bounded thread pool). The rules, whatever the caller:

* bytes go to ``<path>.part``; the final path appears only by an atomic rename of a complete file
  whose hash matched, so a file at a final path is always whole;
* the hash (md5 for the ABC Atlas, blake2b for VBN) is computed while the bytes arrive, in a second
  thread, so receiving and hashing overlap and the file is never read twice;
* an existing ``.part`` is resumed with an HTTP ``Range`` request (and restarted cleanly if the
  server ignores the range);
* connection errors, time-outs, short bodies and 5xx/429 answers are retried with backoff
  (``Retry-After`` honoured); a hash mismatch deletes the partial file and retries; 403/404 are not
  retried, nor is a host name that cannot be resolved (no network): that fails at once;
* one inter-process lock per file, so two processes fetching the same file end with one good copy.

Every other HTTP request of the package (Allen API queries, S3 listings) goes through
:func:`get_bytes`, under the same policy: one time-out pair, capped exponential backoff
(:func:`backoff`, waited with :func:`pause`), cut bodies, stalls, 5xx/408/429 retried, a 4xx an
error at once (:class:`RequestRefused`) quoting the server's own message.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from tqdm import tqdm

from .cachefolder import file_lock, partial_path
from .progress import ProgressBar
from .sources import check_url_allowed

LOGGER = logging.getLogger("abc_helpers")

#: (connect, read) time-outs in seconds; ``ABC_HELPERS_TIMEOUT`` overrides the read time-out.
DEFAULT_TIMEOUT = (10.0, 60.0)
#: Bytes per read from the socket.
CHUNK_SIZE = 1 << 20
#: Attempts after the first one, for network errors and server errors.
DEFAULT_RETRIES = 5
#: Longest wait between two attempts, in seconds.
MAX_WAIT = 10.0
#: Hash algorithms a ``known_hash`` may name.
ALGORITHMS = ("md5", "blake2b", "sha256", "sha1")

_session_lock = threading.Lock()
_session: requests.Session | None = None
_received_lock = threading.Lock()
_received = {"download": 0, "range": 0}


def received_bytes() -> dict[str, int]:
    """Bytes of object data this process has received so far, by kind of request.

    ``"download"``: whole files (:func:`download`, :func:`download_many`); ``"range"``: byte
    ranges (:func:`read_range`, e.g. a served gene index). Take the difference of two calls to
    see what one step cost.

    Examples
    --------
    >>> sorted(received_bytes())
    ['download', 'range']
    """
    with _received_lock:
        return dict(_received)


def _count_received(kind: str, n: int) -> None:
    with _received_lock:
        _received[kind] += n


class DownloadError(RuntimeError):
    """A file could not be downloaded; the message names the file, the URL and the cause."""


class RequestRefused(DownloadError):
    """The server refused a request in a way retrying cannot fix (a 4xx, or what the caller
    recognises as a final answer); raised at once, never after retries.

    Attributes
    ----------
    url : str
        The URL asked for.
    status : int
        The HTTP status.
    server_message : str
        What the server said (its error document's message, or the start of its body).
    body : bytes
        The start (up to 64 KiB) of the error body.
    """

    def __init__(self, message: str, *, url: str, status: int, server_message: str,
                 body: bytes = b"") -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.server_message = server_message
        self.body = body

    def __reduce__(self) -> tuple:
        """Pickle with the keyword arguments (a process pool sends errors back to the parent)."""
        return (_rebuild_refused, (type(self), str(self), self.url, self.status, self.server_message,
                                   self.body))


def _rebuild_refused(kind: type[RequestRefused], message: str, url: str, status: int,
                     server_message: str, body: bytes) -> RequestRefused:
    return kind(message, url=url, status=status, server_message=server_message, body=body)


#: Statuses retried with backoff: the server is busy, failing or timed out.
RETRY_STATUSES = (408, 429, 500, 502, 503, 504)


def pause(seconds: float) -> None:
    """Wait *seconds* between two attempts (all retry loops of the package wait here).

    Tests that want no waiting replace this function
    (``monkeypatch.setattr("abc_helpers.transfer.pause", ...)``), never the global ``time.sleep``,
    which the sample server's threads use too.
    """
    time.sleep(seconds)


def backoff(attempt: int, wait: float | None = None) -> float:
    """Seconds to wait after failed attempt number *attempt* (0 for the first).

    Exponential (0.5 s, 1 s, 2 s, ...), capped at :data:`MAX_WAIT`; a server's ``Retry-After``
    (*wait*) is used instead when it gave one.

    Examples
    --------
    >>> [backoff(a) for a in range(3)]
    [0.5, 1.0, 2.0]
    >>> backoff(0, wait=3.0)
    3.0
    """
    return wait if wait is not None else min(0.5 * 2**attempt, MAX_WAIT)


def server_message(body: bytes) -> str:
    """The message of a server's error document: an S3 XML ``<Code>``/``<Message>``, a JSON
    ``msg``/``message``/``error`` (the Allen API's envelope), else the start of the text.

    Examples
    --------
    >>> server_message(b'<Error><Code>SlowDown</Code><Message>Reduce your rate.</Message></Error>')
    'SlowDown: Reduce your rate.'
    >>> server_message(b'{"success": false, "msg": "Data Access error in query"}')
    'Data Access error in query'
    >>> server_message(b"")
    '(no message)'
    """
    import json
    import re

    text = body.decode("utf-8", "replace").strip()
    if not text:
        return "(no message)"
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict):
        for key in ("msg", "message", "error", "Message"):
            if isinstance(value.get(key), str) and value[key]:
                return value[key]
    if text.startswith("<"):
        code = re.search(r"<Code>(.*?)</Code>", text, re.S)
        message = re.search(r"<Message>(.*?)</Message>", text, re.S)
        if code or message:
            return ": ".join(m.group(1).strip() for m in (code, message) if m)
    return " ".join(text.split())[:300]


def _error_body(response: requests.Response, limit: int = 1 << 16) -> bytes:
    """The start of an error response's body (a broken one reads as what arrived)."""
    try:
        return response.raw.read(limit, decode_content=True) or b""
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError, ValueError):
        return b""


@dataclass(frozen=True)
class DownloadJob:
    """One file for :func:`download_many`.

    Parameters
    ----------
    url : str
        Where to fetch it.
    path : Path
        Where it goes.
    known_hash : str or None
        ``"md5:<hex>"``, ``"blake2b:<hex>"``, ... or None to skip the check.
    size : int or None
        Expected size in bytes (used for progress bars and sanity checks).
    force : bool
        Replace a file already at *path* (e.g. one that failed a check).
    """

    url: str
    path: Path
    known_hash: str | None = None
    size: int | None = None
    force: bool = False


class _Session(requests.Session):
    """A session that checks every redirect target like the first URL: a redirect cannot
    downgrade a transfer to plain HTTP on a host that is neither loopback nor a named mirror."""

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        target = super().get_redirect_target(resp)
        if target:
            from urllib.parse import urljoin

            check_url_allowed(urljoin(resp.url, target))  # ValueError: refused
        return target


def _forget_session_after_fork() -> None:
    """In a forked child (a process pool), start with no connections: the parent's pooled sockets
    are shared with it, and two processes reading one socket get each other's responses."""
    global _session, _session_lock
    _session = None
    _session_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows, where pools spawn
    os.register_at_fork(after_in_child=_forget_session_after_fork)


def get_session() -> requests.Session:
    """Return the package's shared :class:`requests.Session` (connection pool for 32 hosts/threads)."""
    global _session
    with _session_lock:
        if _session is None:
            session = _Session()
            adapter = HTTPAdapter(pool_connections=8, pool_maxsize=32, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = "abc_helpers"
            # Reading proxy settings and ~/.netrc on every request costs ~1.5 ms each; skip it
            # when no proxy is configured (public buckets need no credentials).
            if not any(k.lower().endswith("_proxy") for k in os.environ):
                session.trust_env = False
            _session = session
        return _session


def unresolvable_host(error: BaseException) -> str | None:
    """Return why a host name could not be resolved, if that is what caused *error*; else None.

    A name that does not resolve (no network, no DNS, a mistyped host) is not fixed by retrying,
    so the downloads fail at once on it instead of backing off for a quarter of a minute.

    Parameters
    ----------
    error : BaseException
        What ``requests`` raised (its causes are followed: urllib3's ``NameResolutionError``, the
        socket's ``gaierror``).

    Returns
    -------
    str or None
        The resolver's message, e.g. ``'Name or service not known'``, or None for other errors.
    """
    chain: dict[int, BaseException] = {}
    todo = [error]
    while todo:
        current = todo.pop()
        if id(current) not in chain:
            chain[id(current)] = current
            linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
            todo.extend(e for e in linked if isinstance(e, BaseException))
    for found in chain.values():
        if isinstance(found, socket.gaierror):
            return found.strerror or str(found)
    name_error = getattr(urllib3.exceptions, "NameResolutionError", ())  # urllib3 >= 2
    for found in chain.values():
        if isinstance(found, name_error):
            return str(found)
    return None


def host_not_found(url: str, reason: str) -> str:
    """The message for a *url* whose host cannot be resolved: the host, the cause and the fix."""
    host = urlsplit(url).hostname
    return (f"the host '{host}' cannot be resolved ({reason}): there is no network or no DNS here, "
            "or the host name is wrong. Retrying cannot fix this. Check the internet connection "
            "(or the mirror URL you gave); offline, use the sample world (data_source='sample').")


def _timeout(read_timeout: float | None = None) -> tuple[float, float]:
    """(connect, read) time-outs: ``ABC_HELPERS_TIMEOUT`` wins, then *read_timeout*, then the default."""
    read = os.environ.get("ABC_HELPERS_TIMEOUT")
    if read:
        return (DEFAULT_TIMEOUT[0], float(read))
    return (DEFAULT_TIMEOUT[0], read_timeout) if read_timeout else DEFAULT_TIMEOUT


def parse_hash(known_hash: str) -> tuple[str, str]:
    """Split ``"algorithm:hexdigest"`` (md5 when no algorithm is named) into its two parts.

    Examples
    --------
    >>> parse_hash("blake2b:ABC")
    ('blake2b', 'abc')
    >>> parse_hash("d41d8cd98f00b204e9800998ecf8427e")
    ('md5', 'd41d8cd98f00b204e9800998ecf8427e')
    """
    algorithm, _, digest = known_hash.rpartition(":")
    algorithm = (algorithm or "md5").lower()
    if algorithm not in ALGORITHMS:
        raise ValueError(f"Unknown hash algorithm '{algorithm}' in '{known_hash}': use one of {ALGORITHMS}.")
    return algorithm, digest.lower()


def new_hasher(algorithm: str):
    """A fresh :mod:`hashlib` hasher for *algorithm* (``"md5"``, ``"blake2b"``, ...)."""
    return hashlib.new(algorithm, usedforsecurity=False) if algorithm != "blake2b" else hashlib.blake2b()


def file_hash(path: str | os.PathLike, algorithm: str = "md5", chunk_size: int = CHUNK_SIZE) -> str:
    """Return ``"algorithm:hexdigest"`` of the file at *path*, read in 1 MiB chunks.

    Examples
    --------
    >>> import tempfile, os
    >>> fd, name = tempfile.mkstemp(); os.write(fd, b"abc"); os.close(fd)
    3
    >>> file_hash(name)
    'md5:900150983cd24fb0d6963f7d28e17f72'
    >>> os.remove(name)
    """
    hasher = new_hasher(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            hasher.update(chunk)
    return f"{algorithm}:{hasher.hexdigest()}"


class _StreamHasher:
    """Hash chunks in a second thread, so hashing overlaps receiving and writing."""

    def __init__(self, algorithm: str, prefix_path: Path | None = None) -> None:
        self.hasher = new_hasher(algorithm)
        self.algorithm = algorithm
        if prefix_path is not None:  # bytes of a resumed .part
            with open(prefix_path, "rb") as fh:
                while chunk := fh.read(CHUNK_SIZE):
                    self.hasher.update(chunk)
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=32)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self.hasher.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        self._queue.put(None)
        self._thread.join()
        return self.hasher.hexdigest()

    def abandon(self) -> None:
        self._queue.put(None)
        self._thread.join()


class _InlineHasher(_StreamHasher):
    """Hash in the receiving thread: cheaper than a second thread for small files."""

    def __init__(self, algorithm: str, prefix_path: Path | None = None) -> None:
        self.hasher = new_hasher(algorithm)
        self.algorithm = algorithm
        if prefix_path is not None:
            with open(prefix_path, "rb") as fh:
                while chunk := fh.read(CHUNK_SIZE):
                    self.hasher.update(chunk)

    def update(self, chunk: bytes) -> None:
        self.hasher.update(chunk)

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()

    def abandon(self) -> None:
        pass


#: Bodies smaller than this are hashed in the receiving thread.
THREADED_HASH_MIN_BYTES = 8 << 20


class _Retryable(Exception):
    """An attempt failed in a way worth another try (optionally after *wait* seconds)."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return min(float(value), 30.0) if value is not None else None
    except ValueError:
        return None


def _get(url: str, headers: dict[str, str], read_timeout: float | None = None) -> requests.Response:
    """GET *url* (streamed) with the shared session; connection failures become retryable."""
    try:
        return get_session().get(url, headers=headers, stream=True, timeout=_timeout(read_timeout))
    except (requests.ConnectionError, requests.Timeout) as error:
        reason = unresolvable_host(error)
        if reason is not None:  # no network or a wrong host name: retrying cannot fix it
            raise DownloadError(host_not_found(url, reason)) from None
        raise _Retryable(f"connection failed ({type(error).__name__}: {error})") from error
    except ValueError as error:  # a redirect to a URL that check_url_allowed refuses
        raise DownloadError(f"redirected to a refused URL: {error}") from None


def _fetch_once(
    url: str,
    part: Path,
    algorithm: str | None,
    size: int | None,
    bar: tqdm | None,
    overall: Callable[[int], None] | None,
) -> str | None:
    """One attempt: stream *url* into *part* (resuming it), return the hex digest or None."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    response = _get(url, headers)
    with response:
        status = response.status_code
        if status == 416 and offset:
            # The .part is at least as long as the object: restart from byte 0.
            part.unlink(missing_ok=True)
            raise _Retryable("the partial file was longer than the object; restarting", wait=0)
        if status in RETRY_STATUSES:
            said = server_message(_error_body(response))
            raise _Retryable(f"server answered HTTP {status} ({said})", wait=_retry_after(response))
        if 400 <= status < 500:
            body = _error_body(response)
            said = server_message(body)
            raise RequestRefused(
                f"HTTP {status} ({response.reason}; the server said: {said}): the server has no "
                "such file or refuses it. Check the file name and the release (manifest) you "
                "loaded, and the data source.", url=url, status=status, server_message=said,
                body=body)
        if status not in (200, 206):
            raise _Retryable(f"unexpected HTTP {status} ({response.reason})")
        resumed = status == 206 and offset > 0
        if status == 206 and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            raise _Retryable("server sent a range that does not start where the partial file ends")
        if not resumed and offset:
            LOGGER.info("Server ignored the Range request for %s; restarting from byte 0.", url)
            offset = 0
        length = response.headers.get("Content-Length")
        expected_body = int(length) if length is not None else None
        total = (offset + expected_body) if expected_body is not None else size
        if bar is not None:
            if bar.total != total or bar.n:
                bar.reset(total=total)
            if offset:
                bar.update(offset)
        hasher = None
        if algorithm:
            threaded = expected_body is None or expected_body >= THREADED_HASH_MIN_BYTES
            hasher = (_StreamHasher if threaded else _InlineHasher)(algorithm, part if resumed else None)
        received = 0
        try:
            with open(part, "ab" if resumed else "wb") as out:
                raw = response.raw
                # read1 returns what has arrived instead of waiting for a full chunk: a time-out or a
                # reset then loses nothing already received (read(n) drops its partial buffer).
                read = getattr(raw, "read1", None) or raw.read
                while True:
                    try:
                        chunk = read(CHUNK_SIZE, decode_content=False)
                    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as error:
                        # ProtocolError (reset, short read), ReadTimeoutError, socket errors
                        raise _Retryable(f"connection broken after {offset + received} bytes "
                                         f"({type(error).__name__})") from error
                    if not chunk:
                        break
                    out.write(chunk)
                    if hasher is not None:
                        hasher.update(chunk)
                    received += len(chunk)
                    _count_received("download", len(chunk))
                    if bar is not None:
                        bar.update(len(chunk))
                    if overall is not None:
                        overall(len(chunk))
        except BaseException:
            if hasher is not None:
                hasher.abandon()
            raise
        if expected_body is not None and received != expected_body:
            if hasher is not None:
                hasher.abandon()
            raise _Retryable(f"short body: got {received} of {expected_body} bytes")
        return hasher.hexdigest() if hasher is not None else None


def download(
    url: str,
    path: str | os.PathLike,
    *,
    known_hash: str | None = None,
    size: int | None = None,
    progressbar: bool | tqdm = True,
    desc: str | None = None,
    force: bool = False,
    retries: int = DEFAULT_RETRIES,
    overall: Callable[[int], None] | None = None,
    verify: Callable[[Path], str | None] | None = None,
) -> Path:
    """Download *url* to *path*: resumable, verified, atomic.

    Parameters
    ----------
    url : str
        The object's URL (https, or http to loopback or an explicitly named mirror).
    path : str or PathLike
        The final path. Parent folders are created.
    known_hash : str or None
        ``"md5:<hex>"`` or ``"blake2b:<hex>"`` (md5 when no algorithm is named); None skips the
        check (and the hashing).
    size : int or None
        Expected size in bytes, for the progress bar before the server answers, and to notice a
        stale final file.
    progressbar : bool or tqdm
        Show a tqdm bar on stderr (``unit="B"``), or update the bar given.
    desc : str or None
        Label of the bar; default: the file name.
    force : bool
        Download again even if *path* exists.
    retries : int
        Attempts after the first one for network errors, server errors and hash mismatches.
    overall : callable or None
        Called with each number of bytes received (feeds an overall bar for many files).
    verify : callable or None
        A check of the complete ``.part`` file before it is renamed into place, for files without a
        published hash (e.g. a zip's CRCs): it returns None if the file is good, or a reason, which
        counts as a corrupt transfer (deleted and retried). It may raise ``ValueError`` for a file
        that is wrong however often it is fetched: the ``.part`` is deleted and the error raised.

    Returns
    -------
    Path
        *path*, holding the complete, verified file.

    Raises
    ------
    DownloadError
        After the last attempt, or at once for 403/404; names the file, the URL and the cause.
        Nothing is left at *path*; a ``.part`` may remain for a later resume.
    """
    path = Path(path)
    check_url_allowed(url)
    algorithm, expected = parse_hash(known_hash) if known_hash else (None, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(path)
    with file_lock(path):
        if path.exists() and not force and (size is None or path.stat().st_size == size):
            return path  # another process (or an earlier call) finished it: final paths are whole
        if force:
            path.unlink(missing_ok=True)
        own_bar = progressbar is True
        bar: tqdm | None
        if progressbar is True:
            bar = ProgressBar(total=size, desc=desc or path.name, unit="B", unit_scale=True,
                              unit_divisor=1024, leave=True)
        else:
            bar = progressbar or None
        try:
            _download_attempts(url, path, part, algorithm, expected, size, bar, overall, retries, verify)
        finally:
            if own_bar and bar is not None:
                bar.close()
    return path


def _download_attempts(url, path, part, algorithm, expected, size, bar, overall, retries,
                       verify=None) -> None:
    last_error = "no attempt made"
    for attempt in range(retries + 1):
        try:
            digest = _fetch_once(url, part, algorithm, size, bar, overall)
        except _Retryable as error:
            last_error = str(error)
            if attempt == retries:
                break
            wait = backoff(attempt, error.wait)
            LOGGER.warning("Download of '%s' failed (%s). Retrying in %.1f s (%d more attempt%s).",
                           path.name, error, wait, retries - attempt, "s" if retries - attempt != 1 else "")
            pause(wait)
            continue
        except RequestRefused as error:
            raise RequestRefused(f"Could not download '{path.name}' from {url}: {error}", url=url,
                                 status=error.status, server_message=error.server_message,
                                 body=error.body) from None
        except DownloadError as error:
            raise DownloadError(f"Could not download '{path.name}' from {url}: {error}") from None
        problem = None
        if expected is not None and digest != expected:
            problem = (f"{algorithm} hash mismatch: expected {expected} but got {digest}; "
                       "the corrupt download was deleted")
        elif verify is not None:
            try:
                reason = verify(part)
            except ValueError:
                part.unlink(missing_ok=True)
                raise
            if reason is not None:
                problem = f"the downloaded file failed its check ({reason}); it was deleted"
        if problem is not None:
            part.unlink(missing_ok=True)
            last_error = problem
            if attempt == retries:
                break
            LOGGER.warning("Download of '%s': %s. Retrying.", path.name, last_error)
            continue
        Path(part).replace(path)
        return
    raise DownloadError(
        f"Could not download '{path.name}' from {url} after {retries + 1} attempts: {last_error}. "
        "Check the connection and try again: a partial download is resumed where it stopped."
    )


def download_many(
    jobs: Sequence[DownloadJob],
    *,
    max_workers: int = 8,
    progressbar: bool = True,
    desc: str | None = None,
    force: bool = False,
    on_done: Callable[[DownloadJob, Path], None] | None = None,
) -> list[Path]:
    """Download many files with a bounded thread pool and one overall progress bar (bytes).

    Parameters
    ----------
    jobs : sequence of DownloadJob
        The files.
    max_workers : int
        Most transfers at once.
    progressbar : bool
        Show one overall bar in bytes.
    desc : str or None
        Label of the overall bar.
    force : bool
        Download files again even if they exist.
    on_done : callable or None
        Called as ``on_done(job, path)`` in the calling thread as each file completes (e.g. to
        record it), so a failure later on keeps the files already done.

    Returns
    -------
    list of Path
        The final paths, in the order of *jobs*.

    Raises
    ------
    DownloadError
        If any file failed, after all the others were given their chance; the message lists each
        failed file and its cause.
    """
    jobs = list(jobs)
    if not jobs:
        return []
    total = sum(j.size or 0 for j in jobs) or None
    bar = (ProgressBar(total=total, desc=desc or f"{len(jobs)} files", unit="B", unit_scale=True,
                       unit_divisor=1024) if progressbar else None)
    lock = threading.Lock()

    def advance(n: int) -> None:
        if bar is not None:
            with lock:
                bar.update(n)

    results: dict[int, Path] = {}
    failures: list[str] = []
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(jobs)))) as pool:
            futures = {
                pool.submit(download, j.url, j.path, known_hash=j.known_hash, size=j.size,
                            progressbar=False, force=force or j.force, overall=advance): i
                for i, j in enumerate(jobs)
            }
            for future in as_completed(futures):
                i = futures[future]
                try:
                    results[i] = future.result()
                except DownloadError as error:
                    failures.append(str(error))
                    continue
                if on_done is not None:
                    on_done(jobs[i], results[i])
    finally:
        if bar is not None:
            if total is not None and not failures and bar.n != total:
                bar.n = total  # top up: resumed or skipped files did not stream every byte
            bar.close()
    if failures:
        raise DownloadError(f"{len(failures)} of {len(jobs)} downloads failed:\n- " + "\n- ".join(failures))
    return [results[i] for i in range(len(jobs))]


@dataclass(frozen=True)
class RangeReply:
    """What :func:`fetch_range` got: the bytes and what the server said of the object.

    Attributes
    ----------
    data : bytes
        Exactly the bytes asked for.
    size : int
        The whole object's size (from ``Content-Range``).
    etag : str or None
        The object's ``ETag`` as sent (quotes kept), or None if the server sent none.
    version_id : str or None
        The ``x-amz-version-id`` the server sent, or None.
    """

    data: bytes
    size: int
    etag: str | None
    version_id: str | None


class ObjectChanged(RequestRefused):
    """The object is not the version a reader pinned (``If-Match`` failed, or another ``ETag`` came
    back): its bytes must not be mixed with bytes already read. Never retried."""


def _range_once(url: str, start: int, stop: int, into: bytearray, if_match: str | None,
                seen: dict[str, str | int | None]) -> None:
    """One attempt at bytes ``[start + len(into), stop)`` of *url*, appended to *into* as they come;
    the object's size, ETag and version go into *seen*."""
    first = start + len(into)
    headers = {"Range": f"bytes={first}-{stop - 1}"}
    if if_match is not None:
        headers["If-Match"] = if_match
    response = _get(url, headers)
    with response:
        status = response.status_code
        if status in RETRY_STATUSES:
            said = server_message(_error_body(response))
            raise _Retryable(f"server answered HTTP {status} ({said})", wait=_retry_after(response))
        if status == 412 and if_match is not None:
            said = server_message(_error_body(response))
            raise ObjectChanged(f"the object changed on the server: it no longer has the ETag "
                                f"{if_match} it had when reading began (HTTP 412; the server said: "
                                f"{said})", url=url, status=status, server_message=said)
        if 400 <= status < 500:
            said = server_message(_error_body(response))
            raise RequestRefused(f"HTTP {status} ({response.reason}; the server said: {said}): the "
                                 "server has no such object, refuses it, or it is shorter than the "
                                 "catalog says", url=url, status=status, server_message=said)
        if status == 200:  # the whole object is coming: drop the connection rather than read it
            raise _Retryable("the server ignored the Range request (HTTP 200 instead of 206)", wait=0)
        if status != 206:
            raise _Retryable(f"unexpected HTTP {status} ({response.reason})")
        content_range = response.headers.get("Content-Range", "")
        if not content_range.startswith(f"bytes {first}-{stop - 1}/"):
            raise _Retryable(f"the server sent another range ({content_range!r})")
        etag = response.headers.get("ETag")
        if if_match is not None and etag is not None and etag != if_match:
            raise ObjectChanged(f"the object changed on the server: its ETag is now {etag}, not "
                                f"{if_match} as when reading began (the server ignored If-Match)",
                                url=url, status=status, server_message="")
        total = content_range.rpartition("/")[2]
        seen.update(size=int(total) if total.isdigit() else None, etag=etag,
                    version_id=response.headers.get("x-amz-version-id"))
        raw = response.raw
        read = getattr(raw, "read1", None) or raw.read
        while len(into) < stop - start:
            try:
                chunk = read(min(CHUNK_SIZE, stop - start - len(into)), decode_content=False)
            except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as error:
                raise _Retryable(f"connection broken after {len(into)} of {stop - start} bytes "
                                 f"({type(error).__name__})") from error
            if not chunk:
                raise _Retryable(f"short body: got {len(into)} of {stop - start} bytes")
            into += chunk
            _count_received("range", len(chunk))


def fetch_range(url: str, start: int, stop: int, *, if_match: str | None = None,
                retries: int = DEFAULT_RETRIES, what: str | None = None) -> RangeReply:
    """Return bytes ``[start, stop)`` of the object at *url* and what the server said of it.

    The policy of :func:`read_range` (retries, resume after a cut, a server ignoring ``Range``
    hung up on), plus a pin: with *if_match* every request carries ``If-Match``, and an answer
    for another version of the object (HTTP 412, or another ``ETag``) raises
    :class:`ObjectChanged` at once, so bytes of two versions are never mixed.

    Parameters
    ----------
    url : str
        The object's URL (a ``?versionId=`` in it pins the version on S3).
    start, stop : int
        The byte range, *stop* excluded; ``stop > start``.
    if_match : str or None
        The ``ETag`` (quoted, as the server sent it) the object must still have.
    retries : int
        Attempts after the first one.
    what : str or None
        The file's name for messages (default: the URL).

    Returns
    -------
    RangeReply
        The bytes, the object's size, ``ETag`` and version id.

    Raises
    ------
    ObjectChanged
        At once, if the object is no longer the pinned version.
    RequestRefused
        At once, for 403/404/416 and other 4xx.
    DownloadError
        After the last attempt (or at once if the host cannot be resolved); names the file, the
        URL, the range and the cause.
    """
    check_url_allowed(url)
    if stop <= start:
        raise ValueError(f"Empty byte range [{start}, {stop}) of {url}: ask for at least one byte.")
    label = f"'{what}'" if what else url
    where = f"bytes {start}-{stop - 1} of {label}" + (f" ({url})" if what else "")
    into = bytearray()
    seen: dict[str, str | int | None] = {}
    last_error = "no attempt made"
    for attempt in range(retries + 1):
        try:
            _range_once(url, start, stop, into, if_match, seen)
            size = seen.get("size")
            etag, version = seen.get("etag"), seen.get("version_id")
            return RangeReply(bytes(into), size if isinstance(size, int) else -1,
                              etag if isinstance(etag, str) else None,
                              version if isinstance(version, str) else None)
        except _Retryable as error:
            last_error = str(error)
            if attempt == retries:
                break
            wait = backoff(attempt, error.wait)
            LOGGER.warning("Reading %s failed (%s). Retrying in %.1f s.", where, error, wait)
            pause(wait)
        except RequestRefused as error:
            kind = ObjectChanged if isinstance(error, ObjectChanged) else RequestRefused
            raise kind(f"Could not read {where}: {error}", url=url, status=error.status,
                       server_message=error.server_message) from None
        except DownloadError as error:
            raise DownloadError(f"Could not read {where}: {error}") from None
    raise DownloadError(f"Could not read {where} after {retries + 1} attempts: {last_error}. "
                        "Check the connection and the data source; the server must honour HTTP "
                        "Range requests.")


def read_range(url: str, start: int, stop: int, *, retries: int = DEFAULT_RETRIES) -> bytes:
    """Return bytes ``[start, stop)`` of the object at *url*, with an HTTP ``Range`` request.

    The same rules as :func:`download`: connection errors, time-outs, short bodies and 5xx/429
    answers are retried with backoff (``Retry-After`` honoured), a cut is resumed from the last
    byte received (nothing is fetched twice), 403/404 are not retried. A server that ignores
    ``Range`` (HTTP 200) is hung up on at once, never read whole, and asked again.
    :func:`fetch_range` does the same and also pins the object's version.

    Parameters
    ----------
    url : str
        The object's URL (https, or http to loopback or a mirror you named).
    start, stop : int
        The byte range, *stop* excluded.
    retries : int
        Attempts after the first one.

    Returns
    -------
    bytes
        Exactly ``stop - start`` bytes.

    Raises
    ------
    DownloadError
        After the last attempt, or at once for 403/404/416; names the URL, the range and the cause.
    """
    check_url_allowed(url)
    if stop <= start:
        return b""
    return fetch_range(url, start, stop, retries=retries).data


def _get_once(url: str, headers: dict[str, str], read_timeout: float | None,
              refuses: Callable[[int, bytes], str | None] | None) -> bytes:
    """One attempt of :func:`get_bytes`."""
    response = _get(url, headers, read_timeout)
    with response:
        status = response.status_code
        if status >= 300:
            body = _error_body(response)
            said = server_message(body)
            final = refuses(status, body) if refuses is not None else None
            if final is None and status in RETRY_STATUSES:
                raise _Retryable(f"server answered HTTP {status} ({said})", wait=_retry_after(response))
            said = final or said
            raise RequestRefused(f"HTTP {status} ({response.reason}); the server said: {said}",
                                 url=url, status=status, server_message=said, body=body)
        chunks: list[bytes] = []
        try:
            chunks.extend(response.iter_content(CHUNK_SIZE))  # what arrived stays in chunks
        except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
                OSError) as error:  # a cut body (IncompleteRead), a time-out, a reset
            got = sum(len(c) for c in chunks)
            raise _Retryable(f"connection broken after {got} bytes of the body "
                             f"({type(error).__name__}: {error})") from error
        length = response.headers.get("Content-Length")
        wire = response.raw.tell()  # bytes off the wire (before any gzip decoding)
        if length is not None and length.isdigit() and wire != int(length):  # urllib3 1.x
            raise _Retryable(f"short body: got {wire} of {length} bytes")
        return b"".join(chunks)


def get_bytes(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    retries: int = DEFAULT_RETRIES,
    read_timeout: float | None = None,
    refuses: Callable[[int, bytes], str | None] | None = None,
    what: str | None = None,
) -> bytes:
    """GET *url* whole into memory, under the package's one retry policy.

    For requests that are not files (Allen API queries, S3 listings): connection errors,
    time-outs (a stall), cut or short bodies and HTTP 408/429/5xx are retried with
    :func:`backoff` (``Retry-After`` honoured); a host name that cannot be resolved fails at
    once; any other status (a 4xx) fails at once with :class:`RequestRefused`, quoting the
    server's own message.

    Parameters
    ----------
    url : str
        The URL (https, or http to loopback or a mirror you named).
    headers : dict or None
        Extra request headers.
    retries : int
        Attempts after the first one.
    read_timeout : float or None
        Seconds to wait for bytes (default :data:`DEFAULT_TIMEOUT`; ``ABC_HELPERS_TIMEOUT`` wins).
    refuses : callable or None
        ``refuses(status, body) -> message or None``, asked about every error status first: a
        message makes the answer final (no retry), e.g. the Allen API's error envelope, which it
        sends with HTTP 500 for a query it cannot run.
    what : str or None
        What the request is, for messages (default: the URL).

    Returns
    -------
    bytes
        The body (decoded if the server compressed it).

    Raises
    ------
    RequestRefused
        At once, for a 4xx or an answer *refuses* recognises (a :class:`DownloadError`).
    DownloadError
        After the last attempt, or at once if the host cannot be resolved; names the URL and the
        cause.
    """
    check_url_allowed(url)
    label = what or url
    last_error = "no attempt made"
    for attempt in range(retries + 1):
        try:
            return _get_once(url, dict(headers or {}), read_timeout, refuses)
        except _Retryable as error:
            last_error = str(error)
            if attempt == retries:
                break
            wait = backoff(attempt, error.wait)
            LOGGER.warning("%s failed (%s). Retrying in %.1f s.", label, error, wait)
            pause(wait)
        except RequestRefused as error:
            raise RequestRefused(f"{label}: {error}. URL: {url}", url=url, status=error.status,
                                 server_message=error.server_message, body=error.body) from None
        except DownloadError as error:  # the host does not resolve, a refused redirect
            raise DownloadError(f"{label}: {error} URL: {url}") from None
    raise DownloadError(f"{label}: gave up after {retries + 1} attempts: {last_error}. URL: {url} "
                        "Check the connection and the data source, and try again.")


_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def list_objects(bucket_url: str, prefix: str = "", timeout: tuple[float, float] | None = None) -> list[dict]:
    """List every object under *prefix* with S3 ListObjectsV2, following continuation tokens.

    Parameters
    ----------
    bucket_url : str
        The bucket's URL ending in ``/`` (:meth:`abc_helpers.sources.Source.bucket_url`).
    prefix : str
        Only keys that start with it.

    Returns
    -------
    list of dict
        ``{"key", "size", "etag", "last_modified"}`` per object, in key order.

    Raises
    ------
    DownloadError
        If the listing fails (the message names the bucket URL and the HTTP status).
    """
    import xml.etree.ElementTree as ET
    from urllib.parse import urlencode

    check_url_allowed(bucket_url)
    out: list[dict] = []
    token = None
    for _attempt in range(1000):  # 1000 pages of 1000 keys
        params = {"list-type": "2", "prefix": prefix}
        if token:
            params["continuation-token"] = token
        url = f"{bucket_url}?{urlencode(params)}"
        body = get_bytes(url, read_timeout=timeout[1] if timeout else None,
                         what=f"Could not list {bucket_url} (prefix '{prefix}')")
        try:
            root = ET.fromstring(body)
        except ET.ParseError as error:
            msg = (f"Could not list {bucket_url} (prefix '{prefix}'): the answer is not an S3 "
                   f"listing ({error}). Check the data source URL.")
            raise DownloadError(msg) from None
        for item in root.iter(f"{_S3_NS}Contents"):
            out.append({
                "key": item.findtext(f"{_S3_NS}Key"),
                "size": int(item.findtext(f"{_S3_NS}Size") or 0),
                "etag": (item.findtext(f"{_S3_NS}ETag") or "").strip('"'),
                "last_modified": item.findtext(f"{_S3_NS}LastModified"),
            })
        token = root.findtext(f"{_S3_NS}NextContinuationToken")
        if root.findtext(f"{_S3_NS}IsTruncated") != "true" or not token:
            break
    return out
