"""Pure planners: which pods are masters and where replicas go, the order `redis-cli --cluster
create` needs, which slots move where on a rebalance, and how to finish open slots.
Nothing here talks to a node; every function is tested with tables."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from cluster_logic.errors import BootstrapError
from cluster_logic.model import SLOTS, NodeEntry, pod_ordinal

# Below this share of its ideal slot count a master counts as under-filled (redis-cli's
# rebalance default threshold is 2%).
REBALANCE_THRESHOLD = 0.02


def ideal_slot_counts(masters: int) -> list[int]:
    """How many slots each of `masters` masters holds when balanced (first ones get +1)."""
    base, extra = divmod(SLOTS, masters)
    return [base + (1 if i < extra else 0) for i in range(masters)]


@dataclass
class Layout:
    """Which pods are masters and which replicas follow which master."""

    masters: list[str]
    replicas: dict[str, list[str]] = field(default_factory=dict)

    def master_of(self) -> dict[str, str]:
        return {r: m for m, rs in self.replicas.items() for r in rs}


def plan_layout(
    zones: Mapping[str, str],
    shards: int,
    replicas_per_shard: int,
    masters: Sequence[str] = (),
    attached: Optional[Mapping[str, str]] = None,
) -> Layout:
    """Chooses masters and replica placement so that, whenever the pods span more than one
    zone, replicas run in another zone than their master (and a master's replicas spread
    over different zones).

    `zones` maps every pod to its zone. `masters` are pods that already are masters and
    stay so; `attached` maps replicas that already follow a master and stay with it. Every
    other pod is free: the first needed become new masters, the rest replicas.
    """
    attached = dict(attached or {})
    pods = sorted(zones, key=lambda p: (pod_ordinal(p), p))
    chosen = [m for m in pods if m in set(masters)]
    free = [p for p in pods if p not in set(chosen) and p not in attached]
    zone_masters = Counter(zones[m] for m in chosen)

    def free_in(zone: str) -> list[str]:
        return [p for p in free if zones[p] == zone]

    # New masters: one at a time from the zone with the fewest masters so far, breaking
    # ties towards the zone with most free pods (it has replicas to spare).
    while len(chosen) < shards and free:
        candidates = sorted({zones[p] for p in free}, key=lambda z: (zone_masters[z], -len(free_in(z)), z))
        pod = free_in(candidates[0])[0]
        free.remove(pod)
        chosen.append(pod)
        zone_masters[zones[pod]] += 1
    if len(chosen) < shards:
        raise BootstrapError(f"{len(zones)} pods cannot hold {shards} shards")

    layout = Layout(masters=chosen, replicas={m: [] for m in chosen})
    for replica, master in sorted(attached.items(), key=lambda kv: pod_ordinal(kv[0])):
        layout.replicas.setdefault(master, []).append(replica)

    # Fill replica seats round by round so every master gets its first replica before any
    # gets a second; pick from the zone with most free pods among the zones not already
    # used by the master's group.
    while free:
        needy = [m for m in chosen if len(layout.replicas[m]) < replicas_per_shard]
        if not needy:
            # More pods than seats: extra replicas go to the masters with fewest.
            needy = sorted(chosen, key=lambda m: (len(layout.replicas[m]), pod_ordinal(m)))[:1]
        least = min(len(layout.replicas[m]) for m in needy)
        for master in [m for m in needy if len(layout.replicas[m]) == least]:
            if not free:
                break
            used = {zones[master]} | {zones[r] for r in layout.replicas[master]}
            counts = Counter(zones[p] for p in free)
            options = sorted(counts, key=lambda z: (z in used, z == zones[master], -counts[z], z))
            pod = free_in(options[0])[0]
            free.remove(pod)
            layout.replicas[master].append(pod)

    _repair_same_zone(layout, zones, fixed=set(attached))
    return layout


def _repair_same_zone(layout: Layout, zones: Mapping[str, str], fixed: set[str]) -> None:
    """Swaps movable replicas between masters while that removes same-zone pairs."""

    def bad(master: str, replica: str) -> bool:
        return zones[master] == zones[replica]

    improved = True
    while improved:
        improved = False
        pairs = [(m, r) for m, rs in layout.replicas.items() for r in rs if r not in fixed]
        for m1, r1 in pairs:
            if not bad(m1, r1):
                continue
            for m2, r2 in pairs:
                if m2 == m1 or r2 == r1:
                    continue
                before = bad(m1, r1) + bad(m2, r2)
                after = bad(m1, r2) + bad(m2, r1)
                if after < before:
                    layout.replicas[m1][layout.replicas[m1].index(r1)] = r2
                    layout.replicas[m2][layout.replicas[m2].index(r2)] = r1
                    improved = True
                    break
            if improved:
                break


def cli_create_order(layout: Layout) -> list[str]:
    """The pod order to give `redis-cli --cluster create` so that it builds `layout`.

    With every node on its own IP (one pod, one IP), redis-cli takes the first
    `masters` nodes as masters, rotates the rest left by one, then hands each master in
    turn its next `replicas` nodes. Pre-rotating right undoes the rotation. The result is
    checked (and corrected) after creation anyway.
    """
    seats = [r for m in layout.masters for r in layout.replicas.get(m, [])]
    if seats:
        seats = seats[-1:] + seats[:-1]
    return list(layout.masters) + seats


def placement_report(layout: Layout, zones: Mapping[str, str]) -> dict[str, Any]:
    distinct = sorted({z for z in zones.values()})
    same_zone = sorted(
        (r for m, rs in layout.replicas.items() for r in rs if zones.get(r) == zones.get(m)),
        key=pod_ordinal,
    )
    multi_zone = len([z for z in distinct if z]) > 1
    return {
        "zones": distinct,
        "multi_zone": multi_zone,
        "zone_aware": (not same_zone) if multi_zone else False,
        "replicas_in_master_zone": same_zone if multi_zone else [],
        "shards": [
            {
                "master": m,
                "zone": zones.get(m, ""),
                "replicas": [
                    {"pod": r, "zone": zones.get(r, "")} for r in sorted(layout.replicas.get(m, []), key=pod_ordinal)
                ],
            }
            for m in sorted(layout.masters, key=pod_ordinal)
        ],
    }


SlotMove = tuple[str, str, list[int]]


def plan_slot_moves(owned: Mapping[str, Sequence[int]]) -> list[SlotMove]:
    """(source, target, slots) moves that bring every master within the threshold of its
    ideal count. `owned` maps each master (masters to fill included, with no slots) to its
    slots; the ideal counts go by pod ordinal, so the plan is the same on every run."""
    order = sorted(owned, key=lambda p: (pod_ordinal(p), p))
    if not order:
        return []
    ideal = dict(zip(order, ideal_slot_counts(len(order))))
    short = {m: ideal[m] - len(owned[m]) for m in order if len(owned[m]) < ideal[m] * (1 - REBALANCE_THRESHOLD)}
    if not short:
        return []
    surplus = {m: len(owned[m]) - ideal[m] for m in order if len(owned[m]) > ideal[m]}
    sources = {m: sorted(owned[m]) for m in surplus}
    moves: list[SlotMove] = []
    for target, need in short.items():
        for source in list(surplus):
            if need <= 0:
                break
            give = min(need, surplus[source])
            if give <= 0:
                continue
            # Highest slots first keeps each master's ranges contiguous.
            taken, sources[source] = sources[source][-give:], sources[source][:-give]
            moves.append((source, target, taken))
            surplus[source] -= give
            need -= give
    return moves


@dataclass
class OpenSlotPlan:
    """How to finish the slot moves an interrupted run left open."""

    #: (source node ID, target node ID) -> slots still to move. The direction they had, towards
    #: the master that holds what the marked peer held (its heir after a failover).
    moves: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    #: (node ID, slot): marks on a slot whose move is over; only the mark is left to clear.
    stale_marks: list[tuple[str, int]] = field(default_factory=list)
    #: Marks no move can finish safely, each with why: left to an operator.
    conflicts: list[str] = field(default_factory=list)


def _heir(node_id: str, entries: Mapping[str, NodeEntry]) -> str:
    """The master that holds what `node_id` held: the node itself while it is a master, its
    master once it is a replica (a failover promoted its replica, which took its slots and
    the keys it had replicated). A node the map does not list is left as it is."""
    entry = entries.get(node_id)
    if entry is None or entry.is_master:
        return node_id
    master = entries.get(entry.master_id or "")
    return master.id if master is not None and master.is_master else node_id


def plan_open_slots(reference: Sequence[NodeEntry], own: Sequence[NodeEntry]) -> OpenSlotPlan:
    """`reference` is the agreed slot map, `own` each node's line about itself (the only
    one that carries its migrating and importing marks).

    Only masters' marks count: Valkey 8 and later copy a primary's marks to its replicas
    (so that a failover keeps the migration going), and a replica refuses SETSLOT; moving
    the slot on the primary clears the copies too.

    A mark names the peer as it was when the move started. When that peer has failed over
    since, it is a replica now and refuses SETSLOT: the move goes on towards its heir, which
    holds the keys that had reached it. A slot that already belongs to the mark's peer (or
    its heir) only has its mark cleared."""
    entries = {e.id: e for e in reference}
    owners = {slot: e.id for e in reference for a, b in e.slots for slot in range(a, b + 1)}
    pending: dict[tuple[str, str], set[int]] = defaultdict(set)
    stale: list[tuple[str, int]] = []
    conflicts: list[str] = []
    for me in own:
        if not me.is_master:
            continue
        for slot, target in me.migrating:
            heir, owner = _heir(target, entries), owners.get(slot, me.id)
            if owner == me.id and heir != me.id:
                pending[(me.id, heir)].add(slot)
            elif owner == heir:
                stale.append((me.id, slot))
            else:
                conflicts.append(f"slot {slot}: {me.id} migrates it to {target}, but {owner} owns it")
        for slot, source in me.importing:
            owner = _heir(owners.get(slot, source), entries)
            if owner != me.id:
                pending[(owner, me.id)].add(slot)
            else:
                stale.append((me.id, slot))
    pairs: dict[int, set[tuple[str, str]]] = defaultdict(set)
    for pair, slots in pending.items():
        for slot in slots:
            pairs[slot].add(pair)
    torn = {slot: sorted(found) for slot, found in pairs.items() if len(found) > 1}
    for slot, found in sorted(torn.items()):
        conflicts.append(f"slot {slot} is open between " + " and ".join(f"{s} -> {t}" for s, t in found))
    moves = {pair: sorted(s for s in slots if s not in torn) for pair, slots in pending.items()}
    return OpenSlotPlan({pair: slots for pair, slots in moves.items() if slots}, stale, conflicts)
