"""The node model: slot-range arithmetic and CLUSTER NODES parsing."""

from __future__ import annotations

from cluster_logic.model import (
    SLOTS,
    expand_ranges,
    format_ranges,
    parse_cluster_nodes,
    slot_ranges,
)
from cluster_logic.planning import ideal_slot_counts

# -- slots ------------------------------------------------------------------------------


def test_slot_ranges_fold_and_format() -> None:
    assert slot_ranges([5, 1, 2, 3, 9, 10]) == [(1, 3), (5, 5), (9, 10)]
    assert format_ranges(slot_ranges([5, 1, 2, 3, 9, 10])) == ["1-3", "5", "9-10"]
    assert expand_ranges([(0, 2), (7, 7)]) == [0, 1, 2, 7]
    assert slot_ranges([]) == []


def test_ideal_slot_counts_cover_all_slots() -> None:
    for masters in (3, 4, 7, 100):
        counts = ideal_slot_counts(masters)
        assert sum(counts) == SLOTS and max(counts) - min(counts) <= 1
    assert ideal_slot_counts(4) == [4096] * 4


def test_parse_cluster_nodes_with_open_slots_and_hostnames() -> None:
    text = (
        "aaa 10.0.0.1:6379@16379,redis-cluster-0 myself,master - 0 0 1 connected 0-100 200 [101->-bbb] [300-<-ccc]\n"
        "bbb 10.0.0.2:6379@16379 master - 0 1 2 connected 101-199\n"
        "ddd 10.0.0.4:6379@16379 slave,fail aaa 0 1 1 disconnected\n"
        "eee :0@0 master,noaddr - 0 1 0 disconnected\n"
    )
    entries = parse_cluster_nodes(text)
    me = entries[0]
    assert me.myself and me.is_master and me.host == "10.0.0.1" and me.port == 6379 and me.bus_port == 16379
    assert me.slots == ((0, 100), (200, 200)) and me.slot_count == 102
    assert me.migrating == ((101, "bbb"),) and me.importing == ((300, "ccc"),)
    assert entries[2].master_id == "aaa" and entries[2].failing and not entries[2].is_master
    assert entries[3].failing and entries[3].port == 0 and entries[3].bus_port == 0
