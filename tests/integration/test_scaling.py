"""Scaling the sandbox (the dev stack's files, the bootstrap's own code) in and out under a
writer, on the engine under test: what one `pulumi up` does, as `sandbox up` runs it.

Each test builds its own `Sandbox` on 127.0.7x.0/24 and stops every process it started, by
pid (`make_sandbox`, tests/integration/conftest.py).

What is proven:
* 3 -> 4 -> 3 shards with 100,000 keys: no key and no acknowledged write is lost, the pods
  that go hold nothing and are forgotten, their data directories stay; 3 -> 4 again brings
  them back on those directories as new, empty nodes (the cluster had forgotten them).
* 2 -> 1 replicas per shard: the same, no slot moves.
* a scale-in the masters that stay cannot hold is refused with the numbers, and changes
  nothing.
* a scale-in cut short (the `up` process dies after the first slots moved) is finished by
  the next `up`, nothing lost.
* the scale-in step's provider, served by `python -m pulumi.dynamic` and called over gRPC as
  the engine calls it: its check shows the plan (the preview), its update runs it and names
  the claims the StatefulSet keeps.
"""

from __future__ import annotations

import threading
import time

import pytest

from cluster_logic.errors import BootstrapError
from cluster_logic.migration import SlotMover
from testkit.provider_server import ProviderServer, secret, serialized_scale_in
from testkit.sandbox_support import cluster_client, masters, node_client, snapshot, stop_pod, wait_healthy
from testkit.writers import Writer, lost_keys, write_keys

pytestmark = pytest.mark.integration

# 127.0.<octet>.0/24 per test; this suite owns 74..78.
SCALE_IN_OUT, REPLICAS_IN, MEMORY_REFUSED, SCALE_IN_CUT, OVER_GRPC = range(74, 79)


def _assert_nothing_lost(sandbox, expected: dict[str, str], what: str) -> None:
    assert expected, f"no {what} to check: the test proves nothing"
    with cluster_client(sandbox) as client:
        lost = lost_keys(client, expected)
    assert not lost, f"{len(lost)} of {len(expected)} {what} lost, e.g. {lost[:10]}"


def _ids_everyone_knows(sandbox) -> set[str]:
    state = sandbox.load()
    known = set()
    for record in state.nodes:
        client = node_client(state, record)
        try:
            known |= {line.split()[0] for line in client.execute_command("CLUSTER", "NODES").splitlines()}
        finally:
            client.close()
    return known


def test_three_to_four_to_three_shards_under_writes_loses_nothing(make_sandbox):
    sb = make_sandbox(SCALE_IN_OUT).sandbox
    sb.up()
    with cluster_client(sb) as client:
        keys = write_keys(client, "k", 100_000)
    with Writer(cluster_client(sb), "w", retry_ask_to_slotless_master=True) as writer:
        writer.wait_acknowledged(50)
        sb.up(shards=4)
        grown = snapshot(sb)
        writer.wait_acknowledged(50, after=time.monotonic())
        # Four even shards, a replica each; a plain `up` keeps the shape the sandbox runs
        # instead of asking for the first one.
        owners = {p: f for p, f in grown.items() if f.role == "master" and f.slots}
        counts = sorted(sum(b - a + 1 for a, b in f.slots) for f in owners.values())
        assert len(owners) == 4 and all(abs(c - 4096) <= 0.02 * 4096 for c in counts), counts
        assert sorted(sum(1 for f in grown.values() if f.master_id == m.id) for m in owners.values()) == [1] * 4
        again = sb.up()
        assert len(again["masters"]) == 4 and len(again["replicas"]) == 4
        topology = sb.up(shards=3)
        writer.wait_acknowledged(50, after=time.monotonic())
    print(writer.summary())

    assert topology["state"] == "ok", topology["problems"]
    state = sb.load()
    assert [r.pod for r in state.nodes] == [f"redis-cluster-{i}" for i in range(6)]
    gone = {"redis-cluster-6", "redis-cluster-7"}
    assert set(topology["retained_volumes"]) == gone
    assert all((sb.root / "nodes" / pod / "data" / "nodes.conf").exists() for pod in gone)
    # The pods that went are forgotten everywhere.
    assert not {grown[pod].id for pod in gone} & _ids_everyone_knows(sb)
    facts = masters(sb)
    assert len(facts) == 3 and sum(b - a + 1 for f in facts.values() for a, b in f.slots) == 16384
    _assert_nothing_lost(sb, keys, "keys")
    _assert_nothing_lost(sb, writer.acknowledged(), "acknowledged writes")

    # Out again: the pods come back on their retained directories, which the cluster has
    # forgotten: they start empty (their files set aside) and join as new nodes.
    topology = sb.up(shards=4)
    assert topology["state"] == "ok", topology["problems"]
    again = snapshot(sb)
    assert all(again[pod].id != grown[pod].id for pod in gone)
    assert all(any((sb.root / "nodes" / pod / "data" / "lost-identity").iterdir()) for pod in gone)
    _assert_nothing_lost(sb, keys, "keys")


def test_two_to_one_replicas_per_shard_moves_no_slot_and_loses_nothing(make_sandbox):
    sb = make_sandbox(REPLICAS_IN).sandbox
    sb.up(replicas_per_shard=2)
    with cluster_client(sb) as client:
        keys = write_keys(client, "k", 20_000)
    before = {p: f.slots for p, f in masters(sb).items()}
    with Writer(cluster_client(sb), "w") as writer:
        writer.wait_acknowledged(50)
        topology = sb.up(replicas_per_shard=1)
        writer.wait_acknowledged(50, after=time.monotonic())
    assert topology["state"] == "ok", topology["problems"]
    assert len(sb.load().nodes) == 6
    after = {p: f.slots for p, f in masters(sb).items()}
    # Masters on the pods that stay keep their slots as they were.
    assert {p: s for p, s in after.items() if p in before} == {p: s for p, s in before.items() if p in after}
    assert sorted(r["master"] for r in topology["replicas"]) == sorted(after), topology["replicas"]
    _assert_nothing_lost(sb, keys, "keys")
    _assert_nothing_lost(sb, writer.acknowledged(), "acknowledged writes")


def test_a_scale_in_the_masters_that_stay_cannot_hold_is_refused_and_changes_nothing(make_sandbox):
    sb = make_sandbox(MEMORY_REFUSED).sandbox
    sb.up(shards=4)
    with cluster_client(sb) as client:
        keys = write_keys(client, "k", 20_000)
    state = sb.load()
    # A tight maxmemory on every master: the data fits on four, not on three.
    for record in state.nodes:
        client = node_client(state, record)
        try:
            used = int(client.info("memory")["used_memory_dataset"])
            client.config_set("maxmemory", str(int(used / 0.8 * 1.2)))
        finally:
            client.close()
    before = snapshot(sb)
    state_file = sb.state_path.read_text()
    with pytest.raises(BootstrapError) as refused:
        sb.up(shards=3)
    message = str(refused.value)
    print(message)
    assert "cannot take the keys" in message and "MiB" in message and "nothing was changed" in message
    assert snapshot(sb) == before and sb.state_path.read_text() == state_file
    _assert_nothing_lost(sb, keys, "keys")


def test_a_scale_in_cut_short_is_finished_by_the_next_up(make_sandbox, monkeypatch):
    sb = make_sandbox(SCALE_IN_CUT).sandbox
    sb.up(shards=4)
    with cluster_client(sb) as client:
        keys = write_keys(client, "k", 20_000)

    class Cut(Exception):
        """Stands in for the `up` process dying."""

    moved: list[int] = []
    first_done, lock = threading.Event(), threading.Lock()
    drain, atomic = SlotMover._drain, SlotMover.move_atomically

    def once_then_die(original):
        # The first unit of work (a round, or an atomic job) finishes; every other one, in
        # any thread, dies once it has.
        def unit(mover, slots, source, target):
            with lock:
                first = not moved and not first_done.is_set() and not getattr(unit, "taken", False)
                unit.taken = True
            if not first:
                first_done.wait(60)
                raise Cut()
            try:
                result = original(mover, slots, source, target)
                moved.append(len(slots))
                return result
            finally:
                first_done.set()

        return unit

    monkeypatch.setattr(SlotMover, "_drain", once_then_die(drain))
    monkeypatch.setattr(SlotMover, "move_atomically", once_then_die(atomic))
    with Writer(cluster_client(sb), "w") as writer:
        writer.wait_acknowledged(50)
        with pytest.raises((Cut, BootstrapError)):
            sb.up(shards=3)
        monkeypatch.undo()
        assert moved, "the scale-in was cut before it moved anything"
        topology = sb.up(shards=3)
        writer.wait_acknowledged(50, after=time.monotonic())
    assert topology["state"] == "ok", topology["problems"]
    wait_healthy(sb)
    assert len(masters(sb)) == 3
    _assert_nothing_lost(sb, keys, "keys")
    _assert_nothing_lost(sb, writer.acknowledged(), "acknowledged writes")


def test_the_scale_in_provider_over_grpc_shows_the_plan_then_runs_it(make_sandbox, engine):
    sb = make_sandbox(OVER_GRPC).sandbox
    sb.up(shards=4)
    with cluster_client(sb) as client:
        keys = write_keys(client, "k", 20_000)
    state = sb.load()
    # The pods as the direct transport takes them: all eight still run while the step runs.
    nodes = [{"pod": r.pod, "host": r.host, "port": r.port, "zone": r.zone} for r in state.nodes]

    def props(shards: int) -> dict:
        return {
            "__provider": serialized_scale_in(),
            "engine": engine.engine.name,
            "shards": shards,
            "replicas_per_shard": 1,
            "password": secret(state.password),
            "transport": "direct",
            "nodes": nodes,
            "stateful_set_name": "redis-cluster",
            "ready_timeout_seconds": 120,
        }

    with ProviderServer() as server:
        created = ProviderServer.from_struct(server.create(props(4)).properties)
        checked = server.check(created, props(3))
        assert not checked.failures, checked.failures
        news = ProviderServer.from_struct(checked.inputs)
        plan = news["plan"]
        print("\n".join(plan))
        assert plan[-1] == "forget redis-cluster-6, redis-cluster-7"
        assert any(line.startswith("move ") for line in plan) or any("fail over" in line for line in plan)
        assert server.diff("cluster-scale-in", created, news).changes == 2  # DIFF_SOME
        updated = ProviderServer.from_struct(server.update("cluster-scale-in", created, news).properties, unwrap=True)
    assert updated["retained_claims"] == ["data-redis-cluster-6", "data-redis-cluster-7"]
    # What the StatefulSet then does: the two pods go.
    for record in state.nodes[6:]:
        stop_pod(sb, record.pod, prestop=True)
    stayed = {r.pod for r in state.nodes[:6]}
    facts = {p: f for p, f in snapshot(sb).items() if p in stayed}
    owners = [f for f in facts.values() if f.role == "master" and f.slots]
    assert len(owners) == 3 and sum(b - a + 1 for f in owners for a, b in f.slots) == 16384
    gone_ids = {f.id for p, f in snapshot(sb).items() if p not in stayed}
    assert not gone_ids & _ids_everyone_knows_of(sb, stayed)
    with cluster_client(sb) as client:
        assert not lost_keys(client, keys)


def _ids_everyone_knows_of(sandbox, pods: set[str]) -> set[str]:
    state = sandbox.load()
    known = set()
    for record in state.nodes:
        if record.pod not in pods:
            continue
        client = node_client(state, record)
        try:
            known |= {line.split()[0] for line in client.execute_command("CLUSTER", "NODES").splitlines()}
        finally:
            client.close()
    return known
