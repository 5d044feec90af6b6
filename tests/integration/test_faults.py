"""Faults an operator meets on EKS, injected into the sandbox (the dev stack's files, the
bootstrap's own code) on the engine under test, with every acknowledged write checked after.

Each test builds its own `Sandbox` on 127.0.8x.0/24 and stops every process it started, by
pid, whether it passes or fails (`make_sandbox`, tests/integration/conftest.py).

What is proven:
* scale-out: the moment `up --shards 4` returns, every replica of a master that gained
  slots holds what its master held, so killing that master then loses no key.
* a scale-out cut short by the death or the freeze of a move's target or source (after part
  of the slots moved, so the victim's replica takes over): `up` gives up within the command
  timeout and says the next update resumes, and the next `up` does, towards the node that
  holds the keys now; no key and no WAIT-acknowledged write is lost, and every slot is
  served again.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from cluster_logic.errors import BootstrapError
from cluster_logic.migration import SlotMover
from cluster_logic.model import parse_cluster_nodes
from cluster_logic.transports.base import COMMAND_TIMEOUT_SECONDS
from testkit.sandbox_support import cluster_client, masters, node_client, record_of, snapshot, wait_healthy
from testkit.writers import Writer, lost_keys, write_keys

pytestmark = pytest.mark.integration

# 127.0.<octet>.0/24 per test; this suite owns 80..89.
SCALE_OUT_KILL, MOVE_TARGET_KILLED, MOVE_SOURCE_KILLED, MOVE_TARGET_FROZEN, MOVE_SOURCE_FROZEN = range(80, 85)

# Enough keys that a quarter of them take a measurable time to reach a new replica.
LOADED_KEYS = 100_000


def _replication(sandbox, pod: str) -> dict:
    state = sandbox.load()
    client = node_client(state, record_of(state, pod))
    try:
        return client.info("replication")
    finally:
        client.close()


def _assert_nothing_lost(sandbox, expected: dict[str, str], what: str) -> None:
    assert expected, f"no {what} to check: the test proves nothing"
    with cluster_client(sandbox) as client:
        lost = lost_keys(client, expected)
    assert not lost, f"{len(lost)} of {len(expected)} {what} lost, e.g. {lost[:10]}"


# ---------------------------------------------------------------------------------------
# 1. Scale-out reports ok only once the new masters' replicas hold the moved keys.
# ---------------------------------------------------------------------------------------


def test_killing_a_new_master_the_moment_scale_out_returns_loses_no_key(make_sandbox):
    sb = make_sandbox(SCALE_OUT_KILL).sandbox
    sb.up()
    with cluster_client(sb) as client:
        keys = write_keys(client, "k", LOADED_KEYS)
    before = set(masters(sb))

    topology = sb.up(shards=4)

    # Read at once, before anything else: what a master that dies now leaves behind.
    new_masters = {p: f for p, f in masters(sb).items() if p not in before}
    assert topology["state"] == "ok" and len(new_masters) == 1, (topology["problems"], new_masters)
    (new_master, facts), *_ = new_masters.items()
    offsets = {}
    for replica in (r["pod"] for r in topology["replicas"] if r["master"] == new_master):
        offsets[replica] = _replication(sb, replica).get("slave_repl_offset", 0)
    master_offset = _replication(sb, new_master)["master_repl_offset"]
    sb.kill(new_master)
    assert master_offset > 0 and offsets, (master_offset, offsets)
    assert all(offset >= master_offset for offset in offsets.values()), (
        f"up returned while {new_master}'s replicas were behind it: {offsets} of {master_offset}"
    )

    # Its replica takes over (the killed pod stays down until then: back at once, it would
    # bring its keys back from its own AOF); then `up` brings the pod back as a replica.
    heir = _wait_promoted(sb, list(offsets), facts.slots)
    sb.up()
    wait_healthy(sb)
    assert heir in masters(sb) and new_master not in masters(sb)
    _assert_nothing_lost(sb, keys, "keys")


def _wait_promoted(sandbox, candidates: list[str], slots, timeout: float = 60.0) -> str:
    """The first of `candidates` that serves `slots` as a master."""
    deadline = time.monotonic() + timeout
    while True:
        owners = {p: f for p, f in masters(sandbox).items() if p in candidates and f.slots == slots}
        if owners:
            return next(iter(owners))
        assert time.monotonic() < deadline, f"none of {candidates} took over {slots} within {timeout:.0f}s"
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------
# 2. A scale-out cut short by the death of a move's target or source.
# ---------------------------------------------------------------------------------------


class _CutMidMove:
    """Lets the mover finish one unit of work (a round of slots moved key by key, or one
    atomic migration job), then SIGKILLs (`how="kill"`) or SIGSTOPs (`how="freeze"`) the
    target or the source of the next unit once it is under way: on the key-by-key path after
    its slots were marked open, on the atomic path as its job starts. The victim owns slots
    by then, so its replica takes over once the node timeout has passed."""

    def __init__(self, sandbox, monkeypatch, victim: str, how: str) -> None:
        self.sandbox, self.victim, self.how = sandbox, victim, how
        self.pod, self.node_id, self.pid = "", "", 0
        self._first_taken = False
        self._first_done = threading.Event()
        self._lock = threading.Lock()
        drain, atomic = SlotMover._drain, SlotMover.move_atomically

        def unit(original, mover, slots, source, target):
            with self._lock:
                first, self._first_taken = not self._first_taken, True
            if first:
                try:
                    return original(mover, slots, source, target)
                finally:
                    self._first_done.set()
            self._first_done.wait(60)
            self._cut(source if victim == "source" else target)
            return original(mover, slots, source, target)

        monkeypatch.setattr(SlotMover, "_drain", lambda m, slots, s, t: unit(drain, m, slots, s, t))
        monkeypatch.setattr(SlotMover, "move_atomically", lambda m, slots, s, t: unit(atomic, m, slots, s, t))

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


@pytest.mark.parametrize(
    ("how", "victim", "octet"),
    [
        ("kill", "target", MOVE_TARGET_KILLED),
        ("kill", "source", MOVE_SOURCE_KILLED),
        ("freeze", "target", MOVE_TARGET_FROZEN),
        ("freeze", "source", MOVE_SOURCE_FROZEN),
    ],
)
def test_a_scale_out_cut_short_by_a_lost_peer_is_finished_by_the_next_up(make_sandbox, monkeypatch, how, victim, octet):
    sb = make_sandbox(octet).sandbox
    sb.up()
    with cluster_client(sb) as client:
        keys = write_keys(client, "k", 20_000)
    plain = Writer(cluster_client(sb), "plain").start()
    durable = Writer(cluster_client(sb), "durable", mode="wait").start()
    cut = None
    try:
        plain.wait_acknowledged(50)
        cut = _CutMidMove(sb, monkeypatch, victim, how)
        started = time.monotonic()
        with pytest.raises(BootstrapError) as failed:
            sb.up(shards=4)
        gave_up = time.monotonic() - started
        monkeypatch.undo()
        assert cut.pod, "the move finished before a peer could be cut off"
        print(f"{victim} {cut.pod} {how} mid-move; up gave up after {gave_up:.1f}s: {failed.value}")
        # Fails fast. A lost peer used to hold the run for a minute and more (redis-py's ten
        # retries, a 60 s reply timeout per call, moves to other peers finished first); now a
        # silent node is given up on within the command timeout and the other moves stop.
        assert gave_up < 3 * COMMAND_TIMEOUT_SECONDS, gave_up
        if "left open" in str(failed.value):
            assert "the next update resumes" in str(failed.value)
        # The victim's replica takes over its slots before the pod is back (a pod back at
        # once returns as the master it was, and no failover is needed at all).
        _wait_failed_over(sb, cut.node_id, cut.pod)
        cut.thaw()
        topology = sb.up()
        assert topology["state"] == "ok", topology["problems"]
        plain.wait_acknowledged(50, after=time.monotonic())
    finally:
        if cut is not None:
            cut.thaw()
        plain.stop()
        durable.stop()
    print(plain.summary(), durable.summary(), sep="\n")
    wait_healthy(sb)
    facts = masters(sb)
    assert len(facts) == 4 and cut.pod not in facts
    assert sum(b - a + 1 for f in facts.values() for a, b in f.slots) == 16384
    assert not any(f.migrating or f.importing for f in facts.values()), facts
    _assert_nothing_lost(sb, keys, "keys")
    _assert_nothing_lost(sb, durable.durable(), "WAIT-acknowledged writes")
    with cluster_client(sb) as client:
        print(f"plain acknowledged writes lost: {len(lost_keys(client, plain.acknowledged()))}")


def _wait_failed_over(sandbox, node_id: str, pod: str, timeout: float = 60.0) -> None:
    """Until every running node lists `node_id` as failed and most of them as holding no
    slot: its replica was promoted and took its slots. (A node importing slots from it
    keeps it as their owner: Redis does not update the owner of a slot it imports.)"""
    deadline = time.monotonic() + timeout
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
            return
        assert time.monotonic() < deadline, f"{node_id}'s slots were not taken over within {timeout:.0f}s: {entries}"
        time.sleep(0.2)
