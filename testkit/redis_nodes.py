"""Local Redis nodes for the tests and the benchmarks: the sandbox's `LocalNode` on locked loopback addresses.

There is one way to start a node here: `LocalNodes.new(...)` gives a `LocalNode` (the very
launcher the sandbox uses: the stack's rendered redis.conf and scripts, started through
entrypoint.sh) on an address from `LoopbackAddresses`. Every address handed out holds a
lock file until released, so suites that run at the same time (two people, or CI beside a
developer) never meet each other's nodes. `LocalNodes.close()` kills every node it made by
its session, and says which survived.

The rest reads a cluster of such nodes through the product's own parser of CLUSTER NODES
(`cluster_logic.model.parse_cluster_nodes`): health, roles, replication, and the waits the
tests need.

With TLS on (settings with `tls`), the nodes of one `LocalNodes` share one CA and one node
certificate (`tls_files`), as the stack's pods share the TLS Secret; every client made here
speaks TLS to them, verifying the chain against that CA.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from cluster_logic.model import SLOTS, NodeEntry, parse_cluster_nodes
from cluster_logic.transports.base import TlsOptions
from cluster_logic.transports.direct import DirectTransport
from components.engines import DEFAULT_ENGINE
from components.redis_node_files import BUS_PORT, REDIS_PORT
from components.stack_settings import StackSettings, parse_settings
from sandbox.certificates import CertificateAuthority, TlsFiles, issue_node_files
from sandbox.engine_binaries import EngineBinaries, find_binaries
from sandbox.local_nodes import LocalNode, ports_free
from sandbox.processes import session_members

LOCK_DIR = Path(tempfile.gettempdir()) / "redis-eks-loopback-locks"
PASSWORD = "sandbox-Passw0rd.for_tests-only"


def fast_settings(engine: str, **values: str) -> StackSettings:
    """The engine's stack settings with a short node timeout, which keeps failure detection,
    and so the tests, fast; `values` add or override settings (`parse_settings` keys)."""
    return parse_settings({"nodeTimeoutMs": "2000", "engine": engine, **values})


def cli_environment(password: str, path: Optional[str] = None) -> dict[str, str]:
    """An environment in which either engine's CLI finds the password (never on argv)."""
    return {
        "PATH": path or os.environ.get("PATH", "/usr/bin:/bin"),
        "REDISCLI_AUTH": password,
        "VALKEYCLI_AUTH": password,
    }


def cli_tls_args(node: LocalNode) -> list[str]:
    """The CLI's arguments to reach `node` over TLS when it speaks it (chain verified)."""
    return ["--tls", "--cacert", node.tls_ca_file] if node.tls else []


# Pods spread over zones round-robin, as a topology spread constraint spreads a StatefulSet.
ZONES = ("zone-a", "zone-b", "zone-c")
# 127.0.<octet>.0/24 ranges: the node tests (tests/integration, through the `loopback`
# fixture) and the bootstrap benchmark; the reliability suite and its benchmark lock whole
# octets of their own (testkit.sandbox_support), and the sandbox CLI uses 60 and 61; the
# version roll 62, the backup/restore test 63, the exporter tests 72 (plain) and 73 (TLS),
# the partition tests 90 to 93.
TEST_OCTETS = range(10, 20)
BENCHMARK_OCTETS = range(30, 40)


class LoopbackAddresses:
    """Hands out 127.0.<octet>.<host> addresses nobody else uses right now.

    Every address handed out holds an exclusive lock file until released, so test runs in
    parallel processes (or two people running the suite at once) never get the same one;
    the kernel drops a dead process's locks. An address whose ports are bound by a process
    that does not take part in the locking is skipped as well.
    """

    def __init__(self, third_octets: Iterable[int] = TEST_OCTETS, ports: Sequence[int] = (REDIS_PORT, BUS_PORT)):
        self.third_octets = tuple(third_octets)
        if not self.third_octets or not all(0 <= octet <= 255 for octet in self.third_octets):
            raise ValueError(f"third octets must be within 0..255, got {self.third_octets}")
        self.ports = tuple(ports)
        self._locks: dict[str, int] = {}

    def allocate(self) -> str:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        for octet in self.third_octets:
            for host in range(1, 255):
                address = f"127.0.{octet}.{host}"
                if address in self._locks:
                    continue
                lock = os.open(LOCK_DIR / address, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as error:
                    os.close(lock)
                    if error.errno in (errno.EWOULDBLOCK, errno.EACCES):
                        continue
                    raise
                if ports_free(address, self.ports):
                    self._locks[address] = lock
                    return address
                os.close(lock)
        raise RuntimeError(f"no free loopback address in 127.0.{{{','.join(map(str, self.third_octets))}}}.0/24")

    def allocate_many(self, count: int) -> list[str]:
        return [self.allocate() for _ in range(count)]

    def release(self, address: str) -> None:
        lock = self._locks.pop(address, None)
        if lock is not None:
            os.close(lock)

    def close(self) -> None:
        for address in list(self._locks):
            self.release(address)

    def __enter__(self) -> LoopbackAddresses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dash() -> str:
    """The path of dash, the sh of the redis image, which the scripts are tested under."""
    found = shutil.which("dash")
    if found is None:
        raise RuntimeError("dash is not installed: the scripts must be tested under dash, the sh of the redis image")
    return found


class LocalNodes:
    """The nodes of one test (or one benchmark run): `LocalNode`s under one root, on
    addresses from `loopback`, pods named `redis-cluster-<i>` in zone i % 3 unless told
    otherwise. A context manager; `close()` kills every node by its session and returns the
    sessions that survived (none, unless something is badly wrong)."""

    def __init__(
        self,
        root: Path,
        loopback: LoopbackAddresses,
        settings: Optional[StackSettings] = None,
        password: str = PASSWORD,
        shell: str = "sh",
        binaries: Optional[EngineBinaries] = None,
    ) -> None:
        """`binaries` (default: the settings' engine's, found by `find_binaries`) decide the
        engine: `settings` default to `fast_settings` of that engine."""
        self.root = Path(root)
        self.loopback = loopback
        self.settings = settings or fast_settings(binaries.engine.name if binaries else DEFAULT_ENGINE)
        self.binaries = binaries or find_binaries(self.settings.engine_spec)
        self.password = password
        self.shell = shell
        self.nodes: list[LocalNode] = []
        self.zones: dict[str, str] = {}
        self._ca: Optional[CertificateAuthority] = None
        self._tls_files: Optional[TlsFiles] = None

    @property
    def ca(self) -> CertificateAuthority:
        """The CA of these nodes' certificates (made on first use)."""
        if self._ca is None:
            self._ca = CertificateAuthority.new()
        return self._ca

    @property
    def tls_files(self) -> TlsFiles:
        """The nodes' one certificate (the TLS Secret's content), issued on first use for the
        stack's Services in the settings' namespace."""
        if self._tls_files is None:
            self._tls_files = issue_node_files(self.ca, self.settings.namespace)
        return self._tls_files

    def renew_certificate(self) -> TlsFiles:
        """A new key and certificate from the same CA, as cert-manager renews one; nodes made
        after this get it, running ones only when their TLS dir is rewritten."""
        self._tls_files = issue_node_files(self.ca, self.settings.namespace)
        return self._tls_files

    @property
    def tls(self) -> bool:
        return self.settings.tls

    def new(
        self,
        pod: Optional[str] = None,
        ip: Optional[str] = None,
        settings: Optional[StackSettings] = None,
        peers: Sequence[str] = (),
        extra_env: Optional[Mapping[str, str]] = None,
        password: Optional[str] = None,
        zone: Optional[str] = None,
    ) -> LocalNode:
        """A node, not started yet."""
        pod = pod or f"redis-cluster-{len(self.nodes)}"
        settings = settings or self.settings
        node = LocalNode(
            pod=pod,
            ip=ip or self.loopback.allocate(),
            port=REDIS_PORT,
            root=self.root / pod,
            settings=settings,
            password=password or self.password,
            peers=tuple(peers),
            extra_env=dict(extra_env or {}),
            shell=self.shell,
            binaries=self.binaries,
            tls_files=self.tls_files if settings.tls else None,
        )
        self.zones[pod] = zone or ZONES[len(self.nodes) % len(ZONES)]
        self.nodes.append(node)
        return node

    def started(self, count: int, **kwargs: Any) -> list[LocalNode]:
        """`count` new nodes, started."""
        nodes = [self.new(**kwargs) for _ in range(count)]
        for node in nodes:
            node.start()
        return nodes

    def cluster(self, shards: int = 3, replicas_per_shard: int = 1, **kwargs: Any) -> list[LocalNode]:
        """A formed cluster: `shards` masters with `replicas_per_shard` replicas each."""
        nodes = self.started(shards * (1 + replicas_per_shard), **kwargs)
        create_cluster(nodes, replicas_per_shard)
        return nodes

    def by_pod(self, pod: str) -> LocalNode:
        return next(node for node in self.nodes if node.pod == pod)

    def zone_of(self, node: LocalNode) -> str:
        return self.zones[node.pod]

    def as_input(self, node: LocalNode) -> dict[str, Any]:
        """The node as the bootstrap's `nodes` input lists it."""
        return {"pod": node.pod, "host": node.ip, "port": node.port, "zone": self.zone_of(node)}

    def inputs(self, nodes: Optional[Iterable[LocalNode]] = None) -> list[dict[str, Any]]:
        return [self.as_input(node) for node in (self.nodes if nodes is None else nodes)]

    def transport(self, nodes: Optional[Iterable[LocalNode]] = None) -> DirectTransport:
        """The bootstrap's direct transport to `nodes` (default all), with this engine's CLI."""
        return DirectTransport(self.inputs(nodes), self.password, cli=self.binaries.cli, tls=self.tls_options())

    def tls_options(self) -> Optional[TlsOptions]:
        """The transports' TLS options (the CA file of the first node), when TLS is on."""
        if not self.tls:
            return None
        if not self.nodes:
            raise RuntimeError("no node yet: the CA file is a node's")
        return TlsOptions(self.nodes[0].tls_ca_file)

    def announced_addresses(self, nodes: Optional[Iterable[LocalNode]] = None) -> dict[str, str]:
        """Announced DNS name -> loopback address of every TLS node (what the headless
        Service's DNS would answer)."""
        return {node.announced_hostname: node.ip for node in (self.nodes if nodes is None else nodes) if node.tls}

    def close(self) -> list[str]:
        """Kills every node (its whole session); returns the sessions that survived."""
        leftovers = []
        for node in self.nodes:
            if node.process is None:
                continue
            pid = node.process.pid
            node.kill()
            if session_members(pid):
                leftovers.append(f"{node.pod} (session {pid})")
        return leftovers

    def __enter__(self) -> LocalNodes:
        return self

    def __exit__(self, *exc: object) -> None:
        leftovers = self.close()
        if leftovers and exc[0] is None:
            raise RuntimeError(f"processes survived the cleanup: {leftovers}")


# ---------------------------------------------------------------------------------------
# What a node says of the cluster.
# ---------------------------------------------------------------------------------------


def key_in_slots(ranges: Iterable[tuple[int, int]], prefix: str = "k", start: int = 0) -> str:
    """The first `<prefix><n>` (n from `start`) whose slot lies in `ranges` (inclusive
    pairs, as a master's CLUSTER NODES line lists them)."""
    ranges = tuple(ranges)
    for n in range(start, start + 100000):
        key = f"{prefix}{n}"
        slot = key_slot(key.encode())
        if any(low <= slot <= high for low, high in ranges):
            return key
    raise AssertionError(f"no key {prefix}<n> found for slots {ranges}")


def cluster_info(node: LocalNode) -> dict[str, str]:
    return {key: str(value) for key, value in node.client().execute_command("CLUSTER INFO").items()}


def cluster_nodes(node: LocalNode) -> list[NodeEntry]:
    """CLUSTER NODES as the node reports it, parsed by the product's parser."""
    # "CLUSTER", "NODES" as two words: redis-py then returns the text instead of its own parse.
    return parse_cluster_nodes(node.client().execute_command("CLUSTER", "NODES"))


def myself(node: LocalNode) -> NodeEntry:
    """The node's own line of CLUSTER NODES: its ID, flags, master and slots."""
    return next(entry for entry in cluster_nodes(node) if entry.myself)


def role(node: LocalNode) -> str:
    """master or slave, as INFO replication says."""
    return node.client().info("replication")["role"]


def masters_and_replicas(cluster: Sequence[LocalNode]) -> tuple[list[LocalNode], list[LocalNode]]:
    """The running nodes split by their current role."""
    masters, replicas = [], []
    for node in cluster:
        if node.is_running():
            (masters if role(node) == "master" else replicas).append(node)
    return masters, replicas


def replica_of(master: LocalNode, cluster: Sequence[LocalNode]) -> LocalNode:
    """A running replica of `master`."""
    master_id = myself(master).id
    for node in cluster:
        if node is master or not node.is_running():
            continue
        entry = myself(node)
        if "slave" in entry.flags and entry.master_id == master_id:
            return node
    raise LookupError(f"{master.pod} has no replica")


def count_keys(nodes: Iterable[LocalNode]) -> int:
    """Keys held by the running masters (replicas hold copies)."""
    return sum(node.client().dbsize() for node in nodes if node.is_running() and role(node) == "master")


def cluster_client(
    nodes: Sequence[LocalNode],
    retries: int = 10,
    socket_timeout: float = 2.0,
    resolve: Optional[Callable[[str], Optional[str]]] = None,
) -> RedisCluster:
    """A redis-py cluster client whose startup nodes are `nodes`, decoding replies, with a
    reasonable retry policy (redis-py retries connection errors, CLUSTERDOWN and uncovered
    slots after refreshing its slot map, and follows MOVED/ASK on its own).

    Over TLS the nodes name each other by their announced DNS names, which nothing resolves
    in this process: `address_remap` maps each name in CLUSTER SLOTS to its node's address,
    and the certificate's chain is verified but not the name (the client dials IPs). redis-py
    8.1 applies `address_remap` to CLUSTER SLOTS only, not to a MOVED or ASK reply
    (redis/redis-py#3382, closed unfixed), so every MOVED refreshes the slot map
    (`reinitialize_steps=1`) instead of dialling the name it names. A client that follows the names for real, verifying them, runs in a process of its
    own (tests/integration/test_tls.py). `resolve` (name -> address) replaces the lookup in
    `nodes`, e.g. to read where the sandbox's pods are now."""
    tls: dict[str, Any] = {}
    if nodes[0].tls:

        def remap(host_port: tuple[str, int]) -> tuple[str, int]:
            # Looked up at each refresh: a node restarted on a new IP keeps its name.
            host, port = host_port
            if resolve is not None:
                return resolve(host) or host, port
            return next((node.ip for node in nodes if node.announced_hostname == host), host), port

        tls = {**nodes[0].tls_client_options(), "address_remap": remap, "reinitialize_steps": 1}
    return RedisCluster(
        startup_nodes=[ClusterNode(node.ip, node.port) for node in nodes],
        password=nodes[0].password,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=1.0,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries),
        **tls,
    )


# ---------------------------------------------------------------------------------------
# Health, and the waits for it.
# ---------------------------------------------------------------------------------------


def cluster_problems(nodes: Sequence[LocalNode]) -> dict[str, str]:
    """What keeps the cluster of `nodes` from being healthy, per pod (empty when healthy).

    Healthy: every node reports cluster_state:ok, serves all 16384 slots and sees every
    other node at its current address, linked and without a fail flag. cluster_state alone
    can read ok for a moment after a restart, before a node has noticed that its peers are
    unreachable.
    """
    addresses = {f"{node.ip}:{node.port}" for node in nodes}
    problems: dict[str, str] = {}
    for node in nodes:
        try:
            info = cluster_info(node)
            if info.get("cluster_state") != "ok":
                problems[node.pod] = f"cluster_state:{info.get('cluster_state')}"
                continue
            if info.get("cluster_slots_ok") != str(SLOTS):
                problems[node.pod] = f"{info.get('cluster_slots_ok')} slots ok"
                continue
            seen = {f"{entry.host}:{entry.port}": entry for entry in cluster_nodes(node)}
            if set(seen) != addresses:
                problems[node.pod] = f"knows {sorted(seen)}"
                continue
            for address, entry in seen.items():
                if not entry.myself and (entry.link != "connected" or entry.failing):
                    problems[node.pod] = f"{address} is {','.join(sorted(entry.flags))}/{entry.link}"
                    break
        except (redis.RedisError, OSError) as error:
            problems[node.pod] = f"error: {error}"
    return problems


def wait_cluster_ok(nodes: Sequence[LocalNode], timeout: float = 60.0, interval: float = 0.1) -> float:
    """Waits until the cluster of `nodes` is healthy (see `cluster_problems`); returns the
    seconds it took."""
    started = time.monotonic()
    while True:
        problems = cluster_problems(nodes)
        if not problems:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"cluster not healthy after {timeout}s: {problems}")
        time.sleep(interval)


def replication_problems(pod: str, info: Mapping[str, Any]) -> list[str]:
    """What keeps one node's replication from being settled, read from its INFO."""
    problems = []
    if info["role"] == "slave":
        if info.get("master_link_status") != "up" or info.get("master_sync_in_progress"):
            problems.append(f"{pod}: link {info.get('master_link_status')}")
    else:
        for i in range(info.get("connected_slaves", 0)):
            if info[f"slave{i}"]["state"] != "online":
                problems.append(f"{pod}: replica {info[f'slave{i}']}")
    if info.get("aof_rewrite_in_progress") or info.get("loading"):
        problems.append(f"{pod}: writing its AOF or loading")
    return problems


def _stopped(node: LocalNode) -> bool:
    # A node this process stopped; one started elsewhere (by the sandbox) has no process here.
    return node.process is not None and not node.is_running()


def wait_replicas_online(nodes: Sequence[LocalNode], timeout: float = 60.0, interval: float = 0.1) -> None:
    """Waits until every replica has finished its sync (link up, not loading) and shows as
    online at its master: before that a master has no replica to fail over to. Nodes this
    process stopped are left out; one that does not answer counts as not settled."""
    deadline = time.monotonic() + timeout
    while True:
        pending = []
        for node in nodes:
            if _stopped(node):
                continue
            try:
                info = node.client(socket_timeout=2).info()
            except (redis.RedisError, OSError) as error:
                pending.append(f"{node.pod}: {type(error).__name__}: {error}")
                continue
            pending += replication_problems(node.pod, info)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"replication not settled after {timeout:.0f}s: {pending}")
        time.sleep(interval)


def wait_replicas_in_sync(nodes: Sequence[LocalNode], timeout: float = 15.0) -> None:
    """Waits until every running master has a replica and every replica has acknowledged
    all of its master's replication stream (the offsets are equal)."""
    deadline = time.monotonic() + timeout
    for master in masters_and_replicas(nodes)[0]:
        while True:
            info = master.client().info("replication")
            offsets = [info[f"slave{i}"]["offset"] for i in range(info["connected_slaves"])]
            if offsets and all(offset == info["master_repl_offset"] for offset in offsets):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"replicas of {master.pod} not in sync: {info}")
            time.sleep(0.05)


def wait_ready(nodes: Sequence[LocalNode], timeout: float = 30.0) -> float:
    """Waits until the readiness probe passes on every node (what a StatefulSet waits for);
    returns the seconds it took."""
    started = time.monotonic()
    while True:
        failing = {}
        for node in nodes:
            probe = node.run_script("probe-readiness.sh", timeout=10)
            if probe.returncode != 0:
                failing[node.pod] = probe.stderr.strip()
        if not failing:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not Ready after {timeout:.0f}s: {failing}")
        time.sleep(0.2)


def wait_gossip_rounds(nodes: Sequence[LocalNode], rounds: int = 5, timeout: float = 60.0) -> None:
    """Waits until every node of `nodes` has received `rounds` pings from each peer it is
    linked to (in total, since the call): the time the cluster bus has had to change
    anything, measured in what it did rather than in seconds."""

    def pings(node: LocalNode) -> int:
        return int(cluster_info(node).get("cluster_stats_messages_ping_received", 0))

    def linked_peers(node: LocalNode) -> int:
        return sum(1 for entry in cluster_nodes(node) if not entry.myself and entry.link == "connected")

    wanted = {node.pod: pings(node) + rounds * max(1, linked_peers(node)) for node in nodes}
    deadline = time.monotonic() + timeout
    while True:
        behind = {
            node.pod: wanted[node.pod] - received for node in nodes if (received := pings(node)) < wanted[node.pod]
        }
        if not behind:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {rounds} gossip rounds after {timeout:.0f}s (pings missing: {behind})")
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------
# Forming and stopping.
# ---------------------------------------------------------------------------------------


def create_cluster(nodes: Sequence[LocalNode], replicas_per_shard: int, timeout: float = 60.0) -> None:
    """Forms a cluster of fresh nodes with the engine's `<cli> --cluster create`, as a
    bootstrap would, and waits until the cluster is healthy and every replica is in sync."""
    result = subprocess.run(
        [
            nodes[0].binaries.cli,
            *cli_tls_args(nodes[0]),
            "--cluster",
            "create",
            *[f"{node.ip}:{node.port}" for node in nodes],
            "--cluster-replicas",
            str(replicas_per_shard),
            "--cluster-yes",
        ],
        env=cli_environment(nodes[0].password),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{nodes[0].binaries.cli} --cluster create failed:\n{result.stdout}\n{result.stderr}")
    wait_cluster_ok(nodes, timeout=timeout)
    wait_replicas_online(nodes, timeout=timeout)
    wait_roles_agree(nodes, timeout=timeout)


def wait_roles_agree(nodes: Sequence[LocalNode], timeout: float = 60.0, interval: float = 0.1) -> None:
    """Waits until every node's CLUSTER NODES says the same of who follows whom. A replica's
    role reaches the others by gossip, after its sync may have finished: until then a master
    can list its replica as an empty master, and preStop finds no replica to hand over to."""
    deadline = time.monotonic() + timeout
    while True:
        views = [{e.id: (e.is_master, e.master_id) for e in cluster_nodes(node)} for node in nodes]
        if all(view == views[0] for view in views[1:]):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the nodes disagree about the roles after {timeout:.0f}s: {views}")
        time.sleep(interval)


def stop_all(nodes: Sequence[LocalNode], timeout: float = 30.0) -> None:
    """Stops nodes together, as deleting every pod at once does: SIGTERM to all, then waits."""
    for node in nodes:
        if node.is_running():
            node.process.send_signal(signal.SIGTERM)
    for node in nodes:
        node.stop(timeout=timeout)
