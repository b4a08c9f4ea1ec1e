"""The whole sample world: deterministic bytes, served with boto3-compatible S3."""

from __future__ import annotations

import json

import pytest

from abc_helpers.sample import build_world
from abc_helpers.sample.build import GENERATORS


@pytest.mark.slow
def test_world_is_deterministic(tmp_path):
    """A fresh build gives the same objects with the same md5s as the world the tests are served
    (built by another process, cached by fingerprint); build time is not asserted: load varies."""
    indexes, apis = [], []
    for root in (build_world(), build_world(tmp_path / "again")):
        indexes.append({p.name: json.loads(p.read_text()) for p in sorted((root / "s3-index").glob("*.json"))})
        assert json.loads((root / "WORLD.json").read_text())["generators"] == list(GENERATORS)
        apis.append(sorted(p.relative_to(root).as_posix() for p in (root / "allen-api").rglob("*")))
    assert indexes[0] == indexes[1], ("a fresh build differs from the cached sample world: rebuild it "
                                      "(python -m abc_helpers.sample build --force) and run again; if "
                                      "it still differs, a generator is not deterministic")
    assert {"allen-brain-cell-atlas.json", "visual-behavior-neuropixels-data.json"} <= set(indexes[0])
    assert apis[0] == apis[1] and apis[0]


def test_cli_serve_prints_url_and_serves(tmp_path):
    """`python -m abc_helpers.sample serve --port 0` prints the root URL and answers S3 requests."""
    import subprocess
    import sys

    import requests

    proc = subprocess.Popen([sys.executable, "-m", "abc_helpers.sample", "serve", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        listing = requests.get(f"{url}/allen-brain-cell-atlas?list-type=2&prefix=releases/", timeout=30)
        assert listing.status_code == 200 and "releases/20231215/manifest.json" in listing.text
    finally:
        proc.terminate()
        proc.wait(30)


def test_cli_serve_on_a_busy_port_says_what_to_do():
    """A port in use gives one line naming the port and the fix, and exit code 1."""
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "abc_helpers.sample", "serve", "--port", str(port)],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--port 0" in result.stderr
    assert "Traceback" not in result.stderr
