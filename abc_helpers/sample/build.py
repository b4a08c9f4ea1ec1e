"""Build the sample world once, cache it, and rebuild only when the generators change."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path

from platformdirs import user_cache_dir

from ..cachefolder import file_lock, temporary_path
from .world import WorldWriter

LOGGER = logging.getLogger("abc_helpers")

#: The generator modules, in build order; each exposes ``generate(writer: WorldWriter)``.
GENERATORS = ("abc", "abc_gene_index", "vbn", "amba")


def world_fingerprint() -> str:
    """Hash the sample package's own source and data, and the gene index format it serves, so that
    a code change rebuilds the world."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    sources = sorted(here.rglob("*")) + sorted((here.parent / "gene_index").glob("*.py"))
    for path in sources:
        if path.is_file() and path.suffix in {".py", ".csv", ".json"} and "__pycache__" not in path.parts:
            digest.update(path.relative_to(here.parent).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def default_world_dir() -> Path:
    """Return the folder of the sample world for this version of the generators.

    ``ABC_HELPERS_SAMPLE_DIR`` overrides the parent folder (default: the user cache folder).
    """
    parent = os.environ.get("ABC_HELPERS_SAMPLE_DIR") or Path(user_cache_dir("abc_helpers")) / "sample-world"
    return Path(parent) / world_fingerprint()


def build_world(
    root: Path | str | None = None, force: bool = False, generators: tuple[str, ...] = GENERATORS
) -> Path:
    """Build the sample world (ABC and VBN buckets, Allen API) unless it is already built.

    The data are synthetic, generated deterministically in the real layouts and formats. A build
    goes to a temporary folder beside *root* and is renamed into place when complete, under a lock,
    so two processes asking at once get one complete world.

    Parameters
    ----------
    root : Path, str or None
        Where to build. Default: :func:`default_world_dir`.
    force : bool
        Rebuild even if a complete world is there.
    generators : tuple of str
        Which parts to build (``"abc"``, ``"vbn"``, ``"amba"``); all by default. Tests build one
        part into their own folder.

    Returns
    -------
    Path
        The world folder, ready to serve.
    """
    root = Path(root) if root is not None else default_world_dir()
    if (root / "WORLD.json").exists() and not force:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(root):
        if (root / "WORLD.json").exists() and not force:
            return root
        tmp = temporary_path(root)
        shutil.rmtree(tmp, ignore_errors=True)
        started = time.perf_counter()
        timings = {}
        with WorldWriter(tmp) as writer:
            for name in generators:
                t0 = time.perf_counter()
                if importlib.util.find_spec(f"{__package__}.{name}") is None:
                    LOGGER.warning("Sample generator '%s' is missing; its data are skipped.", name)
                    continue
                module = importlib.import_module(f"{__package__}.{name}")
                module.generate(writer)
                timings[name] = round(time.perf_counter() - t0, 2)
        (tmp / "WORLD.json").write_text(
            json.dumps({"fingerprint": world_fingerprint(), "generators": list(generators),
                        "synthetic": True}, indent=1)
        )
        if root.exists():
            shutil.rmtree(root)
        Path(tmp).replace(root)
        LOGGER.info("Built the sample world in %.1f s (%s) at %s",
                    time.perf_counter() - started, timings, root)
    return root
