"""The Kubernetes transport at the largest size the settings allow (100 shards x 5 replicas
= 600 pods): a round of probes over every pod holds only the port-forwards in flight, so the
process stays far below the 1,024 descriptors kubernetes.stream's select() can watch. The
forwards are stand-ins that connect to real redis-server processes on loopback."""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

import pytest

from cluster_logic.commands import send_once
from cluster_logic.model import NodeAddress
from cluster_logic.observation import probe
from cluster_logic.transports.kubernetes_api import KubernetesTransport
from components.stack_settings import MAX_REPLICAS_PER_SHARD, MAX_SHARDS
from testkit.redis_nodes import PASSWORD, LocalNodes

pytestmark = pytest.mark.integration


class CountedForwards:
    """Port-forwards to real nodes that count how many are open at once."""

    def __init__(self, targets: list[tuple[str, int]]) -> None:
        self.targets = targets
        self.open = 0
        self.peak = 0
        self.opened = 0
        self._lock = threading.Lock()

    def __call__(self, namespace: str, pod: str, port: int) -> Any:
        ordinal = int(pod.rsplit("-", 1)[1])
        sock = socket.create_connection(self.targets[ordinal % len(self.targets)], timeout=5)
        with self._lock:
            self.open += 1
            self.opened += 1
            self.peak = max(self.peak, self.open)
        return _Counted(sock, self)

    def closed(self) -> None:
        with self._lock:
            self.open -= 1


class _Counted:
    def __init__(self, sock: socket.socket, forwards: CountedForwards) -> None:
        self._sock, self._forwards, self._closed = sock, forwards, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._forwards.closed()
        self._sock.close()


def test_a_probe_round_over_600_pods_holds_only_the_forwards_in_flight(nodes: LocalNodes) -> None:
    pods = MAX_SHARDS * (1 + MAX_REPLICAS_PER_SHARD)
    assert pods == 600
    servers = nodes.started(6)
    forwards = CountedForwards([(n.ip, n.port) for n in servers])
    addresses = [NodeAddress(f"redis-cluster-{i}", f"10.0.{i // 250}.{i % 250 + 1}", 6379) for i in range(pods)]
    fds_before = len(os.listdir("/proc/self/fd"))
    transport = KubernetesTransport(
        core_api=None,
        namespace="redis",
        stateful_set_name="redis-cluster",
        password=PASSWORD,
        port_forward=forwards,
    )
    with transport:
        for _round in range(2):
            views = probe(transport, addresses)
            assert all(v.reachable for v in views), [v.error for v in views if not v.reachable][:3]
            assert forwards.open == 0, "no forward outlives the probe that needed it"
    assert forwards.opened == 2 * pods
    assert forwards.peak <= transport.probe_concurrency
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 5


def test_a_round_of_one_shot_commands_over_600_pods_holds_one_forward_at_a_time(nodes: LocalNodes) -> None:
    """What join, the introductions and the placement moves do: one command to each pod."""
    servers = nodes.started(6)
    forwards = CountedForwards([(n.ip, n.port) for n in servers])
    addresses = [NodeAddress(f"redis-cluster-{i}", f"10.0.{i // 250}.{i % 250 + 1}", 6379) for i in range(600)]
    transport = KubernetesTransport(
        core_api=None, namespace="redis", stateful_set_name="redis-cluster", password=PASSWORD, port_forward=forwards
    )
    with transport:
        for node in addresses:
            assert send_once(transport, node, [("PING",)]) == [True]
        assert forwards.peak == 1 and forwards.open == 0


def test_a_node_used_by_many_threads_keeps_one_idle_forward(nodes: LocalNodes) -> None:
    (server,) = nodes.started(1)
    forwards = CountedForwards([(server.ip, server.port)])
    transport = KubernetesTransport(
        core_api=None, namespace="redis", stateful_set_name="redis-cluster", password=PASSWORD, port_forward=forwards
    )
    node = NodeAddress("redis-cluster-0", "10.0.0.1", 6379)
    barrier = threading.Barrier(8)
    replies: list[object] = []

    def slow_call() -> None:
        client = transport.client(node)
        barrier.wait()
        # All eight hold a connection at once: WAIT blocks 0.5 s for a replica there is not.
        replies.append(client.execute_command("WAIT", 1, 500))

    with transport:
        threads = [threading.Thread(target=slow_call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert replies == [0] * 8
        assert forwards.peak == 8, "each thread had a forward of its own while it needed one"
        assert forwards.open == 1, "one is kept for the next call, the others closed"
