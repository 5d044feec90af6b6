"""Recovery decisions over views: a pod back empty under a new ID is recognised only when
nothing can be lost."""

from __future__ import annotations

import pytest

from cluster_logic import health
from cluster_logic.cluster import Cluster
from cluster_logic.errors import BootstrapError
from cluster_logic.reconcile import ensure_cluster
from cluster_logic.recovery import abandoned_formation, lost_identities
from components import cluster_bootstrap as cb
from testkit.fake_transport import FakeTransport, SimulatedClock, fresh_node, six_nodes
from testkit.fake_views import KNOWN_BEFORE, cluster_after_volume_loss, with_own_line

# -- a pod that lost its volume ---------------------------------------------------------


def test_a_pod_back_empty_under_a_new_id_is_recognised_by_its_old_id() -> None:
    assert lost_identities(cluster_after_volume_loss(), KNOWN_BEFORE) == {"old3": "redis-cluster-3"}
    noaddr = cluster_after_volume_loss(old_line="old3 :0@0 slave,noaddr id1 0 0 1 disconnected")
    assert lost_identities(noaddr, KNOWN_BEFORE) == {"old3": "redis-cluster-3"}


def test_the_outputs_keep_naming_the_old_id_until_the_members_forget_it() -> None:
    cluster = cluster_after_volume_loss()
    cluster.known_pods = dict(KNOWN_BEFORE)
    node_ids = health.topology(cluster, 3, 1)["node_ids"]
    assert node_ids["old3"] == "redis-cluster-3" and node_ids["new3"] == "redis-cluster-3"
    assert "id3" not in node_ids, "an ID no member lists any more is dropped"
    # The next update reads its known pods back from these outputs.
    assert cb._known_pods({"node_ids": node_ids, "masters": [], "replicas": []})["old3"] == "redis-cluster-3"


@pytest.mark.parametrize(
    "case, cluster, known",
    [
        ("no earlier outputs name the old ID", cluster_after_volume_loss(), {}),
        (
            "the old ID still holds slots",
            cluster_after_volume_loss(old_line="old3 10.0.0.9:6379@16379 master,fail - 0 0 1 disconnected 0-5460"),
            KNOWN_BEFORE,
        ),
        (
            "the members do not see the old ID as failed",
            cluster_after_volume_loss(old_line="old3 10.0.0.9:6379@16379 slave id1 0 0 1 connected"),
            KNOWN_BEFORE,
        ),
        ("the new node holds keys", cluster_after_volume_loss(fresh_keys=3), KNOWN_BEFORE),
        (
            "a node nobody can account for is listed too",
            cluster_after_volume_loss(extra_line="zz99 10.9.9.9:6379@16379 slave,fail id1 0 0 1 disconnected"),
            KNOWN_BEFORE,
        ),
    ],
)
def test_anything_but_a_clear_volume_loss_is_left_alone(case: str, cluster: Cluster, known: dict) -> None:
    assert lost_identities(cluster, known) == {}, case


def test_an_old_id_a_member_still_points_at_is_left_alone() -> None:
    # A member replicating the old ID: Redis would refuse to forget it, after the others.
    replica = with_own_line(
        cluster_after_volume_loss(), "redis-cluster-4", "id4 10.0.0.5:6379@16379 myself,slave old3 0 0 1 connected"
    )
    assert lost_identities(replica, KNOWN_BEFORE) == {}
    # A slot half moved toward the old ID: forgetting would drop the open slot silently.
    migrating = with_own_line(
        cluster_after_volume_loss(),
        "redis-cluster-0",
        "id0 10.0.0.1:6379@16379 myself,master - 0 0 1 connected 0-5460 [100->-old3]",
    )
    assert lost_identities(migrating, KNOWN_BEFORE) == {}


# -- a formation that died half-way ---------------------------------------------------


def _crashed_create(keys_on_first: int = 0) -> list:
    """redis-cluster-0 got its slots (ADDSLOTS ran) and met no one; the others are fresh."""
    first = fresh_node(0, keys=keys_on_first)
    first.nodes = first.nodes.replace(" connected", " connected 0-5460")
    first.info = {"cluster_state": "fail", "cluster_known_nodes": "1", "cluster_slots_ok": "5461"}
    return [first] + [fresh_node(i) for i in range(1, 6)]


def _masters_only() -> list:
    """Three masters over all slots that know only each other."""
    masters = six_nodes()[:3]
    for node in masters:
        node.nodes = "\n".join(line for line in node.nodes.splitlines() if line.split()[0] in {"id0", "id1", "id2"})
        node.info["cluster_known_nodes"] = "3"
    return masters


@pytest.mark.parametrize(
    "case, nodes, abandoned",
    [
        ("slots left unassigned, not one key", _crashed_create(), True),
        ("a key on the half-formed member", _crashed_create(keys_on_first=1), False),
        (
            "a complete cluster with fresh nodes beside it (a scale-out)",
            _masters_only() + [fresh_node(i) for i in (3, 4, 5)],
            False,
        ),
        ("only fresh nodes", [fresh_node(i) for i in range(6)], False),
        ("a converged cluster", six_nodes(), False),
    ],
)
def test_abandoned_formation(case: str, nodes: list, abandoned: bool) -> None:
    transport = FakeTransport(nodes)
    cluster = Cluster(transport, [n.address for n in nodes])
    cluster.refresh()
    assert abandoned_formation(cluster) is abandoned, case


def test_a_create_starts_an_abandoned_empty_formation_over(monkeypatch: pytest.MonkeyPatch) -> None:
    SimulatedClock().install(monkeypatch)
    nodes = _crashed_create()
    transport = FakeTransport(nodes)
    with pytest.raises(BootstrapError) as stopped:
        ensure_cluster(transport, 3, 1, 60)
    # Reset, the six nodes are fresh: the run goes on to form the cluster (redis-cli here
    # is a fake that fails), instead of refusing a cluster of the wrong shape.
    assert "redis-cli --cluster create failed" in str(stopped.value)
    assert transport.cli_calls and transport.cli_calls[0][:2] == ["--cluster", "create"]
    resets = {n.address.pod for n in nodes if ("CLUSTER", "RESET", "HARD") in n.sent}
    assert resets == {"redis-cluster-0"}


def test_a_formation_holding_a_key_is_never_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    SimulatedClock().install(monkeypatch)
    nodes = _crashed_create(keys_on_first=1)
    with pytest.raises(BootstrapError):
        ensure_cluster(FakeTransport(nodes), 3, 1, 60)
    assert not any(args[:2] == ("CLUSTER", "RESET") for n in nodes for args in n.sent)
