"""The link model: a first-byte latency and a bandwidth on every response of the sample server.

Only lower bounds on time are asserted (a body of N bytes at B bytes/s cannot arrive in less than
N / B seconds, whatever the machine's load), with the bytes checked exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests

from abc_helpers.sample import Link
from abc_helpers.sample.server import SampleServer
from abc_helpers.sample.world import WorldWriter

BUCKET = "allen-brain-cell-atlas"
BIG = os.urandom(600_000 + 7)  # sent with sendfile (more than SMALL_BODY)
SMALL = os.urandom(30_000)  # sent in the same write as the headers when there is no link


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A world with one object above and one below the server's small-body size."""
    root = tmp_path_factory.mktemp("linkworld")
    with WorldWriter(root) as writer:
        writer.put_bytes(BUCKET, "data/big.bin", BIG)
        writer.put_bytes(BUCKET, "data/small.bin", SMALL)
    return root


@pytest.fixture
def srv(world):
    """A running server on *world* with no link model."""
    with SampleServer(root=world) as server:
        yield server


def timed_get(url: str, **kwargs) -> tuple[requests.Response, float]:
    """GET *url*; return the response (body read) and the seconds it took."""
    t0 = time.monotonic()
    response = requests.get(url, timeout=30, **kwargs)
    _ = response.content
    return response, time.monotonic() - t0


@pytest.mark.parametrize(("name", "data"), [("big.bin", BIG), ("small.bin", SMALL)])
def test_bandwidth_paces_the_body(srv, name, data):
    """A body of N bytes at B bytes/s arrives whole, and no sooner than N / B seconds"""
    bandwidth = 2e6
    srv.set_link(Link(bandwidth=bandwidth))
    response, seconds = timed_get(f"{srv.url}/{BUCKET}/data/{name}")
    assert response.status_code == 200
    assert response.content == data
    assert seconds >= len(data) / bandwidth
    assert srv.stats()["bytes_sent"][f"{BUCKET}/data/{name}"] == len(data)


def test_bandwidth_paces_a_range_by_its_length(srv):
    """A Range response is paced by the bytes it carries"""
    srv.set_link(latency_s=0.0, bandwidth=1e6)
    response, seconds = timed_get(f"{srv.url}/{BUCKET}/data/big.bin",
                                  headers={"Range": "bytes=1000-300999"})
    assert response.status_code == 206
    assert response.content == BIG[1000:301000]
    assert seconds >= 300_000 / 1e6


def test_latency_delays_every_request(srv):
    """The first byte of any response, a HEAD or an error included, waits for the latency"""
    srv.set_link(Link(latency_s=0.3))
    for method, path, status in [("HEAD", "data/small.bin", 200), ("GET", "data/nothing", 404)]:
        t0 = time.monotonic()
        response = requests.request(method, f"{srv.url}/{BUCKET}/{path}", timeout=30)
        assert response.status_code == status
        assert time.monotonic() - t0 >= 0.3


def test_latency_and_bandwidth_add_up(srv):
    """Latency and bandwidth together: at least latency + N / B"""
    link = srv.set_link(Link(latency_s=0.2, bandwidth=3e6))
    assert link == Link(0.2, 3e6)
    response, seconds = timed_get(f"{srv.url}/{BUCKET}/data/big.bin")
    assert response.content == BIG
    assert seconds >= link.min_seconds(len(BIG))
    assert link.min_seconds(len(BIG)) == pytest.approx(0.2 + len(BIG) / 3e6)


def test_link_and_faults_together(srv):
    """A drop-after fault on a paced body still sends exactly its bytes, no sooner than paced"""
    srv.set_link(Link(bandwidth=1e6))
    srv.set_faults(["drop-after=200000,key=*big.bin,count=1"])
    got = bytearray()
    t0 = time.monotonic()
    with (pytest.raises(requests.RequestException),  # noqa: PT012 (the error ends the stream)
          requests.get(f"{srv.url}/{BUCKET}/data/big.bin", stream=True, timeout=30) as r):
        for chunk in r.iter_content(1000):
            got += chunk
    assert time.monotonic() - t0 >= 0.2 - 0.001  # the last whole 1000-byte chunk
    assert bytes(got) == BIG[:200_000]


def test_set_link_none_restores_loopback(srv):
    """set_link() and Link() with nothing to add leave no model in force"""
    srv.set_link(Link(latency_s=0.5))
    assert srv.link == Link(latency_s=0.5)
    assert srv.set_link(None) is None
    assert srv.set_link(Link()) is None
    assert srv.link is None
    response = requests.get(f"{srv.url}/{BUCKET}/data/small.bin", timeout=30)
    assert response.content == SMALL


def test_link_given_at_construction(world):
    """SampleServer(link=...) applies from the first request"""
    with SampleServer(root=world, link=Link(latency_s=0.25)) as server:
        assert server.link == Link(latency_s=0.25)
        _, seconds = timed_get(f"{server.url}/{BUCKET}/data/small.bin")
        assert seconds >= 0.25


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"latency_s": -1}, "latency_s=-1"),
    ({"bandwidth": 0}, "bandwidth=0"),
    ({"latency_s": float("nan")}, "latency_s=nan"),
])
def test_bad_link_is_refused(kwargs, words):
    """A negative latency or a bandwidth that is not positive is an error naming the value"""
    with pytest.raises(ValueError, match=words):
        Link(**kwargs)


def test_set_link_refuses_both_forms(srv):
    """set_link takes a Link or keywords, not both; and not some other object"""
    with pytest.raises(ValueError, match="not both"):
        srv.set_link(Link(latency_s=0.1), bandwidth=1e6)
    with pytest.raises(TypeError, match="Link"):
        srv.set_link(0.02)  # type: ignore[arg-type]


def test_serve_command_line_models_the_link(world):
    """`serve --latency-ms 300 --bandwidth-mbs 1` answers no sooner than the link allows"""
    proc = subprocess.Popen(
        [sys.executable, "-m", "abc_helpers.sample", "serve", "--root", str(world),
         "--latency-ms", "300", "--bandwidth-mbs", "1"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://"), url
        response, seconds = timed_get(f"{url}/{BUCKET}/data/big.bin")
        assert response.content == BIG
        assert seconds >= 0.3 + len(BIG) / 1e6
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_command_line_refuses_a_bad_link(world):
    """A negative latency on the command line is an error, not a server"""
    proc = subprocess.run(
        [sys.executable, "-m", "abc_helpers.sample", "serve", "--root", str(world),
         "--latency-ms", "-5"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "latency_s=-0.005" in proc.stderr
