"""The local sandbox: the stack's Redis Cluster as processes on this machine.

Each pod of the StatefulSet becomes a `LocalNode` (sandbox/local_nodes.py) on a loopback
address of its own, running the redis.conf, auth.conf and scripts that the workload
component renders for the stack, and the cluster is formed by the bootstrap provider's own
logic over the direct transport. What Kubernetes would keep (pod names, addresses, pids,
volumes) is kept in `<root>/cluster.json`, so every command can run in a new process.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import redis

from cluster_logic.model import NodeAddress, NodeEntry, format_ranges, parse_cluster_nodes
from cluster_logic.reconcile import ensure_cluster, read_topology
from cluster_logic.transports.direct import DirectTransport
from components.engines import DEFAULT_ENGINE, ENGINES, change_refusal
from components.redis_node_files import REDIS_PORT
from components.stack_settings import NAMESPACE, StackSettings, load_stack_config, parse_settings
from sandbox.engine_binaries import EngineBinaries, find_binaries
from sandbox.local_nodes import LocalNode, ports_free
from sandbox.processes import is_server, kill_session, stop_like_the_kubelet, wait_gone

DEFAULT_ROOT = Path(".sandbox")
STATE_FILE = "cluster.json"
STATEFUL_SET = "redis-cluster"
# Pods spread over zones as the StatefulSet's topology spread does; the bootstrap keeps
# every replica out of its master's zone.
ZONES = ("sandbox-a", "sandbox-b", "sandbox-c")
# 127.0.<octet>.<host>: the sandbox's own range, away from the test suites' ranges.
DEFAULT_THIRD_OCTET = 60


class SandboxError(RuntimeError):
    """A sandbox command cannot do what was asked; the message says why."""


@dataclass
class NodeRecord:
    pod: str
    host: str
    port: int
    zone: str
    pid: Optional[int] = None
    role: str = "unknown"


@dataclass
class SandboxState:
    password: str
    shards: int
    replicas_per_shard: int
    stack: str
    third_octet: int
    nodes: list[NodeRecord] = field(default_factory=list)
    engine: str = DEFAULT_ENGINE
    # The folder of the server and CLI the pods run, once a roll chose one; until then the
    # engine's binaries from .engines/ (or PATH).
    bin_dir: Optional[str] = None

    def binaries(self) -> EngineBinaries:
        if self.bin_dir is not None:
            return EngineBinaries(ENGINES[self.engine], Path(self.bin_dir))
        return find_binaries(self.engine)

    def to_json(self, root: Path) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "engine": self.engine,
            "bin_dir": self.bin_dir,
            "shards": self.shards,
            "replicas_per_shard": self.replicas_per_shard,
            "third_octet": self.third_octet,
            "password": self.password,
            "nodes": [
                {
                    "pod": n.pod,
                    "host": n.host,
                    "port": n.port,
                    "zone": n.zone,
                    "pid": n.pid,
                    "role": n.role,
                    "data_dir": str((root / "nodes" / n.pod / "data").resolve()),
                }
                for n in self.nodes
            ],
        }


class Sandbox:
    """A Redis Cluster of local processes, driven like the StatefulSet and the bootstrap."""

    def __init__(
        self,
        root: Path = DEFAULT_ROOT,
        stack: str = "dev",
        third_octet: int = DEFAULT_THIRD_OCTET,
        engine: Optional[str] = None,
        binaries: Optional[EngineBinaries] = None,
    ):
        """`engine` None: what the sandbox runs, else the stack's `engine` setting.
        `binaries`: the server and CLI a new sandbox starts on (default: the engine's from
        .engines/), e.g. an older release to roll from."""
        self.root = Path(root)
        self.stack = stack
        self.third_octet = third_octet
        self.engine = engine or (binaries.engine.name if binaries else None)
        self.initial_binaries = binaries

    # -- state ------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    def load(self) -> Optional[SandboxState]:
        if not self.state_path.exists():
            return None
        raw = json.loads(self.state_path.read_text())
        nodes = [NodeRecord(**{k: v for k, v in n.items() if k != "data_dir"}) for n in raw["nodes"]]
        return SandboxState(
            password=raw["password"],
            shards=raw["shards"],
            replicas_per_shard=raw["replicas_per_shard"],
            stack=raw["stack"],
            third_octet=raw["third_octet"],
            nodes=nodes,
            # A state from before the engine setting ran Redis.
            engine=raw.get("engine", DEFAULT_ENGINE),
            bin_dir=raw.get("bin_dir"),
        )

    def save(self, state: SandboxState) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # The state holds the password, like the Secret it stands in for: private (mkstemp's
        # 0600) from the start. A file of its own per writer, so that two saves at once
        # (two commands, or threads) each replace the state whole.
        descriptor, temporary = tempfile.mkstemp(dir=self.root, prefix=".cluster-", suffix=".tmp")
        with os.fdopen(descriptor, "w") as handle:
            handle.write(json.dumps(state.to_json(self.root), indent=2) + "\n")
        os.replace(temporary, self.state_path)

    def settings(self, state: SandboxState) -> StackSettings:
        """The stack's settings (Pulumi.<stack>.yaml), with the sandbox's cluster shape."""
        prefix = NAMESPACE + ":"
        values = {
            key[len(prefix) :]: value for key, value in load_stack_config(state.stack).items() if key.startswith(prefix)
        }
        # Only what shapes the pods applies here; the platform keys describe AWS.
        workload_keys = {"nodeTimeoutMs", "maxmemoryPolicy", "memoryLimit", "memoryRequest"}
        values = {key: value for key, value in values.items() if key in workload_keys}
        values.update(shards=str(state.shards), replicasPerShard=str(state.replicas_per_shard), engine=state.engine)
        return parse_settings(values)

    def stack_engine(self) -> str:
        """The engine the stack file names (`redis-eks:engine`), or the default."""
        return str(load_stack_config(self.stack).get(f"{NAMESPACE}:engine", DEFAULT_ENGINE))

    def local_node(self, state: SandboxState, record: NodeRecord) -> LocalNode:
        return LocalNode(
            pod=record.pod,
            ip=record.host,
            port=record.port,
            root=(self.root / "nodes" / record.pod).resolve(),
            settings=self.settings(state),
            password=state.password,
            peers=tuple(n.host for n in state.nodes),
            binaries=state.binaries(),
        )

    # -- commands ---------------------------------------------------------------------

    def up(
        self, shards: Optional[int] = None, replicas_per_shard: Optional[int] = None, timeout: float = 120.0
    ) -> dict[str, Any]:
        """Starts whatever pod is not running and forms (or adopts, or scales out) the cluster.
        A shape left out is the one the sandbox runs (3 shards, 1 replica each at first)."""
        state = self.load()
        if shards is None:
            shards = state.shards if state is not None else 3
        if replicas_per_shard is None:
            replicas_per_shard = state.replicas_per_shard if state is not None else 1
        if state is None:
            state = SandboxState(
                password=secrets.token_urlsafe(30),
                shards=shards,
                replicas_per_shard=replicas_per_shard,
                stack=self.stack,
                third_octet=self.third_octet,
                engine=self.engine or self.stack_engine(),
                bin_dir=None if self.initial_binaries is None else str(self.initial_binaries.bin_dir),
            )
        elif self.engine is not None and self.engine != state.engine:
            raise SandboxError(
                f"the sandbox runs {state.engine}; pods of {self.engine} cannot load its data. "
                f"`down --purge` and `up --engine {self.engine}` for a new one"
            )
        elif shards < state.shards or replicas_per_shard < state.replicas_per_shard:
            raise SandboxError(
                f"the sandbox runs {state.shards} shards with {state.replicas_per_shard} replica(s) each; "
                "scaling in is not supported (it would have to drain slots first): `down --purge` and `up` again"
            )
        state.shards, state.replicas_per_shard = shards, replicas_per_shard
        # A shape the settings refuse changes nothing: judged before anything is written.
        self.settings(state)
        count = shards * (1 + replicas_per_shard)
        for ordinal in range(len(state.nodes), count):
            state.nodes.append(
                NodeRecord(
                    pod=f"{STATEFUL_SET}-{ordinal}",
                    host=self._free_address(state),
                    port=REDIS_PORT,
                    zone=ZONES[ordinal % len(ZONES)],
                )
            )
        # Binaries that cannot be found change nothing either.
        state.binaries()
        self.save(state)
        # Every node learns the full peer list (the ConfigMap's peers file), running or not.
        for record in state.nodes:
            self.local_node(state, record).write_files()
        for record in state.nodes:
            if not is_server(record.pid):
                record.pid = self.local_node(state, record).start()
                self.save(state)
        with _transport(state) as transport:
            topology = ensure_cluster(transport, shards, replicas_per_shard, timeout, mode="update")
        self._record_roles(state)
        return topology

    def status(self) -> list[dict[str, Any]]:
        """Each node's address, role, master, slots, replication link and keys."""
        state = self._require_state()
        by_id: dict[str, str] = {}
        rows = []
        for record in state.nodes:
            row: dict[str, Any] = {
                "pod": record.pod,
                "address": f"{record.host}:{record.port}",
                "zone": record.zone,
                "pid": record.pid,
            }
            if not is_server(record.pid):
                row.update(state="down")
                rows.append(row)
                continue
            try:
                client = self._client(state, record)
                myself = _myself(client.execute_command("CLUSTER", "NODES"))
                info = client.info("replication")
                server = client.info("server")
                row.update(
                    state="up",
                    # Valkey keeps redis_version at 7.2.4 for old clients; its own is valkey_version.
                    version=server.get("valkey_version") or server.get("redis_version"),
                    id=myself.id,
                    role=info["role"],
                    master_id=myself.master_id,
                    slots=" ".join(format_ranges(myself.slots)),
                    link=info.get("master_link_status", "-"),
                    keys=client.dbsize(),
                    cluster_state=client.execute_command("CLUSTER INFO")["cluster_state"],
                )
                by_id[myself.id] = record.pod
                client.close()
            except (redis.RedisError, OSError) as error:
                row.update(state=f"unreachable ({error})")
            rows.append(row)
        for row in rows:
            if row.get("master_id"):
                row["master"] = by_id.get(row["master_id"], row["master_id"][:8])
        return rows

    def binaries(self) -> EngineBinaries:
        """The server and CLI the sandbox's pods run."""
        return self._require_state().binaries()

    def topology(self) -> dict[str, Any]:
        """The live topology as `pulumi refresh` would report it."""
        state = self._require_state()
        with _transport(state) as transport:
            return read_topology(transport, state.shards, state.replicas_per_shard)

    def kill(self, pod: str) -> None:
        """SIGKILL, like a crashed container: no preStop, no shutdown."""
        state = self._require_state()
        record = self._record(state, pod)
        if is_server(record.pid):
            kill_session(record.pid)
            wait_gone(record.pid, 10)
        record.pid = None
        self.save(state)

    def restart(
        self,
        pods: Optional[Sequence[str]] = None,
        new_ip: bool = False,
        wait: bool = True,
        timeout: float = 120.0,
    ) -> None:
        """Like rescheduled pods: preStop, SIGTERM, then start through the entrypoint again
        (on a new address with `new_ip`). `pods=None` restarts every pod at once."""
        state = self._require_state()
        records = state.nodes if pods is None else [self._record(state, pod) for pod in pods]
        with ThreadPoolExecutor(max_workers=len(records)) as pool:
            list(pool.map(lambda r: self._stop(state, r, prestop=True), records))
        if new_ip:
            # Never hand a pod the address another pod just left: a peer that still dials
            # it would meet the wrong node and mark the right one noaddr. peer-recovery.sh
            # repairs that (tests/integration/test_node_scripts.py builds the case), but it
            # costs extra MEET rounds that would blur the restart figures.
            left = {record.host for record in records}
            for record in records:
                record.host = self._free_address(state, avoid=left)
        self.save(state)
        # The peers file follows the addresses, as the headless Service's DNS would.
        for record in state.nodes:
            self.local_node(state, record).write_files()
        for record in records:
            record.pid = self.local_node(state, record).start()
            self.save(state)
        if wait:
            self.wait_ok(timeout)
            self._record_roles(state)

    def roll(self, binaries: Optional[EngineBinaries] = None, timeout: float = 120.0) -> None:
        """A rolling update as the StatefulSet runs one: from the highest ordinal down, each
        pod through preStop and SIGTERM, started again on `binaries` (default: the engine's
        from .engines/, the line the stack deploys), and the next only once this one passes
        its readiness probe.
        Another engine, or an older line, is refused before any pod stops, as the stack's
        guard refuses it."""
        state = self._require_state()
        current = state.binaries()
        target = binaries or find_binaries(state.engine)
        refusal = change_refusal(state.engine, current.version, target.engine.name, target.version)
        if refusal is not None:
            raise SandboxError(refusal)
        state.bin_dir = str(target.bin_dir)
        self.save(state)
        for record in sorted(state.nodes, key=lambda r: int(r.pod.rsplit("-", 1)[1]), reverse=True):
            self._stop(state, record, prestop=True)
            node = self.local_node(state, record)
            record.pid = node.start()
            self.save(state)
            self._wait_ready(node, timeout)
        self.wait_ok(timeout)
        self._record_roles(state)

    def _wait_ready(self, node: LocalNode, timeout: float) -> None:
        # What the StatefulSet controller waits for before it takes the next pod: Ready,
        # i.e. the pod's own readiness probe passing (a replica in sync, the cluster ok).
        deadline = time.monotonic() + timeout
        while node.run_script("probe-readiness.sh", timeout=30).returncode != 0:
            if time.monotonic() > deadline:
                raise SandboxError(f"{node.pod} is not ready {timeout:.0f}s after its restart")
            time.sleep(0.5)

    def down(self, purge: bool = False) -> None:
        """Stops every process the sandbox started, by pid; keeps the data unless `purge`."""
        state = self.load()
        if state is not None:
            with ThreadPoolExecutor(max_workers=max(1, len(state.nodes))) as pool:
                list(pool.map(lambda r: self._stop(state, r, prestop=False), state.nodes))
            self.save(state)
        if purge and self.root.exists():
            shutil.rmtree(self.root)

    def wait_ok(self, timeout: float = 120.0) -> dict[str, Any]:
        """Waits until the bootstrap's own view of the cluster is ok: every node up and
        agreeing, all slots served, every replica linked. Returns that topology."""
        deadline = time.monotonic() + timeout
        while True:
            topology = self.topology()
            if topology["state"] == "ok":
                return topology
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"the cluster is {topology['state']} after {timeout:.0f}s: " + "; ".join(topology["problems"])
                )
            time.sleep(0.2)

    def connection_lines(self) -> list[str]:
        state = self._require_state()
        first = state.nodes[0]
        auth = "VALKEYCLI_AUTH" if state.engine == "valkey" else "REDISCLI_AUTH"
        return [
            f"{auth}='{state.password}' {state.binaries().cli} -c -h {first.host} -p {first.port}",
            f"python: redis.RedisCluster(host={first.host!r}, port={first.port:d}, password={state.password!r})",
        ]

    # -- helpers ----------------------------------------------------------------------

    def _require_state(self) -> SandboxState:
        state = self.load()
        if state is None:
            raise SandboxError(f"no sandbox in {self.root}: run `python -m sandbox up` first")
        return state

    @staticmethod
    def _record(state: SandboxState, pod: str) -> NodeRecord:
        for record in state.nodes:
            if record.pod == pod:
                return record
        raise SandboxError(f"no pod {pod!r}; pods: " + ", ".join(n.pod for n in state.nodes))

    def _client(self, state: SandboxState, record: NodeRecord) -> redis.Redis:
        return self.local_node(state, record).client(socket_timeout=5, socket_connect_timeout=1)

    def _stop(self, state: SandboxState, record: NodeRecord, prestop: bool) -> None:
        if not is_server(record.pid):
            record.pid = None
            return
        if prestop:
            # The kubelet runs the hook to completion (bounded by the grace period), then SIGTERM.
            self.local_node(state, record).run_script("pre-stop.sh", timeout=90)
        stop_like_the_kubelet(record.pid)
        record.pid = None

    def _free_address(self, state: SandboxState, avoid: frozenset[str] | set[str] = frozenset()) -> str:
        taken = {n.host for n in state.nodes} | set(avoid)
        for host in range(1, 255):
            address = f"127.0.{state.third_octet}.{host}"
            if address not in taken and ports_free(address):
                return address
        raise SandboxError(f"no free address left in 127.0.{state.third_octet}.0/24")

    def _record_roles(self, state: SandboxState) -> None:
        for record in state.nodes:
            try:
                client = self._client(state, record)
                record.role = client.info("replication")["role"]
                client.close()
            except (redis.RedisError, OSError):
                record.role = "unknown"
        self.save(state)


def _myself(nodes_text: str) -> NodeEntry:
    for entry in parse_cluster_nodes(nodes_text):
        if entry.myself:
            return entry
    raise SandboxError("CLUSTER NODES has no myself line")


def _transport(state: SandboxState) -> DirectTransport:
    nodes = [NodeAddress(n.pod, n.host, n.port, n.zone) for n in state.nodes]
    return DirectTransport(nodes, state.password, cli=state.binaries().cli)
