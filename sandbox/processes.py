"""Process control by pid, as the kubelet does it: alive, wait until gone, stop (SIGTERM, grace, SIGKILL).

Every function reads /proc, so it works on processes this process did not start (the sandbox
CLI runs each command in a new process and knows its nodes by the pids it recorded). A
process that is this process's child is reaped when found dead, so no zombie is left over.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

from components.engines import ENGINES

# How long a stop waits for the process to end on SIGTERM before it SIGKILLs it: the pod's
# terminationGracePeriodSeconds as far as the process is concerned.
GRACE_SECONDS = 30.0
# After SIGKILL only a process stuck in the kernel is still there this long.
KILL_WAIT_SECONDS = 10.0


def _state(pid: int) -> Optional[str]:
    """The state letter of /proc/<pid>/stat (R, S, Z, ...), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command: state ppid pgrp session ...
    return stat[stat.rfind(")") + 2]


def reap(pid: int) -> None:
    """Collects the exit status of `pid` if it is a dead child of this process."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def alive(pid: Optional[int]) -> bool:
    """Whether `pid` runs. A zombie does not: it has ended and only waits to be reaped."""
    if not pid:
        return False
    reap(pid)
    state = _state(pid)
    return state is not None and state != "Z"


def cmdline(pid: int) -> str:
    """The command line of `pid`, its arguments joined by spaces ("" when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def is_server(pid: Optional[int]) -> bool:
    """Whether `pid` is a running server of either engine (redis-server, valkey-server): a
    recorded pid may have been reused since."""
    if not alive(pid):
        return False
    # The server sets its title to `<path of the binary> <addr:port> [cluster]`; until then
    # the name is in the command that started it (through a loader, a wrapper, entrypoint.sh).
    command = cmdline(pid)
    return any(engine.server in command for engine in ENGINES.values())


def wait_gone(pid: int, timeout: float) -> bool:
    """Whether the process has ended within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def session_members(session_id: int) -> list[int]:
    """The pids of every live process in the session (a zombie is dead already)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 3 and fields[0] != "Z" and int(fields[3]) == session_id:
            members.append(int(entry))
    return members


def kill_session(session_id: int) -> None:
    """SIGKILLs every process in the session. The session id cannot be reused while any
    member lives, so this never hits a stranger; `timeout` moving redis-cli to its own
    process group does not take it out of the session."""
    for _ in range(50):
        alive_members = []
        for pid in session_members(session_id):
            try:
                os.kill(pid, signal.SIGKILL)
                alive_members.append(pid)
            except ProcessLookupError:
                pass
        if not alive_members:
            return
        time.sleep(0.02)


def kill_and_reap(process: subprocess.Popen, what: str) -> None:
    """SIGKILLs the session `process` leads and waits for the process itself to be reaped."""
    kill_session(process.pid)
    try:
        process.wait(timeout=KILL_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        # Only a process stuck in the kernel survives SIGKILL this long.
        raise RuntimeError(f"{what} (pid {process.pid}) did not die on SIGKILL") from None


def stop_like_the_kubelet(pid: int, grace: float = GRACE_SECONDS) -> None:
    """Stops a container's main process and everything in its session: SIGTERM, SIGKILL of
    whatever is left after `grace` seconds (the preStop hook, if any, runs before this).

    Redis drops a SIGTERM that arrives while it writes its first AOF after a full sync
    ("Writing initial AOF, can't exit") and runs on; the kubelet would SIGKILL it at the end
    of the grace period. This asks again each second instead, so that a stop stays a clean
    shutdown whenever the server lets it.
    """
    deadline = time.monotonic() + grace
    while alive(pid) and time.monotonic() < deadline:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            break
        wait_gone(pid, min(1.0, max(0.0, deadline - time.monotonic())))
    # The server after the grace period, and whatever it left behind (a peer-recovery loop,
    # a redis-cli): a container's end ends them all.
    kill_session(pid)
    if not wait_gone(pid, KILL_WAIT_SECONDS):
        raise RuntimeError(f"pid {pid} did not die on SIGKILL")
