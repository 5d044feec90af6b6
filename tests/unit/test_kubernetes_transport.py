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
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream.stream import _websocket_request

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
        return SimpleNamespace(socket=lambda port: ours)

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

    def read_node(self, name: str) -> Any:
        self.calls += 1
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
