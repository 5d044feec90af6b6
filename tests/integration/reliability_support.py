"""What the reliability suite (test_reliability.py) and its benchmark
(benchmarks/reliability_benchmark.py) share: a sandbox whose processes always end, writers
that record every acknowledged write, a strict health check and data checks.

Addresses: the tests use 127.0.40.0/24 - 127.0.49.0/24, the benchmark 127.0.50.0/24 -
127.0.59.0/24 (other suites use 10-39 and 60). Nothing here leaves loopback.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from sandbox.local_cluster import NodeRecord, Sandbox, SandboxState
from sandbox.local_nodes import LOCK_DIR, LocalNode, kill_session, ports_free, replication_problems, wait_cluster_ok
from sandbox.local_nodes import cluster_problems as node_cluster_problems

TEST_OCTETS = range(40, 50)
BENCHMARK_OCTETS = range(50, 60)


# ---------------------------------------------------------------------------------------
# A sandbox that always ends.
# ---------------------------------------------------------------------------------------


def processes_under(root: Path) -> list[int]:
    """Pids of every process whose working directory lies under `root`: each node runs in
    its own directory (LocalNode's cwd), and so do the scripts and redis-cli it starts."""
    root_text = str(Path(root).resolve())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2] == "Z":
            continue
        if cwd == root_text or cwd.startswith(root_text + "/"):
            found.append(int(entry))
    return found


class ManagedSandbox:
    """A `Sandbox` plus whatever `LocalNode`s a test starts itself; `close()` stops all of
    them by pid (Sandbox.down, then a sweep of every process still working under the root)
    and reports what had to be swept."""

    def __init__(self, root: Path, third_octet: int, sandbox: Optional[Sandbox] = None) -> None:
        self.root = Path(root)
        self.sandbox = sandbox or Sandbox(root=self.root, stack="dev", third_octet=third_octet)
        self.extra_nodes: list[LocalNode] = []
        # Two runs of the suite at once queue up per 127.0.<octet>.0/24 instead of meeting
        # each other's nodes there; the kernel drops the lock of a dead process.
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        self._lock = os.open(LOCK_DIR / f"reliability-octet-{self.sandbox.third_octet}", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)

    def close(self) -> list[str]:
        try:
            return self._close()
        finally:
            os.close(self._lock)

    def _close(self) -> list[str]:
        problems: list[str] = []
        try:
            self.sandbox.down(purge=False)
        except Exception as error:  # noqa: BLE001 - go on stopping, report it
            problems.append(f"down failed: {error!r}")
        for node in self.extra_nodes:
            if node.is_running():
                node.kill()
        if self.root.exists():
            for pid in processes_under(self.root):
                problems.append(f"pid {pid} survived down: {_cmdline(pid)}")
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.sandbox.down(purge=True)
        return problems


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


# ---------------------------------------------------------------------------------------
# Clients.
# ---------------------------------------------------------------------------------------


def cluster_client(sandbox: Sandbox, retries: int = 10, socket_timeout: float = 2.0) -> RedisCluster:
    """A redis-py cluster client whose startup nodes are the sandbox's nodes, with a
    reasonable retry policy (redis-py retries connection errors, CLUSTERDOWN and uncovered
    slots after refreshing its slot map, and follows MOVED/ASK on its own)."""
    state = _state(sandbox)
    return RedisCluster(
        startup_nodes=[ClusterNode(n.host, n.port) for n in state.nodes],
        password=state.password,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=1.0,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries),
    )


def node_client(state: SandboxState, record: NodeRecord, timeout: float = 2.0) -> redis.Redis:
    return redis.Redis(
        host=record.host,
        port=record.port,
        password=state.password,
        socket_timeout=timeout,
        socket_connect_timeout=1.0,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
    )


def _state(sandbox: Sandbox) -> SandboxState:
    state = sandbox.load()
    if state is None:
        raise RuntimeError(f"no sandbox state in {sandbox.root}")
    return state


# ---------------------------------------------------------------------------------------
# Writers.
# ---------------------------------------------------------------------------------------


@dataclass
class Attempt:
    key: str
    value: str
    slot: int
    started: float
    ended: float
    ok: bool  # the SET was acknowledged
    durable: bool = False  # and WAIT 1 on the same connection returned >= 1
    error: str = ""


class Writer:
    """A steady writer: one thread, one new key per attempt (`<prefix>:<n>` = `n`), and a
    record of every attempt.

    mode "plain": `RedisCluster.set`; a write counts as failed only when redis-py finally
    raised (after its own retries and redirects).

    mode "wait": SET and `WAIT 1 <wait_ms>` pipelined on one connection to the key's
    master (as the cluster client's slot map names it). WAIT counts the replicas that
    acknowledged this connection's writes, so a write counts as durable only when the SET
    succeeded and that WAIT, on the same connection, returned >= 1. A MOVED/ASK/CLUSTERDOWN
    or a connection error is a failed attempt; the slot map is refreshed and the writer
    goes on with the next key.

    `slots` limits the keys to those slots (to aim at one master).
    """

    def __init__(
        self,
        sandbox: Sandbox,
        prefix: str,
        mode: str = "plain",
        pace: float = 0.002,
        wait_ms: int = 1000,
        slots: Optional[Iterable[int]] = None,
        client: Optional[RedisCluster] = None,
    ) -> None:
        if mode not in ("plain", "wait"):
            raise ValueError(mode)
        self.sandbox = sandbox
        self.prefix = prefix
        self.mode = mode
        self.pace = pace
        self.wait_ms = wait_ms
        self.slots = frozenset(slots) if slots is not None else None
        self.client = client or cluster_client(sandbox)
        self.password = _state(sandbox).password
        self.attempts: list[Attempt] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"writer-{prefix}", daemon=True)
        self._node_clients: dict[tuple[str, int], redis.Redis] = {}
        self._crash: Optional[BaseException] = None

    # -- running --------------------------------------------------------------------------

    def start(self) -> "Writer":
        self._thread.start()
        return self

    def stop(self) -> "Writer":
        self._stop.set()
        self._thread.join(timeout=60)
        if self._thread.is_alive():
            raise RuntimeError(f"writer {self.prefix} did not stop")
        for client in self._node_clients.values():
            client.close()
        self.client.close()
        if self._crash is not None:
            raise RuntimeError(f"writer {self.prefix} crashed: {self._crash!r}") from self._crash
        return self

    def __enter__(self) -> "Writer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self.stop()

    def _keys(self) -> Iterator[tuple[str, str, int]]:
        n = 0
        while True:
            n += 1
            key = f"{self.prefix}:{n}"
            slot = key_slot(key.encode())
            if self.slots is None or slot in self.slots:
                yield key, str(n), slot

    def _run(self) -> None:
        try:
            for key, value, slot in self._keys():
                if self._stop.is_set():
                    return
                started = time.monotonic()
                if self.mode == "plain":
                    attempt = self._plain(key, value, slot, started)
                else:
                    attempt = self._durable(key, value, slot, started)
                self.attempts.append(attempt)
                time.sleep(self.pace if attempt.ok else max(self.pace, 0.01))
        except BaseException as error:  # noqa: BLE001 - surfaced by stop()
            self._crash = error

    def _plain(self, key: str, value: str, slot: int, started: float) -> Attempt:
        try:
            ok = bool(self.client.set(key, value))
            return Attempt(key, value, slot, started, time.monotonic(), ok, error="" if ok else "SET returned false")
        except Exception as error:  # noqa: BLE001 - every failure is recorded
            return Attempt(key, value, slot, started, time.monotonic(), False, error=_describe(error))

    def _durable(self, key: str, value: str, slot: int, started: float) -> Attempt:
        try:
            node = self.client.get_node_from_key(key)
            client = self._node_client(node.host, node.port)
            pipe = client.pipeline(transaction=False)
            pipe.set(key, value)
            pipe.execute_command("WAIT", 1, self.wait_ms)
            set_reply, wait_reply = pipe.execute(raise_on_error=False)
        except Exception as error:  # noqa: BLE001 - every failure is recorded
            self._refresh()
            return Attempt(key, value, slot, started, time.monotonic(), False, error=_describe(error))
        ended = time.monotonic()
        if isinstance(set_reply, Exception) or set_reply is not True:
            self._refresh()
            return Attempt(key, value, slot, started, ended, False, error=_describe(set_reply))
        durable = isinstance(wait_reply, int) and not isinstance(wait_reply, bool) and wait_reply >= 1
        error = "" if durable else f"WAIT 1 got {wait_reply!r}"
        return Attempt(key, value, slot, started, ended, True, durable=durable, error=error)

    def _node_client(self, host: str, port: int) -> redis.Redis:
        found = self._node_clients.get((host, port))
        if found is None:
            found = self._node_clients[(host, port)] = redis.Redis(
                host=host,
                port=port,
                password=self.password,
                decode_responses=True,
                socket_timeout=max(2.0, self.wait_ms / 1000 + 1),
                socket_connect_timeout=1.0,
                retry=Retry(NoBackoff(), 0),
            )
        return found

    def _refresh(self) -> None:
        try:
            self.client.nodes_manager.initialize()
        except Exception:  # noqa: BLE001 - nobody answers right now; the next attempt retries
            pass

    # -- results --------------------------------------------------------------------------

    def acknowledged(self) -> dict[str, str]:
        return {a.key: a.value for a in self.attempts if a.ok}

    def durable(self) -> dict[str, str]:
        return {a.key: a.value for a in self.attempts if a.durable}

    def failures(self) -> list[Attempt]:
        return [a for a in self.attempts if not a.ok]

    def successes_after(self, moment: float, slots: Optional[Iterable[int]] = None) -> list[Attempt]:
        wanted = None if slots is None else set(slots)
        return [a for a in self.attempts if a.ok and a.started >= moment and (wanted is None or a.slot in wanted)]

    def wait_for_success_after(self, moment: float, slots: Optional[Iterable[int]], timeout: float) -> Attempt:
        """Blocks until a write that started after `moment` (to `slots`) succeeded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.successes_after(moment, slots)
            if found:
                return found[0]
            if not self._thread.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(
            f"writer {self.prefix}: no successful write after {timeout:.0f}s; last errors: "
            + "; ".join(sorted({a.error for a in self.failures()[-20:]}))
        )

    def longest_outage(self, slots: Optional[Iterable[int]] = None) -> float:
        """The longest stretch of failed writes (to `slots`): from the start of the first
        failed attempt of a run to the end of the next successful one (to the end of the
        last attempt when none succeeded after it)."""
        wanted = None if slots is None else set(slots)
        attempts = sorted((a for a in self.attempts if wanted is None or a.slot in wanted), key=lambda a: a.started)
        longest = 0.0
        run_started: Optional[float] = None
        for attempt in attempts:
            if not attempt.ok:
                if run_started is None:
                    run_started = attempt.started
            elif run_started is not None:
                longest = max(longest, attempt.ended - run_started)
                run_started = None
        if run_started is not None and attempts:
            longest = max(longest, attempts[-1].ended - run_started)
        return longest

    def slowest_success(self, slots: Optional[Iterable[int]] = None) -> float:
        wanted = None if slots is None else set(slots)
        times = [a.ended - a.started for a in self.attempts if a.ok and (wanted is None or a.slot in wanted)]
        return max(times, default=0.0)

    def summary(self) -> str:
        failures = self.failures()
        errors = sorted({a.error for a in failures})
        text = f"{self.prefix}: {len(self.attempts)} attempts, {len(self.acknowledged())} acknowledged"
        if self.mode == "wait":
            text += f", {len(self.durable())} WAIT-acknowledged"
        text += f", {len(failures)} failed"
        if errors:
            text += f" ({'; '.join(errors[:5])})"
        return text


def _describe(error: object) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:120] if text else ''}"


def write_keys(sandbox: Sandbox, prefix: str, count: int) -> dict[str, str]:
    """Writes `count` keys through a cluster client; returns them (all acknowledged)."""
    client = cluster_client(sandbox)
    written = {}
    try:
        for start in range(0, count, 500):
            pipe = client.pipeline()
            chunk = {f"{prefix}:{n}": str(n) for n in range(start, min(count, start + 500))}
            for key, value in chunk.items():
                pipe.set(key, value)
            replies = pipe.execute()
            assert all(r is True for r in replies), replies
            written.update(chunk)
    finally:
        client.close()
    return written


def lost_keys(sandbox: Sandbox, expected: Mapping[str, str]) -> list[str]:
    """Keys of `expected` that are missing or hold another value, read by a fresh client."""
    client = cluster_client(sandbox)
    lost = []
    try:
        keys = list(expected)
        for start in range(0, len(keys), 2000):
            chunk = keys[start : start + 2000]
            # A cluster pipeline sends one batch per node.
            pipe = client.pipeline()
            for key in chunk:
                pipe.get(key)
            values = pipe.execute()
            lost += [k for k, v in zip(chunk, values) if v != expected[k]]
    finally:
        client.close()
    return lost


# ---------------------------------------------------------------------------------------
# The cluster as the nodes see it.
# ---------------------------------------------------------------------------------------


def cluster_problems(sandbox: Sandbox) -> dict[str, str]:
    """`local_nodes.cluster_problems` over the sandbox's recorded pods: every node ok, all
    slots served, every other node known at its current address, linked, no fail flag."""
    state = _state(sandbox)
    return node_cluster_problems([sandbox.local_node(state, record) for record in state.nodes])


def wait_healthy(sandbox: Sandbox, timeout: float = 60.0) -> float:
    """Waits until `cluster_problems` is empty; returns the seconds it took."""
    state = _state(sandbox)
    return wait_cluster_ok([sandbox.local_node(state, record) for record in state.nodes], timeout)


def states_ok(sandbox: Sandbox) -> dict[str, str]:
    """cluster_state per pod (or the error)."""
    state = _state(sandbox)
    result = {}
    for record in state.nodes:
        client = node_client(state, record, timeout=1.0)
        try:
            result[record.pod] = client.execute_command("CLUSTER INFO")["cluster_state"]
        except (redis.RedisError, OSError) as error:
            result[record.pod] = _describe(error)
        finally:
            client.close()
    return result


def wait_replication_settled(sandbox: Sandbox, timeout: float = 60.0) -> None:
    """Until every replica's link is up, no sync or AOF rewrite runs, and every master
    sees its replicas online."""
    state = _state(sandbox)
    deadline = time.monotonic() + timeout
    while True:
        pending = []
        for record in state.nodes:
            client = node_client(state, record)
            try:
                info = client.info()
            except (redis.RedisError, OSError) as error:
                pending.append(f"{record.pod}: {_describe(error)}")
                continue
            finally:
                client.close()
            pending += replication_problems(record.pod, info)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"replication not settled after {timeout:.0f}s: {pending}")
        time.sleep(0.1)


@dataclass(frozen=True)
class NodeFacts:
    pod: str
    host: str
    pid: Optional[int]
    id: str
    role: str  # master or slave, from the node's own CLUSTER NODES line; down if unreachable
    master_id: Optional[str]
    slots: str
    run_id: str  # changes whenever the process restarts
    config_epoch: str


def snapshot(sandbox: Sandbox) -> dict[str, NodeFacts]:
    """Each pod's identity, role, slots and process run id, as the nodes report them."""
    state = _state(sandbox)
    facts = {}
    for record in state.nodes:
        client = node_client(state, record)
        try:
            myself = next(
                line.split()
                for line in client.execute_command("CLUSTER", "NODES").splitlines()
                if "myself" in line.split()[2].split(",")
            )
            run_id = client.info("server")["run_id"]
        except (redis.ConnectionError, redis.TimeoutError):
            facts[record.pod] = NodeFacts(record.pod, record.host, record.pid, "", "down", None, "", "", "")
            continue
        finally:
            client.close()
        facts[record.pod] = NodeFacts(
            pod=record.pod,
            host=record.host,
            pid=record.pid,
            id=myself[0],
            role="master" if "master" in myself[2].split(",") else "slave",
            master_id=None if myself[3] == "-" else myself[3],
            slots=" ".join(myself[8:]),
            run_id=run_id,
            config_epoch=myself[6],
        )
    return facts


def masters(sandbox: Sandbox) -> dict[str, NodeFacts]:
    return {pod: f for pod, f in snapshot(sandbox).items() if f.role == "master" and f.slots}


def slots_of(facts: NodeFacts) -> set[int]:
    slots: set[int] = set()
    for token in facts.slots.split():
        if token.startswith("["):
            continue
        start, _, end = token.partition("-")
        slots.update(range(int(start), int(end or start) + 1))
    return slots


def replica_of(sandbox: Sandbox, master_pod: str) -> str:
    facts = snapshot(sandbox)
    master_id = facts[master_pod].id
    return next(pod for pod, f in facts.items() if f.master_id == master_id)


# ---------------------------------------------------------------------------------------
# Pods stopped and started by hand (what Sandbox.restart does, with choices it does not
# offer: no preStop, a pause before the start, another peers list).
# ---------------------------------------------------------------------------------------


def record_of(state: SandboxState, pod: str) -> NodeRecord:
    return next(r for r in state.nodes if r.pod == pod)


def stop_pod(sandbox: Sandbox, pod: str, prestop: bool) -> None:
    """The kubelet's stop: preStop (when asked) to completion, then SIGTERM (repeated, as
    Redis drops one that arrives while it writes its first AOF), SIGKILL of the rest."""
    state = _state(sandbox)
    record = record_of(state, pod)
    pid = record.pid
    if pid is None or not _is_redis(pid):
        record.pid = None
        sandbox.save(state)
        return
    if prestop:
        sandbox.local_node(state, record).run_script("pre-stop.sh", timeout=90)
    deadline = time.monotonic() + 30
    while _running(pid) and time.monotonic() < deadline:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            break
        until = time.monotonic() + 1.0
        while _running(pid) and time.monotonic() < until:
            time.sleep(0.02)
    kill_session(pid)
    _reap(pid)
    record.pid = None
    sandbox.save(state)


def start_pod(
    sandbox: Sandbox,
    pod: str,
    host: Optional[str] = None,
    peers: Optional[Sequence[str]] = None,
    managed: Optional[ManagedSandbox] = None,
) -> LocalNode:
    """Starts a stopped pod through the entrypoint as Sandbox.restart does (at `host` when
    given); `peers` replaces the peers file the sandbox would write."""
    state = _state(sandbox)
    record = record_of(state, pod)
    if host is not None:
        record.host = host
        sandbox.save(state)
    node = sandbox.local_node(state, record)
    if peers is not None:
        node = dataclasses.replace(node, peers=tuple(peers))
    if managed is not None:
        managed.extra_nodes.append(node)
    record.pid = node.start()
    sandbox.save(state)
    return node


def fresh_addresses(state: SandboxState, count: int) -> list[str]:
    """`count` free addresses that no pod of `state` has now: pods that all move get
    addresses none of them had, as pods rescheduled in a VPC usually do."""
    taken = {n.host for n in state.nodes}
    found = []
    for host in range(1, 255):
        address = f"127.0.{state.third_octet}.{host}"
        if address not in taken and ports_free(address):
            found.append(address)
            if len(found) == count:
                return found
    raise RuntimeError(f"not {count} free addresses left in 127.0.{state.third_octet}.0/24")


def _is_redis(pid: int) -> bool:
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _running(pid: int) -> bool:
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_ready(sandbox: Sandbox, pod: str, timeout: float = 60.0) -> float:
    """Until the pod's readiness probe passes (what a StatefulSet waits for)."""
    state = _state(sandbox)
    node = sandbox.local_node(state, record_of(state, pod))
    started = time.monotonic()
    while True:
        probe = node.run_script("probe-readiness.sh", timeout=10)
        if probe.returncode == 0:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{pod} not ready after {timeout:.0f}s: {probe.stderr.strip()}")
        time.sleep(0.1)
