"""Fault plans for the reliability suite: make the sample server misbehave on purpose.

A :class:`FaultPlan` holds :class:`Fault` rules. For each request the server asks the plan for
the first rule that matches the request path (an :mod:`fnmatch` pattern on the path without its
leading slash, e.g. ``'*units.csv'`` or ``'allen-brain-cell-atlas/metadata/*'``) and still has
uses left; that rule is consumed once and applied to the response. Rules are written as short
strings, the same on the command line and in tests::

    drop-after=1000000,key=*units.csv,count=2   send headers and 1 MB of body, then hang up
    status=503,retry-after=1,count=1            answer 503 SlowDown (S3 XML) once
    stall=2.5                                   wait 2.5 s before the first byte
    stall-after=4096,stall=1                    wait 1 s after 4096 bytes of body
    corrupt-at=100                              flip the byte at offset 100 of the body
    short-by=10                                 announce the full length, send 10 bytes fewer
    ignore-range                                answer 200 with the whole object despite Range

Options every rule takes: ``key=PATTERN`` (default ``*``), ``count=N`` (default: unlimited) and
``method=GET`` (default: GET for the body faults, any method for ``status`` and ``stall``).
"""

from __future__ import annotations

import fnmatch
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Fault", "FaultPlan"]

_INT_OPTIONS = {"count", "status", "drop_after", "stall_after", "corrupt_at", "short_by"}
_FLOAT_OPTIONS = {"stall", "retry_after"}
_STATUSES = {400, 403, 404, 408, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Fault:
    """One fault rule.

    Parameters
    ----------
    key : str
        :mod:`fnmatch` pattern on the request path without its leading slash.
    count : int or None
        How many matching requests the rule applies to; None for all of them.
    status : int or None
        Answer with this HTTP status and an S3-style XML error instead of the object.
    retry_after : float or None
        With *status*: the ``Retry-After`` header to send, in seconds.
    drop_after : int or None
        Send the headers and this many bytes of body, then close the connection.
    stall : float or None
        Seconds to wait before the first byte (or, with *stall_after*, in the middle of the body).
    stall_after : int or None
        Stall after this many bytes of body instead of before the headers.
    corrupt_at : int or None
        Flip the bits of the body byte at this offset (the length stays right).
    short_by : int or None
        Announce the full ``Content-Length`` but send this many bytes fewer, then close.
    ignore_range : bool
        Answer 200 with the whole object even when the request asks for a ``Range``.
    method : str or None
        Only requests with this method; None means GET for the body faults and any method for
        *status* and *stall*.
    """

    key: str = "*"
    count: int | None = None
    status: int | None = None
    retry_after: float | None = None
    drop_after: int | None = None
    stall: float | None = None
    stall_after: int | None = None
    corrupt_at: int | None = None
    short_by: int | None = None
    ignore_range: bool = False
    method: str | None = None

    def __post_init__(self) -> None:
        for name in ("count", "drop_after", "stall_after", "corrupt_at", "short_by"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"Fault option '{name}' is {value}: it must be 0 or more.")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"Fault status {self.status} is not an HTTP status: use e.g. 503.")
        if self.stall_after is not None and self.stall is None:
            raise ValueError("Fault 'stall-after' needs 'stall=SECONDS' to say how long to stall.")
        if not self.kinds:
            raise ValueError(
                f"Fault {self!r} does nothing: give one of status=, drop-after=, stall=, "
                "corrupt-at=, short-by= or ignore-range."
            )

    # -- parsing ----------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> Fault:
        """Parse one rule such as ``'drop-after=1000000,key=*units.csv,count=2'``.

        Raises
        ------
        ValueError
            If an option is unknown or its value is not a number where one is needed.
        """
        known = {f.name for f in fields(cls)}
        options: dict[str, Any] = {}  # option name -> its int, float, bool or str value
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            name, sep, value = part.partition("=")
            attr = name.strip().lower().replace("-", "_")
            if attr not in known:
                msg = (f"Unknown fault option '{name}' in '{text}': use key=, count=, method=, "
                       "status=, retry-after=, drop-after=, stall=, stall-after=, corrupt-at=, "
                       "short-by= or ignore-range.")
                raise ValueError(msg)
            value = value.strip()
            try:
                if attr in _INT_OPTIONS:
                    options[attr] = int(value)
                elif attr in _FLOAT_OPTIONS:
                    options[attr] = float(value)
                elif attr == "ignore_range":
                    options[attr] = (not sep) or value.lower() in ("1", "true", "yes", "on")
                elif attr == "method":
                    options[attr] = value.upper() or None
                else:
                    options[attr] = value or "*"
            except ValueError:
                msg = f"Fault option '{name}' in '{text}' needs a number, got '{value}'."
                raise ValueError(msg) from None
        return cls(**options)

    def __str__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value is False or (f.name == "key" and value == "*"):
                continue
            name = f.name.replace("_", "-")
            parts.append(name if value is True else f"{name}={value}")
        return ",".join(parts)

    # -- matching ---------------------------------------------------------------------------
    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds of misbehaviour this rule causes, e.g. ``('drop-after',)``."""
        kinds = []
        if self.status is not None:
            kinds.append("status")
        if self.stall is not None:
            kinds.append("stall-after" if self.stall_after is not None else "stall")
        for name in ("drop_after", "corrupt_at", "short_by"):
            if getattr(self, name) is not None:
                kinds.append(name.replace("_", "-"))
        if self.ignore_range:
            kinds.append("ignore-range")
        return tuple(kinds)

    @property
    def touches_body(self) -> bool:
        """True if the rule changes how the body is sent (rather than whether it is)."""
        return (self.drop_after is not None or self.stall_after is not None
                or self.corrupt_at is not None or self.short_by is not None)

    def matches(self, path: str, method: str) -> bool:
        """Return True if the rule applies to a request for *path* with *method*."""
        if self.method is not None:
            if method != self.method:
                return False
        elif (self.touches_body or self.ignore_range) and method != "GET":
            return False
        return fnmatch.fnmatchcase(path, self.key)


class FaultPlan:
    """A thread-safe list of :class:`Fault` rules, consumed as requests match them.

    Parameters
    ----------
    faults : iterable of Fault or str
        The rules, in priority order; strings are parsed with :meth:`Fault.parse`.

    Examples
    --------
    >>> plan = FaultPlan.parse(["status=503,count=1", "drop-after=10,key=*.csv"])
    >>> plan.take("bucket/a.csv", "GET").status
    503
    >>> plan.take("bucket/a.csv", "GET").drop_after
    10
    >>> plan.take("bucket/a.txt", "GET") is None
    True
    """

    def __init__(self, faults: Iterable[Fault | str] = ()) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._left: list[int | None] = []
        self._hits: list[int] = []
        for fault in faults:
            self.add(fault)

    @classmethod
    def parse(cls, specs: Iterable[str] | str) -> FaultPlan:
        """Build a plan from rule strings (one string or several), e.g. from ``--fault``."""
        if isinstance(specs, str):
            specs = [s for s in re.split(r"[;\n]", specs) if s.strip()]
        return cls(Fault.parse(s) for s in specs)

    @classmethod
    def coerce(cls, faults: FaultPlan | Fault | str | Iterable[Fault | str] | None) -> FaultPlan | None:
        """Return *faults* as a plan (None stays None)."""
        if faults is None or isinstance(faults, FaultPlan):
            return faults
        if isinstance(faults, Fault):
            return cls([faults])
        if isinstance(faults, str):
            return cls.parse(faults)
        return cls(faults)

    def add(self, fault: Fault | str) -> None:
        """Append a rule (after the existing ones)."""
        if isinstance(fault, str):
            fault = Fault.parse(fault)
        with self._lock:
            self._faults.append(fault)
            self._left.append(fault.count)
            self._hits.append(0)

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._faults.clear()
            self._left.clear()
            self._hits.clear()

    def take(self, path: str, method: str = "GET") -> Fault | None:
        """Return the first rule matching *path* that has uses left, and use it up once.

        Parameters
        ----------
        path : str
            The request path, percent-decoded, without its leading slash.
        method : str
            The HTTP method.
        """
        if not self._faults:
            return None
        with self._lock:
            for i, fault in enumerate(self._faults):
                left = self._left[i]
                if left == 0 or not fault.matches(path, method):
                    continue
                if left is not None:
                    self._left[i] = left - 1
                self._hits[i] += 1
                return fault
        return None

    @property
    def faults(self) -> list[Fault]:
        """The rules, in priority order."""
        with self._lock:
            return list(self._faults)

    def hits(self) -> list[tuple[str, int]]:
        """How often each rule was applied so far: ``[(rule text, n), ...]``."""
        with self._lock:
            return [(str(f), n) for f, n in zip(self._faults, self._hits, strict=True)]

    def remaining(self) -> list[tuple[str, int | None]]:
        """Uses left of each rule (None: unlimited)."""
        with self._lock:
            return [(str(f), n) for f, n in zip(self._faults, self._left, strict=True)]

    def __len__(self) -> int:
        return len(self._faults)

    def __repr__(self) -> str:
        return f"FaultPlan({[str(f) for f in self.faults]!r})"

