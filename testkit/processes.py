"""Finding and ending what a test left running: the test-only half of process control.

The product's half (alive, wait until gone, stop like the kubelet, end a session) is
`sandbox.processes`, which the tests use directly.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from sandbox.processes import alive, cmdline


def processes_under(root: Path) -> list[int]:
    """Pids of every live process whose working directory lies under `root`: each node runs
    in its own directory (LocalNode's cwd), and so do the scripts and redis-cli it starts."""
    root_text = str(Path(root).resolve())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if (cwd == root_text or cwd.startswith(root_text + "/")) and alive(int(entry)):
            found.append(int(entry))
    return found


def sweep(root: Path) -> list[str]:
    """SIGKILLs every process still working under `root`; returns what it found, to report."""
    found = []
    for pid in processes_under(root):
        found.append(f"pid {pid}: {cmdline(pid) or '?'}")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return found
