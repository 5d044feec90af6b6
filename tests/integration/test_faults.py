"""Faults an operator meets on EKS, injected into the sandbox (the dev stack's files, the
bootstrap's own code) on the engine under test, with every acknowledged write checked after.

Each test builds its own `Sandbox` on 127.0.8x.0/24 and stops every process it started, by
pid, whether it passes or fails (`make_sandbox`, tests/integration/conftest.py).

What is proven:
* scale-out: the moment `up --shards 4` returns, every replica of a master that gained
  slots holds what its master held, so killing that master then loses no key.
* a scale-out cut short by the death or the freeze of a move's target or source (after part
  of the slots moved, so the victim's replica takes over): `up` gives up within the command
  timeout and says the next update resumes, and the next `up` does, towards the node that
  holds the keys now; no key and no WAIT-acknowledged write is lost, and every slot is
  served again.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import redis

from cluster_logic.credentials import monitoring_password
from cluster_logic.errors import BootstrapError
from cluster_logic.model import parse_cluster_nodes
from cluster_logic.transports.base import COMMAND_TIMEOUT_SECONDS
from sandbox.processes import kill_and_reap, wait_gone
from testkit.exporter import LocalExporter
from testkit.faults import CutMidMove, damage, wait_failed_over, wait_promoted
from testkit.redis_nodes import key_in_slots
from testkit.sandbox_support import (
    cluster_client,
    masters,
    node_client,
    record_of,
    snapshot,
    start_pod,
    stop_pod,
    wait_healthy,
)
from testkit.writers import Writer, lost_keys, write_keys

pytestmark = pytest.mark.integration

# 127.0.<octet>.0/24 per test; this suite owns 79..91.
SCALE_OUT_KILL, MOVE_TARGET_KILLED, MOVE_SOURCE_KILLED, MOVE_TARGET_FROZEN, MOVE_SOURCE_FROZEN = range(80, 85)
IDENTITY_EMPTY, IDENTITY_TRUNCATED, IDENTITY_CORRUPT, VOLUME_LOST, VOLUME_FULL = range(85, 90)
STRAY_NODE, REPLICA_VOLUME_LOST, TWO_VOLUMES_LOST = 79, 90, 91

# Ways of injecting one fault alternate between the engines' passes (tests/conftest.py).
REDIS_PASS, VALKEY_PASS = pytest.mark.engine_pass("redis"), pytest.mark.engine_pass("valkey")

# Enough keys that a quarter of them take a measurable time to reach a new replica.
LOADED_KEYS = 100_000


def _replication(sandbox, pod: str) -> dict:
    state = sandbox.load()
    client = node_client(state, record_of(state, pod))
    try:
        return client.info("replication")
    finally:
        client.close()


def _assert_nothing_lost(sandbox, expected: dict[str, str], what: str) -> None:
    assert expected, f"no {what} to check: the test proves nothing"
    with cluster_client(sandbox) as client:
        lost = lost_keys(client, expected)
    assert not lost, f"{len(lost)} of {len(expected)} {what} lost, e.g. {lost[:10]}"


# ---------------------------------------------------------------------------------------
# 1. Scale-out reports ok only once the new masters' replicas hold the moved keys.
# ---------------------------------------------------------------------------------------


def test_killing_a_new_master_the_moment_scale_out_returns_loses_no_key(make_sandbox):
    sb = make_sandbox(SCALE_OUT_KILL).sandbox
    sb.up()
    with cluster_client(sb) as client:
        keys = write_keys(client, "k", LOADED_KEYS)
    before = set(masters(sb))

    topology = sb.up(shards=4)

    # Read at once, before anything else: what a master that dies now leaves behind.
    new_masters = {p: f for p, f in masters(sb).items() if p not in before}
    assert topology["state"] == "ok" and len(new_masters) == 1, (topology["problems"], new_masters)
    (new_master, facts), *_ = new_masters.items()
    offsets = {}
    for replica in (r["pod"] for r in topology["replicas"] if r["master"] == new_master):
        offsets[replica] = _replication(sb, replica).get("slave_repl_offset", 0)
    master_offset = _replication(sb, new_master)["master_repl_offset"]
    sb.kill(new_master)
    assert master_offset > 0 and offsets, (master_offset, offsets)
    assert all(offset >= master_offset for offset in offsets.values()), (
        f"up returned while {new_master}'s replicas were behind it: {offsets} of {master_offset}"
    )

    # Its replica takes over (the killed pod stays down until then: back at once, it would
    # bring its keys back from its own AOF); then `up` brings the pod back as a replica.
    heir = wait_promoted(sb, list(offsets), facts.slots)
    sb.up()
    wait_healthy(sb)
    assert heir in masters(sb) and new_master not in masters(sb)
    _assert_nothing_lost(sb, keys, "keys")


# ---------------------------------------------------------------------------------------
# 2. A scale-out cut short by the death of a move's target or source.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "victim", "octet"),
    [
        pytest.param("kill", "target", MOVE_TARGET_KILLED, marks=REDIS_PASS),
        pytest.param("kill", "source", MOVE_SOURCE_KILLED, marks=VALKEY_PASS),
        pytest.param("freeze", "target", MOVE_TARGET_FROZEN, marks=VALKEY_PASS),
        pytest.param("freeze", "source", MOVE_SOURCE_FROZEN, marks=REDIS_PASS),
    ],
)
def test_a_scale_out_cut_short_by_a_lost_peer_is_finished_by_the_next_up(make_sandbox, how, victim, octet):
    sb = make_sandbox(octet).sandbox
    sb.up()
    with cluster_client(sb) as client:
        keys = write_keys(client, "k", 20_000)
    plain = Writer(cluster_client(sb), "plain").start()
    durable = Writer(cluster_client(sb), "durable", mode="wait").start()
    cut = None
    try:
        plain.wait_acknowledged(50)
        cut = CutMidMove(sb, victim, how)
        started = time.monotonic()
        with cut, pytest.raises(BootstrapError) as failed:
            sb.up(shards=4)
        gave_up = time.monotonic() - started
        assert cut.pod, "the move finished before a peer could be cut off"
        print(f"{victim} {cut.pod} {how} mid-move; up gave up after {gave_up:.1f}s: {failed.value}")
        # Fails fast. A lost peer used to hold the run for a minute and more (redis-py's ten
        # retries, a 60 s reply timeout per call, moves to other peers finished first); now a
        # silent node is given up on within the command timeout and the other moves stop.
        assert gave_up < 3 * COMMAND_TIMEOUT_SECONDS, gave_up
        if "left open" in str(failed.value):
            assert "the next update resumes" in str(failed.value)
        # The victim's replica takes over its slots before the pod is back (a pod back at
        # once returns as the master it was, and no failover is needed at all).
        wait_failed_over(sb, cut.node_id, cut.pod)
        cut.thaw()
        topology = sb.up()
        assert topology["state"] == "ok", topology["problems"]
        plain.wait_acknowledged(50, after=time.monotonic())
    finally:
        if cut is not None:
            cut.thaw()
        plain.stop()
        durable.stop()
    print(plain.summary(), durable.summary(), sep="\n")
    wait_healthy(sb)
    facts = masters(sb)
    assert len(facts) == 4 and cut.pod not in facts
    assert sum(b - a + 1 for f in facts.values() for a, b in f.slots) == 16384
    assert not any(f.migrating or f.importing for f in facts.values()), facts
    _assert_nothing_lost(sb, keys, "keys")
    _assert_nothing_lost(sb, durable.durable(), "WAIT-acknowledged writes")
    with cluster_client(sb) as client:
        print(f"plain acknowledged writes lost: {len(lost_keys(client, plain.acknowledged()))}")


# ---------------------------------------------------------------------------------------
# 3. A node that lost its cluster identity (nodes.conf gone or damaged) or its whole volume.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "octet"),
    [
        # How the entrypoint tells these apart is tests/integration/test_node_scripts.py's
        # table, on both engines; here what the cluster does about each, in one pass.
        pytest.param("empty", IDENTITY_EMPTY, marks=REDIS_PASS),
        pytest.param("truncated", IDENTITY_TRUNCATED, marks=VALKEY_PASS),
        pytest.param("corrupt", IDENTITY_CORRUPT, marks=REDIS_PASS),
        pytest.param("volume lost", VOLUME_LOST, marks=VALKEY_PASS),
    ],
)
def test_a_master_back_without_its_identity_never_serves_alone_and_rejoins_as_a_replica(make_sandbox, how, octet):
    sb = make_sandbox(octet).sandbox
    sb.up()
    with cluster_client(sb) as client:
        keys = write_keys(client, "k", 5_000)
    owners = masters(sb)
    victim = sorted(owners)[0]
    old_id = owners[victim].id
    heir = next(r["pod"] for r in sb.topology()["replicas"] if r["master"] == victim)
    data_dir = sb.root / "nodes" / victim / "data"
    with Writer(cluster_client(sb), "plain") as plain, Writer(cluster_client(sb), "durable", mode="wait") as durable:
        plain.wait_acknowledged(50)
        durable.wait_acknowledged(50, durable=True)
        sb.kill(victim)
        damage(data_dir, how)
        # As the kubelet restarts the container: the entrypoint sets the data aside, holds the
        # server back until the peers see the old ID failed, and the pod rejoins by itself.
        sb.restart([victim], timeout=120)
        plain.wait_acknowledged(50, after=time.monotonic())
    print(plain.summary(), durable.summary(), sep="\n")

    facts = snapshot(sb)
    assert facts[victim].role == "slave" and facts[victim].id != old_id, facts[victim]
    assert facts[heir].role == "master" and facts[heir].slots == owners[victim].slots
    # Every node forgot the old ID; nobody ever listed the pod as a cluster of its own.
    state = sb.load()
    for record in state.nodes:
        client = node_client(state, record)
        try:
            assert old_id not in client.execute_command("CLUSTER", "NODES"), record.pod
        finally:
            client.close()
    log = (sb.root / "nodes" / victim / "redis.log").read_text()
    assert f"holding the server back until every peer sees {old_id} failed" in log
    assert "rejoining as a replica" in log and "joined; every node told to forget" in log
    if how != "volume lost":
        # The data is kept aside, never deleted: the AOF the node held, and the bad nodes.conf.
        (aside,) = (data_dir / "lost-identity").glob("2*")
        assert (aside / "appendonlydir").is_dir() and any((aside / "appendonlydir").iterdir())
        assert (aside / "nodes.conf").exists()
    _assert_nothing_lost(sb, keys, "keys")
    _assert_nothing_lost(sb, durable.durable(), "WAIT-acknowledged writes")
    with cluster_client(sb) as client:
        print(f"plain acknowledged writes lost: {len(lost_keys(client, plain.acknowledged()))}")


# ---------------------------------------------------------------------------------------
# 4. A full data volume.
# ---------------------------------------------------------------------------------------


def _fill(directory: Path) -> Path:
    """Writes a file into `directory` until the file system has no room left."""
    filler = directory / "filler"
    with open(filler, "wb") as handle:
        chunk = b"\0" * 65536
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError:
            pass
    return filler


def _probe(sandbox, pod: str, script: str):
    state = sandbox.load()
    return sandbox.local_node(state, record_of(state, pod)).run_script(script, timeout=30)


def test_a_full_volume_fails_readiness_never_liveness_and_the_pod_waits_for_room(make_sandbox):
    sb = make_sandbox(VOLUME_FULL).sandbox
    victim = "redis-cluster-0"
    data_dir = sb.root / "nodes" / victim / "data"
    data_dir.mkdir(parents=True)
    # The pod's volume: a file system of its own, small enough to fill.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(data_dir)], check=True)
    try:
        sb.up()
        owners = masters(sb)
        assert victim in owners, owners
        heir = next(r["pod"] for r in sb.topology()["replicas"] if r["master"] == victim)
        filler = _fill(data_dir)
        # A write to the victim's slots makes its AOF write fail: the master refuses writes
        # (and PING) with MISCONF from then on.
        key = key_in_slots(owners[victim].slots)
        state = sb.load()
        client = node_client(state, record_of(state, victim))
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.set(key, "x" * 4096)
                except redis.ResponseError as error:
                    if "MISCONF" in str(error):
                        break
                assert time.monotonic() < deadline, "the master never refused a write on its full volume"
                time.sleep(0.1)
        finally:
            client.close()

        # Liveness passes on every run (the kubelet would otherwise restart the pod, which
        # cannot help); readiness fails and says why.
        for _ in range(3):
            liveness = _probe(sb, victim, "probe-liveness.sh")
            assert liveness.returncode == 0, liveness.stderr
        assert "MISCONF" in liveness.stderr
        readiness = _probe(sb, victim, "probe-readiness.sh")
        assert readiness.returncode == 1 and "MISCONF" in readiness.stderr, readiness
        # What RedisAofWriteFailing fires on, as the pod's exporter reports it.
        state = sb.load()
        exporter = LocalExporter(
            pod=victim,
            node_host=record_of(state, victim).host,
            redis_port=record_of(state, victim).port,
            password=monitoring_password(state.password),
            work_dir=sb.root / "exporter",
        )
        exporter.start()
        try:
            assert exporter.scrape().value("redis_aof_last_write_status") == 0
        finally:
            exporter.stop()

        # A change of its cluster config cannot be written: the master exits, as the engine
        # decides ("can't update cluster config file"), once its replica took over.
        pid = record_of(sb.load(), victim).pid
        heir_client = node_client(sb.load(), record_of(sb.load(), heir))
        try:
            heir_client.execute_command("CLUSTER", "FAILOVER", "FORCE")
        finally:
            heir_client.close()
        assert wait_gone(pid, 60), "the master kept running without being able to write nodes.conf"
        log = (sb.root / "nodes" / victim / "redis.log").read_text()
        assert "cluster config file" in log, log[-2000:]

        # Started again on the full volume (as the kubelet restarts the container), the
        # entrypoint holds the server back: alive, not ready, and it says why.
        stop_pod(sb, victim, prestop=False)
        node = start_pod(sb, victim)
        assert "KiB free" in (node.holding() or ""), node.log_tail()
        liveness = _probe(sb, victim, "probe-liveness.sh")
        assert liveness.returncode == 0 and "holds the server back" in liveness.stderr, liveness
        readiness = _probe(sb, victim, "probe-readiness.sh")
        assert readiness.returncode == 1 and "KiB free" in readiness.stderr, readiness

        # Room again (the volume was grown, or files removed): the server starts and rejoins.
        filler.unlink()
        wait_healthy(sb, timeout=90)
        assert snapshot(sb)[victim].role == "slave"
    finally:
        sb.down()
        subprocess.run(["umount", str(data_dir)], check=False)


# ---------------------------------------------------------------------------------------
# 5. What the entrypoint's hold prevents, and what the alert sees when it happens anyway.
# ---------------------------------------------------------------------------------------


def test_a_node_met_at_a_masters_address_under_another_id_shows_in_the_exporter(make_sandbox, engine):
    """A server started by hand (no entrypoint, an empty data dir) at a dead master's address:
    the peers meet a new ID there and list the old one `noaddr`, which Redis never fails; the
    exporter's cluster-view script counts it, and RedisClusterSlotHolderWithoutAddress fires."""
    managed = make_sandbox(STRAY_NODE)
    sb = managed.sandbox
    sb.up()
    victim = sorted(masters(sb))[0]
    state = sb.load()
    record = record_of(state, victim)
    old_id = snapshot(sb)[victim].id
    sb.kill(victim)
    stray_dir = sb.root / "stray"
    stray_dir.mkdir()
    stray = subprocess.Popen(
        [
            engine.server,
            "--bind",
            record.host,
            "--port",
            str(record.port),
            "--cluster-enabled",
            "yes",
            "--dir",
            str(stray_dir),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    peer = next(r for r in state.nodes if r.pod != victim)
    exporter = LocalExporter(
        pod=peer.pod,
        node_host=peer.host,
        redis_port=peer.port,
        password=monitoring_password(state.password),
        work_dir=sb.root / "exporter",
    )
    try:
        exporter.start()
        deadline = time.monotonic() + 30
        seen = []
        while time.monotonic() < deadline:
            count = exporter.scrape().value("redis_script_values", key="slot_holders_without_address")
            client = node_client(state, peer)
            try:
                entries = parse_cluster_nodes(client.execute_command("CLUSTER", "NODES"))
            finally:
                client.close()
            expected = sum(1 for e in entries if "noaddr" in e.flags and e.slots)
            seen.append((expected, count))
            # Redis: the old ID loses its address and keeps its slots. Valkey marks it failed.
            if expected or any(e.id == old_id and "fail" in e.flags for e in entries):
                break
            time.sleep(0.2)
        print(f"{engine.engine.name}: (noaddr slot holders, metric) over time: {seen[-5:]}")
        assert all(expected == count for expected, count in seen), seen
        if engine.engine.name == "redis":
            # Redis marks the old ID noaddr and keeps its slots with it: no failover comes.
            assert seen[-1] == (1, 1), seen
    finally:
        exporter.stop()
        kill_and_reap(stray, "the stray server")


# ---------------------------------------------------------------------------------------
# 6. Lost volumes healed by the pods themselves, without `up`.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "octet"), [("a replica", REPLICA_VOLUME_LOST), ("two masters at once", TWO_VOLUMES_LOST)]
)
def test_pods_that_lose_their_volumes_rejoin_by_themselves(make_sandbox, who, octet):
    sb = make_sandbox(octet).sandbox
    sb.up()
    with cluster_client(sb) as client:
        keys = write_keys(client, "k", 5_000)
    before = snapshot(sb)
    owners = sorted(masters(sb))
    replicas = sorted(p for p, f in before.items() if f.role == "slave")
    victims = [replicas[0]] if who == "a replica" else owners[:2]
    with Writer(cluster_client(sb), "durable", mode="wait") as durable:
        durable.wait_acknowledged(50, durable=True)
        started = time.monotonic()
        # Rescheduled on new, empty volumes; no `up` after: the pods' scripts do the rest.
        sb.restart(victims, lose_volume=True, timeout=120)
        healed = time.monotonic() - started
        durable.wait_acknowledged(50, after=time.monotonic(), durable=True)
    print(f"{who}: the cluster was ok again {healed:.1f}s after the restart began")
    after = snapshot(sb)
    assert all(after[pod].role == "slave" and after[pod].id != before[pod].id for pod in victims), after
    # Every master has its replica again: two pods never pick the same master.
    followed = sorted(f.master_id for f in after.values() if f.role == "slave")
    assert followed == sorted(f.id for f in after.values() if f.role == "master" and f.slots), after
    gone = {before[pod].id for pod in victims}
    state = sb.load()
    for record in state.nodes:
        client = node_client(state, record)
        try:
            assert not gone & {line.split()[0] for line in client.execute_command("CLUSTER", "NODES").splitlines()}
        finally:
            client.close()
    _assert_nothing_lost(sb, keys, "keys")
    _assert_nothing_lost(sb, durable.durable(), "WAIT-acknowledged writes")
