"""Changing the shape of the cluster without touching a key's value: forming it from fresh
nodes, moving replicas out of their master's zone, joining new nodes on a scale-out,
filling new masters with slots, and finishing slot moves a run left open."""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, Mapping, Sequence

import redis

from cluster_logic.cluster import Cluster
from cluster_logic.commands import send_once
from cluster_logic.deadline import POLL_SECONDS, Deadline, pause
from cluster_logic.errors import BootstrapError, ScaleInRefused
from cluster_logic.health import wait_all_known, wait_converged
from cluster_logic.migration import SlotMover
from cluster_logic.model import NodeEntry, expand_ranges, pod_ordinal
from cluster_logic.observation import NodeView, probe
from cluster_logic.planning import (
    Layout,
    cli_create_order,
    placement_report,
    plan_layout,
    plan_open_slots,
    plan_slot_moves,
)
from cluster_logic.transports.base import TransportError

log = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# redis-cli --cluster create needs a moment even on a small cluster: it is not started
# with less than this (or half the budget, if the budget is short) left, since a create
# cut short leaves a half-formed cluster behind.
MIN_CREATE_SECONDS = 60.0
# How often placement is corrected before the cluster's own failovers are taken as given.
PLACEMENT_ATTEMPTS = 3
# After a diskless full sync, Valkey holds a replica's command stream until the replica's
# first REPLCONF ACK ("Waiting for REPLCONF ACK from replica to enable streaming"), which the
# replica's once-a-second replication cron sends. Slots moved into a master in that window
# sit on the master alone for up to a second, so a replica that has just synced is given
# this long before any slot moves in (Redis streams at once; the wait costs it a second).
REPLICA_FIRST_ACK_SECONDS = 1.5


def create(cluster: Cluster, shards: int, replicas_per_shard: int, deadline: Deadline) -> None:
    layout = plan_layout(cluster.zones, shards, replicas_per_shard)
    by_pod = cluster.by_pod()
    order = [by_pod[p] for p in cli_create_order(layout)]
    args = ["--cluster", "create", *[n.endpoint for n in order]]
    args += ["--cluster-replicas", str(replicas_per_shard), "--cluster-yes"]
    needed = min(MIN_CREATE_SECONDS, deadline.seconds / 2)
    if deadline.remaining() < needed:
        raise BootstrapError(
            f"only {deadline.remaining():.0f}s of the {deadline.seconds:g}s time budget are left after waiting for "
            f"the pods, and forming the cluster needs {needed:g}s; nothing was changed: run again, or give the "
            "bootstrap more time"
        )
    log.info("creating cluster: %s", " ".join(args))
    outcome: dict[str, Any] = {}
    cli_timeout = deadline.remaining()

    def run() -> None:
        try:
            outcome["result"] = cluster.transport.run_cli(args, timeout=cli_timeout, via=order[0])
        except BaseException as error:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = error

    worker = threading.Thread(target=run, name="redis-cli-create", daemon=True)
    worker.start()
    _hasten_join(cluster, worker)
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    output = _ANSI.sub("", result.stdout + "\n" + result.stderr)
    if result.returncode != 0 or "[ERR]" in output:
        tail = " | ".join(line for line in output.strip().splitlines()[-6:] if line.strip())
        raise BootstrapError(f"redis-cli --cluster create failed (exit {result.returncode}): {tail}")
    wait_all_known(cluster, deadline)
    correct_placement(cluster, shards, replicas_per_shard, deadline)


def _hasten_join(cluster: Cluster, worker: threading.Thread) -> None:
    """While redis-cli waits (in 1 s sleeps) for gossip to spread its single round of
    MEETs, introduce every node to every other one directly.

    Only once every node has its config epoch: SET-CONFIG-EPOCH is refused by a node
    that already knows others, and redis-cli sends MEET only after all epochs are set.
    """
    while worker.is_alive():
        try:
            views = probe(cluster.transport, cluster.nodes)
        except TransportError:
            return
        ready = all(v.reachable and int(v.info.get("cluster_my_epoch", 0) or 0) > 0 for v in views)
        if ready and any(v.known > 1 for v in views):
            for node in cluster.nodes:
                others = [("CLUSTER", "MEET", o.host, o.port) for o in cluster.nodes if o != node]
                try:
                    send_once(cluster.transport, node, others)
                except redis.RedisError:
                    pass  # gossip still gets there; this only saves time
            return
        worker.join(POLL_SECONDS)


def correct_placement(cluster: Cluster, shards: int, replicas_per_shard: int, deadline: Deadline) -> None:
    """Moves replicas (CLUSTER REPLICATE) until none shares its master's zone where
    another plan would avoid it. Only replicas move; no data is touched."""
    for _attempt in range(PLACEMENT_ATTEMPTS):
        wait_converged(cluster, deadline, shards, None, what="replicas to attach")
        live = cluster.live_layout()
        current_bad = placement_report(live, cluster.zones)["replicas_in_master_zone"]
        if not current_bad:
            return
        keep = {
            r: m
            for m, rs in live.replicas.items()
            for r in rs[:replicas_per_shard]
            if cluster.zones.get(r) != cluster.zones.get(m)
        }
        target = plan_layout(cluster.zones, shards, replicas_per_shard, masters=live.masters, attached=keep)
        if len(placement_report(target, cluster.zones)["replicas_in_master_zone"]) >= len(current_bad):
            return  # nothing better is possible with these masters
        ids = cluster.ids_by_pod()
        current = live.master_of()
        moves = [(r, m) for r, m in target.master_of().items() if current.get(r) != m]
        log.info("moving replicas to other zones: %s", moves)
        for replica, master in moves:
            send_once(cluster.transport, cluster.view_of(replica).node, [("CLUSTER", "REPLICATE", ids[master])])
    wait_converged(cluster, deadline, shards, None, what="replicas to attach")


def scale_out(
    cluster: Cluster, shards: int, replicas_per_shard: int, deadline: Deadline, members: Sequence[NodeView]
) -> None:
    """Adds fresh nodes to the cluster formed by `members`: new masters first, then
    replicas, then moves slots onto the under-filled masters."""
    target = join(cluster, shards, replicas_per_shard, deadline, members)
    rebalance(cluster, shards, deadline, masters=target.masters)
    # Moves only replicas, and only if that removes same-zone pairs (an adopted
    # cluster, or replicas that followed a failover).
    correct_placement(cluster, shards, replicas_per_shard, deadline)


def masters_holding_slots(reference: Sequence[NodeEntry], pods: Mapping[str, str]) -> list[str]:
    """The pods whose node is a master holding slots, in the reference view."""
    return [pods[e.id] for e in reference if e.is_master and e.slots and e.id in pods]


def join(
    cluster: Cluster, shards: int, replicas_per_shard: int, deadline: Deadline, members: Sequence[NodeView]
) -> Layout:
    """Meets the fresh nodes and attaches the new replicas; returns the planned layout.
    New masters hold no slots yet."""
    member_pods = {v.node.pod for v in members}
    reference = cluster.reference_entries()
    pods = cluster.pod_of_id()
    slot_masters = masters_holding_slots(reference, pods)
    empty_masters = [
        pods[e.id] for e in reference if e.is_master and not e.slots and e.id in pods and pods[e.id] in member_pods
    ]
    if len(slot_masters) > shards:
        raise ScaleInRefused("shards", len(slot_masters), shards)
    # Joined-but-empty masters from an interrupted run keep their role while needed.
    keep_masters = slot_masters + empty_masters[: shards - len(slot_masters)]
    attached = {
        pods[e.id]: pods[e.master_id]
        for e in reference
        if not e.is_master and e.master_id in pods and pods[e.master_id] in keep_masters and e.id in pods
    }
    target = plan_layout(cluster.zones, shards, replicas_per_shard, masters=keep_masters, attached=attached)
    by_pod = cluster.by_pod()
    fresh = [n for n in cluster.nodes if n.pod not in member_pods]

    # Each new node greets every node itself: waiting for gossip to introduce them
    # takes seconds, a direct handshake a few cluster-cron ticks.
    for node in fresh:
        send_once(
            cluster.transport,
            node,
            [("CLUSTER", "MEET", other.host, other.port) for other in cluster.nodes if other != node],
        )
    started = time.monotonic()
    if fresh:
        wait_all_known(cluster, deadline)
    log.info("new nodes met the cluster in %.2fs", time.monotonic() - started)
    ids = cluster.ids_by_pod()
    current = {pods.get(e.id): pods.get(e.master_id or "") for e in cluster.reference_entries() if not e.is_master}
    attached = [r for r, m in target.master_of().items() if current.get(r) != m]
    for replica in attached:
        send_once(cluster.transport, by_pod[replica], [("CLUSTER", "REPLICATE", ids[target.master_of()[replica]])])
    wait_converged(cluster, deadline, None, None, what="new nodes to join")
    log.info("new replicas in sync after %.2fs", time.monotonic() - started)
    if attached:
        pause(min(REPLICA_FIRST_ACK_SECONDS, deadline.remaining()))
    return target


def rebalance(cluster: Cluster, shards: int, deadline: Deadline, masters: Sequence[str]) -> None:
    """Moves slots from over-filled to under-filled masters, several pairs at once."""
    cluster.refresh()
    pods = cluster.pod_of_id()
    ids = cluster.ids_by_pod()
    owned: dict[str, list[int]] = {m: [] for m in masters}
    for entry in cluster.reference_entries():
        if entry.is_master and entry.slots:
            owned.setdefault(pods.get(entry.id, entry.id), []).extend(expand_ranges(entry.slots))
    moves = plan_slot_moves(owned)
    if not moves:
        return
    by_pod = cluster.by_pod()
    order = sorted(owned, key=lambda p: (pod_ordinal(p), p))
    mover = SlotMover(
        cluster.transport, {by_pod[p]: ids[p] for p in order}, [by_pod[m] for m in order], deadline=deadline
    )
    log.info("moving slots: %s", [(s, t, len(sl)) for s, t, sl in moves])
    started = time.monotonic()
    try:
        mover.move_all([(by_pod[s], by_pod[t], sl) for s, t, sl in moves])
    finally:
        cluster.transport.release_idle()
    log.info("moved %d keys in %.2fs", mover.moved_keys, time.monotonic() - started)
    wait_converged(cluster, deadline, shards, None, what="slot moves to settle")
    log.info("slot map settled after %.2fs", time.monotonic() - started)


def close_open_slots(cluster: Cluster, deadline: Deadline) -> None:
    """Finishes migrations an interrupted run left open (the direction they had)."""
    cluster.refresh()
    nodes = {v.myid: v.node for v in cluster.views if v.myid}
    plan = plan_open_slots(cluster.reference_entries(), [v.me for v in cluster.views if v.me is not None])
    pods = cluster.pod_of_id()
    if plan.conflicts:
        detail = "; ".join(plan.conflicts[:5])
        for node_id, pod in pods.items():
            detail = detail.replace(node_id, pod)
        raise BootstrapError(
            f"open slots that no move can finish safely: {detail}; nothing was changed. Inspect them and "
            "fix them with redis-cli --cluster fix, then run the update again"
        )
    if any(source not in nodes or target not in nodes for source, target in plan.moves):
        raise BootstrapError(
            "open slots point at nodes outside this cluster; fix them with redis-cli --cluster fix first"
        )
    for node_id, slot in plan.stale_marks:
        send_once(cluster.transport, nodes[node_id], [("CLUSTER", "SETSLOT", slot, "STABLE")])
    if not plan.moves:
        return
    log.info(
        "finishing slot moves left open: %s",
        [(pods.get(s, s), pods.get(t, t), len(slots)) for (s, t), slots in plan.moves.items()],
    )
    masters = [nodes[e.id] for e in cluster.reference_entries() if e.is_master and e.id in nodes]
    # Slots left open are finished the way they were started: MIGRATE, key by key.
    mover = SlotMover(
        cluster.transport, {node: node_id for node_id, node in nodes.items()}, masters, deadline=deadline, atomic=False
    )
    try:
        mover.move_all([(nodes[s], nodes[t], slots) for (s, t), slots in plan.moves.items()])
    finally:
        cluster.transport.release_idle()
    wait_converged(cluster, deadline, None, None, what="open slots to close")
