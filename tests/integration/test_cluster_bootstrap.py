"""The cluster bootstrap provider, run the way the engine runs it: pickled with the SDK's
`serialize_provider`, served by `python -m pulumi.dynamic`, called over gRPC, against real
redis-server processes on loopback (the `nodes` fixture: the stack's redis.conf, through the
entrypoint, on locked addresses)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Iterator

import grpc
import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from cluster_logic import health
from cluster_logic.cluster import Cluster
from cluster_logic.deadline import Deadline
from cluster_logic.errors import BootstrapError
from cluster_logic.formation import correct_placement
from cluster_logic.migration import SlotMover
from cluster_logic.model import SLOTS, NodeAddress
from cluster_logic.observation import wait_ready
from cluster_logic.reconcile import ensure_cluster, read_topology
from cluster_logic.transports.base import CliResult
from cluster_logic.transports.direct import DirectTransport
from cluster_logic.transports.kubernetes_api import REQUEST_TIMEOUT, KubernetesTransport
from sandbox.engine_binaries import EngineBinaries
from sandbox.local_nodes import LocalNode
from testkit.local_core_api import LocalCoreV1
from testkit.provider_server import (
    ProviderServer,
    local_port_forward,
    plain_strings,
    secret,
    serialized_guard,
    serialized_provider,
)
from testkit.redis_nodes import (
    PASSWORD,
    LocalNodes,
    cli_environment,
    cluster_info,
    cluster_nodes,
    count_keys,
    create_cluster,
    role,
    wait_replicas_in_sync,
    wait_replicas_online,
)
from testkit.writers import Writer, lost_keys, write_keys

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server() -> Iterator[ProviderServer]:
    with ProviderServer() as running:
        yield running


@dataclass(frozen=True)
class ProviderUnderTest:
    """The pickled provider, and the engine whose CLI it is to run."""

    blob: str
    engine: str


@pytest.fixture(scope="module")
def provider_blob(engine: EngineBinaries) -> ProviderUnderTest:
    return ProviderUnderTest(serialized_provider(), engine.engine.name)


def props(
    provider_blob: ProviderUnderTest, nodes: list[dict[str, Any]], shards: int = 3, replicas: int = 1, **extra: Any
) -> dict:
    values = {
        "__provider": provider_blob.blob,
        "engine": provider_blob.engine,
        "shards": shards,
        "replicas_per_shard": replicas,
        "password": secret(PASSWORD),
        "transport": "direct",
        "nodes": nodes,
        "ready_timeout_seconds": 30,
    }
    values.update(extra)
    return values


def assert_no_plain_password(*messages: Any) -> None:
    for message in messages:
        if isinstance(message, str):
            assert PASSWORD not in message
            continue
        decoded = ProviderServer.from_struct(message)
        assert PASSWORD not in plain_strings(decoded), "password in plain text in a response"
        assert PASSWORD not in json.dumps(decoded["__provider"]) if "__provider" in decoded else True


def cluster_nodes_snapshot(nodes: LocalNodes) -> dict[str, Any]:
    """Per running node: what it knows of every node (ID, address, flags, slots, open
    slots) and how many keys it holds."""
    snapshot = {}
    for node in nodes.nodes:
        if node.is_running():
            entries = sorted(
                (e.id, e.host, e.port, sorted(e.flags), e.slots, e.migrating, e.importing) for e in cluster_nodes(node)
            )
            snapshot[node.pod] = (entries, node.client().dbsize())
    return snapshot


# ---------------------------------------------------------------------------------------


def test_create_adopt_read_and_delete_over_grpc(
    server: ProviderServer, provider_blob: ProviderUnderTest, nodes: LocalNodes
) -> None:
    nodes.started(6)
    inputs = props(provider_blob, nodes.inputs())
    checked = server.check({}, inputs)
    assert list(checked.failures) == []

    started = time.monotonic()
    created = server.create(ProviderServer.from_struct(checked.inputs))
    elapsed = time.monotonic() - started
    outs = ProviderServer.from_struct(created.properties, unwrap=True)
    assert outs["state"] == "ok", outs["problems"]
    assert outs["node_count"] == 6
    assert len(outs["masters"]) == 3 and len(outs["replicas"]) == 3
    assert sum(m["slot_count"] for m in outs["masters"]) == SLOTS
    assert all(r["link"] == "up" for r in outs["replicas"])
    assert outs["placement"]["zone_aware"] is True
    assert created.id.startswith("direct/")
    assert elapsed < 20
    # Every node agrees: state ok, 6 known, all slots, replicas linked.
    for node in nodes.nodes:
        info = node.client().execute_command("CLUSTER", "INFO")
        assert "cluster_state:ok" in info and "cluster_known_nodes:6" in info
    assert_no_plain_password(created.properties)
    raw = ProviderServer.from_struct(created.properties)
    assert raw["password"]["value"] == PASSWORD, "the password is kept, but only as a secret"

    # Same nodes again (as after lost state): adopted, nothing changes. The engine of a
    # provider that does not accept secrets sends them plain; outputs stay secret.
    before = cluster_nodes_snapshot(nodes)
    plain_inputs = dict(inputs, password=PASSWORD)
    again = server.create(plain_inputs)
    adopted = ProviderServer.from_struct(again.properties, unwrap=True)
    assert cluster_nodes_snapshot(nodes) == before
    assert [m["id"] for m in adopted["masters"]] == [m["id"] for m in outs["masters"]]
    assert ProviderServer.from_struct(again.properties)["password"]["value"] == PASSWORD
    assert_no_plain_password(again.properties)

    # No drift: diff against the same inputs finds no change.
    state = ProviderServer.from_struct(created.properties)
    assert server.diff(created.id, state, inputs).changes == 1  # DIFF_NONE

    # Refresh after a replica dies: the read shows it, and the diff then wants an update.
    victim = nodes.by_pod(outs["replicas"][0]["pod"])
    client = RedisCluster(startup_nodes=[ClusterNode(nodes.nodes[0].ip, 6379)], password=PASSWORD)
    client.set("survives-delete", "yes")
    client.close()
    victim.kill()
    read = server.read(created.id, state)
    live = ProviderServer.from_struct(read.properties, unwrap=True)
    assert live["state"] == "degraded"
    assert any(victim.pod in p for p in live["problems"]), live["problems"]
    lost = next(r for r in live["replicas"] if r["pod"] == victim.pod)
    assert lost["status"] == "unreachable"
    assert_no_plain_password(read.properties)
    assert server.diff(created.id, ProviderServer.from_struct(read.properties), inputs).changes == 2  # DIFF_SOME

    # Delete forgets: nodes keep their cluster and their data.
    before = cluster_nodes_snapshot(nodes)
    server.delete(created.id, ProviderServer.from_struct(read.properties))
    assert cluster_nodes_snapshot(nodes) == before
    assert count_keys(nodes.nodes) == 1


def test_replicas_land_in_other_zones_than_redis_cli_would_choose(
    server: ProviderServer, provider_blob: ProviderUnderTest, nodes: LocalNodes
) -> None:
    # In ordinal order redis-cli would make 0,1,2 masters and give them 4,5,3: all three
    # in their master's zone with these zones (see the unit test that replays its rule).
    zones = ["zone-a", "zone-b", "zone-c", "zone-c", "zone-a", "zone-b"]
    nodes.started(6)
    for node, zone in zip(nodes.nodes, zones):
        nodes.zones[node.pod] = zone
    created = server.create(props(provider_blob, nodes.inputs()))
    outs = ProviderServer.from_struct(created.properties, unwrap=True)
    assert outs["placement"]["replicas_in_master_zone"] == []
    zone_of = dict(zip((n.pod for n in nodes.nodes), zones))
    for replica in outs["replicas"]:
        assert zone_of[replica["pod"]] != zone_of[replica["master"]]


def test_replicate_corrects_a_same_zone_layout(nodes: LocalNodes) -> None:
    """The correction path: a cluster laid out by a bare redis-cli (replicas in their
    master's zone) is fixed with CLUSTER REPLICATE, moving replicas only."""
    zones = ["zone-a", "zone-b", "zone-c", "zone-c", "zone-a", "zone-b"]
    nodes.started(6)
    for node, zone in zip(nodes.nodes, zones):
        nodes.zones[node.pod] = zone
    # A bare `redis-cli --cluster create` in ordinal order.
    create_cluster(nodes.nodes, replicas_per_shard=1)
    with nodes.transport() as transport:
        cluster = Cluster(transport, transport.nodes)
        health.wait_converged(cluster, Deadline(30), 3, None)
        before = health.topology(cluster, 3, 1)
        assert len(before["placement"]["replicas_in_master_zone"]) == 3
        masters_before = [m["id"] for m in before["masters"]]
        correct_placement(cluster, 3, 1, Deadline(30))
        after = health.topology(cluster, 3, 1)
    assert after["state"] == "ok"
    assert after["placement"]["replicas_in_master_zone"] == []
    assert [m["id"] for m in after["masters"]] == masters_before


def test_non_empty_or_foreign_nodes_are_refused_untouched(
    server: ProviderServer, provider_blob: ProviderUnderTest, nodes: LocalNodes
) -> None:
    nodes.started(7)
    ours, outsider = nodes.nodes[:6], nodes.nodes[6]
    inputs = props(provider_blob, nodes.inputs(ours))

    # One node holds keys (it was given all slots and written to).
    loaded = ours[2].client()
    loaded.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, SLOTS - 1)
    deadline = time.monotonic() + 10
    while "cluster_state:ok" not in loaded.execute_command("CLUSTER", "INFO") and time.monotonic() < deadline:
        time.sleep(0.05)
    loaded.set("precious", "data")
    before = cluster_nodes_snapshot(nodes)
    with pytest.raises(grpc.RpcError) as refused:
        server.create(inputs)
    message = refused.value.details()
    assert "redis-cluster-2" in message and "keys" in message
    assert_no_plain_password(message)
    assert cluster_nodes_snapshot(nodes) == before
    assert loaded.get("precious") == "data"

    # Another node belongs to a cluster with a node that is not ours.
    ours[4].client().execute_command("CLUSTER", "MEET", outsider.ip, outsider.port)
    deadline = time.monotonic() + 10
    while not all(
        not any("handshake" in e.flags for e in cluster_nodes(n)) and cluster_info(n)["cluster_known_nodes"] == "2"
        for n in (ours[4], outsider)
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    before = cluster_nodes_snapshot(nodes)
    with pytest.raises(grpc.RpcError) as foreign:
        server.create(inputs)
    assert "redis-cluster-4" in foreign.value.details() and "another cluster" in foreign.value.details()
    assert cluster_nodes_snapshot(nodes) == before


def test_a_pod_that_never_gets_ready_times_out_naming_it(
    server: ProviderServer, provider_blob: ProviderUnderTest, nodes: LocalNodes
) -> None:
    nodes.started(5)
    # The sixth pod's address is locked for it, but nothing listens there.
    inputs = nodes.inputs() + [
        {"pod": "redis-cluster-5", "host": nodes.loopback.allocate(), "port": 6379, "zone": "zone-c"}
    ]
    before = cluster_nodes_snapshot(nodes)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as timed_out:
        server.create(props(provider_blob, inputs, ready_timeout_seconds=2))
    assert time.monotonic() - started < 15
    message = timed_out.value.details()
    assert "timed out after 2s" in message and "redis-cluster-5" in message
    assert "redis-cluster-4" not in message.split("Ready:")[-1]
    assert_no_plain_password(message)
    assert cluster_nodes_snapshot(nodes) == before


def test_scale_out_under_load_and_the_bootstrap_alone_never_shrinks(
    server: ProviderServer, provider_blob: ProviderUnderTest, nodes: LocalNodes
) -> None:
    nodes.started(8)
    six = props(provider_blob, nodes.inputs(nodes.nodes[:6]))
    created = server.create(six)
    state = ProviderServer.from_struct(created.properties)

    client = RedisCluster(startup_nodes=[ClusterNode(nodes.nodes[0].ip, 6379)], password=PASSWORD)
    write_keys(client, "pre", 20000)

    # Distinct keys as fast as they go; redis-py 8.1 cannot follow an ASK to a master that
    # holds no slot yet (see `Writer`): those are retried apart, every other error counts.
    writer = Writer(
        RedisCluster(startup_nodes=[ClusterNode(nodes.nodes[1].ip, 6379)], password=PASSWORD),
        "live",
        pace=0,
        retry_ask_to_slotless_master=True,
    ).start()
    try:
        writer.wait_acknowledged(100, timeout=30)
        eight = props(provider_blob, nodes.inputs(), shards=4)
        assert list(server.check(six, eight).failures) == []
        assert server.diff(created.id, state, eight).changes == 2
        updated = server.update(created.id, state, eight)
        # The writer goes on against the grown cluster.
        writer.wait_acknowledged(100, after=time.monotonic(), timeout=30)
    finally:
        writer.stop()
    acked = writer.acknowledged()
    outs = ProviderServer.from_struct(updated.properties, unwrap=True)
    assert outs["state"] == "ok", outs["problems"]
    assert len(outs["masters"]) == 4 and len(outs["replicas"]) == 4
    new_master = next(m for m in outs["masters"] if m["pod"] in ("redis-cluster-6", "redis-cluster-7"))
    assert abs(new_master["slot_count"] - SLOTS // 4) <= 1
    assert outs["placement"]["replicas_in_master_zone"] == []
    assert_no_plain_password(updated.properties)

    print(
        f"writer: {len(acked)} acknowledged writes during the update, "
        f"{writer.asks_to_slotless_master} redis-py ASK-to-slotless-master retries"
    )
    # Not one acknowledged write is lost; the preloaded keys are all there.
    assert len(acked) > 1000, "the writer should have been busy during the move"
    assert writer.failures() == [], writer.summary()
    values = client.mget_nonatomic(list(acked))
    assert [v.decode() if v else None for v in values] == list(acked.values())
    assert all(client.mget_nonatomic([f"pre:{i}" for i in range(20000)]))
    assert count_keys(nodes.nodes) >= 20000 + len(acked)

    # Fewer shards pass check: the scale-in step (ClusterScaleIn, before the StatefulSet)
    # drains the pods that go. The bootstrap alone never shrinks: with the two pods beyond
    # the smaller StatefulSet still members, holding slots, its update refuses and nothing moves.
    state = ProviderServer.from_struct(updated.properties)
    fewer = props(provider_blob, nodes.inputs(), shards=3)
    assert list(server.check(eight, fewer).failures) == []
    # The new replicas may still be loading their first sync, which would change their key
    # counts under the comparison below: nothing moves only once replication has settled.
    wait_replicas_online(nodes.nodes)
    wait_replicas_in_sync(nodes.nodes)
    before = cluster_nodes_snapshot(nodes)
    with pytest.raises(grpc.RpcError) as refused:
        server.update(created.id, state, fewer)
    assert "2 node(s) outside this StatefulSet" in refused.value.details()
    assert cluster_nodes_snapshot(nodes) == before

    # A shard drained and forgotten by hand (the CLI's rebalance and del-node) is adopted
    # as it stands: the smaller shape is the one asked for.
    leaving = {m["pod"]: m for m in outs["masters"] if m["pod"] in ("redis-cluster-6", "redis-cluster-7")}
    assert len(leaving) == 1, outs["masters"]
    (leaving_master,) = leaving.values()
    assert leaving_master["replicas"] == sorted({"redis-cluster-6", "redis-cluster-7"} - set(leaving)), outs
    cli_env = cli_environment(PASSWORD)
    entry = f"{nodes.nodes[0].ip}:6379"
    for argv in (
        ["rebalance", entry, "--cluster-weight", f"{leaving_master['id']}=0"],
        *(["del-node", entry, r["id"]] for r in outs["replicas"] if r["pod"] in ("redis-cluster-6", "redis-cluster-7")),
        ["del-node", entry, leaving_master["id"]],
    ):
        done = subprocess.run(
            [nodes.binaries.cli, "--cluster", *argv], env=cli_env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
    for node in nodes.nodes[6:]:
        node.kill()  # the StatefulSet removes the two pods
    six_again = props(provider_blob, nodes.inputs(nodes.nodes[:6]), shards=3)
    assert list(server.check(eight, six_again).failures) == []
    shrunk = server.update(created.id, state, six_again)
    final = ProviderServer.from_struct(shrunk.properties, unwrap=True)
    assert final["state"] == "ok", final["problems"]
    assert len(final["masters"]) == 3 and len(final["replicas"]) == 3
    assert sum(m["slot_count"] for m in final["masters"]) == SLOTS
    assert count_keys(nodes.nodes[:6]) >= 20000 + len(acked)
    client.close()
    client = RedisCluster(startup_nodes=[ClusterNode(nodes.nodes[0].ip, 6379)], password=PASSWORD)
    assert all(client.mget_nonatomic([f"pre:{i}" for i in range(20000)]))
    values = client.mget_nonatomic(list(acked))
    assert [v.decode() if v else None for v in values] == list(acked.values())
    client.close()


def test_a_pod_that_lost_its_volume_joins_again_on_update(
    server: ProviderServer, provider_blob: ProviderUnderTest, nodes: LocalNodes
) -> None:
    nodes.started(6)
    inputs = props(provider_blob, nodes.inputs())
    created = server.create(inputs)
    outs = ProviderServer.from_struct(created.properties, unwrap=True)
    client = RedisCluster(startup_nodes=[ClusterNode(nodes.nodes[0].ip, 6379)], password=PASSWORD)
    write_keys(client, "kept", 5000)
    client.close()
    wait_replicas_in_sync(nodes.nodes)

    # A master's pod is rescheduled with an empty volume: its replica takes over, and
    # the pod comes back on a new IP as a fresh node under a new ID.
    lost_master = outs["masters"][0]
    pod, old_id = nodes.by_pod(lost_master["pod"]), lost_master["id"]
    successor = nodes.by_pod(lost_master["replicas"][0])
    pod.kill()
    deadline = time.monotonic() + 30
    while role(successor) != "master":
        assert time.monotonic() < deadline, "the replica never took over"
        time.sleep(0.2)
    shutil.rmtree(pod.paths.data_dir)  # the lost volume: the pod starts as an empty node
    pod.ip = nodes.loopback.allocate()
    pod.start()

    news = props(provider_blob, nodes.inputs())
    read = server.read(created.id, ProviderServer.from_struct(created.properties))
    assert ProviderServer.from_struct(read.properties, unwrap=True)["state"] != "ok"
    state = ProviderServer.from_struct(read.properties)
    # DIFF_SOME from the drift alone (the same inputs as at create), so refresh + up repairs.
    assert server.diff(created.id, state, inputs).changes == 2
    # A create (lost state: nothing names the old ID) still refuses, and says what to do.
    before = cluster_nodes_snapshot(nodes)
    with pytest.raises(grpc.RpcError) as refused:
        server.create(news)
    assert "lost its volume" in refused.value.details()
    assert cluster_nodes_snapshot(nodes) == before
    updated = server.update(created.id, state, news)

    after = ProviderServer.from_struct(updated.properties, unwrap=True)
    assert after["state"] == "ok", after["problems"]
    assert len(after["masters"]) == 3 and len(after["replicas"]) == 3
    rejoined = next(r for r in after["replicas"] if r["pod"] == pod.pod)
    assert rejoined["id"] != old_id and rejoined["master"] == successor.pod
    for node in nodes.nodes:
        listed = cluster_nodes(node)
        assert all(old_id not in (e.id, e.master_id) for e in listed), f"{node.pod} still lists the old ID"
    assert count_keys(nodes.nodes) == 5000
    assert_no_plain_password(updated.properties)


# ---------------------------------------------------------------------------------------
# The Kubernetes transport against the same real nodes: a fake CoreV1Api, redis-cli run
# locally with the very argv the pod would get, port-forward replaced by a local socket.
# ---------------------------------------------------------------------------------------


def test_kubernetes_transport_forms_a_cluster_through_exec_and_port_forward(nodes: LocalNodes) -> None:
    nodes.started(6)
    with tempfile.TemporaryDirectory() as tmp:
        secret_file = os.path.join(tmp, "password")
        with open(secret_file, "w") as handle:
            handle.write(PASSWORD)
        execs: list[tuple] = []

        def exec_locally(namespace: str, pod: str, container: str, argv: list[str], timeout: float) -> CliResult:
            execs.append((namespace, pod, container, list(argv)))
            # The very argv the pod would run; only the environment lacks the password.
            env = {k: v for k, v in os.environ.items() if k not in ("REDISCLI_AUTH", "VALKEYCLI_AUTH")}
            env["PATH"] = nodes.binaries.search_path()
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
            return CliResult(done.returncode, done.stdout, done.stderr)

        api = LocalCoreV1(nodes, "redis")
        transport = KubernetesTransport(
            core_api=api,
            namespace="redis",
            stateful_set_name="redis-cluster",
            pod_selector="app.kubernetes.io/name=redis-cluster",
            password=PASSWORD,
            secret_file=secret_file,
            exec_function=exec_locally,
            cli=nodes.binaries.engine.cli,
            port_forward=local_port_forward({n.pod: (n.ip, n.port) for n in nodes.nodes}),
        )
        with transport:
            topology = ensure_cluster(transport, 3, 1, 30)
            assert topology["state"] == "ok"
            assert topology["placement"]["zone_aware"] is True
            assert {m["zone"] for m in topology["masters"]} == {"zone-a", "zone-b", "zone-c"}
            again = read_topology(transport, 3, 1)
            assert again["state"] == "ok" and again["masters"] == topology["masters"]

        assert len(execs) == 1
        namespace, pod, container, argv = execs[0]
        assert (namespace, pod, container) == ("redis", "redis-cluster-0", "redis")
        assert argv[:2] == ["sh", "-c"] and argv[3] == secret_file
        assert "--cluster" in argv and "create" in argv and "--cluster-yes" in argv
        assert all(PASSWORD not in part for part in argv)
        assert ("list_namespaced_pod", "redis", "app.kubernetes.io/name=redis-cluster", REQUEST_TIMEOUT) in api.calls
        assert ("read_node", "ip-zone-a", REQUEST_TIMEOUT) in api.calls


def test_kubernetes_pending_pod_times_out_naming_it(nodes: LocalNodes) -> None:
    nodes.started(6)
    api = LocalCoreV1(nodes, "redis", not_ready={"redis-cluster-4"})
    transport = KubernetesTransport(
        core_api=api,
        namespace="redis",
        stateful_set_name="redis-cluster",
        password=PASSWORD,
        exec_function=lambda *a: pytest.fail("must not run redis-cli before all pods are ready"),
        port_forward=local_port_forward({n.pod: (n.ip, n.port) for n in nodes.nodes}),
    )
    transport.poll_interval = 0.1
    with pytest.raises(BootstrapError) as timed_out:
        ensure_cluster(transport, 3, 1, 1)
    assert "redis-cluster-4 (phase Pending)" in str(timed_out.value)


def test_direct_transport_missing_node_is_named_immediately() -> None:
    transport = DirectTransport([{"pod": "redis-cluster-0", "host": "127.0.28.1"}], PASSWORD)
    with pytest.raises(BootstrapError) as missing:
        wait_ready(transport, 6, Deadline(30))
    assert "redis-cluster-1" in str(missing.value)


def test_node_address_endpoint() -> None:
    assert NodeAddress("redis-cluster-3", "127.0.0.1", 6380).endpoint == "127.0.0.1:6380"


def test_busy_keys_are_never_overwritten_and_an_open_slot_is_resumed(nodes: LocalNodes) -> None:
    from redis.crc import key_slot

    nodes.started(6)
    with nodes.transport() as transport:
        ensure_cluster(transport, 3, 1, 30)
        cluster = Cluster(transport, transport.nodes)
        cluster.refresh()
        slot = key_slot(b"busy")
        pods = cluster.pod_of_id()
        by_pod = {n.pod: n for n in transport.nodes}
        masters = [e for e in cluster.reference_entries() if e.is_master]
        owner = next(e for e in masters if any(a <= slot <= b for a, b in e.slots))
        other = next(e for e in masters if e.id != owner.id)
        source, target = by_pod[pods[owner.id]], by_pod[pods[other.id]]

        client = RedisCluster(startup_nodes=[ClusterNode(source.host, 6379)], password=PASSWORD)
        client.set("busy", "mine")
        client.set("{busy}2", "only-on-source")
        # A leftover copy of "busy" with another value on the target, as a crashed
        # migration by hand could leave it.
        dst = transport.client(target)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", owner.id)
        pipe = dst.pipeline(transaction=False)
        pipe.execute_command("ASKING")
        pipe.execute_command("SET", "busy", "theirs")
        pipe.execute()

        mover = SlotMover(transport, {by_pod[pods[e.id]]: e.id for e in masters}, [by_pod[pods[e.id]] for e in masters])
        with pytest.raises(BootstrapError) as refused:
            mover.move_round([slot], source, target)
        assert f"slot {slot}" in str(refused.value) and "different values" in str(refused.value)
        assert PASSWORD not in str(refused.value)
        assert transport.client(source).get("busy") == b"mine", "the source copy is kept"
        assert client.get("busy") == b"mine" and client.get("{busy}2") == b"only-on-source"

        # Same value on both sides: the update resumes the open slot, replacing only the
        # identical copy.
        pipe = dst.pipeline(transaction=False)
        pipe.execute_command("ASKING")
        pipe.execute_command("SET", "busy", "mine")
        pipe.execute()
        topology = ensure_cluster(transport, 3, 1, 30, mode="update")
        assert topology["state"] == "ok", topology["problems"]
        new_owner = next(m for m in topology["masters"] if m["id"] == other.id)
        owned = {s for r in new_owner["slots"] for s in range(int(r.split("-")[0]), int(r.split("-")[-1]) + 1)}
        assert slot in owned
        assert client.get("busy") == b"mine" and client.get("{busy}2") == b"only-on-source"
        assert count_keys(nodes.nodes) == 2
        client.close()


def test_slots_move_atomically_where_the_engine_can(nodes: LocalNodes) -> None:
    """Valkey 9 streams plain slots itself (CLUSTER MIGRATESLOTS); Redis has no such command
    and moves them key by key. Either way every key arrives and the target owns the slots."""
    nodes.started(6)
    with nodes.transport() as transport:
        ensure_cluster(transport, 3, 1, 30)
        client = RedisCluster(
            startup_nodes=[ClusterNode(nodes.nodes[0].ip, 6379)], password=PASSWORD, decode_responses=True
        )
        written = write_keys(client, "atomic", 3000)
        cluster = Cluster(transport, transport.nodes)
        cluster.refresh()
        pods, by_pod = cluster.pod_of_id(), {n.pod: n for n in transport.nodes}
        masters = sorted((e for e in cluster.reference_entries() if e.is_master), key=lambda e: e.slots[0][0])
        source, target = by_pod[pods[masters[0].id]], by_pod[pods[masters[1].id]]
        moving = list(range(0, 300))
        mover = SlotMover(transport, {by_pod[pods[e.id]]: e.id for e in masters}, [by_pod[pods[e.id]] for e in masters])
        mover.move_all([(source, target, moving)])

        in_moved = sum(1 for key in written if key_slot(key.encode()) < 300)
        assert mover.moved_keys == in_moved > 0
        health.wait_converged(cluster, Deadline(30), 3, None)
        owner = {e.id: e for e in cluster.reference_entries()}[masters[1].id]
        assert all(any(a <= slot <= b for a, b in owner.slots) for slot in moving)
        assert lost_keys(client, written) == []
        jobs = [str(job) for job in _slot_migrations(transport.client(source))]
        if nodes.binaries.engine.name == "valkey":
            assert len(jobs) == 1 and "EXPORT" in jobs[0] and "0-299" in jobs[0] and "success" in jobs[0], jobs
        else:
            assert jobs == [], "Redis has no atomic slot migration"
        client.close()


def _slot_migrations(client: Any) -> list:
    try:
        return list(client.execute_command("CLUSTER", "GETSLOTMIGRATIONS") or [])
    except redis.ResponseError:
        return []


# ---------------------------------------------------------------------------------------
# The change guard, ahead of the Secret and the StatefulSet.
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guard_blob() -> str:
    return serialized_guard()


def guard_props(blob: str, shards: int = 3, replicas: int = 1, password: str = PASSWORD, tls: bool = False) -> dict:
    return {
        "__provider": blob,
        "shards": shards,
        "replicas_per_shard": replicas,
        "password": secret(password),
        "tls": tls,
        "scale_in_step": True,
    }


def test_guard_lets_scaling_and_a_new_password_through_and_refuses_a_split(
    server: ProviderServer, guard_blob: str
) -> None:
    current = guard_props(guard_blob)
    created = server.create(ProviderServer.from_struct(server.check({}, current).inputs))
    state = ProviderServer.from_struct(created.properties)
    assert_no_plain_password(created.properties)

    assert list(server.check(state, guard_props(guard_blob, shards=4, replicas=2)).failures) == []
    assert server.diff(created.id, state, guard_props(guard_blob, shards=4)).changes == 2  # DIFF_SOME
    # Fewer shards or replicas: the scale-in step drains them first, so the guard lets them by.
    assert list(server.check(state, guard_props(guard_blob, shards=2, replicas=0)).failures) == []
    # A new password is rotated (CredentialRotation and the bootstrap), not refused.
    assert list(server.check(state, guard_props(guard_blob, password="Another-Password-0123456789")).failures) == []

    # TLS switched on a running stack would split the cluster half way through the roll.
    split = list(server.check(state, guard_props(guard_blob, tls=True)).failures)
    assert [f.property for f in split] == ["tls"]
    with pytest.raises(grpc.RpcError) as refused:
        server.update(created.id, state, guard_props(guard_blob, tls=True))
    assert "redis-eks:tls cannot change on a running stack" in refused.value.details()


def _meet_and_wait(first: LocalNode, second: LocalNode) -> None:
    """One MEET, as a `--cluster create` cut short leaves it: until both know each other."""
    first.client().execute_command("CLUSTER", "MEET", second.ip, second.port)
    deadline = time.monotonic() + 10
    while not all(cluster_info(n)["cluster_known_nodes"] == "2" for n in (first, second)):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_formation_that_died_half_way_is_started_over(
    server: ProviderServer, provider_blob: ProviderUnderTest, nodes: LocalNodes
) -> None:
    """What a `--cluster create` killed mid-way leaves: some slots assigned, some nodes met."""
    nodes.started(6)
    first, second = nodes.nodes[0].client(), nodes.nodes[1].client()
    first.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 5460)
    second.execute_command("CLUSTER", "ADDSLOTSRANGE", 5461, 10922)
    _meet_and_wait(nodes.nodes[0], nodes.nodes[1])

    created = server.create(props(provider_blob, nodes.inputs()))
    outs = ProviderServer.from_struct(created.properties, unwrap=True)
    assert outs["state"] == "ok"
    assert len(outs["masters"]) == 3 and len(outs["replicas"]) == 3
    for node in nodes.nodes:
        info = node.client().execute_command("CLUSTER", "INFO")
        assert "cluster_state:ok" in info and "cluster_known_nodes:6" in info


def test_a_half_formed_cluster_holding_a_key_is_left_alone(
    server: ProviderServer, provider_blob: ProviderUnderTest, nodes: LocalNodes
) -> None:
    nodes.started(6)
    first = nodes.nodes[0].client()
    first.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 5460)
    _meet_and_wait(nodes.nodes[0], nodes.nodes[1])
    # Serving its slots without full coverage, the node takes a write meanwhile.
    first.config_set("cluster-require-full-coverage", "no")
    key = next(f"k{i}" for i in range(100000) if key_slot(f"k{i}".encode()) <= 5460)
    deadline = time.monotonic() + 10
    while "cluster_state:ok" not in first.execute_command("CLUSTER", "INFO"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.set(key, "kept")
    before = cluster_nodes_snapshot(nodes)
    with pytest.raises(grpc.RpcError):
        server.create(props(provider_blob, nodes.inputs()))
    assert cluster_nodes_snapshot(nodes) == before
    assert first.get(key) == "kept"


def test_a_shard_split_by_a_partition_mid_move_is_merged_by_the_next_update(nodes: LocalNodes) -> None:
    """What a partition in the middle of a slot move can leave (Valkey's atomic migration cut
    off under durability=bounded did): a master and the replica that left it both holding
    slots, five masters for four shards, all on the StatefulSet's pods. The next update
    merges the smaller into the others, as a scale-in would, and loses no key."""
    nodes.started(8)
    with nodes.transport() as transport:
        ensure_cluster(transport, 4, 1, 60)
        client = RedisCluster(
            startup_nodes=[ClusterNode(nodes.nodes[0].ip, 6379)], password=PASSWORD, decode_responses=True
        )
        written = write_keys(client, "split", 8000)
        cluster = Cluster(transport, transport.nodes)
        cluster.refresh()
        pods, by_pod = cluster.pod_of_id(), {n.pod: n for n in transport.nodes}
        entries = cluster.reference_entries()
        master = next(e for e in entries if e.is_master and e.slots)
        leaver = next(e for e in entries if not e.is_master and e.master_id == master.id)
        # The replica leaves its master: an empty master of its own (a replica's data goes
        # with a reset), met again, then given part of its old master's slots with the keys.
        transport.client(by_pod[pods[leaver.id]]).execute_command("CLUSTER", "RESET", "SOFT")
        transport.client(by_pod[pods[master.id]]).execute_command("CLUSTER", "MEET", by_pod[pods[leaver.id]].host, 6379)
        deadline = time.monotonic() + 20
        while True:
            cluster.refresh()
            seen = {e.id: e for e in cluster.reference_entries()}
            leaver_info = transport.client(by_pod[pods[leaver.id]]).execute_command("CLUSTER", "INFO")
            if "cluster_state:ok" in str(leaver_info) and all(
                len(v.entries) == 8 and any(e.id == leaver.id and e.is_master for e in v.entries) for v in cluster.views
            ):
                break
            assert time.monotonic() < deadline, "the reset replica was never known again as a master"
            time.sleep(0.2)
        first, last = master.slots[0]
        moving = list(range(first, first + (last - first) // 3))
        masters = [by_pod[pods[e.id]] for e in seen.values() if e.is_master]
        mover = SlotMover(transport, {by_pod[pods[i]]: i for i in seen if pods.get(i)}, masters)
        mover.move_all([(by_pod[pods[master.id]], by_pod[pods[leaver.id]], moving)])
        cluster.refresh()
        holding = [e for e in cluster.reference_entries() if e.is_master and e.slots]
        assert len(holding) == 5

        topology = ensure_cluster(transport, 4, 1, 120, mode="update")
    assert topology["state"] == "ok", topology["problems"]
    assert len(topology["masters"]) == 4 and len(topology["replicas"]) == 4
    assert sum(m["slot_count"] for m in topology["masters"]) == SLOTS
    assert lost_keys(client, written) == []
    client.close()
