"""Scaling in before the StatefulSet shrinks: the pods with the highest ordinals go, so every
slot leaves them first (a failover where one of their replicas stays, a slot move where none
does), the staying pods take the new shape, and every staying node forgets the ones that go.

`plan_scale_in` and `memory_refusal` are pure, over the live layout; `shrink` runs the plan
over a transport to the pods as they are now (the larger shape)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import redis

from cluster_logic import formation
from cluster_logic.cluster import Cluster
from cluster_logic.commands import pipeline, send_once
from cluster_logic.deadline import Deadline, poll_until
from cluster_logic.errors import BootstrapError
from cluster_logic.health import wait_converged, wait_replicas_caught_up
from cluster_logic.migration import SlotMover
from cluster_logic.model import expand_ranges, format_ranges, pod_ordinal, slot_ranges
from cluster_logic.observation import wait_ready
from cluster_logic.planning import Layout, SlotMove, ideal_slot_counts, plan_layout
from cluster_logic.transports.base import NodeTransport

log = logging.getLogger(__name__)

# What the staying masters may hold on average, of their maxmemory, once they took the keys of
# the masters that go: RedisMemoryNearMaxmemory fires at 90%, and a cluster just scaled in must
# still take writes and the growth of its keys without paging at once.
MEMORY_HEADROOM = 0.80


@dataclass
class ScaleInPlan:
    """What a scale-in does, in order."""

    #: Staying replicas promoted (CLUSTER FAILOVER) in place of their masters that go.
    failovers: list[str] = field(default_factory=list)
    #: The masters afterwards.
    keep: list[str] = field(default_factory=list)
    #: Masters emptied of their slots.
    drained: list[str] = field(default_factory=list)
    #: (source, target, slots) off the drained masters onto the kept ones.
    moves: list[SlotMove] = field(default_factory=list)
    #: Staying pod -> the master it follows afterwards, where that changes.
    replicate: dict[str, str] = field(default_factory=dict)
    #: The pods that go, forgotten by every staying node.
    forget: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.failovers or self.moves or self.replicate or self.forget)

    def describe(self) -> list[str]:
        """One line per step, as the preview shows the plan."""
        lines = [f"fail over to {pod} (its master goes)" for pod in self.failovers]
        lines += [
            f"move {len(slots)} slots ({' '.join(format_ranges(slot_ranges(slots)))}) from {s} to {t}"
            for s, t, slots in self.moves
        ]
        lines += [f"{pod} follows {master}" for pod, master in sorted(self.replicate.items(), key=_by_ordinal)]
        if self.forget:
            lines.append("forget " + ", ".join(sorted(self.forget, key=pod_ordinal)))
        return lines


def _by_ordinal(item: tuple[str, str]) -> int:
    return pod_ordinal(item[0])


def plan_drain(owned: Mapping[str, Sequence[int]], keep: Sequence[str]) -> list[SlotMove]:
    """Moves that empty every master not in `keep`, each slot to the kept master furthest
    below its ideal count (the ideal counts go by pod ordinal, so every run plans the same).
    Kept masters give nothing: what is left uneven is the bootstrap's rebalance's to judge."""
    kept = sorted(keep, key=lambda p: (pod_ordinal(p), p))
    ideal = dict(zip(kept, ideal_slot_counts(len(kept))))
    counts = {m: len(owned.get(m, ())) for m in kept}
    moves: list[SlotMove] = []
    for source in sorted((m for m in owned if m not in ideal and owned[m]), key=lambda p: (pod_ordinal(p), p)):
        pool = sorted(owned[source])
        while pool:
            target = max(kept, key=lambda m: (ideal[m] - counts[m], -pod_ordinal(m)))
            give = max(1, min(len(pool), ideal[target] - counts[target]))
            taken, pool = pool[-give:], pool[:-give]
            moves.append((source, target, taken))
            counts[target] += give
    return _merged(moves)


def _merged(moves: list[SlotMove]) -> list[SlotMove]:
    """One move per (source, target) pair."""
    merged: dict[tuple[str, str], list[int]] = {}
    for source, target, slots in moves:
        merged.setdefault((source, target), []).extend(slots)
    return [(s, t, sorted(slots)) for (s, t), slots in merged.items()]


def plan_scale_in(
    layout: Layout,
    owned: Mapping[str, Sequence[int]],
    zones: Mapping[str, str],
    staying: Sequence[str],
    shards: int,
    replicas_per_shard: int,
) -> ScaleInPlan:
    """The plan that leaves `staying` pods (the lowest ordinals) as `shards` masters with
    `replicas_per_shard` replicas each, and every other pod holding nothing, over the live
    `layout` (masters holding slots and their replicas) and `owned` (master -> slots)."""
    stay = set(staying)
    if len(stay) != shards * (1 + replicas_per_shard):
        raise ValueError(f"{len(stay)} staying pods cannot be {shards} shards of {1 + replicas_per_shard} nodes")
    plan = ScaleInPlan()
    # Who could hold each shard's slots among the pods that stay: its master, or one of its
    # replicas after a failover (a handful of round trips, where moving slots moves keys).
    candidates: dict[str, str] = {}
    used: set[str] = set()
    for master in sorted(layout.masters, key=pod_ordinal):
        if master in stay:
            candidates[master] = master
            used.add(zones.get(master, ""))
    for master in sorted(layout.masters, key=pod_ordinal):
        heirs = sorted((r for r in layout.replicas.get(master, []) if r in stay), key=pod_ordinal)
        if master not in stay and heirs:
            # Out of the zones of the masters already there, where it can.
            candidates[master] = sorted(heirs, key=lambda r: (zones.get(r, "") in used, pod_ordinal(r)))[0]
            used.add(zones.get(candidates[master], ""))
    if len(candidates) < shards:
        raise BootstrapError(
            f"cannot scale in to {shards} shards on the pods that stay ({', '.join(sorted(stay, key=pod_ordinal))}): "
            f"only {len(candidates)} of them can hold slots without a full sync first; scale in one step "
            "less far, or fail over by hand so that masters run on the pods that stay"
        )
    # Kept: masters already on a staying pod first (nothing to do), then heirs; the most slots
    # first (the fewest keys move), then by ordinal.
    ranked = sorted(
        candidates,
        key=lambda m: (candidates[m] != m, -len(owned.get(m, ())), pod_ordinal(candidates[m])),
    )
    kept_shards = ranked[:shards]
    plan.failovers = sorted((candidates[m] for m in kept_shards if candidates[m] != m), key=pod_ordinal)
    masters = [candidates[m] if m in kept_shards else m for m in sorted(layout.masters, key=pod_ordinal)]
    staying_masters = [candidates[m] for m in kept_shards]
    plan.keep = sorted(staying_masters[:shards], key=pod_ordinal)
    plan.drained = sorted((m for m in masters if m not in plan.keep), key=pod_ordinal)
    slots_now = {m: list(owned.get(_was(m, layout), ())) for m in masters}
    plan.moves = plan_drain(slots_now, plan.keep)
    # After a failover the old master's replicas follow the heir; a drained master follows
    # someone afterwards, whom the plan names.
    heirs = {_was(m, layout): m for m in masters}
    current = {r: heirs.get(m, m) for m, rs in layout.replicas.items() for r in rs}
    plan.replicate = plan_followers(current, zones, stay, plan.keep, replicas_per_shard, moving=set(plan.drained))
    plan.forget = sorted((p for p in zones if p not in stay), key=pod_ordinal)
    return plan


def plan_followers(
    current: Mapping[str, str],
    zones: Mapping[str, str],
    staying: Sequence[str] | set[str],
    keep: Sequence[str],
    replicas_per_shard: int,
    moving: set[str] = frozenset(),  # type: ignore[assignment]
) -> dict[str, str]:
    """Staying pod -> the kept master it must follow, where that is not the one it follows
    now (`current`: replica -> master). Replicas that stay with a kept master keep it, up to
    the new count; every other staying pod (and those in `moving`) is placed as a new one
    would be, out of its master's zone where it can."""
    stay = set(staying)
    attached: dict[str, str] = {}
    for master in keep:
        followers = sorted(
            (r for r, m in current.items() if m == master and r in stay and r not in keep and r not in moving),
            key=pod_ordinal,
        )
        for replica in followers[:replicas_per_shard]:
            attached[replica] = master
    target = plan_layout(
        {p: zones.get(p, "") for p in stay}, len(keep), replicas_per_shard, masters=list(keep), attached=attached
    )
    return {r: m for r, m in target.master_of().items() if current.get(r) != m or r in moving}


def _was(pod: str, layout: Layout) -> str:
    """The master whose slots `pod` holds: itself, or (a replica promoted in the plan) the
    master it replicates now."""
    if pod in layout.masters:
        return pod
    return next((m for m, rs in layout.replicas.items() if pod in rs), pod)


def memory_refusal(
    datasets: Mapping[str, int], maxmemory: Mapping[str, int], keep: Sequence[str], headroom: float = MEMORY_HEADROOM
) -> Optional[str]:
    """Why the kept masters cannot take every key, or None: the data sets of every master
    now (bytes, `used_memory_dataset`), spread evenly over the kept masters (the slots are),
    must stay within `headroom` of each one's maxmemory (0: none set, no limit)."""
    total = sum(datasets.values())
    share = total / max(1, len(keep))
    limited = {m: maxmemory.get(m, 0) for m in keep if maxmemory.get(m, 0)}
    tight = {m: limit for m, limit in limited.items() if share > headroom * limit}
    if not tight:
        return None
    smallest = min(tight.values())
    return (
        f"the {len(keep)} masters that would stay cannot take the keys: {_mib(total)} of data sets over "
        f"{len(keep)} masters is {_mib(share)} each, above {headroom:.0%} of their maxmemory ({_mib(smallest)} "
        f"for {min(tight, key=tight.get)}); at most {_mib(headroom * smallest * len(keep))} fit. Keep more "
        "shards, or raise memoryLimit first (the pods roll), or delete keys"
    )


def _mib(value: float) -> str:
    return f"{value / 2**20:,.1f} MiB"


def read_memory(transport: NodeTransport, cluster: Cluster, pods: Sequence[str]) -> tuple[dict, dict]:
    """`used_memory_dataset` and `maxmemory` of `pods`, from INFO memory."""
    datasets, limits = {}, {}
    by_pod = cluster.by_pod()
    for pod in pods:
        (info,) = pipeline(transport.client(by_pod[pod]), [("INFO", "memory")])
        if not isinstance(info, dict):
            raise BootstrapError(f"{pod} gave no memory figures")
        datasets[pod] = int(info.get("used_memory_dataset", info.get("used_memory", 0)))
        limits[pod] = int(info.get("maxmemory", 0))
    return datasets, limits


def observe(
    transport: NodeTransport,
    count: int,
    shards: int,
    replicas_per_shard: int,
    deadline: Deadline,
    ready_by: Optional[Deadline] = None,
):
    """The cluster on the `count` pods that run now, refreshed, and the plan to the new shape
    (the pods ready by `ready_by`, or the whole `deadline`)."""
    nodes = wait_ready(transport, count, ready_by or deadline)
    cluster = Cluster(transport, nodes)
    cluster.refresh()
    staying = [n.pod for n in nodes if n.ordinal < shards * (1 + replicas_per_shard)]
    # Pods already forgotten by an earlier, interrupted run are no members any more: the
    # staying nodes' picture is the cluster's.
    members = {e.id for v in cluster.views if v.node.pod in staying for e in v.entries}
    cluster = Cluster(transport, [n for n in nodes if n.pod in staying or _id_of(cluster, n.pod) in members])
    cluster.refresh()
    layout = cluster.live_layout()
    pods = cluster.pod_of_id()
    owned = {
        pods.get(e.id, e.id): expand_ranges(e.slots) for e in cluster.reference_entries() if e.is_master and e.slots
    }
    plan = plan_scale_in(layout, owned, cluster.zones, staying, shards, replicas_per_shard)
    return cluster, plan


def _id_of(cluster: Cluster, pod: str) -> str:
    return next((v.myid for v in cluster.views if v.node.pod == pod), "")


def preview(
    transport: NodeTransport, count: int, shards: int, replicas_per_shard: int, timeout: float
) -> tuple[ScaleInPlan, Optional[str]]:
    """What `shrink` would do now, and why it would refuse (None: it would not), without
    changing anything: the plan a preview shows."""
    deadline = Deadline(timeout)
    # A preview does not wait for pods: not ready now, the update plans when it runs.
    cluster, plan = observe(transport, count, shards, replicas_per_shard, deadline, ready_by=Deadline(0))
    if plan.empty():
        return plan, None
    datasets, limits = read_memory(transport, cluster, cluster.live_layout().masters)
    return plan, memory_refusal(datasets, {**limits, **_limits_of_heirs(plan, limits, cluster)}, plan.keep)


def shrink(transport: NodeTransport, count: int, shards: int, replicas_per_shard: int, timeout: float) -> ScaleInPlan:
    """Brings the cluster on the `count` pods that run now down to `shards` masters with
    `replicas_per_shard` replicas on the lowest ordinals, the others holding nothing and
    forgotten, so that the StatefulSet can shrink. Refused before anything changes when the
    kept masters cannot take the keys. Safe to run again after it was cut short: it plans
    from what the nodes say now."""
    deadline = Deadline(timeout)
    cluster, plan = observe(transport, count, shards, replicas_per_shard, deadline)
    if any(v.me is not None and (v.me.migrating or v.me.importing) for v in cluster.views):
        # A run cut short left slots half moved: finished the way they went, then planned anew.
        formation.close_open_slots(cluster, deadline)
        cluster, plan = observe(transport, count, shards, replicas_per_shard, deadline)
    if plan.empty():
        return plan
    datasets, limits = read_memory(transport, cluster, cluster.live_layout().masters)
    refusal = memory_refusal(datasets, {**limits, **_limits_of_heirs(plan, limits, cluster)}, plan.keep)
    if refusal:
        raise BootstrapError(refusal + "; nothing was changed")
    log.info("scaling in: %s", "; ".join(plan.describe()))
    by_pod = cluster.by_pod()
    for heir in plan.failovers:
        send_once(transport, by_pod[heir], [("CLUSTER", "FAILOVER")])
        _wait_master(cluster, heir, deadline)
    if plan.moves:
        cluster.refresh()
        ids = cluster.ids_by_pod()
        masters = [by_pod[m] for m in cluster.live_layout().masters]
        mover = SlotMover(transport, {by_pod[p]: ids[p] for p in ids if p in by_pod}, masters, deadline=deadline)
        try:
            mover.move_all([(by_pod[s], by_pod[t], slots) for s, t, slots in plan.moves])
        finally:
            transport.release_idle()
        log.info("moved %d keys off %s", mover.moved_keys, ", ".join(plan.drained))
    _wait_drained(cluster, plan.drained, deadline)
    # A master that gave its last slot away already follows the master that took it: the
    # followers are planned again from what the nodes say now, so that none syncs twice.
    layout = cluster.live_layout()
    current = {r: m for m, rs in layout.replicas.items() for r in rs}
    plan.replicate = plan_followers(
        current, cluster.zones, [p for p in by_pod if p not in plan.forget], plan.keep, replicas_per_shard
    )
    ids = cluster.ids_by_pod()
    for pod, master in sorted(plan.replicate.items(), key=_by_ordinal):
        send_once(transport, by_pod[pod], [("CLUSTER", "REPLICATE", ids[master])])
    staying = [by_pod[p] for p in by_pod if p not in plan.forget]
    kept = Cluster(transport, staying)
    # A node refuses to forget its own master: every staying replica follows a kept master
    # before the others go.
    _wait_following(kept, {pod: ids[master] for pod, master in plan.replicate.items()}, deadline)
    if plan.forget:
        _forget(kept, [ids[p] for p in plan.forget if ids.get(p)])
    wait_converged(kept, deadline, shards, replicas_per_shard, what="the nodes that stay to converge")
    wait_replicas_caught_up(kept, deadline)
    return plan


def _limits_of_heirs(plan: ScaleInPlan, limits: Mapping[str, int], cluster: Cluster) -> dict[str, int]:
    """A replica promoted in the plan runs with its master's settings: the same maxmemory."""
    layout = cluster.live_layout()
    return {heir: limits.get(_was(heir, layout), 0) for heir in plan.failovers}


def _wait_master(cluster: Cluster, pod: str, deadline: Deadline) -> None:
    def role() -> str:
        cluster.refresh()
        view = cluster.view_of(pod)
        return "master" if view.me is not None and view.me.is_master and view.me.slots else "replica"

    poll_until(role, lambda r: r == "master", deadline, waiting_for=lambda r: f"{pod} to take over its master's slots")


def _wait_drained(cluster: Cluster, drained: Sequence[str], deadline: Deadline) -> None:
    """Until every node agrees the drained masters hold no slot and no slot is open (their
    replicas' syncs are not waited for here: the final wait covers those)."""
    ids = set()

    def holding() -> list[str]:
        cluster.refresh()
        pods = cluster.pod_of_id()
        ids.clear()
        ids.update(i for i, p in pods.items() if p in drained)
        found = [
            f"{v.node.pod} sees {pods.get(e.id, e.id)} holding slots"
            for v in cluster.views
            if v.reachable
            for e in v.entries
            if e.id in ids and e.slots
        ]
        found += [
            f"{v.node.pod}: open slots"
            for v in cluster.views
            if v.me is not None and (v.me.migrating or v.me.importing)
        ]
        return found

    poll_until(
        holding,
        lambda found: not found,
        deadline,
        waiting_for=lambda found: "slots to leave the masters that go: " + "; ".join(found[:5]),
        interval=cluster.poll_interval,
    )


def _wait_following(cluster: Cluster, masters: Mapping[str, str], deadline: Deadline) -> None:
    def lagging() -> list[str]:
        cluster.refresh()
        return [
            pod
            for pod, master_id in masters.items()
            if (me := cluster.view_of(pod).me) is None or me.master_id != master_id
        ]

    poll_until(
        lagging,
        lambda pods: not pods,
        deadline,
        waiting_for=lambda pods: "replicas to follow their new masters: " + ", ".join(pods),
        interval=cluster.poll_interval,
    )


def _forget(cluster: Cluster, old_ids: Sequence[str]) -> None:
    """Every staying node forgets the nodes that go, in one pass (within the minute a FORGET
    bans a node ID, or gossip would bring it back)."""
    for view in cluster.views:
        replies = send_once(cluster.transport, view.node, [("CLUSTER", "FORGET", i) for i in old_ids], False)
        for old_id, reply in zip(old_ids, replies):
            if isinstance(reply, redis.ResponseError) and "Unknown node" not in str(reply):
                raise BootstrapError(f"{view.node.pod} refused to forget {old_id}: {reply}")
    cluster.refresh()
