"""Pure logic of the cluster bootstrap: slot math, CLUSTER NODES parsing, placement
planning, output shape, input validation, and that the provider pickles and imports the
way the engine needs."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from components import cluster_bootstrap as cb
from components.cluster_topology import (
    SLOTS,
    Cluster,
    Layout,
    NodeView,
    cli_create_order,
    expand_ranges,
    format_ranges,
    ideal_slot_counts,
    lost_identities,
    parse_cluster_nodes,
    placement_report,
    plan_layout,
    slot_ranges,
)
from components.node_transports import NodeAddress, in_pod_redis_cli_argv, pod_ordinal

REPO = Path(__file__).resolve().parents[2]


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
    assert me.myself and me.is_master and me.host == "10.0.0.1" and me.port == 6379
    assert me.slots == ((0, 100), (200, 200)) and me.slot_count == 102
    assert me.migrating == ((101, "bbb"),) and me.importing == ((300, "ccc"),)
    assert entries[2].master_id == "aaa" and entries[2].failing and not entries[2].is_master
    assert entries[3].failing and entries[3].port == 0


# -- placement --------------------------------------------------------------------------


def test_round_robin_zones_get_cross_zone_replicas() -> None:
    zones = zones_of("a", "b", "c", "a", "b", "c")
    layout = plan_layout(zones, 3, 1)
    assert sorted(layout.masters, key=pod_ordinal) == ["redis-cluster-0", "redis-cluster-1", "redis-cluster-2"]
    assert same_zone_pairs(layout, zones) == []
    assert sorted(r for rs in layout.replicas.values() for r in rs) == ["redis-cluster-3", "redis-cluster-4", "redis-cluster-5"]


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
    [(("a", "b", "c"), 3, 1), (("a", "b", "c"), 3, 2), (("a", "b"), 5, 1), (("a", "b", "c"), 10, 2), (("a", "b", "c"), 4, 1)],
)
def test_plans_have_no_same_zone_pair_and_cli_order_reproduces_them(zone_cycle: tuple, shards: int, replicas: int) -> None:
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
    attached = {"redis-cluster-3": "redis-cluster-1", "redis-cluster-4": "redis-cluster-2", "redis-cluster-5": "redis-cluster-0"}
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


# -- output shape from views (no Redis) -------------------------------------------------


def fake_cluster(kill: str = "") -> Cluster:
    nodes = [NodeAddress(f"redis-cluster-{i}", f"10.0.0.{i + 1}", 6379, "abc"[i % 3]) for i in range(6)]
    ids = [f"id{i}" for i in range(6)]
    slots = ["0-5460", "5461-10922", "10923-16383"]
    lines = []
    for i in range(6):
        role = "master" if i < 3 else "slave"
        master = "-" if i < 3 else ids[(i + 1) % 3]
        lines.append(f"{ids[i]} 10.0.0.{i + 1}:6379@16379 {role} {master} 0 0 1 connected {slots[i] if i < 3 else ''}".strip())
    views = []
    for i, node in enumerate(nodes):
        if node.pod == kill:
            views.append(NodeView(node, error="Connection refused"))
            continue
        text = "\n".join(
            line.replace(f" {('master' if j < 3 else 'slave')} ", f" myself,{('master' if j < 3 else 'slave')} ", 1) if j == i else line
            for j, line in enumerate(lines)
        )
        info = {"cluster_state": "ok", "cluster_known_nodes": "6", "cluster_slots_ok": str(SLOTS)}
        replication = {"role": "master"} if i < 3 else {"role": "slave", "master_link_status": "up"}
        views.append(NodeView(node, myid=ids[i], entries=parse_cluster_nodes(text), info=info, replication=replication))
    cluster = Cluster(transport=None, nodes=nodes)  # type: ignore[arg-type]
    cluster.views = views
    return cluster


def test_topology_output_shape() -> None:
    topology = fake_cluster().topology(3, 1)
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
    topology = fake_cluster(kill="redis-cluster-4").topology(3, 1)
    assert topology["state"] == "degraded"
    assert any("redis-cluster-4" in p and "unreachable" in p for p in topology["problems"])
    assert next(r for r in topology["replicas"] if r["pod"] == "redis-cluster-4")["status"] == "unreachable"


# -- a pod that lost its volume ---------------------------------------------------------


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


def test_a_pod_back_empty_under_a_new_id_is_recognised_by_its_old_id() -> None:
    assert lost_identities(cluster_after_volume_loss(), KNOWN_BEFORE) == {"old3": "redis-cluster-3"}
    noaddr = cluster_after_volume_loss(old_line="old3 :0@0 slave,noaddr id1 0 0 1 disconnected")
    assert lost_identities(noaddr, KNOWN_BEFORE) == {"old3": "redis-cluster-3"}


def test_the_outputs_keep_naming_the_old_id_until_the_members_forget_it() -> None:
    cluster = cluster_after_volume_loss()
    cluster._known_pods = dict(KNOWN_BEFORE)
    node_ids = cluster.topology(3, 1)["node_ids"]
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


def _with_own_line(cluster: Cluster, pod: str, line: str) -> Cluster:
    view = next(v for v in cluster.views if v.node.pod == pod)
    view.entries = [e for e in view.entries if e.id != view.myid] + parse_cluster_nodes(line)
    return cluster


def test_an_old_id_a_member_still_points_at_is_left_alone() -> None:
    # A member replicating the old ID: Redis would refuse to forget it, after the others.
    replica = _with_own_line(
        cluster_after_volume_loss(), "redis-cluster-4", "id4 10.0.0.5:6379@16379 myself,slave old3 0 0 1 connected"
    )
    assert lost_identities(replica, KNOWN_BEFORE) == {}
    # A slot half moved toward the old ID: forgetting would drop the open slot silently.
    migrating = _with_own_line(
        cluster_after_volume_loss(),
        "redis-cluster-0",
        "id0 10.0.0.1:6379@16379 myself,master - 0 0 1 connected 0-5460 [100->-old3]",
    )
    assert lost_identities(migrating, KNOWN_BEFORE) == {}


# -- provider inputs --------------------------------------------------------------------


def direct_props(**overrides: Any) -> dict[str, Any]:
    props = {
        "shards": 3,
        "replicas_per_shard": 1,
        "password": "secret-password-123",
        "transport": "direct",
        "nodes": [{"pod": f"redis-cluster-{i}", "host": f"127.0.20.{i + 1}", "port": 6379} for i in range(6)],
    }
    props.update(overrides)
    return props


def test_validate_inputs() -> None:
    assert cb.validate(direct_props()) == []
    assert [p for p, _ in cb.validate(direct_props(shards=2))] == ["shards"]
    assert [p for p, _ in cb.validate(direct_props(transport="ssh"))] == ["transport"]
    assert [p for p, _ in cb.validate(direct_props(shards=4))] == ["nodes"]
    assert [p for p, _ in cb.validate({**direct_props(), "transport": "kubernetes", "namespace": ""})] == [
        "namespace",
        "stateful_set_name",
    ]


def test_unknown_values_are_not_judged_during_preview() -> None:
    from pulumi.output import Unknown

    assert cb.validate(direct_props(shards=Unknown(), password=Unknown(), nodes=Unknown())) == []


def test_check_and_diff_refuse_scale_in_with_the_procedure() -> None:
    provider = cb.ClusterBootstrapProvider()
    checked = provider.check(direct_props(shards=4, nodes=direct_props()["nodes"] * 2), direct_props())
    assert [f.property for f in checked.failures] == ["shards"]
    assert "del-node" in checked.failures[0].reason and "acceptManualChange" in checked.failures[0].reason
    with pytest.raises(ValueError):
        provider.diff("id", direct_props(replicas_per_shard=2), direct_props())


def test_an_accepted_manual_change_lets_exactly_the_named_shape_through() -> None:
    provider = cb.ClusterBootstrapProvider()
    pods = [{"pod": f"redis-cluster-{i}", "host": f"127.0.20.{i + 1}", "port": 6379} for i in range(10)]
    five = direct_props(shards=5, nodes=pods)
    four = direct_props(shards=4, nodes=pods[:8])
    assert list(provider.check(five, {**four, "accept_manual_change": ["shards=4"]}).failures) == []
    assert provider.diff("id", {**five, "state": "ok"}, {**four, "accept_manual_change": ["shards=4"]}).changes is True
    # Left set after that change, the same value lets no further scale-in through.
    still_set = {**direct_props(), "accept_manual_change": ["shards=4"]}
    assert [f.property for f in provider.check(four, still_set).failures] == ["shards"]

    guard = cb.ClusterChangeGuardProvider()
    rotated = {"shards": 3, "replicas_per_shard": 1, "password": "a-new-password-0123456789"}
    olds = {"shards": 4, "replicas_per_shard": 1, "password": "the-old-password-0123456789"}
    assert [f.property for f in guard.check(olds, rotated).failures] == ["shards", "password"]
    assert [f.property for f in guard.check(olds, {**rotated, "accept_manual_change": ["password"]}).failures] == ["shards"]
    both = {**rotated, "accept_manual_change": ["shards=3", "password"]}
    assert list(guard.check(olds, both).failures) == []


def test_the_opt_in_alone_is_no_change_to_the_cluster() -> None:
    provider = cb.ClusterBootstrapProvider()
    olds = {key: value for key, value in direct_props().items() if key != "accept_manual_change"}
    news = direct_props(accept_manual_change=["shards=3"])
    assert provider.diff("id", {**olds, "state": "ok"}, news).changes is False


def test_diff_replaces_on_other_pods_and_updates_on_drift() -> None:
    provider = cb.ClusterBootstrapProvider()
    olds = {**direct_props(), "state": "ok"}
    assert provider.diff("id", olds, direct_props()).changes is False
    assert provider.diff("id", {**olds, "state": "degraded"}, direct_props()).changes is True
    grown = provider.diff("id", olds, direct_props(shards=4))
    assert grown.changes is True and grown.replaces == []
    moved = provider.diff("id", {**olds, "transport": "kubernetes"}, direct_props())
    assert moved.replaces == ["transport"]


def test_outputs_keep_secrets_wrapped() -> None:
    from pulumi.runtime import rpc

    outs = cb._outputs(direct_props(), {"state": "ok"})
    assert rpc.is_rpc_secret(outs["password"]) and outs["password"]["value"] == "secret-password-123"
    assert "secret-password-123" not in repr(cb.BootstrapSpec.from_props(direct_props()))


def test_a_broken_kubeconfig_is_not_quoted_in_the_error() -> None:
    spec = cb.BootstrapSpec.from_props(
        {**direct_props(), "transport": "kubernetes", "namespace": "redis", "stateful_set_name": "redis-cluster",
         "kubeconfig": "clusters: [ {token: very-secret-token"}
    )
    with pytest.raises(ValueError) as failed:
        cb.make_transport(spec)
    assert "very-secret-token" not in str(failed.value) and failed.value.__cause__ is None


def test_in_pod_argv_reads_the_password_inside_the_pod() -> None:
    argv = in_pod_redis_cli_argv(["--cluster", "create", "10.0.0.1:6379"])
    assert argv[:2] == ["sh", "-c"] and argv[3] == "/etc/redis-secret/password"
    assert argv[4:] == ["--cluster", "create", "10.0.0.1:6379"]


# -- how the engine loads it ------------------------------------------------------------


def test_module_imports_in_a_fresh_process_without_creating_resources() -> None:
    code = (
        "import sys, components.cluster_bootstrap as m;"
        "assert 'kubernetes' not in sys.modules, 'kubernetes is imported lazily';"
        "print(m.ClusterBootstrap.__name__, m.ClusterBootstrapProvider.__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ClusterBootstrap", "ClusterBootstrapProvider"]


def test_serialized_provider_loads_in_a_fresh_process() -> None:
    from pulumi.dynamic.dynamic import serialize_provider

    blob = serialize_provider(cb.ClusterBootstrapProvider())
    assert "secret-password" not in base64.b64decode(blob).decode("latin-1")
    code = (
        "import base64, sys, dill;"
        "p = dill.loads(base64.b64decode(sys.stdin.read()));"
        "print(type(p).__module__, type(p).__name__, p.check({}, {'shards': 2}).failures[0].property)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, input=blob, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["components.cluster_bootstrap", "ClusterBootstrapProvider", "shards"]


def test_resource_registers_secret_inputs_and_output_attributes() -> None:
    import pulumi

    registered: list[Any] = []

    class Mocks(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
            registered.append(args)
            return "id-1", {**args.inputs, "state": "ok", "node_count": 6}

        def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list]:
            return {}, []

    pulumi.runtime.set_mocks(Mocks(), preview=False)

    @pulumi.runtime.test
    def body() -> Any:
        resource = cb.ClusterBootstrap(
            "bootstrap",
            cb.ClusterBootstrapArgs(
                shards=3,
                replicas_per_shard=1,
                password="secret-password-123",
                transport="direct",
                nodes=direct_props()["nodes"],
            ),
        )

        async def inspect() -> None:
            assert await resource.state.future() == "ok"
            assert await resource.node_count.future() == 6
            assert await resource.password.is_secret()  # type: ignore[attr-defined]
            for name in ("masters", "replicas", "placement"):
                assert isinstance(getattr(resource, name), pulumi.Output)

        return inspect()

    body()
    assert registered[0].typ == "pulumi-python:dynamic/redis:ClusterBootstrap"
    assert registered[0].inputs["shards"] == 3
