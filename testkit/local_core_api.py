"""The Kubernetes API's pod list and node zones for local nodes, as the real client's models."""

from __future__ import annotations

from typing import Any

from kubernetes.client import (
    V1Node,
    V1ObjectMeta,
    V1Pod,
    V1PodCondition,
    V1PodList,
    V1PodSpec,
    V1PodStatus,
)

from testkit.redis_nodes import LocalNodes

ZONE_LABEL = "topology.kubernetes.io/zone"


class LocalCoreV1:
    """What KubernetesTransport asks of CoreV1Api, answered from the running local nodes.

    Each node is a pod on a Kubernetes node named after its zone; pods named in `not_ready`
    are Pending with no IP. The keyword arguments the real client takes (`_request_timeout`)
    are recorded, so a test can see that every call bounds its wait."""

    def __init__(self, nodes: LocalNodes, namespace: str = "redis", not_ready: set[str] = frozenset()) -> None:
        self.nodes = nodes
        self.namespace = namespace
        self.not_ready = set(not_ready)
        self.calls: list[tuple] = []

    def list_namespaced_pod(self, namespace: str, label_selector: str | None = None, **kwargs: Any) -> V1PodList:
        self.calls.append(("list_namespaced_pod", namespace, label_selector, kwargs.get("_request_timeout")))
        assert namespace == self.namespace
        items = []
        for node in self.nodes.nodes:
            ready = node.pod not in self.not_ready
            items.append(
                V1Pod(
                    metadata=V1ObjectMeta(name=node.pod, namespace=namespace),
                    spec=V1PodSpec(containers=[], node_name=f"ip-{self.nodes.zone_of(node)}"),
                    status=V1PodStatus(
                        phase="Running" if ready else "Pending",
                        pod_ip=node.ip if ready else None,
                        conditions=[V1PodCondition(type="Ready", status="True" if ready else "False")],
                    ),
                )
            )
        return V1PodList(items=items)

    def read_node(self, name: str, **kwargs: Any) -> V1Node:
        self.calls.append(("read_node", name, kwargs.get("_request_timeout")))
        return V1Node(metadata=V1ObjectMeta(name=name, labels={ZONE_LABEL: name[3:]}))
