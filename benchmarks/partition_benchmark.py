"""What partitions cost, per engine and configuration: the long scenarios behind docs/operations.md's "What you can lose" (not a test; prints tables).

Each scenario runs once per engine on a fresh sandbox of the dev stack (3 shards, a replica
each, zones a/b/c), in three configurations side by side in the same run:
- `product, cache`: the product's defaults (`durability: cache`);
- `product, bounded`: the same with `durability: bounded`;
- `seed`: the seed's `cluster-node-timeout` (15000 ms), `cache`, everything else the
  product's (benchmarks.reliability_benchmark.SeedTimeoutSandbox).
The partitions are `Sandbox.partition` (nftables, sandbox/partitions.py): every packet
between the cut pods and the others on the client and bus ports is dropped, both ways.
The clients (one process, 127.0.0.1) keep reaching every pod (`--keep-client`): a client on
the cut side, the case that loses writes. A `LossChecker` (testkit.loss_checker) writes
plain and `WAIT 1` writes all along and reads every acknowledged one back after the heal; a
`MajorityProbe` asks the majority side's copy of the cut shard for a write every 10 ms.

Scenarios:
1. isolated master: a master cut off for `--cut-seconds` (20), then healed.
2. zone cut off: every pod of one zone (a master and another shard's replica) for 20 s.
3. flapping links: a master cut and healed again and again for 30 s, each cut and each
   heal 0.3 to 2.5 s (around the product's node timeout), then healed for good.
4. a partition during a failover: a master killed (-9); 1 s later, while the cluster
   detects it, its replica is cut off for 10 s, then healed; the killed pod restarts once
   its replica is promoted (a `bounded` shard takes writes again only then).
5. a partition during a slot migration: 200,000 keys, a scale-out to 4 shards (`up
   --shards 4`), and once slots move, the new master cut off for 10 s, then healed; then
   `up --shards 4` again.
Figures per scenario: the plain writes acknowledged during the cut and lost after the heal,
the window (when the last of those was acknowledged, seconds after the cut), the
WAIT-acknowledged writes lost, and when the majority side took a write for the cut shard.

And 7, `latency`: what `WAIT` costs with no fault: `--latency-writes` (5000) SETs to one
master, each alone through the cluster client and each with `WAIT 1 1000` pipelined on the
master's connection; median and p99.

And 6: how fast a `bounded` master stops: `--stop-cuts` (20) cuts of a master with its
clients, each until the checker's writes to it fail, healed, the cluster healthy again
before the next; the window of each cut.

Run from the project root, as root (nftables):
  .venv/bin/python -m benchmarks.partition_benchmark [--engines redis valkey]
      [--scenarios isolated zone flapping failover migration stop latency] [--cut-seconds 20]
      [--stop-cuts 20] [--latency-writes 5000] [--node-timeout-ms N] [--configurations ...]
Loopback only (127.0.55.0/24, 127.0.56.0/24, 127.0.59.0/24); every server is stopped by pid, every rule removed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import redis
from redis.crc import key_slot

from benchmarks.machine_info import header_lines
from benchmarks.reliability_benchmark import SEED_NODE_TIMEOUT_MS, SeedTimeoutSandbox, check_running
from benchmarks.side_by_side import Row, add_engines_argument, engine_binaries, print_results
from cluster_logic.errors import BootstrapError
from sandbox.engine_binaries import EngineBinaries
from sandbox.local_cluster import Sandbox
from testkit.loss_checker import LossChecker, Losses, MajorityProbe
from testkit.sandbox_support import (
    ConfiguredSandbox,
    ManagedSandbox,
    cluster_client,
    masters,
    node_client,
    record_of,
    replica_of,
    slots_of,
    snapshot,
    wait_healthy,
    wait_replication_settled,
)
from testkit.writers import lost_keys, write_keys

# The latency runs have an octet of their own: they can run beside the others.
OCTET_PRODUCT, OCTET_SEED, OCTET_LATENCY = 55, 56, 59
CONFIGURATIONS = {
    "product, cache": {"durability": "cache"},
    "product, bounded": {"durability": "bounded"},
    "seed": None,
}
SCENARIOS = ("isolated", "zone", "flapping", "failover", "migration", "stop", "latency")
FLAP_SECONDS = 30.0
FLAP_RANGE = (0.3, 2.5)
FAILOVER_CUT_SECONDS = 10.0
MIGRATION_KEYS = 200_000
MIGRATION_CUT_SECONDS = 10.0

T = TypeVar("T")


def with_configuration(
    work: Path,
    name: str,
    binaries: EngineBinaries,
    configuration: str,
    body: Callable[[Sandbox], T],
    node_timeout_ms: Optional[int] = None,
    octet: int = OCTET_PRODUCT,
) -> T:
    """`body` on a new sandbox of the engine in `configuration`, stopped by pid (and healed)
    afterwards whatever happened."""
    root = work / f"{binaries.engine.name}-{name}-{configuration.replace(', ', '-')}"
    config = CONFIGURATIONS[configuration]
    if config is not None and node_timeout_ms is not None:
        config = {**config, "nodeTimeoutMs": str(node_timeout_ms)}
    common: dict[str, Any] = dict(root=root, stack="dev", engine=binaries.engine.name, binaries=binaries)
    if config is None:
        sandbox: Sandbox = SeedTimeoutSandbox(third_octet=OCTET_SEED, **common)
    else:
        sandbox = ConfiguredSandbox(third_octet=octet, config=config, **common)
    managed = ManagedSandbox(root, sandbox.third_octet, sandbox=sandbox)
    try:
        sandbox.up()
        check_running(sandbox, binaries)
        wait_replication_settled(sandbox)
        return body(sandbox)
    finally:
        leftovers = managed.close()
        if leftovers:
            print(f"warning: {leftovers}", file=sys.stderr)


@dataclass
class Outcome:
    losses: Losses
    majority_after: Optional[float]  # seconds after the cut the majority side took a write (None: not before the heal)
    cut_seconds: float
    notes: str = ""

    def cell(self) -> str:
        losses = self.losses
        window = "-" if losses.window is None else f"{losses.window:.2f} s"
        acknowledging = (
            f"all {self.cut_seconds:.0f} s" if losses.acknowledging is None else f"{losses.acknowledging:.2f} s"
        )
        majority = (
            f"{self.majority_after:.2f} s"
            if self.majority_after is not None and self.majority_after < self.cut_seconds
            else f"not within the {self.cut_seconds:.0f} s cut"
        )
        text = (
            f"plain: {losses.lost_during_cut:,} of {losses.acknowledged_during_cut:,} acknowledged during the cut lost"
            f" ({len(losses.acknowledged_lost):,} of {losses.acknowledged:,} in all), the last lost acknowledged"
            f" at {window}; cut-off side acknowledged for {acknowledging}; "
            f"WAIT: {len(losses.durable_lost):,} of {losses.durable:,} lost; majority side writes: {majority}"
        )
        return text + (f"; {self.notes}" if self.notes else "")


def _heir_probe(sb: Sandbox, master: str) -> MajorityProbe:
    state = sb.load()
    assert state is not None
    heir = record_of(state, replica_of(sb, master))
    return MajorityProbe([(heir.host, heir.port)], min(slots_of(masters(sb)[master])), state.password)


def _after(probe: MajorityProbe, cut: float) -> Optional[float]:
    first = probe.first_success()
    return None if first is None else first - cut


def _checker(sb: Sandbox, slots=None) -> LossChecker:
    return LossChecker(lambda: cluster_client(sb, retries=0, socket_timeout=1.0), slots=slots)


def _heal_and_settle(sb: Sandbox, checker: LossChecker, slots) -> float:
    sb.heal()
    healed = checker.mark("heal")
    wait_healthy(sb, timeout=120)
    checker.plain.wait_for_success_after(healed, slots, timeout=120)
    return healed


# ---------------------------------------------------------------------------------------
# The scenarios.
# ---------------------------------------------------------------------------------------


def isolated_master(sb: Sandbox, cut_seconds: float) -> Outcome:
    victim, facts = sorted(masters(sb).items())[0]
    slots = slots_of(facts)
    checker, probe = _checker(sb, slots), _heir_probe(sb, victim)
    with checker, probe:
        checker.start()
        cut = checker.mark("cut")
        sb.partition([victim], keep_client=True)
        time.sleep(max(0.0, cut + cut_seconds - time.monotonic()))
        _heal_and_settle(sb, checker, slots)
        majority = _after(probe, cut)
        losses = checker.report()
    return Outcome(losses, majority, cut_seconds)


def zone_cut(sb: Sandbox, cut_seconds: float) -> Outcome:
    state = sb.load()
    assert state is not None
    owners = masters(sb)
    victim = sorted(owners)[0]
    zone = record_of(state, victim).zone
    doomed = [record.pod for record in state.nodes if record.zone == zone]
    slots = slots_of(owners[victim])
    # Every slot: the shard whose replica is in the zone shows what `bounded` does to it.
    checker, probe = _checker(sb), _heir_probe(sb, victim)
    with checker, probe:
        checker.start()
        cut = checker.mark("cut")
        sb.partition(doomed, keep_client=True)
        time.sleep(max(0.0, cut + cut_seconds - time.monotonic()))
        healed = _heal_and_settle(sb, checker, slots)
        majority = _after(probe, cut)
        others = [a for a in checker.plain.attempts if a.slot not in slots and cut <= a.started <= healed and not a.ok]
        losses = checker.report()
    return Outcome(
        losses,
        majority,
        cut_seconds,
        f"cut: {', '.join(doomed)}; writes refused on the other shards during the cut: {len(others):,}",
    )


def flapping(sb: Sandbox, _cut_seconds: float) -> Outcome:
    victim, facts = sorted(masters(sb).items())[0]
    slots = slots_of(facts)
    before = {pod: f.id for pod, f in masters(sb).items()}
    checker, probe = _checker(sb, slots), _heir_probe(sb, victim)
    flaps = 0
    with checker, probe:
        checker.start()
        cut = checker.mark("cut")
        ends = cut + FLAP_SECONDS
        while time.monotonic() < ends:
            sb.partition([victim], keep_client=True)
            flaps += 1
            time.sleep(random.uniform(*FLAP_RANGE))
            sb.heal()
            time.sleep(random.uniform(*FLAP_RANGE))
        settled_from = time.monotonic()
        _heal_and_settle(sb, checker, slots)
        settled = time.monotonic() - settled_from
        majority = _after(probe, cut)
        losses = checker.report()
    after = {pod: f.id for pod, f in masters(sb).items()}
    return Outcome(
        losses,
        majority,
        FLAP_SECONDS,
        f"{flaps} cuts; masters {'unchanged' if after == before else 'changed'}; healthy {settled:.1f} s after the last",
    )


def failover_partition(sb: Sandbox, _cut_seconds: float) -> Outcome:
    victim, facts = sorted(masters(sb).items())[0]
    slots = slots_of(facts)
    heir = replica_of(sb, victim)
    checker, probe = _checker(sb, slots), _heir_probe(sb, victim)
    with checker, probe:
        checker.start()
        sb.kill(victim)
        killed = time.monotonic()
        time.sleep(1.0)
        cut = checker.mark("cut")
        sb.partition([heir], keep_client=True)
        time.sleep(FAILOVER_CUT_SECONDS)
        sb.heal()
        healed = checker.mark("heal")
        # The killed pod comes back once its replica took over (as a pod restarts on EKS):
        # under `bounded` the promoted replica takes no write before it has a replica again.
        deadline = time.monotonic() + 60
        while heir not in masters(sb) and time.monotonic() < deadline:
            time.sleep(0.1)
        sb.restart([victim])
        served = checker.plain.wait_for_success_after(healed, slots, timeout=180)
        wait_healthy(sb, timeout=120)
        majority = _after(probe, cut)
        losses = checker.report()
    state = snapshot(sb)
    return Outcome(
        losses,
        majority,
        FAILOVER_CUT_SECONDS,
        f"write outage from the kill {served.ended - killed:.2f} s; {heir} {state[heir].role}, {victim} {state[victim].role}",
    )


def migration_partition(sb: Sandbox, _cut_seconds: float) -> Outcome:
    with cluster_client(sb, socket_timeout=30) as client:
        bulk = write_keys(client, "bulk", MIGRATION_KEYS)
    before = snapshot(sb)
    checker = _checker(sb)
    results: dict[str, Any] = {}

    def scale_out() -> None:
        try:
            results["first"] = sb.up(shards=4)["state"]
        except (BootstrapError, Exception) as error:  # noqa: BLE001 - reported, then `up` again
            results["first"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"

    with checker:
        checker.start()
        thread = threading.Thread(target=scale_out, daemon=True)
        thread.start()
        # The new master that takes slots: marked importing (MIGRATE), or holding keys
        # already (Valkey's atomic slot migration marks no slot).
        original = set(before)
        target = None
        deadline = time.monotonic() + 120
        while target is None and time.monotonic() < deadline and thread.is_alive():
            state = sb.load()
            for record in state.nodes if state is not None else []:
                if record.pod in original or record.pid is None:
                    continue
                client = node_client(state, record, timeout=1.0)
                try:
                    if client.info("replication")["role"] == "master" and (
                        client.dbsize() > 0 or "<-" in client.execute_command("CLUSTER", "NODES")
                    ):
                        target = record.pod
                except (redis.RedisError, OSError):
                    pass
                finally:
                    client.close()
            time.sleep(0.01)
        if target is None:
            thread.join()
            raise RuntimeError(f"no slot was seen moving: {results}")
        checker.mark("cut")
        sb.partition([target], keep_client=True)
        time.sleep(MIGRATION_CUT_SECONDS)
        sb.heal()
        checker.mark("heal")
        thread.join(timeout=600)
        wait_healthy(sb, timeout=120)
        began = time.monotonic()
        try:
            results["second"] = sb.up(shards=4)["state"]
        except BootstrapError as error:
            results["second"] = f"BootstrapError: {str(error).splitlines()[0][:160]}"
        results["second_seconds"] = time.monotonic() - began
        wait_healthy(sb, timeout=120)
        losses = checker.report()
    with cluster_client(sb, socket_timeout=30) as client:
        bulk_lost = len(lost_keys(client, bulk))
    facts = snapshot(sb)
    open_slots = sum(len(f.migrating) + len(f.importing) for f in facts.values())
    owners = sum(1 for f in facts.values() if f.role == "master" and f.slots)
    return Outcome(
        losses,
        None,
        MIGRATION_CUT_SECONDS,
        f"target {target} cut; the scale-out: {results['first']}; `up` again: {results['second']} in "
        f"{results['second_seconds']:.1f} s; {owners} masters with slots, {open_slots} slots open; "
        f"bulk keys lost: {bulk_lost:,} of {len(bulk):,}",
    )


def bounded_stop(sb: Sandbox, cuts: int) -> list[float]:
    """The window of `cuts` cuts of a master with its clients: when, after the cut, it
    acknowledged its last plain write before it refused one."""
    windows = []
    for _ in range(cuts):
        victim, facts = sorted(masters(sb).items())[0]
        slots = slots_of(facts)
        checker = _checker(sb, slots)
        with checker:
            checker.start()
            cut = checker.mark("cut")
            sb.partition([victim], keep_client=True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                recent = [a for a in list(checker.plain.attempts)[-20:] if a.started > cut]
                if len(recent) >= 5 and not any(a.ok for a in recent[-5:]):
                    break
                time.sleep(0.05)
            _heal_and_settle(sb, checker, slots)
            losses = checker.report()
        if losses.acknowledging is None:
            raise RuntimeError(f"the cut-off master never refused a write: {losses.summary()}")
        windows.append(losses.acknowledging)
        wait_replication_settled(sb, timeout=120)
    return windows


def wait_latency(sb: Sandbox, writes: int) -> dict[str, list[float]]:
    """`writes` SETs to one master, each alone and each followed by `WAIT 1 1000` on the same
    connection (pipelined, as docs/operations.md shows), a client of one process on loopback:
    the latency of each, in seconds."""
    victim = sorted(masters(sb))[0]
    state = sb.load()
    assert state is not None
    cluster = cluster_client(sb)
    node = node_client(state, record_of(state, victim))
    slots = slots_of(masters(sb)[victim])
    keys = [f"latency:{n}" for n in range(writes * 40) if key_slot(f"latency:{n}".encode()) in slots][:writes]
    found: dict[str, list[float]] = {"plain": [], "wait": []}
    try:
        for key in keys:
            began = time.perf_counter()
            cluster.set(key, "x")
            found["plain"].append(time.perf_counter() - began)
            began = time.perf_counter()
            pipe = node.pipeline(transaction=False)
            pipe.set(key, "y")
            pipe.execute_command("WAIT", 1, 1000)
            _, acknowledged = pipe.execute()
            found["wait"].append(time.perf_counter() - began)
            if acknowledged < 1:
                raise RuntimeError(f"WAIT 1 returned {acknowledged} for {key}")
    finally:
        cluster.close()
        node.close()
    return found


def latency_cell(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"median {statistics.median(ordered) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms ({len(ordered):,} writes)"


RUNNERS: dict[str, tuple[str, Callable[[Sandbox, float], Outcome]]] = {
    "isolated": ("a master cut off with its clients", isolated_master),
    "zone": ("a zone cut off, clients on its side", zone_cut),
    "flapping": ("flapping links to a master", flapping),
    "failover": ("a partition during a failover", failover_partition),
    "migration": ("a partition during a slot migration", migration_partition),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_engines_argument(parser)
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--configurations", nargs="+", choices=list(CONFIGURATIONS), default=list(CONFIGURATIONS))
    parser.add_argument("--cut-seconds", type=float, default=20.0)
    parser.add_argument(
        "--node-timeout-ms", type=int, help="the product configurations with another cluster-node-timeout"
    )
    parser.add_argument("--stop-cuts", type=int, default=20)
    parser.add_argument("--latency-writes", type=int, default=5000)
    options = parser.parse_args(argv)
    engines = engine_binaries(options.engines)
    for line in header_lines(engines.values()):
        print(line)
    timeout = "the product's default" if options.node_timeout_ms is None else f"{options.node_timeout_ms} ms"
    print(f"product configurations: cluster-node-timeout {timeout}; seed: {SEED_NODE_TIMEOUT_MS} ms")
    work = Path(tempfile.mkdtemp(prefix="partition-benchmark-"))
    rows: list[Row] = []
    for scenario in options.scenarios:
        if scenario in ("stop", "latency"):
            continue
        label, runner = RUNNERS[scenario]
        for configuration in options.configurations:
            cells: dict[str, str] = {}
            for name, binaries in engines.items():
                outcome = with_configuration(
                    work,
                    scenario,
                    binaries,
                    configuration,
                    lambda sb, runner=runner: runner(sb, options.cut_seconds),
                    options.node_timeout_ms,
                )
                cells[name] = outcome.cell()
                print(f"  {label}, {configuration}, {name}: {cells[name]}", flush=True)
                print(f"    errors: {outcome.losses.errors}", flush=True)
            rows.append(Row(f"{label}: {configuration}", cells))
    if "stop" in options.scenarios:
        cells = {}
        figures: dict[str, Optional[float]] = {}
        for name, binaries in engines.items():
            windows = with_configuration(
                work,
                "stop",
                binaries,
                "product, bounded",
                lambda sb: bounded_stop(sb, options.stop_cuts),
                options.node_timeout_ms,
            )
            cells[name] = (
                f"max {max(windows):.2f} s, median {statistics.median(windows):.2f} s, min {min(windows):.2f} s "
                f"({len(windows)} cuts: {', '.join(f'{w:.2f}' for w in windows)})"
            )
            figures[name] = max(windows)
            print(f"  bounded stop, {name}: {cells[name]}", flush=True)
        rows.append(Row("`bounded`: last plain write acknowledged after the cut of a master", cells, figures))
    if "latency" in options.scenarios:
        found = {
            name: with_configuration(
                work,
                "latency",
                binaries,
                "product, cache",
                lambda sb: wait_latency(sb, options.latency_writes),
                options.node_timeout_ms,
                OCTET_LATENCY,
            )
            for name, binaries in engines.items()
        }
        for kind, label in (("plain", "a plain SET (RedisCluster.set)"), ("wait", "SET + `WAIT 1 1000`, pipelined")):
            cells = {name: latency_cell(f[kind]) for name, f in found.items()}
            figures = {name: statistics.median(f[kind]) for name, f in found.items()}
            rows.append(Row(f"write latency, no fault: {label}", cells, figures))
            print(f"  latency, {label}: {cells}", flush=True)
    print_results("Partitions per engine (one run per scenario and configuration)", engines, rows)
    try:
        work.rmdir()
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
