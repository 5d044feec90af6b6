"""Clusters made of views, not of servers: what six nodes would answer, for unit tests of
the decisions the cluster logic takes over those answers."""

from __future__ import annotations

from cluster_logic.cluster import Cluster
from cluster_logic.model import SLOTS, NodeAddress, parse_cluster_nodes
from cluster_logic.observation import NodeView


def fake_cluster(kill: str = "") -> Cluster:
    nodes = [NodeAddress(f"redis-cluster-{i}", f"10.0.0.{i + 1}", 6379, "abc"[i % 3]) for i in range(6)]
    ids = [f"id{i}" for i in range(6)]
    slots = ["0-5460", "5461-10922", "10923-16383"]
    lines = []
    for i in range(6):
        role = "master" if i < 3 else "slave"
        master = "-" if i < 3 else ids[(i + 1) % 3]
        lines.append(
            f"{ids[i]} 10.0.0.{i + 1}:6379@16379 {role} {master} 0 0 1 connected {slots[i] if i < 3 else ''}".strip()
        )
    views = []
    for i, node in enumerate(nodes):
        if node.pod == kill:
            views.append(NodeView(node, error="Connection refused"))
            continue
        text = "\n".join(
            line.replace(f" {('master' if j < 3 else 'slave')} ", f" myself,{('master' if j < 3 else 'slave')} ", 1)
            if j == i
            else line
            for j, line in enumerate(lines)
        )
        info = {"cluster_state": "ok", "cluster_known_nodes": "6", "cluster_slots_ok": str(SLOTS)}
        replication = {"role": "master"} if i < 3 else {"role": "slave", "master_link_status": "up"}
        views.append(NodeView(node, myid=ids[i], entries=parse_cluster_nodes(text), info=info, replication=replication))
    cluster = Cluster(transport=None, nodes=nodes)  # type: ignore[arg-type]
    cluster.views = views
    return cluster


def cluster_after_volume_loss(
    old_line: str = "old3 10.0.0.9:6379@16379 slave,fail id1 0 0 1 disconnected",
    fresh_keys: int = 0,
    extra_line: str = "",
) -> Cluster:
    """fake_cluster, with redis-cluster-3 back empty under the new ID new3 while the
    members still list its old ID as `old_line`."""
    cluster = fake_cluster()
    for view in cluster.views:
        if view.node.pod == "redis-cluster-3":
            view.myid = "new3"
            view.entries = parse_cluster_nodes("new3 10.0.0.4:6379@16379 myself,master - 0 0 0 connected")
            view.info = {"cluster_state": "fail", "cluster_known_nodes": "1"}
            view.replication = {"role": "master"}
            view.keys = fresh_keys
        else:
            kept = [e for e in view.entries if e.id != "id3"]
            view.entries = kept + parse_cluster_nodes("\n".join(filter(None, [old_line, extra_line])))
    return cluster


KNOWN_BEFORE = {f"id{i}": f"redis-cluster-{i}" for i in range(6)} | {"old3": "redis-cluster-3"}


def with_own_line(cluster: Cluster, pod: str, line: str) -> Cluster:
    view = next(v for v in cluster.views if v.node.pod == pod)
    view.entries = [e for e in view.entries if e.id != view.myid] + parse_cluster_nodes(line)
    return cluster
