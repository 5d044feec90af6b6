"""The Kubernetes transport against fakes of the client's websocket layer, built on the
client's own classes: websocket calls never cross each other or the pod listings, a failed
forward is an unreachable node (named by its pod), and only a refusal makes placement
zone-blind."""

from __future__ import annotations

import functools
import socket
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
import urllib3
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream.stream import _websocket_request
from kubernetes.stream.ws_client import WSClient

from cluster_logic.errors import BootstrapError
from cluster_logic.migration import SlotMover
from cluster_logic.model import NodeAddress
from cluster_logic.observation import probe
from cluster_logic.transports import kubernetes_api
from cluster_logic.transports.base import CliResult, TransportError
from cluster_logic.transports.kubernetes_api import KubernetesTransport

NODE = NodeAddress("redis-cluster-3", "10.0.3.7", 6379, "zone-a")
KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://127.0.0.1:9"}}]
users: [{name: u, user: {token: not-a-real-token}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def transport(core_api: Any = None, **kwargs: Any) -> KubernetesTransport:
    api = core_api or k8s_client.CoreV1Api(k8s_client.ApiClient(k8s_client.Configuration(host="http://127.0.0.1:9")))
    return KubernetesTransport(
        core_api=api, namespace="redis", stateful_set_name="redis-cluster", password="pw-0123456789abcdef", **kwargs
    )


# -- concurrent websocket calls -----------------------------------------------------------


def test_concurrent_port_forwards_never_cross_and_leave_the_clients_as_they_were(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handshakes: list[tuple[str, str]] = []
    sockets: list[socket.socket] = []

    def slow_handshake(configuration: Any, method: str, url: str, **kwargs: Any) -> Any:
        time.sleep(0.02)  # the handshake's round trip: long enough for other threads to start theirs
        handshakes.append((threading.current_thread().name, url))
        ours, theirs = socket.socketpair()
        sockets.extend([ours, theirs])
        return SimpleNamespace(socket=lambda port: ours, websocket=SimpleNamespace(settimeout=lambda seconds: None))

    # kubernetes.stream's own wrapper, with only the network call faked.
    fake = functools.partial(_websocket_request, slow_handshake, {"_preload_content": False})
    monkeypatch.setattr("kubernetes.stream.portforward", fake)
    # Built the way the provider builds it.
    under_test = KubernetesTransport.from_kubeconfig(
        KUBECONFIG, namespace="redis", stateful_set_name="redis-cluster", password="pw-0123456789abcdef"
    )
    rest_client = under_test._api.api_client

    def forward(i: int) -> None:
        under_test._stream_port_forward("redis", f"redis-cluster-{i}", 6379)

    threads = [threading.Thread(target=forward, args=(i,), name=f"redis-cluster-{i}") for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(handshakes) == 16
        crossed = [(name, url) for name, url in handshakes if f"/pods/{name}/portforward" not in url]
        assert crossed == [], "a handshake ran through another call's wrapper"
        assert "call_api" not in vars(rest_client), "the pod listings' client is never swapped"
    finally:
        for sock in sockets:
            sock.close()


# -- a failing forward is an unreachable node -----------------------------------------------


def refused_forward(namespace: str, pod: str, port: int) -> Any:
    # What kubernetes.stream raises when the websocket handshake fails (a pod restarting).
    raise ApiException(status=0, reason="Handshake status 500 Internal Server Error")


def test_a_probe_through_a_failing_forward_sees_the_pod_unreachable() -> None:
    with transport(port_forward=refused_forward) as under_test:
        (view,) = probe(under_test, [NODE])
    assert not view.reachable
    assert "redis-cluster-3" in view.error and "Handshake status 500" in view.error
    assert "localhost" not in view.error


def test_a_migration_batch_through_a_failing_forward_is_left_open_for_the_next_update() -> None:
    target = NodeAddress("redis-cluster-4", "10.0.3.8", 6379, "zone-b")
    with transport(port_forward=refused_forward) as under_test:
        mover = SlotMover(under_test, {NODE: "a" * 40, target: "b" * 40}, [NODE, target])
        with pytest.raises(BootstrapError) as failed:
            mover.move_round([100, 101], NODE, target)
    assert "left open" in str(failed.value) and "redis-cluster" in str(failed.value)


def test_a_handshake_that_never_completes_is_an_unreachable_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubernetes_api, "HANDSHAKE_TIMEOUT_SECONDS", 0.2)
    never = threading.Event()

    def hung_forward(namespace: str, pod: str, port: int) -> Any:
        never.wait(5)
        raise ApiException(status=0, reason="gave up")

    try:
        with transport(port_forward=hung_forward) as under_test:
            (view,) = probe(under_test, [NODE])
        assert not view.reachable and "redis-cluster-3" in view.error and "no websocket handshake" in view.error
    finally:
        never.set()


# -- zones ------------------------------------------------------------------------------------


class NodesApi:
    """read_node answering from a script of outcomes."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def read_node(self, name: str, **kwargs: Any) -> Any:
        self.calls += 1
        assert kwargs == {"_request_timeout": kubernetes_api.REQUEST_TIMEOUT}, "a read without a timeout hangs"
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return SimpleNamespace(metadata=SimpleNamespace(labels={kubernetes_api.ZONE_LABEL: outcome}))


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubernetes_api, "ZONE_LOOKUP_PAUSE_SECONDS", 0.0)


def test_a_transient_error_reading_a_zone_is_retried() -> None:
    api = NodesApi(ApiException(status=500, reason="etcdserver: leader changed"), "eu-west-1a")
    under_test = transport(core_api=api)
    assert under_test._zone_of("ip-10-0-3-7") == "eu-west-1a"
    assert under_test._zone_of("ip-10-0-3-7") == "eu-west-1a" and api.calls == 2, "then cached"


def test_only_a_refusal_means_zone_blind_placement() -> None:
    under_test = transport(core_api=NodesApi(ApiException(status=403, reason="Forbidden")))
    assert under_test._zone_of("ip-10-0-3-7") == ""


def test_a_zone_that_stays_unreadable_stops_the_run_instead_of_placing_blind() -> None:
    api = NodesApi(*[ApiException(status=503, reason="Service Unavailable")] * 3)
    under_test = transport(core_api=api)
    with pytest.raises(TransportError) as failed:
        under_test._zone_of("ip-10-0-3-7")
    assert "ip-10-0-3-7" in str(failed.value) and "503" in str(failed.value)
    assert "ip-10-0-3-7" not in under_test._zones, "nothing cached: the next run asks again"


def test_the_mounted_secret_is_judged_by_its_digest_read_in_the_pod() -> None:
    calls = []

    def exec_function(namespace, pod, container, argv, timeout):
        calls.append((namespace, pod, container, list(argv)))
        return CliResult(0, "9f86d081884c7d65  /etc/redis-secret/password\n", "")

    found = transport(exec_function=exec_function).mounted_password_hash(NODE)
    assert found == "9f86d081884c7d65"
    # Only the file's name goes to the pod, and only its digest comes back.
    assert calls == [("redis", "redis-cluster-3", "redis", ["sha256sum", "/etc/redis-secret/password"])]


def test_an_unreadable_mounted_secret_is_an_error_not_a_match() -> None:
    failing = transport(exec_function=lambda *args: CliResult(1, "", "sha256sum: No such file or directory"))
    with pytest.raises(TransportError, match="redis-cluster-3"):
        failing.mounted_password_hash(NODE)


# -- what a failing API, exec or websocket does ----------------------------------------------


class PodsApi:
    """list_namespaced_pod answering from a script of outcomes (an exception, or pods)."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.timeouts: list[Any] = []

    def list_namespaced_pod(self, namespace: str, label_selector: Any = None, **kwargs: Any) -> Any:
        self.timeouts.append(kwargs.get("_request_timeout"))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return SimpleNamespace(items=outcome)


def running_pod(name: str, ip: str) -> Any:
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name, deletion_timestamp=None),
        status=SimpleNamespace(phase="Running", pod_ip=ip, conditions=[SimpleNamespace(type="Ready", status="True")]),
        spec=SimpleNamespace(node_name=None),
    )


@pytest.fixture
def no_list_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubernetes_api, "LIST_PAUSE_SECONDS", 0.0, raising=False)


def test_every_rest_call_has_a_timeout(no_list_pause: None) -> None:
    api = PodsApi([running_pod("redis-cluster-0", "10.0.0.1")])
    transport(core_api=api).pod_statuses(1)
    assert api.timeouts == [kubernetes_api.REQUEST_TIMEOUT]


@pytest.mark.parametrize(
    "failure",
    [
        ApiException(status=429, reason="Too Many Requests"),
        ApiException(status=503, reason="Service Unavailable"),
        urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")),
        urllib3.exceptions.ReadTimeoutError(None, "/api/v1/pods", "Read timed out."),
    ],
    ids=["429", "503", "dropped", "timed-out"],
)
def test_a_transient_api_failure_during_a_poll_is_retried(failure: BaseException, no_list_pause: None) -> None:
    api = PodsApi(failure, [running_pod("redis-cluster-0", "10.0.0.1")])
    (status,) = transport(core_api=api).pod_statuses(1)
    assert status.ready and status.node is not None


def test_a_poll_that_keeps_failing_reports_the_pods_unready_for_the_wait_to_go_on(no_list_pause: None) -> None:
    """The wait polls again until its own deadline, and names the reason if it runs out: the
    bootstrap no longer aborts on the first 503 of a busy API server."""
    api = PodsApi(*[ApiException(status=503, reason="Service Unavailable")] * kubernetes_api.LIST_ATTEMPTS)
    statuses = transport(core_api=api).pod_statuses(2)
    assert [(s.pod, s.ready) for s in statuses] == [("redis-cluster-0", False), ("redis-cluster-1", False)]
    assert all("503 Service Unavailable" in s.reason for s in statuses)


def test_a_refused_pod_list_is_an_error_at_once(no_list_pause: None) -> None:
    api = PodsApi(ApiException(status=403, reason="Forbidden"))
    with pytest.raises(TransportError, match="403 Forbidden"):
        transport(core_api=api).pod_statuses(1)


def test_running_nodes_never_mistake_a_failed_list_for_no_pods(no_list_pause: None) -> None:
    """An empty answer would let a rotation retire the old passwords with nobody checked."""
    api = PodsApi(*[ApiException(status=500, reason="etcdserver: request timed out")] * kubernetes_api.LIST_ATTEMPTS)
    with pytest.raises(TransportError, match="500 etcdserver"):
        transport(core_api=api).running_nodes(1)


def test_a_failed_exec_handshake_reading_the_mounted_secret_is_a_transport_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refused_handshake(configuration: Any, method: str, url: str, **kwargs: Any) -> Any:
        raise ApiException(status=0, reason="Handshake status 403 Forbidden")

    monkeypatch.setattr("kubernetes.stream.stream", functools.partial(_websocket_request, refused_handshake, {}))
    under_test = transport(websocket_api=lambda: k8s_client.CoreV1Api(k8s_client.ApiClient()))
    with pytest.raises(TransportError) as failed:
        under_test.mounted_password_hash(NODE)
    assert "redis-cluster-3" in str(failed.value) and "Handshake status 403" in str(failed.value)
    assert not isinstance(failed.value, ApiException)


def finished_exec(monkeypatch: pytest.MonkeyPatch, error_channel: str, stdout: str = "") -> Any:
    """kubernetes.stream's own WSClient whose command ended: built by its own __init__ over a
    websocket that has closed, having received these frames (stdout, the error channel)."""
    closed = SimpleNamespace(
        connected=False,
        subprotocol="v5.channel.k8s.io",
        settimeout=lambda seconds: timeouts.append(seconds),
        close=lambda **_: None,
    )
    monkeypatch.setattr("kubernetes.stream.ws_client.create_websocket", lambda *args: closed)
    client = WSClient(k8s_client.Configuration(), "wss://api/exec", {}, capture_all=True)
    client._channels = {1: stdout, 3: error_channel} if error_channel else {1: stdout}
    return client


timeouts: list[float] = []


def exec_through(monkeypatch: pytest.MonkeyPatch, ws: Any) -> KubernetesTransport:
    monkeypatch.setattr("kubernetes.stream.stream", lambda *args, **kwargs: ws)
    return transport(websocket_api=lambda: SimpleNamespace(connect_get_namespaced_pod_exec=None))


@pytest.mark.parametrize(
    ("channel", "code"),
    [
        ('{"metadata":{},"status":"Success"}', 0),
        (
            '{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"2"}]}}',
            2,
        ),
    ],
    ids=["success", "exit-2"],
)
def test_an_execs_exit_status_is_read_from_its_error_channel(monkeypatch, channel, code) -> None:
    result = exec_through(monkeypatch, finished_exec(monkeypatch, channel, "ok\n")).run_cli(["PING"], 5, NODE)
    assert (result.returncode, result.stdout) == (code, "ok\n")


@pytest.mark.parametrize(
    ("channel", "expected"),
    [
        ("", "ended without an exit status"),
        ("{}", "ended without an exit status"),
        ('{"status":"Failure","message":"container redis not found"}', "container redis not found"),
        ('{"status":"Failure","reason":"NonZeroExitCode","details":{}}', "failed"),
    ],
    ids=["empty", "empty-status", "no-container", "no-cause"],
)
def test_an_exec_without_a_readable_status_is_a_transport_error_not_a_keyerror(monkeypatch, channel, expected) -> None:
    """WSClient.returncode indexes the status it parsed: an empty channel (a connection closed
    early) raised TypeError, a Failure of another shape KeyError, both escaping as crashes."""
    with pytest.raises(TransportError, match=expected):
        exec_through(monkeypatch, finished_exec(monkeypatch, channel)).run_cli(["PING"], 5, NODE)


def test_an_execs_websocket_gets_a_timeout(monkeypatch) -> None:
    timeouts.clear()
    exec_through(monkeypatch, finished_exec(monkeypatch, '{"status":"Success"}')).run_cli(["PING"], 5, NODE)
    assert timeouts == [kubernetes_api.WEBSOCKET_TIMEOUT_SECONDS]


def test_a_port_forwards_websocket_gets_a_timeout(monkeypatch) -> None:
    set_to: list[float] = []
    ours, theirs = socket.socketpair()
    forward = SimpleNamespace(websocket=SimpleNamespace(settimeout=set_to.append), socket=lambda port: ours)
    monkeypatch.setattr("kubernetes.stream.portforward", lambda *args, **kwargs: forward)
    under_test = transport(websocket_api=lambda: SimpleNamespace(connect_get_namespaced_pod_portforward=None))
    try:
        assert under_test._stream_port_forward("redis", "redis-cluster-3", 6379) is ours
        assert set_to == [kubernetes_api.WEBSOCKET_TIMEOUT_SECONDS]
    finally:
        ours.close()
        theirs.close()
