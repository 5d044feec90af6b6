"""The soak: a healthy cluster under what makes a healthy master look dead, counting false failovers (not a test; prints a table).

Per engine, a sandbox of the dev stack (the product's defaults; `--node-timeout-ms` tries
another timeout) runs for `--minutes` (10) with a steady writer, every node held to its pod's
memory limit (1 GiB, a memory cgroup of its own: the forks' copy-on-write pages and the AOF's
page cache count), each master filled to `--fill-mib` (420 MiB, 56% of maxmemory), while
these stresses come and go, overlapping:

- AOF rewrites: BGREWRITEAOF on two nodes every 30 s, forks of the full data set, under the
  memory limit, with the writes going on (and the rewrites the engines start on their own);
- big deletes: a hash of 1,000,000 fields built on a master, then DEL, every 45 s;
- a noisy neighbour: 4 busy processes (twice the machine's cores) for 30 s of every 70 s;
- with `--slow-disk-mib N`, a slow disk: the servers' own writes to the disk (fsyncs, a
  rewrite's incremental fsyncs) throttled to N MiB/s for 50 s of every 110 s. Off by default:
  this machine's cgroup v2 hierarchy has no io controller, so the throttle is cgroup v1's
  blkio (testkit/node_cgroups.py), over one filesystem that every node shares, where one
  node's throttled fsync holds the ext4 journal up for all of them; on EKS each pod has a
  volume and a filesystem of its own (docs/figures.md has what it does here);
- bursts of clients: 400 connections opened at once (AUTH, SET, close) every 20 s.

Watched all along, every 200 ms: every node's CLUSTER NODES (a failover is a slot range
that changes owner; a suspicion is a node flagged `fail?` or `fail` by any other), how long
each node takes to answer, and the writer's gaps. A false failover is any failover: no node
was killed. At the end: failovers, suspicions, the slowest answer, the writer's longest gap
and failures, the slowest fork (`latest_fork_usec`), the delayed AOF fsyncs, the memory
limit's hits and OOM kills.

Run from the project root, as root (cgroups):
  .venv/bin/python -m benchmarks.soak_benchmark [--engines redis valkey] [--minutes 10]
      [--node-timeout-ms N] [--fill-mib 420] [--slow-disk-mib N]
Loopback only (127.0.57.0/24); every server is stopped by pid, every cgroup removed.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

import redis
from redis.crc import key_slot

from benchmarks.machine_info import header_lines
from benchmarks.side_by_side import Row, add_engines_argument, engine_binaries, print_results
from cluster_logic.model import parse_cluster_nodes
from sandbox.engine_binaries import EngineBinaries
from sandbox.local_cluster import Sandbox
from testkit.node_cgroups import NodeCgroups
from testkit.sandbox_support import (
    ConfiguredSandbox,
    ManagedSandbox,
    cluster_client,
    masters,
    node_client,
    record_of,
    slots_of,
    wait_healthy,
    wait_replication_settled,
)
from testkit.writers import Writer

OCTET = 57
WATCH_INTERVAL = 0.2
BIG_HASH_FIELDS = 1_000_000
BURST_CONNECTIONS = 400
HOGS = 4
# name -> (period, how long it lasts within the period; 0: a one-off action), seconds.
SCHEDULE = {
    "aof rewrites": (30, 0),
    "big delete": (45, 0),
    "noisy neighbour": (70, 30),
    "slow disk": (110, 50),
    "client burst": (20, 0),
}


@dataclass
class Watch:
    """What the watcher saw."""

    failovers: list[str] = field(default_factory=list)  # "12.3s: slot 0 from <id> to <id>"
    suspicions: dict[str, int] = field(default_factory=dict)  # "<watcher> saw <pod> fail?" -> polls
    slowest_answer: float = 0.0
    slowest_answer_pod: str = ""
    unanswered: int = 0
    polls: int = 0


class Watcher:
    """Every node's CLUSTER NODES every WATCH_INTERVAL, a thread per node (a node that stalls
    holds up only its own watch): slot owners, flags, answer times."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.watch = Watch()
        self._lock = threading.Lock()
        self._owners: dict[int, str] = {}
        self._stop = threading.Event()
        state = sb.load()
        assert state is not None
        self._pods_by_host = {record.host: record.pod for record in state.nodes}
        self._threads = [
            threading.Thread(target=self._run, args=(state, record), name=f"watch-{record.pod}", daemon=True)
            for record in state.nodes
        ]
        self.started = time.monotonic()

    def start(self) -> Watcher:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> Watch:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        return self.watch

    def _run(self, state, record) -> None:
        client = node_client(state, record, timeout=3.0)
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    entries = parse_cluster_nodes(client.execute_command("CLUSTER", "NODES"))
                except (redis.RedisError, OSError):
                    with self._lock:
                        self.watch.unanswered += 1
                    continue
                took = time.monotonic() - began
                with self._lock:
                    self._record(record.pod, entries, took)
                self._stop.wait(WATCH_INTERVAL)
        finally:
            client.close()

    def _record(self, pod: str, entries, took: float) -> None:
        self.watch.polls += 1
        if took > self.watch.slowest_answer:
            self.watch.slowest_answer, self.watch.slowest_answer_pod = took, pod
        for entry in entries:
            if {"fail?", "fail"} & set(entry.flags):
                seen = self._pods_by_host.get(entry.host, entry.id[:8])
                key = f"{pod} saw {seen} {'/'.join(sorted(entry.flags))}"
                self.watch.suspicions[key] = self.watch.suspicions.get(key, 0) + 1
            if entry.myself and entry.is_master:
                for first, _ in entry.slots:
                    previous = self._owners.get(first)
                    if previous is not None and previous != entry.id:
                        self.watch.failovers.append(
                            f"{time.monotonic() - self.started:.1f}s: slot {first} from {previous[:8]} "
                            f"to {entry.id[:8]} ({pod})"
                        )
                    self._owners[first] = entry.id


# ---------------------------------------------------------------------------------------
# The stresses.
# ---------------------------------------------------------------------------------------


def fill(sb: Sandbox, mib: int) -> int:
    """Fills every master to about `mib` MiB of values (1 KiB each); returns the keys written."""
    value = "v" * 1024
    per_master = mib * 1024
    count = per_master * len(masters(sb))
    with cluster_client(sb, socket_timeout=30) as client:
        for start in range(0, count, 2000):
            pipe = client.pipeline()
            for n in range(start, min(count, start + 2000)):
                pipe.set(f"soak:fill:{n}", value)
            pipe.execute()
    return count


def each_node(sb: Sandbox, action: Callable[[redis.Redis], object]) -> None:
    state = sb.load()
    assert state is not None
    for record in state.nodes:
        client = node_client(state, record, timeout=10.0)
        try:
            action(client)
        except redis.RedisError as error:
            print(f"    {record.pod}: {error}", flush=True)
        finally:
            client.close()


def aof_rewrites(sb: Sandbox) -> None:
    """BGREWRITEAOF on two nodes at random: each node forks its full data set about every
    minute and a half, under its memory limit, with the writes going on."""
    state = sb.load()
    assert state is not None
    for record in random.sample(state.nodes, 2):
        client = node_client(state, record, timeout=10.0)
        try:
            client.bgrewriteaof()
        except redis.RedisError as error:
            print(f"    {record.pod}: {error}", flush=True)
        finally:
            client.close()


def big_delete(sb: Sandbox) -> None:
    """A 1,000,000-field hash on a master, built in pieces, then DEL."""
    pod, facts = random.choice(sorted(masters(sb).items()))
    slot = min(slots_of(facts))
    key = next(f"soak:big:{n}" for n in range(10**6) if key_slot(f"soak:big:{n}".encode()) == slot)
    state = sb.load()
    assert state is not None
    client = node_client(state, record_of(state, pod), timeout=30.0)
    try:
        for start in range(0, BIG_HASH_FIELDS, 10_000):
            client.hset(key, mapping={f"f{i}": "x" for i in range(start, start + 10_000)})
        began = time.monotonic()
        client.delete(key)
        took = time.monotonic() - began
        print(f"    big delete on {pod}: DEL took {took * 1000:.1f} ms", flush=True)
    except redis.RedisError as error:
        print(f"    big delete on {pod}: {error}", flush=True)
    finally:
        client.close()


def client_burst(sb: Sandbox) -> None:
    state = sb.load()
    assert state is not None

    def one(n: int) -> None:
        record = state.nodes[n % len(state.nodes)]
        client = node_client(state, record, timeout=5.0)
        try:
            client.ping()
        except redis.RedisError:
            pass
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=64) as pool:
        list(pool.map(one, range(BURST_CONNECTIONS)))


class Hogs:
    """Busy processes competing for the CPUs, started and stopped by pid."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen] = []

    def start(self) -> None:
        self.processes = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True) for _ in range(HOGS)
        ]

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait(timeout=10)
        self.processes = []


@dataclass
class SoakResult:
    watch: Watch
    writer: str
    writer_gap: float
    writer_failures: int
    slowest_fork_ms: float
    delayed_fsyncs: int
    memory_limit_hits: int
    memory_peak_bytes: int
    oom_kills: int
    servers_alive: bool
    counts: dict[str, int]
    filled_keys: int
    node_timeout_ms: int
    stalls: dict[str, int]
    slow_disk_mib: float


def soak(
    sb: Sandbox, binaries: EngineBinaries, minutes: float, fill_mib: int, work: Path, slow_disk_mib: float
) -> SoakResult:
    sb.up()
    state = sb.load()
    assert state is not None
    settings = sb.settings(state)
    wait_replication_settled(sb)
    schedule = {name: timing for name, timing in SCHEDULE.items() if slow_disk_mib or name != "slow disk"}
    counts = {name: 0 for name in schedule}
    cgroups = NodeCgroups(f"redis-eks-soak-{OCTET}", work)
    hogs = Hogs()
    watcher = Watcher(sb)
    writer = Writer(cluster_client(sb, retries=0, socket_timeout=1.0), "soak", pace=0.005)
    try:
        # Each server under its pod's limit before it holds any data, as in a pod.
        for record in state.nodes:
            cgroups.add(record.pod, record.pid, settings.memory_limit_bytes)
        filled = fill(sb, fill_mib)
        wait_replication_settled(sb, timeout=300)
        print(
            f"  {binaries.engine.name}: filled {filled:,} keys; node timeout {settings.node_timeout_ms} ms", flush=True
        )
        # Stalls over 100 ms in each node's own latency monitor (runtime only; the soak's instrument).
        each_node(sb, lambda client: client.config_set("latency-monitor-threshold", "100"))
        watcher.start()
        writer.start()
        started = time.monotonic()
        ends = started + minutes * 60
        active: dict[str, bool] = {name: False for name in schedule}
        next_at = {name: started + random.uniform(2, period) for name, (period, _) in schedule.items()}
        off_at: dict[str, float] = {}
        while time.monotonic() < ends:
            now = time.monotonic()
            for name, (period, lasts) in schedule.items():
                if active[name] and now >= off_at[name]:
                    active[name] = False
                    if name == "noisy neighbour":
                        hogs.stop()
                    elif name == "slow disk":
                        cgroups.throttle_writes(None)
                    print(f"  {now - started:6.1f}s {name} off", flush=True)
                if now >= next_at[name]:
                    next_at[name] = now + period
                    counts[name] += 1
                    print(f"  {now - started:6.1f}s {name}", flush=True)
                    if name == "aof rewrites":
                        aof_rewrites(sb)
                    elif name == "big delete":
                        threading.Thread(target=big_delete, args=(sb,), daemon=True).start()
                    elif name == "client burst":
                        threading.Thread(target=client_burst, args=(sb,), daemon=True).start()
                    elif name == "noisy neighbour":
                        hogs.start()
                    elif name == "slow disk":
                        cgroups.throttle_writes(int(slow_disk_mib * 2**20))
                    if lasts:
                        active[name], off_at[name] = True, now + lasts
            time.sleep(0.1)
        hogs.stop()
        cgroups.throttle_writes(None)
        watch = watcher.stop()
        writer.stop()
        memory_hits = sum(cgroups.memory_failures().values())
        memory_peak = max(cgroups.memory_peaks().values(), default=0)
        oom = sum(cgroups.oom_kills().values())
    finally:
        hogs.stop()
        watcher.stop()
        if writer.running:
            writer.stop()
        problems = cgroups.close()
        if problems:
            print(f"warning: cgroups left: {problems}", file=sys.stderr)
    alive = all(record.pid and Path(f"/proc/{record.pid}").exists() for record in state.nodes)
    forks: list[float] = []
    fsyncs: list[int] = []
    stalls: dict[str, int] = {}  # latency monitor event -> its worst, ms

    def read(client: redis.Redis) -> None:
        info = client.info()
        forks.append(info.get("latest_fork_usec", 0) / 1000)
        fsyncs.append(int(info.get("aof_delayed_fsync", 0)))
        for event in client.execute_command("LATENCY", "LATEST") or []:
            name, worst = str(event[0]), int(event[3])
            stalls[name] = max(stalls.get(name, 0), worst)

    each_node(sb, read)
    wait_healthy(sb, timeout=60)
    return SoakResult(
        watch=watch,
        writer=writer.summary(),
        writer_gap=writer.longest_outage(),
        writer_failures=len(writer.failures()),
        slowest_fork_ms=max(forks, default=0.0),
        delayed_fsyncs=sum(fsyncs),
        memory_limit_hits=memory_hits,
        memory_peak_bytes=memory_peak,
        oom_kills=oom,
        servers_alive=alive,
        counts=counts,
        filled_keys=filled,
        node_timeout_ms=settings.node_timeout_ms,
        stalls=stalls,
        slow_disk_mib=slow_disk_mib,
    )


def run(
    work: Path,
    binaries: EngineBinaries,
    minutes: float,
    fill_mib: int,
    node_timeout_ms: Optional[int],
    slow_disk_mib: float,
) -> SoakResult:
    root = work / binaries.engine.name
    config = {} if node_timeout_ms is None else {"nodeTimeoutMs": str(node_timeout_ms)}
    sandbox = ConfiguredSandbox(
        root=root, stack="dev", third_octet=OCTET, engine=binaries.engine.name, binaries=binaries, config=config
    )
    managed = ManagedSandbox(root, OCTET, sandbox=sandbox)
    try:
        return soak(managed.sandbox, binaries, minutes, fill_mib, work, slow_disk_mib)
    finally:
        leftovers = managed.close()
        if leftovers:
            print(f"warning: swept processes that outlived Sandbox.down: {leftovers}", file=sys.stderr)


def rows(results: Mapping[str, SoakResult], minutes: float) -> list[Row]:
    def cell(pick: Callable[[SoakResult], str]) -> dict[str, str]:
        return {name: pick(result) for name, result in results.items()}

    return [
        Row("node timeout", cell(lambda r: f"{r.node_timeout_ms} ms")),
        Row(f"false failovers in {minutes:g} minutes", cell(lambda r: str(len(r.watch.failovers)))),
        Row(
            "a node suspected (`fail?`/`fail`) by another, polls",
            cell(lambda r: ", ".join(f"{k}: {v}" for k, v in r.watch.suspicions.items()) or "none"),
        ),
        Row(
            "slowest CLUSTER NODES answer (every node every 200 ms)",
            cell(
                lambda r: (
                    f"{r.watch.slowest_answer * 1000:.0f} ms ({r.watch.slowest_answer_pod}); {r.watch.unanswered} unanswered"
                )
            ),
        ),
        Row("the writer's longest gap; failed writes", cell(lambda r: f"{r.writer_gap:.2f} s; {r.writer_failures:,}")),
        Row("slowest fork (`latest_fork_usec` at the end)", cell(lambda r: f"{r.slowest_fork_ms:.1f} ms")),
        Row(
            "the nodes' worst stalls over 100 ms (LATENCY LATEST)",
            cell(lambda r: ", ".join(f"{k} {v:,} ms" for k, v in sorted(r.stalls.items())) or "none"),
        ),
        Row("slow disk", cell(lambda r: f"{r.slow_disk_mib:g} MiB/s" if r.slow_disk_mib else "off")),
        Row("AOF fsyncs delayed (`aof_delayed_fsync`)", cell(lambda r: f"{r.delayed_fsyncs:,}")),
        Row(
            "a node's peak memory, page cache included (limit 1 GiB); limit hits (memory.failcnt); OOM kills",
            cell(lambda r: f"{r.memory_peak_bytes / 2**20:,.0f} MiB; {r.memory_limit_hits:,}; {r.oom_kills}"),
        ),
        Row("every server alive at the end", cell(lambda r: "yes" if r.servers_alive else "NO")),
        Row("stresses applied", cell(lambda r: ", ".join(f"{k} x{v}" for k, v in r.counts.items()))),
        Row("keys filled (1 KiB each)", cell(lambda r: f"{r.filled_keys:,}")),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_engines_argument(parser)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--fill-mib", type=int, default=420, help="MiB of values per master (default 420)")
    parser.add_argument("--node-timeout-ms", type=int, help="another cluster-node-timeout (default: the product's)")
    parser.add_argument(
        "--slow-disk-mib",
        type=float,
        default=0.0,
        help="throttle the servers' disk writes to N MiB/s at times (default off)",
    )
    options = parser.parse_args(argv)
    engines = engine_binaries(options.engines)
    for line in header_lines(engines.values()):
        print(line)
    work = Path(tempfile.mkdtemp(prefix="soak-benchmark-"))
    results = {}
    for name, binaries in engines.items():
        print(f"soak of {binaries.describe()}", flush=True)
        results[name] = run(
            work, binaries, options.minutes, options.fill_mib, options.node_timeout_ms, options.slow_disk_mib
        )
        for failover in results[name].watch.failovers:
            print(f"  FALSE FAILOVER {failover}", flush=True)
        print(f"  {results[name].writer}", flush=True)
    print_results(f"Soak per engine ({options.minutes:g} minutes each)", engines, rows(results, options.minutes))
    try:
        work.rmdir()
    except OSError:
        pass
    return 0 if all(not r.watch.failovers and r.servers_alive for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
