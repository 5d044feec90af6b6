"""The local sandbox: the stack's Redis Cluster as processes on this machine.

Each pod of the StatefulSet becomes a `LocalNode` (sandbox/local_nodes.py) on a loopback
address of its own, running the redis.conf, auth.conf and scripts that the workload
component renders for the stack, and the cluster is formed by the bootstrap provider's own
logic over the direct transport. What Kubernetes would keep (pod names, addresses, pids,
volumes) is kept in `<root>/cluster.json`, so every command can run in a new process.

With TLS (`up --tls`, or the stack's `tls` setting) the sandbox also keeps what the stack's
TLS needs: a CA of its own (`<root>/ca/`, standing in for the issuer), the nodes' TLS Secret
(`<root>/tls/`: `tls.crt`, `tls.key`, `ca.crt`, mounted into every node) and a hosts file
(`<root>/hosts`) mapping each pod's announced DNS name to its address, as the headless
Service's DNS would answer, for clients run with nss_wrapper (`sandbox.name_resolution`).

`backup` and `restore` stand in for EBS snapshots of the data volumes and new volumes made
from them: a backup is a folder of every pod's data directory with a manifest
(`sandbox.backups`), by default in `<root>/backups/`, which `down --purge` leaves in place.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Optional, Sequence

import redis
from cryptography import x509

from cluster_logic.model import NodeAddress, NodeEntry, format_ranges, parse_cluster_nodes
from cluster_logic.reconcile import ensure_cluster, read_topology
from cluster_logic.scale_in import shrink
from cluster_logic.transports.base import TlsOptions
from cluster_logic.transports.direct import DirectTransport
from components.engines import DEFAULT_ENGINE, ENGINES, change_refusal, format_version
from components.redis_node_files import BUS_PORT, REDIS_PORT, TLS_CA_FILE, announced_hostname
from components.stack_settings import (
    NAMESPACE,
    PROJECT_DIR,
    StackSettings,
    load_stack_config,
    parse_settings,
    read_stack_config,
)
from sandbox import backups, partitions
from sandbox.certificates import HEADLESS_SERVICE, STATEFUL_SET, CertificateAuthority, TlsFiles, issue_node_files
from sandbox.engine_binaries import EngineBinaries, find_binaries
from sandbox.local_nodes import LocalNode, ports_free
from sandbox.name_resolution import nss_wrapper_library, write_hosts
from sandbox.processes import alive, is_server, kill_session, stop_like_the_kubelet, wait_gone

DEFAULT_ROOT = Path(".sandbox")
STATE_FILE = "cluster.json"
CA_DIR = "ca"
TLS_DIR = "tls"
HOSTS_FILE = "hosts"
# Backups outlive `down --purge`, as EBS snapshots outlive the volumes and the stack.
BACKUPS_DIR = "backups"
# Where a restore moves the data directories it replaces, as the StorageClass retains the old volumes.
REPLACED_DIR = "replaced"
NODES_DIR = "nodes"
# Where `restart --lose-volume` moves a pod's data directory: a volume no pod can use again.
LOST_VOLUMES_DIR = "lost-volumes"
# The CLI's command for a pod the kubelet starts again after its back-off (`kill`).
RESTART_COMMAND = "start-after"
# Pods spread over zones as the StatefulSet's topology spread does; the bootstrap keeps
# every replica out of its master's zone.
ZONES = ("sandbox-a", "sandbox-b", "sandbox-c")
# 127.0.<octet>.<host>: the sandbox's own range, away from the test suites' ranges.
DEFAULT_THIRD_OCTET = 60
# A node's cluster-bus port is its client port + 10000 (no `cluster-port` is set).
BUS_PORT_OFFSET = BUS_PORT - REDIS_PORT


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
    # Set by `kill` when the kubelet is to restart the pod after its back-off: the restart
    # happens only while this is still the pod's latest token; `down` clears it and stops
    # the waiting process (`restart_pid`).
    restart_token: Optional[str] = None
    restart_pid: Optional[int] = None


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
    # TLS only, with the CA certificate clients verify the nodes with (<root>/tls/ca.crt).
    tls: bool = False
    tls_ca_file: Optional[str] = None
    # Node ID -> pod, as the last `up` found them: what the bootstrap's outputs record, so
    # that a pod back under a new ID (a lost volume) can be told apart from a stranger.
    node_ids: dict[str, str] = field(default_factory=dict)
    # Pod -> data directory of the pods a scale-in removed: kept, as the StatefulSet keeps
    # the claims of the pods it removes (whenScaled: Retain).
    retained: dict[str, str] = field(default_factory=dict)

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
            "tls": self.tls,
            "tls_ca_file": self.tls_ca_file,
            "node_ids": self.node_ids,
            "retained": self.retained,
            "nodes": [
                {
                    "pod": n.pod,
                    "host": n.host,
                    "port": n.port,
                    "zone": n.zone,
                    "pid": n.pid,
                    "role": n.role,
                    "restart_token": n.restart_token,
                    "restart_pid": n.restart_pid,
                    "data_dir": str((root / NODES_DIR / n.pod / "data").resolve()),
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
        tls: Optional[bool] = None,
    ):
        """`engine` None: what the sandbox runs, else the stack's `engine` setting.
        `binaries`: the server and CLI a new sandbox starts on (default: the engine's from
        .engines/), e.g. an older release to roll from. `tls`: whether a new sandbox speaks
        TLS only (None: the stack's `tls` setting); `up(tls=...)` says the same."""
        self.root = Path(root)
        self.stack = stack
        self.third_octet = third_octet
        self.engine = engine or (binaries.engine.name if binaries else None)
        self.initial_binaries = binaries
        self.tls = tls

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
            # A state from before TLS ran without it.
            tls=raw.get("tls", False),
            tls_ca_file=raw.get("tls_ca_file"),
            node_ids=raw.get("node_ids", {}),
            retained=raw.get("retained", {}),
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

    def stack_config(self, stack: Optional[str] = None) -> dict[str, str]:
        """The stack file's config, once it passed the validation the program applies to it
        (a misspelt key, a near-miss namespace or a plain-text secret is refused here too)."""
        config = load_stack_config(stack or self.stack)
        read_stack_config(config, secret_keys=())
        return config

    def settings(self, state: SandboxState) -> StackSettings:
        """The stack's settings (Pulumi.<stack>.yaml), with the sandbox's cluster shape."""
        prefix = NAMESPACE + ":"
        values = {
            key[len(prefix) :]: value for key, value in self.stack_config(state.stack).items() if key.startswith(prefix)
        }
        # Only what shapes the pods applies here; the platform keys describe AWS. TLS is the
        # sandbox's own choice, made when it was created.
        workload_keys = {"nodeTimeoutMs", "durability", "maxmemoryPolicy", "memoryLimit", "memoryRequest", "namespace"}
        values = {key: value for key, value in values.items() if key in workload_keys}
        values.update(shards=str(state.shards), replicasPerShard=str(state.replicas_per_shard), engine=state.engine)
        values["tls"] = "true" if state.tls else "false"
        return parse_settings(values)

    def stack_tls(self) -> bool:
        """Whether the stack file turns TLS on (`redis-eks:tls`)."""
        return self.stack_config().get(f"{NAMESPACE}:tls") == "true"

    @property
    def tls_dir(self) -> Path:
        """The nodes' TLS Secret: what every node's TLS dir holds."""
        return self.root / TLS_DIR

    @property
    def hosts_path(self) -> Path:
        return self.root / HOSTS_FILE

    def stack_engine(self) -> str:
        """The engine the stack file names (`redis-eks:engine`), or the default."""
        return self.stack_config().get(f"{NAMESPACE}:engine", DEFAULT_ENGINE)

    def local_node(self, state: SandboxState, record: NodeRecord) -> LocalNode:
        return LocalNode(
            pod=record.pod,
            ip=record.host,
            port=record.port,
            root=(self.root / NODES_DIR / record.pod).resolve(),
            settings=self.settings(state),
            password=state.password,
            peers=tuple(n.host for n in state.nodes),
            binaries=state.binaries(),
            tls_files=TlsFiles.read(self.tls_dir) if state.tls else None,
        )

    def announced_addresses(self, state: SandboxState) -> dict[str, str]:
        """Each pod's announced DNS name -> its address (TLS only)."""
        namespace = self.settings(state).namespace
        return {announced_hostname(n.pod, HEADLESS_SERVICE, namespace): n.host for n in state.nodes}

    def _write_hosts(self, state: SandboxState) -> None:
        # The headless Service's DNS: the names follow the pods to their new addresses.
        if state.tls:
            write_hosts(self.hosts_path, self.announced_addresses(state))

    def _new_tls(self, state: SandboxState) -> None:
        """A CA of the sandbox's own and the nodes' certificate from it."""
        ca = CertificateAuthority.new(f"redis-eks sandbox CA ({self.root.resolve().name})")
        ca.save(self.root / CA_DIR)
        issue_node_files(ca, self.settings(state).namespace).write(self.tls_dir)
        # The path through the mount's links, which a renewal keeps: never resolved to ..data.
        state.tls_ca_file = str(self.tls_dir.resolve() / TLS_CA_FILE)

    # -- commands ---------------------------------------------------------------------

    def up(
        self,
        shards: Optional[int] = None,
        replicas_per_shard: Optional[int] = None,
        timeout: float = 120.0,
        tls: Optional[bool] = None,
    ) -> dict[str, Any]:
        """Starts whatever pod is not running and forms (or adopts, or scales out) the cluster.
        A shape left out is the one the sandbox runs (3 shards, 1 replica each at first).
        `tls` (a new sandbox only; default: the stack's `tls` setting): TLS only, with a CA of
        the sandbox's own."""
        state = self.load()
        tls = self.tls if tls is None else tls
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
                tls=self.stack_tls() if tls is None else tls,
            )
        elif tls is not None and tls != state.tls:
            raise SandboxError(
                f"the sandbox runs {'with' if state.tls else 'without'} TLS; every client and node would have to "
                f"switch at once. `down --purge` and `up {'--tls' if tls else '--no-tls'}` for a new one"
            )
        elif self.engine is not None and self.engine != state.engine:
            raise SandboxError(
                f"the sandbox runs {state.engine}; pods of {self.engine} cannot load its data. "
                f"`down --purge` and `up --engine {self.engine}` for a new one"
            )
        elif shards < state.shards or replicas_per_shard < state.replicas_per_shard:
            if shards > state.shards or replicas_per_shard > state.replicas_per_shard:
                raise SandboxError(
                    f"the sandbox runs {state.shards} shards with {state.replicas_per_shard} replica(s) each: scale "
                    f"in and out in separate runs, not to {shards} shards with {replicas_per_shard} at once"
                )
            return self._scale_in(state, shards, replicas_per_shard, timeout)
        state.shards, state.replicas_per_shard = shards, replicas_per_shard
        # A shape the settings refuse changes nothing: judged before anything is written.
        self.settings(state)
        count = shards * (1 + replicas_per_shard)
        for ordinal in range(len(state.nodes), count):
            # A pod a scale-in removed comes back on its retained data directory, as a pod on its
            # retained claim; its entrypoint sets aside data of a node the cluster forgot.
            state.retained.pop(f"{STATEFUL_SET}-{ordinal}", None)
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
        if state.tls and not (self.tls_dir / TLS_CA_FILE).exists():
            self._new_tls(state)
        self.save(state)
        self._write_hosts(state)
        # Every node learns the full peer list (the ConfigMap's peers file), running or not.
        for record in state.nodes:
            self.local_node(state, record).write_files()
        for record in state.nodes:
            if not is_server(record.pid):
                record.pid = self.local_node(state, record).start()
                self.save(state)
        return self._converge(state, timeout)

    def _converge(self, state: SandboxState, timeout: float) -> dict[str, Any]:
        """The bootstrap's update over the pods of `state`, with the node IDs the last one
        found, which it records for the next."""
        with self._transport(state) as transport:
            topology = ensure_cluster(
                transport, state.shards, state.replicas_per_shard, timeout, mode="update", known_pods=state.node_ids
            )
        state.node_ids = dict(topology.get("node_ids") or {})
        self.save(state)
        self._record_roles(state)
        topology["retained_volumes"] = dict(state.retained)
        return topology

    def _scale_in(self, state: SandboxState, shards: int, replicas_per_shard: int, timeout: float) -> dict[str, Any]:
        """As one `pulumi up` scales in: the scale-in step empties and forgets the pods with
        the highest ordinals (`cluster_logic.scale_in.shrink`, refused with nothing changed
        when the masters that stay cannot take the keys), then the StatefulSet removes them
        (preStop, SIGTERM; their data directories stay, as the claims do), then the bootstrap
        converges the pods that stay."""
        # A shape the settings refuse changes nothing.
        self.settings(dataclasses.replace(state, shards=shards, replicas_per_shard=replicas_per_shard))
        for record in state.nodes:
            if not is_server(record.pid):
                record.pid = self.local_node(state, record).start()
                self.save(state)
        count = shards * (1 + replicas_per_shard)
        with self._transport(state) as transport:
            shrink(transport, len(state.nodes), shards, replicas_per_shard, timeout)
        going = [record for record in state.nodes if int(record.pod.rsplit("-", 1)[1]) >= count]
        with ThreadPoolExecutor(max_workers=max(1, len(going))) as pool:
            list(pool.map(lambda r: self._stop(state, r, prestop=True), going))
        for record in going:
            state.retained[record.pod] = str(self._data_dir(record))
        state.nodes = [record for record in state.nodes if record not in going]
        state.shards, state.replicas_per_shard = shards, replicas_per_shard
        self.save(state)
        self._write_hosts(state)
        # The peers file shrinks with the StatefulSet (the headless Service lists fewer pods).
        for record in state.nodes:
            self.local_node(state, record).write_files()
        return self._converge(state, timeout)

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
            if state.tls:
                row["announced"] = announced_hostname(record.pod, HEADLESS_SERVICE, self.settings(state).namespace)
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

    def tls_summary(self) -> str:
        """One line on TLS: off, or the CA file and the certificate the nodes hold."""
        state = self._require_state()
        if not state.tls:
            return "tls: off"
        certificate = TlsFiles.read(self.tls_dir).certificate
        return (
            f"tls: on, CA {state.tls_ca_file}; node certificate serial {certificate.serial_number:x}, "
            f"valid until {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )

    def renew_certificate(self) -> dict[str, dict[str, Any]]:
        """Renews the nodes' certificate as cert-manager does (a new key and certificate from
        the same CA) and updates every node's TLS dir as the kubelet updates a changed Secret's
        mount. Then runs each running node's readiness probe, as the kubelet does every few
        seconds: the probe has the server load the new files. Returns, per pod, whether its
        probe reloaded and the serial a new connection is shown now."""
        state = self._require_state()
        if not state.tls:
            raise SandboxError("the sandbox runs without TLS: nothing to renew (`up --tls` for a new one)")
        renewed = issue_node_files(CertificateAuthority.load(self.root / CA_DIR), self.settings(state).namespace)
        renewed.write(self.tls_dir)
        results: dict[str, dict[str, Any]] = {}
        for record in state.nodes:
            node = self.local_node(state, record)
            node.write_tls(renewed)
            if not is_server(record.pid):
                results[record.pod] = {"state": "down", "reloaded": False}
                continue
            probe = node.run_script("probe-readiness.sh", timeout=30)
            results[record.pod] = {
                "state": "up",
                "reloaded": "reloaded the TLS files" in probe.stdout,
                "probe": (probe.stdout + probe.stderr).strip(),
                "serial": f"{_served_serial(record.host, record.port, state.tls_ca_file):x}",
            }
        return results

    def topology(self) -> dict[str, Any]:
        """The live topology as `pulumi refresh` would report it."""
        state = self._require_state()
        with self._transport(state) as transport:
            return read_topology(transport, state.shards, state.replicas_per_shard)

    def kill(self, pod: str, restart_after: Optional[float] = None) -> None:
        """SIGKILL, like a crashed container: no preStop, no shutdown. With `restart_after`,
        the pod starts again that many seconds later, in a process of its own, as the kubelet
        restarts a crashed container after its back-off (unless something started it first);
        without, it stays down until `up` or `restart`."""
        state = self._require_state()
        record = self._record(state, pod)
        if is_server(record.pid):
            kill_session(record.pid)
            wait_gone(record.pid, 10)
        record.pid = None
        record.restart_token = secrets.token_hex(8) if restart_after is not None else None
        self.save(state)
        if restart_after is not None:
            waiting = subprocess.Popen(
                [sys.executable, "-m", "sandbox", "--root", str(self.root), "--stack", self.stack]
                + ["--third-octet", str(self.third_octet), RESTART_COMMAND, pod, "--after", str(restart_after)]
                + ["--token", record.restart_token],
                cwd=PROJECT_DIR,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            record.restart_pid = waiting.pid
            self.save(state)

    def start_after(self, pod: str, seconds: float, token: str) -> bool:
        """The kubelet's restart of a crashed container: after `seconds`, starts the pod if it
        is still down and nothing since (`down`, another kill) took `token` back. Returns
        whether it started it."""
        time.sleep(seconds)
        state = self._require_state()
        record = self._record(state, pod)
        if is_server(record.pid) or record.restart_token != token:
            return False
        record.restart_token = record.restart_pid = None
        record.pid = self.local_node(state, record).start()
        self.save(state)
        return True

    def restart(
        self,
        pods: Optional[Sequence[str]] = None,
        new_ip: bool = False,
        wait: bool = True,
        timeout: float = 120.0,
        lose_volume: bool = False,
    ) -> None:
        """Like rescheduled pods: preStop, SIGTERM, then start through the entrypoint again
        (on a new address with `new_ip`). `pods=None` restarts every pod at once.
        `lose_volume`: each pod comes back on a new, empty volume (and a new address, as a pod
        rescheduled with a new claim): its data directory is moved to `<root>/lost-volumes/`,
        as an EBS volume that can no longer be attached."""
        state = self._require_state()
        records = state.nodes if pods is None else [self._record(state, pod) for pod in pods]
        with ThreadPoolExecutor(max_workers=len(records)) as pool:
            list(pool.map(lambda r: self._stop(state, r, prestop=True), records))
        if lose_volume:
            new_ip = True
            for record in records:
                lost = _unused(self.root / LOST_VOLUMES_DIR / f"{record.pod}-{_utc_stamp()}")
                lost.parent.mkdir(parents=True, exist_ok=True)
                os.rename(self._data_dir(record), lost)
        if new_ip:
            # Never hand a pod the address another pod just left: a peer that still dials
            # it would meet the wrong node and mark the right one noaddr. peer-recovery.sh
            # repairs that (tests/integration/test_node_scripts.py builds the case), but it
            # costs extra MEET rounds that would blur the restart figures.
            left = {record.host for record in records}
            for record in records:
                record.host = self._free_address(state, avoid=left)
        self.save(state)
        self._write_hosts(state)
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
        """Stops every process the sandbox started, by pid; keeps the data unless `purge`,
        which deletes everything under the root but the backups (`backups/`). A partition
        never outlives the sandbox: its rules go first, whatever happens next."""
        state = self.load()
        try:
            self.heal()
        finally:
            if state is not None:
                self._stop_all(state)
                for record in state.nodes:
                    if record.restart_pid is not None and alive(record.restart_pid):
                        kill_session(record.restart_pid)
                        wait_gone(record.restart_pid, 10)
                    record.restart_token = record.restart_pid = None
                self.save(state)
        if purge and self.root.exists():
            kept = self.backups_dir
            if not (kept.is_dir() and any(kept.iterdir())):
                shutil.rmtree(self.root)
                return
            for entry in self.root.iterdir():
                if entry == kept:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()

    def partition(self, pods: Sequence[str], keep_client: bool = False) -> partitions.Partition:
        """Cuts `pods` off from the other pods, on the client and bus ports, both ways (and
        from clients too, unless `keep_client`): nftables rules on their addresses in the
        sandbox's own table (sandbox/partitions.py), replacing any partition it held."""
        state = self._require_state()
        records = [self._record(state, pod) for pod in dict.fromkeys(pods)]
        rest = [record for record in state.nodes if record not in records]
        if not records or not rest:
            raise SandboxError("a partition cuts off some pods from the others: name at least one pod, not all")
        try:
            partition = partitions.Partition(
                cut=tuple(record.host for record in records),
                rest=tuple(record.host for record in rest),
                ports=tuple(port for record in state.nodes for port in (record.port, record.port + BUS_PORT_OFFSET)),
                keep_client=keep_client,
            )
            partitions.cut(state.third_octet, partition, self.root)
        except partitions.PartitionError as error:
            raise SandboxError(str(error)) from None
        return partition

    def heal(self) -> bool:
        """Removes the sandbox's partition (its nftables table); whether there was one."""
        state = self.load()
        try:
            return partitions.heal(state.third_octet if state is not None else self.third_octet)
        except partitions.PartitionError as error:
            raise SandboxError(str(error)) from None

    @property
    def backups_dir(self) -> Path:
        return self.root / BACKUPS_DIR

    def backup(self, destination: Optional[Path] = None, timeout: float = 120.0) -> dict[str, Any]:
        """Copies every pod's data directory into `destination` (default
        `<root>/backups/<UTC time>`), with a manifest (`sandbox.backups`).

        A running cluster is stopped for the copy, every pod at once and without preStop (no
        failover, as `down`), so that each node's files are those of a clean shutdown: the
        AOF flushed and fsynced, nodes.conf written, nothing changing while it is read. Then
        every pod starts again at its address and the command waits until the cluster is ok.
        Copying files of a running server one by one would not even be crash-consistent: an
        AOF rewrite or a nodes.conf update between two files yields a set that never existed
        on disk, where an EBS snapshot takes the whole volume at one instant.
        A sandbox that is down is copied as it lies on disk and stays down.

        Refused, with nothing stopped or written: no sandbox; some pods down while others run
        (a copy in the middle of a failure); a running cluster that is not ok; a pod whose data
        holds no node; a destination that holds anything."""
        state = self._require_state()
        running = [record for record in state.nodes if is_server(record.pid)]
        if running and len(running) < len(state.nodes):
            down = ", ".join(record.pod for record in state.nodes if record not in running)
            raise SandboxError(
                f"{down} down while the other pods run: a backup now would copy a cluster in the middle of a "
                "failure. `up` first, or `down` to copy the data as it lies on disk"
            )
        if running:
            topology = self.topology()
            if topology["state"] != "ok":
                raise SandboxError(
                    f"the cluster is {topology['state']} ({'; '.join(topology['problems'])}): back it up once "
                    "`status` shows it healthy"
                )
        data_dirs = {record.pod: self._data_dir(record) for record in state.nodes}
        for pod, data_dir in data_dirs.items():
            backups.node_identity(pod, data_dir)
        describe = {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "stack": state.stack,
            "engine": state.engine,
            "version": format_version(state.binaries().version),
            "bin_dir": state.bin_dir,
            "shards": state.shards,
            "replicas_per_shard": state.replicas_per_shard,
            "tls": state.tls,
            "consistency": "clean shutdown" if running else "as on disk",
            "placement": {r.pod: {"zone": r.zone, "host": r.host, "port": r.port} for r in state.nodes},
        }
        destination = Path(destination) if destination is not None else _unused(self.backups_dir / _utc_stamp())
        staging = backups.prepare_destination(destination)
        started = time.monotonic()
        stopped = None
        try:
            if running:
                self._stop_all(state)
                self.save(state)
                stopped = time.monotonic()
            manifest = backups.write_backup(staging, destination, data_dirs, describe)
            copied = time.monotonic()
        finally:
            # Whatever happened to the copy, a cluster that ran runs again.
            backups.discard(staging)
            if running:
                self._start_stopped(state)
                self.wait_ok(timeout)
                self._record_roles(state)
        ended = time.monotonic()
        return {
            "destination": destination.resolve(),
            "manifest": manifest,
            "copy_seconds": copied - (stopped or started),
            # From the first SIGTERM to the cluster ok again: what clients saw.
            "down_seconds": ended - started if running else None,
        }

    def restore(self, source: Path, timeout: float = 120.0) -> dict[str, Any]:
        """Starts the backed-up cluster from the copies in `source` on new addresses (none
        that a pod had at backup time, nor that this sandbox's pods had), with the backup's
        stack, engine, shape and TLS, and waits until it is ok: as new EBS volumes from the
        snapshots, bound to the claims, come back on pods with new IPs. Nothing forms the
        cluster: the nodes come back with their nodes.conf and AOF, the entrypoint moves
        `myself` to the new address and peer-recovery.sh re-introduces the pods.

        Into an empty root this makes a new sandbox (a new password); onto a sandbox that is
        down it keeps that sandbox's password (the Secret is the stack's, not the volumes'),
        and moves its data directories to `<root>/replaced/<UTC time>/`, as retained volumes
        stay behind. Refused, with nothing changed: a folder that is not a complete backup
        (`sandbox.backups.read_backup` names what is wrong), a sandbox with any pod running,
        binaries of another engine or an older line than the backup's."""
        source = Path(source).resolve()
        manifest = backups.read_backup(source)
        previous = self.load()
        if previous is not None:
            running = [record.pod for record in previous.nodes if is_server(record.pid)]
            if running:
                raise SandboxError(
                    f"the sandbox in {self.root} runs ({', '.join(running)}): a restore replaces its data. "
                    "`down` first (the data it replaces is kept aside), then restore"
                )
        if source.is_relative_to((self.root / NODES_DIR).resolve()):
            raise SandboxError(f"{source} lies in the data the restore would replace: copy it elsewhere first")
        binaries = self._restore_binaries(manifest)
        state = SandboxState(
            password=previous.password if previous is not None else secrets.token_urlsafe(30),
            shards=manifest.shards,
            replicas_per_shard=manifest.replicas_per_shard,
            stack=manifest.stack,
            third_octet=previous.third_octet if previous is not None else self.third_octet,
            engine=manifest.engine,
            bin_dir=None if binaries is None else str(binaries.bin_dir),
            tls=manifest.tls,
        )
        try:
            self.settings(state)
        except OSError as error:
            raise SandboxError(f"the backup's stack {manifest.stack!r} has no settings here: {error}") from None
        # Never an address a pod had: a peer still dialling it would meet the wrong node.
        avoid = {node.host for node in manifest.nodes}
        avoid |= {record.host for record in previous.nodes} if previous is not None else set()
        for node in sorted(manifest.nodes, key=lambda n: n.ordinal):
            state.nodes.append(
                NodeRecord(pod=node.pod, host=self._free_address(state, avoid), port=REDIS_PORT, zone=node.zone)
            )

        # Everything refusable is refused; from here on the sandbox changes.
        created_root = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".restoring-"))
        try:
            for node in manifest.nodes:
                backups.restore_node(source, node, staging / node.pod / "data")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if created_root:
                shutil.rmtree(self.root, ignore_errors=True)
            raise
        replaced = None
        nodes_dir = self.root / NODES_DIR
        if nodes_dir.exists():
            replaced = _unused(self.root / REPLACED_DIR / _utc_stamp())
            replaced.parent.mkdir(parents=True, exist_ok=True)
            os.rename(nodes_dir, replaced)
        os.rename(staging, nodes_dir)
        if state.tls:
            if (self.tls_dir / TLS_CA_FILE).exists():
                state.tls_ca_file = str(self.tls_dir.resolve() / TLS_CA_FILE)
            else:
                self._new_tls(state)
        self.save(state)
        self._write_hosts(state)
        for record in state.nodes:
            self.local_node(state, record).write_files()
        started = time.monotonic()
        self._start_stopped(state)
        self.wait_ok(timeout)
        healed = time.monotonic() - started
        self._record_roles(state)
        rows = self.status()
        changed = [
            f"{row['pod']} runs as {row.get('id')}, backed up as {node.id}"
            for row, node in zip(rows, sorted(manifest.nodes, key=lambda n: n.ordinal))
            if row.get("id") != node.id
        ]
        if changed:
            raise SandboxError("the cluster is ok, but not with the backed-up nodes: " + "; ".join(changed))
        return {"manifest": manifest, "rows": rows, "replaced": replaced, "ok_seconds": healed}

    def _restore_binaries(self, manifest: backups.Manifest) -> Optional[EngineBinaries]:
        """The binaries a restore starts the pods on: the release the backup's pods ran, when
        its folder is still there, else the engine's from .engines/ (None: the sandbox's
        default). Refuses another engine or an older line, which cannot load the data."""
        if manifest.engine not in ENGINES:
            raise SandboxError(f"the backup is of engine {manifest.engine!r}, which this sandbox does not know")
        recorded = None
        if manifest.bin_dir is not None and Path(manifest.bin_dir).is_dir():
            recorded = EngineBinaries(ENGINES[manifest.engine], Path(manifest.bin_dir))
        binaries = recorded or find_binaries(manifest.engine)
        backed_up = tuple(int(part) for part in manifest.version.split("."))
        refusal = change_refusal(manifest.engine, backed_up, binaries.engine.name, binaries.version)
        if refusal is not None:
            raise SandboxError(f"the backup was taken on {manifest.engine} {manifest.version}: {refusal}")
        return recorded

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
        if not state.tls:
            return [
                f"{auth}='{state.password}' {state.binaries().cli} -c -h {first.host} -p {first.port}",
                f"python: redis.RedisCluster(host={first.host!r}, port={first.port:d}, password={state.password!r})",
            ]
        # Redirects name the nodes by their DNS names: a client resolves them through the
        # sandbox's hosts file, and checks each certificate against them.
        name = next(iter(self.announced_addresses(state)))
        library = nss_wrapper_library()
        if library is None:
            return [
                f"{auth}='{state.password}' {state.binaries().cli} --tls --cacert {state.tls_ca_file} "
                f"-h {first.host} -p {first.port}",
                "(install libnss-wrapper to follow redirects: they name the nodes by DNS names "
                f"that {self.hosts_path} maps)",
            ]
        resolve = f"LD_PRELOAD={library} NSS_WRAPPER_HOSTS={self.hosts_path.resolve()}"
        return [
            f"{resolve} {auth}='{state.password}' {state.binaries().cli} -c --tls --cacert {state.tls_ca_file} "
            f"-h {name} -p {first.port}",
            f"python, started with {resolve}: redis.RedisCluster(host={name!r}, port={first.port:d}, ssl=True, "
            f"ssl_ca_certs={state.tls_ca_file!r}, password={state.password!r})",
        ]

    # -- helpers ----------------------------------------------------------------------

    def _transport(self, state: SandboxState) -> DirectTransport:
        """The bootstrap's way to the pods, with each pod's own readiness probe standing in
        for the kubelet's verdict: the bootstrap waits for Ready pods, as on Kubernetes."""
        nodes = [NodeAddress(n.pod, n.host, n.port, n.zone) for n in state.nodes]
        records = {n.pod: n for n in state.nodes}
        tls = TlsOptions(state.tls_ca_file) if state.tls else None

        def readiness(node: NodeAddress) -> Optional[str]:
            probe = self.local_node(state, records[node.pod]).run_script("probe-readiness.sh", timeout=30)
            return None if probe.returncode == 0 else (probe.stderr.strip() or f"readiness exit {probe.returncode}")

        return DirectTransport(nodes, state.password, cli=state.binaries().cli, tls=tls, readiness=readiness)

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

    def _data_dir(self, record: NodeRecord) -> Path:
        return (self.root / NODES_DIR / record.pod / "data").resolve()

    def _stop_all(self, state: SandboxState) -> None:
        # All at once, without preStop: no master hands its slots over to a replica that is
        # about to stop as well.
        with ThreadPoolExecutor(max_workers=max(1, len(state.nodes))) as pool:
            list(pool.map(lambda r: self._stop(state, r, prestop=False), state.nodes))

    def _start_stopped(self, state: SandboxState) -> None:
        for record in state.nodes:
            if not is_server(record.pid):
                record.pid = self.local_node(state, record).start()
                self.save(state)

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


def _utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def _unused(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`...: the first that does not exist (two commands in one second)."""
    candidate, n = path, 2
    while candidate.exists():
        candidate, n = path.with_name(f"{path.name}-{n}"), n + 1
    return candidate


def _myself(nodes_text: str) -> NodeEntry:
    for entry in parse_cluster_nodes(nodes_text):
        if entry.myself:
            return entry
    raise SandboxError("CLUSTER NODES has no myself line")


def _served_serial(host: str, port: int, ca_file: str) -> int:
    """The serial of the certificate a new TLS connection to host:port is shown."""
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = False
    with socket.create_connection((host, port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number
