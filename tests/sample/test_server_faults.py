"""Fault injection: each kind of misbehaviour, seen from plain requests and raw sockets."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import time

import pytest
import requests

from abc_helpers.sample.faults import Fault, FaultPlan
from abc_helpers.sample.server import SampleServer
from abc_helpers.sample.world import WorldWriter

BUCKET = "allen-brain-cell-atlas"
DATA = os.urandom(2 * 1024 * 1024 + 3)
UNITS = b"unit_id,quality\n" + b"".join(b"%d,good\n" % i for i in range(5000))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server with one 2 MiB object and one small CSV."""
    root = tmp_path_factory.mktemp("faultworld")
    with WorldWriter(root) as writer:
        writer.put_bytes(BUCKET, "data/blob.bin", DATA)
        writer.put_bytes(BUCKET, "metadata/units.csv", UNITS)
    with SampleServer(root=root) as srv:
        yield srv


@pytest.fixture
def srv(server):
    """The module's server with no faults and fresh stats; faults are removed afterwards."""
    server.set_faults(None)
    server.reset_stats()
    yield server
    server.set_faults(None)


def blob_url(srv) -> str:
    return f"{srv.url}/{BUCKET}/data/blob.bin"


def read_streamed(url: str, chunk_size: int = 1000, **kwargs) -> tuple[bytes, Exception | None]:
    """GET *url* streaming; return the bytes received and the error that ended it, if any.

    urllib3 drops a partly filled chunk when the connection breaks, so offsets that are
    multiples of *chunk_size* are seen exactly.
    """
    got = bytearray()
    try:
        with requests.get(url, stream=True, timeout=10, **kwargs) as r:
            for chunk in r.iter_content(chunk_size):
                got += chunk
    except requests.RequestException as err:
        return bytes(got), err
    return bytes(got), None


def effective(srv) -> list[int]:
    """How many responses each rule of the plan changed."""
    return [n for _, n in srv.faults.effective()]


def hits(srv) -> list[int]:
    """How many requests each rule of the plan matched."""
    return [n for _, n in srv.faults.hits()]


def raw_get(srv, path: str, extra: str = "") -> tuple[bytes, bytes]:
    """Send one GET on a raw socket; return (header block, body bytes until the server closes)."""
    host, port = srv.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        data = bytearray()
        while chunk := sock.recv(1 << 20):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return head, body


def test_drop_after_gives_n_bytes_then_an_error(srv):
    """drop-after=N sends N bytes of body, then the connection breaks (once, with count=1)"""
    srv.set_faults(["drop-after=100000,key=*blob.bin,count=1"])
    got, err = read_streamed(blob_url(srv))
    assert isinstance(err, requests.exceptions.ChunkedEncodingError)
    assert "IncompleteRead(100000 bytes read" in repr(err)
    assert got == DATA[:100000]
    got, err = read_streamed(blob_url(srv))
    assert err is None and got == DATA
    stats = srv.stats()
    assert stats["requests"][f"{BUCKET}/data/blob.bin"] == 2
    assert stats["bytes_sent"][f"{BUCKET}/data/blob.bin"] == 100000 + len(DATA)
    assert effective(srv) == hits(srv) == [1]


def test_drop_after_on_a_raw_socket(srv):
    """The headers announce the full length; the socket closes after N bytes"""
    srv.set_faults("drop-after=1000")
    head, body = raw_get(srv, f"/{BUCKET}/data/blob.bin")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert f"Content-Length: {len(DATA)}".encode() in head
    assert body == DATA[:1000]
    assert effective(srv) == [1]


def test_drop_after_applies_to_ranged_gets(srv):
    """A GET with Range counts as a match; N counts bytes of the range's body"""
    srv.set_faults(["drop-after=10,count=1"])
    got, err = read_streamed(blob_url(srv), chunk_size=10, headers={"Range": "bytes=1000-1999"})
    assert err is not None and got == DATA[1000:1010]
    r = requests.get(blob_url(srv), headers={"Range": "bytes=1000-1999"})
    assert r.status_code == 206 and r.content == DATA[1000:2000]
    assert effective(srv) == [1]


def test_an_offset_past_the_body_changes_nothing_and_is_not_counted(srv):
    """drop-after=N on a body of N bytes or fewer matches (a hit) but cuts nothing (no effect)"""
    srv.set_faults(["drop-after=100,count=1"])
    r = requests.get(blob_url(srv), headers={"Range": "bytes=0-27"})
    assert r.status_code == 206 and r.content == DATA[:28]
    assert hits(srv) == [1] and effective(srv) == [0]


@pytest.mark.parametrize("length", [1, 28, 1000, len(DATA)])
def test_relative_offsets_land_inside_every_body(srv, length):
    """drop-after=50% cuts each body at its middle: a 1-byte range after 0 bytes, 28 after 14"""
    srv.set_faults(["drop-after=50%"])
    got, err = read_streamed(blob_url(srv), chunk_size=1, headers={"Range": f"bytes=0-{length - 1}"})
    assert err is not None and got == DATA[:length // 2]
    assert effective(srv) == hits(srv) == [1]


def test_relative_stall_corrupt_and_short(srv):
    """stall-after, corrupt-at and short-by take a fraction of each body too"""
    srv.set_faults(["corrupt-at=50%,count=1", "short-by=10%,count=1",
                    "stall-after=50%,stall=0.2,count=1"])
    r = requests.get(blob_url(srv), headers={"Range": "bytes=100-127"})
    assert r.content[:14] == DATA[100:114] and r.content[14] != DATA[114]
    assert r.content[15:] == DATA[115:128]
    got, err = read_streamed(blob_url(srv), chunk_size=1, headers={"Range": "bytes=0-27"})
    assert err is not None and got == DATA[:25]  # 10% of 28 bytes, rounded up: 3 withheld
    t0 = time.monotonic()
    with requests.get(blob_url(srv), headers={"Range": "bytes=0-27"}, stream=True, timeout=5) as r:
        body = r.raw.read()
    assert body == DATA[:28]
    assert time.monotonic() - t0 >= 0.2
    assert effective(srv) == hits(srv) == [1, 1, 1]
    assert str(Fault.parse("stall-after=50%,stall=0.2")) == "stall=0.2,stall-after=50%"


def test_head_does_not_use_up_a_body_fault(srv):
    """HEAD requests leave drop-after counts alone"""
    srv.set_faults(["drop-after=10,count=1"])
    assert requests.head(blob_url(srv)).headers["Content-Length"] == str(len(DATA))
    assert hits(srv) == [0]
    got, err = read_streamed(blob_url(srv), chunk_size=10)
    assert err is not None and len(got) == 10
    assert effective(srv) == [1]


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError"),
                                              (404, "NoSuchKey"), (403, "AccessDenied")])
def test_status_then_success(srv, status, code):
    """status=S answers S with an S3 XML error for `count` requests, then the object"""
    srv.set_faults([f"status={status},retry-after=2,key={BUCKET}/data/*,count=2"])
    for _ in range(2):
        r = requests.get(blob_url(srv))
        assert r.status_code == status
        assert r.headers["Retry-After"] == "2"
        assert f"<Code>{code}</Code>" in r.text
        assert r.text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<Error>')
    r = requests.get(blob_url(srv))
    assert r.status_code == 200 and r.content == DATA
    assert srv.faults.remaining() == [(str(srv.faults.faults[0]), 0)]
    assert effective(srv) == [2]


def test_key_pattern_and_count_are_honoured(srv):
    """Only matching paths are hit, and only `count` times"""
    srv.set_faults(["status=503,key=*units.csv,count=3"])
    assert requests.get(blob_url(srv)).status_code == 200
    codes = [requests.get(f"{srv.url}/{BUCKET}/metadata/units.csv").status_code for _ in range(5)]
    assert codes == [503, 503, 503, 200, 200]
    assert hits(srv) == effective(srv) == [3]


def test_rules_apply_in_order(srv):
    """Several rules: the first with uses left wins, so scenarios run in sequence"""
    srv.set_faults(["status=503,count=1", "drop-after=5,count=1"])
    assert requests.get(blob_url(srv)).status_code == 503
    got, err = read_streamed(blob_url(srv), chunk_size=5)
    assert err is not None and got == DATA[:5]
    assert requests.get(blob_url(srv)).content == DATA
    assert effective(srv) == [1, 1]


def test_stall_before_first_byte(srv):
    """stall=S delays the response; a client with a shorter timeout gives up"""
    srv.set_faults(["stall=0.6,count=2"])
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(blob_url(srv), timeout=0.2)
    assert srv.faults.wait_effective(1) == 1  # counted when the stall began
    t0 = time.perf_counter()
    r = requests.get(blob_url(srv), timeout=5)
    assert r.content == DATA
    assert time.perf_counter() - t0 >= 0.55
    assert effective(srv) == [2]


def test_a_client_gone_during_a_stall_gets_nothing_more(srv):
    """After a stall the server sends the rest only to a client still there (bytes_sent counts
    what a live client could receive: a resume test's 're-sent 0 bytes' must not depend on when
    the stalled request wakes up)."""
    srv.set_faults(["stall-after=1000,stall=0.3,count=1"])
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(blob_url(srv), timeout=(2, 0.05)).content  # noqa: B018 (read the body)
    assert srv.wait_idle(timeout=30)  # the stalled request woke and ended: its count is final
    assert srv.stats()["bytes_sent"][f"{BUCKET}/data/blob.bin"] == 1000
    assert effective(srv) == [1]


def test_a_client_gone_during_a_first_byte_stall_gets_nothing(srv):
    """After a stall before the first byte, a client that gave up gets no answer at all (a small
    body goes out with its headers in one write, which the kernel accepts even for a closed peer:
    it used to be counted as sent, and the reliability suite's 're-sent' with it)"""
    srv.set_faults([f"stall=0.3,key={BUCKET}/metadata/units.csv,count=1"])
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{srv.url}/{BUCKET}/metadata/units.csv", timeout=(2, 0.05))
    assert srv.wait_idle(timeout=30)
    assert srv.stats()["bytes_sent"].get(f"{BUCKET}/metadata/units.csv", 0) == 0
    assert effective(srv) == [1]


def test_stall_mid_body(srv):
    """stall-after=N,stall=S: headers come at once, the body pauses after N bytes"""
    srv.set_faults(["stall-after=4096,stall=0.5,count=1"])
    t0 = time.perf_counter()
    with requests.get(blob_url(srv), stream=True, timeout=5) as r:
        assert r.status_code == 200
        body = r.raw.read()
    assert body == DATA
    # the exchange lasted the stall at least. (Not "body time >= 0.5": a loaded client may see
    # the headers late, after the stall began, so that bound failed under load.)
    assert time.perf_counter() - t0 >= 0.5
    assert effective(srv) == [1]


def test_corrupt_at_flips_one_byte(srv):
    """corrupt-at=N changes the byte at N only: right length, wrong hash"""
    srv.set_faults(["corrupt-at=12345,count=1"])
    r = requests.get(blob_url(srv))
    assert r.status_code == 200 and len(r.content) == len(DATA)
    diff = [i for i, (a, b) in enumerate(zip(r.content, DATA, strict=True)) if a != b]
    assert diff == [12345]
    assert hashlib.md5(r.content).hexdigest() != hashlib.md5(DATA).hexdigest()
    assert r.headers["ETag"] == f'"{hashlib.md5(DATA).hexdigest()}"'
    assert requests.get(blob_url(srv)).content == DATA
    assert effective(srv) == [1]


def test_short_by_sends_fewer_bytes_than_announced(srv):
    """short-by=N announces the full length and sends N bytes fewer"""
    srv.set_faults(["short-by=7,count=1"])
    head, body = raw_get(srv, f"/{BUCKET}/data/blob.bin")
    assert f"Content-Length: {len(DATA)}".encode() in head
    assert body == DATA[:-7]
    srv.set_faults(["short-by=7,count=1"])
    got, err = read_streamed(blob_url(srv))
    assert isinstance(err, requests.exceptions.ChunkedEncodingError)
    assert f"IncompleteRead({len(DATA) - 7} bytes read, 7 more expected)" in repr(err)
    assert DATA.startswith(got)
    assert effective(srv) == [1]


def test_ignore_range_sends_the_whole_object(srv):
    """ignore-range answers 200 with everything even when a Range is asked"""
    srv.set_faults(["ignore-range,count=2"])
    assert requests.get(blob_url(srv)).content == DATA  # no Range asked: a hit, no effect
    assert hits(srv) == [1] and effective(srv) == [0]
    r = requests.get(blob_url(srv), headers={"Range": "bytes=100-199"})
    assert r.status_code == 200 and r.content == DATA
    assert "Content-Range" not in r.headers
    r = requests.get(blob_url(srv), headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == DATA[100:200]
    assert hits(srv) == [2] and effective(srv) == [1]


def test_faults_on_small_bodies_and_listings(srv):
    """Body faults work on small objects and XML listings too"""
    srv.set_faults([f"drop-after=50,key={BUCKET},count=1", "corrupt-at=0,key=*units.csv,count=1"])
    got, err = read_streamed(f"{srv.url}/{BUCKET}?list-type=2", chunk_size=10)
    assert err is not None and len(got) == 50 and got.startswith(b"<?xml")
    r = requests.get(f"{srv.url}/{BUCKET}/metadata/units.csv")
    assert r.content[1:] == UNITS[1:] and r.content[0] != UNITS[0]
    assert effective(srv) == [1, 1]


def test_faults_given_at_start(tmp_path):
    """SampleServer(faults=...) applies the plan from the first request"""
    with WorldWriter(tmp_path) as writer:
        writer.put_bytes(BUCKET, "a.txt", b"hello")
    with SampleServer(root=tmp_path, faults=FaultPlan.parse(["status=500,count=1"])) as srv:
        assert requests.get(f"{srv.url}/{BUCKET}/a.txt").status_code == 500
        assert requests.get(f"{srv.url}/{BUCKET}/a.txt").content == b"hello"
        assert effective(srv) == [1]


def test_parse_rules_and_errors():
    """Rule strings parse to Faults; mistakes name the option and the fix"""
    fault = Fault.parse("drop-after=1000000,key=*units.csv,count=2")
    assert (fault.drop_after, fault.key, fault.count) == (1000000, "*units.csv", 2)
    assert fault.kinds == ("drop-after",)
    assert Fault.parse(str(fault)) == fault
    assert Fault.parse("ignore-range").ignore_range is True
    assert Fault.parse("stall-after=10,stall=0.5").kinds == ("stall-after",)
    with pytest.raises(ValueError, match=re.escape("Unknown fault option 'drop-afterr'")):
        FaultPlan.parse(["drop-afterr=10"])
    with pytest.raises(ValueError, match="needs a number, got 'lots'"):
        Fault.parse("drop-after=lots")
    with pytest.raises(ValueError, match="needs 'stall=SECONDS'"):
        Fault.parse("stall-after=10")
    with pytest.raises(ValueError, match="does nothing"):
        Fault.parse("key=*.csv,count=1")
    assert Fault.parse("drop-after=40%").drop_after == 0.4
    assert str(Fault.parse("drop-after=40%")) == "drop-after=40%"
    with pytest.raises(ValueError, match="below 100%"):
        Fault.parse("drop-after=100%")
    with pytest.raises(ValueError, match="needs a number, got '40 pc'"):
        Fault.parse("drop-after=40 pc")


def test_cli_fault_option(tmp_path):
    """`serve --mirror DIR --fault status=503,count=1` answers 503 once, then the file"""
    (tmp_path / BUCKET).mkdir()
    (tmp_path / BUCKET / "x.csv").write_bytes(b"a,b\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "abc_helpers.sample", "serve", "--mirror", str(tmp_path),
         "--fault", "status=503,count=1"], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        assert requests.get(f"{url}/{BUCKET}/x.csv", timeout=10).status_code == 503
        assert requests.get(f"{url}/{BUCKET}/x.csv", timeout=10).content == b"a,b\n"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
