"""Faults injected into a sandbox as an operator meets them on EKS, for the fault tests and
their benchmark: a slot move cut short by a peer that dies or freezes, a damaged nodes.conf
or a lost volume, and the waits that tell a failover has happened."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from cluster_logic.migration import SlotMover
from cluster_logic.model import parse_cluster_nodes
from sandbox.local_cluster import Sandbox
from testkit.sandbox_support import masters, node_client, record_of, snapshot

DAMAGES = ("empty", "truncated", "corrupt", "volume lost")


class CutMidMove:
    """While in effect, lets the slot mover finish one unit of work (a round of slots moved
    key by key, or one atomic migration job), then SIGKILLs (`how="kill"`) or SIGSTOPs
    (`how="freeze"`) the target or the source (`victim`) of the next unit once it is under
    way: on the key-by-key path after its slots were marked open, on the atomic path as its
    job starts. The victim owns slots by then, so its replica takes over once the node
    timeout has passed. `thaw()` resumes a frozen victim."""

    def __init__(self, sandbox: Sandbox, victim: str, how: str) -> None:
        if victim not in ("source", "target") or how not in ("kill", "freeze"):
            raise ValueError(f"victim source|target and how kill|freeze, not {victim!r}, {how!r}")
        self.sandbox, self.victim, self.how = sandbox, victim, how
        self.pod, self.node_id, self.pid = "", "", 0
        self._first_taken = False
        self._first_done = threading.Event()
        self._lock = threading.Lock()
        self._originals: dict[str, Any] = {}

    def __enter__(self) -> CutMidMove:
        for name in ("_drain", "move_atomically"):
            original = self._originals[name] = getattr(SlotMover, name)
            setattr(SlotMover, name, self._unit(original))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._originals.items():
            setattr(SlotMover, name, original)

    def _unit(self, original):
        def unit(mover, slots, source, target):
            with self._lock:
                first, self._first_taken = not self._first_taken, True
            if first:
                try:
                    return original(mover, slots, source, target)
                finally:
                    self._first_done.set()
            self._first_done.wait(60)
            self._cut(source if self.victim == "source" else target)
            return original(mover, slots, source, target)

        return unit

    def _cut(self, node) -> None:
        with self._lock:
            if self.pod:
                return
            self.node_id = snapshot(self.sandbox)[node.pod].id
            if self.how == "kill":
                self.sandbox.kill(node.pod)
            else:
                self.pid = record_of(self.sandbox.load(), node.pod).pid
                os.kill(self.pid, signal.SIGSTOP)
            self.pod = node.pod

    def thaw(self) -> None:
        if self.pid:
            os.kill(self.pid, signal.SIGCONT)


def wait_failed_over(sandbox: Sandbox, node_id: str, pod: str, timeout: float = 60.0) -> float:
    """Until every running node but `pod` lists `node_id` as failed and most of them as holding
    no slot: its replica was promoted and took its slots. (A node importing slots from it
    keeps it as their owner: Redis does not update the owner of a slot it imports.) Returns
    the seconds it took."""
    started = time.monotonic()
    while True:
        views = []
        state = sandbox.load()
        for record in state.nodes:
            if record.pid is None or record.pod == pod:
                continue
            client = node_client(state, record)
            try:
                views.append(parse_cluster_nodes(client.execute_command("CLUSTER", "NODES")))
            finally:
                client.close()
        entries = [e for view in views for e in view if e.id == node_id]
        if entries and all("fail" in e.flags for e in entries) and sum(not e.slots for e in entries) > len(entries) / 2:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{node_id}'s slots were not taken over within {timeout:.0f}s: {entries}")
        time.sleep(0.2)


def wait_promoted(sandbox: Sandbox, candidates: Sequence[str], slots, timeout: float = 60.0) -> str:
    """The first of `candidates` that serves `slots` as a master."""
    deadline = time.monotonic() + timeout
    while True:
        owners = {p: f for p, f in masters(sandbox).items() if p in candidates and f.slots == slots}
        if owners:
            return next(iter(owners))
        if time.monotonic() > deadline:
            raise AssertionError(f"none of {list(candidates)} took over {slots} within {timeout:.0f}s")
        time.sleep(0.2)


def damage(data_dir: Path, how: str) -> None:
    """A pod's data as a fault leaves it: nodes.conf `empty`, `truncated` (cut inside a line)
    or `corrupt` (garbage bytes), or the whole `volume lost` (a new, empty volume)."""
    nodes_conf = data_dir / "nodes.conf"
    if how == "empty":
        nodes_conf.write_text("")
    elif how == "truncated":
        text = nodes_conf.read_text()
        nodes_conf.write_text(text[: len(text) // 2])
    elif how == "corrupt":
        nodes_conf.write_bytes(b"\x00\x17garbage written by a failing disk\n" + nodes_conf.read_bytes()[7:])
    elif how == "volume lost":
        for entry in data_dir.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    else:
        raise ValueError(f"how: one of {', '.join(DAMAGES)}, not {how!r}")
