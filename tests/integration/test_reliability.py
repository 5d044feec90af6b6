"""Reliability of the sandbox cluster under failures, with the product's default settings
(the dev stack: cluster-node-timeout 2000 ms) and a client writing all along.

Each test builds its own `Sandbox` (the stack's rendered redis.conf and shipped scripts,
run through entrypoint.sh) on 127.0.4x.0/24 and stops every process it started, by pid,
whether it passes or fails (see `testkit.sandbox_support.ManagedSandbox`). Only outcomes are
asserted, never timings.

What is proven:
* kill -9 of a master: its replica takes over, no write acknowledged by `WAIT 1` is lost,
  and the writer gets through to those slots again without help; the dead pod comes back
  as a replica.
* every pod of one zone killed at once: the survivors serve all 16384 slots (replicas sit
  in other zones than their masters), nothing acknowledged by `WAIT 1` is lost, and the
  zone's pods rejoin when they come back.
* one pod restarted on a new IP: it is back with the same node ID at its new address,
  every node is ok and knows exactly the six nodes, nothing acknowledged is lost.
* every pod restarted at once on new IPs: the cluster heals on its own and every key is
  there; the same restart without peer recovery (empty peers file) stays down, and comes
  up once the peers file lists the pods again.
* rolling restart, highest ordinal first, one pod at a time, each step gated by the
  restarted pod's readiness probe alone (as the StatefulSet controller gates it): with the
  preStop handover, not one write fails for a client that follows redirects, and every
  master hands its slots to its replica on the way.
* `up` twice is a no-op; `up` after a crash in the middle of forming (simulated at each
  step of `redis-cli --cluster create`, and for real: the forming process SIGKILLed)
  converges, and never resets a node that may hold data (masters that were never
  introduced are introduced, keys and node IDs kept).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from redis.crc import key_slot

from cluster_logic.errors import BootstrapError
from cluster_logic.model import parse_cluster_nodes
from sandbox.local_cluster import SandboxError
from testkit.sandbox_support import (
    cluster_client,
    cluster_problems,
    fresh_addresses,
    masters,
    node_client,
    replica_of,
    slots_of,
    snapshot,
    start_pod,
    states_ok,
    stop_pod,
    wait_healthy,
    wait_ready,
)
from testkit.writers import Writer, lost_keys, write_keys
from tools.render_manifests import PROJECT_DIR

pytestmark = pytest.mark.integration

# 127.0.<octet>.0/24 per test; the suite owns 40..49 (the benchmark 50..59).
KILL, RESTART_ONE, RESTART_ALL, NO_PEER_RECOVERY, ROLLING, _, UP_TWICE, PARTIAL, KILLED_UP, ZONE = range(40, 50)
# Acknowledged writes a writer must have made before the failure it is there to see, and
# again after it.
WARM_UP_WRITES = 50


def _kill_under_writers(sb, pods: list[str], slots: set[int], durable_resumes: bool = True):
    """SIGKILLs `pods` (no preStop) while a plain and a `WAIT 1` writer run, and waits until
    the plain one (and the durable one, if asked) writes to `slots` again without help.
    Returns both writers, stopped, with when the kill started and when the pods were gone."""
    plain = Writer(cluster_client(sb), "plain").start()
    durable = Writer(cluster_client(sb), "durable", mode="wait").start()
    try:
        # Both writers under way, the durable one with WAIT-acknowledged writes to `slots`.
        plain.wait_acknowledged(WARM_UP_WRITES)
        durable.wait_acknowledged(WARM_UP_WRITES, slots=slots, durable=True)
        kill_started = time.monotonic()
        for pod in pods:
            sb.kill(pod)
        # From here the processes are gone: a write that starts later cannot reach them.
        killed_at = time.monotonic()
        if durable_resumes:
            durable.wait_for_success_after(killed_at, slots, timeout=60)
        resumed = plain.wait_for_success_after(killed_at, slots, timeout=60)
        # And the writes go on after that.
        plain.wait_acknowledged(WARM_UP_WRITES, after=resumed.ended)
    finally:
        plain.stop()
        durable.stop()
    print(plain.summary(), durable.summary(), sep="\n")
    return plain, durable, kill_started, killed_at


def _write_keys(sandbox, prefix: str, count: int) -> dict[str, str]:
    with cluster_client(sandbox) as client:
        return write_keys(client, prefix, count)


def _lost_keys(sandbox, expected: dict) -> list[str]:
    with cluster_client(sandbox) as client:
        return lost_keys(client, expected)


def _assert_nothing_lost(sandbox, expected: dict, what: str) -> None:
    assert expected, f"no {what} to check: the test proves nothing"
    lost = _lost_keys(sandbox, expected)
    assert not lost, f"{len(lost)} of {len(expected)} {what} lost, e.g. {lost[:10]}"


# ---------------------------------------------------------------------------------------
# 1. kill -9 of a master.
# ---------------------------------------------------------------------------------------


def test_kill_9_of_a_master_fails_over_without_losing_wait_acknowledged_writes(make_sandbox):
    sb = make_sandbox(KILL).sandbox
    sb.up()
    assert sb.settings(sb.load()).node_timeout_ms == 2000, "not the product's default node timeout"
    victim, facts = sorted(masters(sb).items())[0]
    killed_slots = slots_of(facts)
    heir = replica_of(sb, victim)

    plain, durable, kill_started, killed_at = _kill_under_writers(sb, [victim], killed_slots)

    after = snapshot(sb)
    assert after[heir].role == "master" and slots_of(after[heir]) == killed_slots, after[heir]
    # The test means something only if WAIT-acknowledged writes went to that master.
    before_kill = [a for a in durable.attempts if a.durable and a.slot in killed_slots and a.ended < kill_started]
    assert before_kill, "no WAIT-acknowledged write reached the killed master"
    assert durable.successes_after(killed_at, killed_slots) and plain.successes_after(killed_at, killed_slots)
    _assert_nothing_lost(sb, durable.durable(), "WAIT-acknowledged writes")
    # Plain acknowledgements are asynchronous: a few may be lost; reported, not asserted.
    print(f"plain acknowledged writes lost: {len(_lost_keys(sb, plain.acknowledged()))}")

    # The dead pod comes back as a replica of the new master, and still nothing is lost.
    sb.restart([victim])
    wait_healthy(sb)
    back = snapshot(sb)
    assert back[victim].role == "slave" and back[victim].master_id == back[heir].id
    assert back[victim].id == facts.id
    _assert_nothing_lost(sb, durable.durable(), "WAIT-acknowledged writes")


def test_losing_every_pod_of_one_zone_keeps_every_slot_served_and_loses_nothing_acknowledged(make_sandbox):
    sb = make_sandbox(ZONE).sandbox
    placement = sb.up()["placement"]
    assert placement["zone_aware"] and placement["replicas_in_master_zone"] == []
    state = sb.load()
    owners = masters(sb)
    zone = next(r.zone for r in state.nodes if r.pod == sorted(owners)[0])
    doomed = [r.pod for r in state.nodes if r.zone == zone]
    survivors = [r.pod for r in state.nodes if r.zone != zone]
    killed_slots = set().union(*(slots_of(owners[pod]) for pod in doomed if pod in owners))
    # One master and the replica of another: a zone-aware layout loses one copy of two shards.
    assert len(doomed) == 2 and sum(pod in owners for pod in doomed) == 1, doomed

    # The killed master's replica, in another zone, takes over with no replica of its own:
    # WAIT 1 cannot succeed on those slots until the zone is back, so only the plain
    # writer is waited for.
    _, durable, _, _ = _kill_under_writers(sb, doomed, killed_slots, durable_resumes=False)

    # The survivors serve every slot: each master's replica was in another zone.
    deadline = time.monotonic() + 30
    while not all((states := states_ok(sb))[pod] == "ok" for pod in survivors):
        assert time.monotonic() < deadline, states
        time.sleep(0.2)
    after = masters(sb)
    assert set(after) <= set(survivors) and len(after) == len(owners)
    assert sum(len(slots_of(facts)) for facts in after.values()) == 16384
    _assert_nothing_lost(sb, durable.durable(), "WAIT-acknowledged writes")

    # The zone comes back: its pods rejoin as replicas, and still nothing is lost.
    sb.restart(doomed)
    wait_healthy(sb)
    _assert_nothing_lost(sb, durable.durable(), "WAIT-acknowledged writes")


# ---------------------------------------------------------------------------------------
# 2. One pod restarted on a new IP.
# ---------------------------------------------------------------------------------------


def test_one_pod_restarted_on_a_new_ip_rejoins_and_loses_nothing(make_sandbox):
    sb = make_sandbox(RESTART_ONE).sandbox
    sb.up()
    before = snapshot(sb)
    # A master: its preStop hands the slots over, and it returns as a replica elsewhere.
    pod = sorted(masters(sb))[0]
    old_host = before[pod].host

    with Writer(cluster_client(sb), "w") as writer:
        writer.wait_acknowledged(WARM_UP_WRITES)
        sb.restart([pod], new_ip=True)
        wait_healthy(sb)
        writer.wait_acknowledged(WARM_UP_WRITES, after=time.monotonic())
    print(writer.summary())

    after = snapshot(sb)
    new_host = after[pod].host
    assert new_host != old_host
    assert after[pod].id == before[pod].id, "the pod came back as another node"
    assert after[pod].run_id != before[pod].run_id, "the pod did not restart"
    assert after[pod].role == "slave", "pre-stop.sh did not hand the slots over"
    # Every node: ok, knows exactly the six nodes, this one at its new address only.
    state = sb.load()
    for record in state.nodes:
        client = node_client(state, record)
        try:
            info = client.execute_command("CLUSTER INFO")
            assert info["cluster_state"] == "ok", (record.pod, info)
            assert int(info["cluster_known_nodes"]) == 6, (record.pod, info)
            entries = parse_cluster_nodes(client.execute_command("CLUSTER", "NODES"))
        finally:
            client.close()
        entry = next(e for e in entries if e.id == before[pod].id)
        assert (entry.host, entry.port) == (new_host, 6379), (record.pod, entry)
        assert not any(e.host == old_host for e in entries), (record.pod, entries)
    assert not cluster_problems(sb)
    _assert_nothing_lost(sb, writer.acknowledged(), "acknowledged writes")


# ---------------------------------------------------------------------------------------
# 3. Every pod restarted at once on new IPs.
# ---------------------------------------------------------------------------------------


def test_all_pods_restarted_at_once_on_new_ips_heal_on_their_own(make_sandbox):
    sb = make_sandbox(RESTART_ALL).sandbox
    sb.up()
    keys = _write_keys(sb, "k", 3000)
    old_hosts = {n.pod: n.host for n in sb.load().nodes}

    started = time.monotonic()
    sb.restart(None, new_ip=True)
    restarted = time.monotonic() - started
    # Nothing but waiting: peer-recovery.sh re-introduces the pods to each other.
    healed = wait_healthy(sb, timeout=90)
    print(f"restart --all --new-ip returned after {restarted:.1f}s, healthy {healed:.1f}s later")

    new_hosts = {n.pod: n.host for n in sb.load().nodes}
    assert all(new_hosts[pod] != old_hosts[pod] for pod in old_hosts), (old_hosts, new_hosts)
    reused = {pod: host for pod, host in new_hosts.items() if host in old_hosts.values()}
    print(f"pods now on an address another pod had before: {reused}")
    assert set(states_ok(sb).values()) == {"ok"}
    assert len(masters(sb)) == 3
    _assert_nothing_lost(sb, keys, "keys")


def test_all_pods_on_new_ips_without_peer_recovery_stay_down(make_sandbox):
    """The seed's design: nodes.conf holds only the old addresses and nothing re-introduces
    the pods. Here peer-recovery.sh still runs but its peers file is empty, so it has nobody
    to meet; everything else (entrypoint, data) is what restart --all does. Every pod gets
    an address no pod had before: Sandbox.restart hands a pod the address another pod just
    left, and gossip through such a recycled address reconnects part of the cluster by
    accident."""
    managed = make_sandbox(NO_PEER_RECOVERY)
    sb = managed.sandbox
    sb.up()
    keys = _write_keys(sb, "k", 1000)
    state = sb.load()
    pods = [n.pod for n in state.nodes]
    hosts = fresh_addresses(state, len(pods))

    with ThreadPoolExecutor(max_workers=len(pods)) as pool:
        list(pool.map(lambda pod: stop_pod(sb, pod, prestop=False), pods))
    for pod, host in zip(pods, hosts):
        start_pod(sb, pod, host=host, peers=(), managed=managed)
    started = time.monotonic()

    # A node timeout and more: never healthy, and every node ends up in cluster_state:fail
    # (that it stays down for longer is test_node_scripts.py's seed case).
    node_timeout = sb.settings(sb.load()).node_timeout_ms / 1000
    healthy_at = []
    while time.monotonic() - started < 1.5 * node_timeout:
        if not cluster_problems(sb):
            healthy_at.append(round(time.monotonic() - started, 1))
        time.sleep(0.5)
    assert not healthy_at, f"healthy without peer recovery at {healthy_at}s"
    # On a loaded machine the last node may take a moment longer to give up on its peers.
    deadline = time.monotonic() + 20
    while set(states_ok(sb).values()) != {"fail"}:
        assert time.monotonic() < deadline, states_ok(sb)
        time.sleep(0.5)
    with pytest.raises(SandboxError, match="the cluster is fail"):
        sb.wait_ok(timeout=1)
    # A master refuses writes even to its own slots.
    state = sb.load()
    for pod, facts in masters(sb).items():
        slot = min(slots_of(facts))
        key = next(f"probe:{n}" for n in range(10**6) if key_slot(f"probe:{n}".encode()) == slot)
        client = node_client(state, next(r for r in state.nodes if r.pod == pod))
        try:
            with pytest.raises(redis.exceptions.ClusterDownError):
                client.set(key, "x")
        finally:
            client.close()

    # The same running pods, once the peers file lists them again (as the ConfigMap does):
    # the peer-recovery loops pick it up and the cluster heals with every key.
    for record in state.nodes:
        sb.local_node(state, record).write_files()
    wait_healthy(sb, timeout=60)
    _assert_nothing_lost(sb, keys, "keys")


# ---------------------------------------------------------------------------------------
# 4. Rolling restart with the preStop handover.
# ---------------------------------------------------------------------------------------


def test_rolling_restart_with_prestop_handover_fails_no_write(make_sandbox):
    sb = make_sandbox(ROLLING).sandbox
    sb.up()
    before = snapshot(sb)
    pods = sorted(before, key=lambda p: int(p.rsplit("-", 1)[1]), reverse=True)

    with Writer(cluster_client(sb), "w") as writer:
        writer.wait_acknowledged(WARM_UP_WRITES)
        for pod in pods:
            # As a StatefulSet rolls: one pod (preStop, SIGTERM, start on a new IP), and
            # the next one once this one's readiness probe passes, nothing else.
            sb.restart([pod], new_ip=True, wait=False)
            wait_ready(sb, pod)
        wait_healthy(sb)
        writer.wait_acknowledged(WARM_UP_WRITES, after=time.monotonic())
    print(writer.summary(), f"longest write: {writer.slowest_success():.3f}s", sep="\n")

    after = snapshot(sb)
    assert all(after[p].run_id != before[p].run_id for p in pods), "not every pod restarted"
    # Every master handed its slots to its replica on the way.
    assert {p for p, f in after.items() if f.role == "master"} == {p for p, f in before.items() if f.role == "slave"}
    assert not writer.failures(), writer.summary()
    assert len(writer.acknowledged()) > 100
    _assert_nothing_lost(sb, writer.acknowledged(), "acknowledged writes")


# ---------------------------------------------------------------------------------------
# 6. up twice; up after a crash in the middle of forming.
# ---------------------------------------------------------------------------------------


def test_up_twice_is_a_no_op(make_sandbox):
    sb = make_sandbox(UP_TWICE).sandbox
    sb.up()
    keys = _write_keys(sb, "k", 500)
    before = snapshot(sb)
    topology = sb.up()
    assert topology["state"] == "ok", topology["problems"]
    # Same node IDs, roles, masters, slots, config epochs, pids and process run ids.
    assert snapshot(sb) == before
    _assert_nothing_lost(sb, keys, "keys")


class _Crash(Exception):
    """Stands in for the `up` process dying."""


RANGES = ((0, 5460), (5461, 10922), (10923, 16383))


def _form_partially(sb, stage: str) -> None:
    """Does the first steps of `redis-cli --cluster create` (which the bootstrap runs) on
    the layout the bootstrap plans here (masters redis-cluster-0..2), in its order:
    ADDSLOTS on each master, SET-CONFIG-EPOCH on each node, MEET, then CLUSTER REPLICATE."""
    state = sb.load()
    clients = [node_client(state, r) for r in state.nodes]
    try:
        if stage == "before_create":
            return
        for client, (first, last) in list(zip(clients, RANGES))[: 2 if stage == "mid_addslots" else 3]:
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        if stage == "mid_addslots":
            return
        for epoch, client in enumerate(clients, start=1):
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        if stage.startswith("before_meet"):
            return
        first = state.nodes[0]
        for client in clients[1:]:
            client.execute_command("CLUSTER", "MEET", first.host, first.port)
        _wait_all_met(sb, timeout=30)
        if stage == "after_meet":
            return
        ids = [c.execute_command("CLUSTER", "MYID") for c in clients]
        clients[3].execute_command("CLUSTER", "REPLICATE", ids[1])
        assert stage == "one_replica_attached", stage
    finally:
        for client in clients:
            client.close()


def _key_in_slots(first: int, last: int) -> str:
    return next(f"lone:{n}" for n in range(10**6) if first <= key_slot(f"lone:{n}".encode()) <= last)


@pytest.mark.parametrize(
    "stage",
    [
        "before_create",
        "mid_addslots",
        "before_meet",
        "before_meet_with_a_key",
        "after_meet",
        "one_replica_attached",
    ],
)
def test_up_after_a_crash_in_the_middle_of_forming_converges(make_sandbox, monkeypatch, stage):
    sb = make_sandbox(PARTIAL).sandbox

    # `up` dies right after starting the pods, before the cluster is formed...
    def crash(*args, **kwargs):
        raise _Crash()

    monkeypatch.setattr("sandbox.local_cluster.ensure_cluster", crash)
    with pytest.raises(_Crash):
        sb.up()
    monkeypatch.undo()
    # ...and the forming it had started got this far.
    _form_partially(sb, stage)
    ids = {pod: f.id for pod, f in snapshot(sb).items()}
    keys = {}
    if stage == "before_meet_with_a_key":
        # A lone master serves its own slots already (cluster-require-full-coverage no),
        # and a fresh-looking pod is Ready: a client may have written to it.
        state = sb.load()
        key = _key_in_slots(*RANGES[0])
        client = node_client(state, state.nodes[0])
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert client.set(key, "kept")
                    break
                except redis.exceptions.ClusterDownError:
                    # A master that just got slots waits a moment before it serves them.
                    assert time.monotonic() < deadline, "the lone master never served its slots"
                    time.sleep(0.2)
        finally:
            client.close()
        keys = {key: "kept"}
    if stage in ("after_meet", "one_replica_attached"):
        # The half-formed cluster already serves every slot: a client may have written.
        wait_healthy(sb)
        keys = _write_keys(sb, "k", 500)

    try:
        topology = sb.up(timeout=60)
    except BootstrapError:
        # A refusal must at least leave the data where it was.
        if stage == "before_meet_with_a_key":
            state = sb.load()
            client = node_client(state, state.nodes[0])
            try:
                assert client.execute_command("CLUSTER", "MYID") == ids[state.nodes[0].pod]
                assert client.get(next(iter(keys))) == "kept"
            finally:
                client.close()
        raise

    assert topology["state"] == "ok", topology["problems"]
    wait_healthy(sb)
    facts = snapshot(sb)
    owners = [f for f in facts.values() if f.role == "master" and f.slots]
    assert len(owners) == 3 and sum(len(slots_of(f)) for f in owners) == 16384
    assert sorted(sum(1 for f in facts.values() if f.master_id == m.id) for m in owners) == [1, 1, 1]
    if stage in ("before_meet_with_a_key", "after_meet", "one_replica_attached"):
        # A cluster that may hold data is completed as it is, never reset.
        assert {pod: f.id for pod, f in facts.items()} == ids, "up reset a node"
    if keys:
        _assert_nothing_lost(sb, keys, "keys")


def _wait_all_met(sb, timeout: float) -> None:
    state = sb.load()
    deadline = time.monotonic() + timeout
    while True:
        views = []
        for record in state.nodes:
            client = node_client(state, record)
            try:
                views.append(parse_cluster_nodes(client.execute_command("CLUSTER", "NODES")))
            finally:
                client.close()
        if all(len(v) == len(state.nodes) and not any("handshake" in e.flags for e in v) for v in views):
            return
        assert time.monotonic() < deadline, f"the nodes did not meet within {timeout:.0f}s: {views}"
        time.sleep(0.2)


def test_up_right_after_the_forming_process_was_killed(make_sandbox):
    """The real thing: `python -m sandbox up` (and the redis-cli it runs) SIGKILLed once the
    nodes have started to meet, then `up` at once. The pods keep running, as they would
    when the machine running `pulumi up` dies."""
    managed = make_sandbox(KILLED_UP)
    sb = managed.sandbox
    forming = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--root", str(sb.root), "--third-octet", str(KILLED_UP), "up"]
        + ["--engine", sb.engine],
        cwd=PROJECT_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while forming.poll() is None and time.monotonic() < deadline:
            state = sb.load()
            if state and len(state.nodes) == 6 and all(n.pid for n in state.nodes):
                known = []
                for record in state.nodes:
                    client = node_client(state, record, timeout=0.5)
                    try:
                        known.append(int(client.execute_command("CLUSTER INFO")["cluster_known_nodes"]))
                    except redis.RedisError:
                        pass
                    finally:
                        client.close()
                # redis-cli sends MEET only after every ADDSLOTS and SET-CONFIG-EPOCH.
                if any(k > 1 for k in known):
                    break
            time.sleep(0.005)
    finally:
        # The process and its redis-cli; the nodes run in sessions of their own.
        try:
            os.killpg(forming.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        forming.wait()
    assert forming.returncode == -signal.SIGKILL, "up finished before it could be killed"
    ids = {pod: f.id for pod, f in snapshot(sb).items()}

    # The nodes may still be shaking hands: up lets gossip settle, then completes the formation.
    topology = sb.up(timeout=60)

    assert topology["state"] == "ok", topology["problems"]
    wait_healthy(sb)
    facts = snapshot(sb)
    assert {pod: f.id for pod, f in facts.items()} == ids, "up reset a node"
    owners = [f for f in facts.values() if f.role == "master" and f.slots]
    assert len(owners) == 3 and sum(len(slots_of(f)) for f in owners) == 16384
