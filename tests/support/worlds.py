"""Sample worlds built once per test run, shared by every test and every pytest-xdist worker.

The default world is cached by its fingerprint (``build_world()``); the partial worlds that tests
build (one generator each) go to the run's base temporary folder, which the workers of a
``pytest -n`` run share, and ``build_world`` builds each one once under its lock. Tests only read
them: a test that changes a world builds its own.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from abc_helpers.sample import build_world
from abc_helpers.sample.build import GENERATORS

__all__ = ["run_folder", "shared_world"]


def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary folder of this test run, the same for every xdist worker."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_world(tmp_path_factory: pytest.TempPathFactory, generators: tuple[str, ...] = GENERATORS) -> Path:
    """The world of *generators*, built once in this run (by whichever worker asks first)."""
    name = "-".join(generators)
    return build_world(run_folder(tmp_path_factory) / "shared-worlds" / name, generators=generators)
