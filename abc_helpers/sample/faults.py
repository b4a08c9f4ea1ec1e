"""Fault plans for the reliability suite: make the sample server misbehave on purpose.

A :class:`FaultPlan` holds :class:`Fault` rules. For each request the server asks the plan for
the first rule that matches the request path (an :mod:`fnmatch` pattern on the path without its
leading slash, e.g. ``'*units.csv'`` or ``'allen-brain-cell-atlas/metadata/*'``) and still has
uses left; that rule is consumed once and applied to the response. Rules are written as short
strings, the same on the command line and in tests::

    drop-after=1000000,key=*units.csv,count=2   send headers and 1 MB of body, then hang up
    drop-after=40%                              send 40 % of each body, then hang up
    status=503,retry-after=1,count=1            answer 503 SlowDown (S3 XML) once
    stall=2.5                                   wait 2.5 s before the first byte
    stall-after=4096,stall=1                    wait 1 s after 4096 bytes of body
    stall-after=50%,stall=1                     wait 1 s in the middle of each body
    corrupt-at=100                              flip the byte at offset 100 of the body
    corrupt-at=50%                              flip the byte in the middle of each body
    short-by=10                                 announce the full length, send 10 bytes fewer
    ignore-range                                answer 200 with the whole object despite Range

Options every rule takes: ``key=PATTERN`` (default ``*``), ``count=N`` (default: unlimited) and
``method=GET`` (default: GET for the body faults, any method for ``status`` and ``stall``).

Offsets are in bytes of the body being sent (for a ``Range`` request: of the range's body), or,
written ``N%``, a fraction of each body: ``drop-after=50%`` cuts a 28-byte range after 14 bytes and
a 2 MB object after 1 MB, so the fault lands inside every body it meets. An absolute offset past
the end of a body changes nothing.

**Hits and effects.** A rule's *hits* count the requests it matched (and used up); its *effects*
count the requests whose response it changed: a status sent instead of the object, a stall before
bytes it withheld, a cut or short body that withheld bytes, a flipped byte inside the body, a
``Range`` that was asked for and ignored. An effect is counted when the server commits to it
(before the first byte of a body fault goes out), so a client that hangs up early does not hide it. Tests assert the effects (:meth:`FaultPlan.effective`),
so a case cannot pass because its fault fell past the end of a body.
"""

from __future__ import annotations

import fnmatch
import math
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["Fault", "FaultPlan", "FaultUse"]

_INT_OPTIONS = {"count", "status"}
_OFFSET_OPTIONS = {"drop_after", "stall_after", "corrupt_at", "short_by"}
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
        Answer with this HTTP status and an S3-style XML error instead of the object (on the
        Allen API routes, a 4xx other than 408/429 answers the API's own error envelope, whose
        ``msg`` a client must quote).
    retry_after : float or None
        With *status*: the ``Retry-After`` header to send, in seconds.
    drop_after : int, float or None
        Send the headers and this many bytes of body, then close the connection. An int counts
        bytes; a float in [0, 1) is a fraction of each body (``'drop-after=40%'`` parses to 0.4).
    stall : float or None
        Seconds to wait before the first byte (or, with *stall_after*, in the middle of the body).
    stall_after : int, float or None
        Stall after this many bytes of body (or this fraction of it) instead of before the headers.
    corrupt_at : int, float or None
        Flip the bits of the body byte at this offset (or fraction); the length stays right.
    short_by : int, float or None
        Announce the full ``Content-Length`` but send this many bytes fewer (a float in (0, 1]:
        this fraction of the body, at least one byte), then close.
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
    drop_after: int | float | None = None
    stall: float | None = None
    stall_after: int | float | None = None
    corrupt_at: int | float | None = None
    short_by: int | float | None = None
    ignore_range: bool = False
    method: str | None = None

    def __post_init__(self) -> None:
        for name in ("count", "drop_after", "stall_after", "corrupt_at", "short_by"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"Fault option '{name}' is {value}: it must be 0 or more.")
            if isinstance(value, float):
                low_ok = value > 0 if name == "short_by" else value >= 0
                high_ok = value <= 1 if name == "short_by" else value < 1
                if not (low_ok and high_ok):
                    option = name.replace("_", "-")
                    msg = (f"Fault option '{option}' is the fraction {value}: a fraction of the body "
                           "must be below 100% (e.g. '{option}=50%'), or give whole bytes.")
                    raise ValueError(msg.replace("{option}", option))
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
                if attr in _OFFSET_OPTIONS:
                    options[attr] = (float(value[:-1]) / 100.0 if value.endswith("%")
                                     else int(value))
                elif attr in _INT_OPTIONS:
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
            if f.name in _OFFSET_OPTIONS and isinstance(value, float):
                value = f"{value * 100:g}%"
            parts.append(name if value is True else f"{name}={value}")
        return ",".join(parts)

    def offset(self, name: str, length: int) -> int | None:
        """The byte offset option *name* means in a body of *length* bytes (None: not set).

        Parameters
        ----------
        name : str
            ``'drop_after'``, ``'stall_after'``, ``'corrupt_at'`` or ``'short_by'``.
        length : int
            The body's length in bytes.

        Examples
        --------
        >>> Fault.parse("drop-after=50%").offset("drop_after", 28)
        14
        >>> Fault.parse("short-by=1%").offset("short_by", 28)
        1
        >>> Fault.parse("corrupt-at=100").offset("corrupt_at", 28)
        100
        """
        value = getattr(self, name)
        if value is None or not isinstance(value, float):
            return value
        if name == "short_by":
            return min(length, max(1, math.ceil(length * value)))
        return int(length * value)

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


@dataclass
class FaultUse:
    """One request's use of a rule: the server reports here what the rule changed.

    Attributes
    ----------
    plan : FaultPlan
        The plan the rule belongs to.
    index : int
        The rule's position in the plan.
    fault : Fault
        The rule.
    effects : set of str
        The kinds of change made to this request's response so far (e.g. ``{'drop-after'}``).
    """

    plan: FaultPlan
    index: int
    fault: Fault
    effects: set[str] = field(default_factory=set)

    def took_effect(self, kind: str) -> None:
        """Record that the rule changed the response (*kind*, e.g. ``'stall'``); a request counts
        once in the rule's effects however many changes it had."""
        first = not self.effects
        self.effects.add(kind)
        if first:
            self.plan._took_effect(self.index)


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
    >>> plan.effective()  # take() alone changes no response: only the server reports effects
    [('count=1,status=503', 0), ('key=*.csv,drop-after=10', 0)]
    """

    def __init__(self, faults: Iterable[Fault | str] = ()) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._faults: list[Fault] = []
        self._left: list[int | None] = []
        self._hits: list[int] = []
        self._effective: list[int] = []
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
            self._effective.append(0)

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._faults.clear()
            self._left.clear()
            self._hits.clear()
            self._effective.clear()

    def take(self, path: str, method: str = "GET") -> Fault | None:
        """Return the first rule matching *path* that has uses left, and use it up once.

        Parameters
        ----------
        path : str
            The request path, percent-decoded, without its leading slash.
        method : str
            The HTTP method.
        """
        use = self.claim(path, method)
        return use.fault if use is not None else None

    def claim(self, path: str, method: str = "GET") -> FaultUse | None:
        """Like :meth:`take`, but return a :class:`FaultUse` to report the rule's effects to.

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
                self._changed.notify_all()
                return FaultUse(self, i, fault)
        return None

    def _took_effect(self, index: int) -> None:
        with self._lock:
            if index < len(self._effective):  # clear() may have run meanwhile
                self._effective[index] += 1
                self._changed.notify_all()

    @property
    def faults(self) -> list[Fault]:
        """The rules, in priority order."""
        with self._lock:
            return list(self._faults)

    def hits(self) -> list[tuple[str, int]]:
        """How often each rule was applied so far: ``[(rule text, n), ...]``."""
        with self._lock:
            return [(str(f), n) for f, n in zip(self._faults, self._hits, strict=True)]

    def effective(self) -> list[tuple[str, int]]:
        """How many requests each rule changed so far: ``[(rule text, n), ...]``.

        A hit that changed nothing (an offset past the end of the body, ``ignore-range`` on a
        request without ``Range``) is not counted; see the module's docstring.
        """
        with self._lock:
            return [(str(f), n) for f, n in zip(self._faults, self._effective, strict=True)]

    def wait_effective(self, n: int = 1, index: int = 0, timeout: float = 10.0) -> int:
        """Wait until rule *index* has changed *n* responses (or *timeout* seconds passed).

        Parameters
        ----------
        n : int
            The count to wait for.
        index : int
            The rule's position in the plan.
        timeout : float
            Seconds to wait at most.

        Returns
        -------
        int
            The rule's effect count when the wait ended (below *n* after a time-out).
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._effective[index] < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return self._effective[index]

    def remaining(self) -> list[tuple[str, int | None]]:
        """Uses left of each rule (None: unlimited)."""
        with self._lock:
            return [(str(f), n) for f, n in zip(self._faults, self._left, strict=True)]

    def __len__(self) -> int:
        return len(self._faults)

    def __repr__(self) -> str:
        return f"FaultPlan({[str(f) for f in self.faults]!r})"

