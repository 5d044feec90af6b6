"""How the cluster bootstrap reaches the Redis nodes.

The cluster logic (`cluster_topology`) needs three things and nothing else: which pods are
ready (with their address and zone), a redis-py client per node, and a way to run the
image's `redis-cli` with the cluster password. Two transports provide them:

* `DirectTransport`: the nodes are reachable from this process (the local sandbox, tests).
  redis-py connects to host:port; `redis-cli` runs here with the password in
  `REDISCLI_AUTH`.
* `KubernetesTransport`: `pulumi up` runs where pod IPs are not routable. Pods are listed
  with the Kubernetes API; redis-py talks to each pod through an API port-forward; and
  `redis-cli` runs inside a pod (exec), reading the password from the mounted secret file,
  so it never leaves the cluster in a process argv.

Neither transport ever puts the password in a process argv, a log line or an error.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import redis
from redis.connection import Connection, ConnectionPool

ZONE_LABEL = "topology.kubernetes.io/zone"
SECRET_FILE = "/etc/redis-secret/password"
CONTAINER = "redis"
_ORDINAL = re.compile(r"-(\d+)$")

# redis-py waits this long for a reply; it must outlast the MIGRATE timeout used by the
# slot mover, or a slow batch would be abandoned while the server still works on it.
COMMAND_TIMEOUT_SECONDS = 60.0


def pod_ordinal(pod: str) -> int:
    match = _ORDINAL.search(pod)
    return int(match.group(1)) if match else -1


@dataclass(frozen=True)
class NodeAddress:
    """One Redis node: the pod it runs in, the address other nodes reach it at, its zone."""

    pod: str
    host: str
    port: int = 6379
    zone: str = ""

    @property
    def ordinal(self) -> int:
        return pod_ordinal(self.pod)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class PodStatus:
    pod: str
    ready: bool
    reason: str = ""
    node: Optional[NodeAddress] = None


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


class TransportError(Exception):
    """A node could not be reached or a command could not be run; message holds no secret."""


class AuthenticationFailed(TransportError):
    pass


class NodeTransport(ABC):
    """What the cluster logic may do with the nodes; see the module docstring."""

    #: How often to re-list pods while waiting for readiness.
    poll_interval: float = 0.2
    #: Nodes probed at once. Threads pay off only when each round trip is slow.
    probe_concurrency: int = 1

    def __init__(self, password: str) -> None:
        self._password = password
        self._clients: dict[NodeAddress, redis.Redis] = {}
        self._lock = threading.Lock()

    @property
    def password(self) -> str:
        # MIGRATE ... AUTH needs it: the password goes to Redis in a command, never argv.
        return self._password

    @abstractmethod
    def pod_statuses(self, count: int) -> list[PodStatus]:
        """Status of the first `count` pods by ordinal (missing ones are not ready)."""

    @abstractmethod
    def _make_client(self, node: NodeAddress) -> redis.Redis: ...

    @abstractmethod
    def run_redis_cli(self, args: Sequence[str], timeout: float, via: NodeAddress) -> CliResult:
        """Runs `redis-cli args...` authenticated with the cluster password, next to `via`."""

    def client(self, node: NodeAddress) -> redis.Redis:
        with self._lock:
            found = self._clients.get(node)
            if found is None:
                found = self._clients[node] = self._make_client(node)
            return found

    def forget(self, node: NodeAddress) -> None:
        """Drops the cached client of a node that failed, so the next use reconnects."""
        with self._lock:
            client = self._clients.pop(node, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def __enter__(self) -> "NodeTransport":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------------------
# Direct: host:port reachable from here.
# ---------------------------------------------------------------------------------------


class DirectTransport(NodeTransport):
    poll_interval = 0.1

    def __init__(
        self,
        nodes: Iterable[Mapping[str, Any] | NodeAddress],
        password: str,
        redis_cli: Optional[str] = None,
    ) -> None:
        super().__init__(password)
        addresses = [n if isinstance(n, NodeAddress) else _address_from_mapping(n) for n in nodes]
        self._nodes = sorted(addresses, key=lambda n: (n.ordinal, n.pod))
        self._redis_cli = redis_cli or shutil.which("redis-cli") or "redis-cli"

    @property
    def nodes(self) -> list[NodeAddress]:
        return list(self._nodes)

    def _make_client(self, node: NodeAddress) -> redis.Redis:
        return redis.Redis(
            host=node.host,
            port=node.port,
            password=self._password,
            socket_timeout=COMMAND_TIMEOUT_SECONDS,
            socket_connect_timeout=2.0,
            max_connections=64,
        )

    def pod_statuses(self, count: int) -> list[PodStatus]:
        statuses = [self._probe(node) for node in self._nodes[:count]]
        declared = {n.pod for n in self._nodes}
        # The node list is the whole inventory: a missing entry will never become ready.
        if len(self._nodes) < count:
            prefix = _common_prefix(self._nodes)
            for ordinal in range(count):
                pod = f"{prefix}{ordinal}" if prefix else f"node #{ordinal}"
                if pod not in declared and len(statuses) < count:
                    statuses.append(PodStatus(pod, False, "not in the nodes input"))
        return statuses

    def _probe(self, node: NodeAddress) -> PodStatus:
        probe = redis.Redis(
            host=node.host, port=node.port, password=self._password, socket_timeout=1.0, socket_connect_timeout=0.5
        )
        try:
            probe.ping()
            return PodStatus(node.pod, True, node=node)
        except redis.AuthenticationError:
            raise AuthenticationFailed(f"{node.pod} ({node.endpoint}) rejected the cluster password") from None
        except redis.ResponseError as error:
            if "WRONGPASS" in str(error) or "NOAUTH" in str(error):
                raise AuthenticationFailed(f"{node.pod} ({node.endpoint}) rejected the cluster password") from None
            return PodStatus(node.pod, False, _first_line(error))
        except (redis.RedisError, OSError) as error:
            return PodStatus(node.pod, False, f"{node.endpoint}: {_first_line(error)}")
        finally:
            probe.close()

    def run_redis_cli(self, args: Sequence[str], timeout: float, via: NodeAddress) -> CliResult:
        env = dict(os.environ)
        env["REDISCLI_AUTH"] = self._password
        try:
            done = subprocess.run(
                [self._redis_cli, *args],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise TransportError(f"redis-cli {args[0] if args else ''} {args[1] if len(args) > 1 else ''} "
                                 f"did not finish within {timeout:.0f}s") from None
        return CliResult(done.returncode, done.stdout, done.stderr)


def _address_from_mapping(item: Mapping[str, Any]) -> NodeAddress:
    try:
        return NodeAddress(
            pod=str(item["pod"]), host=str(item["host"]), port=int(item.get("port", 6379)), zone=str(item.get("zone") or "")
        )
    except (KeyError, TypeError, ValueError):
        raise ValueError("each node needs pod, host and optionally port and zone") from None


def _common_prefix(nodes: Sequence[NodeAddress]) -> str:
    if not nodes:
        return ""
    match = _ORDINAL.search(nodes[0].pod)
    return nodes[0].pod[: match.start() + 1] if match else ""


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# ---------------------------------------------------------------------------------------
# Kubernetes: list pods via the API, talk to Redis through port-forward, run redis-cli
# inside a pod.
# ---------------------------------------------------------------------------------------

ExecFunction = Callable[[str, str, str, Sequence[str], float], CliResult]
"""(namespace, pod, container, argv, timeout) -> result of the command inside the pod."""

PortForwardFunction = Callable[[str, str, int], Any]
"""(namespace, pod, port) -> a connected socket-like object to that port of the pod."""

# Runs redis-cli inside the pod with the password read from the mounted secret by the
# pod's own shell: the password is in neither the exec request nor any argv.
_IN_POD_REDIS_CLI = 'REDISCLI_AUTH="$(cat "$0")" exec redis-cli "$@"'


def in_pod_redis_cli_argv(args: Sequence[str], secret_file: str = SECRET_FILE) -> list[str]:
    return ["sh", "-c", _IN_POD_REDIS_CLI, secret_file, *args]


class _SocketConnection(Connection):
    """A redis-py connection over a socket someone else opens (a port-forward)."""

    def __init__(self, open_socket: Callable[[], Any], **kwargs: Any) -> None:
        self._open_socket = open_socket
        super().__init__(**kwargs)

    def _connect(self) -> Any:
        sock = self._open_socket()
        sock.settimeout(self.socket_timeout)
        return sock


class KubernetesTransport(NodeTransport):
    poll_interval = 1.0
    probe_concurrency = 16

    def __init__(
        self,
        *,
        core_api: Any,
        namespace: str,
        stateful_set_name: str,
        password: str,
        pod_selector: Optional[str] = None,
        port: int = 6379,
        container: str = CONTAINER,
        secret_file: str = SECRET_FILE,
        exec_function: Optional[ExecFunction] = None,
        port_forward: Optional[PortForwardFunction] = None,
    ) -> None:
        super().__init__(password)
        self._api = core_api
        self._namespace = namespace
        self._sts = stateful_set_name
        self._selector = pod_selector
        self._port = port
        self._container = container
        self._secret_file = secret_file
        self._exec = exec_function or self._stream_exec
        self._port_forward = port_forward or self._stream_port_forward
        self._zones: dict[str, str] = {}

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Optional[str], **kwargs: Any) -> "KubernetesTransport":
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config

        if kubeconfig:
            import yaml

            api_client = k8s_config.new_client_from_config_dict(yaml.safe_load(kubeconfig))
        else:
            try:
                k8s_config.load_incluster_config()
                api_client = k8s_client.ApiClient()
            except k8s_config.ConfigException:
                api_client = k8s_config.new_client_from_config()
        return cls(core_api=k8s_client.CoreV1Api(api_client), **kwargs)

    # -- pods ---------------------------------------------------------------------------

    def pod_statuses(self, count: int) -> list[PodStatus]:
        wanted = [f"{self._sts}-{i}" for i in range(count)]
        listing = self._api.list_namespaced_pod(self._namespace, label_selector=self._selector or None)
        pods = {pod.metadata.name: pod for pod in listing.items}
        return [self._status(name, pods.get(name)) for name in wanted]

    def _status(self, name: str, pod: Any) -> PodStatus:
        if pod is None:
            return PodStatus(name, False, "pod not found")
        if getattr(pod.metadata, "deletion_timestamp", None):
            return PodStatus(name, False, "pod is terminating")
        status = pod.status
        phase = getattr(status, "phase", None)
        if phase != "Running":
            return PodStatus(name, False, f"phase {phase or 'unknown'}")
        conditions = {c.type: c.status for c in (getattr(status, "conditions", None) or [])}
        if conditions.get("Ready") != "True":
            return PodStatus(name, False, "not Ready")
        if not getattr(status, "pod_ip", None):
            return PodStatus(name, False, "no pod IP yet")
        zone = self._zone_of(getattr(pod.spec, "node_name", None))
        return PodStatus(name, True, node=NodeAddress(name, status.pod_ip, self._port, zone))

    def _zone_of(self, node_name: Optional[str]) -> str:
        if not node_name:
            return ""
        if node_name not in self._zones:
            try:
                node = self._api.read_node(node_name)
                labels = node.metadata.labels or {}
                self._zones[node_name] = labels.get(ZONE_LABEL, "")
            except Exception:  # noqa: BLE001 - without RBAC on nodes, placement is zone-blind
                self._zones[node_name] = ""
        return self._zones[node_name]

    # -- redis-py through port-forward --------------------------------------------------

    def _make_client(self, node: NodeAddress) -> redis.Redis:
        pool = ConnectionPool(
            connection_class=_SocketConnection,
            open_socket=lambda: self._port_forward(self._namespace, node.pod, node.port),
            password=self._password,
            socket_timeout=COMMAND_TIMEOUT_SECONDS,
            max_connections=16,
        )
        return redis.Redis(connection_pool=pool)

    def _stream_port_forward(self, namespace: str, pod: str, port: int) -> Any:
        from kubernetes.stream import portforward

        forward = portforward(
            self._api.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port)
        )
        return forward.socket(port)

    # -- redis-cli inside a pod ---------------------------------------------------------

    def run_redis_cli(self, args: Sequence[str], timeout: float, via: NodeAddress) -> CliResult:
        argv = in_pod_redis_cli_argv(args, self._secret_file)
        return self._exec(self._namespace, via.pod, self._container, argv, timeout)

    def _stream_exec(self, namespace: str, pod: str, container: str, argv: Sequence[str], timeout: float) -> CliResult:
        from kubernetes.stream import stream

        ws = stream(
            self._api.connect_get_namespaced_pod_exec,
            pod,
            namespace,
            container=container,
            command=list(argv),
            stderr=True,
            stdin=False,
            stdout=True,
            tty=False,
            _preload_content=False,
        )
        out: list[str] = []
        err: list[str] = []
        deadline = time.monotonic() + timeout
        try:
            while ws.is_open():
                if time.monotonic() > deadline:
                    raise TransportError(f"redis-cli in pod {pod} did not finish within {timeout:.0f}s")
                ws.update(timeout=1)
                if ws.peek_stdout():
                    out.append(ws.read_stdout())
                if ws.peek_stderr():
                    err.append(ws.read_stderr())
            returncode = ws.returncode
        finally:
            ws.close()
        return CliResult(int(returncode or 0), "".join(out), "".join(err))


def local_port_forward(addresses: Mapping[str, tuple[str, int]]) -> PortForwardFunction:
    """A stand-in for the API port-forward that connects straight to a local address;
    for exercising `KubernetesTransport` against local redis-server processes."""

    def forward(namespace: str, pod: str, port: int) -> Any:
        host, real_port = addresses[pod]
        return socket.create_connection((host, real_port), timeout=5)

    return forward
