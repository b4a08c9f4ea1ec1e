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


def save_result(name: str, summary: dict, quick: bool, note: str = "") -> Path:
    """Write *summary* with :func:`machine` to ``bench/results/<name>[-quick].json``; return the path.

    The book quotes these files, so every figure a reader sees says where and when it was measured.
    *note* says what the figures cannot, e.g. that the machine was shared with other jobs.
    """
    import json

    out = Path(__file__).resolve().parent / "results" / f"{name}{'-quick' if quick else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"benchmark": name, "quick": quick, "machine": machine(), "note": note,
                               "figures": summary}, indent=1) + "\n")
    return out


def add_save_arguments(parser) -> None:
    """The ``--save`` and ``--note`` options every benchmark takes (see :func:`save_result`)."""
    parser.add_argument("--save", action="store_true",
                        help="also write the figures to bench/results/<benchmark>[-quick].json (quoted by the book)")
    parser.add_argument("--note", default="",
                        help="saved with the figures, e.g. 'a 2-core machine shared with other jobs'")
