"""The two entry points: `ensure_cluster` brings the pods to the desired cluster (form, adopt,
repair, scale out) within one time budget, and `read_topology` reports the live cluster
without changing anything."""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

from cluster_logic import formation, recovery, scale_in
from cluster_logic.cluster import Cluster
from cluster_logic.deadline import Deadline
from cluster_logic.errors import BootstrapError, UnexpectedCluster
from cluster_logic.health import topology, wait_converged, wait_replicas_caught_up
from cluster_logic.model import SLOTS
from cluster_logic.observation import wait_ready
from cluster_logic.transports.base import NodeTransport, PodStatus

log = logging.getLogger(__name__)

MODES = ("create", "update")


def ensure_cluster(
    transport: NodeTransport,
    shards: int,
    replicas_per_shard: int,
    timeout: float,
    *,
    mode: str = "create",
    known_pods: Optional[Mapping[str, str]] = None,
) -> dict[str, Any]:
    """Brings the first shards*(1+replicas) pods to a converged cluster and returns its
    topology. `timeout` is the budget of the whole run, every step included.

    mode "create": fresh nodes are formed into a cluster; nodes that already form exactly
    the expected cluster are adopted unchanged; anything else is refused.
    mode "update": additionally scales an existing cluster out (new masters, new
    replicas, slots onto the new masters), finishes interrupted slot moves, and joins
    again the pods that lost their volume (`recovery.lost_identities`, from `known_pods`:
    node ID -> pod as the last outputs named them).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    deadline = Deadline(timeout)
    count = shards * (1 + replicas_per_shard)
    nodes = wait_ready(transport, count, deadline)
    cluster = Cluster(transport, nodes, known_pods)
    cluster.refresh()
    recovery.wait_membership_settled(cluster, deadline.capped(recovery.MEMBERSHIP_SETTLE_SECONDS))
    recovery.introduce_members(cluster, deadline.capped(recovery.MEMBERSHIP_SETTLE_SECONDS))
    if recovery.abandoned_formation(cluster):
        log.warning("the nodes hold an unfinished, empty formation; starting it over")
        recovery.start_formation_over(cluster)
    if mode == "update":
        lost = recovery.lost_identities(cluster, known_pods or {})
        if lost:
            recovery.forget_lost_identities(cluster, lost)
    members, fresh = recovery.classify(cluster)
    if not members:
        formation.create(cluster, shards, replicas_per_shard, deadline)
    elif mode == "update":
        covered = cluster.slots_covered()
        if covered != SLOTS:
            raise BootstrapError(
                f"the existing cluster serves {covered} of {SLOTS} slots; fix it first (redis-cli --cluster fix)"
            )
        formation.close_open_slots(cluster, deadline)
        cluster.refresh()
        if len(formation.masters_holding_slots(cluster.reference_entries(), cluster.pod_of_id())) > shards:
            # A partition in the middle of a slot move can split a shard: the master that
            # took slots on its side, and its replica promoted on the other, both hold slots.
            # Every such master is one of these pods, so nothing goes: the slots of the
            # smallest are merged into the others and it follows one, as a scale-in merges
            # them (refused, nothing moved, when the others could not hold the keys).
            log.warning("more masters hold slots than the %d shards: merging the smallest into the others", shards)
            scale_in.shrink(transport, count, shards, replicas_per_shard, deadline.remaining())
            cluster.refresh()
        # Joins fresh nodes if any, then fills under-filled masters; a no-op on a cluster
        # already in shape.
        formation.scale_out(cluster, shards, replicas_per_shard, deadline, [v for v in cluster.views if v.member])
    elif not fresh and is_expected(cluster, shards, replicas_per_shard):
        log.info("adopting the existing cluster")
        if any(v.me and (v.me.migrating or v.me.importing) for v in cluster.views):
            # Adopt means no change: report the open slots (state "degraded"), and the
            # next update, which the drift triggers, finishes them.
            return topology(cluster, shards, replicas_per_shard)
    else:
        layout = cluster.live_layout()
        loaded = [f"{v.node.pod} ({v.keys} keys)" for v in cluster.views if v.keys]
        holding = ("; nodes holding keys: " + ", ".join(loaded)) if loaded else ""
        raise UnexpectedCluster(
            f"the nodes already hold a cluster that is not the expected one{holding} ({len(layout.masters)} masters over "
            f"{len(members)} of {count} pods; expected {shards} masters with {replicas_per_shard} replica(s) each "
            f"over {count} pods); refusing to change nodes that may hold data"
        )
    wait_converged(cluster, deadline, shards, None)
    # "ok" promises that a master may die now without taking keys with it: every replica
    # holds what its master held (slots just moved in included), not only a link that is up.
    wait_replicas_caught_up(cluster, deadline)
    return topology(cluster, shards, replicas_per_shard)


def is_expected(cluster: Cluster, shards: int, replicas_per_shard: int) -> bool:
    layout = cluster.live_layout()
    entries = cluster.reference_entries()
    empty_masters = [e for e in entries if e.is_master and not e.slots]
    total_replicas = sum(len(r) for r in layout.replicas.values())
    return (
        len(layout.masters) == shards
        and not empty_masters
        and total_replicas == shards * replicas_per_shard
        and cluster.slots_covered() == SLOTS
    )


def read_topology(
    transport: NodeTransport,
    shards: int,
    replicas_per_shard: int,
    known_pods: Optional[Mapping[str, str]] = None,
) -> dict[str, Any]:
    """The live topology without waiting or changing anything (for a refresh)."""
    count = shards * (1 + replicas_per_shard)
    statuses: list[PodStatus] = transport.pod_statuses(count)
    nodes = [s.node for s in statuses if s.node is not None]
    cluster = Cluster(transport, nodes, known_pods, expected_nodes=count)
    cluster.refresh()
    report = topology(cluster, shards, replicas_per_shard)
    not_ready = [f"{s.pod}: not ready ({s.reason})" for s in statuses if not s.ready]
    if not_ready:
        report["problems"] = not_ready + report["problems"]
        if report["state"] == "ok":
            report["state"] = "degraded"
    return report
