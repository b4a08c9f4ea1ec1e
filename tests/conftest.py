"""Shared fixtures: one real sample server on loopback for the whole test session."""

from __future__ import annotations

import pytest

from abc_helpers.sample import SampleServer, build_world, start
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
    """A world holding the Allen API data only (fast to build), shared by the ISH tests."""
    return build_world(tmp_path_factory.mktemp("amba-world") / "world", generators=("amba",))


@pytest.fixture(scope="session")
def amba_server(amba_world):
    """A sample server over :func:`amba_world`."""
    with SampleServer(root=amba_world) as server:
        yield server
