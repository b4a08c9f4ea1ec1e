"""Streamed sessions (get_ecephys_session(..., stream=True)) against the sample server over loopback:
the same values as the downloaded file through every call of the session object, nothing fetched
twice, local files used when they exist, faults survived or reported."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from abc_helpers.neuropixels import VbnEcephysSession, VbnProjectCache
from abc_helpers.rangefile import RangeFile
from abc_helpers.sample import VBN_BUCKET, SampleServer, build_world
from abc_helpers.sources import Source
from abc_helpers.transfer import DownloadError, file_hash

#: Members of the session object that are not data calls.
NOT_DATA = {"close", "stream", "path", "nwbfile", "list_data_attributes_and_methods"}


@pytest.fixture(scope="module")
def server():
    """A server of our own: its byte counts are this module's only."""
    with SampleServer(root=build_world()) as srv:
        yield srv


@pytest.fixture
def source(server) -> Source:
    return Source("sample", server.url)


def _cache(folder: Path, source: Source) -> VbnProjectCache:
    return VbnProjectCache.from_s3_cache(folder, source=source, progressbar=False)


def _session_key(sid: int) -> str:
    return f"{VBN_BUCKET}/visual-behavior-neuropixels/behavior_ecephys_sessions/{sid}/ecephys_session_{sid}.nwb"


def _sent(server, key: str) -> int:
    return server.stats()["bytes_sent"].get(key, 0)


def _calls(session: VbnEcephysSession) -> dict[str, object]:
    """Every data call of the session object that needs no argument, and its value."""
    out = {}
    for name in session.list_data_attributes_and_methods():
        if name in NOT_DATA:
            continue
        value = getattr(session, name)
        if callable(value):
            params = inspect.signature(value).parameters.values()
            if any(p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                   for p in params):
                continue
            value = value()
        out[name] = value
    return out


def _assert_same(a: object, b: object, where: str) -> None:
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, obj=where)
    elif isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b, obj=where)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    else:
        assert a == b, where


def test_streamed_equals_downloaded(server, source, tmp_path):
    """Every call of a streamed session gives exactly the downloaded file's values."""
    streamed_cache, downloaded_cache = _cache(tmp_path / "s", source), _cache(tmp_path / "d", source)
    sids = [int(i) for i in streamed_cache.get_ecephys_session_table().index[:2]]
    for sid in sids:
        key = _session_key(sid)
        before = _sent(server, key)
        with streamed_cache.get_ecephys_session(sid, stream=True) as streamed, \
                downloaded_cache.get_ecephys_session(sid) as downloaded:
            assert streamed.stream is not None and downloaded.stream is None
            calls = _calls(streamed)
            assert {"get_units", "spike_times", "get_channels", "metadata"} <= set(calls)
            expected = _calls(downloaded)
            assert list(calls) == list(expected)
            for name, value in calls.items():
                _assert_same(value, expected[name], f"session {sid}: {name}")
            fetched = streamed.stream.stats.bytes_fetched
            assert 0 < fetched <= streamed.stream.size
        # the server sent the streamed bytes plus one whole download
        assert _sent(server, key) - before == fetched + streamed.stream.size


def test_reopen_fetches_nothing_and_complete_files_become_local(server, source, tmp_path):
    """A second open fetches 0 bytes; a file whose every block is kept is written out, checked
    and recorded, and read locally from then on."""
    cache = _cache(tmp_path / "c", source)
    sid = int(cache.get_ecephys_session_table().index[0])
    key = _session_key(sid)
    with cache.get_ecephys_session(sid, stream=True) as first:
        units = first.get_units()
        assert first.stream.cached_blocks() < first.stream.n_blocks, "the units table read the whole file"
    sent = _sent(server, key)
    with cache.get_ecephys_session(sid, stream=True) as again:
        assert again.stream is not None
        pd.testing.assert_frame_equal(again.get_units(), units)
        assert again.stream.stats.bytes_fetched == 0
        again.stream.prefetch([(0, again.stream.size)])  # every block kept from now on
        fetched = again.stream.stats.bytes_fetched
        assert again.stream.cached_blocks() == again.stream.n_blocks
    assert _sent(server, key) == sent + fetched
    sent = _sent(server, key)
    with cache.get_ecephys_session(sid, stream=True) as local:
        assert local.stream is None and local.path.is_file()
        pd.testing.assert_frame_equal(local.get_units(), units)
    record = cache.cache_folder.read_record()
    rel = cache.cache_folder.relative(local.path)
    assert record[rel].hash == file_hash(local.path, "blake2b")
    assert not list(local.path.parent.glob("*.blocks"))
    with cache.get_ecephys_session(sid) as downloaded:  # no download: the file is there
        pd.testing.assert_frame_equal(downloaded.get_units(), units)
    assert _sent(server, key) == sent


def test_downloaded_file_is_read_locally(server, source, tmp_path):
    """stream=True on a session already downloaded opens the local file and sends nothing."""
    cache = _cache(tmp_path / "c", source)
    sid = int(cache.get_ecephys_session_table().index[1])
    path = cache.get_ecephys_session_path(sid)
    key = _session_key(sid)
    sent = _sent(server, key)
    with cache.get_ecephys_session(sid, stream=True) as session:
        assert session.stream is None and session.path == path
        assert len(session.get_units()) > 0
    assert _sent(server, key) == sent


@pytest.fixture
def faulty(tmp_path, monkeypatch):
    """A server of its own (its fault plan stays here) and fast retries."""
    monkeypatch.setattr("abc_helpers.transfer.MAX_WAIT", 0.01)
    with SampleServer(root=build_world()) as srv:
        yield srv, Source("sample", srv.url)


@pytest.mark.parametrize("rules", [
    ["drop-after=50%,count=2"], ["status=503,count=2"], ["short-by=10,count=1"], ["ignore-range,count=1"],
    ["stall=8,count=1"],
], ids=["cut", "503", "short-body", "range-ignored", "stall"])
def test_streamed_session_survives_faults(rules, faulty, tmp_path, monkeypatch):
    """Passing faults on the session file's range requests: the same units as the downloaded file."""
    server, source = faulty
    if "stall" in rules[0]:
        monkeypatch.setenv("ABC_HELPERS_TIMEOUT", "0.2")
    cache = _cache(tmp_path / "c", source)
    sid = int(cache.get_ecephys_session_table().index[0])
    expected = _cache(tmp_path / "d", source).get_ecephys_session(sid)
    key = _session_key(sid)
    server.set_faults([f"{rule},key={key}" for rule in rules])
    with cache.get_ecephys_session(sid, stream=True) as session, expected:
        pd.testing.assert_frame_equal(session.get_units(), expected.get_units())
    plan = server.faults
    for i, (rule, hits) in enumerate(plan.hits()):
        assert hits >= 1 and plan.wait_effective(hits, index=i) == hits, rule


def test_streamed_session_fault_that_never_stops(faulty, tmp_path):
    """A fault that never stops: a clear error naming the session file and the cause."""
    server, source = faulty
    cache = _cache(tmp_path / "c", source)
    sid = int(cache.get_ecephys_session_table().index[0])
    server.set_faults([f"status=503,key={_session_key(sid)}"])
    with pytest.raises(DownloadError) as info:
        cache.get_ecephys_session(sid, stream=True)
    message = str(info.value)
    assert f"'ecephys_session_{sid}.nwb'" in message and re.search("HTTP 503", message), message


def unit_count(session: VbnEcephysSession) -> int:
    """A module-level function, so a process pool can run it."""
    return len(session.get_units())


@pytest.mark.parametrize("kind", ["threads", "processes", "default"])
def test_map_sessions(kind, server, source, tmp_path):
    """map_sessions: one value per session, in the order asked, bytes reported, on any executor."""
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    cache = _cache(tmp_path / "c", source)
    sids = [int(i) for i in cache.get_ecephys_session_table().index[:4]]
    expected = cache.get_unit_table()["ecephys_session_id"].value_counts()
    if kind == "default":
        results = cache.map_sessions(unit_count, sids, progressbar=False)
    else:
        pool = ThreadPoolExecutor(3) if kind == "threads" else ProcessPoolExecutor(2)
        with pool:
            results = cache.map_sessions(unit_count, sids, executor=pool, progressbar=False)
    assert list(results) == sids
    assert all(results[sid] == expected[sid] for sid in sids)
    assert list(results.report.index) == sids and results.report["streamed"].all()
    assert 0 < results.bytes_fetched <= results.file_bytes
    again = cache.map_sessions(unit_count, sids, progressbar=False)
    assert again == results and again.bytes_fetched == 0  # kept blocks, or files written out


class ReadLog(RangeFile):
    """A RangeFile that notes the byte span of every read h5py makes (what a call touched)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.spans: list[tuple[int, int]] = []

    def readinto(self, buffer) -> int:
        start = self.tell()
        n = super().readinto(buffer)
        self.spans.append((start, start + n))
        return n


def _stored_spans(path: Path, names: tuple[str, ...]) -> dict[str, list[tuple[int, int]]]:
    """The byte spans of each chunk of the units table's datasets *names* in a local file."""
    import h5py

    out: dict[str, list[tuple[int, int]]] = {}
    with h5py.File(path, "r") as f:
        for name in names:
            dataset = f["units"][name]
            if dataset.chunks is None:
                out[name] = [(dataset.id.get_offset(), dataset.id.get_offset() + dataset.id.get_storage_size())]
            else:
                infos = [dataset.id.get_chunk_info(i) for i in range(dataset.id.get_num_chunks())]
                out[name] = [(c.byte_offset, c.byte_offset + c.size) for c in infos]
    return out


def test_units_and_some_spike_times_read_only_their_part(server, source, tmp_path):
    """get_units reads no spike-level column (the AllenSDK's leaves them out too); get_spike_times reads
    the units asked for, with the downloaded file's values."""
    streamed_cache, downloaded_cache = _cache(tmp_path / "s", source), _cache(tmp_path / "d", source)
    sid = int(streamed_cache.get_ecephys_session_table().index[0])
    file = streamed_cache.get_ecephys_session_file(sid)
    log = ReadLog(file.url, tmp_path / "blocks", what=file.path.name)
    spans = _stored_spans(downloaded_cache.get_ecephys_session_path(sid),
                          ("spike_times", "spike_amplitudes", "waveform_mean"))

    def touched(name: str, since: int) -> bool:
        return any(a < d and c < b for a, b in log.spans[since:] for c, d in spans[name])

    with VbnEcephysSession(file.path, stream=log) as streamed, \
            downloaded_cache.get_ecephys_session(sid) as downloaded:
        units = streamed.get_units()
        assert not any(touched(name, 0) for name in spans), "get_units read a spike-level column"
        pd.testing.assert_frame_equal(units, downloaded.get_units())
        ids = [int(units.index[5]), int(units.index[2]), int(units.index[3]), int(units.index[-1])]
        before = len(log.spans)
        some = streamed.get_spike_times(ids)
        assert touched("spike_times", before)
        assert not touched("spike_amplitudes", before) and not touched("waveform_mean", before)
        assert list(some) == ids
        every = downloaded.spike_times
        for uid in ids:
            np.testing.assert_array_equal(some[uid], every[uid])
            assert some[uid].dtype == every[uid].dtype
        assert streamed.get_spike_times([]) == {}
        with pytest.raises(ValueError, match=r"\[1\] are not units of session .*get_units\(\)\.index"):
            streamed.get_spike_times([ids[0], 1])
