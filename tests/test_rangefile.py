"""RangeFile against the sample server over loopback: values, blocks kept, pinning, every fault.

The fault cases serve a mirror folder holding one object of random bytes (so a rule's ``key=``
matches that object only), read it whole through a RangeFile of small blocks (several requests,
several at once), and check the bytes, the rule's effects (``FaultPlan.effective``) and, where the
fault never stops, the error's words.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from abc_helpers.cachefolder import blocks_path, is_bookkeeping
from abc_helpers.rangefile import RangeFile
from abc_helpers.sample import SampleServer
from abc_helpers.sources import Source
from abc_helpers.transfer import DownloadError, ObjectChanged, RequestRefused, download

BUCKET, KEY = "test-bucket", "sessions/object.bin"
SIZE = 3 * (1 << 20) + 12_345  # not a whole number of blocks
BLOCK = 64 << 10
MAX_REQUEST = 256 << 10


@pytest.fixture
def mirror(tmp_path) -> Path:
    """A mirror folder with one object of random bytes."""
    folder = tmp_path / "mirror"
    (folder / BUCKET / "sessions").mkdir(parents=True)
    data = np.random.default_rng(19).integers(0, 256, SIZE, dtype=np.uint8).tobytes()
    (folder / BUCKET / KEY).write_bytes(data)
    return folder


@pytest.fixture
def server(mirror):
    with SampleServer(mirror=mirror) as srv:
        yield srv


@pytest.fixture
def url(server) -> str:
    return Source("sample", server.url).object_url(BUCKET, KEY)


@pytest.fixture
def expected(mirror) -> bytes:
    return (mirror / BUCKET / KEY).read_bytes()


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr("abc_helpers.transfer.MAX_WAIT", 0.01)


def _open(url: str, folder: Path | None, **kwargs) -> RangeFile:
    return RangeFile(url, folder, block_size=BLOCK, max_request=MAX_REQUEST, **kwargs)


def _read_all(fh: RangeFile) -> bytes:
    """Read the object in pieces that straddle blocks, some in runs, some out of order."""
    out = bytearray(fh.size)
    pieces = [(0, 100), (BLOCK - 10, BLOCK + 10), (SIZE - 5000, SIZE)]
    pieces += [(a, min(SIZE, a + 300_000)) for a in range(0, SIZE, 300_000)]
    for start, stop in pieces:
        fh.seek(start)
        out[start:stop] = fh.read(stop - start)
    return bytes(out)


def _served(server) -> int:
    return server.stats()["bytes_sent"].get(f"{BUCKET}/{KEY}", 0)


def test_values_blocks_and_reopen(server, url, expected, tmp_path):
    """The bytes equal the object's; a second RangeFile on the same blocks sends no request."""
    blocks = tmp_path / "cache" / "object.bin.tag.blocks"
    with _open(url, blocks) as fh:
        assert fh.size == SIZE and fh.etag == f'"{hashlib.md5(expected).hexdigest()}"'
        assert _read_all(fh) == expected
        fh.seek(-10, 2)
        assert fh.read() == expected[-10:] and fh.read(5) == b""
        assert fh.stats.bytes_fetched == SIZE  # every byte once
        assert fh.stats.requests < fh.n_blocks  # runs of blocks, not one request per block
        assert fh.cached_blocks() == fh.n_blocks
    sent = _served(server)
    assert sent == SIZE
    with _open(url, blocks) as again:
        assert _read_all(again) == expected
        assert again.stats.requests == 0 and again.stats.bytes_fetched == 0
    assert _served(server) == sent  # the server saw nothing
    assert is_bookkeeping(blocks_path(tmp_path / "object.bin", "tag").name)


def test_h5py_reads_an_nwb_file_over_ranges(sample_source, tmp_path):
    """h5py opens a sample session file through a RangeFile; every dataset equals the downloaded file's."""
    from abc_helpers.neuropixels import VbnProjectCache
    from abc_helpers.sources import VBN_BUCKET

    cache = VbnProjectCache.from_s3_cache(tmp_path / "vbn", source=sample_source, progressbar=False)
    sid = int(cache.get_ecephys_session_table().index[0])
    local = cache.get_ecephys_session_path(sid)
    entry = next(e for e in cache.manifest["data_files"].values() if e["url"].endswith(local.name))
    key = entry["url"].split(".amazonaws.com/", 1)[1]
    url = sample_source.object_url(VBN_BUCKET, key, version_id=entry["version_id"])
    with RangeFile(url, tmp_path / "blocks", block_size=16 << 10) as fh, \
            h5py.File(fh, "r") as streamed, h5py.File(local, "r") as downloaded:
        names: list[str] = []
        downloaded.visit(lambda n: names.append(n) if isinstance(downloaded[n], h5py.Dataset) else None)
        assert len(names) > 20
        for name in names:
            assert _values(streamed, name) == _values(downloaded, name), name


def _values(f: h5py.File, name: str) -> list:
    """A dataset's values, comparable across files (object references as the paths they name)."""
    values = np.atleast_1d(f[name][()]).ravel().tolist()
    if h5py.check_dtype(ref=f[name].dtype) is not None:
        return [f[r].name for r in values]
    return [repr(v) for v in values]  # NaN equals NaN


def test_save_checks_the_hash(server, url, expected, tmp_path):
    """save() writes the whole object through the blocks and checks the hash."""
    md5 = f"md5:{hashlib.md5(expected).hexdigest()}"
    with _open(url, tmp_path / "blocks") as fh:
        fh.seek(1000)
        fh.read(10)
        out = fh.save(tmp_path / "object.bin", md5)
    assert out.read_bytes() == expected
    assert _served(server) == SIZE


def test_changed_object_is_an_error(mirror, server, url, expected, tmp_path):
    """An object replaced while it is read: the next request fails at once, naming the file."""
    with _open(url, tmp_path / "blocks") as fh:
        fh.read(100)
        changed = bytearray(expected)
        changed[SIZE // 2] ^= 0xFF
        (mirror / BUCKET / KEY).write_bytes(bytes(changed))
        fh.seek(SIZE // 2)
        with pytest.raises(ObjectChanged, match=r"'object.bin'.*changed on the server.*HTTP 412"):
            fh.read(10)
    assert server.stats()["requests"][f"{BUCKET}/{KEY}"] == 2  # not retried
    # the blocks kept describe the old version: reopening them pins the old ETag, and fails too
    with _open(url, tmp_path / "blocks") as fh:
        fh.seek(SIZE // 2)
        with pytest.raises(ObjectChanged, match="changed on the server"):
            fh.read(10)


# -- faults --------------------------------------------------------------------------------------
SURVIVED = {
    "cut": ["drop-after=50%,count=2"],
    "503": ["status=503,retry-after=0.05,count=2"],
    "stall-before": ["stall=8,count=1"],
    "stall-mid-body": ["stall-after=50%,stall=8,count=1"],
    "short-body": ["short-by=10,count=1"],
    "range-ignored": ["ignore-range,count=2"],
}


def _check_fired(server) -> None:
    plan = server.faults
    for i, (fault, (rule, hits)) in enumerate(zip(plan.faults, plan.hits(), strict=True)):
        effective = plan.wait_effective(hits, index=i, timeout=10.0)
        assert effective == hits, f"the fault '{rule}' matched {hits} request(s) but changed {effective}"
        assert hits == fault.count if fault.count is not None else hits >= 1, rule


@pytest.mark.parametrize("fault", list(SURVIVED))
def test_fault_survived(fault, server, url, expected, tmp_path, monkeypatch):
    """A passing fault on range requests: the right bytes, the fault took effect."""
    if "stall" in fault:
        monkeypatch.setenv("ABC_HELPERS_TIMEOUT", "0.2")
    with _open(url, tmp_path / "blocks") as fh:  # the first block is read before the faults
        server.set_faults([f"{rule},key={BUCKET}/{KEY}" for rule in SURVIVED[fault]])
        assert _read_all(fh) == expected
    _check_fired(server)


def test_wrong_byte_is_caught_by_the_whole_hash(server, url, expected, tmp_path):
    """A flipped byte in a range body cannot be seen in the range (S3 sends no checksum of one);
    save() sees it in the whole object's hash, drops the blocks and fetches them again."""
    md5 = f"md5:{hashlib.md5(expected).hexdigest()}"
    with _open(url, tmp_path / "blocks") as fh:
        server.set_faults([f"corrupt-at=50%,count=1,key={BUCKET}/{KEY}"])
        fh.seek(BLOCK)
        fh.read(10)  # the corrupt block is now kept
        out = fh.save(tmp_path / "object.bin", md5)
    assert out.read_bytes() == expected
    _check_fired(server)
    server.set_faults([f"corrupt-at=50%,key={BUCKET}/{KEY}"])
    with _open(url, tmp_path / "blocks2") as fh, \
            pytest.raises(DownloadError, match=r"'object.bin': md5 hash mismatch after fetching it twice"):
        fh.save(tmp_path / "other.bin", md5)
    assert not (tmp_path / "other.bin").exists()


@pytest.mark.parametrize(("rules", "cause"), [
    (["drop-after=5%"], r"connection broken|short body"),
    (["status=503"], r"HTTP 503"),
    (["stall=8"], r"[Tt]ime ?out|timed out"),
])
def test_fault_that_never_stops(rules, cause, server, url, tmp_path, monkeypatch):
    """A fault that never stops: a DownloadError naming the file, the URL and the cause."""
    if "stall" in rules[0]:
        monkeypatch.setenv("ABC_HELPERS_TIMEOUT", "0.2")
    with _open(url, tmp_path / "blocks") as fh:
        server.set_faults([f"{rule},key={BUCKET}/{KEY}" for rule in rules])
        fh.seek(SIZE // 2)
        with pytest.raises(DownloadError) as info:
            fh.read(1000)
    message = str(info.value)
    assert "'object.bin'" in message and url in message and re.search(cause, message), message
    _check_fired(server)


def test_refused_at_once(server, url, tmp_path):
    """404 on a range request: RequestRefused after one request, naming the file."""
    with _open(url, tmp_path / "blocks") as fh:
        server.set_faults([f"status=404,key={BUCKET}/{KEY}"])
        server.reset_stats()
        fh.seek(SIZE // 2)
        with pytest.raises(RequestRefused, match=r"'object.bin'.*HTTP 404"):
            fh.read(10)
    assert server.stats()["requests"][f"{BUCKET}/{KEY}"] == 1


def test_unresolvable_host_fails_at_once(tmp_path):
    """No network: the first request fails at once, without retries."""
    with pytest.raises(DownloadError, match="cannot be resolved"):
        RangeFile("https://no-such-host.invalid/bucket/object.bin", tmp_path / "blocks")


def test_download_equals_streamed(server, url, expected, tmp_path):
    """What download() writes and what a RangeFile reads are the same bytes."""
    path = download(url, tmp_path / "object.bin", progressbar=False)
    with _open(url, None) as fh:
        assert fh.read() == path.read_bytes() == expected
