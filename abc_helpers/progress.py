"""Progress bars: one line per call, on stderr.

Every bar of the package is a :class:`ProgressBar` (a ``tqdm.tqdm``). A bar opened while another
one of this module is open (a file downloaded inside ``get_gene_data``, a matrix indexed inside
``build_gene_index``) is *nested*: it draws on the same line as the outer bar (no cursor movement,
so no terminal escape codes) and is cleared when it closes (``leave=False``). A call therefore
leaves at most one line, its overall bar, in a terminal or a notebook's stored output, while an
interactive user still sees every bar while it runs.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, ClassVar

from tqdm import tqdm

__all__ = ["ProgressBar", "open_bars"]


class ProgressBar(tqdm):
    """A tqdm bar on stderr that shares the line of an enclosing bar and leaves no line of its own.

    Parameters
    ----------
    *args, **kwargs
        As for ``tqdm.tqdm``. ``file`` defaults to ``sys.stderr`` and ``dynamic_ncols`` to False.
        When another :class:`ProgressBar` is open, ``position`` is forced to 0 and ``leave`` to
        False.

    Examples
    --------
    >>> with ProgressBar(total=2, desc="outer", disable=True) as bar:
    ...     bar.update(2)
    >>> open_bars()
    0
    """

    _open: ClassVar[int] = 0
    _open_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("file", sys.stderr)
        kwargs.setdefault("dynamic_ncols", False)
        with ProgressBar._open_lock:
            nested = ProgressBar._open > 0
        if nested:
            kwargs["position"] = 0
            kwargs["leave"] = False
        self._counted = False
        super().__init__(*args, **kwargs)
        if not self.disable:
            with ProgressBar._open_lock:
                ProgressBar._open += 1
            self._counted = True

    def close(self) -> None:
        """Close the bar (clearing its line if it was nested) and stop counting it as open."""
        if getattr(self, "_counted", False):
            with ProgressBar._open_lock:
                ProgressBar._open -= 1
            self._counted = False
        super().close()


def open_bars() -> int:
    """Return how many :class:`ProgressBar` are open (shown and not yet closed) in this process.

    Returns
    -------
    int
        The number of open bars; a new bar is nested when this is not 0.
    """
    with ProgressBar._open_lock:
        return ProgressBar._open
