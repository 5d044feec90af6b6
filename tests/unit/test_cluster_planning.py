"""The pure planners: replica placement across zones, the create order redis-cli needs,
slot moves of a rebalance and the finishing of open slots."""

from __future__ import annotations

import pytest

from cluster_logic.model import SLOTS, parse_cluster_nodes, pod_ordinal
from cluster_logic.planning import (
    Layout,
    cli_create_order,
    placement_report,
    plan_layout,
    plan_open_slots,
    plan_slot_moves,
)


def zones_of(*zones: str, prefix: str = "redis-cluster-") -> dict[str, str]:
    return {f"{prefix}{i}": z for i, z in enumerate(zones)}


def same_zone_pairs(layout: Layout, zones: dict[str, str]) -> list[str]:
    return placement_report(layout, zones)["replicas_in_master_zone"]


def redis_cli_assignment(order: list[str], replicas: int) -> Layout:
    """redis-cli --cluster create's choice when every node has its own IP: the first
    masters, the rest rotated left by one, each master taking its next `replicas`."""
    masters_count = len(order) // (1 + replicas)
    masters, rest = order[:masters_count], order[masters_count:]
    rest = rest[1:] + rest[:1]
    layout = Layout(masters=list(masters), replicas={m: [] for m in masters})
    for i, master in enumerate(masters):
        layout.replicas[master] = rest[i * replicas : (i + 1) * replicas]
    return layout


# -- placement --------------------------------------------------------------------------


def test_round_robin_zones_get_cross_zone_replicas() -> None:
    zones = zones_of("a", "b", "c", "a", "b", "c")
    layout = plan_layout(zones, 3, 1)
    assert sorted(layout.masters, key=pod_ordinal) == ["redis-cluster-0", "redis-cluster-1", "redis-cluster-2"]
    assert same_zone_pairs(layout, zones) == []
    assert sorted(r for rs in layout.replicas.values() for r in rs) == [
        "redis-cluster-3",
        "redis-cluster-4",
        "redis-cluster-5",
    ]


def test_zones_where_redis_cli_alone_puts_every_replica_with_its_master() -> None:
    zones = zones_of("a", "b", "c", "c", "a", "b")
    naive = redis_cli_assignment(sorted(zones, key=pod_ordinal), 1)
    assert len(same_zone_pairs(naive, zones)) == 3
    layout = plan_layout(zones, 3, 1)
    assert same_zone_pairs(layout, zones) == []
    # The argv order makes redis-cli build exactly the plan.
    built = redis_cli_assignment(cli_create_order(layout), 1)
    assert built.masters == layout.masters and built.replicas == layout.replicas


@pytest.mark.parametrize(
    "zone_cycle,shards,replicas",
    [
        (("a", "b", "c"), 3, 1),
        (("a", "b", "c"), 3, 2),
        (("a", "b"), 5, 1),
        (("a", "b", "c"), 10, 2),
        (("a", "b", "c"), 4, 1),
    ],
)
def test_plans_have_no_same_zone_pair_and_cli_order_reproduces_them(
    zone_cycle: tuple, shards: int, replicas: int
) -> None:
    count = shards * (1 + replicas)
    zones = zones_of(*[zone_cycle[i % len(zone_cycle)] for i in range(count)])
    layout = plan_layout(zones, shards, replicas)
    assert len(layout.masters) == shards
    assert all(len(rs) == replicas for rs in layout.replicas.values())
    assert same_zone_pairs(layout, zones) == []
    if replicas == 2 and len(zone_cycle) >= 3:
        for master, rs in layout.replicas.items():
            assert len({zones[master], *(zones[r] for r in rs)}) == 3, "a shard spans three zones"
    built = redis_cli_assignment(cli_create_order(layout), replicas)
    assert built.replicas == layout.replicas
    # Masters are spread: no zone holds more than its share (rounded up).
    per_zone = {z: sum(zones[m] == z for m in layout.masters) for z in zone_cycle}
    assert max(per_zone.values()) - min(per_zone.values()) <= 1


def test_infeasible_spread_is_best_effort_and_reported() -> None:
    # Four pods in one zone, two in another: three pairs cannot all cross zones.
    zones = zones_of("a", "a", "a", "a", "b", "b")
    layout = plan_layout(zones, 3, 1)
    report = placement_report(layout, zones)
    assert len(report["replicas_in_master_zone"]) == 1
    assert report["zone_aware"] is False and report["multi_zone"] is True


def test_single_zone_is_not_called_zone_aware() -> None:
    zones = zones_of(*["only"] * 6)
    report = placement_report(plan_layout(zones, 3, 1), zones)
    assert report["multi_zone"] is False and report["zone_aware"] is False
    assert report["replicas_in_master_zone"] == []


def test_scale_out_plan_keeps_existing_roles() -> None:
    zones = zones_of("a", "b", "c", "a", "b", "c", "a", "b")
    masters = ["redis-cluster-0", "redis-cluster-1", "redis-cluster-2"]
    attached = {
        "redis-cluster-3": "redis-cluster-1",
        "redis-cluster-4": "redis-cluster-2",
        "redis-cluster-5": "redis-cluster-0",
    }
    layout = plan_layout(zones, 4, 1, masters=masters, attached=attached)
    assert layout.masters[:3] == masters
    new_master = layout.masters[3]
    assert new_master in ("redis-cluster-6", "redis-cluster-7")
    assert layout.master_of() == {**attached, ({"redis-cluster-6", "redis-cluster-7"} - {new_master}).pop(): new_master}
    assert same_zone_pairs(layout, zones) == []


def test_placement_report_shape() -> None:
    zones = zones_of("a", "b", "c", "a", "b", "c")
    report = placement_report(plan_layout(zones, 3, 1), zones)
    assert set(report) == {"zones", "multi_zone", "zone_aware", "replicas_in_master_zone", "shards"}
    assert report["zones"] == ["a", "b", "c"]
    shard = report["shards"][0]
    assert set(shard) == {"master", "zone", "replicas"} and set(shard["replicas"][0]) == {"pod", "zone"}


# -- slot moves of a rebalance ----------------------------------------------------------


def _apply(owned: dict[str, list[int]], moves: list) -> dict[str, set[int]]:
    after = {m: set(s) for m, s in owned.items()}
    for source, target, slots in moves:
        assert set(slots) <= after[source], "a move takes only slots its source owns"
        after[source] -= set(slots)
        after[target] |= set(slots)
    return after


THREE_BALANCED = {"m-0": list(range(0, 5461)), "m-1": list(range(5461, 10923)), "m-2": list(range(10923, 16384))}


@pytest.mark.parametrize(
    "case, owned, expected_counts",
    [
        ("balanced: nothing moves", THREE_BALANCED, None),
        ("a new empty master", {**THREE_BALANCED, "m-3": []}, {"m-0": 4096, "m-1": 4096, "m-2": 4096, "m-3": 4096}),
        (
            "two new empty masters",
            {**THREE_BALANCED, "m-3": [], "m-4": []},
            {"m-0": 3277, "m-1": 3277, "m-2": 3277, "m-3": 3277, "m-4": 3276},
        ),
        (
            "within redis-cli's 2% threshold: nothing moves",
            {"m-0": list(range(0, 8292)), "m-1": list(range(8292, 16384))},
            None,
        ),
        (
            "ordinals, not names, decide who gets the extra slot",
            {"m-10": list(range(0, 16384)), "m-9": []},
            {"m-9": 8192, "m-10": 8192},
        ),
    ],
)
def test_plan_slot_moves(case: str, owned: dict[str, list[int]], expected_counts: dict | None) -> None:
    moves = plan_slot_moves(owned)
    if expected_counts is None:
        assert moves == [], case
        return
    after = _apply(owned, moves)
    assert {m: len(s) for m, s in after.items()} == expected_counts, case
    assert sorted(s for slots in after.values() for s in slots) == list(range(SLOTS)), "every slot kept once"
    for source in {m[0] for m in moves}:
        given = sorted(s for src, _, slots in moves if src == source for s in slots)
        assert given == sorted(owned[source])[-len(given) :], (
            "a source gives its highest slots, keeping its range whole"
        )


# -- finishing open slots ---------------------------------------------------------------


def _entry(line: str):
    return parse_cluster_nodes(line)[0]


A_OWNS_100 = "A 10.0.0.1:6379@16379 myself,master - 0 0 1 connected 0-5460"
B_OWNS_REST = "B 10.0.0.2:6379@16379 myself,master - 0 0 2 connected 5461-16383"


@pytest.mark.parametrize(
    "case, own, moves, stale",
    [
        ("nothing open", [A_OWNS_100, B_OWNS_REST], {}, []),
        ("migrating mark on the source", [A_OWNS_100 + " [100->-B]", B_OWNS_REST], {("A", "B"): [100]}, []),
        ("importing mark on the target", [A_OWNS_100, B_OWNS_REST + " [100-<-A]"], {("A", "B"): [100]}, []),
        (
            "both marks, as redis-cli leaves them: one move",
            [A_OWNS_100 + " [100->-B] [101->-B]", B_OWNS_REST + " [100-<-A] [101-<-A]"],
            {("A", "B"): [100, 101]},
            [],
        ),
        (
            "the target already owns the slot: only its mark is left",
            [A_OWNS_100, B_OWNS_REST + " [6000-<-A]"],
            {},
            [("B", 6000)],
        ),
        (
            # Valkey 8+ copies a primary's marks to its replicas; a replica refuses SETSLOT.
            "marks a replica mirrors from its master are not moves of their own",
            [
                A_OWNS_100,
                B_OWNS_REST + " [100-<-A]",
                "C 10.0.0.3:6379@16379 myself,slave B 0 0 2 connected [100-<-A]",
                "D 10.0.0.4:6379@16379 myself,slave A 0 0 1 connected [100->-B]",
            ],
            {("A", "B"): [100]},
            [],
        ),
    ],
)
def test_plan_open_slots(case: str, own: list[str], moves: dict, stale: list) -> None:
    entries = [_entry(line) for line in own]
    reference = [_entry(line.split(" [")[0]) for line in own]
    plan = plan_open_slots(reference, entries)
    assert plan.moves == moves, case
    assert plan.stale_marks == stale, case
    assert plan.conflicts == [], case


# B (the target of a move from A) died mid-move; its replica C took over B's slots and the
# keys B had replicated; B came back as C's replica.
B_NOW_REPLICA = "B 10.0.0.2:6379@16379 myself,slave C 0 0 2 connected"
C_HEIR_OF_B = "C 10.0.0.3:6379@16379 myself,master - 0 0 3 connected 5461-16383"
# A (the source) died mid-move; its replica D took over A's slots; A came back as D's replica.
A_NOW_REPLICA = "A 10.0.0.1:6379@16379 myself,slave D 0 0 1 connected"
D_HEIR_OF_A = "D 10.0.0.4:6379@16379 myself,master - 0 0 4 connected 0-5460"


@pytest.mark.parametrize(
    "case, own, moves, stale",
    [
        (
            # Redis: the source still marks the slot migrating to B, which refuses SETSLOT as a
            # replica ("Please use SETSLOT only with masters"); C holds what B held.
            "the target failed over: the move goes on to its heir",
            [A_OWNS_100 + " [100->-B] [101->-B]", B_NOW_REPLICA, C_HEIR_OF_B],
            {("A", "C"): [100, 101]},
            [],
        ),
        (
            # Valkey 8+: the heir inherited the importing marks from its primary.
            "the target failed over and its heir kept the marks: one move",
            [A_OWNS_100 + " [100->-B]", B_NOW_REPLICA, C_HEIR_OF_B + " [100-<-A]"],
            {("A", "C"): [100]},
            [],
        ),
        (
            "the source failed over: its heir owns the slot and gives it",
            [A_NOW_REPLICA, D_HEIR_OF_A, B_OWNS_REST + " [100-<-A]"],
            {("D", "B"): [100]},
            [],
        ),
        (
            "the move finished but the source kept its mark: only the mark is cleared",
            ["A 10.0.0.1:6379@16379 myself,master - 0 0 1 connected 0-99 101-5460 [100->-B]", B_OWNS_REST + " 100"],
            {},
            [("A", 100)],
        ),
        (
            "the move finished on the target's heir, the source kept its mark",
            [
                "A 10.0.0.1:6379@16379 myself,master - 0 0 1 connected 0-99 101-5460 [100->-B]",
                B_NOW_REPLICA,
                C_HEIR_OF_B + " 100",
            ],
            {},
            [("A", 100)],
        ),
    ],
)
def test_open_slots_follow_a_failover_to_the_node_that_holds_the_keys(case, own, moves, stale) -> None:
    test_plan_open_slots(case, own, moves, stale)


@pytest.mark.parametrize(
    "case, own, conflict",
    [
        (
            "the source migrates a slot a third node owns",
            [
                "A 10.0.0.1:6379@16379 myself,master - 0 0 1 connected 0-99 101-5460 [100->-B]",
                B_OWNS_REST,
                "E 10.0.0.5:6379@16379 myself,master - 0 0 5 connected 100",
            ],
            "slot 100: A migrates it to B, but E owns it",
        ),
        (
            "two masters import the same slot from its owner",
            [
                A_OWNS_100,
                B_OWNS_REST + " [100-<-A]",
                "E 10.0.0.5:6379@16379 myself,master - 0 0 5 connected [100-<-A]",
            ],
            "slot 100 is open between A -> B and A -> E",
        ),
    ],
)
def test_open_slots_no_move_can_finish_are_left_to_an_operator(case: str, own: list[str], conflict: str) -> None:
    entries = [_entry(line) for line in own]
    reference = [_entry(line.split(" [")[0]) for line in own]
    plan = plan_open_slots(reference, entries)
    assert conflict in plan.conflicts, case
    assert 100 not in [s for slots in plan.moves.values() for s in slots], case


def test_an_unassigned_slot_being_imported_is_moved_from_where_it_came() -> None:
    own = [_entry("B 10.0.0.2:6379@16379 myself,master - 0 0 2 connected 5461-16383 [7-<-A]")]
    plan = plan_open_slots([], own)
    assert plan.moves == {("A", "B"): [7]}
