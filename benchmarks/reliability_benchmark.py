"""Figures for the sandbox cluster's behaviour under failures (not a test; prints a table).

1. Write outage after kill -9 of a master: the product's default cluster-node-timeout
   (5000 ms, the dev stack) beside the seed's 15000 ms, on the same machine. Outage = time
   from the SIGKILL until the first successful write to a key of the killed master's slots
   (a writer aimed at those slots only, redis-py RedisCluster). Median of --repeats runs,
   each on a fresh sandbox.
2. Write outage per master during a rolling restart (highest ordinal first, one pod at a
   time, each back Ready and the cluster healthy before the next), with and without the
   preStop handover (with: pre-stop.sh, then SIGTERM; without: SIGTERM only), as the longest
   gap of failed writes to that master's keys (start of the first failed write to the end
   of the next successful one). Before the next pod, the restarted one must be Ready, the
   cluster healthy and every replica in sync. Each pod comes back on a new address after
   --pod-down-seconds (0: at once, as `Sandbox.restart` does; 10: closer to a rescheduled
   pod on EKS, which is gone for longer than the node timeout).
3. `restart --all --new-ip` (Sandbox.restart(None, new_ip=True)): time until every node
   reports cluster_state:ok, until the sandbox's own wait (`Sandbox.wait_ok`, the
   bootstrap's view) is satisfied, and until the strict check of the tests holds (every
   node sees every other at its new address, linked, no fail flags). Also the same restart
   with every pod on an address no pod had before (Sandbox.restart hands a pod the address
   another pod just left).

Run from the project root: .venv/bin/python -m benchmarks.reliability_benchmark [--repeats 3] [--pod-down-seconds 0 10]
Loopback only (127.0.50.0/24 - 127.0.54.0/24); every redis-server is stopped by pid.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import redis

from benchmarks.machine_info import cpu_model
from components.stack_settings import StackSettings, parse_settings
from sandbox.local_cluster import Sandbox, SandboxState
from testkit.sandbox_support import (
    ManagedSandbox,
    cluster_client,
    cluster_problems,
    fresh_addresses,
    masters,
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
OCTET_DEFAULT, OCTET_SEED, OCTET_ROLLING, OCTET_RESTART, OCTET_RESTART_FRESH = 50, 51, 52, 53, 54
# Acknowledged writes a writer makes before the failure it measures, and after the last one.
WARM_UP_WRITES = 200


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
            }
        )
        if seed != dataclasses.replace(base, node_timeout_ms=SEED_NODE_TIMEOUT_MS):
            raise RuntimeError("the seed settings differ from the stack's in more than the node timeout")
        return seed


def machine() -> list[str]:
    model = cpu_model()
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return [
        f"machine: nproc {nproc}, {model}, Python {platform.python_version()}, redis-py {redis.__version__}",
        f"redis:   {version}",
    ]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def node_timeout_in_conf(sb: Sandbox) -> int:
    conf = (sb.root / "nodes" / "redis-cluster-0" / "conf" / "redis.conf").read_text()
    return int(next(line.split()[1] for line in conf.splitlines() if line.startswith("cluster-node-timeout")))


def with_sandbox(root: Path, octet: int, body: Callable[[Sandbox], object], cls: type = Sandbox) -> object:
    managed = ManagedSandbox(root, octet, sandbox=cls(root=root, stack="dev", third_octet=octet))
    try:
        return body(managed.sandbox)
    finally:
        leftovers = managed.close()
        if leftovers:
            print(f"warning: swept processes that outlived Sandbox.down: {leftovers}", file=sys.stderr)


def probe_client(sb: Sandbox):
    """The writers' client: redis-py RedisCluster following MOVED/ASK, but without retries
    of its own, so that each attempt is short (a refused connection fails in
    milliseconds) and the outage is measured to ~10 ms, not to the length of a retry loop."""
    return cluster_client(sb, retries=0, socket_timeout=1.0)


# ---------------------------------------------------------------------------------------
# 1. kill -9 of a master.
# ---------------------------------------------------------------------------------------


def failover_outage(sb: Sandbox, expected_timeout_ms: int) -> float:
    sb.up()
    if node_timeout_in_conf(sb) != expected_timeout_ms:
        raise RuntimeError(f"redis.conf has cluster-node-timeout {node_timeout_in_conf(sb)}, not {expected_timeout_ms}")
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


@dataclasses.dataclass
class RollingResult:
    gaps: dict[str, float]  # original master pod -> longest failed-write gap
    slowest: dict[str, float]  # original master pod -> slowest successful write
    failed: int
    writes: int


def rolling_restart(sb: Sandbox, handover: bool, pod_down: float) -> RollingResult:
    sb.up()
    wait_replication_settled(sb)
    shards = {pod: slots_of(facts) for pod, facts in sorted(masters(sb).items())}
    writers = {pod: Writer(probe_client(sb), f"shard-{pod}", slots=slots).start() for pod, slots in shards.items()}
    try:
        for writer in writers.values():
            writer.wait_acknowledged(WARM_UP_WRITES)
        pods = sorted((n.pod for n in sb.load().nodes), key=lambda p: int(p.rsplit("-", 1)[1]), reverse=True)
        for pod in pods:
            stop_pod(sb, pod, prestop=handover)
            time.sleep(pod_down)
            start_pod(sb, pod, host=fresh_addresses(sb.load(), 1)[0])
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
    return RollingResult(
        gaps={pod: writers[pod].longest_outage() for pod in shards},
        slowest={pod: writers[pod].slowest_success() for pod in shards},
        failed=sum(len(w.failures()) for w in writers.values()),
        writes=sum(len(w.attempts) for w in writers.values()),
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
    lost: int


def restart_all(sb: Sandbox, fresh: bool) -> RestartAllResult:
    sb.up()
    wait_replication_settled(sb)
    with cluster_client(sb) as client:
        keys = write_keys(client, "k", 2000)
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


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(values: list[Optional[float]]) -> str:
    return ", ".join("-" if v is None else f"{v:.2f}" for v in values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per failover configuration and restart variant")
    parser.add_argument("--pod-down-seconds", type=float, nargs="+", default=[0.0, 10.0])
    parser.add_argument("--skip-failover", action="store_true")
    parser.add_argument("--skip-rolling", action="store_true")
    parser.add_argument("--skip-restart-all", action="store_true")
    options = parser.parse_args()

    lines = machine()
    for line in lines:
        print(line)
    print(f"load average at start: {load()}")
    work = Path(tempfile.mkdtemp(prefix="reliability-benchmark-"))
    table: list[str] = []

    if not options.skip_failover:
        default, seed = [], []
        for i in range(options.repeats):
            default.append(with_sandbox(work / f"default-{i}", OCTET_DEFAULT, lambda sb: failover_outage(sb, 5000)))
            seed.append(
                with_sandbox(
                    work / f"seed-{i}",
                    OCTET_SEED,
                    lambda sb: failover_outage(sb, SEED_NODE_TIMEOUT_MS),
                    SeedTimeoutSandbox,
                )
            )
            print(f"  failover run {i + 1}: default {default[-1]:.2f}s, seed {seed[-1]:.2f}s", flush=True)
        table += [
            "",
            f"1. Write outage after kill -9 of a master (s; median of {options.repeats}; runs in brackets)",
            f"   {'configuration':42} {'median':>8}  runs",
            f"   {'product default (cluster-node-timeout 5000)':42} {median(default):8.2f}  [{fmt(default)}]",
            f"   {'seed (cluster-node-timeout 15000)':42} {median(seed):8.2f}  [{fmt(seed)}]",
            f"   ratio seed / default: {median(seed) / median(default):.2f}x",
        ]

    if not options.skip_rolling:
        table += [
            "",
            "2. Rolling restart, highest ordinal first: longest gap of failed writes per original master (s)",
            f"   {'variant':36} {'pod down':>8}  {'per master (pod: gap)':52} {'max':>6}  {'failed/writes':>14}  slowest ok write",
        ]
        for pod_down in options.pod_down_seconds:
            for handover in (False, True):
                label = "preStop handover, then SIGTERM" if handover else "SIGTERM only (no preStop)"
                result: RollingResult = with_sandbox(
                    work / f"rolling-{handover}-{pod_down}",
                    OCTET_ROLLING,
                    lambda sb, handover=handover, pod_down=pod_down: rolling_restart(sb, handover, pod_down),
                )
                per = ", ".join(f"{pod.rsplit('-', 1)[1]}: {gap:.2f}" for pod, gap in result.gaps.items())
                table.append(
                    f"   {label:36} {pod_down:7.0f}s  {per:52} {max(result.gaps.values()):6.2f}  "
                    f"{result.failed:>6}/{result.writes:<7}  {max(result.slowest.values()):.2f}s"
                )
                print(f"  rolling ({label}, down {pod_down:.0f}s) done", flush=True)

    if not options.skip_restart_all:
        table += [
            "",
            f"3. Restart of every pod at once on new addresses (s from the start of the restart; {options.repeats} runs)",
            f"   {'variant':44} {'stop+start':>10} {'all ok':>8} {'wait_ok':>8} {'strict':>8}  reused  lost",
        ]
        for fresh, octet, label in (
            (False, OCTET_RESTART, "Sandbox.restart(None, new_ip=True)"),
            (True, OCTET_RESTART_FRESH, "same, every pod on an address no pod had"),
        ):
            results: list[RestartAllResult] = []
            for i in range(options.repeats):
                results.append(
                    with_sandbox(work / f"restart-{fresh}-{i}", octet, lambda sb, fresh=fresh: restart_all(sb, fresh))
                )
            for r in results:
                table.append(
                    f"   {label:44} {r.stop_and_start:10.2f} {fmt([r.all_ok]):>8} {fmt([r.wait_ok]):>8} "
                    f"{fmt([r.healthy]):>8}  {r.reused:6}  {r.lost:4}"
                )
            table.append(
                f"   {'  median':44} {median([r.stop_and_start for r in results]):10.2f} "
                f"{median([r.all_ok for r in results if r.all_ok is not None]):8.2f} "
                f"{median([r.wait_ok for r in results if r.wait_ok is not None]):8.2f} "
                f"{median([r.healthy for r in results if r.healthy is not None]):8.2f}"
            )
            print(f"  restart all ({label}) done", flush=True)

    print("\n".join(table))
    print(f"\nload average at the end: {load()} (other work on this machine shows here)")
    try:
        work.rmdir()
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
