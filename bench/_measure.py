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


def machine() -> dict:
    """What the figures were measured on: CPU model and count, memory, Python, the date."""
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
            "memory_gb": memory_gb, "python": platform.python_version(), "system": platform.system()}


def save_result(name: str, summary: dict, quick: bool) -> Path:
    """Write *summary* with :func:`machine` to ``bench/results/<name>[-quick].json``; return the path.

    The book quotes these files, so every figure a reader sees says where and when it was measured.
    """
    import json

    out = Path(__file__).resolve().parent / "results" / f"{name}{'-quick' if quick else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"benchmark": name, "quick": quick, "machine": machine(),
                               "figures": summary}, indent=1) + "\n")
    return out
