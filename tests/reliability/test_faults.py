"""The fault x download-path matrix: every injected fault against every way the package downloads.

Each scenario starts its own loopback :class:`SampleServer` over the cached sample world (so a fault
plan never leaks into another test), prepares the download path without faults (manifests, the
session table an NWB download needs), then injects the fault on the object(s) of that path only
and calls the public API. The outcome is checked from outside:

* **survived**: the call returns, each file at its final path has the manifest's hash (md5 for the
  ABC Atlas, blake2b for VBN; ISH grids have no published hash, so the served zip's md5), no
  ``.part`` is left;
* **refused** (404/403): a :class:`DownloadError` naming the file, the URL and the status, after one
  request, with nothing at the final path;
* **gave up, then resumed** (a fault that never stops): a :class:`DownloadError` naming the file,
  the URL and the cause, nothing at the final path; then the fault is lifted and the same call
  completes from the ``.part`` left behind, re-sending no byte already received (except after a
  hash mismatch or an ignored ``Range``, where the bytes must be thrown away).

Every scenario also checks that its fault took effect as planned: the server counts, per rule, the
responses it changed (``FaultPlan.effective``: a cut that withheld bytes, a stall before withheld
bytes, a flipped byte sent, a ``Range`` ignored...), and offsets are fractions of each body, so a
"survived" cell cannot pass because its fault fell past the end of a resumed body. Bytes are counted by the server
(``stats()["bytes_sent"]``); "re-sent" is everything sent for the path's objects minus their sizes. Set ``ABC_HELPERS_FAULT_REPORT=<file.json>`` to write the
measured table (one row per scenario) when the module finishes.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.downloads import PATHS, Target, check_whole, sent

from abc_helpers.sample import SampleServer, build_world
from abc_helpers.sources import Source
from abc_helpers.transfer import DownloadError

#: Read time-out of the client during stall faults (seconds); servers stall far longer.
TIMEOUT = 0.2
#: How long a stalled server waits. A stalled request whose client gave up sends nothing when it
#: wakes (the server checks), so a scenario that outlasts the stall under load still counts only the
#: bytes its client could receive.
STALL = 8.0
#: A stall longer than the client's time-out but shorter than a scenario.
SHORT_STALL = 0.5
RESULTS: dict[str, dict] = {}


# -- the world and the servers ------------------------------------------------------------------
@pytest.fixture(scope="module")
def world() -> Path:
    """The cached sample world (built once by whoever asks first; never forced)."""
    return build_world()


@pytest.fixture
def server(world):
    """A fresh server per scenario: its own fault plan and byte counts."""
    with SampleServer(root=world) as srv:
        yield srv


@pytest.fixture
def source(server) -> Source:
    return Source("sample", server.url)


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    """Short back-off, so that 6 attempts take well under a second."""
    monkeypatch.setattr("abc_helpers.transfer.MAX_WAIT", 0.01)


@pytest.fixture(scope="module", autouse=True)
def _report():
    """Write the measured matrix to ``$ABC_HELPERS_FAULT_REPORT`` (if set) at the end."""
    yield
    out = os.environ.get("ABC_HELPERS_FAULT_REPORT")
    if out and RESULTS:
        Path(out).write_text(json.dumps(RESULTS, indent=1, sort_keys=True))


# -- faults --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    """A fault: the rule(s) per object, what must happen, and the words the error must contain."""

    rules: Callable[[int], list[str]]  # size -> rule texts without key=
    outcome: str  # "survive", "refuse" or "exhaust"
    cause: str = ""  # regex the DownloadError must match
    # a resumed transfer re-sends no byte it already received; off where bytes must be thrown away,
    # and for status faults, whose only extra bytes are the server's XML error documents
    resend_bound: bool = True


FAULTS = {
    # transient: the download must end with the right bytes
    "drop-connection-twice": Scenario(lambda n: ["drop-after=50%,count=2"], "survive"),
    "503-with-retry-after": Scenario(lambda n: ["status=503,retry-after=0.2,count=2"], "survive", resend_bound=False),
    "503-without-retry-after": Scenario(lambda n: ["status=503,count=2"], "survive", resend_bound=False),
    "500": Scenario(lambda n: ["status=500,count=2"], "survive", resend_bound=False),
    "stall-before-first-byte": Scenario(lambda n: [f"stall={STALL},count=1"], "survive"),
    "stall-mid-body": Scenario(lambda n: [f"stall-after=50%,stall={STALL},count=1"], "survive"),
    "wrong-byte": Scenario(lambda n: ["corrupt-at=50%,count=1"], "survive", resend_bound=False),
    "short-body": Scenario(lambda n: ["short-by=10,count=1"], "survive"),
    "cut-then-range-ignored": Scenario(
        lambda n: ["drop-after=50%,count=1", "ignore-range,count=1"], "survive",
        resend_bound=False),
    # refused at once
    "404": Scenario(lambda n: ["status=404"], "refuse", r"HTTP 404"),
    "403": Scenario(lambda n: ["status=403"], "refuse", r"HTTP 403"),
    # never stops: give up with a clear error, then resume when the fault is gone
    "drop-connection-always": Scenario(lambda n: ["drop-after=5%"], "exhaust",
                                       r"connection broken|short body"),
    "503-always": Scenario(lambda n: ["status=503"], "exhaust", r"HTTP 503", resend_bound=False),
    "stall-always": Scenario(lambda n: [f"stall={STALL}"], "exhaust", r"[Tt]ime ?out|timed out"),
    # stalled requests wake while the scenario still runs, their clients gone: they must send
    # nothing (the root of the flaky "re-sent 27338 of 221010 bytes" under load)
    "stall-always-waking": Scenario(lambda n: [f"stall={SHORT_STALL}"], "exhaust",
                                    r"[Tt]ime ?out|timed out"),
    "wrong-byte-always": Scenario(lambda n: ["corrupt-at=50%"], "exhaust", r"hash mismatch|fails its CRC",
                                  resend_bound=False),
}

#: Cells that fail because of a bug reported to the module's owner (see the report).
KNOWN_BUGS: dict[tuple[str, str], str] = {}  # (fault, path) -> reason, for bugs reported but not fixed


def _matrix():
    for fault in FAULTS:
        for path in PATHS:
            marks = ()
            if (fault, path) in KNOWN_BUGS:
                marks = (pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[(fault, path)]),)
            yield pytest.param(fault, path, id=f"{fault}-x-{path}", marks=marks)


def _plan(target: Target, scenario: Scenario) -> list[str]:
    """One set of rules per object, keyed on its exact request path (counts are per object)."""
    return [f"{rule},key={key}" for _, key, _, size in target.files for rule in scenario.rules(size)]






def _check_fired(server) -> None:
    """Each rule changed every response it matched: exactly its count if it has one, at least one
    if unlimited. (A request the client gave up on before the server read it is counted when the
    server reads it: wait for that, never longer than needed.)"""
    plan = server.faults
    for i, (fault, (rule, hits)) in enumerate(zip(plan.faults, plan.hits(), strict=True)):
        effective = plan.wait_effective(hits, index=i, timeout=10.0)
        assert effective == hits, f"the fault '{rule}' matched {hits} request(s) but changed {effective}"
        if fault.count is not None:
            assert hits == fault.count, f"the fault '{rule}' took effect {hits} time(s), planned {fault.count}"
        else:
            assert hits >= 1, f"the fault '{rule}' never took effect"


@pytest.mark.parametrize(("fault", "path"), list(_matrix()))
def test_fault_against_download_path(fault, path, server, source, world, tmp_path, monkeypatch):
    """One fault against one download path: a verified file, or a clear error and a resumable .part."""
    scenario = FAULTS[fault]
    target = PATHS[path](tmp_path, source, world)
    if "stall" in fault:  # read time-out read by transfer.py at each request
        monkeypatch.setenv("ABC_HELPERS_TIMEOUT", str(TIMEOUT))
    server.reset_stats()
    server.set_faults(_plan(target, scenario))
    started = time.perf_counter()
    row = {"fault": fault, "path": path, "size": target.size}
    RESULTS[f"{fault}-x-{path}"] = row

    if scenario.outcome == "survive":
        target.fetch()
        row["seconds"] = round(time.perf_counter() - started, 3)
        check_whole(target)
        _check_fired(server)
        resent = sent(server, target) - target.size
        row.update(result="survived", resent=resent)
        if fault == "503-with-retry-after":
            assert row["seconds"] >= 0.4 - 0.05, "Retry-After (2 x 0.2 s) was not honoured"
        if scenario.resend_bound:
            assert resent == 0, f"re-sent {resent} of {target.size} bytes"
        return

    with pytest.raises(DownloadError) as info:
        target.fetch()
    row["seconds"] = round(time.perf_counter() - started, 3)
    message = str(info.value)
    for local, key, _, _ in target.files:
        assert f"'{local.name}'" in message, f"the error does not name {local.name}: {message}"
        assert f"{server.url}/{key}" in message, f"the error does not give the URL: {message}"
        assert not local.exists(), f"{local} exists after a failed download"
    assert re.search(scenario.cause, message), f"the error does not say why: {message}"
    _check_fired(server)
    if scenario.outcome == "refuse":
        requests = server.stats()["requests"]
        assert all(requests.get(key) == 1 for _, key, _, _ in target.files), "404/403 was retried"
        row.update(result="refused (DownloadError, not retried)", resent=0)
        return

    parts = [local.with_name(local.name + ".part") for local, *_ in target.files]
    kept = sum(p.stat().st_size for p in parts if p.exists())
    row["part_bytes_kept"] = kept
    if fault == "drop-connection-always":
        assert kept > 0, "the bytes received before each cut were thrown away"
    if fault == "wrong-byte-always":
        assert kept == 0, "corrupt bytes were kept in a .part"
    server.set_faults(None)
    target.fetch()  # the next call resumes
    check_whole(target)
    resent = sent(server, target) - target.size
    row.update(result="gave up with a clear DownloadError; next call resumed", resent=resent)
    if scenario.resend_bound:
        assert resent == 0, f"re-sent {resent} of {target.size} bytes"
