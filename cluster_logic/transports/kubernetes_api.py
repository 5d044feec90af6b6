"""For a deploy that runs where pod IPs are not routable (outside the VPC): pods are listed with the Kubernetes
API, redis-py talks to each pod through an API port-forward, and `redis-cli` runs inside a
pod (exec), reading the password from the mounted secret file, so it never leaves the
cluster in a process argv."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional, Sequence

import redis
from redis.connection import BlockingConnectionPool, Connection

from cluster_logic.commands import first_line
from cluster_logic.model import NodeAddress
from cluster_logic.transports.base import (
    COMMAND_TIMEOUT_SECONDS,
    CliResult,
    NodeTransport,
    PodStatus,
    TlsOptions,
    TransportError,
)

ZONE_LABEL = "topology.kubernetes.io/zone"
# Reading a node's zone label is retried this often before the bootstrap gives up; only a
# refusal (no RBAC on nodes) means placing pods without zones.
ZONE_LOOKUP_ATTEMPTS = 3
ZONE_LOOKUP_PAUSE_SECONDS = 0.5
# A websocket handshake (port-forward or exec) that has not completed by then is a pod out
# of reach; kubernetes.stream itself would wait for ever.
HANDSHAKE_TIMEOUT_SECONDS = 15.0
# Once open, a websocket's socket has no timeout either (kubernetes.stream's create_websocket
# sets none): a send to a peer that stopped reading, or the rest of a frame that never comes,
# would block its thread for ever. Reads follow a poll that saw data, so this bounds only a
# stall, never a slow command.
WEBSOCKET_TIMEOUT_SECONDS = 60.0
# The REST calls (pod list, node, Secret): connect and read timeouts, as the client's
# `_request_timeout` takes them; without one a dead connection hangs the call.
REQUEST_TIMEOUT = (10.0, 30.0)
# A pod list that fails with a transient error (429, 5xx, a dropped connection) is retried this
# often within one call; a poll then goes on until its own deadline.
LIST_ATTEMPTS = 3
LIST_PAUSE_SECONDS = 1.0
# Connections (each a port-forward: a websocket, a socket pair and a proxy thread) one node
# may have in use at once: as many as threads may use one node (16 probes, 8 slot movers);
# only one of them is kept when idle (`_ForwardPool`).
CONNECTIONS_PER_NODE = 16
SECRET_FILE = "/etc/redis-secret/password"
# The cluster CA's certificate as the pods mount it (the TLS Secret's ca.crt).
POD_CA_FILE = "/etc/redis-tls/ca.crt"
CONTAINER = "redis"

ExecFunction = Callable[[str, str, str, Sequence[str], float], CliResult]
"""(namespace, pod, container, argv, timeout) -> result of the command inside the pod."""

PortForwardFunction = Callable[[str, str, int], Any]
"""(namespace, pod, port) -> a connected socket-like object to that port of the pod."""

# Runs the engine's CLI ($1) inside the pod with the password read from the mounted secret
# by the pod's own shell: the password is in neither the exec request nor any argv. Each CLI
# reads a variable of its own (valkey-cli: VALKEYCLI_AUTH).
_IN_POD_CLI = 'p="$(cat "$0")"; cli=$1; shift; REDISCLI_AUTH=$p VALKEYCLI_AUTH=$p exec "$cli" "$@"'


def in_pod_cli_argv(args: Sequence[str], cli: str = "redis-cli", secret_file: str = SECRET_FILE) -> list[str]:
    return ["sh", "-c", _IN_POD_CLI, secret_file, cli, *args]


class _SocketConnection(Connection):
    """A redis-py connection over a socket someone else opens (a port-forward), wrapped in
    TLS when the nodes speak it."""

    def __init__(self, open_socket: Callable[[], Any], tls: Optional[TlsOptions] = None, **kwargs: Any) -> None:
        self._open_socket = open_socket
        self._tls_context = tls.context() if tls else None
        super().__init__(**kwargs)

    def _connect(self) -> Any:
        sock = self._open_socket()
        sock.settimeout(self.socket_timeout)
        if self._tls_context is not None:
            sock = self._tls_context.wrap_socket(sock)
        return sock


class _ForwardPool(BlockingConnectionPool):
    """Keeps at most one idle connection: a node that several threads used at once keeps
    one port-forward open for the next call, not one per thread, so that a cluster of
    hundreds of pods stays within what kubernetes.stream's select() can watch."""

    def release(self, connection: Connection) -> None:
        if any(c is not None and c is not connection and c._sock is not None for c in list(self.pool.queue)):
            connection.disconnect()
        super().release(connection)


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
        websocket_api: Optional[Callable[[], Any]] = None,
        cli: str = "redis-cli",
        tls: Optional[TlsOptions] = None,
        pod_ca_file: str = POD_CA_FILE,
    ) -> None:
        super().__init__(password, tls)
        self._cli = cli
        self._pod_ca_file = pod_ca_file
        self._api = core_api
        # kubernetes.stream swaps `call_api` on the ApiClient it is given for the length of
        # the handshake (kubernetes-client/python#928): each websocket call gets an ApiClient
        # of its own, never the one the pod listings use nor another call's.
        self._websocket_api = websocket_api or self._fresh_api
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
    def from_kubeconfig(cls, kubeconfig: Optional[str], **kwargs: Any) -> KubernetesTransport:
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

    def _list_pods(self) -> dict[str, Any]:
        """The StatefulSet's pods by name. A transient failure of the API (429, a 5xx, a
        dropped or timed-out connection) is retried a few times; one that lasts is a
        TransportError naming it, as is a refusal (401, 403)."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        reason = ""
        for attempt in range(1, LIST_ATTEMPTS + 1):
            try:
                listing = self._api.list_namespaced_pod(
                    self._namespace, label_selector=self._selector or None, _request_timeout=REQUEST_TIMEOUT
                )
                return {pod.metadata.name: pod for pod in listing.items}
            except (ApiException, HTTPError, OSError) as error:
                if not _transient(error):
                    raise TransportError(f"cannot list the pods of {self._namespace}: {_api_reason(error)}") from None
                reason = _api_reason(error)
            if attempt < LIST_ATTEMPTS:
                time.sleep(LIST_PAUSE_SECONDS * attempt)
        raise TransientApiError(f"the Kubernetes API did not list the pods ({reason})")

    def pod_statuses(self, count: int) -> list[PodStatus]:
        wanted = [f"{self._sts}-{i}" for i in range(count)]
        try:
            pods = self._list_pods()
        except TransientApiError as error:
            # Not ready as far as anyone can tell: a wait polls again until its deadline, and
            # names this reason if the API stays away.
            return [PodStatus(name, False, str(error)) for name in wanted]
        return [self._status(name, pods.get(name)) for name in wanted]

    def running_nodes(self, count: int) -> list[NodeAddress]:
        # No list is not an empty one: a transient failure that lasts is an error here.
        wanted = [f"{self._sts}-{i}" for i in range(count)]
        pods = self._list_pods()
        found = []
        for name in wanted:
            pod = pods.get(name)
            status = getattr(pod, "status", None)
            if (
                pod is not None
                and not getattr(pod.metadata, "deletion_timestamp", None)
                and getattr(status, "phase", None) == "Running"
                and getattr(status, "pod_ip", None)
            ):
                found.append(NodeAddress(name, status.pod_ip, self._port))
        return found

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
            self._zones[node_name] = self._read_zone(node_name)
        return self._zones[node_name]

    def _read_zone(self, node_name: str) -> str:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        for attempt in range(1, ZONE_LOOKUP_ATTEMPTS + 1):
            try:
                node = self._api.read_node(node_name, _request_timeout=REQUEST_TIMEOUT)
                return (node.metadata.labels or {}).get(ZONE_LABEL, "")
            except ApiException as error:
                if error.status in (401, 403):
                    return ""  # no RBAC on nodes: placement is zone-blind, and says so
                reason = f"{error.status} {error.reason}"
            except (HTTPError, OSError) as error:
                # A dropped or timed-out connection, retried like a 5xx.
                reason = _api_reason(error)
            if attempt < ZONE_LOOKUP_ATTEMPTS:
                time.sleep(ZONE_LOOKUP_PAUSE_SECONDS * attempt)
        raise TransportError(f"cannot read the zone of node {node_name} ({reason}); retry the deployment")

    def secret_value(self, name: str, key: str, timeout: float) -> str:
        """One key of a Secret in the pods' namespace (the CA a cert-manager issuer put
        beside the nodes' certificate), waiting for it to be issued."""
        import base64

        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        deadline = time.monotonic() + timeout
        while True:
            try:
                data = (
                    self._api.read_namespaced_secret(name, self._namespace, _request_timeout=REQUEST_TIMEOUT).data or {}
                )
                if data.get(key):
                    return base64.b64decode(data[key]).decode()
                reason = f"has no {key} yet"
            except ApiException as error:
                if error.status != 404 and not _transient(error):
                    raise TransportError(f"cannot read Secret {name}: {error.status} {error.reason}") from None
                reason = "does not exist yet" if error.status == 404 else _api_reason(error)
            except (HTTPError, OSError) as error:
                # A dropped or timed-out connection, waited out like a 5xx.
                reason = _api_reason(error)
            if time.monotonic() > deadline:
                raise TransportError(f"Secret {self._namespace}/{name} {reason} after {timeout:.0f}s")
            time.sleep(self.poll_interval * 5)

    def mounted_password_hash(self, node: NodeAddress) -> Optional[str]:
        # The kubelet refreshes a Secret's mount a minute or more after the Secret changed;
        # the probes read the password from it. Only its digest leaves the pod.
        from kubernetes.client.exceptions import ApiException

        try:
            result = self._exec(self._namespace, node.pod, self._container, ["sha256sum", self._secret_file], 15.0)
        except (ApiException, ConnectionError, OSError) as error:
            # A refused or timed-out handshake (kubernetes.stream raises ApiException with
            # status 0 for both): the pod is out of reach, which the caller may wait out.
            raise TransportError(f"cannot read the mounted Secret in pod {node.pod}: {_api_reason(error)}") from None
        if result.returncode != 0 or not result.stdout.strip():
            raise TransportError(f"cannot read the mounted Secret in pod {node.pod}: {first_line(result.stderr)}")
        return result.stdout.split()[0]

    # -- redis-py through port-forward --------------------------------------------------

    def _make_client(self, node: NodeAddress, password: Optional[str] = None) -> redis.Redis:
        pool = _ForwardPool(
            connection_class=_SocketConnection,
            open_socket=lambda: self._forward(node),
            tls=self._tls,
            # Only for redis-py's messages: they name the pod, not "localhost".
            host=node.pod,
            port=node.port,
            password=password or self._password,
            socket_timeout=COMMAND_TIMEOUT_SECONDS,
            max_connections=CONNECTIONS_PER_NODE,
            timeout=COMMAND_TIMEOUT_SECONDS,
        )
        return redis.Redis(connection_pool=pool)

    def release_idle(self, node: Optional[NodeAddress] = None) -> None:
        # kubernetes.stream's proxy threads select() on their sockets: a process holding a
        # forward to each of hundreds of pods would pass select's 1,024-descriptor limit.
        # Only the forwards in use stay open; the next call opens a new one.
        with self._lock:
            clients = [c for n, c in self._clients.items() if node is None or n == node]
        for client in clients:
            client.connection_pool.disconnect(inuse_connections=False)

    def _forward(self, node: NodeAddress) -> Any:
        """A socket to the node's port; a failed forward (a pod restarting, a handshake
        refused) is a connection error, which the cluster logic waits out like any
        unreachable node, not an abort."""
        from kubernetes.client.exceptions import ApiException

        try:
            return _within(
                HANDSHAKE_TIMEOUT_SECONDS,
                lambda: self._port_forward(self._namespace, node.pod, node.port),
                f"port-forward to pod {node.pod}",
            )
        except ApiException as error:
            raise ConnectionError(
                f"port-forward to pod {node.pod} failed: {first_line(error.reason) or 'no reason given'}"
            ) from None

    def _fresh_api(self) -> Any:
        from kubernetes import client as k8s_client

        return k8s_client.CoreV1Api(k8s_client.ApiClient(self._api.api_client.configuration))

    def _stream_port_forward(self, namespace: str, pod: str, port: int) -> Any:
        from kubernetes.stream import portforward

        api = self._websocket_api()
        forward = portforward(api.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port))
        forward.websocket.settimeout(WEBSOCKET_TIMEOUT_SECONDS)
        return forward.socket(port)

    # -- redis-cli inside a pod ---------------------------------------------------------

    def run_cli(self, args: Sequence[str], timeout: float, via: NodeAddress) -> CliResult:
        tls_args = self._tls.cli_args(self._pod_ca_file) if self._tls else []
        argv = in_pod_cli_argv([*tls_args, *args], self._cli, self._secret_file)
        return self._exec(self._namespace, via.pod, self._container, argv, timeout)

    def _stream_exec(self, namespace: str, pod: str, container: str, argv: Sequence[str], timeout: float) -> CliResult:
        from kubernetes.stream import stream

        api = self._websocket_api()
        ws = _within(
            HANDSHAKE_TIMEOUT_SECONDS,
            lambda: stream(
                api.connect_get_namespaced_pod_exec,
                pod,
                namespace,
                container=container,
                command=list(argv),
                stderr=True,
                stdin=False,
                stdout=True,
                tty=False,
                _preload_content=False,
            ),
            f"exec in pod {pod}",
        )
        ws.sock.settimeout(WEBSOCKET_TIMEOUT_SECONDS)
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
            # The exit status, from the error channel: not WSClient.returncode, which fails with
            # KeyError or TypeError when the channel is empty or of another shape.
            status = ws.read_channel(ERROR_CHANNEL)
        finally:
            ws.close()
        return CliResult(exit_status(status, pod), "".join(out), "".join(err))


# The exec websocket's channel that carries the command's status (kubernetes.stream.ws_client).
ERROR_CHANNEL = 3


class TransientApiError(TransportError):
    """The Kubernetes API stayed away (429, a 5xx, a dropped connection) through every retry."""


def _transient(error: BaseException) -> bool:
    """Whether an API call's failure may pass by itself: throttled (429), a server error (5xx),
    or the connection (urllib3's errors, a socket's)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    if isinstance(error, ApiException):
        return error.status == 429 or 500 <= (error.status or 0) <= 599
    return isinstance(error, (HTTPError, OSError))


def _api_reason(error: BaseException) -> str:
    from kubernetes.client.exceptions import ApiException

    if isinstance(error, ApiException):
        return f"{error.status} {first_line(error.reason) or ''}".strip()
    return first_line(str(error)) or type(error).__name__


def exit_status(channel: str, pod: str) -> int:
    """A command's exit code from the exec's error channel: a Status object, `Success`, or
    `Failure` with reason NonZeroExitCode and the code as the ExitCode cause. Anything else
    (nothing at all when the connection dropped before the end) is a TransportError: no
    status is not a success."""
    import yaml

    try:
        status = yaml.safe_load(channel) if channel and channel.strip() else None
    except yaml.YAMLError:
        status = None
    if not isinstance(status, dict) or not status.get("status"):
        raise TransportError(f"exec in pod {pod} ended without an exit status")
    if status.get("status") == "Success":
        return 0
    causes = (status.get("details") or {}).get("causes") or []
    codes = [c.get("message") for c in causes if isinstance(c, dict) and c.get("reason") == "ExitCode"]
    if status.get("reason") == "NonZeroExitCode" and codes and str(codes[0]).isdigit():
        return int(codes[0])
    raise TransportError(f"exec in pod {pod} failed: {first_line(str(status.get('message') or status))}")


def _within(seconds: float, call: Callable[[], Any], what: str) -> Any:
    """The result of `call`, or a connection error once `seconds` pass without one (the
    call's thread is left to finish or fail on its own)."""
    outcome: dict[str, Any] = {}
    lock = threading.Lock()

    def run() -> None:
        try:
            value = call()
        except BaseException as error:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = error
            return
        with lock:
            if "abandoned" not in outcome:
                outcome["value"] = value
                return
        # Nobody waits for it any more: a forward or an exec that opened late is closed.
        close = getattr(value, "close", None)
        if close is not None:
            close()

    worker = threading.Thread(target=run, name=what, daemon=True)
    worker.start()
    worker.join(seconds)
    with lock:
        if "value" not in outcome and "error" not in outcome:
            outcome["abandoned"] = True
            raise ConnectionError(f"{what}: no websocket handshake within {seconds:g}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
