"""The topology report and the problems that keep a cluster from being converged, judged
over views (no Redis)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cluster_logic import health
from cluster_logic.model import format_ranges, parse_cluster_nodes
from testkit.fake_views import fake_cluster

# -- output shape from views (no Redis) -------------------------------------------------


def test_topology_output_shape() -> None:
    topology = health.topology(fake_cluster(), 3, 1)
    assert topology["state"] == "ok" and topology["problems"] == []
    assert topology["node_count"] == 6
    master = topology["masters"][0]
    assert master == {
        "pod": "redis-cluster-0",
        "id": "id0",
        "zone": "a",
        "slots": ["0-5460"],
        "slot_count": 5461,
        "replicas": ["redis-cluster-5"],
        "status": "ok",
    }
    replica = topology["replicas"][0]
    assert replica == {
        "pod": "redis-cluster-3",
        "id": "id3",
        "zone": "a",
        "master": "redis-cluster-1",
        "master_id": "id1",
        "link": "up",
        "status": "ok",
    }
    assert topology["placement"]["zone_aware"] is True
    assert topology["node_ids"] == {f"id{i}": f"redis-cluster-{i}" for i in range(6)}


def test_topology_reports_an_unreachable_node() -> None:
    topology = health.topology(fake_cluster(kill="redis-cluster-4"), 3, 1)
    assert topology["state"] == "degraded"
    assert any("redis-cluster-4" in p and "unreachable" in p for p in topology["problems"])
    assert next(r for r in topology["replicas"] if r["pod"] == "redis-cluster-4")["status"] == "unreachable"


def test_nodes_that_disagree_about_the_slot_map_are_not_converged() -> None:
    cluster = fake_cluster()
    # redis-cluster-2 still believes slot 0-99 belongs to redis-cluster-1, as a node
    # that missed a SETSLOT NODE does; every other check of that node is clean.
    view = cluster.view_of("redis-cluster-2")
    view.entries = parse_cluster_nodes(
        "\n".join(
            line.replace(" 0-5460", " 100-5460").replace(" 5461-10922", " 0-99 5461-10922") for line in _lines(view)
        )
    )
    assert health.problems(cluster) == ["nodes disagree about the slot map"]
    assert health.topology(cluster, 3, 1)["state"] == "degraded"


def test_a_listed_problem_never_comes_with_state_ok() -> None:
    cluster = fake_cluster()
    # redis-cluster-3 turned into a master without slots (a replica whose master was
    # removed by hand): every node still says cluster_state ok.
    for view in cluster.views:
        view.entries = [
            replace(e, flags=e.flags - {"slave"} | {"master"}, master_id=None) if e.id == "id3" else e
            for e in view.entries
        ]
    report = health.topology(cluster, 3, None)
    assert report["problems"] == ["redis-cluster-3: master without slots"]
    assert report["state"] == "degraded"


def _lines(view) -> list[str]:
    """A view's CLUSTER NODES text again, as the node would print it."""
    out = []
    for e in view.entries:
        role = ",".join(sorted(e.flags, key=lambda f: f != "myself"))
        slots = " ".join(format_ranges(e.slots))
        out.append(
            f"{e.id} {e.host}:{e.port}@16379 {role} {e.master_id or '-'} 0 0 {e.config_epoch} {e.link} {slots}".strip()
        )
    return out


# -- replicas caught up (the last step of every create and update) ----------------------


def _replicas_at(offsets: dict[str, dict]) -> list:
    """fake_cluster's views with the masters at offset 1000 and each replica's replication
    fields replaced by `offsets[pod]` (pods not named: caught up)."""
    cluster = fake_cluster()
    for view in cluster.views:
        if view.me.is_master:
            view.replication = {"role": "master", "master_repl_offset": 1000}
        else:
            caught_up = {"role": "slave", "master_link_status": "up", "master_sync_in_progress": 0}
            view.replication = {**caught_up, "slave_repl_offset": 1000, **offsets.get(view.node.pod, {})}
    return cluster.views


@pytest.mark.parametrize(
    ("replica", "fields", "problem"),
    [
        ("redis-cluster-3", {}, None),
        ("redis-cluster-3", {"slave_repl_offset": 1500}, None),
        (
            "redis-cluster-3",
            {"slave_repl_offset": 0},
            "redis-cluster-3: replica at offset 0 of the 1000 redis-cluster-1 had",
        ),
        (
            "redis-cluster-4",
            {"slave_repl_offset": 999},
            "redis-cluster-4: replica at offset 999 of the 1000 redis-cluster-2 had",
        ),
        ("redis-cluster-5", {"master_link_status": "down"}, "redis-cluster-5: replica link to redis-cluster-0 is down"),
        (
            "redis-cluster-5",
            {"master_sync_in_progress": 1},
            "redis-cluster-5: still loading its full sync from redis-cluster-0",
        ),
    ],
)
def test_a_replica_has_caught_up_only_with_everything_its_master_held(replica, fields, problem) -> None:
    views = _replicas_at({replica: fields})
    targets = health.master_offsets(views)
    assert targets == {"id0": 1000, "id1": 1000, "id2": 1000}
    assert health.replication_lag(targets, views) == ([problem] if problem else [])


def test_replicas_of_masters_taken_later_are_not_judged() -> None:
    # A master that was not in the picture when the offsets were taken (it failed over
    # since) sets no target for its replicas.
    views = _replicas_at({"redis-cluster-3": {"slave_repl_offset": 0}})
    assert health.replication_lag({"id0": 1000, "id2": 1000}, views) == []
