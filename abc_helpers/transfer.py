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


def _timeout() -> tuple[float, float]:
    read = os.environ.get("ABC_HELPERS_TIMEOUT")
    return (DEFAULT_TIMEOUT[0], float(read)) if read else DEFAULT_TIMEOUT


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


def _new_hasher(algorithm: str):
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
    hasher = _new_hasher(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            hasher.update(chunk)
    return f"{algorithm}:{hasher.hexdigest()}"


class _StreamHasher:
    """Hash chunks in a second thread, so hashing overlaps receiving and writing."""

    def __init__(self, algorithm: str, prefix_path: Path | None = None) -> None:
        self.hasher = _new_hasher(algorithm)
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
        self.hasher = _new_hasher(algorithm)
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


def _get(url: str, headers: dict[str, str]) -> requests.Response:
    """GET *url* (streamed) with the shared session; connection failures become retryable."""
    try:
        return get_session().get(url, headers=headers, stream=True, timeout=_timeout())
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
        if status in (429, 500, 502, 503, 504):
            raise _Retryable(f"server answered HTTP {status}", wait=_retry_after(response))
        if status in (401, 403, 404, 410):
            raise DownloadError(
                f"HTTP {status} ({response.reason}): the server has no such file or refuses it. "
                "Check the file name and the release (manifest) you loaded, and the data source."
            )
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
            wait = error.wait if error.wait is not None else min(0.5 * 2**attempt, MAX_WAIT)
            LOGGER.warning("Download of '%s' failed (%s). Retrying in %.1f s (%d more attempt%s).",
                           path.name, error, wait, retries - attempt, "s" if retries - attempt != 1 else "")
            time.sleep(wait)
            continue
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


def _range_once(url: str, start: int, stop: int, into: bytearray) -> None:
    """One attempt at bytes ``[start + len(into), stop)`` of *url*, appended to *into* as they come."""
    first = start + len(into)
    response = _get(url, {"Range": f"bytes={first}-{stop - 1}"})
    with response:
        status = response.status_code
        if status in (429, 500, 502, 503, 504):
            raise _Retryable(f"server answered HTTP {status}", wait=_retry_after(response))
        if status in (401, 403, 404, 410, 416):
            raise DownloadError(f"HTTP {status} ({response.reason}): the server has no such object, "
                                "refuses it, or it is shorter than the catalog says")
        if status == 200:  # the whole object is coming: drop the connection rather than read it
            raise _Retryable("the server ignored the Range request (HTTP 200 instead of 206)", wait=0)
        if status != 206:
            raise _Retryable(f"unexpected HTTP {status} ({response.reason})")
        if not response.headers.get("Content-Range", "").startswith(f"bytes {first}-{stop - 1}/"):
            raise _Retryable(f"the server sent another range ({response.headers.get('Content-Range')!r})")
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


def read_range(url: str, start: int, stop: int, *, retries: int = DEFAULT_RETRIES) -> bytes:
    """Return bytes ``[start, stop)`` of the object at *url*, with an HTTP ``Range`` request.

    The same rules as :func:`download`: connection errors, time-outs, short bodies and 5xx/429
    answers are retried with backoff (``Retry-After`` honoured), a cut is resumed from the last
    byte received (nothing is fetched twice), 403/404 are not retried. A server that ignores
    ``Range`` (HTTP 200) is hung up on at once, never read whole, and asked again.

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
    into = bytearray()
    last_error = "no attempt made"
    for attempt in range(retries + 1):
        try:
            _range_once(url, start, stop, into)
            return bytes(into)
        except _Retryable as error:
            last_error = str(error)
            if attempt == retries:
                break
            wait = error.wait if error.wait is not None else min(0.5 * 2**attempt, MAX_WAIT)
            LOGGER.warning("Reading bytes %d-%d of %s failed (%s). Retrying in %.1f s.",
                           start, stop - 1, url, error, wait)
            time.sleep(wait)
        except DownloadError as error:
            raise DownloadError(f"Could not read bytes {start}-{stop - 1} of {url}: {error}") from None
    raise DownloadError(f"Could not read bytes {start}-{stop - 1} of {url} after {retries + 1} "
                        f"attempts: {last_error}. Check the connection and the data source; a "
                        "server must honour HTTP Range requests to serve a gene index.")


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
    session = get_session()
    out: list[dict] = []
    token = None
    for _attempt in range(1000):  # 1000 pages of 1000 keys
        params = {"list-type": "2", "prefix": prefix}
        if token:
            params["continuation-token"] = token
        url = f"{bucket_url}?{urlencode(params)}"
        response: requests.Response | None = None
        for retry in range(DEFAULT_RETRIES + 1):
            try:
                response = session.get(url, timeout=timeout or _timeout())
            except (requests.ConnectionError, requests.Timeout) as error:
                reason = unresolvable_host(error)
                if reason is not None:
                    raise DownloadError(f"Could not list {bucket_url} (prefix '{prefix}'): "
                                        f"{host_not_found(url, reason)}") from None
                if retry == DEFAULT_RETRIES:
                    raise DownloadError(f"Could not list {bucket_url} (prefix '{prefix}'): {error}. "
                                        "Check the connection and the data source.") from None
                time.sleep(min(0.5 * 2**retry, MAX_WAIT))
                continue
            if response.status_code in (500, 502, 503, 504) and retry < DEFAULT_RETRIES:
                time.sleep(_retry_after(response) or min(0.5 * 2**retry, MAX_WAIT))
                continue
            break
        if response is None or response.status_code != 200:
            raise DownloadError(f"Could not list {bucket_url} (prefix '{prefix}'): HTTP "
                                f"{getattr(response, 'status_code', None)}. Check the data source URL.")
        root = ET.fromstring(response.content)
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
