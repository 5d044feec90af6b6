"""Is the cluster converged, and what does it look like: the list of problems (empty when
converged), the waits for convergence, and the topology report the outputs carry."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from cluster_logic.cluster import Cluster
from cluster_logic.deadline import Deadline, poll_until
from cluster_logic.model import SLOTS, format_ranges, pod_ordinal, slot_ranges
from cluster_logic.observation import NodeView
from cluster_logic.planning import placement_report

_FAILING_FLAGS = {"fail", "fail?", "handshake", "noaddr"}
_SHOWN_PROBLEMS = 12


def problems(cluster: Cluster, shards: Optional[int] = None, replicas_per_shard: Optional[int] = None) -> list[str]:
    """Everything that keeps the cluster from being converged; empty when it is."""
    found: list[str] = []
    pods = cluster.pod_of_id()
    reachable = [v for v in cluster.views if v.reachable]
    expected = cluster.expected
    for view in cluster.views:
        pod = view.node.pod
        if not view.reachable:
            found.append(f"{pod}: unreachable ({view.error})")
            continue
        state = view.info.get("cluster_state", "?")
        if state != "ok":
            found.append(f"{pod}: cluster_state {state}")
        if view.known != expected:
            found.append(f"{pod}: knows {view.known} of {expected} nodes")
        served = int(view.info.get("cluster_slots_ok", 0) or 0)
        if served != SLOTS:
            found.append(f"{pod}: {served} of {SLOTS} slots served")
        for entry in view.entries:
            if entry.failing and not entry.myself:
                flags = ",".join(sorted(entry.flags & _FAILING_FLAGS))
                found.append(f"{pod}: sees {pods.get(entry.id, entry.id)} as {flags}")
        me = view.me
        if me is not None and (me.migrating or me.importing):
            open_slots = [s for s, _ in me.migrating] + [s for s, _ in me.importing]
            found.append(f"{pod}: open slots {format_ranges(slot_ranges(open_slots))}")
        if me is not None and not me.is_master and view.replication.get("master_link_status") != "up":
            found.append(f"{pod}: replica link to its master is {view.replication.get('master_link_status', 'down')}")
    if len({v.signature() for v in reachable}) > 1:
        found.append("nodes disagree about the slot map")
    if shards is not None and reachable:
        layout = cluster.live_layout()
        if len(layout.masters) != shards:
            found.append(f"{len(layout.masters)} masters hold slots, {shards} expected")
        if replicas_per_shard is not None:
            for master, replicas in sorted(layout.replicas.items(), key=lambda kv: pod_ordinal(kv[0])):
                if len(replicas) != replicas_per_shard:
                    found.append(f"{master}: {len(replicas)} replicas, {replicas_per_shard} expected")
    return found


def wait_converged(
    cluster: Cluster,
    deadline: Deadline,
    shards: Optional[int] = None,
    replicas_per_shard: Optional[int] = None,
    what: str = "the cluster to converge",
) -> None:
    def observe() -> list[str]:
        cluster.refresh()
        return problems(cluster, shards, replicas_per_shard)

    def still(found: list[str]) -> str:
        more = len(found) - _SHOWN_PROBLEMS
        return f"{what}: " + "; ".join(found[:_SHOWN_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")

    poll_until(observe, lambda found: not found, deadline, waiting_for=still, interval=cluster.poll_interval)


def master_offsets(views: Sequence[NodeView]) -> dict[str, int]:
    """Each reachable master's replication offset now: how far its replicas must get to hold
    everything it held at this moment."""
    return {
        v.myid: int(v.replication.get("master_repl_offset", 0) or 0)
        for v in views
        if v.reachable and v.me is not None and v.me.is_master
    }


def replication_lag(targets: Mapping[str, int], views: Sequence[NodeView]) -> list[str]:
    """The replicas that do not yet hold what their master held when `targets` (master ID ->
    offset, from `master_offsets`) was taken: link down, a sync still running, or an offset
    short of the target. Empty when every replica of those masters has caught up.

    A replica's own offset is what it has applied; comparing it with its master's offset
    of an earlier moment bounds the wait even under writes, which move the master on."""
    pods = {v.myid: v.node.pod for v in views if v.myid}
    found = []
    for view in views:
        me = view.me
        if not view.reachable or me is None or me.is_master or me.master_id not in targets:
            continue
        pod, master = view.node.pod, pods.get(me.master_id, me.master_id)
        link = view.replication.get("master_link_status", "down")
        offset = int(view.replication.get("slave_repl_offset", 0) or 0)
        if link != "up":
            found.append(f"{pod}: replica link to {master} is {link}")
        elif str(view.replication.get("master_sync_in_progress", 0)) != "0":
            found.append(f"{pod}: still loading its full sync from {master}")
        elif offset < targets[me.master_id]:
            found.append(f"{pod}: replica at offset {offset} of the {targets[me.master_id]} {master} had")
    return found


def wait_replicas_caught_up(
    cluster: Cluster, deadline: Deadline, what: str = "replicas to catch up with their masters"
) -> None:
    """Until every replica holds what its master held when the wait began: a master that
    dies after this loses no key that was on it then (writes taken later are as safe as
    replication makes any write)."""
    cluster.refresh()
    targets = master_offsets(cluster.views)

    def observe() -> list[str]:
        cluster.refresh()
        return replication_lag(targets, cluster.views)

    poll_until(
        observe,
        lambda found: not found,
        deadline,
        waiting_for=lambda found: f"{what}: " + "; ".join(found[:_SHOWN_PROBLEMS]),
        interval=cluster.poll_interval,
    )


def wait_all_known(cluster: Cluster, deadline: Deadline) -> None:
    """Until every node knows every other one (needed before REPLICATE/SETSLOT NODE)."""
    expected = len(cluster.nodes)

    def lagging() -> list[str]:
        cluster.refresh()
        return [
            v.node.pod
            for v in cluster.views
            if not v.reachable
            or v.known != expected
            or any("handshake" in e.flags or "noaddr" in e.flags for e in v.entries)
        ]

    poll_until(
        lagging,
        lambda pods: not pods,
        deadline,
        waiting_for=lambda pods: "nodes to meet: " + ", ".join(pods),
        interval=cluster.poll_interval,
    )


def topology(
    cluster: Cluster, shards: Optional[int] = None, replicas_per_shard: Optional[int] = None
) -> dict[str, Any]:
    """The outputs: state, node count, masters and replicas with pods, slots, placement."""
    pods = cluster.pod_of_id()
    zones = dict(cluster.zones)
    entries = cluster.reference_entries()
    reachable = [v for v in cluster.views if v.reachable]
    found = problems(cluster, shards, replicas_per_shard)
    links = {v.myid: v.replication.get("master_link_status", "down") for v in reachable}
    reachable_ids = {v.myid for v in reachable}
    masters = []
    replicas = []
    for entry in sorted(entries, key=lambda e: (pod_ordinal(pods.get(e.id, "")), e.id)):
        pod = pods.get(entry.id, f"{entry.host}:{entry.port}")
        status = "unreachable" if entry.id not in reachable_ids else ("failing" if entry.failing else "ok")
        if entry.is_master and (entry.slots or entry.migrating or entry.importing):
            masters.append(
                {
                    "pod": pod,
                    "id": entry.id,
                    "zone": zones.get(pod, ""),
                    "slots": format_ranges(entry.slots),
                    "slot_count": entry.slot_count,
                    "replicas": sorted(
                        (pods.get(e.id, e.id) for e in entries if e.master_id == entry.id), key=pod_ordinal
                    ),
                    "status": status,
                }
            )
        elif not entry.is_master:
            master_pod = pods.get(entry.master_id or "", entry.master_id or "")
            replicas.append(
                {
                    "pod": pod,
                    "id": entry.id,
                    "zone": zones.get(pod, ""),
                    "master": master_pod,
                    "master_id": entry.master_id or "",
                    "link": links.get(entry.id, "unknown"),
                    "status": status,
                }
            )
        else:
            found.append(f"{pod}: master without slots")
    # The state is judged on every problem found, this one included: "ok" beside a
    # listed problem would tell refresh there is no drift to repair.
    if not reachable:
        state = "unreachable"
    elif any(v.info.get("cluster_state") != "ok" for v in reachable):
        state = "fail"
    elif found:
        state = "degraded"
    else:
        state = "ok"
    # Only what a node said of itself, now or in earlier outputs; never a guess by address.
    listed = {e.id for v in reachable for e in v.entries} | {e.id for e in entries}
    named = {
        **{i: p for i, p in cluster.known_pods.items() if i in listed},
        **{v.myid: v.node.pod for v in reachable},
    }
    return {
        "state": state,
        "node_count": len({e.id for e in entries}) if entries else 0,
        "masters": masters,
        "replicas": replicas,
        "placement": placement_report(cluster.live_layout(), zones),
        "problems": sorted(set(found), key=found.index),
        "node_ids": dict(sorted(named.items())),
    }
