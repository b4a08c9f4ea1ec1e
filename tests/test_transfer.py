"""The transfer engine against a real loopback server: verify, resume, retry, atomic, locked."""

from __future__ import annotations

import hashlib
import multiprocessing
from pathlib import Path

import pytest

from abc_helpers import DownloadError, DownloadJob, download, download_many, file_hash
from abc_helpers.sample.faults import FaultPlan
from abc_helpers.sample.server import SampleServer
from abc_helpers.sample.world import WorldWriter
from abc_helpers.transfer import RequestRefused, get_bytes, list_objects

BUCKET = "allen-brain-cell-atlas"
BIG = 3_000_000


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A tiny world: one 3 MB object and 30 small ones."""
    root = tmp_path_factory.mktemp("world")
    rng = __import__("random").Random(7)
    with WorldWriter(root) as writer:
        writer.put_bytes(BUCKET, "data/big.bin", rng.randbytes(BIG))
        for i in range(30):
            writer.put_bytes(BUCKET, f"many/file_{i:02d}.csv", f"id,value\n{i},{i * i}\n".encode() * 200)
    return root


@pytest.fixture
def server(world):
    with SampleServer(root=world) as srv:
        yield srv


def _effective(server) -> list[int]:
    """How many responses each rule of the server's fault plan changed."""
    return [n for _, n in server.faults.effective()]


def _md5(path: Path) -> str:
    return "md5:" + hashlib.md5(path.read_bytes()).hexdigest()


def _url(server, key: str) -> str:
    return f"{server.url}/{BUCKET}/{key}"


@pytest.fixture
def big_hash(world) -> str:
    return _md5(world / "s3" / BUCKET / "data" / "big.bin")


def test_download_verifies_and_leaves_no_part(server, tmp_path, big_hash):
    """A clean download lands whole at its final path, hash checked, nothing else left behind."""
    out = download(_url(server, "data/big.bin"), tmp_path / "a" / "big.bin", known_hash=big_hash,
                   progressbar=False)
    assert out.stat().st_size == BIG and _md5(out) == big_hash
    assert not (tmp_path / "a" / "big.bin.part").exists()
    assert file_hash(out) == big_hash
    assert file_hash(out, "blake2b") == "blake2b:" + hashlib.blake2b(out.read_bytes()).hexdigest()


def test_resume_after_a_cut_resends_little(server, tmp_path, big_hash, monkeypatch):
    """A connection cut mid-file is resumed with Range; no byte is sent twice."""
    monkeypatch.setattr("abc_helpers.transfer.MAX_WAIT", 0.01)
    server.set_faults(FaultPlan.parse(["drop-after=2000000,key=*big.bin,count=1"]))
    server.reset_stats()
    out = download(_url(server, "data/big.bin"), tmp_path / "big.bin", known_hash=big_hash,
                   progressbar=False)
    assert _md5(out) == big_hash
    sent = server.stats()["bytes_sent"][f"{BUCKET}/data/big.bin"]
    assert sent == BIG
    assert _effective(server) == [1]


def test_resume_of_an_existing_part_file(server, tmp_path, big_hash, world):
    """A .part left by an earlier (killed) run is continued, not restarted."""
    source = (world / "s3" / BUCKET / "data" / "big.bin").read_bytes()
    (tmp_path / "big.bin.part").write_bytes(source[:2_500_000])
    server.reset_stats()
    download(_url(server, "data/big.bin"), tmp_path / "big.bin", known_hash=big_hash, progressbar=False)
    assert server.stats()["bytes_sent"][f"{BUCKET}/data/big.bin"] == BIG - 2_500_000


def test_server_ignoring_range_restarts_cleanly(server, tmp_path, big_hash, world):
    """If the server answers 200 to a Range request, the .part is rewritten from byte 0."""
    source = (world / "s3" / BUCKET / "data" / "big.bin").read_bytes()
    (tmp_path / "big.bin.part").write_bytes(source[:1_000_000])
    server.set_faults(FaultPlan.parse(["ignore-range,key=*big.bin"]))
    out = download(_url(server, "data/big.bin"), tmp_path / "big.bin", known_hash=big_hash,
                   progressbar=False)
    assert _md5(out) == big_hash
    assert _effective(server) == [1]  # the resume's Range was ignored (one request asked one)


def test_hash_mismatch_raises_and_leaves_nothing(server, tmp_path, big_hash, monkeypatch):
    """Every attempt corrupt: DownloadError names the file, URL and both hashes; no final file."""
    monkeypatch.setattr("abc_helpers.transfer.MAX_WAIT", 0.01)
    server.set_faults(FaultPlan.parse(["corrupt-at=12345,key=*big.bin"]))
    target = tmp_path / "big.bin"
    with pytest.raises(DownloadError) as info:
        download(_url(server, "data/big.bin"), target, known_hash=big_hash, progressbar=False, retries=2)
    message = str(info.value)
    assert "'big.bin'" in message and _url(server, "data/big.bin") in message
    assert big_hash.split(":")[1] in message and "hash mismatch" in message
    assert not target.exists() and not (tmp_path / "big.bin.part").exists()
    assert _effective(server) == [3]


def test_a_corrupt_attempt_is_retried(server, tmp_path, big_hash):
    """One corrupt transfer, then a good one: the result is correct."""
    server.set_faults(FaultPlan.parse(["corrupt-at=5,key=*big.bin,count=1"]))
    assert _md5(download(_url(server, "data/big.bin"), tmp_path / "b", known_hash=big_hash,
                         progressbar=False)) == big_hash
    assert _effective(server) == [1]


def test_server_errors_are_retried_honouring_retry_after(server, tmp_path, big_hash):
    """503 with Retry-After, then 500: retried; the file arrives."""
    server.set_faults(FaultPlan.parse(["status=503,retry-after=0.1,key=*big.bin,count=1",
                                       "status=500,key=*big.bin,count=1"]))
    out = download(_url(server, "data/big.bin"), tmp_path / "c", known_hash=big_hash, progressbar=False)
    assert _md5(out) == big_hash
    assert _effective(server) == [1, 1]


def test_missing_object_is_not_retried(server, tmp_path):
    """A 404 raises at once with the file name, the URL and what to check."""
    server.reset_stats()
    with pytest.raises(DownloadError, match=r"'nope.csv' from .*nope.csv: HTTP 404 \(Not Found; "
                                            r"the server said: NoSuchKey: The specified key does "
                                            r"not exist.\)") as info:
        download(_url(server, "data/nope.csv"), tmp_path / "nope.csv", progressbar=False)
    assert isinstance(info.value, RequestRefused) and info.value.status == 404
    assert sum(server.stats()["requests"].values()) == 1
    assert not (tmp_path / "nope.csv").exists()


@pytest.mark.parametrize("status", [400, 403, 410])
def test_a_4xx_is_final_and_quotes_the_server(server, tmp_path, status):
    """Any 4xx but 408/429: one request, an error quoting the server's own message"""
    server.set_faults([f"status={status},key=*big.bin"])
    server.reset_stats()
    with pytest.raises(RequestRefused, match=rf"HTTP {status} .*the server said: ") as info:
        download(_url(server, "data/big.bin"), tmp_path / "big.bin", progressbar=False)
    assert info.value.status == status and info.value.server_message
    assert server.stats()["requests"][f"{BUCKET}/data/big.bin"] == 1
    assert _effective(server) == [1]


# -- get_bytes: every other request of the package, under the same policy ----------------------------
@pytest.fixture
def no_waits(monkeypatch):
    """No waits between attempts (the client's own pause, not the server's sleeps); short time-outs."""
    monkeypatch.setattr("abc_helpers.transfer.pause", lambda seconds: None)
    monkeypatch.setenv("ABC_HELPERS_TIMEOUT", "0.5")


SMALL_KEY = "many/file_03.csv"
SMALL = b"id,value\n3,9\n" * 200


@pytest.mark.parametrize("rule", ["drop-after=40%,count=2", "short-by=1,count=1", "status=503,count=2",
                                  "status=500,count=1", "status=429,count=1", "status=408,count=1",
                                  "stall=3,count=1", "stall-after=50%,stall=3,count=1"])
def test_get_bytes_retries_transient_faults(server, no_waits, rule):
    """Cut or short bodies, 408/429/5xx and stalls are retried: the exact bytes in the end"""
    server.set_faults([f"{rule},key=*{SMALL_KEY}"])
    assert get_bytes(_url(server, SMALL_KEY)) == SMALL
    fault = server.faults.faults[0]
    assert _effective(server) == [fault.count]


@pytest.mark.parametrize(("rule", "cause"), [("status=503", r"HTTP 503 \(SlowDown"),
                                             ("drop-after=40%", "connection broken after"),
                                             ("stall=3", "ReadTimeout")])
def test_get_bytes_gives_up_naming_the_url_and_the_cause(server, no_waits, rule, cause):
    """A fault that never stops: DownloadError after retries + 1 attempts, with the URL and why"""
    server.set_faults([f"{rule},key=*{SMALL_KEY}"])
    with pytest.raises(DownloadError, match=cause) as info:
        get_bytes(_url(server, SMALL_KEY), retries=2, what="Reading the test file")
    message = str(info.value)
    assert message.startswith("Reading the test file: gave up after 3 attempts")
    assert _url(server, SMALL_KEY) in message
    assert _effective(server) == [3]


def test_get_bytes_refuses_a_4xx_at_once(server, no_waits):
    """A 404 is final: one request, RequestRefused quoting the server's message"""
    server.reset_stats()
    with pytest.raises(RequestRefused, match="NoSuchKey: The specified key does not exist") as info:
        get_bytes(_url(server, "many/absent.csv"))
    assert info.value.status == 404 and info.value.url == _url(server, "many/absent.csv")
    assert server.stats()["requests"][f"{BUCKET}/many/absent.csv"] == 1


def test_get_bytes_refuses_what_the_caller_says_is_final(server, no_waits):
    """refuses(status, body) makes a 5xx final (as the Allen API's error envelope is)"""
    server.set_faults([f"status=500,key=*{SMALL_KEY}"])
    with pytest.raises(RequestRefused, match="final: InternalError"):
        get_bytes(_url(server, SMALL_KEY),
                  refuses=lambda status, body: f"final: {body[body.find(b'<Code>') + 6:][:13].decode()}")
    assert _effective(server) == [1]


def test_listings_go_through_the_same_policy(server, no_waits):
    """list_objects survives a cut listing and a 503; a 403 is refused at once"""
    server.set_faults([f"drop-after=40%,count=1,key={BUCKET}/", f"status=503,count=1,key={BUCKET}/"])
    keys = [o["key"] for o in list_objects(f"{server.url}/{BUCKET}/", prefix="many/")]
    assert len(keys) == 30
    assert _effective(server) == [1, 1]
    server.set_faults([f"status=403,key={BUCKET}/"])
    server.reset_stats()
    with pytest.raises(RequestRefused, match=r"Could not list .*HTTP 403.*AccessDenied: Access Denied"):
        list_objects(f"{server.url}/{BUCKET}/")
    assert server.stats()["requests"][f"{BUCKET}/"] == 1


def test_plain_http_to_a_remote_host_is_refused(tmp_path):
    """Real endpoints are only reached over HTTPS."""
    with pytest.raises(ValueError, match="Refusing plain-HTTP URL"):
        download("http://example.org/x.csv", tmp_path / "x.csv", progressbar=False)


def test_download_many_in_parallel(server, tmp_path, world):
    """A directory of files through the pool: every file verified, in the order asked."""
    jobs = []
    for i in range(30):
        key = f"many/file_{i:02d}.csv"
        jobs.append(DownloadJob(_url(server, key), tmp_path / key,
                                _md5(world / "s3" / BUCKET / key), None))
    paths = download_many(jobs, max_workers=8, progressbar=False)
    assert paths == [j.path for j in jobs]
    assert all(_md5(p) == j.known_hash for p, j in zip(paths, jobs, strict=False))


def test_download_many_reports_every_failure_and_keeps_the_rest(server, tmp_path, world):
    """Two missing files: one error listing both; the good files are there."""
    good = DownloadJob(_url(server, "many/file_00.csv"), tmp_path / "ok.csv",
                       _md5(world / "s3" / BUCKET / "many/file_00.csv"))
    bad = [DownloadJob(_url(server, f"many/missing_{i}.csv"), tmp_path / f"m{i}.csv") for i in range(2)]
    done = []
    with pytest.raises(DownloadError, match="2 of 3 downloads failed") as info:
        download_many([bad[0], good, bad[1]], progressbar=False, on_done=lambda j, p: done.append(p))
    assert "missing_0.csv" in str(info.value) and "missing_1.csv" in str(info.value)
    assert done == [good.path] and good.path.exists()


def _fetch_in_child(url: str, path: str, known_hash: str) -> None:
    download(url, path, known_hash=known_hash, progressbar=False)


def test_two_processes_fetch_one_file(server, tmp_path, big_hash):
    """Two processes at once end with one correct file and no leftovers."""
    server.set_faults(FaultPlan.parse(["stall-after=100000,stall=0.3,key=*big.bin,count=1"]))
    server.reset_stats()
    ctx = multiprocessing.get_context("spawn")
    target = tmp_path / "shared" / "big.bin"
    procs = [ctx.Process(target=_fetch_in_child, args=(_url(server, "data/big.bin"), str(target), big_hash))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert _md5(target) == big_hash
    assert server.stats()["bytes_sent"][f"{BUCKET}/data/big.bin"] == BIG  # fetched once
    assert _effective(server) == [1]
    assert sorted(p.name for p in target.parent.iterdir()) in (["big.bin"], ["big.bin", "big.bin.lock"])


# -- a host that cannot be resolved (no network): fail at once, naming the host ---------------------
UNRESOLVABLE = "http://nonexistent.invalid"  # .invalid never resolves (RFC 2606)


def _entry_points(tmp_path):
    from abc_helpers import (
        AbcProjectCache,
        VbnProjectCache,
        get_source,
        list_objects,
        query_section_datasets,
    )

    source = get_source(UNRESOLVABLE)  # named as a mirror, so plain HTTP to it is allowed
    return {
        "download": lambda: download(f"{UNRESOLVABLE}/bucket/file.csv", tmp_path / "file.csv"),
        "download_many": lambda: download_many(
            [DownloadJob(f"{UNRESOLVABLE}/bucket/{i}.csv", tmp_path / f"{i}.csv") for i in range(3)],
            progressbar=False),
        "list_objects": lambda: list_objects(source.bucket_url("allen-brain-cell-atlas")),
        "AbcProjectCache": lambda: AbcProjectCache.from_s3_cache(tmp_path / "abc", source=source),
        "VbnProjectCache": lambda: VbnProjectCache.from_s3_cache(tmp_path / "vbn", source=source),
        "query_section_datasets": lambda: query_section_datasets("coronal", ["Pcp2"], source=source),
    }


@pytest.mark.parametrize("entry", ["download", "download_many", "list_objects", "AbcProjectCache",
                                   "VbnProjectCache", "query_section_datasets"])
def test_unresolvable_host_fails_fast_and_says_so(tmp_path, entry, caplog):
    """A host name that does not resolve fails in under 2 s, without retries, naming the host."""
    import time

    call = _entry_points(tmp_path)[entry]
    started = time.perf_counter()
    with caplog.at_level("WARNING", logger="abc_helpers"), pytest.raises(DownloadError) as info:
        call()
    elapsed = time.perf_counter() - started
    message = str(info.value)
    assert "the host 'nonexistent.invalid' cannot be resolved" in message, message
    assert "Retrying cannot fix this" in message and "data_source='sample'" in message
    assert elapsed < 2, f"{entry} took {elapsed:.1f} s to fail"
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]  # not one retry
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".csv"]
