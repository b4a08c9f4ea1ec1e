"""abc_helpers.progress: a call leaves one progress line, nested bars share it and are cleared."""

from __future__ import annotations

import io
import re

from abc_helpers.progress import ProgressBar, open_bars


def _displayed(text: str) -> list[str]:
    """The lines a terminal shows at the end: each line's text after its last carriage return."""
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n") if line.rsplit("\r", 1)[-1].strip()]


def test_nested_bars_share_the_line_and_leave_only_the_outer_one():
    """Inner bars opened inside an outer one draw on its line (no escape codes) and are cleared."""
    out = io.StringIO()
    with ProgressBar(total=3, desc="outer", file=out) as outer:
        for i in range(3):
            with ProgressBar(total=10, desc=f"inner{i}", file=out) as inner:
                assert open_bars() == 2
                inner.update(10)
            outer.update(1)
    text = out.getvalue()
    assert "\x1b" not in text
    assert "inner0" in text  # shown while it ran
    shown = _displayed(text)
    assert len(shown) == 1 and re.match(r"outer: 100%\|.*\| 3/3", shown[0]), shown
    assert open_bars() == 0


def test_a_lone_bar_keeps_its_final_line_and_disabled_bars_do_not_count():
    """A bar with no enclosing bar leaves its final line; a disabled bar is not an enclosing bar."""
    out = io.StringIO()
    with ProgressBar(total=5, desc="off", disable=True):
        assert open_bars() == 0
        with ProgressBar(total=5, desc="alone", file=out) as bar:
            bar.update(5)
    assert _displayed(out.getvalue())[-1].startswith("alone: 100%")
    assert open_bars() == 0
