"""What every benchmark prints about the machine its figures come from, and the engines it ran."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Iterable

import redis

from sandbox.engine_binaries import EngineBinaries


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return "unknown memory"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_line() -> str:
    cpus = len(os.sched_getaffinity(0))
    return (
        f"machine: {cpus} CPUs ({cpu_model()}), {memory()}, Python {platform.python_version()}, "
        f"redis-py {redis.__version__}"
    )


def header_lines(binaries: Iterable[EngineBinaries]) -> list[str]:
    """The machine, each engine's exact release and binaries, and the load right now."""
    lines = [machine_line()]
    lines += [f"engine:  {b.describe()}" for b in binaries]
    lines.append(f"load average at start: {load_average()}")
    return lines
