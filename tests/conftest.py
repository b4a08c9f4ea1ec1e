"""Shared fixtures: one real sample server on loopback for the whole test session."""

from __future__ import annotations

import pytest

from abc_helpers.sample import start
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
