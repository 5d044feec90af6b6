"""Control groups around the sandbox's servers, for the soak: each node held to its pod's memory limit, all of them behind a slow disk.

A pod's memory limit is a cgroup limit that counts the server's pages, its forks'
copy-on-write pages and the page cache of its AOF; a slow EBS volume makes the server's
fsyncs slow. Here each server goes into a memory cgroup of its own with the pod's limit,
and every server into one blkio cgroup whose write bandwidth to the data directory's disk
can be throttled and released.

This machine mounts cgroups v1 beside a v2 hierarchy that holds no io controller (only
hugetlb), so the io limit is v1's `blkio.throttle.write_bps_device`: it slows the writes a
process pushes to the disk itself (fsync, O_DIRECT) and not the page cache's background
writeback, which is exactly the AOF's `appendfsync everysec` and a rewrite's incremental
fsyncs. Needs root. `close()` moves every process still in the groups (the servers, and the
rewrites they forked) back to the cgroups of the process that made them, and removes the
groups; nothing is left behind.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

CGROUP_ROOT = Path("/sys/fs/cgroup")


class CgroupError(RuntimeError):
    """The controllers this needs are not there or refuse us; the message says which."""


def _v1_controller(name: str) -> Path:
    path = CGROUP_ROOT / name
    if not (path / "cgroup.procs").exists():
        raise CgroupError(f"no cgroup v1 {name} controller at {path} (cgroup v2 only here?)")
    return path


def whole_disk(path: Path) -> str:
    """`major:minor` of the disk that holds `path` (the disk itself, not a partition)."""
    device = os.stat(path).st_dev
    block = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}")
    if not block.exists():
        raise CgroupError(f"{path} is not on a block device (st_dev {os.major(device)}:{os.minor(device)})")
    if (block / "partition").exists():
        return (block.resolve().parent / "dev").read_text().strip()
    return (block / "dev").read_text().strip()


def _cgroup_of(pid: int, controller: str) -> Optional[str]:
    """The v1 cgroup `pid` is in for `controller`, from /proc/<pid>/cgroup."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return None


class NodeCgroups:
    """`<memory>/<name>/<pod>` per server with its memory limit, and `<blkio>/<name>` for all."""

    def __init__(self, name: str, data_path: Path) -> None:
        self.memory = _v1_controller("memory") / name
        self.blkio = _v1_controller("blkio") / name
        self.disk = whole_disk(data_path)
        # A group of the name left by a run that died is taken over, and removed at the end.
        self.memory.mkdir(exist_ok=True)
        self.blkio.mkdir(exist_ok=True)

    def add(self, pod: str, pid: int, memory_limit_bytes: int) -> None:
        """Puts the server `pid` (its later forks follow it) under its pod's memory limit and
        behind the shared disk."""
        group = self.memory / pod
        group.mkdir(exist_ok=True)
        (group / "memory.limit_in_bytes").write_text(str(memory_limit_bytes))
        # v1 leaves a process's pages charged where they were when it moves; have them follow
        # it (anonymous and file pages), as they would be charged in a pod from the start.
        try:
            (group / "memory.move_charge_at_immigrate").write_text("3")
        except OSError:
            pass
        (group / "cgroup.procs").write_text(str(pid))
        (self.blkio / "cgroup.procs").write_text(str(pid))

    def throttle_writes(self, bytes_per_second: Optional[int]) -> None:
        """Limits the servers' own writes to the disk (None: no limit)."""
        rule = f"{self.disk} {bytes_per_second if bytes_per_second else 0}"
        (self.blkio / "blkio.throttle.write_bps_device").write_text(rule)

    def memory_failures(self) -> dict[str, int]:
        """Per pod, how often its group hit the limit (memory.failcnt)."""
        return {
            group.name: int((group / "memory.failcnt").read_text())
            for group in sorted(self.memory.iterdir())
            if group.is_dir() and (group / "memory.failcnt").exists()
        }

    def memory_peaks(self) -> dict[str, int]:
        """Per pod, the most its group held at once, page cache included (memory.max_usage_in_bytes)."""
        return {
            group.name: int((group / "memory.max_usage_in_bytes").read_text())
            for group in sorted(self.memory.iterdir())
            if group.is_dir() and (group / "memory.max_usage_in_bytes").exists()
        }

    def oom_kills(self) -> dict[str, int]:
        """Per pod, the OOM kills in its group (memory.oom_control's oom_kill, when the kernel has it)."""
        found = {}
        for group in sorted(self.memory.iterdir()):
            control = group / "memory.oom_control"
            if group.is_dir() and control.exists():
                fields = dict(line.split() for line in control.read_text().splitlines() if len(line.split()) == 2)
                found[group.name] = int(fields.get("oom_kill", 0))
        return found

    def close(self) -> list[str]:
        """Releases the throttle, moves every process still in the groups (the servers and
        whatever they forked since: a rewrite still running) back to the cgroups this
        process is in, and removes the groups; returns what could not be undone."""
        problems = []
        try:
            self.throttle_writes(None)
        except OSError as error:
            problems.append(f"throttle: {error}")
        groups = {"memory": [*sorted(self.memory.glob("*/")), self.memory], "blkio": [self.blkio]}
        for controller, members in groups.items():
            home = CGROUP_ROOT / controller / (_cgroup_of(os.getpid(), controller) or "/").lstrip("/")
            for group in members:
                for _ in range(50):
                    try:
                        pids = (group / "cgroup.procs").read_text().split()
                    except OSError:
                        break
                    if not pids:
                        break
                    for pid in pids:
                        try:
                            (home / "cgroup.procs").write_text(pid)
                        except (ProcessLookupError, OSError):
                            pass
                    time.sleep(0.1)
                try:
                    if group.exists():
                        group.rmdir()
                except OSError as error:
                    problems.append(f"{group}: {error}")
        return problems
