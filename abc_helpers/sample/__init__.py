"""The offline sample world: synthetic data in the real layouts, served on loopback.

Everything here is **synthetic**: small, deterministic data shaped like the Allen Brain Cell
Atlas bucket, the Visual Behavior Neuropixels bucket and the Allen Mouse Brain Atlas API, so the
book and the tests run without the internet. ``start()`` builds the world once (cached under the
user cache folder) and serves it on 127.0.0.1; ``python -m abc_helpers.sample serve`` does the
same from a shell.
"""

from __future__ import annotations

from pathlib import Path

from ..sources import ABC_BUCKET, VBN_BUCKET
from .build import build_world, default_world_dir
from .faults import Fault, FaultPlan
from .server import Link, SampleServer
from .world import WorldWriter

__all__ = [
    "ABC_BUCKET",
    "VBN_BUCKET",
    "Fault",
    "FaultPlan",
    "Link",
    "SampleServer",
    "WorldWriter",
    "build_world",
    "default_world_dir",
    "start",
]


def start(
    root: Path | str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    faults=None,
    mirror: Path | str | None = None,
    link: Link | None = None,
):
    """Build (if needed) and serve the sample world on loopback, in a background thread.

    Parameters
    ----------
    root : Path, str or None
        A world folder that is already built (served as it is); default: the cached sample world,
        built first if needed by :func:`build_world`.
    host : str
        Address to bind; loopback by default.
    port : int
        Port to bind; 0 picks a free one.
    faults : FaultPlan, list or None
        Faults to inject (see :mod:`abc_helpers.sample.faults`); none by default.
    mirror : Path, str or None
        Serve this cache directory (filled from the real buckets) instead of the sample world.
    link : Link or None
        Latency and bandwidth to model a real network link, e.g. ``Link(latency_s=0.02,
        bandwidth=50e6)``; None (default) for loopback speed.

    Returns
    -------
    SampleServer
        A running server with ``.url`` (e.g. ``'http://127.0.0.1:38211'``) and ``.stop()``.
    """
    if mirror is None:
        if root is None:
            root = build_world()
        elif not (Path(root) / "s3-index").is_dir():
            raise FileNotFoundError(f"'{root}' is not a built sample world (it has no s3-index/): "
                                    "build one with abc_helpers.sample.build_world(root).")
    server = SampleServer(root=root, host=host, port=port, faults=faults, mirror=mirror, link=link)
    server.start()
    return server
