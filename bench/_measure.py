"""Measurements shared by the benchmarks."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    Read from VmHWM, which, unlike ``ru_maxrss``, is not inherited from the parent across a fork.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bytes_read() -> int | None:
    """Bytes this process has read through read/pread system calls so far (``rchar``), or None.

    Counts what a method asks of its files, whether the page cache or the disk answers, so the
    difference around a call is how much of a file that call reads.
    """
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def machine() -> dict:
    """What the figures were measured on: CPU model and count, memory, Python, the date, the load.

    ``load_average`` (1, 5 and 15 minutes, when the figures are saved) shows how busy the machine
    was: on a shared machine, other jobs compete for the CPUs while a benchmark runs.
    """
    import datetime as dt
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {"date": dt.date.today().isoformat(), "cpu": cpu, "cpus": os.cpu_count(),
            "memory_gb": memory_gb, "python": platform.python_version(), "system": platform.system(),
            "load_average": [round(load, 2) for load in os.getloadavg()]}


#: The link model of the benchmarks (shared with the streamed-sessions work): 20 ms to the first
#: byte of every response, each body paced at 50 MB/s (the sample server's ``--latency-ms
#: --bandwidth-mbs``). Benchmarks that use the network report it beside bare loopback.
LINK_LATENCY_MS = 20.0
LINK_BANDWIDTH_MBS = 50.0
#: The fewest rounds a benchmark runs (``--rounds`` may ask for more).
MIN_ROUNDS = 3


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages now (other jobs competing for the CPUs)."""
    import os

    return [round(load, 2) for load in os.getloadavg()]


def link_label(latency_ms: float, bandwidth_mbs: float | None) -> str:
    """How a link is named in the figures: ``"loopback"`` or e.g. ``"20ms_50MBs"``."""
    if not latency_ms and not bandwidth_mbs:
        return "loopback"
    return f"{latency_ms:g}ms" + (f"_{bandwidth_mbs:g}MBs" if bandwidth_mbs else "")


def serve_args(latency_ms: float = 0.0, bandwidth_mbs: float | None = None) -> list[str]:
    """The ``python -m abc_helpers.sample serve`` options of a link (none for loopback)."""
    out = []
    if latency_ms:
        out += ["--latency-ms", str(latency_ms)]
    if bandwidth_mbs:
        out += ["--bandwidth-mbs", str(bandwidth_mbs)]
    return out


def alternating(methods: dict, rounds: int, log=None) -> dict[str, list]:
    """Run each of *methods* (name -> callable returning a result) once per round, *rounds* times.

    The order alternates: forwards in even rounds, backwards in odd ones, so that a busy minute of
    a shared machine, or a cache one method warms for the next, does not always favour the same
    method. Returns each method's results in round order. *log*, if given, is called with
    ``(round, name, result)`` after each run.
    """
    names = list(methods)
    results: dict[str, list] = {name: [] for name in names}
    for i in range(rounds):
        for name in (names if i % 2 == 0 else names[::-1]):
            result = methods[name]()
            results[name].append(result)
            if log is not None:
                log(i, name, result)
    return results


def spread(values, digits: int = 3) -> dict:
    """``{"median", "min", "max", "runs"}`` of some measurements (seconds, ratios, ...)."""
    import statistics

    values = [float(v) for v in values]
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "runs": [round(v, digits) for v in values]}


def ratios(numerators, denominators) -> list[float]:
    """Round by round ratios (the two methods of a round ran within seconds of each other)."""
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


def save_result(name: str, summary: dict, quick: bool, note: str = "",
                load_before: list[float] | None = None, load_after: list[float] | None = None) -> Path:
    """Write *summary* with :func:`machine` to ``bench/results/<name>[-quick].json``; return the path.

    The book quotes these files, so every figure a reader sees says where and when it was measured.
    *note* says what the figures cannot, e.g. that the machine was shared with other jobs.
    *load_before* and *load_after* (:func:`load_average` when the timed measurements started and
    ended) are saved in ``machine``; *load_after* defaults to the load when the file is written
    (``machine.load_average``).
    """
    import json

    out = Path(__file__).resolve().parent / "results" / f"{name}{'-quick' if quick else ''}.json"
    out.parent.mkdir(exist_ok=True)
    info = machine()
    info["load_before"] = load_before
    info["load_after"] = load_after if load_after is not None else info["load_average"]
    out.write_text(json.dumps({"benchmark": name, "quick": quick, "machine": info, "note": note,
                               "figures": summary}, indent=1) + "\n")
    return out


def add_save_arguments(parser) -> None:
    """The ``--save`` and ``--note`` options every benchmark takes (see :func:`save_result`)."""
    parser.add_argument("--save", action="store_true",
                        help="also write the figures to bench/results/<benchmark>[-quick].json (quoted by the book)")
    parser.add_argument("--note", default="",
                        help="saved with the figures, e.g. 'a 2-core machine shared with other jobs'")
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS,
                        help=f"rounds of every method, in alternating order (at least {MIN_ROUNDS})")


def rounds_of(args) -> int:
    """The rounds asked for, at least :data:`MIN_ROUNDS`."""
    return max(MIN_ROUNDS, int(getattr(args, "rounds", MIN_ROUNDS) or MIN_ROUNDS))
