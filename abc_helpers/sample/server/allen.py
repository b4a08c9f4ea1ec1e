"""The sample server's bridge to the Allen API routes of :mod:`abc_helpers.sample.allen_api`."""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

from .s3 import Exchange, S3Error, serve_file

__all__ = ["API_PREFIXES", "send_api_error", "serve_allen_api"]

LOGGER = logging.getLogger("abc_helpers.sample")

#: Prefixes of the Allen API routes (``http://api.brain-map.org`` paths).
API_PREFIXES = ("/api/v2/", "/grid_data/")


def serve_allen_api(exchange: Exchange, api_root: Path | None) -> None:
    """Answer one Allen API request (``/api/v2/...``, ``/grid_data/...``).

    The routes are answered by :func:`abc_helpers.sample.allen_api.handle` (imported on first
    use); files such as grid zips are sent with ``Range`` and conditional requests, as S3 does.

    Parameters
    ----------
    exchange : Exchange
        The request to answer.
    api_root : Path or None
        The folder holding ``allen-api/``; None answers 404 (this world has no Allen API data).

    Raises
    ------
    S3Error
        416 InvalidRange or 412 PreconditionFailed for a file; 500 InternalError for a
        damaged grid zip.
    """
    head_only = exchange.method == "HEAD"
    if api_root is None:
        message = f"Not found: {exchange.url_path} (this world has no 'allen-api' folder)."
        return exchange.send_bytes(404, {"Content-Type": "text/plain"}, message.encode())
    from .. import allen_api  # numpy and the RMA parser: only when the API is used

    try:
        status, headers, body = allen_api.handle(api_root, exchange.method, exchange.url_path,
                                                 exchange.query)
        if head_only and status == 405:
            status, headers, body = allen_api.handle(api_root, "GET", exchange.url_path,
                                                     exchange.query)
    except zipfile.BadZipFile as err:
        LOGGER.exception("Sample server failed on %s %s", exchange.method, exchange.url_path)
        raise S3Error(500, "InternalError", f"{type(err).__name__}: {err}") from err
    headers = {k: v for k, v in headers.items() if k.lower() not in ("content-length", "connection")}
    if isinstance(body, (str, os.PathLike)):
        with open(body, "rb") as fh:
            if status == 200:
                headers.setdefault("Accept-Ranges", "bytes")
                return serve_file(exchange, fh, headers, headers.get("ETag"))
            return exchange.send_file(status, headers, fh, 0, os.fstat(fh.fileno()).st_size)
    exchange.send_bytes(status, headers, bytes(body), faulty=True)
    return None


def send_api_error(exchange: Exchange, status: int, message: str) -> None:
    """Answer with the Allen API's own error envelope (``{"success": false, ..., "msg": ...}``,
    or its one-row CSV for a ``.csv`` route) and *status*, as the API rejects a request."""
    from .. import allen_api

    fmt = "csv" if exchange.url_path.endswith(".csv") else "json"
    status, headers, body = allen_api.error_response(message, fmt, status)
    exchange.send_bytes(status, headers, bytes(body))
