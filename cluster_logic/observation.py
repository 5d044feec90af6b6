"""What the nodes say about themselves: one probe per node (CLUSTER MYID, NODES, INFO,
replication, DBSIZE) into a `NodeView`, and the wait for the pods to be ready."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import redis

from cluster_logic.commands import short_error, text
from cluster_logic.deadline import Deadline, poll_until
from cluster_logic.errors import BootstrapError
from cluster_logic.model import NodeAddress, NodeEntry, parse_cluster_nodes, parse_info
from cluster_logic.transports.base import AuthenticationFailed, NodeTransport, PodStatus


@dataclass
class NodeView:
    node: NodeAddress
    error: str = ""
    myid: str = ""
    entries: list[NodeEntry] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)
    replication: dict[str, Any] = field(default_factory=dict)
    keys: int = 0

    @property
    def reachable(self) -> bool:
        return not self.error

    @property
    def me(self) -> Optional[NodeEntry]:
        return next((e for e in self.entries if e.id == self.myid), None)

    @property
    def known(self) -> int:
        return int(self.info.get("cluster_known_nodes", 0) or 0)

    @property
    def member(self) -> bool:
        me = self.me
        return self.known > 1 or bool(me and me.slots)

    def signature(self) -> tuple:
        """This node's picture of the cluster; converged nodes all have the same one."""
        return tuple(
            sorted((e.id, "M" if e.is_master else f"S:{e.master_id}", e.slots) for e in self.entries if not e.failing)
        )


def probe(transport: NodeTransport, nodes: Sequence[NodeAddress]) -> list[NodeView]:
    def one(node: NodeAddress) -> NodeView:
        try:
            pipe = transport.client(node).pipeline(transaction=False)
            pipe.execute_command("CLUSTER", "MYID")
            pipe.execute_command("CLUSTER", "NODES")
            pipe.execute_command("CLUSTER", "INFO")
            pipe.execute_command("INFO", "replication")
            pipe.execute_command("DBSIZE")
            myid, nodes_text, info_text, replication, keys = pipe.execute()
            # A round over every node must not leave a connection open to each of them.
            transport.release_idle(node)
        except redis.AuthenticationError:
            raise AuthenticationFailed(f"{node.pod} rejected the cluster password") from None
        except (redis.RedisError, OSError) as error:
            transport.forget(node)
            return NodeView(node, error=short_error(error))
        return NodeView(
            node,
            myid=text(myid),
            entries=parse_cluster_nodes(text(nodes_text)),
            info=parse_info(text(info_text)),
            replication=replication if isinstance(replication, dict) else parse_info(text(replication)),
            keys=int(keys),
        )

    workers = min(getattr(transport, "probe_concurrency", 1), len(nodes))
    if workers <= 1:
        return [one(n) for n in nodes]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, nodes))


def wait_ready(transport: NodeTransport, count: int, deadline: Deadline) -> list[NodeAddress]:
    """Blocks until the first `count` pods are ready; names the laggards on timeout."""

    def ready(statuses: list[PodStatus]) -> bool:
        waiting = [s for s in statuses if not s.ready]
        if any(s.reason == "not in the nodes input" for s in waiting):
            raise BootstrapError(
                f"{count} nodes are needed but the nodes input lists only {count - len(waiting)}: "
                + ", ".join(s.pod for s in waiting)
            )
        return not waiting and len(statuses) == count

    def laggards(statuses: list[PodStatus]) -> str:
        waiting = [s for s in statuses if not s.ready]
        return f"{len(waiting)} of {count} pods to be Running and Ready: " + "; ".join(
            f"{s.pod} ({s.reason})" for s in waiting
        )

    statuses = poll_until(
        lambda: transport.pod_statuses(count),
        ready,
        deadline,
        waiting_for=laggards,
        interval=transport.poll_interval,
    )
    return [s.node for s in statuses if s.node is not None]
