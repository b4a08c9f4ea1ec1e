"""A model of the network link between a client and the sample server: latency and bandwidth.

On loopback every byte arrives at once, so a benchmark run against the sample server says
nothing about a real link. A :class:`Link` makes each response pay a first-byte latency and
sends its body no faster than a bandwidth, e.g. ``Link(latency_s=0.02, bandwidth=50e6)`` for a
link with 20 ms to the first byte and 50 MB/s. Each response is paced on its own (like one TCP
connection of that bandwidth): parallel requests each get the whole bandwidth.

The guarantees are lower bounds, which is what a test can rely on: a response's headers are not
sent before *latency_s* has passed since the request was read, and byte ``i`` of its body
(counting from 0) is not sent before ``(i + 1) / bandwidth`` seconds after the headers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["Link", "Pacer"]


@dataclass(frozen=True)
class Link:
    """Latency and bandwidth the sample server adds to every response.

    Parameters
    ----------
    latency_s : float
        Seconds to wait before answering each request (the time to the first byte), 0 or more.
    bandwidth : float or None
        Body bytes per second of each response; None for no limit.

    Raises
    ------
    ValueError
        If *latency_s* is negative or *bandwidth* is not a positive number.

    Examples
    --------
    >>> link = Link(latency_s=0.02, bandwidth=50e6)
    >>> str(link)
    '20 ms, 50 MB/s'
    >>> Link.from_units(latency_ms=20, bandwidth_mb_s=50) == link
    True
    """

    latency_s: float = 0.0
    bandwidth: float | None = None

    def __post_init__(self) -> None:
        if not self.latency_s >= 0:  # also catches NaN
            msg = f"Link latency_s={self.latency_s!r} must be 0 or more seconds, e.g. 0.02."
            raise ValueError(msg)
        if self.bandwidth is not None and not self.bandwidth > 0:
            msg = (f"Link bandwidth={self.bandwidth!r} must be a positive number of bytes per "
                   "second (e.g. 50e6 for 50 MB/s), or None for no limit.")
            raise ValueError(msg)

    @classmethod
    def from_units(cls, latency_ms: float = 0.0, bandwidth_mb_s: float | None = None) -> Link:
        """A link from milliseconds and megabytes (10**6 bytes) per second, as on the command line.

        Parameters
        ----------
        latency_ms : float
            Time to the first byte, in milliseconds.
        bandwidth_mb_s : float or None
            Megabytes (10**6 bytes) per second; None or 0 for no limit.
        """
        bandwidth = bandwidth_mb_s * 1e6 if bandwidth_mb_s else None
        return cls(latency_s=latency_ms / 1000.0, bandwidth=bandwidth)

    @property
    def is_ideal(self) -> bool:
        """True when the link adds nothing (no latency, no bandwidth limit)."""
        return self.latency_s == 0 and self.bandwidth is None

    def min_seconds(self, body_bytes: int) -> float:
        """The least time a response with *body_bytes* of body can take over this link.

        Examples
        --------
        >>> Link(latency_s=0.02, bandwidth=1e6).min_seconds(500_000)
        0.52
        """
        transfer = body_bytes / self.bandwidth if self.bandwidth else 0.0
        return self.latency_s + transfer

    def pacer(self) -> Pacer | None:
        """A fresh :class:`Pacer` for one response body (None when there is no bandwidth limit)."""
        return Pacer(self.bandwidth) if self.bandwidth else None

    def __str__(self) -> str:
        bandwidth = f"{self.bandwidth / 1e6:g} MB/s" if self.bandwidth else "unlimited"
        return f"{self.latency_s * 1000:g} ms, {bandwidth}"


class Pacer:
    """Paces one response body at *bandwidth* bytes per second.

    Call :meth:`wait` before sending each chunk with the chunk's size, then :meth:`sent` with the
    bytes that actually went out. A chunk is released only when the bandwidth allows all of it,
    so the last byte of a body of N bytes leaves no sooner than N / bandwidth seconds after the
    pacer was made.

    Parameters
    ----------
    bandwidth : float
        Bytes per second.
    """

    def __init__(self, bandwidth: float) -> None:
        self.bandwidth = float(bandwidth)
        self.start = time.monotonic()
        self.done = 0
        #: The size of the chunks to send: about 5 ms of the link, between 4 KiB and 1 MiB.
        self.chunk = int(min(max(self.bandwidth * 0.005, 4096), 1 << 20))

    def wait(self, count: int) -> None:
        """Sleep until *count* more bytes may be sent."""
        due = self.start + (self.done + count) / self.bandwidth
        delay = due - time.monotonic()
        while delay > 0:
            time.sleep(delay)
            delay = due - time.monotonic()

    def sent(self, count: int) -> None:
        """Record that *count* bytes were sent."""
        self.done += count
