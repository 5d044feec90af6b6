"""What the cluster logic may do with the nodes, whatever the way to them: which pods are
ready (with their address and zone), a redis-py client per node, and the image's
`redis-cli` run with the cluster password. No transport ever puts the password in a
process argv, a log line or an error."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import redis

from cluster_logic.model import NodeAddress

# redis-py waits this long for a reply; it must outlast the MIGRATE timeout used by the
# slot mover, or a slow batch would be abandoned while the server still works on it.
COMMAND_TIMEOUT_SECONDS = 60.0


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
    def run_cli(self, args: Sequence[str], timeout: float, via: NodeAddress) -> CliResult:
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
            _close(client)

    def release_idle(self, node: Optional[NodeAddress] = None) -> None:  # noqa: B027 - a hook, a no-op here
        """Lets go of the connections no call is using (to `node`, or to every node); a
        transport whose connections are costly to hold (a port-forward each) does, the
        others keep them for the next call."""

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            _close(client)

    def __enter__(self) -> NodeTransport:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _close(client: redis.Redis) -> None:
    # A client built on a pool of our own does not close that pool (redis-py's
    # auto_close_connection_pool is off then): disconnect it, or its sockets wait for the
    # garbage collector.
    try:
        client.close()
        client.connection_pool.disconnect()
    except Exception:  # noqa: BLE001 - closing is best effort
        pass
