"""Figures for the sandbox cluster's behaviour under failures, per engine (not a test; prints a table).

Every measure runs once per engine (`--engines redis valkey`, both by default) on the same
machine, each sandbox running that engine's server and CLI (sandbox.engine_binaries):

1. Write outage after kill -9 of a master: the product's default cluster-node-timeout
   (components.stack_settings, the dev stack) beside the seed's 15000 ms, on the same machine. Outage = time
   from the SIGKILL until the first successful write to a key of the killed master's slots
   (a writer aimed at those slots only, redis-py RedisCluster). Median of --repeats runs,
   each on a fresh sandbox.
2. Write outage per master during a rolling restart (highest ordinal first, one pod at a
   time, each back Ready and the cluster healthy before the next), as the longest gap of
   failed writes to that master's keys (start of the first failed write to the end of the
   next successful one), with the failed writes and the acknowledged writes lost (read
   back once the roll is over). Variants:
   - SIGTERM only (no preStop), the engine's default shutdown;
   - the product's preStop handover (pre-stop.sh), then SIGTERM;
   - Valkey only (9.0+): SIGTERM only, after `CONFIG SET shutdown-on-sigterm failover` on
     every node (again on each restarted node before the next pod stops, as a restart
     loses runtime config; CONFIG GET checks it took each time): Valkey's native failover
     on shutdown, where the primary waits up to shutdown-timeout for its replicas, sends
     CLUSTER FAILOVER FORCE to the best one and exits.
   Before the next pod, the restarted one must be Ready, the cluster healthy and every
   replica in sync. Each pod comes back on a new address after --pod-down-seconds (0: at
   once, as `Sandbox.restart` does; 10: closer to a rescheduled pod on EKS, which is gone
   for longer than the node timeout).
3. `restart --all --new-ip` (Sandbox.restart(None, new_ip=True)): time until every node
   reports cluster_state:ok, until the sandbox's own wait (`Sandbox.wait_ok`, the
   bootstrap's view) is satisfied, and until the strict check of the tests holds (every
   node sees every other at its new address, linked, no fail flags). Also the same restart
   with every pod on an address no pod had before (Sandbox.restart hands a pod the address
   another pod just left).

The table at the end has a column per engine and valkey / redis where a ratio means something.

`--tls` runs every sandbox with TLS on (`Sandbox(tls=True)`): the writers, probes, hooks
and the bootstrap all speak TLS.

Run from the project root:
  .venv/bin/python -m benchmarks.reliability_benchmark [--engines redis valkey] [--repeats 3]
      [--pod-down-seconds 0 10] [--skip-failover] [--skip-seed] [--skip-rolling] [--skip-restart-all]
      [--tls]
Loopback only (127.0.50.0/24 - 127.0.54.0/24); every server is stopped by pid.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Mapping, Optional, TypeVar

from benchmarks.machine_info import header_lines
from benchmarks.side_by_side import (
    Row,
    add_engines_argument,
    engine_binaries,
    median,
    print_results,
    seconds_with_runs,
)
from components.stack_settings import StackSettings, parse_settings
from sandbox.engine_binaries import EngineBinaries
from sandbox.local_cluster import Sandbox, SandboxState
from testkit.sandbox_support import (
    ManagedSandbox,
    cluster_client,
    cluster_problems,
    fresh_addresses,
    masters,
    node_client,
    record_of,
    slots_of,
    start_pod,
    states_ok,
    stop_pod,
    wait_healthy,
    wait_ready,
    wait_replication_settled,
)
from testkit.writers import Writer, lost_keys, write_keys

SEED_NODE_TIMEOUT_MS = 15000
# The dev stack sets no nodeTimeoutMs: its sandbox runs the product's default.
PRODUCT_NODE_TIMEOUT_MS = StackSettings.node_timeout_ms
OCTET_DEFAULT, OCTET_SEED, OCTET_ROLLING, OCTET_RESTART, OCTET_RESTART_FRESH = 50, 51, 52, 53, 54
# Acknowledged writes a writer makes before the failure it measures, and after the last one.
WARM_UP_WRITES = 200
# Valkey's failover on shutdown: a value of shutdown-on-sigterm from Valkey 9.0 on.
NATIVE_FAILOVER_SINCE = (9, 0, 0)
RESTART_ALL_KEYS = 2000

T = TypeVar("T")


class SeedTimeoutSandbox(Sandbox):
    """The sandbox with the seed's cluster-node-timeout; every other setting as the stack's."""

    def settings(self, state: SandboxState) -> StackSettings:
        base = super().settings(state)
        seed = parse_settings(
            {
                "nodeTimeoutMs": str(SEED_NODE_TIMEOUT_MS),
                "shards": str(state.shards),
                "replicasPerShard": str(state.replicas_per_shard),
                "memoryLimit": base.memory_limit,
                "memoryRequest": base.memory_request,
                "maxmemoryPolicy": base.maxmemory_policy,
                "engine": state.engine,
                "namespace": base.namespace,
                "tls": "true" if base.tls else "false",
            }
        )
        if seed != dataclasses.replace(base, node_timeout_ms=SEED_NODE_TIMEOUT_MS):
            raise RuntimeError("the seed settings differ from the stack's in more than the node timeout")
        return seed


def node_timeout_in_conf(sb: Sandbox) -> int:
    conf = (sb.root / "nodes" / "redis-cluster-0" / "conf" / "redis.conf").read_text()
    return int(next(line.split()[1] for line in conf.splitlines() if line.startswith("cluster-node-timeout")))


def with_sandbox(
    root: Path,
    octet: int,
    binaries: EngineBinaries,
    body: Callable[[Sandbox], T],
    cls: type = Sandbox,
    tls: bool = False,
) -> T:
    """`body` on a new sandbox of the engine (its settings' engine and these binaries; TLS
    only with `tls`), stopped by pid afterwards whatever happened."""
    sandbox = cls(root=root, stack="dev", third_octet=octet, engine=binaries.engine.name, binaries=binaries, tls=tls)
    managed = ManagedSandbox(root, octet, sandbox=sandbox)
    try:
        return body(check_engine(managed.sandbox, binaries))
    finally:
        leftovers = managed.close()
        if leftovers:
            print(f"warning: swept processes that outlived Sandbox.down: {leftovers}", file=sys.stderr)


def check_engine(sb: Sandbox, binaries: EngineBinaries) -> Sandbox:
    """Refuses to measure a sandbox that would run anything but these binaries."""
    if sb.engine != binaries.engine.name or sb.initial_binaries != binaries:
        raise RuntimeError(f"sandbox set up for {sb.engine} ({sb.initial_binaries}), not {binaries.describe()}")
    return sb


def check_running(sb: Sandbox, binaries: EngineBinaries) -> None:
    """After `up`: the pods run this engine's server, from these binaries."""
    state = sb.load()
    if state is None or state.engine != binaries.engine.name or sb.binaries() != binaries:
        raise RuntimeError(f"the sandbox does not run {binaries.describe()}")
    if sb.settings(state).engine != binaries.engine.name:
        raise RuntimeError(f"the sandbox's settings name {sb.settings(state).engine}, not {binaries.engine.name}")
    for record in state.nodes:
        client = node_client(state, record)
        try:
            server = client.info("server")
        finally:
            client.close()
        version = server.get(f"{binaries.engine.name}_version")
        if binaries.engine.name == "redis":
            # Valkey reports redis_version 7.2.4 too, for old clients; only it has valkey_version.
            version = None if "valkey_version" in server else server.get("redis_version")
        if version != ".".join(map(str, binaries.version)):
            raise RuntimeError(f"{record.pod} runs {server.get('valkey_version') or server.get('redis_version')}")


def probe_client(sb: Sandbox):
    """The writers' client: redis-py RedisCluster following MOVED/ASK, but without retries
    of its own, so that each attempt is short (a refused connection fails in
    milliseconds) and the outage is measured to ~10 ms, not to the length of a retry loop."""
    return cluster_client(sb, retries=0, socket_timeout=1.0)


# ---------------------------------------------------------------------------------------
# 1. kill -9 of a master.
# ---------------------------------------------------------------------------------------


def failover_outage(sb: Sandbox, binaries: EngineBinaries, expected_timeout_ms: int) -> float:
    sb.up()
    check_running(sb, binaries)
    if node_timeout_in_conf(sb) != expected_timeout_ms:
        raise RuntimeError(f"the config has cluster-node-timeout {node_timeout_in_conf(sb)}, not {expected_timeout_ms}")
    wait_replication_settled(sb)
    victim, facts = sorted(masters(sb).items())[0]
    slots = slots_of(facts)
    writer = Writer(probe_client(sb), "probe", slots=slots).start()
    try:
        writer.wait_acknowledged(WARM_UP_WRITES)
        sb.kill(victim)
        # Sandbox.kill returns once the process is gone: no write after this reaches it.
        killed_at = time.monotonic()
        first = writer.wait_for_success_after(killed_at, slots, timeout=120)
    finally:
        writer.stop()
    return first.ended - killed_at


# ---------------------------------------------------------------------------------------
# 2. Rolling restart.
# ---------------------------------------------------------------------------------------

SIGTERM_ONLY, PRESTOP, NATIVE_FAILOVER = "sigterm", "prestop", "native"
VARIANT_LABELS = {
    SIGTERM_ONLY: "SIGTERM only (no preStop)",
    PRESTOP: "preStop handover, then SIGTERM",
    NATIVE_FAILOVER: "SIGTERM only, `shutdown-on-sigterm failover` (Valkey's native failover)",
}


def native_failover_supported(binaries: EngineBinaries) -> bool:
    return binaries.engine.name == "valkey" and binaries.version >= NATIVE_FAILOVER_SINCE


def failover_on_sigterm(sb: Sandbox, pods: Optional[list[str]] = None) -> None:
    """`CONFIG SET shutdown-on-sigterm failover` on `pods` (default: every pod), checked
    with CONFIG GET: runtime config, which a restarted node no longer has."""
    state = sb.load()
    assert state is not None
    for pod in pods if pods is not None else [n.pod for n in state.nodes]:
        client = node_client(state, record_of(state, pod))
        try:
            client.config_set("shutdown-on-sigterm", "failover")
            value = client.config_get("shutdown-on-sigterm").get("shutdown-on-sigterm", "")
        finally:
            client.close()
        if "failover" not in value.split():
            raise RuntimeError(f"{pod}: shutdown-on-sigterm is {value!r} after CONFIG SET ... failover")


def check_failover_on_sigterm(sb: Sandbox, pod: str) -> None:
    state = sb.load()
    assert state is not None
    client = node_client(state, record_of(state, pod))
    try:
        value = client.config_get("shutdown-on-sigterm").get("shutdown-on-sigterm", "")
    finally:
        client.close()
    if "failover" not in value.split():
        raise RuntimeError(f"{pod} is about to stop with shutdown-on-sigterm {value!r}, not failover")


@dataclasses.dataclass
class RollingResult:
    gaps: dict[str, float]  # original master pod -> longest failed-write gap
    slowest: dict[str, float]  # original master pod -> slowest successful write
    failed: int
    writes: int
    acknowledged: int
    lost: int  # acknowledged writes missing or changed once the roll is over


def rolling_restart(sb: Sandbox, binaries: EngineBinaries, variant: str, pod_down: float) -> RollingResult:
    sb.up()
    check_running(sb, binaries)
    wait_replication_settled(sb)
    if variant == NATIVE_FAILOVER:
        failover_on_sigterm(sb)
    shards = {pod: slots_of(facts) for pod, facts in sorted(masters(sb).items())}
    writers = {pod: Writer(probe_client(sb), f"shard-{pod}", slots=slots).start() for pod, slots in shards.items()}
    try:
        for writer in writers.values():
            writer.wait_acknowledged(WARM_UP_WRITES)
        pods = sorted((n.pod for n in sb.load().nodes), key=lambda p: int(p.rsplit("-", 1)[1]), reverse=True)
        for pod in pods:
            if variant == NATIVE_FAILOVER:
                check_failover_on_sigterm(sb, pod)
            stop_pod(sb, pod, prestop=variant == PRESTOP)
            time.sleep(pod_down)
            start_pod(sb, pod, host=fresh_addresses(sb.load(), 1)[0])
            if variant == NATIVE_FAILOVER:
                # Before anything else: the next stop may be this pod's new master's.
                failover_on_sigterm(sb, [pod])
            wait_ready(sb, pod)
            wait_healthy(sb, timeout=120)
            # Every replica in sync before the next pod: what the handover needs (the
            # readiness probe waits for a replica's sync as well; this holds either way).
            wait_replication_settled(sb, timeout=120)
        # Writes to every shard go on after the last pod.
        done = time.monotonic()
        for writer in writers.values():
            writer.wait_acknowledged(WARM_UP_WRITES, after=done)
    finally:
        for writer in writers.values():
            writer.stop()
    acknowledged: dict[str, str] = {}
    for writer in writers.values():
        acknowledged.update(writer.acknowledged())
    with cluster_client(sb) as client:
        lost = len(lost_keys(client, acknowledged))
    return RollingResult(
        gaps={pod: writers[pod].longest_outage() for pod in shards},
        slowest={pod: writers[pod].slowest_success() for pod in shards},
        failed=sum(len(w.failures()) for w in writers.values()),
        writes=sum(len(w.attempts) for w in writers.values()),
        acknowledged=len(acknowledged),
        lost=lost,
    )


# ---------------------------------------------------------------------------------------
# 3. Restart of every pod at once on new addresses.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class RestartAllResult:
    stop_and_start: float  # the restart call itself (preStop, SIGTERM, start)
    all_ok: Optional[float]  # from the restart call until every node said cluster_state:ok
    wait_ok: Optional[float]  # ... until Sandbox.wait_ok's condition held
    healthy: Optional[float]  # ... until the strict check held
    reused: int  # pods on an address another pod had before
    lost: int  # of RESTART_ALL_KEYS (-1: never healthy, not read)


def restart_all(sb: Sandbox, binaries: EngineBinaries, fresh: bool) -> RestartAllResult:
    sb.up()
    check_running(sb, binaries)
    wait_replication_settled(sb)
    with cluster_client(sb) as client:
        keys = write_keys(client, "k", RESTART_ALL_KEYS)
    old_hosts = {n.pod: n.host for n in sb.load().nodes}
    started = time.monotonic()
    if fresh:
        pods = list(old_hosts)
        hosts = fresh_addresses(sb.load(), len(pods))
        with ThreadPoolExecutor(max_workers=len(pods)) as pool:
            list(pool.map(lambda pod: stop_pod(sb, pod, prestop=True), pods))
        for pod, host in zip(pods, hosts):
            start_pod(sb, pod, host=host)
    else:
        sb.restart(None, new_ip=True, wait=False)
    restarted = time.monotonic() - started
    marks: dict[str, float] = {}
    deadline = time.monotonic() + 120
    while len(marks) < 3 and time.monotonic() < deadline:
        now = time.monotonic() - started
        if "ok" not in marks and set(states_ok(sb).values()) == {"ok"}:
            marks["ok"] = now
        if "wait_ok" not in marks and sb.topology()["state"] == "ok":
            marks["wait_ok"] = now
        if "healthy" not in marks and not cluster_problems(sb):
            marks["healthy"] = now
        time.sleep(0.05)
    new_hosts = {n.pod: n.host for n in sb.load().nodes}
    reused = sum(1 for pod, host in new_hosts.items() if host in old_hosts.values())
    lost = -1
    if "healthy" in marks:
        with cluster_client(sb) as client:
            lost = len(lost_keys(client, keys))
    return RestartAllResult(restarted, marks.get("ok"), marks.get("wait_ok"), marks.get("healthy"), reused, lost)


# ---------------------------------------------------------------------------------------
# The runs and the table.
# ---------------------------------------------------------------------------------------


def bench_failover(
    work: Path, engines: Mapping[str, EngineBinaries], repeats: int, seed: bool, tls: bool = False
) -> list[Row]:
    default: dict[str, list[float]] = {name: [] for name in engines}
    seeds: dict[str, list[float]] = {name: [] for name in engines}
    for i in range(repeats):
        for name, binaries in engines.items():
            default[name].append(
                with_sandbox(
                    work / f"{name}-default-{i}",
                    OCTET_DEFAULT,
                    binaries,
                    lambda sb, binaries=binaries: failover_outage(sb, binaries, PRODUCT_NODE_TIMEOUT_MS),
                    tls=tls,
                )
            )
            line = f"  failover run {i + 1}, {name}: default {default[name][-1]:.2f}s"
            if seed:
                seeds[name].append(
                    with_sandbox(
                        work / f"{name}-seed-{i}",
                        OCTET_SEED,
                        binaries,
                        lambda sb, binaries=binaries: failover_outage(sb, binaries, SEED_NODE_TIMEOUT_MS),
                        SeedTimeoutSandbox,
                        tls=tls,
                    )
                )
                line += f", seed {seeds[name][-1]:.2f}s"
            print(line, flush=True)
    rows = [
        Row(
            f"write outage after kill -9 of a master, product default (`cluster-node-timeout` {PRODUCT_NODE_TIMEOUT_MS})",
            {name: seconds_with_runs(v) for name, v in default.items()},
            {name: median(v) for name, v in default.items()},
        )
    ]
    if seed:
        rows += [
            Row(
                f"the same with the seed's {SEED_NODE_TIMEOUT_MS}",
                {name: seconds_with_runs(v) for name, v in seeds.items()},
                {name: median(v) for name, v in seeds.items()},
            ),
            Row(
                "seed / product default",
                {name: f"{median(seeds[name]) / median(default[name]):.2f}x longer" for name in engines},
            ),
        ]
    return rows


def rolling_cell(result: RollingResult) -> str:
    per = ", ".join(f"{pod.rsplit('-', 1)[1]}: {gap:.2f}" for pod, gap in result.gaps.items())
    return (
        f"{max(result.gaps.values()):.2f} s (per master {per}); {result.failed:,} of {result.writes:,} writes failed; "
        f"{result.lost:,} of {result.acknowledged:,} acknowledged lost; slowest ok write "
        f"{max(result.slowest.values()):.2f} s"
    )


def bench_rolling(
    work: Path, engines: Mapping[str, EngineBinaries], pod_downs: list[float], tls: bool = False
) -> list[Row]:
    rows = []
    for pod_down in pod_downs:
        for variant in (SIGTERM_ONLY, PRESTOP, NATIVE_FAILOVER):
            cells: dict[str, str] = {}
            figures: dict[str, Optional[float]] = {}
            for name, binaries in engines.items():
                if variant == NATIVE_FAILOVER and not native_failover_supported(binaries):
                    cells[name] = "n/a (Valkey 9.0+ only)"
                    continue
                result = with_sandbox(
                    work / f"{name}-rolling-{variant}-{pod_down:g}",
                    OCTET_ROLLING,
                    binaries,
                    lambda sb, binaries=binaries, variant=variant, pod_down=pod_down: rolling_restart(
                        sb, binaries, variant, pod_down
                    ),
                    tls=tls,
                )
                cells[name] = rolling_cell(result)
                figures[name] = max(result.gaps.values())
                print(f"  rolling, {name}, {VARIANT_LABELS[variant]}, down {pod_down:g}s: {cells[name]}", flush=True)
            if not any(native_failover_supported(b) for b in engines.values()) and variant == NATIVE_FAILOVER:
                continue
            rows.append(
                Row(
                    f"rolling restart, pod away {pod_down:g} s, {VARIANT_LABELS[variant]}: longest write gap per master",
                    cells,
                    figures,
                    # A gap under 50 ms is a write or two: no ratio of those means anything.
                    ratio_floor=0.05,
                )
            )
    return rows


def bench_restart_all(work: Path, engines: Mapping[str, EngineBinaries], repeats: int, tls: bool = False) -> list[Row]:
    rows = []
    for fresh, octet, label in (
        (False, OCTET_RESTART, "`restart --all --new-ip`"),
        (True, OCTET_RESTART_FRESH, "the same, every pod on an address no pod had"),
    ):
        results: dict[str, list[RestartAllResult]] = {name: [] for name in engines}
        for i in range(repeats):
            for name, binaries in engines.items():
                r = with_sandbox(
                    work / f"{name}-restart-{fresh}-{i}",
                    octet,
                    binaries,
                    lambda sb, binaries=binaries, fresh=fresh: restart_all(sb, binaries, fresh),
                    tls=tls,
                )
                results[name].append(r)
                print(
                    f"  restart all, {'fresh addresses' if fresh else 'Sandbox.restart'}, run {i + 1}, {name}: "
                    f"stop+start {r.stop_and_start:.2f}s, all ok {seconds_with_runs([r.all_ok])}, "
                    f"wait_ok {seconds_with_runs([r.wait_ok])}, strict {seconds_with_runs([r.healthy])}, "
                    f"reused {r.reused}, lost {r.lost}",
                    flush=True,
                )

        def row(measure: str, pick: Callable[[RestartAllResult], Optional[float]], results=results) -> Row:
            return Row(
                measure,
                {name: seconds_with_runs([pick(r) for r in rs]) for name, rs in results.items()},
                {name: median([v for r in rs if (v := pick(r)) is not None]) for name, rs in results.items()},
            )

        rows += [
            row(f"{label}: the restart call (preStop, SIGTERM, start)", lambda r: r.stop_and_start),
            row(f"{label}: until every node reports `cluster_state:ok`", lambda r: r.all_ok),
            row(f"{label}: until the bootstrap's full check (`Sandbox.wait_ok`, replicas linked)", lambda r: r.wait_ok),
            row(f"{label}: until the tests' strict check (every address known, linked, no flag)", lambda r: r.healthy),
            Row(
                f"{label}: keys lost of {RESTART_ALL_KEYS:,}; pods on a reused address",
                {
                    name: "; ".join(f"{'never healthy' if r.lost < 0 else r.lost}, {r.reused} reused" for r in rs)
                    for name, rs in results.items()
                },
            ),
        ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_engines_argument(parser)
    parser.add_argument("--repeats", type=int, default=3, help="runs per failover configuration and restart variant")
    parser.add_argument("--pod-down-seconds", type=float, nargs="+", default=[0.0, 10.0])
    parser.add_argument("--skip-failover", action="store_true")
    parser.add_argument("--skip-seed", action="store_true", help="no kill -9 runs with the seed's node timeout")
    parser.add_argument("--skip-rolling", action="store_true")
    parser.add_argument("--skip-restart-all", action="store_true")
    parser.add_argument("--tls", action="store_true", help="every sandbox speaks TLS only (`up --tls`)")
    options = parser.parse_args(argv)

    engines = engine_binaries(options.engines)
    for line in header_lines(engines.values()):
        print(line)
    print(f"tls: {'on' if options.tls else 'off'}")
    work = Path(tempfile.mkdtemp(prefix="reliability-benchmark-"))
    rows: list[Row] = []
    if not options.skip_failover:
        rows += bench_failover(work, engines, options.repeats, seed=not options.skip_seed, tls=options.tls)
    if not options.skip_rolling:
        rows += bench_rolling(work, engines, options.pod_down_seconds, tls=options.tls)
    if not options.skip_restart_all:
        rows += bench_restart_all(work, engines, options.repeats, tls=options.tls)

    print_results(
        f"Reliability per engine (kill -9 and restart-all: median of {options.repeats}; "
        "rolling restart: one run per variant)",
        engines,
        rows,
    )
    try:
        work.rmdir()
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
