"""Figures for the cluster bootstrap, beside the bare redis-cli doing the same job.

1. Bootstrap: N ready, empty nodes -> converged cluster (every node cluster_state:ok,
   knows N nodes, 16384 slots served, every replica master_link_status:up), for 6 and 30
   nodes: `ensure_cluster` vs `redis-cli --cluster create` followed by the same
   convergence wait (polled as tightly as the bootstrap polls, every POLL_SECONDS).
2. Scale out 3 -> 4 shards with 1,000,000 keys: after the new master and its replica have
   joined (same code for both), moving a quarter of the slots onto the new master with
   the bootstrap's `rebalance` vs `redis-cli --cluster rebalance --cluster-use-empty-masters`
   with its defaults, each on a fresh, identical setup; keys counted after.

The nodes are the tests' (`testkit.redis_nodes`): the stack's redis.conf (AOF on, as in a
pod) with a 2 s node timeout, started through the entrypoint.

Run from the project root: .venv/bin/python -m benchmarks.bootstrap_benchmark [--keys N] [--skip-bootstrap]
Loopback only (locked addresses in 127.0.30.0/24 - 127.0.39.0/24); every redis-server is
stopped by pid.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from redis.crc import key_slot

from benchmarks.machine_info import cpu_model
from cluster_logic import formation, health
from cluster_logic.cluster import Cluster
from cluster_logic.deadline import Deadline
from cluster_logic.model import SLOTS
from cluster_logic.reconcile import ensure_cluster
from cluster_logic.transports.direct import DirectTransport
from testkit.redis_nodes import BENCHMARK_OCTETS, PASSWORD, LocalNodes, LoopbackAddresses, count_keys


def machine() -> str:
    model = cpu_model()
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}"


def redis_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["redis-cli", *args],
        env={**os.environ, "REDISCLI_AUTH": PASSWORD},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"redis-cli {' '.join(args[:2])} failed: {done.stdout[-800:]} {done.stderr[-400:]}")
    return done


@contextmanager
def started_nodes(loopback: LoopbackAddresses, count: int) -> Iterator[LocalNodes]:
    """`count` started nodes in a directory of their own, on addresses no other set of the
    run had; afterwards every process is stopped and the data deleted."""
    with tempfile.TemporaryDirectory(prefix="bootstrap-benchmark-") as root, LocalNodes(Path(root), loopback) as nodes:
        nodes.started(count)
        yield nodes


def wait_converged(nodes: LocalNodes, shards: int, timeout: float = 120) -> None:
    """The bootstrap's own convergence wait, polled as tightly as the bootstrap polls."""
    with DirectTransport(nodes.inputs(), PASSWORD) as transport:
        health.wait_converged(Cluster(transport, transport.nodes), Deadline(timeout), shards)


# ---------------------------------------------------------------------------------------


def bootstrap_once(loopback: LoopbackAddresses, count: int, use_bootstrap: bool) -> float:
    shards = count // 2
    with started_nodes(loopback, count) as nodes:
        started = time.monotonic()
        if use_bootstrap:
            with DirectTransport(nodes.inputs(), PASSWORD) as transport:
                topology = ensure_cluster(transport, shards, 1, 300, mode="create")
            assert topology["state"] == "ok", topology["problems"]
        else:
            redis_cli(
                "--cluster",
                "create",
                *[f"{n.ip}:{n.port}" for n in nodes.nodes],
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            )
            wait_converged(nodes, shards)
        return time.monotonic() - started


def bench_bootstrap(loopback: LoopbackAddresses, repeats: int) -> None:
    print("\n== Bootstrap: ready empty nodes -> converged cluster (1 replica per shard) ==")
    for count in (6, 30):
        ours: list[float] = []
        bare: list[float] = []
        for _ in range(repeats):
            bare.append(bootstrap_once(loopback, count, use_bootstrap=False))
            ours.append(bootstrap_once(loopback, count, use_bootstrap=True))
        o, b = statistics.median(ours), statistics.median(bare)
        print(
            f"{count:3d} nodes: bootstrap {o:6.2f}s (runs {', '.join(f'{x:.2f}' for x in ours)})   "
            f"redis-cli create + sync wait {b:6.2f}s (runs {', '.join(f'{x:.2f}' for x in bare)})   "
            f"ratio {o / b:4.2f}x (target <= 1.2x)"
        )


# ---------------------------------------------------------------------------------------


def load_keys(nodes: LocalNodes, total: int) -> float:
    """Loads `total` keys with MSETs grouped by slot, one pipeline thread per master."""
    with DirectTransport(nodes.inputs(), PASSWORD) as transport:
        cluster = Cluster(transport, transport.nodes[:6])
        cluster.refresh()
        owner = {}
        by_id = {v.myid: v.node for v in cluster.views if v.myid}
        for entry in cluster.reference_entries():
            for a, b in entry.slots:
                for slot in range(a, b + 1):
                    owner[slot] = by_id[entry.id]
    by_slot: dict[int, list[bytes]] = defaultdict(list)
    for i in range(total):
        key = f"key:{i}".encode()
        by_slot[key_slot(key)].append(key)
    per_master: dict = defaultdict(list)
    for slot, keys in by_slot.items():
        per_master[owner[slot]].append(keys)
    started = time.monotonic()

    def load(node, groups: list[list[bytes]]) -> None:
        client = nodes.by_pod(node.pod).client()
        pipe = client.pipeline(transaction=False)
        for n, keys in enumerate(groups, 1):
            args = []
            for key in keys:
                args += [key, b"value-" + key]
            pipe.execute_command("MSET", *args)
            if n % 200 == 0:
                pipe.execute()
        pipe.execute()
        client.close()

    threads = [threading.Thread(target=load, args=(node, groups)) for node, groups in per_master.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - started


def scale_setup(nodes: LocalNodes, total: int) -> float:
    """3 shards of the 8 nodes, `total` keys, then the new master and its replica joined
    (the same way for both contenders); returns how long the load took."""
    with DirectTransport(nodes.inputs()[:6], PASSWORD) as transport:
        ensure_cluster(transport, 3, 1, 120, mode="create")
    load_seconds = load_keys(nodes, total)
    assert count_keys(nodes.nodes[:6]) == total
    with DirectTransport(nodes.inputs(), PASSWORD) as transport:
        cluster = Cluster(transport, transport.nodes)
        cluster.refresh()
        formation.join(cluster, 4, 1, Deadline(120), [v for v in cluster.views if v.member])
    return load_seconds


def new_master_slots(nodes: LocalNodes) -> int:
    with DirectTransport(nodes.inputs(), PASSWORD) as transport:
        cluster = Cluster(transport, transport.nodes)
        cluster.refresh()
        pods = cluster.pod_of_id()
        return sum(
            e.slot_count
            for e in cluster.reference_entries()
            if pods.get(e.id) in ("redis-cluster-6", "redis-cluster-7")
        )


def scale_once(loopback: LoopbackAddresses, total: int, mover: str) -> tuple[float, int, int, float]:
    with started_nodes(loopback, 8) as nodes:
        load_seconds = scale_setup(nodes, total)
        started = time.monotonic()
        if mover == "bootstrap":
            with DirectTransport(nodes.inputs(), PASSWORD) as transport:
                cluster = Cluster(transport, transport.nodes)
                formation.rebalance(cluster, 4, Deadline(300), masters=_masters(cluster))
        else:
            redis_cli("--cluster", "rebalance", f"{nodes.nodes[0].ip}:6379", "--cluster-use-empty-masters")
            wait_converged(nodes, 4)
        seconds = time.monotonic() - started
        return seconds, count_keys(nodes.nodes), new_master_slots(nodes), load_seconds


def _masters(cluster: Cluster) -> list[str]:
    cluster.refresh()
    pods = cluster.pod_of_id()
    return [pods[e.id] for e in cluster.reference_entries() if e.is_master]


def bench_scale(loopback: LoopbackAddresses, total: int) -> None:
    print(f"\n== Scale out 3 -> 4 shards with {total:,} keys: moving slots onto the new master ==")
    results = {}
    for mover in ("bootstrap", "redis-cli rebalance"):
        seconds, keys_after, slots, load_seconds = scale_once(
            loopback, total, "bootstrap" if mover == "bootstrap" else "cli"
        )
        moved = total * slots / SLOTS
        results[mover] = seconds
        print(
            f"{mover:20s}: {seconds:6.2f}s for {slots} slots (~{moved:,.0f} keys, {moved / seconds:,.0f} keys/s); "
            f"keys after {keys_after:,} ({'none lost' if keys_after == total else f'{total - keys_after} LOST'}); "
            f"load took {load_seconds:.1f}s"
        )
    ratio = results["redis-cli rebalance"] / results["bootstrap"]
    print(f"speed-up over redis-cli rebalance: {ratio:.2f}x (target >= 2x)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-bootstrap", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(f"machine: {machine()}")
    with LoopbackAddresses(BENCHMARK_OCTETS) as loopback:
        if not args.skip_bootstrap:
            bench_bootstrap(loopback, args.repeats)
        if not args.skip_scale:
            bench_scale(loopback, args.keys)


if __name__ == "__main__":
    main()
