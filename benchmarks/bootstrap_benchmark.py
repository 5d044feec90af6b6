"""Figures for the cluster bootstrap, beside each engine's own CLI doing the same job, per engine.

Every measure runs once per engine (`--engines redis valkey`, both by default) on the same
machine, the nodes running that engine's server and the bare contender being that engine's
own CLI (`redis-cli`, `valkey-cli`, from .engines/: never the one on PATH by name):

1. Bootstrap: N ready, empty nodes -> converged cluster (every node cluster_state:ok,
   knows N nodes, 16384 slots served, every replica master_link_status:up), for 6 and 30
   nodes: `ensure_cluster` vs `<engine>-cli --cluster create` followed by the same
   convergence wait (polled as tightly as the bootstrap polls, every POLL_SECONDS).
2. Scale out 3 -> 4 shards with 1,000,000 keys: after the new master and its replica have
   joined (same code for both), moving a quarter of the slots onto the new master with
   the bootstrap's `rebalance` vs `<engine>-cli --cluster rebalance --cluster-use-empty-masters`
   with its defaults, each on a fresh, identical setup; keys counted after.
3. Scale in 4 -> 3 shards with 1,000,000 keys, until the six nodes that stay are converged:
   the scale-in step (`cluster_logic.scale_in.shrink`) vs what a user does by hand with the
   engine's CLI: `--cluster rebalance --cluster-weight <master>=0` for the masters the
   scale-in plan drains, then `--cluster del-node` for each node that goes.

The nodes are the tests' (`testkit.redis_nodes`): the stack's config for the engine (AOF on,
as in a pod) with a 2 s node timeout, started through the entrypoint. The runs alternate
between the engines, so that a change in the machine's load spreads over both columns.
The table at the end has a column per engine and valkey / redis.

`--tls` runs every node with the stack's TLS on (TLS only: clients, replication, the cluster
bus), the bootstrap and the CLI speaking TLS to them.

Run from the project root:
  .venv/bin/python -m benchmarks.bootstrap_benchmark [--engines redis valkey] [--keys N]
      [--repeats N] [--node-counts 6 30] [--skip-bootstrap] [--skip-scale] [--skip-scale-in] [--tls]
Loopback only (locked addresses in 127.0.30.0/24 - 127.0.39.0/24); every server is
stopped by pid.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

from redis.crc import key_slot

from benchmarks.machine_info import header_lines
from benchmarks.side_by_side import (
    Row,
    add_engines_argument,
    engine_binaries,
    median,
    print_results,
    seconds_with_runs,
)
from cluster_logic import formation, health, scale_in
from cluster_logic.cluster import Cluster
from cluster_logic.deadline import Deadline
from cluster_logic.model import SLOTS
from cluster_logic.reconcile import ensure_cluster
from sandbox.engine_binaries import EngineBinaries
from testkit.redis_nodes import (
    BENCHMARK_OCTETS,
    PASSWORD,
    LocalNodes,
    LoopbackAddresses,
    cli_environment,
    cli_tls_args,
    count_keys,
    fast_settings,
)


def engine_cli(binaries: EngineBinaries, nodes: LocalNodes, *args: str, timeout: float = 600) -> None:
    """The engine's own CLI (by its path) against `nodes` (over TLS when they speak it), the
    password in the environment, never on argv."""
    done = subprocess.run(
        [binaries.cli, *cli_tls_args(nodes.nodes[0]), *args],
        env=cli_environment(PASSWORD),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{binaries.engine.cli} {' '.join(args[:2])} failed: {done.stdout[-800:]} {done.stderr[-400:]}"
        )


@contextmanager
def started_nodes(
    loopback: LoopbackAddresses, binaries: EngineBinaries, count: int, tls: bool = False
) -> Iterator[LocalNodes]:
    """`count` started nodes of the engine in a directory of their own, on addresses no
    other set of the run had (TLS only with `tls`); afterwards every process is stopped and
    the data deleted."""
    settings = fast_settings(binaries.engine.name, tls="true" if tls else "false")
    with (
        tempfile.TemporaryDirectory(prefix=f"bootstrap-benchmark-{binaries.engine.name}-") as root,
        LocalNodes(Path(root), loopback, settings=settings, binaries=binaries) as nodes,
    ):
        if nodes.settings.engine != binaries.engine.name:
            raise RuntimeError(f"nodes set up for {nodes.settings.engine}, not {binaries.engine.name}")
        nodes.started(count)
        yield nodes


def wait_converged(nodes: LocalNodes, shards: int, timeout: float = 120) -> None:
    """The bootstrap's own convergence wait, polled as tightly as the bootstrap polls."""
    with nodes.transport() as transport:
        health.wait_converged(Cluster(transport, transport.nodes), Deadline(timeout), shards)


# ---------------------------------------------------------------------------------------
# 1. Bootstrap.
# ---------------------------------------------------------------------------------------


def bootstrap_once(
    loopback: LoopbackAddresses, binaries: EngineBinaries, count: int, use_bootstrap: bool, tls: bool = False
) -> float:
    shards = count // 2
    with started_nodes(loopback, binaries, count, tls) as nodes:
        started = time.monotonic()
        if use_bootstrap:
            with nodes.transport() as transport:
                topology = ensure_cluster(transport, shards, 1, 300, mode="create")
            assert topology["state"] == "ok", topology["problems"]
        else:
            engine_cli(
                binaries,
                nodes,
                "--cluster",
                "create",
                *[f"{n.ip}:{n.port}" for n in nodes.nodes],
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            )
            wait_converged(nodes, shards)
        return time.monotonic() - started


@dataclass
class BootstrapRuns:
    ours: list[float]
    bare: list[float]


def bench_bootstrap(
    loopback: LoopbackAddresses,
    engines: Mapping[str, EngineBinaries],
    counts: list[int],
    repeats: int,
    tls: bool = False,
) -> dict[int, dict[str, BootstrapRuns]]:
    print("\n== Bootstrap: ready empty nodes -> converged cluster (1 replica per shard) ==", flush=True)
    results: dict[int, dict[str, BootstrapRuns]] = {}
    for count in counts:
        results[count] = {name: BootstrapRuns([], []) for name in engines}
        for i in range(repeats):
            for name, binaries in engines.items():
                runs = results[count][name]
                runs.bare.append(bootstrap_once(loopback, binaries, count, use_bootstrap=False, tls=tls))
                runs.ours.append(bootstrap_once(loopback, binaries, count, use_bootstrap=True, tls=tls))
                print(
                    f"  {count} nodes, run {i + 1}, {name}: bootstrap {runs.ours[-1]:.2f}s, "
                    f"{binaries.engine.cli} create + sync wait {runs.bare[-1]:.2f}s",
                    flush=True,
                )
    return results


def bootstrap_rows(results: dict[int, dict[str, BootstrapRuns]], engines: Mapping[str, EngineBinaries]) -> list[Row]:
    rows = []
    for count, per_engine in results.items():
        ours = {name: median(r.ours) for name, r in per_engine.items()}
        bare = {name: median(r.bare) for name, r in per_engine.items()}
        rows.append(
            Row(
                f"{count} ready nodes to full convergence: the bootstrap",
                {name: seconds_with_runs(r.ours) for name, r in per_engine.items()},
                ours,
            )
        )
        rows.append(
            Row(
                f"{count} ready nodes: the engine's CLI `--cluster create` + replica-sync wait",
                {name: f"`{engines[name].engine.cli}`: {seconds_with_runs(r.bare)}" for name, r in per_engine.items()},
                bare,
            )
        )
        rows.append(
            Row(
                f"{count} nodes: bootstrap / CLI (target ≤ 1.2x)",
                {name: f"{ours[name] / bare[name]:.2f}x" for name in per_engine},
            )
        )
    return rows


# ---------------------------------------------------------------------------------------
# 2. Scale out 3 -> 4 shards.
# ---------------------------------------------------------------------------------------


def load_keys(nodes: LocalNodes, total: int, count: int = 6) -> float:
    """Loads `total` keys into the cluster of the first `count` nodes with MSETs grouped by
    slot, one pipeline thread per master."""
    with nodes.transport(nodes.nodes[:count]) as transport:
        cluster = Cluster(transport, transport.nodes[:count])
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
    with nodes.transport(nodes.nodes[:6]) as transport:
        ensure_cluster(transport, 3, 1, 120, mode="create")
    load_seconds = load_keys(nodes, total)
    loaded = count_keys(nodes.nodes[:6])
    if loaded != total:
        raise RuntimeError(f"{loaded:,} keys after loading {total:,}")
    with nodes.transport() as transport:
        cluster = Cluster(transport, transport.nodes)
        cluster.refresh()
        formation.join(cluster, 4, 1, Deadline(120), [v for v in cluster.views if v.member])
    return load_seconds


def new_master_slots(nodes: LocalNodes) -> int:
    with nodes.transport() as transport:
        cluster = Cluster(transport, transport.nodes)
        cluster.refresh()
        pods = cluster.pod_of_id()
        return sum(
            e.slot_count
            for e in cluster.reference_entries()
            if pods.get(e.id) in ("redis-cluster-6", "redis-cluster-7")
        )


def _masters(cluster: Cluster) -> list[str]:
    cluster.refresh()
    pods = cluster.pod_of_id()
    return [pods[e.id] for e in cluster.reference_entries() if e.is_master]


@dataclass
class ScaleRun:
    seconds: float
    keys_after: int
    slots: int
    load_seconds: float


def scale_once(
    loopback: LoopbackAddresses, binaries: EngineBinaries, total: int, use_bootstrap: bool, tls: bool = False
) -> ScaleRun:
    with started_nodes(loopback, binaries, 8, tls) as nodes:
        load_seconds = scale_setup(nodes, total)
        started = time.monotonic()
        if use_bootstrap:
            with nodes.transport() as transport:
                cluster = Cluster(transport, transport.nodes)
                formation.rebalance(cluster, 4, Deadline(300), masters=_masters(cluster))
        else:
            engine_cli(
                binaries, nodes, "--cluster", "rebalance", f"{nodes.nodes[0].ip}:6379", "--cluster-use-empty-masters"
            )
            wait_converged(nodes, 4)
        seconds = time.monotonic() - started
        return ScaleRun(seconds, count_keys(nodes.nodes), new_master_slots(nodes), load_seconds)


def bench_movers(
    title: str,
    once: Callable[[LoopbackAddresses, EngineBinaries, int, bool, bool], ScaleRun],
    labels: tuple[str, str],
    loopback: LoopbackAddresses,
    engines: Mapping[str, EngineBinaries],
    total: int,
    tls: bool = False,
) -> dict[str, dict[str, ScaleRun]]:
    """`once` per engine with the product's mover, then with the engine's CLI (`labels`: how
    each is named; `{cli}` is the engine's CLI), each on a fresh, identical setup."""
    print(f"\n== {title} ==", flush=True)
    results: dict[str, dict[str, ScaleRun]] = {}
    for name, binaries in engines.items():
        results[name] = {}
        for mover, use_bootstrap in (("bootstrap", True), ("cli", False)):
            run = once(loopback, binaries, total, use_bootstrap, tls)
            results[name][mover] = run
            label = labels[0] if use_bootstrap else labels[1].format(cli=binaries.engine.cli)
            print(
                f"  {name}: {label}: {run.seconds:.2f}s for {run.slots} slots; keys after {run.keys_after:,}; "
                f"load took {run.load_seconds:.1f}s",
                flush=True,
            )
    return results


def bench_scale(
    loopback: LoopbackAddresses, engines: Mapping[str, EngineBinaries], total: int, tls: bool = False
) -> dict[str, dict[str, ScaleRun]]:
    return bench_movers(
        f"Scale out 3 -> 4 shards with {total:,} keys: moving slots onto the new master",
        scale_once,
        ("bootstrap", "{cli} rebalance"),
        loopback,
        engines,
        total,
        tls,
    )


def scale_cell(run: ScaleRun, total: int) -> str:
    moved = total * run.slots / SLOTS
    after = "none lost" if run.keys_after == total else f"{total - run.keys_after:,} LOST"
    return f"{run.seconds:.2f} s, {moved / run.seconds:,.0f} keys/s ({run.slots} slots, ~{moved:,.0f} keys; {after})"


def mover_rows(
    results: dict[str, dict[str, ScaleRun]],
    engines: Mapping[str, EngineBinaries],
    total: int,
    title: str,
    ours: str,
    cli_what: str,
    target: str,
    who: str = "",
) -> list[Row]:
    """Ours against the engine's CLI for one slot-moving operation, and the speed-up of
    `who` (default `ours`)."""
    return [
        Row(
            f"{title}: {ours}",
            {name: scale_cell(r["bootstrap"], total) for name, r in results.items()},
            {name: r["bootstrap"].seconds for name, r in results.items()},
        ),
        Row(
            f"{title}: the engine's CLI {cli_what}",
            {name: f"`{engines[name].engine.cli}`: {scale_cell(r['cli'], total)}" for name, r in results.items()},
            {name: r["cli"].seconds for name, r in results.items()},
        ),
        Row(
            f"{title}: speed-up of {who or ours} over the CLI ({target})",
            {name: f"{r['cli'].seconds / r['bootstrap'].seconds:.2f}x faster" for name, r in results.items()},
        ),
    ]


def scale_rows(results: dict[str, dict[str, ScaleRun]], engines: Mapping[str, EngineBinaries], total: int) -> list[Row]:
    return mover_rows(
        results,
        engines,
        total,
        f"scale-out 3 → 4 shards, {total:,} keys",
        "the bootstrap's rebalance",
        "`--cluster rebalance --cluster-use-empty-masters`",
        "target ≥ 2x",
        who="the bootstrap",
    )


# ---------------------------------------------------------------------------------------
# 3. Scale in 4 -> 3 shards.
# ---------------------------------------------------------------------------------------


def scale_in_once(
    loopback: LoopbackAddresses, binaries: EngineBinaries, total: int, use_bootstrap: bool, tls: bool = False
) -> ScaleRun:
    with started_nodes(loopback, binaries, 8, tls) as nodes:
        with nodes.transport() as transport:
            ensure_cluster(transport, 4, 1, 120, mode="create")
        load_seconds = load_keys(nodes, total, count=8)
        if count_keys(nodes.nodes) != total:
            raise RuntimeError(f"{count_keys(nodes.nodes):,} keys after loading {total:,}")
        with nodes.transport() as transport:
            _, plan = scale_in.observe(transport, 8, 3, 1, Deadline(60))
        started = time.monotonic()
        if use_bootstrap:
            with nodes.transport() as transport:
                scale_in.shrink(transport, 8, 3, 1, 600)
        else:
            ids = {node.pod: node.client().execute_command("CLUSTER", "MYID") for node in nodes.nodes}
            seed = f"{nodes.nodes[0].ip}:6379"
            weights = [arg for pod in plan.drained for arg in ("--cluster-weight", f"{ids[pod]}=0")]
            engine_cli(binaries, nodes, "--cluster", "rebalance", seed, *weights)
            for pod in plan.forget:
                engine_cli(binaries, nodes, "--cluster", "del-node", seed, ids[pod])
            with nodes.transport(nodes.nodes[:6]) as transport:
                health.wait_converged(Cluster(transport, transport.nodes), Deadline(300), 3)
        seconds = time.monotonic() - started
        moved = sum(len(slots) for _, _, slots in plan.moves)
        return ScaleRun(seconds, count_keys(nodes.nodes[:6]), moved, load_seconds)


def bench_scale_in(
    loopback: LoopbackAddresses, engines: Mapping[str, EngineBinaries], total: int, tls: bool = False
) -> dict[str, dict[str, ScaleRun]]:
    return bench_movers(
        f"Scale in 4 -> 3 shards with {total:,} keys: emptying and removing two pods",
        scale_in_once,
        ("scale-in step", "{cli} rebalance + del-node"),
        loopback,
        engines,
        total,
        tls,
    )


def scale_in_rows(
    results: dict[str, dict[str, ScaleRun]], engines: Mapping[str, EngineBinaries], total: int
) -> list[Row]:
    return mover_rows(
        results,
        engines,
        total,
        f"scale-in 4 → 3 shards, {total:,} keys",
        "the scale-in step",
        "`--cluster rebalance --cluster-weight <id>=0` + `del-node`",
        "target ≥ 4x on Redis",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_engines_argument(parser)
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys loaded before the scale-out")
    parser.add_argument("--repeats", type=int, default=5, help="bootstrap runs per engine and node count")
    parser.add_argument("--node-counts", type=int, nargs="+", default=[6, 30], help="bootstrap sizes (even)")
    parser.add_argument("--skip-bootstrap", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--skip-scale-in", action="store_true")
    parser.add_argument("--tls", action="store_true", help="the nodes speak TLS only, as with the stack's `tls`")
    args = parser.parse_args(argv)
    if any(count < 6 or count % 2 for count in args.node_counts):
        parser.error("--node-counts: even numbers of at least 6 (3 shards, 1 replica each)")
    logging.basicConfig(level=logging.WARNING)
    engines = engine_binaries(args.engines)
    for line in header_lines(engines.values()):
        print(line)
    print(f"tls: {'on' if args.tls else 'off'}")
    rows: list[Row] = []
    with LoopbackAddresses(BENCHMARK_OCTETS) as loopback:
        if not args.skip_bootstrap:
            rows += bootstrap_rows(
                bench_bootstrap(loopback, engines, args.node_counts, args.repeats, args.tls), engines
            )
        if not args.skip_scale:
            rows += scale_rows(bench_scale(loopback, engines, args.keys, args.tls), engines, args.keys)
        if not args.skip_scale_in:
            rows += scale_in_rows(bench_scale_in(loopback, engines, args.keys, args.tls), engines, args.keys)
    print_results(f"Bootstrap, scale-out and scale-in per engine (bootstrap: median of {args.repeats})", engines, rows)


if __name__ == "__main__":
    main()
