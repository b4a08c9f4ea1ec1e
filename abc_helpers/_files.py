"""Small file operations that never leave a half-written file at a final path."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path


def temporary_sibling(path: Path, tag: str = "tmp") -> Path:
    """A name beside *path*, unique to this process and thread, for writing before a rename."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{tag}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write *text* to *path* through a temporary sibling and an atomic rename."""
    tmp = temporary_sibling(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def link_or_copy(src: Path, dst: Path) -> None:
    """Make *dst* the same file as *src*: a hard link, or a copy where links are refused.

    The link (or copy) is made under a temporary name and renamed into place, so *dst* is never
    half-written; nothing happens if *dst* already is *src*.
    """
    if dst.exists() and os.path.samefile(src, dst):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(dst, "link")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
