"""The scale-in plan, judged over layouts (no Redis): which replicas take over, which slots
move where, who follows whom, and what is forgotten; and the memory check."""

from __future__ import annotations

import pytest

from cluster_logic.errors import BootstrapError
from cluster_logic.model import SLOTS
from cluster_logic.planning import Layout, ideal_slot_counts
from cluster_logic.scale_in import memory_refusal, plan_drain, plan_scale_in

ZONES = "abc"


def pod(i: int) -> str:
    return f"redis-cluster-{i}"


def zones(count: int) -> dict[str, str]:
    return {pod(i): ZONES[i % 3] for i in range(count)}


def even_slots(masters: list[str]) -> dict[str, list[int]]:
    counts = ideal_slot_counts(len(masters))
    owned, start = {}, 0
    for master, count in zip(masters, counts):
        owned[master] = list(range(start, start + count))
        start += count
    return owned


def check_result(plan, layout: Layout, owned, stay: list[str], shards: int, replicas: int) -> None:
    """The plan's end state: `shards` kept masters among the staying pods holding every slot,
    balanced; every staying pod not kept follows a kept master, `replicas` each; every pod
    that goes is forgotten and holds nothing."""
    slots = {m: set(s) for m, s in owned.items()}
    heirs = dict(zip(plan.failovers, [next(m for m, rs in layout.replicas.items() if h in rs) for h in plan.failovers]))
    for heir, master in heirs.items():
        slots[heir] = slots.pop(master)
    for source, target, moved in plan.moves:
        assert set(moved) <= slots[source], (source, moved)
        slots[source] -= set(moved)
        slots.setdefault(target, set()).update(moved)
    holders = {m: s for m, s in slots.items() if s}
    assert set(holders) == set(plan.keep) and len(plan.keep) == shards
    assert set(plan.keep) <= set(stay)
    assert sum(len(s) for s in holders.values()) == SLOTS
    assert max(len(s) for s in holders.values()) - min(len(s) for s in holders.values()) <= 1
    follows = {r: m for m, rs in layout.replicas.items() for r in rs}
    follows = {r: next((h for h, m2 in heirs.items() if m2 == m), m) for r, m in follows.items()}
    follows.update(plan.replicate)
    staying_replicas = [p for p in stay if p not in plan.keep]
    assert all(follows.get(r) in plan.keep for r in staying_replicas), (follows, staying_replicas)
    assert sorted(sum(1 for r in staying_replicas if follows[r] == m) for m in plan.keep) == [replicas] * shards
    everyone = set(layout.masters) | {r for rs in layout.replicas.values() for r in rs}
    assert set(plan.forget) == everyone - set(stay)


@pytest.mark.parametrize(
    "case, masters, replicas_of, shards, replicas",
    [
        # 4 -> 3 shards: the masters at the lowest ordinals stay; pod 6 (a master) is drained.
        ("4 to 3 shards", [0, 1, 2, 6], {0: [4], 1: [5], 2: [3], 6: [7]}, 3, 1),
        # The same after failovers: the master of pod 0's shard runs on pod 7, which goes; its
        # replica, pod 0, stays and takes over rather than its slots moving.
        ("a master that goes with a replica that stays", [7, 1, 2, 6], {7: [0], 1: [5], 2: [3], 6: [4]}, 3, 1),
        # 2 -> 1 replicas per shard: pods 6, 7, 8 go; no slot moves.
        ("2 to 1 replicas", [0, 1, 2], {0: [4, 7], 1: [5, 8], 2: [3, 6]}, 3, 1),
        # 2 -> 1 replicas where a master sits on a pod that goes.
        ("2 to 1 replicas, a master on a pod that goes", [0, 1, 8], {0: [4, 7], 1: [5, 6], 8: [3, 2]}, 3, 1),
        # 3 -> 2 shards and 1 -> 1: a staying master is drained and becomes a replica.
        ("3 to 2 shards", [0, 1, 2], {0: [3], 1: [4], 2: [5]}, 2, 1),
        # 4 -> 2 shards, 1 -> 0 replicas.
        ("4 shards with replicas to 2 without", [0, 1, 2, 3], {0: [4], 1: [5], 2: [6], 3: [7]}, 2, 0),
    ],
)
def test_a_scale_in_leaves_the_staying_pods_in_the_new_shape(case, masters, replicas_of, shards, replicas) -> None:
    count = len(masters) + sum(len(r) for r in replicas_of.values())
    layout = Layout(
        masters=[pod(m) for m in masters], replicas={pod(m): [pod(r) for r in rs] for m, rs in replicas_of.items()}
    )
    owned = even_slots(layout.masters)
    stay = [pod(i) for i in range(shards * (1 + replicas))]
    plan = plan_scale_in(layout, owned, zones(count), stay, shards, replicas)
    check_result(plan, layout, owned, stay, shards, replicas)
    print(case, plan.describe())


def test_a_master_whose_replica_stays_fails_over_instead_of_moving_its_keys() -> None:
    layout = Layout(
        masters=[pod(7), pod(1), pod(2), pod(6)],
        replicas={pod(7): [pod(0)], pod(1): [pod(5)], pod(2): [pod(3)], pod(6): [pod(4)]},
    )
    owned = even_slots(layout.masters)
    plan = plan_scale_in(layout, owned, zones(8), [pod(i) for i in range(6)], 3, 1)
    assert plan.failovers == [pod(0)]
    # pod 6's slots move (its replica, pod 4, stays but is needed as a replica, not a fourth master)
    assert {s for s, _, _ in plan.moves} <= {pod(6), pod(4)}
    assert not any(s == pod(0) for s, _, _ in plan.moves)


def test_nothing_to_do_when_the_shape_is_already_the_new_one() -> None:
    layout = Layout(masters=[pod(0), pod(1), pod(2)], replicas={pod(0): [pod(4)], pod(1): [pod(5)], pod(2): [pod(3)]})
    plan = plan_scale_in(layout, even_slots(layout.masters), zones(6), [pod(i) for i in range(6)], 3, 1)
    assert plan.empty() and plan.describe() == []


def test_the_plan_reads_as_steps() -> None:
    layout = Layout(
        masters=[pod(0), pod(1), pod(2), pod(6)],
        replicas={pod(0): [pod(4)], pod(1): [pod(5)], pod(2): [pod(3)], pod(6): [pod(7)]},
    )
    plan = plan_scale_in(layout, even_slots(layout.masters), zones(8), [pod(i) for i in range(6)], 3, 1)
    lines = plan.describe()
    assert any(line.startswith("move ") and line.endswith(f"from {pod(6)} to {pod(0)}") for line in lines), lines
    assert lines[-1] == f"forget {pod(6)}, {pod(7)}"


def test_too_few_staying_masters_is_refused_with_the_pods_named() -> None:
    # Two shards whose replicas that stay (pods 0 and 1) both follow the same master that
    # goes: only one of them can take its slots over, and the other shard has no pod left.
    layout = Layout(masters=[pod(2), pod(3)], replicas={pod(2): [pod(0), pod(1)], pod(3): [pod(4), pod(5)]})
    with pytest.raises(BootstrapError, match="only 1 of them can hold slots"):
        plan_scale_in(layout, even_slots(layout.masters), zones(6), [pod(0), pod(1)], 2, 0)


def test_drain_empties_the_masters_not_kept_and_balances_the_rest() -> None:
    owned = even_slots([pod(0), pod(1), pod(2), pod(6)])
    moves = plan_drain(owned, [pod(0), pod(1), pod(2)])
    assert {s for s, _, _ in moves} == {pod(6)}
    assert sum(len(m) for _, _, m in moves) == len(owned[pod(6)])


@pytest.mark.parametrize(
    "datasets, limit, keep, refused",
    [
        ({"a": 300, "b": 300, "c": 300, "d": 300}, 500, ["a", "b", "c"], False),  # 400 each, 80% of 500
        ({"a": 300, "b": 300, "c": 300, "d": 301}, 500, ["a", "b", "c"], True),
        ({"a": 10**9}, 0, ["a"], False),  # no maxmemory: no limit
    ],
)
def test_memory_refusal_keeps_headroom_below_the_near_maxmemory_alert(datasets, limit, keep, refused) -> None:
    message = memory_refusal(datasets, {m: limit for m in datasets}, keep)
    assert (message is not None) == refused, message
    if refused:
        assert "80% of their maxmemory" in message and "MiB" in message


def test_a_shard_split_on_the_staying_pods_is_merged_without_a_pod_going() -> None:
    """A partition mid-move left a master (pod 3) and the replica promoted in its place (pod 7)
    both holding slots: five masters for four shards, every pod staying. The smaller of the
    two is drained into the others and follows a master; nothing is forgotten."""
    layout = Layout(
        masters=[pod(0), pod(1), pod(2), pod(3), pod(7)],
        replicas={pod(0): [pod(4)], pod(1): [pod(5)], pod(2): [pod(6)]},
    )
    owned = even_slots([pod(0), pod(1), pod(2), pod(3)])
    owned[pod(7)] = owned[pod(3)][: len(owned[pod(3)]) // 3]
    owned[pod(3)] = owned[pod(3)][len(owned[pod(7)]) :]
    stay = [pod(i) for i in range(8)]
    plan = plan_scale_in(layout, owned, zones(8), stay, 4, 1)
    assert plan.drained == [pod(7)] and plan.forget == [] and plan.failovers == []
    assert plan.keep == [pod(0), pod(1), pod(2), pod(3)]
    check_result(plan, layout, owned, stay, 4, 1)
