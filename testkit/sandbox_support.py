"""The sandbox as the reliability suite and its benchmark drive it: one that always ends, read, and pods moved by hand.

Addresses: the reliability tests lock 127.0.40.0/24 - 127.0.49.0/24, one octet per test,
and its benchmark 127.0.50.0/24 - 127.0.59.0/24 (`ManagedSandbox` takes the octet's lock).
Nothing here leaves loopback.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from cluster_logic.model import expand_ranges, parse_cluster_nodes
from components.stack_settings import NAMESPACE, PROJECT_DIR, read_stack_config
from sandbox import partitions
from sandbox.local_cluster import NodeRecord, Sandbox, SandboxState
from sandbox.local_nodes import LocalNode, ports_free
from sandbox.processes import is_server, stop_like_the_kubelet
from testkit import redis_nodes
from testkit.processes import sweep

# ---------------------------------------------------------------------------------------
# A sandbox of other settings.
# ---------------------------------------------------------------------------------------


class ConfiguredSandbox(Sandbox):
    """A `Sandbox` whose stack file also sets `config` (`redis-eks:` keys without the prefix,
    e.g. {"durability": "bounded"}), as a Pulumi.<stack>.yaml that sets them would: validated
    with the rest of the stack, and what shapes the pods reaches them."""

    def __init__(self, *args: Any, config: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra_config = dict(config)

    def stack_config(self, stack: Optional[str] = None) -> dict[str, str]:
        config = {**super().stack_config(stack), **{f"{NAMESPACE}:{k}": v for k, v in self.extra_config.items()}}
        read_stack_config(config, secret_keys=())
        return config


# ---------------------------------------------------------------------------------------
# A sandbox that always ends.
# ---------------------------------------------------------------------------------------


class ManagedSandbox:
    """A `Sandbox` plus whatever `LocalNode`s a test starts itself; `close()` stops all of
    them by pid (Sandbox.down, then a sweep of every process still working under the root)
    and reports what had to be swept."""

    def __init__(
        self,
        root: Path,
        third_octet: int,
        sandbox: Optional[Sandbox] = None,
        engine: Optional[str] = None,
        config: Optional[Mapping[str, str]] = None,
    ) -> None:
        """`config`: stack settings besides the dev stack's (a `ConfiguredSandbox`)."""
        self.root = Path(root)
        if sandbox is None and config:
            sandbox = ConfiguredSandbox(
                root=self.root, stack="dev", third_octet=third_octet, engine=engine, config=config
            )
        self.sandbox = sandbox or Sandbox(root=self.root, stack="dev", third_octet=third_octet, engine=engine)
        self.extra_nodes: list[LocalNode] = []
        # Two runs of the suite at once queue up per 127.0.<octet>.0/24 instead of meeting
        # each other's nodes there; the kernel drops the lock of a dead process.
        redis_nodes.LOCK_DIR.mkdir(parents=True, exist_ok=True)
        lock_file = redis_nodes.LOCK_DIR / f"reliability-octet-{self.sandbox.third_octet}"
        self._lock = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
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
        # down heals; a table that outlived it is reported, and removed all the same.
        if partitions.listing(self.sandbox.third_octet) is not None:
            problems.append(f"the partition of 127.0.{self.sandbox.third_octet}.0/24 survived down")
            partitions.heal(self.sandbox.third_octet)
        if self.root.exists():
            problems += [f"{found} survived down" for found in sweep(self.root)]
            self.sandbox.down(purge=True)
        return problems


# ---------------------------------------------------------------------------------------
# Clients and nodes.
# ---------------------------------------------------------------------------------------


def _state(sandbox: Sandbox) -> SandboxState:
    state = sandbox.load()
    if state is None:
        raise RuntimeError(f"no sandbox state in {sandbox.root}")
    return state


def sandbox_nodes(sandbox: Sandbox) -> list[LocalNode]:
    """The sandbox's recorded pods as `LocalNode`s (to read and probe; they were started
    by the sandbox, so these have no process of their own)."""
    state = _state(sandbox)
    return [sandbox.local_node(state, record) for record in state.nodes]


def cluster_client(sandbox: Sandbox, retries: int = 10, socket_timeout: float = 2.0) -> RedisCluster:
    """`redis_nodes.cluster_client` with the sandbox's pods as startup nodes; over TLS the
    announced names are looked up in the sandbox's state at each refresh, as DNS would
    follow pods that moved."""

    def resolve(name: str) -> Optional[str]:
        return sandbox.announced_addresses(_state(sandbox)).get(name)

    return redis_nodes.cluster_client(
        sandbox_nodes(sandbox), retries=retries, socket_timeout=socket_timeout, resolve=resolve
    )


def node_client(state: SandboxState, record: NodeRecord, timeout: float = 2.0) -> redis.Redis:
    """A client of one pod, over TLS (the chain verified against the sandbox's CA) when the
    sandbox speaks it."""
    tls: dict[str, Any] = {}
    if state.tls:
        tls = {"ssl": True, "ssl_ca_certs": state.tls_ca_file, "ssl_cert_reqs": "required", "ssl_check_hostname": False}
    return redis.Redis(
        host=record.host,
        port=record.port,
        password=state.password,
        socket_timeout=timeout,
        socket_connect_timeout=1.0,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
        **tls,
    )


# ---------------------------------------------------------------------------------------
# The cluster as the nodes see it.
# ---------------------------------------------------------------------------------------


def cluster_problems(sandbox: Sandbox) -> dict[str, str]:
    """`redis_nodes.cluster_problems` over the sandbox's recorded pods: every node ok, all
    slots served, every other node known at its current address, linked, no fail flag."""
    return redis_nodes.cluster_problems(sandbox_nodes(sandbox))


def wait_healthy(sandbox: Sandbox, timeout: float = 60.0) -> float:
    """Waits until `cluster_problems` is empty; returns the seconds it took."""
    return redis_nodes.wait_cluster_ok(sandbox_nodes(sandbox), timeout)


def states_ok(sandbox: Sandbox) -> dict[str, str]:
    """cluster_state per pod (or the error)."""
    state = _state(sandbox)
    result = {}
    for record in state.nodes:
        client = node_client(state, record, timeout=1.0)
        try:
            result[record.pod] = client.execute_command("CLUSTER INFO")["cluster_state"]
        except (redis.RedisError, OSError) as error:
            result[record.pod] = f"{type(error).__name__}: {error}"
        finally:
            client.close()
    return result


def wait_replication_settled(sandbox: Sandbox, timeout: float = 60.0) -> None:
    """Until every replica's link is up, no sync or AOF rewrite runs, and every master
    sees its replicas online."""
    redis_nodes.wait_replicas_online(sandbox_nodes(sandbox), timeout=timeout)


@dataclass(frozen=True)
class NodeFacts:
    pod: str
    host: str
    pid: Optional[int]
    id: str
    role: str  # master or slave, from the node's own CLUSTER NODES line; down if unreachable
    master_id: Optional[str]
    slots: tuple[tuple[int, int], ...]
    migrating: tuple[tuple[int, str], ...]
    importing: tuple[tuple[int, str], ...]
    run_id: str  # changes whenever the process restarts
    config_epoch: int


def snapshot(sandbox: Sandbox) -> dict[str, NodeFacts]:
    """Each pod's identity, role, slots and process run id, as the nodes report them."""
    state = _state(sandbox)
    facts = {}
    for record in state.nodes:
        client = node_client(state, record)
        try:
            myself = next(e for e in parse_cluster_nodes(client.execute_command("CLUSTER", "NODES")) if e.myself)
            run_id = client.info("server")["run_id"]
        except (redis.ConnectionError, redis.TimeoutError):
            facts[record.pod] = NodeFacts(record.pod, record.host, record.pid, "", "down", None, (), (), (), "", 0)
            continue
        finally:
            client.close()
        facts[record.pod] = NodeFacts(
            pod=record.pod,
            host=record.host,
            pid=record.pid,
            id=myself.id,
            role="master" if myself.is_master else "slave",
            master_id=myself.master_id,
            slots=myself.slots,
            migrating=myself.migrating,
            importing=myself.importing,
            run_id=run_id,
            config_epoch=myself.config_epoch,
        )
    return facts


def masters(sandbox: Sandbox) -> dict[str, NodeFacts]:
    return {pod: f for pod, f in snapshot(sandbox).items() if f.role == "master" and f.slots}


def slots_of(facts: NodeFacts) -> set[int]:
    return set(expand_ranges(facts.slots))


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


# Tests stop and start pods from several threads at once: each change to the recorded
# state is a load, one record changed, and a save, one thread at a time.
_STATE_LOCK = threading.Lock()


def _update_record(sandbox: Sandbox, pod: str, **changes: Any) -> None:
    with _STATE_LOCK:
        state = _state(sandbox)
        record = record_of(state, pod)
        for name, value in changes.items():
            setattr(record, name, value)
        sandbox.save(state)


def stop_pod(sandbox: Sandbox, pod: str, prestop: bool) -> None:
    """The kubelet's stop: preStop (when asked) to completion, then SIGTERM (repeated, as
    Redis drops one that arrives while it writes its first AOF), SIGKILL of the rest."""
    state = _state(sandbox)
    record = record_of(state, pod)
    if is_server(record.pid):
        if prestop:
            sandbox.local_node(state, record).run_script("pre-stop.sh", timeout=90)
        stop_like_the_kubelet(record.pid)
    _update_record(sandbox, pod, pid=None)


def start_pod(
    sandbox: Sandbox,
    pod: str,
    host: Optional[str] = None,
    peers: Optional[Sequence[str]] = None,
    managed: Optional[ManagedSandbox] = None,
) -> LocalNode:
    """Starts a stopped pod through the entrypoint as Sandbox.restart does (at `host` when
    given); `peers` replaces the peers file the sandbox would write."""
    if host is not None:
        _update_record(sandbox, pod, host=host)
    state = _state(sandbox)
    record = record_of(state, pod)
    node = sandbox.local_node(state, record)
    if peers is not None:
        node = dataclasses.replace(node, peers=tuple(peers))
    if managed is not None:
        managed.extra_nodes.append(node)
    _update_record(sandbox, pod, pid=node.start())
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


def wait_ready(sandbox: Sandbox, pod: str, timeout: float = 60.0) -> float:
    """Until the pod's readiness probe passes (what a StatefulSet waits for); returns the
    seconds it took."""
    state = _state(sandbox)
    return redis_nodes.wait_ready([sandbox.local_node(state, record_of(state, pod))], timeout)


def run_sandbox_cli(root: Path, third_octet: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m sandbox --root <root> --third-octet <n> <args>` as a user runs it; with
    `check`, a failure raises with what the command printed."""
    result = subprocess.run(
        [sys.executable, "-m", "sandbox", "--root", str(root), "--third-octet", str(third_octet), *args],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"sandbox {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result
