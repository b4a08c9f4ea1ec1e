"""Shared fixtures: one real sample server on loopback per test process (each pytest-xdist worker
serves the one cached sample world itself), and the worlds built once per run (support.worlds)."""

from __future__ import annotations

import pytest
from support.worlds import shared_world

from abc_helpers.sample import SampleServer, start
from abc_helpers.sources import Source


@pytest.fixture(scope="session")
def sample_server():
    """The sample world served on 127.0.0.1 (built once, cached)."""
    server = start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sample_source(sample_server) -> Source:
    """A Source pointing at the session's sample server."""
    return Source("sample", sample_server.url)


@pytest.fixture(scope="session")
def amba_world(tmp_path_factory):
    """A world holding the Allen API data only (fast to build), shared by the ISH tests, built once per run."""
    return shared_world(tmp_path_factory, ("amba",))


@pytest.fixture(scope="session")
def amba_server(amba_world):
    """A sample server over :func:`amba_world`."""
    with SampleServer(root=amba_world) as server:
        yield server
