"""Network partitions of the sandbox (`python -m sandbox partition` / `heal`), and what a master
cut off with its clients loses under each `durability` setting.

The short cases of CI, per engine; the long scenarios (a zone cut off, flapping links, a
partition during a failover or a slot migration) and the figures are in
benchmarks/partition_benchmark.py (`make bench`). Each test builds its own sandbox on
127.0.9x.0/24 and leaves no process and no nftables rule behind (`ManagedSandbox` heals and
checks it); the nftables rules need root (CAP_NET_ADMIN), which CI's container is given.

What is proven:
* `partition <pod> --keep-client` cuts the pod off from the other pods on the cluster bus
  both ways (it suspects every other node, they see it fail) while clients still reach it;
  `partition <pod>` cuts clients off from it too, not from the others; `heal` and `down`
  remove the sandbox's table and nothing else of the machine's rules, and the cluster heals.
* a partition names pods of the sandbox, and leaves some on the other side.
* a master cut off from the others, its clients still reaching it, for longer than the node
  timeout: no WAIT-acknowledged write is lost either way. With `durability: cache` the
  checker finds the plain writes it acknowledged during the cut gone after the heal, and the
  majority side takes writes for its slots once it promoted the replica; with `bounded` it
  stopped acknowledging within `BOUNDED_STOP_SECONDS` of the cut (the node timeout would
  have taken 5 s and more), and the majority side refuses those slots' writes (NOREPLICAS)
  while their only replica is cut off, until the heal.
"""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import contextmanager
from typing import Iterator

import pytest
import redis

from cluster_logic.model import parse_cluster_nodes
from sandbox import partitions
from testkit.loss_checker import LossChecker, MajorityProbe
from testkit.sandbox_support import (
    cluster_client,
    masters,
    node_client,
    record_of,
    replica_of,
    run_sandbox_cli,
    slots_of,
    wait_healthy,
    wait_replication_settled,
)

pytestmark = pytest.mark.integration

# 127.0.<octet>.0/24 per test; this suite owns 90..93.
RULES, CACHE, BOUNDED = 90, 91, 92
# The bounded master must have stopped acknowledging by then: the engines drop a replica from
# the count once its last acknowledgement is more than `min-replicas-max-lag` (1) whole seconds
# old, checked once a second, which is 3 s after the cut at most (docs/figures.md); the rest is
# this machine's scheduling. Cache's own stop, the node timeout (5 s here), comes later.
BOUNDED_STOP_SECONDS = 4.0
# The node timeout of the durability cases, stated so that cache's stop (the node timeout)
# and bounded's (about 2 s) cannot be mistaken for each other.
NODE_TIMEOUT_MS = "5000"


@pytest.fixture(autouse=True)
def nft_available() -> None:
    # CI runs as root with NET_ADMIN and installs nftables (tools/install-system-packages.sh):
    # a missing nft is a broken setup, and a skip would hide it.
    try:
        partitions.nft_binary()
    except partitions.PartitionError as error:
        pytest.fail(str(error), pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the partition tests need root (nftables rules): run them as root or in CI", pytrace=False)


@contextmanager
def machine_rules() -> Iterator[str]:
    """A table of the test's own standing for the machine's other rules (a chain on the
    same hook, a rule on loopback), removed afterwards whatever happens: the sandbox must
    never touch it."""
    name = f"redis_eks_test_other_rules_{os.getpid()}"
    script = (
        f"table inet {name} {{\n"
        "    chain input {\n"
        "        type filter hook input priority filter; policy accept;\n"
        "        ip daddr 127.0.254.254 tcp dport 9 accept\n"
        "    }\n"
        "}\n"
    )
    subprocess.run([partitions.nft_binary(), "-f", "-"], input=script, text=True, check=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run([partitions.nft_binary(), "delete", "table", "inet", name], check=False, timeout=30)


def listing(table: str) -> str:
    done = subprocess.run(
        [partitions.nft_binary(), "list", "table", "inet", table], capture_output=True, text=True, timeout=30
    )
    return done.stdout if done.returncode == 0 else f"(absent: {done.stderr.strip()})"


def flags_seen(sb, by_pod: str) -> dict[str, str]:
    """What `by_pod` says of every other node: its id -> flags."""
    state = sb.load()
    client = node_client(state, record_of(state, by_pod), timeout=1.0)
    try:
        entries = parse_cluster_nodes(client.execute_command("CLUSTER", "NODES"))
    finally:
        client.close()
    return {entry.id: ",".join(sorted(entry.flags)) for entry in entries if not entry.myself}


def node_id(sb, pod: str) -> str:
    state = sb.load()
    client = node_client(state, record_of(state, pod))
    try:
        return client.execute_command("CLUSTER", "MYID")
    finally:
        client.close()


def wait_until(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(interval)


def reachable(sb, pod: str) -> bool:
    state = sb.load()
    client = node_client(state, record_of(state, pod), timeout=1.0)
    try:
        return client.ping()
    except (redis.TimeoutError, redis.ConnectionError):
        return False
    finally:
        client.close()


def test_a_partition_cuts_the_named_pod_off_both_ways_and_heal_and_down_remove_only_its_rules(make_sandbox):
    sb = make_sandbox(RULES).sandbox
    sb.up()
    victim = sorted(masters(sb))[0]
    others = [record.pod for record in sb.load().nodes if record.pod != victim]
    victim_id = node_id(sb, victim)
    table = partitions.table_name(RULES)

    with machine_rules() as other_table:
        before = listing(other_table)
        cut = run_sandbox_cli(sb.root, RULES, "partition", victim, "--keep-client")
        assert f"cut off: {victim}" in cut.stdout and "clients: still reach every pod" in cut.stdout

        # The bus, both ways: the victim suspects every other node (alone, it cannot gather the
        # majority that turns a suspicion into a failure), and they see it fail.
        wait_until(
            lambda: all({"fail?", "fail"} & set(flags.split(",")) for flags in flags_seen(sb, victim).values()),
            30,
            f"{victim} suspecting every other node",
        )
        wait_until(
            lambda: all("fail" in flags_seen(sb, pod)[victim_id].split(",") for pod in others),
            30,
            f"every other node seeing {victim} fail",
        )
        # The clients were kept: every pod answers, the victim included.
        assert all(reachable(sb, pod) for pod in [victim, *others])

        # Again without --keep-client: it replaces the partition, and clients lose the victim too.
        run_sandbox_cli(sb.root, RULES, "partition", victim)
        state = sb.load()
        assert partitions.current(RULES) == partitions.Partition(
            cut=(record_of(state, victim).host,),
            rest=tuple(record_of(state, pod).host for pod in others),
            ports=(6379, 16379),
            keep_client=False,
        )
        assert not reachable(sb, victim)
        assert all(reachable(sb, pod) for pod in others)
        assert listing(other_table) == before

        healed = run_sandbox_cli(sb.root, RULES, "heal")
        assert "healed" in healed.stdout
        assert partitions.listing(RULES) is None and listing(table).startswith("(absent")
        assert listing(other_table) == before
        assert reachable(sb, victim)
        wait_healthy(sb, timeout=60)
        assert "no partition to heal" in run_sandbox_cli(sb.root, RULES, "heal").stdout

        # `down` heals too.
        run_sandbox_cli(sb.root, RULES, "partition", *others[:2], "--keep-client")
        assert partitions.current(RULES) is not None
        run_sandbox_cli(sb.root, RULES, "down")
        assert partitions.listing(RULES) is None
        assert listing(other_table) == before


def test_a_partition_names_pods_of_the_sandbox_and_leaves_some_on_the_other_side(make_sandbox):
    sb = make_sandbox(RULES).sandbox
    sb.up()
    pods = [record.pod for record in sb.load().nodes]
    unknown = run_sandbox_cli(sb.root, RULES, "partition", "redis-cluster-9", check=False)
    assert unknown.returncode == 1 and "no pod 'redis-cluster-9'" in unknown.stderr
    everyone = run_sandbox_cli(sb.root, RULES, "partition", *pods, check=False)
    assert everyone.returncode == 1 and "not all" in everyone.stderr
    assert partitions.listing(RULES) is None


@pytest.mark.parametrize(("durability", "octet"), [("cache", CACHE), ("bounded", BOUNDED)])
def test_a_master_cut_off_with_its_clients_loses_no_wait_acknowledged_write(make_sandbox, durability, octet):
    sb = make_sandbox(octet, config={"durability": durability, "nodeTimeoutMs": NODE_TIMEOUT_MS}).sandbox
    sb.up()
    settings = sb.settings(sb.load())
    assert settings.durability == durability and settings.replicas_per_shard == 1
    wait_replication_settled(sb)
    victim, facts = sorted(masters(sb).items())[0]
    slots = slots_of(facts)
    heir = replica_of(sb, victim)
    state = sb.load()
    heir_record = record_of(state, heir)

    checker = LossChecker(lambda: cluster_client(sb, retries=0, socket_timeout=1.0), slots=slots)
    probe = MajorityProbe([(heir_record.host, heir_record.port)], min(slots), state.password)
    with checker, probe:
        checker.start()
        checker.mark("cut")
        sb.partition([victim], keep_client=True)
        # Past the node timeout, the majority promotes the replica; the cut lasts a moment more.
        wait_until(lambda: masters(sb).get(heir), 60, f"{heir} promoted")
        promoted = time.monotonic()
        wait_until(lambda: time.monotonic() - promoted > 1.0, 5, "a moment after the promotion")
        sb.heal()
        healed = checker.mark("heal")
        wait_healthy(sb, timeout=60)
        checker.plain.wait_for_success_after(healed, slots, timeout=60)
        checker.durable.wait_acknowledged(1, after=healed, durable=True, timeout=60)
        majority_during_cut = probe.first_success()
        losses = checker.report()
    print(f"{durability}: {losses.summary()}; errors {losses.errors}; majority probe {dict(probe.replies())}")

    assert losses.durable > 0, "no WAIT-acknowledged write: the test proves nothing"
    assert not losses.durable_lost, f"WAIT-acknowledged writes lost: {losses.durable_lost[:10]}"
    if durability == "cache":
        # The checker sees what the cut cost: the victim acknowledged writes it could not keep.
        assert losses.lost_during_cut > 0, losses.summary()
        assert majority_during_cut is not None and majority_during_cut < healed, dict(probe.replies())
    else:
        # It refused plain writes (NOREPLICAS, before the node timeout's CLUSTERDOWN) within the bound.
        assert losses.acknowledging is not None and losses.acknowledging < BOUNDED_STOP_SECONDS, losses.summary()
        assert losses.window is None or losses.window < BOUNDED_STOP_SECONDS, losses.summary()
        assert losses.errors.get("ResponseError: NOREPLICAS", 0) > 0, losses.errors
        # Its only replica cut off, the promoted one refuses writes until the heal.
        assert majority_during_cut is None or majority_during_cut > healed, dict(probe.replies())
        assert probe.replies().get("ResponseError: NOREPLICAS", 0) > 0, dict(probe.replies())
